//! End-to-end: `u7s` against rootless Podman (Debian's podman 4.3, its API
//! service on the user's socket as `podman.socket` gives it, cgroupfs and
//! runc), the same flow as against rootless Docker: the node image built
//! by `u7s up`, the node's shape as Podman reports it, published ports on the
//! host, shell/logs, state across down/up, a second tenant, and `--accel`
//! with the wrapper registered in containers.conf.

use std::time::Duration;

use rootless_lab::podman::RootlessPodman;
use rootless_lab::u7s::{
    assert_node_shape, env_of, first_inspected, port_is_held_tcp, port_is_held_udp, U7s, BASE,
};
use rootless_lab::{output_text, wait_for, workspace_bin, Lab, PeerHost};
use serde_json::Value;

fn setup<'a>(lab: &'a Lab, podman: &RootlessPodman) -> U7s<'a> {
    podman
        .import_busybox(BASE)
        .expect("base image from a local rootfs");
    // As a user with podman.socket has it: no CONTAINER_HOST (the podman
    // CLI would then work remotely), the socket in XDG_RUNTIME_DIR.
    U7s::new(lab, &[("CONTAINER_ENGINE", "podman".to_owned())])
}

fn inspect(podman: &RootlessPodman, name: &str) -> Option<Value> {
    first_inspected(
        &podman
            .podman(&["inspect", "--type", "container", name])
            .expect("podman inspect"),
    )
}

#[test]
fn u7s_runs_nodes_on_rootless_podman() {
    let test = "u7s_runs_nodes_on_rootless_podman";
    let Some(lab) = Lab::with_podman_or_skip(test) else {
        return;
    };
    let podman = RootlessPodman::serve(&lab, &[]).expect("podman API service");
    let u = setup(&lab, &podman);
    let work = u.work.clone();

    // up: builds the image through the API (progress shown), network,
    // volumes, node; Podman is recognised as rootless.
    let out = u.ok(&["up"], &[]);
    assert!(
        out.contains("building the node image") && out.contains("    | STEP 1/"),
        "{out}\nservice log:\n{}",
        podman.log_text()
    );
    assert!(
        out.contains("engine: podman") && out.contains("(rootless)") && !out.contains("NOT rootless"),
        "{out}"
    );
    let node = inspect(&podman, "u7s-node").expect("node container");
    let node_name = node["Config"]["Hostname"].as_str().expect("hostname").to_owned();
    assert!(node_name.starts_with("u7s-"), "{node_name}");
    assert_node_shape(&node, &node_name, [2379, 6443, 10250, 8472], &work);
    for p in [2379, 6443, 10250] {
        assert!(port_is_held_tcp(p), "port {p}/tcp is not published");
    }
    assert!(port_is_held_udp(8472), "port 8472/udp is not published");
    assert_eq!(
        u.ok(&["shell", "--", "cat", "/proc/sys/net/ipv4/ip_forward"], &[])
            .trim(),
        "1"
    );

    u.check_shell_and_kubeadm_init();

    assert!(u.ok(&["logs", "--console"], &[]).contains("u7s-test-node up"));
    assert!(u.ok(&["up"], &[]).contains("already running"));
    let st = u.ok(&["status"], &[]);
    assert!(
        st.contains("running") && st.contains("(rootless)") && st.contains("fast path:  off"),
        "{st}"
    );
    let doctor = output_text(&u.run(&["doctor"], &[]));
    assert!(
        doctor.contains("engine           podman 4.3.1 (rootless)"),
        "{doctor}"
    );

    // State in the volumes survives down/up; down -v removes it.
    u.ok(
        &[
            "shell",
            "--",
            "sh",
            "-c",
            "echo kept > /var/u7s-state && echo kept > /etc/u7s-state",
        ],
        &[],
    );
    assert!(u.ok(&["down"], &[]).contains("state volumes kept"));
    assert!(inspect(&podman, "u7s-node").is_none());
    assert!(!port_is_held_tcp(6443), "down released the ports");
    assert!(u.ok(&["up"], &[]).contains("is up to date"), "no rebuild");
    let kept = u.ok(&["shell", "--", "cat", "/var/u7s-state", "/etc/u7s-state"], &[]);
    assert_eq!(kept.matches("kept").count(), 2, "{kept}");

    // A second instance beside the first.
    let out = u.ok(&["--tenant", "1", "up"], &[]);
    assert!(out.contains("u7s-t1-"), "{out}");
    let t1 = inspect(&podman, "u7s-t1-node").expect("tenant 1 node");
    let t1_name = t1["Config"]["Hostname"].as_str().expect("hostname").to_owned();
    assert_node_shape(&t1, &t1_name, [12379, 16443, 20250, 18472], &work);
    u.ok(&["--tenant", "1", "down", "-v"], &[]);

    u.ok(&["down", "-v"], &[]);
    u.ok(&["up"], &[]);
    let o = u.run(&["shell", "--", "cat", "/var/u7s-state"], &[]);
    assert!(
        !o.status.success(),
        "down -v wiped the state: {}",
        output_text(&o)
    );
    u.ok(&["down", "-v"], &[]);
    let vols = podman
        .podman(&["volume", "ls", "--format", "{{.Name}}"])
        .expect("volumes");
    assert!(
        !String::from_utf8_lossy(&vols.stdout).contains("u7s-"),
        "volumes left"
    );
}

