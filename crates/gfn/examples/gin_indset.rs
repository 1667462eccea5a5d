//! A graph policy: a GIN choosing which node to add to an independent set of a fixed graph (the
//! LED-GFN maximum-independent-set task at a size that enumerates), trained with trajectory
//! balance through the policy seam and evaluated exactly. Node-level actions come from the GIN's
//! node head, the exit action from its graph head, so relabelling the graph's nodes relabels the
//! actions with them.
//!
//! ```sh
//! cargo run --release -p gfn --example gin_indset
//! ```

use gfn::core::candle_core::Device;
use gfn::core::exact::ExactEvaluator;
use gfn::core::nets::gin::GinConfig;
use gfn::core::obs::Observations;
use gfn::core::optim::{Adam, AdamParams};
use gfn::core::policy::{GinPolicy, Policy, exact_log_pf, tb_loss_on_policy};
use gfn::core::rng_from_seed;
use gfn::environments::IndSetEnv;

fn main() -> anyhow::Result<()> {
    // The 8-cycle with the chord (0, 4); R(S) = e^{|S|}.
    let env = IndSetEnv::cycle_with_chord(8, 1.0)?;
    let device = Device::Cpu;
    let mut rng = rng_from_seed(4);
    // Every state is the same graph with node features [in the set, blocked, free].
    let observe = |states: &[i32]| Ok(Observations::Graphs(env.graphs(states, &device)?));
    let config = GinConfig {
        node_features: 3,
        edge_features: 0,
        hidden: 32,
        layers: 3,
        mlp_layers: 2,
        node_outputs: 0,  // set by the policy: one logit per node
        graph_outputs: 0, // set by the policy: the exit logit
        learn_eps: true,
        graph_norm: false,
    };
    let policy = GinPolicy::new(config, env.nodes(), true, false, &device, &mut rng)?;
    let mut params: Vec<_> = policy.named_params().into_iter().map(|(n, v)| (n, v, 0)).collect();
    let log_z = policy.log_z().expect("the policy holds log Z").clone();
    params.push(("log_z".into(), log_z.clone(), 1));
    let mut adam = Adam::new(params, vec![AdamParams::adam(3e-3), AdamParams::adam(0.1)]);

    let exact = ExactEvaluator::new(&env)?;
    println!(
        "{} independent sets, log Z = {:.4}",
        exact.num_terminal(),
        exact.log_z()
    );
    for iteration in 1..=1000 {
        // The network's rate decays tenfold over the last 400 iterations; ε = 0.1 explores.
        adam.groups[0].lr = 3e-3 * (1.0 - 0.9 * (iteration.max(600) - 600) as f64 / 400.0);
        let (loss, _) = tb_loss_on_policy(&env, &policy, &observe, 32, 0.1, &mut rng)?;
        adam.step(&loss.backward()?)?;
        if iteration % 200 == 0 {
            let metrics = exact.metrics_for(&exact_log_pf(&exact, &env, &policy, &observe)?, 0.0);
            println!(
                "iteration {iteration}: loss {:.4}  log Z {:.4}  exact TV {:.4}",
                loss.to_scalar::<f32>()?,
                log_z.as_tensor().to_vec1::<f32>()?[0],
                metrics.dist.tv
            );
        }
    }
    Ok(())
}
