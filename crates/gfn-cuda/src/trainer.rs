//! [`DeviceTrainer`]: a TB or SubTB(λ) training step with every stage on the estimator's device.
//!
//! One step:
//! 1. **Rollout** (no graph): a zeroed `[T+1, B, W]` trajectory buffer; for `t = 0 … T−1`,
//!    [`Featurize`] slot `t`, the P_F logits of the MLP, and [`SampleStep`] writes the action of
//!    slot `t` and the state of slot `t+1`. `T` is the longest possible trajectory, so the loop
//!    never asks the host whether the batch is done: done rows ride along as copies.
//! 2. **Training pass**: one batched forward over all `(T+1)·B` rows, `log P_F` by
//!    [`LogSoftmaxGather`] (each log-probability computed once, in this pass), `log P_B` by
//!    [`UniformLogPb`] or the learned head, `log R` by [`LogReward`], then
//!    TB: `mean_b (log Z + Σ_t log P_F − Σ_t log P_B − log R)²`, or
//!    SubTB(λ): `mean_b` of [`SubTbLoss`] with `log F(s_n) := log R`.
//! 3. **Update**: backward, then Adam as two in-place kernels per tensor ([`AdamMoments`],
//!    [`AdamApply`]). The loss comes back to the host once per step (to stop on a non-finite one).
//!
//! The training pass and its backward are hand-written by default ([`DeviceTrainer::manual_gradients`]):
//! the MLP forward keeps each layer's output; [`StepLogProb`] reads `log P_F` / `log P_B` straight
//! from the output (masks from the environment); [`TbGrad`] gives the loss and `∂/∂resid` in one
//! block, or [`SubTbLoss`] + [`SubTbJacobian`]; [`HeadGrad`] writes `∂loss/∂output` for every column
//! in one pass; then per layer `dW = aᵀ·d`, `db = `[`ColSum`]`(d)`, `d ← (d·Wᵀ) ⊙ 1[a > 0]`
//! ([`ReluGrad`]). About 15 launches instead of candle autograd's ~60, and no Jacobian the size
//! of the logits. [`DeviceTrainer::set_manual_backward`]`(false)` uses autograd over
//! [`DeviceTrainer::batch_loss`] instead (the reference the tests compare with).

use candle_core::{D, DType, Device, IndexOp, Tensor, Var};
use gfn_core::estimator::{BackwardPolicy, Estimator};
use gfn_core::nn::Mlp;
use gfn_core::optim::AdamParams;
use gfn_core::{GfnError, Result};

use crate::ops::{
    AdamApply, AdamMoments, BackwardActions, BackwardMask, BiasAct, ColSum, Featurize, ForwardMask, HeadCols, HeadGrad,
    LogReward, LogSoftmaxGather, ReluGrad, RolloutStep, SampleParams, SampleStep, StepLogProb, SubTbJacobian,
    SubTbLoss, TbGrad, UniformLogPb,
};
use crate::spec::{DeviceEnv, EnvSpec};

/// The objective of a [`DeviceTrainer`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DeviceLoss {
    /// Trajectory balance.
    Tb,
    /// SubTB(λ) with geometric weights.
    SubTb {
        /// λ > 0.
        lambda: f64,
    },
}

/// Settings of a [`DeviceTrainer`].
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceTrainerConfig {
    /// Trajectories per step.
    pub batch: usize,
    /// The objective.
    pub loss: DeviceLoss,
    /// ε-uniform exploration in the rollout.
    pub epsilon: f64,
    /// Softmax temperature of the rollout.
    pub temperature: f64,
    /// Seed of the sampler's counter-based RNG.
    pub seed: u64,
    /// Adam for the network.
    pub net: AdamParams,
    /// Adam for `log Z` (TB).
    pub log_z: AdamParams,
    /// Every this many rollout steps, ask the device whether every trajectory is done (one
    /// scalar copied to the host) and stop early if so; 0 = always run the longest possible
    /// trajectory length `T` (no host round trip inside the rollout at all).
    pub done_check_every: usize,
}

