//! The generic runner: makes a suite's runs one at a time (each followed by its peer
//! counterpart, when comparing), records everything and writes the results.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use gfn_record::{EbmRecord, RecentMetrics, Timing, TopKMetrics};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::report;
use crate::runner::{self, Job, Layout, PeerEnv, RssProbe};
use crate::suite::{Metric, Output, PeerSpec, RunSpec, Suite, SuiteOptions};
use crate::sysinfo::{self, Git, Machine, Utc};

/// Everything `cargo xtask bench` was asked to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchRequest {
    /// Suite name.
    pub suite: String,
    /// Suite options.
    pub options: SuiteOptions,
    /// Peers to compare with (`--vs`), in the order their runs follow ours.
    pub vs: Vec<String>,
    /// The command line, as typed (`cargo xtask bench hypergrid --quick`).
    pub command: String,
    /// `--filter`: only the runs whose name contains this (or, comma-separated, any of these).
    #[serde(default)]
    pub filter: Option<String>,
    /// `--jobs`: runs made at once (1 unless given; never with peers).
    #[serde(default = "one")]
    pub jobs: u32,
    /// `--device`: where our runs train (`cpu`, or `cuda`: built with `--features cuda`).
    #[serde(default = "cpu")]
    pub device: String,
    /// `--gfn-binary`: a prebuilt gfn run instead of building one.
    #[serde(default)]
    pub gfn_binary: Option<PathBuf>,
}

fn cpu() -> String {
    "cpu".into()
}

fn one() -> u32 {
    1
}

/// One of our runs, with its peer counterpart.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    /// Run name (its directory under `runs/`).
    pub name: String,
    /// Table.
    pub group: String,
    /// Row.
    pub row: String,
    /// Seed.
    pub seed: u64,
    /// The exact command.
    pub command: Vec<String>,
    /// Whether it exited successfully and left a readable `summary.json`.
    pub ok: bool,
    /// Why not.
    pub error: Option<String>,
    /// Wall-clock seconds of the whole process (start-up and evaluations included).
    pub process_wall_seconds: Option<f64>,
    /// Peak resident memory (MiB).
    pub peak_rss_mb: Option<f64>,
    /// The run's `summary.json` (or the JSON line a `gfn speed` run printed).
    pub summary: Option<Value>,
    /// Quality against trajectories and training seconds, one point per evaluation.
    pub curve: Vec<CurvePoint>,
    /// The peers' counterpart runs, in `--vs` order.
    pub peers: Vec<PeerRecord>,
}

/// One evaluation of a training run.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct CurvePoint {
    /// Iterations completed.
    pub iteration: u64,
    /// Trajectories sampled so far.
    pub trajectories: f64,
    /// Training seconds so far (evaluations excluded; a peer's compile time included).
    pub seconds: f64,
    /// Exact L1 = Σ|P_T − p*|.
    pub l1_sum: Option<f64>,
    /// Exact TV = L1/2.
    pub tv: Option<f64>,
    /// Modes visited so far by training samples (tasks with exact evaluation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modes_found: Option<f64>,
    /// The best distinct measured objects so far (`metrics.jsonl`'s `top_k`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<TopKMetrics>,
    /// The mean reward of the most recent measured samples (`metrics.jsonl`'s `recent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recent: Option<RecentMetrics>,
    /// Figures of an energy-based model run (`gfn train --env ebm-2d|ising|digits`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ebm: Option<EbmRecord>,
}

/// A peer library's run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerRecord {
    /// Peer name.
    pub name: String,
    /// The exact command.
    pub command: Vec<String>,
    /// Whether it exited successfully and printed a JSON line.
    pub ok: bool,
    /// Why not.
    pub error: Option<String>,
    /// Wall-clock seconds of the whole process (imports and evaluations included).
    pub process_wall_seconds: Option<f64>,
    /// Peak resident memory (MiB), measured like ours.
    pub peak_rss_mb: Option<f64>,
    /// The driver's JSON line.
    pub output: Option<Value>,
    /// Quality curve from the driver's evaluations.
    pub curve: Vec<CurvePoint>,
}

/// Whether the requested peer could be used.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerStatus {
    /// Peer name.
    pub name: String,
    /// Whether its environment is usable.
    pub available: bool,
    /// Why not.
    pub reason: Option<String>,
    /// Its Python.
    pub python: Option<String>,
}

