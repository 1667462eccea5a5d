//! A batch of trajectories, padded, in buffers that are reused from one iteration to the next.
//!
//! Two views of the same trajectories:
//! * **rows** (time-major): one row per real visited state, in the order the sampler met them
//!   (all trajectories' step 0, then step 1, …). Features, forward masks and backward masks of the
//!   rows are contiguous buffers, so one batched forward pass evaluates every visited state.
//! * **steps** (padded, trajectory-major): for trajectory `b` and step `t < lengths[b]`, the row of
//!   its state, the action taken, the backward action that undoes it, and the behaviour log-prob.
//!   Strides are `cap + 1` nodes and `cap` steps, with `cap = env.max_actions()`.
//!
//! Clearing keeps capacity, so a training loop allocates nothing per step once warm.

/// Sentinel for "no row" / "no action" in padded entries.
pub const NONE: u32 = u32::MAX;

/// Trajectories from one sampling call.
#[derive(Debug, Clone, Default)]
pub struct TrajectoryBatch {
    /// Number of trajectories.
    pub batch_size: usize,
    /// Step capacity per trajectory (`env.max_actions()`).
    pub cap: usize,
    /// Width of a state.
    pub state_dim: usize,
    /// Width of a feature row.
    pub feature_dim: usize,
    /// Number of forward actions.
    pub n_actions: usize,
    /// Number of backward actions.
    pub n_backward: usize,
    /// The environment's exit action, if any.
    pub exit_action: Option<usize>,

    /// Row states, `[rows, state_dim]`.
    pub states: Vec<i32>,
    /// Row features, `[rows, feature_dim]`.
    pub features: Vec<f32>,
    /// Row forward masks (1 = allowed), `[rows, n_actions]`.
    pub forward_masks: Vec<u8>,
    /// Row backward masks, `[rows, n_backward]`.
    pub backward_masks: Vec<u8>,
    /// Trajectory of each row.
    pub row_trajectory: Vec<u32>,

    /// Row of node `t` of trajectory `b` at `[b * (cap + 1) + t]`; [`NONE`] past the end.
    pub node_rows: Vec<u32>,
    /// Forward action of step `t` at `[b * cap + t]`; [`NONE`] past the end.
    pub actions: Vec<u32>,
    /// Backward action undoing step `t` (taken at node `t + 1`); [`NONE`] for the exit step.
    pub backward_actions: Vec<u32>,
    /// Behaviour log P_F of step `t` as sampled (with ε and temperature); 0 where not computed.
    pub log_pf: Vec<f32>,
    /// Behaviour log P_B of step `t` (backward sampling); 0 where not computed.
    pub log_pb: Vec<f32>,
    /// Number of actions of each trajectory (the exit included).
    pub lengths: Vec<u32>,
    /// Whether each trajectory has terminated.
    pub done: Vec<bool>,
    /// `log R(x)` of each trajectory's terminal object.
    pub log_reward: Vec<f64>,
    /// Terminal object of each trajectory, `[batch_size, state_dim]`.
    pub terminal_states: Vec<i32>,
}

impl TrajectoryBatch {
    /// Reset for `batch_size` trajectories of `env`, keeping allocations.
    pub fn reset<E: crate::Env + ?Sized>(&mut self, env: &E, batch_size: usize) {
        self.batch_size = batch_size;
        self.cap = env.max_actions();
        self.state_dim = env.state_dim();
        self.feature_dim = env.feature_dim();
        self.n_actions = env.n_actions();
        self.n_backward = env.n_backward_actions();
        self.exit_action = env.exit_action();
        self.states.clear();
        self.features.clear();
        self.forward_masks.clear();
        self.backward_masks.clear();
        self.row_trajectory.clear();
        let steps = batch_size * self.cap;
        let nodes = batch_size * (self.cap + 1);
        refill(&mut self.node_rows, nodes, NONE);
        refill(&mut self.actions, steps, NONE);
        refill(&mut self.backward_actions, steps, NONE);
        refill(&mut self.log_pf, steps, 0.0);
        refill(&mut self.log_pb, steps, 0.0);
        refill(&mut self.lengths, batch_size, 0);
        refill(&mut self.done, batch_size, false);
        refill(&mut self.log_reward, batch_size, 0.0);
        refill(&mut self.terminal_states, batch_size * self.state_dim, 0);
    }

