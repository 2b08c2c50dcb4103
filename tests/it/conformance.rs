//! The xDS conformance tool (`meshflow xds conformance`):
//! - against a real `meshflow serve`, driven through meshflow's own control adapter
//!   (`meshflow xds control --config-dir DIR`): every rule holds;
//! - against a small in-process toy server (delta and state of the world), right and then
//!   deliberately broken (one that resends NACKed versions, one that ignores unsubscribe, one
//!   that never removes, one that leaves absent names unanswered, one that ignores
//!   initial_resource_versions, one that sends assignments before clusters, one that ignores
//!   `*` for EDS, one that takes names for a wildcard, one that drops the names with `*`, one
//!   with a constant nonce; over state of the world, one that sends only what changed, one
//!   that ignores resource_names, one that resends a NACKed set): the rules those bugs break
//!   are reported broken, and hold on the right toy. So each of those checks can fail
//!   (thirteen of the sixteen; cluster-then-assignment and removal-after-referrers need a
//!   server of routes and warming, which the toy is not; `proxyless` needs API listeners,
//!   and its predicates are unit-tested in `src/xds/conformance/proxyless.rs`).

use crate::support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::google::protobuf::Any;
use futures_util::Stream;
use meshflow::xds::conformance::{self, Control, Outcome};
use prost::Message;
use serde_json::Value;
use support::Meshflow;
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

#[test]
fn meshflow_holds_every_rule_of_the_conformance_suite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let control = format!("{} xds control --config-dir {}", Meshflow::bin(), dir.path().display());
    // The adapter prepares the directory before the server starts.
    let status = Command::new("sh").arg("-c").arg(format!("{control} reset")).status().expect("run control");
    assert!(status.success(), "control reset: {status}");
    let mesh = Meshflow::serve(dir.path());
    let out = Command::new(Meshflow::bin())
        .args(["xds", "conformance", "--json", "--server", &mesh.xds_addr.to_string(), "--control", &control])
        .stdin(Stdio::null())
        .output()
        .expect("run meshflow xds conformance");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let outcomes: Vec<Value> = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!("conformance JSON: {e}\nstdout:\n{stdout}\nstderr:\n{}", String::from_utf8_lossy(&out.stderr))
    });
    let rules: BTreeSet<&str> = outcomes.iter().filter_map(|o| o["rule"].as_str()).collect();
    assert_eq!(rules.len(), conformance::RULES.len(), "every rule ran once: {rules:?}");
    let broken: Vec<String> = outcomes
        .iter()
        .filter(|o| o["held"] != Value::Bool(true))
        .map(|o| format!("{}: {}", o["rule"], o["detail"]))
        .collect();
    assert!(broken.is_empty(), "rules broken by meshflow:\n{}", broken.join("\n"));
    assert!(out.status.success(), "exit status {} with every rule held", out.status);
    for o in &outcomes {
        eprintln!("{:28} held in {} ms", o["rule"].as_str().unwrap_or("?"), o["millis"]);
    }
    // The table form names every rule and the count.
    let out = Command::new(Meshflow::bin())
        .args(["xds", "conformance", "--rule", "absent-name", "--server", &mesh.xds_addr.to_string()])
        .args(["--control", &control])
        .output()
        .expect("run meshflow xds conformance");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("absent-name") && table.contains("held") && table.contains("1 of 1 rules held"), "{table}");
}

// ---------------------------------------------------------------------------------------
// A toy delta ADS server, with switches for bugs
// ---------------------------------------------------------------------------------------

const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

#[derive(Clone, Copy, Default)]
struct Bugs {
    /// Forget NACKs: the rejected version goes out again with the next change.
    resend_nacked: bool,
    /// Keep sending changes of names the client unsubscribed from.
    ignore_unsubscribe: bool,
    /// Never send `removed_resources`: a resource that disappears stays with the client.
    no_removals: bool,
    /// Never answer a subscribed name that does not exist.
    no_absent_removal: bool,
    /// Ignore a reconnecting client's `initial_resource_versions`: resend everything.
    ignore_initial_versions: bool,
    /// On a change, send the assignments before the clusters.
    eds_before_cds: bool,
    /// Ignore `*` in an EDS subscription.
    no_eds_star: bool,
    /// Take a subscription to any name as one to everything.
    names_as_wildcard: bool,
    /// Unsubscribing `*` drops the names subscribed explicitly too.
    star_unsubscribe_drops_names: bool,
    /// Every response carries the same nonce.
    constant_nonce: bool,
    /// State of the world: send only the resources that changed, as if it were delta.
    sotw_changed_only: bool,
    /// State of the world: ignore `resource_names`, send every resource of the type.
    sotw_ignore_names: bool,
    /// State of the world: answer a NACK by sending the rejected set again.
    sotw_resend_nacked: bool,
}

