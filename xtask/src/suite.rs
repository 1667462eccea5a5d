//! Suite definitions: which runs a benchmark makes and which figures its tables show.
//!
//! A new suite is a file `xtask/suites/<name>.toml` (see [`crate::data_suite`]) and one more
//! entry in [`SUITES`]; the runner and the writers are generic.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Options of `cargo xtask bench` that shape a suite.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SuiteOptions {
    /// The reduced suite (`--quick`).
    pub quick: bool,
    /// Seeds per configuration (`--seeds`); `None` = the suite's default.
    pub seeds: Option<u32>,
    /// Intra-op threads of every run (ours and the peer's).
    pub threads: u32,
}

/// A named suite, built from the options.
pub struct SuiteDef {
    /// Name on the command line: `cargo xtask bench <name>`.
    pub name: &'static str,
    /// Builds the suite's runs.
    pub build: fn(&SuiteOptions) -> Suite,
}

/// Every suite `cargo xtask bench` knows.
pub const SUITES: &[SuiteDef] = &[
    SuiteDef {
        name: "hypergrid",
        build: |o| crate::data_suite::build("hypergrid", o),
    },
    SuiteDef {
        name: "throughput",
        build: crate::throughput::throughput,
    },
    SuiteDef {
        name: "subtb",
        build: |o| crate::data_suite::build("subtb", o),
    },
    SuiteDef {
        name: "led",
        build: |o| crate::data_suite::build("led", o),
    },
    SuiteDef {
        name: "ebm",
        build: |o| crate::data_suite::build("ebm", o),
    },
    SuiteDef {
        name: "pg",
        build: |o| crate::data_suite::build("pg", o),
    },
    SuiteDef {
        name: "networks",
        build: |o| crate::data_suite::build("networks", o),
    },
    SuiteDef {
        name: "conditional",
        build: |o| crate::data_suite::build("conditional", o),
    },
    SuiteDef {
        name: "mis",
        build: |o| crate::data_suite::build("mis", o),
    },
];

/// Looks a suite up by name.
/// Whether `loss` trains a scalar log Z (so `--lr-logz` has an effect): tb, the policy-gradient
/// losses and vi, as gfn's `Objective::uses_log_z`. gfn refuses an option that has no effect.
pub fn trains_log_z(loss: &str) -> bool {
    matches!(loss, "tb" | "pg-u" | "pg-b" | "pg-g" | "pg-trpo" | "vi")
}

/// Whether the device engine (`--device cuda`) can make a run with these gfn arguments: a `train`
/// or `speed train` run on hypergrid, bitseq or ising-fixed with tb or subtb, without replay,
/// local search, metric sampling, gradient-cosine probes or the tape engine (what `gfn`'s
/// device validation accepts). `Err` says why not.
pub fn device_engine_covers(args: &[String]) -> Result<(), String> {
    let mode = args.first().map(String::as_str);
    let speed_train = mode == Some("speed") && args.get(1).map(String::as_str) == Some("train");
    if mode != Some("train") && !speed_train {
        return Err(format!("gfn {} is not a training run", mode.unwrap_or("")));
    }
    let value = |flag: &str| args.windows(2).rev().find(|w| w[0] == flag).map(|w| w[1].as_str());
    let env = value("--env").unwrap_or("hypergrid");
    if !matches!(env, "hypergrid" | "bitseq" | "ising-fixed") {
        return Err(format!("env {env}"));
    }
    let loss = value("--loss").unwrap_or("tb");
    if !matches!(loss, "tb" | "subtb") {
        return Err(format!("loss {loss}"));
    }
    for flag in [
        "--replay-size",
        "--local-search",
        "--metric-batch",
        "--grad-cosine-every",
    ] {
        if value(flag).is_some_and(|v| v != "0") {
            return Err(format!("{flag} {}", value(flag).unwrap_or("")));
        }
    }
    if value("--engine") == Some("tape") {
        return Err("engine tape".into());
    }
    Ok(())
}

pub fn find(name: &str) -> Option<&'static SuiteDef> {
    SUITES.iter().find(|s| s.name == name)
}

