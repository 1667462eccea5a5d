//! `gfn train --env ebm-2d | ising | digits`: an energy-based model trained by EB-GFN (with a
//! GFlowNet sampler, [`gfn_ebm::JointTrainer`]) or by the PCD baseline
//! ([`gfn_ebm::PcdTrainer`]): [`EbmRun`] steps, evaluates (one [`EbmRecord`] per evaluation),
//! checkpoints and restores bit for bit; gfn-cli's run driver writes its run directory.
//!
//! Tasks (papers.md §2.3–2.5): the seven 2D distributions quantised to 32 bits (fresh data every
//! batch and every evaluation), lattice Ising models (training data Gibbs-sampled in Rust from the
//! task seed; the metric is −log RMSE between learned and true couplings), and the 8×8 digits
//! (fixed split; test NLL against a per-pixel Bernoulli model).

use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::Device;
use serde::{Deserialize, Serialize};

use gfn_core::exact::EmpiricalTracker;
use gfn_core::{GfnRng, Sampler, SamplingOptions, TrajectoryBatch, rng_from_seed};
use gfn_ebm::eval::{self, Estimate};
use gfn_ebm::{EnergyModel, IsingEnergy, JointConfig, JointTrainer, MlpEnergy, PcdTrainer};
use gfn_envs::data::digits::Digits;
use gfn_envs::data::ising::{CouplingError, LatticeIsing, coupling_error};
use gfn_envs::data::synthetic::{self, Dataset};

use crate::checkpoint::{AuxData, Checkpoint, restore_adam, save_adam};
use crate::config::TrainConfig;
use crate::options::{EbmMethod, EnvName};
use crate::train::EvalTiming;

/// Salt of the evaluation RNG streams (`seed ^ EVAL_STREAM ^ iteration`).
const EVAL_STREAM: u64 = 0x6562_6d5f_6576_616c;
/// Model samples and data samples in the MMD (the official 4,000).
const MMD_SAMPLES: usize = 4000;
/// Test examples of the GFlowNet likelihood at intermediate evaluations (all at the final).
const GFN_NLL_INTERMEDIATE: usize = 500;

/// The data of a task.
pub enum Task {
    /// A 2D distribution, quantised to 32 bits.
    Synthetic(Dataset),
    /// A lattice Ising model and its Gibbs-sampled training data.
    Ising {
        /// The true model.
        model: LatticeIsing,
        /// Training examples, `[n, D]`.
        train: Vec<i32>,
    },
    /// The 8×8 digits.
    Digits {
        /// Training images, `[n, 64]`.
        train: Vec<i32>,
        /// Test images.
        test: Vec<i32>,
        /// The per-pixel Bernoulli baseline's test NLL and standard error.
        bernoulli: (f64, f64),
    },
}

impl Task {
    /// The task of `config` (Ising data: `ising_samples` chains of `ising_updates` Gibbs updates,
    /// from `task_seed`).
    pub fn build(config: &TrainConfig) -> Result<Self> {
        Ok(match config.env {
            EnvName::Ebm2d => Task::Synthetic(config.dataset),
            EnvName::Ising => {
                let model = LatticeIsing::new(config.lattice, config.sigma)?;
                let mut rng = rng_from_seed(config.task_seed);
                let data = model.gibbs_data(config.ising_samples, config.ising_updates as u64, &mut rng)?;
                Task::Ising {
                    model,
                    train: eval::rows_i32(&data),
                }
            }
            EnvName::Digits => {
                let d = Digits::load()?;
                let b = d.bernoulli_nll()?;
                Task::Digits {
                    train: eval::rows_i32(&d.train),
                    test: eval::rows_i32(&d.test),
                    bernoulli: (b.mean, b.std_err),
                }
            }
            other => bail!("invalid env = {other}: not an EBM task (ebm-2d, ising, digits)"),
        })
    }

