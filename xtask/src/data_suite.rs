//! Suites written as data: `xtask/suites/<suite>.toml` with a `[suite]` table names the task
//! grid, the methods, seeds and budgets, the table's columns, the plots and the targets; this
//! module builds the [`Suite`] from it. Adding a suite of this shape means writing a file, not a
//! module.
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
//! or = ["/tv"]                    # optional: pointers tried in turn where summary's is missing
//! minus = "/conditions/*/log_z/true"   # optional: subtract this figure (then `abs` if set)
//! agg = "max"                     # median, mean_std, mean, max or sum over seeds
//! digits = 4
//!
//! [[suite.column]]                # a time to target instead of `summary`: the trajectories at
//! key = "trajectories_to_tv_0.1"  # the first evaluation whose curve field is at most `value`
//! first_at_most = { curve = "tv", value = 0.1 }   # (`reached = true`: 1 if it got there, else 0)
//! header = "trajectories to TV ≤ 0.1"
//! short = "traj→0.1"
//! agg = "median"
//! digits = 0
//!
//! [suite.axes]                    # axes that tables share by name
//! losses = [{ name = "tb", args = ["--loss", "tb", "--lr-logz", "{lr_logz}"] }]
//!
//! [[suite.group]]                 # one table
//! name = "hypergrid 4×8, β ∈ [0.5, 2], batch 16"
//! prefix = "4x8"                  # run names: <prefix>-<axis values>-seed<N>
//! args = ["train", "--env", "hypergrid"]
//! iterations = 20000
//! evaluations = 4                 # --eval-every iterations / evaluations (or eval_every = N)
//! quick_divide = 1                # optional: this table's own --quick divisor
//! stdout = false                  # true: runs print a JSON line (`gfn speed`), no run directory
//! once = false                    # true: one run, seed 0, with no iterations (and none of the
//!                                 # flags below), named without its seed (`gfn speed gemm`)
//! vars = { grad_every = 1000, lr_logz = "0.1", extra = ["--r0", "0.1"] }
//! # `{name}` in axis arguments: an integer (divided by --quick too), a string, or a list of
//! # arguments spliced in place of an argument that is exactly `{name}`
//! [[suite.group.axis]]            # the grid: every combination of the axes' values; a row per
//! values = [{ name = "tb", args = ["--loss", "tb"] }]   # combination, named by its values
//! # (a value's `row = "label"`: its part of the row label, if not its name; `iterations =
//! # { full = N, quick = M }`: its own budget; `quick = false`: left out with --quick)
//! [[suite.group.axis]]
//! use = "losses"                  # a shared axis (`only = ["tb"]`: some of its values)
//!
//! [[suite.plot]]                  # a figure of metrics.jsonl against trajectories, per row
//! pointer = "/task/modes_found"
//! file = "modes-found"
//! label = "modes found"
//! log = false                     # a log y axis when the curves span decades
//! references = [{ value = 0.1, label = "TV 0.1" }]   # or { column, label }: a column's mean;
//! # or { summary = "/pointer", label }: the mean of a summary figure, its value after the label
//!
//! [[suite.target]]                # a bar every seed of each row must meet ("Further claims")
//! text = "Every PG variant reaches exact TV ≤ 0.1 within 1,500 iterations"
//! group = "hypergrid 2×8"
//! rows = ["pg-u", "pg-b"]
//! first_at_most = { curve = "tv", value = 0.1 }
//! within = 1500                   # iterations
//! show = { summary = "/exact_last5_mean/tv", label = "TV over the last 5 evaluations", digits = 4 }
//! ```
//!
//! Every run (but a `once` table's) gets `--iterations`, `--eval-every`, `--seed` and
//! `--threads` after its group's and axes' arguments. With `peers`, the runs whose table or axis
//! values give `peer_args` are also made by each peer driver.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::Value;

use crate::bench::Session;
use crate::plot::Reference;
use crate::report::{Aggregate, Stats, fmt_num, records, seeds_cell};
use crate::suite::{Agg, MS_PER_ITERATION, Metric, Output, PEAK_RSS, PEER_PEAK_RSS, RunSpec, Suite, SuiteOptions, num};

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
    /// A suite's own plots and tables, written in Rust (see [`extra`]), after the `plot`s.
    #[serde(default)]
    extra: Option<String>,
    /// Axes that tables share by name.
    #[serde(default)]
    axes: BTreeMap<String, Vec<AxisValue>>,
    /// Bars every seed of some rows must meet, reported under "Further claims".
    #[serde(default, rename = "target")]
    targets: Vec<TargetDef>,
    /// The peer libraries that make the same runs side by side with `--vs` (see [`peers`]).
    #[serde(default)]
    peers: Option<String>,
}

fn default_plots_intro() -> String {
    "Mean over seeds against the trajectories sampled in training.".into()
}

/// `true`, a serde default.
pub fn yes() -> bool {
    true
}

/// A table column read from `summary.json`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ColumnDef {
    key: String,
    header: String,
    short: String,
    #[serde(default)]
    summary: Option<String>,
    /// Pointers tried in turn where `summary`'s figure is missing (runs of another kind).
    #[serde(default)]
    or: Vec<String>,
    #[serde(default)]
    minus: Option<String>,
    /// Instead of `summary`: the trajectories at the run's first evaluation that meets this.
    #[serde(default)]
    first_at_most: Option<CurveTarget>,
    /// With `first_at_most`: 1 if the run got there, 0 if not.
    #[serde(default)]
    reached: bool,
    /// With `first_at_most`: the training seconds to get there, not the trajectories.
    #[serde(default)]
    seconds: bool,
    #[serde(default)]
    abs: bool,
    agg: Agg,
    digits: usize,
}

