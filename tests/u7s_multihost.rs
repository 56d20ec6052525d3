//! End-to-end: a multi-host cluster below Kubernetes. Two (or three) hosts
//! on one LAN, each a network and UTS namespace with its own unprivileged
//! user running its own rootless Docker, as on separate machines (see
//! `rootless_lab::multihost`). On each, `u7s up` brings up a node; the join
//! flow runs as far as this machine allows (no kubeadm); the nodes get what
//! Flannel builds (`flannel.1` on the published UDP port, FDB entries aiming
//! at the peers' host IPs, a pod in a nested namespace) and pods talk across
//! hosts through VXLAN; etcd and an apiserver stand-in serve across hosts on
//! the published ports; `u7s up --accel` on B bypasses exactly the node's own
//! connects to the control plane, not the pods'.
//!
//! The three-host variant runs when asked:
//! `cargo test -p rootless-lab --test u7s_multihost -- --ignored`.

use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rootless_lab::multihost::{flannel_rule_command, LabHost, MultiHost, PodNet, IN_POD, STEP};
use rootless_lab::output_text;

/// The labs use the same users and host names: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const FLANNEL_PORT: u16 = 8472;
/// Published on the control-plane host beside the node's own ports.
const IPERF_PORT: u16 = 5201;
/// The apiserver stand-in (an echo server) on the published PORT_KUBE_APISERVER.
const APISERVER_PORT: u16 = 6443;
const ETCD_PORT: u16 = 2379;
/// The echo server in every pod.
const POD_ECHO_PORT: u16 = 7000;
/// iperf3 in every pod.
const POD_IPERF_PORT: u16 = 5301;

fn render_value(h: &LabHost, key: &str) -> String {
    let r = h.u.ok(&["render"], &[]);
    r.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}: ")))
        .unwrap_or_else(|| panic!("no {key} in render: {r}"))
        .trim()
        .to_owned()
}

/// `u7s up` on every host (A with the iperf3 port published too): each
/// detects its own host IP, and the host names give the nodes different
/// names and subnets.
fn bring_up(hosts: &[LabHost]) -> Vec<String> {
    let mut subnets = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        let publish = format!("{IPERF_PORT}:{IPERF_PORT}");
        let args: Vec<&str> = if i == 0 {
            vec!["--publish", &publish, "up"]
        } else {
            vec!["up"]
        };
        let out = h.u.ok(&args, &[]);
        assert!(out.contains("(rootless)"), "{out}");
        assert_eq!(
            render_value(h, "host_ip"),
            h.ns.addr.to_string(),
            "HOST_IP detected"
        );
        assert_eq!(render_value(h, "node_name"), format!("u7s-{}", h.ns.hostname));
        subnets.push(render_value(h, "node_subnet"));
    }
    let mut distinct = subnets.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), subnets.len(), "node subnets {subnets:?}");
    subnets
}