/// Services: name → (cluster connect-timeout millis, endpoint).
#[derive(Default)]
struct Store {
    services: BTreeMap<String, (u64, String)>,
}

impl Store {
    /// type URL → name → (version, bytes).
    fn resources(&self, type_url: &str) -> BTreeMap<String, (String, Vec<u8>)> {
        let mut out = BTreeMap::new();
        for (name, (timeout, endpoint)) in &self.services {
            let cluster = format!("toy-{name}");
            let bytes = if type_url == CDS {
                Cluster {
                    name: cluster.clone(),
                    connect_timeout: Some(envoy_types::pb::google::protobuf::Duration {
                        seconds: 0,
                        nanos: (*timeout as i32) * 1_000_000,
                    }),
                    ..Default::default()
                }
                .encode_to_vec()
            } else {
                let lb = LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                        hostname: endpoint.clone(),
                        ..Default::default()
                    })),
                    ..Default::default()
                };
                ClusterLoadAssignment {
                    cluster_name: cluster.clone(),
                    endpoints: vec![LocalityLbEndpoints { lb_endpoints: vec![lb], ..Default::default() }],
                    ..Default::default()
                }
                .encode_to_vec()
            };
            let version = format!("{:x}", xxhash(&bytes));
            out.insert(cluster, (version, bytes));
        }
        out
    }
}

fn xxhash(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf29ce484222325u64, |h, x| (h ^ *x as u64).wrapping_mul(0x100000001b3))
}

#[derive(Clone)]
struct Toy {
    store: Arc<Mutex<Store>>,
    changed: Arc<watch::Sender<u64>>,
    bugs: Bugs,
}

impl Control for Toy {
    fn run(&mut self, verb: &str, args: &[&str]) -> Result<String, String> {
        let mut store = self.store.lock().unwrap();
        match (verb, args) {
            ("names", [name]) => return Ok(format!("cds toy-{name}\neds toy-{name}\n")),
            ("reset", []) => {
                store.services.clear();
                store.services.insert("alpha".into(), (100, "10.0.0.1:80".into()));
                store.services.insert("beta".into(), (100, "10.0.0.2:80".into()));
            }
            ("add-service", [name]) => {
                store.services.insert(name.to_string(), (100, "10.0.0.3:80".into()));
            }
            ("remove-service", [name]) => {
                store.services.remove(*name);
            }
            ("set-endpoint", [name, ep]) => store.services.get_mut(*name).ok_or("no such service")?.1 = ep.to_string(),
            ("change-cluster", [name]) => store.services.get_mut(*name).ok_or("no such service")?.0 += 1,
            _ => return Err(format!("toy control: {verb} {args:?}")),
        }
        self.changed.send_modify(|n| *n += 1);
        Ok(String::new())
    }
}

#[derive(Default)]
struct TypeState {
    wildcard: bool,
    names: BTreeSet<String>,
    known: HashMap<String, String>,
    nacked: HashMap<String, String>,
    /// Names subscribed by name and not answered yet.
    unanswered: BTreeSet<String>,
}

/// What one response sent: (name, version sent, version the client held before).
type Sent = Vec<(String, String, Option<String>)>;

struct ToyStream {
    types: HashMap<String, TypeState>,
    /// nonce → (type, what it sent).
    pending: HashMap<String, (String, Sent)>,
    nonce: u64,
}

