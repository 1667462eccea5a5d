//! A suite's claims as data: `xtask/suites/<suite>.toml` names the paper's claims, the figure
//! each is judged on and which way it improves, and the pairs of methods compared; this module
//! judges them all with [`crate::judge`] and writes the claims section of `results.md`.
//!
//! ```toml
//! intro = "What the figures are and how they were measured."
//!
//! [[figure]]
//! id = "mean_l1"                 # a column of the suite's tables (its key) …
//! name = "mean L1 over training"
//! better = "lower"
//! digits = 4
//!
//! [[figure]]
//! id = "cos_tb"
//! name = "cos(TB small, TB large)"
//! run_mean = "/grad_cosine/tb"   # … or the mean of this field over a run's metrics.jsonl
//! better = "higher"              # (or `summary = "/pointer"` into its summary.json)
//!
//! [[claim]]
//! text = "SubTB converges faster than TB"
//! figures = ["mean_l1"]          # each judged in turn
//! pairs = [["subtb", "tb"]]      # [claimed, against], each "row" or "row/figure"
//! groups = []                    # the tables it is judged in; empty = every table
//!
//! [[headline]]                    # the paper's own figures, and our target for each
//! text = "NLL within 0.3 nats of the paper's"
//! figure = "nll"                  # a declared figure: its `better` sets the target's side
//! beside = "nll_gfn"              # optional: a figure shown beside ours
//! group = "2D synthetic"          # the table
//! within = 0.3                    # target: the paper's worsened by this (or factor = 2: 2 × it)
//! rows = [{ row = "2spirals EB-GFN", name = "2spirals", paper = 20.05 },
//!         { row = "moons EB-GFN", name = "moons", paper = 19.59, unverified = true }]
//! # a row's own `target = 5.5` overrides; an unverified figure, or one without a target, is
//! # reported beside ours, not judged
//! ```

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::Value;

use crate::bench::Session;
use crate::judge::{self, Better, Verdict};
use crate::report::{Stats, fmt_num, seeds_cell};
use crate::suite::Suite;

/// The claims of one suite, as read from its TOML file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    /// Paragraph before the claims table: the paper's statement and how the figures are measured.
    pub intro: String,
    /// Figures the claims are judged on.
    #[serde(default, rename = "figure")]
    pub figures: Vec<Figure>,
    /// The claims, in the order they are reported.
    #[serde(default, rename = "claim")]
    pub claims: Vec<Claim>,
    /// The paper's headline figures and our targets.
    #[serde(default, rename = "headline")]
    pub headlines: Vec<Headline>,
}

/// A paper's figures for some rows of one table, each with our target: the row's mean over seeds
/// at most it (a figure where lower is better) or at least it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Headline {
    /// The check, in words.
    pub text: String,
    /// The figure (declared; its `better` says which side of the target is met).
    pub figure: String,
    /// A figure shown beside ours.
    #[serde(default)]
    pub beside: Option<String>,
    /// The table.
    pub group: String,
    /// Targets: the paper's figure worsened by this much …
    #[serde(default)]
    pub within: Option<f64>,
    /// … or this many times the paper's.
    #[serde(default)]
    pub factor: Option<f64>,
    /// The rows, in the order shown.
    pub rows: Vec<HeadlineRow>,
}

/// One row's figure in the paper.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadlineRow {
    /// The table row.
    pub row: String,
    /// Its short name in the summary line.
    pub name: String,
    /// The paper's figure.
    pub paper: f64,
    /// Recalled but not verified: reported beside ours, never judged.
    #[serde(default)]
    pub unverified: bool,
    /// Our target, instead of one from `within` or `factor`.
    #[serde(default)]
    pub target: Option<f64>,
}

