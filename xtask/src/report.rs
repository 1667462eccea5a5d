//! The generic writers: `results.json` (everything) and `results.md` (one table per group).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::Value;

use crate::bench::{RunRecord, Session};
use crate::suite::{Agg, Metric, PeerSpec, Suite};

/// Summary statistics of one figure over seeds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Stats {
    /// Number of values.
    pub n: usize,
    /// Mean.
    pub mean: f64,
    /// Sample standard deviation (0 for one value).
    pub std: f64,
    /// Median.
    pub median: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
}

impl Stats {
    /// Statistics of the finite values; `None` when there are none.
    pub fn of(values: &[f64]) -> Option<Self> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let mean = v.iter().sum::<f64>() / n as f64;
        let std = if n > 1 {
            (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            0.5 * (v[n / 2 - 1] + v[n / 2])
        };
        Some(Stats {
            n,
            mean,
            std,
            median,
            min: v[0],
            max: v[n - 1],
        })
    }

    /// The table cell for `agg`.
    fn cell(&self, agg: Agg, digits: usize) -> String {
        match agg {
            Agg::Median => fmt_num(self.median, digits),
            Agg::Mean => fmt_num(self.mean, digits),
            Agg::Max => fmt_num(self.max, digits),
            Agg::Sum => fmt_num(self.mean * self.n as f64, digits),
            Agg::MeanStd if self.n > 1 => format!("{} ± {}", fmt_num(self.mean, digits), fmt_num(self.std, digits)),
            Agg::MeanStd => fmt_num(self.mean, digits),
        }
    }
}

/// Decimal places that show `x` with about four significant digits (none from 1,000 up).
pub fn digits_for(x: f64) -> usize {
    match x.abs() {
        a if a >= 1000.0 => 0,
        a if a >= 10.0 => 2,
        _ => 4,
    }
}

/// `mean ± std (n seeds)`, with `digits` decimals (`None`: about four significant digits).
pub fn seeds_cell(s: &Stats, digits: Option<usize>) -> String {
    let d = digits.unwrap_or_else(|| digits_for(s.mean));
    format!(
        "{} ± {} ({} seed{})",
        fmt_num(s.mean, d),
        fmt_num(s.std, d),
        s.n,
        if s.n == 1 { "" } else { "s" }
    )
}

/// `x` with `digits` decimals (thousands unseparated; `—` for a non-finite value).
pub fn fmt_num(x: f64, digits: usize) -> String {
    if x.is_finite() {
        format!("{x:.digits$}")
    } else {
        "—".into()
    }
}

/// One configuration (a table row): our runs and the peer's over every seed.
#[derive(Debug, Clone, Serialize)]
pub struct Aggregate {
    /// Table.
    pub group: String,
    /// Row.
    pub row: String,
    /// Runs of ours made.
    pub runs: usize,
    /// Of which succeeded.
    pub ok: usize,
    /// Our figures, by metric key.
    pub ours: BTreeMap<&'static str, Stats>,
    /// Our iterations per second (median over seeds, from the median ms/iteration).
    pub ours_iterations_per_second: Option<f64>,
    /// Each available peer's figures, in `--vs` order.
    pub peers: Vec<PeerAggregate>,
}

/// A peer's figures for one configuration.
#[derive(Debug, Clone, Serialize)]
pub struct PeerAggregate {
    /// Peer name.
    pub name: String,
    /// Peer runs that succeeded.
    pub ok: usize,
    /// The peer's figures, by metric key.
    pub figures: BTreeMap<&'static str, Stats>,
    /// The peer's milliseconds per iteration.
    pub ms_per_iteration: Option<Stats>,
    /// The peer's iterations per second (from its median ms/iteration).
    pub iterations_per_second: Option<f64>,
    /// Our speed over the peer's: peer ms/iteration ÷ ours (medians); > 1 means we are faster.
    pub speed_ratio: Option<f64>,
}

fn stats_of(metric_value: crate::suite::Extract, records: &[Value]) -> Option<Stats> {
    let v: Vec<f64> = records.iter().filter_map(metric_value).collect();
    Stats::of(&v)
}

