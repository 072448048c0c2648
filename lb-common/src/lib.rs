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

pub mod csum;
pub mod flow;
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
    /// Maglev lookup tables of external frontends, back to back (`Array` of backend ids).
    pub const MAGLEV: &str = "LB_MAGLEV";
    /// Connection tracking of the XDP datapath (LRU): forward and reply entries per flow.
    pub const CT: &str = "LB_CT";
    /// `loadBalancerSourceRanges` (LPM trie keyed by reverse-NAT id and source prefix).
    pub const SRC_RANGES: &str = "LB_SRC_RANGES";
    /// Per-CPU packet counters of the XDP and TC programs, indexed by [`crate::xdp_stat`].
    pub const XDP_STATS: &str = "LB_XDP_STATS";
    /// SNATed flows of the XDP datapath by their reply tuple (LRU).
    pub const SNAT: &str = "LB_SNAT";
    /// The addresses SNAT uses: entry 0 IPv4 (mapped), entry 1 IPv6; zero: none.
    pub const SNAT_ADDRS: &str = "LB_SNAT_ADDRS";

    /// Connections forwarded and rejected per frontend (per-CPU, keyed by reverse-NAT id).
    pub const CONN_STATS: &str = "LB_CONN_STATS";
    pub const ALL: [&str; 12] = [
        SERVICES,
        BACKENDS,
        REV_NAT,
        SOCK_REV_NAT,
        AFFINITY,
        MAGLEV,
        CT,
        SRC_RANGES,
        XDP_STATS,
        CONN_STATS,
        SNAT,
        SNAT_ADDRS,
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
    /// XDP on the node's external interfaces: NodePort/LoadBalancer/external IP traffic.
    pub const XDP_FORWARD: &str = "lb_xdp_forward";
    /// TC egress on the same interfaces: replies of backends get the frontend's address back.
    pub const TC_REPLY: &str = "lb_tc_reply";
    /// The cgroup sock_addr programs.
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
    /// Entries of one Maglev table: a prime near 16k, as Cilium's default, so a backend
    /// change moves about 1/N of the flows and the spread is within a few percent.
    pub const MAGLEV_TABLE_SIZE: u32 = 16_381;
    /// Maglev tables (external frontends with one); `LB_MAGLEV` holds this many tables.
    pub const MAGLEV_TABLES: u32 = 64;
    /// Flows tracked by the XDP datapath (two entries each).
    pub const CT: u32 = 131_072;
    /// SNATed flows (to backends on other nodes).
    pub const SNAT: u32 = 65_536;
    /// `loadBalancerSourceRanges` prefixes over all Services.
    pub const SRC_RANGES: u32 = 16_384;
}

/// Indexes of `LB_XDP_STATS`.
pub mod xdp_stat {
    /// Packets that were no frontend's (passed untouched).
    pub const PASSED: u32 = 0;
    /// Packets rewritten to a backend.
    pub const FORWARDED: u32 = 1;
    /// Dropped: the source is outside `loadBalancerSourceRanges`.
    pub const DROPPED_SOURCE_RANGE: u32 = 2;
    /// Dropped: the frontend has no backend (as kube-proxy drops).
    pub const DROPPED_NO_BACKEND: u32 = 3;
    /// Replies given the frontend's address back (TC egress).
    pub const REPLIES: u32 = 4;
    /// Fragments passed untouched (their ports are not in every fragment).
    pub const FRAGMENTS: u32 = 5;
    /// Packets to a remote backend SNATed to this node.
    pub const SNATED: u32 = 6;
    /// Replies of SNATed flows translated back.
    pub const SNAT_REPLIES: u32 = 7;
    /// Dropped: no SNAT address, or no free SNAT port for that backend.
    pub const DROPPED_SNAT: u32 = 8;
    pub const COUNT: u32 = 9;
}

/// L4 protocol numbers as in the IP header.
pub mod proto {
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const SCTP: u8 = 132;
}

