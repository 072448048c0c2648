//! Services and EndpointSlices to frontends and backends: a pure function, so every rule
//! kube-proxy applies can be checked by a plain unit test.
//!
//! Rules applied here:
//! - only Services with a cluster IP are proxied; headless (`clusterIP: None`), ExternalName
//!   and Services labelled with `service.kubernetes.io/service-proxy-name` are left alone;
//! - every Service port gets a frontend on each cluster IP, on each node address for its
//!   `nodePort` (NodePort and LoadBalancer Services, and 127.0.0.1 for IPv4), on each
//!   `status.loadBalancer.ingress[].ip` (unless its `ipMode` is `Proxy`) and on each of
//!   `spec.externalIPs` (only inside `--external-ip-cidrs` when that is set);
//! - each Service port is matched to the EndpointSlice port with the same name and protocol
//!   (the slice carries the resolved number, so a named `targetPort` works);
//! - endpoints are chosen as kube-proxy chooses them (see [`super::endpoints`]): ready ones,
//!   narrowed by topology hints, else serving and terminating ones;
//! - every frontend has an entry in the internal scope (sockets on this node): a ClusterIP
//!   follows `internalTrafficPolicy`, the other kinds use cluster-wide endpoints, since
//!   kube-proxy short-circuits traffic from the node and its pods to them. NodePort,
//!   LoadBalancer and external IP frontends also get an external-scope entry (traffic from
//!   outside the node) following `externalTrafficPolicy`;
//! - SCTP ports are skipped with a problem: this datapath does not translate SCTP;
//! - anything malformed is reported as a [`Problem`] and skipped; the rest still applies.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::cidr::Cidr;
use super::endpoints::{self, Endpoint, Place};
use super::model::{
    BackendAddr, DesiredState, Frontend, FrontendEntry, FrontendKind, Protocol, Selection,
};
use super::{SERVICE_NAME_LABEL, SERVICE_PROXY_NAME_LABEL, Service, Snapshot};
use lb_common::scope;

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
    InvalidNodePort,
    InvalidLoadBalancerIp,
    InvalidExternalIp,
    /// An external IP outside `--external-ip-cidrs` (CVE-2020-8554).
    ExternalIpNotAllowed,
    /// SCTP ports are recognised but not translated.
    SctpNotTranslated,
    InvalidSourceRange,
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
            ProblemReason::InvalidNodePort => "invalid_node_port",
            ProblemReason::InvalidLoadBalancerIp => "invalid_load_balancer_ip",
            ProblemReason::InvalidExternalIp => "invalid_external_ip",
            ProblemReason::ExternalIpNotAllowed => "external_ip_not_allowed",
            ProblemReason::SctpNotTranslated => "sctp_not_translated",
            ProblemReason::InvalidSourceRange => "invalid_source_range",
        }
    }

    /// Whether the input is valid but deliberately not programmed (a policy or an unsupported
    /// feature), rather than malformed.
    pub fn is_refusal(self) -> bool {
        matches!(
            self,
            ProblemReason::ExternalIpNotAllowed | ProblemReason::SctpNotTranslated
        )
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
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeContext {
    /// This node's name (`nodeName` of local endpoints, `forNodes` hints).
    pub node_name: Option<String>,
    /// This node's zone (`forZones` hints).
    pub zone: Option<String>,
    /// Addresses NodePorts answer on (127.0.0.1 is added for IPv4 Services).
    pub node_ips: Vec<IpAddr>,
    /// When set, `externalIPs` outside these ranges are refused (CVE-2020-8554).
    pub external_ip_cidrs: Option<Vec<Cidr>>,
}

impl NodeContext {
    fn place(&self) -> Place<'_> {
        Place {
            node: self.node_name.as_deref(),
            zone: self.zone.as_deref(),
        }
    }
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

/// One Service's translation in progress: its identity, its problems and its frontends.
struct ServiceTranslation<'a> {
    object: String,
    spec: &'a ServiceSpec,
    node: &'a NodeContext,
    problems: Vec<Problem>,
    frontends: Vec<(Frontend, FrontendEntry)>,
    /// `loadBalancerSourceRanges`, for LoadBalancer frontends in the external scope.
    source_ranges: Vec<Cidr>,
}

