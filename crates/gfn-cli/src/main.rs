//! The `gfn` command: train, sample from and evaluate GFlowNets.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use candle_core::Device;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use gfn::config::{ConfigArgs, TrainConfig};
use gfn::ebm::{EbmRecord, EbmRun};
use gfn::seam::Net;
use gfn::train::{EvalRecord, Trainer};
use gfn_cli::driver::{self, Progress};
use gfn_cli::run_dir::{RunDir, files};
use gfn_core::fast::Inference;
use gfn_core::{Sampler, SamplingOptions, TrajectoryBatch, rng_from_seed};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "gfn", version, about = "Generative Flow Networks: train, sample, evaluate")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a GFlowNet and evaluate it exactly.
    #[command(allow_negative_numbers = true)]
    Train {
        #[command(flatten)]
        options: Box<ConfigArgs>,
        /// Read options from a TOML file (flags may repeat a value, not contradict it).
        #[arg(long, value_name = "FILE.toml")]
        config: Option<PathBuf>,
        /// Run directory (default: runs/<env>-<loss>-seed<seed>).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Continue the run in DIR (only --iterations and the rank layout may be given with it).
        #[arg(long, value_name = "DIR")]
        resume: Option<PathBuf>,
        /// Ranks: data-parallel training over N ranks in this one process, one after another,
        /// each sampling --batch-size trajectories per step (reproduces an N-rank MPI run bit for bit).
        #[arg(long, value_name = "N")]
        virtual_ranks: Option<usize>,
        /// Ranks: data-parallel training, one rank per MPI process (`mpirun -n N gfn train …
        /// --distributed`, a build with the `mpi` feature); rank 0 writes the run directory.
        #[arg(long, conflicts_with = "virtual_ranks")]
        distributed: bool,
        /// Ranks: after every step, check that every rank holds bit-identical parameters (a
        /// hash exchanged between the ranks); the summary counts the steps checked.
        #[arg(long)]
        verify_ranks: bool,
    },
    /// Check a training configuration (the options of `train`, or --config) without training:
    /// the same validation `train` makes, including options that have no effect; prints `ok`.
    #[command(allow_negative_numbers = true)]
    Check {
        #[command(flatten)]
        options: Box<ConfigArgs>,
        /// Read options from a TOML file.
        #[arg(long, value_name = "FILE.toml")]
        config: Option<PathBuf>,
    },
    /// Draw terminal objects from a trained policy (ε 0, temperature 1) into a CSV file.
    Sample {
        /// Run directory.
        #[arg(long, value_name = "DIR")]
        run: PathBuf,
        /// Number of samples (streamed to the file: any number fits in memory).
        #[arg(long, default_value_t = 10_000, allow_negative_numbers = true)]
        n: i64,
        /// Seed of the sampling RNG.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Output CSV file.
        #[arg(long, value_name = "FILE.csv")]
        out: PathBuf,
    },
    /// Measure raw speed (one JSON line on stdout): used by `cargo xtask bench throughput`.
    #[command(subcommand)]
    Speed(SpeedCmd),
    /// Print the exact metrics of a trained policy; for an EBM run (ebm-2d, ising, digits), the
    /// energy model's log Z by annealed importance sampling and the test NLL it gives.
    Eval {
        /// Run directory.
        #[arg(long, value_name = "DIR")]
        run: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// EBM runs: AIS chains.
        #[arg(long, default_value_t = 200)]
        ais_chains: usize,
        /// EBM runs: AIS temperatures (one Metropolis sweep each).
        #[arg(long, default_value_t = 1000)]
        ais_temps: usize,
        /// EBM runs: seed of the AIS chains.
        #[arg(long, default_value_t = 0)]
        ais_seed: u64,
    },
}

#[derive(Subcommand)]
enum SpeedCmd {
    /// Forward sampling alone, no gradients, with the untrained (seeded) policy of the options.
    #[command(allow_negative_numbers = true)]
    Sample {
        #[command(flatten)]
        options: Box<ConfigArgs>,
        /// Timed rounds of `--batch-size` trajectories each.
        #[arg(long, default_value_t = 20)]
        rounds: usize,
        /// Untimed rounds first.
        #[arg(long, default_value_t = 2)]
        warmup: usize,
    },
    /// Training steps (rollout, loss, backward, update) on the configured device: median and
    /// mean milliseconds per iteration after untimed warm-up steps.
    #[command(allow_negative_numbers = true)]
    Train {
        #[command(flatten)]
        options: Box<ConfigArgs>,
        /// Timed training steps.
        #[arg(long, default_value_t = 50)]
        rounds: usize,
        /// Untimed steps first (kernel loading, allocator warm-up).
        #[arg(long, default_value_t = 5)]
        warmup: usize,
        /// Device engine: also time the phases of each step (rollout, loss, backward, update;
        /// synchronised, in extra steps) and the cost of one small kernel launch.
        #[arg(long)]
        profile: bool,
    },
    /// The best single-thread rate of an n×n×n f32 matrix product (the roofline's ceiling).
    Gemm {
        /// Matrix side n.
        #[arg(long, default_value_t = 256)]
        size: usize,
        /// Timed products; the fastest counts.
        #[arg(long, default_value_t = 200)]
        repeats: usize,
    },
}

