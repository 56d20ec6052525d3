//! What u7s knows about each engine, in one place: its name, where it is
//! found, how it puts a container on the fast path, and how a user
//! registers the wrapper runtime with it. The drivers ([`super::api`],
//! [`super::cli`], [`super::podman`]) speak to engines; this says which is
//! which.

use std::path::{Path, PathBuf};

/// The container engines u7s drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    Docker,
    Podman,
    Nerdctl,
}

/// How u7s reaches an engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A Docker API socket (Docker, Podman).
    Socket(PathBuf),
    /// A CLI with Docker's flags (nerdctl).
    Program(PathBuf),
}

impl EngineKind {
    /// Detection order when CONTAINER_ENGINE is unset (the original's).
    pub const DETECTION_ORDER: [EngineKind; 3] =
        [EngineKind::Docker, EngineKind::Nerdctl, EngineKind::Podman];

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "docker" => Some(Self::Docker),
            "podman" => Some(Self::Podman),
            "nerdctl" => Some(Self::Nerdctl),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Docker => "docker",
            Self::Podman => "podman",
            Self::Nerdctl => "nerdctl",
        }
    }

    /// Where the engine may be, in the order tried; for a CLI engine, why
    /// it is not there when it is not.
    pub fn endpoints(self) -> Result<Vec<Endpoint>, String> {
        let socket_env = |var: &str| {
            std::env::var(var)
                .ok()
                .and_then(|h| h.strip_prefix("unix://").map(PathBuf::from))
        };
        let runtime_dir = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from);
        let sockets = |var: &str, in_runtime_dir: &str, system: &str| {
            let mut v: Vec<PathBuf> = socket_env(var).into_iter().collect();
            v.extend(runtime_dir.as_deref().map(|d| d.join(in_runtime_dir)));
            v.push(PathBuf::from(system));
            v.into_iter().map(Endpoint::Socket).collect()
        };
        match self {
            Self::Docker => Ok(sockets("DOCKER_HOST", "docker.sock", "/var/run/docker.sock")),
            Self::Podman => Ok(sockets(
                "CONTAINER_HOST",
                "podman/podman.sock",
                "/run/podman/podman.sock",
            )),
            Self::Nerdctl => program("U7S_NERDCTL", "nerdctl")
                .map(|p| vec![Endpoint::Program(p)])
                .ok_or_else(|| "nerdctl (not on PATH; U7S_NERDCTL unset)".to_owned()),
        }
    }

    /// What the user adds so the engine knows the wrapper runtime `name`
    /// at `wrapper`; `None` for engines that switch bypass4netns
    /// themselves.
    pub fn runtime_registration(self, name: &str, wrapper: &Path) -> Option<String> {
        let w = wrapper.display();
        match self {
            Self::Docker => Some(format!(
                "Link the wrapper (ln -s netaccel {w}), add {{\"runtimes\": {{\"{name}\": {{\"path\": \"{w}\"}}}}}} to ~/.config/docker/daemon.json, then restart the engine (systemctl --user restart docker)"
            )),
            Self::Podman => Some(format!(
                "Link the wrapper (ln -s netaccel {w}) and add to ~/.config/containers/containers.conf: [engine.runtimes] {name} = [\"{w}\"]"
            )),
            Self::Nerdctl => None,
        }
    }

    /// Why this engine, as configured in the environment, cannot run a
    /// node on the wrapper runtime, before anything is created.
    pub fn accel_blocker(self) -> Option<String> {
        match self {
            Self::Podman => super::podman::remote_mode().map(|why| super::podman::remote_refusal(&why)),
            Self::Docker | Self::Nerdctl => None,
        }
    }
}

/// `$env`, else `name` on PATH.
pub(crate) fn program(env: &str, name: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// How an engine puts a container on the fast path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AccelMethod {
    /// The netaccel runtime wrapper, registered with the engine as a
    /// runtime (Docker, Podman); the node's ignore ranges travel in its
    /// environment.
    #[default]
    Runtime,
    /// nerdctl 1.x: the label `nerdctl/bypass4netns=true`. nerdctl sends a
    /// fixed ignore list to the bypass4netnsd API, so the node's ranges
    /// must be the daemon's own (`netaccel daemon --ignore`).
    NerdctlLabel,
    /// nerdctl ≥ 2.0: the `nerdctl/bypass4netns*` annotations, ignore
    /// ranges included.
    NerdctlAnnotations,
}

impl AccelMethod {
    pub fn describe(self) -> &'static str {
        match self {
            AccelMethod::Runtime => "the netaccel runtime wrapper",
            AccelMethod::NerdctlLabel => "nerdctl's bypass4netns label (nerdctl 1.x)",
            AccelMethod::NerdctlAnnotations => "nerdctl's bypass4netns annotations (nerdctl >= 2.0)",
        }
    }

    /// Whether the node's ignore ranges must be the daemon's own, because
    /// the engine cannot pass them per container (nerdctl 1.x).
    pub fn daemon_holds_ignore(self) -> bool {
        self == AccelMethod::NerdctlLabel
    }

    /// Whether the engine must know the wrapper as a runtime.
    pub fn needs_runtime(self) -> bool {
        self == AccelMethod::Runtime
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_engine_names_itself_and_parses_back() {
        for k in EngineKind::DETECTION_ORDER {
            assert_eq!(EngineKind::parse(k.name()), Some(k));
        }
        assert_eq!(EngineKind::parse("lxc"), None);
    }

    #[test]
    fn runtime_registration_is_per_engine() {
        let w = Path::new("/home/a/bin/netaccel-runc");
        let docker = EngineKind::Docker
            .runtime_registration("netaccel", w)
            .expect("docker");
        assert!(
            docker.contains("daemon.json")
                && docker.contains(r#""netaccel": {"path": "/home/a/bin/netaccel-runc"}"#),
            "{docker}"
        );
        let podman = EngineKind::Podman
            .runtime_registration("netaccel", w)
            .expect("podman");
        assert!(
            podman.contains(r#"[engine.runtimes] netaccel = ["/home/a/bin/netaccel-runc"]"#),
            "{podman}"
        );
        assert_eq!(EngineKind::Nerdctl.runtime_registration("netaccel", w), None);
    }

    #[test]
    fn only_nerdctl_1_needs_the_ranges_in_the_daemon() {
        assert!(AccelMethod::NerdctlLabel.daemon_holds_ignore());
        assert!(!AccelMethod::NerdctlAnnotations.daemon_holds_ignore());
        assert!(!AccelMethod::Runtime.daemon_holds_ignore());
        assert!(AccelMethod::Runtime.needs_runtime() && !AccelMethod::NerdctlLabel.needs_runtime());
    }
}
