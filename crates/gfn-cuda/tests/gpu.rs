//! The CUDA kernels on a GPU against their CPU references, and the device engine on a GPU
//! against the CPU path. A custom harness (libtest-mimic): without a GPU every test is reported
//! as ignored, never as passed; with `GFN_REQUIRE_GPU=1` a missing GPU fails the run; every test
//! that ran prints the device it ran on.
//!
//! Run on a GPU machine: `cargo test -p gfn-cuda --features cuda --test gpu` (or the bundled
//! binary of `cargo xtask check-cuda --bundle`, see benches/gpu/run.sh).

use candle_core::{DType, Device, IndexOp, Tensor};
use gfn_core::estimator::BackwardPolicy;
use gfn_core::optim::AdamParams;
use gfn_core::rng_from_seed;
use gfn_cuda::ops::{
    AdamApply, AdamMoments, BackwardActions, BackwardMask, ColSum, Featurize, ForwardMask, HeadCols, HeadGrad,
    LogReward, LogSoftmaxGather, LogSoftmaxGatherJacobian, POISON_U8, POISON_U32, ReluGrad, RolloutStep, SampleParams,
    SampleStep, StepLogProb, SubTbJacobian, SubTbLoss, TbGrad, UniformLogPb, set_poison,
};
use gfn_cuda::{DeviceEnv, DeviceLoss, DeviceTrainer};
use gfn_envs::{Hypergrid, HypergridReward};
use libtest_mimic::{Arguments, Failed, Trial};
use rand::Rng;

mod common;
use common::{close_f32, envs, estimator, estimator_with, random_traj, trainer_config};

type GpuTest = fn(&Device);

fn main() {
    let args = Arguments::from_args();
    let gpu = gfn_cuda::try_cuda();
    let require = std::env::var("GFN_REQUIRE_GPU").is_ok_and(|v| v == "1");
    let name = gpu.as_ref().map(gfn_cuda::device_name);
    match (&name, require) {
        (None, true) => {
            eprintln!(
                "error: GFN_REQUIRE_GPU=1 but no CUDA GPU is usable (this build has cuda: {})",
                gfn_cuda::CUDA_BUILT
            );
            std::process::exit(1);
        }
        (None, false) => eprintln!(
            "no CUDA GPU here (this build has cuda: {}): the GPU tests are ignored",
            gfn_cuda::CUDA_BUILT
        ),
        (Some(n), _) => eprintln!("GPU tests on {n}"),
    }
    let tests: [(&str, GpuTest); 7] = [
        ("gpu_kernels_equal_cpu_references", gpu_kernels_equal_cpu_references),
        (
            "gpu_training_pass_kernels_equal_cpu_references",
            gpu_training_pass_kernels_equal_cpu_references,
        ),
        ("gpu_step_and_gradient_match_cpu", gpu_step_and_gradient_match_cpu),
        (
            "gpu_manual_gradients_equal_autograd",
            gpu_manual_gradients_equal_autograd,
        ),
        (
            "gpu_rollout_rows_give_the_same_samples",
            gpu_rollout_rows_give_the_same_samples,
        ),
        (
            "gpu_training_reaches_the_exact_target",
            gpu_training_reaches_the_exact_target,
        ),
        (
            "gpu_sequence_and_graph_policies_match_cpu",
            gpu_sequence_and_graph_policies_match_cpu,
        ),
    ];
    let trials = tests
        .into_iter()
        .map(|(test_name, f)| {
            let dev = gpu.clone();
            let label = name.clone().unwrap_or_default();
            Trial::test(test_name, move || {
                let Some(dev) = dev else {
                    return Err(Failed::from("no GPU"));
                };
                f(&dev);
                eprintln!("{test_name}: ran on {label}");
                Ok(())
            })
            .with_ignored_flag(gpu.is_none())
        })
        .collect();
    libtest_mimic::run(&args, trials).exit();
}