/// A failure already printed (by the rank that reports it).
#[derive(Debug)]
struct Reported;

impl std::fmt::Display for Reported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("reported above")
    }
}

impl std::error::Error for Reported {}

/// An error in what the user asked for (exit code 2), as opposed to a failure while running (1).
struct Fatal {
    code: u8,
    error: anyhow::Error,
}

fn usage<T>(r: Result<T>) -> Result<T, Fatal> {
    r.map_err(|error| Fatal { code: 2, error })
}

fn failure<T>(r: Result<T>) -> Result<T, Fatal> {
    r.map_err(|error| Fatal { code: 1, error })
}

fn main() -> ExitCode {
    // Before any thread exists, so that every thread of the process inherits it.
    gfn_core::denormals::FlushDenormals::enable_for_thread();
    let cli = Cli::parse();
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fatal { code, error }) if error.downcast_ref::<Reported>().is_some() => ExitCode::from(code),
        Err(Fatal { code, error }) => {
            let msg = format!("{error:#}").replace('\n', " ");
            eprintln!("error: {msg}");
            ExitCode::from(code)
        }
    }
}

fn dispatch(cmd: Command) -> Result<(), Fatal> {
    match cmd {
        Command::Train {
            options,
            config,
            out,
            resume,
            virtual_ranks,
            distributed,
            verify_ranks,
        } => {
            let ranks = usage(launch_ranks(virtual_ranks, distributed, verify_ranks))?;
            train_cmd(*options, config, out, resume, ranks.as_ref())
        }
        Command::Check { options, config } => {
            new_config(*options, config.as_ref())?;
            println!("ok");
            Ok(())
        }
        Command::Sample { run, n, seed, out } => usage(sample_cmd(&run, n, seed, &out)),
        Command::Eval {
            run,
            json,
            ais_chains,
            ais_temps,
            ais_seed,
        } => usage(eval_cmd(&run, json, (ais_chains, ais_temps, ais_seed))),
        Command::Speed(SpeedCmd::Sample {
            options,
            rounds,
            warmup,
        }) => speed_sample_cmd(*options, rounds, warmup),
        Command::Speed(SpeedCmd::Train {
            options,
            rounds,
            warmup,
            profile,
        }) => speed_train_cmd(*options, rounds, warmup, profile),
        Command::Speed(SpeedCmd::Gemm { size, repeats }) => usage(speed_gemm_cmd(size, repeats)),
    }
}

#[allow(unsafe_code)]
fn set_threads(n: usize) {
    // SAFETY: called from the main thread before any other thread exists or candle runs.
    unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
}

/// How this process takes part in a data-parallel run.
struct Launch {
    ranks: Ranks,
    verify: bool,
}

enum Ranks {
    Virtual(usize),
    #[cfg(feature = "mpi")]
    Mpi(gfn::distributed::MpiEnvironment),
}

impl Launch {
    /// Make `t` train as this process's ranks.
    fn distribute(&self, t: &mut Trainer) -> Result<()> {
        let comm: Box<dyn gfn::distributed::Collective> = match &self.ranks {
            Ranks::Virtual(n) => Box::new(gfn::distributed::VirtualRanks::new(*n)?),
            #[cfg(feature = "mpi")]
            Ranks::Mpi(m) => Box::new(m.ranks()),
        };
        t.distribute(comm)?;
        if let Some(r) = t.ranks_mut() {
            r.set_verify(self.verify);
        }
        Ok(())
    }

    fn rank(&self) -> usize {
        match &self.ranks {
            Ranks::Virtual(_) => 0,
            #[cfg(feature = "mpi")]
            Ranks::Mpi(m) => m.rank(),
        }
    }

    /// After a failure: stop every rank where the others cannot know of it (a failure outside
    /// the ranks' exchange would leave them waiting in it).
    fn stop(&self, fatal: Fatal) -> Fatal {
        #[cfg(feature = "mpi")]
        if let Ranks::Mpi(m) = &self.ranks {
            let from_other = fatal.error.downcast_ref::<gfn::distributed::RankFailure>().is_some();
            if !from_other || m.rank() == 0 {
                eprintln!("error: {}", format!("{:#}", fatal.error).replace('\n', " "));
            }
            if !from_other && m.size() > 1 {
                m.abort(i32::from(fatal.code));
            }
            // Every rank knows of the failure: return, so MPI finalises on every rank.
            return Fatal {
                code: fatal.code,
                error: Reported.into(),
            };
        }
        fatal
    }
}

fn launch_ranks(virtual_ranks: Option<usize>, distributed: bool, verify: bool) -> Result<Option<Launch>> {
    if distributed {
        #[cfg(feature = "mpi")]
        return Ok(Some(Launch {
            ranks: Ranks::Mpi(gfn::distributed::MpiEnvironment::init()?),
            verify,
        }));
        #[cfg(not(feature = "mpi"))]
        bail!(
            "invalid --distributed: this gfn was built without MPI; build it with `cargo build --release -p gfn-cli --features mpi` (OpenMPI: apt install libopenmpi-dev openmpi-bin libclang-dev) and launch it with mpirun"
        );
    }
    match virtual_ranks {
        Some(0) => bail!("invalid --virtual-ranks 0: a run has at least one rank"),
        Some(n) => Ok(Some(Launch {
            ranks: Ranks::Virtual(n),
            verify,
        })),
        None if verify => bail!("invalid --verify-ranks: it checks the ranks of --virtual-ranks or --distributed"),
        None => Ok(None),
    }
}

