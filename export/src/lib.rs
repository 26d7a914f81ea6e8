//! The `.lmn` Photonic Execution Graph format and its runtime.
//!
//! `FORMAT.md` in this crate is the normative specification; this crate reads
//! and validates files against it without trusting any length or count the
//! file declares ([`Model`]), and runs them ([`Runtime`]).

pub mod budget;
pub mod error;
pub mod graph;
pub mod header;
pub mod model;
pub mod npy;
pub mod photonic;
pub mod preamble;
pub mod runtime;
pub mod tensor;
pub mod winograd;

pub use budget::{Cost, Limits, Usage};
pub use error::{FormatError, RunError};
pub use model::Model;
pub use preamble::{Preamble, DATA_ALIGNMENT, MAGIC, MAX_HEADER_LEN, PREAMBLE_LEN};
pub use runtime::{Array, Mode, Runtime};
