//! End-to-end: the bypass4netnsd-compatible API driven the way nerdctl's
//! createRuntime/postStop hooks drive it (POST, a container whose
//! listenerPath is the posted socketPath, DELETE), plus bad requests.

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use rootless_lab::container::CONTAINER_ADDR;
use rootless_lab::{workspace_bin, Container, ContainerConfig, DaemonProcess, Lab, PeerHost};
use serde_json::{json, Value};

/// One HTTP/1.1 request over a unix socket; returns status and body.
fn http(socket: &Path, method: &str, path: &str, body: &str) -> (u16, String) {
    rootless_lab::unix_http(socket, method, path, body).expect("API request")
}

fn spec(id: &str, socket: &Path, ignore: &[&str]) -> String {
    json!({"id": id, "socketPath": socket, "pidFilePath": "", "logFilePath": "",
           "portMapping": [], "ignoreSubnets": ignore})
    .to_string()
}

#[test]
fn nerdctl_style_post_run_delete_and_bad_requests() {
    let test = "nerdctl_style_post_run_delete_and_bad_requests";
    let Some(lab) = Lab::new_or_skip(test) else { return };
    let labnet = lab
        .install_bin(&workspace_bin("labnet").expect("labnet"))
        .expect("install");
    let peer = PeerHost::create().expect("peer");
    let d = DaemonProcess::start(&lab, &workspace_bin("netaccel").expect("netaccel"), &[]).expect("daemon");
    let api = lab.runtime_dir().join("bypass4netnsd.sock");
    let (_server, addr) = peer.echo_server(&labnet, 7901).expect("peer echo server");

    assert_eq!(http(&api, "GET", "/v1/bypass", ""), (200, "[]".into()));

    // nerdctl: listenerPath = $XDG_RUNTIME_DIR/bypass4netns/<first 15 of id>.sock
    let dir = lab.runtime_dir().join("bypass4netns");
    let fast = dir.join("c0ffee000000001.sock");
    let (code, body) = http(
        &api,
        "POST",
        "/v1/bypass",
        &spec("c0ffee0000000011", &fast, &["auto"]),
    );
    assert_eq!(code, 201, "{body}");
    let status: Value = serde_json::from_str(&body).expect("BypassStatus");
    assert_eq!(status["id"], "c0ffee0000000011");
    assert!(status["pid"].as_u64().unwrap_or(0) > 0, "{status}");
    assert_eq!(status["spec"]["socketPath"], fast.to_str().expect("path"));
    let slow = dir.join("c0ffee000000002.sock");
    let (code, body) = http(
        &api,
        "POST",
        "/v1/bypass",
        &spec("c0ffee0000000022", &slow, &["auto", &peer.subnet]),
    );
    assert_eq!(code, 201, "{body}");

    let run_via = |socket: &Path| -> Value {
        let mut profile = d.profile(&lab, &[]).expect("profile");
        profile["listenerPath"] = json!(socket);
        let config = ContainerConfig {
            seccomp: Some(profile),
            ..Default::default()
        };
        let out = Container::run(
            &lab,
            config,
            &["/lab/labnet", "connect", &addr],
            Duration::from_secs(60),
        )
        .expect("container");
        serde_json::from_str(out.stdout.lines().last().unwrap_or_default())
            .unwrap_or_else(|e| panic!("{e}: {out:?}"))
    };
    let r = run_via(&fast);
    assert_eq!(r["echo_intact"], true, "{r}");
    assert!(
        r["local"]
            .as_str()
            .unwrap_or_default()
            .starts_with(&peer.host_addr.to_string()),
        "{r}"
    );
    // The second bypass ignores the peer's subnet: slirp4netns carries it.
    let r = run_via(&slow);
    assert_eq!(r["echo_intact"], true, "{r}");
    assert!(
        r["local"]
            .as_str()
            .unwrap_or_default()
            .starts_with(CONTAINER_ADDR),
        "{r}"
    );
    assert_eq!(d.bypassed_to(&addr), 1, "daemon log:\n{}", d.log_text());

    let (code, body) = http(&api, "GET", "/v1/bypass", "");
    let ids: Vec<Value> = serde_json::from_str::<Vec<Value>>(&body)
        .expect("list")
        .into_iter()
        .map(|s| s["id"].clone())
        .collect();
    assert_eq!(
        (code, ids),
        (200, vec![json!("c0ffee0000000011"), json!("c0ffee0000000022")])
    );

    // Bad requests: 400 with a message that says what is wrong.
    let bad = |method: &str, path: &str, body: &str, needle: &str| {
        let (code, text) = http(&api, method, path, body);
        assert_eq!(code, 400, "{method} {path} {body}: {text}");
        let msg: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert!(
            msg["message"].as_str().unwrap_or_default().contains(needle),
            "{msg}"
        );
    };
    bad("POST", "/v1/bypass", "{not json", "invalid BypassSpec JSON");
    bad(
        "POST",
        "/v1/bypass",
        &spec("c0ffee0000000011", &fast, &[]),
        "already exists",
    );
    bad("POST", "/v1/bypass", &spec("", &fast, &[]), "id is empty");
    bad(
        "POST",
        "/v1/bypass",
        &spec("x1", Path::new("/tmp/evil.sock"), &[]),
        "must be an absolute path inside",
    );
    bad(
        "POST",
        "/v1/bypass",
        &spec("x2", &dir.join("../../x.sock"), &[]),
        "must be an absolute path inside",
    );
    bad(
        "POST",
        "/v1/bypass",
        &spec("x3", &dir.join("x3.sock"), &["300.0.0.0/8"]),
        "neither a CIDR",
    );
    bad("DELETE", "/v1/bypass/nope", "", "not found");

    assert_eq!(http(&api, "DELETE", "/v1/bypass/c0ffee0000000011", "").0, 200);
    assert_eq!(http(&api, "DELETE", "/v1/bypass/c0ffee0000000022", "").0, 200);
    assert!(!fast.exists() && !slow.exists(), "sockets left behind");
    assert_eq!(http(&api, "GET", "/v1/bypass", ""), (200, "[]".into()));
    assert!(!dir.join("x3.sock").exists(), "a refused POST left a socket");
}

