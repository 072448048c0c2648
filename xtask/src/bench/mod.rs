//! `cargo xtask bench`: this load balancer against kube-proxy-shaped iptables and nftables
//! rules, side by side in one run, on one topology with one client program (issue 6).
//!
//! - [`topology`]: namespaces, veths and the cgroup; [`server`] and [`client`]: the two ends.
//! - [`services`]: the synthetic Service set; [`iptables`], [`nftables`]: kube-proxy's rules
//!   for it; [`manifests`]: the same set for the agent; [`netfilter`]: loading them, timed.
//! - [`connect`]: TCP connect and UDP request/response per mode and Service count.
//! - [`control`]: agent start, EndpointSlice edit to map, rule load times, memory.
//! - [`xdp`]: the XDP path: ns per packet (BPF_PROG_TEST_RUN) and packets/s to a NodePort
//!   from outside the node, against iptables DNAT.
//! - [`report`], [`chart`]: `latest.md` and `connect-latency.svg`.

pub mod agent;
pub mod bpf;
pub mod chart;
pub mod client;
pub mod connect;
pub mod control;
pub mod iptables;
pub mod manifests;
pub mod netfilter;
pub mod nftables;
pub mod report;
pub mod server;
pub mod services;
pub mod stats;
pub mod tools;
pub mod topology;
pub mod xdp;

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};

use crate::{build_ebpf, run as run_cmd, workspace_root};

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// A small version (two Service counts, fewer rounds) that finishes in under two minutes.
    #[arg(long)]
    pub quick: bool,
    /// Where latest.md and connect-latency.svg go (default: bench/results in the workspace).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Use this lb-agent binary instead of building target/release/lb-agent.
    #[arg(long)]
    pub agent: Option<PathBuf>,
    /// Service counts to measure (default 1,1000,10000,50000; quick: 1,1000).
    #[arg(long, value_delimiter = ',')]
    pub services: Option<Vec<usize>>,
    /// EndpointSlice edits timed in the control-plane part (default 100; quick: 20).
    #[arg(long)]
    pub changes: Option<usize>,
    /// Largest Service count loaded into the nftables baseline (default 10000): `nft -f` of
    /// kube-proxy's ruleset grows quadratically (one anonymous verdict map per service port)
    /// and takes many minutes at 50 000 Services.
    #[arg(long)]
    pub nft_max_services: Option<usize>,
    /// Services in the control-plane part, each with 10 endpoints (default 10000; quick: 1000).
    #[arg(long)]
    pub control_services: Option<usize>,
}

/// Everything that sizes a run.
#[derive(Clone, Debug)]
pub struct Settings {
    pub quick: bool,
    pub scales: Vec<usize>,
    /// Endpoints per Service in the data-path part.
    pub endpoints: usize,
    pub rounds: usize,
    pub conns: u32,
    pub udp_rounds: usize,
    pub udp_reqs: u32,
    pub warmup: u32,
    pub cp_services: usize,
    pub cp_endpoints: usize,
    pub changes: usize,
    /// The same edits applied to the baselines (each a kube-proxy update of the whole-size
    /// ruleset, seconds apiece at 10 000 Services).
    pub baseline_changes: usize,
    pub nft_max_services: usize,
}

