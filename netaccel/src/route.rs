//! Where the host would send a connection: the egress interface every host
//! socket is pinned to.
//!
//! A host socket handed to a container stays there. If the container later
//! disconnects it (connect(AF_UNSPEC)), or a non-blocking connect fails, the
//! container holds an unconnected socket of the host namespace, and plain
//! syscalls (connect, sendto(MSG_FASTOPEN), io_uring) could aim it at host
//! loopback — some of them never reach the daemon, and any it answers with
//! CONTINUE can have their fd swapped under it. So before connecting, the
//! daemon binds the socket to the egress interface of the destination it
//! validated (SO_BINDTOIFINDEX; allowed unprivileged on an unbound socket,
//! and changing it afterwards needs CAP_NET_RAW in the host namespace, which
//! no container has). Loopback lives on `lo`, so a pinned socket can never
//! reach it.
//!
//! The host's own addresses are delivered through `lo` too, but a socket
//! pinned to the interface that carries the address still reaches it: the
//! `local` route of an address names that interface, a lookup restricted to
//! the pinned interface matches it, and the kernel records that interface as
//! the packets' input on `lo` (for sockets bound to a device). Loopback's
//! routes name `lo`, so the same pin keeps 127.0.0.0/8 and ::1 out of reach
//! (measured: such a socket's connect to 127.0.0.1 or ::1 never completes,
//! and a disconnected one's neither). An address on `lo` itself, or a
//! `local` route without an address, is not bypassed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::StreamExt;
use netlink_packet_route::route::{RouteAttribute, RouteMessage, RouteType};
use netlink_packet_route::AddressFamily;

/// How long a looked-up route is trusted; bounds staleness after route
/// changes without subscribing to them.
const TTL: Duration = Duration::from_secs(2);
const MAX_ENTRIES: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Egress {
    /// Leaves through this interface.
    Interface(u32),
    /// One of the host's own addresses, carried by this interface (never
    /// `lo`): reached through `lo` by a socket pinned to that interface.
    HostAddress(u32),
    /// Delivered locally otherwise (broadcast, multicast, anycast, an
    /// address on `lo`, a `local` route without an address): never bypassed.
    Local,
    /// No usable route (unreachable, blackhole, prohibit…).
    None,
}

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("cannot open a route socket in the host namespace: {source}")]
    Open { source: std::io::Error },
    #[error("route lookup for {ip} failed: {detail}")]
    Lookup { ip: IpAddr, detail: String },
}

/// Route lookups in the daemon's (host) namespace, cached briefly.
pub struct Routes {
    handle: rtnetlink::Handle,
    cache: Mutex<HashMap<IpAddr, (Egress, Instant)>>,
}

impl Routes {
    /// Opens the route socket; must run inside the tokio runtime.
    pub fn open() -> Result<Self, RouteError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(|source| RouteError::Open { source })?;
        tokio::spawn(conn);
        Ok(Self {
            handle,
            cache: Mutex::new(HashMap::new()),
        })
    }

    pub async fn egress(&self, ip: IpAddr) -> Result<Egress, RouteError> {
        let ip = ip.to_canonical();
        if let Some((e, at)) = self.cache.lock().ok().and_then(|c| c.get(&ip).copied()) {
            if at.elapsed() < TTL {
                return Ok(e);
            }
        }
        let egress = self.lookup(ip).await?;
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= MAX_ENTRIES {
                cache.clear();
            }
            cache.insert(ip, (egress, Instant::now()));
        }
        Ok(egress)
    }

    async fn lookup(&self, ip: IpAddr) -> Result<Egress, RouteError> {
        let mut msg = RouteMessage::default();
        let (family, len) = match ip {
            IpAddr::V4(_) => (AddressFamily::Inet, 32),
            IpAddr::V6(_) => (AddressFamily::Inet6, 128),
        };
        msg.header.address_family = family;
        msg.header.destination_prefix_length = len;
        msg.attributes.push(RouteAttribute::Destination(ip.into()));
        let mut answers = self.handle.route().get(msg).execute();
        match answers.next().await {
            Some(Ok(route)) => match egress_of(&route) {
                Egress::HostAddress(_) => Ok(self
                    .owner_of(ip)
                    .await?
                    .map_or(Egress::Local, Egress::HostAddress)),
                e => Ok(e),
            },
            // ENETUNREACH and friends come back as errors: no route.
            Some(Err(rtnetlink::Error::NetlinkError(_))) => Ok(Egress::None),
            Some(Err(e)) => Err(RouteError::Lookup {
                ip,
                detail: e.to_string(),
            }),
            None => Ok(Egress::None),
        }
    }
}

