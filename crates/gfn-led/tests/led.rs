//! LED-GFN against exact answers on small random DAGs.

use approx::assert_relative_eq;
use candle_core::{Device, Tensor, Var};
use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use rand::Rng;

use gfn_core::batch::TrajectoryBatch;
use gfn_core::dag::DagEnv;
use gfn_core::estimator::EstimatorOutput;
use gfn_core::exact::ExactEvaluator;
use gfn_core::{Env, GfnRng, rng_from_seed};
use gfn_led::{PotentialNet, decomposed_len, decomposition_loss, led_offsets, recentre};
use gfn_objectives::{BalanceTerms, detailed_balance, subtrajectory_balance};

const DEV: Device = Device::Cpu;

/// Random walks from s_0 to a terminal object, the first one moving at least once.
fn batch_of_walks(env: &DagEnv, rng: &mut GfnRng, n_traj: usize) -> TrajectoryBatch {
    let paths: Vec<Vec<usize>> = (0..n_traj).map(|i| env.random_path(rng, i == 0)).collect();
    env.batch_of_paths(&paths)
}

/// The true increments `h(s_{t+1}) − h(s_t)` of an energy additive over transitions
/// (`h = log R` of the DAG, `h(s_0) := 0`), padded `[B, T]`.
fn true_increments(env: &DagEnv, batch: &TrajectoryBatch) -> Vec<f64> {
    let (b, t) = (batch.batch_size, batch.max_length());
    let h = |row: u32| {
        let s = batch.states[row as usize];
        if s == 0 {
            0.0
        } else {
            env.intermediate_log_reward(&[s]).unwrap()
        }
    };
    let mut out = vec![0.0; b * t];
    for i in 0..b {
        for k in 0..decomposed_len(batch, i) {
            out[i * t + k] = h(batch.node_row(i, k + 1)) - h(batch.node_row(i, k));
        }
    }
    out
}

fn dag_params() -> impl Strategy<Value = (u64, usize, f64, bool)> {
    (any::<u64>(), 3usize..8, 0.1f64..0.7, any::<bool>())
}

fn finite(v: &[f64]) -> Vec<f64> {
    v.iter().map(|&x| if x.is_finite() { x } else { 0.0 }).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, rng_seed: RngSeed::Fixed(2026), ..ProptestConfig::default() })]

    /// After re-centring, the potentials of every trajectory add up to its log reward.
    #[test]
    fn recentred_potentials_sum_to_the_log_reward((seed, n, p, exit) in dag_params()) {
        let mut rng = rng_from_seed(seed);
        let env = DagEnv::random(n, p, exit, &mut rng).unwrap();
        let batch = batch_of_walks(&env, &mut rng, 6);
        let t = batch.max_length();
        let lens: Vec<usize> = (0..batch.batch_size).map(|i| decomposed_len(&batch, i)).collect();
        let phi: Vec<f64> = (0..batch.batch_size * t).map(|_| rng.random_range(-3.0..3.0)).collect();
        let hat = recentre(&phi, t, &lens, &batch.log_reward);
        for (i, &m) in lens.iter().enumerate() {
            if m > 0 {
                let s: f64 = hat[i * t..i * t + m].iter().sum();
                prop_assert!((s - batch.log_reward[i]).abs() < 1e-12, "{s} vs {}", batch.log_reward[i]);
                prop_assert!(hat[i * t + m..(i + 1) * t].iter().all(|&x| x == 0.0));
            }
        }
    }

    /// On a DAG whose energy is additive over transitions, LED-DB and LED-SubTB with the true
    /// decomposition vanish at the exact solution (flows F̃ = F / R), and not elsewhere; the
    /// decomposition loss without dropout vanishes at the true potentials.
    #[test]
    fn led_vanishes_at_the_exact_solution_of_an_additive_energy((seed, n, p, exit) in dag_params()) {
        let mut rng = rng_from_seed(seed);
        let env = DagEnv::random(n, p, exit, &mut rng).unwrap();
        let ev = ExactEvaluator::new(&env).unwrap();
        let batch = batch_of_walks(&env, &mut rng, 6);
        let (b, t) = (batch.batch_size, batch.max_length());

        // Exact flows and policies for a uniform-ish random P_B.
        let nb = env.n_backward_actions();
        let mut log_pb = vec![f64::NEG_INFINITY; ev.num_states() * nb];
        for s in 0..ev.num_states() {
            let valid: Vec<usize> = (0..nb).filter(|&a| ev.backward_mask()[s * nb + a]).collect();
            let w: Vec<f64> = valid.iter().map(|_| rng.random_range(-1.0..1.0)).collect();
            let lse = gfn_core::exact::logsumexp(w.iter().copied());
            for (a, x) in valid.iter().zip(w) {
                log_pb[s * nb + a] = x - lse;
            }
        }
        let sol = ev.exact_solution(&log_pb);
        let s_count = ev.num_states();
        let na = env.n_actions();
        let idx = Tensor::from_vec(batch.states.iter().map(|&x| x as u32).collect::<Vec<_>>(), batch.states.len(), &DEV).unwrap();
        // log F̃(s) = log F(s) − h(s), h(s_0) = 0.
        let flow_tilde: Vec<f64> = (0..s_count)
            .map(|s| sol.log_flow[s] - if s == 0 { 0.0 } else { env.intermediate_log_reward(&[s as i32]).unwrap() })
            .collect();
        let out = |flow: &[f64]| EstimatorOutput {
            pf_logits: Tensor::from_vec(finite(&sol.log_pf), (s_count, na), &DEV).unwrap().index_select(&idx, 0).unwrap(),
            pb_logits: Some(Tensor::from_vec(finite(&sol.log_pb), (s_count, nb), &DEV).unwrap().index_select(&idx, 0).unwrap()),
            log_flow: Some(Tensor::from_vec(finite(flow), s_count, &DEV).unwrap().index_select(&idx, 0).unwrap()),
        };
        let lens: Vec<usize> = (0..b).map(|i| decomposed_len(&batch, i)).collect();
        let phi = true_increments(&env, &batch);
        let hat = recentre(&phi, t, &lens, &batch.log_reward);
        for (x, y) in hat.iter().zip(&phi) {
            prop_assert!((x - y).abs() < 1e-9, "the true decomposition is already centred");
        }
        let offsets = led_offsets(&batch, &hat).unwrap();
        let loss = |flow: &[f64]| {
            let terms = BalanceTerms::from_batch(&batch, &out(flow)).unwrap().with_offsets(offsets.clone()).unwrap();
            let db = detailed_balance(&terms).unwrap().to_scalar::<f64>().unwrap();
            let st = subtrajectory_balance(&terms, 0.9).unwrap().to_scalar::<f64>().unwrap();
            (db, st)
        };
        let (db, st) = loss(&flow_tilde);
        prop_assert!(db.abs() < 1e-12 && st.abs() < 1e-12, "LED-DB {db}, LED-SubTB {st}");
        let mut bumped = flow_tilde.clone();
        bumped[0] += 0.5;
        let (db, st) = loss(&bumped);
        prop_assert!(db > 1e-4 && st > 1e-4, "perturbed: LED-DB {db}, LED-SubTB {st}");

        // Without dropout (every transition kept) the decomposition loss vanishes at the true
        // potentials; a dropout mask makes it a noisy estimate instead.
        let masks: Vec<f32> = (0..b * t).map(|k| f32::from(u8::from(k % t < lens[k / t]))).collect();
        let phi_t = Tensor::from_vec(phi.clone(), (b, t), &DEV).unwrap();
        let l = decomposition_loss(&phi_t, &masks, &lens, &batch.log_reward).unwrap().to_scalar::<f64>().unwrap();
        prop_assert!(l.abs() < 1e-20, "decomposition loss {l} at the true potentials");
    }
}

