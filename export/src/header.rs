//! The msgpack header (FORMAT.md §4), decoded with rmp-serde.
//!
//! Unknown fields are ignored (FORMAT.md §3); counts are capped after
//! decoding, and decoding itself is bounded by the 16 MiB header cap and a
//! nesting limit.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::error::FormatError;

/// Deepest msgpack nesting accepted in a header.
pub const MAX_DEPTH: usize = 32;
pub const MAX_TENSORS: usize = 65_536;
pub const MAX_NODES: usize = 65_536;
pub const MAX_VALUES: usize = 65_536;
pub const MAX_PORTS: usize = 16;
pub const MAX_RANK: usize = 8;
pub const MAX_NAME: usize = 256;
pub const MAX_ATTRS: usize = 64;
/// Most msgpack values (every scalar, string, array, map and map key) a
/// header may hold: what it decodes to stays within a small multiple of
/// this count, whatever the values are.
pub const MAX_HEADER_VALUES: u64 = 1 << 22;

#[derive(Debug, Clone, Deserialize)]
pub struct Header {
    pub format: String,
    #[serde(default)]
    pub producer: String,
    pub graph: GraphDef,
    pub tensors: Vec<TensorEntry>,
    pub hardware: BTreeMap<String, rmpv::Value>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    pub checksum: Checksum,
}

