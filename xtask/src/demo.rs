//! `cargo xtask demo`: the main job on a sandbox. Builds everything, starts the real agent on
//! an isolated client namespace and three "pod" namespaces, sends connections through a
//! ClusterIP and prints how they were spread; then scales the Service down and empties it.

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use anyhow::{Result, bail};
use lb_testkit::{POD_PORT, ProbeSummary, Sandbox, manifests};

use crate::{build_ebpf, run as run_cmd, workspace_root};

const VIP: &str = "10.96.0.10";

fn show(title: &str, s: &ProbeSummary) {
    println!("\n{title}");
    println!(
        "  {} connections to {VIP}:80, {} answered",
        s.attempts, s.ok
    );
    for (pod, n) in &s.replies {
        let bar = "#".repeat((*n as usize * 40).div_ceil(s.attempts.max(1) as usize));
        println!("  {pod:<8} {n:>4}  {bar}");
    }
    for (err, n) in &s.errors {
        println!("  {err:<12} {n:>4}");
    }
}

pub fn run() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the demo creates namespaces and attaches BPF programs: run it as root");
    }
    build_ebpf(true)?;
    let root = workspace_root();
    run_cmd(
        Command::new("cargo")
            .current_dir(&root)
            .args(["build", "-p", "lb-agent"]),
    )?;
    let agent = root.join("target/debug/lb-agent");

    let mut sb = Sandbox::new(&agent, 3)?;
    let ips: Vec<IpAddr> = sb.pod_ips().into_iter().map(IpAddr::V4).collect();
    sb.write_manifest("web.yaml", &manifests::service("web", VIP, 80, POD_PORT))?;
    sb.write_manifest(
        "web-eps.yaml",
        &manifests::endpoint_slice("web-1", "web", POD_PORT, &ips),
    )?;
    println!(
        "sandbox {}: client netns {}, pods {:?}",
        sb.id,
        sb.client_netns,
        sb.pod_ips()
    );
    println!("Service default/web: ClusterIP {VIP}:80 -> pods :{POD_PORT}");
    sb.start_agent(&[])?;
    println!("\nagent ready; the maps as `lb-agent inspect` shows them:\n");
    print!("{}", sb.agent_cmd(&["inspect"])?);

    let target = SocketAddr::new(VIP.parse()?, 80);
    show("3 endpoints:", &sb.probe(target, 300, "tcp")?);

    sb.write_manifest(
        "web-eps.yaml",
        &manifests::endpoint_slice("web-1", "web", POD_PORT, &ips[..2]),
    )?;
    std::thread::sleep(Duration::from_millis(600));
    show(
        "EndpointSlice edited to 2 endpoints:",
        &sb.probe(target, 200, "tcp")?,
    );

    sb.write_manifest(
        "web-eps.yaml",
        &manifests::endpoint_slice("web-1", "web", POD_PORT, &[]),
    )?;
    std::thread::sleep(Duration::from_millis(600));
    show(
        "no endpoints (connect() is refused at once, like kube-proxy's REJECT):",
        &sb.probe(target, 10, "tcp")?,
    );

    println!("\ndone; the sandbox is removed.");
    Ok(())
}
