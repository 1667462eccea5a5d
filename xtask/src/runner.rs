//! Running child processes: building `gfn`, one training run with its peak memory, and
//! preparing a peer's Python environment.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Where the tree is and where its build outputs go.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Workspace root.
    pub root: PathBuf,
    /// Cargo's target directory (`CARGO_TARGET_DIR`, else `<root>/target`).
    pub target: PathBuf,
}

impl Layout {
    /// The workspace this xtask was built in, or — where that path does not exist (a bundled
    /// xtask on another machine) — the current directory.
    pub fn detect() -> Self {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let built_in = manifest.parent().unwrap_or(manifest).to_path_buf();
        let root = if built_in.join("Cargo.toml").is_file() {
            built_in
        } else {
            std::env::current_dir().unwrap_or(built_in)
        };
        let target = match std::env::var_os("CARGO_TARGET_DIR") {
            Some(t) if !t.is_empty() => root.join(t),
            _ => root.join("target"),
        };
        Layout { root, target }
    }
}

/// A standard stream of this process, duplicated for a child.
fn our_stderr() -> Stdio {
    match std::io::stderr().as_fd().try_clone_to_owned() {
        Ok(fd) => Stdio::from(fd),
        Err(_) => Stdio::inherit(),
    }
}

/// The gfn binary for `device`: `prebuilt` if given (checked to exist), else built by
/// `cargo build --release -p gfn-cli`, for a GPU with `--features cuda` into `target/cuda` (nvcc
/// on PATH or in `$CUDA_HOME`; see docs/CUDA.md).
pub fn gfn_for(layout: &Layout, device: &str, prebuilt: Option<&Path>) -> Result<PathBuf> {
    match prebuilt {
        Some(p) if p.is_file() => return Ok(p.to_path_buf()),
        Some(p) => bail!("--gfn-binary {}: no such file", p.display()),
        None => {}
    }
    let cuda = device != "cpu";
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let (target, features, how) = if cuda {
        (
            layout.target.join("cuda"),
            &["--features", "cuda"][..],
            " --features cuda",
        )
    } else {
        (layout.target.clone(), &[][..], "")
    };
    let shown = format!("cargo build --release -p gfn-cli{how}");
    eprintln!("building gfn: {shown}{}", if cuda { " (target/cuda)" } else { "" });
    let status = Command::new(&cargo)
        .args(["build", "--release", "-p", "gfn-cli"])
        .args(features)
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(&layout.root)
        .stdin(Stdio::null())
        .stdout(our_stderr())
        .stderr(Stdio::inherit())
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!(
            "{shown} failed ({status}){}",
            if cuda { "; see docs/CUDA.md" } else { "" }
        );
    }
    let bin = target.join("release").join("gfn");
    if !bin.is_file() {
        bail!("cargo built gfn but {} does not exist", bin.display());
    }
    Ok(bin)
}

/// Whether `cmd`, run with no input or output, exits successfully.
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// How the peak resident memory of a child is measured.
#[derive(Debug, Clone)]
pub enum RssProbe {
    /// GNU `time -f %M -o FILE` (the child's `ru_maxrss`, exact).
    Time(PathBuf),
    /// Polling `VmHWM` in `/proc/<pid>/status` (misses growth in the last few ms).
    Poll,
    /// Not measured.
    None,
}

impl RssProbe {
    /// GNU time if `/usr/bin/time -f %M` works here, else /proc polling, else nothing.
    pub fn detect(scratch: &Path) -> Self {
        let time = PathBuf::from("/usr/bin/time");
        if time.is_file() {
            let out = scratch.join(".rss-probe");
            let ok = Command::new(&time)
                .args(["-f", "%M", "-o"])
                .arg(&out)
                .arg("true")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            let parsed = read_time_kib(&out).is_some();
            let _ = std::fs::remove_file(&out);
            if ok && parsed {
                return RssProbe::Time(time);
            }
        }
        if Path::new("/proc/self/status").is_file() && read_vm_hwm_kib(std::process::id()).is_some() {
            RssProbe::Poll
        } else {
            RssProbe::None
        }
    }

