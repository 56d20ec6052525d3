//! End-to-end: published ports through host listeners (bind bypass), the
//! container reaching its own and other containers' published ports, the
//! guards that keep a host listener a listener, and VXLAN over a published
//! UDP port with netaccel on. Real rootless runc containers, slirp4netns and
//! the netaccel daemon, all as an unprivileged user.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use rootless_lab::container::{Forward, RunOutput, CONTAINER_ADDR};
use rootless_lab::{workspace_bin, Container, ContainerConfig, DaemonProcess, Lab, PeerHost};
use serde_json::Value;

const EOPNOTSUPP: i64 = 95;
const EISCONN: i64 = 106;
const EINVAL: i64 = 22;
const ENOSYS: i64 = 38;
const EINPROGRESS: i64 = 115;

fn setup(test: &str) -> Option<(Lab, DaemonProcess)> {
    let lab = Lab::new_or_skip(test)?;
    lab.install_bin(&workspace_bin("labnet").expect("labnet"))
        .expect("install labnet");
    let netaccel = workspace_bin("netaccel").expect("netaccel binary");
    let d = DaemonProcess::start(&lab, &netaccel, &[]).expect("daemon starts");
    Some((lab, d))
}

fn config(lab: &Lab, d: &DaemonProcess, profile_args: &[&str]) -> ContainerConfig {
    ContainerConfig {
        seccomp: Some(d.profile_with(lab, profile_args).expect("netaccel profile")),
        ..Default::default()
    }
}

fn json_lines(out: &str) -> Vec<Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect()
}

/// A container serving echo on `listen` (`count` connections) with `publish`.
fn echo_server<'a>(
    lab: &'a Lab,
    d: &DaemonProcess,
    publish: &str,
    listen: &str,
    count: &str,
) -> Container<'a> {
    Container::start(
        lab,
        config(lab, d, &["--publish", publish]),
        &["/lab/labnet", "serve", listen, "--count", count],
    )
    .expect("container starts")
}

/// The peer address the container's labnet server printed for connection `i`.
fn served_peer(out: &RunOutput, i: usize) -> String {
    let lines = json_lines(&out.stdout);
    lines
        .get(i + 1)
        .and_then(|l| l["peer"].as_str())
        .unwrap_or_else(|| panic!("no connection {i} in {out:?}"))
        .to_owned()
}

/// Waits until the container's labnet server printed its listening line.
fn wait_listening(c: &Container<'_>) -> String {
    let line = c
        .wait_for_line("listening", Duration::from_secs(15))
        .expect("server listening");
    let v: Value = serde_json::from_str(&line).expect("listening JSON");
    v["listening"].as_str().unwrap_or_default().to_owned()
}

/// Connects from the host (this process), sends `bytes`, checks the echo.
fn echo_from_host(addr: &str, bytes: usize) -> std::io::Result<bool> {
    let addr: SocketAddr = addr.parse().expect("addr");
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    let data: Vec<u8> = (0..bytes).map(|i| (i * 7 % 251) as u8).collect();
    let writer = {
        let mut w = conn.try_clone()?;
        let data = data.clone();
        std::thread::spawn(move || -> std::io::Result<()> {
            w.write_all(&data)?;
            w.shutdown(std::net::Shutdown::Write)
        })
    };
    let mut back = Vec::with_capacity(bytes);
    conn.read_to_end(&mut back)?;
    writer.join().expect("writer thread")?;
    Ok(back == data)
}