/// Versions of everything involved.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Versions {
    /// `gfn --version`.
    pub gfn: Option<String>,
    /// When the `gfn` binary used was built (its modification time) and its size: the
    /// working tree may differ from `git.commit`.
    pub gfn_binary: Option<Value>,
    /// `rustc --version`.
    pub rustc: Option<String>,
    /// `cargo --version`.
    pub cargo: Option<String>,
    /// Each peer's `versions` object (from its first successful run).
    pub peers: std::collections::BTreeMap<String, Value>,
}

/// The state of a suite's execution, written to `results.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    /// The request.
    pub request: BenchRequest,
    /// When it started (RFC 3339, UTC).
    pub started: String,
    /// When it finished; `None` while running.
    pub finished: Option<String>,
    /// The planned runs.
    pub plan: Vec<RunSpec>,
    /// Versions.
    pub versions: Versions,
    /// Machine.
    pub machine: Machine,
    /// Source tree.
    pub git: Git,
    /// How peak memory was measured.
    pub rss_method: String,
    /// The peers, when comparing.
    pub peers: Vec<PeerStatus>,
    /// Finished runs.
    pub runs: Vec<RunRecord>,
    /// Later `cargo xtask resume` calls that added the runs an interruption left out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resumed: Vec<Resumption>,
}

/// A `cargo xtask resume` call: when, with which source tree and binary, and which runs it set out
/// to make (a stopped resume leaves some to the next; the report credits each with what it made).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Resumption {
    /// When it started (RFC 3339, UTC).
    pub at: String,
    /// The command line.
    pub command: String,
    /// The source tree it built `gfn` from.
    pub git: Git,
    /// The `gfn` binary it used (path, build time, size).
    pub gfn_binary: Option<Value>,
    /// The runs it was to make (those missing when it started), in plan order.
    pub runs: Vec<String>,
}

/// Environment of every child: one intra-op thread (or `--threads`) for every library.
fn thread_env(threads: u32) -> Vec<(String, String)> {
    let t = threads.to_string();
    [
        "RAYON_NUM_THREADS",
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
    ]
    .iter()
    .map(|k| (k.to_string(), t.clone()))
    .collect()
}

/// A fresh `target/bench/<suite>/<timestamp>` directory.
fn results_dir(layout: &Layout, suite: &str, now: &Utc) -> Result<PathBuf> {
    let base = layout.target.join("bench").join(suite);
    std::fs::create_dir_all(&base).with_context(|| format!("cannot create {}", base.display()))?;
    let stamp = now.compact();
    for i in 1.. {
        let name = if i == 1 { stamp.clone() } else { format!("{stamp}-{i}") };
        let dir = base.join(name);
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot create {}", dir.display())),
        }
    }
    unreachable!()
}

/// Points `<suite dir>/latest` at `dir`, replacing an existing link atomically.
fn point_latest(dir: &Path) -> Result<()> {
    let parent = dir.parent().context("results directory has no parent")?;
    let name = dir.file_name().context("results directory has no name")?;
    let tmp = parent.join(format!(".latest.tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(name, &tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let latest = parent.join("latest");
    std::fs::rename(&tmp, &latest).with_context(|| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot replace {}", latest.display())
    })
}

/// ` label value` pairs of a record, for a progress line.
fn progress_figures(metrics: &[Metric], record: &Value) -> String {
    metrics
        .iter()
        .filter_map(|m| (m.value)(record).map(|v| format!("{} {}", m.short, report::fmt_num(v, m.digits))))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Path, build time and size of the `gfn` binary a suite uses.
fn binary_facts(built: &Path) -> Option<Value> {
    std::fs::metadata(built).ok().map(|m| {
        let modified = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| Utc::from_unix(d.as_secs() as i64).rfc3339());
        serde_json::json!({ "path": built.display().to_string(), "modified": modified, "bytes": m.len() })
    })
}

/// What every run of a suite shares: the `gfn` it runs (a private copy of `shown`, the path
/// its records show), where runs write, their environment and the memory probe.
struct Runs<'a> {
    gfn: PathBuf,
    shown: &'a Path,
    layout: &'a Layout,
    runs_dir: PathBuf,
    env: Vec<(String, String)>,
    probe: RssProbe,
}

