//! From the maps' current content and the desired state to an ordered list of map writes.
//!
//! The order is what keeps live traffic safe while a Service changes (as in Cilium's
//! `lb.h` design): the kernel reads slot 0 for the count, then one slot, then one backend, so
//! 1. new and changed backends are written first (nothing points at them yet),
//! 2. then reverse-NAT entries,
//! 3. then backend slots 1..n (the old count still covers only valid slots),
//! 4. then slot 0 with the new count,
//! 5. then slot 0 of removed frontends is deleted,
//! 6. then slots beyond the new count,
//! 7. then unused reverse-NAT entries,
//! 8. and last the backends no slot points at any more.
//!
//! External-scope frontends (read by XDP) also get a Maglev table, written (only the entries
//! that change) right after the backends and before any slot 0 points at it, and their
//! `loadBalancerSourceRanges`, added before slot 0 turns the check on and removed after.
//! Tables are rewritten in place: every entry names a live backend at every moment, and
//! established flows keep their backend through the XDP connection tracking.
//!
//! A reader between any two writes sees either the old or the new backend set, never an empty
//! one for a Service that has backends before and after (property-tested below).
//!
//! Ids are stable: a backend keeps its id while any frontend uses it, and a frontend keeps its
//! reverse-NAT id. New ids are never ones still present in the maps, so a slot that has not been
//! rewritten yet can never point at a reused id.
//!
//! Because writes add before they remove, a map briefly holds its current entries plus the
//! new ones. The plan counts that peak against each map's size: a new entry that fits the end
//! state but not the peak is left for a second pass ([`Plan::deferred`]), which the syncer
//! runs at once, after this pass's deletions made room. So a full map is never written into
//! (the kernel would refuse the insert and a slot would name a missing backend). The price,
//! only when the maps are full of live entries: a frontend whose every backend is replaced
//! in one change rejects between the two passes.

use std::collections::{BTreeMap, BTreeSet};

use lb_common::{Backend, RevNat, ServiceKey, ServiceValue, backend_state};

use super::maglev;
use super::map_state::{MapState, Op, SrcRange, addr_to_map};
use crate::k8s::model::{BackendAddr, DesiredState, Frontend};

/// How many entries each map holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    pub services: u32,
    pub backends: u32,
    pub rev_nat: u32,
    pub backends_per_service: u16,
    /// Entries of one Maglev table (prime).
    pub maglev_size: u32,
    /// Maglev tables `LB_MAGLEV` holds.
    pub maglev_tables: u32,
}

impl Default for Capacity {
    fn default() -> Self {
        Self {
            services: lb_common::capacity::SERVICES,
            backends: lb_common::capacity::BACKENDS,
            rev_nat: lb_common::capacity::REV_NAT,
            backends_per_service: lb_common::capacity::MAX_BACKENDS_PER_SERVICE,
            maglev_size: lb_common::capacity::MAGLEV_TABLE_SIZE,
            maglev_tables: lb_common::capacity::MAGLEV_TABLES,
        }
    }
}

/// Something the plan could not fit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Overflow {
    pub frontend: Frontend,
    pub service: String,
    /// Stable label for metrics.
    pub reason: &'static str,
    pub detail: String,
}

#[derive(Debug, Default)]
pub struct Plan {
    pub target: MapState,
    pub ops: Vec<Op>,
    pub overflows: Vec<Overflow>,
    /// Some new entries were left out only because the maps still hold entries this plan
    /// removes (writes add before they remove, so a map briefly holds both): planning again
    /// after these writes places them.
    pub deferred: bool,
}

