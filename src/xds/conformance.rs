//! `meshflow xds conformance`: a conformance suite for ADS servers, as a tool.
//!
//! It drives any server of `DeltaAggregatedResources` (and, for the `sotw-*` rules,
//! `StreamAggregatedResources`) with a raw tonic client, one rule of the protocol per check
//! (Envoy's "xDS REST and gRPC protocol", incremental and state-of-the-world variants), and reports
//! which rules the server holds and which it breaks, with what it saw. The served resources
//! are changed between steps through a **control adapter** ([`Control`]): for the command-line
//! tool, a program run as `CMD <verb> <args>…` (see [`CommandControl`] and the README's
//! "xDS conformance" section). The verbs:
//!
//! | verb | effect |
//! |---|---|
//! | `reset` | serve exactly the services `alpha` and `beta`, one endpoint each, nothing else of the suite |
//! | `add-service NAME` | serve one more service: a Cluster, its ClusterLoadAssignment, a route to it |
//! | `remove-service NAME` | stop serving the service (its Cluster, assignment and routes) |
//! | `set-endpoint NAME IP:PORT` | replace the service's endpoint (its assignment changes, nothing else) |
//! | `change-cluster NAME` | change the service's Cluster (not its assignment) |
//! | `names NAME` | print, one per line, `cds|eds|lds|rds RESOURCE-NAME` for the service (and `grpc-lds NAME`: the API listener a proxyless gRPC client asks for, if the server serves them) |
//!
//! A verb exits 0 once the change is made (the server may take a moment to serve it; every
//! check waits up to its time limit). Each check is a function that returns what it saw when
//! the rule is broken.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, route, route_action};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use prost::Message;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::translate::ResourceType;

mod proxyless;

/// How long a check waits for something the rule says must come.
pub const EXPECT: Duration = Duration::from_secs(5);
/// How long a check listens to be sure something the rule forbids does not come.
pub const QUIET: Duration = Duration::from_millis(1200);
/// The time limit of one check.
pub const CHECK_LIMIT: Duration = Duration::from_secs(30);

/// Changes what the server under test serves.
pub trait Control: Send {
    /// Runs one verb of the control protocol; returns its standard output.
    fn run(&mut self, verb: &str, args: &[&str]) -> Result<String, String>;
}

/// The command-line adapter: `sh -c '<cmd> "$@"' -- <verb> <args>…`, so `cmd` may carry its
/// own arguments (`meshflow xds control --config-dir /etc/mesh`).
pub struct CommandControl {
    pub cmd: String,
}

impl Control for CommandControl {
    fn run(&mut self, verb: &str, args: &[&str]) -> Result<String, String> {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{} \"$@\"", self.cmd))
            .arg("control")
            .arg(verb)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| format!("running control adapter {:?}: {e}", self.cmd))?;
        if !out.status.success() {
            return Err(format!(
                "control adapter `{} {verb} {}` failed ({}): {}",
                self.cmd,
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        String::from_utf8(out.stdout).map_err(|_| format!("control adapter `{verb}` printed non-UTF-8"))
    }
}

/// The xDS names of one service, as the adapter's `names` verb prints them.
#[derive(Clone, Debug, Default)]
pub struct ServiceNames {
    pub cds: Vec<String>,
    pub eds: Vec<String>,
    pub lds: Vec<String>,
    pub rds: Vec<String>,
    /// The API listener a proxyless gRPC client asks for (`<fqdn>:<port>` for istiod).
    pub grpc_lds: Vec<String>,
}

impl ServiceNames {
    fn parse(service: &str, text: &str) -> Result<ServiceNames, String> {
        let mut n = ServiceNames::default();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let (ty, name) = line
                .split_once(char::is_whitespace)
                .ok_or_else(|| format!("control `names {service}`: line {line:?} is not `<type> <name>`"))?;
            let list = match ty {
                "cds" => &mut n.cds,
                "eds" => &mut n.eds,
                "lds" => &mut n.lds,
                "rds" => &mut n.rds,
                "grpc-lds" => &mut n.grpc_lds,
                other => return Err(format!("control `names {service}`: unknown type {other:?}")),
            };
            list.push(name.trim().to_string());
        }
        if n.cds.is_empty() || n.eds.is_empty() {
            return Err(format!("control `names {service}` named no cds or no eds resource"));
        }
        Ok(n)
    }
    fn cluster(&self) -> &str {
        &self.cds[0]
    }
    fn assignment(&self) -> &str {
        &self.eds[0]
    }
}

/// The result of one check.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    pub rule: &'static str,
    pub description: &'static str,
    pub held: bool,
    /// What the check saw when the rule is broken (empty when held).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
    pub millis: u64,
}

/// One rule: its id, what it says, and the check.
pub struct Rule {
    pub id: &'static str,
    pub description: &'static str,
}

pub const RULES: &[Rule] = &[
    Rule { id: "wildcard", description: "a wildcard subscription (`*` and legacy empty) gets every resource" },
    Rule { id: "explicit", description: "an explicit subscription gets only the names it asks for" },
    Rule { id: "wildcard-and-names", description: "`*` with explicit names; unsubscribing `*` keeps the names" },
    Rule { id: "unsubscribe", description: "after unsubscribing, changes of the name are not sent" },
    Rule { id: "absent-name", description: "a subscribed name that does not exist comes back in removed_resources" },
    Rule { id: "disappears", description: "a resource that disappears is sent in removed_resources" },
    Rule { id: "ack-nonce", description: "every response has a fresh nonce; an ACK or a stale nonce causes no resend" },
    Rule { id: "nack", description: "a NACKed version is not resent until its content changes" },
    Rule {
        id: "initial-versions",
        description: "reconnect with initial_resource_versions: matching versions not resent, unknown names removed",
    },
    Rule { id: "order", description: "within a batch, additions go out CDS → EDS → LDS → RDS" },
    Rule { id: "cluster-then-assignment", description: "a changed Cluster is followed by its ClusterLoadAssignment" },
    Rule { id: "removal-after-referrers", description: "a Cluster is removed only after the routes referring to it" },
    Rule { id: "sotw-full-set", description: "state of the world: each response carries the type's whole set" },
    Rule {
        id: "sotw-names",
        description: "state of the world: a request's resource_names is the whole subscription, only those come",
    },
    Rule {
        id: "sotw-ack-nack",
        description: "state of the world: an ACK causes no resend; a NACKed set is not resent until it changes",
    },
    Rule {
        id: "proxyless",
        description: "a proxyless gRPC client's chain by exact names (API listener → routes → EDS clusters → assignments) as gRPC accepts it",
    },
];

