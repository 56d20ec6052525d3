//! The bypass4netnsd-compatible HTTP API, so nerdctl (≥ 2.0, annotation
//! `nerdctl/bypass4netns=true`) works against netaccel unchanged. Over a unix
//! socket, base path `/v1`:
//!
//! - `GET /bypass` → 200, `[BypassStatus]`
//! - `POST /bypass` with a `BypassSpec` → 201, `BypassStatus`: netaccel starts
//!   serving `socketPath` (nerdctl puts it into the container's
//!   `listenerPath`) with that container's settings
//! - `DELETE /bypass/{id}` → 200, empty: stops serving it and removes it
//!
//! Every error is a 400 with `{"message": "…"}`, as in the original.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::Router;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tokio::net::UnixListener;
use tokio::task::JoinHandle;

use crate::daemon::{accept_loop, bind_private_socket, Shared};
use crate::keeper::wire::Kind;
use crate::oci::state::ContainerSettings;
use crate::policy::fallback::Fallback;
use crate::policy::ignore::IgnoreList;
use crate::publish::{check_unique, PortMapping, Proto};

/// What nerdctl posts (fields as in bypass4netns' `api.BypassSpec`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct BypassSpec {
    pub id: String,
    pub socket_path: String,
    pub pid_file_path: String,
    pub log_file_path: String,
    pub port_mapping: Vec<PortSpec>,
    /// CIDRs, or `auto` for the container's own subnets (which netaccel
    /// always ignores).
    pub ignore_subnets: Vec<String>,
    pub ignore_bind: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PortSpec {
    pub protos: Vec<String>,
    #[serde(rename = "parentIP")]
    pub parent_ip: String,
    pub parent_port: u16,
    #[serde(rename = "childIP")]
    pub child_ip: String,
    pub child_port: u16,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BypassStatus {
    pub id: String,
    pub pid: u32,
    pub spec: BypassSpec,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid BypassSpec JSON: {0}")]
    Json(String),
    #[error("id is empty")]
    NoId,
    #[error("bypass {0:?} already exists; DELETE it first")]
    Duplicate(String),
    #[error("bypass {0:?} not found")]
    NotFound(String),
    #[error("socketPath {path:?} must be an absolute path inside {runtime_dir} (no \"..\")")]
    SocketOutside { path: String, runtime_dir: String },
    #[error("ignoreSubnets entry {0:?} is neither a CIDR nor \"auto\"")]
    BadSubnet(String),
    #[error("portMapping: {0}")]
    BadMapping(String),
    #[error("cannot serve socketPath: {0}")]
    Bind(String),
    #[error("cannot write pidFilePath {path:?}: {source}")]
    PidFile { path: String, source: std::io::Error },
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        json_response(
            StatusCode::BAD_REQUEST,
            &serde_json::json!({ "message": self.to_string() }),
        )
    }
}

fn json_response(status: StatusCode, body: &impl Serialize) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response()
}

struct Bypass {
    status: BypassStatus,
    socket: PathBuf,
    task: JoinHandle<()>,
    /// Its entry in the keeper, so it survives a daemon restart.
    kept: Option<u64>,
}

impl Drop for Bypass {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.socket);
        if !self.status.spec.pid_file_path.is_empty() {
            let _ = std::fs::remove_file(&self.status.spec.pid_file_path);
        }
    }
}

/// The API's state: the bypasses it serves.
pub struct BypassApi {
    shared: Arc<Shared>,
    runtime_dir: PathBuf,
    bypasses: Mutex<BTreeMap<String, Bypass>>,
}

impl BypassApi {
    /// `runtime_dir` bounds where clients may ask for sockets.
    pub fn new(daemon: &crate::daemon::Daemon, runtime_dir: PathBuf) -> Arc<Self> {
        Arc::new(Self {
            shared: daemon.shared(),
            runtime_dir,
            bypasses: Mutex::new(BTreeMap::new()),
        })
    }

