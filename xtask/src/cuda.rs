//! `cargo xtask check-cuda`: build the `cuda` feature on a machine without a GPU or a system
//! CUDA, run the CPU-side tests of gfn-cuda, and optionally bundle the binaries for a GPU machine.
//!
//! nvcc comes from `PATH`, `$CUDA_HOME/bin`, or — when neither has one — from PyPI wheels
//! installed into `target/cuda-toolchain` (`nvidia-cuda-nvcc`, `-runtime`, `-cccl`, `-crt` and
//! `nvidia-nvvm`, all of one CUDA release: a newer `nvidia-nvvm` than the driver of the GPU
//! machine writes PTX that driver rejects). `CUDARC_CUDA_VERSION` is set from nvcc's version
//! (cudarc 0.19 refuses a newer nvcc than it knows) and `CUDA_COMPUTE_CAP` defaults to 90
//! (Hopper). Builds go to `target/cuda`, apart from the CPU build.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::runner::Layout;

/// The CUDA release of the PyPI toolchain (matches the driver of the lent H100/H200 machines).
const WHEELS: [&str; 5] = [
    "nvidia-cuda-nvcc==13.0.88",
    "nvidia-cuda-runtime==13.0.96",
    "nvidia-cuda-cccl==13.0.85",
    "nvidia-cuda-crt==13.0.88",
    "nvidia-nvvm==13.0.88",
];

/// Options of `check-cuda`.
#[derive(Debug, Clone)]
pub struct CheckCuda {
    /// Copy the binaries (gfn, the gfn-cuda `kernels` and `gpu` tests, xtask), stripped and
    /// xz-compressed, into this folder.
    pub bundle: Option<PathBuf>,
    /// Skip running the tests (build only).
    pub no_test: bool,
}

fn nvcc_in(dir: &Path) -> Option<PathBuf> {
    let p = dir.join("bin").join("nvcc");
    p.is_file().then_some(p)
}

/// A CUDA root whose `bin/nvcc` exists: `$CUDA_HOME`, the one of `nvcc` on PATH, or the PyPI
/// toolchain (installed on first use).
fn cuda_root(layout: &Layout) -> Result<PathBuf> {
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(root) = std::env::var_os(var).map(PathBuf::from)
            && nvcc_in(&root).is_some()
        {
            return Ok(root);
        }
    }
    if let Ok(out) = Command::new("sh").args(["-c", "command -v nvcc"]).output()
        && out.status.success()
    {
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if let Some(root) = p.parent().and_then(Path::parent) {
            return Ok(root.to_path_buf());
        }
    }
    let venv = layout.target.join("cuda-toolchain");
    let find = |venv: &Path| -> Option<PathBuf> {
        let lib = venv.join("lib");
        for py in std::fs::read_dir(&lib).ok()?.flatten() {
            let root = py.path().join("site-packages").join("nvidia").join("cu13");
            if nvcc_in(&root).is_some() {
                return Some(root);
            }
        }
        None
    };
    if let Some(root) = find(&venv) {
        return Ok(root);
    }
    eprintln!("no nvcc found: installing {} into {}", WHEELS.join(" "), venv.display());
    let ok = Command::new("python3")
        .arg("-m")
        .arg("venv")
        .arg(&venv)
        .status()?
        .success()
        && Command::new(venv.join("bin").join("pip"))
            .args(["install", "-q"])
            .args(WHEELS)
            .status()?
            .success();
    if !ok {
        bail!("could not install nvcc from PyPI into {}", venv.display());
    }
    find(&venv).with_context(|| format!("pip installed the toolchain but {} has no nvcc", venv.display()))
}

