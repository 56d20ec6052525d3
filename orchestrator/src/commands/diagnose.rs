//! What is wrong and what runs: `doctor` (the host's prerequisites and the
//! checks `up` makes) and `status`.

use std::path::PathBuf;

use anyhow::Result;
use u7s::engine::Engine;
use u7s::node::{self, Names};
use u7s::{accel, doctor, image, preflight};

use super::{components, resolve, Context};

pub async fn doctor(
    file: &Option<PathBuf>,
    flags: &[(&'static str, String)],
    with_accel: bool,
) -> Result<i32> {
    let mut facts = doctor::HostFacts::gather();
    let mut node_findings = Vec::new();
    match resolve(file, flags).await {
        Ok(c) => match Engine::connect(c.engine).await {
            Ok(e) => match e.info().await {
                Ok(info) => {
                    // The checks `up` makes before creating the node; a
                    // running node holds its own ports.
                    let node = e.container(&Names::container(&c.project)).await?;
                    let intent = preflight::Intent {
                        with_accel,
                        rebuild: false,
                        node_running: node.as_ref().is_some_and(|n| n.running),
                    };
                    let image = image::plan(&c.image)?;
                    let node_facts = preflight::gather(&e, &info, &c, &image, intent).await?;
                    node_findings = preflight::evaluate(&c, &node_facts);
                    facts.engine = Some(Ok(doctor::EngineFacts {
                        name: e.kind().name(),
                        version: info.version,
                        rootless: info.rootless,
                        user_net: info.user_net,
                    }));
                }
                Err(x) => facts.engine = Some(Err(x.to_string())),
            },
            Err(x) => facts.engine = Some(Err(x.to_string())),
        },
        Err(e) => facts.config_error = Some(format!("{e:#}")),
    }
    facts.netaccel = accel::find_netaccel().map(|p| p.display().to_string());
    let findings = doctor::evaluate(&facts, with_accel)
        .into_iter()
        .chain(node_findings);
    let mut blocking = 0;
    for f in findings {
        let mark = match (f.ok, f.severity) {
            (true, _) => "ok  ",
            (false, doctor::Severity::Warning) => "warn",
            (false, doctor::Severity::Blocking) => {
                blocking += 1;
                "FAIL"
            }
        };
        println!("[{mark}] {:<16} {}", f.check, f.detail);
    }
    if blocking > 0 {
        eprintln!("u7s: {blocking} blocking problem(s) found");
        return Ok(1);
    }
    Ok(0)
}

pub async fn status(ctx: &Context) -> Result<i32> {
    let c = &ctx.config;
    let engine = ctx.engine().await?;
    let info = engine.info().await?;
    println!(
        "engine:     {} {}{} at {}{}",
        engine.kind().name(),
        info.version,
        components(&info),
        engine.endpoint(),
        if info.rootless { " (rootless)" } else { "" }
    );
    let name = ctx.container();
    match engine.container(&name).await? {
        Some(i) => {
            println!("node:       {name} {} (image {})", i.status, i.image);
            println!("name/ip:    {} {} on {}", c.node_name, c.node_ip, c.node_subnet);
            let ports: Vec<String> = c
                .ports
                .published()
                .iter()
                .map(|(v, p, proto)| format!("{v}={p}/{}", proto.name()))
                .collect();
            println!("ports:      {}", ports.join(" "));
            // What the container was made with (its label), which may
            // differ from the settings until `up --recreate`.
            let extras = i.labels.get(node::EXTRAS_LABEL).map_or("", String::as_str);
            let made = |key: &str| {
                extras
                    .split(" | ")
                    .find_map(|part| part.strip_prefix(key))
                    .map(|v| v.replace(',', " "))
            };
            let runtime = accel::runtime_name();
            let on_fast_path = i.on_fast_path(&runtime);
            if let Some(publish) = made("publish=") {
                println!(
                    "publish:    {publish} (through the engine's port forwarder{})",
                    if on_fast_path {
                        "; the fast path serves only the node's outgoing connections"
                    } else {
                        ""
                    }
                );
            }
            if let Some(mounts) = made("mounts=") {
                println!("mounts:     {mounts}");
            }
            if extras != node::extras(c) {
                println!("            (the settings differ: `u7s up --recreate` applies them)");
            }
            println!(
                "fast path:  {}",
                match (on_fast_path, info.accel) {
                    (false, _) => "off".to_owned(),
                    (true, _) if i.runtime == runtime => format!("on (runtime {})", i.runtime),
                    (true, method) => format!("on ({})", method.describe()),
                }
            );
        }
        None => println!("node:       none (`u7s up` creates {name})"),
    }
    match accel::daemon_status().await {
        Some(s) => {
            let bypassed: u64 = s.containers.iter().map(|c| c.bypassed).sum();
            println!(
                "netaccel:   daemon pid {}, {} container(s), {} connection(s) bypassed",
                s.pid,
                s.containers.len(),
                bypassed
            );
        }
        None => println!("netaccel:   daemon not running"),
    }
    Ok(0)
}