    /// Serves the API on `listener` until the task is dropped or aborted.
    pub async fn serve(self: Arc<Self>, listener: UnixListener) -> std::io::Result<()> {
        let app = Router::new()
            .route("/v1/bypass", get(list).post(create))
            .route("/v1/bypass/{id}", delete(remove))
            .route("/v1/netaccel/status", get(status))
            .with_state(self);
        axum::serve(listener, app).await
    }

    fn list(&self) -> Vec<BypassStatus> {
        self.bypasses
            .lock()
            .map(|b| b.values().map(|x| x.status.clone()).collect())
            .unwrap_or_default()
    }

    async fn start(&self, spec: BypassSpec) -> Result<BypassStatus, ApiError> {
        self.launch(spec, None).await
    }

    /// Serves again the registrations the keeper held for a previous
    /// daemon (`(key, record)` from `Daemon::take_restored_bypasses`).
    pub async fn restore(&self, held: Vec<(u64, Vec<u8>)>) {
        for (key, record) in held {
            let started = match serde_json::from_slice::<BypassSpec>(&record) {
                Ok(spec) => self.launch(spec, Some(key)).await.map_err(|e| e.to_string()),
                Err(e) => Err(format!("unreadable record: {e}")),
            };
            match started {
                Ok(status) => tracing::info!(id = %status.id, "bypass re-attached from the keeper"),
                Err(why) => {
                    tracing::error!(key, reason = %why, "a bypass held by the keeper cannot be served again; dropped");
                    if let Some(link) = &self.shared.keeper {
                        link.forget(key);
                    }
                }
            }
        }
    }

    /// Starts serving `spec`; `kept` is its key when the keeper already
    /// holds it, otherwise it is handed to the keeper.
    async fn launch(&self, spec: BypassSpec, kept: Option<u64>) -> Result<BypassStatus, ApiError> {
        if spec.id.is_empty() {
            return Err(ApiError::NoId);
        }
        if self.bypasses.lock().is_ok_and(|b| b.contains_key(&spec.id)) {
            return Err(ApiError::Duplicate(spec.id));
        }
        let (socket, extra) = check_spec(&spec, &self.runtime_dir)?;
        let listener = bind_private_socket(&socket).map_err(|e| ApiError::Bind(e.to_string()))?;
        if !spec.pid_file_path.is_empty() {
            std::fs::write(&spec.pid_file_path, format!("{}\n", std::process::id())).map_err(|source| {
                ApiError::PidFile {
                    path: spec.pid_file_path.clone(),
                    source,
                }
            })?;
        }
        let shared = self.shared.clone();
        let task = tokio::spawn(async move { accept_loop(&listener, shared, extra).await });
        let status = BypassStatus {
            id: spec.id.clone(),
            pid: std::process::id(),
            spec,
        };
        tracing::info!(id = %status.id, socket = %socket.display(), "bypass started");
        let kept = match (&self.shared.keeper, kept) {
            (Some(_), Some(key)) => Some(key),
            (Some(link), None) => {
                let key = crate::container::next_serial();
                let record = serde_json::to_vec(&status.spec).unwrap_or_default();
                link.hold(key, Kind::Bypass, &Fallback::continue_all(), record, &[]);
                Some(key)
            }
            (None, _) => None,
        };
        let bypass = Bypass {
            status: status.clone(),
            socket,
            task,
            kept,
        };
        let mut map = self
            .bypasses
            .lock()
            .map_err(|_| ApiError::Bind("state lock poisoned".into()))?;
        if map.contains_key(&status.id) {
            // Lost a race with an identical POST: keep the first one.
            return Err(ApiError::Duplicate(status.id.clone()));
        }
        map.insert(status.id.clone(), bypass);
        Ok(status)
    }

    fn stop(&self, id: &str) -> Result<(), ApiError> {
        let removed = self.bypasses.lock().ok().and_then(|mut b| b.remove(id));
        match removed {
            Some(bypass) => {
                if let (Some(link), Some(key)) = (&self.shared.keeper, bypass.kept) {
                    link.forget(key);
                }
                tracing::info!(id, "bypass stopped");
                Ok(())
            }
            None => Err(ApiError::NotFound(id.to_owned())),
        }
    }

