//! Replays a container socket's options onto the host socket that replaces it.
//!
//! The daemon reads the options straight from the container's socket (a
//! `pidfd_getfd` copy), so no `setsockopt` needs to be intercepted. An option is
//! replayed only where it differs from a fresh host socket: setting SO_SNDBUF
//! or SO_RCVBUF at all would lock the buffer size and switch off the kernel's
//! autotuning, which costs most of the throughput we are here for.

use std::os::fd::AsFd;
use std::time::Duration;

use rustix::net::sockopt as so;
use rustix::net::{AddressFamily, SocketType};

/// The options we carry over. `None` means "could not be read" and is never
/// applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketOptions {
    reuseaddr: Option<bool>,
    reuseport: Option<bool>,
    broadcast: Option<bool>,
    keepalive: Option<bool>,
    oobinline: Option<bool>,
    linger: Option<Option<Duration>>,
    recv_timeout: Option<Option<Duration>>,
    send_timeout: Option<Option<Duration>>,
    recv_buffer: Option<usize>,
    send_buffer: Option<usize>,
    nodelay: Option<bool>,
    keepidle: Option<Duration>,
    keepintvl: Option<Duration>,
    keepcnt: Option<u32>,
    user_timeout: Option<u32>,
    congestion: Option<String>,
    ip_tos: Option<u8>,
    ipv6_v6only: Option<bool>,
    ipv6_tclass: Option<u32>,
}

/// An option the host socket refused; the connection still goes ahead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotReplayed {
    pub option: &'static str,
    pub errno: rustix::io::Errno,
}

/// What the host socket that gets the options will do, which decides the
/// options worth reading: every one is a syscall on the hot path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Connect, never bound by us: SO_REUSEADDR/SO_REUSEPORT change nothing.
    Connect,
    /// Bind and listen.
    Listen,
}

impl SocketOptions {
    /// Reads the options of a socket of `family` and `kind` that matter for
    /// `purpose`; TCP-level ones only from stream sockets and SO_BROADCAST
    /// only from datagram ones (elsewhere they would be failing or
    /// meaningless syscalls).
    pub fn read(fd: impl AsFd, family: AddressFamily, kind: SocketType, purpose: Purpose) -> Self {
        let fd = fd.as_fd();
        let v6 = family == AddressFamily::INET6;
        let tcp = kind == SocketType::STREAM;
        let binds = purpose == Purpose::Listen;
        Self {
            reuseaddr: if binds {
                so::socket_reuseaddr(fd).ok()
            } else {
                None
            },
            reuseport: if binds {
                so::socket_reuseport(fd).ok()
            } else {
                None
            },
            broadcast: if tcp { None } else { so::socket_broadcast(fd).ok() },
            keepalive: so::socket_keepalive(fd).ok(),
            oobinline: so::socket_oobinline(fd).ok(),
            linger: so::socket_linger(fd).ok(),
            recv_timeout: so::socket_timeout(fd, rustix::net::sockopt::Timeout::Recv).ok(),
            send_timeout: so::socket_timeout(fd, rustix::net::sockopt::Timeout::Send).ok(),
            recv_buffer: so::socket_recv_buffer_size(fd).ok(),
            send_buffer: so::socket_send_buffer_size(fd).ok(),
            nodelay: if tcp { so::tcp_nodelay(fd).ok() } else { None },
            keepidle: if tcp { so::tcp_keepidle(fd).ok() } else { None },
            keepintvl: if tcp { so::tcp_keepintvl(fd).ok() } else { None },
            keepcnt: if tcp { so::tcp_keepcnt(fd).ok() } else { None },
            user_timeout: if tcp { so::tcp_user_timeout(fd).ok() } else { None },
            congestion: if tcp { so::tcp_congestion(fd).ok() } else { None },
            ip_tos: if v6 { None } else { so::ip_tos(fd).ok() },
            ipv6_v6only: if v6 { so::ipv6_v6only(fd).ok() } else { None },
            ipv6_tclass: if v6 { so::ipv6_tclass(fd).ok() } else { None },
        }
    }

