//! gfn-cuda against the rest of the workspace (CPU, always) and the CUDA kernels against their
//! CPU references (skipped with a message where no GPU is present).
//!
//! * Rollouts replayed through the gfn-envs environments: same masks, features, transitions and
//!   rewards; the device losses equal gfn-objectives' TB and SubTB(λ) on the same trajectories,
//!   and so do their gradients.
//! * The fused ops' gradients equal candle autograd of the unfused formulas.
//! * A device-trained sampler matches the exact target.
//! * On a GPU: every kernel equals its CPU reference on fresh random inputs with poisoned
//!   outputs; one sampling step and one gradient match the CPU path to 1e-5.

use approx::assert_relative_eq;
use candle_core::{DType, Device, IndexOp, Tensor};
use gfn_core::estimator::{BackwardPolicy, Estimator, EstimatorConfig};
use gfn_core::optim::AdamParams;
use gfn_core::{Env, GfnRng, rng_from_seed};
use gfn_cuda::ops::{
    AdamApply, AdamMoments, BackwardActions, BackwardMask, Featurize, ForwardMask, LogReward, LogSoftmaxGather,
    LogSoftmaxGatherJacobian, POISON_U8, POISON_U32, RolloutStep, SampleParams, SampleStep, SubTbJacobian, SubTbLoss,
    UniformLogPb, set_poison,
};
use gfn_cuda::{DeviceEnv, DeviceLoss, DeviceTrainer, DeviceTrainerConfig, NO_ACTION};
use gfn_envs::binary::{BinaryEnv, LogDensity};
use gfn_envs::bitseq::{BitSeqConfig, BitSeqEnv, BitSeqOrder};
use gfn_envs::data::ising::LatticeIsing;
use gfn_envs::{Hypergrid, HypergridReward};
use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use rand::Rng;

