//! The translation decision, as a plain function over a [`Tables`] view of the maps, so it is
//! compiled into the eBPF programs and unit-tested on the host with the same code.

use crate::{Backend, ServiceKey, ServiceValue, backend_state};

/// Read access to the service and backend tables.
pub trait Tables {
    fn service(&self, key: &ServiceKey) -> Option<ServiceValue>;
    fn backend(&self, id: u32) -> Option<Backend>;
}

/// What to do with a socket aimed at some destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The destination is no frontend: leave the socket alone.
    NotAService,
    /// A frontend with no usable backend (or a table caught mid-update it cannot follow):
    /// fail the call, as kube-proxy's REJECT rule does. Never let it through to the VIP.
    Reject,
    /// Rewrite the destination to this backend.
    Forward { backend: Backend, rev_nat_id: u16 },
}

/// Slot (1..=count) that a random number picks among `count` backends, or None when there are
/// none. Modulo bias is below 2^-16 for any count a service can have.
#[inline(always)]
pub const fn pick_slot(random: u32, count: u16) -> Option<u16> {
    if count == 0 {
        None
    } else {
        Some((random % count as u32) as u16 + 1)
    }
}

/// Looks `frontend` (slot ignored) up and picks a backend with `random`.
#[inline(always)]
pub fn decide<T: Tables>(tables: &T, frontend: &ServiceKey, random: u32) -> Decision {
    let Some(svc) = tables.service(&frontend.with_slot(0)) else {
        return Decision::NotAService;
    };
    let Some(slot) = pick_slot(random, svc.count) else {
        return Decision::Reject;
    };
    let Some(entry) = tables.service(&frontend.with_slot(slot)) else {
        return Decision::Reject;
    };
    match tables.backend(entry.backend_id) {
        Some(backend) if backend.state == backend_state::ACTIVE => Decision::Forward {
            backend,
            rev_nat_id: svc.rev_nat_id,
        },
        _ => Decision::Reject,
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::{BackendKey, proto, scope, v4_mapped};

    #[derive(Default)]
    struct Fake {
        services: BTreeMap<ServiceKey, ServiceValue>,
        backends: BTreeMap<BackendKey, Backend>,
    }

    impl Tables for Fake {
        fn service(&self, key: &ServiceKey) -> Option<ServiceValue> {
            self.services.get(key).copied()
        }
        fn backend(&self, id: u32) -> Option<Backend> {
            self.backends.get(&BackendKey { id }).copied()
        }
    }

    fn vip() -> ServiceKey {
        ServiceKey::new(
            v4_mapped([10, 96, 0, 10]),
            80,
            proto::TCP,
            scope::EXTERNAL,
            0,
        )
    }

    fn fake_with(n: u16) -> Fake {
        let mut f = Fake::default();
        f.services.insert(
            vip(),
            ServiceValue {
                count: n,
                rev_nat_id: 7,
                ..Default::default()
            },
        );
        for i in 1..=n {
            f.services.insert(
                vip().with_slot(i),
                ServiceValue {
                    backend_id: 100 + i as u32,
                    ..Default::default()
                },
            );
            f.backends.insert(
                BackendKey { id: 100 + i as u32 },
                Backend {
                    addr: v4_mapped([10, 244, i as u8, 2]),
                    port: 8080,
                    proto: proto::TCP,
                    state: backend_state::ACTIVE,
                },
            );
        }
        f
    }

    #[test]
    fn unknown_destination_is_not_a_service() {
        let f = fake_with(3);
        let other = ServiceKey { port: 81, ..vip() };
        assert_eq!(decide(&f, &other, 5), Decision::NotAService);
    }

    #[test]
    fn empty_service_rejects() {
        assert_eq!(decide(&fake_with(0), &vip(), 5), Decision::Reject);
    }

    #[test]
    fn missing_slot_or_backend_rejects_rather_than_passing() {
        let mut f = fake_with(2);
        f.services.remove(&vip().with_slot(2));
        assert_eq!(decide(&f, &vip(), 1), Decision::Reject);
        let mut f = fake_with(2);
        f.backends.remove(&BackendKey { id: 101 });
        assert_eq!(decide(&f, &vip(), 0), Decision::Reject);
    }

    #[test]
    fn every_backend_is_reachable() {
        let f = fake_with(3);
        let mut seen = std::collections::BTreeSet::new();
        for r in 0..3 {
            match decide(&f, &vip(), r) {
                Decision::Forward {
                    backend,
                    rev_nat_id,
                } => {
                    assert_eq!(rev_nat_id, 7);
                    seen.insert(backend.addr);
                }
                d => panic!("unexpected {d:?}"),
            }
        }
        assert_eq!(seen.len(), 3);
    }

    proptest! {
        #[test]
        fn pick_slot_stays_in_range(random: u32, count in 1u16..=u16::MAX) {
            let slot = pick_slot(random, count).unwrap();
            prop_assert!(slot >= 1 && slot <= count);
        }

        #[test]
        fn decide_forwards_whenever_service_has_backends(random: u32, n in 1u16..20) {
            let is_forward = matches!(decide(&fake_with(n), &vip(), random), Decision::Forward { .. });
            prop_assert!(is_forward);
        }
    }
}
