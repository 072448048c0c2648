//! Socket iterators (`iter/udp`, `iter/tcp`) that end sockets still connected to a backend
//! which left its Service, with the `bpf_sock_destroy` kfunc (kernel >= 6.5). The agent fills
//! `LB_SOCK_TERM` with the departed (backend, frontend) pairs, then reads the iterator once in
//! each network namespace; every socket ended (or not) writes one byte to that output.
//!
//! aya-ebpf 0.2 has no iterator macro: the programs are plain functions in the sections aya
//! parses as iterators, taking contexts that mirror the kernel's `bpf_iter__udp` and
//! `bpf_iter__tcp`. The kfunc call is left unresolved by the linker; the agent rewrites it into
//! a kfunc call by BTF id before loading (`lb-agent/src/datapath/kfunc.rs`).

use core::ffi::c_void;

use aya_ebpf::helpers::generated::{bpf_get_socket_cookie, bpf_probe_read_kernel, bpf_seq_write};
use lb_common::{
    SockRevNatKey, SockTermKey, proto,
    sock_term::{
        AF_INET, AF_INET6, OUT_DESTROYED, OUT_FAILED, SKC_DADDR, SKC_DPORT, SKC_FAMILY, SKC_STATE,
        SKC_V6_DADDR, endable_state,
    },
    v4_mapped,
};

use crate::maps::{LB_SOCK_REVNAT, LB_SOCK_TERM};

unsafe extern "C" {
    /// `int bpf_sock_destroy(struct sock_common *sk)`, a kfunc of kernels >= 6.5, callable from
    /// TCP and UDP socket iterators.
    fn bpf_sock_destroy(sk: *mut c_void) -> i32;
}

/// `struct bpf_iter_meta`.
#[repr(C)]
pub struct IterMeta {
    seq: *mut c_void,
    session_id: u64,
    seq_num: u64,
}

/// `struct bpf_iter__udp`.
#[repr(C)]
pub struct IterUdp {
    meta: *mut IterMeta,
    udp_sk: *mut c_void,
    uid: u32,
    _pad: u32,
    bucket: i32,
}

/// `struct bpf_iter__tcp`.
#[repr(C)]
pub struct IterTcp {
    meta: *mut IterMeta,
    sk_common: *mut c_void,
    uid: u32,
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/udp")]
pub extern "C" fn lb_iter_udp(ctx: *mut IterUdp) -> i32 {
    // SAFETY: the kernel passes a valid bpf_iter__udp; its socket may be NULL (checked).
    unsafe { end_if_departed((*ctx).meta, (*ctx).udp_sk, proto::UDP) };
    0
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/tcp")]
pub extern "C" fn lb_iter_tcp(ctx: *mut IterTcp) -> i32 {
    // SAFETY: as above, for bpf_iter__tcp.
    unsafe { end_if_departed((*ctx).meta, (*ctx).sk_common, proto::TCP) };
    0
}

/// Ends `sk` when it was translated by us to a backend that has since left that frontend.
///
/// # Safety
/// `meta` and `sk` come from an iterator context (`sk` may be NULL).
#[inline(always)]
unsafe fn end_if_departed(meta: *mut IterMeta, sk: *mut c_void, l4: u8) {
    if sk.is_null() || meta.is_null() {
        return;
    }
    let mut head = [0u8; 20];
    // SAFETY: probe reads copy kernel memory into our stack buffers; a failed read leaves
    // zeros, which match nothing.
    if unsafe { bpf_probe_read_kernel(head.as_mut_ptr().cast(), 20, sk.cast_const()) } != 0 {
        return;
    }
    if !endable_state(head[SKC_STATE]) {
        return;
    }
    let family = u16::from_ne_bytes([head[SKC_FAMILY], head[SKC_FAMILY + 1]]);
    let addr = if family == AF_INET {
        v4_mapped([
            head[SKC_DADDR],
            head[SKC_DADDR + 1],
            head[SKC_DADDR + 2],
            head[SKC_DADDR + 3],
        ])
    } else if family == AF_INET6 {
        let mut a = [0u8; 16];
        // SAFETY: as above.
        let from = unsafe { sk.cast::<u8>().add(SKC_V6_DADDR) };
        if unsafe { bpf_probe_read_kernel(a.as_mut_ptr().cast(), 16, from.cast()) } != 0 {
            return;
        }
        a
    } else {
        return;
    };
    // skc_dport is in network order.
    let port = u16::from_be_bytes([head[SKC_DPORT], head[SKC_DPORT + 1]]);
    // SAFETY: a helper call on the iterator's socket.
    let cookie = unsafe { bpf_get_socket_cookie(sk) };
    let rev_key = SockRevNatKey {
        cookie,
        addr,
        port,
        _pad: [0; 6],
    };
    // Only sockets we translated, through the frontend the backend left.
    // SAFETY: copied out at once.
    let Some(front) = (unsafe { LB_SOCK_REVNAT.get(rev_key) }).copied() else {
        return;
    };
    let term_key = SockTermKey {
        addr,
        port,
        proto: l4,
        _pad: 0,
        rev_nat_id: front.rev_nat_id,
    };
    // SAFETY: as above.
    if unsafe { LB_SOCK_TERM.get(term_key) }.is_none() {
        return;
    }
    // SAFETY: `sk` is the iterator's trusted socket pointer, checked non-NULL.
    let out = if unsafe { bpf_sock_destroy(sk) } == 0 {
        OUT_DESTROYED
    } else {
        OUT_FAILED
    };
    // SAFETY: meta->seq is the iterator's seq_file; one byte from the stack.
    unsafe {
        let seq = (*meta).seq;
        bpf_seq_write(seq.cast(), (&out as *const u8).cast(), 1);
    }
}