/// Whether a map has room for one more entry during a sync that fills it to `target` entries
/// while it briefly holds `peak` (its current entries plus the new keys written so far).
fn room(target: usize, peak: usize, cap: u32, new_key: bool) -> Room {
    if target >= cap as usize {
        Room::Full
    } else if new_key && peak >= cap as usize {
        Room::AfterThisSync
    } else {
        Room::Yes
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Room {
    Yes,
    /// Only once the stale entries this sync removes are gone.
    AfterThisSync,
    Full,
}

pub fn service_key(f: &Frontend, slot: u16) -> ServiceKey {
    ServiceKey::new(addr_to_map(f.addr), f.port, f.proto.number(), f.scope, slot)
}

fn backend_value(b: &BackendAddr) -> Backend {
    Backend {
        addr: addr_to_map(b.addr),
        port: b.port,
        proto: b.proto.number(),
        state: backend_state::ACTIVE,
        flags: if b.remote {
            lb_common::backend_flags::REMOTE
        } else {
            0
        },
        _pad: 0,
    }
}

/// Backend identity: what a backend is regardless of its state.
fn backend_identity(b: &Backend) -> ([u8; 16], u16, u8) {
    (b.addr, b.port, b.proto)
}

/// Hands out the lowest ids not in use and not still present in the maps.
struct IdAllocator {
    taken: BTreeSet<u32>,
    next: u32,
    max: u32,
}

impl IdAllocator {
    fn new(taken: impl IntoIterator<Item = u32>, max: u32) -> Self {
        Self {
            taken: taken.into_iter().collect(),
            next: 1,
            max,
        }
    }

    fn allocate(&mut self) -> Option<u32> {
        while self.next <= self.max {
            let id = self.next;
            self.next += 1;
            if self.taken.insert(id) {
                return Some(id);
            }
        }
        None
    }
}

pub fn plan(current: &MapState, desired: &DesiredState, cap: &Capacity) -> Plan {
    let mut target = MapState::default();
    let mut overflows = Vec::new();

    // Existing ids, by what they stand for.
    let backend_ids: BTreeMap<_, u32> = current
        .backends
        .iter()
        .map(|(id, b)| (backend_identity(b), *id))
        .collect();
    let rev_nat_ids: BTreeMap<RevNat, u32> =
        current.rev_nat.iter().map(|(id, r)| (*r, *id)).collect();
    let mut backend_alloc = IdAllocator::new(current.backends.keys().copied(), u32::MAX - 1);
    // Maglev tables: a frontend keeps its table; new ones take a number no slot 0 uses now.
    let tables_in_use: BTreeMap<ServiceKey, u16> = current
        .frontends()
        .filter(|(_, v)| v.maglev_table != 0)
        .map(|(k, v)| (*k, v.maglev_table - 1))
        .collect();
    let tables_freed_by_this_sync = tables_in_use
        .keys()
        .any(|k| !desired.frontends.keys().any(|f| service_key(f, 0) == *k));
    let mut table_alloc = IdAllocator::new(
        tables_in_use.values().map(|t| u32::from(*t) + 1),
        cap.maglev_tables.min(u32::from(u16::MAX)),
    );
    let mut rev_nat_alloc = IdAllocator::new(current.rev_nat.keys().copied(), u16::MAX as u32);

    // Slot 0 of every frontend first, so that when the service map is short every frontend at
    // least exists (and rejects) rather than some frontends having all their backends and others
    // leaking to the VIP.
    let mut service_entries = 0u32;
    // New keys written so far, for the peak size of each map during the sync.
    let (mut new_service_keys, mut new_backends, mut new_rev_nat) = (0usize, 0usize, 0usize);
    let mut deferred = false;
    let mut placed = Vec::new();
    // Frontends that share an address and port (TCP and UDP, the internal and external scope)
    // share one reverse-NAT entry.
    let mut assigned_rev: BTreeMap<RevNat, u32> = BTreeMap::new();
    for (frontend, entry) in &desired.frontends {
        let rev = RevNat {
            addr: addr_to_map(frontend.addr),
            port: frontend.port,
            _pad: 0,
        };
        let new_key0 = !current.services.contains_key(&service_key(frontend, 0));
        let service_room = room(
            service_entries as usize,
            current.services.len() + new_service_keys,
            cap.services,
            new_key0,
        );
        let rev_room = match assigned_rev.get(&rev).or_else(|| rev_nat_ids.get(&rev)) {
            Some(_) => Room::Yes,
            None => room(
                target.rev_nat.len(),
                current.rev_nat.len() + new_rev_nat,
                cap.rev_nat,
                true,
            ),
        };
        if service_room == Room::AfterThisSync && rev_room != Room::Full
            || rev_room == Room::AfterThisSync && service_room != Room::Full
        {
            deferred = true;
            continue;
        }
        let rev_id = match assigned_rev.get(&rev).or_else(|| rev_nat_ids.get(&rev)) {
            Some(id) => Some(*id),
            None if rev_room == Room::Yes => {
                new_rev_nat += 1;
                rev_nat_alloc.allocate()
            }
            None => None,
        };
        if let Some(id) = rev_id {
            assigned_rev.insert(rev, id);
        }
        if service_room == Room::Full || rev_id.is_none() {
            overflows.push(Overflow {
                frontend: *frontend,
                service: entry.service.clone(),
                reason: if rev_id.is_none() {
                    "rev_nat_full"
                } else {
                    "services_full"
                },
                detail: "frontend not programmed".into(),
            });
            continue;
        }
        let rev_id = rev_id.unwrap_or_default();
        target.rev_nat.insert(rev_id, rev);
        service_entries += 1;
        new_service_keys += usize::from(new_key0);
        placed.push((frontend, entry, rev_id));
    }

    // Ids given out by this plan, by what they stand for (an index, not a scan of the target:
    // a scan made a plan quadratic in the number of backends).
    let mut new_ids: BTreeMap<_, u32> = BTreeMap::new();
    for (frontend, entry, rev_id) in placed {
        let mut slots: Vec<u32> = Vec::new();
        for b in &entry.backends {
            if slots.len() >= cap.backends_per_service as usize {
                overflows.push(Overflow {
                    frontend: *frontend,
                    service: entry.service.clone(),
                    reason: "backends_per_service",
                    detail: format!(
                        "{} backends, only {} programmed",
                        entry.backends.len(),
                        cap.backends_per_service
                    ),
                });
                break;
            }
            let new_slot = !current
                .services
                .contains_key(&service_key(frontend, slots.len() as u16 + 1));
            let slot_room = room(
                service_entries as usize,
                current.services.len() + new_service_keys,
                cap.services,
                new_slot,
            );
            if slot_room == Room::AfterThisSync {
                deferred = true;
                break;
            }
            if slot_room == Room::Full {
                overflows.push(Overflow {
                    frontend: *frontend,
                    service: entry.service.clone(),
                    reason: "services_full",
                    detail: format!(
                        "service map full: {} of {} backends programmed",
                        slots.len(),
                        entry.backends.len()
                    ),
                });
                break;
            }
            let value = backend_value(b);
            let identity = backend_identity(&value);
            let id = match backend_ids
                .get(&identity)
                .or_else(|| new_ids.get(&identity))
            {
                Some(id) => Some(*id),
                None => match room(
                    target.backends.len(),
                    current.backends.len() + new_backends,
                    cap.backends,
                    true,
                ) {
                    Room::Yes => {
                        new_backends += 1;
                        let id = backend_alloc.allocate();
                        if let Some(id) = id {
                            new_ids.insert(identity, id);
                        }
                        id
                    }
                    Room::AfterThisSync => {
                        deferred = true;
                        continue;
                    }
                    Room::Full => None,
                },
            };
            let Some(id) = id else {
                overflows.push(Overflow {
                    frontend: *frontend,
                    service: entry.service.clone(),
                    reason: "backends_full",
                    detail: format!("backend map full: {b} not programmed"),
                });
                continue;
            };
            target.backends.insert(id, value);
            slots.push(id);
            service_entries += 1;
            new_service_keys += usize::from(new_slot);
        }
        let mut flags = entry.kind.flag() | entry.selection.flags();
        let key0 = service_key(frontend, 0);
        let mut maglev_table = 0;
        if frontend.scope == lb_common::scope::EXTERNAL && !slots.is_empty() {
            // Ids allocated by the allocator are 1-based table numbers plus one.
            let number = tables_in_use
                .get(&key0)
                .map(|t| u32::from(*t) + 1)
                .or_else(|| table_alloc.allocate());
            match number {
                Some(n) => {
                    let members: Vec<(u32, Backend)> =
                        slots.iter().map(|id| (*id, target.backends[id])).collect();
                    let table = (n - 1) as u16;
                    target
                        .maglev
                        .insert(table, maglev::table(&members, cap.maglev_size));
                    maglev_table = table + 1;
                }
                // A table a removed frontend still holds is free after this sync's deletions:
                // the frontend gets it on the second pass (meanwhile, a random slot).
                None if tables_freed_by_this_sync => deferred = true,
                None => overflows.push(Overflow {
                    frontend: *frontend,
                    service: entry.service.clone(),
                    reason: "maglev_tables_full",
                    detail: "no Maglev table left: flows are spread at random (still tracked)"
                        .into(),
                }),
            }
        }
        if frontend.scope == lb_common::scope::EXTERNAL && !entry.source_ranges.is_empty() {
            flags |= lb_common::service_flags::SOURCE_RANGES;
            for c in &entry.source_ranges {
                let (addr, bits) = c.map_form();
                target.src_ranges.insert(SrcRange {
                    rev_nat_id: rev_id as u16,
                    addr,
                    bits,
                });
            }
        }
        target.services.insert(
            key0,
            ServiceValue {
                backend_id: 0,
                affinity_timeout: entry.affinity_timeout,
                count: slots.len() as u16,
                rev_nat_id: rev_id as u16,
                flags,
                maglev_table,
                maglev_size: if maglev_table == 0 {
                    0
                } else {
                    cap.maglev_size
                },
            },
        );
        for (i, id) in slots.into_iter().enumerate() {
            target.services.insert(
                service_key(frontend, i as u16 + 1),
                ServiceValue {
                    backend_id: id,
                    ..Default::default()
                },
            );
        }
    }

    let ops = ordered_ops(current, &target);
    Plan {
        target,
        ops,
        overflows,
        deferred,
    }
}

/// The writes that turn `current` into `target`, in the safe order described above.
pub fn ordered_ops(current: &MapState, target: &MapState) -> Vec<Op> {
    let mut ops = Vec::new();
    for (id, b) in &target.backends {
        if current.backends.get(id) != Some(b) {
            ops.push(Op::PutBackend(*id, *b));
        }
    }
    for (id, r) in &target.rev_nat {
        if current.rev_nat.get(id) != Some(r) {
            ops.push(Op::PutRevNat(*id, *r));
        }
    }
    for (table, entries) in &target.maglev {
        let old = current.maglev.get(table);
        let changed: Vec<(u32, u32)> = entries
            .iter()
            .enumerate()
            .filter(|(i, id)| old.and_then(|o| o.get(*i)) != Some(*id))
            .map(|(i, id)| (i as u32, *id))
            .collect();
        if !changed.is_empty() {
            ops.push(Op::PutMaglev(*table, entries.len() as u32, changed));
        }
    }
    ops.extend(
        target
            .src_ranges
            .difference(&current.src_ranges)
            .map(|r| Op::PutSrcRange(*r)),
    );
    let changed = |k: &ServiceKey, v: &ServiceValue| current.services.get(k) != Some(v);
    for (k, v) in target.services.iter().filter(|(k, _)| k.slot != 0) {
        if changed(k, v) {
            ops.push(Op::PutService(*k, *v));
        }
    }
    for (k, v) in target.services.iter().filter(|(k, _)| k.slot == 0) {
        if changed(k, v) {
            ops.push(Op::PutService(*k, *v));
        }
    }
    let gone = |k: &&ServiceKey| !target.services.contains_key(k);
    ops.extend(
        current
            .services
            .keys()
            .filter(|k| k.slot == 0)
            .filter(gone)
            .map(|k| Op::DelService(*k)),
    );
    ops.extend(
        current
            .services
            .keys()
            .filter(|k| k.slot != 0)
            .filter(gone)
            .map(|k| Op::DelService(*k)),
    );
    ops.extend(
        current
            .src_ranges
            .difference(&target.src_ranges)
            .map(|r| Op::DelSrcRange(*r)),
    );
    ops.extend(
        current
            .rev_nat
            .keys()
            .filter(|id| !target.rev_nat.contains_key(id))
            .map(|id| Op::DelRevNat(*id)),
    );
    ops.extend(
        current
            .backends
            .keys()
            .filter(|id| !target.backends.contains_key(id))
            .map(|id| Op::DelBackend(*id)),
    );
    ops
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use proptest::prelude::*;

    use super::*;
    use crate::k8s::model::{FrontendEntry, FrontendKind, Protocol};

    fn fe(last: u8) -> Frontend {
        Frontend {
            addr: IpAddr::from([10, 96, 0, last]),
            port: 80,
            proto: Protocol::Tcp,
            scope: lb_common::scope::INTERNAL,
        }
    }

    fn be(last: u8) -> BackendAddr {
        BackendAddr {
            remote: false,
            addr: IpAddr::from([10, 244, 0, last]),
            port: 8080,
            proto: Protocol::Tcp,
        }
    }

    fn desired(services: &[(u8, &[u8])]) -> DesiredState {
        DesiredState {
            health_checks: Default::default(),
            frontends: services
                .iter()
                .map(|(f, bs)| {
                    (
                        fe(*f),
                        FrontendEntry {
                            service: format!("default/s{f}"),
                            port_name: String::new(),
                            kind: FrontendKind::ClusterIp,
                            backends: bs.iter().map(|b| be(*b)).collect(),
                            affinity_timeout: 0,
                            selection: Default::default(),
                            source_ranges: Vec::new(),
                        },
                    )
                })
                .collect(),
        }
    }

    fn apply_all(state: &mut MapState, ops: &[Op]) {
        for op in ops {
            state.apply(op);
        }
    }

    /// Every frontend in slot 0 has all its slots, each naming an existing backend.
    fn consistent(state: &MapState) -> Result<(), String> {
        for (k, _) in state.frontends() {
            for (i, slot) in state.slots_of(k).into_iter().enumerate() {
                let id = slot.ok_or_else(|| format!("slot {} missing", i + 1))?;
                if !state.backends.contains_key(&id) {
                    return Err(format!("slot {} names missing backend {id}", i + 1));
                }
            }
        }
        for (k, v) in state.frontends() {
            if !state.rev_nat.contains_key(&(v.rev_nat_id as u32)) {
                return Err(format!("{k:?} names missing rev nat {}", v.rev_nat_id));
            }
            if v.maglev_table != 0 {
                let table = state
                    .maglev
                    .get(&(v.maglev_table - 1))
                    .ok_or_else(|| format!("{k:?} names missing Maglev table"))?;
                if table.len() != v.maglev_size as usize {
                    return Err(format!("{k:?}: Maglev table of {} entries", table.len()));
                }
                if let Some(id) = table.iter().find(|id| !state.backends.contains_key(id)) {
                    return Err(format!("{k:?}: Maglev entry names missing backend {id}"));
                }
            }
            if v.flags & lb_common::service_flags::SOURCE_RANGES != 0
                && !state
                    .src_ranges
                    .iter()
                    .any(|r| r.rev_nat_id == v.rev_nat_id)
            {
                return Err(format!("{k:?}: source ranges on, none in the map"));
            }
        }
        Ok(())
    }

    #[test]
    fn fresh_plan_programs_everything_and_is_idempotent() {
        let d = desired(&[(10, &[1, 2, 3]), (11, &[])]);
        let mut state = MapState::default();
        let p = plan(&state, &d, &Capacity::default());
        apply_all(&mut state, &p.ops);
        assert_eq!(state, p.target);
        consistent(&state).unwrap();
        assert_eq!(state.backends.len(), 3);
        assert_eq!(state.services.len(), 3 + 1 + 1);
        assert_eq!(state.services[&service_key(&fe(11), 0)].count, 0);
        assert!(plan(&state, &d, &Capacity::default()).ops.is_empty());
    }

    #[test]
    fn shared_backends_get_one_id_and_ids_survive_changes() {
        let mut state = MapState::default();
        let p = plan(
            &state,
            &desired(&[(10, &[1, 2]), (11, &[2])]),
            &Capacity::default(),
        );
        apply_all(&mut state, &p.ops);
        assert_eq!(state.backends.len(), 2);
        let id_of_2 = *state
            .backends
            .iter()
            .find(|(_, b)| b.addr[15] == 2)
            .unwrap()
            .0;
        let p = plan(&state, &desired(&[(11, &[2, 3])]), &Capacity::default());
        apply_all(&mut state, &p.ops);
        assert_eq!(state.backends[&id_of_2].addr[15], 2);
        assert!(
            !p.ops
                .contains(&Op::PutBackend(id_of_2, state.backends[&id_of_2]))
        );
    }

    #[test]
    fn new_ids_never_reuse_ids_still_in_the_maps() {
        let mut state = MapState::default();
        let ops = plan(&state, &desired(&[(10, &[1])]), &Capacity::default()).ops;
        apply_all(&mut state, &ops);
        let old: BTreeSet<u32> = state.backends.keys().copied().collect();
        let p = plan(&state, &desired(&[(10, &[9])]), &Capacity::default());
        let new: BTreeSet<u32> = p.target.backends.keys().copied().collect();
        assert!(old.is_disjoint(&new));
    }

    #[test]
    fn capacity_overflow_is_reported_not_fatal() {
        let cap = Capacity {
            services: 4,
            backends: 2,
            rev_nat: 10,
            backends_per_service: 10,
            ..Capacity::default()
        };
        let p = plan(
            &MapState::default(),
            &desired(&[(10, &[1, 2, 3]), (11, &[4])]),
            &cap,
        );
        consistent(&p.target).unwrap();
        // Both frontends exist; the second frontend still exists even if empty.
        assert!(p.target.services.contains_key(&service_key(&fe(10), 0)));
        assert!(p.target.services.contains_key(&service_key(&fe(11), 0)));
        assert!(p.target.services.len() <= 4);
        assert!(p.target.backends.len() <= 2);
        assert!(!p.overflows.is_empty());
    }

    #[test]
    fn per_service_backend_limit_is_reported() {
        let cap = Capacity {
            backends_per_service: 2,
            ..Capacity::default()
        };
        let p = plan(&MapState::default(), &desired(&[(10, &[1, 2, 3])]), &cap);
        assert_eq!(p.target.services[&service_key(&fe(10), 0)].count, 2);
        assert_eq!(p.overflows[0].reason, "backends_per_service");
    }

    fn arb_desired() -> impl Strategy<Value = Vec<(u8, Vec<u8>)>> {
        proptest::collection::vec((0u8..6, proptest::collection::vec(0u8..12, 0..6)), 0..6)
    }

    fn to_desired(v: &[(u8, Vec<u8>)]) -> DesiredState {
        let refs: Vec<(u8, &[u8])> = v.iter().map(|(f, b)| (*f, b.as_slice())).collect();
        desired(&refs)
    }

    proptest! {
        /// After every single write of any transition the maps are consistent, and a frontend
        /// that has backends before and after never has zero in between.
        #[test]
        fn every_intermediate_state_is_safe(a in arb_desired(), b in arb_desired()) {
            let cap = Capacity::default();
            let mut state = MapState::default();
            let ops = plan(&state, &to_desired(&a), &cap).ops;
            apply_all(&mut state, &ops);
            let before = state.clone();
            let p = plan(&state, &to_desired(&b), &cap);
            let live_throughout: Vec<ServiceKey> = p.target.frontends()
                .filter(|(k, v)| v.count > 0 && before.services.get(k).is_some_and(|o| o.count > 0))
                .map(|(k, _)| *k)
                .collect();
            for op in &p.ops {
                state.apply(op);
                prop_assert!(consistent(&state).is_ok(), "{:?} after {:?}", consistent(&state), op);
                for k in &live_throughout {
                    let count = state.services.get(k).map_or(0, |v| v.count);
                    prop_assert!(count > 0, "{:?} went empty after {:?}", k, op);
                }
            }
            prop_assert_eq!(&state, &p.target);
            prop_assert!(p.overflows.is_empty());
            // And the target holds exactly what was asked.
            let d = to_desired(&b);
            for (f, e) in &d.frontends {
                let slots = p.target.slots_of(&service_key(f, 0));
                let got: BTreeSet<_> = slots.iter().map(|id| p.target.backends[&id.unwrap()].addr).collect();
                let want: BTreeSet<_> = e.backends.iter().map(|b| addr_to_map(b.addr)).collect();
                prop_assert_eq!(got, want);
            }
        }
    }

    fn external(services: &[(u8, &[u8])], ranges: bool) -> DesiredState {
        let mut d = desired(services);
        d.frontends = d
            .frontends
            .into_iter()
            .map(|(mut f, mut e)| {
                f.scope = lb_common::scope::EXTERNAL;
                if ranges {
                    e.source_ranges = vec!["203.0.113.0/24".parse().unwrap()];
                }
                (f, e)
            })
            .collect();
        d
    }

    fn small_tables() -> Capacity {
        Capacity {
            maglev_size: 13,
            maglev_tables: 2,
            ..Capacity::default()
        }
    }

    #[test]
    fn external_frontends_get_stable_maglev_tables_written_by_difference() {
        let cap = small_tables();
        let mut state = MapState::default();
        let p = plan(&state, &external(&[(10, &[1, 2, 3])], false), &cap);
        apply_all(&mut state, &p.ops);
        consistent(&state).unwrap();
        let v = state.services[&{
            let mut f = fe(10);
            f.scope = lb_common::scope::EXTERNAL;
            service_key(&f, 0)
        }];
        assert_eq!((v.maglev_table, v.maglev_size), (1, 13));
        // A fourth backend: the same table, only the entries that change are written.
        let p = plan(&state, &external(&[(10, &[1, 2, 3, 4])], false), &cap);
        let writes: Vec<_> = p
            .ops
            .iter()
            .filter_map(|op| match op {
                Op::PutMaglev(t, size, e) => Some((*t, *size, e.len())),
                _ => None,
            })
            .collect();
        assert_eq!(writes.len(), 1);
        assert_eq!((writes[0].0, writes[0].1), (0, 13));
        assert!(writes[0].2 < 13, "only changed entries: {writes:?}");
        apply_all(&mut state, &p.ops);
        consistent(&state).unwrap();
        // Internal frontends never get one.
        let p = plan(&MapState::default(), &desired(&[(10, &[1])]), &cap);
        assert!(p.target.maglev.is_empty());
    }

    #[test]
    fn maglev_tables_running_out_is_an_overflow_not_an_error() {
        let p = plan(
            &MapState::default(),
            &external(&[(10, &[1]), (11, &[2]), (12, &[3])], false),
            &small_tables(),
        );
        assert_eq!(p.target.maglev.len(), 2);
        assert_eq!(
            p.overflows.iter().map(|o| o.reason).collect::<Vec<_>>(),
            ["maglev_tables_full"]
        );
        let mut state = MapState::default();
        apply_all(&mut state, &p.ops);
        consistent(&state).unwrap();
    }

    #[test]
    fn source_ranges_are_in_the_map_before_the_check_is_on_and_leave_after() {
        let cap = small_tables();
        let mut state = MapState::default();
        let on = plan(&state, &external(&[(10, &[1])], true), &cap);
        let put = on.ops.iter().position(|o| matches!(o, Op::PutSrcRange(_)));
        let slot0 = on
            .ops
            .iter()
            .position(|o| matches!(o, Op::PutService(k, _) if k.slot == 0));
        assert!(put.unwrap() < slot0.unwrap());
        apply_all(&mut state, &on.ops);
        consistent(&state).unwrap();
        assert_eq!(state.src_ranges.len(), 1);
        let off = plan(&state, &external(&[(10, &[1])], false), &cap);
        let del = off.ops.iter().position(|o| matches!(o, Op::DelSrcRange(_)));
        let slot0 = off
            .ops
            .iter()
            .position(|o| matches!(o, Op::PutService(k, _) if k.slot == 0));
        assert!(slot0.unwrap() < del.unwrap());
        apply_all(&mut state, &off.ops);
        assert!(state.src_ranges.is_empty());
    }

    proptest! {
        /// External frontends with Maglev tables and source ranges: every intermediate state
        /// of every change is consistent (tables name live backends, ranges are in place).
        #[test]
        fn every_intermediate_external_state_is_safe(a in arb_desired(), b in arb_desired(), ra: bool, rb: bool) {
            let cap = small_tables();
            let to_ext = |v: &[(u8, Vec<u8>)], r: bool| {
                let refs: Vec<(u8, &[u8])> = v.iter().map(|(f, b)| (*f, b.as_slice())).collect();
                external(&refs, r)
            };
            let mut state = MapState::default();
            let first = plan(&state, &to_ext(&a, ra), &cap);
            apply_all(&mut state, &first.ops);
            let p = plan(&state, &to_ext(&b, rb), &cap);
            for op in &p.ops {
                state.apply(op);
                prop_assert!(consistent(&state).is_ok(), "{:?} after {op:?}", consistent(&state));
            }
            // Tables a removed frontend still held are free only once it is gone: a full
            // table map converges on the second pass (`deferred`: the Syncer makes it at once).
            let second = plan(&state, &to_ext(&b, rb), &cap);
            for op in &second.ops {
                state.apply(op);
                prop_assert!(consistent(&state).is_ok(), "{:?} after {op:?}", consistent(&state));
            }
            prop_assert!(plan(&state, &to_ext(&b, rb), &cap).ops.is_empty());
        }
    }

    /// The in-memory maps with the kernel's rule that an insert into a full map fails, and a
    /// consistency check after every single write.
    struct Capped {
        state: MapState,
        cap: Capacity,
        violations: Vec<String>,
    }

    impl crate::sync::Datapath for Capped {
        fn apply(&mut self, op: &Op) -> anyhow::Result<()> {
            let full = match op {
                Op::PutBackend(id, _) => {
                    !self.state.backends.contains_key(id)
                        && self.state.backends.len() >= self.cap.backends as usize
                }
                Op::PutRevNat(id, _) => {
                    !self.state.rev_nat.contains_key(id)
                        && self.state.rev_nat.len() >= self.cap.rev_nat as usize
                }
                Op::PutService(k, _) => {
                    !self.state.services.contains_key(k)
                        && self.state.services.len() >= self.cap.services as usize
                }
                _ => false,
            };
            if full {
                anyhow::bail!("E2BIG");
            }
            self.state.apply(op);
            if let Err(e) = consistent(&self.state) {
                self.violations.push(format!("{e} after {op:?}"));
            }
            Ok(())
        }
        fn read(&self) -> anyhow::Result<MapState> {
            Ok(self.state.clone())
        }
    }

    fn needs(d: &DesiredState) -> (u32, u32, u32) {
        let services = d
            .frontends
            .values()
            .map(|e| 1 + e.backends.len())
            .sum::<usize>();
        (
            services as u32,
            d.backend_count() as u32,
            d.frontends.len() as u32,
        )
    }

    proptest! {
        /// With maps exactly as large as the larger of two states, going from one to the
        /// other never writes into a full map (new entries wait for a second pass when the
        /// maps still hold stale ones), every intermediate state is consistent, and the end
        /// state is the whole desired state.
        #[test]
        fn transitions_at_exact_capacity_never_overfill(a in arb_desired(), b in arb_desired()) {
            let (da, db) = (to_desired(&a), to_desired(&b));
            let (na, nb) = (needs(&da), needs(&db));
            let cap = Capacity {
                services: na.0.max(nb.0).max(1),
                backends: na.1.max(nb.1).max(1),
                rev_nat: na.2.max(nb.2).max(1),
                ..Capacity::default()
            };
            let mut s = crate::sync::Syncer::new(
                Capped { state: MapState::default(), cap, violations: Vec::new() },
                cap,
            );
            for d in [&da, &db] {
                let r = s.sync(d).unwrap();
                prop_assert_eq!(r.failed_writes, 0);
                prop_assert!(r.overflows.is_empty(), "{:?}", r.overflows);
                prop_assert!(!r.deferred);
                let state = &s.datapath().state;
                prop_assert!(s.datapath().violations.is_empty(), "{:?}", s.datapath().violations);
                prop_assert!(plan(state, d, &cap).ops.is_empty(), "not converged");
                for (f, e) in &d.frontends {
                    let got: BTreeSet<_> = state.slots_of(&service_key(f, 0)).iter()
                        .map(|id| state.backends[&id.unwrap()].addr).collect();
                    let want: BTreeSet<_> = e.backends.iter().map(|b| addr_to_map(b.addr)).collect();
                    prop_assert_eq!(got, want);
                }
            }
        }
    }
}
