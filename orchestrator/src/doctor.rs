//! `u7s doctor`: host prerequisites, each with the fix to apply.

use std::path::Path;

/// How much a failed check matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// `u7s up` cannot work without it.
    Blocking,
    /// Works, but slower or with less isolation.
    Warning,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub check: &'static str,
    pub ok: bool,
    pub severity: Severity,
    /// What was found, or what to do about it.
    pub detail: String,
}

/// The facts checks are made from, gathered separately so the rules can be
/// tested without touching the host.
#[derive(Debug, Clone, Default)]
pub struct HostFacts {
    pub kernel_release: String,
    pub tools: Vec<(&'static str, bool)>,
    pub tun_mode: Option<u32>,
    pub max_user_namespaces: Option<u64>,
    pub user: String,
    pub subuid_lines: String,
    pub subgid_lines: String,
    pub yama_ptrace_scope: Option<u64>,
    pub is_root: bool,
    /// Controllers delegated to the user's systemd instance (cgroup v2),
    /// `None` on a cgroup v1/hybrid host.
    pub delegated_controllers: Option<Vec<String>>,
    /// Kernel modules loaded or built in, among [`MODULES`].
    pub modules: Vec<(&'static str, bool)>,
    pub rp_filter_default: Option<u64>,
    /// The engine found, or why none was.
    pub engine: Option<Result<EngineFacts, String>>,
    /// Where the netaccel binary is.
    pub netaccel: Option<String>,
    /// The configuration could not be resolved.
    pub config_error: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct EngineFacts {
    pub name: &'static str,
    pub version: String,
    pub rootless: bool,
    /// The rootless network stack it names, if it does (Podman ≥ 5).
    pub user_net: Option<String>,
}

/// Modules the node's networking needs on the host kernel.
pub const MODULES: &[&str] = &["br_netfilter", "vxlan"];

const TOOLS: &[&str] = &["runc", "slirp4netns", "rootlesskit", "newuidmap", "newgidmap"];
const FIX: &str = "run init-host/init-host.root.sh as root";

impl HostFacts {
    pub fn gather() -> Self {
        let read = |p: &str| std::fs::read_to_string(p).ok();
        let num = |p: &str| read(p).and_then(|s| s.trim().parse().ok());
        // /proc/self is owned by the process's effective uid.
        let uid = std::fs::metadata("/proc/self")
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
            .ok();
        let user = uid.and_then(user_name).unwrap_or_default();
        Self {
            kernel_release: read("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            tools: TOOLS.iter().map(|t| (*t, on_path(t))).collect(),
            tun_mode: std::fs::metadata("/dev/net/tun")
                .ok()
                .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777),
            max_user_namespaces: num("/proc/sys/user/max_user_namespaces"),
            user,
            subuid_lines: read("/etc/subuid").unwrap_or_default(),
            subgid_lines: read("/etc/subgid").unwrap_or_default(),
            yama_ptrace_scope: num("/proc/sys/kernel/yama/ptrace_scope"),
            is_root: uid == Some(0),
            delegated_controllers: uid.and_then(delegated_controllers),
            modules: MODULES.iter().map(|m| (*m, module_present(m))).collect(),
            rp_filter_default: num("/proc/sys/net/ipv4/conf/default/rp_filter"),
            ..Default::default()
        }
    }
}

/// The controllers of the user's systemd service cgroup, on cgroup v2.
fn delegated_controllers(uid: u32) -> Option<Vec<String>> {
    if !Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        return None;
    }
    let path = format!("/sys/fs/cgroup/user.slice/user-{uid}.slice/user@{uid}.service/cgroup.controllers");
    let text = std::fs::read_to_string(path).unwrap_or_default();
    Some(text.split_whitespace().map(str::to_owned).collect())
}

fn module_present(name: &str) -> bool {
    if Path::new("/sys/module").join(name).exists() {
        return true;
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let builtin = std::fs::read_to_string(format!("/lib/modules/{}/modules.builtin", release.trim()))
        .unwrap_or_default();
    builtin.lines().any(|l| l.ends_with(&format!("/{name}.ko")))
}

fn user_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 2 && f[2] == uid.to_string()).then(|| f[0].to_owned())
    })
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| Path::new(&d).join(tool).is_file()))
        .unwrap_or(false)
}