/// A benchmark suite: a list of runs of `gfn` and the figures to tabulate.
pub struct Suite {
    /// Suite name (directory `target/bench/<name>/`).
    pub name: &'static str,
    /// Header of the first table column (what distinguishes rows: the loss, ...).
    pub row_header: &'static str,
    /// The runs, in the order they are made.
    pub runs: Vec<RunSpec>,
    /// Figures of our runs shown in the tables, in column order.
    pub metrics: Vec<Metric>,
    /// Our milliseconds per iteration (for the speed ratio against a peer).
    pub ms_per_iteration: Extract,
    /// Peers this suite can be compared with (`--vs <name>`).
    pub peers: Vec<PeerSpec>,
    /// Plots and extra tables.
    pub extra: Option<Extra>,
    /// How the suite's quality figures are computed, under its tables; `None`: the exact
    /// evaluations' note (the mean of a run's last 5 exact L1 and TV).
    pub quality_note: Option<&'static str>,
}

/// One run of `gfn` (and its counterpart with a peer library, if any).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSpec {
    /// Unique name, the run's directory under `runs/`: `2x8-tb-seed0`.
    pub name: String,
    /// The table this run belongs to (one per environment).
    pub group: String,
    /// Its row in that table (the loss, ...).
    pub row: String,
    /// Seed of the run.
    pub seed: u64,
    /// Arguments of the `gfn` binary, without `--out`.
    pub gfn_args: Vec<String>,
    /// Arguments of the peer driver (after the script path); empty = no peer counterpart.
    pub peer_args: Vec<String>,
    /// Where the run's figures come from.
    pub output: Output,
}

/// Where a run's figures come from.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub enum Output {
    /// `gfn train --out DIR`: `DIR/summary.json`, `metrics.jsonl`, `timing.json`.
    RunDir,
    /// A JSON line on stdout (`gfn speed ...`).
    Stdout,
}

/// Extra output of a suite after its tables: plots written into the results directory and
/// the markdown that shows them.
pub type Extra = fn(&crate::bench::Session, &[crate::report::Aggregate], &std::path::Path) -> anyhow::Result<String>;

/// Reads one figure out of a run record (`{"summary": ..., "peak_rss_mb": ...}` for ours,
/// `{"output": ..., "peak_rss_mb": ...}` for a peer).
pub type Extract = &'static (dyn Fn(&Value) -> Option<f64> + Sync);

/// How a figure is summarised over seeds in the tables.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub enum Agg {
    /// Median over seeds (speeds).
    Median,
    /// Mean ± sample standard deviation over seeds (quality).
    MeanStd,
    /// Mean over seeds.
    Mean,
    /// Largest value over seeds (memory).
    Max,
    /// Sum over seeds (a count of seeds, from per-run values of 0 or 1).
    Sum,
}

/// A column of a results table.
pub struct Metric {
    /// Column header in `results.md`.
    pub header: &'static str,
    /// Key in `results.json`'s aggregates.
    pub key: &'static str,
    /// Label in the progress lines.
    pub short: &'static str,
    /// Extracts the figure from a run record.
    pub value: Extract,
    /// Summary over seeds.
    pub agg: Agg,
    /// Decimal places in the table.
    pub digits: usize,
}

/// A peer library that a suite can be run side by side with.
pub struct PeerSpec {
    /// Name on the command line: `--vs <name>`.
    pub name: &'static str,
    /// Driver script, relative to the workspace root.
    pub driver: &'static str,
    /// Pinned requirements of the virtual environment, relative to the workspace root.
    pub requirements: &'static str,
    /// Virtual environment, relative to the target directory.
    pub venv: &'static str,
    /// Python statement that must succeed in a usable environment.
    pub check: &'static str,
    /// Arguments appended to every run of the driver.
    pub extra_args: Vec<&'static str>,
    /// Whether the peer can make this run (gfnx has no flow matching); others are skipped.
    pub supports: fn(&RunSpec) -> bool,
    /// The peer's milliseconds per iteration.
    pub ms_per_iteration: Extract,
    /// Figures of the peer's runs shown in the tables (after the speed ratio).
    pub metrics: Vec<Metric>,
}

/// `pointer` into `v`, as a number (`null` and missing fields give `None`).
pub fn num(v: &Value, pointer: &str) -> Option<f64> {
    v.pointer(pointer).and_then(Value::as_f64)
}

