//! The bench topology, all in namespaces made for this run (names carry the pid, so two runs
//! never share one, and leftovers of killed runs are swept):
//!
//! - `<id>-srv`: the "pod" namespace, one [`BenchServer`] thread pinned to CPU 1.
//! - `<id>-<mode>`: one client namespace per mode, joined to the pod namespace by its own veth
//!   (client 10.244.<10+m>.1, pod 10.244.<10+m>.2 and .3). Each mode therefore has its own
//!   source address, so no mode ever reuses another's 4-tuple, and netfilter exists only in
//!   the iptables and nftables client namespaces (a nat table makes conntrack track every
//!   connection of its namespace). The client namespaces are rebuilt for every Service count.
//!   Their routes: the connected /24, and only for the NAT modes the Service CIDR via the pod
//!   (a locally generated packet needs a route before nat OUTPUT can rewrite it). Nothing
//!   routes off the machine.
//! - a cgroup `<id>` that the socket-LB mode's client runs in and the agent attaches to.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use lb_testkit::netns;

use super::server::BenchServer;
use super::services::SERVICE_CIDR;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Direct,
    SockLb,
    Iptables,
    Nftables,
}

pub const MODES: [Mode; 4] = [Mode::Direct, Mode::SockLb, Mode::Iptables, Mode::Nftables];

impl Mode {
    pub fn index(self) -> usize {
        MODES.iter().position(|m| *m == self).unwrap_or(0)
    }

    pub fn short(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::SockLb => "socklb",
            Mode::Iptables => "ipt",
            Mode::Nftables => "nft",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Mode::Direct => "direct to pod IP",
            Mode::SockLb => "lb socket LB",
            Mode::Iptables => "kube-proxy iptables",
            Mode::Nftables => "kube-proxy nftables",
        }
    }

    fn octet(self) -> u8 {
        10 + self.index() as u8
    }

    pub fn client_ip(self) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, self.octet(), 1)
    }

    /// The pod's two addresses as seen from this mode (the target Service's endpoints).
    pub fn pod_ips(self) -> Vec<Ipv4Addr> {
        vec![
            Ipv4Addr::new(10, 244, self.octet(), 2),
            Ipv4Addr::new(10, 244, self.octet(), 3),
        ]
    }

    /// The pod port this mode uses at scale number `scale`: unique per (scale, mode).
    pub fn port(self, scale: usize) -> u16 {
        8100 + 10 * scale as u16 + self.index() as u16
    }

    pub fn nat(self) -> bool {
        matches!(self, Mode::Iptables | Mode::Nftables)
    }
}

/// A prefix unique to this process, recognisable when the process is gone.
fn prefix(pid: u32) -> String {
    format!("lbb{pid}x")
}

fn dead(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("lbb") else {
        return false;
    };
    let Some(pid) = rest.split('x').next().and_then(|p| p.parse::<u32>().ok()) else {
        return false;
    };
    !Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes namespaces, cgroups and pins left by bench runs that were killed.
pub fn sweep_stale(cgroup_root: &Path) {
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
                    if dir.starts_with("/sys/fs/bpf") {
                        let _ = std::fs::remove_dir_all(e.path());
                    } else {
                        remove_cgroup(&e.path());
                    }
                }
            }
        }
    }
}

