//! What the handlers do with the caller's socket: copy it, read its facts,
//! and build the host socket that replaces it.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};

use rustix::net::{AddressFamily, SocketFlags};

use super::{Accel, Pending};
use crate::policy::sockaddr::{SockaddrCall, MAX_SOCKADDR_LEN};
use crate::policy::verdict::{self, SocketFacts};
use crate::sockopts::{Purpose, SocketOptions};
use crate::sys::netns::NetnsCookie;
use crate::sys::notify::Notification;
use crate::sys::{sock, tracee};

/// The caller's fd, copied while its notification is live.
pub enum CallerFd {
    Copied(OwnedFd),
    /// The caller died or was interrupted: nothing to answer.
    Gone,
    /// `pidfd_getfd` failed (EBADF…).
    Failed(io::Error),
}

/// Copies fd `fd` of the notification's caller. A pidfd opened now is the
/// caller's only while the notification is still live, hence the `ID_VALID`
/// check between opening it and using it; one kept from an earlier call of
/// the same tid is checked after the copy instead (see `Callers`).
pub fn copy_caller_fd(accel: &Accel, pending: &Pending<'_>, n: &Notification, fd: i32) -> CallerFd {
    let finish = |copied: io::Result<OwnedFd>| match copied {
        Ok(copy) => CallerFd::Copied(copy),
        Err(e) => CallerFd::Failed(e),
    };
    if let Some(copied) = accel.callers.copy_fd(n.pid, fd) {
        if !pending.still_waiting() {
            return CallerFd::Gone;
        }
        return finish(copied);
    }
    let pidfd = match tracee::open_thread(n.pid) {
        Ok(pidfd) => pidfd,
        // The thread exited, or the daemon is out of fds or memory: only
        // the notification tells which.
        Err(e) if pending.still_waiting() => return CallerFd::Failed(e),
        Err(_) => return CallerFd::Gone,
    };
    if !pending.still_waiting() {
        return CallerFd::Gone;
    }
    let copied = tracee::copy_fd(&pidfd.fd, fd);
    accel.callers.keep(n.pid, pidfd);
    finish(copied)
}

/// The caller's sockaddr argument, copied out of its memory: `None` for a
/// bad pointer (the kernel answers EFAULT itself when the call continues).
pub fn read_sockaddr(n: &Notification, call: SockaddrCall) -> Option<CallerSockaddr> {
    let mut raw = [0u8; MAX_SOCKADDR_LEN];
    tracee::read_memory(n.pid, call.addr_ptr, &mut raw[..call.addr_len]).ok()?;
    Some(CallerSockaddr {
        raw,
        len: call.addr_len,
    })
}

/// Our copy of a caller's sockaddr: every decision reads this, never the
/// caller's memory again.
pub struct CallerSockaddr {
    raw: [u8; MAX_SOCKADDR_LEN],
    len: usize,
}

impl CallerSockaddr {
    pub fn bytes(&self) -> &[u8] {
        &self.raw[..self.len]
    }
}

/// The namespace of a socket, `None` when it cannot be read (not a socket).
pub fn netns_of(sock: impl AsFd) -> Option<NetnsCookie> {
    NetnsCookie::of_socket(sock).ok()
}

/// Reads the facts of `sock`, whose namespace is `netns`: four syscalls on
/// an inet socket (each 1–2 µs on a VM, on every bypassed connect), one for
/// anything else.
pub fn read_facts(sock: impl AsFd, netns: Option<NetnsCookie>) -> io::Result<SocketFacts> {
    let sock = sock.as_fd();
    let local = rustix::net::getsockname(sock)?;
    let family = local.address_family();
    let socket_type = rustix::net::sockopt::socket_type(sock)?;
    if !verdict::is_inet(family, socket_type) {
        return Ok(SocketFacts {
            family,
            socket_type,
            protocol: None,
            netns: None,
            device: None,
            bound: false,
            closed: false,
        });
    }
    let protocol = rustix::net::sockopt::socket_protocol(sock)?.map(|p| p.as_raw().get());
    let device = sock::pinned_interface(sock).ok();
    // Unknown counts as bound: the caller then leaves the socket alone.
    let bound = local_is_bound(&local) || device != Some(0);
    Ok(SocketFacts {
        family,
        socket_type,
        protocol,
        netns,
        device,
        bound,
        // Connecting, connected and listening sockets (TCP) and connected
        // ones (UDP) all hold a local port, so an unbound socket has none
        // of those states: it is closed.
        closed: !bound,
    })
}

fn local_is_bound(local: &rustix::net::SocketAddrAny) -> bool {
    match SocketAddr::try_from(local.clone()) {
        Ok(a) => a.port() != 0 || !a.ip().is_unspecified(),
        Err(_) => true,
    }
}

