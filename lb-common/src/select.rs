//! The translation decision, as a plain function over a [`Tables`] view of the maps, so it is
//! compiled into the eBPF programs and unit-tested on the host with the same code.

use crate::{AffinityKey, AffinityValue, Backend, ServiceKey, ServiceValue, backend_state};

/// Read access to the service, backend and affinity tables.
pub trait Tables {
    fn service(&self, key: &ServiceKey) -> Option<ServiceValue>;
    fn backend(&self, id: u32) -> Option<Backend>;
    fn affinity(&self, key: &AffinityKey) -> Option<AffinityValue>;
}

/// Who is connecting and when, for session affinity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Client {
    /// Network namespace cookie of the socket.
    pub id: u64,
    /// Now, in seconds on the monotonic clock.
    pub now: u64,
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
    /// Rewrite the destination to this backend; with session affinity, also record `affinity`.
    Forward {
        backend: Backend,
        rev_nat_id: u16,
        affinity: Option<(AffinityKey, AffinityValue)>,
    },
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

/// The backend a still-valid affinity entry names: not expired, its slot still within the
/// count and still holding that backend, and the backend active.
#[inline(always)]
fn affine_backend<T: Tables>(
    tables: &T,
    frontend: &ServiceKey,
    svc: &ServiceValue,
    key: &AffinityKey,
    now: u64,
) -> Option<(u16, u32, Backend)> {
    let a = tables.affinity(key)?;
    if now.saturating_sub(a.last_used) > svc.affinity_timeout as u64
        || a.slot == 0
        || a.slot > svc.count
    {
        return None;
    }
    let entry = tables.service(&frontend.with_slot(a.slot))?;
    if entry.backend_id != a.backend_id {
        return None;
    }
    let backend = tables.backend(a.backend_id)?;
    (backend.state == backend_state::ACTIVE).then_some((a.slot, a.backend_id, backend))
}

