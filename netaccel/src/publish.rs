//! Published ports: the `-p [hostIP:]hostPort:containerPort[/tcp|/udp]`
//! mappings of a container, and the host listeners the daemon bound for them.
//!
//! A `bind` of a published TCP container port gets a host socket bound to the
//! host port instead (see `bind.rs`), so inbound connections skip the
//! engine's port forwarder. The daemon remembers each such listener by its
//! socket inode, so a later connect to "its own" port can be sent to that
//! listener, and only while `/proc/net/tcp*` still lists that very socket:
//! a host port the container does not hold (its bind failed, it closed the
//! listener and someone else took the port) is never reached that way.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// One published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PortMapping {
    pub proto: Proto,
    /// `None`: every host address (0.0.0.0, or :: for IPv6 sockets).
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub container_port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error("port mapping {spec:?}: {why} (expected [hostIP:]hostPort:containerPort[/tcp|/udp], e.g. 8080:80 or 127.0.0.1:8053:53/udp)")]
    Syntax { spec: String, why: &'static str },
    #[error("container port {port}/{proto} is published twice ({first} and {second}); one host port per container port")]
    DuplicateContainerPort {
        port: u16,
        proto: Proto,
        first: PortMapping,
        second: PortMapping,
    },
    #[error("host port {port}/{proto} is published twice ({first} and {second})")]
    DuplicateHostPort {
        port: u16,
        proto: Proto,
        first: PortMapping,
        second: PortMapping,
    },
}

fn port(s: &str) -> Option<u16> {
    s.parse::<u16>().ok().filter(|p| *p != 0)
}

impl FromStr for PortMapping {
    type Err = PublishError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let err = |why| PublishError::Syntax {
            spec: spec.to_owned(),
            why,
        };
        let (addr_part, proto) = match spec.rsplit_once('/') {
            Some((a, "tcp")) => (a, Proto::Tcp),
            Some((a, "udp")) => (a, Proto::Udp),
            Some(_) => return Err(err("the protocol must be tcp or udp")),
            None => (spec, Proto::Tcp),
        };
        let (host_ip, ports) = if let Some(rest) = addr_part.strip_prefix('[') {
            let (ip, ports) = rest
                .split_once("]:")
                .ok_or_else(|| err("an IPv6 host address needs brackets: [::1]:8080:80"))?;
            let ip = ip
                .parse::<std::net::Ipv6Addr>()
                .map_err(|_| err("not an IPv6 address"))?;
            (Some(IpAddr::V6(ip)), ports)
        } else {
            match addr_part.matches(':').count() {
                1 => (None, addr_part),
                2 => {
                    let (ip, ports) = addr_part.split_once(':').ok_or_else(|| err("missing ports"))?;
                    let ip = ip
                        .parse::<std::net::Ipv4Addr>()
                        .map_err(|_| err("not an IPv4 address (IPv6 goes in brackets)"))?;
                    (Some(IpAddr::V4(ip)), ports)
                }
                0 => return Err(err("a host port is required (netaccel binds exactly that port)")),
                _ => return Err(err("too many ':' (IPv6 host addresses go in brackets)")),
            }
        };
        let (host, container) = ports
            .split_once(':')
            .ok_or_else(|| err("missing container port"))?;
        let host_port = port(host).ok_or_else(|| err("the host port must be 1-65535"))?;
        let container_port = port(container).ok_or_else(|| err("the container port must be 1-65535"))?;
        let host_ip = host_ip.filter(|ip| !ip.is_unspecified());
        Ok(Self {
            proto,
            host_ip,
            host_port,
            container_port,
        })
    }
}

impl TryFrom<String> for PortMapping {
    type Error = PublishError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<PortMapping> for String {
    fn from(m: PortMapping) -> String {
        m.to_string()
    }
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host_ip {
            Some(IpAddr::V4(ip)) => write!(f, "{ip}:")?,
            Some(IpAddr::V6(ip)) => write!(f, "[{ip}]:")?,
            None => {}
        }
        write!(f, "{}:{}/{}", self.host_port, self.container_port, self.proto)
    }
}