fn train_cmd(
    options: ConfigArgs,
    config: Option<PathBuf>,
    out: Option<PathBuf>,
    resume: Option<PathBuf>,
    ranks: Option<&Launch>,
) -> Result<(), Fatal> {
    match ranks {
        Some(l) if l.rank() > 0 => follow(options, config, resume, l).map_err(|f| l.stop(f)),
        Some(l) => lead(options, config, out, resume, Some(l)).map_err(|f| l.stop(f)),
        None => lead(options, config, out, resume, None),
    }
}

/// A rank other than 0: the same trainer from the same flags, file or run directory (read only),
/// stepping in lockstep with the others; rank 0 evaluates and writes.
fn follow(options: ConfigArgs, config: Option<PathBuf>, resume: Option<PathBuf>, launch: &Launch) -> Result<(), Fatal> {
    let device = Device::Cpu;
    let mut t = match resume {
        Some(dir) => {
            let dir = RunDir::new(&dir);
            let cfg = usage(dir.read_config())?;
            set_threads(cfg.threads);
            usage(driver::resume::<Trainer>(&dir, options.iterations, &device))?
        }
        None => {
            let cfg = new_config(options, config.as_ref())?;
            set_threads(cfg.threads);
            usage(Trainer::new(cfg, &device))?
        }
    };
    usage(launch.distribute(&mut t))?;
    while t.iteration < t.config.iterations as u64 {
        failure(t.step())?;
    }
    Ok(())
}

fn lead(
    options: ConfigArgs,
    config: Option<PathBuf>,
    out: Option<PathBuf>,
    resume: Option<PathBuf>,
    ranks: Option<&Launch>,
) -> Result<(), Fatal> {
    let device = Device::Cpu;
    // The lock is held until this function returns (or the process exits).
    let (mut trainer, dir, _lock) = if let Some(dir_path) = resume {
        let others: Vec<_> = options.given().into_iter().filter(|&n| n != "iterations").collect();
        if !others.is_empty() || config.is_some() || out.is_some() {
            let mut names: Vec<String> = others.iter().map(|n| format!("--{}", n.replace('_', "-"))).collect();
            if config.is_some() {
                names.push("--config".into());
            }
            if out.is_some() {
                names.push("--out".into());
            }
            return usage(Err(anyhow::anyhow!(
                "--resume continues a run with its own configuration; only --iterations, --virtual-ranks and --distributed may be given with it, not {}",
                names.join(", ")
            )));
        }
        let dir = RunDir::new(&dir_path);
        let lock = usage(dir.lock_existing())?;
        let cfg = usage(dir.read_config())?;
        set_threads(cfg.threads);
        if cfg.env.is_ebm() {
            if ranks.is_some() {
                return usage(Err(anyhow::anyhow!(
                    "invalid env = {}: data-parallel training (--virtual-ranks, --distributed) trains GFlowNet tasks, not the EBM tasks",
                    cfg.env
                )));
            }
            let t = usage(driver::resume::<EbmRun>(&dir, options.iterations, &device))?;
            eprintln!(
                "resuming {} at iteration {} of {}",
                dir.path.display(),
                t.iteration,
                t.config.iterations
            );
            return ebm_cmd(t, &dir);
        }
        let mut t = usage(driver::resume::<Trainer>(&dir, options.iterations, &device))?;
        if let Some(l) = ranks {
            usage(l.distribute(&mut t))?;
        }
        eprintln!(
            "resuming {} at iteration {} of {}",
            dir.path.display(),
            t.iteration,
            t.config.iterations
        );
        (t, dir, lock)
    } else {
        let cfg = new_config(options, config.as_ref())?;
        let out = out.unwrap_or_else(|| {
            PathBuf::from(format!(
                "runs/{}-{}-{}-seed{}",
                cfg.env,
                default_env_tag(&cfg),
                if cfg.env.is_ebm() {
                    cfg.ebm_method.name()
                } else {
                    cfg.loss.name()
                },
                cfg.seed
            ))
        });
        let dir = RunDir::new(&out);
        // Refuses a directory another process trains in, one holding a run (→ --resume) and
        // one holding anything that is not ours.
        let existed = out.exists();
        let lock = usage(dir.create_new())?;
        // A run refused while building (an option its environment cannot take) leaves no
        // directory behind where there was none.
        let discard = |lock: gfn_cli::run_dir::RunLock| {
            drop(lock);
            if !existed {
                let _ = std::fs::remove_dir_all(&out);
            }
        };
        set_threads(cfg.threads);
        if cfg.env.is_ebm() {
            if ranks.is_some() {
                discard(lock);
                return usage(Err(anyhow::anyhow!(
                    "invalid env = {}: data-parallel training (--virtual-ranks, --distributed) trains GFlowNet tasks, not the EBM tasks",
                    cfg.env
                )));
            }
            let t = match EbmRun::new(cfg, &device) {
                Ok(t) => t,
                Err(e) => {
                    discard(lock);
                    return usage(Err(e));
                }
            };
            return ebm_cmd(t, &dir);
        }
        let built = Trainer::new(cfg, &device).and_then(|mut t| {
            if let Some(l) = ranks {
                l.distribute(&mut t)?;
            }
            Ok(t)
        });
        match built {
            Ok(t) => (t, dir, lock),
            Err(e) => {
                discard(lock);
                return usage(Err(e));
            }
        }
    };
    let c = &trainer.config;
    let batch = match trainer.ranks() {
        Some(r) => format!("{} per rank × {} ranks ({})", c.batch_size, r.size(), r.kind()),
        None => c.batch_size.to_string(),
    };
    eprintln!(
        "training {} with {} on {} ({} engine) | batch {} | {} iterations | {} parameters | seed {} | out {}",
        trainer.env.name(),
        trainer.objective.name(),
        trainer.device_name(),
        trainer.engine(),
        batch,
        c.iterations,
        trainer.net.num_params(),
        c.seed,
        dir.path.display()
    );
    let mut bar = Bar::new(c.iterations as u64, trainer.iteration);
    let summary = failure(driver::run(&mut trainer, &dir, &mut bar))?;
    bar.bar.finish_and_clear();
    print_summary(&summary, &dir.path);
    Ok(())
}

