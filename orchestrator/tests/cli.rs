//! The `u7s` binary on bad input and without an engine: every answer is a
//! clear message and an exit code, never a panic. (Against a real engine:
//! tests/u7s_docker.rs.)

use std::process::{Command, Output};

const SUBCOMMANDS: &[&str] = &[
    "up",
    "down",
    "render",
    "kubeadm-init",
    "install-cni",
    "kubeconfig",
    "kubectl",
    "join-command",
    "kubeadm-join",
    "sync-external-ip",
    "kubeadm-reset",
    "shell",
    "logs",
    "doctor",
    "status",
];

fn u7s(args: &[&str], env: &[(&str, &str)], dir: &std::path::Path) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_u7s"));
    cmd.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOST_IP", "192.0.2.10")
        .env("XDG_RUNTIME_DIR", dir)
        .env("DOCKER_HOST", format!("unix://{}/no-docker.sock", dir.display()))
        .env(
            "CONTAINER_HOST",
            format!("unix://{}/no-podman.sock", dir.display()),
        )
        .current_dir(dir)
        .args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run u7s")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn assert_clean_failure(o: &Output, hint: &str) {
    let t = text(o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains(hint), "{hint:?} missing in: {t}");
    assert!(!t.contains("panicked"), "{t}");
}

#[test]
fn every_subcommand_has_help() {
    let dir = tempfile::tempdir().expect("dir");
    for sub in SUBCOMMANDS {
        let o = u7s(&[sub, "--help"], &[], dir.path());
        assert!(o.status.success(), "{sub}: {}", text(&o));
        assert!(String::from_utf8_lossy(&o.stdout).contains("Usage: u7s"), "{sub}");
    }
    let o = u7s(&["--help"], &[], dir.path());
    let t = text(&o);
    for sub in SUBCOMMANDS {
        assert!(t.contains(sub), "{sub} not listed: {t}");
    }
    assert!(
        t.contains("PORT_KUBE_APISERVER") && t.contains("kubeadm-join"),
        "{t}"
    );
}

#[test]
fn render_needs_no_engine_and_follows_the_settings() {
    let dir = tempfile::tempdir().expect("dir");
    let o = u7s(
        &["--tenant", "2", "render", "--accel"],
        &[("NODE_NAME", "n1"), ("NODE_SUBNET", "10.100.42.0/24")],
        dir.path(),
    );
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("controlPlaneEndpoint: n1:26443"), "{t}");
    assert!(t.contains("10.100.42.100"), "{t}");
    assert!(
        t.contains("NETACCEL_IGNORE: 10.244.0.0/16,10.96.0.0/16,10.100.42.0/24"),
        "{t}"
    );
}

#[test]
fn the_config_file_is_read_and_checked() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("u7s.env"), "# mine\nPORT_KUBE_APISERVER=7443\n").expect("write");
    let o = u7s(&["render"], &[], dir.path());
    assert!(text(&o).contains("bindPort: 7443"), "{}", text(&o));
    std::fs::write(dir.path().join("u7s.env"), "PORT_KUBE_APISERVR=7443\n").expect("write");
    assert_clean_failure(&u7s(&["render"], &[], dir.path()), "u7s.env:1");
    assert_clean_failure(
        &u7s(&["--config", "missing.env", "render"], &[], dir.path()),
        "missing.env",
    );
}

#[test]
fn bad_values_fail_with_the_variable_named() {
    let dir = tempfile::tempdir().expect("dir");
    assert_clean_failure(
        &u7s(&["render"], &[("PORT_ETCD", "99999")], dir.path()),
        "PORT_ETCD",
    );
    assert_clean_failure(
        &u7s(&["--engine", "lxc", "status"], &[], dir.path()),
        "docker, podman or nerdctl",
    );
    assert_clean_failure(
        &u7s(&["--node-subnet", "10.100.1.7/24", "up"], &[], dir.path()),
        "10.100.1.0/24",
    );
    let o = u7s(&["up", "--bogus"], &[], dir.path());
    assert_eq!(o.status.code(), Some(2), "usage errors exit 2: {}", text(&o));
}

#[test]
fn without_an_engine_the_error_lists_what_was_tried() {
    let dir = tempfile::tempdir().expect("dir");
    let o = u7s(&["status"], &[], dir.path());
    assert_clean_failure(&o, "no container engine found");
    assert!(text(&o).contains("no-docker.sock"), "{}", text(&o));
    assert_clean_failure(&u7s(&["kubeadm-join"], &[], dir.path()), "u7s join-command");
}
