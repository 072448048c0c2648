//! The maps, BTF-described so that `bpftool map dump` prints keys and values by field name.
//! Their layouts live in `lb-common`; their names in `lb_common::map_names`.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    btf_maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap},
    macros::btf_map,
};
use lb_common::{
    AffinityKey, AffinityValue, Backend, BackendKey, ConnStats, CtKey, CtValue, RevNat, RevNatKey,
    ServiceKey, ServiceValue, SnatValue, SockRevNat, SockRevNatKey, SrcRangeKey, capacity,
    select::Tables,
    xdp_stat,
};

#[btf_map]
pub static LB_SERVICES: HashMap<ServiceKey, ServiceValue, { capacity::SERVICES as usize }> =
    HashMap::new();

#[btf_map]
pub static LB_BACKENDS: HashMap<BackendKey, Backend, { capacity::BACKENDS as usize }> =
    HashMap::new();

#[btf_map]
pub static LB_REV_NAT: HashMap<RevNatKey, RevNat, { capacity::REV_NAT as usize }> = HashMap::new();

/// Which frontend each translated socket addressed, so replies (recvmsg) and getpeername can
/// show the address the application used. LRU: entries of closed sockets age out.
#[btf_map]
pub static LB_SOCK_REVNAT: LruHashMap<
    SockRevNatKey,
    SockRevNat,
    { capacity::SOCK_REV_NAT as usize },
> = LruHashMap::new();

/// Session affinity: the backend each client (netns cookie) last used per frontend.
#[btf_map]
pub static LB_AFFINITY: LruHashMap<AffinityKey, AffinityValue, { capacity::AFFINITY as usize }> =
    LruHashMap::new();

/// Maglev tables of external frontends, back to back; the agent sizes it at load
/// (`--maglev-table-size` x `--maglev-tables`).
#[btf_map]
pub static LB_MAGLEV: Array<
    u32,
    { (capacity::MAGLEV_TABLE_SIZE * capacity::MAGLEV_TABLES) as usize },
> = Array::new();

/// Flows the XDP datapath translated, both directions (LRU: idle flows age out).
#[btf_map]
pub static LB_CT: LruHashMap<CtKey, CtValue, { capacity::CT as usize }> = LruHashMap::new();

/// `loadBalancerSourceRanges` per frontend (reverse-NAT id).
#[btf_map]
pub static LB_SRC_RANGES: LpmTrie<SrcRangeKey, u8, { capacity::SRC_RANGES as usize }> =
    LpmTrie::new();

/// SNATed flows by their reply tuple (backend -> SNAT address and port), LRU.
#[btf_map]
pub static LB_SNAT: LruHashMap<CtKey, SnatValue, { capacity::SNAT as usize }> = LruHashMap::new();

/// The addresses SNAT uses: 0 IPv4 (mapped), 1 IPv6; all zero when the node has none.
#[btf_map]
pub static LB_SNAT_ADDRS: Array<[u8; 16], 2> = Array::new();

/// Packet counters of the XDP and TC programs, by `lb_common::xdp_stat` index.
#[btf_map]
pub static LB_XDP_STATS: PerCpuArray<u64, { xdp_stat::COUNT as usize }> = PerCpuArray::new();

/// Adds one to an `LB_XDP_STATS` counter of this CPU.
#[inline(always)]
pub fn count(stat: u32) {
    if let Some(p) = LB_XDP_STATS.get_ptr_mut(stat) {
        // SAFETY: a per-CPU slot, written only by this CPU while the program runs.
        unsafe { *p += 1 };
    }
}
/// Connections forwarded and rejected per reverse-NAT id, counted per CPU. Not preallocated:
/// memory grows with the frontends that see traffic, not with the capacity times the CPUs.
#[btf_map]
pub static LB_CONN_STATS: PerCpuHashMap<
    u32,
    ConnStats,
    { capacity::CONN_STATS as usize },
    { BPF_F_NO_PREALLOC as usize },
> = PerCpuHashMap::new();

/// The service and backend tables as the shared decision logic sees them.
pub struct Maps;

impl Tables for Maps {
    #[inline(always)]
    fn service(&self, key: &ServiceKey) -> Option<ServiceValue> {
        // SAFETY: the value is copied out at once; no reference outlives the lookup.
        unsafe { LB_SERVICES.get(key).copied() }
    }

    #[inline(always)]
    fn backend(&self, id: u32) -> Option<Backend> {
        // SAFETY: as above.
        unsafe { LB_BACKENDS.get(BackendKey { id }).copied() }
    }

    #[inline(always)]
    fn affinity(&self, key: &AffinityKey) -> Option<AffinityValue> {
        // SAFETY: as above.
        unsafe { LB_AFFINITY.get(key).copied() }
    }
}

/// Backends whose sockets the agent is ending right now (filled just before it runs the
/// socket iterators, emptied after).
#[btf_map]
pub static LB_SOCK_TERM: HashMap<
    lb_common::SockTermKey,
    u8,
    { lb_common::sock_term::TERM_CAPACITY as usize },
> = HashMap::new();

/// Run-time settings of the socket hooks (one entry), e.g. `--socket-lb-scope host`.
#[btf_map]
pub static LB_CONFIG: aya_ebpf::btf_maps::Array<lb_common::LbConfig, 1> =
    aya_ebpf::btf_maps::Array::new();
