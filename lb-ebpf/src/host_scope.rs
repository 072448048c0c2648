//! `--socket-lb-scope host`: only sockets in the agent's own network namespace (the node's)
//! are translated. Pod sockets keep the Service address, so a sidecar proxy in the pod sees
//! the address it routes on.

use aya_ebpf::{EbpfContext, helpers::generated::bpf_get_netns_cookie, programs::SockAddrContext};
use lb_common::config_flags;

use crate::maps::LB_CONFIG;

/// Whether this socket is left alone because of the scope setting.
#[inline(always)]
pub fn out_of_scope(ctx: &SockAddrContext) -> bool {
    let Some(config) = LB_CONFIG.get(0) else {
        return false;
    };
    if config.flags & config_flags::HOST_ONLY == 0 {
        return false;
    }
    let host = config.netns_cookie;
    // SAFETY: a plain helper call on the program's own context.
    unsafe { bpf_get_netns_cookie(ctx.as_ptr()) != host }
}
