//! nerdctl through its CLI (it has no API socket). Arguments are rendered
//! by typed builders (`*_args` functions, unit-tested); a failure carries
//! the tool's stderr. The flags are the Docker CLI's, which nerdctl mirrors,
//! so the same driver also runs against `docker` (that is how it is tested).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};

use ipnet::Ipv4Net;
use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::process::Command;

use super::{context_dir, ContainerInfo, ContextFile, EngineError, EngineInfo};
use crate::config::EngineKind;
use crate::kubeadm::ExecOutput;
use crate::node::{NodeSpec, PROJECT_LABEL};

pub struct CliEngine {
    kind: EngineKind,
    program: PathBuf,
}

/// `create` arguments for the node container.
pub fn create_args(spec: &NodeSpec) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "create".into(),
        "--name".into(),
        spec.container.clone(),
        "--hostname".into(),
        spec.hostname.clone(),
        "--network".into(),
        spec.network.name.clone(),
        "--ip".into(),
        spec.ip.to_string(),
        "--restart".into(),
        spec.restart.clone(),
        "--workdir".into(),
        spec.working_dir.clone(),
    ];
    if spec.privileged {
        a.push("--privileged".into());
    }
    for p in &spec.ports {
        let host = match &p.host_ip {
            Some(ip) => format!("{ip}:{}", p.host_port),
            None => p.host_port.to_string(),
        };
        a.push("--publish".into());
        a.push(format!("{host}:{}/{}", p.container_port, p.protocol.name()));
    }
    for v in &spec.volumes {
        a.push("--volume".into());
        a.push(format!("{}:{}", v.volume, v.target));
    }
    for b in &spec.binds {
        a.push("--volume".into());
        let ro = if b.read_only { ":ro" } else { "" };
        a.push(format!("{}:{}{ro}", b.source.display(), b.target));
    }
    for t in &spec.tmpfs {
        a.push("--tmpfs".into());
        a.push(t.clone());
    }
    for (k, v) in &spec.sysctls {
        a.push("--sysctl".into());
        a.push(format!("{k}={v}"));
    }
    for (k, v) in &spec.env {
        a.push("--env".into());
        a.push(format!("{k}={v}"));
    }
    for (k, v) in &spec.labels {
        a.push("--label".into());
        a.push(format!("{k}={v}"));
    }
    for (k, v) in &spec.annotations {
        a.push("--annotation".into());
        a.push(format!("{k}={v}"));
    }
    if let Some(accel) = &spec.accel {
        // nerdctl starts the fast path from the annotations; another CLI
        // engine (docker) needs the wrapper runtime.
        if !spec.annotations.contains_key("nerdctl/bypass4netns") {
            a.push("--runtime".into());
            a.push(accel.runtime.clone());
        }
    }
    a.push(spec.image.clone());
    a
}

pub fn network_create_args(spec: &NodeSpec) -> Vec<String> {
    vec![
        "network".into(),
        "create".into(),
        "--driver".into(),
        "bridge".into(),
        "--subnet".into(),
        spec.network.subnet.to_string(),
        "--label".into(),
        format!(
            "{PROJECT_LABEL}={}",
            spec.labels.get(PROJECT_LABEL).cloned().unwrap_or_default()
        ),
        spec.network.name.clone(),
    ]
}

pub fn build_cmd_args(dir: &Path, tag: &str, build_args: &BTreeMap<String, String>) -> Vec<String> {
    let mut a: Vec<String> = vec!["build".into(), "--tag".into(), tag.into()];
    for (k, v) in build_args {
        a.push("--build-arg".into());
        a.push(format!("{k}={v}"));
    }
    a.push(dir.display().to_string());
    a
}

pub fn exec_args(container: &str, argv: &[String], interactive: bool, tty: bool) -> Vec<String> {
    let mut a: Vec<String> = vec!["exec".into()];
    if interactive {
        a.push("--interactive".into());
    }
    if tty {
        a.push("--tty".into());
    }
    a.push(container.into());
    a.extend(argv.iter().cloned());
    a
}

