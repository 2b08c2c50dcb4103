//! Simulated proxies: K delta ADS streams to the real xDS server, in process.
//!
//! Each client behaves as Envoy does on a delta ADS stream: wildcard CDS and LDS, then EDS for
//! the EDS clusters it was sent and RDS for the route configurations its listeners' HTTP
//! connection managers name, and an ACK (a request carrying the response nonce) for every
//! response. Every response is decoded: the client counts resources and bytes, and reports
//! each resource (name and version) to the [`Tracker`], which matches it to the engine batch
//! that produced that version so the bench can tell when the first client and the last one
//! received a batch.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use prost::Message;

use super::stream::{Connection, Resource as StreamResource};

use crate::translate::ResourceType;

/// What one batch (one engine output time) looks like to the clients.
#[derive(Debug, Default)]
pub struct BatchTrack {
    /// Changes of the batch that clients are to receive.
    pub expected: usize,
    /// When the first client received a resource of this batch.
    pub first: Option<Instant>,
    /// Per client: resources of this batch still to receive.
    remaining: HashMap<usize, usize>,
    pub done_clients: usize,
    /// The latest time a client that has received all of it did so.
    done_at: Option<Instant>,
    /// When the last client had received all of it.
    pub last: Option<Instant>,
}

impl BatchTrack {
    /// Per client, how many resources of the batch it has not received.
    pub fn remaining_counts(&self) -> Vec<usize> {
        let mut v: Vec<usize> = self.remaining.values().copied().collect();
        v.sort_unstable();
        v
    }
}

/// A resource's latest version (`None`: removed), the batch that made it and that batch's
/// cache sequence number.
type Latest = (Option<String>, u64, u64);

/// Matches what clients receive to the engine batches that produced it.
#[derive(Default)]
pub struct Tracker {
    /// The latest version of each resource (`None`: removed) and the batch that made it, by
    /// type and name. (Written on the engine's thread at every batch: foldhash, not SipHash,
    /// and names looked up without a copy.)
    latest: Mutex<HashMap<ResourceType, foldhash::HashMap<String, Latest>>>,
    pub batches: Mutex<HashMap<u64, BatchTrack>>,
    pub clients: usize,
    pub resources: AtomicU64,
    pub bytes: AtomicU64,
    pub responses: AtomicU64,
    pub nacks: AtomicU64,
    /// Clients that came to hold the configuration: a first Cluster and Listener response,
    /// and an answer (the resource, or its removal) for every assignment and route
    /// configuration they subscribed to. Counted once per stream.
    pub synced: AtomicU64,
    /// `meshflow xds load --control`: which clients got the endpoint change under way.
    pub fanout: Option<Fanout>,
}

/// One endpoint change watched across every client (`meshflow xds load --changes`): the
/// clients that received the service's ClusterLoadAssignment with the new endpoint, and when
/// the first and the last of them did.
pub struct Fanout {
    /// The ClusterLoadAssignment to watch (the control adapter's `eds` name).
    pub eds_name: String,
    state: Mutex<FanoutState>,
}

#[derive(Default)]
struct FanoutState {
    /// The endpoint address the change under way introduces.
    needle: Option<String>,
    got: HashSet<usize>,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Fanout {
    pub fn new(eds_name: String) -> Fanout {
        Fanout { eds_name, state: Mutex::new(FanoutState::default()) }
    }

    /// Starts watching for assignments that carry `address`.
    pub fn arm(&self, address: &str) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        *st = FanoutState { needle: Some(address.to_string()), ..Default::default() };
    }

    /// How many clients received the change, and when the first and the last did.
    pub fn progress(&self) -> (usize, Option<Instant>, Option<Instant>) {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        (st.got.len(), st.first, st.last)
    }

