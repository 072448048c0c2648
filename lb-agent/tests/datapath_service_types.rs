//! Every kind of Service address through the real kernel, from a client in the sandbox (which
//! plays the node: its pod-facing addresses are the node's addresses): NodePort on a node
//! address and on 127.0.0.1, LoadBalancer ingress IPs, external IPs with the
//! `--external-ip-cidrs` guard, `externalTrafficPolicy: Local` (local clients are
//! short-circuited to every endpoint, the external scope holds only local ones), topology
//! (zone hints, `trafficDistribution: PreferClose`), SCTP ports skipped, and a Service whose
//! EndpointSlice is rewritten again and again under a tight reconnect loop without a failure.
//!
//! Addresses used as frontends (192.0.2.10, 198.51.100.7, 203.0.113.9) are documentation
//! ranges with no route in the sandbox: a connect that were not rewritten fails with
//! ENETUNREACH inside it.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use lb_testkit::{POD_PORT, ProbeSummary, Sandbox, http_get, privileged_or_skip, wait_probe};
use serde_json::{Value, json};

const AGENT: &str = env!("CARGO_BIN_EXE_lb-agent");
const VIP: &str = "10.96.0.10";
const NODE_PORT: u16 = 30080;
const LB_IP: &str = "192.0.2.10";
const EXT_ALLOWED: &str = "198.51.100.7";
const EXT_REFUSED: &str = "203.0.113.9";

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("test address"), port)
}

/// An EndpointSlice for `service` with TCP and UDP port `http` on POD_PORT; `eps` are the
/// endpoint objects as the API writes them.
fn slice(service: &str, eps: Value) -> String {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{service}-1"), "namespace": "default",
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "protocol": "TCP", "port": POD_PORT},
                  {"name": "udp", "protocol": "UDP", "port": POD_PORT}],
        "endpoints": eps
    })
    .to_string()
}

fn endpoint(sb: &Sandbox, pod: usize, extra: Value) -> Value {
    let mut e = json!({"addresses": [sb.pods[pod - 1].ip.to_string()],
                       "conditions": {"ready": true, "serving": true, "terminating": false}});
    if let (Some(e), Some(x)) = (e.as_object_mut(), extra.as_object()) {
        e.extend(x.clone());
    }
    e
}

fn spread(s: &ProbeSummary) -> Vec<&str> {
    s.replies.keys().map(String::as_str).collect()
}

/// Waits until `check` holds for `lb-agent inspect --json`.
fn wait_inspect(sb: &Sandbox, what: &str, check: impl Fn(&Value) -> bool) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = sb.inspect()?;
        if check(&v) {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!(
                "maps never showed {what}: {}\n{}",
                serde_json::to_string_pretty(&v)?,
                sb.agent_log()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn frontend<'a>(v: &'a Value, ip: &str, port: u16, proto: &str, scope: &str) -> Option<&'a Value> {
    v["frontends"].as_array()?.iter().find(|f| {
        f["address"] == ip && f["port"] == port && f["protocol"] == proto && f["scope"] == scope
    })
}

fn backend_addrs(f: &Value) -> Vec<String> {
    let mut out: Vec<String> = f["backends"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| b["address"].as_str().map(String::from))
        .collect();
    out.sort();
    out
}