impl Routes {
    /// The interface that carries the host's address `ip`, unless it is
    /// `lo` (or no interface does).
    async fn owner_of(&self, ip: IpAddr) -> Result<Option<u32>, RouteError> {
        let mut answers = self.handle.address().get().set_address_filter(ip).execute();
        while let Some(answer) = answers.next().await {
            let msg = answer.map_err(|e| RouteError::Lookup {
                ip,
                detail: e.to_string(),
            })?;
            let index = msg.header.index;
            if index != crate::policy::verdict::LOOPBACK_IFINDEX {
                return Ok(Some(index));
            }
        }
        Ok(None)
    }
}

/// The egress a route answer names; a `local` one still needs the
/// interface of the address (`Routes::owner_of`), `HostAddress(0)` until then.
fn egress_of(route: &RouteMessage) -> Egress {
    match route.header.kind {
        RouteType::Local => Egress::HostAddress(0),
        RouteType::Broadcast | RouteType::Multicast | RouteType::Anycast => Egress::Local,
        RouteType::Unicast => route
            .attributes
            .iter()
            .find_map(|a| match a {
                RouteAttribute::Oif(i) => Some(Egress::Interface(*i)),
                _ => None,
            })
            .unwrap_or(Egress::None),
        _ => Egress::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_types_map_to_egress() {
        let mut r = RouteMessage::default();
        r.header.kind = RouteType::Unicast;
        r.attributes.push(RouteAttribute::Oif(7));
        assert_eq!(egress_of(&r), Egress::Interface(7));
        r.header.kind = RouteType::Local;
        assert_eq!(egress_of(&r), Egress::HostAddress(0));
        r.header.kind = RouteType::Broadcast;
        assert_eq!(egress_of(&r), Egress::Local);
        r.header.kind = RouteType::BlackHole;
        assert_eq!(egress_of(&r), Egress::None);
        r.header.kind = RouteType::Unicast;
        r.attributes.clear();
        assert_eq!(egress_of(&r), Egress::None);
    }

    #[tokio::test]
    async fn a_host_address_is_pinned_to_the_interface_that_carries_it() {
        let routes = Routes::open().expect("route socket");
        let mut addrs = routes.handle.address().get().execute();
        let mut checked = 0;
        while let Some(Ok(msg)) = addrs.next().await {
            let ip = msg.attributes.iter().find_map(|a| match a {
                netlink_packet_route::address::AddressAttribute::Local(ip)
                | netlink_packet_route::address::AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            });
            let Some(ip) = ip.filter(|ip| !ip.is_loopback() && msg.header.index != 1) else {
                continue;
            };
            if let IpAddr::V6(v6) = ip {
                if (v6.segments()[0] & 0xffc0) == 0xfe80 {
                    continue;
                }
            }
            let egress = routes.egress(ip).await.expect("lookup");
            assert_eq!(egress, Egress::HostAddress(msg.header.index), "{ip}");
            checked += 1;
        }
        assert!(checked > 0, "this machine has no non-loopback address to check");
    }

    #[tokio::test]
    async fn loopback_is_never_a_host_address_to_bypass_and_a_pinned_socket_cannot_be_repinned() {
        let routes = Routes::open().expect("route socket");
        for lo in ["127.0.0.1", "127.0.0.2", "::1"] {
            assert_eq!(
                routes.egress(lo.parse().expect("ip")).await.expect("lookup"),
                Egress::Local,
                "{lo}"
            );
        }
        let sock = rustix::net::socket(
            rustix::net::AddressFamily::INET,
            rustix::net::SocketType::STREAM,
            None,
        )
        .expect("socket");
        crate::sys::sock::pin_to_interface(&sock, 1).expect("first pin is allowed to anyone");
        if !rustix::process::geteuid().is_root() {
            let err = crate::sys::sock::pin_to_interface(&sock, 2).expect_err("re-pin without CAP_NET_RAW");
            assert_eq!(err.raw_os_error(), Some(libc::EPERM));
        }
    }
}
