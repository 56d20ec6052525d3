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
//! itself on its own copy here ([`handle_shutdown`]) and refuses on our
//! listeners. A listener is made to listen before the container gets it,
//! so there is no window where it is bound but closed.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;

use rustix::net::{AddressFamily, SocketType};

use crate::connect::{
    check_socket, copy_caller_fd, is_inet_socket, maybe_host, CallerFd, ConnectContext, Keep, Replacement,
    SocketFacts, Verdict,
};
use crate::ifaddrs::NetView;
use crate::netns::NetnsCookie;
use crate::notify::{Delivery, Notification, NotifyFd};
use crate::publish::{self, Listener, PortMapping, Proto};
use crate::sockaddr::{decode_inet, SockaddrCall, MAX_SOCKADDR_LEN};
use crate::sockopts::Purpose;
use crate::tracee;

/// Backlog of a listener before the container's own `listen` sets its value.
const INITIAL_BACKLOG: i32 = 4096;

/// How a bind or shutdown notification ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindOutcome {
    /// The container now holds a host listener on `host`.
    Published {
        host: SocketAddr,
        container_port: u16,
    },
    /// The host refused the bind (port taken, privileged port…): the errno
    /// is the container's answer, its socket is untouched.
    HostRefused {
        host: SocketAddr,
        errno: i32,
    },
    /// Ran by the daemon on its copy of the socket, with this result.
    Done {
        errno: i32,
    },
    /// Ended with an error without running (it would have turned a host
    /// listener of ours into a socket that can connect).
    Refused {
        errno: i32,
    },
    Kept(Keep),
    CallerGone,
}

fn answer(notify: &NotifyFd, n: &Notification, errno: i32, ok: BindOutcome) -> io::Result<BindOutcome> {
    Ok(match notify.answer(n.id, 0, errno)? {
        Delivery::Delivered => ok,
        Delivery::CallerGone => BindOutcome::CallerGone,
    })
}

fn keep(notify: &NotifyFd, n: &Notification, reason: Keep) -> io::Result<BindOutcome> {
    Ok(match notify.answer_continue(n.id)? {
        Delivery::Delivered => BindOutcome::Kept(reason),
        Delivery::CallerGone => BindOutcome::CallerGone,
    })
}

/// Whether a bind to `addr` asks for a published port: the unspecified
/// address or one of the container's own (not loopback: that is local to the
/// container on purpose).
pub fn wants_published(addr: &SocketAddr, view: &NetView, published: &[PortMapping]) -> bool {
    let ip = addr.ip().to_canonical();
    let reachable = ip.is_unspecified() || (view.is_self(ip) && !ip.is_loopback());
    reachable && publish::find(published, Proto::Tcp, addr.port()).is_some()
}

