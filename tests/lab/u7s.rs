//! `u7s` as a user runs it, against a rootless engine of the lab: the
//! binary, a work directory, a node image context (the busybox rootfs plus
//! the entrypoint u7s ships; kindest/node cannot be pulled here) and the
//! checks of a node's shape that hold for every engine.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::Value;

use crate::{output_text, workspace_bin, Lab};

/// The base image the node image builds on, imported from a local rootfs.
pub const BASE: &str = "lab/busybox:1";
/// An address for HOST_IP that no real host uses (TEST-NET-1).
pub const HOST_IP: &str = "192.0.2.10";

#[derive(Clone)]
pub struct U7s<'a> {
    lab: &'a Lab,
    /// Global flags given before every subcommand (`--tenant N`).
    global: Vec<String>,
    bin: PathBuf,
    /// How u7s finds the engine (`DOCKER_HOST`, `CONTAINER_ENGINE`…).
    engine_env: Vec<(String, String)>,
    context: PathBuf,
    /// `HOST_IP` given to u7s; `None`: u7s detects it (a host of the
    /// multi-host lab has a default route on its LAN).
    host_ip: Option<&'static str>,
    pub work: PathBuf,
}

impl<'a> U7s<'a> {
    /// u7s for the lab user, with `engine_env` set on every run; the base
    /// image must be in the engine already.
    pub fn new(lab: &'a Lab, engine_env: &[(&str, String)]) -> Self {
        Self::with_context(lab, engine_env, node_context(lab, BASE, NODE_CMD))
    }

    /// u7s whose node image is built from `context` (see [`node_context`]),
    /// detecting `HOST_IP` from the host's default route.
    pub fn on_host(lab: &'a Lab, engine_env: &[(&str, String)], context: PathBuf) -> Self {
        let mut u = Self::with_context(lab, engine_env, context);
        u.host_ip = None;
        u
    }

    fn with_context(lab: &'a Lab, engine_env: &[(&str, String)], context: PathBuf) -> Self {
        let work = lab.path().join("cluster");
        std::fs::create_dir_all(&work).expect("work dir");
        lab.chown(&work).expect("chown");
        U7s {
            lab,
            bin: lab
                .install_bin(&workspace_bin("u7s").expect("u7s binary"))
                .expect("install"),
            engine_env: engine_env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
            context,
            global: Vec::new(),
            host_ip: Some(HOST_IP),
            work,
        }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = self.lab.user_command(&self.bin);
        cmd.envs(self.engine_env.iter().map(|(k, v)| (k, v)));
        if let Some(ip) = self.host_ip {
            cmd.env("HOST_IP", ip);
        }
        cmd.env("U7S_NODE_IMAGE_DIR", &self.context)
            .env("U7S_NETACCEL", self.lab.bin_dir().join("netaccel"))
            .current_dir(&self.work)
            .args(&self.global)
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    pub fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = self.command(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("run u7s")
    }

    /// Runs and requires success; returns stdout and stderr together.
    pub fn ok(&self, args: &[&str], env: &[(&str, &str)]) -> String {
        let o = self.run(args, env);
        let t = output_text(&o);
        assert!(o.status.success(), "u7s {args:?} failed: {t}");
        assert!(!t.contains("panicked"), "{t}");
        t
    }

    /// `shell` (the shipped entrypoint's kubelet flags, exit codes, stdin)
    /// and `kubeadm-init` stopping at this machine's boundary (no kubeadm
    /// in the test node) after writing the config for the default version;
    /// returns that config.
    pub fn check_shell_and_kubeadm_init(&self) -> String {
        let kubelet = self.ok(&["shell", "--", "cat", "/etc/default/kubelet"], &[]);
        assert!(
            kubelet.contains(&format!("--node-labels=u7s.io/host-ip={HOST_IP}")),
            "{kubelet}"
        );
        assert_eq!(
            self.run(&["shell", "--", "sh", "-c", "exit 3"], &[])
                .status
                .code(),
            Some(3)
        );
        let mut child = self
            .command(&["shell", "--", "sh", "-c", "read l; echo got:$l"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn");
        std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), b"hello\n").expect("write");
        drop(child.stdin.take());
        let o = child.wait_with_output().expect("wait");
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("got:hello"),
            "{}",
            output_text(&o)
        );

        // kubeadm-init stops at this machine's boundary (no kubeadm in the
        // test node) after writing the config for the default version.
        let o = self.run(&["kubeadm-init"], &[]);
        let t = output_text(&o);
        assert!(
            !o.status.success() && t.contains("kubeadm init --config /etc/u7s/kubeadm-config.yaml"),
            "{t}"
        );
        assert!(!t.contains("panicked"), "{t}");
        let cfg = self.ok(&["shell", "--", "cat", "/etc/u7s/kubeadm-config.yaml"], &[]);
        assert!(
            cfg.contains("apiVersion: kubeadm.k8s.io/v1beta4") && cfg.contains("kubernetesVersion: v1.35.0"),
            "{cfg}"
        );
        cfg
    }

