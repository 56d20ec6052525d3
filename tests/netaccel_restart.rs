//! End-to-end: running containers survive the daemon. A rootless runc
//! container (slirp4netns) connects to a peer-host server in a loop while
//! the daemon is killed with SIGKILL and started again, stopped and
//! replaced by another binary, or not started again at all; and the same
//! with rootless Docker through the runtime wrapper, and with a
//! registration made through the bypass4netnsd API.

use std::path::Path;
use std::time::{Duration, Instant};

use rootless_lab::container::CONTAINER_ADDR;
use rootless_lab::docker::RootlessDocker;
use rootless_lab::{wait_for, workspace_bin, Container, ContainerConfig, DaemonProcess, Lab, PeerHost};
use serde_json::{json, Value};

/// What a daemon is given between two runs.
const GAP: Duration = Duration::from_secs(2);

struct Setup {
    lab: Lab,
    peer: PeerHost,
    labnet: std::path::PathBuf,
}

fn setup(test: &str) -> Option<Setup> {
    let lab = Lab::new_or_skip(test)?;
    let labnet = lab
        .install_bin(&workspace_bin("labnet").expect("labnet"))
        .expect("install labnet");
    let peer = PeerHost::create().expect("peer host");
    Some(Setup { lab, peer, labnet })
}

fn daemon_from(lab: &Lab, netaccel: &Path, args: &[&str]) -> DaemonProcess {
    DaemonProcess::start(lab, netaccel, args).expect("daemon starts")
}

/// Kills `d` with SIGKILL, as a crash would, and starts the same command
/// again `GAP` later.
fn crash_and_restart(lab: &Lab, d: &mut DaemonProcess) -> DaemonProcess {
    d.kill().expect("SIGKILL");
    std::thread::sleep(GAP);
    daemon_from(lab, &netaccel(), &[])
}

fn netaccel() -> std::path::PathBuf {
    workspace_bin("netaccel").expect("netaccel binary")
}

/// Starts `labnet connect-loop` to `addr` in a container with `profile`.
fn looping<'a>(s: &'a Setup, profile: Value, addr: &str, count: u32) -> Container<'a> {
    let config = ContainerConfig {
        seccomp: Some(profile),
        ..Default::default()
    };
    let count = count.to_string();
    let args = [
        "/lab/labnet",
        "connect-loop",
        addr,
        "--count",
        &count,
        "--interval-ms",
        "100",
    ];
    let c = Container::start(&s.lab, config, &args).expect("container starts");
    c.wait_for_line(r#""attempt":3,"#, Duration::from_secs(30))
        .expect("the loop runs");
    c
}

/// The loop's attempts and its summary.
struct Loop {
    attempts: Vec<Value>,
    summary: Value,
    text: String,
}

impl Loop {
    fn of(c: Container<'_>) -> Loop {
        let out = c.wait(Duration::from_secs(120)).expect("container ends");
        let lines: Vec<Value> = out
            .stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}\n{out:?}")))
            .collect();
        let (summary, attempts) = lines.split_last().unwrap_or_else(|| panic!("no output: {out:?}"));
        Loop {
            attempts: attempts.to_vec(),
            summary: summary.clone(),
            text: format!("{}{}", out.stdout, out.stderr),
        }
    }

    fn failed(&self) -> Vec<&Value> {
        self.attempts.iter().filter(|a| a["ok"] != true).collect()
    }

    /// The local address's IP of every attempt, in order.
    fn local_ips(&self) -> Vec<String> {
        self.attempts
            .iter()
            .map(|a| {
                let local = a["local"].as_str().unwrap_or_default();
                local.rsplit_once(':').map_or(local, |(ip, _)| ip).to_owned()
            })
            .collect()
    }
}