impl ServiceTranslation<'_> {
    fn problem(&mut self, reason: ProblemReason, detail: String) {
        self.problems.push(Problem {
            object: self.object.clone(),
            reason,
            detail,
        });
    }

    /// Parses a list of addresses, reporting the ones that do not parse.
    fn addresses<'s>(
        &mut self,
        strings: impl IntoIterator<Item = &'s str>,
        what: &str,
        reason: ProblemReason,
    ) -> Vec<IpAddr> {
        let mut ips = Vec::new();
        for s in strings {
            match s.parse::<IpAddr>() {
                Ok(ip) => ips.push(ip),
                Err(e) => self.problem(reason, format!("{what} {s:?}: {e}")),
            }
        }
        ips
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
    if skip_reason(svc).is_some() {
        return;
    }
    let Some(spec) = svc.spec.as_ref() else {
        return;
    };
    let mut t = ServiceTranslation {
        object: format!("{ns}/{name}"),
        spec,
        node,
        problems: Vec::new(),
        frontends: Vec::new(),
        source_ranges: Vec::new(),
    };
    for r in spec.load_balancer_source_ranges.iter().flatten() {
        match r.parse::<Cidr>() {
            Ok(c) => t.source_ranges.push(c),
            Err(e) => t.problem(
                ProblemReason::InvalidSourceRange,
                format!("loadBalancerSourceRanges: {e}"),
            ),
        }
    }

    // clusterIPs is authoritative when present (dual-stack); clusterIP otherwise.
    let ip_strings: Vec<&str> = match spec.cluster_ips.as_deref() {
        Some(ips) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
        _ => spec.cluster_ip.as_deref().into_iter().collect(),
    };
    let cluster_ips = t.addresses(ip_strings, "clusterIP", ProblemReason::InvalidClusterIp);
    let extra = extra_addresses(&mut t, svc, &cluster_ips);

    if spec.internal_traffic_policy.as_deref() == Some("Local") && node.node_name.is_none() {
        t.problem(
            ProblemReason::LocalPolicyWithoutNodeName,
            "internalTrafficPolicy: Local but the agent has no --node-name".into(),
        );
    }
    let own_slices = slices
        .get(&(ns, name))
        .map(Vec::as_slice)
        .unwrap_or_default();

    for port in spec.ports.iter().flatten() {
        translate_port(&mut t, port, &cluster_ips, &extra, own_slices);
    }
    if let Some(hc) = health_check(&mut t, own_slices) {
        out.desired.health_checks.insert(hc.0, hc.1);
    }
    out.problems.append(&mut t.problems);
    out.desired.frontends.extend(t.frontends);
}

/// Addresses of a Service besides its cluster IPs, with their kind: LoadBalancer ingress IPs
/// and external IPs. Only addresses of a family the Service has are kept (its endpoints are of
/// those families).
fn extra_addresses(
    t: &mut ServiceTranslation<'_>,
    svc: &Service,
    cluster_ips: &[IpAddr],
) -> Vec<(FrontendKind, IpAddr)> {
    let spec = t.spec;
    let mut out = Vec::new();
    if spec.type_.as_deref() == Some("LoadBalancer") {
        let ingress = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref());
        // ipMode Proxy: the load balancer proxies to the nodes itself, so its address must not
        // be short-circuited on the node (KEP-1860).
        let strings: Vec<&str> = ingress
            .into_iter()
            .flatten()
            .filter(|i| i.ip_mode.as_deref() != Some("Proxy"))
            .filter_map(|i| i.ip.as_deref())
            .collect();
        for ip in t.addresses(
            strings,
            "loadBalancer ingress IP",
            ProblemReason::InvalidLoadBalancerIp,
        ) {
            out.push((FrontendKind::LoadBalancer, ip));
        }
    }
    let strings: Vec<&str> = spec
        .external_ips
        .iter()
        .flatten()
        .map(String::as_str)
        .collect();
    for ip in t.addresses(strings, "externalIP", ProblemReason::InvalidExternalIp) {
        if let Some(allowed) = &t.node.external_ip_cidrs
            && !allowed.iter().any(|c| c.contains(ip))
        {
            t.problem(
                ProblemReason::ExternalIpNotAllowed,
                format!("externalIP {ip} is outside --external-ip-cidrs: not programmed"),
            );
            continue;
        }
        out.push((FrontendKind::ExternalIp, ip));
    }
    out.retain(|(_, ip)| cluster_ips.iter().any(|c| c.is_ipv4() == ip.is_ipv4()));
    out
}