/// An AF_INET or AF_INET6 socket.
pub fn is_inet_socket(sock: impl AsFd) -> bool {
    matches!(
        rustix::net::sockopt::socket_domain(sock),
        Ok(AddressFamily::INET | AddressFamily::INET6)
    )
}

/// A host socket made to replace a container's socket, with what the
/// container's fd carries that the installation must keep.
pub struct Replacement {
    /// Same family and type, the container's options replayed; non-blocking
    /// and close-on-exec in the daemon until installed.
    pub host: OwnedFd,
    pub nonblocking: bool,
    pub cloexec: bool,
}

impl Replacement {
    /// Reads what the container's socket (`orig`, our copy of fd `fd` of
    /// `pid`) needs carried over and creates its replacement; `None` when
    /// the host has no defaults for this kind of socket.
    pub fn for_socket(
        accel: &Accel,
        orig: OwnedFd,
        facts: &SocketFacts,
        pid: u32,
        fd: i32,
        purpose: Purpose,
    ) -> io::Result<Option<Self>> {
        let Some(defaults) = accel.defaults.for_socket(facts.family, facts.socket_type) else {
            return Ok(None);
        };
        // One read of the caller's fdinfo tells both flags; fcntl when it
        // cannot be read. The file is found by fd number, so a caller that
        // swaps another file onto that number during its own connect gets
        // that file's flags: the same number is what the host socket
        // replaces, so it gets our socket in place of whatever it put there
        // either way.
        let (nonblocking, cloexec) = match accel.callers.fd_flags(pid, fd) {
            Ok(flags) => (flags.nonblocking, flags.cloexec),
            Err(_) => (
                rustix::fs::fcntl_getfl(&orig)?.contains(rustix::fs::OFlags::NONBLOCK),
                false,
            ),
        };
        let opts = SocketOptions::read(&orig, facts.family, facts.socket_type, purpose);
        drop(orig);
        let host = rustix::net::socket_with(
            facts.family,
            facts.socket_type,
            SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
            None,
        )?;
        for refused in opts.apply_changed(&host, defaults) {
            tracing::debug!(option = refused.option, errno = %refused.errno, "option not replayed on host socket");
        }
        Ok(Some(Self {
            host,
            nonblocking,
            cloexec,
        }))
    }

    /// The host socket, blocking again if the container's was.
    pub fn into_installable(self) -> io::Result<(OwnedFd, bool)> {
        if !self.nonblocking {
            // A fresh socket has no other status flag to keep.
            rustix::fs::fcntl_setfl(&self.host, rustix::fs::OFlags::empty())?;
        }
        Ok((self.host, self.cloexec))
    }
}

/// The outcome of a connect still in progress, if it is already known:
/// Some(0) connected, Some(errno) failed, None still connecting.
pub fn connect_result_now(sock: impl AsFd) -> Option<i32> {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let sock = sock.as_fd();
    let mut fds = [PollFd::new(&sock, PollFlags::OUT)];
    let zero = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    match poll(&mut fds, Some(&zero)) {
        Ok(n) if n > 0 => Some(match rustix::net::sockopt::socket_error(sock) {
            Ok(Ok(())) => 0,
            Ok(Err(e)) | Err(e) => e.raw_os_error(),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::net::SocketType;

    fn facts(sock: impl AsFd) -> SocketFacts {
        let sock = sock.as_fd();
        read_facts(sock, netns_of(sock)).expect("facts")
    }

    #[test]
    fn socket_facts_of_real_sockets() {
        let tcp = rustix::net::socket(AddressFamily::INET, SocketType::STREAM, None).expect("tcp");
        let f = facts(&tcp);
        assert_eq!(
            (f.family, f.socket_type, f.bound, f.closed),
            (AddressFamily::INET, SocketType::STREAM, false, true)
        );
        let udp = rustix::net::socket(AddressFamily::INET, SocketType::DGRAM, None).expect("udp");
        let f = facts(&udp);
        assert_eq!(
            (f.socket_type, f.bound, f.closed),
            (SocketType::DGRAM, false, true)
        );
        rustix::net::connect(&udp, &"127.0.0.1:9".parse::<SocketAddr>().expect("addr")).expect("udp connect");
        assert!(!facts(&udp).closed, "a connected UDP socket has a peer");
        assert_eq!(facts(&udp).socket_type, SocketType::DGRAM);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let f = facts(&listener);
        assert!(f.bound && !f.closed);
        let pinned = rustix::net::socket(AddressFamily::INET, SocketType::STREAM, None).expect("tcp");
        sock::pin_to_interface(&pinned, 1).expect("pin");
        assert!(facts(&pinned).bound, "bound to a device");
    }
}
