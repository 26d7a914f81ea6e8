//! Winograd F(2×2, 3×3) convolution (Lavin and Gray, "Fast Algorithms for
//! Convolutional Neural Networks", 2016) for 3×3 stride-1 convolutions on
//! NHWC images, used in ideal mode.
//!
//! A 2×2 output tile is `Aᵀ·[(G·g·Gᵀ) ⊙ (Bᵀ·d·B)]·A` for its 4×4 input patch
//! `d` and each 3×3 filter `g`, so 16 products of `(tiles × C)·(C × K)`
//! replace 36 multiply-adds per tile and channel pair: 2.25× fewer than the
//! direct (im2col) product. The transforms only add and halve, so the result
//! stays within a few ulp of the direct sum per term.

use lumijax_native::gemm::{strided_product_on_this_thread, DisjointOutput};

use lumijax_native::scratch::with_scratch;
use rayon::prelude::*;

/// Transform points per tile (4×4).
const POINTS: usize = 16;

/// Both input and output transforms combine rows (then columns) as
/// `out[r] = x[a] + sign·x[b]`: the rows of `Bᵀ` for the input transform.
const INPUT_ROWS: [(usize, usize, f32); 4] = [(0, 2, -1.0), (1, 2, 1.0), (2, 1, -1.0), (1, 3, -1.0)];

/// The filters of one convolution in the Winograd domain, `U = G·g·Gᵀ`,
/// stored `[C][16][K]`: the product of transform point `ξ` reads the `C × K`
/// matrix at offset `ξ·K` with rows `16·K` apart.
pub struct Filter {
    channels: usize,
    outputs: usize,
    u: Vec<f32>,
}

impl Filter {
    /// From a convolution weight stored `(K, 3·3·C)`: kernel row, kernel
    /// column, channel fastest (FORMAT.md §6).
    pub fn new(weight: &[f32], outputs: usize, channels: usize) -> Filter {
        let mut u = vec![0.0f32; channels * POINTS * outputs];
        u.par_chunks_mut((POINTS * outputs).max(1)).enumerate().for_each(|(c, rows)| {
            for k in 0..outputs {
                let g = |ky: usize, kx: usize| weight[k * 9 * channels + (ky * 3 + kx) * channels + c];
                // G·g, then (G·g)·Gᵀ, with G = [1 0 0; ½ ½ ½; ½ −½ ½; 0 0 1].
                let gg = |a: [f32; 3]| [a[0], 0.5 * (a[0] + a[1] + a[2]), 0.5 * (a[0] - a[1] + a[2]), a[2]];
                let columns: [[f32; 4]; 3] = [0, 1, 2].map(|kx| gg([g(0, kx), g(1, kx), g(2, kx)]));
                for i in 0..4 {
                    let row = gg([columns[0][i], columns[1][i], columns[2][i]]);
                    for (j, value) in row.into_iter().enumerate() {
                        rows[(i * 4 + j) * outputs + k] = value;
                    }
                }
            }
        });
        Filter { channels, outputs, u }
    }
}

/// Whether Winograd is worth it for `batch × out_hw` outputs from
/// `channels` inputs. Measured on ResNet-18's layers (2-core AVX-512): below
/// 64 channels the 16 products are too shallow to run near peak, and with
/// fewer than 32 tiles (a 7×7 image) they stream 16/9 of the filter bytes
/// for too little work, slower than im2col.
pub fn pays(batch: usize, out_hw: [usize; 2], channels: usize) -> bool {
    let tiles = batch * out_hw[0].div_ceil(2) * out_hw[1].div_ceil(2);
    channels >= 64 && tiles >= 32 && POINTS * tiles < 9 * batch * out_hw[0] * out_hw[1]
}

/// The geometry of one Winograd convolution.
struct Tiling<'a> {
    /// B, H, W, C of the input.
    shape: [usize; 4],
    padding: [[usize; 2]; 2],
    out_hw: [usize; 2],
    /// Tiles down and across one image.
    tiles_hw: [usize; 2],
    filter: &'a Filter,
}

