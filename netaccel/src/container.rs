//! Serving the notify fd of one container (or one `runc exec` process).
//!
//! One receiving thread per notify fd, which handles what it receives (see
//! `Container::serve` for why a thread); a handler that has to wait moves to
//! the async runtime, so a slow connect never stalls other threads of the same
//! container. The loop ends when the kernel reports that no process uses the
//! filter any more (POLLHUP), and everything it owns goes with it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use std::future::Future;

use crate::bind::{self, BindOutcome};
use crate::connect::{self, ConnectContext, Outcome};
use crate::ifaddrs::{NetView, SubnetWatch};
use crate::netns::NetnsCookie;
use crate::notify::{Notification, NotifyFd, Readiness};
use crate::publish::{Listeners, PortMapping};
use crate::route::Routes;
use crate::sockopts::HostDefaults;
use crate::tracee::Callers;

#[cfg(target_arch = "x86_64")]
const NATIVE_ARCH: u32 = 0xC000_003E; // AUDIT_ARCH_X86_64
#[cfg(target_arch = "aarch64")]
const NATIVE_ARCH: u32 = 0xC000_00B7; // AUDIT_ARCH_AARCH64

/// How a container's syscalls are answered.
pub enum Mode {
    /// The fast path, with the container's namespace and ignore list.
    Accelerate {
        netns: NetnsCookie,
        /// The daemon's namespace, where the sockets it hands out live.
        host_netns: Option<NetnsCookie>,
        view: Arc<RwLock<NetView>>,
        defaults: Arc<HostDefaults>,
        routes: Arc<Routes>,
        /// Published ports whose binds the daemon takes over.
        published: Vec<PortMapping>,
        listeners: Arc<Listeners>,
        /// Handles on the container's recent calling threads.
        callers: Callers,
        /// Keeps the ignore list current; stops with the container.
        _watch: SubnetWatch,
    },
    /// Every syscall continues unchanged: used when the registration could
    /// not be trusted, so the container still works (answering nothing would
    /// make every notified syscall fail with ENOSYS).
    PassThrough,
}

pub struct Container {
    /// Unique per daemon: owner key of the listeners bound for it.
    pub serial: u64,
    pub id: String,
    /// The process that registered it (0 when unknown).
    pub pid: u32,
    pub notify: NotifyFd,
    pub mode: Mode,
    pub counters: Counters,
}

/// What happened to a container's connects, logged when it exits.
#[derive(Debug, Default)]
pub struct Counters {
    bypassed: AtomicU64,
    kept: AtomicU64,
    failed: AtomicU64,
    published: AtomicU64,
    refused: AtomicU64,
    /// Daemon time of bypassed connects, from receiving the notification to
    /// answering it, and the part of it spent installing the host socket.
    bypass_ns: AtomicU64,
    install_ns: AtomicU64,
}

impl Counters {
    /// Mean daemon time per bypassed connect and the install part of it, µs.
    fn bypass_us(&self) -> (u64, u64) {
        let n = self.bypassed.load(Ordering::Relaxed).max(1);
        (
            self.bypass_ns.load(Ordering::Relaxed) / n / 1000,
            self.install_ns.load(Ordering::Relaxed) / n / 1000,
        )
    }
}

static NEXT_SERIAL: AtomicU64 = AtomicU64::new(1);

impl Container {
    pub fn new(id: String, pid: u32, notify: NotifyFd, mode: Mode) -> Self {
        Self {
            serial: NEXT_SERIAL.fetch_add(1, Ordering::Relaxed),
            id,
            pid,
            notify,
            mode,
            counters: Counters::default(),
        }
    }

    /// What `netaccel status` shows about it.
    pub fn status(&self) -> ContainerStatus {
        let c = &self.counters;
        let (bypass_us, install_us) = c.bypass_us();
        ContainerStatus {
            id: self.id.clone(),
            pid: self.pid,
            accelerated: matches!(self.mode, Mode::Accelerate { .. }),
            bypassed: c.bypassed.load(Ordering::Relaxed),
            kept: c.kept.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            published: c.published.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
            bypass_us,
            install_us,
        }
    }
}

/// A served container as `netaccel status` reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ContainerStatus {
    pub id: String,
    pub pid: u32,
    pub accelerated: bool,
    pub bypassed: u64,
    pub kept: u64,
    pub failed: u64,
    /// Binds that got a host listener on a published port.
    #[serde(default)]
    pub published: u64,
    /// Calls refused because they would have let a host socket reach the host.
    #[serde(default)]
    pub refused: u64,
    /// Mean daemon time per bypassed connect (notification received →
    /// answered), µs, and the part spent installing the host socket.
    #[serde(default)]
    pub bypass_us: u64,
    #[serde(default)]
    pub install_us: u64,
}

