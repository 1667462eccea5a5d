//! Policy-gradient GFlowNet training (Niu et al. 2024, "GFlowNet Training by Policy Gradients";
//! papers.md §4.1, from the official `trajectory_RL.py`).
//!
//! Along a forward trajectory `τ = (s_0 → … → s_n)` the per-step cost is
//!
//! `c_t = log P_F(s_{t+1}|s_t) − log P_B(s_t|s_{t+1})`, and on the last step `+ log Z − log R(x)`,
//!
//! so that `Σ_t c_t = log Z + log P_F(τ) − log P_B(τ|x) − log R(x)`, the trajectory-balance
//! residual, and `E_{P_F}[Σ_t c_t] = KL(P_F(τ) ‖ P_B(τ|x) R(x)/Z*) + log Z − log Z*`. The forward
//! policy minimises that expected cost by policy gradient:
//!
//! * a value function `V(s) ≈ E[Σ_{k≥t} c_k | s_t = s]` (the estimator's `log F` head, on its
//!   own trunk when `shared_trunk` is off), `V(s_n) = 0`, fitted by least squares to the
//!   returns-to-go `G_t = Σ_{k≥t} c_k` (λ_V = 1);
//! * GAE(λ) advantages `A_t = Σ_k λ^k δ_{t+k}` with `δ_t = c_t + V(s_{t+1}) − V(s_t)`,
//!   mean-centred over the batch's steps (no scaling);
//! * the surrogate `Σ_t log P_F(s_{t+1}|s_t) · A_t` (advantages constant), summed over steps and
//!   averaged over trajectories: its gradient is the policy gradient of `E[Σ c]` (the cost's own
//!   dependence on P_F has zero expectation, `E[∇ log P_F] = 0`);
//! * `log Z` moved by `∂/∂log Z = mean_τ Σ_t c_t` (TB's log Z gradient), which drives it to
//!   `log Z*`.
//!
//! Backward policies (the variants):
//! * **RL-U** ([`PgVariant::Uniform`]): P_B uniform, not trained.
//! * **RL-B** ([`PgVariant::Backward`]): P_B trained by policy gradient on backward trajectories
//!   from the batch's terminal objects, minimising `E_{P_B(τ|x)}[log P_B(τ|x) − log P_F(τ)]`
//!   (the KL from P_B to the forward policy's conditional, up to a constant): backward step
//!   costs `c^B_t = log P_B(s_t|s_{t+1}) − log P_F(s_{t+1}|s_t)`, returns over the decisions that
//!   follow in the walk (`Σ_{k ≤ t} c^B_k`, steps taken from `x` back to `s_0`), mean-centred, no
//!   value function (the official code's unbiased advantages), surrogate `Σ_t log P_B · A^B_t`.
//! * **RL-T** ([`PgVariant::TrustRegion`]): P_B uniform, and P_F moved by the trust-region step
//!   of [`crate::trpo`] on this surrogate's gradient instead of by Adam.
//! * **RL-G** ([`PgVariant::Guided`]): as RL-B with a guide `P_G` in place of P_F in the costs:
//!   P_F with the exit probability at low-reward states (`log R(s) ≤ floor`; hypergrid: the
//!   base reward R0) capped at [`GUIDE_EXIT_CAP`] and the other actions rescaled to sum to one,
//!   so P_B learns to route trajectories away from where P_F wastes exits.
//!
//! All of it is computed from one batched forward pass over the forward trajectories and, for
//! RL-B and RL-G, the backward ones appended after them ([`BalanceTerms`] of the whole batch).
//! The official code also clips `log R` at −12; we do not, so the target stays `R` itself.

use candle_core::{DType, Tensor};
use gfn_core::batch::{NONE, TrajectoryBatch};
use gfn_core::{Env, GfnError, Result};

use crate::terms::BalanceTerms;

/// The guide's cap on `P_G(exit | s)` at low-reward states (the official hypergrid guide, 1e-5).
pub const GUIDE_EXIT_CAP: f64 = 1e-5;

/// How the backward policy is chosen or trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgVariant {
    /// RL-U: uniform P_B.
    Uniform,
    /// RL-B: P_B trained by policy gradient toward the forward policy's conditional.
    Backward,
    /// RL-G: P_B trained toward a guided forward policy.
    Guided,
    /// RL-T: uniform P_B, P_F updated by a trust-region (TRPO) step ([`crate::trpo`]).
    TrustRegion,
}

impl PgVariant {
    /// Whether P_B is learned (and needs backward trajectories).
    pub fn trains_backward(self) -> bool {
        matches!(self, Self::Backward | Self::Guided)
    }
}

