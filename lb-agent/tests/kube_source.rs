//! `source::kube::watch_cluster` against a scripted fake API server (kube's tower-test mock):
//! the initial LISTs, watch events, a watch body that ends (resumed from the last
//! resourceVersion) and a 410 Gone (relist, after which vanished objects are gone), all the
//! way through `translate` to the desired frontends and backends.
//!
//! The fake server answers each request from a per-resource script. The Service and
//! EndpointSlice watchers run concurrently, so their requests interleave in any order; the
//! server dispatches on the request path and only checks the order within one resource.
//!
//! An "open" watch is a WATCH request the server has not answered yet (it is parked): the
//! watcher waits on it just as it would on a silent stream. Answering it delivers a batch of
//! newline-delimited events in a body that then ends, which is also how a real watch ends on
//! its server-side timeout.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use lb_agent::k8s::Snapshot;
use lb_agent::k8s::translate::translate;
use lb_agent::metrics::Metrics;
use lb_agent::source::kube::watch_cluster;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::timeout;
use tower_test::mock::{Handle, SendResponse};

/// Upper bound for anything the test waits on. Generous: the one real delay is the watcher's
/// backoff after an error (about a second).
const STEP: Duration = Duration::from_secs(10);

// ------------------------------------------------------------------------------------------
// Cluster objects, as the API server would serve them.
// ------------------------------------------------------------------------------------------

fn service(name: &str, cluster_ip: &str, port_name: &str, port: u16, rv: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "shop", "resourceVersion": rv},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": cluster_ip,
            "clusterIPs": [cluster_ip],
            "ports": [{"name": port_name, "port": port, "protocol": "TCP", "targetPort": port_name}]
        }
    })
}

fn slice(name: &str, svc: &str, port_name: &str, port: u16, addrs: &[&str], rv: &str) -> Value {
    let endpoints: Vec<Value> = addrs
        .iter()
        .map(|a| json!({"addresses": [a], "conditions": {"ready": true}}))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": "shop",
            "resourceVersion": rv,
            "labels": {"kubernetes.io/service-name": svc}
        },
        "addressType": "IPv4",
        "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
        "endpoints": endpoints
    })
}

fn list(kind: &str, api_version: &str, rv: &str, items: Vec<Value>) -> Value {
    json!({
        "kind": kind,
        "apiVersion": api_version,
        "metadata": {"resourceVersion": rv},
        "items": items
    })
}

fn service_list(rv: &str, items: Vec<Value>) -> Value {
    list("ServiceList", "v1", rv, items)
}

fn slice_list(rv: &str, items: Vec<Value>) -> Value {
    list("EndpointSliceList", "discovery.k8s.io/v1", rv, items)
}

fn event(type_: &str, object: Value) -> Value {
    json!({"type": type_, "object": object})
}

/// What the API server sends when a watch's resourceVersion has been compacted away.
fn gone() -> Value {
    event(
        "ERROR",
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": "too old resource version: 103 (150)",
            "reason": "Expired",
            "code": 410
        }),
    )
}

// ------------------------------------------------------------------------------------------
// The fake API server.
// ------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Services,
    Slices,
    Nodes,
}

/// One request to the fake server, routed.
struct Call {
    kind: Kind,
    watch: bool,
    /// Query pairs as sent (still percent-encoded).
    query: BTreeMap<String, String>,
    uri: String,
    reply: SendResponse<Response<Body>>,
}

/// What the server expects next from one resource's watcher, and how it answers.
enum Expect {
    /// A LIST; answered with this body.
    List(Value),
    /// A WATCH from this resourceVersion; parked until [`FakeApiServer::push`].
    Watch { from: &'static str },
}

struct FakeApiServer {
    handle: Handle<Request<Body>, Response<Body>>,
    /// Watches that have been asked for and not answered yet, by resource.
    parked: BTreeMap<Kind, Call>,
    /// Longest wait for the agent's next request.
    step: Duration,
}

fn route(req: &Request<Body>) -> (Kind, bool, BTreeMap<String, String>) {
    assert_eq!(req.method(), Method::GET, "{}", req.uri());
    let kind = match req.uri().path() {
        "/api/v1/services" => Kind::Services,
        "/apis/discovery.k8s.io/v1/endpointslices" => Kind::Slices,
        "/api/v1/nodes" => Kind::Nodes,
        other => panic!("unexpected request path {other} in {}", req.uri()),
    };
    let query: BTreeMap<String, String> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (p.to_string(), String::new()),
        })
        .collect();
    let watch = query.get("watch").map(String::as_str) == Some("true");
    (kind, watch, query)
}

