//! The node container's life: `up` (preflight, image, network, volumes,
//! container), `down`, and `render` (what `up` would make).

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use u7s::config::Config;
use u7s::doctor::Severity;
use u7s::engine::{ContainerInfo, Engine, EngineInfo};
use u7s::node::{self, Names};
use u7s::{accel, image, kubeadm, preflight};

use super::{components, spec, step, Context};

pub async fn up(ctx: &Context, with_accel: bool, rebuild: bool, recreate: bool) -> Result<i32> {
    let c = &ctx.config;
    let engine = ctx.engine().await?;
    let info = engine.info().await?;
    step(format!(
        "engine: {} {}{} at {}{}",
        engine.kind().name(),
        info.version,
        components(&info),
        engine.endpoint(),
        if info.rootless {
            " (rootless)"
        } else {
            " (NOT rootless)"
        }
    ));
    if !info.rootless {
        eprintln!("warning: the engine runs as root; u7s works, but the node is not confined to your user");
    }
    let runtime_name = accel::runtime_name();
    let image = image::plan(&c.image)?;
    let spec = spec(ctx, &image.name, with_accel.then_some(runtime_name.as_str()));

    let name = ctx.container();
    if let Some(existing) = engine.container(&name).await? {
        let changes = node_changes(&existing, c, with_accel, &runtime_name);
        if changes.is_empty() || !recreate {
            if !changes.is_empty() {
                bail!(
                    "the node container {name} was made with other settings ({}); they take a new container: `u7s up --recreate{}` makes it (state volumes stay)",
                    changes.join("; "),
                    if with_accel { " --accel" } else { "" }
                );
            }
            if with_accel {
                start_daemon(c, &info).await?;
            }
            if existing.running {
                step(format!("node {name} is already running"));
                return Ok(0);
            }
            step(format!("starting the existing node container {name}"));
            engine.start_container(&name).await?;
            wait_running(&engine, &name).await?;
            return Ok(0);
        }
        step(format!(
            "recreating the node container {name} ({}); state volumes stay",
            changes.join("; ")
        ));
        engine.remove_container(&name).await?;
    }

    // The checks `doctor` reports, before anything is created, so a
    // refusal leaves nothing behind.
    let intent = preflight::Intent {
        with_accel,
        rebuild,
        node_running: false,
    };
    let facts = preflight::gather(&engine, &info, c, &image, intent).await?;
    let mut blocking = Vec::new();
    for f in preflight::evaluate(c, &facts).into_iter().filter(|f| !f.ok) {
        match f.severity {
            Severity::Warning => eprintln!("warning: {}", f.detail),
            Severity::Blocking => blocking.push(f.detail),
        }
    }
    if !blocking.is_empty() {
        bail!("{}", blocking.join("\nu7s: "));
    }
    if with_accel {
        start_daemon(c, &info).await?;
    }

    if let (Some(b), true) = (&image.build, facts.image.needs_build()) {
        step(format!(
            "building the node image {} (this takes a while)",
            image.name
        ));
        let started = Instant::now();
        let mut progress = |line: &str| println!("    | {line}");
        engine
            .build_image(&b.files, &image.name, &b.build_args, &mut progress)
            .await
            .context("building the node image (no registry reachable? pass --image with a local image)")?;
        step(format!("image built in {:.0?}", started.elapsed()));
    } else if image.build.is_some() {
        step(format!("node image {} is up to date", image.name));
    }

    let ours = Names::network(&c.project);
    let network_exists = facts.own_network.is_some();
    if !network_exists {
        step(format!("creating network {ours} ({})", c.node_subnet));
        engine.create_network(&spec).await?;
    }
    let created = async {
        for v in &spec.volumes {
            engine.create_volume(&v.volume, &c.project).await?;
        }
        step(format!(
            "creating the node container {name} ({}, {})",
            c.node_name, c.node_ip
        ));
        engine.create_container(&spec).await
    };
    if let Err(e) = created.await {
        // Nothing half-made stays behind: the network this run created
        // goes (volumes hold state and stay, as with `down`).
        if !network_exists && engine.remove_network(&ours).await.is_ok() {
            eprintln!("u7s: removed the network {ours} this run created");
        }
        return Err(e.into());
    }
    engine.start_container(&name).await?;
    wait_running(&engine, &name).await?;
    let ports: Vec<String> = spec
        .ports
        .iter()
        .map(|p| format!("{}/{}", p.host_port, p.protocol.name()))
        .collect();
    step(format!(
        "node {} is up: {} on {}, ports {}{}",
        c.node_name,
        c.node_ip,
        spec.network.name,
        ports.join(" "),
        if with_accel { ", fast path on" } else { "" }
    ));
    println!("next: `u7s kubeadm-init` (first host) or `u7s kubeadm-join` (other hosts)");
    Ok(0)
}