/// Settings of the policy-gradient loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PgConfig {
    /// The variant.
    pub variant: PgVariant,
    /// GAE's λ ∈ [0, 1] (the official 0.99).
    pub gae_lambda: f64,
    /// RL-G: states with `log R(s) ≤ floor` get the capped exit.
    pub guide_floor: f64,
}

/// Figures of one policy-gradient step.
#[derive(Debug, Clone, PartialEq)]
pub struct PgStats {
    /// `mean_τ (Σ_t c_t)²`: the TB loss of the forward batch (0 at the exact solution).
    pub tb_loss: f64,
    /// `mean_τ Σ_t c_t`: KL(P_F ‖ P_B R/Z*) + log Z − log Z*, estimated.
    pub mean_cost: f64,
    /// Mean squared error of the value function against the returns-to-go.
    pub value_loss: f64,
    /// RL-B, RL-G: mean backward cost `Σ_t c^B_t` per backward trajectory.
    pub backward_cost: Option<f64>,
    /// The forward steps' centred GAE advantages `[n_forward, T]` (0 past each end): what the
    /// trust-region step of RL-T needs.
    pub advantages: Vec<f64>,
}

/// Forward costs `c[b, t]` (`[B, T]`, 0 past each end) from per-step `log_pf`, `log_pb`
/// (`[B, T]`, row-major), the trajectories' lengths, `log R` and `log Z`.
pub fn forward_costs(
    log_pf: &[f64],
    log_pb: &[f64],
    t_max: usize,
    lengths: &[usize],
    log_reward: &[f64],
    log_z: f64,
) -> Vec<f64> {
    let mut c = vec![0.0; lengths.len() * t_max];
    for (b, &n) in lengths.iter().enumerate() {
        for t in 0..n {
            let i = b * t_max + t;
            c[i] = log_pf[i] - log_pb[i];
        }
        if n > 0 {
            c[b * t_max + n - 1] += log_z - log_reward[b];
        }
    }
    c
}

/// Returns-to-go `G[b, t] = Σ_{k=t}^{n−1} c[b, k]`.
pub fn returns_to_go(costs: &[f64], t_max: usize, lengths: &[usize]) -> Vec<f64> {
    let mut g = vec![0.0; costs.len()];
    for (b, &n) in lengths.iter().enumerate() {
        let mut acc = 0.0;
        for t in (0..n).rev() {
            acc += costs[b * t_max + t];
            g[b * t_max + t] = acc;
        }
    }
    g
}

/// GAE(λ) advantages from costs and values `V[b, t]` of nodes `t < n` (`V(s_n) = 0`):
/// `δ_t = c_t + V_{t+1} − V_t`, `A_t = δ_t + λ A_{t+1}`; then centred to mean 0 over all steps.
pub fn gae_advantages(costs: &[f64], values: &[f64], t_max: usize, lengths: &[usize], lambda: f64) -> Vec<f64> {
    let mut a = vec![0.0; costs.len()];
    for (b, &n) in lengths.iter().enumerate() {
        let mut acc = 0.0;
        for t in (0..n).rev() {
            let i = b * t_max + t;
            let next = if t + 1 < n { values[i + 1] } else { 0.0 };
            acc = costs[i] + next - values[i] + lambda * acc;
            a[i] = acc;
        }
    }
    centre(&mut a, t_max, lengths, |_, _| true);
    a
}

/// Subtract the mean over the steps `keep(b, t)` (with `t < n_b`) from those steps; others 0.
fn centre(a: &mut [f64], t_max: usize, lengths: &[usize], keep: impl Fn(usize, usize) -> bool) {
    let (mut sum, mut count) = (0.0, 0usize);
    for (b, &n) in lengths.iter().enumerate() {
        for t in 0..n {
            if keep(b, t) {
                sum += a[b * t_max + t];
                count += 1;
            }
        }
    }
    let mean = if count > 0 { sum / count as f64 } else { 0.0 };
    for (b, &n) in lengths.iter().enumerate() {
        for t in 0..t_max {
            let i = b * t_max + t;
            a[i] = if t < n && keep(b, t) { a[i] - mean } else { 0.0 };
        }
    }
}

/// Whether each node `[B, T+1]` of `batch` is a low-reward state for the guide
/// (`log R(s) ≤ floor`); `false` where there is no node.
pub fn low_reward_nodes<E: Env + ?Sized>(env: &E, batch: &TrajectoryBatch, floor: f64) -> Vec<bool> {
    let (bsz, t) = (batch.batch_size, batch.max_length());
    let sd = batch.state_dim;
    let mut out = vec![false; bsz * (t + 1)];
    for b in 0..bsz {
        for k in 0..=(batch.lengths[b] as usize).min(t) {
            let row = batch.node_row(b, k);
            if row != NONE {
                let s = &batch.states[row as usize * sd..(row as usize + 1) * sd];
                out[b * (t + 1) + k] = env.log_reward(s) <= floor;
            }
        }
    }
    out
}

