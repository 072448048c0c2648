//! `--socket-lb-scope host` in the real kernel: the agent runs inside a test "node" namespace;
//! a client in that namespace is translated, while a client in a pod namespace (another
//! network namespace, same cgroup) keeps the ClusterIP as its destination, which it has no
//! route to (ENETUNREACH), as a sidecar proxy would want. With the default scope the same pod
//! client is translated and answered, so the difference is the scope.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use anyhow::{Context, Result, bail};
use lb_testkit::{POD_PORT, ProbeSummary, Sandbox, manifests, privileged_or_skip};

const AGENT: &str = env!("CARGO_BIN_EXE_lb-agent");
const VIP: &str = "10.96.0.30";

fn probe_in(sb: &Sandbox, ns: &str, target: SocketAddr, proto: &str) -> Result<ProbeSummary> {
    let out = sb
        .command_in(ns, Path::new(AGENT))?
        .args(["probe", "--target", &target.to_string(), "--count", "10"])
        .args(["--proto", proto, "--timeout-ms", "1000"])
        .env("RUST_BACKTRACE", "0")
        .output()?;
    if !out.status.success() {
        bail!("probe failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    serde_json::from_slice(&out.stdout).context("parsing the probe's output")
}

fn sandbox() -> Result<(Sandbox, String)> {
    let mut sb = Sandbox::new(Path::new(AGENT), 2)?;
    let ips: Vec<IpAddr> = sb.pod_ips().into_iter().map(IpAddr::V4).collect();
    sb.write_manifest("web.yaml", &manifests::dns_service("web", VIP, POD_PORT))?;
    sb.write_manifest(
        "web-eps.yaml",
        &manifests::dns_endpoint_slice("web-1", "web", POD_PORT, &ips),
    )?;
    let pod_ns = sb.add_pod_client()?;
    Ok((sb, pod_ns))
}

#[test]
fn host_scope_translates_only_the_agents_namespace() -> Result<()> {
    if !privileged_or_skip("host-only scope") {
        return Ok(());
    }
    let (mut sb, pod_ns) = sandbox()?;
    let node_ns = sb.client_netns.clone();
    sb.start_agent_in(&node_ns, &["--socket-lb-scope", "host"])?;
    let target = SocketAddr::new(VIP.parse()?, 53);

    for proto in ["tcp", "udp", "udp-unconnected"] {
        let node = probe_in(&sb, &node_ns, target, proto)?;
        assert_eq!(
            node.ok,
            10,
            "node client, {proto}: {node:?}\n{}",
            sb.agent_log()
        );
        let pod = probe_in(&sb, &pod_ns, target, proto)?;
        assert_eq!(
            pod.errors.get("ENETUNREACH"),
            Some(&10),
            "pod client, {proto}: {pod:?}"
        );
    }
    // The pod namespace does reach the pods themselves: only the ClusterIP is left alone.
    let direct = probe_in(
        &sb,
        &pod_ns,
        SocketAddr::new(IpAddr::V4(sb.pods[0].ip), POD_PORT),
        "tcp",
    )?;
    assert_eq!(direct.ok, 10, "{direct:?}");
    Ok(())
}

#[test]
fn default_scope_translates_pod_namespaces_too() -> Result<()> {
    if !privileged_or_skip("default scope") {
        return Ok(());
    }
    let (mut sb, pod_ns) = sandbox()?;
    let node_ns = sb.client_netns.clone();
    sb.start_agent_in(&node_ns, &[])?;
    let target = SocketAddr::new(VIP.parse()?, 53);
    for proto in ["tcp", "udp", "udp-unconnected"] {
        let pod = probe_in(&sb, &pod_ns, target, proto)?;
        assert_eq!(
            pod.ok,
            10,
            "pod client, {proto}: {pod:?}\n{}",
            sb.agent_log()
        );
    }
    Ok(())
}
