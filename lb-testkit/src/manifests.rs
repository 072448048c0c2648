//! Service and EndpointSlice manifests as the tests and the demo write them.

use std::net::IpAddr;

/// A ClusterIP Service with one TCP port.
pub fn service(name: &str, cluster_ip: &str, port: u16, target_port: u16) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: default
spec:
  type: ClusterIP
  clusterIP: {cluster_ip}
  ports:
    - name: http
      protocol: TCP
      port: {port}
      targetPort: {target_port}
"
    )
}

/// An EndpointSlice for `service` with ready endpoints at `ips` (all of one family), port
/// `http` = `port`.
pub fn endpoint_slice(name: &str, service: &str, port: u16, ips: &[IpAddr]) -> String {
    let family = if ips.first().is_some_and(IpAddr::is_ipv6) {
        "IPv6"
    } else {
        "IPv4"
    };
    let mut eps = String::new();
    for ip in ips {
        eps.push_str(&format!(
            "  - addresses: [\"{ip}\"]\n    conditions: {{ready: true, serving: true, terminating: false}}\n"
        ));
    }
    let eps = if eps.is_empty() {
        "  []\n".to_string()
    } else {
        eps
    };
    format!(
        "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}
  namespace: default
  labels:
    kubernetes.io/service-name: {service}
addressType: {family}
ports:
  - name: http
    protocol: TCP
    port: {port}
endpoints:
{eps}"
    )
}

/// A ClusterIP Service shaped like kube-dns: `dns` on UDP 53 and `dns-tcp` on TCP 53, both to
/// the pods' `target_port`.
pub fn dns_service(name: &str, cluster_ip: &str, target_port: u16) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: default
spec:
  clusterIP: {cluster_ip}
  ports:
    - {{name: dns, protocol: UDP, port: 53, targetPort: {target_port}}}
    - {{name: dns-tcp, protocol: TCP, port: 53, targetPort: {target_port}}}
"
    )
}

/// The EndpointSlice for [`dns_service`].
pub fn dns_endpoint_slice(name: &str, service: &str, port: u16, ips: &[IpAddr]) -> String {
    endpoint_slice(name, service, port, ips).replace(
        "ports:\n  - name: http\n    protocol: TCP\n",
        &format!("ports:\n  - name: dns\n    protocol: UDP\n    port: {port}\n  - name: dns-tcp\n    protocol: TCP\n"),
    )
}
