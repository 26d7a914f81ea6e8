//! 2-D convolution over NHWC f32 images as products of the patch matrix
//! (im2col), with both gradients.
//!
//! Output pixel `p` of a convolution is row `p` of the patch matrix `P`
//! (`rows × width`, one row per output pixel: kernel row, kernel column,
//! channel, the channel fastest) times the kernel `K` (`width × cout`):
//!
//! * forward: `Y = P·K`;
//! * input gradient: `dP = dY·Kᵀ`, each row added back onto the pixels it
//!   was read from (col2im); at stride 1, the same sums as the forward
//!   convolution of `dY` with the kernel flipped in both axes and its
//!   channels swapped (`kh·kw·cout` terms a row, no scatter);
//! * kernel gradient: `dK = Pᵀ·dY`.
//!
//! Large products never build `P` whole: the pixels are cut into blocks of
//! about [`BLOCK_ELEMENTS`] patch entries, and a thread fills a block into
//! its own scratch buffer and multiplies it while it is still in cache
//! ([`Path::Blocked`]). When there are fewer output pixels than output
//! channels (the late stages of a network) `P` is small, so it is built
//! whole and one threaded GEMM cuts its output ([`Path::Whole`]).

use rayon::prelude::*;

use crate::error::{checked_product, KernelError};
use crate::gemm::{batched_matmul, product_on_this_thread, MatmulShape, MatrixView, Op};
use crate::scratch::with_scratch;

/// Patch elements a thread fills and multiplies at a time on the blocked
/// path (2 MiB of f32), unless that is fewer than [`MIN_BLOCK_ROWS`] rows.
pub const BLOCK_ELEMENTS: usize = 1 << 19;
/// The fewest patch rows of a block, where that stays within four times
/// [`BLOCK_ELEMENTS`]: fewer leave the GEMM short of rows to amortise the
/// packing of its right operand over.
pub const MIN_BLOCK_ROWS: usize = 256;

/// How the patch-matrix products run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// The whole patch matrix, then one threaded GEMM.
    Whole,
    /// Blocks of about [`BLOCK_ELEMENTS`] patch entries, each filled and
    /// multiplied by one thread.
    Blocked,
}

/// The path of the products of a patch matrix of `rows` rows with a kernel
/// of `cout` output channels on `threads` threads: whole when there are
/// fewer output pixels than channels (or too few to share out), else blocked.
pub fn path(rows: usize, cout: usize, threads: usize) -> Path {
    if rows < cout.max(16 * threads) {
        Path::Whole
    } else {
        Path::Blocked
    }
}

/// The path of the kernel gradient `Pᵀ·dY` (`rows` terms a sum, `cout`
/// output channels) on `threads` threads: whole up to twice as many rows as
/// [`path`] takes whole, since the blocked path splits the sums' terms
/// between the threads (each sum then has `rows / threads` terms, and the
/// threads' partial kernels are added at the end).
pub fn kernel_gradient_path(rows: usize, cout: usize, threads: usize) -> Path {
    if rows <= 2 * cout.max(16 * threads) {
        Path::Whole
    } else {
        Path::Blocked
    }
}

/// The blocked path's cut of `rows` output pixels of `width` patch entries
/// over `threads` threads: `(blocks, rows per block)`, a multiple of the
/// thread count of blocks, each of about [`BLOCK_ELEMENTS`] patch entries
/// or [`MIN_BLOCK_ROWS`] rows, whichever is more (but at most four times
/// [`BLOCK_ELEMENTS`]).
pub fn blocks(rows: usize, width: usize, threads: usize) -> (usize, usize) {
    let (threads, width) = (threads.max(1), width.max(1));
    let target = (BLOCK_ELEMENTS / width).max(MIN_BLOCK_ROWS.min(4 * BLOCK_ELEMENTS / width)).max(1);
    let blocks = threads * rows.div_ceil(threads * target);
    (blocks, rows.div_ceil(blocks.max(1)).max(1))
}

