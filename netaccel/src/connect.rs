//! `connect(2)`: decide whether a call takes the fast path, and take it.
//!
//! The decision is plain data in, verdict out (`SockaddrCall`, `SocketFacts`,
//! `Verdict`). Taking the fast path never lets the kernel re-read the
//! container's memory: the daemon connects its own host socket to its own copy
//! of the address, then installs that socket under the container's fd number
//! and answers with the result. A thread that rewrites the sockaddr after the
//! check changes nothing (the TOCTOU of the Go tool, which answered CONTINUE
//! after swapping the fd, cannot happen here).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};

use rustix::net::{AddressFamily, SocketFlags, SocketType};

use crate::ifaddrs::NetView;
use crate::ignore::IgnoreList;
use crate::netns::NetnsCookie;
use crate::notify::{Delivery, Notification, NotifyFd};
use crate::publish::{self, Listeners, PortMapping, Proto};
use crate::route::{pin_to_interface, Egress, Routes};
use crate::sockaddr::{decode_inet, is_unspec, SockaddrCall, MAX_SOCKADDR_LEN};
use crate::sockopts::{HostDefaults, Purpose, SocketOptions};
use crate::tracee::{self, Callers};

/// What the daemon learned about the container's socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketFacts {
    pub family: AddressFamily,
    pub socket_type: SocketType,
    pub protocol: Option<u32>,
    /// `None` when the namespace could not be determined.
    pub netns: Option<NetnsCookie>,
    /// Bound to a local address or port, or to a device.
    pub bound: bool,
    /// TCP: the state is CLOSE (not connecting, connected or listening);
    /// UDP: no peer is set.
    pub closed: bool,
}

/// Why a call keeps the normal path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Arguments, address or fd the kernel will reject or we do not handle.
    NotApplicable,
    NotInet,
    IgnoredDestination,
    /// Not a TCP stream or UDP datagram socket (raw, SCTP, ICMP "ping"…).
    UnsupportedSocket,
    FamilyMismatch,
    /// The socket lives in another network namespace than the container's
    /// (a nested namespace), or its namespace cannot be checked.
    ForeignNamespace,
    AlreadyBound,
    NotClosed,
    /// The host delivers this destination locally (one of its own
    /// addresses) or has no route for it: nothing to gain, and a host socket
    /// pinned to `lo` could reach host loopback.
    NotRoutedOut,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Bypass,
    Keep(Keep),
}

/// The verdict for a destination, before any work on the socket.
pub fn check_destination(dst: &SocketAddr, ignore: &IgnoreList) -> Verdict {
    if ignore.is_ignored(dst.ip()) {
        Verdict::Keep(Keep::IgnoredDestination)
    } else {
        Verdict::Bypass
    }
}

/// The verdict for the socket a call would connect.
pub fn check_socket(facts: &SocketFacts, dst: &SocketAddr, container_netns: NetnsCookie) -> Verdict {
    // Exact type and protocol: SOCK_RAW (3) and SOCK_SEQPACKET (5) share bits
    // with SOCK_STREAM (1), which is how the Go tool let them through, and
    // ICMP "ping" sockets are SOCK_DGRAM too.
    let supported = match facts.socket_type {
        SocketType::STREAM => facts.protocol == Some(libc::IPPROTO_TCP as u32),
        SocketType::DGRAM => facts.protocol == Some(libc::IPPROTO_UDP as u32),
        _ => false,
    };
    if !supported {
        return Verdict::Keep(Keep::UnsupportedSocket);
    }
    let family_ok = match dst {
        SocketAddr::V4(_) => facts.family == AddressFamily::INET,
        SocketAddr::V6(_) => facts.family == AddressFamily::INET6,
    };
    if !family_ok {
        return Verdict::Keep(Keep::FamilyMismatch);
    }
    if facts.netns != Some(container_netns) {
        return Verdict::Keep(Keep::ForeignNamespace);
    }
    if facts.bound {
        return Verdict::Keep(Keep::AlreadyBound);
    }
    if !facts.closed {
        return Verdict::Keep(Keep::NotClosed);
    }
    Verdict::Bypass
}

