//! Suite `conditional`: one conditional GFlowNet over reward exponents β ∈ [0.5, 2] on the 4×8
//! hypergrid (`gfn train --condition beta=0.5..2`), TB, DB and SubTB(0.9), over seeds: the exact
//! TV to `R^β / Z(β)` at β = 0.5, 1 and 2, and the error of `log Z(β) = log F(s_0(β))`, from each
//! run's final evaluation. The target: TV ≤ 0.05 at every β.

use crate::suite::{Agg, Metric, Output, RunSpec, Suite, SuiteOptions, num, ours_ms_per_iteration};

/// The table (one task).
pub const GROUP: &str = "hypergrid 4×8, β ∈ [0.5, 2], batch 16";
/// Iterations of a run.
const ITERATIONS: u32 = 20_000;

/// The largest `|log Ẑ(β) − log Z(β)|` over the evaluated conditions of a run.
fn max_log_z_error(r: &serde_json::Value) -> Option<f64> {
    let conditions = r.pointer("/summary/conditions")?.as_array()?;
    conditions
        .iter()
        .map(|c| Some((num(c, "/log_z/learned")? - num(c, "/log_z/true")?).abs()))
        .try_fold(0.0f64, |m, e| e.map(|e| m.max(e)))
}

/// The largest TV over the evaluated conditions of a run.
fn max_tv(r: &serde_json::Value) -> Option<f64> {
    let conditions = r.pointer("/summary/conditions")?.as_array()?;
    conditions
        .iter()
        .map(|c| num(c, "/tv"))
        .try_fold(0.0f64, |m, e| e.map(|e| m.max(e)))
}

/// The suite: TB, DB, SubTB(0.9) × seeds (default 3). `--quick`: seed 0, 2,000 iterations.
pub fn conditional(opts: &SuiteOptions) -> Suite {
    let seeds = opts.seeds.unwrap_or(if opts.quick { 1 } else { 3 });
    let iterations = if opts.quick { ITERATIONS / 10 } else { ITERATIONS };
    let mut runs = Vec::new();
    for loss in ["tb", "db", "subtb"] {
        for seed in 0..u64::from(seeds) {
            let gfn_args: Vec<String> = [
                "train",
                "--env",
                "hypergrid",
                "--ndim",
                "4",
                "--height",
                "8",
                "--loss",
                loss,
                "--condition",
                "beta=0.5..2",
                "--eval-conditions",
                "0.5;1;2",
                "--iterations",
                &iterations.to_string(),
                "--eval-every",
                &(iterations / 4).to_string(),
                "--seed",
                &seed.to_string(),
                "--threads",
                &opts.threads.to_string(),
            ]
            .map(String::from)
            .to_vec();
            runs.push(RunSpec {
                name: format!("4x8-{loss}-seed{seed}"),
                group: GROUP.into(),
                row: loss.into(),
                seed,
                gfn_args,
                peer_args: Vec::new(),
                output: Output::RunDir,
            });
        }
    }
    Suite {
        name: "conditional",
        row_header: "loss",
        runs,
        metrics: vec![
            crate::suite::col_iterations(),
            crate::suite::col_ms_per_iteration(),
            Metric {
                header: "TV at β = 0.5",
                key: "tv_beta_0_5",
                short: "TV(0.5)",
                value: |r| num(r, "/summary/conditions/0/tv"),
                agg: Agg::MeanStd,
                digits: 4,
            },
            Metric {
                header: "TV at β = 1",
                key: "tv_beta_1",
                short: "TV(1)",
                value: |r| num(r, "/summary/conditions/1/tv"),
                agg: Agg::MeanStd,
                digits: 4,
            },
            Metric {
                header: "TV at β = 2",
                key: "tv_beta_2",
                short: "TV(2)",
                value: |r| num(r, "/summary/conditions/2/tv"),
                agg: Agg::MeanStd,
                digits: 4,
            },
            Metric {
                header: "worst TV over β (largest over seeds)",
                key: "tv_worst",
                short: "TVmax",
                value: max_tv,
                agg: Agg::Max,
                digits: 4,
            },
            Metric {
                header: "worst log Z(β) error",
                key: "log_z_error_worst",
                short: "dlogZ",
                value: max_log_z_error,
                agg: Agg::Max,
                digits: 4,
            },
        ],
        ms_per_iteration: ours_ms_per_iteration,
        peers: Vec::new(),
        extra: None,
        quality_note: Some(
            "One model per run, trained over β drawn uniformly from [0.5, 2] for each trajectory; exact \
             TV between its terminating distribution at β and R^β/Z(β), at the run's final evaluation \
             (mean ± sample standard deviation over seeds); the worst columns take the largest value (log Z error: |log Ẑ(β) − log Z(β)|) \
             over the three β and over seeds. log Ẑ(β) is the flow head at s_0(β). ms/iteration: the \
             median over seeds of training time per iteration (evaluations excluded).",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_loss_runs_the_same_conditional_task() {
        let s = conditional(&SuiteOptions {
            quick: false,
            seeds: None,
            threads: 1,
        });
        assert_eq!(s.runs.len(), 3 * 3);
        let arg = |r: &RunSpec, flag: &str| r.gfn_args.windows(2).find(|w| w[0] == flag).map(|w| w[1].clone());
        for r in &s.runs {
            assert_eq!(arg(r, "--condition").as_deref(), Some("beta=0.5..2"));
            assert_eq!(arg(r, "--eval-conditions").as_deref(), Some("0.5;1;2"));
            assert_eq!(arg(r, "--iterations").as_deref(), Some("20000"));
        }
        let record = serde_json::json!({"summary": {"conditions": [
            {"tv": 0.01, "log_z": {"learned": 1.0, "true": 1.2}},
            {"tv": 0.04, "log_z": {"learned": 2.0, "true": 1.9}},
        ]}});
        assert_eq!(max_tv(&record), Some(0.04));
        assert!((max_log_z_error(&record).unwrap() - 0.2).abs() < 1e-12);
        assert_eq!(max_tv(&serde_json::json!({"summary": {}})), None);
    }
}