/// The geometry of a convolution of NHWC images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2d {
    /// `(N, H, W, C)` of the input.
    pub input: [usize; 4],
    /// `(kh, kw)` taps.
    pub kernel: [usize; 2],
    /// `(sh, sw)` pixels.
    pub stride: [usize; 2],
    /// Zero padding `((top, bottom), (left, right))` pixels.
    pub padding: [[usize; 2]; 2],
    /// `(H', W')` of the output.
    pub out_hw: [usize; 2],
}

impl Conv2d {
    /// The convolution of `input` images, checked: taps and strides of at
    /// least 1, a padded image at least as large as the kernel, and element
    /// counts that fit in memory's address space.
    pub fn new(input: [usize; 4], kernel: [usize; 2], stride: [usize; 2], padding: [[usize; 2]; 2]) -> Result<Self, KernelError> {
        if kernel.contains(&0) || stride.contains(&0) {
            return Err(KernelError::Value(format!("kernel {kernel:?} and stride {stride:?} must be ≥ 1")));
        }
        let mut out_hw = [0; 2];
        for axis in 0..2 {
            let padded = input[axis + 1]
                .checked_add(padding[axis][0])
                .and_then(|v| v.checked_add(padding[axis][1]))
                .ok_or_else(|| KernelError::Shape(format!("padding {padding:?} overflows")))?;
            if padded < kernel[axis] {
                return Err(KernelError::Shape(format!(
                    "a {:?} image padded by {padding:?} is smaller than the {kernel:?} kernel",
                    &input[1..3]
                )));
            }
            out_hw[axis] = (padded - kernel[axis]) / stride[axis] + 1;
        }
        let conv = Conv2d { input, kernel, stride, padding, out_hw };
        checked_product(&input, "the input")?;
        checked_product(&[input[0], out_hw[0], out_hw[1], kernel[0], kernel[1], input[3]], "the patch matrix")?;
        Ok(conv)
    }

    /// Output pixels `N·H'·W'`: the rows of the patch matrix.
    pub fn rows(&self) -> usize {
        self.input[0] * self.out_hw[0] * self.out_hw[1]
    }

    /// Patch entries `kh·kw·C`: the columns of the patch matrix.
    pub fn width(&self) -> usize {
        self.kernel[0] * self.kernel[1] * self.input[3]
    }

    /// The path of products with `cout` output channels on `threads` threads.
    pub fn path(&self, cout: usize, threads: usize) -> Path {
        path(self.rows(), cout, threads)
    }

    /// The blocked path's cut of the output pixels (see [`blocks`]).
    pub fn blocks(&self, threads: usize) -> (usize, usize) {
        blocks(self.rows(), self.width(), threads)
    }

    /// The input row (`axis` 0) or column (1) that tap `tap` of output row
    /// or column `out` reads, `None` on the padding.
    fn source_on(&self, axis: usize, out: usize, tap: usize) -> Option<usize> {
        let i = (out * self.stride[axis] + tap).checked_sub(self.padding[axis][0])?;
        (i < self.input[axis + 1]).then_some(i)
    }

    /// The input pixel `(y, x)` tap `(ky, kx)` of output pixel `(oy, ox)`
    /// reads, `None` on the padding.
    fn source(&self, (oy, ox): (usize, usize), (ky, kx): (usize, usize)) -> Option<(usize, usize)> {
        Some((self.source_on(0, oy, ky)?, self.source_on(1, ox, kx)?))
    }

    /// Rows `first..` of the patch matrix of `x` into `rows` (as many as it
    /// holds). Every element is written, the padding as zero, so `rows` may
    /// hold anything before.
    pub fn fill(&self, x: &[f32], first: usize, rows: &mut [f32]) {
        let [_, h, w, c] = self.input;
        let [oh, ow] = self.out_hw;
        let [kh, kw] = self.kernel;
        for (i, row) in rows.chunks_exact_mut(self.width().max(1)).enumerate() {
            let p = first + i;
            let (b, oy, ox) = (p / (oh * ow), (p / ow) % oh, p % ow);
            for ky in 0..kh {
                let taps = &mut row[ky * kw * c..][..kw * c];
                let Some(iy) = self.source_on(0, oy, ky) else {
                    taps.fill(0.0);
                    continue;
                };
                let first_x = (ox * self.stride[1]).checked_sub(self.padding[1][0]);
                match first_x {
                    // The kernel row lies inside the image: one contiguous run.
                    Some(ix) if ix + kw <= w => taps.copy_from_slice(&x[((b * h + iy) * w + ix) * c..][..kw * c]),
                    _ => {
                        for (kx, dst) in taps.chunks_exact_mut(c.max(1)).enumerate() {
                            match self.source_on(1, ox, kx) {
                                Some(ix) => dst.copy_from_slice(&x[((b * h + iy) * w + ix) * c..][..c]),
                                None => dst.fill(0.0),
                            }
                        }
                    }
                }
            }
        }
    }

