//! Flow matching (Bengio et al. 2021, "Flow network based generative models for non-iterative
//! diverse candidate generation"; papers.md §A).
//!
//! The network's forward logits are log edge flows `log F(s → s')`. For every visited state `s`
//! other than `s_0`:
//! `(log Σ_{s' ∈ Par(s)} F(s' → s) − log(R(s)·1[s terminal, no exit action] + Σ_{s'' ∈ Ch(s)} F(s → s'')))²`,
//! both sides by log-sum-exp; with an exit action the exit edge is one of the children and a
//! reward-matching term `(log F(x → s_f) − log R(x))²` ties it to the reward (torchgfn's FM).
//! Loss: the mean of the first over visited states plus the mean of the second over trajectories.
//! The policy is `P_F(s'|s) ∝ F(s → s')` over allowed actions.

use candle_core::{D, Tensor};
use gfn_core::batch::TrajectoryBatch;
use gfn_core::estimator::{MASK_FILL, RowForward};
use gfn_core::{Env, GfnError, Result};

/// Edge flows around the visited states, padded with [`MASK_FILL`] (contributes `exp = 0`).
#[derive(Debug, Clone)]
pub struct FlowMatchingTerms {
    /// `[S, P]` log flows of the edges into each constrained state.
    pub log_inflow_edges: Tensor,
    /// `[S, K]` log flows out of each state (its children, the exit edge, or `log R` for a terminal
    /// state of an environment without exit action).
    pub log_outflow_edges: Tensor,
    /// `[X]` log flow of each trajectory's exit edge (environments with an exit action).
    pub exit_log_flow: Option<Tensor>,
    /// `[X]` the matching `log R(x)`.
    pub exit_log_reward: Option<Tensor>,
}

/// Flow matching loss.
pub fn flow_matching(terms: &FlowMatchingTerms) -> Result<Tensor> {
    let inflow = terms.log_inflow_edges.log_sum_exp(D::Minus1)?;
    let outflow = terms.log_outflow_edges.log_sum_exp(D::Minus1)?;
    let mut loss = (inflow - outflow)?.sqr()?.mean_all()?;
    if let (Some(f), Some(r)) = (&terms.exit_log_flow, &terms.exit_log_reward) {
        loss = (loss + (f - r)?.sqr()?.mean_all()?)?;
    }
    Ok(loss)
}

/// Which rows flow matching evaluates: the batch's rows followed by the parents of every
/// constrained state, and where each edge flow sits in the `[rows, n_actions]` logits.
#[derive(Debug, Clone, Default)]
pub struct FlowMatchingLayout {
    /// States of all rows (batch rows, then parents), `[rows, state_dim]`.
    pub states: Vec<i32>,
    /// Features of the parent rows only, `[parent_rows, feature_dim]`.
    pub parent_features: Vec<f32>,
    /// Number of parent rows.
    pub parent_rows: usize,
    in_idx: Vec<u32>,
    in_mask: Vec<u8>,
    out_rows: Vec<u32>,
    out_mask: Vec<u8>,
    out_extra: Vec<f64>,
    exit_idx: Vec<u32>,
    exit_log_reward: Vec<f64>,
    n_parents: usize,
    n_actions: usize,
}

