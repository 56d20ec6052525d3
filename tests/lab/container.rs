//! A rootless runc container with slirp4netns (or pasta) networking, as a user runs it.
//!
//! The root filesystem is a small directory with the host's `/usr` bind-mounted
//! read-only (busybox, iperf3, util-linux come from there) and the lab's
//! binaries at `/lab`. The container has its own user, mount, pid, ipc, uts and
//! network namespaces; slirp4netns gives it `tap0` (10.0.2.100/24, gateway
//! 10.0.2.2 = host loopback; IPv6 fd00::100/64). Its process writes its exit
//! code to `/out/exit`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate::{run, wait_for, Lab};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The address slirp4netns gives the container.
pub const CONTAINER_ADDR: &str = "10.0.2.100";
/// slirp4netns's gateway, which forwards to the host's loopback.
pub const SLIRP_HOST_LOOPBACK: &str = "10.0.2.2";

/// The user-mode network stack that connects the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserNet {
    /// slirp4netns: tap0, 10.0.2.100/24, IPv6 fd00::100/64.
    Slirp4netns { mtu: u32 },
    /// pasta (passt): copies the host's addresses and routes.
    Pasta { mtu: u32 },
}

/// A port forwarded from the host into the container by the user-mode
/// stack: slirp4netns's `add_hostfwd` (from host loopback) or pasta's `-t`/`-u`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    /// "tcp" or "udp".
    pub proto: &'static str,
    pub host_port: u16,
    pub guest_port: u16,
}

impl UserNet {
    fn command(
        self,
        lab: &Lab,
        pid: u32,
        api_socket: Option<&std::path::Path>,
        forwards: &[Forward],
    ) -> Command {
        match self {
            UserNet::Slirp4netns { mtu } => {
                let mut cmd = lab.user_command("slirp4netns");
                cmd.args(["--configure", "--enable-ipv6", &format!("--mtu={mtu}")]);
                if let Some(api) = api_socket {
                    cmd.arg("--api-socket").arg(api);
                }
                cmd.arg(pid.to_string()).arg("tap0");
                cmd
            }
            UserNet::Pasta { mtu } => {
                let mut cmd = lab.user_command("pasta");
                cmd.args([
                    "--config-net",
                    "--foreground",
                    "--quiet",
                    "--mtu",
                    &mtu.to_string(),
                ])
                .args(["-T", "none", "-U", "none"]);
                for proto in ["tcp", "udp"] {
                    let flag = if proto == "tcp" { "-t" } else { "-u" };
                    let ports: Vec<String> = forwards
                        .iter()
                        .filter(|f| f.proto == proto)
                        .map(|f| format!("{}:{}", f.host_port, f.guest_port))
                        .collect();
                    if ports.is_empty() {
                        cmd.args([flag, "none"]);
                    }
                    for p in ports {
                        cmd.args([flag, &p]);
                    }
                }
                cmd.arg(pid.to_string());
                cmd
            }
        }
    }
}

/// How the lab asks the runtime to start the container.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Launch {
    /// `runc create`, the user-mode network, then `runc start` (what
    /// engines do; `runc create` exits once the container is created).
    #[default]
    CreateStart,
    /// `runc run` in the foreground: one runtime process for the
    /// container's whole life. The container's process waits for the
    /// user-mode network's default route before it runs.
    Run,
}

#[derive(Debug, Clone)]
pub struct ContainerConfig {
    /// `linux.seccomp` to install (e.g. from `netaccel profile`).
    pub seccomp: Option<Value>,
    pub net: UserNet,
    /// The OCI runtime the lab calls (an engine's view): runc, or a wrapper.
    pub runtime: PathBuf,
    /// Ports the user-mode stack forwards from the host.
    pub forwards: Vec<Forward>,
    pub launch: Launch,
}

impl Default for ContainerConfig {
    fn default() -> Self {
        Self {
            seccomp: None,
            net: UserNet::Slirp4netns { mtu: 65520 },
            runtime: PathBuf::from("runc"),
            forwards: Vec::new(),
            launch: Launch::default(),
        }
    }
}

pub struct Container<'a> {
    lab: &'a Lab,
    pub id: String,
    runc_root: PathBuf,
    runtime: PathBuf,
    bundle: PathBuf,
    /// The container's init in the host pid namespace.
    pub pid: u32,
    /// slirp4netns or pasta.
    user_net: Option<Child>,
    /// The foreground `runc run` of [`Launch::Run`].
    run: Option<Child>,
}

