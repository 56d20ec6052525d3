//! Which destinations keep the normal (container network) path.

use std::net::IpAddr;

use ipnet::IpNet;

/// Destinations that are never bypassed. Loopback and the unspecified address
/// (which Linux treats as "this host") are always in it: in a container they
/// mean the container itself, never the host. So are link-local addresses
/// (169.254.0.0/16, fe80::/10): they belong to one link, and user-mode
/// stacks answer some themselves (Podman's pasta: DNS at 169.254.1.1, the
/// host at 169.254.1.2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IgnoreList {
    nets: Vec<IpNet>,
}

impl IgnoreList {
    pub fn new(nets: impl IntoIterator<Item = IpNet>) -> Self {
        let mut list = Self::default();
        list.extend(nets);
        list
    }

    /// Adds networks, skipping ones already covered.
    pub fn extend(&mut self, nets: impl IntoIterator<Item = IpNet>) {
        for net in nets {
            let net = net.trunc();
            if !self.nets.iter().any(|n| n.contains(&net)) {
                self.nets.push(net);
            }
        }
    }

    pub fn nets(&self) -> &[IpNet] {
        &self.nets
    }

    /// True when a connection to `ip` must stay on the container's own path.
    pub fn is_ignored(&self, ip: IpAddr) -> bool {
        // ::ffff:127.0.0.1 on an AF_INET6 socket is IPv4 loopback.
        let ip = ip.to_canonical();
        if ip.is_loopback() || ip.is_unspecified() || is_link_local(ip) {
            return true;
        }
        self.nets.iter().any(|n| n.contains(&ip))
    }
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn net(s: &str) -> IpNet {
        s.parse().expect("test network")
    }

    #[test]
    fn loopback_unspecified_and_link_local_are_always_ignored() {
        let list = IgnoreList::default();
        for a in [
            "127.0.0.1",
            "127.3.2.1",
            "::1",
            "0.0.0.0",
            "::",
            "::ffff:127.0.0.1",
            "::ffff:0.0.0.0",
            "169.254.1.1",
            "::ffff:169.254.1.2",
            "fe80::1",
            "febf::1",
        ] {
            assert!(list.is_ignored(ip(a)), "{a}");
        }
        assert!(!list.is_ignored(ip("192.0.2.7")));
        assert!(!list.is_ignored(ip("2001:db8::1")));
    }

    #[test]
    fn configured_networks_are_ignored_in_both_families() {
        let list = IgnoreList::new([net("10.0.2.0/24"), net("fd00::/64")]);
        assert!(list.is_ignored(ip("10.0.2.2")));
        assert!(list.is_ignored(ip("::ffff:10.0.2.2")), "v4-mapped form");
        assert!(list.is_ignored(ip("fd00::2")));
        assert!(!list.is_ignored(ip("10.0.3.2")));
        assert!(!list.is_ignored(ip("fd00:0:0:1::2")));
    }

    #[test]
    fn extend_normalises_and_skips_covered_networks() {
        let mut list = IgnoreList::new([net("10.0.2.100/24")]);
        list.extend([net("10.0.2.0/25"), net("10.96.0.0/16")]);
        assert_eq!(list.nets(), &[net("10.0.2.0/24"), net("10.96.0.0/16")]);
    }
}
