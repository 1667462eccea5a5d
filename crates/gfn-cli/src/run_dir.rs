//! Run directories: where `gfn train` writes, and what `--resume`, `sample` and `eval` read.
//!
//! What keeps one safe:
//! * **A lock.** A training process holds an exclusive OS lock on `DIR/.lock` (`flock`: released
//!   on any exit, even `kill -9`, so it is never stale) and writes its pid there; a second
//!   process is refused, naming the holder.
//! * **No foreign folder overwritten.** A new run goes only into a folder that does not exist or
//!   holds nothing but gfn's own lock and temporary files.
//! * **Atomic files** ([`gfn::io::write_atomic`]); temporary files a killed process left
//!   behind are removed when the next process takes the lock.
//! * **A failure note.** A run that stops on an error writes `failed.json` (the iteration and
//!   the reason); its last valid state stays as it was, and `gfn eval` says what happened.
//! * **Timing that survives a kill.** `timing.json` is written before the checkpoint and keeps
//!   the entry of the previous checkpoint too, so whichever checkpoint survives finds its own.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde::de::DeserializeOwned;

use gfn::config::TrainConfig;
use gfn::io::write_atomic;

/// File names inside a run directory.
pub mod files {
    /// Resolved configuration.
    pub const CONFIG: &str = "config.toml";
    /// One JSON line per evaluation.
    pub const METRICS: &str = "metrics.jsonl";
    /// Parameters, optimiser state, RNG state.
    pub const CHECKPOINT: &str = "checkpoint.safetensors";
    /// Final summary.
    pub const SUMMARY: &str = "summary.json";
    /// Training-loop seconds so far (the only file that differs between identical runs).
    pub const TIMING: &str = "timing.json";
    /// Why and where a run stopped on an error (absent for a run that did not fail).
    pub const FAILED: &str = "failed.json";
    /// The lock a training process holds.
    pub const LOCK: &str = ".lock";
}

/// A run directory.
pub struct RunDir {
    /// The directory.
    pub path: PathBuf,
}

/// The exclusive lock on a run directory; released when dropped (or when the process exits).
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

/// Why a run stopped (`failed.json`).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Failure {
    /// The iteration the error happened at (iterations completed before it).
    pub iteration: u64,
    /// The error.
    pub reason: String,
    /// The iteration of the last valid checkpoint left in the directory, if any.
    pub last_checkpoint: Option<u64>,
}

/// Whether `name` is one of the temporary files [`write_atomic`] makes (`.NAME.PID.tmp`).
fn is_temp_file(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".tmp")
}