/// The join flow as far as it goes: `join-command` on A (its node holds a
/// stand-in for the state kubeadm init leaves: a `kubeadm` that prints the
/// join command of a token), the file copied to the joining host, and
/// `kubeadm-join` there running every check, adding the control plane's
/// hosts line and stopping cleanly where the node lacks kubeadm.
fn join_flow(a: &LabHost, joining: &LabHost, a_subnet: &str) {
    a.shell(
        "printf '%s\\n' '#!/bin/sh' \
         '[ \"$*\" = \"token create --print-join-command\" ] || { echo \"lab node: only the join command is prepared\" >&2; exit 1; }' \
         'echo kubeadm join u7s-lab-a:6443 --token abcdef.0123456789abcdef --discovery-token-ca-cert-hash sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef' \
         > /usr/local/bin/kubeadm && chmod 755 /usr/local/bin/kubeadm",
    );
    a.u.ok(&["join-command"], &[]);
    let text = std::fs::read_to_string(a.u.work.join("join-command")).expect("join file");
    assert!(
        text.contains(&format!("# control-plane-host: {} u7s-lab-a", a.ns.addr))
            && text.contains(&format!("# control-plane-node-subnet: {a_subnet}"))
            && text.contains(&format!("flannel={FLANNEL_PORT}")),
        "{text}"
    );
    // Copied to the other host, as a user would (scp).
    let copy = joining.u.work.join("join-command");
    std::fs::write(&copy, &text).expect("copy");
    joining.lab.chown(&copy).expect("chown");

    // Equal subnets are refused, naming the setting, before the node is touched.
    let o = joining.u.run(&["--node-subnet", a_subnet, "kubeadm-join"], &[]);
    let t = output_text(&o);
    assert!(
        !o.status.success() && t.contains("node subnet collision") && t.contains("NODE_SUBNET="),
        "{t}"
    );
    // Other cluster ports are refused too.
    let o = joining.u.run(&["--port-flannel", "8473", "kubeadm-join"], &[]);
    let t = output_text(&o);
    assert!(!o.status.success() && t.contains("PORT_FLANNEL"), "{t}");

    let o = joining.u.run(&["kubeadm-join"], &[]);
    let t = output_text(&o);
    assert!(
        !o.status.success() && t.contains("kubeadm join u7s-lab-a:6443") && !t.contains("panicked"),
        "stops at the missing kubeadm: {t}"
    );
    let hosts = joining.shell("cat /etc/hosts /etc/u7s/hosts");
    assert_eq!(
        hosts.matches(&format!("{} u7s-lab-a", a.ns.addr)).count(),
        2,
        "{hosts}"
    );
}

/// Flannel's VXLAN and a pod in every node (see [`PodNet`]).
fn pod_nets(hosts: &[LabHost]) -> Vec<PodNet> {
    hosts
        .iter()
        .enumerate()
        .map(|(i, h)| PodNet {
            index: i as u8 + 1,
            host_ip: h.ns.addr,
        })
        .collect()
}

/// `sw_checksum`: also run what u7s's udev rule runs when Flannel creates
/// `flannel.1` (the lab's node has no udev).
fn wire_pods(h: &LabHost, me: PodNet, all: &[PodNet], sw_checksum: bool) {
    h.shell(&me.flannel_script(FLANNEL_PORT, all));
    if sw_checksum {
        apply_flannel_rule(h);
    }
    // The pod's servers, under the node's init like a pod's containers.
    h.u.job_ok(
        &format!(
            "{IN_POD} labnet serve 0.0.0.0:{POD_ECHO_PORT} > /tmp/pod-echo.log 2>&1 &\n\
             {IN_POD} iperf3 -s -p {POD_IPERF_PORT} > /tmp/pod-iperf.log 2>&1 &"
        ),
        STEP,
    );
}

/// The command of u7s's udev rule for `flannel.1`, run in the node: the
/// entrypoint armed it (rootless node), so checksums go to software.
fn apply_flannel_rule(h: &LabHost) {
    h.shell(&flannel_rule_command().expect("udev rule"));
    let k = h.shell("ethtool -k flannel.1 | grep tx-checksum-ip-generic");
    assert!(k.contains(": off"), "{k}");
}

/// From the pod of `from` to the pod `to`: ping, and 1 MB of data sent and
/// echoed back intact (both directions of the tunnel).
fn pod_to_pod(from: &LabHost, to: PodNet) {
    let out = from
        .u
        .job_ok(&format!("{IN_POD} ping -c 3 -W 5 {}", to.pod_ip()), STEP);
    assert!(out.contains("3 packets received"), "{out}");
    let out = from.u.job_ok(
        &format!(
            "{IN_POD} labnet connect {}:{POD_ECHO_PORT} --bytes 1000000",
            to.pod_ip()
        ),
        STEP,
    );
    assert!(out.contains("\"echo_intact\":true"), "{out}");
}

