//! kube-proxy's iptables mode, as `iptables-restore` input: the rules kube-proxy (v1.29+)
//! writes for ClusterIP Services. nat: PREROUTING/OUTPUT -> KUBE-SERVICES, one rule per
//! service port matching the ClusterIP and port, jumping to KUBE-SVC-<hash>, which marks
//! off-cluster sources for masquerade (KUBE-MARK-MASQ) and picks an endpoint chain
//! KUBE-SEP-<hash> with `-m statistic --mode random --probability 1/n, 1/(n-1), ...`; each
//! KUBE-SEP marks hairpin traffic and DNATs. KUBE-POSTROUTING masquerades marked packets. The
//! filter table carries kube-proxy's KUBE-SERVICES/KUBE-FORWARD/KUBE-PROXY-FIREWALL jumps.

use std::fmt::Write as _;

use super::services::{CLUSTER_CIDR, NAMESPACE, ServiceSet, Svc, chain_hash};

fn svc_chain(port_name: &str, proto: &str) -> String {
    format!("KUBE-SVC-{}", chain_hash(&[port_name, proto]))
}

fn sep_chain(port_name: &str, proto: &str, endpoint: &str) -> String {
    format!("KUBE-SEP-{}", chain_hash(&[port_name, proto, endpoint]))
}

const FILTER: &str = r#"*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
:KUBE-SERVICES - [0:0]
-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS
-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
"#;

/// The nat-table lines of one Service: chain declarations, its KUBE-SERVICES rules, and the
/// rules of its KUBE-SVC and KUBE-SEP chains.
#[derive(Default)]
struct Parts {
    chains: String,
    services: String,
    rules: String,
}

fn add_service(p: &mut Parts, svc: &Svc) {
    for sp in &svc.ports {
        let port_name = format!("{NAMESPACE}/{}:{}", svc.name, sp.name);
        let proto = sp.proto.lower();
        let svc_chain = svc_chain(&port_name, proto);
        let _ = writeln!(p.chains, ":{svc_chain} - [0:0]");
        let _ = writeln!(
            p.services,
            "-A KUBE-SERVICES -m comment --comment \"{port_name} cluster IP\" -m {proto} -p {proto} -d {}/32 --dport {} -j {svc_chain}",
            svc.vip, sp.port
        );
        let _ = writeln!(
            p.rules,
            "-A {svc_chain} -m comment --comment \"{port_name} cluster IP\" -m {proto} -p {proto} -d {}/32 --dport {} ! -s {CLUSTER_CIDR} -j KUBE-MARK-MASQ",
            svc.vip, sp.port
        );
        let n = svc.endpoints.len();
        for (k, ep) in svc.endpoints.iter().enumerate() {
            let endpoint = format!("{ep}:{}", sp.target_port);
            let sep = sep_chain(&port_name, proto, &endpoint);
            let _ = writeln!(p.chains, ":{sep} - [0:0]");
            if k + 1 < n {
                let _ = writeln!(
                    p.rules,
                    "-A {svc_chain} -m comment --comment \"{port_name} -> {endpoint}\" -m statistic --mode random --probability {:.10} -j {sep}",
                    1.0 / (n - k) as f64
                );
            } else {
                let _ = writeln!(
                    p.rules,
                    "-A {svc_chain} -m comment --comment \"{port_name} -> {endpoint}\" -j {sep}"
                );
            }
            let _ = writeln!(
                p.rules,
                "-A {sep} -m comment --comment {port_name} -s {ep}/32 -j KUBE-MARK-MASQ"
            );
            let _ = writeln!(
                p.rules,
                "-A {sep} -m comment --comment {port_name} -m {proto} -p {proto} -j DNAT --to-destination {endpoint}"
            );
        }
    }
}

const NAT_FIXED_CHAINS: &str = ":KUBE-MARK-MASQ - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-SERVICES - [0:0]\n";
const NODEPORTS_LAST: &str = "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n";

/// The whole ruleset for `set`, filter and nat tables.
pub fn ruleset(set: &ServiceSet) -> String {
    let mut p = Parts::default();
    for svc in set.iter() {
        add_service(&mut p, &svc);
    }
    let mut out = String::with_capacity(p.chains.len() + p.rules.len() + p.services.len() + 4096);
    out.push_str(FILTER);
    out.push_str("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n");
    out.push_str(NAT_FIXED_CHAINS);
    out.push_str(&p.chains);
    out.push_str(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
         -A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n\
         -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n\
         -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n",
    );
    out.push_str(&p.services);
    out.push_str(NODEPORTS_LAST);
    out.push_str(&p.rules);
    out.push_str("COMMIT\n");
    out
}

