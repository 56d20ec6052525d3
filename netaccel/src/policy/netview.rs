//! A container's network as the daemon sees it (kept current by `ifaddrs`).

use std::net::IpAddr;

use super::ignore::IgnoreList;

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
}
