//! A host of our own on a LAN: a network namespace ("the host") bridged to
//! a peer and a router, and a remote peer behind the router, all on this
//! machine. The host's default route goes through the router, so a
//! user-mode stack that copies the host's network (pasta) gives a
//! container the LAN's subnet, and the lab can check which destinations
//! the fast path takes: LAN peers, hosts behind the router, and what pasta
//! must keep (its gateway mapping, the container's own address).
//!
//! Run a [`Lab`](crate::Lab) inside the host with
//! [`Lab::in_netns`](crate::Lab::in_netns).

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result};

use crate::peer::Server;
use crate::run;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The namespaces and addresses of one LAN.
pub struct Lan {
    /// The host's namespace (`ip netns` name).
    pub host: String,
    pub peer: String,
    pub router: String,
    pub remote: String,
    /// 10.215.S.1/24 on the host's bridge.
    pub host_addr: Ipv4Addr,
    /// 10.215.S.2/24: another host on the LAN.
    pub peer_addr: Ipv4Addr,
    /// 10.215.S.254/24: the LAN's router, the host's default gateway.
    pub router_addr: Ipv4Addr,
    /// 10.216.S.2/24, behind the router.
    pub remote_addr: Ipv4Addr,
    names: Vec<String>,
}

impl Lan {
    /// Creates the four namespaces and their links (needs root).
    pub fn create() -> Result<Self> {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let s = ((std::process::id().wrapping_mul(13).wrapping_add(n)) % 250) as u8;
        let tag = format!("{}-{n}", std::process::id());
        let name = |role: &str| format!("u7slan-{role}-{tag}");
        let lan = Lan {
            host: name("host"),
            peer: name("peer"),
            router: name("router"),
            remote: name("remote"),
            host_addr: Ipv4Addr::new(10, 215, s, 1),
            peer_addr: Ipv4Addr::new(10, 215, s, 2),
            router_addr: Ipv4Addr::new(10, 215, s, 254),
            remote_addr: Ipv4Addr::new(10, 216, s, 2),
            names: [name("host"), name("peer"), name("router"), name("remote")].to_vec(),
        };
        for ns in &lan.names {
            run(Command::new("ip").args(["netns", "add", ns]))?;
            lan.ip(ns, "link set lo up")?;
        }
        let (h, p, r, q) = (&lan.host, &lan.peer, &lan.router, &lan.remote);
        lan.ip(h, "link add br0 type bridge")?;
        lan.ip(h, &format!("addr add {}/24 dev br0", lan.host_addr))?;
        lan.ip(h, "link set br0 up")?;
        // The peer and the router hang on the host's bridge.
        for (ns, ifname, addr) in [(p, "to-peer", lan.peer_addr), (r, "to-router", lan.router_addr)] {
            lan.ip(
                h,
                &format!("link add {ifname} type veth peer name lan0 netns {ns}"),
            )?;
            lan.ip(h, &format!("link set {ifname} master br0 up"))?;
            lan.ip(ns, &format!("addr add {addr}/24 dev lan0"))?;
            lan.ip(ns, "link set lan0 up")?;
        }
        lan.ip(h, &format!("route add default via {}", lan.router_addr))?;
        lan.ip(p, &format!("route add default via {}", lan.router_addr))?;
        // The router joins the remote's network and forwards.
        lan.ip(r, &format!("link add wan0 type veth peer name wan0 netns {q}"))?;
        lan.ip(r, &format!("addr add 10.216.{s}.1/24 dev wan0"))?;
        lan.ip(r, "link set wan0 up")?;
        lan.ip(q, &format!("addr add {}/24 dev wan0", lan.remote_addr))?;
        lan.ip(q, "link set wan0 up")?;
        lan.ip(q, &format!("route add default via 10.216.{s}.1"))?;
        run(Command::new("ip").args(["netns", "exec", r, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]))?;
        Ok(lan)
    }

    fn ip(&self, ns: &str, args: &str) -> Result<()> {
        run(Command::new("ip").args(["-n", ns]).args(args.split_whitespace()))
            .with_context(|| format!("ip -n {ns} {args}"))
            .map(|_| ())
    }

    /// A command that runs inside namespace `ns` (as root).
    pub fn command(&self, ns: &str, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, program]);
        cmd
    }

    /// Starts a long-running server in namespace `ns`; killed when dropped.
    pub fn spawn(&self, ns: &str, program: &str, args: &[&str]) -> Result<Server> {
        let child = self
            .command(ns, program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {program} in {ns}"))?;
        Ok(Server { child })
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in &self.names {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}
