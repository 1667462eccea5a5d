//! Suites written as data: `xtask/suites/<suite>.toml` with a `[suite]` table names the task
//! grid, the methods, seeds and budgets, the table's columns and the plots; this module builds
//! the [`Suite`] from it. Adding a suite of this shape means writing a file, not a module.
//!
//! ```toml
//! [suite]
//! row_header = "loss"             # header of the table's first column
//! seeds = 3                       # seeds 0..N without --seeds (1 with --quick)
//! quick_divide = 10               # --quick divides the iterations by this
//! columns = ["iterations", "ms_per_iteration", "tv_worst"]   # [[suite.column]] keys, else built-in names
//! quality_note = "How the figures are measured."
//!
//! [[suite.column]]
//! key = "tv_worst"
//! header = "worst TV over β (largest over seeds)"
//! short = "TVmax"                 # label in the progress lines
//! summary = "/conditions/*/tv"    # pointer into summary.json; `*`: the largest over the array
//! minus = "/conditions/*/log_z/true"   # optional: subtract this figure (then `abs` if set)
//! agg = "max"                     # median, mean_std, mean, max or sum over seeds
//! digits = 4
//!
//! [[suite.group]]                 # one table
//! name = "hypergrid 4×8, β ∈ [0.5, 2], batch 16"
//! prefix = "4x8"                  # run names: <prefix>-<axis values>-seed<N>
//! args = ["train", "--env", "hypergrid"]
//! iterations = 20000
//! evaluations = 4                 # --eval-every iterations / evaluations (or eval_every = N)
//! vars = { grad_every = 1000 }    # `{grad_every}` in axis arguments; divided by --quick too
//! [[suite.group.axis]]            # the grid: every combination of the axes' values; a row per
//! values = [{ name = "tb", args = ["--loss", "tb"] }]   # combination, named by its values
//!
//! [[suite.plot]]                  # a figure of metrics.jsonl against trajectories, per row
//! pointer = "/task/modes_found"
//! file = "modes-found"
//! label = "modes found"
//! ```
//!
//! Every run gets `--iterations`, `--eval-every`, `--seed` and `--threads` after its group's and
//! axes' arguments.

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::Value;

use crate::bench::Session;
use crate::plot::Reference;
use crate::report::Aggregate;
use crate::suite::{Agg, Metric, Output, RunSpec, Suite, SuiteOptions, ours_ms_per_iteration};

/// The `[suite]` table of a suite file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grid {
    row_header: String,
    seeds: u32,
    quick_divide: u32,
    columns: Vec<String>,
    #[serde(default)]
    quality_note: Option<String>,
    #[serde(default, rename = "column")]
    column_defs: Vec<ColumnDef>,
    #[serde(rename = "group")]
    groups: Vec<Group>,
    #[serde(default, rename = "plot")]
    plots: Vec<PlotDef>,
    /// The sentence under the plots heading.
    #[serde(default = "default_plots_intro")]
    plots_intro: String,
    /// A suite's own plots and tables, written in Rust (see [`extra`]), instead of `plot`s.
    #[serde(default)]
    extra: Option<String>,
}

fn default_plots_intro() -> String {
    "Mean over seeds against the trajectories sampled in training.".into()
}

fn yes() -> bool {
    true
}

