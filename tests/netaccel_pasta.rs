//! End-to-end: netaccel with pasta, Podman 5's default user-mode stack.
//!
//! pasta copies the host's address, prefix and routes into the container,
//! so "the container's own subnet" is the host's LAN. The lab's host is a
//! network namespace of our own on a LAN (a bridge) with a peer and a
//! router, and a remote host behind the router (`rootless_lab::lan`); the
//! daemon, rootless runc and pasta run in it as the test user, exactly as
//! on a machine on that LAN. What must happen:
//! - a connect to the LAN peer is bypassed (the copied subnet is not the
//!   container's to keep: its other addresses are hosts the host reaches);
//! - a connect to the remote host behind the router is bypassed;
//! - a connect to the gateway address keeps pasta, which may map it to the
//!   host itself (its default), as it would without netaccel.
//!
//! Debian 12's pasta (2023-03) carries no data on its own TCP path in this
//! set-up (a connect from the same container without netaccel hangs after
//! the handshake), so the gateway connect is bounded and only checked for
//! being kept.

use std::time::Duration;

use rootless_lab::container::UserNet;
use rootless_lab::lan::Lan;
use rootless_lab::{workspace_bin, Container, ContainerConfig, DaemonProcess, Lab};
use serde_json::Value;

fn lines(out: &str) -> Vec<Value> {
    out.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect()
}

#[test]
fn with_pasta_the_lan_and_the_world_are_bypassed_and_the_gateway_keeps_pasta() {
    let test = "with_pasta_the_lan_and_the_world_are_bypassed_and_the_gateway_keeps_pasta";
    let Some(lab) = Lab::new_or_skip(test) else { return };
    let lan = Lan::create().expect("lan");
    let lab = lab.in_netns(&lan.host);
    let labnet = lab
        .install_bin(&workspace_bin("labnet").expect("labnet"))
        .expect("install");
    let labnet = labnet.to_str().expect("utf-8 path");
    let netaccel = workspace_bin("netaccel").expect("netaccel binary");
    let daemon = DaemonProcess::start(&lab, &netaccel, &[]).expect("daemon starts in the host namespace");

    let peer_at = format!("{}:7901", lan.peer_addr);
    let remote_at = format!("{}:7902", lan.remote_addr);
    let mut peer = lan
        .spawn(&lan.peer, labnet, &["serve", &peer_at])
        .expect("peer server");
    peer.listening().expect("peer listening");
    let mut remote = lan
        .spawn(&lan.remote, labnet, &["serve", &remote_at])
        .expect("remote server");
    remote.listening().expect("remote listening");
    let gateway_at = format!("{}:7903", lan.router_addr);

    let config = ContainerConfig {
        seccomp: Some(daemon.profile(&lab, &[]).expect("profile")),
        net: UserNet::Pasta { mtu: 65520 },
        ..Default::default()
    };
    let connect = "/lab/labnet connect --timeout-ms 5000 --bytes 1000";
    let script = format!(
        "ip -4 -o addr show scope global; ip route; {connect} {peer_at}; {connect} {remote_at}; timeout 5 {connect} {gateway_at}; echo '{{\"gateway_exit\": '$?'}}'"
    );
    let out =
        Container::run(&lab, config, &["sh", "-c", &script], Duration::from_secs(60)).unwrap_or_else(|e| {
            let mut logs = String::new();
            for entry in std::fs::read_dir(lab.path()).expect("lab dir").flatten() {
                for f in ["user-net.log", "stdout", "stderr"] {
                    if let Ok(t) = std::fs::read_to_string(entry.path().join(f)) {
                        logs.push_str(&format!("{}/{f}: {t}\n", entry.path().display()));
                    }
                }
            }
            panic!(
                "container runs: {e:#}\n{logs}\ndaemon log:\n{}",
                daemon.log_text()
            )
        });
    let r = lines(&out.stdout);
    assert!(r.len() >= 3, "{out:?}\n{}", daemon.log_text());
    assert!(
        out.stdout.contains(&format!("{}/24", lan.host_addr)),
        "pasta copied the host's address: {out:?}"
    );
    let log = daemon.log_text();
    for (i, (dst, server)) in [(&peer_at, peer), (&remote_at, remote)].into_iter().enumerate() {
        assert_eq!(r[i]["echo_intact"], true, "{}\n{log}", r[i]);
        assert_eq!(daemon.bypassed_to(dst), 1, "{dst} not bypassed:\n{log}");
        // The server's peer is the container's own socket (a host socket),
        // not a socket pasta opened for it.
        let seen = lines(&server.finish().expect("server output"));
        let served: Vec<&Value> = seen.iter().filter(|l| l["peer"].is_string()).collect();
        assert_eq!(served.len(), 1, "{seen:?}");
        assert_eq!(served[0]["peer"], r[i]["local"], "{seen:?} vs {}", r[i]);
    }
    let last = r.last().expect("lines");
    assert!(
        last["gateway_exit"].is_number(),
        "the script ran to its end: {last}"
    );
    assert_eq!(
        daemon.bypassed_to(&gateway_at),
        0,
        "the gateway was bypassed:\n{log}"
    );
    assert!(
        log.contains(&format!("{}/32", lan.router_addr)),
        "the gateway is on the ignore list:\n{log}"
    );
    assert!(
        !log.contains(&format!(
            "{}.0/24",
            lan.host_addr
                .to_string()
                .rsplit_once('.')
                .map_or("", |(net, _)| net)
        )),
        "the copied subnet must not be on the ignore list:\n{log}"
    );
}
