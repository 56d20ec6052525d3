//! The seccomp user-notification fd: receive, validate, answer, inject fds.
//!
//! This is the only module that issues `SECCOMP_IOCTL_NOTIF_*` ioctls. Everything
//! here is a thin, checked wrapper; the decisions live in `calls`.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// `SECCOMP_USER_NOTIF_FLAG_CONTINUE`: let the kernel run the syscall as usual.
const FLAG_CONTINUE: u32 = 1;
/// `SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP` (Linux 6.6): wake the tracee on the
/// answering CPU, which roughly halves the round-trip cost.
const FD_SYNC_WAKE_UP: u64 = 1;

/// One intercepted syscall, as the kernel reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Notification {
    /// Cookie that identifies this notification in every answer.
    pub id: u64,
    /// Thread id of the caller, in the daemon's pid namespace.
    pub pid: u32,
    /// Syscall number.
    pub nr: i32,
    /// `AUDIT_ARCH_*` of the caller.
    pub arch: u32,
    /// Raw syscall arguments.
    pub args: [u64; 6],
}

/// What happened to an answer the daemon sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Delivered,
    /// The caller is gone (killed, or interrupted and restarted): normal.
    CallerGone,
}

/// What waiting on a notify fd ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// A notification can be received.
    Notification,
    /// No process uses the filter any more: nothing will ever arrive.
    Hangup,
    /// A signal interrupted the wait: wait again.
    Interrupted,
}

/// A listener fd returned by `SECCOMP_FILTER_FLAG_NEW_LISTENER`.
#[derive(Debug)]
pub struct NotifyFd {
    fd: OwnedFd,
}

#[derive(Debug, thiserror::Error)]
pub enum NotifyFdError {
    #[error("fd is not a seccomp notify fd (the ioctl answered: {source})")]
    NotNotifyFd { source: io::Error },
}

