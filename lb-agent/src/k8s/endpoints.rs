//! Which endpoints of a Service port may take new connections, as kube-proxy decides it
//! (`pkg/proxy/topology.go`, `CategorizeEndpoints`):
//!
//! - cluster-wide: ready endpoints, narrowed by topology hints when every ready endpoint has
//!   hints and one is for this node (or its zone); when none is ready, the serving and
//!   terminating ones (KEP-1669), never not-serving ones;
//! - node-local (a `Local` traffic policy): ready endpoints on this node, else serving and
//!   terminating ones on this node; none means the frontend rejects.
//!
//! Hints come from the EndpointSlice (`hints.forZones`, `hints.forNodes`). A Service with
//! `trafficDistribution` set whose endpoints carry no hints at all (a cluster without the
//! EndpointSlice controller's hints, or a manifest directory) gets the hints that controller
//! would write: each endpoint's own zone (and node, for `PreferSameNode`).

use std::collections::BTreeSet;

use super::model::{BackendAddr, Selection, Topology};

/// One endpoint address of a Service port, with what selection needs to know about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub backend: BackendAddr,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// On this node (`nodeName` equals the agent's node name).
    pub local: bool,
    pub zone_hints: BTreeSet<String>,
    pub node_hints: BTreeSet<String>,
}

/// Where the node running the agent is.
#[derive(Clone, Copy, Debug, Default)]
pub struct Place<'a> {
    pub node: Option<&'a str>,
    pub zone: Option<&'a str>,
}

/// The endpoints new connections from anywhere may use, and how they were chosen.
pub fn cluster(eps: &[Endpoint], here: Place<'_>) -> (BTreeSet<BackendAddr>, Selection) {
    let topology = topology_mode(eps, here);
    let ready: BTreeSet<_> = eps
        .iter()
        .filter(|e| e.ready && available(e, topology, here))
        .map(|e| e.backend)
        .collect();
    if !ready.is_empty() {
        let selection = Selection {
            topology,
            ..Selection::default()
        };
        return (ready, selection);
    }
    fallback(eps.iter())
}

/// The endpoints on this node, for a `Local` traffic policy.
pub fn local(eps: &[Endpoint]) -> (BTreeSet<BackendAddr>, Selection) {
    let ready: BTreeSet<_> = eps
        .iter()
        .filter(|e| e.local && e.ready)
        .map(|e| e.backend)
        .collect();
    let (set, mut selection) = if ready.is_empty() {
        fallback(eps.iter().filter(|e| e.local))
    } else {
        (ready, Selection::default())
    };
    selection.local_only = true;
    (set, selection)
}

/// Serving and terminating endpoints, used when no endpoint is ready.
fn fallback<'a>(eps: impl Iterator<Item = &'a Endpoint>) -> (BTreeSet<BackendAddr>, Selection) {
    let set: BTreeSet<_> = eps
        .filter(|e| e.serving && e.terminating)
        .map(|e| e.backend)
        .collect();
    let selection = Selection {
        terminating_fallback: !set.is_empty(),
        ..Selection::default()
    };
    (set, selection)
}

/// kube-proxy's `topologyModeFromHints`: node hints win when every ready endpoint has them and
/// one is for this node; else zone hints under the same rule; else none.
fn topology_mode(eps: &[Endpoint], here: Place<'_>) -> Topology {
    let ready = || eps.iter().filter(|e| e.ready);
    if ready().next().is_none() {
        return Topology::None;
    }
    if let Some(node) = here.node
        && ready().all(|e| !e.node_hints.is_empty())
        && ready().any(|e| e.node_hints.contains(node))
    {
        return Topology::Node;
    }
    if let Some(zone) = here.zone
        && ready().all(|e| !e.zone_hints.is_empty())
        && ready().any(|e| e.zone_hints.contains(zone))
    {
        return Topology::Zone;
    }
    Topology::None
}

