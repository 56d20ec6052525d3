//! The seccomp profile a container needs for the fast path.
//!
//! Every notified syscall costs a round trip to the daemon, so only what the
//! daemon acts on is notified: the rules come from the syscall table
//! (`calls::SYSCALLS`): `connect`, and for a container with published ports
//! whose binds the daemon takes over, `bind` plus the guards that keep the
//! host listener it hands out a listener (`shutdown` except SHUT_WR is done
//! by the daemon; io_uring, which would bypass seccomp, is refused).
//! `close`, `getpeername` and friends need no hook because the daemon keeps no
//! per-fd state (it reads the socket itself through `pidfd_getfd`) and a
//! bypassed socket is connected to exactly the address the container asked
//! for, so `getpeername` already answers the container's view.

use std::path::Path;

use serde::Serialize;

use super::state::ContainerSettings;
use crate::calls::{self, Action, Syscall};

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
#[serde(rename_all = "camelCase")]
pub struct SyscallRule {
    pub names: Vec<&'static str>,
    pub action: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<ArgRule>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errno_ret: Option<u32>,
}

/// A condition on one syscall argument (OCI `LinuxSeccompArg`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ArgRule {
    pub index: u32,
    pub value: u64,
    pub op: &'static str,
}

impl SyscallRule {
    fn of(syscall: &Syscall) -> Self {
        let (action, errno_ret) = match syscall.action {
            Action::Notify(_) => ("SCMP_ACT_NOTIFY", None),
            Action::Fail(errno) => ("SCMP_ACT_ERRNO", Some(errno as u32)),
        };
        Self {
            names: vec![syscall.name],
            action,
            args: syscall
                .filter
                .iter()
                .map(|f| ArgRule {
                    index: f.index,
                    value: f.value,
                    op: f.op,
                })
                .collect(),
            errno_ret,
        }
    }
}

/// The rules for a container: one per syscall of the table it gets.
pub fn rules(settings: &ContainerSettings) -> Vec<SyscallRule> {
    calls::for_container(!settings.bind_bypass().is_empty())
        .map(SyscallRule::of)
        .collect()
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
            architectures: if settings.bind_bypass().is_empty() {
                architectures()
            } else {
                // 32-bit calls (i386 socketcall multiplexes shutdown and
                // connect behind a pointer) would go around the listener
                // guards, so such a container runs native code only.
                architectures().into_iter().take(1).collect()
            },
            syscalls: rules(settings),
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
    use crate::oci::state::ContainerProcessState;

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
            publish: vec!["127.0.0.1:8080:80".parse().expect("mapping")],
            ignore_bind: false,
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
    fn bind_and_its_guards_are_notified_only_with_bind_bypass() {
        let names = |s: &ContainerSettings| -> Vec<String> {
            let p = NotifyProfile::new(Path::new("/s.sock"), s).expect("profile");
            let v: serde_json::Value = serde_json::from_str(&p.to_json_pretty()).expect("json");
            v["syscalls"]
                .as_array()
                .expect("rules")
                .iter()
                .map(|r| format!("{}:{}", r["names"][0].as_str().unwrap_or(""), r["action"]))
                .collect()
        };
        let plain = ContainerSettings::default();
        assert_eq!(names(&plain), ["connect:\"SCMP_ACT_NOTIFY\""]);
        let published = ContainerSettings {
            publish: vec!["8080:80".parse().expect("mapping")],
            ..Default::default()
        };
        assert_eq!(
            names(&published),
            [
                "connect:\"SCMP_ACT_NOTIFY\"",
                "bind:\"SCMP_ACT_NOTIFY\"",
                "shutdown:\"SCMP_ACT_NOTIFY\"",
                "io_uring_setup:\"SCMP_ACT_ERRNO\""
            ]
        );
        let p = NotifyProfile::new(Path::new("/s.sock"), &published).expect("profile");
        assert_eq!(p.architectures.len(), 1, "native only: {:?}", p.architectures);
        let shutdown = &rules(&published)[2];
        assert_eq!(
            (shutdown.args[0].index, shutdown.args[0].value),
            (1, 1),
            "all but SHUT_WR"
        );
        let off = ContainerSettings {
            ignore_bind: true,
            ..published
        };
        assert_eq!(names(&off), ["connect:\"SCMP_ACT_NOTIFY\""]);
    }

    #[test]
    fn relative_socket_is_refused() {
        let err = NotifyProfile::new(Path::new("netaccel.sock"), &Default::default()).expect_err("relative");
        assert!(err.to_string().contains("absolute"), "{err}");
    }
}
