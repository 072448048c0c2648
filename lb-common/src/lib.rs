//! The one definition of every BPF map layout the load balancer uses, shared by the eBPF
//! programs (`lb-ebpf`, built for `bpfel-unknown-none`) and the agent (`lb-agent`, with the
//! `user` feature, which adds the `bytemuck` and `aya` `Pod` impls).
//!
//! The shape follows Cilium's `bpf/lib/lb.h`: a service table whose slot 0 describes the
//! service and whose slots `1..=count` name backends by id, a backend table keyed by id, and a
//! reverse-NAT table keyed by id. Because a service only points at backends through ids and a
//! count, the agent can change a service's backends without the kernel ever seeing a
//! half-written service (see `lb-agent`'s `sync` module for the write order).
//!
//! Addresses are 16 bytes for both families: IPv4 is stored IPv4-mapped (`::ffff:a.b.c.d`), so
//! one table serves IPv4 and IPv6 and one lookup routine serves every hook. Ports are stored in
//! host byte order so that `bpftool map dump` prints them as people read them.
#![no_std]

pub mod select;

/// Names of the maps, as they appear in the object file, in `bpftool map` and as pin files
/// under `/sys/fs/bpf/<pin-dir>/`. (The kernel keeps 15 bytes of a map name.)
pub mod map_names {
    pub const SERVICES: &str = "LB_SERVICES";
    pub const BACKENDS: &str = "LB_BACKENDS";
    pub const REV_NAT: &str = "LB_REV_NAT";
    /// Per-socket reverse translation (LRU): written by the datapath, never by the agent.
    pub const SOCK_REV_NAT: &str = "LB_SOCK_REVNAT";
    /// Session affinity (LRU): which backend a client last used per frontend.
    pub const AFFINITY: &str = "LB_AFFINITY";
    /// Connections forwarded and rejected per frontend (per-CPU, keyed by reverse-NAT id).
    pub const CONN_STATS: &str = "LB_CONN_STATS";
    pub const ALL: [&str; 6] = [
        SERVICES,
        BACKENDS,
        REV_NAT,
        SOCK_REV_NAT,
        AFFINITY,
        CONN_STATS,
    ];
}

/// Names of the programs in the object file.
pub mod program_names {
    pub const CONNECT4: &str = "lb_connect4";
    pub const SENDMSG4: &str = "lb_sendmsg4";
    pub const RECVMSG4: &str = "lb_recvmsg4";
    pub const GETPEERNAME4: &str = "lb_getpeername4";
    pub const CONNECT6: &str = "lb_connect6";
    pub const SENDMSG6: &str = "lb_sendmsg6";
    pub const RECVMSG6: &str = "lb_recvmsg6";
    pub const GETPEERNAME6: &str = "lb_getpeername6";
    pub const ALL: [&str; 8] = [
        CONNECT4,
        SENDMSG4,
        RECVMSG4,
        GETPEERNAME4,
        CONNECT6,
        SENDMSG6,
        RECVMSG6,
        GETPEERNAME6,
    ];
}

/// Default capacities (entries) of the maps; the agent can override them at load time.
pub mod capacity {
    /// Service slots: one slot 0 per frontend plus one slot per backend of that frontend.
    pub const SERVICES: u32 = 65_536;
    pub const BACKENDS: u32 = 65_536;
    pub const REV_NAT: u32 = 65_536;
    /// Sockets whose translation is remembered for replies and getpeername (LRU).
    pub const SOCK_REV_NAT: u32 = 262_144;
    /// (client, frontend) pairs remembered for `sessionAffinity: ClientIP` (LRU).
    pub const AFFINITY: u32 = 65_536;
    /// Per-frontend connection counters: at most one per reverse-NAT id.
    pub const CONN_STATS: u32 = REV_NAT;
    /// The most backends one frontend can have (slot numbers are u16; slot 0 is the service).
    pub const MAX_BACKENDS_PER_SERVICE: u16 = u16::MAX - 1;
}

/// L4 protocol numbers as in the IP header.
pub mod proto {
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const SCTP: u8 = 132;
}

