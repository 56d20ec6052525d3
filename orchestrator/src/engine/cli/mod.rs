//! nerdctl through its CLI (it has no API socket). Arguments are rendered
//! by typed builders ([`args`]); answers are read by [`answers`], which
//! handles both the docker CLI's and nerdctl's way of answering (nerdctl
//! mirrors docker's flags, not all of its behaviour), so the same driver
//! also runs against `docker` (that is how it is tested end to end). A
//! failure carries the tool's stderr.

pub mod answers;
pub mod args;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};

use ipnet::Ipv4Net;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio::sync::OnceCell;

use super::EngineKind;
use super::ExecOutput;
use super::{context_dir, ContainerInfo, ContextFile, EngineError, EngineInfo};
use crate::node::{NodeSpec, PROJECT_LABEL};
use answers::CliVersion;
pub use args::{build_cmd_args, create_args, exec_args, logs_args, network_create_args};

pub struct CliEngine {
    kind: EngineKind,
    program: PathBuf,
    /// `version`, asked once.
    version: OnceCell<CliVersion>,
}

/// How much of a command's stderr is kept to read its real exit status.
const STDERR_TAIL: usize = 4096;

fn is_missing(stderr: &str) -> bool {
    let s = stderr.to_ascii_lowercase();
    s.contains("no such") || s.contains("not found")
}

impl CliEngine {
    pub fn new(kind: EngineKind, program: PathBuf) -> Self {
        Self {
            kind,
            program,
            version: OnceCell::new(),
        }
    }

    pub fn kind(&self) -> EngineKind {
        self.kind
    }

    pub fn program(&self) -> &Path {
        &self.program
    }

    fn command(&self, args: &[String]) -> Command {
        let mut c = Command::new(&self.program);
        c.args(args).kill_on_drop(true);
        c
    }

    fn spawn_failed(&self, source: std::io::Error) -> EngineError {
        EngineError::Spawn {
            program: self.program.display().to_string(),
            source,
        }
    }

