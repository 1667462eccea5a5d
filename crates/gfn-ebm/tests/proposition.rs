//! EB-GFN's proposition, checked with everything enumerated: when the GFlowNet is exact for the
//! model's density, the back-and-forth proposal's Metropolis–Hastings acceptance is 1, and it falls
//! as the GFlowNet's trajectory-balance loss grows.

use std::sync::Arc;

use rand::Rng;

use gfn_core::exact::ExactEvaluator;
use gfn_core::local_search::{TabularPolicy, back_and_forth};
use gfn_core::{Env, GfnRng, rng_from_seed};
use gfn_ebm::AcceptRule;
use gfn_ebm::mh::log_ratio;
use gfn_envs::BinaryEnv;
use gfn_envs::binary::LogDensity;

const D: usize = 4;

/// A random log-density on {0,1}^4, as a table indexed by the bits.
fn random_density(rng: &mut GfnRng) -> (LogDensity, Vec<f64>) {
    let table: Vec<f64> = (0..1 << D).map(|_| 3.0 * (rng.random::<f64>() - 0.5)).collect();
    let t = table.clone();
    let f: LogDensity =
        Arc::new(move |x: &[i32]| t[x.iter().enumerate().map(|(i, &b)| (b as usize) << i).sum::<usize>()]);
    (f, table)
}

/// `log_pf + eps · noise`, renormalised over each state's allowed actions.
fn perturbed(ev: &ExactEvaluator, log_pf: &[f64], eps: f64, noise: &[f64]) -> Vec<f64> {
    let na = 2 * D;
    let mask = ev.forward_mask();
    let mut out = vec![f64::NEG_INFINITY; log_pf.len()];
    for s in 0..ev.num_states() {
        let r = s * na..(s + 1) * na;
        let allowed: Vec<usize> = r.clone().filter(|&i| mask[i]).collect();
        if allowed.is_empty() {
            continue;
        }
        let lz = gfn_core::exact::logsumexp(allowed.iter().map(|&i| log_pf[i] + eps * noise[i]));
        for &i in &allowed {
            out[i] = log_pf[i] + eps * noise[i] - lz;
        }
    }
    out
}

/// Exact expected TB loss `E_{τ∼P_F}[(log Z + log P_F(τ) − log R(x) − log P_B(τ|x))²]`, by
/// enumerating every trajectory.
fn exact_tb_loss(env: &BinaryEnv, ev: &ExactEvaluator, log_pf: &[f64], log_pb: &[f64], log_z: f64) -> f64 {
    fn walk(
        env: &BinaryEnv,
        ev: &ExactEvaluator,
        lp: (&[f64], &[f64]),
        s: &mut [i32],
        acc: (f64, f64),
        log_z: f64,
    ) -> f64 {
        if env.is_terminal(s) {
            let r = log_z + acc.0 - env.log_reward(s) - acc.1;
            return acc.0.exp() * r * r;
        }
        let (na, nb) = (env.n_actions(), env.n_backward_actions());
        let i = ev.state_index(s).unwrap();
        let mut mask = vec![false; na];
        env.forward_mask(s, &mut mask);
        let mut total = 0.0;
        for a in (0..na).filter(|&a| mask[a]) {
            let mut c = s.to_vec();
            let b = env.step(&mut c, a);
            let j = ev.state_index(&c).unwrap();
            total += walk(
                env,
                ev,
                lp,
                &mut c,
                (acc.0 + lp.0[i * na + a], acc.1 + lp.1[j * nb + b]),
                log_z,
            );
        }
        total
    }
    let mut s0 = vec![-1; D];
    walk(env, ev, (log_pf, log_pb), &mut s0, (0.0, 0.0), log_z)
}

/// Mean acceptance probability of `rule` over `reps` proposals from every complete vector.
fn mean_acceptance(
    env: &BinaryEnv,
    ev: &ExactEvaluator,
    log_pf: &[f64],
    log_pb: &[f64],
    k: usize,
    rule: AcceptRule,
    rng: &mut GfnRng,
) -> (f64, f64) {
    let reps = 400;
    let mut xs = Vec::new();
    for t in 0..ev.num_terminal() {
        let s = ev.terminal_state_index(t);
        for _ in 0..reps {
            xs.extend_from_slice(&ev.states()[s * D..(s + 1) * D]);
        }
    }
    let mut policy = TabularPolicy::new(ev, log_pf, log_pb);
    let p = back_and_forth(env, &mut policy, &xs, k, rng).unwrap();
    let f = |v: &[i32]| v.chunks_exact(D).map(|x| env.log_reward(x)).collect::<Vec<_>>();
    let delta = log_ratio(&f(&xs), &f(&p.states), &p.log_q_forward, &p.log_q_reverse);
    let max_abs = delta.iter().fold(0.0f64, |m, d| m.max(d.abs()));
    let mean = delta.iter().map(|&d| rule.log_accept(d).exp()).sum::<f64>() / delta.len() as f64;
    (mean, max_abs)
}