/// An evaluation whose figure `curve` (a field of the run's curve points: `tv`, `l1_sum`) is at
/// most `value`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CurveTarget {
    curve: String,
    value: f64,
}

impl CurveTarget {
    fn met(&self, point: &Value) -> bool {
        point[self.curve.as_str()].as_f64().is_some_and(|v| v <= self.value)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Group {
    name: String,
    #[serde(default)]
    prefix: Option<String>,
    args: Vec<String>,
    #[serde(default)]
    iterations: u32,
    /// The runs print their figures as a JSON line (`gfn speed`), not into a run directory.
    #[serde(default)]
    stdout: bool,
    /// A single run (seed 0, named without it) with only the table's and axes' arguments: no
    /// `--iterations`, `--eval-every`, `--seed` or `--threads` (`gfn speed gemm`).
    #[serde(default)]
    once: bool,
    /// Evaluations per run: `--eval-every iterations / evaluations` …
    #[serde(default)]
    evaluations: Option<u32>,
    /// … or this interval: the same with `--quick`, or `{ full = N, quick = M }`.
    #[serde(default)]
    eval_every: Option<EvalEvery>,
    /// This table's `--quick` divisor, instead of the suite's.
    #[serde(default)]
    quick_divide: Option<u32>,
    /// Values that axis arguments name as `{name}`.
    #[serde(default)]
    vars: BTreeMap<String, Var>,
    /// Seeds of this table whatever `--seeds` says (a single costly run).
    #[serde(default)]
    seeds: Option<u32>,
    /// Whether `--quick` makes this table's runs.
    #[serde(default = "yes")]
    quick: bool,
    #[serde(rename = "axis")]
    axes: Vec<Axis>,
    /// The peers' arguments of every run of this table (before the axes' `peer_args`; the peers
    /// get `--iterations`, `--eval-every`, `--seed` and `--threads` too).
    #[serde(default)]
    peer_args: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Axis {
    #[serde(default)]
    values: Vec<AxisValue>,
    /// A shared axis of `[suite.axes]` instead of `values` …
    #[serde(default, rename = "use")]
    shared: Option<String>,
    /// … or some of its values (in its order).
    #[serde(default)]
    only: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AxisValue {
    name: String,
    args: Vec<String>,
    /// Its part of the row label, if not `name`.
    #[serde(default)]
    row: Option<String>,
    /// Its arguments to the peers (suites with `peers`).
    #[serde(default)]
    peer_args: Vec<String>,
    /// Its own iterations, `{ full = N, quick = M }`, instead of the table's (`{iterations}`
    /// follows them, and the evaluation interval where the table gives `evaluations`).
    #[serde(default)]
    iterations: Option<FullQuick>,
    /// Whether `--quick` makes its runs.
    #[serde(default = "yes")]
    quick: bool,
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
    /// Reference lines.
    #[serde(default)]
    references: Vec<ReferenceDef>,
    /// A log y axis when the curves span decades (distances; not correlations or counts).
    #[serde(default)]
    log: bool,
}

/// A reference line: one of `column` (that column's mean over the table's runs), `summary` (the
/// mean of that summary figure over the table's runs, its value after the label) and `value`.
#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    deny_unknown_fields,
    expecting = "a reference line: a label and one of column, summary and value"
)]
enum ReferenceDef {
    Column { label: String, column: String },
    Summary { label: String, summary: String },
    Value { label: String, value: f64 },
}

/// A bar: every seed of each row of `group` reaches `first_at_most` within `within` iterations.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetDef {
    text: String,
    group: String,
    rows: Vec<String>,
    first_at_most: CurveTarget,
    within: f64,
    /// A figure shown with each row's verdict (mean ± sd over seeds).
    #[serde(default)]
    show: Option<ShowDef>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShowDef {
    summary: String,
    label: String,
    digits: usize,
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
        "ebm" => include_str!("../suites/ebm.toml"),
        "hypergrid" => include_str!("../suites/hypergrid.toml"),
        "throughput" => include_str!("../suites/throughput.toml"),
        _ => return None,
    })
}

