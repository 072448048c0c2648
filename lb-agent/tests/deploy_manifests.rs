//! Offline checks of the manifests under deploy/ (no cluster needed).
//!
//! Every YAML document of every file under deploy/ is parsed into its k8s-openapi type by its
//! `kind`. Those types skip fields they do not know, so each typed object is also serialized
//! back and every field of the source must still be there with the same value: a typo such
//! as `hostNetwrok` fails here instead of being silently dropped by the API server. Then the
//! properties the agent relies on are checked: read-only RBAC, the DaemonSet's host access,
//! probes, mounts and capabilities, a few rules the API server enforces at admission, the
//! smoke workload's wiring and the kind cluster without kube-proxy.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Container, Namespace, PodSpec, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

const NAMESPACE: &str = "kube-system";
const AGENT: &str = "lb-agent";
const HEALTH_PORT: i32 = 9965;
const CAPABILITIES: [&str; 5] = ["BPF", "NET_ADMIN", "SYS_ADMIN", "PERFMON", "SYS_RESOURCE"];
const SMOKE_NAMESPACE: &str = "lb-smoke";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn deploy_dir() -> PathBuf {
    repo_root().join("deploy")
}

/// Every .yaml/.yml file under `dir`, recursively, in a stable order.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            out.extend(yaml_files(&path));
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            out.push(path);
        }
    }
    out
}

/// One YAML document: the file it came from (relative to deploy/), its index there, its value.
struct Doc {
    file: String,
    index: usize,
    value: Value,
}

impl Doc {
    fn name(&self) -> String {
        format!("{} (document {})", self.file, self.index)
    }
}

fn documents(path: &Path) -> Vec<Doc> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let file = path
        .strip_prefix(deploy_dir())
        .unwrap_or(path)
        .display()
        .to_string();
    let mut docs = Vec::new();
    for (index, de) in serde_yaml::Deserializer::from_str(&text).enumerate() {
        let value =
            Value::deserialize(de).unwrap_or_else(|e| panic!("{file} (document {index}): {e}"));
        // An empty document (a trailing `---`) is nothing.
        if !value.is_null() {
            docs.push(Doc {
                file: file.clone(),
                index,
                value,
            });
        }
    }
    docs
}

/// The paths of `source` that `round_tripped` lost or changed.
fn lost_fields(source: &Value, round_tripped: &Value, path: &str, out: &mut Vec<String>) {
    match (source, round_tripped) {
        (Value::Object(s), Value::Object(r)) => {
            for (key, value) in s {
                let p = format!("{path}.{key}");
                match r.get(key) {
                    Some(rv) => lost_fields(value, rv, &p, out),
                    None => out.push(format!("{p}: not a field of this type")),
                }
            }
        }
        (Value::Array(s), Value::Array(r)) => {
            if s.len() != r.len() {
                out.push(format!("{path}: {} items became {}", s.len(), r.len()));
            }
            for (i, (sv, rv)) in s.iter().zip(r).enumerate() {
                lost_fields(sv, rv, &format!("{path}[{i}]"), out);
            }
        }
        (Value::Null, _) => out.push(format!(
            "{path}: null (write a value or leave the field out)"
        )),
        (Value::Number(s), Value::Number(r)) if s.as_f64() == r.as_f64() => {}
        (s, r) if s == r => {}
        (s, r) => out.push(format!("{path}: {s} became {r}")),
    }
}

/// Deserializes `value` into `T` and checks that serializing it back keeps every field.
fn check_typed<T: DeserializeOwned + Serialize>(value: &Value) -> Result<T, Vec<String>> {
    let typed: T = serde_json::from_value(value.clone()).map_err(|e| vec![e.to_string()])?;
    let back = serde_json::to_value(&typed).expect("k8s-openapi types serialize");
    let mut lost = Vec::new();
    lost_fields(value, &back, "", &mut lost);
    if lost.is_empty() {
        Ok(typed)
    } else {
        Err(lost)
    }
}

fn typed<T: DeserializeOwned + Serialize>(doc: &Doc) -> T {
    check_typed(&doc.value).unwrap_or_else(|problems| {
        panic!(
            "{}: does not survive a round trip through {}:\n  {}",
            doc.name(),
            std::any::type_name::<T>(),
            problems.join("\n  ")
        )
    })
}

