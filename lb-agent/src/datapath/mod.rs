//! The kernel side as the agent sees it: where things are pinned, loading and attaching the
//! programs, and the maps as a [`crate::sync::Datapath`].

pub mod bpf_log;
pub mod kfunc;
pub mod link_update;
pub mod loader;
pub mod maps;
pub mod pins;
pub mod scope;
pub mod snat_addrs;
pub mod system;
pub mod xdp_stats;

/// The eBPF object built by `cargo xtask build-ebpf`, embedded at build time.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf.o"));
