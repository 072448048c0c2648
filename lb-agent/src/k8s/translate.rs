//! Services and EndpointSlices to frontends and backends: a pure function, so every rule
//! kube-proxy applies can be checked by a plain unit test.
//!
//! Rules applied here:
//! - only Services with a cluster IP are proxied; headless (`clusterIP: None`), ExternalName
//!   and Services labelled with `service.kubernetes.io/service-proxy-name` are left alone;
//! - each Service port is matched to the EndpointSlice port with the same name and protocol
//!   (the slice carries the resolved number, so a named `targetPort` works);
//! - an endpoint is used unless its `ready` condition is false; when a port has no ready
//!   endpoint, endpoints that are `serving` and `terminating` are used instead (KEP-1669), and
//!   never ones that are not serving;
//! - `internalTrafficPolicy: Local` keeps only endpoints on this node (`nodeName`); with none,
//!   the Service rejects connections, as kube-proxy drops them;
//! - anything malformed is reported as a [`Problem`] and skipped; the rest still applies.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::ServicePort;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::model::{BackendAddr, DesiredState, Frontend, FrontendEntry, FrontendKind, Protocol};
use super::{SERVICE_NAME_LABEL, SERVICE_PROXY_NAME_LABEL, Service, Snapshot};

/// `sessionAffinityConfig.clientIP.timeoutSeconds` when unset (the API's default).
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;

/// Why something in the input was skipped. The `reason` is a stable label for metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// `namespace/name` of the object (or of the Service it belongs to).
    pub object: String,
    pub reason: ProblemReason,
    pub detail: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProblemReason {
    MissingName,
    InvalidClusterIp,
    InvalidPort,
    UnsupportedProtocol,
    InvalidEndpointAddress,
    InvalidEndpointPort,
    LocalPolicyWithoutNodeName,
}

impl ProblemReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemReason::MissingName => "missing_name",
            ProblemReason::InvalidClusterIp => "invalid_cluster_ip",
            ProblemReason::InvalidPort => "invalid_port",
            ProblemReason::UnsupportedProtocol => "unsupported_protocol",
            ProblemReason::InvalidEndpointAddress => "invalid_endpoint_address",
            ProblemReason::InvalidEndpointPort => "invalid_endpoint_port",
            ProblemReason::LocalPolicyWithoutNodeName => "local_policy_without_node_name",
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} ({})",
            self.object,
            self.detail,
            self.reason.as_str()
        )
    }
}

/// The result of a translation: what to program and what was skipped.
#[derive(Debug, Default)]
pub struct Translation {
    pub desired: DesiredState,
    pub problems: Vec<Problem>,
}

/// Why a Service is deliberately not proxied (not a problem: kube-proxy skips these too).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    Headless,
    ExternalName,
    NoClusterIp,
    OtherProxy,
}

/// What translation needs to know about the node the agent runs on.
#[derive(Clone, Debug, Default)]
pub struct NodeContext {
    /// This node's name (`spec.nodeName` of local endpoints).
    pub node_name: Option<String>,
}

/// Translates a whole snapshot for a node whose name is unknown.
pub fn translate(snapshot: &Snapshot) -> Translation {
    translate_for(snapshot, &NodeContext::default())
}

/// Translates a whole snapshot for `node`.
pub fn translate_for(snapshot: &Snapshot, node: &NodeContext) -> Translation {
    let mut out = Translation::default();
    let slices = index_slices(&snapshot.slices, &mut out.problems);
    for svc in &snapshot.services {
        translate_service(svc, &slices, node, &mut out);
    }
    out
}

/// EndpointSlices grouped by (namespace, service name).
type SliceIndex<'a> = BTreeMap<(String, String), Vec<&'a EndpointSlice>>;