    /// The whole patch matrix of `x` into `out` (resized), filled in
    /// parallel in blocks of about 1 MiB.
    pub fn patches_into(&self, x: &[f32], out: &mut Vec<f32>) {
        let (rows, width) = (self.rows(), self.width());
        out.resize(rows * width, 0.0);
        let block = ((1usize << 18) / width.max(1)).max(1);
        out[..rows * width].par_chunks_mut(block * width.max(1)).enumerate().for_each(|(i, chunk)| self.fill(x, i * block, chunk));
    }

    /// Adds rows `first..` of a patch-matrix gradient `d_rows` onto `dx`,
    /// the gradient of the images from `first_image` on (`H·W·C` each):
    /// each entry onto the pixel it was read from.
    fn scatter(&self, d_rows: &[f32], first: usize, first_image: usize, dx: &mut [f32]) {
        let [_, h, w, c] = self.input;
        let [oh, ow] = self.out_hw;
        let [kh, kw] = self.kernel;
        for (i, row) in d_rows.chunks_exact(self.width().max(1)).enumerate() {
            let p = first + i;
            let (b, oy, ox) = (p / (oh * ow) - first_image, (p / ow) % oh, p % ow);
            for ky in 0..kh {
                for kx in 0..kw {
                    if let Some((iy, ix)) = self.source((oy, ox), (ky, kx)) {
                        let src = &row[(ky * kw + kx) * c..][..c];
                        dx[((b * h + iy) * w + ix) * c..][..c].iter_mut().zip(src).for_each(|(d, s)| *d += s);
                    }
                }
            }
        }
    }

    /// Checks that each operand holds the elements of its shape.
    fn check_lengths(&self, operands: [(&str, usize, &[usize]); 3]) -> Result<(), KernelError> {
        for (name, len, shape) in operands {
            let want = checked_product(shape, name)?;
            if len != want {
                return Err(KernelError::Shape(format!("{name} holds {len} elements, its shape {shape:?} needs {want}")));
            }
        }
        Ok(())
    }

    fn output_shape(&self, cout: usize) -> [usize; 4] {
        [self.input[0], self.out_hw[0], self.out_hw[1], cout]
    }

    /// `y = P·K`: `x` `(N, H, W, C)`, `kernel` `(width, cout)`, `y`
    /// `(N, H', W', cout)`, on the rayon pool.
    pub fn forward(&self, x: &[f32], kernel: &[f32], cout: usize, y: &mut [f32]) -> Result<(), KernelError> {
        self.forward_on(x, kernel, cout, y, self.path(cout, rayon::current_num_threads()))
    }

    /// [`Conv2d::forward`] on the given path.
    pub fn forward_on(&self, x: &[f32], kernel: &[f32], cout: usize, y: &mut [f32], path: Path) -> Result<(), KernelError> {
        let (rows, width) = (self.rows(), self.width());
        self.check_lengths([("x", x.len(), &self.input), ("the kernel", kernel.len(), &[width, cout]), ("y", y.len(), &self.output_shape(cout))])?;
        if path == Path::Whole {
            return with_scratch(|patches| {
                self.patches_into(x, patches);
                let shape = MatmulShape::broadcast(&[], &[], &[], rows, width, cout, Op::Identity, Op::Identity)?;
                batched_matmul(&patches[..rows * width], kernel, y, &shape)
            });
        }
        let (_, block) = self.blocks(rayon::current_num_threads());
        let k = MatrixView::row_major(kernel, width, cout);
        y.par_chunks_mut(block * cout.max(1)).enumerate().try_for_each(|(i, out)| {
            let count = out.len() / cout.max(1);
            with_scratch(|patches| {
                patches.resize(count * width, 0.0);
                self.fill(x, i * block, &mut patches[..count * width]);
                product_on_this_thread(out, MatrixView::row_major(&patches[..count * width], count, width), k, false)
            })
        })
    }

