//! The `.lmn` Photonic Execution Graph format and its runtime.
//!
//! `FORMAT.md` in this crate is the normative specification; this crate reads
//! and validates files against it without trusting any length or count the
//! file declares.

pub mod error;
pub mod preamble;

pub use error::FormatError;
pub use preamble::{Preamble, DATA_ALIGNMENT, MAGIC, MAX_HEADER_LEN, PREAMBLE_LEN};