    /// Stops serving every bypass (daemon shutdown); the keeper keeps them
    /// for the next daemon.
    pub fn stop_all(&self) {
        if let Ok(mut b) = self.bypasses.lock() {
            b.clear();
        }
    }
}

/// What a posted [`BypassSpec`] asks for, checked: the socket to serve
/// (an absolute path inside `runtime_dir`, no `..`) and the container's
/// settings. The whole decision on an untrusted body, before any effect.
pub fn check_spec(spec: &BypassSpec, runtime_dir: &Path) -> Result<(PathBuf, ContainerSettings), ApiError> {
    if spec.id.is_empty() {
        return Err(ApiError::NoId);
    }
    let socket = PathBuf::from(&spec.socket_path);
    let inside = socket.is_absolute()
        && socket.starts_with(runtime_dir)
        && !socket.components().any(|c| matches!(c, Component::ParentDir));
    if !inside {
        return Err(ApiError::SocketOutside {
            path: spec.socket_path.clone(),
            runtime_dir: runtime_dir.display().to_string(),
        });
    }
    let settings = ContainerSettings {
        ignore: ignore_of(&spec.ignore_subnets)?.nets().to_vec(),
        publish: mappings_of(&spec.port_mapping)?,
        ignore_bind: spec.ignore_bind,
    };
    Ok((socket, settings))
}

fn ignore_of(subnets: &[String]) -> Result<IgnoreList, ApiError> {
    let mut nets = Vec::new();
    for s in subnets {
        if s == "auto" {
            continue;
        }
        nets.push(s.parse::<IpNet>().map_err(|_| ApiError::BadSubnet(s.clone()))?);
    }
    Ok(IgnoreList::new(nets))
}

/// The mappings of nerdctl's `portMapping` (one per protocol listed).
fn mappings_of(ports: &[PortSpec]) -> Result<Vec<PortMapping>, ApiError> {
    let mut out = Vec::new();
    for p in ports {
        let host_ip = match p.parent_ip.as_str() {
            "" => None,
            ip => Some(
                ip.parse::<std::net::IpAddr>()
                    .map_err(|_| ApiError::BadMapping(format!("parentIP {ip:?} is not an IP address")))?,
            )
            .filter(|ip| !ip.is_unspecified()),
        };
        for proto in &p.protos {
            let proto = match proto.as_str() {
                "tcp" => Proto::Tcp,
                "udp" => Proto::Udp,
                other => {
                    return Err(ApiError::BadMapping(format!(
                        "protocol {other:?} is neither tcp nor udp"
                    )))
                }
            };
            if p.parent_port == 0 || p.child_port == 0 {
                return Err(ApiError::BadMapping(format!(
                    "ports must be 1-65535 (parentPort {}, childPort {})",
                    p.parent_port, p.child_port
                )));
            }
            out.push(PortMapping {
                proto,
                host_ip,
                host_port: p.parent_port,
                container_port: p.child_port,
            });
        }
    }
    check_unique(&out).map_err(|e| ApiError::BadMapping(e.to_string()))?;
    Ok(out)
}

/// `GET /v1/netaccel/status` (netaccel's own, beside the bypass4netnsd API).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub pid: u32,
    pub containers: Vec<crate::container::ContainerStatus>,
    pub bypasses: Vec<BypassStatus>,
    /// Destinations no container bypasses (`netaccel daemon --ignore`).
    #[serde(default)]
    pub ignore: Vec<IpNet>,
}

async fn status(State(api): State<Arc<BypassApi>>) -> Response {
    let body = DaemonStatus {
        pid: std::process::id(),
        containers: api.shared.container_statuses(),
        bypasses: api.list(),
        ignore: api.shared.daemon_ignore(),
    };
    json_response(StatusCode::OK, &body)
}

