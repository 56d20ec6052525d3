//! `connect(2)`: decide whether a call takes the fast path, and take it.
//!
//! Taking the fast path never lets the kernel re-read the container's
//! memory: the daemon connects its own host socket to its own copy of the
//! address, then installs that socket under the container's fd number and
//! answers with the result. A thread that rewrites the sockaddr after the
//! check changes nothing (the TOCTOU of the Go tool, which answered CONTINUE
//! after swapping the fd, cannot happen here).
//!
//! The order is cheapest keep first: the address (one read of the caller's
//! memory) settles loopback and ignored destinations; the socket's namespace
//! (one `getsockopt` on a copy of the fd) settles nested namespaces; only a
//! socket of the container itself, to a destination routed out of the host,
//! pays for the full facts, the route and the replacement.

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;

use rustix::net::SocketType;

use super::socket::{self, copy_caller_fd, CallerFd, Replacement};
use super::{Accel, AfterInstall, Event, Handled, Pending, Reply};
use crate::policy::sockaddr::{decode_inet, is_unspec, SockaddrCall};
use crate::policy::verdict::{self, check_destination, check_socket, Home, Keep, SocketFacts, Verdict};
use crate::publish::{self, Proto};
use crate::route::Egress;
use crate::sockopts::Purpose;
use crate::sys::notify::Notification;
use crate::sys::sock;

/// Where a bypassed connect goes.
struct Target {
    addr: SocketAddr,
    /// The interface the host socket is pinned to; `None` for a listener on
    /// the host itself, which is reached over loopback (such a socket is
    /// settled as connected and never connected again, see
    /// `settle_loopback`).
    ifindex: Option<u32>,
}