    /// Options of a fresh socket of `family` and `kind` in the daemon's namespace.
    pub fn fresh(family: AddressFamily, kind: SocketType) -> rustix::io::Result<Self> {
        let sock = rustix::net::socket(family, kind, None)?;
        Ok(Self::read(&sock, family, kind, Purpose::Listen))
    }

    /// Applies to `fd` every option that differs from `defaults`. Returns what
    /// the host refused (e.g. a congestion algorithm not allowed for users).
    pub fn apply_changed(&self, fd: impl AsFd, defaults: &Self) -> Vec<NotReplayed> {
        let fd = fd.as_fd();
        let mut refused = Vec::new();
        let mut put = |option: &'static str, r: rustix::io::Result<()>| {
            if let Err(errno) = r {
                refused.push(NotReplayed { option, errno });
            }
        };
        macro_rules! replay {
            ($field:ident, $name:literal, |$v:ident| $set:expr) => {
                if let Some($v) = &self.$field {
                    if Some($v) != defaults.$field.as_ref() {
                        put($name, $set);
                    }
                }
            };
        }
        replay!(reuseaddr, "SO_REUSEADDR", |v| so::set_socket_reuseaddr(fd, *v));
        replay!(reuseport, "SO_REUSEPORT", |v| so::set_socket_reuseport(fd, *v));
        replay!(broadcast, "SO_BROADCAST", |v| so::set_socket_broadcast(fd, *v));
        replay!(keepalive, "SO_KEEPALIVE", |v| so::set_socket_keepalive(fd, *v));
        replay!(oobinline, "SO_OOBINLINE", |v| so::set_socket_oobinline(fd, *v));
        replay!(linger, "SO_LINGER", |v| so::set_socket_linger(fd, *v));
        replay!(recv_timeout, "SO_RCVTIMEO", |v| so::set_socket_timeout(
            fd,
            so::Timeout::Recv,
            *v
        ));
        replay!(send_timeout, "SO_SNDTIMEO", |v| so::set_socket_timeout(
            fd,
            so::Timeout::Send,
            *v
        ));
        // getsockopt reports twice what setsockopt asked for.
        replay!(recv_buffer, "SO_RCVBUF", |v| so::set_socket_recv_buffer_size(
            fd,
            *v / 2
        ));
        replay!(send_buffer, "SO_SNDBUF", |v| so::set_socket_send_buffer_size(
            fd,
            *v / 2
        ));
        replay!(nodelay, "TCP_NODELAY", |v| so::set_tcp_nodelay(fd, *v));
        replay!(keepidle, "TCP_KEEPIDLE", |v| so::set_tcp_keepidle(fd, *v));
        replay!(keepintvl, "TCP_KEEPINTVL", |v| so::set_tcp_keepintvl(fd, *v));
        replay!(keepcnt, "TCP_KEEPCNT", |v| so::set_tcp_keepcnt(fd, *v));
        replay!(user_timeout, "TCP_USER_TIMEOUT", |v| so::set_tcp_user_timeout(
            fd, *v
        ));
        replay!(congestion, "TCP_CONGESTION", |v| so::set_tcp_congestion(fd, v));
        replay!(ip_tos, "IP_TOS", |v| so::set_ip_tos(fd, *v));
        replay!(ipv6_v6only, "IPV6_V6ONLY", |v| so::set_ipv6_v6only(fd, *v));
        replay!(ipv6_tclass, "IPV6_TCLASS", |v| so::set_ipv6_tclass(fd, *v));
        refused
    }
}

/// Fresh-socket options of the daemon's namespace, read once at start, per
/// family and socket type (UDP and TCP buffers have different defaults).
#[derive(Debug, Clone)]
pub struct HostDefaults {
    fresh: Vec<(AddressFamily, SocketType, SocketOptions)>,
}

