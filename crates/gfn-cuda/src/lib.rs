//! # gfn-cuda
//!
//! GFlowNet training with the whole loop on the device: environments, masks, sampling and
//! losses as candle custom ops over batch-first `u32` trajectory buffers, so a training step
//! makes no host round trip per environment step. The `cuda` feature compiles the kernels of
//! `kernels.cu` (nvcc at build time) and turns on candle's CUDA backend; without it the crate
//! builds anywhere and every op runs its CPU reference, which is what the tests check the
//! kernels against.
//!
//! * [`spec`]: environments as the kernels see them ([`DeviceEnv`]: hypergrid, binary vectors
//!   with an Ising reward, bit sequences).
//! * [`ops`]: the custom ops (featurize, masks, sample-step, masked log-softmax-gather, backward
//!   actions, uniform `log P_B`, log-reward, fused SubTB(λ), Adam).
//! * [`philox`]: the counter-based RNG of the sampler.
//! * [`trainer`]: [`DeviceTrainer`], a TB / SubTB(λ) training step built from them.

#[cfg(feature = "cuda")]
mod cuda;
pub mod ops;
pub mod philox;
pub mod spec;
pub mod trainer;

pub use spec::{DeviceEnv, EnvKind, EnvSpec, NO_ACTION};
pub use trainer::{DeviceLoss, DeviceTrainer, DeviceTrainerConfig, StepStats};

/// Whether this build has the CUDA backend (the `cuda` feature).
pub const CUDA_BUILT: bool = cfg!(feature = "cuda");

/// The CUDA device `ordinal`, or a clear error when this build has no CUDA or no GPU is present.
pub fn cuda_device(ordinal: usize) -> gfn_core::Result<candle_core::Device> {
    if !CUDA_BUILT {
        return Err(gfn_core::GfnError::invalid(
            "device",
            "cuda",
            "needs a build with the `cuda` feature (cargo build --release --features cuda; see docs/CUDA.md)",
        ));
    }
    let dev = candle_core::Device::new_cuda(ordinal).map_err(|e| {
        gfn_core::GfnError::invalid("device", format!("cuda:{ordinal}"), format!("could not be opened: {e}"))
    })?;
    #[cfg(feature = "cuda")]
    cuda::single_stream(&dev);
    Ok(dev)
}

/// What a device is, for logs: the GPU's name and ordinal (`NVIDIA H200 (cuda:0)`), or `cpu`.
pub fn device_name(dev: &candle_core::Device) -> String {
    #[cfg(feature = "cuda")]
    if let candle_core::Device::Cuda(d) = dev {
        return cuda::name(d);
    }
    match dev {
        candle_core::Device::Cpu => "cpu".into(),
        other => format!("{other:?}"),
    }
}

/// The first CUDA device if this build has CUDA and a GPU is present, else `None` (tests skip).
pub fn try_cuda() -> Option<candle_core::Device> {
    if CUDA_BUILT { cuda_device(0).ok() } else { None }
}
