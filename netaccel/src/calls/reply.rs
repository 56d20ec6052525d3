//! The one way a handler's decision reaches the kernel.
//!
//! A handler never answers: it returns a [`Reply`]. The dispatcher holds the
//! notification's [`Pending`] token, which is neither `Copy` nor `Clone`, and
//! [`Pending::answer`] consumes it, so each notification is answered at most
//! once by construction, and at least once because dropping an unanswered
//! token (a handler error, a panic unwinding) lets the syscall continue: a
//! bug can never leave a container thread blocked forever.

use std::io;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use crate::sys::notify::{Delivery, NotifyFd};

/// How a notified syscall ends.
#[derive(Debug)]
pub enum Reply {
    /// The kernel runs the syscall as the container asked.
    Continue,
    /// The syscall returns `val`, or fails with `errno` when it is not 0.
    Return { val: i64, errno: i32 },
    /// `socket` replaces the caller's fd `fd` (as dup2 would, with
    /// close-on-exec as given), then the syscall ends as `then` says.
    Install {
        socket: OwnedFd,
        fd: RawFd,
        cloexec: bool,
        then: AfterInstall,
    },
    /// Nothing to answer: the caller is gone. (Should the kernel still list
    /// the notification, it continues: never left unanswered.)
    Gone,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterInstall {
    /// Return 0, or fail with this errno.
    Errno(i32),
    /// The kernel runs the syscall on the installed socket.
    Continue,
}

impl Reply {
    pub fn errno(errno: i32) -> Self {
        Reply::Return { val: 0, errno }
    }
}

/// What answering did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answered {
    pub delivery: Delivery,
    /// How long installing a socket took (the ADDFD round trip through the
    /// caller), when one was installed.
    pub install: Option<Duration>,
}

/// The right to answer one notification.
#[derive(Debug)]
pub struct Pending<'a> {
    notify: &'a NotifyFd,
    id: u64,
    answered: bool,
}

impl<'a> Pending<'a> {
    pub fn new(notify: &'a NotifyFd, id: u64) -> Self {
        Self {
            notify,
            id,
            answered: false,
        }
    }

    /// True while the caller still waits for the answer: checked after
    /// opening its pid or copying its fd, to rule out pid reuse.
    pub fn still_waiting(&self) -> bool {
        self.notify.id_valid(self.id)
    }

    /// Sends `reply` (see [`Pending::answer_then`]).
    pub fn answer(self, reply: Reply) -> io::Result<Answered> {
        self.answer_then(reply, || {})
    }

    /// Sends `reply`: ADDFD when it installs a socket, then `installed`
    /// (what must be recorded once the caller holds the socket, before it
    /// can use it), then SEND, each at most once. An install the kernel
    /// refuses with an error (not a gone caller) still ends the call: it
    /// continues on the container's own socket, and the error is returned
    /// for the log.
    pub fn answer_then(mut self, reply: Reply, installed: impl FnOnce()) -> io::Result<Answered> {
        self.answered = true;
        let (notify, id) = (self.notify, self.id);
        let sent = |delivery: io::Result<Delivery>| {
            delivery.map(|delivery| Answered {
                delivery,
                install: None,
            })
        };
        match reply {
            Reply::Continue => sent(notify.answer_continue(id)),
            Reply::Return { val, errno } => sent(notify.answer(id, val, errno)),
            Reply::Gone if notify.id_valid(id) => sent(notify.answer_continue(id)),
            Reply::Gone => sent(Ok(Delivery::CallerGone)),
            Reply::Install {
                socket,
                fd,
                cloexec,
                then,
            } => {
                let started = Instant::now();
                match notify.install_fd(id, socket.as_fd(), fd, cloexec) {
                    Ok(Delivery::CallerGone) => return sent(Ok(Delivery::CallerGone)),
                    Ok(Delivery::Delivered) => {}
                    Err(e) => {
                        let _ = notify.answer_continue(id);
                        return Err(e);
                    }
                }
                let install = Some(started.elapsed());
                installed();
                // Our copy of the socket closes after the answer, off the
                // caller's wait.
                let delivery = match then {
                    AfterInstall::Errno(errno) => notify.answer(id, 0, errno)?,
                    AfterInstall::Continue => notify.answer_continue(id)?,
                };
                Ok(Answered { delivery, install })
            }
        }
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.answered {
            let _ = self.notify.answer_continue(self.id);
        }
    }
}
