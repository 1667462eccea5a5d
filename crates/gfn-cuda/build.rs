//! With the `cuda` feature, compiles `src/kernels.cu` to PTX with nvcc (found on `PATH`, in
//! `$CUDA_HOME/bin` or `$CUDA_PATH/bin`) for `compute_$CUDA_COMPUTE_CAP` (default 80; the driver
//! JIT-compiles it for newer GPUs). Without the feature it does nothing.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=src/kernels.cu");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("gfn_kernels.ptx");
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "80".into());
    let cap: String = cap.chars().filter(char::is_ascii_digit).collect();
    let nvcc = ["CUDA_HOME", "CUDA_PATH"]
        .iter()
        .filter_map(std::env::var_os)
        .map(|root| PathBuf::from(root).join("bin").join("nvcc"))
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("nvcc"));
    let status = Command::new(&nvcc)
        .args(["--ptx", "-O3", "-std=c++17"])
        .arg(format!("-arch=compute_{cap}"))
        .arg("src/kernels.cu")
        .arg("-o")
        .arg(&out)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("nvcc failed on src/kernels.cu ({s}); see docs/CUDA.md"),
        Err(e) => panic!(
            "the `cuda` feature needs nvcc ({}): {e}. Install it (docs/CUDA.md: `pip install nvidia-cuda-nvcc`) \
             and put it on PATH or set CUDA_HOME",
            nvcc.display()
        ),
    }
}
