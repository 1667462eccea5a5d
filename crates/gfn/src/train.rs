//! The training loop: sample → loss (one batched forward) → backward → Adam step, with periodic
//! exact evaluation, metrics, checkpoints, and resume that reproduces the uninterrupted run bit for
//! bit.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::{Device, Tensor};
use serde::Serialize;

use gfn_core::exact::{DistributionMetrics, EmpiricalTracker, ExactEvaluator, ExactMetrics};
use gfn_core::fast::FastPath;
use gfn_core::optim::{Adam, AdamParams};
use gfn_core::policy::{Policy, SeamForward};
use gfn_core::{
    BackwardPolicy, Env, Estimator, EstimatorConfig, GfnRng, Sampler, SamplingOptions, TrajectoryBatch, rng_from_seed,
};
use gfn_objectives::Objective;

use crate::checkpoint::Checkpoint;
use crate::config::TrainConfig;
use crate::options::{Engine, LocalSearchAccept};
use crate::seam::{Net, PolicyKind, SeamNet};

mod ranks;
use ranks::GradSink;
pub use ranks::Ranks;

/// Salt of the measurement samples' RNG stream (`seed ^ METRIC_STREAM`).
const METRIC_STREAM: u64 = 0x6d65_6173_7572_6521;

/// One evaluation, as a line of `metrics.jsonl`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct EvalRecord {
    /// Iterations completed.
    pub iteration: u64,
    /// Trajectories sampled so far.
    pub trajectories: u64,
    /// Mean training loss since the previous evaluation.
    #[serde(deserialize_with = "gfn_core::exact::f64_or_nan")]
    pub loss: f64,
    /// Exact metrics of the current policy.
    pub exact: Option<ExactMetrics>,
    /// Empirical distribution of the last sampled terminal states against p*.
    pub empirical: Option<DistributionMetrics>,
    /// Modes visited so far by training samples.
    pub modes_found: Option<usize>,
    /// The best distinct measured objects so far (training samples, or the `metric_batch`
    /// on-policy samples).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<gfn_core::topk::TopKMetrics>,
    /// Mean reward of the last `recent_window` measured samples and its relative error to
    /// `E_{p*}[R]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recent: Option<gfn_core::topk::RecentMetrics>,
    /// LED: mean decomposition loss `(T·Σ z_t φ_t / Σ z_t − log R(x))²` of the iterations'
    /// own batches since the previous evaluation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub led_loss: Option<f64>,
    /// Gradient analysis, when enabled for this evaluation (`grad_cosine_every`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_cosine: Option<crate::gradcos::GradCosine>,
    /// The task's own figures ([`crate::task_metrics`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<std::collections::BTreeMap<String, f64>>,
    /// A conditional GFlowNet: the exact metrics at each evaluated condition.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<crate::conditions::ConditionMetrics>,
}

pub use gfn_record::EvalTiming;

/// A training run in memory.
pub struct Trainer {
    /// The configuration.
    pub config: TrainConfig,
    /// The environment.
    pub env: Box<dyn Env>,
    /// The objective.
    pub objective: Objective,
    /// The network: the MLP, or a network behind the policy seam (`policy`).
    pub net: Net,
    /// The optimiser.
    pub optimizer: Adam,
    /// The run's RNG.
    pub rng: GfnRng,
    /// Exact evaluator, when the environment is enumerable.
    pub evaluator: Option<ExactEvaluator>,
    /// A conditional environment: the exact evaluator at each evaluated condition.
    pub conditions: Vec<crate::conditions::ConditionEvaluator>,
    /// Empirical tracker of sampled terminal states.
    pub tracker: EmpiricalTracker,
    /// The best distinct measured terminal objects.
    pub top_k: gfn_core::topk::TopKTracker,
    /// Rewards of the most recent measured samples.
    pub recent: gfn_core::topk::RecentRewards,
    /// `E_{p*}[R]` and the top-k ceiling, where the task can compute them.
    pub target: Option<gfn_core::env::TargetSummary>,
    /// Seconds spent drawing the `metric_batch` measurement samples (not in `wall_seconds`).
    pub metric_seconds: f64,
    metric_rng: GfnRng,
    metric_sampler: Sampler,
    metric_samples: TrajectoryBatch,
    /// Iterations completed.
    pub iteration: u64,
    /// Trajectories sampled.
    pub trajectories: u64,
    /// Seconds spent in training steps (evaluation and I/O excluded).
    pub wall_seconds: f64,
    /// Evaluation history.
    pub history: Vec<EvalRecord>,
    /// Training seconds at every evaluation of `history`.
    pub eval_timing: Vec<EvalTiming>,
    /// LED's potential network and replay buffer (LED losses only).
    pub led: Option<crate::led::LedTrainer>,
    /// Seconds of the training steps spent on LED's potentials (included in `wall_seconds`).
    pub led_seconds: f64,
    /// Useful floating-point operations of the training steps so far: one forward and one
    /// backward pass of every network over every row the step evaluates.
    pub useful_flops: f64,
    flops_per_row: f64,
    /// The task's own metrics and what they accumulate.
    pub task: crate::task_metrics::TaskMetrics,
    sampler: Sampler,
    batch: TrajectoryBatch,
    /// Policy gradient with a trained P_B: backward trajectories from the batch's objects, and
    /// the forward and backward trajectories together.
    back: TrajectoryBatch,
    pg_batch: TrajectoryBatch,
    /// pg-trpo: the trust-region update of the P_F network and its buffers.
    trust_region: Option<gfn_objectives::trpo::TrustRegion>,
    /// pg-trpo: steps taken and steps rejected (every halving failed), for the summary.
    pub trpo_counts: (u64, u64),
    /// Replay of terminal objects re-sampled backward (`replay_size > 0`).
    pub replay: Option<crate::replay::ReplayBuffer>,
    replay_batch: usize,
    replay_rows: Vec<i32>,
    fast: Option<FastPath>,
    /// `device = cuda`: the whole training step on the GPU (shares the estimator's parameters).
    device_engine: Option<gfn_cuda::DeviceTrainer>,
    /// Device engine with profiling on: `[rollout, loss, backward, update]` seconds of the last step.
    pub device_phases: Option<[f64; 4]>,
    loss_sum: f64,
    loss_count: u64,
    led_loss_sum: f64,
    /// A data-parallel run's ranks ([`Trainer::distribute`]).
    ranks: Option<Ranks>,
    /// The ranks' generator states a restored checkpoint saved (eight words each).
    saved_streams: Vec<u32>,
}

