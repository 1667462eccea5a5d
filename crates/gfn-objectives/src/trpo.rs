//! RL-T: the trust-region (TRPO) update of the forward policy (Niu et al. 2024, papers.md §4.1,
//! from the official `trajectory_TRPO.py`: conjugate gradient 10 iterations, KL limit
//! δ = 0.01, 20 backtracking halvings).
//!
//! With the batch's forward steps `i` (state `s_i`, action `a_i`, GAE advantage `A_i` of the
//! cost, [`crate::pg`]) sampled from `P_F^old` over `B` trajectories, the step minimises the
//! surrogate cost inside a KL ball:
//!
//! `L(θ) = (1/B) Σ_i exp(log P_F^θ(a_i|s_i) − log P_F^old(a_i|s_i)) · A_i`
//! subject to `KL̄(θ) = (1/N) Σ_i KL(P_F^old(·|s_i) ‖ P_F^θ(·|s_i)) ≤ δ`.
//!
//! With `g = ∇L(θ_old)` and `F` the Hessian of `KL̄` at `θ_old` (the Fisher information,
//! `F = (1/N) Σ_i J_iᵀ (diag p_i − p_i p_iᵀ) J_i` for logits `z_i = f_θ(s_i)` with Jacobian
//! `J_i`), the step is `s = −√(2δ / xᵀFx) · x` with `x ≈ F⁻¹g` from conjugate gradient (each
//! product `F·v` exact: a forward-mode pass for `J·v`, one backward pass for `Jᵀ·y`, on at most
//! `fisher_rows` of the steps, plus `damping · v`), then halved until `KL̄ ≤ δ` and
//! `L(θ) ≤ L(θ_old)`; if no halving passes, the parameters are left unchanged.
//!
//! It works on one [`Mlp`] (the P_F network, which must not share its trunk with the value head)
//! through the CPU tape of [`gfn_core::tape`]; the value function and `log Z` keep their Adam
//! updates. The old log-probabilities come from the training step's own loss pass; the one
//! repeated evaluation is a forward over the Fisher rows, to record their activations for the
//! forward-mode and backward passes.

use candle_core::{Tensor, Var};
use gfn_core::batch::{NONE, TrajectoryBatch};
use gfn_core::nn::Mlp;
use gfn_core::obs::Observations;
use gfn_core::policy::{Observe, Policy};
use gfn_core::tape::{MlpGrads, MlpTape};
use gfn_core::{GfnError, Result};

/// Settings of the trust-region step (the paper's CG 10, δ 0.01, 20 halvings).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrustRegionConfig {
    /// KL limit δ > 0 on the mean KL from the old to the new forward policy.
    pub max_kl: f64,
    /// Conjugate-gradient iterations ≥ 1.
    pub cg_iters: usize,
    /// Step halvings tried ≥ 1 (the full step counts as the first).
    pub backtracks: usize,
    /// Damping ≥ 0 added to the Fisher matrix (`F + damping·I`).
    pub damping: f64,
    /// Steps used for the Fisher-vector products ≥ 1 (every k-th step, so no randomness).
    pub fisher_rows: usize,
}

impl Default for TrustRegionConfig {
    fn default() -> Self {
        Self {
            max_kl: 0.01,
            cg_iters: 10,
            backtracks: 20,
            damping: 0.1,
            fisher_rows: 1024,
        }
    }
}

impl TrustRegionConfig {
    /// A clear error naming the first setting out of range.
    pub fn validate(&self) -> Result<()> {
        if !(self.max_kl.is_finite() && self.max_kl > 0.0) {
            return Err(GfnError::invalid("trpo_max_kl", self.max_kl, "must be finite and > 0"));
        }
        if self.cg_iters == 0 {
            return Err(GfnError::invalid("trpo_cg_iters", self.cg_iters, "must be ≥ 1"));
        }
        if self.backtracks == 0 {
            return Err(GfnError::invalid("trpo_backtracks", self.backtracks, "must be ≥ 1"));
        }
        if !(self.damping.is_finite() && self.damping >= 0.0) {
            return Err(GfnError::invalid(
                "trpo_damping",
                self.damping,
                "must be finite and ≥ 0",
            ));
        }
        if self.fisher_rows == 0 {
            return Err(GfnError::invalid("trpo_fisher_rows", self.fisher_rows, "must be ≥ 1"));
        }
        Ok(())
    }
}

/// Figures of one trust-region step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrpoStats {
    /// Mean KL from the old to the new policy over the steps (0 when rejected).
    pub kl: f64,
    /// `L(θ_old) − L(θ_new)`: the surrogate cost's decrease (0 when rejected).
    pub improvement: f64,
    /// Fraction of the full step taken (`0.5^k`), 0 when every halving failed.
    pub step_fraction: f64,
}

/// The forward policy's decisions in a batch, one entry per step: what the trust-region step
/// evaluates the policy on.
#[derive(Debug, Clone, Default)]
pub struct PolicySteps {
    /// Features of each step's source state, `[N, feature_dim]`.
    pub features: Vec<f32>,
    /// Width of a feature row.
    pub feature_dim: usize,
    /// Each step's source state, `[N, state_dim]` (what a policy behind the seam observes).
    pub states: Vec<i32>,
    /// Width of a state row.
    pub state_dim: usize,
    /// Forward masks of the source states (1 = allowed), `[N, n_actions]`.
    pub masks: Vec<u8>,
    /// Number of forward actions.
    pub n_actions: usize,
    /// The action taken at each step.
    pub actions: Vec<u32>,
    /// The advantage of each step (of the cost: lower is better).
    pub advantages: Vec<f64>,
    /// `log P_F^old(·|s_i)`, `[N, n_actions]`, −∞ where masked.
    pub old_log_probs: Vec<f64>,
    /// Number of trajectories `B` the surrogate averages over.
    pub trajectories: usize,
}