/// What a container's process left behind.
#[derive(Debug)]
pub struct RunOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl RunOutput {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// The last line of stdout as JSON (labnet's answer); panics with the
    /// whole output when it is not.
    pub fn last_json(&self) -> serde_json::Value {
        let line = self.stdout.lines().last().unwrap_or_default();
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
}

const CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_RAW",
    "CAP_NET_ADMIN",
    "CAP_SYS_ADMIN",
    "CAP_SYS_CHROOT",
    "CAP_AUDIT_WRITE",
];

impl<'a> Container<'a> {
    /// Runs `args` as the container's process and waits for it to exit.
    ///
    /// Each program runs as the init of its own container: Debian's runc
    /// 1.1.5 cannot `runc exec` into a rootless container that has a seccomp
    /// listener (its pidfd_getfd on the non-dumpable exec process fails
    /// with EPERM).
    pub fn run(lab: &'a Lab, config: ContainerConfig, args: &[&str], timeout: Duration) -> Result<RunOutput> {
        Self::start(lab, config, args)?.wait(timeout)
    }

    /// Creates and starts a container running `args`; see [`Container::wait`].
    pub fn start(lab: &'a Lab, config: ContainerConfig, args: &[&str]) -> Result<Self> {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let id = format!("lab{}-{n}", std::process::id());
        let bundle = lab.path().join(format!("bundle-{id}"));
        let rootfs = bundle.join("rootfs");
        for d in [
            "proc", "dev", "sys", "tmp", "usr", "lab", "etc", "run", "root", "out",
        ] {
            std::fs::create_dir_all(rootfs.join(d))?;
        }
        std::fs::create_dir_all(bundle.join("out"))?;
        for (link, target) in [
            ("bin", "usr/bin"),
            ("sbin", "usr/sbin"),
            ("lib", "usr/lib"),
            ("lib64", "usr/lib64"),
        ] {
            std::os::unix::fs::symlink(target, rootfs.join(link))?;
        }
        std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
        std::fs::write(rootfs.join("etc/group"), "root:x:0:\n")?;
        std::fs::write(rootfs.join("etc/hosts"), "127.0.0.1 localhost\n")?;
        chown_tree(lab, &bundle)?;

        run(lab
            .user_command("runc")
            .args(["spec", "--rootless", "--bundle"])
            .arg(&bundle))?;
        let spec_path = bundle.join("config.json");
        let mut spec: Value = serde_json::from_slice(&std::fs::read(&spec_path)?)?;
        customise(&mut spec, lab, &bundle, &config, args)?;
        std::fs::write(&spec_path, serde_json::to_vec_pretty(&spec)?)?;
        lab.chown(&spec_path)?;

        let runc_root = lab.runtime_dir().join("runc");
        let pid_file = bundle.join("init.pid");
        let stdout = std::fs::File::create(bundle.join("stdout"))?;
        let stderr = std::fs::File::create(bundle.join("stderr"))?;
        lab.chown(&bundle.join("stdout"))?;
        lab.chown(&bundle.join("stderr"))?;
        let mut runtime = lab.user_command(&config.runtime);
        runtime
            .arg("--root")
            .arg(&runc_root)
            .arg(match config.launch {
                Launch::CreateStart => "create",
                Launch::Run => "run",
            })
            .arg("--bundle")
            .arg(&bundle)
            .arg("--pid-file")
            .arg(&pid_file)
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        let mut container = Container {
            lab,
            id,
            runc_root,
            runtime: config.runtime.clone(),
            bundle: bundle.clone(),
            pid: 0,
            user_net: None,
            run: None,
        };
        match config.launch {
            Launch::CreateStart => {
                let mut child = runtime.spawn().context("running runc create")?;
                // Bounded: a runtime stuck on its seccomp agent fails the
                // test instead of hanging it.
                let waited = wait_for("runc create to finish", Duration::from_secs(60), || {
                    child.try_wait().ok().flatten()
                });
                let created = match waited {
                    Ok(status) => status,
                    Err(e) => {
                        let _ = child.kill();
                        let _ = child.wait();
                        let log = std::fs::read_to_string(bundle.join("stderr")).unwrap_or_default();
                        return Err(e.context(format!("runc create hangs: {}", log.trim())));
                    }
                };
                if !created.success() {
                    let log = std::fs::read_to_string(bundle.join("stderr")).unwrap_or_default();
                    anyhow::bail!("runc create failed ({created}): {}", log.trim());
                }
            }
            Launch::Run => {
                container.run = Some(runtime.spawn().context("running runc run")?);
                let run = container.run.as_mut().context("runc run child")?;
                // runc run writes the pid file between create and start.
                wait_for("runc run to write its pid file", Duration::from_secs(20), || {
                    if let Ok(Some(status)) = run.try_wait() {
                        return Some(Err(status));
                    }
                    std::fs::read_to_string(&pid_file)
                        .ok()
                        .filter(|p| !p.trim().is_empty())
                        .map(|_| Ok(()))
                })?
                .map_err(|status| {
                    let log = std::fs::read_to_string(bundle.join("stderr")).unwrap_or_default();
                    anyhow::anyhow!("runc run exited ({status}): {}", log.trim())
                })?;
            }
        }
        container.pid = std::fs::read_to_string(&pid_file)?.trim().parse()?;
        let api_socket = bundle.join("slirp.sock");
        let slirp = matches!(config.net, UserNet::Slirp4netns { .. });
        let api = (slirp && !config.forwards.is_empty()).then_some(api_socket.as_path());
        container.user_net = Some(
            config
                .net
                .command(lab, container.pid, api, &config.forwards)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(bundle.join("user-net.log"))?)
                .spawn()
                .with_context(|| format!("starting {:?}", config.net))?,
        );
        let route = format!("/proc/{}/net/route", container.pid);
        // A container started at once waits for the route itself, then may
        // run its command and exit before this poll looks (a busy machine
        // need not wake us every 20 ms): its exit file, written only after
        // it saw the route, says the route was there.
        let exit_file = bundle.join("out/exit");
        wait_for(
            "the user-mode network to configure a default route",
            Duration::from_secs(10),
            || {
                let routed = std::fs::read_to_string(&route).ok().is_some_and(|r| {
                    r.lines()
                        .skip(1)
                        .any(|l| l.split('\t').nth(1) == Some("00000000"))
                });
                (routed || (config.launch == Launch::Run && exit_file.exists())).then_some(())
            },
        )
        .with_context(|| {
            let log = std::fs::read_to_string(bundle.join("user-net.log")).unwrap_or_default();
            let exited = container
                .user_net
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            let alive = std::path::Path::new(&format!("/proc/{}", container.pid)).exists();
            format!(
                "{:?} (exited: {exited:?}; container pid {} alive: {alive}) said: {}",
                config.net,
                container.pid,
                log.trim()
            )
        })?;
        if api.is_some() {
            for f in &config.forwards {
                add_hostfwd(&api_socket, f)?;
            }
        }
        if config.launch == Launch::CreateStart {
            run(container.runc().args(["start", &container.id]))?;
        }
        Ok(container)
    }

    fn runc(&self) -> Command {
        let mut cmd = self.lab.user_command(&self.runtime);
        cmd.arg("--root").arg(&self.runc_root);
        cmd
    }

    /// Waits until the container's process prints a line containing
    /// `marker` (a server saying it listens) and returns that line.
    pub fn wait_for_line(&self, marker: &str, timeout: Duration) -> Result<String> {
        let stdout = self.bundle.join("stdout");
        wait_for(&format!("{marker:?} from container {}", self.id), timeout, || {
            std::fs::read_to_string(&stdout)
                .ok()?
                .lines()
                .find(|l| l.contains(marker))
                .map(str::to_owned)
        })
    }

    /// Waits until the container's process exits and returns its output.
    pub fn wait(mut self, timeout: Duration) -> Result<RunOutput> {
        let pidfd = rustix::process::pidfd_open(
            rustix::process::Pid::from_raw(self.pid as i32).context("bad pid")?,
            rustix::process::PidfdFlags::empty(),
        );
        if let Ok(pidfd) = pidfd {
            let mut fds = [rustix::event::PollFd::new(&pidfd, rustix::event::PollFlags::IN)];
            let t = rustix::event::Timespec::try_from(timeout).context("timeout")?;
            let ready = rustix::event::poll(&mut fds, Some(&t))?;
            anyhow::ensure!(
                ready == 1,
                "container {} still running after {timeout:?}: {}",
                self.id,
                std::fs::read_to_string(self.bundle.join("stderr")).unwrap_or_default()
            );
        }
        // `runc run` gives the container pipes and copies them to its own
        // stdout and stderr: the output is complete only once it exited,
        // which can be well after the container's process on a busy machine.
        if let Some(run) = self.run.as_mut() {
            wait_for("runc run to exit after its container", timeout, || {
                run.try_wait().ok().flatten()
            })?;
        }
        let read = |name: &str| std::fs::read_to_string(self.bundle.join(name)).unwrap_or_default();
        Ok(RunOutput {
            code: read("out/exit").trim().parse().ok(),
            stdout: read("stdout"),
            stderr: read("stderr"),
        })
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let _ = self
            .runc()
            .args(["delete", "--force", &self.id])
            .stderr(Stdio::null())
            .status();
        if let Some(mut s) = self.user_net.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
        if let Some(mut r) = self.run.take() {
            let _ = r.kill();
            let _ = r.wait();
        }
    }
}

