//! Suite `pg`: the GFN-PG paper's experiments (Niu, Wu, Fan, Qian, "GFlowNet Training by Policy
//! Gradients", ICML 2024; papers.md §4): the policy-gradient variants with a uniform backward
//! policy (`pg-u`, the paper's RL-U), a backward policy trained by policy gradient (`pg-b`, RL-B)
//! and one trained toward a guide (`pg-g`, RL-G), and the trust-region step (`pg-trpo`, RL-T,
//! uniform P_B) against TB, DB and SubTB(0.99) with a learned
//! backward policy, on hypergrids (2×64 and 4×8, R0 0.01), the 5-node Bayesian-network structure
//! task (exact posterior over its 29,281 DAGs) and bit sequences (n 120, k 8: no exact
//! evaluation). Quality is read from each run's exact evaluations (TV and JSD between P_T and
//! p*, |log Ẑ − log Z|), the Bayesian network's expected SHD and edge-marginal AUROC, and the bit
//! sequences' modes found and test-set Spearman correlation. A small 2×8 group checks the
//! project's bar: every PG variant reaches exact TV ≤ 0.1 within 1,500 iterations.

use std::path::Path;

use anyhow::Result;
use serde_json::Value;

use crate::bench::Session;
use crate::curves::{self, plot_line};
use crate::plot::{Chart, Reference, Series, spans_decades};
use crate::report::{Aggregate, Stats, fmt_num, records, seeds_cell};
use crate::suite::{Agg, Metric, Output, RunSpec, Suite, SuiteOptions, f, num, ours_ms_per_iteration};

// Hyper-parameters, in one place: papers.md §4.1 (the official code's common settings) and §4.2
// (tasks). Where ours differ, the constant says why.

/// The baselines, with a learned backward policy (gfn's default `--backward-policy learned`; the
/// paper's TB-B, DB-B, SubTB-B).
const BASELINES: [&str; 3] = ["tb", "db", "subtb"];
/// The policy-gradient variants: uniform P_B (RL-U), P_B trained by policy gradient (RL-B), P_B
/// trained toward a guide (RL-G), and the trust-region (TRPO) step of P_F with a uniform P_B
/// (RL-T: CG 10 iterations, KL limit 0.01, 20 halvings, gfn's defaults).
const PG_METHODS: [&str; 4] = ["pg-u", "pg-b", "pg-g", "pg-trpo"];
/// Methods of the exact tasks, in table order.
const METHODS: [&str; 7] = ["tb", "db", "subtb", "pg-u", "pg-b", "pg-g", "pg-trpo"];
/// Methods on bit sequences: TB, SubTB and pg-u. In append order the DAG is a tree: every state
/// has one parent, so P_B ≡ 1 and pg-b and pg-g are pg-u plus a P_B network that changes nothing
/// (pg-g has no guide there either: its guide caps an exit action, and bit sequences have none).
const BITSEQ_METHODS: [&str; 3] = ["tb", "subtb", "pg-u"];
/// Seeds of the bit-sequence runs at most: one. The task asks for modes found and the test
/// correlation, not their spread, and each run takes about 7.5 minutes on one thread.
const BITSEQ_SEEDS: u32 = 1;

/// Seeds per configuration (seeds 0..N) without `--seeds`.
const SEEDS: u32 = 3;
/// `--quick` divides the iterations by this (the 2×8 bar group excepted: it takes seconds).
const QUICK_DIVISOR: u32 = 20;
/// Evaluations per run: every `iterations / EVALUATIONS` iterations (the paper validates every 10
/// iterations, BN every 20; an exact evaluation costs several training iterations here).
const EVALUATIONS: u32 = 20;

/// Trajectories per iteration, on-policy (ε 0): the paper's 128.
const BATCH: u32 = 128;
/// Adam learning rate of P_F, P_B and the value / flow network (the paper's 1e-3; its value
/// network's 5e-3 has no flag in gfn: the value head shares `--lr`).
const LR: f64 = 1e-3;
/// Adam learning rate of log Z on the hypergrids and bit sequences (the paper's 0.1).
const LR_LOGZ: f64 = 0.1;
/// Adam learning rate of log Z on the Bayesian network (the paper's 1.0: log Z ≈ 104 there).
const LR_LOGZ_BN: f64 = 1.0;
/// SubTB λ of the paper's SubTB baseline (0.99, not gfn's default 0.9).
const SUBTB_LAMBDA: f64 = 0.99;
/// GAE λ of the policy-gradient advantages (the code's `lamb`, 0.99).
const GAE_LAMBDA: f64 = 0.99;
/// P_F, P_B and the value / flow head each get their own MLP, as in the paper (`--shared-trunk
/// false`).
const SHARED_TRUNK: &str = "false";
/// The paper's MLP width (4 hidden layers × 256 for every network).
const PAPER_HIDDEN: u32 = 256;
/// The paper's MLP depth.
const PAPER_LAYERS: u32 = 4;
/// Target of "trajectories to exact TV ≤ 0.1" and of the 2×8 bar.
const TV_TARGET: f64 = 0.1;

