//! Churn: thousands of pod restarts (endpoint IPs changing) and Services coming and going,
//! through translation, the planner and a datapath that enforces map capacities the way the
//! kernel does (an insert into a full hash map fails). Backend ids and reverse-NAT ids must be
//! reused, never leak, never exhaust: after every step the maps hold exactly the live objects.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Result, bail};
use lb_agent::k8s::{Snapshot, translate::translate};
use lb_agent::sync::map_state::addr_from_map;
use lb_agent::sync::{Capacity, Datapath, MapState, Op, Syncer};
use serde_json::json;

const BACKENDS_MAP: u32 = 64;
const REV_NAT_MAP: u32 = 16;
const SERVICES_MAP: u32 = 128;
const STEPS: u32 = 5000;
const SERVICES: usize = 4;
const PODS_PER_SERVICE: usize = 6;

/// The in-memory maps with the kernel's capacity rule, remembering the largest size seen.
struct CappedMaps {
    state: MapState,
    cap: Capacity,
    peak_backends: usize,
    peak_rev_nat: usize,
}

impl Datapath for CappedMaps {
    fn apply(&mut self, op: &Op) -> Result<()> {
        match op {
            Op::PutBackend(id, _)
                if !self.state.backends.contains_key(id)
                    && self.state.backends.len() >= self.cap.backends as usize =>
            {
                bail!("E2BIG: backend map full")
            }
            Op::PutRevNat(id, _)
                if !self.state.rev_nat.contains_key(id)
                    && self.state.rev_nat.len() >= self.cap.rev_nat as usize =>
            {
                bail!("E2BIG: rev-NAT map full")
            }
            Op::PutService(k, _)
                if !self.state.services.contains_key(k)
                    && self.state.services.len() >= self.cap.services as usize =>
            {
                bail!("E2BIG: service map full")
            }
            _ => {}
        }
        self.state.apply(op);
        self.peak_backends = self.peak_backends.max(self.state.backends.len());
        self.peak_rev_nat = self.peak_rev_nat.max(self.state.rev_nat.len());
        Ok(())
    }
    fn read(&self) -> Result<MapState> {
        Ok(self.state.clone())
    }
}

/// A deterministic pseudo-random sequence (xorshift64*), so a failure replays.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }
}

/// The cluster: Services by name with their ClusterIP and pod IPs.
struct Cluster {
    services: BTreeMap<String, (String, Vec<String>)>,
    next_pod: u32,
    next_service: u32,
    pods_per_service: usize,
}

impl Cluster {
    fn pod_ip(&mut self) -> String {
        self.next_pod += 1;
        let n = self.next_pod;
        format!(
            "10.{}.{}.{}",
            64 + (n >> 16) % 64,
            (n >> 8) & 0xff,
            n & 0xff
        )
    }

    fn add_service(&mut self) {
        self.next_service += 1;
        let n = self.next_service;
        let name = format!("svc-{n}");
        let ip = format!("10.96.{}.{}", (n >> 8) & 0xff, n & 0xff);
        let pods = (0..self.pods_per_service).map(|_| self.pod_ip()).collect();
        self.services.insert(name, (ip, pods));
    }

    fn snapshot(&self) -> Snapshot {
        let mut snap = Snapshot::default();
        for (name, (ip, pods)) in &self.services {
            snap.services.push(
                serde_json::from_value(json!({
                    "metadata": {"name": name, "namespace": "churn"},
                    "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
                }))
                .expect("a valid Service"),
            );
            let endpoints: Vec<_> = pods
                .iter()
                .map(|p| json!({"addresses": [p], "conditions": {"ready": true}}))
                .collect();
            snap.slices.push(
                serde_json::from_value(json!({
                    "metadata": {"name": format!("{name}-1"), "namespace": "churn",
                        "labels": {"kubernetes.io/service-name": name}},
                    "addressType": "IPv4",
                    "ports": [{"name": "http", "port": 8080}],
                    "endpoints": endpoints
                }))
                .expect("a valid EndpointSlice"),
            );
        }
        snap
    }

    /// Frontend address -> backend addresses, as the maps should hold them.
    fn expected(&self) -> BTreeMap<String, BTreeSet<String>> {
        self.services
            .values()
            .map(|(ip, pods)| {
                (
                    ip.clone(),
                    pods.iter().map(|p| format!("{p}:8080")).collect(),
                )
            })
            .collect()
    }
}

fn programmed(state: &MapState) -> BTreeMap<String, BTreeSet<String>> {
    state
        .frontends()
        .map(|(k, _)| {
            let backends = state
                .slots_of(k)
                .into_iter()
                .map(|id| {
                    let b = state.backends[&id.expect("every slot is written")];
                    format!("{}:{}", addr_from_map(&b.addr), b.port)
                })
                .collect();
            (addr_from_map(&k.addr).to_string(), backends)
        })
        .collect()
}

