//! What a container CLI returns, read the way both the docker CLI and
//! nerdctl answer: the driver never asks which binary it runs, it handles
//! each answer. Tested against the real nerdctl 1.7.7 captures in
//! `orchestrator/tests/fixtures/nerdctl-1.7.7` (see the README there).

use ipnet::Ipv4Net;
use serde_json::Value;

use super::super::{AccelMethod, ContainerInfo};

/// Networks every engine lists but that are no bridge of their own and have
/// no subnet; nerdctl refuses to inspect them ("pseudo network not allowed").
pub const PSEUDO_NETWORKS: &[&str] = &["host", "none"];

/// The names printed by `network ls --format {{.Name}}`, without the
/// pseudo networks.
pub fn network_names(stdout: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !PSEUDO_NETWORKS.contains(l))
        .map(str::to_owned)
        .collect()
}

/// Every network's IPv4 subnets from `network inspect NAME…`.
pub fn network_subnets(stdout: &[u8]) -> Result<Vec<(String, Vec<Ipv4Net>)>, String> {
    let v: Value = serde_json::from_slice(stdout).map_err(|e| e.to_string())?;
    let nets = v.as_array().ok_or("not a JSON list")?;
    Ok(nets
        .iter()
        .map(|n| {
            let subnets = n["IPAM"]["Config"]
                .as_array()
                .map(|c| {
                    c.iter()
                        .filter_map(|x| x["Subnet"].as_str()?.parse().ok())
                        .collect()
                })
                .unwrap_or_default();
            (n["Name"].as_str().unwrap_or_default().to_owned(), subnets)
        })
        .collect())
}

/// The container from `container inspect NAME`. The docker CLI names the
/// image in `Config.Image` (its top-level `Image` is the image id); nerdctl
/// has no `Config.Image` and no `HostConfig` and puts the name at the top.
pub fn container_info(stdout: &[u8]) -> Result<ContainerInfo, String> {
    let v: Value = serde_json::from_slice(stdout).map_err(|e| e.to_string())?;
    let c = v.get(0).ok_or("empty inspect answer")?;
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let image = c["Config"]["Image"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map_or_else(|| text(&c["Image"]), str::to_owned);
    Ok(ContainerInfo {
        running: c["State"]["Running"].as_bool().unwrap_or(false),
        status: text(&c["State"]["Status"]),
        image,
        runtime: text(&c["HostConfig"]["Runtime"]),
        labels: c["Config"]["Labels"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), text(v))).collect())
            .unwrap_or_default(),
    })
}

/// Whether `rm --force NAME` removed something. nerdctl exits 0 for a
/// missing container (with an error line on stderr) and prints nothing on
/// stdout; both CLIs print the name of what they removed.
pub fn removed(stdout: &[u8]) -> bool {
    !String::from_utf8_lossy(stdout).trim().is_empty()
}

/// The exec'd process's exit status from the CLI's own. nerdctl exits 1
/// whatever the process returned and says the real status on stderr
/// (`level=fatal msg="exec failed with exit code 4"`), or that the runtime
/// could not start the command at all; the docker CLI passes the status
/// through and never prints these lines. Failing starts map to the shell's
/// 127 (no such command) and 126 (found but not runnable), as docker's do.
pub fn exec_status(cli_status: i64, stderr: &str) -> i64 {
    if cli_status != 1 {
        return cli_status;
    }
    let Some(msg) = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .filter(|l| l.contains("level=fatal"))
        .and_then(|l| l.split_once("msg=\""))
        .map(|(_, m)| m)
    else {
        return cli_status;
    };
    if let Some(rest) = msg.strip_prefix("exec failed with exit code ") {
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        return digits.parse().unwrap_or(cli_status);
    }
    if msg.contains("OCI runtime exec failed") {
        let missing = ["no such file or directory", "executable file not found"];
        return if missing.iter().any(|m| msg.contains(m)) {
            127
        } else {
            126
        };
    }
    cli_status
}

/// What `version --format {{json .}}` says about the engine behind the CLI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliVersion {
    /// The engine's version as users name it: the Docker daemon's, or
    /// nerdctl's own (its "server" is containerd, listed in `components`).
    pub version: String,
    /// For nerdctl, what answers behind it, with versions ("containerd
    /// 1.6.20"); empty for a Docker daemon, whose own version is the one.
    pub components: Vec<String>,
    pub accel: AccelMethod,
    /// Why `build` cannot work here, with the fix.
    pub build_blocker: Option<String>,
}