#[test]
fn a_published_port_is_served_by_a_host_listener_without_a_forwarder() {
    let test = "a_published_port_is_served_by_a_host_listener_without_a_forwarder";
    let Some((lab, d)) = setup(test) else { return };
    // No slirp4netns forward: only netaccel can make host port 17801 work.
    let c = echo_server(&lab, &d, "17801:80", "0.0.0.0:80", "2");
    // getsockname on the listener shows the host view.
    assert_eq!(wait_listening(&c), "0.0.0.0:17801");
    assert!(
        echo_from_host("127.0.0.1:17801", 3_000_000).expect("connect"),
        "echo"
    );
    assert!(echo_from_host("127.0.0.1:17801", 10).expect("connect"), "echo");
    let out = c.wait(Duration::from_secs(20)).expect("container exits");
    assert!(out.ok(), "{out:?}");
    let lines = json_lines(&out.stdout);
    assert_eq!(lines[1]["bytes"], 3_000_000, "{lines:?}");
    // The container sees the real client, not slirp4netns's 10.0.2.2.
    assert!(
        lines[1]["peer"]
            .as_str()
            .unwrap_or_default()
            .starts_with("127.0.0.1:"),
        "{lines:?}"
    );
    assert_eq!(
        d.count_log(
            "bind published on host listener",
            &["container_port=80", "host=0.0.0.0:17801"]
        ),
        1,
        "daemon log:\n{}",
        d.log_text()
    );
}

#[test]
fn a_published_port_works_over_ipv6() {
    let test = "a_published_port_works_over_ipv6";
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        rootless_lab::prereq::skip_or_fail(test, "this machine has no IPv6 loopback (::1)");
        return;
    }
    let Some((lab, d)) = setup(test) else { return };
    let c = echo_server(&lab, &d, "17802:80", "[::]:80", "1");
    assert_eq!(wait_listening(&c), "[::]:17802");
    assert!(echo_from_host("[::1]:17802", 100_000).expect("connect over ::1"));
    let out = c.wait(Duration::from_secs(20)).expect("container exits");
    assert!(served_peer(&out, 0).starts_with("[::1]:"), "{out:?}");
}

#[test]
fn no_bind_leaves_the_published_port_to_the_engines_forwarder() {
    let test = "no_bind_leaves_the_published_port_to_the_engines_forwarder";
    let Some((lab, d)) = setup(test) else { return };
    let cfg = ContainerConfig {
        forwards: vec![Forward {
            proto: "tcp",
            host_port: 17803,
            guest_port: 80,
        }],
        ..config(&lab, &d, &["--publish", "17803:80", "--no-bind"])
    };
    let c = Container::start(&lab, cfg, &["/lab/labnet", "serve", "0.0.0.0:80", "--count", "1"])
        .expect("container starts");
    // The container's own view: bound in its namespace.
    assert_eq!(wait_listening(&c), "0.0.0.0:80");
    assert!(echo_from_host("127.0.0.1:17803", 10_000).expect("connect through slirp4netns"));
    let out = c.wait(Duration::from_secs(20)).expect("container exits");
    assert!(
        served_peer(&out, 0).starts_with("10.0.2.2:"),
        "the forwarder's address: {out:?}"
    );
    assert_eq!(d.count_log("bind published on host listener", &[]), 0);
}

#[test]
fn the_container_reaches_its_own_published_port_through_the_host_listener() {
    let test = "the_container_reaches_its_own_published_port_through_the_host_listener";
    let Some((lab, d)) = setup(test) else { return };
    let own = format!("{CONTAINER_ADDR}:80");
    let out = Container::run(
        &lab,
        config(&lab, &d, &["--publish", "17804:80"]),
        &[
            "/lab/labnet",
            "self-connect",
            "0.0.0.0:80",
            "127.0.0.1:80",
            &own,
            "[::ffff:127.0.0.1]:80",
        ],
        Duration::from_secs(30),
    )
    .expect("container runs");
    let r = out.last_json();
    assert_eq!(
        r["listening"],
        "0.0.0.0:17804",
        "{r}\ndaemon log:\n{}",
        d.log_text()
    );
    for res in r["results"].as_array().expect("results") {
        assert_eq!(res["echo_intact"], true, "{r}");
        // The connection is a host loopback one: its peer is the host port.
        assert!(
            res["peer"].as_str().unwrap_or_default().ends_with(":17804"),
            "{r}"
        );
    }
    assert_eq!(r["served"], 3, "{r}");
    assert_eq!(d.bypassed_to("127.0.0.1:80"), 1, "daemon log:\n{}", d.log_text());
    assert_eq!(d.bypassed_to(&own), 1);
}

