//! Map capacity as the kernel has it: pinned maps adopted from a previous agent keep the size
//! they were created with (a BPF map cannot be resized), so a changed `--*-map-size` flag only
//! takes effect after `lb-agent cleanup`. This module notices the difference, says so, and
//! plans against the real sizes; it also turns each sync into fill ratios.

use tracing::warn;

use crate::datapath::maps::MapSizes;
use crate::metrics::{MapLabel, Metrics};
use crate::sync::{Capacity, SyncReport};

/// The capacity to plan with: the maps' real sizes, whatever the flags asked for. Every map
/// whose size differs from its flag is logged and flagged in `lb_map_size_mismatch{map}`.
pub fn reconcile(flags: Capacity, actual: MapSizes, metrics: &Metrics) -> Capacity {
    let maps = [
        (
            "services",
            "--services-map-size",
            flags.services,
            actual.services,
        ),
        (
            "backends",
            "--backends-map-size",
            flags.backends,
            actual.backends,
        ),
        (
            "rev_nat",
            "--rev-nat-map-size",
            flags.rev_nat,
            actual.rev_nat,
        ),
    ];
    for (map, flag, wanted, has) in maps {
        let label = MapLabel::new(map);
        metrics
            .map_max_entries
            .get_or_create(&label)
            .set(has as i64);
        let mismatch = wanted != has;
        metrics
            .map_size_mismatch
            .get_or_create(&label)
            .set(mismatch as i64);
        if mismatch {
            warn!(
                map,
                pinned_max_entries = has,
                flag,
                flag_value = wanted,
                "the pinned {map} map was created with {has} entries, not {wanted}: BPF maps cannot be resized, so the agent keeps using {has}; run `lb-agent cleanup` (Services are not translated until the next agent starts) and restart the agent to get the new size"
            );
        }
    }
    Capacity {
        services: actual.services,
        backends: actual.backends,
        rev_nat: actual.rev_nat,
        ..flags
    }
}

/// Sets `lb_map_fill_ratio{map}` from what a sync left in the maps.
pub fn record_fill(report: &SyncReport, capacity: &Capacity, metrics: &Metrics) {
    let ratio = |entries: usize, max: u32| {
        if max == 0 {
            0.0
        } else {
            entries as f64 / f64::from(max)
        }
    };
    for (map, value) in [
        ("services", ratio(report.service_entries, capacity.services)),
        ("backends", ratio(report.backends, capacity.backends)),
        ("rev_nat", ratio(report.rev_nat_entries, capacity.rev_nat)),
    ] {
        metrics
            .map_fill_ratio
            .get_or_create(&MapLabel::new(map))
            .set(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pinned_size_different_from_the_flag_wins_and_is_flagged() {
        let m = Metrics::new();
        let flags = Capacity {
            services: 1000,
            backends: 64,
            rev_nat: 16,
            ..Capacity::default()
        };
        let cap = reconcile(
            flags,
            MapSizes {
                services: 1000,
                backends: 32,
                rev_nat: 16,
            },
            &m,
        );
        assert_eq!((cap.services, cap.backends, cap.rev_nat), (1000, 32, 16));
        assert_eq!(cap.backends_per_service, flags.backends_per_service);
        let text = m.encode();
        assert!(
            text.contains("lb_map_size_mismatch{map=\"backends\"} 1"),
            "{text}"
        );
        assert!(text.contains("lb_map_size_mismatch{map=\"services\"} 0"));
        assert!(text.contains("lb_map_max_entries{map=\"backends\"} 32"));
    }

    #[test]
    fn fill_ratios() {
        let m = Metrics::new();
        let report = SyncReport {
            service_entries: 50,
            backends: 16,
            rev_nat_entries: 4,
            ..Default::default()
        };
        let cap = Capacity {
            services: 100,
            backends: 64,
            rev_nat: 16,
            ..Capacity::default()
        };
        record_fill(&report, &cap, &m);
        let text = m.encode();
        assert!(
            text.contains("lb_map_fill_ratio{map=\"services\"} 0.5"),
            "{text}"
        );
        assert!(text.contains("lb_map_fill_ratio{map=\"backends\"} 0.25"));
        assert!(text.contains("lb_map_fill_ratio{map=\"rev_nat\"} 0.25"));
    }
}