    /// `D`.
    pub fn dim(&self) -> usize {
        match self {
            Task::Synthetic(_) => synthetic::GrayCode::BITS,
            Task::Ising { model, .. } => model.dim(),
            Task::Digits { .. } => gfn_envs::data::digits::PIXELS,
        }
    }

    /// A training batch of `n` rows: fresh samples (2D) or rows drawn with replacement.
    pub fn batch(&self, n: usize, rng: &mut GfnRng) -> Result<Vec<i32>> {
        use rand::Rng;
        let d = self.dim();
        let from = |rows: &[i32], rng: &mut GfnRng| {
            let m = rows.len() / d;
            let mut out = Vec::with_capacity(n * d);
            for _ in 0..n {
                let i = rng.random_range(0..m);
                out.extend_from_slice(&rows[i * d..(i + 1) * d]);
            }
            out
        };
        Ok(match self {
            Task::Synthetic(ds) => synthetic::sample_bits(*ds, n, rng),
            Task::Ising { train, .. } => from(train, rng),
            Task::Digits { train, .. } => from(train, rng),
        })
    }

    /// Test examples: `n` fresh samples (2D), the test split (digits), none (Ising).
    fn test_set(&self, n: usize, rng: &mut GfnRng) -> Result<Option<Vec<i32>>> {
        Ok(match self {
            Task::Synthetic(ds) => Some(synthetic::sample_bits(*ds, n, rng)),
            Task::Ising { .. } => None,
            Task::Digits { test, .. } => Some(test.clone()),
        })
    }
}

/// The training method.
pub enum Method {
    /// EB-GFN.
    EbGfn(Box<JointTrainer>),
    /// Persistent contrastive divergence.
    Pcd(Box<PcdTrainer>),
}

impl Method {
    fn ebm(&self) -> &dyn EnergyModel {
        match self {
            Method::EbGfn(t) => t.ebm.as_ref(),
            Method::Pcd(t) => t.ebm.as_ref(),
        }
    }
}

pub use gfn_record::EbmRecord;

/// Training window of the losses between evaluations.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct Window {
    ebm: f64,
    gfn: f64,
    accept: f64,
    accept_n: u64,
    n: u64,
    k: usize,
}

/// An EBM run in memory.
pub struct EbmRun {
    /// The configuration.
    pub config: TrainConfig,
    /// The data.
    pub task: Task,
    /// The trainer.
    pub method: Method,
    /// The run's RNG (data batches and training).
    pub rng: GfnRng,
    /// Iterations completed.
    pub iteration: u64,
    /// Seconds in training iterations (evaluation excluded).
    pub wall_seconds: f64,
    /// Evaluation history.
    pub history: Vec<EbmRecord>,
    /// Training seconds at each evaluation.
    pub eval_timing: Vec<EvalTiming>,
    window: Window,
    device: Device,
}

/// Check the EBM fields of `config`, naming the bad one.
pub fn validate(config: &TrainConfig) -> Result<()> {
    joint_config(config).validate()?;
    for (field, v) in [
        ("ebm_hidden", config.ebm_hidden),
        ("ebm_layers", config.ebm_layers),
        ("ising_samples", config.ising_samples),
        ("eval_test", config.eval_test),
        ("eval_backward", config.eval_backward),
    ] {
        if v == 0 {
            bail!("invalid {field} = 0: must be at least 1");
        }
    }
    if !(config.ebm_l1.is_finite() && config.ebm_l1 >= 0.0) {
        bail!("invalid ebm_l1 = {}: must be finite and ≥ 0", config.ebm_l1);
    }
    if config.eval_log_z_samples < 1000 {
        bail!(
            "invalid eval_log_z_samples = {}: must be at least 1000",
            config.eval_log_z_samples
        );
    }
    match config.env {
        EnvName::Ising => {
            LatticeIsing::new(config.lattice, config.sigma)?;
            if config.sigma == 0.0 {
                bail!("invalid sigma = 0: must be non-zero (J = σ·A would have no coupling to learn)");
            }
        }
        _ if config.ebm_l1 != 0.0 => {
            bail!(
                "invalid ebm_l1 = {}: the L1 penalty applies to the ising task's couplings only",
                config.ebm_l1
            );
        }
        _ => {}
    }
    crate::memory::check(&memory_needs(config)?, crate::memory::machine_memory())?;
    Ok(())
}