impl<'a> Runs<'a> {
    /// Copies `built` into `dir` (a concurrent `cargo build` must not swap the binary mid-suite).
    fn new(layout: &'a Layout, built: &'a Path, dir: &Path, threads: u32) -> Result<Self> {
        let runs_dir = dir.join("runs");
        std::fs::create_dir_all(&runs_dir)?;
        let gfn = dir.join("gfn");
        std::fs::copy(built, &gfn).with_context(|| format!("cannot copy {} to {}", built.display(), gfn.display()))?;
        Ok(Runs {
            gfn,
            shown: built,
            layout,
            probe: RssProbe::detect(&runs_dir),
            runs_dir,
            env: thread_env(threads),
        })
    }

    /// Marks `session` finished, writes its report and removes the private `gfn`.
    fn finish(&self, dir: &Path, suite: &Suite, session: &mut Session) -> Result<()> {
        session.finished = Some(Utc::now().rfc3339());
        report::write(dir, suite, session, true)?;
        let _ = std::fs::remove_file(&self.gfn);
        Ok(())
    }
}

/// The progress line of one of our finished runs.
fn progress(tag: &str, record: &RunRecord, metrics: &[Metric]) {
    if record.ok {
        let json = serde_json::to_value(record).unwrap_or(Value::Null);
        eprintln!(
            "{tag} gfn: {} s, {}",
            report::fmt_num(record.process_wall_seconds.unwrap_or(f64::NAN), 1),
            progress_figures(metrics, &json)
        );
    } else {
        eprintln!("{tag} gfn FAILED: {}", record.error.as_deref().unwrap_or("?"));
    }
}

/// Runs `suite`; returns the results directory and whether every run succeeded.
pub fn run(request: BenchRequest, suite: Suite) -> Result<(PathBuf, bool)> {
    let layout = Layout::detect();
    let built = runner::gfn_for(&layout, &request.device, request.gfn_binary.as_deref())?;
    let now = Utc::now();
    let dir = results_dir(&layout, suite.name, &now)?;
    let ctx = Runs::new(&layout, &built, &dir, request.options.threads)?;
    let gfn_binary = binary_facts(&built);

    let mut peer_envs: Vec<(&PeerSpec, PeerEnv)> = Vec::new();
    let mut peer_statuses = Vec::new();
    for spec in request
        .vs
        .iter()
        .filter_map(|name| suite.peers.iter().find(|p| p.name == name))
    {
        let prepared = runner::prepare_peer(&layout, spec);
        peer_statuses.push(PeerStatus {
            name: spec.name.into(),
            available: prepared.is_ok(),
            reason: prepared.as_ref().err().cloned(),
            python: prepared.as_ref().ok().map(|env| env.python.display().to_string()),
        });
        match prepared {
            Ok(env) => {
                eprintln!("peer {}: {}", spec.name, env.python.display());
                peer_envs.push((spec, env));
            }
            Err(reason) => eprintln!("peer {} unavailable ({reason}): running without it", spec.name),
        }
    }

    let gfn_str = ctx.gfn.display().to_string();
    let mut session = Session {
        started: now.rfc3339(),
        finished: None,
        plan: suite.runs.clone(),
        versions: Versions {
            gfn: sysinfo::command_line(&layout.root, &gfn_str, &["--version"]),
            gfn_binary,
            rustc: sysinfo::command_line(&layout.root, "rustc", &["--version"]),
            cargo: sysinfo::command_line(&layout.root, "cargo", &["--version"]),
            peers: Default::default(),
        },
        machine: Machine::detect(),
        git: Git::detect(&layout.root),
        rss_method: ctx.probe.describe().into(),
        peers: peer_statuses,
        runs: Vec::new(),
        resumed: Vec::new(),
        request,
    };
    let total = suite.runs.len();
    let names: Vec<&str> = peer_envs.iter().map(|(p, _)| p.name).collect();
    eprintln!(
        "bench {}: {total} runs{}, results in {}",
        suite.name,
        if names.is_empty() {
            String::new()
        } else {
            format!(", each followed by {}", names.join(", "))
        },
        dir.display()
    );

    let all_ok = if peer_envs.is_empty() {
        let todo: Vec<usize> = (0..total).collect();
        let jobs = session.request.jobs;
        run_concurrently(&ctx, &dir, &suite, &mut session, &todo, jobs)?
    } else {
        let mut all_ok = true;
        for (i, spec) in suite.runs.iter().enumerate() {
            let tag = format!("[{}/{total}] {}", i + 1, spec.name);
            let mut record = run_ours(&ctx, spec);
            progress(&tag, &record, &suite.metrics);
            all_ok &= record.ok;
            let record_json = serde_json::to_value(&record)?;
            for (pspec, penv) in &peer_envs {
                if spec.peer_args.is_empty() || !(pspec.supports)(spec) {
                    continue;
                }
                let prec = run_peer(&ctx, penv, pspec, spec);
                all_ok &= prec.ok;
                if !prec.ok {
                    eprintln!("{tag} {} FAILED: {}", pspec.name, prec.error.as_deref().unwrap_or("?"));
                    record.peers.push(prec);
                    continue;
                }
                let prec_json = serde_json::to_value(&prec)?;
                if let Some(v) = prec.output.as_ref().and_then(|o| o.get("versions")) {
                    session
                        .versions
                        .peers
                        .entry(pspec.name.to_string())
                        .or_insert_with(|| v.clone());
                }
                let ratio = match (
                    crate::suite::peer_ms_per_iteration(&prec_json),
                    crate::suite::ours_ms_per_iteration(&record_json),
                ) {
                    (Some(theirs), Some(ours)) if ours > 0.0 => {
                        format!(
                            ", ms/it {}, ours/theirs speed {:.2}×",
                            report::fmt_num(theirs, 2),
                            theirs / ours
                        )
                    }
                    (Some(theirs), _) => format!(", ms/it {}", report::fmt_num(theirs, 2)),
                    _ => String::new(),
                };
                eprintln!(
                    "{tag} {}: {} s{ratio}, {}",
                    pspec.name,
                    report::fmt_num(prec.process_wall_seconds.unwrap_or(f64::NAN), 1),
                    progress_figures(&pspec.metrics, &prec_json)
                );
                record.peers.push(prec);
            }
            session.runs.push(record);
            // Rewritten after every run: an interrupted suite still leaves its figures.
            report::write(&dir, &suite, &session, false)?;
        }
        all_ok
    };
    ctx.finish(&dir, &suite, &mut session)?;
    point_latest(&dir)?;
    Ok((dir, all_ok))
}