impl SocketFacts {
    /// A TCP or UDP socket of AF_INET or AF_INET6 (what `read` inspects fully).
    pub fn is_inet(&self) -> bool {
        (self.family == AddressFamily::INET || self.family == AddressFamily::INET6)
            && (self.socket_type == SocketType::STREAM || self.socket_type == SocketType::DGRAM)
    }

    /// Seven syscalls: each costs 1–2 µs on a VM, and this runs on every
    /// bypassed connect.
    pub fn read(sock: impl AsFd) -> io::Result<Self> {
        let sock = sock.as_fd();
        let local = rustix::net::getsockname(sock)?;
        let family = local.address_family();
        let socket_type = rustix::net::sockopt::socket_type(sock)?;
        let is_inet = family == AddressFamily::INET || family == AddressFamily::INET6;
        let stream = socket_type == SocketType::STREAM;
        if !is_inet || !(stream || socket_type == SocketType::DGRAM) {
            return Ok(Self {
                family,
                socket_type,
                protocol: None,
                netns: None,
                bound: false,
                closed: false,
            });
        }
        let protocol = rustix::net::sockopt::socket_protocol(sock)?.map(|p| p.as_raw().get());
        let netns = NetnsCookie::of_socket(sock).ok();
        let bound = local_is_bound(&local) || bound_to_device(sock);
        Ok(Self {
            family,
            socket_type,
            protocol,
            netns,
            bound,
            // Connecting, connected and listening sockets (TCP) and connected
            // ones (UDP) all hold a local port, so an unbound socket has none
            // of those states: it is closed.
            closed: !bound,
        })
    }
}

fn local_is_bound(local: &rustix::net::SocketAddrAny) -> bool {
    match SocketAddr::try_from(local.clone()) {
        Ok(a) => a.port() != 0 || !a.ip().is_unspecified(),
        Err(_) => true,
    }
}

fn bound_to_device(sock: impl AsFd) -> bool {
    let mut name = [0u8; libc::IFNAMSIZ];
    let mut len = name.len() as libc::socklen_t;
    // SAFETY: SO_BINDTODEVICE writes at most `len` bytes into `name`, a live
    // local buffer, and updates `len`.
    let rc = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&sock.as_fd()),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            name.as_mut_ptr().cast(),
            &mut len,
        )
    };
    // Unknown counts as bound: the caller then leaves the socket alone.
    rc != 0 || len > 0
}

/// How a notification ended, for logs and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The container now holds a host socket connected (or connecting) to
    /// `dst`; `install` is how long installing it took (the ADDFD round
    /// trip through the caller).
    Bypassed {
        dst: SocketAddr,
        errno: i32,
        install: std::time::Duration,
    },
    /// The host connect failed at once; the container's socket is untouched.
    Failed { dst: SocketAddr, errno: i32 },
    /// The kernel ran the syscall on the container's own path.
    Kept(Keep),
    /// Ended with an error without running: the call would have let a
    /// host socket of ours reach the host.
    Refused { errno: i32 },
    /// The caller died or was interrupted while we worked.
    CallerGone,
}

/// Everything a connect, bind or shutdown handler needs about its container.
pub struct ConnectContext<'a> {
    pub notify: &'a NotifyFd,
    pub container_netns: NetnsCookie,
    /// The daemon's (host) namespace, where every socket it hands out lives.
    pub host_netns: Option<NetnsCookie>,
    pub view: &'a std::sync::RwLock<NetView>,
    pub defaults: &'a HostDefaults,
    pub routes: &'a Routes,
    /// The container's published ports whose binds the daemon takes over.
    pub published: &'a [PortMapping],
    /// The container (`Container::serial`), owner of its listeners.
    pub owner: u64,
    /// Every host listener the daemon bound for its containers.
    pub listeners: &'a Listeners,
    /// Handles on the container's recent calling threads.
    pub callers: &'a Callers,
}

