//! The cluster's settings: the original's environment variables
//! (`CONTAINER_ENGINE`, `HOST_IP`, `NODE_NAME`, `NODE_SUBNET`, `PORT_*`), read
//! from flags, then the environment, then an optional `KEY=VALUE` file, then
//! computed defaults — in that order of precedence.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use sha2::{Digest, Sha256};

use crate::engine::EngineKind;

/// Every key the config file and the environment may set.
pub const KEYS: &[&str] = &[
    "CONTAINER_ENGINE",
    "HOST_IP",
    "NODE_NAME",
    "NODE_SUBNET",
    "PORT_ETCD",
    "PORT_KUBELET",
    "PORT_FLANNEL",
    "PORT_KUBE_APISERVER",
    "U7S_TENANT",
    "U7S_NODE_IMAGE",
    "U7S_BASE_IMAGE",
    "U7S_NODE_IMAGE_DIR",
    "U7S_PUBLISH",
    "U7S_MOUNTS",
];

/// The config file read when `--config` is not given and it exists.
pub const DEFAULT_CONFIG_FILE: &str = "u7s.env";

/// Tenants shift every default port by this much (the original's
/// multi-tenancy example moves 2379 to 12379, 6443 to 16443, …).
pub const TENANT_PORT_STEP: u16 = 10_000;
/// The highest tenant whose shifted ports still fit (10250 + 5 × 10000).
pub const MAX_TENANT: u8 = 5;

pub const POD_CIDR: &str = "10.244.0.0/16";
pub const SERVICE_CIDR: &str = "10.96.0.0/16";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    ReadFile { path: String, source: std::io::Error },
    #[error("{path}:{line}: {problem}")]
    FileSyntax {
        path: String,
        line: usize,
        problem: String,
    },
    #[error("{key}={value:?}: {problem}")]
    Invalid {
        key: &'static str,
        value: String,
        problem: String,
    },
    #[error("the ports {first} ({a}) and {second} ({b}) are the same: give each its own PORT_* value")]
    SamePort {
        first: &'static str,
        second: &'static str,
        a: u16,
        b: u16,
    },
}

/// The node's published ports; each is the same number on the host and in
/// the node, as in the original (kubeadm and Flannel advertise them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Ports {
    pub etcd: u16,
    pub kubelet: u16,
    pub flannel: u16,
    pub kube_apiserver: u16,
}

impl Ports {
    pub const DEFAULT: Ports = Ports {
        etcd: 2379,
        kubelet: 10250,
        flannel: 8472,
        kube_apiserver: 6443,
    };

    /// (variable, port, protocol) for each published port.
    pub fn published(&self) -> [(&'static str, u16, Protocol); 4] {
        [
            ("PORT_ETCD", self.etcd, Protocol::Tcp),
            ("PORT_KUBE_APISERVER", self.kube_apiserver, Protocol::Tcp),
            ("PORT_KUBELET", self.kubelet, Protocol::Tcp),
            ("PORT_FLANNEL", self.flannel, Protocol::Udp),
        ]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

/// Where the node image comes from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageSource {
    /// Build the shipped Dockerfile (or one in `context_dir`) FROM `base`.
    Build {
        base: Option<String>,
        context_dir: Option<PathBuf>,
    },
    /// Use this image as it is.
    Prebuilt(String),
}

/// Fully resolved settings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Config {
    pub engine: Option<EngineKind>,
    pub host_ip: Ipv4Addr,
    pub node_name: String,
    pub node_subnet: Ipv4Net,
    pub node_ip: Ipv4Addr,
    pub ports: Ports,
    pub tenant: u8,
    /// Prefix of every engine object (container, network, volumes).
    pub project: String,
    pub image: ImageSource,
    /// Mounted read-only at [`crate::node::PROJECT_MOUNT`] in the node.
    pub project_dir: PathBuf,
    /// Extra ports published to the node (`--publish`, U7S_PUBLISH):
    /// NodePorts, hostPort pods.
    pub publish: Vec<ExtraPort>,
    /// Host paths bound into the node (`--mount`, U7S_MOUNTS), for hostPath
    /// volumes.
    pub mounts: Vec<ExtraMount>,
}

/// A port published beside the node's own: `[hostIP:]hostPort:nodePort[/proto]`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ExtraPort {
    pub host_ip: Option<std::net::IpAddr>,
    pub host_port: u16,
    pub node_port: u16,
    pub protocol: Protocol,
}

