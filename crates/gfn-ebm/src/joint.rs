//! The EB-GFN joint training loop (Zhang et al. 2022, Algorithm 1; papers.md §2.1–2.2).
//!
//! One iteration on a data batch `x` (`n` rows):
//!
//! 1. `f(x) = −E_φ(x)` with its graph (reused by step 5; its values are the backward batch's
//!    rewards and the Metropolis–Hastings baseline).
//! 2. GFlowNet step (`gfn_steps` of them, each on the same `x`) with trajectory balance and reward `exp f` (detached):
//!    `L = (1 − α)·L_TB(forward trajectories of P_F) + α·L_TB(backward trajectories of P_B from x)`,
//!    `α = back_ratio`.
//! 3. Negatives `x⁻`: the forward batch's objects (`negatives = gfn`), or the back-and-forth
//!    proposal from `x` with `K = max(1, min(D, ⌊D·(t+1)/warmup_k⌋))` and an accept step
//!    (`negatives = mh`; [`crate::mh`]); `f(x⁻)` keeps its graph from where it was first computed.
//! 4. EBM step on `L_EBM = −(mean f(x) − mean f(x⁻))` (the contrastive gradient
//!    `∇E(x) − ∇E(x⁻)`), plus the energy model's penalty, if any (Ising: `l1 · Σ|J|`).
//!
//! Nothing is evaluated twice: `f` is computed once per row that needs it, with the graph kept
//! for the rows the EBM loss uses.
//!
//! Two engines compute the same iteration from the same random draws (equal up to float
//! rounding; `tests/joint.rs`). [`JointTrainer::step`] uses the tape engine on the CPU
//! ([`gfn_core::fast`]): the forward rollout and the backward walk from the data run through one
//! taped view, so each visited state of the GFlowNet is evaluated once, during sampling; one TB
//! loss over both batches ([`TrajectoryBatch::append`]) reads their outputs from the tape through
//! a fused log-ratio op ([`gfn_objectives::tb::trajectory_log_ratios`]); a hand-written backward
//! pass gives the gradients for the fused Adam step; the back-and-forth proposal runs on the same
//! no-grad forward. [`JointTrainer::step_reference`] (and `step` off the CPU) samples with candle
//! forward passes and evaluates every visited state again on candle's autograd graph for the loss.
//! At D = 32, batch 128 and the official network sizes the tape engine takes about half the time
//! (`docs/PERFORMANCE.md`).

use candle_core::{Device, Tensor};

use gfn_core::fast::FastPath;
use gfn_core::local_search::{EstimatorPolicy, InferencePolicy, back_and_forth};
use gfn_core::optim::{Adam, AdamParams};
use gfn_core::{
    BackwardPolicy, Env, Estimator, EstimatorConfig, GfnError, GfnRng, Result, RowForward, Sampler, SamplingOptions,
    TrajectoryBatch,
};
use gfn_envs::BinaryEnv;
use gfn_objectives::Objective;
use gfn_objectives::tb::trajectory_log_ratios;

use crate::energy::{EnergyModel, binary_tensor, to_f64, with_penalty};
use crate::mh::{AcceptRule, log_ratio};

/// Most GFlowNet steps per joint iteration ([`JointConfig::gfn_steps`]).
pub const MAX_GFN_STEPS: usize = 1000;

