//! The daemon: a unix socket that OCI runtimes send notify fds to, and a
//! serving task per registered container.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};

use crate::calls::Accel;
use crate::container::{self, Container, ContainerStatus, Mode};
use crate::ifaddrs::SubnetWatch;
use crate::keeper::client::KeeperLink;
use crate::keeper::wire::{Entry, Kind};
use crate::oci::state::{ContainerProcessState, ContainerSettings};
use crate::policy::fallback::Fallback;
use crate::policy::ignore::IgnoreList;
use crate::policy::netview::NetView;
use crate::private_socket::{bind_private, PrivateSocketError};
use crate::publish::Listeners;
use crate::restore::{AccelRecord, ContainerRecord, Kept};
use crate::route::Routes;
use crate::sockopts::HostDefaults;
use crate::sys::fdpass;
use crate::sys::idlog::IdLog;
use crate::sys::netns::{NetnsCookie, NetnsId};
use crate::sys::notify::NotifyFd;
use crate::sys::nshelper::route_socket_in_netns_of;
use crate::sys::tracee::Callers;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Upper bound for a state message (annotations can make it large).
pub const MAX_STATE_LEN: usize = 1 << 20;
/// A runtime that connects but does not finish sending within this time is
/// dropped, so a stuck client cannot pin resources.
const REGISTRATION_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub socket: PathBuf,
    /// Destinations no container bypasses.
    pub ignore: IgnoreList,
    /// The `netaccel` executable, run as the namespace helper.
    pub helper_exe: PathBuf,
    /// Threads that receive on each container's notify fd
    /// (`container::default_receivers()` unless chosen).
    pub threads_per_container: usize,
    /// How long callers wait for a daemon when this one is gone, before
    /// the keeper answers them; `None`: no keeper (containers do not
    /// survive the daemon).
    pub keeper_wait: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Socket(#[from] PrivateSocketError),
    #[error("{source}")]
    Routes { source: crate::route::RouteError },
    #[error("cannot probe host socket defaults: {source}")]
    HostDefaults { source: io::Error },
    #[error("cannot read a socket's network namespace cookie (SO_NETNS_COOKIE needs Linux 5.14 or later): {source}")]
    NetnsCookie { source: io::Error },
    #[error("{source} (or pass --no-keeper: running containers then do not survive the daemon)")]
    Keeper {
        source: crate::keeper::client::LinkError,
    },
}

/// What every registration shares.
pub(crate) struct Shared {
    config: DaemonConfig,
    host_netns: Option<NetnsId>,
    /// The same namespace by cookie, as sockets report it.
    host_cookie: NetnsCookie,
    defaults: Arc<HostDefaults>,
    routes: Arc<Routes>,
    registry: Registry,
    pub(crate) listeners: Arc<Listeners>,
    /// RECV returns once a filter has no users (see `container::receivers_for`).
    recv_ends: bool,
    /// Holds a copy of every notify fd (see `keeper`).
    pub(crate) keeper: Option<Arc<KeeperLink>>,
}

/// Binds a unix socket only its owner can use (see `private_socket`).
pub fn bind_private_socket(socket: &Path) -> Result<UnixListener, DaemonError> {
    // A server whose backlog is full (EAGAIN) is as live as one that accepts.
    let live = |p: &Path| {
        use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
        let probe = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
            None,
        );
        let connected = probe.and_then(|probe| {
            let addr = SocketAddrUnix::new(p)?;
            rustix::net::connect(&probe, &addr)
        });
        matches!(connected, Ok(()) | Err(rustix::io::Errno::AGAIN))
    };
    let bind = |p: &Path| UnixListener::bind(p);
    Ok(bind_private(socket, "daemon", live, bind)?)
}

/// A bound daemon socket, ready to serve.
pub struct Daemon {
    listener: UnixListener,
    shared: Arc<Shared>,
    /// The containers the keeper held for a previous daemon, served from
    /// `run`.
    restored: Vec<Entry>,
    /// The bypass4netnsd registrations it held (`(key, record)`).
    restored_bypasses: Vec<(u64, Vec<u8>)>,
}

