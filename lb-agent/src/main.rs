//! lb-agent: the node agent of an eBPF socket-level load balancer for Kubernetes Services.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use lb_agent::datapath::{loader, maps::BpfMaps, pins::PinPaths, system};
use lb_agent::k8s::{cidr::Cidr, translate::NodeContext};
use lb_agent::node_addrs::NodeAddrs;
use lb_agent::sync::{Capacity, Datapath};
use lb_agent::{app, explain, inspect, probe};

#[derive(Parser)]
#[command(
    name = "lb-agent",
    version,
    about = "eBPF socket-level load balancer for Kubernetes Services"
)]
struct Cli {
    /// Log format.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "LB_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(clap::Args)]
struct PinArgs {
    /// Directory under the bpffs mount where maps and links are pinned.
    #[arg(long, default_value = "lb", env = "LB_PIN_DIR")]
    pin_dir: String,
    /// Where bpffs is (or will be) mounted.
    #[arg(long, default_value = system::BPFFS, hide = true)]
    bpffs: PathBuf,
}

/// Where Services and EndpointSlices come from.
#[derive(clap::Args)]
struct SourceArgs {
    /// Read Services and EndpointSlices from the manifests in this directory (watched)
    /// instead of the Kubernetes API.
    #[arg(long, env = "LB_MANIFESTS")]
    manifests: Option<PathBuf>,
    /// Kubeconfig to use instead of the in-cluster configuration.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
}

impl PinArgs {
    fn paths(&self) -> PinPaths {
        PinPaths::new(&self.bpffs, &self.pin_dir)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Load and attach the datapath and keep its maps in sync with the Services.
    Run {
        #[command(flatten)]
        source: SourceArgs,
        #[command(flatten)]
        pins: PinArgs,
        /// The cgroup v2 directory to attach to (default: the root of the cgroup2 mount).
        #[arg(long, env = "LB_CGROUP")]
        cgroup: Option<PathBuf>,
        /// This node's name, for node-local endpoints (internalTrafficPolicy: Local).
        #[arg(long, env = "NODE_NAME")]
        node_name: Option<String>,
        /// This node's zone, for topology hints (default: the node's
        /// topology.kubernetes.io/zone label when watching a cluster).
        #[arg(long, env = "LB_ZONE")]
        zone: Option<String>,
        /// An address NodePorts answer on (repeatable). Default: every address of this network
        /// namespace's interfaces, re-read every few seconds; 127.0.0.1 is always added.
        #[arg(long = "node-ip", env = "LB_NODE_IPS", value_delimiter = ',')]
        node_ips: Vec<std::net::IpAddr>,
        /// Only program spec.externalIPs inside these ranges (comma-separated CIDRs); guards
        /// against CVE-2020-8554. Unset: every external IP is programmed, as kube-proxy does.
        #[arg(long, env = "LB_EXTERNAL_IP_CIDRS", value_delimiter = ',')]
        external_ip_cidrs: Option<Vec<Cidr>>,
        /// A node interface facing outside traffic (repeatable): XDP there serves NodePorts,
        /// LoadBalancer and external IPs for clients off the node; TC egress translates replies.
        #[arg(long = "xdp-iface", env = "LB_XDP_IFACES", value_delimiter = ',')]
        xdp_ifaces: Vec<String>,
        /// The address (one per family) the XDP path SNATs traffic from outside to, when it
        /// goes to a backend on another node (default: the node's first address of the
        /// family). Replies come back to it, and --xdp-iface must cover where they arrive.
        #[arg(long = "snat-ip", env = "LB_SNAT_IPS", value_delimiter = ',')]
        snat_ips: Vec<std::net::IpAddr>,
        /// Entries of one Maglev table (a prime; changing it needs `lb-agent cleanup`).
        #[arg(long, default_value_t = lb_common::capacity::MAGLEV_TABLE_SIZE, value_parser = parse_prime)]
        maglev_table_size: u32,
        /// Maglev tables (one per external frontend; past that, flows are spread at random).
        #[arg(long, default_value_t = lb_common::capacity::MAGLEV_TABLES)]
        maglev_tables: u32,
        /// Address for /healthz, /readyz and /metrics.
        #[arg(long, default_value = "127.0.0.1:9965", env = "LB_HEALTH_ADDR")]
        health_addr: SocketAddr,
        /// Entries of the service map (one per frontend plus one per backend of each).
        #[arg(long, default_value_t = lb_common::capacity::SERVICES)]
        services_map_size: u32,
        /// Entries of the backend map.
        #[arg(long, default_value_t = lb_common::capacity::BACKENDS)]
        backends_map_size: u32,
        /// Entries of the reverse-NAT map (one per frontend address and port).
        #[arg(long, default_value_t = lb_common::capacity::REV_NAT)]
        rev_nat_map_size: u32,
        /// End sockets still connected to a backend that left its Service: `udp`, `udp,tcp`
        /// or `none`.
        #[arg(long, default_value = "udp", env = "LB_TERMINATE_SOCKETS")]
        terminate_sockets: lb_agent::sockdestroy::Protocols,
        /// How sockets are ended: BPF iterators when the kernel has them, else netlink
        /// (`auto`), or always netlink sock_diag.
        #[arg(long, value_enum, default_value = "auto")]
        socket_destroy_mechanism: lb_agent::sockdestroy::MechanismChoice,
        /// Which sockets are translated: `all`, or `host` (only the agent's network
        /// namespace; for service meshes whose sidecars must see the Service address).
        #[arg(long, value_enum, default_value = "all", env = "LB_SOCKET_LB_SCOPE")]
        socket_lb_scope: lb_agent::datapath::scope::SocketLbScope,
    },
    /// Print the frontends and backends in the pinned maps (works without a running agent).
    Inspect {
        #[command(flatten)]
        pins: PinArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Detach the programs and remove everything the agent pinned.
    Cleanup {
        #[command(flatten)]
        pins: PinArgs,
    },
    /// Walk a Service from the cluster objects to the maps and name the broken stage. Exits
    /// with 2 when a stage is broken.
    Explain {
        /// The Service, as namespace/name (a bare name means the default namespace).
        service: String,
        #[command(flatten)]
        source: SourceArgs,
        #[command(flatten)]
        pins: PinArgs,
        /// This node's name (for internalTrafficPolicy: Local).
        #[arg(long, env = "NODE_NAME")]
        node_name: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Connect to an address repeatedly and report how the replies were spread.
    Probe {
        /// Address to connect to, e.g. 10.96.0.10:80.
        #[arg(long)]
        target: SocketAddr,
        #[arg(long, default_value_t = 100)]
        count: u32,
        #[arg(long, value_enum, default_value = "tcp")]
        proto: probe::ProbeProto,
        /// Per-attempt timeout in milliseconds.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
        /// Pause between attempts in milliseconds.
        #[arg(long, default_value_t = 0)]
        interval_ms: u64,
        /// Keep one connected socket and ask over it every interval (new socket after an
        /// error), printing one JSON line per attempt.
        #[arg(long)]
        hold: bool,
    },
}

/// A Maglev table size: a prime, so every backend's permutation visits every entry.
fn parse_prime(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    let prime = n >= 3
        && (2u64..)
            .take_while(|d| d * d <= u64::from(n))
            .all(|d| u64::from(n) % d != 0);
    if prime {
        Ok(n)
    } else {
        Err(format!("{n} is not a prime >= 3"))
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Run {
            source:
                SourceArgs {
                    manifests,
                    kubeconfig,
                },
            pins,
            cgroup,
            node_name,
            zone,
            node_ips,
            external_ip_cidrs,
            xdp_ifaces,
            snat_ips,
            maglev_table_size,
            maglev_tables,
            health_addr,
            services_map_size,
            backends_map_size,
            rev_nat_map_size,
            terminate_sockets,
            socket_destroy_mechanism,
            socket_lb_scope,
        } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the tokio runtime")?;
            rt.block_on(app::run(app::RunConfig {
                manifests,
                kubeconfig,
                pins: pins.paths(),
                cgroup,
                health_addr,
                capacity: Capacity {
                    services: services_map_size,
                    backends: backends_map_size,
                    rev_nat: rev_nat_map_size,
                    maglev_size: maglev_table_size,
                    maglev_tables,
                    ..Capacity::default()
                },
                node: NodeContext {
                    node_name,
                    zone,
                    node_ips: Vec::new(),
                    external_ip_cidrs,
                },
                node_addrs: NodeAddrs::from_flags(node_ips),
                xdp_ifaces,
                snat_ips,
                terminate_sockets,
                socket_destroy_mechanism,
                socket_lb_scope,
            }))
        }
        Command::Inspect { pins, json } => {
            let state = BpfMaps::open_pinned(&pins.paths())
                .context("is an agent (or was one) running with this --pin-dir?")?
                .read()?;
            let view = inspect::view(&state);
            if json {
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                print!("{}", inspect::render_text(&view));
            }
            Ok(())
        }
        Command::Cleanup { pins } => {
            let paths = pins.paths();
            if loader::cleanup(&paths)? {
                println!(
                    "removed {} (programs detached, maps released)",
                    paths.root().display()
                );
            } else {
                println!("nothing pinned at {}", paths.root().display());
            }
            Ok(())
        }
        Command::Explain {
            service,
            source:
                SourceArgs {
                    manifests,
                    kubeconfig,
                },
            pins,
            node_name,
            json,
        } => {
            let (ns, name) = explain::parse_target(&service)
                .with_context(|| format!("{service:?}: expected namespace/name"))?;
            let snapshot = match &manifests {
                Some(dir) => {
                    let loaded = lb_agent::source::manifests::load_dir(dir)?;
                    for e in &loaded.errors {
                        eprintln!("skipping {e}");
                    }
                    loaded.snapshot
                }
                None => tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("starting the tokio runtime")?
                    .block_on(async {
                        let client = app::kube_client(kubeconfig.as_deref()).await?;
                        explain::fetch_from_cluster(client, &ns, &name).await
                    })?,
            };
            let state = BpfMaps::open_pinned(&pins.paths()).and_then(|m| m.read());
            let maps = match &state {
                Ok(s) => explain::Maps::Read(s),
                Err(e) => explain::Maps::NotRead(format!(
                    "cannot read the pinned maps ({e:#}); run on the node, as root, with the agent's --pin-dir"
                )),
            };
            #[allow(clippy::needless_update)] // NodeContext is growing (zone, node addresses)
            let node = NodeContext {
                node_name,
                ..Default::default()
            };
            let report = explain::explain(&snapshot, &ns, &name, &node, maps);
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", explain::render_text(&report));
            }
            if report.verdict.is_broken() {
                std::process::exit(2);
            }
            Ok(())
        }
        Command::Probe {
            target,
            count,
            proto,
            timeout_ms,
            interval_ms,
            hold,
        } => {
            if hold {
                probe::hold(
                    target,
                    count,
                    proto,
                    Duration::from_millis(timeout_ms),
                    Duration::from_millis(interval_ms),
                );
                return Ok(());
            }
            let s = probe::run(
                target,
                count,
                proto,
                Duration::from_millis(timeout_ms),
                Duration::from_millis(interval_ms),
            );
            println!("{}", serde_json::to_string(&s)?);
            Ok(())
        }
    }
}
