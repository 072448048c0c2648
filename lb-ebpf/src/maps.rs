//! The maps, BTF-described so that `bpftool map dump` prints keys and values by field name.
//! Their layouts live in `lb-common`; their names in `lb_common::map_names`.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    btf_maps::{HashMap, LruHashMap, PerCpuHashMap},
    macros::btf_map,
};
use lb_common::{
    AffinityKey, AffinityValue, Backend, BackendKey, ConnStats, RevNat, RevNatKey, ServiceKey,
    ServiceValue, SockRevNat, SockRevNatKey, capacity, select::Tables,
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