/// Hypergrid 2×64 (the paper's `train.py` runs 2×256; 2×64 is the TB paper's grid, 4,096 states):
/// R0 0.01 (the paper's), R1 0.5, R2 2.
const GRID64_R0: f64 = 0.01;
/// Iterations of the exact tasks: 1,000 × 128 trajectories, half the paper's 2,000. The whole
/// suite (78 runs, 3 seeds) then takes about an hour and a half with `--jobs 2` on two cores;
/// at the paper's budget it took three (measured: 2×64 TB 230 s, DB 330 s per run at 2,000).
const EXACT_ITERATIONS: u32 = 1_000;
/// 2×64: [`EXACT_ITERATIONS`] × 128 trajectories.
const GRID64_ITERATIONS: u32 = EXACT_ITERATIONS;
/// 2×64 MLP width: 128, not the paper's 256. Trajectories there are about 64 steps long, and
/// pg-g, the slowest method, costs about 780 ms per iteration at 4×256 on one CPU thread (26
/// minutes for 2,000 iterations); at 4×128 about 260 ms (TB 45, DB 95, SubTB 65, pg-u 60, pg-b
/// 200), so the slowest run takes about 9 minutes and keeps the paper's depth and budget.
const GRID64_HIDDEN: u32 = 128;
/// 2×64 MLP depth: the paper's 4.
const GRID64_LAYERS: u32 = PAPER_LAYERS;

/// Hypergrid 4×8: R0 0.01 (gfn's default is 0.1), the paper's R0 and the sparsity of the 2×64
/// task; the PG paper's 4-D grids are not recovered (papers.md §4.2).
const GRID48_R0: f64 = 0.01;
/// 4×8: [`EXACT_ITERATIONS`].
const GRID48_ITERATIONS: u32 = EXACT_ITERATIONS;

/// Bayesian network (`--env bayesnet`: 5 nodes, 100 linear-Gaussian observations, BGe score):
/// [`EXACT_ITERATIONS`].
const BN_ITERATIONS: u32 = EXACT_ITERATIONS;

/// Bayesian network, pg-g: the guide caps the stop probability at graphs with log R ≤ this
/// (`--guide-floor`; `auto` is the hypergrid's log R0 only). The paper's BN guide is not
/// recovered (papers.md §4.1). log R(G) = BGe(G) − BGe(empty) and log Z = 103.65 on this task
/// (task seed 0, 100 observations), so each DAG at or below 80 has posterior probability
/// ≤ e^−23.65 and all 29,281 together less than 2·10⁻⁶: the analogue of the hypergrid's
/// background. (A floor of 0, "no better than the empty graph", only marks s_0, which every
/// trajectory leaves: the guide then changes nothing.)
const BN_GUIDE_FLOOR: f64 = 80.0;

/// Bit sequences (`--env bitseq`: n 120, k 8, append order, 15 steps): iterations that fit in
/// 10 minutes. SubTB, the slowest method there, costs about 120 ms per iteration at 4×256 on one
/// thread (TB 80, pg-u 90), and each evaluation about 4 s (the test-set Spearman over 7,200
/// sequences): 3,000 iterations and 20 evaluations would make about 7.5 minutes; we run half,
/// like the exact tasks.
const BITSEQ_ITERATIONS: u32 = 1_500;

/// The 2×8 bar group (the project's issue 6, as `crates/gfn-cli/tests/cli.rs` checks it): R0 0.1.
const BAR_R0: f64 = 0.1;
/// 2×8 bar: batch 16.
const BAR_BATCH: u32 = 16;
/// 2×8 bar: MLP 2×64.
const BAR_HIDDEN: u32 = 64;
/// 2×8 bar: hidden layers.
const BAR_LAYERS: u32 = 2;
/// 2×8 bar: 1,500 iterations (about 2 s a run), also with `--quick`.
const BAR_ITERATIONS: u32 = 1_500;

/// Table of hypergrid 2×64.
const GRID64: &str = "hypergrid 2×64, R0 0.01";
/// Table of hypergrid 4×8.
const GRID48: &str = "hypergrid 4×8, R0 0.01";
/// Table of the Bayesian network.
const BN: &str = "Bayesian network structure, 5 nodes";
/// Table of the bit sequences.
const BITSEQ: &str = "bit sequences, n 120, k 8";
/// Table of the 2×8 bar.
const BAR: &str = "hypergrid 2×8, R0 0.1, batch 16, MLP 2×64: the 1,500-iteration bar";

/// One task's training settings: everything but the method and the seed.
struct Task {
    /// Run-name prefix: `2x64`.
    key: &'static str,
    /// Its table.
    group: &'static str,
    /// `--env` and the task's own flags.
    env: Vec<String>,
    /// Methods run, in table order.
    methods: &'static [&'static str],
    /// Hidden width of every MLP.
    hidden: u32,
    /// Hidden layers of every MLP.
    layers: u32,
    /// Trajectories per iteration.
    batch: u32,
    /// Adam learning rate of log Z.
    lr_logz: f64,
    /// pg-g's `--guide-floor`; `None`: gfn's `auto` (the hypergrid's log R0).
    guide_floor: Option<f64>,
    /// Iterations.
    iterations: u32,
    /// Seeds run at most (the suite's seeds otherwise).
    max_seeds: u32,
}

/// `--env hypergrid` flags of a `ndim`×`height` grid with base reward `r0` (R1 0.5, R2 2).
fn grid(ndim: u32, height: u32, r0: f64) -> Vec<String> {
    [
        "--env",
        "hypergrid",
        "--ndim",
        &ndim.to_string(),
        "--height",
        &height.to_string(),
        "--r0",
        &f(r0),
    ]
    .map(String::from)
    .to_vec()
}

