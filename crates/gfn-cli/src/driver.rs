//! The run driver: one loop that trains any [`Run`] — the GFlowNet [`Trainer`] and the
//! energy-based-modelling [`EbmRun`] — into a run directory, evaluating, checkpointing and
//! summarising as it goes, and that resumes it bit for bit.
//!
//! The libraries' trainers do no file I/O; everything written here is the run directory's
//! ([`crate::run_dir`]): `config.toml`, `metrics.jsonl`, `checkpoint.safetensors`,
//! `timing.json`, `summary.json`, and `failed.json` when a run stops on an error.

use anyhow::{Context, Result, bail};
use candle_core::Device;
use serde::Serialize;
use serde::de::DeserializeOwned;

use gfn::checkpoint::Checkpoint;
use gfn::config::TrainConfig;
use gfn::ebm::{EbmRecord, EbmRun};
use gfn::io::write_atomic;
use gfn::train::{EvalRecord, Trainer};
use gfn_record::{EbmTiming, Timing};

use crate::run_dir::{RunDir, files};

/// A training loop the driver can run, checkpoint and resume.
pub trait Run: Sized {
    /// One evaluation: a line of `metrics.jsonl`.
    type Record: Serialize + DeserializeOwned + Clone;
    /// What `timing.json` keeps at a checkpoint (wall-clock figures, outside the bit-exact state).
    type Timing: Serialize + DeserializeOwned + Default;

    /// A fresh run of `config`.
    fn build(config: TrainConfig, device: &Device) -> Result<Self>;
    /// The configuration.
    fn config(&self) -> &TrainConfig;
    /// The configuration, to extend a resumed run's `iterations`.
    fn config_mut(&mut self) -> &mut TrainConfig;
    /// Iterations completed.
    fn iteration(&self) -> u64;
    /// One training iteration; returns its loss.
    fn step(&mut self) -> Result<f64>;
    /// Evaluate (`last`: the run's final evaluation, which some tasks make larger), append the
    /// record to the history, and return it with a checkpoint of the state — or an error naming
    /// why the state is not valid (nothing is written for it).
    fn evaluate_and_checkpoint(&mut self, last: bool) -> Result<(Self::Record, Checkpoint)>;
    /// Load a checkpoint's state.
    fn restore(&mut self, ck: &Checkpoint) -> Result<()>;
    /// The evaluations so far.
    fn history(&self) -> &[Self::Record];
    /// Keep the evaluations that `keep` accepts (by iteration), and the timing of the same ones.
    fn retain_history(&mut self, keep: impl Fn(u64) -> bool);
    /// Replace the history (from `metrics.jsonl`).
    fn set_history(&mut self, history: Vec<Self::Record>);
    /// The iteration of a record.
    fn record_iteration(record: &Self::Record) -> u64;
    /// The wall-clock figures to keep.
    fn timing(&self) -> Self::Timing;
    /// Restore the wall-clock figures of a checkpoint.
    fn restore_timing(&mut self, timing: Self::Timing);
    /// `summary.json`.
    fn summary(&self) -> serde_json::Value;
    /// Anything else the finished run writes into its directory (plots).
    fn finish(&self, _dir: &RunDir) -> Result<()> {
        Ok(())
    }
}

/// Observer of training progress (the command line's progress bar).
pub trait Progress<R> {
    /// After each iteration.
    fn on_step(&mut self, iteration: u64, loss: f64);
    /// After each evaluation.
    fn on_eval(&mut self, record: &R);
}

/// No progress output.
pub struct Silent;

impl<R> Progress<R> for Silent {
    fn on_step(&mut self, _: u64, _: f64) {}
    fn on_eval(&mut self, _: &R) {}
}

/// Train `t` up to its configuration's `iterations`, writing metrics and checkpoints into `dir`
/// at every evaluation and a final evaluation, checkpoint and summary at the end. The caller holds
/// the directory's lock ([`RunDir::create_new`], [`RunDir::lock_existing`]). On an error the
/// directory keeps its last valid state and `failed.json` says where and why the run stopped.
pub fn run<R: Run>(t: &mut R, dir: &RunDir, progress: &mut dyn Progress<R::Record>) -> Result<serde_json::Value> {
    let mut last_checkpoint = dir.file(files::CHECKPOINT).exists().then_some(t.iteration());
    let result = run_steps(t, dir, progress, &mut last_checkpoint);
    if let Err(e) = &result {
        dir.note_failure(t.iteration(), last_checkpoint, e)?;
    }
    result
}

