//! Suite definitions: which runs a benchmark makes and which figures its tables show.
//!
//! A new suite is a file `xtask/suites/<name>.toml` (see [`crate::data_suite`]) and one more
//! entry in [`SUITES`] and in [`crate::data_suite::file`]; the runner and the writers are generic.

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

/// Every suite `cargo xtask bench` knows, in the order of the README's summary.
pub const SUITES: &[&str] = &[
    "hypergrid",
    "throughput",
    "subtb",
    "led",
    "ebm",
    "pg",
    "networks",
    "conditional",
    "mis",
];

/// Builds suite `name` (see [`SUITES`]); `None` for a name that is none of them.
pub fn build(name: &str, opts: &SuiteOptions) -> Option<Suite> {
    let name = *SUITES.iter().find(|s| **s == name)?;
    Some(crate::data_suite::build(name, opts))
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
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
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
#[derive(Clone, Copy)]
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

impl Metric {
    /// A column: header, key, progress label, summary over seeds, decimal places, figure.
    pub const fn new(
        header: &'static str,
        key: &'static str,
        short: &'static str,
        agg: Agg,
        digits: usize,
        value: Extract,
    ) -> Self {
        Metric {
            header,
            key,
            short,
            value,
            agg,
            digits,
        }
    }
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
    /// Whether the peer can make this run (gfnx has no flow matching); others are skipped.
    pub supports: fn(&RunSpec) -> bool,
    /// Figures of the peer's runs shown in the tables (after the speed ratio).
    pub metrics: Vec<Metric>,
}

/// `pointer` into `v`, as a number (`null` and missing fields give `None`).
pub fn num(v: &Value, pointer: &str) -> Option<f64> {
    v.pointer(pointer).and_then(Value::as_f64)
}

/// The peers of the hypergrid suites, with these figures: torchgfn 2.4.1 and gfnx 0.0.1, each
/// driven by `benches/peers/<peer>_hypergrid.py` in a virtual environment `peers/<peer>-venv`
/// pinned by `benches/peers/requirements-<peer>.txt`.
pub fn hypergrid_peers(metrics: &[Metric]) -> Vec<PeerSpec> {
    let peer = |name: &'static str, check, supports: fn(&RunSpec) -> bool| PeerSpec {
        name,
        driver: format!("benches/peers/{name}_hypergrid.py").leak(),
        requirements: format!("benches/peers/requirements-{name}.txt").leak(),
        venv: format!("peers/{name}-venv").leak(),
        check,
        supports,
        metrics: metrics.to_vec(),
    };
    vec![
        peer("torchgfn", "import gfn, torch", |_| true),
        // gfnx 0.0.1 ships TB, DB and SubTB examples, no flow matching.
        peer("gfnx", "import gfnx, jax", |r| {
            !r.peer_args.windows(2).any(|w| w[0] == "--loss" && w[1] == "fm")
        }),
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

/// Our milliseconds per iteration (median over seeds).
#[rustfmt::skip]
pub const MS_PER_ITERATION: Metric =
    Metric::new("ms/iteration (median)", "ms_per_iteration", "ms/it", Agg::Median, 2, &ours_ms_per_iteration);

/// Peak resident memory of our process (largest over seeds).
pub const PEAK_RSS: Metric = Metric::new("peak RSS MB", "peak_rss_mb", "RSS MB", Agg::Max, 0, &|r| {
    num(r, "/peak_rss_mb")
});

/// A peer's peak resident memory, measured like ours (the driver's own figure otherwise).
pub const PEER_PEAK_RSS: Metric = Metric::new("peak RSS MB", "peak_rss_mb", "RSS MB", Agg::Max, 0, &|r| {
    num(r, "/peak_rss_mb").or_else(|| num(r, "/output/peak_rss_mb"))
});

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
