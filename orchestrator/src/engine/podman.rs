//! What Podman needs beyond its Docker-compatible API, which
//! [`super::api::ApiEngine`] drives:
//!
//! - its own answers, from the libpod endpoints of the same socket: whether
//!   it is rootless (the compatible `/info` has no `name=rootless` security
//!   option), its rootless network stack, and the OCI runtime a container
//!   really got (the compatible inspect says `oci` for every one);
//! - the wrapper runtime. Podman ignores `HostConfig.Runtime` in the
//!   compatible create (checked with Podman 4.3.1: the node got `runc`), and
//!   its own create ignores `OCIRuntime` too (podman issue 28429); only the
//!   CLI's global `--runtime` picks a runtime per container. So a node on
//!   the fast path is created by `podman --runtime NAME create …`, and the
//!   runtime it got is checked before anyone is told the fast path is on.

use std::path::{Path, PathBuf};

use http_body_util::BodyExt;
use serde_json::Value;

use super::cli::args::create_args;
use super::{AccelMethod, EngineError};
use crate::node::NodeSpec;

/// The libpod API version asked for; Podman 4.0 and later answer it.
const LIBPOD: &str = "/v4.0.0/libpod";

/// What the libpod `info` says that the compatible one does not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LibpodInfo {
    pub rootless: bool,
    /// `host.rootlessNetworkCmd` (Podman ≥ 5: "pasta" or "slirp4netns").
    pub user_net: Option<String>,
    /// "runc 1.1.5+ds1", "cni".
    pub components: Vec<String>,
}

impl LibpodInfo {
    pub fn parse(v: &Value) -> Self {
        let host = &v["host"];
        let mut components = Vec::new();
        if let Some(name) = host["ociRuntime"]["name"].as_str() {
            let version = host["ociRuntime"]["version"]
                .as_str()
                .and_then(|s| s.lines().next())
                .and_then(|l| l.split_whitespace().last())
                .unwrap_or_default();
            components.push(format!("{name} {version}").trim().to_owned());
        }
        if let Some(backend) = host["networkBackend"].as_str() {
            components.push(backend.to_owned());
        }
        Self {
            rootless: host["security"]["rootless"].as_bool().unwrap_or(false),
            user_net: host["rootlessNetworkCmd"].as_str().map(str::to_owned),
            components,
        }
    }
}

/// A GET on the libpod API; `None` for 404.
async fn get(socket: &Path, path: &str) -> Result<Option<Value>, EngineError> {
    let err = |detail: String| EngineError::Api {
        engine: "podman",
        endpoint: socket.display().to_string(),
        detail: format!("GET {LIBPOD}{path}: {detail}"),
    };
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| err(e.to_string()))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(|e| err(e.to_string()))?;
    tokio::spawn(conn);
    let req = hyper::Request::get(format!("{LIBPOD}{path}"))
        .header(hyper::header::HOST, "podman")
        .body(http_body_util::Empty::<hyper::body::Bytes>::new())
        .map_err(|e| err(e.to_string()))?;
    let resp = sender.send_request(req).await.map_err(|e| err(e.to_string()))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| err(e.to_string()))?
        .to_bytes();
    if status == hyper::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    if !status.is_success() {
        return Err(err(format!(
            "{status}: {}",
            String::from_utf8_lossy(&body).trim()
        )));
    }
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| err(format!("unreadable answer: {e}")))
}

pub async fn info(socket: &Path) -> Result<LibpodInfo, EngineError> {
    Ok(get(socket, "/info")
        .await?
        .map(|v| LibpodInfo::parse(&v))
        .unwrap_or_default())
}

/// The OCI runtime Podman runs `container` with (`None`: no such container).
pub async fn oci_runtime(socket: &Path, container: &str) -> Result<Option<String>, EngineError> {
    Ok(get(socket, &format!("/containers/{container}/json"))
        .await?
        .map(|v| v["OCIRuntime"].as_str().unwrap_or_default().to_owned()))
}

/// The podman executable for the one step the API cannot do: `U7S_PODMAN`,
/// else `podman` on PATH.
pub fn program() -> Option<PathBuf> {
    super::kind::program("U7S_PODMAN", "podman")
}

