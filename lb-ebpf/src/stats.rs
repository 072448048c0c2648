//! What the hooks report: per-frontend connection counters (per CPU, summed by the agent
//! when it is scraped) and debug log lines through aya-log (off unless the agent runs with
//! `RUST_LOG=lb_ebpf=debug`; the agent sets `AYA_LOG_LEVEL` at load, so a disabled line costs
//! one load and a branch).

use aya_ebpf::{bindings::BPF_NOEXIST, programs::SockAddrContext};
use aya_log_ebpf::debug;
use lb_common::{Backend, ConnStats, ServiceKey};

use crate::maps::{LB_CONN_STATS, LB_SERVICES};

#[inline(always)]
fn bump(rev_nat_id: u16, forwarded: u64, rejected: u64) {
    let key = rev_nat_id as u32;
    match LB_CONN_STATS.get_ptr_mut(key) {
        // SAFETY: this CPU's own slot of the value; programs on one CPU do not preempt each
        // other in a sock_addr hook, so a plain add is exact.
        Some(p) => unsafe {
            (*p).forwarded += forwarded;
            (*p).rejected += rejected;
        },
        None => {
            // First connection to this frontend: the other CPUs' slots start at zero. If another
            // CPU inserted it in between, this one count is lost (best effort).
            let _ = LB_CONN_STATS.insert(
                key,
                ConnStats {
                    forwarded,
                    rejected,
                },
                BPF_NOEXIST as u64,
            );
        }
    }
}

/// A socket aimed at `frontend` was sent to `backend` (of reverse-NAT id `rev_nat_id`).
#[inline(always)]
pub fn forwarded(ctx: &SockAddrContext, frontend: &ServiceKey, backend: &Backend, rev_nat_id: u16) {
    bump(rev_nat_id, 1, 0);
    debug!(
        ctx,
        "[{:i}]:{} proto {} -> [{:i}]:{} (rev_nat {})",
        frontend.addr,
        frontend.port,
        frontend.proto,
        backend.addr,
        backend.port,
        rev_nat_id
    );
}

/// A call to `frontend` was refused (no usable backend).
#[inline(always)]
pub fn rejected(ctx: &SockAddrContext, frontend: &ServiceKey) {
    // SAFETY: the value is copied out at once.
    if let Some(svc) = unsafe { LB_SERVICES.get(frontend.with_slot(0)) }.copied() {
        bump(svc.rev_nat_id, 0, 1);
    }
    debug!(
        ctx,
        "[{:i}]:{} proto {} rejected: no usable backend",
        frontend.addr,
        frontend.port,
        frontend.proto
    );
}
