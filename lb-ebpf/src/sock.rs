//! Socket-level translation: rewrite the destination of a socket from a frontend to a backend
//! when the application calls connect(), so no packet of the connection is ever NATed.

use aya_ebpf::{
    helpers::generated::{bpf_get_prandom_u32, bpf_set_retval},
    programs::SockAddrContext,
};
use lb_common::{
    ServiceKey, errno, proto, scope,
    select::{Decision, decide},
    v4_mapped, v4_unmapped,
};

use crate::maps::Maps;

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
pub fn connect4(ctx: &SockAddrContext) -> i32 {
    // SAFETY: the kernel hands every cgroup sock_addr program a valid bpf_sock_addr.
    let sa = unsafe { &mut *ctx.sock_addr };
    let Some(l4) = l4_proto(sa.protocol) else {
        return ALLOW;
    };
    // user_ip4 and user_port hold network byte order; their bytes in memory are the address.
    let daddr = sa.user_ip4.to_ne_bytes();
    let dport = u16::from_be(sa.user_port as u16);
    let frontend = ServiceKey::new(v4_mapped(daddr), dport, l4, scope::EXTERNAL, 0);
    // SAFETY: a plain helper call.
    let random = unsafe { bpf_get_prandom_u32() };
    match decide(&Maps, &frontend, random) {
        Decision::NotAService => ALLOW,
        Decision::Reject => reject(),
        Decision::Forward { backend, .. } => match v4_unmapped(&backend.addr) {
            Some(addr) => {
                sa.user_ip4 = u32::from_ne_bytes(addr);
                sa.user_port = u32::from(backend.port.to_be());
                ALLOW
            }
            // An IPv4 socket cannot reach an IPv6 backend.
            None => reject(),
        },
    }
}