impl PolicySteps {
    /// The steps of the first `n_forward` trajectories of `batch`, with the old policy's
    /// unmasked logits of every batch row (`pf_logits`, `[rows, n_actions]`, the training
    /// step's own forward pass: nothing is evaluated again) and advantages `[n_forward, T]`.
    pub fn from_batch(
        batch: &TrajectoryBatch,
        n_forward: usize,
        pf_logits: &[f32],
        advantages: &[f64],
    ) -> Result<Self> {
        let (a, fd) = (batch.n_actions, batch.feature_dim);
        if n_forward == 0 || n_forward > batch.batch_size || !advantages.len().is_multiple_of(n_forward) {
            return Err(GfnError::invalid(
                "n_forward",
                n_forward,
                format!(
                    "must be in 1..={} and divide the {} advantages",
                    batch.batch_size,
                    advantages.len()
                ),
            ));
        }
        if pf_logits.len() != batch.num_rows() * a {
            return Err(GfnError::Other(format!(
                "{} logits for {} rows of {a} actions",
                pf_logits.len(),
                batch.num_rows()
            )));
        }
        let t_max = advantages.len() / n_forward;
        let sd = batch.state_dim;
        let mut s = Self {
            feature_dim: fd,
            state_dim: sd,
            n_actions: a,
            trajectories: n_forward,
            ..Self::default()
        };
        for b in 0..n_forward {
            let n = batch.lengths[b] as usize;
            if n > t_max {
                return Err(GfnError::Other(format!(
                    "trajectory {b} has {n} steps, advantages hold {t_max}"
                )));
            }
            for t in 0..n {
                let row = batch.node_row(b, t);
                let action = batch.action(b, t);
                if row == NONE || action == NONE {
                    return Err(GfnError::Other(format!("step {t} of trajectory {b} is missing")));
                }
                let r = row as usize;
                s.features.extend_from_slice(&batch.features[r * fd..(r + 1) * fd]);
                s.states.extend_from_slice(&batch.states[r * sd..(r + 1) * sd]);
                s.masks.extend_from_slice(&batch.forward_masks[r * a..(r + 1) * a]);
                log_softmax_into(
                    &pf_logits[r * a..(r + 1) * a],
                    &batch.forward_masks[r * a..(r + 1) * a],
                    &mut s.old_log_probs,
                );
                s.actions.push(action);
                s.advantages.push(advantages[b * t_max + t]);
            }
        }
        Ok(s)
    }

    /// Number of steps `N`.
    pub fn len(&self) -> usize {
        self.actions.len()
    }

    /// Whether there are no steps.
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }

    /// `L(θ_old) = (1/B) Σ_i A_i` (every ratio 1).
    pub fn old_surrogate(&self) -> f64 {
        self.advantages.iter().sum::<f64>() / self.trajectories.max(1) as f64
    }

    /// `(L, KL̄)` of the policy with logits `logits` (`[N, n_actions]`) on the steps.
    pub fn surrogate_and_kl(&self, logits: &[f32]) -> (f64, f64) {
        let a = self.n_actions;
        let mut new = Vec::with_capacity(a);
        let (mut surrogate, mut kl) = (0.0, 0.0);
        for i in 0..self.len() {
            new.clear();
            log_softmax_into(&logits[i * a..(i + 1) * a], &self.masks[i * a..(i + 1) * a], &mut new);
            let old = &self.old_log_probs[i * a..(i + 1) * a];
            let act = self.actions[i] as usize;
            surrogate += (new[act] - old[act]).exp() * self.advantages[i];
            for (&o, &n) in old.iter().zip(&new) {
                if o > f64::NEG_INFINITY {
                    kl += o.exp() * (o - n);
                }
            }
        }
        (
            surrogate / self.trajectories.max(1) as f64,
            kl / self.len().max(1) as f64,
        )
    }
}

/// Masked log-softmax of one row in f64, appended to `out` (−∞ where masked).
fn log_softmax_into(logits: &[f32], mask: &[u8], out: &mut Vec<f64>) {
    let max = logits
        .iter()
        .zip(mask)
        .filter(|&(_, &m)| m != 0)
        .map(|(&z, _)| f64::from(z))
        .fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = logits
        .iter()
        .zip(mask)
        .filter(|&(_, &m)| m != 0)
        .map(|(&z, _)| (f64::from(z) - max).exp())
        .sum();
    let lse = max + sum.ln();
    out.extend(
        logits
            .iter()
            .zip(mask)
            .map(|(&z, &m)| if m != 0 { f64::from(z) - lse } else { f64::NEG_INFINITY }),
    );
}

