//! The joint loop and the estimators, against exact answers on small `D`.

use candle_core::Device;
use rand::Rng;

use gfn_core::exact::ExactEvaluator;
use gfn_core::{GfnRng, rng_from_seed};
use gfn_ebm::energy::log_density_values;
use gfn_ebm::eval::{ebm_nll, exact_log_z, gfn_log_likelihood, importance_log_z};
use gfn_ebm::{AcceptRule, IsingEnergy, JointConfig, JointTrainer, MlpEnergy, Negatives, PcdTrainer};

/// Two noisy modes on {0,1}^d: all-zeros and all-ones, each bit flipped with probability 0.1.
fn two_modes(n: usize, d: usize, rng: &mut GfnRng) -> Vec<i32> {
    let mut out = Vec::with_capacity(n * d);
    for _ in 0..n {
        let base = i32::from(rng.random::<bool>());
        for _ in 0..d {
            let flip = rng.random::<f64>() < 0.1;
            out.push(if flip { 1 - base } else { base });
        }
    }
    out
}

/// Exact NLL of `x` under the two-mode distribution.
fn true_nll(x: &[i32], d: usize) -> f64 {
    let per: Vec<f64> = x
        .chunks_exact(d)
        .map(|r| {
            let ones = r.iter().filter(|&&v| v == 1).count() as i32;
            let p = |k: i32| 0.1f64.powi(d as i32 - k) * 0.9f64.powi(k);
            -(0.5 * p(ones) + 0.5 * p(d as i32 - ones)).ln()
        })
        .collect();
    per.iter().sum::<f64>() / per.len() as f64
}

fn small_config(negatives: Negatives) -> JointConfig {
    JointConfig {
        hidden: 64,
        layers: 2,
        lr: 1e-3,
        lr_logz: 0.1,
        ebm_lr: 1e-3,
        back_ratio: 0.5,
        warmup_k: 200,
        negatives,
        accept: AcceptRule::MetropolisHastings,
        gfn_steps: 1,
    }
}

/// Importance-sampled log Z is unbiased for any GFlowNet: an untrained one agrees with
/// enumeration within a few standard errors; and the GFlowNet likelihood estimate agrees with
/// the exact terminating distribution.
#[test]
fn estimators_agree_with_enumeration() {
    let dev = Device::Cpu;
    let mut rng = rng_from_seed(1);
    let d = 6;
    let ebm = IsingEnergy::new(d, 0.3, &dev, &mut rng).unwrap();
    let exact = exact_log_z(&ebm, &dev).unwrap();
    let t = JointTrainer::new(small_config(Negatives::Gfn), Box::new(ebm.clone()), &dev, &mut rng).unwrap();
    let is = importance_log_z(&t.env, &t.estimator, &ebm, 20_000, 4096, &mut rng).unwrap();
    assert!(
        (is.value - exact).abs() < 4.0 * is.std_err + 1e-3,
        "IS log Z {} ± {} vs exact {exact}",
        is.value,
        is.std_err
    );
    // GFN likelihood: exact P_T by dynamic programming over the enumerated DAG.
    let ev = ExactEvaluator::new(&t.env).unwrap();
    let p_t = ev.terminating_distribution(&ev.policy_log_probs(&t.estimator).unwrap());
    let xs = [0, 1, 1, 0, 1, 0, 1, 1, 1, 1, 1, 1];
    let mut exact_nll = 0.0;
    for x in xs.chunks_exact(d) {
        exact_nll -= p_t[ev.terminal_index(x).unwrap()].ln() / 2.0;
    }
    let est = gfn_log_likelihood(&t.env, &t.estimator, &xs, 4000, &mut rng).unwrap();
    assert!(
        (est.value - exact_nll).abs() < 0.02,
        "GFN NLL {} vs exact {exact_nll}",
        est.value
    );
    assert!(exact_log_z(&MlpEnergy::new(21, 4, 1, &dev, &mut rng).unwrap(), &dev).is_err());
}

