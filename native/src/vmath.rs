//! Vectorised elementary functions for f32, each in a scalar and an AVX2
//! form with identical results (the same operations in the same order,
//! fused multiply-adds where the vector form fuses).
//!
//! `exp`: Cody–Waite range reduction `x = n·ln2 + r`, `|r| ≤ ln2/2`, with ln2 split
//! in a part exact in few bits and a correction, then the degree-6 minimax
//! polynomial of Cephes `expf` for `e^r`, and `2^n` put in the exponent
//! bits of two factors. The error is at most 2 ulp for results in the normal range
//! (measured ≤ 1 ulp in the tests against an f64 reference). Inputs below
//! `EXP_MIN` give 0, above `EXP_MAX` give +∞, NaN stays NaN.
//!
//! `ln` (of positive normal numbers): the argument split as `m·2^e` with
//! `m ∈ [√½, √2)`, the degree-8 polynomial of Cephes `logf` in `m − 1`, and
//! `e·ln2` added in the same two parts as `exp` uses.
//!
//! `sin_cos` (of `|x| ≤ π/4`): the minimax polynomials of Cephes
//! `sinf`/`cosf`, no range reduction.

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

const SQRT_HALF: f32 = std::f32::consts::FRAC_1_SQRT_2;
const LOG_P: [f32; 9] = [
    7.037_683_6e-2,
    -1.151_461e-1,
    1.167_699_9e-1,
    -1.242_014_1e-1,
    1.424_932_3e-1,
    -1.666_805_8e-1,
    2.000_071_4e-1,
    -2.499_999_4e-1,
    3.333_333e-1,
];

const SIN_P: [f32; 3] = [-1.951_529_6e-4, 8.332_161e-3, -1.666_665_5e-1];
const COS_P: [f32; 3] = [2.443_315_7e-5, -1.388_731_6e-3, 4.166_664_6e-2];

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

/// `ln x` for a positive normal `x`, the scalar form of [`ln_avx2`], bit for
/// bit. Other inputs give unspecified values.
#[inline(always)]
pub fn ln(x: f32) -> f32 {
    let bits = x.to_bits();
    let mut e = ((bits >> 23) & 0xFF) as i32 - 126;
    let m = f32::from_bits((bits & 0x007F_FFFF) | 0x3F00_0000); // [½, 1)
    let below = m < SQRT_HALF;
    if below {
        e -= 1;
    }
    let r = if below { (m - 1.0) + m } else { m - 1.0 };
    // Estrin's scheme: a dependency chain of depth four rather than eight.
    let z = r * r;
    let z2 = z * z;
    let c = |k: usize| LOG_P[8 - k]; // coefficient of r^k
    let low = c(3).mul_add(r, c(2)).mul_add(z, c(1).mul_add(r, c(0)));
    let high = c(7).mul_add(r, c(6)).mul_add(z, c(5).mul_add(r, c(4)));
    let p = (c(8) * z2).mul_add(z2, high.mul_add(z2, low));
    let fe = e as f32;
    let y = fe.mul_add(LN2_LO, (p * r) * z);
    let y = z.mul_add(-0.5, y);
    fe.mul_add(LN2_HI, r + y)
}

/// `(sin x, cos x)` for `|x| ≤ π/4`, the scalar form of [`sin_cos_avx2`], bit
/// for bit.
#[inline(always)]
pub fn sin_cos(x: f32) -> (f32, f32) {
    let z = x * x;
    let s = SIN_P[0].mul_add(z, SIN_P[1]).mul_add(z, SIN_P[2]);
    let c = COS_P[0].mul_add(z, COS_P[1]).mul_add(z, COS_P[2]);
    ((s * z).mul_add(x, x), (c * z).mul_add(z, z.mul_add(-0.5, 1.0)))
}

