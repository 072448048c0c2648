//! The pinned maps the agent writes, behind typed aya handles, as a [`Datapath`].

use anyhow::{Context, Result};
use aya::maps::lpm_trie::{Key as LpmKey, LpmTrie};
use aya::maps::{Array, HashMap, IterableMap, Map, MapData, PerCpuHashMap};
use lb_common::{
    Backend, BackendKey, ConnStats, RevNat, RevNatKey, ServiceKey, ServiceValue, SrcRangeKey,
    map_names,
};

use super::pins::PinPaths;
use crate::sync::map_state::SrcRange;
use crate::sync::{Datapath, MapState, Op};

pub struct BpfMaps {
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    backends: HashMap<MapData, BackendKey, Backend>,
    rev_nat: HashMap<MapData, RevNatKey, RevNat>,
    maglev: Array<MapData, u32>,
    src_ranges: LpmTrie<MapData, SrcRangeKey, u8>,
    /// Per-frontend connection counters; None for pins made before they existed.
    conn_stats: Option<PerCpuHashMap<MapData, u32, ConnStats>>,
}

fn lpm_key(r: &SrcRange) -> LpmKey<SrcRangeKey> {
    LpmKey::new(
        SrcRangeKey::prefix_len(u32::from(r.bits)),
        SrcRangeKey::new(r.rev_nat_id, r.addr),
    )
}

/// max_entries of the agent-written maps, as the kernel has them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    pub services: u32,
    pub backends: u32,
    pub rev_nat: u32,
}

fn typed<K: aya::Pod, V: aya::Pod>(map: Map, name: &str) -> Result<HashMap<MapData, K, V>> {
    HashMap::try_from(map)
        .with_context(|| format!("map {name} is not a hash map of the expected layout"))
}

impl BpfMaps {
    /// Takes the maps out of a loaded object.
    pub fn from_ebpf(ebpf: &mut aya::Ebpf) -> Result<Self> {
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .with_context(|| format!("the eBPF object has no map {name}"))
        };
        Ok(Self {
            services: typed(take(map_names::SERVICES)?, map_names::SERVICES)?,
            backends: typed(take(map_names::BACKENDS)?, map_names::BACKENDS)?,
            rev_nat: typed(take(map_names::REV_NAT)?, map_names::REV_NAT)?,
            maglev: Array::try_from(take(map_names::MAGLEV)?).context("LB_MAGLEV")?,
            src_ranges: LpmTrie::try_from(take(map_names::SRC_RANGES)?).context("LB_SRC_RANGES")?,
            conn_stats: Some(
                PerCpuHashMap::try_from(take(map_names::CONN_STATS)?)
                    .context("map LB_CONN_STATS is not a per-CPU hash map")?,
            ),
        })
    }

    /// Opens the maps a (possibly stopped) agent pinned.
    pub fn open_pinned(pins: &PinPaths) -> Result<Self> {
        let open = |name: &str| -> Result<Map> {
            let path = pins.map(name);
            let data = MapData::from_pin(&path)
                .with_context(|| format!("opening pinned map {}", path.display()))?;
            Map::from_map_data(data).with_context(|| format!("reading map {}", path.display()))
        };
        Ok(Self {
            services: typed(open(map_names::SERVICES)?, map_names::SERVICES)?,
            backends: typed(open(map_names::BACKENDS)?, map_names::BACKENDS)?,
            rev_nat: typed(open(map_names::REV_NAT)?, map_names::REV_NAT)?,
            maglev: Array::try_from(open(map_names::MAGLEV)?).context("LB_MAGLEV")?,
            src_ranges: LpmTrie::try_from(open(map_names::SRC_RANGES)?).context("LB_SRC_RANGES")?,
            conn_stats: open(map_names::CONN_STATS)
                .ok()
                .and_then(|m| PerCpuHashMap::try_from(m).ok()),
        })
    }

    /// The maps' max_entries as created (an adopted pinned map keeps the size it was made with).
    pub fn sizes(&self) -> Result<MapSizes> {
        let max = |m: &MapData, name: &str| -> Result<u32> {
            Ok(m.info()
                .with_context(|| format!("reading the info of {name}"))?
                .max_entries())
        };
        Ok(MapSizes {
            services: max(self.services.map(), map_names::SERVICES)?,
            backends: max(self.backends.map(), map_names::BACKENDS)?,
            rev_nat: max(self.rev_nat.map(), map_names::REV_NAT)?,
        })
    }

    /// Forgets the connection counters of a reverse-NAT id that now stands for another
    /// frontend, or for none (best effort: counters are not worth failing a sync for).
    fn reset_conn_stats(&mut self, id: u32) {
        if let Some(m) = &mut self.conn_stats {
            let _ = m.remove(&id);
        }
    }
}

impl Datapath for BpfMaps {
    fn apply(&mut self, op: &Op) -> Result<()> {
        match op {
            Op::PutBackend(id, b) => self.backends.insert(BackendKey { id: *id }, b, 0),
            Op::PutRevNat(id, r) => {
                self.reset_conn_stats(*id);
                self.rev_nat.insert(RevNatKey { id: *id }, r, 0)
            }
            Op::PutService(k, v) => self.services.insert(k, v, 0),
            Op::DelService(k) => self.services.remove(k),
            Op::DelRevNat(id) => {
                self.reset_conn_stats(*id);
                self.rev_nat.remove(&RevNatKey { id: *id })
            }
            Op::DelBackend(id) => self.backends.remove(&BackendKey { id: *id }),
            Op::PutMaglev(table, size, entries) => {
                let base = u32::from(*table) * size;
                entries
                    .iter()
                    .try_for_each(|&(i, id)| self.maglev.set(base + i, id, 0))
            }
            Op::PutSrcRange(r) => self.src_ranges.insert(&lpm_key(r), 1, 0),
            Op::DelSrcRange(r) => self.src_ranges.remove(&lpm_key(r)),
        }
        .with_context(|| match op {
            Op::PutMaglev(t, _, e) => format!("writing {} entries of Maglev table {t}", e.len()),
            op => format!("{op:?}"),
        })
    }

    fn read(&self) -> Result<MapState> {
        let mut state = MapState::default();
        for kv in self.services.iter() {
            let (k, v) = kv.context("iterating LB_SERVICES")?;
            state.services.insert(k, v);
        }
        for kv in self.backends.iter() {
            let (k, v) = kv.context("iterating LB_BACKENDS")?;
            state.backends.insert(k.id, v);
        }
        for kv in self.rev_nat.iter() {
            let (k, v) = kv.context("iterating LB_REV_NAT")?;
            state.rev_nat.insert(k.id, v);
        }
        let tables: Vec<(u16, u32)> = state
            .frontends()
            .filter(|(_, v)| v.maglev_table != 0 && v.maglev_size != 0)
            .map(|(_, v)| (v.maglev_table - 1, v.maglev_size))
            .collect();
        for (table, size) in tables {
            let base = u32::from(table) * size;
            let entries = (0..size)
                .map(|i| self.maglev.get(&(base + i), 0))
                .collect::<Result<Vec<u32>, _>>()
                .with_context(|| format!("reading Maglev table {table}"))?;
            state.maglev.insert(table, entries);
        }
        for kv in self.src_ranges.iter() {
            let (k, _) = kv.context("iterating LB_SRC_RANGES")?;
            let data = k.data();
            state.src_ranges.insert(SrcRange {
                rev_nat_id: u16::from_be_bytes(data.rev_nat_id),
                addr: data.addr,
                bits: k.prefix_len().saturating_sub(32) as u8,
            });
        }
        Ok(state)
    }
}