impl Task {
    /// Every task, in table order; `quick`: iterations ÷ [`QUICK_DIVISOR`] (the bar excepted).
    fn all(quick: bool) -> Vec<Task> {
        let scale = |n: u32| if quick { (n / QUICK_DIVISOR).max(1) } else { n };
        let task = |key, group, env, methods, hidden, layers, lr_logz, iterations| Task {
            key,
            group,
            env,
            methods,
            hidden,
            layers,
            batch: BATCH,
            lr_logz,
            guide_floor: None,
            iterations: scale(iterations),
            max_seeds: u32::MAX,
        };
        vec![
            task(
                "2x64",
                GRID64,
                grid(2, 64, GRID64_R0),
                &METHODS[..],
                GRID64_HIDDEN,
                GRID64_LAYERS,
                LR_LOGZ,
                GRID64_ITERATIONS,
            ),
            task(
                "4x8",
                GRID48,
                grid(4, 8, GRID48_R0),
                &METHODS[..],
                PAPER_HIDDEN,
                PAPER_LAYERS,
                LR_LOGZ,
                GRID48_ITERATIONS,
            ),
            Task {
                guide_floor: Some(BN_GUIDE_FLOOR),
                ..task(
                    "bn",
                    BN,
                    vec!["--env".into(), "bayesnet".into()],
                    &METHODS[..],
                    PAPER_HIDDEN,
                    PAPER_LAYERS,
                    LR_LOGZ_BN,
                    BN_ITERATIONS,
                )
            },
            Task {
                max_seeds: BITSEQ_SEEDS,
                ..task(
                    "bitseq",
                    BITSEQ,
                    vec!["--env".into(), "bitseq".into()],
                    &BITSEQ_METHODS[..],
                    PAPER_HIDDEN,
                    PAPER_LAYERS,
                    LR_LOGZ,
                    BITSEQ_ITERATIONS,
                )
            },
            Task {
                key: "2x8",
                group: BAR,
                env: grid(2, 8, BAR_R0),
                methods: &PG_METHODS,
                hidden: BAR_HIDDEN,
                layers: BAR_LAYERS,
                batch: BAR_BATCH,
                lr_logz: LR_LOGZ,
                guide_floor: None,
                iterations: BAR_ITERATIONS,
                max_seeds: u32::MAX,
            },
        ]
    }

    /// Evaluate every this many iterations: [`EVALUATIONS`] per run.
    fn eval_every(&self) -> u32 {
        (self.iterations / EVALUATIONS).max(1)
    }

    /// Arguments of `gfn train` (without `--out`).
    fn args(&self, method: &str, seed: u64, threads: u32) -> Vec<String> {
        let mut a: Vec<String> = vec!["train".into()];
        a.extend(self.env.iter().cloned());
        a.extend(["--loss".into(), method.into()]);
        if method == "subtb" {
            a.extend(["--lambda".into(), f(SUBTB_LAMBDA)]);
        }
        if BASELINES.contains(&method) {
            a.extend(["--backward-policy".into(), "learned".into()]);
        } else {
            a.extend(["--gae-lambda".into(), f(GAE_LAMBDA)]);
        }
        if let (Some(floor), "pg-g") = (self.guide_floor, method) {
            a.extend(["--guide-floor".into(), f(floor)]);
        }
        a.extend([
            "--shared-trunk".into(),
            SHARED_TRUNK.into(),
            "--hidden".into(),
            self.hidden.to_string(),
            "--layers".into(),
            self.layers.to_string(),
            "--batch-size".into(),
            self.batch.to_string(),
            "--iterations".into(),
            self.iterations.to_string(),
            "--seed".into(),
            seed.to_string(),
            "--lr".into(),
            f(LR),
            "--eval-every".into(),
            self.eval_every().to_string(),
            "--threads".into(),
            threads.to_string(),
        ]);
        if crate::suite::trains_log_z(method) {
            a.extend(["--lr-logz".into(), f(self.lr_logz)]);
        }
        a
    }

    /// A `gfn train` run of `method` (no peer counterpart).
    fn run(&self, method: &str, seed: u64, threads: u32) -> RunSpec {
        RunSpec {
            name: format!("{}-{method}-seed{seed}", self.key),
            group: self.group.into(),
            row: method.into(),
            seed,
            gfn_args: self.args(method, seed, threads),
            peer_args: Vec::new(),
            output: Output::RunDir,
        }
    }
}

