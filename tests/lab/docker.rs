//! Rootless Docker for the lab user: Debian's docker.io started with
//! `dockerd-rootless.sh` (rootlesskit + slirp4netns), its state inside the
//! lab, images imported from a local rootfs (no registry is reachable).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::{run, wait_for, Lab};

pub const DOCKERD_ROOTLESS: &str = "/usr/share/docker.io/contrib/dockerd-rootless.sh";
/// The CLI that comes with the engine (another docker CLI may be first on PATH).
pub const DOCKER_CLI: &str = "/usr/bin/docker";

pub struct RootlessDocker<'a> {
    lab: &'a Lab,
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl<'a> RootlessDocker<'a> {
    /// Starts dockerd for the lab user with `runtimes` (name → executable)
    /// registered in its daemon.json, and waits for its API socket.
    pub fn start(lab: &'a Lab, runtimes: &[(&str, &Path)]) -> Result<Self> {
        let dir = lab.path().join("docker");
        std::fs::create_dir_all(dir.join("data"))?;
        let runtimes: serde_json::Map<String, serde_json::Value> = runtimes
            .iter()
            .map(|(name, path)| (name.to_string(), serde_json::json!({ "path": path })))
            .collect();
        // vfs: overlayfs in a user namespace is not available on every kernel.
        let config = serde_json::json!({ "runtimes": runtimes, "storage-driver": "vfs" });
        std::fs::write(dir.join("daemon.json"), config.to_string())?;
        for p in [dir.clone(), dir.join("data"), dir.join("daemon.json")] {
            lab.chown(&p)?;
        }
        let socket = lab.runtime_dir().join("docker.sock");
        let log = dir.join("dockerd.log");
        let log_file = std::fs::File::create(&log)?;
        let child = lab
            .user_command(DOCKERD_ROOTLESS)
            .env(
                "PATH",
                "/usr/share/docker.io/contrib:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--config-file")
            .arg(dir.join("daemon.json"))
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            // Its own process group, so teardown reaches rootlesskit's children.
            .process_group(0)
            .spawn()
            .context("starting dockerd-rootless.sh")?;
        let mut docker = RootlessDocker {
            lab,
            child,
            socket,
            log,
        };
        wait_for(
            "rootless dockerd to serve its API",
            Duration::from_secs(60),
            || {
                if let Ok(Some(status)) = docker.child.try_wait() {
                    return Some(Err(anyhow::anyhow!(
                        "dockerd-rootless.sh exited ({status}): {}",
                        docker.log_text()
                    )));
                }
                docker
                    .cli()
                    .arg("info")
                    .output()
                    .ok()
                    .filter(|o| o.status.success())
                    .map(|_| Ok(()))
            },
        )??;
        Ok(docker)
    }

    /// The docker CLI pointed at this engine.
    pub fn cli(&self) -> Command {
        let mut cmd = self.lab.user_command(DOCKER_CLI);
        cmd.env("DOCKER_HOST", format!("unix://{}", self.socket.display()));
        cmd
    }

    pub fn docker(&self, args: &[&str]) -> Result<Output> {
        self.cli()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running docker")
    }

    /// Imports a busybox-only root filesystem as image `name`.
    pub fn import_busybox(&self, name: &str) -> Result<()> {
        let tar = busybox_rootfs_tar(self.lab)?;
        run(self.cli().arg("import").arg(&tar).arg(name))?;
        Ok(())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for RootlessDocker<'_> {
    fn drop(&mut self) {
        let group = -(self.child.id() as i32);
        // SAFETY: signals the process group we created for dockerd.
        unsafe { libc::kill(group, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // SAFETY: as above; whatever is left of the group is killed.
        unsafe { libc::kill(group, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// A tarball of a busybox-only root filesystem (an image without a
/// registry), owned by the lab user.
pub fn busybox_rootfs_tar(lab: &Lab) -> Result<PathBuf> {
    let tar = lab.path().join("image-rootfs.tar");
    if tar.exists() {
        return Ok(tar);
    }
    crate::rootfs::Rootfs::busybox(
        &lab.path().join("image-rootfs"),
        &["sh", "wget", "sha256sum", "unshare", "echo", "cat"],
    )?
    .tar(lab, &tar)?;
    Ok(tar)
}