/// Everything a check needs.
pub struct Ctx<'a> {
    pub server: String,
    pub node_id: String,
    pub control: &'a mut dyn Control,
    alpha: ServiceNames,
    beta: ServiceNames,
    gamma: ServiceNames,
    /// Distinct endpoints for `set-endpoint`.
    next_ip: u32,
}

impl Ctx<'_> {
    fn control(&mut self, verb: &str, args: &[&str]) -> Result<String, String> {
        self.control.run(verb, args)
    }

    fn fresh_endpoint(&mut self) -> String {
        self.next_ip += 1;
        let n = self.next_ip;
        format!("10.{}.{}.{}:8080", 200 + (n >> 16) % 50, (n >> 8) & 255, (n & 255).max(1))
    }

    async fn connect(&self) -> Result<Conn, String> {
        Conn::open(&self.server, &self.node_id).await
    }

    async fn connect_sotw(&self) -> Result<SotwConn, String> {
        SotwConn::open(&self.server, &self.node_id).await
    }

    /// `reset`, then waits until a wildcard client sees alpha and beta and not gamma.
    async fn reset(&mut self) -> Result<(), String> {
        self.control("reset", &[])?;
        let mut c = self.connect().await?;
        c.subscribe(ResourceType::Cluster, LEGACY_WILDCARD, &[]).await?;
        let want = [self.alpha.cluster().to_string(), self.beta.cluster().to_string()];
        let gone = self.gamma.cluster().to_string();
        c.until(EXPECT * 2, |held, _| {
            let cds = &held[ResourceType::Cluster as usize];
            want.iter().all(|n| cds.contains_key(n)) && !cds.contains_key(&gone)
        })
        .await
        .map_err(|seen| format!("after `reset` the server did not settle on alpha and beta: {seen}"))?;
        // Until the server is quiet: a change of the reset that is served late would
        // otherwise land in the next check.
        c.subscribe(ResourceType::ClusterLoadAssignment, &[self.alpha.assignment(), self.beta.assignment()], &[])
            .await?;
        let deadline = Instant::now() + EXPECT;
        while Instant::now() < deadline && !c.drain(QUIET / 2).await?.is_empty() {}
        Ok(())
    }
}

/// The first request of a stream for CDS or LDS that names nothing: Envoy's (legacy) wildcard.
/// Checks that are not about `*` subscribe so, and to assignments by name, so that a server
/// that does not know `*` is still checked on each rule (the `wildcard` checks cover `*`).
const LEGACY_WILDCARD: &[&str] = &[];

/// Held resources per type: name → version.
type Held = [BTreeMap<String, String>; ResourceType::ALL.len()];

/// One delta ADS stream of the suite.
struct Conn {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: tonic::Streaming<DeltaDiscoveryResponse>,
    node: Option<Node>,
    held: Held,
    /// Route configs held, decoded to the clusters they refer to.
    route_refs: BTreeMap<String, BTreeSet<String>>,
    nonces: HashSet<String>,
    /// One line per response, for reports.
    log: Vec<String>,
}

fn short(ty: ResourceType) -> &'static str {
    crate::metrics::metric_type(ty)
}

fn describe(r: &DeltaDiscoveryResponse) -> String {
    let ty = ResourceType::from_type_url(&r.type_url).map(short).unwrap_or("?");
    let added: Vec<String> = r.resources.iter().map(|x| format!("{}@{}", x.name, x.version)).collect();
    format!("{ty} nonce={} +[{}] -[{}]", r.nonce, added.join(", "), r.removed_resources.join(", "))
}

fn route_clusters(bytes: &[u8]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let Ok(rc) = RouteConfiguration::decode(bytes) else { return out };
    for vh in &rc.virtual_hosts {
        for r in &vh.routes {
            if let Some(route::Action::Route(action)) = &r.action {
                match &action.cluster_specifier {
                    Some(route_action::ClusterSpecifier::Cluster(c)) => {
                        out.insert(c.clone());
                    }
                    Some(route_action::ClusterSpecifier::WeightedClusters(w)) => {
                        out.extend(w.clusters.iter().map(|c| c.name.clone()));
                    }
                    _ => {}
                }
            }
        }
    }
    out
}

/// An ADS client of `server` (host:port or a URL), and its URL for messages.
async fn ads_client(
    server: &str,
) -> Result<(AggregatedDiscoveryServiceClient<tonic::transport::Channel>, String), String> {
    let url = if server.contains("://") { server.to_string() } else { format!("http://{server}") };
    let grpc = tokio::time::timeout(EXPECT, AggregatedDiscoveryServiceClient::connect(url.clone()))
        .await
        .map_err(|_| format!("connecting to {url}: no answer in {EXPECT:?}"))?
        .map_err(|e| format!("connecting to {url}: {e}"))?
        .max_decoding_message_size(256 << 20);
    Ok((grpc, url))
}

/// The last responses a stream logged, for a report.
fn seen(log: &[String]) -> String {
    if log.is_empty() {
        "no response".to_string()
    } else {
        let tail = log.len().saturating_sub(8);
        format!("{} response(s): {}", log.len(), log[tail..].join(" | "))
    }
}

impl Conn {
    async fn open(server: &str, node_id: &str) -> Result<Conn, String> {
        let (mut grpc, url) = ads_client(server).await?;
        let (tx, rx) = mpsc::channel(64);
        let stream = tokio::time::timeout(EXPECT, grpc.delta_aggregated_resources(ReceiverStream::new(rx)))
            .await
            .map_err(|_| format!("opening a delta stream on {url}: no answer in {EXPECT:?}"))?
            .map_err(|e| format!("opening a delta stream on {url}: {e}"))?
            .into_inner();
        Ok(Conn {
            tx,
            rx: stream,
            node: Some(Node { id: node_id.to_string(), ..Default::default() }),
            held: Default::default(),
            route_refs: BTreeMap::new(),
            nonces: HashSet::new(),
            log: Vec::new(),
        })
    }

    async fn send(&mut self, mut req: DeltaDiscoveryRequest) -> Result<(), String> {
        req.node = self.node.take();
        self.tx.send(req).await.map_err(|_| "the server closed the stream".to_string())
    }

