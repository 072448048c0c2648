//! Keeps the maps equal to the desired state: plan the writes, apply them in order, remember
//! what the maps hold. The datapath sits behind [`Datapath`] so this is tested against a fake.

pub mod maglev;
pub mod map_state;
pub mod plan;

use anyhow::Result;
use tracing::{debug, warn};

pub use map_state::{MapState, Op};
pub use plan::{Capacity, Overflow};

use crate::k8s::model::DesiredState;

/// Where map writes go.
pub trait Datapath {
    fn apply(&mut self, op: &Op) -> Result<()>;
    /// What the maps hold now (read back from the kernel for the real datapath).
    fn read(&self) -> Result<MapState>;
}

/// The in-memory datapath: a [`MapState`] that applies writes to itself.
impl Datapath for MapState {
    fn apply(&mut self, op: &Op) -> Result<()> {
        MapState::apply(self, op);
        Ok(())
    }
    fn read(&self) -> Result<MapState> {
        Ok(self.clone())
    }
}

/// What one sync did.
#[derive(Debug, Default)]
pub struct SyncReport {
    pub writes: usize,
    pub failed_writes: usize,
    pub overflows: Vec<Overflow>,
    pub frontends: usize,
    pub backends: usize,
    pub service_entries: usize,
    /// (backend, frontend) pairs that left in this sync: their sockets are ended.
    pub departed: std::collections::BTreeSet<lb_common::SockTermKey>,
    pub rev_nat_entries: usize,
    /// Entries still left out for lack of room that only the next sync's pass would make.
    pub deferred: bool,
}

/// Passes one sync may take (see [`plan::Plan::deferred`]).
const MAX_PASSES: usize = 4;

pub struct Syncer<D> {
    datapath: D,
    capacity: Capacity,
    /// What the maps hold, as far as we know; None when it must be read back first.
    known: Option<MapState>,
    /// The last sync still left entries out for room it would only have after another pass.
    deferred: bool,
}

impl<D: Datapath> Syncer<D> {
    /// Starts from whatever the maps already hold (a previous agent's state is adopted: ids are
    /// kept and only differences are written).
    pub fn new(datapath: D, capacity: Capacity) -> Self {
        Self {
            datapath,
            capacity,
            known: None,
            deferred: false,
        }
    }

    pub fn datapath(&self) -> &D {
        &self.datapath
    }

    pub fn capacity(&self) -> &Capacity {
        &self.capacity
    }

    pub fn sync(&mut self, desired: &DesiredState) -> Result<SyncReport> {
        let mut writes = 0;
        let mut passes = 0;
        loop {
            passes += 1;
            let mut report = self.sync_once(desired)?;
            writes += report.writes;
            report.writes = writes;
            // A plan that left entries out only until its own deletions are done gets another
            // pass at once (a full map adds before it removes); two passes always suffice when
            // the desired state fits, the bound is a guard.
            self.deferred = report.deferred;
            if !report.deferred || report.failed_writes > 0 || passes >= MAX_PASSES {
                if report.deferred {
                    debug!(passes, "entries still deferred after the last pass");
                }
                return Ok(report);
            }
            debug!(
                passes,
                "the maps were full until this pass's deletions: planning again"
            );
        }
    }

    fn sync_once(&mut self, desired: &DesiredState) -> Result<SyncReport> {
        let current = match self.known.take() {
            Some(s) => s,
            None => self.datapath.read()?,
        };
        let plan = plan::plan(&current, desired, &self.capacity);
        let mut report = SyncReport {
            writes: plan.ops.len(),
            overflows: plan.overflows,
            frontends: plan.target.frontends().count(),
            backends: plan.target.backends.len(),
            service_entries: plan.target.services.len(),
            departed: crate::sockdestroy::departed(&current, &plan.target),
            rev_nat_entries: plan.target.rev_nat.len(),
            deferred: plan.deferred,
            ..Default::default()
        };
        for op in &plan.ops {
            if let Err(e) = self.datapath.apply(op) {
                report.failed_writes += 1;
                warn!(error = %format!("{e:#}"), ?op, "map write failed; will re-read the maps and retry on the next sync");
            }
        }
        debug!(
            writes = report.writes,
            failed = report.failed_writes,
            "sync applied"
        );
        // After a failure the maps are not what the plan says: read them back next time.
        self.known = (report.failed_writes == 0).then_some(plan.target);
        Ok(report)
    }

    /// Whether the last sync left the maps exactly as planned.
    pub fn in_sync(&self) -> bool {
        self.known.is_some() && !self.deferred
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::{Snapshot, translate::translate};

    /// A datapath that fails the n-th write.
    struct Flaky {
        inner: MapState,
        fail_at: usize,
        seen: usize,
    }

    impl Datapath for Flaky {
        fn apply(&mut self, op: &Op) -> Result<()> {
            self.seen += 1;
            if self.seen == self.fail_at {
                anyhow::bail!("injected failure");
            }
            self.inner.apply(op);
            Ok(())
        }
        fn read(&self) -> Result<MapState> {
            Ok(self.inner.clone())
        }
    }

    fn desired(n: usize) -> DesiredState {
        let svc = serde_json::json!({"metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}});
        let eps: Vec<_> = (0..n)
            .map(|i| serde_json::json!({"addresses": [format!("10.244.0.{}", i + 1)]}))
            .collect();
        let slice = serde_json::json!({"metadata": {"name": "web-1", "namespace": "default",
            "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4", "ports": [{"port": 8080}], "endpoints": eps});
        translate(&Snapshot {
            services: vec![serde_json::from_value(svc).unwrap()],
            slices: vec![serde_json::from_value(slice).unwrap()],
            ..Default::default()
        })
        .desired
    }

    #[test]
    fn a_failed_write_is_retried_after_reading_the_maps_back() {
        let mut s = Syncer::new(
            Flaky {
                inner: MapState::default(),
                fail_at: 2,
                seen: 0,
            },
            Capacity::default(),
        );
        let r = s.sync(&desired(3)).unwrap();
        assert_eq!(r.failed_writes, 1);
        assert!(!s.in_sync());
        let r = s.sync(&desired(3)).unwrap();
        assert_eq!(r.failed_writes, 0);
        assert!(r.writes >= 1);
        assert!(s.in_sync());
        let again = plan::plan(&s.datapath().inner, &desired(3), &Capacity::default());
        assert!(again.ops.is_empty(), "maps converged: {:?}", again.ops);
    }

    #[test]
    fn adopting_existing_maps_writes_nothing_when_nothing_changed() {
        let mut first = Syncer::new(MapState::default(), Capacity::default());
        first.sync(&desired(3)).unwrap();
        let maps = first.datapath().clone();
        let mut second = Syncer::new(maps, Capacity::default());
        assert_eq!(second.sync(&desired(3)).unwrap().writes, 0);
    }
}
