//! Suite `throughput`: how fast a training step and forward sampling run, against batch size and
//! hidden width, and how close the training step comes to the machine's GEMM rate (a roofline).

use std::path::Path;

use crate::bench::Session;
use crate::plot::{self, Chart, Series};
use crate::report::{Aggregate, fmt_num};
use crate::suite::{
    Agg, MS_PER_ITERATION, Metric, Output, PEAK_RSS, PEER_PEAK_RSS, RunSpec, Suite, SuiteOptions, hypergrid_peers, num,
};
use anyhow::Result;

const STEP_GROUP: &str = "training step, hypergrid 4×8, MLP 2×256, by batch size";
const WIDTH_GROUP: &str = "training step, hypergrid 4×8, batch 64, by hidden width";
const NET_GROUP: &str = "training step, bit sequences n 120, k 8, batch 16, by policy network";
const SAMPLE_GROUP: &str = "forward sampling without gradients, untrained MLP 2×256, batch 1024";
const ROOF_GROUP: &str = "roofline";

/// Iterations per timed run: about 6,000 trajectories, at least 20 iterations.
fn iterations_for(batch: u32, quick: bool) -> u32 {
    let n = (6000 / batch).max(20);
    if quick { (n / 3).max(10) } else { n }
}

/// The columns of our runs.
#[rustfmt::skip]
const COLUMNS: [Metric; 6] = [
    MS_PER_ITERATION,
    Metric::new("iterations/s", "iterations_per_second", "it/s", Agg::Median, 1,
        &|r| num(r, "/summary/iterations_per_second")),
    Metric::new("trajectories/s", "trajectories_per_second", "traj/s", Agg::Median, 0,
        &|r| num(r, "/summary/trajectories_per_second")),
    Metric::new("useful GFLOP/s", "useful_gflops_per_second", "GFLOP/s", Agg::Median, 1, &|r| {
        num(r, "/summary/useful_gflops_per_second")
            .or_else(|| num(r, "/summary/forward_gflops_per_second"))
            .or_else(|| num(r, "/summary/best_gflops"))
    }),
    Metric::new("mean trajectory length", "mean_length", "len", Agg::Median, 2, &|r| num(r, "/summary/mean_length")),
    PEAK_RSS,
];

/// The columns of the peers' runs.
#[rustfmt::skip]
const PEER_COLUMNS: [Metric; 2] = [
    Metric::new("trajectories/s", "trajectories_per_second", "traj/s", Agg::Median, 0,
        &|r| num(r, "/output/trajectories_per_second")),
    PEER_PEAK_RSS,
];

/// Arguments from a format string: split at spaces.
fn split(text: &str) -> Vec<String> {
    text.split(' ').map(String::from).collect()
}

