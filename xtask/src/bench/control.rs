//! Control-plane measurements at one size (10 000 Services x 10 endpoints; smaller with
//! --quick): agent start to /readyz from manifests, agent RSS and map memory, the time from
//! one EndpointSlice edit to the pinned service map (read with bpf(2), no agent round trip),
//! and the same-size full `iptables-restore` and `nft -f` as kube-proxy's cost.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use lb_common::map_names;

use super::agent::{Agent, MapInfo, map_sizes};
use super::services::{SERVICE_PORT, ServiceSet};
use super::topology::Topology;
use super::{Settings, bpf, interrupted, iptables, manifests, netfilter, nftables, stats};

#[derive(Clone, Debug, Default)]
pub struct ControlResult {
    pub services: usize,
    pub endpoints_per_service: usize,
    pub ready: Duration,
    pub rss: u64,
    pub maps: Vec<MapInfo>,
    pub changes: usize,
    pub change_p50: Duration,
    pub change_p99: Duration,
    pub change_max: Duration,
    pub mean_sync: Option<Duration>,
    pub iptables_restore: Duration,
    pub iptables_rules: usize,
    pub nft_load: Duration,
    pub nft_rules: usize,
    /// The same edits applied the way kube-proxy applies them (partial restore / incremental
    /// nft transaction): how many, and their p50 / p99.
    pub baseline_changes: usize,
    pub iptables_change: (Duration, Duration),
    pub nft_change: (Duration, Duration),
}

/// Applies `edits` alternating shrink/grow edits of Service `churn` (from `e` to `e - 1`
/// endpoints and back) with `apply`, returning (p50, p99) of their times.
fn time_edits(
    edits: usize,
    e: usize,
    mut apply: impl FnMut(usize, usize) -> Result<Duration>,
) -> Result<(Duration, Duration)> {
    let mut took = Vec::with_capacity(edits);
    for k in 0..edits {
        interrupted()?;
        let (before, after) = if k % 2 == 0 { (e, e - 1) } else { (e - 1, e) };
        took.push(apply(before, after)?.as_nanos() as u64);
    }
    Ok((
        Duration::from_nanos(stats::percentile(&took, 50.0)),
        Duration::from_nanos(stats::percentile(&took, 99.0)),
    ))
}

/// A small deterministic generator for the pauses between edits.
struct Lcg(u64);
impl Lcg {
    fn next_below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n.max(1)
    }
}

pub fn run(
    topo: &mut Topology,
    agent_bin: &std::path::Path,
    s: &Settings,
) -> Result<ControlResult> {
    let (n, e) = (s.cp_services, s.cp_endpoints);
    eprintln!("== control plane: {n} Services x {e} endpoints");
    let set = ServiceSet::new(n, e, None);
    let churn = n - 1;
    let churn_svc = set.service(churn);
    let dir = topo.workdir.join("manifests-cp");
    std::fs::create_dir_all(&dir)?;
    manifests::write_set(&dir, &set, Some(churn))?;
    manifests::write_one(&dir, "churn.json", &churn_svc, e)?;
    let mut r = ControlResult {
        services: n,
        endpoints_per_service: e,
        ..Default::default()
    };
    let (agent, ready) = Agent::start(
        agent_bin,
        &dir,
        &topo.cgroup,
        &format!("{}cp", topo.id),
        &map_sizes(n, n * e),
        topo.workdir.join("agent-cp.log"),
    )?;
    r.ready = ready;
    r.rss = agent.rss().unwrap_or(0);
    eprintln!("   agent ready in {ready:?}, RSS {} MiB", r.rss >> 20);
    for name in map_names::ALL {
        r.maps.push(agent.map_info(name)?);
    }

    let services = bpf::obj_get(&agent.pin_path(map_names::SERVICES))?;
    let count = || bpf::service_count(&services, churn_svc.vip, SERVICE_PORT);
    if count()? != Some(e as u16) {
        bail!(
            "the churn Service {} is not in the map with {e} backends:\n{}",
            churn_svc.vip,
            agent.log_tail()
        );
    }
    let mut rng = Lcg(0x5eed);
    let mut took = Vec::with_capacity(s.changes);
    for k in 0..s.changes {
        interrupted()?;
        // A random pause, so the edits land at random points of the agent's poll cycle.
        std::thread::sleep(Duration::from_millis(rng.next_below(200)));
        let want = if k % 2 == 0 { e - 1 } else { e };
        manifests::write_one(&dir, "churn.json", &churn_svc, want)?;
        let t0 = Instant::now();
        loop {
            if count()? == Some(want as u16) {
                break;
            }
            if t0.elapsed() > Duration::from_secs(10) {
                bail!(
                    "edit {k}: the map did not show {want} backends within 10 s:\n{}",
                    agent.log_tail()
                );
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        took.push(t0.elapsed().as_nanos() as u64);
    }
    r.changes = took.len();
    r.change_p50 = Duration::from_nanos(stats::percentile(&took, 50.0));
    r.change_p99 = Duration::from_nanos(stats::percentile(&took, 99.0));
    r.change_max = Duration::from_nanos(stats::percentile(&took, 100.0));
    r.mean_sync = agent.mean_sync_seconds().map(Duration::from_secs_f64);
    eprintln!(
        "   {} EndpointSlice edits: p50 {:?} p99 {:?}",
        r.changes, r.change_p50, r.change_p99
    );
    drop(services);
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);

    let ipt = iptables::ruleset(&set);
    r.iptables_rules = netfilter::iptables_rule_count(&ipt);
    let ns = topo.scratch_ns("cpipt")?;
    r.iptables_restore = netfilter::iptables_restore(&ns, &ipt).context("iptables baseline")?;
    drop(ipt);
    r.baseline_changes = s.baseline_changes;
    r.iptables_change = time_edits(r.baseline_changes, e, |before, after| {
        let update = iptables::partial_update(&set, churn, before, after);
        netfilter::run_in_ns(&ns, "iptables-restore", &["--noflush"], &update)
            .context("iptables partial update")
    })?;
    interrupted()?;
    let nft = nftables::ruleset(&set);
    r.nft_rules = netfilter::nft_rule_count(&nft);
    let ns = topo.scratch_ns("cpnft")?;
    r.nft_load = netfilter::nft_load(&ns, &nft).context("nftables baseline")?;
    drop(nft);
    r.nft_change = time_edits(r.baseline_changes, e, |before, after| {
        let update = nftables::partial_update(&set, churn, before, after);
        netfilter::nft_load(&ns, &update).context("nftables incremental update")
    })?;
    eprintln!(
        "   iptables-restore {:?} ({} rules), nft -f {:?} ({} rules and elements)",
        r.iptables_restore, r.iptables_rules, r.nft_load, r.nft_rules
    );
    eprintln!(
        "   one edit: iptables-restore --noflush p50 {:?}, nft -f p50 {:?}",
        r.iptables_change.0, r.nft_change.0
    );
    Ok(r)
}
