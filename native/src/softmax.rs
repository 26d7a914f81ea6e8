//! Fused causal-mask softmax over the last axis, forward and backward.
//!
//! Rows are `(…, T, S)`: query `t` may attend to keys `0..=t + offset`
//! (`offset = S − T` for a cache of `S − T` earlier keys). The kernels touch
//! only that valid prefix of each row; the masked suffix is written as exact
//! zeros and never read or computed. Forward, per row, with `z = scale·x`:
//! `p = exp(z − max z) / Σ exp(z − max z)`; backward:
//! `dx = scale·p ⊙ (dp − Σ dp ⊙ p)`. NaN and ±∞ in the valid prefix
//! propagate as in the textbook formula.

use rayon::prelude::*;

use crate::cpu::CpuFeatures;
use crate::error::{checked_product, KernelError};
use crate::vmath;

/// Shape of a causal softmax: `outer` independent `(T, S)` blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CausalShape {
    /// Product of the leading axes (batch·heads).
    pub outer: usize,
    /// Queries per block.
    pub queries: usize,
    /// Keys per row.
    pub keys: usize,
    /// Keys visible to query 0 beyond itself.
    pub offset: usize,
}

impl CausalShape {
    fn len(&self) -> Result<usize, KernelError> {
        checked_product(&[self.outer, self.queries, self.keys], "causal softmax")
    }

    /// Visible keys of the row with query index `t`.
    fn valid(&self, t: usize) -> usize {
        t.saturating_add(self.offset).saturating_add(1).min(self.keys)
    }

    /// Lengths of the operands against the shape, and a finite `scale`.
    fn check(&self, lengths: &[(&str, usize)], scale: f32) -> Result<(), KernelError> {
        if !scale.is_finite() {
            return Err(KernelError::Value(format!("scale must be finite, got {scale}")));
        }
        let want = self.len()?;
        for &(name, got) in lengths {
            if got != want {
                return Err(KernelError::Shape(format!(
                    "{name} holds {got} elements but {self:?} needs {want}"
                )));
            }
        }
        Ok(())
    }
}

/// Rows per rayon task: enough work to amortise scheduling on short rows.
fn rows_per_task(keys: usize) -> usize {
    (16 * 1024 / keys.max(1)).max(1)
}

/// `out = softmax(scale·x + causal mask)` over the last axis.
///
/// `x = None` computes in place: `out` holds the logits on entry (XLA
/// passes the same buffer when the logits are not needed afterwards).
pub fn causal_softmax_forward(x: Option<&[f32]>, out: &mut [f32], shape: &CausalShape, scale: f32) -> Result<(), KernelError> {
    shape.check(&[("x", x.map_or(out.len(), <[f32]>::len)), ("the result", out.len())], scale)?;
    if shape.keys == 0 || out.is_empty() {
        return Ok(());
    }
    let simd = CpuFeatures::detect().has_avx2_fma();
    out.par_chunks_mut(shape.keys)
        .enumerate()
        .with_min_len(rows_per_task(shape.keys))
        .for_each(|(row, out)| {
            let valid = shape.valid(row % shape.queries);
            let (out_valid, out_masked) = out.split_at_mut(valid);
            if let Some(x) = x {
                out_valid.copy_from_slice(&x[row * shape.keys..][..valid]);
            }
            forward_row(out_valid, scale, simd);
            out_masked.fill(0.0);
        });
    Ok(())
}

/// `dx = scale·p ⊙ (dp − Σ dp ⊙ p)` over the visible prefix, 0 elsewhere.
///
/// `dp = None` computes in place: `dx` holds `dp` on entry.
pub fn causal_softmax_backward(
    p: &[f32],
    dp: Option<&[f32]>,
    dx: &mut [f32],
    shape: &CausalShape,
    scale: f32,
) -> Result<(), KernelError> {
    shape.check(&[("p", p.len()), ("dp", dp.map_or(dx.len(), <[f32]>::len)), ("the result", dx.len())], scale)?;
    if shape.keys == 0 || dx.is_empty() {
        return Ok(());
    }
    let simd = CpuFeatures::detect().has_avx2_fma();
    dx.par_chunks_mut(shape.keys)
        .zip(p.par_chunks(shape.keys))
        .enumerate()
        .with_min_len(rows_per_task(shape.keys))
        .for_each(|(row, (dx, p))| {
            let valid = shape.valid(row % shape.queries);
            let (dx_valid, dx_masked) = dx.split_at_mut(valid);
            if let Some(dp) = dp {
                dx_valid.copy_from_slice(&dp[row * shape.keys..][..valid]);
            }
            backward_row(&p[..valid], dx_valid, scale, simd);
            dx_masked.fill(0.0);
        });
    Ok(())
}