/// Build the estimator and optimiser of `config` for `env`, parameters drawn from `rng`.
pub fn build_model(
    config: &TrainConfig,
    env: &dyn Env,
    objective: Objective,
    device: &Device,
    rng: &mut GfnRng,
) -> Result<(Estimator, Adam)> {
    let est_config = EstimatorConfig {
        hidden: config.hidden,
        layers: config.layers,
        shared_trunk: config.shared_trunk,
        backward: if objective.uses_backward_policy() {
            config.backward_policy
        } else {
            BackwardPolicy::Uniform
        },
        // A conditional environment's log Z(c) is the flow head at s_0(c).
        flow_head: objective.needs_flow_head() || env.condition_space().is_some(),
    };
    let estimator = Estimator::new(
        est_config,
        env.feature_dim(),
        env.n_actions(),
        env.n_backward_actions(),
        device,
        rng,
    )?;
    let mut params: Vec<_> = estimator.named_params().into_iter().map(|(n, v)| (n, v, 0)).collect();
    if objective.uses_log_z() {
        params.push(("log_z".into(), estimator.log_z().clone(), 1));
    }
    let groups = vec![
        AdamParams {
            weight_decay: config.weight_decay,
            ..AdamParams::adam(config.lr)
        },
        AdamParams::adam(config.lr_logz),
    ];
    Ok((estimator, Adam::new(params, groups)))
}

impl Trainer {
    /// A fresh run on the environment the configuration names.
    pub fn new(config: TrainConfig, device: &Device) -> Result<Self> {
        config.validate()?;
        let env = crate::envs::build_env(&config)?;
        Self::with_env(config, env, device)
    }

    /// A fresh run on any environment (the configuration's environment fields are ignored).
    pub fn with_env(config: TrainConfig, env: Box<dyn Env>, device: &Device) -> Result<Self> {
        config.validate_training()?;
        let objective = config.objective()?;
        objective.check_env(env.as_ref())?;
        let mut rng = rng_from_seed(config.seed);
        let engine_device = match config.engine_device() {
            Some(Some(n)) => Some(gfn_cuda::cuda_device(n)?),
            Some(None) => Some(Device::Cpu),
            None => None,
        };
        let device = engine_device.as_ref().unwrap_or(device);
        let (net, optimizer) = match config.policy {
            PolicyKind::Mlp => {
                let (estimator, optimizer) = build_model(&config, env.as_ref(), objective, device, &mut rng)?;
                (Net::Mlp(estimator), optimizer)
            }
            PolicyKind::Transformer | PolicyKind::Gin => {
                let (seam, optimizer) = SeamNet::new(&config, env.as_ref(), objective, device, &mut rng)?;
                (Net::Seam(Box::new(seam)), optimizer)
            }
        };
        if engine_device.is_some() && env.condition_space().is_some() {
            bail!(
                "invalid device = {}: the device engine has one initial state and a scalar log Z; the conditional {} trains on the cpu engines",
                config.device,
                env.name()
            );
        }
        let device_engine = match &engine_device {
            Some(_) => Some(crate::device::device_trainer(&config, net.mlp()?)?),
            None => None,
        };
        let led = if objective.needs_potentials() {
            Some(crate::led::LedTrainer::new(
                &config,
                env.feature_dim(),
                device,
                &mut rng,
            )?)
        } else {
            None
        };
        let evaluator = ExactEvaluator::new(env.as_ref()).ok();
        let conditions = crate::conditions::condition_evaluators(env.as_ref(), &config.eval_conditions)?;
        let task = crate::task_metrics::TaskMetrics::new(&config, env.as_ref())?;
        if config.local_search > 0 && config.local_search_accept == LocalSearchAccept::Mh && env.exit_action().is_some()
        {
            bail!(
                "invalid local_search_accept = mh: on an environment with an exit action ({}) the back-and-forth walk's forward part has a random length, so its reverse-move probability is not the kernel's; use greedy there",
                env.name()
            );
        }
        // Which objectives may replay is checked by TrainConfig::validate_training.
        let replay = if config.replay_size > 0 {
            Some(crate::replay::ReplayBuffer::new(
                config.replay_size,
                env.state_dim(),
                config.replay_priority,
            ))
        } else {
            None
        };
        let replay_batch = if config.replay_batch == 0 {
            config.batch_size
        } else {
            config.replay_batch
        };
        let trust_region = match objective {
            Objective::PolicyGradient(c) if c.variant == gfn_objectives::PgVariant::TrustRegion => {
                Some(gfn_objectives::trpo::TrustRegion::new(config.trust_region())?)
            }
            _ => None,
        };
        let tracker = EmpiricalTracker::new(config.empirical_window);
        let top_k = gfn_core::topk::TopKTracker::new(config.top_k);
        let recent = gfn_core::topk::RecentRewards::new(config.recent_window);
        let target = match &evaluator {
            Some(ev) => Some(ev.target_summary(config.top_k)),
            None => env.target_summary(config.top_k),
        };
        let metric_rng = rng_from_seed(config.seed ^ METRIC_STREAM);
        let (flops_per_row, fast) = match &net {
            Net::Mlp(estimator) => (
                useful_flops_per_row(estimator),
                match config.engine {
                    Engine::Graph => None,
                    Engine::Tape if !FastPath::supports(estimator) => {
                        bail!("invalid engine = tape: it needs f32 parameters on the CPU")
                    }
                    _ => FastPath::supports(estimator).then(FastPath::default),
                },
            ),
            Net::Seam(seam) => (seam.flops_per_row(), None),
        };
        Ok(Self {
            config,
            env,
            objective,
            net,
            optimizer,
            rng,
            evaluator,
            conditions,
            tracker,
            top_k,
            recent,
            target,
            metric_seconds: 0.0,
            metric_rng,
            metric_sampler: Sampler::new(),
            metric_samples: TrajectoryBatch::default(),
            iteration: 0,
            trajectories: 0,
            wall_seconds: 0.0,
            history: Vec::new(),
            led,
            led_seconds: 0.0,
            eval_timing: Vec::new(),
            useful_flops: 0.0,
            flops_per_row,
            task,
            sampler: Sampler::new(),
            batch: TrajectoryBatch::default(),
            back: TrajectoryBatch::default(),
            pg_batch: TrajectoryBatch::default(),
            trust_region,
            trpo_counts: (0, 0),
            replay,
            replay_batch,
            replay_rows: Vec::new(),
            fast: if device_engine.is_some() { None } else { fast },
            device_engine,
            device_phases: None,
            loss_sum: 0.0,
            loss_count: 0,
            led_loss_sum: 0.0,
            ranks: None,
            saved_streams: Vec::new(),
        })
    }