/// Parses "6.1.0-18-amd64" into (6, 1).
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

fn has_range(lines: &str, user: &str) -> bool {
    lines.lines().any(|l| {
        let f: Vec<&str> = l.split(':').collect();
        f.len() == 3 && f[0] == user && f[2].parse::<u64>().is_ok_and(|n| n >= 65536)
    })
}

/// Controllers kubelet needs delegated to run pods with limits.
const CONTROLLERS: &[&str] = &["cpu", "memory", "pids"];

pub fn evaluate(f: &HostFacts, accel: bool) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut push = |check, ok, severity, detail: String| {
        out.push(Finding {
            check,
            ok,
            severity,
            detail,
        })
    };
    match kernel_version(&f.kernel_release) {
        Some(v) if v >= (5, 14) => push("kernel", true, Severity::Blocking, f.kernel_release.clone()),
        _ => push(
            "kernel",
            false,
            Severity::Blocking,
            format!(
                "{:?}: Linux >= 5.14 is needed (seccomp ADDFD, pidfd_getfd)",
                f.kernel_release
            ),
        ),
    }
    for (tool, found) in &f.tools {
        let detail = if *found {
            "found".into()
        } else {
            format!("{tool} not found: {FIX}")
        };
        push("tool", *found, Severity::Blocking, format!("{tool}: {detail}"));
    }
    match f.tun_mode {
        Some(m) if m & 0o006 == 0o006 => {
            push("/dev/net/tun", true, Severity::Blocking, format!("mode {m:o}"))
        }
        Some(m) => push(
            "/dev/net/tun",
            false,
            Severity::Blocking,
            format!("mode {m:o}, users cannot open it: {FIX}"),
        ),
        None => push(
            "/dev/net/tun",
            false,
            Severity::Blocking,
            format!("missing: {FIX}"),
        ),
    }
    let userns = f.max_user_namespaces.is_some_and(|n| n > 0);
    push(
        "user namespaces",
        userns,
        Severity::Blocking,
        if userns {
            "enabled".into()
        } else {
            format!("disabled (user.max_user_namespaces): {FIX}")
        },
    );
    if !f.is_root {
        let ids = has_range(&f.subuid_lines, &f.user) && has_range(&f.subgid_lines, &f.user);
        push(
            "subuid/subgid",
            ids,
            Severity::Blocking,
            if ids {
                format!("{} has 65536 ids or more", f.user)
            } else {
                format!("{} needs 65536 subordinate ids: usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {}", f.user, f.user)
            },
        );
    }
    let yama_ok = f.yama_ptrace_scope.is_none_or(|s| s < 3);
    push(
        "ptrace scope",
        yama_ok,
        Severity::Warning,
        if yama_ok {
            "netaccel can use pidfd_getfd".into()
        } else {
            "kernel.yama.ptrace_scope=3 forbids pidfd_getfd: `u7s up --accel` cannot work until reboot with a lower value".into()
        },
    );
    if let Some(e) = &f.config_error {
        push("settings", false, Severity::Blocking, e.clone());
    }
    match &f.engine {
        Some(Ok(e)) if e.rootless => push("engine", true, Severity::Blocking, format!("{} {} (rootless)", e.name, e.version)),
        Some(Ok(e)) => push(
            "engine",
            false,
            Severity::Warning,
            format!("{} {} runs as root: u7s works, but the node is not confined to your user (dockerd-rootless-setuptool.sh install)", e.name, e.version),
        ),
        Some(Err(e)) => push("engine", false, Severity::Blocking, e.clone()),
        None => {}
    }
    match &f.delegated_controllers {
        None => push(
            "cgroup v2",
            false,
            Severity::Warning,
            "this host uses cgroup v1/hybrid: the node starts, but kubelet in a user namespace needs cgroup v2 (boot with systemd.unified_cgroup_hierarchy=1)".into(),
        ),
        Some(have) => {
            let missing: Vec<&str> = CONTROLLERS.iter().copied().filter(|c| !have.iter().any(|h| h == c)).collect();
            push(
                "cgroup v2",
                missing.is_empty(),
                Severity::Warning,
                if missing.is_empty() {
                    format!("delegated: {}", have.join(" "))
                } else {
                    format!("controllers {} are not delegated to your user: add Delegate=cpu cpuset io memory pids to /etc/systemd/system/user@.service.d/delegate.conf, then systemctl daemon-reload", missing.join(" "))
                },
            );
        }
    }
    for (m, present) in &f.modules {
        push(
            "kernel module",
            *present,
            Severity::Warning,
            if *present {
                format!("{m}: loaded")
            } else {
                format!("{m} is not loaded: add it to /etc/modules-load.d/u7s.conf and run `modprobe {m}` as root")
            },
        );
    }
    let rp_ok = f.rp_filter_default.is_some_and(|v| v != 1);
    push(
        "rp_filter",
        rp_ok,
        Severity::Warning,
        if rp_ok {
            format!(
                "net.ipv4.conf.default.rp_filter = {}",
                f.rp_filter_default.unwrap_or_default()
            )
        } else {
            "net.ipv4.conf.default.rp_filter must be 0 or 2 for VXLAN between nodes: sysctl -w net.ipv4.conf.default.rp_filter=2 (and persist it in /etc/sysctl.d)".into()
        },
    );
    if accel {
        push(
            "netaccel",
            f.netaccel.is_some(),
            Severity::Blocking,
            f.netaccel.clone().unwrap_or_else(|| {
                "not found: cargo build --release -p netaccel, then put it on PATH (or set U7S_NETACCEL)"
                    .into()
            }),
        );
        if let Some(Ok(engine)) = &f.engine {
            if let Some(detail) = user_net_advice(engine) {
                push("user-mode net", true, Severity::Warning, detail);
            }
        }
    }
    out
}

