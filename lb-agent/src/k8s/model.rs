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
    /// `spec.clusterIP(s)` on a Service port.
    ClusterIp,
    /// A node address (or 127.0.0.1) on a Service port's `nodePort`.
    NodePort,
    /// `status.loadBalancer.ingress[].ip` on a Service port.
    LoadBalancer,
    /// One of `spec.externalIPs` on a Service port.
    ExternalIp,
}

impl FrontendKind {
    pub fn flag(self) -> u16 {
        use lb_common::service_flags as f;
        match self {
            FrontendKind::ClusterIp => f::CLUSTER_IP,
            FrontendKind::NodePort => f::NODE_PORT,
            FrontendKind::LoadBalancer => f::LOAD_BALANCER,
            FrontendKind::ExternalIp => f::EXTERNAL_IP,
        }
    }
}

/// How a frontend's backends were chosen from the Service's endpoints, as kube-proxy would.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Selection {
    /// Only this node's endpoints (`internalTrafficPolicy`/`externalTrafficPolicy: Local`).
    pub local_only: bool,
    /// Narrowed by topology hints.
    pub topology: Topology,
    /// No endpoint was ready, so serving and terminating ones are used (KEP-1669).
    pub terminating_fallback: bool,
}

/// Which topology hints narrowed a backend set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub enum Topology {
    #[default]
    None,
    /// Endpoints hinted for this node's zone (`forZones`, `PreferClose`/`PreferSameZone`).
    Zone,
    /// Endpoints hinted for this node (`forNodes`, `PreferSameNode`).
    Node,
}

impl Selection {
    pub fn flags(&self) -> u16 {
        use lb_common::service_flags as f;
        let mut flags = 0;
        if self.local_only {
            flags |= f::LOCAL_ONLY;
        }
        flags |= match self.topology {
            Topology::None => 0,
            Topology::Zone => f::TOPOLOGY_ZONE,
            Topology::Node => f::TOPOLOGY_NODE,
        };
        if self.terminating_fallback {
            flags |= f::TERMINATING_FALLBACK;
        }
        flags
    }
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
    /// On another node (its `nodeName` is known and not this node's): traffic from outside
    /// sent to it is SNATed so that its replies come back through this node.
    pub remote: bool,
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
    /// How `backends` were chosen.
    pub selection: Selection,
    /// `loadBalancerSourceRanges` (external-scope LoadBalancer frontends only); empty: any.
    #[serde(serialize_with = "display_all")]
    pub source_ranges: Vec<super::cidr::Cidr>,
}

fn display_all<S: serde::Serializer>(v: &[super::cidr::Cidr], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|c| c.to_string()))
}

/// Everything the maps should hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredState {
    pub frontends: BTreeMap<Frontend, FrontendEntry>,
    /// `spec.healthCheckNodePort` of LoadBalancer Services with `externalTrafficPolicy:
    /// Local`, which the agent serves with this node's count of ready endpoints.
    pub health_checks: BTreeMap<u16, HealthCheck>,
}

/// What a health check node port answers.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct HealthCheck {
    pub namespace: String,
    pub name: String,
    /// Ready endpoints of the Service on this node.
    pub local_endpoints: usize,
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
