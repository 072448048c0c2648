//! The lb agent as a library: the binary in `main.rs` is a thin CLI over these modules, and
//! the tests drive them directly.
//!
//! Data flows one way: [`source`] (manifests or the API server) -> [`k8s`] (translation to the
//! desired state) -> [`sync`] (ordered map writes) -> [`datapath`] (the BPF maps).

pub mod app;
pub mod datapath;
pub mod explain;
pub mod hc_node_port;
pub mod health;
pub mod inspect;
pub mod k8s;
pub mod map_capacity;
pub mod metrics;
pub mod node_addrs;
pub mod probe;
pub mod service_stats;
pub mod sockdestroy;
pub mod source;
pub mod sync;