/// The configuration of a new run from flags and an optional TOML file, validated: values,
/// memory, and options that have no effect (a flag always; a file's key where it sets a value
/// other than the default, since a run's whole config.toml given back lists every key).
fn new_config(options: ConfigArgs, config: Option<&PathBuf>) -> Result<TrainConfig, Fatal> {
    let file = match config {
        Some(p) => {
            let text =
                usage(std::fs::read_to_string(p).with_context(|| format!("cannot read config file {}", p.display())))?;
            usage(
                toml::from_str::<ConfigArgs>(&text).with_context(|| format!("config file {} is invalid", p.display())),
            )?
        }
        None => ConfigArgs::default(),
    };
    let name = config.map(|p| p.display().to_string()).unwrap_or_default();
    let mut given = options.given();
    let in_file = file.given();
    let cfg: TrainConfig = usage(options.resolve(file, &name).map_err(anyhow::Error::from))?;
    usage(cfg.validate().map_err(anyhow::Error::from))?;
    let defaults = TrainConfig::default();
    given.extend(in_file.into_iter().filter(|f| cfg.value_of(f) != defaults.value_of(f)));
    usage(cfg.check_given(&given).map_err(anyhow::Error::from))?;
    Ok(cfg)
}

fn default_env_tag(c: &TrainConfig) -> String {
    use gfn::options::EnvName;
    match c.env {
        EnvName::Set => c.size.to_string(),
        EnvName::Bag => format!("modes{}", c.task_seed),
        EnvName::Ebm2d => c.dataset.to_string(),
        EnvName::Ising | EnvName::IsingFixed => format!("{0}x{0}-sigma{1}", c.lattice, c.sigma),
        EnvName::Digits => "8x8".into(),
        EnvName::Mis => c.mis_graphs.to_string(),
        EnvName::GraphBuilding => format!("n{}-t{}", c.graph_nodes, c.graph_node_types),
        _ => format!("{}x{}", c.ndim, c.height),
    }
}

/// Train an EBM run with a progress bar, then print its summary.
fn ebm_cmd(mut t: EbmRun, dir: &RunDir) -> Result<(), Fatal> {
    eprintln!(
        "training {} on cpu | batch {} | {} iterations | seed {} | out {}",
        t.describe(),
        t.config.batch_size,
        t.config.iterations,
        t.config.seed,
        dir.path.display()
    );
    let mut bar = EbmBar {
        bar: Bar::new(t.config.iterations as u64, t.iteration).bar,
        last: String::new(),
    };
    let s = failure(driver::run(&mut t, dir, &mut bar))?;
    bar.bar.finish_and_clear();
    let f = |p: &str| {
        s.pointer(p)
            .and_then(|v| v.as_f64())
            .map(|v| format!("{v:.4}"))
            .unwrap_or_else(|| "-".into())
    };
    println!("{}", s["task"].as_str().unwrap_or("?"));
    println!(
        "  {} iterations in {} s ({} iterations/s)",
        s["iterations"],
        f("/wall_seconds"),
        f("/iterations_per_second")
    );
    if s.pointer("/ebm/nll/value").is_some() {
        println!(
            "  EBM test NLL {} ± {} nats (log Z {} ± {})",
            f("/ebm/nll/value"),
            f("/ebm/nll/std_err"),
            f("/ebm/log_z/value"),
            f("/ebm/log_z/std_err")
        );
    }
    if s.pointer("/ebm/nll_uniform_is/value").is_some() {
        println!(
            "  EBM test NLL, uniform importance sampling (the paper's protocol) {} ± {}",
            f("/ebm/nll_uniform_is/value"),
            f("/ebm/nll_uniform_is/std_err")
        );
    }
    if s.pointer("/gfn/nll/value").is_some() {
        println!(
            "  GFlowNet test NLL {} ± {}  (acceptance {})",
            f("/gfn/nll/value"),
            f("/gfn/nll/std_err"),
            f("/gfn/acceptance")
        );
    }
    if s["mmd_e4"].is_number() {
        println!("  MMD ×10⁻⁴ {}", f("/mmd_e4"));
    }
    if s["ising"].is_object() {
        println!(
            "  −log RMSE(J) {}  (lattice couplings: mean {} sd {}; the rest: RMS {}; {} of the squared error on the lattice)",
            f("/ising/neg_log_rmse"),
            f("/ising/edge_mean"),
            f("/ising/edge_sd"),
            f("/ising/off_rms"),
            f("/ising/edge_share")
        );
    }
    if s["bernoulli_baseline"].is_object() {
        println!(
            "  per-pixel Bernoulli baseline NLL {} ± {}",
            f("/bernoulli_baseline/nll"),
            f("/bernoulli_baseline/std_err")
        );
    }
    println!("  run directory {}", dir.path.display());
    Ok(())
}