/// Decimal string of a float (`0.1` → `0.1`, `0.0001` → `0.0001`).
pub fn f(x: f64) -> String {
    format!("{x}")
}

/// A hypergrid training configuration, shared by both sides of a comparison so the two recipes
/// cannot drift apart. Defaults: the trajectory-balance paper's recipe (`reference/baselines.md`).
#[derive(Debug, Clone)]
pub struct Recipe {
    /// d.
    pub ndim: u32,
    /// H.
    pub height: u32,
    /// R0, R1, R2.
    pub rewards: (f64, f64, f64),
    /// fm, db, tb, subtb.
    pub loss: &'static str,
    /// SubTB λ.
    pub lambda: f64,
    /// Trajectories per iteration.
    pub batch: u32,
    /// Iterations.
    pub iterations: u32,
    /// Seed.
    pub seed: u64,
    /// Adam learning rates (networks, log Z).
    pub lr: (f64, f64),
    /// Hidden width and number of hidden layers.
    pub hidden: u32,
    /// Number of hidden layers.
    pub layers: u32,
    /// Evaluate every this many iterations.
    pub eval_every: u32,
    /// Intra-op threads.
    pub threads: u32,
}

impl Recipe {
    /// The recipe with the given grid, loss and length, everything else the paper's.
    pub fn new(ndim: u32, height: u32, loss: &'static str, iterations: u32, seed: u64, threads: u32) -> Self {
        Recipe {
            ndim,
            height,
            rewards: (0.1, 0.5, 2.0),
            loss,
            lambda: 0.9,
            batch: 16,
            iterations,
            seed,
            lr: (1e-3, 0.1),
            hidden: 256,
            layers: 2,
            eval_every: 100,
            threads,
        }
    }

    /// Flags understood by `gfn train` and by the peer drivers alike.
    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "--ndim".into(),
            self.ndim.to_string(),
            "--height".into(),
            self.height.to_string(),
            "--r0".into(),
            f(self.rewards.0),
            "--r1".into(),
            f(self.rewards.1),
            "--r2".into(),
            f(self.rewards.2),
            "--loss".into(),
            self.loss.into(),
        ];
        if self.loss == "subtb" {
            a.extend(["--lambda".into(), f(self.lambda)]);
        }
        a.extend([
            "--batch-size".into(),
            self.batch.to_string(),
            "--iterations".into(),
            self.iterations.to_string(),
            "--seed".into(),
            self.seed.to_string(),
            "--lr".into(),
            f(self.lr.0),
            "--lr-logz".into(),
            f(self.lr.1),
            "--hidden".into(),
            self.hidden.to_string(),
            "--layers".into(),
            self.layers.to_string(),
            "--eval-every".into(),
            self.eval_every.to_string(),
            "--threads".into(),
            self.threads.to_string(),
        ]);
        a
    }

    /// A `gfn train` run of this recipe (and the same for every peer).
    pub fn run(&self, name: String, group: &str, row: &str) -> RunSpec {
        let common = self.args();
        let mut gfn_args: Vec<String> = vec!["train".into(), "--env".into(), "hypergrid".into()];
        // gfn refuses an option that has no effect: log Z's rate goes only with a loss that
        // trains log Z (the peers' drivers take the common flags as they are).
        let keep_lr_logz = trains_log_z(self.loss);
        let mut it = common.iter();
        while let Some(flag) = it.next() {
            if flag == "--lr-logz" && !keep_lr_logz {
                it.next();
                continue;
            }
            gfn_args.push(flag.clone());
        }
        RunSpec {
            name,
            group: group.into(),
            row: row.into(),
            seed: self.seed,
            gfn_args,
            peer_args: common,
            output: Output::RunDir,
        }
    }
}

