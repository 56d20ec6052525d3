//! What is measured on each path, and how each result is read.

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::paths::NetPath;
use rootless_lab::peer::Server;
use rootless_lab::{Lab, PeerHost};

/// One number the benchmark reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Metric {
    Up1,
    Up4,
    Down1,
    Down4,
    In1,
    In4,
    ConnRate,
    ConnectP50,
    ConnectP99,
    RoundTripP50,
    RoundTripP99,
}

impl Metric {
    pub const ALL: [Metric; 11] = [
        Metric::Up1,
        Metric::Up4,
        Metric::Down1,
        Metric::Down4,
        Metric::In1,
        Metric::In4,
        Metric::ConnRate,
        Metric::ConnectP50,
        Metric::ConnectP99,
        Metric::RoundTripP50,
        Metric::RoundTripP99,
    ];

    pub fn key(self) -> &'static str {
        match self {
            Metric::Up1 => "container_to_peer_1_stream_gbit_s",
            Metric::Up4 => "container_to_peer_4_streams_gbit_s",
            Metric::Down1 => "peer_to_container_1_stream_gbit_s",
            Metric::Down4 => "peer_to_container_4_streams_gbit_s",
            Metric::In1 => "host_to_published_port_1_stream_gbit_s",
            Metric::In4 => "host_to_published_port_4_streams_gbit_s",
            Metric::ConnRate => "connections_per_s",
            Metric::ConnectP50 => "connect_p50_us",
            Metric::ConnectP99 => "connect_p99_us",
            Metric::RoundTripP50 => "request_response_p50_us",
            Metric::RoundTripP99 => "request_response_p99_us",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Metric::Up1 => "TCP container → peer, 1 stream (Gbit/s)",
            Metric::Up4 => "TCP container → peer, 4 streams (Gbit/s)",
            Metric::Down1 => "TCP peer → container, 1 stream (Gbit/s)",
            Metric::Down4 => "TCP peer → container, 4 streams (Gbit/s)",
            Metric::In1 => "TCP host → published port, 1 stream (Gbit/s)",
            Metric::In4 => "TCP host → published port, 4 streams (Gbit/s)",
            Metric::ConnRate => "short connections per second",
            Metric::ConnectP50 => "connect latency p50 (µs)",
            Metric::ConnectP99 => "connect latency p99 (µs)",
            Metric::RoundTripP50 => "64-byte request/response p50 (µs)",
            Metric::RoundTripP99 => "64-byte request/response p99 (µs)",
        }
    }
}

/// Seconds iperf3 runs before it starts counting: slow start, and the CPU
/// a container start leaves behind on a 2-core machine, stay out of the
/// figure on every path alike.
const OMIT_SECONDS: &str = "1";

/// The servers in the peer host.
pub struct Servers<'a> {
    pub peer: &'a PeerHost,
    pub iperf_port: u16,
    /// Host port of the inbound measurements (published port, or the host's
    /// own iperf3 server).
    pub inbound_port: u16,
    pub echo: String,
    pub accept_close: String,
}

impl Servers<'_> {
    /// A one-off iperf3 server for one measurement: a test that went wrong on
    /// one path (a client that vanished mid-test) cannot wedge the next.
    fn fresh_iperf(&self) -> Result<Server> {
        let port = self.iperf_port.to_string();
        let addr = self.peer.addr.to_string();
        let mut server = self.peer.spawn(
            "iperf3",
            &[
                "-s",
                "-1",
                "-B",
                &addr,
                "-p",
                &port,
                "--idle-timeout",
                "60",
                "--rcv-timeout",
                "10000",
            ],
        )?;
        // Its banner is buffered in a pipe, and a probing connect would be
        // the one client it serves: watch its namespace's socket table.
        let tcp = format!("/proc/{}/net/tcp", server.child.id());
        let listening = format!(":{:04X} 00000000:0000 0A", self.iperf_port);
        let ready = rootless_lab::wait_for("the iperf3 server to listen", Duration::from_secs(10), || {
            std::fs::read_to_string(&tcp)
                .ok()
                .filter(|t| t.contains(&listening))
        });
        if let Err(e) = ready {
            let status = server.child.try_wait().ok().flatten();
            let mut stderr = String::new();
            if let (Some(_), Some(mut err)) = (status, server.child.stderr.take()) {
                std::io::Read::read_to_string(&mut err, &mut stderr)?;
            }
            anyhow::bail!("{e} (exit status {status:?}): {}", stderr.trim());
        }
        Ok(server)
    }
}

pub struct ProbeSettings {
    pub seconds: u32,
    pub pingpong_count: usize,
}