impl Tiling<'_> {
    /// Image, tile row and tile column of tile `t`.
    fn locate(&self, t: usize) -> (usize, usize, usize) {
        let [th, tw] = self.tiles_hw;
        (t / (th * tw), (t / tw) % th, t % tw)
    }

    /// `Bᵀ·d·B` of tiles `first..first + count` into `v[ξ][t][c]`; `work`
    /// holds 32·C.
    fn transform_input(&self, x: &[f32], first: usize, count: usize, v: &mut [f32], work: &mut [f32]) {
        let [_, h, w, c] = self.shape;
        let (patch, rows) = work.split_at_mut(POINTS * c);
        for t in 0..count {
            let (b, ty, tx) = self.locate(first + t);
            for i in 0..4 {
                let iy = (2 * ty + i) as isize - self.padding[0][0] as isize;
                for j in 0..4 {
                    let ix = (2 * tx + j) as isize - self.padding[1][0] as isize;
                    let dst = &mut patch[(i * 4 + j) * c..][..c];
                    if iy < 0 || iy >= h as isize || ix < 0 || ix >= w as isize {
                        dst.fill(0.0);
                    } else {
                        dst.copy_from_slice(&x[((b * h + iy as usize) * w + ix as usize) * c..][..c]);
                    }
                }
            }
            for (r, &(p, q, sign)) in INPUT_ROWS.iter().enumerate() {
                for j in 0..4 {
                    combine(&mut rows[(r * 4 + j) * c..][..c], &patch[(p * 4 + j) * c..][..c], &patch[(q * 4 + j) * c..][..c], sign);
                }
            }
            for i in 0..4 {
                for (r, &(p, q, sign)) in INPUT_ROWS.iter().enumerate() {
                    combine(&mut v[((i * 4 + r) * count + t) * c..][..c], &rows[(i * 4 + p) * c..][..c], &rows[(i * 4 + q) * c..][..c], sign);
                }
            }
        }
    }

    /// `Aᵀ·M·A` of tiles `first..first + count` from `m[ξ][t][k]` (channels
    /// `k0..k0 + kn`) into the output; `work` holds 12·kn.
    fn transform_output(&self, m: &[f32], first: usize, count: usize, (k0, kn): (usize, usize), out: &DisjointOutput<f32>, work: &mut [f32]) {
        let (s, tile) = work.split_at_mut(8 * kn);
        let [oh, ow] = self.out_hw;
        let outputs = self.filter.outputs;
        for t in 0..count {
            let (b, ty, tx) = self.locate(first + t);
            let point = |xi: usize| &m[(xi * count + t) * kn..][..kn];
            // Aᵀ·M on rows (Aᵀ = [1 1 1 0; 0 1 −1 −1]), then ·A on columns.
            for j in 0..4 {
                let [m0, m1, m2, m3] = [0, 1, 2, 3].map(|i| point(i * 4 + j));
                sum3(&mut s[j * kn..][..kn], m0, m1, m2, [1.0, 1.0]);
                sum3(&mut s[(4 + j) * kn..][..kn], m1, m2, m3, [-1.0, -1.0]);
            }
            for i in 0..2 {
                let [s0, s1, s2, s3] = [0, 1, 2, 3].map(|j| &s[(i * 4 + j) * kn..][..kn]);
                let (left, right) = tile[i * 2 * kn..][..2 * kn].split_at_mut(kn);
                sum3(left, s0, s1, s2, [1.0, 1.0]);
                sum3(right, s1, s2, s3, [-1.0, -1.0]);
            }
            for i in 0..2 {
                for j in 0..2 {
                    let (oy, ox) = (2 * ty + i, 2 * tx + j);
                    if oy < oh && ox < ow {
                        let offset = ((b * oh + oy) * ow + ox) * outputs + k0;
                        // SAFETY: offset + kn ≤ B·oh·ow·K, the output's length,
                        // since oy < oh, ox < ow and k0 + kn ≤ K; pixel
                        // (b, oy, ox) belongs to this task's tile and channels
                        // k0..k0 + kn to its block, so no other task writes them.
                        unsafe { std::ptr::copy_nonoverlapping(tile[(i * 2 + j) * kn..][..kn].as_ptr(), out.ptr().add(offset), kn) };
                    }
                }
            }
        }
    }
}

