//! Suite `subtb`: the SubTB(λ) paper's hypergrid experiments (Madan et al., 2023): ndim 2 and 4,
//! height 12, R0 10⁻³ and 10⁻⁴, TB / DB / SubTB(0.9), and its gradient analysis (how well each
//! objective's small-batch gradient estimates the large-batch TB gradient).

use std::path::Path;

use anyhow::Result;
use serde_json::Value;

use crate::bench::Session;
use crate::curves;
use crate::plot::{self, Chart, Series};
use crate::report::Aggregate;
use crate::suite::{Agg, Metric, Recipe, Suite, SuiteOptions, f, ours_ms_per_iteration};

/// One setting of the paper's grid.
struct Setting {
    ndim: u32,
    r0: f64,
    iterations: u32,
    eval_every: u32,
    grad_every: u32,
}

fn group_name(ndim: u32, r0: f64) -> String {
    format!("hypergrid {ndim}×12, R0 {}", f(r0))
}

/// The suite: every setting × TB, DB, SubTB(0.9) × seeds (default 3). DB and SubTB runs also
/// record the gradient analysis (`--grad-cosine-every`). `--quick`: seed 0, shorter runs.
pub fn subtb(opts: &SuiteOptions) -> Suite {
    let seeds = opts.seeds.unwrap_or(if opts.quick { 1 } else { 3 });
    let scale = |n: u32| if opts.quick { n / 4 } else { n };
    let settings: Vec<Setting> = [1e-3, 1e-4]
        .into_iter()
        .flat_map(|r0| {
            [
                Setting {
                    ndim: 2,
                    r0,
                    iterations: scale(4000),
                    eval_every: 50,
                    grad_every: scale(1000),
                },
                Setting {
                    ndim: 4,
                    r0,
                    iterations: scale(10000),
                    eval_every: scale(200),
                    grad_every: scale(2000),
                },
            ]
        })
        .collect();
    let mut runs = Vec::new();
    for s in &settings {
        let group = group_name(s.ndim, s.r0);
        for loss in ["tb", "db", "subtb"] {
            for seed in 0..u64::from(seeds) {
                let mut r = Recipe::new(s.ndim, 12, loss, s.iterations, seed, opts.threads);
                r.rewards.0 = s.r0;
                r.eval_every = s.eval_every;
                let name = format!("{}x12-r0-{:e}-{loss}-seed{seed}", s.ndim, s.r0);
                let mut spec = r.run(name, &group, loss);
                spec.peer_args.clear();
                if loss != "tb" {
                    spec.gfn_args.extend([
                        "--grad-cosine-every".into(),
                        s.grad_every.to_string(),
                        "--grad-cosine-batch".into(),
                        "1024".into(),
                        "--grad-cosine-repeats".into(),
                        "8".into(),
                    ]);
                }
                runs.push(spec);
            }
        }
    }
    Suite {
        name: "subtb",
        row_header: "loss",
        runs,
        metrics: vec![
            crate::suite::col_iterations(),
            crate::suite::col_ms_per_iteration(),
            Metric {
                header: "mean L1 over training (area under the curve)",
                key: "mean_l1",
                short: "meanL1",
                value: &curves::mean_l1,
                agg: Agg::MeanStd,
                digits: 4,
            },
            Metric {
                header: "trajectories to L1 ≤ 0.5 (median)",
                key: "trajectories_to_l1_0.5",
                short: "traj→0.5",
                value: &|r| curves::trajectories_to_l1(r, 0.5),
                agg: Agg::Median,
                digits: 0,
            },
            crate::suite::col_l1_last5(),
            crate::suite::col_modes_found(),
        ],
        ms_per_iteration: &ours_ms_per_iteration,
        peers: Vec::new(),
        extra: Some(extra),
        quality_note: None,
    }
}

/// Gradient-analysis records of one run: `(iteration, cos TB, cos DB, cos SubTB)`.
fn grad_records(run_dir: &Path) -> Vec<(f64, f64, f64, f64)> {
    let text = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| {
            let g = v.get("grad_cosine")?;
            Some((
                v["iteration"].as_f64()?,
                g["tb"].as_f64()?,
                g["db"].as_f64()?,
                g["subtb"].as_f64()?,
            ))
        })
        .collect()
}