/// Asks a running daemon for its status over its API socket.
pub async fn fetch_status(socket: &Path) -> Result<DaemonStatus, String> {
    use http_body_util::BodyExt;
    let stream = tokio::net::UnixStream::connect(socket).await.map_err(|e| {
        format!(
            "cannot reach the daemon's API at {}: {e} (is `netaccel daemon` running?)",
            socket.display()
        )
    })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = axum::http::Request::get("/v1/netaccel/status")
        .header(header::HOST, "netaccel")
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let code = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if code != StatusCode::OK {
        return Err(format!(
            "daemon answered {code}: {}",
            String::from_utf8_lossy(&body)
        ));
    }
    serde_json::from_slice(&body).map_err(|e| format!("unexpected status JSON: {e}"))
}

async fn list(State(api): State<Arc<BypassApi>>) -> Response {
    json_response(StatusCode::OK, &api.list())
}

async fn create(State(api): State<Arc<BypassApi>>, body: Bytes) -> Result<Response, ApiError> {
    let spec: BypassSpec = serde_json::from_slice(&body).map_err(|e| ApiError::Json(e.to_string()))?;
    let status = api.start(spec).await?;
    Ok(json_response(StatusCode::CREATED, &status))
}

async fn remove(
    State(api): State<Arc<BypassApi>>,
    UrlPath(id): UrlPath<String>,
) -> Result<StatusCode, ApiError> {
    api.stop(&id)?;
    Ok(StatusCode::OK)
}

/// Default API socket: `$XDG_RUNTIME_DIR/bypass4netnsd.sock`, where nerdctl looks.
pub fn default_api_socket() -> Option<PathBuf> {
    crate::runtime_dir().map(|d| d.join("bypass4netnsd.sock"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_parses_what_nerdctl_sends() {
        let json = r#"{"id":"0123456789abcdef","socketPath":"/run/user/1000/bypass4netns/0123456789abcde.sock",
            "pidFilePath":"/p","logFilePath":"/l","portMapping":[{"protos":["tcp"],"parentIP":"0.0.0.0",
            "parentPort":8080,"childIP":"","childPort":80}],"ignoreSubnets":["10.4.0.0/24","auto"],"ignoreBind":true,
            "unknownField":1}"#;
        let spec: BypassSpec = serde_json::from_str(json).expect("parse");
        assert_eq!(spec.port_mapping[0].parent_port, 8080);
        assert_eq!(spec.port_mapping[0].parent_ip, "0.0.0.0");
        assert!(spec.ignore_bind);
        let list = ignore_of(&spec.ignore_subnets).expect("subnets");
        assert_eq!(list.nets(), &["10.4.0.0/24".parse::<IpNet>().expect("net")]);
        assert!(matches!(
            ignore_of(&["10.4.0.0/33".into()]),
            Err(ApiError::BadSubnet(_))
        ));
        assert_eq!(
            mappings_of(&spec.port_mapping).expect("mappings"),
            vec!["8080:80/tcp".parse::<PortMapping>().expect("m")]
        );
        let v6 = PortSpec {
            protos: vec!["tcp".into(), "udp".into()],
            parent_ip: "::1".into(),
            parent_port: 53,
            child_ip: String::new(),
            child_port: 5353,
        };
        assert_eq!(
            mappings_of(std::slice::from_ref(&v6)).expect("mappings"),
            vec![
                "[::1]:53:5353/tcp".parse::<PortMapping>().expect("m"),
                "[::1]:53:5353/udp".parse::<PortMapping>().expect("m")
            ]
        );
        for bad in [
            PortSpec {
                protos: vec!["sctp".into()],
                ..v6.clone()
            },
            PortSpec {
                parent_ip: "nope".into(),
                ..v6.clone()
            },
            PortSpec {
                child_port: 0,
                ..v6.clone()
            },
        ] {
            assert!(matches!(mappings_of(&[bad]), Err(ApiError::BadMapping(_))));
        }
        assert!(matches!(
            mappings_of(&[v6.clone(), PortSpec { parent_port: 54, ..v6 }]),
            Err(ApiError::BadMapping(m)) if m.contains("twice")
        ));
        let back = serde_json::to_value(&spec).expect("serialize");
        assert_eq!(back["portMapping"][0]["parentIP"], "0.0.0.0");
        assert_eq!(
            back["socketPath"],
            "/run/user/1000/bypass4netns/0123456789abcde.sock"
        );
    }
}
