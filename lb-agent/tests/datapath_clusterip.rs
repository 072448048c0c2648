//! ClusterIP over TCP through the real kernel: the real agent binary, real programs attached
//! to a throwaway cgroup, real sockets from an isolated client namespace (see lb-testkit).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use lb_testkit::{POD_PORT, Sandbox, http_get, manifests, privileged_or_skip};

const AGENT: &str = env!("CARGO_BIN_EXE_lb-agent");
const VIP: &str = "10.96.0.10";

fn vip(port: u16) -> SocketAddr {
    SocketAddr::new(VIP.parse().unwrap(), port)
}

fn ips(sb: &Sandbox, pods: &[usize]) -> Vec<IpAddr> {
    pods.iter().map(|i| IpAddr::V4(sb.pods[i - 1].ip)).collect()
}

fn sandbox_with_service(pods: usize, backends: &[usize]) -> Result<Sandbox> {
    let sb = Sandbox::new(Path::new(AGENT), pods)?;
    sb.write_manifest(
        "web-svc.yaml",
        &manifests::service("web", VIP, 80, POD_PORT),
    )?;
    sb.write_manifest(
        "web-eps.yaml",
        &manifests::endpoint_slice("web-1", "web", POD_PORT, &ips(&sb, backends)),
    )?;
    Ok(sb)
}