/// The `[suite]` table of a suite file.
pub fn parse(text: &str) -> Result<Grid> {
    /// A suite file: its `[suite]` table (the other tables are its claims and a suite's own).
    #[derive(Deserialize)]
    struct File {
        suite: Option<Grid>,
    }
    let grid = toml::from_str::<File>(text)?.suite.context("no [suite] table")?;
    if grid.quick_divide == 0 {
        bail!("[suite] quick_divide is 0 (give a divisor of at least 1)");
    }
    for g in &grid.groups {
        let zero_interval = g
            .eval_every
            .is_some_and(|e| e.value(Quick::OFF) == 0 || e.value(Quick { on: true, divide: 1 }) == 0);
        if g.once != (g.iterations == 0)
            || (!g.once
                && (g.evaluations.is_some() == g.eval_every.is_some() || g.evaluations == Some(0) || zero_interval))
        {
            bail!(
                "group '{}': give iterations and one of evaluations and eval_every, at least 1 (none with once)",
                g.name
            );
        }
        if g.quick_divide == Some(0) {
            bail!("group '{}': quick_divide is 0 (give a divisor of at least 1)", g.name);
        }
        let own_budget = g
            .axes
            .iter()
            .any(|a| grid.values(a).iter().any(|v| v.iterations.is_some()));
        if g.once && (g.seeds.is_some() || g.quick_divide.is_some() || own_budget) {
            bail!(
                "group '{}': a once table makes one run without iterations (no seeds, quick_divide or value iterations)",
                g.name
            );
        }
        for axis in &g.axes {
            if axis.values.is_empty() == axis.shared.is_none() {
                bail!("group '{}': an axis gives one of values and use", g.name);
            }
            if let Some(name) = &axis.shared {
                let shared = grid
                    .axes
                    .get(name)
                    .with_context(|| format!("group '{}': no shared axis '{name}' in [suite.axes]", g.name))?;
                if let Some(v) = axis.only.iter().find(|v| !shared.iter().any(|s| &s.name == *v)) {
                    bail!("group '{}': axis '{name}' has no value '{v}'", g.name);
                }
            }
            for value in grid.values(axis) {
                if value.iterations.as_ref().is_some_and(|i| i.full < 1 || i.quick < 1) {
                    bail!("group '{}': value '{}' has fewer than 1 iteration", g.name, value.name);
                }
                for arg in value
                    .args
                    .iter()
                    .chain(&g.args)
                    .flat_map(|a| g.expand(a, Quick::OFF, 1))
                {
                    if arg.contains('{') {
                        bail!("group '{}': '{arg}' names a var the group does not give", g.name);
                    }
                }
            }
            if grid.values(axis).is_empty() {
                bail!("group '{}': every axis needs a value", g.name);
            }
            if g.quick && grid.values(axis).iter().all(|v| !v.quick) {
                bail!(
                    "group '{}': every value of an axis has quick = false (mark the group instead)",
                    g.name
                );
            }
        }
    }
    if let Some(p) = &grid.peers
        && peers(p).is_none()
    {
        bail!("[suite] peers '{p}' is not a set of peer drivers (known: hypergrid, throughput)");
    }
    if let Some(e) = &grid.extra
        && extra(e).is_none()
    {
        bail!("[suite] extra '{e}' is not a suite's Rust extra (known: subtb, led, ebm, throughput, quality_plots)");
    }
    for c in &grid.columns {
        if builtin(c).is_none() && !grid.column_defs.iter().any(|d| &d.key == c) {
            bail!(
                "column '{c}' is neither built in (iterations, ms_per_iteration, exact_l1_last5, test_spearman, modes_found, task_modes_found, peak_rss_mb, mean_l1, top_k_fraction_of_ceiling, trajectories_to_ceiling, seeds_within_ceiling, acceptance) nor a [[suite.column]] key"
            );
        }
    }
    for d in &grid.column_defs {
        if d.summary.is_some() == d.first_at_most.is_some()
            || ((d.reached || d.seconds) && d.first_at_most.is_none())
            || (!d.or.is_empty() && d.summary.is_none())
        {
            bail!(
                "column '{}': give one of summary and first_at_most (reached and seconds only with first_at_most, or only with summary)",
                d.key
            );
        }
    }
    for t in &grid.targets {
        if !grid.groups.iter().any(|g| g.name == t.group) {
            bail!("target '{}': no group '{}'", t.text, t.group);
        }
    }
    Ok(grid)
}

impl Grid {
    /// The values of an axis of a table, its own or (some of) a shared one's.
    fn values<'a>(&'a self, axis: &'a Axis) -> Vec<&'a AxisValue> {
        match &axis.shared {
            None => axis.values.iter().collect(),
            Some(name) => self.axes.get(name).map_or_else(Vec::new, |values| {
                values
                    .iter()
                    .filter(|v| axis.only.is_empty() || axis.only.contains(&v.name))
                    .collect()
            }),
        }
    }
}

/// Whether `--quick` is on, and a table's divisor.
#[derive(Debug, Clone, Copy)]
struct Quick {
    on: bool,
    divide: u32,
}

impl Quick {
    const OFF: Quick = Quick { on: false, divide: 1 };

    /// `n` divided when `--quick` is on.
    fn scale(self, n: u32) -> u32 {
        if self.on { n / self.divide } else { n }
    }
}

/// `--eval-every`: the same with `--quick`, or `{ full = N, quick = M }`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(untagged)]
enum EvalEvery {
    Fixed(u32),
    Given { full: u32, quick: u32 },
}

impl EvalEvery {
    fn value(self, quick: Quick) -> u32 {
        match self {
            EvalEvery::Fixed(n) => n,
            EvalEvery::Given { full, quick: q } => {
                if quick.on {
                    q
                } else {
                    full
                }
            }
        }
    }
}

/// A var of a table: an integer (divided like the iterations by `--quick`), a string,
/// `{ full = N, quick = M }` (picked by `--quick`), or a list of arguments that replaces an
/// argument `{name}` (see [`Group::expand`]).
#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    deny_unknown_fields,
    expecting = "a var: an integer, a string, { full = N, quick = M } or a list of strings"
)]
enum Var {
    Int(i64),
    Str(String),
    Given(FullQuick),
    List(Vec<String>),
}

/// `{ full = N, quick = M }`: a table with exactly these two keys (not a list).
#[derive(Debug, Deserialize)]
#[serde(try_from = "BTreeMap<String, i64>")]
struct FullQuick {
    full: i64,
    quick: i64,
}

impl TryFrom<BTreeMap<String, i64>> for FullQuick {
    type Error = String;

    fn try_from(mut map: BTreeMap<String, i64>) -> Result<Self, String> {
        match (map.remove("full"), map.remove("quick")) {
            (Some(full), Some(quick)) if map.is_empty() => Ok(FullQuick { full, quick }),
            _ => Err("expected { full = N, quick = M }".into()),
        }
    }
}