#[test]
fn acceptance_is_one_for_an_exact_gflownet_and_falls_with_its_loss() {
    let mut rng = rng_from_seed(11);
    let (f, _) = random_density(&mut rng);
    let env = BinaryEnv::with_log_density(D, f).unwrap();
    let ev = ExactEvaluator::new(&env).unwrap();
    // A non-uniform backward policy: the proposition holds for any P_B with its matching P_F.
    let nb = D;
    let mut log_pb = ev.uniform_log_pb();
    for (s, chunk) in log_pb.chunks_exact_mut(nb).enumerate() {
        let allowed: Vec<usize> = (0..nb).filter(|&b| chunk[b].is_finite()).collect();
        if allowed.len() > 1 {
            let w: Vec<f64> = allowed.iter().map(|&b| 1.0 + ((s * 7 + b * 3) % 5) as f64).collect();
            let tot: f64 = w.iter().sum();
            for (&b, wi) in allowed.iter().zip(&w) {
                chunk[b] = (wi / tot).ln();
            }
        }
    }
    let sol = ev.exact_solution(&log_pb);
    let noise: Vec<f64> = (0..sol.log_pf.len()).map(|_| rng.random::<f64>() * 2.0 - 1.0).collect();
    let mut last = (f64::INFINITY, -1.0);
    for (i, eps) in [0.0, 0.3, 1.0, 3.0].into_iter().enumerate() {
        let log_pf = perturbed(&ev, &sol.log_pf, eps, &noise);
        let loss = exact_tb_loss(&env, &ev, &log_pf, &log_pb, sol.log_z);
        for k in [1, 2, D] {
            let (acc, max_abs) =
                mean_acceptance(&env, &ev, &log_pf, &log_pb, k, AcceptRule::MetropolisHastings, &mut rng);
            println!("eps {eps}: TB loss {loss:.6}, K {k}: MH acceptance {acc:.4}, max |Δ| {max_abs:.3e}");
            if i == 0 {
                assert!(loss < 1e-20, "exact GFlowNet has TB loss {loss}");
                // Zero up to the f32 rounding of the policy's logits.
                assert!(max_abs < 1e-5, "K {k}: |Δ| up to {max_abs} for an exact GFlowNet");
                assert!((acc - 1.0).abs() < 1e-5);
                let (barker, _) = mean_acceptance(&env, &ev, &log_pf, &log_pb, k, AcceptRule::Barker, &mut rng);
                assert!((barker - 0.5).abs() < 1e-5, "Barker accepts {barker} at Δ = 0");
            } else if k == D {
                assert!(loss > last.1, "TB loss not increasing: {loss} after {}", last.1);
                assert!(acc < last.0 - 0.02, "acceptance {acc} did not fall below {}", last.0);
            }
            if k == D {
                last = (acc, loss);
            }
        }
        if i == 0 {
            last = (1.0, loss);
        }
    }
}

#[test]
fn bad_proposal_input_is_an_error() {
    let env = BinaryEnv::new(3).unwrap();
    let ev = ExactEvaluator::new(&env).unwrap();
    let log_pb = ev.uniform_log_pb();
    let sol = ev.exact_solution(&log_pb);
    let mut policy = TabularPolicy::new(&ev, &sol.log_pf, &log_pb);
    let mut rng = rng_from_seed(0);
    let e = |xs: &[i32], k: usize| {
        back_and_forth(
            &env,
            &mut TabularPolicy::new(&ev, &sol.log_pf, &log_pb),
            xs,
            k,
            &mut rng.clone(),
        )
        .unwrap_err()
        .to_string()
    };
    assert!(e(&[0, 1, 1], 0).contains("k"));
    assert!(e(&[0, 1, 1], 4).contains("k"));
    assert!(e(&[0, 1, -1], 1).contains("terminal"));
    assert!(e(&[0, 1], 1).contains("multiple"));
    let ok = back_and_forth(&env, &mut policy, &[0, 1, 1, 1, 1, 1], 3, &mut rng).unwrap();
    assert_eq!(ok.states.len(), 6);
    assert!(ok.states.iter().all(|&v| v == 0 || v == 1));
}
