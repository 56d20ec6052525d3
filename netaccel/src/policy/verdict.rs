//! Verdicts: does a call take the fast path, keep the container's own path,
//! or end with an error? Plain data in, verdict out; the handlers in
//! `calls` gather the data and act on the verdict.
//!
//! Keeping is always safe, bypassing needs proof: every "keep" here can be
//! decided before the expensive facts are read, and a bypass only after all
//! of them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use rustix::net::{AddressFamily, SocketType};

use super::ignore::IgnoreList;
use crate::sys::netns::NetnsCookie;

/// What the daemon learned about the container's socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketFacts {
    pub family: AddressFamily,
    pub socket_type: SocketType,
    pub protocol: Option<u32>,
    /// `None` when the namespace could not be determined.
    pub netns: Option<NetnsCookie>,
    /// The interface it is bound to (SO_BINDTOIFINDEX, 0 for none);
    /// `None` when it could not be read.
    pub device: Option<u32>,
    /// Bound to a local address or port, or to a device (an unreadable
    /// device counts as bound).
    pub bound: bool,
    /// TCP: the state is CLOSE (not connecting, connected or listening);
    /// UDP: no peer is set.
    pub closed: bool,
}

impl SocketFacts {
    /// A TCP or UDP socket of AF_INET or AF_INET6 (what is inspected fully).
    pub fn is_inet(&self) -> bool {
        is_inet(self.family, self.socket_type)
    }
}

/// A stream or datagram socket of AF_INET or AF_INET6.
pub fn is_inet(family: AddressFamily, socket_type: SocketType) -> bool {
    (family == AddressFamily::INET || family == AddressFamily::INET6)
        && (socket_type == SocketType::STREAM || socket_type == SocketType::DGRAM)
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
    /// The host delivers this destination locally but not through an
    /// interface a socket can be pinned to (an address on `lo`, broadcast,
    /// multicast), or has no route for it: a host socket pinned to `lo`
    /// could reach host loopback.
    NotRoutedOut,
    /// Not a syscall the daemon acts on (another architecture, or a
    /// container served without acceleration).
    NotHandled,
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

/// Where a socket lives, from its namespace cookie alone: the first fact
/// read after copying the caller's fd, so a socket of a nested namespace
/// (every pod of a u7s node) is kept after one `getsockopt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Home {
    /// The container's own namespace: read the rest and decide.
    Container,
    /// The daemon's namespace, or unknown (which counts as the daemon's): a
    /// host socket of ours, subject to the host-socket guards.
    MaybeHost,
    /// Any other namespace: kept, nothing of the host is involved.
    Nested,
}

