//! Panics stop at the border: every entry point that runs Rust code on
//! Python's behalf runs it through [`no_panic`], so that a panic (a bug, never
//! an answer to bad input) reaches Python as an ordinary exception.

use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

pyo3::create_exception!(
    _native,
    NativePanic,
    PyRuntimeError,
    "A bug in lumijax's native code: a Rust panic, caught at the border and raised as an ordinary exception."
);

/// `f()`, with a panic inside it turned into [`NativePanic`] carrying the panic's message.
pub fn no_panic<T>(f: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_string());
        Err(NativePanic::new_err(format!("internal error in lumijax's native code (a bug): {message}")))
    })
}

/// Panics with `message` inside the guard, the way a bug would: a check
/// that such a panic reaches Python as :class:`NativePanic`.
#[pyfunction]
pub fn panic_inside_the_guard(message: &str) -> PyResult<()> {
    no_panic(|| panic!("{message}"))
}