/// The suite's peers that were available in this session, in `--vs` order.
pub fn available_peers<'a>(suite: &'a Suite, session: &Session) -> Vec<&'a PeerSpec> {
    session
        .peers
        .iter()
        .filter(|p| p.available)
        .filter_map(|p| suite.peers.iter().find(|s| s.name == p.name))
        .collect()
}

/// The distinct items of `items`, in first-seen order.
pub fn distinct<T: PartialEq>(items: impl IntoIterator<Item = T>) -> Vec<T> {
    let mut out = Vec::new();
    for item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

/// Groups the finished runs by (group, row), in plan order, and summarises them.
pub fn aggregates(suite: &Suite, session: &Session) -> Vec<Aggregate> {
    let peer_specs = available_peers(suite, session);
    let keys = distinct(suite.runs.iter().map(|r| (r.group.clone(), r.row.clone())));
    let mut out = Vec::new();
    for (group, row) in keys {
        let records: Vec<&RunRecord> = session
            .runs
            .iter()
            .filter(|r| r.group == group && r.row == row)
            .collect();
        if records.is_empty() {
            continue;
        }
        let ours: Vec<Value> = records
            .iter()
            .filter(|r| r.ok)
            .filter_map(|r| serde_json::to_value(r).ok())
            .collect();
        let mut agg = Aggregate {
            group: group.clone(),
            row: row.clone(),
            runs: records.len(),
            ok: ours.len(),
            ours: BTreeMap::new(),
            ours_iterations_per_second: None,
            peers: Vec::new(),
        };
        for m in &suite.metrics {
            if let Some(s) = stats_of(m.value, &ours) {
                agg.ours.insert(m.key, s);
            }
        }
        let our_ms = stats_of(&crate::suite::ours_ms_per_iteration, &ours);
        agg.ours_iterations_per_second = our_ms.map(|s| 1000.0 / s.median);
        for ps in &peer_specs {
            let runs: Vec<Value> = records
                .iter()
                .flat_map(|r| r.peers.iter())
                .filter(|p| p.ok && p.name == ps.name)
                .filter_map(|p| serde_json::to_value(p).ok())
                .collect();
            let mut pa = PeerAggregate {
                name: ps.name.to_string(),
                ok: runs.len(),
                figures: BTreeMap::new(),
                ms_per_iteration: stats_of(&crate::suite::peer_ms_per_iteration, &runs),
                iterations_per_second: None,
                speed_ratio: None,
            };
            for m in &ps.metrics {
                if let Some(s) = stats_of(m.value, &runs) {
                    pa.figures.insert(m.key, s);
                }
            }
            pa.iterations_per_second = pa.ms_per_iteration.map(|s| 1000.0 / s.median);
            if let (Some(o), Some(p)) = (our_ms, pa.ms_per_iteration) {
                pa.speed_ratio = Some(p.median / o.median);
            }
            agg.peers.push(pa);
        }
        out.push(agg);
    }
    out
}

/// `results.json`: the session plus the aggregates.
#[derive(Serialize)]
struct ResultsFile<'a> {
    suite: &'a str,
    complete: bool,
    #[serde(flatten)]
    session: &'a Session,
    aggregates: &'a [Aggregate],
}

/// Writes `results.json` and `results.md` into `dir`; with `full`, the suite's plots and claims
/// too (left out of the reports rewritten between runs). A session not marked finished is
/// reported as incomplete, naming what has no record yet.
pub fn write(dir: &Path, suite: &Suite, session: &Session, full: bool) -> Result<()> {
    let complete = session.finished.is_some();
    let aggs = aggregates(suite, session);
    let file = ResultsFile {
        suite: suite.name,
        complete,
        session,
        aggregates: &aggs,
    };
    let json = serde_json::to_string_pretty(&file)? + "\n";
    write_atomic(&dir.join("results.json"), &json)?;
    let mut md = markdown(suite, session, &aggs, complete);
    if full && let Some(extra) = suite.extra {
        match extra(session, &aggs, dir) {
            Ok(text) => md.push_str(&text),
            Err(e) => md.push_str(&format!("\nPlots failed: {e:#}\n")),
        }
    }
    if full && let Some(claims) = crate::claims::of_suite(suite.name) {
        md.push_str(&crate::claims::section(&claims?, suite, session, dir));
    }
    write_atomic(&dir.join("results.md"), &md)?;
    Ok(())
}

