//! The EB-GFN joint training loop (Zhang et al. 2022, Algorithm 1; papers.md §2.1–2.2).
//!
//! One iteration on a data batch `x` (`n` rows):
//!
//! 1. `f(x) = −E_φ(x)` with its graph (reused by step 5; its values are the backward batch's
//!    rewards and the Metropolis–Hastings baseline).
//! 2. GFlowNet step with trajectory balance and reward `exp f` (detached):
//!    `L = (1 − α)·L_TB(forward trajectories of P_F) + α·L_TB(backward trajectories of P_B from x)`,
//!    `α = back_ratio`.
//! 3. Negatives `x⁻`: the forward batch's objects (`negatives = gfn`), or the back-and-forth
//!    proposal from `x` with `K = max(1, min(D, ⌊D·(t+1)/warmup_k⌋))` and an accept step
//!    (`negatives = mh`; [`crate::mh`]); `f(x⁻)` keeps its graph from where it was first computed.
//! 4. EBM step on `L_EBM = −(mean f(x) − mean f(x⁻))` (the contrastive gradient
//!    `∇E(x) − ∇E(x⁻)`).
//!
//! Nothing is evaluated twice: `f` is computed once per row that needs it, with the graph kept
//! for the rows the EBM loss uses.

use std::str::FromStr;

use candle_core::{Device, Tensor};

use gfn_core::local_search::{EstimatorPolicy, back_and_forth};
use gfn_core::optim::{Adam, AdamParams};
use gfn_core::{
    BackwardPolicy, Env, Estimator, EstimatorConfig, GfnError, GfnRng, Result, Sampler, SamplingOptions,
    TrajectoryBatch,
};
use gfn_envs::BinaryEnv;
use gfn_objectives::Objective;

use crate::energy::{EnergyModel, binary_tensor, to_f64};
use crate::mh::{AcceptRule, log_ratio};

/// Where the EBM's negatives come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Negatives {
    /// The GFlowNet's forward samples.
    Gfn,
    /// The back-and-forth proposal from the data, with an accept step.
    #[default]
    BackAndForth,
}

impl FromStr for Negatives {
    type Err = GfnError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "gfn" => Ok(Self::Gfn),
            "mh" => Ok(Self::BackAndForth),
            _ => Err(GfnError::invalid("negatives", s, "must be gfn or mh")),
        }
    }
}

/// Settings of the joint loop.
#[derive(Debug, Clone, PartialEq)]
pub struct JointConfig {
    /// GFlowNet MLP width.
    pub hidden: usize,
    /// GFlowNet MLP hidden layers.
    pub layers: usize,
    /// Adam learning rate of the GFlowNet's networks.
    pub lr: f64,
    /// Adam learning rate of log Z.
    pub lr_logz: f64,
    /// Adam learning rate of the EBM.
    pub ebm_lr: f64,
    /// `α`: weight of the backward-trajectory TB loss.
    pub back_ratio: f64,
    /// Iterations over which `K` grows linearly to `D`.
    pub warmup_k: usize,
    /// Negatives.
    pub negatives: Negatives,
    /// Accept rule of the back-and-forth proposal.
    pub accept: AcceptRule,
}

impl Default for JointConfig {
    /// The official synthetic-data settings (papers.md §2.3).
    fn default() -> Self {
        Self {
            hidden: 256,
            layers: 3,
            lr: 1e-3,
            lr_logz: 1.0,
            ebm_lr: 1e-3,
            back_ratio: 0.5,
            warmup_k: 100_000,
            negatives: Negatives::BackAndForth,
            accept: AcceptRule::MetropolisHastings,
        }
    }
}