/// What netaccel does with the engine's rootless network stack, for Podman
/// (pasta by default since Podman 5; Podman 6 drops slirp4netns).
fn user_net_advice(engine: &EngineFacts) -> Option<String> {
    match engine.user_net.as_deref() {
        Some("pasta") => Some(
            "pasta (Podman 5's default) works with netaccel: connects to the LAN pasta copies from the host and beyond \
             take the fast path; pasta keeps the container's gateway (which it maps to the host), link-local addresses \
             (its DNS 169.254.1.1, host.containers.internal 169.254.1.2) and the container's own address"
                .into(),
        ),
        Some("slirp4netns") => Some(
            "slirp4netns: works with netaccel; Podman 6 drops it, and pasta (rootless_networking = \"pasta\" in \
             containers.conf) works with netaccel as well"
                .into(),
        ),
        Some(other) => Some(format!("{other}: netaccel bypasses what leaves the container for other hosts")),
        None if engine.name == "podman" => Some(
            "Podman names no network stack (before 5.0: slirp4netns); netaccel works with slirp4netns and pasta".into(),
        ),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> HostFacts {
        HostFacts {
            kernel_release: "6.1.0-18-amd64".into(),
            tools: TOOLS.iter().map(|t| (*t, true)).collect(),
            tun_mode: Some(0o666),
            max_user_namespaces: Some(1000),
            user: "alice".into(),
            subuid_lines: "alice:100000:65536\n".into(),
            subgid_lines: "alice:100000:65536\n".into(),
            yama_ptrace_scope: Some(1),
            is_root: false,
            delegated_controllers: Some(vec!["cpu".into(), "memory".into(), "pids".into()]),
            modules: MODULES.iter().map(|m| (*m, true)).collect(),
            rp_filter_default: Some(2),
            engine: Some(Ok(EngineFacts {
                name: "docker",
                version: "20.10".into(),
                rootless: true,
                ..Default::default()
            })),
            netaccel: Some("/usr/local/bin/netaccel".into()),
            config_error: None,
        }
    }

    #[test]
    fn a_prepared_host_passes() {
        assert!(
            evaluate(&good(), true).iter().all(|f| f.ok),
            "{:?}",
            evaluate(&good(), true)
        );
    }

    #[test]
    fn each_problem_is_blocking_and_says_what_to_do() {
        let cases: Vec<(HostFacts, &str)> = vec![
            (
                HostFacts {
                    kernel_release: "5.10.0".into(),
                    ..good()
                },
                "5.14",
            ),
            (
                HostFacts {
                    tun_mode: Some(0o600),
                    ..good()
                },
                "init-host",
            ),
            (
                HostFacts {
                    max_user_namespaces: Some(0),
                    ..good()
                },
                "max_user_namespaces",
            ),
            (
                HostFacts {
                    subuid_lines: "alice:100000:1000\n".into(),
                    ..good()
                },
                "usermod",
            ),
            (
                HostFacts {
                    tools: vec![("runc", false)],
                    ..good()
                },
                "runc not found",
            ),
            (
                HostFacts {
                    engine: Some(Err("no container engine found".into())),
                    ..good()
                },
                "no container engine",
            ),
            (
                HostFacts {
                    netaccel: None,
                    ..good()
                },
                "cargo build",
            ),
        ];
        for (facts, hint) in cases {
            let bad: Vec<_> = evaluate(&facts, true).into_iter().filter(|f| !f.ok).collect();
            assert_eq!(bad.len(), 1, "{bad:?}");
            assert_eq!(bad[0].severity, Severity::Blocking);
            assert!(bad[0].detail.contains(hint), "{:?} lacks {hint:?}", bad[0]);
        }
    }

    #[test]
    fn weaker_setups_warn_with_the_fix() {
        let cases: Vec<(HostFacts, &str)> = vec![
            (
                HostFacts {
                    delegated_controllers: None,
                    ..good()
                },
                "cgroup v2",
            ),
            (
                HostFacts {
                    delegated_controllers: Some(vec!["pids".into()]),
                    ..good()
                },
                "Delegate=",
            ),
            (
                HostFacts {
                    modules: vec![("vxlan", false)],
                    ..good()
                },
                "modprobe vxlan",
            ),
            (
                HostFacts {
                    rp_filter_default: Some(1),
                    ..good()
                },
                "rp_filter=2",
            ),
            (
                HostFacts {
                    engine: Some(Ok(EngineFacts {
                        name: "docker",
                        version: "20.10".into(),
                        rootless: false,
                        ..Default::default()
                    })),
                    ..good()
                },
                "rootless",
            ),
        ];
        for (facts, hint) in cases {
            let bad: Vec<_> = evaluate(&facts, false).into_iter().filter(|f| !f.ok).collect();
            assert_eq!(bad.len(), 1, "{bad:?}");
            assert_eq!(bad[0].severity, Severity::Warning);
            assert!(bad[0].detail.contains(hint), "{:?} lacks {hint:?}", bad[0]);
        }
    }

    #[test]
    fn podman_with_pasta_is_told_what_netaccel_does_with_it() {
        let with = |user_net: Option<&str>| {
            let mut f = good();
            f.engine = Some(Ok(EngineFacts {
                name: "podman",
                version: "5.2.0".into(),
                rootless: true,
                user_net: user_net.map(str::to_owned),
            }));
            evaluate(&f, true)
                .into_iter()
                .find(|x| x.check == "user-mode net")
                .map(|x| x.detail)
        };
        let pasta = with(Some("pasta")).expect("advice for pasta");
        assert!(
            pasta.contains("169.254.1.1") && pasta.contains("gateway"),
            "{pasta}"
        );
        assert!(with(Some("slirp4netns")).expect("advice").contains("Podman 6"));
        assert!(with(None).is_some(), "Podman 4 names no stack");
        let mut docker = good();
        docker.engine = Some(Ok(EngineFacts {
            name: "docker",
            ..Default::default()
        }));
        assert!(evaluate(&docker, true).iter().all(|x| x.check != "user-mode net"));
        assert!(evaluate(&good(), false)
            .iter()
            .all(|x| x.check != "user-mode net"));
    }

    #[test]
    fn accel_checks_only_count_for_accel() {
        let f = HostFacts {
            netaccel: None,
            ..good()
        };
        assert!(evaluate(&f, false).iter().all(|x| x.ok));
    }

    #[test]
    fn kernel_versions_parse() {
        assert_eq!(kernel_version("6.18.44-fc-v657"), Some((6, 18)));
        assert_eq!(kernel_version("5.4"), Some((5, 4)));
        assert_eq!(kernel_version("garbage"), None);
    }
}
