//! The kernels on numpy arrays: C-contiguous inputs are read in place (no
//! copy), the result is a new array, and the GIL is released while the
//! kernel runs. Torch tensors reach these through `Tensor.numpy()`, which
//! shares their memory.

use lumijax_native::gemm::{batched_matmul, split_matrix_shape, Element as GemmElement, MatmulShape, Op};
use lumijax_native::softmax::{causal_softmax_backward, causal_softmax_forward, CausalShape};
use lumijax_native::KernelError;
use num_complex::{Complex32, Complex64};
use numpy::{Element, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

use crate::guard::no_panic;

fn value_error(err: KernelError) -> PyErr {
    PyValueError::new_err(err.to_string())
}

/// The elements of a C-contiguous array in place; any other layout
/// (Fortran order, strided views) is refused, never read in the wrong order.
fn contiguous<'a, T: Element>(array: &'a PyReadonlyArrayDyn<'_, T>, name: &str) -> PyResult<&'a [T]> {
    if !array.is_c_contiguous() {
        return Err(PyValueError::new_err(format!("{name} must be C-contiguous (numpy.ascontiguousarray makes it so)")));
    }
    array.as_slice().map_err(|_| PyValueError::new_err(format!("{name} must be C-contiguous")))
}

/// Splits a shape of rank ≥ 2 into (batch axes, rows, cols).
fn matrix(shape: &[usize], name: &str) -> PyResult<(Vec<usize>, usize, usize)> {
    let (batch, rows, cols) = split_matrix_shape(shape)
        .ok_or_else(|| PyValueError::new_err(format!("{name} must have rank ≥ 2, got shape {shape:?}")))?;
    Ok((batch.to_vec(), rows, cols))
}

fn broadcast(a: &[usize], b: &[usize]) -> PyResult<Vec<usize>> {
    let rank = a.len().max(b.len());
    let pad = |s: &[usize]| [vec![1; rank - s.len()], s.to_vec()].concat();
    let (a, b) = (pad(a), pad(b));
    a.iter()
        .zip(&b)
        .map(|(&x, &y)| match (x, y) {
            (x, y) if x == y || y == 1 => Ok(x),
            (1, y) => Ok(y),
            _ => Err(PyValueError::new_err(format!("batch axes {a:?} and {b:?} do not broadcast"))),
        })
        .collect()
}

fn op(code: i64) -> PyResult<Op> {
    Op::from_code(code).ok_or_else(|| PyValueError::new_err(format!("op must be 0, 1 or 2, got {code}")))
}

fn matmul_typed<'py, T: GemmElement + Element>(
    py: Python<'py>,
    a: PyReadonlyArrayDyn<'py, T>,
    b: PyReadonlyArrayDyn<'py, T>,
    op_a: Op,
    op_b: Op,
) -> PyResult<Bound<'py, PyAny>> {
    let (batch_a, ra, ca) = matrix(a.shape(), "a")?;
    let (batch_b, rb, cb) = matrix(b.shape(), "b")?;
    let (m, k) = if op_a == Op::Identity { (ra, ca) } else { (ca, ra) };
    let (kb, n) = if op_b == Op::Identity { (rb, cb) } else { (cb, rb) };
    if k != kb {
        return Err(PyValueError::new_err(format!(
            "inner dimensions differ: op(a) is {m}×{k} and op(b) is {kb}×{n}"
        )));
    }
    let batch = broadcast(&batch_a, &batch_b)?;
    let shape = MatmulShape::broadcast(&batch, &batch_a, &batch_b, m, k, n, op_a, op_b).map_err(value_error)?;
    let out = PyArrayDyn::<T>::zeros(py, [batch, vec![m, n]].concat(), false);
    {
        let (a, b) = (contiguous(&a, "a")?, contiguous(&b, "b")?);
        let mut guard = out.readwrite();
        let c = guard.as_slice_mut().map_err(|_| PyValueError::new_err("result is not contiguous"))?;
        no_panic(|| py.detach(|| batched_matmul(a, b, c, &shape)).map_err(value_error))?;
    }
    Ok(out.into_any())
}

