//! `u7s`: the cluster CLI.

mod commands;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    version,
    about = "Kubernetes without root: kubeadm nodes in rootless container engines",
    after_help = "Multi-host flow: `u7s up`, `u7s kubeadm-init`, `u7s install-cni` on the first host; \
`u7s join-command` there, copy the file to each other host, run `u7s up` and `u7s kubeadm-join` there; \
then `u7s sync-external-ip` on the first host.\n\nSettings come from flags, then the environment \
(CONTAINER_ENGINE, HOST_IP, NODE_NAME, NODE_SUBNET, PORT_ETCD, PORT_KUBELET, PORT_FLANNEL, \
PORT_KUBE_APISERVER, U7S_TENANT, U7S_NODE_IMAGE, U7S_BASE_IMAGE, U7S_NODE_IMAGE_DIR), then the \
config file (KEY=VALUE lines; ./u7s.env when present)."
)]
struct Cli {
    #[command(flatten)]
    settings: Settings,
    #[command(subcommand)]
    action: Action,
}

/// Flags for the configuration variables (each overrides its variable).
#[derive(Args, Debug, Default)]
pub struct Settings {
    /// Config file of KEY=VALUE lines [default: ./u7s.env if present].
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// docker, podman or nerdctl (CONTAINER_ENGINE) [default: detected].
    #[arg(long, global = true, value_name = "ENGINE")]
    pub engine: Option<String>,
    /// Address other hosts reach this one on (HOST_IP) [default: the default route's source].
    #[arg(long, global = true, value_name = "IP")]
    pub host_ip: Option<String>,
    /// Kubernetes node name (NODE_NAME) [default: u7s-<hostname>].
    #[arg(long, global = true, value_name = "NAME")]
    pub node_name: Option<String>,
    /// The node network (NODE_SUBNET) [default: 10.100.<hash of hostname>.0/24].
    #[arg(long, global = true, value_name = "CIDR")]
    pub node_subnet: Option<String>,
    /// etcd client port (PORT_ETCD) [default: 2379].
    #[arg(long, global = true, value_name = "PORT")]
    pub port_etcd: Option<String>,
    /// kubelet port (PORT_KUBELET) [default: 10250].
    #[arg(long, global = true, value_name = "PORT")]
    pub port_kubelet: Option<String>,
    /// Flannel VXLAN UDP port (PORT_FLANNEL) [default: 8472].
    #[arg(long, global = true, value_name = "PORT")]
    pub port_flannel: Option<String>,
    /// kube-apiserver port (PORT_KUBE_APISERVER) [default: 6443].
    #[arg(long, global = true, value_name = "PORT")]
    pub port_kube_apiserver: Option<String>,
    /// Run instance N (1-5) beside others on this host: every port +N×10000,
    /// its own names and subnet (U7S_TENANT) [default: 0]. Ports of tenants
    /// 3-5 fall in the kernel's usual ephemeral range (`u7s doctor` checks).
    #[arg(long, global = true, value_name = "N")]
    pub tenant: Option<String>,
    /// Use this image as the node instead of building one (U7S_NODE_IMAGE).
    #[arg(long, global = true, value_name = "IMAGE")]
    pub image: Option<String>,
    /// Base of the shipped node Dockerfile (U7S_BASE_IMAGE) [default: kindest/node].
    #[arg(long, global = true, value_name = "IMAGE")]
    pub base_image: Option<String>,
    /// Build the node image from this directory instead (U7S_NODE_IMAGE_DIR).
    #[arg(long, global = true, value_name = "DIR")]
    pub image_dir: Option<PathBuf>,
    /// Also publish a node port on the host, e.g. 30080:30080 or
    /// 127.0.0.1:8053:30053/udp, repeatable (U7S_PUBLISH, comma-separated).
    /// For NodePort Services (30000-32767) and hostPort pods.
    #[arg(long, global = true, value_name = "[IP:]HOSTPORT:NODEPORT[/tcp|/udp]")]
    pub publish: Vec<String>,
    /// Bind a host path into the node, e.g. /srv/data:/mnt/data:ro, repeatable
    /// (U7S_MOUNTS, comma-separated). For hostPath volumes of pods.
    #[arg(long, global = true, value_name = "SRC:DST[:ro]")]
    pub mount: Vec<String>,
}

