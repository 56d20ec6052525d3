//! End-to-end: the connect fast path with real rootless runc containers,
//! slirp4netns and the netaccel daemon, all as an unprivileged user.

use std::time::Duration;

use rootless_lab::container::{Launch, RunOutput};
use rootless_lab::container::{CONTAINER_ADDR, SLIRP_HOST_LOOPBACK};
use rootless_lab::peer::Server;
use rootless_lab::{workspace_bin, Container, ContainerConfig, DaemonProcess, Lab, PeerHost};
use serde_json::Value;

struct Setup {
    lab: Lab,
    peer: PeerHost,
    labnet_host: std::path::PathBuf,
}

fn setup(test: &str) -> Option<Setup> {
    let lab = Lab::new_or_skip(test)?;
    let labnet_host = lab
        .install_bin(&workspace_bin("labnet").expect("labnet"))
        .expect("install labnet");
    let peer = PeerHost::create().expect("peer host");
    Some(Setup {
        lab,
        peer,
        labnet_host,
    })
}

fn daemon(lab: &Lab, args: &[&str]) -> DaemonProcess {
    let netaccel = workspace_bin("netaccel").expect("netaccel binary");
    DaemonProcess::start(lab, &netaccel, args).expect("daemon starts")
}

/// Runs `args` in a new container that uses the daemon `d`.
fn run_accelerated(lab: &Lab, d: &DaemonProcess, ignore: &[&str], args: &[&str]) -> RunOutput {
    let profile = d.profile(lab, ignore).expect("netaccel profile");
    let config = ContainerConfig {
        seccomp: Some(profile),
        ..Default::default()
    };
    Container::run(lab, config, args, Duration::from_secs(60)).expect("container runs")
}

