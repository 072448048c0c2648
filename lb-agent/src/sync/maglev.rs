//! Maglev consistent hashing (Eisenbud et al., NSDI 2016), as Katran and Cilium use it: user
//! space turns a frontend's backends into a lookup table of `M` entries (M prime); the XDP
//! program only indexes it with the flow hash. Each backend fills the table along its own
//! permutation of the entries, taking turns, so every backend owns about M/N entries and
//! removing one backend moves only the entries it owned (plus a few), not the others' flows.
//!
//! A backend's permutation depends only on what it is (address, port, protocol), never on its
//! id or on the other backends, so every node computes the same table for the same set.

use lb_common::Backend;

/// FNV-1a over the backend's identity with a seed, for the two permutation parameters.
fn identity_hash(b: &Backend, seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed.wrapping_mul(0x100_0000_01b3);
    let port = b.port.to_be_bytes();
    for byte in b.addr.iter().chain(port.iter()).chain([b.proto].iter()) {
        h ^= u64::from(*byte);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    // FNV's low bits are weak: finish with a splitmix step.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The table for `backends` (id, what it is), `size` entries (a prime, > backends). Entries
/// hold backend ids; an empty backend list gives an empty table.
pub fn table(backends: &[(u32, Backend)], size: u32) -> Vec<u32> {
    let m = size as u64;
    if backends.is_empty() || m < 2 {
        return Vec::new();
    }
    // Sorted by identity so the fill order, and so the table, does not depend on input order.
    let mut order: Vec<&(u32, Backend)> = backends.iter().collect();
    order.sort_by_key(|(_, b)| (b.addr, b.port, b.proto));
    let params: Vec<(u64, u64)> = order
        .iter()
        .map(|(_, b)| {
            let offset = identity_hash(b, 1) % m;
            let skip = identity_hash(b, 2) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; order.len()];
    let mut entry = vec![u32::MAX; size as usize];
    let mut filled = 0u64;
    'fill: loop {
        for (i, (id, _)) in order.iter().enumerate() {
            let (offset, skip) = params[i];
            let mut c = (offset + next[i] * skip) % m;
            while entry[c as usize] != u32::MAX {
                next[i] += 1;
                c = (offset + next[i] * skip) % m;
            }
            entry[c as usize] = *id;
            next[i] += 1;
            filled += 1;
            if filled == m {
                break 'fill;
            }
        }
    }
    entry
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use lb_common::{proto, v4_mapped};

    use super::*;

    fn backend(i: u32) -> (u32, Backend) {
        (
            i,
            Backend {
                addr: v4_mapped([10, 244, (i >> 8) as u8, i as u8]),
                port: 8080,
                proto: proto::TCP,
                ..Default::default()
            },
        )
    }

    fn counts(t: &[u32]) -> BTreeMap<u32, usize> {
        let mut c = BTreeMap::new();
        for id in t {
            *c.entry(*id).or_default() += 1;
        }
        c
    }

    #[test]
    fn every_entry_is_filled_and_the_spread_is_even() {
        for n in [1u32, 2, 3, 7, 10, 100] {
            let bs: Vec<_> = (1..=n).map(backend).collect();
            let t = table(&bs, 16_381);
            assert_eq!(t.len(), 16_381);
            let c = counts(&t);
            assert_eq!(c.len(), n as usize, "every backend gets entries");
            let ideal = 16_381.0 / n as f64;
            for (id, k) in c {
                let dev = (k as f64 - ideal).abs() / ideal;
                // Maglev's guarantee: within a few percent for M >> N.
                assert!(
                    dev < 0.05 || n == 100 && dev < 0.15,
                    "n={n} backend {id}: {k} vs {ideal}"
                );
            }
        }
    }

    #[test]
    fn removing_one_of_n_moves_only_its_entries_and_few_others() {
        let n = 10;
        let bs: Vec<_> = (1..=n).map(backend).collect();
        let before = table(&bs, 16_381);
        let removed = 4;
        let after = table(
            &bs.iter()
                .copied()
                .filter(|(id, _)| *id != removed)
                .collect::<Vec<_>>(),
            16_381,
        );
        let mut moved_others = 0;
        for (b, a) in before.iter().zip(&after) {
            if *b == removed {
                assert_ne!(*a, removed);
            } else if b != a {
                moved_others += 1;
            }
        }
        // Flows of the remaining backends almost all stay (the paper reports ~1-2%).
        let share = moved_others as f64 / 16_381.0;
        assert!(
            share < 0.03,
            "{moved_others} entries of remaining backends moved"
        );
    }

    #[test]
    fn the_table_depends_on_the_set_not_the_order_or_ids_order() {
        let mut bs: Vec<_> = (1..=5).map(backend).collect();
        let a = table(&bs, 251);
        bs.reverse();
        assert_eq!(a, table(&bs, 251));
        assert!(table(&[], 251).is_empty());
    }
}
