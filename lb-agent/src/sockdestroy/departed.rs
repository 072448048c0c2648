//! Which backends left which frontends in one sync: the (backend, frontend) pairs whose
//! sockets are ended. A backend that leaves one frontend but stays in another is departed only
//! for the first: sockets are matched by the frontend they were translated through.

use std::collections::BTreeSet;

use lb_common::{Backend, SockTermKey};

use crate::sync::MapState;

/// Backends of the frontend at slot 0 `key` in `state`, by identity (address, port, protocol).
fn backends_of(state: &MapState, key: &lb_common::ServiceKey) -> BTreeSet<([u8; 16], u16, u8)> {
    state
        .slots_of(key)
        .into_iter()
        .flatten()
        .filter_map(|id| state.backends.get(&id))
        .map(|b: &Backend| (b.addr, b.port, b.proto))
        .collect()
}

/// Every backend that was in a frontend in `old` and is not in it in `new` (or whose frontend
/// is gone), keyed by the frontend's reverse-NAT id in `old`.
pub fn departed(old: &MapState, new: &MapState) -> BTreeSet<SockTermKey> {
    let mut out = BTreeSet::new();
    // Only the internal scope translates sockets; the external one (XDP) keeps its flows in
    // its own connection tracking.
    for (key, value) in old
        .frontends()
        .filter(|(k, _)| k.scope == lb_common::scope::INTERNAL)
    {
        let before = backends_of(old, key);
        if before.is_empty() {
            continue;
        }
        let after = if new.services.contains_key(key) {
            backends_of(new, key)
        } else {
            BTreeSet::new()
        };
        for (addr, port, proto) in before.difference(&after) {
            out.insert(SockTermKey {
                addr: *addr,
                port: *port,
                proto: *proto,
                _pad: 0,
                rev_nat_id: value.rev_nat_id,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::k8s::model::{
        BackendAddr, DesiredState, Frontend, FrontendEntry, FrontendKind, Protocol,
    };
    use crate::sync::{Capacity, plan::plan};

    fn state(current: &MapState, services: &[(u8, &[u8])]) -> MapState {
        let desired = DesiredState {
            health_checks: Default::default(),
            frontends: services
                .iter()
                .map(|(f, bs)| {
                    (
                        Frontend {
                            addr: IpAddr::from([10, 96, 0, *f]),
                            port: 53,
                            proto: Protocol::Udp,
                            scope: lb_common::scope::INTERNAL,
                        },
                        FrontendEntry {
                            service: format!("default/s{f}"),
                            port_name: String::new(),
                            kind: FrontendKind::ClusterIp,
                            backends: bs
                                .iter()
                                .map(|b| BackendAddr {
                                    remote: false,
                                    addr: IpAddr::from([10, 244, *b, 2]),
                                    port: 8080,
                                    proto: Protocol::Udp,
                                })
                                .collect(),
                            affinity_timeout: 0,
                            selection: Default::default(),
                            source_ranges: Vec::new(),
                        },
                    )
                })
                .collect(),
        };
        plan(current, &desired, &Capacity::default()).target
    }

    fn pods(keys: &BTreeSet<SockTermKey>) -> Vec<(u8, u16)> {
        keys.iter().map(|k| (k.addr[14], k.rev_nat_id)).collect()
    }

    #[test]
    fn a_removed_backend_departs_only_from_the_frontend_it_left() {
        let a = state(&MapState::default(), &[(10, &[1, 2]), (11, &[1])]);
        let b = state(&a, &[(10, &[2]), (11, &[1])]);
        let rev10 = a.frontends().next().unwrap().1.rev_nat_id;
        assert_eq!(pods(&departed(&a, &b)), vec![(1, rev10)]);
        let k = departed(&a, &b).into_iter().next().unwrap();
        assert_eq!((k.port, k.proto), (8080, lb_common::proto::UDP));
    }

    #[test]
    fn a_removed_frontend_departs_all_its_backends_and_nothing_else_changes() {
        let a = state(&MapState::default(), &[(10, &[1, 2]), (11, &[3])]);
        let b = state(&a, &[(11, &[3])]);
        let got = pods(&departed(&a, &b));
        assert_eq!(got.iter().map(|p| p.0).collect::<Vec<_>>(), vec![1, 2]);
        assert!(departed(&b, &b).is_empty());
        // Added backends depart nothing.
        let c = state(&b, &[(11, &[3, 4])]);
        assert!(departed(&b, &c).is_empty());
    }
}
