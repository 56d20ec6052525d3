//! End-to-end: `u7s` against rootless Docker (Debian's docker.io started by
//! dockerd-rootless.sh as the lab user), with a node image built by `u7s up`
//! from a local busybox rootfs plus the shipped u7s entrypoint (kindest/node
//! cannot be pulled here). Checks the node's shape as the engine reports it,
//! published ports on the host, state across down/up, shell/logs, two
//! tenants side by side, the same flow through the CLI driver (nerdctl's,
//! run with the docker CLI), and `--accel`.

use std::path::PathBuf;
use std::time::Duration;

use rootless_lab::docker::{RootlessDocker, DOCKER_CLI};
use rootless_lab::u7s::{
    assert_node_shape, env_of, first_inspected, port_is_held_tcp, port_is_held_udp, U7s, BASE,
};
use rootless_lab::{output_text, wait_for, workspace_bin, Lab, PeerHost};
use serde_json::Value;

/// The base image imported, a work directory and `u7s` for the lab user.
fn setup<'a>(lab: &'a Lab, docker: &RootlessDocker) -> U7s<'a> {
    docker
        .import_busybox(BASE)
        .expect("base image from a local rootfs");
    U7s::new(
        lab,
        &[(
            "DOCKER_HOST",
            format!("unix://{}", lab.runtime_dir().join("docker.sock").display()),
        )],
    )
}

fn inspect(docker: &RootlessDocker, name: &str) -> Option<Value> {
    first_inspected(
        &docker
            .docker(&["inspect", "--type", "container", name])
            .expect("docker inspect"),
    )
}

