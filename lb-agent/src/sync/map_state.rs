//! The content of the three maps as plain ordered maps, and the operations that change it.
//! Both the real datapath and the in-memory fake apply [`Op`]s; [`MapState::apply`] is the
//! reference semantics.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use lb_common::{Backend, RevNat, ServiceKey, ServiceValue, v4_mapped, v4_unmapped};

/// Everything the service, backend, reverse-NAT, Maglev and source-range maps hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapState {
    pub services: BTreeMap<ServiceKey, ServiceValue>,
    pub backends: BTreeMap<u32, Backend>,
    pub rev_nat: BTreeMap<u32, RevNat>,
    /// Maglev tables in use, by table number (slot 0's `maglev_table` minus one).
    pub maglev: BTreeMap<u16, Vec<u32>>,
    /// `loadBalancerSourceRanges`: allowed source prefixes per reverse-NAT id.
    pub src_ranges: BTreeSet<SrcRange>,
}

/// One allowed source prefix of a frontend (by reverse-NAT id): the first `bits` bits of the
/// 16-byte address form (an IPv4 /n is 96 + n bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SrcRange {
    pub rev_nat_id: u16,
    pub addr: [u8; 16],
    pub bits: u8,
}

/// One map write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    PutBackend(u32, Backend),
    PutRevNat(u32, RevNat),
    PutService(ServiceKey, ServiceValue),
    DelService(ServiceKey),
    DelRevNat(u32),
    DelBackend(u32),
    /// Entries (index, backend id) that change in one Maglev table (number, size).
    PutMaglev(u16, u32, Vec<(u32, u32)>),
    PutSrcRange(SrcRange),
    DelSrcRange(SrcRange),
}

impl MapState {
    pub fn apply(&mut self, op: &Op) {
        match op {
            Op::PutBackend(id, b) => {
                self.backends.insert(*id, *b);
            }
            Op::PutRevNat(id, r) => {
                self.rev_nat.insert(*id, *r);
            }
            Op::PutService(k, v) => {
                self.services.insert(*k, *v);
            }
            Op::DelService(k) => {
                self.services.remove(k);
            }
            Op::DelRevNat(id) => {
                self.rev_nat.remove(id);
            }
            Op::DelBackend(id) => {
                self.backends.remove(id);
            }
            Op::PutMaglev(table, _, entries) => {
                let t = self.maglev.entry(*table).or_default();
                for &(i, id) in entries {
                    let i = i as usize;
                    if t.len() <= i {
                        t.resize(i + 1, 0);
                    }
                    t[i] = id;
                }
            }
            Op::PutSrcRange(r) => {
                self.src_ranges.insert(*r);
            }
            Op::DelSrcRange(r) => {
                self.src_ranges.remove(r);
            }
        }
    }

    /// Slot-0 entries: one per frontend.
    pub fn frontends(&self) -> impl Iterator<Item = (&ServiceKey, &ServiceValue)> {
        self.services.iter().filter(|(k, _)| k.slot == 0)
    }

    /// Backend ids in slots 1..=count of a frontend, in slot order (None where a slot is missing).
    pub fn slots_of(&self, frontend: &ServiceKey) -> Vec<Option<u32>> {
        let count = self
            .services
            .get(&frontend.with_slot(0))
            .map_or(0, |v| v.count);
        (1..=count)
            .map(|s| {
                self.services
                    .get(&frontend.with_slot(s))
                    .map(|v| v.backend_id)
            })
            .collect()
    }
}

/// The 16-byte map form of an address (IPv4 mapped).
pub fn addr_to_map(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(a) => v4_mapped(a.octets()),
        IpAddr::V6(a) => a.octets(),
    }
}

/// The address a 16-byte map form stands for.
pub fn addr_from_map(bytes: &[u8; 16]) -> IpAddr {
    match v4_unmapped(bytes) {
        Some(v4) => IpAddr::from(v4),
        None => IpAddr::from(*bytes),
    }
}