impl Settings {
    pub fn from_args(a: &BenchArgs) -> Self {
        let mut s = if a.quick {
            Settings {
                quick: true,
                scales: vec![1, 1000],
                endpoints: 2,
                rounds: 3,
                conns: 500,
                udp_rounds: 2,
                udp_reqs: 500,
                warmup: 50,
                cp_services: 1000,
                cp_endpoints: 10,
                changes: 20,
                baseline_changes: 10,
                nft_max_services: 10_000,
            }
        } else {
            Settings {
                quick: false,
                scales: vec![1, 1000, 10_000, 50_000],
                endpoints: 2,
                rounds: 5,
                conns: 2000,
                udp_rounds: 3,
                udp_reqs: 2000,
                warmup: 200,
                cp_services: 10_000,
                cp_endpoints: 10,
                changes: 100,
                baseline_changes: 20,
                nft_max_services: 10_000,
            }
        };
        if let Some(v) = &a.services {
            s.scales = v.clone();
        }
        if let Some(c) = a.changes {
            s.changes = c;
            s.baseline_changes = s.baseline_changes.min(c);
        }
        if let Some(n) = a.nft_max_services {
            s.nft_max_services = n;
        }
        if let Some(n) = a.control_services {
            s.cp_services = n.max(1);
        }
        s
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Fails once Ctrl-C (SIGINT) or SIGTERM arrived, so the bench unwinds and cleans up.
pub fn interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

fn catch_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

/// The machine the numbers come from.
#[derive(Clone, Debug, Default)]
pub struct Machine {
    pub kernel: String,
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_gib: u64,
    pub date: String,
    pub load_before: String,
    pub load_after: String,
    pub iptables: String,
    pub nft: String,
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn machine() -> Machine {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    Machine {
        kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model: cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|m| m.trim_start_matches([' ', '\t', ':']).trim().to_string())
            .unwrap_or_default(),
        memory_gib: read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kb| (kb + (1 << 19)) >> 20),
        date: tools::version("date", "-u").to_string(),
        load_before: loadavg(),
        load_after: String::new(),
        iptables: tools::version("iptables", "-V"),
        nft: tools::version("nft", "-v"),
    }
}

fn agent_binary(args: &BenchArgs) -> Result<PathBuf> {
    if let Some(a) = &args.agent {
        return Ok(a.clone());
    }
    build_ebpf(true)?;
    let root = workspace_root();
    run_cmd(Command::new("cargo").current_dir(&root).args([
        "build",
        "--release",
        "-p",
        "lb-agent",
    ]))?;
    Ok(root.join("target/release/lb-agent"))
}

/// The whole benchmark; returns the path of the report.
pub fn run(args: &BenchArgs) -> Result<PathBuf> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "the bench creates namespaces, loads rules and attaches BPF programs: run it as root"
        );
    }
    let settings = Settings::from_args(args);
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| workspace_root().join("bench/results"));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    tools::ensure()?;
    let agent = agent_binary(args)?;
    let cost_tool = xdp::build_cost_tool()?;
    catch_signals();
    let started = std::time::Instant::now();
    let mut m = machine();
    let ports: Vec<u16> = (0..settings.scales.len())
        .flat_map(|scale| topology::MODES.map(|mode| mode.port(scale)))
        .collect();
    let mut topo = topology::Topology::new(&ports, connect::SERVER_CPU)?;
    eprintln!(
        "bench topology {} (client CPU {}, server CPU {})",
        topo.id,
        connect::CLIENT_CPU,
        connect::SERVER_CPU
    );
    let mut scales = Vec::new();
    for (i, n) in settings.scales.iter().enumerate() {
        scales.push(connect::run_scale(&mut topo, &agent, i, *n, &settings)?);
    }
    let control = control::run(&mut topo, &agent, &settings)?;
    drop(topo);
    let xdp = xdp::run(&agent, &cost_tool, &settings)?;
    m.load_after = loadavg();
    let results = report::Results {
        machine: m,
        settings,
        scales,
        control,
        xdp,
        duration: started.elapsed(),
    };
    let md = report::markdown(&results);
    report::check_complete(&md, &results.settings)?;
    let path = out.join("latest.md");
    std::fs::write(&path, &md).with_context(|| format!("writing {}", path.display()))?;
    let svg = out.join("connect-latency.svg");
    std::fs::write(&svg, chart::connect_latency(&results))
        .with_context(|| format!("writing {}", svg.display()))?;
    eprintln!(
        "wrote {} and {} ({:?})",
        path.display(),
        svg.display(),
        started.elapsed()
    );
    Ok(path)
}

/// For `cargo xtask test`: the quick bench into a temporary directory, and its report
/// checked for a row with numbers for every mode.
pub fn smoke_test() -> Result<()> {
    if !lb_testkit::privileged_or_skip("bench --quick") {
        return Ok(());
    }
    let out = std::env::temp_dir().join(format!("lb-bench-smoke-{}", std::process::id()));
    let args = BenchArgs {
        quick: true,
        out: Some(out.clone()),
        agent: None,
        services: None,
        changes: None,
        nft_max_services: None,
        control_services: None,
    };
    let res = run(&args).and_then(|p| {
        let md = std::fs::read_to_string(&p)?;
        report::check_complete(&md, &Settings::from_args(&args))?;
        let svg = std::fs::read_to_string(out.join("connect-latency.svg"))?;
        if !svg.contains("<polyline") {
            bail!("the chart has no lines");
        }
        Ok(())
    });
    let _ = std::fs::remove_dir_all(&out);
    res
}