fn ok(body: String) -> Response<Body> {
    let mut resp = Response::new(Body::from(body.into_bytes()));
    *resp.status_mut() = StatusCode::OK;
    resp
}

impl FakeApiServer {
    async fn next_call(&mut self) -> Call {
        let (req, reply) = timeout(self.step, self.handle.next_request())
            .await
            .expect("timed out waiting for a request from the agent")
            .expect("the agent's client went away");
        let (kind, watch, query) = route(&req);
        Call {
            kind,
            watch,
            query,
            uri: req.uri().to_string(),
            reply,
        }
    }

    /// Answers requests in whatever order they come until each resource has gone through its
    /// script. A request a script does not expect fails the test.
    async fn serve(&mut self, scripts: Vec<(Kind, Vec<Expect>)>) {
        let mut scripts: BTreeMap<Kind, VecDeque<Expect>> =
            scripts.into_iter().map(|(k, s)| (k, s.into())).collect();
        while scripts.values().any(|s| !s.is_empty()) {
            let call = self.next_call().await;
            check_common(&call);
            let Some(step) = scripts.get_mut(&call.kind).and_then(VecDeque::pop_front) else {
                panic!("unexpected request for {:?}: {}", call.kind, call.uri);
            };
            match step {
                Expect::List(body) => {
                    assert!(!call.watch, "expected a LIST, got {}", call.uri);
                    assert_eq!(
                        call.query.get("limit").map(String::as_str),
                        Some("500"),
                        "{}",
                        call.uri
                    );
                    assert!(!call.query.contains_key("continue"), "{}", call.uri);
                    call.reply.send_response(ok(body.to_string()));
                }
                Expect::Watch { from } => {
                    assert!(call.watch, "expected a WATCH, got {}", call.uri);
                    assert_eq!(
                        call.query.get("resourceVersion").map(String::as_str),
                        Some(from),
                        "watch should resume from resourceVersion {from}: {}",
                        call.uri
                    );
                    assert_eq!(
                        call.query.get("allowWatchBookmarks").map(String::as_str),
                        Some("true"),
                        "{}",
                        call.uri
                    );
                    let kind = call.kind;
                    let previous = self.parked.insert(kind, call);
                    assert!(previous.is_none(), "two open watches for {kind:?}");
                }
            }
        }
    }

    /// Answers the open watch of `kind` with these events; the body ends after them.
    fn push(&mut self, kind: Kind, events: &[Value]) {
        let call = self
            .parked
            .remove(&kind)
            .unwrap_or_else(|| panic!("no open watch for {kind:?}"));
        let body: String = events.iter().map(|e| format!("{e}\n")).collect();
        call.reply.send_response(ok(body));
    }

    /// Fails if the agent sends anything within a short while.
    async fn expect_quiet(&mut self) {
        if let Ok(Some((req, _))) =
            timeout(Duration::from_millis(300), self.handle.next_request()).await
        {
            panic!("unexpected request: {} {}", req.method(), req.uri());
        }
    }
}

/// Checks every request makes: the EndpointSlice watcher selects on the service-name label
/// (list and watch alike); the Service watcher selects nothing.
fn check_common(call: &Call) {
    let selector = call.query.get("labelSelector").map(String::as_str);
    match call.kind {
        Kind::Slices => assert_eq!(
            selector,
            Some("kubernetes.io%2Fservice-name"),
            "EndpointSlice request without the service-name selector: {}",
            call.uri
        ),
        Kind::Services => assert_eq!(selector, None, "{}", call.uri),
        Kind::Nodes => {
            assert_eq!(selector, None, "{}", call.uri);
            assert_eq!(
                call.query.get("fieldSelector").map(String::as_str),
                Some("metadata.name%3Dnode-a"),
                "the Node watcher must select this node only: {}",
                call.uri
            );
        }
    }
}

// ------------------------------------------------------------------------------------------
// Looking at what the agent publishes.
// ------------------------------------------------------------------------------------------

