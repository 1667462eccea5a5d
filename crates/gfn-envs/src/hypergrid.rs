//! Hypergrid (Bengio et al. 2021; the exit-anywhere version of Malkin et al. 2022 and torchgfn).
//!
//! States `{0 … H−1}^d`, `s_0 = 0`. Forward actions: increment coordinate `i` (allowed while
//! `x_i < H−1`), or exit (always allowed), so every grid point is a terminal object. Backward
//! action `i` decrements coordinate `i`. Input: K-hot (one-hot per coordinate, `d·H` values).
//!
//! Reward: `R(x) = R0 + R1·Π_i 1[0.25 < |x_i/(H−1) − 0.5|] + R2·Π_i 1[0.3 < |x_i/(H−1) − 0.5| < 0.4]`.
//!
//! **Float boundary.** When `H−1` is a multiple of 5, some coordinates sit exactly on a band
//! edge (`|x/(H−1) − 0.5| = 0.3` for `x = 204`, `H = 256`). float64 rounds that value above 0.3
//! and float32 below it. We evaluate the conditions in exact integer arithmetic — with
//! `c = |2x − (H−1)|`: `0.25 < ·` ⇔ `2c > H−1`, `0.3 < · < 0.4` ⇔ `6(H−1) < 10c < 8(H−1)` — which is
//! the mathematical definition and agrees with the float32 code of torchgfn and GFN-PG (at
//! `H = 256, d = 2`: 2,500 mode states, `log Z = 9.890686` for `R0 = 0.1`; at `H = 16, d = 4`:
//! 16 modes, where a float64 evaluation counts 81 and gets `log Z = 9.078362`).

use gfn_core::{Env, GfnError, Result};

/// Reward constants.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HypergridReward {
    /// Base reward everywhere, `R0 ≥ 0`.
    pub r0: f64,
    /// Bonus in the outer region.
    pub r1: f64,
    /// Bonus in the bands near the corners (the modes).
    pub r2: f64,
}

impl Default for HypergridReward {
    fn default() -> Self {
        Self {
            r0: 0.1,
            r1: 0.5,
            r2: 2.0,
        }
    }
}

/// The hypergrid environment.
#[derive(Debug, Clone)]
pub struct Hypergrid {
    ndim: usize,
    height: usize,
    reward: HypergridReward,
    /// Per coordinate value: (in the outer region, in the band).
    coord_flags: Vec<(bool, bool)>,
}

impl Hypergrid {
    /// A `ndim`-dimensional grid of side `height` (≥ 2) with the given rewards (≥ 0, R0 > 0 or
    /// some reward positive so that Z > 0).
    pub fn new(ndim: usize, height: usize, reward: HypergridReward) -> Result<Self> {
        if ndim == 0 {
            return Err(GfnError::invalid("ndim", ndim, "must be at least 1"));
        }
        if height < 2 {
            return Err(GfnError::invalid("height", height, "must be at least 2"));
        }
        if (height as f64).powi(ndim as i32) > 2f64.powi(31) {
            return Err(GfnError::invalid(
                "height",
                height,
                format!("height^ndim must be below 2^31 (ndim = {ndim})"),
            ));
        }
        for (field, v) in [("r0", reward.r0), ("r1", reward.r1), ("r2", reward.r2)] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(GfnError::invalid(field, v, "must be finite and ≥ 0"));
            }
        }
        if reward.r0 == 0.0 && reward.r1 == 0.0 && reward.r2 == 0.0 {
            return Err(GfnError::invalid(
                "r0",
                0,
                "r0, r1, r2 are all 0: the reward must be positive somewhere",
            ));
        }
        let h1 = (height - 1) as i64;
        let coord_flags = (0..height as i64)
            .map(|x| {
                let c = (2 * x - h1).abs();
                (2 * c > h1, 6 * h1 < 10 * c && 10 * c < 8 * h1)
            })
            .collect();
        Ok(Self {
            ndim,
            height,
            reward,
            coord_flags,
        })
    }

    /// Number of dimensions `d`.
    pub fn ndim(&self) -> usize {
        self.ndim
    }
    /// Side length `H`.
    pub fn height(&self) -> usize {
        self.height
    }
    /// The reward constants.
    pub fn reward(&self) -> HypergridReward {
        self.reward
    }

    /// `R(x)`.
    pub fn reward_of(&self, state: &[i32]) -> f64 {
        let (mut outer, mut band) = (true, true);
        for &x in state {
            let (o, b) = self.coord_flags[x as usize];
            outer &= o;
            band &= b;
        }
        self.reward.r0 + if outer { self.reward.r1 } else { 0.0 } + if band { self.reward.r2 } else { 0.0 }
    }

    /// Number of grid points, `H^d`.
    pub fn num_states(&self) -> usize {
        self.height.pow(self.ndim as u32)
    }
}

