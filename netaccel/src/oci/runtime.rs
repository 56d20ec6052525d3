//! The OCI runtime wrapper: engines run `netaccel-runc` (a link to this
//! binary) or `netaccel runtime -- runc …` instead of runc. On `create` and
//! `run` the wrapper merges the fast path's notify rule and listener into the
//! seccomp profile the engine wrote into the bundle's config.json — keeping
//! every rule and the default action — then execs the real runtime with the
//! same arguments. Every other subcommand passes through untouched.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde_json::{json, Value};

use super::profile::{NotifyProfile, ProfileError};
use super::state::ContainerSettings;

/// Per-container ignore ranges (comma-separated CIDRs) in the container's
/// environment, for engines that pass neither labels nor annotations to the
/// runtime (Docker 20.10). Also read from the wrapper's own environment.
pub const IGNORE_ENV: &str = "NETACCEL_IGNORE";
/// The same as an OCI annotation (Podman `--annotation`, nerdctl, Docker ≥ 24).
pub const IGNORE_ANNOTATION: &str = "netaccel/ignore-subnets";

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("the bundle's seccomp profile already sends notifications to {existing:?}; netaccel needs {wanted:?} (remove one of the two)")]
    OtherListener { existing: String, wanted: String },
    #[error("the bundle's seccomp profile gives {syscall} the action {action}{args}; netaccel must notify every {syscall} and cannot merge with that rule")]
    ConflictingRule {
        syscall: String,
        action: String,
        args: &'static str,
    },
    #[error("linux.seccomp in {path} is not an object")]
    NotAnObject { path: String },
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path} is not valid JSON: {source}")]
    Json { path: String, source: serde_json::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("{origin}: {value:?} is not a CIDR (expected e.g. 10.244.0.0/16,10.96.0.0/16)")]
    BadIgnore { origin: String, value: String },
    #[error(transparent)]
    Profile(#[from] ProfileError),
}

/// Parses a comma-separated CIDR list; `origin` names where it came from.
pub fn parse_cidr_list(origin: &str, list: &str) -> Result<Vec<IpNet>, RuntimeError> {
    list.split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| {
            c.parse().map_err(|_| RuntimeError::BadIgnore {
                origin: origin.to_owned(),
                value: c.to_owned(),
            })
        })
        .collect()
}

/// The ignore ranges the engine put into the bundle for this container:
/// the [`IGNORE_ANNOTATION`] annotation and the [`IGNORE_ENV`] variable of
/// `process.env`.
pub fn bundle_ignore(config: &Value) -> Result<Vec<IpNet>, RuntimeError> {
    let mut out = Vec::new();
    if let Some(list) = config
        .pointer("/annotations")
        .and_then(|a| a.get(IGNORE_ANNOTATION))
        .and_then(Value::as_str)
    {
        out.extend(parse_cidr_list(&format!("annotation {IGNORE_ANNOTATION}"), list)?);
    }
    let prefix = format!("{IGNORE_ENV}=");
    let env = config.pointer("/process/env").and_then(Value::as_array);
    for entry in env.into_iter().flatten().filter_map(Value::as_str) {
        if let Some(list) = entry.strip_prefix(&prefix) {
            out.extend(parse_cidr_list(
                &format!("container environment {IGNORE_ENV}"),
                list,
            )?);
        }
    }
    Ok(out)
}

/// Runtime subcommands that start a container process with a seccomp filter.
const CREATING: &[&str] = &["create", "run"];
/// Global runc/crun options that take a value as the next argument.
const GLOBAL_WITH_VALUE: &[&str] = &[
    "--root",
    "--log",
    "--log-format",
    "--criu",
    "--rootless",
    "--cgroup-manager",
];

/// The subcommand of a runtime command line and the arguments after it.
pub fn subcommand(args: &[OsString]) -> Option<(usize, &str)> {
    let mut i = 0;
    while i < args.len() {
        let a = args[i].to_str()?;
        if !a.starts_with('-') {
            return Some((i, a));
        }
        if GLOBAL_WITH_VALUE.contains(&a) {
            i += 1;
        }
        i += 1;
    }
    None
}