/// Cosines of small-batch TB, DB and SubTB gradients with the large-batch TB gradient.
type Cosines = (f64, f64, f64);

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn extra(session: &Session, _aggs: &[Aggregate], dir: &Path) -> Result<String> {
    let mut md = curves::quality_plots(session, dir)?;

    // Gradient analysis: cosines recorded in the DB and SubTB runs.
    let mut by_iteration: std::collections::BTreeMap<(String, u64), Vec<Cosines>> = Default::default();
    let mut all: Vec<(f64, f64, f64)> = Vec::new();
    for r in session.runs.iter().filter(|r| r.ok && r.row == "subtb") {
        for (it, tb, db, st) in grad_records(&dir.join("runs").join(&r.name)) {
            by_iteration
                .entry((r.group.clone(), it as u64))
                .or_default()
                .push((tb, db, st));
            all.push((tb, db, st));
        }
    }
    md.push_str("\n## Gradient analysis\n\n");
    if all.is_empty() {
        md.push_str("No gradient analysis was recorded.\n");
        return Ok(md);
    }
    let (tb, db, st): (Vec<f64>, Vec<f64>, Vec<f64>) = (
        all.iter().map(|x| x.0).collect(),
        all.iter().map(|x| x.1).collect(),
        all.iter().map(|x| x.2).collect(),
    );
    md.push_str(
        "During SubTB(0.9) training, at regular iterations: the cosine similarity between the gradient of each \
         objective on a small batch (16 trajectories, mean over 8 batches) and the TB gradient on a large batch \
         (1,024 trajectories), over the policy's parameters (`gfn train --grad-cosine-every`).\n\n",
    );
    md.push_str("| setting | cos(TB small, TB large) | cos(DB small, TB large) | cos(SubTB small, TB large) |\n|---|---:|---:|---:|\n");
    let mut groups: Vec<String> = by_iteration.keys().map(|k| k.0.clone()).collect();
    groups.dedup();
    for g in &groups {
        let v: Vec<&(f64, f64, f64)> = by_iteration
            .iter()
            .filter(|(k, _)| &k.0 == g)
            .flat_map(|(_, v)| v.iter())
            .collect();
        md.push_str(&format!(
            "| {g} | {:.3} | {:.3} | {:.3} |\n",
            mean(&v.iter().map(|x| x.0).collect::<Vec<_>>()),
            mean(&v.iter().map(|x| x.1).collect::<Vec<_>>()),
            mean(&v.iter().map(|x| x.2).collect::<Vec<_>>()),
        ));
    }
    md.push_str(&format!(
        "| all | {:.3} | {:.3} | {:.3} |\n\n",
        mean(&tb),
        mean(&db),
        mean(&st)
    ));
    for g in &groups {
        let mut series: Vec<Series> = ["TB", "DB", "SubTB(0.9)"]
            .iter()
            .map(|l| Series {
                label: format!("{l}, batch 16"),
                points: Vec::new(),
                dashed: false,
            })
            .collect();
        for ((_, it), v) in by_iteration.iter().filter(|(k, _)| &k.0 == g) {
            let x = *it as f64;
            series[0]
                .points
                .push((x, mean(&v.iter().map(|x| x.0).collect::<Vec<_>>())));
            series[1]
                .points
                .push((x, mean(&v.iter().map(|x| x.1).collect::<Vec<_>>())));
            series[2]
                .points
                .push((x, mean(&v.iter().map(|x| x.2).collect::<Vec<_>>())));
        }
        let file = format!("{}-grad-cosine.png", curves::slug(g));
        let title = format!("{g}: cosine to the large-batch TB gradient");
        plot::line_chart(
            &dir.join(&file),
            &Chart {
                title: &title,
                x_label: "training iteration (SubTB(0.9) run)",
                y_label: "cosine similarity",
                log_x: false,
                log_y: false,
            },
            &series,
        )?;
        md.push_str(&format!("![{title}]({file})\n"));
    }
    Ok(md)
}
