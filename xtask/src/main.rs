//! Project automation for the gfn workspace: `cargo xtask bench <suite>`.
//!
//! `cargo xtask bench hypergrid [--quick] [--seeds N] [--vs torchgfn] [--threads 1]` builds
//! the `gfn` binary, makes the suite's training runs one at a time (each followed by the
//! peer library's run of the same configuration with `--vs`), and writes
//! `target/bench/<suite>/<UTC timestamp>/results.{json,md}`, pointing
//! `target/bench/<suite>/latest` at it. See `xtask/README.md`.

mod bench;
mod claims;
mod cuda;
mod curves;
mod data_suite;
mod ebm;
mod judge;
mod led;
mod plot;
mod report;
mod results;
mod runner;
mod subtb;
mod suite;
mod sysinfo;
mod throughput;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// Project automation for the gfn workspace.
#[derive(Parser, Debug)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a benchmark suite and write target/bench/<suite>/<timestamp>/results.{json,md}.
    Bench(BenchArgs),
    /// Regenerate the generated sections of docs/RESULTS.md and README.md, and every suite's
    /// tables and plots, from the raw records committed under docs/results/<suite>/.
    Results {
        /// Write nothing; fail when the committed documents differ from what would be generated.
        #[arg(long)]
        check: bool,
    },
    /// Copy a suite run's raw records (results.json, each run's config, metrics and summary, the
    /// peers' outputs) into docs/results/<suite>/, for `cargo xtask results` and for committing.
    Publish {
        /// Results directory, e.g. target/bench/subtb/latest.
        dir: std::path::PathBuf,
    },
    /// Build with `--features cuda` on a machine without a GPU or a system CUDA (nvcc from PATH,
    /// $CUDA_HOME, or PyPI wheels installed into target/cuda-toolchain), run gfn-cuda's tests
    /// (the GPU ones skip without a GPU), and optionally bundle the binaries for a GPU machine.
    CheckCuda {
        /// Write gfn.xz, kernels.xz and gpu.xz (gfn-cuda's tests) and xtask.xz, stripped, into
        /// this folder.
        #[arg(long, value_name = "DIR")]
        bundle: Option<std::path::PathBuf>,
        /// Build only; do not run the tests.
        #[arg(long)]
        no_test: bool,
    },
    /// Finish an interrupted suite run: make the planned runs of DIR that have no successful
    /// record (from scratch, with the gfn built from the current tree), add them to its
    /// results.json and results.md in plan order, and note the call there under `resumed`.
    Resume {
        /// Results directory, e.g. target/bench/ebm/latest.
        dir: std::path::PathBuf,
        /// Runs made at once.
        #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        jobs: u32,
    },
    /// Rewrite results.md, results.json and the plots of an earlier suite run (DIR holds its
    /// results.json) with the current tables and plots.
    Rerender {
        /// Results directory, e.g. target/bench/subtb/latest.
        dir: std::path::PathBuf,
    },
}

#[derive(Args, Debug)]
struct BenchArgs {
    /// Suite to run: hypergrid, throughput, subtb, led, ebm, pg, networks, conditional, mis.
    suite: String,
    /// The reduced suite: seed 0 only and a subset of configurations (a few minutes).
    #[arg(long)]
    quick: bool,
    /// Seeds per configuration (seeds 0..N; default 3, or 1 with --quick).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    seeds: Option<u32>,
    /// Also run peer libraries on every configuration, interleaved with ours (A B C A B C …):
    /// a comma-separated list of torchgfn, gfnx.
    #[arg(long, value_name = "PEER[,PEER]", value_delimiter = ',')]
    vs: Vec<String>,
    /// Only the runs whose name contains this text (e.g. `4x8-tb`), or any of a
    /// comma-separated list (`2d-circles,ising`).
    #[arg(long, value_name = "TEXT[,TEXT]")]
    filter: Option<String>,
    /// Runs made at once (each with --threads threads); not with --vs, whose timings must not
    /// share the machine.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    jobs: u32,
    /// Intra-op threads of every run (ours and the peer's).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    threads: u32,
    /// Where our runs train: cpu, or cuda / cuda:N (builds gfn with `--features cuda` into
    /// target/cuda; the device engine runs hypergrid, bitseq and ising-fixed with tb or subtb).
    #[arg(long, value_name = "DEVICE", default_value = "cpu")]
    device: String,
    /// Run this gfn binary instead of building one (a GPU machine without a Rust toolchain runs
    /// the one `cargo xtask check-cuda --bundle` made).
    #[arg(long, value_name = "PATH")]
    gfn_binary: Option<std::path::PathBuf>,
}

/// Prints a one-line usage error and returns exit code 2.
fn usage_error(msg: &str) -> ExitCode {
    eprintln!("error: {msg} (see `cargo xtask bench --help`)");
    ExitCode::from(2)
}