/// Which traffic a service entry answers. Kept in the key from the start so that a frontend can
/// later carry a second, node-local backend set (for `internalTrafficPolicy: Local` beside
/// `externalTrafficPolicy: Cluster`) without a new map.
pub mod scope {
    pub const EXTERNAL: u8 = 0;
    pub const INTERNAL: u8 = 1;
}

/// Bits of [`ServiceValue::flags`] (slot 0).
pub mod service_flags {
    /// The frontend is a ClusterIP.
    pub const CLUSTER_IP: u16 = 1 << 0;
}

/// Values of [`Backend::state`].
pub mod backend_state {
    /// Ready: chosen for new connections.
    pub const ACTIVE: u8 = 0;
    /// Serving but terminating: kept in the table for sockets already on it.
    pub const TERMINATING: u8 = 1;
}

/// errno values the programs hand back through `bpf_set_retval`.
pub mod errno {
    pub const ECONNREFUSED: i32 = 111;
}

/// Key of the service table: one frontend (address, port, protocol, scope) and a slot.
/// Slot 0 holds the service itself; slots `1..=count` hold its backends.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    /// Frontend address; IPv4 as `::ffff:a.b.c.d`.
    pub addr: [u8; 16],
    /// Frontend port, host byte order.
    pub port: u16,
    /// [`proto`] number.
    pub proto: u8,
    /// [`scope`] value.
    pub scope: u8,
    /// 0 for the service, 1..=count for its backends.
    pub slot: u16,
    pub _pad: u16,
}

/// Value of the service table. In slot 0 it describes the service (`count`, `rev_nat_id`,
/// `flags`, `affinity_timeout`); in slots `1..=count` only `backend_id` is used.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceValue {
    /// Slots 1..=count: the backend's id in the backend table. Slot 0: 0.
    pub backend_id: u32,
    /// Slot 0: session affinity timeout in seconds; 0 means no affinity.
    pub affinity_timeout: u32,
    /// Slot 0: number of active backends (slots 1..=count). 0 means "reject".
    pub count: u16,
    /// Slot 0: id of this frontend in the reverse-NAT table.
    pub rev_nat_id: u16,
    /// Slot 0: [`service_flags`] bits.
    pub flags: u16,
    pub _pad: u16,
}

/// Key of the backend table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendKey {
    pub id: u32,
}

/// Value of the backend table: where a chosen backend lives.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend {
    /// Pod address; IPv4 as `::ffff:a.b.c.d`.
    pub addr: [u8; 16],
    /// Target port, host byte order.
    pub port: u16,
    /// [`proto`] number.
    pub proto: u8,
    /// [`backend_state`] value.
    pub state: u8,
}

/// Key of the reverse-NAT table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RevNatKey {
    pub id: u32,
}

/// Value of the reverse-NAT table: the frontend a translated socket was aimed at, so that
/// replies and `getpeername` can show the address the application used.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RevNat {
    pub addr: [u8; 16],
    pub port: u16,
    pub _pad: u16,
}

/// Key of the per-socket reverse-NAT table: which socket talked to which backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SockRevNatKey {
    /// `bpf_get_socket_cookie` of the socket.
    pub cookie: u64,
    /// Backend address the socket was sent to; IPv4 as `::ffff:a.b.c.d`.
    pub addr: [u8; 16],
    /// Backend port, host byte order.
    pub port: u16,
    pub _pad: [u8; 6],
}

/// Value of the per-socket reverse-NAT table: the frontend the application addressed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SockRevNat {
    pub addr: [u8; 16],
    pub port: u16,
    pub rev_nat_id: u16,
}

/// Key of the affinity table. Socket hooks see no client IP for local clients, so the client is
/// its network namespace cookie (one pod = one client), as Cilium does.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AffinityKey {
    pub client: u64,
    pub rev_nat_id: u16,
    pub _pad: [u8; 6],
}

/// Value of the affinity table: the backend (and the slot it was in) and when it was last used.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AffinityValue {
    pub backend_id: u32,
    pub slot: u16,
    pub _pad: u16,
    /// Seconds on the monotonic clock.
    pub last_used: u64,
}

