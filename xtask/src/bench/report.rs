//! The Markdown report (`latest.md`) and the check that it is complete.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Result, bail};

use super::connect::{ModeRuns, Run, ScaleResult};
use super::control::ControlResult;
use super::stats::{median, median_f};
use super::topology::{MODES, Mode};
use super::{Machine, Settings};

pub struct Results {
    pub machine: Machine,
    pub settings: Settings,
    pub scales: Vec<ScaleResult>,
    pub control: ControlResult,
    pub xdp: super::xdp::XdpResult,
    pub duration: Duration,
}

/// Medians over the rounds of one mode at one Service count.
#[derive(Clone, Copy, Debug, Default)]
pub struct Summary {
    pub p50_us: f64,
    pub p99_us: f64,
    pub rate: f64,
    pub errors: u64,
    pub server_cpu_max: f64,
    pub client_cpu: f64,
    /// (max - min) / median of the per-round p50s.
    pub spread: f64,
}

pub fn summarize(runs: &[Run]) -> Summary {
    let p50s: Vec<u64> = runs.iter().map(|r| r.client.p50_ns).collect();
    let med = median(&p50s) as f64;
    let (lo, hi) = (
        p50s.iter().min().copied().unwrap_or(0) as f64,
        p50s.iter().max().copied().unwrap_or(0) as f64,
    );
    Summary {
        p50_us: med / 1000.0,
        p99_us: median(&runs.iter().map(|r| r.client.p99_ns).collect::<Vec<_>>()) as f64 / 1000.0,
        rate: median_f(&runs.iter().map(|r| r.client.rate()).collect::<Vec<_>>()),
        errors: runs.iter().map(|r| r.client.errors).sum(),
        server_cpu_max: runs.iter().map(|r| r.server_cpu).fold(0.0, f64::max),
        client_cpu: median_f(&runs.iter().map(|r| r.client_cpu).collect::<Vec<_>>()),
        spread: if med > 0.0 { (hi - lo) / med } else { 0.0 },
    }
}

const NOT_MEASURED: &str = "not measured (nft -f too slow, see below)";

fn skipped(sc: &ScaleResult, mode: Mode) -> bool {
    sc.nft_skipped && mode == Mode::Nftables
}

fn tcp(m: &ModeRuns) -> Summary {
    summarize(&m.tcp)
}

fn udp(m: &ModeRuns) -> Summary {
    summarize(&m.udp)
}

