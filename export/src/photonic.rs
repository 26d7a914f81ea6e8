//! The photonic core of FORMAT.md §7.2: slot order, converters, crosstalk
//! compensation, bank coupling and detector noise around a product.

use lumijax_native::gemm::{batched_matmul, strided_product_on_this_thread, MatmulShape, Op as GemmOp};
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;

use crate::graph::Core;

/// How products are simulated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The float products of the stored weights.
    Ideal,
    /// Converters, compensation and coupling, no noise.
    Expected,
    /// `Expected` plus detector noise from the seeded streams.
    Noisy { seed: u64 },
}

impl Mode {
    /// `"ideal"`, `"expected"` or `"noisy"`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Ideal => "ideal",
            Mode::Expected => "expected",
            Mode::Noisy { .. } => "noisy",
        }
    }
}

/// `c = a·op(b)` for row-major `a` (batch·m × k) and `b` (batch·k × n, or
/// batch·n × k with `transpose_b`).
/// Threaded over the pool.
pub fn gemm(a: &[f32], b: &[f32], c: &mut [f32], batch: usize, (m, k, n): (usize, usize, usize), transpose_b: bool) -> Result<(), String> {
    let op_b = if transpose_b { GemmOp::Transpose } else { GemmOp::Identity };
    let shape = MatmulShape::broadcast(&[batch], &[batch], &[batch], m, k, n, GemmOp::Identity, op_b).map_err(|e| e.to_string())?;
    batched_matmul(a, b, c, &shape).map_err(|e| e.to_string())
}

/// `c = a·b` for one row-major product, on the calling thread: `a` `(m, k)`,
/// `b` the first `n` columns of `k` rows `b_row_stride` apart.
pub fn gemm_on_this_thread(a: &[f32], b: &[f32], b_row_stride: usize, c: &mut [f32], (m, k, n): (usize, usize, usize)) -> Result<(), String> {
    strided_product_on_this_thread(a, b, b_row_stride, c, (m, k, n)).map_err(|e| e.to_string())
}

/// A converter of `bits`: signed, `x ← s·clip(round_half_even(x/s), −2^(b−1), 2^(b−1)−1)`,
/// `s = range/(2^(b−1)−1)`; unsigned, `x ← s·clip(round_half_even(x/s), 0, 2^b−1)`,
/// `s = range/(2^b−1)`.
pub fn fake_quant(x: &mut [f32], range: f32, bits: u32, signed: bool) {
    let half = ((1u32 << (bits - 1)) - 1) as f32;
    let (lo, hi) = if signed { (-half - 1.0, half) } else { (0.0, ((1u32 << bits) - 1) as f32) };
    let scale = range.max(f32::MIN_POSITIVE) / hi;
    for v in x.iter_mut() {
        *v = scale * (*v / scale).round_ties_even().clamp(lo, hi);
    }
}