    fn saw(&self, client: usize, assignment: &[u8], at: Instant) {
        use envoy_types::pb::envoy::config::core::v3::address::Address as Kind;
        use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
        use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
        let needle = {
            let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            match &st.needle {
                Some(needle) if !st.got.contains(&client) => needle.clone(),
                _ => return,
            }
        };
        // Decoded outside the lock: every client decodes its own copy at the same moment.
        let Ok(cla) = ClusterLoadAssignment::decode(assignment) else { return };
        let carries = cla.endpoints.iter().flat_map(|l| &l.lb_endpoints).any(|e| {
            let Some(HostIdentifier::Endpoint(ep)) = &e.host_identifier else { return false };
            matches!(ep.address.as_ref().and_then(|a| a.address.as_ref()),
                Some(Kind::SocketAddress(sa)) if sa.address == needle)
        });
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if carries && st.needle.as_deref() == Some(needle.as_str()) && st.got.insert(client) {
            st.first.get_or_insert(at);
            st.last = Some(at);
        }
    }
}

impl Tracker {
    pub fn new(clients: usize) -> Tracker {
        Tracker { clients, ..Default::default() }
    }

    /// Records a batch's changes (before the cache serves them): resource and new version, and
    /// the cache sequence number the batch got.
    pub fn register(&self, batch: u64, seq: u64, changes: Vec<(ResourceType, String, Option<String>)>) {
        if self.clients == 0 || changes.is_empty() {
            return;
        }
        let expected = changes.len();
        let mut latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        for (ty, name, version) in changes {
            latest.entry(ty).or_default().insert(name, (version, batch, seq));
        }
        drop(latest);
        let mut batches = self.batches.lock().unwrap_or_else(|e| e.into_inner());
        batches.insert(batch, BatchTrack { expected, ..Default::default() });
    }

    /// Client `client` read, at `at`, a response built at cache sequence number `built_at`
    /// carrying `items` (name, version; None: removed). An item counts for the batch that made
    /// its version only if the response was built at or after that batch: a version can come
    /// back (a Pod removed and added again), and a response built before the batch that
    /// carries the same version is not the batch's.
    fn received(
        &self,
        client: usize,
        ty: ResourceType,
        items: &[(String, Option<String>)],
        built_at: u64,
        at: Instant,
    ) {
        let mut hits: HashMap<u64, usize> = HashMap::new();
        {
            let latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
            let Some(latest) = latest.get(&ty) else { return };
            for (name, version) in items {
                if let Some((v, batch, seq)) = latest.get(name.as_str())
                    && v == version
                    && built_at >= *seq
                {
                    *hits.entry(*batch).or_default() += 1;
                }
            }
        }
        if hits.is_empty() {
            return;
        }
        let mut batches = self.batches.lock().unwrap_or_else(|e| e.into_inner());
        for (batch, n) in hits {
            let Some(track) = batches.get_mut(&batch) else { continue };
            // Clients report from two threads: one that read later may report first.
            track.first = Some(track.first.map_or(at, |first| first.min(at)));
            let expected = track.expected;
            let remaining = track.remaining.entry(client).or_insert(expected);
            if *remaining == 0 {
                continue;
            }
            *remaining = remaining.saturating_sub(n);
            if *remaining == 0 {
                track.done_clients += 1;
                let done_at = track.done_at.map_or(at, |d| d.max(at));
                track.done_at = Some(done_at);
                if track.done_clients == self.clients {
                    track.last = Some(done_at);
                }
            }
        }
    }
}

/// How a simulated proxy treats what it receives.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Behaviour {
    /// Reads every response at once and ACKs it.
    #[default]
    Acking,
    /// Rejects every response that carries resources (a NACK with an `error_detail`), as an
    /// Envoy that cannot load them: the server must not resend those versions.
    Nacking,
    /// Waits this long before reading each response (a proxy on a starved node): the server
    /// must coalesce what it sends it and not delay the others. Its deliveries are not
    /// counted in the latencies to the last client.
    Slow(std::time::Duration),
}

/// Per-client counters.
#[derive(Default, Debug, Clone, Copy)]
pub struct ClientStats {
    pub resources: u64,
    pub bytes: u64,
}

pub fn node_id(i: usize) -> String {
    format!("sidecar~127.0.0.1~bench-{i}.default~default.svc.cluster.local")
}