/// The parts of a snapshot the test cares about: Service names, and each EndpointSlice's
/// addresses.
#[derive(Debug, PartialEq, Eq)]
struct View {
    services: Vec<String>,
    slices: BTreeMap<String, Vec<String>>,
}

fn view(s: &Snapshot) -> View {
    let mut services: Vec<String> = s
        .services
        .iter()
        .map(|s| s.metadata.name.clone().unwrap_or_default())
        .collect();
    services.sort();
    let slices = s
        .slices
        .iter()
        .map(|sl| {
            let mut addrs: Vec<String> = sl
                .endpoints
                .iter()
                .flatten()
                .flat_map(|e| e.addresses.iter().cloned())
                .collect();
            addrs.sort();
            (sl.metadata.name.clone().unwrap_or_default(), addrs)
        })
        .collect();
    View { services, slices }
}

fn expect_view(services: &[&str], slices: &[(&str, &[&str])]) -> View {
    View {
        services: services.iter().map(|s| s.to_string()).collect(),
        slices: slices
            .iter()
            .map(|(n, a)| (n.to_string(), a.iter().map(|a| a.to_string()).collect()))
            .collect(),
    }
}

/// The desired state a snapshot translates to: frontend -> (service, backends).
fn desired(s: &Snapshot) -> BTreeMap<String, (String, Vec<String>)> {
    let t = translate(s);
    assert!(
        t.problems.is_empty(),
        "translation problems: {:?}",
        t.problems
    );
    t.desired
        .frontends
        .iter()
        .map(|(f, e)| {
            assert_eq!(f.scope, lb_common::scope::INTERNAL);
            (
                f.to_string(),
                (
                    e.service.clone(),
                    e.backends.iter().map(|b| b.to_string()).collect(),
                ),
            )
        })
        .collect()
}

fn frontends(entries: &[(&str, &str, &[&str])]) -> BTreeMap<String, (String, Vec<String>)> {
    entries
        .iter()
        .map(|(f, svc, backends)| {
            (
                f.to_string(),
                (
                    svc.to_string(),
                    backends.iter().map(|b| b.to_string()).collect(),
                ),
            )
        })
        .collect()
}

struct Published {
    rx: watch::Receiver<Option<Snapshot>>,
    /// Views of every snapshot this side has looked at, in order.
    seen: Vec<View>,
}

impl Published {
    /// Waits until the agent publishes a snapshot that looks like `want`.
    async fn wait_for(&mut self, what: &str, want: &View) -> Snapshot {
        let seen = &mut self.seen;
        let res = timeout(
            STEP,
            self.rx.wait_for(|s| match s {
                Some(s) => {
                    let v = view(s);
                    let hit = &v == want;
                    seen.push(v);
                    hit
                }
                None => false,
            }),
        )
        .await;
        match res {
            Ok(Ok(s)) => s.clone().expect("matched a published snapshot"),
            Ok(Err(_)) => panic!("{what}: watch_cluster dropped its sender"),
            Err(_) => panic!(
                "{what}: timed out; wanted {want:?}, last published {:?}",
                self.seen.last()
            ),
        }
    }
}