/// The 3×3 stride-1 convolution of the NHWC image `x` (`shape` B, H, W, C)
/// with `padding` [[top, bottom], [left, right]], giving `(B, out_hw, K)`.
///
/// Work is cut into blocks of tiles and, when there are fewer such blocks
/// than twice the threads, into blocks of output channels; a task
/// transforms its tiles into a reused per-thread buffer, runs the 16
/// products on its thread and writes its outputs.
pub fn conv3x3(x: &[f32], shape: &[usize], padding: [[usize; 2]; 2], out_hw: [usize; 2], filter: &Filter) -> Result<Vec<f32>, String> {
    let shape = [shape[0], shape[1], shape[2], shape[3]];
    let c = shape[3];
    if c != filter.channels {
        return Err(format!("the Winograd filter takes {} channels, the image has {c}", filter.channels));
    }
    let outputs = filter.outputs;
    let tiling = Tiling { shape, padding, out_hw, tiles_hw: [out_hw[0].div_ceil(2), out_hw[1].div_ceil(2)], filter };
    let tiles = shape[0] * tiling.tiles_hw[0] * tiling.tiles_hw[1];
    let mut y = vec![0.0f32; shape[0] * out_hw[0] * out_hw[1] * outputs];
    if tiles == 0 || outputs == 0 {
        return Ok(y);
    }
    let split = Split::new(tiles, c, outputs, rayon::current_num_threads());
    let tasks: Vec<(usize, usize)> = (0..split.tile_blocks).flat_map(|t| (0..split.channel_blocks).map(move |k| (t, k))).collect();
    // Every task writes only the channels of its own block at the pixels of
    // its own tiles, and the tasks' (tiles × channels) sets are disjoint.
    let out = DisjointOutput::new(&mut y);
    tasks.par_iter().try_for_each(|&(tb, kb)| {
        let first = tb * split.tiles;
        let count = split.tiles.min(tiles - first);
        let k0 = kb * split.channels;
        let kn = split.channels.min(outputs - k0);
        with_scratch(|scratch| -> Result<(), String> {
            scratch.resize(Split::scratch(count, c, kn), 0.0);
            let (v, rest) = scratch.split_at_mut(POINTS * count * c);
            let (m, rest) = rest.split_at_mut(POINTS * count * kn);
            let (input_work, output_work) = rest.split_at_mut(2 * POINTS * c);
            tiling.transform_input(x, first, count, v, input_work);
            for (xi, (product, transformed)) in m.chunks_exact_mut(count * kn).zip(v.chunks_exact(count * c)).enumerate() {
                strided_product_on_this_thread(transformed, &filter.u[xi * outputs + k0..], POINTS * outputs, product, (count, c, kn))
                    .map_err(|e| e.to_string())?;
            }
            tiling.transform_output(m, first, count, (k0, kn), &out, output_work);
            Ok(())
        })
    })?;
    Ok(y)
}

/// How a convolution's tiles and output channels are cut into tasks.
struct Split {
    /// Tiles per block, and blocks of tiles.
    tiles: usize,
    tile_blocks: usize,
    /// Output channels per block, and blocks of channels (none empty).
    channels: usize,
    channel_blocks: usize,
}

impl Split {
    /// Blocks of tiles as large as the input channels (so a task's tiles
    /// amortise its stream of filters), within 128..=512 tiles; when there
    /// are fewer blocks than twice the threads, the output channels are cut
    /// too, into blocks of at least 64.
    fn new(tiles: usize, channels: usize, outputs: usize, threads: usize) -> Split {
        let tile_blocks = tiles.div_ceil(channels.clamp(128, 512)).max(1);
        let per_tile_block = tiles.div_ceil(tile_blocks);
        let wanted = (2 * threads).div_ceil(tile_blocks).min(outputs.div_ceil(64)).max(1);
        let per_channel_block = outputs.div_ceil(wanted).max(1);
        Split { tiles: per_tile_block, tile_blocks, channels: per_channel_block, channel_blocks: outputs.div_ceil(per_channel_block) }
    }

    /// Scratch elements of a task of `count` tiles, `channels` inputs and `kn` outputs.
    fn scratch(count: usize, channels: usize, kn: usize) -> usize {
        POINTS * count * (channels + kn) + 2 * POINTS * channels + 12 * kn
    }
}

/// Scratch elements the tasks running at once on `threads` threads hold for
/// a convolution from `channels` inputs to the NHWC `output`.
pub fn scratch_elements(output: &[usize], channels: usize, threads: usize) -> usize {
    let tiles = output[0] * output[1].div_ceil(2) * output[2].div_ceil(2);
    let split = Split::new(tiles, channels, output[3], threads);
    let tasks = split.tile_blocks * split.channel_blocks;
    tasks.min(threads.max(1)) * Split::scratch(split.tiles, channels, split.channels)
}

/// `out = a + sign·b`.
fn combine(out: &mut [f32], a: &[f32], b: &[f32], sign: f32) {
    for ((o, &p), &q) in out.iter_mut().zip(a).zip(b) {
        *o = p + sign * q;
    }
}

