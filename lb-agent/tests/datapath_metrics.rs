//! /metrics against the real datapath: the per-CPU connection counters the programs keep, the
//! map fill ratios, and the warning when adopted pinned maps differ from the size flags.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use lb_testkit::{POD_PORT, Sandbox, http_get, manifests, privileged_or_skip};

const AGENT: &str = env!("CARGO_BIN_EXE_lb-agent");
const WEB: &str = "10.96.0.10";
const EMPTY: &str = "10.96.0.11";

fn metrics(sb: &Sandbox) -> Result<String> {
    let (code, body) = http_get(sb.health_addr, "/metrics")?;
    if code != 200 {
        bail!("/metrics answered {code}");
    }
    Ok(body)
}

/// The value of the sample whose name and labels are exactly `series`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Waits until `series` has `want` (counters are read from the kernel at scrape time, so
/// this is immediate; the loop only covers the agent's first sync).
fn wait_sample(sb: &Sandbox, series: &str, want: f64) -> Result<()> {
    let start = Instant::now();
    loop {
        let text = metrics(sb)?;
        let got = sample(&text, series);
        if got == Some(want) {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(5) {
            bail!(
                "{series} is {got:?}, want {want}\n{text}\n{}",
                sb.agent_log()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn connections_and_rejects_are_counted_per_service_from_the_datapath() -> Result<()> {
    if !privileged_or_skip("datapath metrics") {
        return Ok(());
    }
    let mut sb = Sandbox::new(Path::new(AGENT), 2)?;
    let pods: Vec<IpAddr> = sb.pods.iter().map(|p| IpAddr::V4(p.ip)).collect();
    sb.write_manifest(
        "web-svc.yaml",
        &manifests::service("web", WEB, 80, POD_PORT),
    )?;
    sb.write_manifest(
        "web-eps.yaml",
        &manifests::endpoint_slice("web-1", "web", POD_PORT, &pods),
    )?;
    sb.write_manifest(
        "empty-svc.yaml",
        &manifests::service("empty", EMPTY, 80, POD_PORT),
    )?;
    sb.start_agent(&[])?;

    const N: u32 = 37;
    const M: u32 = 11;
    let web: SocketAddr = SocketAddr::new(WEB.parse()?, 80);
    let empty: SocketAddr = SocketAddr::new(EMPTY.parse()?, 80);
    let s = sb.probe(web, N, "tcp")?;
    assert_eq!(s.ok, N, "{s:?}");
    let s = sb.probe(empty, M, "tcp")?;
    assert_eq!(s.errors.get("ECONNREFUSED"), Some(&M), "{s:?}");

    let web_conns =
        r#"lb_service_connections_total{service="default/web",frontend="10.96.0.10:80"}"#;
    let web_rejects = r#"lb_service_rejects_total{service="default/web",frontend="10.96.0.10:80"}"#;
    let empty_conns =
        r#"lb_service_connections_total{service="default/empty",frontend="10.96.0.11:80"}"#;
    let empty_rejects =
        r#"lb_service_rejects_total{service="default/empty",frontend="10.96.0.11:80"}"#;
    wait_sample(&sb, web_conns, N.into())?;
    wait_sample(&sb, web_rejects, 0.0)?;
    wait_sample(&sb, empty_conns, 0.0)?;
    wait_sample(&sb, empty_rejects, M.into())?;
    // At the default level the programs log nothing.
    assert!(!sb.agent_log().contains("lb_ebpf"), "{}", sb.agent_log());

    // Fill ratios: 2 frontends + 2 backend slots of 65536 service entries, 2 backends.
    let text = metrics(&sb)?;
    let backends = sample(&text, r#"lb_map_fill_ratio{map="backends"}"#).context("backends")?;
    assert!((backends - 2.0 / 65536.0).abs() < 1e-12, "{text}");
    let services = sample(&text, r#"lb_map_fill_ratio{map="services"}"#).context("services")?;
    assert!((services - 4.0 / 65536.0).abs() < 1e-12, "{text}");
    assert_eq!(
        sample(&text, r#"lb_map_size_mismatch{map="backends"}"#),
        Some(0.0)
    );

    // A new agent with a different --backends-map-size adopts the pinned maps as they are,
    // says a cleanup is needed, and the counters (pinned too) carry on.
    sb.stop_agent(false)?;
    sb.start_agent(&["--backends-map-size", "1024"])?;
    let text = metrics(&sb)?;
    assert_eq!(
        sample(&text, r#"lb_map_size_mismatch{map="backends"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"lb_map_max_entries{map="backends"}"#),
        Some(65536.0)
    );
    let log = sb.agent_log();
    assert!(
        log.contains("lb-agent cleanup") && log.contains("backends"),
        "no cleanup warning in the log:\n{log}"
    );
    let s = sb.probe(web, 3, "tcp")?;
    assert_eq!(s.ok, 3, "{s:?}");
    wait_sample(&sb, web_conns, (N + 3).into())?;
    Ok(())
}

#[test]
fn program_log_lines_reach_the_agent_log_at_debug() -> Result<()> {
    if !privileged_or_skip("datapath log") {
        return Ok(());
    }
    let mut sb = Sandbox::new(Path::new(AGENT), 1)?;
    let pod = IpAddr::V4(sb.pods[0].ip);
    sb.write_manifest(
        "web-svc.yaml",
        &manifests::service("web", WEB, 80, POD_PORT),
    )?;
    sb.write_manifest(
        "web-eps.yaml",
        &manifests::endpoint_slice("web-1", "web", POD_PORT, &[pod]),
    )?;
    sb.write_manifest(
        "empty-svc.yaml",
        &manifests::service("empty", EMPTY, 80, POD_PORT),
    )?;
    sb.start_agent_env(&[], &[("RUST_LOG", "info,lb_ebpf=debug")])?;
    let s = sb.probe(SocketAddr::new(WEB.parse()?, 80), 2, "tcp")?;
    assert_eq!(s.ok, 2, "{s:?}");
    let s = sb.probe(SocketAddr::new(EMPTY.parse()?, 80), 1, "tcp")?;
    assert_eq!(s.errors.get("ECONNREFUSED"), Some(&1), "{s:?}");
    let forwarded = format!("[::ffff:{WEB}]:80 proto 6 -> [::ffff:{pod}]:{POD_PORT}");
    let rejected = format!("[::ffff:{EMPTY}]:80 proto 6 rejected: no usable backend");
    let start = Instant::now();
    loop {
        let log = sb.agent_log();
        let lines = |needle: &str| {
            log.lines()
                .filter(|l| l.contains("lb_ebpf") && l.contains(needle))
                .count()
        };
        if lines(&forwarded) == 2 && lines(&rejected) == 1 {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(5) {
            bail!("want 2 lines with {forwarded:?} and 1 with {rejected:?} in\n{log}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