/// Which traffic a service entry answers ([`ServiceKey::scope`]). A frontend can have a
/// different backend set for each: kube-proxy applies `internalTrafficPolicy` and the
/// short-circuit of node/pod traffic to cluster-wide endpoints to what starts on the node, and
/// `externalTrafficPolicy` to what arrives from outside it.
pub mod scope {
    /// Traffic arriving from outside the node (NodePort, LoadBalancer and external IPs): read by
    /// the XDP datapath. Backends follow `externalTrafficPolicy`.
    pub const EXTERNAL: u8 = 0;
    /// Traffic from sockets on this node (pods and the node itself): read by the socket hooks.
    /// Every frontend has an internal entry; a ClusterIP's backends follow
    /// `internalTrafficPolicy`, the other kinds use cluster-wide endpoints, as kube-proxy
    /// short-circuits local traffic to external addresses.
    pub const INTERNAL: u8 = 1;
}

/// Bits of [`ServiceValue::flags`] (slot 0): what kind of address the frontend is and which
/// policy chose its backends. Only the agent and `inspect` read them; the decision in the
/// kernel needs only the count.
pub mod service_flags {
    /// The frontend is a ClusterIP.
    pub const CLUSTER_IP: u16 = 1 << 0;
    /// A node address (or 127.0.0.1) on a nodePort.
    pub const NODE_PORT: u16 = 1 << 1;
    /// A `status.loadBalancer.ingress[].ip`.
    pub const LOAD_BALANCER: u16 = 1 << 2;
    /// One of `spec.externalIPs`.
    pub const EXTERNAL_IP: u16 = 1 << 3;
    /// Backends limited to this node's endpoints (a `Local` traffic policy for this scope).
    pub const LOCAL_ONLY: u16 = 1 << 4;
    /// Backends narrowed to this node's zone by topology hints.
    pub const TOPOLOGY_ZONE: u16 = 1 << 5;
    /// Backends narrowed to this node by node hints (`PreferSameNode`).
    pub const TOPOLOGY_NODE: u16 = 1 << 6;
    /// No endpoint was ready: serving and terminating ones are used (KEP-1669).
    pub const TERMINATING_FALLBACK: u16 = 1 << 7;
    /// `loadBalancerSourceRanges` apply: the XDP datapath drops sources outside them.
    pub const SOURCE_RANGES: u16 = 1 << 8;
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
    /// Slot 0 of an external-scope frontend: its Maglev table in `LB_MAGLEV`, plus one
    /// (0: none, pick at random among the slots).
    pub maglev_table: u16,
    /// Slot 0 with a Maglev table: the table's size; it starts at entry
    /// `(maglev_table - 1) * maglev_size` of `LB_MAGLEV`.
    pub maglev_size: u32,
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
    /// [`backend_flags`] bits.
    pub flags: u8,
    pub _pad: u8,
}

/// Bits of [`Backend::flags`].
pub mod backend_flags {
    /// The endpoint is on another node: traffic from outside sent to it is SNATed to this
    /// node's address, so the replies come back through this node to be translated.
    pub const REMOTE: u8 = 1 << 0;
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

/// Key of the XDP connection-tracking map: a flow as seen in one direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CtKey {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Host byte order.
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// Directions of a [`CtValue`].
pub mod ct_dir {
    /// Client to frontend: `backend_id` says where the flow goes.
    pub const FORWARD: u8 = 0;
    /// Backend to client: `addr`/`port` is the frontend to show as the source.
    pub const REPLY: u8 = 1;
}

/// Value of the XDP connection-tracking map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CtValue {
    /// REPLY: the frontend address; FORWARD: the backend address chosen.
    pub addr: [u8; 16],
    pub port: u16,
    /// [`ct_dir`] value.
    pub dir: u8,
    pub _pad: u8,
    /// FORWARD: the backend's id (checked against `LB_BACKENDS` on every packet).
    pub backend_id: u32,
    /// FORWARD to a remote backend: the source port the flow is SNATed to (0: no SNAT).
    pub snat_port: u16,
    pub _pad2: u16,
}

