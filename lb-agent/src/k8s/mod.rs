//! Kubernetes objects in, desired datapath state out.

pub mod cidr;
pub mod endpoints;
pub mod model;
pub mod translate;

pub use k8s_openapi::api::core::v1::{Node, Service};
pub use k8s_openapi::api::discovery::v1::EndpointSlice;

/// Label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Label with which a Service asks for a different proxy than the default one.
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";

/// Label that names a node's zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// All Services and EndpointSlices a source currently knows, as one consistent picture.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub services: Vec<Service>,
    pub slices: Vec<EndpointSlice>,
    /// Nodes the source knows: the cluster source watches only this node (`--node-name`); a
    /// manifest directory may hold any number of `kind: Node` objects.
    pub nodes: Vec<Node>,
}

impl Snapshot {
    /// The node this agent runs on: the one named `node_name`, or, without a name, the only
    /// node the source knows (a manifest directory describing one node).
    pub fn node(&self, node_name: Option<&str>) -> Option<&Node> {
        match node_name {
            Some(name) => self
                .nodes
                .iter()
                .find(|n| n.metadata.name.as_deref() == Some(name)),
            None if self.nodes.len() == 1 => self.nodes.first(),
            None => None,
        }
    }

    /// This node's `topology.kubernetes.io/zone` label (see [`Snapshot::node`]).
    pub fn zone(&self, node_name: Option<&str>) -> Option<&str> {
        node_zone(self.node(node_name)?)
    }
}

/// A node's `topology.kubernetes.io/zone` label, when set and not empty.
pub fn node_zone(node: &Node) -> Option<&str> {
    node.metadata
        .labels
        .as_ref()?
        .get(ZONE_LABEL)
        .map(String::as_str)
        .filter(|z| !z.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, zone: Option<&str>) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some(name.into());
        if let Some(z) = zone {
            n.metadata.labels = Some([(ZONE_LABEL.to_string(), z.to_string())].into());
        }
        n
    }

    #[test]
    fn zone_of_the_named_node_or_of_the_only_node() {
        let mut s = Snapshot {
            nodes: vec![node("a", Some("z1")), node("b", None)],
            ..Default::default()
        };
        assert_eq!(s.zone(Some("a")), Some("z1"));
        assert_eq!(s.zone(Some("b")), None);
        assert_eq!(s.zone(Some("c")), None);
        assert_eq!(s.zone(None), None, "two nodes and no name: which one?");
        s.nodes.remove(1);
        assert_eq!(s.zone(None), Some("z1"));
        s.nodes = vec![node("a", Some(""))];
        assert_eq!(s.zone(Some("a")), None, "an empty label is no zone");
    }
}
