//! End-to-end tests of the `gfn` command and the training loop: trained samplers reach the
//! target by exact evaluation, runs are bit-reproducible and resumable, bad input gets a clear
//! one-line error with exit code 2.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::Device;
use gfn::config::TrainConfig;
use gfn::train::EvalRecord;
use gfn::train::Trainer;
use gfn_cli::driver::{Silent, read_metrics, run};
use gfn_cli::run_dir::RunDir;

fn gfn(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gfn"))
        .args(args)
        .env("RAYON_NUM_THREADS", "1")
        .output()
        .expect("run gfn")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gfn-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A bad invocation: exit code 2 and one error line that contains every `needles`.
fn assert_usage_error(args: &[&str], needles: &[&str]) {
    let o = gfn(args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{args:?} should exit 2; stderr: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        lines.iter().any(|l| l.starts_with("error")),
        "{args:?}: no error line in {err}"
    );
    for n in needles {
        assert!(err.contains(n), "{args:?}: error {err:?} should mention {n:?}");
    }
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
}

/// A small training run: 2×5 hypergrid unless `extra` names another env (the grid's options
/// are then left out: gfn refuses options that have no effect).
fn small(dir: &Path, extra: &[&str]) -> Vec<String> {
    let other_env = extra.windows(2).any(|w| w[0] == "--env" && w[1] != "hypergrid");
    let grid: &[&str] = if other_env {
        &[]
    } else {
        &["--ndim", "2", "--height", "5"]
    };
    let mut v: Vec<String> = ["train"]
        .iter()
        .chain(grid)
        .chain(&["--hidden", "32", "--eval-every", "50", "--out"])
        .map(|s| s.to_string())
        .collect();
    v.push(dir.display().to_string());
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// Two runs' bit-reproducible files (`metrics.jsonl`, the checkpoint, `config.toml`) are the
/// same bytes; `what` names the case in the failure.
fn assert_same_run(what: &str, a: &Path, b: &Path) {
    for f in ["metrics.jsonl", "checkpoint.safetensors", "config.toml"] {
        assert_eq!(
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
            "{what}: {f} differs"
        );
    }
}

fn run_ok(args: &[String]) -> Output {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = gfn(&a);
    assert!(o.status.success(), "{a:?} failed: {}", stderr(&o));
    o
}

/// On a small set task (every partial set has an energy), DB and its forward-looking form FL-DB
/// both learn the target distribution.
#[test]
fn forward_looking_db_learns_a_small_set_task() {
    use gfn::environments::SetEnv;
    let energies = vec![0.6, -0.4, 0.9, 0.0, -0.8, 0.3];
    for loss in ["db", "fl-db", "fl-subtb", "led-db", "led-subtb"] {
        let env = SetEnv::with_energies(energies.clone(), 3).unwrap();
        let config = TrainConfig {
            loss: loss.parse().unwrap(),
            hidden: 64,
            iterations: 800,
            eval_every: 100,
            ..TrainConfig::default()
        };
        let dir = tmp(&format!("set-{loss}"));
        let mut t = Trainer::with_env(config, Box::new(env), &Device::Cpu).unwrap();
        let summary = run(&mut t, &RunDir::new(&dir), &mut Silent).unwrap();
        let tv = summary["exact_last5_mean"]["tv"].as_f64().unwrap();
        eprintln!("{loss}: exact TV {tv}");
        assert!(tv < 0.05, "{loss}: exact TV {tv} on the 3-of-6 set task");
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A sampler trained on a small hypergrid reaches the target distribution, for every objective.
#[test]
fn trained_samplers_reach_the_target() {
    for (loss, iterations) in [
        ("tb", 1500),
        ("db", 1500),
        ("subtb", 1500),
        ("fm", 1500),
        ("fl-db", 1500),
        ("fl-subtb", 1500),
        ("mdb", 1500),
        ("vi", 1500),
    ] {
        let config = TrainConfig {
            iterations,
            ..grid_2x6(loss)
        };
        let (t, summary) = train_small(&format!("target-{loss}"), config);
        let tv = summary["exact_last5_mean"]["tv"].as_f64().unwrap();
        let first_tv = t.history[0].exact.unwrap().dist.tv;
        assert!(
            tv < 0.05,
            "{loss}: exact TV {tv} after {iterations} iterations (first evaluation {first_tv})"
        );
        assert!(tv < first_tv / 2.0, "{loss}: TV did not fall ({first_tv} → {tv})");
        let log_z_error = summary["log_z"]["error"].as_f64().unwrap();
        assert!(log_z_error < 0.1, "{loss}: |log Ẑ − log Z| = {log_z_error}");
    }
}

/// Graph building (issue 20): typed graphs of up to 4 nodes (2 node types, undirected; 2,197
/// states) and directed acyclic graphs of up to 3 nodes with 2 edge types, each trained with TB and
/// DB through `gfn train --env graph-building`, with the MLP and with the GIN (graph head for
/// the node types and stop, pair head for the typed edges), reach the exact target (TV < 0.05
/// over the last 5 evaluations, log Z within 0.1).
#[test]
fn graph_building_trains_to_the_target() {
    for (directed, nodes, edge_types, policy) in [
        (false, 4, 1, "mlp"),
        (true, 3, 2, "mlp"),
        (false, 4, 1, "gin"),
        (true, 3, 2, "gin"),
    ] {
        for loss in ["tb", "db"] {
            let (hidden, layers, iterations) = if policy == "gin" { (32, 3, 4000) } else { (64, 2, 2000) };
            let config = TrainConfig {
                env: "graph-building".parse().unwrap(),
                graph_nodes: nodes,
                graph_edge_types: edge_types,
                graph_directed: directed,
                graph_acyclic: directed,
                policy: policy.parse().unwrap(),
                hidden,
                layers,
                loss: loss.parse().unwrap(),
                iterations,
                eval_every: 200,
                ..TrainConfig::default()
            };
            let untrained = Trainer::new(config.clone(), &Device::Cpu).unwrap().evaluate().unwrap();
            let first_tv = untrained.exact.unwrap().dist.tv;
            let (_, summary) = train_small(&format!("graphs-{policy}-{loss}-{directed}"), config);
            let tv = summary["exact_last5_mean"]["tv"].as_f64().unwrap();
            let case = format!("{policy} {loss} directed {directed}");
            assert!(tv < 0.05, "{case}: TV {tv} (untrained {first_tv})");
            assert!(tv < first_tv / 2.0, "{case}: TV did not fall ({first_tv} → {tv})");
            let log_z_error = summary["log_z"]["error"].as_f64().unwrap();
            assert!(log_z_error < 0.1, "{case}: |log Ẑ − log Z| = {log_z_error}");
        }
    }
}

/// `gfn train --env mis --policy gin` end to end on a few reduced RB graphs: the task reports the
/// average sampled set size on the test graphs beside greedy and the proven optimum (sizes
/// ordered as they must be: every sampled set is independent and maximal, so at most the
/// optimum), and a resumed run (β's anneal follows the trajectories, restored) ends
/// byte-identical to an uninterrupted one.
#[test]
fn mis_runs_report_their_references_and_resume() {
    let args = |out: &Path, n: &str| -> Vec<String> {
        [
            "train",
            "--env",
            "mis",
            "--policy",
            "gin",
            "--hidden",
            "16",
            "--layers",
            "2",
            "--loss",
            "fl-db",
            "--mis-train",
            "40",
            "--mis-test",
            "6",
            "--mis-samples",
            "4",
            "--beta-end",
            "5",
            "--beta-anneal",
            "320",
            "--updates-per-batch",
            "2",
            "--iterations",
            n,
            "--eval-every",
            "10",
            "--out",
            out.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec()
    };
    let (full, part) = (tmp("mis-full"), tmp("mis-part"));
    run_ok(&args(&full, "30"));
    run_ok(&args(&part, "20"));
    let o = gfn(&["train", "--resume", part.to_str().unwrap(), "--iterations", "30"]);
    assert!(o.status.success(), "resume failed: {}", stderr(&o));
    assert_same_run("mis", &full, &part);
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(full.join("summary.json")).unwrap()).unwrap();
    let task = |k: &str| {
        summary["task"][k]
            .as_f64()
            .unwrap_or_else(|| panic!("task.{k} in {summary}"))
    };
    assert_eq!(task("test_graphs"), 6.0);
    assert_eq!(task("optimum_proven"), 6.0);
    let (size, best, greedy, optimum) = (
        task("mis_size"),
        task("mis_size_best"),
        task("greedy_size"),
        task("optimum_size"),
    );
    assert!(
        1.0 <= size && size <= best && best <= optimum,
        "{size} {best} {optimum}"
    );
    assert!(greedy <= optimum, "{greedy} {optimum}");
    let gap = task("gap_percent");
    assert!((gap - 100.0 * (optimum - size) / optimum).abs() < 1e-9);
    let _ = std::fs::remove_dir_all(full);
    let _ = std::fs::remove_dir_all(part);
}

/// Hypergrid 2×6 with an MLP 2×64, 1,500 iterations, exact evaluation every 100.
fn grid_2x6(loss: &str) -> TrainConfig {
    TrainConfig {
        ndim: 2,
        height: 6,
        hidden: 64,
        loss: loss.parse().unwrap(),
        iterations: 1500,
        eval_every: 100,
        ..TrainConfig::default()
    }
}

/// Train `config` in a scratch directory named `name` (removed afterwards); the trainer and
/// its summary.
fn train_small(name: &str, config: TrainConfig) -> (Trainer, serde_json::Value) {
    let dir = tmp(name);
    let mut t = Trainer::new(config, &Device::Cpu).unwrap();
    let summary = run(&mut t, &RunDir::new(&dir), &mut Silent).unwrap();
    let _ = std::fs::remove_dir_all(dir);
    (t, summary)
}

/// The same seed and configuration give the same bits; the RNG is the library's own.
#[test]
fn runs_are_bit_reproducible() {
    let (a, b) = (tmp("repro-a"), tmp("repro-b"));
    run_ok(&small(&a, &["--iterations", "120", "--loss", "subtb"]));
    run_ok(&small(&b, &["--iterations", "120", "--loss", "subtb"]));
    assert_same_run("runs", &a, &b);
    let c = tmp("repro-c");
    run_ok(&small(&c, &["--iterations", "120", "--loss", "subtb", "--seed", "1"]));
    assert_ne!(
        std::fs::read(a.join("metrics.jsonl")).unwrap(),
        std::fs::read(c.join("metrics.jsonl")).unwrap()
    );
    for d in [a, b, c] {
        let _ = std::fs::remove_dir_all(d);
    }
}

fn summary_without_timing(dir: &Path) -> serde_json::Value {
    let mut s: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("summary.json")).unwrap()).unwrap();
    for k in [
        "wall_seconds",
        "trajectories_per_second",
        "iterations_per_second",
        "useful_gflops_per_second",
        "metric_seconds",
        "led",
    ] {
        s.as_object_mut().unwrap().remove(k);
    }
    s
}

/// TB and FM trained with replayed objects (reward-prioritised, re-sampled backward with P_B) beside
/// its on-policy batches reaches the target.
#[test]
fn replay_trains_to_the_target() {
    for loss in ["tb", "fm"] {
        let config = TrainConfig {
            replay_size: 256,
            replay_batch: 8,
            replay_priority: gfn::replay::Priority::Reward,
            ..grid_2x6(loss)
        };
        let (t, summary) = train_small(&format!("target-replay-{loss}"), config);
        let tv = summary["exact_last5_mean"]["tv"].as_f64().unwrap();
        assert!(tv < 0.05, "{loss} with replay: exact TV {tv}");
        assert_eq!(
            t.replay.as_ref().unwrap().len(),
            256,
            "the buffer fills to its capacity"
        );
    }
}

/// TB and FM with local search on an environment with an exit action (hypergrid: back 2 steps with
/// P_B, forward with P_F until it exits, kept greedily) reaches the target.
#[test]
fn local_search_with_an_exit_action_trains_to_the_target() {
    for loss in ["tb", "fm"] {
        let config = TrainConfig {
            local_search: 2,
            ..grid_2x6(loss)
        };
        let (_, summary) = train_small(&format!("target-local-search-{loss}"), config);
        let tv = summary["exact_last5_mean"]["tv"].as_f64().unwrap();
        assert!(tv < 0.05, "{loss} with local search: exact TV {tv}");
    }
}

/// Issue 6's bar: every policy-gradient variant (uniform, trained and guided P_B) reaches exact
/// TV ≤ 0.1 on hypergrid 2×8 within 1,500 iterations (batch 16, MLP 2×64).
#[test]
fn policy_gradient_variants_reach_the_target() {
    for loss in ["pg-u", "pg-b", "pg-g", "pg-trpo"] {
        let config = TrainConfig {
            ndim: 2,
            height: 8,
            loss: loss.parse().unwrap(),
            // The trust-region step moves the P_F network alone.
            shared_trunk: loss != "pg-trpo",
            hidden: 64,
            iterations: 1500,
            eval_every: 100,
            ..TrainConfig::default()
        };
        let dir = tmp(&format!("target-{loss}"));
        // The untrained policy's TV, from a twin trainer evaluated before any step (pg-trpo is
        // already near its noise floor at the first periodic evaluation).
        let first_tv = Trainer::new(config.clone(), &Device::Cpu)
            .unwrap()
            .evaluate()
            .unwrap()
            .exact
            .unwrap()
            .dist
            .tv;
        let mut t = Trainer::new(config, &Device::Cpu).unwrap();
        let summary = run(&mut t, &RunDir::new(&dir), &mut Silent).unwrap();
        let tv = summary["exact_last5_mean"]["tv"].as_f64().unwrap();
        assert!(
            tv <= 0.1,
            "{loss}: exact TV {tv} after 1,500 iterations (untrained {first_tv})"
        );
        assert!(tv < first_tv / 2.0, "{loss}: TV did not fall ({first_tv} → {tv})");
        let log_z_error = summary["log_z"]["error"].as_f64().unwrap();
        assert!(log_z_error < 0.1, "{loss}: |log Ẑ − log Z| = {log_z_error}");
        if loss == "pg-trpo" {
            let steps = summary["trust_region"]["steps"].as_u64().unwrap();
            let rejected = summary["trust_region"]["rejected"].as_u64().unwrap();
            assert_eq!(steps, 1500);
            assert!(
                rejected < steps / 2,
                "{rejected} of {steps} trust-region steps rejected"
            );
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A run stopped early and resumed ends with the same files as the uninterrupted run (timing
/// fields of summary.json aside), including a stop at an iteration that is not an evaluation step.
/// LED's potential network, its Adam state and its replay buffer (here full and wrapping) are in
/// the checkpoint, as are the measurement samples' RNG and window.
#[test]
fn resume_reproduces_the_uninterrupted_run() {
    for (loss, extra) in [
        ("tb", &[][..]),
        ("fm", &[][..]),
        ("pg-g", &["--shared-trunk", "false"][..]),
        ("pg-trpo", &["--shared-trunk", "false"][..]),
        ("subtb", &["--replay-size", "64", "--replay-priority", "reward"][..]),
        (
            "db",
            &[
                "--env",
                "bitseq",
                "--bitseq-length",
                "24",
                "--bitseq-word",
                "4",
                "--local-search",
                "2",
                "--local-search-accept",
                "mh",
            ][..],
        ),
        (
            "led-subtb",
            &["--led-buffer", "7", "--metric-batch", "8", "--recent-window", "50"][..],
        ),
    ] {
        let args = |n: &'static str| [&["--iterations", n, "--loss", loss][..], extra].concat();
        let full = tmp(&format!("full-{loss}"));
        run_ok(&small(&full, &args("200")));
        let part = tmp(&format!("part-{loss}"));
        run_ok(&small(&part, &args("130")));
        let o = gfn(&["train", "--resume", part.to_str().unwrap(), "--iterations", "200"]);
        assert!(o.status.success(), "resume failed: {}", stderr(&o));
        assert_same_run(loss, &full, &part);
        assert_eq!(summary_without_timing(&full), summary_without_timing(&part));
        let summary: serde_json::Value =
            serde_json::from_slice(&std::fs::read(part.join("summary.json")).unwrap()).unwrap();
        if loss.starts_with("led") {
            assert!(summary["led"]["fraction_of_training"].as_f64().unwrap() > 0.0);
            assert_eq!(summary["recent"]["samples"], 50);
        }
        let _ = std::fs::remove_dir_all(full);
        let _ = std::fs::remove_dir_all(part);
    }
}

/// `updates_per_batch`: four updates on each sampled batch take DB on the 2×6 grid far closer to
/// the target in 300 iterations than one (exact TV 0.001 against 0.041 at seed 0), and the tape
/// engine (whose extra updates go through candle's graph) agrees with the graph engine.
#[test]
fn several_updates_per_batch_learn_faster() {
    let tv = |k: usize, engine: &str| {
        let config = TrainConfig {
            iterations: 300,
            updates_per_batch: k,
            engine: engine.parse().unwrap(),
            ..grid_2x6("db")
        };
        let (_, summary) = train_small(&format!("updates-{k}-{engine}"), config);
        summary["exact"]["tv"].as_f64().unwrap()
    };
    let (one, four) = (tv(1, "tape"), tv(4, "tape"));
    assert!(one > 0.02 && four < 0.01, "TV with 1 update {one}, with 4 {four}");
    // The engines round differently (the tape's first update is its own), nothing more.
    let graph = tv(4, "graph");
    assert!((four - graph).abs() < 1e-4, "tape {four} vs graph {graph}");
}

/// A conditional GFlowNet (issue 20): one TB model on the 4×8 hypergrid trained over reward
/// exponents β ∈ [0.5, 2] reaches exact TV ≤ 0.05 to `R^β / Z(β)` at β = 0.5, 1 and 2, its
/// `log Z(β) = log F(s_0(β))` within 0.15 of the truth at each; and a resumed conditional run
/// ends byte-identical to an uninterrupted one (the conditions are drawn from the run's RNG).
#[test]
fn a_conditional_gflownet_matches_every_temperature() {
    let dir = tmp("conditional");
    let args: Vec<String> = [
        "train",
        "--env",
        "hypergrid",
        "--ndim",
        "4",
        "--height",
        "8",
        "--loss",
        "tb",
        "--condition",
        "beta=0.5..2",
        "--iterations",
        "20000",
        "--eval-every",
        "5000",
        "--out",
        dir.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec();
    run_ok(&args);
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("summary.json")).unwrap()).unwrap();
    let conditions = summary["conditions"].as_array().expect("per-condition metrics");
    let labels: Vec<&str> = conditions.iter().map(|c| c["label"].as_str().unwrap()).collect();
    assert_eq!(labels, ["beta=0.5", "beta=1", "beta=2"]);
    let mut true_log_z = Vec::new();
    for c in conditions {
        let tv = c["tv"].as_f64().unwrap();
        let (learned, truth) = (
            c["log_z"]["learned"].as_f64().unwrap(),
            c["log_z"]["true"].as_f64().unwrap(),
        );
        assert!(tv <= 0.05, "{}: TV {tv}", c["label"]);
        assert!(
            (learned - truth).abs() < 0.15,
            "{}: log Z {learned} vs {truth}",
            c["label"]
        );
        true_log_z.push(truth);
    }
    // The three targets differ: log Z(β) = log Σ R^β falls from 7.26 to 5.45.
    assert!(true_log_z[0] - true_log_z[2] > 1.0, "{true_log_z:?}");
    let _ = std::fs::remove_dir_all(&dir);

    let resume_args = |out: &Path, n: &str| {
        small(
            out,
            &[
                "--loss",
                "db",
                "--condition",
                "beta=0.5..2",
                "--eval-conditions",
                "0.5;2",
                "--iterations",
                n,
            ],
        )
    };
    let (full, part) = (tmp("conditional-full"), tmp("conditional-part"));
    run_ok(&resume_args(&full, "200"));
    run_ok(&resume_args(&part, "130"));
    let o = gfn(&["train", "--resume", part.to_str().unwrap(), "--iterations", "200"]);
    assert!(o.status.success(), "resume failed: {}", stderr(&o));
    assert_same_run("conditional", &full, &part);
    let metrics = std::fs::read_to_string(full.join("metrics.jsonl")).unwrap();
    assert!(metrics.contains("\"label\":\"beta=2\""), "{metrics}");
    let _ = std::fs::remove_dir_all(full);
    let _ = std::fs::remove_dir_all(part);
}

/// A GIN conditioned on the problem instance (issue 20): one policy trained over three small
/// graphs of the maximum-independent-set task (β = 1, so every maximal independent set keeps
/// mass) matches each graph's exact target `p(I | G) ∝ e^{|I|}` (TV ≤ 0.05 on every graph, its
/// `log Z(G) = log F(s_0(G))` within 0.15), with TB and with DB; the untrained GIN does not.
#[test]
fn a_gin_conditioned_on_the_graph_matches_every_instance() {
    use gfn::environments::mis::{Anneal, MisEnv};
    use gfn::environments::mis_graphs::Graph;
    let path = Graph::new(6, &[(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]).unwrap();
    let chorded = Graph::new(7, &[(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 6), (6, 0), (0, 3)]).unwrap();
    let star = Graph::new(6, &[(0, 1), (0, 2), (0, 3), (0, 4), (4, 5)]).unwrap();
    let graphs = vec![path, chorded, star];
    for (loss, iterations) in [("tb", 1500), ("db", 3000)] {
        let env = MisEnv::new(graphs.clone(), Vec::new(), Anneal::constant(1.0)).unwrap();
        let config = TrainConfig {
            policy: "gin".parse().unwrap(),
            hidden: 32,
            layers: 3,
            loss: loss.parse().unwrap(),
            iterations,
            eval_every: iterations,
            eval_conditions: "0;1;2".parse().unwrap(),
            ..TrainConfig::default()
        };
        let mut t = Trainer::with_env(config, Box::new(env), &Device::Cpu).unwrap();
        let before = t.evaluate().unwrap();
        let worst_before = before.conditions.iter().map(|c| c.exact.dist.tv).fold(0.0, f64::max);
        assert!(worst_before > 0.1, "{loss}: untrained TV {worst_before}");
        for _ in 0..iterations {
            t.step().unwrap();
        }
        let after = t.evaluate().unwrap();
        assert_eq!(after.conditions.len(), 3);
        for c in &after.conditions {
            eprintln!(
                "{loss} {}: TV {:.4} log Z error {:.4}",
                c.label, c.exact.dist.tv, c.exact.log_z_error
            );
        }
        for c in &after.conditions {
            assert!(c.exact.dist.tv <= 0.05, "{loss} {}: TV {}", c.label, c.exact.dist.tv);
            assert!(
                c.exact.log_z_error < 0.1,
                "{loss} {}: log Z error {}",
                c.label,
                c.exact.log_z_error
            );
        }
    }
}

/// Bit sequences and Bayesian networks report their own figures (`task` in `metrics.jsonl` and
/// `summary.json`), and a resumed bit-sequence run (its modes-found flags in the checkpoint)
/// ends byte-identical to an uninterrupted one.
#[test]
fn task_metrics_are_reported_and_resume() {
    let bits = [
        "--env",
        "bitseq",
        "--bitseq-length",
        "24",
        "--bitseq-word",
        "4",
        "--bitseq-order",
        "fill",
    ];
    let args = |n: &'static str| [&bits[..], &["--iterations", n, "--loss", "pg-b"][..]].concat();
    let full = tmp("task-full");
    run_ok(&small(&full, &args("80")));
    let part = tmp("task-part");
    run_ok(&small(&part, &args("55")));
    let o = gfn(&["train", "--resume", part.to_str().unwrap(), "--iterations", "80"]);
    assert!(o.status.success(), "resume failed: {}", stderr(&o));
    for f in ["metrics.jsonl", "checkpoint.safetensors"] {
        assert_eq!(
            std::fs::read(full.join(f)).unwrap(),
            std::fs::read(part.join(f)).unwrap(),
            "bitseq: {f} differs after resume"
        );
    }
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(full.join("summary.json")).unwrap()).unwrap();
    let task = &summary["task"];
    assert_eq!(task["modes"], 60.0);
    // 24-bit sequences all lie within δ = 30 of every mode: every mode counts as found.
    assert_eq!(task["modes_found"], 60.0, "{task}");
    let read = |d: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(d.join("summary.json")).unwrap()).unwrap()
    };
    // The test-set Spearman of a trained policy against the untrained one (same seed): measured
    // −0.16 after 1 iteration and 0.91 after 400 (TB).
    let spearman = |n: &'static str| -> f64 {
        let d = tmp(&format!("task-rho-{n}"));
        run_ok(&small(
            &d,
            &[&bits[..], &["--iterations", n, "--loss", "tb"][..]].concat(),
        ));
        let rho = read(&d)["task"]["test_spearman"].as_f64().unwrap();
        let _ = std::fs::remove_dir_all(d);
        rho
    };
    let (untrained, trained) = (spearman("1"), spearman("400"));
    assert!(
        trained > 0.8 && trained > untrained + 0.5,
        "test Spearman {untrained} → {trained}"
    );

    // Bayesian network on 3 nodes (25 DAGs, exact): the posterior's figures are the same for an
    // untrained and a trained policy; the policy's expected SHD moves to the posterior's
    // (measured: 1.953 after 1 iteration, 1.619 after 300, posterior 1.621) and its TV drops
    // (0.384 → 0.148).
    let bn_run = |n: &'static str| -> serde_json::Value {
        let d = tmp(&format!("task-bn-{n}"));
        run_ok(&small(
            &d,
            &[
                "--env",
                "bayesnet",
                "--bn-nodes",
                "3",
                "--iterations",
                n,
                "--loss",
                "tb",
            ],
        ));
        let s = read(&d);
        let _ = std::fs::remove_dir_all(d);
        s
    };
    let (before, after) = (bn_run("1"), bn_run("300"));
    for k in ["posterior_expected_shd", "posterior_edge_auroc"] {
        assert_eq!(
            before["task"][k], after["task"][k],
            "{k} is a property of the posterior"
        );
    }
    let gap = |s: &serde_json::Value| {
        (s["task"]["expected_shd"].as_f64().unwrap() - s["task"]["posterior_expected_shd"].as_f64().unwrap()).abs()
    };
    assert!(
        gap(&after) < gap(&before) / 4.0,
        "SHD gap {} → {}",
        gap(&before),
        gap(&after)
    );
    let tv = |s: &serde_json::Value| s["exact"]["tv"].as_f64().unwrap();
    assert!(tv(&after) < tv(&before) / 2.0, "TV {} → {}", tv(&before), tv(&after));
    for d in [full, part] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn sample_and_eval_read_a_run() {
    let dir = tmp("sample");
    run_ok(&small(&dir, &["--iterations", "60"]));
    let csv = dir.join("samples.csv");
    let sample = |out: &Path| {
        gfn(&[
            "sample",
            "--run",
            dir.to_str().unwrap(),
            "--n",
            "500",
            "--seed",
            "1",
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let o = sample(&csv);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("x0,x1,log_reward"));
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 500);
    for r in rows {
        let v: Vec<f64> = r.split(',').map(|x| x.parse().unwrap()).collect();
        assert!(v[0] >= 0.0 && v[0] < 5.0 && v[1] >= 0.0 && v[1] < 5.0 && v[2] <= (2.6f64).ln() + 1e-9);
    }
    let o = sample(&dir.join("again.csv"));
    assert!(o.status.success());
    assert_eq!(
        text,
        std::fs::read_to_string(dir.join("again.csv")).unwrap(),
        "sampling is not reproducible"
    );
    let o = gfn(&["eval", "--run", dir.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let e: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(
        e["tv"], summary["exact"]["tv"],
        "eval disagrees with the run's final evaluation"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bad_input_gets_a_clear_error() {
    let dir = tmp("bad");
    let d = dir.to_str().unwrap();
    assert_usage_error(
        &["train", "--device", "tpu", "--out", d],
        &["device", "tpu", "cuda", "cpu-kernels"],
    );
    assert_usage_error(
        &["train", "--rollout-rows", "3", "--out", d],
        &["rollout_rows", "3", "1, 2, 4, 8 or 16"],
    );
    // Options that have no effect on the chosen env or loss, and invalid values where unused.
    for (args, needles) in [
        (vec!["--loss", "tb", "--lambda", "0.5"], vec!["lambda", "subtb"]),
        (vec!["--size", "large"], vec!["size", "env = set"]),
        (vec!["--ebm-method", "abc"], vec!["ebm_method", "abc"]),
        (vec!["--trpo-max-kl", "-1"], vec!["trpo_max_kl"]),
        (
            vec!["--loss", "pg-b", "--backward-policy", "uniform"],
            vec!["backward_policy", "pg-b"],
        ),
        (vec!["--top-k", "0"], vec!["top_k"]),
        (vec!["--recent-window", "0"], vec!["recent_window"]),
        (vec!["--rollout-rows", "4"], vec!["rollout_rows", "device engine"]),
        (
            vec!["--condition", "beta=2..1"],
            vec!["condition", "beta=2..1", "LO ≤ HI"],
        ),
        (vec!["--condition", "temperature"], vec!["condition", "beta=LO..HI"]),
        (vec!["--eval-conditions", "1"], vec!["eval_conditions", "conditional"]),
        (
            vec!["--condition", "beta=0.5..2", "--eval-conditions", "1;x"],
            vec!["eval_conditions", "1;x"],
        ),
        (
            vec!["--condition", "beta=0.5..2", "--loss", "pg-u"],
            vec!["loss", "pg-u", "conditional"],
        ),
        (
            vec!["--condition", "beta=0.5..2", "--device", "cpu-kernels"],
            vec!["device", "conditional"],
        ),
    ] {
        let mut a = vec!["train", "--out", d];
        a.extend(args);
        assert_usage_error(&a, &needles);
    }
    assert!(!dir.exists(), "a refused run created its directory");
    assert_usage_error(
        &["train", "--device", "cuda", "--env", "set", "--out", d],
        &["env", "set", "device = cuda"],
    );
    assert_usage_error(
        &["train", "--device", "cuda", "--loss", "db", "--out", d],
        &["loss", "db", "tb or subtb"],
    );
    if !cfg!(feature = "cuda") {
        assert_usage_error(
            &["train", "--device", "cuda", "--out", d],
            &["device", "cuda", "feature"],
        );
    }
    assert_usage_error(&["train", "--env", "maze", "--out", d], &["env", "maze", "hypergrid"]);
    assert_usage_error(&["train", "--loss", "xyz", "--out", d], &["loss", "xyz", "tb"]);
    assert_usage_error(&["train", "--height", "1", "--out", d], &["height", "1"]);
    assert_usage_error(
        &["train", "--env", "set", "--size", "huge", "--out", d],
        &["size", "huge", "small"],
    );
    assert_usage_error(&["train", "--r0", "-1", "--out", d], &["r0", "-1"]);
    assert_usage_error(&["train", "--batch-size", "0", "--out", d], &["batch_size", "0"]);
    // Sizes no machine can hold are refused before anything is allocated, naming the field.
    assert_usage_error(
        &["train", "--batch-size", "4294967297", "--out", d],
        &["batch_size", "4294967297", "memory", "trajectories"],
    );
    assert_usage_error(
        &["train", "--hidden", "100000000", "--out", d],
        &["hidden", "100000000", "memory", "network"],
    );
    assert_usage_error(
        &["train", "--layers", "100000000", "--out", d],
        &["layers", "100000000", "memory", "network"],
    );
    assert_usage_error(
        &["train", "--env", "bag", "--metric-batch", "4294967297", "--out", d],
        &["metric_batch", "4294967297", "memory"],
    );
    assert_usage_error(
        &["train", "--env", "ising", "--ebm-hidden", "100000000", "--out", d],
        &["ebm_hidden", "100000000", "memory", "energy model"],
    );
    assert_usage_error(
        &["train", "--threads", "100000", "--out", d],
        &["threads", "100000", "1024"],
    );
    assert_usage_error(&["train", "--r0", "0", "--out", d], &["r0", "0", "log R"]);
    assert_usage_error(
        &["train", "--env", "digits", "--eval-backward", "4294967297", "--out", d],
        &["eval_backward", "4294967297", "memory"],
    );
    assert_usage_error(
        &["train", "--env", "ising", "--sigma", "0", "--out", d],
        &["sigma", "0", "non-zero"],
    );
    assert_usage_error(
        &["train", "--env", "bayesnet", "--bn-samples", "4294967297", "--out", d],
        &["bn_samples", "4294967297", "memory", "observations"],
    );
    assert_usage_error(&["train", "--epsilon", "2", "--out", d], &["epsilon", "2"]);
    assert_usage_error(
        &["train", "--loss", "subtb", "--lambda", "0", "--out", d],
        &["lambda", "0"],
    );
    assert_usage_error(
        &["train", "--loss", "pg-u", "--replay-size", "10", "--out", d],
        &["replay_size", "10", "pg-u", "off-policy"],
    );
    assert_usage_error(
        &[
            "train",
            "--local-search",
            "2",
            "--local-search-accept",
            "mh",
            "--out",
            d,
        ],
        &["local_search_accept", "mh", "exit action", "hypergrid", "greedy"],
    );
    assert_usage_error(
        &["train", "--replay-size", "10", "--replay-priority", "best", "--out", d],
        &["replay_priority", "best", "uniform"],
    );
    assert_usage_error(
        &["train", "--loss", "pg-u", "--gae-lambda", "1.5", "--out", d],
        &["gae_lambda", "1.5"],
    );
    // pg-trpo defaults to separate trunks; a shared one given explicitly is refused.
    let o = gfn(&["check", "--loss", "pg-trpo"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_usage_error(
        &["train", "--loss", "pg-trpo", "--shared-trunk", "true", "--out", d],
        &["shared_trunk", "true", "pg-trpo"],
    );
    assert_usage_error(
        &[
            "train",
            "--loss",
            "pg-trpo",
            "--shared-trunk",
            "false",
            "--trpo-max-kl",
            "0",
            "--out",
            d,
        ],
        &["trpo_max_kl", "0", "> 0"],
    );
    assert_usage_error(
        &["train", "--loss", "pg-g", "--guide-floor", "low", "--out", d],
        &["guide_floor", "low"],
    );
    assert_usage_error(
        &["train", "--env", "set", "--loss", "pg-g", "--out", d],
        &["guide_floor", "auto", "hypergrid"],
    );
    assert_usage_error(
        &["train", "--out", "/proc/gfn-cannot-write-here"],
        &["/proc/gfn-cannot-write-here"],
    );
    // Config file and flag disagree.
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("c.toml");
    std::fs::write(&cfg, "lr = 0.01\nndim = 2\n").unwrap();
    assert_usage_error(
        &["train", "--config", cfg.to_str().unwrap(), "--lr", "0.001", "--out", d],
        &["lr", "0.01", "0.001"],
    );
    std::fs::write(&cfg, "learning_rate = 0.01\n").unwrap();
    assert_usage_error(
        &["train", "--config", cfg.to_str().unwrap(), "--out", d],
        &["learning_rate"],
    );
    // A flag repeated with the same value is fine.
    std::fs::write(&cfg, "ndim = 2\nheight = 4\niterations = 20\nhidden = 16\n").unwrap();
    let ok = dir.join("ok");
    let o = gfn(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--ndim",
        "2",
        "--out",
        ok.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Training into a directory that holds a run, and resume with other options.
    assert_usage_error(
        &["train", "--out", ok.to_str().unwrap()],
        &["already holds a run", "--resume"],
    );
    assert_usage_error(
        &["train", "--resume", ok.to_str().unwrap(), "--lr", "0.1"],
        &["--resume", "--lr"],
    );
    assert_usage_error(
        &["train", "--resume", ok.to_str().unwrap(), "--iterations", "5"],
        &["iterations", "5"],
    );
    // Corrupt and truncated checkpoints.
    let ck = ok.join("checkpoint.safetensors");
    let bytes = std::fs::read(&ck).unwrap();
    std::fs::write(&ck, &bytes[..bytes.len() / 2]).unwrap();
    assert_usage_error(
        &["eval", "--run", ok.to_str().unwrap()],
        &["checkpoint", "corrupt or truncated"],
    );
    let mut flipped = bytes.clone();
    let last = flipped.len() - 3;
    flipped[last] ^= 0x55;
    std::fs::write(&ck, &flipped).unwrap();
    assert_usage_error(&["eval", "--run", ok.to_str().unwrap()], &["checksum"]);
    std::fs::write(&ck, b"not a checkpoint").unwrap();
    assert_usage_error(&["train", "--resume", ok.to_str().unwrap()], &["checkpoint"]);
    assert_usage_error(
        &["eval", "--run", dir.join("nothing").to_str().unwrap()],
        &["config.toml"],
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A diverging run stops with a message naming the iteration; what was written stays readable.
#[test]
fn non_finite_loss_stops_training_cleanly() {
    let dir = tmp("nan");
    let d = dir.to_str().unwrap();
    let o = gfn(&[
        "train",
        "--ndim",
        "2",
        "--height",
        "5",
        "--iterations",
        "400",
        "--lr",
        "1e30",
        "--lr-logz",
        "1e30",
        "--eval-every",
        "1",
        "--out",
        d,
    ]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "stderr: {err}");
    assert!(err.contains("iteration"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // Nothing non-finite is written as a valid state: no evaluation record with a NaN or null
    // distance, no checkpoint of diverged parameters; failed.json says where and why.
    let rd = RunDir::new(&dir);
    let _ = rd.read_config().unwrap();
    let failure = rd.read_failure().unwrap().expect("failed.json");
    assert!(failure.reason.contains("not finite"), "{failure:?}");
    if dir.join("metrics.jsonl").exists() {
        for r in read_metrics::<EvalRecord>(&rd).unwrap() {
            assert!(r.exact.is_some_and(|e| e.dist.tv.is_finite()), "{r:?}");
        }
    }
    if dir.join("checkpoint.safetensors").exists() {
        let ck = gfn::checkpoint::Checkpoint::load(&dir.join("checkpoint.safetensors")).unwrap();
        assert_eq!(ck.non_finite(), None);
        assert_eq!(failure.last_checkpoint, Some(ck.iteration));
    }
    // gfn eval says what happened instead of printing NaN.
    let o = gfn(&["eval", "--run", d]);
    let (out, err) = (String::from_utf8_lossy(&o.stdout), stderr(&o));
    assert!(!out.contains("NaN") && !out.contains("nan"), "{out}");
    assert!(err.contains("stopped at iteration"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

/// Two processes never share a run directory: while one trains, a second training or a resume
/// of the same directory is refused (exit 2) naming the holder's pid, and the holder's files are
/// untouched; the lock goes with the process (kill -9 included), and a resume then removes the
/// temporary files the killed process left.
#[test]
fn a_run_directory_has_one_writer() {
    let dir = tmp("lock");
    let d = dir.to_str().unwrap();
    let mut first = Command::new(env!("CARGO_BIN_EXE_gfn"))
        .args([
            "train",
            "--ndim",
            "2",
            "--height",
            "8",
            "--hidden",
            "32",
            "--iterations",
            "1000000",
            "--eval-every",
            "50",
            "--out",
            d,
        ])
        .env("RAYON_NUM_THREADS", "1")
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run gfn");
    let pid = first.id().to_string();
    let start = std::time::Instant::now();
    while !(dir.join("checkpoint.safetensors").exists()
        && std::fs::read_to_string(dir.join(".lock")).is_ok_and(|t| t.trim() == pid))
    {
        assert!(
            start.elapsed().as_secs() < 60,
            "the first run wrote no checkpoint in 60 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_usage_error(
        &[
            "train",
            "--ndim",
            "2",
            "--height",
            "8",
            "--iterations",
            "500",
            "--seed",
            "1",
            "--hidden",
            "64",
            "--out",
            d,
        ],
        &["in use", &pid],
    );
    assert_usage_error(&["train", "--resume", d], &["in use", &pid]);
    let cfg = RunDir::new(&dir).read_config().unwrap();
    assert_eq!((cfg.hidden, cfg.seed), (32, 0), "the refused run touched the config");
    first.kill().unwrap();
    first.wait().unwrap();
    // A temporary file as a kill mid-write leaves it.
    std::fs::write(dir.join(".timing.json.4242.tmp"), b"{").unwrap();
    let done = read_metrics::<EvalRecord>(&RunDir::new(&dir))
        .unwrap()
        .last()
        .unwrap()
        .iteration;
    let n = done.to_string();
    let o = gfn(&["train", "--resume", d, "--iterations", &n]);
    assert!(o.status.success(), "{}", stderr(&o));
    let left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
    let _ = std::fs::remove_dir_all(dir);
}

/// A new run never overwrites a folder it did not write, and a resume of a missing directory
/// creates nothing.
#[test]
fn foreign_folders_are_not_overwritten() {
    let dir = tmp("foreign");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.toml"), b"# my notes\n").unwrap();
    std::fs::write(dir.join("metrics.jsonl"), b"{\"mine\": 1}\n").unwrap();
    assert_usage_error(
        &["train", "--ndim", "2", "--height", "4", "--out", dir.to_str().unwrap()],
        &["not empty", "config.toml", "metrics.jsonl"],
    );
    assert_eq!(std::fs::read(dir.join("config.toml")).unwrap(), b"# my notes\n");
    assert_eq!(std::fs::read(dir.join("metrics.jsonl")).unwrap(), b"{\"mine\": 1}\n");
    let missing = dir.join("x").join("a").join("b");
    assert_usage_error(&["train", "--resume", missing.to_str().unwrap()], &["does not exist"]);
    assert!(!dir.join("x").exists(), "a failed --resume created directories");
    let _ = std::fs::remove_dir_all(dir);
}

/// The checkpoint's checksum covers its metadata, and the configuration is bound to it: an
/// edited iteration count or RNG state, or an edited lr or seed in config.toml, is refused by
/// eval, sample and resume.
#[test]
fn checkpoints_bind_their_metadata_and_configuration() {
    let dir = tmp("bind");
    let d = dir.to_str().unwrap();
    run_ok(&small(&dir, &["--iterations", "20"]));
    let ck = dir.join("checkpoint.safetensors");
    let bytes = std::fs::read(&ck).unwrap();
    let edit = |from: &str, to: &str| {
        let at = bytes
            .windows(from.len())
            .position(|w| w == from.as_bytes())
            .unwrap_or_else(|| panic!("{from} not in the checkpoint"));
        let mut out = bytes.clone();
        out[at..at + to.len()].copy_from_slice(to.as_bytes());
        out
    };
    let csv = dir.join("s.csv");
    for (from, to) in [
        (r#"\"iteration\":\"20\""#, r#"\"iteration\":\"10\""#),
        (r#"\"rng\":\"{"#, r#"\"rng\":\"["#),
    ] {
        std::fs::write(&ck, edit(from, to)).unwrap();
        assert_usage_error(&["eval", "--run", d], &["checksum"]);
        assert_usage_error(
            &["sample", "--run", d, "--n", "5", "--out", csv.to_str().unwrap()],
            &["checksum"],
        );
        assert_usage_error(&["train", "--resume", d, "--iterations", "30"], &["checksum"]);
    }
    std::fs::write(&ck, &bytes).unwrap();
    let cfg = std::fs::read_to_string(dir.join("config.toml")).unwrap();
    for (from, to) in [("lr = 0.001", "lr = 0.002"), ("seed = 0", "seed = 7")] {
        assert!(cfg.contains(from), "{from} not in {cfg}");
        std::fs::write(dir.join("config.toml"), cfg.replacen(from, to, 1)).unwrap();
        assert_usage_error(&["eval", "--run", d], &["config.toml", "not the configuration"]);
        assert_usage_error(&["train", "--resume", d, "--iterations", "30"], &["config.toml"]);
    }
    std::fs::write(dir.join("config.toml"), &cfg).unwrap();
    // A run's whole config.toml given back as --config trains (every key is listed, the ones
    // that do not apply at their defaults), while a file that sets an option with no effect here
    // is refused like the flag.
    let again = tmp("bind-again");
    let o = gfn(&[
        "train",
        "--config",
        dir.join("config.toml").to_str().unwrap(),
        "--out",
        again.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let file = tmp("bind-file").with_extension("toml");
    std::fs::write(&file, cfg.replacen("lambda = 0.9", "lambda = 0.5", 1)).unwrap();
    assert_usage_error(
        &[
            "train",
            "--config",
            file.to_str().unwrap(),
            "--out",
            tmp("bind-x").to_str().unwrap(),
        ],
        &["lambda", "subtb"],
    );
    let _ = std::fs::remove_dir_all(again);
    let _ = std::fs::remove_file(file);
    // Untouched, everything reads, and --iterations may still change through --resume.
    let o = gfn(&["train", "--resume", d, "--iterations", "30"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = gfn(&["eval", "--run", d]);
    assert!(o.status.success(), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(dir);
}

/// Sizes that cannot fit are refused before they are allocated: an exact enumeration of a
/// billion states (fast, with a small peak memory), a GEMM of 100,000², a negative sample count;
/// sampling streams to its file, whose folder is checked before any sample is drawn.
#[test]
fn memory_is_bounded_before_allocation() {
    let dir = tmp("memory");
    let d = dir.to_str().unwrap();
    let start = std::time::Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gfn"))
        .args(["train", "--ndim", "10", "--height", "8", "--out", d])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0u64;
    while child.try_wait().unwrap().is_none() {
        if let Ok(text) = std::fs::read_to_string(&status)
            && let Some(kib) = text
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        {
            peak_kib = peak_kib.max(kib);
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("ndim") && err.contains("exact evaluation"), "{err}");
    assert!(
        start.elapsed().as_secs() < 20,
        "refused only after {:?}",
        start.elapsed()
    );
    assert!(peak_kib < 512 * 1024, "peak RSS {peak_kib} KiB before the refusal");
    assert_usage_error(&["speed", "gemm", "--size", "100000"], &["size", "100000", "memory"]);
    assert_usage_error(
        &["sample", "--run", d, "--n", "-5", "--out", "x.csv"],
        &["n = -5", "at least 1"],
    );
    // Streaming: many samples, one file, written whole.
    let run = tmp("memory-run");
    run_ok(&small(&run, &["--iterations", "10"]));
    let csv = run.join("many.csv");
    let o = gfn(&[
        "sample",
        "--run",
        run.to_str().unwrap(),
        "--n",
        "20000",
        "--out",
        csv.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&csv).unwrap().lines().count(), 20_001);
    let nowhere = run.join("no").join("such").join("dir").join("s.csv");
    let start = std::time::Instant::now();
    assert_usage_error(
        &[
            "sample",
            "--run",
            run.to_str().unwrap(),
            "--n",
            "100000000000",
            "--out",
            nowhere.to_str().unwrap(),
        ],
        &["cannot write"],
    );
    assert!(start.elapsed().as_secs() < 20, "the output folder was checked late");
    let _ = std::fs::remove_dir_all(run);
    let _ = std::fs::remove_dir_all(dir);
}

/// Windows and buffers may be longer than a run ever fills: they grow as objects arrive, so a
/// huge top-k, recent window, replay buffer or LED buffer costs nothing up front.
#[test]
fn buffers_longer_than_the_run_are_fine() {
    const HUGE: &str = "4294967297";
    let both = ["--iterations", "3", "--top-k", HUGE, "--recent-window", HUGE];
    let (a, b) = (tmp("huge-replay"), tmp("huge-led"));
    run_ok(&small(&a, &[&both[..], &["--replay-size", HUGE]].concat()));
    run_ok(&small(
        &b,
        &[&both[..], &["--loss", "led-db", "--led-buffer", HUGE]].concat(),
    ));
    let _ = std::fs::remove_dir_all(a);
    let _ = std::fs::remove_dir_all(b);
}

/// Small EBM runs: `--env ising|digits|ebm-2d` with EB-GFN and PCD train, report their metrics,
/// and an EB-GFN run stopped early and resumed ends with the uninterrupted run's files.
#[test]
fn ebm_tasks_train_report_and_resume() {
    let ebm = |dir: &Path, extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "train",
            "--hidden",
            "16",
            "--layers",
            "1",
            "--batch-size",
            "16",
            "--eval-log-z-samples",
            "1000",
            "--eval-test",
            "40",
            "--out",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.push(dir.to_str().unwrap().into());
        v.extend(extra.iter().map(|s| s.to_string()));
        // Only what applies: the energy MLP's size (not ising's quadratic energy), EB-GFN's
        // settings (not PCD's).
        if !extra.contains(&"ising") {
            v.extend(["--ebm-hidden", "16", "--ebm-layers", "1"].map(String::from));
        }
        if !extra.contains(&"pcd") {
            v.extend(["--eval-backward", "4", "--warmup-k", "50"].map(String::from));
        }
        v
    };
    let summary = |dir: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(dir.join("summary.json")).unwrap()).unwrap()
    };
    let ising = [
        "--env",
        "ising",
        "--lattice",
        "3",
        "--ising-samples",
        "200",
        "--ising-updates",
        "2000",
        "--eval-every",
        "20",
        "--gfn-steps",
        "2",
    ];
    // Ising 3×3 (D = 9: log Z exact), two GFlowNet steps per iteration, resumed.
    let full = tmp("ebm-full");
    run_ok(&ebm(&full, &[&ising[..], &["--iterations", "40"]].concat()));
    let s = summary(&full);
    // The couplings move toward the truth (J = 0.1 on the lattice's edges): against a 1-iteration
    // run of the same seed, −log RMSE rises (2.713 → 2.885 here) and the mean learned edge
    // coupling grows (0.0009 → 0.018).
    let one = tmp("ebm-one");
    run_ok(&ebm(&one, &[&ising[..], &["--iterations", "1"]].concat()));
    let s1 = summary(&one);
    let fig = |s: &serde_json::Value, f: &str| s["ising"][f].as_f64().unwrap();
    assert!(
        fig(&s, "neg_log_rmse") > fig(&s1, "neg_log_rmse") + 0.1,
        "−log RMSE {} after 40 iterations against {} after 1",
        fig(&s, "neg_log_rmse"),
        fig(&s1, "neg_log_rmse")
    );
    assert!(
        fig(&s, "edge_mean") > fig(&s1, "edge_mean") + 0.01,
        "edge coupling {} after 40 iterations against {} after 1",
        fig(&s, "edge_mean"),
        fig(&s1, "edge_mean")
    );
    let share = s["ising"]["edge_share"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&share), "{s}");
    // `gfn eval` reads the same couplings back from the checkpoint.
    let o = gfn(&[
        "eval",
        "--run",
        full.to_str().unwrap(),
        "--ais-chains",
        "10",
        "--ais-temps",
        "10",
        "--json",
    ]);
    assert!(o.status.success(), "eval failed: {}", stderr(&o));
    let e: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(e["ising"]["neg_log_rmse"], s["ising"]["neg_log_rmse"], "{e}");
    assert_eq!(e["ising"]["edge_mean"], s["ising"]["edge_mean"], "{e}");
    assert_eq!(
        s["ebm"]["log_z"]["std_err"], 0.0,
        "D = 9 should use the exact log Z: {s}"
    );
    let part = tmp("ebm-part");
    run_ok(&ebm(&part, &[&ising[..], &["--iterations", "25"]].concat()));
    let o = gfn(&["train", "--resume", part.to_str().unwrap(), "--iterations", "40"]);
    assert!(o.status.success(), "resume failed: {}", stderr(&o));
    for f in ["metrics.jsonl", "checkpoint.safetensors"] {
        assert_eq!(
            std::fs::read(full.join(f)).unwrap(),
            std::fs::read(part.join(f)).unwrap(),
            "ising: {f} differs after resume"
        );
    }
    // Digits with PCD: the Bernoulli baseline and the uniform-IS NLL are reported.
    let digits = tmp("ebm-digits");
    run_ok(&ebm(
        &digits,
        &[
            "--env",
            "digits",
            "--ebm-method",
            "pcd",
            "--gibbs-steps",
            "8",
            "--iterations",
            "10",
            "--eval-every",
            "10",
        ],
    ));
    let s = summary(&digits);
    assert!(s["bernoulli_baseline"]["nll"].as_f64().unwrap() > 20.0, "{s}");
    // The uniform model's NLL is 64 ln 2 = 44.36 nats (the untrained energy is nearly flat:
    // 44.37 after one iteration); ten PCD iterations go below it (44.09 here, standard error 0.01).
    let nll = s["ebm"]["nll_uniform_is"]["value"].as_f64().unwrap();
    assert!(nll < 64.0 * std::f64::consts::LN_2 - 0.1, "digits NLL {nll}: {s}");
    assert!(s["gfn"].is_null());
    // 2D data with EB-GFN and GFlowNet negatives: NLLs, MMD and the samples plot, after 60
    // iterations and (the untrained sampler of the same seed) after 1.
    let moons = |name: &str, n: &str| -> (PathBuf, serde_json::Value) {
        let dir = tmp(name);
        let args = ["--env", "ebm-2d", "--dataset", "moons", "--negatives", "gfn"];
        run_ok(&ebm(
            &dir,
            &[&args[..], &["--iterations", n, "--eval-every", n]].concat(),
        ));
        let s = summary(&dir);
        (dir, s)
    };
    let (two_d, s) = moons("ebm-2d", "60");
    assert!(s["ebm"]["nll"]["value"].as_f64().is_some(), "{s}");
    // The GFlowNet's samples move toward the data (measured with these options: MMD·10⁴
    // 325 → 196).
    let (untrained, u) = moons("ebm-2d-untrained", "1");
    let f = |s: &serde_json::Value, p: &str| s.pointer(p).and_then(|v| v.as_f64()).unwrap();
    assert!(
        f(&s, "/mmd_e4") < 0.75 * f(&u, "/mmd_e4"),
        "MMD {} → {}",
        f(&u, "/mmd_e4"),
        f(&s, "/mmd_e4")
    );
    assert!(
        f(&s, "/gfn/nll/value") < f(&u, "/gfn/nll/value"),
        "GFlowNet NLL {} → {}",
        f(&u, "/gfn/nll/value"),
        f(&s, "/gfn/nll/value")
    );
    let _ = std::fs::remove_dir_all(untrained);
    assert!(std::fs::metadata(two_d.join("samples.png")).unwrap().len() > 1000);
    // Bad input names the field and what is allowed.
    assert_usage_error(
        &["train", "--env", "ebm-2d", "--dataset", "spirals"],
        &["spirals", "2spirals"],
    );
    assert_usage_error(
        &["train", "--env", "ising", "--ebm-method", "cd"],
        &["ebm_method", "ebgfn or pcd"],
    );
    assert_usage_error(&["train", "--env", "ising", "--lattice", "2"], &["3"]);
    assert_usage_error(&["train", "--env", "digits", "--back-ratio", "2"], &["back_ratio"]);
    assert_usage_error(
        &["train", "--env", "digits", "--gfn-steps", "0"],
        &["gfn_steps", "at least 1"],
    );
    for d in [full, part, digits, two_d] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// `ising-fixed` (the lattice Ising reward of gfnx's Ising task) trains on the CPU path; the
/// device engine on the CPU (gfn-cuda's references) is tested in gfn-cuda.
#[test]
fn ising_fixed_trains_on_the_cpu() {
    // The 2^9 states of the 3×3 lattice are evaluated exactly: the learned log Z approaches the
    // true one (measured: error 8.36 after 1 iteration, 2.56 after 100).
    let run = |n: &str| -> serde_json::Value {
        let dir = tmp(&format!("ising-fixed-{n}"));
        let o = gfn(&[
            "train",
            "--env",
            "ising-fixed",
            "--lattice",
            "3",
            "--sigma",
            "0.2",
            "--batch-size",
            "8",
            "--iterations",
            n,
            "--eval-every",
            n,
            "--hidden",
            "16",
            "--out",
            dir.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let s = serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
        let _ = std::fs::remove_dir_all(dir);
        s
    };
    let (before, after) = (run("1"), run("100"));
    let err = |s: &serde_json::Value| s["log_z"]["error"].as_f64().unwrap().abs();
    assert_eq!(before["log_z"]["true"], after["log_z"]["true"]);
    assert!(
        err(&after) < err(&before) / 2.0,
        "log Z error {} → {}",
        err(&before),
        err(&after)
    );
}

/// The device engine (run here on its CPU reference ops, `--device cpu-kernels`) checkpoints and
/// resumes bit-identically: 30 iterations, then 30 more, equal 60 in one go; and it trains.
#[test]
fn device_engine_resumes_bit_identically() {
    let common = [
        "--env",
        "hypergrid",
        "--ndim",
        "2",
        "--height",
        "6",
        "--loss",
        "subtb",
        "--batch-size",
        "16",
        "--eval-every",
        "30",
        "--hidden",
        "32",
        "--seed",
        "4",
        "--device",
        "cpu-kernels",
    ];
    let (a, b) = (tmp("dev-once"), tmp("dev-twice"));
    let mut once: Vec<&str> = vec!["train", "--iterations", "60", "--out", a.to_str().unwrap()];
    once.extend(common);
    let o = gfn(&once);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut first: Vec<&str> = vec!["train", "--iterations", "30", "--out", b.to_str().unwrap()];
    first.extend(common);
    let o = gfn(&first);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("device engine"), "{}", stderr(&o));
    let o = gfn(&["train", "--resume", b.to_str().unwrap(), "--iterations", "60"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let metrics = |d: &Path| std::fs::read_to_string(d.join("metrics.jsonl")).unwrap();
    let strip = |m: String| -> Vec<serde_json::Value> {
        m.lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                v.as_object_mut().unwrap().retain(|k, _| k != "wall_seconds");
                v
            })
            .collect()
    };
    let (x, y) = (strip(metrics(&a)), strip(metrics(&b)));
    assert_eq!(x, y, "resumed device-engine run differs");
    // It trains: 60 iterations lower the exact TV of a 1-iteration run of the same seed by more
    // than 0.05 (0.530 → 0.446 here; over seeds 0–5 the drop is 0.08–0.13).
    let tv = x.last().unwrap()["exact"]["tv"].as_f64().unwrap();
    let c = tmp("dev-one");
    let mut one: Vec<&str> = vec!["train", "--iterations", "1", "--out", c.to_str().unwrap()];
    one.extend(common);
    let o = gfn(&one);
    assert!(o.status.success(), "{}", stderr(&o));
    let untrained = strip(metrics(&c)).last().unwrap()["exact"]["tv"].as_f64().unwrap();
    assert!(
        tv < untrained - 0.05,
        "exact TV {tv} after 60 iterations against {untrained} after 1"
    );
}

/// The bad-input sweep in its quick form (`benches/cli_fuzz.py --quick`: every option of
/// `gfn train` × nan, inf, -1, 0 and 2^32 + 1 on a small hypergrid): no value that must be
/// refused is accepted, nothing panics, hangs or runs out of memory.
#[test]
fn the_quick_bad_input_sweep_finds_nothing() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../benches/cli_fuzz.py");
    let out = tmp("fuzz");
    let o = Command::new("python3")
        .arg(&script)
        .args(["--quick", "--jobs", "2", "--binary", env!("CARGO_BIN_EXE_gfn"), "--out"])
        .arg(&out)
        .output()
        .expect("python3 runs the sweep (CI installs python3)");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{text}{}", stderr(&o));
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    let counts = &summary["counts"];
    assert!(counts["tried"].as_u64().unwrap() >= 300, "{summary}");
    assert!(counts["clean error"].as_u64().unwrap() >= 250, "{summary}");
    for bad in ["silent accept", "panic", "memory", "timeout", "other"] {
        assert!(counts[bad].is_null(), "{bad}: {summary}\n{text}");
    }
    let _ = std::fs::remove_dir_all(out);
}

/// A kill between `timing.json` and the checkpoint (timing is written first) leaves the older
/// checkpoint with its own timing entry: the resumed run reports the same useful FLOPs per
/// iteration as the uninterrupted one.
#[test]
fn a_kill_between_timing_and_checkpoint_keeps_the_timing_exact() {
    let (full, part) = (tmp("timing-full"), tmp("timing-part"));
    run_ok(&small(&full, &["--iterations", "20"]));
    run_ok(&small(&part, &["--iterations", "10"]));
    let ck10 = std::fs::read(part.join("checkpoint.safetensors")).unwrap();
    let p = part.to_str().unwrap();
    let o = gfn(&["train", "--resume", p, "--iterations", "20"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // As if killed after timing.json of iteration 20 was written, before its checkpoint.
    std::fs::write(part.join("checkpoint.safetensors"), &ck10).unwrap();
    let o = gfn(&["train", "--resume", p, "--iterations", "20"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let flops = |d: &Path| -> f64 {
        let s: serde_json::Value = serde_json::from_slice(&std::fs::read(d.join("summary.json")).unwrap()).unwrap();
        s["useful_gflop_per_iteration"]
            .as_f64()
            .unwrap_or_else(|| panic!("no useful_gflop_per_iteration in {s}"))
    };
    assert_eq!(flops(&part), flops(&full));
    let iterations = |d: &Path| -> Vec<u64> {
        read_metrics::<EvalRecord>(&RunDir::new(d))
            .unwrap()
            .iter()
            .map(|r| r.iteration)
            .collect()
    };
    assert_eq!(iterations(&part), iterations(&full));
    let _ = std::fs::remove_dir_all(full);
    let _ = std::fs::remove_dir_all(part);
}

/// `--policy transformer`: a transformer over bitseq's token encoding trains to the exact target
/// through `gfn train` (TB and SubTB), reports the task's figures, resumes bit for bit, samples,
/// and is refused where it does not apply, naming the option.
#[test]
fn a_transformer_policy_trains_resumes_and_is_refused_where_it_does_not_apply() {
    let task = [
        "--env",
        "bitseq",
        "--bitseq-length",
        "8",
        "--bitseq-word",
        "2",
        "--bitseq-modes",
        "3",
        "--policy",
        "transformer",
        "--hidden",
        "32",
        "--heads",
        "4",
        "--batch-size",
        "32",
        "--eval-every",
        "100",
    ];
    let train = |dir: &Path, loss: &str, iterations: &str| {
        let mut args = vec![
            "train",
            "--out",
            dir.to_str().unwrap(),
            "--loss",
            loss,
            "--iterations",
            iterations,
        ];
        args.extend(task);
        let o = gfn(&args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    };
    let summary = |dir: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap()
    };
    let tb = tmp("tf-tb");
    train(&tb, "tb", "600");
    let s = summary(&tb);
    assert_eq!(s["policy"], "transformer");
    let tv = s["exact"]["tv"].as_f64().unwrap();
    assert!(tv <= 0.05, "transformer TB: exact TV {tv} after 600 iterations");
    assert!(s["log_z"]["error"].as_f64().unwrap() < 0.05, "{s}");
    let first = read_metrics::<EvalRecord>(&RunDir::new(&tb)).unwrap()[0]
        .exact
        .unwrap()
        .dist
        .tv;
    assert!(tv < first / 2.0, "TV did not fall: {first} → {tv}");
    let o = gfn(&[
        "sample",
        "--run",
        tb.to_str().unwrap(),
        "--n",
        "7",
        "--out",
        tb.join("x.csv").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(tb.join("x.csv")).unwrap().lines().count(), 8);

    // SubTB: 300 iterations then a resume to 600 give the bits of 600 in one go.
    let (part, full) = (tmp("tf-part"), tmp("tf-full"));
    train(&part, "subtb", "300");
    let o = gfn(&["train", "--resume", part.to_str().unwrap(), "--iterations", "600"]);
    assert!(o.status.success(), "{}", stderr(&o));
    train(&full, "subtb", "600");
    for f in ["metrics.jsonl", "checkpoint.safetensors"] {
        assert_eq!(
            std::fs::read(part.join(f)).unwrap(),
            std::fs::read(full.join(f)).unwrap(),
            "{f}"
        );
    }
    let tv = summary(&full)["exact"]["tv"].as_f64().unwrap();
    assert!(tv <= 0.05, "transformer SubTB: exact TV {tv}");
    let rho = summary(&full)["task"]["test_spearman"].as_f64().unwrap();
    assert!(
        rho > 0.5,
        "test Spearman {rho}: the trained sampler should rank test sequences by reward"
    );

    let bad = tmp("tf-bad");
    let b = bad.to_str().unwrap();
    assert_usage_error(
        &["train", "--out", b, "--policy", "transformer"],
        &["policy", "token encoding"],
    );
    assert_usage_error(
        &[
            "train",
            "--out",
            b,
            "--env",
            "bitseq",
            "--policy",
            "transformer",
            "--shared-trunk",
            "false",
        ],
        &["shared_trunk", "policy = mlp"],
    );
    assert_usage_error(
        &[
            "train",
            "--out",
            b,
            "--env",
            "bitseq",
            "--policy",
            "transformer",
            "--heads",
            "3",
        ],
        &["heads", "divide"],
    );
    assert_usage_error(
        &["train", "--out", b, "--heads", "8"],
        &["heads", "policy = transformer"],
    );
    for d in [tb, part, full] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// The transformer with replay, with local search and with LED-DB: the seam policy walks back for
/// the replayed and refined objects, is local search's state policy, and takes LED's learned
/// potentials as loss inputs; each run trains bitseq 8/2 toward its exact target.
#[test]
fn a_transformer_policy_trains_with_replay_local_search_led_and_fm() {
    use gfn::options::LocalSearchAccept;
    use gfn_objectives::ObjectiveName;
    let base = tf_bitseq();
    for (name, config) in [
        (
            "replay",
            TrainConfig {
                replay_size: 500,
                ..base.clone()
            },
        ),
        (
            "local-search",
            TrainConfig {
                local_search: 2,
                local_search_accept: LocalSearchAccept::Mh,
                ..base.clone()
            },
        ),
        (
            "led-db",
            TrainConfig {
                loss: ObjectiveName::LedDb,
                ..base.clone()
            },
        ),
        // A row loss through the seam: flow matching, the parents' rows observed by their states
        // (soft Q's seam path is checked against the MLP's in gfn-objectives' property tests).
        (
            "fm",
            TrainConfig {
                loss: ObjectiveName::Fm,
                iterations: 1000,
                ..base.clone()
            },
        ),
    ] {
        let (t, summary) = train_small(&format!("tf-{name}"), config);
        let tv = summary["exact"]["tv"].as_f64().unwrap();
        let first = t.history[0].exact.unwrap().dist.tv;
        assert!(tv <= TF_TV && tv < first / 2.0, "{name}: exact TV {first} → {tv}");
    }
}

/// The policy-gradient family through the seam: a transformer trained by pg-u and pg-b (P_B
/// learned by its own surrogate) reaches the exact target of bitseq 8/2 in 600 iterations, and
/// by pg-trpo (the trust region through finite-difference J·v) falls below half its untrained TV
/// in 400, its steps accepted; a pg-trpo run resumed half-way gives the bits of the whole run.
#[test]
fn the_policy_gradient_family_trains_a_transformer() {
    for loss in ["pg-u", "pg-b"] {
        let config = TrainConfig {
            loss: loss.parse().unwrap(),
            ..tf_bitseq()
        };
        let first = Trainer::new(config.clone(), &Device::Cpu)
            .unwrap()
            .evaluate()
            .unwrap()
            .exact
            .unwrap()
            .dist
            .tv;
        let (_, summary) = train_small(&format!("tf-{loss}"), config);
        let tv = summary["exact"]["tv"].as_f64().unwrap();
        assert!(tv <= TF_TV && tv < first / 2.0, "{loss}: exact TV {first} → {tv}");
        let log_z_error = summary["log_z"]["error"].as_f64().unwrap();
        assert!(log_z_error < 0.05, "{loss}: |log Ẑ − log Z| = {log_z_error}");
    }
    let args = |dir: &Path, iterations: &str| -> Vec<String> {
        [
            "train",
            "--out",
            dir.to_str().unwrap(),
            "--env",
            "bitseq",
            "--bitseq-length",
            "8",
            "--bitseq-word",
            "2",
            "--bitseq-modes",
            "3",
            "--policy",
            "transformer",
            "--hidden",
            "32",
            "--heads",
            "4",
            "--batch-size",
            "32",
            "--eval-every",
            "100",
            "--loss",
            "pg-trpo",
            "--trpo-cg-iters",
            "4",
            "--iterations",
            iterations,
        ]
        .map(String::from)
        .to_vec()
    };
    let (full, part) = (tmp("tf-trpo-full"), tmp("tf-trpo-part"));
    run_ok(&args(&full, "400"));
    run_ok(&args(&part, "200"));
    run_ok(&["train", "--resume", part.to_str().unwrap(), "--iterations", "400"].map(String::from));
    assert_same_run("pg-trpo resumed at 200", &part, &full);
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(full.join("summary.json")).unwrap()).unwrap();
    let untrained = TrainConfig {
        loss: "pg-trpo".parse().unwrap(),
        ..tf_bitseq()
    };
    let first = Trainer::new(untrained, &Device::Cpu)
        .unwrap()
        .evaluate()
        .unwrap()
        .exact
        .unwrap()
        .dist
        .tv;
    let tv = summary["exact"]["tv"].as_f64().unwrap();
    assert!(tv <= 0.1 && tv < first / 2.0, "pg-trpo: exact TV {first} → {tv}");
    let (steps, rejected) = (
        summary["trust_region"]["steps"].as_u64().unwrap(),
        summary["trust_region"]["rejected"].as_u64().unwrap(),
    );
    assert_eq!(steps, 400);
    assert!(
        rejected < steps / 2,
        "{rejected} of {steps} trust-region steps rejected"
    );
    for d in [full, part] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// The exact TV the transformer runs of bitseq 8/2 must reach in 600 iterations.
const TF_TV: f64 = 0.05;

/// A transformer (d_model 32, 4 heads) on bit sequences of 8 bits written 2 at a time (3 modes),
/// batch 32, 600 iterations evaluated every 100.
fn tf_bitseq() -> TrainConfig {
    TrainConfig {
        env: gfn::options::EnvName::Bitseq,
        bitseq_length: 8,
        bitseq_word: 2,
        bitseq_modes: 3,
        policy: gfn::seam::PolicyKind::Transformer,
        hidden: 32,
        heads: 4,
        batch_size: 32,
        iterations: 600,
        eval_every: 100,
        ..TrainConfig::default()
    }
}

/// The gradient analysis through the seam: the transformer's small-batch TB gradient points along
/// the large-batch one (cosine 0.52 and 0.55 at iterations 100 and 200 here; independent
/// directions in its 26,000 coordinates would give about 0), and DB and SubTB are measured too.
#[test]
fn the_gradient_analysis_runs_through_the_seam() {
    let config = TrainConfig {
        loss: "subtb".parse().unwrap(),
        iterations: 200,
        grad_cosine_every: 100,
        grad_cosine_batch: 256,
        grad_cosine_repeats: 4,
        ..tf_bitseq()
    };
    let (t, _) = train_small("tf-gradcos", config);
    let measured: Vec<_> = t.history.iter().filter_map(|r| r.grad_cosine).collect();
    assert_eq!(measured.len(), 2, "{measured:?}");
    for g in measured {
        assert!(g.tb > 0.2, "{g:?}");
        assert!(g.db.is_some() && g.subtb.is_some(), "{g:?}");
    }
}

/// Data-parallel training over virtual ranks (`--virtual-ranks`, the oracle of an MPI run): one
/// rank is the plain run bit for bit (tape and graph engines); two ranks with a shared replay
/// buffer resume bit-exactly, and a run resumes with another number of ranks; what has no
/// data-parallel form is refused by name.
#[test]
fn virtual_ranks_reproduce_resume_and_refuse() {
    for engine in ["tape", "graph"] {
        let (plain, one) = (
            tmp(&format!("ranks-plain-{engine}")),
            tmp(&format!("ranks-one-{engine}")),
        );
        let args = ["--iterations", "120", "--loss", "tb", "--engine", engine];
        run_ok(&small(&plain, &args));
        run_ok(&small(
            &one,
            &[&args[..], &["--virtual-ranks", "1", "--verify-ranks"]].concat(),
        ));
        assert_same_run(&format!("one virtual rank, {engine}"), &plain, &one);
        let mut s = summary_without_timing(&one);
        let ranks = s.as_object_mut().unwrap().remove("ranks").unwrap();
        assert_eq!(
            (ranks["size"].as_u64(), ranks["verified_steps"].as_u64()),
            (Some(1), Some(120))
        );
        let mut p = summary_without_timing(&plain);
        p.as_object_mut().unwrap().remove("ranks");
        assert_eq!(s, p, "one virtual rank, {engine}: summaries differ");
        let _ = std::fs::remove_dir_all(plain);
        let _ = std::fs::remove_dir_all(one);
    }
    // Two ranks, shared replay: interrupted and resumed equals uninterrupted.
    let two = [
        "--virtual-ranks",
        "2",
        "--loss",
        "subtb",
        "--replay-size",
        "64",
        "--replay-shared",
        "true",
    ];
    let (full, part) = (tmp("ranks-full"), tmp("ranks-part"));
    run_ok(&small(&full, &[&two[..], &["--iterations", "200"]].concat()));
    run_ok(&small(&part, &[&two[..], &["--iterations", "130"]].concat()));
    let p = part.to_str().unwrap();
    let o = gfn(&["train", "--resume", p, "--iterations", "200", "--virtual-ranks", "2"]);
    assert!(o.status.success(), "resume failed: {}", stderr(&o));
    assert_same_run("two virtual ranks", &full, &part);
    let s = summary_without_timing(&full);
    assert_eq!(s["trajectories"], 200 * 2 * 16);
    assert_eq!(s["ranks"]["size"], 2);
    // The two ranks sample different batches: not the one-rank run.
    let one = tmp("ranks-one-rank");
    run_ok(&small(
        &one,
        &["--loss", "subtb", "--replay-size", "64", "--iterations", "200"],
    ));
    assert_ne!(
        std::fs::read(one.join("metrics.jsonl")).unwrap(),
        std::fs::read(full.join("metrics.jsonl")).unwrap()
    );
    // Another rank count on resume: the run completes with three ranks from iteration 130.
    let other = tmp("ranks-other");
    run_ok(&small(&other, &[&two[..], &["--iterations", "130"]].concat()));
    let o = gfn(&[
        "train",
        "--resume",
        other.to_str().unwrap(),
        "--iterations",
        "200",
        "--virtual-ranks",
        "3",
    ]);
    assert!(o.status.success(), "resume with 3 ranks failed: {}", stderr(&o));
    let s = summary_without_timing(&other);
    assert_eq!(
        (s["iterations"].as_u64(), s["ranks"]["size"].as_u64()),
        (Some(200), Some(3))
    );
    assert_eq!(s["trajectories"], 130 * 2 * 16 + 70 * 3 * 16);
    for d in [full, part, one, other] {
        let _ = std::fs::remove_dir_all(d);
    }
    let dir = tmp("ranks-bad");
    let d = dir.to_str().unwrap();
    for (args, needles) in [
        (vec!["--loss", "pg-u"], vec!["pg-u", "policy-gradient", "2 ranks"]),
        (vec!["--loss", "led-db"], vec!["led-db", "LED"]),
        (vec!["--local-search", "2"], vec!["local_search = 2"]),
        (vec!["--updates-per-batch", "2"], vec!["updates_per_batch = 2"]),
        (
            vec!["--replay-size", "8"],
            vec!["replay_size = 8", "replay_shared = true"],
        ),
    ] {
        let a = [
            &[
                "train",
                "--ndim",
                "2",
                "--height",
                "5",
                "--out",
                d,
                "--virtual-ranks",
                "2",
            ][..],
            &args[..],
        ]
        .concat();
        assert_usage_error(&a, &needles);
        assert!(!dir.exists(), "{args:?}: a refused run left {d} behind");
    }
    assert_usage_error(&["train", "--out", d, "--virtual-ranks", "0"], &["--virtual-ranks 0"]);
    assert_usage_error(
        &["train", "--out", d, "--virtual-ranks", "4294967297"],
        &["ranks", "4294967297"],
    );
    assert_usage_error(
        &["train", "--out", d, "--virtual-ranks", "1000000"],
        &["ranks = 1000000", "memory"],
    );
    assert_usage_error(&["train", "--out", d, "--verify-ranks"], &["--verify-ranks"]);
    assert_usage_error(
        &["train", "--env", "ising", "--out", d, "--virtual-ranks", "2"],
        &["env = ising", "EBM"],
    );
    #[cfg(not(feature = "mpi"))]
    assert_usage_error(&["train", "--out", d, "--distributed"], &["--distributed", "mpi"]);
}
