//! Per-packet cost of the XDP forward path, measured with BPF_PROG_TEST_RUN and `repeat`:
//! the real program from the embedded object, maps written by the real sync from a NodePort
//! Service with `--services` Services in the maps, and a crafted TCP packet that hits a
//! NodePort and one that misses (another port). Prints one JSON line (ns per packet).
//!
//! The kernel runs the program `repeat` times on the same buffer, which the first run
//! rewrites; so that every run is a hit, the measured Service's one endpoint is the node's own
//! address on the nodePort (a hostNetwork pod): the rewrite changes no byte, and every run
//! takes the path of a packet of a tracked flow (lookup, conntrack hit, backend check,
//! rewrite with checksum updates).
//! Run as root: `cargo run --release -p lb-agent --example xdp_cost -- --services 1000`.

use anyhow::{Context, Result};
use aya::EbpfLoader;
use aya::programs::{TestRun, TestRunOptions, Xdp};
use lb_agent::datapath::{EBPF_OBJECT, kfunc, maps::BpfMaps};
use lb_agent::k8s::{
    Snapshot,
    translate::{NodeContext, translate_for},
};
use lb_agent::sync::{Capacity, Syncer};
use lb_common::{map_names, program_names};
use lb_testkit::packets::{Frame, TCP, build};
use serde_json::json;

const NODE: &str = "192.168.0.5";

const HIT_PORT: u16 = 32_700;

fn snapshot(services: usize) -> Snapshot {
    let mut snap = Snapshot::default();
    let svc = json!({"metadata": {"name": "hit", "namespace": "bench"},
        "spec": {"type": "NodePort", "clusterIP": "10.97.0.1",
                 "ports": [{"name": "http", "port": 80, "nodePort": HIT_PORT}]}});
    let slice = json!({"metadata": {"name": "hit-1", "namespace": "bench",
        "labels": {"kubernetes.io/service-name": "hit"}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": HIT_PORT}],
        "endpoints": [{"addresses": [NODE]}]});
    if let (Ok(s), Ok(e)) = (serde_json::from_value(svc), serde_json::from_value(slice)) {
        snap.services.push(s);
        snap.slices.push(e);
    }
    for i in 0..services {
        let name = format!("svc-{i}");
        let svc = json!({"metadata": {"name": name, "namespace": "bench"},
            "spec": {"type": "NodePort", "clusterIP": format!("10.96.{}.{}", i / 250, i % 250 + 1),
                     "ports": [{"name": "http", "port": 80, "nodePort": 30000 + (i % 2700) as u16}]}});
        let eps: Vec<_> = (0..10)
            .map(|e| json!({"addresses": [format!("10.{}.{}.{}", 100 + i / 62500, (i / 250) % 250, (i % 250) + e)]}))
            .collect();
        let slice = json!({"metadata": {"name": format!("{name}-1"), "namespace": "bench",
            "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}], "endpoints": eps});
        if let (Ok(s), Ok(e)) = (serde_json::from_value(svc), serde_json::from_value(slice)) {
            snap.services.push(s);
            snap.slices.push(e);
        }
    }
    snap
}

fn ns_per_packet(prog: &Xdp, frame: &[u8], repeat: u32) -> Result<(f64, u32)> {
    let mut out = vec![0u8; frame.len() + 256];
    let r = prog.test_run(TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        repeat,
        ..Default::default()
    })?;
    // The kernel reports the mean duration of one run.
    Ok((r.duration.as_nanos() as f64, r.return_value))
}

fn forwarded(ebpf: &aya::Ebpf) -> Result<u64> {
    let map: aya::maps::PerCpuArray<_, u64> =
        aya::maps::PerCpuArray::try_from(ebpf.map(map_names::XDP_STATS).context("stats")?)?;
    Ok(map.get(&lb_common::xdp_stat::FORWARDED, 0)?.iter().sum())
}

fn main() -> Result<()> {
    let mut services = 1000usize;
    let mut repeat = 1_000_000u32;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--services" => services = args.next().context("--services N")?.parse()?,
            "--repeat" => repeat = args.next().context("--repeat N")?.parse()?,
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    // Each NodePort Service has four frontends (ClusterIP, node address in both scopes,
    // 127.0.0.1) with ten backends each.
    let n = services as u32 + 1;
    let cap = Capacity {
        services: (n * 4 * 11).max(1024),
        backends: (n * 10).max(1024),
        rev_nat: (n * 4).max(1024),
        maglev_size: 1021,
        maglev_tables: n.max(16),
        ..Capacity::default()
    };
    let object = kfunc::resolve_for_kernel(EBPF_OBJECT)?;
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(map_names::SERVICES, cap.services)
        .map_max_entries(map_names::BACKENDS, cap.backends)
        .map_max_entries(map_names::REV_NAT, cap.rev_nat)
        .map_max_entries(map_names::MAGLEV, cap.maglev_size * cap.maglev_tables)
        .load(object.bytes())
        .context("loading the object (root?)")?;
    let maps = BpfMaps::from_ebpf(&mut ebpf)?;
    let xdp: &mut Xdp = ebpf
        .program_mut(program_names::XDP_FORWARD)
        .context("xdp program")?
        .try_into()?;
    xdp.load().context("verifier")?;
    let node = NodeContext {
        node_ips: vec![NODE.parse()?],
        ..Default::default()
    };
    let t = translate_for(&snapshot(services), &node);
    let mut syncer = Syncer::new(maps, cap);
    let report = syncer.sync(&t.desired)?;
    anyhow::ensure!(report.failed_writes == 0, "map writes failed");
    anyhow::ensure!(
        report.overflows.is_empty(),
        "maps too small: {:?}",
        report.overflows.first()
    );
    let xdp: &Xdp = ebpf
        .program(program_names::XDP_FORWARD)
        .context("xdp")?
        .try_into()?;
    let hit = build(&Frame::new("203.0.113.50", 40000, NODE, HIT_PORT, TCP));
    let miss = build(&Frame::new("203.0.113.50", 40000, NODE, 29999, TCP));
    let (_, out) = {
        let mut out = vec![0u8; hit.len() + 256];
        let r = xdp.test_run(TestRunOptions {
            data_in: Some(&hit),
            data_out: Some(&mut out),
            ..Default::default()
        })?;
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    };
    anyhow::ensure!(out == hit, "the hit frame must come out as it went in");
    let stats_before = forwarded(&ebpf)?;
    let (hit_ns, _) = ns_per_packet(xdp, &hit, repeat)?;
    let (miss_ns, _) = ns_per_packet(xdp, &miss, repeat)?;
    // Every repeated run of the hit frame was forwarded.
    let hits = forwarded(&ebpf)? - stats_before;
    anyhow::ensure!(
        hits >= u64::from(repeat),
        "only {hits} of {repeat} runs were hits"
    );
    println!(
        "{}",
        json!({"services": services, "repeat": repeat, "hit_ns": hit_ns, "miss_ns": miss_ns})
    );
    Ok(())
}
