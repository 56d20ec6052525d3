//! The cluster steps run inside the node: the kubeadm configuration,
//! `kubeadm init`/`join`/`reset`, Flannel, the kubeconfig, the join file and
//! the ExternalIP sync. Each step is a list of commands for a [`NodeShell`],
//! so what a step does is tested without Kubernetes binaries.

use std::future::Future;

use ipnet::Ipv4Net;
use serde_json::{json, Value};

use crate::config::{Config, ImageSource, POD_CIDR, SERVICE_CIDR};
use crate::engine::Engine;
pub use crate::engine::ExecOutput;
use crate::node::NODE_HOST_IP_LABEL;

/// Where `kubeadm-init` writes its configuration in the node (/etc is a
/// state volume, so it stays for `kubeadm-reset` and re-runs).
pub const KUBEADM_CONFIG_PATH: &str = "/etc/u7s/kubeadm-config.yaml";
/// The Flannel chart the node image ships.
pub const FLANNEL_CHART: &str = "/usr/local/share/u7s/flannel.tgz";
pub const FLANNEL_NAMESPACE: &str = "kube-flannel";
const UNINITIALIZED_TAINT: &str = "node.cloudprovider.kubernetes.io/uninitialized";
const PUBLIC_IP_ANNOTATION: &str = "flannel.alpha.coreos.com/public-ip-overwrite";
/// What flanneld published as the node's address when it took its lease.
const PUBLISHED_IP_ANNOTATION: &str = "flannel.alpha.coreos.com/public-ip";
/// The label of Flannel's pods, in the chart and in kube-flannel.yml alike.
const FLANNEL_POD_SELECTOR: &str = "app=flannel";
const JOIN_HEADER: &str = "# u7s join-command";

#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("`{command}` in the node exited with {code}: {stderr}")]
    Failed {
        command: String,
        code: i64,
        stderr: String,
    },
    #[error("running `{command}` in the node: {detail}")]
    Exec { command: String, detail: String },
    #[error("{what} is not what was expected: {detail}")]
    Unexpected { what: String, detail: String },
    #[error("the join file {detail}; make it again with `u7s join-command` on the control-plane host")]
    BadJoinFile { detail: String },
    #[error("node subnet collision: this host's NODE_SUBNET {ours} is also the control plane's ({theirs}); the default comes from a hash of the host name with only 256 choices. Pick a free one on this host (e.g. NODE_SUBNET={suggestion}), then `u7s down -v && u7s up` and join again")]
    SubnetCollision {
        ours: Ipv4Net,
        theirs: Ipv4Net,
        suggestion: Ipv4Net,
    },
    #[error("this host's NODE_NAME {name:?} is the control plane's too: set NODE_NAME to a unique name, then `u7s down -v && u7s up` and join again")]
    NameCollision { name: String },
    #[error("this host publishes {var}={ours}, the cluster uses {theirs}: every node of a cluster needs the same kubelet and Flannel ports; set {var}={theirs} (or the control plane's U7S_TENANT), then `u7s down && u7s up` and join again")]
    PortMismatch {
        var: &'static str,
        ours: u16,
        theirs: u16,
    },
}

/// Runs commands in the node container.
pub trait NodeShell {
    /// Runs `argv`; with `live`, its output is also shown as it comes.
    fn exec(&self, argv: &[String], live: bool) -> impl Future<Output = Result<ExecOutput, StepError>>;
}

/// A node container of an engine, as the [`NodeShell`] the steps run in.
pub struct Node<'a> {
    pub engine: &'a Engine,
    pub container: String,
}

impl NodeShell for Node<'_> {
    async fn exec(&self, argv: &[String], live: bool) -> Result<ExecOutput, StepError> {
        self.engine
            .exec(&self.container, argv, live)
            .await
            .map_err(|e| StepError::Exec {
                command: argv.join(" "),
                detail: e.to_string(),
            })
    }
}

fn argv(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| (*s).to_owned()).collect()
}

