//! Batched matrix products `C[b] = op(A[b])·op(B[b])` for f32, f64, c32, c64.
//!
//! The inner products run on the `gemm` crate's tuned kernels (AVX2/FMA
//! micro-kernels selected at run time). `gemm` threads a single product only
//! above roughly 48·48·256 multiply-adds, so batches of small products are
//! spread over the rayon pool here, one single-threaded product per task,
//! while large products use `gemm`'s own threading.

use gemm::{c32, c64, Parallelism};
use rayon::prelude::*;

use crate::error::{checked_product, KernelError};

/// How an operand enters the product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// The matrix as stored.
    Identity,
    /// Its transpose (JAX's cotangent convention for complex products).
    Transpose,
    /// Its conjugate transpose (torch's convention; the transpose for reals).
    Adjoint,
}

impl Op {
    /// Decodes the FFI attribute: 0 identity, 1 transpose, 2 adjoint.
    pub fn from_code(code: i64) -> Option<Op> {
        match code {
            0 => Some(Op::Identity),
            1 => Some(Op::Transpose),
            2 => Some(Op::Adjoint),
            _ => None,
        }
    }
}

/// Element types of the products.
pub trait Element: Copy + Send + Sync + 'static {
    const ZERO: Self;
    const ONE: Self;
    /// Whether `Op::Adjoint` conjugates.
    const IS_COMPLEX: bool;
}

macro_rules! element {
    ($t:ty, $zero:expr, $one:expr, $complex:expr) => {
        impl Element for $t {
            const ZERO: Self = $zero;
            const ONE: Self = $one;
            const IS_COMPLEX: bool = $complex;
        }
    };
}
element!(f32, 0.0, 1.0, false);
element!(f64, 0.0, 1.0, false);
element!(c32, c32::new(0.0, 0.0), c32::new(1.0, 0.0), true);
element!(c64, c64::new(0.0, 0.0), c64::new(1.0, 0.0), true);

/// Shape of a batched product. `op(A)` is `m×k` and `op(B)` is `k×n`, both
/// stored row-major: `A` as `m×k` (or `k×m` when transposed or adjointed),
/// `B` as `k×n` (or `n×k`). Output matrix `i` is `op(A[index_a[i]])·
/// op(B[index_b[i]])`, so broadcast batches are strided over, never copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatmulShape {
    /// Matrices stored in `A` and in `B`.
    pub batch_a: usize,
    pub batch_b: usize,
    /// For each output matrix, the matrix of `A` and of `B` it reads.
    pub index_a: Vec<usize>,
    pub index_b: Vec<usize>,
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub op_a: Op,
    pub op_b: Op,
}

impl MatmulShape {
    /// A product whose batch axes broadcast as in numpy: `batch_a` and
    /// `batch_b` are right-aligned against `batch`, and their axes of size 1
    /// repeat.
    #[allow(clippy::too_many_arguments)]
    pub fn broadcast(
        batch: &[usize],
        batch_a: &[usize],
        batch_b: &[usize],
        m: usize,
        k: usize,
        n: usize,
        op_a: Op,
        op_b: Op,
    ) -> Result<Self, KernelError> {
        Ok(MatmulShape {
            batch_a: checked_product(batch_a, "batch of A")?,
            batch_b: checked_product(batch_b, "batch of B")?,
            index_a: broadcast_index(batch, batch_a, "A")?,
            index_b: broadcast_index(batch, batch_b, "B")?,
            m,
            k,
            n,
            op_a,
            op_b,
        })
    }

    /// Number of output matrices.
    pub fn batch(&self) -> usize {
        self.index_a.len()
    }

    fn check(&self, a_len: usize, b_len: usize, c_len: usize) -> Result<(), KernelError> {
        if self.index_b.len() != self.batch() {
            return Err(KernelError::Shape("index_a and index_b differ in length".into()));
        }
        let expected = [
            ("A", a_len, checked_product(&[self.batch_a, self.m, self.k], "A")?),
            ("B", b_len, checked_product(&[self.batch_b, self.k, self.n], "B")?),
            ("C", c_len, checked_product(&[self.batch(), self.m, self.n], "C")?),
        ];
        for (name, got, want) in expected {
            if got != want {
                return Err(KernelError::Shape(format!(
                    "{name} holds {got} elements but the shape needs {want} ({self:?})"
                )));
            }
        }
        for (name, index, count) in [("A", &self.index_a, self.batch_a), ("B", &self.index_b, self.batch_b)] {
            if index.iter().any(|&i| i >= count) {
                return Err(KernelError::Shape(format!("a batch index of {name} is past its {count} matrices")));
            }
        }
        Ok(())
    }
}