fn gpu_kernels_equal_cpu_references(gpu: &Device) {
    let gpu = gpu.clone();
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
                rows: 0,
            })
            .unwrap();
            tg.inplace_op1(&RolloutStep {
                env: spec,
                t,
                sample,
                layers: layers_g.clone(),
                rows: 1 << (t % 5),
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
/// same actions), one gradient of TB and SubTB (same weights, same trajectories) to 1e-5, by
/// autograd and by the hand-written pass.
fn gpu_step_and_gradient_match_cpu(gpu: &Device) {
    let gpu = gpu.clone();
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
            let manual = |t: &DeviceTrainer, traj: &Tensor| -> Vec<(String, Tensor)> {
                let (_, g) = t.manual_gradients(traj).unwrap();
                let names = t.optimizer_state().into_iter().map(|(n, _)| n);
                names
                    .zip(g)
                    .filter_map(|(n, g)| Some((format!("{n} (manual)"), g?)))
                    .collect()
            };
            let mc = manual(&tc, &traj);
            let mg = manual(&tg, &traj.to_device(&gpu).unwrap());
            assert_eq!(mc.len(), mg.len());
            for ((name, a), (_, b)) in gc.iter().zip(&gg).chain(mc.iter().zip(&mg)) {
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

fn to_f32(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn random_tensor(rng: &mut gfn_core::GfnRng, shape: &[usize], lo: f32, hi: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(lo..hi)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// The kernels of the hand-written training pass against their CPU references, on fresh random
/// inputs with poisoned outputs: step log-probabilities (forward and backward heads), the head
/// gradient (per trajectory and per step, with every column written), TB's loss and gradient,
/// ReLU's backward and the column sums.
fn gpu_training_pass_kernels_equal_cpu_references(gpu: &Device) {
    set_poison(true);
    let mut rng = rng_from_seed(77);
    for (_, denv) in envs() {
        let spec = denv.spec;
        let name = &denv.name;
        let batch = 53;
        let traj = random_traj(&denv, batch, &mut rng);
        let traj_g = traj.to_device(gpu).unwrap();
        let (t1, _, _) = traj.dims3().unwrap();
        let (steps, n) = (t1 - 1, t1 * batch);
        let (na, nb) = (spec.n_actions(), spec.n_backward());
        // An output wider than the heads: [P_F | P_B | log F | 3 spare columns].
        let c = na + nb + 4;
        let out = random_tensor(&mut rng, &[n, c], -4.0, 4.0);
        let out_g = out.to_device(gpu).unwrap();
        for (col, backward) in [(0, false), (na, true)] {
            let op = StepLogProb {
                env: spec,
                col,
                backward,
            };
            let a = to_f32(&out.apply_op2_no_bwd(&traj, &op).unwrap());
            let b = to_f32(&out_g.apply_op2_no_bwd(&traj_g, &op).unwrap());
            close_f32(&b, &a, 1e-5, &format!("{name}: step log-prob (backward {backward})"));
        }
        let g_traj = random_tensor(&mut rng, &[batch], -1.0, 1.0);
        let g_rows = random_tensor(&mut rng, &[3, t1, batch], -1.0, 1.0);
        let shared = HeadCols {
            pf: Some(0),
            pb: Some(na),
            flow: Some(na + nb),
        };
        for (cols, per_trajectory) in [
            (shared, true),
            (shared, false),
            (
                HeadCols {
                    pb: Some(na),
                    ..HeadCols::default()
                },
                false,
            ),
        ] {
            let g = if per_trajectory { &g_traj } else { &g_rows };
            let op = HeadGrad {
                env: spec,
                cols,
                per_trajectory,
            };
            let a = to_f32(&out.apply_op3_no_bwd(&traj, g, &op).unwrap());
            let b = to_f32(
                &out_g
                    .apply_op3_no_bwd(&traj_g, &g.to_device(gpu).unwrap(), &op)
                    .unwrap(),
            );
            close_f32(
                &b,
                &a,
                1e-5,
                &format!("{name}: head gradient {cols:?} per trajectory {per_trajectory}"),
            );
        }
        let pf = random_tensor(&mut rng, &[steps, batch], -3.0, 0.0);
        let pb = random_tensor(&mut rng, &[steps, batch], -3.0, 0.0);
        let rz = random_tensor(&mut rng, &[batch + 1], -5.0, 5.0);
        let a = to_f32(&pf.apply_op3_no_bwd(&pb, &rz, &TbGrad).unwrap());
        let b = to_f32(
            &pf.to_device(gpu)
                .unwrap()
                .apply_op3_no_bwd(&pb.to_device(gpu).unwrap(), &rz.to_device(gpu).unwrap(), &TbGrad)
                .unwrap(),
        );
        close_f32(&b, &a, 1e-5, &format!("{name}: TB loss and gradient"));
    }
    for (n, m) in [(1, 1), (77, 37), (5000, 9), (40_000, 256)] {
        let h = random_tensor(&mut rng, &[n, m], -1.0, 1.0).relu().unwrap();
        let d = random_tensor(&mut rng, &[n, m], -1.0, 1.0);
        let (hg, dg) = (h.to_device(gpu).unwrap(), d.to_device(gpu).unwrap());
        d.inplace_op2(&h, &ReluGrad).unwrap();
        dg.inplace_op2(&hg, &ReluGrad).unwrap();
        close_f32(&to_f32(&dg), &to_f32(&d), 0.0, "relu gradient");
        let a = to_f32(&d.apply_op1_no_bwd(&ColSum).unwrap());
        let b = to_f32(&dg.apply_op1_no_bwd(&ColSum).unwrap());
        close_f32(&b, &a, 1e-6, &format!("column sums {n}×{m}"));
        let want = to_f32(&d.sum(0).unwrap());
        close_f32(&a, &want, 1e-4, &format!("column sums {n}×{m} against candle"));
    }
    set_poison(false);
}

/// On the GPU, the hand-written training pass equals autograd: every configuration of the CPU
/// test, at a larger batch.
fn gpu_manual_gradients_equal_autograd(gpu: &Device) {
    let cases = [
        (DeviceLoss::Tb, BackwardPolicy::Learned, false, true),
        (DeviceLoss::Tb, BackwardPolicy::Uniform, false, false),
        (DeviceLoss::Tb, BackwardPolicy::Learned, true, false),
        (DeviceLoss::SubTb { lambda: 0.9 }, BackwardPolicy::Learned, true, true),
        (DeviceLoss::SubTb { lambda: 2.0 }, BackwardPolicy::Uniform, true, false),
    ];
    for (_, denv) in envs() {
        for (k, &(loss, backward, flow, shared)) in cases.iter().enumerate() {
            let est = estimator_with(&denv, backward, flow, shared, gpu, 90 + k as u64);
            let trainer = DeviceTrainer::new(denv.clone(), est, trainer_config(200, loss, 9)).unwrap();
            let traj = trainer.rollout(5, 200).unwrap();
            let what = format!("{} {loss:?} {backward:?} flow {flow} shared {shared}", denv.name);
            let want_loss = trainer.batch_loss(&traj).unwrap().loss.to_scalar::<f32>().unwrap();
            let (got_loss, manual) = trainer.manual_gradients(&traj).unwrap();
            let got_loss = to_f32(&got_loss)[0];
            assert!(
                (got_loss - want_loss).abs() <= 1e-5 * want_loss.abs().max(1.0),
                "{what}: loss {got_loss} vs {want_loss}"
            );
            for ((name, want), got) in trainer.gradients(&traj).unwrap().iter().zip(&manual) {
                let want = to_f32(want);
                let Some(got) = got else {
                    assert!(want.iter().all(|&v| v == 0.0), "{what} {name}: autograd reaches it");
                    continue;
                };
                let scale = want.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
                for (i, (x, y)) in to_f32(got).iter().zip(&want).enumerate() {
                    assert!(
                        (x - y).abs() <= 2e-5 * scale,
                        "{what} {name}[{i}]: manual {x} vs autograd {y}"
                    );
                }
            }
        }
    }
}

/// The fused rollout draws the same trajectories for every rows-per-block setting, and the same
/// as the CPU reference, at batch sizes that leave partial blocks.
fn gpu_rollout_rows_give_the_same_samples(gpu: &Device) {
    for (_, denv) in envs() {
        let est_c = estimator(&denv, BackwardPolicy::Learned, false, &Device::Cpu, 12);
        let est_g = estimator(&denv, BackwardPolicy::Learned, false, gpu, 12);
        let batch = 149;
        let tc = DeviceTrainer::new(denv.clone(), est_c, trainer_config(batch, DeviceLoss::Tb, 6)).unwrap();
        let want = tc
            .rollout(3, batch)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<u32>()
            .unwrap();
        for rows in [0, 1, 2, 4, 8, 16] {
            let mut tg =
                DeviceTrainer::new(denv.clone(), est_g.clone(), trainer_config(batch, DeviceLoss::Tb, 6)).unwrap();
            tg.set_rollout_rows(rows);
            let got = tg
                .rollout(3, batch)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<u32>()
                .unwrap();
            let same = got.iter().zip(&want).filter(|(a, b)| a == b).count();
            assert!(
                same as f64 >= 0.999 * want.len() as f64,
                "{} rows {rows}: {} of {} values differ from the CPU reference",
                denv.name,
                want.len() - same,
                want.len()
            );
        }
    }
}

/// Trained on the GPU with the hand-written pass, a sampler matches the exact target of a small
/// hypergrid (TV < 0.05), as the CPU test does on the CPU references.
fn gpu_training_reaches_the_exact_target(gpu: &Device) {
    let grid = Hypergrid::new(2, 4, HypergridReward::default()).unwrap();
    let denv = DeviceEnv::hypergrid(&grid);
    let est = estimator(&denv, BackwardPolicy::Uniform, false, gpu, 2);
    let mut cfg = trainer_config(64, DeviceLoss::Tb, 4);
    cfg.net = AdamParams::adam(3e-3);
    let mut trainer = DeviceTrainer::new(denv, est, cfg).unwrap();
    assert!(trainer.manual_backward());
    let mut last = f64::NAN;
    for _ in 0..400 {
        last = trainer.step().unwrap().loss;
    }
    let eval = gfn_core::exact::ExactEvaluator::new(&grid).unwrap();
    let m = eval.evaluate(trainer.estimator(), 0.0).unwrap();
    assert!(m.dist.tv < 0.05, "TV {} after 400 steps (last loss {last})", m.dist.tv);
}

/// The policy seam's sequence and graph networks on the GPU (candle's CUDA backend): the same
/// seed gives the same transformer and GIN on both devices, and their outputs and gradients on the
/// same observations agree with the CPU's to 1e-4 of the largest entry.
fn gpu_sequence_and_graph_policies_match_cpu(gpu: &Device) {
    use gfn_core::nets::gin::GinConfig;
    use gfn_core::nets::transformer::{Positions, TransformerConfig};
    use gfn_core::obs::Observations;
    use gfn_core::policy::{GinPolicy, Policy, TransformerPolicy};
    use gfn_envs::IndSetEnv;
    use gfn_envs::bitseq::{BitSeqConfig, BitSeqEnv};
    let compare = |what: &str, cpu: &dyn Policy, dev: &dyn Policy, obs_c: &Observations, obs_g: &Observations| {
        let (oc, og) = (cpu.forward(obs_c).unwrap(), dev.forward(obs_g).unwrap());
        let (a, b) = (to_f32(&oc.pf_logits), to_f32(&og.pf_logits));
        let scale = a.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
        for (x, y) in b.iter().zip(&a) {
            assert!((x - y).abs() <= 1e-4 * scale, "{what} logits: gpu {x} vs cpu {y}");
        }
        let loss = |o: &gfn_core::policy::PolicyOutput| o.pf_logits.sqr().unwrap().sum_all().unwrap();
        let (gc, gg) = (loss(&oc).backward().unwrap(), loss(&og).backward().unwrap());
        for ((name, vc), (_, vg)) in cpu.named_params().iter().zip(dev.named_params()) {
            let (Some(a), Some(b)) = (gc.get(vc.as_tensor()), gg.get(vg.as_tensor())) else {
                continue;
            };
            let (a, b) = (to_f32(a), to_f32(b));
            let scale = a.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
            for (x, y) in b.iter().zip(&a) {
                assert!((x - y).abs() <= 1e-4 * scale, "{what} {name}: gpu {x} vs cpu {y}");
            }
        }
    };
    let bitseq = BitSeqEnv::new(BitSeqConfig {
        n: 8,
        k: 2,
        n_modes: 3,
        ..BitSeqConfig::default()
    })
    .unwrap();
    let config = TransformerConfig {
        vocab: bitseq.vocab() + 1,
        max_len: bitseq.words(),
        d_model: 32,
        heads: 4,
        layers: 2,
        d_ff: 64,
        positions: Positions::Learned,
        position_outputs: 0,
        pooled_outputs: 0,
    };
    let tc = TransformerPolicy::new(config.clone(), 4, None, true, &Device::Cpu, &mut rng_from_seed(1)).unwrap();
    let tg = TransformerPolicy::new(config, 4, None, true, gpu, &mut rng_from_seed(1)).unwrap();
    let states = [-1, -1, -1, -1, 3, -1, -1, -1, 3, 0, 2, -1, 1, 1, 1, 1];
    compare(
        "transformer",
        &tc,
        &tg,
        &Observations::Tokens(bitseq.tokens(&states, &Device::Cpu).unwrap()),
        &Observations::Tokens(bitseq.tokens(&states, gpu).unwrap()),
    );
    let indset = IndSetEnv::cycle_with_chord(8, 1.0).unwrap();
    let config = GinConfig {
        node_features: 3,
        edge_features: 0,
        hidden: 32,
        layers: 3,
        mlp_layers: 2,
        node_outputs: 0,
        graph_outputs: 0,
        learn_eps: true,
        graph_norm: false,
    };
    let gc = GinPolicy::new(config, 8, true, true, &Device::Cpu, &mut rng_from_seed(2)).unwrap();
    let gg = GinPolicy::new(config, 8, true, true, gpu, &mut rng_from_seed(2)).unwrap();
    let states = [0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 1];
    compare(
        "gin",
        &gc,
        &gg,
        &Observations::Graphs(indset.graphs(&states, &Device::Cpu).unwrap()),
        &Observations::Graphs(indset.graphs(&states, gpu).unwrap()),
    );
}