    /// The training engine in use: `tape` (CPU fast path), `graph` (candle autograd) or
    /// `device` (gfn-cuda: the whole step on the GPU).
    pub fn engine(&self) -> &'static str {
        if self.device_engine.is_some() {
            "device"
        } else if self.fast.is_some() {
            "tape"
        } else {
            "graph"
        }
    }

    /// Where training runs: `cpu`, `cpu-kernels`, `cuda` or `cuda:N` (as configured).
    pub fn device_name(&self) -> String {
        self.config.device.to_string()
    }

    /// Profile the device engine's steps (phases in [`Trainer::device_phases`]); false when
    /// training runs on the CPU.
    pub fn set_device_profile(&mut self, on: bool) -> bool {
        match &mut self.device_engine {
            Some(dt) => {
                dt.set_profile(on);
                true
            }
            None => false,
        }
    }

    /// Sampling options of this iteration (ε and temperature follow their schedules, if any).
    pub fn sampling_options(&self) -> SamplingOptions {
        self.config.sampling_at(self.iteration)
    }

    /// One training iteration, then the measurement samples; returns the loss. Errors name
    /// the iteration.
    pub fn step(&mut self) -> Result<f64> {
        let _flush = gfn_core::denormals::FlushDenormals::enable();
        let it = self.iteration + 1;
        // A reward on a schedule (MIS's annealed β) follows the trajectories sampled so far.
        self.env.set_training_progress(self.trajectories);
        let loss = self
            .step_inner()
            .with_context(|| format!("training stopped at iteration {it}"))?;
        self.measure()
            .with_context(|| format!("measurement sampling failed at iteration {it}"))?;
        Ok(loss)
    }

    /// Feed the top-k and recent-reward metrics: the training batch, or with `metric_batch > 0`
    /// that many trajectories drawn from the current policy without exploration, from their own
    /// RNG stream (so the training run is the same whether or not it is measured).
    fn measure(&mut self) -> Result<()> {
        let n = self.config.metric_batch;
        // A data-parallel step records every rank's objects itself; only rank 0 measures.
        if self.ranks.is_some() && (n == 0 || !self.is_rank0()) {
            return Ok(());
        }
        let batch = if n == 0 {
            &self.batch
        } else {
            let start = Instant::now();
            let env = self.env.as_ref();
            let opts = SamplingOptions::default();
            let (rng, out) = (&mut self.metric_rng, &mut self.metric_samples);
            self.net.sample(env, &mut self.metric_sampler, n, opts, rng, out)?;
            self.metric_seconds += start.elapsed().as_secs_f64();
            &self.metric_samples
        };
        for b in 0..batch.batch_size {
            self.top_k.record(batch.terminal_state(b), batch.log_reward[b]);
            self.recent.record(batch.log_reward[b]);
        }
        Ok(())
    }

    fn step_inner(&mut self) -> Result<f64> {
        if let Some(dt) = &mut self.device_engine {
            let start = Instant::now();
            let opts = self.config.sampling_at(self.iteration);
            dt.set_sampling(opts.epsilon, opts.temperature)?;
            let stats = dt.step()?;
            let value = stats.loss;
            self.device_phases = stats.phases;
            let rows = (dt.max_steps() + 1) * self.config.batch_size;
            self.finish_step(start, rows, value);
            return Ok(value);
        }
        if let Objective::PolicyGradient(_) = self.objective {
            return self.pg_step();
        }
        if self.ranks.is_some() {
            return self.distributed_step();
        }
        let start = Instant::now();
        let value = self.local_step(GradSink::Apply)?;
        if let Some(replay) = &mut self.replay {
            replay.add(&self.batch);
        }
        if let Some(led) = &mut self.led {
            let t = Instant::now();
            self.led_loss_sum += led.update(&mut self.rng).context("the LED potential update failed")?;
            self.led_seconds += t.elapsed().as_secs_f64();
        }
        let rows = self.batch.num_rows();
        self.finish_step(start, rows, value);
        Ok(value)
    }

    /// Sample a batch with `self.rng`, compute the loss and its gradients, and hand them to
    /// `sink` (the optimiser, or a distributed step's buffer); returns the loss.
    fn local_step(&mut self, mut sink: GradSink<'_>) -> Result<f64> {
        let opts = self.sampling_options();
        let env = self.env.as_ref();
        let n = self.config.batch_size;
        let (loss, value) = match (&self.net, &mut self.fast) {
            // A network behind the policy seam: the reference path's steps through the seam.
            (Net::Seam(seam), _) => {
                let obs = |s: &[i32]| seam.observe(env, s);
                let mut rollout = seam.rollout(env, &obs);
                self.sampler
                    .sample_forward_with(env, &mut rollout, n, opts, &mut self.rng, &mut self.batch)?;
                let offsets = led_offsets(&mut self.led, &self.batch, &mut self.led_seconds)?;
                if self.config.local_search > 0 {
                    local_search(
                        env,
                        &mut rollout,
                        &self.config,
                        &self.batch,
                        &mut self.rng,
                        &mut self.replay_rows,
                    )?;
                }
                let batch = training_batch(
                    &mut self.sampler,
                    env,
                    Walker::Seam(&mut rollout),
                    Extra {
                        replay: &mut self.replay,
                        local_search: self.config.local_search,
                        replay_batch: self.replay_batch,
                        rows: &mut self.replay_rows,
                    },
                    &mut self.rng,
                    &mut self.back,
                    &self.batch,
                    &mut self.pg_batch,
                )?;
                let loss = seam.loss(env, batch, offsets.as_deref())?;
                let value = check_finite(&loss, self.objective, self.iteration)?;
                sink.store(&mut self.optimizer, &loss.backward()?)?;
                for _ in 1..self.config.updates_per_batch {
                    let again = seam.loss(env, batch, offsets.as_deref())?;
                    check_finite(&again, self.objective, self.iteration)?;
                    self.optimizer.step(&again.backward()?)?;
                }
                (loss, value)
            }
            // Fast path: the rollout records the outputs, the loss reuses them, one batched backward.
            (Net::Mlp(est), Some(fast)) => {
                fast.clear();
                let mut view = fast.view(est);
                self.sampler
                    .sample_forward_with(env, &mut view, n, opts, &mut self.rng, &mut self.batch)?;
                let offsets = led_offsets(&mut self.led, &self.batch, &mut self.led_seconds)?;
                if self.config.local_search > 0 {
                    self.replay_rows.clear();
                    let mut policy = gfn_core::local_search::InferencePolicy::new(env, est)
                        .ok_or_else(|| anyhow::anyhow!("the tape engine needs f32 parameters on the CPU"))?;
                    local_search(
                        env,
                        &mut policy,
                        &self.config,
                        &self.batch,
                        &mut self.rng,
                        &mut self.replay_rows,
                    )?;
                }
                let batch = training_batch(
                    &mut self.sampler,
                    env,
                    Walker::Taped(&mut view),
                    Extra {
                        replay: &mut self.replay,
                        local_search: self.config.local_search,
                        replay_batch: self.replay_batch,
                        rows: &mut self.replay_rows,
                    },
                    &mut self.rng,
                    &mut self.back,
                    &self.batch,
                    &mut self.pg_batch,
                )?;
                let repeat_offsets = (self.config.updates_per_batch > 1).then(|| offsets.clone());
                let loss = self.objective.loss_with_offsets(env, batch, &mut view, offsets)?;
                let value = check_finite(&loss, self.objective, self.iteration)?;
                let grads = loss.backward()?;
                let log_z_grad = match grads.get(est.log_z().as_tensor()) {
                    Some(g) => g.flatten_all()?.to_vec1::<f32>()?,
                    None => vec![0.0],
                };
                let mut slices: Vec<Option<&[f32]>> = fast.backward(est, &grads)?.into_iter().map(Some).collect();
                if self.objective.uses_log_z() {
                    slices.push(Some(&log_z_grad));
                }
                sink.slices(&mut self.optimizer, &slices)?;
                // Further updates on the same batch: the tape recorded the rollout's parameters,
                // so these go through candle's graph.
                if let Some(offsets) = repeat_offsets {
                    for _ in 1..self.config.updates_per_batch {
                        let again = self
                            .objective
                            .loss_with_offsets(env, batch, &mut &*est, offsets.clone())?;
                        check_finite(&again, self.objective, self.iteration)?;
                        self.optimizer.step(&again.backward()?)?;
                    }
                }
                (loss, value)
            }
            // Reference path: no-grad rollout, then one batched forward with candle's graph.
            (Net::Mlp(est), None) => {
                self.sampler
                    .sample_forward(env, est, n, opts, &mut self.rng, &mut self.batch)?;
                let offsets = led_offsets(&mut self.led, &self.batch, &mut self.led_seconds)?;
                if self.config.local_search > 0 {
                    self.replay_rows.clear();
                    let mut policy = gfn_core::local_search::EstimatorPolicy::new(env, est);
                    local_search(
                        env,
                        &mut policy,
                        &self.config,
                        &self.batch,
                        &mut self.rng,
                        &mut self.replay_rows,
                    )?;
                }
                let batch = training_batch(
                    &mut self.sampler,
                    env,
                    Walker::Graph(est),
                    Extra {
                        replay: &mut self.replay,
                        local_search: self.config.local_search,
                        replay_batch: self.replay_batch,
                        rows: &mut self.replay_rows,
                    },
                    &mut self.rng,
                    &mut self.back,
                    &self.batch,
                    &mut self.pg_batch,
                )?;
                let loss = self
                    .objective
                    .loss_with_offsets(env, batch, &mut &*est, offsets.clone())?;
                let value = check_finite(&loss, self.objective, self.iteration)?;
                let grads = loss.backward()?;
                sink.store(&mut self.optimizer, &grads)?;
                for _ in 1..self.config.updates_per_batch {
                    let again = self
                        .objective
                        .loss_with_offsets(env, batch, &mut &*est, offsets.clone())?;
                    check_finite(&again, self.objective, self.iteration)?;
                    self.optimizer.step(&again.backward()?)?;
                }
                (loss, value)
            }
        };
        drop(loss);
        Ok(value)
    }

    /// Bookkeeping after a training step of `rows` evaluated rows.
    fn finish_step(&mut self, start: Instant, rows: usize, value: f64) {
        self.count_step(start, rows, value, self.config.batch_size as u64);
        self.task.record(&self.batch);
        if let Some(ev) = &self.evaluator {
            for b in 0..self.batch.batch_size {
                let x = self.batch.terminal_state(b);
                if let Some(t) = ev.terminal_index(x) {
                    self.tracker.record(t, ev.modes()[t]);
                }
            }
        }
    }

    /// The counters of a finished step of `rows` evaluated rows and `trajectories` sampled.
    fn count_step(&mut self, start: Instant, rows: usize, value: f64, trajectories: u64) {
        self.wall_seconds += start.elapsed().as_secs_f64();
        self.useful_flops += self.flops_per_row * rows as f64;
        self.iteration += 1;
        self.trajectories += trajectories;
        self.loss_sum += value;
        self.loss_count += 1;
    }

    /// One sampled object of a data-parallel step into the task's metrics, the empirical
    /// tracker and (measuring the training samples) the top-k and recent rewards.
    fn record_object(&mut self, x: &[i32], log_reward: f64) {
        self.task.record_object(x);
        if let Some(ev) = &self.evaluator
            && let Some(t) = ev.terminal_index(x)
        {
            self.tracker.record(t, ev.modes()[t]);
        }
        if self.config.metric_batch == 0 {
            self.top_k.record(x, log_reward);
            self.recent.record(log_reward);
        }
    }

    /// A policy-gradient step (`pg-u`, `pg-b`, `pg-g`, `pg-trpo`): forward trajectories, and for a trained
    /// P_B backward ones from their objects, evaluated together in one batched pass; returns
    /// the forward batch's TB loss `mean (Σ_t c_t)²`.
    fn pg_step(&mut self) -> Result<f64> {
        let start = Instant::now();
        let (value, rows) = match &self.net {
            Net::Seam(_) => self.pg_seam()?,
            Net::Mlp(_) => self.pg_mlp()?,
        };
        if !value.is_finite() {
            bail!(
                "the {} loss is {value} at iteration {}",
                self.objective.name(),
                self.iteration + 1
            );
        }
        self.finish_step(start, rows, value);
        Ok(value)
    }

    /// [`Trainer::pg_step`] of a network behind the seam: its value head is log F; RL-T's trust
    /// region moves all of its parameters (finite-difference `J·v`,
    /// [`gfn_objectives::trpo::FiniteDifferenceJvp`]), then the optimiser applies the value and
    /// log Z terms' gradients (taken at the same old parameters). Returns the TB loss and the
    /// rows evaluated.
    fn pg_seam(&mut self) -> Result<(f64, usize)> {
        let opts = self.sampling_options();
        let env = self.env.as_ref();
        let n = self.config.batch_size;
        let backward = self.objective.needs_backward_batch();
        let Net::Seam(seam) = &self.net else {
            bail!("pg_seam needs a network behind the seam");
        };
        let obs = |s: &[i32]| seam.observe(env, s);
        let mut rollout = seam.rollout(env, &obs);
        self.sampler
            .sample_forward_with(env, &mut rollout, n, opts, &mut self.rng, &mut self.batch)?;
        let batch = if backward {
            join_backward(
                &mut self.sampler,
                env,
                Walker::Seam(&mut rollout),
                &self.batch.terminal_states,
                &mut self.rng,
                &mut self.back,
                &self.batch,
                &mut self.pg_batch,
            )?
        } else {
            &self.batch
        };
        let mut forward = SeamForward {
            policy: seam.policy(),
            observe: &obs,
        };
        let (parts, stats, pf_logits) = self.objective.pg_parts(env, batch, n, &mut forward)?;
        let total = parts.total()?;
        check_finite(&total, self.objective, self.iteration)?;
        match &mut self.trust_region {
            None => self.optimizer.step(&total.backward()?)?,
            Some(tr) => {
                let mut policy = gfn_objectives::trpo::FiniteDifferenceJvp::new(seam.policy(), &obs);
                let surrogate = parts.forward_surrogate.backward()?;
                let mut g = Vec::new();
                for (_, var) in seam.policy().named_params() {
                    match surrogate.get(var.as_tensor()) {
                        Some(t) => g.extend(t.flatten_all()?.to_vec1::<f32>()?),
                        None => g.extend(std::iter::repeat_n(0.0, var.elem_count())),
                    }
                }
                let rest = parts.rest()?.backward()?;
                let logits = pf_logits.detach().flatten_all()?.to_vec1::<f32>()?;
                let steps = gfn_objectives::trpo::PolicySteps::from_batch(batch, n, &logits, &stats.advantages)?;
                let outcome = tr
                    .step_with(&mut policy, &steps, &g)
                    .context("the trust-region step failed")?;
                count_trpo(&mut self.trpo_counts, outcome);
                self.optimizer.step(&rest)?;
            }
        }
        Ok((stats.tb_loss, batch.num_rows()))
    }

    /// [`Trainer::pg_step`] of the MLP, on the tape or candle's graph.
    fn pg_mlp(&mut self) -> Result<(f64, usize)> {
        let opts = self.sampling_options();
        let env = self.env.as_ref();
        let n = self.config.batch_size;
        let backward = self.objective.needs_backward_batch();
        let est = self.net.mlp()?;
        let out = match &mut self.fast {
            Some(fast) => {
                fast.clear();
                let mut view = fast.view(est);
                self.sampler
                    .sample_forward_with(env, &mut view, n, opts, &mut self.rng, &mut self.batch)?;
                let batch = if backward {
                    join_backward(
                        &mut self.sampler,
                        env,
                        Walker::Taped(&mut view),
                        &self.batch.terminal_states,
                        &mut self.rng,
                        &mut self.back,
                        &self.batch,
                        &mut self.pg_batch,
                    )?
                } else {
                    &self.batch
                };
                let (loss, stats, pf_logits) = self.objective.pg_loss(env, batch, n, &mut view)?;
                check_finite(&loss, self.objective, self.iteration)?;
                let grads = loss.backward()?;
                let log_z_grad = match grads.get(est.log_z().as_tensor()) {
                    Some(g) => g.flatten_all()?.to_vec1::<f32>()?,
                    None => vec![0.0],
                };
                let mut slices: Vec<Option<&[f32]>> = fast.backward(est, &grads)?.into_iter().map(Some).collect();
                slices.push(Some(&log_z_grad));
                // RL-T: the P_F network's gradient goes to the trust-region step, not to Adam.
                let pf_grad = match &self.trust_region {
                    Some(_) => {
                        let k = 2 * est.nets()[0].layers.len();
                        let mut g = Vec::with_capacity(est.nets()[0].num_params());
                        for s in &mut slices[..k] {
                            g.extend_from_slice(s.take().unwrap_or_default());
                        }
                        Some(g)
                    }
                    None => None,
                };
                self.optimizer.step_slices(&slices)?;
                if let (Some(tr), Some(g)) = (&mut self.trust_region, pf_grad) {
                    let outcome = trust_region_step(tr, est, batch, n, &pf_logits, &stats.advantages, &g)?;
                    count_trpo(&mut self.trpo_counts, outcome);
                }
                (stats.tb_loss, batch.num_rows())
            }
            None => {
                self.sampler
                    .sample_forward(env, est, n, opts, &mut self.rng, &mut self.batch)?;
                let batch = if backward {
                    join_backward(
                        &mut self.sampler,
                        env,
                        Walker::Graph(est),
                        &self.batch.terminal_states,
                        &mut self.rng,
                        &mut self.back,
                        &self.batch,
                        &mut self.pg_batch,
                    )?
                } else {
                    &self.batch
                };
                let (loss, stats, pf_logits) = self.objective.pg_loss(env, batch, n, &mut &*est)?;
                check_finite(&loss, self.objective, self.iteration)?;
                let mut grads = loss.backward()?;
                // RL-T: the P_F network's gradient goes to the trust-region step, not to Adam.
                let pf_grad = match &self.trust_region {
                    Some(_) => {
                        let mut g = Vec::with_capacity(est.nets()[0].num_params());
                        for layer in &est.nets()[0].layers {
                            for var in [&layer.weight, &layer.bias] {
                                match grads.remove(var.as_tensor()) {
                                    Some(t) => g.extend(t.flatten_all()?.to_vec1::<f32>()?),
                                    None => g.extend(std::iter::repeat_n(0.0, var.elem_count())),
                                }
                            }
                        }
                        Some(g)
                    }
                    None => None,
                };
                self.optimizer.step(&grads)?;
                if let (Some(tr), Some(g)) = (&mut self.trust_region, pf_grad) {
                    let outcome = trust_region_step(tr, est, batch, n, &pf_logits, &stats.advantages, &g)?;
                    count_trpo(&mut self.trpo_counts, outcome);
                }
                (stats.tb_loss, batch.num_rows())
            }
        };
        Ok(out)
    }

    /// Evaluate now and append to the history.
    pub fn evaluate(&mut self) -> Result<EvalRecord> {
        let _flush = gfn_core::denormals::FlushDenormals::enable();
        let log_z = self.net.log_z_estimate(&self.objective, self.env.as_ref())?;
        let log_pf = match &self.evaluator {
            Some(ev) => Some(self.net.exact_log_pf(ev, self.env.as_ref())?),
            None => None,
        };
        let (exact, empirical, modes_found) = match (&self.evaluator, &log_pf) {
            (Some(ev), Some(log_pf)) => (
                Some(ev.metrics_for(log_pf, log_z)),
                (!self.tracker.is_empty()).then(|| self.tracker.metrics(ev.target())),
                Some(self.tracker.modes_found()),
            ),
            _ => (None, None, None),
        };
        // Its own RNG per evaluation, keyed by the iteration: nothing to checkpoint.
        let mut task_rng = crate::task_metrics::rng(self.config.seed ^ self.iteration.rotate_left(32));
        let task = self
            .task
            .evaluate(self.evaluator.as_ref(), log_pf.as_deref(), &self.net, &mut task_rng)
            .with_context(|| format!("the task's metrics failed at iteration {}", self.iteration))?;
        let led_loss = (self.led.is_some() && self.loss_count > 0).then(|| self.led_loss_sum / self.loss_count as f64);
        let loss = if self.loss_count > 0 {
            self.loss_sum / self.loss_count as f64
        } else {
            f64::NAN
        };
        // The window restarts at periodic evaluations only, so a final evaluation at an odd
        // iteration does not change what a resumed, longer run reports later.
        if self.iteration.is_multiple_of(self.config.eval_every as u64) {
            self.loss_sum = 0.0;
            self.loss_count = 0;
            self.led_loss_sum = 0.0;
        }
        let every = self.config.grad_cosine_every as u64;
        let grad_cosine = if every > 0 && self.iteration > 0 && self.iteration.is_multiple_of(every) {
            Some(crate::gradcos::grad_cosines(
                self,
                self.config.grad_cosine_batch,
                self.config.grad_cosine_repeats,
            )?)
        } else {
            None
        };
        let conditions =
            crate::conditions::evaluate_conditions(&self.net, &self.objective, self.env.as_ref(), &self.conditions)?;
        let rec = EvalRecord {
            conditions,
            iteration: self.iteration,
            trajectories: self.trajectories,
            loss,
            exact,
            empirical,
            modes_found,
            top_k: self.top_k.metrics(|a, b| self.env.object_distance(a, b)),
            recent: self.recent.metrics(self.target.map(|t| t.mean_reward)),
            led_loss,
            grad_cosine,
            task,
        };
        self.history.push(rec.clone());
        self.eval_timing.push(EvalTiming {
            iteration: self.iteration,
            wall_seconds: self.wall_seconds,
        });
        Ok(rec)
    }

    /// Current state as a checkpoint.
    pub fn checkpoint(&self) -> Result<Checkpoint> {
        let mut tensors = Vec::new();
        let mut push = |name: String, t: &Tensor| -> Result<()> {
            tensors.push((name, t.dims().to_vec(), t.flatten_all()?.to_vec1::<f32>()?));
            Ok(())
        };
        for (n, v) in self.net.named_params() {
            push(format!("param/{n}"), v.as_tensor())?;
        }
        push("param/log_z".into(), self.net.log_z().as_tensor())?;
        match &self.device_engine {
            Some(dt) => {
                for (name, mv) in dt.optimizer_state() {
                    let mv = mv.to_vec1::<f32>()?;
                    let n = mv.len() / 2;
                    tensors.push((format!("adam_m/{name}"), vec![n], mv[..n].to_vec()));
                    tensors.push((format!("adam_v/{name}"), vec![n], mv[n..].to_vec()));
                }
            }
            None => {
                for s in &self.optimizer.slots {
                    let shape = s.var.dims().to_vec();
                    tensors.push((format!("adam_m/{}", s.name), shape.clone(), s.m.clone()));
                    tensors.push((format!("adam_v/{}", s.name), shape, s.v.clone()));
                }
            }
        }
        let mut aux = Vec::new();
        if let Some(replay) = &self.replay {
            let (states, log_reward, next) = replay.save();
            aux.push((
                "replay/states".into(),
                vec![states.len()],
                crate::checkpoint::AuxData::F64(states),
            ));
            aux.push((
                "replay/log_reward".into(),
                vec![log_reward.len()],
                crate::checkpoint::AuxData::F64(log_reward),
            ));
            aux.push((
                "replay/next".into(),
                vec![1],
                crate::checkpoint::AuxData::U32(vec![next]),
            ));
        }
        if let Some(state) = self.task.state() {
            aux.push((
                "task/state".into(),
                vec![state.len()],
                crate::checkpoint::AuxData::U32(state),
            ));
        }
        if self.trust_region.is_some() {
            let (steps, rejected) = self.trpo_counts;
            aux.push((
                "trpo/counts".into(),
                vec![2],
                crate::checkpoint::AuxData::F64(vec![steps as f64, rejected as f64]),
            ));
        }
        if let Some(words) = self.rank_streams() {
            aux.push((
                "ranks/rng".into(),
                vec![words.len() / 8, 8],
                crate::checkpoint::AuxData::U32(words.to_vec()),
            ));
        }
        if let Some(led) = &self.led {
            led.save(&mut tensors, &mut aux)?;
            aux.push((
                "led/loss_sum".into(),
                vec![1],
                crate::checkpoint::AuxData::F64(vec![self.led_loss_sum]),
            ));
        }
        Ok(Checkpoint {
            iteration: self.iteration,
            trajectories: self.trajectories,
            rng: self.rng.clone(),
            adam_t: match &self.device_engine {
                Some(dt) => dt.adam_steps(),
                None => self.optimizer.t,
            },
            loss_window: (self.loss_sum, self.loss_count),
            tracker: self.tracker.clone(),
            top_k: self.top_k.clone(),
            recent: self.recent.clone(),
            metric_rng: self.metric_rng.clone(),
            tensors,
            aux,
            config_hash: self.config.binding_hash(),
        })
    }

    /// Restore parameters, optimiser and counters from `ck` (the model must have been built from
    /// the same configuration).
    pub fn restore(&mut self, ck: &Checkpoint) -> Result<()> {
        let set = |name: &str, var: &candle_core::Var| -> Result<()> {
            let (_, shape, data) = ck.tensor(name)?;
            if shape.as_slice() != var.dims() {
                bail!("tensor {name} has shape {shape:?}, the model expects {:?}", var.dims());
            }
            var.set(&Tensor::from_slice(data, shape.as_slice(), var.device())?)?;
            Ok(())
        };
        for (n, v) in self.net.named_params() {
            set(&format!("param/{n}"), &v)?;
        }
        set("param/log_z", self.net.log_z())?;
        for s in &mut self.optimizer.slots {
            for (kind, dst) in [("adam_m", &mut s.m), ("adam_v", &mut s.v)] {
                let (_, _, data) = ck.tensor(&format!("{kind}/{}", s.name))?;
                if data.len() != dst.len() {
                    bail!("optimiser state {kind}/{} has the wrong size", s.name);
                }
                dst.copy_from_slice(data);
            }
        }
        self.optimizer.t = ck.adam_t;
        if let Some(dt) = &mut self.device_engine {
            let mut state = Vec::new();
            for (name, _) in dt.optimizer_state() {
                let (_, _, m) = ck.tensor(&format!("adam_m/{name}"))?;
                let (_, _, v) = ck.tensor(&format!("adam_v/{name}"))?;
                let mv: Vec<f32> = m.iter().chain(v.iter()).copied().collect();
                let len = mv.len();
                state.push((name, Tensor::from_vec(mv, len, &Device::Cpu)?));
            }
            dt.set_optimizer_state(ck.adam_t, &state)?;
            dt.set_iteration(ck.iteration);
        }
        if let Some(replay) = &mut self.replay {
            use crate::checkpoint::AuxData;
            match (
                &ck.aux("replay/states")?.2,
                &ck.aux("replay/log_reward")?.2,
                &ck.aux("replay/next")?.2,
            ) {
                (AuxData::F64(states), AuxData::F64(log_reward), AuxData::U32(next)) if next.len() == 1 => {
                    replay.restore(states, log_reward, next[0])?
                }
                _ => bail!("checkpoint replay buffer tensors have the wrong types"),
            }
        }
        if self.task.state().is_some() {
            match &ck.aux("task/state")?.2 {
                crate::checkpoint::AuxData::U32(v) => self.task.restore(v)?,
                _ => bail!("checkpoint tensor task/state should be U32"),
            }
        }
        if self.trust_region.is_some() {
            self.trpo_counts = match &ck.aux("trpo/counts")?.2 {
                crate::checkpoint::AuxData::F64(v) if v.len() == 2 => (v[0] as u64, v[1] as u64),
                _ => bail!("checkpoint tensor trpo/counts should be two F64"),
            };
        }
        if let Some(led) = &mut self.led {
            led.restore(ck)?;
            self.led_loss_sum = match &ck.aux("led/loss_sum")?.2 {
                crate::checkpoint::AuxData::F64(v) if v.len() == 1 => v[0],
                _ => bail!("checkpoint tensor led/loss_sum should be one F64"),
            };
        }
        self.iteration = ck.iteration;
        self.trajectories = ck.trajectories;
        self.rng = ck.rng.clone();
        self.tracker = ck.tracker.clone();
        self.top_k = ck.top_k.clone();
        self.recent = ck.recent.clone();
        self.metric_rng = ck.metric_rng.clone();
        (self.loss_sum, self.loss_count) = ck.loss_window;
        self.saved_streams = ranks::saved_streams(ck)?;
        if let Some(r) = self.ranks.take() {
            let verify = r.verify();
            self.distribute(r.into_comm())?;
            if let Some(r) = &mut self.ranks {
                r.set_verify(verify);
            }
        }
        Ok(())
    }
}

