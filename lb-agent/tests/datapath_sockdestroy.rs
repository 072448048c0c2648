//! Sockets on a backend that left its Service are ended, in the real kernel, with both
//! mechanisms (BPF socket iterators with bpf_sock_destroy, and netlink SOCK_DESTROY forced
//! with `--socket-destroy-mechanism netlink`): a client holding a connected UDP socket (or a
//! TCP connection) to a ClusterIP asks in a loop; its backend is removed from the EndpointSlice
//! while the pod keeps running; the client soon gets an error, opens a new socket, and from then
//! on is answered only by live backends. A socket to a remaining backend, and a socket in
//! another namespace connected straight to the removed pod (not through the Service), are
//! untouched.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use lb_testkit::{
    HoldClient, HoldEvent, POD_HOLD_PORT, POD_PORT, Sandbox, metric_value, privileged_or_skip,
};

const AGENT: &str = env!("CARGO_BIN_EXE_lb-agent");
const VIP: &str = "10.96.0.20";
const VIP6: &str = "fd00:96::20";
const UDP_PORT: u16 = 53;
const TCP_PORT: u16 = 80;

/// A Service with a UDP port (to the pods' UDP server) and a TCP port (to their long-lived TCP
/// server), and its EndpointSlice with the given pods.
fn manifests(ips: &[IpAddr]) -> (String, String) {
    manifests_for(VIP, ips)
}

/// The same for `vip` (IPv4 or IPv6; `ips` of the same family).
fn manifests_for(vip: &str, ips: &[IpAddr]) -> (String, String) {
    let (families, address_type) = if vip.contains(':') {
        ("  ipFamilies: [IPv6]\n", "IPv6")
    } else {
        ("", "IPv4")
    };
    let svc = format!(
        "apiVersion: v1
kind: Service
metadata: {{name: held, namespace: default}}
spec:
  clusterIP: \"{vip}\"
{families}  ports:
    - {{name: dns, protocol: UDP, port: {UDP_PORT}, targetPort: {POD_PORT}}}
    - {{name: hold, protocol: TCP, port: {TCP_PORT}, targetPort: {POD_HOLD_PORT}}}
"
    );
    let eps: String = ips
        .iter()
        .map(|ip| format!("  - addresses: [\"{ip}\"]\n    conditions: {{ready: true}}\n"))
        .collect();
    let eps = if eps.is_empty() { "  []\n".into() } else { eps };
    let slice = format!(
        "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: held-1
  namespace: default
  labels: {{kubernetes.io/service-name: held}}
addressType: {address_type}
ports:
  - {{name: dns, protocol: UDP, port: {POD_PORT}}}
  - {{name: hold, protocol: TCP, port: {POD_HOLD_PORT}}}
endpoints:
{eps}"
    );
    (svc, slice)
}

fn first_reply(c: &HoldClient) -> Result<String> {
    let ev = c.wait_until(Duration::from_secs(5), |e| {
        e.iter().any(|e| e.reply.is_some() || e.error.is_some())
    })?;
    match &ev[0] {
        HoldEvent { reply: Some(r), .. } => Ok(r.clone()),
        e => bail!("the first attempt failed: {e:?}"),
    }
}

/// Opens held sockets through the Service until two of them sit on different backends:
/// (victim, its pod name, survivor, its pod name).
fn two_clients_on_two_backends(
    sb: &Sandbox,
    target: SocketAddr,
    proto: &str,
) -> Result<(HoldClient, String, HoldClient, String)> {
    let first = sb.spawn_hold(&sb.client_netns, target, proto, 20)?;
    let first_pod = first_reply(&first)?;
    for _ in 0..30 {
        let other = sb.spawn_hold(&sb.client_netns, target, proto, 20)?;
        let pod = first_reply(&other)?;
        if pod != first_pod {
            return Ok((first, first_pod, other, pod));
        }
    }
    bail!("30 connections all went to {first_pod}")
}

fn errors_after(ev: &[HoldEvent], from: usize) -> Vec<&HoldEvent> {
    ev[from..].iter().filter(|e| e.error.is_some()).collect()
}

fn ends_sockets_on_a_departed_backend(
    proto: &str,
    agent_args: &[&str],
    mechanism: &str,
) -> Result<()> {
    ends_sockets_on_a_departed_backend_at(VIP, proto, agent_args, mechanism)
}