/// The bundle directory of a `create`/`run` (`--bundle`/`-b`, else the
/// current directory, as runc does).
pub fn bundle_dir(after_subcommand: &[OsString]) -> PathBuf {
    let mut it = after_subcommand.iter();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "--bundle" || s == "-b" {
            if let Some(v) = it.next() {
                return PathBuf::from(v);
            }
        } else if let Some(v) = s.strip_prefix("--bundle=") {
            return PathBuf::from(v);
        }
    }
    PathBuf::from(".")
}

/// True when the command line creates a container (and needs the merge).
pub fn creates_container(args: &[OsString]) -> bool {
    subcommand(args).is_some_and(|(_, c)| CREATING.contains(&c))
}

/// Merges `ours` into the OCI `linux.seccomp` object `existing` (or installs
/// it when there is none). Rules that merely ALLOW a notified syscall without
/// argument conditions are folded into the notify rule (an unhandled
/// notification continues, which is the same as allowing); anything stricter
/// on a notified syscall is a conflict, reported rather than weakened.
pub fn merge_seccomp(existing: Option<&Value>, ours: &NotifyProfile) -> Result<Value, RuntimeError> {
    let ours_json = serde_json::to_value(ours).unwrap_or(Value::Null);
    let Some(existing) = existing.filter(|v| !v.is_null()) else {
        return Ok(ours_json);
    };
    let mut merged = existing
        .as_object()
        .cloned()
        .ok_or_else(|| RuntimeError::NotAnObject {
            path: "config.json".into(),
        })?;
    if let Some(existing) = merged
        .get("listenerPath")
        .and_then(Value::as_str)
        .filter(|p| !p.is_empty())
    {
        if existing != ours.listener_path {
            return Err(RuntimeError::OtherListener {
                existing: existing.to_owned(),
                wanted: ours.listener_path.clone(),
            });
        }
    }
    // The syscalls our rules notify whatever their arguments (from the
    // table, through the profile): an ALLOW of those is the same as ours.
    let notified: Vec<&str> = ours
        .syscalls
        .iter()
        .filter(|r| r.action == "SCMP_ACT_NOTIFY" && r.args.is_empty())
        .flat_map(|r| r.names.iter().copied())
        .collect();
    let mut rules: Vec<Value> = merged
        .get("syscalls")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for rule in &mut rules {
        let names: Vec<String> = rule["names"]
            .as_array()
            .map(|n| n.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        let ours_here: Vec<&String> = names.iter().filter(|n| notified.contains(&n.as_str())).collect();
        if ours_here.is_empty() {
            continue;
        }
        let action = rule["action"].as_str().unwrap_or_default().to_owned();
        let has_args = rule["args"].as_array().is_some_and(|a| !a.is_empty());
        if action != "SCMP_ACT_ALLOW" || has_args {
            return Err(RuntimeError::ConflictingRule {
                syscall: ours_here[0].clone(),
                action,
                args: if has_args { " with argument conditions" } else { "" },
            });
        }
        let kept: Vec<String> = names
            .iter()
            .filter(|n| !notified.contains(&n.as_str()))
            .cloned()
            .collect();
        rule["names"] = json!(kept);
    }
    rules.retain(|r| r["names"].as_array().is_none_or(|n| !n.is_empty()));
    rules.extend(ours_json["syscalls"].as_array().cloned().unwrap_or_default());
    merged.insert("syscalls".into(), Value::Array(rules));
    merged.insert("listenerPath".into(), json!(ours.listener_path));
    merged.insert("listenerMetadata".into(), json!(ours.listener_metadata));
    let archs_missing = merged
        .get("architectures")
        .and_then(Value::as_array)
        .is_none_or(|a| a.is_empty());
    if archs_missing {
        merged.insert("architectures".into(), ours_json["architectures"].clone());
    }
    Ok(Value::Object(merged))
}

/// Rewrites `<bundle>/config.json` with the merged profile (write to a
/// temporary file, then rename, so a failure never leaves half a config).
/// The container's own ignore ranges ([`bundle_ignore`]) are added to
/// `ignore`.
pub fn patch_bundle(bundle: &Path, socket: &Path, ignore: &[IpNet]) -> Result<(), RuntimeError> {
    let path = bundle.join("config.json");
    let shown = path.display().to_string();
    let bytes = std::fs::read(&path).map_err(|source| RuntimeError::Read {
        path: shown.clone(),
        source,
    })?;
    let mut config: Value = serde_json::from_slice(&bytes).map_err(|source| RuntimeError::Json {
        path: shown.clone(),
        source,
    })?;
    let mut all = ignore.to_vec();
    for net in bundle_ignore(&config)? {
        if !all.contains(&net) {
            all.push(net);
        }
    }
    let ours = NotifyProfile::new(
        socket,
        &ContainerSettings {
            ignore: all,
            ..Default::default()
        },
    )?;
    let merged = merge_seccomp(config.pointer("/linux/seccomp"), &ours)?;
    match config.get_mut("linux") {
        Some(Value::Object(linux)) => {
            linux.insert("seccomp".into(), merged);
        }
        _ => {
            config["linux"] = json!({ "seccomp": merged });
        }
    }
    let tmp = bundle.join(".config.json.netaccel");
    let out = serde_json::to_vec_pretty(&config).unwrap_or_default();
    std::fs::write(&tmp, out).map_err(|source| RuntimeError::Write {
        path: tmp.display().to_string(),
        source,
    })?;
    std::fs::rename(&tmp, &path).map_err(|source| RuntimeError::Write { path: shown, source })
}

/// For `netaccel-runc`/`netaccel-crun` links: the runtime the name points at.
pub fn runtime_from_link_name(argv0: &OsStr) -> Option<&'static str> {
    let name = Path::new(argv0).file_name()?.to_str()?;
    match name {
        "netaccel-runc" => Some("runc"),
        "netaccel-crun" => Some("crun"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours() -> NotifyProfile {
        NotifyProfile::new(
            Path::new("/run/user/1000/netaccel/netaccel.sock"),
            &ContainerSettings::default(),
        )
        .expect("profile")
    }

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn finds_subcommand_and_bundle_past_global_options() {
        let a = os(&[
            "--root",
            "/run/runc",
            "--log-format=json",
            "--debug",
            "create",
            "--bundle",
            "/b",
            "id",
        ]);
        assert_eq!(
            subcommand(&a).map(|(i, c)| (i, c.to_owned())),
            Some((4, "create".into()))
        );
        assert!(creates_container(&a));
        assert_eq!(bundle_dir(&a[5..]), PathBuf::from("/b"));
        assert_eq!(bundle_dir(&os(&["-b", "/x", "id"])), PathBuf::from("/x"));
        assert_eq!(bundle_dir(&os(&["--bundle=/y", "id"])), PathBuf::from("/y"));
        assert_eq!(bundle_dir(&os(&["id"])), PathBuf::from("."));
        assert!(!creates_container(&os(&["--root", "/r", "delete", "id"])));
        assert!(!creates_container(&os(&["--root", "/r"])));
    }

    #[test]
    fn installs_the_profile_when_there_is_none() {
        let v = merge_seccomp(None, &ours()).expect("merge");
        assert_eq!(v["defaultAction"], "SCMP_ACT_ALLOW");
        assert_eq!(v["syscalls"][0]["action"], "SCMP_ACT_NOTIFY");
    }

    #[test]
    fn keeps_the_engines_rules_and_default_action() {
        let docker_like = json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 1,
            "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [
                {"names": ["accept", "connect", "read"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["connect"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
                {"names": ["clone"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 2114060288, "op": "SCMP_CMP_MASKED_EQ"}]}
            ]
        });
        let v = merge_seccomp(Some(&docker_like), &ours()).expect("merge");
        assert_eq!(v["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(v["defaultErrnoRet"], 1);
        assert_eq!(v["architectures"], json!(["SCMP_ARCH_X86_64"]));
        assert_eq!(v["listenerPath"], "/run/user/1000/netaccel/netaccel.sock");
        let rules = v["syscalls"].as_array().expect("rules");
        assert_eq!(
            rules[0]["names"],
            json!(["accept", "read"]),
            "connect moved out of the allow list"
        );
        assert_eq!(
            rules[1]["names"],
            json!(["mkdir"]),
            "the emptied connect rule is gone"
        );
        assert_eq!(rules[2]["names"], json!(["clone"]));
        assert_eq!(rules[3]["action"], "SCMP_ACT_NOTIFY");
        assert_eq!(rules.len(), 4);
    }

    #[test]
    fn refuses_another_listener_and_stricter_rules() {
        let other = json!({"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/other.sock"});
        let err = merge_seccomp(Some(&other), &ours()).expect_err("two listeners");
        assert!(err.to_string().contains("/run/other.sock"), "{err}");
        let same = json!({"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/user/1000/netaccel/netaccel.sock"});
        assert!(merge_seccomp(Some(&same), &ours()).is_ok());
        let deny = json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["connect"], "action": "SCMP_ACT_ERRNO"}]});
        let err = merge_seccomp(Some(&deny), &ours()).expect_err("connect denied");
        assert!(err.to_string().contains("SCMP_ACT_ERRNO"), "{err}");
        let conditional = json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["connect"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 3, "op": "SCMP_CMP_EQ"}]}]});
        let err = merge_seccomp(Some(&conditional), &ours()).expect_err("conditional allow");
        assert!(err.to_string().contains("argument conditions"), "{err}");
    }

    #[test]
    fn container_ignore_ranges_come_from_annotation_and_env() {
        let config = json!({
            "annotations": {"netaccel/ignore-subnets": "10.244.0.0/16, 10.96.0.0/16"},
            "process": {"env": ["PATH=/bin", "NETACCEL_IGNORE=10.100.7.0/24"]}
        });
        let nets: Vec<String> = bundle_ignore(&config)
            .expect("parse")
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(nets, ["10.244.0.0/16", "10.96.0.0/16", "10.100.7.0/24"]);
        assert!(bundle_ignore(&json!({})).expect("none").is_empty());
        let bad = json!({"process": {"env": ["NETACCEL_IGNORE=10.0.0.0/33"]}});
        let err = bundle_ignore(&bad).expect_err("bad cidr");
        assert!(
            err.to_string().contains("10.0.0.0/33") && err.to_string().contains("environment"),
            "{err}"
        );
    }

    #[test]
    fn patching_merges_the_bundles_ranges_into_the_metadata() {
        let dir = tempfile::tempdir().expect("dir");
        let config = json!({"process": {"env": ["NETACCEL_IGNORE=10.100.7.0/24"]}, "linux": {}});
        std::fs::write(dir.path().join("config.json"), config.to_string()).expect("write");
        patch_bundle(
            dir.path(),
            Path::new("/run/n.sock"),
            &["10.96.0.0/16".parse().expect("net")],
        )
        .expect("patch");
        let v: Value = serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).expect("read"))
            .expect("json");
        let meta: ContainerSettings = serde_json::from_str(
            v["linux"]["seccomp"]["listenerMetadata"]
                .as_str()
                .expect("metadata"),
        )
        .expect("settings");
        let nets: Vec<String> = meta.ignore.iter().map(ToString::to_string).collect();
        assert_eq!(nets, ["10.96.0.0/16", "10.100.7.0/24"]);
    }

    #[test]
    fn link_names_pick_the_runtime() {
        assert_eq!(
            runtime_from_link_name(OsStr::new("/usr/local/bin/netaccel-runc")),
            Some("runc")
        );
        assert_eq!(runtime_from_link_name(OsStr::new("netaccel-crun")), Some("crun"));
        assert_eq!(runtime_from_link_name(OsStr::new("netaccel")), None);
    }
}
