//! Quality curves: per-run figures read from a run's evaluations (time to a target, area under
//! the curve) and the mean curves over seeds that the plots show.

use std::path::Path;

use anyhow::Result;
use serde_json::Value;

use crate::bench::{CurvePoint, Session};
use crate::plot::{self, Chart, Reference, Series, spans_decades};
use crate::report::distinct;

/// The evaluations of a run record (ours or a peer's) as serialised in `results.json`.
fn points(record: &Value) -> &[Value] {
    record["curve"].as_array().map_or(&[], Vec::as_slice)
}

/// The figure at `pointer` (`/l1_sum`, `/top_k/mean_reward`, ...) of every evaluation of a run
/// record, where present.
pub fn values(record: &Value, pointer: &str) -> Vec<f64> {
    points(record)
        .iter()
        .filter_map(|p| p.pointer(pointer).and_then(Value::as_f64))
        .collect()
}

/// `(trajectories, training seconds)` at the first evaluation of a run record that satisfies
/// `reached` (given the evaluation's JSON object); `None` if none does.
pub fn first_reaching(record: &Value, reached: impl Fn(&Value) -> bool) -> Option<(f64, f64)> {
    points(record).iter().find(|p| reached(p)).map(|p| {
        (
            p["trajectories"].as_f64().unwrap_or(f64::NAN),
            p["seconds"].as_f64().unwrap_or(f64::NAN),
        )
    })
}

/// Whether an evaluation's exact L1 is at most `target`.
fn l1_at_most(point: &Value, target: f64) -> bool {
    point["l1_sum"].as_f64().is_some_and(|v| v <= target)
}

/// Training seconds (a peer's compile time included) until the first evaluation with exact
/// L1 ≤ `target`; `None` if never.
pub fn seconds_to_l1(record: &Value, target: f64) -> Option<f64> {
    first_reaching(record, |p| l1_at_most(p, target)).map(|(_, s)| s)
}