/// Looks `frontend` (slot ignored) up and picks a backend: the client's affine one when the
/// service has session affinity and it is still valid, else one at random.
#[inline(always)]
pub fn decide<T: Tables>(
    tables: &T,
    frontend: &ServiceKey,
    random: u32,
    client: Client,
) -> Decision {
    let Some(svc) = tables.service(&frontend.with_slot(0)) else {
        return Decision::NotAService;
    };
    let affinity_key = AffinityKey {
        client: client.id,
        rev_nat_id: svc.rev_nat_id,
        _pad: [0; 6],
    };
    let sticky = svc.affinity_timeout > 0;
    let remember = |slot: u16, backend_id: u32| {
        sticky.then_some((
            affinity_key,
            AffinityValue {
                backend_id,
                slot,
                _pad: 0,
                last_used: client.now,
            },
        ))
    };
    if sticky
        && let Some((slot, id, backend)) =
            affine_backend(tables, frontend, &svc, &affinity_key, client.now)
    {
        return Decision::Forward {
            backend,
            rev_nat_id: svc.rev_nat_id,
            affinity: remember(slot, id),
        };
    }
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
            affinity: remember(slot, entry.backend_id),
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
        affinity: BTreeMap<AffinityKey, AffinityValue>,
    }

    const C: Client = Client { id: 42, now: 1000 };

    impl Fake {
        /// What the datapath does with a decision: record affinity.
        fn run(&mut self, random: u32, client: Client) -> Decision {
            let d = decide(self, &vip(), random, client);
            if let Decision::Forward {
                affinity: Some((k, v)),
                ..
            } = d
            {
                self.affinity.insert(k, v);
            }
            d
        }
    }

    fn addr_of(d: Decision) -> [u8; 16] {
        match d {
            Decision::Forward { backend, .. } => backend.addr,
            d => panic!("unexpected {d:?}"),
        }
    }

    impl Tables for Fake {
        fn service(&self, key: &ServiceKey) -> Option<ServiceValue> {
            self.services.get(key).copied()
        }
        fn backend(&self, id: u32) -> Option<Backend> {
            self.backends.get(&BackendKey { id }).copied()
        }
        fn affinity(&self, key: &AffinityKey) -> Option<AffinityValue> {
            self.affinity.get(key).copied()
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
                    ..Default::default()
                },
            );
        }
        f
    }

    #[test]
    fn unknown_destination_is_not_a_service() {
        let f = fake_with(3);
        let other = ServiceKey { port: 81, ..vip() };
        assert_eq!(decide(&f, &other, 5, C), Decision::NotAService);
    }

    #[test]
    fn empty_service_rejects() {
        assert_eq!(decide(&fake_with(0), &vip(), 5, C), Decision::Reject);
    }

    #[test]
    fn missing_slot_or_backend_rejects_rather_than_passing() {
        let mut f = fake_with(2);
        f.services.remove(&vip().with_slot(2));
        assert_eq!(decide(&f, &vip(), 1, C), Decision::Reject);
        let mut f = fake_with(2);
        f.backends.remove(&BackendKey { id: 101 });
        assert_eq!(decide(&f, &vip(), 0, C), Decision::Reject);
    }

    #[test]
    fn every_backend_is_reachable() {
        let f = fake_with(3);
        let mut seen = std::collections::BTreeSet::new();
        for r in 0..3 {
            match decide(&f, &vip(), r, C) {
                Decision::Forward {
                    backend,
                    rev_nat_id,
                    affinity,
                } => {
                    assert_eq!(rev_nat_id, 7);
                    assert!(affinity.is_none(), "no affinity configured");
                    seen.insert(backend.addr);
                }
                d => panic!("unexpected {d:?}"),
            }
        }
        assert_eq!(seen.len(), 3);
    }

    fn sticky(n: u16, timeout: u32) -> Fake {
        let mut f = fake_with(n);
        f.services.get_mut(&vip()).unwrap().affinity_timeout = timeout;
        f
    }

    #[test]
    fn affinity_keeps_a_client_on_its_backend_until_the_timeout() {
        let mut f = sticky(3, 10);
        let first = addr_of(f.run(0, C));
        for r in 1..50 {
            assert_eq!(
                addr_of(f.run(
                    r,
                    Client {
                        now: C.now + 5,
                        ..C
                    }
                )),
                first
            );
        }
        // Each use refreshes the entry: 5 s after the last use it still holds.
        assert_eq!(
            addr_of(f.run(
                1,
                Client {
                    now: C.now + 10,
                    ..C
                }
            )),
            first
        );
        // Another client is independent; past the timeout the choice is random again.
        assert_ne!(addr_of(f.run(1, Client { id: 7, ..C })), [0; 16]);
        let later = Client {
            now: C.now + 10 + 11,
            ..C
        };
        let picked: std::collections::BTreeSet<_> = (0..3)
            .map(|r| {
                let mut g = sticky(3, 10);
                g.affinity = f.affinity.clone();
                addr_of(g.run(r, later))
            })
            .collect();
        assert_eq!(
            picked.len(),
            3,
            "expired affinity falls back to random choice"
        );
    }

    #[test]
    fn affinity_moves_when_the_backend_leaves_the_service() {
        let mut f = sticky(3, 100);
        let first = addr_of(f.run(2, C));
        assert_eq!(first, v4_mapped([10, 244, 3, 2]));
        // The service shrinks to 2 backends (slot 3 beyond the count).
        f.services.get_mut(&vip()).unwrap().count = 2;
        assert_ne!(addr_of(f.run(2, C)), first);
        // A slot rewritten to another backend also breaks affinity.
        let mut f = sticky(3, 100);
        let first = addr_of(f.run(0, C));
        f.services.get_mut(&vip().with_slot(1)).unwrap().backend_id = 102;
        assert_ne!(addr_of(f.run(0, C)), first);
    }

    proptest! {
        #[test]
        fn pick_slot_stays_in_range(random: u32, count in 1u16..=u16::MAX) {
            let slot = pick_slot(random, count).unwrap();
            prop_assert!(slot >= 1 && slot <= count);
        }

        #[test]
        fn decide_forwards_whenever_service_has_backends(random: u32, n in 1u16..20) {
            let is_forward = matches!(decide(&fake_with(n), &vip(), random, C), Decision::Forward { .. });
            prop_assert!(is_forward);
        }
    }
}
