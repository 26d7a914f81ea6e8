//! Standard normal draws for the detector noise of a simulated product.
//!
//! Counter-based: the draws of one seed are cut into blocks of [`BLOCK`],
//! each drawn on its own from generators seeded by the seed's SplitMix64
//! sequence at an offset disjoint for every block, so the result is the
//! same whatever the number of threads.
//!
//! float32: eight xoshiro256++ streams per block (words `32b + 4l + 1 ..=
//! 32b + 4l + 4` of the sequence seed lane `l` of block `b`), stepped
//! together; each step gives eight pairs of 32-bit words and sixteen draws
//! by the Box–Muller transform, `r = √(−2 ln u)` with `u ∈ (0, 1]` from 24
//! bits of one word and the angle from 26 bits of the other (two for the
//! quadrant, so that [`vmath::sin_cos`] needs no range reduction). The
//! radius is at most `√(48 ln 2) ≈ 5.77`: draws beyond 5.77 σ, a
//! probability of 8·10⁻⁹, are not produced. The AVX2 and scalar paths give
//! the same bits.
//!
//! float64: one xoshiro256++ stream per block (words `4b + 1 ..= 4b + 4`)
//! and `rand_distr`'s ziggurat sampler.

use rand_core::{RngCore, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
use rand_xoshiro::{SplitMix64, Xoshiro256PlusPlus};
use rayon::prelude::*;

use crate::vmath;

/// Draws per block; a multiple of [`STEP`].
pub const BLOCK: usize = 4096;

/// SplitMix64's increment (the golden ratio in 64 bits).
const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// xoshiro256++ streams of one float32 block.
const LANES: usize = 8;
/// float32 draws per step of the streams.
const STEP: usize = 2 * LANES;

/// A float the sampler draws.
pub trait Draw: Copy + Send + Sync + Sized {
    /// Fills `out` (at most [`BLOCK`] long) with block `block` of `seed`.
    fn fill_block(seed: u64, block: u64, out: &mut [Self]);
}

/// The SplitMix64 sequence of `seed` after `skip` words.
fn words_after(seed: u64, skip: u64) -> SplitMix64 {
    SplitMix64::seed_from_u64(seed.wrapping_add(skip.wrapping_mul(GOLDEN_GAMMA)))
}

impl Draw for f64 {
    fn fill_block(seed: u64, block: u64, out: &mut [f64]) {
        let mut rng = Xoshiro256PlusPlus::from_rng(&mut words_after(seed, 4 * block));
        for value in out {
            *value = StandardNormal.sample(&mut rng);
        }
    }
}

impl Draw for f32 {
    fn fill_block(seed: u64, block: u64, out: &mut [f32]) {
        let mut words = words_after(seed, (4 * LANES as u64) * block);
        let mut lanes = [[0u64; 4]; LANES];
        for lane in &mut lanes {
            for word in lane.iter_mut() {
                *word = words.next_u64();
            }
        }
        #[cfg(target_arch = "x86_64")]
        if crate::cpu::CpuFeatures::detect().has_avx2_fma() {
            // SAFETY: the CPU supports AVX2 and FMA.
            unsafe { avx2::fill(&lanes, out) };
            return;
        }
        fill_scalar(&mut lanes, out);
    }
}

/// One xoshiro256++ step of `s`.
#[inline(always)]
fn xoshiro_next(s: &mut [u64; 4]) -> u64 {
    let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
    let t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = s[3].rotate_left(45);
    result
}

/// The Box–Muller pair `(r cos θ, r sin θ)` of the words `radial` and `angular`.
#[inline(always)]
fn box_muller(radial: u32, angular: u32) -> (f32, f32) {
    let u = ((radial >> 8) + 1) as f32 * UNIT;
    let r = (vmath::ln(u) * -2.0).max(0.0).sqrt();
    let quadrant = angular >> 30;
    let t = ((angular >> 6) & 0x00FF_FFFF) as f32 * UNIT;
    let (s, c) = vmath::sin_cos(t.mul_add(HALF_PI, -QUARTER_PI));
    let (x, y) = if quadrant & 1 == 1 { (s, c) } else { (c, s) };
    let cos_sign = ((quadrant ^ (quadrant >> 1)) & 1) << 31;
    let sin_sign = (quadrant >> 1) << 31;
    (r * f32::from_bits(x.to_bits() ^ cos_sign), r * f32::from_bits(y.to_bits() ^ sin_sign))
}

/// 2⁻²⁴, the step of a 24-bit fraction.
const UNIT: f32 = 1.0 / 16_777_216.0;
const HALF_PI: f32 = std::f32::consts::FRAC_PI_2;
const QUARTER_PI: f32 = std::f32::consts::FRAC_PI_4;

/// One step of the float32 streams: draw `k < 8` is `r_k cos θ_k`, draw
/// `8 + k` is `r_k sin θ_k`, with word `k` of lanes 0–3 for `r_k` and of
/// lanes 4–7 for `θ_k` (word `2i + h` is half `h` of lane `i`'s output, low
/// half first).
fn step_scalar(lanes: &mut [[u64; 4]; LANES]) -> [f32; STEP] {
    let outputs: [u64; LANES] = std::array::from_fn(|l| xoshiro_next(&mut lanes[l]));
    let word = |first_lane: usize, k: usize| (outputs[first_lane + k / 2] >> (32 * (k % 2))) as u32;
    let mut draws = [0.0f32; STEP];
    for k in 0..LANES {
        let (c, s) = box_muller(word(0, k), word(LANES / 2, k));
        draws[k] = c;
        draws[LANES + k] = s;
    }
    draws
}

fn fill_scalar(lanes: &mut [[u64; 4]; LANES], out: &mut [f32]) {
    for chunk in out.chunks_mut(STEP) {
        let draws = step_scalar(lanes);
        chunk.copy_from_slice(&draws[..chunk.len()]);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;
    use std::arch::x86_64::*;

    /// Four xoshiro256++ streams, word `j` of stream `i` in lane `i` of `s[j]`.
    struct Quad {
        s: [__m256i; 4],
    }

    impl Quad {
        #[inline]
        #[target_feature(enable = "avx2")]
        unsafe fn load(lanes: &[[u64; 4]]) -> Quad {
            let s = std::array::from_fn(|j| {
                _mm256_set_epi64x(lanes[3][j] as i64, lanes[2][j] as i64, lanes[1][j] as i64, lanes[0][j] as i64)
            });
            Quad { s }
        }

        #[inline]
        #[target_feature(enable = "avx2")]
        unsafe fn next(&mut self) -> __m256i {
            let [s0, s1, s2, s3] = self.s;
            let sum = _mm256_add_epi64(s0, s3);
            let result = _mm256_add_epi64(rotl::<23, 41>(sum), s0);
            let t = _mm256_slli_epi64::<17>(s1);
            let s2 = _mm256_xor_si256(s2, s0);
            let s3 = _mm256_xor_si256(s3, s1);
            let s1 = _mm256_xor_si256(s1, s2);
            let s0 = _mm256_xor_si256(s0, s3);
            let s2 = _mm256_xor_si256(s2, t);
            let s3 = rotl::<45, 19>(s3);
            self.s = [s0, s1, s2, s3];
            result
        }
    }

    /// `x` rotated left by `L` bits (`R = 64 − L`).
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn rotl<const L: i32, const R: i32>(x: __m256i) -> __m256i {
        _mm256_or_si256(_mm256_slli_epi64::<L>(x), _mm256_srli_epi64::<R>(x))
    }

    /// [`step_scalar`] on eight float lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn step(radial: &mut Quad, angular: &mut Quad) -> (__m256, __m256) {
        let a = radial.next();
        let b = angular.next();
        let unit = _mm256_set1_ps(UNIT);
        let u = _mm256_mul_ps(
            _mm256_cvtepi32_ps(_mm256_add_epi32(_mm256_srli_epi32::<8>(a), _mm256_set1_epi32(1))),
            unit,
        );
        let r = _mm256_sqrt_ps(_mm256_max_ps(
            _mm256_mul_ps(vmath::ln_avx2(u), _mm256_set1_ps(-2.0)),
            _mm256_setzero_ps(),
        ));
        let quadrant = _mm256_srli_epi32::<30>(b);
        let t = _mm256_mul_ps(
            _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32::<6>(b), _mm256_set1_epi32(0x00FF_FFFF))),
            unit,
        );
        let angle = _mm256_fmadd_ps(t, _mm256_set1_ps(HALF_PI), _mm256_set1_ps(-QUARTER_PI));
        let (s, c) = vmath::sin_cos_avx2(angle);
        let one = _mm256_set1_epi32(1);
        let odd = _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(quadrant, one), one));
        let x = _mm256_blendv_ps(c, s, odd);
        let y = _mm256_blendv_ps(s, c, odd);
        let half = _mm256_srli_epi32::<1>(quadrant);
        let cos_sign = _mm256_slli_epi32::<31>(_mm256_xor_si256(quadrant, half));
        let sin_sign = _mm256_slli_epi32::<31>(half);
        let x = _mm256_xor_ps(x, _mm256_castsi256_ps(cos_sign));
        let y = _mm256_xor_ps(y, _mm256_castsi256_ps(sin_sign));
        (_mm256_mul_ps(r, x), _mm256_mul_ps(r, y))
    }

    /// [`fill_scalar`] with the lanes stepped in AVX2 registers.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn fill(lanes: &[[u64; 4]; LANES], out: &mut [f32]) {
        let mut radial = Quad::load(&lanes[..LANES / 2]);
        let mut angular = Quad::load(&lanes[LANES / 2..]);
        let mut chunks = out.chunks_exact_mut(STEP);
        for chunk in &mut chunks {
            let (c, s) = step(&mut radial, &mut angular);
            _mm256_storeu_ps(chunk.as_mut_ptr(), c);
            _mm256_storeu_ps(chunk.as_mut_ptr().add(LANES), s);
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let mut draws = [0.0f32; STEP];
            let (c, s) = step(&mut radial, &mut angular);
            _mm256_storeu_ps(draws.as_mut_ptr(), c);
            _mm256_storeu_ps(draws.as_mut_ptr().add(LANES), s);
            rest.copy_from_slice(&draws[..rest.len()]);
        }
    }
}

