//! netbench: the system benchmark. Rootless containers behind slirp4netns,
//! pasta and netaccel, against the host itself, measured side by side in one
//! run on real components (see `rootless-lab`): throughput both ways with 1
//! and 4 streams, short-connection rates with one and several clients and
//! connect latency up to its maximum, connects to the host's own address,
//! connects the fast path keeps (loopback, a nested namespace), request/
//! response latency, real clients (ab → nginx, redis-benchmark →
//! redis-server, pgbench → PostgreSQL), and a soak of container lifecycles.
//! Paths are interleaved round by round so drift on a shared machine hits
//! all of them; ratios come from the same run. Failures and stalls are
//! flagged next to the figure they belong to.
//!
//! Run as root (it creates a peer host and drops to the test user for every
//! rootless part): `cargo build --release --workspace --bins && target/release/netbench`.

mod clients;
mod crosshost;
mod metrics;
mod paths;
mod plot;
mod probes;
mod report;
mod soak;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use rootless_lab::container::UserNet;
use rootless_lab::{prereq, workspace_bin, DaemonProcess, Lab, PeerHost};
use serde_json::json;

use metrics::{Kind, Metric};
use paths::NetPath;
use probes::{measure_all, ProbeSettings, Servers};
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
    /// Container lifecycles of the soak that follows the rounds (0: none).
    #[arg(long, default_value_t = 1000)]
    soak: usize,
    /// Leave out the cross-host rows (two hosts of the multi-host lab, each
    /// with its own rootless Docker and a u7s node; about a minute to set up).
    #[arg(long)]
    no_cross_host: bool,
}

const IPERF_PORT: u16 = 5201;
/// Port of the iperf3 server on the host's own address.
const HOST_IPERF_PORT: u16 = 5202;
const ECHO_PORT: u16 = 7801;
const ACCEPT_PORT: u16 = 7802;
/// Port of the accept-and-close server on the host's own address.
const HOST_ACCEPT_PORT: u16 = 7803;
/// Published (bind bypass) port of the soak's containers.
const SOAK_PORT: u16 = 17851;
/// Host port of the inbound (published port) measurements.
const INBOUND_PORT: u16 = 17850;