fn max_abs(x: &[f32]) -> f32 {
    x.iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

/// The inverse of a row-major `n×n` matrix (Gauss–Jordan, partial pivoting, f64).
fn inverse(a: &[f64], n: usize) -> Result<Vec<f64>, String> {
    let mut m = a.to_vec();
    let mut inv = vec![0.0f64; n * n];
    for i in 0..n {
        inv[i * n + i] = 1.0;
    }
    for col in 0..n {
        let pivot = (col..n).max_by(|&r, &s| m[r * n + col].abs().total_cmp(&m[s * n + col].abs())).unwrap_or(col);
        if m[pivot * n + col].abs() < 1e-12 {
            return Err("the compensation coupling matrix is singular".into());
        }
        for j in 0..n {
            m.swap(col * n + j, pivot * n + j);
            inv.swap(col * n + j, pivot * n + j);
        }
        let p = m[col * n + col];
        for j in 0..n {
            m[col * n + j] /= p;
            inv[col * n + j] /= p;
        }
        for r in 0..n {
            let f = m[r * n + col];
            if r != col && f != 0.0 {
                for j in 0..n {
                    m[r * n + j] -= f * m[col * n + j];
                    inv[r * n + j] -= f * inv[col * n + j];
                }
            }
        }
    }
    Ok(inv)
}

/// `out[o, tile] = w[o, tile]·Gᵀ` with `G` the top-left `len×len` block of
/// the `n×n` `matrix` for each tile of `n` inputs.
fn per_tile(w: &[f32], rows: usize, k: usize, n: usize, matrix: impl Fn(usize) -> Vec<f64>) -> Vec<f32> {
    let mut out = vec![0.0f32; w.len()];
    let full = matrix(n.min(k));
    let tail = (k > n && !k.is_multiple_of(n)).then(|| matrix(k % n));
    let mut start = 0;
    while start < k {
        let len = n.min(k - start);
        let g = match &tail {
            Some(tail) if len < n.min(k) => tail,
            _ => &full,
        };
        for o in 0..rows {
            let src = &w[o * k + start..o * k + start + len];
            let dst = &mut out[o * k + start..o * k + start + len];
            for (i, d) in dst.iter_mut().enumerate() {
                *d = (0..len).map(|j| f64::from(src[j]) * g[i * len + j]).sum::<f64>() as f32;
            }
        }
        start += len;
    }
    out
}

fn block(matrix: &[f32], n: usize, len: usize) -> Vec<f64> {
    (0..len * len).map(|idx| f64::from(matrix[(idx / len) * n + idx % len])).collect()
}

/// `(rows, cols)` row-major → `(cols, rows)` row-major, in cache-sized
/// tiles, output row blocks in parallel.
pub fn transposed(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const TILE: usize = 32;
    let mut out = vec![0.0f32; w.len()];
    if rows == 0 || cols == 0 {
        return out;
    }
    out.par_chunks_mut(TILE * rows).enumerate().for_each(|(block, dst)| {
        let c0 = block * TILE;
        let width = dst.len() / rows;
        for r0 in (0..rows).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                let src = &w[r * cols + c0..r * cols + c0 + width];
                for (c, &v) in src.iter().enumerate() {
                    dst[c * rows + r] = v;
                }
            }
        }
    });
    out
}

/// Programmed and effective weights of a `(rows, k)` matrix on a bank.
pub struct Programmed {
    /// Wavelengths per bank (the coupling matrix's size): inputs per tile.
    pub channels: usize,
    /// `W_effᵀ`, `(k, rows)`: the GEMM reads it with unit stride.
    pub effective_t: Vec<f32>,
    /// `max_i |W_prog[o, i]|` per row, the full scale of the noise.
    pub row_full_scale: Vec<f32>,
}

/// Compensation (`W·(M₀ᵀ)⁻¹` per tile) then coupling (`·Mᵀ` per tile).
pub fn program(w: &[f32], rows: usize, k: usize, coupling: &[f32], compensation: Option<&[f32]>) -> Result<Programmed, String> {
    let n = (coupling.len() as f64).sqrt() as usize;
    let programmed = match compensation {
        None => w.to_vec(),
        Some(m0) => {
            let mut inverses = std::collections::HashMap::new();
            for len in [n.min(k), k % n] {
                if len > 0 {
                    inverses.insert(len, inverse(&block(m0, n, len), len)?);
                }
            }
            // W_prog·M₀ᵀ = W  ⇔  W_prog = W·(M₀⁻¹)ᵀ: rows of M₀⁻¹ weight the tile.
            per_tile(w, rows, k, n, |len| inverses[&len].clone())
        }
    };
    let effective = per_tile(&programmed, rows, k, n, |len| block(coupling, n, len));
    let row_full_scale = programmed.chunks_exact(k.max(1)).map(max_abs).collect();
    Ok(Programmed { channels: n, effective_t: transposed(&effective, rows, k), row_full_scale })
}