impl DeviceTrainerConfig {
    /// Check every field, naming the bad one.
    pub fn validate(&self) -> Result<()> {
        if self.batch == 0 || self.batch > (1 << 24) {
            return Err(GfnError::invalid(
                "batch_size",
                self.batch,
                "must be in 1 ..= 16,777,216",
            ));
        }
        if !(0.0..=1.0).contains(&self.epsilon) {
            return Err(GfnError::invalid("epsilon", self.epsilon, "must be in [0, 1]"));
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(GfnError::invalid(
                "temperature",
                self.temperature,
                "must be finite and > 0",
            ));
        }
        if let DeviceLoss::SubTb { lambda } = self.loss
            && !(lambda.is_finite() && lambda > 0.0)
        {
            return Err(GfnError::invalid("lambda", lambda, "must be finite and > 0"));
        }
        for (name, p) in [("lr", self.net), ("lr_logz", self.log_z)] {
            if !(p.lr.is_finite() && p.lr > 0.0) {
                return Err(GfnError::invalid(name, p.lr, "must be finite and > 0"));
            }
        }
        Ok(())
    }
}

/// What one training step reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// The loss before the update.
    pub loss: f64,
    /// With profiling on: seconds of `[rollout, loss, backward, update]`, each ended by a
    /// device synchronisation (which itself slows the step a little). With the hand-written pass
    /// "loss" is the forward pass with the loss and "backward" the rest of the gradient; with
    /// autograd, "loss" is the graph's forward and "backward" `loss.backward()`.
    pub phases: Option<[f64; 4]>,
}

/// The loss of one batch and the pieces it was built from.
#[derive(Debug, Clone)]
pub struct BatchLoss {
    /// Scalar loss, with a graph.
    pub loss: Tensor,
    /// `[T, B]` `log P_F` per step.
    pub log_pf: Tensor,
    /// `[T, B]` `log P_B` per step.
    pub log_pb: Tensor,
    /// `[B]` `log R(x)`.
    pub log_reward: Tensor,
}

struct Slot {
    name: String,
    var: Var,
    /// `[m | v]`, on the device.
    mv: Tensor,
    group: usize,
}

/// Trains an [`Estimator`] on a [`DeviceEnv`] with the whole loop on the estimator's device.
pub struct DeviceTrainer {
    env: DeviceEnv,
    spec: EnvSpec,
    aux: Tensor,
    estimator: Estimator,
    config: DeviceTrainerConfig,
    device: Device,
    slots: Vec<Slot>,
    /// `[T+1, B]` row positions, for the SubTB boundary.
    positions: Tensor,
    adam_t: u64,
    iteration: u64,
    profile: bool,
    /// Roll out with [`RolloutStep`] (one kernel per step) when the net fits it.
    fused: bool,
    /// Rows per block of [`RolloutStep`] (0 = automatic).
    rollout_rows: usize,
    /// Hand-written training pass (true) or candle autograd over [`DeviceTrainer::batch_loss`].
    manual: bool,
}

impl std::fmt::Debug for DeviceTrainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceTrainer")
            .field("env", &self.env.name)
            .field("config", &self.config)
            .field("device", &self.device)
            .field("iteration", &self.iteration)
            .finish()
    }
}