struct EbmBar {
    bar: ProgressBar,
    last: String,
}

impl Progress<EbmRecord> for EbmBar {
    fn on_step(&mut self, iteration: u64, loss: f64) {
        if iteration.is_multiple_of(10) {
            self.bar.set_position(iteration);
            self.bar.set_message(format!("EBM loss {loss:.4}{}", self.last));
        }
    }
    fn on_eval(&mut self, r: &EbmRecord) {
        self.last = match (r.ebm_nll, r.neg_log_rmse) {
            (Some(n), _) => format!(" | NLL {:.3}", n.value),
            (_, Some(v)) => format!(" | −log RMSE {v:.3}"),
            _ => String::new(),
        };
        self.bar.set_position(r.iteration);
    }
}

struct Bar {
    bar: ProgressBar,
    last_tv: Option<f64>,
}

impl Bar {
    fn new(total: u64, start: u64) -> Self {
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}")
                .expect("valid template"),
        );
        bar.set_position(start);
        Self { bar, last_tv: None }
    }
}

impl Progress<EvalRecord> for Bar {
    fn on_step(&mut self, iteration: u64, loss: f64) {
        if iteration.is_multiple_of(10) {
            self.bar.set_position(iteration);
            let tv = self.last_tv.map(|t| format!(" | exact TV {t:.4}")).unwrap_or_default();
            self.bar.set_message(format!("loss {loss:.4}{tv}"));
        }
    }
    fn on_eval(&mut self, r: &EvalRecord) {
        // A conditional GFlowNet: the worst condition's TV.
        self.last_tv = r
            .exact
            .map(|e| e.dist.tv)
            .or_else(|| r.conditions.iter().map(|c| c.exact.dist.tv).reduce(f64::max));
        self.bar.set_position(r.iteration);
    }
}

fn print_summary(s: &serde_json::Value, dir: &Path) {
    let f = |p: &str| {
        s.pointer(p)
            .and_then(|v| v.as_f64())
            .map(|v| format!("{v:.4}"))
            .unwrap_or_else(|| "-".into())
    };
    println!(
        "{} · {} · {} iterations · {} trajectories",
        s["env"].as_str().unwrap_or("?"),
        s["loss"].as_str().unwrap_or("?"),
        s["iterations"],
        s["trajectories"]
    );
    println!(
        "  training time {} s ({} trajectories/s, {} iterations/s)",
        f("/wall_seconds"),
        s["trajectories_per_second"]
            .as_f64()
            .map(|v| format!("{v:.0}"))
            .unwrap_or_default(),
        s["iterations_per_second"]
            .as_f64()
            .map(|v| format!("{v:.1}"))
            .unwrap_or_default()
    );
    if s["exact"].is_object() {
        println!(
            "  exact   TV {}  L1 {}  JSD {}  KL(p*‖P_T) {}",
            f("/exact/tv"),
            f("/exact/l1_sum"),
            f("/exact/jsd"),
            // JSON has no infinity: an infinite KL (P_T misses mass p* has) is null there.
            s.pointer("/exact/kl")
                .and_then(|v| v.as_f64())
                .map(|v| format!("{v:.4}"))
                .unwrap_or_else(|| "inf".into())
        );
        println!(
            "  mean of last 5 evaluations: L1 {}  TV {}",
            f("/exact_last5_mean/l1_sum"),
            f("/exact_last5_mean/tv")
        );
        println!("  log Z   learned {}  true {}", f("/log_z/learned"), f("/log_z/true"));
    } else if let Some(conditions) = s["conditions"].as_array() {
        for c in conditions {
            let g = |p: &str| {
                c.pointer(p)
                    .and_then(|v| v.as_f64())
                    .map(|v| format!("{v:.4}"))
                    .unwrap_or_default()
            };
            println!(
                "  exact at {}: TV {}  L1 {}  JSD {}  log Z learned {} true {}",
                c["label"].as_str().unwrap_or_default(),
                g("/tv"),
                g("/l1_sum"),
                g("/jsd"),
                g("/log_z/learned"),
                g("/log_z/true")
            );
        }
    } else {
        println!("  (no exact evaluation: the space is too large to enumerate)");
    }
    if let Some(k) = s["top_k"].as_object() {
        println!(
            "  top-{} distinct samples: mean reward {}  diversity {}  ({} held)",
            k["k"],
            f("/top_k/mean_reward"),
            f("/top_k/diversity"),
            k["found"]
        );
    }
    if let Some(c) = s.pointer("/target/top_k_mean_reward").and_then(|v| v.as_f64())
        && let Some(m) = s.pointer("/top_k/mean_reward").and_then(|v| v.as_f64())
    {
        // The ceiling is the mean of the best k objects: a mean over fewer held objects is not
        // comparable with it (it can exceed it).
        let (k, found) = (
            s.pointer("/top_k/k").and_then(|v| v.as_u64()),
            s.pointer("/top_k/found").and_then(|v| v.as_u64()),
        );
        if k.is_some() && k == found {
            println!("  exact ceiling of that mean {c:.4} (reached {:.1}%)", 100.0 * m / c);
        } else {
            println!(
                "  exact ceiling of the top-{} mean {c:.4} (not comparable: only {} distinct objects held)",
                k.unwrap_or(0),
                found.unwrap_or(0)
            );
        }
    }
    if s["recent"].is_object() {
        println!(
            "  last {} measured samples: mean reward {}  E_p*[R] {}  relative error {}",
            s["recent"]["samples"],
            f("/recent/mean_reward"),
            f("/target/mean_reward"),
            f("/recent/relative_error")
        );
    }
    if let (Some(found), Some(total)) = (s.pointer("/modes/found"), s.pointer("/modes/total")) {
        println!("  modes visited {found}/{total}");
    }
    if let Some(task) = s.get("task").and_then(|v| v.as_object()) {
        let figures: Vec<String> = task
            .iter()
            .map(|(k, v)| match v.as_f64() {
                Some(x) if x.fract() == 0.0 && x.abs() < 1e9 => format!("{k} {x}"),
                Some(x) => format!("{k} {x:.4}"),
                None => format!("{k} —"),
            })
            .collect();
        println!("  task: {}", figures.join("  "));
    }
    if let Some(frac) = s.pointer("/led/fraction_of_training").and_then(|v| v.as_f64()) {
        println!("  LED potential updates: {:.1}% of training time", 100.0 * frac);
    }
    println!("  run directory {}", dir.display());
}

