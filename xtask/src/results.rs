//! `cargo xtask results`: regenerates the generated sections of `docs/RESULTS.md` and
//! `README.md` from the latest run of every suite (`target/bench/<suite>/latest`), and copies
//! their plots to `docs/results/<suite>/`.
//!
//! A generated section sits between `<!-- generated:<name>:begin -->` and
//! `<!-- generated:<name>:end -->`; text outside the markers is left as it is. A suite that has
//! never run keeps its old section.

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::runner::Layout;
use crate::suite::SUITES;

/// Replaces the text between the markers of `name` in `doc` (appending a new section at the end
/// when the markers are missing).
pub fn splice(doc: &str, name: &str, body: &str) -> String {
    let begin = format!("<!-- generated:{name}:begin -->");
    let end = format!("<!-- generated:{name}:end -->");
    let block = format!("{begin}\n{}\n{end}", body.trim_end());
    match (doc.find(&begin), doc.find(&end)) {
        (Some(b), Some(e)) if e > b => format!("{}{block}{}", &doc[..b], &doc[e + end.len()..]),
        _ => format!("{}\n\n{block}\n", doc.trim_end()),
    }
}

/// A suite's `results.md` as a section of `docs/RESULTS.md`: headings demoted two levels, plot
/// links pointing at `results/<suite>/`.
fn section(md: &str, suite: &str) -> String {
    let mut out = String::new();
    for line in md.lines() {
        let line = if line.starts_with('#') {
            format!("##{line}")
        } else if let Some(rest) = line.strip_prefix("![") {
            match rest.split_once("](") {
                Some((alt, file)) => format!("![{alt}](results/{suite}/{file}"),
                None => line.to_string(),
            }
        } else {
            line.to_string()
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// The README's summary: every suite's headline figures, with links to the full tables.
fn readme_summary(latest: &[(String, Value, String)]) -> String {
    let mut md = String::new();
    for (suite, json, results_md) in latest {
        let command = json.pointer("/request/command").and_then(Value::as_str).unwrap_or("?");
        let date = json["started"].as_str().unwrap_or("?");
        md.push_str(&format!("**{suite}** (`{command}`, {date}):\n\n"));
        let aggs = json["aggregates"].as_array().cloned().unwrap_or_default();
        match suite.as_str() {
            "hypergrid" | "throughput" => {
                let peers: Vec<String> = json["peers"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter(|p| p["available"].as_bool() == Some(true))
                            .filter_map(|p| p["name"].as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
                let mut header = vec!["configuration".to_string(), "gfn ms/it".into()];
                for p in &peers {
                    header.push(format!("× vs {p}"));
                }
                if suite == "hypergrid" {
                    header.push("gfn L1 (last 5)".into());
                    for p in &peers {
                        header.push(format!("{p} L1"));
                    }
                } else {
                    header.push("gfn traj/s".into());
                }
                md.push_str(&format!(
                    "| {} |\n|{}\n",
                    header.join(" | "),
                    "---|".repeat(header.len())
                ));
                for a in aggs.iter().filter(|a| a["group"].as_str() != Some("roofline")) {
                    let med = |v: &Value, k: &str| v.pointer(&format!("/{k}/median")).and_then(Value::as_f64);
                    let mean = |v: &Value, k: &str| v.pointer(&format!("/{k}/mean")).and_then(Value::as_f64);
                    let fmt = |x: Option<f64>, d: usize| x.map_or("—".to_string(), |x| format!("{x:.d$}"));
                    let group = a["group"].as_str().unwrap_or("");
                    let short_group = group.split(',').next().unwrap_or(group);
                    let mut cells = vec![
                        format!("{short_group}, {}", a["row"].as_str().unwrap_or("")),
                        fmt(med(&a["ours"], "ms_per_iteration"), 2),
                    ];
                    let peer_aggs = a["peers"].as_array().cloned().unwrap_or_default();
                    let find = |p: &str| peer_aggs.iter().find(|x| x["name"].as_str() == Some(p)).cloned();
                    for p in &peers {
                        cells.push(
                            find(p)
                                .and_then(|x| x["speed_ratio"].as_f64())
                                .map_or("—".into(), |r| format!("{r:.1}×")),
                        );
                    }
                    if suite == "hypergrid" {
                        cells.push(fmt(mean(&a["ours"], "exact_l1_last5"), 4));
                        for p in &peers {
                            cells.push(fmt(find(p).and_then(|x| mean(&x["figures"], "exact_l1_last5")), 4));
                        }
                    } else {
                        cells.push(fmt(med(&a["ours"], "trajectories_per_second"), 0));
                    }
                    md.push_str(&format!("| {} |\n", cells.join(" | ")));
                }
                if suite == "throughput" {
                    md.push_str(&roofline_line(&aggs));
                }
            }
            _ => {
                for line in results_md.lines().filter(|l| l.starts_with("- *")) {
                    md.push_str(line);
                    md.push('\n');
                }
            }
        }
        md.push('\n');
    }
    md.push_str("Full tables, plots and the commands that produced them: [docs/RESULTS.md](docs/RESULTS.md) (regenerated by `cargo xtask results`).\n");
    md
}

/// The throughput suite's roofline in one sentence: the GEMM rate and the fraction of it the
/// training step reaches at batch ≥ 256.
fn roofline_line(aggs: &[Value]) -> String {
    let med = |a: &Value, k: &str| a.pointer(&format!("/ours/{k}/median")).and_then(Value::as_f64);
    let Some(gemm) = aggs
        .iter()
        .find(|a| a["group"].as_str() == Some("roofline"))
        .and_then(|a| med(a, "useful_gflops_per_second"))
    else {
        return String::new();
    };
    let parts: Vec<String> = aggs
        .iter()
        .filter(|a| a["group"].as_str().is_some_and(|g| g.contains("by batch size")))
        .filter_map(|a| {
            let row = a["row"].as_str()?;
            let batch: f64 = row.split(" b").nth(1)?.parse().ok()?;
            (batch >= 256.0).then(|| {
                Some(format!(
                    "{row} {:.0}%",
                    100.0 * med(a, "useful_gflops_per_second")? / gemm
                ))
            })?
        })
        .collect();
    format!(
        "\nRoofline: the best single-thread 256³ GEMM ran at {gemm:.1} GFLOP/s; at batch ≥ 256 the training step's useful FLOPs reach {} of it. Sampling rows: ms per batch of 1,024 trajectories.\n",
        parts.join(", ")
    )
}

/// Regenerates `docs/RESULTS.md`, `README.md` and `docs/results/<suite>/*.png`.
pub fn regenerate() -> Result<()> {
    let layout = Layout::detect();
    let mut latest = Vec::new();
    for def in SUITES {
        let dir = layout.target.join("bench").join(def.name).join("latest");
        let (Ok(md), Ok(json)) = (
            std::fs::read_to_string(dir.join("results.md")),
            std::fs::read_to_string(dir.join("results.json")),
        ) else {
            eprintln!("{}: no run in {}; its section is kept", def.name, dir.display());
            continue;
        };
        let json: Value = serde_json::from_str(&json).with_context(|| format!("{}/results.json", dir.display()))?;
        if json["complete"].as_bool() != Some(true) {
            eprintln!("{}: the latest run is incomplete; using it anyway", def.name);
        }
        let plots = layout.root.join("docs").join("results").join(def.name);
        copy_plots(&dir, &plots)?;
        latest.push((def.name.to_string(), json, md));
    }
    if latest.is_empty() {
        bail!(
            "no benchmark results under {}/bench: run `cargo xtask bench <suite>` first",
            layout.target.display()
        );
    }
    let results_path = layout.root.join("docs").join("RESULTS.md");
    let mut doc = std::fs::read_to_string(&results_path).unwrap_or_else(|_| "# Results\n".into());
    for (suite, _, md) in &latest {
        doc = splice(&doc, &format!("bench-{suite}"), &section(md, suite));
    }
    write(&results_path, &doc)?;
    // The README's summary covers every suite: it is rewritten only when every suite has a run
    // here, so regenerating one suite's section keeps the others' headline figures.
    if latest.len() < SUITES.len() {
        eprintln!(
            "updated {} from {} of {} suites; README.md's summary is kept (it is regenerated when every suite has a run)",
            results_path.display(),
            latest.len(),
            SUITES.len()
        );
        return Ok(());
    }
    let readme_path = layout.root.join("README.md");
    let readme = std::fs::read_to_string(&readme_path).context("cannot read README.md")?;
    write(&readme_path, &splice(&readme, "summary", &readme_summary(&latest)))?;
    eprintln!(
        "updated {} and {} from {} suite(s)",
        results_path.display(),
        readme_path.display(),
        latest.len()
    );
    Ok(())
}

fn copy_plots(from: &Path, to: &Path) -> Result<()> {
    let pngs: Vec<_> = std::fs::read_dir(from)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    if pngs.is_empty() {
        return Ok(());
    }
    if to.exists() {
        std::fs::remove_dir_all(to).with_context(|| format!("cannot clear {}", to.display()))?;
    }
    std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    for p in pngs {
        let dest = to.join(p.file_name().unwrap_or_default());
        std::fs::copy(&p, &dest).with_context(|| format!("cannot copy {} to {}", p.display(), dest.display()))?;
    }
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splice_replaces_between_markers_and_appends_otherwise() {
        let doc = "a\n<!-- generated:x:begin -->\nold\n<!-- generated:x:end -->\nb\n";
        let out = splice(doc, "x", "new\n");
        assert_eq!(out, "a\n<!-- generated:x:begin -->\nnew\n<!-- generated:x:end -->\nb\n");
        let out = splice("a\n", "y", "z");
        assert!(out.ends_with("<!-- generated:y:begin -->\nz\n<!-- generated:y:end -->\n"));
        assert_eq!(splice(&out, "y", "w").matches("generated:y:begin").count(), 1);
    }

    #[test]
    fn sections_demote_headings_and_relink_plots() {
        let s = section("# Benchmark: x\n## g\n![t](a.png)\ntext\n", "x");
        assert_eq!(s, "### Benchmark: x\n#### g\n![t](results/x/a.png)\ntext\n");
    }
}