/// Without peers: the planned runs at the indices `todo`, up to `jobs` at once, in plan order;
/// the report is rewritten after each finishes, with every finished run (those already in
/// `session` included) in plan order. Returns whether every planned run has succeeded.
fn run_concurrently(
    ctx: &Runs<'_>,
    dir: &Path,
    suite: &Suite,
    session: &mut Session,
    todo: &[usize],
    jobs: u32,
) -> Result<bool> {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let total = suite.runs.len();
    let mut slots: Vec<Option<RunRecord>> = vec![None; total];
    for record in session.runs.drain(..) {
        if let Some(i) = suite.runs.iter().position(|r| r.name == record.name) {
            slots[i] = Some(record);
        }
    }
    session.runs = slots.iter().flatten().cloned().collect();
    let next = AtomicUsize::new(0);
    // A report that cannot be written stops the suite: no run is started after it.
    let failed = AtomicBool::new(false);
    let done = Mutex::new(slots);
    let jobs = (jobs.max(1) as usize).min(todo.len().max(1));
    let shared = Mutex::new((&mut *session, Ok::<(), anyhow::Error>(())));
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| {
                while !failed.load(Ordering::SeqCst)
                    && let Some(&i) = todo.get(next.fetch_add(1, Ordering::SeqCst))
                {
                    let spec = &suite.runs[i];
                    let record = run_ours(ctx, spec);
                    progress(&format!("[{}/{total}] {}", i + 1, spec.name), &record, &suite.metrics);
                    let mut done = done.lock().unwrap_or_else(|e| e.into_inner());
                    done[i] = Some(record);
                    let mut guard = shared.lock().unwrap_or_else(|e| e.into_inner());
                    let (session, status) = &mut *guard;
                    session.runs = done.iter().flatten().cloned().collect();
                    if let Err(e) = report::write(dir, suite, session, false) {
                        failed.store(true, Ordering::SeqCst);
                        *status = Err(e);
                    }
                }
            });
        }
    });
    let (_, status) = shared.into_inner().unwrap_or_else(|e| e.into_inner());
    status?;
    Ok(session.runs.len() == total && session.runs.iter().all(|r| r.ok))
}