impl Daemon {
    /// Creates the socket (directory mode 0700, socket 0600), refusing to
    /// steal it from a live daemon and cleaning up a stale one.
    pub async fn bind(config: DaemonConfig) -> Result<Self, DaemonError> {
        let listener = bind_private_socket(&config.socket)?;
        let defaults = HostDefaults::probe().map_err(|e| DaemonError::HostDefaults { source: e.into() })?;
        let routes = Routes::open().map_err(|source| DaemonError::Routes { source })?;
        let host_cookie = NetnsCookie::current().map_err(|source| DaemonError::NetnsCookie { source })?;
        let recv_ends = match tokio::task::spawn_blocking(crate::sys::notify::recv_returns_at_hangup).await {
            Ok(Ok(true)) => true,
            Ok(Ok(false)) => {
                tracing::info!("this kernel's seccomp RECV does not return once a filter has no users (Linux < 6.6): one polling thread per container");
                false
            }
            Ok(Err(e)) => {
                tracing::info!(error = %e, "cannot try seccomp RECV on a filter of our own (already under a filter with a listener?): one polling thread per container");
                false
            }
            Err(_) => false,
        };
        let (keeper, restored) = match config.keeper_wait {
            Some(wait) => {
                let socket = crate::keeper::socket_beside(&config.socket);
                let exe = config.helper_exe.clone();
                let attach = {
                    let socket = socket.clone();
                    tokio::task::spawn_blocking(move || KeeperLink::attach(&socket, &exe, wait))
                };
                let attached = attach.await.unwrap_or_else(|e| {
                    Err(crate::keeper::client::LinkError::Io {
                        socket,
                        source: io::Error::other(e),
                    })
                });
                let (link, entries) = attached.map_err(|source| DaemonError::Keeper { source })?;
                if let Some(max) = entries.iter().map(|e| e.key).max() {
                    container::reserve_serials_through(max);
                }
                tracing::info!(
                    keeper = link.keeper_pid,
                    held = entries.len(),
                    "attached to the keeper"
                );
                (Some(Arc::new(link)), entries)
            }
            None => (None, Vec::new()),
        };
        let (bypasses, restored) = restored
            .into_iter()
            .partition::<Vec<_>, _>(|e| e.kind == Kind::Bypass);
        Ok(Self {
            listener,
            shared: Arc::new(Shared {
                host_netns: NetnsId::current().ok(),
                host_cookie,
                config,
                defaults: Arc::new(defaults),
                routes: Arc::new(routes),
                registry: Registry::default(),
                recv_ends,
                listeners: Arc::new(Listeners::default()),
                keeper,
            }),
            restored,
            restored_bypasses: bypasses.into_iter().map(|e| (e.key, e.record)).collect(),
        })
    }

    /// The bypass4netnsd registrations the keeper held for a previous
    /// daemon (`(key, record)`), for the API to serve again.
    pub fn take_restored_bypasses(&mut self) -> Vec<(u64, Vec<u8>)> {
        std::mem::take(&mut self.restored_bypasses)
    }

    pub fn socket(&self) -> &Path {
        &self.shared.config.socket
    }

    /// What registrations on any socket of this daemon share (for the API).
    pub(crate) fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Accepts registrations until `shutdown` resolves, then removes the socket.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tracing::info!(socket = %self.socket().display(), ignore = ?self.shared.config.ignore.nets(), "netaccel daemon listening");
        // Only a daemon with a keeper has restored entries.
        if let Some(link) = &self.shared.keeper {
            for entry in std::mem::take(&mut self.restored) {
                tokio::spawn(crate::restore::reattach(entry, self.shared.clone(), link.clone()));
            }
        }
        tokio::select! {
            _ = accept_loop(&self.listener, self.shared.clone(), ContainerSettings::default()) => {}
            _ = shutdown => {}
        }
        let _ = std::fs::remove_file(self.socket());
        tracing::info!("netaccel daemon stopped");
    }
}