/// The kind (kind.x-k8s.io/v1alpha4) cluster configuration: not a Kubernetes type, so the
/// fields this project may use are spelled out and anything else is rejected.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct KindCluster {
    kind: String,
    api_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    feature_gates: Option<BTreeMap<String, bool>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    networking: Option<KindNetworking>,
    #[serde(default)]
    nodes: Vec<KindNode>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct KindNetworking {
    #[serde(skip_serializing_if = "Option::is_none")]
    ip_family: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kube_proxy_mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pod_subnet: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    service_subnet: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", rename = "disableDefaultCNI")]
    disable_default_cni: Option<bool>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct KindNode {
    role: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    image: Option<String>,
}

/// Everything under deploy/, by type, each with the file it came from.
#[derive(Default)]
struct Objects {
    files: BTreeSet<String>,
    service_accounts: Vec<(String, ServiceAccount)>,
    cluster_roles: Vec<(String, ClusterRole)>,
    cluster_role_bindings: Vec<(String, ClusterRoleBinding)>,
    daemon_sets: Vec<(String, DaemonSet)>,
    deployments: Vec<(String, Deployment)>,
    services: Vec<(String, Service)>,
    namespaces: Vec<(String, Namespace)>,
    kind_clusters: Vec<(String, KindCluster)>,
}

fn load() -> Objects {
    let mut o = Objects::default();
    for path in yaml_files(&deploy_dir()) {
        for doc in documents(&path) {
            o.files.insert(doc.file.clone());
            let api_version = doc.value["apiVersion"].as_str().unwrap_or_default();
            let kind = doc.value["kind"].as_str().unwrap_or_default();
            let file = doc.file.clone();
            match (api_version, kind) {
                ("v1", "ServiceAccount") => o.service_accounts.push((file, typed(&doc))),
                ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                    o.cluster_roles.push((file, typed(&doc)))
                }
                ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                    o.cluster_role_bindings.push((file, typed(&doc)))
                }
                ("apps/v1", "DaemonSet") => o.daemon_sets.push((file, typed(&doc))),
                ("apps/v1", "Deployment") => o.deployments.push((file, typed(&doc))),
                ("v1", "Service") => o.services.push((file, typed(&doc))),
                ("v1", "Namespace") => o.namespaces.push((file, typed(&doc))),
                ("kind.x-k8s.io/v1alpha4", "Cluster") => o.kind_clusters.push((file, typed(&doc))),
                other => panic!(
                    "{}: no check knows {other:?}; teach tests/deploy_manifests.rs about it",
                    doc.name()
                ),
            }
        }
    }
    o
}

fn name_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or_default()
}

fn agent_daemon_set(o: &Objects) -> &DaemonSet {
    let found: Vec<_> = o
        .daemon_sets
        .iter()
        .filter(|(_, ds)| name_of(&ds.metadata) == AGENT)
        .collect();
    assert_eq!(found.len(), 1, "exactly one DaemonSet {AGENT}");
    let (file, ds) = found[0];
    assert_eq!(file, "daemonset.yaml");
    assert_eq!(ds.metadata.namespace.as_deref(), Some(NAMESPACE));
    ds
}

fn pod_spec(ds: &DaemonSet) -> &PodSpec {
    ds.spec
        .template
        .spec
        .as_ref()
        .expect("the DaemonSet has a pod template")
}

fn agent_container(pod: &PodSpec) -> &Container {
    assert_eq!(
        pod.containers.len(),
        1,
        "the agent is the pod's only container"
    );
    let c = &pod.containers[0];
    assert_eq!(c.name, AGENT);
    c
}

/// All containers of a pod, init containers first.
fn all_containers(pod: &PodSpec) -> impl Iterator<Item = &Container> {
    pod.init_containers.iter().flatten().chain(&pod.containers)
}

/// The number a probe's or Service's port means in `container`.
fn resolve_port(container: &Container, port: &IntOrString) -> Option<i32> {
    match port {
        IntOrString::Int(p) => Some(*p),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port),
    }
}

fn capabilities_added(c: &Container) -> BTreeSet<String> {
    c.security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref())
        .and_then(|caps| caps.add.clone())
        .unwrap_or_default()
        .into_iter()
        .collect()
}

fn is_privileged(c: &Container) -> bool {
    c.security_context.as_ref().and_then(|s| s.privileged) == Some(true)
}

