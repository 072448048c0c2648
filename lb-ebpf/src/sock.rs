//! Socket-level translation: rewrite the destination of a socket from a frontend to a backend
//! when the application calls connect() (or sends a datagram with an address), so no packet of
//! the flow is ever NATed; remember the frontend per socket so that replies and getpeername()
//! show the address the application used.

use aya_ebpf::{
    EbpfContext,
    helpers::generated::{bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_set_retval},
    programs::SockAddrContext,
};
use lb_common::{
    ServiceKey, SockRevNat, SockRevNatKey, errno, proto, scope,
    select::{Decision, decide},
    v4_mapped, v4_unmapped,
};

use crate::maps::{LB_SOCK_REVNAT, Maps};

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

/// Translates the destination in `ctx` (connect4 and sendmsg4 share this).
#[inline(always)]
fn translate4(ctx: &SockAddrContext, l4: u8) -> i32 {
    // SAFETY: the kernel hands every cgroup sock_addr program a valid bpf_sock_addr.
    let sa = unsafe { &mut *ctx.sock_addr };
    // user_ip4 and user_port hold network byte order; their bytes in memory are the address.
    let daddr = v4_mapped(sa.user_ip4.to_ne_bytes());
    let dport = u16::from_be(sa.user_port as u16);
    let frontend = ServiceKey::new(daddr, dport, l4, scope::EXTERNAL, 0);
    // SAFETY: a plain helper call.
    let random = unsafe { bpf_get_prandom_u32() };
    match decide(&Maps, &frontend, random) {
        Decision::NotAService => ALLOW,
        Decision::Reject => reject(),
        Decision::Forward {
            backend,
            rev_nat_id,
        } => match v4_unmapped(&backend.addr) {
            Some(addr) => {
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
                // Best effort: without the entry only the reply's source address is the
                // backend's; the connection itself still works.
                let _ = LB_SOCK_REVNAT.insert(key, value, 0);
                sa.user_ip4 = u32::from_ne_bytes(addr);
                sa.user_port = u32::from(backend.port.to_be());
                ALLOW
            }
            // An IPv4 socket cannot reach an IPv6 backend.
            None => reject(),
        },
    }
}

#[inline(always)]
pub fn connect4(ctx: &SockAddrContext) -> i32 {
    // SAFETY: as above.
    let protocol = unsafe { (*ctx.sock_addr).protocol };
    match l4_proto(protocol) {
        Some(l4) => translate4(ctx, l4),
        None => ALLOW,
    }
}

#[inline(always)]
pub fn sendmsg4(ctx: &SockAddrContext) -> i32 {
    // SAFETY: as above.
    let protocol = unsafe { (*ctx.sock_addr).protocol };
    if protocol == proto::UDP as u32 {
        translate4(ctx, proto::UDP)
    } else {
        ALLOW
    }
}

/// recvmsg4 and getpeername4: if this socket was translated to the backend in `ctx`, put the
/// frontend back.
#[inline(always)]
pub fn restore4(ctx: &SockAddrContext) -> i32 {
    // SAFETY: as above.
    let sa = unsafe { &mut *ctx.sock_addr };
    let key = SockRevNatKey {
        cookie: cookie(ctx),
        addr: v4_mapped(sa.user_ip4.to_ne_bytes()),
        port: u16::from_be(sa.user_port as u16),
        _pad: [0; 6],
    };
    // SAFETY: the value is copied out at once.
    if let Some(front) = unsafe { LB_SOCK_REVNAT.get(key) }.copied()
        && let Some(addr) = v4_unmapped(&front.addr)
    {
        sa.user_ip4 = u32::from_ne_bytes(addr);
        sa.user_port = u32::from(front.port.to_be());
    }
    ALLOW
}
