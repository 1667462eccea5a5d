//! Facts about the machine, the toolchain and the source tree, recorded with every result.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The machine a suite ran on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    /// CPU model (`model name` in /proc/cpuinfo).
    pub cpu: Option<String>,
    /// Logical CPUs (processors listed in /proc/cpuinfo, else the available parallelism).
    pub cpus: Option<usize>,
    /// Total memory in GiB (`MemTotal` in /proc/meminfo).
    pub memory_gib: Option<f64>,
    /// Operating system (`PRETTY_NAME` in /etc/os-release).
    pub os: Option<String>,
    /// Kernel release.
    pub kernel: Option<String>,
}

impl Machine {
    /// Reads the machine's description from /proc and /etc.
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |line: &str, key: &str| -> Option<String> {
            let (k, v) = line.split_once(':')?;
            (k.trim() == key).then(|| v.trim().to_string())
        };
        let cpu = cpuinfo.lines().find_map(|l| field(l, "model name"));
        let processors = cpuinfo.lines().filter(|l| field(l, "processor").is_some()).count();
        let cpus = if processors > 0 {
            Some(processors)
        } else {
            std::thread::available_parallelism().ok().map(usize::from)
        };
        let memory_gib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
            m.lines().find_map(|l| {
                let rest = l.strip_prefix("MemTotal:")?;
                let kib: f64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
                Some((kib / (1024.0 * 1024.0) * 10.0).round() / 10.0)
            })
        });
        let os = std::fs::read_to_string("/etc/os-release").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim().trim_matches('"').to_string())
        });
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .ok()
            .map(|s| s.trim().to_string());
        Machine {
            cpu,
            cpus,
            memory_gib,
            os,
            kernel,
        }
    }

    /// One-line description: `AMD EPYC, 2 CPUs, 23.5 GiB, Debian GNU/Linux 12 (bookworm)`.
    pub fn line(&self) -> String {
        let mut parts = vec![self.cpu.clone().unwrap_or_else(|| "unknown CPU".into())];
        if let Some(n) = self.cpus {
            parts.push(format!("{n} CPU{}", if n == 1 { "" } else { "s" }));
        }
        if let Some(m) = self.memory_gib {
            parts.push(format!("{m} GiB"));
        }
        if let Some(os) = &self.os {
            parts.push(os.clone());
        }
        parts.join(", ")
    }
}

/// The source tree's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Git {
    /// `git rev-parse HEAD`.
    pub commit: Option<String>,
    /// Whether `git status --porcelain` lists anything (modified or untracked files).
    pub dirty: Option<bool>,
}

impl Git {
    /// Asks git about the tree at `root`.
    pub fn detect(root: &Path) -> Self {
        let commit = command_line(root, "git", &["rev-parse", "HEAD"]);
        let dirty = command_output(root, "git", &["status", "--porcelain"]).map(|s| !s.trim().is_empty());
        Git { commit, dirty }
    }

    /// `155b1d5 (dirty)`.
    pub fn line(&self) -> String {
        let mut s = match &self.commit {
            Some(c) => c.chars().take(10).collect(),
            None => "unknown commit".to_string(),
        };
        if self.dirty == Some(true) {
            s.push_str(" (dirty)");
        }
        s
    }
}

/// Standard output of a command run in `dir`, if it ran and succeeded.
pub fn command_output(dir: &Path, program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// First line of a command's standard output, trimmed.
pub fn command_line(dir: &Path, program: &str, args: &[&str]) -> Option<String> {
    command_output(dir, program, args)
        .and_then(|s| s.lines().next().map(|l| l.trim().to_string()))
        .filter(|s| !s.is_empty())
}

/// A UTC instant, broken down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Utc {
    /// Year.
    pub year: i64,
    /// Month, 1–12.
    pub month: u32,
    /// Day of the month, 1–31.
    pub day: u32,
    /// Hour, 0–23.
    pub hour: u32,
    /// Minute.
    pub minute: u32,
    /// Second.
    pub second: u32,
}

impl Utc {
    /// Now.
    pub fn now() -> Self {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        Self::from_unix(secs)
    }

    /// From seconds since 1970-01-01T00:00:00Z.
    pub fn from_unix(secs: i64) -> Self {
        let days = secs.div_euclid(86_400);
        let sod = secs.rem_euclid(86_400) as u32;
        // Howard Hinnant's civil_from_days.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        Utc {
            year,
            month,
            day,
            hour: sod / 3600,
            minute: sod / 60 % 60,
            second: sod % 60,
        }
    }

    /// `20261122T181500Z` (a directory name).
    pub fn compact(&self) -> String {
        self.rfc3339().replace(['-', ':'], "")
    }

    /// `2026-11-22T18:15:00Z` (RFC 3339).
    pub fn rfc3339(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formatting() {
        assert_eq!(Utc::from_unix(0).rfc3339(), "1970-01-01T00:00:00Z");
        assert_eq!(Utc::from_unix(951_782_400).rfc3339(), "2000-02-29T00:00:00Z");
        assert_eq!(Utc::from_unix(1_795_371_300).compact(), "20261122T181500Z");
        assert_eq!(Utc::from_unix(-1).rfc3339(), "1969-12-31T23:59:59Z");
    }
}