gfn_core::choice! {
    /// Where the EBM's negatives come from.
    #[derive(Default)]
    pub enum Negatives("negatives") {
        /// The GFlowNet's forward samples.
        Gfn = "gfn",
        /// The back-and-forth proposal from the data, with an accept step.
        #[default]
        BackAndForth = "mh",
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
    /// GFlowNet steps per iteration, each on the iteration's data batch (the official code's
    /// `train_steps`, 1 there); the EBM steps once.
    pub gfn_steps: usize,
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
            gfn_steps: 1,
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
        if self.gfn_steps == 0 {
            return Err(GfnError::invalid("gfn_steps", self.gfn_steps, "must be at least 1"));
        }
        if self.gfn_steps > MAX_GFN_STEPS {
            return Err(GfnError::invalid(
                "gfn_steps",
                self.gfn_steps,
                format!(
                    "must be at most {MAX_GFN_STEPS}: each is a full GFlowNet step on the iteration's data batch, and the EBM steps once per iteration"
                ),
            ));
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
    /// The GFlowNet loss `(1 − α) L_fwd + α L_back` (the mean over the iteration's GFlowNet steps).
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
    fast: FastPath,
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
            fast: FastPath::default(),
        })
    }

    /// `D`.
    pub fn dim(&self) -> usize {
        self.env.dim()
    }

    /// One joint iteration on the data batch `data` (`[n, D]`, 0/1).
    ///
    /// On the CPU (f32 parameters, [`FastPath::supports`]) the GFlowNet runs on the tape engine:
    /// the forward rollout and the backward walk from the data record every state's outputs, one
    /// TB loss over both batches reads them, a hand-written backward pass gives the gradients,
    /// and the back-and-forth proposal uses the same no-grad forward
    /// ([`gfn_core::local_search::InferencePolicy`]). Elsewhere it is [`JointTrainer::step_reference`].
    /// Both compute the same iteration from the same random draws, up to float rounding.
    pub fn step(&mut self, data: &[i32], rng: &mut GfnRng) -> Result<StepStats> {
        let tape = FastPath::supports(&self.estimator);
        self.step_on(data, rng, tape)
    }

    /// [`JointTrainer::step`] on the reference engine, on any device: candle forward passes for
    /// sampling and the proposal, the TB loss on candle's autograd graph over a second forward
    /// pass of every visited state.
    pub fn step_reference(&mut self, data: &[i32], rng: &mut GfnRng) -> Result<StepStats> {
        self.step_on(data, rng, false)
    }

    fn step_on(&mut self, data: &[i32], rng: &mut GfnRng, tape: bool) -> Result<StepStats> {
        let _flush = gfn_core::denormals::FlushDenormals::enable();
        let d = self.dim();
        let n = data.len() / d;
        if n == 0 || data.len() != n * d || data.iter().any(|&v| v != 0 && v != 1) {
            return Err(GfnError::invalid(
                "data batch",
                format!("{} values", data.len()),
                format!("must be a positive number of rows of D = {d} values, each 0 or 1"),
            ));
        }
        // 1. f(x) of the data, graph kept.
        let f_data = self.ebm.log_density(&binary_tensor(data, d, &self.device)?)?;
        let f_data_v = to_f64(&f_data.detach())?;

        // 2. GFlowNet steps (the negatives of `negatives = gfn` are the last step's samples).
        let mut gfn_loss_v = 0.0;
        let mut f_fwd = None;
        for _ in 0..self.config.gfn_steps {
            let (loss, f) = if tape {
                self.gfn_step_tape(data, &f_data_v, rng)?
            } else {
                self.gfn_step_graph(data, &f_data_v, rng)?
            };
            gfn_loss_v += loss / self.config.gfn_steps as f64;
            f_fwd = Some(f);
        }
        let f_fwd = f_fwd.ok_or_else(|| GfnError::invalid("gfn_steps", 0, "must be at least 1"))?;

        // 3. Negatives.
        let env = &self.env;
        let k = self.config.k_at(self.iteration, d);
        let (f_neg, acceptance) = match self.config.negatives {
            Negatives::Gfn => (f_fwd, None),
            Negatives::BackAndForth => {
                let proposal = if tape {
                    let mut policy = InferencePolicy::new(env, &self.estimator)
                        .ok_or_else(|| GfnError::Other("the tape engine needs f32 parameters on the CPU".into()))?;
                    back_and_forth(env, &mut policy, data, k, rng)?
                } else {
                    back_and_forth(env, &mut EstimatorPolicy::new(env, &self.estimator), data, k, rng)?
                };
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
        let grads = with_penalty(self.ebm.as_ref(), ebm_loss)?.backward()?;
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

    /// The GFlowNet step on candle's graph; returns the loss and `f` of the forward batch's
    /// objects (with its graph).
    fn gfn_step_graph(&mut self, data: &[i32], f_data_v: &[f64], rng: &mut GfnRng) -> Result<(f64, Tensor)> {
        let (env, d, n) = (&self.env, self.env.dim(), data.len() / self.env.dim());
        self.sampler.sample_forward(
            env,
            &self.estimator,
            n,
            SamplingOptions::default(),
            rng,
            &mut self.forward,
        )?;
        let f_fwd = self
            .ebm
            .log_density(&binary_tensor(&self.forward.terminal_states, d, &self.device)?)?;
        self.forward.log_reward = to_f64(&f_fwd.detach())?;
        self.sampler
            .sample_backward(env, &self.estimator, data, rng, &mut self.backward)?;
        self.backward.log_reward.clear();
        self.backward.log_reward.extend_from_slice(f_data_v);
        let tb = Objective::TrajectoryBalance;
        let alpha = self.config.back_ratio;
        let l_fwd = tb.loss(env, &self.forward, &mut &self.estimator)?;
        let l_back = tb.loss(env, &self.backward, &mut &self.estimator)?;
        let gfn_loss = ((l_fwd * (1.0 - alpha))? + (l_back * alpha)?)?;
        let gfn_loss_v = self.check_gfn_loss(&gfn_loss)?;
        let grads = gfn_loss.backward()?;
        self.gfn_optimizer.step(&grads)?;
        Ok((gfn_loss_v, f_fwd))
    }

    /// The GFlowNet step on the tape engine (see [`JointTrainer::step`]); same results as
    /// [`JointTrainer::gfn_step_graph`].
    fn gfn_step_tape(&mut self, data: &[i32], f_data_v: &[f64], rng: &mut GfnRng) -> Result<(f64, Tensor)> {
        let (env, d, n) = (&self.env, self.env.dim(), data.len() / self.env.dim());
        let est = &self.estimator;
        self.fast.clear();
        let mut view = self.fast.view(est);
        self.sampler
            .sample_forward_with(env, &mut view, n, SamplingOptions::default(), rng, &mut self.forward)?;
        let f_fwd = self
            .ebm
            .log_density(&binary_tensor(&self.forward.terminal_states, d, &self.device)?)?;
        self.forward.log_reward = to_f64(&f_fwd.detach())?;
        self.sampler
            .sample_backward_with(env, &mut view, data, rng, &mut self.backward)?;
        self.backward.log_reward.clear();
        self.backward.log_reward.extend_from_slice(f_data_v);
        // The walk evaluated every row but the last n, the initial states (P_F is needed there).
        let back = &self.backward;
        let walked = back.num_rows() - back.batch_size;
        view.record(&back.features[walked * back.feature_dim..], back.batch_size)?;
        // One batch, forward trajectories then backward ones, in the tape's row order.
        self.forward.append(back)?;
        // TB residuals `log Z + Σ log P_F − Σ log P_B − log R` from the tape's outputs (one fused
        // op over all the leaf's columns; the trunk is shared, P_B after the P_F logits).
        view.forward_rows(&self.forward, &[], 0)?;
        let outputs = view
            .leaf(0)
            .ok_or_else(|| GfnError::Other("fast path: no outputs after forward_rows".into()))?;
        let pb_offset = match est.pb_location() {
            Some((0, c)) => Some(c),
            None => None,
            Some(_) => return Err(GfnError::Other("the tape engine's TB loss needs a shared trunk".into())),
        };
        let ratios = trajectory_log_ratios(&self.forward, &outputs, pb_offset)?;
        let log_reward = Tensor::from_slice(&self.forward.log_reward, self.forward.batch_size, &self.device)?
            .to_dtype(outputs.dtype())?;
        let residuals = (ratios.broadcast_add(&view.log_z())? - log_reward)?;
        let l_fwd = residuals.narrow(0, 0, n)?.sqr()?.mean_all()?;
        let l_back = residuals.narrow(0, n, n)?.sqr()?.mean_all()?;
        let alpha = self.config.back_ratio;
        let gfn_loss = ((l_fwd * (1.0 - alpha))? + (l_back * alpha)?)?;
        let gfn_loss_v = self.check_gfn_loss(&gfn_loss)?;
        let grads = gfn_loss.backward()?;
        let log_z_grad = match grads.get(est.log_z().as_tensor()) {
            Some(g) => g.flatten_all()?.to_vec1::<f32>()?,
            None => vec![0.0],
        };
        let mut slices: Vec<Option<&[f32]>> = self.fast.backward(est, &grads)?.into_iter().map(Some).collect();
        slices.push(Some(&log_z_grad));
        self.gfn_optimizer.step_slices(&slices)?;
        Ok((gfn_loss_v, f_fwd))
    }

    fn check_gfn_loss(&self, loss: &Tensor) -> Result<f64> {
        let v = scalar(loss)?;
        if !v.is_finite() {
            return Err(GfnError::Other(format!(
                "the GFlowNet's TB loss is {v} at iteration {}",
                self.iteration + 1
            )));
        }
        Ok(v)
    }
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(f64::from(t.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?))
}