/// Handles one bind notification to completion.
pub async fn handle(ctx: &ConnectContext<'_>, n: &Notification) -> io::Result<BindOutcome> {
    let Some(call) = SockaddrCall::from_args(&n.args) else {
        return keep(ctx.notify, n, Keep::NotApplicable);
    };
    let mut raw = [0u8; MAX_SOCKADDR_LEN];
    if tracee::read_memory(n.pid, call.addr_ptr, &mut raw[..call.addr_len]).is_err() {
        return keep(ctx.notify, n, Keep::NotApplicable);
    }
    let orig = match copy_caller_fd(ctx, n, call.fd) {
        CallerFd::Copied(fd) => fd,
        CallerFd::Gone => return Ok(BindOutcome::CallerGone),
        CallerFd::Failed(_) => return keep(ctx.notify, n, Keep::NotApplicable),
    };
    let facts = match SocketFacts::read(&orig) {
        Ok(f) => f,
        Err(_) => return keep(ctx.notify, n, Keep::NotApplicable),
    };
    if facts.is_inet() && maybe_host(facts.netns, ctx.host_netns) {
        // One of our host sockets: binding it (again) would open a host port
        // the container was not given. The kernel says EINVAL for a bound one.
        return answer(
            ctx.notify,
            n,
            libc::EINVAL,
            BindOutcome::Refused { errno: libc::EINVAL },
        );
    }
    let Some(addr) = decode_inet(&raw[..call.addr_len]) else {
        return keep(ctx.notify, n, Keep::NotInet);
    };
    let wanted = match ctx.view.read() {
        Ok(v) => wants_published(&addr, &v, ctx.published),
        Err(_) => false,
    };
    if !wanted || facts.socket_type != SocketType::STREAM {
        return keep(ctx.notify, n, Keep::IgnoredDestination);
    }
    if let Verdict::Keep(reason) = check_socket(&facts, &addr, ctx.container_netns) {
        return keep(ctx.notify, n, reason);
    }
    let Some(mapping) = publish::find(ctx.published, Proto::Tcp, addr.port()) else {
        return keep(ctx.notify, n, Keep::IgnoredDestination);
    };
    let v6 = facts.family == AddressFamily::INET6;
    let Some(host_addr) = mapping.host_addr(v6) else {
        tracing::warn!(%mapping, "an IPv4 socket cannot bind the IPv6 host address of this mapping; bind keeps the container path");
        return keep(ctx.notify, n, Keep::FamilyMismatch);
    };
    let Some(Replacement {
        host,
        nonblocking,
        cloexec,
    }) = Replacement::for_socket(ctx, orig, &facts, n.pid, call.fd, Purpose::Listen)?
    else {
        return keep(ctx.notify, n, Keep::NotApplicable);
    };
    let bound =
        rustix::net::bind(&host, &host_addr).and_then(|()| rustix::net::listen(&host, INITIAL_BACKLOG));
    if let Err(e) = bound {
        let errno = e.raw_os_error();
        tracing::warn!(%mapping, host = %host_addr, error = %e, "cannot bind the published host port; the container's bind fails with this error");
        return answer(
            ctx.notify,
            n,
            errno,
            BindOutcome::HostRefused {
                host: host_addr,
                errno,
            },
        );
    }
    if !nonblocking {
        let flags = rustix::fs::fcntl_getfl(&host)?;
        rustix::fs::fcntl_setfl(&host, flags - rustix::fs::OFlags::NONBLOCK)?;
    }
    let inode = rustix::fs::fstat(&host)?.st_ino;
    let bound_at = match rustix::net::getsockname(&host).map(SocketAddr::try_from) {
        Ok(Ok(a)) => a,
        _ => host_addr,
    };
    if ctx.notify.install_fd(n.id, host.as_fd(), call.fd, cloexec)? == Delivery::CallerGone {
        return Ok(BindOutcome::CallerGone);
    }
    ctx.listeners.record(Listener {
        owner: ctx.owner,
        addr: bound_at,
        inode,
    });
    answer(
        ctx.notify,
        n,
        0,
        BindOutcome::Published {
            host: bound_at,
            container_port: addr.port(),
        },
    )
}

/// `shutdown(fd, SHUT_RD | SHUT_RDWR)` in a container with bind bypass: run
/// by the daemon on its own copy of the socket (never continued, so the
/// socket it checked is the socket it acts on), refused on our listeners.
pub fn handle_shutdown(ctx: &ConnectContext<'_>, n: &Notification) -> io::Result<BindOutcome> {
    let fd = n.args[0] as u32 as i32;
    let how = n.args[1] as u32 as i32;
    let orig = match copy_caller_fd(ctx, n, fd) {
        CallerFd::Copied(fd) => fd,
        CallerFd::Gone => return Ok(BindOutcome::CallerGone),
        CallerFd::Failed(e) => {
            let errno = e.raw_os_error().unwrap_or(libc::EBADF);
            return answer(ctx.notify, n, errno, BindOutcome::Done { errno });
        }
    };
    let is_ours = is_inet_socket(&orig) && maybe_host(NetnsCookie::of_socket(&orig).ok(), ctx.host_netns);
    if is_ours && rustix::net::sockopt::socket_acceptconn(&orig).unwrap_or(true) {
        return answer(
            ctx.notify,
            n,
            libc::EOPNOTSUPP,
            BindOutcome::Refused {
                errno: libc::EOPNOTSUPP,
            },
        );
    }
    let how = match how {
        libc::SHUT_RD => rustix::net::Shutdown::Read,
        libc::SHUT_WR => rustix::net::Shutdown::Write,
        libc::SHUT_RDWR => rustix::net::Shutdown::Both,
        _ => {
            return answer(
                ctx.notify,
                n,
                libc::EINVAL,
                BindOutcome::Done { errno: libc::EINVAL },
            )
        }
    };
    let errno = match rustix::net::shutdown(&orig, how) {
        Ok(()) => 0,
        Err(e) => e.raw_os_error(),
    };
    answer(ctx.notify, n, errno, BindOutcome::Done { errno })
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