#[test]
fn u7s_runs_nodes_on_rootless_docker() {
    let test = "u7s_runs_nodes_on_rootless_docker";
    let Some(lab) = Lab::with_docker_or_skip(test) else {
        return;
    };
    let docker = RootlessDocker::start(&lab, &[]).expect("rootless dockerd");
    let u = setup(&lab, &docker);
    let work = u.work.clone();

    // up: builds the image (progress shown), creates network, volumes, node.
    let out = u.ok(&["up"], &[]);
    assert!(
        out.contains("building the node image") && out.contains("    | Step"),
        "{out}"
    );
    assert!(out.contains("(rootless)"), "{out}");
    let node = inspect(&docker, "u7s-node").expect("node container");
    let node_name = node["Config"]["Hostname"].as_str().expect("hostname").to_owned();
    assert!(node_name.starts_with("u7s-"), "{node_name}");
    assert_node_shape(&node, &node_name, [2379, 6443, 10250, 8472], &work);
    // The ports are really published on the host (rootlesskit holds them).
    for p in [2379, 6443, 10250] {
        assert!(port_is_held_tcp(p), "port {p}/tcp is not published");
    }
    assert!(port_is_held_udp(8472), "port 8472/udp is not published");

    // shell and the kubeadm-init boundary; then what only this flow checks.
    let cfg = u.check_shell_and_kubeadm_init();
    assert!(
        cfg.contains("bindPort: 6443") && cfg.contains("KubeletInUserNamespace: true"),
        "{cfg}"
    );
    // kubeconfig: admin.conf read from the node, server moved to the host port.
    let admin = "apiVersion: v1\nclusters:\n- cluster:\n    server: https://node:6443\n  name: kubernetes\nkind: Config\n";
    u.ok(
        &[
            "shell",
            "--",
            "sh",
            "-c",
            "mkdir -p /etc/kubernetes && printf '%s' \"$1\" > /etc/kubernetes/admin.conf",
            "sh",
            admin,
        ],
        &[],
    );
    assert!(u.ok(&["kubeconfig"], &[]).contains("export KUBECONFIG="));
    let kc = std::fs::read_to_string(work.join("kubeconfig")).expect("kubeconfig written");
    assert!(kc.contains("server: https://127.0.0.1:6443"), "{kc}");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(work.join("kubeconfig"))
            .expect("meta")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "credentials are private");

    // logs: the console through the engine; the journal needs a systemd node.
    assert!(u.ok(&["logs", "--console"], &[]).contains("u7s-test-node up"));
    let o = u.run(&["logs"], &[]);
    assert!(
        !o.status.success() && output_text(&o).contains("--console"),
        "{}",
        output_text(&o)
    );

    // up again is a no-op; status reports the node.
    assert!(u.ok(&["up"], &[]).contains("already running"));
    let st = u.ok(&["status"], &[]);
    assert!(
        st.contains("running") && st.contains("PORT_FLANNEL=8472/udp") && st.contains("fast path:  off"),
        "{st}"
    );

    // State in the volumes survives down/up, and is gone after down -v.
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
    assert!(inspect(&docker, "u7s-node").is_none());
    assert!(!port_is_held_tcp(6443), "down released the ports");
    assert!(
        u.ok(&["up"], &[]).contains("is up to date"),
        "no rebuild without changes"
    );
    let kept = u.ok(&["shell", "--", "cat", "/var/u7s-state", "/etc/u7s-state"], &[]);
    assert_eq!(kept.matches("kept").count(), 2, "{kept}");

    // A second instance beside the first: other ports, names and subnet.
    let out = u.ok(&["--tenant", "1", "up"], &[]);
    assert!(out.contains("u7s-t1-"), "{out}");
    let t1 = inspect(&docker, "u7s-t1-node").expect("tenant 1 node");
    let t1_name = t1["Config"]["Hostname"].as_str().expect("hostname").to_owned();
    assert_node_shape(&t1, &t1_name, [12379, 16443, 20250, 18472], &work);
    assert!(inspect(&docker, "u7s-node").expect("first node")["State"]["Running"] == true);
    // A port clash is found before anything is created.
    let o = u.run(&["--tenant", "2", "--port-kube-apiserver", "6443", "up"], &[]);
    let t = output_text(&o);
    assert!(
        !o.status.success() && t.contains("already in use") && t.contains("--tenant"),
        "{t}"
    );
    assert!(inspect(&docker, "u7s-t2-node").is_none());
    let nets = docker
        .docker(&["network", "ls", "--format", "{{.Name}}"])
        .expect("networks");
    assert!(
        !String::from_utf8_lossy(&nets.stdout).contains("u7s-t2"),
        "nothing created"
    );
    // A subnet clash with another network is explained.
    let first_subnet = u.ok(&["render"], &[]);
    let subnet = first_subnet
        .lines()
        .find_map(|l| l.strip_prefix("node_subnet: "))
        .expect("node_subnet in render")
        .trim()
        .to_owned();
    // Tenant 3's shifted ports lie in the kernel's ephemeral range (see the
    // tenant 4 test): `doctor` warns about that, and the clash check runs
    // with explicit ports below it, so a parallel test's outgoing connection
    // cannot turn it into a port refusal.
    let doctor = output_text(&u.run(&["--tenant", "3", "doctor"], &[]));
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").expect("port range");
    let bounds: Vec<u16> = range
        .split_whitespace()
        .map(|b| b.parse().expect("bound"))
        .collect();
    if bounds[0] <= 32379 && 40250 <= bounds[1] {
        assert!(
            doctor.contains("PORT_KUBELET=40250") && doctor.contains("ip_local_reserved_ports="),
            "{doctor}"
        );
    }
    let below = [
        "--port-etcd",
        "24379",
        "--port-kube-apiserver",
        "24443",
        "--port-kubelet",
        "24250",
        "--port-flannel",
        "24472",
    ];
    let mut args = vec!["--tenant", "3", "--node-subnet", &subnet];
    args.extend(below);
    args.push("up");
    let o = u.run(&args, &[]);
    let t = output_text(&o);
    assert!(
        !o.status.success() && t.contains("collides") && t.contains("NODE_SUBNET"),
        "{t}"
    );
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
    let vols = docker
        .docker(&["volume", "ls", "--format", "{{.Name}}"])
        .expect("volumes");
    assert!(
        !String::from_utf8_lossy(&vols.stdout).contains("u7s-"),
        "volumes left"
    );

    // The CLI driver (nerdctl's flags), run with the docker CLI.
    let cli_env = [("CONTAINER_ENGINE", "nerdctl"), ("U7S_NERDCTL", DOCKER_CLI)];
    let out = u.ok(&["up"], &cli_env);
    assert!(out.contains("engine: nerdctl"), "{out}");
    let node = inspect(&docker, "u7s-node").expect("node via the CLI driver");
    assert_node_shape(&node, &node_name, [2379, 6443, 10250, 8472], &work);
    assert!(u.ok(&["shell", "--", "hostname"], &cli_env).contains(&node_name));
    assert!(u
        .ok(&["logs", "--console"], &cli_env)
        .contains("u7s-test-node up"));
    assert_eq!(
        u.run(&["shell", "--", "sh", "-c", "exit 4"], &cli_env)
            .status
            .code(),
        Some(4)
    );
    let st = u.ok(&["status"], &cli_env);
    assert!(
        st.contains("(image ") && st.contains("u7s-node:"),
        "the image by name: {st}"
    );
    // down keeps the volumes; up again creates them again without error.
    u.ok(&["down"], &cli_env);
    u.ok(&["up"], &cli_env);
    u.ok(&["down", "-v"], &cli_env);
    assert!(inspect(&docker, "u7s-node").is_none());
}