fn remove_cgroup(cg: &Path) {
    for _ in 0..50 {
        if let Ok(procs) = std::fs::read_to_string(cg.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|p| p.parse::<i32>().ok()) {
                // SAFETY: signalling processes of our own throwaway cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        if std::fs::remove_dir(cg).is_ok() || !cg.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub struct Topology {
    pub id: String,
    pub server_ns: String,
    pub cgroup: PathBuf,
    pub workdir: PathBuf,
    clients: Vec<String>,
    extra_ns: Vec<String>,
    pub server: Option<BenchServer>,
}

impl Topology {
    /// The server namespace with its thread serving `ports`, the cgroup and the work dir;
    /// client namespaces come with [`Topology::reset_clients`].
    pub fn new(ports: &[u16], server_cpu: usize) -> Result<Self> {
        let cgroup_root = lb_testkit::cgroup2_root()?;
        sweep_stale(&cgroup_root);
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() % 100_000)
            .unwrap_or(0);
        let id = format!("{}{secs}", prefix(std::process::id()));
        let workdir = std::env::temp_dir().join(&id);
        let mut topo = Topology {
            server_ns: format!("{id}-srv"),
            cgroup: cgroup_root.join(&id),
            workdir,
            clients: Vec::new(),
            extra_ns: Vec::new(),
            server: None,
            id,
        };
        // From here on Drop removes whatever was made.
        std::fs::create_dir_all(&topo.workdir)?;
        std::fs::create_dir(&topo.cgroup)
            .with_context(|| format!("creating {}", topo.cgroup.display()))?;
        netns::create(&topo.server_ns)?;
        netns::ip(&topo.server_ns, &["link", "set", "lo", "up"])?;
        topo.server = Some(BenchServer::start(&topo.server_ns, ports, server_cpu)?);
        Ok(topo)
    }

    pub fn client_ns(&self, mode: Mode) -> String {
        format!("{}-{}", self.id, mode.short())
    }

    /// (Re)creates every mode's client namespace, empty of netfilter state.
    pub fn reset_clients(&mut self) -> Result<()> {
        for mode in MODES {
            let ns = self.client_ns(mode);
            if self.clients.contains(&ns) {
                netns::delete(&ns)?;
                self.clients.retain(|c| c != &ns);
            }
            netns::create(&ns)?;
            self.clients.push(ns.clone());
            netns::ip(&ns, &["link", "set", "lo", "up"])?;
            netns::sysctl(&ns, "net/ipv4/ip_local_port_range", "1024 65000")?;
            let srv_if = format!("v{}", mode.short());
            // Deleting a namespace is asynchronous: wait for the old veth end to go.
            for _ in 0..250 {
                if netns::ip(&self.server_ns, &["link", "show", &srv_if]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            netns::veth(&ns, "eth0", &self.server_ns, &srv_if)?;
            netns::ip(
                &ns,
                &[
                    "addr",
                    "add",
                    &format!("{}/24", mode.client_ip()),
                    "dev",
                    "eth0",
                ],
            )?;
            netns::ip(&ns, &["link", "set", "eth0", "up"])?;
            for ip in mode.pod_ips() {
                netns::ip(
                    &self.server_ns,
                    &["addr", "add", &format!("{ip}/24"), "dev", &srv_if],
                )?;
            }
            netns::ip(&self.server_ns, &["link", "set", &srv_if, "up"])?;
            if mode.nat() {
                netns::ip(
                    &ns,
                    &[
                        "route",
                        "add",
                        SERVICE_CIDR,
                        "via",
                        &mode.pod_ips()[0].to_string(),
                    ],
                )?;
            }
        }
        Ok(())
    }

    /// A throwaway namespace (removed with the topology) for timing rule loads.
    pub fn scratch_ns(&mut self, name: &str) -> Result<String> {
        let ns = format!("{}-{name}", self.id);
        if self.extra_ns.contains(&ns) {
            netns::delete(&ns)?;
            self.extra_ns.retain(|c| c != &ns);
        }
        netns::create(&ns)?;
        self.extra_ns.push(ns.clone());
        Ok(ns)
    }

    pub fn server_cpu_ns(&self) -> u64 {
        self.server.as_ref().map_or(0, |s| s.cpu_ns())
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if let Some(mut s) = self.server.take() {
            s.stop();
        }
        for ns in self.clients.iter().chain(&self.extra_ns) {
            let _ = netns::delete(ns);
        }
        let _ = netns::delete(&self.server_ns);
        remove_cgroup(&self.cgroup);
        let _ = std::fs::remove_dir_all(&self.workdir);
    }
}
