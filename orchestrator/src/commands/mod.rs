//! What each subcommand does, on top of the library's parts, one file per
//! group of `u7s --help`: [`node`] (up, down, render), [`cluster`] (the
//! kubeadm steps, kubeconfig, join), [`access`] (shell, logs), [`diagnose`]
//! (doctor, status). Shared here: the resolved settings and the helpers
//! every group uses.

mod access;
mod cluster;
mod diagnose;
mod node;

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use u7s::config::{self, Config, HostDefaults, Vars};
use u7s::engine::{Engine, EngineInfo};
use u7s::hostnet;
use u7s::kubeadm::Node;
use u7s::node::{Names, NodeSpec};

pub use access::{logs, shell};
pub use cluster::{
    install_cni, join_command, kubeadm_init, kubeadm_join, kubeadm_reset, kubeconfig, kubectl,
    sync_external_ip,
};
pub use diagnose::{doctor, status};
pub use node::{down, render, up};

/// The resolved settings of one invocation.
pub struct Context {
    pub config: Config,
}

pub(super) async fn host_defaults() -> Result<HostDefaults> {
    let hostname = rustix::system::uname().nodename().to_string_lossy().into_owned();
    let default_route_ip = hostnet::default_route_ip().await.unwrap_or_else(|e| {
        tracing::warn!(%e, "no default route address");
        None
    });
    Ok(HostDefaults {
        hostname,
        default_route_ip,
        current_dir: std::env::current_dir().context("the current directory")?,
    })
}

pub(super) async fn resolve(file: &Option<PathBuf>, flags: &[(&'static str, String)]) -> Result<Config> {
    let file = config::read_config_file(file.as_deref())?;
    let vars = Vars::layered(&file, |k| std::env::var(k).ok(), flags);
    Ok(config::resolve(&vars, &host_defaults().await?)?)
}

impl Context {
    pub async fn load(file: &Option<PathBuf>, flags: &[(&'static str, String)]) -> Result<Self> {
        Ok(Self {
            config: resolve(file, flags).await?,
        })
    }

    pub(super) async fn engine(&self) -> Result<Engine> {
        Ok(Engine::connect(self.config.engine).await?)
    }

    pub(super) fn container(&self) -> String {
        Names::container(&self.config.project)
    }
}

pub(super) fn spec(ctx: &Context, image: &str, accel_runtime: Option<&str>) -> NodeSpec {
    NodeSpec::new(&ctx.config, image, accel_runtime, |p| p.exists())
}

/// The node must exist and run for the in-node steps.
pub(super) async fn running_node<'a>(ctx: &Context, engine: &'a Engine) -> Result<Node<'a>> {
    let name = ctx.container();
    match engine.container(&name).await? {
        Some(c) if c.running => Ok(Node {
            engine,
            container: name,
        }),
        Some(c) => bail!(
            "the node container {name} is {}: start it with `u7s up`",
            c.status
        ),
        None => bail!(
            "there is no node container {name} on {} ({}): create it with `u7s up`",
            engine.kind().name(),
            engine.endpoint()
        ),
    }
}

pub(super) fn step(msg: impl AsRef<str>) {
    println!("==> {}", msg.as_ref());
}

/// Writes a file only the user can read (it holds credentials).
pub(super) fn write_private(path: &Path, content: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("u7s-tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(content)?;
    drop(f);
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// " (containerd 1.6.20, runc 1.1.5)" where the engine names its parts.
pub(super) fn components(info: &EngineInfo) -> String {
    if info.components.is_empty() {
        return String::new();
    }
    format!(" ({})", info.components.join(", "))
}
