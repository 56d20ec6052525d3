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
}

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
        }
    }
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

pub fn evaluate(f: &HostFacts) -> Vec<Finding> {
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
    out
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
        }
    }

    #[test]
    fn a_prepared_host_passes() {
        assert!(evaluate(&good()).iter().all(|f| f.ok), "{:?}", evaluate(&good()));
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
        ];
        for (facts, hint) in cases {
            let bad: Vec<_> = evaluate(&facts).into_iter().filter(|f| !f.ok).collect();
            assert_eq!(bad.len(), 1, "{bad:?}");
            assert_eq!(bad[0].severity, Severity::Blocking);
            assert!(bad[0].detail.contains(hint), "{:?} lacks {hint:?}", bad[0]);
        }
    }

    #[test]
    fn kernel_versions_parse() {
        assert_eq!(kernel_version("6.18.44-fc-v657"), Some((6, 18)));
        assert_eq!(kernel_version("5.4"), Some((5, 4)));
        assert_eq!(kernel_version("garbage"), None);
    }
}