fn host_path<'a>(
    pod: &'a PodSpec,
    volume: &str,
) -> &'a k8s_openapi::api::core::v1::HostPathVolumeSource {
    pod.volumes
        .iter()
        .flatten()
        .find(|v| v.name == volume)
        .unwrap_or_else(|| panic!("no volume {volume}"))
        .host_path
        .as_ref()
        .unwrap_or_else(|| panic!("volume {volume} is not a hostPath"))
}

fn mount_at<'a>(c: &'a Container, path: &str) -> &'a k8s_openapi::api::core::v1::VolumeMount {
    c.volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == path)
        .unwrap_or_else(|| panic!("container {} mounts nothing at {path}", c.name))
}

#[test]
fn round_trip_catches_a_misspelt_field() {
    let doc: Value = serde_yaml::from_str(
        "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: x}\nspec:\n  selector: {}\n  template:\n    spec:\n      hostNetwrok: true\n      containers: [{name: c, image: i}]\n",
    )
    .unwrap();
    let problems = check_typed::<DaemonSet>(&doc).unwrap_err();
    assert_eq!(
        problems,
        [".spec.template.spec.hostNetwrok: not a field of this type"]
    );
    // Correctly spelt, the same document passes.
    let fixed: Value =
        serde_json::from_str(&doc.to_string().replace("hostNetwrok", "hostNetwork")).unwrap();
    assert!(check_typed::<DaemonSet>(&fixed).is_ok());
    // A wrong kind is an error too, not a silently empty object.
    let mut wrong = fixed.clone();
    wrong["kind"] = "Deployment".into();
    assert!(check_typed::<DaemonSet>(&wrong).is_err());
}

#[test]
fn every_document_parses_into_its_type() {
    let o = load();
    for f in [
        "rbac.yaml",
        "daemonset.yaml",
        "kind/kind-config.yaml",
        "kind/smoke.yaml",
    ] {
        assert!(
            o.files.contains(f),
            "deploy/{f} is missing or empty; have {:?}",
            o.files
        );
    }
    assert_eq!(o.service_accounts.len(), 1);
    assert_eq!(o.cluster_roles.len(), 1);
    assert_eq!(o.cluster_role_bindings.len(), 1);
    assert_eq!(o.daemon_sets.len(), 1);
    assert_eq!(o.kind_clusters.len(), 1);
}

#[test]
fn cluster_role_only_reads_services_endpointslices_and_nodes() {
    let o = load();
    let (file, role) = &o.cluster_roles[0];
    assert_eq!(file, "rbac.yaml");
    assert_eq!(name_of(&role.metadata), AGENT);
    assert!(role.aggregation_rule.is_none());
    let mut granted = BTreeSet::new();
    for rule in role.rules.iter().flatten() {
        assert!(rule.resource_names.is_none(), "{rule:?}");
        assert!(rule.non_resource_urls.is_none(), "{rule:?}");
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    granted.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    let mut expected = BTreeSet::new();
    for (group, resource) in [
        ("", "services"),
        ("discovery.k8s.io", "endpointslices"),
        ("", "nodes"),
    ] {
        for verb in ["get", "list", "watch"] {
            expected.insert((group.to_string(), resource.to_string(), verb.to_string()));
        }
    }
    assert_eq!(granted, expected);
}

#[test]
fn cluster_role_binding_gives_the_role_to_the_service_account() {
    let o = load();
    let (_, sa) = &o.service_accounts[0];
    assert_eq!(name_of(&sa.metadata), AGENT);
    assert_eq!(sa.metadata.namespace.as_deref(), Some(NAMESPACE));
    let (file, binding) = &o.cluster_role_bindings[0];
    assert_eq!(file, "rbac.yaml");
    assert_eq!(
        binding.role_ref.api_group.as_deref(),
        Some("rbac.authorization.k8s.io")
    );
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(binding.role_ref.name, AGENT);
    let subjects = binding.subjects.as_deref().unwrap_or_default();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(subjects[0].name, AGENT);
    assert_eq!(subjects[0].namespace.as_deref(), Some(NAMESPACE));
}

#[test]
fn daemonset_runs_on_every_node_in_the_host_namespaces() {
    let o = load();
    let ds = agent_daemon_set(&o);
    let spec = &ds.spec;
    let selector = spec.selector.match_labels.clone().unwrap_or_default();
    let labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    assert!(!selector.is_empty());
    assert!(
        selector.iter().all(|(k, v)| labels.get(k) == Some(v)),
        "the selector {selector:?} must match the pod labels {labels:?}"
    );
    let strategy = spec.update_strategy.as_ref().expect("an update strategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    assert_eq!(
        strategy
            .rolling_update
            .as_ref()
            .and_then(|r| r.max_unavailable.clone()),
        Some(IntOrString::Int(1))
    );

    let pod = pod_spec(ds);
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.host_pid, Some(true));
    assert_eq!(pod.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    let tolerations = pod.tolerations.as_deref().unwrap_or_default();
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()),
        "one toleration must match every taint: {tolerations:?}"
    );

    // The service account exists, in the DaemonSet's namespace, in rbac.yaml.
    let sa = pod
        .service_account_name
        .as_deref()
        .expect("a service account");
    assert_eq!(sa, AGENT);
    assert!(
        o.service_accounts
            .iter()
            .any(|(file, s)| file == "rbac.yaml"
                && name_of(&s.metadata) == sa
                && s.metadata.namespace == ds.metadata.namespace)
    );
}