/// The indices of the planned runs that have no successful record yet.
pub fn missing_runs(session: &Session) -> Vec<usize> {
    session
        .plan
        .iter()
        .enumerate()
        .filter(|(_, spec)| !session.runs.iter().any(|r| r.ok && r.name == spec.name))
        .map(|(i, _)| i)
        .collect()
}

/// What a suite run still lacks, for its reports: `None` when every planned run has a record,
/// else `N of M planned runs have a record; still to run: GROUP (K of P runs), …` (groups in plan
/// order, K of the P runs the group plans).
pub fn runs_left(session: &Session) -> Option<String> {
    let missing = missing_runs(session);
    if missing.is_empty() {
        return None;
    }
    let mut groups: Vec<(&str, usize)> = Vec::new();
    for &i in &missing {
        let group = session.plan[i].group.as_str();
        match groups.iter_mut().find(|(g, _)| *g == group) {
            Some((_, k)) => *k += 1,
            None => groups.push((group, 1)),
        }
    }
    let groups: Vec<String> = groups
        .iter()
        .map(|(g, k)| {
            let planned = session.plan.iter().filter(|r| r.group == *g).count();
            format!("{g} ({k} of {planned} run{})", if planned == 1 { "" } else { "s" })
        })
        .collect();
    Some(format!(
        "{} of {} planned runs have a record; still to run: {}",
        session.plan.len() - missing.len(),
        session.plan.len(),
        groups.join(", ")
    ))
}