impl std::fmt::Display for ExtraPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.host_ip {
            Some(std::net::IpAddr::V6(ip)) => write!(f, "[{ip}]:")?,
            Some(ip) => write!(f, "{ip}:")?,
            None => {}
        }
        write!(
            f,
            "{}:{}/{}",
            self.host_port,
            self.node_port,
            self.protocol.name()
        )
    }
}

/// Kubernetes' default NodePort range (kube-apiserver --service-node-port-range).
pub const NODE_PORT_RANGE: std::ops::RangeInclusive<u16> = 30000..=32767;

/// A host path bound into the node: `SRC:DST[:ro|:rw]`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ExtraMount {
    pub source: PathBuf,
    pub target: String,
    pub read_only: bool,
}

impl std::fmt::Display for ExtraMount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.source.display(), self.target)?;
        if self.read_only {
            f.write_str(":ro")?;
        }
        Ok(())
    }
}

/// Paths of the node that u7s mounts itself, or that must stay the node's.
pub const RESERVED_NODE_PATHS: &[&str] = &[
    "/",
    "/var",
    "/opt",
    "/etc",
    "/u7s",
    "/run",
    "/tmp",
    "/lib/modules",
    "/boot",
    "/proc",
    "/sys",
    "/dev",
];

fn parse_publish(value: &str, ports: &Ports) -> Result<Vec<ExtraPort>, ConfigError> {
    let mut out: Vec<ExtraPort> = Vec::new();
    for spec in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let bad = |problem: String| invalid("U7S_PUBLISH", spec, problem);
        let m: netaccel::publish::PortMapping = spec.parse().map_err(|e| bad(format!("{e}")))?;
        if m.host_port == 0 || m.container_port == 0 {
            return Err(bad("ports are 1-65535".into()));
        }
        let protocol = match m.proto {
            netaccel::publish::Proto::Tcp => Protocol::Tcp,
            netaccel::publish::Proto::Udp => Protocol::Udp,
        };
        let p = ExtraPort {
            host_ip: m.host_ip,
            host_port: m.host_port,
            node_port: m.container_port,
            protocol,
        };
        for (var, own, proto) in ports.published() {
            if proto == protocol && (own == p.host_port || own == p.node_port) {
                return Err(bad(format!(
                    "{own}/{} is the node's own {var}: publish another port, or move {var}",
                    protocol.name()
                )));
            }
        }
        // Taken in the node by the control plane kubeadm starts.
        let inside = [
            (2380, "etcd's peer port"),
            (10248, "kubelet's healthz"),
            (10257, "kube-controller-manager"),
            (10259, "kube-scheduler"),
        ];
        if let Some((_, what)) = inside
            .iter()
            .find(|(port, _)| protocol == Protocol::Tcp && *port == p.node_port)
        {
            return Err(bad(format!("node port {} is {what} in the node", p.node_port)));
        }
        if let Some(first) = out
            .iter()
            .find(|o| o.protocol == protocol && (o.host_port == p.host_port || o.node_port == p.node_port))
        {
            return Err(bad(format!(
                "clashes with {first}: each host port and each node port once per protocol"
            )));
        }
        out.push(p);
    }
    Ok(out)
}

