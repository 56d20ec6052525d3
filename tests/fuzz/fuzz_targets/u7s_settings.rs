//! u7s's settings: a config file (`u7s.env`), the same lines as
//! environment values, resolved into a configuration, and the node
//! container and kubeadm config rendered from it.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use u7s::config::{parse_env_file, resolve, HostDefaults, Vars};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let host = HostDefaults {
        hostname: "alpha".into(),
        default_route_ip: Some("192.168.1.10".parse().expect("ip")),
        current_dir: "/home/alice/cluster".into(),
    };
    let mut layers = Vec::new();
    if let Ok(file) = parse_env_file(Path::new("u7s.env"), text) {
        layers.push(Vars::layered(&file, |_| None, &[]));
    }
    // Each line's KEY=VALUE as an environment variable instead.
    let env: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    layers.push(Vars::layered(&[], |k| env.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone()), &[]));
    for vars in layers {
        if let Ok(c) = resolve(&vars, &host) {
            let spec = u7s::node::NodeSpec::new(&c, "u7s-node:fuzz", Some("netaccel"), |_| true);
            let _ = u7s::engine::cli::create_args(&spec, u7s::engine::AccelMethod::Runtime);
            let _ = u7s::engine::podman::create_with_runtime_args(&spec, "netaccel");
            let _ = u7s::kubeadm::kubeadm_config(&c, u7s::kubeadm::KubeVersion::configured(&c));
        }
    }
});
