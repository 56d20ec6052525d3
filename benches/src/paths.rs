//! The network paths compared: the host itself, and a rootless container
//! behind each user-mode stack, with or without netaccel.

use std::time::Duration;

use anyhow::{Context, Result};
use rootless_lab::container::{Forward, UserNet};
use rootless_lab::{run, Container, ContainerConfig, Lab};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub enum NetPath {
    /// The same client run directly on the host: the limit.
    Host,
    /// A container behind a user-mode stack.
    Container { net: UserNet },
    /// A container behind `net` with netaccel's profile; `inbound` also
    /// publishes the inbound test port through a host listener.
    Netaccel {
        net: UserNet,
        profile: Value,
        inbound: Value,
    },
}

/// The port every inbound server listens on inside its container.
pub const INBOUND_CONTAINER_PORT: u16 = 5201;

/// An iperf3 server behind a path, for one inbound measurement; stopped
/// (with its container) when dropped.
pub enum InboundServer<'a> {
    Host { _server: rootless_lab::peer::Server },
    Container { _container: Container<'a> },
}

impl NetPath {
    pub fn name(&self) -> String {
        match self {
            NetPath::Host => "host".into(),
            NetPath::Container {
                net: UserNet::Slirp4netns { mtu },
            } => format!("slirp4netns {mtu}"),
            NetPath::Container {
                net: UserNet::Pasta { mtu },
            } => format!("pasta {mtu}"),
            NetPath::Netaccel {
                net: UserNet::Slirp4netns { .. },
                ..
            } => "netaccel".into(),
            NetPath::Netaccel {
                net: UserNet::Pasta { .. },
                ..
            } => "netaccel pasta".into(),
        }
    }

    /// Where labnet is for a command run on this path.
    pub fn labnet(&self, lab: &Lab) -> String {
        match self {
            NetPath::Host => lab.bin_dir().join("labnet").display().to_string(),
            NetPath::Container { .. } | NetPath::Netaccel { .. } => "/lab/labnet".into(),
        }
    }

    /// Paths whose failure leaves them out of the run instead of failing it
    /// (comparisons we do not ship: Debian's 2023 pasta drops connections
    /// now and then).
    pub fn optional(&self) -> bool {
        matches!(
            self,
            NetPath::Container {
                net: UserNet::Pasta { .. }
            } | NetPath::Netaccel {
                net: UserNet::Pasta { .. },
                ..
            }
        )
    }

    /// Runs a probe on this path and returns its stdout, retrying once (an
    /// iperf3 control connection can be reset on a busy machine).
    pub fn run(&self, lab: &Lab, args: &[&str], timeout: Duration) -> Result<String> {
        self.run_with(lab, args, timeout, || Ok(()))
    }

    /// Like [`NetPath::run`], with `server` started afresh before each try
    /// and stopped after it.
    pub fn run_with<S>(
        &self,
        lab: &Lab,
        args: &[&str],
        timeout: Duration,
        server: impl Fn() -> Result<S>,
    ) -> Result<String> {
        let attempt = || {
            let _server = server()?;
            self.run_once(lab, args, timeout)
        };
        attempt().or_else(|first| {
            eprintln!("  retrying {} on {}: {first:#}", args[0], self.name());
            attempt()
        })
    }

    /// Starts a one-off iperf3 server that the host reaches at
    /// 127.0.0.1:`host_port`: on the host itself, behind the user-mode
    /// stack's port forwarder, or behind netaccel's host listener.
    pub fn inbound_iperf<'a>(&self, lab: &'a Lab, host_port: u16) -> Result<InboundServer<'a>> {
        let iperf = |port: u16| -> Vec<String> {
            ["iperf3", "-s", "-1", "--forceflush", "-p", &port.to_string()]
                .map(String::from)
                .to_vec()
        };
        let config = match self {
            NetPath::Host => {
                let args = iperf(host_port);
                let mut server = lab
                    .user_command(&args[0])
                    .args(&args[1..])
                    .args(["-B", "127.0.0.1"])
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .map(|child| rootless_lab::peer::Server { child })?;
                let ready = server.child.stdout.take().context("iperf3 stdout")?;
                wait_line(ready, "Server listening")?;
                return Ok(InboundServer::Host { _server: server });
            }
            NetPath::Container { net } => ContainerConfig {
                net: *net,
                forwards: vec![Forward {
                    proto: "tcp",
                    host_port,
                    guest_port: INBOUND_CONTAINER_PORT,
                }],
                ..Default::default()
            },
            NetPath::Netaccel { net, inbound, .. } => ContainerConfig {
                seccomp: Some(inbound.clone()),
                net: *net,
                ..Default::default()
            },
        };
        let args = iperf(INBOUND_CONTAINER_PORT);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let container = Container::start(lab, config, &argv)
            .with_context(|| format!("inbound iperf3 server on {}", self.name()))?;
        container.wait_for_line("Server listening", Duration::from_secs(15))?;
        Ok(InboundServer::Container {
            _container: container,
        })
    }

    fn run_once(&self, lab: &Lab, args: &[&str], timeout: Duration) -> Result<String> {
        let config = match self {
            NetPath::Host => {
                let program = match args[0] {
                    "labnet" => lab.bin_dir().join("labnet"),
                    other => other.into(),
                };
                return run(lab.user_command(program).args(&args[1..]));
            }
            NetPath::Container { net } => ContainerConfig {
                net: *net,
                ..Default::default()
            },
            NetPath::Netaccel { net, profile, .. } => ContainerConfig {
                seccomp: Some(profile.clone()),
                net: *net,
                ..Default::default()
            },
        };
        let mut argv: Vec<&str> = args.to_vec();
        if argv[0] == "labnet" {
            argv[0] = "/lab/labnet";
        }
        let out = Container::run(lab, config, &argv, timeout)
            .with_context(|| format!("{} on {}", args[0], self.name()))?;
        anyhow::ensure!(
            out.ok(),
            "{} on {} failed: {}{}",
            args[0],
            self.name(),
            out.stdout,
            out.stderr
        );
        Ok(out.stdout)
    }
}

/// Reads `out` until a line contains `marker`, in a thread with a timeout.
fn wait_line(out: std::process::ChildStdout, marker: &'static str) -> Result<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut lines = std::io::BufReader::new(out).lines();
        let found = lines.any(|l| l.is_ok_and(|l| l.contains(marker)));
        let _ = tx.send(found);
        // Keep draining so the server never blocks on a full pipe.
        for _ in lines {}
    });
    match rx.recv_timeout(Duration::from_secs(15)) {
        Ok(true) => Ok(()),
        Ok(false) => anyhow::bail!("the server exited before printing {marker:?}"),
        Err(_) => anyhow::bail!("no {marker:?} from the server within 15 s"),
    }
}
