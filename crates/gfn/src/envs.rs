//! Building the environment a configuration names.

use gfn_core::{Env, GfnError, Result};
use gfn_envs::{BagEnv, Hypergrid, HypergridReward, SetEnv, SetSize};

use crate::config::TrainConfig;

/// The environment names `gfn train --env` accepts.
pub const ENV_NAMES: &str = "hypergrid, set, bag, ebm-2d, ising, digits";

/// Build the environment of `config`.
pub fn build_env(config: &TrainConfig) -> Result<Box<dyn Env>> {
    match config.env.as_str() {
        "hypergrid" => Ok(Box::new(Hypergrid::new(
            config.ndim,
            config.height,
            HypergridReward {
                r0: config.r0,
                r1: config.r1,
                r2: config.r2,
            },
        )?)),
        "bag" => Ok(Box::new(BagEnv::new(config.task_seed))),
        "set" => Ok(Box::new(SetEnv::new(config.size.parse::<SetSize>()?))),
        other => Err(GfnError::invalid("env", other, format!("must be one of: {ENV_NAMES}"))),
    }
}
