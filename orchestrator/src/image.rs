//! The node image: the build context shipped with u7s (Dockerfile and
//! entrypoint, compiled into the binary so an installed u7s needs no
//! checkout) or a user's own directory, tagged by a hash of its content so
//! `up` rebuilds exactly when something changed.

use std::collections::BTreeMap;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::config::ImageSource;
use crate::engine::ContextFile;

/// kind's node image for Kubernetes 1.35.0, pinned by the digest kind's
/// release (v0.31.0) publishes for it.
pub const DEFAULT_BASE_IMAGE: &str =
    "docker.io/kindest/node:v1.35.0@sha256:452d707d4862f52530247495d180205e029056831160e22870e37e3f6c1ac31f";
const DOCKERFILE: &[u8] = include_bytes!("../node-image/Dockerfile");
const ENTRYPOINT: &[u8] = include_bytes!("../node-image/u7s-entrypoint.sh");
const FLANNEL_UDEV_RULE: &[u8] = include_bytes!("../node-image/90-u7s-flannel.rules");

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot read the node image directory {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path} has no Dockerfile: U7S_NODE_IMAGE_DIR must be a build context")]
    NoDockerfile { path: String },
}

/// A build: its context and build arguments.
#[derive(Debug, Clone)]
pub struct ImageBuild {
    pub files: Vec<ContextFile>,
    pub build_args: BTreeMap<String, String>,
}

/// The node's image: its name (a build's content-derived tag, or the
/// prebuilt image) and the build that makes it, if any.
#[derive(Debug, Clone)]
pub struct NodeImage {
    pub name: String,
    pub build: Option<ImageBuild>,
}

/// The shipped context.
pub fn shipped_context() -> Vec<ContextFile> {
    vec![
        ContextFile {
            path: "Dockerfile".into(),
            mode: 0o644,
            content: DOCKERFILE.to_vec(),
        },
        ContextFile {
            path: "u7s-entrypoint.sh".into(),
            mode: 0o755,
            content: ENTRYPOINT.to_vec(),
        },
        ContextFile {
            path: "90-u7s-flannel.rules".into(),
            mode: 0o644,
            content: FLANNEL_UDEV_RULE.to_vec(),
        },
    ]
}

/// Every regular file under `dir`, with relative paths (sorted, so the tag
/// does not depend on directory order).
pub fn read_context_dir(dir: &Path) -> Result<Vec<ContextFile>, ImageError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |source| ImageError::Read {
        path: dir.display().to_string(),
        source,
    };
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).map_err(err)? {
            let entry = entry.map_err(err)?;
            let meta = entry.metadata().map_err(err)?;
            let path = entry.path();
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                let rel = path.strip_prefix(dir).unwrap_or(&path).display().to_string();
                out.push(ContextFile {
                    path: rel,
                    mode: meta.permissions().mode() & 0o7777,
                    content: std::fs::read(&path).map_err(err)?,
                });
            }
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    if !out.iter().any(|f| f.path == "Dockerfile") {
        return Err(ImageError::NoDockerfile {
            path: dir.display().to_string(),
        });
    }
    Ok(out)
}

