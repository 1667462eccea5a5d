//! Suite `mis`: LED-GFN's maximum independent set on RB graphs (the reduced setting, 20–60 nodes:
//! `gfn train --env mis --policy gin`), DB, FL-DB, LED-DB and TB, over seeds: the average size of
//! the sampled independent sets on the held-out test graphs (20 samples per graph, the official
//! metric) against training graphs seen, beside the greedy minimum-degree heuristic and the exact
//! optimum (our branch and bound) of the same graphs, and what a training step costs.

use std::path::Path;

use anyhow::Result;

use crate::bench::Session;
use crate::plot::Reference;
use crate::report::Aggregate;
use crate::suite::{Agg, Metric, Output, RunSpec, Suite, SuiteOptions, num, ours_ms_per_iteration};

/// The reduced setting's table.
pub const GROUP: &str = "MIS, RB graphs of 20–60 nodes";
/// The small setting's table (LED-GFN's graphs, one run at a budget this machine affords).
pub const SMALL_GROUP: &str = "MIS, RB graphs of 200–300 nodes";
/// The objectives compared (LED-GFN's MIS table: DB, FL-DB, LED-DB; and TB).
pub const LOSSES: [&str; 4] = ["db", "fl-db", "led-db", "tb"];
/// Training graphs of a reduced run (one trajectory each).
pub const TRAJECTORIES: u32 = 12_000;
/// Trajectories (graphs) per iteration.
pub const BATCH: u32 = 16;
/// Evaluations over a run (each samples 20 sets on every test graph).
const EVALUATIONS: u32 = 4;
/// The GIN (LED-GFN: 5 layers of 256; narrower here so that the runs fit a 2-core machine), with
/// four gradient updates per sampled batch (LED-GFN's code: 30 per rollout of 8 graphs).
pub const GIN: [&str; 8] = [
    "--policy",
    "gin",
    "--hidden",
    "64",
    "--layers",
    "5",
    "--updates-per-batch",
    "4",
];
/// Training and test graphs of the reduced setting (LED-GFN: 4,000 and 500).
pub const GRAPHS: [&str; 4] = ["--mis-train", "4000", "--mis-test", "100"];
/// The reward exponent: LED-GFN's, β from 1 to 500 (`log R = β·|I|`), annealed over the first
/// half of the run's graphs (LED-GFN: over 40,000 of its 80,000).
pub const ANNEAL: [&str; 6] = ["--beta-start", "1", "--beta-end", "500", "--beta-anneal", "6000"];
/// The small setting's graphs and exponent: 20 test graphs, β from 1 to 500 over the run's 480
/// graphs, one update per batch (a step on 16 graphs of ~230 nodes costs seconds here: the GIN
/// keeps a message per edge, ~3,900 edges per graph).
pub const SMALL: [&str; 14] = [
    "--mis-graphs",
    "small",
    "--mis-train",
    "4000",
    "--mis-test",
    "20",
    "--beta-start",
    "1",
    "--beta-end",
    "500",
    "--beta-anneal",
    "480",
    "--updates-per-batch",
    "1",
];
/// Iterations of the small run.
const SMALL_ITERATIONS: u32 = 30;

/// One run of `loss` in `group` (its table row `row`) with the flags of `parts`.
fn run(group: &str, row: &str, loss: &str, seed: u64, iterations: u32, parts: &[&[&str]], threads: u32) -> RunSpec {
    let mut gfn_args: Vec<String> = ["train", "--env", "mis", "--loss", loss].map(String::from).to_vec();
    for part in parts {
        gfn_args.extend(part.iter().map(|s| s.to_string()));
    }
    gfn_args.extend([
        "--batch-size".into(),
        BATCH.to_string(),
        "--iterations".into(),
        iterations.to_string(),
        "--eval-every".into(),
        (iterations / EVALUATIONS).max(1).to_string(),
        "--seed".into(),
        seed.to_string(),
        "--threads".into(),
        threads.to_string(),
    ]);
    let setting = if group == GROUP { "reduced" } else { "small" };
    RunSpec {
        name: format!("{setting}-{}-seed{seed}", row.replace([' ', '→'], "-")),
        group: group.into(),
        row: row.into(),
        seed,
        gfn_args,
        peer_args: Vec::new(),
        output: Output::RunDir,
    }
}

