//! The cluster source: kube-runtime reflectors on Services and EndpointSlices. Every change
//! (after a short debounce that folds bursts together) publishes the reflectors' whole view as
//! one snapshot; watch restarts and relists are handled by the watcher and only ever replace
//! the view, never empty the datapath.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use futures::{Stream, StreamExt};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client, Resource};
use tokio::sync::{Notify, watch};
use tracing::{info, warn};

use crate::k8s::{EndpointSlice, SERVICE_NAME_LABEL, Service, Snapshot};
use crate::metrics::Metrics;

/// How long to wait after a change for more changes before publishing.
pub const DEBOUNCE: Duration = Duration::from_millis(20);

async fn drive<K, S>(kind: &'static str, stream: S, changed: Arc<Notify>, metrics: Metrics)
where
    K: Resource,
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
{
    let mut stream = std::pin::pin!(stream);
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(_) => changed.notify_one(),
            Err(e) => {
                warn!(kind, error = %e, "watch failed; retrying with backoff");
                metrics.watch_errors.inc();
            }
        }
    }
}

/// Watches the cluster behind `client` and publishes snapshots into `tx` until `tx` closes.
pub async fn watch_cluster(
    client: Client,
    tx: watch::Sender<Option<Snapshot>>,
    metrics: Metrics,
) -> Result<()> {
    let services: Api<Service> = Api::all(client.clone());
    let slices: Api<EndpointSlice> = Api::all(client);
    let (svc_store, svc_writer) = reflector::store();
    let (eps_store, eps_writer) = reflector::store();
    let changed = Arc::new(Notify::new());

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
    let svc_task = tokio::spawn(drive(
        "Service",
        svc_stream,
        changed.clone(),
        metrics.clone(),
    ));
    let eps_task = tokio::spawn(drive(
        "EndpointSlice",
        eps_stream,
        changed.clone(),
        metrics.clone(),
    ));
    let _guard = AbortOnDrop(vec![svc_task, eps_task]);

    svc_store.wait_until_ready().await?;
    eps_store.wait_until_ready().await?;
    info!("initial list of Services and EndpointSlices received");
    loop {
        let snapshot = Snapshot {
            services: svc_store.state().iter().map(|s| (**s).clone()).collect(),
            slices: eps_store.state().iter().map(|s| (**s).clone()).collect(),
        };
        if tx.send(Some(snapshot)).is_err() {
            return Ok(());
        }
        changed.notified().await;
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