impl ToyStream {
    fn diff(&mut self, store: &Store, type_url: &str, bugs: Bugs) -> Option<DeltaDiscoveryResponse> {
        let current = store.resources(type_url);
        let st = self.types.get_mut(type_url)?;
        let mut resources = Vec::new();
        let mut sent = Vec::new();
        for (name, (version, bytes)) in &current {
            if !(st.wildcard || st.names.contains(name))
                || st.known.get(name) == Some(version)
                || st.nacked.get(name) == Some(version)
            {
                continue;
            }
            sent.push((name.clone(), version.clone(), st.known.insert(name.clone(), version.clone())));
            resources.push(Resource {
                name: name.clone(),
                version: version.clone(),
                resource: Some(Any { type_url: type_url.into(), value: bytes.clone() }),
                ..Default::default()
            });
        }
        let mut removed: Vec<String> = st.known.keys().filter(|n| !current.contains_key(*n)).cloned().collect();
        for n in &removed {
            st.known.remove(n);
        }
        let unanswered = std::mem::take(&mut st.unanswered);
        if !bugs.no_absent_removal {
            let absent: Vec<String> =
                unanswered.into_iter().filter(|n| !current.contains_key(n) && !removed.contains(n)).collect();
            removed.extend(absent);
        }
        if bugs.no_removals {
            removed.clear();
        }
        if resources.is_empty() && removed.is_empty() {
            return None;
        }
        if !bugs.constant_nonce {
            self.nonce += 1;
        }
        let nonce = self.nonce.to_string();
        self.pending.insert(nonce.clone(), (type_url.to_string(), sent));
        Some(DeltaDiscoveryResponse {
            type_url: type_url.into(),
            resources,
            removed_resources: removed,
            nonce,
            ..Default::default()
        })
    }

    fn on_request(&mut self, req: &DeltaDiscoveryRequest, bugs: Bugs) {
        if let Some((ty, sent)) = self.pending.remove(&req.response_nonce)
            && req.error_detail.is_some()
        {
            let st = self.types.entry(ty).or_default();
            for (name, version, before) in sent {
                match before {
                    Some(v) => st.known.insert(name.clone(), v),
                    None => st.known.remove(&name),
                };
                if !bugs.resend_nacked {
                    st.nacked.insert(name, version);
                }
            }
        }
        let first = !self.types.contains_key(&req.type_url);
        let st = self.types.entry(req.type_url.clone()).or_default();
        // Envoy's legacy wildcard: a first CDS request that names nothing.
        if first && req.type_url == CDS && req.resource_names_subscribe.is_empty() {
            st.wildcard = true;
        }
        if !bugs.ignore_initial_versions {
            for (n, v) in &req.initial_resource_versions {
                st.known.insert(n.clone(), v.clone());
            }
        }
        for n in &req.resource_names_subscribe {
            if n == "*" {
                st.wildcard |= !(bugs.no_eds_star && req.type_url == EDS);
            } else {
                st.names.insert(n.clone());
                st.unanswered.insert(n.clone());
                st.wildcard |= bugs.names_as_wildcard;
            }
        }
        if !bugs.ignore_unsubscribe {
            for n in &req.resource_names_unsubscribe {
                if n == "*" {
                    st.wildcard = false;
                    if bugs.star_unsubscribe_drops_names {
                        st.names.clear();
                    }
                } else {
                    st.names.remove(n);
                    st.known.remove(n);
                }
            }
        }
    }
}

/// One state-of-the-world stream of the toy: per type the subscription and what was sent.
#[derive(Default)]
struct ToySotw {
    types: HashMap<String, SotwType>,
    nonce: u64,
}

#[derive(Default)]
struct SotwType {
    wildcard: bool,
    names: BTreeSet<String>,
    /// The latest response's version and nonce, and the version of each resource in it.
    version: Option<String>,
    nonce: String,
    sent: BTreeMap<String, String>,
    nacked: Option<String>,
}

impl ToySotw {
    /// Takes a request; returns the type to respond for when the subscription changed.
    fn on_request(&mut self, req: &DiscoveryRequest, bugs: Bugs) -> Option<String> {
        let first = !self.types.contains_key(&req.type_url);
        let st = self.types.entry(req.type_url.clone()).or_default();
        if !first && req.response_nonce == st.nonce && req.error_detail.is_some() {
            if bugs.sotw_resend_nacked {
                st.version = None;
                return Some(req.type_url.clone());
            }
            st.nacked = st.version.clone();
        }
        let names: BTreeSet<String> = req.resource_names.iter().cloned().collect();
        let wildcard = req.type_url == CDS && names.is_empty();
        let changed = first || names != st.names || wildcard != st.wildcard;
        st.names = names;
        st.wildcard = wildcard;
        changed.then(|| req.type_url.clone())
    }

