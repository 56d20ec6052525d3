//! Decoding of a `struct sockaddr` copied out of a container's memory.
//!
//! Only what the fast path acts on is decoded; anything else (AF_UNIX,
//! AF_UNSPEC, short or odd lengths) is `None` and the kernel handles the
//! syscall itself, producing exactly the errno it always would.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// Largest address the kernel accepts (`sizeof(struct sockaddr_storage)`).
pub const MAX_SOCKADDR_LEN: usize = 128;
const SOCKADDR_IN_LEN: usize = 16;
/// RFC 2133 sockaddr_in6 without `sin6_scope_id`; the kernel accepts it.
const SOCKADDR_IN6_MIN_LEN: usize = 24;
const SOCKADDR_IN6_LEN: usize = 28;

/// Decodes an AF_INET or AF_INET6 address as the kernel would for connect(2).
pub fn decode_inet(raw: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes(raw.get(0..2)?.try_into().ok()?);
    match i32::from(family) {
        libc::AF_INET if raw.len() >= SOCKADDR_IN_LEN => {
            let port = u16::from_be_bytes([raw[2], raw[3]]);
            let ip = Ipv4Addr::new(raw[4], raw[5], raw[6], raw[7]);
            Some(SocketAddr::V4(SocketAddrV4::new(ip, port)))
        }
        libc::AF_INET6 if raw.len() >= SOCKADDR_IN6_MIN_LEN => {
            let port = u16::from_be_bytes([raw[2], raw[3]]);
            let flowinfo = u32::from_be_bytes(raw[4..8].try_into().ok()?);
            let ip: [u8; 16] = raw[8..24].try_into().ok()?;
            let scope_id = if raw.len() >= SOCKADDR_IN6_LEN {
                u32::from_ne_bytes(raw[24..28].try_into().ok()?)
            } else {
                0
            };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(ip),
                port,
                flowinfo,
                scope_id,
            )))
        }
        _ => None,
    }
}

/// The arguments of a connect or bind call (fd, sockaddr pointer, length),
/// validated as the kernel would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SockaddrCall {
    pub fd: std::os::fd::RawFd,
    pub addr_ptr: u64,
    pub addr_len: usize,
}

impl SockaddrCall {
    /// `None` for argument values the kernel rejects by itself (negative fd,
    /// negative or oversized length); those calls continue unchanged.
    pub fn from_args(args: &[u64; 6]) -> Option<Self> {
        // The kernel truncates both to int.
        let fd = args[0] as u32 as i32;
        let len = args[2] as u32 as i32;
        if fd < 0 || len < 0 || len as usize > MAX_SOCKADDR_LEN {
            return None;
        }
        Some(Self {
            fd,
            addr_ptr: args[1],
            addr_len: len as usize,
        })
    }
}

/// True for an AF_UNSPEC address: connect(2) with it disconnects the socket.
pub fn is_unspec(raw: &[u8]) -> bool {
    raw.get(0..2)
        .is_some_and(|f| i32::from(u16::from_ne_bytes([f[0], f[1]])) == libc::AF_UNSPEC)
}

#[cfg(test)]
pub(crate) fn encode_v4(addr: SocketAddrV4) -> Vec<u8> {
    let mut raw = vec![0u8; SOCKADDR_IN_LEN];
    raw[0..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
    raw[2..4].copy_from_slice(&addr.port().to_be_bytes());
    raw[4..8].copy_from_slice(&addr.ip().octets());
    raw
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_ipv4() {
        let a = SocketAddrV4::new(Ipv4Addr::new(10, 1, 2, 3), 5201);
        assert_eq!(decode_inet(&encode_v4(a)), Some(SocketAddr::V4(a)));
    }

    #[test]
    fn rejects_short_ipv4_like_the_kernel() {
        let a = SocketAddrV4::new(Ipv4Addr::new(10, 1, 2, 3), 5201);
        assert_eq!(decode_inet(&encode_v4(a)[..15]), None);
        assert_eq!(decode_inet(&[]), None);
        assert_eq!(decode_inet(&[2]), None);
    }

    #[test]
    fn decodes_ipv6_with_and_without_scope() {
        let mut raw = vec![0u8; SOCKADDR_IN6_LEN];
        raw[0..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
        raw[2..4].copy_from_slice(&443u16.to_be_bytes());
        raw[8..24].copy_from_slice(&Ipv6Addr::LOCALHOST.octets());
        raw[24..28].copy_from_slice(&7u32.to_ne_bytes());
        let full = decode_inet(&raw).expect("full sockaddr_in6");
        assert_eq!(
            full,
            SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 443, 0, 7))
        );
        let short = decode_inet(&raw[..24]).expect("RFC 2133 length");
        assert_eq!(
            short,
            SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 443, 0, 0))
        );
        assert_eq!(decode_inet(&raw[..23]), None);
    }

    #[test]
    fn other_families_are_not_decoded() {
        let mut raw = vec![0u8; 110];
        raw[0..2].copy_from_slice(&(libc::AF_UNIX as u16).to_ne_bytes());
        assert_eq!(decode_inet(&raw), None);
        raw[0..2].copy_from_slice(&(libc::AF_UNSPEC as u16).to_ne_bytes());
        assert_eq!(decode_inet(&raw), None);
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
}
