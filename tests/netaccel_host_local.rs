//! End-to-end: connects to the host's own (non-loopback) addresses take the
//! fast path, on a host socket pinned to the interface that carries the
//! address, and such a socket can never be turned towards a server on host
//! loopback (127.0.0.1, ::1), whatever the container does with it. Real
//! rootless runc + slirp4netns containers and the daemon, as an
//! unprivileged user.

use std::time::Duration;

use rootless_lab::peer::Server;
use rootless_lab::{prereq, workspace_bin, Container, ContainerConfig, DaemonProcess, Lab, PeerHost};
use serde_json::Value;

struct Setup {
    lab: Lab,
    peer: PeerHost,
    daemon: DaemonProcess,
}

fn setup(test: &str) -> Option<Setup> {
    let lab = Lab::new_or_skip(test)?;
    lab.install_bin(&workspace_bin("labnet").expect("labnet"))
        .expect("install labnet");
    let peer = PeerHost::create().expect("peer host");
    let netaccel = workspace_bin("netaccel").expect("netaccel binary");
    let daemon = DaemonProcess::start(&lab, &netaccel, &[]).expect("daemon starts");
    Some(Setup { lab, peer, daemon })
}

/// Runs labnet in an accelerated container (profile flags `profile_args`)
/// and returns its last JSON line.
fn labnet_in(s: &Setup, profile_args: &[&str], args: &[&str], timeout: Duration) -> Value {
    let config = ContainerConfig {
        seccomp: Some(s.daemon.profile_with(&s.lab, profile_args).expect("profile")),
        ..Default::default()
    };
    let mut full = vec!["/lab/labnet"];
    full.extend_from_slice(args);
    Container::run(&s.lab, config, &full, timeout)
        .expect("container runs")
        .last_json()
}

/// The host's own addresses the peer link gives it (IPv4, and IPv6 when
/// the machine has it), with a port.
fn host_addresses(peer: &PeerHost, port: u16) -> Vec<String> {
    let mut out = vec![format!("{}:{port}", peer.host_addr)];
    if let Some(v6) = peer.addr6 {
        let mut host6 = v6.segments();
        host6[7] = 1;
        out.push(format!("[{}]:{port}", std::net::Ipv6Addr::from(host6)));
    }
    out
}

fn ip_of(addr: &str) -> String {
    let (ip, _) = addr.rsplit_once(':').expect("addr:port");
    ip.trim_matches(['[', ']']).to_owned()
}

/// A server on host loopback that counts the connections it accepts.
fn loopback_counter(lab: &Lab, addr: &str) -> (Server, String) {
    lab.labnet_server(&["accept-count", addr])
        .expect("host loopback server")
}