fn pod_addr(p: &lb_testkit::Pod, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(p.ip6)
    } else {
        IpAddr::V4(p.ip)
    }
}

fn ends_sockets_on_a_departed_backend_at(
    vip: &str,
    proto: &str,
    agent_args: &[&str],
    mechanism: &str,
) -> Result<()> {
    let v6 = vip.contains(':');
    let mut sb = Sandbox::new(Path::new(AGENT), 3)?;
    let ips: Vec<IpAddr> = sb.pods.iter().map(|p| pod_addr(p, v6)).collect();
    let (svc, slice) = manifests_for(vip, &ips);
    sb.write_manifest("held.yaml", &svc)?;
    sb.write_manifest("held-eps.yaml", &slice)?;
    sb.start_agent(agent_args)?;
    assert!(
        sb.agent_log()
            .contains(&format!("mechanism=\"{mechanism}\"")),
        "{}",
        sb.agent_log()
    );
    let port = if proto == "tcp" { TCP_PORT } else { UDP_PORT };
    let target = SocketAddr::new(vip.parse()?, port);

    let (victim, victim_pod, survivor, survivor_pod) =
        two_clients_on_two_backends(&sb, target, proto)?;
    let gone = sb
        .pods
        .iter()
        .find(|p| p.name == victim_pod)
        .context("victim pod")?;
    // Another namespace (the removed pod's own) holds a socket straight to the same address and
    // port, not through the Service: not ours to end.
    let direct_port = if proto == "tcp" {
        POD_HOLD_PORT
    } else {
        POD_PORT
    };
    let direct = sb.spawn_hold(
        &gone.netns,
        SocketAddr::new(pod_addr(gone, v6), direct_port),
        proto,
        20,
    )?;
    assert_eq!(first_reply(&direct)?, victim_pod);

    // The backend leaves the Service; its pod keeps running.
    let live: Vec<IpAddr> = sb
        .pods
        .iter()
        .filter(|p| p.name != victim_pod)
        .map(|p| pod_addr(p, v6))
        .collect();
    let (v0, s0, d0) = (
        victim.events().len(),
        survivor.events().len(),
        direct.events().len(),
    );
    let removed_at = Instant::now();
    sb.write_manifest("held-eps.yaml", &manifests_for(vip, &live).1)?;

    let ev = victim
        .wait_until(Duration::from_secs(5), |e| !errors_after(e, v0).is_empty())
        .with_context(|| sb.agent_log())?;
    let took = removed_at.elapsed();
    let err_at = v0 + ev[v0..].iter().position(|e| e.error.is_some()).unwrap_or(0);
    eprintln!(
        "{proto} via {mechanism}: the client saw {:?} {took:?} after the EndpointSlice changed",
        ev[err_at].error
    );
    // Within a second (the manifest directory is polled every 200 ms; the socket is ended in
    // the same sync that writes the maps).
    assert!(
        took < Duration::from_secs(1),
        "{took:?}\n{}",
        sb.agent_log()
    );
    // The client opened a new socket and from then on only live backends answer.
    let ev = victim.wait_until(Duration::from_secs(5), |e| {
        e[err_at..].iter().filter(|e| e.reply.is_some()).count() >= 20
    })?;
    let after: Vec<&HoldEvent> = ev[err_at + 1..].iter().collect();
    assert!(after[0].new_socket, "{after:?}");
    for e in &after {
        assert!(
            e.reply.as_deref() != Some(victim_pod.as_str()),
            "the removed backend answered after the error: {after:?}"
        );
    }
    assert!(
        after.iter().filter(|e| e.error.is_some()).count() == 0,
        "{after:?}"
    );

    // Untouched: the socket on the remaining backend and the direct one in another namespace.
    for (c, from, pod, what) in [
        (&survivor, s0, &survivor_pod, "remaining backend"),
        (
            &direct,
            d0,
            &victim_pod,
            "direct socket in another namespace",
        ),
    ] {
        let ev = c.wait_until(Duration::from_secs(5), |e| e.len() >= from + 20)?;
        assert!(errors_after(&ev, 0).is_empty(), "{what}: {ev:?}");
        assert!(ev.iter().skip(1).all(|e| !e.new_socket), "{what}: {ev:?}");
        assert!(
            ev.iter().all(|e| e.reply.as_deref() == Some(pod.as_str())),
            "{what}: {ev:?}"
        );
    }

    let metrics = sb.metrics()?;
    assert!(
        metric_value(
            &metrics,
            &format!("lb_sockets_destroyed_total{{proto=\"{proto}\"}}")
        ) >= 1.0,
        "{metrics}"
    );
    assert_eq!(
        metric_value(&metrics, "lb_socket_destroy_failures_total"),
        0.0,
        "{metrics}\n{}",
        sb.agent_log()
    );
    Ok(())
}

