//! Serving the notify fd of one container (or one `runc exec` process).
//!
//! Several threads receive on one notify fd, each blocked in
//! `SECCOMP_IOCTL_NOTIF_RECV`; the kernel hands each notification to one of
//! them, so calls of the container that arrive together are served together
//! and one slow call stalls nothing else. A thread blocked in the ioctl
//! (not in the async runtime's epoll) is also what
//! `SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP` wakes on the caller's own CPU,
//! instead of waking another (on a VM, often halted) CPU twice per syscall.
//! A handler that has to wait (a route lookup, a loopback backlog) moves to
//! the async runtime and frees its thread.
//!
//! The receiving threads end when the kernel reports that no process uses
//! the filter any more, and everything the container owns goes with them.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::calls::{self, Accel, Event, Handled, Pending};
use crate::ifaddrs::SubnetWatch;
use crate::policy::fallback::{Answer, Fallback};
use crate::policy::verdict::Keep;
use crate::restore::Kept;
use crate::sys::idlog::IdLog;
use crate::sys::notify::{Delivery, Notification, NotifyFd, Readiness};

/// How a container's syscalls are answered.
pub enum Mode {
    /// The fast path.
    Accelerate {
        accel: Box<Accel>,
        /// Keeps the ignore list current; stops with the container.
        _watch: SubnetWatch,
    },
    /// No decisions: every syscall continues unchanged, or fails where the
    /// fallback says continuing could undo a listener guard. Used when a
    /// registration cannot be trusted (so the container still works:
    /// answering nothing would make every notified syscall fail with
    /// ENOSYS), and for a re-attached container whose namespace cannot be
    /// entered again.
    PassThrough(Fallback),
}

/// How the receiving threads wait for notifications.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receivers {
    /// `n` threads blocked in RECV (Linux ≥ 6.6, where RECV returns once the
    /// filter has no users left; the same kernels have synchronous wake-up).
    Blocking(usize),
    /// One thread in poll(2) then RECV, for older kernels, whose RECV would
    /// block forever after the container exits.
    Polling,
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
    /// Where its receivers note each notification id (see `sys::idlog`).
    pub idlog: Option<IdLog>,
    /// Its entry in the keeper, when the daemon has one.
    pub kept: Option<Kept>,
    /// Taken back from the keeper after a daemon restart.
    pub restored: bool,
}