impl Container {
    /// Serves until the last process using the filter is gone.
    ///
    /// The notify fd is waited on by a thread of its own, in poll(2), not by
    /// the async runtime's epoll: with `SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP`
    /// the kernel then switches from the caller straight to that thread on
    /// the caller's CPU and back, instead of waking another (on a VM, often
    /// halted) CPU twice per syscall. Notifications are handled on that
    /// thread; one that has to wait (a route lookup, a loopback backlog)
    /// moves to the runtime, so it never stalls the container's other calls.
    pub async fn serve(self: Arc<Self>) {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Handle::current();
        let container = self.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("netaccel-{}", self.serial))
            .spawn(move || {
                container.receive_loop(&runtime);
                drop(done_tx);
            });
        match spawned {
            // Nothing is ever sent: the receiver wakes (with Err) when the
            // thread drops its sender, which it does when its loop ends or
            // unwinds.
            Ok(_) => {
                let _ = done_rx.await;
            }
            Err(e) => {
                tracing::error!(container = %self.id, error = %e, "cannot start a thread for the notify fd; container syscalls will fail with ENOSYS");
            }
        }
    }

    fn receive_loop(self: &Arc<Self>, runtime: &tokio::runtime::Handle) {
        // Handlers create timers and sockets of the daemon's runtime.
        let _context = runtime.enter();
        loop {
            match self.notify.wait() {
                Ok(Readiness::Notification) => match self.notify.recv() {
                    Ok(n) => self.dispatch(n, runtime),
                    // The caller vanished between poll and receive.
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                    Err(e) => {
                        tracing::error!(container = %self.id, error = %e, "receiving notification failed");
                        return;
                    }
                },
                Ok(Readiness::Hangup) => {
                    let s = self.status();
                    tracing::info!(
                        container = %self.id,
                        bypassed = s.bypassed,
                        kept = s.kept,
                        failed = s.failed,
                        published = s.published,
                        refused = s.refused,
                        bypass_us = s.bypass_us,
                        install_us = s.install_us,
                        "container exited; stopped serving it"
                    );
                    return;
                }
                Ok(Readiness::Interrupted) => {}
                Err(e) => {
                    tracing::error!(container = %self.id, error = %e, "waiting on the notify fd failed; container syscalls will fail with ENOSYS");
                    return;
                }
            }
        }
    }

    /// Runs the handler of `n` here until it finishes or has to wait; in the
    /// second case the runtime finishes it.
    fn dispatch(self: &Arc<Self>, n: Notification, runtime: &tokio::runtime::Handle) {
        let c = self.clone();
        let mut task = Box::pin(async move { c.handle(n).await });
        // A panicking handler has already answered through its AnswerGuard;
        // the loop goes on serving the container.
        let first = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            task.as_mut()
                .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
        }));
        match first {
            // The runtime polls it again at once, with a real waker, so a
            // wake-up sent to the no-op one is not lost.
            Ok(std::task::Poll::Pending) => drop(runtime.spawn(task)),
            Ok(std::task::Poll::Ready(())) => {}
            Err(_) => tracing::error!(container = %self.id, pid = n.pid, "notification handler panicked"),
        }
    }

    async fn handle(&self, n: Notification) {
        let answer = AnswerGuard {
            notify: &self.notify,
            id: n.id,
            armed: true,
        };
        let started = std::time::Instant::now();
        let nr = i64::from(n.nr);
        let native = n.arch == NATIVE_ARCH;
        match &self.mode {
            Mode::Accelerate {
                netns,
                host_netns,
                view,
                defaults,
                routes,
                published,
                listeners,
                callers,
                ..
            } if native && (nr == libc::SYS_connect || nr == libc::SYS_bind || nr == libc::SYS_shutdown) => {
                let ctx = ConnectContext {
                    notify: &self.notify,
                    container_netns: *netns,
                    host_netns: *host_netns,
                    view,
                    defaults,
                    routes,
                    published,
                    owner: self.serial,
                    listeners,
                    callers,
                };
                if nr == libc::SYS_connect {
                    let result = connect::handle(&ctx, &n).await;
                    answer.disarm();
                    if let Ok(Outcome::Bypassed { install, .. }) = &result {
                        let c = &self.counters;
                        c.bypass_ns
                            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
                        c.install_ns
                            .fetch_add(install.as_nanos() as u64, Ordering::Relaxed);
                    }
                    self.record_connect(&n, result);
                } else {
                    let result = if nr == libc::SYS_bind {
                        bind::handle(&ctx, &n).await
                    } else {
                        bind::handle_shutdown(&ctx, &n)
                    };
                    answer.disarm();
                    self.record_bind(&n, result);
                }
            }
            _ => {
                let result = self.notify.answer_continue(n.id);
                answer.disarm();
                if result.is_ok() {
                    self.counters.kept.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    fn record_connect(&self, n: &Notification, result: std::io::Result<Outcome>) {
        let counter = match &result {
            Ok(Outcome::Bypassed { .. }) => Some(&self.counters.bypassed),
            Ok(Outcome::Kept(_)) => Some(&self.counters.kept),
            Ok(Outcome::Failed { .. }) => Some(&self.counters.failed),
            Ok(Outcome::Refused { .. }) => Some(&self.counters.refused),
            _ => None,
        };
        if let Some(c) = counter {
            c.fetch_add(1, Ordering::Relaxed);
        }
        match result {
            Ok(Outcome::Bypassed { dst, errno, .. }) => {
                tracing::debug!(container = %self.id, pid = n.pid, fd = n.args[0], %dst, errno, "connect bypassed to host socket")
            }
            Ok(Outcome::Failed { dst, errno }) => {
                tracing::debug!(container = %self.id, pid = n.pid, %dst, errno, "host connect failed; error returned")
            }
            Ok(Outcome::Refused { errno }) => {
                tracing::info!(container = %self.id, pid = n.pid, fd = n.args[0], errno, "connect on a host listener or loopback socket refused")
            }
            Ok(Outcome::Kept(reason)) => {
                tracing::trace!(container = %self.id, pid = n.pid, ?reason, "connect kept on container path")
            }
            Ok(Outcome::CallerGone) => {
                tracing::debug!(container = %self.id, pid = n.pid, "caller gone before the answer")
            }
            Err(e) => self.failed_handling(n, &e),
        }
    }

    fn record_bind(&self, n: &Notification, result: std::io::Result<BindOutcome>) {
        let counter = match &result {
            Ok(BindOutcome::Published { .. }) => Some(&self.counters.published),
            Ok(BindOutcome::Kept(_) | BindOutcome::Done { .. }) => Some(&self.counters.kept),
            Ok(BindOutcome::HostRefused { .. }) => Some(&self.counters.failed),
            Ok(BindOutcome::Refused { .. }) => Some(&self.counters.refused),
            _ => None,
        };
        if let Some(c) = counter {
            c.fetch_add(1, Ordering::Relaxed);
        }
        match result {
            Ok(BindOutcome::Published { host, container_port }) => {
                tracing::debug!(container = %self.id, pid = n.pid, fd = n.args[0], %host, container_port, "bind published on host listener")
            }
            Ok(BindOutcome::HostRefused { host, errno }) => {
                tracing::debug!(container = %self.id, pid = n.pid, %host, errno, "host bind failed; error returned")
            }
            Ok(BindOutcome::Refused { errno }) => {
                tracing::info!(container = %self.id, pid = n.pid, fd = n.args[0], nr = n.nr, errno, "bind or shutdown on a host socket refused")
            }
            Ok(BindOutcome::Done { errno }) => {
                tracing::trace!(container = %self.id, pid = n.pid, errno, "shutdown run by the daemon")
            }
            Ok(BindOutcome::Kept(reason)) => {
                tracing::trace!(container = %self.id, pid = n.pid, ?reason, "bind kept on container path")
            }
            Ok(BindOutcome::CallerGone) => {
                tracing::debug!(container = %self.id, pid = n.pid, "caller gone before the answer")
            }
            Err(e) => self.failed_handling(n, &e),
        }
    }

    fn failed_handling(&self, n: &Notification, e: &std::io::Error) {
        tracing::warn!(container = %self.id, pid = n.pid, error = %e, "notification handling failed");
        // Not answered yet: let the kernel run the syscall as usual.
        if let Err(e) = self.notify.answer_continue(n.id) {
            tracing::debug!(container = %self.id, error = %e, "continue after failure not delivered");
        }
    }
}

/// Sends CONTINUE if a handler unwinds before answering, so a bug can never
/// leave a container thread blocked forever.
struct AnswerGuard<'a> {
    notify: &'a NotifyFd,
    id: u64,
    armed: bool,
}

impl AnswerGuard<'_> {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for AnswerGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.notify.answer_continue(self.id);
        }
    }
}