/// The peers of the hypergrid suites: torchgfn 2.4.1 and gfnx 0.0.1 drivers in `benches/peers/`.
pub fn hypergrid_peers(metrics: fn() -> Vec<Metric>) -> Vec<PeerSpec> {
    vec![
        PeerSpec {
            name: "torchgfn",
            driver: "benches/peers/torchgfn_hypergrid.py",
            requirements: "benches/peers/requirements-torchgfn.txt",
            venv: "peers/torchgfn-venv",
            check: "import gfn, torch",
            extra_args: Vec::new(),
            supports: |_| true,
            ms_per_iteration: &peer_ms_per_iteration,
            metrics: metrics(),
        },
        PeerSpec {
            name: "gfnx",
            driver: "benches/peers/gfnx_hypergrid.py",
            requirements: "benches/peers/requirements-gfnx.txt",
            venv: "peers/gfnx-venv",
            check: "import gfnx, jax",
            extra_args: Vec::new(),
            // gfnx 0.0.1 ships TB, DB and SubTB examples, no flow matching.
            supports: |r| !r.peer_args.windows(2).any(|w| w[0] == "--loss" && w[1] == "fm"),
            ms_per_iteration: &peer_ms_per_iteration,
            metrics: metrics(),
        },
    ]
}

/// A peer's steady-state milliseconds per iteration (a sampling run: per round).
pub fn peer_ms_per_iteration(r: &Value) -> Option<f64> {
    num(r, "/output/ms_per_iteration").or_else(|| {
        let wall = num(r, "/output/wall_seconds")?;
        let rounds = num(r, "/output/rounds")?;
        (rounds > 0.0).then(|| 1000.0 * wall / rounds)
    })
}

/// Peer figures of the hypergrid suite.
pub fn hypergrid_peer_metrics() -> Vec<Metric> {
    vec![
        Metric {
            header: "L1 (last 5 evals)",
            key: "exact_l1_last5",
            short: "L1(last5)",
            value: &|r| num(r, "/output/quality_l1_sum_last5"),
            agg: Agg::MeanStd,
            digits: 4,
        },
        Metric {
            header: "s to L1 ≤ 0.1 (median)",
            key: "seconds_to_l1_0.1",
            short: "s→0.1",
            value: &|r| crate::curves::seconds_to_l1(r, 0.1),
            agg: Agg::Median,
            digits: 1,
        },
        Metric {
            header: "compile s",
            key: "compile_seconds",
            short: "compile s",
            value: &|r| num(r, "/output/compile_seconds"),
            agg: Agg::Median,
            digits: 1,
        },
        col_peer_peak_rss(),
    ]
}

/// Iterations of a training run (median over seeds).
pub fn col_iterations() -> Metric {
    Metric {
        header: "iterations",
        key: "iterations",
        short: "it",
        value: &|r| num(r, "/summary/iterations"),
        agg: Agg::Median,
        digits: 0,
    }
}

/// Our milliseconds per iteration (median over seeds).
pub fn col_ms_per_iteration() -> Metric {
    Metric {
        header: "ms/iteration (median)",
        key: "ms_per_iteration",
        short: "ms/it",
        value: &ours_ms_per_iteration,
        agg: Agg::Median,
        digits: 2,
    }
}

/// Exact L1 over the last 5 evaluations (mean ± std over seeds).
pub fn col_l1_last5() -> Metric {
    Metric {
        header: "exact L1 (last 5 evals)",
        key: "exact_l1_last5",
        short: "L1(last5)",
        value: &|r| num(r, "/summary/exact_last5_mean/l1_sum"),
        agg: Agg::MeanStd,
        digits: 4,
    }
}

/// The task's test-set Spearman correlation (bit sequences), mean ± std over seeds.
pub fn col_test_spearman() -> Metric {
    Metric {
        header: "test Spearman",
        key: "test_spearman",
        short: "Spearman",
        value: &|r| num(r, "/summary/task/test_spearman"),
        agg: Agg::MeanStd,
        digits: 3,
    }
}

/// Modes visited by training (mean over seeds).
pub fn col_modes_found() -> Metric {
    Metric {
        header: "modes found (mean)",
        key: "modes_found",
        short: "modes",
        value: &|r| num(r, "/summary/modes/found"),
        agg: Agg::Mean,
        digits: 1,
    }
}

/// Peak resident memory of our process (largest over seeds).
pub fn col_peak_rss() -> Metric {
    Metric {
        header: "peak RSS MB",
        key: "peak_rss_mb",
        short: "RSS MB",
        value: &|r| num(r, "/peak_rss_mb"),
        agg: Agg::Max,
        digits: 0,
    }
}

