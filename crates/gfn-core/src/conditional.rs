//! Conditional GFlowNets (Bengio et al. 2023, "GFlowNet Foundations" §4): one sampler for a family
//! of targets `p(x | c) ∝ R(x | c)`, with `log Z(c)` a function of the condition.
//!
//! A conditional [`Env`] keeps its condition `c` in the state row: every state of a trajectory
//! carries it, so the policy heads (P_F, P_B, log F) see it through the same features or
//! observations as the rest of the state, and the reward reads it. Each condition has its own
//! initial state `s_0(c)`; [`Env::draw_initial_state`] draws `c` from the training distribution
//! when the sampler starts a trajectory, so nothing else in the sampler, the batches or the losses
//! changes. `log Z(c)` is the flow head at the condition's initial state, `log F(s_0(c))`: the
//! trajectory-balance objectives read it from there in place of a scalar.
//!
//! Exact evaluation is per condition: [`Pinned`] is the environment at one condition (its only
//! initial state `s_0(c)`, its states those reachable from it), which
//! [`crate::exact::ExactEvaluator`] enumerates like any other environment.

use std::collections::HashMap;

use crate::obs::{GraphBatch, GraphSpace, TokenBatch, TokenSpace};
use crate::{Env, GfnError, GfnRng, Result};

/// What a conditional environment is conditioned on.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ConditionSpace {
    /// The name of each coordinate of a condition (`["beta"]`; `["instance"]` for a problem
    /// instance given by its index).
    pub names: Vec<String>,
    /// The conditions at which evaluation reports by default.
    pub evaluation: Vec<Vec<f64>>,
}

impl ConditionSpace {
    /// `name=value,…` of one condition, for names and reports.
    pub fn describe(&self, condition: &[f64]) -> String {
        self.names
            .iter()
            .zip(condition)
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Most states [`Pinned::enumerate_states`] lists before giving up (returning `None`).
pub const MAX_PINNED_STATES: usize = 1 << 22;

/// A conditional environment at one condition: an unconditional environment whose only initial
/// state is `s_0(c)` and whose states are those reachable from it (enumerated by a depth-first
/// walk, parents before children). Everything else is the conditional environment's.
#[derive(Clone)]
pub struct Pinned<'a> {
    env: &'a dyn Env,
    s0: Vec<i32>,
    condition: Vec<f64>,
    label: String,
}

impl std::fmt::Debug for Pinned<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pinned")
            .field("env", &self.env.name())
            .field("condition", &self.condition)
            .finish()
    }
}

impl<'a> Pinned<'a> {
    /// `env` at `condition`; an error where `env` is not conditional or refuses the condition.
    pub fn new(env: &'a dyn Env, condition: &[f64]) -> Result<Self> {
        let space = env.condition_space().ok_or_else(|| {
            GfnError::invalid(
                "condition",
                format!("{condition:?}"),
                format!("{} is not a conditional environment", env.name()),
            )
        })?;
        if condition.len() != space.names.len() {
            return Err(GfnError::invalid(
                "condition",
                format!("{condition:?}"),
                format!("must have {} values ({})", space.names.len(), space.names.join(", ")),
            ));
        }
        let mut s0 = vec![0; env.state_dim()];
        env.conditioned_initial_state(condition, &mut s0)?;
        Ok(Self {
            env,
            s0,
            condition: condition.to_vec(),
            label: space.describe(condition),
        })
    }

    /// The condition.
    pub fn condition(&self) -> &[f64] {
        &self.condition
    }

    /// `name=value,…` of the condition.
    pub fn label(&self) -> &str {
        &self.label
    }
}

/// The states reachable from `s0` by forward steps, in a topological order (parents first), or
/// `None` past `limit` states.
pub fn reachable_states(env: &(impl Env + ?Sized), s0: &[i32], limit: usize) -> Option<Vec<i32>> {
    let (sd, na) = (env.state_dim(), env.n_actions());
    let exit = env.exit_action();
    let mut index: HashMap<Vec<i32>, usize> = HashMap::new();
    let mut states: Vec<i32> = Vec::new();
    let mut post: Vec<usize> = Vec::new();
    // Depth-first: (state index, next action to try).
    let mut stack: Vec<(usize, usize)> = Vec::new();
    let mut mask = vec![false; na];
    let mut child = vec![0; sd];
    index.insert(s0.to_vec(), 0);
    states.extend_from_slice(s0);
    stack.push((0, 0));
    while let Some(&mut (i, ref mut next)) = stack.last_mut() {
        let s = &states[i * sd..(i + 1) * sd];
        env.forward_mask(s, &mut mask);
        let found = (*next..na).find(|&a| mask[a] && Some(a) != exit);
        match found {
            None => {
                post.push(i);
                stack.pop();
            }
            Some(a) => {
                *next = a + 1;
                child.copy_from_slice(s);
                env.step(&mut child, a);
                if !index.contains_key(&child) {
                    let j = index.len();
                    if j >= limit {
                        return None;
                    }
                    index.insert(child.clone(), j);
                    states.extend_from_slice(&child);
                    stack.push((j, 0));
                }
            }
        }
    }
    let mut out = Vec::with_capacity(states.len());
    for &i in post.iter().rev() {
        out.extend_from_slice(&states[i * sd..(i + 1) * sd]);
    }
    Some(out)
}

