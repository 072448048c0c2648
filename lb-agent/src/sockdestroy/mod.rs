//! Ending sockets that are still connected to a backend which left its Service.
//!
//! Socket-level load balancing rewrites a socket's destination once, at connect(); a connected
//! UDP socket (every glibc/musl DNS client) or a long-lived TCP connection would keep talking
//! to a deleted pod forever. After each sync the agent ends the sockets that were translated
//! through a frontend to a backend that has since left it ([`departed`]), in every network
//! namespace of the node, so the application's next send fails, it reconnects, and the
//! connect goes to a live backend. Sockets to backends that remain, sockets we did not
//! translate, and TIME_WAIT/LISTEN/NEW_SYN_RECV sockets are never touched.
//!
//! Two mechanisms: BPF socket iterators calling the `bpf_sock_destroy` kfunc (kernel >= 6.5,
//! [`iter`]), else netlink sock_diag `SOCK_DESTROY` ([`netlink`]). A failure is logged and
//! counted and never stops the agent.

pub mod departed;
pub mod iter;
pub mod netlink;
pub mod netns;

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use lb_common::{SockTermKey, proto};
use tracing::{info, warn};

pub use departed::departed;

use crate::datapath::pins::PinPaths;
use crate::metrics::Metrics;

/// `--terminate-sockets`: which protocols' sockets are ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Protocols {
    pub udp: bool,
    pub tcp: bool,
}

impl Protocols {
    pub fn includes(self, l4: u8) -> bool {
        (l4 == proto::UDP && self.udp) || (l4 == proto::TCP && self.tcp)
    }

    pub fn none(self) -> bool {
        !self.udp && !self.tcp
    }
}

impl FromStr for Protocols {
    type Err = String;
    /// `udp`, `tcp`, `udp,tcp` (any order) or `none`.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut p = Protocols::default();
        if s.trim() == "none" {
            return Ok(p);
        }
        for part in s.split(',').map(str::trim) {
            match part {
                "udp" => p.udp = true,
                "tcp" => p.tcp = true,
                other => return Err(format!("unknown protocol {other:?} (udp, tcp or none)")),
            }
        }
        Ok(p)
    }
}

impl std::fmt::Display for Protocols {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.udp, self.tcp) {
            (false, false) => f.write_str("none"),
            (true, false) => f.write_str("udp"),
            (false, true) => f.write_str("tcp"),
            (true, true) => f.write_str("udp,tcp"),
        }
    }
}

/// `--socket-destroy-mechanism`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum MechanismChoice {
    /// Iterators when the kernel supports them (>= 6.5 with `bpf_sock_destroy`), else netlink.
    #[default]
    Auto,
    /// netlink sock_diag SOCK_DESTROY only.
    Netlink,
}

/// What one round of ending sockets did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Sockets ended, by protocol number.
    pub destroyed: BTreeMap<u8, u64>,
    /// Sockets that matched but could not be ended.
    pub failed: u64,
    /// Errors that stopped part of the work (a namespace, a map write); each also counts as a
    /// failure.
    pub errors: Vec<String>,
}

impl Outcome {
    fn merge(&mut self, other: Outcome) {
        for (p, n) in other.destroyed {
            *self.destroyed.entry(p).or_default() += n;
        }
        self.failed += other.failed;
        self.errors.extend(other.errors);
    }
}

enum Mechanism {
    Iter(iter::IterMechanism),
    Netlink(netlink::NetlinkMechanism),
    Disabled,
}

pub struct Terminator {
    protocols: Protocols,
    mechanism: Mechanism,
}

/// (major, minor) of the running kernel.
fn kernel_version() -> Option<(u32, u32)> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let mut parts = release.trim().split(['.', '-']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

impl Terminator {
    /// Picks and prepares the mechanism, and logs which one is active. Never fails: without a
    /// usable mechanism, sockets are simply not ended (logged).
    pub fn new(
        ebpf: &mut aya::Ebpf,
        sock_destroy_kfunc: bool,
        protocols: Protocols,
        choice: MechanismChoice,
        pins: &PinPaths,
    ) -> Self {
        let mechanism = if protocols.none() {
            Mechanism::Disabled
        } else {
            Self::pick(ebpf, sock_destroy_kfunc, choice, pins)
        };
        let t = Self {
            protocols,
            mechanism,
        };
        info!(mechanism = t.mechanism(), protocols = %protocols, "socket termination for departed backends");
        t
    }

    fn pick(
        ebpf: &mut aya::Ebpf,
        kfunc: bool,
        choice: MechanismChoice,
        pins: &PinPaths,
    ) -> Mechanism {
        let recent = kernel_version().is_some_and(|v| v >= (6, 5));
        if choice == MechanismChoice::Auto {
            if recent && kfunc {
                match iter::setup(ebpf, pins) {
                    Ok(m) => return Mechanism::Iter(m),
                    Err(e) => {
                        warn!(error = %format!("{e:#}"), "socket iterators unavailable; falling back to netlink")
                    }
                }
            } else {
                info!(
                    kernel = ?kernel_version(),
                    bpf_sock_destroy = kfunc,
                    "kernel without bpf_sock_destroy; using netlink"
                );
            }
        }
        match netlink::setup(ebpf) {
            Ok(m) => Mechanism::Netlink(m),
            Err(e) => {
                warn!(error = %format!("{e:#}"), "netlink sock_diag unavailable: sockets on departed backends will not be ended");
                Mechanism::Disabled
            }
        }
    }

    pub fn mechanism(&self) -> &'static str {
        match self.mechanism {
            Mechanism::Iter(_) => "bpf-iterator",
            Mechanism::Netlink(_) => "netlink-sock-diag",
            Mechanism::Disabled => "none",
        }
    }

    /// Ends the sockets on `departed` backends in every namespace; logs and counts the result.
    pub fn end_sockets(&mut self, departed: &BTreeSet<SockTermKey>, metrics: &Metrics) {
        if !departed.iter().any(|k| self.protocols.includes(k.proto)) {
            return;
        }
        let started = std::time::Instant::now();
        let namespaces = netns::all();
        let outcome = match &mut self.mechanism {
            Mechanism::Iter(m) => m.end(departed, self.protocols, &namespaces),
            Mechanism::Netlink(m) => m.end(departed, self.protocols, &namespaces),
            Mechanism::Disabled => return,
        };
        for (l4, n) in &outcome.destroyed {
            let label = crate::metrics::ProtoLabel::new(*l4);
            metrics.sockets_destroyed.get_or_create(&label).inc_by(*n);
        }
        let failures = outcome.failed + outcome.errors.len() as u64;
        metrics.socket_destroy_failures.inc_by(failures);
        for e in &outcome.errors {
            warn!(error = %e, "ending sockets on departed backends");
        }
        info!(
            departed = departed.len(),
            namespaces = namespaces.len(),
            destroyed = outcome.destroyed.values().sum::<u64>(),
            failed = failures,
            took_ms = started.elapsed().as_secs_f64() * 1e3,
            "ended sockets on departed backends"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_parse() {
        let p: Protocols = "udp".parse().unwrap();
        assert!(p.includes(proto::UDP) && !p.includes(proto::TCP));
        let p: Protocols = "tcp, udp".parse().unwrap();
        assert!(p.includes(proto::UDP) && p.includes(proto::TCP));
        assert!("none".parse::<Protocols>().unwrap().none());
        assert!("sctp".parse::<Protocols>().is_err());
        assert_eq!(
            "udp,tcp".parse::<Protocols>().unwrap().to_string(),
            "udp,tcp"
        );
    }
}
