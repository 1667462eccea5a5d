//! The environment trait: a discrete DAG of partial objects, batch-first.
//!
//! A state is a fixed-width row of `i32` (`state_dim` of them). A batch of states is one contiguous
//! `&[i32]` of `n * state_dim` values; a batch of masks is one contiguous `&mut [bool]` of
//! `n * n_actions` values. The per-row methods are the ones an implementor writes; the `*_batch`
//! methods have default loops over rows and may be overridden with vectorised versions.
//!
//! # Terminal objects
//! Two shapes of DAG are supported:
//! * **with an exit action** (`exit_action()` is `Some(a)`): taking `a` in state `s` terminates the
//!   trajectory with the object `x = s` (the move `s → s_f`). Every state where `a` is allowed is a
//!   terminal object. A trajectory with `n` actions visits `n` real states `s_0 … s_{n−1}`.
//! * **without** (`exit_action()` is `None`): a trajectory ends when it reaches a state for which
//!   [`Env::is_terminal`] holds; that state is the object `x`. A trajectory with `n` actions visits
//!   `n + 1` real states `s_0 … s_n`.
//!
//! # Example: a new environment is one trait impl
//! A chain `0 → 1 → … → L−1` where every node may also exit, with reward `exp(−|node − 2|)`:
//! ```
//! use gfn_core::Env;
//!
//! struct Chain { len: i32 }
//!
//! impl Env for Chain {
//!     fn name(&self) -> String { format!("chain-{}", self.len) }
//!     fn state_dim(&self) -> usize { 1 }
//!     fn n_actions(&self) -> usize { 2 }            // 0: advance, 1: exit
//!     fn n_backward_actions(&self) -> usize { 1 }   // 0: go back
//!     fn exit_action(&self) -> Option<usize> { Some(1) }
//!     fn feature_dim(&self) -> usize { self.len as usize }
//!     fn max_actions(&self) -> usize { self.len as usize } // L−1 advances + exit
//!     fn initial_state(&self, out: &mut [i32]) { out[0] = 0; }
//!     fn forward_mask(&self, s: &[i32], mask: &mut [bool]) {
//!         mask[0] = s[0] + 1 < self.len;
//!         mask[1] = true;
//!     }
//!     fn backward_mask(&self, s: &[i32], mask: &mut [bool]) { mask[0] = s[0] > 0; }
//!     fn step(&self, s: &mut [i32], _action: usize) -> usize { s[0] += 1; 0 }
//!     fn backward_step(&self, s: &mut [i32], _action: usize) -> usize { s[0] -= 1; 0 }
//!     fn log_reward(&self, s: &[i32]) -> f64 { -f64::from((s[0] - 2).abs()) }
//!     fn featurize(&self, s: &[i32], out: &mut [f32]) {
//!         out.fill(0.0);
//!         out[s[0] as usize] = 1.0;
//!     }
//!     fn enumerate_states(&self) -> Option<Vec<i32>> { Some((0..self.len).collect()) }
//!     fn state_index(&self, s: &[i32]) -> Option<usize> { Some(s[0] as usize) }
//! }
//!
//! let env = Chain { len: 5 };
//! let ev = gfn_core::exact::ExactEvaluator::new(&env).unwrap();
//! assert_eq!(ev.num_terminal(), 5);
//! ```
//! With that impl the chain trains with every objective, is evaluated exactly, and runs through the
//! samplers unchanged.