/// Lower bounds on what an EBM run of `config` allocates, each with the field that sizes it (see
/// [`crate::memory`]); `config.env` is an EBM task whose lattice, if any, is valid.
fn memory_needs(config: &TrainConfig) -> Result<Vec<crate::memory::Need>> {
    use crate::memory::{Need, network_need, trajectory_need};
    let dim = match config.env {
        EnvName::Ising => config.lattice * config.lattice,
        EnvName::Digits => gfn_envs::data::digits::PIXELS,
        _ => synthetic::GrayCode::BITS,
    };
    let env = gfn_envs::binary::BinaryEnv::new(dim)?;
    let (h, l) = (config.hidden, config.layers);
    let rows = |field: &'static str, what: &str, n: usize| Need {
        field,
        value: n.to_string(),
        what: what.into(),
        bytes: n as f64 * dim as f64 * 4.0,
    };
    let mut needs = vec![
        network_need("the GFlowNet's network", ("hidden", "layers"), dim, h, l, 3 * dim + 1),
        network_need(
            "the energy model",
            ("ebm_hidden", "ebm_layers"),
            dim,
            config.ebm_hidden,
            config.ebm_layers,
            1,
        ),
        trajectory_need(
            "batch_size",
            "one batch's forward and backward trajectories",
            &env,
            config.batch_size.saturating_mul(2),
            h,
            l,
        ),
        rows("eval_test", "the test rows", config.eval_test),
        trajectory_need(
            "eval_backward",
            "one test row's backward trajectories",
            &env,
            config.eval_backward,
            h,
            l,
        ),
    ];
    if config.env == EnvName::Ising {
        needs.push(rows("ising_samples", "the Gibbs samples", config.ising_samples));
    }
    Ok(needs)
}

fn joint_config(c: &TrainConfig) -> JointConfig {
    JointConfig {
        hidden: c.hidden,
        layers: c.layers,
        lr: c.lr,
        lr_logz: c.lr_logz,
        ebm_lr: c.ebm_lr,
        back_ratio: c.back_ratio,
        warmup_k: c.warmup_k,
        negatives: c.negatives,
        accept: c.accept,
        gfn_steps: c.gfn_steps,
    }
}

impl EbmRun {
    /// A fresh run of `config` (already validated).
    pub fn new(config: TrainConfig, device: &Device) -> Result<Self> {
        config.validate()?;
        let task = Task::build(&config)?;
        let d = task.dim();
        let mut rng = rng_from_seed(config.seed);
        let ebm: Box<dyn EnergyModel> = match &task {
            Task::Ising { .. } => Box::new(IsingEnergy::new(d, 0.01, device, &mut rng)?.with_l1(config.ebm_l1)?),
            _ => Box::new(MlpEnergy::new(
                d,
                config.ebm_hidden,
                config.ebm_layers,
                device,
                &mut rng,
            )?),
        };
        let method = match config.ebm_method {
            EbmMethod::Pcd => {
                let steps = if config.gibbs_steps == 0 { d } else { config.gibbs_steps };
                Method::Pcd(Box::new(PcdTrainer::new(
                    ebm,
                    config.ebm_lr,
                    config.batch_size,
                    steps,
                    device,
                    &mut rng,
                )?))
            }
            EbmMethod::Ebgfn => Method::EbGfn(Box::new(JointTrainer::new(
                joint_config(&config),
                ebm,
                device,
                &mut rng,
            )?)),
        };
        Ok(Self {
            config,
            task,
            method,
            rng,
            iteration: 0,
            wall_seconds: 0.0,
            history: Vec::new(),
            eval_timing: Vec::new(),
            window: Window::default(),
            device: device.clone(),
        })
    }