/// Five connects from `h`'s node (`in_pod`: from its pod) to `dst`, each
/// with its echo checked; all must succeed.
fn five_connects(h: &LabHost, in_pod: bool, dst: &str) {
    let prefix = if in_pod { IN_POD } else { "" };
    let out = h.u.job_ok(
        &format!("{prefix} labnet connect-loop {dst} --count 5 --interval-ms 10"),
        STEP,
    );
    assert!(out.contains("\"failed\":0"), "{out}");
}

/// iperf3 from the pod of `from` to pod `to` for 3 s; Gbit/s received.
fn pod_throughput(from: &LabHost, to: PodNet) -> f64 {
    let out = from.u.job_ok(
        &format!("{IN_POD} iperf3 -c {} -p {POD_IPERF_PORT} -t 3 -J", to.pod_ip()),
        STEP,
    );
    iperf_gbits(&out)
}

fn iperf_gbits(out: &str) -> f64 {
    let json = &out[out.find('{').unwrap_or_else(|| panic!("no iperf3 JSON: {out}"))..];
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {out}"));
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("no received rate: {out}"))
        / 1e9
}

/// Starts an etcd member in A's node serving on the published PORT_ETCD
/// (data in /var, a state volume) and the apiserver stand-in on
/// PORT_KUBE_APISERVER.
fn start_control_plane(a: &LabHost) {
    a.u.job_ok(
        &format!(
            "etcd --name lab-a --data-dir /var/lib/lab-etcd \
             --listen-client-urls http://0.0.0.0:{ETCD_PORT} --advertise-client-urls http://{ip}:{ETCD_PORT} \
             --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
             --initial-cluster lab-a=http://127.0.0.1:2380 > /tmp/etcd.log 2>&1 &\n\
             labnet serve 0.0.0.0:{APISERVER_PORT} > /tmp/apiserver.log 2>&1 &",
            ip = a.ns.addr
        ),
        STEP,
    );
}

fn etcdctl(a: Ipv4Addr, args: &str) -> String {
    format!("ETCDCTL_API=3 etcdctl --dial-timeout 10s --command-timeout 20s --endpoints http://{a}:{ETCD_PORT} {args}")
}

/// etcd on A answers B's writes and reads through A's host IP.
fn etcd_across(a: &LabHost, b: &LabHost, key: &str, value: &str) {
    let deadline = Instant::now() + STEP;
    loop {
        let (rc, out) = b.u.job(&etcdctl(a.ns.addr, "endpoint health"), STEP);
        if rc == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "etcd on A never became healthy from B: {out}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    b.u.job_ok(&etcdctl(a.ns.addr, &format!("put {key} {value}")), STEP);
    let got = b.u.job_ok(
        &etcdctl(a.ns.addr, &format!("get {key} --print-value-only")),
        STEP,
    );
    assert_eq!(got.trim(), value, "{got}");
}

/// Who holds B's host-side socket of a connection from B's node (`in_pod`:
/// from its pod) to A's apiserver port: `slirp4netns` (the user-mode stack)
/// or the node's own process (the fast path swapped a host socket in).
fn holder_of_connection_to_apiserver(a: &LabHost, b: &LabHost, in_pod: bool) -> String {
    let prefix = if in_pod { IN_POD } else { "" };
    b.u.job_ok(
        &format!(
            "{prefix} labnet pingpong {}:{APISERVER_PORT} --count 200000 > /tmp/pingpong.log 2>&1 & echo $! > /tmp/pingpong.pid",
            a.ns.addr
        ),
        STEP,
    );
    let filter = format!("dst {}:{APISERVER_PORT}", a.ns.addr);
    let seen = rootless_lab::wait_for("the pingpong connection on host B", STEP, || {
        let o = b_root_ss(b, &filter);
        o.lines().find(|l| l.contains("users:")).map(str::to_owned)
    })
    .expect("a connection to A's apiserver port from host B");
    b.u.job_ok("kill $(cat /tmp/pingpong.pid)", STEP);
    seen
}

fn b_root_ss(b: &LabHost, filter: &str) -> String {
    rootless_lab::run(b.root_command("ss").arg("-Htnp").args(filter.split_whitespace())).unwrap_or_default()
}

/// `n` hosts started for `body` (one lab at a time), then torn down: no
/// process of the hosts' users and no namespace of the lab may be left.
fn on_hosts(test: &str, n: usize, body: impl FnOnce(&[LabHost])) {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mh) = MultiHost::create_or_skip(test, n) else {
        return;
    };
    {
        let hosts = mh.start().expect("hosts with rootless Docker");
        body(&hosts);
    }
    let left = mh.teardown(Duration::from_secs(15));
    assert!(left.is_empty(), "left after teardown: {left:#?}");
}