/// The session of a suite run in `dir` (its `results.json`) and its suite, planned as recorded.
fn load(dir: &Path) -> Result<(Session, Suite)> {
    let path = dir.join("results.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let session: Session =
        serde_json::from_str(&text).with_context(|| format!("{} is not a suite's results.json", path.display()))?;
    let mut suite = crate::suite::build(&session.request.suite, &session.request.options)
        .with_context(|| format!("unknown suite {} in {}", session.request.suite, path.display()))?;
    suite.runs = session.plan.clone();
    Ok((session, suite))
}

/// `cargo xtask resume DIR`: makes the planned runs of the suite run in DIR that have no
/// successful record (an interrupted or failed run starts again from scratch, its partial
/// directory removed), adds them to `results.json` in plan order, records the call under
/// `resumed`, and marks the run finished. Returns whether every planned run has now succeeded.
pub fn resume(dir: &Path, jobs: u32, command: String) -> Result<bool> {
    let (mut session, suite) = load(dir)?;
    let todo = missing_runs(&session);
    if todo.is_empty() {
        eprintln!(
            "{}: all {} planned runs already succeeded; nothing to do",
            dir.display(),
            session.plan.len()
        );
        return Ok(true);
    }
    let layout = Layout::detect();
    let built = runner::gfn_for(&layout, &session.request.device, session.request.gfn_binary.as_deref())?;
    for &i in &todo {
        let partial = dir.join("runs").join(&session.plan[i].name);
        if partial.exists() {
            std::fs::remove_dir_all(&partial).with_context(|| format!("cannot remove {}", partial.display()))?;
        }
    }
    let ctx = Runs::new(&layout, &built, dir, session.request.options.threads)?;
    let names: Vec<String> = todo.iter().map(|&i| session.plan[i].name.clone()).collect();
    eprintln!(
        "resume {}: {} of {} runs left ({}), results in {}",
        suite.name,
        todo.len(),
        session.plan.len(),
        names.join(", "),
        dir.display()
    );
    session.resumed.push(Resumption {
        at: Utc::now().rfc3339(),
        command,
        git: Git::detect(&layout.root),
        gfn_binary: binary_facts(&built),
        runs: names,
    });
    session.finished = None;
    let all_ok = run_concurrently(&ctx, dir, &suite, &mut session, &todo, jobs)?;
    ctx.finish(dir, &suite, &mut session)?;
    Ok(all_ok)
}

/// Runs `job`: its wall seconds and peak memory, and whether it succeeded (else why not, with
/// the tail of `log`).
fn execute(job: &Job, probe: &RssProbe, log: &Path) -> (Option<f64>, Option<f64>, Result<(), String>) {
    match runner::run_job(job, probe) {
        Err(e) => (None, None, Err(format!("{e:#}"))),
        Ok(done) => {
            let status = if done.status.success() {
                Ok(())
            } else {
                Err(format!("{}: {}", done.status, runner::log_tail(log, 3)))
            };
            (Some(done.wall_seconds), done.peak_rss_mb, status)
        }
    }
}

/// Makes one of our runs.
fn run_ours(ctx: &Runs<'_>, spec: &RunSpec) -> RunRecord {
    let out = ctx.runs_dir.join(&spec.name);
    let log = ctx.runs_dir.join(format!("{}.log", spec.name));
    let mut args = spec.gfn_args.clone();
    let run_dir = matches!(spec.output, Output::RunDir);
    if run_dir {
        args.extend(["--out".to_string(), out.display().to_string()]);
    }
    let mut command = vec![ctx.shown.display().to_string()];
    command.extend(args.iter().cloned());
    let job = Job {
        program: &ctx.gfn,
        args: &args,
        env: &ctx.env,
        cwd: &ctx.layout.root,
        stdout: &log,
        stderr: None,
    };
    let (process_wall_seconds, peak_rss_mb, status) = execute(&job, &ctx.probe, &log);
    let summary = status.and_then(|()| {
        if !run_dir {
            return last_json_line(&log).ok_or_else(|| format!("no JSON line on stdout ({})", log.display()));
        }
        let path = out.join("summary.json");
        std::fs::read_to_string(&path)
            .map_err(anyhow::Error::from)
            .and_then(|s| serde_json::from_str::<Value>(&s).map_err(anyhow::Error::from))
            .map_err(|e| format!("cannot read {}: {e}", path.display()))
    });
    RunRecord {
        name: spec.name.clone(),
        group: spec.group.clone(),
        row: spec.row.clone(),
        seed: spec.seed,
        command,
        ok: summary.is_ok(),
        curve: match &summary {
            Ok(v) if run_dir => our_curve(&out, v["batch_size"].as_f64()),
            _ => Vec::new(),
        },
        error: summary.as_ref().err().cloned(),
        process_wall_seconds,
        peak_rss_mb,
        summary: summary.ok(),
        peers: Vec::new(),
    }
}

/// Makes the peer's counterpart of one run.
fn run_peer(ctx: &Runs<'_>, penv: &PeerEnv, pspec: &PeerSpec, spec: &RunSpec) -> PeerRecord {
    let name = pspec.name;
    let stdout = ctx.runs_dir.join(format!("{}.{name}.json", spec.name));
    let stderr = ctx.runs_dir.join(format!("{}.{name}.log", spec.name));
    let mut args = vec![penv.driver.display().to_string()];
    args.extend(spec.peer_args.iter().cloned());
    let mut command = vec![penv.python.display().to_string()];
    command.extend(args.iter().cloned());
    let job = Job {
        program: &penv.python,
        args: &args,
        env: &ctx.env,
        cwd: &ctx.layout.root,
        stdout: &stdout,
        stderr: Some(&stderr),
    };
    let (process_wall_seconds, peak_rss_mb, status) = execute(&job, &ctx.probe, &stderr);
    let output = status
        .and_then(|()| last_json_line(&stdout).ok_or_else(|| format!("no JSON line on stdout ({})", stdout.display())));
    PeerRecord {
        name: name.into(),
        command,
        ok: output.is_ok(),
        error: output.as_ref().err().cloned(),
        process_wall_seconds,
        peak_rss_mb,
        curve: output.as_ref().map(peer_curve).unwrap_or_default(),
        output: output.ok(),
    }
}

/// The last non-empty line of a file, parsed as a JSON object.
fn last_json_line(path: &Path) -> Option<Value> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().rev().find(|l| !l.trim().is_empty())?;
    serde_json::from_str::<Value>(line).ok().filter(Value::is_object)
}

