//! What each subcommand does, on top of the library's parts.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use u7s::config::{self, Config, HostDefaults, Vars};
use u7s::engine::{AccelMethod, Engine, EngineInfo, Node};
use u7s::node::{self, Names, NodeSpec};
use u7s::{accel, doctor, hostnet, image, kubeadm};

/// The resolved settings of one invocation.
pub struct Context {
    pub config: Config,
}

async fn host_defaults() -> Result<HostDefaults> {
    let hostname = rustix::system::uname().nodename().to_string_lossy().into_owned();
    let default_route_ip = hostnet::default_route_ip().await.unwrap_or_else(|e| {
        tracing::warn!(%e, "no default route address");
        None
    });
    Ok(HostDefaults {
        hostname,
        default_route_ip,
        current_dir: std::env::current_dir().context("the current directory")?,
    })
}

async fn resolve(file: &Option<PathBuf>, flags: &[(&'static str, String)]) -> Result<Config> {
    let file = config::read_config_file(file.as_deref())?;
    let vars = Vars::layered(&file, |k| std::env::var(k).ok(), flags);
    Ok(config::resolve(&vars, &host_defaults().await?)?)
}

impl Context {
    pub async fn load(file: &Option<PathBuf>, flags: &[(&'static str, String)]) -> Result<Self> {
        Ok(Self {
            config: resolve(file, flags).await?,
        })
    }

    async fn engine(&self) -> Result<Engine> {
        Ok(Engine::connect(self.config.engine).await?)
    }

    fn container(&self) -> String {
        Names::container(&self.config.project)
    }
}

fn spec(ctx: &Context, image: &str, accel_runtime: Option<&str>) -> NodeSpec {
    NodeSpec::new(&ctx.config, image, accel_runtime, |p| p.exists())
}

/// The node must exist and run for the in-node steps.
async fn running_node<'a>(ctx: &Context, engine: &'a Engine) -> Result<Node<'a>> {
    let name = ctx.container();
    match engine.container(&name).await? {
        Some(c) if c.running => Ok(Node {
            engine,
            container: name,
        }),
        Some(c) => bail!(
            "the node container {name} is {}: start it with `u7s up`",
            c.status
        ),
        None => bail!(
            "there is no node container {name} on {} ({}): create it with `u7s up`",
            engine.kind().name(),
            engine.endpoint()
        ),
    }
}

fn step(msg: impl AsRef<str>) {
    println!("==> {}", msg.as_ref());
}

pub async fn up(ctx: &Context, with_accel: bool, rebuild: bool) -> Result<i32> {
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
    if with_accel {
        accel::check_runtime(engine.kind(), &info, &runtime_name)?;
        let daemon_ignore = match info.accel {
            AccelMethod::NerdctlLabel => node::accel_ignore(c),
            AccelMethod::Runtime | AccelMethod::NerdctlAnnotations => Vec::new(),
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
    }
    let image::NodeImage {
        name: image_name,
        build,
    } = image::plan(&c.image)?;
    let spec = spec(ctx, &image_name, with_accel.then_some(runtime_name.as_str()));

    let name = ctx.container();
    if let Some(existing) = engine.container(&name).await? {
        let accel_now = existing.on_fast_path(&runtime_name);
        if accel_now != with_accel {
            bail!(
                "the node container {name} exists {} the fast path; `u7s down` first (state volumes stay), then `u7s up{}`",
                if accel_now { "with" } else { "without" },
                if with_accel { " --accel" } else { "" }
            );
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

    // Checks before anything is created, so a refusal leaves nothing behind.
    let ephemeral = hostnet::EphemeralPorts::read();
    let taken = hostnet::taken_ports(&c.ports);
    if !taken.is_empty() {
        bail!(hostnet::explain_taken(&taken, ephemeral.as_ref()));
    }
    if let Some(e) = &ephemeral {
        let exposed = e.exposed(&c.ports);
        if !exposed.is_empty() {
            eprintln!("warning: {}", e.explain(&exposed));
        }
    }
    let ours = Names::network(&c.project);
    let mut network_exists = false;
    for (net, subnets) in engine.network_subnets().await? {
        if net == ours {
            network_exists = true;
            if !subnets.contains(&c.node_subnet) {
                bail!(
                    "the network {ours} exists with subnet(s) {subnets:?}, not NODE_SUBNET {}: `u7s down` removes it",
                    c.node_subnet
                );
            }
            continue;
        }
        if let Some(s) = subnets.iter().find(|s| hostnet::overlaps(**s, c.node_subnet)) {
            bail!(
                "NODE_SUBNET {} collides with the engine's network {net} ({s}); the default comes from a hash of the host name with only 256 choices. Set NODE_SUBNET to a free 10.100.x.0/24 (or use --tenant N for a second instance)",
                c.node_subnet
            );
        }
    }
    for s in hostnet::host_subnets().await? {
        if hostnet::overlaps(s, c.node_subnet) {
            bail!(
                "NODE_SUBNET {} collides with this host's network {s}: set NODE_SUBNET to a free 10.100.x.0/24",
                c.node_subnet
            );
        }
    }

    if let Some(b) = &build {
        if rebuild || !engine.image_exists(&image_name).await? {
            if let Some(why) = &info.build_blocker {
                bail!("cannot build the node image {image_name}: {why}");
            }
            step(format!(
                "building the node image {image_name} (this takes a while)"
            ));
            let started = Instant::now();
            let mut progress = |line: &str| println!("    | {line}");
            engine
                .build_image(&b.files, &image_name, &b.build_args, &mut progress)
                .await
                .context(
                    "building the node image (no registry reachable? pass --image with a local image)",
                )?;
            step(format!("image built in {:.0?}", started.elapsed()));
        } else {
            step(format!("node image {image_name} is up to date"));
        }
    } else if !engine.image_exists(&image_name).await? {
        bail!("the node image {image_name} is not in the engine: load or build it first, or drop --image/U7S_NODE_IMAGE to build one");
    }

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

pub async fn kubeadm_init(ctx: &Context) -> Result<i32> {
    let engine = ctx.engine().await?;
    let node = running_node(ctx, &engine).await?;
    step("kubeadm init (takes minutes)");
    kubeadm::kubeadm_init(&node, &ctx.config).await?;
    let n = kubeadm::sync_external_ip(&node).await?;
    step(format!(
        "control plane is up; sync-external-ip made {n} change(s). next: `u7s install-cni`"
    ));
    Ok(0)
}

pub async fn install_cni(ctx: &Context) -> Result<i32> {
    let engine = ctx.engine().await?;
    let node = running_node(ctx, &engine).await?;
    step(format!(
        "installing Flannel (VXLAN on UDP {})",
        ctx.config.ports.flannel
    ));
    kubeadm::install_cni(&node, &ctx.config).await?;
    Ok(0)
}

/// Writes a file only the user can read (it holds credentials).
fn write_private(path: &Path, content: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("u7s-tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(content)?;
    drop(f);
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

pub async fn kubeconfig(ctx: &Context, output: &Path) -> Result<i32> {
    let engine = ctx.engine().await?;
    let node = running_node(ctx, &engine).await?;
    let text = kubeadm::kubeconfig(&node, &ctx.config).await?;
    write_private(output, text.as_bytes(), 0o600)?;
    let shown = std::path::absolute(output).unwrap_or_else(|_| output.to_path_buf());
    step(format!(
        "wrote {}; use it with: export KUBECONFIG={}",
        output.display(),
        shown.display()
    ));
    Ok(0)
}

pub async fn kubectl(ctx: &Context, output: &Path) -> Result<i32> {
    let engine = ctx.engine().await?;
    let node = running_node(ctx, &engine).await?;
    let out = kubeadm::check(
        &node,
        &["sh".into(), "-c".into(), "cat \"$(command -v kubectl)\"".into()],
        false,
    )
    .await
    .context("copying kubectl out of the node")?;
    if out.stdout.len() < 4 || &out.stdout[..4] != b"\x7fELF" {
        bail!(
            "the node's kubectl is not an executable ({} bytes)",
            out.stdout.len()
        );
    }
    write_private(output, &out.stdout, 0o755)?;
    step(format!(
        "wrote {} ({} MB)",
        output.display(),
        out.stdout.len() / 1_000_000
    ));
    Ok(0)
}

pub async fn join_command(ctx: &Context, output: &Path) -> Result<i32> {
    let engine = ctx.engine().await?;
    let node = running_node(ctx, &engine).await?;
    let out = kubeadm::check(&node, &kubeadm::join_token_command(), false).await?;
    let text = kubeadm::join_file(&ctx.config, &out.stdout_text())?;
    write_private(output, text.as_bytes(), 0o600)?;
    step(format!(
        "wrote {} (holds a bootstrap token, valid 24 h): copy it to the joining host and run `u7s up && u7s kubeadm-join` there",
        output.display()
    ));
    Ok(0)
}

pub async fn kubeadm_join(ctx: &Context, file: &Path) -> Result<i32> {
    let text = std::fs::read_to_string(file).with_context(|| {
        format!(
            "reading {} (make it with `u7s join-command` on the control-plane host)",
            file.display()
        )
    })?;
    let engine = ctx.engine().await?;
    let node = running_node(ctx, &engine).await?;
    step("kubeadm join");
    kubeadm::kubeadm_join(&node, &ctx.config, &text).await?;
    step("joined; run `u7s sync-external-ip` on the control-plane host");
    Ok(0)
}

pub async fn sync_external_ip(ctx: &Context) -> Result<i32> {
    let engine = ctx.engine().await?;
    let node = running_node(ctx, &engine).await?;
    let n = kubeadm::sync_external_ip(&node).await?;
    step(format!("{n} change(s) applied"));
    Ok(0)
}

pub async fn kubeadm_reset(ctx: &Context) -> Result<i32> {
    let engine = ctx.engine().await?;
    let node = running_node(ctx, &engine).await?;
    kubeadm::check(&node, &kubeadm::kubeadm_reset_command(), true).await?;
    Ok(0)
}

pub async fn shell(ctx: &Context, command: Vec<String>) -> Result<i32> {
    let engine = ctx.engine().await?;
    let node = running_node(ctx, &engine).await?;
    let argv = if command.is_empty() {
        vec!["bash".to_owned()]
    } else {
        command
    };
    let code = engine.exec_interactive(&node.container, &argv).await?;
    if code == 126 || code == 127 {
        eprintln!("u7s: {:?} could not be run in the node (exit {code})", argv[0]);
    }
    Ok(i32::try_from(code).unwrap_or(1))
}

pub async fn logs(ctx: &Context, console: bool, follow: bool) -> Result<i32> {
    let engine = ctx.engine().await?;
    let name = ctx.container();
    if console {
        if engine.container(&name).await?.is_none() {
            bail!("there is no node container {name}: create it with `u7s up`");
        }
        engine.logs(&name, follow, None).await?;
        return Ok(0);
    }
    let node = running_node(ctx, &engine).await?;
    let mut argv: Vec<String> = ["journalctl", "--no-pager", "--since", "10 min ago"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    if follow {
        argv.push("--follow".into());
    }
    let out = engine.exec(&node.container, &argv, true).await?;
    if out.code == 126 || out.code == 127 {
        bail!("the node has no journalctl (not a systemd node image?): use `u7s logs --console` for its console output");
    }
    Ok(i32::try_from(out.code).unwrap_or(1))
}

pub async fn doctor(
    file: &Option<PathBuf>,
    flags: &[(&'static str, String)],
    with_accel: bool,
) -> Result<i32> {
    let mut facts = doctor::HostFacts::gather();
    let config = resolve(file, flags).await;
    match &config {
        Ok(c) => {
            // A running node holds its own ports; they are not "taken".
            let engine = Engine::connect(c.engine).await;
            let running = match &engine {
                Ok(e) => e
                    .container(&Names::container(&c.project))
                    .await
                    .ok()
                    .flatten()
                    .is_some_and(|i| i.running),
                Err(_) => false,
            };
            facts.ephemeral = hostnet::EphemeralPorts::read().map(|r| {
                let exposed = r.exposed(&c.ports);
                (r, exposed)
            });
            if !running {
                facts.taken_ports = hostnet::taken_ports(&c.ports)
                    .iter()
                    .map(|t| format!("{}/{} ({})", t.port, t.protocol.name(), t.var))
                    .collect();
            }
            facts.engine = Some(match &engine {
                Ok(e) => match e.info().await {
                    Ok(info) => {
                        if matches!(c.image, config::ImageSource::Build { .. }) {
                            facts.image_build = Some(info.build_blocker.clone().map_or(Ok(()), Err));
                        }
                        let runtime = accel::runtime_name();
                        facts.accel_runtime =
                            Some(accel::check_runtime(e.kind(), &info, &runtime).map_err(|x| x.to_string()));
                        Ok(doctor::EngineFacts {
                            name: e.kind().name(),
                            version: info.version,
                            rootless: info.rootless,
                            user_net: info.user_net,
                        })
                    }
                    Err(x) => Err(x.to_string()),
                },
                Err(x) => Err(x.to_string()),
            });
        }
        Err(e) => facts.config_error = Some(format!("{e:#}")),
    }
    facts.netaccel = accel::find_netaccel().map(|p| p.display().to_string());
    let findings = doctor::evaluate(&facts, with_accel);
    let mut blocking = 0;
    for f in &findings {
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

/// " (containerd 1.6.20, runc 1.1.5)" where the engine names its parts.
fn components(info: &EngineInfo) -> String {
    if info.components.is_empty() {
        return String::new();
    }
    format!(" ({})", info.components.join(", "))
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
            let runtime = accel::runtime_name();
            println!(
                "fast path:  {}",
                match (i.on_fast_path(&runtime), info.accel) {
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