    /// `dx` from `dy = ∂L/∂y`: for stride 1 the convolution of `dy` with the
    /// flipped kernel ([`Conv2d::transposed`]), on its own path; otherwise
    /// the rows of `dY·Kᵀ` added onto the pixels they were read from,
    /// threaded over the images (their gradients are disjoint); on the
    /// whole path `dY·Kᵀ` is one threaded GEMM first. One image alone runs
    /// on one thread on the blocked scatter path.
    pub fn backward_input(&self, dy: &[f32], kernel: &[f32], cout: usize, dx: &mut [f32]) -> Result<(), KernelError> {
        let threads = rayon::current_num_threads();
        let path = match self.transposed(cout) {
            Some(transposed) => transposed.path(self.input[3], threads),
            None => self.path(cout, threads),
        };
        self.backward_input_on(dy, kernel, cout, dx, path)
    }

    /// The convolution whose forward pass is this one's input gradient, for
    /// stride 1 with no side padded by more than its kernel less one:
    /// `dy` `(N, H', W', cout)` padded by `k − 1 − p` on each side, with the
    /// kernel flipped in both axes and its channels swapped
    /// ([`Conv2d::flipped_kernel`]), gives `(N, H, W, C)`.
    fn transposed(&self, cout: usize) -> Option<Conv2d> {
        let fits = |axis: usize| self.padding[axis].iter().all(|&p| p < self.kernel[axis]);
        if self.stride != [1, 1] || !fits(0) || !fits(1) {
            return None;
        }
        let [kh, kw] = self.kernel;
        let [[top, bottom], [left, right]] = self.padding;
        let padding = [[kh - 1 - top, kh - 1 - bottom], [kw - 1 - left, kw - 1 - right]];
        let [n, oh, ow] = [self.input[0], self.out_hw[0], self.out_hw[1]];
        Conv2d::new([n, oh, ow, cout], self.kernel, [1, 1], padding).ok()
    }

    /// The kernel `(kh·kw·cout, C)` of [`Conv2d::transposed`]: entry
    /// `((ky, kx, o), c)` is entry `((kh−1−ky, kw−1−kx, c), o)` of `kernel`.
    fn flipped_kernel(&self, kernel: &[f32], cout: usize) -> Vec<f32> {
        const TILE: usize = 32;
        let ([kh, kw], c) = (self.kernel, self.input[3]);
        let mut flipped = vec![0.0f32; kernel.len()];
        // Each tap's `(C, cout)` block transposed, in tiles that stay in cache.
        flipped.par_chunks_exact_mut(cout * c).enumerate().for_each(|(tap, block)| {
            let source = &kernel[(kh * kw - 1 - tap) * c * cout..][..c * cout];
            for o0 in (0..cout).step_by(TILE) {
                for c0 in (0..c).step_by(TILE) {
                    for o in o0..(o0 + TILE).min(cout) {
                        for ci in c0..(c0 + TILE).min(c) {
                            block[o * c + ci] = source[ci * cout + o];
                        }
                    }
                }
            }
        });
        flipped
    }

