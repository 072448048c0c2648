//! Per-Service connection counts from the datapath: the programs count forwarded and rejected
//! connect()/sendmsg() calls per CPU in `LB_CONN_STATS`, keyed by reverse-NAT id (one per
//! frontend address and port). At scrape time this collector sums the CPUs, names each id's
//! frontend from `LB_REV_NAT` and its Service from the last synced desired state, and writes
//! `lb_service_connections_total{service,frontend}` and `lb_service_rejects_total{...}`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use anyhow::{Context, Result};
use aya::maps::{HashMap, Map, MapData, PerCpuHashMap};
use lb_common::{ConnStats, RevNat, RevNatKey, map_names};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use tracing::debug;

use crate::datapath::pins::PinPaths;
use crate::k8s::model::DesiredState;
use crate::sync::map_state::addr_from_map;

/// One frontend's counters, summed over CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrontendCounts {
    pub frontend: SocketAddr,
    pub forwarded: u64,
    pub rejected: u64,
}

/// Where the counters come from (the pinned maps, or a fake in tests).
pub trait CountsReader: Send + Sync {
    fn read(&self) -> Result<Vec<FrontendCounts>>;
}

/// Reads the pinned counter and reverse-NAT maps through their own file descriptors, so
/// scraping never waits for the sync loop.
pub struct PinnedCounts {
    stats: PerCpuHashMap<MapData, u32, ConnStats>,
    rev_nat: HashMap<MapData, RevNatKey, RevNat>,
}

impl PinnedCounts {
    pub fn open(pins: &PinPaths) -> Result<Self> {
        let open = |name: &str| -> Result<Map> {
            let path = pins.map(name);
            let data = MapData::from_pin(&path)
                .with_context(|| format!("opening pinned map {}", path.display()))?;
            Map::from_map_data(data).with_context(|| format!("reading map {}", path.display()))
        };
        Ok(Self {
            stats: PerCpuHashMap::try_from(open(map_names::CONN_STATS)?)
                .context("LB_CONN_STATS is not a per-CPU hash map")?,
            rev_nat: HashMap::try_from(open(map_names::REV_NAT)?)
                .context("LB_REV_NAT is not a hash map of the expected layout")?,
        })
    }
}

impl CountsReader for PinnedCounts {
    fn read(&self) -> Result<Vec<FrontendCounts>> {
        let mut out = Vec::new();
        for kv in self.stats.iter() {
            let (id, per_cpu) = kv.context("iterating LB_CONN_STATS")?;
            // Counters of an id whose frontend is gone are about to be removed: skip them.
            let Ok(rev) = self.rev_nat.get(&RevNatKey { id }, 0) else {
                continue;
            };
            let (forwarded, rejected) = per_cpu.iter().fold((0u64, 0u64), |(f, r), c| {
                (f.wrapping_add(c.forwarded), r.wrapping_add(c.rejected))
            });
            out.push(FrontendCounts {
                frontend: SocketAddr::new(addr_from_map(&rev.addr), rev.port),
                forwarded,
                rejected,
            });
        }
        Ok(out)
    }
}

#[derive(Default)]
struct Inner {
    reader: Option<Box<dyn CountsReader>>,
    /// Service (`namespace/name`) of each frontend address and port, from the last sync.
    services: BTreeMap<SocketAddr, String>,
}

/// The collector; cheap to clone. Until a reader is set it reports nothing.
#[derive(Clone, Default)]
pub struct ServiceStats(Arc<RwLock<Inner>>);

impl std::fmt::Debug for ServiceStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServiceStats")
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Labels {
    service: String,
    frontend: String,
}

impl ServiceStats {
    pub fn set_reader(&self, reader: Box<dyn CountsReader>) {
        if let Ok(mut inner) = self.0.write() {
            inner.reader = Some(reader);
        }
    }

    /// Remembers which Service each frontend belongs to (called after each translation).
    pub fn set_services(&self, desired: &DesiredState) {
        let services = desired
            .frontends
            .iter()
            .map(|(f, e)| (SocketAddr::new(f.addr, f.port), e.service.clone()))
            .collect();
        if let Ok(mut inner) = self.0.write() {
            inner.services = services;
        }
    }

    fn samples(&self) -> Vec<(Labels, FrontendCounts)> {
        let Ok(inner) = self.0.read() else {
            return Vec::new();
        };
        let Some(reader) = &inner.reader else {
            return Vec::new();
        };
        let counts = match reader.read() {
            Ok(c) => c,
            Err(e) => {
                debug!(error = %format!("{e:#}"), "cannot read the connection counters");
                return Vec::new();
            }
        };
        let mut out: Vec<_> = counts
            .into_iter()
            .filter_map(|c| {
                let service = inner.services.get(&c.frontend)?.clone();
                Some((
                    Labels {
                        service,
                        frontend: c.frontend.to_string(),
                    },
                    c,
                ))
            })
            .collect();
        out.sort_by(|a, b| (&a.0.service, &a.0.frontend).cmp(&(&b.0.service, &b.0.frontend)));
        out
    }
}

impl Collector for ServiceStats {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let samples = self.samples();
        if samples.is_empty() {
            return Ok(());
        }
        for (name, help, pick) in [
            (
                "service_connections",
                "Connections (connect, or sendmsg on unconnected UDP) sent to a backend, per Service frontend",
                (|c: &FrontendCounts| c.forwarded) as fn(&FrontendCounts) -> u64,
            ),
            (
                "service_rejects",
                "Connections refused with ECONNREFUSED because the frontend had no usable backend",
                |c: &FrontendCounts| c.rejected,
            ),
        ] {
            let counter = ConstCounter::new(0u64);
            let mut family = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            for (labels, counts) in &samples {
                ConstCounter::new(pick(counts)).encode(family.encode_family(labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    struct Fake(Vec<FrontendCounts>);

    impl CountsReader for Fake {
        fn read(&self) -> Result<Vec<FrontendCounts>> {
            Ok(self.0.clone())
        }
    }

    #[test]
    fn counters_are_labelled_with_the_service_and_frontend() {
        let m = Metrics::new();
        assert!(
            !m.encode().contains("service_connections"),
            "nothing before a reader"
        );
        let web: SocketAddr = "10.96.0.10:80".parse().unwrap();
        let gone: SocketAddr = "10.96.0.99:80".parse().unwrap();
        m.service_stats.set_reader(Box::new(Fake(vec![
            FrontendCounts {
                frontend: web,
                forwarded: 7,
                rejected: 2,
            },
            FrontendCounts {
                frontend: gone,
                forwarded: 1,
                rejected: 0,
            },
        ])));
        let svc = serde_json::json!({"metadata": {"name": "web", "namespace": "shop"},
            "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80}]}});
        let t = crate::k8s::translate::translate(&crate::k8s::Snapshot {
            services: vec![serde_json::from_value(svc).unwrap()],
            ..Default::default()
        });
        m.service_stats.set_services(&t.desired);
        let text = m.encode();
        assert!(
            text.contains(
                "lb_service_connections_total{service=\"shop/web\",frontend=\"10.96.0.10:80\"} 7"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "lb_service_rejects_total{service=\"shop/web\",frontend=\"10.96.0.10:80\"} 2"
            ),
            "{text}"
        );
        assert!(
            !text.contains("10.96.0.99"),
            "an unknown frontend is left out: {text}"
        );
        assert!(
            text.contains("# TYPE lb_service_connections counter"),
            "{text}"
        );
    }
}
