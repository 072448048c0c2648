//! The flow hash the XDP datapath picks a Maglev entry with: the same 5-tuple always gives the
//! same entry, on every node and after every restart (no random seed), so a flow keeps its
//! backend as long as the table keeps that entry.

/// Murmur3's 32-bit finaliser-style mixing of one word into the state.
#[inline(always)]
const fn mix(h: u32, k: u32) -> u32 {
    let k = k
        .wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
const fn finish(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[inline(always)]
fn mix_addr(mut h: u32, a: &[u8; 16]) -> u32 {
    let mut i = 0;
    while i < 4 {
        h = mix(
            h,
            u32::from_le_bytes([a[4 * i], a[4 * i + 1], a[4 * i + 2], a[4 * i + 3]]),
        );
        i += 1;
    }
    h
}

/// Hash of a flow's 5-tuple (addresses in the 16-byte form, ports in host order).
#[inline(always)]
pub fn hash(saddr: &[u8; 16], daddr: &[u8; 16], sport: u16, dport: u16, proto: u8) -> u32 {
    let mut h = 0x9747_b28c;
    h = mix_addr(h, saddr);
    h = mix_addr(h, daddr);
    h = mix(h, (sport as u32) << 16 | dport as u32);
    h = mix(h, proto as u32);
    finish(h)
}

/// The Maglev entry (0..table_size) of a flow.
#[inline(always)]
pub fn maglev_index(hash: u32, table_size: u32) -> u32 {
    if table_size == 0 {
        0
    } else {
        hash % table_size
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::v4_mapped;

    #[test]
    fn stable_and_sensitive_to_every_field() {
        let (a, b) = (v4_mapped([10, 0, 0, 2]), v4_mapped([192, 0, 2, 10]));
        let h = hash(&a, &b, 40000, 80, 6);
        assert_eq!(h, hash(&a, &b, 40000, 80, 6));
        assert_ne!(h, hash(&b, &a, 40000, 80, 6));
        assert_ne!(h, hash(&a, &b, 40001, 80, 6));
        assert_ne!(h, hash(&a, &b, 40000, 81, 6));
        assert_ne!(h, hash(&a, &b, 40000, 80, 17));
    }

    #[test]
    fn source_ports_spread_over_the_table() {
        let (a, b) = (v4_mapped([10, 0, 0, 2]), v4_mapped([192, 0, 2, 10]));
        let mut buckets = [0u32; 16];
        for port in 1024..(1024 + 16_000) {
            buckets[maglev_index(hash(&a, &b, port, 80, 6), 16) as usize] += 1;
        }
        // 1000 expected per bucket; a good hash stays well within 20%.
        assert!(
            buckets.iter().all(|&n| (800..1200).contains(&n)),
            "{buckets:?}"
        );
    }
}
