//! netbench: the system benchmark. Rootless containers behind slirp4netns,
//! pasta and netaccel, against the host itself, measured side by side in one
//! run on real components (see `rootless-lab`): throughput both ways with 1
//! and 4 streams, short-connection rate with connect latency, and
//! request/response latency. Paths are interleaved round by round so drift on
//! a shared machine hits all of them; ratios come from the same run.
//!
//! Run as root (it creates a peer host and drops to the test user for every
//! rootless part): `cargo build --release --workspace --bins && target/release/netbench`.

mod paths;
mod plot;
mod probes;
mod report;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use rootless_lab::container::UserNet;
use rootless_lab::{prereq, workspace_bin, DaemonProcess, Lab, PeerHost};
use serde_json::json;

use paths::NetPath;
use probes::{measure_all, Metric, ProbeSettings, Servers};
use report::PathSamples;

#[derive(Parser)]
#[command(
    about = "Rootless container networking: slirp4netns, pasta and netaccel against the host, in one run"
)]
struct Cli {
    /// Seconds per throughput and connection-rate measurement.
    #[arg(long, default_value_t = 3)]
    seconds: u32,
    /// Rounds; the table shows the median and the range of the rounds.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Round trips per request/response measurement.
    #[arg(long, default_value_t = 5000)]
    pingpong_count: usize,
    /// Directory for netbench.md, netbench.json (every sample) and netbench.svg.
    #[arg(long, default_value = "target/netbench")]
    out: PathBuf,
}

const IPERF_PORT: u16 = 5201;
const ECHO_PORT: u16 = 7801;
const ACCEPT_PORT: u16 = 7802;
/// Host port of the inbound (published port) measurements.
const INBOUND_PORT: u16 = 17850;

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
    let labnet = lab.install_bin(&workspace_bin("labnet")?)?;
    let labnet = labnet.to_str().context("lab path is not UTF-8")?;
    let peer = PeerHost::create()?;
    let at = |port: u16| format!("{}:{port}", peer.addr);
    let mut echo = peer.spawn(labnet, &["serve", &at(ECHO_PORT)])?;
    echo.listening()?;
    let mut accept = peer.spawn(labnet, &["accept-close", &at(ACCEPT_PORT)])?;
    accept.listening()?;
    let servers = Servers {
        peer: &peer,
        iperf_port: IPERF_PORT,
        inbound_port: INBOUND_PORT,
        echo: at(ECHO_PORT),
        accept_close: at(ACCEPT_PORT),
    };
    // Info level: no per-connection log line in the measured path.
    let daemon = DaemonProcess::start_logging(&lab, &workspace_bin("netaccel")?, "info", &[])?;
    let settings = ProbeSettings {
        seconds: cli.seconds,
        pingpong_count: cli.pingpong_count,
    };

    let mut notes = Vec::new();
    let mut paths = vec![
        NetPath::Host,
        NetPath::Container {
            net: UserNet::Slirp4netns { mtu: 1500 },
        },
        NetPath::Container {
            net: UserNet::Slirp4netns { mtu: 65520 },
        },
    ];
    let pasta = NetPath::Container {
        net: UserNet::Pasta { mtu: 65520 },
    };
    match pasta.run(&lab, &["true"], Duration::from_secs(30)) {
        Ok(_) => paths.push(pasta),
        Err(e) => notes.push(format!("pasta left out: {e:#}")),
    }
    let publish = format!("{INBOUND_PORT}:{}", paths::INBOUND_CONTAINER_PORT);
    paths.push(NetPath::Netaccel {
        profile: daemon.profile(&lab, &[])?,
        inbound: daemon.profile_with(&lab, &["--publish", &publish])?,
    });

    let mut results: Vec<PathSamples> = paths
        .iter()
        .map(|p| PathSamples {
            name: p.name(),
            ..Default::default()
        })
        .collect();
    let mut dropped = vec![false; paths.len()];
    for round in 1..=cli.repeat {
        for (i, (path, result)) in paths.iter().zip(results.iter_mut()).enumerate() {
            if dropped[i] {
                continue;
            }
            eprintln!("round {round}/{}: {}", cli.repeat, path.name());
            match measure_all(&lab, path, &servers, &settings) {
                Ok(samples) => {
                    for (metric, value) in samples {
                        result.samples.entry(metric).or_default().push(value);
                    }
                }
                Err(e) if path.optional() => {
                    notes.push(format!("{} left out after round {round}: {e:#}", path.name()));
                    dropped[i] = true;
                }
                Err(e) => return Err(e),
            }
        }
    }
    let results: Vec<PathSamples> = results
        .into_iter()
        .zip(dropped)
        .filter(|(_, d)| !d)
        .map(|(r, _)| r)
        .collect();

    check_paths_work(&results)?;
    let bypassed = daemon.bypassed_by_exited_containers();
    anyhow::ensure!(
        bypassed > 0,
        "netaccel bypassed nothing; daemon log:\n{}",
        daemon.log_text()
    );

    let find = |name: &str| results.iter().find(|p| p.name == name).context("missing path");
    let (host, slirp, accel) = (find("host")?, find("slirp4netns 65520")?, find("netaccel")?);
    let table = report::markdown(&results, accel, host, slirp);
    let targets = targets(host, slirp, accel);
    println!(
        "\nRootless container networking, {} round(s), {} s per measurement; median (min–max):\n",
        cli.repeat, cli.seconds
    );
    println!("{table}");
    for n in &notes {
        println!("note: {n}");
    }
    let timing = daemon.bypass_timing_us();
    if let Some((handled, install)) = timing {
        println!(
            "\nnetaccel daemon per bypassed connect: {handled:.0} µs from notification to answer \
             (this includes the host socket's own TCP handshake, which the host path pays in its \
             connect too), {install:.0} µs of it installing the host socket (ADDFD round trip)."
        );
    }
    println!("\nTargets (issue: netbench):\n{targets}");

    std::fs::create_dir_all(&cli.out).with_context(|| format!("creating {}", cli.out.display()))?;
    std::fs::write(cli.out.join("netbench.md"), format!("{table}\n{targets}"))?;
    let config = json!({"seconds": cli.seconds, "repeat": cli.repeat, "pingpong_count": cli.pingpong_count,
                        "netaccel_connections_logged": bypassed,
                        "netaccel_daemon_us_per_bypass": timing.map(|t| t.0),
                        "netaccel_install_us_per_bypass": timing.map(|t| t.1)});
    let doc = report::json_report(&results, config, &notes);
    std::fs::write(cli.out.join("netbench.json"), serde_json::to_vec_pretty(&doc)?)?;
    plot::write_svg(&cli.out.join("netbench.svg"), &results)?;
    eprintln!("wrote {}/netbench.{{md,json,svg}}", cli.out.display());
    Ok(())
}