/// Backend addresses of the VIP:80 frontend as the pinned maps hold them.
fn programmed_backends(sb: &Sandbox) -> Result<Vec<String>> {
    let v = sb.inspect()?;
    let mut out = Vec::new();
    for f in v["frontends"].as_array().into_iter().flatten() {
        if f["address"] == VIP && f["port"] == 80 {
            for b in f["backends"].as_array().into_iter().flatten() {
                out.push(b["address"].as_str().unwrap_or_default().to_string());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Waits until the maps hold `want` for the VIP; returns how long it took.
fn converge(sb: &Sandbox, want: &[IpAddr], limit: Duration) -> Result<Duration> {
    let mut want: Vec<String> = want.iter().map(|i| i.to_string()).collect();
    want.sort();
    let start = Instant::now();
    loop {
        let got = programmed_backends(sb)?;
        if got == want {
            return Ok(start.elapsed());
        }
        if start.elapsed() > limit {
            anyhow::bail!(
                "maps hold {got:?}, want {want:?} after {limit:?}\n{}",
                sb.agent_log()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn clusterip_spreads_converges_rejects_and_leaves_other_traffic_alone() -> Result<()> {
    if !privileged_or_skip("clusterip datapath") {
        return Ok(());
    }
    let mut sb = sandbox_with_service(3, &[1, 2, 3])?;
    sb.start_agent(&[])?;
    assert_eq!(http_get(sb.health_addr, "/healthz")?.0, 200);

    // 3 backends: every connection lands, on all three, roughly evenly.
    let s = sb.probe(vip(80), 300, "tcp")?;
    assert_eq!(s.ok, 300, "{s:?}");
    for pod in ["pod-1", "pod-2", "pod-3"] {
        let n = s.replies.get(pod).copied().unwrap_or(0);
        // Binomial(300, 1/3): mean 100, sd 8.2; 50..=150 is about 6 sd either side.
        assert!((50..=150).contains(&n), "{pod} got {n} of 300: {s:?}");
    }

    // Down to 2 backends: the maps converge within a second and pod-3 gets nothing new.
    let written = Instant::now();
    sb.write_manifest(
        "web-eps.yaml",
        &manifests::endpoint_slice("web-1", "web", POD_PORT, &ips(&sb, &[1, 2])),
    )?;
    converge(&sb, &ips(&sb, &[1, 2]), Duration::from_secs(5))?;
    let took = written.elapsed();
    assert!(
        took <= Duration::from_secs(1),
        "converged only after {took:?}"
    );
    let pod3_before = sb.pods[2].server.tcp_accepts();
    let s = sb.probe(vip(80), 200, "tcp")?;
    assert_eq!(s.ok, 200, "{s:?}");
    assert!(!s.replies.contains_key("pod-3"), "{s:?}");
    assert_eq!(sb.pods[2].server.tcp_accepts(), pod3_before);
    assert!(
        s.replies.contains_key("pod-1") && s.replies.contains_key("pod-2"),
        "{s:?}"
    );

    // No endpoints: connect() fails at once with ECONNREFUSED, as kube-proxy's REJECT.
    sb.write_manifest(
        "web-eps.yaml",
        &manifests::endpoint_slice("web-1", "web", POD_PORT, &[]),
    )?;
    converge(&sb, &[], Duration::from_secs(5))?;
    let s = sb.probe(vip(80), 20, "tcp")?;
    assert_eq!(s.errors.get("ECONNREFUSED"), Some(&20), "{s:?}");

    // What is not a service is untouched: a pod IP directly, and a VIP port or address that
    // no Service has (which, having no route in the sandbox, is unreachable).
    let direct = SocketAddr::new(IpAddr::V4(sb.pods[0].ip), POD_PORT);
    let s = sb.probe(direct, 10, "tcp")?;
    assert_eq!(s.replies.get("pod-1"), Some(&10), "{s:?}");
    let s = sb.probe(vip(81), 3, "tcp")?;
    assert_eq!(s.errors.get("ENETUNREACH"), Some(&3), "{s:?}");
    let s = sb.probe("10.96.0.99:80".parse()?, 3, "tcp")?;
    assert_eq!(s.errors.get("ENETUNREACH"), Some(&3), "{s:?}");
    Ok(())
}

#[test]
fn datapath_outlives_the_agent_is_adopted_on_restart_and_cleanup_removes_it() -> Result<()> {
    if !privileged_or_skip("agent restart and cleanup") {
        return Ok(());
    }
    let mut sb = sandbox_with_service(2, &[1, 2])?;
    sb.start_agent(&[])?;
    assert_eq!(sb.probe(vip(80), 20, "tcp")?.ok, 20);

    // SIGTERM leaves the datapath in place; inspect reads it from the pins alone.
    sb.stop_agent(false)?;
    assert_eq!(programmed_backends(&sb)?, ["10.244.1.2", "10.244.2.2"]);
    let text = sb.agent_cmd(&["inspect"])?;
    assert!(
        text.contains("10.96.0.10:80") && text.contains("-> 10.244.2.2:8080"),
        "{text}"
    );
    assert_eq!(
        sb.probe(vip(80), 20, "tcp")?.ok,
        20,
        "Services keep working with no agent"
    );

    // A new agent adopts the maps: nothing needs writing, and traffic keeps flowing.
    sb.start_agent(&[])?;
    assert!(sb.agent_log().contains("writes=0"), "{}", sb.agent_log());
    sb.stop_agent(true)?;
    let s = sb.probe(vip(80), 20, "tcp")?;
    assert_eq!(s.ok, 20, "{s:?}");

    // cleanup detaches the programs and removes the pins: the VIP is a plain address again.
    let out = sb.agent_cmd(&["cleanup"])?;
    assert!(out.contains("removed"), "{out}");
    assert!(!Path::new("/sys/fs/bpf").join(&sb.id).exists());
    let s = sb.probe(vip(80), 3, "tcp")?;
    assert_eq!(s.errors.get("ENETUNREACH"), Some(&3), "{s:?}");
    Ok(())
}

#[test]
fn bad_manifests_are_reported_and_everything_else_still_applies() -> Result<()> {
    if !privileged_or_skip("bad manifests") {
        return Ok(());
    }
    let mut sb = sandbox_with_service(1, &[1])?;
    sb.write_manifest("broken.yaml", "kind: Service\nmetadata: [unclosed\n")?;
    sb.write_manifest(
        "bad-ip.yaml",
        &manifests::service("bad", "10.96.0.300", 80, POD_PORT),
    )?;
    sb.start_agent(&[])?;
    assert_eq!(sb.probe(vip(80), 10, "tcp")?.ok, 10);
    let (code, metrics) = http_get(sb.health_addr, "/metrics")?;
    assert_eq!(code, 200);
    assert!(metrics.contains("lb_manifest_errors_total 1"), "{metrics}");
    assert!(
        metrics.contains("lb_translation_problems_total{reason=\"invalid_cluster_ip\"} 1"),
        "{metrics}"
    );
    let log = sb.agent_log();
    assert!(
        log.contains("broken.yaml") && log.contains("document=Some(0)"),
        "{log}"
    );
    assert!(
        log.contains("default/bad") && log.contains("invalid_cluster_ip"),
        "{log}"
    );
    Ok(())
}

/// An EndpointSlice for `web` with explicit conditions and node names per pod.
fn slice_with_conditions(sb: &Sandbox, eps: &[(usize, &str, &str)]) -> String {
    let mut text = manifests::endpoint_slice("web-1", "web", POD_PORT, &[]).replace("  []\n", "");
    for (pod, conditions, node) in eps {
        text.push_str(&format!(
            "  - addresses: [\"{}\"]\n    nodeName: {node}\n    conditions: {conditions}\n",
            sb.pods[pod - 1].ip
        ));
    }
    text
}

#[test]
fn terminating_fallback_and_internal_traffic_policy_local() -> Result<()> {
    if !privileged_or_skip("endpoint selection") {
        return Ok(());
    }
    let mut sb = sandbox_with_service(3, &[])?;
    const READY: &str = "{ready: true, serving: true, terminating: false}";
    const TERMINATING: &str = "{ready: false, serving: true, terminating: true}";
    const GONE: &str = "{ready: false, serving: false, terminating: true}";
    sb.write_manifest(
        "web-eps.yaml",
        &slice_with_conditions(
            &sb,
            &[
                (1, READY, "node-a"),
                (2, TERMINATING, "node-b"),
                (3, GONE, "node-a"),
            ],
        ),
    )?;
    sb.start_agent(&["--node-name", "node-a"])?;
    let s = sb.probe(vip(80), 30, "tcp")?;
    assert_eq!(
        s.replies.get("pod-1"),
        Some(&30),
        "only the ready endpoint: {s:?}"
    );

    // No ready endpoint left: serving-and-terminating ones take the traffic, never not-serving.
    sb.write_manifest(
        "web-eps.yaml",
        &slice_with_conditions(&sb, &[(2, TERMINATING, "node-b"), (3, GONE, "node-a")]),
    )?;
    converge(&sb, &ips(&sb, &[2]), Duration::from_secs(5))?;
    let s = sb.probe(vip(80), 30, "tcp")?;
    assert_eq!(s.replies.get("pod-2"), Some(&30), "{s:?}");

    // internalTrafficPolicy: Local on node-a: only node-a's endpoints.
    let local = manifests::service("web", VIP, 80, POD_PORT).replace(
        "  type: ClusterIP\n",
        "  type: ClusterIP\n  internalTrafficPolicy: Local\n",
    );
    sb.write_manifest("web-svc.yaml", &local)?;
    sb.write_manifest(
        "web-eps.yaml",
        &slice_with_conditions(
            &sb,
            &[
                (1, READY, "node-b"),
                (2, READY, "node-a"),
                (3, READY, "node-a"),
            ],
        ),
    )?;
    converge(&sb, &ips(&sb, &[2, 3]), Duration::from_secs(5))?;
    let s = sb.probe(vip(80), 60, "tcp")?;
    assert_eq!(s.ok, 60, "{s:?}");
    assert!(!s.replies.contains_key("pod-1"), "{s:?}");
    Ok(())
}

#[test]
fn session_affinity_keeps_a_client_on_one_backend_until_it_leaves() -> Result<()> {
    if !privileged_or_skip("session affinity") {
        return Ok(());
    }
    let mut sb = sandbox_with_service(3, &[1, 2, 3])?;
    let sticky = manifests::service("web", VIP, 80, POD_PORT).replace(
        "  type: ClusterIP\n",
        "  type: ClusterIP\n  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}\n",
    );
    sb.write_manifest("web-svc.yaml", &sticky)?;
    sb.start_agent(&[])?;
    let v = sb.inspect()?;
    assert_eq!(v["frontends"][0]["affinity_timeout_seconds"], 600, "{v}");

    // Every connection from this client (its network namespace) goes to one backend.
    let s = sb.probe(vip(80), 60, "tcp")?;
    assert_eq!(s.ok, 60, "{s:?}");
    assert_eq!(s.replies.len(), 1, "{s:?}");
    let chosen: usize = s.replies.keys().next().unwrap()["pod-".len()..].parse()?;

    // When that backend leaves the Service the client moves, and sticks to its new backend.
    let rest: Vec<usize> = (1..=3).filter(|i| *i != chosen).collect();
    sb.write_manifest(
        "web-eps.yaml",
        &manifests::endpoint_slice("web-1", "web", POD_PORT, &ips(&sb, &rest)),
    )?;
    converge(&sb, &ips(&sb, &rest), Duration::from_secs(5))?;
    let s = sb.probe(vip(80), 60, "tcp")?;
    assert_eq!(s.ok, 60, "{s:?}");
    assert_eq!(s.replies.len(), 1, "{s:?}");
    assert!(!s.replies.contains_key(&format!("pod-{chosen}")), "{s:?}");
    Ok(())
}