impl Var {
    /// The text of a var; `None` for a list (spliced).
    fn text(&self, quick: Quick) -> Option<String> {
        match self {
            Var::Int(n) => Some(if quick.on { n / i64::from(quick.divide) } else { *n }.to_string()),
            Var::Str(s) => Some(s.clone()),
            Var::Given(FullQuick { full, quick: q }) => Some(if quick.on { q } else { full }.to_string()),
            Var::List(_) => None,
        }
    }
}

impl Group {
    /// A table or axis argument with the table's vars and `{iterations}` in place; an argument
    /// that is exactly `{name}` of a list var becomes the list's arguments (each expanded).
    fn expand(&self, arg: &str, quick: Quick, iterations: u32) -> Vec<String> {
        if let Some(Var::List(list)) = arg
            .strip_prefix('{')
            .and_then(|a| a.strip_suffix('}'))
            .and_then(|k| self.vars.get(k))
        {
            return list.iter().flat_map(|a| self.expand(a, quick, iterations)).collect();
        }
        let text = self.vars.iter().fold(arg.to_string(), |a, (k, v)| match v.text(quick) {
            Some(value) => a.replace(&format!("{{{k}}}"), &value),
            None => a,
        });
        vec![text.replace("{iterations}", &iterations.to_string())]
    }
}

