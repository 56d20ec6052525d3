//! A `netaccel daemon` running as the lab user in the host network namespace.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::{run, wait_for, Lab};

pub struct DaemonProcess {
    child: Child,
    pub socket: PathBuf,
    pub log: PathBuf,
    netaccel: PathBuf,
}

impl DaemonProcess {
    /// Starts `netaccel daemon --log-level debug` with `args` and waits until
    /// it listens.
    pub fn start(lab: &Lab, netaccel: &Path, args: &[&str]) -> Result<Self> {
        Self::start_logging(lab, netaccel, "debug", args)
    }

    /// Like [`DaemonProcess::start`] with another log level.
    pub fn start_logging(lab: &Lab, netaccel: &Path, log_level: &str, args: &[&str]) -> Result<Self> {
        let netaccel = lab.install_bin(netaccel)?;
        let socket = lab.runtime_dir().join("netaccel").join("netaccel.sock");
        let log = lab.path().join(format!(
            "netaccel-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_nanos()
        ));
        let log_file = std::fs::File::create(&log)?;
        let child = lab
            .user_command(&netaccel)
            .arg("daemon")
            .arg("--socket")
            .arg(&socket)
            .args(["--log-level", log_level])
            .args(args)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .context("starting netaccel daemon")?;
        let mut daemon = DaemonProcess {
            child,
            socket: socket.clone(),
            log,
            netaccel,
        };
        // Its socket may be a stale one of a daemon that was killed: the
        // log says when this one listens.
        wait_for("the daemon to listen", Duration::from_secs(10), || {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                return Some(Err(anyhow::anyhow!(
                    "daemon exited ({status}): {}",
                    daemon.log_text()
                )));
            }
            daemon
                .log_text()
                .contains("netaccel daemon listening")
                .then_some(Ok(()))
        })??;
        Ok(daemon)
    }

    /// Kills the daemon with SIGKILL, as a crash would, and reaps it.
    pub fn kill(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Stops the daemon with SIGTERM, as `systemctl stop` would, and waits
    /// until it has exited.
    pub fn terminate(&mut self) -> Result<()> {
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(self.child.id() as i32).context("bad pid")?,
            rustix::process::Signal::TERM,
        )?;
        wait_for("the daemon to exit on SIGTERM", Duration::from_secs(10), || {
            matches!(self.child.try_wait(), Ok(Some(_))).then_some(())
        })
    }

    /// The profile for a container, rendered by `netaccel profile`.
    pub fn profile(&self, lab: &Lab, ignore: &[&str]) -> Result<Value> {
        let mut cmd = lab.user_command(&self.netaccel);
        cmd.arg("profile").arg("--socket").arg(&self.socket);
        for cidr in ignore {
            cmd.args(["--ignore", cidr]);
        }
        Ok(serde_json::from_str(&run(&mut cmd)?)?)
    }

    /// The profile `netaccel profile ARGS` renders for this daemon.
    pub fn profile_with(&self, lab: &Lab, args: &[&str]) -> Result<Value> {
        let mut cmd = lab.user_command(&self.netaccel);
        cmd.arg("profile").arg("--socket").arg(&self.socket).args(args);
        Ok(serde_json::from_str(&run(&mut cmd)?)?)
    }

    /// Log lines with `message` that also contain every one of `fields`.
    pub fn count_log(&self, message: &str, fields: &[&str]) -> usize {
        self.log_text()
            .lines()
            .filter(|l| l.contains(message) && fields.iter().all(|f| l.contains(f)))
            .count()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Log lines that report a bypassed connect to `dst`.
    pub fn bypassed_to(&self, dst: &str) -> usize {
        self.count_log("connect bypassed to host socket", &[&format!("dst={dst}")])
    }

    /// Connects bypassed by containers that have exited, from the daemon's
    /// info-level summaries.
    pub fn bypassed_by_exited_containers(&self) -> u64 {
        self.log_text()
            .lines()
            .filter(|l| l.contains("container exited"))
            .filter_map(|l| log_field::<u64>(l, "bypassed"))
            .sum()
    }

    /// Mean daemon time per bypassed connect over the containers that have
    /// exited (weighted by their bypassed connects), and the install part of
    /// it, in µs, from the daemon's info-level summaries.
    pub fn bypass_timing_us(&self) -> Option<(f64, f64)> {
        let (mut n, mut total, mut install) = (0.0, 0.0, 0.0);
        for l in self.log_text().lines().filter(|l| l.contains("container exited")) {
            let (Some(b), Some(t), Some(i)) = (
                log_field::<f64>(l, "bypassed"),
                log_field::<f64>(l, "bypass_us"),
                log_field::<f64>(l, "install_us"),
            ) else {
                continue;
            };
            n += b;
            total += b * t;
            install += b * i;
        }
        (n > 0.0).then(|| (total / n, install / n))
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True while the daemon process is running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// How many notify fds the daemon's threads serve: its receiving threads
    /// are named `netaccel-N.I`, thread I of the Nth registered container
    /// or exec'd process.
    pub fn served_notify_fds(&self) -> Result<usize> {
        let tasks = PathBuf::from(format!("/proc/{}/task", self.child.id()));
        let mut served = std::collections::BTreeSet::new();
        for task in std::fs::read_dir(&tasks).with_context(|| format!("listing {}", tasks.display()))? {
            // A thread that ended between listing and reading is not serving.
            let comm = std::fs::read_to_string(task?.path().join("comm")).unwrap_or_default();
            if let Some(serial) = comm.trim().strip_prefix("netaccel-") {
                served.insert(serial.split('.').next().unwrap_or_default().to_owned());
            }
        }
        Ok(served.len())
    }
}

/// The value after ` NAME=` in a daemon log line.
fn log_field<T: std::str::FromStr>(line: &str, name: &str) -> Option<T> {
    line.split(&format!(" {name}="))
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