/// Runs and requires exit code 0.
pub async fn check(shell: &impl NodeShell, cmd: &[String], live: bool) -> Result<ExecOutput, StepError> {
    let out = shell.exec(cmd, live).await?;
    if out.code != 0 {
        return Err(StepError::Failed {
            command: cmd.join(" "),
            code: out.code,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(out)
}

/// The kubeadm configuration of the first control-plane node.
/// A Kubernetes release, as kubeadm and image tags name it (`v1.35.0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KubeVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl std::fmt::Display for KubeVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "v{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl KubeVersion {
    /// The version of the default node image (`image::DEFAULT_BASE_IMAGE`).
    pub const DEFAULT: KubeVersion = KubeVersion {
        major: 1,
        minor: 35,
        patch: 0,
    };

    const fn at_least(self, major: u32, minor: u32) -> bool {
        self.major > major || (self.major == major && self.minor >= minor)
    }

    /// Reads `v1.35.0` or `1.35.0`, ignoring a pre-release or build suffix.
    pub fn parse(text: &str) -> Option<Self> {
        let t = text.trim().trim_start_matches('v');
        let mut parts = t.splitn(3, '.');
        let num = |p: Option<&str>| -> Option<u32> {
            let digits: String = p?.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        };
        Some(Self {
            major: num(parts.next())?,
            minor: num(parts.next())?,
            patch: num(parts.next())?,
        })
    }

    /// The version in an image reference's tag
    /// (`docker.io/kindest/node:v1.35.0@sha256:…`).
    pub fn from_image(reference: &str) -> Option<Self> {
        let name = reference.split('@').next()?;
        let last = name.rsplit('/').next()?;
        Self::parse(last.split_once(':')?.1)
    }

    /// What the settings point at: the base image's tag, else the default.
    /// The node's own kubeadm has the last word (see [`kubeadm_init`]).
    pub fn configured(c: &Config) -> Self {
        let image = match &c.image {
            ImageSource::Build { base, .. } => base.as_deref().unwrap_or(crate::image::DEFAULT_BASE_IMAGE),
            ImageSource::Prebuilt(name) => name.as_str(),
        };
        Self::from_image(image).unwrap_or(Self::DEFAULT)
    }
}

/// `extraArgs` in the shape of the config API: a map in v1beta3, a list of
/// name/value pairs in v1beta4 (kubeadm ≥ 1.31).
fn extra_args(v1beta4: bool, args: &[(&str, String)]) -> Value {
    if v1beta4 {
        Value::Array(args.iter().map(|(n, v)| json!({"name": n, "value": v})).collect())
    } else {
        Value::Object(args.iter().map(|(n, v)| ((*n).to_owned(), json!(v))).collect())
    }
}

/// The kubeadm configuration for Kubernetes `version`: `kubeadm.k8s.io/v1beta4`
/// from 1.31 (v1beta3 is deprecated there), v1beta3 before; the version
/// pinned so kubeadm uses the node's preloaded images instead of resolving
/// `stable-1` online; no `--cloud-provider` for kube-apiserver from 1.33,
/// which removed the flag.
pub fn kubeadm_config(c: &Config, version: KubeVersion) -> String {
    let api = c.ports.kube_apiserver;
    let etcd = c.ports.etcd;
    let node_ip = c.node_ip;
    let v1beta4 = version.at_least(1, 31);
    let kubeadm_api = if v1beta4 {
        "kubeadm.k8s.io/v1beta4"
    } else {
        "kubeadm.k8s.io/v1beta3"
    };
    let mut apiserver_args = vec![("advertise-address", c.host_ip.to_string())];
    if !version.at_least(1, 33) {
        apiserver_args.push(("cloud-provider", "external".to_owned()));
    }
    apiserver_args.push(("kubelet-preferred-address-types", "ExternalIP".to_owned()));
    let etcd_args = [
        (
            "listen-client-urls",
            format!("https://127.0.0.1:{etcd},https://{node_ip}:{etcd}"),
        ),
        ("advertise-client-urls", format!("https://{node_ip}:{etcd}")),
        ("listen-peer-urls", format!("https://{node_ip}:2380")),
        ("initial-advertise-peer-urls", format!("https://{node_ip}:2380")),
        (
            "initial-cluster",
            format!("{}=https://{node_ip}:2380", c.node_name),
        ),
    ];
    let docs = [
        json!({
            "apiVersion": kubeadm_api,
            "kind": "InitConfiguration",
            "localAPIEndpoint": {"bindPort": api},
        }),
        json!({
            "apiVersion": kubeadm_api,
            "kind": "ClusterConfiguration",
            "kubernetesVersion": version.to_string(),
            "controlPlaneEndpoint": format!("{}:{api}", c.node_name),
            "apiServer": {
                "certSANs": ["localhost", "127.0.0.1", c.node_name, c.host_ip.to_string()],
                "extraArgs": extra_args(v1beta4, &apiserver_args),
            },
            "controllerManager": {"extraArgs": extra_args(v1beta4, &[("cloud-provider", "external".to_owned())])},
            "etcd": {"local": {
                "extraArgs": extra_args(v1beta4, &etcd_args),
                "serverCertSANs": [c.node_name, node_ip.to_string()],
                "peerCertSANs": [c.node_name, node_ip.to_string()],
            }},
            "networking": {"serviceSubnet": SERVICE_CIDR, "podSubnet": POD_CIDR},
        }),
        json!({
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "port": c.ports.kubelet,
            "featureGates": {"KubeletInUserNamespace": true},
            "failSwapOn": false,
        }),
        json!({
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "mode": "iptables",
            // Zero leaves the conntrack sysctls alone: a user namespace cannot set them.
            "conntrack": {"maxPerCore": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        }),
    ];
    docs.iter()
        .map(|d| serde_yaml_ng::to_string(d).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("---\n")
}

/// Writes `content` to `path` in the node (as an argument, so no shell
/// quoting of the content is involved).
pub fn write_file_cmd(path: &str, content: &str) -> Vec<String> {
    argv(&[
        "sh",
        "-c",
        "mkdir -p \"$(dirname \"$1\")\" && printf '%s' \"$2\" > \"$1\"",
        "u7s-write",
        path,
        content,
    ])
}

/// The Kubernetes version the node's kubeadm reports, if it answers.
pub async fn node_version(shell: &impl NodeShell) -> Option<KubeVersion> {
    let out = shell
        .exec(&argv(&["kubeadm", "version", "-o", "short"]), false)
        .await
        .ok()?;
    (out.code == 0)
        .then(|| KubeVersion::parse(&out.stdout_text()))
        .flatten()
}

pub async fn kubeadm_init(shell: &impl NodeShell, c: &Config) -> Result<(), StepError> {
    // The config must name the node's own version (its preloaded images);
    // a node whose kubeadm does not answer gets the configured one and
    // fails at `kubeadm init` below with kubeadm's own words.
    let version = node_version(shell)
        .await
        .unwrap_or_else(|| KubeVersion::configured(c));
    check(
        shell,
        &write_file_cmd(KUBEADM_CONFIG_PATH, &kubeadm_config(c, version)),
        false,
    )
    .await?;
    check(
        shell,
        &argv(&[
            "kubeadm",
            "init",
            "--config",
            KUBEADM_CONFIG_PATH,
            "--skip-token-print",
        ]),
        true,
    )
    .await?;
    Ok(())
}

/// The commands of `install-cni`: Flannel from the shipped chart, VXLAN on
/// `PORT_FLANNEL`, in a namespace that allows its privileged pods.
pub fn install_cni_commands(c: &Config) -> Vec<Vec<String>> {
    vec![
        argv(&[
            "sh",
            "-c",
            "kubectl create namespace \"$1\" --dry-run=client -o yaml | kubectl apply -f -",
            "u7s-ns",
            FLANNEL_NAMESPACE,
        ]),
        argv(&[
            "kubectl",
            "label",
            "--overwrite",
            "namespace",
            FLANNEL_NAMESPACE,
            "pod-security.kubernetes.io/enforce=privileged",
        ]),
        vec![
            "helm".into(),
            "upgrade".into(),
            "--install".into(),
            "flannel".into(),
            FLANNEL_CHART.into(),
            "--namespace".into(),
            FLANNEL_NAMESPACE.into(),
            "--set".into(),
            format!("podCidr={POD_CIDR}"),
            "--set".into(),
            "flannel.backend=vxlan".into(),
            "--set".into(),
            format!("flannel.backendPort={}", c.ports.flannel),
        ],
    ]
}

pub async fn install_cni(shell: &impl NodeShell, c: &Config) -> Result<(), StepError> {
    for cmd in install_cni_commands(c) {
        check(shell, &cmd, true).await?;
    }
    Ok(())
}

/// admin.conf with every cluster's server pointed at the host's published
/// API server port on 127.0.0.1.
pub fn rewrite_kubeconfig(admin_conf: &str, api_port: u16) -> Result<String, StepError> {
    let unexpected = |detail: String| StepError::Unexpected {
        what: "/etc/kubernetes/admin.conf".into(),
        detail,
    };
    let mut doc: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(admin_conf).map_err(|e| unexpected(e.to_string()))?;
    let clusters = doc
        .get_mut("clusters")
        .and_then(serde_yaml_ng::Value::as_sequence_mut)
        .ok_or_else(|| unexpected("no clusters list".into()))?;
    for cluster in clusters.iter_mut() {
        let inner = cluster
            .get_mut("cluster")
            .and_then(serde_yaml_ng::Value::as_mapping_mut)
            .ok_or_else(|| unexpected("a cluster entry without `cluster`".into()))?;
        inner.insert("server".into(), format!("https://127.0.0.1:{api_port}").into());
    }
    serde_yaml_ng::to_string(&doc).map_err(|e| unexpected(e.to_string()))
}

pub async fn kubeconfig(shell: &impl NodeShell, c: &Config) -> Result<String, StepError> {
    let out = check(shell, &argv(&["cat", "/etc/kubernetes/admin.conf"]), false).await?;
    rewrite_kubeconfig(&out.stdout_text(), c.ports.kube_apiserver)
}

/// The join file: the token join command plus what the joining host needs
/// to know about the control plane (its /etc/hosts line and node subnet)
/// and the cluster-wide ports (the kubelet's and Flannel's VXLAN port,
/// which every node publishes alike).
pub fn join_file(c: &Config, join_command: &str) -> Result<String, StepError> {
    let line = join_command.trim();
    join_argv(line)?;
    Ok(format!(
        "{JOIN_HEADER} (contains a bootstrap token: keep it private). Run `u7s kubeadm-join` on the joining host.\n\
         # control-plane-host: {} {}\n\
         # control-plane-node-subnet: {}\n\
         # cluster-ports: kubelet={} flannel={}\n\
         {line}\n",
        c.host_ip, c.node_name, c.node_subnet, c.ports.kubelet, c.ports.flannel
    ))
}

/// A checked `kubeadm join …` line split into arguments (no shell runs it).
fn join_argv(line: &str) -> Result<Vec<String>, StepError> {
    let args: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
    if args.len() < 3 || args[0] != "kubeadm" || args[1] != "join" {
        return Err(StepError::BadJoinFile {
            detail: format!("has no `kubeadm join` command (found {line:?})"),
        });
    }
    let safe = |a: &String| {
        a.chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "-_.:/=".contains(ch))
    };
    if let Some(bad) = args.iter().find(|a| !safe(a)) {
        return Err(StepError::BadJoinFile {
            detail: format!("has an unexpected argument {bad:?} in its kubeadm join command"),
        });
    }
    Ok(args)
}

/// A parsed join file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinFile {
    pub hosts_line: String,
    pub control_plane_name: String,
    pub node_subnet: Ipv4Net,
    /// The cluster's kubelet and Flannel VXLAN ports.
    pub kubelet_port: u16,
    pub flannel_port: u16,
    pub join: Vec<String>,
}

pub fn parse_join_file(text: &str) -> Result<JoinFile, StepError> {
    if !text.starts_with(JOIN_HEADER) {
        return Err(StepError::BadJoinFile {
            detail: "was not written by `u7s join-command`".into(),
        });
    }
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("# {name}: ")))
            .map(str::trim)
            .ok_or_else(|| StepError::BadJoinFile {
                detail: format!("lacks its `{name}` line"),
            })
    };
    let hosts_line = field("control-plane-host")?.to_owned();
    let mut parts = hosts_line.split_whitespace();
    let ip_ok = parts
        .next()
        .is_some_and(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok());
    let name = parts.next().unwrap_or_default().to_owned();
    if !ip_ok || name.is_empty() || parts.next().is_some() {
        return Err(StepError::BadJoinFile {
            detail: format!("has a bad control-plane-host line {hosts_line:?}"),
        });
    }
    let subnet_text = field("control-plane-node-subnet")?;
    let node_subnet = subnet_text.parse().map_err(|_| StepError::BadJoinFile {
        detail: format!("has a bad node subnet {subnet_text:?}"),
    })?;
    let ports_text = field("cluster-ports").map_err(|_| StepError::BadJoinFile {
        detail: "lacks its `cluster-ports` line (an older u7s wrote it: run `u7s join-command` again on the control plane's host)".into(),
    })?;
    let port = |name: &str| {
        ports_text
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse::<u16>().ok())
            .filter(|p| *p != 0)
            .ok_or_else(|| StepError::BadJoinFile {
                detail: format!("has no valid {name} port in its cluster-ports line {ports_text:?}"),
            })
    };
    let (kubelet_port, flannel_port) = (port("kubelet")?, port("flannel")?);
    let line = text
        .lines()
        .find(|l| l.starts_with("kubeadm join"))
        .ok_or_else(|| StepError::BadJoinFile {
            detail: "has no `kubeadm join` line".into(),
        })?;
    Ok(JoinFile {
        hosts_line,
        control_plane_name: name,
        node_subnet,
        kubelet_port,
        flannel_port,
        join: join_argv(line)?,
    })
}

