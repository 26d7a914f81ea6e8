//! `lumijax._native`: the Python face of the Rust crates.
//!
//! Only this crate knows about Python. It converts between Python objects and
//! the plain Rust types of `lumijax-native` and `lumijax-export`.

use pyo3::prelude::*;
use pyo3::types::PyDict;

/// Describe this build of the native extension.
///
/// Returns a dict with ``version`` (crate version, str), ``target_features``
/// (dict of str to bool: the vector extensions detected on this CPU at run
/// time, ``avx2`` and ``fma``), ``threads`` (int, the worker threads the
/// kernels use) and ``profile`` (``"release"`` or ``"debug"``).
#[pyfunction]
fn build_info(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let info = PyDict::new(py);
    info.set_item("version", lumijax_native::VERSION)?;
    let features = PyDict::new(py);
    for (name, present) in lumijax_native::cpu::CpuFeatures::detect().as_pairs() {
        features.set_item(name, present)?;
    }
    info.set_item("target_features", features)?;
    info.set_item("threads", lumijax_native::cpu::thread_count())?;
    let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
    info.set_item("profile", profile)?;
    Ok(info)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(build_info, m)?)?;
    Ok(())
}
