//! Prometheus metrics, served on `/metrics`.

use std::sync::Arc;

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::{
    counter::Counter, family::Family, gauge::Gauge, histogram::Histogram,
};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

/// Which map a metric is about: `services`, `backends` or `rev_nat`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MapLabel {
    pub map: String,
}

impl MapLabel {
    pub fn new(map: &str) -> Self {
        Self {
            map: map.to_string(),
        }
    }
}

impl ReasonLabel {
    pub fn new(reason: &str) -> Self {
        Self {
            reason: reason.to_string(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtoLabel {
    pub proto: String,
}

impl ProtoLabel {
    /// From an L4 protocol number.
    pub fn new(l4: u8) -> Self {
        let proto = match l4 {
            lb_common::proto::TCP => "tcp".to_string(),
            lb_common::proto::UDP => "udp".to_string(),
            n => n.to_string(),
        };
        Self { proto }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

/// Handles to every metric; cheap to clone (each is reference-counted).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub manifest_errors: Counter,
    pub watch_errors: Counter,
    pub translation_problems: Family<ReasonLabel, Counter>,
    pub capacity_overflows: Family<ReasonLabel, Counter>,
    pub map_write_errors: Counter,
    pub syncs: Counter,
    pub sync_duration_seconds: Histogram,
    pub frontends: Gauge,
    pub backends: Gauge,
    pub service_entries: Gauge,
    pub sockets_destroyed: Family<ProtoLabel, Counter>,
    pub socket_destroy_failures: Counter,
    /// Packets of the XDP/TC datapath by what happened to them (from `LB_XDP_STATS`).
    pub xdp_packets: Family<ResultLabel, Counter>,
    pub snapshots_published: Counter,
    pub map_fill_ratio: Family<MapLabel, Gauge<f64, AtomicU64>>,
    pub map_max_entries: Family<MapLabel, Gauge>,
    pub map_size_mismatch: Family<MapLabel, Gauge>,
    pub service_stats: crate::service_stats::ServiceStats,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("lb");
        let manifest_errors = Counter::default();
        r.register(
            "manifest_errors",
            "Manifest files or documents that could not be used",
            manifest_errors.clone(),
        );
        let watch_errors = Counter::default();
        r.register(
            "watch_errors",
            "Errors from the Kubernetes watches (each retried with backoff)",
            watch_errors.clone(),
        );
        let translation_problems = Family::<ReasonLabel, Counter>::default();
        r.register(
            "translation_problems",
            "Malformed parts of Services and EndpointSlices that were skipped, by reason (counted once when they appear)",
            translation_problems.clone(),
        );
        let capacity_overflows = Family::<ReasonLabel, Counter>::default();
        r.register(
            "capacity_overflows",
            "Frontends or backends left out because a map or a per-service limit was full, by reason",
            capacity_overflows.clone(),
        );
        let map_write_errors = Counter::default();
        r.register(
            "map_write_errors",
            "BPF map writes that failed (the maps are re-read and the write retried)",
            map_write_errors.clone(),
        );
        let syncs = Counter::default();
        r.register(
            "syncs",
            "Times the maps were brought up to date",
            syncs.clone(),
        );
        let sync_duration_seconds =
            Histogram::new([0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]);
        r.register(
            "sync_duration_seconds",
            "Time to translate a snapshot and write the maps",
            sync_duration_seconds.clone(),
        );
        let frontends = Gauge::default();
        r.register(
            "frontends",
            "Frontends (address, port, protocol) in the maps",
            frontends.clone(),
        );
        let backends = Gauge::default();
        r.register(
            "backends",
            "Distinct backends in the maps",
            backends.clone(),
        );
        let service_entries = Gauge::default();
        r.register(
            "service_map_entries",
            "Entries in the service map (slot 0 plus one per backend of each frontend)",
            service_entries.clone(),
        );
        let sockets_destroyed = Family::<ProtoLabel, Counter>::default();
        r.register(
            "sockets_destroyed",
            "Sockets ended because their backend left the Service, by protocol",
            sockets_destroyed.clone(),
        );
        let socket_destroy_failures = Counter::default();
        r.register(
            "socket_destroy_failures",
            "Sockets on a departed backend that could not be ended, and namespaces that could not be searched",
            socket_destroy_failures.clone(),
        );
        let xdp_packets = Family::<ResultLabel, Counter>::default();
        r.register(
            "xdp_packets",
            "Packets seen by the XDP forward path and the TC reply path, by result: passed (no frontend), forwarded, dropped_source_range, dropped_no_backend, replies, fragments, snated, snat_replies, dropped_snat",
            xdp_packets.clone(),
        );
        let snapshots_published = Counter::default();
        r.register(
            "snapshots_published",
            "Views of the cluster the source handed to the sync loop (a burst of changes folds into one)",
            snapshots_published.clone(),
        );
        let map_fill_ratio = Family::<MapLabel, Gauge<f64, AtomicU64>>::default();
        r.register(
            "map_fill_ratio",
            "Entries over max_entries of each map the agent writes, after the last sync",
            map_fill_ratio.clone(),
        );
        let map_max_entries = Family::<MapLabel, Gauge>::default();
        r.register(
            "map_max_entries",
            "max_entries of each map the agent writes, as the kernel has it",
            map_max_entries.clone(),
        );
        let map_size_mismatch = Family::<MapLabel, Gauge>::default();
        r.register(
            "map_size_mismatch",
            "1 when an adopted pinned map's size differs from its --*-map-size flag (`lb-agent cleanup` needed for the new size)",
            map_size_mismatch.clone(),
        );
        let service_stats = crate::service_stats::ServiceStats::default();
        r.register_collector(Box::new(service_stats.clone()));
        Self {
            registry: Arc::new(r),
            manifest_errors,
            watch_errors,
            translation_problems,
            capacity_overflows,
            map_write_errors,
            syncs,
            sync_duration_seconds,
            frontends,
            backends,
            service_entries,
            sockets_destroyed,
            socket_destroy_failures,
            xdp_packets,
            snapshots_published,
            map_fill_ratio,
            map_max_entries,
            map_size_mismatch,
            service_stats,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_counters_with_reasons() {
        let m = Metrics::new();
        m.translation_problems
            .get_or_create(&ReasonLabel::new("invalid_cluster_ip"))
            .inc();
        m.manifest_errors.inc();
        let text = m.encode();
        assert!(
            text.contains("lb_translation_problems_total{reason=\"invalid_cluster_ip\"} 1"),
            "{text}"
        );
        assert!(text.contains("lb_manifest_errors_total 1"), "{text}");
        assert!(text.contains("# EOF"));
    }
}