impl Headline {
    /// A row's target (`None`: reported only) and its cell: `≤ 20.350 (paper 20.050 + 0.3)`.
    pub fn target(&self, row: &HeadlineRow, better: Better) -> (Option<f64>, String) {
        let (op, worse) = match better {
            Better::Lower => ("≤", 1.0),
            Better::Higher => ("≥", -1.0),
        };
        let p = row.paper;
        match (row.unverified, row.target, self.within, self.factor) {
            (true, ..) => (None, format!("— (paper ≈ {p}, unverified)")),
            (false, Some(t), ..) => (Some(t), format!("{op} {t} (paper {p})")),
            (false, None, Some(w), _) => {
                let t = p + worse * w;
                let sign = if worse > 0.0 { '+' } else { '−' };
                (Some(t), format!("{op} {t:.3} (paper {p:.3} {sign} {w})"))
            }
            (false, None, None, Some(f)) => (Some(f * p), format!("{op} {:.3} ({f} × paper {p})", f * p)),
            (false, None, None, None) => (None, format!("— (paper {p})")),
        }
    }
}

/// A figure of a run.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Figure {
    /// How claims name it; also the key of the suite's table column it reads, unless `summary`
    /// or `run_mean` says otherwise.
    pub id: String,
    /// Its name in the claims table.
    pub name: String,
    /// Which way it improves.
    pub better: Better,
    /// Decimals shown.
    #[serde(default = "default_digits")]
    pub digits: usize,
    /// A JSON pointer into the run's `summary.json`.
    #[serde(default)]
    pub summary: Option<String>,
    /// A JSON pointer into every record of the run's `metrics.jsonl`; the figure is their mean.
    #[serde(default)]
    pub run_mean: Option<String>,
    /// Compare absolute values (an error that may have either sign).
    #[serde(default)]
    pub abs: bool,
    /// A time-to-target figure: the key of the 0/1 column saying whether the run got there. A run
    /// that did not counts its whole length (`trajectories` of its summary: a lower bound), and
    /// the table says how many seeds got there.
    #[serde(default)]
    pub reached: Option<String>,
}

fn default_digits() -> usize {
    4
}

/// One claim of the paper.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claim {
    /// The claim, in the paper's words.
    pub text: String,
    /// The figures compared, each in turn (a `pairs` side may name another).
    pub figures: Vec<String>,
    /// The comparisons: `[claimed, against]`, each a table row, or `row/figure`.
    pub pairs: Vec<[String; 2]>,
    /// Tables it is judged in (their group names); empty: every table of the suite.
    #[serde(default)]
    pub groups: Vec<String>,
    /// `false`: shown for information, outside the paper's claim.
    #[serde(default = "crate::data_suite::yes")]
    pub paper: bool,
}

/// The claims of `suite`, or `None` when its file (if any) states none.
pub fn of_suite(suite: &str) -> Option<Result<Claims>> {
    let text = crate::data_suite::file(suite)?;
    let has_claims =
        toml::from_str::<toml::Table>(text).map_or(true, |t| t.contains_key("claim") || t.contains_key("headline"));
    has_claims.then(|| parse(text).with_context(|| format!("xtask/suites/{suite}.toml")))
}

