//! Network-namespace identity of processes and sockets.
//!
//! A socket stays in the namespace it was created in, whatever its owner does
//! later, so the bypass decision compares the *socket's* namespace with the
//! container's: a socket from a nested namespace (`unshare -n`, a pod inside a
//! node container) must never be bypassed.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// A namespace, identified as the kernel does: nsfs device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NetnsId {
    dev: u64,
    ino: u64,
}

impl NetnsId {
    fn of_stat(st: &rustix::fs::Stat) -> Self {
        Self {
            dev: st.st_dev,
            ino: st.st_ino,
        }
    }

    /// The network namespace of process (or thread) `pid`.
    pub fn of_pid(pid: u32) -> io::Result<Self> {
        Self::of_path(format!("/proc/{pid}/ns/net"))
    }

    /// The network namespace of the calling process.
    pub fn current() -> io::Result<Self> {
        Self::of_path("/proc/self/ns/net")
    }

    /// The namespace behind an nsfs path (`/proc/PID/ns/net`, a bind mount…).
    pub fn of_path(path: impl AsRef<Path>) -> io::Result<Self> {
        Ok(Self::of_stat(&rustix::fs::stat(path.as_ref())?))
    }

    /// The network namespace `socket` belongs to (`SIOCGSKNS`). Needs
    /// CAP_NET_ADMIN over that namespace, which the owner of a rootless
    /// container's user namespace has; anything else fails (and the caller
    /// must then leave the socket alone).
    pub fn of_socket(socket: impl AsFd) -> io::Result<Self> {
        // SAFETY: SIOCGSKNS takes no argument and returns a new fd or -1; the
        // socket fd is borrowed for the duration of the call.
        let rc = unsafe { libc::ioctl(socket.as_fd().as_raw_fd(), libc::SIOCGSKNS as _) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: on success the ioctl returned a fresh fd that nothing else owns.
        let ns = unsafe { OwnedFd::from_raw_fd(rc) };
        Ok(Self::of_stat(&rustix::fs::fstat(&ns)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_is_in_its_creators_namespace() {
        let me = NetnsId::current().expect("own netns");
        assert_eq!(NetnsId::of_pid(std::process::id()).expect("by pid"), me);
        let sock = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        match NetnsId::of_socket(&sock) {
            Ok(ns) => assert_eq!(ns, me),
            // Without CAP_NET_ADMIN over our own namespace (unprivileged run).
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}"),
        }
    }
}
