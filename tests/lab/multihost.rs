//! Several hosts on one machine, for what a multi-host cluster needs from
//! u7s and netaccel below Kubernetes. Each host is a network namespace with
//! an address on a shared LAN (a bridge in a "switch" namespace) and a
//! default route there, a UTS namespace with a host name of its own, and an
//! unprivileged user of its own ([`HOST_USERS`]) running its own rootless
//! Docker (dockerd-rootless.sh: rootlesskit + slirp4netns) inside it —
//! exactly as on separate machines. On each, `u7s` brings up a node from
//! [`node_rootfs_tar`]'s image: busybox plus iproute2, etcd, iperf3, ethtool
//! and labnet, so the lab can build what Flannel builds (a VXLAN device on
//! the published UDP port, pods in nested namespaces) and run the control
//! plane's traffic across hosts.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::docker::RootlessDocker;
use crate::rootfs::Rootfs;
use crate::u7s::{node_context, U7s, NODE_CMD};
use crate::user::HOST_USERS;
use crate::{run, workspace_bin, Lab};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The image the lab's nodes build on (see [`node_rootfs_tar`]).
pub const NODE_BASE: &str = "lab/node-base:1";
/// Runs the rest of a node's command line in its pod's network namespace
/// (nsenter: `ip netns exec` remounts /sys, which a rootless node may not).
pub const IN_POD: &str = "nsenter --net=/run/netns/pod";
/// Where the rules file u7s ships for the real node image lives there.
const FLANNEL_RULES: &str = "90-u7s-flannel.rules";

/// One host: its namespaces, name and LAN address.
pub struct HostNs {
    /// `a`, `b`, `c`…
    pub letter: char,
    /// Its network namespace (`ip netns` name).
    pub netns: String,
    /// Its UTS namespace (a bind-mounted namespace file).
    pub uts: PathBuf,
    /// `lab-a`…: u7s names the node `u7s-lab-a` and derives its node
    /// subnet from this name.
    pub hostname: String,
    /// Its address on the LAN, the source of its default route: the
    /// `HOST_IP` u7s detects.
    pub addr: Ipv4Addr,
}

/// A LAN of hosts; every namespace is removed when dropped.
pub struct HostLan {
    switch: String,
    pub hosts: Vec<HostNs>,
    /// The LAN's gateway (the switch's own address; it forwards nothing).
    pub gateway: Ipv4Addr,
}

impl HostLan {
    /// Creates `n` hosts (at most 3, one per [`HOST_USERS`]) on a new LAN
    /// (needs root).
    pub fn create(n: usize) -> Result<Self> {
        anyhow::ensure!((1..=HOST_USERS.len()).contains(&n), "1 to 3 hosts");
        let k = NEXT.fetch_add(1, Ordering::SeqCst);
        let s = ((std::process::id().wrapping_mul(11).wrapping_add(k)) % 250) as u8;
        let tag = format!("{}-{k}", std::process::id());
        let mut lan = HostLan {
            switch: format!("u7smh-sw-{tag}"),
            hosts: Vec::new(),
            gateway: Ipv4Addr::new(10, 217, s, 254),
        };
        let uts_dir = Path::new("/run/u7s-lab-uts");
        std::fs::create_dir_all(uts_dir)?;
        run(Command::new("ip").args(["netns", "add", &lan.switch]))?;
        ip(&lan.switch, "link set lo up")?;
        ip(&lan.switch, "link add br0 type bridge")?;
        ip(&lan.switch, &format!("addr add {}/24 dev br0", lan.gateway))?;
        ip(&lan.switch, "link set br0 up")?;
        for i in 0..n {
            let letter = (b'a' + i as u8) as char;
            let host = HostNs {
                letter,
                netns: format!("u7smh-{letter}-{tag}"),
                uts: uts_dir.join(format!("{letter}-{tag}")),
                hostname: format!("lab-{letter}"),
                addr: Ipv4Addr::new(10, 217, s, 10 + i as u8),
            };
            run(Command::new("ip").args(["netns", "add", &host.netns]))?;
            // Pushed before it is complete, so a failure below still removes it.
            lan.hosts.push(host);
            let host = lan.hosts.last().context("just pushed")?;
            std::fs::File::create(&host.uts)?;
            run(Command::new("unshare")
                .arg(format!("--uts={}", host.uts.display()))
                .args(["hostname", &host.hostname]))?;
            let port = format!("sw-{letter}");
            ip(
                &lan.switch,
                &format!("link add {port} type veth peer name eth0 netns {}", host.netns),
            )?;
            ip(&lan.switch, &format!("link set {port} master br0 up"))?;
            ip(&host.netns, "link set lo up")?;
            ip(&host.netns, &format!("addr add {}/24 dev eth0", host.addr))?;
            ip(&host.netns, "link set eth0 up")?;
            ip(&host.netns, &format!("route add default via {}", lan.gateway))?;
        }
        Ok(lan)
    }
}