fn translate_port(
    t: &mut ServiceTranslation<'_>,
    port: &ServicePort,
    cluster_ips: &[IpAddr],
    extra: &[(FrontendKind, IpAddr)],
    slices: &[&EndpointSlice],
) {
    let spec = t.spec;
    let Some(proto) = Protocol::from_k8s(port.protocol.as_deref()) else {
        t.problem(
            ProblemReason::UnsupportedProtocol,
            format!("port {:?}: protocol {:?}", port.name, port.protocol),
        );
        return;
    };
    if proto == Protocol::Sctp {
        t.problem(
            ProblemReason::SctpNotTranslated,
            format!(
                "port {:?} ({}/SCTP): SCTP is not translated by the socket datapath; use a ClusterIP-aware SCTP proxy or pod IPs",
                port.name, port.port
            ),
        );
        return;
    }
    let Some(number) = valid_port(port.port) else {
        t.problem(ProblemReason::InvalidPort, format!("port {}", port.port));
        return;
    };
    // A nodePort left on a Service that is no longer NodePort or LoadBalancer is not served.
    let serves_node_ports = matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer"));
    let node_port = match port.node_port.filter(|&p| p != 0 && serves_node_ports) {
        None => None,
        Some(p) => {
            let valid = valid_port(p);
            if valid.is_none() {
                t.problem(ProblemReason::InvalidNodePort, format!("nodePort {p}"));
            }
            valid
        }
    };
    let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let external_local = spec.external_traffic_policy.as_deref() == Some("Local");
    let affinity_timeout = affinity_timeout(spec);
    let port_name = port.name.clone().unwrap_or_default();

    for family_v4 in [true, false] {
        let family_ips = |ips: &mut dyn Iterator<Item = IpAddr>| -> Vec<IpAddr> {
            ips.filter(|ip| ip.is_ipv4() == family_v4).collect()
        };
        let cips = family_ips(&mut cluster_ips.iter().copied());
        if cips.is_empty() {
            continue;
        }
        let eps = gather_endpoints(t, port, proto, family_v4, slices);
        let place = t.node.place();
        let cluster = endpoints::cluster(&eps, place);
        let local = endpoints::local(&eps);
        let internal_cluster_ip = if internal_local { &local } else { &cluster };
        let external = if external_local { &local } else { &cluster };

        let mut add = |kind: FrontendKind,
                       addr: IpAddr,
                       port: u16,
                       sc: u8,
                       chosen: &(BTreeSet<BackendAddr>, Selection)| {
            t.frontends.push((
                Frontend {
                    addr,
                    port,
                    proto,
                    scope: sc,
                },
                FrontendEntry {
                    service: t.object.clone(),
                    port_name: port_name.clone(),
                    kind,
                    backends: chosen.0.clone(),
                    affinity_timeout,
                    selection: chosen.1,
                    source_ranges: if kind == FrontendKind::LoadBalancer && sc == scope::EXTERNAL {
                        t.source_ranges.clone()
                    } else {
                        Vec::new()
                    },
                },
            ));
        };
        for &ip in &cips {
            add(
                FrontendKind::ClusterIp,
                ip,
                number,
                scope::INTERNAL,
                internal_cluster_ip,
            );
        }
        for &(kind, ip) in extra.iter().filter(|(_, ip)| ip.is_ipv4() == family_v4) {
            add(kind, ip, number, scope::INTERNAL, &cluster);
            add(kind, ip, number, scope::EXTERNAL, external);
        }
        if let Some(np) = node_port {
            let mut node_ips: Vec<IpAddr> = family_ips(&mut t.node.node_ips.iter().copied());
            node_ips.sort();
            node_ips.dedup();
            for &ip in &node_ips {
                add(FrontendKind::NodePort, ip, np, scope::INTERNAL, &cluster);
                add(FrontendKind::NodePort, ip, np, scope::EXTERNAL, external);
            }
            // kube-proxy (iptables mode) also serves IPv4 NodePorts on localhost, for clients
            // on the node only.
            let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
            if family_v4 && !node_ips.contains(&lo) {
                add(FrontendKind::NodePort, lo, np, scope::INTERNAL, &cluster);
            }
        }
    }
}

