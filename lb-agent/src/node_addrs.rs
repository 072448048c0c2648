//! The node's own addresses, which NodePorts answer on: every address on an interface of the
//! agent's network namespace (the node's, for a hostNetwork DaemonSet), as kube-proxy's
//! iptables mode matches `--dst-type LOCAL`. Loopback and IPv6 link-local addresses are left
//! out (translation adds 127.0.0.1 itself); `--node-ip` replaces discovery.

use std::collections::BTreeSet;
use std::net::IpAddr;

use anyhow::{Context, Result};

/// Where NodePort addresses come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeAddrs {
    /// Given with `--node-ip`: never changes.
    Fixed(Vec<IpAddr>),
    /// Read from the interfaces, at start and then periodically.
    Discover,
}

impl NodeAddrs {
    pub fn from_flags(ips: Vec<IpAddr>) -> Self {
        if ips.is_empty() {
            NodeAddrs::Discover
        } else {
            NodeAddrs::Fixed(ips)
        }
    }

    /// The addresses now, sorted.
    pub fn current(&self) -> Result<Vec<IpAddr>> {
        match self {
            NodeAddrs::Fixed(ips) => {
                let set: BTreeSet<_> = ips.iter().copied().collect();
                Ok(set.into_iter().collect())
            }
            NodeAddrs::Discover => discover(),
        }
    }
}

/// Whether an interface address can be a node address for NodePorts.
pub fn usable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => !a.is_loopback() && !a.is_unspecified(),
        IpAddr::V6(a) => {
            !a.is_loopback() && !a.is_unspecified() && (a.segments()[0] & 0xffc0) != 0xfe80
        }
    }
}

/// Every usable address on the interfaces of this network namespace, sorted.
pub fn discover() -> Result<Vec<IpAddr>> {
    let addrs = nix::ifaddrs::getifaddrs().context("listing interface addresses")?;
    let mut set = BTreeSet::new();
    for ifa in addrs {
        let Some(a) = ifa.address else { continue };
        let ip = if let Some(v4) = a.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(v6) = a.as_sockaddr_in6() {
            IpAddr::V6(v6.ip())
        } else {
            continue;
        };
        if usable(ip) {
            set.insert(ip);
        }
    }
    Ok(set.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_link_local_are_not_node_addresses() {
        for bad in ["127.0.0.1", "::1", "fe80::1", "0.0.0.0", "::"] {
            assert!(!usable(bad.parse().unwrap()), "{bad}");
        }
        for good in ["10.0.0.5", "192.168.1.2", "2001:db8::5", "fd00::1"] {
            assert!(usable(good.parse().unwrap()), "{good}");
        }
    }

    #[test]
    fn fixed_addresses_are_sorted_and_deduplicated() {
        let a = NodeAddrs::from_flags(vec![
            "10.0.0.2".parse().unwrap(),
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
        ]);
        assert_eq!(
            a.current().unwrap(),
            vec![
                "10.0.0.1".parse::<IpAddr>().unwrap(),
                "10.0.0.2".parse().unwrap()
            ]
        );
        assert_eq!(NodeAddrs::from_flags(vec![]), NodeAddrs::Discover);
    }

    #[test]
    fn discovery_reads_this_namespace() {
        // Every namespace has lo; its address is never a node address, and discovery works.
        let found = discover().unwrap();
        assert!(found.iter().all(|ip| usable(*ip)));
    }
}
