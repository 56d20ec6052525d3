//! `NodeSpec`: the node container, engine-neutral. Every engine driver
//! renders the same spec (Docker API body, Podman's compatible API, nerdctl
//! arguments), so what the node looks like is decided here, once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::Serialize;

use crate::config::{Config, Protocol, POD_CIDR, SERVICE_CIDR};

/// Where the project directory appears inside the node.
pub const PROJECT_MOUNT: &str = "/u7s";
/// Label on every object u7s creates, with the project as value.
pub const PROJECT_LABEL: &str = "io.u7s.project";
/// Label carrying the host IP (read by `status`; the entrypoint reads the env).
pub const HOST_IP_LABEL: &str = "io.u7s.host-ip";
/// Label on a node created with `--accel` (every engine shows labels back).
pub const ACCEL_LABEL: &str = "io.u7s.accel";
/// Label with the node's extra ports and mounts ([`extras`]), which `up`
/// compares: changing them needs a new container.
pub const EXTRAS_LABEL: &str = "io.u7s.extras";

/// The extra ports and mounts of `config`, as [`EXTRAS_LABEL`] records them
/// (empty: none).
pub fn extras(config: &Config) -> String {
    let mut parts = Vec::new();
    if !config.publish.is_empty() {
        let v: Vec<String> = config.publish.iter().map(ToString::to_string).collect();
        parts.push(format!("publish={}", v.join(",")));
    }
    if !config.mounts.is_empty() {
        let v: Vec<String> = config.mounts.iter().map(ToString::to_string).collect();
        parts.push(format!("mounts={}", v.join(",")));
    }
    parts.join(" | ")
}
/// The node label kubelet registers, read by `sync-external-ip`.
pub const NODE_HOST_IP_LABEL: &str = "u7s.io/host-ip";

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PublishedPort {
    pub host_ip: Option<String>,
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VolumeMount {
    pub volume: String,
    pub target: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BindMount {
    pub source: PathBuf,
    pub target: String,
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkSpec {
    pub name: String,
    pub subnet: Ipv4Net,
}

/// The fast path's part of the spec, present with `--accel`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccelSpec {
    /// The engine's name for the netaccel runtime wrapper (Docker/Podman).
    pub runtime: String,
    /// Destinations that keep the standard path.
    pub ignore: Vec<Ipv4Net>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeSpec {
    pub container: String,
    pub hostname: String,
    pub image: String,
    pub network: NetworkSpec,
    pub ip: std::net::Ipv4Addr,
    pub ports: Vec<PublishedPort>,
    pub volumes: Vec<VolumeMount>,
    pub binds: Vec<BindMount>,
    pub tmpfs: Vec<String>,
    pub sysctls: BTreeMap<String, String>,
    pub env: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    /// OCI annotations (the engine drivers add their fast-path switches).
    pub annotations: BTreeMap<String, String>,
    pub privileged: bool,
    pub restart: String,
    pub working_dir: String,
    pub accel: Option<AccelSpec>,
}

/// Names of the engine objects of one project.
pub struct Names;

impl Names {
    pub fn container(project: &str) -> String {
        format!("{project}-node")
    }
    pub fn network(project: &str) -> String {
        format!("{project}-net")
    }
    /// (volume, mount point) of the state volumes.
    pub fn volumes(project: &str) -> Vec<(String, &'static str)> {
        ["var", "opt", "etc"]
            .iter()
            .map(|d| {
                (
                    format!("{project}-node-{d}"),
                    match *d {
                        "var" => "/var",
                        "opt" => "/opt",
                        _ => "/etc",
                    },
                )
            })
            .collect()
    }
}

/// The ranges the fast path leaves alone for a node: in-cluster traffic
/// (pods, services) and the node network itself.
pub fn accel_ignore(config: &Config) -> Vec<Ipv4Net> {
    [POD_CIDR, SERVICE_CIDR]
        .iter()
        .filter_map(|c| c.parse().ok())
        .chain([config.node_subnet])
        .collect()
}

impl NodeSpec {
    /// `existing` tells which optional host paths exist (`/boot` is absent
    /// on some hosts; engines refuse a bind of a missing path).
    pub fn new(config: &Config, image: &str, accel: Option<&str>, existing: impl Fn(&Path) -> bool) -> Self {
        let p = &config.project;
        let mut ports: Vec<PublishedPort> = config
            .ports
            .published()
            .iter()
            .map(|&(_, port, protocol)| PublishedPort {
                host_ip: None,
                host_port: port,
                container_port: port,
                protocol,
            })
            .collect();
        ports.extend(config.publish.iter().map(|p| PublishedPort {
            host_ip: p.host_ip.map(|ip| ip.to_string()),
            host_port: p.host_port,
            container_port: p.node_port,
            protocol: p.protocol,
        }));
        let volumes = Names::volumes(p)
            .into_iter()
            .map(|(volume, target)| VolumeMount {
                volume,
                target: target.into(),
            })
            .collect();
        let mut binds = vec![BindMount {
            source: config.project_dir.clone(),
            target: PROJECT_MOUNT.into(),
            read_only: true,
        }];
        for host_path in ["/lib/modules", "/boot"] {
            if existing(Path::new(host_path)) {
                binds.push(BindMount {
                    source: host_path.into(),
                    target: host_path.into(),
                    read_only: true,
                });
            }
        }
        binds.extend(config.mounts.iter().map(|m| BindMount {
            source: m.source.clone(),
            target: m.target.clone(),
            read_only: m.read_only,
        }));
        let mut env = BTreeMap::from([
            ("KUBECONFIG".to_owned(), "/etc/kubernetes/admin.conf".to_owned()),
            ("U7S_HOST_IP".to_owned(), config.host_ip.to_string()),
            ("U7S_NODE_NAME".to_owned(), config.node_name.clone()),
            ("U7S_NODE_SUBNET".to_owned(), config.node_subnet.to_string()),
            ("U7S_PORT_KUBELET".to_owned(), config.ports.kubelet.to_string()),
        ]);
        let mut annotations = BTreeMap::new();
        let accel = accel.map(|runtime| {
            let ignore = accel_ignore(config);
            let list: Vec<String> = ignore.iter().map(ToString::to_string).collect();
            // Read by the runtime wrapper from the bundle (Docker 20.10
            // passes neither labels nor annotations to the runtime).
            env.insert(netaccel::oci::runtime::IGNORE_ENV.to_owned(), list.join(","));
            annotations.insert(
                netaccel::oci::runtime::IGNORE_ANNOTATION.to_owned(),
                list.join(","),
            );
            AccelSpec {
                runtime: runtime.to_owned(),
                ignore,
            }
        });
        NodeSpec {
            container: Names::container(p),
            hostname: config.node_name.clone(),
            image: image.to_owned(),
            network: NetworkSpec {
                name: Names::network(p),
                subnet: config.node_subnet,
            },
            ip: config.node_ip,
            ports,
            volumes,
            binds,
            tmpfs: vec!["/run".into(), "/tmp".into()],
            sysctls: BTreeMap::from([("net.ipv4.ip_forward".to_owned(), "1".to_owned())]),
            env,
            labels: [
                (PROJECT_LABEL.to_owned(), p.clone()),
                (HOST_IP_LABEL.to_owned(), config.host_ip.to_string()),
            ]
            .into_iter()
            .chain(
                accel
                    .is_some()
                    .then(|| (ACCEL_LABEL.to_owned(), "true".to_owned())),
            )
            .chain(
                Some(extras(config))
                    .filter(|e| !e.is_empty())
                    .map(|e| (EXTRAS_LABEL.to_owned(), e)),
            )
            .collect(),
            annotations,
            privileged: true,
            restart: "always".into(),
            working_dir: PROJECT_MOUNT.into(),
            accel,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{resolve, HostDefaults, Vars};

    fn config(tenant: &str) -> Config {
        let v = Vars::layered(&[], |_| None, &[("U7S_TENANT", tenant.into())]);
        resolve(
            &v,
            &HostDefaults {
                hostname: "alpha".into(),
                default_route_ip: Some("192.168.1.10".parse().expect("ip")),
                current_dir: "/home/alice/c".into(),
            },
        )
        .expect("config")
    }

    #[test]
    fn the_node_has_the_designed_shape() {
        let c = config("0");
        let s = NodeSpec::new(&c, "u7s-node:1", None, |p| p == Path::new("/lib/modules"));
        assert_eq!(s.container, "u7s-node");
        assert_eq!(s.hostname, "u7s-alpha");
        assert!(s.privileged);
        assert_eq!(s.ip, c.node_ip);
        let ports: Vec<(u16, u16, Protocol)> = s
            .ports
            .iter()
            .map(|p| (p.host_port, p.container_port, p.protocol))
            .collect();
        assert_eq!(
            ports,
            vec![
                (2379, 2379, Protocol::Tcp),
                (6443, 6443, Protocol::Tcp),
                (10250, 10250, Protocol::Tcp),
                (8472, 8472, Protocol::Udp)
            ]
        );
        let targets: Vec<&str> = s.volumes.iter().map(|v| v.target.as_str()).collect();
        assert_eq!(targets, ["/var", "/opt", "/etc"]);
        assert_eq!(s.tmpfs, ["/run", "/tmp"]);
        assert_eq!(s.sysctls["net.ipv4.ip_forward"], "1");
        let binds: Vec<(&str, bool)> = s.binds.iter().map(|b| (b.target.as_str(), b.read_only)).collect();
        assert_eq!(
            binds,
            [(PROJECT_MOUNT, true), ("/lib/modules", true)],
            "/boot is absent"
        );
        assert_eq!(s.env["U7S_HOST_IP"], "192.168.1.10");
        assert!(s.accel.is_none() && s.annotations.is_empty());
        assert!(!s.labels.contains_key(ACCEL_LABEL));
    }

    #[test]
    fn accel_ignores_pods_services_and_the_node_subnet() {
        let c = config("2");
        let s = NodeSpec::new(&c, "img", Some("netaccel"), |_| true);
        let a = s.accel.as_ref().expect("accel");
        assert_eq!(a.runtime, "netaccel");
        let want = format!("10.244.0.0/16,10.96.0.0/16,{}", c.node_subnet);
        assert_eq!(s.env[netaccel::oci::runtime::IGNORE_ENV], want);
        assert_eq!(s.annotations[netaccel::oci::runtime::IGNORE_ANNOTATION], want);
        assert_eq!(s.labels[ACCEL_LABEL], "true");
        assert!(
            !s.annotations.keys().any(|k| k.starts_with("nerdctl/")),
            "engine switches are the drivers' business"
        );
        assert_eq!(s.container, "u7s-t2-node");
        assert_eq!(s.volumes[0].volume, "u7s-t2-node-var");
    }
    #[test]
    fn extra_ports_and_mounts_join_the_node_and_its_label() {
        let v = Vars::layered(
            &[],
            |_| None,
            &[
                ("U7S_PUBLISH", "30080:30080,127.0.0.1:8053:30053/udp".into()),
                ("U7S_MOUNTS", "/srv/data:/mnt/data:ro".into()),
            ],
        );
        let c = resolve(
            &v,
            &HostDefaults {
                hostname: "alpha".into(),
                default_route_ip: Some("192.168.1.10".parse().expect("ip")),
                current_dir: "/home/alice/c".into(),
            },
        )
        .expect("config");
        let s = NodeSpec::new(&c, "u7s-node:1", None, |_| false);
        let extra: Vec<(Option<&str>, u16, u16, Protocol)> = s.ports[4..]
            .iter()
            .map(|p| (p.host_ip.as_deref(), p.host_port, p.container_port, p.protocol))
            .collect();
        assert_eq!(
            extra,
            [
                (None, 30080, 30080, Protocol::Tcp),
                (Some("127.0.0.1"), 8053, 30053, Protocol::Udp)
            ]
        );
        let data = s.binds.iter().find(|b| b.target == "/mnt/data").expect("bound");
        assert!(data.read_only && data.source == Path::new("/srv/data"));
        assert_eq!(
            s.labels[EXTRAS_LABEL],
            "publish=30080:30080/tcp,127.0.0.1:8053:30053/udp | mounts=/srv/data:/mnt/data:ro"
        );
        assert!(
            !NodeSpec::new(&config("0"), "i", None, |_| false)
                .labels
                .contains_key(EXTRAS_LABEL),
            "no label without extras (nodes made before it compare equal)"
        );
    }
}