/// The command line as typed, shell-quoted where needed.
fn command_line() -> String {
    let quote = |a: String| {
        if !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c)) {
            a
        } else {
            format!("'{}'", a.replace('\'', r"'\''"))
        }
    };
    let args: Vec<String> = std::env::args().skip(1).map(quote).collect();
    format!("cargo xtask {}", args.join(" "))
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                    let _ = e.print();
                    ExitCode::SUCCESS
                }
                ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    let _ = e.print();
                    ExitCode::from(2)
                }
                _ => {
                    let rendered = e.render().to_string();
                    let first = rendered.lines().next().unwrap_or("bad arguments");
                    usage_error(first.trim_start_matches("error: "))
                }
            };
        }
    };
    match cli.command {
        Command::Bench(args) => bench_cmd(args),
        Command::Rerender { dir } => done(bench::rerender(&dir), |()| {
            eprintln!("rewrote {}", dir.join("results.md").display())
        }),
        Command::Resume { dir, jobs } => suite_outcome(bench::resume(&dir, jobs, command_line()).map(|ok| (dir, ok))),
        Command::CheckCuda { bundle, no_test } => done(cuda::check_cuda(&cuda::CheckCuda { bundle, no_test }), |()| {}),
        Command::Publish { dir } => done(results::publish(&dir).map(|to| (dir, to)), |(dir, to)| {
            eprintln!("copied the records of {} to {}", dir.display(), to.display())
        }),
        Command::Results { check } => done(results::regenerate(check), |()| {}),
    }
}

/// Exit code of a command's outcome: `on_ok` its value, or the error printed.
fn done<T>(outcome: anyhow::Result<T>, on_ok: impl FnOnce(T)) -> ExitCode {
    match outcome {
        Ok(v) => {
            on_ok(v);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn bench_cmd(args: BenchArgs) -> ExitCode {
    let options = suite::SuiteOptions {
        quick: args.quick,
        seeds: args.seeds,
        threads: args.threads,
    };
    let Some(mut suite) = suite::build(&args.suite, &options) else {
        let known = suite::SUITES.join(", ");
        return usage_error(&format!("unknown suite '{}' (known: {known})", args.suite));
    };
    if let Some(text) = &args.filter {
        let any: Vec<&str> = text.split(',').map(str::trim).filter(|t| !t.is_empty()).collect();
        suite.runs.retain(|r| any.iter().any(|t| r.name.contains(t)));
        if suite.runs.is_empty() {
            return usage_error(&format!("--filter {text} matches no run of suite {}", suite.name));
        }
    }
    if args.device != "cpu" {
        if !(args.device == "cuda"
            || args
                .device
                .strip_prefix("cuda:")
                .is_some_and(|n| n.parse::<u32>().is_ok()))
        {
            return usage_error(&format!(
                "invalid --device {}: must be cpu, cuda or cuda:N",
                args.device
            ));
        }
        // Runs the device engine cannot make are left out, each named, rather than failed.
        let mut left_out = Vec::new();
        suite.runs.retain(|r| match suite::device_engine_covers(&r.gfn_args) {
            Ok(()) => true,
            Err(why) => {
                left_out.push(format!("{} ({why})", r.name));
                false
            }
        });
        if !left_out.is_empty() {
            eprintln!(
                "--device {}: leaving out {} run(s) the device engine does not cover: {}",
                args.device,
                left_out.len(),
                left_out.join(", ")
            );
        }
        if suite.runs.is_empty() {
            return usage_error(&format!(
                "--device {}: the device engine covers no run of suite {} (it trains hypergrid, bitseq and ising-fixed with tb or subtb)",
                args.device, suite.name
            ));
        }
        for run in &mut suite.runs {
            run.gfn_args.extend(["--device".to_string(), args.device.clone()]);
        }
    }
    if args.jobs > 1 && !args.vs.is_empty() {
        return usage_error("--jobs runs alone: peers' timings (--vs) must not share the machine");
    }
    if let Some(vs) = args.vs.iter().find(|vs| !suite.peers.iter().any(|p| &p.name == vs)) {
        let known: Vec<&str> = suite.peers.iter().map(|p| p.name).collect();
        return usage_error(&format!(
            "unknown peer '{vs}' for suite {} (known: {})",
            suite.name,
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        ));
    }
    let request = bench::BenchRequest {
        suite: args.suite.clone(),
        options,
        vs: args.vs.clone(),
        command: command_line(),
        filter: args.filter.clone(),
        jobs: args.jobs,
        device: args.device.clone(),
        gfn_binary: args.gfn_binary.clone(),
    };
    suite_outcome(bench::run(request, suite))
}

/// Prints a suite run's `results.md` and where it lies; exit code 1 if a run failed or the
/// suite could not run.
fn suite_outcome(outcome: anyhow::Result<(std::path::PathBuf, bool)>) -> ExitCode {
    match outcome {
        Ok((dir, all_ok)) => {
            match std::fs::read_to_string(dir.join("results.md")) {
                Ok(md) => print!("{md}"),
                Err(e) => eprintln!("error: cannot read {}: {e}", dir.join("results.md").display()),
            }
            eprintln!("results: {}", dir.display());
            if all_ok {
                ExitCode::SUCCESS
            } else {
                eprintln!("some runs failed (listed at the end of results.md)");
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
