//! The data-path measurements at one Service count: every mode loaded with the same Service
//! set (each pointing the target Service at its own pod addresses and port), then rounds in
//! which each mode runs the same client in turn (the order rotates every round); medians over
//! rounds are reported. Then, with BPF run-time statistics on, the cost of the hooks alone.

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::agent::{Agent, map_sizes};
use super::client::{self, ClientResult, Placement};
use super::services::{SERVICE_PORT, ServiceSet, Target};
use super::topology::{MODES, Mode, Topology};
use super::{Settings, interrupted, iptables, manifests, netfilter, nftables};

pub const CLIENT_CPU: usize = 0;
pub const SERVER_CPU: usize = 1;

#[derive(Clone, Debug, Default)]
pub struct Run {
    pub client: ClientResult,
    /// Share of one CPU the server thread used while this client ran.
    pub server_cpu: f64,
    /// Share of one CPU the client used (user + system).
    pub client_cpu: f64,
}

#[derive(Clone, Debug, Default)]
pub struct ModeRuns {
    pub tcp: Vec<Run>,
    pub udp: Vec<Run>,
}

#[derive(Clone, Debug, Default)]
pub struct HookCost {
    pub connect4_ns: f64,
    pub sendmsg4_ns: f64,
    pub recvmsg4_ns: f64,
}

#[derive(Clone, Debug, Default)]
pub struct ScaleResult {
    pub services: usize,
    pub endpoints: usize,
    /// Indexed like [`MODES`].
    pub modes: Vec<ModeRuns>,
    pub agent_ready: Duration,
    pub agent_rss: u64,
    pub iptables_load: Duration,
    pub iptables_rules: usize,
    pub nft_load: Duration,
    pub nft_rules: usize,
    /// The nftables baseline was not loaded at this count (above --nft-max-services).
    pub nft_skipped: bool,
    pub hook: HookCost,
}

pub fn set_for(mode: Mode, scale: usize, services: usize, endpoints: usize) -> ServiceSet {
    ServiceSet::new(
        services,
        endpoints,
        Some(Target {
            backends: mode.pod_ips(),
            port: mode.port(scale),
        }),
    )
}

fn target(mode: Mode, scale: usize, services: usize) -> SocketAddrV4 {
    match mode {
        Mode::Direct => SocketAddrV4::new(mode.pod_ips()[0], mode.port(scale)),
        _ => SocketAddrV4::new(ServiceSet::target_vip(services), SERVICE_PORT),
    }
}

fn one_run(
    topo: &Topology,
    mode: Mode,
    proto: &str,
    to: SocketAddrV4,
    count: u32,
    warmup: u32,
) -> Result<Run> {
    let ns = topo.client_ns(mode);
    let place = Placement {
        netns: &ns,
        cgroup: (mode == Mode::SockLb).then_some(topo.cgroup.as_path()),
        cpu: CLIENT_CPU,
    };
    let cpu0 = topo.server_cpu_ns();
    let t0 = Instant::now();
    let client = client::run(&place, proto, to, count, warmup)
        .with_context(|| format!("{} {proto} client to {to}", mode.label()))?;
    let wall = t0.elapsed().as_nanos().max(1) as f64;
    let server_cpu = (topo.server_cpu_ns() - cpu0) as f64 / wall;
    let client_cpu = client.cpu_ns as f64 / client.elapsed_ns.max(1) as f64;
    Ok(Run {
        client,
        server_cpu,
        client_cpu,
    })
}

