//! A lab of real rootless containers on this machine, for end-to-end tests and
//! the benchmark.
//!
//! The orchestrating process runs as root (it creates peer hosts: network
//! namespaces joined by veth); everything a user would run — the netaccel
//! daemon, rootless runc, slirp4netns, the containers — runs as an
//! unprivileged user (`U7S_TEST_USER`, default `u7s-test`, created by
//! `init-host/init-host.root.sh`).

pub mod container;
pub mod daemon;
pub mod docker;
pub mod lan;
pub mod multihost;
pub mod peer;
pub mod podman;
pub mod prereq;
pub mod rootfs;
pub mod seccomp;
pub mod u7s;
pub mod user;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

pub use container::{Container, ContainerConfig};
pub use daemon::DaemonProcess;
pub use peer::PeerHost;
pub use user::LabUser;

/// One lab: a directory owned by the test user with the binaries the
/// containers run and the user's runtime dir.
pub struct Lab {
    pub user: LabUser,
    dir: tempfile::TempDir,
    /// The network namespace (`ip netns` name) every user process runs in;
    /// `None`: the machine's own.
    netns: Option<String>,
    /// A UTS namespace (a bind-mounted namespace file) every user process
    /// runs in, for a host name of its own; `None`: the machine's.
    uts: Option<PathBuf>,
}

impl Lab {
    /// A lab for `test`, or `None` (after printing why) when this machine
    /// lacks a prerequisite and we are not in CI. In CI it panics instead.
    pub fn new_or_skip(test: &str) -> Option<Lab> {
        Self::new_checked(test, prereq::check_lab)
    }

    /// Like [`Lab::new_or_skip`], for tests that also need rootless Docker.
    pub fn with_docker_or_skip(test: &str) -> Option<Lab> {
        Self::new_checked(test, prereq::check_docker)
    }

    /// Like [`Lab::new_or_skip`], for tests that also need rootless Podman.
    pub fn with_podman_or_skip(test: &str) -> Option<Lab> {
        Self::new_checked(test, prereq::check_podman)
    }

    /// Like [`Lab::with_docker_or_skip`], for the user `user` (a host of the
    /// multi-host lab runs its engine as a user of its own).
    pub fn with_docker_for_or_skip(test: &str, user: &str) -> Option<Lab> {
        let check = || {
            prereq::check_docker()?;
            LabUser::named(user)
                .map_err(|e| format!("{e} (init-host/init-host.root.sh creates the multi-host lab's users)"))
        };
        Self::new_checked(test, check)
    }

    fn new_checked(test: &str, check: impl FnOnce() -> Result<LabUser, String>) -> Option<Lab> {
        match check() {
            Ok(user) => match Lab::create(user) {
                Ok(lab) => Some(lab),
                Err(e) => panic!("{test}: creating the lab failed: {e:#}"),
            },
            Err(missing) => {
                prereq::skip_or_fail(test, &missing);
                None
            }
        }
    }

