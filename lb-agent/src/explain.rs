//! `lb-agent explain <namespace>/<service>`: the path a person walks by hand when a Service
//! does not answer, in one report: does the Service exist and what type is it, what does it
//! select, which EndpointSlices belong to it, what each endpoint's conditions are, what the
//! pinned maps hold for each of its frontends, and one line naming the first broken stage.
//!
//! The diagnosis is a pure function of the objects (from a manifest directory or the API
//! server) and the maps' content, so it is unit-tested without a cluster or a kernel.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};

use serde::Serialize;

use crate::k8s::translate::{NodeContext, Skip, skip_reason, translate_for};
use crate::k8s::{EndpointSlice, SERVICE_NAME_LABEL, Service, Snapshot};
use crate::sync::MapState;
use crate::sync::map_state::addr_from_map;
use crate::sync::plan::service_key;

/// The broken stage, or none.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "stage", content = "detail", rename_all = "snake_case")]
pub enum Verdict {
    /// No Service of that name in that namespace.
    ServiceNotFound,
    /// The Service exists but this load balancer does not proxy it (headless, ExternalName,
    /// another proxy's label, no cluster IP).
    NotProxied(String),
    /// No EndpointSlice with endpoints belongs to the Service.
    NoEndpoints,
    /// Endpoints exist, but no EndpointSlice port has the name (and protocol) of a Service port.
    PortNameMismatch(String),
    /// Endpoints exist and ports match, but none is ready (nor serving while terminating), or
    /// none is on this node under `internalTrafficPolicy: Local`.
    NoneReady(String),
    /// The cluster side is fine but the maps do not hold what they should.
    NotInMaps(String),
    /// The cluster side is fine; the maps were not read.
    MapsNotChecked(String),
    Ok(String),
}

impl Verdict {
    pub fn is_ok(&self) -> bool {
        matches!(self, Verdict::Ok(_))
    }