/// Value of the per-CPU connection counters, keyed by reverse-NAT id (one per frontend
/// address and port). Each CPU counts its own; user space sums them when it is scraped.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnStats {
    /// connect()/sendmsg() calls rewritten to a backend.
    pub forwarded: u64,
    /// Calls failed with ECONNREFUSED because the frontend had no usable backend.
    pub rejected: u64,
}

// The kernel and user space must agree on these byte for byte.
const _: () = {
    use core::mem::{align_of, size_of};
    assert!(size_of::<ServiceKey>() == 24 && align_of::<ServiceKey>() == 2);
    assert!(size_of::<ServiceValue>() == 16 && align_of::<ServiceValue>() == 4);
    assert!(size_of::<BackendKey>() == 4 && align_of::<BackendKey>() == 4);
    assert!(size_of::<Backend>() == 20 && align_of::<Backend>() == 2);
    assert!(size_of::<RevNatKey>() == 4 && align_of::<RevNatKey>() == 4);
    assert!(size_of::<RevNat>() == 20 && align_of::<RevNat>() == 2);
    assert!(size_of::<SockRevNatKey>() == 32 && align_of::<SockRevNatKey>() == 8);
    assert!(size_of::<SockRevNat>() == 20 && align_of::<SockRevNat>() == 2);
    assert!(size_of::<AffinityKey>() == 16 && align_of::<AffinityKey>() == 8);
    assert!(size_of::<AffinityValue>() == 16 && align_of::<AffinityValue>() == 8);
    assert!(size_of::<ConnStats>() == 16 && align_of::<ConnStats>() == 8);
};

/// `::ffff:a.b.c.d` for an IPv4 address given as its four bytes in network order.
pub const fn v4_mapped(octets: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, octets[0], octets[1], octets[2], octets[3],
    ]
}

/// The IPv4 address inside an IPv4-mapped address, if it is one.
pub const fn v4_unmapped(addr: &[u8; 16]) -> Option<[u8; 4]> {
    let mut i = 0;
    while i < 10 {
        if addr[i] != 0 {
            return None;
        }
        i += 1;
    }
    if addr[10] != 0xff || addr[11] != 0xff {
        return None;
    }
    Some([addr[12], addr[13], addr[14], addr[15]])
}

impl ServiceKey {
    pub const fn new(addr: [u8; 16], port: u16, proto: u8, scope: u8, slot: u16) -> Self {
        Self {
            addr,
            port,
            proto,
            scope,
            slot,
            _pad: 0,
        }
    }

    /// The same frontend at another slot.
    pub const fn with_slot(&self, slot: u16) -> Self {
        Self { slot, ..*self }
    }
}

#[cfg(feature = "user")]
mod user {
    use super::*;

    macro_rules! pod {
        ($($t:ty),*) => {$(
            // SAFETY: repr(C), only integer fields and explicit padding fields, so every bit
            // pattern is valid and there are no implicit padding bytes (asserted above).
            unsafe impl bytemuck::Zeroable for $t {}
            unsafe impl bytemuck::Pod for $t {}
            unsafe impl aya::Pod for $t {}
        )*};
    }
    pod!(
        ServiceKey,
        ServiceValue,
        BackendKey,
        Backend,
        RevNatKey,
        RevNat,
        ConnStats
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_mapping_round_trips() {
        let m = v4_mapped([10, 96, 0, 10]);
        assert_eq!(v4_unmapped(&m), Some([10, 96, 0, 10]));
        let mut v6 = [0u8; 16];
        v6[0] = 0xfd;
        assert_eq!(v4_unmapped(&v6), None);
    }

    #[test]
    fn with_slot_keeps_the_frontend() {
        let k = ServiceKey::new(
            v4_mapped([10, 96, 0, 1]),
            80,
            proto::TCP,
            scope::EXTERNAL,
            0,
        );
        let s = k.with_slot(3);
        assert_eq!(
            (s.addr, s.port, s.proto, s.scope, s.slot),
            (k.addr, 80, 6, 0, 3)
        );
    }
}