// ------------------------------------------------------------------------------------------
// The test.
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn cluster_objects_flow_from_the_api_server_to_the_desired_state() {
    let (mock, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(mock, "default");
    let (tx, rx) = watch::channel(None);
    let metrics = Metrics::new();
    let agent = tokio::spawn(watch_cluster(client, tx, metrics.clone()));
    let mut api = FakeApiServer {
        handle,
        parked: BTreeMap::new(),
        step: STEP,
    };
    let mut published = Published {
        rx,
        seen: Vec::new(),
    };

    // 1. Initial lists (at resourceVersion 100), then each watcher opens a watch from there.
    api.serve(vec![
        (
            Kind::Services,
            vec![
                Expect::List(service_list(
                    "100",
                    vec![
                        service("web", "10.96.0.20", "http", 80, "90"),
                        service("db", "10.96.0.30", "pg", 5432, "91"),
                    ],
                )),
                Expect::Watch { from: "100" },
            ],
        ),
        (
            Kind::Slices,
            vec![
                Expect::List(slice_list(
                    "100",
                    vec![
                        slice("web-abc", "web", "http", 8080, &["10.244.1.2"], "92"),
                        slice("db-xyz", "db", "pg", 5432, &["10.244.3.3"], "93"),
                    ],
                )),
                Expect::Watch { from: "100" },
            ],
        ),
    ])
    .await;
    let snap = published
        .wait_for(
            "after the initial lists",
            &expect_view(
                &["db", "web"],
                &[("db-xyz", &["10.244.3.3"]), ("web-abc", &["10.244.1.2"])],
            ),
        )
        .await;
    assert_eq!(
        desired(&snap),
        frontends(&[
            ("10.96.0.20:80/TCP", "shop/web", &["10.244.1.2:8080"]),
            ("10.96.0.30:5432/TCP", "shop/db", &["10.244.3.3:5432"]),
        ])
    );

    // 2. A second endpoint for web. The watch body ends after the event: the watcher resumes
    //    from the event's resourceVersion without relisting.
    api.push(
        Kind::Slices,
        &[event(
            "MODIFIED",
            slice(
                "web-abc",
                "web",
                "http",
                8080,
                &["10.244.1.2", "10.244.2.2"],
                "101",
            ),
        )],
    );
    api.serve(vec![(Kind::Slices, vec![Expect::Watch { from: "101" }])])
        .await;
    let snap = published
        .wait_for(
            "after the EndpointSlice was modified",
            &expect_view(
                &["db", "web"],
                &[
                    ("db-xyz", &["10.244.3.3"]),
                    ("web-abc", &["10.244.1.2", "10.244.2.2"]),
                ],
            ),
        )
        .await;
    assert_eq!(
        desired(&snap),
        frontends(&[
            (
                "10.96.0.20:80/TCP",
                "shop/web",
                &["10.244.1.2:8080", "10.244.2.2:8080"]
            ),
            ("10.96.0.30:5432/TCP", "shop/db", &["10.244.3.3:5432"]),
        ])
    );

    // 3. db is deleted and cache added, in one watch body. Its slice has not appeared yet, so
    //    cache is programmed with no backends (connections to it are rejected).
    api.push(
        Kind::Services,
        &[
            event("DELETED", service("db", "10.96.0.30", "pg", 5432, "102")),
            event(
                "ADDED",
                service("cache", "10.96.0.40", "redis", 6379, "103"),
            ),
        ],
    );
    api.serve(vec![(Kind::Services, vec![Expect::Watch { from: "103" }])])
        .await;
    let snap = published
        .wait_for(
            "after the Service was deleted",
            &expect_view(
                &["cache", "web"],
                &[
                    ("db-xyz", &["10.244.3.3"]),
                    ("web-abc", &["10.244.1.2", "10.244.2.2"]),
                ],
            ),
        )
        .await;
    assert_eq!(
        desired(&snap),
        frontends(&[
            (
                "10.96.0.20:80/TCP",
                "shop/web",
                &["10.244.1.2:8080", "10.244.2.2:8080"]
            ),
            ("10.96.0.40:6379/TCP", "shop/cache", &[]),
        ])
    );
    assert_eq!(metrics.watch_errors.get(), 0);

    // 4. Both watches are expired (410 Gone). While they were broken, cache, db-xyz and one of
    //    web's endpoints went away. Each watcher relists (after its backoff) and watches anew;
    //    the relisted state replaces the old one.
    api.push(Kind::Services, &[gone()]);
    api.push(Kind::Slices, &[gone()]);
    api.serve(vec![
        (
            Kind::Services,
            vec![
                Expect::List(service_list(
                    "200",
                    vec![service("web", "10.96.0.20", "http", 80, "90")],
                )),
                Expect::Watch { from: "200" },
            ],
        ),
        (
            Kind::Slices,
            vec![
                Expect::List(slice_list(
                    "200",
                    vec![slice(
                        "web-abc",
                        "web",
                        "http",
                        8080,
                        &["10.244.2.2"],
                        "150",
                    )],
                )),
                Expect::Watch { from: "200" },
            ],
        ),
    ])
    .await;
    let snap = published
        .wait_for(
            "after the relist",
            &expect_view(&["web"], &[("web-abc", &["10.244.2.2"])]),
        )
        .await;
    assert_eq!(
        desired(&snap),
        frontends(&[("10.96.0.20:80/TCP", "shop/web", &["10.244.2.2:8080"])])
    );
    assert_eq!(metrics.watch_errors.get(), 2, "one per expired watch");

    // Relists only ever replace the view: no snapshot the test saw was emptied on the way.
    for v in &published.seen {
        assert!(
            !v.services.is_empty() && !v.slices.is_empty(),
            "an emptied snapshot was published: {:?}",
            published.seen
        );
    }

    // The agent keeps watching (both watches are open) and asks for nothing else.
    api.expect_quiet().await;
    assert!(!agent.is_finished(), "watch_cluster exited");

    // Once nobody listens any more, the next change ends watch_cluster cleanly.
    drop(published);
    api.push(
        Kind::Services,
        &[event(
            "ADDED",
            service("cache", "10.96.0.40", "redis", 6379, "201"),
        )],
    );
    timeout(STEP, agent)
        .await
        .expect("watch_cluster did not return after its receiver was dropped")
        .expect("watch_cluster panicked")
        .expect("watch_cluster failed");
}

// ------------------------------------------------------------------------------------------
// Robustness: outages, bursts, this node. These run on tokio's paused clock: when every task
// waits, time jumps to the next timer, so seconds of backoff take no real time and the
// debounce delay is measured exactly (virtual time, not performance).
// ------------------------------------------------------------------------------------------

use std::collections::BTreeSet;

use lb_agent::app;
use lb_agent::k8s::translate::NodeContext;
use lb_agent::source::kube::{ClusterOptions, DEBOUNCE, watch_cluster_with};
use lb_agent::sync::{Capacity, MapState, Syncer};

/// Virtual-time bound for the paused-clock tests (backoff with jitter can reach 30 s).
const PAUSED_STEP: Duration = Duration::from_secs(120);

fn node(name: &str, zone: &str, rv: &str, ready: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "resourceVersion": rv,
            "labels": {"topology.kubernetes.io/zone": zone, "kubernetes.io/hostname": name}},
        "status": {"conditions": [{"type": "Ready", "status": ready}]}
    })
}

