//! Socket options that rustix does not wrap: device binding by index or name.
//!
//! `SO_BINDTOIFINDEX` is what keeps a bypassed host socket away from host
//! loopback (see `route`): set once on an unbound socket by anyone, changed
//! afterwards only with CAP_NET_RAW in the host namespace.

use std::io;
use std::os::fd::{AsFd, AsRawFd};

/// Pins `sock` to interface `ifindex` (SO_BINDTOIFINDEX).
pub fn pin_to_interface(sock: impl AsFd, ifindex: u32) -> io::Result<()> {
    let value = ifindex as libc::c_int;
    // SAFETY: SO_BINDTOIFINDEX reads one c_int from the pointer, which points
    // at a live local of that size; the socket fd is borrowed for the call.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTOIFINDEX,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The interface `sock` is pinned to (SO_BINDTOIFINDEX), 0 for none.
pub fn pinned_interface(sock: impl AsFd) -> io::Result<u32> {
    let mut ifindex: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: SO_BINDTOIFINDEX writes one c_int into `ifindex`, a live local,
    // and updates `len`; the fd is borrowed for the call.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTOIFINDEX,
            (&mut ifindex as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ifindex.max(0) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pin_reads_back() {
        let sock = rustix::net::socket(
            rustix::net::AddressFamily::INET,
            rustix::net::SocketType::STREAM,
            None,
        )
        .expect("socket");
        assert_eq!(pinned_interface(&sock).expect("read"), 0);
        pin_to_interface(&sock, 1).expect("pin to lo");
        assert_eq!(pinned_interface(&sock).expect("read"), 1);
    }
}