/// `out = a + signs[0]·b + signs[1]·c`.
fn sum3(out: &mut [f32], a: &[f32], b: &[f32], c: &[f32], signs: [f32; 2]) {
    for (((o, &p), &q), &r) in out.iter_mut().zip(a).zip(b).zip(c) {
        *o = p + signs[0] * q + signs[1] * r;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The direct sum in f64.
    fn direct(x: &[f32], shape: [usize; 4], weight: &[f32], outputs: usize, padding: [[usize; 2]; 2], out_hw: [usize; 2]) -> Vec<f64> {
        let [batch, h, w, c] = shape;
        let mut y = vec![0.0f64; batch * out_hw[0] * out_hw[1] * outputs];
        for b in 0..batch {
            for oy in 0..out_hw[0] {
                for ox in 0..out_hw[1] {
                    for k in 0..outputs {
                        let mut acc = 0.0f64;
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let (iy, ix) = ((oy + ky) as isize - padding[0][0] as isize, (ox + kx) as isize - padding[1][0] as isize);
                                if iy < 0 || iy >= h as isize || ix < 0 || ix >= w as isize {
                                    continue;
                                }
                                for ch in 0..c {
                                    let xv = x[((b * h + iy as usize) * w + ix as usize) * c + ch] as f64;
                                    acc += xv * weight[k * 9 * c + (ky * 3 + kx) * c + ch] as f64;
                                }
                            }
                        }
                        y[((b * out_hw[0] + oy) * out_hw[1] + ox) * outputs + k] = acc;
                    }
                }
            }
        }
        y
    }

    #[test]
    fn matches_the_direct_convolution() {
        // Odd and even sizes, asymmetric and zero padding, channel counts
        // that leave ragged blocks, several tile and channel blocks.
        let cases: [([usize; 4], usize, [[usize; 2]; 2]); 5] = [
            ([1, 7, 7, 3], 5, [[1, 1], [1, 1]]),
            ([2, 6, 9, 4], 70, [[0, 1], [2, 0]]),
            ([1, 5, 4, 8], 3, [[0, 0], [0, 0]]),
            ([3, 30, 29, 5], 130, [[1, 1], [1, 1]]),
            ([1, 3, 3, 600], 2, [[2, 2], [1, 1]]),
        ];
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        for (shape, outputs, padding) in cases {
            let [_, h, w, c] = shape;
            let out_hw = [h + padding[0][0] + padding[0][1] - 2, w + padding[1][0] + padding[1][1] - 2];
            let x: Vec<f32> = (0..shape.iter().product::<usize>()).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect();
            let weight: Vec<f32> = (0..outputs * 9 * c).map(|i| ((i * 53 % 89) as f32 - 44.0) / 40.0).collect();
            let filter = Filter::new(&weight, outputs, c);
            let got = pool.install(|| conv3x3(&x, &shape, padding, out_hw, &filter)).unwrap();
            let want = direct(&x, shape, &weight, outputs, padding, out_hw);
            let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            let error = got.iter().zip(&want).fold(0.0f64, |m, (g, w)| m.max((*g as f64 - w).abs()));
            // f32 sums of up to 5400 terms, through transforms that grow
            // values by at most 4 (input) and 9/4 (filter).
            assert!(error <= 4e-6 * scale, "{shape:?} → {outputs}, {padding:?}: {error:e} of {scale}");
        }
    }

    #[test]
    fn pays_only_for_deep_inputs_and_enough_tiles() {
        assert!(pays(1, [14, 14], 256));
        assert!(pays(8, [7, 7], 512));
        assert!(!pays(1, [7, 7], 512));
        assert!(pays(1, [56, 56], 64));
        assert!(!pays(1, [56, 56], 32));
        assert!(!pays(64, [1, 1], 512));
    }

    #[test]
    fn every_split_covers_the_channels_with_no_empty_block() {
        for threads in 1..=64 {
            for outputs in [1, 63, 64, 65, 130, 1000, 4097, 5121, 9000] {
                for (tiles, channels) in [(1, 64), (32, 64), (1000, 256), (5000, 600)] {
                    let split = Split::new(tiles, channels, outputs, threads);
                    let last = (split.channel_blocks - 1) * split.channels;
                    assert!(last < outputs && outputs <= split.channel_blocks * split.channels, "{threads} threads, {outputs} outputs");
                    assert!((split.tile_blocks - 1) * split.tiles < tiles && tiles <= split.tile_blocks * split.tiles);
                }
            }
        }
    }

    #[test]
    fn refuses_a_filter_for_other_channels() {
        let filter = Filter::new(&[0.0; 2 * 9 * 3], 2, 3);
        let err = conv3x3(&[0.0; 4 * 4 * 4], &[1, 4, 4, 4], [[0, 0], [0, 0]], [2, 2], &filter).unwrap_err();
        assert!(err.contains("takes 3 channels, the image has 4"), "{err}");
    }
}