fn json_line(out: &str) -> Value {
    serde_json::from_str(out.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {out:?}"))
}

/// Runs labnet in a new accelerated container and returns its JSON answer.
fn labnet_in(s: &Setup, d: &DaemonProcess, ignore: &[&str], args: &[&str]) -> Value {
    let mut full = vec!["/lab/labnet"];
    full.extend_from_slice(args);
    let out = run_accelerated(&s.lab, d, ignore, &full);
    if out.stdout.is_empty() {
        panic!(
            "labnet {args:?} printed nothing (exit {:?}): {}",
            out.code, out.stderr
        );
    }
    json_line(&out.stdout)
}

fn peer_echo(s: &Setup, port: u16) -> (Server, String) {
    s.peer
        .echo_server(&s.labnet_host, port)
        .expect("peer echo server")
}

/// An echo server on the host's loopback (where containers must never land
/// through netaccel), run as the test user; returns it and its address.
fn host_loopback_server(s: &Setup) -> (Server, String) {
    s.lab
        .labnet_server(&["serve", "127.0.0.1:0"])
        .expect("host loopback server")
}

/// A listener in the peer whose full accept queue drops SYNs: connects to
/// it hang.
fn peer_blackhole(s: &Setup, port: u16) -> (Server, String) {
    let labnet = s.labnet_host.to_str().expect("utf-8 path");
    let addr = format!("{}:{port}", s.peer.addr);
    let mut hole = s.peer.spawn(labnet, &["blackhole", &addr]).expect("blackhole");
    hole.listening().expect("blackhole ready");
    (hole, addr)
}

#[test]
fn connection_to_a_host_side_server_is_bypassed_with_data_intact() {
    let Some(s) = setup("connection_to_a_host_side_server_is_bypassed_with_data_intact") else {
        return;
    };
    let d = daemon(&s.lab, &[]);
    let (server, addr) = peer_echo(&s, 7701);

    // labnet connects with a non-blocking connect + poll (connect_timeout).
    let r = labnet_in(&s, &d, &[], &["connect", &addr, "--bytes", "4000000"]);
    assert_eq!(r["echo_intact"], true, "{r}");
    assert_eq!(r["peer"], addr.as_str(), "getpeername shows the destination: {r}");
    // The container's socket is a host socket: its local address is the host's.
    assert_eq!(
        r["local"].as_str().unwrap_or_default().split(':').next(),
        Some(s.peer.host_addr.to_string().as_str()),
        "{r}"
    );
    assert_eq!(d.bypassed_to(&addr), 1, "daemon log:\n{}", d.log_text());
    // The same with a blocking connect (the daemon waits without a thread).
    let r = labnet_in(
        &s,
        &d,
        &[],
        &["connect", "--blocking", &addr, "--bytes", "100000"],
    );
    assert_eq!(r["echo_intact"], true, "{r}");
    assert_eq!(d.bypassed_to(&addr), 2, "daemon log:\n{}", d.log_text());
    let seen = server.finish().expect("server output");
    let conns: Vec<Value> = seen
        .lines()
        .map(|l| serde_json::from_str(l).expect("server line"))
        .collect();
    assert_eq!(
        conns.iter().map(|c| c["bytes"].clone()).collect::<Vec<_>>(),
        [4_000_000, 100_000],
        "{seen}"
    );
    for conn in conns {
        // The server sees the host's address as peer, not slirp4netns's loopback.
        assert!(
            conn["peer"]
                .as_str()
                .unwrap_or_default()
                .starts_with(&format!("{}:", s.peer.host_addr)),
            "{conn}"
        );
    }
}

/// Runs labnet's echo check against a peer server on `port` in a container
/// launched as `launch` with `seccomp`; the connect must be bypassed, and
/// the registration served without the daemon's timeout.
fn echo_bypassed_when_launched(s: &Setup, d: &DaemonProcess, seccomp: Value, launch: Launch, port: u16) {
    let (_server, addr) = peer_echo(s, port);
    let config = ContainerConfig {
        seccomp: Some(seccomp),
        launch,
        ..Default::default()
    };
    let started = std::time::Instant::now();
    let out = Container::run(
        &s.lab,
        config,
        &["/lab/labnet", "connect", &addr, "--bytes", "100000"],
        Duration::from_secs(60),
    )
    .expect("container runs");
    let took = started.elapsed();
    assert!(
        !out.stdout.is_empty(),
        "labnet printed nothing (exit {:?}): {}",
        out.code,
        out.stderr
    );
    let r = json_line(&out.stdout);
    let log = d.log_text();
    assert_eq!(r["echo_intact"], true, "{r}\ndaemon log:\n{log}");
    assert_eq!(d.bypassed_to(&addr), 1, "daemon log:\n{log}");
    assert!(!log.contains("registration timed out"), "took {took:?}:\n{log}");
}

#[test]
fn runc_run_registers_at_once_and_serves_connects() {
    // `runc run` is one process for the container's whole life and never
    // closes its connection to the daemon: a daemon waiting for EOF left
    // the container's first connect hanging, then failing with ENOSYS.
    let Some(s) = setup("runc_run_registers_at_once_and_serves_connects") else {
        return;
    };
    let d = daemon(&s.lab, &[]);
    let profile = d.profile(&s.lab, &[]).expect("netaccel profile");
    echo_bypassed_when_launched(&s, &d, profile, Launch::Run, 7711);
}

#[test]
fn a_profile_that_notifies_close_and_fcntl_registers_at_once() {
    // nerdctl's bypass4netns profile also notifies close, fcntl and more;
    // runc init makes such calls after loading the filter, while `runc
    // create` (the daemon's peer) waits for init: the daemon must serve
    // them before the runtime's connection closes.
    let Some(s) = setup("a_profile_that_notifies_close_and_fcntl_registers_at_once") else {
        return;
    };
    let d = daemon(&s.lab, &[]);
    let mut profile = d.profile(&s.lab, &[]).expect("netaccel profile");
    profile["syscalls"]
        .as_array_mut()
        .expect("syscalls")
        .push(serde_json::json!({"names": ["close", "fcntl", "setsockopt"], "action": "SCMP_ACT_NOTIFY"}));
    echo_bypassed_when_launched(&s, &d, profile, Launch::CreateStart, 7712);
}

#[test]
fn real_programs_use_the_fast_path() {
    let Some(s) = setup("real_programs_use_the_fast_path") else {
        return;
    };
    let d = daemon(&s.lab, &[]);

    // busybox wget (blocking connect) fetches a file from busybox httpd.
    let (_httpd, httpd_addr, expected) = s
        .peer
        .http_blob(&s.lab.path().join("www"), 7702, 3_000_000)
        .expect("httpd in the peer");
    let fetch = format!("busybox wget -q -O - http://{httpd_addr}/blob | busybox sha256sum");
    let out = run_accelerated(&s.lab, &d, &[], &["sh", "-c", &fetch]);
    assert!(out.ok(), "wget in container: {out:?}");
    assert_eq!(out.stdout.split_whitespace().next(), Some(expected.as_str()));
    assert_eq!(d.bypassed_to(&httpd_addr), 1, "daemon log:\n{}", d.log_text());

    // iperf3, both directions over one bypassed control + data connection.
    let iperf_addr = s.peer.addr.to_string();
    let _iperf = s
        .peer
        .spawn("iperf3", &["-s", "-B", &iperf_addr, "-p", "7703"])
        .expect("iperf3 server");
    std::thread::sleep(Duration::from_millis(300));
    for reverse in [false, true] {
        let mut args = vec!["iperf3", "-c", &iperf_addr, "-p", "7703", "-t", "1", "-J"];
        if reverse {
            args.push("-R");
        }
        let out = run_accelerated(&s.lab, &d, &[], &args);
        assert!(out.ok(), "iperf3 client: {out:?}");
        let out = out.stdout;
        let v: Value = serde_json::from_str(&out).expect("iperf3 JSON");
        let bps = v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .unwrap_or(0.0);
        assert!(bps > 0.0, "no throughput (reverse={reverse}): {out}");
    }
    assert!(
        d.bypassed_to(&format!("{iperf_addr}:7703")) >= 4,
        "daemon log:\n{}",
        d.log_text()
    );
}

#[test]
fn ignored_destinations_keep_the_slirp4netns_path() {
    let Some(s) = setup("ignored_destinations_keep_the_slirp4netns_path") else {
        return;
    };
    let d = daemon(&s.lab, &[]);

    // 10.0.2.2 is in the container's own subnet (read from its namespace by
    // netlink): slirp4netns carries it to the host's loopback.
    let (host_server, host_addr) = host_loopback_server(&s);
    let port = host_addr.rsplit(':').next().expect("port").to_owned();
    let via_gateway = format!("{SLIRP_HOST_LOOPBACK}:{port}");
    let r = labnet_in(&s, &d, &[], &["connect", &via_gateway]);
    assert_eq!(r["echo_intact"], true, "{r}");
    assert!(
        r["local"]
            .as_str()
            .unwrap_or_default()
            .starts_with(CONTAINER_ADDR),
        "{r}"
    );
    assert_eq!(d.bypassed_to(&via_gateway), 0);
    let seen = host_server.finish().expect("server output");
    assert!(
        seen.contains("\"peer\":\"127.0.0.1:"),
        "slirp4netns connects from loopback: {seen}"
    );

    // A CIDR in the container's own listenerMetadata.
    let (_server, addr) = peer_echo(&s, 7704);
    let r = labnet_in(&s, &d, &[&s.peer.subnet], &["connect", &addr]);
    assert_eq!(r["echo_intact"], true, "{r}");
    assert!(
        r["local"]
            .as_str()
            .unwrap_or_default()
            .starts_with(CONTAINER_ADDR),
        "{r}"
    );
    assert_eq!(d.bypassed_to(&addr), 0, "daemon log:\n{}", d.log_text());
    // The same destination from a container without that setting is bypassed.
    let r = labnet_in(&s, &d, &[], &["connect", &addr]);
    assert!(
        r["local"]
            .as_str()
            .unwrap_or_default()
            .starts_with(&s.peer.host_addr.to_string()),
        "{r}"
    );
    assert_eq!(d.bypassed_to(&addr), 1);
}

#[test]
fn daemon_wide_ignore_keeps_the_slirp4netns_path() {
    let Some(s) = setup("daemon_wide_ignore_keeps_the_slirp4netns_path") else {
        return;
    };
    let d = daemon(&s.lab, &["--ignore", &s.peer.subnet]);
    let (_server, addr) = peer_echo(&s, 7705);
    let r = labnet_in(&s, &d, &[], &["connect", &addr]);
    assert_eq!(r["echo_intact"], true, "{r}");
    assert!(
        r["local"]
            .as_str()
            .unwrap_or_default()
            .starts_with(CONTAINER_ADDR),
        "{r}"
    );
    assert_eq!(d.bypassed_to(&addr), 0, "daemon log:\n{}", d.log_text());
}

#[test]
fn socket_from_a_nested_network_namespace_is_never_bypassed() {
    let Some(s) = setup("socket_from_a_nested_network_namespace_is_never_bypassed") else {
        return;
    };
    let d = daemon(&s.lab, &[]);
    let (_server, addr) = peer_echo(&s, 7706);

    // A fresh namespace inside the container has no route to the peer; the
    // Go tool would hand it a host socket and the connect would succeed.
    let out = run_accelerated(
        &s.lab,
        &d,
        &[],
        &["unshare", "--net", "/lab/labnet", "connect", &addr],
    );
    let r = json_line(&out.stdout);
    assert_eq!(
        r["errno"],
        libc::ENETUNREACH,
        "nested namespace reached the peer: {r}"
    );
    assert_eq!(d.bypassed_to(&addr), 0, "daemon log:\n{}", d.log_text());

    // Control: the container's own namespace is bypassed.
    let r = labnet_in(&s, &d, &[], &["connect", &addr]);
    assert_eq!(r["echo_intact"], true, "{r}");
    assert_eq!(d.bypassed_to(&addr), 1);
}

#[test]
fn rewriting_the_sockaddr_after_the_check_never_reaches_host_loopback() {
    let Some(s) = setup("rewriting_the_sockaddr_after_the_check_never_reaches_host_loopback") else {
        return;
    };
    let d = daemon(&s.lab, &[]);
    let (_server, good) = peer_echo(&s, 7707);
    // A server on the host's loopback, where no container may ever land.
    let (evil_server, evil) = host_loopback_server(&s);

    let r = labnet_in(&s, &d, &[], &["race", &good, &evil, "--iterations", "1500"]);
    let seen = evil_server.finish().expect("server output");
    assert!(
        !seen.contains("\"peer\""),
        "a container connection reached host loopback: {seen}\n{r}"
    );
    assert_eq!(r["to_evil"], 0, "{r}");
    assert!(
        r["to_good"].as_u64().unwrap_or(0) > 0,
        "the race never took the fast path: {r}"
    );
    assert!(
        r["flips"].as_u64().unwrap_or(0) > 1000,
        "the address was not rewritten concurrently: {r}"
    );
}

#[test]
fn raw_sockets_keep_the_container_path() {
    let Some(s) = setup("raw_sockets_keep_the_container_path") else {
        return;
    };
    let d = daemon(&s.lab, &[]);
    // SOCK_RAW (3) shares a bit with SOCK_STREAM (1): an exact check keeps it.
    let r = labnet_in(&s, &d, &[], &["raw-connect", &s.peer.addr.to_string()]);
    assert_eq!(r["local"], CONTAINER_ADDR, "{r}");
    assert_eq!(
        d.bypassed_to(&format!("{}:0", s.peer.addr)),
        0,
        "daemon log:\n{}",
        d.log_text()
    );
}

#[test]
fn a_slow_connect_does_not_stall_other_threads() {
    let Some(s) = setup("a_slow_connect_does_not_stall_other_threads") else {
        return;
    };
    let d = daemon(&s.lab, &[]);
    let (_server, fast) = peer_echo(&s, 7708);
    let (_hole, slow) = peer_blackhole(&s, 7709);

    let r = labnet_in(&s, &d, &[], &["threads", &slow, &fast]);
    assert_eq!(r["fast_ok"], true, "{r}");
    assert_eq!(r["slow_pending"], true, "the slow connect was not slow: {r}");
    assert!(
        r["fast_ms"].as_f64().unwrap_or(f64::MAX) < 500.0,
        "fast connect waited for the slow one: {r}"
    );
    assert_eq!(d.bypassed_to(&fast), 1, "daemon log:\n{}", d.log_text());
}

#[test]
fn concurrent_calls_of_one_container_are_served_by_several_threads() {
    let Some(s) = setup("concurrent_calls_of_one_container_are_served_by_several_threads") else {
        return;
    };
    let d = daemon(&s.lab, &[]);
    let labnet = s.labnet_host.to_str().expect("utf-8 path");
    let addr = format!("{}:7713", s.peer.addr);
    let mut server = s
        .peer
        .spawn(labnet, &["accept-close", &addr])
        .expect("accept-close server");
    server.listening().expect("server ready");
    let r = labnet_in(
        &s,
        &d,
        &[],
        &["connrate", &addr, "--threads", "4", "--seconds", "1"],
    );
    assert_eq!(r["errors"], 0, "{r}");
    // The daemon logs each bypass with the name of the thread that served
    // it: `netaccel-N.I`, thread I of container N.
    let log = d.log_text();
    let threads: std::collections::BTreeSet<&str> = log
        .lines()
        .filter(|l| l.contains("connect bypassed"))
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("netaccel-")))
        .collect();
    assert!(d.bypassed_to(&addr) > 100, "few connects bypassed: {r}");
    assert!(
        threads.len() >= 2,
        "one thread served every call of the container ({threads:?}); {r}"
    );
}