/// Writes `text` to `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// A row of cells.
fn row(cells: &[String]) -> String {
    format!("| {} |", cells.join(" | "))
}

fn cell(stats: Option<&Stats>, m: &Metric) -> String {
    stats.map_or_else(|| "—".into(), |s| s.cell(m.agg, m.digits))
}

/// `versions` object of the peer as `torchgfn 2.4.1, torch 2.15.0, python 3.11.7`.
fn peer_versions(v: &Value) -> String {
    match v.as_object() {
        Some(map) => map
            .iter()
            .map(|(k, v)| format!("{k} {}", v.as_str().map_or_else(|| v.to_string(), str::to_string)))
            .collect::<Vec<_>>()
            .join(", "),
        None => v.to_string(),
    }
}

/// `results.md`.
pub fn markdown(suite: &Suite, session: &Session, aggs: &[Aggregate], complete: bool) -> String {
    let peer_specs = available_peers(suite, session);
    let mut md = String::new();
    md.push_str(&format!("# Benchmark: {}\n\n", suite.name));
    if !complete {
        let left = crate::bench::runs_left(session)
            .unwrap_or_else(|| format!("{} of {} runs so far", session.runs.len(), session.plan.len()));
        md.push_str(&format!("**Incomplete**: {left}.\n\n"));
    }
    md.push_str(&format!("Command: `{}`\n\n", session.request.command));
    let v = &session.versions;
    let mut facts = vec![
        format!("Date: {}", session.started),
        format!(
            "{} at commit {}",
            v.gfn.as_deref().unwrap_or("gfn (unknown version)"),
            session.git.line()
        ),
        v.rustc.clone().unwrap_or_else(|| "rustc (unknown)".into()),
    ];
    for (name, pv) in &v.peers {
        facts.push(format!("{name}: {}", peer_versions(pv)));
    }
    facts.push(format!("machine: {}", session.machine.line()));
    let t = session.request.options.threads;
    facts.push(format!("{t} thread{} per run", if t == 1 { "" } else { "s" }));
    md.push_str(&facts.join(" · "));
    md.push_str("\n\n");
    // A resume made the runs it lists that have a record and that no later resume lists again
    // (a resume that was stopped leaves its unfinished runs to the next).
    for (i, r) in session.resumed.iter().enumerate() {
        let made: Vec<&str> = r
            .runs
            .iter()
            .filter(|n| session.runs.iter().any(|x| x.ok && &x.name == *n))
            .filter(|n| !session.resumed[i + 1..].iter().any(|later| later.runs.contains(n)))
            .map(String::as_str)
            .collect();
        if made.is_empty() {
            continue;
        }
        md.push_str(&format!(
            "Completed by `{}` at {} (gfn at commit {}): {}.\n\n",
            r.command,
            r.at,
            r.git.line(),
            made.join(", ")
        ));
    }
    for p in session.peers.iter().filter(|p| !p.available) {
        md.push_str(&format!(
            "Peer {} unavailable ({}): the suite ran without it.\n\n",
            p.name,
            p.reason.as_deref().unwrap_or("?")
        ));
    }

    for group in distinct(aggs.iter().map(|a| a.group.as_str())) {
        md.push_str(&format!("## {group}\n\n"));
        let mut header = vec![suite.row_header.to_string(), "seeds".into()];
        header.extend(suite.metrics.iter().map(|m| m.header.to_string()));
        for ps in &peer_specs {
            header.push(format!("{} ms/iteration (median)", ps.name));
            header.push(format!("speed ratio (ours/{})", ps.name));
            header.extend(ps.metrics.iter().map(|m| format!("{} {}", ps.name, m.header)));
        }
        md.push_str(&row(&header));
        md.push('\n');
        let mut align = vec!["---".to_string()];
        align.extend(std::iter::repeat_n("---:".to_string(), header.len() - 1));
        md.push_str(&row(&align));
        md.push('\n');
        for a in aggs.iter().filter(|a| a.group == group) {
            let seeds = if a.ok == a.runs {
                a.ok.to_string()
            } else {
                format!("{}/{}", a.ok, a.runs)
            };
            let mut cells = vec![a.row.clone(), seeds];
            cells.extend(suite.metrics.iter().map(|m| cell(a.ours.get(m.key), m)));
            for ps in &peer_specs {
                let pa = a.peers.iter().find(|p| p.name == ps.name);
                cells.push(
                    pa.and_then(|p| p.ms_per_iteration)
                        .map_or_else(|| "—".into(), |s| fmt_num(s.median, 2)),
                );
                cells.push(
                    pa.and_then(|p| p.speed_ratio)
                        .map_or_else(|| "—".into(), |r| format!("{r:.2}×")),
                );
                cells.extend(
                    ps.metrics
                        .iter()
                        .map(|m| cell(pa.and_then(|p| p.figures.get(m.key)), m)),
                );
            }
            md.push_str(&row(&cells));
            md.push('\n');
        }
        md.push('\n');
    }

    md.push_str(
        "Speeds: medians over seeds of training time only (sampling, loss, backward, optimiser step; \
         evaluations excluded). ",
    );
    md.push_str(suite.quality_note.unwrap_or(
        "Quality: per run the mean of its last 5 exact evaluations \
         (L1 = Σ|P_T − p*|, TV = L1/2), then mean ± sample standard deviation over seeds.",
    ));
    md.push_str(" Peak RSS: the largest over seeds");
    md.push_str(&format!(" ({}).", session.rss_method));
    if !peer_specs.is_empty() {
        let names: Vec<&str> = peer_specs.iter().map(|p| p.name).collect();
        md.push_str(&format!(
            " Speed ratio: the peer's ms/iteration ÷ ours (> 1: ours is faster); each of our runs was \
             followed by the {} run of the same configuration and seed, one after the other (A B C A B C …).",
            names.join(" and ")
        ));
    }
    md.push('\n');

    let failures: Vec<String> = session
        .runs
        .iter()
        .flat_map(|r| {
            let mut f = Vec::new();
            if !r.ok {
                f.push(format!("- {} (gfn): {}", r.name, r.error.as_deref().unwrap_or("?")));
            }
            for p in r.peers.iter().filter(|p| !p.ok) {
                f.push(format!(
                    "- {} ({}): {}",
                    r.name,
                    p.name,
                    p.error.as_deref().unwrap_or("?")
                ));
            }
            f
        })
        .collect();
    if !failures.is_empty() {
        md.push_str("\n## Failed runs\n\n");
        md.push_str(&failures.join("\n"));
        md.push('\n');
    }
    md
}

