//! `netaccel`: the fast-path daemon and its tools.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use ipnet::IpNet;

use netaccel::daemon::{Daemon, DaemonConfig};
use netaccel::oci::profile::NotifyProfile;
use netaccel::oci::state::ContainerSettings;
use netaccel::policy::ignore::IgnoreList;

#[derive(Parser)]
#[command(
    version,
    about = "Fast TCP and UDP for rootless containers: host sockets through seccomp user notification",
    long_about = "netaccel intercepts connect(2) of rootless containers through seccomp user \
notification and hands them sockets of the host network namespace, so their TCP and UDP traffic \
skips slirp4netns. Run `netaccel daemon` as the same user as the containers, in the host \
network namespace, and give containers the profile from `netaccel profile`."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (foreground; logs to stderr).
    Daemon {
        /// Unix socket the runtimes connect to [default: $XDG_RUNTIME_DIR/netaccel/netaccel.sock].
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Destination CIDR that keeps the normal path for every container (repeatable).
        #[arg(long = "ignore", value_name = "CIDR")]
        ignore: Vec<IpNet>,
        /// Log filter, e.g. info, debug, netaccel=trace [env: RUST_LOG].
        #[arg(long, default_value = "info")]
        log_level: String,
        /// Socket of the bypass4netnsd-compatible API for nerdctl
        /// [default: $XDG_RUNTIME_DIR/bypass4netnsd.sock].
        #[arg(long)]
        api_socket: Option<PathBuf>,
        /// Do not serve the bypass4netnsd-compatible API (also disables `netaccel status`).
        #[arg(long, conflicts_with = "api_socket")]
        no_api: bool,
        /// Write the daemon's pid here while it runs.
        #[arg(long)]
        pid_file: Option<PathBuf>,
        /// Threads that receive each container's notifications, so calls that
        /// arrive together are served together [default: one per CPU, 2 to 4].
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
        threads: Option<u16>,
        /// How long a container's calls wait for a daemon once this one is
        /// gone (crash, restart, upgrade) before the keeper answers them on
        /// the normal path.
        #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = parse_wait)]
        keeper_wait: std::time::Duration,
        /// Run without the keeper: running containers then lose their
        /// notified syscalls (ENOSYS) when the daemon stops.
        #[arg(long, conflicts_with = "keeper_wait")]
        no_keeper: bool,
    },
    /// Hold a copy of every notify fd the daemon serves, so running
    /// containers survive the daemon's crash, restart or upgrade. The
    /// daemon starts it by itself next to its socket; it exits once no
    /// daemon is attached and no container is left.
    Keeper {
        /// Its socket [default: keeper.sock next to the daemon's socket].
        #[arg(long)]
        socket: Option<PathBuf>,
        /// How long calls wait for a daemon before the keeper answers them,
        /// until a daemon attaches and says otherwise.
        #[arg(long, value_name = "MS", default_value_t = 10_000)]
        wait_ms: u64,
        /// Log filter [env: RUST_LOG].
        #[arg(long, default_value = "info")]
        log_level: String,
    },
    /// Show the containers a running daemon serves and what their connects did.
    Status {
        /// The daemon's API socket [default: $XDG_RUNTIME_DIR/bypass4netnsd.sock].
        #[arg(long)]
        api_socket: Option<PathBuf>,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a systemd user unit that runs the daemon (save it as
    /// ~/.config/systemd/user/netaccel.service, then `systemctl --user enable --now netaccel`).
    Unit,
    /// Print the seccomp profile (OCI `linux.seccomp`) that sends a container to the daemon.
    Profile {
        /// Daemon socket to put in listenerPath [default: $XDG_RUNTIME_DIR/netaccel/netaccel.sock].
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Destination CIDR that keeps the normal path for this container (repeatable).
        #[arg(long = "ignore", value_name = "CIDR")]
        ignore: Vec<IpNet>,
        /// Publish a TCP port through a host socket: a bind of containerPort in
        /// the container binds hostPort on the host instead, so inbound
        /// connections skip the port forwarder (repeatable). /udp mappings are
        /// accepted and keep the engine's forwarder.
        #[arg(
            short = 'p',
            long = "publish",
            value_name = "[HOSTIP:]HOSTPORT:CONTAINERPORT[/tcp|/udp]"
        )]
        publish: Vec<netaccel::publish::PortMapping>,
        /// Leave every bind to the container (published ports keep the engine's forwarder).
        #[arg(long)]
        no_bind: bool,
    },
    /// OCI runtime wrapper: merge the fast path into the bundle's seccomp
    /// profile on create/run, then exec the real runtime with the same
    /// arguments. Engines can also run this binary as `netaccel-runc` or
    /// `netaccel-crun` (a link), configured by NETACCEL_SOCKET and
    /// NETACCEL_IGNORE (comma-separated CIDRs). A container adds its own
    /// ranges with the annotation netaccel/ignore-subnets or the variable
    /// NETACCEL_IGNORE in its environment.
    Runtime {
        /// Daemon socket to put in listenerPath [default: $XDG_RUNTIME_DIR/netaccel/netaccel.sock].
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Destination CIDR that keeps the normal path for this container (repeatable).
        #[arg(long = "ignore", value_name = "CIDR")]
        ignore: Vec<IpNet>,
        /// The real runtime and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "RUNTIME ARGS")]
        command: Vec<std::ffi::OsString>,
    },
    /// Internal: open a route socket inside another process's network namespace.
    #[command(name = "netns-route-socket", hide = true)]
    NetnsRouteSocket { pid: u32 },
}