fn parse_mounts(value: &str, current_dir: &Path) -> Result<Vec<ExtraMount>, ConfigError> {
    let mut out: Vec<ExtraMount> = Vec::new();
    for spec in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let bad = |problem: &str| invalid("U7S_MOUNTS", spec, problem);
        let parts: Vec<&str> = spec.split(':').collect();
        let (src, dst, read_only) = match parts.as_slice() {
            [src, dst] => (*src, *dst, false),
            [src, dst, "ro"] => (*src, *dst, true),
            [src, dst, "rw"] => (*src, *dst, false),
            [_, _, _] => return Err(bad("the option after DST must be ro or rw")),
            _ => {
                return Err(bad(
                    "expected SRC:DST[:ro], e.g. /srv/data:/data:ro (paths without ':')",
                ))
            }
        };
        if src.is_empty() || dst.is_empty() {
            return Err(bad("SRC and DST must not be empty"));
        }
        let dst_path = Path::new(dst);
        if !dst_path.is_absolute()
            || dst_path
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir | std::path::Component::CurDir))
        {
            return Err(bad("DST must be an absolute path without . or .. in the node"));
        }
        let target = dst.trim_end_matches('/');
        let target = if target.is_empty() { "/" } else { target };
        if RESERVED_NODE_PATHS.contains(&target) {
            return Err(bad(
                "DST is a path the node needs for itself (/, /var, /opt, /etc, /u7s, /run, /tmp, /lib/modules, /boot, /proc, /sys, /dev): mount below or beside it, e.g. /mnt/data",
            ));
        }
        if let Some(first) = out.iter().find(|m| m.target == target) {
            return Err(bad(&format!("DST is already mounted by {first}")));
        }
        let source = current_dir.join(src);
        out.push(ExtraMount {
            source,
            target: target.to_owned(),
            read_only,
        });
    }
    Ok(out)
}

