#![allow(missing_docs)] // criterion_group! generates undocumented functions.
//! Criterion micro-benchmarks (`cargo bench -p gfn-benches`), all on hypergrid 4×8 with the
//! recipe's MLP (2 hidden layers of 256, P_B sharing the trunk), one thread:
//!
//! - `env/*`: batched forward masks, steps and featurisation of 1,024 states;
//! - `sample/*`: forward sampling of 16 and 256 trajectories, without gradients (the inference
//!   forward) and with them (the tape that records activations for the backward pass);
//! - `loss/*`: each objective's loss and its backward pass (candle autograd) on a fixed batch of
//!   16 trajectories;
//! - `train_step/*`: a whole training iteration (sample, loss, backward, Adam) per objective;
//! - `mlp/*`: the MLP step alone: taped forward, hand-written backward and fused Adam over 256 rows;
//! - `joint/*`: one EB-GFN iteration (`gfn_ebm::JointTrainer`) at the official synthetic-data
//!   sizes instead (D = 32, data batch 128, GFlowNet MLP 3×256 with P_F and P_B on a shared trunk,
//!   EBM MLP 32 → 3×256 → 1, `K = D` as after the warm-up), with back-and-forth (`mh`) and
//!   GFlowNet (`gfn`) negatives, on the tape engine (`step`) and on the candle-graph reference
//!   (`reference`). Select them with `cargo bench -p gfn-benches -- joint`.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, SamplingMode, criterion_group, criterion_main};

use candle_core::Device;
use gfn::config::TrainConfig;
use gfn::train::Trainer;
use gfn_core::fast::{FastPath, Inference};
use gfn_core::optim::{Adam, AdamParams};
use gfn_core::tape::{MlpGrads, MlpTape};
use gfn_core::{Env, Estimator, Sampler, SamplingOptions, TrajectoryBatch, rng_from_seed};
use gfn_ebm::{JointConfig, JointTrainer, MlpEnergy, Negatives};
use gfn_envs::hypergrid::{Hypergrid, HypergridReward};
use gfn_objectives::Objective;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn config(loss: &str) -> TrainConfig {
    TrainConfig {
        loss: loss.parse().expect("a known loss"),
        ..TrainConfig::default()
    }
}

fn trainer(loss: &str) -> Trainer {
    Trainer::new(config(loss), &Device::Cpu).expect("the recipe builds")
}