/// The decomposition loss's gradient matches central finite differences.
#[test]
fn decomposition_loss_gradient_matches_finite_differences() {
    let lens = [3usize, 1, 0, 2];
    let t = 3;
    let log_reward = [0.5, -1.0, 0.0, 2.0];
    let masks = [1f32, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0];
    let mut rng = rng_from_seed(2);
    let phi: Vec<f64> = (0..lens.len() * t).map(|_| rng.random_range(-1.0..1.0)).collect();
    let var = Var::from_vec(phi.clone(), (lens.len(), t), &DEV).unwrap();
    let l = decomposition_loss(var.as_tensor(), &masks, &lens, &log_reward).unwrap();
    let g = l
        .backward()
        .unwrap()
        .get(var.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let f = |x: &[f64]| {
        let v = Tensor::from_vec(x.to_vec(), (lens.len(), t), &DEV).unwrap();
        decomposition_loss(&v, &masks, &lens, &log_reward)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let h = 1e-6;
    for k in 0..phi.len() {
        let (mut a, mut b) = (phi.clone(), phi.clone());
        a[k] += h;
        b[k] -= h;
        let fd = (f(&a) - f(&b)) / (2.0 * h);
        assert_relative_eq!(g[k], fd, epsilon = 1e-7, max_relative = 1e-6);
    }
    // The autograd-free form agrees.
    let (value, grad) = gfn_led::decomposition_loss_and_grad(&phi, t, &masks, &lens, &log_reward).unwrap();
    assert_relative_eq!(value, l.to_scalar::<f64>().unwrap(), max_relative = 1e-12);
    for (a, b) in grad.iter().zip(&g) {
        assert_relative_eq!(a, b, max_relative = 1e-12, epsilon = 1e-15);
    }
    // A kept-nothing mask on a trajectory with transitions is an error, not a NaN.
    let bad = [0f32; 12];
    assert!(decomposition_loss(var.as_tensor(), &bad, &lens, &log_reward).is_err());
}

/// The potential network gives one value per decomposed transition and zeros elsewhere.
#[test]
fn potential_net_fills_decomposed_transitions_only() {
    let mut rng = rng_from_seed(5);
    let env = DagEnv::random(7, 0.5, true, &mut rng).unwrap();
    let batch = batch_of_walks(&env, &mut rng, 5);
    let net = PotentialNet::new(env.feature_dim(), 16, 2, &DEV, &mut rng_from_seed(1)).unwrap();
    let phi = net.potentials(&batch).unwrap();
    let (b, t) = (batch.batch_size, batch.max_length());
    assert_eq!(phi.dims(), [b, t]);
    let v = phi.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for i in 0..b {
        let m = decomposed_len(&batch, i);
        assert!(v[i * t + m..(i + 1) * t].iter().all(|&x| x == 0.0));
    }
    // Gradients reach the network.
    let grads = phi.sum_all().unwrap().backward().unwrap();
    assert!(
        net.named_params()
            .iter()
            .any(|(_, p)| grads.get(p.as_tensor()).is_some())
    );
}