impl Drop for HostLan {
    fn drop(&mut self) {
        for h in &self.hosts {
            let _ = Command::new("umount").arg(&h.uts).status();
            let _ = std::fs::remove_file(&h.uts);
            let _ = Command::new("ip").args(["netns", "del", &h.netns]).status();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.switch]).status();
    }
}

fn ip(ns: &str, args: &str) -> Result<()> {
    run(Command::new("ip").args(["-n", ns]).args(args.split_whitespace()))
        .with_context(|| format!("ip -n {ns} {args}"))
        .map(|_| ())
}

/// The hosts' LAN and one lab (user, directory, runtime dir) per host.
pub struct MultiHost {
    pub lan: HostLan,
    labs: Vec<Lab>,
}

impl MultiHost {
    /// `n` hosts, or `None` (after printing why) when this machine lacks a
    /// prerequisite and we are not in CI; in CI it panics instead.
    pub fn create_or_skip(test: &str, n: usize) -> Option<Self> {
        let mut labs = Vec::new();
        for user in &HOST_USERS[..n] {
            labs.push(Lab::with_docker_for_or_skip(test, user)?);
        }
        let lan = HostLan::create(n).unwrap_or_else(|e| panic!("{test}: creating the LAN failed: {e:#}"));
        let labs = labs
            .into_iter()
            .zip(&lan.hosts)
            .map(|(lab, h)| lab.on_host(&h.netns, &h.uts))
            .collect();
        Some(MultiHost { lan, labs })
    }

    /// Starts every host's engine (with netaccel registered as runtime
    /// `netaccel`, for `u7s up --accel`), imports the node base image and
    /// prepares u7s there.
    pub fn start(&self) -> Result<Vec<LabHost<'_>>> {
        let mut hosts = Vec::new();
        for (lab, ns) in self.labs.iter().zip(&self.lan.hosts) {
            let netaccel = lab.install_bin(&workspace_bin("netaccel")?)?;
            let wrapper = lab.bin_dir().join("netaccel-runc");
            std::os::unix::fs::symlink(&netaccel, &wrapper)?;
            lab.install_bin(&workspace_bin("labnet")?)?;
            let docker = RootlessDocker::start(lab, &[("netaccel", &wrapper)])
                .with_context(|| format!("rootless Docker on host {}", ns.hostname))?;
            let tar = node_rootfs_tar(lab)?;
            run(docker.cli().arg("import").arg(&tar).arg(NODE_BASE))?;
            let context = node_context(lab, NODE_BASE, NODE_CMD);
            let u = U7s::on_host(
                lab,
                &[(
                    "DOCKER_HOST",
                    format!("unix://{}", lab.runtime_dir().join("docker.sock").display()),
                )],
                context,
            );
            hosts.push(LabHost { ns, lab, docker, u });
        }
        Ok(hosts)
    }

    /// Tears the lab down once every [`LabHost`] was dropped, and returns
    /// what it leaked: processes the hosts' users still have `grace` later
    /// (`user: pid command` each; the grace lets the netaccel keeper see its
    /// last container go), then namespaces still there after removal.
    pub fn teardown(self, grace: Duration) -> Vec<String> {
        let deadline = std::time::Instant::now() + grace;
        let mut left = loop {
            let left: Vec<String> = self
                .labs
                .iter()
                .flat_map(|lab| {
                    let out = Command::new("pgrep")
                        .args(["-a", "-u", &lab.user.name])
                        .output()
                        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                        .unwrap_or_default();
                    out.lines()
                        .map(|l| format!("{}: {l}", lab.user.name))
                        .collect::<Vec<_>>()
                })
                .collect();
            if left.is_empty() || std::time::Instant::now() > deadline {
                break left;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let mut names: Vec<String> = self.lan.hosts.iter().map(|h| h.netns.clone()).collect();
        names.push(self.lan.switch.clone());
        let uts: Vec<PathBuf> = self.lan.hosts.iter().map(|h| h.uts.clone()).collect();
        drop(self);
        let listed = run(Command::new("ip").args(["netns", "list"])).unwrap_or_default();
        left.extend(
            names
                .into_iter()
                .filter(|n| listed.split_whitespace().any(|w| w == n))
                .map(|n| format!("network namespace {n}")),
        );
        left.extend(
            uts.into_iter()
                .filter(|p| p.exists())
                .map(|p| format!("UTS namespace file {}", p.display())),
        );
        left
    }
}

impl Drop for MultiHost {
    fn drop(&mut self) {
        // Whatever a failed test left behind, so the next lab starts clean.
        for lab in &self.labs {
            let _ = Command::new("pkill")
                .args(["-KILL", "-u", &lab.user.name])
                .status();
        }
    }
}

/// One host at work: its namespaces, lab, engine and u7s.
pub struct LabHost<'a> {
    pub ns: &'a HostNs,
    pub lab: &'a Lab,
    pub docker: RootlessDocker<'a>,
    pub u: U7s<'a>,
}