/// Asks slirp4netns (over its API socket) to forward host loopback's port.
fn add_hostfwd(api: &std::path::Path, f: &Forward) -> Result<()> {
    use std::io::{Read, Write};
    wait_for("the slirp4netns API socket", Duration::from_secs(10), || {
        api.exists().then_some(())
    })?;
    let mut conn = std::os::unix::net::UnixStream::connect(api)
        .with_context(|| format!("connecting to slirp4netns at {}", api.display()))?;
    let req = json!({"execute": "add_hostfwd", "arguments": {
        "proto": f.proto, "host_addr": "127.0.0.1", "host_port": f.host_port, "guest_port": f.guest_port}});
    conn.write_all(req.to_string().as_bytes())?;
    conn.shutdown(std::net::Shutdown::Write)?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply)?;
    anyhow::ensure!(
        reply.contains("\"return\"") && !reply.contains("error"),
        "slirp4netns refused {f:?}: {reply}"
    );
    Ok(())
}

fn chown_tree(lab: &Lab, path: &std::path::Path) -> Result<()> {
    std::os::unix::fs::lchown(path, Some(lab.user.uid), Some(lab.user.gid))
        .with_context(|| format!("chown {}", path.display()))?;
    if path.is_dir() && !path.is_symlink() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(lab, &entry?.path())?;
        }
    }
    Ok(())
}

