//! What the project's own probes (iperf3, labnet) measure on each path,
//! and how each result is read.

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::metrics::{Metric, Sample};
use crate::paths::NetPath;
use rootless_lab::peer::Server;
use rootless_lab::{Lab, PeerHost};

/// Seconds iperf3 runs before it starts counting: slow start, and the CPU
/// a container start leaves behind on a 2-core machine, stay out of the
/// figure on every path alike.
const OMIT_SECONDS: &str = "1";

/// The servers in the peer host, and on the host's own address.
pub struct Servers<'a> {
    pub lab: &'a Lab,
    pub peer: &'a PeerHost,
    pub iperf_port: u16,
    /// Port of the iperf3 server on the host's own address.
    pub host_iperf_port: u16,
    /// Host port of the inbound measurements (published port, or the host's
    /// own iperf3 server).
    pub inbound_port: u16,
    pub echo: String,
    pub accept_close: String,
    /// An accept-and-close server on the host's own address (the host side
    /// of the peer link), the set-up of a container talking to its host.
    pub host_accept_close: String,
}

impl Servers<'_> {
    /// A one-off iperf3 server for one measurement: a test that went wrong on
    /// one path (a client that vanished mid-test) cannot wedge the next.
    fn fresh_iperf(&self) -> Result<Server> {
        let port = self.iperf_port.to_string();
        let addr = self.peer.addr.to_string();
        let server = self.peer.spawn("iperf3", &iperf_server_args(&addr, &port))?;
        wait_iperf(server, self.iperf_port)
    }

    /// The same on the host's own address (the host side of the peer
    /// link), run as the test user.
    fn fresh_host_iperf(&self) -> Result<Server> {
        let port = self.host_iperf_port.to_string();
        let addr = self.peer.host_addr.to_string();
        let child = self
            .lab
            .user_command("iperf3")
            .args(iperf_server_args(&addr, &port))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("starting iperf3 on the host")?;
        wait_iperf(Server { child }, self.host_iperf_port)
    }
}

fn iperf_server_args<'a>(addr: &'a str, port: &'a str) -> [&'a str; 10] {
    [
        "-s",
        "-1",
        "-B",
        addr,
        "-p",
        port,
        "--idle-timeout",
        "60",
        "--rcv-timeout",
        "10000",
    ]
}

