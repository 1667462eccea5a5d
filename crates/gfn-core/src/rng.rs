//! The library's random number generator: seeded, explicit, serialisable.
//!
//! Every random draw in gfn (parameter initialisation, exploration, action sampling) comes from a
//! [`GfnRng`] passed by the caller. There is no thread-local or OS-seeded randomness anywhere, so
//! the same seed and configuration give bit-identical results on CPU, and the generator's state
//! can be checkpointed and restored.

use rand::{Rng, SeedableRng};

/// xoshiro256++: small state (32 bytes), fast, a stable algorithm that serde can save.
pub type GfnRng = rand_xoshiro::Xoshiro256PlusPlus;

/// A generator seeded from `seed`.
pub fn rng_from_seed(seed: u64) -> GfnRng {
    GfnRng::seed_from_u64(seed)
}

/// A uniform draw in `[0, 1)` with 53 bits of precision.
#[inline]
pub fn uniform(rng: &mut GfnRng) -> f64 {
    rng.random::<f64>()
}

/// Sample an index from unnormalised non-negative weights by inverse CDF; `total` is their sum.
/// Falls back to the last positive weight if rounding leaves the draw past the end.
#[inline]
pub fn sample_weighted(rng: &mut GfnRng, weights: &[f64], total: f64) -> usize {
    let u = uniform(rng) * total;
    let mut acc = 0.0;
    let mut last = 0;
    for (i, &w) in weights.iter().enumerate() {
        if w > 0.0 {
            acc += w;
            last = i;
            if u < acc {
                return i;
            }
        }
    }
    last
}
