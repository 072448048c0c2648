//! Crafted Ethernet frames for BPF_PROG_TEST_RUN tests of the XDP and TC programs, and a
//! reader that checks what the programs wrote: addresses, ports and every checksum.

use std::net::IpAddr;

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;

/// What a frame carries.
#[derive(Clone, Debug)]
pub struct Frame {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// 802.1Q/802.1ad tags, outermost first.
    pub vlans: Vec<u16>,
    pub payload: Vec<u8>,
    /// IPv4 UDP sent without a checksum (0).
    pub udp_no_checksum: bool,
    /// IPv4 "more fragments" set (or an IPv6 fragment header).
    pub fragment: bool,
}

impl Frame {
    pub fn new(src: &str, sport: u16, dst: &str, dport: u16, proto: u8) -> Self {
        Self {
            src: src.parse().expect("test source address"),
            dst: dst.parse().expect("test destination address"),
            sport,
            dport,
            proto,
            vlans: Vec::new(),
            payload: b"hello, backend".to_vec(),
            udp_no_checksum: false,
            fragment: false,
        }
    }
}

fn sum(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u16::from_be_bytes([c[0], c[1]]) as u32;
    }
    if let [b] = chunks.remainder() {
        acc += u16::from_be_bytes([*b, 0]) as u32;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

fn pseudo(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u32 {
    let mut acc = 0;
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            acc = sum(&s.octets(), acc);
            acc = sum(&d.octets(), acc);
            acc += proto as u32 + len as u32;
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            acc = sum(&s.octets(), acc);
            acc = sum(&d.octets(), acc);
            acc += (len as u32 >> 16) + (len as u32 & 0xffff) + proto as u32;
        }
        _ => panic!("mixed families"),
    }
    acc
}

/// The frame's bytes, with correct checksums.
pub fn build(f: &Frame) -> Vec<u8> {
    let mut l4 = Vec::new();
    l4.extend_from_slice(&f.sport.to_be_bytes());
    l4.extend_from_slice(&f.dport.to_be_bytes());
    if f.proto == TCP {
        l4.extend_from_slice(&1u32.to_be_bytes()); // seq
        l4.extend_from_slice(&0u32.to_be_bytes()); // ack
        l4.extend_from_slice(&[0x50, 0x02]); // 20 bytes, SYN
        l4.extend_from_slice(&64240u16.to_be_bytes());
        l4.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent
    } else {
        l4.extend_from_slice(&((8 + f.payload.len()) as u16).to_be_bytes());
        l4.extend_from_slice(&[0, 0]);
    }
    l4.extend_from_slice(&f.payload);
    let check_at = if f.proto == TCP { 16 } else { 6 };
    if !(f.proto == UDP && f.udp_no_checksum && f.src.is_ipv4()) {
        let mut c = !fold(sum(&l4, pseudo(f.src, f.dst, f.proto, l4.len())));
        if f.proto == UDP && c == 0 {
            c = 0xffff;
        }
        l4[check_at..check_at + 2].copy_from_slice(&c.to_be_bytes());
    }

    let mut out = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    let ethertype: u16 = if f.src.is_ipv4() { 0x0800 } else { 0x86dd };
    for (i, v) in f.vlans.iter().enumerate() {
        out.extend_from_slice(
            &(if i == 0 && f.vlans.len() > 1 {
                0x88a8u16
            } else {
                0x8100
            })
            .to_be_bytes(),
        );
        out.extend_from_slice(&v.to_be_bytes());
    }
    out.extend_from_slice(&ethertype.to_be_bytes());
    match (f.src, f.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut ip = vec![0x45, 0];
            ip.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
            ip.extend_from_slice(&[0x12, 0x34]);
            ip.extend_from_slice(&(if f.fragment { 0x2000u16 } else { 0x4000 }).to_be_bytes());
            ip.extend_from_slice(&[64, f.proto, 0, 0]);
            ip.extend_from_slice(&s.octets());
            ip.extend_from_slice(&d.octets());
            let c = !fold(sum(&ip, 0));
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            out.extend_from_slice(&ip);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            out.extend_from_slice(&[0x60, 0, 0, 0]);
            let (next, extra) = if f.fragment {
                (44u8, vec![f.proto, 0, 0, 1, 0, 0, 0, 7])
            } else {
                (f.proto, vec![])
            };
            out.extend_from_slice(&((l4.len() + extra.len()) as u16).to_be_bytes());
            out.extend_from_slice(&[next, 64]);
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
            out.extend_from_slice(&extra);
        }
        _ => panic!("mixed families"),
    }
    out.extend_from_slice(&l4);
    out
}