/// Waits until `server` (iperf3 on `port`) listens.
fn wait_iperf(mut server: Server, port: u16) -> Result<Server> {
    {
        // Its banner is buffered in a pipe, and a probing connect would be
        // the one client it serves: watch its namespace's socket table.
        let tcp = format!("/proc/{}/net/tcp", server.child.id());
        let listening = format!(":{port:04X} 00000000:0000 0A");
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
    }
    Ok(server)
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
) -> Result<Vec<Sample>> {
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
        samples.push(Sample::clean(metric, iperf_gbits(&out)?));
    }
    let host_ip = servers.peer.host_addr.to_string();
    let host_port = servers.host_iperf_port.to_string();
    let args = [
        "iperf3",
        "-c",
        &host_ip,
        "-p",
        &host_port,
        "-t",
        &secs,
        "-J",
        "-O",
        OMIT_SECONDS,
        "--connect-timeout",
        "5000",
    ];
    let out = path.run_with(lab, &args, timeout, || servers.fresh_host_iperf())?;
    samples.push(Sample::clean(Metric::HostIpUp1, iperf_gbits(&out)?));
    for (metric, streams) in [(Metric::In1, "1"), (Metric::In4, "4")] {
        samples.push(Sample::clean(
            metric,
            inbound(lab, path, servers.inbound_port, &secs, streams)?,
        ));
    }
    let connrate = |dst: &str, clients: [&str; 2]| -> Result<Value> {
        let [threads, inflight] = clients;
        let out = path.run(
            lab,
            &[
                "labnet",
                "connrate",
                dst,
                "--seconds",
                &secs,
                "--threads",
                threads,
                "--inflight",
                inflight,
            ],
            timeout,
        )?;
        last_json(&out)
    };
    let v = connrate(&servers.accept_close, ["1", "1"])?;
    let problem = connrate_problem(&v);
    samples.push(Sample {
        metric: Metric::ConnRate,
        value: number(&v, "per_s")?,
        problem: problem.clone(),
    });
    samples.push(Sample::clean(Metric::ConnectP50, number(&v, "p50_us")?));
    samples.push(Sample::clean(Metric::ConnectP99, number(&v, "p99_us")?));
    samples.push(Sample {
        metric: Metric::ConnectMax,
        value: number(&v, "max_us")?,
        problem,
    });
    for (metric, dst, clients) in [
        (Metric::ConnRate8, &servers.accept_close, ["1", "8"]),
        (Metric::ConnRate4x2, &servers.accept_close, ["4", "2"]),
        (Metric::HostIpRate, &servers.host_accept_close, ["1", "1"]),
    ] {
        let v = connrate(dst, clients)?;
        samples.push(Sample {
            metric,
            value: number(&v, "per_s")?,
            problem: connrate_problem(&v),
        });
    }
    // Connects no fast path bypasses: loopback inside the path's own
    // namespace, and inside a namespace nested in it (a pod in a node).
    let labnet = path.labnet(lab);
    for (metric, nested, [threads, inflight]) in [
        (Metric::KeptLoopback1, false, ["1", "1"]),
        (Metric::KeptLoopback8, false, ["4", "2"]),
        (Metric::KeptNested1, true, ["1", "1"]),
        (Metric::KeptNested8, true, ["4", "2"]),
    ] {
        let local = format!(
            "{labnet} connrate 127.0.0.1:0 --local-server --seconds {secs} --threads {threads} --inflight {inflight}"
        );
        let out = if nested {
            let script = format!("ip link set lo up && exec {local}");
            // Root in a container may make a network namespace (as a pod
            // sandbox is made); the host's unprivileged user needs its own
            // user namespace for it.
            let unshare = if *path == NetPath::Host { "-rn" } else { "-n" };
            path.run(lab, &["unshare", unshare, "sh", "-c", &script], timeout)?
        } else {
            path.run(lab, &["sh", "-c", &format!("exec {local}")], timeout)?
        };
        let v = last_json(&out)?;
        samples.push(Sample {
            metric,
            value: number(&v, "per_s")?,
            problem: connrate_problem(&v),
        });
    }
    let count = settings.pingpong_count.to_string();
    let out = path.run(
        lab,
        &["labnet", "pingpong", &servers.echo, "--count", &count],
        timeout,
    )?;
    let v = last_json(&out)?;
    samples.push(Sample::clean(Metric::RoundTripP50, number(&v, "p50_us")?));
    samples.push(Sample::clean(Metric::RoundTripP99, number(&v, "p99_us")?));
    Ok(samples)
}

/// Errors and stalls of a `labnet connrate` answer, if any.
pub fn connrate_problem(v: &Value) -> Option<String> {
    let errors = v["errors"].as_u64().unwrap_or(0);
    let stalls = v["stalls"].as_u64().unwrap_or(0);
    let mut parts = Vec::new();
    if errors > 0 {
        parts.push(format!("{errors} failed connect(s)"));
    }
    if stalls > 0 {
        parts.push(format!(
            "{stalls} connect(s) ≥ 100 ms (max {:.0} ms)",
            v["max_us"].as_f64().unwrap_or(0.0) / 1000.0
        ));
    }
    (!parts.is_empty()).then(|| parts.join(", "))
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

pub fn last_json(out: &str) -> Result<Value> {
    let line = out.lines().last().context("probe printed nothing")?;
    serde_json::from_str(line).with_context(|| format!("probe printed {line:?}"))
}

pub fn number(v: &Value, key: &str) -> Result<f64> {
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
    fn connrate_errors_and_stalls_are_named() {
        let clean = serde_json::json!({"per_s": 100.0, "errors": 0, "stalls": 0, "max_us": 90.0});
        assert_eq!(connrate_problem(&clean), None);
        let bad = serde_json::json!({"per_s": 100.0, "errors": 2, "stalls": 1, "max_us": 1_012_000.0});
        assert_eq!(
            connrate_problem(&bad).as_deref(),
            Some("2 failed connect(s), 1 connect(s) ≥ 100 ms (max 1012 ms)")
        );
    }
}
