//! The network paths compared: the host itself, and a rootless container
//! behind each user-mode stack, with or without netaccel.

use std::time::Duration;

use anyhow::{Context, Result};
use rootless_lab::container::UserNet;
use rootless_lab::{run, Container, ContainerConfig, Lab};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub enum NetPath {
    /// The same client run directly on the host: the limit.
    Host,
    /// A container behind a user-mode stack.
    Container { net: UserNet },
    /// A container behind slirp4netns (MTU 65520) with netaccel's profile.
    Netaccel { profile: Value },
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
            NetPath::Netaccel { .. } => "netaccel".into(),
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
            NetPath::Netaccel { profile } => ContainerConfig {
                seccomp: Some(profile.clone()),
                net: UserNet::Slirp4netns { mtu: 65520 },
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