    /// Whether a stage is broken (`lb-agent explain` exits with 2 then).
    pub fn is_broken(&self) -> bool {
        !matches!(
            self,
            Verdict::Ok(_) | Verdict::MapsNotChecked(_) | Verdict::NotProxied(_)
        )
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::ServiceNotFound => f.write_str("broken: Service not found"),
            Verdict::NotProxied(d) => write!(f, "not proxied: {d}"),
            Verdict::NoEndpoints => f.write_str(
                "broken: no endpoints (no EndpointSlice with endpoints for this Service: does the selector match any pod?)",
            ),
            Verdict::PortNameMismatch(d) => write!(f, "broken: port name mismatch: {d}"),
            Verdict::NoneReady(d) => write!(f, "broken: none ready: {d}"),
            Verdict::NotInMaps(d) => write!(f, "broken: not in maps: {d}"),
            Verdict::MapsNotChecked(d) => write!(f, "cluster side ok; maps not checked: {d}"),
            Verdict::Ok(d) => write!(f, "ok: {d}"),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ServiceInfo {
    #[serde(rename = "type")]
    pub type_: String,
    pub cluster_ips: Vec<String>,
    /// `name port/PROTO -> targetPort`
    pub ports: Vec<String>,
    pub selector: BTreeMap<String, String>,
    pub internal_traffic_policy: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct EndpointInfo {
    pub addresses: Vec<String>,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub node: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SliceInfo {
    pub name: String,
    pub address_type: String,
    /// `name=port/PROTO`
    pub ports: Vec<String>,
    pub endpoints: Vec<EndpointInfo>,
}

#[derive(Clone, Debug, Serialize)]
pub struct FrontendInfo {
    pub frontend: String,
    pub port_name: String,
    /// Backends translation wants, `addr:port`.
    pub want: Vec<String>,
    /// What the maps hold: None when the frontend is not in them (or they were not read).
    pub maps: Option<MapsInfo>,
}

#[derive(Clone, Debug, Serialize)]
pub struct MapsInfo {
    pub rev_nat_id: u16,
    /// `addr:port (id N)` per slot; `slot K: missing` for a broken slot.
    pub backends: Vec<String>,
    pub matches: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub service: String,
    pub found: Option<ServiceInfo>,
    pub slices: Vec<SliceInfo>,
    pub frontends: Vec<FrontendInfo>,
    /// Problems translation found in this Service or its slices.
    pub problems: Vec<String>,
    /// Why the maps were not read, when they were not.
    pub maps_not_read: Option<String>,
    pub verdict: Verdict,
}

/// What explain knows about the maps.
pub enum Maps<'a> {
    Read(&'a MapState),
    /// Why they were not read.
    NotRead(String),
}

fn endpoint_conditions(ep: &k8s_openapi::api::discovery::v1::Endpoint) -> (bool, bool, bool) {
    // The API's defaults, as translation applies them.
    let c = ep.conditions.as_ref();
    let ready = c.and_then(|c| c.ready).unwrap_or(true);
    let serving = c.and_then(|c| c.serving).unwrap_or(ready);
    let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
    (ready, serving, terminating)
}

fn service_info(svc: &Service) -> ServiceInfo {
    let spec = svc.spec.clone().unwrap_or_default();
    let cluster_ips = match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => ips.clone(),
        _ => spec.cluster_ip.clone().into_iter().collect(),
    };
    let ports = spec
        .ports
        .iter()
        .flatten()
        .map(|p| {
            let target = match &p.target_port {
                Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(i)) => {
                    i.to_string()
                }
                Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s)) => {
                    s.clone()
                }
                None => p.port.to_string(),
            };
            format!(
                "{} {}/{} -> targetPort {target}",
                p.name
                    .as_deref()
                    .filter(|n| !n.is_empty())
                    .unwrap_or("(unnamed)"),
                p.port,
                p.protocol.as_deref().unwrap_or("TCP"),
            )
        })
        .collect();
    ServiceInfo {
        type_: spec.type_.clone().unwrap_or_else(|| "ClusterIP".into()),
        cluster_ips,
        ports,
        selector: spec.selector.clone().unwrap_or_default(),
        internal_traffic_policy: spec.internal_traffic_policy.clone(),
    }
}

fn slice_info(s: &EndpointSlice) -> SliceInfo {
    SliceInfo {
        name: s.metadata.name.clone().unwrap_or_default(),
        address_type: s.address_type.clone(),
        ports: s
            .ports
            .iter()
            .flatten()
            .map(|p| {
                format!(
                    "{}={}/{}",
                    p.name
                        .as_deref()
                        .filter(|n| !n.is_empty())
                        .unwrap_or("(unnamed)"),
                    p.port.map_or_else(|| "?".into(), |n| n.to_string()),
                    p.protocol.as_deref().unwrap_or("TCP")
                )
            })
            .collect(),
        endpoints: s
            .endpoints
            .iter()
            .flatten()
            .map(|ep| {
                let (ready, serving, terminating) = endpoint_conditions(ep);
                EndpointInfo {
                    addresses: ep.addresses.clone(),
                    ready,
                    serving,
                    terminating,
                    node: ep.node_name.clone(),
                }
            })
            .collect(),
    }
}

/// Service ports that no EndpointSlice offers by name and protocol, with what they offer.
fn port_mismatches(svc: &Service, slices: &[&EndpointSlice]) -> Option<String> {
    let offered: BTreeSet<(String, String)> = slices
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .map(|p| {
            (
                p.name.clone().unwrap_or_default(),
                p.protocol.clone().unwrap_or_else(|| "TCP".into()),
            )
        })
        .collect();
    let missing: Vec<String> = svc
        .spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .filter(|p| {
            let want = (
                p.name.clone().unwrap_or_default(),
                p.protocol.clone().unwrap_or_else(|| "TCP".into()),
            );
            !offered.contains(&want)
        })
        .map(|p| {
            format!(
                "Service port {:?}/{}",
                p.name.as_deref().unwrap_or(""),
                p.protocol.as_deref().unwrap_or("TCP")
            )
        })
        .collect();
    if missing.is_empty() {
        return None;
    }
    let offered: Vec<String> = offered.iter().map(|(n, p)| format!("{n:?}/{p}")).collect();
    Some(format!(
        "{} not in any EndpointSlice (they offer {}); the EndpointSlice port name comes from the pod's containerPort name that targetPort names",
        missing.join(", "),
        if offered.is_empty() {
            "no ports".to_string()
        } else {
            offered.join(", ")
        }
    ))
}