    /// A short description for the start line.
    pub fn describe(&self) -> String {
        let c = &self.config;
        let task = match c.env {
            EnvName::Ebm2d => format!("ebm-2d {}", c.dataset),
            EnvName::Ising => format!("ising {0}×{0} σ {1}", c.lattice, c.sigma),
            _ => "digits 8×8".into(),
        };
        let method = match &self.method {
            Method::EbGfn(t) => format!(
                "EB-GFN ({} negatives, {} accept, GFlowNet {}×{})",
                c.negatives,
                t.config.accept.name(),
                c.hidden,
                c.layers
            ),
            Method::Pcd(t) => format!("PCD ({} Gibbs updates per iteration)", t.gibbs_steps),
        };
        format!("{task} (D = {}) with {method}", self.task.dim())
    }

    /// One iteration; returns the EBM loss.
    pub fn step(&mut self) -> Result<f64> {
        let it = self.iteration + 1;
        let start = Instant::now();
        let data = self.task.batch(self.config.batch_size, &mut self.rng)?;
        let loss = match &mut self.method {
            Method::EbGfn(t) => {
                let s = t
                    .step(&data, &mut self.rng)
                    .with_context(|| format!("training stopped at iteration {it}"))?;
                self.window.gfn += s.gfn_loss;
                if let Some(a) = s.acceptance {
                    self.window.accept += a;
                    self.window.accept_n += 1;
                }
                self.window.k = s.k;
                s.ebm_loss
            }
            Method::Pcd(t) => t
                .step(&data, &mut self.rng)
                .with_context(|| format!("training stopped at iteration {it}"))?,
        };
        self.wall_seconds += start.elapsed().as_secs_f64();
        self.window.ebm += loss;
        self.window.n += 1;
        self.iteration += 1;
        Ok(loss)
    }

    /// `log Z` of the energy model by annealed importance sampling ([`eval::ais_log_z`]:
    /// `chains` chains, `temps` temperatures, RNG from `seed`) and the test NLL it gives (`None`
    /// for tasks without a test set): the measurement that needs no sampler, for PCD and EB-GFN
    /// alike.
    pub fn ais(&self, chains: usize, temps: usize, seed: u64) -> Result<(Estimate, Option<Estimate>)> {
        let mut rng = rng_from_seed(seed);
        let ebm = self.method.ebm();
        let log_z = eval::ais_log_z(ebm, chains, temps, &mut rng, &self.device)?;
        let mut test_rng = rng_from_seed(self.config.seed ^ EVAL_STREAM ^ self.iteration);
        let nll = match self.task.test_set(self.config.eval_test, &mut test_rng)? {
            Some(x) => Some(eval::ebm_nll(ebm, &x, log_z, &self.device)?),
            None => None,
        };
        Ok((log_z, nll))
    }

    /// Ising: the learned couplings against the true ones (the paper's −log RMSE and where its
    /// error sits); `None` for other tasks.
    pub fn coupling(&self) -> Result<Option<CouplingError>> {
        Ok(match (&self.task, self.method.ebm().kind()) {
            (Task::Ising { model, .. }, "ising") => {
                let j = ising_coupling(self.method.ebm())?;
                Some(coupling_error(&j, &model.coupling_matrix())?)
            }
            _ => None,
        })
    }