/// Parses and checks the claims of a suite file (its `[suite]` grid, if any, aside): every
/// figure a claim names exists, every pair is well formed.
pub fn parse(text: &str) -> Result<Claims> {
    let mut table: toml::Table = toml::from_str(text)?;
    table.remove("suite");
    table.remove("paper"); // a suite's own settings (ebm's digits target: src/ebm.rs)
    let claims: Claims = table.try_into()?;
    for f in &claims.figures {
        if f.summary.is_some() && f.run_mean.is_some() {
            bail!("figure {}: give at most one of summary and run_mean", f.id);
        }
    }
    for c in &claims.claims {
        if c.figures.is_empty() {
            bail!(
                "claim '{}': figures is empty (name at least one declared figure)",
                c.text
            );
        }
        if c.pairs.is_empty() {
            bail!(
                "claim '{}': pairs is empty (give at least one [claimed, against])",
                c.text
            );
        }
        for (side, default) in c
            .pairs
            .iter()
            .flatten()
            .flat_map(|s| c.figures.iter().map(move |f| (s, f)))
        {
            let (_, figure) = split_side(side, default);
            if !claims.figures.iter().any(|f| f.id == figure) {
                bail!(
                    "claim '{}': figure '{figure}' is not declared (declared: {})",
                    c.text,
                    claims
                        .figures
                        .iter()
                        .map(|f| f.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
    }
    for h in &claims.headlines {
        if h.within.is_some() && h.factor.is_some() {
            bail!("headline '{}': give at most one of within and factor", h.text);
        }
        for id in std::iter::once(&h.figure).chain(&h.beside) {
            if !claims.figures.iter().any(|f| &f.id == id) {
                bail!("headline '{}': figure '{id}' is not declared", h.text);
            }
        }
    }
    Ok(claims)
}

/// `row/figure` → (row, figure); a bare `row` takes the claim's figure.
fn split_side<'a>(side: &'a str, default_figure: &'a str) -> (&'a str, &'a str) {
    side.split_once('/').unwrap_or((side, default_figure))
}

/// Per-seed values of `figure` in one table row, and how many seeds reached the target of a
/// time-to-target figure.
fn values(suite: &Suite, session: &Session, dir: &Path, group: &str, row: &str, figure: &Figure) -> (Vec<f64>, usize) {
    let column = |key: &str| suite.metrics.iter().find(|m| m.key == key).map(|m| m.value);
    let mut reached = 0;
    let v = session
        .runs
        .iter()
        .filter(|r| r.ok && r.group == group && r.row == row)
        .filter_map(|r| {
            let record = serde_json::to_value(r).ok()?;
            if let Some(key) = &figure.reached {
                if column(key)?(&record)? == 0.0 {
                    return record.pointer("/summary/trajectories")?.as_f64();
                }
                reached += 1;
            }
            if let Some(pointer) = &figure.summary {
                return r.summary.as_ref()?.pointer(pointer)?.as_f64();
            }
            if let Some(pointer) = &figure.run_mean {
                let text = std::fs::read_to_string(dir.join("runs").join(&r.name).join("metrics.jsonl")).ok()?;
                let v: Vec<f64> = text
                    .lines()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                    .filter_map(|v| v.pointer(pointer)?.as_f64())
                    .collect();
                return (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
            }
            column(&figure.id)?(&record)
        })
        .map(|x| if figure.abs { x.abs() } else { x })
        .collect();
    (v, reached)
}

/// The claims section of `results.md`: one table row per comparison, one line per claim.
pub fn section(claims: &Claims, suite: &Suite, session: &Session, dir: &Path) -> String {
    if claims.claims.is_empty() {
        let intro = format!("\n## The paper's claims\n\n{}\n", claims.intro.trim());
        return intro + &headlines(claims, suite, session, dir);
    }
    let groups = crate::report::distinct(
        session
            .plan
            .iter()
            .map(|r| r.group.as_str())
            .chain(session.runs.iter().map(|r| r.group.as_str())),
    );
    let mut md = format!(
        "\n## The paper's claims\n\n{}\n\n{}\n\n",
        claims.intro.trim(),
        judge::RULE
    );
    md.push_str("| setting | figure | claimed | against | ratio | verdict |\n|---|---|---|---|---:|---|\n");
    let mut lines = String::new();
    for claim in &claims.claims {
        let mut verdicts = Vec::new();
        for group in groups
            .iter()
            .filter(|g| claim.groups.is_empty() || claim.groups.iter().any(|c| c == *g))
        {
            for main in &claim.figures {
                for [a, b] in &claim.pairs {
                    let side = |s: &str| {
                        let (row, id) = split_side(s, main);
                        let fig = claims.figures.iter().find(|f| f.id == id)?;
                        let (v, reached) = values(suite, session, dir, group, row, fig);
                        let stats = Stats::of(&v)?;
                        Some((
                            Side {
                                row: row.to_string(),
                                reached,
                            },
                            fig,
                            stats,
                        ))
                    };
                    let (Some((sa, fa, a)), Some((sb, fb, b))) = (side(a), side(b)) else {
                        continue;
                    };
                    let j = judge::judge(&a, &b, fa.better);
                    verdicts.push(j.verdict);
                    let name = claims
                        .figures
                        .iter()
                        .find(|f| &f.id == main)
                        .map_or(main.as_str(), |f| &f.name);
                    md.push_str(&format!(
                        "| {} | {name} ({} is better) | {} | {} | {} | **{}** ({}) |\n",
                        group.replace('|', "\\|"),
                        fa.better.word(),
                        sa.cell(fa, &a, main),
                        sb.cell(fb, &b, main),
                        if b.mean != 0.0 {
                            format!("{:.2}", a.mean / b.mean)
                        } else {
                            "—".into()
                        },
                        j.verdict.word(),
                        j.detail()
                    ));
                }
            }
        }
        lines.push_str(&claim_line(claim, &verdicts));
    }
    md.push('\n');
    md.push_str(&lines);
    md.push_str(&headlines(claims, suite, session, dir));
    md
}

/// The paper's headline figures: a table row per row named, a line per headline.
fn headlines(claims: &Claims, suite: &Suite, session: &Session, dir: &Path) -> String {
    if claims.headlines.is_empty() {
        return String::new();
    }
    let mut md = String::from(
        "\n### The paper's figures\n\nEach row's mean over seeds (± sample standard deviation) against a target set from \
         the paper's figure.\n\n| check | measured | target | verdict | short by |\n|---|---|---|---|---|\n",
    );
    let mut lines = String::new();
    let figure = |id: &str| {
        claims
            .figures
            .iter()
            .find(|f| f.id == id)
            .expect("parse checked the figures")
    };
    for h in &claims.headlines {
        let f = figure(&h.figure);
        let stats = |row: &str, f: &Figure| Stats::of(&values(suite, session, dir, &h.group, row, f).0);
        let (mut met, mut judged, mut missed) = (0, 0, Vec::new());
        for r in &h.rows {
            let (target, target_cell) = h.target(r, f.better);
            let Some(s) = stats(&r.row, f) else {
                md.push_str(&format!("| {} {} | — | {target_cell} | no data |  |\n", r.row, f.name));
                continue;
            };
            // `mean ± std (n seeds)`; one seed has no spread to show.
            let cell = |s: &Stats, d: usize| match s.n {
                1 => format!("{} (1 seed)", fmt_num(s.mean, d)),
                _ => seeds_cell(s, Some(d)),
            };
            let mut measured = cell(&s, f.digits);
            if let Some(b) = h.beside.as_deref().map(figure)
                && let Some(bs) = stats(&r.row, b)
            {
                measured.push_str(&format!("; {} {}", b.name, cell(&bs, b.digits)));
            }
            let shortfall = target.map(|t| match f.better {
                Better::Lower => s.mean - t,
                Better::Higher => t - s.mean,
            });
            let (verdict, short) = match shortfall {
                None => ("reported", String::new()),
                Some(by) if by <= 0.0 => ("**met**", String::new()),
                Some(by) => ("**missed**", fmt_num(by, f.digits)),
            };
            if let Some(by) = shortfall {
                judged += 1;
                if by <= 0.0 {
                    met += 1;
                } else {
                    missed.push(format!("{} by {short}", r.name));
                }
            }
            md.push_str(&format!(
                "| {} {} | {measured} | {target_cell} | {verdict} | {short} |\n",
                r.row, f.name
            ));
        }
        let verdict = match (judged, missed.is_empty()) {
            (0, _) => "**no data**".to_string(),
            (_, true) => format!("**met** ({met} of {met})"),
            _ if met == 0 => format!("**missed** (short of the target: {})", missed.join("; ")),
            _ => format!("**met {met} of {judged}** (short of the target: {})", missed.join("; ")),
        };
        lines.push_str(&format!("- *{}*: {verdict}.\n", h.text));
    }
    md.push('\n');
    md.push_str(&lines);
    md
}

/// One side of a comparison, for its table cell.
struct Side {
    row: String,
    reached: usize,
}

impl Side {
    /// `led-db 0.9512 ± 0.0040 (n 3)`, naming the figure when it is not the compared one, and for
    /// a time-to-target figure how many seeds got there.
    fn cell(&self, f: &Figure, s: &Stats, main: &str) -> String {
        let label = if f.id == main {
            self.row.clone()
        } else {
            format!("{}: {}", self.row, f.name)
        };
        let reached = match &f.reached {
            None => String::new(),
            Some(_) if self.reached == 0 => format!(", not reached (≥ {})", fmt_num(s.min, f.digits)),
            Some(_) => format!(", reached in {} of {}", self.reached, s.n),
        };
        format!(
            "{label} {} ± {} (n {}){reached}",
            fmt_num(s.mean, f.digits),
            fmt_num(s.std, f.digits),
            s.n
        )
    }
}

fn claim_line(claim: &Claim, verdicts: &[Verdict]) -> String {
    let info = if claim.paper {
        ""
    } else {
        "For information, not the paper's claim: "
    };
    if verdicts.is_empty() {
        return format!("- {info}*{}*: no finished runs on both sides.\n", claim.text);
    }
    format!(
        "- {info}*{}*: **{}** ({}).\n",
        claim.text,
        judge::overall(verdicts),
        judge::tally(verdicts)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every claims file parses, names tables the full suite has, and reads columns it defines.
    #[test]
    fn every_claims_file_matches_its_suite() {
        let mut files = 0;
        for &name in crate::suite::SUITES {
            let Some(c) = of_suite(name) else { continue };
            files += 1;
            let c = c.unwrap();
            assert!(!c.claims.is_empty() || !c.headlines.is_empty(), "{name}: no claims");
            let suite = crate::suite::build(name, &crate::suite::test_util::opts(false, None)).unwrap();
            for claim in &c.claims {
                for g in &claim.groups {
                    assert!(suite.runs.iter().any(|r| &r.group == g), "{}: no table '{g}'", name);
                }
            }
            for h in &c.headlines {
                for r in &h.rows {
                    assert!(
                        suite.runs.iter().any(|run| run.group == h.group && run.row == r.row),
                        "{name}: no row '{}' in table '{}'",
                        r.row,
                        h.group
                    );
                }
            }
            let has_column = |k: &str| suite.metrics.iter().any(|m| m.key == k);
            for f in &c.figures {
                if f.summary.is_none() && f.run_mean.is_none() {
                    assert!(has_column(&f.id), "{}: figure {} is no column", name, f.id);
                }
                if let Some(k) = &f.reached {
                    assert!(has_column(k), "{}: reached column {k} missing", name);
                }
            }
        }
        assert_eq!(files, 5, "subtb, led, pg, mis and ebm have claims files");
    }

    #[test]
    fn bad_claims_are_named() {
        let e = parse("intro = 'x'\n[[claim]]\ntext = 'A beats B'\nfigures = ['nope']\npairs = [['a', 'b']]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("A beats B") && e.contains("'nope' is not declared"), "{e}");
        let e = parse("intro = 'x'\nextra = 1\n").unwrap_err().to_string();
        assert!(e.contains("extra"), "{e}");
        let e = parse(
            "intro = 'x'\n[[figure]]\nid = 'f'\nname = 'f'\nbetter = 'lower'\n[[claim]]\ntext = 'T'\nfigures = ['f']\npairs = []\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("pairs is empty"), "{e}");
    }
}