/// ``op(a) @ op(b)`` on C-contiguous numpy arrays of one dtype (float32,
/// float64, complex64, complex128); ``op`` 0 identity, 1 transpose, 2
/// conjugate transpose. Batch axes broadcast as in ``numpy.matmul``.
#[pyfunction]
#[pyo3(signature = (a, b, op_a=0, op_b=0))]
pub fn matmul<'py>(py: Python<'py>, a: &Bound<'py, PyAny>, b: &Bound<'py, PyAny>, op_a: i64, op_b: i64) -> PyResult<Bound<'py, PyAny>> {
    let (op_a, op_b) = (op(op_a)?, op(op_b)?);
    macro_rules! typed {
        ($($t:ty),*) => {
            $(
                if let (Ok(x), Ok(y)) = (a.extract::<PyReadonlyArrayDyn<'py, $t>>(), b.extract::<PyReadonlyArrayDyn<'py, $t>>()) {
                    return matmul_typed::<$t>(py, x, y, op_a, op_b);
                }
            )*
        };
    }
    typed!(Complex32, Complex64, f32, f64);
    Err(PyTypeError::new_err(
        "matmul takes two numpy arrays of one dtype: float32, float64, complex64 or complex128",
    ))
}

fn causal_shape(shape: &[usize], offset: i64) -> PyResult<CausalShape> {
    let (batch, queries, keys) = matrix(shape, "x")?;
    let offset = usize::try_from(offset).map_err(|_| PyValueError::new_err(format!("offset must be ≥ 0, got {offset}")))?;
    Ok(CausalShape { outer: batch.iter().product(), queries, keys, offset })
}

/// ``softmax(scale·x + causal mask)`` over the last axis of a C-contiguous
/// float32 array ``(…, T, S)``; query ``t`` sees keys ``0..=t + offset``.
#[pyfunction]
#[pyo3(signature = (x, scale, offset=0))]
pub fn causal_softmax<'py>(py: Python<'py>, x: PyReadonlyArrayDyn<'py, f32>, scale: f32, offset: i64) -> PyResult<Bound<'py, PyAny>> {
    let shape = causal_shape(x.shape(), offset)?;
    let out = PyArrayDyn::<f32>::zeros(py, x.shape().to_vec(), false);
    {
        let x = contiguous(&x, "x")?;
        let mut guard = out.readwrite();
        let y = guard.as_slice_mut().map_err(|_| PyValueError::new_err("result is not contiguous"))?;
        no_panic(|| py.detach(|| causal_softmax_forward(Some(x), y, &shape, scale)).map_err(value_error))?;
    }
    Ok(out.into_any())
}

/// Gradient of :func:`causal_softmax`: ``scale·p ⊙ (dp − Σ dp ⊙ p)``.
#[pyfunction]
#[pyo3(signature = (p, dp, scale, offset=0))]
#[pyo3(name = "causal_softmax_backward")]
pub fn causal_softmax_backward_np<'py>(
    py: Python<'py>,
    p: PyReadonlyArrayDyn<'py, f32>,
    dp: PyReadonlyArrayDyn<'py, f32>,
    scale: f32,
    offset: i64,
) -> PyResult<Bound<'py, PyAny>> {
    if p.shape() != dp.shape() {
        return Err(PyValueError::new_err(format!("p is {:?} but dp is {:?}", p.shape(), dp.shape())));
    }
    let shape = causal_shape(p.shape(), offset)?;
    let out = PyArrayDyn::<f32>::zeros(py, p.shape().to_vec(), false);
    {
        let (p, dp) = (contiguous(&p, "p")?, contiguous(&dp, "dp")?);
        let mut guard = out.readwrite();
        let dx = guard.as_slice_mut().map_err(|_| PyValueError::new_err("result is not contiguous"))?;
        no_panic(|| py.detach(|| causal_softmax_backward(p, Some(dp), dx, &shape, scale)).map_err(value_error))?;
    }
    Ok(out.into_any())
}