/// What differs between an existing node container and the settings.
fn node_changes(existing: &ContainerInfo, c: &Config, with_accel: bool, runtime_name: &str) -> Vec<String> {
    let mut changes = Vec::new();
    let accel_now = existing.on_fast_path(runtime_name);
    if accel_now != with_accel {
        changes.push(format!(
            "it runs {} the fast path",
            if accel_now { "on" } else { "off" }
        ));
    }
    let had = existing.labels.get(node::EXTRAS_LABEL).map_or("", String::as_str);
    let want = node::extras(c);
    if had != want {
        let show = |s: &str| {
            if s.is_empty() {
                "none".to_owned()
            } else {
                s.to_owned()
            }
        };
        changes.push(format!("extra ports and mounts: {} → {}", show(had), show(&want)));
    }
    changes
}

/// Finds or starts the netaccel daemon; for engines that cannot pass the
/// node's ignore ranges per container, the daemon must hold them.
async fn start_daemon(c: &Config, info: &EngineInfo) -> Result<()> {
    let daemon_ignore = if info.accel.daemon_holds_ignore() {
        node::accel_ignore(c)
    } else {
        Vec::new()
    };
    let (pid, started) = accel::ensure_daemon(&daemon_ignore).await?;
    step(format!(
        "netaccel daemon: pid {pid}{}",
        if started {
            " (started now)"
        } else {
            " (already running)"
        }
    ));
    Ok(())
}

/// Waits until the node runs and answers an exec.
async fn wait_running(engine: &Engine, name: &str) -> Result<()> {
    let limit = Duration::from_secs(60);
    let start = Instant::now();
    print!("waiting for the node");
    let _ = std::io::stdout().flush();
    loop {
        let info = engine.container(name).await?;
        if let Some(i) = &info {
            if i.running
                && engine
                    .exec(name, &["true".into()], false)
                    .await
                    .is_ok_and(|o| o.code == 0)
            {
                println!(" ready ({:.1?})", start.elapsed());
                return Ok(());
            }
            if !i.running && i.status == "exited" && start.elapsed() > Duration::from_secs(2) {
                println!();
                bail!("the node container {name} exited: see `u7s logs --console`");
            }
        }
        if start.elapsed() > limit {
            println!();
            bail!("the node container {name} is not running after {limit:?}: see `u7s logs --console`");
        }
        print!(".");
        let _ = std::io::stdout().flush();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub async fn down(ctx: &Context, volumes: bool) -> Result<i32> {
    let engine = ctx.engine().await?;
    let p = &ctx.config.project;
    let name = ctx.container();
    if engine.remove_container(&name).await? {
        step(format!("removed container {name}"));
    } else {
        step(format!("no container {name}"));
    }
    engine.remove_network(&Names::network(p)).await?;
    if volumes {
        for (v, _) in Names::volumes(p) {
            if engine.remove_volume(&v).await? {
                step(format!("removed volume {v}"));
            }
        }
    } else {
        step("state volumes kept (`u7s down -v` removes them)");
    }
    Ok(0)
}

pub fn render(ctx: &Context, with_accel: bool) -> Result<i32> {
    let image = image::plan(&ctx.config.image)?.name;
    let runtime = accel::runtime_name();
    let spec = spec(ctx, &image, with_accel.then_some(runtime.as_str()));
    println!("# settings\n{}", serde_yaml_ng::to_string(&ctx.config)?);
    println!("---\n# node container\n{}", serde_yaml_ng::to_string(&spec)?);
    println!(
        "---\n# kubeadm config ({})\n{}",
        kubeadm::KUBEADM_CONFIG_PATH,
        kubeadm::kubeadm_config(&ctx.config, kubeadm::KubeVersion::configured(&ctx.config))
    );
    Ok(0)
}