/// What walks back with P_B: the fast path's taped view, the estimator through candle, or a
/// network behind the policy seam.
enum Walker<'v, 'a> {
    Taped(&'v mut gfn_core::fast::Taped<'a>),
    Graph(&'v Estimator),
    Seam(&'v mut gfn_core::policy::SeamRollout<'a>),
}

/// Where extra objects for a step come from: local search's refined objects (already in `rows`)
/// or the replay buffer.
struct Extra<'r> {
    replay: &'r mut Option<crate::replay::ReplayBuffer>,
    local_search: usize,
    replay_batch: usize,
    rows: &'r mut Vec<i32>,
}

/// The batch the loss sees: `batch` alone, or with the step's extra objects (local search's, or
/// `replay_batch` drawn from the replay buffer) walked back with P_B and joined after it
/// ([`join_backward`]).
#[allow(clippy::too_many_arguments)]
fn training_batch<'j>(
    sampler: &mut Sampler,
    env: &dyn Env,
    walker: Walker<'_, '_>,
    extra: Extra<'_>,
    rng: &mut GfnRng,
    back: &mut TrajectoryBatch,
    batch: &'j TrajectoryBatch,
    joined: &'j mut TrajectoryBatch,
) -> Result<&'j TrajectoryBatch> {
    match extra.replay {
        _ if extra.local_search > 0 => {}
        Some(replay) if !replay.is_empty() => replay.draw(extra.replay_batch, rng, extra.rows),
        _ => return Ok(batch),
    }
    join_backward(sampler, env, walker, extra.rows, rng, back, batch, joined)
}