fn node_list(rv: &str, items: Vec<Value>) -> Value {
    list("NodeList", "v1", rv, items)
}

/// A Status body as the API server sends with an error code.
fn status(code: u16, reason: &str) -> Response<Body> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": reason, "reason": reason, "code": code});
    let mut resp = Response::new(Body::from(body.to_string().into_bytes()));
    *resp.status_mut() = StatusCode::from_u16(code).expect("a valid status code");
    resp
}

struct Harness {
    api: FakeApiServer,
    published: Published,
    metrics: Metrics,
    agent: tokio::task::JoinHandle<anyhow::Result<()>>,
}

fn start(node_name: Option<&str>) -> Harness {
    let (mock, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(mock, "default");
    let (tx, rx) = watch::channel(None);
    let metrics = Metrics::new();
    let opts = ClusterOptions {
        node_name: node_name.map(str::to_owned),
    };
    let agent = tokio::spawn(watch_cluster_with(client, tx, metrics.clone(), opts));
    Harness {
        api: FakeApiServer {
            handle,
            parked: BTreeMap::new(),
            step: PAUSED_STEP,
        },
        published: Published {
            rx,
            seen: Vec::new(),
        },
        metrics,
        agent,
    }
}

impl Published {
    /// Waits (paused clock) for a snapshot like `want`.
    async fn wait_paused(&mut self, what: &str, want: &View) -> Snapshot {
        let seen = &mut self.seen;
        match timeout(
            PAUSED_STEP,
            self.rx.wait_for(|s| {
                s.as_ref().is_some_and(|s| {
                    let v = view(s);
                    let hit = &v == want;
                    seen.push(v);
                    hit
                })
            }),
        )
        .await
        {
            Ok(Ok(s)) => s.clone().expect("matched a published snapshot"),
            Ok(Err(_)) => panic!("{what}: watch_cluster dropped its sender"),
            Err(_) => panic!(
                "{what}: wanted {want:?}, last published {:?}",
                self.seen.last()
            ),
        }
    }
}

/// The maps as frontend -> backends, from a datapath state.
fn programmed(state: &MapState) -> BTreeMap<String, Vec<String>> {
    lb_agent::inspect::view(state)
        .frontends
        .into_iter()
        .map(|f| {
            (
                format!("{}:{}/{}", f.address, f.port, f.protocol),
                f.backends
                    .iter()
                    .map(|b| format!("{}:{}", b.address, b.port))
                    .collect(),
            )
        })
        .collect()
}

fn backend_ids(state: &MapState) -> BTreeMap<String, u32> {
    state
        .backends
        .iter()
        .map(|(id, b)| {
            let addr = lb_agent::sync::map_state::addr_from_map(&b.addr);
            (format!("{addr}:{}", b.port), *id)
        })
        .collect()
}

/// Feeds a snapshot through translation into the in-memory maps, as the run loop does.
fn sync(syncer: &mut Syncer<MapState>, snap: &Snapshot, metrics: &Metrics) {
    let mut reported = BTreeSet::new();
    app::apply(
        syncer,
        snap,
        &NodeContext::default(),
        metrics,
        &mut reported,
    );
    assert!(syncer.in_sync());
}

#[tokio::test(start_paused = true)]
async fn an_api_outage_of_seconds_keeps_the_maps_and_recovery_applies_only_the_diff() {
    let Harness {
        mut api,
        mut published,
        metrics,
        agent,
    } = start(None);
    api.serve(vec![
        (
            Kind::Services,
            vec![
                Expect::List(service_list(
                    "100",
                    vec![
                        service("web", "10.96.0.20", "http", 80, "90"),
                        service("db", "10.96.0.30", "pg", 5432, "91"),
                    ],
                )),
                Expect::Watch { from: "100" },
            ],
        ),
        (
            Kind::Slices,
            vec![
                Expect::List(slice_list(
                    "100",
                    vec![
                        slice(
                            "web-abc",
                            "web",
                            "http",
                            8080,
                            &["10.244.1.2", "10.244.2.2"],
                            "92",
                        ),
                        slice("db-xyz", "db", "pg", 5432, &["10.244.3.3"], "93"),
                    ],
                )),
                Expect::Watch { from: "100" },
            ],
        ),
    ])
    .await;
    let snap = published
        .wait_paused(
            "initial lists",
            &expect_view(
                &["db", "web"],
                &[
                    ("db-xyz", &["10.244.3.3"]),
                    ("web-abc", &["10.244.1.2", "10.244.2.2"]),
                ],
            ),
        )
        .await;
    let mut syncer = Syncer::new(MapState::default(), Capacity::default());
    sync(&mut syncer, &snap, &metrics);
    let before = syncer.datapath().clone();
    let ids_before = backend_ids(&before);
    assert_eq!(
        programmed(&before),
        BTreeMap::from([
            (
                "10.96.0.20:80/TCP".to_string(),
                vec!["10.244.1.2:8080".to_string(), "10.244.2.2:8080".into()]
            ),
            ("10.96.0.30:5432/TCP".into(), vec!["10.244.3.3:5432".into()]),
        ])
    );
    let published_before = metrics.snapshots_published.get();

    // The outage: both watch bodies end (the connection drops) and for five seconds every
    // request fails, half with 503s from a load balancer in front of the API server, half as
    // refused connections. The watchers retry the WATCH from where they were, with backoff.
    api.push(Kind::Services, &[]);
    api.push(Kind::Slices, &[]);
    let outage_start = tokio::time::Instant::now();
    let mut failures: BTreeMap<Kind, usize> = BTreeMap::new();
    let mut n = 0;
    while outage_start.elapsed() < Duration::from_secs(5)
        || failures.values().copied().min().unwrap_or(0) < 2
        || failures.len() < 2
    {
        let call = api.next_call().await;
        check_common(&call);
        assert!(
            call.watch,
            "a watcher that had listed relists only after a 410: {}",
            call.uri
        );
        assert_eq!(
            call.query.get("resourceVersion").map(String::as_str),
            Some("100"),
            "retries resume from the last resourceVersion: {}",
            call.uri
        );
        *failures.entry(call.kind).or_default() += 1;
        n += 1;
        if n % 2 == 0 {
            call.reply.send_response(status(503, "ServiceUnavailable"));
        } else {
            call.reply.send_error(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "connection refused",
            ));
        }
    }
    assert!(outage_start.elapsed() >= Duration::from_secs(5));
    assert!(metrics.watch_errors.get() >= 4, "{failures:?}");
    // Nothing was published during the outage, so the maps were never touched.
    assert_eq!(metrics.snapshots_published.get(), published_before);
    assert!(!published.rx.has_changed().expect("watch_cluster runs"));

    // The API server is back. The Services watch resumes and carries what happened meanwhile
    // (db deleted); the EndpointSlice watch finds its resourceVersion compacted away (410) and
    // relists: db-xyz and 10.244.1.2 are gone, 10.244.4.4 is new.
    api.serve(vec![
        (Kind::Services, vec![Expect::Watch { from: "100" }]),
        (Kind::Slices, vec![Expect::Watch { from: "100" }]),
    ])
    .await;
    api.push(
        Kind::Services,
        &[event(
            "DELETED",
            service("db", "10.96.0.30", "pg", 5432, "180"),
        )],
    );
    api.push(Kind::Slices, &[gone()]);
    api.serve(vec![
        (Kind::Services, vec![Expect::Watch { from: "180" }]),
        (
            Kind::Slices,
            vec![
                Expect::List(slice_list(
                    "200",
                    vec![slice(
                        "web-abc",
                        "web",
                        "http",
                        8080,
                        &["10.244.2.2", "10.244.4.4"],
                        "190",
                    )],
                )),
                Expect::Watch { from: "200" },
            ],
        ),
    ])
    .await;
    let snap = published
        .wait_paused(
            "after the outage",
            &expect_view(&["web"], &[("web-abc", &["10.244.2.2", "10.244.4.4"])]),
        )
        .await;
    for v in &published.seen {
        assert!(!v.services.is_empty() && !v.slices.is_empty(), "{v:?}");
    }
    let writes_before = metrics.syncs.get();
    sync(&mut syncer, &snap, &metrics);
    assert_eq!(metrics.syncs.get(), writes_before + 1);
    let after = syncer.datapath().clone();
    assert_eq!(
        programmed(&after),
        BTreeMap::from([(
            "10.96.0.20:80/TCP".to_string(),
            vec!["10.244.2.2:8080".to_string(), "10.244.4.4:8080".into()]
        )])
    );
    // Only the difference was written: the backend that stayed kept its id, and the maps hold
    // nothing of db or of the pod that left.
    let ids_after = backend_ids(&after);
    assert_eq!(ids_after["10.244.2.2:8080"], ids_before["10.244.2.2:8080"]);
    assert_eq!(ids_after.len(), 2, "{ids_after:?}");
    assert_eq!(after.rev_nat.len(), 1, "{:?}", after.rev_nat);
    let web_rev = before
        .frontends()
        .find(|(k, _)| k.port == 80)
        .map(|(_, v)| v.rev_nat_id);
    assert_eq!(
        after.frontends().next().map(|(_, v)| v.rev_nat_id),
        web_rev,
        "web kept its reverse-NAT id"
    );
    api.expect_quiet().await;
    assert!(!agent.is_finished());
}