#[test]
fn another_container_reaches_a_published_port_through_a_host_address() {
    let test = "another_container_reaches_a_published_port_through_a_host_address";
    let Some((lab, d)) = setup(test) else { return };
    let peer = PeerHost::create().expect("peer host");
    let server = echo_server(&lab, &d, "17805:80", "0.0.0.0:80", "1");
    wait_listening(&server);
    // The peer link's host-side address is one of the host's own addresses.
    let dst = format!("{}:17805", peer.host_addr);
    // The client publishes a port too: only then does its profile carry
    // the guards for a host socket that cannot be pinned (see the test
    // below for a client without them).
    let out = Container::run(
        &lab,
        config(&lab, &d, &["--publish", "17809:81"]),
        &["/lab/labnet", "connect", &dst, "--bytes", "200000"],
        Duration::from_secs(30),
    )
    .expect("client container runs");
    let r = out.last_json();
    assert_eq!(r["echo_intact"], true, "{r}");
    assert!(
        !r["local"]
            .as_str()
            .unwrap_or_default()
            .starts_with(CONTAINER_ADDR),
        "a host socket, not slirp4netns: {r}"
    );
    assert_eq!(d.bypassed_to(&dst), 1, "daemon log:\n{}", d.log_text());
    let served = server.wait(Duration::from_secs(20)).expect("server exits");
    assert!(served.ok(), "{served:?}");
}

#[test]
fn a_container_without_the_listener_guards_reaches_a_host_listener_on_a_pinned_socket() {
    let test = "a_container_without_the_listener_guards_reaches_a_host_listener_on_a_pinned_socket";
    let Some((lab, d)) = setup(test) else { return };
    let peer = PeerHost::create().expect("peer host");
    let server = echo_server(&lab, &d, "17808:80", "0.0.0.0:80", "1");
    wait_listening(&server);
    let good = format!("{}:17808", peer.host_addr);
    let labnet = lab.bin_dir().join("labnet");
    let hole = format!("{}:17810", peer.addr);
    let mut blackhole = peer
        .spawn(labnet.to_str().expect("utf-8 path"), &["blackhole", &hole])
        .expect("blackhole");
    blackhole.listening().expect("blackhole ready");
    let (evil, evil_addr) = lab
        .labnet_server(&["serve", "127.0.0.1:0"])
        .expect("host loopback server");
    // No published port: no io_uring refusal, no native-only rule. The host
    // socket reaching the listener is pinned to the interface that carries
    // the host address, so once disconnected it still cannot reach host
    // loopback.
    let out = Container::run(
        &lab,
        config(&lab, &d, &[]),
        &["/lab/labnet", "escape", &good, &hole, &evil_addr],
        Duration::from_secs(30),
    )
    .expect("client container runs");
    let r = out.last_json();
    assert_eq!(r["a_good"], 0, "the listener is reached: {r}");
    assert_eq!(
        r["a_local"],
        peer.host_addr.to_string(),
        "a host socket, not slirp4netns: {r}"
    );
    assert_eq!(d.bypassed_to(&good), 1, "daemon log:\n{}", d.log_text());
    // The container is on the fast path: its connect to a peer is bypassed.
    assert_eq!(r["b_hole"], EINPROGRESS, "{r}");
    assert_eq!(d.bypassed_to(&hole), 1, "daemon log:\n{}", d.log_text());
    assert_ne!(r["a_evil"], "connected", "{r}");
    assert_ne!(r["b_evil"], "connected", "{r}");
    let seen = evil.finish().expect("server output");
    assert!(
        !seen.contains("\"peer\""),
        "a container reached host loopback: {seen}\n{r}"
    );
}