/// Walk back with P_B from `objects` into `back` and join the walks after `batch` in `joined`.
/// The taped view then records the walks' initial states, the one row the walk did not evaluate
/// (they come last), so the loss finds every row on the tape.
#[allow(clippy::too_many_arguments)]
fn join_backward<'j>(
    sampler: &mut Sampler,
    env: &dyn Env,
    walker: Walker<'_, '_>,
    objects: &[i32],
    rng: &mut GfnRng,
    back: &mut TrajectoryBatch,
    batch: &TrajectoryBatch,
    joined: &'j mut TrajectoryBatch,
) -> Result<&'j TrajectoryBatch> {
    match walker {
        Walker::Taped(view) => {
            sampler.sample_backward_with(env, view, objects, rng, back)?;
            let walked = back.num_rows() - back.batch_size;
            view.record(&back.features[walked * back.feature_dim..], back.batch_size)?;
        }
        Walker::Graph(est) => sampler.sample_backward(env, est, objects, rng, back)?,
        Walker::Seam(rollout) => sampler.sample_backward_with(env, rollout, objects, rng, back)?,
    }
    joined.clone_from(batch);
    joined.append(back)?;
    Ok(joined)
}

/// RL-T's trust-region step of the P_F network (`est.nets()[0]`) on the first `n_forward`
/// trajectories of `batch`, from the loss pass's P_F logits of every row, the forward advantages
/// and the P_F network's gradient of the surrogate.
fn trust_region_step(
    tr: &mut gfn_objectives::trpo::TrustRegion,
    est: &Estimator,
    batch: &TrajectoryBatch,
    n_forward: usize,
    pf_logits: &Tensor,
    advantages: &[f64],
    grad: &[f32],
) -> Result<gfn_objectives::trpo::TrpoStats> {
    let logits = pf_logits
        .detach()
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let steps = gfn_objectives::trpo::PolicySteps::from_batch(batch, n_forward, &logits, advantages)?;
    tr.step(&est.nets()[0], &steps, grad)
        .context("the trust-region step failed")
}

