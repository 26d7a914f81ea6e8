//! Errors raised while reading a `.lmn` file.

use thiserror::Error;

/// Why a `.lmn` file was rejected. Each message says what is wrong and where.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FormatError {
    /// The file ends before a part that must be there.
    #[error("file truncated: {what} needs {needed} bytes but the file has {available}")]
    Truncated {
        what: &'static str,
        needed: u64,
        available: u64,
    },
    /// The first four bytes are not `b"LMN\0"`.
    #[error("not an .lmn file: magic bytes are {found:02x?}, expected 4c 4d 4e 00 (\"LMN\\0\")")]
    BadMagic { found: [u8; 4] },
    /// The major version is not the one this reader implements.
    #[error("unsupported .lmn format version {major}.{minor}: this reader implements major version {supported}")]
    UnsupportedVersion { major: u16, minor: u16, supported: u16 },
    /// `header_len` is zero or larger than the cap.
    #[error("header_len {len} at offset 8 is out of range: must be 1..={max} bytes")]
    HeaderLength { len: u64, max: u64 },
    /// An offset computation overflowed.
    #[error("offset overflow while computing {what}")]
    Overflow { what: &'static str },
    /// The header is not a msgpack map of the required structure.
    #[error("header: {0}")]
    Header(String),
    /// A tensor entry or its bytes break the rules of FORMAT.md §5.
    #[error("tensor {name:?}: {reason}")]
    Tensor { name: String, reason: String },
    /// The data section does not match the header's checksum.
    #[error("checksum mismatch: the header says crc32 {expected:#010x}, the data section has {found:#010x}")]
    Checksum { expected: u32, found: u32 },
    /// The graph is not well formed (FORMAT.md §6).
    #[error("graph: {0}")]
    Graph(String),
    /// Running the file would take more memory or work than the caller allows.
    #[error("over the limits: {0}")]
    Limit(String),
    /// The file could not be read.
    #[error("{0}")]
    Io(String),
}

/// Why a run failed: bad inputs, or an error inside an op.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RunError {
    #[error("input {name:?}: {reason}")]
    Input { name: String, reason: String },
    #[error("node {node:?}: {reason}")]
    Node { node: String, reason: String },
    /// A run in this mode would take more memory or work than the caller allows.
    #[error("over the limits: {0}")]
    Limit(String),
}