impl DeviceTrainer {
    /// A trainer for `estimator` (built for `env`'s feature and action counts, on the device
    /// to train on; with a flow head for SubTB).
    pub fn new(env: DeviceEnv, estimator: Estimator, config: DeviceTrainerConfig) -> Result<Self> {
        config.validate()?;
        let spec = env.spec;
        let checks = [
            ("feature_dim", estimator.feature_dim(), spec.feature_dim()),
            ("n_actions", estimator.n_actions(), spec.n_actions()),
            ("n_backward", estimator.n_backward(), spec.n_backward()),
        ];
        for (what, got, want) in checks {
            if got != want {
                return Err(GfnError::invalid(what, got, format!("must be {want} for {}", env.name)));
            }
        }
        if matches!(config.loss, DeviceLoss::SubTb { .. }) && !estimator.config().flow_head {
            return Err(GfnError::invalid(
                "loss",
                "subtb",
                "needs an estimator with a flow head",
            ));
        }
        let device = estimator.device().clone();
        let aux = Tensor::from_slice(&env.aux, env.aux.len(), &device)?;
        let mut slots = Vec::new();
        let mut params: Vec<(String, Var, usize)> =
            estimator.named_params().into_iter().map(|(n, v)| (n, v, 0)).collect();
        if config.loss == DeviceLoss::Tb {
            params.push(("log_z".into(), estimator.log_z().clone(), 1));
        }
        for (name, var, group) in params {
            let mv = Tensor::zeros(2 * var.elem_count(), DType::F32, &device)?;
            slots.push(Slot { name, var, mv, group });
        }
        let t1 = spec.max_steps() + 1;
        let positions = Tensor::arange(0u32, t1 as u32, &device)?
            .reshape((t1, 1))?
            .broadcast_as((t1, config.batch))?
            .contiguous()?;
        Ok(Self {
            env,
            spec,
            aux,
            estimator,
            config,
            device,
            slots,
            positions,
            adam_t: 0,
            iteration: 0,
            profile: false,
            fused: true,
            rollout_rows: 0,
            manual: true,
        })
    }

    /// The estimator being trained.
    pub fn estimator(&self) -> &Estimator {
        &self.estimator
    }
    /// The environment.
    pub fn env(&self) -> &DeviceEnv {
        &self.env
    }
    /// The settings.
    pub fn config(&self) -> &DeviceTrainerConfig {
        &self.config
    }
    /// Steps taken.
    pub fn iteration(&self) -> u64 {
        self.iteration
    }
    /// Set ε and the temperature of the next rollouts (schedules), checked.
    pub fn set_sampling(&mut self, epsilon: f64, temperature: f64) -> Result<()> {
        let mut c = self.config.clone();
        c.epsilon = epsilon;
        c.temperature = temperature;
        c.validate()?;
        self.config = c;
        Ok(())
    }
    /// Roll out with the fused [`RolloutStep`] (default, when the net fits it: at most
    /// 4 layers of width ≤ 1536) or layer by layer ([`BiasAct`] + [`SampleStep`]); the two draw the
    /// same samples up to the rounding of the logits.
    pub fn set_fused_rollout(&mut self, on: bool) {
        self.fused = on;
    }
    /// Rows per thread block of the fused rollout kernel: 1, 2, 4, 8 or 16, or 0 (default) to
    /// choose from the batch and the GPU. The samples are the same for every value; it is a speed
    /// knob (checked when the kernel launches).
    pub fn set_rollout_rows(&mut self, rows: usize) {
        self.rollout_rows = rows;
    }
    /// Hand-written training pass and backward (true, default) or candle autograd over
    /// [`DeviceTrainer::batch_loss`]. The two agree to float rounding.
    pub fn set_manual_backward(&mut self, on: bool) {
        self.manual = on;
    }
    /// Whether the training pass is the hand-written one.
    pub fn manual_backward(&self) -> bool {
        self.manual
    }
    /// Time the phases of each step (synchronising the device after each).
    pub fn set_profile(&mut self, on: bool) {
        self.profile = on;
    }
    /// Restart the step counter (when resuming): the sampler's RNG counter is the iteration.
    pub fn set_iteration(&mut self, iteration: u64) {
        self.iteration = iteration;
    }
    /// Adam's state, `(name, [m | v])` per tensor, for checkpoints.
    pub fn optimizer_state(&self) -> Vec<(String, Tensor)> {
        self.slots.iter().map(|s| (s.name.clone(), s.mv.clone())).collect()
    }
    /// Adam's step count.
    pub fn adam_steps(&self) -> u64 {
        self.adam_t
    }
    /// Restore Adam's state saved by [`DeviceTrainer::optimizer_state`].
    pub fn set_optimizer_state(&mut self, steps: u64, state: &[(String, Tensor)]) -> Result<()> {
        for slot in &mut self.slots {
            let Some((_, t)) = state.iter().find(|(n, _)| *n == slot.name) else {
                return Err(GfnError::invalid(
                    "checkpoint",
                    &slot.name,
                    "has no optimizer state for this tensor",
                ));
            };
            if t.elem_count() != slot.mv.elem_count() {
                return Err(GfnError::invalid(
                    "checkpoint",
                    &slot.name,
                    "optimizer state has the wrong size",
                ));
            }
            slot.mv = t
                .to_device(&self.device)?
                .to_dtype(DType::F32)?
                .flatten_all()?
                .contiguous()?;
        }
        self.adam_t = steps;
        Ok(())
    }