/// The throughput suite. Training rows are named `<loss> b<batch>` or `<loss> h<hidden>`; each
/// run evaluates only once, at its end (evaluations are not timed anyway).
pub fn throughput(opts: &SuiteOptions) -> Suite {
    let seeds = opts.seeds.unwrap_or(1);
    let batches: &[u32] = if opts.quick { &[16, 256] } else { &[16, 64, 256, 1024] };
    let widths: &[u32] = if opts.quick {
        &[64, 256]
    } else {
        &[64, 128, 256, 512, 1024]
    };
    let threads = opts.threads;
    let mut runs = Vec::new();
    for seed in 0..u64::from(seeds) {
        // The trajectory-balance paper's hypergrid recipe (`reference/baselines.md`) on a d×H
        // grid: flags understood by `gfn train` and by the peer drivers alike.
        let recipe = |(d, h): (u32, u32), loss: &str, batch: u32, hidden: u32, iterations: u32, eval_every: u32| {
            let lambda = if loss == "subtb" { " --lambda 0.9" } else { "" };
            format!(
                "--ndim {d} --height {h} --r0 0.1 --r1 0.5 --r2 2 --loss {loss}{lambda} --batch-size {batch} \
                 --iterations {iterations} --seed {seed} --lr 0.001 --lr-logz 0.1 --hidden {hidden} --layers 2 \
                 --eval-every {eval_every} --threads {threads}"
            )
        };
        for loss in ["tb", "subtb"] {
            let by_batch = batches.iter().map(|&b| (STEP_GROUP, format!("b{b}"), b, 256));
            for (group, param, batch, hidden) in
                by_batch.chain(widths.iter().map(|&h| (WIDTH_GROUP, format!("h{h}"), 64, h)))
            {
                let iterations = iterations_for(batch, opts.quick);
                let common = recipe((4, 8), loss, batch, hidden, iterations, iterations);
                // gfn refuses an option that has no effect: log Z's rate goes only with a loss
                // that trains log Z, tb here (the peers' drivers take the common flags as they are).
                let gfn = format!("train --env hypergrid {common}");
                let gfn = if loss == "tb" {
                    gfn
                } else {
                    gfn.replace(" --lr-logz 0.1", "")
                };
                runs.push(RunSpec {
                    name: format!("{loss}-{param}-seed{seed}"),
                    group: group.into(),
                    row: format!("{loss} {param}"),
                    seed,
                    gfn_args: split(&gfn),
                    peer_args: split(&common),
                    output: Output::RunDir,
                });
            }
        }
        // The policy networks of `cargo xtask bench networks`; the transformer's step costs ~40×
        // the MLP's, so it runs fewer iterations.
        for (net, flags) in crate::data_suite::axis_values("networks", 0) {
            let iterations = match (net.as_str(), opts.quick) {
                ("mlp", quick) => iterations_for(16, quick),
                (_, true) => 10,
                _ => 40,
            };
            for loss in ["tb", "subtb"] {
                let mut gfn_args = split(&format!("train --env bitseq --loss {loss}"));
                gfn_args.extend(flags.iter().cloned());
                gfn_args.extend(split(&format!(
                    "--batch-size 16 --iterations {iterations} --eval-every {iterations} --seed {seed} \
                     --threads {threads}"
                )));
                runs.push(RunSpec {
                    name: format!("bitseq-{net}-{loss}-seed{seed}"),
                    group: NET_GROUP.into(),
                    row: format!("{net} {loss}"),
                    seed,
                    gfn_args,
                    peer_args: Vec::new(),
                    output: Output::RunDir,
                });
            }
        }
        for (ndim, height) in [(2u32, 64u32), (2, 8), (4, 8)] {
            let common = recipe((ndim, height), "tb", 1024, 256, 1, 100);
            let rounds = if opts.quick { 10 } else { 30 };
            runs.push(RunSpec {
                name: format!("sample-{ndim}x{height}-seed{seed}"),
                group: SAMPLE_GROUP.into(),
                row: format!("{ndim}×{height}"),
                seed,
                gfn_args: split(&format!("speed sample --env hypergrid {common} --rounds {rounds}")),
                peer_args: split(&format!("{common} --sample-only --rounds {rounds}")),
                output: Output::Stdout,
            });
        }
    }
    runs.push(RunSpec {
        name: "gemm-256".into(),
        group: ROOF_GROUP.into(),
        row: "f32 GEMM 256³, one thread".into(),
        seed: 0,
        gfn_args: split("speed gemm --size 256 --repeats 500"),
        peer_args: Vec::new(),
        output: Output::Stdout,
    });

    Suite {
        name: "throughput",
        row_header: "configuration",
        runs,
        metrics: COLUMNS.to_vec(),
        peers: hypergrid_peers(&PEER_COLUMNS),
        extra: Some(extra),
        quality_note: None,
    }
}

/// The parameter after `prefix` in a row name: `tb b256` with `b` → 256.
fn row_param(row: &str, prefix: char) -> Option<(String, f64)> {
    let (loss, p) = row.split_once(' ')?;
    Some((loss.to_string(), p.strip_prefix(prefix)?.parse().ok()?))
}

fn median_of(a: &Aggregate, key: &str) -> Option<f64> {
    a.ours.get(key).map(|s| s.median)
}

