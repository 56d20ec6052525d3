//! Soak: many container lifecycles against one daemon, each making a
//! bypassed connect and a published-port bind (served by a host listener),
//! while the daemon's open fds, threads and resident memory are sampled.
//! What a long-lived daemon leaks shows up as growth.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rootless_lab::{Container, ContainerConfig, DaemonProcess, Lab};
use serde_json::{json, Value};

/// The daemon's resources at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub fds: u64,
    pub threads: u64,
    pub rss_kib: u64,
}

impl Usage {
    pub fn of(pid: u32) -> Result<Self> {
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .with_context(|| format!("listing the fds of pid {pid}"))?
            .count() as u64;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let (threads, rss_kib) = parse_status(&status).context("no Threads/VmRSS in /proc/PID/status")?;
        Ok(Self {
            fds,
            threads,
            rss_kib,
        })
    }
}

/// `Threads:` and `VmRSS:` (kB) of a /proc/PID/status text.
pub fn parse_status(status: &str) -> Option<(u64, u64)> {
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Some((field("Threads:")?, field("VmRSS:")?))
}

pub struct SoakSettings<'a> {
    pub lifecycles: usize,
    /// The bypassed connect's destination (an echo server in the peer).
    pub echo: &'a str,
    /// A profile publishing `port` (bind bypass).
    pub profile: Value,
    pub port: u16,
}

/// The outcome, for the report.
pub struct SoakResult {
    pub lifecycles: usize,
    pub failed: usize,
    pub seconds: f64,
    pub before: Usage,
    pub after: Usage,
    /// (lifecycles done, usage) every tenth of the run.
    pub samples: Vec<(usize, Usage)>,
}

impl SoakResult {
    pub fn summary(&self) -> String {
        let d = |a: u64, b: u64| b as i64 - a as i64;
        format!(
            "soak: {} container lifecycles ({} failed) in {:.0} s, each a bypassed connect and a published-port bind; \
             netaccel daemon: open fds {} → {} ({:+}), threads {} → {} ({:+}), RSS {} → {} KiB ({:+})",
            self.lifecycles,
            self.failed,
            self.seconds,
            self.before.fds,
            self.after.fds,
            d(self.before.fds, self.after.fds),
            self.before.threads,
            self.after.threads,
            d(self.before.threads, self.after.threads),
            self.before.rss_kib,
            self.after.rss_kib,
            d(self.before.rss_kib, self.after.rss_kib),
        )
    }

    pub fn json(&self) -> Value {
        let usage = |u: &Usage| json!({"fds": u.fds, "threads": u.threads, "rss_kib": u.rss_kib});
        json!({
            "lifecycles": self.lifecycles,
            "failed": self.failed,
            "seconds": self.seconds,
            "before": usage(&self.before),
            "after": usage(&self.after),
            "samples": self.samples.iter().map(|(n, u)| json!({"done": n, "usage": usage(u)})).collect::<Vec<_>>(),
        })
    }
}

/// Waits until the daemon has let go of exited containers (their serving
/// threads end when the kernel reports the filter gone).
fn settled(daemon: &DaemonProcess) -> Result<Usage> {
    let mut last = Usage::of(daemon.pid())?;
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(100));
        let now = Usage::of(daemon.pid())?;
        if now.fds == last.fds && now.threads == last.threads {
            return Ok(now);
        }
        last = now;
    }
    Ok(last)
}

pub fn run(lab: &Lab, daemon: &DaemonProcess, s: &SoakSettings) -> Result<SoakResult> {
    let before = settled(daemon)?;
    let start = Instant::now();
    let script = format!(
        "/lab/labnet connect {} --bytes 1000 && /lab/labnet self-connect 0.0.0.0:{port} 127.0.0.1:{port}",
        s.echo,
        port = s.port
    );
    let every = (s.lifecycles / 10).max(1);
    let mut samples = Vec::new();
    let mut failed = 0;
    for i in 1..=s.lifecycles {
        let config = ContainerConfig {
            seccomp: Some(s.profile.clone()),
            ..Default::default()
        };
        let ok = Container::run(lab, config, &["sh", "-c", &script], Duration::from_secs(30))
            .map(|o| o.ok() && o.stdout.matches("\"echo_intact\":true").count() >= 2)
            .unwrap_or(false);
        if !ok {
            failed += 1;
        }
        if i % every == 0 {
            samples.push((i, Usage::of(daemon.pid())?));
            eprintln!("soak: {i}/{} lifecycles, {failed} failed", s.lifecycles);
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let after = settled(daemon)?;
    Ok(SoakResult {
        lifecycles: s.lifecycles,
        failed,
        seconds,
        before,
        after,
        samples,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_threads_and_rss() {
        let status = "Name:\tnetaccel\nVmRSS:\t   12345 kB\nThreads:\t7\n";
        assert_eq!(parse_status(status), Some((7, 12345)));
        assert_eq!(parse_status("Name:\tx\n"), None);
        let me = Usage::of(std::process::id()).expect("own usage");
        assert!(me.fds > 0 && me.threads > 0 && me.rss_kib > 0, "{me:?}");
    }
}
