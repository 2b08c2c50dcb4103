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
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

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

/// A resource's latest version (`None`: removed) and the batch that made it.
type Latest = (Option<String>, u64);

/// Matches what clients receive to the engine batches that produced it.
#[derive(Default)]
pub struct Tracker {
    /// The latest version of each resource (`None`: removed) and the batch that made it.
    latest: Mutex<HashMap<(ResourceType, String), Latest>>,
    pub batches: Mutex<HashMap<u64, BatchTrack>>,
    pub clients: usize,
    pub resources: AtomicU64,
    pub bytes: AtomicU64,
    pub responses: AtomicU64,
    pub nacks: AtomicU64,
}

impl Tracker {
    pub fn new(clients: usize) -> Tracker {
        Tracker { clients, ..Default::default() }
    }

    /// Records a batch's changes (before the cache serves them): resource and new version.
    pub fn register(&self, batch: u64, changes: &[(ResourceType, String, Option<String>)]) {
        if self.clients == 0 || changes.is_empty() {
            return;
        }
        let mut latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        for (ty, name, version) in changes {
            latest.insert((*ty, name.clone()), (version.clone(), batch));
        }
        drop(latest);
        let mut batches = self.batches.lock().unwrap_or_else(|e| e.into_inner());
        batches.insert(batch, BatchTrack { expected: changes.len(), ..Default::default() });
    }

    fn received(&self, client: usize, ty: ResourceType, items: &[(String, Option<String>)], at: Instant) {
        let mut hits: HashMap<u64, usize> = HashMap::new();
        {
            let latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
            for (name, version) in items {
                if let Some((v, batch)) = latest.get(&(ty, name.clone()))
                    && v == version
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
            track.first.get_or_insert(at);
            let expected = track.expected;
            let remaining = track.remaining.entry(client).or_insert(expected);
            if *remaining == 0 {
                continue;
            }
            *remaining = remaining.saturating_sub(n);
            if *remaining == 0 {
                track.done_clients += 1;
                if track.done_clients == self.clients {
                    track.last = Some(at);
                }
            }
        }
    }
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

/// Runs one client until the server closes the stream or `stop` fires.
pub async fn run_client(
    i: usize,
    endpoint: String,
    tracker: Arc<Tracker>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<ClientStats> {
    let mut client = AggregatedDiscoveryServiceClient::connect(endpoint)
        .await?
        .max_decoding_message_size(256 << 20)
        .max_encoding_message_size(64 << 20);
    let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(64);
    let node = Node { id: node_id(i), cluster: "bench".into(), ..Default::default() };
    for (k, ty) in [ResourceType::Cluster, ResourceType::Listener].into_iter().enumerate() {
        tx.send(DeltaDiscoveryRequest {
            node: (k == 0).then(|| node.clone()),
            type_url: ty.type_url().into(),
            ..Default::default()
        })
        .await?;
    }
    let mut inbound = client.delta_aggregated_resources(ReceiverStream::new(rx)).await?.into_inner();
    let mut stats = ClientStats::default();
    let mut eds: HashSet<String> = HashSet::new();
    let mut rds: HashSet<String> = HashSet::new();
    loop {
        let response: DeltaDiscoveryResponse = tokio::select! {
            r = inbound.next() => match r {
                Some(Ok(r)) => r,
                Some(Err(status)) => anyhow::bail!("client {i}: stream failed: {status}"),
                None => break,
            },
            _ = stop.wait_for(|s| *s) => break,
        };
        let at = Instant::now();
        let Some(ty) = ResourceType::from_type_url(&response.type_url) else {
            anyhow::bail!("client {i}: response of unknown type {}", response.type_url);
        };
        let bytes = response.encoded_len() as u64;
        stats.bytes += bytes;
        stats.resources += (response.resources.len() + response.removed_resources.len()) as u64;
        tracker.bytes.fetch_add(bytes, Ordering::Relaxed);
        tracker.responses.fetch_add(1, Ordering::Relaxed);
        tracker
            .resources
            .fetch_add((response.resources.len() + response.removed_resources.len()) as u64, Ordering::Relaxed);
        let mut items: Vec<(String, Option<String>)> =
            response.resources.iter().map(|r| (r.name.clone(), Some(r.version.clone()))).collect();
        items.extend(response.removed_resources.iter().map(|n| (n.clone(), None)));
        tracker.received(i, ty, &items, at);

        // Follow-up subscriptions, as Envoy makes them.
        let mut subscribe = Vec::new();
        let mut unsubscribe = Vec::new();
        let (follow, wanted) = match ty {
            ResourceType::Cluster => (ResourceType::ClusterLoadAssignment, &mut eds),
            ResourceType::Listener => (ResourceType::RouteConfiguration, &mut rds),
            _ => (ty, &mut HashSet::new()),
        };
        for r in &response.resources {
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
                subscribe.push(name);
            }
        }
        if ty == ResourceType::Cluster {
            for name in &response.removed_resources {
                if wanted.remove(name) {
                    unsubscribe.push(name.clone());
                }
            }
        }
        let ack = DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            ..Default::default()
        };
        if tx.send(ack).await.is_err() {
            break;
        }
        if !subscribe.is_empty() || !unsubscribe.is_empty() {
            let req = DeltaDiscoveryRequest {
                type_url: follow.type_url().into(),
                resource_names_subscribe: subscribe,
                resource_names_unsubscribe: unsubscribe,
                ..Default::default()
            };
            if tx.send(req).await.is_err() {
                break;
            }
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

/// `meshflow xds load`: `clients` simulated proxies on delta streams to `server`. Returns once
/// they have held the configuration idle for `hold` (or when every stream ended).
pub fn load(server: &str, clients: usize, hold: std::time::Duration) -> anyhow::Result<()> {
    use std::time::Duration;
    let endpoint = if server.contains("://") { server.to_string() } else { format!("http://{server}") };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-client")
        .enable_all()
        .build()?;
    let tracker = Arc::new(Tracker::new(0));
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let tasks: Vec<_> =
        (0..clients).map(|i| runtime.spawn(run_client(i, endpoint.clone(), tracker.clone(), stop.clone()))).collect();
    // Synced: no response for two seconds after the first ones.
    let mut last = (0, Instant::now());
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let responses = tracker.responses.load(Ordering::Relaxed);
        if responses != last.0 {
            last = (responses, Instant::now());
        } else if responses > 0 && last.1.elapsed() > Duration::from_secs(2) {
            break;
        }
        if tasks.iter().all(|t| t.is_finished()) {
            let failed = tasks.into_iter().map(|t| runtime.block_on(t)).find_map(|r| match r {
                Ok(Err(e)) => Some(e),
                Err(e) => Some(anyhow::anyhow!("client task: {e}")),
                Ok(Ok(_)) => None,
            });
            return Err(failed.unwrap_or_else(|| anyhow::anyhow!("every stream ended")));
        }
    }
    let running = tasks.iter().filter(|t| !t.is_finished()).count();
    eprintln!(
        "{running} of {clients} streams hold the configuration ({} responses, {} resources, {} bytes) after {:.1} s; idle for {:?}",
        tracker.responses.load(Ordering::Relaxed),
        tracker.resources.load(Ordering::Relaxed),
        tracker.bytes.load(Ordering::Relaxed),
        (last.1 - started).as_secs_f64(),
        hold,
    );
    std::thread::sleep(hold);
    runtime.shutdown_background();
    Ok(())
}
