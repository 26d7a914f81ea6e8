//! A validated `.lmn` file: preamble, header, tensor table, checksum,
//! contents and graph, checked in that order before anything runs.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use memmap2::Mmap;

use crate::budget::{self, Cost, Limits};
use crate::error::FormatError;
use crate::graph::Graph;
use crate::header::Header;
use crate::preamble::{Preamble, PREAMBLE_LEN};
use crate::tensor::{self, TensorInfo};

/// The bytes of a file: memory-mapped, or an owned copy kept 8-byte aligned
/// so that tensors (64-byte aligned within it) can be read in place.
enum Storage {
    Mapped(Mmap),
    Owned(Vec<u64>, usize),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mapped(map) => map,
            Storage::Owned(words, len) => &bytemuck::cast_slice(words)[..*len],
        }
    }
}

/// An `.lmn` model whose every rule of FORMAT.md has been checked.
pub struct Model {
    storage: Storage,
    data_offset: usize,
    pub preamble: Preamble,
    pub header: Header,
    pub tensors: HashMap<String, TensorInfo>,
    pub graph: Graph,
    /// What a run takes in each mode (FORMAT.md §6.2).
    pub cost: Cost,
    /// The caps a run must stay within: the ideal mode's checked when the
    /// file was validated, the hardware modes' when a run in them starts.
    pub limits: Limits,
}

/// What [`Model::parse_header`] checks and finds.
pub struct Parsed {
    pub preamble: Preamble,
    pub header: Header,
    pub tensors: HashMap<String, TensorInfo>,
    pub graph: Graph,
    pub cost: Cost,
    pub data_offset: usize,
}

impl Model {
    /// Memory-maps and validates `path` under the default [`Limits`].
    pub fn open(path: impl AsRef<Path>) -> Result<Model, FormatError> {
        Model::open_with(path, Limits::default())
    }

    /// Memory-maps and validates `path`; refuses a file whose ideal-mode
    /// run is past `limits`.
    pub fn open_with(path: impl AsRef<Path>, limits: Limits) -> Result<Model, FormatError> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| FormatError::Io(format!("{}: {e}", path.display())))?;
        // SAFETY: the map is read-only; a file changed by another process
        // while mapped is outside what any reader can defend against.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| FormatError::Io(format!("{}: {e}", path.display())))?;
        Model::validate(Storage::Mapped(map), limits)
    }

    /// Validates a file held in memory under the default [`Limits`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Model, FormatError> {
        Model::from_bytes_with(bytes, Limits::default())
    }

    /// Validates a file held in memory against `limits`.
    pub fn from_bytes_with(bytes: &[u8], limits: Limits) -> Result<Model, FormatError> {
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..bytes.len()].copy_from_slice(bytes);
        Model::validate(Storage::Owned(words, bytes.len()), limits)
    }

    /// Preamble, header, tensor table, graph and cost: everything but the
    /// data bytes themselves (FORMAT.md §2, §4, §5 without contents, §6).
    pub fn parse_header(file: &[u8]) -> Result<Parsed, FormatError> {
        let preamble = Preamble::parse(file)?;
        let header_end = preamble.header_end()? as usize; // Preamble::parse proved it lies in the file
        let header = Header::parse(&file[PREAMBLE_LEN..header_end])?;
        let data_offset = preamble.data_offset()?;
        let file_len = file.len() as u64;
        let data_len = file_len.saturating_sub(data_offset);
        if !header.tensors.is_empty() && file_len < data_offset {
            return Err(FormatError::Truncated { what: "the data section", needed: data_offset, available: file_len });
        }
        if file[header_end..(data_offset.min(file_len) as usize)].iter().any(|&b| b != 0) {
            return Err(FormatError::Header("the padding after the header is not zero".into()));
        }
        let tensors = tensor::validate_table(&header.tensors, data_len)?;
        let graph = Graph::build(&header.graph, &tensors)?;
        let cost = budget::cost(&graph, &tensors, rayon::current_num_threads())?;
        Ok(Parsed { preamble, header, tensors, graph, cost, data_offset: data_offset as usize })
    }

    fn validate(storage: Storage, limits: Limits) -> Result<Model, FormatError> {
        let file = storage.bytes();
        let Parsed { preamble, header, tensors, graph, cost, data_offset } = Model::parse_header(file)?;
        cost.ideal.check(&graph, &limits, "ideal").map_err(FormatError::Limit)?;
        let data = file.get(data_offset..).unwrap_or(&[]);
        if header.checksum.algorithm != "crc32" {
            return Err(FormatError::Header(format!("checksum algorithm {:?} is not \"crc32\"", header.checksum.algorithm)));
        }
        let found = crc32fast::hash(data);
        if u64::from(found) != header.checksum.value {
            return Err(FormatError::Checksum { expected: header.checksum.value as u32, found });
        }
        tensor::validate_contents(&tensors, data)?;
        Ok(Model { storage, data_offset, preamble, header, tensors, graph, cost, limits })
    }

    /// The data section.
    pub fn data(&self) -> &[u8] {
        self.storage.bytes().get(self.data_offset..).unwrap_or(&[])
    }

    pub fn f32s(&self, name: &str) -> &[f32] {
        tensor::f32s(self.data(), &self.tensors[name])
    }

    pub fn i32s(&self, name: &str) -> &[i32] {
        tensor::i32s(self.data(), &self.tensors[name])
    }

    /// A weight tensor as f32 values: in place when stored as f32, its codes
    /// dequantized otherwise.
    pub fn weights(&self, name: &str) -> Cow<'_, [f32]> {
        let t = &self.tensors[name];
        let Some(q) = &t.quant else { return Cow::Borrowed(self.f32s(name)) };
        let codes = tensor::i8s(self.data(), t);
        let scale = self.f32s(&q.scale);
        let zero = self.i32s(&q.zero_point);
        let lut = q.lut.as_ref().map(|l| self.f32s(l));
        let cols = if t.shape.is_empty() { 1 } else { t.elements() / t.shape[0].max(1) };
        let qmin = -(1i32 << (q.bits - 1));
        codes
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                let row = i.checked_div(cols).unwrap_or(0);
                match lut {
                    Some(lut) => scale[row] * lut[(c as i32 - qmin) as usize],
                    None => scale[row] * (c as i32 - zero[row]) as f32,
                }
            })
            .collect::<Vec<f32>>()
            .into()
    }
}