fn env_benches(c: &mut Criterion) {
    let env = Hypergrid::new(4, 8, HypergridReward::default()).expect("valid grid");
    let n = 1024;
    let d = env.state_dim();
    // States spread over the grid: coordinate i of state k is (k >> 2i) mod 8.
    let states: Vec<i32> = (0..n)
        .flat_map(|k| (0..d).map(move |i| ((k >> (2 * i)) % 7) as i32))
        .collect();
    let mut masks = vec![false; n * env.n_actions()];
    let mut features = vec![0.0f32; n * env.feature_dim()];
    let mut g = c.benchmark_group("env");
    g.bench_function("forward_masks_1024", |b| {
        b.iter(|| env.forward_masks(black_box(&states), &mut masks))
    });
    g.bench_function("featurize_1024", |b| {
        b.iter(|| env.featurize_batch(black_box(&states), &mut features))
    });
    g.bench_function("step_1024", |b| {
        b.iter_batched_ref(
            || states.clone(),
            |s| {
                for (k, row) in s.chunks_exact_mut(d).enumerate() {
                    black_box(env.step(row, k % d));
                }
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn sample_benches(c: &mut Criterion) {
    let t = trainer("tb");
    let env = t.env.as_ref();
    let est: &Estimator = t.net.mlp().expect("the MLP policy");
    let mut g = c.benchmark_group("sample");
    for n in [16usize, 256] {
        let mut rng = rng_from_seed(0);
        let mut sampler = Sampler::new();
        let mut batch = TrajectoryBatch::default();
        g.bench_function(format!("no_grad_{n}"), |b| {
            let mut policy = Inference::new(est).expect("CPU f32 estimator");
            b.iter(|| {
                sampler
                    .sample_forward_with(env, &mut policy, n, SamplingOptions::default(), &mut rng, &mut batch)
                    .expect("sampling works")
            })
        });
        let mut fast = FastPath::default();
        g.bench_function(format!("with_grad_tape_{n}"), |b| {
            b.iter(|| {
                fast.clear();
                let mut view = fast.view(est);
                sampler
                    .sample_forward_with(env, &mut view, n, SamplingOptions::default(), &mut rng, &mut batch)
                    .expect("sampling works")
            })
        });
    }
    g.finish();
}

fn loss_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("loss");
    for name in ["tb", "db", "subtb", "fm"] {
        let t = trainer(name);
        let env = t.env.as_ref();
        let est: &Estimator = t.net.mlp().expect("the MLP policy");
        let objective = Objective::parse(name, 0.9).expect("known objective");
        let mut rng = rng_from_seed(1);
        let mut batch = TrajectoryBatch::default();
        Sampler::new()
            .sample_forward(env, est, 16, SamplingOptions::default(), &mut rng, &mut batch)
            .expect("sampling works");
        g.bench_function(format!("{name}_forward_backward_16"), |b| {
            b.iter(|| {
                let loss = objective.loss(env, &batch, &mut &*est).expect("loss");
                black_box(loss.backward().expect("backward"))
            })
        });
    }
    g.finish();
}

fn train_step_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("train_step");
    for name in ["tb", "db", "subtb", "fm"] {
        let mut t = trainer(name);
        g.bench_function(format!("{name}_batch16"), |b| b.iter(|| t.step().expect("step")));
    }
    g.finish();
}

fn mlp_benches(c: &mut Criterion) {
    let t = trainer("tb");
    let est = t.net.mlp().expect("the MLP policy");
    let net = &est.nets()[0];
    let rows = 256;
    let input = net.dims()[0];
    let x: Vec<f32> = (0..rows * input).map(|k| ((k * 7) % 5) as f32 * 0.25).collect();
    let out_dim = *net.dims().last().expect("layers");
    let d_out: Vec<f32> = (0..rows * out_dim).map(|k| ((k % 11) as f32 - 5.0) * 1e-3).collect();
    let params: Vec<_> = est.named_params().into_iter().map(|(n, v)| (n, v, 0)).collect();
    let mut adam = Adam::new(params, vec![AdamParams::adam(1e-3)]);
    let mut tape = MlpTape::default();
    let mut grads = MlpGrads::default();
    c.bench_function("mlp/forward_backward_adam_256", |b| {
        b.iter(|| {
            tape.clear();
            net.forward_taped(&x, rows, &mut tape).expect("forward");
            net.backward_taped(&tape, &d_out, &mut grads).expect("backward");
            let slices: Vec<Option<&[f32]>> = grads
                .layers
                .iter()
                .flat_map(|(w, b)| [Some(w.as_slice()), Some(b.as_slice())])
                .collect();
            adam.step_slices(&slices).expect("adam");
        })
    });
}

fn joint_benches(c: &mut Criterion) {
    let (d, n) = (32, 128);
    let mut g = c.benchmark_group("joint");
    // Iterations of 0.1–0.3 s: ten samples of one iteration each.
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .measurement_time(std::time::Duration::from_secs(5));
    for (name, negatives) in [("mh", Negatives::BackAndForth), ("gfn", Negatives::Gfn)] {
        for reference in [false, true] {
            let dev = Device::Cpu;
            let mut rng = rng_from_seed(0);
            let ebm = MlpEnergy::new(d, 256, 3, &dev, &mut rng).expect("energy model");
            let config = JointConfig {
                warmup_k: 1,
                negatives,
                ..JointConfig::default()
            };
            let mut t = JointTrainer::new(config, Box::new(ebm), &dev, &mut rng).expect("trainer");
            let data: Vec<i32> = (0..n * d)
                .map(|_| i32::from(gfn_core::rng::uniform(&mut rng) < 0.5))
                .collect();
            let engine = if reference { "reference" } else { "step" };
            g.bench_function(format!("{engine}_{name}_d32_batch128"), |b| {
                b.iter(|| {
                    if reference {
                        t.step_reference(&data, &mut rng).expect("step")
                    } else {
                        t.step(&data, &mut rng).expect("step")
                    }
                })
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).warm_up_time(std::time::Duration::from_millis(500)).measurement_time(std::time::Duration::from_secs(2));
    targets = env_benches, sample_benches, loss_benches, train_step_benches, mlp_benches, joint_benches
}
criterion_main!(benches);