/// Mean exact L1 over all evaluations: the area under the L1-against-trajectories curve divided
/// by its length (evaluations are evenly spaced); lower means faster convergence.
pub fn mean_l1(record: &Value) -> Option<f64> {
    let v = values(record, "/l1_sum");
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// Point-wise mean over seeds of curves with the same evaluation schedule (truncated to the
/// shortest): `(mean x, mean y)`.
pub fn mean_curve<T>(curves: &[&[T]], x: impl Fn(&T) -> f64, y: impl Fn(&T) -> Option<f64>) -> Vec<(f64, f64)> {
    let n = curves.iter().map(|c| c.len()).min().unwrap_or(0);
    (0..n)
        .filter_map(|i| {
            let ys: Vec<f64> = curves.iter().filter_map(|c| y(&c[i])).collect();
            if ys.len() != curves.len() {
                return None;
            }
            let xm = curves.iter().map(|c| x(&c[i])).sum::<f64>() / curves.len() as f64;
            Some((xm, ys.iter().sum::<f64>() / ys.len() as f64))
        })
        .collect()
}

/// Draws `series` (with `references`) into `dir/file` and returns the markdown line that shows
/// it; nothing when no series has a point.
pub fn plot_line(dir: &Path, file: &str, chart: &Chart, series: &[Series], references: &[Reference]) -> Result<String> {
    if series.iter().all(|s| s.points.is_empty()) {
        return Ok(String::new());
    }
    plot::line_chart_with(&dir.join(file), chart, series, references)?;
    Ok(format!("![{}: {}]({file})\n", chart.title, chart.y_label))
}

/// File-name form of a group title: `hypergrid 4×8, batch 16` → `hypergrid-4x8-batch-16`.
pub fn slug(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        let c = if c == '×' { 'x' } else { c };
        if c.is_ascii_alphanumeric() || c == '.' {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    out.trim_end_matches('-').to_string()
}

/// For every group of the session: exact L1 against trajectories and against training seconds,
/// one line per (row, library), mean over seeds. Returns the markdown that shows the plots.
pub fn quality_plots(session: &Session, dir: &Path) -> Result<String> {
    let groups = distinct(session.runs.iter().map(|r| r.group.as_str()));
    let mut md = String::from(
        "\n## Plots\n\nExact L1 = Σ|P_T − p*| at every evaluation, mean over seeds; solid: gfn, dashed: peers (their compile time counts as training time).\n\n",
    );
    for group in groups {
        let runs: Vec<_> = session.runs.iter().filter(|r| r.group == group).collect();
        let rows = distinct(runs.iter().map(|r| r.row.as_str()));
        let libraries =
            distinct(std::iter::once("gfn").chain(runs.iter().flat_map(|r| r.peers.iter().map(|p| p.name.as_str()))));
        let mut by_traj = Vec::new();
        let mut by_secs = Vec::new();
        for row in &rows {
            for &lib in &libraries {
                let curves: Vec<&[CurvePoint]> = runs
                    .iter()
                    .filter(|r| r.row == *row)
                    .filter_map(|r| {
                        if lib == "gfn" {
                            r.ok.then_some(r.curve.as_slice())
                        } else {
                            r.peers
                                .iter()
                                .find(|p| p.name == lib && p.ok)
                                .map(|p| p.curve.as_slice())
                        }
                    })
                    .filter(|c| !c.is_empty())
                    .collect();
                if curves.is_empty() {
                    continue;
                }
                let label = format!("{row} ({lib})");
                let dashed = lib != "gfn";
                by_traj.push(Series {
                    label: label.clone(),
                    points: mean_curve(&curves, |p| p.trajectories, |p| p.l1_sum),
                    dashed,
                });
                by_secs.push(Series {
                    label,
                    points: mean_curve(&curves, |p| p.seconds, |p| p.l1_sum),
                    dashed,
                });
            }
        }
        if by_traj.is_empty() {
            continue;
        }
        let base = slug(group);
        let title = group.to_string();
        for (series, x_label, suffix) in [
            (&by_traj, "trajectories sampled", "l1-vs-trajectories"),
            (&by_secs, "training seconds (one thread)", "l1-vs-seconds"),
        ] {
            let file = format!("{base}-{suffix}.png");
            plot::line_chart(
                &dir.join(&file),
                &Chart {
                    title: &title,
                    x_label,
                    y_label: "exact L1 (log scale)",
                    log_x: false,
                    log_y: true,
                },
                series,
            )?;
            md.push_str(&format!("![{title}: {suffix}]({file})\n"));
        }
        md.push('\n');
    }
    Ok(md)
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

/// One line per row of `group` (run order): the figure at `pointer` of `metrics.jsonl` against
/// trajectories sampled, mean over the row's successful runs.
pub fn jsonl_series(session: &Session, dir: &Path, group: &str, pointer: &str) -> Vec<Series> {
    let runs: Vec<_> = session.runs.iter().filter(|r| r.ok && r.group == group).collect();
    distinct(runs.iter().map(|r| r.row.as_str()))
        .into_iter()
        .filter_map(|row| {
            let curves: Vec<_> = runs
                .iter()
                .filter(|r| r.row == row)
                .map(|r| jsonl_curve(dir, &r.name, pointer))
                .filter(|c| !c.is_empty())
                .collect();
            let slices: Vec<&[(f64, Option<f64>)]> = curves.iter().map(Vec::as_slice).collect();
            let points = mean_curve(&slices, |p| p.0, |p| p.1);
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
pub fn figure_plot(
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
        &format!("{}-{suffix}.png", slug(group)),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        assert_eq!(
            slug("hypergrid 4×8, batch 16, 10000 iterations"),
            "hypergrid-4x8-batch-16-10000-iterations"
        );
        assert_eq!(slug("R0 1e-4"), "r0-1e-4");
    }

    #[test]
    fn first_crossing_and_mean() {
        let rec = serde_json::json!({"curve": [
            {"trajectories": 16.0, "seconds": 1.0, "l1_sum": 0.5},
            {"trajectories": 32.0, "seconds": 2.0, "l1_sum": 0.09},
            {"trajectories": 48.0, "seconds": 3.0, "l1_sum": 0.2},
        ]});
        assert_eq!(seconds_to_l1(&rec, 0.1), Some(2.0));
        assert_eq!(first_reaching(&rec, |p| l1_at_most(p, 0.1)), Some((32.0, 2.0)));
        assert_eq!(seconds_to_l1(&rec, 0.01), None);
        assert!((mean_l1(&rec).unwrap() - 0.79 / 3.0).abs() < 1e-12);
    }
}