/// The health check node port of a LoadBalancer Service with `externalTrafficPolicy: Local`:
/// its port and this node's ready endpoints (terminating ones do not count, so load balancers
/// drain a node whose endpoints are going away, KEP-1669).
fn health_check(
    t: &mut ServiceTranslation<'_>,
    slices: &[&EndpointSlice],
) -> Option<(u16, super::model::HealthCheck)> {
    let spec = t.spec;
    if spec.type_.as_deref() != Some("LoadBalancer")
        || spec.external_traffic_policy.as_deref() != Some("Local")
    {
        return None;
    }
    let raw = spec.health_check_node_port.filter(|&p| p != 0)?;
    let Some(port) = valid_port(raw) else {
        t.problem(
            ProblemReason::InvalidNodePort,
            format!("healthCheckNodePort {raw}"),
        );
        return None;
    };
    let node = t.node.node_name.as_deref();
    let local: BTreeSet<&str> = slices
        .iter()
        .flat_map(|s| s.endpoints.iter().flatten())
        .filter(|e| node.is_some() && e.node_name.as_deref() == node)
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
        .filter_map(|e| e.addresses.first().map(String::as_str))
        .collect();
    let (namespace, name) = t.object.split_once('/').unwrap_or(("default", &t.object));
    Some((
        port,
        super::model::HealthCheck {
            namespace: namespace.to_string(),
            name: name.to_string(),
            local_endpoints: local.len(),
        },
    ))
}

/// sessionAffinity: ClientIP, with the API's default timeout of 3 hours; 0 for none.
fn affinity_timeout(spec: &ServiceSpec) -> u32 {
    if spec.session_affinity.as_deref() != Some("ClientIP") {
        return 0;
    }
    spec.session_affinity_config
        .as_ref()
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds)
        .and_then(|t| u32::try_from(t).ok())
        .filter(|&t| t > 0)
        .unwrap_or(DEFAULT_AFFINITY_TIMEOUT)
}

fn valid_port(p: i32) -> Option<u16> {
    u16::try_from(p).ok().filter(|&p| p != 0)
}

