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
    /// `internal` (sockets on this node) or `external` (traffic from outside, XDP).
    pub scope: &'static str,
    pub kind: Vec<&'static str>,
    /// How the backends were chosen: `local` (a Local traffic policy), `topology-zone`,
    /// `topology-node`, `terminating-fallback`.
    pub policy: Vec<&'static str>,
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
        let named = |table: &[(u16, &'static str)]| -> Vec<&'static str> {
            table
                .iter()
                .filter(|(bit, _)| svc.flags & bit != 0)
                .map(|(_, name)| *name)
                .collect()
        };
        let kind = named(&[
            (service_flags::CLUSTER_IP, "ClusterIP"),
            (service_flags::NODE_PORT, "NodePort"),
            (service_flags::LOAD_BALANCER, "LoadBalancer"),
            (service_flags::EXTERNAL_IP, "ExternalIP"),
        ]);
        let policy = named(&[
            (service_flags::LOCAL_ONLY, "local"),
            (service_flags::TOPOLOGY_ZONE, "topology-zone"),
            (service_flags::TOPOLOGY_NODE, "topology-node"),
            (service_flags::TERMINATING_FALLBACK, "terminating-fallback"),
        ]);
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
            policy,
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
        "{:<30} {:<5} {:<8} {:<12} {:<14} {:<9} {:>7}  BACKENDS",
        "FRONTEND", "PROTO", "SCOPE", "TYPE", "POLICY", "AFFINITY", "REV_NAT"
    );
    let joined = |v: &[&str]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.join(",")
        }
    };
    for f in &v.frontends {
        let addr = std::net::SocketAddr::new(f.address, f.port).to_string();
        let affinity = if f.affinity_timeout_seconds == 0 {
            "-".to_string()
        } else {
            format!("{}s", f.affinity_timeout_seconds)
        };
        let _ = writeln!(
            out,
            "{addr:<30} {:<5} {:<8} {:<12} {:<14} {affinity:<9} {:>7}  {}",
            f.protocol,
            f.scope,
            joined(&f.kind),
            joined(&f.policy),
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
        // (see `kinds_and_policies_are_named` for the other frontend kinds)
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
        assert_eq!(
            (f.scope, f.kind.as_slice()),
            ("internal", &["ClusterIP"][..])
        );
        assert!(f.policy.is_empty());
        let text = render_text(&v);
        assert!(text.contains("10.96.0.10:53"), "{text}");
        assert!(text.contains("-> 10.244.2.2:5353"), "{text}");
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["frontends"][0]["backends"][1]["address"], "10.244.2.2");
    }

    #[test]
    fn kinds_and_policies_are_named() {
        use crate::k8s::translate::{NodeContext, translate_for};
        let svc = serde_json::json!({"metadata": {"name": "web", "namespace": "shop"},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.20", "externalTrafficPolicy": "Local",
                     "sessionAffinity": "ClientIP",
                     "ports": [{"name": "http", "port": 80, "nodePort": 30080}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}]}}});
        let slice = serde_json::json!({"metadata": {"name": "web-1", "namespace": "shop",
            "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
            "endpoints": [{"addresses": ["10.244.1.2"], "nodeName": "a"}]});
        let node = NodeContext {
            node_name: Some("a".into()),
            node_ips: vec!["192.168.0.5".parse().unwrap()],
            ..Default::default()
        };
        let t = translate_for(
            &Snapshot {
                services: vec![serde_json::from_value(svc).unwrap()],
                slices: vec![serde_json::from_value(slice).unwrap()],
                ..Default::default()
            },
            &node,
        );
        let mut s = Syncer::new(MapState::default(), Capacity::default());
        s.sync(&t.desired).unwrap();
        let v = view(s.datapath());
        let find = |addr: &str, port: u16, scope: &str| {
            v.frontends
                .iter()
                .find(|f| f.address.to_string() == addr && f.port == port && f.scope == scope)
                .unwrap_or_else(|| panic!("{addr}:{port} {scope} missing: {v:?}"))
        };
        let lb = find("203.0.113.10", 80, "external");
        assert_eq!(
            (lb.kind.as_slice(), lb.policy.as_slice()),
            (&["LoadBalancer"][..], &["local"][..])
        );
        assert_eq!(lb.affinity_timeout_seconds, 10_800);
        assert!(find("203.0.113.10", 80, "internal").policy.is_empty());
        assert_eq!(find("192.168.0.5", 30080, "external").kind, ["NodePort"]);
        assert_eq!(find("127.0.0.1", 30080, "internal").kind, ["NodePort"]);
        let text = render_text(&v);
        assert!(text.contains("LoadBalancer"), "{text}");
        assert!(text.contains("10800s"), "{text}");
    }
}
