//! Restarting the agent must not cost a single connection: the datapath is pinned, a new agent
//! adopts it and attaches beside the old programs before releasing them.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use lb_testkit::{POD_PORT, Sandbox, manifests, privileged_or_skip, wait_probe};

const AGENT: &str = env!("CARGO_BIN_EXE_lb-agent");

#[test]
fn connections_keep_working_while_the_agent_is_killed_and_restarted() -> Result<()> {
    if !privileged_or_skip("agent restart under load") {
        return Ok(());
    }
    let mut sb = Sandbox::new(Path::new(AGENT), 2)?;
    let ips = sb
        .pod_ips()
        .into_iter()
        .map(std::net::IpAddr::V4)
        .collect::<Vec<_>>();
    sb.write_manifest(
        "web.yaml",
        &manifests::service("web", "10.96.0.10", 80, POD_PORT),
    )?;
    sb.write_manifest(
        "web-eps.yaml",
        &manifests::endpoint_slice("web-1", "web", POD_PORT, &ips),
    )?;
    sb.start_agent(&[])?;
    let target: SocketAddr = "10.96.0.10:80".parse()?;

    // About four seconds of connections, one per millisecond, across five restarts
    // (alternately SIGKILL and SIGTERM).
    let probe = sb.spawn_probe(target, 3000, "tcp", 1)?;
    for round in 0..5 {
        std::thread::sleep(Duration::from_millis(300));
        sb.stop_agent(round % 2 == 0)?;
        std::thread::sleep(Duration::from_millis(100));
        sb.start_agent(&[])?;
    }
    let s = wait_probe(probe)?;
    assert_eq!(s.attempts, 3000);
    assert!(
        s.errors.is_empty(),
        "connections failed across restarts: {s:?}\n{}",
        sb.agent_log()
    );
    assert_eq!(s.replies.len(), 2, "{s:?}");
    // One pinned link per program after all those restarts (each new link replaced the old).
    let links = std::fs::read_dir(Path::new("/sys/fs/bpf").join(&sb.id).join("links"))?.count();
    assert_eq!(links, 8, "one pinned link per socket hook");
    Ok(())
}