/// A peer's peak resident memory, measured like ours (the driver's own figure otherwise).
pub fn col_peer_peak_rss() -> Metric {
    Metric {
        header: "peak RSS MB",
        key: "peak_rss_mb",
        short: "RSS MB",
        value: &|r| num(r, "/peak_rss_mb").or_else(|| num(r, "/output/peak_rss_mb")),
        agg: Agg::Max,
        digits: 0,
    }
}

/// Our milliseconds per iteration, from `summary.json` (training time only); for a sampling
/// run (`gfn speed sample`), per round.
pub fn ours_ms_per_iteration(r: &Value) -> Option<f64> {
    let wall = num(r, "/summary/wall_seconds")?;
    let it = num(r, "/summary/iterations").or_else(|| num(r, "/summary/rounds"))?;
    (it > 0.0).then(|| 1000.0 * wall / it)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_engine_covers_what_gfn_accepts_on_the_gpu() {
        let a = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            device_engine_covers(&a(&["train", "--env", "hypergrid", "--loss", "tb"])),
            Ok(())
        );
        assert_eq!(device_engine_covers(&a(&["train", "--loss", "subtb"])), Ok(()));
        assert_eq!(
            device_engine_covers(&a(&["speed", "train", "--env", "ising-fixed"])),
            Ok(())
        );
        assert_eq!(
            device_engine_covers(&a(&["train", "--loss", "db"])),
            Err("loss db".into())
        );
        assert_eq!(
            device_engine_covers(&a(&["train", "--env", "set"])),
            Err("env set".into())
        );
        assert!(device_engine_covers(&a(&["train", "--replay-size", "100"])).is_err());
        assert_eq!(device_engine_covers(&a(&["train", "--replay-size", "0"])), Ok(()));
        assert!(device_engine_covers(&a(&["speed", "sample"])).is_err());
        assert!(device_engine_covers(&a(&["train", "--engine", "tape"])).is_err());
        // Every quick hypergrid run with tb or subtb is covered, and only those.
        let s = crate::data_suite::build("hypergrid", &crate::suite::test_util::opts(true, None));
        let covered: Vec<_> = s
            .runs
            .iter()
            .filter(|r| device_engine_covers(&r.gfn_args).is_ok())
            .map(|r| r.name.as_str())
            .collect();
        assert_eq!(
            covered,
            ["2x8-tb-seed0", "2x8-subtb-seed0", "4x8-tb-seed0", "4x8-subtb-seed0"]
        );
    }

    #[test]
    fn quick_hypergrid_has_eight_runs() {
        let s = crate::data_suite::build("hypergrid", &crate::suite::test_util::opts(true, None));
        let names: Vec<_> = s.runs.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "2x8-tb-seed0",
                "2x8-db-seed0",
                "2x8-subtb-seed0",
                "2x8-fm-seed0",
                "4x8-tb-seed0",
                "4x8-db-seed0",
                "4x8-subtb-seed0",
                "4x8-fm-seed0"
            ]
        );
        assert!(s.runs[2].gfn_args.windows(2).any(|w| w == ["--lambda", "0.9"]));
        assert!(!s.runs[0].gfn_args.iter().any(|a| a == "--lambda"));
    }

    #[test]
    fn full_hypergrid_has_24_runs() {
        let s = crate::data_suite::build("hypergrid", &crate::suite::test_util::opts(false, None));
        assert_eq!(s.runs.len(), 2 * 4 * 3);
        let names: std::collections::HashSet<_> = s.runs.iter().map(|r| &r.name).collect();
        assert_eq!(names.len(), s.runs.len());
    }
}

/// Helpers of the suites' tests.
#[cfg(test)]
pub mod test_util {
    use super::{RunSpec, SuiteOptions};

    /// Options of a suite: `quick`, `seeds`, one thread.
    pub fn opts(quick: bool, seeds: Option<u32>) -> SuiteOptions {
        SuiteOptions {
            quick,
            seeds,
            threads: 1,
        }
    }

    /// The value after `flag` in a run's arguments.
    pub fn arg<'a>(r: &'a RunSpec, flag: &str) -> Option<&'a str> {
        r.gfn_args.windows(2).find(|w| w[0] == flag).map(|w| w[1].as_str())
    }
}
