//! Trajectory balance (Malkin et al. 2022, "Trajectory balance: improved credit assignment in
//! GFlowNets"; papers.md §A).
//!
//! `L_TB(τ) = (log Z + Σ_t log P_F(s_{t+1}|s_t) − log R(x) − Σ_t log P_B(s_t|s_{t+1}))²`,
//! averaged over the batch. `log Z` is a learned scalar.

use candle_core::Tensor;
use gfn_core::Result;

use crate::terms::BalanceTerms;

/// Per-trajectory residuals `δ(τ) = log Z + Σ log P_F − log R − Σ log P_B`, `[B]`.
pub fn trajectory_balance_residuals(terms: &BalanceTerms, log_z: &Tensor) -> Result<Tensor> {
    terms.validate()?;
    let sum = (terms.log_pf.sum(1)? - terms.log_pb.sum(1)?)?;
    Ok((sum.broadcast_add(&log_z.flatten_all()?)? - &terms.log_reward)?)
}

/// Trajectory balance loss, mean over the batch.
pub fn trajectory_balance(terms: &BalanceTerms, log_z: &Tensor) -> Result<Tensor> {
    Ok(trajectory_balance_residuals(terms, log_z)?.sqr()?.mean_all()?)
}
