//! Per-frontend connection counters (per CPU, summed by the agent when it is scraped).

use aya_ebpf::bindings::BPF_NOEXIST;
use lb_common::{ConnStats, ServiceKey};

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

/// A socket was sent to a backend of the frontend with this reverse-NAT id.
#[inline(always)]
pub fn forwarded(rev_nat_id: u16) {
    bump(rev_nat_id, 1, 0);
}

/// A call to `frontend` was refused (no usable backend).
#[inline(always)]
pub fn rejected(frontend: &ServiceKey) {
    // SAFETY: the value is copied out at once.
    if let Some(svc) = unsafe { LB_SERVICES.get(frontend.with_slot(0)) }.copied() {
        bump(svc.rev_nat_id, 0, 1);
    }
}