fn accepted(server: Server) -> Vec<String> {
    server
        .finish()
        .expect("server output")
        .lines()
        .filter(|l| l.contains("\"accepted\""))
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_server_on_the_hosts_own_address_is_reached_through_the_fast_path() {
    let Some(s) = setup("a_server_on_the_hosts_own_address_is_reached_through_the_fast_path") else {
        return;
    };
    for (i, listen) in host_addresses(&s.peer, 0).iter().enumerate() {
        let (server, addr) = s.lab.labnet_server(&["serve", listen]).expect("host server");
        let r = labnet_in(
            &s,
            &[],
            &["connect", &addr, "--bytes", "1000000"],
            Duration::from_secs(30),
        );
        assert_eq!(r["echo_intact"], true, "{r}");
        // A host socket: its local address is the host's own, where
        // slirp4netns would have shown the container's.
        let local = r["local"].as_str().unwrap_or_default();
        assert_eq!(
            ip_of(local),
            ip_of(&addr),
            "not a host socket: {r}\n{}",
            s.daemon.log_text()
        );
        assert_eq!(
            s.daemon.bypassed_to(&addr),
            1,
            "daemon log:\n{}",
            s.daemon.log_text()
        );
        // The server saw exactly the container's socket as its peer.
        let seen = server.finish().expect("server output");
        let peers: Vec<Value> = seen
            .lines()
            .map(|l| serde_json::from_str(l).expect("line"))
            .collect();
        assert_eq!(peers.len(), 1, "{seen}");
        assert_eq!(peers[0]["peer"], local, "{seen}");
        assert_eq!(peers[0]["bytes"], 1_000_000, "{seen}");
        eprintln!("address {i}: {addr} reached from {local} on the fast path");
    }
}

#[test]
fn a_socket_to_the_hosts_own_address_cannot_be_turned_towards_host_loopback() {
    let test = "a_socket_to_the_hosts_own_address_cannot_be_turned_towards_host_loopback";
    let Some(s) = setup(test) else { return };
    // 100 000 racing rounds by hand (`cargo test`), fewer in CI's run.
    let races = std::env::var("NETACCEL_REAIM_RACES")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(if prereq::in_ci() { 20_000 } else { 100_000 });
    let (evil4, evil4_addr) = loopback_counter(&s.lab, "127.0.0.1:0");
    let has_v6 = s.peer.addr6.is_some();
    let evil6 = has_v6.then(|| loopback_counter(&s.lab, "[::1]:0"));
    for good_listen in host_addresses(&s.peer, 0) {
        let v6 = good_listen.starts_with('[');
        let evil_addr = match (&evil6, v6) {
            (Some((_, a)), true) => a.clone(),
            _ => evil4_addr.clone(),
        };
        let (_good, good) = s
            .lab
            .labnet_server(&["serve", &good_listen])
            .expect("host server");
        let races_s = races.to_string();
        let mut args = vec!["host-reaim", &good, &evil_addr, "--races", &races_s];
        // An IPv6 socket may also aim at IPv4 loopback, v4-mapped.
        let mapped = format!(
            "[::ffff:127.0.0.1]:{}",
            evil4_addr.rsplit(':').next().expect("port")
        );
        if v6 {
            args.insert(3, &mapped);
        }
        let r = labnet_in(&s, &[], &args, Duration::from_secs(300));
        eprintln!("{r}");
        assert_eq!(r["echo"], true, "{r}");
        assert_eq!(
            ip_of(r["local"].as_str().unwrap_or_default()),
            ip_of(&good),
            "not bypassed: {r}"
        );
        assert_eq!(
            s.daemon.bypassed_to(&good),
            1,
            "daemon log:\n{}",
            s.daemon.log_text()
        );
        // Every attempt fails or goes nowhere; none may reach EVIL (counted
        // by the servers below). What each gets is printed for the README's
        // threat table; the kernel's own answers where the socket is simply
        // connected, and the pin wherever it is not.
        let a = &r["attempts"];
        let targets = if v6 { 2 } else { 1 };
        // Connected, it refuses another destination; the attempts that
        // follow find it disconnected.
        assert_eq!(a["connect_0"], libc::EISCONN, "{r}");
        assert_eq!(a["peer_after_connect_0"], good.as_str(), "{r}");
        for i in 0..targets {
            assert_eq!(a[format!("disconnect_{i}")], 0, "the kernel disconnects it: {r}");
            assert_ne!(a[format!("connect_after_disconnect_{i}")], 0, "{r}");
            assert_ne!(a[format!("sendto_fastopen_{i}")], 0, "{r}");
        }
        // io_uring may report 0 here: TCP_FASTOPEN_CONNECT (set above) defers
        // the SYN, which then leaves through the pinned interface, on link.
        assert!(a["io_uring_connect"].is_number(), "{r}");
        assert_eq!(r["races"], races, "{r}");
        assert!(r["swaps"].as_u64().unwrap_or(0) > 0, "the swapper never ran: {r}");
        let host_socket = r["host_socket"].as_str().unwrap_or_default();
        assert!(
            host_socket == "still connected to good" || !host_socket.ends_with(", then connected"),
            "a disconnected host socket completed a connection: {r}"
        );
    }
    let mut reached = accepted(evil4);
    if let Some((evil6, _)) = evil6 {
        reached.extend(accepted(evil6));
    }
    assert!(reached.is_empty(), "host loopback was reached: {reached:?}");
}

#[test]
fn udp_to_the_hosts_own_address_is_bypassed_and_stays_pinned() {
    let test = "udp_to_the_hosts_own_address_is_bypassed_and_stays_pinned";
    let Some(s) = setup(test) else { return };
    let (evil, evil_addr) = s
        .lab
        .labnet_server(&["udp-echo", "127.0.0.1:0"])
        .expect("loopback udp");
    for listen in host_addresses(&s.peer, 0) {
        let (_udp, udp_addr) = s.lab.labnet_server(&["udp-echo", &listen]).expect("udp echo");
        let r = labnet_in(&s, &[], &["udp-connect", &udp_addr], Duration::from_secs(30));
        assert_eq!(
            ip_of(r["local"].as_str().unwrap_or_default()),
            ip_of(&udp_addr),
            "a host socket: {r}\n{}",
            s.daemon.log_text()
        );
        assert_eq!(
            s.daemon.bypassed_to(&udp_addr),
            1,
            "daemon log:\n{}",
            s.daemon.log_text()
        );
        if !udp_addr.starts_with('[') {
            // Re-connected and sent to host loopback: the pin keeps it away.
            let r = labnet_in(
                &s,
                &[],
                &["udp-reaim", &udp_addr, &evil_addr],
                Duration::from_secs(30),
            );
            eprintln!("{r}");
        }
    }
    let seen = evil.finish().expect("loopback udp output");
    assert!(
        !seen.lines().skip(1).any(|l| !l.trim().is_empty()),
        "a datagram reached host loopback: {seen}"
    );
}
