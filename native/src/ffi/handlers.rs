//! The `extern "C"` entry points XLA calls, one per kernel.

use gemm::{c32, c64};

use super::api::{dtype, XLA_FFI_CallFrame, XLA_FFI_Error};
use super::{dispatch, dtype_name, Buffer, Call};
use crate::error::{checked_product, KernelError};
use crate::gemm::{batched_matmul, Element, MatmulShape, Op};

/// Splits a buffer of rank ≥ 2 into (batch count, rows, cols).
fn matrix_dims(buffer: &Buffer<'_>, name: &str) -> Result<(usize, usize, usize), KernelError> {
    let shape = buffer.shape()?;
    if shape.len() < 2 {
        return Err(KernelError::Shape(format!(
            "{name} must have rank ≥ 2 (…, rows, cols), got shape {shape:?}"
        )));
    }
    let (batch, matrix) = shape.split_at(shape.len() - 2);
    Ok((checked_product(batch, name)?, matrix[0], matrix[1]))
}

fn run_matmul<T: Element>(a: &Buffer<'_>, b: &Buffer<'_>, c: &Buffer<'_>, shape: &MatmulShape) -> Result<(), KernelError> {
    // SAFETY: the dtypes were checked to be those of T, and XLA owns the
    // buffers for the call; the result does not alias the arguments.
    unsafe { batched_matmul::<T>(a.as_slice()?, b.as_slice()?, c.as_mut_slice()?, shape) }
}

fn matmul(call: &Call<'_>) -> Result<(), KernelError> {
    let (a, b, c) = (call.arg(0)?, call.arg(1)?, call.ret(0)?);
    for (buffer, name) in [(&b, "B"), (&c, "the result")] {
        if buffer.dtype != a.dtype {
            return Err(KernelError::Dtype(format!(
                "A has dtype {} but {name} has dtype {}: operands must share one dtype",
                dtype_name(a.dtype),
                dtype_name(buffer.dtype)
            )));
        }
    }
    let op = |adjoint: bool| if adjoint { Op::Adjoint } else { Op::Identity };
    let (op_a, op_b) = (op(call.attr_bool("adjoint_a")?), op(call.attr_bool("adjoint_b")?));
    let (batch_a, ra, ca) = matrix_dims(&a, "A")?;
    let (batch_b, rb, cb) = matrix_dims(&b, "B")?;
    let (batch, m, n) = matrix_dims(&c, "the result")?;
    let (am, ak) = if op_a == Op::Identity { (ra, ca) } else { (ca, ra) };
    let (bk, bn) = if op_b == Op::Identity { (rb, cb) } else { (cb, rb) };
    if ak != bk {
        return Err(KernelError::Shape(format!(
            "inner dimensions differ: op(A) is {am}×{ak} and op(B) is {bk}×{bn} (A {:?}, B {:?})",
            a.dims, b.dims
        )));
    }
    if (am, bn) != (m, n) {
        return Err(KernelError::Shape(format!(
            "the result is {m}×{n} but op(A)·op(B) is {am}×{bn}"
        )));
    }
    let shape = MatmulShape { batch, batch_a, batch_b, m, k: ak, n, op_a, op_b };
    match a.dtype {
        dtype::F32 => run_matmul::<f32>(&a, &b, &c, &shape),
        dtype::F64 => run_matmul::<f64>(&a, &b, &c, &shape),
        dtype::C64 => run_matmul::<c32>(&a, &b, &c, &shape),
        dtype::C128 => run_matmul::<c64>(&a, &b, &c, &shape),
        other => Err(KernelError::Dtype(format!(
            "matmul takes float32, float64, complex64 or complex128, got {}",
            dtype_name(other)
        ))),
    }
}

/// `lumijax_matmul`: `C = op(A)·op(B)`, batched, with attributes
/// `adjoint_a` and `adjoint_b` (bool).
///
/// # Safety
/// Called by XLA with a valid call frame.
#[no_mangle]
pub unsafe extern "C" fn lumijax_matmul(frame: *mut XLA_FFI_CallFrame) -> *mut XLA_FFI_Error {
    dispatch(frame, matmul)
}
