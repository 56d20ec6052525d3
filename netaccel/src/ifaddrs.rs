//! The container's own interface subnets, read with rtnetlink through a
//! route socket inside its network namespace (`sys::nshelper` makes it) and
//! refreshed whenever an address changes.

use std::os::fd::OwnedFd;
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use tokio::task::JoinHandle;

use crate::policy::ignore::IgnoreList;
use crate::policy::netview::NetView;
use crate::sys::nshelper;

#[derive(Debug, thiserror::Error)]
pub enum IfaddrsError {
    #[error("rtnetlink address dump in the namespace of pid {pid} failed: {detail}")]
    Dump { pid: u32, detail: String },
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
        let sock = nshelper::tokio_route_socket(route_socket);
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
