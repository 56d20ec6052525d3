//! What u7s asks of the host's network: the default route's source address
//! (the `HOST_IP` default), the host's own subnets (to catch node-subnet
//! collisions), whether the node's ports are still free, and whether they lie
//! where outgoing connections take their ports.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use netlink_packet_route::AddressFamily;

use crate::config::Protocol;

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
pub fn taken_ports(ports: &[(&'static str, u16, Protocol)]) -> Vec<TakenPort> {
    ports
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

/// The message for ports found taken: which, and the ways out. A taken port
/// inside the ephemeral range may only be an outgoing connection's.
pub fn explain_taken(taken: &[TakenPort], ephemeral: Option<&EphemeralPorts>) -> String {
    let list: Vec<String> = taken
        .iter()
        .map(|t| format!("{}/{} ({}: {})", t.port, t.protocol.name(), t.var, t.error))
        .collect();
    let mut msg = format!(
        "port(s) already in use on this host: {}. Another cluster (or another user's) may hold them: \
         run a second instance with `--tenant N` (moves every port by N×10000), or set the PORT_* variables",
        list.join(", ")
    );
    if let Some(e) = ephemeral.filter(|e| taken.iter().any(|t| e.exposes(t.port))) {
        msg.push_str(&format!(
            ". Ports in {}-{} (the kernel's ephemeral range) are also held for a while by ordinary \
             outgoing connections: trying again may work, ports below {} always do",
            e.low, e.high, e.low
        ));
    }
    msg
}

/// The ports the kernel hands to outgoing connections and `bind(0)`
/// (`net.ipv4.ip_local_port_range`), less those root reserved
/// (`net.ipv4.ip_local_reserved_ports`). A published port in there can be
/// held by any outgoing connection on the host at the moment `up` binds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EphemeralPorts {
    pub low: u16,
    pub high: u16,
    reserved: Vec<(u16, u16)>,
}

impl EphemeralPorts {
    /// This network namespace's settings; `None` where /proc does not say.
    pub fn read() -> Option<Self> {
        let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
        let reserved =
            std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_reserved_ports").unwrap_or_default();
        Self::parse(&range, &reserved)
    }

    /// `range` as "32768\t60999", `reserved` as "8080,40000-40010" (empty
    /// when nothing is reserved); a reserved entry that does not parse is
    /// left out, so the check errs towards warning.
    pub fn parse(range: &str, reserved: &str) -> Option<Self> {
        let mut bounds = range.split_whitespace().map(str::parse::<u16>);
        let (Some(Ok(low)), Some(Ok(high)), None) = (bounds.next(), bounds.next(), bounds.next()) else {
            return None;
        };
        let reserved = reserved
            .split(',')
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .filter_map(|r| {
                let (a, b) = r.split_once('-').unwrap_or((r, r));
                Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
            })
            .collect();
        Some(Self { low, high, reserved })
    }

    /// Whether an outgoing connection can be given `port`.
    pub fn exposes(&self, port: u16) -> bool {
        (self.low..=self.high).contains(&port) && !self.reserved.iter().any(|&(a, b)| (a..=b).contains(&port))
    }

    /// The published ports an outgoing connection can take, as (variable, port).
    pub fn exposed(&self, ports: &[(&'static str, u16, Protocol)]) -> Vec<(&'static str, u16)> {
        ports
            .iter()
            .filter(|(_, port, _)| self.exposes(*port))
            .map(|&(var, port, _)| (var, port))
            .collect()
    }

    /// The warning for [`Self::exposed`] ports, with the two fixes.
    pub fn explain(&self, exposed: &[(&'static str, u16)]) -> String {
        let list: Vec<String> = exposed
            .iter()
            .map(|(var, port)| format!("{var}={port}"))
            .collect();
        let ports: Vec<String> = exposed.iter().map(|(_, port)| port.to_string()).collect();
        format!(
            "{} lie in this host's ephemeral port range {}-{}, where any outgoing connection can hold one \
             just when the node needs it: set the PORT_* variables below {}, \
             or have root reserve them: sysctl -w net.ipv4.ip_local_reserved_ports={}",
            list.join(", "),
            self.low,
            self.high,
            self.low,
            ports.join(",")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Ports;

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
        let taken = taken_ports(&ports.published());
        assert!(
            taken.iter().any(|t| t.var == "PORT_ETCD" && t.port == port),
            "{taken:?}"
        );
        let msg = explain_taken(&taken, None);
        assert!(msg.contains("--tenant") && msg.contains("PORT_ETCD"), "{msg}");
        assert!(!msg.contains("ephemeral"), "{msg}");
        let everywhere = EphemeralPorts::parse("1024 65535", "").expect("range");
        let msg = explain_taken(&taken, Some(&everywhere));
        assert!(msg.contains("ephemeral") && msg.contains("trying again"), "{msg}");
    }

    #[test]
    fn ephemeral_range_and_reservations_parse() {
        let e = EphemeralPorts::parse("32768\t60999\n", "40250,42000-42010\n").expect("range");
        assert_eq!((e.low, e.high), (32768, 60999));
        assert!(e.exposes(32768) && e.exposes(60999) && e.exposes(42011));
        assert!(!e.exposes(32767) && !e.exposes(61000));
        assert!(!e.exposes(40250) && !e.exposes(42000) && !e.exposes(42010));
        for bad in ["", "32768", "a b", "1 2 3", "70000 80000"] {
            assert_eq!(EphemeralPorts::parse(bad, ""), None, "{bad:?}");
        }
        // A reservation that does not parse is ignored, not fatal.
        let e = EphemeralPorts::parse("32768 60999", "x,40000-").expect("range");
        assert!(e.exposes(40000));
    }

    #[test]
    fn only_the_exposed_published_ports_are_named() {
        let e = EphemeralPorts::parse("32768 60999", "40250").expect("range");
        let tenant4 = Ports {
            etcd: 42379,
            kubelet: 50250,
            flannel: 48472,
            kube_apiserver: 46443,
        };
        assert_eq!(e.exposed(&tenant4.published()).len(), 4);
        assert!(e.exposed(&Ports::DEFAULT.published()).is_empty());
        let mixed = Ports {
            kubelet: 40250,
            etcd: 33000,
            ..Ports::DEFAULT
        };
        let exposed = e.exposed(&mixed.published());
        assert_eq!(exposed, vec![("PORT_ETCD", 33000)]);
        let msg = e.explain(&exposed);
        assert!(
            msg.contains("PORT_ETCD=33000")
                && msg.contains("32768-60999")
                && msg.contains("reserved_ports=33000"),
            "{msg}"
        );
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