/// The runtime the simulated proxies run on.
pub fn client_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-client")
        .on_thread_start(crate::sched::batch_scheduling)
        .enable_all()
        .build()
}

/// Who the simulated proxies say they are.
#[derive(clap::Args, Debug, Clone, Copy, Default)]
pub struct Shape {
    /// The proxies send node metadata LABELS that fall into this many classes (0: none, each
    /// proxy names its own absent pod, a class of its own).
    #[arg(long, default_value_t = 0)]
    pub classes: usize,
    /// Gateway proxies (`router~…` node ids, labelled istio=ingressgateway) instead of sidecars.
    #[arg(long)]
    pub router: bool,
}

/// The node of simulated proxy `i`.
pub fn node(i: usize, shape: Shape) -> Node {
    use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
    let string = |s: &str| Value { kind: Some(Kind::StringValue(s.to_string())) };
    let (id, mut labels) = if shape.router {
        (
            format!("router~127.0.0.1~bench-gw-{i}.istio-system~istio-system.svc.cluster.local"),
            vec![("istio", "ingressgateway".to_string())],
        )
    } else {
        (node_id(i), vec![])
    };
    let mut metadata = None;
    if shape.classes > 0 {
        labels.push(("bench-class", format!("c{}", i % shape.classes)));
        let labels = Struct { fields: labels.into_iter().map(|(k, v)| (k.to_string(), string(&v))).collect() };
        let fields = [(crate::xds::classes::LABELS_KEY.to_string(), Value { kind: Some(Kind::StructValue(labels)) })];
        metadata = Some(Struct { fields: fields.into_iter().collect() });
    }
    Node { id, cluster: "bench".into(), metadata, ..Default::default() }
}