/// A subnet to suggest when ours collides: the next 10.100.x.0/24.
fn next_subnet(n: Ipv4Net) -> Ipv4Net {
    let o = n.network().octets();
    Ipv4Net::new(std::net::Ipv4Addr::new(10, 100, o[2].wrapping_add(1), 0), 24).unwrap_or(n)
}

/// Refuses to join when the two nodes would clash.
pub fn check_join(c: &Config, join: &JoinFile) -> Result<(), StepError> {
    if join.control_plane_name == c.node_name {
        return Err(StepError::NameCollision {
            name: c.node_name.clone(),
        });
    }
    if crate::hostnet::overlaps(join.node_subnet, c.node_subnet) {
        return Err(StepError::SubnetCollision {
            ours: c.node_subnet,
            theirs: join.node_subnet,
            suggestion: next_subnet(join.node_subnet.max(c.node_subnet)),
        });
    }
    for (var, ours, theirs) in [
        ("PORT_KUBELET", c.ports.kubelet, join.kubelet_port),
        ("PORT_FLANNEL", c.ports.flannel, join.flannel_port),
    ] {
        if ours != theirs {
            return Err(StepError::PortMismatch { var, ours, theirs });
        }
    }
    Ok(())
}

pub fn kubeadm_join_commands(join: &JoinFile) -> Vec<Vec<String>> {
    vec![
        argv(&[
            "sh",
            "-c",
            // /etc/u7s/hosts survives container re-creation (the entrypoint
            // restores it); /etc/hosts takes effect now.
            "mkdir -p /etc/u7s && for f in /etc/u7s/hosts /etc/hosts; do grep -qxF \"$1\" \"$f\" 2>/dev/null || echo \"$1\" >> \"$f\"; done",
            "u7s-hosts",
            &join.hosts_line,
        ]),
        join.join.clone(),
    ]
}