/// Value of `LB_SNAT`, keyed by a [`CtKey`] of the reply direction (backend -> SNAT address and
/// port): who the flow really is, to undo the SNAT and the DNAT on the reply.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SnatValue {
    pub client: [u8; 16],
    pub frontend: [u8; 16],
    pub client_port: u16,
    pub frontend_port: u16,
}

/// Source ports SNAT takes: above Linux's default `ip_local_port_range` (32768-60999), so they
/// do not meet the node's own connections.
pub mod snat_ports {
    pub const FIRST: u16 = 61_000;
    pub const COUNT: u16 = 4_535;
}

/// Data of an `LB_SRC_RANGES` key: the frontend (by reverse-NAT id) and a source prefix. The
/// LPM prefix length counts the 32 bits of `rev_nat_id` and `_pad` first.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SrcRangeKey {
    /// Big-endian, so that the trie compares it bit by bit from the top.
    pub rev_nat_id: [u8; 2],
    pub _pad: [u8; 2],
    /// Source address; IPv4 as `::ffff:a.b.c.d` (so a /n IPv4 range is a /(96+n) prefix).
    pub addr: [u8; 16],
}

impl SrcRangeKey {
    pub const fn new(rev_nat_id: u16, addr: [u8; 16]) -> Self {
        Self {
            rev_nat_id: rev_nat_id.to_be_bytes(),
            _pad: [0; 2],
            addr,
        }
    }

    /// LPM prefix length for a source prefix of `bits` bits of the 16-byte address form.
    pub const fn prefix_len(bits: u32) -> u32 {
        32 + bits
    }
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
    assert!(size_of::<ServiceValue>() == 20 && align_of::<ServiceValue>() == 4);
    assert!(size_of::<BackendKey>() == 4 && align_of::<BackendKey>() == 4);
    assert!(size_of::<Backend>() == 22 && align_of::<Backend>() == 2);
    assert!(size_of::<RevNatKey>() == 4 && align_of::<RevNatKey>() == 4);
    assert!(size_of::<RevNat>() == 20 && align_of::<RevNat>() == 2);
    assert!(size_of::<SockRevNatKey>() == 32 && align_of::<SockRevNatKey>() == 8);
    assert!(size_of::<SockRevNat>() == 20 && align_of::<SockRevNat>() == 2);
    assert!(size_of::<AffinityKey>() == 16 && align_of::<AffinityKey>() == 8);
    assert!(size_of::<AffinityValue>() == 16 && align_of::<AffinityValue>() == 8);
    assert!(size_of::<CtKey>() == 40 && align_of::<CtKey>() == 2);
    assert!(size_of::<CtValue>() == 28 && align_of::<CtValue>() == 4);
    assert!(size_of::<SnatValue>() == 36 && align_of::<SnatValue>() == 2);
    assert!(size_of::<SrcRangeKey>() == 20 && align_of::<SrcRangeKey>() == 1);
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
        CtKey,
        CtValue,
        SnatValue,
        SrcRangeKey,
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

/// Ending sockets that are connected to a backend which left its Service, and the agent's
/// run-time settings the socket hooks read.
pub mod sock_term {
    /// Names of the two maps (not pinned: each agent fills its own).
    pub const TERM_MAP: &str = "LB_SOCK_TERM";
    pub const CONFIG_MAP: &str = "LB_CONFIG";
    /// Entries of [`TERM_MAP`]; the agent fills it in batches of at most this many.
    pub const TERM_CAPACITY: u32 = 4096;
    /// The socket iterator programs (sections `iter/udp` and `iter/tcp`).
    pub const ITER_UDP: &str = "lb_iter_udp";
    pub const ITER_TCP: &str = "lb_iter_tcp";
    /// What an iterator writes to its output per socket it tried to end.
    pub const OUT_DESTROYED: u8 = b'd';
    pub const OUT_FAILED: u8 = b'f';
    /// Socket states never ended (as in the kernel's `include/net/tcp_states.h`).
    pub const TCP_ESTABLISHED: u8 = 1;
    pub const TCP_TIME_WAIT: u8 = 6;
    pub const TCP_CLOSE: u8 = 7;
    pub const TCP_LISTEN: u8 = 10;
    pub const TCP_NEW_SYN_RECV: u8 = 12;
    /// Whether a socket in `state` may be ended: not TIME_WAIT, LISTEN, NEW_SYN_RECV, and
    /// not an unconnected (CLOSE) one.
    pub const fn endable_state(state: u8) -> bool {
        !matches!(
            state,
            TCP_TIME_WAIT | TCP_CLOSE | TCP_LISTEN | TCP_NEW_SYN_RECV
        )
    }
    /// The kernel's `struct sock_common` fields the iterators read, by offset. The prefix up
    /// to `skc_state` has not moved in many years; `skc_v6_daddr` sits after `skc_net`
    /// (64-bit, CONFIG_NET_NS, CONFIG_IPV6). A wrong read cannot end a wrong socket: a socket
    /// is only ended when its cookie and address are also in `LB_SOCK_REVNAT`.
    pub const SKC_DADDR: usize = 0;
    pub const SKC_DPORT: usize = 12;
    pub const SKC_FAMILY: usize = 16;
    pub const SKC_STATE: usize = 18;
    pub const SKC_V6_DADDR: usize = 56;
    pub const AF_INET: u16 = 2;
    pub const AF_INET6: u16 = 10;
}

/// Bits of [`LbConfig::flags`].
pub mod config_flags {
    /// `--socket-lb-scope host`: translate only sockets in the agent's network namespace.
    pub const HOST_ONLY: u32 = 1 << 0;
}

/// The one entry of the `LB_CONFIG` array: settings the socket hooks read at run time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LbConfig {
    /// [`config_flags`] bits.
    pub flags: u32,
    pub _pad: u32,
    /// Network namespace cookie of the agent (`SO_NETNS_COOKIE`), for `HOST_ONLY`.
    pub netns_cookie: u64,
}