    /// Name recorded in `results.json`.
    pub fn describe(&self) -> &'static str {
        match self {
            RssProbe::Time(_) => "GNU time %M (ru_maxrss of the child)",
            RssProbe::Poll => "VmHWM of /proc/<pid>/status, polled every 20 ms",
            RssProbe::None => "not measured",
        }
    }
}

/// Last line of a GNU time output file, as KiB.
fn read_time_kib(path: &Path) -> Option<u64> {
    let s = std::fs::read_to_string(path).ok()?;
    s.lines().rev().find(|l| !l.trim().is_empty())?.trim().parse().ok()
}

/// `VmHWM` of a process, in KiB.
fn read_vm_hwm_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find_map(|l| {
        let v = l.strip_prefix("VmHWM:")?;
        v.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// A child process to run and measure.
pub struct Job<'a> {
    /// Program.
    pub program: &'a Path,
    /// Its arguments.
    pub args: &'a [String],
    /// Extra environment variables.
    pub env: &'a [(String, String)],
    /// Working directory.
    pub cwd: &'a Path,
    /// Standard output goes here (standard error too when `stderr` is `None`).
    pub stdout: &'a Path,
    /// Standard error goes here, if separate.
    pub stderr: Option<&'a Path>,
}

/// What a finished child left.
#[derive(Debug)]
pub struct Finished {
    /// Exit status.
    pub status: ExitStatus,
    /// Wall-clock seconds of the whole process (start-up included).
    pub wall_seconds: f64,
    /// Peak resident memory in MiB, if measured.
    pub peak_rss_mb: Option<f64>,
}

/// Runs `job` to completion, measuring its peak resident memory with `probe`.
pub fn run_job(job: &Job, probe: &RssProbe) -> Result<Finished> {
    let stdout = File::create(job.stdout).with_context(|| format!("cannot create {}", job.stdout.display()))?;
    let stderr = match job.stderr {
        Some(p) => File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        None => stdout.try_clone()?,
    };
    let rss_file = job.stdout.with_extension("rss");
    let mut cmd = match probe {
        RssProbe::Time(time) => {
            let mut c = Command::new(time);
            c.args(["-f", "%M", "-o"]).arg(&rss_file).arg(job.program);
            c
        }
        _ => Command::new(job.program),
    };
    cmd.args(job.args)
        .envs(job.env.iter().map(|(k, v)| (k, v)))
        .current_dir(job.cwd)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", job.program.display()))?;
    let mut hwm: Option<u64> = None;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if matches!(probe, RssProbe::Poll)
            && let Some(k) = read_vm_hwm_kib(child.id())
        {
            hwm = Some(hwm.map_or(k, |h| h.max(k)));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let wall_seconds = start.elapsed().as_secs_f64();
    let kib = match probe {
        RssProbe::Time(_) => {
            let k = read_time_kib(&rss_file);
            let _ = std::fs::remove_file(&rss_file);
            k
        }
        RssProbe::Poll => hwm,
        RssProbe::None => None,
    };
    Ok(Finished {
        status,
        wall_seconds,
        peak_rss_mb: kib.map(|k| k as f64 / 1024.0),
    })
}

/// Last `n` lines of a log file, joined with ` | ` (for one-line error messages).
pub fn log_tail(path: &Path, n: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let start = lines.len().saturating_sub(n);
    let mut tail = lines[start..].join(" | ");
    if tail.len() > 400 {
        let mut cut = 400;
        while !tail.is_char_boundary(cut) {
            cut -= 1;
        }
        tail.truncate(cut);
        tail.push('…');
    }
    tail
}

/// A ready peer environment.
#[derive(Debug, Clone)]
pub struct PeerEnv {
    /// The virtual environment's Python.
    pub python: PathBuf,
    /// The driver script.
    pub driver: PathBuf,
}

/// Creates or reuses the peer's virtual environment. `Err` carries a one-line reason.
pub fn prepare_peer(layout: &Layout, spec: &crate::suite::PeerSpec) -> std::result::Result<PeerEnv, String> {
    prepare_peer_with(layout, spec, "python3")
}

/// [`prepare_peer`] with `python3` the interpreter that creates a missing environment.
fn prepare_peer_with(
    layout: &Layout,
    spec: &crate::suite::PeerSpec,
    python3: &str,
) -> std::result::Result<PeerEnv, String> {
    let driver = layout.root.join(spec.driver);
    if !driver.is_file() {
        return Err(format!("driver {} not found", spec.driver));
    }
    let venv = layout.target.join(spec.venv);
    let python = venv.join("bin").join("python");
    let works = |python: &Path| {
        succeeds(
            Command::new(python)
                .args(["-c", spec.check])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
    };
    if python.is_file() && works(&python) {
        return Ok(PeerEnv { python, driver });
    }
    let requirements = layout.root.join(spec.requirements);
    if !requirements.is_file() {
        return Err(format!("requirements {} not found", spec.requirements));
    }
    if !succeeds(
        Command::new(python3)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    ) {
        return Err(format!("{python3} not found"));
    }
    if !python.is_file() {
        eprintln!("creating {} ({python3} -m venv)", venv.display());
        let ok = succeeds(
            Command::new(python3)
                .args(["-m", "venv"])
                .arg(&venv)
                .stdout(our_stderr()),
        );
        if !ok || !python.is_file() {
            return Err(format!("{python3} -m venv {} failed", venv.display()));
        }
    }
    eprintln!(
        "installing {} into {} (pip; torch with its CUDA wheels is several GB)",
        spec.requirements,
        venv.display()
    );
    let pip = venv.join("bin").join("pip");
    let install = ["install", "--disable-pip-version-check", "-r"];
    if !succeeds(Command::new(pip).args(install).arg(&requirements).stdout(our_stderr())) {
        return Err(format!("pip install -r {} failed", spec.requirements));
    }
    if !works(&python) {
        return Err(format!("`{}` fails in {}", spec.check, venv.display()));
    }
    Ok(PeerEnv { python, driver })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn missing_python_is_reported_in_one_line() {
        let suite = crate::data_suite::build("hypergrid", &crate::suite::test_util::opts(true, None));
        let target = scratch("nopython");
        let layout = Layout {
            root: Layout::detect().root,
            target: target.clone(),
        };
        let err = prepare_peer_with(&layout, &suite.peers[0], "python3-that-does-not-exist").unwrap_err();
        assert_eq!(err, "python3-that-does-not-exist not found");
        assert!(!target.join(suite.peers[0].venv).exists());
        let _ = std::fs::remove_dir_all(&target);
    }

    #[test]
    fn missing_driver_is_reported() {
        let suite = crate::data_suite::build("hypergrid", &crate::suite::test_util::opts(true, None));
        let root = scratch("nodriver");
        let layout = Layout {
            root: root.clone(),
            target: root.join("target"),
        };
        let err = prepare_peer(&layout, &suite.peers[0]).unwrap_err();
        assert!(err.starts_with("driver benches/peers/"), "{err}");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn rss_of_a_child() {
        let dir = scratch("rss");
        let probe = RssProbe::detect(&dir);
        let args = vec!["-c".to_string(), "exit 3".to_string()];
        let log = dir.join("sh.log");
        let job = Job {
            program: Path::new("/bin/sh"),
            args: &args,
            env: &[],
            cwd: &dir,
            stdout: &log,
            stderr: None,
        };
        let done = run_job(&job, &probe).unwrap();
        assert_eq!(done.status.code(), Some(3));
        if !matches!(probe, RssProbe::None) {
            assert!(done.peak_rss_mb.is_some_and(|m| m > 0.0));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