impl Settings {
    /// The flags as (variable, value) pairs.
    fn as_vars(&self) -> Vec<(&'static str, String)> {
        let s = |k: &'static str, v: &Option<String>| v.clone().map(|v| (k, v));
        [
            s("CONTAINER_ENGINE", &self.engine),
            s("HOST_IP", &self.host_ip),
            s("NODE_NAME", &self.node_name),
            s("NODE_SUBNET", &self.node_subnet),
            s("PORT_ETCD", &self.port_etcd),
            s("PORT_KUBELET", &self.port_kubelet),
            s("PORT_FLANNEL", &self.port_flannel),
            s("PORT_KUBE_APISERVER", &self.port_kube_apiserver),
            s("U7S_TENANT", &self.tenant),
            s("U7S_NODE_IMAGE", &self.image),
            s("U7S_BASE_IMAGE", &self.base_image),
            s(
                "U7S_NODE_IMAGE_DIR",
                &self.image_dir.as_ref().map(|p| p.display().to_string()),
            ),
            (!self.publish.is_empty()).then(|| ("U7S_PUBLISH", self.publish.join(","))),
            (!self.mount.is_empty()).then(|| ("U7S_MOUNTS", self.mount.join(","))),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

#[derive(Subcommand)]
enum Action {
    /// Build the node image if needed, create the network, volumes and node container, start it.
    Up {
        /// Run the node on the netaccel fast path (starts the daemon if needed).
        #[arg(long)]
        accel: bool,
        /// Rebuild the node image even if it exists.
        #[arg(long)]
        build: bool,
        /// Recreate an existing node container whose ports, mounts or fast
        /// path differ from the settings (state volumes are kept).
        #[arg(long)]
        recreate: bool,
    },
    /// Remove the node container and network (state volumes stay unless -v).
    Down {
        /// Also remove the state volumes (/var, /opt, /etc of the node).
        #[arg(short = 'v', long = "volumes")]
        volumes: bool,
    },
    /// Print the resolved settings, the node container spec and the kubeadm config.
    Render {
        /// Render as `up --accel` would.
        #[arg(long)]
        accel: bool,
    },
    /// Write the kubeadm config into the node, run `kubeadm init`, then sync-external-ip.
    KubeadmInit,
    /// Install Flannel (VXLAN on PORT_FLANNEL) from the node image's chart.
    InstallCni,
    /// Write the admin kubeconfig with the server at 127.0.0.1:PORT_KUBE_APISERVER.
    Kubeconfig {
        #[arg(long, short, default_value = "kubeconfig")]
        output: PathBuf,
    },
    /// Copy the node's kubectl binary out.
    Kubectl {
        #[arg(long, short, default_value = "kubectl")]
        output: PathBuf,
    },
    /// Write the file another host needs to join (token join command, control plane's /etc/hosts line).
    JoinCommand {
        #[arg(long, short, default_value = "join-command")]
        output: PathBuf,
    },
    /// Join this host's node to the cluster with a file from `u7s join-command`.
    KubeadmJoin {
        #[arg(long, short, default_value = "join-command")]
        file: PathBuf,
    },
    /// Set each node's ExternalIP and Flannel public IP to its host's IP; drop the uninitialized taint.
    SyncExternalIp,
    /// Run `kubeadm reset --force` in the node.
    KubeadmReset,
    /// A shell in the node (bash), or run a command: `u7s shell -- CMD ARGS…`.
    Shell {
        #[arg(last = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// The node's journal (last 10 minutes), or its console output with --console.
    Logs {
        /// Show the container's console output (from the engine) instead of the journal.
        #[arg(long)]
        console: bool,
        /// Keep following.
        #[arg(long, short)]
        follow: bool,
    },
    /// Check this host's prerequisites; exits non-zero when something blocks `up`.
    Doctor {
        /// Also check what `up --accel` needs.
        #[arg(long)]
        accel: bool,
    },
    /// Show the engine, the node container and the fast path's state.
    Status,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("U7S_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("u7s: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("u7s: {e:#}");
            std::process::exit(1);
        }
    }
}

async fn run(cli: Cli) -> Result<i32> {
    use commands as c;
    let vars = cli.settings.as_vars();
    let ctx = || c::Context::load(&cli.settings.config, &vars);
    match cli.action {
        Action::Up {
            accel,
            build,
            recreate,
        } => c::up(&ctx().await?, accel, build, recreate).await,
        Action::Down { volumes } => c::down(&ctx().await?, volumes).await,
        Action::Render { accel } => c::render(&ctx().await?, accel),
        Action::KubeadmInit => c::kubeadm_init(&ctx().await?).await,
        Action::InstallCni => c::install_cni(&ctx().await?).await,
        Action::Kubeconfig { output } => c::kubeconfig(&ctx().await?, &output).await,
        Action::Kubectl { output } => c::kubectl(&ctx().await?, &output).await,
        Action::JoinCommand { output } => c::join_command(&ctx().await?, &output).await,
        Action::KubeadmJoin { file } => c::kubeadm_join(&ctx().await?, &file).await,
        Action::SyncExternalIp => c::sync_external_ip(&ctx().await?).await,
        Action::KubeadmReset => c::kubeadm_reset(&ctx().await?).await,
        Action::Shell { command } => c::shell(&ctx().await?, command).await,
        Action::Logs { console, follow } => c::logs(&ctx().await?, console, follow).await,
        Action::Doctor { accel } => c::doctor(&cli.settings.config, &vars, accel).await,
        Action::Status => c::status(&ctx().await?).await,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_definition_is_consistent() {
        // Catches clashes such as a subcommand flag named like a global one.
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
