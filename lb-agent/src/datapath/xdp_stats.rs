//! The XDP/TC packet counters (`LB_XDP_STATS`, per CPU) summed and exported as
//! `lb_xdp_packets_total{result}`. Read every second; counters only grow, so each read adds
//! the difference since the last one.

use anyhow::{Context, Result};
use aya::maps::{MapData, PerCpuArray, PerCpuValues};
use lb_common::{map_names, xdp_stat};

use crate::metrics::{Metrics, ResultLabel};

const NAMES: [(u32, &str); xdp_stat::COUNT as usize] = [
    (xdp_stat::PASSED, "passed"),
    (xdp_stat::FORWARDED, "forwarded"),
    (xdp_stat::DROPPED_SOURCE_RANGE, "dropped_source_range"),
    (xdp_stat::DROPPED_NO_BACKEND, "dropped_no_backend"),
    (xdp_stat::REPLIES, "replies"),
    (xdp_stat::FRAGMENTS, "fragments"),
    (xdp_stat::SNATED, "snated"),
    (xdp_stat::SNAT_REPLIES, "snat_replies"),
    (xdp_stat::DROPPED_SNAT, "dropped_snat"),
];

pub struct XdpStats {
    map: PerCpuArray<MapData, u64>,
    last: [u64; xdp_stat::COUNT as usize],
}

impl XdpStats {
    pub fn take(ebpf: &mut aya::Ebpf) -> Result<Self> {
        let map = ebpf
            .take_map(map_names::XDP_STATS)
            .context("the eBPF object has no LB_XDP_STATS")?;
        Ok(Self {
            map: PerCpuArray::try_from(map).context("LB_XDP_STATS is not a per-CPU array")?,
            last: [0; xdp_stat::COUNT as usize],
        })
    }

    /// Adds what the counters gained since the last call to the metrics.
    pub fn export(&mut self, metrics: &Metrics) -> Result<()> {
        for (i, name) in NAMES {
            let values: PerCpuValues<u64> = self
                .map
                .get(&i, 0)
                .with_context(|| format!("reading LB_XDP_STATS[{i}]"))?;
            let total: u64 = values.iter().sum();
            let delta = total.saturating_sub(self.last[i as usize]);
            self.last[i as usize] = total;
            metrics
                .xdp_packets
                .get_or_create(&ResultLabel { result: name })
                .inc_by(delta);
        }
        Ok(())
    }
}