#[test]
fn u7s_up_accel_on_podman_runs_the_node_on_the_wrapper() {
    let test = "u7s_up_accel_on_podman_runs_the_node_on_the_wrapper";
    let Some(lab) = Lab::with_podman_or_skip(test) else {
        return;
    };
    let peer = PeerHost::create().expect("peer host");
    let netaccel = lab
        .install_bin(&workspace_bin("netaccel").expect("netaccel"))
        .expect("install");
    let wrapper = lab.bin_dir().join("netaccel-runc");
    std::os::unix::fs::symlink(&netaccel, &wrapper).expect("wrapper link");
    let podman = RootlessPodman::serve(&lab, &[("netaccel", &wrapper)]).expect("podman API service");
    let u = setup(&lab, &podman);
    let (_server, httpd, expected) = peer
        .http_blob(&lab.path().join("www"), 7803, 1_000_000)
        .expect("httpd in the peer");
    // Ports of their own, below the ephemeral range (the other test of this
    // file runs at the same time on the defaults and tenant 1).
    let ports = "PORT_ETCD=25379\nPORT_KUBE_APISERVER=25443\nPORT_KUBELET=25250\nPORT_FLANNEL=25472\n";
    let env_file = u.work.join("u7s.env");
    std::fs::write(&env_file, ports).expect("u7s.env");
    lab.chown(&env_file).expect("chown u7s.env");
    let t = ["--tenant", "4"];
    let args = |rest: &[&'static str]| -> Vec<&str> { t.iter().chain(rest).copied().collect() };

    // A remote podman cannot choose the runtime: u7s refuses instead of
    // calling an unaccelerated node accelerated, and leaves nothing behind.
    let remote = podman.host();
    let o = u.run(&args(&["up", "--accel"]), &[("CONTAINER_HOST", remote.as_str())]);
    let text = output_text(&o);
    assert!(
        !o.status.success() && text.contains("remote mode") && !text.contains("panicked"),
        "{text}"
    );
    assert!(
        !text.contains("creating"),
        "refused before anything is made: {text}"
    );
    let doctor = output_text(&u.run(
        &args(&["doctor", "--accel"]),
        &[("CONTAINER_HOST", remote.as_str())],
    ));
    assert!(
        doctor.contains("[FAIL] accel runtime") && doctor.contains("remote mode"),
        "doctor says the same: {doctor}"
    );
    assert!(inspect(&podman, "u7s-t4-node").is_none(), "{text}");
    let nets = podman
        .podman(&["network", "ls", "--format", "{{.Name}}"])
        .expect("networks");
    assert!(
        !String::from_utf8_lossy(&nets.stdout).contains("u7s-t4"),
        "the network this run made is gone"
    );

    let out = u.ok(&args(&["up", "--accel"]), &[]);
    assert!(
        out.contains("netaccel daemon: pid") && out.contains("fast path on"),
        "{out}"
    );
    let node = inspect(&podman, "u7s-t4-node").expect("node");
    assert_eq!(node["OCIRuntime"], "netaccel", "the node runs on the wrapper");
    assert_eq!(
        node["HostConfig"]["PortBindings"]["25250/tcp"][0]["HostPort"],
        "25250"
    );
    let env = env_of(&node);
    assert!(
        env.iter()
            .any(|e| e.starts_with("NETACCEL_IGNORE=10.244.0.0/16,10.96.0.0/16,10.100.")),
        "{env:?}"
    );
    let st = u.ok(&args(&["status"]), &[]);
    assert!(
        st.contains("fast path:  on (runtime netaccel)") && st.contains("1 container(s)"),
        "{st}"
    );

    // A process of the node connects out to the peer host: bypassed.
    let fetch = format!("echo http://{httpd}/blob > /tmp/fetch");
    let mut shell = args(&["shell", "--", "sh", "-c"]);
    shell.push(&fetch);
    u.ok(&shell, &[]);
    let got = wait_for("the node's fetch", Duration::from_secs(30), || {
        let o = u.run(&args(&["shell", "--", "cat", "/tmp/fetched"]), &[]);
        o.status.success().then(|| output_text(&o))
    })
    .expect("the node fetched the blob");
    assert!(got.contains(&expected), "{got}");
    assert!(
        u.bypassed(&args(&["status"])) >= 1,
        "the fetch took the fast path"
    );

    let o = u.run(&args(&["up"]), &[]);
    assert!(
        !o.status.success()
            && output_text(&o).contains("it runs on the fast path")
            && output_text(&o).contains("`u7s up --recreate`"),
        "{}",
        output_text(&o)
    );
    u.ok(&args(&["down", "-v"]), &[]);
    let pid: i32 = std::fs::read_to_string(lab.runtime_dir().join("netaccel/netaccel.pid"))
        .expect("daemon pid file")
        .trim()
        .parse()
        .expect("pid");
    // SAFETY: signals the daemon u7s started for the lab user.
    unsafe { libc::kill(pid, libc::SIGTERM) };
}
