//! `lb-agent run`: load and attach the datapath, follow a source, keep the maps in sync.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::datapath::{self, loader, pins::PinPaths, snat_addrs, system};
use crate::hc_node_port::HealthCheckPorts;
use crate::health::{self, Readiness};
use crate::k8s::model::HealthCheck;
use crate::k8s::{
    Snapshot,
    translate::{NodeContext, translate_for},
};
use crate::map_capacity;
use crate::metrics::{Metrics, ReasonLabel};
use crate::node_addrs::NodeAddrs;
use crate::service_stats::PinnedCounts;
use crate::source;
use crate::sync::{Capacity, Datapath, Syncer};

/// How often a sync that left the maps short is retried.
const RETRY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

pub struct RunConfig {
    pub manifests: Option<PathBuf>,
    pub kubeconfig: Option<PathBuf>,
    pub pins: PinPaths,
    pub cgroup: Option<PathBuf>,
    pub health_addr: SocketAddr,
    pub capacity: Capacity,
    /// The node's name, zone and external-IP guard; its addresses come from `node_addrs`.
    pub node: NodeContext,
    pub node_addrs: NodeAddrs,
    /// Interfaces for the XDP datapath (traffic from outside the node).
    pub xdp_ifaces: Vec<String>,
    /// `--snat-ip`: addresses the XDP path SNATs to for backends on other nodes.
    pub snat_ips: Vec<std::net::IpAddr>,
    /// `--terminate-sockets`: protocols whose sockets on departed backends are ended.
    pub terminate_sockets: crate::sockdestroy::Protocols,
    pub socket_destroy_mechanism: crate::sockdestroy::MechanismChoice,
    pub socket_lb_scope: crate::datapath::scope::SocketLbScope,
}

/// How often node addresses are re-read when they are discovered (NodePorts follow them).
const NODE_ADDR_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