#[tokio::test(start_paused = true)]
async fn a_burst_folds_into_few_snapshots_and_a_single_change_is_not_held_back() {
    let Harness {
        mut api,
        mut published,
        metrics,
        agent: _agent,
    } = start(None);
    api.serve(vec![
        (
            Kind::Services,
            vec![
                Expect::List(service_list(
                    "100",
                    vec![service("web", "10.96.0.20", "http", 80, "90")],
                )),
                Expect::Watch { from: "100" },
            ],
        ),
        (
            Kind::Slices,
            vec![
                Expect::List(slice_list(
                    "100",
                    vec![slice("web-abc", "web", "http", 8080, &["10.244.1.2"], "92")],
                )),
                Expect::Watch { from: "100" },
            ],
        ),
    ])
    .await;
    published
        .wait_paused(
            "initial lists",
            &expect_view(&["web"], &[("web-abc", &["10.244.1.2"])]),
        )
        .await;

    // One EndpointSlice change: published one debounce interval later, not after the burst
    // window a busier cluster would need.
    let t0 = tokio::time::Instant::now();
    let before = metrics.snapshots_published.get();
    api.push(
        Kind::Slices,
        &[event(
            "MODIFIED",
            slice("web-abc", "web", "http", 8080, &["10.244.1.9"], "101"),
        )],
    );
    published
        .wait_paused(
            "one change",
            &expect_view(&["web"], &[("web-abc", &["10.244.1.9"])]),
        )
        .await;
    let took = t0.elapsed();
    assert!(
        took <= DEBOUNCE + Duration::from_millis(5),
        "a single change waited {took:?} (virtual) for more"
    );
    assert_eq!(metrics.snapshots_published.get(), before + 1);

    // A rollout: 10 watch bodies 5 ms apart, 50 events each (every pod of the slice replaced
    // 500 times). The last state wins and the whole burst costs a handful of snapshots.
    const BODIES: u32 = 10;
    const EVENTS: u32 = 50;
    let gap = Duration::from_millis(5);
    let before = metrics.snapshots_published.get();
    let mut rv = 101u32;
    let mut last = String::new();
    for _ in 0..BODIES {
        api.serve(vec![(
            Kind::Slices,
            vec![Expect::Watch {
                from: Box::leak(rv.to_string().into_boxed_str()),
            }],
        )])
        .await;
        let events: Vec<Value> = (0..EVENTS)
            .map(|_| {
                rv += 1;
                last = format!("10.244.{}.{}", rv / 250, rv % 250 + 1);
                event(
                    "MODIFIED",
                    slice("web-abc", "web", "http", 8080, &[&last], &rv.to_string()),
                )
            })
            .collect();
        api.push(Kind::Slices, &events);
        tokio::time::sleep(gap).await;
    }
    published
        .wait_paused(
            "after the burst",
            &expect_view(&["web"], &[("web-abc", &[last.as_str()])]),
        )
        .await;
    let snapshots = metrics.snapshots_published.get() - before;
    let span = gap * BODIES;
    let bound = (span.as_millis() / DEBOUNCE.as_millis()) as u64 + 2;
    assert!(
        (1..=bound).contains(&snapshots),
        "{} events over {span:?} made {snapshots} snapshots (at most {bound} expected)",
        BODIES * EVENTS
    );
}