/// Every endpoint address of one Service port in one address family, with its conditions,
/// locality and topology hints.
fn gather_endpoints(
    t: &mut ServiceTranslation<'_>,
    port: &ServicePort,
    proto: Protocol,
    family_v4: bool,
    slices: &[&EndpointSlice],
) -> Vec<Endpoint> {
    let want_name = port.name.as_deref().unwrap_or("");
    let want_type = if family_v4 { "IPv4" } else { "IPv6" };
    let distribution = t.spec.traffic_distribution.as_deref();
    let mut out = Vec::new();
    for slice in slices.iter().filter(|s| s.address_type == want_type) {
        let slice_name = slice.metadata.name.as_deref().unwrap_or("?");
        let slice_port = slice.ports.iter().flatten().find(|p| {
            p.name.as_deref().unwrap_or("") == want_name
                && Protocol::from_k8s(p.protocol.as_deref()) == Some(proto)
        });
        let Some(slice_port) = slice_port else {
            continue;
        };
        let Some(number) = slice_port.port.and_then(valid_port) else {
            t.problem(
                ProblemReason::InvalidEndpointPort,
                format!("EndpointSlice {slice_name}: port {want_name:?} has no valid number"),
            );
            continue;
        };
        for ep in slice.endpoints.iter().flatten() {
            // The API's defaults: ready unset means ready, serving unset means "as ready",
            // terminating unset means not terminating.
            let c = ep.conditions.as_ref();
            let ready = c.and_then(|c| c.ready).unwrap_or(true);
            let serving = c.and_then(|c| c.serving).unwrap_or(ready);
            let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
            let local = t
                .node
                .node_name
                .as_deref()
                .is_some_and(|n| ep.node_name.as_deref() == Some(n));
            let (zone_hints, node_hints) = hints(ep, distribution);
            let remote = t.node.node_name.is_some()
                && ep.node_name.is_some()
                && ep.node_name != t.node.node_name;
            for a in &ep.addresses {
                match a.parse::<IpAddr>() {
                    Ok(addr) if addr.is_ipv4() == family_v4 => out.push(Endpoint {
                        backend: BackendAddr {
                            remote,
                            addr,
                            port: number,
                            proto,
                        },
                        ready,
                        serving,
                        terminating,
                        local,
                        zone_hints: zone_hints.clone(),
                        node_hints: node_hints.clone(),
                    }),
                    Ok(_) | Err(_) => t.problem(
                        ProblemReason::InvalidEndpointAddress,
                        format!("EndpointSlice {slice_name}: address {a:?} is not {want_type}"),
                    ),
                }
            }
        }
    }
    out
}

