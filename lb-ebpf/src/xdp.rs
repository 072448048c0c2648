//! The forward path for traffic from outside the node (NodePort, LoadBalancer and external
//! IPs): XDP on the node's external interfaces looks the destination up among the
//! external-scope frontends, drops sources outside `loadBalancerSourceRanges`, picks a
//! backend (the flow's tracked one, else Maglev over the flow hash), rewrites destination
//! address and port with incremental checksum updates, records the flow both ways in `LB_CT`,
//! and passes the packet on to the kernel, which routes it to the pod. The client's address is
//! kept, so the pod sees who connected, except for a backend on another node: that flow is
//! SNATed to this node's address and a port of its own (found collision-free in `LB_SNAT`),
//! so the backend's replies come back here, where the same program undoes both translations
//! and passes the reply on to the client (`--xdp-iface` must include the interface they
//! arrive on).
//!
//! Checksums are updated as a wire packet carries them (complete); UDP over IPv4 without a
//! checksum keeps none. Fragments and anything not TCP/UDP over IP pass untouched.

use aya_ebpf::{
    bindings::{BPF_NOEXIST, xdp_action, xdp_md},
    programs::XdpContext,
};
use lb_common::{
    Backend, BackendKey, CtKey, CtValue, ServiceKey, SnatValue, SrcRangeKey, backend_flags, csum,
    ct_dir, flow, proto, scope, select::pick_slot, service_flags, snat_ports, v4_unmapped,
    xdp_stat,
};