/// `--keeper-wait`: seconds, a decimal from 0 to 3600.
fn parse_wait(s: &str) -> Result<std::time::Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(0.0..=3600.0).contains(&secs) {
        return Err(format!("{secs} s is outside 0-3600 s"));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

/// The daemon's and the keeper's log: stderr, with thread names.
fn init_logging(log_level: &str) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(log_level))
        .with_context(|| format!("invalid --log-level {log_level:?}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // `netaccel-N.I`: thread I of the Nth served container.
        .with_thread_names(true)
        .with_writer(std::io::stderr)
        .init();
    Ok(())
}

fn socket_or_default(socket: Option<PathBuf>) -> Result<PathBuf> {
    match socket.or_else(netaccel::default_socket_path) {
        Some(s) => Ok(s),
        None => bail!(
            "XDG_RUNTIME_DIR is not set: pass --socket PATH (e.g. /run/user/$(id -u)/netaccel/netaccel.sock)"
        ),
    }
}

/// Patches the bundle when the command line creates a container, then
/// replaces this process with the real runtime.
fn run_runtime(
    socket: Option<PathBuf>,
    ignore: Vec<IpNet>,
    real: &std::ffi::OsStr,
    args: &[std::ffi::OsString],
) -> Result<()> {
    use netaccel::oci::runtime::{bundle_dir, creates_container, patch_bundle, subcommand};
    if creates_container(args) {
        let socket = socket_or_default(socket)?;
        let after = subcommand(args).map(|(i, _)| &args[i + 1..]).unwrap_or_default();
        let bundle = bundle_dir(after);
        patch_bundle(&bundle, &socket, &ignore)
            .with_context(|| format!("adding the netaccel fast path to bundle {}", bundle.display()))?;
    }
    let err = std::os::unix::process::CommandExt::exec(std::process::Command::new(real).args(args));
    Err(anyhow::Error::new(err).context(format!("executing the real runtime {}", real.to_string_lossy())))
}

/// `netaccel-runc …` / `netaccel-crun …`: the wrapper, configured from the environment.
fn run_as_link(runtime: &str) -> Result<()> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let socket = std::env::var_os("NETACCEL_SOCKET").map(PathBuf::from);
    let ignore = netaccel::oci::runtime::parse_cidr_list(
        "the wrapper's environment NETACCEL_IGNORE",
        &std::env::var(netaccel::oci::runtime::IGNORE_ENV).unwrap_or_default(),
    )?;
    run_runtime(socket, ignore, std::ffi::OsStr::new(runtime), &args)
}