impl Env for Hypergrid {
    fn name(&self) -> String {
        format!("hypergrid-{}x{}", self.ndim, self.height)
    }
    fn state_dim(&self) -> usize {
        self.ndim
    }
    fn n_actions(&self) -> usize {
        self.ndim + 1
    }
    fn n_backward_actions(&self) -> usize {
        self.ndim
    }
    fn exit_action(&self) -> Option<usize> {
        Some(self.ndim)
    }
    fn feature_dim(&self) -> usize {
        self.ndim * self.height
    }
    fn max_actions(&self) -> usize {
        self.ndim * (self.height - 1) + 1
    }
    fn initial_state(&self, out: &mut [i32]) {
        out.fill(0);
    }
    fn forward_mask(&self, state: &[i32], mask: &mut [bool]) {
        let top = self.height as i32 - 1;
        for (m, &x) in mask.iter_mut().zip(state) {
            *m = x < top;
        }
        mask[self.ndim] = true;
    }
    fn backward_mask(&self, state: &[i32], mask: &mut [bool]) {
        for (m, &x) in mask.iter_mut().zip(state) {
            *m = x > 0;
        }
    }
    fn step(&self, state: &mut [i32], action: usize) -> usize {
        state[action] += 1;
        action
    }
    fn backward_step(&self, state: &mut [i32], action: usize) -> usize {
        state[action] -= 1;
        action
    }
    fn log_reward(&self, state: &[i32]) -> f64 {
        self.reward_of(state).ln()
    }
    /// Every grid point is an object with a reward, so every state has an intermediate energy.
    fn intermediate_log_reward(&self, state: &[i32]) -> Option<f64> {
        Some(self.reward_of(state).ln())
    }
    fn featurize(&self, state: &[i32], out: &mut [f32]) {
        out.fill(0.0);
        for (i, &x) in state.iter().enumerate() {
            out[i * self.height + x as usize] = 1.0;
        }
    }
    fn is_initial(&self, state: &[i32]) -> bool {
        state.iter().all(|&x| x == 0)
    }
    fn is_mode(&self, state: &[i32]) -> bool {
        state.iter().all(|&x| self.coord_flags[x as usize].1)
    }
    fn enumeration_size(&self) -> Option<f64> {
        Some((self.height as f64).powi(self.ndim as i32))
    }
    /// Mixed-radix order with coordinate 0 least significant: every increment raises the index,
    /// so the order is topological.
    fn enumerate_states(&self) -> Option<Vec<i32>> {
        let n = self.num_states();
        let mut out = Vec::with_capacity(n * self.ndim);
        for mut i in 0..n {
            for _ in 0..self.ndim {
                out.push((i % self.height) as i32);
                i /= self.height;
            }
        }
        Some(out)
    }
    fn state_index(&self, state: &[i32]) -> Option<usize> {
        Some(state.iter().rev().fold(0, |acc, &x| acc * self.height + x as usize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_abs_diff_eq;
    use gfn_core::exact::ExactEvaluator;

    fn grid(d: usize, h: usize, r0: f64) -> Hypergrid {
        Hypergrid::new(
            d,
            h,
            HypergridReward {
                r0,
                ..Default::default()
            },
        )
        .unwrap()
    }

    /// papers.md §3.1, exact anchors [calc, float64].
    #[test]
    fn exact_log_z_matches_reference_table() {
        let cases: &[(usize, usize, f64, f64, usize)] = &[
            (2, 64, 0.1, 7.098045, 144),
            (2, 64, 0.01, 6.734544, 144),
            (2, 64, 0.001, 6.689719, 144),
            (2, 64, 1e-4, 6.685124, 144),
            (4, 8, 0.1, 6.344934, 16),
            (4, 8, 0.01, 5.303106, 16),
            (4, 8, 0.001, 5.100452, 16),
            (4, 8, 1e-4, 5.077731, 16),
            (2, 12, 0.1, 3.698830, 4),
            (2, 12, 1e-4, 3.258650, 4),
            (4, 12, 0.1, 7.920664, 16),
            (4, 12, 1e-4, 6.525138, 16),
            (2, 8, 0.1, 3.109061, 4),
            (2, 8, 0.001, 2.776581, 4),
            (4, 20, 0.1, 9.976366, 256),
            (4, 20, 0.001, 8.643297, 256),
        ];
        for &(d, h, r0, log_z, modes) in cases {
            let env = grid(d, h, r0);
            let ev = ExactEvaluator::new(&env).unwrap();
            assert_eq!(ev.num_terminal(), h.pow(d as u32));
            assert_abs_diff_eq!(ev.log_z(), log_z, epsilon = 5e-7);
            assert_eq!(ev.num_modes(), modes, "modes of {d}x{h}");
        }
    }

    /// The documented float-boundary decision: exact arithmetic = float32 semantics at H = 256.
    #[test]
    fn float_boundary_uses_exact_arithmetic() {
        let env = grid(2, 256, 0.1);
        assert!(!env.coord_flags[204].1, "x = 204 is exactly on the 0.3 edge: excluded");
        assert!(env.coord_flags[205].1 && env.coord_flags[26].1 && !env.coord_flags[25].1);
        let modes = (0..256).filter(|&x| env.coord_flags[x].1).count();
        assert_eq!(modes * modes, 2500);
        let log_z = gfn_core::exact::logsumexp((0..256 * 256).map(|i| env.log_reward(&[i % 256, i / 256])));
        assert_abs_diff_eq!(log_z, 9.890686, epsilon = 5e-7);
    }

    /// H = 16 puts x = 12 exactly on the 0.3 edge (|12/15 − 0.5| = 0.3): the reference table's
    /// float64 figures (81 modes, log Z 9.078362 / 7.729971) count it, exact arithmetic and
    /// float32 do not (16 modes). Both are reproduced here, the float64 one by its own formula.
    #[test]
    fn float_boundary_at_height_16() {
        let env = grid(4, 16, 0.1);
        let ev = ExactEvaluator::new(&env).unwrap();
        assert_eq!(ev.num_modes(), 16);
        let band: Vec<i32> = (0..16).filter(|&x| env.coord_flags[x as usize].1).collect();
        assert_eq!(band, vec![2, 13]);
        let f64_band = |x: i32| {
            let d = (f64::from(x) / 15.0 - 0.5).abs();
            0.3 < d && d < 0.4
        };
        assert_eq!((0..16).filter(|&x| f64_band(x)).collect::<Vec<_>>(), vec![2, 12, 13]);
        let f32_band = |x: i32| {
            let d = (x as f32 / 15.0 - 0.5).abs();
            0.3f32 < d && d < 0.4f32
        };
        assert_eq!(
            (0..16).filter(|&x| f32_band(x)).collect::<Vec<_>>(),
            band,
            "float32 agrees with exact arithmetic"
        );
        for (r0, f64_log_z) in [(0.1, 9.078362), (0.001, 7.729971)] {
            let e = grid(4, 16, r0);
            let outer = |x: i32| (f64::from(x) / 15.0 - 0.5).abs() > 0.25;
            let log_z_f64 = gfn_core::exact::logsumexp((0..16i32.pow(4)).map(|i| {
                let xs = [i % 16, (i / 16) % 16, (i / 256) % 16, i / 4096];
                let r = r0
                    + if xs.iter().all(|&x| outer(x)) { 0.5 } else { 0.0 }
                    + if xs.iter().all(|&x| f64_band(x)) { 2.0 } else { 0.0 };
                r.ln()
            }));
            assert_abs_diff_eq!(log_z_f64, f64_log_z, epsilon = 5e-7);
            let ours = ExactEvaluator::new(&e).unwrap().log_z();
            assert!(
                ours < log_z_f64 - 1e-3,
                "exact arithmetic excludes the edge: {ours} vs {log_z_f64}"
            );
        }
    }

    #[test]
    fn satisfies_env_invariants() {
        for (d, h) in [(1, 2), (2, 5), (3, 4)] {
            gfn_core::dag::check_env(&grid(d, h, 0.1)).unwrap();
        }
    }

    #[test]
    fn rejects_bad_parameters() {
        let err = Hypergrid::new(2, 1, HypergridReward::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("height") && err.contains('1'), "{err}");
        let err = Hypergrid::new(
            2,
            8,
            HypergridReward {
                r0: -0.1,
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("r0") && err.contains("-0.1"), "{err}");
    }
}
