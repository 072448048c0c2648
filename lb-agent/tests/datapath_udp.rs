//! UDP through a ClusterIP in the real kernel: connected sockets (connect4), unconnected ones
//! (sendmsg4), replies shown as coming from the Service address (recvmsg4) and getpeername
//! returning it (getpeername4). The probe fails an answer whose source is not the VIP.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use anyhow::Result;
use lb_testkit::{POD_PORT, Sandbox, manifests, privileged_or_skip};

const AGENT: &str = env!("CARGO_BIN_EXE_lb-agent");
const DNS_VIP: &str = "10.96.0.10";

#[test]
fn dns_over_udp_works_connected_and_unconnected_and_replies_come_from_the_vip() -> Result<()> {
    if !privileged_or_skip("udp datapath") {
        return Ok(());
    }
    let mut sb = Sandbox::new(Path::new(AGENT), 2)?;
    let ips: Vec<IpAddr> = sb.pod_ips().into_iter().map(IpAddr::V4).collect();
    sb.write_manifest(
        "dns.yaml",
        &manifests::dns_service("kube-dns", DNS_VIP, POD_PORT),
    )?;
    sb.write_manifest(
        "dns-eps.yaml",
        &manifests::dns_endpoint_slice("kube-dns-1", "kube-dns", POD_PORT, &ips),
    )?;
    sb.start_agent(&[])?;
    let vip = SocketAddr::new(DNS_VIP.parse()?, 53);

    for proto in ["udp", "udp-unconnected", "tcp"] {
        let s = sb.probe(vip, 60, proto)?;
        assert_eq!(s.ok, 60, "{proto}: {s:?}");
        assert!(
            s.replies.contains_key("pod-1") && s.replies.contains_key("pod-2"),
            "{proto}: {s:?}"
        );
    }
    assert!(sb.pods.iter().all(|p| p.server.udp_requests() >= 20));

    // No endpoints: the sender sees an error at once instead of datagrams to nowhere.
    sb.write_manifest(
        "dns-eps.yaml",
        &manifests::dns_endpoint_slice("kube-dns-1", "kube-dns", POD_PORT, &[]),
    )?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while sb.inspect()?["backend_count"] != 0 {
        assert!(std::time::Instant::now() < deadline, "{}", sb.agent_log());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    for proto in ["udp", "udp-unconnected"] {
        let s = sb.probe(vip, 5, proto)?;
        assert_eq!(s.errors.get("ECONNREFUSED"), Some(&5), "{proto}: {s:?}");
    }
    Ok(())
}
