//! The addresses the XDP path SNATs flows to backends on other nodes to (`LB_SNAT_ADDRS`:
//! entry 0 IPv4, entry 1 IPv6). `--snat-ip` picks them; otherwise the node's first address of
//! each family (`--node-ip`, or the discovered ones). Rewritten when the node's addresses
//! change.

use std::net::IpAddr;

use anyhow::{Context, Result};
use aya::maps::{Array, MapData};
use lb_common::map_names;
use tracing::info;

use crate::sync::map_state::addr_to_map;

pub struct SnatAddrs {
    map: Array<MapData, [u8; 16]>,
    written: Option<[Option<IpAddr>; 2]>,
}

/// The SNAT address of each family: the first of `preferred`, else the first of `node_ips`.
pub fn choose(preferred: &[IpAddr], node_ips: &[IpAddr]) -> [Option<IpAddr>; 2] {
    let first = |v4: bool| {
        preferred
            .iter()
            .chain(node_ips)
            .find(|ip| ip.is_ipv4() == v4)
            .copied()
    };
    [first(true), first(false)]
}

impl SnatAddrs {
    pub fn take(ebpf: &mut aya::Ebpf) -> Result<Self> {
        let map = ebpf
            .take_map(map_names::SNAT_ADDRS)
            .context("the eBPF object has no LB_SNAT_ADDRS")?;
        Ok(Self {
            map: Array::try_from(map).context("LB_SNAT_ADDRS is not an array")?,
            written: None,
        })
    }

    /// Writes the addresses if they changed.
    pub fn write(&mut self, addrs: [Option<IpAddr>; 2]) -> Result<()> {
        if self.written == Some(addrs) {
            return Ok(());
        }
        for (i, a) in addrs.iter().enumerate() {
            let bytes = a.map(addr_to_map).unwrap_or([0; 16]);
            self.map
                .set(i as u32, bytes, 0)
                .with_context(|| format!("writing LB_SNAT_ADDRS[{i}]"))?;
        }
        info!(ipv4 = ?addrs[0], ipv6 = ?addrs[1], "SNAT addresses for backends on other nodes");
        self.written = Some(addrs);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn preferred_addresses_win_per_family() {
        let node = [ip("10.0.0.5"), ip("fd00::5"), ip("10.0.0.6")];
        assert_eq!(
            choose(&[], &node),
            [Some(ip("10.0.0.5")), Some(ip("fd00::5"))]
        );
        assert_eq!(
            choose(&[ip("10.9.9.9")], &node),
            [Some(ip("10.9.9.9")), Some(ip("fd00::5"))]
        );
        assert_eq!(choose(&[], &[ip("10.0.0.5")]), [Some(ip("10.0.0.5")), None]);
    }
}
