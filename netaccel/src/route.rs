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
//! reach it; destinations the host routes through `lo` (its own addresses)
//! are not bypassed at all.

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
    /// Delivered locally (an address of the host itself): never bypassed.
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
            Some(Ok(route)) => Ok(egress_of(&route)),
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

fn egress_of(route: &RouteMessage) -> Egress {
    match route.header.kind {
        RouteType::Local | RouteType::Broadcast | RouteType::Multicast | RouteType::Anycast => Egress::Local,
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
        assert_eq!(egress_of(&r), Egress::Local);
        r.header.kind = RouteType::BlackHole;
        assert_eq!(egress_of(&r), Egress::None);
        r.header.kind = RouteType::Unicast;
        r.attributes.clear();
        assert_eq!(egress_of(&r), Egress::None);
    }

    #[tokio::test]
    async fn loopback_is_local_and_a_pinned_socket_cannot_be_repinned() {
        let routes = Routes::open().expect("route socket");
        assert_eq!(
            routes
                .egress("127.0.0.1".parse().expect("ip"))
                .await
                .expect("lookup"),
            Egress::Local
        );
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