    /// [`Conv2d::backward_input`] on the given path: for stride 1 the
    /// forward pass of [`Conv2d::transposed`] on that path (a product with
    /// `kh·kw·cout` terms a row, no scatter); else the rows of `dY·Kᵀ`
    /// scattered back.
    pub fn backward_input_on(&self, dy: &[f32], kernel: &[f32], cout: usize, dx: &mut [f32], path: Path) -> Result<(), KernelError> {
        let (rows, width) = (self.rows(), self.width());
        self.check_lengths([("dy", dy.len(), &self.output_shape(cout)), ("the kernel", kernel.len(), &[width, cout]), ("dx", dx.len(), &self.input)])?;
        if cout > 0 && self.input[3] > 0 {
            if let Some(transposed) = self.transposed(cout) {
                return transposed.forward_on(dy, &self.flipped_kernel(kernel, cout), self.input[3], dx, path);
            }
        }
        dx.fill(0.0);
        let image = self.input[1] * self.input[2] * self.input[3];
        let per_image = self.out_hw[0] * self.out_hw[1];
        if image == 0 || per_image == 0 {
            return Ok(());
        }
        let kt = MatrixView::row_major(kernel, width, cout).t();
        if path == Path::Whole {
            return with_scratch(|d_patches| {
                d_patches.resize(rows * width, 0.0);
                let shape = MatmulShape::broadcast(&[], &[], &[], rows, cout, width, Op::Identity, Op::Transpose)?;
                batched_matmul(dy, kernel, &mut d_patches[..rows * width], &shape)?;
                let d_patches = &d_patches[..rows * width];
                dx.par_chunks_mut(image).enumerate().for_each(|(b, dx)| {
                    self.scatter(&d_patches[b * per_image * width..][..per_image * width], b * per_image, b, dx)
                });
                Ok(())
            });
        }
        // A task owns the gradient of whole images (so no two write the same
        // pixel): several small ones, in one product, or one large one, in
        // blocks. There are at least as many tasks as threads.
        let threads = rayon::current_num_threads();
        let (_, block) = self.blocks(threads);
        let images = (block / per_image).clamp(1, self.input[0].div_ceil(threads).max(1));
        let step = block.min(images * per_image).max(1);
        dx.par_chunks_mut(images * image).enumerate().try_for_each(|(task, dx)| {
            let first_image = task * images;
            let (start, end) = (first_image * per_image, (first_image + dx.len() / image) * per_image);
            with_scratch(|d_patches| {
                for first in (start..end).step_by(step) {
                    let count = step.min(end - first);
                    d_patches.resize(count * width, 0.0);
                    let dy_rows = MatrixView::row_major(&dy[first * cout..][..count * cout], count, cout);
                    product_on_this_thread(&mut d_patches[..count * width], dy_rows, kt, false)?;
                    self.scatter(&d_patches[..count * width], first, first_image, dx);
                }
                Ok(())
            })
        })
    }

    /// `dk = Pᵀ·dY` `(width, cout)` from the input `x` and `dy = ∂L/∂y`.
    /// On the path of [`kernel_gradient_path`]: on the blocked one each
    /// thread sums the blocks of its share of the pixels into its own `dk`,
    /// and the shares are added at the end.
    pub fn backward_kernel(&self, x: &[f32], dy: &[f32], cout: usize, dk: &mut [f32]) -> Result<(), KernelError> {
        self.backward_kernel_on(x, dy, cout, dk, kernel_gradient_path(self.rows(), cout, rayon::current_num_threads()))
    }