/// Conjugate gradient for `A x = b` with `A` symmetric positive definite given as products
/// `apply(v) = A v`; `iters` iterations from `x = 0`, stopping early when `‖r‖² < 1e-10`.
pub fn conjugate_gradient(
    mut apply: impl FnMut(&[f64]) -> Result<Vec<f64>>,
    b: &[f64],
    iters: usize,
) -> Result<Vec<f64>> {
    let dot = |u: &[f64], v: &[f64]| u.iter().zip(v).map(|(a, b)| a * b).sum::<f64>();
    let mut x = vec![0.0; b.len()];
    let mut r = b.to_vec();
    let mut p = b.to_vec();
    let mut rr = dot(&r, &r);
    for _ in 0..iters {
        if rr < 1e-10 {
            break;
        }
        let ap = apply(&p)?;
        let pap = dot(&p, &ap);
        if !(pap.is_finite() && pap > 0.0) {
            return Err(GfnError::Other(format!(
                "conjugate gradient: pᵀAp = {pap}, the matrix is not positive definite"
            )));
        }
        let alpha = rr / pap;
        x.iter_mut().zip(&p).for_each(|(x, p)| *x += alpha * p);
        r.iter_mut().zip(&ap).for_each(|(r, ap)| *r -= alpha * ap);
        let rr_new = dot(&r, &r);
        let beta = rr_new / rr;
        p.iter_mut().zip(&r).for_each(|(p, r)| *p = r + beta * *p);
        rr = rr_new;
    }
    Ok(x)
}

/// What the trust-region step needs of the forward policy (the optional capability of a
/// policy behind the seam): flat parameters it can set, P_F logits on the steps, and the two
/// halves of a Fisher-vector product — `J·v` (a Jacobian-vector product of the logits) and
/// `Jᵀ·y` (a backward pass) — on recorded rows.
///
/// Implementations: [`TapedMlp`] (an [`Mlp`] on the CPU tape, exact forward mode) and
/// [`FiniteDifferenceJvp`] (any candle [`Policy`]: `J·v` by central differences, `Jᵀ·y` by
/// candle's backward pass).
pub trait TrustRegionPolicy {
    /// The parameters the step moves, flat.
    fn flat_params(&self) -> Result<Vec<f32>>;
    /// Overwrite the parameters from a flat vector in [`TrustRegionPolicy::flat_params`] order.
    fn set_flat_params(&mut self, theta: &[f32]) -> Result<()>;
    /// Unmasked P_F logits `[steps.len(), n_actions]` of every step at the current parameters.
    fn step_logits(&mut self, steps: &PolicySteps) -> Result<Vec<f32>>;
    /// Fix the Fisher rows (`rows`: indices into `steps`) at the current parameters: the
    /// products below are taken there.
    fn record_rows(&mut self, steps: &PolicySteps, rows: &[usize]) -> Result<()>;
    /// `J·v` over the recorded rows, `[rows, n_actions]`, into `out`.
    fn jvp(&mut self, v: &[f32], out: &mut Vec<f32>) -> Result<()>;
    /// `Jᵀ·y` for `y` over the recorded rows, flat in parameter order, into `out`.
    fn vjp(&mut self, y: &[f32], out: &mut Vec<f32>) -> Result<()>;
}

/// The CPU tape's buffers of [`TapedMlp`], kept between steps.
#[derive(Debug, Default)]
pub struct MlpTapes {
    fisher: MlpTape,
    eval: MlpTape,
    grads: MlpGrads,
}

/// An [`Mlp`] (the P_F network, reading the steps' dense features) on the CPU tape: exact
/// forward-mode `J·v` and backward `Jᵀ·y`.
#[derive(Debug)]
pub struct TapedMlp<'a> {
    /// The network.
    pub net: &'a Mlp,
    /// Its tapes.
    pub tapes: MlpTapes,
}

impl<'a> TapedMlp<'a> {
    /// `net` with fresh tapes.
    pub fn new(net: &'a Mlp) -> Self {
        Self {
            net,
            tapes: MlpTapes::default(),
        }
    }
}

impl TrustRegionPolicy for TapedMlp<'_> {
    fn flat_params(&self) -> Result<Vec<f32>> {
        self.net.flat_params()
    }
    fn set_flat_params(&mut self, theta: &[f32]) -> Result<()> {
        self.net.set_flat_params(theta)
    }
    fn step_logits(&mut self, steps: &PolicySteps) -> Result<Vec<f32>> {
        self.tapes.eval.clear();
        Ok(self
            .net
            .forward_taped(&steps.features, steps.len(), &mut self.tapes.eval)?
            .to_vec())
    }
    fn record_rows(&mut self, steps: &PolicySteps, rows: &[usize]) -> Result<()> {
        let fd = steps.feature_dim;
        let mut x = Vec::with_capacity(rows.len() * fd);
        for &i in rows {
            x.extend_from_slice(&steps.features[i * fd..(i + 1) * fd]);
        }
        self.tapes.fisher.clear();
        self.net.forward_taped(&x, rows.len(), &mut self.tapes.fisher)?;
        Ok(())
    }
    fn jvp(&mut self, v: &[f32], out: &mut Vec<f32>) -> Result<()> {
        self.net.jvp_taped(&self.tapes.fisher, v, out)
    }
    fn vjp(&mut self, y: &[f32], out: &mut Vec<f32>) -> Result<()> {
        self.net.backward_taped(&self.tapes.fisher, y, &mut self.tapes.grads)?;
        out.clear();
        self.tapes.grads.flatten_into(out);
        Ok(())
    }
}

