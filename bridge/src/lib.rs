//! `lumijax._native`: the Python face of the Rust crates.
//!
//! Only this crate knows about Python. It converts between Python objects and
//! the plain Rust types of `lumijax-native` and `lumijax-export`, and hands
//! the XLA FFI handlers to JAX as PyCapsules.

mod arrays;
mod guard;
mod runtime;

use std::ffi::c_void;
use std::ptr::NonNull;

use lumijax_native::ffi::api::{struct_sizes, XLA_FFI_Handler};
use lumijax_native::ffi::handlers;
use pyo3::prelude::*;
use pyo3::types::{PyCapsule, PyDict};

/// Describe this build of the native extension.
///
/// Returns a dict with ``version`` (crate version, str), ``target_features``
/// (dict of str to bool: the vector extensions detected on this CPU at run
/// time: ``avx2``, ``fma`` and ``avx512_vnni``), ``threads`` (int, the worker threads the
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

const HANDLERS: &[(&str, XLA_FFI_Handler)] = &[
    ("lumijax_matmul", handlers::lumijax_matmul),
    ("lumijax_causal_softmax", handlers::lumijax_causal_softmax),
    ("lumijax_causal_softmax_bwd", handlers::lumijax_causal_softmax_bwd),
    ("lumijax_quantized_matmul", handlers::lumijax_quantized_matmul),
    ("lumijax_standard_normal", handlers::lumijax_standard_normal),
    ("lumijax_conv2d", handlers::lumijax_conv2d),
    ("lumijax_conv2d_backward", handlers::lumijax_conv2d_backward),
];

/// The XLA FFI handlers, as a dict of target name to PyCapsule.
///
/// Register each with ``jax.ffi.register_ffi_target(name, capsule,
/// platform="cpu")``.
#[pyfunction]
fn ffi_handlers(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let out = PyDict::new(py);
    for &(name, handler) in HANDLERS {
        let pointer = NonNull::new(handler as *mut c_void).expect("function pointers are non-null");
        // SAFETY: a function pointer lives as long as the process.
        let capsule = unsafe { PyCapsule::new_with_pointer(py, pointer, c"xla._CUSTOM_CALL_TARGET")? };
        out.set_item(name, capsule)?;
    }
    Ok(out)
}

/// ``sizeof`` of each mirrored XLA FFI struct, by C name (an ABI check).
#[pyfunction]
fn ffi_struct_sizes(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let out = PyDict::new(py);
    for (name, size) in struct_sizes() {
        out.set_item(name, size)?;
    }
    Ok(out)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(build_info, m)?)?;
    m.add_function(wrap_pyfunction!(ffi_handlers, m)?)?;
    m.add_function(wrap_pyfunction!(ffi_struct_sizes, m)?)?;
    m.add_function(wrap_pyfunction!(arrays::matmul, m)?)?;
    m.add_function(wrap_pyfunction!(arrays::causal_softmax, m)?)?;
    m.add_function(wrap_pyfunction!(arrays::causal_softmax_backward_np, m)?)?;
    m.add_class::<runtime::LmnRuntime>()?;
    m.add("NativePanic", m.py().get_type::<guard::NativePanic>())?;
    m.add_function(wrap_pyfunction!(guard::panic_inside_the_guard, m)?)?;
    Ok(())
}