impl FlowMatchingLayout {
    /// Lay out the rows of `batch` and the parents of each of its states other than `s_0`.
    pub fn new<E: Env + ?Sized>(env: &E, batch: &TrajectoryBatch) -> Result<Self> {
        let (sd, na, nb, nf) = (batch.state_dim, batch.n_actions, batch.n_backward, batch.feature_dim);
        let mut l = Self {
            states: batch.states.clone(),
            n_parents: nb,
            n_actions: na,
            ..Self::default()
        };
        let mut parent = vec![0; sd];
        // Every state but s_0 (node 0) is constrained. Its predecessor in the trajectory is one of
        // its parents and already a row: reuse it; only the other parents become new rows.
        for b in 0..batch.batch_size {
            for t in 1..batch.num_nodes(b) {
                let r = batch.node_row(b, t) as usize;
                let (prev_row, prev_action) = (batch.node_row(b, t - 1) as usize, batch.action(b, t - 1) as usize);
                let prev_back = batch.backward_action(b, t - 1) as usize;
                let bmask = &batch.backward_masks[r * nb..(r + 1) * nb];
                let state = &batch.states[r * sd..(r + 1) * sd];
                for (k, &m) in bmask.iter().enumerate() {
                    if m == 0 {
                        l.in_idx.push(0);
                        l.in_mask.push(0);
                        continue;
                    }
                    let (p_row, a) = if k == prev_back {
                        (prev_row, prev_action)
                    } else {
                        parent.copy_from_slice(state);
                        let a = env.backward_step(&mut parent, k);
                        let p_row = l.states.len() / sd;
                        l.states.extend_from_slice(&parent);
                        let f0 = l.parent_features.len();
                        l.parent_features.resize(f0 + nf, 0.0);
                        env.featurize(&parent, &mut l.parent_features[f0..]);
                        (p_row, a)
                    };
                    l.in_idx.push((p_row * na + a) as u32);
                    l.in_mask.push(1);
                }
                l.out_rows.push(r as u32);
                l.out_mask.extend_from_slice(&batch.forward_masks[r * na..(r + 1) * na]);
                let terminal = batch.exit_action.is_none() && env.is_terminal(state);
                l.out_extra.push(if terminal {
                    env.log_reward(state)
                } else {
                    f64::from(MASK_FILL)
                });
            }
        }
        if l.out_rows.is_empty() {
            return Err(GfnError::Other(
                "flow matching: the batch visited no state besides s_0".into(),
            ));
        }
        if let Some(e) = batch.exit_action {
            for b in 0..batch.batch_size {
                let x_row = batch.node_row(b, batch.lengths[b] as usize - 1);
                l.exit_idx.push(x_row * na as u32 + e as u32);
                l.exit_log_reward.push(batch.log_reward[b]);
            }
        }
        l.parent_rows = l.parent_features.len() / nf;
        Ok(l)
    }

    /// Gather the terms from the forward logits (log edge flows) of all rows, `[rows, n_actions]`.
    pub fn gather(&self, logits: &Tensor) -> Result<FlowMatchingTerms> {
        let (s, nb, na) = (self.out_rows.len(), self.n_parents, self.n_actions);
        let dev = logits.device().clone();
        let dt = logits.dtype();
        let fill =
            |shape: (usize, usize)| -> Result<Tensor> { Ok(Tensor::full(MASK_FILL, shape, &dev)?.to_dtype(dt)?) };
        let logits = logits.contiguous()?; // a column slice of a shared trunk's output is strided
        let flat = logits.flatten_all()?;
        let in_vals = flat
            .index_select(&Tensor::from_slice(&self.in_idx, s * nb, &dev)?, 0)?
            .reshape((s, nb))?;
        let in_mask = Tensor::from_slice(&self.in_mask, (s, nb), &dev)?;
        let log_inflow_edges = in_mask.where_cond(&in_vals, &fill((s, nb))?)?;
        let out_vals = logits.index_select(&Tensor::from_slice(&self.out_rows, s, &dev)?, 0)?;
        let out_mask = Tensor::from_slice(&self.out_mask, (s, na), &dev)?;
        let children = out_mask.where_cond(&out_vals, &fill((s, na))?)?;
        let extra = Tensor::from_slice(&self.out_extra, (s, 1), &dev)?.to_dtype(dt)?;
        let log_outflow_edges = Tensor::cat(&[&children, &extra], 1)?;
        let (exit_log_flow, exit_log_reward) = if self.exit_idx.is_empty() {
            (None, None)
        } else {
            let x = self.exit_idx.len();
            let f = flat.index_select(&Tensor::from_slice(&self.exit_idx, x, &dev)?, 0)?;
            (
                Some(f),
                Some(Tensor::from_slice(&self.exit_log_reward, x, &dev)?.to_dtype(dt)?),
            )
        };
        Ok(FlowMatchingTerms {
            log_inflow_edges,
            log_outflow_edges,
            exit_log_flow,
            exit_log_reward,
        })
    }
}

impl FlowMatchingTerms {
    /// Evaluate the estimator on every visited state and all of its parents (one batched forward
    /// pass, or the rollout's recorded outputs plus one pass over the parents), and gather the
    /// edge flows.
    pub fn from_batch<E: Env + ?Sized>(env: &E, batch: &TrajectoryBatch, forward: &mut dyn RowForward) -> Result<Self> {
        let layout = FlowMatchingLayout::new(env, batch)?;
        let parents = &layout.states[batch.num_rows() * env.state_dim()..];
        let out = forward.forward_rows_with_states(batch, &layout.parent_features, parents, layout.parent_rows)?;
        layout.gather(&out.pf_logits)
    }
}