#[test]
fn node_port_load_balancer_and_external_ips_reach_backends() -> Result<()> {
    if !privileged_or_skip("service types datapath") {
        return Ok(());
    }
    let mut sb = Sandbox::new(Path::new(AGENT), 3)?;
    let node_ip = "10.244.1.1"; // the sandbox node's address facing pod-1
    let svc = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"type": "LoadBalancer", "clusterIP": VIP, "externalTrafficPolicy": "Local",
                 "externalIPs": [EXT_ALLOWED, EXT_REFUSED],
                 "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": POD_PORT, "nodePort": NODE_PORT},
                           {"name": "udp", "protocol": "UDP", "port": 80, "targetPort": POD_PORT, "nodePort": NODE_PORT}]},
        "status": {"loadBalancer": {"ingress": [{"ip": LB_IP}]}}
    });
    sb.write_manifest("web-svc.json", &svc.to_string())?;
    let eps = json!([
        endpoint(&sb, 1, json!({"nodeName": "node-a"})),
        endpoint(&sb, 2, json!({"nodeName": "node-b"})),
        endpoint(&sb, 3, json!({"nodeName": "node-b"}))
    ]);
    sb.write_manifest("web-eps.json", &slice("web", eps))?;
    // A Service with an SCTP port beside a TCP one: the TCP port works, SCTP is skipped.
    let sig = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "sig", "namespace": "default"},
        "spec": {"clusterIP": "10.96.0.30",
                 "ports": [{"name": "sctp", "protocol": "SCTP", "port": 3868},
                           {"name": "http", "protocol": "TCP", "port": 3868, "targetPort": POD_PORT}]}
    });
    sb.write_manifest("sig-svc.json", &sig.to_string())?;
    sb.write_manifest(
        "sig-eps.json",
        &slice("sig", json!([endpoint(&sb, 1, json!({}))])),
    )?;
    // Left to another proxy, as kube-proxy does: never translated (unreachable in the sandbox).
    let other = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "other", "namespace": "default",
                     "labels": {"service.kubernetes.io/service-proxy-name": "someone-else"}},
        "spec": {"clusterIP": "10.96.0.40",
                 "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": POD_PORT}]}
    });
    sb.write_manifest("other-svc.json", &other.to_string())?;
    sb.write_manifest(
        "other-eps.json",
        &slice("other", json!([endpoint(&sb, 1, json!({}))])),
    )?;
    sb.start_agent(&[
        "--node-name",
        "node-a",
        "--node-ip",
        node_ip,
        "--external-ip-cidrs",
        "198.51.100.0/24",
    ])?;

    // From this node every address of the Service reaches every endpoint: kube-proxy
    // short-circuits local traffic even with externalTrafficPolicy: Local.
    for target in [
        addr(VIP, 80),
        addr(node_ip, NODE_PORT),
        addr("127.0.0.1", NODE_PORT),
        addr(LB_IP, 80),
        addr(EXT_ALLOWED, 80),
    ] {
        for proto in ["tcp", "udp", "udp-unconnected"] {
            let s = sb.probe(target, 60, proto)?;
            assert_eq!(s.ok, 60, "{target} {proto}: {s:?}");
            assert_eq!(spread(&s), ["pod-1", "pod-2", "pod-3"], "{target} {proto}");
        }
    }

    // The refused external IP is not programmed: with no route in the sandbox it is
    // unreachable, and the refusal is logged and counted.
    let s = sb.probe(addr(EXT_REFUSED, 80), 5, "tcp")?;
    assert_eq!(s.errors.get("ENETUNREACH"), Some(&5), "{s:?}");
    let log = sb.agent_log();
    assert!(
        log.contains("external_ip_not_allowed") && log.contains(EXT_REFUSED),
        "{log}"
    );
    let (_, metrics) = http_get(sb.health_addr, "/metrics")?;
    assert!(
        metrics.contains(r#"lb_translation_problems_total{reason="external_ip_not_allowed"} 1"#),
        "{metrics}"
    );

    // Traffic from outside (the external scope, for the XDP datapath) follows
    // externalTrafficPolicy: Local: only node-a's endpoint; loopback has no external entry.
    let v = sb.inspect()?;
    let pod1 = vec![sb.pods[0].ip.to_string()];
    for (ip, port) in [(LB_IP, 80), (node_ip, NODE_PORT), (EXT_ALLOWED, 80)] {
        let f = frontend(&v, ip, port, "TCP", "external")
            .unwrap_or_else(|| panic!("no external entry for {ip}:{port}: {v}"));
        assert_eq!(backend_addrs(f), pod1, "{ip}:{port}");
        assert_eq!(f["policy"], json!(["local"]));
        let internal = frontend(&v, ip, port, "TCP", "internal").expect("internal entry");
        assert_eq!(backend_addrs(internal).len(), 3);
    }
    assert!(frontend(&v, "127.0.0.1", NODE_PORT, "TCP", "external").is_none());
    assert_eq!(
        frontend(&v, LB_IP, 80, "TCP", "internal").expect("LB entry")["kind"],
        json!(["LoadBalancer"])
    );

    // SCTP: only the TCP port of `sig` is programmed; the skip is logged.
    assert!(frontend(&v, "10.96.0.30", 3868, "TCP", "internal").is_some());
    assert!(
        !v["frontends"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|f| f["protocol"] == "SCTP")
    );
    assert!(log.contains("sctp_not_translated"), "{log}");
    let s = sb.probe(addr("10.96.0.30", 3868), 10, "tcp")?;
    assert_eq!(s.ok, 10, "{s:?}");

    assert!(
        !v["frontends"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|f| f["address"] == "10.96.0.40")
    );
    let s = sb.probe(addr("10.96.0.40", 80), 5, "tcp")?;
    assert_eq!(s.errors.get("ENETUNREACH"), Some(&5), "{s:?}");
    Ok(())
}

