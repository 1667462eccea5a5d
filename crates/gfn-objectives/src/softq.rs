//! Soft Q-learning (maximum-entropy RL; Haarnoja et al. 2017), the baseline of seed `001`
//! ("GFlowNets as RL"): the P_F logits are read as soft Q-values, `π(a|s) ∝ exp Q(s, a)`, trained
//! on the soft Bellman residual of every step of the batch,
//!
//! `L = mean_{(s,a,s')} (Q(s, a) − sg[V(s')])²`, `V(s) = logsumexp_a Q(s, a)` over allowed
//! actions, with the reward only at the end: `V := log R(x)` after the exit from `x` (or at a
//! terminal `x` without exit action). `sg` stops the gradient (semi-gradient, as Q-learning).
//!
//! Its fixed point is `V*(s) = log Σ_{paths s ⇝ x} R(x)`, so the policy samples `x` with
//! probability proportional to `R(x)` times the number of paths from `s_0` to `x`: exactly
//! `R(x)/Z` when the DAG is a tree (one path per object), and biased toward objects with many
//! orderings otherwise — the reason GFlowNets exist. The tests check both on exact fixed points.

use candle_core::Tensor;
use gfn_core::batch::{NONE, TrajectoryBatch};
use gfn_core::estimator::{EstimatorOutput, masked_logsumexp};
use gfn_core::{GfnError, Result};

/// The soft Bellman loss of `batch` from the estimator's outputs on its rows.
pub fn soft_q_loss(batch: &TrajectoryBatch, out: &EstimatorOutput) -> Result<Tensor> {
    let q = &out.pf_logits;
    let (rows, na) = q.dims2()?;
    if rows != batch.num_rows() || na != batch.n_actions {
        return Err(GfnError::Other(format!(
            "soft Q: logits [{rows}, {na}] for {} rows of {} actions",
            batch.num_rows(),
            batch.n_actions
        )));
    }
    let dev = q.device().clone();
    let mask = Tensor::from_slice(&batch.forward_masks, (rows, na), &dev)?;
    let v = masked_logsumexp(q, &mask)?.detach();
    let mut taken = Vec::new();
    let mut next_row = Vec::new();
    let mut is_last = Vec::new();
    let mut log_r = Vec::new();
    for b in 0..batch.batch_size {
        let n = batch.lengths[b] as usize;
        for t in 0..n {
            let row = batch.node_row(b, t);
            taken.push(row * na as u32 + batch.action(b, t));
            let last = t + 1 == n;
            let next = batch.node_row(b, t + 1);
            next_row.push(if last || next == NONE { 0 } else { next });
            is_last.push(if last { 1f32 } else { 0.0 });
            log_r.push(if last { batch.log_reward[b] as f32 } else { 0.0 });
        }
    }
    let steps = taken.len();
    if steps == 0 {
        return Err(GfnError::Other("soft Q: the batch has no steps".into()));
    }
    let dt = q.dtype();
    let q_taken = q
        .flatten_all()?
        .index_select(&Tensor::from_vec(taken, steps, &dev)?, 0)?;
    let v_next = v.index_select(&Tensor::from_vec(next_row, steps, &dev)?, 0)?;
    let last = Tensor::from_vec(is_last, steps, &dev)?.to_dtype(dt)?;
    let log_r = Tensor::from_vec(log_r, steps, &dev)?.to_dtype(dt)?;
    // target = log R at the last step, V(s') before it.
    let target = ((&v_next * (1.0 - &last)?)? + (log_r * &last)?)?;
    let residual = (q_taken - target)?;
    Ok(residual.sqr()?.mean_all()?)
}
