//! Modified detailed balance (Deleu et al. 2022, "Bayesian structure learning with generative
//! flow networks"; papers.md §A), for environments where every state is a terminal object
//! reached by an exit action (hypergrid, DAG structures).
//!
//! With `F(s) = R(s) / P_F(exit | s)` detailed balance needs no flow network. Per non-exit
//! transition `s → s'`:
//! `(log R(s) + log P_F(s'|s) + log P_F(exit|s') − log R(s') − log P_B(s|s') − log P_F(exit|s))²`,
//! averaged over all non-exit transitions of the batch. `R` of a partial state comes from
//! [`gfn_core::Env::intermediate_log_reward`], which such an environment defines for every state.

use candle_core::Tensor;
use gfn_core::batch::NONE;
use gfn_core::{Env, GfnError, Result, TrajectoryBatch};

use crate::terms::{BalanceTerms, constant};

/// `[B, T+1]` `log R(s_k)` of every node with a row (0 elsewhere).
pub fn node_log_rewards<E: Env + ?Sized>(env: &E, batch: &TrajectoryBatch) -> Result<Vec<f64>> {
    let (b, t) = (batch.batch_size, batch.max_length());
    let d = batch.state_dim;
    let mut out = vec![0.0; b * (t + 1)];
    for i in 0..b {
        for k in 0..=batch.lengths[i] as usize {
            let row = batch.node_row(i, k);
            if row != NONE {
                let s = &batch.states[row as usize * d..(row as usize + 1) * d];
                out[i * (t + 1) + k] = env.intermediate_log_reward(s).ok_or_else(|| {
                    GfnError::invalid(
                        "loss",
                        "mdb",
                        format!(
                            "needs every state's reward (Env::intermediate_log_reward); {} has none",
                            env.name()
                        ),
                    )
                })?;
            }
        }
    }
    Ok(out)
}

/// Modified DB loss from the terms (which must carry `log_pf_exit`) and the node log rewards.
pub fn modified_detailed_balance(terms: &BalanceTerms, node_log_rewards: Vec<f64>) -> Result<Tensor> {
    terms.validate()?;
    let exit = terms.log_pf_exit.as_ref().ok_or_else(|| {
        GfnError::invalid(
            "loss",
            "mdb",
            "needs an environment with an exit action from every state",
        )
    })?;
    let (b, t) = (terms.batch_size(), terms.max_len());
    if t < 2 {
        return Err(GfnError::Other("mdb: no trajectory has a non-exit transition".into()));
    }
    let like = &terms.log_pf;
    let r = constant(node_log_rewards, &[b, t + 1], like.dtype(), like.device())?;
    // Steps k = 0 … n−2 (the last step is the exit).
    let steps = t - 1;
    let mut mask = vec![0.0; b * steps];
    let mut count = 0usize;
    for (i, &n) in terms.lengths.iter().enumerate() {
        for k in 0..n.saturating_sub(1) {
            mask[i * steps + k] = 1.0;
            count += 1;
        }
    }
    if count == 0 {
        return Err(GfnError::Other("mdb: no trajectory has a non-exit transition".into()));
    }
    let mask = constant(mask, &[b, steps], like.dtype(), like.device())?;
    let cur = |x: &Tensor| x.narrow(1, 0, steps);
    let next = |x: &Tensor| x.narrow(1, 1, steps);
    let delta = ((((cur(&r)? + terms.log_pf.narrow(1, 0, steps)?)? + next(exit)?)? - next(&r)?)?
        - terms.log_pb.narrow(1, 0, steps)?)?;
    let delta = ((delta - cur(exit)?)? * mask)?;
    Ok((delta.sqr()?.sum_all()? / count as f64)?)
}