#[test]
fn agent_container_runs_with_health_probes_and_metrics_port() {
    let o = load();
    let pod = pod_spec(agent_daemon_set(&o));
    let c = agent_container(pod);
    let args = c.args.as_deref().unwrap_or_default();
    assert_eq!(args.first().map(String::as_str), Some("run"), "{args:?}");
    assert!(args.iter().any(|a| a == "--pin-dir=lb"), "{args:?}");
    // The health server listens on all addresses (probes come from the kubelet to the node
    // address) on the port the probes use.
    let addr = args
        .iter()
        .find_map(|a| a.strip_prefix("--health-addr="))
        .expect("--health-addr is set");
    let addr: std::net::SocketAddr = addr.parse().expect("--health-addr is an address");
    assert!(addr.ip().is_unspecified(), "{addr}");
    assert_eq!(i32::from(addr.port()), HEALTH_PORT);

    for (probe, path) in [
        (c.readiness_probe.as_ref(), "/readyz"),
        (c.liveness_probe.as_ref(), "/healthz"),
    ] {
        let probe = probe.unwrap_or_else(|| panic!("a probe on {path}"));
        let get = probe.http_get.as_ref().expect("an HTTP probe");
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(resolve_port(c, &get.port), Some(HEALTH_PORT), "{path}");
        assert!(probe.period_seconds.is_some_and(|p| p > 0), "{path}");
        assert!(probe.failure_threshold.is_some_and(|f| f >= 3), "{path}");
    }
    assert!(
        c.lifecycle.as_ref().is_none_or(|l| l.pre_stop.is_none()),
        "no preStop: stopping must leave the datapath in place"
    );

    let metrics = c
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("metrics"))
        .expect("a port named metrics");
    assert_eq!(metrics.container_port, HEALTH_PORT);
    assert_eq!(metrics.host_port, Some(HEALTH_PORT));

    let node_name = c
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "NODE_NAME")
        .and_then(|e| e.value_from.as_ref())
        .and_then(|v| v.field_ref.as_ref())
        .map(|f| f.field_path.as_str());
    assert_eq!(node_name, Some("spec.nodeName"));

    let resources = c.resources.as_ref().expect("resources");
    let get = |m: &Option<BTreeMap<String, _>>, k: &str| {
        m.as_ref()
            .and_then(|m| m.get(k))
            .map(|q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity| q.0.clone())
    };
    assert_eq!(get(&resources.requests, "cpu").as_deref(), Some("50m"));
    assert_eq!(get(&resources.requests, "memory").as_deref(), Some("64Mi"));
    assert_eq!(get(&resources.limits, "memory").as_deref(), Some("256Mi"));
    assert_eq!(
        get(&resources.limits, "cpu"),
        None,
        "no CPU limit: no throttling"
    );

    // Every container of the pod runs the agent's image, so replacing it replaces all.
    for other in all_containers(pod) {
        assert_eq!(other.image, c.image, "container {}", other.name);
    }
}