/// Count a trust-region step, and whether it was rejected (every halving failed).
fn count_trpo(counts: &mut (u64, u64), outcome: gfn_objectives::trpo::TrpoStats) {
    counts.0 += 1;
    if outcome.step_fraction == 0.0 {
        counts.1 += 1;
    }
}

/// LS-GFN's refinement of `batch`'s objects: `config.local_search` steps back with P_B and as
/// many forward with P_F from each (with an exit action: forward until P_F exits), then `x'`
/// kept greedily (`R(x') ≥ R(x)`) or by
/// Metropolis–Hastings toward R (`log α = log R(x') − log R(x) + log q(x'→x) − log q(x→x')`);
/// the kept objects (or the originals) go to `out`.
fn local_search<E: Env + ?Sized, P: gfn_core::local_search::StatePolicy + ?Sized>(
    env: &E,
    policy: &mut P,
    config: &TrainConfig,
    batch: &TrajectoryBatch,
    rng: &mut GfnRng,
    out: &mut Vec<i32>,
) -> Result<()> {
    let sd = env.state_dim();
    let k = config.local_search.min(env.max_actions());
    let proposal =
        gfn_core::local_search::back_and_forth(env, policy, &batch.terminal_states, k, rng).context("local search")?;
    out.clear();
    for b in 0..batch.batch_size {
        let x_new = &proposal.states[b * sd..(b + 1) * sd];
        let delta = env.log_reward(x_new) - batch.log_reward[b];
        let keep = match config.local_search_accept {
            LocalSearchAccept::Mh => {
                let log_alpha = delta + proposal.log_q_reverse[b] - proposal.log_q_forward[b];
                log_alpha >= 0.0 || gfn_core::rng::uniform(rng).ln() < log_alpha
            }
            LocalSearchAccept::Greedy => delta >= 0.0,
        };
        out.extend_from_slice(if keep { x_new } else { batch.terminal_state(b) });
    }
    Ok(())
}