/// Softmax of `scale·row`, in place.
fn forward_row(row: &mut [f32], scale: f32, simd: bool) {
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: AVX2 and FMA were detected.
        return unsafe { avx2::forward_row(row, scale) };
    }
    let _ = simd;
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(scale * v));
    let mut sum = 0.0f32;
    for v in row.iter_mut() {
        *v = vmath::exp(scale.mul_add(*v, -max));
        sum += *v;
    }
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|v| *v *= inv);
}

/// `grad ← scale·p ⊙ (grad − Σ grad ⊙ p)`, in place.
fn backward_row(p: &[f32], grad: &mut [f32], scale: f32, simd: bool) {
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: AVX2 and FMA were detected.
        return unsafe { avx2::backward_row(p, grad, scale) };
    }
    let _ = simd;
    let dot: f32 = p.iter().zip(grad.iter()).map(|(a, b)| a * b).sum();
    for (g, &pv) in grad.iter_mut().zip(p) {
        *g = scale * pv * (*g - dot);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use crate::vmath::{exp, exp_avx2};

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
        _mm_cvtss_f32(s)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hmax(v: __m256) -> f32 {
        let s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_max_ss(s, _mm_shuffle_ps::<0b01>(s, s));
        _mm_cvtss_f32(s)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn forward_row(row: &mut [f32], scale: f32) {
        let n = row.len();
        let body = n - n % 8;
        let ptr = row.as_mut_ptr();
        let vscale = _mm256_set1_ps(scale);
        let mut vmax = _mm256_set1_ps(f32::NEG_INFINITY);
        for i in (0..body).step_by(8) {
            vmax = _mm256_max_ps(vmax, _mm256_mul_ps(vscale, _mm256_loadu_ps(ptr.add(i))));
        }
        let mut max = hmax(vmax);
        for &v in &row[body..] {
            max = max.max(scale * v);
        }
        let vneg_max = _mm256_set1_ps(-max);
        let mut vsum = _mm256_setzero_ps();
        for i in (0..body).step_by(8) {
            let e = exp_avx2(_mm256_fmadd_ps(vscale, _mm256_loadu_ps(ptr.add(i)), vneg_max));
            _mm256_storeu_ps(ptr.add(i), e);
            vsum = _mm256_add_ps(vsum, e);
        }
        let mut sum = hsum(vsum);
        for v in &mut row[body..] {
            *v = exp(scale.mul_add(*v, -max));
            sum += *v;
        }
        let inv = 1.0 / sum;
        let vinv = _mm256_set1_ps(inv);
        for i in (0..body).step_by(8) {
            _mm256_storeu_ps(ptr.add(i), _mm256_mul_ps(_mm256_loadu_ps(ptr.add(i)), vinv));
        }
        for v in &mut row[body..] {
            *v *= inv;
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn backward_row(p: &[f32], grad: &mut [f32], scale: f32) {
        let n = p.len();
        let body = n - n % 8;
        let g = grad.as_mut_ptr();
        let mut vdot = _mm256_setzero_ps();
        for i in (0..body).step_by(8) {
            vdot = _mm256_fmadd_ps(_mm256_loadu_ps(p.as_ptr().add(i)), _mm256_loadu_ps(g.add(i)), vdot);
        }
        let mut dot = hsum(vdot);
        for i in body..n {
            dot += p[i] * grad[i];
        }
        let vscale = _mm256_set1_ps(scale);
        let vdot = _mm256_set1_ps(dot);
        for i in (0..body).step_by(8) {
            let pv = _mm256_loadu_ps(p.as_ptr().add(i));
            let d = _mm256_sub_ps(_mm256_loadu_ps(g.add(i)), vdot);
            _mm256_storeu_ps(g.add(i), _mm256_mul_ps(_mm256_mul_ps(vscale, pv), d));
        }
        for i in body..n {
            grad[i] = scale * p[i] * (grad[i] - dot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(x: &[f32], shape: &CausalShape, scale: f32) -> Vec<f64> {
        let mut out = vec![0.0f64; x.len()];
        for (row, chunk) in x.chunks(shape.keys).enumerate() {
            let t = row % shape.queries;
            let valid = (t + shape.offset + 1).min(shape.keys);
            let z: Vec<f64> = chunk[..valid].iter().map(|&v| scale as f64 * v as f64).collect();
            let max = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = z.iter().map(|v| (v - max).exp()).sum();
            for j in 0..valid {
                out[row * shape.keys + j] = (z[j] - max).exp() / sum;
            }
        }
        out
    }

    fn inputs(n: usize) -> Vec<f32> {
        (0..n).map(|i| ((i * 7919 % 1013) as f32 / 101.3) - 5.0).collect()
    }

    #[test]
    fn forward_matches_f64_reference_and_masks_exactly() {
        for (queries, keys, offset) in [(5, 5, 0), (3, 11, 8), (17, 17, 0), (4, 37, 2), (1, 1, 0)] {
            let shape = CausalShape { outer: 3, queries, keys, offset };
            let x = inputs(3 * queries * keys);
            let mut out = vec![f32::NAN; x.len()];
            causal_softmax_forward(Some(&x), &mut out, &shape, 0.37).unwrap();
            let mut in_place = x.clone();
            causal_softmax_forward(None, &mut in_place, &shape, 0.37).unwrap();
            assert_eq!(in_place, out);
            let want = reference(&x, &shape, 0.37);
            for (row, chunk) in out.chunks(keys).enumerate() {
                let valid = (row % queries + offset + 1).min(keys);
                assert!(chunk[valid..].iter().all(|&v| v.to_bits() == 0), "masked part must be +0");
                let sum: f64 = chunk.iter().map(|&v| v as f64).sum();
                assert!((sum - 1.0).abs() < 1e-5);
            }
            for (g, w) in out.iter().zip(&want) {
                assert!((*g as f64 - w).abs() <= 2e-6 * w.max(1e-3), "{g} vs {w}");
            }
        }
    }

    #[test]
    fn simd_and_scalar_rows_agree() {
        if !CpuFeatures::detect().has_avx2_fma() {
            return;
        }
        let x = inputs(53);
        let (mut a, mut b) = (x.clone(), x);
        forward_row(&mut a, 0.5, true);
        forward_row(&mut b, 0.5, false);
        for (u, v) in a.iter().zip(&b) {
            assert!((u - v).abs() <= 1e-7 * u.abs().max(1e-30) + 1e-12, "{u} vs {v}");
        }
    }

    #[test]
    fn backward_matches_the_formula_and_masks() {
        let shape = CausalShape { outer: 2, queries: 6, keys: 13, offset: 3 };
        let x = inputs(2 * 6 * 13);
        let dp: Vec<f32> = inputs(2 * 6 * 13).iter().map(|v| v * 0.3 + 0.1).collect();
        let mut p = vec![0.0; x.len()];
        causal_softmax_forward(Some(&x), &mut p, &shape, 0.8).unwrap();
        let mut dx = vec![f32::NAN; x.len()];
        causal_softmax_backward(&p, Some(&dp), &mut dx, &shape, 0.8).unwrap();
        let mut in_place = dp.clone();
        causal_softmax_backward(&p, None, &mut in_place, &shape, 0.8).unwrap();
        assert_eq!(in_place, dx);
        for row in 0..12 {
            let valid = (row % 6 + 3 + 1).min(13);
            let r = row * 13;
            let dot: f64 = (0..valid).map(|j| p[r + j] as f64 * dp[r + j] as f64).sum();
            for j in 0..13 {
                let want = if j < valid { 0.8 * p[r + j] as f64 * (dp[r + j] as f64 - dot) } else { 0.0 };
                assert!((dx[r + j] as f64 - want).abs() < 1e-6, "row {row} col {j}");
            }
        }
    }

    #[test]
    fn nan_and_infinity_propagate_within_the_row_only() {
        let shape = CausalShape { outer: 1, queries: 3, keys: 3, offset: 0 };
        let x = [1.0, 2.0, 3.0, f32::NAN, 0.0, 1.0, f32::INFINITY, 0.0, 0.0];
        let mut out = [0.0f32; 9];
        causal_softmax_forward(Some(&x), &mut out, &shape, 1.0).unwrap();
        assert_eq!(out[0], 1.0);
        assert_eq!(&out[1..3], &[0.0, 0.0]);
        assert!(out[3].is_nan() && out[4].is_nan() && out[5] == 0.0);
        assert!(out[6..9].iter().all(|v| v.is_nan()));
    }

    #[test]
    fn rejects_wrong_lengths() {
        let shape = CausalShape { outer: 1, queries: 2, keys: 2, offset: 0 };
        let err = causal_softmax_forward(Some(&[0.0; 3]), &mut [0.0; 4], &shape, 1.0).unwrap_err();
        assert!(err.to_string().contains("x holds 3 elements"), "{err}");
    }
}