    /// An answer of the tool that could not be read.
    fn unexpected(what: &str) -> impl FnOnce(String) -> EngineError + '_ {
        move |detail| EngineError::Unexpected {
            what: what.to_owned(),
            detail,
        }
    }

    fn failed(&self, args: &[String], status: ExitStatus, stderr: &[u8]) -> EngineError {
        EngineError::CommandFailed {
            command: format!("{} {}", self.program.display(), args.join(" ")),
            status: status.to_string(),
            stderr: String::from_utf8_lossy(stderr).trim().to_owned(),
        }
    }

    /// Runs to completion and captures the output (stdin closed).
    async fn output(&self, args: &[String]) -> Result<std::process::Output, EngineError> {
        self.command(args)
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| self.spawn_failed(e))
    }

    /// Runs and requires success; returns stdout.
    async fn run(&self, args: &[String]) -> Result<Vec<u8>, EngineError> {
        let out = self.output(args).await?;
        if !out.status.success() {
            return Err(self.failed(args, out.status, &out.stderr));
        }
        Ok(out.stdout)
    }

    /// Runs and requires success, except that `None` means the tool said
    /// the object does not exist.
    async fn run_unless_missing(&self, args: &[String]) -> Result<Option<Vec<u8>>, EngineError> {
        let out = self.output(args).await?;
        if out.status.success() {
            return Ok(Some(out.stdout));
        }
        if is_missing(&String::from_utf8_lossy(&out.stderr)) {
            return Ok(None);
        }
        Err(self.failed(args, out.status, &out.stderr))
    }

    /// Runs with the user's stdin/stdout/stderr.
    async fn run_attached(&self, args: &[String]) -> Result<ExitStatus, EngineError> {
        self.command(args)
            .status()
            .await
            .map_err(|e| self.spawn_failed(e))
    }

    /// Runs with the user's stdin and stdout; stderr is shown as it comes
    /// and its last part kept. Returns the exec'd process's real status.
    async fn exec_attached(&self, args: &[String]) -> Result<i64, EngineError> {
        let mut child = self
            .command(args)
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| self.spawn_failed(e))?;
        let mut tail: Vec<u8> = Vec::new();
        if let Some(mut err) = child.stderr.take() {
            let mut shown = tokio::io::stderr();
            let mut buf = [0u8; 4096];
            loop {
                let n = match err.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let _ = shown.write_all(&buf[..n]).await;
                let _ = shown.flush().await;
                tail.extend_from_slice(&buf[..n]);
                let excess = tail.len().saturating_sub(STDERR_TAIL);
                tail.drain(..excess);
            }
        }
        let status = child.wait().await.map_err(|e| self.spawn_failed(e))?;
        Ok(answers::exec_status(
            exit_code(status),
            &String::from_utf8_lossy(&tail),
        ))
    }

    /// What the CLI's `version` says (asked once).
    async fn version(&self) -> Result<&CliVersion, EngineError> {
        self.version
            .get_or_try_init(|| async {
                let out = self
                    .run(&["version".into(), "--format".into(), "{{json .}}".into()])
                    .await?;
                answers::cli_version(&out).map_err(Self::unexpected("version"))
            })
            .await
    }

    fn json(what: &str, bytes: &[u8]) -> Result<Value, EngineError> {
        serde_json::from_slice(bytes).map_err(|e| Self::unexpected(what)(e.to_string()))
    }

    pub async fn info(&self) -> Result<EngineInfo, EngineError> {
        let out = self
            .run(&["info".into(), "--format".into(), "{{json .}}".into()])
            .await?;
        let v = Self::json("info", &out)?;
        let mut runtimes: Vec<String> = v["Runtimes"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        runtimes.sort();
        // info's ServerVersion is containerd's under nerdctl: the version
        // answer names the engine properly.
        let version = self.version().await?;
        Ok(EngineInfo {
            version: version.version.clone(),
            components: version.components.clone(),
            rootless: v["SecurityOptions"].as_array().is_some_and(|o| {
                o.iter()
                    .any(|x| x.as_str().is_some_and(|s| s.contains("rootless")))
            }),
            runtimes,
            accel: version.accel,
            build_blocker: version.build_blocker.clone(),
            user_net: v["host"]["rootlessNetworkCmd"].as_str().map(str::to_owned),
        })
    }

    pub async fn image_exists(&self, image: &str) -> Result<bool, EngineError> {
        let args: Vec<String> = vec!["image".into(), "inspect".into(), image.into()];
        Ok(self.run_unless_missing(&args).await?.is_some())
    }

    pub async fn build_image(
        &self,
        files: &[ContextFile],
        tag: &str,
        build_args: &BTreeMap<String, String>,
        progress: &mut (dyn FnMut(&str) + Send),
    ) -> Result<(), EngineError> {
        if let Some(detail) = &self.version().await?.build_blocker {
            return Err(EngineError::Build {
                detail: detail.clone(),
            });
        }
        let dir = tempfile_dir()?;
        context_dir(files, dir.path())?;
        let args = build_cmd_args(dir.path(), tag, build_args);
        let mut child = self
            .command(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| self.spawn_failed(e))?;
        let mut stderr = child.stderr.take();
        let err_task = tokio::spawn(async move {
            let mut buf = Vec::new();
            if let Some(e) = stderr.as_mut() {
                let _ = e.read_to_end(&mut buf).await;
            }
            buf
        });
        if let Some(stdout) = child.stdout.take() {
            use tokio::io::AsyncBufReadExt;
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if !line.trim().is_empty() {
                    progress(&line);
                }
            }
        }
        let status = child.wait().await.map_err(|e| self.spawn_failed(e))?;
        let stderr = err_task.await.unwrap_or_default();
        if !status.success() {
            return Err(self.failed(&args, status, &stderr));
        }
        Ok(())
    }

    pub async fn network_subnets(&self) -> Result<Vec<(String, Vec<Ipv4Net>)>, EngineError> {
        let names = self
            .run(&[
                "network".into(),
                "ls".into(),
                "--format".into(),
                "{{.Name}}".into(),
            ])
            .await?;
        let names = answers::network_names(&names);
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let mut args: Vec<String> = vec!["network".into(), "inspect".into()];
        args.extend(names);
        answers::network_subnets(&self.run(&args).await?).map_err(Self::unexpected("network inspect"))
    }

    pub async fn create_network(&self, spec: &NodeSpec) -> Result<(), EngineError> {
        self.run(&network_create_args(spec)).await.map(drop)
    }

    pub async fn remove_network(&self, name: &str) -> Result<(), EngineError> {
        let args: Vec<String> = vec!["network".into(), "rm".into(), name.into()];
        self.run_unless_missing(&args).await.map(drop)
    }

    pub async fn create_volume(&self, name: &str, project: &str) -> Result<(), EngineError> {
        let args: Vec<String> = vec![
            "volume".into(),
            "create".into(),
            "--label".into(),
            format!("{PROJECT_LABEL}={project}"),
            name.into(),
        ];
        let out = self.output(&args).await?;
        if out.status.success() {
            return Ok(());
        }
        // docker's create is idempotent; nerdctl's fails on an existing
        // volume ("file exists"): one that inspects fine is what we wanted.
        let inspect: Vec<String> = vec!["volume".into(), "inspect".into(), name.into()];
        if self.output(&inspect).await?.status.success() {
            return Ok(());
        }
        Err(self.failed(&args, out.status, &out.stderr))
    }

    pub async fn remove_volume(&self, name: &str) -> Result<bool, EngineError> {
        let args: Vec<String> = vec!["volume".into(), "rm".into(), name.into()];
        Ok(self.run_unless_missing(&args).await?.is_some())
    }

    pub async fn container(&self, name: &str) -> Result<Option<ContainerInfo>, EngineError> {
        let args: Vec<String> = vec!["container".into(), "inspect".into(), name.into()];
        let Some(stdout) = self.run_unless_missing(&args).await? else {
            return Ok(None);
        };
        answers::container_info(&stdout)
            .map(Some)
            .map_err(Self::unexpected("container inspect"))
    }

    pub async fn create_container(&self, spec: &NodeSpec) -> Result<(), EngineError> {
        let method = self.version().await?.accel;
        self.run(&create_args(spec, method)).await.map(drop)
    }

    pub async fn start_container(&self, name: &str) -> Result<(), EngineError> {
        self.run(&["start".into(), name.into()]).await.map(drop)
    }

    pub async fn remove_container(&self, name: &str) -> Result<bool, EngineError> {
        let args: Vec<String> = vec!["rm".into(), "--force".into(), name.into()];
        Ok(self
            .run_unless_missing(&args)
            .await?
            .is_some_and(|out| answers::removed(&out)))
    }

    pub async fn exec(
        &self,
        container: &str,
        argv: &[String],
        live: bool,
    ) -> Result<ExecOutput, EngineError> {
        let args = exec_args(container, argv, false, false);
        if live {
            // Shown as it comes; the captured output is then empty.
            return Ok(ExecOutput {
                code: self.exec_attached(&args).await?,
                ..Default::default()
            });
        }
        let out = self.output(&args).await?;
        Ok(ExecOutput {
            code: answers::exec_status(exit_code(out.status), &String::from_utf8_lossy(&out.stderr)),
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }

    pub async fn exec_interactive(&self, container: &str, argv: &[String]) -> Result<i64, EngineError> {
        let tty = super::terminal::stdin_is_terminal();
        self.exec_attached(&exec_args(container, argv, true, tty)).await
    }

    pub async fn logs(&self, container: &str, follow: bool, tail: Option<u64>) -> Result<(), EngineError> {
        let args = logs_args(container, follow, tail);
        let status = self.run_attached(&args).await?;
        if !status.success() {
            return Err(self.failed(&args, status, b"(shown above)"));
        }
        Ok(())
    }
}

fn tempfile_dir() -> Result<tempfile::TempDir, EngineError> {
    tempfile::Builder::new()
        .prefix("u7s-build-")
        .tempdir()
        .map_err(|source| EngineError::Context { source })
}

fn exit_code(status: ExitStatus) -> i64 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .map(i64::from)
        .or_else(|| status.signal().map(|s| 128 + i64::from(s)))
        .unwrap_or(-1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::AccelMethod;

    /// A stand-in for nerdctl that replays the real nerdctl 1.7.7 captures
    /// (orchestrator/tests/fixtures/nerdctl-1.7.7): a command line that was
    /// captured gets that capture's stdout, stderr and status; one captured
    /// twice (volume create) gets its captures in order. Anything else fails
    /// loudly, so the driver is held to commands nerdctl really answered.
    fn replaying_nerdctl(dir: &Path) -> PathBuf {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nerdctl-1.7.7");
        let script = dir.join("nerdctl");
        let body = format!(
            r#"#!/bin/sh
want="nerdctl $*"
for cmd in {fixtures}/*.cmd; do
    [ "$(cat "$cmd")" = "$want" ] || continue
    name=$(basename "$cmd" .cmd)
    [ -e "{state}/$name" ] && continue
    : > "{state}/$name"
    cat "{fixtures}/$name.stdout"
    cat "{fixtures}/$name.stderr" >&2
    exit "$(cat "{fixtures}/$name.exit")"
done
echo "no capture (left) for: $want" >&2
exit 99
"#,
            fixtures = fixtures.display(),
            state = dir.display()
        );
        std::fs::write(&script, body).expect("script");
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        script
    }

    #[tokio::test]
    async fn the_driver_handles_what_the_real_nerdctl_answers() {
        let dir = tempfile::tempdir().expect("dir");
        let e = CliEngine::new(EngineKind::Nerdctl, replaying_nerdctl(dir.path()));
        // `network ls` lists host and none, which nerdctl will not inspect.
        let nets = e.network_subnets().await.expect("subnets");
        assert_eq!(
            nets,
            [("bridge".to_owned(), vec!["10.4.0.0/24".parse().expect("net")])]
        );
        // Creating a volume that exists fails in nerdctl; that is success.
        e.create_volume("fx-vol", "fx").await.expect("first create");
        e.create_volume("fx-vol", "fx")
            .await
            .expect("second create is idempotent");
        // The exec'd process's status, not nerdctl's 1.
        let argv: Vec<String> = ["/bin/busybox", "sh", "-c", "exit 4"].map(String::from).into();
        assert_eq!(e.exec("fx-c", &argv, false).await.expect("exec").code, 4);
        let missing: Vec<String> = vec!["/no/such/cmd".into()];
        assert_eq!(e.exec("fx-c", &missing, true).await.expect("exec").code, 127);
        // A missing container is not reported as removed.
        assert!(!e.remove_container("fx-no-such").await.expect("rm"));
        assert!(e.remove_container("fx-c").await.expect("rm"));
        // nerdctl's version, its switch for the fast path, no BuildKit.
        let info = e.info().await.expect("info");
        assert_eq!(info.version, "v1.7.7");
        assert!(info.rootless);
        assert_eq!(info.accel, AccelMethod::NerdctlLabel);
        assert!(info.build_blocker.is_some());
        let build = e
            .build_image(&[], "u7s-node:x", &BTreeMap::new(), &mut |_| {})
            .await
            .expect_err("no BuildKit");
        assert!(build.to_string().contains("buildctl"), "{build}");
    }
}