/// The suite: hypergrid 2×64 and 4×8, the Bayesian network (TB, DB, SubTB(0.99), pg-u, pg-b,
/// pg-g, pg-trpo) × seeds (default 3), bit sequences (TB, SubTB, pg-u; one seed), then the 2×8
/// bar (the PG variants).
/// `--quick`: seed 0, iterations ÷ 20 (the bar at full length).
pub fn pg(opts: &SuiteOptions) -> Suite {
    let seeds = opts.seeds.unwrap_or(if opts.quick { 1 } else { SEEDS });
    let mut runs = Vec::new();
    for task in Task::all(opts.quick) {
        for &method in task.methods {
            for seed in 0..u64::from(seeds.min(task.max_seeds)) {
                runs.push(task.run(method, seed, opts.threads));
            }
        }
    }
    Suite {
        name: "pg",
        row_header: "method",
        runs,
        metrics: vec![
            crate::suite::col_iterations(),
            crate::suite::col_ms_per_iteration(),
            Metric {
                header: "final exact TV",
                key: "exact_tv",
                short: "TV",
                value: &|r| num(r, "/summary/exact/tv"),
                agg: Agg::MeanStd,
                digits: 4,
            },
            Metric {
                header: "final exact JSD",
                key: "exact_jsd",
                short: "JSD",
                value: &|r| num(r, "/summary/exact/jsd"),
                agg: Agg::MeanStd,
                digits: 4,
            },
            Metric {
                header: "exact TV (last 5 evals)",
                key: "exact_tv_last5",
                short: "TV(last5)",
                value: &|r| num(r, "/summary/exact_last5_mean/tv"),
                agg: Agg::MeanStd,
                digits: 4,
            },
            Metric {
                header: "\\|log Ẑ − log Z\\|",
                key: "log_z_abs_error",
                short: "|ΔlogZ|",
                value: &log_z_error,
                agg: Agg::MeanStd,
                digits: 4,
            },
            Metric {
                header: "trajectories to TV ≤ 0.1 (median of the seeds that got there)",
                key: "trajectories_to_tv_0.1",
                short: "traj→TV0.1",
                value: &trajectories_to_tv,
                agg: Agg::Median,
                digits: 0,
            },
            Metric {
                header: "seeds reaching TV ≤ 0.1",
                key: "seeds_reaching_tv_0.1",
                short: "seeds→0.1",
                value: &reached_tv,
                agg: Agg::Sum,
                digits: 0,
            },
            Metric {
                header: "expected SHD",
                key: "expected_shd",
                short: "E[SHD]",
                value: &|r| num(r, "/summary/task/expected_shd"),
                agg: Agg::MeanStd,
                digits: 3,
            },
            Metric {
                header: "edge AUROC",
                key: "edge_auroc",
                short: "AUROC",
                value: &|r| num(r, "/summary/task/edge_auroc"),
                agg: Agg::MeanStd,
                digits: 3,
            },
            Metric {
                header: "modes found",
                key: "modes_found",
                short: "modes",
                value: &modes_found,
                agg: Agg::MeanStd,
                digits: 1,
            },
            crate::suite::col_test_spearman(),
        ],
        ms_per_iteration: &ours_ms_per_iteration,
        peers: Vec::new(),
        extra: Some(extra),
        quality_note: Some(
            "Quality: \"final\" is a run's last exact evaluation (TV = ½ Σ|P_T − p*|, JSD between P_T and p*, \
             |log Ẑ − log Z| with log Ẑ the learned log Z), \"last 5 evals\" the mean of its last five; then mean ± \
             sample standard deviation over seeds. Trajectories to TV ≤ 0.1: the first evaluation at or below it \
             (median over the seeds that got there; — when none did). Expected SHD and edge AUROC (Bayesian \
             network) are computed under the learned P_T; modes found and the test-set Spearman correlation \
             (bit sequences) come from the run's final evaluation. — : not measured on that task.",
        ),
    }
}

/// |log Ẑ − log Z| of a run's final evaluation.
fn log_z_error(r: &Value) -> Option<f64> {
    num(r, "/summary/log_z/error")
        .or_else(|| Some((num(r, "/summary/log_z/learned")? - num(r, "/summary/log_z/true")?).abs()))
}

/// Modes found: the task's own count (bit sequences: modes within the task's distance), else the
/// mode states visited, where the task has modes.
fn modes_found(r: &Value) -> Option<f64> {
    num(r, "/summary/task/modes_found").or_else(|| {
        (num(r, "/summary/modes/total")? > 0.0)
            .then(|| num(r, "/summary/modes/found"))
            .flatten()
    })
}

/// Whether an evaluation (a curve point of `results.json`) has exact TV ≤ [`TV_TARGET`].
fn tv_reached(point: &Value) -> bool {
    point["tv"].as_f64().is_some_and(|tv| tv <= TV_TARGET)
}

/// Trajectories until the first evaluation with exact TV ≤ 0.1; `None` if never.
fn trajectories_to_tv(r: &Value) -> Option<f64> {
    curves::first_reaching(r, tv_reached).map(|(t, _)| t)
}

/// 1 if the run's exact TV reached 0.1, 0 if not; `None` without exact evaluations.
fn reached_tv(r: &Value) -> Option<f64> {
    if curves::values(r, "/tv").is_empty() {
        return None;
    }
    Some(if trajectories_to_tv(r).is_some() { 1.0 } else { 0.0 })
}

/// Iteration of the first evaluation with exact TV ≤ 0.1; `None` if never.
fn iteration_to_tv(r: &Value) -> Option<f64> {
    r["curve"]
        .as_array()?
        .iter()
        .find(|p| tv_reached(p))
        .and_then(|p| p["iteration"].as_f64())
}

