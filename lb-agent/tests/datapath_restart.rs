//! Restarting the agent must not cost a single connection: the datapath is pinned, a new agent
//! adopts it and swaps its programs in behind the pinned links (BPF_LINK_UPDATE).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use lb_agent::datapath::link_update::{pinned_link_ids, update_pinned_cgroup_link};
use lb_common::program_names;
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
    let links_dir = Path::new("/sys/fs/bpf").join(&sb.id).join("links");
    let ids = |names: &[&str]| -> Result<Vec<(u32, u32, u64)>> {
        names
            .iter()
            .map(|n| pinned_link_ids(&links_dir.join(n)))
            .collect()
    };
    let before = ids(&program_names::ALL)?;

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
    // One pinned link per program after all those restarts, each the same link as at the
    // start (updated in place) on the same cgroup, now running the last agent's program.
    let links = std::fs::read_dir(&links_dir)?.count();
    assert_eq!(links, 8, "one pinned link per socket hook");
    let after = ids(&program_names::ALL)?;
    for ((name, b), a) in program_names::ALL.iter().zip(&before).zip(&after) {
        assert_eq!(
            (a.0, a.2),
            (b.0, b.2),
            "{name}: not the same link on the same cgroup"
        );
        assert_ne!(a.1, b.1, "{name}: still the first agent's program");
    }
    assert!(
        sb.agent_log()
            .contains("replaced the program behind the pinned link in place"),
        "{}",
        sb.agent_log()
    );
    // A link on another cgroup is not updated (the agent attaches anew there instead).
    let other = sb.cgroup.join("elsewhere");
    std::fs::create_dir_all(&other)?;
    let devnull = std::fs::File::open("/dev/null")?;
    let err = update_pinned_cgroup_link(
        &links_dir.join(program_names::CONNECT4),
        &other,
        std::os::fd::AsFd::as_fd(&devnull),
    )
    .expect_err("a link on another cgroup must not be updated");
    std::fs::remove_dir(&other)?;
    assert!(
        format!("{err:#}").contains("is attached to cgroup id"),
        "{err:#}"
    );
    assert_eq!(ids(&[program_names::CONNECT4])?[0], after[0]);
    Ok(())
}
