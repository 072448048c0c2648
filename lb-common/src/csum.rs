//! Internet checksum arithmetic (RFC 1071, incremental updates per RFC 1624), shared by the
//! XDP/TC programs and the host tests that verify their output.
//!
//! Words are taken as they lie in the packet (two bytes loaded in native order): one's
//! complement sums do not depend on byte order as long as every word is loaded the same way.

/// Folds a 32-bit one's complement sum to 16 bits.
#[inline(always)]
pub const fn fold(mut sum: u32) -> u16 {
    // Two folds always suffice for sums of up to 65 536 words.
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The checksum after one 16-bit word covered by it changed from `old` to `new`.
#[inline(always)]
pub const fn replace16(check: u16, old: u16, new: u16) -> u16 {
    // HC' = ~(~HC + ~m + m')
    !fold(!check as u32 + !old as u32 + new as u32)
}

/// The checksum after `N` words covered by it changed from `old` to `new`.
#[inline(always)]
pub fn replace<const N: usize>(check: u16, old: &[u16; N], new: &[u16; N]) -> u16 {
    let mut sum = !check as u32;
    let mut i = 0;
    while i < N {
        sum += !old[i] as u32 + new[i] as u32;
        i += 1;
    }
    !fold(sum)
}

/// The 16-bit words of a 16-byte address, as they lie in memory.
#[inline(always)]
pub fn words16(addr: &[u8; 16]) -> [u16; 8] {
    let mut w = [0u16; 8];
    let mut i = 0;
    while i < 8 {
        w[i] = u16::from_ne_bytes([addr[2 * i], addr[2 * i + 1]]);
        i += 1;
    }
    w
}

/// The 16-bit words of an IPv4 address.
#[inline(always)]
pub fn words4(addr: &[u8; 4]) -> [u16; 2] {
    [
        u16::from_ne_bytes([addr[0], addr[1]]),
        u16::from_ne_bytes([addr[2], addr[3]]),
    ]
}

/// One's complement sum of `data` (odd length padded with a zero byte), not complemented.
pub fn sum(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u16::from_ne_bytes([c[0], c[1]]) as u32;
        acc = (acc & 0xffff) + (acc >> 16);
    }
    if let [last] = chunks.remainder() {
        acc += u16::from_ne_bytes([*last, 0]) as u32;
    }
    acc
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use proptest::prelude::*;
    use std::vec::Vec;

    fn checksum(data: &[u8]) -> u16 {
        !fold(sum(data, 0))
    }

    #[test]
    fn known_ipv4_header() {
        // The example header from RFC 1071 discussions (checksum 0xb1e6).
        let mut h = [
            0x45u8, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        let c = checksum(&h);
        assert_eq!(u16::from_be(c), 0xb861);
        h[10..12].copy_from_slice(&c.to_ne_bytes());
        assert_eq!(checksum(&h), 0);
    }

    proptest! {
        /// An incremental update gives the checksum a full recomputation would.
        #[test]
        fn incremental_equals_full(
            mut data in proptest::collection::vec(any::<u8>(), 24..64),
            at in 0usize..8,
            new in any::<[u8; 4]>(),
        ) {
            let len = data.len() & !1;
            data.truncate(len);
            let before = checksum(&data);
            let off = 4 + at * 2;
            let old = [u16::from_ne_bytes([data[off], data[off+1]]), u16::from_ne_bytes([data[off+2], data[off+3]])];
            data[off..off + 4].copy_from_slice(&new);
            let updated = replace(before, &old, &words4(&new));
            let full = checksum(&data);
            // 0x0000 and 0xffff are the same number in one's complement.
            prop_assert!(updated == full || (updated ^ full) == 0xffff, "{updated:#x} vs {full:#x}");
            let w: Vec<u16> = words16(&[1; 16]).to_vec();
            prop_assert_eq!(w.len(), 8);
        }
    }
}