#[test]
fn topology_keeps_traffic_in_this_zone_and_falls_back_as_kube_proxy() -> Result<()> {
    if !privileged_or_skip("topology datapath") {
        return Ok(());
    }
    let mut sb = Sandbox::new(Path::new(AGENT), 3)?;
    let svc = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"clusterIP": VIP, "trafficDistribution": "PreferClose",
                 "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": POD_PORT}]}
    });
    sb.write_manifest("web-svc.json", &svc.to_string())?;
    // PreferClose and no hints: the endpoints' own zones are the hints.
    let zones = json!([
        endpoint(&sb, 1, json!({"zone": "zone-a"})),
        endpoint(&sb, 2, json!({"zone": "zone-a"})),
        endpoint(&sb, 3, json!({"zone": "zone-b"}))
    ]);
    sb.write_manifest("web-eps.json", &slice("web", zones))?;
    sb.start_agent(&["--zone", "zone-b"])?;
    let s = sb.probe(addr(VIP, 80), 60, "tcp")?;
    assert_eq!(s.ok, 60, "{s:?}");
    assert_eq!(spread(&s), ["pod-3"], "{s:?}");
    let v = sb.inspect()?;
    assert_eq!(
        frontend(&v, VIP, 80, "TCP", "internal").expect("VIP")["policy"],
        json!(["topology-zone"])
    );

    // Explicit hints from the EndpointSlice controller win over the zones.
    let hinted = json!([
        endpoint(
            &sb,
            1,
            json!({"zone": "zone-a", "hints": {"forZones": [{"name": "zone-b"}]}})
        ),
        endpoint(
            &sb,
            2,
            json!({"zone": "zone-a", "hints": {"forZones": [{"name": "zone-b"}]}})
        ),
        endpoint(
            &sb,
            3,
            json!({"zone": "zone-b", "hints": {"forZones": [{"name": "zone-a"}]}})
        )
    ]);
    sb.write_manifest("web-eps.json", &slice("web", hinted))?;
    wait_inspect(&sb, "pods 1 and 2", |v| {
        frontend(v, VIP, 80, "TCP", "internal").is_some_and(|f| backend_addrs(f).len() == 2)
    })?;
    let s = sb.probe(addr(VIP, 80), 90, "tcp")?;
    assert_eq!(s.ok, 90, "{s:?}");
    assert_eq!(spread(&s), ["pod-1", "pod-2"], "{s:?}");

    // One ready endpoint without a hint: hints cannot be trusted, every endpoint is used.
    let partial = json!([
        endpoint(&sb, 1, json!({"hints": {"forZones": [{"name": "zone-b"}]}})),
        endpoint(&sb, 2, json!({"hints": {"forZones": [{"name": "zone-b"}]}})),
        endpoint(&sb, 3, json!({}))
    ]);
    sb.write_manifest("web-eps.json", &slice("web", partial))?;
    wait_inspect(&sb, "all three pods", |v| {
        frontend(v, VIP, 80, "TCP", "internal").is_some_and(|f| backend_addrs(f).len() == 3)
    })?;
    let s = sb.probe(addr(VIP, 80), 90, "tcp")?;
    assert_eq!(s.ok, 90, "{s:?}");
    assert_eq!(spread(&s), ["pod-1", "pod-2", "pod-3"], "{s:?}");
    Ok(())
}

