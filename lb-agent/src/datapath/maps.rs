//! The three pinned maps behind typed aya handles, as a [`Datapath`].

use anyhow::{Context, Result};
use aya::maps::{HashMap, Map, MapData};
use lb_common::{Backend, BackendKey, RevNat, RevNatKey, ServiceKey, ServiceValue, map_names};

use super::pins::PinPaths;
use crate::sync::{Datapath, MapState, Op};

pub struct BpfMaps {
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    backends: HashMap<MapData, BackendKey, Backend>,
    rev_nat: HashMap<MapData, RevNatKey, RevNat>,
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
        })
    }
}

impl Datapath for BpfMaps {
    fn apply(&mut self, op: &Op) -> Result<()> {
        match op {
            Op::PutBackend(id, b) => self.backends.insert(BackendKey { id: *id }, b, 0),
            Op::PutRevNat(id, r) => self.rev_nat.insert(RevNatKey { id: *id }, r, 0),
            Op::PutService(k, v) => self.services.insert(k, v, 0),
            Op::DelService(k) => self.services.remove(k),
            Op::DelRevNat(id) => self.rev_nat.remove(&RevNatKey { id: *id }),
            Op::DelBackend(id) => self.backends.remove(&BackendKey { id: *id }),
        }
        .with_context(|| format!("{op:?}"))
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
        Ok(state)
    }
}