    async fn subscribe(&mut self, ty: ResourceType, add: &[&str], remove: &[&str]) -> Result<(), String> {
        for name in remove {
            self.held[ty as usize].remove(*name);
        }
        self.send(DeltaDiscoveryRequest {
            type_url: ty.type_url().to_string(),
            resource_names_subscribe: add.iter().map(|s| s.to_string()).collect(),
            resource_names_unsubscribe: remove.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .await
    }

    /// The next response within `within`, applied to what the client holds; None on timeout.
    async fn recv(&mut self, within: Duration) -> Result<Option<DeltaDiscoveryResponse>, String> {
        let r = match tokio::time::timeout(within, self.rx.message()).await {
            Err(_) => return Ok(None),
            Ok(Err(status)) => {
                return Err(format!("the server ended the stream: {:?}: {}", status.code(), status.message()));
            }
            Ok(Ok(None)) => return Err("the server closed the stream".to_string()),
            Ok(Ok(Some(r))) => r,
        };
        self.log.push(describe(&r));
        if let Some(ty) = ResourceType::from_type_url(&r.type_url) {
            for x in &r.resources {
                self.held[ty as usize].insert(x.name.clone(), x.version.clone());
                if ty == ResourceType::RouteConfiguration
                    && let Some(any) = &x.resource
                {
                    self.route_refs.insert(x.name.clone(), route_clusters(&any.value));
                }
            }
            for name in &r.removed_resources {
                self.held[ty as usize].remove(name);
                if ty == ResourceType::RouteConfiguration {
                    self.route_refs.remove(name);
                }
            }
        }
        Ok(Some(r))
    }

    async fn ack(&mut self, r: &DeltaDiscoveryResponse) -> Result<(), String> {
        self.send(DeltaDiscoveryRequest {
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            ..Default::default()
        })
        .await
    }

    async fn nack(&mut self, r: &DeltaDiscoveryResponse, message: &str) -> Result<(), String> {
        self.send(DeltaDiscoveryRequest {
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            error_detail: Some(envoy_types::pb::google::rpc::Status {
                code: tonic::Code::InvalidArgument as i32,
                message: message.to_string(),
                details: vec![],
            }),
            ..Default::default()
        })
        .await
    }

    /// Receives (and ACKs) until `done` holds; Err with what was seen when `within` passes.
    async fn until(
        &mut self,
        within: Duration,
        mut done: impl FnMut(&Held, &DeltaDiscoveryResponse) -> bool,
    ) -> Result<Vec<DeltaDiscoveryResponse>, String> {
        let deadline = Instant::now() + within;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(r) = self.recv(left).await? else {
                return Err(format!("waited {within:?}; saw {}", self.seen()));
            };
            self.ack(&r).await?;
            let stop = done(&self.held, &r);
            got.push(r);
            if stop {
                return Ok(got);
            }
        }
    }

    /// Everything received (and ACKed) within `window`.
    async fn drain(&mut self, window: Duration) -> Result<Vec<DeltaDiscoveryResponse>, String> {
        let deadline = Instant::now() + window;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(got);
            }
            match self.recv(left).await? {
                None => return Ok(got),
                Some(r) => {
                    self.ack(&r).await?;
                    got.push(r);
                }
            }
        }
    }

    fn seen(&self) -> String {
        seen(&self.log)
    }

    fn has(&self, ty: ResourceType, name: &str) -> bool {
        self.held[ty as usize].contains_key(name)
    }
}

/// One state-of-the-world ADS stream of the suite (`StreamAggregatedResources`).
struct SotwConn {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: tonic::Streaming<DiscoveryResponse>,
    node: Option<Node>,
    /// Per type: the resource names of the latest response, and its version and nonce.
    latest: HashMap<String, (BTreeSet<String>, String, String)>,
    /// Per type: the version the client last accepted (what an ACK or NACK carries).
    accepted: HashMap<String, String>,
    log: Vec<String>,
}

/// The names of the resources of a state-of-the-world response (each an `Any` of the type).
fn sotw_names(r: &DiscoveryResponse) -> BTreeSet<String> {
    let ty = ResourceType::from_type_url(&r.type_url);
    r.resources
        .iter()
        .map(|any| match ty {
            Some(ResourceType::Cluster) => envoy_types::pb::envoy::config::cluster::v3::Cluster::decode(&any.value[..])
                .map(|c| c.name)
                .unwrap_or_else(|e| format!("<undecodable: {e}>")),
            Some(ResourceType::ClusterLoadAssignment) => {
                envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment::decode(&any.value[..])
                    .map(|c| c.cluster_name)
                    .unwrap_or_else(|e| format!("<undecodable: {e}>"))
            }
            Some(ResourceType::Listener) => {
                envoy_types::pb::envoy::config::listener::v3::Listener::decode(&any.value[..])
                    .map(|l| l.name)
                    .unwrap_or_else(|e| format!("<undecodable: {e}>"))
            }
            Some(ResourceType::RouteConfiguration) => RouteConfiguration::decode(&any.value[..])
                .map(|r| r.name)
                .unwrap_or_else(|e| format!("<undecodable: {e}>")),
            _ => format!("<{} bytes>", any.value.len()),
        })
        .collect()
}

fn describe_sotw(r: &DiscoveryResponse, names: &BTreeSet<String>) -> String {
    let ty = ResourceType::from_type_url(&r.type_url).map(short).unwrap_or("?");
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    format!("{ty} version={} nonce={} [{}]", r.version_info, r.nonce, names.join(", "))
}

impl SotwConn {
    async fn open(server: &str, node_id: &str) -> Result<SotwConn, String> {
        let (mut grpc, url) = ads_client(server).await?;
        let (tx, rx) = mpsc::channel(64);
        let stream = tokio::time::timeout(EXPECT, grpc.stream_aggregated_resources(ReceiverStream::new(rx)))
            .await
            .map_err(|_| format!("opening a state-of-the-world stream on {url}: no answer in {EXPECT:?}"))?
            .map_err(|e| format!("opening a state-of-the-world stream on {url}: {e}"))?
            .into_inner();
        Ok(SotwConn {
            tx,
            rx: stream,
            node: Some(Node { id: node_id.to_string(), ..Default::default() }),
            latest: HashMap::new(),
            accepted: HashMap::new(),
            log: Vec::new(),
        })
    }

