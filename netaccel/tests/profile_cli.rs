//! `netaccel profile` as users call it: published ports add the bind rule and
//! its guards and travel in listenerMetadata; bad mappings are refused with
//! the reason and the expected syntax.

use rootless_lab::output_text;
use std::process::{Command, Output};

const NETACCEL: &str = env!("CARGO_BIN_EXE_netaccel");

fn profile(args: &[&str]) -> Output {
    Command::new(NETACCEL)
        .args(["profile", "--socket", "/run/user/1000/netaccel/netaccel.sock"])
        .args(args)
        .output()
        .expect("run netaccel profile")
}

#[test]
fn published_ports_add_bind_and_its_guards() {
    let out = profile(&["-p", "8080:80", "--publish", "127.0.0.1:8053:53/udp"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let names: Vec<&str> = v["syscalls"]
        .as_array()
        .expect("rules")
        .iter()
        .filter_map(|r| r["names"][0].as_str())
        .collect();
    assert_eq!(names, ["connect", "bind", "shutdown", "io_uring_setup"]);
    let meta: serde_json::Value =
        serde_json::from_str(v["listenerMetadata"].as_str().expect("metadata")).expect("metadata json");
    assert_eq!(
        meta["publish"],
        serde_json::json!(["8080:80/tcp", "127.0.0.1:8053:53/udp"])
    );

    let off = profile(&["-p", "8080:80", "--no-bind"]);
    let v: serde_json::Value = serde_json::from_slice(&off.stdout).expect("json");
    assert_eq!(v["syscalls"].as_array().map(Vec::len), Some(1), "connect only");
}

#[test]
fn bad_mappings_are_refused_with_the_reason() {
    let out = profile(&["-p", "80"]);
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("a host port is required"),
        "{}",
        output_text(&out)
    );
    assert!(
        output_text(&out).contains("[hostIP:]hostPort:containerPort"),
        "{}",
        output_text(&out)
    );

    let out = profile(&["-p", "8080:80", "-p", "8081:80"]);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("published twice"),
        "{}",
        output_text(&out)
    );
}