#[tokio::test(start_paused = true)]
async fn this_nodes_zone_is_watched_and_only_zone_changes_publish() {
    let Harness {
        mut api,
        mut published,
        metrics,
        agent: _agent,
    } = start(Some("node-a"));
    api.serve(vec![
        (
            Kind::Services,
            vec![
                Expect::List(service_list(
                    "100",
                    vec![service("web", "10.96.0.20", "http", 80, "90")],
                )),
                Expect::Watch { from: "100" },
            ],
        ),
        (
            Kind::Slices,
            vec![
                Expect::List(slice_list(
                    "100",
                    vec![slice("web-abc", "web", "http", 8080, &["10.244.1.2"], "92")],
                )),
                Expect::Watch { from: "100" },
            ],
        ),
        (
            Kind::Nodes,
            vec![
                Expect::List(node_list(
                    "100",
                    vec![node("node-a", "zone-1", "95", "True")],
                )),
                Expect::Watch { from: "100" },
            ],
        ),
    ])
    .await;
    let want = expect_view(&["web"], &[("web-abc", &["10.244.1.2"])]);
    let snap = published.wait_paused("initial lists", &want).await;
    assert_eq!(snap.zone(Some("node-a")), Some("zone-1"));
    assert_eq!(snap.nodes.len(), 1);

    // A status-only update (the kubelet rewrites its Node often): nothing to publish.
    let before = metrics.snapshots_published.get();
    api.push(
        Kind::Nodes,
        &[event("MODIFIED", node("node-a", "zone-1", "101", "False"))],
    );
    api.serve(vec![(Kind::Nodes, vec![Expect::Watch { from: "101" }])])
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(metrics.snapshots_published.get(), before);

    // The zone label changes: published.
    api.push(
        Kind::Nodes,
        &[event("MODIFIED", node("node-a", "zone-2", "102", "True"))],
    );
    api.serve(vec![(Kind::Nodes, vec![Expect::Watch { from: "102" }])])
        .await;
    let snap = timeout(
        PAUSED_STEP,
        published.rx.wait_for(|s| {
            s.as_ref()
                .is_some_and(|s| s.zone(Some("node-a")) == Some("zone-2"))
        }),
    )
    .await
    .expect("the new zone was published")
    .expect("watch_cluster runs")
    .clone()
    .expect("a snapshot");
    assert_eq!(view(&snap), want, "services and slices unchanged");
    assert_eq!(metrics.snapshots_published.get(), before + 1);
    api.expect_quiet().await;
}
