//! The message an OCI runtime sends to `linux.seccomp.listenerPath`, and the
//! per-container settings we carry inside it (`listenerMetadata`).

use std::collections::HashMap;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::publish::PortMapping;

/// The name runc and crun give the notify fd in `fds`.
pub const SECCOMP_FD_NAME: &str = "seccompFd";

/// OCI runtime-spec `ContainerProcessState`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerProcessState {
    pub oci_version: String,
    pub fds: Vec<String>,
    pub pid: u32,
    #[serde(default)]
    pub metadata: String,
    pub state: ContainerState,
}

/// OCI runtime-spec `State`, the part we use.
#[derive(Debug, Clone, Deserialize)]
pub struct ContainerState {
    pub id: String,
    #[serde(default)]
    pub bundle: String,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
}

/// Settings that travel with one container in `listenerMetadata`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerSettings {
    /// Extra destinations that keep the container's normal path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore: Vec<IpNet>,
    /// Published ports: a bind of one of these TCP container ports gets a
    /// host socket bound to the host port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<PortMapping>,
    /// Leave every bind to the container (published ports keep the engine's
    /// forwarder), whatever `publish` says.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignore_bind: bool,
}

impl ContainerSettings {
    /// The mappings whose binds the daemon takes over.
    pub fn bind_bypass(&self) -> &[PortMapping] {
        if self.ignore_bind {
            &[]
        } else {
            &self.publish
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state message is not valid ContainerProcessState JSON: {source}")]
    Json { source: serde_json::Error },
    #[error("state message names fds {names:?} but {received} fd(s) came with it")]
    FdMismatch { names: Vec<String>, received: usize },
    #[error("state message has no {SECCOMP_FD_NAME:?} fd (fds: {names:?})")]
    NoSeccompFd { names: Vec<String> },
    #[error("listenerMetadata of container {id} is not valid netaccel settings JSON: {source}")]
    Settings { id: String, source: serde_json::Error },
}

impl ContainerProcessState {
    /// Parses and checks the message against the number of fds received.
    pub fn parse(bytes: &[u8], fds_received: usize) -> Result<Self, StateError> {
        let state: Self = serde_json::from_slice(bytes).map_err(|source| StateError::Json { source })?;
        if state.fds.len() != fds_received {
            return Err(StateError::FdMismatch {
                names: state.fds,
                received: fds_received,
            });
        }
        if state.fds.iter().all(|n| n != SECCOMP_FD_NAME) {
            return Err(StateError::NoSeccompFd { names: state.fds });
        }
        Ok(state)
    }

    /// The settings in `metadata`; empty metadata means defaults.
    pub fn settings(&self) -> Result<ContainerSettings, StateError> {
        if self.metadata.trim().is_empty() {
            return Ok(ContainerSettings::default());
        }
        serde_json::from_str(&self.metadata).map_err(|source| StateError::Settings {
            id: self.state.id.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUNC_MESSAGE: &str = r#"{"ociVersion":"1.0.2","fds":["seccompFd"],"pid":4242,
        "metadata":"{\"ignore\":[\"10.96.0.0/16\"]}",
        "state":{"ociVersion":"1.0.2","id":"c1","status":"creating","pid":4242,
        "bundle":"/b","annotations":{"a":"b"}}}"#;

    #[test]
    fn parses_what_runc_sends() {
        let s = ContainerProcessState::parse(RUNC_MESSAGE.as_bytes(), 1).expect("parse");
        assert_eq!(s.pid, 4242);
        assert_eq!(s.state.id, "c1");
        let settings = s.settings().expect("settings");
        assert_eq!(
            settings.ignore,
            vec!["10.96.0.0/16".parse::<IpNet>().expect("net")]
        );
    }

    #[test]
    fn fd_count_must_match() {
        let err = ContainerProcessState::parse(RUNC_MESSAGE.as_bytes(), 2).expect_err("2 fds");
        assert!(matches!(err, StateError::FdMismatch { received: 2, .. }), "{err}");
        let err = ContainerProcessState::parse(RUNC_MESSAGE.as_bytes(), 0).expect_err("0 fds");
        assert!(matches!(err, StateError::FdMismatch { received: 0, .. }), "{err}");
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        for bad in [&b""[..], b"{", b"null", b"[]", b"{\"pid\":-1}", &[0xff, 0xfe]] {
            assert!(ContainerProcessState::parse(bad, 1).is_err());
        }
        let other = RUNC_MESSAGE.replace("seccompFd", "otherFd");
        let err = ContainerProcessState::parse(other.as_bytes(), 1).expect_err("no seccompFd");
        assert!(matches!(err, StateError::NoSeccompFd { .. }), "{err}");
    }

    #[test]
    fn bad_metadata_is_reported_with_the_container_id() {
        let msg = RUNC_MESSAGE.replace(r#"{\"ignore\":[\"10.96.0.0/16\"]}"#, "not json");
        let s = ContainerProcessState::parse(msg.as_bytes(), 1).expect("parse");
        let err = s.settings().expect_err("bad metadata");
        assert!(err.to_string().contains("container c1"), "{err}");
    }
}
