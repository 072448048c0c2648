//! The lb eBPF programs. Each hook is a few lines around the shared translation in
//! [`sock`]; the maps are declared once in [`maps`] with the layouts from `lb-common`.
#![no_std]
#![no_main]

mod host_scope;
mod iter;
mod maps;
mod packet;
mod sock;
mod stats;
mod tc;
mod xdp;

use aya_ebpf::{
    macros::{cgroup_sock_addr, classifier, xdp},
    programs::{SockAddrContext, TcContext, XdpContext},
};

/// connect() on IPv4 sockets (TCP, and UDP that calls connect).
#[cgroup_sock_addr(connect4)]
pub fn lb_connect4(ctx: SockAddrContext) -> i32 {
    sock::connect::<false>(&ctx)
}

/// sendto()/sendmsg() with an address on unconnected IPv4 UDP sockets.
#[cgroup_sock_addr(sendmsg4)]
pub fn lb_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock::sendmsg::<false>(&ctx)
}

/// recvfrom()/recvmsg() on IPv4 UDP sockets: show the Service address as the reply's source.
#[cgroup_sock_addr(recvmsg4)]
pub fn lb_recvmsg4(ctx: SockAddrContext) -> i32 {
    sock::restore::<false>(&ctx)
}

/// getpeername() on IPv4 sockets: the address the application connected to, not the backend.
#[cgroup_sock_addr(getpeername4)]
pub fn lb_getpeername4(ctx: SockAddrContext) -> i32 {
    sock::restore::<false>(&ctx)
}

/// connect() on IPv6 sockets, including IPv4-mapped destinations.
#[cgroup_sock_addr(connect6)]
pub fn lb_connect6(ctx: SockAddrContext) -> i32 {
    sock::connect::<true>(&ctx)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn lb_sendmsg6(ctx: SockAddrContext) -> i32 {
    sock::sendmsg::<true>(&ctx)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn lb_recvmsg6(ctx: SockAddrContext) -> i32 {
    sock::restore::<true>(&ctx)
}

#[cgroup_sock_addr(getpeername6)]
pub fn lb_getpeername6(ctx: SockAddrContext) -> i32 {
    sock::restore::<true>(&ctx)
}

/// Traffic arriving from outside the node for NodePorts, LoadBalancer and external IPs.
#[xdp]
pub fn lb_xdp_forward(ctx: XdpContext) -> u32 {
    xdp::forward(&ctx)
}

/// Replies of backends leaving the node: the frontend's address back as their source.
#[classifier]
pub fn lb_tc_reply(ctx: TcContext) -> i32 {
    tc::reply(&ctx)
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