/// A discrete GFlowNet environment: a DAG over fixed-width integer states.
///
/// Invariants an implementation must keep (checked by [`crate::dag::check_env`] in tests):
/// `step` and `backward_step` are inverse to each other on valid actions, the graph is acyclic,
/// [`Env::enumerate_states`] lists every reachable state exactly once, parents before children.
pub trait Env: Send + Sync {
    /// A short name with the parameters, e.g. `hypergrid-4x8`.
    fn name(&self) -> String;
    /// Number of `i32` values in one state row.
    fn state_dim(&self) -> usize;
    /// Number of forward actions, including the exit action if there is one.
    fn n_actions(&self) -> usize;
    /// Number of backward actions.
    fn n_backward_actions(&self) -> usize;
    /// The index of the exit action, if the environment has one.
    fn exit_action(&self) -> Option<usize>;
    /// Width of the feature vector given to the network.
    fn feature_dim(&self) -> usize;
    /// Upper bound on the number of forward actions in one trajectory (including the exit).
    fn max_actions(&self) -> usize;
    /// Write the initial state `s_0`.
    fn initial_state(&self, out: &mut [i32]);
    /// Which forward actions are allowed in `state` (including the exit action).
    fn forward_mask(&self, state: &[i32], mask: &mut [bool]);
    /// Which backward actions are allowed in `state` (none in `s_0`).
    fn backward_mask(&self, state: &[i32], mask: &mut [bool]);
    /// Apply the non-exit forward `action` in place; return the backward action that undoes it.
    fn step(&self, state: &mut [i32], action: usize) -> usize;
    /// Apply backward `action` in place (to the parent); return the forward action that undoes it.
    fn backward_step(&self, state: &mut [i32], action: usize) -> usize;
    /// `log R(x)` of a terminal object.
    fn log_reward(&self, state: &[i32]) -> f64;
    /// `log R(x)` of a batch of terminal objects (`states` row-major, `out` one value per row).
    /// The sampler scores each batch it draws with one call, so an environment whose reward is
    /// cheaper per batch (a reward model, a callback into Python) overrides this; an error stops
    /// the training step with that error. The default calls [`Env::log_reward`] per row.
    fn log_rewards(&self, states: &[i32], out: &mut [f64]) -> crate::Result<()> {
        let sd = self.state_dim().max(1);
        for (x, r) in states.chunks_exact(sd).zip(out.iter_mut()) {
            *r = self.log_reward(x);
        }
        Ok(())
    }
    /// Write the network input for `state` into `out` (`feature_dim` values).
    fn featurize(&self, state: &[i32], out: &mut [f32]);

    /// `log R(s)` of any state, terminal or not, where the task gives partial objects an energy
    /// (`R(s) = exp(−E(s))`): what the forward-looking objectives FL-DB and FL-SubTB (Pan et al.
    /// 2023) learn around. `None` (the default) where only complete objects have a reward.
    fn intermediate_log_reward(&self, _state: &[i32]) -> Option<f64> {
        None
    }
    /// Whether `state` is a terminal object in an environment without exit action.
    /// Environments with an exit action keep the default.
    fn is_terminal(&self, _state: &[i32]) -> bool {
        false
    }
    /// Whether `state` is the initial state.
    fn is_initial(&self, state: &[i32]) -> bool {
        let mut s0 = vec![0; self.state_dim()];
        self.initial_state(&mut s0);
        s0 == state
    }
    /// Whether a terminal object counts as a mode (for the "modes found" metric).
    fn is_mode(&self, _state: &[i32]) -> bool {
        false
    }
    /// Distance between two terminal objects, for the top-k diversity metric. The default is the
    /// Hamming distance between the state vectors; a task whose objects are not vectors of
    /// independent coordinates overrides it (bags: the multiset distance).
    fn object_distance(&self, a: &[i32], b: &[i32]) -> f64 {
        a.iter().zip(b).filter(|(x, y)| x != y).count() as f64
    }
    /// Exact facts about the target `p*(x) ∝ R(x)` that a task too large to enumerate can still
    /// compute (set generation, by dynamic programming over its additive energy): `E_{p*}[R]`
    /// and the mean reward of the best `top_k` distinct objects. Enumerable tasks keep the
    /// default `None`: exact evaluation derives both.
    fn target_summary(&self, _top_k: usize) -> Option<TargetSummary> {
        None
    }
    /// All states, flattened, in a topological order (parents first), where the space is small
    /// enough to enumerate; `None` otherwise.
    fn enumerate_states(&self) -> Option<Vec<i32>> {
        None
    }
    /// How many states [`Env::enumerate_states`] would list, computed without listing them, so a
    /// caller can refuse an enumeration that cannot fit in memory; `None` where not known (an
    /// environment whose enumeration is capped by construction).
    fn enumeration_size(&self) -> Option<f64> {
        None
    }
    /// The position of `state` in [`Env::enumerate_states`], if the environment can compute it
    /// directly; `None` makes callers build a hash map.
    fn state_index(&self, _state: &[i32]) -> Option<usize> {
        None
    }