    /// [`Conv2d::backward_kernel`] on the given path.
    pub fn backward_kernel_on(&self, x: &[f32], dy: &[f32], cout: usize, dk: &mut [f32], path: Path) -> Result<(), KernelError> {
        let (rows, width) = (self.rows(), self.width());
        self.check_lengths([("x", x.len(), &self.input), ("dy", dy.len(), &self.output_shape(cout)), ("dk", dk.len(), &[width, cout])])?;
        dk.fill(0.0);
        if rows == 0 {
            return Ok(());
        }
        if path == Path::Whole {
            return with_scratch(|patches| {
                self.patches_into(x, patches);
                let shape = MatmulShape::broadcast(&[], &[], &[], width, rows, cout, Op::Transpose, Op::Identity)?;
                batched_matmul(&patches[..rows * width], dy, dk, &shape)
            });
        }
        let threads = rayon::current_num_threads();
        let (blocks, block) = self.blocks(threads);
        let per_task = blocks.div_ceil(threads) * block;
        let partial = (0..rows.div_ceil(per_task))
            .into_par_iter()
            .map(|task| -> Result<Vec<f32>, KernelError> {
                let mut sum = vec![0.0f32; width * cout];
                with_scratch(|patches| {
                    let end = ((task + 1) * per_task).min(rows);
                    for first in (task * per_task..end).step_by(block) {
                        let count = block.min(end - first);
                        patches.resize(count * width, 0.0);
                        self.fill(x, first, &mut patches[..count * width]);
                        let p_t = MatrixView::row_major(&patches[..count * width], count, width).t();
                        let dy_rows = MatrixView::row_major(&dy[first * cout..][..count * cout], count, cout);
                        product_on_this_thread(&mut sum, p_t, dy_rows, true)?;
                    }
                    Ok(sum)
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        for sum in partial {
            dk.iter_mut().zip(&sum).for_each(|(d, s)| *d += s);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(count: usize, seed: usize) -> Vec<f32> {
        (0..count).map(|i| (((i + seed) * 37 % 101) as f32 - 50.0) / 50.0).collect()
    }

    /// The direct convolution in f64: `y[b, oy, ox, o] = Σ x·k` over the
    /// taps that fall inside the image.
    fn direct(g: &Conv2d, x: &[f32], k: &[f32], cout: usize) -> Vec<f64> {
        let [n, h, w, c] = g.input;
        let [oh, ow] = g.out_hw;
        let mut y = vec![0.0f64; n * oh * ow * cout];
        for b in 0..n {
            for oy in 0..oh {
                for ox in 0..ow {
                    for ky in 0..g.kernel[0] {
                        for kx in 0..g.kernel[1] {
                            let Some((iy, ix)) = g.source((oy, ox), (ky, kx)) else { continue };
                            for ci in 0..c {
                                let xv = f64::from(x[((b * h + iy) * w + ix) * c + ci]);
                                for o in 0..cout {
                                    let kv = f64::from(k[((ky * g.kernel[1] + kx) * c + ci) * cout + o]);
                                    y[((b * oh + oy) * ow + ox) * cout + o] += xv * kv;
                                }
                            }
                        }
                    }
                }
            }
        }
        y
    }

    fn assert_close(ours: &[f32], reference: &[f64], what: &str) {
        let scale = reference.iter().fold(1e-30f64, |m, v| m.max(v.abs()));
        for (i, (a, b)) in ours.iter().zip(reference).enumerate() {
            assert!((f64::from(*a) - b).abs() <= 1e-5 * scale, "{what}[{i}]: {a} vs {b}");
        }
    }

    /// Cases: several blocks (stride 1, SAME), one small strided image with
    /// asymmetric padding, a 1×1 and a kernel wider than the image is tall;
    /// stride 1 with asymmetric padding, and a padded 1×1 (its padding no
    /// less than the kernel: the scatter path).
    fn cases() -> Vec<(Conv2d, usize)> {
        vec![
            (Conv2d::new([2, 40, 40, 48], [3, 3], [1, 1], [[1, 1], [1, 1]]).unwrap(), 8),
            (Conv2d::new([3, 11, 10, 3], [3, 3], [2, 2], [[0, 2], [1, 0]]).unwrap(), 5),
            (Conv2d::new([2, 5, 7, 6], [1, 1], [2, 1], [[0, 0], [0, 0]]).unwrap(), 4),
            (Conv2d::new([1, 2, 9, 4], [3, 5], [1, 2], [[1, 1], [2, 2]]).unwrap(), 3),
            (Conv2d::new([2, 6, 7, 5], [3, 2], [1, 1], [[2, 0], [0, 1]]).unwrap(), 4),
            (Conv2d::new([2, 3, 4, 3], [1, 1], [1, 1], [[1, 0], [0, 1]]).unwrap(), 2),
        ]
    }

    #[test]
    fn forward_on_both_paths_matches_a_direct_convolution() {
        let (big, _) = cases()[0];
        assert!(big.blocks(2).0 > 2, "the first case must span several blocks");
        for (g, cout) in cases() {
            let (x, k) = (values(g.input.iter().product(), 1), values(g.width() * cout, 2));
            let reference = direct(&g, &x, &k, cout);
            for path in [Path::Whole, Path::Blocked] {
                let mut y = vec![f32::NAN; g.rows() * cout];
                g.forward_on(&x, &k, cout, &mut y, path).unwrap();
                assert_close(&y, &reference, &format!("{g:?} {path:?} y"));
            }
        }
    }

    /// Both gradients against the adjoint identities of the direct
    /// convolution: `dx[j] = Σ_i dy[i]·∂y[i]/∂x[j]` with `y` linear in `x`,
    /// so `⟨dy, conv(x')⟩ = ⟨dx, x'⟩` for every `x'`; the same for `k`. The
    /// gradients are checked entry by entry with one-hot `x'` and `k'`
    /// sampled over the whole tensor.
    #[test]
    fn gradients_on_both_paths_are_the_adjoints_of_the_forward() {
        for (g, cout) in cases() {
            let (x, k, dy) = (values(g.input.iter().product(), 3), values(g.width() * cout, 4), values(g.rows() * cout, 5));
            let inner = |y: &[f64]| y.iter().zip(&dy).map(|(a, b)| a * f64::from(*b)).sum::<f64>();
            for path in [Path::Whole, Path::Blocked] {
                let mut dx = vec![f32::NAN; x.len()];
                g.backward_input_on(&dy, &k, cout, &mut dx, path).unwrap();
                let mut dk = vec![f32::NAN; k.len()];
                g.backward_kernel_on(&x, &dy, cout, &mut dk, path).unwrap();
                let step = |len: usize| (len / 23).max(1);
                let (mut want_dx, mut got_dx) = (vec![], vec![]);
                for j in (0..x.len()).step_by(step(x.len())) {
                    let mut one = vec![0.0f32; x.len()];
                    one[j] = 1.0;
                    want_dx.push(inner(&direct(&g, &one, &k, cout)));
                    got_dx.push(dx[j]);
                }
                assert_close(&got_dx, &want_dx, &format!("{g:?} {path:?} dx"));
                let (mut want_dk, mut got_dk) = (vec![], vec![]);
                for j in (0..k.len()).step_by(step(k.len())) {
                    let mut one = vec![0.0f32; k.len()];
                    one[j] = 1.0;
                    want_dk.push(inner(&direct(&g, &x, &one, cout)));
                    got_dk.push(dk[j]);
                }
                assert_close(&got_dk, &want_dk, &format!("{g:?} {path:?} dk"));
            }
        }
    }

    #[test]
    fn refuses_bad_geometry_and_lengths() {
        assert!(Conv2d::new([1, 2, 2, 1], [3, 3], [1, 1], [[0, 0], [0, 0]]).is_err());
        assert!(Conv2d::new([1, 4, 4, 1], [0, 3], [1, 1], [[0, 0], [0, 0]]).is_err());
        assert!(Conv2d::new([1, 4, 4, 1], [3, 3], [1, 0], [[0, 0], [0, 0]]).is_err());
        assert!(Conv2d::new([usize::MAX, 4, 4, 2], [3, 3], [1, 1], [[1, 1], [1, 1]]).is_err());
        assert!(Conv2d::new([1, 4, 4, 1], [3, 3], [1, 1], [[usize::MAX, 1], [0, 0]]).is_err());
        let g = Conv2d::new([1, 4, 4, 2], [3, 3], [1, 1], [[1, 1], [1, 1]]).unwrap();
        let mut y = vec![0.0; 16 * 3];
        assert!(g.forward(&[0.0; 31], &[0.0; 18 * 3], 3, &mut y).is_err());
        assert!(g.forward(&[0.0; 32], &[0.0; 18 * 3 - 1], 3, &mut y).is_err());
        assert!(g.forward(&[0.0; 32], &[0.0; 18 * 3], 3, &mut y[1..]).is_err());
        let mut dx = vec![0.0; 31];
        assert!(g.backward_input(&[0.0; 48], &[0.0; 54], 3, &mut dx).is_err());
        let mut dk = vec![0.0; 53];
        assert!(g.backward_kernel(&[0.0; 32], &[0.0; 48], 3, &mut dk).is_err());
    }
}