/// Reads the CLI's version answer. A Docker daemon reports its own
/// `Server.Version` and runs containers with `--runtime`; nerdctl drives
/// containerd directly (no server version) and switches bypass4netns on
/// with a label (1.x) or annotations (≥ 2.0), and builds through BuildKit's
/// `buildctl`, which it lists among its client components.
pub fn cli_version(stdout: &[u8]) -> Result<CliVersion, String> {
    let v: Value = serde_json::from_slice(stdout).map_err(|e| e.to_string())?;
    let components = |side: &Value| -> Vec<(String, String)> {
        side["Components"]
            .as_array()
            .map(|c| {
                c.iter()
                    .map(|x| {
                        (
                            x["Name"].as_str().unwrap_or_default().to_owned(),
                            x["Version"].as_str().unwrap_or_default().to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    if let Some(daemon) = v["Server"]["Version"].as_str().filter(|s| !s.is_empty()) {
        return Ok(CliVersion {
            version: daemon.to_owned(),
            components: Vec::new(),
            accel: AccelMethod::Runtime,
            build_blocker: None,
        });
    }
    let client = v["Client"]["Version"]
        .as_str()
        .filter(|s| !s.is_empty())
        .ok_or("neither Server.Version nor Client.Version in the answer")?;
    let major: u32 = client
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .ok_or_else(|| format!("unreadable client version {client:?}"))?;
    let accel = if major >= 2 {
        AccelMethod::NerdctlAnnotations
    } else {
        AccelMethod::NerdctlLabel
    };
    let buildctl = components(&v["Client"])
        .into_iter()
        .find(|(n, _)| n == "buildctl");
    let build_blocker = match buildctl {
        Some((_, ver)) if !ver.is_empty() => None,
        _ => Some(format!(
            "nerdctl {client} builds images with BuildKit, and buildctl was not found: install BuildKit (buildctl and buildkitd; containerd-rootless-setuptool.sh install-buildkit starts it for your user), or build the node image elsewhere, `nerdctl load` it and pass --image"
        )),
    };
    Ok(CliVersion {
        version: client.to_owned(),
        components: components(&v["Server"])
            .into_iter()
            .map(|(n, ver)| format!("{n} {ver}"))
            .collect(),
        accel,
        build_blocker,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One capture of the real nerdctl 1.7.7 (command, output, status).
    struct Capture {
        stdout: Vec<u8>,
        stderr: String,
        exit: i64,
    }

    fn fixture_dir() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nerdctl-1.7.7")
    }

    fn capture(name: &str) -> Capture {
        let read = |ext: &str| {
            let p = fixture_dir().join(format!("{name}.{ext}"));
            std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        };
        Capture {
            stdout: read("stdout"),
            stderr: String::from_utf8_lossy(&read("stderr")).into_owned(),
            exit: String::from_utf8_lossy(&read("exit"))
                .trim()
                .parse()
                .expect("exit status"),
        }
    }

    #[test]
    fn the_fixtures_are_the_shared_captures_unedited() {
        // The repository carries a copy so tests run from any clone; where
        // the team's shared folder is beside it, the copy must be identical.
        let shared =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/nerdctl-1.7.7");
        let Ok(entries) = std::fs::read_dir(&shared) else {
            eprintln!("no {} here; nothing to compare", shared.display());
            return;
        };
        let mut compared = 0;
        for e in entries {
            let e = e.expect("entry");
            let ours = fixture_dir().join(e.file_name());
            assert_eq!(
                std::fs::read(e.path()).expect("shared"),
                std::fs::read(&ours).unwrap_or_default(),
                "{} differs from {}",
                ours.display(),
                e.path().display()
            );
            compared += 1;
        }
        assert!(compared > 80, "only {compared} files");
    }

    #[test]
    fn pseudo_networks_are_left_out_of_the_inspect() {
        let ls = capture("network-ls");
        assert_eq!(network_names(&ls.stdout), ["bridge"]);
        // What nerdctl does when they are not left out.
        let pseudo = capture("network-inspect-pseudo");
        assert_eq!(pseudo.exit, 1);
        assert!(pseudo.stderr.contains("pseudo network not allowed: host"));
        // docker lists the same two names (and would inspect them, empty).
        assert_eq!(
            network_names(b"bridge\nhost\nnone\nu7s-net\n"),
            ["bridge", "u7s-net"]
        );
    }

    #[test]
    fn network_subnets_are_read_from_nerdctl_inspect() {
        let bridge = network_subnets(&capture("network-inspect-bridge").stdout).expect("bridge");
        assert_eq!(
            bridge,
            [("bridge".to_owned(), vec!["10.4.0.0/24".parse().expect("net")])]
        );
        let custom = network_subnets(&capture("network-inspect-custom").stdout).expect("custom");
        assert_eq!(
            custom,
            [("fx-net".to_owned(), vec!["10.123.45.0/24".parse().expect("net")])]
        );
        assert!(network_subnets(b"{").is_err());
    }

    #[test]
    fn container_image_comes_from_the_top_level_on_nerdctl() {
        let c = container_info(&capture("inspect-container").stdout).expect("inspect");
        assert_eq!(c.image, "docker.io/local/busybox:1");
        assert!(c.running);
        assert_eq!(c.status, "running");
        assert_eq!(c.runtime, "", "nerdctl has no HostConfig");
        assert_eq!(c.labels["io.u7s.project"], "fx");
        // The docker CLI's shape: the name in Config.Image, an id on top.
        let docker = br#"[{"Image":"sha256:0123","Config":{"Image":"u7s-node:abc","Labels":{}},
            "State":{"Running":false,"Status":"exited"},"HostConfig":{"Runtime":"netaccel"}}]"#;
        let c = container_info(docker).expect("docker");
        assert_eq!(
            (c.image.as_str(), c.runtime.as_str()),
            ("u7s-node:abc", "netaccel")
        );
        assert!(container_info(b"[]").is_err());
    }

    #[test]
    fn rm_of_a_missing_container_is_not_a_removal() {
        let missing = capture("rm-missing");
        assert_eq!(missing.exit, 0, "nerdctl exits 0 for a missing container");
        assert!(!removed(&missing.stdout));
        assert!(removed(&capture("rm").stdout));
    }

    #[test]
    fn exec_status_is_recovered_from_nerdctl_stderr() {
        let exit4 = capture("exec-exit4");
        assert_eq!(exit4.exit, 1);
        assert_eq!(exec_status(exit4.exit, &exit4.stderr), 4);
        let missing = capture("exec-missing-cmd");
        assert_eq!(exec_status(missing.exit, &missing.stderr), 127);
        let piped = capture("exec-stdin");
        assert_eq!(exec_status(piped.exit, &piped.stderr), 0);
        assert_eq!(piped.stdout, b"piped\n");
        // A process that itself exits 1, and the docker CLI passing a
        // status through, are left alone.
        assert_eq!(exec_status(1, "some error of the program\n"), 1);
        assert_eq!(exec_status(4, ""), 4);
        assert_eq!(
            exec_status(
                1,
                "level=fatal msg=\"OCI runtime exec failed: exec failed: permission denied: unknown\""
            ),
            126
        );
    }

    #[test]
    fn nerdctl_version_names_nerdctl_its_accel_switch_and_the_missing_buildkit() {
        let v = cli_version(&capture("version").stdout).expect("version");
        assert_eq!(v.version, "v1.7.7", "not containerd's version");
        assert_eq!(v.components, ["containerd 1.6.20~ds1", "runc 1.1.5+ds1"]);
        assert_eq!(v.accel, AccelMethod::NerdctlLabel);
        let blocker = v.build_blocker.expect("no buildctl in the capture");
        assert!(
            blocker.contains("BuildKit") && blocker.contains("--image"),
            "{blocker}"
        );
        // The info answer's ServerVersion is containerd's: not used.
        let info: Value = serde_json::from_slice(&capture("info").stdout).expect("info");
        assert_eq!(info["ServerVersion"], "1.6.20~ds1");
        // nerdctl 2 with BuildKit installed.
        let two = br#"{"Client":{"Version":"v2.1.3","Components":[{"Name":"buildctl","Version":"v0.23.2"}]},
            "Server":{"Components":[{"Name":"containerd","Version":"v2.1.4"}]}}"#;
        let v = cli_version(two).expect("v2");
        assert_eq!(
            (v.accel, v.build_blocker),
            (AccelMethod::NerdctlAnnotations, None)
        );
        // The docker CLI: the daemon's version, the wrapper runtime.
        let docker = br#"{"Client":{"Version":"20.10.24+dfsg1"},"Server":{"Version":"20.10.24+dfsg1",
            "Components":[{"Name":"Engine","Version":"20.10.24+dfsg1"}]}}"#;
        let v = cli_version(docker).expect("docker");
        assert_eq!(
            (v.version.as_str(), v.accel),
            ("20.10.24+dfsg1", AccelMethod::Runtime)
        );
        assert!(v.components.is_empty(), "the daemon's version is the engine's");
        assert!(cli_version(b"{}").is_err());
    }
}
