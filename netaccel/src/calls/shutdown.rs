//! `shutdown(fd, SHUT_RD | SHUT_RDWR)` in a container with bind bypass: run
//! by the daemon on its own copy of the socket (never continued, so the
//! socket it checked is the socket it acts on), refused on our listeners,
//! which it would turn back into closed sockets that could connect from the
//! host (see `bind`). SHUT_WR is never notified (the table's filter).

use std::io;

use super::socket::{self, copy_caller_fd, CallerFd};
use super::{Accel, Handled, Pending};
use crate::policy::verdict::maybe_host;
use crate::sys::notify::Notification;

/// Decides one shutdown notification.
pub fn handle(
    accel: &Accel,
    pending: &Pending<'_>,
    n: &Notification,
    fd: i32,
    how: i32,
) -> io::Result<Handled> {
    let orig = match copy_caller_fd(accel, pending, n, fd) {
        CallerFd::Copied(fd) => fd,
        CallerFd::Gone => return Ok(Handled::gone()),
        CallerFd::Failed(e) => return Ok(Handled::done(e.raw_os_error().unwrap_or(libc::EBADF))),
    };
    let is_ours = socket::is_inet_socket(&orig) && maybe_host(socket::netns_of(&orig), accel.host_netns);
    if is_ours && rustix::net::sockopt::socket_acceptconn(&orig).unwrap_or(true) {
        return Ok(Handled::refuse(libc::EOPNOTSUPP));
    }
    let how = match how {
        libc::SHUT_RD => rustix::net::Shutdown::Read,
        libc::SHUT_WR => rustix::net::Shutdown::Write,
        libc::SHUT_RDWR => rustix::net::Shutdown::Both,
        _ => return Ok(Handled::done(libc::EINVAL)),
    };
    let errno = match rustix::net::shutdown(&orig, how) {
        Ok(()) => 0,
        Err(e) => e.raw_os_error(),
    };
    Ok(Handled::done(errno))
}