fn main() -> Result<()> {
    if let Some(runtime) = std::env::args_os()
        .next()
        .as_deref()
        .and_then(netaccel::oci::runtime::runtime_from_link_name)
    {
        return run_as_link(runtime);
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Runtime {
            socket,
            ignore,
            command,
        } => match command.split_first() {
            Some((real, args)) => run_runtime(socket, ignore, real, args),
            None => bail!("name the real runtime after --, e.g. netaccel runtime -- runc create …"),
        },
        // Must stay single-threaded until it has entered the namespaces.
        Command::NetnsRouteSocket { pid } => netaccel::sys::nshelper::run_helper(pid)
            .with_context(|| format!("opening a route socket in the network namespace of pid {pid}")),
        Command::Profile {
            socket,
            ignore,
            publish,
            no_bind,
        } => {
            let socket = socket_or_default(socket)?;
            netaccel::publish::check_unique(&publish)?;
            let settings = ContainerSettings {
                ignore,
                publish,
                ignore_bind: no_bind,
            };
            let profile = NotifyProfile::new(&socket, &settings)?;
            println!("{}", profile.to_json_pretty());
            Ok(())
        }
        Command::Status { api_socket, json } => {
            let socket = api_socket
                .or_else(netaccel::api::default_api_socket)
                .context("XDG_RUNTIME_DIR is not set: pass --api-socket PATH")?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let status = runtime
                .block_on(netaccel::api::fetch_status(&socket))
                .map_err(anyhow::Error::msg)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", render_status(&status));
            }
            Ok(())
        }
        Command::Unit => {
            let exe = std::env::current_exe().context("locating the netaccel executable")?;
            print!("{}", systemd_unit(&exe));
            Ok(())
        }
        Command::Keeper {
            socket,
            wait_ms,
            log_level,
        } => {
            init_logging(&log_level)?;
            raise_open_file_limit();
            let socket = match socket {
                Some(s) => s,
                None => netaccel::keeper::socket_beside(&socket_or_default(None)?),
            };
            let config = netaccel::keeper::KeeperConfig {
                socket,
                wait: std::time::Duration::from_millis(wait_ms),
            };
            netaccel::keeper::run(config).context("running the keeper")
        }
        Command::Daemon {
            socket,
            ignore,
            log_level,
            api_socket,
            no_api,
            pid_file,
            threads,
            keeper_wait,
            no_keeper,
        } => {
            init_logging(&log_level)?;
            raise_open_file_limit();
            let config = DaemonConfig {
                socket: socket_or_default(socket)?,
                ignore: IgnoreList::new(ignore),
                helper_exe: std::env::current_exe().context("locating the netaccel executable")?,
                threads_per_container: threads
                    .map_or_else(netaccel::container::default_receivers, usize::from),
                keeper_wait: (!no_keeper).then_some(keeper_wait),
            };
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            let api_socket = if no_api {
                None
            } else {
                api_socket.or_else(netaccel::api::default_api_socket)
            };
            runtime.block_on(async {
                let mut daemon = Daemon::bind(config).await?;
                let restored = daemon.take_restored_bypasses();
                let api = match &api_socket {
                    Some(path) => {
                        // Clients may only ask for sockets next to the API's own.
                        let runtime_dir = path.parent().map(PathBuf::from).unwrap_or_default();
                        let api = netaccel::api::BypassApi::new(&daemon, runtime_dir);
                        api.restore(restored).await;
                        let listener = netaccel::daemon::bind_private_socket(path).context("serving the bypass4netnsd API (or pass --no-api)")?;
                        tracing::info!(socket = %path.display(), "bypass4netnsd-compatible API listening");
                        let server = tokio::spawn(api.clone().serve(listener));
                        Some((api, server))
                    }
                    None => {
                        if !restored.is_empty() {
                            tracing::warn!(bypasses = restored.len(), "the keeper holds bypass4netnsd registrations, but the API is off (--no-api): they are not served");
                        }
                        None
                    }
                };
                if let Some(p) = &pid_file {
                    std::fs::write(p, format!("{}\n", std::process::id()))
                        .with_context(|| format!("writing pid file {}", p.display()))?;
                }
                daemon.run(shutdown_signal()).await;
                if let Some(p) = &pid_file {
                    let _ = std::fs::remove_file(p);
                }
                if let (Some((api, server)), Some(path)) = (api, &api_socket) {
                    server.abort();
                    api.stop_all();
                    let _ = std::fs::remove_file(path);
                }
                Ok(())
            })
        }
    }
}

fn render_status(s: &netaccel::api::DaemonStatus) -> String {
    let mut out = format!(
        "netaccel daemon pid {}: {} container(s), {} bypass4netnsd bypass(es)\n",
        s.pid,
        s.containers.len(),
        s.bypasses.len()
    );
    if !s.ignore.is_empty() {
        let nets: Vec<String> = s.ignore.iter().map(ToString::to_string).collect();
        out += &format!("ignored by every container: {}\n", nets.join(", "));
    }
    if !s.containers.is_empty() {
        out += &format!(
            "{:<20} {:>8} {:>11} {:>9} {:>9} {:>9} {:>6} {:>6} {:>7} {:>9}\n",
            "CONTAINER",
            "PID",
            "ACCELERATED",
            "RESTORED",
            "BYPASSED",
            "PUBLISHED",
            "KEPT",
            "FAILED",
            "REFUSED",
            "µs/BYPASS"
        );
    }
    for c in &s.containers {
        let id: String = c.id.chars().take(20).collect();
        out += &format!(
            "{:<20} {:>8} {:>11} {:>9} {:>9} {:>9} {:>6} {:>6} {:>7} {:>9}\n",
            id,
            c.pid,
            if c.accelerated { "yes" } else { "no" },
            if c.restored { "yes" } else { "no" },
            c.bypassed,
            c.published,
            c.kept,
            c.failed,
            c.refused,
            c.bypass_us
        );
    }
    for b in &s.bypasses {
        out += &format!("bypass {} on {}\n", b.id, b.spec.socket_path);
    }
    out
}

/// A systemd user unit for the daemon at `exe`.
fn systemd_unit(exe: &std::path::Path) -> String {
    format!(
        "[Unit]\nDescription=netaccel: host-namespace sockets for rootless containers\n\n[Service]\nExecStart={} daemon --pid-file %t/netaccel/netaccel.pid\nRestart=always\nRestartSec=1\n# The daemon starts `netaccel keeper`, which holds every container's notify\n# fd while the daemon restarts: only the daemon is stopped or killed.\nKillMode=process\n\n[Install]\nWantedBy=default.target\n",
        exe.display()
    )
}

/// Raises the soft limit on open files to the hard one. Every container
/// holds a few of the daemon's fds (its notify fd, a route socket in its
/// namespace, kept caller handles, its host listeners), so the usual soft
/// limit of 1024 would end bypasses after a few dozen containers.
fn raise_open_file_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let limit = getrlimit(Resource::Nofile);
    if limit.current >= limit.maximum {
        return;
    }
    let raised = rustix::process::Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => tracing::debug!(from = ?limit.current, to = ?limit.maximum, "raised the open-file limit"),
        Err(e) => tracing::warn!(error = %e, limit = ?limit.current, "cannot raise the open-file limit"),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}
