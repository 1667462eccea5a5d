//! A batch of trajectories, padded, in buffers that are reused from one iteration to the next.
//!
//! Two views of the same trajectories:
//! * **rows**: one row per real visited state, in the order the sampler evaluated them (forward
//!   rollouts: all trajectories' step 0, then step 1, …; backward walks: the terminal objects,
//!   then one step back, …, then the initial states; see `Sampler::sample_backward_with`).
//!   Features, forward masks and backward masks of the rows are contiguous buffers, so one
//!   batched forward pass evaluates every visited state. Nothing else depends on the row order:
//!   steps find their states through `node_rows`.
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

    /// Mark trajectory `b` finished after `length` actions at terminal object `x`, and score it.
    pub fn finish<E: crate::Env + ?Sized>(&mut self, env: &E, b: usize, length: usize, x: &[i32]) {
        self.finish_unscored(b, length, x);
        self.log_reward[b] = env.log_reward(x);
    }

    /// [`TrajectoryBatch::finish`] without the reward: [`TrajectoryBatch::score`] scores every
    /// trajectory at once after the last one finishes.
    pub fn finish_unscored(&mut self, b: usize, length: usize, x: &[i32]) {
        self.lengths[b] = length as u32;
        self.done[b] = true;
        self.terminal_states[b * self.state_dim..(b + 1) * self.state_dim].copy_from_slice(x);
    }

    /// `log R` of every terminal object, by one [`Env::log_rewards`](crate::Env::log_rewards) call.
    pub fn score<E: crate::Env + ?Sized>(&mut self, env: &E) -> crate::Result<()> {
        env.log_rewards(&self.terminal_states, &mut self.log_reward)
    }
}

impl TrajectoryBatch {
    /// Append the trajectories of `other` (same environment) after this batch's: its rows
    /// follow this batch's rows, its trajectories get the indices `batch_size..`. One loss over
    /// the result reads both batches from one forward pass (or one tape).
    pub fn append(&mut self, other: &TrajectoryBatch) -> crate::Result<()> {
        let shape = |b: &TrajectoryBatch| {
            (
                b.cap,
                b.state_dim,
                b.feature_dim,
                b.n_actions,
                b.n_backward,
                b.exit_action,
            )
        };
        if shape(self) != shape(other) {
            return Err(crate::GfnError::Other(format!(
                "append: batches of different environments (cap, state, feature, actions, backward, exit): \
                 {:?} and {:?}",
                shape(self),
                shape(other)
            )));
        }
        let (rows, trajectories) = (self.num_rows() as u32, self.batch_size as u32);
        self.batch_size += other.batch_size;
        self.states.extend_from_slice(&other.states);
        self.features.extend_from_slice(&other.features);
        self.forward_masks.extend_from_slice(&other.forward_masks);
        self.backward_masks.extend_from_slice(&other.backward_masks);
        self.row_trajectory
            .extend(other.row_trajectory.iter().map(|&b| b + trajectories));
        self.node_rows
            .extend(other.node_rows.iter().map(|&r| if r == NONE { NONE } else { r + rows }));
        self.actions.extend_from_slice(&other.actions);
        self.backward_actions.extend_from_slice(&other.backward_actions);
        self.log_pf.extend_from_slice(&other.log_pf);
        self.log_pb.extend_from_slice(&other.log_pb);
        self.lengths.extend_from_slice(&other.lengths);
        self.done.extend_from_slice(&other.done);
        self.log_reward.extend_from_slice(&other.log_reward);
        self.terminal_states.extend_from_slice(&other.terminal_states);
        Ok(())
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

#[cfg(test)]
mod tests {
    use crate::dag::DagEnv;
    use crate::rng_from_seed;

    /// Appending keeps every trajectory of both batches intact: steps, nodes (rows shifted past
    /// the first batch's), rewards and terminal objects.
    #[test]
    fn append_concatenates_trajectories() {
        let mut rng = rng_from_seed(3);
        for exit in [false, true] {
            let env = DagEnv::random(8, 0.5, exit, &mut rng).unwrap();
            let paths = |rng: &mut crate::GfnRng, k: usize| -> Vec<Vec<usize>> {
                (0..k).map(|_| env.random_path(rng, false)).collect()
            };
            let (pa, pb) = (paths(&mut rng, 3), paths(&mut rng, 4));
            let (a, b) = (env.batch_of_paths(&pa), env.batch_of_paths(&pb));
            let mut all = a.clone();
            all.append(&b).unwrap();
            let both = env.batch_of_paths(&[pa, pb].concat());
            assert_eq!(all.batch_size, 7);
            assert_eq!(all.num_rows(), a.num_rows() + b.num_rows());
            assert_eq!(all.lengths, both.lengths);
            assert_eq!(all.actions, both.actions);
            assert_eq!(all.backward_actions, both.backward_actions);
            assert_eq!(all.terminal_states, both.terminal_states);
            assert_eq!(all.log_reward, both.log_reward);
            for t in 0..all.batch_size {
                assert_eq!(all.num_nodes(t), both.num_nodes(t));
                for k in 0..all.num_nodes(t) {
                    let (r, q) = (all.node_row(t, k) as usize, both.node_row(t, k) as usize);
                    assert_eq!(all.row_trajectory[r], t as u32);
                    let f = all.feature_dim;
                    assert_eq!(all.features[r * f..(r + 1) * f], both.features[q * f..(q + 1) * f]);
                    let (na, nb) = (all.n_actions, all.n_backward);
                    assert_eq!(
                        all.forward_masks[r * na..(r + 1) * na],
                        both.forward_masks[q * na..(q + 1) * na]
                    );
                    assert_eq!(
                        all.backward_masks[r * nb..(r + 1) * nb],
                        both.backward_masks[q * nb..(q + 1) * nb]
                    );
                }
            }
            // Different environments do not mix.
            let other = DagEnv::random(5, 0.5, exit, &mut rng).unwrap();
            let c = other.batch_of_paths(&[other.random_path(&mut rng, false)]);
            assert!(all.append(&c).is_err());
        }
    }
}
