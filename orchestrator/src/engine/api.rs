//! Docker and Podman through the Docker API (bollard), on the engine's unix
//! socket, at the API version the engine speaks (Docker 20.10: 1.41).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use bollard::errors::Error as BollardError;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, EndpointIpamConfig, EndpointSettings, HostConfig, Ipam, IpamConfig, Mount,
    MountType, NetworkCreateRequest, NetworkingConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum,
    VolumeCreateRequest,
};
use bollard::query_parameters::{
    BuildImageOptionsBuilder, CreateContainerOptionsBuilder, InspectContainerOptions, ListNetworksOptions,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, RemoveVolumeOptions,
};
use bollard::{Docker, API_DEFAULT_VERSION};
use futures::StreamExt;
use ipnet::Ipv4Net;
use tokio::io::AsyncWriteExt;

use super::EngineKind;
use super::ExecOutput;
use super::{context_tar, podman, AccelMethod, ContainerInfo, ContextFile, EngineError, EngineInfo};
use crate::node::{NodeSpec, PROJECT_LABEL};

pub struct ApiEngine {
    kind: EngineKind,
    socket: PathBuf,
    docker: Docker,
}

fn is_not_found(e: &BollardError) -> bool {
    matches!(
        e,
        BollardError::DockerResponseServerError { status_code: 404, .. }
    )
}

impl ApiEngine {
    pub async fn connect(kind: EngineKind, socket: &Path) -> Result<Self, EngineError> {
        let shown = socket.display().to_string();
        let err = |detail: String| EngineError::Api {
            engine: kind.name(),
            endpoint: shown.clone(),
            detail,
        };
        if !socket.exists() {
            return Err(err("no such socket".into()));
        }
        let docker = Docker::connect_with_unix(&shown, 300, API_DEFAULT_VERSION)
            .map_err(|e| err(e.to_string()))?
            .negotiate_version()
            .await
            .map_err(|e| err(e.to_string()))?;
        Ok(Self {
            kind,
            socket: socket.to_path_buf(),
            docker,
        })
    }

    pub fn kind(&self) -> EngineKind {
        self.kind
    }

    pub fn endpoint(&self) -> String {
        self.socket.display().to_string()
    }

    fn err(&self, what: &str, e: BollardError) -> EngineError {
        EngineError::Api {
            engine: self.kind.name(),
            endpoint: self.endpoint(),
            detail: format!("{what}: {e}"),
        }
    }

    pub async fn info(&self) -> Result<EngineInfo, EngineError> {
        let info = self.docker.info().await.map_err(|e| self.err("info", e))?;
        let mut rootless = info
            .security_options
            .unwrap_or_default()
            .iter()
            .any(|o| o.contains("name=rootless"));
        let mut runtimes: Vec<String> = info.runtimes.unwrap_or_default().into_keys().collect();
        runtimes.sort();
        let (mut components, mut user_net) = (Vec::new(), None);
        if self.kind == EngineKind::Podman {
            let libpod = podman::info(&self.socket).await?;
            rootless = libpod.rootless;
            components = libpod.components;
            user_net = libpod.user_net;
        }
        Ok(EngineInfo {
            version: info.server_version.unwrap_or_default(),
            components,
            rootless,
            runtimes,
            accel: AccelMethod::Runtime,
            user_net,
            ..Default::default()
        })
    }