/// An endpoint's topology hints: the slice's own, or, for a Service with `trafficDistribution`
/// and an endpoint without any hints, the ones the EndpointSlice controller would write.
fn hints(
    ep: &k8s_openapi::api::discovery::v1::Endpoint,
    distribution: Option<&str>,
) -> (BTreeSet<String>, BTreeSet<String>) {
    if let Some(h) = &ep.hints {
        let zones = h
            .for_zones
            .iter()
            .flatten()
            .map(|z| z.name.clone())
            .collect();
        let nodes = h
            .for_nodes
            .iter()
            .flatten()
            .map(|n| n.name.clone())
            .collect();
        return (zones, nodes);
    }
    let zone = || ep.zone.iter().cloned().collect();
    match distribution {
        Some("PreferClose" | "PreferSameZone") => (zone(), BTreeSet::new()),
        Some("PreferSameNode") => (zone(), ep.node_name.iter().cloned().collect()),
        _ => (BTreeSet::new(), BTreeSet::new()),
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
            scope: lb_common::scope::INTERNAL,
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
            ..Default::default()
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

    fn front(ip: &str, port: u16, scope: u8) -> Frontend {
        Frontend {
            addr: ip.parse().unwrap(),
            port,
            proto: Protocol::Tcp,
            scope,
        }
    }

    fn node_b() -> NodeContext {
        NodeContext {
            node_name: Some("node-b".into()),
            zone: Some("zone-b".into()),
            node_ips: vec!["192.168.0.5".parse().unwrap(), "fd00::5".parse().unwrap()],
            external_ip_cidrs: None,
        }
    }

    /// web with endpoints on node-a (10.244.1.2) and node-b (10.244.2.2).
    fn exposed(spec: serde_json::Value, status: serde_json::Value) -> Snapshot {
        let mut s = json!({"clusterIP": "10.96.0.20", "ports": [
            {"name": "http", "port": 80, "nodePort": 30080}]});
        s.as_object_mut()
            .unwrap()
            .extend(spec.as_object().unwrap().clone());
        Snapshot {
            services: vec![svc(json!({
                "metadata": {"name": "web", "namespace": "shop"},
                "spec": s, "status": status}))],
            slices: vec![web_slice(json!([
                {"addresses": ["10.244.1.2"], "nodeName": "node-a"},
                {"addresses": ["10.244.2.2"], "nodeName": "node-b"}
            ]))],
            ..Default::default()
        }
    }

    const BOTH: [&str; 2] = ["10.244.1.2:8080", "10.244.2.2:8080"];
    const LOCAL: [&str; 1] = ["10.244.2.2:8080"];

    #[test]
    fn node_port_answers_on_every_node_address_and_localhost() {
        let t = translate_for(&exposed(json!({"type": "NodePort"}), json!({})), &node_b());
        assert!(t.problems.is_empty(), "{:?}", t.problems);
        for ip in ["192.168.0.5", "127.0.0.1"] {
            let f = front(ip, 30080, scope::INTERNAL);
            assert_eq!(backend_ips(&t, &f), BOTH, "{ip}");
            assert_eq!(t.desired.frontends[&f].kind, FrontendKind::NodePort);
        }
        // Traffic from outside arrives on node addresses, never on loopback.
        assert_eq!(
            backend_ips(&t, &front("192.168.0.5", 30080, scope::EXTERNAL)),
            BOTH
        );
        assert!(
            !t.desired
                .frontends
                .contains_key(&front("127.0.0.1", 30080, scope::EXTERNAL))
        );
        // An IPv4-only Service gets no NodePort on the node's IPv6 address.
        assert!(
            !t.desired
                .frontends
                .keys()
                .any(|f| f.addr == "fd00::5".parse::<IpAddr>().unwrap())
        );
        // The ClusterIP is still there; a ClusterIP Service gets no NodePort.
        assert_eq!(
            backend_ips(&t, &front("10.96.0.20", 80, scope::INTERNAL)),
            BOTH
        );
        let t = translate_for(&exposed(json!({"type": "ClusterIP"}), json!({})), &node_b());
        assert!(
            !t.desired
                .frontends
                .values()
                .any(|e| e.kind == FrontendKind::NodePort)
        );
    }

    #[test]
    fn load_balancer_ingress_ips_and_their_node_ports() {
        let status = json!({"loadBalancer": {"ingress": [
            {"ip": "203.0.113.10"}, {"ip": "203.0.113.11", "ipMode": "Proxy"},
            {"hostname": "lb.example.com"}, {"ip": "not-an-ip"}]}});
        let t = translate_for(
            &exposed(json!({"type": "LoadBalancer"}), status.clone()),
            &node_b(),
        );
        let lb = front("203.0.113.10", 80, scope::INTERNAL);
        assert_eq!(backend_ips(&t, &lb), BOTH);
        assert_eq!(t.desired.frontends[&lb].kind, FrontendKind::LoadBalancer);
        assert_eq!(
            backend_ips(&t, &front("203.0.113.10", 80, scope::EXTERNAL)),
            BOTH
        );
        assert!(
            !t.desired
                .frontends
                .contains_key(&front("203.0.113.11", 80, scope::INTERNAL)),
            "ipMode Proxy is not short-circuited"
        );
        assert_eq!(
            backend_ips(&t, &front("192.168.0.5", 30080, scope::INTERNAL)),
            BOTH
        );
        assert_eq!(
            t.problems.iter().map(|p| p.reason).collect::<Vec<_>>(),
            [ProblemReason::InvalidLoadBalancerIp]
        );
        // allocateLoadBalancerNodePorts: false and no nodePort: only the LB address.
        let mut snap = exposed(
            json!({"type": "LoadBalancer", "allocateLoadBalancerNodePorts": false,
                   "ports": [{"name": "http", "port": 80}]}),
            status,
        );
        let t = translate_for(&snap, &node_b());
        assert!(
            !t.desired
                .frontends
                .values()
                .any(|e| e.kind == FrontendKind::NodePort)
        );
        assert_eq!(backend_ips(&t, &lb), BOTH);
        snap.services[0].status = None;
        let t = translate_for(&snap, &node_b());
        assert!(!t.desired.frontends.contains_key(&lb));
    }

    #[test]
    fn external_ips_and_the_guard() {
        let spec = json!({"externalIPs": ["198.51.100.7", "203.0.113.9", "bogus"]});
        let t = translate_for(&exposed(spec.clone(), json!({})), &node_b());
        for ip in ["198.51.100.7", "203.0.113.9"] {
            let f = front(ip, 80, scope::INTERNAL);
            assert_eq!(backend_ips(&t, &f), BOTH);
            assert_eq!(t.desired.frontends[&f].kind, FrontendKind::ExternalIp);
        }
        assert_eq!(t.problems[0].reason, ProblemReason::InvalidExternalIp);

        let guarded = NodeContext {
            external_ip_cidrs: Some(vec!["198.51.100.0/24".parse().unwrap()]),
            ..node_b()
        };
        let t = translate_for(&exposed(spec, json!({})), &guarded);
        assert!(
            t.desired
                .frontends
                .contains_key(&front("198.51.100.7", 80, scope::EXTERNAL))
        );
        assert!(
            !t.desired
                .frontends
                .keys()
                .any(|f| f.addr == "203.0.113.9".parse::<IpAddr>().unwrap())
        );
        let refused: Vec<_> = t
            .problems
            .iter()
            .filter(|p| p.reason == ProblemReason::ExternalIpNotAllowed)
            .collect();
        assert_eq!(refused.len(), 1, "{:?}", t.problems);
        assert!(refused[0].detail.contains("203.0.113.9"));
        assert!(refused[0].reason.is_refusal());
    }

    #[test]
    fn external_traffic_policy_local_applies_to_outside_traffic_only() {
        let t = translate_for(
            &exposed(
                json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                       "externalIPs": ["198.51.100.7"]}),
                json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}]}}),
            ),
            &node_b(),
        );
        for ip in ["192.168.0.5", "203.0.113.10", "198.51.100.7"] {
            let port = if ip == "192.168.0.5" { 30080 } else { 80 };
            let ext = &t.desired.frontends[&front(ip, port, scope::EXTERNAL)];
            assert_eq!(backend_ips(&t, &front(ip, port, scope::EXTERNAL)), LOCAL);
            assert!(ext.selection.local_only);
            // From the node and its pods: every endpoint, as kube-proxy short-circuits.
            assert_eq!(backend_ips(&t, &front(ip, port, scope::INTERNAL)), BOTH);
        }
        assert_eq!(
            backend_ips(&t, &front("10.96.0.20", 80, scope::INTERNAL)),
            BOTH
        );
    }

    #[test]
    fn topology_hints_and_prefer_close() {
        let slice_with = |eps: serde_json::Value| web_slice(eps);
        let hinted = json!([
            {"addresses": ["10.244.1.2"], "zone": "zone-a", "hints": {"forZones": [{"name": "zone-a"}]}},
            {"addresses": ["10.244.2.2"], "zone": "zone-b", "hints": {"forZones": [{"name": "zone-b"}]}},
            {"addresses": ["10.244.3.2"], "zone": "zone-b", "hints": {"forZones": [{"name": "zone-b"}]}}
        ]);
        let snap = Snapshot {
            services: vec![web_service()],
            slices: vec![slice_with(hinted)],
            ..Default::default()
        };
        let t = translate_for(&snap, &node_b());
        let f = frontend("10.96.0.20", 80);
        assert_eq!(backend_ips(&t, &f), ["10.244.2.2:8080", "10.244.3.2:8080"]);
        assert_eq!(
            t.desired.frontends[&f].selection.topology,
            crate::k8s::model::Topology::Zone
        );
        // A node in a zone no endpoint is hinted for, or of unknown zone: every endpoint.
        let elsewhere = NodeContext {
            zone: Some("zone-z".into()),
            ..node_b()
        };
        assert_eq!(backend_ips(&translate_for(&snap, &elsewhere), &f).len(), 3);

        // trafficDistribution: PreferClose without hints: the endpoints' own zones.
        let zoned = json!([
            {"addresses": ["10.244.1.2"], "zone": "zone-a"},
            {"addresses": ["10.244.2.2"], "zone": "zone-b"}
        ]);
        let mut svc = web_service();
        svc.spec.as_mut().unwrap().traffic_distribution = Some("PreferClose".into());
        let snap = Snapshot {
            services: vec![svc.clone()],
            slices: vec![slice_with(zoned.clone())],
            ..Default::default()
        };
        assert_eq!(
            backend_ips(&translate_for(&snap, &node_b()), &f),
            ["10.244.2.2:8080"]
        );
        // Without trafficDistribution zones alone change nothing.
        let plain = Snapshot {
            services: vec![web_service()],
            slices: vec![slice_with(zoned)],
            ..Default::default()
        };
        assert_eq!(backend_ips(&translate_for(&plain, &node_b()), &f).len(), 2);
        // One endpoint without a zone: hints cannot be used, every endpoint.
        let partial = json!([
            {"addresses": ["10.244.1.2"], "zone": "zone-a"},
            {"addresses": ["10.244.2.2"], "zone": "zone-b"},
            {"addresses": ["10.244.3.2"]}
        ]);
        let snap = Snapshot {
            services: vec![svc],
            slices: vec![slice_with(partial)],
            ..Default::default()
        };
        assert_eq!(backend_ips(&translate_for(&snap, &node_b()), &f).len(), 3);
    }

    #[test]
    fn sctp_ports_are_skipped_with_a_problem_and_the_rest_applies() {
        let s = svc(json!({"metadata": {"name": "sig", "namespace": "tel"},
            "spec": {"clusterIP": "10.96.0.30", "ports": [
                {"name": "sctp", "port": 3868, "protocol": "SCTP"},
                {"name": "tcp", "port": 3868, "protocol": "TCP"}]}}));
        let t = translate(&Snapshot {
            services: vec![s],
            slices: vec![],
            ..Default::default()
        });
        assert_eq!(t.desired.frontends.len(), 1);
        assert!(t.desired.frontends.keys().all(|f| f.proto == Protocol::Tcp));
        assert_eq!(t.problems.len(), 1);
        assert_eq!(t.problems[0].reason, ProblemReason::SctpNotTranslated);
        assert!(t.problems[0].reason.is_refusal());
    }

    #[test]
    fn dual_stack_node_ports_use_each_familys_node_addresses() {
        let mut snap = exposed(
            json!({"type": "NodePort", "clusterIPs": ["10.96.0.20", "fd00:96::20"],
            "ipFamilies": ["IPv4", "IPv6"]}),
            json!({}),
        );
        snap.slices.push(slice(json!({
            "metadata": {"name": "web-v6", "namespace": "shop",
                          "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv6",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["fd00:244:1::2"]}]})));
        let t = translate_for(&snap, &node_b());
        assert_eq!(
            backend_ips(&t, &front("fd00::5", 30080, scope::INTERNAL)),
            ["[fd00:244:1::2]:8080"]
        );
        assert_eq!(
            backend_ips(&t, &front("192.168.0.5", 30080, scope::INTERNAL)),
            BOTH
        );
    }

    #[test]
    fn health_check_node_port_counts_this_nodes_ready_endpoints() {
        let mut snap = exposed(
            json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                   "healthCheckNodePort": 32000}),
            json!({}),
        );
        let t = translate_for(&snap, &node_b());
        let hc = &t.desired.health_checks[&32000];
        assert_eq!(
            (hc.namespace.as_str(), hc.name.as_str(), hc.local_endpoints),
            ("shop", "web", 1)
        );
        // Terminating endpoints do not count: the load balancer should drain this node.
        snap.slices = vec![web_slice(json!([
            {"addresses": ["10.244.2.2"], "nodeName": "node-b",
             "conditions": {"ready": false, "serving": true, "terminating": true}}
        ]))];
        let t = translate_for(&snap, &node_b());
        assert_eq!(t.desired.health_checks[&32000].local_endpoints, 0);
        // Cluster policy: no health check port is served.
        let t = translate_for(
            &exposed(
                json!({"type": "LoadBalancer", "healthCheckNodePort": 32000}),
                json!({}),
            ),
            &node_b(),
        );
        assert!(t.desired.health_checks.is_empty());
    }
}