#[test]
fn connected_udp_on_a_removed_backend_is_ended_by_the_iterator() -> Result<()> {
    if !privileged_or_skip("sockdestroy udp iterator") {
        return Ok(());
    }
    ends_sockets_on_a_departed_backend("udp", &[], "bpf-iterator")
}

#[test]
fn tcp_on_a_removed_backend_is_ended_by_the_iterator_with_udp_tcp() -> Result<()> {
    if !privileged_or_skip("sockdestroy tcp iterator") {
        return Ok(());
    }
    ends_sockets_on_a_departed_backend("tcp", &["--terminate-sockets", "udp,tcp"], "bpf-iterator")
}

#[test]
fn ipv6_udp_and_tcp_on_a_removed_backend_are_ended_by_both_mechanisms() -> Result<()> {
    if !privileged_or_skip("sockdestroy ipv6") {
        return Ok(());
    }
    for mechanism in ["auto", "netlink"] {
        let expect = if mechanism == "auto" {
            "bpf-iterator"
        } else {
            "netlink-sock-diag"
        };
        for proto in ["udp", "tcp"] {
            ends_sockets_on_a_departed_backend_at(
                VIP6,
                proto,
                &[
                    "--terminate-sockets",
                    "udp,tcp",
                    "--socket-destroy-mechanism",
                    mechanism,
                ],
                expect,
            )?;
        }
    }
    Ok(())
}

#[test]
fn connected_udp_on_a_removed_backend_is_ended_by_netlink() -> Result<()> {
    if !privileged_or_skip("sockdestroy udp netlink") {
        return Ok(());
    }
    ends_sockets_on_a_departed_backend(
        "udp",
        &["--socket-destroy-mechanism", "netlink"],
        "netlink-sock-diag",
    )
}

#[test]
fn tcp_on_a_removed_backend_is_ended_by_netlink_with_udp_tcp() -> Result<()> {
    if !privileged_or_skip("sockdestroy tcp netlink") {
        return Ok(());
    }
    ends_sockets_on_a_departed_backend(
        "tcp",
        &[
            "--terminate-sockets",
            "udp,tcp",
            "--socket-destroy-mechanism",
            "netlink",
        ],
        "netlink-sock-diag",
    )
}

/// With the default `udp`, a TCP connection to a removed backend is left alone (as kube-proxy
/// leaves established TCP flows).
#[test]
fn tcp_is_left_alone_by_default() -> Result<()> {
    if !privileged_or_skip("sockdestroy tcp default") {
        return Ok(());
    }
    let mut sb = Sandbox::new(Path::new(AGENT), 2)?;
    let ips: Vec<IpAddr> = sb.pod_ips().into_iter().map(IpAddr::V4).collect();
    let (svc, slice) = manifests(&ips);
    sb.write_manifest("held.yaml", &svc)?;
    sb.write_manifest("held-eps.yaml", &slice)?;
    sb.start_agent(&[])?;
    let target = SocketAddr::new(VIP.parse()?, TCP_PORT);
    let c = sb.spawn_hold(&sb.client_netns, target, "tcp", 20)?;
    let pod = first_reply(&c)?;
    let live: Vec<IpAddr> = sb
        .pods
        .iter()
        .filter(|p| p.name != pod)
        .map(|p| IpAddr::V4(p.ip))
        .collect();
    sb.write_manifest("held-eps.yaml", &manifests(&live).1)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while sb.inspect()?["backend_count"] != 2 {
        assert!(Instant::now() < deadline, "{}", sb.agent_log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let n = c.events().len();
    let ev = c.wait_until(Duration::from_secs(5), |e| e.len() >= n + 25)?;
    assert!(errors_after(&ev, 0).is_empty(), "{ev:?}");
    assert!(ev.iter().all(|e| e.reply.as_deref() == Some(pod.as_str())));
    Ok(())
}