/// `CUDARC_CUDA_VERSION` for nvcc's release (`13.0` → `13000`), capped at 13.4.
fn cudarc_version(nvcc: &Path) -> Result<String> {
    let out = Command::new(nvcc)
        .arg("--version")
        .output()
        .context("cannot run nvcc --version")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let release = text
        .split("release ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .with_context(|| format!("cannot read the release from nvcc --version: {text}"))?;
    let mut it = release.trim().split('.');
    let major: u32 = it.next().unwrap_or("0").parse().unwrap_or(0);
    let minor: u32 = it.next().unwrap_or("0").parse().unwrap_or(0);
    Ok((major * 1000 + minor * 10).min(13_040).to_string())
}

/// The libraries candle's cudarc (`dynamic-linking`) links against, with their run-time sonames
/// and the cudarc bindings that declare their functions.
const LINKED: [(&str, &str, &str); 5] = [
    ("cuda", "libcuda.so.1", "driver"),
    ("nvrtc", "libnvrtc.so.13", "nvrtc"),
    ("curand", "libcurand.so.10", "curand"),
    ("cublas", "libcublas.so.13", "cublas"),
    ("cublasLt", "libcublasLt.so.13", "cublaslt"),
];

/// The cudarc source folder in cargo's registry.
fn cudarc_src() -> Result<PathBuf> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let registry = home.join("registry").join("src");
    for index in std::fs::read_dir(&registry)?.flatten() {
        for krate in std::fs::read_dir(index.path())?.flatten() {
            let name = krate.file_name().to_string_lossy().to_string();
            if name.starts_with("cudarc-0.19") {
                return Ok(krate.path().join("src"));
            }
        }
    }
    bail!("cudarc 0.19 is not in {} (run `cargo fetch` first)", registry.display())
}

/// Link-time stand-ins for the CUDA libraries a machine without CUDA lacks (the way the
/// toolkit's own `lib64/stubs` work): one empty function per name cudarc binds, built as a
/// shared library with the real soname, so the binary records `libcublas.so.13` etc. and the GPU
/// machine's real libraries serve it. `libcudart.so` links to the toolchain's real runtime.
fn link_stubs(layout: &Layout, root: &Path) -> Result<PathBuf> {
    let dir = layout.target.join("cuda-stubs");
    let lib = dir.join("lib");
    std::fs::create_dir_all(&lib)?;
    let src = cudarc_src()?;
    for (name, soname, module) in LINKED {
        let out = lib.join(format!("lib{name}.so"));
        if out.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(src.join(module).join("sys").join("mod.rs"))?;
        // A name can be bound once per CUDA version (cfg variants): define it once.
        let names: std::collections::BTreeSet<&str> = text
            .lines()
            .filter_map(|line| line.strip_prefix("pub unsafe fn ")?.split('(').next())
            .collect();
        let c: String = names.iter().map(|f| format!("void {f}(void) {{}}\n")).collect();
        let c_file = dir.join(format!("{name}.c"));
        std::fs::write(&c_file, c)?;
        let ok = Command::new("cc")
            .args(["-shared", "-fPIC", "-o"])
            .arg(&out)
            .arg(format!("-Wl,-soname,{soname}"))
            .arg(&c_file)
            .status()
            .context("cannot run cc")?
            .success();
        if !ok {
            bail!("cc could not build the link stub {}", out.display());
        }
    }
    let cudart = lib.join("libcudart.so");
    if !cudart.exists() {
        let real = ["libcudart.so.13", "libcudart.so"]
            .iter()
            .flat_map(|name| ["lib", "lib64"].map(|d| root.join(d).join(name)))
            .find(|p| p.is_file())
            .with_context(|| format!("no libcudart.so.13 under {}", root.display()))?;
        std::os::unix::fs::symlink(real, &cudart)?;
    }
    Ok(dir)
}

