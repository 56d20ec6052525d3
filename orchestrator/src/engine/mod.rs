//! Container engines: Docker and Podman through the Docker API
//! ([`api::ApiEngine`], bollard), nerdctl through its CLI
//! ([`cli::CliEngine`]). One [`Engine`] type dispatches to either, so the
//! commands never ask which engine they drive.

pub mod api;
pub mod cli;
pub mod kind;
pub mod podman;
mod terminal;

use std::collections::BTreeMap;
use std::path::Path;

use ipnet::Ipv4Net;

use crate::node::NodeSpec;
pub use kind::{AccelMethod, Endpoint, EngineKind};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{engine} API at {endpoint}: {detail}")]
    Api {
        engine: &'static str,
        endpoint: String,
        detail: String,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("cannot run {program}: {source}")]
    Spawn { program: String, source: std::io::Error },
    #[error("{what}: unexpected answer from the engine: {detail}")]
    Unexpected { what: String, detail: String },
    #[error("no container engine found. Tried: {tried}. Install and start rootless Docker (dockerd-rootless-setuptool.sh install), nerdctl (containerd-rootless-setuptool.sh install) or Podman (systemctl --user enable --now podman.socket), or set CONTAINER_ENGINE")]
    NoneFound { tried: String },
    #[error("image build failed: {detail}")]
    Build { detail: String },
    #[error("writing the build context: {source}")]
    Context { source: std::io::Error },
}

/// What a command run in the node printed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    pub code: i64,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl ExecOutput {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// What `u7s status`/`doctor` show and `up` checks.
#[derive(Debug, Clone, Default)]
pub struct EngineInfo {
    pub version: String,
    /// What else answers behind the engine ("containerd 1.6.20" for nerdctl).
    pub components: Vec<String>,
    pub rootless: bool,
    /// Runtime names the engine knows (`--runtime` values).
    pub runtimes: Vec<String>,
    pub accel: AccelMethod,
    /// Why this engine cannot build the node image, with the fix.
    pub build_blocker: Option<String>,
    /// The rootless network stack the engine names (Podman ≥ 5:
    /// `host.rootlessNetworkCmd`, "pasta" or "slirp4netns").
    pub user_net: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerInfo {
    pub running: bool,
    pub status: String,
    pub image: String,
    pub runtime: String,
    pub labels: BTreeMap<String, String>,
}

impl ContainerInfo {
    /// Whether the container was created on the fast path: u7s's label, or
    /// (for nodes made before it) the wrapper runtime `runtime_name`.
    pub fn on_fast_path(&self, runtime_name: &str) -> bool {
        self.labels
            .get(crate::node::ACCEL_LABEL)
            .is_some_and(|v| v == "true")
            || (!self.runtime.is_empty() && self.runtime == runtime_name)
    }
}

/// A file of a build context.
#[derive(Debug, Clone)]
pub struct ContextFile {
    pub path: String,
    pub mode: u32,
    pub content: Vec<u8>,
}

/// Renders a build context as a tar stream (for the Docker API).
pub fn context_tar(files: &[ContextFile]) -> Result<Vec<u8>, EngineError> {
    let mut b = tar::Builder::new(Vec::new());
    for f in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(f.content.len() as u64);
        h.set_mode(f.mode);
        h.set_mtime(0);
        b.append_data(&mut h, &f.path, f.content.as_slice())
            .map_err(|source| EngineError::Context { source })?;
    }
    b.into_inner().map_err(|source| EngineError::Context { source })
}

/// Writes a build context into `dir` (for CLIs that build from a directory).
pub fn context_dir(files: &[ContextFile], dir: &Path) -> Result<(), EngineError> {
    use std::os::unix::fs::PermissionsExt;
    for f in files {
        let p = dir.join(&f.path);
        let io = |source| EngineError::Context { source };
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        std::fs::write(&p, &f.content).map_err(io)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(f.mode)).map_err(io)?;
    }
    Ok(())
}

pub enum Engine {
    Api(api::ApiEngine),
    Cli(cli::CliEngine),
}

impl Engine {
    /// Connects to `kind`, or detects one: rootless Docker, then nerdctl,
    /// then Podman (the original's order).
    pub async fn connect(kind: Option<EngineKind>) -> Result<Self, EngineError> {
        let order = match kind {
            Some(k) => vec![k],
            None => EngineKind::DETECTION_ORDER.to_vec(),
        };
        let mut tried = Vec::new();
        for k in order {
            match k.endpoints() {
                Ok(endpoints) => {
                    for e in endpoints {
                        match e {
                            Endpoint::Socket(s) => match api::ApiEngine::connect(k, &s).await {
                                Ok(e) => return Ok(Engine::Api(e)),
                                Err(e) => tried.push(format!("{} ({e})", s.display())),
                            },
                            Endpoint::Program(p) => return Ok(Engine::Cli(cli::CliEngine::new(k, p))),
                        }
                    }
                }
                Err(why) => tried.push(why),
            }
        }
        Err(EngineError::NoneFound {
            tried: tried.join("; "),
        })
    }

    pub fn kind(&self) -> EngineKind {
        match self {
            Engine::Api(e) => e.kind(),
            Engine::Cli(e) => e.kind(),
        }
    }

    /// Where the engine was reached (socket or program).
    pub fn endpoint(&self) -> String {
        match self {
            Engine::Api(e) => e.endpoint(),
            Engine::Cli(e) => e.program().display().to_string(),
        }
    }