/// Why the podman CLI would work remotely (it then cannot choose a
/// container's runtime), from the environment.
pub fn remote_mode() -> Option<String> {
    std::env::var_os("CONTAINER_HOST")
        .filter(|h| !h.is_empty())
        .map(|_| "CONTAINER_HOST is set".to_owned())
}

pub fn remote_refusal(why: &str) -> String {
    format!(
        "podman is in remote mode ({why}), and only a local podman can choose a container's runtime: unset CONTAINER_HOST (u7s finds the socket in XDG_RUNTIME_DIR), or run u7s on the engine's host without --remote"
    )
}

/// `podman` arguments creating the node on the wrapper runtime: the
/// global `--runtime NAME` (a runtime of containers.conf's
/// `[engine.runtimes]`), then Docker-style `create` flags, which Podman
/// accepts.
pub fn create_with_runtime_args(spec: &NodeSpec, runtime: &str) -> Vec<String> {
    let mut without = spec.clone();
    without.accel = None;
    let mut args = vec!["--runtime".to_owned(), runtime.to_owned()];
    args.extend(create_args(&without, AccelMethod::Runtime));
    args
}

/// Creates the node with the wrapper runtime through the CLI.
pub async fn create_with_runtime(spec: &NodeSpec, runtime: &str) -> Result<(), EngineError> {
    let program = program().ok_or_else(|| EngineError::Unexpected {
        what: "creating the node on the fast path".into(),
        detail: "Podman's API cannot choose a container's runtime, and no podman program was found (not on PATH; U7S_PODMAN unset)".into(),
    })?;
    let remote = |why: &str| EngineError::Unexpected {
        what: "creating the node on the fast path".into(),
        detail: remote_refusal(why),
    };
    if let Some(why) = remote_mode() {
        return Err(remote(&why));
    }
    let args = create_with_runtime_args(spec, runtime);
    let out = tokio::process::Command::new(&program)
        .args(&args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| EngineError::Spawn {
            program: program.display().to_string(),
            source,
        })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("unknown flag: --runtime") {
            return Err(remote("its CLI has no --runtime"));
        }
        return Err(EngineError::CommandFailed {
            command: format!("{} {}", program.display(), args.join(" ")),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn podman_4_3_info_says_rootless_and_its_parts() {
        // From Debian 12's podman 4.3.1 (`GET /v4.0.0/libpod/info`), cut down.
        let v: Value = serde_json::from_str(
            r#"{"host": {"security": {"rootless": true, "seccompEnabled": true},
                 "ociRuntime": {"name": "runc", "version": "runc version 1.1.5+ds1\ncommit: 1.1.5+ds1-1+deb12u1\nspec: 1.0.2-dev"},
                 "networkBackend": "cni", "rootlessNetworkCmd": null, "cgroupManager": "cgroupfs"},
                "version": {"Version": "4.3.1"}}"#,
        )
        .expect("json");
        let i = LibpodInfo::parse(&v);
        assert!(i.rootless);
        assert_eq!(i.user_net, None, "Podman 4 does not name it");
        assert_eq!(i.components, ["runc 1.1.5+ds1", "cni"]);
        let v5: Value = serde_json::from_str(
            r#"{"host": {"security": {"rootless": false}, "rootlessNetworkCmd": "pasta"}}"#,
        )
        .expect("json");
        let i = LibpodInfo::parse(&v5);
        assert!(!i.rootless);
        assert_eq!(i.user_net.as_deref(), Some("pasta"));
    }

    #[test]
    fn the_runtime_is_podmans_global_flag_before_create() {
        use crate::config::{resolve, HostDefaults, Vars};
        let c = resolve(
            &Vars::layered(&[], |_| None, &[]),
            &HostDefaults {
                hostname: "alpha".into(),
                default_route_ip: Some("192.168.1.10".parse().expect("ip")),
                current_dir: "/c".into(),
            },
        )
        .expect("config");
        let s = NodeSpec::new(&c, "img", Some("netaccel"), |_| false);
        let a = create_with_runtime_args(&s, "netaccel");
        assert_eq!(&a[..3], ["--runtime", "netaccel", "create"]);
        assert_eq!(a.iter().filter(|x| *x == "--runtime").count(), 1, "{a:?}");
        assert_eq!(a.last().map(String::as_str), Some("img"));
        // The wrapper's ignore list travels in the environment.
        assert!(a.iter().any(|x| x.starts_with("NETACCEL_IGNORE=")), "{a:?}");
    }
}