pub fn home_of(socket: Option<NetnsCookie>, container: NetnsCookie, host: Option<NetnsCookie>) -> Home {
    match socket {
        Some(ns) if ns == container => Home::Container,
        s if maybe_host(s, host) => Home::MaybeHost,
        _ => Home::Nested,
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

/// Whether a socket may be one the daemon made in the host namespace: its
/// namespace is the host's, or could not be read (which then counts as host).
pub fn maybe_host(netns: Option<NetnsCookie>, host: Option<NetnsCookie>) -> bool {
    netns.is_none() || netns == host
}

/// The loopback interface has this index in every namespace.
pub const LOOPBACK_IFINDEX: u32 = 1;

/// The errno for a connect on a socket that may be one of our host sockets
/// and is not pinned outwards (its `device` is none, loopback, or
/// unreadable): a published-port listener, an accepted or a loopback
/// connection. Connecting it from the host could reach anything on host
/// loopback. EISCONN where the kernel would say so (listening or connected
/// TCP), else EOPNOTSUPP; `None` for any other socket.
pub fn host_socket_refusal(facts: &SocketFacts, host: Option<NetnsCookie>) -> Option<i32> {
    let pinned_outwards = facts.device.is_some_and(|i| i > 0 && i != LOOPBACK_IFINDEX);
    if !facts.is_inet() || !maybe_host(facts.netns, host) || pinned_outwards {
        return None;
    }
    Some(if facts.socket_type == SocketType::STREAM && !facts.closed {
        libc::EISCONN
    } else {
        libc::EOPNOTSUPP
    })
}

/// The address to connect for a container's connect to itself (`dst`) on a
/// port whose host listener is bound at `listener`: the kernel would have
/// connected such a listener in the container when it has the same family,
/// or is a dual-stack `::` listener for IPv4. `None` when it would not.
pub fn own_listener_addr(
    listener: SocketAddr,
    dst: &SocketAddr,
    socket_family: AddressFamily,
) -> Option<SocketAddr> {
    let want_v4 = dst.ip().to_canonical().is_ipv4();
    let ip = match (listener.ip(), want_v4) {
        (IpAddr::V4(ip), true) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        (IpAddr::V4(ip), true) => IpAddr::V4(ip),
        (IpAddr::V6(ip), true) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        (IpAddr::V6(ip), true) => IpAddr::V4(ip.to_ipv4_mapped()?),
        (IpAddr::V6(ip), false) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        (IpAddr::V6(ip), false) if ip.to_ipv4_mapped().is_none() => IpAddr::V6(ip),
        _ => return None,
    };
    let ip = match (ip, socket_family == AddressFamily::INET6) {
        (IpAddr::V4(v4), true) => IpAddr::V6(v4.to_ipv6_mapped()),
        (IpAddr::V6(_), false) => return None,
        (ip, _) => ip,
    };
    Some(SocketAddr::new(ip, listener.port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns() -> NetnsCookie {
        NetnsCookie::from_raw(4242)
    }

    fn tcp_facts(family: AddressFamily) -> SocketFacts {
        SocketFacts {
            family,
            socket_type: SocketType::STREAM,
            protocol: Some(libc::IPPROTO_TCP as u32),
            netns: Some(ns()),
            device: Some(0),
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
    fn a_socket_is_placed_by_its_cookie_alone() {
        let host = Some(NetnsCookie::from_raw(1));
        assert_eq!(home_of(Some(ns()), ns(), host), Home::Container);
        assert_eq!(home_of(host, ns(), host), Home::MaybeHost);
        assert_eq!(
            home_of(None, ns(), host),
            Home::MaybeHost,
            "unknown counts as host"
        );
        assert_eq!(home_of(Some(NetnsCookie::from_raw(7)), ns(), host), Home::Nested);
    }

    #[test]
    fn host_sockets_not_pinned_outwards_are_refused() {
        let host = Some(ns());
        let closed = tcp_facts(AddressFamily::INET);
        let listening = SocketFacts {
            bound: true,
            closed: false,
            ..closed
        };
        let pinned = |device| SocketFacts { device, ..closed };
        assert_eq!(host_socket_refusal(&listening, host), Some(libc::EISCONN));
        assert_eq!(host_socket_refusal(&closed, host), Some(libc::EOPNOTSUPP));
        assert_eq!(
            host_socket_refusal(&pinned(Some(LOOPBACK_IFINDEX)), host),
            Some(libc::EOPNOTSUPP),
            "pinned to lo"
        );
        assert_eq!(
            host_socket_refusal(&pinned(None), host),
            Some(libc::EOPNOTSUPP),
            "unreadable pin"
        );
        assert_eq!(
            host_socket_refusal(&pinned(Some(2)), host),
            None,
            "pinned outwards"
        );
        let container = Some(NetnsCookie::from_raw(9));
        assert_eq!(host_socket_refusal(&closed, container), None, "not a host socket");
    }

    #[test]
    fn own_listener_is_reached_as_the_kernel_would_in_the_container() {
        let a = |s: &str| s.parse::<SocketAddr>().expect("addr");
        let v4dst = a("10.0.2.100:80");
        let v6dst = a("[fd00::100]:80");
        assert_eq!(
            own_listener_addr(a("0.0.0.0:8080"), &v4dst, AddressFamily::INET),
            Some(a("127.0.0.1:8080"))
        );
        assert_eq!(
            own_listener_addr(a("[::]:8080"), &v4dst, AddressFamily::INET6),
            Some(a("[::ffff:127.0.0.1]:8080")),
            "dual-stack listener, v4-mapped socket"
        );
        assert_eq!(
            own_listener_addr(a("[::]:8080"), &v6dst, AddressFamily::INET6),
            Some(a("[::1]:8080"))
        );
        assert_eq!(
            own_listener_addr(a("0.0.0.0:8080"), &v6dst, AddressFamily::INET6),
            None
        );
        assert_eq!(
            own_listener_addr(a("[::]:8080"), &v6dst, AddressFamily::INET),
            None,
            "an IPv4 socket cannot reach an IPv6 address"
        );
    }
}