    pub async fn image_exists(&self, image: &str) -> Result<bool, EngineError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(self.err("inspecting the image", e)),
        }
    }

    pub async fn build_image(
        &self,
        files: &[ContextFile],
        tag: &str,
        build_args: &BTreeMap<String, String>,
        progress: &mut (dyn FnMut(&str) + Send),
    ) -> Result<(), EngineError> {
        let tar = context_tar(files)?;
        let args: HashMap<String, String> = build_args.clone().into_iter().collect();
        let options = BuildImageOptionsBuilder::new()
            .t(tag)
            .rm(true)
            .buildargs(&args)
            .build();
        let mut stream = self
            .docker
            .build_image(options, None, Some(bollard::body_full(tar.into())));
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| EngineError::Build {
                detail: e.to_string(),
            })?;
            if let Some(detail) = info.error_detail.and_then(|d| d.message) {
                return Err(EngineError::Build { detail });
            }
            for line in info.stream.iter().chain(info.status.iter()) {
                for l in line.lines().filter(|l| !l.trim().is_empty()) {
                    progress(l);
                }
            }
        }
        Ok(())
    }

    pub async fn network_subnets(&self) -> Result<Vec<(String, Vec<Ipv4Net>)>, EngineError> {
        let nets = self
            .docker
            .list_networks(None::<ListNetworksOptions>)
            .await
            .map_err(|e| self.err("listing networks", e))?;
        Ok(nets
            .into_iter()
            .map(|n| {
                let subnets = n
                    .ipam
                    .and_then(|i| i.config)
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|c| c.subnet?.parse().ok())
                    .collect();
                (n.name.unwrap_or_default(), subnets)
            })
            .collect())
    }

    pub async fn create_network(&self, spec: &NodeSpec) -> Result<(), EngineError> {
        let request = NetworkCreateRequest {
            name: spec.network.name.clone(),
            driver: Some("bridge".into()),
            ipam: Some(Ipam {
                config: Some(vec![IpamConfig {
                    subnet: Some(spec.network.subnet.to_string()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            labels: Some(HashMap::from([(
                PROJECT_LABEL.to_owned(),
                spec.labels.get(PROJECT_LABEL).cloned().unwrap_or_default(),
            )])),
            ..Default::default()
        };
        self.docker
            .create_network(request)
            .await
            .map(drop)
            .map_err(|e| self.err(&format!("creating network {}", spec.network.name), e))
    }

    pub async fn remove_network(&self, name: &str) -> Result<(), EngineError> {
        match self.docker.remove_network(name).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(self.err(&format!("removing network {name}"), e)),
        }
    }

    pub async fn create_volume(&self, name: &str, project: &str) -> Result<(), EngineError> {
        let request = VolumeCreateRequest {
            name: Some(name.to_owned()),
            labels: Some(HashMap::from([(PROJECT_LABEL.to_owned(), project.to_owned())])),
            ..Default::default()
        };
        // Creating an existing volume returns it unchanged.
        self.docker
            .create_volume(request)
            .await
            .map(drop)
            .map_err(|e| self.err(&format!("creating volume {name}"), e))
    }

    pub async fn remove_volume(&self, name: &str) -> Result<bool, EngineError> {
        match self.docker.remove_volume(name, None::<RemoveVolumeOptions>).await {
            Ok(()) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(self.err(&format!("removing volume {name}"), e)),
        }
    }

    pub async fn container(&self, name: &str) -> Result<Option<ContainerInfo>, EngineError> {
        let c = match self
            .docker
            .inspect_container(name, None::<InspectContainerOptions>)
            .await
        {
            Ok(c) => c,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(self.err(&format!("inspecting container {name}"), e)),
        };
        let state = c.state.unwrap_or_default();
        let config = c.config.unwrap_or_default();
        let runtime = if self.kind == EngineKind::Podman {
            // The compatible inspect says "oci" for every runtime.
            podman::oci_runtime(&self.socket, name).await?.unwrap_or_default()
        } else {
            c.host_config.and_then(|h| h.runtime).unwrap_or_default()
        };
        Ok(Some(ContainerInfo {
            running: state.running.unwrap_or(false),
            status: state.status.map(|s| s.to_string()).unwrap_or_default(),
            image: config.image.unwrap_or_default(),
            runtime,
            labels: config.labels.unwrap_or_default().into_iter().collect(),
        }))
    }

    pub async fn create_container(&self, spec: &NodeSpec) -> Result<(), EngineError> {
        if let (EngineKind::Podman, Some(accel)) = (self.kind, &spec.accel) {
            return self.create_podman_on_runtime(spec, &accel.runtime).await;
        }
        let body = create_body(spec);
        let options = CreateContainerOptionsBuilder::new().name(&spec.container).build();
        self.docker
            .create_container(Some(options), body)
            .await
            .map(drop)
            .map_err(|e| self.err(&format!("creating container {}", spec.container), e))
    }

    /// Podman's API cannot pick the runtime (see [`podman`]): its CLI
    /// creates the node, and the runtime it got is checked.
    async fn create_podman_on_runtime(&self, spec: &NodeSpec, runtime: &str) -> Result<(), EngineError> {
        podman::create_with_runtime(spec, runtime).await?;
        match podman::oci_runtime(&self.socket, &spec.container).await? {
            Some(got) if got == runtime => Ok(()),
            got => {
                let _ = self.remove_container(&spec.container).await;
                Err(EngineError::Unexpected {
                    what: format!("creating {} on the runtime {runtime}", spec.container),
                    detail: match got {
                        Some(got) => format!(
                            "the podman CLI made it with runtime {got:?} (removed again). Is podman in remote mode (CONTAINER_HOST, --remote)? Only a local podman can choose the runtime"
                        ),
                        None => format!(
                            "the podman CLI created it, but {} does not know it: the CLI and the API socket use different storage (CONTAINER_HOST, another user's socket?)",
                            self.endpoint()
                        ),
                    },
                })
            }
        }
    }

    pub async fn start_container(&self, name: &str) -> Result<(), EngineError> {
        self.docker
            .start_container(name, None::<bollard::query_parameters::StartContainerOptions>)
            .await
            .map_err(|e| self.err(&format!("starting container {name}"), e))
    }

    pub async fn remove_container(&self, name: &str) -> Result<bool, EngineError> {
        let options = RemoveContainerOptionsBuilder::new().force(true).build();
        match self.docker.remove_container(name, Some(options)).await {
            Ok(()) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(self.err(&format!("removing container {name}"), e)),
        }
    }

    async fn start_exec(
        &self,
        container: &str,
        argv: &[String],
        stdin: bool,
        tty: bool,
    ) -> Result<(String, StartExecResults), EngineError> {
        let options = CreateExecOptions {
            cmd: Some(argv.to_vec()),
            attach_stdin: Some(stdin),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(tty),
            ..Default::default()
        };
        let exec = self
            .docker
            .create_exec(container, options)
            .await
            .map_err(|e| self.err(&format!("exec in {container}"), e))?;
        let started = self
            .docker
            .start_exec(
                &exec.id,
                Some(StartExecOptions {
                    detach: false,
                    tty,
                    output_capacity: None,
                }),
            )
            .await
            .map_err(|e| self.err(&format!("exec in {container}"), e))?;
        Ok((exec.id, started))
    }

    async fn exit_code(&self, exec_id: &str) -> Result<i64, EngineError> {
        let inspect = self
            .docker
            .inspect_exec(exec_id)
            .await
            .map_err(|e| self.err("exec status", e))?;
        Ok(inspect.exit_code.unwrap_or(-1))
    }

    pub async fn exec(
        &self,
        container: &str,
        argv: &[String],
        live: bool,
    ) -> Result<ExecOutput, EngineError> {
        let (id, started) = self.start_exec(container, argv, false, false).await?;
        let mut out = ExecOutput::default();
        if let StartExecResults::Attached { mut output, .. } = started {
            while let Some(chunk) = output.next().await {
                let chunk = chunk.map_err(|e| self.err("exec output", e))?;
                handle_output(chunk, Some(&mut out), live);
            }
        }
        out.code = self.exit_code(&id).await?;
        Ok(out)
    }

    pub async fn exec_interactive(&self, container: &str, argv: &[String]) -> Result<i64, EngineError> {
        let tty = super::terminal::stdin_is_terminal();
        let (id, started) = self.start_exec(container, argv, true, tty).await?;
        let StartExecResults::Attached {
            mut output,
            mut input,
        } = started
        else {
            return self.exit_code(&id).await;
        };
        if tty {
            if let Some((rows, cols)) = super::terminal::size() {
                let resize = bollard::exec::ResizeExecOptions {
                    height: rows,
                    width: cols,
                };
                // A wrong size only garbles the layout; the session goes on.
                let _ = self.docker.resize_exec(&id, resize).await;
            }
        }
        let _raw = tty.then(super::terminal::RawMode::enter).flatten();
        let pump = tokio::spawn(async move {
            let mut stdin = tokio::io::stdin();
            let _ = tokio::io::copy(&mut stdin, &mut input).await;
            let _ = input.shutdown().await;
        });
        while let Some(Ok(chunk)) = output.next().await {
            handle_output(chunk, None, true);
        }
        pump.abort();
        self.exit_code(&id).await
    }

    pub async fn logs(&self, container: &str, follow: bool, tail: Option<u64>) -> Result<(), EngineError> {
        let tail = tail.map(|t| t.to_string()).unwrap_or_else(|| "all".into());
        let options = LogsOptionsBuilder::new()
            .follow(follow)
            .stdout(true)
            .stderr(true)
            .tail(&tail)
            .build();
        let mut stream = self.docker.logs(container, Some(options));
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.err(&format!("logs of {container}"), e))?;
            handle_output(chunk, None, true);
        }
        Ok(())
    }
}

/// Shows an output chunk on our stdout/stderr when `live`, and appends it
/// to `keep` when given.
fn handle_output(chunk: bollard::container::LogOutput, keep: Option<&mut ExecOutput>, live: bool) {
    use bollard::container::LogOutput;
    use std::io::Write;
    let (message, to_stderr) = match chunk {
        LogOutput::StdErr { message } => (message, true),
        LogOutput::StdOut { message } | LogOutput::Console { message } => (message, false),
        LogOutput::StdIn { .. } => return,
    };
    if live {
        if to_stderr {
            let _ = std::io::stderr().write_all(&message);
        } else {
            let mut o = std::io::stdout();
            let _ = o.write_all(&message);
            let _ = o.flush();
        }
    }
    if let Some(out) = keep {
        let buf = if to_stderr {
            &mut out.stderr
        } else {
            &mut out.stdout
        };
        buf.extend_from_slice(&message);
    }
}

/// The Docker API body for the node container.
pub fn create_body(spec: &NodeSpec) -> ContainerCreateBody {
    let port_key = |p: &crate::node::PublishedPort| format!("{}/{}", p.container_port, p.protocol.name());
    let port_bindings: HashMap<String, Option<Vec<PortBinding>>> = spec
        .ports
        .iter()
        .map(|p| {
            (
                port_key(p),
                Some(vec![PortBinding {
                    host_ip: p.host_ip.clone(),
                    host_port: Some(p.host_port.to_string()),
                }]),
            )
        })
        .collect();
    let mut mounts: Vec<Mount> = spec
        .volumes
        .iter()
        .map(|v| Mount {
            target: Some(v.target.clone()),
            source: Some(v.volume.clone()),
            typ: Some(MountType::VOLUME),
            ..Default::default()
        })
        .collect();
    mounts.extend(spec.binds.iter().map(|b| Mount {
        target: Some(b.target.clone()),
        source: Some(b.source.display().to_string()),
        typ: Some(MountType::BIND),
        read_only: Some(b.read_only),
        ..Default::default()
    }));
    let host_config = HostConfig {
        privileged: Some(spec.privileged),
        port_bindings: Some(port_bindings),
        mounts: Some(mounts),
        tmpfs: Some(spec.tmpfs.iter().map(|t| (t.clone(), String::new())).collect()),
        sysctls: Some(spec.sysctls.clone().into_iter().collect()),
        restart_policy: Some(RestartPolicy {
            name: Some(RestartPolicyNameEnum::ALWAYS),
            maximum_retry_count: None,
        }),
        runtime: spec.accel.as_ref().map(|a| a.runtime.clone()),
        network_mode: Some(spec.network.name.clone()),
        annotations: (!spec.annotations.is_empty()).then(|| spec.annotations.clone().into_iter().collect()),
        ..Default::default()
    };
    let endpoint = EndpointSettings {
        ipam_config: Some(EndpointIpamConfig {
            ipv4_address: Some(spec.ip.to_string()),
            ..Default::default()
        }),
        ..Default::default()
    };
    ContainerCreateBody {
        hostname: Some(spec.hostname.clone()),
        image: Some(spec.image.clone()),
        env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        labels: Some(spec.labels.clone().into_iter().collect()),
        working_dir: Some(spec.working_dir.clone()),
        exposed_ports: Some(spec.ports.iter().map(port_key).collect()),
        host_config: Some(host_config),
        networking_config: Some(NetworkingConfig {
            endpoints_config: Some(HashMap::from([(spec.network.name.clone(), endpoint)])),
        }),
        ..Default::default()
    }
}