fn ratio(x: f64, base: f64) -> String {
    if base > 0.0 {
        format!("{:.2}x", x / base)
    } else {
        "n/a".into()
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
}

fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

pub fn markdown(r: &Results) -> String {
    let s = &r.settings;
    let m = &r.machine;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "# lb benchmark: socket LB vs kube-proxy iptables and nftables{}\n",
        if s.quick { " (quick)" } else { "" }
    );
    let _ = writeln!(
        o,
        "Machine: Linux {}, {} CPUs ({}), {} GiB RAM. Run: {} (took {:.0} s). Load average before {}, after {}. {}; {}.\n",
        m.kernel,
        m.cpus,
        m.cpu_model,
        m.memory_gib,
        m.date,
        r.duration.as_secs_f64(),
        m.load_before,
        m.load_after,
        m.iptables,
        m.nft
    );
    let _ = writeln!(
        o,
        "Setup: every client runs in its own network namespace (one per mode, rebuilt for every \
         Service count) joined by a veth to one \"pod\" namespace; the client is pinned to CPU 0, \
         the server thread to CPU 1. Each Service count loads the same Service set into every \
         mode: {} ClusterIP Services x {} endpoints; the target Service sits in the middle of the \
         list (kube-proxy's KUBE-SERVICES chain is walked in order) and has the pod's two \
         addresses as endpoints. Modes run in turn, {} rounds, the order rotating each round; \
         figures are medians over the rounds. Artefacts avoided: the server closes first (its \
         side keeps TIME_WAIT); `net.ipv4.ip_local_port_range = 1024 65000` in every client \
         namespace; each mode has its own source address and its own pod port per Service count, \
         so no 4-tuple is ever reused across modes; netfilter exists only in the iptables and \
         nftables namespaces, so direct and socket-LB connections are not conntracked (as on a \
         node without kube-proxy). The socket-LB client runs in the cgroup the real agent \
         (`lb-agent run --manifests`) attached its programs to.\n",
        s.scales
            .iter()
            .map(|n| thousands(*n))
            .collect::<Vec<_>>()
            .join(" / "),
        s.endpoints,
        s.rounds
    );

    let _ = writeln!(o, "## Connection path: new TCP connections\n");
    let _ = writeln!(
        o,
        "One connection at a time: blocking `connect()` (timed), read one byte, close; {} \
         measured connections per run after {} warm-up ones. Ratios are to the direct mode at \
         the same Service count.\n",
        s.conns, s.warmup
    );
    let _ = writeln!(
        o,
        "| Services | Mode | connect p50 (µs) | p50 ratio | connect p99 (µs) | p99 ratio | conns/s | conns/s ratio | errors |"
    );
    let _ = writeln!(
        o,
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for sc in &r.scales {
        let base = tcp(&sc.modes[Mode::Direct.index()]);
        for mode in MODES {
            if skipped(sc, mode) {
                let _ = writeln!(
                    o,
                    "| {} | {} | {NOT_MEASURED} | | | | | | |",
                    thousands(sc.services),
                    mode.label()
                );
                continue;
            }
            let t = tcp(&sc.modes[mode.index()]);
            let _ = writeln!(
                o,
                "| {} | {} | {:.1} | {} | {:.1} | {} | {:.0} | {} | {} |",
                thousands(sc.services),
                mode.label(),
                t.p50_us,
                ratio(t.p50_us, base.p50_us),
                t.p99_us,
                ratio(t.p99_us, base.p99_us),
                t.rate,
                ratio(t.rate, base.rate),
                t.errors
            );
        }
    }

    let _ = writeln!(o, "\n## UDP request/response through a ClusterIP\n");
    let _ = writeln!(
        o,
        "One unconnected socket: `sendto()` the ClusterIP (or the pod), wait for the echo; {} \
         requests per run, {} rounds. The socket LB rewrites every `sendmsg` and `recvmsg`; \
         iptables and nftables translate the first packet and conntrack the rest of the flow.\n",
        s.udp_reqs, s.udp_rounds
    );
    let _ = writeln!(
        o,
        "| Services | Mode | requests/s | ratio | round trip p50 (µs) | p99 (µs) | errors |"
    );
    let _ = writeln!(o, "| ---: | --- | ---: | ---: | ---: | ---: | ---: |");
    for sc in &r.scales {
        let base = udp(&sc.modes[Mode::Direct.index()]);
        for mode in MODES {
            if skipped(sc, mode) {
                let _ = writeln!(
                    o,
                    "| {} | {} | {NOT_MEASURED} | | | | |",
                    thousands(sc.services),
                    mode.label()
                );
                continue;
            }
            let u = udp(&sc.modes[mode.index()]);
            let _ = writeln!(
                o,
                "| {} | {} | {:.0} | {} | {:.1} | {:.1} | {} |",
                thousands(sc.services),
                mode.label(),
                u.rate,
                ratio(u.rate, base.rate),
                u.p50_us,
                u.p99_us,
                u.errors
            );
        }
    }

    let _ = writeln!(o, "\n## Cost of the socket hooks alone\n");
    let _ = writeln!(
        o,
        "`run_time_ns / run_cnt` of the attached programs (BPF_ENABLE_STATS, on only for one \
         extra run), independent of the network stack.\n"
    );
    let _ = writeln!(
        o,
        "| Services | connect4 (ns/call) | sendmsg4 (ns/call) | recvmsg4 (ns/call) |"
    );
    let _ = writeln!(o, "| ---: | ---: | ---: | ---: |");
    for sc in &r.scales {
        let _ = writeln!(
            o,
            "| {} | {:.0} | {:.0} | {:.0} |",
            thousands(sc.services),
            sc.hook.connect4_ns,
            sc.hook.sendmsg4_ns,
            sc.hook.recvmsg4_ns
        );
    }

    let _ = writeln!(o, "\n## Loading each Service count\n");
    let _ = writeln!(
        o,
        "| Services | endpoints | lb agent start to /readyz | agent RSS | iptables-restore | iptables rules | nft -f | nft rules + elements |"
    );
    let _ = writeln!(
        o,
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for sc in &r.scales {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            thousands(sc.services),
            thousands(sc.endpoints),
            ms(sc.agent_ready),
            mib(sc.agent_rss),
            ms(sc.iptables_load),
            thousands(sc.iptables_rules),
            if sc.nft_skipped {
                format!("skipped (> {} Services)", thousands(s.nft_max_services))
            } else {
                ms(sc.nft_load)
            },
            thousands(sc.nft_rules)
        );
    }
    if r.scales.iter().any(|sc| sc.nft_skipped) {
        let loaded: Vec<String> = r
            .scales
            .iter()
            .filter(|sc| !sc.nft_skipped && sc.services >= 100)
            .map(|sc| {
                format!(
                    "{} at {} Services",
                    secs(sc.nft_load),
                    thousands(sc.services)
                )
            })
            .collect();
        let _ = writeln!(
            o,
            "\n{NOT_MEASURED}: `nft -f` of kube-proxy's nftables ruleset costs kernel time that \
             grows with the square of the number of service ports (each has its own anonymous \
             `numgen random mod n vmap`; a trial without those rules loaded 10 000 Services in \
             about 2 s instead of 45): {} here, so tens of minutes at 50 000, beyond this \
             bench's budget. \
             The nftables mode is loaded up to `--nft-max-services` = {} (raise it to measure \
             more). kube-proxy pays this on a full sync (start, restart); later syncs are \
             incremental.",
            if loaded.is_empty() {
                "n/a".to_string()
            } else {
                loaded.join(", ")
            },
            thousands(s.nft_max_services)
        );
    }

    let c = &r.control;
    let _ = writeln!(
        o,
        "\n## Control plane: {} Services x {} endpoints\n",
        thousands(c.services),
        c.endpoints_per_service
    );
    let _ = writeln!(
        o,
        "| Measure | lb agent | kube-proxy iptables | kube-proxy nftables |"
    );
    let _ = writeln!(o, "| --- | ---: | ---: | ---: |");
    let _ = writeln!(
        o,
        "| start to ready (agent: spawn to /readyz; baselines: the full ruleset loaded) | {} | {} (iptables-restore, {} rules) | {} (nft -f, {} rules + elements) |",
        secs(c.ready),
        secs(c.iptables_restore),
        thousands(c.iptables_rules),
        secs(c.nft_load),
        thousands(c.nft_rules)
    );
    let _ = writeln!(
        o,
        "| one EndpointSlice edit, p50 / p99 (agent: file write to the map, {} edits; baselines: applying kube-proxy's update, {} edits) | {} / {} | {} / {} (`iptables-restore --noflush`, partial sync) | {} / {} (`nft -f`, incremental) |",
        c.changes,
        c.baseline_changes,
        ms(c.change_p50),
        ms(c.change_p99),
        ms(c.iptables_change.0),
        ms(c.iptables_change.1),
        ms(c.nft_change.0),
        ms(c.nft_change.1)
    );
    let _ = writeln!(o, "| agent RSS | {} | | |", mib(c.rss));
    let _ = writeln!(
        o,
        "\nThe agent's edit is timed from the file write to the moment the pinned service map \
         (read with bpf(2)) shows the new backend count (max {}). With `--manifests` the agent \
         polls the directory every 200 ms and, on a change, re-reads and re-parses every file \
         (here all Services at once), then translates and diffs the whole state; its mean sync \
         (`lb_sync_duration_seconds`: translate, diff, map writes) was {}, the rest is the poll \
         and the re-read. The baselines' edit times are only the rule update kube-proxy would \
         apply (it also waits for its sync period and computes the update), so they are a \
         lower bound.\n",
        ms(c.change_max),
        c.mean_sync.map_or("n/a".to_string(), ms)
    );

    xdp_section(&mut o, &r.xdp);

    let _ = writeln!(o, "\n## Memory\n");
    let _ = writeln!(
        o,
        "The hash maps are preallocated, so their kernel memory (`bpftool map show`, \
         bytes_memlock) is fixed by their capacity; per entry it is memlock / max_entries \
         (key, value and the kernel's element header).\n"
    );
    let _ = writeln!(
        o,
        "| Map | max entries | memlock | key + value bytes | bytes per entry |"
    );
    let _ = writeln!(o, "| --- | ---: | ---: | ---: | ---: |");
    for mi in &c.maps {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {:.0} |",
            mi.name,
            thousands(mi.max_entries as usize),
            mib(mi.memlock),
            mi.entry_bytes,
            mi.per_entry()
        );
    }
    let per = |n: &str| {
        c.maps
            .iter()
            .find(|m| m.name == n)
            .map_or(0.0, |m| m.per_entry())
    };
    let (svc, be, rev) = (per("LB_SERVICES"), per("LB_BACKENDS"), per("LB_REV_NAT"));
    let _ = writeln!(
        o,
        "\nPer Service port: {:.0} bytes (one LB_SERVICES slot 0 + one LB_REV_NAT entry). Per \
         backend: {:.0} bytes (one LB_SERVICES slot + one LB_BACKENDS entry). Agent RSS with \
         {} Services x {} endpoints: {}.\n",
        svc + rev,
        svc + be,
        thousands(c.services),
        c.endpoints_per_service,
        mib(c.rss)
    );

    let _ = writeln!(o, "## Are the client and the server the bottleneck?\n");
    let all: Vec<Summary> = r
        .scales
        .iter()
        .flat_map(|sc| sc.modes.iter().filter(|m| !m.tcp.is_empty()).map(tcp))
        .collect();
    let server_max = all.iter().map(|x| x.server_cpu_max).fold(0.0, f64::max);
    let _ = writeln!(
        o,
        "The server thread (pinned to its own CPU) used at most {:.0}% of that CPU in any TCP \
         run, so it was never saturated and answered each SYN as it came. The client opens one \
         connection at a time, so conns/s is 1 / (time per connection): it measures latency, \
         not the capacity of a node; the client used a median {:.0}% of its CPU, most of it in \
         the kernel's connect path, which is what is measured.\n",
        server_max * 100.0,
        median_f(&all.iter().map(|x| x.client_cpu).collect::<Vec<_>>()) * 100.0
    );
    let _ = writeln!(o, "## Noise\n");
    let _ = writeln!(
        o,
        "Spread of the per-round connect p50 ((max - min) / median) per Service count and mode; \
         the machine was shared with other work, so single rounds vary more than medians.\n"
    );
    let _ = writeln!(o, "| Services | {} |", MODES.map(|m| m.label()).join(" | "));
    let _ = writeln!(o, "| ---: |{}", " ---: |".repeat(MODES.len()));
    for sc in &r.scales {
        let cells: Vec<String> = MODES
            .iter()
            .map(|m| {
                if skipped(sc, *m) {
                    "n/a".to_string()
                } else {
                    format!("{:.0}%", tcp(&sc.modes[m.index()]).spread * 100.0)
                }
            })
            .collect();
        let _ = writeln!(o, "| {} | {} |", thousands(sc.services), cells.join(" | "));
    }
    let _ = writeln!(o, "\n![connect latency](connect-latency.svg)");
    o
}