impl RunDir {
    /// The run directory at `path`.
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
        }
    }
    /// Path of a file inside.
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Take the directory's exclusive lock (the directory must exist): refused, naming the
    /// holder's pid, while another process holds it. Stale temporary files are removed once the
    /// lock is held (their writer is gone).
    pub fn lock(&self) -> Result<RunLock> {
        let p = self.file(files::LOCK);
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&p)
            .with_context(|| format!("cannot open the lock file {}", p.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let who = if holder.is_empty() {
                    "another process".to_string()
                } else {
                    format!("process {holder}")
                };
                bail!(
                    "run directory {} is in use by {who} (a gfn training); wait for it to finish or choose another directory",
                    self.path.display()
                );
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", p.display()));
            }
        }
        file.set_len(0)?;
        file.rewind()?;
        writeln!(file, "{}", std::process::id())?;
        file.flush()?;
        self.remove_stale_temp_files()?;
        Ok(RunLock { _file: file })
    }

    /// Remove the temporary files a killed writer left (call only while holding the lock).
    fn remove_stale_temp_files(&self) -> Result<()> {
        for entry in std::fs::read_dir(&self.path)?.flatten() {
            let name = entry.file_name();
            if is_temp_file(&name.to_string_lossy()) {
                std::fs::remove_file(entry.path())
                    .with_context(|| format!("cannot remove the stale {}", entry.path().display()))?;
            }
        }
        Ok(())
    }

    /// Create the directory of a new run and lock it: it must not exist, or hold nothing but
    /// gfn's lock and temporary files. A directory holding a run points to `--resume`; one
    /// holding anything else is refused (it is not ours to overwrite).
    pub fn create_new(&self) -> Result<RunLock> {
        if self.path.exists() && !self.path.is_dir() {
            bail!("--out {} is a file, not a directory", self.path.display());
        }
        gfn::io::ensure_writable_dir(&self.path)?;
        let lock = self.lock()?;
        if self.file(files::CHECKPOINT).exists() {
            bail!(
                "{} already holds a run; continue it with --resume {} or choose another --out",
                self.path.display(),
                self.path.display()
            );
        }
        let mut foreign: Vec<String> = std::fs::read_dir(&self.path)?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n != files::LOCK && !is_temp_file(n))
            .collect();
        if !foreign.is_empty() {
            foreign.sort();
            let shown: Vec<&str> = foreign.iter().take(5).map(String::as_str).collect();
            bail!(
                "--out {} is not empty (it holds {}{}): a new run needs an empty or new directory; gfn does not overwrite files it did not write",
                self.path.display(),
                shown.join(", "),
                if foreign.len() > 5 { ", …" } else { "" }
            );
        }
        Ok(lock)
    }

    /// Lock the directory of an existing run to continue it (it must exist: nothing is created).
    pub fn lock_existing(&self) -> Result<RunLock> {
        if !self.path.is_dir() {
            bail!("{} is not a run directory (it does not exist)", self.path.display());
        }
        if !self.file(files::CONFIG).is_file() {
            bail!("{} is not a run directory (no {})", self.path.display(), files::CONFIG);
        }
        self.lock()
    }

    /// Read the resolved configuration.
    pub fn read_config(&self) -> Result<TrainConfig> {
        let p = self.file(files::CONFIG);
        let text = std::fs::read_to_string(&p)
            .with_context(|| format!("cannot read {}: is this a run directory?", p.display()))?;
        toml::from_str(&text).with_context(|| format!("{} is not a valid configuration", p.display()))
    }
    /// Write the configuration atomically.
    pub fn write_config(&self, c: &TrainConfig) -> Result<()> {
        write_atomic(&self.file(files::CONFIG), c.to_toml().as_bytes())
    }

    /// Record why the run stopped (`failed.json`, atomically).
    pub fn write_failure(&self, failure: &Failure) -> Result<()> {
        write_atomic(
            &self.file(files::FAILED),
            serde_json::to_string_pretty(failure)?.as_bytes(),
        )
    }
    /// Why the run stopped, if it failed.
    pub fn read_failure(&self) -> Result<Option<Failure>> {
        let p = self.file(files::FAILED);
        match std::fs::read_to_string(&p) {
            Ok(text) => Ok(Some(
                serde_json::from_str(&text).with_context(|| format!("{} is not valid", p.display()))?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", p.display())),
        }
    }
    /// Record `error`, met at `iteration` with the last valid checkpoint at `last_checkpoint`, in
    /// `failed.json` (what the training loops do when a run stops on an error).
    pub fn note_failure(&self, iteration: u64, last_checkpoint: Option<u64>, error: &anyhow::Error) -> Result<()> {
        self.write_failure(&Failure {
            iteration,
            reason: format!("{error:#}"),
            last_checkpoint,
        })
    }
    /// Forget an earlier failure (a resumed run continues from the last valid state).
    pub fn clear_failure(&self) -> Result<()> {
        match std::fs::remove_file(self.file(files::FAILED)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("cannot remove {}", self.file(files::FAILED).display()))
            }
            _ => Ok(()),
        }
    }

    /// Write `timing` (whose `"iteration"` is the checkpoint about to be written) into
    /// `timing.json`, keeping the current entry as `"previous"`. Call before writing the
    /// checkpoint: if the process dies between the two, the surviving checkpoint still finds its
    /// entry.
    pub fn write_timing<T: Serialize>(&self, timing: &T) -> Result<()> {
        let mut value = serde_json::to_value(timing)?;
        let old = std::fs::read_to_string(self.file(files::TIMING))
            .ok()
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok());
        if let Some(mut old) = old {
            let previous = if old.get("iteration") == value.get("iteration") {
                // The same checkpoint written again (a resumed run's final evaluation): keep
                // the entry before it.
                old.get("previous").cloned()
            } else {
                if let Some(o) = old.as_object_mut() {
                    o.remove("previous");
                }
                Some(old)
            };
            if let (Some(prev), Some(new)) = (previous, value.as_object_mut()) {
                new.insert("previous".into(), prev);
            }
        }
        write_atomic(&self.file(files::TIMING), serde_json::to_string(&value)?.as_bytes())
    }

    /// The timing entry of the checkpoint at `iteration` (the default where there is no
    /// `timing.json`); an error where the file holds no entry for that checkpoint.
    pub fn read_timing<T: DeserializeOwned + Default>(&self, iteration: u64) -> Result<T> {
        let p = self.file(files::TIMING);
        let text = match std::fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(T::default()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", p.display())),
        };
        let value: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{} is not valid", p.display()))?;
        let at = |v: &serde_json::Value| v.get("iteration").and_then(serde_json::Value::as_u64);
        let entry = if at(&value) == Some(iteration) {
            value.clone()
        } else if let Some(prev) = value.get("previous").filter(|p| at(p) == Some(iteration)) {
            prev.clone()
        } else {
            bail!(
                "{} has no entry for the checkpoint at iteration {iteration} (it is at {:?})",
                p.display(),
                at(&value)
            );
        };
        serde_json::from_value(entry).with_context(|| format!("{} is not valid", p.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("gfn-rundir-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        p
    }

    #[derive(Debug, Default, PartialEq, Serialize, serde::Deserialize)]
    struct T {
        iteration: u64,
        seconds: f64,
    }

    #[test]
    fn timing_keeps_the_previous_checkpoint_entry() {
        let p = tmp("timing");
        std::fs::create_dir_all(&p).unwrap();
        let d = RunDir::new(&p);
        assert_eq!(d.read_timing::<T>(0).unwrap(), T::default());
        d.write_timing(&T {
            iteration: 10,
            seconds: 1.0,
        })
        .unwrap();
        d.write_timing(&T {
            iteration: 20,
            seconds: 2.0,
        })
        .unwrap();
        // Killed after timing.json, before the checkpoint of iteration 20: 10's entry is there.
        assert_eq!(d.read_timing::<T>(10).unwrap().seconds, 1.0);
        assert_eq!(d.read_timing::<T>(20).unwrap().seconds, 2.0);
        // The same checkpoint again keeps the entry before it.
        d.write_timing(&T {
            iteration: 20,
            seconds: 2.5,
        })
        .unwrap();
        assert_eq!(d.read_timing::<T>(10).unwrap().seconds, 1.0);
        assert_eq!(d.read_timing::<T>(20).unwrap().seconds, 2.5);
        let e = d.read_timing::<T>(30).unwrap_err().to_string();
        assert!(e.contains("no entry") && e.contains("30"), "{e}");
        let _ = std::fs::remove_dir_all(p);
    }

    #[test]
    fn a_held_lock_refuses_a_second_holder_and_names_the_pid() {
        let p = tmp("lock");
        let d = RunDir::new(&p);
        let lock = d.create_new().unwrap();
        let e = RunDir::new(&p).lock().unwrap_err().to_string();
        assert!(
            e.contains("in use") && e.contains(&std::process::id().to_string()),
            "{e}"
        );
        drop(lock);
        // Released: a stale temporary file goes when the lock is taken again.
        std::fs::write(p.join(".checkpoint.safetensors.99999.tmp"), b"x").unwrap();
        let _again = RunDir::new(&p).lock().unwrap();
        assert!(!p.join(".checkpoint.safetensors.99999.tmp").exists());
        let _ = std::fs::remove_dir_all(p);
    }

    #[test]
    fn a_new_run_refuses_a_foreign_folder() {
        let p = tmp("foreign");
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(p.join("config.toml"), b"mine").unwrap();
        std::fs::write(p.join("notes.txt"), b"mine").unwrap();
        let e = RunDir::new(&p).create_new().unwrap_err().to_string();
        assert!(
            e.contains("not empty") && e.contains("config.toml") && e.contains("notes.txt"),
            "{e}"
        );
        assert_eq!(std::fs::read(p.join("config.toml")).unwrap(), b"mine");
        // Only gfn's own lock and temporary files: fine.
        let q = tmp("ours");
        std::fs::create_dir_all(&q).unwrap();
        std::fs::write(q.join(".lock"), b"").unwrap();
        std::fs::write(q.join(".metrics.jsonl.4242.tmp"), b"x").unwrap();
        RunDir::new(&q).create_new().unwrap();
        assert!(!q.join(".metrics.jsonl.4242.tmp").exists());
        let _ = std::fs::remove_dir_all(p);
        let _ = std::fs::remove_dir_all(q);
    }

    #[test]
    fn resume_creates_nothing() {
        let p = tmp("nothing").join("a").join("b");
        let e = RunDir::new(&p).lock_existing().unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
        assert!(!p.parent().unwrap().exists());
    }
}