/// What kube-proxy's partial sync (v1.28+) feeds `iptables-restore --noflush` after Service
/// `changed` went from `before` to `after` endpoints: KUBE-SERVICES rewritten whole (kube-proxy
/// always rewrites the top-level chains), the changed Service's chains rewritten, the chains of
/// endpoints that left deleted.
pub fn partial_update(set: &ServiceSet, changed: usize, before: usize, after: usize) -> String {
    let mut p = Parts::default();
    let mut services = String::new();
    for i in 0..set.count {
        let mut svc = set.service(i);
        if i == changed {
            let full = svc.clone();
            svc.endpoints.truncate(after);
            add_service(&mut p, &svc);
            for chain in &full.svc_ports_removed(after, before) {
                let _ = writeln!(p.chains, ":{chain} - [0:0]");
                let _ = writeln!(p.rules, "-X {chain}");
            }
        } else {
            let mut q = Parts::default();
            add_service(&mut q, &svc);
            services.push_str(&q.services);
        }
    }
    let mut out = String::from(
        "*filter\n:KUBE-EXTERNAL-SERVICES - [0:0]\n:KUBE-FORWARD - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-PROXY-FIREWALL - [0:0]\n:KUBE-SERVICES - [0:0]\n",
    );
    out.push_str(
        FILTER
            .lines()
            .filter(|l| l.starts_with("-A KUBE-FORWARD"))
            .map(|l| format!("{l}\n"))
            .collect::<String>()
            .as_str(),
    );
    out.push_str("COMMIT\n*nat\n:KUBE-SERVICES - [0:0]\n");
    out.push_str(&p.chains);
    out.push_str(&services);
    out.push_str(&p.services);
    out.push_str(NODEPORTS_LAST);
    out.push_str(&p.rules);
    out.push_str("COMMIT\n");
    out
}

impl Svc {
    /// The KUBE-SEP chains of endpoints `from..to` (those that left when the Service shrank).
    fn svc_ports_removed(&self, from: usize, to: usize) -> Vec<String> {
        let mut out = Vec::new();
        for sp in &self.ports {
            let port_name = format!("{NAMESPACE}/{}:{}", self.name, sp.name);
            for ep in self.endpoints.iter().take(to).skip(from) {
                out.push(sep_chain(
                    &port_name,
                    sp.proto.lower(),
                    &format!("{ep}:{}", sp.target_port),
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::services::Target;
    use std::net::Ipv4Addr;

    #[test]
    fn kube_proxy_shape() {
        let t = Target {
            backends: vec![Ipv4Addr::new(10, 244, 12, 2), Ipv4Addr::new(10, 244, 12, 3)],
            port: 8083,
        };
        let set = ServiceSet::new(3, 3, Some(t));
        let r = ruleset(&set);
        // One KUBE-SERVICES rule per service port (3 services, the target has tcp and udp).
        assert_eq!(
            r.matches("-A KUBE-SERVICES -m comment --comment \"bench/")
                .count(),
            4
        );
        // Three endpoints: probabilities 1/3, 1/2, then the unconditional last one.
        assert!(r.contains("--probability 0.3333333333"));
        assert!(r.contains("--probability 0.5000000000"));
        assert!(r.contains("-j DNAT --to-destination 10.244.12.3:8083"));
        assert!(r.contains("-m udp -p udp -j DNAT --to-destination 10.244.12.2:8083"));
        assert!(r.ends_with("COMMIT\n"));
        // A partial update: all KUBE-SERVICES rules again, the changed Service with 2 of its
        // 3 endpoints, the third endpoint's chain deleted.
        let u = partial_update(&set, 0, 3, 2);
        assert_eq!(
            u.matches("-A KUBE-SERVICES -m comment --comment \"bench/")
                .count(),
            4
        );
        assert_eq!(u.matches("-X KUBE-SEP-").count(), 1);
        assert_eq!(u.matches("-j DNAT").count(), 2);
        // Every jump target is declared.
        for line in r.lines().filter(|l| l.starts_with("-A ")) {
            let target = line
                .rsplit(" -j ")
                .next()
                .unwrap()
                .split(' ')
                .next()
                .unwrap();
            if target.starts_with("KUBE-") {
                assert!(
                    r.contains(&format!(":{target} - [0:0]")),
                    "{target} undeclared"
                );
            }
        }
    }
}
