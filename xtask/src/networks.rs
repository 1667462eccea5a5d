//! Suite `networks`: the policy network on the TB paper's bit sequences (n 120, k 8, 60 modes,
//! append order): the MLP against the transformer (`gfn train --policy transformer`), each with
//! TB and SubTB(0.9), over seeds: modes found and the test-set Spearman correlation between
//! `log R(x)` and `log P̂_T(x)` at equal iterations, and what an iteration of each costs.

use std::path::Path;

use anyhow::Result;

use crate::bench::Session;
use crate::report::Aggregate;
use crate::suite::{Agg, Metric, Output, RunSpec, Suite, SuiteOptions, num, ours_ms_per_iteration};

/// The table (one task).
pub const GROUP: &str = "bit sequences n 120, k 8, batch 16";
/// Iterations of a run (the transformer costs about 160 ms each on one thread).
const ITERATIONS: u32 = 1000;
/// Evaluations (each computes the test Spearman over 7,200 sequences: about 37 s with the
/// transformer).
const EVALUATIONS: u32 = 4;

/// The networks compared, with their `gfn train` flags: the MLP of the other bitseq runs (4×256,
/// as `cargo xtask bench pg`) and the transformer of gfnx's bit-sequence configuration (3 layers,
/// 8 heads, d_model 64, feed-forward 256, learned positions).
pub const NETWORKS: [(&str, &[&str]); 2] = [
    ("mlp", &["--policy", "mlp", "--hidden", "256", "--layers", "4"]),
    (
        "transformer",
        &[
            "--policy",
            "transformer",
            "--hidden",
            "64",
            "--layers",
            "3",
            "--heads",
            "8",
        ],
    ),
];

/// The suite: every network × TB, SubTB(0.9) × seeds (default 3). `--quick`: seed 0, 100
/// iterations.
pub fn networks(opts: &SuiteOptions) -> Suite {
    let seeds = opts.seeds.unwrap_or(if opts.quick { 1 } else { 3 });
    let iterations = if opts.quick { ITERATIONS / 10 } else { ITERATIONS };
    let mut runs = Vec::new();
    for (net, flags) in NETWORKS {
        for loss in ["tb", "subtb"] {
            for seed in 0..u64::from(seeds) {
                let mut gfn_args: Vec<String> = ["train", "--env", "bitseq", "--loss", loss].map(String::from).to_vec();
                gfn_args.extend(flags.iter().map(|s| s.to_string()));
                gfn_args.extend([
                    "--batch-size".into(),
                    "16".into(),
                    "--iterations".into(),
                    iterations.to_string(),
                    "--eval-every".into(),
                    (iterations / EVALUATIONS).to_string(),
                    "--seed".into(),
                    seed.to_string(),
                    "--threads".into(),
                    opts.threads.to_string(),
                ]);
                runs.push(RunSpec {
                    name: format!("{net}-{loss}-seed{seed}"),
                    group: GROUP.into(),
                    row: format!("{net} {loss}"),
                    seed,
                    gfn_args,
                    peer_args: Vec::new(),
                    output: Output::RunDir,
                });
            }
        }
    }
    Suite {
        name: "networks",
        row_header: "network and loss",
        runs,
        metrics: vec![
            crate::suite::col_iterations(),
            crate::suite::col_ms_per_iteration(),
            Metric {
                header: "parameters",
                key: "num_params",
                short: "params",
                value: |r| num(r, "/summary/num_params"),
                agg: Agg::Median,
                digits: 0,
            },
            Metric {
                header: "modes found (of 60)",
                key: "modes_found",
                short: "modes",
                value: |r| num(r, "/summary/task/modes_found"),
                agg: Agg::MeanStd,
                digits: 1,
            },
            crate::suite::col_test_spearman(),
        ],
        ms_per_iteration: ours_ms_per_iteration,
        peers: Vec::new(),
        extra: Some(extra),
        quality_note: Some(
            "Modes found: modes (of 60) within Hamming distance 30 of a training sample; test Spearman: \
             between log R(x) and log P̂_T(x) on the 7,200 test sequences (each mode with c random bits \
             flipped, c = 0…119; one backward trajectory each, the append order's only one), both from a \
             run's final evaluation; mean ± sample standard deviation over seeds. ms/iteration: the \
             median over seeds of training time per iteration (sampling, loss, backward, update; \
             evaluations excluded).",
        ),
    }
}

/// Modes found and test Spearman against trajectories, mean over seeds per row.
fn extra(session: &Session, _aggs: &[Aggregate], dir: &Path) -> Result<String> {
    let mut md = String::from("\n## Plots\n\nMean over seeds against the trajectories sampled in training.\n\n");
    for (pointer, suffix, label) in [
        ("/task/modes_found", "modes-found", "modes found"),
        ("/task/test_spearman", "test-spearman", "test-set Spearman correlation"),
    ] {
        let series = crate::pg::jsonl_series(session, dir, GROUP, pointer);
        md.push_str(&crate::pg::figure_plot(
            dir,
            GROUP,
            (suffix, label, false),
            &series,
            &[],
        )?);
    }
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_network_and_loss_runs_on_the_same_task_and_budget() {
        let s = networks(&SuiteOptions {
            quick: false,
            seeds: None,
            threads: 1,
        });
        assert_eq!(s.runs.len(), 2 * 2 * 3);
        let arg = |r: &RunSpec, flag: &str| r.gfn_args.windows(2).find(|w| w[0] == flag).map(|w| w[1].clone());
        for r in &s.runs {
            assert_eq!(arg(r, "--env").as_deref(), Some("bitseq"));
            assert_eq!(arg(r, "--iterations").as_deref(), Some("1000"));
            assert_eq!(arg(r, "--batch-size").as_deref(), Some("16"));
            assert!(r.row.starts_with(arg(r, "--policy").unwrap().as_str()), "{}", r.row);
        }
        let rows: std::collections::BTreeSet<_> = s.runs.iter().map(|r| r.row.as_str()).collect();
        assert_eq!(
            rows.into_iter().collect::<Vec<_>>(),
            ["mlp subtb", "mlp tb", "transformer subtb", "transformer tb"]
        );
    }
}
