//! The synthetic Service set every mode is loaded with: `count` ClusterIP Services, each with
//! `endpoints` endpoints. One of them, in the middle of the list (kube-proxy's iptables mode
//! walks KUBE-SERVICES in order, so the middle is its average case), is the Service the
//! client talks to; its endpoints are the bench "pod" and carry a TCP and a UDP port. The
//! other Services point at addresses that nothing ever connects to.

use std::net::Ipv4Addr;

/// Namespace of every generated Service.
pub const NAMESPACE: &str = "bench";
/// Service CIDR the VIPs come from.
pub const SERVICE_CIDR: &str = "10.96.0.0/12";
/// Pod CIDR (kube-proxy's --cluster-cidr): traffic from outside it is masqueraded.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// Port every Service listens on.
pub const SERVICE_PORT: u16 = 80;
/// Target port of the Services that are not the client's target.
pub const OTHER_TARGET_PORT: u16 = 8080;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn lower(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
    pub fn upper(self) -> &'static str {
        match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        }
    }
}

#[derive(Clone, Debug)]
pub struct SvcPort {
    pub name: &'static str,
    pub proto: Proto,
    pub port: u16,
    pub target_port: u16,
}

#[derive(Clone, Debug)]
pub struct Svc {
    pub name: String,
    pub vip: Ipv4Addr,
    pub ports: Vec<SvcPort>,
    pub endpoints: Vec<Ipv4Addr>,
}

/// Where the client's target Service sends its traffic (one mode's pod addresses and port).
#[derive(Clone, Debug)]
pub struct Target {
    pub backends: Vec<Ipv4Addr>,
    pub port: u16,
}

#[derive(Clone, Debug)]
pub struct ServiceSet {
    pub count: usize,
    pub endpoints: usize,
    pub target: Option<Target>,
}

fn add(base: Ipv4Addr, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base) + n)
}

impl ServiceSet {
    pub fn new(count: usize, endpoints: usize, target: Option<Target>) -> Self {
        Self {
            count: count.max(1),
            endpoints: endpoints.max(1),
            target,
        }
    }

    pub fn target_index(&self) -> usize {
        self.count / 2
    }

    pub fn vip(i: usize) -> Ipv4Addr {
        add(Ipv4Addr::new(10, 96, 0, 10), i as u32)
    }

    /// The target Service's ClusterIP for a set of `count` Services.
    pub fn target_vip(count: usize) -> Ipv4Addr {
        Self::vip(count.max(1) / 2)
    }

    /// A distinct address per (service, endpoint) in 10.128.0.0/10, never contacted.
    pub fn fake_endpoint(&self, i: usize, j: usize) -> Ipv4Addr {
        add(
            Ipv4Addr::new(10, 128, 0, 1),
            (i * self.endpoints + j) as u32,
        )
    }

    pub fn service(&self, i: usize) -> Svc {
        if i == self.target_index()
            && let Some(t) = &self.target
        {
            return Svc {
                name: "bench-target".into(),
                vip: Self::vip(i),
                ports: vec![
                    SvcPort {
                        name: "tcp",
                        proto: Proto::Tcp,
                        port: SERVICE_PORT,
                        target_port: t.port,
                    },
                    SvcPort {
                        name: "udp",
                        proto: Proto::Udp,
                        port: SERVICE_PORT,
                        target_port: t.port,
                    },
                ],
                endpoints: t.backends.clone(),
            };
        }
        Svc {
            name: format!("svc-{i}"),
            vip: Self::vip(i),
            ports: vec![SvcPort {
                name: "http",
                proto: Proto::Tcp,
                port: SERVICE_PORT,
                target_port: OTHER_TARGET_PORT,
            }],
            endpoints: (0..self.endpoints)
                .map(|j| self.fake_endpoint(i, j))
                .collect(),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = Svc> + '_ {
        (0..self.count).map(|i| self.service(i))
    }

    /// Total (service port, endpoint) pairs: what kube-proxy turns into KUBE-SEP chains.
    pub fn endpoint_count(&self) -> usize {
        self.iter().map(|s| s.ports.len() * s.endpoints.len()).sum()
    }
}

/// A short stable hash, spelled like kube-proxy's chain-name hashes (base32, upper case).
pub fn chain_hash(parts: &[&str]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut h2: u64 = 0x8422_2325_cbf2_9ce4;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0)) {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
            h2 = (h2 ^ b as u64)
                .wrapping_mul(0x0000_0100_0000_01b3)
                .rotate_left(5);
        }
    }
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut bits = (h as u128) << 64 | h2 as u128;
    (0..16)
        .map(|_| {
            let c = ALPHABET[(bits & 31) as usize] as char;
            bits >>= 5;
            c
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_sits_in_the_middle_with_tcp_and_udp() {
        let t = Target {
            backends: vec![Ipv4Addr::new(10, 244, 11, 2)],
            port: 8082,
        };
        let set = ServiceSet::new(1000, 2, Some(t));
        let s = set.service(500);
        assert_eq!(s.name, "bench-target");
        assert_eq!(s.vip, ServiceSet::target_vip(1000));
        assert_eq!(s.ports.len(), 2);
        assert_eq!(set.service(3).endpoints.len(), 2);
        assert_ne!(set.fake_endpoint(3, 1), set.fake_endpoint(4, 0));
        assert_eq!(set.endpoint_count(), 999 * 2 + 2);
    }

    #[test]
    fn chain_hashes_differ_and_look_like_kube_proxy() {
        let a = chain_hash(&["bench/svc-1:http", "tcp"]);
        let b = chain_hash(&["bench/svc-2:http", "tcp"]);
        assert_eq!(a.len(), 16);
        assert_ne!(a, b);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
        );
    }
}
