//! End-to-end: rootless Podman (Debian's podman 4.3) running a container
//! through the netaccel runtime wrapper (`--runtime netaccel-runc`). crun
//! refuses this machine's cgroup v1 layout, so Podman runs runc with the
//! cgroupfs manager; its containers reach a peer-host server through the
//! bypass, data intact.

use rootless_lab::podman::RootlessPodman;
use rootless_lab::{workspace_bin, DaemonProcess, Lab, PeerHost};

#[test]
fn rootless_podman_runs_through_the_wrapper() {
    let Some(lab) = Lab::with_podman_or_skip("rootless_podman_runs_through_the_wrapper") else {
        return;
    };
    let peer = PeerHost::create().expect("peer host");
    let d = DaemonProcess::start(&lab, &workspace_bin("netaccel").expect("netaccel"), &[]).expect("daemon");
    let wrapper = lab.bin_dir().join("netaccel-runc");
    std::os::unix::fs::symlink(lab.bin_dir().join("netaccel"), &wrapper).expect("wrapper link");
    let podman = RootlessPodman::configure(&lab, &[]).expect("podman configuration");
    podman.import_busybox("lab/busybox:1").expect("podman import");

    let (_server, httpd, expected) = peer
        .http_blob(&lab.path().join("www"), 7802, 1_500_000)
        .expect("httpd in the peer");

    let script = format!("wget -q -O - http://{httpd}/blob | sha256sum");
    let out = podman
        .cli()
        .arg("--runtime")
        .arg(&wrapper)
        .args(["run", "--rm", "lab/busybox:1", "sh", "-c", &script])
        .output()
        .expect("podman run");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains(&expected), "data differs: {text}");
    assert_eq!(d.bypassed_to(&httpd), 1, "daemon log:\n{}", d.log_text());
}
