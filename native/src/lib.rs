//! Native kernels of lumijax.
//!
//! This crate holds no Python: the kernels work on plain slices, and
//! [`ffi`] exposes them to XLA as typed FFI handlers. [`cpu`] reports what
//! the processor supports, so that each kernel can pick its vector path at
//! run time.

pub mod conv;
pub mod cpu;
pub mod error;
pub mod ffi;
pub mod gemm;
pub mod noise;
pub mod quant;
pub mod scratch;
pub mod softmax;
pub mod vmath;

pub use error::KernelError;

/// Version of the native kernels, as recorded in `Cargo.toml`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