pub fn run_scale(
    topo: &mut Topology,
    agent_bin: &std::path::Path,
    scale: usize,
    services: usize,
    s: &Settings,
) -> Result<ScaleResult> {
    eprintln!("== {services} Services x {} endpoints", s.endpoints);
    topo.reset_clients()?;
    let mut r = ScaleResult {
        services,
        endpoints: set_for(Mode::Direct, scale, services, s.endpoints).endpoint_count(),
        modes: vec![ModeRuns::default(); MODES.len()],
        ..Default::default()
    };

    let ipt = iptables::ruleset(&set_for(Mode::Iptables, scale, services, s.endpoints));
    r.iptables_rules = netfilter::iptables_rule_count(&ipt);
    r.iptables_load = netfilter::iptables_restore(&topo.client_ns(Mode::Iptables), &ipt)?;
    drop(ipt);
    eprintln!(
        "   iptables-restore: {} rules in {:?}",
        r.iptables_rules, r.iptables_load
    );
    interrupted()?;
    let nft = nftables::ruleset(&set_for(Mode::Nftables, scale, services, s.endpoints));
    r.nft_rules = netfilter::nft_rule_count(&nft);
    r.nft_skipped = services > s.nft_max_services;
    if r.nft_skipped {
        eprintln!("   nft -f: skipped above {} Services", s.nft_max_services);
    } else {
        r.nft_load = netfilter::nft_load(&topo.client_ns(Mode::Nftables), &nft)?;
        eprintln!(
            "   nft -f: {} rules and elements in {:?}",
            r.nft_rules, r.nft_load
        );
    }
    drop(nft);
    interrupted()?;
    let modes: Vec<Mode> = MODES
        .into_iter()
        .filter(|m| !(r.nft_skipped && *m == Mode::Nftables))
        .collect();

    let lb_set = set_for(Mode::SockLb, scale, services, s.endpoints);
    let dir = topo.workdir.join(format!("manifests-{scale}"));
    std::fs::create_dir_all(&dir)?;
    manifests::write_set(&dir, &lb_set, None)?;
    let frontends = services + 1;
    let sizes = map_sizes(frontends, r.endpoints);
    let (agent, ready) = Agent::start(
        agent_bin,
        &dir,
        &topo.cgroup,
        &format!("{}s{scale}", topo.id),
        &sizes,
        topo.workdir.join(format!("agent-{scale}.log")),
    )?;
    r.agent_ready = ready;
    eprintln!("   agent ready in {ready:?}");

    // Every mode must reach the pod before anything is timed.
    for &mode in &modes {
        for proto in ["tcp", "udp"] {
            let to = target(mode, scale, services);
            let check = one_run(topo, mode, proto, to, 5, 0)?;
            if check.client.errors > 0 {
                bail!(
                    "{} {proto} to {to} does not work: {}\nagent log:\n{}",
                    mode.label(),
                    check.client.first_error,
                    agent.log_tail()
                );
            }
        }
    }

    for (proto, rounds, count) in [
        ("tcp", s.rounds, s.conns),
        ("udp", s.udp_rounds, s.udp_reqs),
    ] {
        for round in 0..rounds {
            for k in 0..modes.len() {
                interrupted()?;
                let mode = modes[(round + k) % modes.len()];
                let to = target(mode, scale, services);
                let run = one_run(topo, mode, proto, to, count, s.warmup)?;
                let slot = &mut r.modes[mode.index()];
                if proto == "tcp" {
                    slot.tcp.push(run);
                } else {
                    slot.udp.push(run);
                }
            }
        }
    }

    // The hooks alone, with run-time statistics on only now (they cost a little themselves).
    {
        let _stats = super::bpf::enable_stats()?;
        let to = target(Mode::SockLb, scale, services);
        let before = agent.prog_stats("lb_connect4")?;
        one_run(topo, Mode::SockLb, "tcp", to, s.conns, 0)?;
        let after = agent.prog_stats("lb_connect4")?;
        r.hook.connect4_ns = per_call(before, after);
        let (sb, rb) = (
            agent.prog_stats("lb_sendmsg4")?,
            agent.prog_stats("lb_recvmsg4")?,
        );
        one_run(topo, Mode::SockLb, "udp", to, s.udp_reqs, 0)?;
        let (sa, ra) = (
            agent.prog_stats("lb_sendmsg4")?,
            agent.prog_stats("lb_recvmsg4")?,
        );
        r.hook.sendmsg4_ns = per_call(sb, sa);
        r.hook.recvmsg4_ns = per_call(rb, ra);
    }
    r.agent_rss = agent.rss().unwrap_or(0);
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(r)
}

fn per_call(before: (u64, u64), after: (u64, u64)) -> f64 {
    let calls = after.1.saturating_sub(before.1);
    if calls == 0 {
        return 0.0;
    }
    after.0.saturating_sub(before.0) as f64 / calls as f64
}
