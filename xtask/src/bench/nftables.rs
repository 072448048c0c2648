//! kube-proxy's nftables mode (v1.31+), as `nft -f` input: table `ip kube-proxy` whose
//! `services` chain does one verdict-map lookup (`ip daddr . meta l4proto . th dport vmap
//! @service-ips`) into a per-service-port chain, which marks off-cluster sources for
//! masquerade and picks an endpoint chain with `numgen random mod n vmap { ... }`; each
//! endpoint chain DNATs. Plus the filter-hook chains kube-proxy installs (endpoint checks,
//! firewall check, the drop of unallocated ClusterIPs) and masquerading.

use std::fmt::Write as _;

use std::net::Ipv4Addr;

use super::services::{
    CLUSTER_CIDR, NAMESPACE, SERVICE_CIDR, ServiceSet, Svc, SvcPort, chain_hash,
};

pub const TABLE: &str = "kube-proxy";

/// The fixed part: chains, sets and maps that exist whatever the Services are.
fn base() -> String {
    format!(
        r#"add table ip {TABLE} {{ comment "rules for kube-proxy" ; }}
add set ip {TABLE} cluster-ips {{ type ipv4_addr ; comment "Active ClusterIPs" ; }}
add set ip {TABLE} nodeport-ips {{ type ipv4_addr ; comment "IPs that accept NodePort traffic" ; }}
add map ip {TABLE} no-endpoint-services {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to services with no endpoints" ; }}
add map ip {TABLE} no-endpoint-nodeports {{ type inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to service nodeports with no endpoints" ; }}
add map ip {TABLE} firewall-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment "destinations that are subject to LoadBalancerSourceRanges" ; }}
add map ip {TABLE} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }}
add map ip {TABLE} service-nodeports {{ type inet_proto . inet_service : verdict ; comment "NodePort traffic" ; }}
add chain ip {TABLE} mark-for-masquerade
add rule ip {TABLE} mark-for-masquerade mark set mark or 0x4000
add chain ip {TABLE} masquerading
add rule ip {TABLE} masquerading mark and 0x4000 == 0 return
add rule ip {TABLE} masquerading mark set mark xor 0x4000
add rule ip {TABLE} masquerading masquerade fully-random
add chain ip {TABLE} services
add rule ip {TABLE} services ip daddr . meta l4proto . th dport vmap @service-ips
add rule ip {TABLE} services fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports
add chain ip {TABLE} service-endpoints-check
add rule ip {TABLE} service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services
add chain ip {TABLE} nodeport-endpoints-check
add rule ip {TABLE} nodeport-endpoints-check ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports
add chain ip {TABLE} firewall-check
add rule ip {TABLE} firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips
add chain ip {TABLE} cluster-ips-check
add rule ip {TABLE} cluster-ips-check ip daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"
add rule ip {TABLE} cluster-ips-check ip daddr {{ {SERVICE_CIDR} }} drop comment "Drop traffic to unallocated ClusterIPs"
add chain ip {TABLE} filter-prerouting {{ type filter hook prerouting priority -110 ; }}
add rule ip {TABLE} filter-prerouting ct state new jump firewall-check
add chain ip {TABLE} filter-input {{ type filter hook input priority -110 ; }}
add rule ip {TABLE} filter-input ct state new jump nodeport-endpoints-check
add rule ip {TABLE} filter-input ct state new jump service-endpoints-check
add chain ip {TABLE} filter-forward {{ type filter hook forward priority -110 ; }}
add rule ip {TABLE} filter-forward ct state new jump service-endpoints-check
add rule ip {TABLE} filter-forward ct state new jump cluster-ips-check
add chain ip {TABLE} filter-output {{ type filter hook output priority -110 ; }}
add rule ip {TABLE} filter-output ct state new jump service-endpoints-check
add rule ip {TABLE} filter-output ct state new jump firewall-check
add chain ip {TABLE} filter-output-post-dnat {{ type filter hook output priority -90 ; }}
add rule ip {TABLE} filter-output-post-dnat ct state new jump cluster-ips-check
add chain ip {TABLE} nat-prerouting {{ type nat hook prerouting priority -100 ; }}
add rule ip {TABLE} nat-prerouting jump services
add chain ip {TABLE} nat-output {{ type nat hook output priority -100 ; }}
add rule ip {TABLE} nat-output jump services
add chain ip {TABLE} nat-postrouting {{ type nat hook postrouting priority 100 ; }}
add rule ip {TABLE} nat-postrouting jump masquerading
"#
    )
}

fn names(svc: &Svc, port: &SvcPort) -> (String, String) {
    let id = format!(
        "{NAMESPACE}/{}/{}/{}",
        svc.name,
        port.proto.lower(),
        port.name
    );
    let chain = format!("service-{}-{id}", &chain_hash(&[&id])[..8]);
    (id, chain)
}