/// Any candle [`Policy`] (a network behind the seam: transformer, GIN, …) as a
/// [`TrustRegionPolicy`] over all its parameters (`log Z` apart), its steps observed from their
/// states: `J·v ≈ (z(θ + εv) − z(θ − εv)) / 2ε` by central differences (two forward passes,
/// the parameters restored bit for bit after), with `ε = √(f32 ε) · (1 + ‖θ‖∞) / ‖v‖∞` (small,
/// so that few ReLU kinks fall inside the difference: on the MLP the products match the exact
/// forward mode to ~1e-5 relative, where `∛(f32 ε)` gave 2%); `Jᵀ·y` exact, by candle's
/// backward pass through the recorded rows' forward.
///
/// The approximation only shapes the step's direction: the KL limit and the surrogate's
/// decrease are checked on the policy's real logits.
pub struct FiniteDifferenceJvp<'a> {
    policy: &'a dyn Policy,
    observe: &'a Observe<'a>,
    params: Vec<Var>,
    /// The recorded rows' observations and their logits with the autograd graph.
    recorded: Option<(Observations, Tensor)>,
}

impl std::fmt::Debug for FiniteDifferenceJvp<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FiniteDifferenceJvp")
            .field("params", &self.params.len())
            .finish_non_exhaustive()
    }
}

impl<'a> FiniteDifferenceJvp<'a> {
    /// `policy`, its states observed by `observe`.
    pub fn new(policy: &'a dyn Policy, observe: &'a Observe<'a>) -> Self {
        let params = policy.named_params().into_iter().map(|(_, v)| v).collect();
        Self {
            policy,
            observe,
            params,
            recorded: None,
        }
    }

    fn logits_of(&self, obs: &Observations) -> Result<Tensor> {
        Ok(self.policy.forward(obs)?.pf_logits)
    }

    /// The logits of `obs` at parameters `theta` (left set).
    fn logits_at(&mut self, theta: &[f32], obs: &Observations) -> Result<Vec<f32>> {
        self.set_flat_params(theta)?;
        host_f32(&self.logits_of(obs)?)
    }

    fn observe_rows(&self, steps: &PolicySteps, rows: Option<&[usize]>) -> Result<Observations> {
        let sd = steps.state_dim;
        if steps.states.len() != steps.len() * sd {
            return Err(GfnError::Other(format!(
                "the steps hold {} state values for {} steps of {sd}: a policy behind the seam needs their states",
                steps.states.len(),
                steps.len()
            )));
        }
        match rows {
            None => (self.observe)(&steps.states),
            Some(rows) => {
                let mut x = Vec::with_capacity(rows.len() * sd);
                for &i in rows {
                    x.extend_from_slice(&steps.states[i * sd..(i + 1) * sd]);
                }
                (self.observe)(&x)
            }
        }
    }
}

fn host_f32(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.detach()
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?)
}

impl TrustRegionPolicy for FiniteDifferenceJvp<'_> {
    fn flat_params(&self) -> Result<Vec<f32>> {
        let mut out = Vec::new();
        for v in &self.params {
            out.extend(host_f32(v.as_tensor())?);
        }
        Ok(out)
    }
    fn set_flat_params(&mut self, theta: &[f32]) -> Result<()> {
        let total: usize = self.params.iter().map(|v| v.elem_count()).sum();
        if theta.len() != total {
            return Err(GfnError::Other(format!(
                "{} values for a policy of {total} parameters",
                theta.len()
            )));
        }
        let mut offset = 0;
        for var in &self.params {
            let n = var.elem_count();
            let t = Tensor::from_slice(&theta[offset..offset + n], var.dims(), var.device())?.to_dtype(var.dtype())?;
            var.set(&t)?;
            offset += n;
        }
        Ok(())
    }
    fn step_logits(&mut self, steps: &PolicySteps) -> Result<Vec<f32>> {
        let obs = self.observe_rows(steps, None)?;
        host_f32(&self.logits_of(&obs)?)
    }
    fn record_rows(&mut self, steps: &PolicySteps, rows: &[usize]) -> Result<()> {
        let obs = self.observe_rows(steps, Some(rows))?;
        let logits = self.logits_of(&obs)?;
        self.recorded = Some((obs, logits));
        Ok(())
    }
    fn jvp(&mut self, v: &[f32], out: &mut Vec<f32>) -> Result<()> {
        let (obs, _) = self
            .recorded
            .as_ref()
            .ok_or_else(|| GfnError::Other("jvp before record_rows".into()))?;
        let theta = self.flat_params()?;
        if v.len() != theta.len() {
            return Err(GfnError::Other(format!(
                "a tangent of {} values for {} parameters",
                v.len(),
                theta.len()
            )));
        }
        let v_max = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        out.clear();
        if v_max == 0.0 {
            let (_, logits) = self.recorded.as_ref().expect("recorded above");
            out.resize(logits.elem_count(), 0.0);
            return Ok(());
        }
        let t_max = theta.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let eps = f64::from(f32::EPSILON).sqrt() * (1.0 + f64::from(t_max)) / f64::from(v_max);
        let shifted = |sign: f64| -> Vec<f32> {
            theta
                .iter()
                .zip(v)
                .map(|(&t, &v)| (f64::from(t) + sign * eps * f64::from(v)) as f32)
                .collect()
        };
        let obs = obs.clone();
        let plus = self.logits_at(&shifted(1.0), &obs);
        let minus = self.logits_at(&shifted(-1.0), &obs);
        // θ restored bit for bit, whatever happened above.
        self.set_flat_params(&theta)?;
        let (plus, minus) = (plus?, minus?);
        out.extend(
            plus.iter()
                .zip(&minus)
                .map(|(&p, &m)| ((f64::from(p) - f64::from(m)) / (2.0 * eps)) as f32),
        );
        Ok(())
    }
    fn vjp(&mut self, y: &[f32], out: &mut Vec<f32>) -> Result<()> {
        let (_, logits) = self
            .recorded
            .as_ref()
            .ok_or_else(|| GfnError::Other("vjp before record_rows".into()))?;
        if y.len() != logits.elem_count() {
            return Err(GfnError::Other(format!(
                "a cotangent of {} values for {} logits",
                y.len(),
                logits.elem_count()
            )));
        }
        let y = Tensor::from_slice(y, logits.dims(), logits.device())?.to_dtype(logits.dtype())?;
        let grads = (logits * y)?.sum_all()?.backward()?;
        out.clear();
        for var in &self.params {
            match grads.get(var.as_tensor()) {
                Some(g) => out.extend(host_f32(g)?),
                None => out.extend(std::iter::repeat_n(0.0, var.elem_count())),
            }
        }
        Ok(())
    }
}