/// What a frame holds after a program ran, and whether its checksums verify.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    /// IPv4 header checksum verifies (always true for IPv6).
    pub ip_ok: bool,
    /// L4 checksum verifies (true for IPv4 UDP without one).
    pub l4_ok: bool,
    /// The L4 checksum field as sent.
    pub l4_check: u16,
}

/// Reads a frame built by [`build`] (possibly rewritten).
pub fn read(b: &[u8]) -> Seen {
    let mut off = 12;
    let mut ethertype = u16::from_be_bytes([b[off], b[off + 1]]);
    while ethertype == 0x8100 || ethertype == 0x88a8 {
        off += 4;
        ethertype = u16::from_be_bytes([b[off], b[off + 1]]);
    }
    let l3 = off + 2;
    let (src, dst, proto, l4, ip_ok) = if ethertype == 0x0800 {
        let ihl = (b[l3] & 0x0f) as usize * 4;
        let s: [u8; 4] = b[l3 + 12..l3 + 16].try_into().expect("4 bytes");
        let d: [u8; 4] = b[l3 + 16..l3 + 20].try_into().expect("4 bytes");
        let ok = fold(sum(&b[l3..l3 + ihl], 0)) == 0xffff;
        (IpAddr::from(s), IpAddr::from(d), b[l3 + 9], l3 + ihl, ok)
    } else {
        let s: [u8; 16] = b[l3 + 8..l3 + 24].try_into().expect("16 bytes");
        let d: [u8; 16] = b[l3 + 24..l3 + 40].try_into().expect("16 bytes");
        (IpAddr::from(s), IpAddr::from(d), b[l3 + 6], l3 + 40, true)
    };
    let seg = &b[l4..];
    let check_at = if proto == TCP { 16 } else { 6 };
    let l4_check = u16::from_be_bytes([seg[check_at], seg[check_at + 1]]);
    let l4_ok = (proto == UDP && src.is_ipv4() && l4_check == 0)
        || fold(sum(seg, pseudo(src, dst, proto, seg.len()))) == 0xffff;
    Seen {
        src,
        dst,
        sport: u16::from_be_bytes([seg[0], seg[1]]),
        dport: u16::from_be_bytes([seg[2], seg[3]]),
        ip_ok,
        l4_ok,
        l4_check,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_frames_verify() {
        for (s, d, p) in [
            ("203.0.113.5", "192.0.2.10", TCP),
            ("203.0.113.5", "192.0.2.10", UDP),
            ("2001:db8::5", "2001:db8:1::10", TCP),
            ("2001:db8::5", "2001:db8:1::10", UDP),
        ] {
            let mut f = Frame::new(s, 40000, d, 80, p);
            f.vlans = vec![100, 200];
            let seen = read(&build(&f));
            assert!(seen.ip_ok && seen.l4_ok, "{seen:?}");
            assert_eq!((seen.sport, seen.dport), (40000, 80));
        }
        let mut bad = build(&Frame::new("203.0.113.5", 1, "192.0.2.10", 2, TCP));
        let n = bad.len();
        bad[n - 1] ^= 0xff;
        assert!(!read(&bad).l4_ok);
    }
}
