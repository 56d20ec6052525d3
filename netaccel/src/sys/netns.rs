//! Network-namespace identity of processes and sockets.
//!
//! A socket stays in the namespace it was created in, whatever its owner does
//! later, so the bypass decision compares the *socket's* namespace (its
//! [`NetnsCookie`]) with the container's: a socket from a nested namespace
//! (`unshare -n`, a pod inside a node container) must never be bypassed.

use std::io;
use std::os::fd::{AsFd, AsRawFd};
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
}

/// `SO_NETNS_COOKIE` (Linux 5.14), the same on x86_64 and aarch64.
const SO_NETNS_COOKIE: libc::c_int = 71;

/// A network namespace as its cookie: unique for the boot and readable from
/// any socket with one `getsockopt`, without privileges. Cheaper than
/// `SIOCGSKNS` (no fd to create and close), and it works on host sockets,
/// whose namespace an unprivileged daemon cannot open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NetnsCookie(u64);

impl NetnsCookie {
    /// The namespace `socket` belongs to.
    pub fn of_socket(socket: impl AsFd) -> io::Result<Self> {
        let mut cookie: u64 = 0;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        // SAFETY: SO_NETNS_COOKIE writes one u64 into `cookie`, a live local
        // of that size, and updates `len`; the fd is borrowed for the call.
        let rc = unsafe {
            libc::getsockopt(
                socket.as_fd().as_raw_fd(),
                libc::SOL_SOCKET,
                SO_NETNS_COOKIE,
                (&mut cookie as *mut u64).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self(cookie))
    }

    /// The namespace of the calling thread (through a throwaway socket).
    pub fn current() -> io::Result<Self> {
        let sock = rustix::net::socket(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::DGRAM,
            None,
        )?;
        Self::of_socket(&sock)
    }

    /// A cookie from its value (tests, and namespaces known by number).
    pub fn from_raw(cookie: u64) -> Self {
        Self(cookie)
    }

    /// Its value, to record it.
    pub fn raw(self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_tell_namespaces_apart() {
        let me = NetnsCookie::current().expect("Linux >= 5.14 has SO_NETNS_COOKIE");
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        assert_eq!(NetnsCookie::of_socket(&tcp).expect("cookie"), me);
        assert_ne!(me, NetnsCookie::from_raw(me.0.wrapping_add(1)));
    }

    #[test]
    fn a_process_is_in_its_namespace() {
        let me = NetnsId::current().expect("own netns");
        assert_eq!(NetnsId::of_pid(std::process::id()).expect("by pid"), me);
        assert_ne!(NetnsId::of_path("/proc/self/ns/uts").expect("uts ns"), me);
    }
}