    /// Longest trajectory `T`.
    pub fn max_steps(&self) -> usize {
        self.spec.max_steps()
    }

    /// Sample `batch` trajectories with the counter of `iteration`: the `[T'+1, B, W]` buffer,
    /// `T' ≤ T` the steps until every trajectory was done (checked every `done_check_every`
    /// steps), or `T`.
    pub fn rollout(&self, iteration: u64, batch: usize) -> Result<Tensor> {
        let (steps, w) = (self.spec.max_steps(), self.spec.row_width());
        let traj = Tensor::zeros((steps + 1, batch, w), DType::U32, &self.device)?;
        let featurize = Featurize(self.spec);
        let every = self.config.done_check_every;
        let sample = SampleParams {
            seed: self.config.seed,
            iteration,
            epsilon: self.config.epsilon,
            inv_temp: 1.0 / self.config.temperature,
        };
        let net = &self.estimator.nets()[0];
        let layers: Vec<(Tensor, Tensor)> = net
            .layers
            .iter()
            .map(|l| (l.weight.as_tensor().detach(), l.bias.as_tensor().detach()))
            .collect();
        let mut fused = RolloutStep {
            env: self.spec,
            t: 0,
            sample,
            layers,
            rows: self.rollout_rows,
        };
        let use_fused = self.fused && fused.dims().is_ok();
        // Every trajectory of the other environments takes exactly T steps: nothing to check.
        let can_end_early = self.spec.env_kind() == crate::spec::EnvKind::Hypergrid;
        for t in 0..steps {
            if can_end_early && every > 0 && t > 0 && t % every == 0 {
                let done = traj
                    .i(t)?
                    .narrow(1, self.spec.done_col(), 1)?
                    .min_all()?
                    .to_scalar::<u32>()?;
                if done == 1 {
                    return Ok(traj.narrow(0, 0, t + 1)?);
                }
            }
            if use_fused {
                fused.t = t;
                traj.inplace_op1(&fused)?;
                continue;
            }
            let rows = traj.i(t)?;
            let feats = rows.apply_op1_no_bwd(&featurize)?;
            let logits = self.rollout_logits(&feats)?;
            let op = SampleStep {
                env: self.spec,
                t,
                sample,
            };
            traj.inplace_op2(&logits, &op)?;
        }
        Ok(traj)
    }

    /// The P_F net's output without a graph, `[B, C]` with the P_F logits first: one matmul
    /// and one fused bias(+ReLU) kernel per layer.
    fn rollout_logits(&self, feats: &Tensor) -> Result<Tensor> {
        let net = &self.estimator.nets()[0];
        let last = net.layers.len() - 1;
        let mut h = feats.clone();
        for (i, layer) in net.layers.iter().enumerate() {
            h = h.matmul(&layer.weight.as_tensor().detach())?;
            h = h.apply_op2_no_bwd(&layer.bias.as_tensor().detach(), &BiasAct { relu: i < last })?;
        }
        Ok(h)
    }