impl PortMapping {
    /// The host address to bind for a socket of the given family, or `None`
    /// when an IPv4 socket was published on an IPv6 host address.
    pub fn host_addr(&self, ipv6_socket: bool) -> Option<SocketAddr> {
        let ip = match (self.host_ip, ipv6_socket) {
            (None, false) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            (None, true) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
            (Some(IpAddr::V4(v4)), true) => IpAddr::V6(v4.to_ipv6_mapped()),
            (Some(IpAddr::V6(_)), false) => return None,
            (Some(ip), _) => ip,
        };
        Some(SocketAddr::new(ip, self.host_port))
    }
}

/// Checks a container's mappings: one host port per container port and
/// protocol, and no host port twice.
pub fn check_unique(mappings: &[PortMapping]) -> Result<(), PublishError> {
    for (i, a) in mappings.iter().enumerate() {
        for b in &mappings[..i] {
            if a.proto != b.proto {
                continue;
            }
            if a.container_port == b.container_port {
                return Err(PublishError::DuplicateContainerPort {
                    port: a.container_port,
                    proto: a.proto,
                    first: *b,
                    second: *a,
                });
            }
            let overlap = a.host_ip.is_none() || b.host_ip.is_none() || a.host_ip == b.host_ip;
            if a.host_port == b.host_port && overlap {
                return Err(PublishError::DuplicateHostPort {
                    port: a.host_port,
                    proto: a.proto,
                    first: *b,
                    second: *a,
                });
            }
        }
    }
    Ok(())
}

/// The first mapping of `container_port`/`proto`.
pub fn find(mappings: &[PortMapping], proto: Proto, container_port: u16) -> Option<&PortMapping> {
    mappings
        .iter()
        .find(|m| m.proto == proto && m.container_port == container_port)
}

/// A host listener the daemon bound for a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listener {
    /// The container it belongs to (`Container::serial`).
    pub owner: u64,
    /// Where it is bound on the host.
    pub addr: SocketAddr,
    /// Its socket inode, which identifies it while it lives.
    pub inode: u64,
}

impl Listener {
    /// True while the host still has this very socket listening on its port.
    pub fn alive(&self) -> bool {
        let table = if self.addr.is_ipv6() {
            "/proc/net/tcp6"
        } else {
            "/proc/net/tcp"
        };
        std::fs::read_to_string(table)
            .map(|t| tcp_table_lists(&t, self.addr.port(), self.inode))
            .unwrap_or(false)
    }
}

/// Whether a `/proc/net/tcp*` table lists a LISTEN socket on `port` with `inode`.
fn tcp_table_lists(table: &str, port: u16, inode: u64) -> bool {
    const TCP_LISTEN: &str = "0A";
    table.lines().skip(1).any(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let local_port = cols
            .get(1)
            .and_then(|a| a.rsplit_once(':'))
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
        local_port == Some(port)
            && cols.get(3) == Some(&TCP_LISTEN)
            && cols.get(9).and_then(|i| i.parse::<u64>().ok()) == Some(inode)
    })
}

/// The TCP listeners bound for containers, by host port; shared by every
/// container the daemon serves.
#[derive(Debug, Default)]
pub struct Listeners {
    by_port: Mutex<HashMap<u16, Listener>>,
}

impl Listeners {
    pub fn record(&self, listener: Listener) {
        if let Ok(mut m) = self.by_port.lock() {
            m.insert(listener.addr.port(), listener);
        }
    }

    /// The live listener on host port `port`, if one of ours holds it.
    pub fn live(&self, port: u16) -> Option<Listener> {
        let found = self.by_port.lock().ok()?.get(&port).copied()?;
        found.alive().then_some(found)
    }

    /// The listeners recorded for `owner`.
    pub fn of_owner(&self, owner: u64) -> Vec<Listener> {
        self.by_port
            .lock()
            .map(|m| m.values().filter(|l| l.owner == owner).copied().collect())
            .unwrap_or_default()
    }

    /// Forgets the listeners of a container that is gone.
    pub fn forget_owner(&self, owner: u64) {
        if let Ok(mut m) = self.by_port.lock() {
            m.retain(|_, l| l.owner != owner);
        }
    }

