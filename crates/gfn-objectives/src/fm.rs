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
use gfn_core::estimator::{Estimator, MASK_FILL};
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

impl FlowMatchingTerms {
    /// Evaluate the estimator on every visited state and all of its parents in one batched
    /// forward pass, and gather the edge flows.
    pub fn from_batch<E: Env + ?Sized>(env: &E, batch: &TrajectoryBatch, estimator: &Estimator) -> Result<Self> {
        let (sd, na, nb, nf) = (batch.state_dim, batch.n_actions, batch.n_backward, batch.feature_dim);
        let rows = batch.num_rows();
        let exit = batch.exit_action;
        let k = na + 1; // children + one column for log R of exit-less terminal states
        let mut features = batch.features.clone();
        let mut in_idx = Vec::new();
        let mut in_mask = Vec::new();
        let mut out_rows = Vec::new();
        let mut out_extra = Vec::new();
        let mut parent = vec![0; sd];
        let mut bmask = vec![false; nb];
        for r in 0..rows {
            let state = &batch.states[r * sd..(r + 1) * sd];
            bmask.iter_mut().zip(&batch.backward_masks[r * nb..(r + 1) * nb]).for_each(|(d, &s)| *d = s != 0);
            if !bmask.iter().any(|&m| m) {
                continue; // s_0: no inflow constraint
            }
            for b in 0..nb {
                if bmask[b] {
                    parent.copy_from_slice(state);
                    let a = env.backward_step(&mut parent, b);
                    let p_row = features.len() / nf;
                    features.resize(features.len() + nf, 0.0);
                    env.featurize(&parent, &mut features[p_row * nf..]);
                    in_idx.push((p_row * na + a) as u32);
                    in_mask.push(1u8);
                } else {
                    in_idx.push(0);
                    in_mask.push(0);
                }
            }
            out_rows.push(r as u32);
            out_extra.push(if exit.is_none() && env.is_terminal(state) { env.log_reward(state) as f32 } else { MASK_FILL });
        }
        let s = out_rows.len();
        if s == 0 {
            return Err(GfnError::Other("flow matching: the batch visited no state besides s_0".into()));
        }
        let total_rows = features.len() / nf;
        let x = estimator.features_tensor(&features, total_rows)?;
        let logits = estimator.forward(&x)?.pf_logits; // [total_rows, na]
        let dev = logits.device().clone();
        let dt = logits.dtype();
        let flat = logits.flatten_all()?;
        let fill = |shape: (usize, usize)| -> Result<Tensor> { Ok(Tensor::full(MASK_FILL, shape, &dev)?.to_dtype(dt)?) };

        let in_vals = flat.index_select(&Tensor::from_vec(in_idx, s * nb, &dev)?, 0)?.reshape((s, nb))?;
        let in_mask = Tensor::from_vec(in_mask, (s, nb), &dev)?;
        let log_inflow_edges = in_mask.where_cond(&in_vals, &fill((s, nb))?)?;

        let out_rows_t = Tensor::from_vec(out_rows.clone(), s, &dev)?;
        let out_vals = logits.index_select(&out_rows_t, 0)?;
        let mut out_mask = Vec::with_capacity(s * na);
        for &r in &out_rows {
            out_mask.extend_from_slice(&batch.forward_masks[r as usize * na..(r as usize + 1) * na]);
        }
        let out_mask = Tensor::from_vec(out_mask, (s, na), &dev)?;
        let children = out_mask.where_cond(&out_vals, &fill((s, na))?)?;
        let extra = Tensor::from_vec(out_extra, (s, 1), &dev)?.to_dtype(dt)?;
        let log_outflow_edges = Tensor::cat(&[&children, &extra], 1)?;
        debug_assert_eq!(log_outflow_edges.dim(1)?, k);

        let (exit_log_flow, exit_log_reward) = match exit {
            Some(e) => {
                let bsz = batch.batch_size;
                let idx: Vec<u32> = (0..bsz)
                    .map(|b| batch.node_row(b, batch.lengths[b] as usize - 1) * na as u32 + e as u32)
                    .collect();
                let f = flat.index_select(&Tensor::from_vec(idx, bsz, &dev)?, 0)?;
                let r: Vec<f32> = batch.log_reward.iter().map(|&r| r as f32).collect();
                (Some(f), Some(Tensor::from_vec(r, bsz, &dev)?.to_dtype(dt)?))
            }
            None => (None, None),
        };
        Ok(Self { log_inflow_edges, log_outflow_edges, exit_log_flow, exit_log_reward })
    }
}
