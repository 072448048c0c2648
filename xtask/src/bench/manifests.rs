//! The Service set as the agent reads it: JSON `kind: List` files of Services and
//! EndpointSlices (JSON rather than YAML because the agent parses it several times faster,
//! which matters at 50 000 Services).

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use super::services::{NAMESPACE, ServiceSet, Svc};

pub fn service(svc: &Svc) -> Value {
    let ports: Vec<Value> = svc
        .ports
        .iter()
        .map(|p| {
            json!({"name": p.name, "protocol": p.proto.upper(), "port": p.port,
                   "targetPort": p.target_port})
        })
        .collect();
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": svc.name, "namespace": NAMESPACE},
        "spec": {"type": "ClusterIP", "clusterIP": svc.vip.to_string(), "ports": ports}
    })
}

/// The EndpointSlice of `svc` with its first `n` endpoints.
pub fn endpoint_slice(svc: &Svc, n: usize) -> Value {
    let ports: Vec<Value> = svc
        .ports
        .iter()
        .map(|p| json!({"name": p.name, "protocol": p.proto.upper(), "port": p.target_port}))
        .collect();
    let endpoints: Vec<Value> = svc
        .endpoints
        .iter()
        .take(n)
        .map(|ip| {
            json!({"addresses": [ip.to_string()],
                   "conditions": {"ready": true, "serving": true, "terminating": false}})
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{}-1", svc.name), "namespace": NAMESPACE,
                     "labels": {"kubernetes.io/service-name": svc.name}},
        "addressType": "IPv4", "ports": ports, "endpoints": endpoints
    })
}

fn list(items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": "List", "items": items})
}

/// Writes `value` to `dir/name` atomically (the agent polls the directory).
pub fn write(dir: &Path, name: &str, value: &Value) -> Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec(value)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join(name))?;
    Ok(())
}

/// Every Service of `set` except `except` (and its slice), as one file `services.json`.
pub fn write_set(dir: &Path, set: &ServiceSet, except: Option<usize>) -> Result<()> {
    let mut items = Vec::with_capacity(set.count * 2);
    for i in (0..set.count).filter(|i| Some(*i) != except) {
        let svc = set.service(i);
        items.push(service(&svc));
        items.push(endpoint_slice(&svc, svc.endpoints.len()));
    }
    write(dir, "services.json", &list(items))
}

/// One Service and its slice with `n` endpoints, as its own file (what the churn edits).
pub fn write_one(dir: &Path, name: &str, svc: &Svc, n: usize) -> Result<()> {
    write(dir, name, &list(vec![service(svc), endpoint_slice(svc, n)]))
}