    /// Evaluate now (`last`: the final evaluation, with the full importance-sample counts).
    pub fn evaluate(&mut self, last: bool) -> Result<EbmRecord> {
        let c = &self.config;
        let mut rng = rng_from_seed(c.seed ^ EVAL_STREAM ^ self.iteration);
        let d = self.task.dim();
        let n_is = if last {
            c.eval_log_z_samples
        } else {
            (c.eval_log_z_samples / 10).max(1000)
        };
        let test = self.task.test_set(c.eval_test, &mut rng)?;
        let ebm = self.method.ebm();
        let dev = &self.device;
        let chunk = 8192;
        let log_z = if d <= eval::MAX_EXACT_DIM {
            Some(Estimate {
                value: eval::exact_log_z(ebm, dev)?,
                std_err: 0.0,
                n: 1 << d,
            })
        } else if let Method::EbGfn(t) = &self.method {
            Some(eval::importance_log_z(
                &t.env,
                &t.estimator,
                ebm,
                n_is,
                chunk,
                &mut rng,
            )?)
        } else {
            None
        };
        let log_z_uniform = if test.is_some() {
            Some(eval::uniform_log_z(ebm, n_is, chunk, &mut rng, dev)?)
        } else {
            None
        };
        let nll = |z: Option<Estimate>| -> Result<Option<Estimate>> {
            match (z, &test) {
                (Some(z), Some(x)) => Ok(Some(eval::ebm_nll(ebm, x, z, dev)?)),
                _ => Ok(None),
            }
        };
        let (ebm_nll, ebm_nll_uniform) = (nll(log_z)?, nll(log_z_uniform)?);
        let gfn_nll = match (&self.method, &test) {
            (Method::EbGfn(t), Some(x)) => {
                let rows = if last {
                    x.len() / d
                } else {
                    GFN_NLL_INTERMEDIATE.min(x.len() / d)
                };
                Some(eval::gfn_log_likelihood(
                    &t.env,
                    &t.estimator,
                    &x[..rows * d],
                    c.eval_backward,
                    &mut rng,
                )?)
            }
            _ => None,
        };
        let mmd_e4 = match &self.task {
            Task::Synthetic(ds) => {
                let data = synthetic::sample_bits(*ds, MMD_SAMPLES, &mut rng);
                let model = self.model_samples(MMD_SAMPLES, &mut rng)?;
                Some(1e4 * eval::mmd(&model, &data, d)?)
            }
            _ => None,
        };
        let coupling = self.coupling()?;
        let w = self.window;
        let per = |v: f64| if w.n > 0 { v / w.n as f64 } else { f64::NAN };
        let rec = EbmRecord {
            iteration: self.iteration,
            ebm_loss: per(w.ebm),
            gfn_loss: matches!(self.method, Method::EbGfn(_)).then(|| per(w.gfn)),
            acceptance: (w.accept_n > 0).then(|| w.accept / w.accept_n as f64),
            k: matches!(self.method, Method::EbGfn(_)).then_some(w.k),
            log_z,
            ebm_nll,
            log_z_uniform,
            ebm_nll_uniform,
            gfn_nll,
            mmd_e4,
            neg_log_rmse: coupling.map(|c| c.neg_log_rmse),
            edge_mean: coupling.map(|c| c.edge_mean),
            edge_sd: coupling.map(|c| c.edge_sd),
            off_rms: coupling.map(|c| c.off_rms),
            edge_share: coupling.map(|c| c.edge_share),
        };
        if self.iteration.is_multiple_of(c.eval_every as u64) {
            self.window = Window {
                k: w.k,
                ..Window::default()
            };
        }
        self.history.push(rec);
        self.eval_timing.push(EvalTiming {
            iteration: self.iteration,
            wall_seconds: self.wall_seconds,
        });
        Ok(rec)
    }

    /// A 2D task's data and model samples (4,000 each, from the evaluation stream), decoded to
    /// points; `None` for the other tasks.
    pub fn sample_pairs(&self) -> Result<Option<[Vec<[f64; 2]>; 2]>> {
        let Task::Synthetic(ds) = &self.task else {
            return Ok(None);
        };
        let mut rng = rng_from_seed(self.config.seed ^ EVAL_STREAM);
        let data = synthetic::sample_bits(*ds, MMD_SAMPLES, &mut rng);
        let model = self.model_samples(MMD_SAMPLES, &mut rng)?;
        let code = ds.gray_code();
        Ok(Some([code.decode_batch(&data)?, code.decode_batch(&model)?]))
    }