#[test]
fn agent_has_only_the_capabilities_it_needs_and_is_not_privileged() {
    let o = load();
    let c = agent_container(pod_spec(agent_daemon_set(&o)));
    assert!(!is_privileged(c));
    let expected: BTreeSet<String> = CAPABILITIES.iter().map(|s| s.to_string()).collect();
    assert_eq!(capabilities_added(c), expected);
    let dropped = c
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref())
        .and_then(|caps| caps.drop.clone());
    assert_eq!(dropped, Some(vec!["ALL".to_string()]));
    // Pinning creates files under /sys/fs/bpf, which the runtime's default AppArmor profile
    // denies.
    let apparmor = c
        .security_context
        .as_ref()
        .and_then(|s| s.app_armor_profile.as_ref())
        .map(|p| p.type_.as_str());
    assert_eq!(apparmor, Some("Unconfined"));
}

#[test]
fn bpffs_cgroup_and_proc_come_from_the_host() {
    let o = load();
    let pod = pod_spec(agent_daemon_set(&o));
    let c = agent_container(pod);

    let bpf = mount_at(c, "/sys/fs/bpf");
    let bpf_volume = host_path(pod, &bpf.name);
    assert_eq!(bpf_volume.path, "/sys/fs/bpf");
    assert_eq!(bpf_volume.type_.as_deref(), Some("DirectoryOrCreate"));
    assert_ne!(bpf.read_only, Some(true), "the agent pins into /sys/fs/bpf");
    // The agent sees the host's bpffs...
    assert!(
        matches!(
            bpf.mount_propagation.as_deref(),
            Some("HostToContainer" | "Bidirectional")
        ),
        "{bpf:?}"
    );
    // ...and something mounts bpffs on the host (Bidirectional) before the agent starts, so
    // the pins outlive the agent's container.
    let mounter = pod
        .init_containers
        .iter()
        .flatten()
        .find(|i| {
            i.volume_mounts.iter().flatten().any(|m| {
                m.name == bpf.name
                    && m.mount_path == "/sys/fs/bpf"
                    && m.mount_propagation.as_deref() == Some("Bidirectional")
            })
        })
        .expect("an init container that mounts bpffs with Bidirectional propagation");
    let script = mounter
        .command
        .iter()
        .chain(&mounter.args)
        .flatten()
        .cloned()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(script.contains("mount -t bpf"), "{script}");

    let cgroup = mount_at(c, "/sys/fs/cgroup");
    assert_eq!(host_path(pod, &cgroup.name).path, "/sys/fs/cgroup");
    assert_eq!(cgroup.read_only, Some(true));

    let proc = mount_at(c, "/host/proc");
    assert_eq!(host_path(pod, &proc.name).path, "/proc");
    assert_eq!(proc.read_only, Some(true));
}

/// Rules the API server applies when it admits the pod, which a typed parse does not see.
#[test]
fn daemonset_passes_pod_validation_rules() {
    let o = load();
    let pod = pod_spec(agent_daemon_set(&o));
    let volumes: BTreeSet<&str> = pod
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    for c in all_containers(pod) {
        for m in c.volume_mounts.iter().flatten() {
            assert!(
                volumes.contains(m.name.as_str()),
                "{}: no volume {}",
                c.name,
                m.name
            );
            // "Bidirectional mount propagation is available only to privileged containers".
            if m.mount_propagation.as_deref() == Some("Bidirectional") {
                assert!(
                    is_privileged(c),
                    "{}: Bidirectional needs privileged",
                    c.name
                );
            }
        }
        // "cannot set allowPrivilegeEscalation to false and privileged to true" and "... and
        // capabilities.Add CAP_SYS_ADMIN".
        let no_escalation = c
            .security_context
            .as_ref()
            .and_then(|s| s.allow_privilege_escalation)
            == Some(false);
        if no_escalation {
            assert!(!is_privileged(c), "{}", c.name);
            assert!(!capabilities_added(c).contains("SYS_ADMIN"), "{}", c.name);
        }
        // With host networking a host port must equal its container port.
        for p in c.ports.iter().flatten() {
            assert!(
                p.host_port.is_none_or(|h| h == p.container_port),
                "{}: {p:?}",
                c.name
            );
        }
    }
}

#[test]
fn kind_cluster_has_no_kube_proxy() {
    let o = load();
    let (file, cluster) = &o.kind_clusters[0];
    assert_eq!(file, "kind/kind-config.yaml");
    // Read as plain YAML too, as kind reads it.
    let raw: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(deploy_dir().join(file)).unwrap()).unwrap();
    assert_eq!(raw["networking"]["kubeProxyMode"].as_str(), Some("none"));
    assert_eq!(
        cluster
            .networking
            .as_ref()
            .and_then(|n| n.kube_proxy_mode.as_deref()),
        Some("none")
    );
    let roles: Vec<&str> = cluster.nodes.iter().map(|n| n.role.as_str()).collect();
    assert_eq!(roles, ["control-plane", "worker"]);
}