    pub async fn info(&self) -> Result<EngineInfo, EngineError> {
        match self {
            Engine::Api(e) => e.info().await,
            Engine::Cli(e) => e.info().await,
        }
    }

    pub async fn image_exists(&self, image: &str) -> Result<bool, EngineError> {
        match self {
            Engine::Api(e) => e.image_exists(image).await,
            Engine::Cli(e) => e.image_exists(image).await,
        }
    }

    /// Builds `tag` from `files`, passing each build line to `progress`.
    pub async fn build_image(
        &self,
        files: &[ContextFile],
        tag: &str,
        build_args: &BTreeMap<String, String>,
        progress: &mut (dyn FnMut(&str) + Send),
    ) -> Result<(), EngineError> {
        match self {
            Engine::Api(e) => e.build_image(files, tag, build_args, progress).await,
            Engine::Cli(e) => e.build_image(files, tag, build_args, progress).await,
        }
    }

    /// Every network's IPv4 subnets, by network name.
    pub async fn network_subnets(&self) -> Result<Vec<(String, Vec<Ipv4Net>)>, EngineError> {
        match self {
            Engine::Api(e) => e.network_subnets().await,
            Engine::Cli(e) => e.network_subnets().await,
        }
    }

    pub async fn create_network(&self, spec: &NodeSpec) -> Result<(), EngineError> {
        match self {
            Engine::Api(e) => e.create_network(spec).await,
            Engine::Cli(e) => e.create_network(spec).await,
        }
    }

    /// Removes a network; a missing one is not an error.
    pub async fn remove_network(&self, name: &str) -> Result<(), EngineError> {
        match self {
            Engine::Api(e) => e.remove_network(name).await,
            Engine::Cli(e) => e.remove_network(name).await,
        }
    }

    /// Creates a volume unless it exists.
    pub async fn create_volume(&self, name: &str, project: &str) -> Result<(), EngineError> {
        match self {
            Engine::Api(e) => e.create_volume(name, project).await,
            Engine::Cli(e) => e.create_volume(name, project).await,
        }
    }

    /// Removes a volume; a missing one is not an error. True if it existed.
    pub async fn remove_volume(&self, name: &str) -> Result<bool, EngineError> {
        match self {
            Engine::Api(e) => e.remove_volume(name).await,
            Engine::Cli(e) => e.remove_volume(name).await,
        }
    }

    pub async fn container(&self, name: &str) -> Result<Option<ContainerInfo>, EngineError> {
        match self {
            Engine::Api(e) => e.container(name).await,
            Engine::Cli(e) => e.container(name).await,
        }
    }

    pub async fn create_container(&self, spec: &NodeSpec) -> Result<(), EngineError> {
        match self {
            Engine::Api(e) => e.create_container(spec).await,
            Engine::Cli(e) => e.create_container(spec).await,
        }
    }

    pub async fn start_container(&self, name: &str) -> Result<(), EngineError> {
        match self {
            Engine::Api(e) => e.start_container(name).await,
            Engine::Cli(e) => e.start_container(name).await,
        }
    }

    /// Stops and removes; a missing container is not an error.
    pub async fn remove_container(&self, name: &str) -> Result<bool, EngineError> {
        match self {
            Engine::Api(e) => e.remove_container(name).await,
            Engine::Cli(e) => e.remove_container(name).await,
        }
    }

    pub async fn exec(
        &self,
        container: &str,
        argv: &[String],
        live: bool,
    ) -> Result<ExecOutput, EngineError> {
        match self {
            Engine::Api(e) => e.exec(container, argv, live).await,
            Engine::Cli(e) => e.exec(container, argv, live).await,
        }
    }

    /// Runs `argv` with this process's stdin/stdout/stderr (a terminal when
    /// stdin is one); returns its exit code.
    pub async fn exec_interactive(&self, container: &str, argv: &[String]) -> Result<i64, EngineError> {
        match self {
            Engine::Api(e) => e.exec_interactive(container, argv).await,
            Engine::Cli(e) => e.exec_interactive(container, argv).await,
        }
    }

    /// Copies the container's console output to stdout/stderr.
    pub async fn logs(&self, container: &str, follow: bool, tail: Option<u64>) -> Result<(), EngineError> {
        match self {
            Engine::Api(e) => e.logs(container, follow, tail).await,
            Engine::Cli(e) => e.logs(container, follow, tail).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_renders_as_tar_and_as_directory() {
        let files = vec![
            ContextFile {
                path: "Dockerfile".into(),
                mode: 0o644,
                content: b"FROM scratch\n".to_vec(),
            },
            ContextFile {
                path: "bin/entry.sh".into(),
                mode: 0o755,
                content: b"#!/bin/sh\n".to_vec(),
            },
        ];
        let tar = context_tar(&files).expect("tar");
        let mut a = tar::Archive::new(tar.as_slice());
        let names: Vec<(String, u32)> = a
            .entries()
            .expect("entries")
            .map(|e| {
                let e = e.expect("entry");
                (
                    e.path().expect("path").display().to_string(),
                    e.header().mode().expect("mode"),
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                ("Dockerfile".to_owned(), 0o644),
                ("bin/entry.sh".to_owned(), 0o755)
            ]
        );
        let dir = tempfile::tempdir().expect("dir");
        context_dir(&files, dir.path()).expect("dir");
        assert_eq!(
            std::fs::read(dir.path().join("bin/entry.sh")).expect("read"),
            b"#!/bin/sh\n"
        );
    }
}