    fn respond(&mut self, store: &Store, type_url: &str, bugs: Bugs) -> Option<DiscoveryResponse> {
        let st = self.types.get_mut(type_url)?;
        let current: BTreeMap<String, (String, Vec<u8>)> = store
            .resources(type_url)
            .into_iter()
            .filter(|(name, _)| st.wildcard || bugs.sotw_ignore_names || st.names.contains(name))
            .collect();
        let pairs: Vec<u8> = current.iter().flat_map(|(n, (v, _))| format!("{n}={v};").into_bytes()).collect();
        let version = format!("{:x}", xxhash(&pairs));
        if st.version.as_ref() == Some(&version) || st.nacked.as_ref() == Some(&version) {
            return None;
        }
        let resources = current
            .iter()
            .filter(|(n, (v, _))| !bugs.sotw_changed_only || st.sent.get(*n) != Some(v))
            .map(|(_, (_, bytes))| Any { type_url: type_url.into(), value: bytes.clone() })
            .collect();
        self.nonce += 1;
        st.nonce = self.nonce.to_string();
        st.version = Some(version.clone());
        st.sent = current.into_iter().map(|(n, (v, _))| (n, v)).collect();
        Some(DiscoveryResponse {
            version_info: version,
            resources,
            type_url: type_url.into(),
            nonce: st.nonce.clone(),
            ..Default::default()
        })
    }
}