    /// The same u7s for instance `n` beside the first on this host
    /// (`--tenant N` before every subcommand).
    pub fn tenant(&self, n: u8) -> Self {
        let mut u = self.clone();
        u.global = vec!["--tenant".into(), n.to_string()];
        u
    }

    /// Runs `script` with `sh` under the node's first process (the node
    /// image's job runner, see [`NODE_CMD`]) and waits up to `timeout` for
    /// it to end; returns its exit code and output. A script that starts a
    /// server with `&` leaves it running there.
    pub fn job(&self, script: &str, timeout: Duration) -> (i32, String) {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!("job{}", NEXT.fetch_add(1, Ordering::SeqCst));
        self.ok(
            &[
                "shell",
                "--",
                "sh",
                "-c",
                "printf '%s\\n' \"$1\" > /tmp/jobs/$2.part && mv /tmp/jobs/$2.part /tmp/jobs/$2.sh",
                "sh",
                script,
                &name,
            ],
            &[],
        );
        let tenths = (timeout.as_millis() / 100).to_string();
        let o = self.run(
            &[
                "shell",
                "--",
                "sh",
                "-c",
                "i=0; while [ ! -f /tmp/jobs/$1.rc ]; do i=$((i+1)); [ $i -le $2 ] || { echo \"job $1 still running\"; exit 124; }; sleep 0.1; done; cat /tmp/jobs/$1.out; exit $(cat /tmp/jobs/$1.rc)",
                "sh",
                &name,
                &tenths,
            ],
            &[],
        );
        (o.status.code().unwrap_or(-1), output_text(&o))
    }

    /// [`U7s::job`] that must succeed; returns its output.
    pub fn job_ok(&self, script: &str, timeout: Duration) -> String {
        let (rc, out) = self.job(script, timeout);
        assert_eq!(rc, 0, "job failed ({rc}): {script}\n{out}");
        out
    }

    /// The number of connections `u7s status` says the daemon bypassed.
    pub fn bypassed(&self, args: &[&str]) -> u64 {
        let st = self.ok(args, &[]);
        st.lines()
            .find_map(|l| l.split(" container(s), ").nth(1))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no bypass count in: {st}"))
    }
}

/// The test node's main process. It says it is up, then runs the node's
/// own services, like kubelet under the node's init: as descendants of the
/// container's first process (only those get the fast path's notify
/// listener from Debian's runc 1.1.5; processes of `u7s shell` do not).
/// - a fetch loop: the URL put into /tmp/fetch is fetched and the data's
///   sha256 written to /tmp/fetched;
/// - a job runner: every `/tmp/jobs/NAME.sh` is run by `sh`, its output
///   left in `NAME.out` and its exit code in `NAME.rc` (see [`U7s::job`]).
pub const NODE_CMD: &str = concat!(
    "echo u7s-test-node up; (",
    "while :; do if [ -f /tmp/fetch ]; then wget -q -O - $(cat /tmp/fetch) | sha256sum > /tmp/fetched.part; ",
    "mv /tmp/fetched.part /tmp/fetched; rm /tmp/fetch; fi; sleep 1; done",
    ") & mkdir -p /tmp/jobs; while :; do for j in /tmp/jobs/*.sh; do [ -f \"$j\" ] || continue; ",
    "mv \"$j\" \"$j.run\"; (sh \"$j.run\" > \"${j%.sh}.out\" 2>&1; echo $? > \"${j%.sh}.rc.part\"; ",
    "mv \"${j%.sh}.rc.part\" \"${j%.sh}.rc\") & done; sleep 0.1; done"
);

