//! Native kernels of lumijax.
//!
//! This crate holds no Python: the kernels work on plain slices, and the XLA
//! FFI handlers and the Python bindings that call them live in `bridge/`.
//! [`cpu`] reports what the processor supports, so that each kernel can pick
//! its vector path at run time.

pub mod cpu;

/// Version of the native kernels, as recorded in `Cargo.toml`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
