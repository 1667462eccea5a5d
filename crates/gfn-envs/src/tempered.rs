//! Reward-temperature conditioning: any environment with its reward raised to a power `β`,
//! `R_β(x) = R(x)^β`, one GFlowNet for every `β` in a range (a conditional GFlowNet; Bengio et
//! al. 2023 §4, Zhang et al. 2023's temperature-conditioned samplers).
//!
//! The state is `[β in thousandths, inner state…]`: `β` is drawn uniformly from `[β_lo, β_hi]` at
//! the start of each training trajectory (rounded to a multiple of 0.001) and stays in every
//! state of it. The network input is the inner features followed by `β` and `ln β`, so P_F, P_B and
//! log F (whose value at `s_0(β)` is log Z(β)) are functions of the condition. Rewards scale in log
//! space: `log R_β(x) = β · log R(x)`, and so do the intermediate energies (FL).

use gfn_core::conditional::ConditionSpace;
use gfn_core::obs::{GraphBatch, GraphSpace, TokenBatch, TokenSpace};
use gfn_core::{Env, GfnError, GfnRng, Result};
use rand::Rng;

/// Units of `β` in the state: thousandths.
pub const BETA_SCALE: f64 = 1000.0;

/// An environment conditioned on the reward exponent `β`.
pub struct Tempered {
    inner: Box<dyn Env>,
    /// `[β_lo, β_hi]` in thousandths.
    range: (i32, i32),
}

impl std::fmt::Debug for Tempered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tempered")
            .field("inner", &self.inner.name())
            .field("range", &self.range)
            .finish()
    }
}

fn milli(field: &'static str, beta: f64) -> Result<i32> {
    let m = (beta * BETA_SCALE).round();
    if !(beta.is_finite() && beta > 0.0 && m >= 1.0 && m <= f64::from(i32::MAX)) {
        return Err(GfnError::invalid(
            field,
            beta,
            "must be a finite β ≥ 0.001 (β is kept in thousandths)",
        ));
    }
    Ok(m as i32)
}

impl Tempered {
    /// `inner` with `β` drawn uniformly from `[lo, hi]` during training (`0 < lo ≤ hi`, in steps
    /// of 0.001).
    pub fn new(inner: Box<dyn Env>, lo: f64, hi: f64) -> Result<Self> {
        let (l, h) = (milli("beta_lo", lo)?, milli("beta_hi", hi)?);
        if l > h {
            return Err(GfnError::invalid(
                "condition",
                format!("beta={lo}..{hi}"),
                "needs beta_lo ≤ beta_hi",
            ));
        }
        if inner.condition_space().is_some() {
            return Err(GfnError::invalid(
                "env",
                inner.name(),
                "is already conditional; tempering conditions an unconditional environment",
            ));
        }
        Ok(Self { inner, range: (l, h) })
    }

    /// The training range of `β`.
    pub fn range(&self) -> (f64, f64) {
        (
            f64::from(self.range.0) / BETA_SCALE,
            f64::from(self.range.1) / BETA_SCALE,
        )
    }

    /// The untempered environment.
    pub fn inner(&self) -> &dyn Env {
        self.inner.as_ref()
    }

    /// `β` of a state.
    pub fn beta_of(state: &[i32]) -> f64 {
        f64::from(state[0]) / BETA_SCALE
    }

    fn write_s0(&self, beta_milli: i32, out: &mut [i32]) {
        out[0] = beta_milli;
        self.inner.initial_state(&mut out[1..]);
    }
}