#[test]
fn bad_connect_arguments_get_the_kernels_errno() {
    let Some(s) = setup("bad_connect_arguments_get_the_kernels_errno") else {
        return;
    };
    let d = daemon(&s.lab, &[]);
    let (_server, addr) = peer_echo(&s, 7710);
    // The same probe on the host, without any filter, is the reference.
    let host =
        rootless_lab::run(s.lab.user_command(&s.labnet_host).args(["bad-args", &addr])).expect("host probe");
    let host = json_line(&host);
    assert_eq!(host["good"], 0, "{host}");
    assert_eq!(host["null_pointer"], libc::EFAULT, "{host}");
    let contained = labnet_in(&s, &d, &[], &["bad-args", &addr]);
    assert_eq!(contained, host, "errnos differ from the kernel's own");
    assert_eq!(d.bypassed_to(&addr), 1, "daemon log:\n{}", d.log_text());
}

#[test]
fn a_container_killed_during_a_pending_connect_leaves_the_daemon_serving() {
    let Some(s) = setup("a_container_killed_during_a_pending_connect_leaves_the_daemon_serving") else {
        return;
    };
    let mut d = daemon(&s.lab, &[]);
    let (_hole, slow) = peer_blackhole(&s, 7711);
    let profile = d.profile(&s.lab, &[]).expect("profile");
    let config = ContainerConfig {
        seccomp: Some(profile),
        ..Default::default()
    };
    let stuck = Container::start(&s.lab, config, &["/lab/labnet", "connect", "--blocking", &slow])
        .expect("container");
    let (_server, addr) = peer_echo(&s, 7712);
    rootless_lab::wait_for(
        "the stuck container's serving threads",
        Duration::from_secs(10),
        || (d.served_notify_fds().expect("daemon threads") == 1).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}; daemon log:\n{}", d.log_text()));
    // Another container is served while that connect is pending.
    let r = labnet_in(&s, &d, &[], &["connect", &addr]);
    assert_eq!(r["echo_intact"], true, "{r}");
    assert_eq!(d.bypassed_to(&addr), 1);
    assert_eq!(
        d.log_text().matches("container exited").count(),
        1,
        "the stuck container should still be connecting:\n{}",
        d.log_text()
    );
    drop(stuck); // runc delete --force: SIGKILL while its connect is pending
    rootless_lab::wait_for(
        "the daemon to see the container go",
        Duration::from_secs(10),
        || (d.log_text().matches("container exited").count() >= 2).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}; daemon log:\n{}", d.log_text()));
    assert!(d.alive(), "daemon died:\n{}", d.log_text());
    let r = labnet_in(&s, &d, &[], &["connect", &addr]);
    assert_eq!(r["echo_intact"], true, "{r}");
    assert_eq!(d.bypassed_to(&addr), 2);
    // Every container's thread ends with it: none is left behind.
    rootless_lab::wait_for("the serving threads to end", Duration::from_secs(10), || {
        (d.served_notify_fds().expect("daemon threads") == 0).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}; daemon log:\n{}", d.log_text()));
}

#[test]
fn socket_options_and_fd_flags_survive_the_swap() {
    let Some(s) = setup("socket_options_and_fd_flags_survive_the_swap") else {
        return;
    };
    let d = daemon(&s.lab, &[]);
    let (_server, addr) = peer_echo(&s, 7713);
    // The same program on the host, without netaccel, is the reference.
    let host =
        rootless_lab::run(s.lab.user_command(&s.labnet_host).args(["sockopts", &addr])).expect("host run");
    let mut host = json_line(&host);
    let mut contained = labnet_in(&s, &d, &[], &["sockopts", &addr]);
    // Both sockets were bypassed, so they carry the host's address.
    assert_eq!(contained["a_local"], s.peer.host_addr.to_string(), "{contained}");
    assert_eq!(contained["b_local"], s.peer.host_addr.to_string(), "{contained}");
    assert_eq!(contained["b_connect_errno"], libc::EINPROGRESS, "{contained}");
    assert_eq!(contained["c_has_a_number"], true, "{contained}");
    assert_eq!(contained["c_cloexec"], false, "{contained}");
    assert_eq!(d.bypassed_to(&addr), 3, "daemon log:\n{}", d.log_text());
    for v in [&mut host, &mut contained] {
        let o = v.as_object_mut().expect("object");
        o.remove("a_local");
        o.remove("b_local");
    }
    assert_eq!(contained, host, "options or fd flags differ after the swap");
}

#[test]
fn ipv6_connections_are_bypassed() {
    let Some(s) = setup("ipv6_connections_are_bypassed") else {
        return;
    };
    let Some(addr6) = s.peer.addr6 else {
        rootless_lab::prereq::skip_or_fail("ipv6_connections_are_bypassed", "this machine has no IPv6");
        return;
    };
    let d = daemon(&s.lab, &[]);
    let labnet = s.labnet_host.to_str().expect("path");
    let mut server = s
        .peer
        .spawn(labnet, &["serve", &format!("[{addr6}]:7714")])
        .expect("v6 server");
    let addr = server.listening().expect("listening");
    let r = labnet_in(&s, &d, &[], &["connect", &addr]);
    assert_eq!(r["echo_intact"], true, "{r}");
    assert_eq!(r["peer"], addr.as_str(), "{r}");
    let host_side = format!("[{}", addr6.to_string().trim_end_matches('2'));
    assert!(
        r["local"]
            .as_str()
            .unwrap_or_default()
            .starts_with(&format!("{host_side}1]")),
        "{r}"
    );
    assert_eq!(d.bypassed_to(&addr), 1, "daemon log:\n{}", d.log_text());
}

#[test]
fn an_address_added_in_the_container_joins_its_ignore_list() {
    let Some(s) = setup("an_address_added_in_the_container_joins_its_ignore_list") else {
        return;
    };
    let d = daemon(&s.lab, &[]);
    let (_server, addr) = peer_echo(&s, 7715);
    // The container puts an address of the peer's /24 on its own interface
    // (the /30's broadcast address, never one of the host's: a subnet whose
    // address the host has too would be a copy of the host's, as pasta
    // makes, and stay bypassed); from then on that subnet is its own and
    // must keep the container's path (where nothing answers, so the connect
    // times out).
    let o = s.peer.host_addr.octets();
    let own = std::net::Ipv4Addr::new(o[0], o[1], o[2], o[3] + 2);
    let subnet = format!("{}.{}.{}.0/24", o[0], o[1], o[2]);
    let script =
        format!("ip addr add {own}/24 dev tap0 && sleep 0.3 && /lab/labnet connect --timeout-ms 1000 {addr}");
    let out = run_accelerated(&s.lab, &d, &[], &["sh", "-c", &script]);
    let r = json_line(&out.stdout);
    assert!(
        r["error"].is_string(),
        "connected although the subnet is the container's own: {r}"
    );
    assert_eq!(d.bypassed_to(&addr), 0, "daemon log:\n{}", d.log_text());
    assert!(
        d.log_text().contains(&subnet),
        "refresh not logged:\n{}",
        d.log_text()
    );
}

#[test]
fn a_bypassed_socket_cannot_be_turned_towards_host_loopback_later() {
    let test = "a_bypassed_socket_cannot_be_turned_towards_host_loopback_later";
    let Some(s) = setup(test) else { return };
    let d = daemon(&s.lab, &[]);
    let (_server, good) = peer_echo(&s, 7716);
    let (_blackhole, hole) = peer_blackhole(&s, 7717);
    let (evil_server, evil) = host_loopback_server(&s);

    let r = labnet_in(&s, &d, &[], &["escape", &good, &hole, &evil]);
    // Both sockets really were host sockets before the attempts.
    assert_eq!(r["a_good"], 0, "{r}");
    assert_eq!(r["a_local"], s.peer.host_addr.to_string(), "{r}");
    assert_eq!(r["b_hole"], libc::EINPROGRESS, "{r}");
    assert_eq!(d.bypassed_to(&good), 1, "daemon log:\n{}", d.log_text());
    assert_eq!(d.bypassed_to(&hole), 1, "daemon log:\n{}", d.log_text());
    assert_ne!(r["a_evil"], "connected", "{r}");
    assert_ne!(r["b_evil"], "connected", "{r}");
    let seen = evil_server.finish().expect("server output");
    assert!(
        !seen.contains("\"peer\""),
        "a container reached host loopback: {seen}\n{r}"
    );
}

#[test]
fn the_runtime_wrapper_keeps_the_engines_profile_and_adds_the_fast_path() {
    let test = "the_runtime_wrapper_keeps_the_engines_profile_and_adds_the_fast_path";
    let Some(s) = setup(test) else { return };
    let d = daemon(&s.lab, &[]);
    let (_server, addr) = peer_echo(&s, 7718);
    // What an engine would call instead of runc: a link named netaccel-runc.
    let link = s.lab.bin_dir().join("netaccel-runc");
    std::os::unix::fs::symlink(s.lab.bin_dir().join("netaccel"), &link).expect("link");
    // The engine's own profile: mkdir denied, connect explicitly allowed.
    let engine_profile = serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
            {"names": ["connect", "getpid"], "action": "SCMP_ACT_ALLOW"}
        ]
    });
    let config = ContainerConfig {
        seccomp: Some(engine_profile),
        runtime: link,
        ..Default::default()
    };
    let script = format!("mkdir /tmp/x 2>/dev/null; echo mkdir=$?; /lab/labnet connect {addr}");
    let out =
        Container::run(&s.lab, config, &["sh", "-c", &script], Duration::from_secs(60)).expect("container");
    assert!(
        out.stdout.contains("mkdir=1"),
        "the engine's mkdir rule was dropped: {out:?}"
    );
    let r = json_line(&out.stdout);
    assert_eq!(r["echo_intact"], true, "{r}");
    assert_eq!(
        r["local"].as_str().unwrap_or_default().split(':').next(),
        Some(s.peer.host_addr.to_string().as_str()),
        "{r}"
    );
    assert_eq!(d.bypassed_to(&addr), 1, "daemon log:\n{}", d.log_text());
}