/// The suite: every loss × seeds (default 3) on the reduced setting, and one FL-DB run on the
/// small setting. `--quick`: seed 0, a tenth of the graphs, no small run.
pub fn mis(opts: &SuiteOptions) -> Suite {
    let seeds = opts.seeds.unwrap_or(if opts.quick { 1 } else { 3 });
    let trajectories = if opts.quick { TRAJECTORIES / 10 } else { TRAJECTORIES };
    let iterations = trajectories / BATCH;
    let t = opts.threads;
    let mut runs = Vec::new();
    for loss in LOSSES {
        for seed in 0..u64::from(seeds) {
            runs.push(run(GROUP, loss, loss, seed, iterations, &[&GIN, &GRAPHS, &ANNEAL], t));
        }
    }
    if !opts.quick {
        runs.push(run(
            SMALL_GROUP,
            "fl-db",
            "fl-db",
            0,
            SMALL_ITERATIONS,
            &[&GIN[..6], &SMALL],
            t,
        ));
    }
    let task = |key: &'static str, header: &'static str, short: &'static str, value: crate::suite::Extract| Metric {
        header,
        key,
        short,
        value,
        agg: Agg::MeanStd,
        digits: 2,
    };
    Suite {
        name: "mis",
        row_header: "loss",
        runs,
        metrics: vec![
            crate::suite::col_iterations(),
            crate::suite::col_ms_per_iteration(),
            Metric {
                header: "graphs/s (median)",
                key: "graphs_per_second",
                short: "graphs/s",
                value: &|r| num(r, "/summary/trajectories_per_second"),
                agg: Agg::Median,
                digits: 0,
            },
            task("mis_size", "average set size", "size", &|r| {
                num(r, "/summary/task/mis_size")
            }),
            task("gap_percent", "gap to the optimum (%)", "gap%", &|r| {
                num(r, "/summary/task/gap_percent")
            }),
            task("mis_size_best", "best of 20, averaged", "best", &|r| {
                num(r, "/summary/task/mis_size_best")
            }),
            task("greedy_size", "greedy", "greedy", &|r| {
                num(r, "/summary/task/greedy_size")
            }),
            task("optimum_size", "optimum", "opt", &|r| {
                num(r, "/summary/task/optimum_size")
            }),
        ],
        ms_per_iteration: &ours_ms_per_iteration,
        peers: Vec::new(),
        extra: Some(extra),
        quality_note: Some(
            "Average set size: of 20 on-policy samples (no exploration) per held-out test graph, averaged \
             over the samples then over the test graphs, at a run's final evaluation; mean ± sample \
             standard deviation over seeds. Gap: 100·(optimum − size)/optimum. Greedy: minimum-degree \
             greedy; optimum: exact branch and bound (every test graph proven optimal, see \
             optimum_proven in the records). ms/iteration and graphs/s: training only (evaluations \
             excluded), median over seeds.",
        ),
    }
}

/// The average set size against training graphs seen, mean over seeds per loss, with the greedy
/// and optimal sizes as reference lines.
fn extra(session: &Session, aggs: &[Aggregate], dir: &Path) -> Result<String> {
    let mut md = String::from("\n## Plots\n\nMean over seeds against the training graphs seen.\n\n");
    let reference = |key: &str, label: &str| {
        aggs.iter()
            .find_map(|a| a.ours.get(key).map(|s| s.mean))
            .map(|y| Reference { label: label.into(), y })
    };
    let references: Vec<Reference> = [reference("greedy_size", "greedy"), reference("optimum_size", "optimum")]
        .into_iter()
        .flatten()
        .collect();
    let series = crate::pg::jsonl_series(session, dir, GROUP, "/task/mis_size");
    md.push_str(&crate::pg::figure_plot(
        dir,
        GROUP,
        ("set-size", "average independent-set size", false),
        &series,
        &references,
    )?);
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_loss_runs_the_same_graphs_and_budget() {
        let s = mis(&SuiteOptions {
            quick: false,
            seeds: None,
            threads: 1,
        });
        assert_eq!(s.runs.len(), LOSSES.len() * 3 + 1);
        let arg = |r: &RunSpec, flag: &str| r.gfn_args.windows(2).find(|w| w[0] == flag).map(|w| w[1].clone());
        for r in s.runs.iter().filter(|r| r.group == GROUP) {
            assert_eq!(arg(r, "--env").as_deref(), Some("mis"));
            assert_eq!(arg(r, "--policy").as_deref(), Some("gin"));
            assert_eq!(arg(r, "--iterations").as_deref(), Some("750"));
            assert_eq!(arg(r, "--loss").as_deref(), Some(r.row.as_str()));
            assert_eq!(arg(r, "--beta-end").as_deref(), Some("500"));
        }
        let names: std::collections::BTreeSet<_> = s.runs.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names.len(), s.runs.len(), "run names must be unique");
        let small: Vec<_> = s.runs.iter().filter(|r| r.group == SMALL_GROUP).collect();
        assert_eq!(small.len(), 1);
        assert_eq!(arg(small[0], "--mis-graphs").as_deref(), Some("small"));
        // Every flag once: gfn refuses a repeated one.
        for r in &s.runs {
            let flags: Vec<&String> = r.gfn_args.iter().filter(|a| a.starts_with("--")).collect();
            let unique: std::collections::BTreeSet<_> = flags.iter().collect();
            assert_eq!(unique.len(), flags.len(), "{}: {flags:?}", r.name);
        }
    }
}