/// Decides one connect notification.
pub async fn handle(
    accel: &Accel,
    pending: &Pending<'_>,
    n: &Notification,
    call: SockaddrCall,
) -> io::Result<Handled> {
    let Some(addr) = socket::read_sockaddr(n, call) else {
        return Ok(Handled::keep(Keep::NotApplicable));
    };
    let Some(dst) = decode_inet(addr.bytes()) else {
        if is_unspec(addr.bytes()) && !accel.published.is_empty() {
            return Ok(disconnect(accel, pending, n, call));
        }
        return Ok(Handled::keep(Keep::NotInet));
    };
    let (ignored, to_self) = match accel.view.read() {
        Ok(v) => (
            check_destination(&dst, &v.ignore) != Verdict::Bypass,
            v.is_self(dst.ip()),
        ),
        Err(_) => return Ok(Handled::keep(Keep::NotApplicable)),
    };
    // The container connecting to itself on a port it published through us:
    // its listener lives on the host now.
    let to_own_listener = to_self && publish::find(&accel.published, Proto::Tcp, dst.port()).is_some();
    if ignored && !to_own_listener {
        if !accel.published.is_empty() {
            // A container with host listeners: the kernel must not run this
            // connect on one of them (it would connect from the host).
            return Ok(refuse_on_host_listener(accel, pending, n, call.fd));
        }
        return Ok(Handled::keep(Keep::IgnoredDestination));
    }
    let orig = match copy_caller_fd(accel, pending, n, call.fd) {
        CallerFd::Copied(fd) => fd,
        CallerFd::Gone => return Ok(Handled::gone()),
        // EBADF and the like: the kernel produces the right errno.
        CallerFd::Failed(_) => return Ok(Handled::keep(Keep::NotApplicable)),
    };
    let netns = socket::netns_of(&orig);
    let home = verdict::home_of(netns, accel.container_netns, accel.host_netns);
    if home == Home::Nested {
        return Ok(Handled::keep(Keep::ForeignNamespace));
    }
    let Ok(facts) = socket::read_facts(&orig, netns) else {
        return Ok(Handled::keep(Keep::NotApplicable));
    };
    if home == Home::MaybeHost {
        if let Some(errno) = verdict::host_socket_refusal(&facts, accel.host_netns) {
            return Ok(Handled::refuse(errno));
        }
    }
    if let Verdict::Keep(reason) = check_socket(&facts, &dst, accel.container_netns) {
        return Ok(Handled::keep(reason));
    }
    let stream = facts.socket_type == SocketType::STREAM;
    let target = if to_own_listener {
        match own_listener(accel, &facts, &dst) {
            Some(addr) if stream => Target { addr, ifindex: None },
            _ => return Ok(Handled::keep(Keep::IgnoredDestination)),
        }
    } else {
        match accel.routes.egress(dst.ip()).await {
            Ok(Egress::Interface(ifindex)) => Target {
                addr: dst,
                ifindex: Some(ifindex),
            },
            // One of the host's own addresses (a server on the host, another
            // container's published port): pinned to the interface that
            // carries the address, which reaches it and never loopback (see
            // route.rs).
            Ok(Egress::HostAddress(ifindex)) => Target {
                addr: dst,
                ifindex: Some(ifindex),
            },
            Ok(Egress::Local | Egress::None) => return Ok(Handled::keep(Keep::NotRoutedOut)),
            Err(e) => {
                tracing::warn!(error = %e, "route lookup failed; connect keeps the container path");
                return Ok(Handled::keep(Keep::NotApplicable));
            }
        }
    };
    let Some(replacement) = Replacement::for_socket(accel, orig, &facts, n.pid, call.fd, Purpose::Connect)?
    else {
        return Ok(Handled::keep(Keep::NotApplicable));
    };
    let nonblocking = replacement.nonblocking;
    let host = &replacement.host;
    // Pinned before it can connect: see route.rs for why this is what keeps
    // host loopback out of reach, whatever the container does with the socket.
    if let Some(ifindex) = target.ifindex {
        if let Err(e) = sock::pin_to_interface(host, ifindex) {
            tracing::warn!(error = %e, ifindex, "cannot pin host socket; connect keeps the container path");
            return Ok(Handled::keep(Keep::NotApplicable));
        }
    }
    let mut finished = match rustix::net::connect(host, &target.addr) {
        Ok(()) => Some(0),
        // A non-blocking TCP connect answers EINPROGRESS whatever the
        // handshake has done by now: no need to ask.
        Err(e) if e == rustix::io::Errno::INPROGRESS && nonblocking && stream && target.ifindex.is_some() => {
            None
        }
        Err(e) if e == rustix::io::Errno::INPROGRESS => socket::connect_result_now(host),
        Err(e) => Some(e.raw_os_error()),
    };
    if finished == Some(0) && stream && !nonblocking && target.ifindex.is_some() {
        // Done at once on our non-blocking socket for a blocking caller:
        // connected as a blocking connect leaves it (a later connect gets
        // EISCONN, as the kernel would answer).
        finished = Some(mark_connected(host, &target.addr));
    }
    if target.ifindex.is_none() {
        // A loopback socket is handed over only once connected (see
        // `settle_loopback`).
        finished = Some(settle_loopback(host, &target.addr, finished).await);
    }
    let then = match finished {
        // Linux answers a non-blocking TCP connect with EINPROGRESS even when
        // the handshake is already done; so do we. (A UDP connect is
        // immediate, blocking or not.)
        Some(0) | None if nonblocking && stream => AfterInstall::Errno(libc::EINPROGRESS),
        Some(0) => AfterInstall::Errno(0),
        // Failed at once: the error now (POSIX allows it for non-blocking
        // sockets too), and the container keeps its own untouched socket
        // instead of a failed host one.
        Some(errno) => {
            return Ok(Handled {
                reply: Reply::errno(errno),
                event: Event::Failed { dst, errno },
            })
        }
        // Blocking: the kernel re-runs connect on the installed socket, which
        // is already connecting, so it ignores the (re-read) address and
        // waits in the caller's own context, with its SO_SNDTIMEO and
        // signals, and returns the real result.
        None => AfterInstall::Continue,
    };
    let (socket, cloexec) = replacement.into_installable()?;
    let errno = match then {
        AfterInstall::Errno(e) => e,
        AfterInstall::Continue => libc::EINPROGRESS,
    };
    Ok(Handled {
        reply: Reply::Install {
            socket,
            fd: call.fd,
            cloexec,
            then,
        },
        event: Event::Bypassed { dst, errno },
    })
}