/// The successful runs of one table row, as the JSON records the metrics read.
pub fn records(session: &Session, group: &str, row: &str) -> Vec<Value> {
    session
        .runs
        .iter()
        .filter(|r| r.ok && r.group == group && r.row == row)
        .filter_map(|r| serde_json::to_value(r).ok())
        .collect()
}

/// Statistics over seeds of `value` in one table row.
pub fn row_stats(session: &Session, group: &str, row: &str, value: crate::suite::Extract) -> Option<Stats> {
    let v: Vec<f64> = records(session, group, row).iter().filter_map(value).collect();
    Stats::of(&v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats() {
        let s = Stats::of(&[3.0, 1.0, 2.0, f64::NAN]).unwrap();
        assert_eq!((s.n, s.median, s.min, s.max), (3, 2.0, 1.0, 3.0));
        assert!((s.mean - 2.0).abs() < 1e-12 && (s.std - 1.0).abs() < 1e-12);
        assert_eq!(Stats::of(&[1.0, 4.0]).unwrap().median, 2.5);
        assert!(Stats::of(&[]).is_none());
        assert_eq!(s.cell(Agg::MeanStd, 1), "2.0 ± 1.0");
        assert_eq!(Stats::of(&[1.0, 0.0, 1.0]).unwrap().cell(Agg::Sum, 0), "2");
    }
}