#[test]
fn smoke_services_select_the_smoke_pods() {
    let o = load();
    assert!(
        o.namespaces
            .iter()
            .any(|(f, n)| f == "kind/smoke.yaml" && name_of(&n.metadata) == SMOKE_NAMESPACE)
    );
    let in_smoke =
        |file: &str, meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
            file == "kind/smoke.yaml" && meta.namespace.as_deref() == Some(SMOKE_NAMESPACE)
        };
    let deployments: Vec<_> = o
        .deployments
        .iter()
        .filter(|(f, d)| in_smoke(f, &d.metadata))
        .map(|(_, d)| d)
        .collect();
    assert_eq!(deployments.len(), 1);
    let spec = &deployments[0].spec;
    assert_eq!(spec.replicas, Some(2));
    let labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let pod = spec.template.spec.as_ref().unwrap();
    let c = &pod.containers[0];
    assert!(
        c.image
            .as_deref()
            .is_some_and(|i| i.starts_with("registry.k8s.io/e2e-test-images/agnhost:")),
        "{:?}",
        c.image
    );
    let args = c.args.as_deref().unwrap_or_default();
    assert_eq!(args, ["netexec", "--http-port=8080"]);

    let services: Vec<_> = o
        .services
        .iter()
        .filter(|(f, s)| in_smoke(f, &s.metadata))
        .map(|(_, s)| s)
        .collect();
    let mut types = BTreeSet::new();
    for svc in &services {
        let spec = svc.spec.as_ref().unwrap();
        let selector = spec.selector.clone().unwrap_or_default();
        assert!(
            !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v)),
            "{:?} selects {selector:?}, the pods have {labels:?}",
            svc.metadata.name
        );
        let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
        types.insert(ty.to_string());
        for port in spec.ports.iter().flatten() {
            assert_eq!(port.port, 80);
            let target = port
                .target_port
                .clone()
                .unwrap_or(IntOrString::Int(port.port));
            assert_eq!(resolve_port(c, &target), Some(8080), "{port:?}");
            if ty == "NodePort" {
                let node_port = port.node_port.expect("a fixed nodePort for the CI check");
                assert!((30000..=32767).contains(&node_port), "{node_port}");
            }
        }
    }
    assert_eq!(
        types,
        BTreeSet::from(["ClusterIP".into(), "NodePort".into()])
    );
}

/// The kind workflow refers to these manifests by path, image and port; keep them in step.
#[test]
fn kind_workflow_matches_the_manifests() {
    let o = load();
    let workflow = std::fs::read_to_string(repo_root().join(".github/workflows/kind.yml"))
        .expect("the kind workflow");
    for f in [
        "deploy/rbac.yaml",
        "deploy/daemonset.yaml",
        "deploy/kind/kind-config.yaml",
        "deploy/kind/smoke.yaml",
    ] {
        assert!(workflow.contains(f), "the workflow does not use {f}");
        assert!(repo_root().join(f).is_file(), "{f}");
    }
    let image = agent_container(pod_spec(agent_daemon_set(&o)))
        .image
        .clone()
        .unwrap();
    assert!(
        workflow.contains(&format!("s#{image}#")),
        "the workflow must replace the image {image}"
    );
    let env_from: Vec<String> = agent_container(pod_spec(agent_daemon_set(&o)))
        .env_from
        .iter()
        .flatten()
        .filter_map(|e| e.config_map_ref.as_ref().map(|c| c.name.clone()))
        .collect();
    for cm in &env_from {
        assert!(
            workflow.contains(cm.as_str()),
            "the workflow does not create {cm}"
        );
    }
    let node_ports: Vec<i32> = o
        .services
        .iter()
        .flat_map(|(_, s)| s.spec.iter().flat_map(|s| s.ports.iter().flatten()))
        .filter_map(|p| p.node_port)
        .collect();
    for p in node_ports {
        assert!(
            workflow.contains(&format!(":{p}/")),
            "the workflow does not probe :{p}"
        );
    }
    assert!(workflow.contains("echo.lb-smoke.svc.cluster.local:80"));
}