/// Diagnoses `namespace/name` from a snapshot of the cluster (or manifests) and the maps.
pub fn explain(
    snapshot: &Snapshot,
    namespace: &str,
    name: &str,
    node: &NodeContext,
    maps: Maps<'_>,
) -> Report {
    let object = format!("{namespace}/{name}");
    let in_ns = |ns: &Option<String>| ns.as_deref().unwrap_or("default") == namespace;
    let svc = snapshot
        .services
        .iter()
        .find(|s| in_ns(&s.metadata.namespace) && s.metadata.name.as_deref() == Some(name));
    let own: Vec<&EndpointSlice> = snapshot
        .slices
        .iter()
        .filter(|s| {
            in_ns(&s.metadata.namespace)
                && s.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(SERVICE_NAME_LABEL))
                    .map(String::as_str)
                    == Some(name)
        })
        .collect();
    let mut report = Report {
        service: object.clone(),
        found: svc.map(service_info),
        slices: own.iter().map(|s| slice_info(s)).collect(),
        frontends: Vec::new(),
        problems: Vec::new(),
        maps_not_read: match &maps {
            Maps::Read(_) => None,
            Maps::NotRead(why) => Some(why.clone()),
        },
        verdict: Verdict::ServiceNotFound,
    };
    let Some(svc) = svc else {
        return report;
    };
    if let Some(skip) = skip_reason(svc) {
        report.verdict = Verdict::NotProxied(
            match skip {
                Skip::Headless => "headless (clusterIP: None): DNS returns the pod IPs directly",
                Skip::ExternalName => "type ExternalName: DNS returns a CNAME",
                Skip::NoClusterIp => "no clusterIP",
                Skip::OtherProxy => {
                    "labelled service.kubernetes.io/service-proxy-name: another proxy handles it"
                }
            }
            .into(),
        );
        return report;
    }

    // Translate just this Service and its slices, as the agent does.
    let t = translate_for(
        &Snapshot {
            services: vec![svc.clone()],
            slices: own.iter().map(|s| (*s).clone()).collect(),
            ..Default::default()
        },
        node,
    );
    report.problems = t.problems.iter().map(ToString::to_string).collect();
    let mut empty_frontends = Vec::new();
    let mut not_in_maps = Vec::new();
    for (f, e) in &t.desired.frontends {
        let want: Vec<String> = e.backends.iter().map(ToString::to_string).collect();
        if want.is_empty() {
            empty_frontends.push(f.to_string());
        }
        let maps_info = match &maps {
            Maps::NotRead(_) => None,
            Maps::Read(state) => {
                let key = service_key(f, 0);
                state.services.get(&key).map(|v| {
                    let mut got = BTreeSet::new();
                    let backends = state
                        .slots_of(&key)
                        .into_iter()
                        .enumerate()
                        .map(|(i, id)| {
                            match id.and_then(|id| state.backends.get(&id).map(|b| (id, b))) {
                                Some((id, b)) => {
                                    let a = format!("{}:{}", addr_from_map(&b.addr), b.port);
                                    got.insert(a.clone());
                                    format!("{a} (id {id})")
                                }
                                None => format!("slot {}: missing", i + 1),
                            }
                        })
                        .collect::<Vec<_>>();
                    let matches = backends.len() == want.len()
                        && got == want.iter().cloned().collect::<BTreeSet<_>>();
                    MapsInfo {
                        rev_nat_id: v.rev_nat_id,
                        backends,
                        matches,
                    }
                })
            }
        };
        if let Maps::Read(_) = maps {
            match &maps_info {
                None => not_in_maps.push(format!("{f} has no entry")),
                Some(m) if !m.matches => not_in_maps.push(format!(
                    "{f} holds [{}], want [{}]",
                    m.backends.join(", "),
                    want.join(", ")
                )),
                Some(_) => {}
            }
        }
        report.frontends.push(FrontendInfo {
            frontend: f.to_string(),
            port_name: e.port_name.clone(),
            want,
            maps: maps_info,
        });
    }

    let endpoints: usize = own
        .iter()
        .flat_map(|s| s.endpoints.iter().flatten())
        .filter(|e| !e.addresses.is_empty())
        .count();
    report.verdict = if endpoints == 0 {
        Verdict::NoEndpoints
    } else if let Some(d) = port_mismatches(svc, &own) {
        Verdict::PortNameMismatch(d)
    } else if !empty_frontends.is_empty() {
        let local = svc
            .spec
            .as_ref()
            .and_then(|s| s.internal_traffic_policy.as_deref())
            == Some("Local");
        let why = if local {
            format!(
                "internalTrafficPolicy: Local and no ready endpoint on node {:?}",
                node.node_name
                    .as_deref()
                    .unwrap_or("(unknown: no --node-name)")
            )
        } else {
            format!(
                "{endpoints} endpoint(s), none ready and none serving while terminating (readiness probes failing?)"
            )
        };
        Verdict::NoneReady(format!(
            "{} reject connections: {why}",
            empty_frontends.join(", ")
        ))
    } else if !not_in_maps.is_empty() {
        Verdict::NotInMaps(format!(
            "{} (is the agent running and in sync? see lb_capacity_overflows_total and the agent log)",
            not_in_maps.join("; ")
        ))
    } else if let Maps::NotRead(why) = &maps {
        Verdict::MapsNotChecked(why.clone())
    } else {
        let n: BTreeSet<&String> = report.frontends.iter().flat_map(|f| &f.want).collect();
        Verdict::Ok(format!(
            "{} frontend(s) in the maps, forwarding to {} backend(s)",
            report.frontends.len(),
            n.len()
        ))
    };
    report
}