fn available(e: &Endpoint, mode: Topology, here: Place<'_>) -> bool {
    match mode {
        Topology::None => true,
        Topology::Zone => here.zone.is_some_and(|z| e.zone_hints.contains(z)),
        Topology::Node => here.node.is_some_and(|n| e.node_hints.contains(n)),
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use proptest::prelude::*;

    use super::*;
    use crate::k8s::model::Protocol;

    fn ep(last: u8) -> Endpoint {
        Endpoint {
            backend: BackendAddr {
                remote: false,
                addr: IpAddr::from([10, 244, last, 2]),
                port: 8080,
                proto: Protocol::Tcp,
            },
            ready: true,
            serving: true,
            terminating: false,
            local: false,
            zone_hints: BTreeSet::new(),
            node_hints: BTreeSet::new(),
        }
    }

    fn zoned(last: u8, zone: &str) -> Endpoint {
        Endpoint {
            zone_hints: [zone.to_string()].into(),
            ..ep(last)
        }
    }

    fn lasts(set: &BTreeSet<BackendAddr>) -> Vec<u8> {
        set.iter()
            .map(|b| match b.addr {
                IpAddr::V4(a) => a.octets()[2],
                IpAddr::V6(_) => 0,
            })
            .collect()
    }

    const A: Place<'static> = Place {
        node: Some("node-a"),
        zone: Some("zone-a"),
    };

    #[test]
    fn zone_hints_narrow_to_this_zone() {
        let eps = [zoned(1, "zone-a"), zoned(2, "zone-a"), zoned(3, "zone-b")];
        let (set, sel) = cluster(&eps, A);
        assert_eq!(lasts(&set), [1, 2]);
        assert_eq!(sel.topology, Topology::Zone);
    }

    #[test]
    fn hints_are_ignored_unless_every_ready_endpoint_has_one() {
        let eps = [zoned(1, "zone-a"), ep(2), zoned(3, "zone-b")];
        let (set, sel) = cluster(&eps, A);
        assert_eq!(lasts(&set), [1, 2, 3]);
        assert_eq!(sel.topology, Topology::None);
    }

    #[test]
    fn hints_are_ignored_when_none_is_for_this_zone_or_the_zone_is_unknown() {
        let eps = [zoned(1, "zone-b"), zoned(2, "zone-c")];
        assert_eq!(lasts(&cluster(&eps, A).0), [1, 2]);
        let eps = [zoned(1, "zone-a"), zoned(2, "zone-b")];
        let nowhere = Place {
            node: None,
            zone: None,
        };
        assert_eq!(lasts(&cluster(&eps, nowhere).0), [1, 2]);
    }

    #[test]
    fn not_ready_endpoints_do_not_spoil_hints() {
        let mut unhinted = ep(3);
        unhinted.ready = false;
        let eps = [zoned(1, "zone-a"), zoned(2, "zone-b"), unhinted];
        assert_eq!(lasts(&cluster(&eps, A).0), [1]);
    }

    #[test]
    fn node_hints_win_over_zone_hints() {
        let mut eps = [zoned(1, "zone-a"), zoned(2, "zone-a")];
        eps[0].node_hints = ["node-a".to_string()].into();
        eps[1].node_hints = ["node-b".to_string()].into();
        let (set, sel) = cluster(&eps, A);
        assert_eq!(lasts(&set), [1]);
        assert_eq!(sel.topology, Topology::Node);
    }

    #[test]
    fn terminating_fallback_ignores_topology_and_never_uses_not_serving() {
        let mut t = zoned(1, "zone-b");
        (t.ready, t.terminating) = (false, true);
        let mut gone = ep(2);
        (gone.ready, gone.serving, gone.terminating) = (false, false, true);
        let (set, sel) = cluster(&[t, gone], A);
        assert_eq!(lasts(&set), [1]);
        assert!(sel.terminating_fallback);
    }

    #[test]
    fn local_prefers_ready_then_terminating_on_this_node_only() {
        let mut here = ep(1);
        here.local = true;
        let remote = ep(2);
        let (set, sel) = local(&[here.clone(), remote.clone()]);
        assert_eq!(lasts(&set), [1]);
        assert!(sel.local_only && !sel.terminating_fallback);

        here.ready = false;
        here.terminating = true;
        let (set, sel) = local(&[here.clone(), remote.clone()]);
        assert_eq!(lasts(&set), [1]);
        assert!(sel.terminating_fallback);

        here.serving = false;
        assert!(local(&[here, remote]).0.is_empty());
    }

    fn arb_endpoint() -> impl Strategy<Value = Endpoint> {
        (
            1u8..20,
            any::<(bool, bool, bool, bool)>(),
            proptest::option::of(0u8..3),
            proptest::option::of(0u8..3),
        )
            .prop_map(|(last, (ready, serving, terminating, local), zone, node)| {
                let mut e = ep(last);
                (e.ready, e.serving, e.terminating, e.local) = (ready, serving, terminating, local);
                e.zone_hints = zone.map(|z| format!("zone-{z}")).into_iter().collect();
                e.node_hints = node.map(|n| format!("node-{n}")).into_iter().collect();
                e
            })
    }

    proptest! {
        /// Whatever the endpoints: a non-empty set is chosen whenever any endpoint is ready,
        /// never a not-serving one, local sets are local, and topology only ever narrows.
        #[test]
        fn selection_invariants(eps in proptest::collection::vec(arb_endpoint(), 0..12)) {
            let here = Place { node: Some("node-0"), zone: Some("zone-0") };
            let (set, sel) = cluster(&eps, here);
            let any_ready = eps.iter().any(|e| e.ready);
            prop_assert_eq!(any_ready, !set.is_empty() && !sel.terminating_fallback);
            for b in &set {
                prop_assert!(eps.iter().any(|e| e.backend == *b && (e.serving || e.ready)));
            }
            let all_ready: BTreeSet<_> = eps.iter().filter(|e| e.ready).map(|e| e.backend).collect();
            if any_ready {
                prop_assert!(set.is_subset(&all_ready));
            }
            let (lset, lsel) = local(&eps);
            prop_assert!(lsel.local_only);
            for b in &lset {
                prop_assert!(eps.iter().any(|e| e.backend == *b && e.local));
            }
        }
    }
}
