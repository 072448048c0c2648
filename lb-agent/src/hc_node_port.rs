//! Health check node ports, as kube-proxy serves them: for each LoadBalancer Service with
//! `externalTrafficPolicy: Local`, an HTTP server on its `healthCheckNodePort` answering 200
//! with the count of this node's ready endpoints, or 503 when there are none, so cloud load
//! balancers send traffic only to nodes that can serve it locally.

use std::collections::BTreeMap;
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::k8s::model::HealthCheck;
use crate::metrics::{Metrics, ReasonLabel};

/// The running servers and what each answers.
#[derive(Default)]
pub struct HealthCheckPorts {
    answers: BTreeMap<u16, Arc<RwLock<HealthCheck>>>,
    servers: BTreeMap<u16, JoinHandle<()>>,
}

/// The body kube-proxy sends.
fn body(hc: &HealthCheck) -> String {
    serde_json::json!({
        "service": {"namespace": hc.namespace, "name": hc.name},
        "localEndpoints": hc.local_endpoints,
        "serviceProxyHealthy": true,
    })
    .to_string()
}

fn answer(hc: &HealthCheck) -> impl IntoResponse + use<> {
    let code = if hc.local_endpoints > 0 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body(hc),
    )
}

impl HealthCheckPorts {
    /// Serves exactly `wanted`: starts servers for new ports, stops the ones no Service has
    /// any more, and updates the counts in place. A port that cannot be bound is logged and
    /// counted, and tried again on the next update.
    pub async fn update(&mut self, wanted: &BTreeMap<u16, HealthCheck>, metrics: &Metrics) {
        let gone: Vec<u16> = self
            .answers
            .keys()
            .filter(|p| !wanted.contains_key(p))
            .copied()
            .collect();
        for port in gone {
            self.answers.remove(&port);
            if let Some(s) = self.servers.remove(&port) {
                s.abort();
            }
            info!(port, "health check node port closed");
        }
        for (port, hc) in wanted {
            if let Some(a) = self.answers.get(port) {
                if let Ok(mut a) = a.write() {
                    *a = hc.clone();
                }
                continue;
            }
            let shared = Arc::new(RwLock::new(hc.clone()));
            let handler_state = shared.clone();
            let app = Router::new().fallback(move || {
                let state = handler_state.clone();
                async move {
                    let hc = state
                        .read()
                        .map(|h| h.clone())
                        .unwrap_or_else(|p| p.into_inner().clone());
                    answer(&hc)
                }
            });
            // [::] takes IPv4 too (bindv6only=0); without IPv6, 0.0.0.0.
            let v6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, *port));
            let listener = match tokio::net::TcpListener::bind(v6).await {
                Ok(l) => Ok(l),
                Err(_) => {
                    tokio::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], *port))).await
                }
            };
            match listener {
                Ok(l) => {
                    info!(port, service = %format!("{}/{}", hc.namespace, hc.name), "serving health check node port");
                    self.servers.insert(
                        *port,
                        tokio::spawn(async move {
                            if let Err(e) = axum::serve(l, app).await {
                                warn!(error = %e, "health check node port server stopped");
                            }
                        }),
                    );
                    self.answers.insert(*port, shared);
                }
                Err(e) => {
                    warn!(port, error = %e, "cannot serve health check node port; will retry");
                    metrics
                        .translation_problems
                        .get_or_create(&ReasonLabel::new("health_check_port_bind"))
                        .inc();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_shaped_like_kube_proxys() {
        let hc = HealthCheck {
            namespace: "shop".into(),
            name: "web".into(),
            local_endpoints: 2,
        };
        let v: serde_json::Value = serde_json::from_str(&body(&hc)).unwrap();
        assert_eq!(v["service"]["name"], "web");
        assert_eq!(v["localEndpoints"], 2);
    }

    #[tokio::test]
    async fn serves_counts_and_503_and_closes() {
        let metrics = Metrics::new();
        let mut ports = HealthCheckPorts::default();
        // A free port, found by binding and releasing it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut hc = HealthCheck {
            namespace: "shop".into(),
            name: "web".into(),
            local_endpoints: 1,
        };
        ports
            .update(&BTreeMap::from([(port, hc.clone())]), &metrics)
            .await;
        let get = |port: u16| async move {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            s.write_all(b"GET / HTTP/1.0\r\n\r\n").await?;
            let mut out = String::new();
            s.read_to_string(&mut out).await?;
            Ok::<_, std::io::Error>(out)
        };
        let r = get(port).await.unwrap();
        assert!(
            r.starts_with("HTTP/1.0 200") || r.starts_with("HTTP/1.1 200"),
            "{r}"
        );
        assert!(r.contains(r#""localEndpoints":1"#), "{r}");
        hc.local_endpoints = 0;
        ports.update(&BTreeMap::from([(port, hc)]), &metrics).await;
        let r = get(port).await.unwrap();
        assert!(r.contains(" 503 "), "{r}");
        ports.update(&BTreeMap::new(), &metrics).await;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(get(port).await.is_err(), "closed");
    }
}