impl HostDefaults {
    pub fn probe() -> rustix::io::Result<Self> {
        let mut fresh = Vec::new();
        for family in [AddressFamily::INET, AddressFamily::INET6] {
            for kind in [SocketType::STREAM, SocketType::DGRAM] {
                match SocketOptions::fresh(family, kind) {
                    Ok(o) => fresh.push((family, kind, o)),
                    // A host without IPv6 still serves IPv4 containers.
                    Err(_) if family == AddressFamily::INET6 => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(Self { fresh })
    }

    pub fn for_socket(&self, family: AddressFamily, kind: SocketType) -> Option<&SocketOptions> {
        self.fresh
            .iter()
            .find(|(f, k, _)| *f == family && *k == kind)
            .map(|(_, _, o)| o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_sockets_need_nothing_replayed() {
        let defaults = SocketOptions::fresh(AddressFamily::INET, SocketType::STREAM).expect("v4 socket");
        let target = rustix::net::socket(AddressFamily::INET, SocketType::STREAM, None).expect("socket");
        assert!(defaults.apply_changed(&target, &defaults).is_empty());
        assert_eq!(
            SocketOptions::read(&target, AddressFamily::INET, SocketType::STREAM, Purpose::Listen),
            defaults
        );
    }

    #[test]
    fn changed_options_are_replayed_and_buffers_only_when_set() {
        let defaults = SocketOptions::fresh(AddressFamily::INET, SocketType::STREAM).expect("v4 socket");
        let orig = rustix::net::socket(AddressFamily::INET, SocketType::STREAM, None).expect("socket");
        so::set_tcp_nodelay(&orig, true).expect("nodelay");
        so::set_socket_keepalive(&orig, true).expect("keepalive");
        so::set_tcp_keepidle(&orig, Duration::from_secs(33)).expect("keepidle");
        so::set_socket_timeout(&orig, so::Timeout::Send, Some(Duration::from_millis(1500)))
            .expect("sndtimeo");
        so::set_socket_send_buffer_size(&orig, 96 * 1024).expect("sndbuf");
        so::set_ip_tos(&orig, 0x10).expect("tos");
        let opts = SocketOptions::read(&orig, AddressFamily::INET, SocketType::STREAM, Purpose::Listen);
        assert_eq!(opts.send_timeout, Some(Some(Duration::from_millis(1500))));

        let host = rustix::net::socket(AddressFamily::INET, SocketType::STREAM, None).expect("socket");
        assert!(opts.apply_changed(&host, &defaults).is_empty());
        assert_eq!(
            SocketOptions::read(&host, AddressFamily::INET, SocketType::STREAM, Purpose::Listen),
            opts
        );
        // The receive buffer was not set on the original, so it stays unlocked.
        assert_eq!(
            so::socket_recv_buffer_size(&host).expect("rcvbuf"),
            defaults.recv_buffer.expect("default")
        );
    }

    #[test]
    fn reuse_options_are_read_only_for_listeners() {
        let sock = rustix::net::socket(AddressFamily::INET, SocketType::STREAM, None).expect("socket");
        so::set_socket_reuseaddr(&sock, true).expect("reuseaddr");
        let connect = SocketOptions::read(&sock, AddressFamily::INET, SocketType::STREAM, Purpose::Connect);
        assert_eq!((connect.reuseaddr, connect.broadcast), (None, None));
        let listen = SocketOptions::read(&sock, AddressFamily::INET, SocketType::STREAM, Purpose::Listen);
        assert_eq!(listen.reuseaddr, Some(true));
    }

    #[test]
    fn v6only_is_carried_for_ipv6() {
        let Ok(defaults) = SocketOptions::fresh(AddressFamily::INET6, SocketType::STREAM) else {
            eprintln!("skipped: no IPv6 sockets on this host");
            return;
        };
        let orig = rustix::net::socket(AddressFamily::INET6, SocketType::STREAM, None).expect("socket");
        let flipped = !so::ipv6_v6only(&orig).expect("v6only");
        so::set_ipv6_v6only(&orig, flipped).expect("set v6only");
        let host = rustix::net::socket(AddressFamily::INET6, SocketType::STREAM, None).expect("socket");
        let opts = SocketOptions::read(&orig, AddressFamily::INET6, SocketType::STREAM, Purpose::Connect);
        assert!(opts.apply_changed(&host, &defaults).is_empty());
        assert_eq!(so::ipv6_v6only(&host).expect("v6only"), flipped);
    }
}