/// A table column read from `summary.json`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ColumnDef {
    key: String,
    header: String,
    short: String,
    summary: String,
    #[serde(default)]
    minus: Option<String>,
    #[serde(default)]
    abs: bool,
    agg: AggName,
    digits: usize,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum AggName {
    Median,
    MeanStd,
    Mean,
    Max,
    Sum,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Group {
    name: String,
    #[serde(default)]
    prefix: Option<String>,
    args: Vec<String>,
    iterations: u32,
    /// Evaluations per run: `--eval-every iterations / evaluations` …
    #[serde(default)]
    evaluations: Option<u32>,
    /// … or this interval, the same with `--quick`.
    #[serde(default)]
    eval_every: Option<u32>,
    /// Numbers that axis arguments name as `{name}`, divided like the iterations by `--quick`.
    #[serde(default)]
    vars: std::collections::BTreeMap<String, u32>,
    /// Seeds of this table whatever `--seeds` says (a single costly run).
    #[serde(default)]
    seeds: Option<u32>,
    /// Whether `--quick` makes this table's runs.
    #[serde(default = "yes")]
    quick: bool,
    #[serde(rename = "axis")]
    axes: Vec<Axis>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Axis {
    values: Vec<AxisValue>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AxisValue {
    name: String,
    args: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlotDef {
    pointer: String,
    file: String,
    label: String,
    /// Tables drawn; empty: every table.
    #[serde(default)]
    groups: Vec<String>,
    /// Reference lines: a column's mean over the table's runs, labelled.
    #[serde(default)]
    references: Vec<ReferenceDef>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReferenceDef {
    column: String,
    label: String,
}

/// The text of `xtask/suites/<suite>.toml`, or `None` for a suite without one.
pub fn file(suite: &str) -> Option<&'static str> {
    Some(match suite {
        "subtb" => include_str!("../suites/subtb.toml"),
        "led" => include_str!("../suites/led.toml"),
        "pg" => include_str!("../suites/pg.toml"),
        "mis" => include_str!("../suites/mis.toml"),
        "networks" => include_str!("../suites/networks.toml"),
        "conditional" => include_str!("../suites/conditional.toml"),
        _ => return None,
    })
}

/// The `[suite]` table of a suite file.
pub fn parse(text: &str) -> Result<Grid> {
    let mut table: toml::Table = toml::from_str(text)?;
    let suite = table.remove("suite").context("no [suite] table")?;
    let grid: Grid = suite.try_into()?;
    if grid.quick_divide == 0 {
        bail!("[suite] quick_divide is 0 (give a divisor of at least 1)");
    }
    for g in &grid.groups {
        if g.evaluations.is_some() == g.eval_every.is_some() || g.evaluations == Some(0) || g.eval_every == Some(0) {
            bail!("group '{}': give one of evaluations and eval_every, at least 1", g.name);
        }
        if g.axes.iter().any(|a| a.values.is_empty()) {
            bail!("group '{}': every axis needs a value", g.name);
        }
    }
    if let Some(e) = &grid.extra
        && extra(e).is_none()
    {
        bail!("[suite] extra '{e}' is not a suite's Rust extra (known: subtb)");
    }
    for c in &grid.columns {
        if builtin(c).is_none() && !grid.column_defs.iter().any(|d| &d.key == c) {
            bail!(
                "column '{c}' is neither built in (iterations, ms_per_iteration, exact_l1_last5, test_spearman, modes_found, peak_rss_mb) nor a [[suite.column]] key"
            );
        }
    }
    Ok(grid)
}

fn builtin(name: &str) -> Option<Metric> {
    Some(match name {
        "iterations" => crate::suite::col_iterations(),
        "ms_per_iteration" => crate::suite::col_ms_per_iteration(),
        "exact_l1_last5" => crate::suite::col_l1_last5(),
        "test_spearman" => crate::suite::col_test_spearman(),
        "modes_found" => crate::suite::col_modes_found(),
        "peak_rss_mb" => crate::suite::col_peak_rss(),
        "mean_l1" => Metric {
            header: "mean L1 over training (area under the curve)",
            key: "mean_l1",
            short: "meanL1",
            value: &crate::curves::mean_l1,
            agg: Agg::MeanStd,
            digits: 4,
        },
        "trajectories_to_l1_0.5" => Metric {
            header: "trajectories to L1 ≤ 0.5 (median)",
            key: "trajectories_to_l1_0.5",
            short: "traj→0.5",
            value: &|r| crate::curves::trajectories_to_l1(r, 0.5),
            agg: Agg::Median,
            digits: 0,
        },
        _ => return None,
    })
}

/// `pointer` into `v`; a `*` segment reads every element of that array and gives the list.
fn read_all(v: &Value, pointer: &str) -> Option<Vec<f64>> {
    match pointer.split_once("/*") {
        None => Some(vec![v.pointer(pointer)?.as_f64()?]),
        Some((head, tail)) => v
            .pointer(head)?
            .as_array()?
            .iter()
            .map(|e| e.pointer(tail)?.as_f64())
            .collect(),
    }
}

impl ColumnDef {
    /// The figure of a run record (`{"summary": ...}`): the largest over `*` elements.
    fn eval(&self, record: &Value) -> Option<f64> {
        let summary = record.get("summary")?;
        let mut v = read_all(summary, &self.summary)?;
        if let Some(minus) = &self.minus {
            let m = read_all(summary, minus)?;
            if m.len() != v.len() {
                return None;
            }
            v.iter_mut().zip(m).for_each(|(a, b)| *a -= b);
        }
        if self.abs {
            v.iter_mut().for_each(|a| *a = a.abs());
        }
        v.into_iter().reduce(f64::max)
    }

    fn metric(&'static self) -> Metric {
        Metric {
            header: &self.header,
            key: &self.key,
            short: &self.short,
            value: Box::leak(Box::new(move |r: &Value| self.eval(r))),
            agg: match self.agg {
                AggName::Median => Agg::Median,
                AggName::MeanStd => Agg::MeanStd,
                AggName::Mean => Agg::Mean,
                AggName::Max => Agg::Max,
                AggName::Sum => Agg::Sum,
            },
            digits: self.digits,
        }
    }
}

/// Builds suite `name` from its file (which [`parse`]'s checks and the tests guarantee).
pub fn build(name: &'static str, opts: &SuiteOptions) -> Suite {
    let text = file(name).unwrap_or_else(|| panic!("suite {name} has no file"));
    let grid: &'static Grid = Box::leak(Box::new(
        parse(text).unwrap_or_else(|e| panic!("xtask/suites/{name}.toml: {e:#}")),
    ));
    let seeds = opts.seeds.unwrap_or(if opts.quick { 1 } else { grid.seeds });
    let mut runs = Vec::new();
    for g in grid.groups.iter().filter(|g| g.quick || !opts.quick) {
        let seeds = g.seeds.unwrap_or(seeds);
        let iterations = if opts.quick {
            g.iterations / grid.quick_divide
        } else {
            g.iterations
        };
        // Every combination of the axes' values, the first axis varying slowest.
        let mut combos: Vec<Vec<&AxisValue>> = vec![Vec::new()];
        for axis in &g.axes {
            combos = combos
                .into_iter()
                .flat_map(|c| {
                    axis.values.iter().map(move |v| {
                        let mut c = c.clone();
                        c.push(v);
                        c
                    })
                })
                .collect();
        }
        for combo in combos {
            let names: Vec<&str> = combo.iter().map(|v| v.name.as_str()).collect();
            for seed in 0..u64::from(seeds) {
                let mut gfn_args = g.args.clone();
                let var = |a: &String| {
                    g.vars.iter().fold(a.clone(), |a, (k, v)| {
                        let v = if opts.quick { v / grid.quick_divide } else { *v };
                        a.replace(&format!("{{{k}}}"), &v.to_string())
                    })
                };
                gfn_args.extend(combo.iter().flat_map(|v| v.args.iter().map(var)));
                gfn_args.extend([
                    "--iterations".into(),
                    iterations.to_string(),
                    "--eval-every".into(),
                    g.eval_every
                        .unwrap_or_else(|| (iterations / g.evaluations.unwrap_or(1)).max(1))
                        .to_string(),
                    "--seed".into(),
                    seed.to_string(),
                    "--threads".into(),
                    opts.threads.to_string(),
                ]);
                let stem = match &g.prefix {
                    Some(p) => format!("{p}-{}", names.join("-")),
                    None => names.join("-"),
                };
                runs.push(RunSpec {
                    name: format!("{stem}-seed{seed}"),
                    group: g.name.clone(),
                    row: names.join(" "),
                    seed,
                    gfn_args,
                    peer_args: Vec::new(),
                    output: Output::RunDir,
                });
            }
        }
    }
    let metrics = grid
        .columns
        .iter()
        .map(|c| match grid.column_defs.iter().find(|d| &d.key == c) {
            Some(d) => d.metric(),
            None => builtin(c).expect("parse checked every column"),
        })
        .collect();
    Suite {
        name,
        row_header: &grid.row_header,
        runs,
        metrics,
        ms_per_iteration: &ours_ms_per_iteration,
        peers: Vec::new(),
        extra: match &grid.extra {
            Some(e) => extra(e),
            None => (!grid.plots.is_empty()).then_some(plots as crate::suite::Extra),
        },
        quality_note: grid.quality_note.as_deref(),
    }
}

/// A suite's own plots and tables, by the name its file gives in `extra`.
fn extra(name: &str) -> Option<crate::suite::Extra> {
    match name {
        "subtb" => Some(crate::subtb::extra),
        _ => None,
    }
}

/// The values of axis `axis` of the first table of suite `suite`: (name, arguments) each (the
/// throughput suite times the networks of the networks suite).
pub fn axis_values(suite: &str, axis: usize) -> Vec<(String, Vec<String>)> {
    let grid = file(suite).map(parse).and_then(Result::ok);
    grid.and_then(|g| g.groups.into_iter().next())
        .and_then(|g| g.axes.into_iter().nth(axis))
        .map(|a| a.values.into_iter().map(|v| (v.name, v.args)).collect())
        .unwrap_or_default()
}

/// The `[[suite.plot]]` figures: each against trajectories, mean over seeds per row, per table.
fn plots(session: &Session, aggs: &[Aggregate], dir: &Path) -> Result<String> {
    let text = file(&session.request.suite).context("suite without a file")?;
    let grid = parse(text)?;
    let mut md = format!("\n## Plots\n\n{}\n\n", grid.plots_intro);
    for g in &grid.groups {
        for p in grid
            .plots
            .iter()
            .filter(|p| p.groups.is_empty() || p.groups.contains(&g.name))
        {
            let references: Vec<Reference> = p
                .references
                .iter()
                .filter_map(|r| {
                    let a = aggs.iter().find(|a| a.group == g.name)?;
                    Some(Reference {
                        label: r.label.clone(),
                        y: a.ours.get(r.column.as_str())?.mean,
                    })
                })
                .collect();
            let series = crate::pg::jsonl_series(session, dir, &g.name, &p.pointer);
            md.push_str(&crate::pg::figure_plot(
                dir,
                &g.name,
                (&p.file, &p.label, false),
                &series,
                &references,
            )?);
        }
    }
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The suites written as data plan the runs whose records are committed: the same names,
    /// tables, rows and the same flags with the same values.
    #[test]
    fn data_suites_plan_the_committed_runs() {
        let root = crate::runner::Layout::detect().root;
        for name in ["networks", "conditional", "mis", "subtb"] {
            let text = std::fs::read_to_string(root.join("docs/results").join(name).join("results.json")).unwrap();
            let session: Session = serde_json::from_str(&text).unwrap();
            let def = crate::suite::find(name).unwrap();
            let suite = (def.build)(&session.request.options);
            assert_eq!(suite.runs.len(), session.plan.len(), "{name}");
            let flags = |args: &[String]| {
                let mut pairs: Vec<(String, String)> = args[1..]
                    .chunks(2)
                    .map(|c| (c[0].clone(), c.get(1).cloned().unwrap_or_default()))
                    .collect();
                pairs.sort();
                (args[0].clone(), pairs)
            };
            for (new, old) in suite.runs.iter().zip(&session.plan) {
                assert_eq!(
                    (&new.name, &new.group, &new.row),
                    (&old.name, &old.group, &old.row),
                    "{name}"
                );
                assert_eq!(flags(&new.gfn_args), flags(&old.gfn_args), "{name}: {}", new.name);
            }
        }
        // Every flag once in every run of every data suite: gfn refuses a repeated one.
        for def in crate::suite::SUITES
            .iter()
            .filter(|d| file(d.name).is_some_and(|f| parse(f).is_ok()))
        {
            for quick in [false, true] {
                for r in (def.build)(&crate::suite::test_util::opts(quick, None)).runs {
                    let flags: Vec<&String> = r.gfn_args.iter().filter(|a| a.starts_with("--")).collect();
                    let unique: std::collections::BTreeSet<_> = flags.iter().collect();
                    assert_eq!(unique.len(), flags.len(), "{}: {flags:?}", r.name);
                }
            }
        }
        // --quick: seed 0, a tenth of the iterations, and no table marked `quick = false`.
        let quick = crate::data_suite::build("mis", &crate::suite::test_util::opts(true, None));
        assert_eq!(quick.runs.len(), 4);
        assert!(
            quick
                .runs
                .iter()
                .all(|r| r.gfn_args.windows(2).any(|w| w[0] == "--iterations" && w[1] == "75"))
        );
        assert_eq!(
            axis_values("networks", 0)
                .iter()
                .map(|v| v.0.as_str())
                .collect::<Vec<_>>(),
            ["mlp", "transformer"]
        );
    }

    #[test]
    fn bad_files_are_named() {
        let e = parse("[suite]\nrow_header = 'x'\nseeds = 1\nquick_divide = 1\ncolumns = ['nope']\n[[suite.group]]\nname = 'g'\nargs = []\niterations = 1\nevaluations = 1\n[[suite.group.axis]]\nvalues = [{ name = 'a', args = [] }]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("column 'nope'"), "{e}");
        assert!(
            parse("intro = 'x'\n")
                .unwrap_err()
                .to_string()
                .contains("no [suite] table")
        );
    }

    #[test]
    fn columns_read_the_largest_over_an_array_and_differences() {
        let grid = parse(file("conditional").unwrap()).unwrap();
        let grid: &'static Grid = Box::leak(Box::new(grid));
        let col = |k: &str| grid.column_defs.iter().find(|d| d.key == k).unwrap();
        let record = serde_json::json!({"summary": {"conditions": [
            {"tv": 0.01, "log_z": {"learned": 1.0, "true": 1.2}},
            {"tv": 0.04, "log_z": {"learned": 2.0, "true": 1.9}},
        ]}});
        assert_eq!(col("tv_worst").eval(&record), Some(0.04));
        assert!((col("log_z_error_worst").eval(&record).unwrap() - 0.2).abs() < 1e-12);
        assert_eq!(col("tv_beta_1").eval(&record), Some(0.04));
        assert_eq!(col("tv_worst").eval(&serde_json::json!({"summary": {}})), None);
    }
}