fn numeric(cell: &str) -> bool {
    let c = cell.trim().trim_end_matches('x').replace(' ', "");
    !c.is_empty() && c.parse::<f64>().is_ok_and(f64::is_finite)
}

/// Every mode has a TCP and a UDP row with numbers in every cell, for every Service count;
/// the control-plane and XDP rows are there.
fn xdp_section(o: &mut String, x: &super::xdp::XdpResult) {
    let _ = writeln!(o, "## XDP (NodePort from outside the node)\n");
    let _ = writeln!(
        o,
        "Per packet: BPF_PROG_TEST_RUN of `lb_xdp_forward` with `repeat`, the maps holding that \
         many NodePort Services x 10 endpoints (each with a Maglev table). A hit is a packet of \
         a tracked flow (lookup, conntrack hit, backend check, rewrite with checksum updates); \
         a miss is a packet to a port no Service has.\n"
    );
    let _ = writeln!(
        o,
        "| Services | NodePort hit (ns/packet) | miss (ns/packet) |"
    );
    let _ = writeln!(o, "| ---: | ---: | ---: |");
    for p in &x.per_packet {
        let _ = writeln!(
            o,
            "| {} | {:.0} | {:.0} |",
            thousands(p.services),
            p.hit_ns,
            p.miss_ns
        );
    }
    let _ = writeln!(
        o,
        "\nPackets per second from an outside client namespace through the node to one pod \
         (UDP, {} requests in flight, {:.0} s per run, median of {} runs; each pair in a fresh \
         node namespace; XDP runs on the node's veth towards the client):\n",
        super::xdp::WINDOW,
        x.seconds,
        x.rounds
    );
    let _ = writeln!(
        o,
        "| Path | answers/s | ratio to the pod IP on the same node |"
    );
    let _ = writeln!(o, "| --- | ---: | ---: |");
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let _ = writeln!(
        o,
        "| pod IP, routed by the node (floor, XDP node) | {:.0} | 1.00x |",
        x.pps_direct_xdp_box
    );
    let _ = writeln!(
        o,
        "| NodePort, lb XDP path | {:.0} | {:.2}x |",
        x.pps_xdp,
        ratio(x.pps_xdp, x.pps_direct_xdp_box)
    );
    let _ = writeln!(
        o,
        "| pod IP, routed by the node (floor, iptables node) | {:.0} | 1.00x |",
        x.pps_direct_iptables_box
    );
    let _ = writeln!(
        o,
        "| NodePort, kube-proxy iptables DNAT | {:.0} | {:.2}x |",
        x.pps_iptables,
        ratio(x.pps_iptables, x.pps_direct_iptables_box)
    );
}

