//! Forward-looking objectives FL-DB and FL-SubTB (Pan et al. 2023, "Better training of GFlowNets
//! with local credit and incomplete trajectories"; papers.md §A), and the per-transition
//! log-reward increments they share with LED-GFN.
//!
//! With an energy on every state, `R(s) = exp(−E(s))`, the flow is re-parameterised as
//! `F(s) = F̃(s)·R(s)` and the network outputs `log F̃`. Per transition `s_t → s_{t+1}` with
//! increment `Δ_t = log R(s_{t+1}) − log R(s_t)`, FL-DB is
//! `(log F̃(s_t) + log P_F(s_{t+1}|s_t) − log F̃(s_{t+1}) − log P_B(s_t|s_{t+1}) + Δ_t)²`
//! with the boundary `F̃(x) = 1`, and FL-SubTB sums the same terms inside each sub-trajectory
//! with SubTB(λ)'s weights.
//!
//! Both are DB and SubTB evaluated on shifted node flows: with `D_k = Σ_{t<k} Δ_t`,
//! `log F(s_k) = log F̃(s_k) + D_k`, so one code path ([`BalanceTerms::offsets`]) serves FL
//! (increments from the true intermediate energies) and LED (learned potentials). As in the
//! official code, the first increment is `log R(s_1)` (the initial state's energy is taken as
//! 0, so `log Z = log F̃(s_0)`), an exit step has increment 0, and the increments of a trajectory
//! add up to `log R(x)`.

use candle_core::Tensor;
use gfn_core::batch::NONE;
use gfn_core::{Env, GfnError, Result, TrajectoryBatch};

use crate::terms::{BalanceTerms, constant};

/// `[B, T+1]` cumulative increments `D_k` of every node from the environment's intermediate
/// energies: `D_0 = 0`, `D_k = log R(s_k)` for the states `1 ≤ k < n` (a sink after an exit
/// repeats the previous value), `D_n = log R(x)`, 0 past the end.
pub fn intermediate_offsets<E: Env + ?Sized>(env: &E, batch: &TrajectoryBatch) -> Result<Vec<f64>> {
    let (b, t) = (batch.batch_size, batch.max_length());
    let d = batch.state_dim;
    let mut out = vec![0.0; b * (t + 1)];
    for i in 0..b {
        let n = batch.lengths[i] as usize;
        let row_out = &mut out[i * (t + 1)..(i + 1) * (t + 1)];
        for k in 1..n {
            let row = batch.node_row(i, k);
            row_out[k] = if row == NONE {
                row_out[k - 1]
            } else {
                let s = &batch.states[row as usize * d..(row as usize + 1) * d];
                env.intermediate_log_reward(s).ok_or_else(|| needs_energies(env))?
            };
        }
        row_out[n] = batch.log_reward[i];
    }
    Ok(out)
}

fn needs_energies<E: Env + ?Sized>(env: &E) -> GfnError {
    GfnError::invalid(
        "loss",
        "fl-db / fl-subtb",
        format!(
            "needs an environment with intermediate energies (Env::intermediate_log_reward); {} has none",
            env.name()
        ),
    )
}

/// Whether `env` gives its partial objects an energy (checked on the initial state).
pub fn has_intermediate_energies<E: Env + ?Sized>(env: &E) -> bool {
    let mut s0 = vec![0; env.state_dim()];
    env.initial_state(&mut s0);
    env.intermediate_log_reward(&s0).is_some()
}

impl BalanceTerms {
    /// The same terms in the forward-looking parameterisation: `offsets` (`[B, T+1]`, from
    /// [`intermediate_offsets`] or learned potentials) are added to the node flows, which the
    /// network now gives as `log F̃`.
    pub fn with_offsets(mut self, offsets: Vec<f64>) -> Result<Self> {
        let (b, t) = (self.batch_size(), self.max_len());
        if offsets.len() != b * (t + 1) {
            return Err(GfnError::Other(format!(
                "offsets: {} values for a [{b}, {}] batch",
                offsets.len(),
                t + 1
            )));
        }
        let like: &Tensor = &self.log_pf;
        self.offsets = Some(constant(offsets, &[b, t + 1], like.dtype(), like.device())?);
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gfn_core::dag::DagEnv;

    /// A DAG whose partial objects have no energy.
    struct NoEnergies(DagEnv);

    impl Env for NoEnergies {
        fn name(&self) -> String {
            "no-energies".into()
        }
        fn state_dim(&self) -> usize {
            self.0.state_dim()
        }
        fn n_actions(&self) -> usize {
            self.0.n_actions()
        }
        fn n_backward_actions(&self) -> usize {
            self.0.n_backward_actions()
        }
        fn exit_action(&self) -> Option<usize> {
            self.0.exit_action()
        }
        fn feature_dim(&self) -> usize {
            self.0.feature_dim()
        }
        fn max_actions(&self) -> usize {
            self.0.max_actions()
        }
        fn initial_state(&self, out: &mut [i32]) {
            self.0.initial_state(out)
        }
        fn forward_mask(&self, s: &[i32], m: &mut [bool]) {
            self.0.forward_mask(s, m)
        }
        fn backward_mask(&self, s: &[i32], m: &mut [bool]) {
            self.0.backward_mask(s, m)
        }
        fn step(&self, s: &mut [i32], a: usize) -> usize {
            self.0.step(s, a)
        }
        fn backward_step(&self, s: &mut [i32], a: usize) -> usize {
            self.0.backward_step(s, a)
        }
        fn log_reward(&self, s: &[i32]) -> f64 {
            self.0.log_reward(s)
        }
        fn featurize(&self, s: &[i32], out: &mut [f32]) {
            self.0.featurize(s, out)
        }
    }

    #[test]
    fn objectives_refuse_an_environment_without_energies() {
        let dag = DagEnv::random(5, 0.5, true, &mut gfn_core::rng_from_seed(1)).unwrap();
        let env = NoEnergies(dag);
        for name in ["fl-db", "fl-subtb"] {
            let obj = crate::Objective::parse(name, 0.9).unwrap();
            let err = obj.check_env(&env).unwrap_err().to_string();
            assert!(err.contains("intermediate_log_reward") && err.contains(name), "{err}");
        }
        assert!(crate::Objective::DetailedBalance.check_env(&env).is_ok());
    }

    #[test]
    fn offsets_telescope_to_the_log_reward() {
        // 0 → 1 → 2 (terminal, no exit): increments log R(1), log R(2) − log R(1).
        let mut adj = vec![false; 9];
        adj[1] = true; // 0 → 1
        adj[5] = true; // 1 → 2
        let env = DagEnv::new(3, adj, vec![0.0, -1.5, 0.25], false).unwrap();
        let mut batch = TrajectoryBatch::default();
        batch.reset(&env, 1);
        let mut s = [0i32];
        batch.push_row(&env, 0, 0, &s);
        for (k, a) in [1usize, 2].into_iter().enumerate() {
            let back = env.step(&mut s, a);
            batch.set_step(0, k, a as u32, back as u32, 0.0, 0.0);
            batch.push_row(&env, 0, k + 1, &s);
        }
        batch.finish(&env, 0, 2, &s);
        let d = intermediate_offsets(&env, &batch).unwrap();
        assert_eq!(d, vec![0.0, -1.5, 0.25]);
    }
}
