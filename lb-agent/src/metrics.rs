//! Prometheus metrics, served on `/metrics`.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::{
    counter::Counter, family::Family, gauge::Gauge, histogram::Histogram,
};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

impl ReasonLabel {
    pub fn new(reason: &str) -> Self {
        Self {
            reason: reason.to_string(),
        }
    }
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
    pub snapshots_published: Counter,
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
            Histogram::new([0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0].into_iter());
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
        let snapshots_published = Counter::default();
        r.register(
            "snapshots_published",
            "Views of the cluster the source handed to the sync loop (a burst of changes folds into one)",
            snapshots_published.clone(),
        );
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
            snapshots_published,
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