/// The write order (new backends, slots, count; removals after) means a live Service never
/// has zero backends in the maps: a client reconnecting in a tight loop while the
/// EndpointSlice is rewritten many times never sees a failure.
#[test]
fn rewriting_endpoints_under_a_reconnect_loop_never_fails_a_connect() -> Result<()> {
    if !privileged_or_skip("endpoint churn datapath") {
        return Ok(());
    }
    let mut sb = Sandbox::new(Path::new(AGENT), 3)?;
    let svc = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"clusterIP": VIP,
                 "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": POD_PORT},
                           {"name": "udp", "protocol": "UDP", "port": 80, "targetPort": POD_PORT}]}
    });
    sb.write_manifest("web-svc.json", &svc.to_string())?;
    let sets: [&[usize]; 6] = [&[1, 2, 3], &[1], &[2, 3], &[3], &[1, 2], &[2]];
    fn write(sb: &Sandbox, set: &[usize]) -> Result<()> {
        let eps: Vec<Value> = set.iter().map(|&p| endpoint(sb, p, json!({}))).collect();
        sb.write_manifest("web-eps.json", &slice("web", Value::Array(eps)))
    }
    write(&sb, sets[0])?;
    // Ending sockets on departed backends is on by default for UDP; a probe's socket caught
    // between its connect and its answer would then fail by design. This test is about the
    // maps' write order, so it is turned off here (datapath_sockdestroy.rs tests it).
    sb.start_agent(&["--terminate-sockets", "none"])?;
    let syncs_before = syncs(&sb)?;

    let tcp = sb.spawn_probe(addr(VIP, 80), 6000, "tcp", 1)?;
    let udp = sb.spawn_probe(addr(VIP, 80), 3000, "udp", 2)?;
    let started = Instant::now();
    let mut rewrites = 0;
    while started.elapsed() < Duration::from_secs(6) {
        write(&sb, sets[rewrites % sets.len()])?;
        rewrites += 1;
        // Longer than the manifest poll, so (nearly) every rewrite reaches the maps.
        std::thread::sleep(Duration::from_millis(230));
    }
    let tcp = wait_probe(tcp)?;
    let udp = wait_probe(udp)?;
    let syncs = syncs(&sb)? - syncs_before;
    assert!(
        syncs >= 10,
        "only {syncs} syncs for {rewrites} rewrites\n{}",
        sb.agent_log()
    );
    assert_eq!(tcp.ok, tcp.attempts, "tcp: {tcp:?}");
    assert_eq!(udp.ok, udp.attempts, "udp: {udp:?}");
    assert_eq!(spread(&tcp), ["pod-1", "pod-2", "pod-3"], "{tcp:?}");
    Ok(())
}

fn syncs(sb: &Sandbox) -> Result<u64> {
    let (_, body) = http_get(sb.health_addr, "/metrics")?;
    body.lines()
        .find_map(|l| l.strip_prefix("lb_syncs_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .ok_or_else(|| anyhow::anyhow!("no lb_syncs_total in /metrics:\n{body}"))
}