/// Where a connect to the container itself on `dst`'s port goes: its own
/// live host listener, reached over host loopback.
fn own_listener(accel: &Accel, facts: &SocketFacts, dst: &SocketAddr) -> Option<SocketAddr> {
    let mapping = publish::find(&accel.published, Proto::Tcp, dst.port())?;
    let listener = accel.listeners.live(mapping.host_port)?;
    if listener.owner != accel.owner {
        return None;
    }
    verdict::own_listener_addr(listener.addr, dst, facts.family)
}

/// Waits (briefly) until a loopback connect is done and settles the socket
/// as connected, so it can never be connected again: a socket pinned to
/// loopback must not get a second destination. Returns 0 or the errno.
async fn settle_loopback(host: &OwnedFd, addr: &SocketAddr, finished: Option<i32>) -> i32 {
    const LOOPBACK_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
    let result = match finished {
        Some(r) => r,
        None => {
            let waited = tokio::time::timeout(LOOPBACK_CONNECT_TIMEOUT, async {
                loop {
                    if let Some(r) = socket::connect_result_now(host) {
                        return r;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
            })
            .await;
            waited.unwrap_or(libc::ETIMEDOUT)
        }
    };
    if result != 0 {
        return result;
    }
    mark_connected(host, addr)
}

/// A second connect on a completed non-blocking connect marks the socket
/// connected (SS_CONNECTED) and sends nothing: 0 (also when it already was),
/// or the errno of a connection that failed meanwhile.
fn mark_connected(host: &OwnedFd, addr: &SocketAddr) -> i32 {
    match rustix::net::connect(host, addr) {
        Ok(()) => 0,
        Err(e) if e == rustix::io::Errno::ISCONN => 0,
        Err(e) => e.raw_os_error(),
    }
}

/// `connect(fd, AF_UNSPEC)` (disconnect) in a container with bind bypass:
/// refused on a host socket that is not pinned outwards (a disconnected
/// listener could connect anywhere from the host), run by the daemon on its
/// own copy of any other socket. Never continued: by the time the kernel ran
/// it, another socket could sit under the same fd number.
fn disconnect(accel: &Accel, pending: &Pending<'_>, n: &Notification, call: SockaddrCall) -> Handled {
    let orig = match copy_caller_fd(accel, pending, n, call.fd) {
        CallerFd::Copied(fd) => fd,
        CallerFd::Gone => return Handled::gone(),
        CallerFd::Failed(e) => return Handled::refuse(e.raw_os_error().unwrap_or(libc::EBADF)),
    };
    let netns = socket::netns_of(&orig);
    let refused = match socket::read_facts(&orig, netns) {
        Ok(facts) => verdict::host_socket_refusal(&facts, accel.host_netns).is_some(),
        // Unreadable: an inet socket that may be ours counts as ours.
        Err(_) => socket::is_inet_socket(&orig) && verdict::maybe_host(netns, accel.host_netns),
    };
    if refused {
        return Handled::refuse(libc::EOPNOTSUPP);
    }
    // Not a socket, a unix socket, the container's own or a nested
    // namespace's: the same call on the same open file gives the errno the
    // kernel would have given the container.
    let errno = match rustix::net::connect_unspec(&orig) {
        Ok(()) => 0,
        Err(e) => e.raw_os_error(),
    };
    Handled::done(errno)
}

/// Refuses a connect on a host socket that is not pinned outwards (a
/// listener of a published port, an accepted or a loopback connection);
/// any other socket continues.
fn refuse_on_host_listener(accel: &Accel, pending: &Pending<'_>, n: &Notification, fd: i32) -> Handled {
    let sock = match copy_caller_fd(accel, pending, n, fd) {
        CallerFd::Copied(fd) => fd,
        CallerFd::Gone => return Handled::gone(),
        CallerFd::Failed(_) => return Handled::keep(Keep::IgnoredDestination),
    };
    let netns = socket::netns_of(&sock);
    if verdict::home_of(netns, accel.container_netns, accel.host_netns) != Home::MaybeHost {
        return Handled::keep(Keep::IgnoredDestination);
    }
    let refusal = socket::read_facts(&sock, netns)
        .ok()
        .and_then(|facts| verdict::host_socket_refusal(&facts, accel.host_netns));
    match refusal {
        Some(errno) => Handled::refuse(errno),
        None => Handled::keep(Keep::IgnoredDestination),
    }
}
