//! Parsing the headers the XDP and TC programs need: Ethernet, up to two VLAN tags, IPv4
//! (any IHL) or IPv6 (no extension headers), then TCP or UDP. Offsets only: each program
//! reads and writes the bytes in its own way (direct access in XDP, skb helpers in TC, which
//! keep the kernel's checksum state right).

use lb_common::{CtKey, proto, v4_mapped};

pub const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_FRAGMENT: u8 = 44;

/// Where the parts of a packet are.
#[derive(Clone, Copy, Default)]
pub struct Headers {
    pub v6: bool,
    /// Start of the IP header.
    pub l3: usize,
    /// Start of the TCP/UDP header.
    pub l4: usize,
    pub proto: u8,
    /// Addresses in the 16-byte form (IPv4 mapped).
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Host byte order.
    pub sport: u16,
    pub dport: u16,
    /// Offset of the L4 checksum field.
    pub l4_check: usize,
}

impl Headers {
    /// The flow as this packet carries it, for `LB_CT` and `LB_SNAT` lookups.
    #[inline(always)]
    pub fn flow_key(&self) -> CtKey {
        CtKey {
            saddr: self.saddr,
            daddr: self.daddr,
            sport: self.sport,
            dport: self.dport,
            proto: self.proto,
            _pad: [0; 3],
        }
    }
}

/// What parsing found.
pub enum Parsed {
    Flow(Headers),
    /// An IP fragment: its ports may not be in it.
    Fragment,
    /// Not TCP or UDP over IP, or cut short.
    Other,
}

/// Byte access to a packet, bounds-checked against its end.
pub trait Bytes {
    fn bytes<const N: usize>(&self, off: usize) -> Option<[u8; N]>;
}

#[inline(always)]
fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

/// The EtherType after up to two VLAN tags (QinQ), and where the IP header starts.
#[inline(always)]
fn ethertype<B: Bytes>(b: &B) -> Option<(u16, usize)> {
    let mut ethertype = be16(b.bytes::<2>(12)?);
    let mut l3 = ETH_HLEN;
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        ethertype = be16(b.bytes::<2>(l3 + 2)?);
        l3 += 4;
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            ethertype = be16(b.bytes::<2>(l3 + 2)?);
            l3 += 4;
        }
    }
    Some((ethertype, l3))
}

#[inline(always)]
pub fn parse<B: Bytes>(b: &B) -> Parsed {
    let Some((ethertype, l3)) = ethertype(b) else {
        return Parsed::Other;
    };
    let v6 = ethertype == ETH_P_IPV6;
    let saddr;
    let daddr;
    let l4;
    let l4proto;
    if ethertype == ETH_P_IP {
        let Some(ip) = b.bytes::<20>(l3) else {
            return Parsed::Other;
        };
        let ihl = ((ip[0] & 0x0f) as usize) * 4;
        if ip[0] >> 4 != 4 || ihl < 20 {
            return Parsed::Other;
        }
        // More-fragments set or a non-zero offset.
        if be16([ip[6], ip[7]]) & 0x3fff != 0 {
            return Parsed::Fragment;
        }
        l4proto = ip[9];
        saddr = v4_mapped([ip[12], ip[13], ip[14], ip[15]]);
        daddr = v4_mapped([ip[16], ip[17], ip[18], ip[19]]);
        l4 = l3 + ihl;
    } else if v6 {
        let Some(next) = b.bytes::<1>(l3 + 6) else {
            return Parsed::Other;
        };
        if next[0] == IPPROTO_FRAGMENT {
            return Parsed::Fragment;
        }
        let Some(s) = b.bytes::<16>(l3 + 8) else {
            return Parsed::Other;
        };
        let Some(d) = b.bytes::<16>(l3 + 24) else {
            return Parsed::Other;
        };
        saddr = s;
        daddr = d;
        l4proto = next[0];
        l4 = l3 + 40;
    } else {
        return Parsed::Other;
    }
    let l4_check = if l4proto == proto::TCP {
        l4 + 16
    } else if l4proto == proto::UDP {
        l4 + 6
    } else {
        return Parsed::Other;
    };
    // The ports, and the whole checksum field, must be there.
    let Some(ports) = b.bytes::<4>(l4) else {
        return Parsed::Other;
    };
    if b.bytes::<2>(l4_check).is_none() {
        return Parsed::Other;
    }
    Parsed::Flow(Headers {
        v6,
        l3,
        l4,
        proto: l4proto,
        saddr,
        daddr,
        sport: be16([ports[0], ports[1]]),
        dport: be16([ports[2], ports[3]]),
        l4_check,
    })
}