/// The joint loop learns: on D = 8 two-mode data the EBM's exact NLL falls well below the
/// uniform model's 8 ln 2 toward the data's entropy, the GFlowNet's NLL follows, and the loop is
/// reproducible from the seed.
#[test]
fn joint_training_learns_a_two_mode_distribution() {
    let dev = Device::Cpu;
    let d = 8;
    let run = |negatives: Negatives, iterations: usize| {
        let mut rng = rng_from_seed(7);
        let ebm = MlpEnergy::new(d, 64, 2, &dev, &mut rng).unwrap();
        // Negatives straight from the GFlowNet need a slower EBM: it must not outrun its sampler.
        let config = match negatives {
            Negatives::Gfn => JointConfig {
                ebm_lr: 3e-4,
                ..small_config(negatives)
            },
            Negatives::BackAndForth => small_config(negatives),
        };
        let mut t = JointTrainer::new(config, Box::new(ebm), &dev, &mut rng).unwrap();
        let mut last = None;
        for _ in 0..iterations {
            let data = two_modes(64, d, &mut rng);
            last = Some(t.step(&data, &mut rng).unwrap());
        }
        (t, last.unwrap(), rng)
    };
    let test = two_modes(2000, d, &mut rng_from_seed(99));
    let uniform = d as f64 * 2f64.ln();
    let truth = true_nll(&test, d);
    for negatives in [Negatives::BackAndForth, Negatives::Gfn] {
        let (t, last, mut rng) = run(negatives, 600);
        let log_z = exact_log_z(t.ebm.as_ref(), &dev).unwrap();
        let z = gfn_ebm::eval::Estimate {
            value: log_z,
            std_err: 0.0,
            n: 0,
        };
        let nll = ebm_nll(t.ebm.as_ref(), &test, z, &dev).unwrap();
        let gfn = gfn_log_likelihood(&t.env, &t.estimator, &test[..200 * d], 16, &mut rng).unwrap();
        println!(
            "{negatives:?}: EBM NLL {:.3}, GFN NLL {:.3} ± {:.3}, truth {truth:.3}, uniform {uniform:.3}, last {last:?}",
            nll.value, gfn.value, gfn.std_err
        );
        assert!(
            nll.value < uniform - 0.5 * (uniform - truth),
            "EBM NLL {} did not learn",
            nll.value
        );
        assert!(
            gfn.value < uniform - 0.3 * (uniform - truth),
            "GFN NLL {} did not learn",
            gfn.value
        );
        if negatives == Negatives::BackAndForth {
            assert!(last.acceptance.unwrap() > 0.0);
        }
    }
    // Reproducible: the same seed gives the same EBM.
    let a = run(Negatives::BackAndForth, 20).0;
    let b = run(Negatives::BackAndForth, 20).0;
    let fa = log_density_values(a.ebm.as_ref(), &test[..80], &dev).unwrap();
    let fb = log_density_values(b.ebm.as_ref(), &test[..80], &dev).unwrap();
    assert_eq!(fa, fb);
}

/// The PCD baseline learns the same distribution (one Gibbs sweep per iteration).
#[test]
fn pcd_baseline_learns() {
    let dev = Device::Cpu;
    let d = 8;
    let mut rng = rng_from_seed(7);
    let ebm = MlpEnergy::new(d, 64, 2, &dev, &mut rng).unwrap();
    let mut pcd = PcdTrainer::new(Box::new(ebm), 1e-3, 64, d, &dev, &mut rng).unwrap();
    for _ in 0..600 {
        let data = two_modes(64, d, &mut rng);
        pcd.step(&data, &mut rng).unwrap();
    }
    let test = two_modes(2000, d, &mut rng_from_seed(99));
    let log_z = exact_log_z(pcd.ebm.as_ref(), &dev).unwrap();
    let z = gfn_ebm::eval::Estimate {
        value: log_z,
        std_err: 0.0,
        n: 0,
    };
    let nll = ebm_nll(pcd.ebm.as_ref(), &test, z, &dev).unwrap();
    let (uniform, truth) = (d as f64 * 2f64.ln(), true_nll(&test, d));
    println!("PCD: EBM NLL {:.3}, truth {truth:.3}, uniform {uniform:.3}", nll.value);
    assert!(nll.value < uniform - 0.5 * (uniform - truth), "PCD NLL {}", nll.value);
    assert!(pcd.step(&[0, 1], &mut rng).is_err());
    assert!(
        PcdTrainer::new(
            Box::new(MlpEnergy::new(d, 4, 1, &dev, &mut rng).unwrap()),
            1e-3,
            0,
            1,
            &dev,
            &mut rng
        )
        .is_err()
    );
}

#[test]
fn bad_data_is_a_clear_error() {
    let dev = Device::Cpu;
    let mut rng = rng_from_seed(0);
    let ebm = MlpEnergy::new(4, 8, 1, &dev, &mut rng).unwrap();
    let mut t = JointTrainer::new(small_config(Negatives::Gfn), Box::new(ebm), &dev, &mut rng).unwrap();
    let e = t.step(&[0, 1, 2, 0], &mut rng).unwrap_err().to_string();
    assert!(e.contains("data batch") && e.contains("0 or 1"), "{e}");
    assert!(t.step(&[0, 1, 1], &mut rng).is_err());
    let mut rejects = |bad: JointConfig, field: &str| {
        let ebm = MlpEnergy::new(4, 8, 1, &dev, &mut rng).unwrap();
        let e = JointTrainer::new(bad, Box::new(ebm), &dev, &mut rng)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains(field), "{e}");
    };
    rejects(
        JointConfig {
            back_ratio: 1.5,
            ..small_config(Negatives::Gfn)
        },
        "back_ratio",
    );
    rejects(
        JointConfig {
            gfn_steps: 0,
            ..small_config(Negatives::Gfn)
        },
        "gfn_steps",
    );
    // A multiplier of the work per iteration past any use (the bad-input sweep's hang).
    rejects(
        JointConfig {
            gfn_steps: gfn_ebm::joint::MAX_GFN_STEPS + 1,
            ..small_config(Negatives::Gfn)
        },
        "gfn_steps",
    );
    let c = small_config(Negatives::Gfn);
    assert_eq!((c.k_at(0, 8), c.k_at(99, 8), c.k_at(10_000, 8)), (1, 4, 8));
}