#[test]
fn u7s_up_accel_puts_the_node_on_the_fast_path() {
    let test = "u7s_up_accel_puts_the_node_on_the_fast_path";
    let Some(lab) = Lab::with_docker_or_skip(test) else {
        return;
    };
    let peer = PeerHost::create().expect("peer host");
    let netaccel = lab
        .install_bin(&workspace_bin("netaccel").expect("netaccel"))
        .expect("install");
    let wrapper = lab.bin_dir().join("netaccel-runc");
    std::os::unix::fs::symlink(&netaccel, &wrapper).expect("wrapper link");
    let docker = RootlessDocker::start(&lab, &[("netaccel", &wrapper)]).expect("rootless dockerd");
    let u = setup(&lab, &docker);
    let (_server, httpd, expected) = peer
        .http_blob(&lab.path().join("www"), 7802, 1_000_000)
        .expect("httpd in the peer");

    // Tenant 4's shifted ports (42379, 46443, 50250, 48472) lie in the
    // kernel's ephemeral range, where any outgoing connection of the
    // parallel tests can hold one for a moment; `up` then rightly refuses.
    // Explicit ports below that range keep the test deterministic.
    let ports = "PORT_ETCD=23379\nPORT_KUBE_APISERVER=23443\nPORT_KUBELET=23250\nPORT_FLANNEL=23472\n";
    let env_file = u.work.join("u7s.env");
    std::fs::write(&env_file, ports).expect("u7s.env");
    lab.chown(&env_file).expect("chown u7s.env");

    // u7s starts the daemon itself (none is running yet).
    let out = u.ok(&["--tenant", "4", "up", "--accel"], &[]);
    assert!(
        out.contains("netaccel daemon: pid") && out.contains("started now"),
        "{out}"
    );
    assert!(out.contains("fast path on"), "{out}");
    let node = inspect(&docker, "u7s-t4-node").expect("node");
    assert_eq!(node["HostConfig"]["Runtime"], "netaccel");
    assert_eq!(
        node["HostConfig"]["PortBindings"]["23250/tcp"][0]["HostPort"], "23250",
        "ports from u7s.env"
    );
    let env = env_of(&node);
    assert!(
        env.iter()
            .any(|e| e.starts_with("NETACCEL_IGNORE=10.244.0.0/16,10.96.0.0/16,10.100.")),
        "{env:?}"
    );

    // A process of the node (not one started by `u7s shell`: Debian's runc
    // 1.1.5 gives exec'd processes no notify listener we can serve) connects
    // out to the peer host.
    u.ok(
        &[
            "--tenant",
            "4",
            "shell",
            "--",
            "sh",
            "-c",
            &format!("echo http://{httpd}/blob > /tmp/fetch"),
        ],
        &[],
    );
    let got = wait_for("the node's fetch", Duration::from_secs(30), || {
        let o = u.run(&["--tenant", "4", "shell", "--", "cat", "/tmp/fetched"], &[]);
        o.status.success().then(|| output_text(&o))
    })
    .expect("the node fetched the blob");
    assert!(got.contains(&expected), "{got}");
    let st = u.ok(&["--tenant", "4", "status"], &[]);
    assert!(st.contains("fast path:  on (runtime netaccel)"), "{st}");
    assert!(u.bypassed(&["--tenant", "4", "status"]) >= 1, "{st}");

    // Switching the fast path needs a new container; u7s says so.
    let o = u.run(&["--tenant", "4", "up"], &[]);
    assert!(
        !o.status.success()
            && output_text(&o).contains("it runs on the fast path")
            && output_text(&o).contains("`u7s up --recreate`"),
        "{}",
        output_text(&o)
    );
    u.ok(&["--tenant", "4", "down", "-v"], &[]);

    // The same through the CLI driver run with the docker CLI: the engine
    // behind it runs containers with runtimes, so the node gets the wrapper
    // (not nerdctl's switches, which a Docker daemon would ignore).
    let cli_env = [("CONTAINER_ENGINE", "nerdctl"), ("U7S_NERDCTL", DOCKER_CLI)];
    let out = u.ok(&["--tenant", "4", "up", "--accel"], &cli_env);
    assert!(
        out.contains("already running") && out.contains("fast path on"),
        "{out}"
    );
    let node = inspect(&docker, "u7s-t4-node").expect("node via the CLI driver");
    assert_eq!(
        node["HostConfig"]["Runtime"], "netaccel",
        "{}",
        node["HostConfig"]
    );
    assert_eq!(node["Config"]["Labels"]["io.u7s.accel"], "true");
    let st = u.ok(&["--tenant", "4", "status"], &cli_env);
    assert!(st.contains("fast path:  on (runtime netaccel)"), "{st}");
    u.ok(&["--tenant", "4", "down", "-v"], &cli_env);

    let pid_file = lab.runtime_dir().join("netaccel/netaccel.pid");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .expect("daemon pid file")
        .trim()
        .parse()
        .expect("pid");
    // SAFETY: signals the daemon u7s started for the lab user.
    unsafe { libc::kill(pid, libc::SIGTERM) };
}