impl NotifyFd {
    /// Takes ownership of `fd` after checking that it answers seccomp notify
    /// ioctls, so a wrong fd is rejected at registration and never polled.
    pub fn new(fd: OwnedFd) -> Result<Self, NotifyFdError> {
        let this = Self { fd };
        // An id the kernel never hands out; a real notify fd answers ENOENT.
        match this.ioctl_id_valid(u64::MAX) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(this),
            Ok(()) => Ok(this),
            Err(source) => Err(NotifyFdError::NotNotifyFd { source }),
        }
    }

    /// Asks the kernel to wake callers synchronously (Linux >= 6.6). Older
    /// kernels answer EINVAL; that only costs speed, so it is reported, not fatal.
    pub fn enable_sync_wake_up(&self) -> io::Result<()> {
        // SAFETY: SET_FLAGS takes a u64 by value; the fd is a notify fd we own.
        let rc = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_SET_FLAGS as _,
                FD_SYNC_WAKE_UP,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Blocks in poll(2) until a notification is pending or the last user of
    /// the filter is gone. A thread waiting here, rather than in an epoll
    /// set, is what `SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP` wakes on the
    /// caller's own CPU: epoll passes the wake-up on without that flag.
    pub fn wait(&self) -> io::Result<Readiness> {
        self.poll(None)
    }

    /// True when no process uses the filter any more (POLLHUP without a
    /// pending notification), without waiting.
    pub fn hung_up(&self) -> bool {
        let zero = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        matches!(self.poll(Some(&zero)), Ok(Readiness::Hangup))
    }

    /// One poll(2) on the fd; `Interrupted` also when `timeout` passed
    /// with nothing to report.
    fn poll(&self, timeout: Option<&rustix::event::Timespec>) -> io::Result<Readiness> {
        use rustix::event::{poll, PollFd, PollFlags};
        let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
        match poll(&mut fds, timeout) {
            Ok(_) => {
                let ev = fds[0].revents();
                if ev.contains(PollFlags::IN) {
                    Ok(Readiness::Notification)
                } else if ev.intersects(PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL) {
                    Ok(Readiness::Hangup)
                } else {
                    Ok(Readiness::Interrupted)
                }
            }
            Err(rustix::io::Errno::INTR) => Ok(Readiness::Interrupted),
            Err(e) => Err(e.into()),
        }
    }

    /// Receives one notification. After poll reported POLLIN the kernel
    /// returns at once (with ENOENT if the caller vanished); otherwise it
    /// waits for one, and on Linux ≥ 6.6 returns ENOENT once no process
    /// uses the filter any more. Several threads may wait here on one fd:
    /// each notification goes to one of them.
    pub fn recv(&self) -> io::Result<Notification> {
        // SAFETY: an all-zero seccomp_notif is valid (plain integers), and the
        // kernel requires the buffer to be zeroed.
        let mut raw: libc::seccomp_notif = unsafe { std::mem::zeroed() };
        // SAFETY: RECV writes one seccomp_notif into the buffer we pass, which is
        // exactly that type and lives for the call.
        let rc = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_RECV as _,
                &mut raw as *mut libc::seccomp_notif,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Notification {
            id: raw.id,
            pid: raw.pid,
            nr: raw.data.nr,
            arch: raw.data.arch,
            args: raw.data.args,
        })
    }

    /// True while the caller of `id` still waits for our answer; used after
    /// reading its memory or opening its pid, to rule out pid reuse.
    pub fn id_valid(&self, id: u64) -> bool {
        self.ioctl_id_valid(id).is_ok()
    }

    /// The notifications within `window` ids of `last` that a receiver
    /// took and nobody answered yet (ids are sequential per filter, so the
    /// calls a dead daemon left unanswered lie around the last id it
    /// received; see `sys::idlog`). Not-yet-received ones are not listed:
    /// they are received as usual.
    pub fn waiting_ids_near(&self, last: u64, window: u64) -> Vec<u64> {
        let first = last.wrapping_sub(window);
        (0..=2 * window)
            .map(|i| first.wrapping_add(i))
            .filter(|&id| self.id_valid(id))
            .collect()
    }

    fn ioctl_id_valid(&self, id: u64) -> io::Result<()> {
        // SAFETY: ID_VALID reads a u64 through the pointer, which points at a
        // live local.
        let rc = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_ID_VALID as _,
                &id as *const u64,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Lets the kernel execute the syscall unchanged (the normal path).
    pub fn answer_continue(&self, id: u64) -> io::Result<Delivery> {
        self.send(id, 0, 0, FLAG_CONTINUE)
    }

    /// Completes the syscall with `val` (errno == 0) or fails it with `errno`.
    pub fn answer(&self, id: u64, val: i64, errno: i32) -> io::Result<Delivery> {
        self.send(id, val, -errno.abs(), 0)
    }

    fn send(&self, id: u64, val: i64, error: i32, flags: u32) -> io::Result<Delivery> {
        let resp = libc::seccomp_notif_resp {
            id,
            val,
            error,
            flags,
        };
        // SAFETY: SEND reads one seccomp_notif_resp from the pointer, which
        // points at a fully initialised local.
        let rc = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_SEND as _,
                &resp as *const libc::seccomp_notif_resp,
            )
        };
        gone_or(rc, Delivery::Delivered)
    }

    /// Installs `src` in the caller's fd table at number `target`, replacing
    /// what was there (`SECCOMP_ADDFD_FLAG_SETFD`, like dup2 in the caller).
    pub fn install_fd(
        &self,
        id: u64,
        src: BorrowedFd<'_>,
        target: RawFd,
        cloexec: bool,
    ) -> io::Result<Delivery> {
        let addfd = libc::seccomp_notif_addfd {
            id,
            flags: libc::SECCOMP_ADDFD_FLAG_SETFD as u32,
            srcfd: src.as_raw_fd() as u32,
            newfd: target as u32,
            newfd_flags: if cloexec { libc::O_CLOEXEC as u32 } else { 0 },
        };
        // SAFETY: ADDFD reads one seccomp_notif_addfd from the pointer, which
        // points at a fully initialised local; `src` is a live fd we borrow.
        let rc = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_ADDFD as _,
                &addfd as *const libc::seccomp_notif_addfd,
            )
        };
        gone_or(rc, Delivery::Delivered)
    }
}