fn sample_cmd(run: &Path, n: i64, seed: u64, out: &Path) -> Result<()> {
    if n < 1 {
        bail!("invalid n = {n}: must be at least 1");
    }
    let n = n as u64;
    let dir = RunDir::new(run);
    let cfg = dir.read_config()?;
    failure_note(&dir)?;
    set_threads(cfg.threads);
    let t = driver::load::<Trainer>(&dir, &Device::Cpu)?;
    // Opened before sampling: a bad --out fails at once, and rows stream to it (memory stays
    // one chunk whatever n is); it replaces `out` only when complete.
    let mut file = gfn::io::AtomicWriter::create(out)?;
    let env = t.env.as_ref();
    let mut rng = rng_from_seed(seed);
    let mut sampler = Sampler::new();
    let mut batch = TrajectoryBatch::default();
    let d = env.state_dim();
    let mut text: String = (0..d).map(|i| format!("x{i},")).collect();
    text.push_str("log_reward\n");
    let mut left = n;
    while left > 0 {
        let k = left.min(4096) as usize;
        t.net
            .sample(env, &mut sampler, k, SamplingOptions::default(), &mut rng, &mut batch)?;
        for b in 0..k {
            for x in batch.terminal_state(b) {
                text.push_str(&format!("{x},"));
            }
            text.push_str(&format!("{}\n", batch.log_reward[b]));
        }
        file.write_all(text.as_bytes())
            .with_context(|| format!("cannot write {}", out.display()))?;
        text.clear();
        left -= k as u64;
    }
    file.commit()?;
    eprintln!("wrote {n} samples to {}", out.display());
    Ok(())
}

/// Say so when the run in `dir` stopped on an error (and refuse where it left no valid state).
fn failure_note(dir: &RunDir) -> Result<()> {
    let Some(f) = dir.read_failure()? else {
        return Ok(());
    };
    match f.last_checkpoint {
        Some(i) if dir.file(files::CHECKPOINT).exists() => {
            eprintln!(
                "note: this run stopped at iteration {}: {}\nnote: what follows is its last valid state, iteration {i}",
                f.iteration, f.reason
            );
            Ok(())
        }
        _ => bail!(
            "{} holds no valid state: the run stopped at iteration {} before its first checkpoint: {}",
            dir.path.display(),
            f.iteration,
            f.reason
        ),
    }
}