impl JointConfig {
    /// Check the ranges, naming the bad field.
    pub fn validate(&self) -> Result<()> {
        for (field, v) in [("lr", self.lr), ("lr_logz", self.lr_logz), ("ebm_lr", self.ebm_lr)] {
            if !(v.is_finite() && v > 0.0) {
                return Err(GfnError::invalid(field, v, "must be finite and > 0"));
            }
        }
        if !(0.0..=1.0).contains(&self.back_ratio) {
            return Err(GfnError::invalid("back_ratio", self.back_ratio, "must be in [0, 1]"));
        }
        if self.warmup_k == 0 {
            return Err(GfnError::invalid("warmup_k", self.warmup_k, "must be at least 1"));
        }
        Ok(())
    }

    /// `K` at iteration `t` (0-based): `max(1, min(D, ⌊D·(t+1)/warmup_k⌋))`.
    pub fn k_at(&self, t: u64, dim: usize) -> usize {
        let k = (dim as u128 * (u128::from(t) + 1) / self.warmup_k as u128) as usize;
        k.clamp(1, dim)
    }
}

/// Figures of one iteration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// The GFlowNet loss `(1 − α) L_fwd + α L_back`.
    pub gfn_loss: f64,
    /// `L_EBM = −(mean f(x) − mean f(x⁻))`.
    pub ebm_loss: f64,
    /// Share of proposals accepted (back-and-forth negatives only).
    pub acceptance: Option<f64>,
    /// `K` of this iteration's proposal.
    pub k: usize,
}

/// The GFlowNet, the energy model and their optimisers.
pub struct JointTrainer {
    /// The MDP over `{0,1}^D`.
    pub env: BinaryEnv,
    /// P_F, P_B and log Z.
    pub estimator: Estimator,
    /// The GFlowNet's optimiser.
    pub gfn_optimizer: Adam,
    /// `f_φ = −E_φ`.
    pub ebm: Box<dyn EnergyModel>,
    /// The EBM's optimiser.
    pub ebm_optimizer: Adam,
    /// The settings.
    pub config: JointConfig,
    /// Iterations completed.
    pub iteration: u64,
    device: Device,
    sampler: Sampler,
    forward: TrajectoryBatch,
    backward: TrajectoryBatch,
    accepted: Vec<bool>,
}

impl JointTrainer {
    /// A GFlowNet for `ebm`'s dimension, parameters drawn from `rng` (the EBM's are the caller's).
    pub fn new(config: JointConfig, ebm: Box<dyn EnergyModel>, device: &Device, rng: &mut GfnRng) -> Result<Self> {
        config.validate()?;
        let env = BinaryEnv::new(ebm.dim())?;
        let estimator = Estimator::new(
            EstimatorConfig {
                hidden: config.hidden,
                layers: config.layers,
                shared_trunk: true,
                backward: BackwardPolicy::Learned,
                flow_head: false,
            },
            env.feature_dim(),
            env.n_actions(),
            env.n_backward_actions(),
            device,
            rng,
        )?;
        let mut params: Vec<_> = estimator.named_params().into_iter().map(|(n, v)| (n, v, 0)).collect();
        params.push(("log_z".into(), estimator.log_z().clone(), 1));
        let gfn_optimizer = Adam::new(
            params,
            vec![AdamParams::adam(config.lr), AdamParams::adam(config.lr_logz)],
        );
        let ebm_params = ebm.named_params().into_iter().map(|(n, v)| (n, v, 0)).collect();
        let ebm_optimizer = Adam::new(ebm_params, vec![AdamParams::adam(config.ebm_lr)]);
        Ok(Self {
            env,
            estimator,
            gfn_optimizer,
            ebm,
            ebm_optimizer,
            config,
            iteration: 0,
            device: device.clone(),
            sampler: Sampler::new(),
            forward: TrajectoryBatch::default(),
            backward: TrajectoryBatch::default(),
            accepted: Vec::new(),
        })
    }

    /// `D`.
    pub fn dim(&self) -> usize {
        self.env.dim()
    }

