//! Arguments for the CLI, rendered from typed values (unit-tested). The
//! flags are the Docker CLI's, which nerdctl mirrors; where the two differ
//! (the fast path's switch) the engine's [`AccelMethod`] decides.

use std::collections::BTreeMap;
use std::path::Path;

use crate::engine::AccelMethod;
use crate::node::{NodeSpec, PROJECT_LABEL};

/// nerdctl's switch for bypass4netns: a label in 1.x, an annotation (with
/// `-ignore-subnets` and `-ignore-bind` siblings) from 2.0 on.
pub const NERDCTL_BYPASS4NETNS: &str = "nerdctl/bypass4netns";

/// `create` arguments for the node container; `method` is how this CLI's
/// engine puts a container on the fast path (used with `spec.accel`).
pub fn create_args(spec: &NodeSpec, method: AccelMethod) -> Vec<String> {
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
    if let Some(accel) = &spec.accel {
        match method {
            AccelMethod::Runtime => {
                // The wrapper reads the ignore list from the environment.
                a.push("--runtime".into());
                a.push(accel.runtime.clone());
            }
            AccelMethod::NerdctlLabel => {
                // nerdctl 1.x has no --annotation flag and sends its own
                // ignore list; the daemon holds the node's (see accel.rs).
                a.push("--label".into());
                a.push(format!("{NERDCTL_BYPASS4NETNS}=true"));
            }
            AccelMethod::NerdctlAnnotations => {
                let list: Vec<String> = accel.ignore.iter().map(ToString::to_string).collect();
                let mut annotations = spec.annotations.clone();
                annotations.insert(NERDCTL_BYPASS4NETNS.into(), "true".into());
                annotations.insert(
                    format!("{NERDCTL_BYPASS4NETNS}-ignore-subnets"),
                    serde_json::to_string(&list).unwrap_or_default(),
                );
                annotations.insert(format!("{NERDCTL_BYPASS4NETNS}-ignore-bind"), "true".into());
                for (k, v) in annotations {
                    a.push("--annotation".into());
                    a.push(format!("{k}={v}"));
                }
            }
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
        let a = create_args(&spec(None), AccelMethod::Runtime);
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
    fn the_fast_path_switch_follows_the_engine_method() {
        let s = spec(Some("netaccel"));
        // docker CLI: the wrapper runtime, no annotation flag (20.10 has none).
        let a = create_args(&s, AccelMethod::Runtime);
        assert_eq!(pairs(&a, "--runtime"), ["netaccel"]);
        assert!(pairs(&a, "--annotation").is_empty(), "{a:?}");
        assert!(pairs(&a, "--env")
            .iter()
            .any(|e| e.starts_with("NETACCEL_IGNORE=10.244.0.0/16,")));
        // nerdctl 1.x: the label only (no --annotation flag exists there).
        let a = create_args(&s, AccelMethod::NerdctlLabel);
        assert!(
            pairs(&a, "--label").contains(&"nerdctl/bypass4netns=true".to_owned()),
            "{a:?}"
        );
        assert!(pairs(&a, "--annotation").is_empty() && pairs(&a, "--runtime").is_empty());
        // nerdctl ≥ 2.0: the annotations, with the node's ignore ranges.
        let a = create_args(&s, AccelMethod::NerdctlAnnotations);
        let ann = pairs(&a, "--annotation");
        assert!(ann.contains(&"nerdctl/bypass4netns=true".to_owned()), "{ann:?}");
        assert!(
            ann.contains(&"nerdctl/bypass4netns-ignore-bind=true".to_owned()),
            "{ann:?}"
        );
        let subnets = ann
            .iter()
            .find_map(|x| x.strip_prefix("nerdctl/bypass4netns-ignore-subnets="))
            .expect("ignore-subnets");
        let subnets: Vec<String> = serde_json::from_str(subnets).expect("JSON list");
        assert_eq!(subnets[..2], ["10.244.0.0/16", "10.96.0.0/16"]);
        assert!(pairs(&a, "--runtime").is_empty());
        // Without --accel no method adds anything.
        for m in [
            AccelMethod::Runtime,
            AccelMethod::NerdctlLabel,
            AccelMethod::NerdctlAnnotations,
        ] {
            let a = create_args(&spec(None), m);
            assert!(pairs(&a, "--runtime").is_empty() && pairs(&a, "--annotation").is_empty());
            assert!(!pairs(&a, "--label").iter().any(|l| l.starts_with("nerdctl/")));
        }
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