/// The report as people read it.
pub fn render_text(r: &Report) -> String {
    let mut o = String::new();
    let Some(info) = &r.found else {
        let _ = writeln!(o, "Service {}: not found", r.service);
        let _ = writeln!(o, "verdict: {}", r.verdict);
        return o;
    };
    let _ = writeln!(
        o,
        "Service {}: type {}, clusterIPs [{}]",
        r.service,
        info.type_,
        info.cluster_ips.join(", ")
    );
    for p in &info.ports {
        let _ = writeln!(o, "  port {p}");
    }
    if let Some(p) = &info.internal_traffic_policy {
        let _ = writeln!(o, "  internalTrafficPolicy: {p}");
    }
    if info.selector.is_empty() {
        let _ = writeln!(o, "  selector: none (EndpointSlices are managed by hand)");
    } else {
        let sel: Vec<String> = info
            .selector
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let _ = writeln!(o, "  selector: {}", sel.join(","));
    }
    let _ = writeln!(o, "EndpointSlices ({}):", r.slices.len());
    for s in &r.slices {
        let _ = writeln!(
            o,
            "  {} {} ports [{}], {} endpoint(s)",
            s.name,
            s.address_type,
            s.ports.join(", "),
            s.endpoints.len()
        );
        for e in &s.endpoints {
            let _ = writeln!(
                o,
                "    {:<24} ready={} serving={} terminating={}{}",
                e.addresses.join(","),
                e.ready,
                e.serving,
                e.terminating,
                e.node
                    .as_deref()
                    .map(|n| format!(" node={n}"))
                    .unwrap_or_default()
            );
        }
    }
    if !r.frontends.is_empty() {
        let _ = writeln!(o, "Frontends:");
    }
    for f in &r.frontends {
        let _ = writeln!(
            o,
            "  {} (port {:?}): want [{}]",
            f.frontend,
            f.port_name,
            f.want.join(", ")
        );
        match &f.maps {
            Some(m) => {
                let _ = writeln!(
                    o,
                    "    maps: rev_nat {}, [{}]{}",
                    m.rev_nat_id,
                    m.backends.join(", "),
                    if m.matches { "" } else { "  <- differs" }
                );
            }
            None if r.maps_not_read.is_some() => {
                let _ = writeln!(o, "    maps: not read");
            }
            None => {
                let _ = writeln!(o, "    maps: no entry");
            }
        }
    }
    for p in &r.problems {
        let _ = writeln!(o, "problem: {p}");
    }
    let _ = writeln!(o, "verdict: {}", r.verdict);
    o
}