/// The trust-region update and its reusable buffers.
#[derive(Debug, Default)]
pub struct TrustRegion {
    config: TrustRegionConfig,
    /// The MLP's tapes ([`TrustRegion::step`]).
    tapes: MlpTapes,
    /// Probabilities of the Fisher rows, `[n_f, n_actions]`.
    fisher_probs: Vec<f64>,
    /// Number of Fisher rows.
    fisher_rows: usize,
    tangent: Vec<f32>,
    d_out: Vec<f32>,
    jt_y: Vec<f32>,
}

impl TrustRegion {
    /// With `config` (validated).
    pub fn new(config: TrustRegionConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            config,
            ..Self::default()
        })
    }

    /// The settings.
    pub fn config(&self) -> &TrustRegionConfig {
        &self.config
    }

    /// Record the Fisher rows (every k-th step, at most `fisher_rows`) at the policy's current
    /// parameters.
    pub fn record_fisher_rows<P: TrustRegionPolicy + ?Sized>(
        &mut self,
        policy: &mut P,
        steps: &PolicySteps,
    ) -> Result<()> {
        let (n, a) = (steps.len(), steps.n_actions);
        let stride = n.div_ceil(self.config.fisher_rows).max(1);
        let rows: Vec<usize> = (0..n).step_by(stride).collect();
        self.fisher_probs.clear();
        for &i in &rows {
            self.fisher_probs
                .extend(steps.old_log_probs[i * a..(i + 1) * a].iter().map(|l| l.exp()));
        }
        self.fisher_rows = rows.len();
        policy.record_rows(steps, &rows)
    }

    /// `(F + damping·I)·v` on the recorded Fisher rows: `J·v` forward, `y_a = p_a (J·v_a − Σ_b
    /// p_b J·v_b) / n_f`, `Jᵀ·y` backward.
    pub fn fisher_vector_product<P: TrustRegionPolicy + ?Sized>(
        &mut self,
        policy: &mut P,
        v: &[f64],
    ) -> Result<Vec<f64>> {
        let v32: Vec<f32> = v.iter().map(|&x| x as f32).collect();
        policy.jvp(&v32, &mut self.tangent)?;
        let rows = self.fisher_rows;
        let a = self.fisher_probs.len() / rows.max(1);
        if self.tangent.len() != rows * a {
            return Err(GfnError::Other(format!(
                "J·v holds {} values for {rows} Fisher rows of {a} actions",
                self.tangent.len()
            )));
        }
        self.d_out.clear();
        self.d_out.resize(rows * a, 0.0);
        for r in 0..rows {
            let p = &self.fisher_probs[r * a..(r + 1) * a];
            let jv = &self.tangent[r * a..(r + 1) * a];
            let mean: f64 = p.iter().zip(jv).map(|(&p, &j)| p * f64::from(j)).sum();
            for k in 0..a {
                self.d_out[r * a + k] = (p[k] * (f64::from(jv[k]) - mean) / rows as f64) as f32;
            }
        }
        policy.vjp(&self.d_out, &mut self.jt_y)?;
        Ok(self
            .jt_y
            .iter()
            .zip(v)
            .map(|(&g, &v)| f64::from(g) + self.config.damping * v)
            .collect())
    }

    /// `(L, KL̄)` of the policy's current parameters on every step.
    pub fn evaluate<P: TrustRegionPolicy + ?Sized>(
        &mut self,
        policy: &mut P,
        steps: &PolicySteps,
    ) -> Result<(f64, f64)> {
        let logits = policy.step_logits(steps)?;
        Ok(steps.surrogate_and_kl(&logits))
    }

    /// One trust-region step of `net` (the P_F network, at the parameters that produced
    /// `steps.old_log_probs`) from `grad = ∇L(θ_old)`, flat in [`Mlp::flat_params`] order, on the
    /// CPU tape ([`TapedMlp`]). Leaves `net` at the accepted parameters, or unchanged when no
    /// halving passes.
    pub fn step(&mut self, net: &Mlp, steps: &PolicySteps, grad: &[f32]) -> Result<TrpoStats> {
        let mut taped = TapedMlp {
            net,
            tapes: std::mem::take(&mut self.tapes),
        };
        let out = self.step_with(&mut taped, steps, grad);
        self.tapes = taped.tapes;
        out
    }

    /// [`TrustRegion::step`] of any [`TrustRegionPolicy`], `grad` flat in its parameter order.
    pub fn step_with<P: TrustRegionPolicy + ?Sized>(
        &mut self,
        policy: &mut P,
        steps: &PolicySteps,
        grad: &[f32],
    ) -> Result<TrpoStats> {
        let rejected = TrpoStats {
            kl: 0.0,
            improvement: 0.0,
            step_fraction: 0.0,
        };
        if steps.is_empty() {
            return Ok(rejected);
        }
        let theta_old = policy.flat_params()?;
        if grad.len() != theta_old.len() {
            return Err(GfnError::Other(format!(
                "trust region: {} gradients for {} parameters",
                grad.len(),
                theta_old.len()
            )));
        }
        let g: Vec<f64> = grad.iter().map(|&x| f64::from(x)).collect();
        if g.iter().all(|&x| x == 0.0) {
            return Ok(rejected);
        }
        self.record_fisher_rows(policy, steps)?;
        let iters = self.config.cg_iters;
        let x = conjugate_gradient(|v| self.fisher_vector_product(policy, v), &g, iters)?;
        let fx = self.fisher_vector_product(policy, &x)?;
        let xfx: f64 = x.iter().zip(&fx).map(|(a, b)| a * b).sum();
        if !(xfx.is_finite() && xfx > 0.0) {
            return Err(GfnError::Other(format!("trust region: xᵀFx = {xfx}, not positive")));
        }
        let scale = (2.0 * self.config.max_kl / xfx).sqrt();
        let old = steps.old_surrogate();
        let mut fraction = 1.0;
        let mut theta = vec![0.0f32; theta_old.len()];
        for _ in 0..self.config.backtracks {
            for ((t, &o), &x) in theta.iter_mut().zip(&theta_old).zip(&x) {
                *t = (f64::from(o) - fraction * scale * x) as f32;
            }
            policy.set_flat_params(&theta)?;
            let (surrogate, kl) = self.evaluate(policy, steps)?;
            if kl.is_finite() && surrogate.is_finite() && kl <= self.config.max_kl && surrogate <= old {
                return Ok(TrpoStats {
                    kl,
                    improvement: old - surrogate,
                    step_fraction: fraction,
                });
            }
            fraction *= 0.5;
        }
        policy.set_flat_params(&theta_old)?;
        Ok(rejected)
    }
}