fn endpoint_chain(id: &str, ep: Ipv4Addr, port: &SvcPort) -> String {
    let endpoint = format!("{ep}/{}", port.target_port);
    format!(
        "endpoint-{}-{id}__{endpoint}",
        &chain_hash(&[id, &endpoint])[..8]
    )
}

fn add_endpoint(out: &mut String, id: &str, ep: Ipv4Addr, port: &SvcPort) {
    let ep_chain = endpoint_chain(id, ep, port);
    let _ = writeln!(out, "add chain ip {TABLE} {ep_chain}");
    let _ = writeln!(
        out,
        "add rule ip {TABLE} {ep_chain} ip saddr {ep} jump mark-for-masquerade"
    );
    let _ = writeln!(
        out,
        "add rule ip {TABLE} {ep_chain} meta l4proto {} dnat to {ep}:{}",
        port.proto.lower(),
        port.target_port
    );
}

/// The rules of a service chain (which must exist and be empty).
fn service_rules(out: &mut String, svc: &Svc, port: &SvcPort, chain: &str, id: &str) {
    let _ = writeln!(
        out,
        "add rule ip {TABLE} {chain} ip daddr {} {} dport {} ip saddr != {CLUSTER_CIDR} jump mark-for-masquerade",
        svc.vip,
        port.proto.lower(),
        port.port
    );
    let vmap: Vec<String> = svc
        .endpoints
        .iter()
        .enumerate()
        .map(|(k, ep)| format!("{k} : goto {}", endpoint_chain(id, *ep, port)))
        .collect();
    let _ = writeln!(
        out,
        "add rule ip {TABLE} {chain} numgen random mod {} vmap {{ {} }}",
        svc.endpoints.len(),
        vmap.join(" , ")
    );
}

/// The whole ruleset for `set`.
pub fn ruleset(set: &ServiceSet) -> String {
    let mut out = base();
    let mut elements = String::new();
    for svc in set.iter() {
        let _ = writeln!(
            elements,
            "add element ip {TABLE} cluster-ips {{ {} }}",
            svc.vip
        );
        for p in &svc.ports {
            let (id, chain) = names(&svc, p);
            let _ = writeln!(out, "add chain ip {TABLE} {chain}");
            for ep in &svc.endpoints {
                add_endpoint(&mut out, &id, *ep, p);
            }
            service_rules(&mut out, &svc, p, &chain, &id);
            let _ = writeln!(
                elements,
                "add element ip {TABLE} service-ips {{ {} . {} . {} : goto {chain} }}",
                svc.vip,
                p.proto.lower(),
                p.port
            );
        }
    }
    out.push_str(&elements);
    out
}

/// The transaction kube-proxy's nftables mode sends after Service `changed` went from
/// `before` to `after` endpoints: its service chain flushed and refilled, endpoint chains
/// added or flushed and deleted.
pub fn partial_update(set: &ServiceSet, changed: usize, before: usize, after: usize) -> String {
    let full = set.service(changed);
    let mut now = full.clone();
    now.endpoints.truncate(after);
    let mut out = String::new();
    for p in &full.ports {
        let (id, chain) = names(&full, p);
        for ep in full.endpoints.iter().take(after).skip(before) {
            add_endpoint(&mut out, &id, *ep, p);
        }
        let _ = writeln!(out, "flush chain ip {TABLE} {chain}");
        service_rules(&mut out, &now, p, &chain, &id);
        for ep in full.endpoints.iter().take(before).skip(after) {
            let ep_chain = endpoint_chain(&id, *ep, p);
            let _ = writeln!(out, "flush chain ip {TABLE} {ep_chain}");
            let _ = writeln!(out, "delete chain ip {TABLE} {ep_chain}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::services::Target;
    use std::net::Ipv4Addr;

    #[test]
    fn kube_proxy_shape() {
        let t = Target {
            backends: vec![Ipv4Addr::new(10, 244, 13, 2), Ipv4Addr::new(10, 244, 13, 3)],
            port: 8084,
        };
        let set = ServiceSet::new(3, 2, Some(t));
        let r = ruleset(&set);
        assert_eq!(
            r.matches("add element ip kube-proxy service-ips").count(),
            4
        );
        assert!(r.contains("numgen random mod 2 vmap { 0 : goto endpoint-"));
        assert!(r.contains("meta l4proto udp dnat to 10.244.13.3:8084"));
        assert!(r.contains("ip daddr . meta l4proto . th dport vmap @service-ips"));
        let shrink = partial_update(&set, 0, 2, 1);
        assert!(shrink.contains("numgen random mod 1 vmap"));
        assert_eq!(shrink.matches("delete chain").count(), 1);
        let grow = partial_update(&set, 0, 1, 2);
        assert_eq!(grow.matches("dnat to").count(), 1);
        assert!(grow.contains("numgen random mod 2 vmap"));
    }
}
