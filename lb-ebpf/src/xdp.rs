//! The forward path for traffic from outside the node (NodePort, LoadBalancer and external
//! IPs): XDP on the node's external interfaces looks the destination up among the
//! external-scope frontends, drops sources outside `loadBalancerSourceRanges`, picks a
//! backend (the flow's tracked one, else Maglev over the flow hash), rewrites destination
//! address and port with incremental checksum updates, records the flow both ways in `LB_CT`,
//! and passes the packet on to the kernel, which routes it to the pod. The client's address is
//! kept, so the pod sees who connected.
//!
//! Checksums are updated as a wire packet carries them (complete); UDP over IPv4 without a
//! checksum keeps none. Fragments and anything not TCP/UDP over IP pass untouched.

use aya_ebpf::{
    bindings::{xdp_action, xdp_md},
    programs::XdpContext,
};
use lb_common::{
    Backend, BackendKey, CtKey, CtValue, ServiceKey, SrcRangeKey, csum, ct_dir, flow, proto, scope,
    select::pick_slot, service_flags, v4_unmapped, xdp_stat,
};

use crate::maps::{LB_BACKENDS, LB_CT, LB_MAGLEV, LB_SERVICES, LB_SRC_RANGES, count};
use crate::packet::{Bytes, Headers, Parsed, parse};

/// Direct packet access, bounds-checked for the verifier.
struct Xdp<'a>(&'a XdpContext);

impl Xdp<'_> {
    /// `data` and `data_end`, read with volatile loads so that LLVM cannot hoist them into a
    /// caller and pass packet pointers between BPF functions (the verifier refuses the
    /// arithmetic that comes with that).
    #[inline(always)]
    fn bounds(&self) -> (usize, usize) {
        // SAFETY: the context pointer the kernel passed to the program.
        unsafe {
            (
                core::ptr::read_volatile(&(*self.0.ctx).data) as usize,
                core::ptr::read_volatile(&(*self.0.ctx).data_end) as usize,
            )
        }
    }

    #[inline(always)]
    fn ptr<const N: usize>(&self, off: usize) -> Option<*mut [u8; N]> {
        let (start, end) = self.bounds();
        if start + off + N > end {
            return None;
        }
        Some((start + off) as *mut [u8; N])
    }

    #[inline(always)]
    fn write<const N: usize>(&self, off: usize, v: [u8; N]) -> Option<()> {
        let p = self.ptr::<N>(off)?;
        // SAFETY: in bounds, checked above; packet bytes have no alignment.
        unsafe { p.write_unaligned(v) };
        Some(())
    }

    #[inline(always)]
    fn word(&self, off: usize) -> Option<u16> {
        // SAFETY: as above.
        Some(u16::from_ne_bytes(unsafe {
            self.ptr::<2>(off)?.read_unaligned()
        }))
    }
}

impl Bytes for Xdp<'_> {
    #[inline(always)]
    fn bytes<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        // SAFETY: in bounds, checked by ptr; packet bytes have no alignment.
        Some(unsafe { self.ptr::<N>(off)?.read_unaligned() })
    }
}

const FLOW: u8 = 0;
const FRAGMENT: u8 = 1;
const OTHER: u8 = 2;

/// Parses in a BPF function of its own (the stack of one frame is limited to 512 bytes), which
/// gets the raw context pointer, as the verifier allows.
#[inline(never)]
fn parse_into(md: *mut xdp_md, out: &mut Headers) -> u8 {
    let ctx = XdpContext::new(md);
    match parse(&Xdp(&ctx)) {
        Parsed::Flow(h) => {
            *out = h;
            FLOW
        }
        Parsed::Fragment => FRAGMENT,
        Parsed::Other => OTHER,
    }
}

#[inline(always)]
pub fn forward(ctx: &XdpContext) -> u32 {
    let mut h = Headers::default();
    match parse_into(ctx.ctx, &mut h) {
        FLOW => {}
        FRAGMENT => {
            count(xdp_stat::FRAGMENTS);
            return xdp_action::XDP_PASS;
        }
        _ => return xdp_action::XDP_PASS,
    }
    let frontend = ServiceKey::new(h.daddr, h.dport, h.proto, scope::EXTERNAL, 0);
    // SAFETY: the value is copied out at once.
    let Some(svc) = (unsafe { LB_SERVICES.get(&frontend) }).copied() else {
        count(xdp_stat::PASSED);
        return xdp_action::XDP_PASS;
    };
    if svc.flags & service_flags::SOURCE_RANGES != 0 && !source_allowed(svc.rev_nat_id, &h.saddr) {
        count(xdp_stat::DROPPED_SOURCE_RANGE);
        return xdp_action::XDP_DROP;
    }
    let Some((backend_id, backend)) = choose(&h, &frontend, &svc) else {
        count(xdp_stat::DROPPED_NO_BACKEND);
        return xdp_action::XDP_DROP;
    };
    if rewrite(ctx.ctx, &h, &backend).is_none() {
        return xdp_action::XDP_DROP;
    }
    track(&h, backend_id, &backend);
    count(xdp_stat::FORWARDED);
    xdp_action::XDP_PASS
}

