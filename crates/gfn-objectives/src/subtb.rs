//! Sub-trajectory balance SubTB(λ) (Madan et al. 2023, "Learning GFlowNets from partial episodes
//! for improved convergence and stability"; papers.md §A).
//!
//! For all `0 ≤ i < j ≤ n`:
//! `δ_ij = log F(s_i) + Σ_{k=i}^{j−1} log P_F(s_{k+1}|s_k) − log F(s_j) − Σ_{k=i}^{j−1} log P_B(s_k|s_{k+1})`,
//! with `F(s_n) := R(x)`, and
//! `L(τ) = Σ_{i<j} λ^{j−i} δ_ij² / Σ_{i<j} λ^{j−i}`, averaged over the batch (torchgfn's
//! `geometric_within` weighting).
//!
//! Computed without a loop over pairs: with `A_k = Σ_{t<k} (log P_F − log P_B)_t` and
//! `g_k = log F(s_k) − A_k`, every residual is `δ_ij = g_i − g_j`, so the whole loss is one
//! `[B, T+1, T+1]` broadcast difference weighted by a constant matrix. The weights are
//! normalised per trajectory in f64 before use, so λ far from 1 (λ → 0⁺ gives the per-trajectory
//! mean of the DB residuals; λ → ∞ gives TB with `Z = F(s_0)`) neither underflows nor overflows.

use candle_core::Tensor;
use gfn_core::{GfnError, Result};

use crate::terms::{BalanceTerms, constant};

/// Normalised geometric weights `[B, T+1, T+1]`: `w_ij ∝ λ^{j−i}` for `i < j ≤ n_b`, summing to 1
/// per trajectory.
pub fn subtb_weights(lengths: &[usize], t: usize, lambda: f64) -> Result<Vec<f64>> {
    if !(lambda.is_finite() && lambda > 0.0) {
        return Err(GfnError::invalid("lambda", lambda, "must be finite and > 0"));
    }
    let ln_l = lambda.ln();
    let w = t + 1;
    let mut out = vec![0.0; lengths.len() * w * w];
    for (b, &n) in lengths.iter().enumerate() {
        // log-weights (j − i)·ln λ, normalised by their log-sum-exp.
        let lse = gfn_core::exact::logsumexp((0..n).flat_map(|i| (i + 1..=n).map(move |j| (j - i) as f64 * ln_l)));
        for i in 0..n {
            for j in i + 1..=n {
                out[b * w * w + i * w + j] = ((j - i) as f64 * ln_l - lse).exp();
            }
        }
    }
    Ok(out)
}

/// `g_k = log F(s_k) − Σ_{t<k}(log P_F − log P_B)_t`, `[B, T+1]`.
fn potentials(terms: &BalanceTerms) -> Result<Tensor> {
    let nodes = terms.node_log_flows()?;
    let (b, _) = terms.log_pf.dims2()?;
    let inc = (&terms.log_pf - &terms.log_pb)?;
    let cum = inc.cumsum(1)?;
    let zero = Tensor::zeros((b, 1), inc.dtype(), inc.device())?;
    let a = Tensor::cat(&[&zero, &cum], 1)?;
    Ok((nodes - a)?)
}

/// SubTB(λ) loss.
pub fn subtrajectory_balance(terms: &BalanceTerms, lambda: f64) -> Result<Tensor> {
    terms.validate()?;
    let t = terms.max_len();
    let g = potentials(terms)?;
    let b = terms.batch_size();
    let w = constant(
        subtb_weights(&terms.lengths, t, lambda)?,
        &[b, t + 1, t + 1],
        g.dtype(),
        g.device(),
    )?;
    let diff = g.unsqueeze(2)?.broadcast_sub(&g.unsqueeze(1)?)?;
    Ok(((diff.sqr()? * w)?.sum_all()? / b as f64)?)
}