/// The tape engine (`step`) computes the reference engine's iteration (`step_reference`):
/// from the same seed and data, the first iteration's GFlowNet loss, EBM loss and acceptance
/// agree to float rounding, and both consume the same random draws.
#[test]
fn tape_step_matches_the_reference_step() {
    let dev = Device::Cpu;
    let d = 10;
    for (negatives, gfn_steps) in [
        (Negatives::BackAndForth, 1),
        (Negatives::Gfn, 1),
        (Negatives::BackAndForth, 2),
    ] {
        let config = JointConfig {
            warmup_k: 4,
            gfn_steps,
            ..small_config(negatives)
        };
        let trainer = |seed: u64| {
            let mut rng = rng_from_seed(seed);
            let ebm = MlpEnergy::new(d, 32, 2, &dev, &mut rng).unwrap();
            JointTrainer::new(config.clone(), Box::new(ebm), &dev, &mut rng).unwrap()
        };
        let (mut fast, mut reference) = (trainer(5), trainer(5));
        let data = two_modes(48, d, &mut rng_from_seed(6));
        let (mut rng_fast, mut rng_ref) = (rng_from_seed(8), rng_from_seed(8));
        let a = fast.step(&data, &mut rng_fast).unwrap();
        let b = reference.step_reference(&data, &mut rng_ref).unwrap();
        println!("{negatives:?}: tape {a:?}, reference {b:?}");
        let close = |x: f64, y: f64| (x - y).abs() <= 1e-4 * x.abs().max(y.abs()).max(1e-3);
        assert!(
            close(a.gfn_loss, b.gfn_loss),
            "GFN loss {} vs {}",
            a.gfn_loss,
            b.gfn_loss
        );
        assert!(
            close(a.ebm_loss, b.ebm_loss),
            "EBM loss {} vs {}",
            a.ebm_loss,
            b.ebm_loss
        );
        assert_eq!(a.acceptance.is_some(), negatives == Negatives::BackAndForth);
        if let (Some(x), Some(y)) = (a.acceptance, b.acceptance) {
            assert!(close(x, y), "acceptance {x} vs {y}");
        }
        assert_eq!(a.k, b.k);
        assert_eq!(rng_fast, rng_ref, "the engines drew different numbers of random values");
        // log Z took the same step (its gradient is the mean residual: no sign ambiguity).
        let (za, zb) = (
            fast.estimator.log_z_value().unwrap(),
            reference.estimator.log_z_value().unwrap(),
        );
        assert!((za - zb).abs() < 1e-6, "log Z {za} vs {zb}");
        // Adam's first step is ±lr per entry by the sign of the gradient: the engines' gradients
        // must agree in sign everywhere but on a few entries that are zero up to rounding.
        let params = |t: &JointTrainer| {
            let mut v = Vec::new();
            for (_, p) in t.estimator.named_params().iter().chain(&t.ebm.named_params()) {
                v.extend(p.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap());
            }
            v
        };
        let (pa, pb) = (params(&fast), params(&reference));
        let differ = pa.iter().zip(&pb).filter(|(x, y)| (*x - *y).abs() > 1e-5).count();
        assert!(differ * 1000 <= pa.len(), "{differ} of {} parameters differ", pa.len());
    }
}

/// `gfn_steps = 2` takes two GFlowNet steps on the iteration's data before the one EBM step:
/// from the same seed, its first iteration draws more random numbers than `gfn_steps = 1` and
/// moves log Z twice (Adam's first two steps on a residual of one sign move it by 2·lr).
#[test]
fn extra_gfn_steps_are_taken() {
    let dev = Device::Cpu;
    let d = 10;
    let data = two_modes(48, d, &mut rng_from_seed(6));
    let run = |gfn_steps: usize| {
        let config = JointConfig {
            gfn_steps,
            ..small_config(Negatives::BackAndForth)
        };
        let mut rng = rng_from_seed(5);
        let ebm = MlpEnergy::new(d, 32, 2, &dev, &mut rng).unwrap();
        let mut t = JointTrainer::new(config, Box::new(ebm), &dev, &mut rng).unwrap();
        let z0 = t.estimator.log_z_value().unwrap();
        let stats = t.step(&data, &mut rng).unwrap();
        (t.estimator.log_z_value().unwrap() - z0, rng, stats)
    };
    let (dz1, rng1, s1) = run(1);
    let (dz2, rng2, s2) = run(2);
    assert_ne!(rng1, rng2);
    // log Z starts at 0 and the untrained GFlowNet's residuals are far from zero.
    assert!((dz1.abs() - 0.1).abs() < 1e-6, "one step moved log Z by {dz1}");
    assert!((dz2.abs() - 0.2).abs() < 1e-4, "two steps moved log Z by {dz2}");
    assert!(s1.gfn_loss.is_finite() && s2.gfn_loss.is_finite());
}