/// Where a bypassed connect goes.
struct Target {
    addr: SocketAddr,
    /// The interface the host socket is pinned to; `None` for a listener on
    /// the host itself, which is reached over loopback (such a socket is
    /// settled as connected and never connected again, see
    /// `settle_loopback`).
    ifindex: Option<u32>,
}

/// The loopback interface has this index in every namespace.
pub const LOOPBACK_IFINDEX: u32 = 1;

/// Handles one connect notification to completion: exactly one answer is sent
/// unless the caller is gone.
pub async fn handle(ctx: &ConnectContext<'_>, n: &Notification) -> io::Result<Outcome> {
    let keep = |reason| -> io::Result<Outcome> {
        Ok(match ctx.notify.answer_continue(n.id)? {
            Delivery::Delivered => Outcome::Kept(reason),
            Delivery::CallerGone => Outcome::CallerGone,
        })
    };
    let Some(call) = SockaddrCall::from_args(&n.args) else {
        return keep(Keep::NotApplicable);
    };
    let mut raw = [0u8; MAX_SOCKADDR_LEN];
    if tracee::read_memory(n.pid, call.addr_ptr, &mut raw[..call.addr_len]).is_err() {
        // A bad pointer: the kernel answers EFAULT itself.
        return keep(Keep::NotApplicable);
    }
    let Some(dst) = decode_inet(&raw[..call.addr_len]) else {
        if is_unspec(&raw[..call.addr_len]) && !ctx.published.is_empty() {
            return disconnect(ctx, n, call).await;
        }
        return keep(Keep::NotInet);
    };
    let (ignored, to_self) = match ctx.view.read() {
        Ok(v) => (
            check_destination(&dst, &v.ignore) != Verdict::Bypass,
            v.is_self(dst.ip()),
        ),
        Err(_) => return keep(Keep::NotApplicable),
    };
    // The container connecting to itself on a port it published through us:
    // its listener lives on the host now.
    let to_own_listener = to_self && publish::find(ctx.published, Proto::Tcp, dst.port()).is_some();
    if ignored && !to_own_listener {
        if !ctx.published.is_empty() {
            // A container with host listeners: the kernel must not run this
            // connect on one of them (it would connect from the host).
            if let Some(refused) = refuse_on_host_listener(ctx, n, call.fd) {
                return refused;
            }
        }
        return keep(Keep::IgnoredDestination);
    }
    let orig = match copy_caller_fd(ctx, n, call.fd) {
        CallerFd::Copied(fd) => fd,
        CallerFd::Gone => return Ok(Outcome::CallerGone),
        // EBADF and the like: the kernel produces the right errno.
        CallerFd::Failed(_) => return keep(Keep::NotApplicable),
    };
    let facts = match SocketFacts::read(&orig) {
        Ok(f) => f,
        Err(_) => return keep(Keep::NotApplicable),
    };
    if let Some(errno) = host_socket_refusal(&facts, &orig, ctx.host_netns) {
        return refuse(ctx, n, errno);
    }
    if let Verdict::Keep(reason) = check_socket(&facts, &dst, ctx.container_netns) {
        return keep(reason);
    }
    let stream = facts.socket_type == SocketType::STREAM;
    let target = if to_own_listener {
        match own_listener(ctx, &facts, &dst) {
            Some(addr) if stream => Target { addr, ifindex: None },
            _ => return keep(Keep::IgnoredDestination),
        }
    } else {
        match ctx.routes.egress(dst.ip()).await {
            Ok(Egress::Interface(ifindex)) => Target {
                addr: dst,
                ifindex: Some(ifindex),
            },
            // Another container's (or its own) published port, addressed by
            // one of the host's addresses.
            Ok(Egress::Local) if stream && ctx.listeners.live(dst.port()).is_some() => Target {
                addr: dst,
                ifindex: None,
            },
            Ok(Egress::Local | Egress::None) => return keep(Keep::NotRoutedOut),
            Err(e) => {
                tracing::warn!(error = %e, "route lookup failed; connect keeps the container path");
                return keep(Keep::NotApplicable);
            }
        }
    };
    let Some(Replacement {
        host,
        nonblocking,
        cloexec,
    }) = Replacement::for_socket(ctx, orig, &facts, n.pid, call.fd, Purpose::Connect)?
    else {
        return keep(Keep::NotApplicable);
    };
    // Pinned before it can connect: see route.rs for why this is what keeps
    // host loopback out of reach, whatever the container does with the socket.
    if let Some(ifindex) = target.ifindex {
        if let Err(e) = pin_to_interface(&host, ifindex) {
            tracing::warn!(error = %e, ifindex, "cannot pin host socket; connect keeps the container path");
            return keep(Keep::NotApplicable);
        }
    }
    let mut finished = match rustix::net::connect(&host, &target.addr) {
        Ok(()) => Some(0),
        Err(e) if e == rustix::io::Errno::INPROGRESS => connect_result_now(&host),
        Err(e) => Some(e.raw_os_error()),
    };
    if target.ifindex.is_none() {
        // A loopback socket is handed over only once connected (see
        // `settle_loopback`).
        finished = Some(settle_loopback(&host, &target.addr, finished).await);
    }
    let answer = match finished {
        // Linux answers a non-blocking TCP connect with EINPROGRESS even when
        // the handshake is already done; so do we. (A UDP connect is
        // immediate, blocking or not.)
        Some(0) | None if nonblocking && stream => Answer::Return(-libc::EINPROGRESS),
        Some(0) => Answer::Return(0),
        // Failed at once: the error now (POSIX allows it for non-blocking
        // sockets too), and the container keeps its own untouched socket
        // instead of a failed host one.
        Some(errno) => return fail(ctx, n, dst, errno),
        // Blocking: the kernel re-runs connect on the installed socket, which
        // is already connecting, so it ignores the (re-read) address and
        // waits in the caller's own context, with its SO_SNDTIMEO and
        // signals, and returns the real result.
        None => Answer::Continue,
    };
    install(ctx, n, call, dst, host, cloexec, nonblocking, answer)
}

