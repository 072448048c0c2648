//! The return path: TC on egress of the node's external interfaces, where every reply to an
//! outside client leaves. XDP sees only what arrives, so the reply is translated here: a packet
//! from a backend to a client with a REPLY entry in `LB_CT` gets the frontend address and port
//! the client used as its source. The skb checksum helpers are used (not direct writes), so
//! packets whose checksum a device will finish (CHECKSUM_PARTIAL, as from a pod's veth) stay
//! right.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_OK},
    programs::TcContext,
};
use lb_common::{ct_dir, proto, v4_unmapped, xdp_stat};

use crate::maps::{LB_CT, count};
use crate::packet::{Bytes, Headers, Parsed, parse};

struct Skb<'a>(&'a TcContext);

impl Bytes for Skb<'_> {
    #[inline(always)]
    fn bytes<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        self.0.load::<[u8; N]>(off).ok()
    }
}

#[inline(always)]
pub fn reply(ctx: &TcContext) -> i32 {
    let h = match parse(&Skb(ctx)) {
        Parsed::Flow(h) => h,
        _ => return TC_ACT_OK,
    };
    let key = h.flow_key();
    // SAFETY: copied out at once.
    let Some(ct) = (unsafe { LB_CT.get(key) }).copied() else {
        return TC_ACT_OK;
    };
    if ct.dir != ct_dir::REPLY {
        return TC_ACT_OK;
    }
    if restore_source(ctx, &h, &ct.addr, ct.port).is_some() {
        count(xdp_stat::REPLIES);
    }
    TC_ACT_OK
}

/// Source address and port back to the frontend's, checksums through the skb helpers.
#[inline(always)]
fn restore_source(ctx: &TcContext, h: &Headers, addr: &[u8; 16], port: u16) -> Option<()> {
    let mangled0 = if h.proto == proto::UDP {
        BPF_F_MARK_MANGLED_0 as u64
    } else {
        0
    };
    let pseudo = BPF_F_PSEUDO_HDR as u64 | mangled0;
    if h.v6 {
        let mut i = 0;
        while i < 4 {
            let old = u32::from_ne_bytes([
                h.saddr[4 * i],
                h.saddr[4 * i + 1],
                h.saddr[4 * i + 2],
                h.saddr[4 * i + 3],
            ]);
            let new = u32::from_ne_bytes([
                addr[4 * i],
                addr[4 * i + 1],
                addr[4 * i + 2],
                addr[4 * i + 3],
            ]);
            ctx.l4_csum_replace(h.l4_check, old as u64, new as u64, pseudo | 4)
                .ok()?;
            i += 1;
        }
        ctx.store(h.l3 + 8, addr, 0).ok()?;
    } else {
        let old = u32::from_ne_bytes(v4_unmapped(&h.saddr)?);
        let new4 = v4_unmapped(addr)?;
        let new = u32::from_ne_bytes(new4);
        ctx.l4_csum_replace(h.l4_check, old as u64, new as u64, pseudo | 4)
            .ok()?;
        ctx.l3_csum_replace(h.l3 + 10, old as u64, new as u64, 4)
            .ok()?;
        ctx.store(h.l3 + 12, &new4, 0).ok()?;
    }
    let (old_port, new_port) = (h.sport.to_be(), port.to_be());
    ctx.l4_csum_replace(h.l4_check, old_port as u64, new_port as u64, mangled0 | 2)
        .ok()?;
    ctx.store(h.l4, &new_port, 0).ok()?;
    Some(())
}
