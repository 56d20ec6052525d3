//! `netaccel runtime` / `netaccel-runc` as an engine calls them: pass-through
//! for everything but create/run, a merged profile for those, and a refusal
//! (with the bundle untouched) when the engine's profile cannot be merged.

use rootless_lab::output_text;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

const NETACCEL: &str = env!("CARGO_BIN_EXE_netaccel");

fn bundle_with(seccomp: Option<serde_json::Value>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = serde_json::json!({"ociVersion": "1.0.2", "process": {"args": ["sh"]}, "linux": {}});
    if let Some(s) = seccomp {
        config["linux"]["seccomp"] = s;
    }
    std::fs::write(dir.path().join("config.json"), config.to_string()).expect("config");
    dir
}

fn config_of(bundle: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(bundle.join("config.json")).expect("read")).expect("json")
}

#[test]
fn other_subcommands_pass_through_untouched() {
    let out = Command::new(NETACCEL)
        .args(["runtime", "--", "echo", "--root", "/r", "state", "c1"])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "--root /r state c1\n");
}

#[test]
fn create_merges_the_profile_then_runs_the_runtime() {
    let bundle = bundle_with(None);
    let out = Command::new(NETACCEL)
        .args([
            "runtime",
            "--socket",
            "/run/user/1000/netaccel/netaccel.sock",
            "--ignore",
            "10.96.0.0/16",
            "--",
        ])
        .args(["echo", "create", "--bundle"])
        .arg(bundle.path())
        .arg("c1")
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("create --bundle"),
        "runtime not executed"
    );
    let seccomp = &config_of(bundle.path())["linux"]["seccomp"];
    assert_eq!(seccomp["listenerPath"], "/run/user/1000/netaccel/netaccel.sock");
    assert_eq!(seccomp["listenerMetadata"], r#"{"ignore":["10.96.0.0/16"]}"#);
    assert_eq!(seccomp["syscalls"][0]["action"], "SCMP_ACT_NOTIFY");
}

#[test]
fn an_unmergeable_profile_is_refused_and_left_as_it_was() {
    let theirs = serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/other.sock"});
    let bundle = bundle_with(Some(theirs.clone()));
    let before = std::fs::read(bundle.path().join("config.json")).expect("read");
    let out = Command::new(NETACCEL)
        .args(["runtime", "--socket", "/run/x.sock", "--", "echo", "run", "-b"])
        .arg(bundle.path())
        .arg("c1")
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(
        output_text(&out).contains("/run/other.sock"),
        "{}",
        output_text(&out)
    );
    assert!(
        out.stdout.is_empty(),
        "the runtime ran anyway: {}",
        output_text(&out)
    );
    assert_eq!(
        std::fs::read(bundle.path().join("config.json")).expect("read"),
        before
    );
}

#[test]
fn the_netaccel_runc_link_wraps_runc_from_path() {
    let bin = tempfile::tempdir().expect("tempdir");
    let fake = bin.path().join("runc");
    std::fs::write(&fake, "#!/bin/sh\necho \"fake runc: $*\"\n").expect("fake runc");
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let link = bin.path().join("netaccel-runc");
    std::os::unix::fs::symlink(NETACCEL, &link).expect("link");
    let bundle = bundle_with(None);
    let out = Command::new(&link)
        .args(["--root", "/r", "create", "--bundle"])
        .arg(bundle.path())
        .arg("c1")
        .env("PATH", bin.path())
        .env("NETACCEL_SOCKET", "/run/y.sock")
        .env("NETACCEL_IGNORE", "10.244.0.0/16, 10.96.0.0/16")
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("fake runc: --root /r create --bundle"));
    let seccomp = &config_of(bundle.path())["linux"]["seccomp"];
    assert_eq!(seccomp["listenerPath"], "/run/y.sock");
    assert_eq!(
        seccomp["listenerMetadata"],
        r#"{"ignore":["10.244.0.0/16","10.96.0.0/16"]}"#
    );
    let bad = Command::new(&link)
        .args(["create", "--bundle"])
        .arg(bundle.path())
        .arg("c2")
        .env("PATH", bin.path())
        .env("NETACCEL_IGNORE", "not-a-cidr")
        .output()
        .expect("run");
    assert!(!bad.status.success());
    assert!(
        output_text(&bad).contains("NETACCEL_IGNORE"),
        "{}",
        output_text(&bad)
    );
}