/// Run `check-cuda`.
pub fn check_cuda(opts: &CheckCuda) -> Result<()> {
    let layout = Layout::detect();
    let root = cuda_root(&layout)?;
    let nvcc = nvcc_in(&root).context("nvcc vanished")?;
    let version = std::env::var("CUDARC_CUDA_VERSION").or_else(|_| cudarc_version(&nvcc))?;
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    let target = layout.target.join("cuda");
    let path = format!(
        "{}:{}",
        root.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    eprintln!(
        "nvcc {} | CUDARC_CUDA_VERSION={version} CUDA_COMPUTE_CAP={cap} | target {}",
        nvcc.display(),
        target.display()
    );
    // Link against the real libraries when the machine has them, else against stubs.
    let has_real = ["lib64", "lib"]
        .iter()
        .any(|d| root.join(d).join("libcublas.so").exists());
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    // The link stubs are generated from cudarc's sources: on a fresh clone they are not in the
    // registry yet.
    if !has_real && cudarc_src().is_err() {
        eprintln!("cargo fetch (cudarc's sources are needed for the link stubs)");
        let ok = Command::new(&cargo)
            .arg("fetch")
            .current_dir(&layout.root)
            .status()
            .context("cannot run cargo fetch")?
            .success();
        if !ok {
            bail!("cargo fetch failed: cudarc's sources are needed to build the link stubs");
        }
    }
    let stubs = if has_real {
        None
    } else {
        Some(link_stubs(&layout, &root)?)
    };
    let run = |args: &[&str]| -> Result<()> {
        eprintln!("cargo {}", args.join(" "));
        let mut cmd = Command::new(&cargo);
        if let Some(stubs) = &stubs {
            cmd.env("CUDA_ROOT", stubs);
        }
        let status = cmd
            .args(args)
            .current_dir(&layout.root)
            .env("PATH", &path)
            .env("CUDA_HOME", &root)
            .env("CUDA_PATH", &root)
            .env("CUDARC_CUDA_VERSION", &version)
            .env("CUDA_COMPUTE_CAP", &cap)
            .env("CARGO_TARGET_DIR", &target)
            .status()
            .context("cannot run cargo")?;
        if !status.success() {
            bail!("cargo {} failed ({status})", args.join(" "));
        }
        Ok(())
    };
    run(&["build", "--release", "-p", "gfn-cli", "--features", "cuda"])?;
    let driver =
        crate::runner::succeeds(Command::new("sh").args(["-c", "ldconfig -p 2>/dev/null | grep -q 'libcuda.so.1 '"]));
    if !driver && !opts.no_test {
        eprintln!(
            "no libcuda.so.1 (NVIDIA driver) here: building the kernel tests without running them; \
             the CPU-side tests run in the default build, the GPU ones on a GPU machine (benches/gpu/run.sh)"
        );
    }
    if opts.no_test || !driver {
        run(&["test", "--release", "-p", "gfn-cuda", "--features", "cuda", "--no-run"])?;
    } else {
        run(&["test", "--release", "-p", "gfn-cuda", "--features", "cuda"])?;
    }
    if let Some(dir) = &opts.bundle {
        std::fs::create_dir_all(dir)?;
        let deps = target.join("release").join("deps");
        let newest_test = |stem: &str| -> Result<PathBuf> {
            let mut tests: Vec<PathBuf> = std::fs::read_dir(&deps)?
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    name.starts_with(&format!("{stem}-")) && p.extension().is_none()
                })
                .collect();
            tests.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
            tests
                .pop()
                .with_context(|| format!("no {stem} test binary in target/cuda/release/deps"))
        };
        // The xtask binary too, so `xtask bench <suite> --device cuda --gfn-binary …` runs
        // suites on a GPU machine that has no Rust toolchain.
        let xtask = std::env::current_exe().context("cannot locate the xtask binary")?;
        for (src, name) in [
            (target.join("release").join("gfn"), "gfn"),
            (newest_test("kernels")?, "kernels"),
            (newest_test("gpu")?, "gpu"),
            (xtask, "xtask"),
        ] {
            // Debug info stripped (55 MB instead of 130 for gfn), then xz (Python's lzma reads it
            // on machines without the xz tool): the bundle travels.
            let plain = dir.join(name);
            std::fs::copy(&src, &plain)?;
            let stripped = crate::runner::succeeds(Command::new("strip").arg(&plain));
            if !stripped {
                eprintln!("warning: strip failed on {}; bundling it unstripped", plain.display());
            }
            let dst = dir.join(format!("{name}.xz"));
            let ok = crate::runner::succeeds(Command::new("xz").args(["-q", "-f", "-9", "-T0"]).arg(&plain));
            if !ok {
                bail!("xz could not compress {} (install xz-utils)", plain.display());
            }
            eprintln!("bundled {} ({} bytes)", dst.display(), std::fs::metadata(&dst)?.len());
        }
    }
    Ok(())
}