use crate::maps::{
    LB_BACKENDS, LB_CT, LB_MAGLEV, LB_SERVICES, LB_SNAT, LB_SNAT_ADDRS, LB_SRC_RANGES, count,
};
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
    // A reply of a flow SNATed to a backend on another node: back to the client, from the
    // frontend the client used.
    let mut flow = SnatValue::default();
    if snat_reply(&h, &mut flow) {
        if set(ctx.ctx, &h, DST, &flow.client, flow.client_port).is_none()
            || set(ctx.ctx, &h, SRC, &flow.frontend, flow.frontend_port).is_none()
        {
            return xdp_action::XDP_DROP;
        }
        count(xdp_stat::SNAT_REPLIES);
        return xdp_action::XDP_PASS;
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
    // (Out parameters, not a returned Option: BTF cannot describe every Rust enum layout.)
    let mut backend = Backend::default();
    let mut backend_id = 0u32;
    let chosen = choose(&h, &frontend, &svc, &mut backend, &mut backend_id);
    if chosen == NONE {
        count(xdp_stat::DROPPED_NO_BACKEND);
        return xdp_action::XDP_DROP;
    }
    let tracked = chosen == TRACKED;
    let mut snat_port = 0;
    if backend.flags & backend_flags::REMOTE != 0 {
        let mut addr = [0u8; 16];
        snat_port = snat(&h, &backend, &mut addr);
        if snat_port == 0 {
            count(xdp_stat::DROPPED_SNAT);
            return xdp_action::XDP_DROP;
        }
        if set(ctx.ctx, &h, SRC, &addr, snat_port).is_none() {
            return xdp_action::XDP_DROP;
        }
        count(xdp_stat::SNATED);
    }
    if set(ctx.ctx, &h, DST, &backend.addr, backend.port).is_none() {
        return xdp_action::XDP_DROP;
    }
    // A tracked flow's entries are there already (and kept warm by the lookups).
    if !tracked {
        track(&h, backend_id, &backend, snat_port);
    }
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

/// The SNAT source port of this flow to backend `b` (its own entry in `LB_SNAT`, found or
/// made: a few candidates from the flow hash, each taken only if no other flow holds it), with
/// the SNAT address written to `addr`; 0 when there is none.
#[inline(never)]
fn snat(h: &Headers, b: &Backend, addr: &mut [u8; 16]) -> u16 {
    let Some(a) = LB_SNAT_ADDRS.get(if h.v6 { 1 } else { 0 }) else {
        return 0;
    };
    if *a == [0u8; 16] {
        return 0;
    }
    *addr = *a;
    let ours = SnatValue {
        client: h.saddr,
        frontend: h.daddr,
        client_port: h.sport,
        frontend_port: h.dport,
    };
    let hash = flow::hash(&h.saddr, &h.daddr, h.sport, h.dport, h.proto);
    let mut i = 0u32;
    while i < 4 {
        let port = snat_ports::FIRST
            + (hash.wrapping_add(i.wrapping_mul(0x9e37_79b9)) % snat_ports::COUNT as u32) as u16;
        let key = CtKey {
            saddr: b.addr,
            daddr: *a,
            sport: b.port,
            dport: port,
            proto: h.proto,
            _pad: [0; 3],
        };
        // SAFETY: copied out at once.
        match unsafe { LB_SNAT.get(&key) }.copied() {
            Some(v) if v == ours => return port,
            Some(_) => {}
            None => {
                if LB_SNAT.insert(&key, &ours, BPF_NOEXIST as u64).is_ok() {
                    return port;
                }
            }
        }
        i += 1;
    }
    0
}

/// Whether the packet is a reply to a SNATed flow (backend -> SNAT address and port), with
/// the flow it belongs to written to `out`.
#[inline(never)]
fn snat_reply(h: &Headers, out: &mut SnatValue) -> bool {
    let key = h.flow_key();
    // SAFETY: copied out at once.
    match unsafe { LB_SNAT.get(&key) }.copied() {
        Some(v) => {
            *out = v;
            true
        }
        None => false,
    }
}

#[inline(always)]
fn backend(id: u32) -> Option<Backend> {
    // SAFETY: copied out at once.
    unsafe { LB_BACKENDS.get(BackendKey { id }) }.copied()
}

/// The flow's backend: the tracked one while it still exists, else the Maglev entry of the
/// flow hash (or a slot by the hash, for a frontend without a table); and whether it was
/// tracked.
// Its own BPF function: the stack of one frame is limited to 512 bytes.
#[inline(never)]
fn choose(
    h: &Headers,
    frontend: &ServiceKey,
    svc: &lb_common::ServiceValue,
    backend_out: &mut Backend,
    id_out: &mut u32,
) -> u8 {
    let (id, b, how) = match pick(h, frontend, svc) {
        Some(x) => x,
        None => return NONE,
    };
    *backend_out = b;
    *id_out = id;
    how
}

const NONE: u8 = 0;
const NEW: u8 = 1;
const TRACKED: u8 = 2;

#[inline(always)]
fn pick(
    h: &Headers,
    frontend: &ServiceKey,
    svc: &lb_common::ServiceValue,
) -> Option<(u32, Backend, u8)> {
    if svc.count == 0 {
        return None;
    }
    // SAFETY: copied out at once.
    if let Some(ct) = unsafe { LB_CT.get(h.flow_key()) }.copied()
        && ct.dir == ct_dir::FORWARD
        && let Some(b) = backend(ct.backend_id)
        && b.addr == ct.addr
        && b.port == ct.port
    {
        return Some((ct.backend_id, b, TRACKED));
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
    (b.proto == h.proto).then_some((id, b, NEW))
}

/// Records the flow: forward (client -> frontend: which backend) and reply (backend ->
/// client: which frontend to show), for the TC program on the way back.
// Its own BPF function: the stack of one frame is limited to 512 bytes.
#[inline(never)]
fn track(h: &Headers, backend_id: u32, b: &Backend, snat_port: u16) {
    let fwd = CtValue {
        addr: b.addr,
        port: b.port,
        dir: ct_dir::FORWARD,
        _pad: 0,
        backend_id,
        snat_port,
        _pad2: 0,
    };
    let _ = LB_CT.insert(h.flow_key(), fwd, 0);
    if snat_port != 0 {
        // Its replies come to the SNAT address: `LB_SNAT` has them.
        return;
    }
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
        snat_port: 0,
        _pad2: 0,
    };
    let _ = LB_CT.insert(reply_key, reply, 0);
}

const SRC: bool = true;
const DST: bool = false;

/// The source (`SRC`) or destination (`DST`) address and port to `addr`:`port`, with the IPv4
/// header checksum and the L4 checksum (pseudo-header address and port) updated
/// incrementally. The old values are the parsed ones in `h` (each side is set at most once).
// Its own BPF function: the stack of one frame is limited to 512 bytes.
#[inline(never)]
fn set(md: *mut xdp_md, h: &Headers, src: bool, addr: &[u8; 16], port: u16) -> Option<()> {
    let ctx = XdpContext::new(md);
    let pkt = &Xdp(&ctx);
    let (old_addr, old_port) = if src { (&h.saddr, h.sport) } else { (&h.daddr, h.dport) };
    let port_at = if src { h.l4 } else { h.l4 + 2 };
    let l4_check = pkt.word(h.l4_check)?;
    let udp_no_check = h.proto == proto::UDP && !h.v6 && l4_check == 0;
    let new_l4 = if h.v6 {
        let (o, n) = (csum::words16(old_addr), csum::words16(addr));
        let c = csum::replace(l4_check, &o, &n);
        pkt.write::<16>(h.l3 + if src { 8 } else { 24 }, *addr)?;
        c
    } else {
        let old = v4_unmapped(old_addr)?;
        let new = v4_unmapped(addr)?;
        let (o, n) = (csum::words4(&old), csum::words4(&new));
        let ip_check = pkt.word(h.l3 + 10)?;
        pkt.write::<2>(h.l3 + 10, csum::replace(ip_check, &o, &n).to_ne_bytes())?;
        pkt.write::<4>(h.l3 + if src { 12 } else { 16 }, new)?;
        csum::replace(l4_check, &o, &n)
    };
    let new_l4 = csum::replace16(new_l4, old_port.to_be(), port.to_be());
    pkt.write::<2>(port_at, port.to_be().to_ne_bytes())?;
    if !udp_no_check {
        // A UDP checksum that computes to 0 is sent as all ones (RFC 768).
        let v = if h.proto == proto::UDP && new_l4 == 0 { 0xffff } else { new_l4 };
        pkt.write::<2>(h.l4_check, v.to_ne_bytes())?;
    }
    Some(())
}
