//! What u7s asks of the host's network: the default route's source address
//! (the `HOST_IP` default), the host's own subnets (to catch node-subnet
//! collisions) and whether the node's ports are still free.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use netlink_packet_route::AddressFamily;

use crate::config::{Ports, Protocol};

#[derive(Debug, thiserror::Error)]
pub enum HostNetError {
    #[error("cannot open a netlink route socket: {source}")]
    Open { source: std::io::Error },
    #[error("netlink {what} failed: {detail}")]
    Query { what: &'static str, detail: String },
}

/// The source address the kernel would use on the default route (a route
/// lookup for a public address; nothing is sent).
pub async fn default_route_ip() -> Result<Option<Ipv4Addr>, HostNetError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|source| HostNetError::Open { source })?;
    let task = tokio::spawn(conn);
    let mut msg = RouteMessage::default();
    msg.header.address_family = AddressFamily::Inet;
    msg.header.destination_prefix_length = 32;
    msg.attributes
        .push(RouteAttribute::Destination(RouteAddress::Inet(Ipv4Addr::new(
            192, 0, 2, 1,
        ))));
    let answer = handle.route().get(msg).execute().try_next().await;
    task.abort();
    match answer {
        Ok(Some(route)) => Ok(route.attributes.iter().find_map(|a| match a {
            RouteAttribute::PrefSource(RouteAddress::Inet(ip)) => Some(*ip),
            _ => None,
        })),
        // ENETUNREACH: no default route.
        Ok(None) | Err(rtnetlink::Error::NetlinkError(_)) => Ok(None),
        Err(e) => Err(HostNetError::Query {
            what: "route lookup",
            detail: e.to_string(),
        }),
    }
}

/// The IPv4 subnets of this host's interfaces (loopback left out).
pub async fn host_subnets() -> Result<Vec<Ipv4Net>, HostNetError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|source| HostNetError::Open { source })?;
    let task = tokio::spawn(conn);
    let messages: Result<Vec<_>, _> = handle.address().get().execute().try_collect().await;
    task.abort();
    let messages = messages.map_err(|e| HostNetError::Query {
        what: "address dump",
        detail: e.to_string(),
    })?;
    Ok(messages
        .iter()
        .filter_map(|m| {
            let ip = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(IpAddr::V4(ip)) | AddressAttribute::Address(IpAddr::V4(ip)) => {
                    Some(*ip)
                }
                _ => None,
            })?;
            let net = Ipv4Net::new(ip, m.header.prefix_len).ok()?.trunc();
            (!ip.is_loopback()).then_some(net)
        })
        .collect())
}

pub fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// A published port some other process already holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TakenPort {
    pub var: &'static str,
    pub port: u16,
    pub protocol: Protocol,
    pub error: String,
}

/// Tries to bind each published port on all addresses, as the engine's
/// port forwarder will.
pub fn taken_ports(ports: &Ports) -> Vec<TakenPort> {
    ports
        .published()
        .iter()
        .filter_map(|&(var, port, protocol)| {
            let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
            let result = match protocol {
                Protocol::Tcp => TcpListener::bind(addr).map(drop),
                Protocol::Udp => UdpSocket::bind(addr).map(drop),
            };
            result.err().map(|e| TakenPort {
                var,
                port,
                protocol,
                error: e.to_string(),
            })
        })
        .collect()
}

/// The message for ports found taken: which, and the two ways out.
pub fn explain_taken(taken: &[TakenPort]) -> String {
    let list: Vec<String> = taken
        .iter()
        .map(|t| format!("{}/{} ({}: {})", t.port, t.protocol.name(), t.var, t.error))
        .collect();
    format!(
        "port(s) already in use on this host: {}. Another cluster (or another user's) may hold them: \
         run a second instance with `--tenant N` (moves every port by N×10000), or set the PORT_* variables",
        list.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_port_is_reported_with_its_variable() {
        let held = TcpListener::bind("0.0.0.0:0").expect("bind");
        let port = held.local_addr().expect("addr").port();
        let free = TcpListener::bind("0.0.0.0:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let ports = Ports {
            etcd: port,
            kubelet: free,
            flannel: free,
            kube_apiserver: free.wrapping_add(1).max(1024),
        };
        let taken = taken_ports(&ports);
        assert!(
            taken.iter().any(|t| t.var == "PORT_ETCD" && t.port == port),
            "{taken:?}"
        );
        let msg = explain_taken(&taken);
        assert!(msg.contains("--tenant") && msg.contains("PORT_ETCD"), "{msg}");
    }

    #[test]
    fn overlap_is_symmetric() {
        let a: Ipv4Net = "10.100.0.0/16".parse().expect("net");
        let b: Ipv4Net = "10.100.7.0/24".parse().expect("net");
        let c: Ipv4Net = "10.101.7.0/24".parse().expect("net");
        assert!(overlaps(a, b) && overlaps(b, a));
        assert!(!overlaps(a, c));
    }

    #[tokio::test]
    async fn the_host_has_subnets_to_compare() {
        // Every test host has at least one non-loopback interface address.
        let nets = host_subnets().await.expect("dump");
        assert!(!nets.is_empty());
        assert!(nets.iter().all(|n| !n.network().is_loopback()));
    }
}
