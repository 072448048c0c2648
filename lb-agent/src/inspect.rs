//! `lb-agent inspect`: the pinned maps as people read them (like `cilium bpf lb list`), from
//! the pins alone, so it works whether or not an agent is running.

use std::fmt::Write as _;
use std::net::IpAddr;

use lb_common::{backend_state, scope, service_flags};
use serde::Serialize;

use crate::k8s::model::Protocol;
use crate::sync::MapState;
use crate::sync::map_state::addr_from_map;

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct View {
    pub frontends: Vec<FrontendView>,
    pub backend_count: usize,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct FrontendView {
    pub address: IpAddr,
    pub port: u16,
    pub protocol: String,
    pub scope: &'static str,
    pub kind: Vec<&'static str>,
    pub rev_nat_id: u16,
    pub affinity_timeout_seconds: u32,
    pub backends: Vec<BackendView>,
    /// Slots the count covers that are missing or point nowhere (should always be empty).
    pub broken_slots: Vec<u16>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct BackendView {
    pub id: u32,
    pub address: IpAddr,
    pub port: u16,
    pub state: &'static str,
}

fn proto_name(p: u8) -> String {
    Protocol::from_number(p).map_or_else(|| format!("proto-{p}"), |p| p.to_string())
}

fn state_name(s: u8) -> &'static str {
    match s {
        backend_state::ACTIVE => "active",
        backend_state::TERMINATING => "terminating",
        _ => "unknown",
    }
}

pub fn view(state: &MapState) -> View {
    let mut frontends = Vec::new();
    for (key, svc) in state.frontends() {
        let mut backends = Vec::new();
        let mut broken_slots = Vec::new();
        for (i, slot) in state.slots_of(key).into_iter().enumerate() {
            match slot.and_then(|id| state.backends.get(&id).map(|b| (id, b))) {
                Some((id, b)) => backends.push(BackendView {
                    id,
                    address: addr_from_map(&b.addr),
                    port: b.port,
                    state: state_name(b.state),
                }),
                None => broken_slots.push(i as u16 + 1),
            }
        }
        let mut kind = Vec::new();
        if svc.flags & service_flags::CLUSTER_IP != 0 {
            kind.push("ClusterIP");
        }
        frontends.push(FrontendView {
            address: addr_from_map(&key.addr),
            port: key.port,
            protocol: proto_name(key.proto),
            scope: if key.scope == scope::INTERNAL {
                "internal"
            } else {
                "external"
            },
            kind,
            rev_nat_id: svc.rev_nat_id,
            affinity_timeout_seconds: svc.affinity_timeout,
            backends,
            broken_slots,
        });
    }
    View {
        frontends,
        backend_count: state.backends.len(),
    }
}

pub fn render_text(v: &View) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<30} {:<5} {:<10} {:>8}  BACKENDS",
        "FRONTEND", "PROTO", "TYPE", "REV_NAT"
    );
    for f in &v.frontends {
        let addr = std::net::SocketAddr::new(f.address, f.port).to_string();
        let kind = if f.kind.is_empty() {
            "-".to_string()
        } else {
            f.kind.join(",")
        };
        let _ = writeln!(
            out,
            "{addr:<30} {:<5} {kind:<10} {:>8}  {}",
            f.protocol,
            f.rev_nat_id,
            f.backends.len()
        );
        if f.backends.is_empty() {
            let _ = writeln!(out, "    (no backends: connections are refused)");
        }
        for b in &f.backends {
            let baddr = std::net::SocketAddr::new(b.address, b.port).to_string();
            let _ = writeln!(out, "    -> {baddr:<28} {:<11} id={}", b.state, b.id);
        }
        for s in &f.broken_slots {
            let _ = writeln!(out, "    !! slot {s} is missing or names no backend");
        }
    }
    let _ = writeln!(
        out,
        "{} frontends, {} backends",
        v.frontends.len(),
        v.backend_count
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::{Snapshot, translate::translate};
    use crate::sync::{Capacity, Syncer};

    #[test]
    fn shows_frontends_with_their_backends() {
        let svc = serde_json::json!({"metadata": {"name": "dns", "namespace": "kube-system"},
            "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "dns-tcp", "port": 53}]}});
        let slice = serde_json::json!({"metadata": {"name": "dns-1", "namespace": "kube-system",
            "labels": {"kubernetes.io/service-name": "dns"}},
            "addressType": "IPv4", "ports": [{"name": "dns-tcp", "port": 5353}],
            "endpoints": [{"addresses": ["10.244.1.2"]}, {"addresses": ["10.244.2.2"]}]});
        let t = translate(&Snapshot {
            services: vec![serde_json::from_value(svc).unwrap()],
            slices: vec![serde_json::from_value(slice).unwrap()],
            ..Default::default()
        });
        let mut s = Syncer::new(MapState::default(), Capacity::default());
        s.sync(&t.desired).unwrap();
        let v = view(s.datapath());
        assert_eq!(v.frontends.len(), 1);
        let f = &v.frontends[0];
        assert_eq!(
            (f.address.to_string(), f.port, f.protocol.as_str()),
            ("10.96.0.10".into(), 53, "TCP")
        );
        assert_eq!(f.backends.len(), 2);
        assert!(f.broken_slots.is_empty());
        let text = render_text(&v);
        assert!(text.contains("10.96.0.10:53"), "{text}");
        assert!(text.contains("-> 10.244.2.2:5353"), "{text}");
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["frontends"][0]["backends"][1]["address"], "10.244.2.2");
    }
}
