//! # gfn
//!
//! Generative Flow Networks in Rust. This facade re-exports the layered crates and holds the
//! training library (no file I/O beyond what a caller asks for; the `gfn` command, its run
//! directories, progress bars and plots are in `gfn-cli`):
//!
//! * [`core`] (`gfn-core`): the [`core::Env`] trait, trajectory batches, estimators, samplers,
//!   exact evaluation;
//! * [`objectives`] (`gfn-objectives`): FM, DB, TB, SubTB(λ), FL and LED forms, policy gradient;
//! * [`environments`] (`gfn-envs`): the tasks, and [`envs`]: building one from a configuration;
//! * [`train`]: the GFlowNet [`train::Trainer`] (`step`, `evaluate`, `checkpoint`,
//!   `restore`), configured by a typed [`config::TrainConfig`] ([`options`]: its typed values);
//!   [`ebm`]: the EB-GFN and PCD runs; [`checkpoint`]: named tensors and state in safetensors;
//!   [`task_metrics`]: a task's own figures.
//!
//! Binaries that use gfn should set a fast global allocator: candle allocates a buffer per tensor
//! op, and glibc's malloc maps and unmaps large ones every time (`reference/candle-cpu.md` §3a,
//! 1.8–3× slower steps). The `gfn` binary (gfn-cli) uses mimalloc.

pub mod checkpoint;
pub mod conditions;
pub mod config;
pub mod device;
pub mod distributed;
pub mod ebm;
pub mod envs;
pub mod gradcos;
pub mod io;
pub mod led;
pub mod memory;
pub mod options;
pub mod replay;
pub mod seam;
pub mod task_metrics;
pub mod train;

pub use gfn_core as core;
pub use gfn_envs as environments;
pub use gfn_objectives as objectives;