#[cfg(target_arch = "x86_64")]
pub use avx2::{exp_avx2, ln_avx2, sin_cos_avx2};

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

    /// `ln x` on 8 lanes; the same operations as [`ln`], so the same bits.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn ln_avx2(x: __m256) -> __m256 {
        let bits = _mm256_castps_si256(x);
        let e = _mm256_sub_epi32(
            _mm256_and_si256(_mm256_srli_epi32::<23>(bits), _mm256_set1_epi32(0xFF)),
            _mm256_set1_epi32(126),
        );
        let m = _mm256_castsi256_ps(_mm256_or_si256(
            _mm256_and_si256(bits, _mm256_set1_epi32(0x007F_FFFF)),
            _mm256_set1_epi32(0x3F00_0000),
        ));
        let below = _mm256_cmp_ps::<_CMP_LT_OQ>(m, _mm256_set1_ps(SQRT_HALF));
        // A true comparison lane is all ones, −1 as an integer.
        let e = _mm256_add_epi32(e, _mm256_castps_si256(below));
        let r = _mm256_add_ps(_mm256_sub_ps(m, _mm256_set1_ps(1.0)), _mm256_and_ps(below, m));
        let z = _mm256_mul_ps(r, r);
        let z2 = _mm256_mul_ps(z, z);
        let c = |k: usize| _mm256_set1_ps(LOG_P[8 - k]);
        let low = _mm256_fmadd_ps(_mm256_fmadd_ps(c(3), r, c(2)), z, _mm256_fmadd_ps(c(1), r, c(0)));
        let high = _mm256_fmadd_ps(_mm256_fmadd_ps(c(7), r, c(6)), z, _mm256_fmadd_ps(c(5), r, c(4)));
        let p = _mm256_fmadd_ps(_mm256_mul_ps(c(8), z2), z2, _mm256_fmadd_ps(high, z2, low));
        let fe = _mm256_cvtepi32_ps(e);
        let y = _mm256_fmadd_ps(fe, _mm256_set1_ps(LN2_LO), _mm256_mul_ps(_mm256_mul_ps(p, r), z));
        let y = _mm256_fmadd_ps(z, _mm256_set1_ps(-0.5), y);
        _mm256_fmadd_ps(fe, _mm256_set1_ps(LN2_HI), _mm256_add_ps(r, y))
    }

    /// `(sin x, cos x)` on 8 lanes of `|x| ≤ π/4`; the same operations as
    /// [`sin_cos`], so the same bits.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn sin_cos_avx2(x: __m256) -> (__m256, __m256) {
        let z = _mm256_mul_ps(x, x);
        let s = _mm256_fmadd_ps(
            _mm256_fmadd_ps(_mm256_set1_ps(SIN_P[0]), z, _mm256_set1_ps(SIN_P[1])),
            z,
            _mm256_set1_ps(SIN_P[2]),
        );
        let c = _mm256_fmadd_ps(
            _mm256_fmadd_ps(_mm256_set1_ps(COS_P[0]), z, _mm256_set1_ps(COS_P[1])),
            z,
            _mm256_set1_ps(COS_P[2]),
        );
        let one_minus_half_z = _mm256_fmadd_ps(z, _mm256_set1_ps(-0.5), _mm256_set1_ps(1.0));
        (
            _mm256_fmadd_ps(_mm256_mul_ps(s, z), x, x),
            _mm256_fmadd_ps(_mm256_mul_ps(c, z), z, one_minus_half_z),
        )
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

    #[test]
    fn ln_is_within_2_ulp_on_the_unit_interval_and_beyond() {
        let mut worst = 0.0f64;
        let mut x = f32::MIN_POSITIVE;
        while x < 1e6 {
            let exact = (x as f64).ln();
            let e = exact as f32;
            let ulp = (f32::from_bits(e.abs().to_bits() + 1) - e.abs()) as f64;
            worst = worst.max((ln(x) as f64 - exact).abs() / ulp);
            x = f32::from_bits(x.to_bits() + 997);
        }
        assert!(worst <= 2.0, "worst error {worst} ulp");
        assert_eq!(ln(1.0), 0.0);
    }

    #[test]
    fn sin_cos_is_within_2_ulp_on_the_quarter_turn() {
        let quarter = std::f32::consts::FRAC_PI_4;
        let (mut worst_sin, mut worst_cos) = (0.0f64, 0.0f64);
        for i in 0..=400_000 {
            let x = -quarter + 2.0 * quarter * (i as f32 / 400_000.0);
            let (s, c) = sin_cos(x);
            let ulp = |v: f64| {
                let v = (v as f32).abs();
                (f32::from_bits(v.to_bits() + 1) - v) as f64
            };
            let (es, ec) = ((x as f64).sin(), (x as f64).cos());
            if es != 0.0 {
                worst_sin = worst_sin.max((s as f64 - es).abs() / ulp(es));
            }
            worst_cos = worst_cos.max((c as f64 - ec).abs() / ulp(ec));
        }
        assert!(worst_sin <= 2.0 && worst_cos <= 2.0, "sin {worst_sin} ulp, cos {worst_cos} ulp");
        assert_eq!(sin_cos(0.0), (0.0, 1.0));
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn ln_and_sin_cos_avx2_match_scalar_bit_for_bit() {
        if !crate::cpu::CpuFeatures::detect().has_avx2_fma() {
            return;
        }
        use std::arch::x86_64::*;
        let positives: Vec<f32> = (0..80_000).map(|i| f32::from_bits(0x0080_0000 + i * 26_000)).collect();
        for chunk in positives.chunks_exact(8) {
            let mut out = [0.0f32; 8];
            unsafe { _mm256_storeu_ps(out.as_mut_ptr(), ln_avx2(_mm256_loadu_ps(chunk.as_ptr()))) };
            for (&x, &y) in chunk.iter().zip(&out) {
                assert_eq!(ln(x).to_bits(), y.to_bits(), "ln {x}");
            }
        }
        let quarter = std::f32::consts::FRAC_PI_4;
        let angles: Vec<f32> = (0..80_000).map(|i| -quarter + 2.0 * quarter * (i as f32 / 80_000.0)).collect();
        for chunk in angles.chunks_exact(8) {
            let (mut s, mut c) = ([0.0f32; 8], [0.0f32; 8]);
            unsafe {
                let (vs, vc) = sin_cos_avx2(_mm256_loadu_ps(chunk.as_ptr()));
                _mm256_storeu_ps(s.as_mut_ptr(), vs);
                _mm256_storeu_ps(c.as_mut_ptr(), vc);
            }
            for (i, &x) in chunk.iter().enumerate() {
                let (es, ec) = sin_cos(x);
                assert_eq!((es.to_bits(), ec.to_bits()), (s[i].to_bits(), c[i].to_bits()), "sin_cos {x}");
            }
        }
    }
}