#[test]
fn a_host_listener_cannot_be_turned_towards_host_loopback() {
    let test = "a_host_listener_cannot_be_turned_towards_host_loopback";
    let Some((lab, d)) = setup(test) else { return };
    let (evil, evil_addr) = lab
        .labnet_server(&["serve", "127.0.0.1:0"])
        .expect("host loopback server");
    let out = Container::run(
        &lab,
        config(&lab, &d, &["--publish", "17806:80"]),
        &["/lab/labnet", "listener-escape", "80", &evil_addr],
        Duration::from_secs(30),
    )
    .expect("container runs");
    let r = out.last_json();
    assert_eq!(r["local"], "0.0.0.0:17806", "the listener is the host's: {r}");
    assert_eq!(r["shutdown_rd"], EOPNOTSUPP, "{r}");
    assert_eq!(r["disconnect"], EOPNOTSUPP, "{r}");
    assert_eq!(r["connect_evil"], EISCONN, "{r}");
    assert_ne!(r["fastopen"], 0, "{r}");
    assert_eq!(r["rebind"], EINVAL, "{r}");
    assert_eq!(r["io_uring_setup"], ENOSYS, "{r}");
    assert_eq!(r["still_listening"], true, "{r}");
    let seen = evil.finish().expect("evil output");
    assert!(!seen.contains("\"peer\""), "reached host loopback: {seen}\n{r}");
}

/// One end of a VXLAN link inside a container: its UDP 8472 is published by
/// slirp4netns on `own_port`, the other end's on `other_port`.
fn vxlan_script(me: &str, other: &str, other_port: u16) -> String {
    format!(
        "set -e
ip link add vx0 type vxlan id 42 dstport 8472 dev tap0 nolearning
bridge fdb append 00:00:00:00:00:00 dev vx0 dst 10.0.2.2 port {other_port}
ip addr add {me}/24 dev vx0
ip link set vx0 up
ok=
for i in $(seq 60); do
  if busybox ping -c 1 -W 1 {other} >/dev/null 2>&1; then ok=1; break; fi
done
test -n \"$ok\"
busybox ping -c 3 -W 2 {other}
sleep 3"
    )
}

#[test]
fn vxlan_over_a_published_udp_port_works_with_netaccel_on() {
    let test = "vxlan_over_a_published_udp_port_works_with_netaccel_on";
    let Some((lab, d)) = setup(test) else { return };
    let end = |me: &str, other: &str, own_port: u16, other_port: u16, tcp_port: u16| {
        let cfg = ContainerConfig {
            forwards: vec![Forward {
                proto: "udp",
                host_port: own_port,
                guest_port: 8472,
            }],
            ..config(
                &lab,
                &d,
                &[
                    "--publish",
                    &format!("{own_port}:8472/udp"),
                    "--publish",
                    &format!("{tcp_port}:80"),
                ],
            )
        };
        let script = vxlan_script(me, other, other_port);
        Container::start(&lab, cfg, &["sh", "-c", &script]).expect("container starts")
    };
    let a = end("192.168.77.1", "192.168.77.2", 17811, 17812, 17813);
    let b = end("192.168.77.2", "192.168.77.1", 17812, 17811, 17814);
    let a_out = a.wait(Duration::from_secs(90)).expect("a exits");
    let b_out = b.wait(Duration::from_secs(90)).expect("b exits");
    for out in [&a_out, &b_out] {
        assert!(
            out.ok(),
            "vxlan ping failed: {out:?}\ndaemon log:\n{}",
            d.log_text()
        );
        assert!(out.stdout.contains("3 packets received"), "{out:?}");
    }
    // Both containers were served with bind bypass on (the TCP mapping), and
    // the UDP mapping was left to slirp4netns.
    assert_eq!(
        d.count_log("binds of published ports get host listeners", &["8472/udp"]),
        2,
        "daemon log:\n{}",
        d.log_text()
    );
    assert_eq!(d.count_log("bind published on host listener", &[]), 0);
}