/// Our run's curve: `metrics.jsonl` joined with the training seconds of `timing.json`. A line
/// without `trajectories` (an EBM run's) counts `iteration × batch_size` (from `summary.json`)
/// trajectories; without either it is left out.
fn our_curve(run: &Path, batch_size: Option<f64>) -> Vec<CurvePoint> {
    // Both kinds of run's timing.json have `evals`; the GFlowNet run's `Timing` reads either.
    let timing: Timing = std::fs::read_to_string(run.join("timing.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let seconds_at = |it: u64| timing.evals.iter().find(|e| e.iteration == it).map(|e| e.wall_seconds);
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| {
            let iteration = v["iteration"].as_u64()?;
            Some(CurvePoint {
                iteration,
                trajectories: v["trajectories"]
                    .as_f64()
                    .or_else(|| batch_size.map(|b| iteration as f64 * b))?,
                seconds: seconds_at(iteration).unwrap_or(f64::NAN),
                l1_sum: v.pointer("/exact/l1_sum").and_then(Value::as_f64),
                tv: v.pointer("/exact/tv").and_then(Value::as_f64),
                modes_found: v["modes_found"].as_f64(),
                top_k: serde_json::from_value(v["top_k"].clone()).ok(),
                recent: serde_json::from_value(v["recent"].clone()).ok(),
                ebm: serde_json::from_value(v.clone()).ok(),
            })
        })
        .collect()
}

/// A peer's curve from its driver's `evals`; its compile time counts as training time.
fn peer_curve(output: &Value) -> Vec<CurvePoint> {
    let batch = output
        .pointer("/config/batch_size")
        .and_then(Value::as_f64)
        .unwrap_or(f64::NAN);
    let compile = output["compile_seconds"].as_f64().unwrap_or(0.0);
    output["evals"]
        .as_array()
        .map(|evals| {
            evals
                .iter()
                .filter_map(|e| {
                    let iteration = e["iteration"].as_u64()?;
                    Some(CurvePoint {
                        iteration,
                        trajectories: iteration as f64 * batch,
                        seconds: e["wall_seconds"].as_f64().map_or(f64::NAN, |w| w + compile),
                        l1_sum: e["l1_sum"].as_f64(),
                        tv: e["tv"].as_f64(),
                        ..Default::default()
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `cargo xtask rerender DIR`: rewrites `results.md`, `results.json` and the plots of an
/// earlier suite run from its `results.json`, with the current tables and plots.
pub fn rerender(dir: &Path) -> Result<()> {
    let (session, suite) = load(dir)?;
    report::write(dir, &suite, &session, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A session of the hypergrid suite planned as runs `a`, `b`, `c`, with `a` done, `b` failed
    /// and `c` never started.
    fn interrupted_session() -> Session {
        let spec = |name: &str| {
            serde_json::json!({"name": name, "group": "g", "row": name, "seed": 0,
                "gfn_args": ["train"], "peer_args": [], "output": "RunDir"})
        };
        let record = |name: &str, ok: bool| {
            serde_json::json!({"name": name, "group": "g", "row": name, "seed": 0, "command": ["gfn"],
                "ok": ok, "error": null, "process_wall_seconds": null, "peak_rss_mb": null,
                "summary": null, "curve": [], "peers": []})
        };
        serde_json::from_value(serde_json::json!({
            "request": {"suite": "hypergrid", "options": {"quick": true, "seeds": 1, "threads": 1}, "vs": [], "command": "cargo xtask bench hypergrid"},
            "started": "then", "finished": null, "plan": [spec("a"), spec("b"), spec("c")],
            "versions": {"peers": {}}, "machine": {}, "git": {}, "rss_method": "none", "peers": [],
            "runs": [record("a", true), record("b", false)]
        }))
        .unwrap()
    }

    #[test]
    fn resume_makes_the_runs_without_a_successful_record() {
        let mut session = interrupted_session();
        assert_eq!(missing_runs(&session), vec![1, 2]);
        assert!(
            session.resumed.is_empty(),
            "an old results.json reads with no resumptions"
        );
        session.resumed.push(Resumption {
            at: "now".into(),
            command: "cargo xtask resume DIR".into(),
            git: Git {
                commit: Some("0123456789abcdef".into()),
                dirty: Some(false),
            },
            gfn_binary: None,
            runs: vec!["b".into(), "c".into()],
        });
        let suite = crate::suite::build("hypergrid", &session.request.options).unwrap();
        // Stopped after making b: the report names b only; c is still missing.
        session.runs[1].ok = true;
        let md = report::markdown(&suite, &session, &[], false);
        assert!(
            md.contains("Completed by `cargo xtask resume DIR` at now (gfn at commit 0123456789): b.\n"),
            "{md}"
        );
        assert!(
            md.contains("2 of 3 planned runs have a record; still to run: g (1 of 3 runs)"),
            "{md}"
        );
        // A second resume makes c: each resume is credited with what it made.
        let mut second = session.resumed[0].clone();
        (second.at, second.runs) = ("later".into(), vec!["c".into()]);
        session.resumed.push(second);
        let mut c = session.runs[1].clone();
        c.name = "c".into();
        session.runs.push(c);
        let md = report::markdown(&suite, &session, &[], true);
        assert!(md.contains("at now (gfn at commit 0123456789): b.\n"), "{md}");
        assert!(md.contains("at later (gfn at commit 0123456789): c.\n"), "{md}");
        let back: Session = serde_json::from_value(serde_json::to_value(&session).unwrap()).unwrap();
        assert_eq!(back.resumed[0].runs, ["b", "c"]);
    }

    #[test]
    fn reads_ebm_metrics_records() {
        let dir = std::env::temp_dir().join(format!("xtask-curve-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let lines = [
            r#"{"iteration":100,"ebm_loss":-0.5,"gfn_loss":3.0,"acceptance":0.25,"k":1,"log_z":{"value":10.0,"std_err":0.1,"n":1000},"ebm_nll":{"value":20.5,"std_err":0.05,"n":4000},"log_z_uniform":{"value":10.2,"std_err":0.3,"n":1000},"ebm_nll_uniform":{"value":20.7,"std_err":0.06,"n":4000},"gfn_nll":{"value":21.0,"std_err":0.04,"n":500},"mmd_e4":3.5,"neg_log_rmse":null}"#,
            r#"{"iteration":200,"ebm_loss":null,"gfn_loss":null,"acceptance":null,"k":null,"log_z":null,"ebm_nll":null,"log_z_uniform":null,"ebm_nll_uniform":null,"gfn_nll":null,"mmd_e4":null,"neg_log_rmse":4.2}"#,
            "not json",
        ];
        std::fs::write(dir.join("metrics.jsonl"), lines.join("\n")).unwrap();
        std::fs::write(
            dir.join("timing.json"),
            r#"{"iteration":200,"wall_seconds":9.0,"evals":[{"iteration":100,"wall_seconds":4.5},{"iteration":200,"wall_seconds":9.0}]}"#,
        )
        .unwrap();
        let curve = our_curve(&dir, Some(128.0));
        assert_eq!(curve.len(), 2);
        assert_eq!(
            (curve[0].iteration, curve[0].trajectories, curve[0].seconds),
            (100, 12800.0, 4.5)
        );
        let e = curve[0].ebm.unwrap();
        assert_eq!(
            (e.ebm_loss, e.acceptance, e.k, e.mmd_e4),
            (-0.5, Some(0.25), Some(1), Some(3.5))
        );
        assert_eq!(
            e.ebm_nll_uniform,
            Some(gfn_record::Estimate {
                value: 20.7,
                std_err: 0.06,
                n: 4000
            })
        );
        assert_eq!(e.gfn_nll.map(|g| g.value), Some(21.0));
        assert_eq!(e.neg_log_rmse, None);
        let e = curve[1].ebm.unwrap();
        assert_eq!(e.neg_log_rmse, Some(4.2));
        assert!(e.ebm_loss.is_nan());
        assert_eq!((e.ebm_nll, e.gfn_nll), (None, None));
        // Round trip through results.json.
        let back: Vec<CurvePoint> = serde_json::from_value(serde_json::to_value(&curve).unwrap()).unwrap();
        assert_eq!(back[0].ebm, curve[0].ebm);
        // Without a batch size there is no trajectory count: the points are left out.
        assert!(our_curve(&dir, None).is_empty());
        // A hypergrid line keeps its own trajectories and has no EBM figures.
        std::fs::write(
            dir.join("metrics.jsonl"),
            r#"{"iteration":100,"trajectories":1600,"exact":{"l1_sum":0.5,"tv":0.25}}"#,
        )
        .unwrap();
        let curve = our_curve(&dir, Some(128.0));
        assert_eq!((curve[0].trajectories, curve[0].l1_sum), (1600.0, Some(0.5)));
        assert!(curve[0].ebm.is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
