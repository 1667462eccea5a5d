//! Suite `subtb`'s plots and gradient analysis (how well each objective's small-batch gradient
//! estimates the large-batch TB gradient); the suite itself — the SubTB(λ) paper's hypergrid
//! grid and claims — is `suites/subtb.toml`.

use std::path::Path;

use anyhow::Result;
use serde_json::Value;

use crate::bench::Session;
use crate::curves;
use crate::plot::{self, Chart, Series};
use crate::report::Aggregate;

/// Gradient-analysis records of one run: iteration and the cosines of small-batch TB, DB and
/// SubTB gradients with the large-batch TB gradient.
fn grad_records(run_dir: &Path) -> Vec<(f64, Cosines)> {
    let text = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| {
            let g = v.get("grad_cosine")?;
            let it = v["iteration"].as_f64()?;
            Some((it, [g["tb"].as_f64()?, g["db"].as_f64()?, g["subtb"].as_f64()?]))
        })
        .collect()
}

/// Cosines of small-batch TB, DB and SubTB gradients with the large-batch TB gradient.
type Cosines = [f64; 3];

/// Mean of each cosine over `v`.
fn means<'a>(v: impl Iterator<Item = &'a Cosines> + Clone) -> Cosines {
    let n = v.clone().count().max(1) as f64;
    [0, 1, 2].map(|i| v.clone().map(|x| x[i]).sum::<f64>() / n)
}

/// The suite's plots and its gradient analysis (`extra = "subtb"` in `suites/subtb.toml`).
pub fn extra(session: &Session, _aggs: &[Aggregate], dir: &Path) -> Result<String> {
    let mut md = curves::quality_plots(session, dir)?;

    // Gradient analysis: cosines recorded in the DB and SubTB runs.
    let mut by_iteration: std::collections::BTreeMap<(String, u64), Vec<Cosines>> = Default::default();
    let mut all: Vec<Cosines> = Vec::new();
    for r in session.runs.iter().filter(|r| r.ok && r.row == "subtb") {
        for (it, c) in grad_records(&dir.join("runs").join(&r.name)) {
            by_iteration.entry((r.group.clone(), it as u64)).or_default().push(c);
            all.push(c);
        }
    }
    md.push_str("\n## Gradient analysis\n\n");
    if all.is_empty() {
        md.push_str("No gradient analysis was recorded.\n");
        return Ok(md);
    }
    md.push_str(
        "During SubTB(0.9) training, at regular iterations: the cosine similarity between the gradient of each \
         objective on a small batch (16 trajectories, mean over 8 batches) and the TB gradient on a large batch \
         (1,024 trajectories), over the policy's parameters (`gfn train --grad-cosine-every`).\n\n",
    );
    md.push_str("| setting | cos(TB small, TB large) | cos(DB small, TB large) | cos(SubTB small, TB large) |\n|---|---:|---:|---:|\n");
    let mut groups: Vec<String> = by_iteration.keys().map(|k| k.0.clone()).collect();
    groups.dedup();
    let row = |name: &str, [tb, db, st]: Cosines| format!("| {name} | {tb:.3} | {db:.3} | {st:.3} |\n");
    for g in &groups {
        let of_group = by_iteration
            .iter()
            .filter(|(k, _)| &k.0 == g)
            .flat_map(|(_, v)| v.iter());
        md.push_str(&row(g, means(of_group)));
    }
    md.push_str(&row("all", means(all.iter())));
    md.push('\n');
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
            for (s, m) in series.iter_mut().zip(means(v.iter())) {
                s.points.push((*it as f64, m));
            }
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