/// Splits the shape of a stack of matrices into (batch axes, rows, cols);
/// `None` below rank 2.
pub fn split_matrix_shape(shape: &[usize]) -> Option<(&[usize], usize, usize)> {
    match shape {
        [batch @ .., rows, cols] => Some((batch, *rows, *cols)),
        _ => None,
    }
}

/// For each flat index of `out`, the flat index of `input` that numpy
/// broadcasting reads (`input` right-aligned, size-1 axes repeated).
pub fn broadcast_index(out: &[usize], input: &[usize], name: &str) -> Result<Vec<usize>, KernelError> {
    let mismatch = || {
        KernelError::Shape(format!("batch axes {input:?} of {name} do not broadcast to {out:?}"))
    };
    if input.len() > out.len() {
        return Err(mismatch());
    }
    let lead = out.len() - input.len();
    // Stride of each output axis in `input` (0 where it broadcasts).
    let mut strides = vec![0usize; out.len()];
    let mut stride = 1usize;
    for (axis, &size) in input.iter().enumerate().rev() {
        let target = out[lead + axis];
        if size != target && size != 1 {
            return Err(mismatch());
        }
        strides[lead + axis] = if size == 1 { 0 } else { stride };
        stride = stride.checked_mul(size).ok_or_else(mismatch)?;
    }
    let total = checked_product(out, name)?;
    let mut index = Vec::with_capacity(total);
    let mut counter = vec![0usize; out.len()];
    for _ in 0..total {
        index.push(counter.iter().zip(&strides).map(|(c, s)| c * s).sum());
        for axis in (0..out.len()).rev() {
            counter[axis] += 1;
            if counter[axis] < out[axis] {
                break;
            }
            counter[axis] = 0;
        }
    }
    Ok(index)
}

/// Row and column strides of an operand stored row-major as `rows×cols`
/// before `op`, and whether `gemm` must conjugate it.
fn strides<T: Element>(op: Op, rows: usize, cols: usize) -> (isize, isize, bool) {
    match op {
        // (row stride, column stride) of op(X) with op(X) of shape rows×cols.
        Op::Identity => (cols as isize, 1, false),
        Op::Transpose => (1, rows as isize, false),
        Op::Adjoint => (1, rows as isize, T::IS_COMPLEX),
    }
}

/// Products below this many multiply-adds are not threaded by `gemm`.
const GEMM_THREADING_THRESHOLD: usize = 48 * 48 * 256;