/// Key of `LB_SOCK_TERM`: a backend that left the frontend with `rev_nat_id`. Sockets
/// translated through that frontend (per `LB_SOCK_REVNAT`) and still connected to the backend
/// are ended.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SockTermKey {
    /// Backend address; IPv4 as `::ffff:a.b.c.d`.
    pub addr: [u8; 16],
    /// Backend port, host byte order.
    pub port: u16,
    /// [`proto`] number.
    pub proto: u8,
    pub _pad: u8,
    pub rev_nat_id: u16,
}

const _: () = {
    use core::mem::{align_of, size_of};
    assert!(size_of::<LbConfig>() == 16 && align_of::<LbConfig>() == 8);
    assert!(size_of::<SockTermKey>() == 22 && align_of::<SockTermKey>() == 2);
};

#[cfg(feature = "user")]
mod user_sock_term {
    use super::*;
    // SAFETY: repr(C), integer fields and explicit padding only (asserted above).
    unsafe impl bytemuck::Zeroable for LbConfig {}
    unsafe impl bytemuck::Pod for LbConfig {}
    unsafe impl aya::Pod for LbConfig {}
    unsafe impl bytemuck::Zeroable for SockTermKey {}
    unsafe impl bytemuck::Pod for SockTermKey {}
    unsafe impl aya::Pod for SockTermKey {}
    // Read by the agent when it ends sockets through netlink.
    unsafe impl bytemuck::Zeroable for SockRevNatKey {}
    unsafe impl bytemuck::Pod for SockRevNatKey {}
    unsafe impl aya::Pod for SockRevNatKey {}
    unsafe impl bytemuck::Zeroable for SockRevNat {}
    unsafe impl bytemuck::Pod for SockRevNat {}
    unsafe impl aya::Pod for SockRevNat {}
}

#[cfg(test)]
mod sock_term_tests {
    use super::sock_term::*;

    #[test]
    fn only_connected_states_are_endable() {
        assert!(endable_state(TCP_ESTABLISHED));
        assert!(endable_state(2)); // SYN_SENT
        for s in [TCP_TIME_WAIT, TCP_CLOSE, TCP_LISTEN, TCP_NEW_SYN_RECV] {
            assert!(!endable_state(s), "{s}");
        }
    }
}