#[test]
fn two_hosts_join_talk_over_vxlan_and_accel_bypasses_the_control_plane() {
    let test = "two_hosts_join_talk_over_vxlan_and_accel_bypasses_the_control_plane";
    on_hosts(test, 2, |hosts| {
        let (a, b) = (&hosts[0], &hosts[1]);
        let subnets = bring_up(hosts);
        join_flow(a, b, &subnets[0]);

        // VXLAN as Flannel sets it up; pods talk both ways.
        let pods = pod_nets(hosts);
        for (h, me) in hosts.iter().zip(&pods) {
            wire_pods(h, *me, &pods, false);
        }
        // Before u7s's fix flannel.1 offloads the inner checksums, and the
        // user-mode stack carries the VXLAN frames without completing them:
        // what gets through is measured, not assumed.
        let ping =
            a.u.job(&format!("{IN_POD} ping -c 3 -W 5 {}", pods[1].pod_ip()), STEP)
                .1;
        let tcp = a.u.job(
            &format!(
                "{IN_POD} labnet connect {}:{POD_ECHO_PORT} --bytes 100000 --timeout-ms 3000",
                pods[1].pod_ip()
            ),
            STEP,
        );
        eprintln!(
            "{test}: with tx checksum offload on flannel.1: ping {}, TCP {}",
            if ping.contains("3 packets received") {
                "answered"
            } else {
                "lost"
            },
            if tcp.1.contains("\"echo_intact\":true") {
                "intact".to_owned()
            } else {
                tcp.1.trim().to_owned()
            }
        );
        // The fix u7s ships for rootless nodes: its udev rule's command (the
        // entrypoint armed it by leaving the marker).
        for h in hosts {
            apply_flannel_rule(h);
        }
        pod_to_pod(a, pods[1]);
        pod_to_pod(b, pods[0]);
        // The packets took the published UDP port: rootlesskit holds it on
        // each host.
        for h in hosts {
            let ss = rootless_lab::run(
                h.root_command("ss")
                    .args(["-Hunlp", &format!("sport = :{FLANNEL_PORT}")]),
            )
            .expect("ss");
            assert!(
                ss.contains("rootlesskit"),
                "UDP {FLANNEL_PORT} on host {}: {ss}",
                h.ns.hostname
            );
        }
        let gbits = pod_throughput(a, pods[1]);
        eprintln!("{test}: pod A -> pod B over VXLAN through the published UDP port: {gbits:.2} Gbit/s");

        // The control plane across hosts, B without the fast path.
        start_control_plane(a);
        etcd_across(a, b, "lab/written-by", "b");
        let holder = holder_of_connection_to_apiserver(a, b, false);
        assert!(holder.contains("slirp4netns"), "{holder}");

        // B on the fast path: its node is recreated, state kept.
        b.shell("echo kept > /var/lab-state");
        let out = b.u.ok(&["up", "--recreate", "--accel"], &[]);
        assert!(out.contains("fast path on"), "{out}");
        assert_eq!(b.shell("cat /var/lab-state").trim(), "kept");
        wire_pods(b, pods[1], &pods, true);
        let before = b.u.bypassed(&["status"]);
        etcd_across(a, b, "lab/accel", "yes");
        let etcd = b.u.bypassed(&["status"]) - before;
        assert!(etcd >= 3, "etcdctl's connects to A's etcd bypassed: {etcd}");
        let before = b.u.bypassed(&["status"]);
        five_connects(b, false, &format!("{}:{APISERVER_PORT}", a.ns.addr));
        assert_eq!(
            b.u.bypassed(&["status"]) - before,
            5,
            "exactly the node's 5 connects"
        );
        let holder = holder_of_connection_to_apiserver(a, b, false);
        assert!(
            holder.contains("labnet"),
            "a host socket held by the node's process: {holder}"
        );
        // Pods (nested namespaces under the node's filter) keep their path.
        let before = b.u.bypassed(&["status"]);
        pod_to_pod(b, pods[0]);
        pod_to_pod(a, pods[1]);
        five_connects(b, true, &format!("{}:{POD_ECHO_PORT}", pods[0].pod_ip()));
        assert_eq!(b.u.bypassed(&["status"]), before, "no pod connect bypassed");
        // A pod's connect to another host (masqueraded by its node) is
        // notified too, the filter being inherited, but its socket lives in
        // the pod's namespace: kept, so it goes through slirp4netns.
        five_connects(b, true, &format!("{}:{APISERVER_PORT}", a.ns.addr));
        let holder = holder_of_connection_to_apiserver(a, b, true);
        assert!(
            holder.contains("slirp4netns"),
            "a pod's connection stays on the user-mode stack: {holder}"
        );
        assert_eq!(b.u.bypassed(&["status"]), before, "no pod connect bypassed");

        // Lifecycle: down/up keeps the etcd data on A and the node state on
        // B; down -v wipes B's.
        a.u.ok(&["down"], &[]);
        a.u.ok(&["up"], &[]);
        start_control_plane(a);
        let deadline = Instant::now() + STEP;
        let got = loop {
            let (rc, out) =
                b.u.job(&etcdctl(a.ns.addr, "get lab/written-by --print-value-only"), STEP);
            if rc == 0 {
                break out;
            }
            assert!(Instant::now() < deadline, "etcd after down/up: {out}");
            std::thread::sleep(Duration::from_millis(500));
        };
        assert_eq!(got.trim(), "b", "etcd data kept in A's /var");
        b.u.ok(&["down"], &[]);
        b.u.ok(&["up", "--accel"], &[]);
        assert_eq!(b.shell("cat /var/lab-state").trim(), "kept");
        b.u.ok(&["down", "-v"], &[]);
        b.u.ok(&["up"], &[]);
        let o = b.u.run(&["shell", "--", "cat", "/var/lab-state"], &[]);
        assert!(!o.status.success(), "down -v wiped /var: {}", output_text(&o));
    });
}

#[test]
#[ignore = "three hosts: about 45 s more; run with --ignored"]
fn three_hosts_pods_talk_over_vxlan_between_every_pair() {
    let test = "three_hosts_pods_talk_over_vxlan_between_every_pair";
    on_hosts(test, 3, |hosts| {
        let subnets = bring_up(hosts);
        join_flow(&hosts[0], &hosts[1], &subnets[0]);
        join_flow(&hosts[0], &hosts[2], &subnets[0]);
        let pods = pod_nets(hosts);
        for (h, me) in hosts.iter().zip(&pods) {
            wire_pods(h, *me, &pods, true);
        }
        for (i, from) in hosts.iter().enumerate() {
            for (j, to) in pods.iter().enumerate() {
                if i != j {
                    pod_to_pod(from, *to);
                }
            }
        }
        start_control_plane(&hosts[0]);
        etcd_across(&hosts[0], &hosts[1], "lab/b", "1");
        etcd_across(&hosts[0], &hosts[2], "lab/c", "1");
    });
}