fn host(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.detach().to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?)
}

/// `log P_G` of the steps `[B, T]`: `log_pf` where the step's source is not a low-reward
/// state; there, exit `log min(p_exit, cap)` and the others `log P_F + log(1 − p'_exit) −
/// log(1 − p_exit)`. The exit step is the last step of every trajectory (exit environments).
fn guided_log_probs(log_pf: &[f64], log_pf_exit: &[f64], low: &[bool], t_max: usize, lengths: &[usize]) -> Vec<f64> {
    let mut out = log_pf.to_vec();
    let cap_ln = GUIDE_EXIT_CAP.ln();
    for (b, &n) in lengths.iter().enumerate() {
        for t in 0..n {
            let node = b * (t_max + 1) + t;
            if !low[node] {
                continue;
            }
            let lp_exit = log_pf_exit[node];
            if lp_exit <= cap_ln {
                continue;
            }
            let i = b * t_max + t;
            out[i] = if t + 1 == n {
                cap_ln
            } else {
                // log(1 − p'_exit) − log(1 − p_exit), with p_exit < 1 kept away from 1.
                let keep = (-GUIDE_EXIT_CAP).ln_1p() - (-lp_exit.exp().min(1.0 - 1e-12)).ln_1p();
                log_pf[i] + keep
            };
        }
    }
    out
}

/// The policy-gradient loss on `terms` of a batch whose first `n_forward` trajectories were
/// sampled forward from P_F and whose others (RL-B, RL-G) were sampled backward from P_B,
/// from the same terminal objects. Returns the surrogate (its gradient is the update of P_F,
/// V, log Z and, for RL-B/RL-G, P_B) and the step's figures. `low` ([`low_reward_nodes`] of the
/// whole batch) is needed for RL-G only.
pub fn policy_gradient(
    terms: &BalanceTerms,
    n_forward: usize,
    log_z: &Tensor,
    config: &PgConfig,
    low: Option<&[bool]>,
) -> Result<(Tensor, PgStats)> {
    let (parts, stats) = policy_gradient_parts(terms, n_forward, log_z, config, low)?;
    Ok((parts.total()?, stats))
}

/// The policy-gradient loss in its parts, whose sum is [`policy_gradient`]'s: a trust-region
/// step (RL-T) takes the gradient of the forward surrogate apart from the rest, which the
/// optimiser applies.
#[derive(Debug, Clone)]
pub struct PgParts {
    /// `mean_τ Σ_t log P_F(s_{t+1}|s_t) · A_t`: the forward policy's surrogate.
    pub forward_surrogate: Tensor,
    /// The value function's mean squared error against the returns-to-go.
    pub value: Tensor,
    /// `log Z · mean_τ Σ_t c_t`: log Z's term.
    pub log_z: Tensor,
    /// RL-B, RL-G: the backward policy's surrogate.
    pub backward_surrogate: Option<Tensor>,
}

impl PgParts {
    /// Everything but the forward surrogate: what the optimiser applies beside a trust-region
    /// step of P_F.
    pub fn rest(&self) -> Result<Tensor> {
        let mut rest = (&self.value + &self.log_z)?;
        if let Some(b) = &self.backward_surrogate {
            rest = (rest + b)?;
        }
        Ok(rest)
    }

    /// The whole loss.
    pub fn total(&self) -> Result<Tensor> {
        let mut loss = ((&self.forward_surrogate + &self.value)? + &self.log_z)?;
        if let Some(b) = &self.backward_surrogate {
            loss = (loss + b)?;
        }
        Ok(loss)
    }
}

