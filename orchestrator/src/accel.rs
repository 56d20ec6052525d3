//! `--accel`: the netaccel daemon (found running, or started for the user)
//! and the engine's wrapper runtime that puts the node on the fast path.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use ipnet::{IpNet, Ipv4Net};

use crate::engine::EngineInfo;
use crate::engine::EngineKind;

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
    #[error("the running netaccel daemon (pid {pid}) does not ignore {missing}, which this node needs kept on the engine's network; {why}: stop that daemon so `u7s up --accel` starts one with them, or start it yourself with `netaccel daemon {flags}`")]
    DaemonIgnore {
        pid: u32,
        missing: String,
        why: String,
        flags: String,
    },
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

/// The ranges of `needed` that the daemon's own ignore list (`have`) does
/// not cover.
pub fn uncovered(needed: &[Ipv4Net], have: &[IpNet]) -> Vec<Ipv4Net> {
    needed
        .iter()
        .copied()
        .filter(|n| !have.iter().any(|h| h.contains(&IpNet::V4(*n))))
        .collect()
}

/// Finds the daemon running, or starts `netaccel daemon` in the background
/// (its own process group, output to a log file) and waits for its API.
/// `daemon_ignore` must be ignored by the daemon itself (for engines that
/// cannot hand a container's ignore list over, see [`crate::engine::AccelMethod`]); a
/// running daemon without them is refused with the fix. Returns the pid
/// and whether it was started now.
pub async fn ensure_daemon(daemon_ignore: &[Ipv4Net]) -> Result<(u32, bool), AccelError> {
    let flags = || {
        daemon_ignore
            .iter()
            .map(|n| format!("--ignore {n}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    if let Some(s) = daemon_status().await {
        let missing = uncovered(daemon_ignore, &s.ignore);
        if !missing.is_empty() {
            return Err(AccelError::DaemonIgnore {
                pid: s.pid,
                missing: missing
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                why: "nerdctl 1.x sends its own fixed ignore list for each container".into(),
                flags: flags(),
            });
        }
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
        .args(
            daemon_ignore
                .iter()
                .flat_map(|n| ["--ignore".to_owned(), n.to_string()]),
        )
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
    if !info.accel.needs_runtime() || info.runtimes.iter().any(|r| r == name) {
        return Ok(());
    }
    let wrapper = find_netaccel()
        .and_then(|p| p.parent().map(|d| d.join("netaccel-runc")))
        .unwrap_or_else(|| PathBuf::from("/usr/local/bin/netaccel-runc"));
    Err(AccelError::NoRuntime {
        engine: kind.name(),
        name: name.to_owned(),
        known: if info.runtimes.is_empty() {
            "none listed".into()
        } else {
            info.runtimes.join(", ")
        },
        fix: kind.runtime_registration(name, &wrapper).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::AccelMethod;

    #[test]
    fn a_missing_runtime_explains_the_engine_configuration() {
        let info = EngineInfo {
            version: "20.10".into(),
            rootless: true,
            runtimes: vec!["runc".into()],
            ..Default::default()
        };
        let err = check_runtime(EngineKind::Docker, &info, "netaccel").expect_err("missing");
        let msg = err.to_string();
        assert!(
            msg.contains("daemon.json") && msg.contains("\"netaccel\"") && msg.contains("runc"),
            "{msg}"
        );
        let err = check_runtime(EngineKind::Podman, &info, "netaccel").expect_err("missing");
        assert!(err.to_string().contains("containers.conf"), "{err}");
        // The CLI driver run with the docker CLI needs the runtime too.
        assert!(check_runtime(EngineKind::Nerdctl, &info, "netaccel").is_err());
        for method in [AccelMethod::NerdctlLabel, AccelMethod::NerdctlAnnotations] {
            let nerdctl = EngineInfo {
                accel: method,
                ..info.clone()
            };
            assert!(
                check_runtime(EngineKind::Nerdctl, &nerdctl, "netaccel").is_ok(),
                "nerdctl switches bypass4netns itself"
            );
        }
        let with = EngineInfo {
            runtimes: vec!["netaccel".into(), "runc".into()],
            ..info
        };
        assert!(check_runtime(EngineKind::Docker, &with, "netaccel").is_ok());
    }

    #[test]
    fn the_daemon_ignore_list_must_cover_the_node_ranges() {
        let net = |s: &str| -> Ipv4Net { s.parse().expect("net") };
        let any = |s: &str| -> IpNet { s.parse().expect("net") };
        let needed = [net("10.244.0.0/16"), net("10.96.0.0/16"), net("10.100.7.0/24")];
        assert_eq!(uncovered(&needed, &[]), needed);
        let have = [any("10.244.0.0/16"), any("10.100.0.0/16"), any("fd00::/8")];
        assert_eq!(uncovered(&needed, &have), [net("10.96.0.0/16")]);
        assert!(uncovered(&needed, &[any("10.0.0.0/8")]).is_empty());
    }
}
