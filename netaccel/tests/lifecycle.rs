//! The daemon's lifecycle: pid file, `netaccel status` over the API socket,
//! clean shutdown on SIGTERM, and the systemd user unit.

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use netaccel::sys::fdpass::send_with_fds;
use rootless_lab::seccomp::notify_connect_on_this_thread;
use rootless_lab::wait_for;

const NETACCEL: &str = env!("CARGO_BIN_EXE_netaccel");

fn status(api: &std::path::Path) -> serde_json::Value {
    let out = Command::new(NETACCEL)
        .args(["status", "--json", "--api-socket"])
        .arg(api)
        .output()
        .expect("status");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("status JSON")
}

#[test]
fn pid_file_status_and_clean_shutdown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (socket, api, pid_file) = (
        dir.path().join("n.sock"),
        dir.path().join("api.sock"),
        dir.path().join("n.pid"),
    );
    let mut daemon = Command::new(NETACCEL)
        .args(["daemon", "--socket"])
        .arg(&socket)
        .arg("--api-socket")
        .arg(&api)
        .arg("--pid-file")
        .arg(&pid_file)
        .args(["--ignore", "10.96.0.0/16"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("daemon");
    wait_for("the pid file", Duration::from_secs(10), || {
        (pid_file.exists() && api.exists()).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .expect("pid")
        .trim()
        .parse()
        .expect("number");
    assert_eq!(pid, daemon.id());
    let s = status(&api);
    assert_eq!(s["pid"], pid);
    assert_eq!(s["containers"], serde_json::json!([]));
    // u7s reads the daemon-wide ignore list (nerdctl 1.x cannot pass one).
    assert!(
        s["ignore"]
            .as_array()
            .is_some_and(|l| l.contains(&serde_json::json!("10.96.0.0/16"))),
        "{s}"
    );

    // A registration from a thread in the daemon's own namespace is served
    // without acceleration; status lists it while its filter lives.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let sock = socket.clone();
    std::thread::spawn(move || {
        let stream = UnixStream::connect(&sock).expect("connect");
        let notify = notify_connect_on_this_thread().expect("filter");
        let state = serde_json::json!({"ociVersion": "1.0.2", "fds": ["seccompFd"], "pid": std::process::id(),
            "metadata": "", "state": {"id": "status-test", "pid": std::process::id()}});
        send_with_fds(&stream, state.to_string().as_bytes(), &[notify.as_fd()]).expect("send");
        drop(stream);
        let _ = std::net::TcpStream::connect("127.0.0.1:9");
        tx.send(()).expect("signal");
        let _ = done_rx.recv();
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("registered thread connected");
    let s = status(&api);
    let c = &s["containers"][0];
    assert_eq!(
        (c["id"].as_str(), c["accelerated"].as_bool(), c["kept"].as_u64()),
        (Some("status-test"), Some(false), Some(1)),
        "{s}"
    );
    let table = Command::new(NETACCEL)
        .args(["status", "--api-socket"])
        .arg(&api)
        .output()
        .expect("status");
    assert!(
        String::from_utf8_lossy(&table.stdout).contains("status-test"),
        "{table:?}"
    );
    let _ = done_tx.send(());

    // SAFETY: signals the daemon child we started.
    assert_eq!(unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) }, 0);
    let code = daemon.wait().expect("exit");
    assert!(code.success(), "{code}");
    assert!(
        !pid_file.exists() && !socket.exists() && !api.exists(),
        "left behind after SIGTERM"
    );

    let out = Command::new(NETACCEL)
        .args(["status", "--api-socket"])
        .arg(&api)
        .output()
        .expect("status");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is `netaccel daemon` running?"),
        "{out:?}"
    );
}

/// The soft and hard "Max open files" of process `pid`.
fn open_file_limits(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("open files line");
    let values: Vec<u64> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    (values[0], values[1])
}

#[test]
fn the_daemon_raises_its_open_file_limit() {
    // Started with the usual low soft limit; prlimit (util-linux) execs the
    // daemon in place, so the pid is the daemon's.
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("n.sock");
    let mut daemon = Command::new("prlimit")
        .args(["--nofile=64:", "--", NETACCEL, "daemon", "--no-api", "--socket"])
        .arg(&socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prlimit (util-linux) runs the daemon");
    wait_for("the daemon socket", Duration::from_secs(10), || {
        socket.exists().then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let (soft, hard) = open_file_limits(daemon.id());
    // SAFETY: signals the daemon child we started.
    assert_eq!(unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) }, 0);
    let _ = daemon.wait();
    assert!(hard > 64, "hard limit {hard}");
    assert_eq!(soft, hard, "soft limit raised to the hard one");
}

#[test]
fn unit_runs_this_binary_as_a_daemon() {
    let out = Command::new(NETACCEL).arg("unit").output().expect("unit");
    let unit = String::from_utf8_lossy(&out.stdout);
    assert!(
        unit.contains(&format!(
            "ExecStart={NETACCEL} daemon --pid-file %t/netaccel/netaccel.pid"
        )),
        "{unit}"
    );
    assert!(unit.contains("[Install]\nWantedBy=default.target"), "{unit}");
    // Restarted whatever ended it, and only the daemon is stopped: the
    // keeper it started holds the containers' notify fds meanwhile.
    assert!(unit.contains("\nRestart=always\n"), "{unit}");
    assert!(unit.contains("\nKillMode=process\n"), "{unit}");
}