/// [`policy_gradient`] with the loss in its parts ([`PgParts`]).
pub fn policy_gradient_parts(
    terms: &BalanceTerms,
    n_forward: usize,
    log_z: &Tensor,
    config: &PgConfig,
    low: Option<&[bool]>,
) -> Result<(PgParts, PgStats)> {
    terms.validate()?;
    let bsz = terms.batch_size();
    let t_max = terms.max_len();
    let n_back = bsz - n_forward.min(bsz);
    if n_forward == 0 || n_forward > bsz || (config.variant.trains_backward() && n_back == 0) {
        return Err(GfnError::invalid(
            "n_forward",
            n_forward,
            format!(
                "must be in 1..={bsz}, with backward trajectories after them for {:?}",
                config.variant
            ),
        ));
    }
    if !(0.0..=1.0).contains(&config.gae_lambda) {
        return Err(GfnError::invalid("gae_lambda", config.gae_lambda, "must be in [0, 1]"));
    }
    let flow = terms
        .log_flow
        .as_ref()
        .ok_or_else(|| GfnError::Other("policy gradient needs a value head (log F)".into()))?;
    let (dev, dt) = (terms.log_pf.device().clone(), terms.log_pf.dtype());
    let log_z_v = host(log_z)?[0];
    let lpf = host(&terms.log_pf)?;
    let lpb = host(&terms.log_pb)?;
    let values = host(flow)?;
    let log_r = host(&terms.log_reward)?;
    let lengths = &terms.lengths;
    let fwd = n_forward * t_max;

    // Forward part.
    let (lf, lb, vf, lens_f) = (&lpf[..fwd], &lpb[..fwd], &values[..fwd], &lengths[..n_forward]);
    let costs = forward_costs(lf, lb, t_max, lens_f, &log_r[..n_forward], log_z_v);
    let returns = returns_to_go(&costs, t_max, lens_f);
    let adv = gae_advantages(&costs, vf, t_max, lens_f, config.gae_lambda);
    let steps: usize = lens_f.iter().sum();
    let (mut tb, mut mean_cost, mut value_loss) = (0.0, 0.0, 0.0);
    for (b, &n) in lens_f.iter().enumerate() {
        let total = returns[b * t_max];
        tb += total * total;
        mean_cost += total;
        for t in 0..n {
            let e = vf[b * t_max + t] - returns[b * t_max + t];
            value_loss += e * e;
        }
    }
    let nf = n_forward as f64;
    let (tb, mean_cost, value_loss) = (tb / nf, mean_cost / nf, value_loss / steps.max(1) as f64);
    let constant =
        |v: Vec<f64>, rows: usize| -> Result<Tensor> { Ok(Tensor::from_vec(v, (rows, t_max), &dev)?.to_dtype(dt)?) };
    let log_pf_f = terms.log_pf.narrow(0, 0, n_forward)?;
    let policy = ((log_pf_f * constant(adv.clone(), n_forward)?)?.sum_all()? / nf)?;
    let mask: Vec<f64> = lens_f
        .iter()
        .flat_map(|&n| (0..t_max).map(move |t| f64::from(u8::from(t < n))))
        .collect();
    let v_err = ((flow.narrow(0, 0, n_forward)? - constant(returns, n_forward)?)? * constant(mask, n_forward)?)?;
    let value = (v_err.sqr()?.sum_all()? / steps.max(1) as f64)?;
    let z = (log_z.flatten_all()?.sum_all()? * mean_cost)?;

    // Backward part (RL-B, RL-G).
    let (mut backward_cost, mut backward_surrogate) = (None, None);
    if config.variant.trains_backward() {
        let lens_b = &lengths[n_forward..];
        let (lf_b, lb_b) = (&lpf[fwd..], &lpb[fwd..]);
        let target = if config.variant == PgVariant::Guided {
            let low = low.ok_or_else(|| GfnError::Other("RL-G needs the low-reward nodes of the batch".into()))?;
            let exit = terms
                .log_pf_exit
                .as_ref()
                .ok_or_else(|| GfnError::Other("RL-G needs an environment with an exit action".into()))?;
            let exit = host(exit)?;
            let start = n_forward * (t_max + 1);
            if low.len() != bsz * (t_max + 1) {
                return Err(GfnError::invalid(
                    "low",
                    low.len(),
                    format!("must hold [B, T+1] = {} flags", bsz * (t_max + 1)),
                ));
            }
            guided_log_probs(lf_b, &exit[start..], &low[start..], t_max, lens_b)
        } else {
            lf_b.to_vec()
        };
        // Steps with a P_B decision: every step but an exit (no backward action there).
        let has_exit = terms.log_pf_exit.is_some();
        let decision = |b: usize, t: usize| !(has_exit && t + 1 == lens_b[b]);
        let mut adv = vec![0.0; lens_b.len() * t_max];
        let mut total = 0.0;
        for (b, &n) in lens_b.iter().enumerate() {
            // The walk decides step n−1 first, then n−2, …: returns over steps k ≤ t.
            let mut acc = 0.0;
            for t in 0..n {
                let i = b * t_max + t;
                acc += lb_b[i] - target[i];
                adv[i] = acc;
            }
            total += acc;
        }
        centre(&mut adv, t_max, lens_b, decision);
        backward_cost = Some(total / n_back as f64);
        let log_pb_b = terms.log_pb.narrow(0, n_forward, n_back)?;
        backward_surrogate = Some(((log_pb_b * constant(adv, n_back)?)?.sum_all()? / n_back as f64)?);
    }
    Ok((
        PgParts {
            forward_surrogate: policy,
            value,
            log_z: z,
            backward_surrogate,
        },
        PgStats {
            tb_loss: tb,
            mean_cost,
            value_loss,
            backward_cost,
            advantages: adv,
        },
    ))
}