fn run_steps<R: Run>(
    t: &mut R,
    dir: &RunDir,
    progress: &mut dyn Progress<R::Record>,
    last_checkpoint: &mut Option<u64>,
) -> Result<serde_json::Value> {
    let total = t.config().iterations as u64;
    let every = t.config().eval_every as u64;
    gfn::io::ensure_writable_dir(&dir.path)?;
    dir.clear_failure()?;
    dir.write_config(t.config())?;
    let checkpoint = |t: &mut R, progress: &mut dyn Progress<R::Record>, last: &mut Option<u64>| -> Result<()> {
        let (rec, ck) = t.evaluate_and_checkpoint(t.iteration() == total)?;
        write_metrics(dir, t.history())?;
        // timing.json first (it keeps the previous checkpoint's entry), then the checkpoint.
        dir.write_timing(&t.timing())?;
        ck.save(&dir.file(files::CHECKPOINT))?;
        *last = Some(t.iteration());
        progress.on_eval(&rec);
        Ok(())
    };
    while t.iteration() < total {
        let loss = t.step()?;
        progress.on_step(t.iteration(), loss);
        if t.iteration().is_multiple_of(every) || t.iteration() == total {
            checkpoint(t, progress, last_checkpoint)?;
        }
    }
    if t.history()
        .last()
        .is_none_or(|r| R::record_iteration(r) != t.iteration())
    {
        // Resumed at the end of an earlier run: the final evaluation is still due.
        checkpoint(t, progress, last_checkpoint)?;
    }
    t.finish(dir)?;
    let summary = t.summary();
    write_atomic(
        &dir.file(files::SUMMARY),
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;
    Ok(summary)
}

/// Whether an evaluation at `iteration` survives a resume from a checkpoint at `checkpoint`
/// towards `total` iterations evaluated every `every`: it must precede the checkpoint and be one
/// an uninterrupted run to `total` makes (periodic, or the final one at `total`).
pub fn kept_on_resume(iteration: u64, checkpoint: u64, every: u64, total: u64) -> bool {
    iteration <= checkpoint && (iteration.is_multiple_of(every) || iteration == total)
}

/// The run in `dir` as its checkpoint left it: its configuration, its state, its wall-clock
/// figures (not its history).
pub fn load<R: Run>(dir: &RunDir, device: &Device) -> Result<R> {
    let config = dir.read_config()?;
    let ck = load_checkpoint(dir, &config)?;
    let mut t = R::build(config, device)?;
    t.restore(&ck)
        .with_context(|| format!("checkpoint in {} does not match its config.toml", dir.path.display()))?;
    t.restore_timing(dir.read_timing(ck.iteration)?);
    Ok(t)
}

/// Prepare the run in `dir` to continue up to `iterations` (default: its own total). Evaluation
/// lines after the checkpoint, and a final evaluation that an uninterrupted run to the new total
/// would not have made, are dropped, so the continued run ends with the same files.
pub fn resume<R: Run>(dir: &RunDir, iterations: Option<usize>, device: &Device) -> Result<R> {
    let mut t: R = load(dir, device)?;
    if let Some(n) = iterations {
        if (n as u64) < t.iteration() {
            bail!(
                "invalid iterations = {n}: the run in {} already has {} iterations",
                dir.path.display(),
                t.iteration()
            );
        }
        t.config_mut().iterations = n;
    }
    let every = t.config().eval_every as u64;
    let total = t.config().iterations as u64;
    let ck_iter = t.iteration();
    t.set_history(read_metrics(dir)?);
    t.retain_history(|i| kept_on_resume(i, ck_iter, every, total));
    Ok(t)
}

/// The checkpoint in `dir`, verified (checksum) and checked against `config` (the binding hash);
/// a run that stopped before its first valid checkpoint says so.
pub fn load_checkpoint(dir: &RunDir, config: &TrainConfig) -> Result<Checkpoint> {
    let p = dir.file(files::CHECKPOINT);
    if !p.exists()
        && let Some(f) = dir.read_failure()?
    {
        bail!(
            "{} holds no valid state: the run stopped at iteration {} before its first checkpoint: {}",
            dir.path.display(),
            f.iteration,
            f.reason
        );
    }
    let ck = Checkpoint::load(&p)?;
    ck.check_config(&config.binding_hash(), &dir.path)?;
    Ok(ck)
}

/// Rewrite `metrics.jsonl` atomically from the history.
pub fn write_metrics<T: Serialize>(dir: &RunDir, history: &[T]) -> Result<()> {
    let mut text = String::new();
    for r in history {
        text.push_str(&serde_json::to_string(r)?);
        text.push('\n');
    }
    write_atomic(&dir.file(files::METRICS), text.as_bytes())
}

/// Read `metrics.jsonl`.
pub fn read_metrics<T: DeserializeOwned>(dir: &RunDir) -> Result<Vec<T>> {
    let p = dir.file(files::METRICS);
    let text = std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
    text.lines()
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).with_context(|| format!("{} line {} is not valid", p.display(), i + 1)))
        .collect()
}

