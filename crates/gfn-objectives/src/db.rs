//! Detailed balance (Bengio et al. 2023, "GFlowNet foundations"; papers.md §A).
//!
//! Per transition `s → s'`: `(log F(s) + log P_F(s'|s) − log F(s') − log P_B(s|s'))²`, with the
//! terminal boundary `F(x) = R(x)`. With an exit action the last transition is `x → s_f` and the
//! residual becomes `log F(x) + log P_F(exit|x) − log R(x)`. The loss is the mean over all
//! transitions in the batch (torchgfn's convention).

use candle_core::{D, Tensor};
use gfn_core::Result;

use crate::terms::BalanceTerms;

/// Per-transition residuals `[B, T]` (0 past each trajectory's end).
pub fn detailed_balance_residuals(terms: &BalanceTerms) -> Result<Tensor> {
    terms.validate()?;
    let nodes = terms.node_log_flows()?;
    let t = terms.max_len();
    let from = nodes.narrow(D::Minus1, 0, t)?;
    let to = nodes.narrow(D::Minus1, 1, t)?;
    let delta = (((from + &terms.log_pf)? - to)? - &terms.log_pb)?;
    Ok((delta * terms.step_mask()?)?)
}

/// Detailed balance loss, mean over transitions.
pub fn detailed_balance(terms: &BalanceTerms) -> Result<Tensor> {
    let n: usize = terms.lengths.iter().sum();
    Ok((detailed_balance_residuals(terms)?.sqr()?.sum_all()? / n as f64)?)
}