#[test]
fn thousands_of_pod_restarts_never_leak_or_exhaust_ids() {
    let cap = Capacity {
        services: SERVICES_MAP,
        backends: BACKENDS_MAP,
        rev_nat: REV_NAT_MAP,
        ..Capacity::default()
    };
    let mut syncer = Syncer::new(
        CappedMaps {
            state: MapState::default(),
            cap,
            peak_backends: 0,
            peak_rev_nat: 0,
        },
        cap,
    );
    let mut cluster = Cluster {
        services: BTreeMap::new(),
        next_pod: 0,
        next_service: 0,
        pods_per_service: PODS_PER_SERVICE,
    };
    for _ in 0..SERVICES {
        cluster.add_service();
    }
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let mut backend_ids_seen = BTreeSet::new();
    let mut restarts = 0u32;
    for step in 0..STEPS {
        if step > 0 {
            // 1 to 3 pod restarts: a pod comes back with a new IP.
            for _ in 0..1 + rng.below(3) {
                let svc = rng.below(cluster.services.len());
                let name = cluster
                    .services
                    .keys()
                    .nth(svc)
                    .cloned()
                    .expect("a service");
                let pod = rng.below(PODS_PER_SERVICE);
                let ip = cluster.pod_ip();
                cluster.services.get_mut(&name).expect("a service").1[pod] = ip;
                restarts += 1;
            }
            // Every 50 steps a Service is deleted and another one created (new ClusterIP).
            if step % 50 == 0 {
                let victim = rng.below(cluster.services.len());
                let name = cluster
                    .services
                    .keys()
                    .nth(victim)
                    .cloned()
                    .expect("a service");
                cluster.services.remove(&name);
                cluster.add_service();
            }
        }
        let t = translate(&cluster.snapshot());
        assert!(t.problems.is_empty(), "{:?}", t.problems);
        let report = syncer
            .sync(&t.desired)
            .expect("in-memory maps never fail to read");
        assert_eq!(report.failed_writes, 0, "step {step}: a map filled up");
        assert!(
            report.overflows.is_empty(),
            "step {step}: {:?}",
            report.overflows
        );

        let maps = &syncer.datapath().state;
        assert_eq!(programmed(maps), cluster.expected(), "step {step}");
        // Bounded by what is live: nothing of a restarted pod or a deleted Service remains.
        assert_eq!(
            maps.backends.len(),
            SERVICES * PODS_PER_SERVICE,
            "step {step}"
        );
        assert_eq!(maps.rev_nat.len(), SERVICES, "step {step}");
        assert_eq!(
            maps.services.len(),
            SERVICES * (1 + PODS_PER_SERVICE),
            "step {step}"
        );
        // Ids are reused: they never climb past the map sizes.
        let max_backend = maps.backends.keys().max().copied().unwrap_or(0);
        let max_rev_nat = maps.rev_nat.keys().max().copied().unwrap_or(0);
        assert!(
            max_backend <= BACKENDS_MAP,
            "step {step}: backend id {max_backend}"
        );
        assert!(
            max_rev_nat <= REV_NAT_MAP,
            "step {step}: rev-NAT id {max_rev_nat}"
        );
        backend_ids_seen.extend(maps.backends.keys().copied());
    }
    let dp = syncer.datapath();
    assert!(restarts >= STEPS - 1, "{restarts} restarts");
    assert!(
        cluster.next_pod > 5_000,
        "{} pod IPs used",
        cluster.next_pod
    );
    // The peak during a step is live objects plus that step's new ones, far below capacity.
    assert!(dp.peak_backends <= SERVICES * PODS_PER_SERVICE + 3 + PODS_PER_SERVICE);
    assert!(dp.peak_rev_nat <= SERVICES + 1);
    // Thousands of distinct pod IPs went through fewer ids than the map has entries.
    assert!(
        backend_ids_seen.len() <= BACKENDS_MAP as usize,
        "{} ids used",
        backend_ids_seen.len()
    );
}

/// The same churn with the backend map nearly full of live backends: every step's new
/// backends only fit once that step's stale ones are deleted, which the sync does in a second
/// pass, so no write ever hits a full map and nothing is left out.
#[test]
fn restarts_in_a_nearly_full_backend_map_take_two_passes_and_lose_nothing() {
    const SERVICES: usize = 2;
    const PODS: usize = 31; // 62 of 64 backends live
    let cap = Capacity {
        services: 2 * (1 + PODS as u32) + 2,
        backends: BACKENDS_MAP,
        rev_nat: 4,
        ..Capacity::default()
    };
    let mut syncer = Syncer::new(
        CappedMaps {
            state: MapState::default(),
            cap,
            peak_backends: 0,
            peak_rev_nat: 0,
        },
        cap,
    );
    let mut cluster = Cluster {
        services: BTreeMap::new(),
        next_pod: 0,
        next_service: 0,
        pods_per_service: PODS,
    };
    for _ in 0..SERVICES {
        cluster.add_service();
    }
    let mut rng = Rng(0x0dd_ba11_cafe);
    for step in 0..1000 {
        if step > 0 {
            // 1 to 6 restarts at once: up to 68 backends if old and new were held together.
            for _ in 0..1 + rng.below(6) {
                let svc = rng.below(SERVICES);
                let name = cluster
                    .services
                    .keys()
                    .nth(svc)
                    .cloned()
                    .expect("a service");
                let ip = cluster.pod_ip();
                cluster.services.get_mut(&name).expect("a service").1[rng.below(PODS)] = ip;
            }
        }
        let t = translate(&cluster.snapshot());
        let report = syncer
            .sync(&t.desired)
            .expect("in-memory maps never fail to read");
        assert_eq!(
            report.failed_writes, 0,
            "step {step}: a write hit a full map"
        );
        assert!(
            report.overflows.is_empty(),
            "step {step}: {:?}",
            report.overflows
        );
        assert!(!report.deferred, "step {step}: entries left out");
        let maps = &syncer.datapath().state;
        assert_eq!(programmed(maps), cluster.expected(), "step {step}");
        assert_eq!(maps.backends.len(), SERVICES * PODS, "step {step}");
        assert!(
            maps.backends.keys().all(|id| *id <= BACKENDS_MAP),
            "step {step}"
        );
    }
    assert!(syncer.datapath().peak_backends <= BACKENDS_MAP as usize);
}
