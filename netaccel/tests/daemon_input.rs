//! Bad registrations never take the daemon down, and processes whose
//! registration cannot be trusted keep working (their syscalls continue).
//!
//! Real notify fds come from a seccomp filter loaded on one test thread only
//! (`rootless_lab::seccomp`), so only that thread's connect(2) is notified.

mod common;

use std::io::Write;
use std::net::TcpListener;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use common::Daemon;
use netaccel::sys::fdpass::send_with_fds;
use rootless_lab::seccomp::notify_connect_on_this_thread;

fn state_json(pid: u32, fds: &[&str]) -> Vec<u8> {
    serde_json::json!({
        "ociVersion": "1.0.2", "fds": fds, "pid": pid, "metadata": "",
        "state": {"ociVersion": "1.0.2", "id": "t", "status": "creating", "pid": pid, "bundle": "/"}
    })
    .to_string()
    .into_bytes()
}

/// On a fresh thread: connect to the daemon, load a connect-notify filter on
/// this thread alone, send `payload` with the notify fd (plus `extra` fds),
/// then connect(2) to a local listener. Returns whether that connect
/// succeeded within 10 s (a daemon that never answers would hang it).
fn registered_thread_connects(socket: &Path, payload: Vec<u8>, extra_devnull: usize) -> bool {
    registered_thread_connects_with(socket, payload, extra_devnull, false)
}

/// As [`registered_thread_connects`]; with `keep_open` the registration's
/// connection stays open during the connect, as runc leaves it.
fn registered_thread_connects_with(
    socket: &Path,
    payload: Vec<u8>,
    extra_devnull: usize,
    keep_open: bool,
) -> bool {
    let listener = TcpListener::bind("127.0.0.1:0").expect("listener");
    let target = listener.local_addr().expect("addr");
    let socket = socket.to_owned();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // Connected before the filter exists: this connect is not notified.
        let stream = UnixStream::connect(&socket).expect("connect daemon");
        let notify = notify_connect_on_this_thread().expect("seccomp notify filter");
        let devnull = std::fs::File::open("/dev/null").expect("devnull");
        let mut fds = vec![notify.as_fd()];
        fds.extend(std::iter::repeat_n(devnull.as_fd(), extra_devnull));
        send_with_fds(&stream, &payload, &fds).expect("send registration");
        let open = keep_open.then_some(stream);
        let result = std::net::TcpStream::connect(target);
        drop(open);
        if let Err(e) = &result {
            eprintln!("connect from the registered thread failed: {e}");
        }
        let _ = tx.send(result.is_ok());
    });
    rx.recv_timeout(Duration::from_secs(10)).unwrap_or(false)
}

#[test]
fn malformed_state_json_is_served_pass_through() {
    let mut d = Daemon::start(false, &["--log-level", "debug"]);
    assert!(registered_thread_connects(&d.socket, b"{not json".to_vec(), 0));
    d.wait_log("bad registration");
    d.assert_alive("the bad input");
}

#[test]
fn oversized_state_is_served_pass_through() {
    let mut d = Daemon::start(false, &["--log-level", "debug"]);
    // One JSON value larger than the limit (the daemon stops reading at a
    // whole value, so the size must be inside it).
    let mut state: serde_json::Value =
        serde_json::from_slice(&state_json(std::process::id(), &["seccompFd"])).expect("json");
    state["metadata"] = "x".repeat(netaccel::daemon::MAX_STATE_LEN + 4096).into();
    let big = state.to_string().into_bytes();
    assert!(registered_thread_connects(&d.socket, big, 0));
    d.wait_log("larger than 1 MiB");
    d.assert_alive("the bad input");
}

#[test]
fn several_fds_are_served_pass_through_and_extras_closed() {
    let mut d = Daemon::start(false, &["--log-level", "debug"]);
    let payload = state_json(std::process::id(), &["seccompFd"]);
    assert!(registered_thread_connects(&d.socket, payload, 2));
    d.wait_log("not a seccomp notify fd");
    d.wait_log("fd(s) came with it");
    d.assert_alive("the bad input");
}