    /// The loss of the trajectories in `traj` (from [`DeviceTrainer::rollout`]), with a graph.
    pub fn batch_loss(&self, traj: &Tensor) -> Result<BatchLoss> {
        let (t1, batch, w) = traj.dims3()?;
        let steps = t1 - 1;
        let spec = self.spec;
        let rows = traj.reshape((t1 * batch, w))?;
        let feats = rows.apply_op1_no_bwd(&Featurize(spec))?;
        let out = self.estimator.forward(&feats)?;
        let fmask = rows.apply_op1_no_bwd(&ForwardMask(spec))?;
        let acts = rows.narrow(1, spec.act_col(), 1)?.squeeze(1)?.contiguous()?;
        let log_pf = out
            .pf_logits
            .contiguous()?
            .apply_op3(&fmask, &acts, LogSoftmaxGather)?
            .reshape((t1, batch))?
            .narrow(0, 0, steps)?;
        let log_pb = match self.estimator.config().backward {
            BackwardPolicy::Uniform => traj.apply_op1_no_bwd(&UniformLogPb(spec))?,
            BackwardPolicy::Learned => {
                let Some(pb) = out.pb_logits.as_ref() else {
                    return Err(GfnError::Other("learned P_B without P_B logits".into()));
                };
                let n = steps * batch;
                let bmask = rows.narrow(0, batch, n)?.apply_op1_no_bwd(&BackwardMask(spec))?;
                let bact = traj.apply_op1_no_bwd(&BackwardActions(spec))?.reshape(n)?;
                pb.narrow(0, batch, n)?
                    .contiguous()?
                    .apply_op3(&bmask, &bact, LogSoftmaxGather)?
                    .reshape((steps, batch))?
            }
        };
        let last = traj.i(steps)?;
        let log_reward = last.apply_op2_no_bwd(&self.aux, &LogReward(spec))?;
        let loss = match self.config.loss {
            DeviceLoss::Tb => {
                let resid = (log_pf.sum(0)? - log_pb.sum(0)?)?
                    .broadcast_add(self.estimator.log_z().as_tensor())?
                    .sub(&log_reward)?;
                resid.sqr()?.mean_all()?
            }
            DeviceLoss::SubTb { lambda } => {
                let Some(flow) = out.log_flow.as_ref() else {
                    return Err(GfnError::Other("SubTB without a flow head".into()));
                };
                let delta = (&log_pf - &log_pb)?.contiguous()?;
                let (flows, lengths, _) = self.subtb_flows(&last, flow, &log_reward, t1, batch)?;
                delta
                    .apply_op3(
                        &flows.contiguous()?,
                        &lengths,
                        SubTbLoss {
                            log_lambda: lambda.ln(),
                        },
                    )?
                    .mean(D::Minus1)?
            }
        };
        Ok(BatchLoss {
            loss,
            log_pf,
            log_pb,
            log_reward,
        })
    }

    /// SubTB's flows `[T+1, B]` (`log F(s_t)`, with `log R` at each trajectory's end), the
    /// lengths `[B]` and the end mask `[T+1, B]` (u8), from the last slot and the flow head `[N]`.
    fn subtb_flows(
        &self,
        last: &Tensor,
        flow: &Tensor,
        log_reward: &Tensor,
        t1: usize,
        batch: usize,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let lengths = last.narrow(1, self.spec.steps_col(), 1)?.squeeze(1)?.contiguous()?;
        let positions = if batch == self.config.batch {
            self.positions.narrow(0, 0, t1)?
        } else {
            Tensor::arange(0u32, t1 as u32, &self.device)?
                .reshape((t1, 1))?
                .broadcast_as((t1, batch))?
                .contiguous()?
        };
        let at_end = positions.broadcast_eq(&lengths.unsqueeze(0)?)?;
        let flows = at_end.where_cond(
            &log_reward.unsqueeze(0)?.broadcast_as((t1, batch))?,
            &flow.reshape((t1, batch))?,
        )?;
        Ok((flows, lengths, at_end))
    }

    /// Where each network's heads are, and whether this loss reaches the network at all
    /// (`None`: a separate flow network under TB gets no gradient and no update).
    fn head_cols(&self) -> Vec<Option<HeadCols>> {
        let est = &self.estimator;
        let cfg = est.config();
        let learned = cfg.backward == BackwardPolicy::Learned;
        let subtb = matches!(self.config.loss, DeviceLoss::SubTb { .. });
        let (na, nb) = (est.n_actions(), est.n_backward());
        if cfg.shared_trunk {
            let flow_col = na + if learned { nb } else { 0 };
            return vec![Some(HeadCols {
                pf: Some(0),
                pb: learned.then_some(na),
                flow: (cfg.flow_head && subtb).then_some(flow_col),
            })];
        }
        let mut cols = vec![Some(HeadCols {
            pf: Some(0),
            ..HeadCols::default()
        })];
        if learned {
            cols.push(Some(HeadCols {
                pb: Some(0),
                ..HeadCols::default()
            }));
        }
        if cfg.flow_head {
            cols.push(subtb.then_some(HeadCols {
                flow: Some(0),
                ..HeadCols::default()
            }));
        }
        cols
    }