/// What happened to a container's calls, logged when it exits.
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

    fn count(&self, event: &Event, took: Duration, install: Option<Duration>) {
        let counter = match event {
            Event::Bypassed { .. } => {
                self.bypass_ns
                    .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
                self.install_ns
                    .fetch_add(install.unwrap_or_default().as_nanos() as u64, Ordering::Relaxed);
                &self.bypassed
            }
            Event::Published { .. } => &self.published,
            Event::Kept(_) | Event::Done { .. } => &self.kept,
            Event::Failed { .. } | Event::HostRefused { .. } => &self.failed,
            Event::Refused { .. } => &self.refused,
            Event::CallerGone => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

static NEXT_SERIAL: AtomicU64 = AtomicU64::new(1);

/// A serial no container or bypass of this daemon has had, nor any entry
/// the keeper handed back (see [`reserve_serials_through`]).
pub fn next_serial() -> u64 {
    NEXT_SERIAL.fetch_add(1, Ordering::Relaxed)
}

/// Makes every later serial larger than `taken` (the keys the keeper holds
/// for a previous daemon).
pub fn reserve_serials_through(taken: u64) {
    NEXT_SERIAL.fetch_max(taken.saturating_add(1), Ordering::Relaxed);
}

impl Container {
    /// A container to serve; an accelerated one's host listeners are
    /// recorded under its new serial.
    pub fn new(id: String, pid: u32, notify: NotifyFd, mode: Mode) -> Self {
        Self::with_serial(next_serial(), id, pid, notify, mode)
    }

    /// A container under a serial it already had (re-attached).
    pub fn with_serial(serial: u64, id: String, pid: u32, notify: NotifyFd, mut mode: Mode) -> Self {
        if let Mode::Accelerate { accel, .. } = &mut mode {
            accel.owner = serial;
        }
        Self {
            serial,
            id,
            pid,
            notify,
            mode,
            counters: Counters::default(),
            idlog: None,
            kept: None,
            restored: false,
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
            restored: self.restored,
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
    /// Taken back from the keeper after a daemon restart (counters start
    /// again from zero then).
    #[serde(default)]
    pub restored: bool,
}

impl Container {
    /// Serves until the last process using the filter is gone.
    pub async fn serve(self: Arc<Self>, receivers: Receivers) {
        let runtime = tokio::runtime::Handle::current();
        // Nothing is ever sent: `recv` ends (with None) when every thread has
        // dropped its sender, which it does when its loop ends or unwinds.
        let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<()>(1);
        let threads = match receivers {
            Receivers::Blocking(n) => n.max(1),
            Receivers::Polling => 1,
        };
        let mut started = 0;
        for i in 0..threads {
            let (container, runtime, done) = (self.clone(), runtime.clone(), done_tx.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("netaccel-{}.{i}", self.serial))
                .spawn(move || {
                    container.receive_loop(&runtime, receivers);
                    drop(done);
                });
            match spawned {
                Ok(_) => started += 1,
                Err(e) => {
                    tracing::error!(container = %self.id, error = %e, "cannot start a thread for the notify fd")
                }
            }
        }
        drop(done_tx);
        if started == 0 {
            tracing::error!(container = %self.id, "no thread serves this container: its notified syscalls will fail with ENOSYS");
            return;
        }
        let _ = done_rx.recv().await;
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
    }

    fn receive_loop(self: &Arc<Self>, runtime: &tokio::runtime::Handle, receivers: Receivers) {
        // Handlers create timers and sockets of the daemon's runtime.
        let _context = runtime.enter();
        loop {
            if receivers == Receivers::Polling {
                match self.notify.wait() {
                    Ok(Readiness::Notification) => {}
                    Ok(Readiness::Hangup) => return,
                    Ok(Readiness::Interrupted) => continue,
                    Err(e) => {
                        tracing::error!(container = %self.id, error = %e, "waiting on the notify fd failed; container syscalls will fail with ENOSYS");
                        return;
                    }
                }
            }
            match self.notify.recv() {
                Ok(n) => {
                    if let Some(log) = &self.idlog {
                        log.note(n.id);
                    }
                    self.dispatch(n, runtime)
                }
                // The caller vanished between wake-up and receive, another
                // thread took the notification, or (blocking receivers) the
                // filter has no users left: only the last ends the loop.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    if receivers != Receivers::Polling && self.notify.hung_up() {
                        return;
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => {
                    tracing::error!(container = %self.id, error = %e, "receiving notification failed; container syscalls will fail with ENOSYS");
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
        // A panicking handler's `Pending` lets the call continue as it
        // unwinds; the loop goes on serving the container.
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
        let started = Instant::now();
        let pending = Pending::new(&self.notify, n.id);
        let handled = match &self.mode {
            Mode::Accelerate { accel, .. } => calls::handle(accel, &pending, &n).await,
            Mode::PassThrough(fallback) => Ok(match fallback.answer(n.nr) {
                Answer::Continue => Handled::keep(Keep::NotHandled),
                Answer::Fail(errno) => Handled::refuse(errno),
            }),
        };
        let handled = handled.unwrap_or_else(|e| {
            tracing::warn!(container = %self.id, pid = n.pid, nr = n.nr, error = %e, "notification handling failed; the call continues");
            Handled::keep(Keep::NotApplicable)
        });
        self.finish(pending, &n, handled, started);
    }

    /// Answers the kernel (the one place that does), then counts and logs.
    fn finish(&self, pending: Pending<'_>, n: &Notification, handled: Handled, started: Instant) {
        let Handled { reply, event } = handled;
        // A host listener is recorded once the container holds it and
        // before its bind returns (connects to it are routed by the record);
        // the keeper's copy of the record is updated after the answer, off
        // the caller's wait.
        let recorded = std::cell::Cell::new(None);
        let record = || {
            if let (Event::Published { listener, .. }, Mode::Accelerate { accel, .. }) = (&event, &self.mode)
            {
                accel.listeners.record(*listener);
                recorded.set(Some(&accel.listeners));
            }
        };
        let answered = pending.answer_then(reply, record);
        if let (Some(listeners), Some(kept)) = (recorded.get(), &self.kept) {
            kept.listeners_changed(listeners);
        }
        let event = match answered {
            Ok(answered) if answered.delivery == Delivery::CallerGone => Event::CallerGone,
            Ok(answered) => {
                self.counters.count(&event, started.elapsed(), answered.install);
                event
            }
            Err(e) => {
                tracing::warn!(container = %self.id, pid = n.pid, nr = n.nr, error = %e, "answering the kernel failed");
                return;
            }
        };
        self.log(n, &event);
    }

    fn log(&self, n: &Notification, event: &Event) {
        let (id, pid, fd) = (&self.id, n.pid, n.args[0] as u32 as i32);
        match *event {
            Event::Bypassed { dst, errno } => {
                tracing::debug!(container = %id, pid, fd, %dst, errno, "connect bypassed to host socket")
            }
            Event::Failed { dst, errno } => {
                tracing::debug!(container = %id, pid, %dst, errno, "host connect failed; error returned")
            }
            Event::Published {
                host, container_port, ..
            } => {
                tracing::debug!(container = %id, pid, fd, %host, container_port, "bind published on host listener")
            }
            Event::HostRefused { host, errno } => {
                tracing::debug!(container = %id, pid, %host, errno, "host bind failed; error returned")
            }
            Event::Refused { errno } => {
                tracing::info!(container = %id, pid, fd, nr = n.nr, errno, "call on a host listener or loopback socket refused")
            }
            Event::Done { errno } => {
                tracing::trace!(container = %id, pid, nr = n.nr, errno, "run by the daemon")
            }
            Event::Kept(reason) => {
                tracing::trace!(container = %id, pid, nr = n.nr, ?reason, "kept on container path")
            }
            Event::CallerGone => {
                tracing::debug!(container = %id, pid, "caller gone before the answer")
            }
        }
    }
}

/// How many threads receive on each notify fd: one per CPU, at least 2 (a
/// slow call never holds up the next) and at most 4 (every waiting thread
/// is woken for each notification).
pub fn default_receivers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(2, 4)
}

/// Chooses the receivers for a notify fd, given whether synchronous
/// wake-up could be enabled on it and whether this kernel's RECV returns
/// once the filter has no users (`sys::notify::recv_returns_at_hangup`,
/// tried once per daemon: both came with Linux 6.6, and a kernel with
/// only the first would keep blocked threads forever).
pub fn receivers_for(sync_wake_up: io::Result<()>, recv_ends: bool, threads: usize) -> Receivers {
    match sync_wake_up {
        Ok(()) if recv_ends => Receivers::Blocking(threads),
        _ => Receivers::Polling,
    }
}
