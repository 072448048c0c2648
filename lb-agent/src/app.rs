//! `lb-agent run`: load and attach the datapath, follow a source, keep the maps in sync.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::datapath::{self, loader, pins::PinPaths, system};
use crate::health::{self, Readiness};
use crate::k8s::{
    Snapshot,
    translate::{NodeContext, translate_for},
};
use crate::metrics::{Metrics, ReasonLabel};
use crate::service_stats::PinnedCounts;
use crate::sync::{Capacity, Datapath, Syncer};
use crate::{map_capacity, source};

/// How often a sync that left the maps short is retried.
const RETRY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

pub struct RunConfig {
    pub manifests: Option<PathBuf>,
    pub kubeconfig: Option<PathBuf>,
    pub pins: PinPaths,
    pub cgroup: Option<PathBuf>,
    pub health_addr: SocketAddr,
    pub capacity: Capacity,
    pub node: NodeContext,
}

pub async fn run(cfg: RunConfig) -> Result<()> {
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
    })?;
    let mut ebpf = loaded.ebpf; // programs stay loaded while we run
    let _bpf_log = datapath::bpf_log::spawn_drain(&mut ebpf).map(AbortOnDrop);
    let capacity = map_capacity::reconcile(cfg.capacity, loaded.maps.sizes()?, &metrics);
    match PinnedCounts::open(&cfg.pins) {
        Ok(counts) => metrics.service_stats.set_reader(Box::new(counts)),
        Err(e) => warn!(error = %format!("{e:#}"), "no per-Service connection counters"),
    }
    let mut syncer = Syncer::new(loaded.maps, capacity);

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
    let mut reported = BTreeSet::new();
    // A sync with failed map writes is retried from the last snapshot even if nothing changes.
    let mut retry = tokio::time::interval(RETRY_INTERVAL);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    loop {
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() { break; }
                let snapshot = rx.borrow_and_update().clone();
                if let Some(snapshot) = snapshot {
                    tokio::task::block_in_place(|| apply(&mut syncer, &snapshot, &cfg.node, &metrics, &mut reported));
                    mark_ready_once_in_sync(&ready, &syncer);
                }
            }
            _ = retry.tick(), if !syncer.in_sync() => {
                let snapshot = rx.borrow().clone();
                if let Some(snapshot) = snapshot {
                    warn!("retrying the last sync, which had failed map writes");
                    tokio::task::block_in_place(|| apply(&mut syncer, &snapshot, &cfg.node, &metrics, &mut reported));
                    mark_ready_once_in_sync(&ready, &syncer);
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
) {
    let started = Instant::now();
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
            warn!(object = %p.object, reason = p.reason.as_str(), detail = %p.detail, "skipping invalid input");
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