    /// The hand-written training pass over the trajectories in `traj`: the loss (a one-element
    /// tensor, still on the device) and the gradient of every optimised tensor in the order of
    /// [`DeviceTrainer::optimizer_state`] (`None` for a tensor the loss does not reach). Equal to
    /// autograd over [`DeviceTrainer::batch_loss`] up to float rounding.
    pub fn manual_gradients(&self, traj: &Tensor) -> Result<(Tensor, Vec<Option<Tensor>>)> {
        let pass = self.manual_forward(traj)?;
        let grads = self.manual_backward_pass(traj, &pass)?;
        Ok((pass.loss, grads))
    }

    /// The forward half of [`DeviceTrainer::manual_gradients`]: the networks' tapes, the loss and
    /// the per-trajectory or per-step gradients of the log-probabilities and flows.
    fn manual_forward(&self, traj: &Tensor) -> Result<ManualPass> {
        let (t1, batch, w) = traj.dims3()?;
        let steps = t1 - 1;
        let spec = self.spec;
        let est = &self.estimator;
        let rows = traj.reshape((t1 * batch, w))?;
        let feats = rows.apply_op1_no_bwd(&Featurize(spec))?;
        let cols = self.head_cols();
        let tapes = est
            .nets()
            .iter()
            .map(|net| mlp_forward_tape(net, &feats))
            .collect::<Result<Vec<_>>>()?;
        let output = |k: usize| -> &Tensor { tapes[k].last().expect("a tape holds the output") };
        let log_pf = output(0).apply_op2_no_bwd(
            traj,
            &StepLogProb {
                env: spec,
                col: 0,
                backward: false,
            },
        )?;
        let log_pb = match est.pb_location() {
            None => traj.apply_op1_no_bwd(&UniformLogPb(spec))?,
            Some((k, col)) => output(k).apply_op2_no_bwd(
                traj,
                &StepLogProb {
                    env: spec,
                    col,
                    backward: true,
                },
            )?,
        };
        let last = traj.i(steps)?;
        let log_reward = last.apply_op2_no_bwd(&self.aux, &LogReward(spec))?;
        let (loss, g, per_trajectory, d_log_z) = match self.config.loss {
            DeviceLoss::Tb => {
                let rz = Tensor::cat(&[&log_reward, &est.log_z().as_tensor().detach()], 0)?;
                let tb = log_pf.apply_op3_no_bwd(&log_pb, &rz, &TbGrad)?;
                (
                    tb.narrow(0, 0, 1)?,
                    tb.narrow(0, 2, batch)?,
                    true,
                    Some(tb.narrow(0, 1, 1)?),
                )
            }
            DeviceLoss::SubTb { lambda } => {
                let Some((k, col)) = flow_location(est) else {
                    return Err(GfnError::Other("SubTB without a flow head".into()));
                };
                let flow = output(k).narrow(1, col, 1)?.squeeze(1)?;
                let delta = (&log_pf - &log_pb)?.contiguous()?;
                let (flows, lengths, at_end) = self.subtb_flows(&last, &flow, &log_reward, t1, batch)?;
                let flows = flows.contiguous()?;
                let log_lambda = lambda.ln();
                let per = delta.apply_op3_no_bwd(&flows, &lengths, &SubTbLoss { log_lambda })?;
                let jac = delta.apply_op3_no_bwd(&flows, &lengths, &SubTbJacobian { log_lambda })?;
                let jac = (jac / batch as f64)?;
                let gd = jac.narrow(0, 0, steps)?;
                // The end flows are log R, not the network's: no gradient there.
                let gf = at_end.where_cond(
                    &Tensor::zeros((t1, batch), DType::F32, &self.device)?,
                    &jac.narrow(0, steps, t1)?,
                )?;
                let gd = Tensor::cat(&[&gd, &Tensor::zeros((1, batch), DType::F32, &self.device)?], 0)?;
                let g = Tensor::stack(&[&gd, &gd.neg()?, &gf], 0)?.contiguous()?;
                (per.mean_keepdim(0)?, g, false, None)
            }
        };
        Ok(ManualPass {
            tapes,
            cols,
            loss,
            g,
            per_trajectory,
            d_log_z,
        })
    }