/// `y = ADC(DAC(x)·W_effᵀ + noise)` for `x` `(rows, k)` already in slot order.
#[allow(clippy::too_many_arguments)]
pub fn product(
    x: &[f32],
    rows: usize,
    k: usize,
    weights: &Programmed,
    out: usize,
    core: &Core,
    mode: Mode,
    stream: u64,
) -> Result<Vec<f32>, String> {
    let mut xq = x.to_vec();
    let x_range = core.input_range.unwrap_or_else(|| max_abs(x));
    let x_signed = core.input_signed.unwrap_or_else(|| x.iter().any(|&v| v < 0.0));
    fake_quant(&mut xq, x_range, core.input_bits, x_signed);
    let mut y = vec![0.0f32; rows * out];
    gemm(&xq, &weights.effective_t, &mut y, 1, (rows, k, out), false)?;
    if let Mode::Noisy { seed } = mode {
        let tiles = k.div_ceil(weights.channels.max(1)) as f64;
        let base = (tiles / core.snr).sqrt() as f32 * x_range;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(stream);
        for row in y.chunks_exact_mut(out.max(1)) {
            for (v, &w) in row.iter_mut().zip(&weights.row_full_scale) {
                let e: f32 = StandardNormal.sample(&mut rng);
                *v += base * w * e;
            }
        }
    }
    let y_range = core.output_range.unwrap_or_else(|| max_abs(&y));
    fake_quant(&mut y, y_range, core.output_bits, true);
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lorentzian_bank(n: usize, spacing_over_width: f64) -> Vec<f32> {
        (0..n * n)
            .map(|idx| {
                let d = (idx / n) as f64 - (idx % n) as f64;
                let x = 2.0 * d * spacing_over_width;
                (1.0 / (1.0 + x * x)) as f32
            })
            .collect()
    }

    #[test]
    fn inverse_inverts() {
        let a: Vec<f64> = lorentzian_bank(5, 0.7).into_iter().map(f64::from).collect();
        let inv = inverse(&a, 5).unwrap();
        for i in 0..5 {
            for j in 0..5 {
                let v: f64 = (0..5).map(|k| a[i * 5 + k] * inv[k * 5 + j]).sum();
                assert!((v - if i == j { 1.0 } else { 0.0 }).abs() < 1e-12);
            }
        }
        assert!(inverse(&[1.0, 2.0, 2.0, 4.0], 2).is_err());
    }

    #[test]
    fn compensation_undoes_the_coupling_on_every_tile() {
        let (n, rows, k) = (4, 3, 10); // two full tiles and a tail of 2
        let m = lorentzian_bank(n, 0.8);
        let w: Vec<f32> = (0..rows * k).map(|i| ((i * 7 % 11) as f32 - 5.0) / 5.0).collect();
        let compensated = program(&w, rows, k, &m, Some(&m)).unwrap();
        let effective = transposed(&compensated.effective_t, k, rows);
        effective.iter().zip(&w).for_each(|(e, w)| assert!((e - w).abs() < 1e-5, "{e} vs {w}"));
        let coupled = program(&w, rows, k, &m, None).unwrap();
        // without compensation, input i of a tile leaks into its neighbours: W_eff = W·Mᵀ
        let expected: f32 = (0..n).map(|j| w[j] * m[j]).sum(); // row 0, slot 0: Σ_j w_j·M[0, j]
        assert!((coupled.effective_t[0] - expected).abs() < 1e-6);
        assert_eq!(coupled.row_full_scale[0], w[..k].iter().fold(0.0f32, |a, v| a.max(v.abs())));
    }

    #[test]
    fn transposes_any_shape() {
        for (rows, cols) in [(1, 1), (3, 70), (70, 3), (33, 65), (0, 4)] {
            let w: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
            let t = transposed(&w, rows, cols);
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(t[c * rows + r], w[r * cols + c]);
                }
            }
        }
    }

    #[test]
    fn fake_quant_rounds_half_to_even_and_clips() {
        let mut x = vec![0.5, 1.5, 2.5, -2.5, 200.0, -200.0];
        fake_quant(&mut x, 127.0, 8, true); // step 1
        assert_eq!(x, vec![0.0, 2.0, 2.0, -2.0, 127.0, -128.0]);
    }

    #[test]
    fn unsigned_fake_quant_has_twice_the_levels_and_clips_negatives() {
        let mut x = vec![0.5, 1.5, 2.5, -2.5, 200.0, 254.6];
        fake_quant(&mut x, 255.0, 8, false); // step 1 over [0, 255]
        assert_eq!(x, vec![0.0, 2.0, 2.0, 0.0, 200.0, 255.0]);
        let mut y = vec![0.3, 0.49, 1.0];
        fake_quant(&mut y, 1.0, 2, false); // codes 0..3, step 1/3
        let step = 1.0f32 / 3.0;
        assert_eq!(y, vec![step, step, 3.0 * step]);
    }
}