/// A benchmark run, not a timed test: it fails only when a path is broken.
fn check_paths_work(results: &[PathSamples]) -> Result<()> {
    for p in results {
        for m in Metric::ALL {
            let broken = p
                .samples
                .get(&m)
                .is_none_or(|s| s.iter().any(|v| !v.is_finite() || *v <= 0.0));
            if broken {
                bail!("{}: {} is zero or missing, the path is broken", p.name, m.label());
            }
        }
    }
    Ok(())
}

fn targets(host: &PathSamples, slirp: &PathSamples, accel: &PathSamples) -> String {
    let r = |a: &PathSamples, b: &PathSamples, m| report::ratio(a, b, m).unwrap_or(f64::NAN);
    let med = |p: &PathSamples, m| p.summary(m).map(|s| s.median).unwrap_or(f64::NAN);
    let line = |ok: bool, text: String| format!("- [{}] {text}\n", if ok { "met" } else { "MISSED" });
    let up_host = r(accel, host, Metric::Up1);
    let up_slirp = r(accel, slirp, Metric::Up1);
    let in_host = r(accel, host, Metric::In1);
    let in_slirp = r(accel, slirp, Metric::In1);
    let rate_host = r(accel, host, Metric::ConnRate);
    let rate_slirp = r(accel, slirp, Metric::ConnRate);
    let added = med(accel, Metric::ConnectP50) - med(host, Metric::ConnectP50);
    [
        line(
            up_host >= 0.9,
            format!(
                "container → peer throughput: netaccel / host = {:.0}% (target ≥ 90%)",
                up_host * 100.0
            ),
        ),
        line(
            up_slirp >= 6.0,
            format!(
                "container → peer throughput: netaccel / slirp4netns 65520 = {up_slirp:.1}x (target ≥ 6x)"
            ),
        ),
        line(
            in_host >= 0.9,
            format!(
                "host → published port throughput: netaccel bind / host loopback = {:.0}% (target ≥ 90%; slirp4netns 65520 forwarder: netaccel = {in_slirp:.1}x)",
                in_host * 100.0
            ),
        ),
        line(
            rate_host >= 0.5,
            format!(
                "connections/s: netaccel / host = {:.0}% (target ≥ 50%)",
                rate_host * 100.0
            ),
        ),
        line(
            rate_slirp > 1.0,
            format!("connections/s: netaccel / slirp4netns 65520 = {rate_slirp:.2}x (target > 1x)"),
        ),
        line(
            added <= 30.0,
            format!("connect latency added by netaccel (p50): {added:.1} µs (target ≤ 30 µs)"),
        ),
    ]
    .concat()
}