fn customise(
    spec: &mut Value,
    lab: &Lab,
    bundle: &std::path::Path,
    config: &ContainerConfig,
    args: &[&str],
) -> Result<()> {
    spec["root"] = json!({"path": "rootfs", "readonly": true});
    let process = &mut spec["process"];
    process["terminal"] = json!(false);
    // The exit code goes to /out/exit: nobody can wait(2) for a detached init.
    let script = match config.launch {
        Launch::CreateStart => "\"$@\"; echo $? > /out/exit",
        // Started at once: wait for the user-mode network's default route
        // (field 2 of /proc/net/route is the destination).
        Launch::Run => {
            "until grep -q '^[^\t]*\t00000000\t' /proc/net/route; do sleep 0.05; done; \"$@\"; echo $? > /out/exit"
        }
    };
    let mut argv = vec!["/bin/sh", "-c", script, "sh"];
    argv.extend_from_slice(args);
    process["args"] = json!(argv);
    process["env"] = json!(["PATH=/lab:/usr/bin:/usr/sbin", "HOME=/root"]);
    for set in ["bounding", "effective", "permitted", "ambient"] {
        process["capabilities"][set] = json!(CAPS);
    }
    spec["hostname"] = json!("lab");
    let mounts = spec["mounts"].as_array_mut().context("spec without mounts")?;
    mounts.push(json!({"destination": "/usr", "type": "bind", "source": "/usr",
        "options": ["rbind", "ro", "nosuid", "nodev"]}));
    mounts.push(
        json!({"destination": "/lab", "type": "bind", "source": lab.bin_dir(),
        "options": ["rbind", "ro", "nosuid", "nodev"]}),
    );
    mounts.push(
        json!({"destination": "/out", "type": "bind", "source": bundle.join("out"),
        "options": ["rbind", "rw", "nosuid", "nodev"]}),
    );
    mounts.push(json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
        "options": ["nosuid", "nodev", "mode=1777"]}));
    let linux = &mut spec["linux"];
    linux["namespaces"]
        .as_array_mut()
        .context("spec without namespaces")?
        .push(json!({"type": "network"}));
    if let Some(seccomp) = &config.seccomp {
        linux["seccomp"] = seccomp.clone();
    }
    Ok(())
}