impl Env for Pinned<'_> {
    fn name(&self) -> String {
        format!("{}@{}", self.env.name(), self.label)
    }
    fn state_dim(&self) -> usize {
        self.env.state_dim()
    }
    fn n_actions(&self) -> usize {
        self.env.n_actions()
    }
    fn n_backward_actions(&self) -> usize {
        self.env.n_backward_actions()
    }
    fn exit_action(&self) -> Option<usize> {
        self.env.exit_action()
    }
    fn feature_dim(&self) -> usize {
        self.env.feature_dim()
    }
    fn max_actions(&self) -> usize {
        self.env.max_actions()
    }
    fn initial_state(&self, out: &mut [i32]) {
        out.copy_from_slice(&self.s0);
    }
    fn forward_mask(&self, state: &[i32], mask: &mut [bool]) {
        self.env.forward_mask(state, mask);
    }
    fn backward_mask(&self, state: &[i32], mask: &mut [bool]) {
        self.env.backward_mask(state, mask);
    }
    fn step(&self, state: &mut [i32], action: usize) -> usize {
        self.env.step(state, action)
    }
    fn backward_step(&self, state: &mut [i32], action: usize) -> usize {
        self.env.backward_step(state, action)
    }
    fn log_reward(&self, state: &[i32]) -> f64 {
        self.env.log_reward(state)
    }
    fn log_rewards(&self, states: &[i32], out: &mut [f64]) -> crate::Result<()> {
        self.env.log_rewards(states, out)
    }
    fn featurize(&self, state: &[i32], out: &mut [f32]) {
        self.env.featurize(state, out);
    }
    fn intermediate_log_reward(&self, state: &[i32]) -> Option<f64> {
        self.env.intermediate_log_reward(state)
    }
    fn is_terminal(&self, state: &[i32]) -> bool {
        self.env.is_terminal(state)
    }
    fn is_initial(&self, state: &[i32]) -> bool {
        state == self.s0.as_slice()
    }
    fn is_mode(&self, state: &[i32]) -> bool {
        self.env.is_mode(state)
    }
    fn object_distance(&self, a: &[i32], b: &[i32]) -> f64 {
        self.env.object_distance(a, b)
    }
    fn enumerate_states(&self) -> Option<Vec<i32>> {
        reachable_states(self, &self.s0, MAX_PINNED_STATES)
    }
    fn token_space(&self) -> Option<TokenSpace> {
        self.env.token_space()
    }
    fn observe_tokens(&self, states: &[i32], device: &candle_core::Device) -> Result<TokenBatch> {
        self.env.observe_tokens(states, device)
    }
    fn graph_space(&self) -> Option<GraphSpace> {
        self.env.graph_space()
    }
    fn observe_graphs(&self, states: &[i32], device: &candle_core::Device) -> Result<GraphBatch> {
        self.env.observe_graphs(states, device)
    }
    /// The conditional environment's: a pinned view is still one of its conditions, so the
    /// losses read `log Z(c)` from the flow head as they do in training.
    fn condition_space(&self) -> Option<crate::conditional::ConditionSpace> {
        self.env.condition_space()
    }
    fn draw_initial_state(&self, _rng: &mut GfnRng, out: &mut [i32]) {
        out.copy_from_slice(&self.s0);
    }
    fn conditioned_initial_state(&self, condition: &[f64], out: &mut [i32]) -> Result<()> {
        self.env.conditioned_initial_state(condition, out)
    }
    fn set_training_progress(&self, trajectories: u64) {
        self.env.set_training_progress(trajectories);
    }
    fn forward_masks(&self, states: &[i32], masks: &mut [bool]) {
        self.env.forward_masks(states, masks);
    }
    fn backward_masks(&self, states: &[i32], masks: &mut [bool]) {
        self.env.backward_masks(states, masks);
    }
    fn featurize_batch(&self, states: &[i32], out: &mut [f32]) {
        self.env.featurize_batch(states, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dag::DagEnv;
    use crate::rng_from_seed;

    #[test]
    fn reachable_states_of_a_dag_are_all_its_nodes_in_topological_order() {
        let mut rng = rng_from_seed(3);
        for with_exit in [false, true] {
            let env = DagEnv::random(9, 0.4, with_exit, &mut rng).unwrap();
            let mut s0 = vec![0; env.state_dim()];
            env.initial_state(&mut s0);
            let got = reachable_states(&env, &s0, 1000).unwrap();
            let listed = env.enumerate_states().unwrap();
            let mut a: Vec<_> = got.chunks(env.state_dim()).map(<[i32]>::to_vec).collect();
            let mut b: Vec<_> = listed.chunks(env.state_dim()).map(<[i32]>::to_vec).collect();
            let pos: HashMap<Vec<i32>, usize> = a.iter().cloned().enumerate().map(|(i, s)| (s, i)).collect();
            // Parents first: every forward step goes to a later position.
            let mut mask = vec![false; env.n_actions()];
            for s in &a {
                env.forward_mask(s, &mut mask);
                for (act, _) in mask
                    .iter()
                    .enumerate()
                    .filter(|(k, m)| **m && Some(*k) != env.exit_action())
                {
                    let mut c = s.clone();
                    env.step(&mut c, act);
                    assert!(pos[&c] > pos[s], "{s:?} -> {c:?}");
                }
            }
            a.sort();
            b.sort();
            // DagEnv lists every node; the reachable ones are a subset containing s_0.
            assert!(a.iter().all(|s| b.contains(s)));
            assert!(a.contains(&s0));
            assert_eq!(
                reachable_states(&env, &s0, 1),
                if a.len() > 1 { None } else { Some(s0.clone()) }
            );
        }
    }

    #[test]
    fn pinning_an_unconditional_environment_is_an_error_naming_the_condition() {
        let mut rng = rng_from_seed(1);
        let env = DagEnv::random(4, 0.5, true, &mut rng).unwrap();
        let err = Pinned::new(&env, &[0.5]).unwrap_err().to_string();
        assert!(err.contains("condition") && err.contains("not a conditional"), "{err}");
    }
}