/// The raw values, by variable name, after precedence was applied.
#[derive(Debug, Clone, Default)]
pub struct Vars(BTreeMap<&'static str, String>);

impl Vars {
    /// Layers: `file` below `env` below `flags`.
    pub fn layered(
        file: &[(String, String)],
        env: impl Fn(&str) -> Option<String>,
        flags: &[(&'static str, String)],
    ) -> Self {
        let mut map = BTreeMap::new();
        for key in KEYS {
            if let Some((_, v)) = file.iter().rev().find(|(k, _)| k == key) {
                map.insert(*key, v.clone());
            }
            if let Some(v) = env(key).filter(|v| !v.is_empty()) {
                map.insert(*key, v);
            }
        }
        for (k, v) in flags {
            map.insert(*k, v.clone());
        }
        Vars(map)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
}

/// Parses a `KEY=VALUE` file (blank lines and `#` comments allowed, values
/// may be quoted). Unknown keys are errors, so a typo is never ignored.
pub fn parse_env_file(path: &Path, text: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |problem: String| ConfigError::FileSyntax {
            path: path.display().to_string(),
            line: i + 1,
            problem,
        };
        let line = line.strip_prefix("export ").unwrap_or(line);
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| err(format!("expected KEY=VALUE, found {line:?}")))?;
        let k = k.trim();
        if !KEYS.contains(&k) {
            return Err(err(format!("unknown key {k:?}; known keys: {}", KEYS.join(", "))));
        }
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|s| s.strip_suffix('"'))
            .or_else(|| v.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')))
            .unwrap_or(v);
        out.push((k.to_owned(), v.to_owned()));
    }
    Ok(out)
}

/// Reads `path` if given (it must exist), else [`DEFAULT_CONFIG_FILE`] in
/// the current directory if it exists.
pub fn read_config_file(path: Option<&Path>) -> Result<Vec<(String, String)>, ConfigError> {
    let (path, required) = match path {
        Some(p) => (p.to_path_buf(), true),
        None => (PathBuf::from(DEFAULT_CONFIG_FILE), false),
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => parse_env_file(&path, &text),
        Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(ConfigError::ReadFile {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// The node subnet the original derives from the host name:
/// `10.100.<hash>.0/24`. Tenants hash a different name, so two tenants of
/// one engine get different subnets.
pub fn default_node_subnet(hostname: &str, tenant: u8) -> Ipv4Net {
    let name = if tenant == 0 {
        hostname.to_owned()
    } else {
        format!("{hostname}#tenant{tenant}")
    };
    let third = Sha256::digest(name.as_bytes())[0];
    Ipv4Net::new(Ipv4Addr::new(10, 100, third, 0), 24).unwrap_or_default()
}

/// The node's address in its subnet: host number 100, as in the original.
pub fn node_ip(subnet: Ipv4Net) -> Option<Ipv4Addr> {
    let ip = Ipv4Addr::from(u32::from(subnet.network()).checked_add(100)?);
    (subnet.contains(&ip) && ip != subnet.broadcast()).then_some(ip)
}

fn invalid(key: &'static str, value: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        value: value.to_owned(),
        problem: problem.into(),
    }
}

fn port(vars: &Vars, key: &'static str, default: u16, tenant: u8) -> Result<u16, ConfigError> {
    match vars.get(key) {
        Some(v) => v
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| invalid(key, v, "a port number 1-65535 is needed")),
        None => Ok(default + TENANT_PORT_STEP * u16::from(tenant)),
    }
}

/// Facts of this host the defaults are computed from.
pub struct HostDefaults {
    pub hostname: String,
    /// The source address of the default route, when there is one.
    pub default_route_ip: Option<Ipv4Addr>,
    pub current_dir: PathBuf,
}

impl Config {
    /// Every port published on the host: the node's own, then `publish`.
    pub fn host_ports(&self) -> Vec<(&'static str, u16, Protocol)> {
        let mut v = self.ports.published().to_vec();
        v.extend(
            self.publish
                .iter()
                .map(|p| ("U7S_PUBLISH", p.host_port, p.protocol)),
        );
        v
    }
}

/// Applies validation and computed defaults.
pub fn resolve(vars: &Vars, host: &HostDefaults) -> Result<Config, ConfigError> {
    let engine = match vars.get("CONTAINER_ENGINE") {
        Some(v) => Some(
            EngineKind::parse(v)
                .ok_or_else(|| invalid("CONTAINER_ENGINE", v, "use docker, podman or nerdctl"))?,
        ),
        None => None,
    };
    let tenant = match vars.get("U7S_TENANT") {
        Some(v) => v
            .parse::<u8>()
            .ok()
            .filter(|t| *t <= MAX_TENANT)
            .ok_or_else(|| invalid("U7S_TENANT", v, format!("a number 0-{MAX_TENANT} is needed")))?,
        None => 0,
    };
    let host_ip = match vars.get("HOST_IP") {
        Some(v) => v
            .parse()
            .map_err(|_| invalid("HOST_IP", v, "an IPv4 address of this host is needed"))?,
        None => host.default_route_ip.ok_or_else(|| {
            invalid(
                "HOST_IP",
                "",
                "this host has no default route to take its address from: set HOST_IP to the address other hosts reach it on",
            )
        })?,
    };
    let node_name = match vars.get("NODE_NAME") {
        Some(v) => v.to_owned(),
        None if tenant == 0 => format!("u7s-{}", host.hostname),
        None => format!("u7s-t{tenant}-{}", host.hostname),
    };
    if !is_dns_label(&node_name) {
        return Err(invalid(
            "NODE_NAME",
            &node_name,
            "a lowercase DNS label (a-z, 0-9, '-', at most 63 characters) is needed: Kubernetes uses it as the node name",
        ));
    }
    let node_subnet = match vars.get("NODE_SUBNET") {
        Some(v) => v
            .parse::<Ipv4Net>()
            .map_err(|_| invalid("NODE_SUBNET", v, "an IPv4 CIDR such as 10.100.7.0/24 is needed"))?,
        None => default_node_subnet(&host.hostname, tenant),
    };
    if node_subnet.network() != node_subnet.addr() {
        return Err(invalid(
            "NODE_SUBNET",
            &node_subnet.to_string(),
            format!("has host bits set; did you mean {}?", node_subnet.trunc()),
        ));
    }
    let node_ip = node_ip(node_subnet).ok_or_else(|| {
        invalid(
            "NODE_SUBNET",
            &node_subnet.to_string(),
            "too small: the node takes host number 100 of it (use /24 or larger)",
        )
    })?;
    for reserved in [POD_CIDR, SERVICE_CIDR] {
        let reserved: Ipv4Net = reserved.parse().unwrap_or_default();
        if reserved.contains(&node_subnet.network()) || node_subnet.contains(&reserved.network()) {
            return Err(invalid(
                "NODE_SUBNET",
                &node_subnet.to_string(),
                format!("overlaps the cluster's range {reserved}"),
            ));
        }
    }
    let d = Ports::DEFAULT;
    let ports = Ports {
        etcd: port(vars, "PORT_ETCD", d.etcd, tenant)?,
        kubelet: port(vars, "PORT_KUBELET", d.kubelet, tenant)?,
        flannel: port(vars, "PORT_FLANNEL", d.flannel, tenant)?,
        kube_apiserver: port(vars, "PORT_KUBE_APISERVER", d.kube_apiserver, tenant)?,
    };
    let tcp: Vec<(&str, u16)> = ports
        .published()
        .iter()
        .filter(|p| p.2 == Protocol::Tcp)
        .map(|p| (p.0, p.1))
        .collect();
    for (i, a) in tcp.iter().enumerate() {
        for b in &tcp[i + 1..] {
            // etcd's peer port (2380) is not published but taken in the node.
            if a.1 == b.1 {
                return Err(ConfigError::SamePort {
                    first: a.0,
                    second: b.0,
                    a: a.1,
                    b: b.1,
                });
            }
        }
    }
    let image = match vars.get("U7S_NODE_IMAGE") {
        Some(v) => ImageSource::Prebuilt(v.to_owned()),
        None => ImageSource::Build {
            base: vars.get("U7S_BASE_IMAGE").map(str::to_owned),
            context_dir: vars.get("U7S_NODE_IMAGE_DIR").map(PathBuf::from),
        },
    };
    Ok(Config {
        engine,
        host_ip,
        node_name,
        node_subnet,
        node_ip,
        ports,
        tenant,
        project: if tenant == 0 {
            "u7s".into()
        } else {
            format!("u7s-t{tenant}")
        },
        image,
        project_dir: host.current_dir.clone(),
        publish: vars
            .get("U7S_PUBLISH")
            .map_or(Ok(Vec::new()), |v| parse_publish(v, &ports))?,
        mounts: vars
            .get("U7S_MOUNTS")
            .map_or(Ok(Vec::new()), |v| parse_mounts(v, &host.current_dir))?,
    })
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> HostDefaults {
        HostDefaults {
            hostname: "alpha".into(),
            default_route_ip: Some(Ipv4Addr::new(192, 168, 1, 10)),
            current_dir: PathBuf::from("/home/alice/cluster"),
        }
    }

    fn vars(pairs: &[(&'static str, &str)]) -> Vars {
        let flags: Vec<(&'static str, String)> = pairs.iter().map(|(k, v)| (*k, v.to_string())).collect();
        Vars::layered(&[], |_| None, &flags)
    }

    #[test]
    fn defaults_follow_the_original() {
        let c = resolve(&vars(&[]), &host()).expect("config");
        assert_eq!(c.node_name, "u7s-alpha");
        assert_eq!(c.host_ip, Ipv4Addr::new(192, 168, 1, 10));
        assert_eq!(c.ports, Ports::DEFAULT);
        assert_eq!(c.node_subnet, default_node_subnet("alpha", 0));
        assert_eq!(c.node_subnet.prefix_len(), 24);
        assert_eq!(c.node_ip.octets()[3], 100);
        assert_eq!(c.project, "u7s");
        assert_eq!(c.engine, None);
    }

    #[test]
    fn the_subnet_hash_is_stable_and_tenants_differ() {
        let a = default_node_subnet("alpha", 0);
        assert_eq!(a, default_node_subnet("alpha", 0));
        assert_ne!(a, default_node_subnet("alpha", 1));
        assert_eq!(a.network().octets()[..2], [10, 100]);
    }

    #[test]
    fn a_tenant_moves_ports_names_and_subnet() {
        let c = resolve(&vars(&[("U7S_TENANT", "1")]), &host()).expect("config");
        assert_eq!(
            c.ports,
            Ports {
                etcd: 12379,
                kubelet: 20250,
                flannel: 18472,
                kube_apiserver: 16443
            }
        );
        assert_eq!(c.project, "u7s-t1");
        assert_eq!(c.node_name, "u7s-t1-alpha");
        let c5 = resolve(&vars(&[("U7S_TENANT", "5")]), &host()).expect("config");
        assert_eq!(c5.ports.kubelet, 60250);
        let err = resolve(&vars(&[("U7S_TENANT", "6")]), &host()).expect_err("too high");
        assert!(err.to_string().contains("0-5"), "{err}");
    }

    #[test]
    fn flags_beat_env_beat_file() {
        let file = vec![
            ("PORT_ETCD".to_owned(), "1001".to_owned()),
            ("PORT_KUBELET".to_owned(), "1002".to_owned()),
            ("NODE_NAME".to_owned(), "from-file".to_owned()),
        ];
        let env = |k: &str| match k {
            "PORT_KUBELET" => Some("2002".to_owned()),
            "NODE_NAME" => Some("from-env".to_owned()),
            _ => None,
        };
        let v = Vars::layered(&file, env, &[("NODE_NAME", "from-flag".into())]);
        let c = resolve(&v, &host()).expect("config");
        assert_eq!(c.ports.etcd, 1001);
        assert_eq!(c.ports.kubelet, 2002);
        assert_eq!(c.node_name, "from-flag");
    }

    #[test]
    fn bad_values_say_which_variable_and_why() {
        let cases: &[(&[(&'static str, &str)], &str)] = &[
            (&[("PORT_ETCD", "0")], "PORT_ETCD"),
            (&[("PORT_ETCD", "70000")], "1-65535"),
            (&[("HOST_IP", "host.example")], "HOST_IP"),
            (&[("NODE_SUBNET", "10.100.7.5/24")], "10.100.7.0/24"),
            (&[("NODE_SUBNET", "10.100.7.0/28")], "too small"),
            (&[("NODE_SUBNET", "10.244.3.0/24")], "10.244.0.0/16"),
            (&[("NODE_NAME", "Bad_Name")], "DNS label"),
            (&[("CONTAINER_ENGINE", "lxc")], "docker, podman or nerdctl"),
            (&[("PORT_KUBELET", "6443")], "PORT_KUBE_APISERVER"),
        ];
        for (pairs, hint) in cases {
            let err = resolve(&vars(pairs), &host()).expect_err("must fail");
            assert!(err.to_string().contains(hint), "{pairs:?}: {err}");
        }
    }

    #[test]
    fn no_default_route_asks_for_host_ip() {
        let h = HostDefaults {
            default_route_ip: None,
            ..host()
        };
        let err = resolve(&vars(&[]), &h).expect_err("no route");
        assert!(err.to_string().contains("set HOST_IP"), "{err}");
        assert!(resolve(&vars(&[("HOST_IP", "10.0.0.5")]), &h).is_ok());
    }

    #[test]
    fn env_file_parses_and_rejects_unknown_keys() {
        let p = Path::new("u7s.env");
        let text = "# cluster\nexport PORT_ETCD=12379\nNODE_NAME=\"n1\"\n\nHOST_IP='10.1.2.3'\n";
        let v = parse_env_file(p, text).expect("parse");
        assert_eq!(
            v,
            vec![
                ("PORT_ETCD".into(), "12379".into()),
                ("NODE_NAME".into(), "n1".into()),
                ("HOST_IP".into(), "10.1.2.3".into())
            ]
        );
        let err = parse_env_file(p, "PORT_ETC=1\n").expect_err("typo");
        assert!(
            err.to_string().contains("u7s.env:1") && err.to_string().contains("PORT_ETC"),
            "{err}"
        );
        let err = parse_env_file(p, "\nnonsense\n").expect_err("no =");
        assert!(err.to_string().contains(":2"), "{err}");
    }

    #[test]
    fn node_ip_is_host_100() {
        assert_eq!(
            node_ip("10.100.3.0/24".parse().expect("net")),
            Some(Ipv4Addr::new(10, 100, 3, 100))
        );
        assert_eq!(node_ip("10.100.3.0/26".parse().expect("net")), None);
    }
    #[test]
    fn extra_ports_and_mounts_parse_with_their_defaults() {
        let c = resolve(
            &vars(&[
                (
                    "U7S_PUBLISH",
                    "30080:30080, 127.0.0.1:8053:30053/udp,[::1]:9090:30090/tcp",
                ),
                ("U7S_MOUNTS", "/srv/data:/mnt/data:ro,rel/dir:/mnt/rel/"),
            ]),
            &host(),
        )
        .expect("config");
        let shown: Vec<String> = c.publish.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "30080:30080/tcp",
                "127.0.0.1:8053:30053/udp",
                "[::1]:9090:30090/tcp"
            ]
        );
        assert_eq!(
            c.mounts,
            [
                ExtraMount {
                    source: "/srv/data".into(),
                    target: "/mnt/data".into(),
                    read_only: true
                },
                ExtraMount {
                    source: "/home/alice/cluster/rel/dir".into(),
                    target: "/mnt/rel".into(),
                    read_only: false
                },
            ]
        );
        assert_eq!(
            c.host_ports().last(),
            Some(&("U7S_PUBLISH", 9090, Protocol::Tcp)),
            "checked for being taken like the node's own"
        );
    }

    #[test]
    fn bad_extra_ports_and_mounts_are_refused_with_the_reason() {
        for (pairs, hint) in [
            (&[("U7S_PUBLISH", "6443:30443")][..], "PORT_KUBE_APISERVER"),
            (&[("U7S_PUBLISH", "30472:8472/udp")], "PORT_FLANNEL"),
            (&[("U7S_PUBLISH", "30080:2380")], "etcd's peer port"),
            (
                &[("U7S_PUBLISH", "70000:30080")],
                "expected [hostIP:]hostPort:containerPort",
            ),
            (&[("U7S_PUBLISH", "30080")], "host port is required"),
            (&[("U7S_PUBLISH", "0:30080")], "1-65535"),
            (&[("U7S_PUBLISH", "30080:30080/sctp")], "tcp or udp"),
            (
                &[("U7S_PUBLISH", "30080:30080,30080:30081")],
                "clashes with 30080:30080/tcp",
            ),
            (&[("U7S_PUBLISH", "30080:30080,30081:30080")], "clashes"),
            (&[("U7S_MOUNTS", "/srv:/etc")], "the node needs for itself"),
            (&[("U7S_MOUNTS", "/srv:/")], "the node needs for itself"),
            (&[("U7S_MOUNTS", "/srv:data")], "absolute"),
            (&[("U7S_MOUNTS", "/srv:/mnt/../etc")], "absolute"),
            (&[("U7S_MOUNTS", "/srv:/mnt/a:rx")], "ro or rw"),
            (&[("U7S_MOUNTS", "/srv")], "SRC:DST"),
            (&[("U7S_MOUNTS", "/a:/mnt/x,/b:/mnt/x/")], "already mounted"),
        ] {
            let e = resolve(&vars(pairs), &host()).expect_err(hint);
            assert!(e.to_string().contains(hint), "{pairs:?}: {e}");
        }
        // Both ways of writing the same UDP port as TCP are fine.
        assert!(resolve(
            &vars(&[("U7S_PUBLISH", "30080:30080/tcp,30080:30080/udp")]),
            &host()
        )
        .is_ok());
    }
}