pub async fn run(mut cfg: RunConfig) -> Result<()> {
    if let Some(dir) = &cfg.manifests
        && !dir.is_dir()
    {
        anyhow::bail!("--manifests {}: not a directory", dir.display());
    }
    let metrics = Metrics::new();
    let ready = Readiness::default();
    let serve = health::bind(cfg.health_addr, ready.clone(), metrics.clone()).await?;
    let health_task = tokio::spawn(serve);

    let cgroup = match cfg.cgroup {
        Some(c) => c,
        None => system::cgroup2_root()?,
    };
    let loaded = loader::load_and_attach(&loader::LoadOptions {
        pins: cfg.pins.clone(),
        cgroup,
        capacity: cfg.capacity,
        xdp_ifaces: cfg.xdp_ifaces.clone(),
        config: crate::datapath::scope::config(cfg.socket_lb_scope)?,
    })?;
    info!(scope = ?cfg.socket_lb_scope, "socket load balancing scope");
    let mut ebpf = loaded.ebpf; // programs stay loaded while we run
    let _bpf_log = datapath::bpf_log::spawn_drain(&mut ebpf).map(AbortOnDrop);
    let capacity = map_capacity::reconcile(cfg.capacity, loaded.maps.sizes()?, &metrics);
    match PinnedCounts::open(&cfg.pins) {
        Ok(counts) => metrics.service_stats.set_reader(Box::new(counts)),
        Err(e) => warn!(error = %format!("{e:#}"), "no per-Service connection counters"),
    }
    let terminator = crate::sockdestroy::Terminator::new(
        &mut ebpf,
        loaded.sock_destroy_kfunc,
        cfg.terminate_sockets,
        cfg.socket_destroy_mechanism,
        &cfg.pins,
    );
    let mut xdp_stats = crate::datapath::xdp_stats::XdpStats::take(&mut ebpf)?;
    let mut snat_addrs = crate::datapath::snat_addrs::SnatAddrs::take(&mut ebpf)?;
    let mut stats_tick = tokio::time::interval(std::time::Duration::from_secs(1));
    let mut rec = Reconciler {
        syncer: Syncer::new(loaded.maps, capacity),
        terminator,
        health_check_ports: HealthCheckPorts::default(),
        reported: BTreeSet::new(),
    };

    let (tx, mut rx) = watch::channel::<Option<Snapshot>>(None);
    let source_task = match cfg.manifests {
        Some(dir) => {
            info!(dir = %dir.display(), "source: manifest directory");
            tokio::spawn(source::manifests::watch_dir(dir, tx, metrics.clone()))
        }
        None => {
            let client = kube_client(cfg.kubeconfig.as_deref()).await?;
            info!("source: Kubernetes API");
            let opts = source::kube::ClusterOptions {
                node_name: cfg.node.node_name.clone(),
            };
            tokio::spawn(source::kube::watch_cluster_with(
                client,
                tx,
                metrics.clone(),
                opts,
            ))
        }
    };
    let mut source_task = std::pin::pin!(source_task);
    let mut health_task = std::pin::pin!(health_task);
    // A sync with failed map writes is retried from the last snapshot even if nothing changes.
    let mut retry = tokio::time::interval(RETRY_INTERVAL);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    cfg.node.node_ips = cfg.node_addrs.current()?;
    snat_addrs.write(snat_addrs::choose(&cfg.snat_ips, &cfg.node.node_ips))?;
    info!(node_ips = ?cfg.node.node_ips, zone = ?cfg.node.zone, node = ?cfg.node.node_name, "node");
    let mut node_addr_tick = tokio::time::interval(NODE_ADDR_INTERVAL);
    node_addr_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let discovering = cfg.node_addrs == NodeAddrs::Discover;

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    loop {
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() { break; }
                let snapshot = rx.borrow_and_update().clone();
                if let Some(snapshot) = snapshot {
                    rec.reconcile(&snapshot, &cfg.node, &metrics).await;
                    mark_ready_once_in_sync(&ready, &rec.syncer);
                }
            }
            _ = retry.tick(), if !rec.syncer.in_sync() => {
                let snapshot = rx.borrow().clone();
                if let Some(snapshot) = snapshot {
                    warn!("retrying the last sync, which had failed map writes");
                    rec.reconcile(&snapshot, &cfg.node, &metrics).await;
                    mark_ready_once_in_sync(&ready, &rec.syncer);
                }
            }
            _ = stats_tick.tick() => {
                if let Err(e) = xdp_stats.export(&metrics) {
                    warn!(error = %format!("{e:#}"), "cannot read the XDP counters");
                }
            }
            _ = node_addr_tick.tick(), if discovering => {
                match cfg.node_addrs.current() {
                    Ok(ips) if ips != cfg.node.node_ips => {
                        info!(old = ?cfg.node.node_ips, new = ?ips, "node addresses changed; reprogramming NodePorts");
                        cfg.node.node_ips = ips;
                        if let Err(e) = snat_addrs.write(snat_addrs::choose(&cfg.snat_ips, &cfg.node.node_ips)) {
                            warn!(error = %format!("{e:#}"), "cannot update the SNAT addresses");
                        }
                        let snapshot = rx.borrow().clone();
                        if let Some(snapshot) = snapshot {
                            rec.reconcile(&snapshot, &cfg.node, &metrics).await;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => warn!(error = %format!("{e:#}"), "cannot read node addresses; keeping the last ones"),
                }
            }
            r = &mut source_task => {
                return Err(match r {
                    Ok(Ok(())) => anyhow::anyhow!("the source ended"),
                    Ok(Err(e)) => e.context("the source failed"),
                    Err(e) => anyhow::Error::new(e).context("the source task panicked"),
                });
            }
            r = &mut health_task => {
                return Err(match r {
                    Ok(Ok(())) => anyhow::anyhow!("the health server ended"),
                    Ok(Err(e)) => e,
                    Err(e) => anyhow::Error::new(e).context("the health server panicked"),
                });
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
        }
    }
    info!(
        pins = %cfg.pins.root().display(),
        "stopping; the datapath stays in place so Services keep working until the next agent adopts it (`lb-agent cleanup` removes it)"
    );
    Ok(())
}

/// Everything a snapshot is applied to: the maps, the sockets on departed backends and the
/// health check node ports.
struct Reconciler {
    syncer: Syncer<crate::datapath::maps::BpfMaps>,
    terminator: crate::sockdestroy::Terminator,
    health_check_ports: HealthCheckPorts,
    /// Problems already logged (each is logged once, when it first appears).
    reported: BTreeSet<String>,
}

impl Reconciler {
    async fn reconcile(&mut self, snapshot: &Snapshot, node: &NodeContext, metrics: &Metrics) {
        let applied = tokio::task::block_in_place(|| {
            let applied = apply(
                &mut self.syncer,
                snapshot,
                node,
                metrics,
                &mut self.reported,
            );
            self.terminator.end_sockets(&applied.departed, metrics);
            applied
        });
        self.health_check_ports
            .update(&applied.health_checks, metrics)
            .await;
    }
}

/// What applying a snapshot produced besides map writes.
#[derive(Debug, Default)]
pub struct Applied {
    /// Backends that left their frontends (whose sockets are to be ended).
    pub departed: BTreeSet<lb_common::SockTermKey>,
    /// Health check node ports to serve.
    pub health_checks: BTreeMap<u16, HealthCheck>,
}

fn mark_ready_once_in_sync<D: Datapath>(ready: &Readiness, syncer: &Syncer<D>) {
    if !ready.is_ready() && syncer.in_sync() {
        ready.set_ready();
        info!("first full state written to the maps: ready");
    }
}

/// Translates one snapshot and writes it to the maps, logging and counting what was skipped.
/// Each problem is logged once, when it first appears, not on every sync.
pub fn apply<D: Datapath>(
    syncer: &mut Syncer<D>,
    snapshot: &Snapshot,
    node: &NodeContext,
    metrics: &Metrics,
    reported: &mut BTreeSet<String>,
) -> Applied {
    let mut departed = BTreeSet::new();
    let started = Instant::now();
    // --zone wins; else the zone label of this node's Node object (or Node manifest).
    let with_zone;
    let node = match (&node.zone, snapshot.zone(node.node_name.as_deref())) {
        (None, Some(zone)) => {
            with_zone = NodeContext {
                zone: Some(zone.to_owned()),
                ..node.clone()
            };
            &with_zone
        }
        _ => node,
    };
    let t = translate_for(snapshot, node);
    let mut now = BTreeSet::new();
    // This node's zone (from its Node object or a Node manifest), for topology-aware routing.
    if let Some(zone) = snapshot.zone(node.node_name.as_deref()) {
        let line = format!("zone:{zone}");
        if !reported.contains(&line) {
            info!(zone, "this node's zone");
        }
        now.insert(line);
    }
    for p in &t.problems {
        let line = p.to_string();
        if !reported.contains(&line) {
            if p.reason.is_refusal() {
                warn!(object = %p.object, reason = p.reason.as_str(), detail = %p.detail, "not programmed");
            } else {
                warn!(object = %p.object, reason = p.reason.as_str(), detail = %p.detail, "skipping invalid input");
            }
            metrics
                .translation_problems
                .get_or_create(&ReasonLabel::new(p.reason.as_str()))
                .inc();
        }
        now.insert(line);
    }
    metrics.service_stats.set_services(&t.desired);
    match syncer.sync(&t.desired) {
        Ok(report) => {
            map_capacity::record_fill(&report, syncer.capacity(), metrics);
            for o in &report.overflows {
                let line = format!("{}:{}:{}", o.service, o.frontend, o.reason);
                if !reported.contains(&line) {
                    warn!(service = %o.service, frontend = %o.frontend, reason = o.reason, detail = %o.detail, "capacity reached");
                    metrics
                        .capacity_overflows
                        .get_or_create(&ReasonLabel::new(o.reason))
                        .inc();
                }
                now.insert(line);
            }
            metrics.map_write_errors.inc_by(report.failed_writes as u64);
            metrics.frontends.set(report.frontends as i64);
            metrics.backends.set(report.backends as i64);
            metrics.service_entries.set(report.service_entries as i64);
            info!(
                frontends = report.frontends,
                backends = report.backends,
                writes = report.writes,
                failed = report.failed_writes,
                took_ms = started.elapsed().as_secs_f64() * 1e3,
                "maps synced"
            );
            departed = report.departed;
        }
        Err(e) => {
            error!(error = %format!("{e:#}"), "cannot read the maps; will retry on the next change");
            metrics.map_write_errors.inc();
        }
    }
    metrics.syncs.inc();
    metrics
        .sync_duration_seconds
        .observe(started.elapsed().as_secs_f64());
    *reported = now;
    Applied {
        departed,
        health_checks: t.desired.health_checks,
    }
}

/// Stops a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A client from a kubeconfig, or the in-cluster configuration.
pub async fn kube_client(kubeconfig: Option<&std::path::Path>) -> Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .context("using the kubeconfig")?
        }
        None => kube::Config::infer()
            .await
            .context("no in-cluster config and no kubeconfig found (use --manifests DIR to run without a cluster)")?,
    };
    kube::Client::try_from(config).context("building the Kubernetes client")
}
