//! Socket-level translation: rewrite the destination of a socket from a frontend to a backend
//! when the application calls connect() (or sends a datagram with an address), so no packet of
//! the flow is ever NATed; remember the frontend per socket so that replies and getpeername()
//! show the address the application used.

use aya_ebpf::{
    EbpfContext,
    bindings::bpf_sock_addr,
    helpers::generated::{
        bpf_get_netns_cookie, bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_ktime_get_ns,
        bpf_set_retval,
    },
    programs::SockAddrContext,
};
use lb_common::{
    ServiceKey, SockRevNat, SockRevNatKey, errno, proto, scope,
    select::{Client, Decision, decide},
    v4_mapped, v4_unmapped,
};

use crate::maps::{LB_AFFINITY, LB_SOCK_REVNAT, Maps};

/// Return value of a cgroup sock_addr program that lets the call go on.
const ALLOW: i32 = 1;
/// Return value that fails the call (with the errno set through `bpf_set_retval`).
const DENY: i32 = 0;

#[inline(always)]
fn l4_proto(protocol: u32) -> Option<u8> {
    match protocol {
        p if p == proto::TCP as u32 => Some(proto::TCP),
        p if p == proto::UDP as u32 => Some(proto::UDP),
        _ => None,
    }
}

#[inline(always)]
fn reject() -> i32 {
    // SAFETY: a plain helper call; allowed in cgroup sock_addr programs.
    unsafe { bpf_set_retval(-errno::ECONNREFUSED) };
    DENY
}

#[inline(always)]
fn cookie(ctx: &SockAddrContext) -> u64 {
    // SAFETY: a plain helper call on the program's own context.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

/// The destination in `ctx` as a 16-byte address (IPv4 mapped) and a host-order port.
#[inline(always)]
fn destination<const V6: bool>(sa: &bpf_sock_addr) -> ([u8; 16], u16) {
    // user_ip4/user_ip6 and user_port hold network byte order: their bytes in memory are the
    // address.
    let addr = if V6 {
        let w = sa.user_ip6;
        let mut a = [0u8; 16];
        let mut i = 0;
        while i < 4 {
            let b = w[i].to_ne_bytes();
            a[4 * i] = b[0];
            a[4 * i + 1] = b[1];
            a[4 * i + 2] = b[2];
            a[4 * i + 3] = b[3];
            i += 1;
        }
        a
    } else {
        v4_mapped(sa.user_ip4.to_ne_bytes())
    };
    (addr, u16::from_be(sa.user_port as u16))
}

/// Writes a destination into `ctx`; false when the socket's family cannot hold it (an IPv4
/// socket and an IPv6 address).
#[inline(always)]
fn set_destination<const V6: bool>(sa: &mut bpf_sock_addr, addr: &[u8; 16], port: u16) -> bool {
    if V6 {
        let mut i = 0;
        while i < 4 {
            sa.user_ip6[i] = u32::from_ne_bytes([
                addr[4 * i],
                addr[4 * i + 1],
                addr[4 * i + 2],
                addr[4 * i + 3],
            ]);
            i += 1;
        }
    } else {
        match v4_unmapped(addr) {
            Some(a) => sa.user_ip4 = u32::from_ne_bytes(a),
            None => return false,
        }
    }
    sa.user_port = u32::from(port.to_be());
    true
}

/// Translates the destination in `ctx` (connect and sendmsg of both families share this). An
/// IPv6 socket aimed at an IPv4-mapped address finds the IPv4 frontend, since the maps hold
/// IPv4 mapped.
#[inline(always)]
fn translate<const V6: bool>(ctx: &SockAddrContext, l4: u8) -> i32 {
    if crate::host_scope::out_of_scope(ctx) {
        return ALLOW;
    }
    // SAFETY: the kernel hands every cgroup sock_addr program a valid bpf_sock_addr.
    let sa = unsafe { &mut *ctx.sock_addr };
    let (daddr, dport) = destination::<V6>(sa);
    let frontend = ServiceKey::new(daddr, dport, l4, scope::INTERNAL, 0);
    // SAFETY: plain helper calls on the program's own context.
    let (random, client) = unsafe {
        (
            bpf_get_prandom_u32(),
            Client {
                id: bpf_get_netns_cookie(ctx.as_ptr()),
                now: bpf_ktime_get_ns() / 1_000_000_000,
            },
        )
    };
    match decide(&Maps, &frontend, random, client) {
        Decision::NotAService => ALLOW,
        Decision::Reject => {
            crate::stats::rejected(ctx, &frontend);
            reject()
        }
        Decision::Forward {
            backend,
            rev_nat_id,
            affinity,
        } => {
            if !set_destination::<V6>(sa, &backend.addr, backend.port) {
                crate::stats::rejected(ctx, &frontend);
                return reject();
            }
            crate::stats::forwarded(ctx, &frontend, &backend, rev_nat_id);
            if let Some((k, v)) = affinity {
                let _ = LB_AFFINITY.insert(k, v, 0);
            }
            let key = SockRevNatKey {
                cookie: cookie(ctx),
                addr: backend.addr,
                port: backend.port,
                _pad: [0; 6],
            };
            let value = SockRevNat {
                addr: daddr,
                port: dport,
                rev_nat_id,
            };
            // Best effort: without the entry only the reply's source address is the backend's;
            // the connection itself still works.
            let _ = LB_SOCK_REVNAT.insert(key, value, 0);
            ALLOW
        }
    }
}

#[inline(always)]
pub fn connect<const V6: bool>(ctx: &SockAddrContext) -> i32 {
    // SAFETY: as above.
    let protocol = unsafe { (*ctx.sock_addr).protocol };
    match l4_proto(protocol) {
        Some(l4) => translate::<V6>(ctx, l4),
        None => ALLOW,
    }
}

#[inline(always)]
pub fn sendmsg<const V6: bool>(ctx: &SockAddrContext) -> i32 {
    // SAFETY: as above.
    let protocol = unsafe { (*ctx.sock_addr).protocol };
    if protocol == proto::UDP as u32 {
        translate::<V6>(ctx, proto::UDP)
    } else {
        ALLOW
    }
}

/// recvmsg and getpeername: if this socket was translated to the backend in `ctx`, put the
/// frontend back.
#[inline(always)]
pub fn restore<const V6: bool>(ctx: &SockAddrContext) -> i32 {
    if crate::host_scope::out_of_scope(ctx) {
        return ALLOW;
    }
    // SAFETY: as above.
    let sa = unsafe { &mut *ctx.sock_addr };
    let (addr, port) = destination::<V6>(sa);
    let key = SockRevNatKey {
        cookie: cookie(ctx),
        addr,
        port,
        _pad: [0; 6],
    };
    // SAFETY: the value is copied out at once.
    if let Some(front) = unsafe { LB_SOCK_REVNAT.get(key) }.copied() {
        set_destination::<V6>(sa, &front.addr, front.port);
    }
    ALLOW
}
