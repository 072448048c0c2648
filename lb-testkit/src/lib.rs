//! Sandboxes for datapath tests, the demo and the benchmark: a client network namespace with
//! no route off the machine, "pod" namespaces behind veths with 10.244.x.x addresses, a
//! throwaway cgroup v2 directory, and the real agent binary run against them.
//!
//! Network safety: the client namespace has routes only to the pod subnets it was given, so a
//! connect to a ClusterIP that the datapath fails to rewrite ends in ENETUNREACH inside the
//! sandbox; nothing can leave the machine. Everything is removed on drop, also when a test
//! panics, and sandboxes left by killed runs (their pid no longer alive) are swept on start.

pub mod manifests;
pub mod netns;
pub mod packets;
pub mod server;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub use server::PodServer;

/// Port every pod serves on (TCP and UDP).
pub const POD_PORT: u16 = 8080;
/// Port every pod serves long-lived TCP connections on (answers each read, never closes).
pub const POD_HOLD_PORT: u16 = POD_PORT + 1;

/// Only one sandbox at a time per process: tests that assert on convergence must not compete
/// with each other for the machine's two cores.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Whether this process may run privileged datapath tests. Without root they are skipped
/// locally but fail under CI=true, so CI can never pass by skipping them.
pub fn privileged_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "{test} needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN) and CI=true: refusing to skip"
        );
    }
    eprintln!("skipping {test}: needs root");
    false
}

/// The root of the cgroup v2 mount, from /proc/mounts.
pub fn cgroup2_root() -> Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts")?;
    mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && f[2] == "cgroup2").then(|| PathBuf::from(f[1]))
        })
        .context("no cgroup2 mount in /proc/mounts")
}

pub struct Pod {
    pub name: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    /// `fd00:244:<i>::2`
    pub ip6: std::net::Ipv6Addr,
    pub server: PodServer,
}

pub struct Sandbox {
    pub id: String,
    pub client_netns: String,
    pub pods: Vec<Pod>,
    pub cgroup: PathBuf,
    pub manifests: PathBuf,
    pub workdir: PathBuf,
    pub agent_bin: PathBuf,
    pub health_addr: SocketAddr,
    agent: Option<Child>,
    /// The namespace the agent runs in (None: the machine's own).
    agent_netns: Option<String>,
    /// An "outside" client namespace behind the node's `ext0`, once [`Sandbox::add_outside`]
    /// made it.
    pub outside_netns: Option<String>,
    /// Namespaces made by [`Sandbox::add_pod_client`] and [`Sandbox::add_remote_node`],
    /// removed on drop.
    extra_netns: Vec<String>,
    /// Pods on the "other node" [`Sandbox::add_remote_node`] made.
    pub remote_pods: Vec<Pod>,
    _serial: MutexGuard<'static, ()>,
}

/// The link [`Sandbox::add_remote_node`] makes.
pub mod remote {
    /// This node's interface towards node 2 (where replies of SNATed flows arrive).
    pub const LINK_IFACE: &str = "node2";
}

/// Addresses of the outside network [`Sandbox::add_outside`] makes.
pub mod outside {
    /// The node's address on `ext0`, facing the outside client.
    pub const NODE_IP: &str = "10.99.0.1";
    /// The outside client's address.
    pub const CLIENT_IP: &str = "10.99.0.2";
    /// The node's interface towards the outside.
    pub const NODE_IFACE: &str = "ext0";
    /// Ranges the outside client routes via the node (LoadBalancer and external IPs of tests).
    pub const ROUTED_VIA_NODE: [&str; 3] = ["192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"];
}

fn sandbox_prefix(pid: u32) -> String {
    format!("lbt{pid}x")
}

/// Removes namespaces, cgroups and pins of sandboxes whose process is gone.
fn sweep_stale(cgroup_root: &Path) {
    let dead = |name: &str| -> bool {
        let Some(rest) = name.strip_prefix("lbt") else {
            return false;
        };
        let Some(pid) = rest.split('x').next().and_then(|p| p.parse::<u32>().ok()) else {
            return false;
        };
        !Path::new(&format!("/proc/{pid}")).exists()
    };
    for ns in netns::list() {
        if dead(&ns) {
            let _ = netns::delete(&ns);
        }
    }
    for dir in [cgroup_root.to_path_buf(), PathBuf::from("/sys/fs/bpf")] {
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if dead(&name) {
                    let _ = if dir.starts_with("/sys/fs/bpf") {
                        std::fs::remove_dir_all(e.path())
                    } else {
                        kill_cgroup(&e.path());
                        std::fs::remove_dir(e.path())
                    };
                }
            }
        }
    }
}