pub fn logs_args(container: &str, follow: bool, tail: Option<u64>) -> Vec<String> {
    let mut a: Vec<String> = vec!["logs".into()];
    if follow {
        a.push("--follow".into());
    }
    if let Some(t) = tail {
        a.push("--tail".into());
        a.push(t.to_string());
    }
    a.push(container.into());
    a
}

fn is_missing(stderr: &str) -> bool {
    let s = stderr.to_ascii_lowercase();
    s.contains("no such") || s.contains("not found")
}

impl CliEngine {
    pub fn new(kind: EngineKind, program: PathBuf) -> Self {
        Self { kind, program }
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
            .map_err(|source| EngineError::Spawn {
                program: self.program.display().to_string(),
                source,
            })
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
            .map_err(|source| EngineError::Spawn {
                program: self.program.display().to_string(),
                source,
            })
    }

    fn json(what: &str, bytes: &[u8]) -> Result<Value, EngineError> {
        serde_json::from_slice(bytes).map_err(|e| EngineError::Unexpected {
            what: what.to_owned(),
            detail: e.to_string(),
        })
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
        Ok(EngineInfo {
            version: v["ServerVersion"].as_str().unwrap_or_default().to_owned(),
            rootless: v["SecurityOptions"].as_array().is_some_and(|o| {
                o.iter()
                    .any(|x| x.as_str().is_some_and(|s| s.contains("rootless")))
            }),
            runtimes,
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
        let dir = tempfile_dir()?;
        context_dir(files, dir.path())?;
        let args = build_cmd_args(dir.path(), tag, build_args);
        let mut child = self
            .command(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| EngineError::Spawn {
                program: self.program.display().to_string(),
                source,
            })?;
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
        let status = child.wait().await.map_err(|source| EngineError::Spawn {
            program: self.program.display().to_string(),
            source,
        })?;
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
        let names: Vec<String> = String::from_utf8_lossy(&names)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let mut args: Vec<String> = vec!["network".into(), "inspect".into()];
        args.extend(names);
        let v = Self::json("network inspect", &self.run(&args).await?)?;
        Ok(v.as_array()
            .map(|nets| {
                nets.iter()
                    .map(|n| {
                        let subnets = n["IPAM"]["Config"]
                            .as_array()
                            .map(|c| {
                                c.iter()
                                    .filter_map(|x| x["Subnet"].as_str()?.parse().ok())
                                    .collect()
                            })
                            .unwrap_or_default();
                        (n["Name"].as_str().unwrap_or_default().to_owned(), subnets)
                    })
                    .collect()
            })
            .unwrap_or_default())
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
        self.run(&args).await.map(drop)
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
        let v = Self::json("container inspect", &stdout)?;
        let c = &v[0];
        Ok(Some(ContainerInfo {
            running: c["State"]["Running"].as_bool().unwrap_or(false),
            status: c["State"]["Status"].as_str().unwrap_or_default().to_owned(),
            image: c["Config"]["Image"].as_str().unwrap_or_default().to_owned(),
            runtime: c["HostConfig"]["Runtime"].as_str().unwrap_or_default().to_owned(),
            labels: c["Config"]["Labels"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                        .collect()
                })
                .unwrap_or_default(),
        }))
    }

    pub async fn create_container(&self, spec: &NodeSpec) -> Result<(), EngineError> {
        self.run(&create_args(spec)).await.map(drop)
    }

    pub async fn start_container(&self, name: &str) -> Result<(), EngineError> {
        self.run(&["start".into(), name.into()]).await.map(drop)
    }

    pub async fn remove_container(&self, name: &str) -> Result<bool, EngineError> {
        let args: Vec<String> = vec!["rm".into(), "--force".into(), name.into()];
        Ok(self.run_unless_missing(&args).await?.is_some())
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
            let status = self.run_attached(&args).await?;
            return Ok(ExecOutput {
                code: exit_code(status),
                ..Default::default()
            });
        }
        let out = self.output(&args).await?;
        Ok(ExecOutput {
            code: exit_code(out.status),
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }

    pub async fn exec_interactive(&self, container: &str, argv: &[String]) -> Result<i64, EngineError> {
        let tty = super::terminal::stdin_is_terminal();
        let status = self.run_attached(&exec_args(container, argv, true, tty)).await?;
        Ok(exit_code(status))
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
    use crate::config::{resolve, HostDefaults, Vars};

    fn spec(accel: Option<&str>) -> NodeSpec {
        let c = resolve(
            &Vars::layered(&[], |_| None, &[("NODE_SUBNET", "10.100.7.0/24".into())]),
            &HostDefaults {
                hostname: "alpha".into(),
                default_route_ip: Some("192.168.1.10".parse().expect("ip")),
                current_dir: "/c".into(),
            },
        )
        .expect("config");
        NodeSpec::new(&c, "u7s-node:test", accel, |_| false)
    }

    fn pairs(a: &[String], flag: &str) -> Vec<String> {
        a.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].clone())
            .collect()
    }

    #[test]
    fn create_renders_every_part_of_the_spec() {
        let a = create_args(&spec(None));
        assert_eq!(a[0], "create");
        assert_eq!(a.last().map(String::as_str), Some("u7s-node:test"));
        assert_eq!(pairs(&a, "--ip"), ["10.100.7.100"]);
        assert_eq!(pairs(&a, "--network"), ["u7s-net"]);
        assert_eq!(
            pairs(&a, "--publish"),
            [
                "2379:2379/tcp",
                "6443:6443/tcp",
                "10250:10250/tcp",
                "8472:8472/udp"
            ]
        );
        assert_eq!(
            pairs(&a, "--volume"),
            [
                "u7s-node-var:/var",
                "u7s-node-opt:/opt",
                "u7s-node-etc:/etc",
                "/c:/u7s:ro"
            ]
        );
        assert_eq!(pairs(&a, "--tmpfs"), ["/run", "/tmp"]);
        assert_eq!(pairs(&a, "--sysctl"), ["net.ipv4.ip_forward=1"]);
        assert!(pairs(&a, "--env").contains(&"U7S_HOST_IP=192.168.1.10".to_owned()));
        assert!(a.contains(&"--privileged".to_owned()));
        assert!(pairs(&a, "--annotation").is_empty());
        assert!(pairs(&a, "--runtime").is_empty());
    }

    #[test]
    fn accel_on_nerdctl_is_annotations_not_a_runtime() {
        let a = create_args(&spec(Some("netaccel")));
        let ann = pairs(&a, "--annotation");
        assert!(ann.contains(&"nerdctl/bypass4netns=true".to_owned()), "{ann:?}");
        assert!(pairs(&a, "--runtime").is_empty());
    }

    #[test]
    fn other_builders() {
        let s = spec(None);
        assert_eq!(
            network_create_args(&s),
            [
                "network",
                "create",
                "--driver",
                "bridge",
                "--subnet",
                "10.100.7.0/24",
                "--label",
                "io.u7s.project=u7s",
                "u7s-net"
            ]
        );
        let b = build_cmd_args(
            Path::new("/tmp/ctx"),
            "u7s-node:1",
            &BTreeMap::from([("BASE_IMAGE".into(), "kindest/node:v1.30.0".into())]),
        );
        assert_eq!(
            b,
            [
                "build",
                "--tag",
                "u7s-node:1",
                "--build-arg",
                "BASE_IMAGE=kindest/node:v1.30.0",
                "/tmp/ctx"
            ]
        );
        assert_eq!(
            exec_args("n", &["bash".into()], true, true),
            ["exec", "--interactive", "--tty", "n", "bash"]
        );
        assert_eq!(
            logs_args("n", true, Some(5)),
            ["logs", "--follow", "--tail", "5", "n"]
        );
    }
}
