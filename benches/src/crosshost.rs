//! The cross-host row: two hosts of the multi-host lab (each its own
//! network namespace, user and rootless Docker, see
//! `rootless_lab::multihost`), a node on each, and traffic from host B to
//! node A's published ports — the path of a joining node's kubelet to the
//! control plane's apiserver and etcd. Measured from host B itself (the
//! "host" column), from B's node without the fast path (rootless Docker's
//! own stack: "slirp4netns 65520") and from a second node of B started with
//! `u7s up --accel` ("netaccel"), interleaved round by round, slirp4netns
//! last (see `drain_time_wait`).

use std::time::Duration;

use anyhow::{Context, Result};
use rootless_lab::multihost::{LabHost, MultiHost};
use rootless_lab::u7s::U7s;

use crate::metrics::{Metric, Sample};
use crate::probes::{connrate_problem, iperf_gbits, last_json, number};

const IPERF_PORT: u16 = 5201;
const ACCEPT_PORT: u16 = 7802;
/// A step in a node on a loaded 2-core machine.
const STEP: Duration = Duration::from_secs(120);

/// Samples of the three paths, by the path names of the main table.
pub struct CrossHostSamples {
    pub rounds: Vec<[(&'static str, Vec<Sample>); 3]>,
}

/// Sets up the two hosts, measures `repeat` rounds of `seconds` each, and
/// tears everything down; `None` when the lab's prerequisites are missing
/// outside CI (printed).
pub fn run(seconds: u32, repeat: usize) -> Result<Option<CrossHostSamples>> {
    let Some(mh) = MultiHost::create_or_skip("netbench cross-host", 2) else {
        return Ok(None);
    };
    let hosts = mh.start().context("starting the two hosts")?;
    let (a, b) = (&hosts[0], &hosts[1]);
    eprintln!("cross-host: nodes up on {} and {}", a.ns.hostname, b.ns.hostname);
    let publish = |p: u16| format!("{p}:{p}");
    a.u.ok(
        &[
            "--publish",
            &publish(IPERF_PORT),
            "--publish",
            &publish(ACCEPT_PORT),
            "up",
        ],
        &[],
    );
    a.u.job_ok(
        &format!(
            "iperf3 -s -p {IPERF_PORT} > /tmp/iperf.log 2>&1 &\n\
             labnet accept-close 0.0.0.0:{ACCEPT_PORT} > /tmp/accept.log 2>&1 &"
        ),
        STEP,
    );
    b.u.ok(&["up"], &[]);
    let accel = b.u.tenant(1);
    let out = accel.ok(&["up", "--accel"], &[]);
    anyhow::ensure!(
        out.contains("fast path on"),
        "B's second node is not on the fast path: {out}"
    );
    let target = a.ns.addr.to_string();
    let mut rounds = Vec::new();
    for round in 1..=repeat {
        eprintln!("cross-host round {round}/{repeat}");
        if round > 1 {
            drain_time_wait(b, &format!("{target}:{ACCEPT_PORT}"))?;
        }
        let host = measure_host(b, &target, seconds)?;
        let bypassed = accel.bypassed(&["status"]);
        let fast = measure_node(&accel, &target, seconds)?;
        anyhow::ensure!(
            accel.bypassed(&["status"]) > bypassed,
            "the --accel node's connects to host A were not bypassed"
        );
        // Last in the round: see drain_time_wait.
        let slirp = measure_node(&b.u, &target, seconds)?;
        rounds.push([("host", host), ("slirp4netns 65520", slirp), ("netaccel", fast)]);
    }
    accel.ok(&["down", "-v"], &[]);
    drop(hosts);
    let left = mh.teardown(Duration::from_secs(15));
    anyhow::ensure!(left.is_empty(), "the cross-host lab left: {left:?}");
    Ok(Some(CrossHostSamples { rounds }))
}

/// slirp4netns closes its host sockets first, so every connection of the
/// slirp4netns node leaves a TIME_WAIT socket towards `dst` in host B's
/// namespace for 60 s. Once about half the ephemeral range towards one
/// destination is taken, every later connect from host B to it (the host's,
/// netaccel's host sockets, slirp4netns's own) slowed to about 500/s in our
/// runs: measured after a slirp4netns measurement, the next round would
/// report that slowdown instead of its path. So the next round waits until
/// they are gone.
fn drain_time_wait(b: &LabHost, dst: &str) -> Result<()> {
    let started = std::time::Instant::now();
    loop {
        let out = rootless_lab::run(
            b.root_command("ss")
                .args(["-Htan", "state", "time-wait", "dst", dst]),
        )?;
        let waiting = out.lines().count();
        if waiting < 100 || started.elapsed() > Duration::from_secs(70) {
            eprintln!(
                "cross-host: {waiting} TIME_WAIT socket(s) towards {dst} left on host B after {:.0} s",
                started.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn iperf_args(target: &str, seconds: u32) -> String {
    format!("-c {target} -p {IPERF_PORT} -t {seconds} -O 1 -J --connect-timeout 5000")
}

fn connrate_args(target: &str, seconds: u32) -> String {
    format!("connrate {target}:{ACCEPT_PORT} --seconds {seconds}")
}

fn samples(iperf: &str, connrate: &str) -> Result<Vec<Sample>> {
    let v = last_json(connrate)?;
    Ok(vec![
        Sample::clean(Metric::CrossHostUp1, iperf_gbits(iperf)?),
        Sample {
            metric: Metric::CrossHostRate,
            value: number(&v, "per_s")?,
            problem: connrate_problem(&v),
        },
    ])
}

/// The clients run on host B itself, as its user.
fn measure_host(b: &LabHost, target: &str, seconds: u32) -> Result<Vec<Sample>> {
    let iperf = b.host_command(
        "iperf3",
        &iperf_args(target, seconds).split(' ').collect::<Vec<_>>(),
    )?;
    let labnet = b.lab.bin_dir().join("labnet");
    let connrate = b.host_command(
        labnet.to_str().context("lab path is not UTF-8")?,
        &connrate_args(target, seconds).split(' ').collect::<Vec<_>>(),
    )?;
    samples(&iperf, &connrate)
}

/// The clients run in a node of B, under its first process (where the
/// fast path's listener is).
fn measure_node(u: &U7s, target: &str, seconds: u32) -> Result<Vec<Sample>> {
    let run = |script: String| {
        let (rc, out) = u.job(&script, STEP);
        anyhow::ensure!(rc == 0, "in B's node: {script}: {out}");
        Ok(out)
    };
    let iperf = run(format!("iperf3 {}", iperf_args(target, seconds)))?;
    // Only iperf3's JSON document, whatever `u7s shell` printed around it.
    let iperf = iperf
        .find('{')
        .zip(iperf.rfind('}'))
        .map(|(s, e)| iperf[s..=e].to_owned())
        .with_context(|| format!("no iperf3 JSON from B's node: {iperf}"))?;
    let connrate = run(format!("labnet {}", connrate_args(target, seconds)))?;
    samples(&iperf, &connrate)
}