fn kill_cgroup(cg: &Path) {
    if let Ok(procs) = std::fs::read_to_string(cg.join("cgroup.procs")) {
        for pid in procs.lines().filter_map(|p| p.parse::<i32>().ok()) {
            // SAFETY: sending a signal has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

fn free_local_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Sandbox {
    /// A client namespace and `pods` pod namespaces, each pod serving its name on POD_PORT.
    pub fn new(agent_bin: &Path, pods: usize) -> Result<Self> {
        let serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        let cgroup_root = cgroup2_root()?;
        sweep_stale(&cgroup_root);
        let id = format!(
            "{}{}",
            sandbox_prefix(std::process::id()),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let workdir = std::env::temp_dir().join(&id);
        let manifests = workdir.join("manifests");
        std::fs::create_dir_all(&manifests)?;
        let cgroup = cgroup_root.join(&id);
        let mut sb = Sandbox {
            client_netns: format!("{id}-c"),
            id,
            pods: Vec::new(),
            cgroup,
            manifests,
            workdir,
            agent_bin: agent_bin.to_path_buf(),
            health_addr: SocketAddr::from(([127, 0, 0, 1], free_local_port()?)),
            agent: None,
            agent_netns: None,
            outside_netns: None,
            extra_netns: Vec::new(),
            remote_pods: Vec::new(),
            _serial: serial,
        };
        // From here on Drop cleans up whatever was made.
        std::fs::create_dir(&sb.cgroup)
            .with_context(|| format!("creating {}", sb.cgroup.display()))?;
        netns::create(&sb.client_netns)?;
        netns::ip(&sb.client_netns, &["link", "set", "lo", "up"])?;
        // A wide ephemeral range, as a busy client node has.
        netns::sysctl(
            &sb.client_netns,
            "net/ipv4/ip_local_port_range",
            "1024 65000",
        )?;
        for i in 1..=pods {
            sb.add_pod(i)?;
        }
        Ok(sb)
    }

    fn add_pod(&mut self, i: usize) -> Result<()> {
        let name = format!("pod-{i}");
        let ns = format!("{}-p{i}", self.id);
        let ip = Ipv4Addr::new(10, 244, i as u8, 2);
        let gw = format!("10.244.{i}.1");
        netns::create(&ns)?;
        let host_if = format!("p{i}");
        netns::veth(&self.client_netns, &host_if, &ns, "eth0")?;
        netns::ip(
            &self.client_netns,
            &["addr", "add", &format!("{gw}/24"), "dev", &host_if],
        )?;
        netns::ip(&self.client_netns, &["link", "set", &host_if, "up"])?;
        netns::ip(&ns, &["link", "set", "lo", "up"])?;
        netns::ip(&ns, &["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        netns::ip(&ns, &["link", "set", "eth0", "up"])?;
        netns::ip(&ns, &["route", "add", "default", "via", &gw])?;
        // IPv6 beside IPv4 (nodad: usable at once).
        let ip6: std::net::Ipv6Addr = format!("fd00:244:{i}::2").parse()?;
        let gw6 = format!("fd00:244:{i}::1");
        netns::ip(
            &self.client_netns,
            &[
                "addr",
                "add",
                &format!("{gw6}/64"),
                "dev",
                &host_if,
                "nodad",
            ],
        )?;
        netns::ip(
            &ns,
            &["addr", "add", &format!("{ip6}/64"), "dev", "eth0", "nodad"],
        )?;
        netns::ip(&ns, &["-6", "route", "add", "default", "via", &gw6])?;
        let server = PodServer::start(&ns, &name, POD_PORT)?;
        self.pods.push(Pod {
            name,
            netns: ns,
            ip,
            ip6,
            server,
        });
        Ok(())
    }

    pub fn pod_ips(&self) -> Vec<Ipv4Addr> {
        self.pods.iter().map(|p| p.ip).collect()
    }

    /// Writes a manifest file atomically (the agent never sees half a file).
    pub fn write_manifest(&self, name: &str, text: &str) -> Result<()> {
        let tmp = self.manifests.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, self.manifests.join(name))?;
        Ok(())
    }

    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(self.workdir.join("agent.log")).unwrap_or_default()
    }

    /// An outside client namespace connected to the node (the client namespace) by a veth
    /// (`ext0` on the node, 10.99.0.1/24; the client 10.99.0.2/24), routing the test
    /// LoadBalancer/external IP ranges via the node, which forwards to the pods. Its packets
    /// carry full checksums (transmit checksum offload off), as packets from a wire do.
    pub fn add_outside(&mut self) -> Result<()> {
        let ns = format!("{}-o", self.id);
        netns::create(&ns)?;
        self.outside_netns = Some(ns.clone());
        netns::veth(&self.client_netns, outside::NODE_IFACE, &ns, "eth0")?;
        let node = &self.client_netns;
        netns::ip(
            node,
            &[
                "addr",
                "add",
                &format!("{}/24", outside::NODE_IP),
                "dev",
                outside::NODE_IFACE,
            ],
        )?;
        netns::ip(node, &["link", "set", outside::NODE_IFACE, "up"])?;
        netns::sysctl(node, "net/ipv4/ip_forward", "1")?;
        netns::ip(&ns, &["link", "set", "lo", "up"])?;
        netns::ip(
            &ns,
            &[
                "addr",
                "add",
                &format!("{}/24", outside::CLIENT_IP),
                "dev",
                "eth0",
            ],
        )?;
        netns::ip(&ns, &["link", "set", "eth0", "up"])?;
        for range in outside::ROUTED_VIA_NODE {
            netns::ip(&ns, &["route", "add", range, "via", outside::NODE_IP])?;
        }
        netns::set_tx_checksum(&ns, "eth0", false)?;
        Ok(())
    }

    /// A second node (`<id>-n2`) linked to this one (the client namespace, via `node2`,
    /// 10.98.0.1/24 here and 10.98.0.2/24 there) with one pod of its own, `pod-remote`
    /// (10.245.9.2 serving on POD_PORT, routed via node 2). Node 2 routes everything else back
    /// via this node, so replies to this node's addresses arrive on `node2`.
    pub fn add_remote_node(&mut self) -> Result<()> {
        let node2 = format!("{}-n2", self.id);
        let pod_ns = format!("{}-r1", self.id);
        for ns in [&node2, &pod_ns] {
            netns::create(ns)?;
            self.extra_netns.push(ns.clone());
        }
        let here = &self.client_netns;
        netns::veth(here, remote::LINK_IFACE, &node2, "eth0")?;
        netns::ip(
            here,
            &["addr", "add", "10.98.0.1/24", "dev", remote::LINK_IFACE],
        )?;
        netns::ip(here, &["link", "set", remote::LINK_IFACE, "up"])?;
        netns::ip(here, &["route", "add", "10.245.9.0/24", "via", "10.98.0.2"])?;
        netns::sysctl(here, "net/ipv4/ip_forward", "1")?;
        netns::ip(&node2, &["link", "set", "lo", "up"])?;
        netns::ip(&node2, &["addr", "add", "10.98.0.2/24", "dev", "eth0"])?;
        netns::ip(&node2, &["link", "set", "eth0", "up"])?;
        netns::ip(&node2, &["route", "add", "default", "via", "10.98.0.1"])?;
        netns::sysctl(&node2, "net/ipv4/ip_forward", "1")?;
        netns::veth(&node2, "p1", &pod_ns, "eth0")?;
        netns::ip(&node2, &["addr", "add", "10.245.9.1/24", "dev", "p1"])?;
        netns::ip(&node2, &["link", "set", "p1", "up"])?;
        netns::ip(&pod_ns, &["link", "set", "lo", "up"])?;
        netns::ip(&pod_ns, &["addr", "add", "10.245.9.2/24", "dev", "eth0"])?;
        netns::ip(&pod_ns, &["link", "set", "eth0", "up"])?;
        netns::ip(&pod_ns, &["route", "add", "default", "via", "10.245.9.1"])?;
        let server = PodServer::start(&pod_ns, "pod-remote", POD_PORT)?;
        self.remote_pods.push(Pod {
            name: "pod-remote".into(),
            netns: pod_ns,
            ip: Ipv4Addr::new(10, 245, 9, 2),
            ip6: std::net::Ipv6Addr::UNSPECIFIED,
            server,
        });
        Ok(())
    }

    /// A command that runs as an outside client: in the outside namespace, not in the sandbox
    /// cgroup (so only the XDP path can translate its traffic).
    pub fn outside_command(&self, program: &Path) -> Result<Command> {
        let ns = self
            .outside_netns
            .as_deref()
            .context("no outside namespace: call add_outside first")?;
        self.command_in_ns(ns, false, program)
    }

    /// `lb-agent probe` from the outside client.
    pub fn probe_outside(
        &self,
        target: SocketAddr,
        count: u32,
        proto: &str,
        timeout_ms: u32,
    ) -> Result<ProbeSummary> {
        let mut cmd = self.outside_command(&self.agent_bin)?;
        cmd.args(["probe", "--target", &target.to_string()])
            .args(["--count", &count.to_string(), "--proto", proto])
            .args(["--timeout-ms", &timeout_ms.to_string()])
            .env("RUST_BACKTRACE", "0")
            .stderr(Stdio::inherit());
        parse_probe(cmd.output()?)
    }

    /// An HTTP GET from the outside client.
    pub fn http_get_outside(&self, addr: SocketAddr, path: &str) -> Result<(u16, String)> {
        let ns = self
            .outside_netns
            .clone()
            .context("no outside namespace: call add_outside first")?;
        let path = path.to_string();
        netns::run_in(&ns, move || http_get(addr, &path))
    }

    /// Starts `lb-agent run` inside the node (the client namespace), as a hostNetwork
    /// DaemonSet runs, so that `--xdp-iface ext0` and the node's addresses are its own.
    pub fn start_agent_in_node(&mut self, extra: &[&str]) -> Result<()> {
        let ns = self.client_netns.clone();
        self.start_agent_in(&ns, extra)
    }

    /// Starts `lb-agent run` on this sandbox and waits until /readyz answers 200.
    pub fn start_agent(&mut self, extra: &[&str]) -> Result<()> {
        self.start_agent_env(extra, &[])
    }

    /// [`Sandbox::start_agent`] with extra environment (e.g. `RUST_LOG`).
    pub fn start_agent_env(&mut self, extra: &[&str], env: &[(&str, &str)]) -> Result<()> {
        self.launch_agent(Command::new(&self.agent_bin), extra, env)
    }

    /// Runs `lb-agent run` on this sandbox through `cmd` and waits until /readyz answers 200.
    fn launch_agent(
        &mut self,
        mut cmd: Command,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<()> {
        let log = File::create(self.workdir.join("agent.log"))?;
        let child = cmd
            .arg("run")
            .arg("--manifests")
            .arg(&self.manifests)
            .arg("--pin-dir")
            .arg(&self.id)
            .arg("--cgroup")
            .arg(&self.cgroup)
            .arg("--health-addr")
            .arg(self.health_addr.to_string())
            .args(extra)
            .env("RUST_LOG", "info")
            .env("RUST_BACKTRACE", "0")
            .envs(env.iter().copied())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.agent_bin.display()))?;
        self.agent = Some(child);
        self.wait_ready(Duration::from_secs(30))
    }

    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(c) = self.agent.as_mut()
                && let Some(status) = c.try_wait()?
            {
                bail!(
                    "the agent exited ({status}) before it was ready:\n{}",
                    self.agent_log()
                );
            }
            if self
                .health_get("/readyz")
                .is_ok_and(|(code, _)| code == 200)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the agent was not ready within {timeout:?}:\n{}",
                    self.agent_log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the agent: SIGTERM (graceful) or SIGKILL.
    pub fn stop_agent(&mut self, kill: bool) -> Result<()> {
        if let Some(mut c) = self.agent.take() {
            let sig = if kill { libc::SIGKILL } else { libc::SIGTERM };
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, sig) };
            c.wait()?;
        }
        Ok(())
    }

    /// Runs the agent binary with `args` (e.g. inspect) on this sandbox's pin dir.
    pub fn agent_cmd(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.agent_bin)
            .args(args)
            .arg("--pin-dir")
            .arg(&self.id)
            .env("RUST_BACKTRACE", "0")
            .output()?;
        if !out.status.success() {
            bail!(
                "lb-agent {args:?} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `lb-agent inspect --json` of this sandbox's maps.
    pub fn inspect(&self) -> Result<serde_json::Value> {
        Ok(serde_json::from_str(
            &self.agent_cmd(&["inspect", "--json"])?,
        )?)
    }

    /// A command that runs as a client: inside the client namespace and the sandbox cgroup.
    pub fn client_command(&self, program: &Path) -> Result<Command> {
        self.command_in(&self.client_netns, program)
    }

    fn probe_command(
        &self,
        target: SocketAddr,
        count: u32,
        proto: &str,
        interval_ms: u32,
    ) -> Result<Command> {
        let mut cmd = self.client_command(&self.agent_bin)?;
        cmd.args([
            "probe",
            "--target",
            &target.to_string(),
            "--count",
            &count.to_string(),
        ])
        .args(["--proto", proto, "--timeout-ms", "2000"])
        .args(["--interval-ms", &interval_ms.to_string()])
        .env("RUST_BACKTRACE", "0")
        .stderr(Stdio::inherit());
        Ok(cmd)
    }

    /// `lb-agent probe` from the client side.
    pub fn probe(&self, target: SocketAddr, count: u32, proto: &str) -> Result<ProbeSummary> {
        parse_probe(self.probe_command(target, count, proto, 0)?.output()?)
    }

    /// A probe running in the background; collect it with [`wait_probe`].
    pub fn spawn_probe(
        &self,
        target: SocketAddr,
        count: u32,
        proto: &str,
        interval_ms: u32,
    ) -> Result<Child> {
        Ok(self
            .probe_command(target, count, proto, interval_ms)?
            .stdout(Stdio::piped())
            .spawn()?)
    }
}

/// The summary of a probe started with [`Sandbox::spawn_probe`].
pub fn wait_probe(child: Child) -> Result<ProbeSummary> {
    parse_probe(child.wait_with_output()?)
}

fn parse_probe(out: std::process::Output) -> Result<ProbeSummary> {
    if !out.status.success() {
        bail!("probe failed: {}", String::from_utf8_lossy(&out.stdout));
    }
    serde_json::from_slice(&out.stdout).context("parsing the probe's output")
}

/// What `lb-agent probe` prints.
#[derive(Debug, Default, Clone, serde::Deserialize, serde::Serialize)]
pub struct ProbeSummary {
    pub attempts: u32,
    pub ok: u32,
    pub replies: std::collections::BTreeMap<String, u32>,
    pub errors: std::collections::BTreeMap<String, u32>,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = self.stop_agent(true);
        let _ = Command::new(&self.agent_bin)
            .args(["cleanup", "--pin-dir", &self.id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(Path::new("/sys/fs/bpf").join(&self.id));
        for p in self.pods.iter_mut().chain(self.remote_pods.iter_mut()) {
            p.server.stop();
        }
        for p in &self.pods {
            let _ = netns::delete(&p.netns);
        }
        for ns in self.extra_netns.iter().chain(&self.outside_netns) {
            let _ = netns::delete(ns);
        }
        let _ = netns::delete(&self.client_netns);
        kill_cgroup(&self.cgroup);
        for _ in 0..50 {
            if std::fs::remove_dir(&self.cgroup).is_ok() || !self.cgroup.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir_all(&self.workdir);
    }
}

/// A minimal HTTP/1.0 GET on loopback: (status code, body).
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let code = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no status line")?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// One attempt of a long-lived client (`lb-agent probe --hold`), as it printed it.
#[derive(Debug, Default, Clone, serde::Deserialize, serde::Serialize)]
pub struct HoldEvent {
    pub ms: u64,
    pub reply: Option<String>,
    pub error: Option<String>,
    pub new_socket: bool,
}

/// A client holding one connected socket and asking over it in a loop, in the background.
pub struct HoldClient {
    child: Child,
    events: std::sync::Arc<Mutex<Vec<HoldEvent>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl HoldClient {
    /// Every attempt so far.
    pub fn events(&self) -> Vec<HoldEvent> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits until `done` holds for the events so far; the events on timeout as the error.
    pub fn wait_until(
        &self,
        timeout: Duration,
        done: impl Fn(&[HoldEvent]) -> bool,
    ) -> Result<Vec<HoldEvent>> {
        let deadline = Instant::now() + timeout;
        loop {
            let ev = self.events();
            if done(&ev) {
                return Ok(ev);
            }
            if Instant::now() > deadline {
                bail!("condition not met within {timeout:?}; events: {ev:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for HoldClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

impl Sandbox {
    /// A command that runs inside namespace `ns` and the sandbox cgroup (so the socket hooks
    /// apply to it).
    pub fn command_in(&self, ns: &str, program: &Path) -> Result<Command> {
        self.command_in_ns(ns, true, program)
    }

    /// A command that runs inside namespace `ns`, and in the sandbox cgroup when `in_cgroup`.
    fn command_in_ns(&self, ns: &str, in_cgroup: bool, program: &Path) -> Result<Command> {
        let ns = File::open(netns::path(ns))?;
        let procs = if in_cgroup {
            Some(
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(self.cgroup.join("cgroup.procs"))?,
            )
        } else {
            None
        };
        let mut cmd = Command::new(program);
        // SAFETY: only async-signal-safe calls (write, setns) between fork and exec; the files
        // were opened before the fork and are moved into the closure.
        unsafe {
            cmd.pre_exec(move || {
                if let Some(procs) = &procs
                    && libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1
                {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(cmd)
    }

    /// Starts `lb-agent probe --hold` in namespace `ns` (and the sandbox cgroup): one connected
    /// socket to `target`, asked every `interval_ms`, a new socket after each error.
    pub fn spawn_hold(
        &self,
        ns: &str,
        target: SocketAddr,
        proto: &str,
        interval_ms: u32,
    ) -> Result<HoldClient> {
        let mut child = self
            .command_in(ns, &self.agent_bin)?
            .args(["probe", "--hold", "--target", &target.to_string()])
            .args([
                "--proto",
                proto,
                "--count",
                "1000000",
                "--timeout-ms",
                "500",
            ])
            .args(["--interval-ms", &interval_ms.to_string()])
            .env("RUST_BACKTRACE", "0")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().context("no stdout")?;
        let events = std::sync::Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        let reader = std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(ev) = serde_json::from_str::<HoldEvent>(&line) {
                    sink.lock().unwrap_or_else(|p| p.into_inner()).push(ev);
                }
            }
        });
        Ok(HoldClient {
            child,
            events,
            reader: Some(reader),
        })
    }

    /// A "pod" namespace for clients (`<id>-k<n>`, 10.245.<n>.2) behind a veth to the client
    /// namespace, which then acts as the node: it forwards, and the new namespace routes only
    /// the pod subnets (10.244.0.0/16) through it, so a ClusterIP that is not translated is
    /// unreachable there.
    pub fn add_pod_client(&mut self) -> Result<String> {
        let n = self.extra_netns.len() + 1;
        let ns = format!("{}-k{n}", self.id);
        netns::create(&ns)?;
        self.extra_netns.push(ns.clone());
        let host_if = format!("k{n}");
        let gw = format!("10.245.{n}.1");
        netns::veth(&self.client_netns, &host_if, &ns, "eth0")?;
        netns::ip(
            &self.client_netns,
            &["addr", "add", &format!("{gw}/24"), "dev", &host_if],
        )?;
        netns::ip(&self.client_netns, &["link", "set", &host_if, "up"])?;
        netns::sysctl(&self.client_netns, "net/ipv4/ip_forward", "1")?;
        netns::ip(&ns, &["link", "set", "lo", "up"])?;
        netns::ip(
            &ns,
            &["addr", "add", &format!("10.245.{n}.2/24"), "dev", "eth0"],
        )?;
        netns::ip(&ns, &["link", "set", "eth0", "up"])?;
        netns::ip(&ns, &["route", "add", "10.244.0.0/16", "via", &gw])?;
        Ok(ns)
    }

    /// Starts `lb-agent run` inside namespace `ns` (e.g. the client namespace as a test
    /// "node"), and waits until it is ready; its health port is then inside `ns` too.
    pub fn start_agent_in(&mut self, ns: &str, extra: &[&str]) -> Result<()> {
        // The health port is inside `ns`: set before waiting for it.
        self.agent_netns = Some(ns.to_string());
        let cmd = self.command_in_ns(ns, false, &self.agent_bin)?;
        self.launch_agent(cmd, extra, &[])
    }

    /// GET on the agent's health server, in whichever namespace it runs.
    pub fn health_get(&self, path: &str) -> Result<(u16, String)> {
        let addr = self.health_addr;
        match &self.agent_netns {
            None => http_get(addr, path),
            Some(ns) => {
                let path = path.to_string();
                netns::run_in(ns, move || http_get(addr, &path))
            }
        }
    }

    /// The agent's `/metrics` text.
    pub fn metrics(&self) -> Result<String> {
        let (code, body) = self.health_get("/metrics")?;
        if code != 200 {
            bail!("/metrics answered {code}");
        }
        Ok(body)
    }
}

/// The value of a metric line that starts with `name_and_labels` (0 when absent).
pub fn metric_value(metrics: &str, name_and_labels: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| {
            let rest = l.strip_prefix(name_and_labels)?;
            rest.trim().parse().ok()
        })
        .unwrap_or(0.0)
}
