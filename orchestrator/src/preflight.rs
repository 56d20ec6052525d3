//! What `u7s up` checks before it creates anything, which `u7s doctor`
//! reports as well: one set of rules ([`evaluate`]) over facts gathered from
//! the engine and the host ([`gather`]), so the two commands cannot
//! disagree. A blocking finding stops `up` with its text; nothing is made.

use ipnet::Ipv4Net;

use crate::config::{Config, NODE_PORT_RANGE};
use crate::doctor::{Finding, Severity};
use crate::engine::{Engine, EngineError, EngineInfo};
use crate::hostnet::{self, EphemeralPorts, HostNetError, TakenPort};
use crate::image::NodeImage;
use crate::node::Names;

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error("asking the engine: {0}")]
    Engine(#[from] EngineError),
    #[error("reading the host's networks: {0}")]
    HostNet(#[from] HostNetError),
}

/// What the checks are made from.
#[derive(Debug, Clone, Default)]
pub struct NodeFacts {
    /// Published ports held by something else (none while the node itself
    /// runs and holds them).
    pub taken: Vec<TakenPort>,
    /// The kernel's ephemeral range, and the published ports inside it.
    pub ephemeral: Option<(EphemeralPorts, Vec<(&'static str, u16)>)>,
    /// The subnets of the engine's network of this project, if it exists.
    pub own_network: Option<Vec<Ipv4Net>>,
    /// Another engine network overlapping NODE_SUBNET.
    pub engine_clash: Option<(String, Ipv4Net)>,
    /// A host network overlapping NODE_SUBNET.
    pub host_clash: Option<Ipv4Net>,
    pub image: ImageFacts,
    /// With `--accel`: whether the engine can run the node on the fast path.
    pub accel: Option<Result<(), String>>,
    /// Each extra mount's source: there and readable by this user, or why not.
    pub mounts: Vec<(String, Result<(), String>)>,
}

/// Whether this user can bind `source` into the node: it exists and can be
/// read (and, for a directory, entered).
pub fn check_mount_source(source: &std::path::Path) -> Result<(), String> {
    use rustix::fs::Access;
    let meta = std::fs::metadata(source).map_err(|e| format!("{}: {e}", source.display()))?;
    let need = if meta.is_dir() {
        Access::READ_OK | Access::EXEC_OK
    } else {
        Access::READ_OK
    };
    rustix::fs::access(source, need).map_err(|e| {
        format!(
            "{}: not readable by this user ({e}); the rootless engine reads it as you",
            source.display()
        )
    })
}

#[derive(Debug, Clone, Default)]
pub struct ImageFacts {
    pub name: String,
    /// u7s builds it (the shipped context or U7S_NODE_IMAGE_DIR).
    pub built_by_u7s: bool,
    pub present: bool,
    /// `up --rebuild`.
    pub rebuild: bool,
    /// Why the engine cannot build images, with the fix.
    pub build_blocker: Option<String>,
}

impl ImageFacts {
    /// Whether `up` builds the image.
    pub fn needs_build(&self) -> bool {
        self.built_by_u7s && (self.rebuild || !self.present)
    }
}

/// How `up` (or `doctor`) will use the facts.
#[derive(Debug, Clone, Copy, Default)]
pub struct Intent {
    pub with_accel: bool,
    pub rebuild: bool,
    /// The node container exists and runs (its ports are its own).
    pub node_running: bool,
}

pub async fn gather(
    engine: &Engine,
    info: &EngineInfo,
    c: &Config,
    image: &NodeImage,
    intent: Intent,
) -> Result<NodeFacts, PreflightError> {
    let ephemeral = EphemeralPorts::read();
    let ours = Names::network(&c.project);
    let mut facts = NodeFacts {
        taken: if intent.node_running {
            Vec::new()
        } else {
            hostnet::taken_ports(&c.host_ports())
        },
        ephemeral: ephemeral.map(|r| {
            let exposed = r.exposed(&c.host_ports());
            (r, exposed)
        }),
        image: ImageFacts {
            name: image.name.clone(),
            built_by_u7s: image.build.is_some(),
            present: engine.image_exists(&image.name).await?,
            rebuild: intent.rebuild,
            build_blocker: info.build_blocker.clone(),
        },
        ..Default::default()
    };
    for (net, subnets) in engine.network_subnets().await? {
        if net == ours {
            facts.own_network = Some(subnets);
        } else if facts.engine_clash.is_none() {
            if let Some(s) = subnets.iter().find(|s| hostnet::overlaps(**s, c.node_subnet)) {
                facts.engine_clash = Some((net, *s));
            }
        }
    }
    facts.host_clash = hostnet::host_subnets()
        .await?
        .into_iter()
        .find(|s| hostnet::overlaps(*s, c.node_subnet));
    facts.mounts = c
        .mounts
        .iter()
        .map(|m| (m.to_string(), check_mount_source(&m.source)))
        .collect();
    if intent.with_accel {
        let runtime = crate::accel::runtime_name();
        facts.accel = Some(
            crate::accel::check_runtime(engine.kind(), info, &runtime)
                .map_err(|e| e.to_string())
                .and_then(|()| engine.kind().accel_blocker().map_or(Ok(()), Err)),
        );
    }
    Ok(facts)
}

pub fn evaluate(c: &Config, f: &NodeFacts) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut push = |check, ok, severity, detail: String| {
        out.push(Finding {
            check,
            ok,
            severity,
            detail,
        })
    };
    push(
        "ports",
        f.taken.is_empty(),
        Severity::Blocking,
        if f.taken.is_empty() {
            "the node's ports are free (or held by its running node)".into()
        } else {
            hostnet::explain_taken(&f.taken, f.ephemeral.as_ref().map(|(r, _)| r))
        },
    );
    if let Some((range, exposed)) = &f.ephemeral {
        push(
            "port range",
            exposed.is_empty(),
            Severity::Warning,
            if exposed.is_empty() {
                format!(
                    "the node's ports lie outside the ephemeral range {}-{}",
                    range.low, range.high
                )
            } else {
                range.explain(exposed)
            },
        );
    }
    for p in &c.publish {
        if !NODE_PORT_RANGE.contains(&p.node_port) {
            push(
                "publish",
                false,
                Severity::Warning,
                format!(
                    "{p}: node port {} is outside Kubernetes' NodePort range {}-{}; fine for a hostPort pod or a server in the node, a NodePort Service cannot have it",
                    p.node_port,
                    NODE_PORT_RANGE.start(),
                    NODE_PORT_RANGE.end()
                ),
            );
        }
    }
    for (spec, result) in &f.mounts {
        match result {
            Ok(()) => push(
                "mount",
                true,
                Severity::Blocking,
                format!("{spec}: the source is readable"),
            ),
            Err(why) => push(
                "mount",
                false,
                Severity::Blocking,
                format!("--mount {spec}: {why}"),
            ),
        }
    }
    let ours = Names::network(&c.project);
    let subnet = c.node_subnet;
    let (ok, detail) = match (&f.own_network, &f.engine_clash, &f.host_clash) {
        (Some(subnets), _, _) if !subnets.contains(&subnet) => (
            false,
            format!("the network {ours} exists with subnet(s) {subnets:?}, not NODE_SUBNET {subnet}: `u7s down` removes it"),
        ),
        (Some(_), _, _) => (true, format!("the network {ours} exists with NODE_SUBNET {subnet}")),
        (None, Some((net, s)), _) => (
            false,
            format!("NODE_SUBNET {subnet} collides with the engine's network {net} ({s}); the default comes from a hash of the host name with only 256 choices. Set NODE_SUBNET to a free 10.100.x.0/24 (or use --tenant N for a second instance)"),
        ),
        (None, None, Some(s)) => (
            false,
            format!("NODE_SUBNET {subnet} collides with this host's network {s}: set NODE_SUBNET to a free 10.100.x.0/24"),
        ),
        (None, None, None) => (true, format!("NODE_SUBNET {subnet} is free")),
    };
    push("node subnet", ok, Severity::Blocking, detail);
    let i = &f.image;
    let (ok, detail) = match (i.built_by_u7s, i.needs_build(), &i.build_blocker) {
        (true, true, Some(why)) => (false, format!("cannot build the node image {}: {why}", i.name)),
        (true, true, None) => (true, "the engine can build the node image".to_owned()),
        (true, false, _) => (true, format!("the node image {} is up to date", i.name)),
        (false, _, _) if i.present => (true, format!("the node image {} is in the engine", i.name)),
        (false, _, _) => (
            false,
            format!("the node image {} is not in the engine: load or build it first, or drop --image/U7S_NODE_IMAGE to build one", i.name),
        ),
    };
    push("image", ok, Severity::Blocking, detail);
    match &f.accel {
        Some(Ok(())) => push(
            "accel runtime",
            true,
            Severity::Blocking,
            "the engine can run the node on the fast path".into(),
        ),
        Some(Err(why)) => push("accel runtime", false, Severity::Blocking, why.clone()),
        None => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{resolve, HostDefaults, Protocol, Vars};

    fn config() -> Config {
        resolve(
            &Vars::layered(&[], |_| None, &[("NODE_SUBNET", "10.100.7.0/24".into())]),
            &HostDefaults {
                hostname: "alpha".into(),
                default_route_ip: Some("192.168.1.10".parse().expect("ip")),
                current_dir: "/c".into(),
            },
        )
        .expect("config")
    }

    fn good() -> NodeFacts {
        NodeFacts {
            ephemeral: EphemeralPorts::parse("32768 60999", "").map(|r| (r, Vec::new())),
            image: ImageFacts {
                name: "u7s-node:1".into(),
                built_by_u7s: true,
                ..Default::default()
            },
            accel: Some(Ok(())),
            ..Default::default()
        }
    }

    fn failed(f: &NodeFacts) -> Vec<Finding> {
        evaluate(&config(), f).into_iter().filter(|x| !x.ok).collect()
    }

    #[test]
    fn a_free_host_passes() {
        assert!(failed(&good()).is_empty(), "{:?}", failed(&good()));
    }

    #[test]
    fn each_problem_blocks_with_what_to_do() {
        let net = |s: &str| s.parse::<Ipv4Net>().expect("net");
        let mut cases: Vec<(NodeFacts, &str)> = Vec::new();
        let mut f = good();
        f.taken = vec![TakenPort {
            var: "PORT_KUBE_APISERVER",
            port: 6443,
            protocol: Protocol::Tcp,
            error: "Address already in use".into(),
        }];
        cases.push((f, "--tenant"));
        let mut f = good();
        f.own_network = Some(vec![net("10.100.9.0/24")]);
        cases.push((f, "`u7s down` removes it"));
        let mut f = good();
        f.engine_clash = Some(("other".into(), net("10.100.0.0/16")));
        cases.push((f, "collides with the engine's network other"));
        let mut f = good();
        f.host_clash = Some(net("10.100.7.0/25"));
        cases.push((f, "collides with this host's network 10.100.7.0/25"));
        let mut f = good();
        f.image.build_blocker = Some("buildctl was not found: install BuildKit".into());
        cases.push((f, "install BuildKit"));
        let mut f = good();
        f.image.built_by_u7s = false;
        cases.push((f, "not in the engine"));
        let mut f = good();
        f.accel = Some(Err("podman is in remote mode (CONTAINER_HOST is set)".into()));
        cases.push((f, "remote mode"));
        for (facts, hint) in cases {
            let bad = failed(&facts);
            assert_eq!(bad.len(), 1, "{bad:?}");
            assert_eq!(bad[0].severity, Severity::Blocking);
            assert!(bad[0].detail.contains(hint), "{:?} lacks {hint:?}", bad[0]);
        }
    }

    #[test]
    fn a_present_image_needs_no_build_and_no_builder() {
        let mut f = good();
        f.image.present = true;
        f.image.build_blocker = Some("no BuildKit".into());
        assert!(failed(&f).is_empty(), "nothing to build");
        f.image.rebuild = true;
        assert_eq!(failed(&f).len(), 1, "--rebuild builds");
    }

    #[test]
    fn ports_in_the_ephemeral_range_warn() {
        let mut f = good();
        f.ephemeral = EphemeralPorts::parse("32768 60999", "").map(|r| (r, vec![("PORT_KUBELET", 50250)]));
        let bad = failed(&f);
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].severity, Severity::Warning);
        assert!(bad[0].detail.contains("ip_local_reserved_ports=50250"), "{bad:?}");
    }
    #[test]
    fn a_mount_source_must_exist_and_be_readable() {
        let dir = tempfile::tempdir().expect("dir");
        assert!(check_mount_source(dir.path()).is_ok());
        let missing = check_mount_source(&dir.path().join("nope")).expect_err("missing");
        assert!(missing.contains("No such file"), "{missing}");
        let mut f = good();
        f.mounts = vec![("/nope:/mnt/x".into(), Err(missing))];
        let bad = failed(&f);
        assert_eq!(bad.len(), 1);
        assert!(
            bad[0].severity == Severity::Blocking && bad[0].detail.starts_with("--mount /nope:/mnt/x"),
            "{bad:?}"
        );
        // Root reads everything; the check is for the rootless user.
        if !rustix::process::geteuid().is_root() {
            use std::os::unix::fs::PermissionsExt;
            let locked = dir.path().join("locked");
            std::fs::create_dir(&locked).expect("mkdir");
            std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).expect("chmod");
            assert!(check_mount_source(&locked)
                .expect_err("unreadable")
                .contains("not readable"));
        }
    }

    #[test]
    fn a_node_port_outside_the_nodeport_range_warns() {
        let mut c = config();
        c.publish = vec![crate::config::ExtraPort {
            host_ip: None,
            host_port: 8080,
            node_port: 8080,
            protocol: Protocol::Tcp,
        }];
        let bad: Vec<Finding> = evaluate(&c, &good()).into_iter().filter(|x| !x.ok).collect();
        assert_eq!(bad.len(), 1, "{bad:?}");
        assert_eq!(bad[0].severity, Severity::Warning);
        assert!(bad[0].detail.contains("NodePort range 30000-32767"), "{bad:?}");
        c.publish[0].node_port = 30080;
        assert!(evaluate(&c, &good()).iter().all(|x| x.ok));
    }
}