#[test]
fn udp_connect_is_bypassed_and_ignored_destinations_keep_slirp4netns() {
    let test = "udp_connect_is_bypassed_and_ignored_destinations_keep_slirp4netns";
    let Some(s) = setup(test) else { return };
    let d = daemon(&s.lab, &[]);
    let (_echo, addr) = s.peer.udp_echo_server(&s.labnet_host, 7720).expect("udp echo");
    for nonblocking in [false, true] {
        let mut args = vec!["udp-connect", addr.as_str()];
        if nonblocking {
            args.push("--nonblocking");
        }
        let r = labnet_in(&s, &d, &[], &args);
        // UDP connect is immediate, blocking or not: never EINPROGRESS.
        assert_eq!(r["connect_errno"], 0, "{r}");
        assert_eq!(r["peer"], addr.as_str(), "{r}");
        assert!(
            r["local"]
                .as_str()
                .unwrap_or_default()
                .starts_with(&s.peer.host_addr.to_string()),
            "{r}"
        );
        assert_eq!(r["echo_intact"], true, "{r}");
    }
    assert_eq!(d.bypassed_to(&addr), 2, "daemon log:\n{}", d.log_text());
    let r = labnet_in(&s, &d, &[&s.peer.subnet], &["udp-connect", &addr]);
    assert!(
        r["local"]
            .as_str()
            .unwrap_or_default()
            .starts_with(CONTAINER_ADDR),
        "{r}"
    );
    assert_eq!(r["echo_intact"], true, "slirp4netns carries it: {r}");
    assert_eq!(d.bypassed_to(&addr), 2);
}

#[test]
fn a_bypassed_udp_socket_reconnected_to_host_loopback_never_reaches_it() {
    let test = "a_bypassed_udp_socket_reconnected_to_host_loopback_never_reaches_it";
    let Some(s) = setup(test) else { return };
    let d = daemon(&s.lab, &[]);
    let (_good_echo, good) = s.peer.udp_echo_server(&s.labnet_host, 7721).expect("udp echo");
    let (evil_echo, evil) = s
        .lab
        .labnet_server(&["udp-echo", "127.0.0.1:0"])
        .expect("host loopback udp server");
    let r = labnet_in(&s, &d, &[], &["udp-reaim", &good, &evil]);
    assert!(
        r["local_after_good"]
            .as_str()
            .unwrap_or_default()
            .starts_with(&s.peer.host_addr.to_string()),
        "{r}"
    );
    assert_eq!(d.bypassed_to(&good), 1, "daemon log:\n{}", d.log_text());
    let seen = evil_echo.finish().expect("server output");
    assert!(
        !seen.contains("\"peer\""),
        "a container datagram reached host loopback: {seen}\n{r}"
    );
}
