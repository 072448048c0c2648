//! The XDP path (traffic from outside the node to a NodePort), two ways:
//!
//! - per-packet cost of the program with BPF_PROG_TEST_RUN and `repeat`, for a NodePort hit
//!   and a miss, with the Service count in the maps (`lb-agent`'s `xdp_cost` example);
//! - UDP packets per second from an outside client namespace through the node to a pod:
//!   straight to the pod IP (the floor, routed by the node), through the NodePort with the
//!   XDP path, and through the NodePort with kube-proxy-shaped iptables DNAT
//!   (KUBE-NODEPORTS -> KUBE-SVC -> KUBE-SEP) on the node. Each mode runs in a fresh sandbox
//!   (netfilter only exists where it is measured); the client keeps a window of requests in
//!   flight and counts the answers.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use lb_testkit::{POD_PORT, Sandbox, netns, outside};
use serde_json::json;

use super::{Settings, netfilter, stats};
use crate::{run as run_cmd, workspace_root};

const NODE_PORT: u16 = 30080;
/// Requests in flight at once.
pub const WINDOW: usize = 32;

#[derive(Clone, Debug, Default)]
pub struct PerPacket {
    pub services: usize,
    pub hit_ns: f64,
    pub miss_ns: f64,
}

#[derive(Clone, Debug, Default)]
pub struct XdpResult {
    pub per_packet: Vec<PerPacket>,
    /// Median packets (answers) per second over the rounds.
    pub pps_direct_xdp_box: f64,
    pub pps_xdp: f64,
    pub pps_direct_iptables_box: f64,
    pub pps_iptables: f64,
    pub rounds: usize,
    pub seconds: f64,
}

/// Builds the `xdp_cost` example next to the release agent.
pub fn build_cost_tool() -> Result<std::path::PathBuf> {
    let root = workspace_root();
    run_cmd(Command::new("cargo").current_dir(&root).args([
        "build",
        "--release",
        "-p",
        "lb-agent",
        "--example",
        "xdp_cost",
    ]))?;
    Ok(root.join("target/release/examples/xdp_cost"))
}

fn per_packet(tool: &Path, services: usize, repeat: u32) -> Result<PerPacket> {
    let out = Command::new(tool)
        .args(["--services", &services.to_string()])
        .args(["--repeat", &repeat.to_string()])
        .env("RUST_BACKTRACE", "0")
        .output()
        .with_context(|| format!("running {}", tool.display()))?;
    if !out.status.success() {
        bail!(
            "xdp_cost failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("xdp_cost output")?;
    let num = |k: &str| v[k].as_f64().with_context(|| format!("xdp_cost: no {k}"));
    Ok(PerPacket {
        services,
        hit_ns: num("hit_ns")?,
        miss_ns: num("miss_ns")?,
    })
}

/// Answers per second for `seconds`, with WINDOW requests in flight, from the outside
/// namespace to `target`.
fn udp_rate(sb: &Sandbox, target: SocketAddr, seconds: f64) -> Result<f64> {
    let ns = sb.outside_netns.clone().context("no outside namespace")?;
    netns::run_in(&ns, move || {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.set_read_timeout(Some(Duration::from_millis(200)))?;
        s.connect(target)?;
        let mut buf = [0u8; 64];
        for _ in 0..WINDOW {
            s.send(b"q")?;
        }
        let (start, limit) = (Instant::now(), Duration::from_secs_f64(seconds));
        let mut answers = 0u64;
        while start.elapsed() < limit {
            match s.recv(&mut buf) {
                Ok(_) => {
                    answers += 1;
                    s.send(b"q")?;
                }
                // A lost datagram: put another one in flight.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    s.send(b"q")?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        if answers == 0 {
            bail!("no answer from {target}");
        }
        Ok(answers as f64 / start.elapsed().as_secs_f64())
    })
}

fn node_port_service(sb: &Sandbox) -> Result<()> {
    let svc = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "bench-np", "namespace": "default"},
        "spec": {"type": "NodePort", "clusterIP": "10.96.0.50",
                 "ports": [{"name": "udp", "protocol": "UDP", "port": 80,
                            "targetPort": POD_PORT, "nodePort": NODE_PORT}]}});
    let eps = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "bench-np-1", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "bench-np"}},
        "addressType": "IPv4",
        "ports": [{"name": "udp", "protocol": "UDP", "port": POD_PORT}],
        "endpoints": [{"addresses": [sb.pods[0].ip.to_string()]}]});
    sb.write_manifest("np.json", &svc.to_string())?;
    sb.write_manifest("np-eps.json", &eps.to_string())
}

