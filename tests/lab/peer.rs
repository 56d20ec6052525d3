//! A peer host: a network namespace joined to the host namespace by a veth
//! pair. Servers run there, so every test connection stays on this machine
//! and reaches a non-loopback address (loopback is never bypassed).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result};

use crate::run;

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct PeerHost {
    netns: String,
    /// The peer's address; the host side is `.1` of the same /30.
    pub addr: Ipv4Addr,
    pub host_addr: Ipv4Addr,
    /// The /30 joining host and peer.
    pub subnet: String,
    /// The peer's IPv6 address (host side `::1` of the same /64), when the
    /// machine has IPv6.
    pub addr6: Option<Ipv6Addr>,
}

impl PeerHost {
    /// Creates the namespace and link (needs root).
    pub fn create() -> Result<Self> {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let slot = (std::process::id().wrapping_mul(7).wrapping_add(n)) % 16_000;
        let netns = format!("u7slab-{}-{n}", std::process::id());
        // 250 x 64 /30 networks inside 10.213.0.0/16.
        let (third, fourth) = ((slot / 64) as u8, ((slot % 64) * 4) as u8);
        let host_addr = Ipv4Addr::new(10, 213, third, fourth + 1);
        let addr = Ipv4Addr::new(10, 213, third, fourth + 2);
        let host_if = format!("u7h{slot}");
        let peer_if = format!("u7p{slot}");
        let has_v6 = std::path::Path::new("/proc/net/if_inet6").exists();
        let v6 = |last: u16| Ipv6Addr::new(0xfd7a, 0x213, third.into(), fourth.into(), 0, 0, 0, last);
        let peer = PeerHost {
            netns: netns.clone(),
            addr,
            host_addr,
            subnet: format!("{}/30", Ipv4Addr::new(10, 213, third, fourth)),
            addr6: has_v6.then(|| v6(2)),
        };
        run(Command::new("ip").args(["netns", "add", &netns]))?;
        let steps: Vec<Vec<String>> = vec![
            vec![
                "link", "add", &host_if, "type", "veth", "peer", "name", &peer_if, "netns", &netns,
            ]
            .into_iter()
            .map(String::from)
            .collect(),
            vec![
                "addr".into(),
                "add".into(),
                format!("{host_addr}/30"),
                "dev".into(),
                host_if.clone(),
            ],
            // A jumbo link, like loopback's, so the link is never the bottleneck.
            vec![
                "link".into(),
                "set".into(),
                host_if.clone(),
                "mtu".into(),
                "65520".into(),
                "up".into(),
            ],
        ];
        for s in steps {
            run(Command::new("ip").args(&s)).context("configuring the peer link")?;
        }
        if let Some(addr6) = peer.addr6 {
            // nodad: usable at once instead of after duplicate detection.
            run(Command::new("ip").args([
                "-6",
                "addr",
                "add",
                &format!("{}/64", v6(1)),
                "dev",
                &host_if,
                "nodad",
            ]))?;
            run(Command::new("ip").args([
                "-n",
                &netns,
                "-6",
                "addr",
                "add",
                &format!("{addr6}/64"),
                "dev",
                &peer_if,
                "nodad",
            ]))?;
        }
        for s in [
            vec![
                "addr".to_string(),
                "add".into(),
                format!("{addr}/30"),
                "dev".into(),
                peer_if.clone(),
            ],
            vec![
                "link".into(),
                "set".into(),
                peer_if.clone(),
                "mtu".into(),
                "65520".into(),
                "up".into(),
            ],
            vec!["link".into(), "set".into(), "lo".into(), "up".into()],
        ] {
            run(Command::new("ip").arg("-n").arg(&netns).args(&s)).context("configuring the peer")?;
        }
        Ok(peer)
    }

    /// A command that runs inside the peer (as root).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns, program]);
        cmd
    }

    /// Starts a long-running server in the peer; killed when dropped.
    pub fn spawn(&self, program: &str, args: &[&str]) -> Result<Server> {
        let child = self
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {program} in the peer"))?;
        Ok(Server { child })
    }
}

impl PeerHost {
    /// labnet's echo server on `port` of the peer; returns it and its address.
    pub fn echo_server(&self, labnet: &std::path::Path, port: u16) -> Result<(Server, String)> {
        self.labnet_server(labnet, "serve", port)
    }

    /// labnet's UDP echo server on `port` of the peer; returns it and its address.
    pub fn udp_echo_server(&self, labnet: &std::path::Path, port: u16) -> Result<(Server, String)> {
        self.labnet_server(labnet, "udp-echo", port)
    }

    fn labnet_server(&self, labnet: &std::path::Path, command: &str, port: u16) -> Result<(Server, String)> {
        let labnet = labnet.to_str().context("labnet path is not UTF-8")?;
        let mut server = self.spawn(labnet, &[command, &format!("{}:{port}", self.addr)])?;
        let addr = server.listening()?;
        Ok((server, addr))
    }

    /// busybox httpd on `port` of the peer serving `len` pseudo-random bytes
    /// at `/blob` from `dir`; returns it, its address and the blob's sha256.
    pub fn http_blob(&self, dir: &std::path::Path, port: u16, len: u32) -> Result<(Server, String, String)> {
        std::fs::create_dir_all(dir)?;
        let blob: Vec<u8> = (0..len)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        std::fs::write(dir.join("blob"), &blob)?;
        let addr = format!("{}:{port}", self.addr);
        let dir_str = dir.to_str().context("www path is not UTF-8")?;
        let server = self.spawn("busybox", &["httpd", "-f", "-p", &addr, "-h", dir_str])?;
        crate::wait_for(
            "httpd in the peer to listen",
            std::time::Duration::from_secs(10),
            || {
                std::net::TcpStream::connect_timeout(
                    &addr.parse().ok()?,
                    std::time::Duration::from_millis(200),
                )
                .ok()
            },
        )?;
        let sum = run(Command::new("busybox").arg("sha256sum").arg(dir.join("blob")))?;
        let sum = sum.split_whitespace().next().context("no digest")?.to_owned();
        Ok((server, addr, sum))
    }
}

impl Drop for PeerHost {
    fn drop(&mut self) {
        // Deleting the namespace also deletes the veth pair.
        let _ = Command::new("ip").args(["netns", "del", &self.netns]).status();
    }
}

/// A background process that is killed on drop.
pub struct Server {
    pub child: Child,
}

impl Server {
    /// Waits for a labnet server's first line, `{"listening": ADDR}`, and
    /// returns ADDR.
    pub fn listening(&mut self) -> Result<String> {
        let out = self.child.stdout.as_mut().context("server stdout")?;
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line)?;
        let v: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("server said {line:?}"))?;
        Ok(v["listening"]
            .as_str()
            .context("no listening address")?
            .to_owned())
    }

    /// Kills the process and returns what it printed.
    pub fn finish(mut self) -> Result<String> {
        let _ = self.child.kill();
        let mut out = String::new();
        if let Some(mut s) = self.child.stdout.take() {
            std::io::Read::read_to_string(&mut s, &mut out)?;
        }
        let _ = self.child.wait();
        Ok(out)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
