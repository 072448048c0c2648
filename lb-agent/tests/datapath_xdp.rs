//! Traffic from outside the node through the XDP datapath, end to end in namespaces: an
//! outside client namespace -> the node (the sandbox's client namespace, running the agent
//! with `--xdp-iface ext0`) -> pod namespaces behind veths. Full TCP exchanges and UDP
//! request/response to a NodePort, a LoadBalancer IP and an external IP; the pod sees the
//! client's own address; `externalTrafficPolicy: Local` uses only this node's endpoint and its
//! health check node port says so; `loadBalancerSourceRanges` drops other sources; flows in
//! progress keep their backend while the backends change.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use lb_testkit::{POD_PORT, Sandbox, netns, outside, privileged_or_skip};
use serde_json::{Value, json};

const AGENT: &str = env!("CARGO_BIN_EXE_lb-agent");
const NODE_PORT: u16 = 30080;
const HC_PORT: u16 = 32080;
const LB_IP: &str = "192.0.2.10";
const EXT_IP: &str = "198.51.100.7";

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("test address"), port)
}

fn service(extra: Value) -> String {
    let mut spec = json!({
        "type": "LoadBalancer", "clusterIP": "10.96.0.10", "externalIPs": [EXT_IP],
        "healthCheckNodePort": HC_PORT,
        "ports": [
            {"name": "http", "protocol": "TCP", "port": 80, "targetPort": POD_PORT, "nodePort": NODE_PORT},
            {"name": "udp", "protocol": "UDP", "port": 80, "targetPort": POD_PORT, "nodePort": NODE_PORT}]
    });
    if let (Some(s), Some(x)) = (spec.as_object_mut(), extra.as_object()) {
        s.extend(x.clone());
    }
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": "web", "namespace": "default"},
           "spec": spec,
           "status": {"loadBalancer": {"ingress": [{"ip": LB_IP}]}}})
    .to_string()
}

/// Which node the sandbox pods are said to be on. They are all really behind this node, so
/// with `Cluster` policy they are all declared local (a pod declared on another node would
/// be SNATed, and its replies would have to come back through another node:
/// `backends_on_another_node_...` tests that with a real second node).
#[derive(Clone, Copy, PartialEq)]
enum Nodes {
    AllHere,
    /// pod-1 on this node (node-a), the others on node-b: for `Local` policy.
    OnlyPod1Here,
}

fn slice(sb: &Sandbox, pods: &[usize], nodes: Nodes) -> String {
    let eps: Vec<Value> = pods
        .iter()
        .map(|&p| {
            let here = p == 1 || nodes == Nodes::AllHere;
            json!({"addresses": [sb.pods[p - 1].ip.to_string()],
                   "nodeName": if here { "node-a" } else { "node-b" },
                   "conditions": {"ready": true}})
        })
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": "web-1", "namespace": "default",
                        "labels": {"kubernetes.io/service-name": "web"}},
           "addressType": "IPv4",
           "ports": [{"name": "http", "protocol": "TCP", "port": POD_PORT},
                     {"name": "udp", "protocol": "UDP", "port": POD_PORT}],
           "endpoints": eps})
    .to_string()
}

fn sandbox() -> Result<Sandbox> {
    let mut sb = Sandbox::new(Path::new(AGENT), 3)?;
    sb.add_outside()?;
    Ok(sb)
}

fn start(sb: &mut Sandbox) -> Result<()> {
    sb.start_agent_in_node(&[
        "--xdp-iface",
        outside::NODE_IFACE,
        "--node-ip",
        outside::NODE_IP,
        "--node-name",
        "node-a",
        "--maglev-table-size",
        "1021",
        "--maglev-tables",
        "16",
    ])?;
    let log = sb.agent_log();
    let xdp = log.contains("XDP forward path attached") || log.contains("XDP program replaced");
    let tc = log.contains("TC reply path attached") || log.contains("TC reply program replaced");
    if !xdp || !tc {
        bail!("XDP/TC not attached:\n{log}");
    }
    Ok(())
}