impl Env for Tempered {
    fn name(&self) -> String {
        let (lo, hi) = self.range();
        format!("{}-beta{lo}..{hi}", self.inner.name())
    }
    fn state_dim(&self) -> usize {
        1 + self.inner.state_dim()
    }
    fn n_actions(&self) -> usize {
        self.inner.n_actions()
    }
    fn n_backward_actions(&self) -> usize {
        self.inner.n_backward_actions()
    }
    fn exit_action(&self) -> Option<usize> {
        self.inner.exit_action()
    }
    fn feature_dim(&self) -> usize {
        self.inner.feature_dim() + 2
    }
    fn max_actions(&self) -> usize {
        self.inner.max_actions()
    }
    /// `s_0` at `β = 1` where the range holds it, else at the range's nearest end.
    fn initial_state(&self, out: &mut [i32]) {
        self.write_s0(1000.clamp(self.range.0, self.range.1), out);
    }
    fn forward_mask(&self, state: &[i32], mask: &mut [bool]) {
        self.inner.forward_mask(&state[1..], mask);
    }
    fn backward_mask(&self, state: &[i32], mask: &mut [bool]) {
        self.inner.backward_mask(&state[1..], mask);
    }
    fn step(&self, state: &mut [i32], action: usize) -> usize {
        self.inner.step(&mut state[1..], action)
    }
    fn backward_step(&self, state: &mut [i32], action: usize) -> usize {
        self.inner.backward_step(&mut state[1..], action)
    }
    fn log_reward(&self, state: &[i32]) -> f64 {
        Self::beta_of(state) * self.inner.log_reward(&state[1..])
    }
    fn featurize(&self, state: &[i32], out: &mut [f32]) {
        let nf = self.inner.feature_dim();
        self.inner.featurize(&state[1..], &mut out[..nf]);
        let beta = Self::beta_of(state);
        out[nf] = beta as f32;
        out[nf + 1] = beta.ln() as f32;
    }
    fn intermediate_log_reward(&self, state: &[i32]) -> Option<f64> {
        self.inner
            .intermediate_log_reward(&state[1..])
            .map(|lr| Self::beta_of(state) * lr)
    }
    fn is_terminal(&self, state: &[i32]) -> bool {
        self.inner.is_terminal(&state[1..])
    }
    fn is_initial(&self, state: &[i32]) -> bool {
        self.inner.is_initial(&state[1..])
    }
    fn is_mode(&self, state: &[i32]) -> bool {
        self.inner.is_mode(&state[1..])
    }
    fn object_distance(&self, a: &[i32], b: &[i32]) -> f64 {
        self.inner.object_distance(&a[1..], &b[1..])
    }
    fn token_space(&self) -> Option<TokenSpace> {
        None
    }
    fn observe_tokens(&self, _states: &[i32], _device: &gfn_core::candle_core::Device) -> Result<TokenBatch> {
        Err(GfnError::invalid(
            "observations",
            "tokens",
            format!("{} has no token encoding of β; use the MLP", self.name()),
        ))
    }
    fn graph_space(&self) -> Option<GraphSpace> {
        None
    }
    fn observe_graphs(&self, _states: &[i32], _device: &gfn_core::candle_core::Device) -> Result<GraphBatch> {
        Err(GfnError::invalid(
            "observations",
            "graphs",
            format!("{} has no graph encoding of β; use the MLP", self.name()),
        ))
    }
    fn condition_space(&self) -> Option<ConditionSpace> {
        let (lo, hi) = self.range;
        let mid = ((f64::from(lo) * f64::from(hi)).sqrt()).round() as i32;
        let mut evaluation: Vec<Vec<f64>> = Vec::new();
        for m in [lo, mid, hi] {
            let b = f64::from(m) / BETA_SCALE;
            if !evaluation.iter().any(|e| e[0] == b) {
                evaluation.push(vec![b]);
            }
        }
        Some(ConditionSpace {
            names: vec!["beta".into()],
            evaluation,
        })
    }
    fn draw_initial_state(&self, rng: &mut GfnRng, out: &mut [i32]) {
        let beta = rng.random_range(self.range.0..=self.range.1);
        self.write_s0(beta, out);
    }
    fn conditioned_initial_state(&self, condition: &[f64], out: &mut [i32]) -> Result<()> {
        match condition {
            [beta] => {
                self.write_s0(milli("beta", *beta)?, out);
                Ok(())
            }
            other => Err(GfnError::invalid(
                "condition",
                format!("{other:?}"),
                "must be one value, beta",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Hypergrid, HypergridReward};
    use gfn_core::conditional::Pinned;
    use gfn_core::exact::ExactEvaluator;
    use gfn_core::rng_from_seed;

    fn grid() -> Box<dyn Env> {
        Box::new(Hypergrid::new(2, 5, HypergridReward::default()).unwrap())
    }

    #[test]
    fn each_condition_targets_the_tempered_reward() {
        let env = Tempered::new(grid(), 0.5, 2.0).unwrap();
        let plain = ExactEvaluator::new(&*grid()).unwrap();
        for beta in [0.5, 1.0, 2.0] {
            let pinned = Pinned::new(&env, &[beta]).unwrap();
            let ev = ExactEvaluator::new(&pinned).unwrap();
            assert_eq!(ev.num_states(), plain.num_states());
            // p_β(x) ∝ R(x)^β: compare with the plain target raised to β and renormalised.
            let w: Vec<f64> = plain.log_rewards().iter().map(|lr| (beta * lr).exp()).collect();
            let z: f64 = w.iter().sum();
            let mut got = ev.target().to_vec();
            let mut want: Vec<f64> = w.iter().map(|x| x / z).collect();
            got.sort_by(f64::total_cmp);
            want.sort_by(f64::total_cmp);
            for (g, w) in got.iter().zip(&want) {
                approx::assert_abs_diff_eq!(g, w, epsilon = 1e-12);
            }
            approx::assert_abs_diff_eq!(ev.log_z(), z.ln(), epsilon = 1e-12);
        }
    }

    #[test]
    fn draws_cover_the_range_and_keep_beta_through_the_trajectory() {
        let env = Tempered::new(grid(), 0.5, 2.0).unwrap();
        let mut rng = rng_from_seed(0);
        let mut s = vec![0; env.state_dim()];
        let (mut lo, mut hi) = (i32::MAX, i32::MIN);
        for _ in 0..2000 {
            env.draw_initial_state(&mut rng, &mut s);
            assert!(env.is_initial(&s));
            lo = lo.min(s[0]);
            hi = hi.max(s[0]);
            let b = s[0];
            env.step(&mut s, 0);
            assert_eq!(s[0], b);
            assert!(!env.is_initial(&s));
        }
        assert!((500..520).contains(&lo) && (1980..=2000).contains(&hi), "{lo} {hi}");
        let space = env.condition_space().unwrap();
        assert_eq!(space.evaluation, vec![vec![0.5], vec![1.0], vec![2.0]]);
    }

    #[test]
    fn bad_ranges_and_conditions_are_named() {
        let e = Tempered::new(grid(), 0.0, 2.0).unwrap_err().to_string();
        assert!(e.contains("beta_lo"), "{e}");
        let e = Tempered::new(grid(), 2.0, 1.0).unwrap_err().to_string();
        assert!(e.contains("beta_lo ≤ beta_hi"), "{e}");
        let env = Tempered::new(grid(), 0.5, 2.0).unwrap();
        let mut s = vec![0; env.state_dim()];
        let e = env
            .conditioned_initial_state(&[f64::NAN], &mut s)
            .unwrap_err()
            .to_string();
        assert!(e.contains("beta"), "{e}");
        let e = env
            .conditioned_initial_state(&[1.0, 2.0], &mut s)
            .unwrap_err()
            .to_string();
        assert!(e.contains("one value"), "{e}");
    }
}