    /// `n` samples of the model: GFlowNet samples (EB-GFN) or the persistent chains (PCD, as
    /// many as there are).
    fn model_samples(&self, n: usize, rng: &mut GfnRng) -> Result<Vec<i32>> {
        match &self.method {
            Method::EbGfn(t) => {
                let mut batch = TrajectoryBatch::default();
                Sampler::new().sample_forward(&t.env, &t.estimator, n, SamplingOptions::default(), rng, &mut batch)?;
                Ok(batch.terminal_states.clone())
            }
            Method::Pcd(t) => Ok(t.chains.clone()),
        }
    }

    /// The checkpoint of the run's state.
    pub fn checkpoint(&self) -> Result<Checkpoint> {
        let mut tensors = Vec::new();
        let mut aux = Vec::new();
        let (ebm_opt, adam_t) = match &self.method {
            Method::EbGfn(t) => {
                save_adam("gfn", &t.gfn_optimizer, &mut tensors)?;
                aux.push(("gfn/adam_t".into(), vec![2], u64_aux(t.gfn_optimizer.t)));
                (&t.ebm_optimizer, t.ebm_optimizer.t)
            }
            Method::Pcd(t) => {
                aux.push((
                    "pcd/chains".into(),
                    vec![t.chains.len()],
                    AuxData::U32(t.chains.iter().map(|&v| v as u32).collect()),
                ));
                aux.push(("pcd/site".into(), vec![1], AuxData::U32(vec![t.site() as u32])));
                (&t.optimizer, t.optimizer.t)
            }
        };
        save_adam("ebm", ebm_opt, &mut tensors)?;
        let w = self.window;
        aux.push((
            "window".into(),
            vec![4],
            AuxData::F64(vec![w.ebm, w.gfn, w.accept, w.k as f64]),
        ));
        aux.push(("window_counts".into(), vec![4], AuxData::U32(u64_pair(w.n, w.accept_n))));
        Ok(Checkpoint {
            iteration: self.iteration,
            trajectories: self.iteration * self.config.batch_size as u64,
            rng: self.rng.clone(),
            adam_t,
            loss_window: (w.ebm, w.n),
            tracker: EmpiricalTracker::new(1),
            top_k: gfn_core::topk::TopKTracker::new(0),
            recent: gfn_core::topk::RecentRewards::new(0),
            metric_rng: rng_from_seed(0),
            tensors,
            aux,
            config_hash: self.config.binding_hash(),
        })
    }

    /// Restore from a checkpoint of a run of the same configuration.
    pub fn restore(&mut self, ck: &Checkpoint) -> Result<()> {
        let aux_u32 = |name: &str| -> Result<Vec<u32>> {
            match &ck.aux(name)?.2 {
                AuxData::U32(v) => Ok(v.clone()),
                AuxData::F64(_) => bail!("checkpoint tensor {name} should be U32"),
            }
        };
        match &mut self.method {
            Method::EbGfn(t) => {
                restore_adam("gfn", &mut t.gfn_optimizer, ck)?;
                t.gfn_optimizer.t = u64_from(&aux_u32("gfn/adam_t")?)?;
                restore_adam("ebm", &mut t.ebm_optimizer, ck)?;
                t.ebm_optimizer.t = ck.adam_t;
                t.iteration = ck.iteration;
            }
            Method::Pcd(t) => {
                restore_adam("ebm", &mut t.optimizer, ck)?;
                t.optimizer.t = ck.adam_t;
                let chains = aux_u32("pcd/chains")?;
                if chains.len() != t.chains.len() {
                    bail!(
                        "checkpoint has {} chain values, the run {}",
                        chains.len(),
                        t.chains.len()
                    );
                }
                t.chains = chains.into_iter().map(|v| v as i32).collect();
                let site = aux_u32("pcd/site")?;
                t.set_site(*site.first().context("empty pcd/site")? as usize)?;
                t.iteration = ck.iteration;
            }
        }
        let w = match &ck.aux("window")?.2 {
            AuxData::F64(v) if v.len() == 4 => v.clone(),
            _ => bail!("checkpoint tensor window should be 4 F64 values"),
        };
        let counts = aux_u32("window_counts")?;
        if counts.len() != 4 {
            bail!("checkpoint tensor window_counts should hold 4 values");
        }
        self.window = Window {
            ebm: w[0],
            gfn: w[1],
            accept: w[2],
            k: w[3] as usize,
            n: u64_from(&counts[..2])?,
            accept_n: u64_from(&counts[2..])?,
        };
        self.iteration = ck.iteration;
        self.rng = ck.rng.clone();
        Ok(())
    }
}

