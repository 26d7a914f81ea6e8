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

impl Header {
    /// Decodes the header bytes: exactly one msgpack map, nested at most
    /// [`MAX_DEPTH`] deep, with the fields and caps of FORMAT.md §4.
    pub fn parse(bytes: &[u8]) -> Result<Header, FormatError> {
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
        for n in &self.graph.nodes {
            check_name(&n.name, "a node")?;
            cap(n.inputs.len(), MAX_PORTS, &format!("the inputs of node {:?}", n.name))?;
            cap(n.outputs.len(), MAX_PORTS, &format!("the outputs of node {:?}", n.name))?;
            cap(n.attrs.len(), MAX_ATTRS, &format!("the attributes of node {:?}", n.name))?;
        }
        Ok(())
    }
}