impl LabHost<'_> {
    /// Runs `sh -c script` in the node (`u7s shell`), which must succeed.
    pub fn shell(&self, script: &str) -> String {
        self.u.ok(&["shell", "--", "sh", "-c", script], &[])
    }

    /// `program` run as root on this host (in its network namespace), to
    /// look at it from outside the user's processes (`ss -p`…).
    pub fn root_command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns.netns, program]);
        cmd
    }

    /// Runs `args` as this host's user in its namespaces (a process on the
    /// host itself, outside the engine).
    pub fn host_command(&self, program: &str, args: &[&str]) -> Result<String> {
        run(self.lab.user_command(program).args(args))
    }

    /// The netaccel daemon u7s started for this host, stopped (it and its
    /// keeper outlive `u7s down` by design).
    pub fn stop_netaccel(&self) {
        let pid_file = self.lab.runtime_dir().join("netaccel/netaccel.pid");
        if let Some(pid) = std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            // SAFETY: signals the daemon u7s started for this host's user.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }
}

impl Drop for LabHost<'_> {
    fn drop(&mut self) {
        let _ = self.u.run(&["down", "-v"], &[]);
        self.stop_netaccel();
    }
}

/// Pod `index` of the lab's Flannel layout: subnet 10.244.INDEX.0/24, its
/// VTEP address 10.244.INDEX.0 with a fixed MAC, the pod at .2 behind the
/// node's veth at .1.
#[derive(Clone, Copy, Debug)]
pub struct PodNet {
    pub index: u8,
    /// The host the other nodes send this node's VXLAN packets to.
    pub host_ip: Ipv4Addr,
}