    /// A request for `ty` naming `names` (its whole subscription), answering the type's
    /// latest response: an ACK, or with `nack` a NACK carrying that error.
    async fn request(&mut self, ty: ResourceType, names: &[&str], nack: Option<&str>) -> Result<(), String> {
        let url = ty.type_url();
        let nonce = self.latest.get(url).map(|l| l.2.clone()).unwrap_or_default();
        if nack.is_none()
            && let Some((_, version, _)) = self.latest.get(url)
        {
            self.accepted.insert(url.to_string(), version.clone());
        }
        let req = DiscoveryRequest {
            version_info: self.accepted.get(url).cloned().unwrap_or_default(),
            node: self.node.take(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            type_url: url.to_string(),
            response_nonce: nonce,
            error_detail: nack.map(|message| envoy_types::pb::google::rpc::Status {
                code: tonic::Code::InvalidArgument as i32,
                message: message.to_string(),
                details: vec![],
            }),
            ..Default::default()
        };
        self.tx.send(req).await.map_err(|_| "the server closed the stream".to_string())
    }

    /// The next response within `within` and its resource names; None on timeout. Not
    /// answered: the caller ACKs or NACKs it ([`SotwConn::request`]).
    async fn recv(&mut self, within: Duration) -> Result<Option<(DiscoveryResponse, BTreeSet<String>)>, String> {
        let r = match tokio::time::timeout(within, self.rx.message()).await {
            Err(_) => return Ok(None),
            Ok(Err(status)) => {
                return Err(format!("the server ended the stream: {:?}: {}", status.code(), status.message()));
            }
            Ok(Ok(None)) => return Err("the server closed the stream".to_string()),
            Ok(Ok(Some(r))) => r,
        };
        let names = sotw_names(&r);
        self.log.push(describe_sotw(&r, &names));
        self.latest.insert(r.type_url.clone(), (names.clone(), r.version_info.clone(), r.nonce.clone()));
        Ok(Some((r, names)))
    }

    /// Receives responses of `ty`, ACKing each with `names`, until `done` holds of one; Err
    /// with what was seen when `within` passes.
    async fn until(
        &mut self,
        ty: ResourceType,
        names: &[&str],
        within: Duration,
        mut done: impl FnMut(&BTreeSet<String>) -> bool,
    ) -> Result<BTreeSet<String>, String> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some((r, got)) = self.recv(left).await? else {
                return Err(format!("waited {within:?}; saw {}", self.seen()));
            };
            let Some(rty) = ResourceType::from_type_url(&r.type_url) else { continue };
            self.request(rty, if rty == ty { names } else { &[] }, None).await?;
            if rty == ty && done(&got) {
                return Ok(got);
            }
        }
    }

    /// The responses of `ty` within `window` (version and names), each ACKed with `names`.
    async fn drain(
        &mut self,
        ty: ResourceType,
        names: &[&str],
        window: Duration,
    ) -> Result<Vec<(String, BTreeSet<String>)>, String> {
        let deadline = Instant::now() + window;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(got);
            }
            let Some((r, set)) = self.recv(left).await? else { return Ok(got) };
            let Some(rty) = ResourceType::from_type_url(&r.type_url) else { continue };
            self.request(rty, if rty == ty { names } else { &[] }, None).await?;
            if rty == ty {
                got.push((r.version_info, set));
            }
        }
    }

    fn seen(&self) -> String {
        seen(&self.log)
    }
}

fn names_of(rs: &[DeltaDiscoveryResponse], ty: ResourceType) -> BTreeSet<String> {
    rs.iter().filter(|r| r.type_url == ty.type_url()).flat_map(|r| r.resources.iter().map(|x| x.name.clone())).collect()
}

fn removed_of(rs: &[DeltaDiscoveryResponse], ty: ResourceType) -> BTreeSet<String> {
    rs.iter().filter(|r| r.type_url == ty.type_url()).flat_map(|r| r.removed_resources.iter().cloned()).collect()
}

const CDS: ResourceType = ResourceType::Cluster;
const EDS: ResourceType = ResourceType::ClusterLoadAssignment;