pub async fn kubeadm_join(shell: &impl NodeShell, c: &Config, join_text: &str) -> Result<(), StepError> {
    let join = parse_join_file(join_text)?;
    check_join(c, &join)?;
    for cmd in kubeadm_join_commands(&join) {
        check(shell, &cmd, true).await?;
    }
    Ok(())
}

/// For each node with a host-IP label: Flannel's public-ip-overwrite
/// annotation, the ExternalIP address, and the `uninitialized` taint
/// removed (no cloud controller does it for us). flanneld reads the
/// overwrite only when it takes its lease, and the chart tolerates every
/// taint, so on a new node it may have started before this sync and
/// published the node container's address: cross-host VXLAN would then
/// aim at an address other hosts cannot reach. Its pod on such a node is
/// deleted, so the DaemonSet starts it again with the overwrite in place.
pub fn sync_external_ip_commands(nodes_json: &str) -> Result<Vec<Vec<String>>, StepError> {
    let unexpected = |detail: String| StepError::Unexpected {
        what: "`kubectl get nodes -o json`".into(),
        detail,
    };
    let v: Value = serde_json::from_str(nodes_json).map_err(|e| unexpected(e.to_string()))?;
    let items = v["items"]
        .as_array()
        .ok_or_else(|| unexpected("no items".into()))?;
    let mut cmds = Vec::new();
    for node in items {
        let Some(name) = node["metadata"]["name"].as_str() else {
            continue;
        };
        let Some(ip) = node["metadata"]["labels"][NODE_HOST_IP_LABEL].as_str() else {
            continue;
        };
        if ip.parse::<std::net::Ipv4Addr>().is_err() {
            return Err(unexpected(format!(
                "node {name} has a bad {NODE_HOST_IP_LABEL} label {ip:?}"
            )));
        }
        if node["metadata"]["annotations"][PUBLIC_IP_ANNOTATION].as_str() != Some(ip) {
            cmds.push(vec![
                "kubectl".into(),
                "annotate".into(),
                "--overwrite".into(),
                "node".into(),
                name.into(),
                format!("{PUBLIC_IP_ANNOTATION}={ip}"),
            ]);
        }
        let has_external = node["status"]["addresses"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["type"] == "ExternalIP" && x["address"] == ip));
        if !has_external {
            let patch = json!({"status": {"addresses": [{"type": "ExternalIP", "address": ip}]}});
            cmds.push(vec![
                "kubectl".into(),
                "patch".into(),
                "node".into(),
                name.into(),
                "--subresource=status".into(),
                "--type=strategic".into(),
                "-p".into(),
                patch.to_string(),
            ]);
        }
        let published = node["metadata"]["annotations"][PUBLISHED_IP_ANNOTATION].as_str();
        if published.is_some_and(|p| p != ip) {
            cmds.push(vec![
                "kubectl".into(),
                "delete".into(),
                "pod".into(),
                format!("--namespace={FLANNEL_NAMESPACE}"),
                format!("--selector={FLANNEL_POD_SELECTOR}"),
                format!("--field-selector=spec.nodeName={name}"),
                "--wait=false".into(),
            ]);
        }
        let tainted = node["spec"]["taints"]
            .as_array()
            .is_some_and(|t| t.iter().any(|x| x["key"] == UNINITIALIZED_TAINT));
        if tainted {
            cmds.push(vec![
                "kubectl".into(),
                "taint".into(),
                "node".into(),
                name.into(),
                format!("{UNINITIALIZED_TAINT}-"),
            ]);
        }
    }
    Ok(cmds)
}