impl PodNet {
    pub fn pod_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, self.index, 2)
    }

    fn vtep(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, self.index, 0)
    }

    fn mac(&self) -> String {
        format!("02:44:00:00:00:{:02x}", self.index)
    }

    /// The script that builds in a node what Flannel's VXLAN backend builds
    /// with `public-ip-overwrite`: `flannel.1` on the published UDP `port`,
    /// the node's VTEP address, and for every peer a neighbour entry, an FDB
    /// entry aiming at the peer's host IP and a route to its pod subnet;
    /// plus a pod (network namespace `pod`) the way the CNI bridge plugin
    /// wires one, and the masquerade of pod traffic leaving the pod network
    /// (Flannel's `ip-masq`).
    pub fn flannel_script(&self, port: u16, peers: &[PodNet]) -> String {
        let mut s = format!(
            "set -e\n\
             /usr/sbin/ip link add flannel.1 type vxlan id 1 dev eth0 dstport {port} nolearning\n\
             /usr/sbin/ip link set flannel.1 address {mac} mtu 1450\n\
             /usr/sbin/ip addr add {vtep}/32 dev flannel.1\n\
             /usr/sbin/ip link set flannel.1 up\n\
             /usr/sbin/ip netns del pod 2>/dev/null || true\n\
             /usr/sbin/ip netns add pod\n\
             /usr/sbin/ip link add veth-pod mtu 1450 type veth peer name eth0 mtu 1450 netns pod\n\
             /usr/sbin/ip addr add 10.244.{i}.1/24 dev veth-pod\n\
             /usr/sbin/ip link set veth-pod up\n\
             {IN_POD} /usr/sbin/ip link set lo up\n\
             {IN_POD} /usr/sbin/ip addr add {pod}/24 dev eth0\n\
             {IN_POD} /usr/sbin/ip link set eth0 up\n\
             {IN_POD} /usr/sbin/ip route add default via 10.244.{i}.1\n\
             /usr/sbin/iptables -t nat -A POSTROUTING -s 10.244.0.0/16 ! -d 10.244.0.0/16 -j MASQUERADE\n",
            mac = self.mac(),
            vtep = self.vtep(),
            i = self.index,
            pod = self.pod_ip(),
        );
        for p in peers.iter().filter(|p| p.index != self.index) {
            s.push_str(&format!(
                "/usr/sbin/ip neigh replace {vtep} lladdr {mac} dev flannel.1 nud permanent\n\
                 /usr/sbin/bridge fdb append {mac} dev flannel.1 dst {host}\n\
                 /usr/sbin/ip route replace 10.244.{i}.0/24 via {vtep} dev flannel.1 onlink\n",
                vtep = p.vtep(),
                mac = p.mac(),
                host = p.host_ip,
                i = p.index,
            ));
        }
        s
    }
}

/// The command of the udev rule u7s ships for `flannel.1` (what the real
/// node runs when Flannel creates the device); the lab's node has no udev
/// and runs it itself.
pub fn flannel_rule_command() -> Result<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../orchestrator/node-image")
        .join(FLANNEL_RULES);
    let rules = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    rules
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.split("RUN+=\"").nth(1))
        .and_then(|r| r.strip_suffix('"'))
        .map(|cmd| {
            cmd.strip_prefix("/bin/sh -c ")
                .unwrap_or(cmd)
                .trim_matches('\'')
                .to_owned()
        })
        .with_context(|| format!("no RUN command in {}", path.display()))
}

/// A tarball of the lab nodes' root filesystem: busybox, and this machine's
/// iproute2 (`ip`, `bridge`), iptables (nft), ethtool, etcd, etcdctl,
/// iperf3 and labnet with their libraries.
pub fn node_rootfs_tar(lab: &Lab) -> Result<PathBuf> {
    let tar = lab.path().join("node-rootfs.tar");
    if tar.exists() {
        return Ok(tar);
    }
    let mut fs = Rootfs::busybox(&lab.path().join("node-rootfs"), &["sh"])?;
    for bin in [
        "/usr/sbin/ip",
        "/usr/sbin/bridge",
        "/usr/sbin/ethtool",
        "/usr/bin/etcd",
        "/usr/bin/etcdctl",
        "/usr/bin/iperf3",
    ] {
        fs.binary(Path::new(bin), None)?;
    }
    fs.binary(&workspace_bin("labnet")?, Some("/usr/local/bin/labnet"))?;
    // iptables (the nft backend; it loads its matches and targets by name).
    fs.binary(Path::new("/usr/sbin/xtables-nft-multi"), None)?
        .symlink("xtables-nft-multi", "/usr/sbin/iptables")?
        .directory(Path::new(XTABLES_DIR))?;
    fs.tar(lab, &tar)?;
    Ok(tar)
}

const XTABLES_DIR: &str = "/usr/lib/x86_64-linux-gnu/xtables";

/// How long a step in a node may take on a loaded 2-core machine.
pub const STEP: Duration = Duration::from_secs(60);
