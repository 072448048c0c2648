//! IPv6 and dual-stack ClusterIPs in the real kernel: connect6/sendmsg6/recvmsg6/getpeername6,
//! and IPv6 sockets aimed at an IPv4 ClusterIP through an IPv4-mapped address.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use anyhow::Result;
use lb_testkit::{POD_PORT, Sandbox, manifests, privileged_or_skip};

const AGENT: &str = env!("CARGO_BIN_EXE_lb-agent");

#[test]
fn dual_stack_service_answers_on_both_families_and_mapped_addresses() -> Result<()> {
    if !privileged_or_skip("ipv6 datapath") {
        return Ok(());
    }
    let mut sb = Sandbox::new(Path::new(AGENT), 2)?;
    let v4: Vec<IpAddr> = sb.pods.iter().map(|p| IpAddr::V4(p.ip)).collect();
    let v6: Vec<IpAddr> = sb.pods.iter().map(|p| IpAddr::V6(p.ip6)).collect();
    let svc = manifests::dns_service("web", "10.96.0.10", POD_PORT).replace(
        "  clusterIP: 10.96.0.10\n",
        "  clusterIP: 10.96.0.10\n  clusterIPs: [10.96.0.10, \"fd00:96::10\"]\n  ipFamilies: [IPv4, IPv6]\n  ipFamilyPolicy: RequireDualStack\n",
    );
    sb.write_manifest("web.yaml", &svc)?;
    sb.write_manifest(
        "web-v4.yaml",
        &manifests::dns_endpoint_slice("web-v4", "web", POD_PORT, &v4),
    )?;
    sb.write_manifest(
        "web-v6.yaml",
        &manifests::dns_endpoint_slice("web-v6", "web", POD_PORT, &v6),
    )?;
    sb.start_agent(&[])?;

    let targets: [SocketAddr; 3] = [
        "[fd00:96::10]:53".parse()?,
        "10.96.0.10:53".parse()?,
        "[::ffff:10.96.0.10]:53".parse()?,
    ];
    for target in targets {
        for proto in ["tcp", "udp", "udp-unconnected"] {
            let s = sb.probe(target, 40, proto)?;
            assert_eq!(s.ok, 40, "{target} {proto}: {s:?}\n{}", sb.agent_log());
            assert_eq!(
                s.replies.len(),
                2,
                "{target} {proto}: both pods answer: {s:?}"
            );
        }
    }
    // Nothing else of the IPv6 range is touched (no route in the sandbox).
    let s = sb.probe("[fd00:96::99]:53".parse()?, 2, "tcp")?;
    assert_eq!(s.errors.get("ENETUNREACH"), Some(&2), "{s:?}");

    // An empty IPv6 slice: the IPv6 frontend rejects while the IPv4 one keeps working.
    sb.write_manifest(
        "web-v6.yaml",
        &manifests::dns_endpoint_slice("web-v6", "web", POD_PORT, &[]),
    )?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let s = sb.probe("[fd00:96::10]:53".parse()?, 1, "tcp")?;
        if s.errors.get("ECONNREFUSED") == Some(&1) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{s:?}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(sb.probe("10.96.0.10:53".parse()?, 10, "tcp")?.ok, 10);
    Ok(())
}
