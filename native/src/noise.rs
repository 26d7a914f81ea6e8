//! Standard normal draws for the detector noise of a simulated product.
//!
//! Counter-based: the draws of one seed are cut into blocks of [`BLOCK`],
//! and block `b` comes from a xoshiro256++ generator whose state is words
//! `4b + 1 ..= 4b + 4` of the seed's SplitMix64 sequence (disjoint for every
//! block), so every block is drawn on its own and the result is the same
//! whatever the number of threads. The normals come from `rand_distr`'s
//! ziggurat sampler.

use rand_core::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use rand_xoshiro::{SplitMix64, Xoshiro256PlusPlus};
use rayon::prelude::*;

/// Draws per generator stream.
pub const BLOCK: usize = 4096;

/// SplitMix64's increment (the golden ratio in 64 bits).
const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// A float the sampler draws.
pub trait Draw: Copy + Send + Sync {
    fn draw(rng: &mut Xoshiro256PlusPlus) -> Self;
}

impl Draw for f32 {
    fn draw(rng: &mut Xoshiro256PlusPlus) -> Self {
        StandardNormal.sample(rng)
    }
}

impl Draw for f64 {
    fn draw(rng: &mut Xoshiro256PlusPlus) -> Self {
        StandardNormal.sample(rng)
    }
}

/// The generator of block `block` of seed `seed`.
fn block_generator(seed: u64, block: u64) -> Xoshiro256PlusPlus {
    let mut words = SplitMix64::seed_from_u64(seed.wrapping_add(block.wrapping_mul(4).wrapping_mul(GOLDEN_GAMMA)));
    Xoshiro256PlusPlus::from_rng(&mut words)
}

/// Fills `out` with independent `N(0, 1)` draws of the generator `seed`.
pub fn standard_normal<T: Draw>(seed: u64, out: &mut [T]) {
    out.par_chunks_mut(BLOCK).enumerate().for_each(|(block, chunk)| {
        let mut rng = block_generator(seed, block as u64);
        for value in chunk {
            *value = T::draw(&mut rng);
        }
    });
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

    #[test]
    fn draws_are_standard_normal() {
        let mut x = vec![0.0f64; 200_000];
        standard_normal(7, &mut x);
        let n = x.len() as f64;
        let mean = x.iter().sum::<f64>() / n;
        let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        let kurtosis = x.iter().map(|v| (v - mean).powi(4)).sum::<f64>() / n / (var * var);
        // Standard errors: 1/√n for the mean, √(2/n) for the variance.
        assert!(mean.abs() < 5.0 / n.sqrt(), "mean {mean}");
        assert!((var - 1.0).abs() < 5.0 * (2.0 / n).sqrt(), "variance {var}");
        assert!((kurtosis - 3.0).abs() < 0.1, "kurtosis {kurtosis}");
        let beyond_2 = x.iter().filter(|v| v.abs() > 2.0).count() as f64 / n;
        assert!((beyond_2 - 0.0455).abs() < 0.003, "P(|x| > 2) = {beyond_2}");
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
