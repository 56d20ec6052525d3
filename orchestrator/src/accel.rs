//! `--accel`: the netaccel daemon (found running, or started for the user)
//! and the engine's wrapper runtime that puts the node on the fast path.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::config::EngineKind;
use crate::engine::EngineInfo;

/// The engine's name for the wrapper runtime (`U7S_ACCEL_RUNTIME` overrides).
pub const DEFAULT_RUNTIME_NAME: &str = "netaccel";

#[derive(Debug, thiserror::Error)]
pub enum AccelError {
    #[error("netaccel not found (looked at U7S_NETACCEL, next to u7s, and on PATH): build it (cargo build --release -p netaccel) and put it on PATH")]
    NoBinary,
    #[error("XDG_RUNTIME_DIR is not set: the netaccel daemon keeps its sockets there (log in through systemd-logind, or export XDG_RUNTIME_DIR=/run/user/$(id -u))")]
    NoRuntimeDir,
    #[error("starting {binary}: {source}")]
    Spawn { binary: String, source: std::io::Error },
    #[error("the netaccel daemon did not come up within {secs} s: {detail} (log: {log})")]
    NotReady { secs: u64, detail: String, log: String },
    #[error("{engine} has no runtime named {name:?} (it knows: {known}). {fix}")]
    NoRuntime {
        engine: &'static str,
        name: String,
        known: String,
        fix: String,
    },
}

pub fn runtime_name() -> String {
    std::env::var("U7S_ACCEL_RUNTIME")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| DEFAULT_RUNTIME_NAME.to_owned())
}

/// The netaccel binary: `U7S_NETACCEL`, next to this executable, or on PATH.
pub fn find_netaccel() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("U7S_NETACCEL") {
        return Some(PathBuf::from(p));
    }
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("netaccel")))
        .filter(|p| p.is_file());
    sibling.or_else(|| {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join("netaccel"))
                .find(|p| p.is_file())
        })
    })
}

/// Status of the running daemon, if one answers on its API socket.
pub async fn daemon_status() -> Option<netaccel::api::DaemonStatus> {
    let socket = netaccel::api::default_api_socket()?;
    netaccel::api::fetch_status(&socket).await.ok()
}

/// Finds the daemon running, or starts `netaccel daemon` in the background
/// (its own process group, output to a log file) and waits for its API.
/// Returns the pid and whether it was started now.
pub async fn ensure_daemon() -> Result<(u32, bool), AccelError> {
    if let Some(s) = daemon_status().await {
        return Ok((s.pid, false));
    }
    let binary = find_netaccel().ok_or(AccelError::NoBinary)?;
    let dir = netaccel::runtime_dir()
        .ok_or(AccelError::NoRuntimeDir)?
        .join("netaccel");
    let spawn_err = |source| AccelError::Spawn {
        binary: binary.display().to_string(),
        source,
    };
    std::fs::create_dir_all(&dir).map_err(spawn_err)?;
    let log = dir.join("daemon.log");
    let log_file = std::fs::File::create(&log).map_err(spawn_err)?;
    let log_err = log_file.try_clone().map_err(spawn_err)?;
    let child = std::process::Command::new(&binary)
        .arg("daemon")
        .arg("--pid-file")
        .arg(dir.join("netaccel.pid"))
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(log_err)
        .process_group(0)
        .spawn()
        .map_err(spawn_err)?;
    let pid = child.id();
    // The daemon outlives u7s; it is not waited for.
    drop(child);
    wait_ready(&log, Duration::from_secs(10)).await?;
    Ok((pid, true))
}

async fn wait_ready(log: &Path, limit: Duration) -> Result<(), AccelError> {
    let start = Instant::now();
    loop {
        if daemon_status().await.is_some() {
            return Ok(());
        }
        if start.elapsed() > limit {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            return Err(AccelError::NotReady {
                secs: limit.as_secs(),
                detail: text.lines().last().unwrap_or("no output").to_owned(),
                log: log.display().to_string(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Checks the engine can run the node under the wrapper; the error shows
/// the configuration to add.
pub fn check_runtime(kind: EngineKind, info: &EngineInfo, name: &str) -> Result<(), AccelError> {
    if kind == EngineKind::Nerdctl || info.runtimes.iter().any(|r| r == name) {
        return Ok(());
    }
    let wrapper = find_netaccel()
        .and_then(|p| p.parent().map(|d| d.join("netaccel-runc")))
        .unwrap_or_else(|| PathBuf::from("/usr/local/bin/netaccel-runc"));
    let fix = match kind {
        EngineKind::Docker => format!(
            "Link the wrapper (ln -s netaccel {w}), add {{\"runtimes\": {{\"{name}\": {{\"path\": \"{w}\"}}}}}} to ~/.config/docker/daemon.json, then restart the engine (systemctl --user restart docker)",
            w = wrapper.display()
        ),
        EngineKind::Podman => format!(
            "Link the wrapper (ln -s netaccel {w}) and add to ~/.config/containers/containers.conf: [engine.runtimes] {name} = [\"{w}\"]",
            w = wrapper.display()
        ),
        EngineKind::Nerdctl => String::new(),
    };
    Err(AccelError::NoRuntime {
        engine: kind.name(),
        name: name.to_owned(),
        known: if info.runtimes.is_empty() {
            "none listed".into()
        } else {
            info.runtimes.join(", ")
        },
        fix,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_runtime_explains_the_engine_configuration() {
        let info = EngineInfo {
            version: "20.10".into(),
            rootless: true,
            runtimes: vec!["runc".into()],
        };
        let err = check_runtime(EngineKind::Docker, &info, "netaccel").expect_err("missing");
        let msg = err.to_string();
        assert!(
            msg.contains("daemon.json") && msg.contains("\"netaccel\"") && msg.contains("runc"),
            "{msg}"
        );
        let err = check_runtime(EngineKind::Podman, &info, "netaccel").expect_err("missing");
        assert!(err.to_string().contains("containers.conf"), "{err}");
        assert!(
            check_runtime(EngineKind::Nerdctl, &info, "netaccel").is_ok(),
            "nerdctl uses annotations"
        );
        let with = EngineInfo {
            runtimes: vec!["netaccel".into(), "runc".into()],
            ..info
        };
        assert!(check_runtime(EngineKind::Docker, &with, "netaccel").is_ok());
    }
}