    /// One joint iteration on the data batch `data` (`[n, D]`, 0/1).
    pub fn step(&mut self, data: &[i32], rng: &mut GfnRng) -> Result<StepStats> {
        let d = self.dim();
        let n = data.len() / d;
        if n == 0 || data.len() != n * d || data.iter().any(|&v| v != 0 && v != 1) {
            return Err(GfnError::invalid(
                "data batch",
                format!("{} values", data.len()),
                format!("must be a positive number of rows of D = {d} values, each 0 or 1"),
            ));
        }
        let env = &self.env;
        // 1. f(x) of the data, graph kept.
        let f_data = self.ebm.log_density(&binary_tensor(data, d, &self.device)?)?;
        let f_data_v = to_f64(&f_data.detach())?;

        // 2. GFlowNet step.
        self.sampler.sample_forward(
            env,
            &self.estimator,
            n,
            SamplingOptions::default(),
            rng,
            &mut self.forward,
        )?;
        let x_fwd = self.forward.terminal_states.clone();
        let f_fwd = self.ebm.log_density(&binary_tensor(&x_fwd, d, &self.device)?)?;
        self.forward.log_reward = to_f64(&f_fwd.detach())?;
        self.sampler
            .sample_backward(env, &self.estimator, data, rng, &mut self.backward)?;
        self.backward.log_reward.clone_from(&f_data_v);
        let tb = Objective::TrajectoryBalance;
        let alpha = self.config.back_ratio;
        let l_fwd = tb.loss(env, &self.forward, &mut &self.estimator)?;
        let l_back = tb.loss(env, &self.backward, &mut &self.estimator)?;
        let gfn_loss = ((l_fwd * (1.0 - alpha))? + (l_back * alpha)?)?;
        let gfn_loss_v = scalar(&gfn_loss)?;
        if !gfn_loss_v.is_finite() {
            return Err(GfnError::Other(format!(
                "the GFlowNet's TB loss is {gfn_loss_v} at iteration {}",
                self.iteration + 1
            )));
        }
        let grads = gfn_loss.backward()?;
        self.gfn_optimizer.step(&grads)?;
        drop(grads);

        // 3. Negatives.
        let k = self.config.k_at(self.iteration, d);
        let (f_neg, acceptance) = match self.config.negatives {
            Negatives::Gfn => (f_fwd, None),
            Negatives::BackAndForth => {
                let mut policy = EstimatorPolicy::new(env, &self.estimator);
                let proposal = back_and_forth(env, &mut policy, data, k, rng)?;
                let f_prop = self
                    .ebm
                    .log_density(&binary_tensor(&proposal.states, d, &self.device)?)?;
                let f_prop_v = to_f64(&f_prop.detach())?;
                let delta = log_ratio(&f_data_v, &f_prop_v, &proposal.log_q_forward, &proposal.log_q_reverse);
                self.config.accept.accept(&delta, rng, &mut self.accepted);
                let mask: Vec<f32> = self.accepted.iter().map(|&a| f32::from(u8::from(a))).collect();
                let m = Tensor::from_vec(mask, n, &self.device)?;
                let f_neg = ((&f_prop * &m)? + (&f_data * (1.0 - &m)?)?)?;
                let rate = self.accepted.iter().filter(|&&a| a).count() as f64 / n as f64;
                (f_neg, Some(rate))
            }
        };

        // 4. EBM step.
        let ebm_loss = (f_neg.mean_all()? - f_data.mean_all()?)?;
        let ebm_loss_v = scalar(&ebm_loss)?;
        if !ebm_loss_v.is_finite() {
            return Err(GfnError::Other(format!(
                "the EBM loss is {ebm_loss_v} at iteration {}",
                self.iteration + 1
            )));
        }
        let grads = ebm_loss.backward()?;
        self.ebm_optimizer.step(&grads)?;
        self.ebm.project()?;
        self.iteration += 1;
        Ok(StepStats {
            gfn_loss: gfn_loss_v,
            ebm_loss: ebm_loss_v,
            acceptance,
            k,
        })
    }
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(f64::from(t.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?))
}