#[test]
fn a_valid_registration_from_the_host_namespace_keeps_working() {
    let mut d = Daemon::start(false, &["--log-level", "debug"]);
    let payload = state_json(std::process::id(), &["seccompFd"]);
    assert!(registered_thread_connects(&d.socket, payload, 0));
    d.wait_log("shares the daemon's network namespace");
    d.assert_alive("the bad input");
}

#[test]
fn a_registration_whose_sender_keeps_the_connection_open_is_served_at_once() {
    // runc closes its connection to the agent only when its process exits;
    // `runc run` lives as long as the container. The daemon must act on the
    // whole message, not wait for EOF (which would deadlock both).
    let mut d = Daemon::start(false, &["--log-level", "debug"]);
    let payload = state_json(std::process::id(), &["seccompFd"]);
    assert!(
        registered_thread_connects_with(&d.socket, payload, 0, true),
        "the notified connect was not answered while the registration stayed open:\n{}",
        d.log()
    );
    d.wait_log("shares the daemon's network namespace");
    assert!(!d.log().contains("registration timed out"), "{}", d.log());
    d.assert_alive("the bad input");
}

#[test]
fn messages_without_a_notify_fd_are_logged_and_dropped() {
    let mut d = Daemon::start(false, &["--log-level", "debug"]);
    // No fd at all.
    let mut s = UnixStream::connect(&d.socket).expect("connect");
    s.write_all(&state_json(1, &["seccompFd"])).expect("write");
    drop(s);
    d.wait_log("registration without a seccomp notify fd");
    // An fd that is not a notify fd.
    let s = UnixStream::connect(&d.socket).expect("connect");
    let devnull = std::fs::File::open("/dev/null").expect("devnull");
    send_with_fds(&s, &state_json(1, &["seccompFd"]), &[devnull.as_fd()]).expect("send");
    drop(s);
    d.wait_log("not a seccomp notify fd");
    // Garbage bytes, then a client that connects and sends nothing at all.
    let mut s = UnixStream::connect(&d.socket).expect("connect");
    s.write_all(&[0xff; 3000]).expect("write");
    drop(s);
    let idle = UnixStream::connect(&d.socket).expect("connect");
    // The daemon still registers others while one client idles.
    assert!(registered_thread_connects(&d.socket, b"[]".to_vec(), 0));
    drop(idle);
    d.assert_alive("the bad input");
}

#[test]
fn a_second_daemon_on_the_same_socket_is_refused() {
    let d = Daemon::start(false, &["--log-level", "debug"]);
    let out = Command::new(env!("CARGO_BIN_EXE_netaccel"))
        .args(["daemon", "--no-api", "--socket"])
        .arg(&d.socket)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already listening"), "{err}");
}

#[test]
fn profile_command_renders_the_committed_profiles() {
    for (extra, file) in [
        (&[][..], "netaccel-connect.json"),
        (&["--publish", "8080:80"][..], "netaccel-publish-8080-80.json"),
    ] {
        let socket = ["profile", "--socket", "/run/user/1000/netaccel/netaccel.sock"];
        let out = Command::new(env!("CARGO_BIN_EXE_netaccel"))
            .args(socket)
            .args(extra)
            .output()
            .expect("run");
        assert!(out.status.success());
        let path = format!("{}/../seccomp-profiles/{file}", env!("CARGO_MANIFEST_DIR"));
        let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            committed,
            "regenerate with: netaccel {} {} > seccomp-profiles/{file}",
            socket.join(" "),
            extra.join(" ")
        );
    }
}

#[test]
fn profile_without_runtime_dir_says_what_to_do() {
    let out = Command::new(env!("CARGO_BIN_EXE_netaccel"))
        .arg("profile")
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("pass --socket"));
}