async fn check(ctx: &mut Ctx<'_>, id: &str) -> Result<(), String> {
    let (alpha, beta, gamma) = (ctx.alpha.clone(), ctx.beta.clone(), ctx.gamma.clone());
    match id {
        "wildcard" => {
            for legacy in [false, true] {
                let mut c = ctx.connect().await?;
                let sub: &[&str] = if legacy { &[] } else { &["*"] };
                c.subscribe(CDS, sub, &[]).await?;
                c.subscribe(EDS, &["*"], &[]).await?;
                let want = [
                    (CDS, alpha.cluster()),
                    (CDS, beta.cluster()),
                    (EDS, alpha.assignment()),
                    (EDS, beta.assignment()),
                ];
                c.until(EXPECT, |held, _| want.iter().all(|(t, n)| held[*t as usize].contains_key(*n))).await.map_err(
                    |s| {
                        format!(
                            "{} CDS, `*` EDS: not every resource came: {s}",
                            if legacy { "legacy (empty)" } else { "`*`" }
                        )
                    },
                )?;
            }
            Ok(())
        }
        "explicit" => {
            let mut c = ctx.connect().await?;
            c.subscribe(EDS, &[alpha.assignment()], &[]).await?;
            c.until(EXPECT, |held, _| held[EDS as usize].contains_key(alpha.assignment())).await?;
            c.drain(QUIET).await?;
            let names: BTreeSet<String> = c.held[EDS as usize].keys().cloned().collect();
            if names.len() != 1 {
                return Err(format!("subscribed to {} only, holds {names:?} ({})", alpha.assignment(), c.seen()));
            }
            let ep = ctx.fresh_endpoint();
            ctx.control("set-endpoint", &["beta", &ep])?;
            let got = c.drain(QUIET * 2).await?;
            if names_of(&got, EDS).contains(beta.assignment()) {
                return Err(format!("a change of the unsubscribed {} was pushed: {}", beta.assignment(), c.seen()));
            }
            let ep = ctx.fresh_endpoint();
            ctx.control("set-endpoint", &["alpha", &ep])?;
            let alpha_before = c.held[EDS as usize].get(alpha.assignment()).cloned();
            c.until(EXPECT, |_, r| {
                r.resources.iter().any(|x| x.name == alpha.assignment() && Some(&x.version) != alpha_before.as_ref())
            })
            .await
            .map_err(|s| format!("the subscribed {} changed but no update came: {s}", alpha.assignment()))?;
            Ok(())
        }
        "wildcard-and-names" => {
            let mut c = ctx.connect().await?;
            c.subscribe(EDS, &["*", alpha.assignment()], &[]).await?;
            c.until(EXPECT, |held, _| {
                held[EDS as usize].contains_key(alpha.assignment())
                    && held[EDS as usize].contains_key(beta.assignment())
            })
            .await
            .map_err(|s| format!("`*` with {}: not everything came: {s}", alpha.assignment()))?;
            c.drain(QUIET / 2).await?;
            c.subscribe(EDS, &[], &["*"]).await?;
            c.drain(QUIET / 2).await?;
            let ep = ctx.fresh_endpoint();
            ctx.control("set-endpoint", &["beta", &ep])?;
            let got = c.drain(QUIET * 2).await?;
            if names_of(&got, EDS).contains(beta.assignment()) {
                return Err(format!(
                    "after unsubscribing `*`, a change of {} was still pushed: {}",
                    beta.assignment(),
                    c.seen()
                ));
            }
            let ep = ctx.fresh_endpoint();
            ctx.control("set-endpoint", &["alpha", &ep])?;
            c.until(EXPECT, |_, r| r.resources.iter().any(|x| x.name == alpha.assignment())).await.map_err(|s| {
                format!("after unsubscribing `*`, the named {} is no longer updated: {s}", alpha.assignment())
            })?;
            Ok(())
        }
        "unsubscribe" => {
            let mut c = ctx.connect().await?;
            c.subscribe(EDS, &[alpha.assignment()], &[]).await?;
            c.until(EXPECT, |held, _| held[EDS as usize].contains_key(alpha.assignment())).await?;
            c.drain(QUIET / 2).await?;
            c.subscribe(EDS, &[], &[alpha.assignment()]).await?;
            c.drain(QUIET / 2).await?;
            let ep = ctx.fresh_endpoint();
            ctx.control("set-endpoint", &["alpha", &ep])?;
            let got = c.drain(QUIET * 2).await?;
            if names_of(&got, EDS).contains(alpha.assignment()) {
                return Err(format!(
                    "unsubscribed from {}, yet its change was pushed: {}",
                    alpha.assignment(),
                    c.seen()
                ));
            }
            Ok(())
        }
        "absent-name" => {
            let ghost = "conformance-no-such-resource";
            let mut c = ctx.connect().await?;
            c.subscribe(EDS, &[ghost], &[]).await?;
            c.until(EXPECT, |_, r| r.removed_resources.iter().any(|n| n == ghost)).await.map_err(|s| {
                format!("subscribed to {ghost:?}, which does not exist; it never came back in removed_resources: {s}")
            })?;
            Ok(())
        }
        "disappears" => {
            ctx.control("add-service", &["gamma"])?;
            let mut c = ctx.connect().await?;
            c.subscribe(CDS, LEGACY_WILDCARD, &[]).await?;
            c.subscribe(EDS, &[gamma.assignment()], &[]).await?;
            c.until(EXPECT, |held, _| {
                held[CDS as usize].contains_key(gamma.cluster()) && held[EDS as usize].contains_key(gamma.assignment())
            })
            .await
            .map_err(|s| format!("`add-service gamma` never reached the client: {s}"))?;
            ctx.control("remove-service", &["gamma"])?;
            c.until(EXPECT, |held, _| {
                !held[CDS as usize].contains_key(gamma.cluster())
                    && !held[EDS as usize].contains_key(gamma.assignment())
            })
            .await
            .map_err(|s| {
                format!("gamma was removed but its Cluster and assignment were not both in removed_resources: {s}")
            })?;
            Ok(())
        }
        "ack-nonce" => {
            let mut c = ctx.connect().await?;
            c.subscribe(CDS, LEGACY_WILDCARD, &[]).await?;
            c.subscribe(EDS, &[alpha.assignment(), beta.assignment()], &[]).await?;
            let mut got = c.until(EXPECT, |held, _| held[EDS as usize].contains_key(alpha.assignment())).await?;
            got.extend(c.drain(QUIET).await?);
            // A stale nonce (already ACKed) and a nonce never sent must not bring anything.
            if let Some(first) = got.first().cloned() {
                c.ack(&first).await?;
            }
            c.send(DeltaDiscoveryRequest {
                type_url: CDS.type_url().to_string(),
                response_nonce: "conformance-never-sent".to_string(),
                ..Default::default()
            })
            .await?;
            let after = c.drain(QUIET).await?;
            if !after.is_empty() {
                return Err(format!(
                    "ACKs and stale nonces were answered with {} response(s): {}",
                    after.len(),
                    c.seen()
                ));
            }
            let ep = ctx.fresh_endpoint();
            ctx.control("set-endpoint", &["alpha", &ep])?;
            got.extend(c.until(EXPECT, |_, r| r.resources.iter().any(|x| x.name == alpha.assignment())).await?);
            for r in &got {
                if r.nonce.is_empty() {
                    return Err(format!("a response without a nonce: {}", describe(r)));
                }
                if !c.nonces.insert(r.nonce.clone()) {
                    return Err(format!("nonce {:?} used twice on one stream: {}", r.nonce, c.seen()));
                }
            }
            Ok(())
        }
        "nack" => {
            let mut c = ctx.connect().await?;
            c.subscribe(CDS, LEGACY_WILDCARD, &[]).await?;
            c.until(EXPECT, |held, _| held[CDS as usize].contains_key(alpha.cluster())).await?;
            c.drain(QUIET / 2).await?;
            ctx.control("change-cluster", &["alpha"])?;
            let before = c.held[CDS as usize].get(alpha.cluster()).cloned();
            // Wait for alpha's new version, and NACK that response.
            let deadline = Instant::now() + EXPECT;
            let rejected = loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let Some(r) = c.recv(left).await? else {
                    return Err(format!("`change-cluster alpha` never reached the client: {}", c.seen()));
                };
                if let Some(x) =
                    r.resources.iter().find(|x| x.name == alpha.cluster() && Some(&x.version) != before.as_ref())
                {
                    let v = x.version.clone();
                    c.nack(&r, "conformance: rejected on purpose").await?;
                    break v;
                }
                c.ack(&r).await?;
            };
            // Other changes follow: the rejected version must not come back with them.
            let ep = ctx.fresh_endpoint();
            ctx.control("set-endpoint", &["alpha", &ep])?;
            ctx.control("add-service", &["gamma"])?;
            let got = c.drain(QUIET * 2).await?;
            if got.iter().flat_map(|r| &r.resources).any(|x| x.name == alpha.cluster() && x.version == rejected) {
                return Err(format!(
                    "the NACKed version {rejected} of {} was sent again: {}",
                    alpha.cluster(),
                    c.seen()
                ));
            }
            // A new content is sent.
            ctx.control("change-cluster", &["alpha"])?;
            c.until(EXPECT, |_, r| r.resources.iter().any(|x| x.name == alpha.cluster() && x.version != rejected))
                .await
                .map_err(|s| format!("after a NACK, the next content of {} never came: {s}", alpha.cluster()))?;
            Ok(())
        }
        "initial-versions" => {
            let mut c = ctx.connect().await?;
            c.subscribe(CDS, LEGACY_WILDCARD, &[]).await?;
            c.until(EXPECT, |held, _| {
                held[CDS as usize].contains_key(alpha.cluster()) && held[CDS as usize].contains_key(beta.cluster())
            })
            .await?;
            c.drain(QUIET / 2).await?;
            let held = c.held[CDS as usize].clone();
            drop(c);
            let ghost = "conformance-held-but-gone";
            let mut initial: HashMap<String, String> = held.clone().into_iter().collect();
            initial.insert(ghost.to_string(), "conformance-v0".to_string());
            // beta held at a version that is not the server's: it must be resent.
            initial.insert(beta.cluster().to_string(), "conformance-stale".to_string());
            let mut c = ctx.connect().await?;
            c.send(DeltaDiscoveryRequest {
                type_url: CDS.type_url().to_string(),
                resource_names_subscribe: Vec::new(),
                initial_resource_versions: initial,
                ..Default::default()
            })
            .await?;
            let got = c.drain(QUIET * 2).await?;
            let sent = names_of(&got, CDS);
            let removed = removed_of(&got, CDS);
            if sent.contains(alpha.cluster()) {
                return Err(format!("{} was held at the server's version, yet resent: {}", alpha.cluster(), c.seen()));
            }
            if !sent.contains(beta.cluster()) {
                return Err(format!("{} was held at another version, yet not resent: {}", beta.cluster(), c.seen()));
            }
            if !removed.contains(ghost) {
                return Err(format!(
                    "{ghost:?} was held by the client and is not served; it was not removed: {}",
                    c.seen()
                ));
            }
            Ok(())
        }
        "order" => {
            let mut c = ctx.connect().await?;
            for ty in [CDS, EDS, ResourceType::Listener, ResourceType::RouteConfiguration] {
                c.subscribe(ty, &["*"], &[]).await?;
            }
            c.until(EXPECT, |held, _| held[EDS as usize].contains_key(alpha.assignment())).await?;
            c.drain(QUIET).await?;
            ctx.control("add-service", &["gamma"])?;
            let mut got = c
                .until(EXPECT, |held, _| {
                    held[EDS as usize].contains_key(gamma.assignment())
                        && held[CDS as usize].contains_key(gamma.cluster())
                })
                .await?;
            got.extend(c.drain(QUIET).await?);
            let rank = |url: &str| match ResourceType::from_type_url(url) {
                Some(ResourceType::Cluster) => 0,
                Some(ResourceType::ClusterLoadAssignment) => 1,
                Some(ResourceType::Listener) => 2,
                Some(ResourceType::RouteConfiguration) => 3,
                _ => 4,
            };
            let adds: Vec<&DeltaDiscoveryResponse> = got.iter().filter(|r| !r.resources.is_empty()).collect();
            if adds.windows(2).any(|w| rank(&w[0].type_url) > rank(&w[1].type_url)) {
                let seq: Vec<String> = adds.iter().map(|r| describe(r)).collect();
                return Err(format!("additions out of order after `add-service gamma`: {}", seq.join(" | ")));
            }
            let cds_at = got.iter().position(|r| r.resources.iter().any(|x| x.name == gamma.cluster()));
            let eds_at = got.iter().position(|r| r.resources.iter().any(|x| x.name == gamma.assignment()));
            if let (Some(a), Some(b)) = (cds_at, eds_at)
                && a > b
            {
                return Err(format!("gamma's assignment came before its Cluster: {}", c.seen()));
            }
            Ok(())
        }
        "cluster-then-assignment" => {
            let mut c = ctx.connect().await?;
            c.subscribe(CDS, LEGACY_WILDCARD, &[]).await?;
            c.subscribe(EDS, &[alpha.assignment()], &[]).await?;
            c.until(EXPECT, |held, _| held[EDS as usize].contains_key(alpha.assignment())).await?;
            c.drain(QUIET / 2).await?;
            let before = c.held[CDS as usize].get(alpha.cluster()).cloned();
            ctx.control("change-cluster", &["alpha"])?;
            let mut got = c
                .until(EXPECT, |_, r| {
                    r.resources.iter().any(|x| x.name == alpha.cluster() && Some(&x.version) != before.as_ref())
                })
                .await
                .map_err(|s| format!("`change-cluster alpha` never reached the client: {s}"))?;
            let n = got.len();
            got.extend(c.drain(QUIET).await?);
            if !got[n..]
                .iter()
                .any(|r| r.type_url == EDS.type_url() && r.resources.iter().any(|x| x.name == alpha.assignment()))
            {
                return Err(format!(
                    "{} changed and {} (held, unchanged) was not sent after it: Envoy keeps the cluster warming: {}",
                    alpha.cluster(),
                    alpha.assignment(),
                    c.seen()
                ));
            }
            Ok(())
        }
        "removal-after-referrers" => {
            ctx.control("add-service", &["gamma"])?;
            let mut c = ctx.connect().await?;
            for ty in [CDS, EDS, ResourceType::Listener, ResourceType::RouteConfiguration] {
                c.subscribe(ty, &["*"], &[]).await?;
            }
            let target = gamma.cluster().to_string();
            c.until(EXPECT, |held, _| held[CDS as usize].contains_key(&target)).await?;
            c.drain(QUIET).await?;
            if !c.route_refs.values().any(|refs| refs.contains(&target)) {
                return Err(format!(
                    "no route config held refers to {target}: the rule cannot be checked (routes held: {:?})",
                    c.route_refs.keys().collect::<Vec<_>>()
                ));
            }
            ctx.control("remove-service", &["gamma"])?;
            let deadline = Instant::now() + EXPECT;
            while c.has(CDS, &target) {
                let left = deadline.saturating_duration_since(Instant::now());
                let Some(r) = c.recv(left).await? else {
                    return Err(format!("{target} was never removed: {}", c.seen()));
                };
                c.ack(&r).await?;
                if r.type_url == CDS.type_url() && r.removed_resources.contains(&target) {
                    let referrers: Vec<&String> =
                        c.route_refs.iter().filter(|(_, refs)| refs.contains(&target)).map(|(n, _)| n).collect();
                    if !referrers.is_empty() {
                        return Err(format!(
                            "{target} was removed while route config(s) {referrers:?} held by the client still refer to it: {}",
                            c.seen()
                        ));
                    }
                }
            }
            Ok(())
        }
        "sotw-full-set" => {
            let mut c = ctx.connect_sotw().await?;
            let (a, b, g) = (alpha.cluster(), beta.cluster(), gamma.cluster());
            c.request(CDS, LEGACY_WILDCARD, None).await?;
            c.until(CDS, LEGACY_WILDCARD, EXPECT, |set| set.contains(a) && set.contains(b))
                .await
                .map_err(|s| format!("a wildcard CDS request never got alpha and beta: {s}"))?;
            c.drain(CDS, LEGACY_WILDCARD, QUIET / 2).await?;
            ctx.control("add-service", &["gamma"])?;
            let set = c
                .until(CDS, LEGACY_WILDCARD, EXPECT, |set| set.contains(g))
                .await
                .map_err(|s| format!("`add-service gamma` never reached the client: {s}"))?;
            if !(set.contains(a) && set.contains(b)) {
                return Err(format!("the CDS response that added {g} left out alpha or beta: {}", c.seen()));
            }
            c.drain(CDS, LEGACY_WILDCARD, QUIET / 2).await?;
            ctx.control("remove-service", &["gamma"])?;
            let set = c
                .until(CDS, LEGACY_WILDCARD, EXPECT, |set| !set.contains(g))
                .await
                .map_err(|s| format!("{g} was never left out of a CDS response after `remove-service gamma`: {s}"))?;
            if !(set.contains(a) && set.contains(b)) {
                return Err(format!("the CDS response without {g} left out alpha or beta too: {}", c.seen()));
            }
            Ok(())
        }
        "sotw-names" => {
            let mut c = ctx.connect_sotw().await?;
            let (a, b) = (alpha.assignment(), beta.assignment());
            c.request(EDS, &[a], None).await?;
            let set = c
                .until(EDS, &[a], EXPECT, |set| set.contains(a))
                .await
                .map_err(|s| format!("an EDS request for {a} never got it: {s}"))?;
            if set.len() != 1 {
                return Err(format!("asked for {a} only, got {set:?}: {}", c.seen()));
            }
            c.drain(EDS, &[a], QUIET / 2).await?;
            let ep = ctx.fresh_endpoint();
            ctx.control("set-endpoint", &["beta", &ep])?;
            let got = c.drain(EDS, &[a], QUIET * 2).await?;
            if got.iter().any(|(_, set)| set.contains(b)) {
                return Err(format!("{b}, never asked for, was sent when it changed: {}", c.seen()));
            }
            // The subscription grows: both come, in one set.
            c.request(EDS, &[a, b], None).await?;
            c.until(EDS, &[a, b], EXPECT, |set| set.contains(a) && set.contains(b))
                .await
                .map_err(|s| format!("asked for {a} and {b}; no response held both: {s}"))?;
            // And shrinks: a change of the name left out is not sent.
            c.request(EDS, &[b], None).await?;
            c.drain(EDS, &[b], QUIET / 2).await?;
            let ep = ctx.fresh_endpoint();
            ctx.control("set-endpoint", &["alpha", &ep])?;
            let got = c.drain(EDS, &[b], QUIET * 2).await?;
            if got.iter().any(|(_, set)| set.contains(a)) {
                return Err(format!("{a}, no longer asked for, was sent when it changed: {}", c.seen()));
            }
            Ok(())
        }
        "sotw-ack-nack" => {
            let mut c = ctx.connect_sotw().await?;
            let a = alpha.cluster();
            c.request(CDS, LEGACY_WILDCARD, None).await?;
            c.until(CDS, LEGACY_WILDCARD, EXPECT, |set| set.contains(a)).await?;
            let acked = c.latest.get(CDS.type_url()).map(|l| l.1.clone()).unwrap_or_default();
            let got = c.drain(CDS, LEGACY_WILDCARD, QUIET).await?;
            if got.iter().any(|(version, _)| *version == acked) {
                return Err(format!("the ACKed CDS set (version {acked}) was sent again: {}", c.seen()));
            }
            ctx.control("change-cluster", &["alpha"])?;
            let before = c.latest.get(CDS.type_url()).map(|l| l.1.clone());
            let deadline = Instant::now() + EXPECT;
            let rejected = loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let Some((r, _)) = c.recv(left).await? else {
                    return Err(format!("`change-cluster alpha` never reached the client: {}", c.seen()));
                };
                if r.type_url == CDS.type_url() && Some(&r.version_info) != before.as_ref() {
                    break r.version_info;
                }
                if let Some(ty) = ResourceType::from_type_url(&r.type_url) {
                    c.request(ty, &[], None).await?;
                }
            };
            c.request(CDS, LEGACY_WILDCARD, Some("conformance: rejected on purpose")).await?;
            let deadline = Instant::now() + QUIET * 2;
            while let Some((r, _)) = c.recv(deadline.saturating_duration_since(Instant::now())).await? {
                if r.type_url == CDS.type_url() && r.version_info == rejected {
                    return Err(format!("the NACKed CDS set (version {rejected}) was sent again: {}", c.seen()));
                }
                if let Some(ty) = ResourceType::from_type_url(&r.type_url) {
                    c.request(ty, &[], None).await?;
                }
            }
            ctx.control("change-cluster", &["alpha"])?;
            c.until(CDS, LEGACY_WILDCARD, EXPECT, |set| set.contains(a))
                .await
                .map_err(|s| format!("after a NACK, a new change of {a} never came: {s}"))?;
            Ok(())
        }
        "proxyless" => {
            let Some(listener) = alpha.grpc_lds.first() else {
                return Err("the control adapter names no gRPC listener for alpha (`grpc-lds NAME` in `names`): \
                            proxyless clients are not served"
                    .to_string());
            };
            proxyless::check(&ctx.server, &ctx.node_id, listener, alpha.cluster()).await
        }
        other => Err(format!("no rule {other:?}")),
    }
}