fn eval_cmd(run: &Path, json: bool, ais: (usize, usize, u64)) -> Result<()> {
    let dir = RunDir::new(run);
    let cfg = dir.read_config()?;
    failure_note(&dir)?;
    set_threads(cfg.threads);
    if cfg.env.is_ebm() {
        let t = driver::resume::<EbmRun>(&dir, None, &Device::Cpu)?;
        let start = std::time::Instant::now();
        let (log_z, nll) = t.ais(ais.0, ais.1, ais.2)?;
        let seconds = start.elapsed().as_secs_f64();
        let coupling = t.coupling()?;
        let out = serde_json::json!({
            "env": cfg.env,
            "method": cfg.ebm_method,
            "iteration": t.iteration,
            "ais": {"chains": ais.0, "temperatures": ais.1, "seed": ais.2, "seconds": seconds},
            "log_z": log_z,
            "ebm_nll": nll,
            "ising": coupling.map(|c| serde_json::json!({
                "neg_log_rmse": c.neg_log_rmse, "edge_mean": c.edge_mean, "edge_true_mean": c.edge_true_mean,
                "edge_sd": c.edge_sd, "off_rms": c.off_rms, "edge_share": c.edge_share,
            })),
        });
        if json {
            println!("{}", serde_json::to_string_pretty(&out)?);
        } else {
            println!("{} · {} · iteration {}", cfg.env, cfg.ebm_method, t.iteration);
            println!(
                "  log Z (AIS, {} chains × {} temperatures, {seconds:.0} s)  {:.4} ± {:.4}",
                ais.0, ais.1, log_z.value, log_z.std_err
            );
            if let Some(n) = nll {
                println!("  EBM test NLL  {:.4} ± {:.4}", n.value, n.std_err);
            }
            if let Some(c) = coupling {
                println!(
                    "  −log RMSE(J) {:.4}: lattice couplings mean {:.4} (true {:.4}) sd {:.4}; the rest RMS {:.4}; {:.0}% of the squared error on the lattice",
                    c.neg_log_rmse,
                    c.edge_mean,
                    c.edge_true_mean,
                    c.edge_sd,
                    c.off_rms,
                    100.0 * c.edge_share
                );
            }
        }
        return Ok(());
    }
    let mut t = driver::load::<Trainer>(&dir, &Device::Cpu)?;
    if t.evaluator.is_none() {
        bail!("environment {} is not enumerable: no exact metrics", t.env.name());
    }
    let rec = t.evaluate()?;
    let e = rec.exact.expect("enumerable");
    if json {
        println!("{}", serde_json::to_string_pretty(&e)?);
    } else {
        println!("{} · {} · iteration {}", t.env.name(), t.objective.name(), t.iteration);
        println!("  tv       {:.6}", e.dist.tv);
        println!("  l1_sum   {:.6}", e.dist.l1_sum);
        println!("  l1_mean  {:.3e}", e.dist.l1_mean);
        println!("  jsd      {:.6}", e.dist.jsd);
        println!("  kl       {:.6}  (KL(p*‖P_T))", e.dist.kl);
        println!(
            "  log Z    learned {:.6}  true {:.6}  |error| {:.6}",
            e.log_z_learned, e.log_z_true, e.log_z_error
        );
        if let Some(m) = rec.modes_found {
            println!(
                "  modes visited in training {m}/{}",
                t.evaluator.as_ref().map_or(0, |ev| ev.num_modes())
            );
        }
    }
    Ok(())
}

fn speed_sample_cmd(options: ConfigArgs, rounds: usize, warmup: usize) -> Result<(), Fatal> {
    if rounds == 0 {
        return usage(Err(anyhow::anyhow!("invalid rounds = 0: must be at least 1")));
    }
    let cfg: TrainConfig = usage(options.resolve(ConfigArgs::default(), "").map_err(anyhow::Error::from))?;
    usage(cfg.validate().map_err(anyhow::Error::from))?;
    set_threads(cfg.threads);
    let t = usage(Trainer::new(cfg, &Device::Cpu))?;
    failure((|| -> Result<()> {
        let env = t.env.as_ref();
        let n = t.config.batch_size;
        let opts = t.sampling_options();
        let mut rng = rng_from_seed(t.config.seed);
        let mut sampler = Sampler::new();
        let mut batch = TrajectoryBatch::default();
        // One inference tape for every round (the MLP's fast path), as training keeps one.
        let mut fast = match &t.net {
            Net::Mlp(e) => Inference::new(e),
            Net::Seam(_) => None,
        };
        let engine = if fast.is_some() { "tape" } else { "graph" };
        let mut wall = 0.0;
        let (mut steps, mut rows) = (0usize, 0usize);
        for round in 0..warmup + rounds {
            let start = std::time::Instant::now();
            match &mut fast {
                Some(f) => sampler.sample_forward_with(env, f, n, opts, &mut rng, &mut batch)?,
                None => t.net.sample(env, &mut sampler, n, opts, &mut rng, &mut batch)?,
            }
            if round >= warmup {
                wall += start.elapsed().as_secs_f64();
                steps += batch.lengths.iter().map(|&l| l as usize).sum::<usize>();
                rows += batch.num_rows();
            }
        }
        let trajectories = n * rounds;
        // Forward only: 2·in·out per layer and evaluated state.
        let fwd_flops_per_row: f64 = match &t.net {
            Net::Mlp(e) => e
                .nets()
                .iter()
                .take(1)
                .map(|net| net.dims().windows(2).map(|w| 2.0 * (w[0] * w[1]) as f64).sum::<f64>())
                .sum(),
            // A third of the training step's forward-and-backward count.
            Net::Seam(s) => s.flops_per_row() / 3.0,
        };
        let out = serde_json::json!({
            "mode": "sample",
            "env": env.name(),
            "engine": engine,
            "batch_size": n,
            "hidden": t.config.hidden,
            "layers": t.config.layers,
            "rounds": rounds,
            "warmup": warmup,
            "trajectories": trajectories,
            "wall_seconds": wall,
            "trajectories_per_second": trajectories as f64 / wall,
            "mean_length": steps as f64 / trajectories as f64,
            "rows": rows,
            "forward_gflops_per_second": fwd_flops_per_row * rows as f64 / wall / 1e9,
        });
        println!("{out}");
        Ok(())
    })())
}