fn check_finite(loss: &Tensor, objective: Objective, iteration: u64) -> Result<f64> {
    let value = f64::from(loss.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?);
    if !value.is_finite() {
        bail!(
            "the {} loss is {value} at iteration {}; files already written are intact",
            objective.name(),
            iteration + 1
        );
    }
    Ok(value)
}

/// The `summary.json` of a finished run.
pub fn summary_json(t: &Trainer) -> serde_json::Value {
    let last = t.history.last();
    let exact = last.and_then(|r| r.exact);
    let tail: Vec<&ExactMetrics> = t
        .history
        .iter()
        .rev()
        .filter_map(|r| r.exact.as_ref())
        .take(5)
        .collect();
    let mean = |f: fn(&ExactMetrics) -> f64| {
        if tail.is_empty() {
            None
        } else {
            Some(tail.iter().map(|m| f(m)).sum::<f64>() / tail.len() as f64)
        }
    };
    let tps = if t.wall_seconds > 0.0 {
        t.trajectories as f64 / t.wall_seconds
    } else {
        0.0
    };
    serde_json::json!({
        "env": t.env.name(),
        "loss": t.objective.name(),
        "seed": t.config.seed,
        "iterations": t.iteration,
        "trajectories": t.trajectories,
        "wall_seconds": t.wall_seconds,
        "trajectories_per_second": tps,
        "iterations_per_second": if t.wall_seconds > 0.0 { t.iteration as f64 / t.wall_seconds } else { 0.0 },
        "policy": t.config.policy,
        "num_params": t.net.num_params(),
        "useful_gflop_per_iteration": if t.iteration > 0 { t.useful_flops / t.iteration as f64 / 1e9 } else { 0.0 },
        "useful_gflops_per_second": if t.wall_seconds > 0.0 { t.useful_flops / t.wall_seconds / 1e9 } else { 0.0 },
        "final_loss": last.map(|r| r.loss),
        "exact": exact.map(|e| serde_json::json!({
            "tv": e.dist.tv, "l1_sum": e.dist.l1_sum, "l1_mean": e.dist.l1_mean, "jsd": e.dist.jsd, "kl": e.dist.kl,
        })),
        "exact_last5_mean": {
            "evaluations": tail.len(),
            "tv": mean(|m| m.dist.tv),
            "l1_sum": mean(|m| m.dist.l1_sum),
            "jsd": mean(|m| m.dist.jsd),
        },
        "log_z": exact.map(|e| serde_json::json!({"learned": e.log_z_learned, "true": e.log_z_true, "error": e.log_z_error})),
        "empirical": last.and_then(|r| r.empirical).map(|e| serde_json::json!({
            "window": t.tracker.len(), "tv": e.tv, "l1_sum": e.l1_sum, "l1_mean": e.l1_mean, "jsd": e.jsd,
        })),
        "top_k": last.and_then(|r| r.top_k),
        "recent": last.and_then(|r| r.recent),
        "target": t.target,
        "metric_seconds": t.metric_seconds,
        "led": t.led.as_ref().map(|_| serde_json::json!({
            "seconds": t.led_seconds,
            "fraction_of_training": if t.wall_seconds > 0.0 { t.led_seconds / t.wall_seconds } else { 0.0 },
        })),
        "modes": t.evaluator.as_ref().map(|ev| serde_json::json!({
            "found": t.tracker.modes_found(), "total": ev.num_modes(),
        })),
        "task": last.and_then(|r| r.task.clone()),
        "conditions": last.map(|r| r.conditions.iter().map(|c| serde_json::json!({
            "label": c.label, "condition": c.condition, "tv": c.exact.dist.tv, "l1_sum": c.exact.dist.l1_sum,
            "jsd": c.exact.dist.jsd, "log_z": {"learned": c.exact.log_z_learned, "true": c.exact.log_z_true},
        })).collect::<Vec<_>>()).filter(|v| !v.is_empty()),
        "trust_region": t.trust_region.as_ref().map(|_| serde_json::json!({
            "steps": t.trpo_counts.0, "rejected": t.trpo_counts.1,
        })),
        "ranks": t.ranks.as_ref().map(|r| serde_json::json!({
            "size": r.size(), "kind": r.kind(), "batch_per_rank": t.config.batch_size,
            "exchange_seconds": r.exchange_seconds, "verified_steps": r.verified_steps,
        })),
    })
}