type Out<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Toy {
    type StreamAggregatedResourcesStream = Out<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = Out<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let toy = self.clone();
        tokio::spawn(async move {
            let mut changes = toy.changed.subscribe();
            let mut s = ToySotw::default();
            loop {
                let types: Vec<String> = tokio::select! {
                    req = inbound.next() => match req {
                        Some(Ok(req)) => s.on_request(&req, toy.bugs).into_iter().collect(),
                        _ => return,
                    },
                    r = changes.changed() => {
                        if r.is_err() { return; }
                        vec![CDS.to_string(), EDS.to_string()]
                    }
                };
                let responses: Vec<_> = {
                    let store = toy.store.lock().unwrap();
                    types.iter().filter_map(|t| s.respond(&store, t, toy.bugs)).collect()
                };
                for r in responses {
                    if tx.send(Ok(r)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let toy = self.clone();
        tokio::spawn(async move {
            let mut changes = toy.changed.subscribe();
            let mut s = ToyStream { types: HashMap::new(), pending: HashMap::new(), nonce: 0 };
            loop {
                let types: Vec<String> = tokio::select! {
                    req = inbound.next() => match req {
                        Some(Ok(req)) => {
                            s.on_request(&req, toy.bugs);
                            vec![req.type_url.clone()]
                        }
                        _ => return,
                    },
                    r = changes.changed() => {
                        if r.is_err() { return; }
                        if toy.bugs.eds_before_cds {
                            vec![EDS.to_string(), CDS.to_string()]
                        } else {
                            vec![CDS.to_string(), EDS.to_string()]
                        }
                    }
                };
                let responses: Vec<_> = {
                    let store = toy.store.lock().unwrap();
                    types.iter().filter_map(|t| s.diff(&store, t, toy.bugs)).collect()
                };
                for r in responses {
                    if tx.send(Ok(r)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

async fn start_toy(bugs: Bugs) -> (Toy, SocketAddr) {
    let toy = Toy { store: Arc::default(), changed: Arc::new(watch::channel(0).0), bugs };
    // Port 0: the kernel picks a free one, with no window for another process to take it.
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("bind toy server");
    let addr: SocketAddr = listener.local_addr().expect("toy server address");
    let service = AggregatedDiscoveryServiceServer::new(toy.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (toy, addr)
}

async fn run_on_toy(bugs: Bugs, rules: Vec<String>) -> BTreeMap<&'static str, Outcome> {
    let (mut toy, addr) = start_toy(bugs).await;
    let outcomes = conformance::run(&addr.to_string(), "toy", &mut toy, &rules).await.expect("the suite runs");
    eprintln!("{}", conformance::table(&outcomes));
    outcomes.into_iter().map(|o| (o.rule, o)).collect()
}

/// The right toy holds every rule of `rules`: the checks do not fail for reasons of their own.
async fn the_right_toy_holds(rules: &[&str]) {
    let right = run_on_toy(Bugs::default(), rules.iter().map(|r| r.to_string()).collect()).await;
    for rule in rules {
        assert!(right[rule].held, "{rule} on the right toy: {}", right[rule].detail);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nack_and_unsubscribe_checks_fail_on_a_server_with_those_bugs() {
    let cases = [
        (Bugs { resend_nacked: true, ..Default::default() }, "nack", "NACKed version", "unsubscribe"),
        (Bugs { ignore_unsubscribe: true, ..Default::default() }, "unsubscribe", "unsubscribed from toy-alpha", "nack"),
    ];
    tokio::join!(the_right_toy_holds(&["nack", "unsubscribe", "explicit"]), each_bug_breaks_its_rule(&cases));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_removal_reconnect_and_order_checks_fail_on_servers_with_those_bugs() {
    let cases = [
        (Bugs { no_removals: true, ..Default::default() }, "disappears", "removed_resources", "explicit"),
        (Bugs { no_absent_removal: true, ..Default::default() }, "absent-name", "never came back", "explicit"),
        (Bugs { ignore_initial_versions: true, ..Default::default() }, "initial-versions", "yet resent", "explicit"),
        (Bugs { eds_before_cds: true, ..Default::default() }, "order", "out of order", "explicit"),
    ];
    let rules = ["disappears", "absent-name", "initial-versions", "order"];
    tokio::join!(the_right_toy_holds(&rules), each_bug_breaks_its_rule(&cases));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_of_the_world_checks_fail_on_servers_with_those_bugs() {
    let cases = [
        (
            Bugs { sotw_changed_only: true, ..Default::default() },
            "sotw-full-set",
            "left out alpha or beta",
            "sotw-ack-nack",
        ),
        (
            Bugs { sotw_ignore_names: true, ..Default::default() },
            "sotw-names",
            "asked for toy-alpha only",
            "sotw-full-set",
        ),
        (Bugs { sotw_resend_nacked: true, ..Default::default() }, "sotw-ack-nack", "NACKed CDS set", "sotw-names"),
    ];
    let rules = ["sotw-full-set", "sotw-names", "sotw-ack-nack"];
    tokio::join!(the_right_toy_holds(&rules), each_bug_breaks_its_rule(&cases));
}

/// Runs each broken toy, all at once (each its own server: the suite mostly waits out its
/// quiet windows, so one after another cost CI a minute and a half), on its rule and on a
/// control rule the bug should not touch: the rule is reported broken with a detail saying
/// `says`, the control holds.
async fn each_bug_breaks_its_rule(cases: &[(Bugs, &str, &str, &str)]) {
    let runs =
        cases.iter().map(|(bugs, rule, _, control)| run_on_toy(*bugs, vec![rule.to_string(), control.to_string()]));
    let results = futures_util::future::join_all(runs).await;
    for ((_, rule, says, control), got) in cases.iter().zip(results) {
        assert!(!got[rule].held, "a server with the {rule} bug passed the {rule} check");
        assert!(got[rule].detail.contains(says), "{rule}: {}", got[rule].detail);
        assert!(got[control].held, "{rule} bug: {control}: {}", got[control].detail);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_subscription_and_nonce_checks_fail_on_servers_with_those_bugs() {
    let cases = [
        (Bugs { no_eds_star: true, ..Default::default() }, "wildcard", "not every resource came", "absent-name"),
        (
            Bugs { star_unsubscribe_drops_names: true, ..Default::default() },
            "wildcard-and-names",
            "no longer updated",
            "absent-name",
        ),
        (Bugs { constant_nonce: true, ..Default::default() }, "ack-nonce", "used twice", "absent-name"),
        // Names taken for a wildcard break the explicit check; absent-name would pass or not
        // by chance (everything comes, the absent name among the answers), so disappears
        // controls it.
        (Bugs { names_as_wildcard: true, ..Default::default() }, "explicit", "only, holds", "disappears"),
    ];
    let rules = ["wildcard", "explicit", "wildcard-and-names", "ack-nonce"];
    tokio::join!(the_right_toy_holds(&rules), each_bug_breaks_its_rule(&cases));
}
