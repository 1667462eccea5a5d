//! Your own training loop around the policy seam, with a transformer on bit sequences: an
//! environment, an encoding of its states (`BitSeqEnv::tokens`), a network (`TransformerPolicy`),
//! a loss (`tb_loss_on_policy`: trajectory balance on trajectories it samples), an optimiser —
//! and exact evaluation of the trained sampler against the target `R(x)/Z`.
//!
//! ```sh
//! cargo run --release -p gfn --example transformer_bitseq
//! ```

use gfn::core::candle_core::Device;
use gfn::core::exact::ExactEvaluator;
use gfn::core::nets::transformer::{Positions, TransformerConfig};
use gfn::core::obs::Observations;
use gfn::core::optim::{Adam, AdamParams};
use gfn::core::policy::{Policy, TransformerPolicy, exact_log_pf, tb_loss_on_policy};
use gfn::core::{Env, rng_from_seed};
use gfn::environments::bitseq::{BitSeqConfig, BitSeqEnv};

fn main() -> anyhow::Result<()> {
    // 8-bit sequences written 2 bits at a time: 256 objects, few enough to evaluate exactly.
    let env = BitSeqEnv::new(BitSeqConfig {
        n: 8,
        k: 2,
        n_modes: 3,
        seed: 1,
        ..BitSeqConfig::default()
    })?;
    let device = Device::Cpu;
    let mut rng = rng_from_seed(0);
    // One token per word slot: the word, or `vocab` for an empty slot.
    let observe = |states: &[i32]| Ok(Observations::Tokens(env.tokens(states, &device)?));
    let config = TransformerConfig {
        vocab: env.vocab() + 1,
        max_len: env.words(),
        d_model: 32,
        heads: 4,
        layers: 2,
        d_ff: 64,
        positions: Positions::Learned,
        position_outputs: 0,
        pooled_outputs: 0, // set by the policy: one logit per action
    };
    let policy = TransformerPolicy::new(config, env.n_actions(), None, false, &device, &mut rng)?;

    // The optimiser: the network at 1e-3, log Z at 0.1 (the TB paper's rates).
    let mut params: Vec<_> = policy.named_params().into_iter().map(|(n, v)| (n, v, 0)).collect();
    let log_z = policy.log_z().expect("the policy holds log Z").clone();
    params.push(("log_z".into(), log_z.clone(), 1));
    let mut adam = Adam::new(params, vec![AdamParams::adam(1e-3), AdamParams::adam(0.1)]);

    let exact = ExactEvaluator::new(&env)?;
    let tv = |p: &TransformerPolicy| -> anyhow::Result<f64> {
        Ok(exact
            .metrics_for(&exact_log_pf(&exact, &env, p, &observe)?, 0.0)
            .dist
            .tv)
    };
    println!("untrained: exact TV {:.4}", tv(&policy)?);
    for iteration in 1..=600 {
        let (loss, _terminal_states) = tb_loss_on_policy(&env, &policy, &observe, 32, 0.0, &mut rng)?;
        adam.step(&loss.backward()?)?;
        if iteration % 100 == 0 {
            let lz = log_z.as_tensor().to_vec1::<f32>()?[0];
            println!(
                "iteration {iteration}: loss {:.4}  log Z {lz:.4} (true {:.4})  exact TV {:.4}",
                loss.to_scalar::<f32>()?,
                exact.log_z(),
                tv(&policy)?
            );
        }
    }
    Ok(())
}