fn index_slices<'a>(slices: &'a [EndpointSlice], problems: &mut Vec<Problem>) -> SliceIndex<'a> {
    let mut index = SliceIndex::new();
    for slice in slices {
        let ns = slice
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let owner = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL));
        match owner {
            Some(svc) => index.entry((ns, svc.clone())).or_default().push(slice),
            None => problems.push(Problem {
                object: format!("{ns}/{}", slice.metadata.name.as_deref().unwrap_or("?")),
                reason: ProblemReason::MissingName,
                detail: format!("EndpointSlice has no {SERVICE_NAME_LABEL} label"),
            }),
        }
    }
    index
}

/// Whether and why a Service is not proxied at all.
pub fn skip_reason(svc: &Service) -> Option<Skip> {
    if svc
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(SERVICE_PROXY_NAME_LABEL))
    {
        return Some(Skip::OtherProxy);
    }
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return Some(Skip::ExternalName);
    }
    match spec.cluster_ip.as_deref() {
        Some("None") => Some(Skip::Headless),
        None | Some("") => Some(Skip::NoClusterIp),
        _ => None,
    }
}

fn translate_service(
    svc: &Service,
    slices: &SliceIndex<'_>,
    node: &NodeContext,
    out: &mut Translation,
) {
    let ns = svc
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let Some(name) = svc.metadata.name.clone() else {
        out.problems.push(Problem {
            object: format!("{ns}/?"),
            reason: ProblemReason::MissingName,
            detail: "Service has no metadata.name".into(),
        });
        return;
    };
    let object = format!("{ns}/{name}");
    if svc.spec.is_none() || skip_reason(svc).is_some() {
        return;
    }
    let Some(spec) = svc.spec.as_ref() else {
        return;
    };

    let mut problem = |reason, detail: String| {
        out.problems.push(Problem {
            object: object.clone(),
            reason,
            detail,
        })
    };

    // clusterIPs is authoritative when present (dual-stack); clusterIP otherwise.
    let ip_strings: Vec<&str> = match spec.cluster_ips.as_deref() {
        Some(ips) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
        _ => spec.cluster_ip.as_deref().into_iter().collect(),
    };
    let mut ips = Vec::new();
    for s in ip_strings {
        match s.parse::<IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(e) => problem(
                ProblemReason::InvalidClusterIp,
                format!("clusterIP {s:?}: {e}"),
            ),
        }
    }

    // internalTrafficPolicy: Local -> only this node's endpoints (an unknown node name matches
    // none, so the Service rejects rather than silently using remote endpoints).
    let local_node = if spec.internal_traffic_policy.as_deref() == Some("Local") {
        if node.node_name.is_none() {
            problem(
                ProblemReason::LocalPolicyWithoutNodeName,
                "internalTrafficPolicy: Local but the agent has no --node-name".into(),
            );
        }
        Some(node.node_name.as_deref().unwrap_or(""))
    } else {
        None
    };

    // sessionAffinity: ClientIP, with the API's default timeout of 3 hours.
    let affinity_timeout = if spec.session_affinity.as_deref() == Some("ClientIP") {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .filter(|&t| t > 0)
            .unwrap_or(DEFAULT_AFFINITY_TIMEOUT)
    } else {
        0
    };

    let own_slices = slices
        .get(&(ns.clone(), name.clone()))
        .map(Vec::as_slice)
        .unwrap_or_default();

    let mut frontends = Vec::new();
    for port in spec.ports.iter().flatten() {
        let Some(proto) = Protocol::from_k8s(port.protocol.as_deref()) else {
            problem(
                ProblemReason::UnsupportedProtocol,
                format!("port {:?}: protocol {:?}", port.name, port.protocol),
            );
            continue;
        };
        let Some(number) = valid_port(port.port) else {
            problem(ProblemReason::InvalidPort, format!("port {}", port.port));
            continue;
        };
        for &ip in &ips {
            let backends = backends_for(port, proto, ip, own_slices, local_node, &mut problem);
            frontends.push((
                Frontend {
                    addr: ip,
                    port: number,
                    proto,
                    scope: lb_common::scope::EXTERNAL,
                },
                FrontendEntry {
                    service: object.clone(),
                    port_name: port.name.clone().unwrap_or_default(),
                    kind: FrontendKind::ClusterIp,
                    backends,
                    affinity_timeout,
                },
            ));
        }
    }
    out.desired.frontends.extend(frontends);
}

