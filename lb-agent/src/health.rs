//! `/healthz` (the process serves), `/readyz` (the first full state is in the maps) and
//! `/metrics`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use axum::{Router, http::StatusCode, routing::get};
use tracing::info;

use crate::metrics::Metrics;

/// Set once the first complete snapshot has been written to the maps.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set_ready(&self) {
        self.0.store(true, Ordering::Release);
    }
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

pub fn router(ready: Readiness, metrics: Metrics) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || async move {
                if ready.is_ready() {
                    (StatusCode::OK, "ready\n")
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not ready: the first state is not in the maps yet\n",
                    )
                }
            }),
        )
        .route(
            "/metrics",
            get(move || async move {
                (
                    [(
                        "content-type",
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics.encode(),
                )
            }),
        )
}

/// Binds `addr` (so a busy port fails the start, not later) and returns the serving future.
pub async fn bind(
    addr: SocketAddr,
    ready: Readiness,
    metrics: Metrics,
) -> Result<impl Future<Output = Result<()>>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the health address {addr}"))?;
    info!(%addr, "serving /healthz, /readyz and /metrics");
    Ok(async move {
        axum::serve(listener, router(ready, metrics))
            .await
            .context("health server")
    })
}
