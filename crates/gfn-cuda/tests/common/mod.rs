//! Helpers shared by the CPU tests (`kernels.rs`) and the GPU tests (`gpu.rs`).
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor};
use gfn_core::estimator::{BackwardPolicy, Estimator, EstimatorConfig};
use gfn_core::optim::AdamParams;
use gfn_core::{Env, GfnRng, rng_from_seed};
use gfn_cuda::ops::{SampleParams, SampleStep};
use gfn_cuda::{DeviceEnv, DeviceLoss, DeviceTrainerConfig};
use gfn_envs::binary::{BinaryEnv, LogDensity};
use gfn_envs::bitseq::{BitSeqConfig, BitSeqEnv, BitSeqOrder};
use gfn_envs::data::ising::LatticeIsing;
use gfn_envs::{Hypergrid, HypergridReward};
use rand::Rng;

/// The test environments: (gfn-core env, device env).
pub fn envs() -> Vec<(Box<dyn Env>, DeviceEnv)> {
    let grid = Hypergrid::new(3, 5, HypergridReward::default()).unwrap();
    let dgrid = DeviceEnv::hypergrid(&grid);
    let model = LatticeIsing::new(3, 0.2).unwrap();
    let m2 = model.clone();
    let f: LogDensity = std::sync::Arc::new(move |x: &[i32]| m2.log_unnormalised(x).unwrap());
    let ising = BinaryEnv::with_log_density(9, f).unwrap();
    let dising = DeviceEnv::lattice_ising(&model).unwrap();
    let mut out: Vec<(Box<dyn Env>, DeviceEnv)> = vec![(Box::new(grid), dgrid), (Box::new(ising), dising)];
    for order in [BitSeqOrder::Append, BitSeqOrder::Fill] {
        let env = BitSeqEnv::new(BitSeqConfig {
            n: 8,
            k: 2,
            order,
            n_modes: 5,
            seed: 3,
            ..BitSeqConfig::default()
        })
        .unwrap();
        let d = DeviceEnv::bitseq(&env).unwrap();
        out.push((Box::new(env), d));
    }
    out
}

/// A 2×32 MLP estimator with a shared trunk.
pub fn estimator(env: &DeviceEnv, backward: BackwardPolicy, flow: bool, dev: &Device, seed: u64) -> Estimator {
    estimator_with(env, backward, flow, true, dev, seed)
}

/// A 2×32 MLP estimator, shared trunk or one network per head.
pub fn estimator_with(
    env: &DeviceEnv,
    backward: BackwardPolicy,
    flow: bool,
    shared: bool,
    dev: &Device,
    seed: u64,
) -> Estimator {
    let cfg = EstimatorConfig {
        hidden: 32,
        layers: 2,
        shared_trunk: shared,
        backward,
        flow_head: flow,
    };
    let mut rng = rng_from_seed(seed);
    let s = env.spec;
    Estimator::new(cfg, s.feature_dim(), s.n_actions(), s.n_backward(), dev, &mut rng).unwrap()
}

pub fn trainer_config(batch: usize, loss: DeviceLoss, seed: u64) -> DeviceTrainerConfig {
    DeviceTrainerConfig {
        batch,
        loss,
        epsilon: 0.0,
        temperature: 1.0,
        seed,
        net: AdamParams::adam(1e-3),
        log_z: AdamParams::adam(0.1),
        done_check_every: 4,
    }
}

pub fn close_f32(a: &[f32], b: &[f32], tol: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            x.is_finite() && y.is_finite(),
            "{what}[{i}]: non-finite {x} / {y} (unwritten?)"
        );
        assert!(
            (x - y).abs() <= tol * y.abs().max(1.0),
            "{what}[{i}]: gpu {x} vs cpu {y}"
        );
    }
}

/// A random trajectory buffer: a rollout with random logits on the CPU.
pub fn random_traj(denv: &DeviceEnv, batch: usize, rng: &mut GfnRng) -> Tensor {
    let spec = denv.spec;
    let steps = spec.max_steps();
    let traj = Tensor::zeros((steps + 1, batch, spec.row_width()), DType::U32, &Device::Cpu).unwrap();
    let seed = rng.random::<u64>();
    for t in 0..steps {
        let logits: Vec<f32> = (0..batch * spec.n_actions())
            .map(|_| rng.random_range(-3.0f32..3.0))
            .collect();
        let logits = Tensor::from_vec(logits, (batch, spec.n_actions()), &Device::Cpu).unwrap();
        let op = SampleStep {
            env: spec,
            t,
            sample: SampleParams {
                seed,
                iteration: 0,
                epsilon: 0.1,
                inv_temp: 1.0,
            },
        };
        traj.inplace_op2(&logits, &op).unwrap();
    }
    traj
}
