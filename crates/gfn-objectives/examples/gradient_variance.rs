//! Variance of the on-policy gradient estimates of TB and of reverse-KL VI (REINFORCE with a
//! leave-one-out baseline) w.r.t. P_F's parameters, on small random DAGs with a tabular policy.
//! Both estimate the same direction (TB's expectation is twice VI's, `∇ KL(P_F ‖ P_B R/Z)`: the
//! property tests `expected_tb_gradient_is_reverse_kl_gradient` and
//! `pg_gradient_estimates_the_reverse_kl_gradient` check it); this example measures each
//! estimator's variance over many batches (TB's halved, to compare like with like), with log Z
//! at the true value and 2 nats off it.
//!
//! `cargo run --release -p gfn-objectives --example gradient_variance`

use candle_core::{Device, Tensor, Var};
use gfn_core::dag::DagEnv;
use gfn_core::exact::ExactEvaluator;
use gfn_core::{Env, EstimatorOutput, rng_from_seed};
use gfn_objectives::terms::BalanceTerms;
use gfn_objectives::{trajectory_balance, vi};
use rand::Rng;

const DEV: Device = Device::Cpu;

/// The gradient w.r.t. `pf` of the loss on the batch of `paths`.
fn gradient(env: &DagEnv, paths: &[Vec<usize>], pf: &Var, pb: &Var, log_z: &Var, tb: bool) -> Vec<f64> {
    let batch = env.batch_of_paths(paths);
    let idx: Vec<u32> = batch.states.iter().map(|&s| s as u32).collect();
    let idx = Tensor::from_vec(idx, batch.states.len(), &DEV).unwrap();
    let out = EstimatorOutput {
        pf_logits: pf.index_select(&idx, 0).unwrap(),
        pb_logits: Some(pb.index_select(&idx, 0).unwrap()),
        log_flow: None,
    };
    let terms = BalanceTerms::from_batch(&batch, &out).unwrap();
    let loss = if tb {
        (trajectory_balance(&terms, log_z.as_tensor()).unwrap() * 0.5).unwrap()
    } else {
        vi::reverse_kl(&terms, log_z.as_tensor()).unwrap().0
    };
    let g = loss.backward().unwrap();
    g.get(pf.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

fn main() {
    let batch = 16;
    let repeats = 2000;
    println!("| DAG | log Z − log Z* | ‖E ĝ‖ | TB/2 variance | VI variance | TB/2 ÷ VI |");
    println!("|---|---|---|---|---|---|");
    for seed in 0..4u64 {
        let mut rng = rng_from_seed(seed);
        let env = DagEnv::random(7, 0.4, seed % 2 == 0, &mut rng).unwrap();
        let ev = ExactEvaluator::new(&env).unwrap();
        let s = ev.num_states();
        let (na, nb) = (env.n_actions(), env.n_backward_actions());
        let mut draw = |k: usize| -> Vec<f64> { (0..k).map(|_| rng.random_range(-1.0..1.0)).collect() };
        let pf_v = draw(s * na);
        let pb_v = draw(s * nb);
        let pf = Var::from_tensor(&Tensor::from_vec(pf_v.clone(), (s, na), &DEV).unwrap()).unwrap();
        let pb = Var::from_tensor(&Tensor::from_vec(pb_v, (s, nb), &DEV).unwrap()).unwrap();
        for offset in [0.0, 2.0] {
            let log_z = Var::from_tensor(&Tensor::new(&[ev.log_z() + offset], &DEV).unwrap()).unwrap();
            let mut rng = rng_from_seed(1000 + seed);
            let (mut sum_tb, mut sq_tb, mut sum_vi, mut sq_vi) = (vec![0.0; s * na], 0.0, vec![0.0; s * na], 0.0);
            for _ in 0..repeats {
                let paths = env.sample_paths(&pf_v, batch, &mut rng);
                let g_tb = gradient(&env, &paths, &pf, &pb, &log_z, true);
                let g_vi = gradient(&env, &paths, &pf, &pb, &log_z, false);
                for i in 0..s * na {
                    sum_tb[i] += g_tb[i];
                    sum_vi[i] += g_vi[i];
                }
                sq_tb += g_tb.iter().map(|x| x * x).sum::<f64>();
                sq_vi += g_vi.iter().map(|x| x * x).sum::<f64>();
            }
            let r = repeats as f64;
            // Total variance: E‖g‖² − ‖E g‖².
            let var = |sum: &[f64], sq: f64| sq / r - sum.iter().map(|x| (x / r).powi(2)).sum::<f64>();
            let (v_tb, v_vi) = (var(&sum_tb, sq_tb), var(&sum_vi, sq_vi));
            let mean_norm = sum_vi.iter().map(|x| (x / r).powi(2)).sum::<f64>().sqrt();
            println!(
                "| {} nodes, exit {} | {offset} | {mean_norm:.4} | {v_tb:.4} | {v_vi:.4} | {:.2} |",
                env.num_nodes(),
                env.exit_action().is_some(),
                v_tb / v_vi
            );
        }
    }
    println!("\nBatch {batch} trajectories, {repeats} batches per row; total variance = E‖ĝ‖² − ‖E ĝ‖².");
}