/// Runs the rules named in `only` (all when empty) against `server`; each check starts from
/// `reset` and has [`CHECK_LIMIT`].
pub async fn run(
    server: &str,
    node_id: &str,
    control: &mut dyn Control,
    only: &[String],
) -> Result<Vec<Outcome>, String> {
    for rule in only {
        if !RULES.iter().any(|r| r.id == rule) {
            let ids: Vec<&str> = RULES.iter().map(|r| r.id).collect();
            return Err(format!("no rule {rule:?}; rules: {}", ids.join(", ")));
        }
    }
    let mut names =
        |svc: &str| -> Result<ServiceNames, String> { ServiceNames::parse(svc, &control.run("names", &[svc])?) };
    let (alpha, beta, gamma) = (names("alpha")?, names("beta")?, names("gamma")?);
    let mut ctx =
        Ctx { server: server.to_string(), node_id: node_id.to_string(), control, alpha, beta, gamma, next_ip: 0 };
    let mut out = Vec::new();
    for rule in RULES.iter().filter(|r| only.is_empty() || only.iter().any(|o| o == r.id)) {
        let started = Instant::now();
        let result = match tokio::time::timeout(CHECK_LIMIT, async {
            ctx.reset().await?;
            check(&mut ctx, rule.id).await
        })
        .await
        {
            Ok(r) => r,
            Err(_) => Err(format!("the check did not finish within {CHECK_LIMIT:?}")),
        };
        out.push(Outcome {
            rule: rule.id,
            description: rule.description,
            held: result.is_ok(),
            detail: result.err().unwrap_or_default(),
            millis: started.elapsed().as_millis() as u64,
        });
    }
    // Leave the server as the suite found it after `reset`.
    let _ = ctx.control("reset", &[]);
    Ok(out)
}