pub fn check_complete(md: &str, s: &Settings) -> Result<()> {
    for section in ["## Connection path", "## UDP request/response"] {
        let body = md
            .split(section)
            .nth(1)
            .and_then(|b| b.split("\n## ").next())
            .unwrap_or_default();
        for n in &s.scales {
            for mode in MODES {
                let prefix = format!("| {} | {} |", thousands(*n), mode.label());
                let Some(row) = body.lines().find(|l| l.starts_with(&prefix)) else {
                    bail!("{section}: no row for {} at {n} Services", mode.label());
                };
                if mode == Mode::Nftables && *n > s.nft_max_services && row.contains(NOT_MEASURED) {
                    continue;
                }
                let cells: Vec<&str> = row.trim_matches('|').split('|').skip(2).collect();
                if cells.is_empty() || !cells.iter().all(|c| numeric(c)) {
                    bail!("{section}: row without numbers: {row}");
                }
            }
        }
    }
    for needle in [
        "| start to ready",
        "| one EndpointSlice edit",
        "| NodePort hit (ns/packet) |",
        "| NodePort, lb XDP path |",
        "| NodePort, kube-proxy iptables DNAT |",
        "Per Service port:",
        "| LB_SERVICES |",
    ] {
        if !md.contains(needle) {
            bail!("the report lacks {needle:?}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::client::ClientResult;
    use crate::bench::connect::HookCost;

    fn run(p50: u64) -> Run {
        Run {
            client: ClientResult {
                ok: 100,
                elapsed_ns: 10_000_000,
                p50_ns: p50,
                p99_ns: p50 * 3,
                cpu_ns: 5_000_000,
                ..Default::default()
            },
            server_cpu: 0.2,
            client_cpu: 0.5,
        }
    }

    fn results() -> Results {
        let settings = Settings {
            quick: true,
            scales: vec![1, 1000],
            endpoints: 2,
            rounds: 2,
            conns: 100,
            udp_rounds: 1,
            udp_reqs: 100,
            warmup: 10,
            cp_services: 1000,
            cp_endpoints: 10,
            changes: 3,
            baseline_changes: 3,
            nft_max_services: 10_000,
        };
        let scales = settings
            .scales
            .iter()
            .map(|n| ScaleResult {
                services: *n,
                endpoints: n * 2,
                modes: MODES
                    .iter()
                    .map(|m| ModeRuns {
                        tcp: vec![run(30_000 + m.index() as u64 * 1000); 2],
                        udp: vec![run(20_000)],
                    })
                    .collect(),
                hook: HookCost {
                    connect4_ns: 300.0,
                    ..Default::default()
                },
                ..Default::default()
            })
            .collect();
        Results {
            machine: Machine::default(),
            settings,
            scales,
            control: ControlResult {
                maps: vec![super::super::agent::MapInfo {
                    name: "LB_SERVICES".into(),
                    max_entries: 100,
                    memlock: 10_000,
                    entry_bytes: 40,
                }],
                ..Default::default()
            },
            xdp: super::super::xdp::XdpResult {
                per_packet: vec![super::super::xdp::PerPacket {
                    services: 1000,
                    hit_ns: 300.0,
                    miss_ns: 150.0,
                }],
                pps_direct_xdp_box: 50_000.0,
                pps_xdp: 45_000.0,
                pps_direct_iptables_box: 50_000.0,
                pps_iptables: 40_000.0,
                rounds: 1,
                seconds: 1.0,
            },
            duration: Duration::from_secs(1),
        }
    }

    #[test]
    fn a_full_report_passes_the_check() {
        let r = results();
        let md = markdown(&r);
        check_complete(&md, &r.settings).unwrap();
        assert!(
            md.contains("| 1 000 | kube-proxy iptables | 32.0 | 1.07x |"),
            "{md}"
        );
        assert!(md.contains("| 1 000 | 300 | 150 |"), "{md}");
        assert!(
            md.contains("| NodePort, lb XDP path | 45000 | 0.90x |"),
            "{md}"
        );
    }

    #[test]
    fn a_missing_mode_fails_the_check() {
        let r = results();
        let md = markdown(&r).replace("| 1 000 | kube-proxy nftables |", "| 1 000 | gone |");
        assert!(check_complete(&md, &r.settings).is_err());
        let md = markdown(&r).replace("| 1 | lb socket LB | 31.0", "| 1 | lb socket LB | -");
        assert!(check_complete(&md, &r.settings).is_err());
    }
}