/// Whether this kernel's RECV returns (ENOENT) once no process uses the
/// filter, which lets threads wait in RECV without a poll(2) first; Linux
/// 6.6 brought it with synchronous wake-up, and older kernels wait there
/// forever. Tried on a filter of our own: a short-lived thread loads an
/// allow-everything filter with a listener and exits, and a second thread
/// waits in RECV on that listener (on a kernel without it, that second
/// thread stays blocked: one thread, once per daemon). An error when the
/// filter cannot be loaded (EBUSY: the daemon itself runs under a filter
/// with a listener).
pub fn recv_returns_at_hangup() -> io::Result<bool> {
    const WAIT: std::time::Duration = std::time::Duration::from_secs(2);
    let fd = std::thread::spawn(load_listener_on_this_thread)
        .join()
        .map_err(|_| io::Error::other("the probe thread panicked"))??;
    let notify = NotifyFd::new(fd).map_err(io::Error::other)?;
    if notify.enable_sync_wake_up().is_err() {
        return Ok(false);
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("netaccel-probe".into())
        .spawn(move || {
            let _ = tx.send(notify.recv().map(|_| ()));
        });
    spawned?;
    Ok(matches!(rx.recv_timeout(WAIT), Ok(Err(e)) if e.raw_os_error() == Some(libc::ENOENT)))
}

/// Loads "allow everything" with a new listener on the calling thread only
/// (no TSYNC) and returns the listener. Sets no_new_privs on this thread.
fn load_listener_on_this_thread() -> io::Result<OwnedFd> {
    let mut allow = [libc::sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k: libc::SECCOMP_RET_ALLOW,
    }];
    let prog = libc::sock_fprog {
        len: allow.len() as u16,
        filter: allow.as_mut_ptr(),
    };
    // SAFETY: PR_SET_NO_NEW_PRIVS takes plain integers and affects this
    // thread, which exits right after.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `prog` points at `allow`, a valid one-instruction BPF program
    // that outlives the call; without TSYNC the filter binds this thread.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
            &prog as *const libc::sock_fprog,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn gone_or(rc: libc::c_int, ok: Delivery) -> io::Result<Delivery> {
    if rc >= 0 {
        return Ok(ok);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ENOENT) {
        Ok(Delivery::CallerGone)
    } else {
        Err(err)
    }
}

impl AsFd for NotifyFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for NotifyFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_kernel_ends_a_wait_in_recv_when_the_filter_has_no_users() {
        let listener = match std::thread::spawn(load_listener_on_this_thread).join() {
            Ok(Err(e)) if e.raw_os_error() == Some(libc::EBUSY) => {
                eprintln!("skipped: this test runs under a seccomp filter with a listener already");
                return;
            }
            other => other.expect("thread").expect("listener"),
        };
        let probe = NotifyFd::new(listener).expect("notify fd").enable_sync_wake_up();
        if let Err(e) = probe {
            eprintln!("skipped: no synchronous wake-up on this kernel ({e}): Linux < 6.6");
            return;
        }
        assert!(recv_returns_at_hangup().expect("probe runs"));
    }

    #[test]
    fn rejects_an_fd_that_is_not_a_notify_fd() {
        let file = std::fs::File::open("/dev/null").expect("open /dev/null");
        let err = NotifyFd::new(file.into()).expect_err("/dev/null accepted");
        assert!(err.to_string().contains("not a seccomp notify fd"), "{err}");
    }
}
