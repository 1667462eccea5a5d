//! Data-parallel scaling under mpirun: training speed of 1, 2, … MPI ranks on a task, with the
//! time spent exchanging gradients apart. Rank 0 prints one JSON line.
//!
//! ```text
//! cargo build --release -p gfn-cli --features mpi --example scaling
//! mpirun -n 2 target/release/examples/scaling --task grid --iterations 2000 --batch 16
//! mpirun -n 2 target/release/examples/scaling --task slow-reward --iterations 100 --batch 16
//! ```
//!
//! Tasks: `grid`, the 4×8 hypergrid with TB and the 2×256 MLP (the quickstart); `slow-reward`,
//! sequences of 8 tokens over 4 letters whose reward costs 1 ms of CPU per object (a busy wait,
//! standing for an expensive reward model), TB and the same MLP. `--batch` is per rank.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use candle_core::Device;
use gfn::config::{ConfigArgs, TrainConfig};
use gfn::distributed::MpiEnvironment;
use gfn::environments::sequence::{SequenceEnv, SequenceOrder};
use gfn::train::Trainer;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn config(text: &str) -> Result<TrainConfig> {
    let args: ConfigArgs = toml::from_str(text)?;
    Ok(args.resolve(ConfigArgs::default(), "")?)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str, default: &str| -> String {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
            .unwrap_or_else(|| default.to_string())
    };
    let task = flag("--task", "grid");
    let iterations: usize = flag("--iterations", "1000").parse().context("--iterations")?;
    let batch: usize = flag("--batch", "16").parse().context("--batch")?;
    let warmup: usize = flag("--warmup", "20").parse().context("--warmup")?;
    let mpi = MpiEnvironment::init()?;
    let (size, rank) = (mpi.size(), mpi.rank());
    let common = format!(
        "loss = \"tb\"\nbatch_size = {batch}\niterations = {}\n",
        iterations + warmup
    );
    let mut t = match task.as_str() {
        "grid" => Trainer::new(
            config(&format!("env = \"hypergrid\"\nndim = 4\nheight = 8\n{common}"))?,
            &Device::Cpu,
        )?,
        "slow-reward" => {
            // Cheap while the trainer enumerates the 4^8 sequences for exact evaluation, 1 ms
            // per object once training starts.
            let slow = Arc::new(AtomicBool::new(false));
            let on = slow.clone();
            let reward = Arc::new(move |x: &[i32], out: &mut [f64]| -> gfn::core::Result<()> {
                let len = x.len() / out.len();
                for (row, o) in x.chunks(len).zip(out.iter_mut()) {
                    let start = Instant::now();
                    while on.load(Ordering::Relaxed) && start.elapsed() < Duration::from_millis(1) {
                        std::hint::spin_loop();
                    }
                    *o = row.iter().filter(|&&c| c == 0).count() as f64;
                }
                Ok(())
            });
            let env = SequenceEnv::new("slow-reward", 4, 8, SequenceOrder::Append, reward)?;
            let t = Trainer::with_env(config(&common)?, Box::new(env), &Device::Cpu)?;
            slow.store(true, Ordering::Relaxed);
            t
        }
        other => bail!("invalid --task {other}: grid or slow-reward"),
    };
    t.distribute(Box::new(mpi.ranks()))?;
    for _ in 0..warmup {
        t.step()?;
    }
    let (wall0, exchange0) = (t.wall_seconds, t.ranks().map_or(0.0, |r| r.exchange_seconds));
    let start = Instant::now();
    for _ in 0..iterations {
        t.step()?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let wall = t.wall_seconds - wall0;
    let exchange = t.ranks().map_or(0.0, |r| r.exchange_seconds) - exchange0;
    if rank == 0 {
        println!(
            "{}",
            serde_json::json!({
                "task": task, "ranks": size, "batch_per_rank": batch, "iterations": iterations,
                "params": t.net.num_params(), "elapsed_seconds": elapsed, "step_seconds": wall,
                "exchange_seconds": exchange,
                "iterations_per_second": iterations as f64 / elapsed,
                "trajectories_per_second": (iterations * batch * size) as f64 / elapsed,
                "exchange_ms_per_step": 1e3 * exchange / iterations as f64,
            })
        );
    }
    Ok(())
}
