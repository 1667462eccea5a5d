//! `device = cuda`: the [`gfn_cuda::DeviceTrainer`] of a configuration.

use anyhow::Result;
use gfn_core::estimator::Estimator;
use gfn_core::optim::AdamParams;
use gfn_cuda::{DeviceEnv, DeviceLoss, DeviceTrainer, DeviceTrainerConfig};
use gfn_envs::{Hypergrid, HypergridReward};

use gfn_objectives::ObjectiveName;

use crate::config::TrainConfig;
use crate::options::EnvName;

/// Philox key offset of the device sampler (its stream is its own, apart from the CPU RNG's).
const SAMPLER_STREAM: u64 = 0x6766_6e2d_6375_6461; // "gfn-cuda"

/// The environment of `config` as the kernels see it.
pub fn device_env(config: &TrainConfig) -> Result<DeviceEnv> {
    Ok(match config.env {
        EnvName::Hypergrid => DeviceEnv::hypergrid(&Hypergrid::new(
            config.ndim,
            config.height,
            HypergridReward {
                r0: config.r0,
                r1: config.r1,
                r2: config.r2,
            },
        )?),
        EnvName::Bitseq => DeviceEnv::bitseq(&crate::envs::bitseq_env(config)?)?,
        EnvName::IsingFixed => DeviceEnv::lattice_ising(&crate::envs::ising_fixed_model(config)?)?,
        other => anyhow::bail!("invalid env = {other}: the device engine runs hypergrid, bitseq and ising-fixed"),
    })
}

/// A device trainer for `estimator` (already on the device) with `config`'s objective,
/// batch, sampling and optimiser settings.
pub fn device_trainer(config: &TrainConfig, estimator: &Estimator) -> Result<DeviceTrainer> {
    let loss = match config.loss {
        ObjectiveName::Tb => DeviceLoss::Tb,
        ObjectiveName::SubTb => DeviceLoss::SubTb { lambda: config.lambda },
        other => anyhow::bail!("invalid loss = {other}: the device engine trains tb and subtb"),
    };
    let opts = config.sampling_at(0);
    let trainer = DeviceTrainer::new(
        device_env(config)?,
        estimator.clone(),
        DeviceTrainerConfig {
            batch: config.batch_size,
            loss,
            epsilon: opts.epsilon,
            temperature: opts.temperature,
            seed: config.seed ^ SAMPLER_STREAM,
            net: AdamParams {
                weight_decay: config.weight_decay,
                ..AdamParams::adam(config.lr)
            },
            log_z: AdamParams::adam(config.lr_logz),
            done_check_every: config.done_check_every,
        },
    )?;
    let mut trainer = trainer;
    trainer.set_fused_rollout(config.fused_rollout);
    trainer.set_rollout_rows(config.rollout_rows);
    trainer.set_manual_backward(config.manual_backward);
    Ok(trainer)
}