    fn create(user: LabUser) -> Result<Lab> {
        let dir = tempfile::Builder::new().prefix("u7s-lab-").tempdir_in("/tmp")?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        for sub in ["bin", "run", "home"] {
            std::fs::create_dir(dir.path().join(sub))?;
        }
        std::fs::set_permissions(dir.path().join("run"), std::fs::Permissions::from_mode(0o700))?;
        let lab = Lab {
            user,
            dir,
            netns: None,
            uts: None,
        };
        lab.chown(lab.dir.path())?;
        for sub in ["bin", "run", "home"] {
            lab.chown(&lab.dir.path().join(sub))?;
        }
        Ok(lab)
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The user's XDG_RUNTIME_DIR for this lab.
    pub fn runtime_dir(&self) -> PathBuf {
        self.path().join("run")
    }

    /// Where binaries copied with [`Lab::install_bin`] live (also mounted
    /// read-only at `/lab` in containers).
    pub fn bin_dir(&self) -> PathBuf {
        self.path().join("bin")
    }

    pub fn chown(&self, path: &Path) -> Result<()> {
        std::os::unix::fs::chown(path, Some(self.user.uid), Some(self.user.gid))
            .with_context(|| format!("chown {} to {}", path.display(), self.user.name))
    }

    /// Copies a binary where the test user can run it (the build directory
    /// may sit under a home the user cannot enter).
    pub fn install_bin(&self, src: &Path) -> Result<PathBuf> {
        let name = src.file_name().context("binary without a file name")?;
        let dst = self.bin_dir().join(name);
        // Copied by a child process: a write fd opened here could leak into a
        // process another test thread forks meanwhile, and exec of the copy
        // would then fail with ETXTBSY.
        run(Command::new("install").args(["-m", "0755"]).arg(src).arg(&dst))?;
        Ok(dst)
    }

    /// A labnet server (`serve ADDR`, `udp-echo ADDR`…) on the host, run as
    /// the test user from [`Lab::bin_dir`]; returns it and the address it
    /// printed. Killed when dropped.
    pub fn labnet_server(&self, args: &[&str]) -> Result<(peer::Server, String)> {
        let mut server = self
            .user_command(self.bin_dir().join("labnet"))
            .args(args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .map(|child| peer::Server { child })
            .with_context(|| format!("starting labnet {args:?} on the host"))?;
        let addr = server.listening()?;
        Ok((server, addr))
    }

    /// Runs every user process of this lab (daemon, runtime, user-mode
    /// stack, servers) in the network namespace `netns` (`ip netns` name),
    /// as on another machine: see [`lan::Lan`].
    pub fn in_netns(mut self, netns: &str) -> Self {
        self.netns = Some(netns.to_owned());
        self
    }

    /// Runs every user process of this lab as on a host of its own: in the
    /// network namespace `netns` and the UTS namespace `uts` (its host
    /// name), see [`multihost::HostLan`].
    pub fn on_host(mut self, netns: &str, uts: &Path) -> Self {
        self.netns = Some(netns.to_owned());
        self.uts = Some(uts.to_owned());
        self
    }

    /// A command that runs as the test user, with a clean environment (in
    /// the lab's network and UTS namespaces, if it has them).
    pub fn user_command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = match &self.netns {
            // nsenter enters as root, then becomes the user.
            Some(ns) => {
                let mut cmd = Command::new("nsenter");
                cmd.arg(format!("--net=/run/netns/{ns}"));
                if let Some(uts) = &self.uts {
                    cmd.arg(format!("--uts={}", uts.display()));
                }
                cmd.args(["--setuid", &self.user.uid.to_string()])
                    .args(["--setgid", &self.user.gid.to_string()])
                    .arg("--")
                    .arg(program);
                cmd
            }
            None => {
                let mut cmd = Command::new(program);
                cmd.uid(self.user.uid).gid(self.user.gid);
                cmd
            }
        };
        cmd.env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
            .env("HOME", self.path().join("home"))
            .env("USER", &self.user.name)
            .env("XDG_RUNTIME_DIR", self.runtime_dir())
            .current_dir(self.path());
        cmd
    }
}

use std::os::unix::process::CommandExt;

/// A binary of this workspace, built next to the running test or bench.
pub fn workspace_bin(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().context("executable without a directory")?;
    if dir.ends_with("deps") || dir.ends_with("examples") {
        dir = dir.parent().context("deps without a parent")?;
    }
    let bin = dir.join(name);
    anyhow::ensure!(
        bin.is_file(),
        "{} is missing: build it first (cargo build --workspace --bins, same profile)",
        bin.display()
    );
    Ok(bin)
}

/// A finished command's stdout followed by its stderr, for assertion messages.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// One HTTP/1.1 request over a unix socket (the bypass4netnsd API);
/// returns the status code (0 when none came) and the body.
pub fn unix_http(socket: &Path, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket)
        .with_context(|| format!("connecting to {}", socket.display()))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: bypass4netnsd\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Runs a command and returns its stdout, failing with its stderr.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("spawning {cmd:?}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim(),
        String::from_utf8_lossy(&out.stdout).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Polls `probe` every 20 ms until it yields or `timeout` passes.
pub fn wait_for<T>(
    what: &str,
    timeout: std::time::Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Result<T> {
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = probe() {
            return Ok(v);
        }
        anyhow::ensure!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