/// Serves registrations arriving on `listener`; `extra` applies to every
/// container registered through it, on top of the daemon's settings and its
/// own (ignore ranges and published ports add up; ignore_bind wins).
pub(crate) async fn accept_loop(listener: &UnixListener, shared: Arc<Shared>, extra: ContainerSettings) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let (shared, extra) = (shared.clone(), extra.clone());
                tokio::spawn(async move { register(stream, shared, extra).await });
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn register(stream: UnixStream, shared: Arc<Shared>, extra: ContainerSettings) {
    // runc sends the state and the notify fd in one message and keeps the
    // connection open until its process exits (for `runc run`, the
    // container's lifetime): the message is served as soon as it is whole.
    let whole = |m: &fdpass::Message| !m.fds.is_empty() && fdpass::json_value_ended(&m.bytes);
    let msg = match tokio::time::timeout(
        REGISTRATION_TIMEOUT,
        fdpass::read_message(&stream, MAX_STATE_LEN, whole),
    )
    .await
    {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "reading a registration failed");
            return;
        }
        Err(_) => {
            tracing::warn!("registration timed out: the runtime did not finish its state message");
            return;
        }
    };
    drop(stream);
    let fd_count = msg.fds.len();
    let notify_fds = accept_notify_fds(msg.fds);
    if notify_fds.is_empty() {
        tracing::error!(fds = fd_count, "registration without a seccomp notify fd ignored");
        return;
    }
    if msg.oversized || msg.fds_truncated {
        let why = if msg.oversized {
            "state message larger than 1 MiB"
        } else {
            "fds truncated"
        };
        return pass_through_all(&shared, notify_fds, why);
    }
    let state = match ContainerProcessState::parse(&msg.bytes, fd_count) {
        Ok(s) => s,
        Err(e) => return pass_through_all(&shared, notify_fds, &e.to_string()),
    };
    let [notify]: [NotifyFd; 1] = match notify_fds.try_into() {
        Ok(one) => one,
        Err(all) => return pass_through_all(&shared, all, "several fds where one was expected"),
    };
    let id = state.state.id.clone();
    let (mode, accel) = match accelerate(&state, &shared, extra).await {
        Ok((mode, record)) => {
            tracing::info!(container = %id, pid = state.pid, "container registered");
            (mode, Some(record))
        }
        Err(why) => {
            tracing::error!(container = %id, pid = state.pid, reason = %why, "serving container without acceleration");
            (Mode::PassThrough(Fallback::continue_all()), None)
        }
    };
    let record = ContainerRecord {
        id: id.clone(),
        pid: state.pid,
        accel,
    };
    let container = keep(&shared, Container::new(id, state.pid, notify, mode), record);
    serve_tracked(&shared, container).await;
}

/// Gives the keeper (if any) a copy of the container's notify fd and a
/// page for its notification ids.
fn keep(shared: &Shared, mut container: Container, record: ContainerRecord) -> Container {
    let Some(link) = &shared.keeper else {
        return container;
    };
    match IdLog::create() {
        Ok(idlog) => {
            container.kept = Some(Kept::hold(
                link.clone(),
                container.serial,
                record,
                &container.notify,
                &idlog,
            ));
            container.idlog = Some(idlog);
        }
        Err(e) => {
            tracing::error!(container = %container.id, error = %e, "no id page (memfd): this container will not survive a daemon restart")
        }
    }
    container
}

/// Serves a container while it is listed in the daemon's registry.
pub(crate) async fn serve_tracked(shared: &Arc<Shared>, container: Container) {
    let container = Arc::new(container);
    let key = shared.registry.next.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut m) = shared.registry.served.lock() {
        m.insert(key, container.clone());
    }
    let serial = container.serial;
    let sync = container.notify.enable_sync_wake_up();
    if let Err(e) = &sync {
        tracing::debug!(container = %container.id, error = %e, "synchronous wake-up unavailable (Linux < 6.6): one polling thread serves it");
    }
    let receivers = container::receivers_for(sync, shared.recv_ends, shared.config.threads_per_container);
    container.clone().serve(receivers).await;
    if let Some(kept) = &container.kept {
        kept.forget();
    }
    shared.listeners.forget_owner(serial);
    if let Ok(mut m) = shared.registry.served.lock() {
        m.remove(&key);
    }
}

/// The containers being served, for `netaccel status`.
#[derive(Default)]
pub(crate) struct Registry {
    next: AtomicU64,
    served: Mutex<BTreeMap<u64, Arc<Container>>>,
}

impl Shared {
    /// The daemon-wide ignore list.
    pub(crate) fn daemon_ignore(&self) -> Vec<ipnet::IpNet> {
        self.config.ignore.nets().to_vec()
    }