/// The outcomes as a text table: rule, held/BROKEN, time, then what a broken check saw.
pub fn table(outcomes: &[Outcome]) -> String {
    let width = outcomes.iter().map(|o| o.rule.len()).max().unwrap_or(4).max(4);
    let mut s = format!("{:width$}  {:6}  {:>6}  {}\n", "rule", "result", "ms", "what it checks");
    for o in outcomes {
        let result = if o.held { "held" } else { "BROKEN" };
        s.push_str(&format!("{:width$}  {:6}  {:>6}  {}\n", o.rule, result, o.millis, o.description));
        if !o.held {
            s.push_str(&format!("{:width$}    saw: {}\n", "", o.detail));
        }
    }
    let held = outcomes.iter().filter(|o| o.held).count();
    s.push_str(&format!("{held} of {} rules held\n", outcomes.len()));
    s
}

/// meshflow's own control adapter: writes `conformance-*.yaml` files into its config directory
/// (`meshflow xds control --config-dir DIR <verb> <args>…`). Services live in namespace
/// `conformance`, HTTP port 80, endpoints on port 8080.
pub fn meshflow_control(dir: &std::path::Path, verb: &str, args: &[String]) -> Result<String, String> {
    const NS: &str = "conformance";
    let arg = |i: usize| -> Result<&str, String> {
        args.get(i).map(String::as_str).ok_or_else(|| format!("control {verb}: missing argument {}", i + 1))
    };
    let valid = |name: &str| -> Result<(), String> {
        let ok = !name.is_empty()
            && name.len() <= 50
            && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !name.starts_with('-');
        if ok { Ok(()) } else { Err(format!("control {verb}: service name {name:?} is not a DNS label")) }
    };
    let svc_path = |name: &str| dir.join(format!("conformance-{name}.yaml"));
    let dr_path = |name: &str| dir.join(format!("conformance-{name}-dr.yaml"));
    let write = |path: std::path::PathBuf, text: String| -> Result<(), String> {
        // Write aside and rename, so the watcher never reads half a file.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, &path).map_err(|e| format!("renaming to {}: {e}", path.display()))
    };
    let cluster_ip = |name: &str| -> String {
        let h = xxhash_rust::xxh3::xxh3_64(name.as_bytes());
        format!("10.96.{}.{}", 200 + (h >> 8) % 50, 1 + h % 250)
    };
    let service_yaml = |name: &str, endpoint: &str| -> Result<String, String> {
        let (ip, port) =
            endpoint.rsplit_once(':').ok_or_else(|| format!("control {verb}: endpoint {endpoint:?} is not IP:PORT"))?;
        ip.parse::<std::net::Ipv4Addr>().map_err(|_| format!("control {verb}: {ip:?} is not an IPv4 address"))?;
        port.parse::<u16>().map_err(|_| format!("control {verb}: {port:?} is not a port"))?;
        Ok(format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {NS}}}\nspec:\n  clusterIP: {cip}\n  \
             selector: {{app: {name}}}\n  ports:\n  - {{name: http, protocol: TCP, port: 80, targetPort: {port}}}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-1, namespace: {NS}, labels: \
             {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nports:\n- {{name: http, protocol: TCP, port: {port}}}\n\
             endpoints:\n- addresses: [\"{ip}\"]\n  conditions: {{ready: true}}\n",
            cip = cluster_ip(name)
        ))
    };
    let default_endpoint = |name: &str| {
        let h = xxhash_rust::xxh3::xxh3_64(name.as_bytes());
        format!("10.{}.{}.{}:8080", 100 + (h >> 16) % 50, (h >> 8) % 256, 1 + h % 250)
    };
    match verb {
        "reset" => {
            let entries = std::fs::read_dir(dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                let keep = name == "conformance-alpha.yaml" || name == "conformance-beta.yaml";
                if name.starts_with("conformance-") && !keep {
                    std::fs::remove_file(e.path()).map_err(|err| format!("removing {}: {err}", e.path().display()))?;
                }
            }
            for name in ["alpha", "beta"] {
                let text = service_yaml(name, &default_endpoint(name))?;
                if std::fs::read_to_string(svc_path(name)).ok().as_deref() != Some(text.as_str()) {
                    write(svc_path(name), text)?;
                }
            }
            Ok(String::new())
        }
        "add-service" => {
            let name = arg(0)?;
            valid(name)?;
            write(svc_path(name), service_yaml(name, &default_endpoint(name))?)?;
            Ok(String::new())
        }
        "remove-service" => {
            let name = arg(0)?;
            valid(name)?;
            for p in [svc_path(name), dr_path(name)] {
                match std::fs::remove_file(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(format!("removing {}: {e}", p.display())),
                }
            }
            Ok(String::new())
        }
        "set-endpoint" => {
            let name = arg(0)?;
            valid(name)?;
            if !svc_path(name).exists() {
                return Err(format!("control set-endpoint: service {name:?} is not served"));
            }
            write(svc_path(name), service_yaml(name, arg(1)?)?)?;
            Ok(String::new())
        }
        "change-cluster" => {
            let name = arg(0)?;
            valid(name)?;
            // A DestinationRule's connect timeout: the Cluster changes, its assignment does not.
            let previous = std::fs::read_to_string(dr_path(name)).ok().and_then(|t| {
                let at = t.find("connectTimeout: ")? + "connectTimeout: ".len();
                t[at..].split("ms").next()?.trim().parse::<u64>().ok()
            });
            let ms = previous.map_or(1001, |p| if p >= 9000 { 1001 } else { p + 1 });
            write(
                dr_path(name),
                format!(
                    "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: {NS}}}\n\
                     spec:\n  host: {name}.{NS}.svc.cluster.local\n  trafficPolicy:\n    connectionPool:\n      tcp:\n        \
                     connectTimeout: {ms}ms\n"
                ),
            )?;
            Ok(String::new())
        }
        "names" => {
            let name = arg(0)?;
            valid(name)?;
            let cluster = format!("outbound|80||{name}.{NS}.svc.cluster.local");
            let fqdn = format!("{name}.{NS}.svc.cluster.local");
            Ok(format!("cds {cluster}\neds {cluster}\nlds 0.0.0.0_80\nrds 80\ngrpc-lds {fqdn}:80\n"))
        }
        other => Err(format!(
            "control: unknown verb {other:?} (reset, add-service, remove-service, set-endpoint, change-cluster, names)"
        )),
    }
}
