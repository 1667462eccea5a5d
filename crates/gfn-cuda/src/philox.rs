//! Philox4x32-10 (Salmon et al. 2011, "Parallel random numbers: as easy as 1, 2, 3"), the
//! counter-based generator of the sampling kernel: the uniform of `(seed, row, t, iteration)`
//! is a pure function of those four numbers, so the same seed gives the same samples on every
//! run, on the CPU and on the GPU, whatever the launch order.

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// The 4×32-bit output block of counter `c` under key `(k0, k1)`.
pub fn philox4x32(mut c: [u32; 4], mut k0: u32, mut k1: u32) -> [u32; 4] {
    for _ in 0..10 {
        let p0 = u64::from(M0) * u64::from(c[0]);
        let p1 = u64::from(M1) * u64::from(c[2]);
        let (hi0, lo0) = ((p0 >> 32) as u32, p0 as u32);
        let (hi1, lo1) = ((p1 >> 32) as u32, p1 as u32);
        c = [hi1 ^ c[1] ^ k0, lo1, hi0 ^ c[3] ^ k1, lo0];
        k0 = k0.wrapping_add(W0);
        k1 = k1.wrapping_add(W1);
    }
    c
}

/// A uniform double in `(0, 1)` (53 random bits, offset by half a step so it is never 0) for
/// `slot` of row `row` at step `t` of training iteration `iteration` under `seed` (the kernels'
/// `philox_uniform`): key `(seed lo, seed hi ^ iteration hi)`, counter `(row, t, iteration lo, slot)`.
pub fn uniform(seed: u64, row: u32, t: u32, iteration: u64, slot: u32) -> f64 {
    let c = philox4x32(
        [row, t, iteration as u32, slot],
        seed as u32,
        (seed >> 32) as u32 ^ (iteration >> 32) as u32,
    );
    let (hi, lo) = (u64::from(c[0] >> 5), u64::from(c[1] >> 6));
    ((hi * 67_108_864 + lo) as f64 + 0.5) * (1.0 / 9_007_199_254_740_992.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The known-answer vectors of the Random123 distribution (kat_vectors, philox4x32 R=10).
    #[test]
    fn known_answers() {
        assert_eq!(
            philox4x32([0; 4], 0, 0),
            [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]
        );
        assert_eq!(
            philox4x32([u32::MAX; 4], u32::MAX, u32::MAX),
            [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd]
        );
        assert_eq!(
            philox4x32(
                [0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344],
                0xa409_3822,
                0x299f_31d0
            ),
            [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1]
        );
    }

    #[test]
    fn uniforms_are_in_range_and_spread() {
        let n = 20_000;
        let mean: f64 = (0..n).map(|i| uniform(7, i, 3, 11, 2)).sum::<f64>() / f64::from(n);
        assert!((mean - 0.5).abs() < 0.01, "mean {mean}");
        assert!((0..n).all(|i| {
            let u = uniform(1, i, 0, 0, 0);
            u > 0.0 && u < 1.0
        }));
        assert_ne!(uniform(1, 0, 0, 0, 0), uniform(2, 0, 0, 0, 0));
        assert_ne!(uniform(1, 0, 0, 0, 0), uniform(1, 0, 0, 1 << 32, 0));
        assert_ne!(uniform(1, 0, 0, 0, 0), uniform(1, 0, 0, 0, 1));
    }
}
