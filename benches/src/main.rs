//! netbench: TCP throughput of a rootless container to a server outside it,
//! through slirp4netns and through netaccel, beside the host's own figure,
//! all measured in one run on real components (see `rootless-lab`).
//!
//! Run as root (it creates a peer host and drops to the test user for every
//! rootless part): `cargo build --release --workspace --bins && target/release/netbench`.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use rootless_lab::{prereq, run, workspace_bin, Container, ContainerConfig, DaemonProcess, Lab, PeerHost};
use serde_json::{json, Value};

#[derive(Parser)]
#[command(about = "Container TCP throughput: slirp4netns vs netaccel vs host, one run, as ratios")]
struct Cli {
    /// Seconds per iperf3 measurement.
    #[arg(long, default_value_t = 5)]
    seconds: u32,
    /// Measurements per path; the table shows the median and the range.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Also write every sample as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

const PORT: u16 = 5201;

struct Path {
    name: &'static str,
    samples: Vec<f64>,
}

impl Path {
    fn median(&self) -> f64 {
        let mut s = self.samples.clone();
        s.sort_by(f64::total_cmp);
        s[s.len() / 2]
    }
    fn range(&self) -> (f64, f64) {
        let min = self.samples.iter().copied().fold(f64::INFINITY, f64::min);
        let max = self.samples.iter().copied().fold(0.0, f64::max);
        (min, max)
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    anyhow::ensure!(
        cli.repeat >= 1 && cli.seconds >= 1,
        "--repeat and --seconds must be at least 1"
    );
    prereq::check_lab().map_err(|m| anyhow::anyhow!("{m}: run init-host/init-host.root.sh as root first"))?;
    let Some(lab) = Lab::new_or_skip("netbench") else {
        bail!("lab prerequisites missing")
    };
    let netaccel = workspace_bin("netaccel")?;
    let peer = PeerHost::create()?;
    let server_addr = peer.addr.to_string();
    let _server = peer.spawn("iperf3", &["-s", "-B", &server_addr, "-p", &PORT.to_string()])?;
    std::thread::sleep(Duration::from_millis(300));
    let daemon = DaemonProcess::start(&lab, &netaccel, &[])?;
    let accel_profile = daemon.profile(&lab, &[])?;
    let seconds = cli.seconds.to_string();
    let iperf = ["iperf3", "-c", &server_addr, "-p", "5201", "-t", &seconds, "-J"];

    let mut paths = vec![
        Path {
            name: "host (no container)",
            samples: vec![],
        },
        Path {
            name: "container, slirp4netns (MTU 65520)",
            samples: vec![],
        },
        Path {
            name: "container, netaccel",
            samples: vec![],
        },
    ];
    // Interleave the paths so drift on a shared machine hits all of them.
    for round in 0..cli.repeat {
        eprintln!(
            "round {}/{}: host, slirp4netns, netaccel ({} s each)",
            round + 1,
            cli.repeat,
            cli.seconds
        );
        let host = run(lab.user_command("iperf3").args(&iperf[1..]))?;
        paths[0].samples.push(gbits(&host)?);
        let slirp = container_iperf(&lab, ContainerConfig::default(), &iperf, cli.seconds)?;
        paths[1].samples.push(slirp);
        let accel = ContainerConfig {
            seccomp: Some(accel_profile.clone()),
            ..Default::default()
        };
        paths[2]
            .samples
            .push(container_iperf(&lab, accel, &iperf, cli.seconds)?);
    }
    let bypassed = daemon.bypassed_to(&format!("{server_addr}:{PORT}"));
    if bypassed < 2 * cli.repeat {
        bail!(
            "netaccel did not bypass the iperf3 connections ({bypassed} logged):\n{}",
            daemon.log_text()
        );
    }
    for p in &paths {
        if p.samples.iter().any(|s| *s <= 0.0) {
            bail!("{}: zero throughput, the path is broken", p.name);
        }
    }

    println!("\nTCP throughput to a server in a peer network namespace, one iperf3 stream, {} s x {} (median, min-max):\n", cli.seconds, cli.repeat);
    println!("| path | Gbit/s | min-max |");
    println!("|---|---:|---:|");
    for p in &paths {
        let (min, max) = p.range();
        println!("| {} | {:.2} | {:.2}-{:.2} |", p.name, p.median(), min, max);
    }
    let (host, slirp, accel) = (paths[0].median(), paths[1].median(), paths[2].median());
    println!(
        "\nnetaccel / slirp4netns = {:.1}x, netaccel / host = {:.0}%",
        accel / slirp,
        100.0 * accel / host
    );

    if let Some(path) = cli.json {
        let doc = json!({
            "seconds": cli.seconds,
            "paths": paths.iter().map(|p| json!({"name": p.name, "gbit_per_s": p.samples})).collect::<Vec<_>>(),
            "ratios": {"netaccel_over_slirp4netns": accel / slirp, "netaccel_over_host": accel / host},
        });
        std::fs::write(&path, serde_json::to_vec_pretty(&doc)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn container_iperf(lab: &Lab, config: ContainerConfig, iperf: &[&str], seconds: u32) -> Result<f64> {
    let out = Container::run(lab, config, iperf, Duration::from_secs(u64::from(seconds) + 30))?;
    anyhow::ensure!(
        out.ok(),
        "iperf3 in the container failed: {}{}",
        out.stdout,
        out.stderr
    );
    gbits(&out.stdout)
}

fn gbits(iperf_json: &str) -> Result<f64> {
    let v: Value = serde_json::from_str(iperf_json).context("iperf3 did not print JSON")?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .with_context(|| format!("no throughput in iperf3 output: {}", v["error"]))
}
