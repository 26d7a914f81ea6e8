//! Batched matrix products `C[b] = op(A[b])·op(B[b])` for f32, f64, c32, c64.
//!
//! The inner products run on the `gemm` crate's tuned kernels (AVX2/FMA and
//! AVX-512 micro-kernels selected at run time), always single-threaded: the
//! threading is done here on the rayon pool, over the products of a batch or
//! over blocks of the output of one large product.

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
        let (index_a, index_b) = if m == 0 || n == 0 {
            // An empty output reads no matrix: the batch axes are checked,
            // and no index is listed, however many the batch claims.
            broadcast_strides(batch, batch_a, "A")?;
            broadcast_strides(batch, batch_b, "B")?;
            (Vec::new(), Vec::new())
        } else {
            (broadcast_index(batch, batch_a, "A")?, broadcast_index(batch, batch_b, "B")?)
        };
        Ok(MatmulShape {
            batch_a: checked_product(batch_a, "batch of A")?,
            batch_b: checked_product(batch_b, "batch of B")?,
            index_a,
            index_b,
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
    let strides = broadcast_strides(out, input, name)?;
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

/// The stride of each axis of `out` in `input` (0 where it broadcasts), or
/// an error when `input` does not broadcast to `out`.
fn broadcast_strides(out: &[usize], input: &[usize], name: &str) -> Result<Vec<usize>, KernelError> {
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
    Ok(strides)
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

/// Products below this many multiply-adds run on one thread.
const THREADING_THRESHOLD: usize = 48 * 48 * 256;

/// Blocks of one product handed to the threads: the longer of the two output
/// dimensions is cut into `threads` parts (columns in multiples of 16, the
/// widest micro-kernel), so each thread runs one single-threaded `gemm` that
/// packs its own panel. Measured on ResNet layer shapes this keeps both cores
/// at 190–220 GFLOP/s where `gemm`'s own threading fell to 125 for few rows.
fn output_blocks(m: usize, n: usize, threads: usize) -> Vec<(std::ops::Range<usize>, std::ops::Range<usize>)> {
    let cut = |len: usize, align: usize| -> Vec<std::ops::Range<usize>> {
        let step = len.div_ceil(threads).next_multiple_of(align).max(1);
        (0..len).step_by(step).map(|start| start..(start + step).min(len)).collect()
    };
    if m >= n {
        cut(m, 1).into_iter().map(|rows| (rows, 0..n)).collect()
    } else {
        cut(n, 16).into_iter().map(|cols| (0..m, cols)).collect()
    }
}

/// An output buffer shared by parallel tasks that each write their own,
/// disjoint elements of it through [`DisjointOutput::ptr`]. Writing is
/// `unsafe`: the caller keeps every write inside the buffer it was made from
/// and never lets two tasks write the same element.
pub struct DisjointOutput<T>(*mut T);
// SAFETY: the pointer is only written through under the contract above.
unsafe impl<T: Send> Send for DisjointOutput<T> {}
unsafe impl<T: Send> Sync for DisjointOutput<T> {}

impl<T> DisjointOutput<T> {
    pub fn new(buffer: &mut [T]) -> Self {
        DisjointOutput(buffer.as_mut_ptr())
    }

    /// The buffer's first element.
    pub fn ptr(&self) -> *mut T {
        self.0
    }
}

/// Computes `c[b] = op(a[b])·op(b[b])` for every batch entry.
///
/// Slices are row-major and contiguous per batch entry; their lengths must
/// match `shape` exactly. Batches of at least as many products as threads
/// (or of small ones) go one product per task; otherwise each product is cut
/// into blocks of its output, one per thread.
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
    // Rows `rows` and columns `cols` of output matrix `index`, whose first
    // element `out` points at.
    let block = |index: usize, rows: std::ops::Range<usize>, cols: std::ops::Range<usize>, out: *mut T| {
        let (ia, ib) = (shape.index_a[index], shape.index_b[index]);
        let lhs = &a[ia * m * k..(ia + 1) * m * k];
        let rhs = &b[ib * k * n..(ib + 1) * k * n];
        // SAFETY: `check` proved every slice holds m·k, k·n and m·n elements;
        // the block's offsets stay inside them, and the strides address
        // exactly the block's elements.
        unsafe {
            gemm::gemm(
                rows.len(), cols.len(), k,
                out.add(rows.start * n + cols.start), 1, n as isize, false,
                lhs.as_ptr().offset(rows.start as isize * a_rs), a_cs, a_rs,
                rhs.as_ptr().offset(cols.start as isize * b_cs), b_cs, b_rs,
                T::ZERO, T::ONE,
                false, conj_a, conj_b,
                Parallelism::None,
            );
        }
    };
    let threads = rayon::current_num_threads();
    let small = m.saturating_mul(n).saturating_mul(k) < THREADING_THRESHOLD;
    let batch = shape.batch();
    if threads == 1 || (batch == 1 && small) {
        for (index, out) in c.chunks_mut(m * n).enumerate() {
            block(index, 0..m, 0..n, out.as_mut_ptr());
        }
    } else if small || batch >= threads {
        c.par_chunks_mut(m * n)
            .enumerate()
            .for_each(|(index, out)| block(index, 0..m, 0..n, out.as_mut_ptr()));
    } else {
        let blocks = output_blocks(m, n, threads);
        for (index, out) in c.chunks_mut(m * n).enumerate() {
            // The blocks of `output_blocks` are disjoint.
            let out = DisjointOutput::new(out);
            blocks.par_iter().for_each(|(rows, cols)| block(index, rows.clone(), cols.clone(), out.ptr()));
        }
    }
    Ok(())
}

/// `c = a·b` in f32 on the calling thread, where `a` is `m×k` and `c` is
/// `m×n`, both row-major and contiguous, and `b` is `k×n` with its rows
/// `b_row_stride` elements apart (a block of columns of a wider matrix).
///
/// `gemm` is handed the transposed product `cᵀ = bᵀ·aᵀ`: its micro-kernel
/// runs down 64-element columns of its left operand, which `bᵀ` provides in
/// place (no packing), and `a` may have few rows at no cost.
pub fn strided_product_on_this_thread(
    a: &[f32],
    b: &[f32],
    b_row_stride: usize,
    c: &mut [f32],
    (m, k, n): (usize, usize, usize),
) -> Result<(), KernelError> {
    if b_row_stride < n {
        return Err(KernelError::Shape(format!("B rows of {n} cannot lie {b_row_stride} elements apart")));
    }
    let b_len = if k == 0 || n == 0 { Some(0) } else { checked_product(&[k - 1, b_row_stride], "B")?.checked_add(n) };
    let b_len = b_len.ok_or_else(|| KernelError::Shape("B: element count overflows".into()))?;
    let expected = [
        ("A", a.len(), checked_product(&[m, k], "A")?),
        ("C", c.len(), checked_product(&[m, n], "C")?),
    ];
    for (name, got, want) in expected {
        if got != want {
            return Err(KernelError::Shape(format!("{name} holds {got} elements but {m}×{k}·{k}×{n} needs {want}")));
        }
    }
    if b.len() < b_len {
        return Err(KernelError::Shape(format!("B holds {} elements but {k} rows of {n}, {b_row_stride} apart, need {b_len}", b.len())));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        c.fill(0.0);
        return Ok(());
    }
    // SAFETY: the checks above prove that `a`, `b` and `c` hold every element
    // the strides address: cᵀ (n×m) at j + i·n, bᵀ (n×k) at j + p·stride,
    // aᵀ (k×m) at p + i·k.
    unsafe {
        gemm::gemm(
            n, m, k,
            c.as_mut_ptr(), n as isize, 1, false,
            b.as_ptr(), b_row_stride as isize, 1,
            a.as_ptr(), k as isize, 1,
            0.0f32, 1.0f32,
            false, false, false,
            Parallelism::None,
        );
    }
    Ok(())
}

/// A matrix inside a slice: element `(i, j)` at `i·row_stride + j·col_stride`
/// (a transpose is the same data with the strides swapped).
#[derive(Debug, Clone, Copy)]
pub struct MatrixView<'a, T> {
    pub data: &'a [T],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a, T> MatrixView<'a, T> {
    /// A contiguous row-major `rows×cols` matrix.
    pub fn row_major(data: &'a [T], rows: usize, cols: usize) -> Self {
        MatrixView { data, rows, cols, row_stride: cols, col_stride: 1 }
    }

    /// The transpose, in place.
    pub fn t(self) -> Self {
        MatrixView { rows: self.cols, cols: self.rows, row_stride: self.col_stride, col_stride: self.row_stride, ..self }
    }

    /// Fails unless every element the strides address lies in `data`.
    fn check(&self, name: &str) -> Result<(), KernelError> {
        if self.rows == 0 || self.cols == 0 {
            return Ok(());
        }
        let last = (self.rows - 1)
            .checked_mul(self.row_stride)
            .and_then(|r| (self.cols - 1).checked_mul(self.col_stride).and_then(|c| r.checked_add(c)));
        match last {
            Some(last) if last < self.data.len() && self.row_stride <= isize::MAX as usize && self.col_stride <= isize::MAX as usize => Ok(()),
            _ => Err(KernelError::Shape(format!(
                "{name}: a {}×{} view with strides ({}, {}) does not fit in {} elements",
                self.rows, self.cols, self.row_stride, self.col_stride, self.data.len()
            ))),
        }
    }
}

/// `c = a·b`, or `c += a·b` with `accumulate`, on the calling thread: `c` is
/// row-major and contiguous, `a` and `b` any [`MatrixView`]s.
pub fn product_on_this_thread<T: Element>(c: &mut [T], a: MatrixView<'_, T>, b: MatrixView<'_, T>, accumulate: bool) -> Result<(), KernelError> {
    a.check("A")?;
    b.check("B")?;
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if b.rows != k {
        return Err(KernelError::Shape(format!("inner dimensions differ: A is {m}×{k} and B is {}×{n}", b.rows)));
    }
    if c.len() != checked_product(&[m, n], "C")? {
        return Err(KernelError::Shape(format!("C holds {} elements, the {m}×{n} product needs {}", c.len(), m * n)));
    }
    if m == 0 || n == 0 || (k == 0 && accumulate) {
        return Ok(());
    }
    if k == 0 {
        c.fill(T::ZERO);
        return Ok(());
    }
    // SAFETY: `check` proved that the strides address only elements of `a`
    // and `b`, and `c` holds exactly m·n.
    unsafe {
        gemm::gemm(
            m, n, k,
            c.as_mut_ptr(), 1, n as isize, accumulate,
            a.data.as_ptr(), a.col_stride as isize, a.row_stride as isize,
            b.data.as_ptr(), b.col_stride as isize, b.row_stride as isize,
            T::ONE, T::ONE,
            false, false, false,
            Parallelism::None,
        );
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
    fn large_products_cut_into_blocks_stay_correct() {
        // Three threads cut rows (m ≥ n) or columns (m < n, in multiples of
        // 16 so the last block is ragged) unevenly, for every op and for a
        // batch smaller than the pool.
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        for (batch, m, k, n) in [(1, 97, 131, 89), (1, 37, 131, 101), (2, 61, 90, 70)] {
            for (op_a, op_b) in [(Op::Identity, Op::Identity), (Op::Transpose, Op::Adjoint), (Op::Adjoint, Op::Transpose)] {
                let s = shape(&[batch], &[batch], &[batch], m, k, n, (op_a, op_b));
                let a = values(batch * m * k, 3);
                let b = values(batch * k * n, 4);
                let mut c = vec![c64::new(9.0, 9.0); batch * m * n];
                pool.install(|| batched_matmul(&a, &b, &mut c, &s)).unwrap();
                for (got, want) in c.iter().zip(reference(&a, &b, &s)) {
                    assert!((got - want).norm() < 1e-11, "{s:?}: {got} vs {want}");
                }
            }
        }
    }

    #[test]
    fn strided_product_matches_a_triple_loop_on_a_column_block() {
        let (m, k, n, stride, first) = (5, 70, 37, 90, 11);
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7) % 13) as f32 - 6.0).collect();
        let wide: Vec<f32> = (0..k * stride).map(|i| ((i * 5) % 11) as f32 - 5.0).collect();
        let mut c = vec![f32::NAN; m * n];
        strided_product_on_this_thread(&a, &wide[first..], stride, &mut c, (m, k, n)).unwrap();
        for i in 0..m {
            for j in 0..n {
                let want: f32 = (0..k).map(|p| a[i * k + p] * wide[first + p * stride + j]).sum();
                assert_eq!(c[i * n + j], want, "({i}, {j})");
            }
        }
        let short = strided_product_on_this_thread(&a, &wide[first + 50..], stride, &mut c, (m, k, n)).unwrap_err();
        assert!(short.to_string().contains("70 rows of 37, 90 apart"), "{short}");
        let narrow = strided_product_on_this_thread(&a, &wide, 10, &mut c, (m, k, n)).unwrap_err();
        assert!(narrow.to_string().contains("cannot lie 10 elements apart"), "{narrow}");
    }

    #[test]
    fn output_blocks_tile_the_output_exactly_once() {
        for (m, n, threads) in [(100, 7, 3), (5, 200, 2), (1, 1, 4), (64, 64, 16)] {
            let mut seen = vec![0u8; m * n];
            for (rows, cols) in output_blocks(m, n, threads) {
                for r in rows {
                    for c in cols.clone() {
                        seen[r * n + c] += 1;
                    }
                }
            }
            assert!(seen.iter().all(|&count| count == 1), "{m}×{n} on {threads}");
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
