//! The container's own interface subnets and gateways, read with rtnetlink
//! through a route socket inside its network namespace (`sys::nshelper`
//! makes it) and refreshed whenever an address or a route changes.
//!
//! What keeps the container's path:
//! - the subnets of its interfaces, which its user-mode stack answers
//!   itself (slirp4netns's 10.0.2.0/24: the gateway, DNS, nothing else);
//! - but not a subnet copied from the host: pasta gives the container the
//!   host's own address and prefix, and the other addresses there are the
//!   hosts of the host's LAN, which the host reaches itself. Such a subnet
//!   is recognised by its address being one of the host's own;
//! - its gateways, which a user-mode stack may map to the host itself
//!   (pasta's default maps the gateway address to the host's loopback);
//! - link-local addresses (always, see `IgnoreList`).

use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use netlink_packet_route::AddressFamily;
use tokio::task::JoinHandle;

use crate::policy::ignore::IgnoreList;
use crate::policy::netview::NetView;
use crate::route::{Egress, Routes};
use crate::sys::nshelper;

#[derive(Debug, thiserror::Error)]
pub enum IfaddrsError {
    #[error("rtnetlink address dump in the namespace of pid {pid} failed: {detail}")]
    Dump { pid: u32, detail: String },
}

/// Keeps `target` = `base` + what keeps the container's path (see the
/// module) up to date until dropped; `host` looks up the host's routes.
pub struct SubnetWatch {
    task: JoinHandle<()>,
}

impl Drop for SubnetWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SubnetWatch {
    /// Reads the current view into `target` before returning, so the first
    /// decision already sees it; then follows every change.
    pub async fn start(
        route_socket: OwnedFd,
        pid: u32,
        base: IgnoreList,
        target: Arc<RwLock<NetView>>,
        host: Arc<Routes>,
    ) -> Result<Self, IfaddrsError> {
        let sock = nshelper::tokio_route_socket(route_socket);
        let (conn, handle, mut changes) = rtnetlink::from_socket(sock);
        let conn = tokio::spawn(conn);
        let dump_err = |e: rtnetlink::Error| IfaddrsError::Dump {
            pid,
            detail: e.to_string(),
        };
        let first = read_view(&handle, &base, &host).await.map_err(dump_err)?;
        publish(&target, pid, first);
        let task = tokio::spawn(async move {
            while changes.next().await.is_some() {
                match read_view(&handle, &base, &host).await {
                    Ok(view) => publish(&target, pid, view),
                    Err(e) => tracing::warn!(pid, error = %e, "address refresh failed"),
                }
            }
            conn.abort();
        });
        Ok(Self { task })
    }
}

fn publish(target: &RwLock<NetView>, pid: u32, view: NetView) {
    tracing::debug!(pid, nets = ?view.ignore.nets(), addresses = ?view.addresses, "ignore list updated");
    if let Ok(mut t) = target.write() {
        *t = view;
    }
}

async fn read_view(
    handle: &rtnetlink::Handle,
    base: &IgnoreList,
    host: &Routes,
) -> Result<NetView, rtnetlink::Error> {
    let nets = dump_addresses(handle).await?;
    let gateways = dump_gateways(handle).await?;
    let mut copied = Vec::new();
    for net in &nets {
        // A failed lookup counts as not copied: the subnet stays ignored.
        copied.push(matches!(
            host.egress(net.addr()).await,
            Ok(Egress::HostAddress(_))
        ));
    }
    Ok(view_of(base, &nets, &copied, &gateways))
}

/// The view from the container's interface addresses (`copied[i]`: the
/// host owns `nets[i]`'s address too) and gateways.
fn view_of(base: &IgnoreList, nets: &[IpNet], copied: &[bool], gateways: &[IpAddr]) -> NetView {
    let mut ignore = base.clone();
    ignore.extend(
        nets.iter()
            .zip(copied)
            .filter(|(_, copied)| !**copied)
            .map(|(n, _)| n.trunc()),
    );
    ignore.extend(gateways.iter().map(|g| IpNet::from(*g)));
    NetView {
        ignore,
        addresses: nets.iter().map(|n| n.addr()).collect(),
    }
}

async fn dump_addresses(handle: &rtnetlink::Handle) -> Result<Vec<IpNet>, rtnetlink::Error> {
    let mut stream = handle.address().get().execute();
    let mut nets = Vec::new();
    while let Some(msg) = stream.next().await {
        nets.extend(subnet_of(&msg?));
    }
    Ok(nets)
}

/// Every gateway of the container's routes, both families.
async fn dump_gateways(handle: &rtnetlink::Handle) -> Result<Vec<IpAddr>, rtnetlink::Error> {
    let mut gateways = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut msg = RouteMessage::default();
        msg.header.address_family = family;
        let mut stream = handle.route().get(msg).execute();
        while let Some(route) = stream.next().await {
            for a in &route?.attributes {
                if let RouteAttribute::Gateway(gw) = a {
                    gateways.extend(ip_of(gw));
                }
            }
        }
    }
    Ok(gateways)
}

fn ip_of(addr: &RouteAddress) -> Option<IpAddr> {
    match addr {
        RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    }
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

    fn net(s: &str) -> IpNet {
        s.parse().expect("net")
    }

    #[test]
    fn a_subnet_copied_from_the_host_is_not_ignored_but_its_gateway_is() {
        let base = IgnoreList::default();
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        // slirp4netns: its own virtual subnet stays on the container path.
        let slirp = view_of(&base, &[net("10.0.2.100/24")], &[false], &[ip("10.0.2.2")]);
        assert!(slirp.ignore.is_ignored(ip("10.0.2.3")));
        // pasta: the host's LAN address and prefix, and its gateway.
        let pasta = view_of(
            &base,
            &[net("10.215.0.2/24"), net("fd7a:215::2/64")],
            &[true, true],
            &[ip("10.215.0.254"), ip("fe80::1")],
        );
        assert!(!pasta.ignore.is_ignored(ip("10.215.0.3")), "a LAN peer");
        assert!(!pasta.ignore.is_ignored(ip("fd7a:215::3")));
        assert!(
            pasta.ignore.is_ignored(ip("10.215.0.254")),
            "the gateway pasta may map to the host"
        );
        assert_eq!(pasta.addresses, [ip("10.215.0.2"), ip("fd7a:215::2")]);
        assert!(pasta.is_self(ip("10.215.0.2")), "its own address stays its own");
    }
}