/// Fills `out` with independent `N(0, 1)` draws of the generator `seed`.
pub fn standard_normal<T: Draw>(seed: u64, out: &mut [T]) {
    out.par_chunks_mut(BLOCK).enumerate().for_each(|(block, chunk)| T::fill_block(seed, block as u64, chunk));
}

/// Fills `out`, cut into `seeds.len()` equal parts, part `i` from
/// `seeds[i]` (as [`standard_normal`]).
pub fn standard_normal_per_seed<T: Draw>(seeds: &[u64], out: &mut [T]) {
    if seeds.is_empty() || out.is_empty() {
        return;
    }
    let part = out.len() / seeds.len();
    out.par_chunks_mut(part).zip(seeds).for_each(|(chunk, &seed)| standard_normal(seed, chunk));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Mean, variance, kurtosis and two-sided tail probabilities against
    /// their standard errors.
    fn assert_standard_normal(x: &[f64]) {
        let n = x.len() as f64;
        let mean = x.iter().sum::<f64>() / n;
        let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        let kurtosis = x.iter().map(|v| (v - mean).powi(4)).sum::<f64>() / n / (var * var);
        // Standard errors: 1/√n for the mean, √(2/n) for the variance, √(24/n) for the kurtosis.
        assert!(mean.abs() < 5.0 / n.sqrt(), "mean {mean}");
        assert!((var - 1.0).abs() < 5.0 * (2.0 / n).sqrt(), "variance {var}");
        assert!((kurtosis - 3.0).abs() < 5.0 * (24.0 / n).sqrt(), "kurtosis {kurtosis}");
        // P(|x| > k) = erfc(k/√2).
        for (k, p) in [(0.5, 0.617_075_08), (1.0, 0.317_310_51), (2.0, 0.045_500_26), (3.0, 0.002_699_80)] {
            let seen = x.iter().filter(|v| v.abs() > k).count() as f64 / n;
            assert!((seen - p).abs() < 5.0 * (p * (1.0 - p) / n).sqrt(), "P(|x| > {k}) = {seen}, not {p}");
        }
    }

    #[test]
    fn draws_are_standard_normal() {
        let mut x = vec![0.0f64; 400_000];
        standard_normal(7, &mut x);
        assert_standard_normal(&x);
        let mut y = vec![0.0f32; 4_000_000];
        standard_normal(7, &mut y);
        let y: Vec<f64> = y.iter().map(|&v| f64::from(v)).collect();
        assert_standard_normal(&y);
        // Cosine and sine draws of one pair are uncorrelated, and so are
        // their squares (independent, not only orthogonal).
        let pairs = y.chunks_exact(STEP).flat_map(|d| (0..LANES).map(move |k| (d[k], d[LANES + k])));
        let (mut xy, mut sq, mut m) = (0.0, 0.0, 0usize);
        for (a, b) in pairs {
            xy += a * b;
            sq += (a * a - 1.0) * (b * b - 1.0);
            m += 1;
        }
        let m = m as f64;
        assert!((xy / m).abs() < 5.0 / m.sqrt(), "pair correlation {}", xy / m);
        assert!((sq / m).abs() < 5.0 * 2.0 / m.sqrt(), "correlation of squares {}", sq / m);
    }

    #[test]
    fn streams_are_xoshiro256_plus_plus() {
        let mut reference = Xoshiro256PlusPlus::seed_from_u64(11);
        let mut state = [0u64; 4];
        let mut words = SplitMix64::seed_from_u64(11);
        for word in &mut state {
            *word = words.next_u64();
        }
        for _ in 0..1000 {
            assert_eq!(xoshiro_next(&mut state), reference.next_u64());
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_matches_scalar_bit_for_bit() {
        if !crate::cpu::CpuFeatures::detect().has_avx2_fma() {
            return;
        }
        for len in [BLOCK, 1, STEP - 1, STEP + 3, 1000] {
            for seed in [0u64, 5, u64::MAX] {
                let mut words = words_after(seed, 0);
                let mut lanes = [[0u64; 4]; LANES];
                lanes.iter_mut().flatten().for_each(|w| *w = words.next_u64());
                let mut vector = vec![0.0f32; len];
                unsafe { avx2::fill(&lanes, &mut vector) };
                let mut scalar = vec![0.0f32; len];
                fill_scalar(&mut lanes, &mut scalar);
                assert!(vector.iter().zip(&scalar).all(|(a, b)| a.to_bits() == b.to_bits()), "seed {seed}, {len} draws");
            }
        }
    }

    #[test]
    fn blocks_are_independent_streams() {
        let mut x = vec![0.0f32; 3 * BLOCK];
        standard_normal(1, &mut x);
        let (a, b) = (&x[..BLOCK], &x[BLOCK..2 * BLOCK]);
        let dot: f64 = a.iter().zip(b).map(|(u, v)| f64::from(u * v)).sum::<f64>() / BLOCK as f64;
        assert!(dot.abs() < 5.0 / (BLOCK as f64).sqrt(), "correlation {dot}");
        // The same seed, and a block drawn alone, give the same values.
        let mut again = vec![0.0f32; 2 * BLOCK + 5];
        standard_normal(1, &mut again);
        assert_eq!(&again[..2 * BLOCK], &x[..2 * BLOCK]);
        let mut other = vec![0.0f32; BLOCK];
        standard_normal(2, &mut other);
        assert_ne!(&other[..], a);
    }

    #[test]
    fn parts_follow_their_seeds() {
        let mut both = vec![0.0f32; 2 * 100];
        standard_normal_per_seed(&[3, 4], &mut both);
        let mut single = vec![0.0f32; 100];
        standard_normal(4, &mut single);
        assert_eq!(&both[100..], &single[..]);
    }
}