/// `∇L(θ)` of the surrogate at `net`'s current parameters, flat: `(1/B) Σ_i A_i ∇log P_F(a_i|s_i)`
/// by one forward and one backward pass over the steps (the training step reads it from its own
/// backward pass instead; this serves checks and callers without one).
pub fn surrogate_gradient(net: &Mlp, steps: &PolicySteps) -> Result<Vec<f32>> {
    let (n, a) = (steps.len(), steps.n_actions);
    let mut tape = MlpTape::default();
    let logits = net.forward_taped(&steps.features, n, &mut tape)?.to_vec();
    let mut d_out = vec![0.0f32; n * a];
    let mut lp = Vec::with_capacity(a);
    for i in 0..n {
        lp.clear();
        log_softmax_into(&logits[i * a..(i + 1) * a], &steps.masks[i * a..(i + 1) * a], &mut lp);
        let w = steps.advantages[i] / steps.trajectories.max(1) as f64;
        for k in 0..a {
            let onehot = f64::from(u8::from(k == steps.actions[i] as usize));
            d_out[i * a + k] = (w * (onehot - lp[k].exp())) as f32;
        }
    }
    let mut grads = MlpGrads::default();
    net.backward_taped(&tape, &d_out, &mut grads)?;
    let mut flat = Vec::new();
    grads.flatten_into(&mut flat);
    Ok(flat)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gfn_core::rng_from_seed;
    use rand::Rng;

    /// A random network and `n` random steps over `a` actions (some masked, one allowed at least).
    fn setup(seed: u64, n: usize, fd: usize, a: usize) -> (Mlp, PolicySteps) {
        let mut rng = rng_from_seed(seed);
        let net = Mlp::new(fd, 16, 2, a, &candle_core::Device::Cpu, &mut rng).unwrap();
        // States in −100..=100, observed as features `state / 100` (what [`observe`] does).
        let states: Vec<i32> = (0..n * fd).map(|_| rng.random_range(-100..=100)).collect();
        let features: Vec<f32> = states.iter().map(|&x| x as f32 * 0.01).collect();
        let mut masks = Vec::new();
        let mut actions = Vec::new();
        for _ in 0..n {
            let row: Vec<u8> = (0..a).map(|k| u8::from(k == 0 || rng.random_bool(0.7))).collect();
            let allowed: Vec<usize> = (0..a).filter(|&k| row[k] != 0).collect();
            actions.push(allowed[rng.random_range(0..allowed.len())] as u32);
            masks.extend(row);
        }
        let mut tape = MlpTape::default();
        let logits = net.forward_taped(&features, n, &mut tape).unwrap().to_vec();
        let mut old = Vec::new();
        for i in 0..n {
            log_softmax_into(&logits[i * a..(i + 1) * a], &masks[i * a..(i + 1) * a], &mut old);
        }
        let advantages = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
        let steps = PolicySteps {
            features,
            feature_dim: fd,
            states,
            state_dim: fd,
            masks,
            n_actions: a,
            actions,
            advantages,
            old_log_probs: old,
            trajectories: n / 3,
        };
        (net, steps)
    }

    fn random_vec(seed: u64, n: usize) -> Vec<f64> {
        let mut rng = rng_from_seed(seed);
        (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    fn dot(u: &[f64], v: &[f64]) -> f64 {
        u.iter().zip(v).map(|(a, b)| a * b).sum()
    }

    #[test]
    fn conjugate_gradient_solves_a_positive_definite_system() {
        let n = 6;
        let m = random_vec(1, n * n);
        // A = MᵀM + I.
        let a: Vec<f64> = (0..n * n)
            .map(|ij| {
                let (i, j) = (ij / n, ij % n);
                (0..n).map(|k| m[k * n + i] * m[k * n + j]).sum::<f64>() + f64::from(u8::from(i == j))
            })
            .collect();
        let b = random_vec(2, n);
        let apply = |v: &[f64]| -> Result<Vec<f64>> { Ok((0..n).map(|i| dot(&a[i * n..(i + 1) * n], v)).collect()) };
        let x = conjugate_gradient(apply, &b, n).unwrap();
        let ax = apply(&x).unwrap();
        for (l, r) in ax.iter().zip(&b) {
            approx::assert_abs_diff_eq!(l, r, epsilon = 1e-8);
        }
    }

    #[test]
    fn jvp_is_the_adjoint_of_the_backward_pass() {
        let (net, steps) = setup(3, 40, 5, 4);
        let mut tape = MlpTape::default();
        net.forward_taped(&steps.features, steps.len(), &mut tape).unwrap();
        let v: Vec<f32> = random_vec(4, net.num_params()).iter().map(|&x| x as f32).collect();
        let u: Vec<f32> = random_vec(5, steps.len() * 4).iter().map(|&x| x as f32).collect();
        let mut jv = Vec::new();
        net.jvp_taped(&tape, &v, &mut jv).unwrap();
        let mut grads = MlpGrads::default();
        net.backward_taped(&tape, &u, &mut grads).unwrap();
        let mut jtu = Vec::new();
        grads.flatten_into(&mut jtu);
        let lhs: f64 = jv.iter().zip(&u).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum();
        let rhs: f64 = jtu.iter().zip(&v).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum();
        approx::assert_relative_eq!(lhs, rhs, max_relative = 1e-4);
    }

    /// `vᵀFv` is the curvature of the mean KL: `KL̄(θ + αv) ≈ ½ α² vᵀFv`, and F is symmetric.
    #[test]
    fn fisher_vector_products_are_the_kl_curvature() {
        let (net, steps) = setup(6, 60, 5, 4);
        let mut tr = TrustRegion::new(TrustRegionConfig {
            damping: 0.0,
            ..TrustRegionConfig::default()
        })
        .unwrap();
        let mut taped = TapedMlp::new(&net);
        tr.record_fisher_rows(&mut taped, &steps).unwrap();
        let v = random_vec(7, net.num_params());
        let w = random_vec(8, net.num_params());
        let fv = tr.fisher_vector_product(&mut taped, &v).unwrap();
        let fw = tr.fisher_vector_product(&mut taped, &w).unwrap();
        approx::assert_relative_eq!(dot(&w, &fv), dot(&v, &fw), max_relative = 1e-4);
        let theta = net.flat_params().unwrap();
        let alpha = 3e-3;
        let moved: Vec<f32> = theta
            .iter()
            .zip(&v)
            .map(|(&t, &v)| (f64::from(t) + alpha * v) as f32)
            .collect();
        net.set_flat_params(&moved).unwrap();
        let (_, kl) = tr.evaluate(&mut taped, &steps).unwrap();
        net.set_flat_params(&theta).unwrap();
        approx::assert_relative_eq!(kl, 0.5 * alpha * alpha * dot(&v, &fv), max_relative = 0.05);
    }

    #[test]
    fn the_step_stays_in_the_trust_region_and_lowers_the_surrogate() {
        for seed in 0..4 {
            let (net, steps) = setup(10 + seed, 90, 5, 4);
            let grad = surrogate_gradient(&net, &steps).unwrap();
            let before = net.flat_params().unwrap();
            let mut tr = TrustRegion::new(TrustRegionConfig {
                max_kl: 0.005,
                ..TrustRegionConfig::default()
            })
            .unwrap();
            let stats = tr.step(&net, &steps, &grad).unwrap();
            assert!(stats.step_fraction > 0.0, "seed {seed}: no step accepted");
            assert!(stats.kl <= 0.005 && stats.kl > 0.0, "seed {seed}: KL {}", stats.kl);
            assert!(stats.improvement >= 0.0);
            let (surrogate, kl) = tr.evaluate(&mut TapedMlp::new(&net), &steps).unwrap();
            approx::assert_relative_eq!(kl, stats.kl, max_relative = 1e-9);
            approx::assert_relative_eq!(
                steps.old_surrogate() - surrogate,
                stats.improvement,
                max_relative = 1e-9
            );
            assert_ne!(net.flat_params().unwrap(), before);
        }
    }

    #[test]
    fn surrogate_gradient_matches_finite_differences() {
        let (net, steps) = setup(20, 30, 5, 4);
        let grad = surrogate_gradient(&net, &steps).unwrap();
        let theta = net.flat_params().unwrap();
        let mut tr = TrustRegion::default();
        for &k in &[0usize, 7, 40, theta.len() - 1] {
            let h = 1e-2f32;
            let mut eval = |d: f32| {
                let mut t = theta.clone();
                t[k] += d;
                net.set_flat_params(&t).unwrap();
                tr.evaluate(&mut TapedMlp::new(&net), &steps).unwrap().0
            };
            let fd = (eval(h) - eval(-h)) / (2.0 * f64::from(h));
            net.set_flat_params(&theta).unwrap();
            approx::assert_abs_diff_eq!(f64::from(grad[k]), fd, epsilon = 2e-3);
        }
    }

    /// The MLP as a candle [`Policy`] over dense observations (P_F logits only).
    struct DensePolicy(Mlp);

    impl Policy for DensePolicy {
        fn forward(&self, obs: &Observations) -> Result<gfn_core::policy::PolicyOutput> {
            let Observations::Dense(x) = obs else { unreachable!() };
            Ok(gfn_core::policy::PolicyOutput {
                pf_logits: self.0.forward(x, false)?,
                pb_logits: None,
                log_flow: None,
            })
        }
        fn named_params(&self) -> Vec<(String, Var)> {
            let mut out = Vec::new();
            self.0.named_params("net", &mut out);
            out
        }
        fn log_z(&self) -> Option<&Var> {
            None
        }
        fn device(&self) -> &candle_core::Device {
            &candle_core::Device::Cpu
        }
    }

    /// States `[n, fd]` observed as `state / 100` (the features of [`setup`]).
    fn observe(fd: usize) -> impl Fn(&[i32]) -> Result<Observations> {
        move |s: &[i32]| {
            let x: Vec<f32> = s.iter().map(|&v| v as f32 * 0.01).collect();
            let rows = x.len() / fd;
            Ok(Observations::Dense(Tensor::from_vec(
                x,
                (rows, fd),
                &candle_core::Device::Cpu,
            )?))
        }
    }

    /// The seam's finite-difference `J·v` gives the exact Fisher products of the tape's forward
    /// mode on the same network, to the differences' precision, and leaves the parameters as
    /// they were, bit for bit.
    #[test]
    fn finite_difference_fisher_products_match_the_exact_ones() {
        let (net, steps) = setup(30, 50, 5, 4);
        let policy = DensePolicy(net);
        let obs = observe(5);
        let mut fd = FiniteDifferenceJvp::new(&policy, &obs);
        let mut exact = TapedMlp::new(&policy.0);
        assert_eq!(fd.flat_params().unwrap(), exact.flat_params().unwrap());
        assert_eq!(fd.step_logits(&steps).unwrap(), exact.step_logits(&steps).unwrap());
        let config = TrustRegionConfig {
            damping: 0.0,
            fisher_rows: 20,
            ..TrustRegionConfig::default()
        };
        let (mut a, mut b) = (TrustRegion::new(config).unwrap(), TrustRegion::new(config).unwrap());
        a.record_fisher_rows(&mut fd, &steps).unwrap();
        b.record_fisher_rows(&mut exact, &steps).unwrap();
        let theta = fd.flat_params().unwrap();
        for seed in 0..3 {
            let v = random_vec(40 + seed, theta.len());
            let approx = a.fisher_vector_product(&mut fd, &v).unwrap();
            let truth = b.fisher_vector_product(&mut exact, &v).unwrap();
            let err = approx
                .iter()
                .zip(&truth)
                .map(|(x, y)| (x - y) * (x - y))
                .sum::<f64>()
                .sqrt();
            let norm = truth.iter().map(|y| y * y).sum::<f64>().sqrt();
            assert!(norm > 1e-3, "a trivial product: ‖Fv‖ = {norm}");
            assert!(err < 1e-3 * norm, "seed {seed}: ‖Δ‖ = {err} against ‖Fv‖ = {norm}");
            assert_eq!(fd.flat_params().unwrap(), theta, "the parameters moved");
        }
    }

    /// A trust-region step of a policy behind the seam (finite-difference `J·v`) keeps the KL
    /// limit and lowers the surrogate, both measured on the policy's own logits.
    #[test]
    fn a_seam_step_stays_in_the_trust_region_and_lowers_the_surrogate() {
        for seed in 0..3 {
            let (net, steps) = setup(50 + seed, 90, 5, 4);
            let grad = surrogate_gradient(&net, &steps).unwrap();
            let policy = DensePolicy(net);
            let obs = observe(5);
            let mut fd = FiniteDifferenceJvp::new(&policy, &obs);
            let before = fd.flat_params().unwrap();
            let mut tr = TrustRegion::new(TrustRegionConfig {
                max_kl: 0.005,
                ..TrustRegionConfig::default()
            })
            .unwrap();
            let stats = tr.step_with(&mut fd, &steps, &grad).unwrap();
            assert!(stats.step_fraction > 0.0, "seed {seed}: no step accepted");
            assert!(stats.kl <= 0.005 && stats.kl > 0.0, "seed {seed}: KL {}", stats.kl);
            let (surrogate, kl) = tr.evaluate(&mut fd, &steps).unwrap();
            approx::assert_relative_eq!(kl, stats.kl, max_relative = 1e-9);
            assert!(surrogate < steps.old_surrogate(), "seed {seed}: no decrease");
            assert_ne!(fd.flat_params().unwrap(), before);
        }
    }

    #[test]
    fn bad_settings_are_named() {
        let bad = TrustRegionConfig {
            max_kl: -1.0,
            ..TrustRegionConfig::default()
        };
        let e = TrustRegion::new(bad).unwrap_err().to_string();
        assert!(e.contains("trpo_max_kl") && e.contains("-1"), "{e}");
    }
}