#[test]
fn port_mappings_posted_by_nerdctl_publish_through_host_listeners() {
    let test = "port_mappings_posted_by_nerdctl_publish_through_host_listeners";
    let Some(lab) = Lab::new_or_skip(test) else { return };
    lab.install_bin(&workspace_bin("labnet").expect("labnet"))
        .expect("install");
    let d = DaemonProcess::start(&lab, &workspace_bin("netaccel").expect("netaccel"), &[]).expect("daemon");
    let api = lab.runtime_dir().join("bypass4netnsd.sock");
    let socket = lab
        .runtime_dir()
        .join("bypass4netns")
        .join("c0ffee000000003.sock");
    let mapping = json!([{"protos": ["tcp"], "parentIP": "127.0.0.1", "parentPort": 17820,
                          "childIP": "", "childPort": 80}]);
    let body = json!({"id": "c0ffee0000000033", "socketPath": socket, "portMapping": mapping,
                      "ignoreSubnets": ["auto"], "ignoreBind": false});
    let (code, text) = http(&api, "POST", "/v1/bypass", &body.to_string());
    assert_eq!(code, 201, "{text}");

    // nerdctl's own profile notifies bind and carries no metadata: the
    // mappings come from the API.
    let mut profile = d.profile_with(&lab, &["--publish", "1:1"]).expect("profile");
    profile["listenerPath"] = json!(socket);
    profile["listenerMetadata"] = json!("");
    let config = ContainerConfig {
        seccomp: Some(profile),
        ..Default::default()
    };
    let c = Container::start(
        &lab,
        config,
        &["/lab/labnet", "serve", "0.0.0.0:80", "--count", "1"],
    )
    .expect("container starts");
    c.wait_for_line("listening", Duration::from_secs(15))
        .expect("listening");
    let mut conn =
        std::net::TcpStream::connect("127.0.0.1:17820").expect("host connects to the published port");
    conn.write_all(b"through the host listener").expect("send");
    conn.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let mut back = String::new();
    conn.read_to_string(&mut back).expect("echo");
    assert_eq!(back, "through the host listener");
    let out = c.wait(Duration::from_secs(20)).expect("container exits");
    assert!(
        out.stdout.contains("\"listening\":\"127.0.0.1:17820\""),
        "{out:?}"
    );
    assert!(out.ok(), "{out:?}");

    // A mapping nerdctl could never send is refused with the reason.
    let bad = json!({"id": "c0ffee0000000044", "socketPath": lab.runtime_dir().join("bypass4netns/x.sock"),
                     "portMapping": [{"protos": ["sctp"], "parentPort": 1, "childPort": 1}]});
    let (code, text) = http(&api, "POST", "/v1/bypass", &bad.to_string());
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("portMapping") && text.contains("sctp"), "{text}");
    assert_eq!(http(&api, "DELETE", "/v1/bypass/c0ffee0000000033", "").0, 200);
}
