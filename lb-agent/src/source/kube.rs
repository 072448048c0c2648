//! The cluster source: kube-runtime reflectors on Services, EndpointSlices and (with a node
//! name) this node. Every change publishes the reflectors' whole view as one snapshot; watch
//! restarts and relists are handled by the watcher and only ever replace the view, never empty
//! the datapath (the sync loop diffs each snapshot against the maps and writes only changes,
//! so objects that vanished during a relist are deleted and the rest is left alone).
//!
//! Debounce: the first change after a quiet period is published [`DEBOUNCE`] later, together
//! with every change that arrived in the meantime, so a burst (a Deployment rollout touching
//! hundreds of EndpointSlices, a relist) costs a few syncs, while a single EndpointSlice change
//! still reaches the maps within [`DEBOUNCE`] plus one sync.

use std::time::Duration;

use anyhow::Result;
use futures::{Stream, StreamExt};
use kube::runtime::reflector::Store;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client, Resource};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::k8s::{EndpointSlice, Node, SERVICE_NAME_LABEL, Service, Snapshot, node_zone};
use crate::metrics::Metrics;

/// How long a change waits for more changes before the view is published.
pub const DEBOUNCE: Duration = Duration::from_millis(20);

/// How long the first snapshot waits for this node's object before going out without it (the
/// node only adds the zone; Services must not wait on a missing RBAC rule for nodes).
pub const NODE_WAIT: Duration = Duration::from_secs(5);

/// What the cluster source watches besides all Services and EndpointSlices.
#[derive(Clone, Debug, Default)]
pub struct ClusterOptions {
    /// Watch this node (for its `topology.kubernetes.io/zone` label).
    pub node_name: Option<String>,
}

/// Bumps a generation counter on every change: the publisher folds whatever happened while
/// it slept into one snapshot.
#[derive(Clone)]
struct Changes(watch::Sender<u64>);

impl Changes {
    fn bump(&self) {
        self.0.send_modify(|g| *g = g.wrapping_add(1));
    }
}

async fn drive<K, S>(kind: &'static str, stream: S, changed: Changes, metrics: Metrics)
where
    K: Resource,
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
{
    let mut stream = std::pin::pin!(stream);
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(_) => changed.bump(),
            Err(e) => {
                warn!(kind, error = %e, "watch failed; retrying with backoff");
                metrics.watch_errors.inc();
            }
        }
    }
}

/// Like [`drive`], but only a change of the zone counts: a Node object is rewritten often
/// (status, conditions) and none of that matters to the datapath.
async fn drive_node<S>(stream: S, store: Store<Node>, changed: Changes, metrics: Metrics)
where
    S: Stream<Item = Result<watcher::Event<Node>, watcher::Error>>,
{
    let zone = |store: &Store<Node>| -> Option<String> {
        store
            .state()
            .first()
            .and_then(|n| node_zone(n).map(str::to_owned))
    };
    let mut last = None;
    let mut stream = std::pin::pin!(stream);
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(_) => {
                let now = zone(&store);
                if now != last {
                    info!(zone = ?now, "this node's zone");
                    last = now;
                    changed.bump();
                }
            }
            Err(e) => {
                warn!(kind = "Node", error = %e, "watch failed; retrying with backoff");
                metrics.watch_errors.inc();
            }
        }
    }
}

/// Watches Services and EndpointSlices behind `client` and publishes snapshots into `tx`
/// until `tx` closes.
pub async fn watch_cluster(
    client: Client,
    tx: watch::Sender<Option<Snapshot>>,
    metrics: Metrics,
) -> Result<()> {
    watch_cluster_with(client, tx, metrics, ClusterOptions::default()).await
}

/// [`watch_cluster`], and this node too when `opts` names it.
pub async fn watch_cluster_with(
    client: Client,
    tx: watch::Sender<Option<Snapshot>>,
    metrics: Metrics,
    opts: ClusterOptions,
) -> Result<()> {
    let services: Api<Service> = Api::all(client.clone());
    let slices: Api<EndpointSlice> = Api::all(client.clone());
    let (svc_store, svc_writer) = reflector::store();
    let (eps_store, eps_writer) = reflector::store();
    let (changes_tx, mut changes) = watch::channel(0u64);
    let changed = Changes(changes_tx);

    let svc_stream =
        reflector(svc_writer, watcher(services, watcher::Config::default())).default_backoff();
    let eps_stream = reflector(
        eps_writer,
        watcher(
            slices,
            watcher::Config::default().labels(SERVICE_NAME_LABEL),
        ),
    )
    .default_backoff();
    let mut tasks = vec![
        tokio::spawn(drive(
            "Service",
            svc_stream,
            changed.clone(),
            metrics.clone(),
        )),
        tokio::spawn(drive(
            "EndpointSlice",
            eps_stream,
            changed.clone(),
            metrics.clone(),
        )),
    ];
    let node_store = opts.node_name.as_deref().map(|name| {
        let nodes: Api<Node> = Api::all(client.clone());
        let (store, writer) = reflector::store();
        let stream = reflector(
            writer,
            watcher(
                nodes,
                watcher::Config::default().fields(&format!("metadata.name={name}")),
            ),
        )
        .default_backoff();
        tasks.push(tokio::spawn(drive_node(
            stream,
            store.clone(),
            changed.clone(),
            metrics.clone(),
        )));
        store
    });
    let _guard = AbortOnDrop(tasks);

    svc_store.wait_until_ready().await?;
    eps_store.wait_until_ready().await?;
    if let Some(store) = &node_store
        && tokio::time::timeout(NODE_WAIT, store.wait_until_ready())
            .await
            .is_err()
    {
        warn!(
            node = opts.node_name.as_deref().unwrap_or_default(),
            "this node's object is not listed yet; going on without its zone"
        );
    }
    info!("initial list of Services and EndpointSlices received");
    loop {
        // Everything up to now is in this snapshot.
        changes.borrow_and_update();
        let snapshot = Snapshot {
            services: svc_store.state().iter().map(|s| (**s).clone()).collect(),
            slices: eps_store.state().iter().map(|s| (**s).clone()).collect(),
            nodes: node_store
                .as_ref()
                .map(|s| s.state().iter().map(|n| (**n).clone()).collect())
                .unwrap_or_default(),
        };
        metrics.snapshots_published.inc();
        if tx.send(Some(snapshot)).is_err() {
            return Ok(());
        }
        if changes.changed().await.is_err() {
            return Ok(()); // every watcher ended (aborted): shutting down
        }
        tokio::time::sleep(DEBOUNCE).await;
    }
}

struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}