    /// The backward half of [`DeviceTrainer::manual_gradients`].
    fn manual_backward_pass(&self, traj: &Tensor, pass: &ManualPass) -> Result<Vec<Option<Tensor>>> {
        let mut grads = Vec::with_capacity(self.slots.len());
        for (k, (net, cols)) in self.estimator.nets().iter().zip(&pass.cols).enumerate() {
            match cols {
                Some(cols) => {
                    let tape = &pass.tapes[k];
                    let dout = tape.last().expect("a tape holds the output").apply_op3_no_bwd(
                        traj,
                        &pass.g,
                        &HeadGrad {
                            env: self.spec,
                            cols: *cols,
                            per_trajectory: pass.per_trajectory,
                        },
                    )?;
                    for (dw, db) in mlp_backward(net, tape, dout)? {
                        grads.push(Some(dw));
                        grads.push(Some(db));
                    }
                }
                None => grads.extend(std::iter::repeat_n(None, 2 * net.layers.len())),
            }
        }
        if self.config.loss == DeviceLoss::Tb {
            grads.push(pass.d_log_z.clone());
        }
        if grads.len() != self.slots.len() {
            return Err(GfnError::Other(format!(
                "internal: {} gradients for {} optimised tensors",
                grads.len(),
                self.slots.len()
            )));
        }
        Ok(grads)
    }

    /// Gradients of the loss of `traj` for every optimised tensor, `(name, grad)` (zeros for a
    /// tensor the loss does not reach).
    pub fn gradients(&self, traj: &Tensor) -> Result<Vec<(String, Tensor)>> {
        let loss = self.batch_loss(traj)?.loss;
        let grads = loss.backward()?;
        self.slots
            .iter()
            .map(|s| {
                let g = match grads.get(s.var.as_tensor()) {
                    Some(g) => g.clone(),
                    None => s.var.as_tensor().zeros_like()?,
                };
                Ok((s.name.clone(), g))
            })
            .collect()
    }

    /// One training step: rollout, loss, backward, Adam. Fails on a non-finite loss, naming the
    /// iteration, before touching the parameters.
    pub fn step(&mut self) -> Result<StepStats> {
        let iteration = self.iteration;
        let mut marks = [std::time::Instant::now(); 5];
        let mut mark = |k: usize, dev: &Device, on: bool| -> Result<()> {
            if on {
                dev.synchronize()?;
                marks[k] = std::time::Instant::now();
            }
            Ok(())
        };
        let traj = self.rollout(iteration, self.config.batch)?;
        mark(1, &self.device, self.profile)?;
        let (loss, grads) = if self.manual {
            let pass = self.manual_forward(&traj)?;
            mark(2, &self.device, self.profile)?;
            let grads = self.manual_backward_pass(&traj, &pass)?;
            (pass.loss, grads)
        } else {
            let loss = self.batch_loss(&traj)?.loss;
            mark(2, &self.device, self.profile)?;
            let store = loss.backward()?;
            let grads = self
                .slots
                .iter()
                .map(|s| store.get(s.var.as_tensor()).cloned())
                .collect();
            (loss, grads)
        };
        // One value back to the host per step, after the gradients are queued.
        let value = f64::from(loss.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?[0]);
        mark(3, &self.device, self.profile)?;
        if !value.is_finite() {
            return Err(GfnError::Other(format!(
                "training stopped: the loss is {value} at iteration {iteration} (on {}); lower lr or check the reward",
                self.env.name
            )));
        }
        self.adam_t += 1;
        let t = self.adam_t as i32;
        for (slot, g) in self.slots.iter_mut().zip(grads) {
            let Some(g) = g else {
                continue;
            };
            let hp = if slot.group == 0 {
                self.config.net
            } else {
                self.config.log_z
            };
            let g = g.contiguous()?;
            slot.mv.inplace_op2(
                &g,
                &AdamMoments {
                    beta1: hp.beta1 as f32,
                    beta2: hp.beta2 as f32,
                },
            )?;
            slot.var.as_tensor().inplace_op2(
                &slot.mv,
                &AdamApply {
                    lr: hp.lr as f32,
                    sm: (1.0 / (1.0 - hp.beta1.powi(t))) as f32,
                    sv: (1.0 / (1.0 - hp.beta2.powi(t))) as f32,
                    eps: hp.eps as f32,
                    decay: (1.0 - hp.lr * hp.weight_decay) as f32,
                },
            )?;
        }
        mark(4, &self.device, self.profile)?;
        self.iteration += 1;
        let phases = self
            .profile
            .then(|| [0, 1, 2, 3].map(|k| (marks[k + 1] - marks[k]).as_secs_f64()));
        Ok(StepStats { loss: value, phases })
    }
}

