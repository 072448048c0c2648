//! `lb-agent explain` against a running agent's pinned maps and its manifest directory: a
//! working Service is "ok" with its backends shown from the maps; a Service whose endpoints are
//! all unready is named as "none ready" (exit status 2).

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;

use anyhow::Result;
use lb_testkit::{POD_PORT, Sandbox, manifests, privileged_or_skip};

const AGENT: &str = env!("CARGO_BIN_EXE_lb-agent");

fn explain(sb: &Sandbox, service: &str) -> Result<(Option<i32>, String)> {
    let out = Command::new(AGENT)
        .args(["explain", service, "--pin-dir", &sb.id, "--manifests"])
        .arg(&sb.manifests)
        .output()?;
    Ok((
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

#[test]
fn explain_names_the_broken_stage_from_manifests_and_the_pinned_maps() -> Result<()> {
    if !privileged_or_skip("explain") {
        return Ok(());
    }
    let mut sb = Sandbox::new(Path::new(AGENT), 2)?;
    let pods: Vec<IpAddr> = sb.pods.iter().map(|p| IpAddr::V4(p.ip)).collect();
    sb.write_manifest(
        "web.yaml",
        &format!(
            "{}---\n{}",
            manifests::service("web", "10.96.0.10", 80, POD_PORT),
            manifests::endpoint_slice("web-1", "web", POD_PORT, &pods)
        ),
    )?;
    sb.write_manifest(
        "sick.yaml",
        &format!(
            "{}---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: sick-1
  namespace: default
  labels: {{kubernetes.io/service-name: sick}}
addressType: IPv4
ports: [{{name: http, port: {POD_PORT}, protocol: TCP}}]
endpoints:
  - addresses: [\"{}\"]
    conditions: {{ready: false, serving: false, terminating: false}}
",
            manifests::service("sick", "10.96.0.11", 80, POD_PORT),
            pods[0]
        ),
    )?;
    sb.start_agent(&[])?;

    let (code, text) = explain(&sb, "default/web")?;
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("verdict: ok"), "{text}");
    for p in &pods {
        assert!(
            text.contains(&format!("{p}:{POD_PORT} (id ")),
            "the maps' backend {p} is not shown:\n{text}"
        );
    }

    let (code, text) = explain(&sb, "default/sick")?;
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("verdict: broken: none ready"), "{text}");
    assert!(text.contains("ready=false serving=false"), "{text}");
    // The maps hold the frontend (it rejects) and explain read it from them.
    assert!(text.contains("maps: rev_nat"), "{text}");

    let (code, text) = explain(&sb, "default/absent")?;
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("Service default/absent: not found"), "{text}");
    Ok(())
}
