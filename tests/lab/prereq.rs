//! What a lab needs from the machine, and what happens when it is missing:
//! outside CI the test is skipped with the reason printed; with `CI=true` the
//! missing prerequisite is a failure, so CI really runs everything.

use std::path::Path;

use crate::user::LabUser;

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Skips (prints and returns) or, in CI, panics.
pub fn skip_or_fail(test: &str, missing: &str) {
    if in_ci() {
        panic!("{test}: prerequisite missing in CI: {missing}");
    }
    eprintln!("SKIPPED {test}: {missing} (run init-host/init-host.root.sh as root, then cargo test as root)");
}

fn tool(name: &str) -> Result<(), String> {
    ["/usr/bin", "/usr/sbin", "/bin", "/sbin"]
        .iter()
        .any(|d| Path::new(d).join(name).is_file())
        .then_some(())
        .ok_or_else(|| format!("{name} not installed"))
}

/// Everything [`crate::Lab`] uses; returns the test user on success.
pub fn check_lab() -> Result<LabUser, String> {
    if !rustix::process::geteuid().is_root() {
        return Err("the lab must be started as root (it drops to the test user itself)".into());
    }
    for t in ["runc", "slirp4netns", "ip", "iperf3", "busybox", "unshare"] {
        tool(t)?;
    }
    let user = LabUser::from_env()?;
    let tun = rustix::fs::stat("/dev/net/tun").map_err(|e| format!("/dev/net/tun: {e}"))?;
    if tun.st_mode & 0o006 != 0o006 {
        return Err("/dev/net/tun is not usable by users (mode 0666 needed for slirp4netns)".into());
    }
    let max_userns = std::fs::read_to_string("/proc/sys/user/max_user_namespaces").unwrap_or_default();
    if max_userns.trim() == "0" {
        return Err("user namespaces are disabled (user.max_user_namespaces = 0)".into());
    }
    Ok(user)
}

/// Rootless Docker (Debian's docker.io) on top of [`check_lab`].
pub fn check_docker() -> Result<LabUser, String> {
    let user = check_lab()?;
    for path in [
        crate::docker::DOCKERD_ROOTLESS,
        crate::docker::DOCKER_CLI,
        "/usr/sbin/dockerd",
    ] {
        if !Path::new(path).is_file() {
            return Err(format!("{path} missing (Debian package docker.io)"));
        }
    }
    tool("rootlesskit")?;
    Ok(user)
}

/// Rootless Podman (Debian's podman) on top of [`check_lab`].
pub fn check_podman() -> Result<LabUser, String> {
    let user = check_lab()?;
    tool("podman")?;
    Ok(user)
}
