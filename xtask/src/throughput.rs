//! Suite `throughput`'s roofline table and plots; the suite itself — training steps by batch
//! size, hidden width and policy network, forward sampling and the GEMM roofline run — is
//! `suites/throughput.toml`.

use std::path::Path;

use anyhow::Result;

use crate::bench::Session;
use crate::plot::{self, Chart, Series};
use crate::report::{Aggregate, fmt_num};

// The tables this module reads, as `suites/throughput.toml` names them (a test checks).
const STEP_GROUP: &str = "training step, hypergrid 4×8, MLP 2×256, by batch size";
const WIDTH_GROUP: &str = "training step, hypergrid 4×8, batch 64, by hidden width";
const ROOF_GROUP: &str = "roofline";

/// The parameter after `prefix` in a row name: `tb b256` with `b` → 256.
fn row_param(row: &str, prefix: char) -> Option<(String, f64)> {
    let (loss, p) = row.split_once(' ')?;
    Some((loss.to_string(), p.strip_prefix(prefix)?.parse().ok()?))
}

fn median_of(a: &Aggregate, key: &str) -> Option<f64> {
    a.ours.get(key).map(|s| s.median)
}

/// Roofline table and plots (`extra = "throughput"` in `suites/throughput.toml`).
pub fn extra(session: &Session, aggs: &[Aggregate], dir: &Path) -> Result<String> {
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
        let s = crate::data_suite::build("throughput", &crate::suite::test_util::opts(true, None));
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
        // The quick budgets: a third of the iterations, at least 10.
        let iterations = |name: &str| {
            let r = s.runs.iter().find(|r| r.name == name).unwrap();
            crate::suite::test_util::arg(r, "--iterations").unwrap().to_string()
        };
        assert_eq!(iterations("tb-b16-seed0"), "125");
        assert_eq!(iterations("tb-b256-seed0"), "10");
        assert_eq!(iterations("subtb-h64-seed0"), "31");
        assert_eq!(iterations("bitseq-mlp-tb-seed0"), "125");
        assert_eq!(iterations("bitseq-transformer-subtb-seed0"), "10");
        let gemm = s.runs.last().unwrap();
        assert_eq!((gemm.name.as_str(), gemm.gfn_args.len()), ("gemm-256", 6));
    }

    /// The tables the extra reads are the file's, and its networks are the networks suite's.
    #[test]
    fn the_file_names_what_the_extra_reads() {
        let tables: Vec<String> = crate::data_suite::tables("throughput")
            .into_iter()
            .map(|t| t.0)
            .collect();
        for g in [STEP_GROUP, WIDTH_GROUP, ROOF_GROUP] {
            assert!(tables.iter().any(|t| t == g), "{g}");
        }
        let nets = |suite: &'static str| -> Vec<(String, Vec<String>)> {
            let s = crate::data_suite::build(suite, &crate::suite::test_util::opts(false, Some(1)));
            let mut out: Vec<(String, Vec<String>)> = Vec::new();
            for r in s.runs.iter().filter(|r| r.gfn_args.iter().any(|a| a == "--policy")) {
                let at = r.gfn_args.iter().position(|a| a == "--policy").unwrap();
                let flags: Vec<String> = r.gfn_args[at..]
                    .chunks(2)
                    .take_while(|c| ["--policy", "--hidden", "--layers", "--heads"].contains(&c[0].as_str()))
                    .flatten()
                    .cloned()
                    .collect();
                if !out.iter().any(|(n, _)| n == &flags[1]) {
                    out.push((flags[1].clone(), flags));
                }
            }
            out
        };
        assert_eq!(nets("throughput"), nets("networks"));
        assert_eq!(nets("networks").len(), 2);
    }
}
