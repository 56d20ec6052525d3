//! The seccomp profile a container needs for the fast path.
//!
//! Only `connect` is notified: every notified syscall costs a round trip to the
//! daemon. `close`, `getpeername` and friends need no hook because the daemon
//! keeps no per-fd state (it reads the socket itself through `pidfd_getfd`)
//! and a bypassed socket is connected to exactly the address the container
//! asked for, so `getpeername` already answers the container's view.

use std::path::Path;

use serde::Serialize;

use crate::state::ContainerSettings;

/// Syscalls the daemon handles.
pub const NOTIFIED_SYSCALLS: &[&str] = &["connect"];

/// `linux.seccomp` of an OCI config (the same keys as a Docker profile).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NotifyProfile {
    pub default_action: &'static str,
    pub listener_path: String,
    pub listener_metadata: String,
    pub architectures: Vec<&'static str>,
    pub syscalls: Vec<SyscallRule>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SyscallRule {
    pub names: Vec<&'static str>,
    pub action: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("listener socket path {path:?} must be absolute (the runtime resolves it in its own cwd)")]
    RelativeSocket { path: String },
    #[error("listener socket path {path:?} is not valid UTF-8")]
    NonUtf8Socket { path: String },
}

/// The native architecture first, then the compat ones a container may run;
/// the daemon only acts on native calls and lets the others continue.
fn architectures() -> Vec<&'static str> {
    if cfg!(target_arch = "x86_64") {
        vec!["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    } else if cfg!(target_arch = "aarch64") {
        vec!["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    } else {
        Vec::new()
    }
}

impl NotifyProfile {
    pub fn new(socket: &Path, settings: &ContainerSettings) -> Result<Self, ProfileError> {
        let listener_path = socket
            .to_str()
            .ok_or_else(|| ProfileError::NonUtf8Socket {
                path: socket.to_string_lossy().into_owned(),
            })?
            .to_owned();
        if !socket.is_absolute() {
            return Err(ProfileError::RelativeSocket { path: listener_path });
        }
        let listener_metadata = if settings == &ContainerSettings::default() {
            String::new()
        } else {
            serde_json::to_string(settings).unwrap_or_default()
        };
        Ok(Self {
            default_action: "SCMP_ACT_ALLOW",
            listener_path,
            listener_metadata,
            architectures: architectures(),
            syscalls: vec![SyscallRule {
                names: NOTIFIED_SYSCALLS.to_vec(),
                action: "SCMP_ACT_NOTIFY",
            }],
        })
    }

    pub fn to_json_pretty(&self) -> String {
        // Serialising plain strings and vectors cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::ContainerProcessState;

    #[test]
    fn renders_notify_rule_and_listener() {
        let p = NotifyProfile::new(
            Path::new("/run/user/1000/netaccel/netaccel.sock"),
            &Default::default(),
        )
        .expect("profile");
        let v: serde_json::Value = serde_json::from_str(&p.to_json_pretty()).expect("json");
        assert_eq!(v["listenerPath"], "/run/user/1000/netaccel/netaccel.sock");
        assert_eq!(v["defaultAction"], "SCMP_ACT_ALLOW");
        assert_eq!(v["syscalls"][0]["action"], "SCMP_ACT_NOTIFY");
        assert_eq!(v["syscalls"][0]["names"], serde_json::json!(["connect"]));
        assert_eq!(v["listenerMetadata"], "");
    }

    #[test]
    fn settings_round_trip_through_the_state_message() {
        let settings = ContainerSettings {
            ignore: vec!["10.244.0.0/16".parse().expect("net")],
        };
        let p = NotifyProfile::new(Path::new("/s.sock"), &settings).expect("profile");
        let msg = serde_json::json!({
            "ociVersion": "1.0.2", "fds": ["seccompFd"], "pid": 1,
            "metadata": p.listener_metadata, "state": {"id": "x"}
        });
        let state = ContainerProcessState::parse(msg.to_string().as_bytes(), 1).expect("state");
        assert_eq!(state.settings().expect("settings"), settings);
    }

    #[test]
    fn relative_socket_is_refused() {
        let err = NotifyProfile::new(Path::new("netaccel.sock"), &Default::default()).expect_err("relative");
        assert!(err.to_string().contains("absolute"), "{err}");
    }
}
