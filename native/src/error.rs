//! Errors the kernels return for input they cannot compute on.

use thiserror::Error;

/// Why a kernel refused its input. Messages name the operand and the numbers.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum KernelError {
    /// Operand shapes do not fit together.
    #[error("{0}")]
    Shape(String),
    /// An operand has a dtype the kernel does not take.
    #[error("{0}")]
    Dtype(String),
    /// A parameter is outside its range.
    #[error("{0}")]
    Value(String),
}

/// Product of dimensions, or an error naming `what` if it overflows `usize`.
pub fn checked_product(dims: &[usize], what: &str) -> Result<usize, KernelError> {
    dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).ok_or_else(|| {
        KernelError::Shape(format!("{what}: element count of shape {dims:?} overflows"))
    })
}