/// Runs one client on its own stream of `connection` until the server closes the stream or
/// `stop` fires.
pub async fn run_client(
    i: usize,
    node: Node,
    connection: Connection,
    tracker: Arc<Tracker>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    behaviour: Behaviour,
) -> anyhow::Result<ClientStats> {
    let first: Vec<_> = [ResourceType::Cluster, ResourceType::Listener]
        .into_iter()
        .enumerate()
        .map(|(k, ty)| DeltaDiscoveryRequest {
            node: (k == 0).then(|| node.clone()),
            type_url: ty.type_url().into(),
            ..Default::default()
        })
        .collect();
    let mut stream = connection.delta(&first).await?;
    let mut stats = ClientStats::default();
    let mut eds: HashSet<String> = HashSet::new();
    let mut rds: HashSet<String> = HashSet::new();
    // Until the stream holds the configuration: the types not answered yet, and the names
    // subscribed to and not answered yet.
    let mut unanswered_types: HashSet<ResourceType> = [ResourceType::Cluster, ResourceType::Listener].into();
    let mut unanswered: HashSet<(ResourceType, String)> = HashSet::new();
    let mut synced = false;
    let nack_message = format!("meshflow bench: client {i} rejects every resource");
    loop {
        let (response, bytes) = tokio::select! {
            r = stream.next() => match r {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => anyhow::bail!("client {i}: {e:#}"),
            },
            _ = stop.wait_for(|s| *s) => break,
        };
        if let Behaviour::Slow(delay) = behaviour {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        let at = Instant::now();
        let Some(ty) = ResourceType::from_type_url(&response.type_url) else {
            anyhow::bail!("client {i}: response of unknown type {}", response.type_url);
        };
        // The gRPC frame's message, as tonic's client counted it.
        let bytes = bytes as u64;
        let count = (response.resources.len() + response.removed_resources.len()) as u64;
        stats.bytes += bytes;
        stats.resources += count;
        tracker.bytes.fetch_add(bytes, Ordering::Relaxed);
        tracker.responses.fetch_add(1, Ordering::Relaxed);
        tracker.resources.fetch_add(count, Ordering::Relaxed);
        let mut resources = Vec::with_capacity(response.resources.len());
        for r in &response.resources {
            resources.push(StreamResource::decode(r.clone()).map_err(|e| anyhow::anyhow!("client {i}: {e}"))?);
        }
        if tracker.clients > 0 && !matches!(behaviour, Behaviour::Slow(_)) {
            let mut items: Vec<(String, Option<String>)> =
                resources.iter().map(|r| (r.name.clone(), Some(r.version.clone()))).collect();
            items.extend(response.removed_resources.iter().map(|n| (n.clone(), None)));
            // The server's `system_version_info` is the cache sequence number it built at.
            let built_at = response.system_version_info.parse().unwrap_or(u64::MAX);
            tracker.received(i, ty, &items, built_at, at);
        }
        if !synced {
            unanswered_types.remove(&ty);
            for name in resources.iter().map(|r| &r.name).chain(&response.removed_resources) {
                unanswered.remove(&(ty, name.clone()));
            }
        }
        if let Some(fanout) = &tracker.fanout
            && ty == ResourceType::ClusterLoadAssignment
        {
            for r in resources.iter().filter(|r| r.name == fanout.eds_name) {
                if let Some(any) = &r.resource {
                    fanout.saw(i, &any.value, at);
                }
            }
        }

        // Follow-up subscriptions, as Envoy makes them.
        let mut subscribe = Vec::new();
        let mut unsubscribe = Vec::new();
        let (follow, wanted) = match ty {
            ResourceType::Cluster => (ResourceType::ClusterLoadAssignment, &mut eds),
            ResourceType::Listener => (ResourceType::RouteConfiguration, &mut rds),
            _ => (ty, &mut HashSet::new()),
        };
        for r in &resources {
            let Some(any) = &r.resource else { continue };
            let name = match ty {
                ResourceType::Cluster => Cluster::decode(&any.value[..]).ok().and_then(|c| {
                    let eds = matches!(c.cluster_discovery_type, Some(ClusterDiscoveryType::Type(t)) if t == DiscoveryType::Eds as i32);
                    eds.then(|| c.eds_cluster_config.map(|e| e.service_name).filter(|s| !s.is_empty()).unwrap_or(c.name))
                }),
                ResourceType::Listener => Listener::decode(&any.value[..]).ok().and_then(route_config_of),
                _ => None,
            };
            if let Some(name) = name
                && wanted.insert(name.clone())
            {
                if !synced {
                    unanswered.insert((follow, name.clone()));
                }
                subscribe.push(name);
            }
        }
        if ty == ResourceType::Cluster {
            for name in &response.removed_resources {
                if wanted.remove(name) {
                    unanswered.remove(&(follow, name.clone()));
                    unsubscribe.push(name.clone());
                }
            }
        }
        if !synced && unanswered_types.is_empty() && unanswered.is_empty() {
            synced = true;
            unanswered = HashSet::new();
            tracker.synced.fetch_add(1, Ordering::Relaxed);
        }
        let nack = behaviour == Behaviour::Nacking && !response.resources.is_empty();
        if nack {
            tracker.nacks.fetch_add(1, Ordering::Relaxed);
        }
        stream.ack(&response.type_url, &response.nonce, nack.then_some(nack_message.as_str()))?;
        if !subscribe.is_empty() || !unsubscribe.is_empty() {
            stream.send(&DeltaDiscoveryRequest {
                type_url: follow.type_url().into(),
                resource_names_subscribe: subscribe,
                resource_names_unsubscribe: unsubscribe,
                ..Default::default()
            })?;
        }
    }
    Ok(stats)
}

/// The route configuration an HTTP listener's connection manager loads over RDS.
fn route_config_of(listener: Listener) -> Option<String> {
    listener.filter_chains.iter().flat_map(|fc| &fc.filters).find_map(|f| {
        use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
        let Some(ConfigType::TypedConfig(any)) = &f.config_type else { return None };
        let hcm = HttpConnectionManager::decode(&any.value[..]).ok()?;
        match hcm.route_specifier? {
            RouteSpecifier::Rds(rds) => Some(rds.route_config_name),
            _ => None,
        }
    })
}

/// What `meshflow xds load` does: how many streams, and what it does once they hold the
/// configuration (also its command-line options).
#[derive(clap::Args, Debug, Clone)]
pub struct LoadOptions {
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// Keep the streams open and idle this long (to read the server's memory per stream).
    #[arg(long, default_value = "30s", value_parser = super::parse_duration)]
    pub hold: std::time::Duration,
    /// A conformance control adapter (as for `xds conformance`; run as `sh -c 'CMD "$@"'`):
    /// once every stream holds the configuration, make --changes endpoint changes of
    /// --service through it, one after the other, and time each from the first client that
    /// receives it to the last.
    #[arg(long)]
    pub control: Option<String>,
    #[arg(long, default_value = "alpha")]
    pub service: String,
    #[arg(long, default_value_t = 20)]
    pub changes: usize,
    /// Pause between two changes.
    #[arg(long, default_value = "200ms", value_parser = super::parse_duration)]
    pub interval: std::time::Duration,
    #[command(flatten)]
    pub shape: Shape,
    /// Streams opened on one HTTP/2 connection (1: each stream has a connection of its own, as
    /// each Envoy has; more: the streams share connections, as proxyless gRPC clients of one
    /// process share a channel). The server's per-connection costs (h2's buffers, a socket, a
    /// write per change) are then shared too.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub streams_per_connection: u32,
    /// Reconnect storms: this many times, after the changes, every stream is closed at once,
    /// then every client reconnects at once (with no versions held) and the time until all
    /// hold the configuration again is printed.
    #[arg(long, default_value_t = 0)]
    pub storms: usize,
}

/// How one endpoint change reached the clients.
#[derive(Debug, Clone, Copy)]
pub struct FanoutSample {
    pub reached: usize,
    /// From the first client receiving the new assignment to the last.
    pub spread: std::time::Duration,
    /// From the control adapter's exit (the server told) to the last client.
    pub from_control: std::time::Duration,
}

/// `meshflow xds load`: `clients` simulated proxies on delta streams to `server`. Returns once
/// they have held the configuration idle for `hold` (or when every stream ended), after the
/// endpoint changes when a control adapter is given.
pub fn load(server: &str, opts: &LoadOptions) -> anyhow::Result<Vec<FanoutSample>> {
    use std::time::Duration;

    use crate::xds::conformance::{CommandControl, Control};
    let endpoint = if server.contains("://") { server.to_string() } else { format!("http://{server}") };
    let mut control = opts.control.clone().map(|cmd| CommandControl { cmd });
    let mut tracker = Tracker::new(0);
    if let Some(control) = &mut control {
        let names = control.run("names", &[&opts.service]).map_err(anyhow::Error::msg)?;
        let eds = names
            .lines()
            .find_map(|l| l.strip_prefix("eds "))
            .ok_or_else(|| anyhow::anyhow!("control adapter `names {}` printed no `eds` line", opts.service))?;
        tracker.fanout = Some(Fanout::new(eds.trim().to_string()));
    }
    let tracker = Arc::new(tracker);
    let runtime = client_runtime()?;
    let (mut stop_tx, mut running) = connect_all(&runtime, endpoint.clone(), &tracker, opts)?;
    let mut samples = Vec::new();
    if let (Some(control), Some(fanout)) = (&mut control, &tracker.fanout) {
        for k in 0..opts.changes {
            let address = format!("10.251.{}.{}", k / 250, 1 + k % 250);
            fanout.arm(&address);
            let endpoint = format!("{address}:8080");
            control.run("set-endpoint", &[&opts.service, &endpoint]).map_err(anyhow::Error::msg)?;
            let told = Instant::now();
            let deadline = told + Duration::from_secs(10);
            let (reached, first, last) = loop {
                let (reached, first, last) = fanout.progress();
                if reached >= running.len() || Instant::now() > deadline {
                    break (reached, first, last);
                }
                std::thread::sleep(Duration::from_micros(500));
            };
            let (Some(first), Some(last)) = (first, last) else {
                eprintln!("change {k}: no client received {endpoint} within 10 s");
                continue;
            };
            samples.push(FanoutSample {
                reached,
                spread: last - first,
                from_control: last.saturating_duration_since(told),
            });
            std::thread::sleep(opts.interval);
        }
        print_fanout(&samples, running.len());
    }
    for k in 0..opts.storms {
        // Every stream closed at once (each client drops its connection)...
        // (Counted before the stop: the streams end as soon as it fires.)
        let streams = running.len();
        let closing = Instant::now();
        stop_tx.send_replace(true);
        for task in running.tasks {
            let _ = runtime.block_on(task);
        }
        eprintln!("storm {}: {streams} streams closed in {:.1} ms", k + 1, closing.elapsed().as_secs_f64() * 1e3);
        // ...then every client reconnects at once, holding nothing.
        (stop_tx, running) = connect_all(&runtime, endpoint.clone(), &tracker, opts)?;
    }
    eprintln!("idle for {:?}", opts.hold);
    std::thread::sleep(opts.hold);
    runtime.shutdown_background();
    Ok(samples)
}

/// The tasks of the clients of [`load`], one per connection, and how their streams end.
struct Running {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    ends: Arc<Ends>,
}

impl Running {
    /// The streams still open.
    fn len(&self) -> usize {
        self.ends.open()
    }
}

/// How many clients' streams are open, and the errors of those that failed (a stream that
/// ended without one was closed by the server, or stopped).
pub struct Ends {
    open: std::sync::atomic::AtomicUsize,
    errors: Mutex<Vec<String>>,
}

impl Ends {
    /// `clients` streams, all open.
    pub fn new(clients: usize) -> Arc<Ends> {
        Arc::new(Ends { open: clients.into(), errors: Default::default() })
    }

    /// The streams still open.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// The errors the streams that failed ended with, since the last call (one per stream).
    pub fn take_errors(&self) -> Vec<String> {
        std::mem::take(&mut *self.errors.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn end(&self, streams: usize, error: Option<String>) {
        self.open.fetch_sub(streams, Ordering::Relaxed);
        if let Some(error) = error {
            self.errors.lock().unwrap_or_else(|e| e.into_inner()).extend(std::iter::repeat_n(error, streams));
        }
    }
}

/// The clients of each connection when `clients` clients put `per` streams on one.
pub fn connection_groups(clients: usize, per: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    (0..clients.div_ceil(per)).map(move |g| g * per..((g + 1) * per).min(clients))
}

/// One simulated proxy of a [`run_group`]: its number, node and behaviour.
pub struct Member {
    pub i: usize,
    pub node: Node,
    pub behaviour: Behaviour,
}

/// Runs `members` on one connection to `endpoint` (retried for a second while the server is
/// not listening yet), in one task that also drives the connection: the responses one read
/// brings wake clients of this task only, and the ACKs they queue go out together, in one
/// write, when the task polls the connection next. (With a task per stream, each ACK woke the
/// connection's task and went out in a write of its own: a packet through loopback's TCP per
/// stream and change, on both sides. BENCHMARKS.md, session 26.)
pub async fn run_group(
    endpoint: String,
    members: Vec<Member>,
    tracker: Arc<Tracker>,
    stop: tokio::sync::watch::Receiver<bool>,
    ends: Arc<Ends>,
) {
    use std::task::Poll;

    use futures_util::{FutureExt, StreamExt};
    let mut tries = 0;
    let (connection, driver) = loop {
        match super::stream::handshake(&endpoint).await {
            Ok(c) => break c,
            Err(_) if tries < 50 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => return ends.end(members.len(), Some(format!("{e:#}"))),
        }
    };
    let mut clients: futures_util::stream::FuturesUnordered<_> = members
        .into_iter()
        .map(|m| run_client(m.i, m.node, connection.clone(), tracker.clone(), stop.clone(), m.behaviour))
        .collect();
    // (Fused: once the connection has ended, its streams end with an error.)
    let mut driver = std::pin::pin!(driver.fuse());
    std::future::poll_fn(|cx| {
        let _ = driver.as_mut().poll(cx);
        while let Poll::Ready(Some(result)) = clients.poll_next_unpin(cx) {
            ends.end(1, result.err().map(|e| format!("{e:#}")));
        }
        if clients.is_empty() { Poll::Ready(()) } else { Poll::Pending }
    })
    .await
}

/// Starts every client of `load` at once and waits until each holds the configuration (see
/// [`Tracker::synced`]). Returns the stop switch of the clients and
/// the streams still open; fails if none is.
fn connect_all(
    runtime: &tokio::runtime::Runtime,
    endpoint: String,
    tracker: &Arc<Tracker>,
    opts: &LoadOptions,
) -> anyhow::Result<(tokio::sync::watch::Sender<bool>, Running)> {
    use std::time::Duration;
    let clients = opts.clients;
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let before = (tracker.responses.load(Ordering::Relaxed), tracker.bytes.load(Ordering::Relaxed));
    // (Read before any client starts: a client that syncs before it was read would not count.)
    let synced_before = tracker.synced.load(Ordering::Relaxed);
    let started = Instant::now();
    // One connection per group of `streams_per_connection` clients, with a task of its own.
    let (per, shape) = (opts.streams_per_connection as usize, opts.shape);
    let ends = Ends::new(clients);
    let tasks: Vec<_> = connection_groups(clients, per)
        .map(|group| {
            let members = group.map(|i| Member { i, node: node(i, shape), behaviour: Behaviour::Acking }).collect();
            runtime.spawn(run_group(endpoint.clone(), members, tracker.clone(), stop.clone(), ends.clone()))
        })
        .collect();
    let running = Running { tasks, ends };
    // Done when every stream still open holds the configuration; a server that stops
    // answering for a minute ends the wait too (the line below then says how many do).
    let mut last = (before.0, Instant::now());
    let mut synced_at = None;
    loop {
        std::thread::sleep(Duration::from_millis(10));
        let responses = tracker.responses.load(Ordering::Relaxed);
        if responses != last.0 {
            last = (responses, Instant::now());
        }
        let synced = (tracker.synced.load(Ordering::Relaxed) - synced_before) as usize;
        let open = running.len();
        if open == 0 || synced >= open {
            synced_at = Some(Instant::now());
            break;
        }
        if last.1.elapsed() > Duration::from_secs(60) {
            break;
        }
    }
    // Streams that ended already: say why (the first reason and how many).
    let ended = clients - running.len();
    if ended > 0 {
        let errors = running.ends.take_errors();
        let first = errors.first().map_or("the server closed the stream", String::as_str);
        eprintln!("{ended} of {clients} streams ended: {first}");
    }
    if running.len() == 0 {
        anyhow::bail!("every stream ended");
    }
    let synced = tracker.synced.load(Ordering::Relaxed) - synced_before;
    match synced_at {
        Some(at) => eprintln!(
            "{} of {clients} streams hold the configuration ({} responses, {} bytes) after {:.1} s",
            running.len(),
            tracker.responses.load(Ordering::Relaxed) - before.0,
            tracker.bytes.load(Ordering::Relaxed) - before.1,
            (at - started).as_secs_f64(),
        ),
        None => eprintln!(
            "{synced} of {} open streams hold the configuration; no response for 60 s ({} responses, {} bytes)",
            running.len(),
            tracker.responses.load(Ordering::Relaxed) - before.0,
            tracker.bytes.load(Ordering::Relaxed) - before.1,
        ),
    }
    Ok((stop_tx, running))
}

fn print_fanout(samples: &[FanoutSample], streams: usize) {
    if samples.is_empty() {
        return;
    }
    let complete = samples.iter().filter(|s| s.reached >= streams).count();
    let quantiles = |mut v: Vec<std::time::Duration>| {
        v.sort_unstable();
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3;
        format!("{:.2} / {:.2} / {:.2} / {:.2}", at(0.5), at(0.9), at(0.99), at(1.0))
    };
    println!("{} endpoint changes; {complete} reached all {streams} streams", samples.len());
    println!("| measure | p50 / p90 / p99 / max ms |");
    println!("| --- | --- |");
    println!("| first → last client | {} |", quantiles(samples.iter().map(|s| s.spread).collect()));
    println!(
        "| control adapter's exit → last client | {} |",
        quantiles(samples.iter().map(|s| s.from_control).collect())
    );
}