#[derive(Debug, Clone, Deserialize)]
pub struct GraphDef {
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub values: Vec<ValueDef>,
    pub nodes: Vec<NodeDef>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ValueDef {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<u64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct NodeDef {
    pub name: String,
    pub op: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    #[serde(default)]
    pub attrs: BTreeMap<String, rmpv::Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TensorEntry {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<u64>,
    pub offset: u64,
    pub nbytes: u64,
    #[serde(default)]
    pub quant: Option<QuantDef>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct QuantDef {
    pub bits: u64,
    pub scale: String,
    pub zero_point: String,
    #[serde(default)]
    pub lut: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Checksum {
    pub algorithm: String,
    pub value: u64,
}

fn check_name(name: &str, what: &str) -> Result<(), FormatError> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(FormatError::Header(format!(
            "{what}: a name must be 1..={MAX_NAME} bytes, got {} bytes",
            name.len()
        )));
    }
    Ok(())
}

fn cap(count: usize, max: usize, what: &str) -> Result<(), FormatError> {
    if count > max {
        return Err(FormatError::Header(format!("{what} has {count} entries, more than the cap of {max}")));
    }
    Ok(())
}

/// Counts the msgpack values of the one value that `bytes` should hold,
/// without decoding any: refuses more than [`MAX_HEADER_VALUES`], and an
/// array, map, string or binary whose claimed length runs past the end.
fn count_values(bytes: &[u8]) -> Result<u64, FormatError> {
    use rmp::Marker as M;
    let truncated = || FormatError::Header("not a valid header map (a length runs past the end of the header)".into());
    let (mut at, mut pending, mut count) = (0usize, 1u64, 0u64);
    let take = |at: &mut usize, n: usize| -> Result<u64, FormatError> {
        let end = at.checked_add(n).filter(|&e| e <= bytes.len()).ok_or_else(truncated)?;
        let v = bytes[*at..end].iter().fold(0u64, |a, &b| (a << 8) | u64::from(b));
        *at = end;
        Ok(v)
    };
    while pending > 0 {
        pending -= 1;
        count += 1;
        if count > MAX_HEADER_VALUES {
            return Err(FormatError::Header(format!("the header holds more than {MAX_HEADER_VALUES} msgpack values")));
        }
        let marker = M::from_u8(take(&mut at, 1)? as u8);
        // (payload bytes to skip, values that follow)
        let (skip, values) = match marker {
            M::FixPos(_) | M::FixNeg(_) | M::Null | M::True | M::False => (0, 0),
            M::U8 | M::I8 => (1, 0),
            M::U16 | M::I16 => (2, 0),
            M::U32 | M::I32 | M::F32 => (4, 0),
            M::U64 | M::I64 | M::F64 => (8, 0),
            M::FixStr(n) => (u64::from(n), 0),
            M::Str8 | M::Bin8 => (take(&mut at, 1)?, 0),
            M::Str16 | M::Bin16 => (take(&mut at, 2)?, 0),
            M::Str32 | M::Bin32 => (take(&mut at, 4)?, 0),
            M::FixExt1 => (2, 0),
            M::FixExt2 => (3, 0),
            M::FixExt4 => (5, 0),
            M::FixExt8 => (9, 0),
            M::FixExt16 => (17, 0),
            M::Ext8 => (take(&mut at, 1)? + 1, 0),
            M::Ext16 => (take(&mut at, 2)? + 1, 0),
            M::Ext32 => (take(&mut at, 4)? + 1, 0),
            M::FixArray(n) => (0, u64::from(n)),
            M::Array16 => (0, take(&mut at, 2)?),
            M::Array32 => (0, take(&mut at, 4)?),
            M::FixMap(n) => (0, 2 * u64::from(n)),
            M::Map16 => (0, 2 * take(&mut at, 2)?),
            M::Map32 => (0, 2 * take(&mut at, 4)?),
            M::Reserved => return Err(FormatError::Header("not a valid header map (reserved msgpack byte 0xc1)".into())),
        };
        at = usize::try_from(skip).ok().and_then(|s| at.checked_add(s)).filter(|&e| e <= bytes.len()).ok_or_else(truncated)?;
        pending += values;
        // Every value takes at least one byte.
        if pending > (bytes.len() - at) as u64 {
            return Err(truncated());
        }
    }
    Ok(count)
}

/// The fields of FORMAT.md §7.1 and whether each is an integer.
const HARDWARE_FIELDS: [(&str, bool); 16] = [
    ("wavelength_nm", false),
    ("quality_factor", false),
    ("channel_spacing_nm", false),
    ("num_channels", true),
    ("fsr_nm", false),
    ("laser_power_mW", false),
    ("responsivity_A_per_W", false),
    ("bandwidth_GHz", false),
    ("temperature_K", false),
    ("load_resistance_ohm", false),
    ("rin_db_per_hz", false),
    ("dac_bits", true),
    ("adc_bits", true),
    ("thermal_coupling", false),
    ("thermo_optic_nm_per_K", false),
    ("crosstalk_suppression_db", false),
];

impl Header {
    /// Decodes the header bytes: exactly one msgpack map of at most
    /// [`MAX_HEADER_VALUES`] values, nested at most [`MAX_DEPTH`] deep, with
    /// the fields and caps of FORMAT.md §4.
    pub fn parse(bytes: &[u8]) -> Result<Header, FormatError> {
        count_values(bytes)?;
        let mut rest = bytes;
        let mut deserializer = rmp_serde::Deserializer::new(&mut rest);
        deserializer.set_max_depth(MAX_DEPTH);
        let header = Header::deserialize(&mut deserializer)
            .map_err(|e| FormatError::Header(format!("not a valid header map ({e})")))?;
        if !rest.is_empty() {
            return Err(FormatError::Header(format!("{} bytes follow the header map", rest.len())));
        }
        header.check_caps()?;
        Ok(header)
    }

    fn check_caps(&self) -> Result<(), FormatError> {
        if self.format != "lmn" {
            return Err(FormatError::Header(format!("format is {:?}, expected \"lmn\"", self.format)));
        }
        cap(self.tensors.len(), MAX_TENSORS, "tensors")?;
        cap(self.graph.nodes.len(), MAX_NODES, "graph.nodes")?;
        cap(self.graph.values.len(), MAX_VALUES, "graph.values")?;
        cap(self.graph.inputs.len(), MAX_PORTS, "graph.inputs")?;
        cap(self.graph.outputs.len(), MAX_PORTS, "graph.outputs")?;
        for t in &self.tensors {
            check_name(&t.name, "a tensor")?;
            cap(t.shape.len(), MAX_RANK, &format!("the shape of tensor {:?}", t.name))?;
        }
        for v in &self.graph.values {
            check_name(&v.name, "a value")?;
            cap(v.shape.len(), MAX_RANK, &format!("the shape of value {:?}", v.name))?;
        }
        for (field, integer) in HARDWARE_FIELDS {
            let Some(v) = self.hardware.get(field) else { continue };
            let ok = if integer { v.as_u64().is_some() } else { v.as_f64().or_else(|| v.as_i64().map(|i| i as f64)).is_some_and(f64::is_finite) };
            if !ok {
                let kind = if integer { "a non-negative integer" } else { "a finite number" };
                let got = match v {
                    rmpv::Value::Integer(i) => i.to_string(),
                    rmpv::Value::F32(_) | rmpv::Value::F64(_) => "a non-finite number".to_string(),
                    rmpv::Value::String(_) => "a string".to_string(),
                    rmpv::Value::Array(_) => "an array".to_string(),
                    rmpv::Value::Map(_) => "a map".to_string(),
                    rmpv::Value::Nil => "nil".to_string(),
                    _ => "another msgpack type".to_string(),
                };
                return Err(FormatError::Header(format!("hardware.{field} must be {kind}, got {got}")));
            }
        }
        for n in &self.graph.nodes {
            check_name(&n.name, "a node")?;
            cap(n.inputs.len(), MAX_PORTS, &format!("the inputs of node {:?}", n.name))?;
            cap(n.outputs.len(), MAX_PORTS, &format!("the outputs of node {:?}", n.name))?;
            cap(n.attrs.len(), MAX_ATTRS, &format!("the attributes of node {:?}", n.name))?;
        }
        Ok(())
    }
}