/// The Ising model's learned couplings.
fn ising_coupling(ebm: &dyn EnergyModel) -> Result<Vec<f64>> {
    // The quadratic model's only parameter is G; J = (G + Gᵀ)/2 with zero diagonal.
    let g = ebm
        .named_params()
        .into_iter()
        .find(|(n, _)| n == "ebm.g")
        .context("the Ising energy has no parameter ebm.g")?
        .1;
    let d = ebm.dim();
    let g: Vec<f32> = g.as_tensor().flatten_all()?.to_vec1()?;
    let mut j = vec![0.0; d * d];
    for a in 0..d {
        for b in 0..d {
            if a != b {
                j[a * d + b] = 0.5 * (f64::from(g[a * d + b]) + f64::from(g[b * d + a]));
            }
        }
    }
    Ok(j)
}

fn u64_pair(a: u64, b: u64) -> Vec<u32> {
    vec![a as u32, (a >> 32) as u32, b as u32, (b >> 32) as u32]
}

fn u64_aux(v: u64) -> AuxData {
    AuxData::U32(vec![v as u32, (v >> 32) as u32])
}

fn u64_from(v: &[u32]) -> Result<u64> {
    match v {
        [lo, hi] => Ok(u64::from(*lo) | (u64::from(*hi) << 32)),
        _ => bail!("a u64 is stored as 2 U32 values, found {}", v.len()),
    }
}

/// The `summary.json` of a finished EBM run.
pub fn summary_json(t: &EbmRun) -> serde_json::Value {
    let last = t.history.last();
    let ips = if t.wall_seconds > 0.0 {
        t.iteration as f64 / t.wall_seconds
    } else {
        0.0
    };
    let bernoulli = match &t.task {
        Task::Digits { bernoulli, .. } => Some(serde_json::json!({"nll": bernoulli.0, "std_err": bernoulli.1})),
        _ => None,
    };
    serde_json::json!({
        "env": t.config.env,
        "task": t.describe(),
        "method": t.config.ebm_method,
        "seed": t.config.seed,
        "iterations": t.iteration,
        "batch_size": t.config.batch_size,
        "wall_seconds": t.wall_seconds,
        "iterations_per_second": ips,
        "dim": t.task.dim(),
        "ebm": last.map(|r| serde_json::json!({
            "nll": r.ebm_nll, "log_z": r.log_z, "nll_uniform_is": r.ebm_nll_uniform, "log_z_uniform_is": r.log_z_uniform,
            "final_loss": r.ebm_loss,
        })),
        "gfn": last.and_then(|r| r.gfn_nll.map(|g| serde_json::json!({
            "nll": g, "final_loss": r.gfn_loss, "acceptance": r.acceptance, "k": r.k,
        }))),
        "mmd_e4": last.and_then(|r| r.mmd_e4),
        "ising": last.and_then(|r| r.neg_log_rmse.map(|v| serde_json::json!({
            "neg_log_rmse": v, "edge_mean": r.edge_mean, "edge_sd": r.edge_sd, "off_rms": r.off_rms,
            "edge_share": r.edge_share,
        }))),
        "bernoulli_baseline": bernoulli,
    })
}