/// What the forward half of the hand-written pass leaves for the backward half.
struct ManualPass {
    /// Per network: its input, each hidden layer's output and its output.
    tapes: Vec<Vec<Tensor>>,
    /// Per network: its heads (`None`: not reached by the loss).
    cols: Vec<Option<HeadCols>>,
    /// The loss, `[1]`.
    loss: Tensor,
    /// `[B]` (TB) or `[3, T+1, B]` (SubTB): the gradients of the log-probabilities and flows.
    g: Tensor,
    /// `g` is per trajectory.
    per_trajectory: bool,
    /// `∂loss/∂log Z` (TB).
    d_log_z: Option<Tensor>,
}

/// The forward pass of one MLP over `x` without a graph, keeping each layer's input: the result
/// holds `x`, every hidden layer's output (after ReLU) and the output.
fn mlp_forward_tape(net: &Mlp, x: &Tensor) -> Result<Vec<Tensor>> {
    let last = net.layers.len() - 1;
    let mut acts = Vec::with_capacity(net.layers.len() + 1);
    acts.push(x.clone());
    for (i, layer) in net.layers.iter().enumerate() {
        let h = acts[i]
            .matmul(&layer.weight.as_tensor().detach())?
            .apply_op2_no_bwd(&layer.bias.as_tensor().detach(), &BiasAct { relu: i < last })?;
        acts.push(h);
    }
    Ok(acts)
}

/// The parameter gradients of one MLP, `(dW, db)` per layer input first, from the tape of
/// [`mlp_forward_tape`] and `∂loss/∂output`: `dW_k = a_kᵀ·d_k`, `db_k = Σ_rows d_k`,
/// `d_{k−1} = (d_k·W_kᵀ) ⊙ 1[a_k > 0]`.
fn mlp_backward(net: &Mlp, acts: &[Tensor], dout: Tensor) -> Result<Vec<(Tensor, Tensor)>> {
    let n = net.layers.len();
    let mut grads = Vec::with_capacity(n);
    let mut d = dout;
    for k in (0..n).rev() {
        let a = &acts[k];
        let dw = a.t()?.matmul(&d)?;
        let db = d.apply_op1_no_bwd(&ColSum)?;
        if k > 0 {
            let prev = d.matmul(&net.layers[k].weight.as_tensor().detach().t()?)?;
            prev.inplace_op2(a, &ReluGrad)?;
            d = prev;
        }
        grads.push((dw, db));
    }
    grads.reverse();
    Ok(grads)
}

/// Where the log F head is: `(net, column)`, or `None` without a flow head.
fn flow_location(est: &Estimator) -> Option<(usize, usize)> {
    let cfg = est.config();
    if !cfg.flow_head {
        return None;
    }
    let learned = cfg.backward == BackwardPolicy::Learned;
    if cfg.shared_trunk {
        Some((0, est.n_actions() + if learned { est.n_backward() } else { 0 }))
    } else {
        Some((if learned { 2 } else { 1 }, 0))
    }
}
