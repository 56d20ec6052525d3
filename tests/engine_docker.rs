//! End-to-end: rootless Docker (Debian's docker.io via dockerd-rootless.sh)
//! running a container through the netaccel runtime wrapper. The container's
//! connection to a peer-host server is bypassed, and Docker's default seccomp
//! profile is still in force.

use rootless_lab::docker::RootlessDocker;
use rootless_lab::{workspace_bin, DaemonProcess, Lab, PeerHost};

const IMAGE: &str = "lab/busybox:1";

#[test]
fn rootless_docker_runs_through_the_wrapper_and_keeps_its_default_profile() {
    let test = "rootless_docker_runs_through_the_wrapper_and_keeps_its_default_profile";
    let Some(lab) = Lab::with_docker_or_skip(test) else {
        return;
    };
    let peer = PeerHost::create().expect("peer host");
    let d = DaemonProcess::start(&lab, &workspace_bin("netaccel").expect("netaccel"), &[]).expect("daemon");
    let wrapper = lab.bin_dir().join("netaccel-runc");
    std::os::unix::fs::symlink(lab.bin_dir().join("netaccel"), &wrapper).expect("wrapper link");
    let docker = RootlessDocker::start(&lab, &[("netaccel", &wrapper)]).expect("rootless dockerd");
    docker.import_busybox(IMAGE).expect("image from a local rootfs");

    let (_server, httpd, expected) = peer
        .http_blob(&lab.path().join("www"), 7801, 2_000_000)
        .expect("httpd in the peer");

    // unshare(CLONE_NEWUSER) is refused by Docker's default seccomp profile.
    let script = format!("wget -q -O - http://{httpd}/blob | sha256sum; unshare -U true; echo unshare=$?");
    let out = docker
        .docker(&["run", "--rm", "--runtime", "netaccel", IMAGE, "sh", "-c", &script])
        .expect("docker run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let all = format!(
        "{stdout}{}\ndockerd log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        docker.log_text()
    );
    assert!(out.status.success(), "{all}");
    assert!(stdout.contains(&expected), "data differs: {all}");
    assert!(
        stdout.contains("unshare=1"),
        "Docker's default profile was not kept: {all}"
    );
    assert_eq!(d.bypassed_to(&httpd), 1, "daemon log:\n{}", d.log_text());

    // Control: the same call succeeds without seccomp, so the refusal above
    // came from Docker's profile.
    let out = docker
        .docker(&[
            "run",
            "--rm",
            "--security-opt",
            "seccomp=unconfined",
            IMAGE,
            "sh",
            "-c",
            "unshare -U true; echo unshare=$?",
        ])
        .expect("docker run");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("unshare=0"),
        "{out:?}"
    );
}