/// Waits until the maps' external entry for the NodePort holds `n` backends.
fn wait_external_backends(sb: &Sandbox, n: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = sb.inspect()?;
        let found = v["frontends"].as_array().into_iter().flatten().find(|f| {
            f["address"] == outside::NODE_IP && f["port"] == NODE_PORT && f["scope"] == "external"
        });
        if found.and_then(|f| f["backends"].as_array()).map(Vec::len) == Some(n) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("external NodePort never had {n} backends: {v}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until a metric reaches `min` (the XDP counters are exported once a second).
fn wait_metric(sb: &Sandbox, name: &str, min: f64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = lb_testkit::metric_value(&sb.metrics()?, name);
        if v >= min {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{name} is {v}, want >= {min}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn outside_clients_reach_node_port_load_balancer_and_external_ips() -> Result<()> {
    if !privileged_or_skip("xdp datapath") {
        return Ok(());
    }
    let mut sb = sandbox()?;
    sb.write_manifest("web-svc.json", &service(json!({})))?;
    sb.write_manifest("web-eps.json", &slice(&sb, &[1, 2, 3], Nodes::AllHere))?;
    start(&mut sb)?;
    assert!(
        sb.agent_log().contains("mode=\"generic\"") || sb.agent_log().contains("mode=\"native\""),
        "the XDP mode is logged"
    );

    // externalTrafficPolicy: Cluster: every endpoint, TCP (a full exchange: the pod writes its
    // name and closes) and UDP request/response, replies from the address the client used.
    for target in [
        addr(outside::NODE_IP, NODE_PORT),
        addr(LB_IP, 80),
        addr(EXT_IP, 80),
    ] {
        for proto in ["tcp", "udp", "udp-unconnected"] {
            let s = sb.probe_outside(target, 60, proto, 2000)?;
            assert_eq!(s.ok, 60, "{target} {proto}: {s:?}\n{}", sb.agent_log());
            let pods: Vec<&str> = s.replies.keys().map(String::as_str).collect();
            assert_eq!(pods, ["pod-1", "pod-2", "pod-3"], "{target} {proto}");
        }
    }
    // The pods saw the outside client's own address (no SNAT for backends on this node).
    for p in &sb.pods {
        let peers = p.server.peers();
        assert!(
            peers.contains(&outside::CLIENT_IP.parse()?),
            "{}: {peers:?}",
            p.name
        );
    }
    // Counters of the XDP path are exported (read from the per-CPU map every second).
    wait_metric(&sb, r#"lb_xdp_packets_total{result="forwarded"}"#, 540.0)?;
    wait_metric(&sb, r#"lb_xdp_packets_total{result="replies"}"#, 540.0)?;

    // externalTrafficPolicy: Local: only this node's endpoint, the client address kept, and
    // the health check node port reports one local endpoint.
    sb.write_manifest(
        "web-svc.json",
        &service(json!({"externalTrafficPolicy": "Local"})),
    )?;
    sb.write_manifest("web-eps.json", &slice(&sb, &[1, 2, 3], Nodes::OnlyPod1Here))?;
    wait_external_backends(&sb, 1)?;
    for proto in ["tcp", "udp"] {
        let s = sb.probe_outside(addr(outside::NODE_IP, NODE_PORT), 30, proto, 2000)?;
        assert_eq!(s.ok, 30, "{s:?}");
        assert_eq!(s.replies.keys().collect::<Vec<_>>(), ["pod-1"], "{proto}");
    }
    let (code, body) = sb.http_get_outside(addr(outside::NODE_IP, HC_PORT), "/")?;
    assert_eq!(code, 200, "{body}");
    let hc: Value = serde_json::from_str(&body)?;
    assert_eq!(hc["localEndpoints"], 1);
    // No local endpoint left: 503, so a cloud load balancer stops sending to this node, and
    // the NodePort drops rather than sending anywhere else.
    sb.write_manifest("web-eps.json", &slice(&sb, &[2, 3], Nodes::OnlyPod1Here))?;
    wait_external_backends(&sb, 0)?;
    let (code, _) = sb.http_get_outside(addr(outside::NODE_IP, HC_PORT), "/")?;
    assert_eq!(code, 503);
    let s = sb.probe_outside(addr(outside::NODE_IP, NODE_PORT), 3, "tcp", 300)?;
    assert_eq!(s.ok, 0, "{s:?}");
    Ok(())
}

#[test]
fn source_ranges_drop_other_clients_and_flows_keep_their_backend() -> Result<()> {
    if !privileged_or_skip("xdp datapath") {
        return Ok(());
    }
    let mut sb = sandbox()?;
    sb.write_manifest(
        "web-svc.json",
        &service(json!({"loadBalancerSourceRanges": ["10.77.0.0/16"]})),
    )?;
    sb.write_manifest("web-eps.json", &slice(&sb, &[1, 2], Nodes::AllHere))?;
    start(&mut sb)?;

    // The outside client (10.99.0.2) is outside the ranges: its packets to the LB address are
    // dropped and counted; the NodePort (no source ranges there) still answers it.
    let s = sb.probe_outside(addr(LB_IP, 80), 3, "tcp", 300)?;
    assert_eq!(s.ok, 0, "{s:?}");
    wait_metric(
        &sb,
        r#"lb_xdp_packets_total{result="dropped_source_range"}"#,
        3.0,
    )?;
    let s = sb.probe_outside(addr(outside::NODE_IP, NODE_PORT), 10, "tcp", 2000)?;
    assert_eq!(s.ok, 10, "{s:?}");

    // Long-lived UDP flows from the outside client: each socket keeps its backend while a
    // backend is added and the Maglev table changes, and again when a backend that none of
    // them uses is removed.
    let outside_ns = sb.outside_netns.clone().context("outside namespace")?;
    let target = addr(outside::NODE_IP, NODE_PORT);
    let flows = netns::run_in(&outside_ns, move || {
        (0..24)
            .map(|_| {
                let s = UdpSocket::bind("0.0.0.0:0")?;
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                s.connect(target)?;
                Ok(s)
            })
            .collect::<Result<Vec<_>>>()
    })?;
    let ask = |flows: &[UdpSocket]| -> Result<Vec<String>> {
        flows
            .iter()
            .map(|s| {
                s.send(b"who")?;
                let mut buf = [0u8; 64];
                let n = s.recv(&mut buf)?;
                Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
            })
            .collect()
    };
    let before = ask(&flows)?;
    assert!(
        before.iter().all(|p| p == "pod-1" || p == "pod-2"),
        "{before:?}"
    );
    sb.write_manifest("web-eps.json", &slice(&sb, &[1, 2, 3], Nodes::AllHere))?;
    wait_external_backends(&sb, 3)?;
    assert_eq!(ask(&flows)?, before, "flows moved when a backend was added");
    // New flows do reach the new backend.
    let s = sb.probe_outside(target, 60, "udp", 2000)?;
    assert!(s.replies.contains_key("pod-3"), "{s:?}");
    // Remove pod-3, which none of the old flows uses: they all stay where they were.
    sb.write_manifest("web-eps.json", &slice(&sb, &[1, 2], Nodes::AllHere))?;
    wait_external_backends(&sb, 2)?;
    assert_eq!(
        ask(&flows)?,
        before,
        "flows moved when another backend left"
    );

    // The agent is killed and started again: the pinned XDP/TC links are updated in place
    // with the new programs, the pinned connection tracking is kept, and so are the flows.
    sb.stop_agent(true)?;
    assert_eq!(ask(&flows)?, before, "flows broke while no agent ran");
    start(&mut sb)?;
    let log = sb.agent_log();
    assert!(
        log.contains("XDP program replaced in place")
            && log.contains("TC reply program replaced in place"),
        "{log}"
    );
    assert_eq!(ask(&flows)?, before, "flows moved across the restart");
    Ok(())
}

#[test]
fn backends_on_another_node_get_snated_traffic_and_answer_through_this_node() -> Result<()> {
    if !privileged_or_skip("xdp datapath") {
        return Ok(());
    }
    let mut sb = Sandbox::new(Path::new(AGENT), 1)?;
    sb.add_outside()?;
    sb.add_remote_node()?;
    sb.write_manifest("web-svc.json", &service(json!({})))?;
    let eps = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-1", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "protocol": "TCP", "port": POD_PORT},
                  {"name": "udp", "protocol": "UDP", "port": POD_PORT}],
        "endpoints": [
            {"addresses": [sb.pods[0].ip.to_string()], "nodeName": "node-a"},
            {"addresses": [sb.remote_pods[0].ip.to_string()], "nodeName": "node-b"}]});
    sb.write_manifest("web-eps.json", &eps.to_string())?;
    sb.start_agent_in_node(&[
        "--xdp-iface",
        outside::NODE_IFACE,
        "--xdp-iface",
        lb_testkit::remote::LINK_IFACE,
        "--node-ip",
        outside::NODE_IP,
        "--node-name",
        "node-a",
    ])?;
    assert!(
        sb.agent_log().contains("SNAT addresses"),
        "{}",
        sb.agent_log()
    );

    for proto in ["tcp", "udp"] {
        let s = sb.probe_outside(addr(outside::NODE_IP, NODE_PORT), 60, proto, 2000)?;
        assert_eq!(s.ok, 60, "{proto}: {s:?}\n{}", sb.agent_log());
        let pods: Vec<&str> = s.replies.keys().map(String::as_str).collect();
        assert_eq!(pods, ["pod-1", "pod-remote"], "{proto}");
    }
    // The remote pod saw this node's address (SNAT), the local one the client's own.
    let remote_peers = sb.remote_pods[0].server.peers();
    assert_eq!(
        remote_peers.into_iter().collect::<Vec<_>>(),
        [outside::NODE_IP.parse::<std::net::IpAddr>()?]
    );
    assert!(
        sb.pods[0]
            .server
            .peers()
            .contains(&outside::CLIENT_IP.parse()?)
    );
    wait_metric(&sb, r#"lb_xdp_packets_total{result="snated"}"#, 30.0)?;
    wait_metric(&sb, r#"lb_xdp_packets_total{result="snat_replies"}"#, 30.0)?;

    // externalTrafficPolicy: Local: the remote pod is not used from outside.
    sb.write_manifest(
        "web-svc.json",
        &service(json!({"externalTrafficPolicy": "Local"})),
    )?;
    wait_external_backends(&sb, 1)?;
    let s = sb.probe_outside(addr(outside::NODE_IP, NODE_PORT), 30, "tcp", 2000)?;
    assert_eq!(s.replies.keys().collect::<Vec<_>>(), ["pod-1"], "{s:?}");
    Ok(())
}