/// Whether `saddr` is inside the frontend's `loadBalancerSourceRanges`.
#[inline(never)]
fn source_allowed(rev_nat_id: u16, saddr: &[u8; 16]) -> bool {
    let key = aya_ebpf::maps::lpm_trie::Key::new(
        SrcRangeKey::prefix_len(128),
        SrcRangeKey::new(rev_nat_id, *saddr),
    );
    LB_SRC_RANGES.get(&key).is_some()
}

#[inline(always)]
fn forward_key(h: &Headers) -> CtKey {
    CtKey {
        saddr: h.saddr,
        daddr: h.daddr,
        sport: h.sport,
        dport: h.dport,
        proto: h.proto,
        _pad: [0; 3],
    }
}

#[inline(always)]
fn backend(id: u32) -> Option<Backend> {
    // SAFETY: copied out at once.
    unsafe { LB_BACKENDS.get(BackendKey { id }) }.copied()
}

/// The flow's backend: the tracked one while it still exists, else the Maglev entry of the
/// flow hash (or a slot by the hash, for a frontend without a table).
// Its own BPF function: the stack of one frame is limited to 512 bytes.
#[inline(never)]
fn choose(
    h: &Headers,
    frontend: &ServiceKey,
    svc: &lb_common::ServiceValue,
) -> Option<(u32, Backend)> {
    if svc.count == 0 {
        return None;
    }
    // SAFETY: copied out at once.
    if let Some(ct) = unsafe { LB_CT.get(forward_key(h)) }.copied()
        && ct.dir == ct_dir::FORWARD
        && let Some(b) = backend(ct.backend_id)
        && b.addr == ct.addr
        && b.port == ct.port
    {
        return Some((ct.backend_id, b));
    }
    let hash = flow::hash(&h.saddr, &h.daddr, h.sport, h.dport, h.proto);
    let id = if svc.maglev_table != 0 && svc.maglev_size != 0 {
        let base = (svc.maglev_table as u32 - 1).wrapping_mul(svc.maglev_size);
        *LB_MAGLEV.get(base.wrapping_add(flow::maglev_index(hash, svc.maglev_size)))?
    } else {
        let slot = pick_slot(hash, svc.count)?;
        // SAFETY: copied out at once.
        unsafe { LB_SERVICES.get(&frontend.with_slot(slot)) }?.backend_id
    };
    let b = backend(id)?;
    (b.proto == h.proto).then_some((id, b))
}

/// Records the flow: forward (client -> frontend: which backend) and reply (backend ->
/// client: which frontend to show), for the TC program on the way back.
// Its own BPF function: the stack of one frame is limited to 512 bytes.
#[inline(never)]
fn track(h: &Headers, backend_id: u32, b: &Backend) {
    let fwd = CtValue {
        addr: b.addr,
        port: b.port,
        dir: ct_dir::FORWARD,
        _pad: 0,
        backend_id,
    };
    let _ = LB_CT.insert(forward_key(h), fwd, 0);
    let reply_key = CtKey {
        saddr: b.addr,
        daddr: h.saddr,
        sport: b.port,
        dport: h.sport,
        proto: h.proto,
        _pad: [0; 3],
    };
    let reply = CtValue {
        addr: h.daddr,
        port: h.dport,
        dir: ct_dir::REPLY,
        _pad: 0,
        backend_id,
    };
    let _ = LB_CT.insert(reply_key, reply, 0);
}

/// Destination address and port to the backend's, with the IPv4 header checksum and the L4
/// checksum (pseudo-header address and port) updated incrementally.
// Its own BPF function: the stack of one frame is limited to 512 bytes.
#[inline(never)]
fn rewrite(md: *mut xdp_md, h: &Headers, b: &Backend) -> Option<()> {
    let ctx = XdpContext::new(md);
    let pkt = &Xdp(&ctx);
    let old_port = h.dport.to_be();
    let new_port = b.port.to_be();
    let l4_check = pkt.word(h.l4_check)?;
    let udp_no_check = h.proto == proto::UDP && !h.v6 && l4_check == 0;
    let new_l4 = if h.v6 {
        let (o, n) = (csum::words16(&h.daddr), csum::words16(&b.addr));
        let c = csum::replace(l4_check, &o, &n);
        pkt.write::<16>(h.l3 + 24, b.addr)?;
        c
    } else {
        let old = v4_unmapped(&h.daddr)?;
        let new = v4_unmapped(&b.addr)?;
        let (o, n) = (csum::words4(&old), csum::words4(&new));
        let ip_check = pkt.word(h.l3 + 10)?;
        pkt.write::<2>(h.l3 + 10, csum::replace(ip_check, &o, &n).to_ne_bytes())?;
        pkt.write::<4>(h.l3 + 16, new)?;
        csum::replace(l4_check, &o, &n)
    };
    let new_l4 = csum::replace16(new_l4, old_port, new_port);
    pkt.write::<2>(h.l4 + 2, new_port.to_ne_bytes())?;
    if !udp_no_check {
        // A UDP checksum that computes to 0 is sent as all ones (RFC 768).
        let v = if h.proto == proto::UDP && new_l4 == 0 {
            0xffff
        } else {
            new_l4
        };
        pkt.write::<2>(h.l4_check, v.to_ne_bytes())?;
    }
    Some(())
}