fn speed_train_cmd(options: ConfigArgs, rounds: usize, warmup: usize, profile: bool) -> Result<(), Fatal> {
    if rounds == 0 {
        return usage(Err(anyhow::anyhow!("invalid rounds = 0: must be at least 1")));
    }
    let given = options.given();
    let mut cfg: TrainConfig = usage(options.resolve(ConfigArgs::default(), "").map_err(anyhow::Error::from))?;
    cfg.iterations = (rounds + warmup).max(cfg.iterations);
    usage(cfg.validate().map_err(anyhow::Error::from))?;
    usage(cfg.check_given(&given).map_err(anyhow::Error::from))?;
    set_threads(cfg.threads);
    let mut t = usage(Trainer::new(cfg, &Device::Cpu))?;
    failure((|| -> Result<()> {
        let mut ms = Vec::with_capacity(rounds);
        let mut last = f64::NAN;
        for round in 0..warmup + rounds {
            let start = std::time::Instant::now();
            last = t.step()?;
            if round >= warmup {
                ms.push(start.elapsed().as_secs_f64() * 1e3);
            }
        }
        // Profile in extra steps, so the timed ones above carry no synchronisation.
        let mut phases_ms = serde_json::Value::Null;
        let mut launch_us = serde_json::Value::Null;
        if profile && t.set_device_profile(true) {
            let mut acc = [0.0f64; 4];
            for _ in 0..rounds {
                t.step()?;
                if let Some(p) = t.device_phases {
                    for (a, v) in acc.iter_mut().zip(p) {
                        *a += v * 1e3 / rounds as f64;
                    }
                }
            }
            phases_ms = serde_json::json!({"rollout": acc[0], "loss": acc[1], "backward": acc[2], "update": acc[3]});
            let dev = t.net.device().clone();
            let x = candle_core::Tensor::zeros((512, 256), candle_core::DType::F32, &dev)?;
            let mut y = x.relu()?;
            dev.synchronize()?;
            let start = std::time::Instant::now();
            for _ in 0..2000 {
                y = y.relu()?;
            }
            dev.synchronize()?;
            launch_us = serde_json::json!(start.elapsed().as_secs_f64() * 1e6 / 2000.0);
        }
        let mean = ms.iter().sum::<f64>() / ms.len() as f64;
        let mut sorted = ms.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[sorted.len() / 2];
        let out = serde_json::json!({
            "mode": "train",
            "library": "gfn",
            "env": t.env.name(),
            "loss": t.objective.name(),
            "device": t.device_name(),
            "engine": t.engine(),
            "threads": t.config.threads,
            "batch_size": t.config.batch_size,
            "hidden": t.config.hidden,
            "layers": t.config.layers,
            "policy": t.config.policy,
            "num_params": t.net.num_params(),
            "backward_policy": t.config.backward_policy,
            "rounds": rounds,
            "warmup": warmup,
            "ms_per_iter_median": median,
            "ms_per_iter_mean": mean,
            "ms_per_iter_min": sorted[0],
            "last_loss": last,
            "phases_ms": phases_ms,
            "relu_launch_us": launch_us,
        });
        println!("{out}");
        Ok(())
    })())
}

fn speed_gemm_cmd(size: usize, repeats: usize) -> Result<()> {
    if size == 0 || repeats == 0 {
        bail!("invalid size = {size}, repeats = {repeats}: both must be at least 1");
    }
    // Three n×n f32 matrices: refused before allocating where they cannot fit.
    gfn::memory::check(
        &[gfn::memory::Need {
            field: "size",
            value: size.to_string(),
            what: "three size × size f32 matrices".into(),
            bytes: 12.0 * (size as f64) * (size as f64),
        }],
        gfn::memory::machine_memory(),
    )?;
    set_threads(1);
    let n = size;
    let mut rng = rng_from_seed(0);
    let mut fill = |len: usize| -> Vec<f32> {
        use rand::Rng;
        (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    };
    let a = fill(n * n);
    let b = fill(n * n);
    let mut c = vec![0.0f32; n * n];
    let mut times = Vec::with_capacity(repeats);
    for _ in 0..repeats + 3 {
        let start = std::time::Instant::now();
        gfn_core::tape::sgemm(n, n, n, &a, false, &b, false, &mut c, false);
        times.push(start.elapsed().as_secs_f64());
    }
    let times = &mut times[3..];
    times.sort_by(f64::total_cmp);
    let flop = 2.0 * (n as f64).powi(3);
    let out = serde_json::json!({
        "mode": "gemm",
        "size": n,
        "repeats": repeats,
        "threads": 1,
        "best_seconds": times[0],
        "median_seconds": times[times.len() / 2],
        "best_gflops": flop / times[0] / 1e9,
        "median_gflops": flop / times[times.len() / 2] / 1e9,
        "checksum": c.iter().map(|&v| f64::from(v)).sum::<f64>(),
    });
    println!("{out}");
    Ok(())
}
