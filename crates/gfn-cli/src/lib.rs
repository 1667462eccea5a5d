//! # gfn-cli
//!
//! The `gfn` command (`src/main.rs`) and what it adds to the `gfn` library: run directories
//! ([`run_dir`]: a lock, atomic files, failure notes), the run driver that trains, checkpoints
//! and resumes any [`driver::Run`] into one ([`driver`]), and plots ([`plot`]). Flags and TOML
//! files are parsed here, once, into the library's typed [`gfn::config::TrainConfig`].

pub mod driver;
pub mod plot;
pub mod run_dir;