/// The image for `source`, with its build unless it is prebuilt.
pub fn plan(source: &ImageSource) -> Result<NodeImage, ImageError> {
    let (base, context_dir) = match source {
        ImageSource::Prebuilt(name) => {
            return Ok(NodeImage {
                name: name.clone(),
                build: None,
            })
        }
        ImageSource::Build { base, context_dir } => (base, context_dir),
    };
    let files = match context_dir {
        Some(d) => read_context_dir(d)?,
        None => shipped_context(),
    };
    let mut build_args = BTreeMap::new();
    if context_dir.is_none() || base.is_some() {
        build_args.insert(
            "BASE_IMAGE".to_owned(),
            base.clone().unwrap_or_else(|| DEFAULT_BASE_IMAGE.to_owned()),
        );
    }
    let mut h = Sha256::new();
    for f in &files {
        h.update(f.path.as_bytes());
        h.update([0]);
        h.update(f.mode.to_le_bytes());
        h.update((f.content.len() as u64).to_le_bytes());
        h.update(&f.content);
    }
    for (k, v) in &build_args {
        h.update(format!("{k}={v}\n").as_bytes());
    }
    let digest = h.finalize();
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    Ok(NodeImage {
        name: format!("localhost/u7s-node:{hex}"),
        build: Some(ImageBuild { files, build_args }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_context_builds_from_kind_with_our_entrypoint() {
        let img = plan(&ImageSource::Build {
            base: None,
            context_dir: None,
        })
        .expect("plan");
        let b = img.build.expect("a build");
        let dockerfile = String::from_utf8_lossy(&b.files[0].content).into_owned();
        assert!(dockerfile.contains("FROM ${BASE_IMAGE}"));
        assert!(dockerfile.contains("ENTRYPOINT [\"/usr/local/bin/u7s-entrypoint.sh\""));
        assert_eq!(b.build_args["BASE_IMAGE"], DEFAULT_BASE_IMAGE);
        assert_eq!(b.files[1].mode, 0o755);
        assert!(img.name.starts_with("localhost/u7s-node:"));
    }

    /// Runs the shipped entrypoint with `true` as the base image's command,
    /// on a kubelet defaults file of our own.
    fn run_entrypoint(defaults: &std::path::Path, host_ip: &str) -> String {
        let dir = tempfile::tempdir().expect("dir");
        run_entrypoint_with(defaults, host_ip, &[("U7S_VXLAN_MARKER", &dir.path().join("m"))]);
        std::fs::read_to_string(defaults).expect("defaults written")
    }

    fn run_entrypoint_with(defaults: &std::path::Path, host_ip: &str, env: &[(&str, &std::path::Path)]) {
        let dir = tempfile::tempdir().expect("dir");
        let script = dir.path().join("u7s-entrypoint.sh");
        std::fs::write(&script, ENTRYPOINT).expect("write");
        let mut cmd = std::process::Command::new("sh");
        cmd.arg(&script)
            .arg("true")
            .env("U7S_HOST_IP", host_ip)
            .env("U7S_KUBELET_DEFAULTS", defaults);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let status = cmd.status().expect("sh runs");
        assert!(status.success(), "entrypoint failed: {status}");
    }

    #[test]
    fn a_rootless_node_computes_vxlan_checksums_in_software() {
        let dir = tempfile::tempdir().expect("dir");
        let defaults = dir.path().join("kubelet");
        let marker = dir.path().join("run/u7s-vxlan-sw-checksum");
        let map = dir.path().join("uid_map");
        let with_map = |uid_map: &str, offload: Option<&str>| -> bool {
            std::fs::write(&map, uid_map).expect("write");
            let off = dir.path().join(offload.unwrap_or("unset"));
            let mut env: Vec<(&str, &std::path::Path)> =
                vec![("U7S_VXLAN_MARKER", &marker), ("U7S_UID_MAP", &map)];
            if offload.is_some() {
                std::fs::write(&off, "").expect("write");
                env.push(("U7S_VXLAN_TX_CHECKSUM_OFFLOAD", Path::new("1")));
            }
            run_entrypoint_with(&defaults, "10.0.0.5", &env);
            marker.exists()
        };
        // A rootless engine's user namespace (what /proc/self/uid_map shows in its node).
        assert!(with_map(
            "         0       1000          1\n         1     100000      65536\n",
            None
        ));
        assert!(
            !with_map("         0          0 4294967295\n", None),
            "a rootful node keeps the offload"
        );
        assert!(
            !with_map("         0       1000          1\n", Some("x")),
            "U7S_VXLAN_TX_CHECKSUM_OFFLOAD=1 keeps it"
        );
        // The rule acts on that marker, on flannel.1, with ethtool (installed in the image).
        let rule = String::from_utf8_lossy(FLANNEL_UDEV_RULE);
        let line = rule.lines().find(|l| !l.starts_with('#')).expect("a rule");
        assert!(line.contains(r#"ENV{INTERFACE}=="flannel.1""#), "{line}");
        assert!(line.contains("test ! -e /run/u7s-vxlan-sw-checksum"), "{line}");
        assert!(
            line.contains("ethtool -K flannel.1 tx-checksum-ip-generic off"),
            "{line}"
        );
        let dockerfile = String::from_utf8_lossy(DOCKERFILE);
        assert!(
            dockerfile.contains("COPY 90-u7s-flannel.rules /etc/udev/rules.d/"),
            "{dockerfile}"
        );
        assert!(dockerfile.contains(" ethtool"), "ethtool is installed");
    }

    #[test]
    fn every_download_of_the_node_image_is_checked_and_the_versions_are_current() {
        let dockerfile = String::from_utf8_lossy(DOCKERFILE);
        for (arg, value) in [
            ("CNI_PLUGINS_VERSION", "v1.9.0"),
            ("HELM_VERSION", "v4.0.4"),
            ("FLANNEL_VERSION", "v0.27.4"),
        ] {
            assert!(dockerfile.contains(&format!("ARG {arg}={value}\n")), "{arg}");
        }
        // Helm and Flannel: the sums Usernetes gen2-v20251218.0 pins; CNI: the
        // release's .sha256 files.
        for (arg, sum) in [
            (
                "HELM_SHA256_AMD64",
                "29454bc351f4433e66c00f5d37841627cbbcc02e4c70a6d796529d355237671c",
            ),
            (
                "HELM_SHA256_ARM64",
                "16b88acc6503d646b7537a298e7389bef469c5cc9ebadf727547abe9f6a35903",
            ),
            (
                "FLANNEL_CHART_SHA256",
                "c1f3c87436192459c1e1bfd23f96a605892f974e47f87324e360a4f43a4268e1",
            ),
            (
                "CNI_PLUGINS_SHA256_AMD64",
                "58c03705426e929658f45a851df15a86d06ef680cacbf3f2dc127731ca265c28",
            ),
            (
                "CNI_PLUGINS_SHA256_ARM64",
                "2596ef56329dd1269026f46b8df262f09ba43c92dbfb940e1e69fbccccd30a29",
            ),
        ] {
            assert!(dockerfile.contains(&format!("ARG {arg}={sum}\n")), "{arg}");
        }
        // Each fetched file is checked before use against a sum kept in the
        // Dockerfile: as many `curl`s as `echo "$SUM  file" | sha256sum -c -`,
        // each naming a pinned ARG, and no checksum file fetched from the
        // site the download comes from.
        let fetched = dockerfile.matches("curl -fsSLo").count();
        let pinned: Vec<&str> = dockerfile
            .lines()
            .filter_map(|l| l.strip_prefix("ARG ")?.split_once('='))
            .filter(|(_, v)| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
            .map(|(name, _)| name)
            .collect();
        // `sum` is picked per architecture from the pinned ARGs.
        let picks: Vec<&str> = dockerfile
            .split(" sum=\"$")
            .skip(1)
            .map(|rest| rest.split('"').next().unwrap_or_default())
            .collect();
        assert_eq!(picks.len(), 4, "amd64 and arm64 for Helm and CNI: {dockerfile}");
        assert!(picks.iter().all(|p| pinned.contains(p)), "{picks:?} ⊄ {pinned:?}");
        let checks: Vec<&str> = dockerfile.lines().filter(|l| l.contains("sha256sum")).collect();
        assert_eq!(fetched, 3, "{dockerfile}");
        assert_eq!(checks.len(), fetched, "{dockerfile}");
        for check in checks {
            let var = check
                .trim()
                .strip_prefix("echo \"$")
                .filter(|rest| rest.contains("| sha256sum -c -"))
                .and_then(|rest| rest.split(' ').next())
                .unwrap_or_else(|| panic!("{check}: not `echo \"$SUM  file\" | sha256sum -c -`"));
            assert!(var == "sum" || pinned.contains(&var), "{check}: not a pinned sum");
        }
        assert!(
            !dockerfile.contains(".sha256\""),
            "no checksum file is fetched: {dockerfile}"
        );
        assert!(
            !dockerfile.contains("sha256sum -c \"$f"),
            "no checksum file is trusted: {dockerfile}"
        );
    }

    #[test]
    fn the_entrypoint_adds_its_kubelet_flags_to_the_base_images_once() {
        let dir = tempfile::tempdir().expect("dir");
        let defaults = dir.path().join("kubelet");
        // What kind's node image ships.
        std::fs::write(
            &defaults,
            "KUBELET_EXTRA_ARGS=--runtime-cgroups=/system.slice/containerd.service\n",
        )
        .expect("write");
        let ours = "--node-labels=u7s.io/host-ip=10.0.0.5 --cloud-provider=external";
        let first = run_entrypoint(&defaults, "10.0.0.5");
        assert_eq!(
            first,
            format!("KUBELET_EXTRA_ARGS=--runtime-cgroups=/system.slice/containerd.service {ours}\n")
        );
        assert_eq!(
            run_entrypoint(&defaults, "10.0.0.5"),
            first,
            "a restart adds nothing"
        );
        let moved = run_entrypoint(&defaults, "10.0.0.9");
        assert!(
            moved.contains("--runtime-cgroups=/system.slice/containerd.service"),
            "{moved}"
        );
        assert!(
            moved.contains("u7s.io/host-ip=10.0.0.9") && !moved.contains("10.0.0.5"),
            "{moved}"
        );
        std::fs::remove_file(&defaults).expect("rm");
        assert_eq!(
            run_entrypoint(&defaults, "10.0.0.5"),
            format!("KUBELET_EXTRA_ARGS={ours}\n"),
            "a base image without the file"
        );
    }

    #[test]
    fn the_tag_follows_the_content_and_base() {
        let a = plan(&ImageSource::Build {
            base: None,
            context_dir: None,
        })
        .expect("plan");
        let b = plan(&ImageSource::Build {
            base: Some("kindest/node:v1.31.0".into()),
            context_dir: None,
        })
        .expect("plan");
        assert_ne!(a.name, b.name);
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("Dockerfile"), "FROM x\n").expect("write");
        std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
        std::fs::write(dir.path().join("sub/f"), "1").expect("write");
        let src = ImageSource::Build {
            base: None,
            context_dir: Some(dir.path().to_path_buf()),
        };
        let c1 = plan(&src).expect("plan");
        let c1_build = c1.build.as_ref().expect("build");
        assert!(
            c1_build.build_args.is_empty(),
            "a custom context gets no BASE_IMAGE unless asked"
        );
        assert_eq!(
            c1_build.files.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(),
            ["Dockerfile", "sub/f"]
        );
        std::fs::write(dir.path().join("sub/f"), "2").expect("write");
        assert_ne!(plan(&src).expect("plan").name, c1.name);
        let prebuilt = plan(&ImageSource::Prebuilt("x".into())).expect("plan");
        assert_eq!(prebuilt.name, "x");
        assert!(prebuilt.build.is_none());
        let empty = tempfile::tempdir().expect("dir");
        let err = plan(&ImageSource::Build {
            base: None,
            context_dir: Some(empty.path().to_path_buf()),
        })
        .expect_err("no Dockerfile");
        assert!(err.to_string().contains("no Dockerfile"), "{err}");
    }
}
