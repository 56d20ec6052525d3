//! A route socket inside a container's network namespace.
//!
//! An unprivileged daemon cannot setns(2) into another network namespace from
//! its (multi-threaded) process, so a short-lived helper — this same binary,
//! single-threaded — enters the container's user and network namespaces,
//! opens a NETLINK_ROUTE socket subscribed to address changes, hands it back
//! over a unix socket and exits. The socket stays in the container's
//! namespace for its whole life; the daemon then talks rtnetlink through it
//! (see `ifaddrs`).

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::path::Path;

use rustix::thread::LinkNameSpaceType;
use tokio::net::UnixStream;

use super::fdpass;

/// The hidden subcommand of the `netaccel` binary that runs the helper.
pub const HELPER_SUBCOMMAND: &str = "netns-route-socket";
/// The fd number on which the helper finds its end of the unix socket.
pub const HELPER_FD: i32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    #[error("cannot start the netns helper {exe}: {source}")]
    Spawn { exe: String, source: io::Error },
    #[error("netns helper for pid {pid} failed: {detail}")]
    Failed { pid: u32, detail: String },
}

/// Runs in the helper process: enter the namespaces of `pid`, create a route
/// socket subscribed to address and route changes, send it on fd `HELPER_FD`.
pub fn run_helper(pid: u32) -> io::Result<()> {
    // SAFETY: the parent placed our end of a unix socket at HELPER_FD for us
    // alone and nothing else in this process refers to that number.
    let out = unsafe { OwnedFd::from_raw_fd(HELPER_FD) };
    let userns = File::open(format!("/proc/{pid}/ns/user"))?;
    let netns = File::open(format!("/proc/{pid}/ns/net"))?;
    let own_user = rustix::fs::stat("/proc/self/ns/user")?;
    let target_user = rustix::fs::fstat(&userns)?;
    if (own_user.st_dev, own_user.st_ino) != (target_user.st_dev, target_user.st_ino) {
        rustix::thread::move_into_link_name_space(userns.as_fd(), Some(LinkNameSpaceType::User))?;
    }
    rustix::thread::move_into_link_name_space(netns.as_fd(), Some(LinkNameSpaceType::Network))?;
    let mut sock = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_ROUTE)?;
    sock.bind_auto()?;
    sock.add_membership(libc::RTNLGRP_IPV4_IFADDR)?;
    sock.add_membership(libc::RTNLGRP_IPV6_IFADDR)?;
    sock.add_membership(libc::RTNLGRP_IPV4_ROUTE)?;
    sock.add_membership(libc::RTNLGRP_IPV6_ROUTE)?;
    // SAFETY: `sock` owns this fd and outlives the borrow.
    let sock_fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(sock.as_raw_fd()) };
    fdpass::send_with_fds(&out, b"r", &[sock_fd])
}

/// Starts the helper for `pid` and returns the route socket it made.
pub async fn route_socket_in_netns_of(helper_exe: &Path, pid: u32) -> Result<OwnedFd, HelperError> {
    let spawn_err = |source| HelperError::Spawn {
        exe: helper_exe.display().to_string(),
        source,
    };
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(spawn_err)?;
    let theirs_raw = theirs.as_raw_fd();
    let mut cmd = tokio::process::Command::new(helper_exe);
    cmd.arg(HELPER_SUBCOMMAND)
        .arg(pid.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    // SAFETY: the closure runs between fork and exec and only calls dup2,
    // which is async-signal-safe; dup2 also clears CLOEXEC on the copy.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(theirs_raw, HELPER_FD) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(spawn_err)?;
    drop(theirs);
    ours.set_nonblocking(true).map_err(spawn_err)?;
    let ours = UnixStream::from_std(ours).map_err(spawn_err)?;
    let msg = fdpass::read_message(&ours, 16, |_| false).await;
    let out = child.wait_with_output().await.map_err(spawn_err)?;
    let failed = |detail: String| HelperError::Failed { pid, detail };
    let mut msg = msg.map_err(|e| failed(e.to_string()))?;
    if !out.status.success() || msg.fds.len() != 1 {
        return Err(failed(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    msg.fds.pop().ok_or_else(|| failed("no socket received".into()))
}

/// The route socket as a tokio netlink socket, for rtnetlink.
pub fn tokio_route_socket(route_socket: OwnedFd) -> netlink_sys::TokioSocket {
    // SAFETY: we own the route socket fd and hand that ownership over.
    unsafe { netlink_sys::TokioSocket::from_raw_fd(route_socket.into_raw_fd()) }
}