/// The Service and its EndpointSlices from the API server (get + list, as `kubectl` would).
pub async fn fetch_from_cluster(
    client: kube::Client,
    namespace: &str,
    name: &str,
) -> anyhow::Result<Snapshot> {
    use anyhow::Context as _;
    let services: kube::Api<Service> = kube::Api::namespaced(client.clone(), namespace);
    let slices: kube::Api<EndpointSlice> = kube::Api::namespaced(client, namespace);
    let svc = services
        .get_opt(name)
        .await
        .with_context(|| format!("getting Service {namespace}/{name}"))?;
    let list = slices
        .list(&kube::api::ListParams::default().labels(&format!("{SERVICE_NAME_LABEL}={name}")))
        .await
        .with_context(|| format!("listing the EndpointSlices of {namespace}/{name}"))?;
    Ok(Snapshot {
        services: svc.into_iter().collect(),
        slices: list.items,
        ..Default::default()
    })
}

/// Splits `namespace/name` (a bare name means the `default` namespace).
pub fn parse_target(s: &str) -> Option<(String, String)> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Some((ns.to_string(), name.to_string()))
        }
        None if !s.is_empty() => Some(("default".to_string(), s.to_string())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::manifests::parse_file;
    use crate::sync::{Capacity, Syncer};
    use std::path::Path;

    const MANIFESTS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.20
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
  - addresses: [10.244.1.2]
    conditions: {ready: true}
    nodeName: node-a
  - addresses: [10.244.2.2]
    conditions: {ready: false, serving: false}
---
apiVersion: v1
kind: Service
metadata: {name: nobody, namespace: shop}
spec:
  clusterIP: 10.96.0.21
  selector: {app: nobody}
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: sick, namespace: shop}
spec:
  clusterIP: 10.96.0.22
  ports: [{name: http, port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: sick-1, namespace: shop, labels: {kubernetes.io/service-name: sick}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
  - addresses: [10.244.3.2]
    conditions: {ready: false, serving: false, terminating: true}
---
apiVersion: v1
kind: Service
metadata: {name: misnamed, namespace: shop}
spec:
  clusterIP: 10.96.0.23
  ports: [{name: web, port: 80, targetPort: web}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: misnamed-1, namespace: shop, labels: {kubernetes.io/service-name: misnamed}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
  - addresses: [10.244.4.2]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec:
  clusterIP: None
  ports: [{port: 5432}]
"#;

    fn snapshot() -> Snapshot {
        let mut out = crate::source::manifests::Loaded::default();
        parse_file(Path::new("x.yaml"), MANIFESTS, &mut out);
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        out.snapshot
    }

    /// The maps an agent in sync with `snap` holds.
    fn synced(snap: &Snapshot) -> MapState {
        let mut s = Syncer::new(MapState::default(), Capacity::default());
        s.sync(&crate::k8s::translate::translate(snap).desired)
            .unwrap();
        s.datapath().clone()
    }

    fn verdict(snap: &Snapshot, maps: &MapState, svc: &str) -> Verdict {
        explain(snap, "shop", svc, &NodeContext::default(), Maps::Read(maps)).verdict
    }

    #[test]
    fn each_broken_stage_is_named() {
        let snap = snapshot();
        let maps = synced(&snap);
        assert!(verdict(&snap, &maps, "web").is_ok());
        assert_eq!(verdict(&snap, &maps, "gone"), Verdict::ServiceNotFound);
        assert_eq!(verdict(&snap, &maps, "nobody"), Verdict::NoEndpoints);
        assert!(matches!(
            verdict(&snap, &maps, "sick"),
            Verdict::NoneReady(_)
        ));
        match verdict(&snap, &maps, "misnamed") {
            Verdict::PortNameMismatch(d) => {
                assert!(
                    d.contains("\"web\"/TCP") && d.contains("\"http\"/TCP"),
                    "{d}"
                )
            }
            v => panic!("{v:?}"),
        }
        assert!(matches!(
            verdict(&snap, &maps, "db"),
            Verdict::NotProxied(_)
        ));
    }

    #[test]
    fn maps_behind_the_cluster_are_not_in_maps() {
        let snap = snapshot();
        // The maps of an agent that never saw web's slice.
        let mut older = snap.clone();
        older
            .slices
            .retain(|s| s.metadata.name.as_deref() != Some("web-1"));
        let maps = synced(&older);
        match verdict(&snap, &maps, "web") {
            Verdict::NotInMaps(d) => assert!(d.contains("10.96.0.20:80/TCP holds []"), "{d}"),
            v => panic!("{v:?}"),
        }
        // No maps at all.
        match verdict(&snap, &MapState::default(), "web") {
            Verdict::NotInMaps(d) => assert!(d.contains("has no entry"), "{d}"),
            v => panic!("{v:?}"),
        }
        let r = explain(
            &snap,
            "shop",
            "web",
            &NodeContext::default(),
            Maps::NotRead("no pins".into()),
        );
        assert_eq!(r.verdict, Verdict::MapsNotChecked("no pins".into()));
    }

    #[test]
    fn the_report_shows_each_stage() {
        let snap = snapshot();
        let maps = synced(&snap);
        let r = explain(
            &snap,
            "shop",
            "web",
            &NodeContext::default(),
            Maps::Read(&maps),
        );
        let text = render_text(&r);
        for want in [
            "Service shop/web: type ClusterIP, clusterIPs [10.96.0.20]",
            "port http 80/TCP -> targetPort http",
            "selector: app=web",
            "web-1 IPv4 ports [http=8080/TCP], 2 endpoint(s)",
            "10.244.1.2               ready=true serving=true terminating=false node=node-a",
            "10.244.2.2               ready=false serving=false terminating=false",
            "10.96.0.20:80/TCP (port \"http\"): want [10.244.1.2:8080]",
            "maps: rev_nat 1, [10.244.1.2:8080 (id 1)]",
            "verdict: ok: 1 frontend(s) in the maps, forwarding to 1 backend(s)",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["verdict"]["stage"], "ok");
    }

    #[test]
    fn local_policy_without_a_local_endpoint_says_so() {
        let mut snap = snapshot();
        for s in &mut snap.services {
            if s.metadata.name.as_deref() == Some("web") {
                s.spec.as_mut().unwrap().internal_traffic_policy = Some("Local".into());
            }
        }
        #[allow(clippy::needless_update)] // NodeContext is growing (zone, node addresses)
        let node = NodeContext {
            node_name: Some("node-b".into()),
            ..Default::default()
        };
        let maps = synced(&snap);
        match explain(&snap, "shop", "web", &node, Maps::Read(&maps)).verdict {
            Verdict::NoneReady(d) => assert!(d.contains("node \"node-b\""), "{d}"),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn targets() {
        assert_eq!(
            parse_target("shop/web"),
            Some(("shop".into(), "web".into()))
        );
        assert_eq!(parse_target("web"), Some(("default".into(), "web".into())));
        assert_eq!(parse_target("a/b/c"), None);
        assert_eq!(parse_target("/web"), None);
        assert_eq!(parse_target(""), None);
    }
}