/// Computes `c[b] = op(a[b])·op(b[b])` for every batch entry.
///
/// Slices are row-major and contiguous per batch entry; their lengths must
/// match `shape` exactly.
pub fn batched_matmul<T: Element>(
    a: &[T],
    b: &[T],
    c: &mut [T],
    shape: &MatmulShape,
) -> Result<(), KernelError> {
    shape.check(a.len(), b.len(), c.len())?;
    let (m, k, n) = (shape.m, shape.k, shape.n);
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        c.fill(T::ZERO);
        return Ok(());
    }
    let (a_rs, a_cs, conj_a) = strides::<T>(shape.op_a, m, k);
    let (b_rs, b_cs, conj_b) = strides::<T>(shape.op_b, k, n);
    let one = |index: usize, out: &mut [T], parallelism: Parallelism| {
        let (ia, ib) = (shape.index_a[index], shape.index_b[index]);
        let lhs = &a[ia * m * k..(ia + 1) * m * k];
        let rhs = &b[ib * k * n..(ib + 1) * k * n];
        // SAFETY: `check` proved every slice holds m·k, k·n and m·n elements,
        // and the strides address exactly those elements.
        unsafe {
            gemm::gemm(
                m, n, k,
                out.as_mut_ptr(), 1, n as isize, false,
                lhs.as_ptr(), a_cs, a_rs,
                rhs.as_ptr(), b_cs, b_rs,
                T::ZERO, T::ONE,
                false, conj_a, conj_b,
                parallelism,
            );
        }
    };
    let threads = rayon::current_num_threads();
    let small = m.saturating_mul(n).saturating_mul(k) < GEMM_THREADING_THRESHOLD;
    let batch = shape.batch();
    if batch > 1 && (small || batch >= threads) {
        c.par_chunks_mut(m * n)
            .enumerate()
            .for_each(|(index, out)| one(index, out, Parallelism::None));
    } else {
        let parallelism = if threads > 1 { Parallelism::Rayon(threads) } else { Parallelism::None };
        for (index, out) in c.chunks_mut(m * n).enumerate() {
            one(index, out, parallelism);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Textbook triple loop on the stored operands, with op applied by index.
    fn reference(a: &[c64], b: &[c64], s: &MatmulShape) -> Vec<c64> {
        let mut out = vec![c64::new(0.0, 0.0); s.batch() * s.m * s.n];
        for batch in 0..s.batch() {
            let a0 = s.index_a[batch] * s.m * s.k;
            let b0 = s.index_b[batch] * s.k * s.n;
            for i in 0..s.m {
                for j in 0..s.n {
                    let mut acc = c64::new(0.0, 0.0);
                    for l in 0..s.k {
                        let x = match s.op_a {
                            Op::Identity => a[a0 + i * s.k + l],
                            Op::Transpose => a[a0 + l * s.m + i],
                            Op::Adjoint => a[a0 + l * s.m + i].conj(),
                        };
                        let y = match s.op_b {
                            Op::Identity => b[b0 + l * s.n + j],
                            Op::Transpose => b[b0 + j * s.k + l],
                            Op::Adjoint => b[b0 + j * s.k + l].conj(),
                        };
                        acc += x * y;
                    }
                    out[batch * s.m * s.n + i * s.n + j] = acc;
                }
            }
        }
        out
    }

    fn values(count: usize, seed: u64) -> Vec<c64> {
        // A small LCG: deterministic, no dependency.
        let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let mut next = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 33) as f64 / (1u64 << 31) as f64) - 0.5
        };
        (0..count).map(|_| c64::new(next(), next())).collect()
    }

    fn shape(batch: &[usize], ba: &[usize], bb: &[usize], m: usize, k: usize, n: usize, ops: (Op, Op)) -> MatmulShape {
        MatmulShape::broadcast(batch, ba, bb, m, k, n, ops.0, ops.1).unwrap()
    }

    #[test]
    fn matches_triple_loop_for_every_op_and_broadcast() {
        let batches: [(&[usize], &[usize], &[usize]); 5] = [
            (&[], &[], &[]),
            (&[3], &[3], &[3]),
            (&[4], &[1], &[4]),
            (&[5], &[5], &[]),
            (&[2, 3], &[2, 1], &[3]),
        ];
        for (batch, ba, bb) in batches {
            for op_a in [Op::Identity, Op::Transpose, Op::Adjoint] {
                for op_b in [Op::Identity, Op::Transpose, Op::Adjoint] {
                    let s = shape(batch, ba, bb, 7, 13, 5, (op_a, op_b));
                    let a = values(s.batch_a * 7 * 13, 1);
                    let b = values(s.batch_b * 13 * 5, 2);
                    let mut c = vec![c64::new(9.0, 9.0); s.batch() * 7 * 5];
                    batched_matmul(&a, &b, &mut c, &s).unwrap();
                    for (got, want) in c.iter().zip(reference(&a, &b, &s)) {
                        assert!((got - want).norm() < 1e-12, "{s:?}: {got} vs {want}");
                    }
                }
            }
        }
    }

    #[test]
    fn broadcast_index_follows_numpy() {
        assert_eq!(broadcast_index(&[2, 3], &[2, 1], "A").unwrap(), [0, 0, 0, 1, 1, 1]);
        assert_eq!(broadcast_index(&[2, 3], &[3], "A").unwrap(), [0, 1, 2, 0, 1, 2]);
        assert_eq!(broadcast_index(&[2, 3], &[], "A").unwrap(), [0; 6]);
        let err = broadcast_index(&[2, 3], &[2], "B").unwrap_err();
        assert!(err.to_string().contains("batch axes [2] of B do not broadcast to [2, 3]"), "{err}");
    }

    #[test]
    fn large_product_uses_gemm_threading_and_stays_correct() {
        let s = shape(&[], &[], &[], 97, 131, 89, (Op::Identity, Op::Identity));
        let a = values(97 * 131, 3);
        let b = values(131 * 89, 4);
        let mut c = vec![c64::new(0.0, 0.0); 97 * 89];
        batched_matmul(&a, &b, &mut c, &s).unwrap();
        for (got, want) in c.iter().zip(reference(&a, &b, &s)) {
            assert!((got - want).norm() < 1e-11);
        }
    }

    #[test]
    fn empty_inner_dimension_gives_zeros() {
        let s = shape(&[2], &[2], &[2], 2, 0, 3, (Op::Identity, Op::Identity));
        let mut c = vec![1.0f32; 12];
        batched_matmul::<f32>(&[], &[], &mut c, &s).unwrap();
        assert!(c.iter().all(|&x| x == 0.0));
    }

    #[test]
    fn rejects_inconsistent_lengths() {
        let s = shape(&[2], &[2], &[2], 2, 2, 2, (Op::Identity, Op::Identity));
        let err = batched_matmul::<f32>(&[0.0; 7], &[0.0; 8], &mut [0.0; 8], &s).unwrap_err();
        assert!(err.to_string().contains("A holds 7 elements"), "{err}");
    }
}