/// The bar's line: per PG variant, whether every seed reached exact TV ≤ 0.1 within 1,500
/// iterations on hypergrid 2×8.
fn bar_claim(session: &Session) -> String {
    let mut parts = Vec::new();
    let mut met_all = true;
    for method in PG_METHODS {
        let recs = records(session, BAR, method);
        if recs.is_empty() {
            parts.push(format!("{method}: no run finished"));
            met_all = false;
            continue;
        }
        let firsts: Vec<Option<f64>> = recs.iter().map(iteration_to_tv).collect();
        let reached: Vec<f64> = firsts
            .iter()
            .flatten()
            .copied()
            .filter(|&it| it <= f64::from(BAR_ITERATIONS))
            .collect();
        let met = reached.len() == recs.len();
        met_all &= met;
        let first = Stats::of(&reached)
            .map(|s| format!(", first at iteration {} (median)", fmt_num(s.median, 0)))
            .unwrap_or_default();
        let last5: Vec<f64> = recs
            .iter()
            .filter_map(|r| num(r, "/summary/exact_last5_mean/tv"))
            .collect();
        let last5 = Stats::of(&last5)
            .map(|s| format!("; TV over the last 5 evaluations {}", seeds_cell(&s, Some(4))))
            .unwrap_or_default();
        parts.push(format!(
            "{method} **{}** ({} of {} seed{}{first}{last5})",
            if met { "met" } else { "not met" },
            reached.len(),
            recs.len(),
            if recs.len() == 1 { "" } else { "s" }
        ));
    }
    format!(
        "- *Every PG variant reaches exact TV ≤ {} on hypergrid 2×8 within {} iterations* (R0 {}, batch {}, MLP {}×{}): **{}**: {}.\n",
        f(TV_TARGET),
        thousands(BAR_ITERATIONS),
        f(BAR_R0),
        BAR_BATCH,
        BAR_LAYERS,
        BAR_HIDDEN,
        if met_all { "met" } else { "not met" },
        parts.join("; ")
    )
}

/// `n` with a thousands separator: `1500` → `1,500`.
fn thousands(n: u32) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The per-evaluation figure at `pointer` (`/exact/jsd`, `/task/edge_auroc`) of a run, from its
/// `runs/<name>/metrics.jsonl`: `(trajectories, value)` where present.
fn jsonl_curve(dir: &Path, run: &str, pointer: &str) -> Vec<(f64, Option<f64>)> {
    let text = std::fs::read_to_string(dir.join("runs").join(run).join("metrics.jsonl")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| {
            let t = v["trajectories"].as_f64()?;
            Some((t, v.pointer(pointer).and_then(Value::as_f64).filter(|x| x.is_finite())))
        })
        .collect()
}

/// Point-wise mean over seeds of curves with the same evaluation schedule (truncated to the
/// shortest; an evaluation where a seed lacks the figure is left out).
fn mean_points(curves: &[Vec<(f64, Option<f64>)>]) -> Vec<(f64, f64)> {
    let n = curves.iter().map(Vec::len).min().unwrap_or(0);
    (0..n)
        .filter_map(|i| {
            let ys: Vec<f64> = curves.iter().filter_map(|c| c[i].1).collect();
            (ys.len() == curves.len()).then(|| {
                let k = curves.len() as f64;
                (
                    curves.iter().map(|c| c[i].0).sum::<f64>() / k,
                    ys.iter().sum::<f64>() / k,
                )
            })
        })
        .collect()
}

/// One line per row of `group` (run order): the figure at `pointer` of `metrics.jsonl` against
/// trajectories sampled, mean over the row's successful runs.
pub(crate) fn jsonl_series(session: &Session, dir: &Path, group: &str, pointer: &str) -> Vec<Series> {
    let runs: Vec<_> = session.runs.iter().filter(|r| r.ok && r.group == group).collect();
    let mut rows: Vec<&str> = Vec::new();
    for r in &runs {
        if !rows.contains(&r.row.as_str()) {
            rows.push(&r.row);
        }
    }
    rows.into_iter()
        .filter_map(|row| {
            let curves: Vec<_> = runs
                .iter()
                .filter(|r| r.row == row)
                .map(|r| jsonl_curve(dir, &r.name, pointer))
                .filter(|c| !c.is_empty())
                .collect();
            let points = mean_points(&curves);
            (!points.is_empty()).then(|| Series {
                label: row.to_string(),
                points,
                dashed: false,
            })
        })
        .collect()
}

/// Draws one figure against trajectories for `group`; `log_ok`: on a log y axis when it spans
/// decades (distances; not for correlations and counts).
pub(crate) fn figure_plot(
    dir: &Path,
    group: &str,
    (suffix, y_label, log_ok): (&str, &str, bool),
    series: &[Series],
    references: &[Reference],
) -> Result<String> {
    let log_y = log_ok && spans_decades(series);
    let y_label = if log_y {
        format!("{y_label} (log scale)")
    } else {
        y_label.to_string()
    };
    plot_line(
        dir,
        &format!("{}-{suffix}.png", curves::slug(group)),
        &Chart {
            title: group,
            x_label: "trajectories sampled in training",
            y_label: &y_label,
            log_x: false,
            log_y,
        },
        series,
        references,
    )
}

/// Plots of one task: exact TV (with the 0.1 target) and JSD on the exact tasks, the task's own
/// figures where recorded.
fn task_plots(session: &Session, dir: &Path, group: &str) -> Result<String> {
    let mut md = String::new();
    let tv = curves::row_series(session, group, |p| p.tv);
    let target = [Reference {
        label: format!("TV {}", f(TV_TARGET)),
        y: TV_TARGET,
    }];
    md.push_str(&figure_plot(dir, group, ("tv", "exact TV", true), &tv, &target)?);
    let jsonl = |pointer| jsonl_series(session, dir, group, pointer);
    md.push_str(&figure_plot(
        dir,
        group,
        ("jsd", "exact JSD", true),
        &jsonl("/exact/jsd"),
        &[],
    )?);
    for (pointer, suffix, label, best) in [
        (
            "/task/expected_shd",
            "expected-shd",
            "expected SHD under P_T",
            Some("/summary/task/posterior_expected_shd"),
        ),
        (
            "/task/edge_auroc",
            "edge-auroc",
            "edge-marginal AUROC under P_T",
            Some("/summary/task/posterior_edge_auroc"),
        ),
        ("/task/modes_found", "modes-found", "modes found", None),
        (
            "/task/test_spearman",
            "test-spearman",
            "test-set Spearman correlation",
            None,
        ),
    ] {
        let references = best
            .map(|p| summary_reference(session, group, p, "exact posterior"))
            .unwrap_or_default();
        md.push_str(&figure_plot(
            dir,
            group,
            (suffix, label, false),
            &jsonl(pointer),
            &references,
        )?);
    }
    Ok(md)
}