    /// The token encoding of the states for sequence policies (the transformer): its vocabulary
    /// and longest sequence, or `None` (the default) where the environment has none.
    fn token_space(&self) -> Option<crate::obs::TokenSpace> {
        None
    }
    /// A batch of states as token sequences ([`Env::token_space`]).
    fn observe_tokens(&self, _states: &[i32], _device: &candle_core::Device) -> crate::Result<crate::obs::TokenBatch> {
        Err(crate::GfnError::invalid(
            "observations",
            "tokens",
            format!("{} has no token encoding of its states", self.name()),
        ))
    }
    /// The graph encoding of the states for graph policies (the GIN): node and edge feature
    /// widths, or `None` (the default) where the environment has none.
    fn graph_space(&self) -> Option<crate::obs::GraphSpace> {
        None
    }
    /// A batch of states as graphs, one per state ([`Env::graph_space`]).
    fn observe_graphs(&self, _states: &[i32], _device: &candle_core::Device) -> crate::Result<crate::obs::GraphBatch> {
        Err(crate::GfnError::invalid(
            "observations",
            "graphs",
            format!("{} has no graph encoding of its states", self.name()),
        ))
    }

    /// Conditional GFlowNets: what the environment is conditioned on, or `None` (the default) for
    /// an unconditional one. A conditional environment keeps its condition `c` in the state (so
    /// every policy head sees it through the features or observations, and the reward reads it),
    /// has one initial state `s_0(c)` per condition, and draws `c` with
    /// [`Env::draw_initial_state`]. Exact evaluation runs per condition on
    /// [`crate::conditional::Pinned`].
    fn condition_space(&self) -> Option<crate::conditional::ConditionSpace> {
        None
    }
    /// Draw a condition from the training distribution and write its `s_0(c)`; the default (an
    /// unconditional environment) writes [`Env::initial_state`] and draws nothing.
    fn draw_initial_state(&self, _rng: &mut crate::GfnRng, out: &mut [i32]) {
        self.initial_state(out);
    }
    /// Write `s_0(c)` for the condition `c` (values as [`crate::conditional::ConditionSpace`]
    /// names them); an error names a condition out of range, or an unconditional environment.
    fn conditioned_initial_state(&self, condition: &[f64], _out: &mut [i32]) -> crate::Result<()> {
        Err(crate::GfnError::invalid(
            "condition",
            format!("{condition:?}"),
            format!("{} is not a conditional environment", self.name()),
        ))
    }

    /// Training progress, told by the trainer before each step: the number of trajectories
    /// sampled so far. An environment whose reward follows a schedule (MIS's annealed reward
    /// exponent) reads it when it draws the next initial states; it must keep in the state
    /// whatever its reward depends on, so a trajectory's reward never changes afterwards. The
    /// default ignores it.
    fn set_training_progress(&self, _trajectories: u64) {}

    /// Forward masks for a batch of states (`states.len() / state_dim` rows).
    fn forward_masks(&self, states: &[i32], masks: &mut [bool]) {
        let (d, a) = (self.state_dim(), self.n_actions());
        for (s, m) in states.chunks_exact(d).zip(masks.chunks_exact_mut(a)) {
            self.forward_mask(s, m);
        }
    }
    /// Backward masks for a batch of states.
    fn backward_masks(&self, states: &[i32], masks: &mut [bool]) {
        let (d, a) = (self.state_dim(), self.n_backward_actions());
        for (s, m) in states.chunks_exact(d).zip(masks.chunks_exact_mut(a)) {
            self.backward_mask(s, m);
        }
    }
    /// Features for a batch of states.
    fn featurize_batch(&self, states: &[i32], out: &mut [f32]) {
        let (d, f) = (self.state_dim(), self.feature_dim());
        for (s, o) in states.chunks_exact(d).zip(out.chunks_exact_mut(f)) {
            self.featurize(s, o);
        }
    }
}

/// Exact facts about a task's target distribution `p*(x) = R(x) / Z`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TargetSummary {
    /// `E_{p*}[R] = Σ_x R(x)² / Σ_x R(x)`: what the mean reward of exact samples converges to.
    pub mean_reward: f64,
    /// Mean reward of the best `top_k` distinct objects: the ceiling of the top-k metric.
    pub top_k_mean_reward: f64,
}

/// Number of real states (rows needing a network evaluation) in a trajectory of `n_actions` actions.
pub fn states_in_trajectory(env: &(impl Env + ?Sized), n_actions: usize) -> usize {
    if env.exit_action().is_some() {
        n_actions
    } else {
        n_actions + 1
    }
}