/// LED's offsets for the batch (timed into `seconds`), or `None` without LED.
fn led_offsets(
    led: &mut Option<crate::led::LedTrainer>,
    batch: &TrajectoryBatch,
    seconds: &mut f64,
) -> Result<Option<Vec<f64>>> {
    let Some(led) = led else {
        return Ok(None);
    };
    let t = Instant::now();
    let offsets = led.offsets(batch)?;
    *seconds += t.elapsed().as_secs_f64();
    Ok(Some(offsets))
}

/// Useful FLOPs per evaluated state: for every network, a forward pass (`2·in·out` per layer)
/// and a backward pass (`2·in·out` for the weight gradient of every layer, and as much again for
/// the input gradient of every layer but the first).
pub fn useful_flops_per_row(est: &Estimator) -> f64 {
    est.nets()
        .iter()
        .map(|net| {
            let d = net.dims();
            (0..d.len() - 1)
                .map(|l| {
                    let mac = (d[l] * d[l + 1]) as f64;
                    2.0 * mac + 2.0 * mac + if l > 0 { 2.0 * mac } else { 0.0 }
                })
                .sum::<f64>()
        })
        .sum()
}

/// The checkpoint of `t` after an evaluation, refused (with the reason) where the state is not
/// valid: a non-finite parameter or moment, or a non-finite exact distance. Nothing is written
/// for such a state.
pub fn valid_checkpoint(t: &Trainer, rec: &EvalRecord) -> Result<Checkpoint> {
    let ck = t.checkpoint()?;
    if let Some(name) = ck.non_finite() {
        bail!(
            "training stopped: {name} is not finite after iteration {} (the run diverged; lower lr); the run directory keeps its last valid state",
            t.iteration
        );
    }
    if let Some(e) = &rec.exact
        && !e.dist.tv.is_finite()
    {
        bail!(
            "training stopped: the exact distance is {} after iteration {} (the policy is not finite; lower lr); the run directory keeps its last valid state",
            e.dist.tv,
            t.iteration
        );
    }
    Ok(ck)
}