/// Roofline table and plots.
fn extra(session: &Session, aggs: &[Aggregate], dir: &Path) -> Result<String> {
    let gemm = session
        .runs
        .iter()
        .find(|r| r.group == ROOF_GROUP && r.ok)
        .and_then(|r| r.summary.as_ref())
        .and_then(|s| s["best_gflops"].as_f64());
    let mut md = String::from("\n## Roofline\n\n");
    match gemm {
        Some(g) => {
            md.push_str(&format!(
                "Best single-thread f32 GEMM 256³ in this run: **{} GFLOP/s** (`gfn speed gemm`, the fastest of 500 products). \
                 Useful FLOPs of a training step: one forward and one backward pass of the MLP over every visited state \
                 (2·in·out per layer forward; as much again for each weight gradient and for each input gradient but the \
                 first layer's), whatever the implementation computes besides.\n\n",
                fmt_num(g, 1)
            ));
            md.push_str("| configuration | useful GFLOP/s | fraction of GEMM rate |\n|---|---:|---:|\n");
            for a in aggs.iter().filter(|a| a.group == STEP_GROUP || a.group == WIDTH_GROUP) {
                if let Some(u) = median_of(a, "useful_gflops_per_second") {
                    md.push_str(&format!(
                        "| {} ({}) | {} | {:.0}% |\n",
                        a.row,
                        if a.group == STEP_GROUP {
                            "hidden 256"
                        } else {
                            "batch 64"
                        },
                        fmt_num(u, 1),
                        100.0 * u / g
                    ));
                }
            }
        }
        None => md.push_str("The GEMM run failed: no roofline.\n"),
    }

    // Plots: trajectories/s against batch size and against hidden width, ours and the peers'.
    md.push_str("\n## Plots\n\n");
    for (group, prefix, x_label, file) in [
        (STEP_GROUP, 'b', "batch size (trajectories)", "throughput-vs-batch.png"),
        (WIDTH_GROUP, 'h', "hidden width", "throughput-vs-width.png"),
    ] {
        let mut series: Vec<Series> = Vec::new();
        let mut push = |label: String, x: f64, y: Option<f64>, dashed: bool| {
            let Some(y) = y else { return };
            match series.iter_mut().find(|s| s.label == label) {
                Some(s) => s.points.push((x, y)),
                None => series.push(Series {
                    label,
                    points: vec![(x, y)],
                    dashed,
                }),
            }
        };
        for a in aggs.iter().filter(|a| a.group == group) {
            let Some((loss, x)) = row_param(&a.row, prefix) else {
                continue;
            };
            push(
                format!("{loss} (gfn)"),
                x,
                median_of(a, "trajectories_per_second"),
                false,
            );
            for p in &a.peers {
                push(
                    format!("{loss} ({})", p.name),
                    x,
                    p.figures.get("trajectories_per_second").map(|s| s.median),
                    true,
                );
            }
        }
        if series.is_empty() {
            continue;
        }
        plot::line_chart(
            &dir.join(file),
            &Chart {
                title: group,
                x_label,
                y_label: "trajectories per second (log scale)",
                log_x: true,
                log_y: true,
            },
            &series,
        )?;
        md.push_str(&format!("![{group}]({file})\n"));
    }
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_parse() {
        assert_eq!(row_param("tb b256", 'b'), Some(("tb".into(), 256.0)));
        assert_eq!(row_param("subtb h64", 'h'), Some(("subtb".into(), 64.0)));
        assert_eq!(row_param("2×64", 'b'), None);
    }

    #[test]
    fn quick_suite_is_small() {
        let s = throughput(&crate::suite::test_util::opts(true, None));
        // 2 losses × (2 batches + 2 widths + 2 policy networks) + 3 sampling runs + 1 GEMM run.
        assert_eq!(s.runs.len(), 2 * 6 + 3 + 1);
        let tf = s.runs.iter().find(|r| r.name == "bitseq-transformer-tb-seed0").unwrap();
        assert!(
            tf.gfn_args
                .windows(2)
                .any(|w| w[0] == "--policy" && w[1] == "transformer")
        );
        let sample = s.runs.iter().find(|r| r.name == "sample-2x64-seed0").unwrap();
        assert!(sample.peer_args.iter().any(|a| a == "--sample-only"));
        assert_eq!(&sample.gfn_args[..2], ["speed", "sample"]);
    }
}