/// Where a connect to the container itself on `dst`'s port goes: its own
/// live host listener, reached over host loopback, when the kernel would have
/// connected such a listener in the container (same family, or a
/// dual-stack `::` listener for IPv4).
fn own_listener(ctx: &ConnectContext<'_>, facts: &SocketFacts, dst: &SocketAddr) -> Option<SocketAddr> {
    let mapping = publish::find(ctx.published, Proto::Tcp, dst.port())?;
    let listener = ctx.listeners.live(mapping.host_port)?;
    if listener.owner != ctx.owner {
        return None;
    }
    let want_v4 = dst.ip().to_canonical().is_ipv4();
    let bound = listener.addr.ip();
    let ip = match (bound, want_v4) {
        (IpAddr::V4(ip), true) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        (IpAddr::V4(ip), true) => IpAddr::V4(ip),
        (IpAddr::V6(ip), true) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        (IpAddr::V6(ip), true) => IpAddr::V4(ip.to_ipv4_mapped()?),
        (IpAddr::V6(ip), false) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        (IpAddr::V6(ip), false) if ip.to_ipv4_mapped().is_none() => IpAddr::V6(ip),
        _ => return None,
    };
    let ip = match (ip, facts.family == AddressFamily::INET6) {
        (IpAddr::V4(v4), true) => IpAddr::V6(v4.to_ipv6_mapped()),
        (IpAddr::V6(_), false) => return None,
        (ip, _) => ip,
    };
    Some(SocketAddr::new(ip, listener.addr.port()))
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
                    if let Some(r) = connect_result_now(host) {
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
    // A second connect on a completed non-blocking connect marks the socket
    // connected (SS_CONNECTED) and sends nothing: 0, or EISCONN when the
    // first one already did.
    match rustix::net::connect(host, addr) {
        Ok(()) => 0,
        Err(e) if e == rustix::io::Errno::ISCONN => 0,
        Err(e) => e.raw_os_error(),
    }
}

/// `connect(fd, AF_UNSPEC)` (disconnect) in a container with bind bypass:
/// done here, on the daemon's copy, so a host socket of ours is never
/// disconnected (which would let it connect anywhere from the host).
async fn disconnect(ctx: &ConnectContext<'_>, n: &Notification, call: SockaddrCall) -> io::Result<Outcome> {
    let keep = |reason| -> io::Result<Outcome> {
        Ok(match ctx.notify.answer_continue(n.id)? {
            Delivery::Delivered => Outcome::Kept(reason),
            Delivery::CallerGone => Outcome::CallerGone,
        })
    };
    let orig = match copy_caller_fd(ctx, n, call.fd) {
        CallerFd::Copied(fd) => fd,
        CallerFd::Gone => return Ok(Outcome::CallerGone),
        CallerFd::Failed(e) => return refuse(ctx, n, e.raw_os_error().unwrap_or(libc::EBADF)),
    };
    let Ok(facts) = SocketFacts::read(&orig) else {
        // Not a socket: the kernel produces the right errno.
        return keep(Keep::NotInet);
    };
    if host_socket_refusal(&facts, &orig, ctx.host_netns).is_some() {
        return refuse(ctx, n, libc::EOPNOTSUPP);
    }
    if facts.netns != Some(ctx.container_netns) {
        // Not an inet socket of ours or the container's (a unix socket, a
        // nested namespace): nothing of the host is involved.
        return keep(Keep::NotInet);
    }
    let errno = match rustix::net::connect_unspec(&orig) {
        Ok(()) => 0,
        Err(e) => e.raw_os_error(),
    };
    Ok(match ctx.notify.answer(n.id, 0, errno)? {
        Delivery::Delivered => Outcome::Kept(Keep::NotInet),
        Delivery::CallerGone => Outcome::CallerGone,
    })
}

/// Refuses a connect on a host socket that is not pinned outwards (a
/// listener of a published port, an accepted or a loopback connection):
/// `Some(answer)` when refused, `None` when the caller may continue.
fn refuse_on_host_listener(
    ctx: &ConnectContext<'_>,
    n: &Notification,
    fd: i32,
) -> Option<io::Result<Outcome>> {
    let sock = match copy_caller_fd(ctx, n, fd) {
        CallerFd::Copied(fd) => fd,
        CallerFd::Gone => return Some(Ok(Outcome::CallerGone)),
        CallerFd::Failed(_) => return None,
    };
    let facts = SocketFacts::read(&sock).ok()?;
    let errno = host_socket_refusal(&facts, &sock, ctx.host_netns)?;
    Some(refuse(ctx, n, errno))
}

/// The errno for a connect on `sock` when it is one of our host sockets that
/// is not pinned outwards (a published-port listener, an accepted or a
/// loopback connection): connecting it from the host could reach anything
/// on host loopback. EISCONN where the kernel would say so (listening or
/// connected TCP), else EOPNOTSUPP; `None` for any other socket.
fn host_socket_refusal(facts: &SocketFacts, sock: &OwnedFd, host: Option<NetnsCookie>) -> Option<i32> {
    if !facts.is_inet() || !maybe_host(facts.netns, host) || pinned_outwards(sock) {
        return None;
    }
    Some(if facts.socket_type == SocketType::STREAM && !facts.closed {
        libc::EISCONN
    } else {
        libc::EOPNOTSUPP
    })
}

/// The caller's fd, copied while its notification is live.
pub(crate) enum CallerFd {
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
pub(crate) fn copy_caller_fd(ctx: &ConnectContext<'_>, n: &Notification, fd: i32) -> CallerFd {
    let finish = |copied: io::Result<OwnedFd>| match copied {
        Ok(copy) => CallerFd::Copied(copy),
        Err(e) => CallerFd::Failed(e),
    };
    if let Some(copied) = ctx.callers.copy_fd(n.pid, fd) {
        if !ctx.notify.id_valid(n.id) {
            return CallerFd::Gone;
        }
        return finish(copied);
    }
    let Ok(pidfd) = tracee::open_thread(n.pid) else {
        return CallerFd::Gone;
    };
    if !ctx.notify.id_valid(n.id) {
        return CallerFd::Gone;
    }
    let copied = tracee::copy_fd(&pidfd.fd, fd);
    ctx.callers.keep(n.pid, pidfd);
    finish(copied)
}

/// Whether a socket may be one the daemon made in the host namespace: its
/// namespace is the host's, or could not be read (which then counts as host).
pub fn maybe_host(netns: Option<NetnsCookie>, host: Option<NetnsCookie>) -> bool {
    netns.is_none() || netns == host
}

/// An AF_INET or AF_INET6 socket.
pub fn is_inet_socket(sock: impl AsFd) -> bool {
    matches!(
        rustix::net::sockopt::socket_domain(sock),
        Ok(AddressFamily::INET | AddressFamily::INET6)
    )
}

/// True when the socket is pinned to an interface other than loopback (the
/// sockets the connect fast path makes), so no connect can reach the host.
fn pinned_outwards(sock: &OwnedFd) -> bool {
    let mut ifindex: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: SO_BINDTOIFINDEX writes one c_int into `ifindex`, a live local,
    // and updates `len`; the fd is borrowed for the call.
    let rc = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(sock),
            libc::SOL_SOCKET,
            libc::SO_BINDTOIFINDEX,
            (&mut ifindex as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    rc == 0 && ifindex > 0 && ifindex as u32 != LOOPBACK_IFINDEX
}

/// Ends the call with `errno` without running it.
fn refuse(ctx: &ConnectContext<'_>, n: &Notification, errno: i32) -> io::Result<Outcome> {
    Ok(match ctx.notify.answer(n.id, 0, errno)? {
        Delivery::Delivered => Outcome::Refused { errno },
        Delivery::CallerGone => Outcome::CallerGone,
    })
}

/// A host socket made to replace a container's socket, with what the
/// container's fd carries that the installation must keep.
pub(crate) struct Replacement {
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
    pub(crate) fn for_socket(
        ctx: &ConnectContext<'_>,
        orig: OwnedFd,
        facts: &SocketFacts,
        pid: u32,
        fd: i32,
        purpose: Purpose,
    ) -> io::Result<Option<Self>> {
        let Some(defaults) = ctx.defaults.for_socket(facts.family, facts.socket_type) else {
            return Ok(None);
        };
        let nonblocking = rustix::fs::fcntl_getfl(&orig)?.contains(rustix::fs::OFlags::NONBLOCK);
        let cloexec = ctx.callers.fd_is_cloexec(pid, fd).unwrap_or(false);
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
}

/// How the caller's syscall ends once the host socket is installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// Return 0 or -errno.
    Return(i32),
    /// Let the kernel finish the connect on the installed socket.
    Continue,
}

/// The outcome of a connect still in progress, if it is already known:
/// Some(0) connected, Some(errno) failed, None still connecting.
fn connect_result_now(sock: &OwnedFd) -> Option<i32> {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let mut fds = [PollFd::new(sock, PollFlags::OUT)];
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

fn fail(ctx: &ConnectContext<'_>, n: &Notification, dst: SocketAddr, errno: i32) -> io::Result<Outcome> {
    Ok(match ctx.notify.answer(n.id, 0, errno)? {
        Delivery::Delivered => Outcome::Failed { dst, errno },
        Delivery::CallerGone => Outcome::CallerGone,
    })
}

#[allow(clippy::too_many_arguments)]
fn install(
    ctx: &ConnectContext<'_>,
    n: &Notification,
    call: SockaddrCall,
    dst: SocketAddr,
    host: OwnedFd,
    cloexec: bool,
    nonblocking: bool,
    answer: Answer,
) -> io::Result<Outcome> {
    if !nonblocking {
        let flags = rustix::fs::fcntl_getfl(&host)?;
        rustix::fs::fcntl_setfl(&host, flags - rustix::fs::OFlags::NONBLOCK)?;
    }
    let started = std::time::Instant::now();
    if ctx.notify.install_fd(n.id, host.as_fd(), call.fd, cloexec)? == Delivery::CallerGone {
        return Ok(Outcome::CallerGone);
    }
    let install = started.elapsed();
    let (delivery, errno) = match answer {
        Answer::Return(v) => (ctx.notify.answer(n.id, 0, -v)?, -v),
        Answer::Continue => (ctx.notify.answer_continue(n.id)?, libc::EINPROGRESS),
    };
    Ok(match delivery {
        Delivery::Delivered => Outcome::Bypassed { dst, errno, install },
        Delivery::CallerGone => Outcome::CallerGone,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns() -> NetnsCookie {
        NetnsCookie::current().expect("own netns")
    }

    fn tcp_facts(family: AddressFamily) -> SocketFacts {
        SocketFacts {
            family,
            socket_type: SocketType::STREAM,
            protocol: Some(libc::IPPROTO_TCP as u32),
            netns: Some(ns()),
            bound: false,
            closed: true,
        }
    }

    fn v4() -> SocketAddr {
        "192.0.2.9:80".parse().expect("addr")
    }

    #[test]
    fn plain_tcp_socket_in_the_container_namespace_is_bypassed() {
        assert_eq!(
            check_socket(&tcp_facts(AddressFamily::INET), &v4(), ns()),
            Verdict::Bypass
        );
        let v6: SocketAddr = "[2001:db8::9]:80".parse().expect("addr");
        assert_eq!(
            check_socket(&tcp_facts(AddressFamily::INET6), &v6, ns()),
            Verdict::Bypass
        );
    }

    #[test]
    fn socket_type_and_protocol_must_match_exactly() {
        for ty in [SocketType::RAW, SocketType::SEQPACKET, SocketType::RDM] {
            let facts = SocketFacts {
                socket_type: ty,
                ..tcp_facts(AddressFamily::INET)
            };
            assert_eq!(
                check_socket(&facts, &v4(), ns()),
                Verdict::Keep(Keep::UnsupportedSocket),
                "{ty:?}"
            );
        }
        let sctp = SocketFacts {
            protocol: Some(libc::IPPROTO_SCTP as u32),
            ..tcp_facts(AddressFamily::INET)
        };
        assert_eq!(
            check_socket(&sctp, &v4(), ns()),
            Verdict::Keep(Keep::UnsupportedSocket)
        );
        let udp = SocketFacts {
            socket_type: SocketType::DGRAM,
            protocol: Some(libc::IPPROTO_UDP as u32),
            ..tcp_facts(AddressFamily::INET)
        };
        assert_eq!(check_socket(&udp, &v4(), ns()), Verdict::Bypass);
        let ping = SocketFacts {
            protocol: Some(libc::IPPROTO_ICMP as u32),
            ..udp
        };
        assert_eq!(
            check_socket(&ping, &v4(), ns()),
            Verdict::Keep(Keep::UnsupportedSocket)
        );
        let tcp_as_dgram = SocketFacts {
            socket_type: SocketType::DGRAM,
            ..tcp_facts(AddressFamily::INET)
        };
        assert_eq!(
            check_socket(&tcp_as_dgram, &v4(), ns()),
            Verdict::Keep(Keep::UnsupportedSocket)
        );
    }

    #[test]
    fn nested_or_unknown_namespace_is_kept() {
        // Any other nsfs object stands in for a nested namespace.
        let other = NetnsCookie::from_raw(1);
        let current = ns();
        assert_ne!(other, current);
        let facts = SocketFacts {
            netns: None,
            ..tcp_facts(AddressFamily::INET)
        };
        assert_eq!(
            check_socket(&facts, &v4(), current),
            Verdict::Keep(Keep::ForeignNamespace)
        );
        let facts = SocketFacts {
            netns: Some(other),
            ..tcp_facts(AddressFamily::INET)
        };
        assert_eq!(
            check_socket(&facts, &v4(), current),
            Verdict::Keep(Keep::ForeignNamespace)
        );
    }

    #[test]
    fn bound_connected_and_mismatched_sockets_are_kept() {
        let bound = SocketFacts {
            bound: true,
            ..tcp_facts(AddressFamily::INET)
        };
        assert_eq!(
            check_socket(&bound, &v4(), ns()),
            Verdict::Keep(Keep::AlreadyBound)
        );
        let busy = SocketFacts {
            closed: false,
            ..tcp_facts(AddressFamily::INET)
        };
        assert_eq!(check_socket(&busy, &v4(), ns()), Verdict::Keep(Keep::NotClosed));
        let v6sock = tcp_facts(AddressFamily::INET6);
        assert_eq!(
            check_socket(&v6sock, &v4(), ns()),
            Verdict::Keep(Keep::FamilyMismatch)
        );
    }

    #[test]
    fn loopback_destinations_are_kept() {
        let ignore = IgnoreList::default();
        let lo: SocketAddr = "127.0.0.1:2379".parse().expect("addr");
        assert_eq!(
            check_destination(&lo, &ignore),
            Verdict::Keep(Keep::IgnoredDestination)
        );
        assert_eq!(check_destination(&v4(), &ignore), Verdict::Bypass);
    }

    #[test]
    fn call_arguments_are_checked_like_the_kernel() {
        assert_eq!(
            SockaddrCall::from_args(&[3, 0x1000, 16, 0, 0, 0]),
            Some(SockaddrCall {
                fd: 3,
                addr_ptr: 0x1000,
                addr_len: 16
            })
        );
        assert_eq!(
            SockaddrCall::from_args(&[u32::MAX as u64, 0x1000, 16, 0, 0, 0]),
            None,
            "fd -1"
        );
        assert_eq!(
            SockaddrCall::from_args(&[3, 0x1000, 129, 0, 0, 0]),
            None,
            "len > 128"
        );
        assert_eq!(
            SockaddrCall::from_args(&[3, 0x1000, u32::MAX as u64, 0, 0, 0]),
            None,
            "len -1"
        );
        // Upper bits are ignored by the kernel's int conversion.
        assert_eq!(
            SockaddrCall::from_args(&[(1 << 32) | 5, 0, 16, 0, 0, 0]).map(|c| c.fd),
            Some(5)
        );
    }

    #[test]
    fn socket_facts_of_real_sockets() {
        let tcp = rustix::net::socket(AddressFamily::INET, SocketType::STREAM, None).expect("tcp");
        let f = SocketFacts::read(&tcp).expect("facts");
        assert_eq!(
            (f.family, f.socket_type, f.bound, f.closed),
            (AddressFamily::INET, SocketType::STREAM, false, true)
        );
        let udp = rustix::net::socket(AddressFamily::INET, SocketType::DGRAM, None).expect("udp");
        let f = SocketFacts::read(&udp).expect("facts");
        assert_eq!(
            (f.socket_type, f.bound, f.closed),
            (SocketType::DGRAM, false, true)
        );
        rustix::net::connect(&udp, &"127.0.0.1:9".parse::<SocketAddr>().expect("addr")).expect("udp connect");
        assert!(
            !SocketFacts::read(&udp).expect("facts").closed,
            "a connected UDP socket has a peer"
        );
        assert_eq!(
            SocketFacts::read(&udp).expect("facts").socket_type,
            SocketType::DGRAM
        );
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let f = SocketFacts::read(&listener).expect("facts");
        assert!(f.bound && !f.closed);
    }
}