    pub fn len(&self) -> usize {
        self.by_port.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> PortMapping {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_the_docker_syntax() {
        assert_eq!(
            m("8080:80"),
            PortMapping {
                proto: Proto::Tcp,
                host_ip: None,
                host_port: 8080,
                container_port: 80
            }
        );
        let udp = m("127.0.0.1:8053:53/udp");
        assert_eq!(udp.proto, Proto::Udp);
        assert_eq!(udp.host_ip, Some("127.0.0.1".parse().expect("ip")));
        let v6 = m("[::1]:8443:443/tcp");
        assert_eq!(v6.host_ip, Some("::1".parse().expect("ip")));
        assert_eq!(
            m("0.0.0.0:81:80").host_ip,
            None,
            "unspecified means every address"
        );
        for s in ["8080:80", "127.0.0.1:8053:53/udp", "[::1]:8443:443/tcp"] {
            assert_eq!(m(&m(s).to_string()), m(s), "round trip {s}");
        }
    }

    #[test]
    fn bad_mappings_say_what_is_wrong() {
        for (bad, why) in [
            ("80", "host port is required"),
            ("0:80", "host port must be"),
            ("8080:0", "container port must be"),
            ("8080:70000", "container port must be"),
            ("8080:80/sctp", "tcp or udp"),
            ("::1:8080:80", "brackets"),
            ("[::1:8080:80", "brackets"),
            ("1.2.3:8080:80", "IPv4"),
            ("", "host port is required"),
            ("a:b", "host port must be"),
        ] {
            let err = bad.parse::<PortMapping>().expect_err(bad).to_string();
            assert!(err.contains(why), "{bad}: {err}");
            assert!(err.contains("hostPort:containerPort"), "{err}");
        }
    }

    #[test]
    fn duplicates_are_refused() {
        assert!(check_unique(&[m("8080:80"), m("8081:81"), m("8080:80/udp")]).is_ok());
        assert!(matches!(
            check_unique(&[m("8080:80"), m("8081:80")]),
            Err(PublishError::DuplicateContainerPort { port: 80, .. })
        ));
        assert!(matches!(
            check_unique(&[m("8080:80"), m("127.0.0.1:8080:81")]),
            Err(PublishError::DuplicateHostPort { port: 8080, .. })
        ));
        assert!(check_unique(&[m("127.0.0.1:8080:80"), m("127.0.0.2:8080:81")]).is_ok());
    }

    #[test]
    fn host_address_follows_the_socket_family() {
        assert_eq!(
            m("8080:80").host_addr(false),
            Some("0.0.0.0:8080".parse().expect("a"))
        );
        assert_eq!(
            m("8080:80").host_addr(true),
            Some("[::]:8080".parse().expect("a"))
        );
        assert_eq!(
            m("127.0.0.1:8080:80").host_addr(true),
            Some("[::ffff:127.0.0.1]:8080".parse().expect("a"))
        );
        assert_eq!(m("[::1]:8080:80").host_addr(false), None);
    }

    #[test]
    fn serde_uses_the_command_line_form() {
        let json = serde_json::to_string(&vec![m("127.0.0.1:8080:80")]).expect("json");
        assert_eq!(json, r#"["127.0.0.1:8080:80/tcp"]"#);
        let back: Vec<PortMapping> = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, vec![m("127.0.0.1:8080:80")]);
        assert!(serde_json::from_str::<Vec<PortMapping>>(r#"["80"]"#).is_err());
    }

    #[test]
    fn a_listener_is_alive_only_while_its_socket_listens() {
        let sock = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = sock.local_addr().expect("addr");
        let inode = rustix::fs::fstat(&sock).expect("fstat").st_ino;
        let listener = Listener {
            owner: 1,
            addr,
            inode,
        };
        assert!(listener.alive());
        assert!(
            !Listener {
                inode: inode + 1,
                ..listener
            }
            .alive(),
            "another socket"
        );
        let listeners = Listeners::default();
        listeners.record(listener);
        assert_eq!(listeners.live(addr.port()), Some(listener));
        drop(sock);
        assert!(!listener.alive());
        assert_eq!(listeners.live(addr.port()), None);
        listeners.forget_owner(1);
        assert!(listeners.is_empty());
    }

    #[test]
    fn tcp_table_parsing() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:1F91 0100007F:9C40 01 00000000:00000000 00:00000000 00000000  1000        0 4243 1 0000000000000000 20 4 30 10 -1\n";
        assert!(tcp_table_lists(table, 8080, 4242));
        assert!(!tcp_table_lists(table, 8081, 4243), "established, not listening");
        assert!(!tcp_table_lists(table, 8080, 4243));
        assert!(!tcp_table_lists("", 8080, 4242));
    }
}