/// kube-proxy's iptables NodePort chain for one UDP Service with one endpoint.
fn kube_proxy_node_port_rules(pod: &str) -> String {
    format!(
        "*nat
:PREROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-EXT-BENCHNP - [0:0]
:KUBE-SVC-BENCHNP - [0:0]
:KUBE-SEP-BENCHNP - [0:0]
:KUBE-MARK-MASQ - [0:0]
-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-NODEPORTS -p udp -m comment --comment \"default/bench-np:udp\" -m udp --dport {NODE_PORT} -j KUBE-EXT-BENCHNP
-A KUBE-EXT-BENCHNP -j KUBE-SVC-BENCHNP
-A KUBE-SVC-BENCHNP -m comment --comment \"default/bench-np:udp -> {pod}:{POD_PORT}\" -j KUBE-SEP-BENCHNP
-A KUBE-SEP-BENCHNP -s {pod}/32 -j KUBE-MARK-MASQ
-A KUBE-SEP-BENCHNP -p udp -m udp -j DNAT --to-destination {pod}:{POD_PORT}
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
COMMIT
"
    )
}

/// A sandbox (node + one pod) with an outside client that also routes the pod subnet via the
/// node, for the direct floor.
fn sandbox(agent: &Path) -> Result<Sandbox> {
    let mut sb = Sandbox::new(agent, 1)?;
    sb.add_outside()?;
    let ns = sb.outside_netns.clone().context("outside")?;
    netns::ip(
        &ns,
        &["route", "add", "10.244.0.0/16", "via", outside::NODE_IP],
    )?;
    Ok(sb)
}

pub fn run(agent: &Path, tool: &Path, s: &Settings) -> Result<XdpResult> {
    let mut r = XdpResult {
        rounds: if s.quick { 1 } else { 3 },
        seconds: if s.quick { 1.0 } else { 3.0 },
        ..Default::default()
    };
    let repeat = if s.quick { 200_000 } else { 2_000_000 };
    for &n in s.scales.iter().filter(|&&n| n <= 10_000) {
        super::interrupted()?;
        r.per_packet.push(per_packet(tool, n, repeat)?);
    }

    let node_port = SocketAddr::new(outside::NODE_IP.parse()?, NODE_PORT);
    let (mut direct_a, mut xdp, mut direct_b, mut ipt) = (vec![], vec![], vec![], vec![]);
    {
        let mut sb = sandbox(agent)?;
        let pod = SocketAddr::new(sb.pods[0].ip.into(), POD_PORT);
        node_port_service(&sb)?;
        sb.start_agent_in_node(&[
            "--xdp-iface",
            outside::NODE_IFACE,
            "--node-ip",
            outside::NODE_IP,
        ])?;
        for _ in 0..r.rounds {
            super::interrupted()?;
            direct_a.push(udp_rate(&sb, pod, r.seconds)?);
            xdp.push(udp_rate(&sb, node_port, r.seconds)?);
        }
    }
    {
        let sb = sandbox(agent)?;
        let pod = SocketAddr::new(sb.pods[0].ip.into(), POD_PORT);
        netfilter::iptables_restore(
            &sb.client_netns,
            &kube_proxy_node_port_rules(&sb.pods[0].ip.to_string()),
        )?;
        for _ in 0..r.rounds {
            super::interrupted()?;
            direct_b.push(udp_rate(&sb, pod, r.seconds)?);
            ipt.push(udp_rate(&sb, node_port, r.seconds)?);
        }
    }
    r.pps_direct_xdp_box = stats::median_f(&direct_a);
    r.pps_xdp = stats::median_f(&xdp);
    r.pps_direct_iptables_box = stats::median_f(&direct_b);
    r.pps_iptables = stats::median_f(&ipt);
    Ok(r)
}