fn main() -> Result<()> {
    let cli = Cli::parse();
    anyhow::ensure!(
        cli.repeat >= 1 && cli.seconds >= 1,
        "--repeat and --seconds must be at least 1"
    );
    prereq::check_lab().map_err(|m| anyhow::anyhow!("{m}: run init-host/init-host.root.sh as root first"))?;
    clients::check_installed()?;
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
    // The host's own address: the host side of the peer link.
    let (_host_accept, host_accept_close) =
        lab.labnet_server(&["accept-close", &format!("{}:{HOST_ACCEPT_PORT}", peer.host_addr)])?;
    let servers = Servers {
        lab: &lab,
        peer: &peer,
        iperf_port: IPERF_PORT,
        host_iperf_port: HOST_IPERF_PORT,
        inbound_port: INBOUND_PORT,
        echo: at(ECHO_PORT),
        accept_close: at(ACCEPT_PORT),
        host_accept_close,
    };
    eprintln!("starting nginx, redis-server and PostgreSQL in the peer host");
    let real = clients::RealServers::start(&lab, &peer)?;
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
    let pasta_net = UserNet::Pasta { mtu: 65520 };
    let pasta = NetPath::Container { net: pasta_net };
    let pasta_works = match pasta.run(&lab, &["true"], Duration::from_secs(30)) {
        Ok(_) => {
            paths.push(pasta);
            true
        }
        Err(e) => {
            notes.push(format!("pasta left out: {e:#}"));
            false
        }
    };
    let publish = format!("{INBOUND_PORT}:{}", paths::INBOUND_CONTAINER_PORT);
    let accel = |net| -> Result<NetPath> {
        Ok(NetPath::Netaccel {
            net,
            profile: daemon.profile(&lab, &[])?,
            inbound: daemon.profile_with(&lab, &["--publish", &publish])?,
        })
    };
    paths.push(accel(UserNet::Slirp4netns { mtu: 65520 })?);
    if pasta_works {
        // Podman 5's default stack under netaccel.
        paths.push(accel(pasta_net)?);
    }

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
            let measured = measure_all(&lab, path, &servers, &settings).and_then(|mut s| {
                s.extend(clients::measure_all(&lab, path, &real, cli.seconds)?);
                Ok(s)
            });
            match measured {
                Ok(samples) => {
                    for sample in samples {
                        result.add(round, sample);
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

    let mut results = results;
    if cli.no_cross_host {
        notes.push("cross-host rows left out (--no-cross-host)".into());
    } else {
        eprintln!("cross-host: two hosts, each with its own rootless Docker and a u7s node");
        match crosshost::run(cli.seconds, cli.repeat)? {
            Some(cross) => {
                for (round, paths) in cross.rounds.into_iter().enumerate() {
                    for (name, samples) in paths {
                        let path = results
                            .iter_mut()
                            .find(|p| p.name == name)
                            .with_context(|| format!("no path {name} for the cross-host samples"))?;
                        for sample in samples {
                            path.add(round + 1, sample);
                        }
                    }
                }
            }
            None => {
                notes.push("cross-host rows left out: the multi-host lab's prerequisites are missing".into())
            }
        }
    }

    check_paths_work(&results)?;
    let bypassed = daemon.bypassed_by_exited_containers();
    anyhow::ensure!(
        bypassed > 0,
        "netaccel bypassed nothing; daemon log:\n{}",
        daemon.log_text()
    );

    let soak = if cli.soak > 0 {
        eprintln!("soak: {} container lifecycles", cli.soak);
        let settings = soak::SoakSettings {
            lifecycles: cli.soak,
            echo: &servers.echo,
            profile: daemon.profile_with(&lab, &["--publish", &format!("{SOAK_PORT}:{SOAK_PORT}")])?,
            port: SOAK_PORT,
        };
        Some(soak::run(&lab, &daemon, &settings)?)
    } else {
        None
    };

    let find = |name: &str| results.iter().find(|p| p.name == name).context("missing path");
    let (host, slirp, accel) = (find("host")?, find("slirp4netns 65520")?, find("netaccel")?);
    let table = report::markdown(&results, accel, host, slirp);
    let mut targets = targets(host, slirp, accel);
    if let Ok(pasta_accel) = find("netaccel pasta") {
        let x = report::ratio(pasta_accel, host, Metric::Up1).unwrap_or(f64::NAN);
        targets.push_str(&format!(
            "- [{}] container → peer throughput with pasta under netaccel: {:.0}% of host (target ≥ 90%)\n",
            if x >= 0.9 { "met" } else { "MISSED" },
            x * 100.0
        ));
    }
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
    if let Some(s) = &soak {
        println!("\n{}", s.summary());
    }
    println!("\nTargets (ratios in this run):\n{targets}");

    std::fs::create_dir_all(&cli.out).with_context(|| format!("creating {}", cli.out.display()))?;
    let soak_line = soak
        .as_ref()
        .map(|s| format!("\n{}\n", s.summary()))
        .unwrap_or_default();
    std::fs::write(
        cli.out.join("netbench.md"),
        format!("{table}{soak_line}\n{targets}"),
    )?;
    let config = json!({"seconds": cli.seconds, "repeat": cli.repeat, "pingpong_count": cli.pingpong_count,
                        "netaccel_connections_logged": bypassed,
                        "netaccel_daemon_us_per_bypass": timing.map(|t| t.0),
                        "netaccel_install_us_per_bypass": timing.map(|t| t.1),
                        "soak": soak.as_ref().map(soak::SoakResult::json)});
    let doc = report::json_report(&results, config, &notes);
    std::fs::write(cli.out.join("netbench.json"), serde_json::to_vec_pretty(&doc)?)?;
    plot::write_svg(&cli.out.join("netbench.svg"), &results)?;
    eprintln!("wrote {}/netbench.{{md,json,svg}}", cli.out.display());
    Ok(())
}

/// A benchmark run, not a timed test: it fails only when a path is broken
/// (a probe of ours gives nothing). Real clients that fail are findings,
/// flagged in the table.
fn check_paths_work(results: &[PathSamples]) -> Result<()> {
    for p in results {
        for m in Metric::ALL.into_iter().filter(|m| m.kind() == Kind::Probe) {
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
    let pct = |x: f64| x * 100.0;
    let added = med(accel, Metric::ConnectP50) - med(host, Metric::ConnectP50);
    let host_rate = host.summary(Metric::ConnRate);
    let spread = host_rate.map_or(f64::NAN, |s| (s.max - s.min) / 2.0 / s.median);
    let host_stalls = host.problems.contains_key(&Metric::ConnRate);
    let mut out = vec![line(
        spread <= 0.25 && !host_stalls,
        format!(
            "host baseline: connections/s spread ±{:.0}% across rounds, {} (target ±25%, no stall)",
            pct(spread),
            if host_stalls {
                "with stalls (see ⚠)"
            } else {
                "no stall"
            }
        ),
    )];
    for (m, target, what) in [
        (Metric::Up1, 0.9, "container → peer throughput, 1 stream"),
        (Metric::In1, 0.9, "host → published port throughput, 1 stream"),
        (Metric::ConnRate, 0.9, "new connections, 1 client"),
        (Metric::ConnRate4x2, 0.8, "new connections, 4 threads × 2"),
        (Metric::AbClose8, 0.8, "ab -c 8, new connection per request"),
        (Metric::AbKeepAlive8, 0.9, "ab keep-alive -c 8"),
        (
            Metric::HostIpUp1,
            0.9,
            "container → the host's own IP throughput, 1 stream",
        ),
        (Metric::HostIpRate, 0.8, "new connections to the host's own IP"),
    ] {
        let x = r(accel, host, m);
        out.push(line(
            x >= target,
            format!(
                "{what}: netaccel / host = {:.0}% (target ≥ {:.0}%)",
                pct(x),
                pct(target)
            ),
        ));
    }
    for (m, what) in [
        (Metric::KeptLoopback1, "kept loopback connects, 1 client"),
        (Metric::KeptLoopback8, "kept loopback connects, 4×2"),
        (Metric::KeptNested1, "kept nested-netns connects, 1 client"),
        (Metric::KeptNested8, "kept nested-netns connects, 4×2"),
    ] {
        let x = r(accel, slirp, m);
        out.push(line(
            x >= 0.9,
            format!(
                "{what}: netaccel / the same container without the profile = {:.0}% (target ≥ 90%)",
                pct(x)
            ),
        ));
    }
    let up_slirp = r(accel, slirp, Metric::Up1);
    out.push(line(
        up_slirp >= 6.0,
        format!("container → peer throughput: netaccel / slirp4netns 65520 = {up_slirp:.1}x (target ≥ 6x)"),
    ));
    out.push(line(
        added <= 10.0,
        format!("connect latency added by netaccel (p50): {added:.1} µs (target ≤ 10 µs)"),
    ));
    out.concat()
}