/// The test environments: (gfn-core env, device env).
fn envs() -> Vec<(Box<dyn Env>, DeviceEnv)> {
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

fn estimator(env: &DeviceEnv, backward: BackwardPolicy, flow: bool, dev: &Device, seed: u64) -> Estimator {
    let cfg = EstimatorConfig {
        hidden: 32,
        layers: 2,
        shared_trunk: true,
        backward,
        flow_head: flow,
    };
    let mut rng = rng_from_seed(seed);
    let s = env.spec;
    Estimator::new(cfg, s.feature_dim(), s.n_actions(), s.n_backward(), dev, &mut rng).unwrap()
}

fn trainer_config(batch: usize, loss: DeviceLoss, seed: u64) -> DeviceTrainerConfig {
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

/// Replay the device trajectories through the gfn-core environment into a TrajectoryBatch,
/// checking masks, features, transitions and rewards on the way.
fn replay(env: &dyn Env, denv: &DeviceEnv, traj: &Tensor) -> gfn_core::batch::TrajectoryBatch {
    let (t1, batch, w) = traj.dims3().unwrap();
    let rows = traj.flatten_all().unwrap().to_vec1::<u32>().unwrap();
    let spec = denv.spec;
    let (sd, na, nb, nf) = (
        spec.state_dim(),
        spec.n_actions(),
        spec.n_backward(),
        spec.feature_dim(),
    );
    let mut out = gfn_core::batch::TrajectoryBatch::default();
    out.reset(env, batch);
    let mut mask = vec![false; na];
    let mut bmask = vec![false; nb];
    let mut feat = vec![0f32; nf];
    let mut core = vec![0i32; sd];
    for b in 0..batch {
        let mut state = vec![0i32; sd];
        env.initial_state(&mut state);
        let mut t = 0;
        loop {
            let row = &rows[(t * batch + b) * w..(t * batch + b + 1) * w];
            spec.core_state(row, &mut core);
            assert_eq!(core, state, "{}: state of trajectory {b} at step {t}", denv.name);
            env.featurize(&state, &mut feat);
            for (f, &v) in feat.iter().enumerate() {
                assert_eq!(spec.feature(row, f), v, "{}: feature {f}", denv.name);
            }
            env.backward_mask(&state, &mut bmask);
            for (a, &m) in bmask.iter().enumerate() {
                assert_eq!(spec.bwd_allowed(row, a), m, "{}: backward mask", denv.name);
            }
            out.push_row(env, b, t, &state);
            if env.exit_action().is_none() && env.is_terminal(&state) {
                assert_eq!(row[spec.done_col()], 1);
                out.finish(env, b, t, &state);
                break;
            }
            env.forward_mask(&state, &mut mask);
            for (a, &m) in mask.iter().enumerate() {
                assert_eq!(
                    spec.fwd_allowed(row, a),
                    m,
                    "{}: forward mask {a} at {state:?}",
                    denv.name
                );
            }
            let a = row[spec.act_col()];
            assert!(
                a != NO_ACTION && mask[a as usize],
                "{}: sampled action {a} not allowed",
                denv.name
            );
            if Some(a as usize) == env.exit_action() {
                out.set_step(b, t, a, gfn_core::batch::NONE, 0.0, 0.0);
                out.finish(env, b, t + 1, &state);
                break;
            }
            let back = env.step(&mut state, a as usize);
            assert_eq!(spec.bwd_action(a), back as u32);
            out.set_step(b, t, a, back as u32, 0.0, 0.0);
            t += 1;
            assert!(t < t1, "trajectory longer than the buffer");
        }
        let last = &rows[((t1 - 1) * batch + b) * w..((t1 - 1) * batch + b + 1) * w];
        assert_eq!(last[spec.steps_col()] as usize, out.lengths[b] as usize);
        let lr = spec.log_reward(last, &denv.aux);
        assert_relative_eq!(f64::from(lr), out.log_reward[b], epsilon = 1e-4, max_relative = 1e-5);
    }
    out
}

/// The device loss equals gfn-objectives' on the same trajectories, and so do the gradients.
fn check_against_objectives(loss: DeviceLoss, backward: BackwardPolicy) {
    let dev = Device::Cpu;
    for (env, denv) in envs() {
        let flow = matches!(loss, DeviceLoss::SubTb { .. });
        let est = estimator(&denv, backward, flow, &dev, 5);
        est.log_z().set(&Tensor::new(&[0.7f32], &dev).unwrap()).unwrap();
        let trainer = DeviceTrainer::new(denv.clone(), est.clone(), trainer_config(24, loss, 11)).unwrap();
        let traj = trainer.rollout(3, 24).unwrap();
        let batch = replay(env.as_ref(), &denv, &traj);
        let ours = trainer.batch_loss(&traj).unwrap();
        let x = Tensor::from_slice(&batch.features, (batch.num_rows(), batch.feature_dim), &dev).unwrap();
        let out = est.forward(&x).unwrap();
        let terms = gfn_objectives::terms::BalanceTerms::from_batch(&batch, &out).unwrap();
        let reference = match loss {
            DeviceLoss::Tb => gfn_objectives::tb::trajectory_balance(&terms, est.log_z().as_tensor()).unwrap(),
            DeviceLoss::SubTb { lambda } => gfn_objectives::subtb::subtrajectory_balance(&terms, lambda).unwrap(),
        };
        let (a, b) = (
            ours.loss.to_scalar::<f32>().unwrap(),
            reference.to_dtype(DType::F32).unwrap().to_scalar::<f32>().unwrap(),
        );
        assert_relative_eq!(a, b, max_relative = 1e-5, epsilon = 1e-6);
        let g_ref = reference.backward().unwrap();
        for (name, g) in trainer.gradients(&traj).unwrap() {
            let var = est
                .named_params()
                .into_iter()
                .chain([("log_z".to_string(), est.log_z().clone())])
                .find(|(n, _)| *n == name)
                .unwrap()
                .1;
            let want = match g_ref.get(var.as_tensor()) {
                Some(g) => g.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                None => vec![0.0; var.elem_count()],
            };
            let got = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let scale = want.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
            for (x, y) in got.iter().zip(&want) {
                assert!(
                    (x - y).abs() <= 2e-5 * scale,
                    "{} {name}: {x} vs {y} ({loss:?})",
                    denv.name
                );
            }
        }
    }
}

#[test]
fn tb_loss_and_gradients_equal_gfn_objectives() {
    check_against_objectives(DeviceLoss::Tb, BackwardPolicy::Uniform);
    check_against_objectives(DeviceLoss::Tb, BackwardPolicy::Learned);
}

#[test]
fn subtb_loss_and_gradients_equal_gfn_objectives() {
    check_against_objectives(DeviceLoss::SubTb { lambda: 0.9 }, BackwardPolicy::Learned);
    check_against_objectives(DeviceLoss::SubTb { lambda: 2.0 }, BackwardPolicy::Uniform);
}

#[test]
fn same_seed_same_samples_other_seed_other_samples() {
    let dev = Device::Cpu;
    let (_, denv) = envs().swap_remove(0);
    let est = estimator(&denv, BackwardPolicy::Uniform, false, &dev, 1);
    let a = DeviceTrainer::new(denv.clone(), est.clone(), trainer_config(64, DeviceLoss::Tb, 7)).unwrap();
    let b = DeviceTrainer::new(denv.clone(), est.clone(), trainer_config(64, DeviceLoss::Tb, 8)).unwrap();
    let r1 = a
        .rollout(5, 64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<u32>()
        .unwrap();
    let r2 = a
        .rollout(5, 64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<u32>()
        .unwrap();
    let r3 = b
        .rollout(5, 64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<u32>()
        .unwrap();
    let r4 = a
        .rollout(6, 64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<u32>()
        .unwrap();
    assert_eq!(r1, r2);
    assert_ne!(r1, r3);
    assert_ne!(r1, r4);
}

/// The fused rollout (features + MLP + sampling in one op) draws the same trajectories as the
/// layer-by-layer one (whose logits differ only by the rounding of the matrix products).
#[test]
fn fused_rollout_equals_layer_by_layer() {
    let dev = Device::Cpu;
    for (_, denv) in envs() {
        let est = estimator(&denv, BackwardPolicy::Learned, false, &dev, 3);
        let mut a = DeviceTrainer::new(denv.clone(), est.clone(), trainer_config(64, DeviceLoss::Tb, 5)).unwrap();
        let fused = a
            .rollout(2, 64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<u32>()
            .unwrap();
        a.set_fused_rollout(false);
        let plain = a
            .rollout(2, 64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<u32>()
            .unwrap();
        assert_eq!(fused.len(), plain.len(), "{}", denv.name);
        let same = fused.iter().zip(&plain).filter(|(x, y)| x == y).count();
        assert!(
            same as f64 >= 0.999 * fused.len() as f64,
            "{}: {} of {} differ",
            denv.name,
            fused.len() - same,
            fused.len()
        );
    }
}

/// Empirical action frequencies of the sampling step match the tempered, ε-mixed softmax.
#[test]
fn sample_step_draws_from_the_policy() {
    let (_, denv) = envs().swap_remove(0);
    let spec = denv.spec;
    let n = 40_000;
    let traj = Tensor::zeros((2, n, spec.row_width()), DType::U32, &Device::Cpu).unwrap();
    let logits: Vec<f32> = (0..n).flat_map(|_| [0.5f32, -1.0, 2.0, 0.0]).collect();
    let logits = Tensor::from_vec(logits, (n, 4), &Device::Cpu).unwrap();
    let (eps, temp) = (0.2, 2.0);
    let op = SampleStep {
        env: spec,
        t: 0,
        sample: SampleParams {
            seed: 9,
            iteration: 1,
            epsilon: eps,
            inv_temp: 1.0 / temp,
        },
    };
    traj.inplace_op2(&logits, &op).unwrap();
    let rows = traj.i(0).unwrap().flatten_all().unwrap().to_vec1::<u32>().unwrap();
    let mut counts = [0usize; 4];
    for r in rows.chunks_exact(spec.row_width()) {
        counts[r[spec.act_col()] as usize] += 1;
    }
    let l = [0.5f64, -1.0, 2.0, 0.0].map(|v| (v / temp).exp());
    let z: f64 = l.iter().sum();
    for a in 0..4 {
        let p = (1.0 - eps) * l[a] / z + eps / 4.0;
        let f = counts[a] as f64 / n as f64;
        let se = (p * (1.0 - p) / n as f64).sqrt();
        assert!((f - p).abs() < 5.0 * se, "action {a}: frequency {f} vs probability {p}");
    }
}

/// A device-trained sampler matches the exact target: hypergrid 2×4 by TB, total variation
/// between the exact terminating distribution of the trained policy and R/Z.
#[test]
fn device_training_reaches_the_exact_target() {
    let dev = Device::Cpu;
    let grid = Hypergrid::new(2, 4, HypergridReward::default()).unwrap();
    let denv = DeviceEnv::hypergrid(&grid);
    let est = estimator(&denv, BackwardPolicy::Uniform, false, &dev, 2);
    let mut cfg = trainer_config(64, DeviceLoss::Tb, 4);
    cfg.net = AdamParams::adam(3e-3);
    let mut trainer = DeviceTrainer::new(denv, est, cfg).unwrap();
    let mut last = f64::NAN;
    for _ in 0..400 {
        last = trainer.step().unwrap().loss;
    }
    let eval = gfn_core::exact::ExactEvaluator::new(&grid).unwrap();
    let m = eval.evaluate(trainer.estimator(), 0.0).unwrap();
    assert!(m.dist.tv < 0.05, "TV {} after 400 steps (last loss {last})", m.dist.tv);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, rng_seed: RngSeed::Fixed(2026), ..ProptestConfig::default() })]
    /// The fused SubTB(λ) and its Jacobian equal the same loss written with candle ops (f64,
    /// autograd), for random lengths, λ and inputs.
    #[test]
    fn fused_subtb_equals_autograd(seed in 0u64..1000, lambda in 0.05f64..3.0) {
        let mut rng = rng_from_seed(seed);
        let (t, b) = (rng.random_range(1..9usize), rng.random_range(1..6usize));
        let delta: Vec<f32> = (0..t * b).map(|_| rng.random_range(-2.0f32..2.0)).collect();
        let flows: Vec<f32> = (0..(t + 1) * b).map(|_| rng.random_range(-2.0f32..2.0)).collect();
        let lengths: Vec<u32> = (0..b).map(|_| rng.random_range(0..=t as u32)).collect();
        let dev = Device::Cpu;
        let d = Tensor::from_slice(&delta, (t, b), &dev).unwrap();
        let f = Tensor::from_slice(&flows, (t + 1, b), &dev).unwrap();
        let l = Tensor::from_slice(&lengths, b, &dev).unwrap();
        let op = SubTbLoss { log_lambda: lambda.ln() };
        let ours = d.apply_op3_no_bwd(&f, &l, &op).unwrap().to_vec1::<f32>().unwrap();
        let jac = d.apply_op3_no_bwd(&f, &l, &SubTbJacobian { log_lambda: lambda.ln() }).unwrap()
            .to_vec2::<f32>().unwrap();
        for col in 0..b {
            // Reference in f64 with autograd.
            let n = lengths[col] as usize;
            let dv = candle_core::Var::from_vec(delta.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(), (t, b), &dev).unwrap();
            let fv = candle_core::Var::from_vec(flows.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(), (t + 1, b), &dev).unwrap();
            let mut g = Vec::new();
            let mut acc = Tensor::zeros((), DType::F64, &dev).unwrap();
            for k in 0..=n {
                g.push((fv.as_tensor().i((k, col)).unwrap() - &acc).unwrap());
                if k < n { acc = (acc + dv.as_tensor().i((k, col)).unwrap()).unwrap(); }
            }
            let mut num = Tensor::zeros((), DType::F64, &dev).unwrap();
            let mut den = 0.0;
            for i in 0..n { for j in i + 1..=n {
                let w = lambda.powi((j - i) as i32);
                den += w;
                num = (num + ((&g[i] - &g[j]).unwrap().sqr().unwrap() * w).unwrap()).unwrap();
            }}
            let loss = if n == 0 { num } else { (num / den).unwrap() };
            let want = loss.to_scalar::<f64>().unwrap();
            prop_assert!((f64::from(ours[col]) - want).abs() <= 1e-5 * want.abs().max(1.0), "loss {} vs {}", ours[col], want);
            if n == 0 { continue; }
            let grads = loss.backward().unwrap();
            let gd = grads.get(dv.as_tensor()).unwrap().to_vec2::<f64>().unwrap();
            let gf = grads.get(fv.as_tensor()).unwrap().to_vec2::<f64>().unwrap();
            for r in 0..t {
                prop_assert!((f64::from(jac[r][col]) - gd[r][col]).abs() <= 1e-4 * gd[r][col].abs().max(1.0));
            }
            for r in 0..=t {
                prop_assert!((f64::from(jac[t + r][col]) - gf[r][col]).abs() <= 1e-4 * gf[r][col].abs().max(1.0));
            }
        }
    }

    /// The masked log-softmax-gather and its Jacobian equal candle's unfused ops with autograd.
    #[test]
    fn fused_log_softmax_gather_equals_autograd(seed in 0u64..1000) {
        let mut rng = rng_from_seed(seed);
        let (n, a) = (rng.random_range(1..12usize), rng.random_range(1..9usize));
        let logits: Vec<f32> = (0..n * a).map(|_| rng.random_range(-4.0f32..4.0)).collect();
        let mut mask = vec![0u8; n * a];
        let mut act = vec![NO_ACTION; n];
        for r in 0..n {
            for j in 0..a { mask[r * a + j] = u8::from(rng.random_bool(0.6)); }
            let pick = rng.random_range(0..a);
            mask[r * a + pick] = 1;
            if rng.random_bool(0.85) { act[r] = pick as u32; }
        }
        let dev = Device::Cpu;
        let lv = candle_core::Var::from_slice(&logits, (n, a), &dev).unwrap();
        let m = Tensor::from_slice(&mask, (n, a), &dev).unwrap();
        let ac = Tensor::from_slice(&act, n, &dev).unwrap();
        let ours = lv.as_tensor().apply_op3(&m, &ac, LogSoftmaxGather).unwrap();
        let w: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let wt = Tensor::from_slice(&w, n, &dev).unwrap();
        let g_ours = (&ours * &wt).unwrap().sum_all().unwrap().backward().unwrap();
        let g_ours = g_ours.get(lv.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        let lsm = gfn_core::estimator::masked_log_softmax(lv.as_tensor(), &m).unwrap();
        let idx: Vec<u32> = act.iter().map(|&x| if x == NO_ACTION { 0 } else { x }).collect();
        let keep: Vec<f32> = act.iter().map(|&x| if x == NO_ACTION { 0.0 } else { 1.0 }).collect();
        let gathered = lsm.gather(&Tensor::from_slice(&idx, (n, 1), &dev).unwrap(), 1).unwrap().squeeze(1).unwrap();
        let keep = Tensor::from_slice(&keep, n, &dev).unwrap();
        let zero = gathered.zeros_like().unwrap();
        let reference = keep.ne(0f32).unwrap().where_cond(&gathered, &zero).unwrap();
        let g_ref = (&reference * &wt).unwrap().sum_all().unwrap().backward().unwrap();
        let g_ref = g_ref.get(lv.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        let (o, r) = (ours.to_vec1::<f32>().unwrap(), reference.to_vec1::<f32>().unwrap());
        for i in 0..n {
            prop_assert!((o[i] - r[i]).abs() <= 1e-5 * r[i].abs().max(1.0), "value {} vs {}", o[i], r[i]);
            for j in 0..a {
                prop_assert!((g_ours[i][j] - g_ref[i][j]).abs() <= 1e-5, "grad {} vs {}", g_ours[i][j], g_ref[i][j]);
            }
        }
        let jac = lv.as_tensor().apply_op3_no_bwd(&m, &ac, &LogSoftmaxGatherJacobian).unwrap();
        prop_assert_eq!(jac.dims(), &[n, a]);
    }
}

#[test]
fn fused_bias_relu_equals_unfused() {
    let mut rng = rng_from_seed(5);
    let x: Vec<f32> = (0..60).map(|_| rng.random_range(-2.0f32..2.0)).collect();
    let b: Vec<f32> = (0..6).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let (x, b) = (
        Tensor::from_vec(x, (10, 6), &Device::Cpu).unwrap(),
        Tensor::from_vec(b, 6, &Device::Cpu).unwrap(),
    );
    let ours = x.apply_op2_no_bwd(&b, &gfn_cuda::ops::BiasAct { relu: true }).unwrap();
    let want = x.broadcast_add(&b).unwrap().relu().unwrap();
    assert_eq!(ours.to_vec2::<f32>().unwrap(), want.to_vec2::<f32>().unwrap());
    assert!(x.apply_op2_no_bwd(&x, &gfn_cuda::ops::BiasAct { relu: false }).is_err());
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let dev = Device::Cpu;
    let (_, denv) = envs().swap_remove(0);
    let spec = denv.spec;
    let wrong = Tensor::zeros((4, spec.row_width() + 1), DType::U32, &dev).unwrap();
    let e = wrong.apply_op1_no_bwd(&Featurize(spec)).unwrap_err().to_string();
    assert!(e.contains("wide"), "{e}");
    let rows = Tensor::zeros((4, spec.row_width()), DType::F32, &dev).unwrap();
    assert!(rows.apply_op1_no_bwd(&ForwardMask(spec)).is_err());
    let est = estimator(&denv, BackwardPolicy::Uniform, false, &dev, 1);
    let mut cfg = trainer_config(8, DeviceLoss::Tb, 1);
    cfg.temperature = 0.0;
    let e = DeviceTrainer::new(denv.clone(), est.clone(), cfg)
        .unwrap_err()
        .to_string();
    assert!(e.contains("temperature"), "{e}");
    let e = DeviceTrainer::new(denv, est, trainer_config(8, DeviceLoss::SubTb { lambda: 0.9 }, 1))
        .unwrap_err()
        .to_string();
    assert!(e.contains("flow head"), "{e}");
}

#[test]
fn non_finite_loss_stops_training_with_a_message() {
    let dev = Device::Cpu;
    let (_, denv) = envs().swap_remove(0);
    let est = estimator(&denv, BackwardPolicy::Uniform, false, &dev, 1);
    est.log_z().set(&Tensor::new(&[f32::NAN], &dev).unwrap()).unwrap();
    let mut trainer = DeviceTrainer::new(denv, est, trainer_config(8, DeviceLoss::Tb, 1)).unwrap();
    let e = trainer.step().unwrap_err().to_string();
    assert!(e.contains("non-finite") || e.contains("NaN"), "{e}");
}

// ---------------------------------------------------------------- GPU against CPU references

fn gpu() -> Option<Device> {
    let d = gfn_cuda::try_cuda();
    if d.is_none() {
        eprintln!(
            "skipped: no CUDA GPU here (this build has cuda: {}); run on a GPU machine with `--features cuda`",
            gfn_cuda::CUDA_BUILT
        );
    }
    d
}

fn close_f32(a: &[f32], b: &[f32], tol: f32, what: &str) {
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
fn random_traj(denv: &DeviceEnv, batch: usize, rng: &mut GfnRng) -> Tensor {
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

#[test]
fn gpu_kernels_equal_cpu_references() {
    let Some(gpu) = gpu() else { return };
    set_poison(true);
    let mut rng = rng_from_seed(2026);
    for (_, denv) in envs() {
        let spec = denv.spec;
        let batch = 77;
        let traj = random_traj(&denv, batch, &mut rng);
        let traj_g = traj.to_device(&gpu).unwrap();
        let (t1, _, w) = traj.dims3().unwrap();
        let rows = traj.reshape((t1 * batch, w)).unwrap();
        let rows_g = traj_g.reshape((t1 * batch, w)).unwrap();
        let name = &denv.name;
        // featurize, masks
        let a = rows
            .apply_op1_no_bwd(&Featurize(spec))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let b = rows_g
            .apply_op1_no_bwd(&Featurize(spec))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(a, b, "{name}: featurize");
        for bwd in [false, true] {
            let (a, b) = if bwd {
                (
                    rows.apply_op1_no_bwd(&BackwardMask(spec)).unwrap(),
                    rows_g.apply_op1_no_bwd(&BackwardMask(spec)).unwrap(),
                )
            } else {
                (
                    rows.apply_op1_no_bwd(&ForwardMask(spec)).unwrap(),
                    rows_g.apply_op1_no_bwd(&ForwardMask(spec)).unwrap(),
                )
            };
            let (a, b) = (
                a.flatten_all().unwrap().to_vec1::<u8>().unwrap(),
                b.flatten_all().unwrap().to_vec1::<u8>().unwrap(),
            );
            assert!(!b.contains(&POISON_U8), "{name}: mask left unwritten");
            assert_eq!(a, b, "{name}: mask (backward {bwd})");
        }
        // backward actions, uniform log P_B
        let a = traj
            .apply_op1_no_bwd(&BackwardActions(spec))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<u32>()
            .unwrap();
        let b = traj_g
            .apply_op1_no_bwd(&BackwardActions(spec))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<u32>()
            .unwrap();
        assert!(!b.contains(&POISON_U32), "{name}: backward actions left unwritten");
        assert_eq!(a, b, "{name}: backward actions");
        let a = traj
            .apply_op1_no_bwd(&UniformLogPb(spec))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let b = traj_g
            .apply_op1_no_bwd(&UniformLogPb(spec))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        close_f32(&b, &a, 1e-6, &format!("{name}: uniform log P_B"));
        // log reward
        let aux = Tensor::from_slice(&denv.aux, denv.aux.len(), &Device::Cpu).unwrap();
        let aux_g = aux.to_device(&gpu).unwrap();
        let a = rows
            .apply_op2_no_bwd(&aux, &LogReward(spec))
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let b = rows_g
            .apply_op2_no_bwd(&aux_g, &LogReward(spec))
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        close_f32(&b, &a, 1e-6, &format!("{name}: log reward"));
        // sample step: fresh logits, whole rollout bit-identical
        let seed = rng.random::<u64>();
        let tc = Tensor::zeros((t1, batch, w), DType::U32, &Device::Cpu).unwrap();
        let mut tg = Tensor::zeros((t1, batch, w), DType::U32, &gpu).unwrap();
        for t in 0..t1 - 1 {
            // Poison the slots the step writes.
            let mut host = tg.flatten_all().unwrap().to_vec1::<u32>().unwrap();
            for v in &mut host[(t + 1) * batch * w..(t + 2) * batch * w] {
                *v = POISON_U32;
            }
            tg = Tensor::from_vec(host, (t1, batch, w), &gpu).unwrap();
            let logits: Vec<f32> = (0..batch * spec.n_actions())
                .map(|_| rng.random_range(-3.0f32..3.0))
                .collect();
            let lc = Tensor::from_vec(logits, (batch, spec.n_actions()), &Device::Cpu).unwrap();
            let lg = lc.to_device(&gpu).unwrap();
            let sample = SampleParams {
                seed,
                iteration: 3,
                epsilon: 0.05,
                inv_temp: 0.8,
            };
            let op = SampleStep { env: spec, t, sample };
            tc.inplace_op2(&lc, &op).unwrap();
            tg.inplace_op2(&lg, &op).unwrap();
        }
        let (a, b) = (
            tc.flatten_all().unwrap().to_vec1::<u32>().unwrap(),
            tg.flatten_all().unwrap().to_vec1::<u32>().unwrap(),
        );
        assert!(!b.contains(&POISON_U32), "{name}: sample step left rows unwritten");
        assert_eq!(a, b, "{name}: sampled trajectories differ");
        // fused rollout step: random MLP weights, whole rollout bit-identical
        let est = estimator(&denv, BackwardPolicy::Learned, false, &Device::Cpu, rng.random::<u64>());
        let layers_c: Vec<(Tensor, Tensor)> = est.nets()[0]
            .layers
            .iter()
            .map(|l| (l.weight.as_tensor().clone(), l.bias.as_tensor().clone()))
            .collect();
        let layers_g: Vec<(Tensor, Tensor)> = layers_c
            .iter()
            .map(|(w, b)| (w.to_device(&gpu).unwrap(), b.to_device(&gpu).unwrap()))
            .collect();
        let sample = SampleParams {
            seed,
            iteration: 4,
            epsilon: 0.1,
            inv_temp: 1.3,
        };
        let tc = Tensor::zeros((t1, batch, w), DType::U32, &Device::Cpu).unwrap();
        let mut host = vec![POISON_U32; t1 * batch * w];
        host[..batch * w].fill(0);
        let tg = Tensor::from_vec(host, (t1, batch, w), &gpu).unwrap();
        for t in 0..t1 - 1 {
            tc.inplace_op1(&RolloutStep {
                env: spec,
                t,
                sample,
                layers: layers_c.clone(),
            })
            .unwrap();
            tg.inplace_op1(&RolloutStep {
                env: spec,
                t,
                sample,
                layers: layers_g.clone(),
            })
            .unwrap();
        }
        let (a, b) = (
            tc.flatten_all().unwrap().to_vec1::<u32>().unwrap(),
            tg.flatten_all().unwrap().to_vec1::<u32>().unwrap(),
        );
        assert!(!b.contains(&POISON_U32), "{name}: fused rollout left rows unwritten");
        assert_eq!(a, b, "{name}: fused rollouts differ");
        // log-softmax-gather and its Jacobian
        let n = t1 * batch;
        let logits: Vec<f32> = (0..n * spec.n_actions())
            .map(|_| rng.random_range(-5.0f32..5.0))
            .collect();
        let lc = Tensor::from_vec(logits, (n, spec.n_actions()), &Device::Cpu).unwrap();
        let lg = lc.to_device(&gpu).unwrap();
        let mc = rows.apply_op1_no_bwd(&ForwardMask(spec)).unwrap();
        let mg = mc.to_device(&gpu).unwrap();
        let ac = rows
            .narrow(1, spec.act_col(), 1)
            .unwrap()
            .squeeze(1)
            .unwrap()
            .contiguous()
            .unwrap();
        let ag = ac.to_device(&gpu).unwrap();
        let a = lc
            .apply_op3_no_bwd(&mc, &ac, &LogSoftmaxGather)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let b = lg
            .apply_op3_no_bwd(&mg, &ag, &LogSoftmaxGather)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        close_f32(&b, &a, 1e-5, &format!("{name}: log-softmax-gather"));
        let a = lc
            .apply_op3_no_bwd(&mc, &ac, &LogSoftmaxGatherJacobian)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let b = lg
            .apply_op3_no_bwd(&mg, &ag, &LogSoftmaxGatherJacobian)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        close_f32(&b, &a, 1e-5, &format!("{name}: log-softmax-gather Jacobian"));
        // SubTB forward and Jacobian
        let steps = t1 - 1;
        let delta: Vec<f32> = (0..steps * batch).map(|_| rng.random_range(-2.0f32..2.0)).collect();
        let flows: Vec<f32> = (0..t1 * batch).map(|_| rng.random_range(-2.0f32..2.0)).collect();
        let dc = Tensor::from_vec(delta, (steps, batch), &Device::Cpu).unwrap();
        let fc = Tensor::from_vec(flows, (t1, batch), &Device::Cpu).unwrap();
        let lenc = traj
            .i(steps)
            .unwrap()
            .narrow(1, spec.steps_col(), 1)
            .unwrap()
            .squeeze(1)
            .unwrap()
            .contiguous()
            .unwrap();
        let (dg, fg, leng) = (
            dc.to_device(&gpu).unwrap(),
            fc.to_device(&gpu).unwrap(),
            lenc.to_device(&gpu).unwrap(),
        );
        for lambda in [0.3f64, 0.9, 1.7] {
            let op = SubTbLoss {
                log_lambda: lambda.ln(),
            };
            let a = dc.apply_op3_no_bwd(&fc, &lenc, &op).unwrap().to_vec1::<f32>().unwrap();
            let b = dg.apply_op3_no_bwd(&fg, &leng, &op).unwrap().to_vec1::<f32>().unwrap();
            close_f32(&b, &a, 1e-5, &format!("{name}: subtb λ={lambda}"));
            let op = SubTbJacobian {
                log_lambda: lambda.ln(),
            };
            let a = dc
                .apply_op3_no_bwd(&fc, &lenc, &op)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let b = dg
                .apply_op3_no_bwd(&fg, &leng, &op)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            close_f32(&b, &a, 1e-5, &format!("{name}: subtb Jacobian λ={lambda}"));
        }
    }
    // Fused bias + ReLU of the rollout MLP
    for relu in [false, true] {
        let (n, m) = (93, 37);
        let x: Vec<f32> = (0..n * m).map(|_| rng.random_range(-2.0f32..2.0)).collect();
        let b: Vec<f32> = (0..m).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let (xc, bc) = (
            Tensor::from_vec(x, (n, m), &Device::Cpu).unwrap(),
            Tensor::from_vec(b, m, &Device::Cpu).unwrap(),
        );
        let op = gfn_cuda::ops::BiasAct { relu };
        let want = xc.broadcast_add(&bc).unwrap();
        let want = if relu { want.relu().unwrap() } else { want };
        let a = xc.apply_op2_no_bwd(&bc, &op).unwrap();
        assert_eq!(
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            want.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        let g = xc
            .to_device(&gpu)
            .unwrap()
            .apply_op2_no_bwd(&bc.to_device(&gpu).unwrap(), &op)
            .unwrap();
        close_f32(
            &g.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            &a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            0.0,
            "bias-act",
        );
    }
    // Adam
    let n = 1000;
    let g: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let p: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let mv: Vec<f32> = (0..2 * n)
        .map(|i| {
            if i < n {
                rng.random_range(-0.1f32..0.1)
            } else {
                rng.random_range(0.0f32..0.1)
            }
        })
        .collect();
    let (gc, pc, mvc) = (
        Tensor::from_vec(g, n, &Device::Cpu).unwrap(),
        Tensor::from_vec(p, n, &Device::Cpu).unwrap(),
        Tensor::from_vec(mv, 2 * n, &Device::Cpu).unwrap(),
    );
    let (gg, pg, mvg) = (
        gc.to_device(&gpu).unwrap(),
        pc.to_device(&gpu).unwrap(),
        mvc.to_device(&gpu).unwrap(),
    );
    let mo = AdamMoments {
        beta1: 0.9,
        beta2: 0.999,
    };
    let ap = AdamApply {
        lr: 1e-3,
        sm: 10.0,
        sv: 1000.0,
        eps: 1e-8,
        decay: 0.9999,
    };
    for (p, mv, g) in [(&pc, &mvc, &gc), (&pg, &mvg, &gg)] {
        mv.inplace_op2(g, &mo).unwrap();
        p.inplace_op2(mv, &ap).unwrap();
    }
    close_f32(
        &mvg.to_vec1::<f32>().unwrap(),
        &mvc.to_vec1::<f32>().unwrap(),
        1e-6,
        "adam moments",
    );
    close_f32(
        &pg.to_vec1::<f32>().unwrap(),
        &pc.to_vec1::<f32>().unwrap(),
        1e-6,
        "adam parameters",
    );
    set_poison(false);
}

/// Parity with the CPU path on the same inputs: one sampling step (same logits, same states →
/// same actions), one gradient of TB and SubTB (same weights, same trajectories) to 1e-5.
#[test]
fn gpu_step_and_gradient_match_cpu() {
    let Some(gpu) = gpu() else { return };
    for (_, denv) in envs() {
        for (loss, backward) in [
            (DeviceLoss::Tb, BackwardPolicy::Learned),
            (DeviceLoss::Tb, BackwardPolicy::Uniform),
            (DeviceLoss::SubTb { lambda: 0.9 }, BackwardPolicy::Learned),
        ] {
            let flow = matches!(loss, DeviceLoss::SubTb { .. });
            let est_c = estimator(&denv, backward, flow, &Device::Cpu, 8);
            let est_g = estimator(&denv, backward, flow, &gpu, 8);
            let tc = DeviceTrainer::new(denv.clone(), est_c, trainer_config(64, loss, 3)).unwrap();
            let tg = DeviceTrainer::new(denv.clone(), est_g, trainer_config(64, loss, 3)).unwrap();
            let traj = tc.rollout(1, 64).unwrap();
            let traj_g = tg.rollout(1, 64).unwrap();
            // Same weights, same seed: the rollouts agree except where float rounding of the
            // logits moves a draw across a boundary (probability ~1e-7 per draw).
            let (a, b) = (
                traj.flatten_all().unwrap().to_vec1::<u32>().unwrap(),
                traj_g.flatten_all().unwrap().to_vec1::<u32>().unwrap(),
            );
            let same = a.iter().zip(&b).filter(|(x, y)| x == y).count();
            assert!(
                same as f64 >= 0.999 * a.len() as f64,
                "{}: rollouts differ in {} of {}",
                denv.name,
                a.len() - same,
                a.len()
            );
            let gc = tc.gradients(&traj).unwrap();
            let gg = tg.gradients(&traj.to_device(&gpu).unwrap()).unwrap();
            for ((name, a), (_, b)) in gc.iter().zip(&gg) {
                let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let scale = a.iter().fold(1e-2f32, |m, v| m.max(v.abs()));
                for (x, y) in b.iter().zip(&a) {
                    assert!(
                        (x - y).abs() <= 1e-5 * scale,
                        "{} {name} ({loss:?}): gpu {x} vs cpu {y}",
                        denv.name
                    );
                }
            }
        }
    }
}