/// Waits (at most the issue's 2 s) until `d` has bypassed a connect to
/// `addr`; returns how long that took.
fn bypassing_again(d: &DaemonProcess, addr: &str) -> Duration {
    let since = Instant::now();
    wait_for("a bypass by the new daemon", Duration::from_secs(2), || {
        (d.bypassed_to(addr) > 0).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {}", d.log_text()));
    since.elapsed()
}

/// No connect of the loop failed, and its last ten went through `ip`.
fn assert_no_failure_and_last_through(run: &Loop, ip: &str) {
    assert!(
        run.failed().is_empty(),
        "failed connects: {:?}\n{}",
        run.failed(),
        run.text
    );
    assert_eq!(run.summary["failed"], 0, "{}", run.text);
    let ips = run.local_ips();
    assert!(
        ips.len() >= 10 && ips[ips.len() - 10..].iter().all(|i| i == ip),
        "the last connects did not go through {ip}: {ips:?}"
    );
}

#[test]
fn a_daemon_killed_mid_traffic_and_started_again_loses_no_connect() {
    let Some(s) = setup("a_daemon_killed_mid_traffic_and_started_again_loses_no_connect") else {
        return;
    };
    let mut d1 = daemon_from(&s.lab, &netaccel(), &[]);
    let (_server, addr) = s.peer.echo_server(&s.labnet, 7721).expect("peer echo server");
    let c = looping(&s, d1.profile(&s.lab, &[]).expect("profile"), &addr, 60);
    assert!(
        d1.bypassed_to(&addr) >= 3,
        "not on the fast path before: {}",
        d1.log_text()
    );

    let d2 = crash_and_restart(&s.lab, &mut d1);
    let restarted = Instant::now();
    wait_for("a bypass by the new daemon", Duration::from_secs(2), || {
        (d2.bypassed_to(&addr) > 0).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {}", d2.log_text()));
    eprintln!(
        "bypassed again {:?} after the new daemon listened",
        restarted.elapsed()
    );
    assert_eq!(
        d2.count_log("container re-attached from the keeper", &["accelerated=true"]),
        1,
        "{}",
        d2.log_text()
    );

    let run = Loop::of(c);
    let host = s.peer.host_addr.to_string();
    assert_no_failure_and_last_through(&run, &host);
    let ips = run.local_ips();
    // Nothing of the first daemon's decisions was lost or redone: every
    // attempt went through one daemon or the other.
    assert_eq!(
        d1.bypassed_to(&addr) + d2.bypassed_to(&addr),
        ips.iter().filter(|ip| **ip == host).count(),
        "{ips:?}"
    );
}

#[test]
fn an_upgrade_to_another_binary_keeps_containers_on_the_fast_path() {
    let Some(s) = setup("an_upgrade_to_another_binary_keeps_containers_on_the_fast_path") else {
        return;
    };
    let mut d1 = daemon_from(&s.lab, &netaccel(), &[]);
    let (_server, addr) = s.peer.echo_server(&s.labnet, 7722).expect("peer echo server");
    let c = looping(&s, d1.profile(&s.lab, &[]).expect("profile"), &addr, 50);

    // The new version: another executable file.
    let next = s.lab.path().join("netaccel-next");
    std::fs::copy(netaccel(), &next).expect("copy");
    d1.terminate().expect("SIGTERM");
    let d2 = daemon_from(&s.lab, &next, &[]);
    bypassing_again(&d2, &addr);
    let status = rootless_lab::run(
        s.lab
            .user_command(s.lab.bin_dir().join("netaccel-next"))
            .args(["status", "--json"]),
    )
    .expect("netaccel status");
    let status: Value = serde_json::from_str(&status).expect("status JSON");
    assert_eq!(status["containers"][0]["restored"], true, "{status}");
    assert_eq!(status["containers"][0]["accelerated"], true, "{status}");

    assert_no_failure_and_last_through(&Loop::of(c), &s.peer.host_addr.to_string());
}

#[test]
fn without_a_daemon_calls_wait_then_take_the_normal_path() {
    let Some(s) = setup("without_a_daemon_calls_wait_then_take_the_normal_path") else {
        return;
    };
    let wait = Duration::from_millis(1500);
    let mut d = daemon_from(&s.lab, &netaccel(), &["--keeper-wait", "1.5"]);
    let (_server, addr) = s.peer.echo_server(&s.labnet, 7723).expect("peer echo server");
    let c = looping(&s, d.profile(&s.lab, &[]).expect("profile"), &addr, 30);
    // A container with published ports holds host listeners: its connects
    // must not run unchecked.
    let guarded_profile = d.profile_with(&s.lab, &["-p", "18090:80"]).expect("profile");
    let guarded = looping(&s, guarded_profile, &addr, 30);
    d.kill().expect("SIGKILL");

    let run = Loop::of(c);
    assert_no_failure_and_last_through(&run, CONTAINER_ADDR);
    let slowest = run.summary["slowest_ms"].as_f64().unwrap_or(f64::MAX);
    assert!(
        slowest < (wait + Duration::from_secs(2)).as_secs_f64() * 1e3,
        "a connect waited {slowest} ms for a daemon that never came"
    );
    assert!(
        slowest >= wait.as_secs_f64() * 1e3 * 0.5,
        "no connect waited for the daemon at all ({slowest} ms): {}",
        run.text
    );

    let run = Loop::of(guarded);
    let failed = run.failed();
    assert!(!failed.is_empty(), "{}", run.text);
    assert!(failed.iter().all(|a| a["errno"] == libc::ENOSYS), "{failed:?}");
}

#[test]
fn host_listeners_bound_before_a_restart_are_reached_after_it() {
    let Some(s) = setup("host_listeners_bound_before_a_restart_are_reached_after_it") else {
        return;
    };
    let mut d1 = daemon_from(&s.lab, &netaccel(), &[]);
    let with_ports = |d: &DaemonProcess, publish: &str| ContainerConfig {
        seccomp: Some(d.profile_with(&s.lab, &["--publish", publish]).expect("profile")),
        ..Default::default()
    };
    let server = Container::start(
        &s.lab,
        with_ports(&d1, "17811:80"),
        &["/lab/labnet", "serve", "0.0.0.0:80", "--count", "1"],
    )
    .expect("server container");
    server
        .wait_for_line("listening", Duration::from_secs(15))
        .expect("server listening");
    let d2 = crash_and_restart(&s.lab, &mut d1);

    // Another container reaches that host listener through a host address:
    // the new daemon knows it only from the record the keeper held.
    let dst = format!("{}:17811", s.peer.host_addr);
    let out = Container::run(
        &s.lab,
        with_ports(&d2, "17812:81"),
        &["/lab/labnet", "connect", &dst, "--bytes", "100000"],
        Duration::from_secs(30),
    )
    .expect("client container");
    let r = out.last_json();
    assert_eq!(r["echo_intact"], true, "{r}");
    assert!(
        !r["local"]
            .as_str()
            .unwrap_or_default()
            .starts_with(CONTAINER_ADDR),
        "slirp4netns, not the host listener: {r}"
    );
    assert_eq!(d2.bypassed_to(&dst), 1, "{}", d2.log_text());
    let served = server.wait(Duration::from_secs(20)).expect("server exits");
    assert!(served.ok(), "{served:?}");
}

#[test]
fn bypass4netnsd_registrations_survive_a_restart() {
    let Some(s) = setup("bypass4netnsd_registrations_survive_a_restart") else {
        return;
    };
    let mut d1 = daemon_from(&s.lab, &netaccel(), &[]);
    let api = s.lab.runtime_dir().join("bypass4netnsd.sock");
    let socket = s
        .lab
        .runtime_dir()
        .join("bypass4netns")
        .join("0123456789abcde.sock");
    let spec = json!({"id": "0123456789abcdef", "socketPath": socket, "pidFilePath": "",
                      "logFilePath": "", "portMapping": [], "ignoreSubnets": ["auto"]});
    assert_eq!(http(&api, "POST", "/v1/bypass", &spec.to_string()).0, 201);
    let (_server, addr) = s.peer.echo_server(&s.labnet, 7724).expect("peer echo server");
    let mut profile = d1.profile(&s.lab, &[]).expect("profile");
    profile["listenerPath"] = json!(socket);
    let c = looping(&s, profile, &addr, 50);

    let d2 = crash_and_restart(&s.lab, &mut d1);
    let (code, body) = http(&api, "GET", "/v1/bypass", "");
    let list: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(
        (code, &list[0]["id"]),
        (200, &json!("0123456789abcdef")),
        "{body}"
    );
    assert_eq!(list[0]["pid"], d2.pid(), "{body}");

    assert_no_failure_and_last_through(&Loop::of(c), &s.peer.host_addr.to_string());
    assert!(d2.bypassed_to(&addr) > 0, "{}", d2.log_text());
    assert_eq!(http(&api, "DELETE", "/v1/bypass/0123456789abcdef", "").0, 200);
    assert!(!socket.exists());
}

#[test]
fn rootless_docker_containers_survive_a_daemon_restart() {
    let test = "rootless_docker_containers_survive_a_daemon_restart";
    let Some(lab) = Lab::with_docker_or_skip(test) else {
        return;
    };
    let peer = PeerHost::create().expect("peer host");
    let mut d1 = daemon_from(&lab, &netaccel(), &[]);
    let wrapper = lab.bin_dir().join("netaccel-runc");
    std::os::unix::fs::symlink(lab.bin_dir().join("netaccel"), &wrapper).expect("wrapper link");
    let docker = RootlessDocker::start(&lab, &[("netaccel", &wrapper)]).expect("rootless dockerd");
    docker.import_busybox("lab/busybox:1").expect("image");
    let (_server, httpd, expected) = peer
        .http_blob(&lab.path().join("www"), 7725, 200_000)
        .expect("httpd in the peer");

    let script = format!(
        "for i in $(seq 1 40); do wget -q -O - http://{httpd}/blob | sha256sum || echo FAILED; sleep 0.1; done"
    );
    let out = docker
        .docker(&[
            "run",
            "-d",
            "--runtime",
            "netaccel",
            "lab/busybox:1",
            "sh",
            "-c",
            &script,
        ])
        .expect("docker run");
    assert!(out.status.success(), "{out:?}\n{}", docker.log_text());
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    wait_for("the first downloads", Duration::from_secs(30), || {
        (d1.bypassed_to(&httpd) >= 3).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {}", d1.log_text()));
    let d2 = crash_and_restart(&lab, &mut d1);
    let waited = docker.docker(&["wait", &id]).expect("docker wait");
    assert_eq!(String::from_utf8_lossy(&waited.stdout).trim(), "0", "{waited:?}");
    let logs = docker.docker(&["logs", &id]).expect("docker logs");
    let logs = String::from_utf8_lossy(&logs.stdout).into_owned();
    assert_eq!(logs.lines().count(), 40, "{logs}");
    assert!(
        logs.lines().all(|l| l.contains(&expected)),
        "a download failed or differs:\n{logs}"
    );
    assert!(
        d2.bypassed_to(&httpd) > 0,
        "not bypassed after the restart: {}",
        d2.log_text()
    );
    let _ = docker.docker(&["rm", "-f", &id]);
}

fn http(socket: &Path, method: &str, path: &str, body: &str) -> (u16, String) {
    rootless_lab::unix_http(socket, method, path, body).expect("API request")
}