    pub(crate) fn container_statuses(&self) -> Vec<ContainerStatus> {
        self.registry
            .served
            .lock()
            .map(|m| m.values().map(|c| c.status()).collect())
            .unwrap_or_default()
    }
}

fn accept_notify_fds(fds: Vec<OwnedFd>) -> Vec<NotifyFd> {
    fds.into_iter()
        .filter_map(|fd| match NotifyFd::new(fd) {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::error!(error = %e, "closing an fd sent to the daemon");
                None
            }
        })
        .collect()
}

/// Answers CONTINUE to everything on fds we cannot trust, so those processes
/// keep their normal network instead of getting ENOSYS.
fn pass_through_all(shared: &Arc<Shared>, fds: Vec<NotifyFd>, why: &str) {
    tracing::error!(
        reason = why,
        fds = fds.len(),
        "bad registration: its syscalls continue unaccelerated"
    );
    for notify in fds {
        let shared = shared.clone();
        let record = ContainerRecord {
            id: "<unregistered>".into(),
            pid: 0,
            accel: None,
        };
        let mode = Mode::PassThrough(Fallback::continue_all());
        let c = keep(
            &shared,
            Container::new(record.id.clone(), 0, notify, mode),
            record,
        );
        tokio::spawn(async move { serve_tracked(&shared, c).await });
    }
}

async fn accelerate(
    state: &ContainerProcessState,
    shared: &Shared,
    extra: ContainerSettings,
) -> Result<(Mode, AccelRecord), String> {
    let mut settings = state.settings().map_err(|e| e.to_string())?;
    // The profile netaccel rendered for these ports carries the guards for
    // unpinned host sockets; ports added by the API (nerdctl's own profile)
    // do not bring them.
    let own_guards = !settings.bind_bypass().is_empty();
    settings.ignore.extend(extra.ignore);
    for m in extra.publish {
        if !settings.publish.contains(&m) {
            settings.publish.push(m);
        }
    }
    settings.ignore_bind |= extra.ignore_bind;
    crate::publish::check_unique(&settings.publish).map_err(|e| e.to_string())?;
    // The connect handler decides AF_UNSPEC and connects on host listeners
    // only with published ports (see `calls::connect`).
    let guarded = own_guards && !settings.bind_bypass().is_empty();
    accel_for(state.pid, &state.state.id, settings, guarded, shared).await
}

/// The fast path for the container of `pid` with these (merged) settings,
/// and its record for the keeper.
pub(crate) async fn accel_for(
    pid: u32,
    id: &str,
    settings: ContainerSettings,
    guarded: bool,
    shared: &Shared,
) -> Result<(Mode, AccelRecord), String> {
    let netns = NetnsId::of_pid(pid).map_err(|e| format!("netns of pid {pid}: {e}"))?;
    if Some(netns) == shared.host_netns {
        return Err("the container shares the daemon's network namespace; nothing to bypass".into());
    }
    let mut base = shared.config.ignore.clone();
    base.extend(settings.ignore.iter().copied());
    let view = Arc::new(RwLock::new(NetView::new(base.clone())));
    let route = route_socket_in_netns_of(&shared.config.helper_exe, pid)
        .await
        .map_err(|e| e.to_string())?;
    // The helper made this socket inside the container's namespace.
    let cookie = NetnsCookie::of_socket(&route).map_err(|e| format!("netns cookie of pid {pid}: {e}"))?;
    let watch = SubnetWatch::start(route, pid, base, view.clone(), shared.routes.clone())
        .await
        .map_err(|e| e.to_string())?;
    let published = settings.bind_bypass().to_vec();
    if !published.is_empty() {
        tracing::info!(container = %id, ports = ?published.iter().map(|m| m.to_string()).collect::<Vec<_>>(), "binds of published ports get host listeners");
    }
    let mode = Mode::Accelerate {
        accel: Box::new(Accel {
            owner: 0,
            guarded,
            container_netns: cookie,
            host_netns: Some(shared.host_cookie),
            view,
            defaults: shared.defaults.clone(),
            routes: shared.routes.clone(),
            published,
            listeners: shared.listeners.clone(),
            callers: Callers::default(),
        }),
        _watch: watch,
    };
    let record = AccelRecord {
        settings,
        guarded,
        netns: cookie.raw(),
        listeners: Vec::new(),
    };
    Ok((mode, record))
}