    /// Number of rows (visited real states).
    pub fn num_rows(&self) -> usize {
        self.row_trajectory.len()
    }

    /// Number of trajectories' steps, summed.
    pub fn num_steps(&self) -> usize {
        self.lengths.iter().map(|&l| l as usize).sum()
    }

    /// Longest trajectory, in actions.
    pub fn max_length(&self) -> usize {
        self.lengths.iter().copied().max().unwrap_or(0) as usize
    }

    /// Row of node `t` of trajectory `b`.
    #[inline]
    pub fn node_row(&self, b: usize, t: usize) -> u32 {
        self.node_rows[b * (self.cap + 1) + t]
    }

    /// Forward action of step `t` of trajectory `b`.
    #[inline]
    pub fn action(&self, b: usize, t: usize) -> u32 {
        self.actions[b * self.cap + t]
    }

    /// Backward action undoing step `t` of trajectory `b`.
    #[inline]
    pub fn backward_action(&self, b: usize, t: usize) -> u32 {
        self.backward_actions[b * self.cap + t]
    }

    /// Number of real states of trajectory `b` (rows it owns).
    pub fn num_nodes(&self, b: usize) -> usize {
        let n = self.lengths[b] as usize;
        if self.exit_action.is_some() { n } else { n + 1 }
    }

    /// Terminal object of trajectory `b`.
    pub fn terminal_state(&self, b: usize) -> &[i32] {
        &self.terminal_states[b * self.state_dim..(b + 1) * self.state_dim]
    }

    /// Append a row for trajectory `b`'s node `t` with `state`, computing its features and masks.
    /// Returns the row index.
    pub fn push_row<E: crate::Env + ?Sized>(&mut self, env: &E, b: usize, t: usize, state: &[i32]) -> u32 {
        let row = self.row_trajectory.len() as u32;
        self.states.extend_from_slice(state);
        let f0 = self.features.len();
        self.features.resize(f0 + self.feature_dim, 0.0);
        env.featurize(state, &mut self.features[f0..]);
        push_mask(&mut self.forward_masks, self.n_actions, |m| env.forward_mask(state, m));
        push_mask(&mut self.backward_masks, self.n_backward, |m| {
            env.backward_mask(state, m)
        });
        self.row_trajectory.push(b as u32);
        self.node_rows[b * (self.cap + 1) + t] = row;
        row
    }

    /// Record step `t` of trajectory `b`.
    pub fn set_step(&mut self, b: usize, t: usize, action: u32, backward_action: u32, log_pf: f32, log_pb: f32) {
        let i = b * self.cap + t;
        self.actions[i] = action;
        self.backward_actions[i] = backward_action;
        self.log_pf[i] = log_pf;
        self.log_pb[i] = log_pb;
    }

    /// Mark trajectory `b` finished after `length` actions at terminal object `x`.
    pub fn finish<E: crate::Env + ?Sized>(&mut self, env: &E, b: usize, length: usize, x: &[i32]) {
        self.lengths[b] = length as u32;
        self.done[b] = true;
        self.log_reward[b] = env.log_reward(x);
        self.terminal_states[b * self.state_dim..(b + 1) * self.state_dim].copy_from_slice(x);
    }
}

fn refill<T: Copy>(v: &mut Vec<T>, n: usize, value: T) {
    v.clear();
    v.resize(n, value);
}

/// Append one mask row, using a small stack buffer for the `bool` → `u8` conversion.
fn push_mask(out: &mut Vec<u8>, width: usize, fill: impl FnOnce(&mut [bool])) {
    const STACK: usize = 64;
    if width <= STACK {
        let mut buf = [false; STACK];
        fill(&mut buf[..width]);
        out.extend(buf[..width].iter().map(|&b| u8::from(b)));
    } else {
        let mut buf = vec![false; width];
        fill(&mut buf);
        out.extend(buf.iter().map(|&b| u8::from(b)));
    }
}
