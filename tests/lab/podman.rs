//! Rootless Podman for the lab user: Debian's podman 4.3 with its
//! configuration in the lab user's home (cgroupfs and runc: crun refuses this
//! machine's cgroup v1 layout; vfs storage inside the lab; file events, no
//! journal), and, when asked, its Docker-compatible API service
//! (`podman system service`) on a socket in the lab's runtime dir, as
//! `systemctl --user enable --now podman.socket` gives a user.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::docker::busybox_rootfs_tar;
use crate::{run, wait_for, Lab};

pub struct RootlessPodman<'a> {
    lab: &'a Lab,
    service: Option<Child>,
    socket: PathBuf,
    log: PathBuf,
}

impl<'a> RootlessPodman<'a> {
    /// Writes the user's containers.conf (with `runtimes`, name →
    /// executable, in `[engine.runtimes]`) and storage.conf.
    pub fn configure(lab: &'a Lab, runtimes: &[(&str, &Path)]) -> Result<Self> {
        let conf_dir = lab.path().join("home/.config/containers");
        std::fs::create_dir_all(&conf_dir)?;
        let store = lab.path().join("podman");
        std::fs::create_dir_all(&store)?;
        let mut containers = String::from(
            "[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nruntime = \"runc\"\n",
        );
        if !runtimes.is_empty() {
            containers.push_str("\n[engine.runtimes]\n");
            for (name, path) in runtimes {
                containers.push_str(&format!("{name} = [\"{}\"]\n", path.display()));
            }
        }
        std::fs::write(conf_dir.join("containers.conf"), containers)?;
        std::fs::write(
            conf_dir.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                store.join("root").display(),
                lab.runtime_dir().join("containers").display()
            ),
        )?;
        for p in [
            lab.path().join("home/.config"),
            conf_dir.clone(),
            conf_dir.join("containers.conf"),
            conf_dir.join("storage.conf"),
            store.clone(),
        ] {
            lab.chown(&p)?;
        }
        Ok(Self {
            lab,
            service: None,
            socket: lab.runtime_dir().join("podman/podman.sock"),
            log: store.join("service.log"),
        })
    }

    /// [`RootlessPodman::configure`], then the API service, waited for.
    pub fn serve(lab: &'a Lab, runtimes: &[(&str, &Path)]) -> Result<Self> {
        let mut podman = Self::configure(lab, runtimes)?;
        let dir = podman.socket.parent().context("socket dir")?.to_path_buf();
        std::fs::create_dir_all(&dir)?;
        lab.chown(&dir)?;
        let log = std::fs::File::create(&podman.log)?;
        let child = podman
            .cli()
            .args(["system", "service", "--time=0"])
            .arg(format!("unix://{}", podman.socket.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .context("starting podman system service")?;
        podman.service = Some(child);
        let socket = podman.socket.clone();
        wait_for("podman's API socket", Duration::from_secs(30), || {
            socket.exists().then_some(())
        })?;
        Ok(podman)
    }

    /// The podman CLI as the lab user (local mode: the same storage as the
    /// service).
    pub fn cli(&self) -> Command {
        self.lab.user_command("podman")
    }

    pub fn podman(&self, args: &[&str]) -> Result<Output> {
        self.cli()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running podman")
    }

    /// `unix://…` of the API service.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
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

impl Drop for RootlessPodman<'_> {
    fn drop(&mut self) {
        let _ = self.podman(&["rm", "--all", "--force", "--time", "0"]);
        if let Some(child) = &mut self.service {
            // SAFETY: signals the process group we created for the service.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
        }
        // Podman's pause process (it holds the user namespace) and the
        // conmon processes of finished execs (they linger for their
        // exit delay) name this lab's paths; nothing else does.
        let lab = self.lab.path().display().to_string();
        let pause = std::fs::read_to_string(self.lab.runtime_dir().join("libpod/tmp/pause.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok());
        if let Some(pid) = pause.filter(|p| *p > 1) {
            // SAFETY: the pause process Podman recorded for this lab.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = Command::new("pkill")
            .args(["-KILL", "-u", &self.lab.user.uid.to_string(), "-f", &lab])
            .status();
    }
}
