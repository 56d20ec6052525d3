//! The container's own interface subnets, read with rtnetlink from inside its
//! network namespace and refreshed whenever an address changes.
//!
//! An unprivileged daemon cannot setns(2) into another network namespace from
//! its (multi-threaded) process, so a short-lived helper — this same binary,
//! single-threaded — enters the container's user and network namespaces,
//! opens a NETLINK_ROUTE socket subscribed to address changes, hands it back
//! over a unix socket and exits. The socket stays in the container's
//! namespace for its whole life; the daemon then talks rtnetlink through it.

use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use rustix::thread::LinkNameSpaceType;
use tokio::net::UnixStream;
use tokio::task::JoinHandle;

use crate::fdpass;
use crate::ignore::IgnoreList;

/// The hidden subcommand of the `netaccel` binary that runs the helper.
pub const HELPER_SUBCOMMAND: &str = "netns-route-socket";
/// The fd number on which the helper finds its end of the unix socket.
pub const HELPER_FD: i32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum IfaddrsError {
    #[error("cannot start the netns helper {exe}: {source}")]
    SpawnHelper { exe: String, source: io::Error },
    #[error("netns helper for pid {pid} failed: {detail}")]
    Helper { pid: u32, detail: String },
    #[error("rtnetlink address dump in the namespace of pid {pid} failed: {detail}")]
    Dump { pid: u32, detail: String },
}

/// Runs in the helper process: enter the namespaces of `pid`, create a route
/// socket subscribed to address changes, send it on fd `HELPER_FD`.
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
    // SAFETY: `sock` owns this fd and outlives the borrow.
    let sock_fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(sock.as_raw_fd()) };
    fdpass::send_with_fds(&out, b"r", &[sock_fd])
}

/// Starts the helper for `pid` and returns the route socket it made.
pub async fn route_socket_in_netns_of(helper_exe: &Path, pid: u32) -> Result<OwnedFd, IfaddrsError> {
    let spawn_err = |source| IfaddrsError::SpawnHelper {
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
    let helper_err = |detail: String| IfaddrsError::Helper { pid, detail };
    let mut msg = msg.map_err(|e| helper_err(e.to_string()))?;
    if !out.status.success() || msg.fds.len() != 1 {
        return Err(helper_err(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    msg.fds
        .pop()
        .ok_or_else(|| helper_err("no socket received".into()))
}

/// A container's network as the daemon sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetView {
    /// Destinations that keep the container's own path.
    pub ignore: IgnoreList,
    /// The container's interface addresses.
    pub addresses: Vec<IpAddr>,
}

impl NetView {
    /// A view with only `ignore` (addresses still unknown).
    pub fn new(ignore: IgnoreList) -> Self {
        Self {
            ignore,
            addresses: Vec::new(),
        }
    }

    /// True when `ip` means the container itself: loopback, the unspecified
    /// address, or one of its interface addresses.
    pub fn is_self(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_loopback() || ip.is_unspecified() || self.addresses.contains(&ip)
    }
}

/// Keeps `target` = `base` + the subnets (and the addresses) of the namespace
/// behind `route_socket` up to date until dropped.
pub struct SubnetWatch {
    task: JoinHandle<()>,
}

impl Drop for SubnetWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SubnetWatch {
    /// Dumps the current addresses into `target` before returning, so the
    /// first decision already sees them; then follows every change.
    pub async fn start(
        route_socket: OwnedFd,
        pid: u32,
        base: IgnoreList,
        target: Arc<RwLock<NetView>>,
    ) -> Result<Self, IfaddrsError> {
        // SAFETY: we own the route socket fd and hand that ownership over.
        let sock = unsafe { netlink_sys::TokioSocket::from_raw_fd(route_socket.into_raw_fd()) };
        let (conn, handle, mut changes) = rtnetlink::from_socket(sock);
        let conn = tokio::spawn(conn);
        let publish = move |nets: Vec<IpNet>| {
            let mut ignore = base.clone();
            ignore.extend(nets.iter().map(|n| n.trunc()));
            let addresses = nets.iter().map(|n| n.addr()).collect();
            tracing::debug!(pid, nets = ?ignore.nets(), ?addresses, "ignore list updated");
            if let Ok(mut t) = target.write() {
                *t = NetView { ignore, addresses };
            }
        };
        let dump_err = |e: rtnetlink::Error| IfaddrsError::Dump {
            pid,
            detail: e.to_string(),
        };
        publish(dump(&handle).await.map_err(dump_err)?);
        let task = tokio::spawn(async move {
            while changes.next().await.is_some() {
                match dump(&handle).await {
                    Ok(nets) => publish(nets),
                    Err(e) => tracing::warn!(pid, error = %e, "address refresh failed"),
                }
            }
            conn.abort();
        });
        Ok(Self { task })
    }
}

async fn dump(handle: &rtnetlink::Handle) -> Result<Vec<IpNet>, rtnetlink::Error> {
    let mut stream = handle.address().get().execute();
    let mut nets = Vec::new();
    while let Some(msg) = stream.next().await {
        nets.extend(subnet_of(&msg?));
    }
    Ok(nets)
}

/// The interface address with its prefix length (not truncated).
fn subnet_of(msg: &AddressMessage) -> Option<IpNet> {
    // IFA_LOCAL is the local address on point-to-point links; IFA_ADDRESS the
    // peer there and the local address elsewhere.
    let local = msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    let address = msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(ip) => Some(*ip),
        _ => None,
    });
    let ip = local.or(address)?;
    IpNet::new(ip, msg.header.prefix_len).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_container_itself_is_loopback_unspecified_and_its_addresses() {
        let view = NetView {
            ignore: IgnoreList::default(),
            addresses: vec![
                "10.0.2.100".parse().expect("ip"),
                "fd00::100".parse().expect("ip"),
            ],
        };
        for me in [
            "127.0.0.1",
            "127.9.9.9",
            "0.0.0.0",
            "::1",
            "::",
            "10.0.2.100",
            "fd00::100",
            "::ffff:10.0.2.100",
        ] {
            assert!(view.is_self(me.parse().expect("ip")), "{me}");
        }
        for other in ["10.0.2.2", "192.0.2.1", "fd00::2"] {
            assert!(!view.is_self(other.parse().expect("ip")), "{other}");
        }
    }

    #[test]
    fn subnet_prefers_local_address() {
        let mut msg = AddressMessage::default();
        msg.header.prefix_len = 24;
        msg.attributes
            .push(AddressAttribute::Address("10.0.2.100".parse().expect("ip")));
        assert_eq!(subnet_of(&msg), Some("10.0.2.100/24".parse().expect("net")));
        msg.attributes
            .push(AddressAttribute::Local("10.9.9.9".parse().expect("ip")));
        assert_eq!(subnet_of(&msg), Some("10.9.9.9/24".parse().expect("net")));
        msg.header.prefix_len = 99;
        assert_eq!(subnet_of(&msg), None);
    }
}