/// Runs every probe once on `path`, returning one sample per metric.
pub fn measure_all(
    lab: &Lab,
    path: &NetPath,
    servers: &Servers,
    settings: &ProbeSettings,
) -> Result<Vec<(Metric, f64)>> {
    let secs = settings.seconds.to_string();
    let timeout = Duration::from_secs(u64::from(settings.seconds) + 60);
    let host = servers.peer.addr.to_string();
    let port = servers.iperf_port.to_string();
    let mut samples = Vec::new();
    for (metric, reverse, streams) in [
        (Metric::Up1, false, "1"),
        (Metric::Up4, false, "4"),
        (Metric::Down1, true, "1"),
        (Metric::Down4, true, "4"),
    ] {
        let mut args = vec![
            "iperf3",
            "-c",
            &host,
            "-p",
            &port,
            "-t",
            &secs,
            "-P",
            streams,
            "-J",
            "-O",
            OMIT_SECONDS,
        ];
        args.extend(["--connect-timeout", "5000"]);
        if reverse {
            // The client's receive timeout exists only when it receives.
            args.extend(["-R", "--rcv-timeout", "10000"]);
        }
        let out = path.run_with(lab, &args, timeout, || servers.fresh_iperf())?;
        samples.push((metric, iperf_gbits(&out)?));
    }
    for (metric, streams) in [(Metric::In1, "1"), (Metric::In4, "4")] {
        samples.push((metric, inbound(lab, path, servers.inbound_port, &secs, streams)?));
    }
    let out = path.run(
        lab,
        &["labnet", "connrate", &servers.accept_close, "--seconds", &secs],
        timeout,
    )?;
    let v = last_json(&out)?;
    samples.push((Metric::ConnRate, number(&v, "per_s")?));
    samples.push((Metric::ConnectP50, number(&v, "p50_us")?));
    samples.push((Metric::ConnectP99, number(&v, "p99_us")?));
    let count = settings.pingpong_count.to_string();
    let out = path.run(
        lab,
        &["labnet", "pingpong", &servers.echo, "--count", &count],
        timeout,
    )?;
    let v = last_json(&out)?;
    samples.push((Metric::RoundTripP50, number(&v, "p50_us")?));
    samples.push((Metric::RoundTripP99, number(&v, "p99_us")?));
    Ok(samples)
}

/// Host → the path's published port: iperf3 client on the host, the server
/// behind the path. Retried once, like the other probes.
fn inbound(lab: &Lab, path: &NetPath, port: u16, secs: &str, streams: &str) -> Result<f64> {
    let attempt = || -> Result<f64> {
        let server = path.inbound_iperf(lab, port)?;
        let port = port.to_string();
        let args = [
            "-c",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            secs,
            "-P",
            streams,
            "-J",
            "-O",
            OMIT_SECONDS,
            "--connect-timeout",
            "5000",
        ];
        let out = rootless_lab::run(lab.user_command("iperf3").args(args))
            .with_context(|| format!("host → published port on {}", path.name()))?;
        drop(server);
        iperf_gbits(&out)
    };
    attempt().or_else(|first| {
        eprintln!("  retrying inbound iperf3 on {}: {first:#}", path.name());
        attempt()
    })
}

fn last_json(out: &str) -> Result<Value> {
    let line = out.lines().last().context("probe printed nothing")?;
    serde_json::from_str(line).with_context(|| format!("probe printed {line:?}"))
}

fn number(v: &Value, key: &str) -> Result<f64> {
    v[key].as_f64().with_context(|| format!("no {key} in {v}"))
}

/// Received throughput of an iperf3 `-J` run, in Gbit/s.
pub fn iperf_gbits(iperf_json: &str) -> Result<f64> {
    let v: Value = serde_json::from_str(iperf_json).context("iperf3 did not print JSON")?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .with_context(|| format!("no throughput in iperf3 output: {}", v["error"]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_iperf_json() {
        let j = r#"{"end":{"sum_received":{"bits_per_second":2.5e9}}}"#;
        assert!((iperf_gbits(j).expect("parse") - 2.5).abs() < 1e-9);
        let err = iperf_gbits(r#"{"error":"unable to connect"}"#).expect_err("no figure");
        assert!(err.to_string().contains("unable to connect"), "{err}");
    }

    #[test]
    fn metric_keys_are_unique() {
        let keys: std::collections::BTreeSet<_> = Metric::ALL.iter().map(|m| m.key()).collect();
        assert_eq!(keys.len(), Metric::ALL.len());
    }
}
