//! Serving the notify fd of one container (or one `runc exec` process).
//!
//! One receive loop per notify fd; every notification is handled in its own
//! task, so a slow connect never stalls other threads of the same container.
//! The loop ends when the kernel reports that no process uses the filter any
//! more (POLLHUP), and everything it owns goes with it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use tokio::io::unix::AsyncFd;

use crate::connect::{self, ConnectContext, Outcome};
use crate::ifaddrs::SubnetWatch;
use crate::ignore::IgnoreList;
use crate::netns::NetnsId;
use crate::notify::{Notification, NotifyFd};
use crate::route::Routes;
use crate::sockopts::HostDefaults;

#[cfg(target_arch = "x86_64")]
const NATIVE_ARCH: u32 = 0xC000_003E; // AUDIT_ARCH_X86_64
#[cfg(target_arch = "aarch64")]
const NATIVE_ARCH: u32 = 0xC000_00B7; // AUDIT_ARCH_AARCH64

/// How a container's syscalls are answered.
pub enum Mode {
    /// The fast path, with the container's namespace and ignore list.
    Accelerate {
        netns: NetnsId,
        ignore: Arc<RwLock<IgnoreList>>,
        defaults: Arc<HostDefaults>,
        routes: Arc<Routes>,
        /// Keeps the ignore list current; stops with the container.
        _watch: SubnetWatch,
    },
    /// Every syscall continues unchanged: used when the registration could
    /// not be trusted, so the container still works (answering nothing would
    /// make every notified syscall fail with ENOSYS).
    PassThrough,
}

pub struct Container {
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
}

impl Container {
    pub fn new(id: String, pid: u32, notify: NotifyFd, mode: Mode) -> Self {
        Self {
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
        ContainerStatus {
            id: self.id.clone(),
            pid: self.pid,
            accelerated: matches!(self.mode, Mode::Accelerate { .. }),
            bypassed: c.bypassed.load(Ordering::Relaxed),
            kept: c.kept.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
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
}

impl Container {
    /// Serves until the last process using the filter is gone.
    pub async fn serve(self: Arc<Self>) {
        let id = self.id.clone();
        let container = self;
        // SAFETY: the Container owns its NotifyFd, which stays open and keeps
        // its number for as long as any Arc (including the AsyncFd's) lives.
        let registered =
            unsafe { AsyncFd::register_with_interest(container.clone(), tokio::io::Interest::READABLE) };
        let afd = match registered.map_err(|e| e.into_parts().1) {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(container = %id, error = %e, "cannot poll notify fd; container syscalls will fail with ENOSYS");
                return;
            }
        };
        loop {
            let mut guard = match afd.readable().await {
                Ok(g) => g,
                Err(e) => {
                    tracing::error!(container = %id, error = %e, "polling notify fd failed");
                    return;
                }
            };
            loop {
                match pending(&container.notify) {
                    Pending::Notification => match container.notify.recv() {
                        Ok(n) => {
                            let c = container.clone();
                            tokio::spawn(async move { c.handle(n).await });
                        }
                        // The caller vanished between poll and receive.
                        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                        Err(e) => {
                            tracing::error!(container = %id, error = %e, "receiving notification failed");
                            return;
                        }
                    },
                    Pending::Hangup => {
                        let c = &container.counters;
                        tracing::info!(
                            container = %id,
                            bypassed = c.bypassed.load(Ordering::Relaxed),
                            kept = c.kept.load(Ordering::Relaxed),
                            failed = c.failed.load(Ordering::Relaxed),
                            "container exited; stopped serving it"
                        );
                        return;
                    }
                    Pending::Nothing => {
                        guard.clear_ready();
                        break;
                    }
                }
            }
        }
    }

    async fn handle(&self, n: Notification) {
        let answer = AnswerGuard {
            notify: &self.notify,
            id: n.id,
            armed: true,
        };
        let result = match &self.mode {
            Mode::Accelerate {
                netns,
                ignore,
                defaults,
                routes,
                ..
            } if n.arch == NATIVE_ARCH && i64::from(n.nr) == libc::SYS_connect => {
                let ctx = ConnectContext {
                    notify: &self.notify,
                    container_netns: *netns,
                    ignore,
                    defaults,
                    routes,
                };
                connect::handle(&ctx, &n).await
            }
            _ => self
                .notify
                .answer_continue(n.id)
                .map(|_| Outcome::Kept(connect::Keep::NotApplicable)),
        };
        answer.disarm();
        let counter = match &result {
            Ok(Outcome::Bypassed { .. }) => Some(&self.counters.bypassed),
            Ok(Outcome::Kept(_)) => Some(&self.counters.kept),
            Ok(Outcome::Failed { .. }) => Some(&self.counters.failed),
            _ => None,
        };
        if let Some(c) = counter {
            c.fetch_add(1, Ordering::Relaxed);
        }
        match result {
            Ok(Outcome::Bypassed { dst, errno }) => {
                tracing::debug!(container = %self.id, pid = n.pid, fd = n.args[0], %dst, errno, "connect bypassed to host socket")
            }
            Ok(Outcome::Failed { dst, errno }) => {
                tracing::debug!(container = %self.id, pid = n.pid, %dst, errno, "host connect failed; error returned")
            }
            Ok(Outcome::Kept(reason)) => {
                tracing::trace!(container = %self.id, pid = n.pid, ?reason, "connect kept on container path")
            }
            Ok(Outcome::CallerGone) => {
                tracing::debug!(container = %self.id, pid = n.pid, "caller gone before the answer")
            }
            Err(e) => {
                tracing::warn!(container = %self.id, pid = n.pid, error = %e, "notification handling failed");
                // Not answered yet: let the kernel run the syscall as usual.
                if let Err(e) = self.notify.answer_continue(n.id) {
                    tracing::debug!(container = %self.id, error = %e, "continue after failure not delivered");
                }
            }
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

impl std::os::fd::AsRawFd for Container {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.notify.as_raw_fd()
    }
}

enum Pending {
    Notification,
    Hangup,
    Nothing,
}

fn pending(notify: &NotifyFd) -> Pending {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let mut fds = [PollFd::new(notify, PollFlags::IN)];
    let zero = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    match poll(&mut fds, Some(&zero)) {
        Ok(0) => Pending::Nothing,
        Ok(_) => {
            let ev = fds[0].revents();
            if ev.contains(PollFlags::IN) {
                Pending::Notification
            } else if ev.intersects(PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL) {
                Pending::Hangup
            } else {
                Pending::Nothing
            }
        }
        Err(_) => Pending::Nothing,
    }
}
