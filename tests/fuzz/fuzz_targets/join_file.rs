//! What another host or the cluster hands u7s: a join file (copied from
//! the control-plane host), `kubectl get nodes -o json` (a joined node sets
//! its own labels), the node's admin.conf.
#![no_main]

use libfuzzer_sys::fuzz_target;
use u7s::config::{resolve, HostDefaults, Vars};
use u7s::kubeadm;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    match which % 3 {
        0 => {
            if let Ok(join) = kubeadm::parse_join_file(text) {
                let host = HostDefaults {
                    hostname: "beta".into(),
                    default_route_ip: Some("192.168.1.20".parse().expect("ip")),
                    current_dir: "/home/bob/cluster".into(),
                };
                let c = resolve(&Vars::layered(&[], |_| None, &[]), &host).expect("config");
                if kubeadm::check_join(&c, &join).is_ok() {
                    let _ = kubeadm::kubeadm_join_commands(&join);
                }
            }
        }
        1 => {
            let _ = kubeadm::sync_external_ip_commands(text);
        }
        _ => {
            let _ = kubeadm::rewrite_kubeconfig(text, 6443);
        }
    }
});