/// The built-in column `name` of a suite file's `columns`.
#[rustfmt::skip]
fn builtin(name: &str) -> Option<Metric> {
    use crate::{curves, ebm, led};
    Some(match name {
        "iterations" => Metric::new("iterations", "iterations", "it", Agg::Median, 0,
            &|r| num(r, "/summary/iterations")),
        "ms_per_iteration" => MS_PER_ITERATION,
        // Exact L1 over the last 5 evaluations.
        "exact_l1_last5" => Metric::new("exact L1 (last 5 evals)", "exact_l1_last5", "L1(last5)", Agg::MeanStd, 4,
            &|r| num(r, "/summary/exact_last5_mean/l1_sum")),
        // The task's test-set Spearman correlation (bit sequences).
        "test_spearman" => Metric::new("test Spearman", "test_spearman", "Spearman", Agg::MeanStd, 3,
            &|r| num(r, "/summary/task/test_spearman")),
        // Modes visited by training.
        "modes_found" => Metric::new("modes found (mean)", "modes_found", "modes", Agg::Mean, 1,
            &|r| num(r, "/summary/modes/found")),
        // The task's own count (bit sequences: modes within the task's distance), else the mode
        // states visited where the task has modes.
        "task_modes_found" => Metric::new("modes found", "modes_found", "modes", Agg::MeanStd, 1, &|r| {
            num(r, "/summary/task/modes_found")
                .or_else(|| (num(r, "/summary/modes/total")? > 0.0).then(|| num(r, "/summary/modes/found")).flatten())
        }),
        "peak_rss_mb" => PEAK_RSS,
        "top_k_fraction_of_ceiling" => Metric::new("top-100 mean ÷ exact ceiling", "top_k_fraction_of_ceiling",
            "÷ceiling", Agg::MeanStd, 4, &led::fraction_of_ceiling),
        "trajectories_to_ceiling" => Metric::new(
            "trajectories to within 1% of the ceiling (median of the seeds that got there)",
            "trajectories_to_ceiling", "traj→1%", Agg::Median, 0, &led::trajectories_to_ceiling),
        // EB-GFN's acceptance of its back-and-forth proposals over the last evaluation window.
        "acceptance" => Metric::new("acceptance (last window)", "acceptance", "accept", Agg::MeanStd, 3,
            &ebm::acceptance),
        "seeds_within_ceiling" => Metric::new("seeds within 1% of the ceiling", "seeds_within_ceiling", "seeds→1%",
            Agg::Sum, 0, &led::reached_ceiling),
        "mean_l1" => Metric::new("mean L1 over training (area under the curve)", "mean_l1", "meanL1", Agg::MeanStd, 4,
            &curves::mean_l1),
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
        if let Some(target) = &self.first_at_most {
            let first =
                crate::curves::first_reaching(record, |p| target.met(p)).map(|(t, s)| if self.seconds { s } else { t });
            if !self.reached {
                return first;
            }
            let has_curve = !crate::curves::values(record, &format!("/{}", target.curve)).is_empty();
            return has_curve.then_some(if first.is_some() { 1.0 } else { 0.0 });
        }
        let summary = record.get("summary")?;
        let mut v = std::iter::once(self.summary.as_deref()?)
            .chain(self.or.iter().map(String::as_str))
            .find_map(|p| read_all(summary, p))?;
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
        let value = Box::leak(Box::new(move |r: &Value| self.eval(r)));
        Metric::new(&self.header, &self.key, &self.short, self.agg, self.digits, value)
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
        let quick = Quick {
            on: opts.quick,
            divide: g.quick_divide.unwrap_or(grid.quick_divide),
        };
        let iterations = quick.scale(g.iterations).max(1);
        // Every combination of the axes' values, the first axis varying slowest.
        let mut combos: Vec<Vec<&AxisValue>> = vec![Vec::new()];
        for axis in &g.axes {
            let values = grid.values(axis);
            combos = combos
                .into_iter()
                .flat_map(|c| {
                    values.iter().filter(|v| v.quick || !opts.quick).map(move |&v| {
                        let mut c = c.clone();
                        c.push(v);
                        c
                    })
                })
                .collect();
        }
        for combo in combos {
            let names: Vec<&str> = combo.iter().map(|v| v.name.as_str()).collect();
            let row: Vec<&str> = combo.iter().map(|v| v.row.as_deref().unwrap_or(&v.name)).collect();
            let iterations = match combo.iter().rev().find_map(|v| v.iterations.as_ref()) {
                Some(own) => u32::try_from(if quick.on { own.quick } else { own.full }).unwrap_or(u32::MAX),
                None => iterations,
            };
            for seed in 0..if g.once { 1 } else { u64::from(seeds) } {
                let expand = |a: &String| g.expand(a, quick, iterations);
                let mut gfn_args: Vec<String> = g.args.iter().flat_map(expand).collect();
                gfn_args.extend(combo.iter().flat_map(|v| v.args.iter().flat_map(expand)));
                let eval_every = match g.eval_every {
                    Some(e) => e.value(quick),
                    None => (iterations / g.evaluations.unwrap_or(1)).max(1),
                };
                let tail: [String; 8] = [
                    "--iterations".into(),
                    iterations.to_string(),
                    "--eval-every".into(),
                    eval_every.to_string(),
                    "--seed".into(),
                    seed.to_string(),
                    "--threads".into(),
                    opts.threads.to_string(),
                ];
                let tail = if g.once { Vec::new() } else { tail.to_vec() };
                gfn_args.extend(tail.clone());
                // The peers make the runs whose table or axis values give them arguments.
                let mut peer_args: Vec<String> = g.peer_args.iter().flat_map(expand).collect();
                peer_args.extend(combo.iter().flat_map(|v| v.peer_args.iter().flat_map(expand)));
                if grid.peers.is_some() && !peer_args.is_empty() {
                    peer_args.extend(tail);
                } else {
                    peer_args.clear();
                }
                let stem = match &g.prefix {
                    Some(p) => format!("{p}-{}", names.join("-")),
                    None => names.join("-"),
                };
                runs.push(RunSpec {
                    name: if g.once { stem } else { format!("{stem}-seed{seed}") },
                    group: g.name.clone(),
                    row: row.join(" "),
                    seed,
                    gfn_args,
                    peer_args,
                    output: if g.stdout { Output::Stdout } else { Output::RunDir },
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
        peers: grid.peers.as_deref().and_then(peers).unwrap_or_default(),
        extra: (grid.extra.is_some() || !grid.plots.is_empty() || !grid.targets.is_empty())
            .then_some(write_extra as crate::suite::Extra),
        quality_note: grid.quality_note.as_deref(),
    }
}

/// The peer drivers of a suite, by the name its file gives in `peers`: the hypergrid drivers,
/// showing the exact L1, the time to L1 0.1, compilation and memory (`hypergrid`), or speed and
/// memory (`throughput`).
#[rustfmt::skip]
fn peers(name: &str) -> Option<Vec<crate::suite::PeerSpec>> {
    match name {
        "hypergrid" => Some(crate::suite::hypergrid_peers(&[
            Metric::new("L1 (last 5 evals)", "exact_l1_last5", "L1(last5)", Agg::MeanStd, 4,
                &|r| num(r, "/output/quality_l1_sum_last5")),
            Metric::new("s to L1 ≤ 0.1 (median)", "seconds_to_l1_0.1", "s→0.1", Agg::Median, 1,
                &|r| crate::curves::seconds_to_l1(r, 0.1)),
            Metric::new("compile s", "compile_seconds", "compile s", Agg::Median, 1,
                &|r| num(r, "/output/compile_seconds")),
            PEER_PEAK_RSS,
        ])),
        "throughput" => Some(crate::suite::hypergrid_peers(&[
            Metric::new("trajectories/s", "trajectories_per_second", "traj/s", Agg::Median, 0,
                &|r| num(r, "/output/trajectories_per_second")),
            PEER_PEAK_RSS,
        ])),
        _ => None,
    }
}

/// A suite's own plots and tables, by the name its file gives in `extra`.
fn extra(name: &str) -> Option<crate::suite::Extra> {
    match name {
        "subtb" => Some(crate::subtb::extra),
        "led" => Some(crate::led::extra),
        "ebm" => Some(crate::ebm::extra),
        "throughput" => Some(crate::throughput::extra),
        "quality_plots" => Some(|session, _, dir| crate::curves::quality_plots(session, dir)),
        _ => None,
    }
}

/// Every table of suite `suite`: its name and the row labels of its first axis, in order.
pub fn tables(suite: &str) -> Vec<(String, Vec<String>)> {
    let Some(grid) = file(suite).map(parse).and_then(Result::ok) else {
        return Vec::new();
    };
    grid.groups
        .iter()
        .map(|g| {
            let labels = g.axes.first().map_or_else(Vec::new, |axis| {
                grid.values(axis)
                    .iter()
                    .map(|v| v.row.clone().unwrap_or_else(|| v.name.clone()))
                    .collect()
            });
            (g.name.clone(), labels)
        })
        .collect()
}

/// What a data suite writes after its tables: its plots, its targets ("Further claims"), then
/// its Rust extra.
fn write_extra(session: &Session, aggs: &[Aggregate], dir: &Path) -> Result<String> {
    let text = file(&session.request.suite).context("suite without a file")?;
    let grid = parse(text)?;
    let mut md = String::new();
    if !grid.plots.is_empty() {
        md.push_str(&plots(&grid, session, aggs, dir)?);
    }
    if !grid.targets.is_empty() {
        md.push_str("\n## Further claims\n\n");
        for t in &grid.targets {
            md.push_str(&target_line(t, session));
        }
    }
    if let Some(e) = &grid.extra {
        md.push_str(&extra(e).context("parse checked the extra")?(session, aggs, dir)?);
    }
    Ok(md)
}

/// The `[[suite.plot]]` figures: each against trajectories, mean over seeds per row, per table.
fn plots(grid: &Grid, session: &Session, aggs: &[Aggregate], dir: &Path) -> Result<String> {
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
                .filter_map(|r| reference(r, &g.name, session, aggs))
                .collect();
            let series = crate::curves::jsonl_series(session, dir, &g.name, &p.pointer);
            md.push_str(&crate::curves::figure_plot(
                dir,
                &g.name,
                (&p.file, &p.label, p.log),
                &series,
                &references,
            )?);
        }
    }
    Ok(md)
}

/// A reference line of table `group`; none where its figure is missing.
fn reference(r: &ReferenceDef, group: &str, session: &Session, aggs: &[Aggregate]) -> Option<Reference> {
    let (label, y) = match r {
        ReferenceDef::Value { label, value } => (label.clone(), *value),
        ReferenceDef::Column { label, column } => {
            let a = aggs.iter().find(|a| a.group == group)?;
            (label.clone(), a.ours.get(column.as_str())?.mean)
        }
        ReferenceDef::Summary { label, summary } => {
            let v: Vec<f64> = session
                .runs
                .iter()
                .filter(|run| run.ok && run.group == group)
                .filter_map(|run| run.summary.as_ref()?.pointer(summary)?.as_f64())
                .collect();
            let s = Stats::of(&v)?;
            (format!("{label} {}", crate::plot::tick(s.mean)), s.mean)
        }
    };
    Some(Reference { label, y })
}

/// A target's line: per row, whether every seed got there within the budget.
fn target_line(t: &TargetDef, session: &Session) -> String {
    let mut parts = Vec::new();
    let mut met_all = true;
    for row in &t.rows {
        let recs = records(session, &t.group, row);
        if recs.is_empty() {
            parts.push(format!("{row}: no run finished"));
            met_all = false;
            continue;
        }
        let reached: Vec<f64> = recs
            .iter()
            .filter_map(|r| r["curve"].as_array()?.iter().find(|p| t.first_at_most.met(p))?["iteration"].as_f64())
            .filter(|&it| it <= t.within)
            .collect();
        let met = reached.len() == recs.len();
        met_all &= met;
        let first = Stats::of(&reached)
            .map(|s| format!(", first at iteration {} (median)", fmt_num(s.median, 0)))
            .unwrap_or_default();
        let shown = t
            .show
            .as_ref()
            .and_then(|show| {
                let v: Vec<f64> = recs
                    .iter()
                    .filter_map(|r| r.get("summary")?.pointer(&show.summary)?.as_f64())
                    .collect();
                Stats::of(&v).map(|s| format!("; {} {}", show.label, seeds_cell(&s, Some(show.digits))))
            })
            .unwrap_or_default();
        parts.push(format!(
            "{row} **{}** ({} of {} seed{}{first}{shown})",
            if met { "met" } else { "not met" },
            reached.len(),
            recs.len(),
            if recs.len() == 1 { "" } else { "s" }
        ));
    }
    format!(
        "- {}: **{}**: {}.\n",
        t.text,
        if met_all { "met" } else { "not met" },
        parts.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The suites written as data plan the runs whose records are committed: the same names,
    /// tables, rows and the same flags with the same values.
    #[test]
    fn data_suites_plan_the_committed_runs() {
        let root = crate::runner::Layout::detect().root;
        for name in [
            "networks",
            "conditional",
            "mis",
            "subtb",
            "led",
            "hypergrid",
            "pg",
            "throughput",
            "ebm",
        ] {
            let text = std::fs::read_to_string(root.join("docs/results").join(name).join("results.json")).unwrap();
            let session: Session = serde_json::from_str(&text).unwrap();
            let mut suite = crate::suite::build(name, &session.request.options).unwrap();
            if let Some(filter) = &session.request.filter {
                suite
                    .runs
                    .retain(|r| filter.split(',').any(|f| r.name.contains(f.trim())));
            }
            assert_eq!(suite.runs.len(), session.plan.len(), "{name}");
            // The same tables, each with the same rows in the same order (the order the runs are
            // made in may differ: a table's rows follow their first run).
            fn tables(runs: &[RunSpec]) -> Vec<(&str, Vec<&str>)> {
                let groups = crate::report::distinct(runs.iter().map(|r| r.group.as_str()));
                let rows =
                    |g: &str| crate::report::distinct(runs.iter().filter(|r| r.group == g).map(|r| r.row.as_str()));
                groups.into_iter().map(|g| (g, rows(g))).collect()
            }
            assert_eq!(tables(&suite.runs), tables(&session.plan), "{name}");
            // The subcommand, then each flag with its value (if any), in any order.
            let flags = |args: &[String]| {
                let at = args.iter().position(|a| a.starts_with("--")).unwrap_or(args.len());
                let mut pairs: Vec<(String, String)> = Vec::new();
                let mut rest = args[at..].iter().peekable();
                while let Some(flag) = rest.next() {
                    assert!(
                        flag.starts_with("--"),
                        "{name}: '{flag}' is neither a flag nor its value"
                    );
                    let value = rest.next_if(|v| !v.starts_with("--")).cloned();
                    pairs.push((flag.clone(), value.unwrap_or_default()));
                }
                pairs.sort();
                (args[..at].to_vec(), pairs)
            };
            let mut planned: Vec<&RunSpec> = suite.runs.iter().collect();
            let mut committed: Vec<&RunSpec> = session.plan.iter().collect();
            planned.sort_by_key(|r| &r.name);
            committed.sort_by_key(|r| &r.name);
            for (new, old) in planned.into_iter().zip(committed) {
                assert_eq!(
                    (&new.name, &new.group, &new.row, new.seed, format!("{:?}", new.output)),
                    (&old.name, &old.group, &old.row, old.seed, format!("{:?}", old.output)),
                    "{name}"
                );
                assert_eq!(flags(&new.gfn_args), flags(&old.gfn_args), "{name}: {}", new.name);
                assert_eq!(flags(&new.peer_args), flags(&old.peer_args), "{name}: {}", new.name);
            }
        }
        // Every flag once in every run of every data suite: gfn refuses a repeated one.
        for name in crate::suite::SUITES
            .iter()
            .filter(|d| file(d).is_some_and(|f| parse(f).is_ok()))
        {
            for quick in [false, true] {
                for r in crate::suite::build(name, &crate::suite::test_util::opts(quick, None))
                    .unwrap()
                    .runs
                {
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
    }

    #[test]
    fn bad_files_are_named() {
        let e = parse("[suite]\nrow_header = 'x'\nseeds = 1\nquick_divide = 1\ncolumns = ['nope']\n[[suite.group]]\nname = 'g'\nargs = []\niterations = 1\nevaluations = 1\n[[suite.group.axis]]\nvalues = [{ name = 'a', args = [] }]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("column 'nope'"), "{e}");
        let group = |extra: &str, value: &str| {
            let text = format!(
                "[suite]\nrow_header = 'x'\nseeds = 1\nquick_divide = 1\ncolumns = []\n[[suite.group]]\nname = 'g'\nargs = []\n{extra}\n[[suite.group.axis]]\nvalues = [{{ name = 'a', args = [] {value} }}]\n"
            );
            parse(&text).map(|_| ()).map_err(|e| e.to_string())
        };
        assert_eq!(group("iterations = 1\nevaluations = 1", ""), Ok(()));
        assert_eq!(group("once = true", ""), Ok(()));
        let e = group("once = true\niterations = 1", "").unwrap_err();
        assert!(e.contains("none with once"), "{e}");
        let e = group("iterations = 1\nevaluations = 1", ", quick = false").unwrap_err();
        assert!(e.contains("every value of an axis has quick = false"), "{e}");
        let e = group(
            "iterations = 1\nevaluations = 1",
            ", iterations = { full = 0, quick = 1 }",
        )
        .unwrap_err();
        assert!(e.contains("value 'a' has fewer than 1 iteration"), "{e}");
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

    #[test]
    fn pg_quick_divides_the_iterations_but_keeps_the_bar() {
        use crate::suite::test_util::{arg, opts};
        let s = build("pg", &opts(true, None));
        assert_eq!(s.runs.len(), 3 * 7 + 3 + 4);
        assert!(s.runs.iter().all(|r| r.seed == 0 && arg(r, "--seed") == Some("0")));
        let r = |name: &str| s.runs.iter().find(|r| r.name == name).unwrap();
        assert_eq!(arg(r("2x64-tb-seed0"), "--iterations"), Some("50"));
        assert_eq!(arg(r("2x64-tb-seed0"), "--eval-every"), Some("2"));
        assert_eq!(arg(r("bn-pg-g-seed0"), "--guide-floor"), Some("80"));
        assert_eq!(arg(r("bn-pg-u-seed0"), "--lr-logz"), Some("1"));
        assert_eq!(arg(r("bn-db-seed0"), "--lr-logz"), None);
        assert_eq!(arg(r("4x8-pg-g-seed0"), "--guide-floor"), None);
        assert_eq!(arg(r("2x8-pg-u-seed0"), "--iterations"), Some("1500"));
        assert_eq!(arg(r("2x8-pg-u-seed0"), "--eval-every"), Some("75"));
        // Bit sequences: one seed whatever --seeds says, three methods in the shared axis' order.
        let two = build("pg", &opts(true, Some(2)));
        assert_eq!(two.runs.len(), 2 * (3 * 7 + 4) + 3);
        let bitseq: Vec<&str> = two
            .runs
            .iter()
            .filter(|r| r.name.starts_with("bitseq"))
            .map(|r| r.row.as_str())
            .collect();
        assert_eq!(bitseq, ["tb", "subtb", "pg-u"]);
    }

    #[test]
    fn vars_and_shared_axes_are_checked() {
        let base = "[suite]\nrow_header = 'x'\nseeds = 1\nquick_divide = 1\ncolumns = ['iterations']\n";
        let group = "[[suite.group]]\nname = 'g'\nargs = []\niterations = 1\nevaluations = 1\n";
        let e = parse(&format!("{base}{group}axis = [{{ use = 'nope' }}]\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no shared axis 'nope'"), "{e}");
        let e = parse(&format!(
            "{base}[suite.axes]\nm = [{{ name = 'a', args = ['--x', '{{v}}'] }}]\n{group}axis = [{{ use = 'm', only = ['b'] }}]\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("axis 'm' has no value 'b'"), "{e}");
        let e = parse(&format!(
            "{base}[suite.axes]\nm = [{{ name = 'a', args = ['--x', '{{v}}'] }}]\n{group}axis = [{{ use = 'm' }}]\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("'{v}' names a var the group does not give"), "{e}");
        // Vars and reference lines of the wrong shape: the error shows the line.
        let e = parse(&format!(
            "{base}{group}vars = {{ v = 1.5 }}\naxis = [{{ values = [{{ name = 'a', args = [] }}] }}]\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("vars = { v = 1.5 }") && e.contains("a var: an integer"),
            "{e}"
        );
        let plot = "[[suite.plot]]\npointer = '/x'\nfile = 'f'\nlabel = 'l'\nreferences = [{ label = 'a', value = 1, column = 'c' }]\n";
        let e = parse(&format!(
            "{base}{group}axis = [{{ values = [{{ name = 'a', args = [] }}] }}]\n{plot}"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("column = 'c'") && e.contains("one of column, summary and value"),
            "{e}"
        );
        let g = Group {
            name: "g".into(),
            prefix: None,
            args: Vec::new(),
            iterations: 1,
            stdout: false,
            once: false,
            evaluations: Some(1),
            eval_every: None,
            quick_divide: None,
            vars: toml::from_str(
                "n = 1000\ns = '0.1'\nl = ['--a', '{n}']\nnone = []\ngiven = { full = 20, quick = 5 }",
            )
            .unwrap(),
            seeds: None,
            quick: true,
            axes: Vec::new(),
            peer_args: Vec::new(),
        };
        let quick = Quick { on: true, divide: 4 };
        assert_eq!(g.expand("{n}", quick, 9), ["250"]);
        assert_eq!(g.expand("{n}", Quick::OFF, 9), ["1000"]);
        assert_eq!(g.expand("x{s}", quick, 9), ["x0.1"]);
        assert_eq!(g.expand("{l}", quick, 9), ["--a", "250"]);
        assert!(g.expand("{none}", quick, 9).is_empty());
        assert_eq!(g.expand("{given}", quick, 9), ["5"]);
        assert_eq!(g.expand("{given}", Quick::OFF, 9), ["20"]);
        assert_eq!(g.expand("{iterations}", quick, 9), ["9"]);
        // `{ full, quick }` is a table of exactly those keys: neither a list of numbers nor another key.
        for bad in [
            "x = [100, 10]",
            "x = { full = 1 }",
            "x = { full = 1, quick = 2, slow = 3 }",
        ] {
            assert!(toml::from_str::<BTreeMap<String, Var>>(bad).is_err(), "{bad}");
        }
    }

    /// A finished run of `group`/`row` whose exact TV follows `tvs`, one evaluation every 10
    /// iterations of 128 trajectories.
    fn tv_run(group: &str, row: &str, seed: u64, tvs: &[f64]) -> crate::bench::RunRecord {
        let curve: Vec<Value> = tvs
            .iter()
            .enumerate()
            .map(|(i, tv)| {
                serde_json::json!({"iteration": 10 * (i + 1), "trajectories": 1280.0 * (i + 1) as f64,
                    "seconds": i as f64, "l1_sum": 2.0 * tv, "tv": tv})
            })
            .collect();
        serde_json::from_value(serde_json::json!({
            "name": format!("{row}-seed{seed}"), "group": group, "row": row, "seed": seed, "command": [],
            "ok": true, "error": null, "process_wall_seconds": 1.0, "peak_rss_mb": null,
            "summary": {"exact_last5_mean": {"tv": tvs.last()}}, "curve": curve, "peers": []
        }))
        .unwrap()
    }

    #[test]
    fn time_to_target_columns_and_targets_read_the_curves() {
        let grid: &'static Grid = Box::leak(Box::new(parse(file("pg").unwrap()).unwrap()));
        let col = |k: &str| grid.column_defs.iter().find(|d| d.key == k).unwrap();
        let bar = "hypergrid 2×8, R0 0.1, batch 16, MLP 2×64: the 1,500-iteration bar";
        let got = serde_json::to_value(tv_run(bar, "pg-u", 0, &[0.5, 0.09, 0.2, 0.08])).unwrap();
        assert_eq!(col("trajectories_to_tv_0.1").eval(&got), Some(2560.0));
        assert_eq!(col("seeds_reaching_tv_0.1").eval(&got), Some(1.0));
        let never = serde_json::to_value(tv_run(bar, "pg-u", 0, &[0.5, 0.3])).unwrap();
        assert_eq!(col("trajectories_to_tv_0.1").eval(&never), None);
        assert_eq!(col("seeds_reaching_tv_0.1").eval(&never), Some(0.0));
        let no_curve = serde_json::json!({"summary": {}, "curve": []});
        assert_eq!(col("seeds_reaching_tv_0.1").eval(&no_curve), None);

        let mut session: Session = serde_json::from_value(serde_json::json!({
            "request": {"suite": "pg", "options": {"quick": false, "seeds": 2, "threads": 1}, "vs": [], "command": "test"},
            "started": "now", "finished": "now", "plan": [], "versions": {"peers": {}}, "machine": {}, "git": {},
            "rss_method": "none", "peers": [], "runs": []
        }))
        .unwrap();
        for seed in 0..2 {
            session.runs.push(tv_run(bar, "pg-u", seed, &[0.3, 0.05]));
            session.runs.push(tv_run(bar, "pg-b", seed, &[0.3, 0.2]));
            session.runs.push(tv_run(bar, "pg-g", seed, &[0.09, 0.04]));
        }
        let line = target_line(&grid.targets[0], &session);
        assert!(line.starts_with("- *Every PG variant reaches exact TV ≤ 0.1 on hypergrid 2×8 within 1,500 iterations* (R0 0.1, batch 16, MLP 2×64): **not met**: "), "{line}");
        assert!(line.contains("pg-u **met** (2 of 2 seeds, first at iteration 20 (median); TV over the last 5 evaluations 0.0500 ± 0.0000 (2 seeds))"), "{line}");
        assert!(line.contains("pg-b **not met** (0 of 2 seeds; TV over"), "{line}");
        assert!(
            line.contains("pg-g **met** (2 of 2 seeds, first at iteration 10 (median)"),
            "{line}"
        );
        assert!(line.ends_with("pg-trpo: no run finished.\n"), "{line}");
        // Within the budget only: a first crossing after `within` iterations is not met.
        let late = TargetDef {
            within: 15.0,
            ..parse(file("pg").unwrap()).unwrap().targets.remove(0)
        };
        assert!(target_line(&late, &session).contains("pg-u **not met** (0 of 2 seeds"));
    }
}
