//! Your own training loop, CleanRL style: every step written out — sample trajectories with the
//! policy, gather the balance terms through the policy seam, take a loss object's value, back-
//! propagate, step the optimiser — around your own candle network (a `candle_nn::Sequential`
//! behind `ModulePolicy`), with exact evaluation against the target `R(x)/Z`.
//!
//! ```sh
//! cargo run --release -p gfn --example own_loop -- subtb   # or tb, db, fl-db, …
//! ```

use candle_core::{Device, Var};
use gfn::core::exact::ExactEvaluator;
use gfn::core::nn::Linear;
use gfn::core::obs::Observations;
use gfn::core::optim::{Adam, AdamParams};
use gfn::core::policy::{ModulePolicy, Policy, SeamRollout, exact_log_pf};
use gfn::core::{Env, GfnRng, Sampler, SamplingOptions, TrajectoryBatch, rng_from_seed};
use gfn::environments::{Hypergrid, HypergridReward};
use gfn::objectives::BalanceTerms;
use gfn::objectives::loss::{LossInputs, parse_balance_loss};

/// A seeded linear layer as a candle `Module` (`candle_nn::Linear` wants `W: [out, in]`).
fn linear(
    i: usize,
    o: usize,
    name: &str,
    rng: &mut GfnRng,
    params: &mut Vec<(String, Var)>,
) -> anyhow::Result<candle_nn::Linear> {
    let l = Linear::new(i, o, &Device::Cpu, rng)?;
    params.push((format!("{name}.weight"), l.weight.clone()));
    params.push((format!("{name}.bias"), l.bias.clone()));
    Ok(candle_nn::Linear::new(
        l.weight.as_tensor().t()?,
        Some(l.bias.as_tensor().clone()),
    ))
}

fn main() -> anyhow::Result<()> {
    // The text of the loss is parsed once, here, into a typed value that says what it needs.
    let name = std::env::args().nth(1).unwrap_or_else(|| "subtb".into());
    let loss = parse_balance_loss(&name, 0.9)?;
    let env = Hypergrid::new(2, 8, HypergridReward::default())?;
    let needs = loss.needs();
    let (device, mut rng) = (Device::Cpu, rng_from_seed(0));

    // Your network: any candle Module whose output columns are [P_F | P_B | log F].
    let (d, h) = (env.feature_dim(), 128);
    let n_out = env.n_actions() + env.n_backward_actions() + usize::from(needs.log_flow);
    let mut params = Vec::new();
    let net = candle_nn::seq()
        .add(linear(d, h, "l0", &mut rng, &mut params)?)
        .add(candle_nn::Activation::Relu)
        .add(linear(h, h, "l1", &mut rng, &mut params)?)
        .add(candle_nn::Activation::Relu)
        .add(linear(h, n_out, "l2", &mut rng, &mut params)?);
    let policy = ModulePolicy::new(
        net,
        params,
        env.n_actions(),
        Some(env.n_backward_actions()),
        needs.log_flow,
        &device,
    )?;
    loss.check(&env, needs.log_flow, true)?;
    let observe = |states: &[i32]| -> gfn::core::Result<Observations> {
        let rows = states.len() / env.state_dim();
        let mut x = vec![0f32; rows * d];
        env.featurize_batch(states, &mut x);
        Ok(Observations::Dense(candle_core::Tensor::from_vec(
            x,
            (rows, d),
            &device,
        )?))
    };

    let mut opt_params: Vec<_> = policy.named_params().into_iter().map(|(n, v)| (n, v, 0)).collect();
    let log_z = policy.log_z().expect("a module policy holds log Z").clone();
    opt_params.push(("log_z".into(), log_z.clone(), 1));
    let mut adam = Adam::new(opt_params, vec![AdamParams::adam(1e-3), AdamParams::adam(0.1)]);

    let exact = ExactEvaluator::new(&env)?;
    let (mut sampler, mut batch) = (Sampler::new(), TrajectoryBatch::default());
    let explore = SamplingOptions {
        epsilon: 0.05,
        ..SamplingOptions::default()
    };
    for iteration in 1..=2000 {
        // 1. Roll out 16 trajectories with the current policy (no graph recorded).
        let mut rollout = SeamRollout {
            policy: &policy,
            observe: &observe,
            n_backward: env.n_backward_actions(),
        };
        sampler.sample_forward_with(&env, &mut rollout, 16, explore, &mut rng, &mut batch)?;
        // 2. One forward over every state of the batch, with the graph: the balance terms.
        let terms = BalanceTerms::through(&batch, &policy, &observe)?;
        // 3. The loss, 4. its gradient, 5. one Adam step.
        let inputs = LossInputs {
            env: &env,
            batch: &batch,
            log_z: Some(log_z.as_tensor()),
            potentials: None,
        };
        let value = loss.loss(terms, &inputs)?;
        adam.step(&value.backward()?)?;
        if iteration % 500 == 0 {
            let lz = f64::from(log_z.as_tensor().to_vec1::<f32>()?[0]);
            let m = exact.metrics_for(&exact_log_pf(&exact, &env, &policy, &observe)?, lz);
            let v = value.to_scalar::<f32>()?;
            print!("{name} iteration {iteration}: loss {v:.4}  exact TV {:.4}", m.dist.tv);
            match needs.log_z {
                true => println!("  log Z {lz:.4} (true {:.4})", m.log_z_true),
                false => println!(),
            }
        }
    }
    Ok(())
}