/// The figure at `pointer` of the runs of `group` (the same in every run of a task: the exact
/// posterior's) as a reference line labelled `label`; none when no run has it.
fn summary_reference(session: &Session, group: &str, pointer: &str, label: &str) -> Vec<Reference> {
    let v: Vec<f64> = session
        .runs
        .iter()
        .filter(|r| r.ok && r.group == group)
        .filter_map(|r| {
            r.summary
                .as_ref()?
                .pointer(pointer.trim_start_matches("/summary"))?
                .as_f64()
        })
        .collect();
    Stats::of(&v)
        .map(|s| Reference {
            label: format!("{label} {}", crate::plot::tick(s.mean)),
            y: s.mean,
        })
        .into_iter()
        .collect()
}

fn extra(session: &Session, _aggs: &[Aggregate], dir: &Path) -> Result<String> {
    let mut md = String::from(
        "\n## Plots\n\nMean over seeds against the trajectories sampled in training; the dashed grey line is the \
         TV ≤ 0.1 target.\n\n",
    );
    for group in [GRID64, GRID48, BN, BITSEQ, BAR] {
        md.push_str(&task_plots(session, dir, group)?);
    }

    md.push_str("\n## Further claims\n\n");
    md.push_str(&bar_claim(session));
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::RunRecord;
    use serde_json::json;

    use crate::suite::test_util::{arg, opts};

    #[test]
    fn full_suite_runs() {
        assert!(crate::suite::find("pg").is_some());
        let s = pg(&opts(false, None));
        assert_eq!(s.runs.len(), (3 * 7 + 4) * 3 + 3);
        assert!(s.runs.iter().all(|r| !r.name.starts_with("bitseq") || r.seed == 0));
        let names: std::collections::HashSet<_> = s.runs.iter().map(|r| &r.name).collect();
        assert_eq!(names.len(), s.runs.len());
        let find = |name: &str| s.runs.iter().find(|r| r.name == name).unwrap();
        assert_eq!(arg(find("4x8-pg-trpo-seed2"), "--shared-trunk"), Some("false"));
        assert_eq!(arg(find("bn-pg-trpo-seed1"), "--loss"), Some("pg-trpo"));

        let tb = find("2x64-tb-seed2");
        assert_eq!((tb.group.as_str(), tb.row.as_str(), tb.seed), (GRID64, "tb", 2));
        assert_eq!(arg(tb, "--env"), Some("hypergrid"));
        assert_eq!(arg(tb, "--ndim"), Some("2"));
        assert_eq!(arg(tb, "--height"), Some("64"));
        assert_eq!(arg(tb, "--r0"), Some("0.01"));
        assert_eq!(arg(tb, "--iterations"), Some("1000"));
        assert_eq!(arg(tb, "--eval-every"), Some("50"));
        assert_eq!(arg(tb, "--batch-size"), Some("128"));
        assert_eq!(arg(tb, "--shared-trunk"), Some("false"));
        assert_eq!(arg(tb, "--backward-policy"), Some("learned"));
        assert_eq!(arg(tb, "--hidden"), Some("128"));
        assert_eq!(arg(tb, "--layers"), Some("4"));
        assert_eq!(arg(tb, "--lr"), Some("0.001"));
        assert_eq!(arg(tb, "--lr-logz"), Some("0.1"));
        assert_eq!(arg(tb, "--seed"), Some("2"));
        assert_eq!(arg(tb, "--threads"), Some("1"));
        assert_eq!(arg(tb, "--lambda"), None);
        assert_eq!(arg(tb, "--gae-lambda"), None);
        assert_eq!(arg(find("2x64-subtb-seed0"), "--lambda"), Some("0.99"));
        let pg_g = find("4x8-pg-g-seed1");
        assert_eq!(arg(pg_g, "--loss"), Some("pg-g"));
        assert_eq!(arg(pg_g, "--gae-lambda"), Some("0.99"));
        assert_eq!(arg(pg_g, "--backward-policy"), None);
        assert_eq!(arg(pg_g, "--ndim"), Some("4"));
        assert_eq!(arg(pg_g, "--height"), Some("8"));
        assert_eq!(arg(pg_g, "--r0"), Some("0.01"));
        assert_eq!(arg(pg_g, "--hidden"), Some("256"));

        let bn = find("bn-db-seed0");
        assert_eq!(arg(bn, "--env"), Some("bayesnet"));
        // DB trains no log Z: its rate is not passed (gfn refuses an option without effect).
        assert_eq!(arg(bn, "--lr-logz"), None);
        assert_eq!(arg(find("bn-pg-u-seed0"), "--lr-logz"), Some("1"));
        assert_eq!(arg(bn, "--ndim"), None);
        assert_eq!(arg(bn, "--guide-floor"), None);
        assert_eq!(arg(find("bn-pg-g-seed2"), "--guide-floor"), Some("80"));
        assert_eq!(arg(find("bn-pg-b-seed2"), "--guide-floor"), None);
        assert_eq!(arg(find("2x64-pg-g-seed0"), "--guide-floor"), None);
        let bitseq: Vec<&str> = s
            .runs
            .iter()
            .filter(|r| r.name.starts_with("bitseq") && r.seed == 0)
            .map(|r| r.row.as_str())
            .collect();
        assert_eq!(bitseq, ["tb", "subtb", "pg-u"]);
        assert_eq!(arg(find("bitseq-tb-seed0"), "--iterations"), Some("1500"));
        assert_eq!(arg(find("bitseq-pg-u-seed0"), "--env"), Some("bitseq"));
        assert_eq!(arg(find("bitseq-pg-u-seed0"), "--eval-every"), Some("75"));

        let bar = find("2x8-pg-b-seed2");
        assert_eq!(bar.group, BAR);
        assert_eq!(arg(bar, "--height"), Some("8"));
        assert_eq!(arg(bar, "--r0"), Some("0.1"));
        assert_eq!(arg(bar, "--batch-size"), Some("16"));
        assert_eq!(arg(bar, "--hidden"), Some("64"));
        assert_eq!(arg(bar, "--layers"), Some("2"));
        assert_eq!(arg(bar, "--iterations"), Some("1500"));
        assert_eq!(arg(bar, "--eval-every"), Some("75"));
        assert!(!s.runs.iter().any(|r| r.name.starts_with("2x8-tb")));
        assert!(
            s.runs
                .iter()
                .all(|r| r.peer_args.is_empty() && r.gfn_args[0] == "train")
        );
    }

    #[test]
    fn quick_suite_is_one_seed_and_a_twentieth_of_the_iterations() {
        let s = pg(&opts(true, None));
        assert_eq!(s.runs.len(), 3 * 7 + 3 + 4);
        assert!(s.runs.iter().all(|r| r.seed == 0 && arg(r, "--seed") == Some("0")));
        let r = |name: &str| s.runs.iter().find(|r| r.name == name).unwrap();
        assert_eq!(arg(r("2x64-tb-seed0"), "--iterations"), Some("50"));
        assert_eq!(arg(r("2x64-tb-seed0"), "--eval-every"), Some("2"));
        assert_eq!(arg(r("bn-pg-g-seed0"), "--iterations"), Some("50"));
        // The bar keeps its length: it is the bar's definition, and it takes seconds.
        assert_eq!(arg(r("2x8-pg-u-seed0"), "--iterations"), Some("1500"));
        assert_eq!(pg(&opts(true, Some(2))).runs.len(), 2 * (3 * 7 + 4) + 3);
        // `--filter 2x8` picks the bar group alone.
        assert_eq!(s.runs.iter().filter(|r| r.name.contains("2x8")).count(), 4);
    }

    /// A run record whose exact TV follows `tvs` (one evaluation per 10 iterations of 128
    /// trajectories), with final figures to match.
    fn record(name: &str, group: &str, row: &str, seed: u64, tvs: &[f64], task: Value) -> RunRecord {
        let curve: Vec<Value> = tvs
            .iter()
            .enumerate()
            .map(|(i, tv)| {
                json!({"iteration": 10 * (i + 1), "trajectories": 1280.0 * (i + 1) as f64, "seconds": i as f64,
                    "l1_sum": 2.0 * tv, "tv": tv})
            })
            .collect();
        let last = *tvs.last().unwrap();
        let summary = json!({
            "iterations": 10 * tvs.len(), "wall_seconds": 1.0, "trajectories": 1280 * tvs.len(),
            "exact": {"tv": last, "jsd": last / 10.0},
            "exact_last5_mean": {"tv": last},
            "log_z": {"learned": 1.0, "true": 1.5, "error": 0.5},
            "modes": {"found": 0, "total": 0},
            "task": task,
        });
        RunRecord {
            name: name.into(),
            group: group.into(),
            row: row.into(),
            seed,
            command: Vec::new(),
            ok: true,
            error: None,
            process_wall_seconds: Some(1.0),
            peak_rss_mb: None,
            summary: Some(summary),
            curve: curve.into_iter().map(|p| serde_json::from_value(p).unwrap()).collect(),
            peers: Vec::new(),
        }
    }

    #[test]
    fn figures_of_a_run() {
        let r = serde_json::to_value(record("x", GRID64, "tb", 0, &[0.5, 0.09, 0.2, 0.08], json!(null))).unwrap();
        assert_eq!(trajectories_to_tv(&r), Some(2560.0));
        assert_eq!(reached_tv(&r), Some(1.0));
        assert_eq!(iteration_to_tv(&r), Some(20.0));
        assert_eq!(log_z_error(&r), Some(0.5));
        assert_eq!(modes_found(&r), None);
        let never = serde_json::to_value(record("y", GRID64, "tb", 0, &[0.5, 0.3], json!(null))).unwrap();
        assert_eq!(trajectories_to_tv(&never), None);
        assert_eq!(reached_tv(&never), Some(0.0));
        let bits = serde_json::to_value(record(
            "z",
            BITSEQ,
            "tb",
            0,
            &[0.5],
            json!({"modes_found": 7, "test_spearman": 0.4}),
        ))
        .unwrap();
        assert_eq!(modes_found(&bits), Some(7.0));
    }

    #[test]
    fn extra_draws_plots_and_judges_the_claims_from_the_data() {
        let mut session: Session = serde_json::from_value(json!({
            "request": {"suite": "pg", "options": {"quick": false, "seeds": 2, "threads": 1}, "vs": [], "command": "test"},
            "started": "now", "finished": "now", "plan": [], "versions": {"peers": {}}, "machine": {}, "git": {},
            "rss_method": "none", "peers": [], "runs": []
        }))
        .unwrap();
        let dir = std::env::temp_dir().join(format!("xtask-pg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for seed in 0..2u64 {
            let w = 0.001 * seed as f64;
            // 2×64: pg-g reaches 0.1 early and ends lowest; the baselines never get there.
            for (row, tvs) in [
                ("tb", [0.8, 0.5, 0.3]),
                ("db", [0.9, 0.6, 0.4]),
                ("subtb", [0.8, 0.4, 0.2]),
                ("pg-u", [0.7, 0.3, 0.15]),
                ("pg-b", [0.6, 0.2, 0.1]),
                ("pg-g", [0.5, 0.08, 0.05]),
            ] {
                let tvs = tvs.map(|x| x + w);
                let name = format!("2x64-{row}-seed{seed}");
                session.runs.push(record(&name, GRID64, row, seed, &tvs, json!(null)));
                // metrics.jsonl for the JSD plot.
                let run = dir.join("runs").join(&name);
                std::fs::create_dir_all(&run).unwrap();
                let lines: Vec<String> = tvs
                    .iter()
                    .enumerate()
                    .map(|(i, tv)| {
                        json!({"iteration": 10 * (i + 1), "trajectories": 1280 * (i + 1), "exact": {"tv": tv, "jsd": tv / 10.0}})
                            .to_string()
                    })
                    .collect();
                std::fs::write(run.join("metrics.jsonl"), lines.join("\n")).unwrap();
            }
            // BN: the best baseline (tb) ends level with the PG variants.
            for row in METHODS {
                let tvs = [0.6 + w, 0.3 - w];
                let task = json!({"expected_shd": 1.5, "edge_auroc": 0.9, "posterior_expected_shd": 1.2});
                session
                    .runs
                    .push(record(&format!("bn-{row}-seed{seed}"), BN, row, seed, &tvs, task));
            }
            // The bar: pg-u and pg-g get there, pg-b does not.
            for (row, tvs) in [("pg-u", [0.3, 0.05]), ("pg-b", [0.3, 0.2]), ("pg-g", [0.09, 0.04])] {
                session.runs.push(record(
                    &format!("2x8-{row}-seed{seed}"),
                    BAR,
                    row,
                    seed,
                    &tvs,
                    json!(null),
                ));
            }
        }
        let md = extra(&session, &[], &dir).unwrap();
        let slug = curves::slug(GRID64);
        for suffix in ["tv", "jsd"] {
            let file = format!("{slug}-{suffix}.png");
            assert!(dir.join(&file).exists(), "{file} missing");
            assert!(md.contains(&format!("({file})")), "{file} not linked");
        }
        // No metrics.jsonl for BN: its TV plot only; no bitseq run: nothing.
        assert!(dir.join(format!("{}-tv.png", curves::slug(BN))).exists());
        assert!(!dir.join(format!("{}-jsd.png", curves::slug(BN))).exists());
        assert!(!md.contains("| bit sequences |"));
        let claims = crate::claims::of_suite("pg").unwrap().unwrap();
        let cm = crate::claims::section(&claims, &pg(&opts(false, Some(2))), &session, &dir);
        // Each variant against each baseline (method against method), judged by Welch's test.
        assert!(cm.contains("| hypergrid 2×64, R0 0.01 | final exact TV (lower is better) | pg-g 0.0505 ± 0.0007 (n 2) | subtb 0.2005 ± 0.0007 (n 2) | 0.25 | **reproduced** (p < 0.001, g = 121.22) |"), "{cm}");
        assert!(cm.contains("| pg-g 2560 ± 0 (n 2), reached in 2 of 2 | tb 3840 ± 0 (n 2), not reached (≥ 3840) | 0.67 | **reproduced** (p < 0.001) |"));
        assert!(cm.contains("| Bayesian network structure, 5 nodes | final exact TV (lower is better) | pg-trpo 0.2995 ± 0.0007 (n 2) | db 0.2995 ± 0.0007 (n 2) | 1.00 | **undecided** (p = 1.000, g = 0.00) |"));
        assert!(cm.contains("*RL-G (pg-g) and RL-T (pg-trpo) converge faster than TB, DB and SubTB*: **partly reproduced** (reproduced in 6 of 18, not reproduced in 0, undecided in 12)."));
        assert!(cm.contains("For information, not the paper's claim: *PG (pg-u) does better than TB and SubTB on bit sequences*: no finished runs on both sides."));
        assert!(md.contains("within 1,500 iterations* (R0 0.1, batch 16, MLP 2×64): **not met**"));
        assert!(md.contains("pg-u **met** (2 of 2 seeds, first at iteration 20 (median)"));
        assert!(md.contains("pg-b **not met** (0 of 2 seeds"));
        // Only the bar's runs: no comparison table, the bar still judged.
        session.runs.retain(|r| r.group == BAR);
        let md = extra(&session, &[], &dir).unwrap();
        assert!(md.contains("pg-g **met** (2 of 2 seeds"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
