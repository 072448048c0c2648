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
//! A reader between any two writes sees either the old or the new backend set, never an empty
//! one for a Service that has backends before and after (property-tested below).
//!
//! Ids are stable: a backend keeps its id while any frontend uses it, and a frontend keeps its
//! reverse-NAT id. New ids are never ones still present in the maps, so a slot that has not been
//! rewritten yet can never point at a reused id.

use std::collections::{BTreeMap, BTreeSet};

use lb_common::{Backend, RevNat, ServiceKey, ServiceValue, backend_state, service_flags};

use super::map_state::{MapState, Op, addr_to_map};
use crate::k8s::model::{BackendAddr, DesiredState, Frontend, FrontendKind};

/// How many entries each map holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    pub services: u32,
    pub backends: u32,
    pub rev_nat: u32,
    pub backends_per_service: u16,
}

impl Default for Capacity {
    fn default() -> Self {
        Self {
            services: lb_common::capacity::SERVICES,
            backends: lb_common::capacity::BACKENDS,
            rev_nat: lb_common::capacity::REV_NAT,
            backends_per_service: lb_common::capacity::MAX_BACKENDS_PER_SERVICE,
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
    let mut rev_nat_alloc = IdAllocator::new(current.rev_nat.keys().copied(), u16::MAX as u32);

    // Slot 0 of every frontend first, so that when the service map is short every frontend at
    // least exists (and rejects) rather than some frontends having all their backends and others
    // leaking to the VIP.
    let mut service_entries = 0u32;
    let mut placed = Vec::new();
    for (frontend, entry) in &desired.frontends {
        let rev = RevNat {
            addr: addr_to_map(frontend.addr),
            port: frontend.port,
            _pad: 0,
        };
        let rev_id = match rev_nat_ids.get(&rev) {
            Some(id) => Some(*id),
            None if (target.rev_nat.len() as u32) < cap.rev_nat => rev_nat_alloc.allocate(),
            None => None,
        };
        if service_entries >= cap.services || rev_id.is_none() {
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
            if service_entries >= cap.services {
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
                None => ((target.backends.len() as u32) < cap.backends)
                    .then(|| backend_alloc.allocate())
                    .flatten()
                    .inspect(|id| {
                        new_ids.insert(identity, *id);
                    }),
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
        }
        let flags = match entry.kind {
            FrontendKind::ClusterIp => service_flags::CLUSTER_IP,
        };
        target.services.insert(
            service_key(frontend, 0),
            ServiceValue {
                backend_id: 0,
                affinity_timeout: entry.affinity_timeout,
                count: slots.len() as u16,
                rev_nat_id: rev_id as u16,
                flags,
                _pad: 0,
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
    use crate::k8s::model::{FrontendEntry, Protocol};

    fn fe(last: u8) -> Frontend {
        Frontend {
            addr: IpAddr::from([10, 96, 0, last]),
            port: 80,
            proto: Protocol::Tcp,
            scope: 0,
        }
    }

    fn be(last: u8) -> BackendAddr {
        BackendAddr {
            addr: IpAddr::from([10, 244, 0, last]),
            port: 8080,
            proto: Protocol::Tcp,
        }
    }

    fn desired(services: &[(u8, &[u8])]) -> DesiredState {
        DesiredState {
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
}