/// A host directory for `--mount`: labnet and the C libraries it loads (the
/// test node is busybox only), and a file to read.
fn share_dir(lab: &Lab) -> PathBuf {
    let share = lab.path().join("share");
    std::fs::create_dir_all(&share).expect("share dir");
    let labnet = workspace_bin("labnet").expect("labnet");
    std::fs::copy(&labnet, share.join("labnet")).expect("copy labnet");
    for path in rootless_lab::rootfs::libraries(&labnet).expect("ldd") {
        let name = path.file_name().expect("name");
        let target = if name.to_string_lossy().starts_with("ld-linux") {
            share.join("ld.so")
        } else {
            share.join(name)
        };
        std::fs::copy(&path, target).expect("copy library");
    }
    std::fs::write(share.join("hello.txt"), "mounted from the host\n").expect("file");
    for e in std::fs::read_dir(&share).expect("ls") {
        lab.chown(&e.expect("entry").path()).expect("chown");
    }
    lab.chown(&share).expect("chown");
    share
}

#[test]
fn u7s_publishes_node_ports_and_mounts_host_paths() {
    let test = "u7s_publishes_node_ports_and_mounts_host_paths";
    let Some(lab) = Lab::with_docker_or_skip(test) else {
        return;
    };
    let docker = RootlessDocker::start(&lab, &[]).expect("rootless dockerd");
    let u = setup(&lab, &docker);
    // The node's own ports, of this test only (the others run beside it).
    let ports = "PORT_ETCD=21379\nPORT_KUBE_APISERVER=21443\nPORT_KUBELET=21250\nPORT_FLANNEL=21472\n";
    let env_file = u.work.join("u7s.env");
    std::fs::write(&env_file, ports).expect("u7s.env");
    lab.chown(&env_file).expect("chown u7s.env");
    let share = share_dir(&lab);
    let mount = format!("{}:/mnt/share:ro", share.display());

    // Each bad value is refused with its reason before anything is made.
    let locked = lab.path().join("locked");
    std::fs::create_dir(&locked).expect("locked dir");
    // Root's, mode 0700: the rootless user cannot read it.
    std::fs::set_permissions(&locked, std::os::unix::fs::PermissionsExt::from_mode(0o700)).expect("chmod");
    let held = std::net::TcpListener::bind("0.0.0.0:30099").expect("hold a port");
    let locked_mount = format!("{}:/mnt/locked", locked.display());
    let etc_mount = format!("{}:/etc", share.display());
    for (args, hint) in [
        (vec!["--publish", "21443:30443"], "PORT_KUBE_APISERVER"),
        (vec!["--publish", "30080:30080/sctp"], "tcp or udp"),
        (vec!["--publish", "30099:30099"], "already in use"),
        (vec!["--mount", "/nonexistent-u7s:/mnt/x"], "No such file"),
        (vec!["--mount", &etc_mount], "the node needs for itself"),
        (vec!["--mount", &locked_mount], "not readable by this user"),
    ] {
        let mut a = args.clone();
        a.push("up");
        let o = u.run(&a, &[]);
        let t = output_text(&o);
        assert!(!o.status.success() && t.contains(hint), "{args:?}: {t}");
        assert!(
            !t.contains("panicked") && !t.contains("creating"),
            "{args:?}: {t}"
        );
    }
    drop(held);
    assert!(inspect(&docker, "u7s-node").is_none());
    let nets = docker
        .docker(&["network", "ls", "--format", "{{.Name}}"])
        .expect("networks");
    assert!(
        !String::from_utf8_lossy(&nets.stdout).contains("u7s-net"),
        "nothing created"
    );

    // up with a TCP and a UDP NodePort and the share.
    let extras = [
        "--publish",
        "30080:30080",
        "--publish",
        "30053:30053/udp",
        "--mount",
        &mount,
    ];
    let with =
        |rest: &[&str]| -> Vec<String> { extras.iter().chain(rest).map(|s| (*s).to_owned()).collect() };
    let ok = |args: Vec<String>| u.ok(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    ok(with(&["up"]));
    let render = ok(with(&["render"]));
    assert!(
        render.contains("node_port: 30053") && render.contains("/mnt/share"),
        "{render}"
    );
    let node = inspect(&docker, "u7s-node").expect("node");
    let hc = &node["HostConfig"];
    assert_eq!(hc["PortBindings"]["30080/tcp"][0]["HostPort"], "30080", "{hc}");
    assert_eq!(hc["PortBindings"]["30053/udp"][0]["HostPort"], "30053", "{hc}");
    let m = node["Mounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .find(|m| m["Destination"] == "/mnt/share")
        .expect("the share is mounted")
        .clone();
    assert_eq!(
        (m["RW"].clone(), m["Source"].clone()),
        (Value::Bool(false), Value::String(share.display().to_string()))
    );
    assert!(ok(with(&["shell", "--", "cat", "/mnt/share/hello.txt"])).contains("mounted from the host"));

    // Servers in the node on the NodePort numbers, reached from the host
    // through the published ports.
    let labnet = "/mnt/share/ld.so --library-path /mnt/share /mnt/share/labnet";
    let start = format!(
        "setsid {labnet} serve 0.0.0.0:30080 > /tmp/tcp.log 2>&1 < /dev/null & setsid {labnet} udp-echo 0.0.0.0:30053 > /tmp/udp.log 2>&1 < /dev/null &"
    );
    ok(with(&["shell", "--", "sh", "-c", &start]));
    wait_for("the servers in the node", Duration::from_secs(20), || {
        let t = output_text(&u.run(&["shell", "--", "cat", "/tmp/tcp.log", "/tmp/udp.log"], &[]));
        (t.matches("listening").count() == 2).then_some(())
    })
    .expect("servers listening");
    let blob: Vec<u8> = (0..1_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let echoed = wait_for("TCP through the published port", Duration::from_secs(20), || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect("127.0.0.1:30080").ok()?;
        let writer = {
            let mut w = s.try_clone().ok()?;
            let blob = blob.clone();
            std::thread::spawn(move || {
                let _ = w.write_all(&blob);
                let _ = w.shutdown(std::net::Shutdown::Write);
            })
        };
        let mut back = Vec::new();
        s.read_to_end(&mut back).ok()?;
        writer.join().ok()?;
        (back.len() == blob.len()).then_some(back)
    })
    .expect("the TCP server in the node answered");
    assert!(echoed == blob, "TCP data intact");
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    udp.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let answer = wait_for("UDP through the published port", Duration::from_secs(20), || {
        udp.send_to(b"u7s nodeport datagram", "127.0.0.1:30053").ok()?;
        let mut buf = [0u8; 64];
        let (n, _) = udp.recv_from(&mut buf).ok()?;
        Some(buf[..n].to_vec())
    })
    .expect("the UDP server in the node answered");
    assert_eq!(answer, b"u7s nodeport datagram");
    let st = ok(with(&["status"]));
    assert!(
        st.contains("publish:    30080:30080/tcp 30053:30053/udp (through the engine's port forwarder)")
            && st.contains(&format!("mounts:     {mount}"))
            && !st.contains("settings differ"),
        "{st}"
    );

    // Another port takes a new container: refused without --recreate,
    // done with it, the node's state kept.
    ok(with(&["shell", "--", "sh", "-c", "echo kept > /var/u7s-state"]));
    let changed = ["--publish", "30081:30081", "--mount", &mount];
    let o = u.run(&[&changed[..], &["up"]].concat(), &[]);
    let t = output_text(&o);
    assert!(
        !o.status.success() && t.contains("extra ports and mounts") && t.contains("`u7s up --recreate`"),
        "{t}"
    );
    assert!(
        inspect(&docker, "u7s-node").expect("node")["HostConfig"]["PortBindings"]["30080/tcp"].is_array()
    );
    let st = u.ok(&[&changed[..], &["status"]].concat(), &[]);
    assert!(st.contains("settings differ"), "{st}");
    let out = u.ok(&[&changed[..], &["up", "--recreate"]].concat(), &[]);
    assert!(out.contains("recreating the node container u7s-node"), "{out}");
    let bindings = inspect(&docker, "u7s-node").expect("node")["HostConfig"]["PortBindings"].clone();
    assert!(
        bindings["30081/tcp"].is_array() && bindings["30080/tcp"].is_null(),
        "{bindings}"
    );
    assert_eq!(
        u.ok(&["shell", "--", "cat", "/var/u7s-state"], &[]).trim(),
        "kept"
    );
    u.ok(&["down", "-v"], &[]);
}
