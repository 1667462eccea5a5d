//! The dropout regulariser of LED's decomposition loss (Jang et al. 2024, §3.2; papers.md §1.1).
//!
//! For a trajectory with `T` decomposed transitions and potentials `φ_t`, a mask
//! `z_t ~ Bernoulli(1 − γ)` (redrawn while every `z_t` is 0) gives the estimate
//! `T · Σ_t z_t φ_t / Σ_t z_t` of `Σ_t φ_t`. It is unbiased: conditioned on `Σ z > 0` the mask is
//! exchangeable, so `E[z_t / Σ_u z_u] = 1/T` for every `t`.

use rand::Rng;

use gfn_core::{GfnError, GfnRng, Result};

/// The paper's rule for the drop rate γ: 0.1 for trajectories shorter than 10 transitions,
/// 0.2 otherwise.
pub fn default_drop_rate(transitions: usize) -> f64 {
    if transitions < 10 { 0.1 } else { 0.2 }
}

/// Check `γ ∈ [0, 1)`.
pub fn validate_drop_rate(gamma: f64) -> Result<()> {
    if gamma.is_finite() && (0.0..1.0).contains(&gamma) {
        Ok(())
    } else {
        Err(GfnError::invalid("drop_rate", gamma, "must be in [0, 1)"))
    }
}

/// Writes a mask of `t ≥ 1` entries into `out` (1 = kept), each kept with probability `1 − γ`,
/// redrawn while all are dropped.
pub fn draw_mask(t: usize, gamma: f64, rng: &mut GfnRng, out: &mut [f32]) -> Result<()> {
    validate_drop_rate(gamma)?;
    if t == 0 || out.len() < t {
        return Err(GfnError::invalid("transitions", t, "must be ≥ 1 and fit the output"));
    }
    loop {
        let mut kept = 0;
        for z in &mut out[..t] {
            let keep = rng.random::<f64>() >= gamma;
            *z = f32::from(u8::from(keep));
            kept += usize::from(keep);
        }
        if kept > 0 {
            return Ok(());
        }
    }
}

/// The dropout estimate `T · Σ z_t φ_t / Σ z_t` (`T = phi.len()`); `None` when the mask keeps
/// nothing.
pub fn dropout_sum(phi: &[f64], z: &[f32]) -> Option<f64> {
    let kept: f64 = z.iter().map(|&v| f64::from(v)).sum();
    if kept == 0.0 {
        return None;
    }
    let s: f64 = phi.iter().zip(z).map(|(p, &v)| p * f64::from(v)).sum();
    Some(phi.len() as f64 * s / kept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gfn_core::rng_from_seed;

    /// Σ over every mask with at least one kept entry of P(z | Σz > 0) · estimate = Σ φ.
    #[test]
    fn the_estimate_is_unbiased_by_enumeration() {
        let mut rng = rng_from_seed(3);
        for t in 1..=8usize {
            for gamma in [0.0f64, 0.1, 0.2, 0.5, 0.9] {
                let phi: Vec<f64> = (0..t).map(|_| rng.random_range(-2.0..2.0)).collect();
                let p_nonzero = 1.0 - gamma.powi(t as i32);
                let mut expectation = 0.0;
                for bits in 1u32..(1 << t) {
                    let z: Vec<f32> = (0..t).map(|k| ((bits >> k) & 1) as f32).collect();
                    let kept = bits.count_ones() as i32;
                    let p = (1.0 - gamma).powi(kept) * gamma.powi(t as i32 - kept) / p_nonzero;
                    expectation += p * dropout_sum(&phi, &z).unwrap();
                }
                let total: f64 = phi.iter().sum();
                approx::assert_abs_diff_eq!(expectation, total, epsilon = 1e-12);
            }
        }
    }

    #[test]
    fn masks_are_never_empty_and_keep_about_one_minus_gamma() {
        let mut rng = rng_from_seed(9);
        let mut z = [0f32; 4];
        let mut kept = 0.0;
        let draws = 20_000;
        for _ in 0..draws {
            draw_mask(4, 0.2, &mut rng, &mut z).unwrap();
            assert!(z.contains(&1.0));
            kept += z.iter().map(|&v| f64::from(v)).sum::<f64>();
        }
        // E[kept | nonzero] = 4·0.8 / (1 − 0.2⁴) ≈ 3.2051; the standard error is below 0.006.
        let mean = kept / draws as f64;
        assert!((mean - 3.2 / (1.0 - 0.2f64.powi(4))).abs() < 0.03, "{mean}");
        assert!(draw_mask(4, 1.0, &mut rng, &mut z).is_err());
        assert!(draw_mask(0, 0.1, &mut rng, &mut z).is_err());
        assert_eq!(default_drop_rate(9), 0.1);
        assert_eq!(default_drop_rate(13), 0.2);
    }
}
