//! Data-parallel training under `mpirun` (feature `mpi`; OpenMPI on this machine): two MPI
//! ranks equal two virtual ranks bit for bit and hold the same parameters after every step; two
//! ranks at batch 8 train the 4×8 grid as one rank at batch 16 does; a rank killed mid-run stops
//! the job, and the run resumes from its last checkpoint.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gfn-mpi-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// `mpirun -n N gfn ARGS` (root and oversubscription allowed, as CI needs).
fn mpirun(n: usize) -> Command {
    let mut c = Command::new("mpirun");
    c.args(["--allow-run-as-root", "--oversubscribe", "-n", &n.to_string()])
        .arg(env!("CARGO_BIN_EXE_gfn"))
        .env("RAYON_NUM_THREADS", "1");
    c
}

fn gfn(args: &[&str]) -> Output {
    let o = Command::new(env!("CARGO_BIN_EXE_gfn"))
        .args(args)
        .env("RAYON_NUM_THREADS", "1")
        .output()
        .expect("run gfn");
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    o
}

fn ok(o: Output, what: &str) -> Output {
    assert!(
        o.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn summary(dir: &Path) -> serde_json::Value {
    let mut s: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("summary.json")).unwrap()).unwrap();
    let o = s.as_object_mut().unwrap();
    for k in [
        "wall_seconds",
        "trajectories_per_second",
        "iterations_per_second",
        "useful_gflops_per_second",
        "metric_seconds",
    ] {
        o.remove(k);
    }
    if let Some(r) = o.get_mut("ranks").and_then(|r| r.as_object_mut()) {
        r.remove("exchange_seconds");
        r.remove("kind");
    }
    s
}

fn same_files(a: &Path, b: &Path) {
    for f in ["metrics.jsonl", "checkpoint.safetensors", "config.toml"] {
        assert_eq!(
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
            "{f} differs between {} and {}",
            a.display(),
            b.display()
        );
    }
}

const SMALL: [&str; 11] = [
    "train",
    "--ndim",
    "2",
    "--height",
    "5",
    "--hidden",
    "32",
    "--eval-every",
    "50",
    "--loss",
    "subtb",
];

#[test]
fn two_mpi_ranks_equal_two_virtual_ranks_and_agree_after_every_step() {
    let (mpi, virt) = (tmp("mpi"), tmp("virtual"));
    let o = mpirun(2)
        .args(SMALL)
        .args(["--iterations", "150", "--distributed", "--verify-ranks", "--out"])
        .arg(&mpi)
        .output()
        .unwrap();
    ok(o, "mpirun -n 2");
    gfn(&[
        &SMALL[..],
        &[
            "--iterations",
            "150",
            "--virtual-ranks",
            "2",
            "--out",
            virt.to_str().unwrap(),
        ],
    ]
    .concat());
    same_files(&mpi, &virt);
    let s = summary(&mpi);
    assert_eq!(s["ranks"]["verified_steps"], 150, "every step's parameters compared");
    assert_eq!(s["ranks"]["size"], 2);
    let mut v = summary(&virt);
    v["ranks"]["verified_steps"] = s["ranks"]["verified_steps"].clone();
    assert_eq!(s, v);
    let _ = std::fs::remove_dir_all(mpi);
    let _ = std::fs::remove_dir_all(virt);
}

/// The 4×8 grid, TB, 2×64 MLP, 3,000 iterations: two ranks at batch 8 each and one at batch 16
/// see the same trajectories per step; their exact L1 lands in the same band.
#[test]
fn two_ranks_at_batch_8_train_the_grid_as_one_rank_at_batch_16() {
    let grid = [
        "train",
        "--ndim",
        "4",
        "--height",
        "8",
        "--hidden",
        "64",
        "--iterations",
        "3000",
    ];
    let (two, one) = (tmp("two-b8"), tmp("one-b16"));
    let o = mpirun(2)
        .args(grid)
        .args(["--eval-every", "3000", "--batch-size", "8", "--distributed", "--out"])
        .arg(&two)
        .output()
        .unwrap();
    ok(o, "mpirun -n 2 (batch 8 each)");
    gfn(&[
        &grid[..],
        &[
            "--eval-every",
            "3000",
            "--batch-size",
            "16",
            "--out",
            one.to_str().unwrap(),
        ],
    ]
    .concat());
    let l1 = |d: &Path| summary(d)["exact"]["l1_sum"].as_f64().unwrap();
    let untrained = tmp("untrained");
    // The same grid and network, one iteration: the untrained policy's L1.
    gfn(&[
        &grid[..grid.len() - 2],
        &[
            "--iterations",
            "1",
            "--eval-every",
            "1",
            "--out",
            untrained.to_str().unwrap(),
        ],
    ]
    .concat());
    let (a, b, u) = (l1(&two), l1(&one), l1(&untrained));
    eprintln!("exact L1: two ranks × 8 {a:.4}, one rank × 16 {b:.4}, untrained {u:.4}");
    assert!(a < u / 4.0 && b < u / 4.0, "both train: {a}, {b} against untrained {u}");
    assert!(
        (a - b).abs() <= BAND,
        "same band: {a} and {b} differ by more than {BAND}"
    );
    for d in [two, one, untrained] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// The band of the test above: measured in release builds at seeds 0, 1, 2, one rank × 16 gave
/// exact L1 0.179, 0.182, 0.168 and two ranks × 8 gave 0.190, 0.172, 0.180 (differences of
/// 0.010–0.012, untrained 1.54); the band is about four times the largest difference.
const BAND: f64 = 0.05;

/// Kill rank 1 once the run has a checkpoint: mpirun stops the job naming the rank; the
/// checkpoint loads, and the run resumes under mpirun to its end.
#[test]
fn a_killed_rank_stops_the_job_and_the_run_resumes() {
    let dir = tmp("killed");
    let child = mpirun(2)
        .args(SMALL)
        .args(["--iterations", "100000", "--distributed", "--out"])
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !dir.join("checkpoint.safetensors").exists() {
        assert!(start.elapsed() < Duration::from_secs(120), "no checkpoint after 120 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = rank_pid(1).expect("rank 1's process");
    assert!(
        Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "the job went on without rank 1");
    assert!(err.contains("rank 1"), "mpirun should name rank 1: {err}");
    let o = mpirun(2)
        .args(["train", "--resume"])
        .arg(&dir)
        .args(["--iterations", "400", "--distributed"])
        .output()
        .unwrap();
    let o = ok(o, "the resumed run");
    let s = summary(&dir);
    assert_eq!(
        (s["iterations"].as_u64(), s["ranks"]["size"].as_u64()),
        (Some(400), Some(2))
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("resuming"));
    let _ = std::fs::remove_dir_all(dir);
}

/// The process of this test's job whose MPI rank is `rank` (from its environment).
fn rank_pid(rank: usize) -> Option<u32> {
    let exe = env!("CARGO_BIN_EXE_gfn");
    let want = format!("OMPI_COMM_WORLD_RANK={rank}");
    let me = format!("gfn-mpi-{}-killed", std::process::id());
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd);
        if !cmd.starts_with(exe) || !cmd.contains(&me) {
            continue;
        }
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        if env.split(|&b| b == 0).any(|v| v == want.as_bytes()) {
            return Some(pid);
        }
    }
    None
}
