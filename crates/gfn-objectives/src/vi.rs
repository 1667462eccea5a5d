//! Reverse-KL variational inference (Malkin et al. 2023, "GFlowNets and variational inference";
//! seed `001`, hierarchical variational inference): minimise
//!
//! `KL(P_F(τ) ‖ P_B(τ|x) R(x)/Z) = E_{τ∼P_F}[w(τ)] + log Z`, `w(τ) = log P_F(τ) − log P_B(τ|x) − log R(x)`,
//!
//! by REINFORCE with a baseline for P_F and the pathwise gradient for P_B:
//!
//! `∇_F = E[(w(τ) − b) ∇ log P_F(τ)]`, `∇_B = −E[∇ log P_B(τ|x)]`,
//!
//! with `b` the leave-one-out mean of `w` over the batch (unbiased; `−log Z` for a batch of one).
//! On-policy, TB's expected gradient w.r.t. P_F is exactly twice this one (TB is REINFORCE with
//! the baseline `−log Z`): the two differ in variance only. `log Z` is moved as in TB,
//! `∂/∂log Z = mean_τ (w(τ) + log Z)`, so the run still estimates it.

use candle_core::{DType, Tensor};
use gfn_core::{GfnError, Result};

use crate::terms::BalanceTerms;

/// The surrogate whose gradient is the update above, and `mean_τ (w(τ) + log Z)²` (the TB loss of
/// the batch, for display).
pub fn reverse_kl(terms: &BalanceTerms, log_z: &Tensor) -> Result<(Tensor, f64)> {
    terms.validate()?;
    let n = terms.batch_size();
    let log_pf = terms.log_pf.sum(1)?;
    let log_pb = terms.log_pb.sum(1)?;
    let w_t = ((&log_pf - &log_pb)? - &terms.log_reward)?;
    let w: Vec<f64> = w_t.detach().to_dtype(DType::F64)?.to_vec1()?;
    let log_z_v: f64 = log_z.detach().to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?[0];
    if w.iter().any(|x| !x.is_finite()) {
        return Err(GfnError::Other(
            "reverse KL: a trajectory has a non-finite log-ratio".into(),
        ));
    }
    let total: f64 = w.iter().sum();
    let advantage: Vec<f64> = w
        .iter()
        .map(|&wi| {
            if n > 1 {
                wi - (total - wi) / (n - 1) as f64
            } else {
                wi + log_z_v
            }
        })
        .collect();
    let tb = w.iter().map(|&wi| (wi + log_z_v).powi(2)).sum::<f64>() / n as f64;
    let mean_residual = total / n as f64 + log_z_v;
    let (dev, dt) = (log_pf.device().clone(), log_pf.dtype());
    let adv = Tensor::from_vec(advantage, n, &dev)?.to_dtype(dt)?;
    let forward = (log_pf * adv)?.mean_all()?;
    let backward = log_pb.mean_all()?.neg()?;
    let z = (log_z.flatten_all()?.sum_all()? * mean_residual)?;
    Ok((((forward + backward)? + z)?, tb))
}
