//! `bind(2)` on a published port, and the guard that keeps the host listener
//! it creates a listener.
//!
//! A bind of a published TCP container port to the unspecified address (or
//! one of the container's own addresses) gets a host socket instead: bound to
//! the mapping's host address and port, already listening, installed under
//! the container's fd number. The container's `listen` then only adjusts the
//! backlog, and `accept` hands out host sockets, so inbound connections never
//! pass the engine's port forwarder.
//!
//! What the container sees (documented in the README): `getsockname` on the
//! listener shows the host address and port; accepted sockets show the host's
//! local address and the real client as peer (slirp4netns would show its
//! gateway 10.0.2.2 for every client).
//!
//! Safety: the listener can accept from host loopback, so it is never pinned
//! to an interface. A listening socket cannot connect or send anywhere, and
//! only two calls turn it back into a closed one that could:
//! `connect(AF_UNSPEC)` (connect.rs answers it without running it on our
//! sockets) and `shutdown` with SHUT_RD or SHUT_RDWR, which the daemon runs
//! itself on its own copy ([`super::shutdown`]) and refuses on our
//! listeners. A listener is made to listen before the container gets it,
//! so there is no window where it is bound but closed.

use std::io;
use std::net::SocketAddr;

use rustix::net::{AddressFamily, SocketType};

use super::socket::{self, copy_caller_fd, CallerFd, Replacement};
use super::{Accel, AfterInstall, Event, Handled, Pending, Reply};
use crate::policy::netview::NetView;
use crate::policy::sockaddr::{decode_inet, SockaddrCall};
use crate::policy::verdict::{check_socket, maybe_host, Keep, Verdict};
use crate::publish::{self, Listener, PortMapping, Proto};
use crate::sockopts::Purpose;
use crate::sys::notify::Notification;

/// Backlog of a listener before the container's own `listen` sets its value.
const INITIAL_BACKLOG: i32 = 4096;

/// Whether a bind to `addr` asks for a published port: the unspecified
/// address or one of the container's own (not loopback: that is local to the
/// container on purpose).
pub fn wants_published(addr: &SocketAddr, view: &NetView, published: &[PortMapping]) -> bool {
    let ip = addr.ip().to_canonical();
    let reachable = ip.is_unspecified() || (view.is_self(ip) && !ip.is_loopback());
    reachable && publish::find(published, Proto::Tcp, addr.port()).is_some()
}

/// Decides one bind notification.
pub fn handle(
    accel: &Accel,
    pending: &Pending<'_>,
    n: &Notification,
    call: SockaddrCall,
) -> io::Result<Handled> {
    let Some(raw) = socket::read_sockaddr(n, call) else {
        return Ok(Handled::keep(Keep::NotApplicable));
    };
    let orig = match copy_caller_fd(accel, pending, n, call.fd) {
        CallerFd::Copied(fd) => fd,
        CallerFd::Gone => return Ok(Handled::gone()),
        CallerFd::Failed(_) => return Ok(Handled::keep(Keep::NotApplicable)),
    };
    let Ok(facts) = socket::read_facts(&orig, socket::netns_of(&orig)) else {
        return Ok(Handled::keep(Keep::NotApplicable));
    };
    if facts.is_inet() && maybe_host(facts.netns, accel.host_netns) {
        // One of our host sockets: binding it (again) would open a host port
        // the container was not given. The kernel says EINVAL for a bound one.
        return Ok(Handled::refuse(libc::EINVAL));
    }
    let Some(addr) = decode_inet(raw.bytes()) else {
        return Ok(Handled::keep(Keep::NotInet));
    };
    let wanted = match accel.view.read() {
        Ok(v) => wants_published(&addr, &v, &accel.published),
        Err(_) => false,
    };
    if !wanted || facts.socket_type != SocketType::STREAM {
        return Ok(Handled::keep(Keep::IgnoredDestination));
    }
    if let Verdict::Keep(reason) = check_socket(&facts, &addr, accel.container_netns) {
        return Ok(Handled::keep(reason));
    }
    let Some(mapping) = publish::find(&accel.published, Proto::Tcp, addr.port()) else {
        return Ok(Handled::keep(Keep::IgnoredDestination));
    };
    let v6 = facts.family == AddressFamily::INET6;
    let Some(host_addr) = mapping.host_addr(v6) else {
        tracing::warn!(%mapping, "an IPv4 socket cannot bind the IPv6 host address of this mapping; bind keeps the container path");
        return Ok(Handled::keep(Keep::FamilyMismatch));
    };
    let Some(replacement) = Replacement::for_socket(accel, orig, &facts, n.pid, call.fd, Purpose::Listen)?
    else {
        return Ok(Handled::keep(Keep::NotApplicable));
    };
    let host = &replacement.host;
    let bound = rustix::net::bind(host, &host_addr).and_then(|()| rustix::net::listen(host, INITIAL_BACKLOG));
    if let Err(e) = bound {
        let errno = e.raw_os_error();
        tracing::warn!(%mapping, host = %host_addr, error = %e, "cannot bind the published host port; the container's bind fails with this error");
        return Ok(Handled {
            reply: Reply::errno(errno),
            event: Event::HostRefused {
                host: host_addr,
                errno,
            },
        });
    }
    let inode = rustix::fs::fstat(host)?.st_ino;
    let bound_at = match rustix::net::getsockname(host).map(SocketAddr::try_from) {
        Ok(Ok(a)) => a,
        _ => host_addr,
    };
    let (socket, cloexec) = replacement.into_installable()?;
    Ok(Handled {
        reply: Reply::Install {
            socket,
            fd: call.fd,
            cloexec,
            then: AfterInstall::Errno(0),
        },
        event: Event::Published {
            host: bound_at,
            container_port: addr.port(),
            listener: Listener {
                owner: accel.owner,
                addr: bound_at,
                inode,
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> NetView {
        NetView {
            ignore: Default::default(),
            addresses: vec!["10.0.2.100".parse().expect("ip")],
        }
    }

    #[test]
    fn only_reachable_binds_of_published_tcp_ports_are_taken() {
        let published: Vec<PortMapping> =
            vec!["8080:80".parse().expect("m"), "5353:53/udp".parse().expect("m")];
        let yes = |a: &str| wants_published(&a.parse().expect("addr"), &view(), &published);
        assert!(yes("0.0.0.0:80"));
        assert!(yes("[::]:80"));
        assert!(yes("10.0.2.100:80"), "the container's own address");
        assert!(!yes("127.0.0.1:80"), "loopback stays inside the container");
        assert!(!yes("[::1]:80"));
        assert!(!yes("0.0.0.0:81"), "not published");
        assert!(!yes("0.0.0.0:53"), "udp keeps the forwarder");
        assert!(!yes("10.0.2.99:80"), "not an address of the container");
    }
}
