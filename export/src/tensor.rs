//! The tensor table (FORMAT.md §5): dtypes, sizes, placement, contents.

use std::collections::HashMap;

use crate::error::FormatError;
use crate::header::TensorEntry;
use crate::preamble::DATA_ALIGNMENT;

/// The element types a file may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    F32,
    I32,
    I8,
    U8,
}

impl Dtype {
    pub fn parse(name: &str) -> Option<Dtype> {
        match name {
            "f32" => Some(Dtype::F32),
            "i32" => Some(Dtype::I32),
            "i8" => Some(Dtype::I8),
            "u8" => Some(Dtype::U8),
            _ => None,
        }
    }

    pub fn size(self) -> u64 {
        match self {
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::I8 | Dtype::U8 => 1,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::I32 => "i32",
            Dtype::I8 => "i8",
            Dtype::U8 => "u8",
        }
    }
}

/// Dequantization of integer weight codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quant {
    pub bits: u32,
    pub scale: String,
    pub zero_point: String,
    pub lut: Option<String>,
}

/// A validated tensor entry; `offset` is relative to the data section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub offset: usize,
    pub nbytes: usize,
    pub quant: Option<Quant>,
}

impl TensorInfo {
    pub fn elements(&self) -> usize {
        self.shape.iter().product()
    }
}

fn bad(name: &str, reason: String) -> FormatError {
    FormatError::Tensor { name: name.to_string(), reason }
}

/// Checks every entry against the data section of `data_len` bytes: dtype
/// whitelist, `nbytes` = shape product × element size (checked), 64-byte
/// alignment, bounds and no overlap.
pub fn validate_table(entries: &[TensorEntry], data_len: u64) -> Result<HashMap<String, TensorInfo>, FormatError> {
    let mut table = HashMap::with_capacity(entries.len());
    let mut spans = Vec::with_capacity(entries.len());
    for e in entries {
        let dtype = Dtype::parse(&e.dtype)
            .ok_or_else(|| bad(&e.name, format!("dtype {:?} is not one of f32, i32, i8, u8", e.dtype)))?;
        let mut expected = dtype.size();
        for &d in &e.shape {
            expected = expected
                .checked_mul(d)
                .ok_or_else(|| bad(&e.name, format!("the size of shape {:?} overflows", e.shape)))?;
        }
        if expected != e.nbytes {
            return Err(bad(&e.name, format!("nbytes {} but shape {:?} of {} needs {expected}", e.nbytes, e.shape, e.dtype)));
        }
        if e.offset % DATA_ALIGNMENT != 0 {
            return Err(bad(&e.name, format!("offset {} is not a multiple of {DATA_ALIGNMENT}", e.offset)));
        }
        let end = e.offset.checked_add(e.nbytes).ok_or(FormatError::Overflow { what: "a tensor's end" })?;
        if end > data_len {
            return Err(bad(&e.name, format!("bytes {}..{end} lie outside the data section of {data_len} bytes", e.offset)));
        }
        let quant = match &e.quant {
            None => None,
            Some(q) => {
                if dtype != Dtype::I8 || !(1..=8).contains(&q.bits) {
                    return Err(bad(&e.name, format!("quantized codes must be i8 with 1..=8 bits, got {} with {} bits", e.dtype, q.bits)));
                }
                Some(Quant { bits: q.bits as u32, scale: q.scale.clone(), zero_point: q.zero_point.clone(), lut: q.lut.clone() })
            }
        };
        // Every size now fits the data section, which fits the address space.
        let info = TensorInfo {
            name: e.name.clone(),
            dtype,
            shape: e.shape.iter().map(|&d| d as usize).collect(),
            offset: e.offset as usize,
            nbytes: e.nbytes as usize,
            quant,
        };
        spans.push((info.offset, info.offset + info.nbytes, e.name.clone()));
        if table.insert(e.name.clone(), info).is_some() {
            return Err(bad(&e.name, "is defined twice".into()));
        }
    }
    spans.sort();
    for pair in spans.windows(2) {
        let ((a0, a1, a), (b0, b1, b)) = (&pair[0], &pair[1]);
        if a1 > b0 && a0 != a1 && b0 != b1 {
            return Err(FormatError::Tensor {
                name: a.clone(),
                reason: format!("overlaps tensor {b:?} (bytes {a0}..{a1} and {b0}..{b1})"),
            });
        }
    }
    Ok(table)
}

/// The elements of a validated tensor, read in place from the data section.
pub fn f32s<'a>(data: &'a [u8], t: &TensorInfo) -> &'a [f32] {
    bytemuck::cast_slice(&data[t.offset..t.offset + t.nbytes])
}

pub fn i32s<'a>(data: &'a [u8], t: &TensorInfo) -> &'a [i32] {
    bytemuck::cast_slice(&data[t.offset..t.offset + t.nbytes])
}

pub fn i8s<'a>(data: &'a [u8], t: &TensorInfo) -> &'a [i8] {
    bytemuck::cast_slice(&data[t.offset..t.offset + t.nbytes])
}

/// Checks contents: finite floats, quantization parameters that fit their
/// codes, positive scales, codes inside their range.
pub fn validate_contents(table: &HashMap<String, TensorInfo>, data: &[u8]) -> Result<(), FormatError> {
    for t in table.values() {
        if t.dtype == Dtype::F32 && f32s(data, t).iter().any(|v| !v.is_finite()) {
            return Err(bad(&t.name, "holds NaN or infinite values".into()));
        }
        let Some(q) = &t.quant else { continue };
        let rows = t.shape.first().copied().unwrap_or(1);
        for (role, name, dtype) in [("scale", &q.scale, Dtype::F32), ("zero_point", &q.zero_point, Dtype::I32)] {
            match table.get(name) {
                Some(p) if p.dtype == dtype && p.shape == [rows] => {}
                _ => return Err(bad(&t.name, format!("quant.{role} must name a {} tensor of shape ({rows},)", dtype.name()))),
            }
        }
        if f32s(data, &table[&q.scale]).iter().any(|&s| s <= 0.0) {
            return Err(bad(&t.name, "quant.scale must be > 0".into()));
        }
        if let Some(lut) = &q.lut {
            match table.get(lut) {
                Some(p) if p.dtype == Dtype::F32 && p.shape == [1usize << q.bits] => {}
                _ => return Err(bad(&t.name, format!("quant.lut must name an f32 tensor of {} entries", 1u32 << q.bits))),
            }
        }
        let (lo, hi) = (-(1i32 << (q.bits - 1)), (1i32 << (q.bits - 1)) - 1);
        if i8s(data, t).iter().any(|&c| (c as i32) < lo || (c as i32) > hi) {
            return Err(bad(&t.name, format!("codes outside [{lo}, {hi}]")));
        }
    }
    Ok(())
}