fn valid_port(p: i32) -> Option<u16> {
    u16::try_from(p).ok().filter(|&p| p != 0)
}

/// Usable backends of one Service port in one address family.
fn backends_for(
    port: &ServicePort,
    proto: Protocol,
    family_of: IpAddr,
    slices: &[&EndpointSlice],
    local_node: Option<&str>,
    problem: &mut impl FnMut(ProblemReason, String),
) -> BTreeSet<BackendAddr> {
    let want_name = port.name.as_deref().unwrap_or("");
    let want_type = if family_of.is_ipv4() { "IPv4" } else { "IPv6" };
    let mut ready_set = BTreeSet::new();
    let mut terminating_set = BTreeSet::new();
    for slice in slices.iter().filter(|s| s.address_type == want_type) {
        let slice_port = slice.ports.iter().flatten().find(|p| {
            p.name.as_deref().unwrap_or("") == want_name
                && Protocol::from_k8s(p.protocol.as_deref()) == Some(proto)
        });
        let Some(slice_port) = slice_port else {
            continue;
        };
        let Some(number) = slice_port.port.and_then(valid_port) else {
            problem(
                ProblemReason::InvalidEndpointPort,
                format!(
                    "EndpointSlice {}: port {want_name:?} has no valid number",
                    slice.metadata.name.as_deref().unwrap_or("?")
                ),
            );
            continue;
        };
        for ep in slice.endpoints.iter().flatten() {
            if local_node.is_some_and(|n| ep.node_name.as_deref() != Some(n)) {
                continue;
            }
            // The API's defaults: ready unset means ready, serving unset means "as ready",
            // terminating unset means not terminating.
            let c = ep.conditions.as_ref();
            let ready = c.and_then(|c| c.ready).unwrap_or(true);
            let serving = c.and_then(|c| c.serving).unwrap_or(ready);
            let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
            let backends = if ready {
                &mut ready_set
            } else if serving && terminating {
                &mut terminating_set
            } else {
                continue;
            };
            for a in &ep.addresses {
                match a.parse::<IpAddr>() {
                    Ok(addr) if addr.is_ipv4() == family_of.is_ipv4() => {
                        backends.insert(BackendAddr {
                            addr,
                            port: number,
                            proto,
                        });
                    }
                    Ok(_) | Err(_) => problem(
                        ProblemReason::InvalidEndpointAddress,
                        format!(
                            "EndpointSlice {}: address {a:?} is not {want_type}",
                            slice.metadata.name.as_deref().unwrap_or("?")
                        ),
                    ),
                }
            }
        }
    }
    if ready_set.is_empty() {
        terminating_set
    } else {
        ready_set
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn svc(v: serde_json::Value) -> Service {
        serde_json::from_value(v).expect("test Service parses")
    }
    fn slice(v: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(v).expect("test EndpointSlice parses")
    }

    fn web_service() -> Service {
        svc(json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"clusterIP": "10.96.0.20", "ports": [
                {"name": "http", "port": 80, "targetPort": "http-alt"},
                {"name": "metrics", "port": 9100, "protocol": "TCP", "targetPort": 9100}
            ]}
        }))
    }

    fn web_slice(endpoints: serde_json::Value) -> EndpointSlice {
        slice(json!({
            "metadata": {"name": "web-abc", "namespace": "shop",
                          "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"},
                      {"name": "metrics", "port": 9100}],
            "endpoints": endpoints
        }))
    }

    fn frontend(ip: &str, port: u16) -> Frontend {
        Frontend {
            addr: ip.parse().unwrap(),
            port,
            proto: Protocol::Tcp,
            scope: 0,
        }
    }

    fn backend_ips(t: &Translation, f: &Frontend) -> Vec<String> {
        t.desired.frontends[f]
            .backends
            .iter()
            .map(|b| b.to_string())
            .collect()
    }

    #[test]
    fn named_ports_map_to_slice_numbers() {
        let t = translate(&Snapshot {
            services: vec![web_service()],
            slices: vec![web_slice(json!([
                {"addresses": ["10.244.1.2"], "conditions": {"ready": true}},
                {"addresses": ["10.244.2.2"]}
            ]))],
            ..Default::default()
        });
        assert!(t.problems.is_empty(), "{:?}", t.problems);
        assert_eq!(
            backend_ips(&t, &frontend("10.96.0.20", 80)),
            ["10.244.1.2:8080", "10.244.2.2:8080"]
        );
        assert_eq!(
            backend_ips(&t, &frontend("10.96.0.20", 9100)),
            ["10.244.1.2:9100", "10.244.2.2:9100"]
        );
        assert_eq!(
            t.desired.frontends[&frontend("10.96.0.20", 80)].service,
            "shop/web"
        );
    }

    #[test]
    fn not_ready_endpoints_are_left_out() {
        let t = translate(&Snapshot {
            services: vec![web_service()],
            slices: vec![web_slice(json!([
                {"addresses": ["10.244.1.2"], "conditions": {"ready": false}},
                {"addresses": ["10.244.2.2"], "conditions": {"ready": true}}
            ]))],
            ..Default::default()
        });
        assert_eq!(
            backend_ips(&t, &frontend("10.96.0.20", 80)),
            ["10.244.2.2:8080"]
        );
    }

    #[test]
    fn serving_terminating_endpoints_are_the_fallback_when_none_is_ready() {
        let eps = json!([
            {"addresses": ["10.244.1.2"], "conditions": {"ready": true}},
            {"addresses": ["10.244.2.2"], "conditions": {"ready": false, "serving": true, "terminating": true}},
            {"addresses": ["10.244.3.2"], "conditions": {"ready": false, "serving": false, "terminating": true}}
        ]);
        let t = translate(&Snapshot {
            services: vec![web_service()],
            slices: vec![web_slice(eps)],
            ..Default::default()
        });
        assert_eq!(
            backend_ips(&t, &frontend("10.96.0.20", 80)),
            ["10.244.1.2:8080"]
        );
        let eps = json!([
            {"addresses": ["10.244.2.2"], "conditions": {"ready": false, "serving": true, "terminating": true}},
            {"addresses": ["10.244.3.2"], "conditions": {"ready": false, "serving": false, "terminating": true}},
            {"addresses": ["10.244.4.2"], "conditions": {"ready": false}}
        ]);
        let t = translate(&Snapshot {
            services: vec![web_service()],
            slices: vec![web_slice(eps)],
            ..Default::default()
        });
        assert_eq!(
            backend_ips(&t, &frontend("10.96.0.20", 80)),
            ["10.244.2.2:8080"]
        );
    }

    #[test]
    fn internal_traffic_policy_local_keeps_only_this_nodes_endpoints() {
        let mut svc = web_service();
        svc.spec.as_mut().unwrap().internal_traffic_policy = Some("Local".into());
        let snap = Snapshot {
            services: vec![svc],
            slices: vec![web_slice(json!([
                {"addresses": ["10.244.1.2"], "nodeName": "node-a"},
                {"addresses": ["10.244.2.2"], "nodeName": "node-b"}
            ]))],
            ..Default::default()
        };
        let node = |n: &str| NodeContext {
            node_name: Some(n.into()),
        };
        let t = translate_for(&snap, &node("node-b"));
        assert_eq!(
            backend_ips(&t, &frontend("10.96.0.20", 80)),
            ["10.244.2.2:8080"]
        );
        let t = translate_for(&snap, &node("node-c"));
        assert!(backend_ips(&t, &frontend("10.96.0.20", 80)).is_empty());
        let t = translate(&snap);
        assert!(backend_ips(&t, &frontend("10.96.0.20", 80)).is_empty());
        assert_eq!(
            t.problems[0].reason,
            ProblemReason::LocalPolicyWithoutNodeName
        );
    }

    #[test]
    fn session_affinity_timeout_defaults_to_three_hours() {
        let mut svc = web_service();
        svc.spec.as_mut().unwrap().session_affinity = Some("ClientIP".into());
        let snap = |svc: Service| Snapshot {
            services: vec![svc],
            slices: vec![],
            ..Default::default()
        };
        let t = translate(&snap(svc.clone()));
        assert_eq!(
            t.desired.frontends[&frontend("10.96.0.20", 80)].affinity_timeout,
            10_800
        );
        svc.spec.as_mut().unwrap().session_affinity_config =
            serde_json::from_value(json!({"clientIP": {"timeoutSeconds": 60}})).unwrap();
        let t = translate(&snap(svc));
        assert_eq!(
            t.desired.frontends[&frontend("10.96.0.20", 80)].affinity_timeout,
            60
        );
        let t = translate(&snap(web_service()));
        assert_eq!(
            t.desired.frontends[&frontend("10.96.0.20", 80)].affinity_timeout,
            0
        );
    }

    #[test]
    fn a_service_without_slices_is_programmed_empty_so_it_rejects() {
        let t = translate(&Snapshot {
            services: vec![web_service()],
            slices: vec![],
            ..Default::default()
        });
        assert!(
            t.desired.frontends[&frontend("10.96.0.20", 80)]
                .backends
                .is_empty()
        );
    }

    #[test]
    fn port_name_mismatch_gives_no_backends() {
        let mut s = web_slice(json!([{"addresses": ["10.244.1.2"]}]));
        s.ports.as_mut().unwrap()[0].name = Some("web".into());
        let t = translate(&Snapshot {
            services: vec![web_service()],
            slices: vec![s],
            ..Default::default()
        });
        assert!(
            t.desired.frontends[&frontend("10.96.0.20", 80)]
                .backends
                .is_empty()
        );
        assert_eq!(
            t.desired.frontends[&frontend("10.96.0.20", 9100)]
                .backends
                .len(),
            1
        );
    }

    #[test]
    fn slices_of_other_services_and_namespaces_do_not_leak_in() {
        let mut other_ns = web_slice(json!([{"addresses": ["10.244.9.9"]}]));
        other_ns.metadata.namespace = Some("other".into());
        let mut other_svc = web_slice(json!([{"addresses": ["10.244.8.8"]}]));
        other_svc.metadata.labels =
            Some([(SERVICE_NAME_LABEL.to_string(), "api".to_string())].into());
        let t = translate(&Snapshot {
            services: vec![web_service()],
            slices: vec![other_ns, other_svc],
            ..Default::default()
        });
        assert!(
            t.desired.frontends[&frontend("10.96.0.20", 80)]
                .backends
                .is_empty()
        );
    }

    #[test]
    fn headless_external_name_and_other_proxy_are_skipped() {
        let headless = svc(json!({"metadata": {"name": "h", "namespace": "a"},
            "spec": {"clusterIP": "None", "ports": [{"port": 80}]}}));
        let ext = svc(json!({"metadata": {"name": "e", "namespace": "a"},
            "spec": {"type": "ExternalName", "externalName": "example.org"}}));
        let mut other = web_service();
        other.metadata.labels =
            Some([(SERVICE_PROXY_NAME_LABEL.to_string(), "other".to_string())].into());
        assert_eq!(skip_reason(&headless), Some(Skip::Headless));
        assert_eq!(skip_reason(&ext), Some(Skip::ExternalName));
        assert_eq!(skip_reason(&other), Some(Skip::OtherProxy));
        let t = translate(&Snapshot {
            services: vec![headless, ext, other],
            slices: vec![],
            ..Default::default()
        });
        assert!(t.desired.frontends.is_empty());
        assert!(t.problems.is_empty());
    }

    #[test]
    fn garbage_is_reported_and_the_rest_still_applies() {
        let bad_ip = svc(json!({"metadata": {"name": "bad", "namespace": "a"},
            "spec": {"clusterIP": "10.96.0.999", "ports": [{"port": 80}]}}));
        let bad_port = svc(json!({"metadata": {"name": "badport", "namespace": "a"},
            "spec": {"clusterIP": "10.96.0.30", "ports": [{"port": 70000}, {"port": 81, "protocol": "ICMP"}]}}));
        let no_name = svc(json!({"metadata": {}, "spec": {"clusterIP": "10.96.0.31"}}));
        let bad_slice = web_slice(json!([
            {"addresses": ["not-an-ip", "fd00::1", "10.244.3.2"]}
        ]));
        let unlabelled = slice(json!({"metadata": {"name": "x", "namespace": "a"},
            "addressType": "IPv4", "endpoints": []}));
        let t = translate(&Snapshot {
            services: vec![bad_ip, bad_port, no_name, web_service()],
            slices: vec![bad_slice, unlabelled],
            ..Default::default()
        });
        let reasons: BTreeSet<_> = t.problems.iter().map(|p| p.reason).collect();
        assert_eq!(
            reasons,
            [
                ProblemReason::MissingName,
                ProblemReason::InvalidClusterIp,
                ProblemReason::InvalidPort,
                ProblemReason::UnsupportedProtocol,
                ProblemReason::InvalidEndpointAddress,
            ]
            .into()
        );
        assert_eq!(
            backend_ips(&t, &frontend("10.96.0.20", 80)),
            ["10.244.3.2:8080"]
        );
        assert_eq!(t.desired.frontends.len(), 2, "only web's two ports");
    }

    #[test]
    fn dual_stack_uses_both_cluster_ips_and_matching_slices() {
        let s = svc(json!({"metadata": {"name": "web", "namespace": "shop"},
            "spec": {"clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20", "fd00:96::20"],
                     "ports": [{"name": "http", "port": 80}]}}));
        let mut v6 = web_slice(json!([{"addresses": ["fd00:244::2"]}]));
        v6.address_type = "IPv6".into();
        v6.metadata.name = Some("web-v6".into());
        let v4 = web_slice(json!([{"addresses": ["10.244.1.2"]}]));
        let t = translate(&Snapshot {
            services: vec![s],
            slices: vec![v4, v6],
            ..Default::default()
        });
        assert!(t.problems.is_empty(), "{:?}", t.problems);
        assert_eq!(
            backend_ips(&t, &frontend("10.96.0.20", 80)),
            ["10.244.1.2:8080"]
        );
        assert_eq!(
            backend_ips(&t, &frontend("fd00:96::20", 80)),
            ["[fd00:244::2]:8080"]
        );
    }

    proptest! {
        /// Whatever the endpoints say, every programmed backend is a ready-or-unknown endpoint
        /// of the right family, and translation never panics.
        #[test]
        fn backends_are_always_a_subset_of_usable_endpoints(
            eps in proptest::collection::vec((0u8..=255, proptest::option::of(any::<bool>()), any::<bool>()), 0..20)
        ) {
            let endpoints: Vec<_> = eps.iter().map(|(last, ready, garbage)| {
                let addr = if *garbage { format!("10.244.0.{last}x") } else { format!("10.244.0.{last}") };
                match ready {
                    Some(r) => json!({"addresses": [addr], "conditions": {"ready": r}}),
                    None => json!({"addresses": [addr]}),
                }
            }).collect();
            let t = translate(&Snapshot { services: vec![web_service()], slices: vec![web_slice(json!(endpoints))], ..Default::default() });
            let expected: BTreeSet<String> = eps.iter()
                .filter(|(_, ready, garbage)| *ready != Some(false) && !*garbage)
                .map(|(last, _, _)| format!("10.244.0.{last}:8080"))
                .collect();
            let got: BTreeSet<String> = backend_ips(&t, &frontend("10.96.0.20", 80)).into_iter().collect();
            prop_assert_eq!(got, expected);
        }
    }
}