/// A node image context: `base` (an image of the engine, e.g. the busybox
/// rootfs with every applet linked) with the entrypoint u7s ships for the
/// real node image, running `cmd`.
pub fn node_context(lab: &Lab, base: &str, cmd: &str) -> PathBuf {
    let dir = lab.path().join("node-context");
    std::fs::create_dir_all(&dir).expect("context dir");
    let entrypoint =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../orchestrator/node-image/u7s-entrypoint.sh");
    std::fs::copy(&entrypoint, dir.join("u7s-entrypoint.sh")).expect("copy entrypoint");
    std::fs::write(
        dir.join("Dockerfile"),
        format!(
            "FROM {base}\n\
             RUN [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox mkdir -p /usr/bin /usr/local/bin && /bin/busybox --install -s /usr/bin\"]\n\
             COPY u7s-entrypoint.sh /usr/local/bin/u7s-entrypoint.sh\n\
             ENTRYPOINT [\"/usr/local/bin/u7s-entrypoint.sh\"]\n\
             CMD [\"sh\", \"-c\", {cmd}]\n",
            cmd = serde_json::Value::from(cmd)
        ),
    )
    .expect("Dockerfile");
    for p in [dir.clone(), dir.join("Dockerfile"), dir.join("u7s-entrypoint.sh")] {
        lab.chown(&p).expect("chown");
    }
    dir
}

/// The container's environment, `KEY=VALUE` each.
pub fn env_of(c: &Value) -> Vec<&str> {
    c["Config"]["Env"]
        .as_array()
        .map(|e| e.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// The node as the engine sees it matches the design.
pub fn assert_node_shape(c: &Value, node_name: &str, ports: [u16; 4], work: &Path) {
    let hc = &c["HostConfig"];
    assert_eq!(hc["Privileged"], true, "{hc}");
    assert_eq!(c["Config"]["Hostname"], node_name);
    assert_eq!(hc["RestartPolicy"]["Name"], "always");
    // Docker reports the sysctl, Podman's inspect does not (the flows read
    // it in the node too).
    if !hc["Sysctls"].is_null() {
        assert_eq!(hc["Sysctls"]["net.ipv4.ip_forward"], "1", "{hc}");
    }
    let [etcd, api, kubelet, flannel] = ports;
    for (key, port) in [
        (format!("{etcd}/tcp"), etcd),
        (format!("{api}/tcp"), api),
        (format!("{kubelet}/tcp"), kubelet),
        (format!("{flannel}/udp"), flannel),
    ] {
        assert_eq!(
            hc["PortBindings"][&key][0]["HostPort"],
            port.to_string(),
            "{key} in {}",
            hc["PortBindings"]
        );
    }
    let tmpfs: Vec<&str> = hc["Tmpfs"]
        .as_object()
        .map(|m| m.keys().map(String::as_str).collect())
        .unwrap_or_default();
    assert!(tmpfs.contains(&"/run") && tmpfs.contains(&"/tmp"), "{hc}");
    let mounts = c["Mounts"].as_array().expect("mounts");
    let find = |dst: &str| {
        mounts
            .iter()
            .find(|m| m["Destination"] == dst)
            .unwrap_or_else(|| panic!("no mount at {dst}: {mounts:?}"))
    };
    for dst in ["/var", "/opt", "/etc"] {
        assert_eq!(find(dst)["Type"], "volume", "{dst}");
    }
    let project = find("/u7s");
    assert_eq!(project["Type"], "bind");
    assert_eq!(project["RW"], false);
    assert_eq!(project["Source"], work.display().to_string());
    // Bound read-only where the host has them (this VM has no /lib/modules).
    for host_dir in ["/lib/modules", "/boot"] {
        if Path::new(host_dir).exists() {
            assert_eq!(find(host_dir)["RW"], false, "{host_dir}");
        } else {
            assert!(mounts.iter().all(|m| m["Destination"] != host_dir), "{host_dir}");
        }
    }
    let env = env_of(c);
    assert!(
        env.contains(&format!("U7S_HOST_IP={HOST_IP}").as_str()),
        "{env:?}"
    );
    let networks = c["NetworkSettings"]["Networks"].as_object().expect("networks");
    let (_, net) = networks.iter().next().expect("one network");
    let ip = net["IPAddress"].as_str().expect("ip");
    assert!(ip.ends_with(".100"), "node IP {ip}");
}

/// The first element of an engine's `inspect` answer (`None`: no such
/// container).
pub fn first_inspected(o: &Output) -> Option<Value> {
    if !o.status.success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&o.stdout).expect("inspect JSON");
    Some(v[0].clone())
}

pub fn port_is_held_tcp(port: u16) -> bool {
    std::net::TcpListener::bind(("0.0.0.0", port)).is_err()
}

pub fn port_is_held_udp(port: u16) -> bool {
    std::net::UdpSocket::bind(("0.0.0.0", port)).is_err()
}
