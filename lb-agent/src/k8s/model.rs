//! The desired state of the datapath in the agent's own terms: which frontends exist and which
//! backends each one has. Produced by [`super::translate`], consumed by [`crate::sync`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

/// L4 protocol of a Service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => lb_common::proto::TCP,
            Protocol::Udp => lb_common::proto::UDP,
            Protocol::Sctp => lb_common::proto::SCTP,
        }
    }

    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            lb_common::proto::TCP => Some(Protocol::Tcp),
            lb_common::proto::UDP => Some(Protocol::Udp),
            lb_common::proto::SCTP => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// Parses the Kubernetes spelling; absent means TCP, as the API defaults it.
    pub fn from_k8s(s: Option<&str>) -> Option<Self> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        })
    }
}

/// Which kind of Service address a frontend is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum FrontendKind {
    ClusterIp,
}

/// One address:port:protocol that connections are aimed at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Frontend {
    pub addr: IpAddr,
    pub port: u16,
    pub proto: Protocol,
    /// `lb_common::scope` value.
    pub scope: u8,
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            std::net::SocketAddr::new(self.addr, self.port),
            self.proto
        )
    }
}

/// One endpoint address:port that a frontend forwards to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct BackendAddr {
    pub addr: IpAddr,
    pub port: u16,
    pub proto: Protocol,
}

impl fmt::Display for BackendAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", std::net::SocketAddr::new(self.addr, self.port))
    }
}

/// What one frontend should do.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FrontendEntry {
    /// `namespace/name` of the Service.
    pub service: String,
    /// The Service port's name ("" when unnamed).
    pub port_name: String,
    pub kind: FrontendKind,
    /// Backends new connections may go to, in a stable order.
    pub backends: BTreeSet<BackendAddr>,
    /// Session affinity timeout in seconds; 0 for none.
    pub affinity_timeout: u32,
}

/// Everything the maps should hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredState {
    pub frontends: BTreeMap<Frontend, FrontendEntry>,
}

impl DesiredState {
    pub fn backend_count(&self) -> usize {
        self.frontends
            .values()
            .flat_map(|e| e.backends.iter())
            .collect::<BTreeSet<_>>()
            .len()
    }
}
