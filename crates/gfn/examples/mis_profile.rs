//! Where a GIN training step's time goes on the maximum-independent-set task (the reduced RB
//! graphs, 20–60 nodes, as `cargo xtask bench mis` trains them: GIN 5×64, batch 16, DB).
//!
//! One step, phase by phase, over `REPEATS` steps after a warm-up: the rollout (per time step,
//! the states observed as graphs and one no-grad GIN forward, then a draw), the observation of the
//! batch's states for the loss, the loss's forward with the autograd graph, the backward pass, and
//! Adam. Prints milliseconds per step and the share of each, and graphs per second.
//!
//! `cargo run --release -p gfn --example mis_profile [-- HIDDEN [GRAPHS]]`

use std::time::Instant;

use gfn::config::TrainConfig;
use gfn::core::optim::{Adam, AdamParams};
use gfn::core::policy::Policy;
use gfn::core::{Sampler, SamplingOptions, TrajectoryBatch, rng_from_seed};
use gfn::seam::Net;
use gfn::train::Trainer;

/// As the `gfn` binary: candle allocates a buffer per op, and glibc's malloc maps and unmaps large
/// ones each time.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const REPEATS: usize = 30;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let hidden: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(64);
    let graphs: String = args.get(2).cloned().unwrap_or_else(|| "reduced".into());
    let config = TrainConfig {
        env: "mis".parse()?,
        mis_graphs: graphs.parse()?,
        mis_test: 1,
        policy: "gin".parse()?,
        hidden,
        layers: 5,
        loss: "db".parse()?,
        ..TrainConfig::default()
    };
    let t = Trainer::new(config, &gfn::core::candle_core::Device::Cpu)?;
    let env = t.env.as_ref();
    let Net::Seam(seam) = &t.net else {
        anyhow::bail!("expected the GIN behind the seam");
    };
    let params: Vec<_> = seam
        .policy()
        .named_params()
        .into_iter()
        .map(|(n, v)| (n, v, 0))
        .collect();
    let mut adam = Adam::new(params, vec![AdamParams::adam(1e-3)]);
    let (mut sampler, mut batch) = (Sampler::new(), TrajectoryBatch::default());
    let mut rng = rng_from_seed(0);
    let mut phases = [0.0f64; 5];
    let (mut states, mut nodes, mut edges) = (0usize, 0usize, 0usize);
    for rep in 0..REPEATS + 3 {
        let mut lap = Instant::now();
        let mut mark = |i: usize, lap: &mut Instant| {
            if rep >= 3 {
                phases[i] += lap.elapsed().as_secs_f64();
            }
            *lap = Instant::now();
        };
        t.net
            .sample(env, &mut sampler, 16, SamplingOptions::default(), &mut rng, &mut batch)?;
        mark(0, &mut lap);
        let rows = batch.states.len() / env.state_dim();
        let obs = seam.observe(env, &batch.states)?;
        mark(1, &mut lap);
        let loss = seam.loss(env, &batch, None)?;
        mark(2, &mut lap);
        let grads = loss.backward()?;
        mark(3, &mut lap);
        adam.step(&grads)?;
        mark(4, &mut lap);
        if rep >= 3 {
            if let gfn::core::obs::Observations::Graphs(g) = &obs {
                let (n, e) = g.sizes()?;
                (nodes, edges) = (nodes + n, edges + e);
            }
            states += rows;
        }
    }
    let total: f64 = phases.iter().sum();
    let names = [
        "rollout (observe + no-grad GIN + draw, per time step)",
        "observe the batch's states as graphs (for the loss)",
        "loss forward (GIN with autograd, balance terms, DB)",
        "backward",
        "Adam",
    ];
    println!(
        "GIN {hidden}×5 on {} graphs, DB, batch 16: {:.1} ms per step, {:.0} graphs/s",
        graphs,
        1e3 * total / REPEATS as f64,
        16.0 * REPEATS as f64 / total
    );
    println!(
        "per step: {:.0} states in the loss, {:.0} nodes, {:.0} directed edges",
        states as f64 / REPEATS as f64,
        nodes as f64 / REPEATS as f64,
        edges as f64 / REPEATS as f64
    );
    for (name, p) in names.iter().zip(phases) {
        println!(
            "  {name:<58} {:>8.2} ms  {:>5.1}%",
            1e3 * p / REPEATS as f64,
            100.0 * p / total
        );
    }
    Ok(())
}
