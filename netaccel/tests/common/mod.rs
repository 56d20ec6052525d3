//! A netaccel daemon of the test binary, with its sockets and log in a
//! directory of its own; killed when dropped.
// Each test binary that includes this module uses a part of it.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rootless_lab::wait_for;

pub struct Daemon {
    pub child: Child,
    /// Where runtimes register containers.
    pub socket: PathBuf,
    /// The bypass4netnsd-compatible API, when served; sockets it is asked
    /// for must lie in its directory.
    pub api: Option<PathBuf>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Daemon {
    /// `netaccel daemon` with `args`; with `api`, the bypass4netnsd API on
    /// a socket beside the daemon's (else `--no-api`). Returns once every
    /// socket listens.
    pub fn start(api: bool, args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("netaccel.sock");
        let api = api.then(|| dir.path().join("bypass4netnsd.sock"));
        let log = dir.path().join("daemon.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_netaccel"));
        cmd.arg("daemon").args(args).arg("--socket").arg(&socket);
        match &api {
            Some(path) => cmd.arg("--api-socket").arg(path),
            None => cmd.arg("--no-api"),
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start daemon");
        wait_for("the daemon to listen", Duration::from_secs(10), || {
            (socket.exists() && api.as_ref().is_none_or(|a| a.exists())).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
        Self {
            child,
            socket,
            api,
            log,
            _dir: dir,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The keeper's pid, once the daemon logged that it attached to it.
    pub fn keeper_pid(&self) -> u32 {
        wait_for(
            "the daemon to attach to its keeper",
            Duration::from_secs(10),
            || {
                let log = self.log();
                let line = log
                    .lines()
                    .find(|l| l.contains("attached to the keeper"))?
                    .to_owned();
                line.split("keeper=")
                    .nth(1)?
                    .split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse()
                    .ok()
            },
        )
        .unwrap_or_else(|e| panic!("{e}:\n{}", self.log()))
    }

    /// Open fds of the daemon and of its keeper, by pid.
    pub fn open_fds(&self, keeper: u32) -> Vec<(u32, usize)> {
        [self.child.id(), keeper]
            .into_iter()
            .map(|pid| {
                let n = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count);
                (pid, n)
            })
            .collect()
    }

    /// Waits until the log says `needle`.
    pub fn wait_log(&self, needle: &str) {
        wait_for("the daemon log", Duration::from_secs(10), || {
            self.log().contains(needle).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}: log never said {needle:?}:\n{}", self.log()));
    }

    /// The daemon still runs (`after`: what it was handed last, for the
    /// message).
    pub fn assert_alive(&mut self, after: &str) {
        assert!(
            matches!(self.child.try_wait(), Ok(None)),
            "daemon died after {after}:\n{}",
            self.log()
        );
    }

    /// No task of the daemon panicked, in its whole log so far.
    pub fn assert_no_panic(&self) {
        assert!(!self.log().contains("panicked"), "{}", self.log());
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