pub async fn sync_external_ip(shell: &impl NodeShell) -> Result<usize, StepError> {
    let nodes = check(shell, &argv(&["kubectl", "get", "nodes", "-o", "json"]), false).await?;
    let cmds = sync_external_ip_commands(&nodes.stdout_text())?;
    for cmd in &cmds {
        check(shell, cmd, true).await?;
    }
    Ok(cmds.len())
}

pub fn kubeadm_reset_command() -> Vec<String> {
    argv(&["kubeadm", "reset", "--force"])
}

pub fn join_token_command() -> Vec<String> {
    argv(&["kubeadm", "token", "create", "--print-join-command"])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{resolve, HostDefaults, Vars};
    use std::cell::RefCell;

    fn config(pairs: &[(&'static str, &str)]) -> Config {
        let flags: Vec<(&'static str, String)> = pairs.iter().map(|(k, v)| (*k, v.to_string())).collect();
        resolve(
            &Vars::layered(&[], |_| None, &flags),
            &HostDefaults {
                hostname: "alpha".into(),
                default_route_ip: Some("192.168.1.10".parse().expect("ip")),
                current_dir: "/c".into(),
            },
        )
        .expect("config")
    }

    /// Records commands and answers from a script of outputs.
    struct Recorder {
        seen: RefCell<Vec<Vec<String>>>,
        answers: RefCell<Vec<ExecOutput>>,
    }

    impl Recorder {
        fn new(answers: Vec<ExecOutput>) -> Self {
            Recorder {
                seen: RefCell::new(Vec::new()),
                answers: RefCell::new(answers),
            }
        }
    }

    impl NodeShell for Recorder {
        async fn exec(&self, argv: &[String], _live: bool) -> Result<ExecOutput, StepError> {
            self.seen.borrow_mut().push(argv.to_vec());
            let mut a = self.answers.borrow_mut();
            Ok(if a.is_empty() {
                ExecOutput::default()
            } else {
                a.remove(0)
            })
        }
    }

    fn docs(yaml: &str) -> Vec<serde_yaml_ng::Value> {
        yaml.split("---\n")
            .map(|d| serde_yaml_ng::from_str(d).expect("yaml document"))
            .collect()
    }

    /// `extraArgs` as name → value, from either API shape.
    fn args_of(v: &serde_yaml_ng::Value) -> std::collections::BTreeMap<String, String> {
        match v {
            serde_yaml_ng::Value::Sequence(list) => list
                .iter()
                .map(|a| {
                    (
                        a["name"].as_str().expect("name").to_owned(),
                        a["value"].as_str().expect("value").to_owned(),
                    )
                })
                .collect(),
            serde_yaml_ng::Value::Mapping(m) => m
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().expect("key").to_owned(),
                        v.as_str().expect("value").to_owned(),
                    )
                })
                .collect(),
            other => panic!("extraArgs is neither a list nor a map: {other:?}"),
        }
    }

    #[test]
    fn kubernetes_1_35_gets_v1beta4_a_pinned_version_and_no_removed_flag() {
        let c = config(&[]);
        let v = KubeVersion::configured(&c);
        assert_eq!(v.to_string(), "v1.35.0", "the default node image");
        let d = docs(&kubeadm_config(&c, v));
        for doc in &d[..2] {
            assert_eq!(doc["apiVersion"].as_str(), Some("kubeadm.k8s.io/v1beta4"));
        }
        let cc = &d[1];
        assert_eq!(cc["kubernetesVersion"].as_str(), Some("v1.35.0"));
        // v1beta4: extraArgs are lists of name/value pairs.
        let api = &cc["apiServer"]["extraArgs"];
        assert!(api.is_sequence(), "{api:?}");
        let api = args_of(api);
        assert_eq!(
            api.keys().map(String::as_str).collect::<Vec<_>>(),
            ["advertise-address", "kubelet-preferred-address-types"],
            "kube-apiserver has no --cloud-provider since 1.33"
        );
        assert!(cc["etcd"]["local"]["extraArgs"].is_sequence());
        assert_eq!(
            args_of(&cc["controllerManager"]["extraArgs"])["cloud-provider"],
            "external"
        );
    }

    #[test]
    fn older_kubernetes_keeps_its_own_config_api() {
        let c = config(&[("U7S_BASE_IMAGE", "docker.io/kindest/node:v1.30.0")]);
        let v = KubeVersion::configured(&c);
        assert_eq!(v.to_string(), "v1.30.0");
        let d = docs(&kubeadm_config(&c, v));
        assert_eq!(d[1]["apiVersion"].as_str(), Some("kubeadm.k8s.io/v1beta3"));
        assert!(d[1]["apiServer"]["extraArgs"].is_mapping());
        assert_eq!(
            args_of(&d[1]["apiServer"]["extraArgs"])["cloud-provider"],
            "external"
        );
        assert_eq!(d[1]["kubernetesVersion"].as_str(), Some("v1.30.0"));
        // 1.31 and 1.32: v1beta4, kube-apiserver still takes the flag.
        let v132 = KubeVersion::parse("v1.32.4").expect("version");
        let d = docs(&kubeadm_config(&c, v132));
        assert_eq!(d[1]["apiVersion"].as_str(), Some("kubeadm.k8s.io/v1beta4"));
        assert!(args_of(&d[1]["apiServer"]["extraArgs"]).contains_key("cloud-provider"));
    }

    #[test]
    fn versions_are_read_from_tags_and_kubeadm() {
        let v = |s| KubeVersion::parse(s);
        assert_eq!(v("v1.35.0"), Some(KubeVersion::DEFAULT));
        assert_eq!(v("1.35.0\n"), Some(KubeVersion::DEFAULT));
        assert_eq!(v("v1.36.0-rc.1").map(|x| x.minor), Some(36));
        assert_eq!(v("latest"), None);
        let img = |s| KubeVersion::from_image(s).map(|x| x.to_string());
        assert_eq!(
            img("docker.io/kindest/node:v1.35.0@sha256:452d707d4862f52530247495d180205e029056831160e22870e37e3f6c1ac31f"),
            Some("v1.35.0".into())
        );
        assert_eq!(img("localhost:5000/kindest/node:v1.33.1"), Some("v1.33.1".into()));
        assert_eq!(img("localhost:5000/u7s-node"), None, "a registry port is no tag");
        assert_eq!(img(crate::image::DEFAULT_BASE_IMAGE), Some("v1.35.0".into()));
    }

    #[test]
    fn the_kubeadm_config_matches_the_design() {
        let c = config(&[("NODE_SUBNET", "10.100.7.0/24"), ("U7S_TENANT", "1")]);
        let d = docs(&kubeadm_config(&c, KubeVersion::DEFAULT));
        let kinds: Vec<&str> = d.iter().map(|x| x["kind"].as_str().expect("kind")).collect();
        assert_eq!(
            kinds,
            [
                "InitConfiguration",
                "ClusterConfiguration",
                "KubeletConfiguration",
                "KubeProxyConfiguration"
            ]
        );
        assert_eq!(d[0]["localAPIEndpoint"]["bindPort"].as_u64(), Some(16443));
        let cc = &d[1];
        assert_eq!(cc["controlPlaneEndpoint"].as_str(), Some("u7s-t1-alpha:16443"));
        let sans: Vec<&str> = cc["apiServer"]["certSANs"]
            .as_sequence()
            .expect("sans")
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert_eq!(sans, ["localhost", "127.0.0.1", "u7s-t1-alpha", "192.168.1.10"]);
        let args = args_of(&cc["apiServer"]["extraArgs"]);
        assert_eq!(args["advertise-address"], "192.168.1.10");
        assert_eq!(args["kubelet-preferred-address-types"], "ExternalIP");
        let etcd = args_of(&cc["etcd"]["local"]["extraArgs"]);
        assert_eq!(
            etcd["listen-client-urls"],
            "https://127.0.0.1:12379,https://10.100.7.100:12379"
        );
        assert_eq!(cc["networking"]["serviceSubnet"].as_str(), Some("10.96.0.0/16"));
        assert_eq!(cc["networking"]["podSubnet"].as_str(), Some("10.244.0.0/16"));
        let kubelet = &d[2];
        assert_eq!(kubelet["port"].as_u64(), Some(20250));
        assert_eq!(
            kubelet["featureGates"]["KubeletInUserNamespace"].as_bool(),
            Some(true)
        );
        assert_eq!(kubelet["failSwapOn"].as_bool(), Some(false));
        let proxy = &d[3];
        assert_eq!(proxy["conntrack"]["maxPerCore"].as_u64(), Some(0));
        assert_eq!(proxy["conntrack"]["tcpEstablishedTimeout"].as_str(), Some("0s"));
        assert_eq!(proxy["conntrack"]["tcpCloseWaitTimeout"].as_str(), Some("0s"));
    }

    #[tokio::test]
    async fn kubeadm_init_writes_the_config_for_the_node_version_then_runs_kubeadm() {
        let c = config(&[]);
        // The node's kubeadm says which version the config must name.
        let r = Recorder::new(vec![ExecOutput {
            code: 0,
            stdout: b"v1.34.2\n".to_vec(),
            stderr: Vec::new(),
        }]);
        kubeadm_init(&r, &c).await.expect("init");
        let seen = r.seen.borrow();
        assert_eq!(seen.len(), 3);
        assert_eq!(seen[0], ["kubeadm", "version", "-o", "short"]);
        assert_eq!(seen[1][..3], ["sh", "-c", write_file_cmd("x", "y")[2].as_str()]);
        assert_eq!(seen[1][4], KUBEADM_CONFIG_PATH);
        let v134 = KubeVersion::parse("v1.34.2").expect("version");
        assert_eq!(seen[1][5], kubeadm_config(&c, v134));
        assert_eq!(
            seen[2],
            [
                "kubeadm",
                "init",
                "--config",
                KUBEADM_CONFIG_PATH,
                "--skip-token-print"
            ]
        );
    }

    #[tokio::test]
    async fn a_node_without_a_working_kubeadm_gets_the_configured_version() {
        let c = config(&[]);
        let r = Recorder::new(vec![ExecOutput {
            code: 127,
            ..Default::default()
        }]);
        kubeadm_init(&r, &c).await.expect("init");
        assert_eq!(r.seen.borrow()[1][5], kubeadm_config(&c, KubeVersion::DEFAULT));
    }

    #[test]
    fn the_write_command_stores_content_verbatim() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("sub/f.yaml");
        let content = "a: 'quoted' \"x\" $HOME `id`\n%s\n";
        let cmd = write_file_cmd(path.to_str().expect("utf-8"), content);
        let st = std::process::Command::new(&cmd[0])
            .args(&cmd[1..])
            .status()
            .expect("sh");
        assert!(st.success());
        assert_eq!(std::fs::read_to_string(&path).expect("read"), content);
    }

    #[tokio::test]
    async fn a_failing_step_stops_and_shows_stderr() {
        let c = config(&[]);
        let r = Recorder::new(vec![ExecOutput {
            code: 1,
            stdout: vec![],
            stderr: b"namespaces is forbidden".to_vec(),
        }]);
        let err = install_cni(&r, &c).await.expect_err("fails");
        assert!(err.to_string().contains("forbidden"), "{err}");
        assert_eq!(r.seen.borrow().len(), 1, "later steps did not run");
    }

    #[test]
    fn flannel_uses_the_configured_port() {
        let c = config(&[("PORT_FLANNEL", "18472")]);
        let cmds = install_cni_commands(&c);
        let helm = cmds.last().expect("helm");
        assert_eq!(helm[0], "helm");
        assert!(helm.contains(&"flannel.backendPort=18472".to_owned()), "{helm:?}");
        assert!(helm.contains(&"podCidr=10.244.0.0/16".to_owned()));
    }

    #[test]
    fn the_kubeconfig_points_at_the_published_port() {
        let admin = "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: QUJD\n    server: https://u7s-alpha:6443\n  name: kubernetes\nkind: Config\nusers:\n- name: admin\n  user:\n    client-key-data: S0VZ\n";
        let out = rewrite_kubeconfig(admin, 16443).expect("rewrite");
        let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&out).expect("yaml");
        assert_eq!(
            v["clusters"][0]["cluster"]["server"].as_str(),
            Some("https://127.0.0.1:16443")
        );
        assert_eq!(
            v["clusters"][0]["cluster"]["certificate-authority-data"].as_str(),
            Some("QUJD")
        );
        assert_eq!(v["users"][0]["user"]["client-key-data"].as_str(), Some("S0VZ"));
        assert!(rewrite_kubeconfig("kind: Config\n", 1).is_err());
    }

    const JOIN: &str = "kubeadm join u7s-alpha:6443 --token abcdef.0123456789abcdef --discovery-token-ca-cert-hash sha256:0123abcd\n";

    #[test]
    fn join_files_round_trip_and_run_without_a_shell() {
        let cp = config(&[("NODE_SUBNET", "10.100.7.0/24")]);
        let text = join_file(&cp, JOIN).expect("file");
        let parsed = parse_join_file(&text).expect("parse");
        assert_eq!(parsed.hosts_line, "192.168.1.10 u7s-alpha");
        assert_eq!(parsed.node_subnet.to_string(), "10.100.7.0/24");
        assert_eq!(parsed.join[..3], ["kubeadm", "join", "u7s-alpha:6443"]);
        let joiner = config(&[("NODE_SUBNET", "10.100.8.0/24"), ("NODE_NAME", "u7s-beta")]);
        check_join(&joiner, &parsed).expect("distinct nodes join");
        let cmds = kubeadm_join_commands(&parsed);
        assert_eq!(cmds[0].last().map(String::as_str), Some("192.168.1.10 u7s-alpha"));
        assert_eq!(cmds[1], parsed.join);
    }

    #[test]
    fn colliding_or_forged_joins_are_refused_with_the_fix() {
        let cp = config(&[("NODE_SUBNET", "10.100.7.0/24")]);
        let parsed = parse_join_file(&join_file(&cp, JOIN).expect("file")).expect("parse");
        let same_subnet = config(&[("NODE_SUBNET", "10.100.7.0/24"), ("NODE_NAME", "u7s-beta")]);
        let err = check_join(&same_subnet, &parsed).expect_err("collision");
        assert!(err.to_string().contains("NODE_SUBNET=10.100.8.0/24"), "{err}");
        let same_name = config(&[("NODE_SUBNET", "10.100.9.0/24")]);
        assert!(matches!(
            check_join(&same_name, &parsed),
            Err(StepError::NameCollision { .. })
        ));

        assert!(parse_join_file("kubeadm join x y\n").is_err(), "no header");
        let forged = join_file(&cp, JOIN)
            .expect("file")
            .replace("--token", "--token $(reboot)");
        let err = parse_join_file(&forged).expect_err("shell syntax");
        assert!(err.to_string().contains("$(reboot)"), "{err}");
        assert!(join_file(&cp, "rm -rf /").is_err());
    }

    #[test]
    fn a_joining_host_must_publish_the_clusters_ports() {
        let cp = config(&[("NODE_SUBNET", "10.100.7.0/24")]);
        let text = join_file(&cp, JOIN).expect("file");
        assert!(
            text.contains("# cluster-ports: kubelet=10250 flannel=8472\n"),
            "{text}"
        );
        let parsed = parse_join_file(&text).expect("parse");
        assert_eq!((parsed.kubelet_port, parsed.flannel_port), (10250, 8472));
        let other_flannel = config(&[
            ("NODE_SUBNET", "10.100.8.0/24"),
            ("NODE_NAME", "u7s-beta"),
            ("PORT_FLANNEL", "8473"),
        ]);
        let err = check_join(&other_flannel, &parsed).expect_err("mismatch");
        assert!(
            err.to_string().contains("PORT_FLANNEL=8473")
                && err.to_string().contains("set PORT_FLANNEL=8472"),
            "{err}"
        );
        let other_tenant = config(&[
            ("NODE_SUBNET", "10.100.8.0/24"),
            ("NODE_NAME", "u7s-beta"),
            ("U7S_TENANT", "1"),
        ]);
        let err = check_join(&other_tenant, &parsed).expect_err("another tenant's ports");
        assert!(err.to_string().contains("PORT_KUBELET"), "{err}");
        let old = text.replace("# cluster-ports: kubelet=10250 flannel=8472\n", "");
        let err = parse_join_file(&old).expect_err("no ports line");
        assert!(err.to_string().contains("u7s join-command"), "{err}");
        let bad = text.replace("flannel=8472", "flannel=0");
        assert!(parse_join_file(&bad).is_err(), "port 0");
    }

    #[test]
    fn sync_external_ip_does_only_what_is_missing() {
        let nodes = json!({"items": [
            {"metadata": {"name": "u7s-alpha", "labels": {NODE_HOST_IP_LABEL: "192.168.1.10"}, "annotations": {}},
             "spec": {"taints": [{"key": UNINITIALIZED_TAINT, "effect": "NoSchedule"}]},
             "status": {"addresses": [{"type": "InternalIP", "address": "10.100.7.100"}]}},
            {"metadata": {"name": "u7s-beta", "labels": {NODE_HOST_IP_LABEL: "192.168.1.11"},
                          "annotations": {PUBLIC_IP_ANNOTATION: "192.168.1.11"}},
             "spec": {},
             "status": {"addresses": [{"type": "ExternalIP", "address": "192.168.1.11"}]}},
            {"metadata": {"name": "foreign"}, "spec": {}, "status": {}}
        ]});
        let cmds = sync_external_ip_commands(&nodes.to_string()).expect("plan");
        assert_eq!(cmds.len(), 3, "{cmds:?}");
        assert!(
            cmds.iter().all(|c| c[3] == "u7s-alpha" || c[4] == "u7s-alpha"),
            "{cmds:?}"
        );
        assert_eq!(
            cmds[0].last().map(String::as_str),
            Some("flannel.alpha.coreos.com/public-ip-overwrite=192.168.1.10")
        );
        let patch: Value = serde_json::from_str(cmds[1].last().expect("patch")).expect("json");
        assert_eq!(patch["status"]["addresses"][0]["type"], "ExternalIP");
        assert_eq!(
            cmds[2].last().map(String::as_str),
            Some("node.cloudprovider.kubernetes.io/uninitialized-")
        );
        let bad = json!({"items": [{"metadata": {"name": "n", "labels": {NODE_HOST_IP_LABEL: "x; rm"}}}]});
        assert!(sync_external_ip_commands(&bad.to_string()).is_err());
    }

    #[test]
    fn a_flannel_that_published_another_address_is_restarted_after_the_overwrite() {
        let node = |published: Option<&str>| {
            let mut annotations = json!({PUBLIC_IP_ANNOTATION: "192.168.1.11"});
            if let Some(p) = published {
                annotations[PUBLISHED_IP_ANNOTATION] = p.into();
            }
            json!({"items": [{"metadata": {"name": "u7s-beta", "labels": {NODE_HOST_IP_LABEL: "192.168.1.11"},
                                           "annotations": annotations},
                              "spec": {},
                              "status": {"addresses": [{"type": "ExternalIP", "address": "192.168.1.11"}]}}]})
            .to_string()
        };
        // flanneld started before the sync and took the node container's address.
        let cmds = sync_external_ip_commands(&node(Some("10.100.8.100"))).expect("plan");
        assert_eq!(
            cmds,
            [[
                "kubectl",
                "delete",
                "pod",
                "--namespace=kube-flannel",
                "--selector=app=flannel",
                "--field-selector=spec.nodeName=u7s-beta",
                "--wait=false"
            ]]
        );
        assert!(sync_external_ip_commands(&node(Some("192.168.1.11")))
            .expect("plan")
            .is_empty());
        assert!(
            sync_external_ip_commands(&node(None)).expect("plan").is_empty(),
            "no flanneld on the node yet"
        );
        // A node whose overwrite is missing too gets it first, then the restart.
        let fresh = json!({"items": [{"metadata": {"name": "u7s-gamma", "labels": {NODE_HOST_IP_LABEL: "192.168.1.12"},
                                                   "annotations": {PUBLISHED_IP_ANNOTATION: "10.100.9.100"}},
                                      "spec": {}, "status": {}}]});
        let cmds = sync_external_ip_commands(&fresh.to_string()).expect("plan");
        let annotate = cmds.iter().position(|c| c[1] == "annotate").expect("annotate");
        let restart = cmds.iter().position(|c| c[1] == "delete").expect("restart");
        assert!(annotate < restart, "{cmds:?}");
    }
}