impl Run for Trainer {
    type Record = EvalRecord;
    type Timing = Timing;

    fn build(config: TrainConfig, device: &Device) -> Result<Self> {
        Trainer::new(config, device)
    }
    fn config(&self) -> &TrainConfig {
        &self.config
    }
    fn config_mut(&mut self) -> &mut TrainConfig {
        &mut self.config
    }
    fn iteration(&self) -> u64 {
        self.iteration
    }
    fn step(&mut self) -> Result<f64> {
        Trainer::step(self)
    }
    fn evaluate_and_checkpoint(&mut self, _last: bool) -> Result<(EvalRecord, Checkpoint)> {
        let rec = self.evaluate()?;
        let ck = gfn::train::valid_checkpoint(self, &rec)?;
        Ok((rec, ck))
    }
    fn restore(&mut self, ck: &Checkpoint) -> Result<()> {
        Trainer::restore(self, ck)
    }
    fn history(&self) -> &[EvalRecord] {
        &self.history
    }
    fn retain_history(&mut self, keep: impl Fn(u64) -> bool) {
        self.history.retain(|r| keep(r.iteration));
        self.eval_timing.retain(|e| keep(e.iteration));
    }
    fn set_history(&mut self, history: Vec<EvalRecord>) {
        self.history = history;
    }
    fn record_iteration(record: &EvalRecord) -> u64 {
        record.iteration
    }
    fn timing(&self) -> Timing {
        Timing {
            iteration: self.iteration,
            wall_seconds: self.wall_seconds,
            useful_flops: self.useful_flops,
            evals: self.eval_timing.clone(),
            led_seconds: self.led_seconds,
            metric_seconds: self.metric_seconds,
        }
    }
    fn restore_timing(&mut self, timing: Timing) {
        self.wall_seconds = timing.wall_seconds;
        self.useful_flops = timing.useful_flops;
        self.eval_timing = timing.evals;
        self.led_seconds = timing.led_seconds;
        self.metric_seconds = timing.metric_seconds;
    }
    fn summary(&self) -> serde_json::Value {
        gfn::train::summary_json(self)
    }
}

impl Run for EbmRun {
    type Record = EbmRecord;
    type Timing = EbmTiming;

    fn build(config: TrainConfig, device: &Device) -> Result<Self> {
        EbmRun::new(config, device)
    }
    fn config(&self) -> &TrainConfig {
        &self.config
    }
    fn config_mut(&mut self) -> &mut TrainConfig {
        &mut self.config
    }
    fn iteration(&self) -> u64 {
        self.iteration
    }
    fn step(&mut self) -> Result<f64> {
        EbmRun::step(self)
    }
    fn evaluate_and_checkpoint(&mut self, last: bool) -> Result<(EbmRecord, Checkpoint)> {
        let rec = self.evaluate(last)?;
        let ck = self.checkpoint()?;
        if let Some(name) = ck.non_finite() {
            bail!(
                "training stopped: {name} is not finite after iteration {} (the run diverged; lower the learning rates); the run directory keeps its last valid state",
                self.iteration
            );
        }
        Ok((rec, ck))
    }
    fn restore(&mut self, ck: &Checkpoint) -> Result<()> {
        EbmRun::restore(self, ck)
    }
    fn history(&self) -> &[EbmRecord] {
        &self.history
    }
    fn retain_history(&mut self, keep: impl Fn(u64) -> bool) {
        self.history.retain(|r| keep(r.iteration));
        self.eval_timing.retain(|e| keep(e.iteration));
    }
    fn set_history(&mut self, history: Vec<EbmRecord>) {
        self.history = history;
    }
    fn record_iteration(record: &EbmRecord) -> u64 {
        record.iteration
    }
    fn timing(&self) -> EbmTiming {
        EbmTiming {
            iteration: self.iteration,
            wall_seconds: self.wall_seconds,
            evals: self.eval_timing.clone(),
        }
    }
    fn restore_timing(&mut self, timing: EbmTiming) {
        self.wall_seconds = timing.wall_seconds;
        self.eval_timing = timing.evals;
    }
    fn summary(&self) -> serde_json::Value {
        gfn::ebm::summary_json(self)
    }
    /// A 2D task's `samples.png`: the data beside the model's samples.
    fn finish(&self, dir: &RunDir) -> Result<()> {
        if let Some([data, model]) = self.sample_pairs()? {
            crate::plot::samples_png(&dir.file("samples.png"), &data, &model)?;
        }
        Ok(())
    }
}
