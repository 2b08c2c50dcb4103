//! A client that stops reading does not slow the others, and holds bounded memory on the
//! server; a disconnected client frees its state.
//!
//! In process: meshflow's ADS server (`xds::serve_with_connections`) on a cache the test
//! writes directly, so the figures are the fan-out alone (no file watcher, no engine). N
//! delta clients read and ACK; each step replaces the ClusterLoadAssignment (about 1,000
//! endpoints, ~40 KB) and waits until every reading client holds the new one. Measured twice
//! in the same run: without and with one more client that holds its stream open and never
//! reads. Asserted: every reading client converges at every step, the stalled stream's queue
//! of responses (`queuedMax` of `/debug/syncz`, [`Connection::queued`]) never exceeded
//! [`STREAM_QUEUE_BOUND`] and it was handed fewer assignments than there were steps (it
//! stopped following the cache while its client did not read), the stalled client, reading again, gets the latest
//! version and not every intermediate one, and once every client is gone the connections
//! registry and the class registry are empty. Latencies are printed, not asserted.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use meshflow::cache::Cache;
use meshflow::engine::{CommandSender, ResourceChange, ResourceDelta};
use meshflow::translate::{ResourceType, Scope};
use meshflow::xds::STREAM_QUEUE_BOUND;
use meshflow::xds::classes::ClassRegistry;
use meshflow::xds::sync::Connections;
use prost::Message;
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::ReceiverStream;

const CLUSTER: &str = "outbound|80||big.default.svc.cluster.local";
const ENDPOINTS: u32 = 1000;
const READERS: usize = 50;
const STEPS_WITHOUT: u64 = 30;
const STEPS_WITH: u64 = 60;
const CONVERGE: Duration = Duration::from_secs(20);

/// The assignment of step `step`: its first endpoint's address encodes the step.
fn assignment(step: u64) -> Vec<u8> {
    let ep = |ip: String| LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
            address: Some(core::Address {
                address: Some(core::address::Address::SocketAddress(core::SocketAddress {
                    address: ip,
                    port_specifier: Some(core::socket_address::PortSpecifier::PortValue(8080)),
                    ..Default::default()
                })),
            }),
            ..Default::default()
        })),
        ..Default::default()
    };
    let mut lb = vec![ep(format!("10.9.{}.{}", step >> 8, step & 255))];
    lb.extend((1..ENDPOINTS).map(|i| ep(format!("10.1.{}.{}", i >> 8, i & 255))));
    ClusterLoadAssignment {
        cluster_name: CLUSTER.into(),
        endpoints: vec![LocalityLbEndpoints { lb_endpoints: lb, ..Default::default() }],
        ..Default::default()
    }
    .encode_to_vec()
}

/// The step an assignment carries.
fn step_of(bytes: &[u8]) -> Option<u64> {
    let cla = ClusterLoadAssignment::decode(bytes).ok()?;
    let lb = cla.endpoints.first()?.lb_endpoints.first()?;
    let Some(lb_endpoint::HostIdentifier::Endpoint(e)) = &lb.host_identifier else { return None };
    let Some(core::address::Address::SocketAddress(a)) = e.address.as_ref()?.address.as_ref() else { return None };
    let parts: Vec<u64> = a.address.split('.').filter_map(|p| p.parse().ok()).collect();
    (parts.len() == 4 && parts[1] == 9).then(|| (parts[2] << 8) | parts[3])
}

fn put(cache: &Cache, time: u64, ty: ResourceType, body: Vec<u8>) {
    cache.apply(&ResourceDelta {
        time,
        changes: vec![ResourceChange { scope: Scope::All, ty, name: CLUSTER.into(), body: Some(Arc::from(body)) }],
        diagnostics: Vec::new(),
        pod_localities: Vec::new(),
    });
}

fn node(i: usize) -> String {
    format!("sidecar~10.0.{}.{}~c{i}.default~default.svc.cluster.local", i >> 8, i & 255)
}

/// The node metadata of every client: the same pod labels (`LABELS`, as istio-agent sends
/// them), so the clients are one class, as the pods of one Deployment are.
fn labels() -> envoy_types::pb::google::protobuf::Struct {
    use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
    let app = Struct { fields: [("app".to_string(), Value { kind: Some(Kind::StringValue("reader".into())) })].into() };
    let labels = (meshflow::xds::classes::LABELS_KEY.to_string(), Value { kind: Some(Kind::StructValue(app)) });
    Struct { fields: [labels].into() }
}

/// Opens a delta stream subscribed to every Cluster and assignment. With `small_window`, the
/// HTTP/2 windows are the protocol's default 64 KiB, so a client that does not read stops
/// the server's sending soon.
async fn open(
    addr: SocketAddr,
    node_id: String,
    small_window: bool,
) -> (mpsc::Sender<DeltaDiscoveryRequest>, tonic::Streaming<DeltaDiscoveryResponse>) {
    let mut endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap();
    if small_window {
        endpoint = endpoint.initial_stream_window_size(65_535).initial_connection_window_size(65_535);
    }
    let channel = endpoint.connect().await.expect("connect");
    let mut grpc = AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(64 << 20);
    let (tx, rx) = mpsc::channel(16);
    for (i, ty) in [ResourceType::Cluster, ResourceType::ClusterLoadAssignment].into_iter().enumerate() {
        tx.send(DeltaDiscoveryRequest {
            node: (i == 0).then(|| core::Node { id: node_id.clone(), metadata: Some(labels()), ..Default::default() }),
            type_url: ty.type_url().into(),
            resource_names_subscribe: vec!["*".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let stream = grpc.delta_aggregated_resources(ReceiverStream::new(rx)).await.expect("open stream").into_inner();
    (tx, stream)
}

/// A reading client: ACKs everything, publishes the step of the assignment it holds.
async fn reader(addr: SocketAddr, i: usize, held: Arc<AtomicU64>, notify: Arc<Notify>) -> tokio::task::JoinHandle<()> {
    let (tx, mut stream) = open(addr, node(i), false).await;
    tokio::spawn(async move {
        while let Ok(Some(r)) = stream.message().await {
            if r.type_url == ResourceType::ClusterLoadAssignment.type_url() {
                for x in &r.resources {
                    if let Some(step) = x.resource.as_ref().and_then(|a| step_of(&a.value)) {
                        held.store(step, Ordering::SeqCst);
                        notify.notify_waiters();
                    }
                }
            }
            let ack = DeltaDiscoveryRequest { type_url: r.type_url, response_nonce: r.nonce, ..Default::default() };
            if tx.send(ack).await.is_err() {
                return;
            }
        }
    })
}

/// Runs `steps` changes from `first`; per step, how long until every reader held it.
async fn run_steps(cache: &Cache, held: &[Arc<AtomicU64>], notify: &Notify, first: u64, steps: u64) -> Vec<Duration> {
    let mut times = Vec::new();
    for step in first..first + steps {
        let started = Instant::now();
        let waiting = notify.notified();
        tokio::pin!(waiting);
        waiting.as_mut().enable();
        put(cache, step, ResourceType::ClusterLoadAssignment, assignment(step));
        loop {
            if held.iter().all(|h| h.load(Ordering::SeqCst) >= step) {
                break;
            }
            if started.elapsed() > CONVERGE {
                let behind = held.iter().filter(|h| h.load(Ordering::SeqCst) < step).count();
                panic!("step {step}: {behind} of {} reading clients did not converge in {CONVERGE:?}", held.len());
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), waiting.as_mut()).await;
            waiting.set(notify.notified());
            waiting.as_mut().enable();
        }
        times.push(started.elapsed());
    }
    times
}

fn summary(times: &[Duration]) -> String {
    let mut ms: Vec<f64> = times.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    let q = |p: f64| ms[((ms.len() as f64 - 1.0) * p).round() as usize];
    format!("n={} p50={:.2} ms p90={:.2} ms max={:.2} ms", ms.len(), q(0.5), q(0.9), q(1.0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_does_not_slow_the_others_and_its_queue_stays_bounded() {
    let cache = Cache::new(["test".to_string()]);
    let eds_cluster = Cluster {
        name: CLUSTER.into(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::Eds as i32)),
        ..Default::default()
    };
    put(&cache, 0, ResourceType::Cluster, eds_cluster.encode_to_vec());
    put(&cache, 0, ResourceType::ClusterLoadAssignment, assignment(0));
    cache.source_synced("test");
    // No engine: the cache is filled by hand. What a connecting stream waits for (its class
    // computed) is answered at once.
    let (engine, engine_rx) = crossbeam_channel::unbounded::<meshflow::engine::Command>();
    std::thread::spawn(move || {
        for command in engine_rx {
            if let meshflow::engine::Command::Then(callback) = command {
                callback();
            }
        }
    });
    let classes = ClassRegistry::new(CommandSender::new(engine, None), Duration::from_millis(100));
    let connections = Connections::new();
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, {
        let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        l.local_addr().unwrap().port()
    }));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(meshflow::xds::serve_with_connections(
        cache.clone(),
        Some(classes.clone()),
        connections.clone(),
        addr,
        async move {
            let _ = stop_rx.await;
        },
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;

    let notify = Arc::new(Notify::new());
    let held: Vec<Arc<AtomicU64>> = (0..READERS).map(|_| Arc::new(AtomicU64::new(u64::MAX))).collect();
    let mut readers = Vec::new();
    for (i, h) in held.iter().enumerate() {
        readers.push(reader(addr, i, h.clone(), notify.clone()).await);
    }
    // Everyone holds step 0 first.
    let start = Instant::now();
    while held.iter().any(|h| h.load(Ordering::SeqCst) != 0) {
        assert!(start.elapsed() < CONVERGE, "the readers never got the first assignment");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let metrics = meshflow::metrics::global();
    let shared = metrics.batches_shared.get();
    let without = run_steps(&cache, &held, &notify, 1, STEPS_WITHOUT).await;
    // The readers subscribed alike: for most of them the batch of a step is the one another
    // reader built (other tests of this process can only add to the count).
    let shared = metrics.batches_shared.get() - shared;
    eprintln!("  batches shared between readers: {shared} for {STEPS_WITHOUT} steps to {READERS} readers");
    assert!(
        shared >= STEPS_WITHOUT * READERS as u64 / 2,
        "only {shared} batches shared for {STEPS_WITHOUT} steps to {READERS} readers subscribed alike"
    );

    // One more client: subscribes, then never reads.
    let stalled_id = node(READERS);
    let (stalled_tx, mut stalled) = open(addr, stalled_id.clone(), true).await;
    let with = run_steps(&cache, &held, &notify, 1 + STEPS_WITHOUT, STEPS_WITH).await;
    let last = STEPS_WITHOUT + STEPS_WITH;

    eprintln!("fan-out to {READERS} delta clients, one {ENDPOINTS}-endpoint assignment per step:");
    eprintln!("  without a stalled client: {}", summary(&without));
    eprintln!("  with a stalled client:    {}", summary(&with));

    let conn = connections.by_node(&stalled_id).expect("the stalled stream is registered");
    let (queued, queued_max) = conn.queued();
    eprintln!("  stalled stream: queued {queued}, queuedMax {queued_max} (bound {STREAM_QUEUE_BOUND})");
    assert!(queued_max <= STREAM_QUEUE_BOUND as u64, "queuedMax {queued_max} > bound {STREAM_QUEUE_BOUND}");
    let (sent, _) = conn.sent_counts(ResourceType::ClusterLoadAssignment);
    eprintln!("  stalled stream: handed {sent} assignments for {STEPS_WITH} changes");
    assert!(sent >= 1, "the stalled stream was never handed an assignment");
    assert!(sent < STEPS_WITH, "the stalled stream was handed {sent} assignments for {STEPS_WITH} changes");

    // The stalled client reads again: what was queued, then the latest, not every step.
    let mut received = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(3), stalled.message()).await {
            Ok(Ok(Some(r))) => {
                for x in &r.resources {
                    if let Some(step) = x.resource.as_ref().and_then(|a| step_of(&a.value)) {
                        received.push(step);
                    }
                }
                let _ = stalled_tx
                    .send(DeltaDiscoveryRequest { type_url: r.type_url, response_nonce: r.nonce, ..Default::default() })
                    .await;
                if received.last() == Some(&last) {
                    break;
                }
            }
            other => {
                panic!("the stalled client, reading again, did not get step {last}: got {received:?} then {other:?}")
            }
        }
    }
    eprintln!("  stalled client received {} assignments for {} changes: {:?}", received.len(), STEPS_WITH, received);
    assert!(
        (received.len() as u64) < STEPS_WITH,
        "the stalled client got {} assignments for {STEPS_WITH} changes: not coalesced",
        received.len()
    );
    let queued_steps: Vec<u64> = received.iter().copied().filter(|s| *s > STEPS_WITHOUT).collect();
    assert!(queued_steps.windows(2).all(|w| w[0] < w[1]), "versions out of order: {received:?}");

    // Everyone leaves: the registries empty.
    assert_eq!(connections.len(), READERS + 1);
    // Each stream is in one proxy class (and also in one locality entry, `locality:…`).
    let in_classes = |prefix: bool| {
        classes.classes().iter().filter(|(id, _)| id.starts_with("locality:") == prefix).map(|(_, n)| n).sum::<usize>()
    };
    assert_eq!(in_classes(false), READERS + 1);
    assert_eq!(in_classes(true), READERS + 1);
    for r in &readers {
        r.abort();
    }
    drop(stalled);
    drop(stalled_tx);
    for r in readers {
        let _ = r.await;
    }
    let start = Instant::now();
    while !connections.is_empty() || !classes.classes().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "after every client left: {} connections, classes {:?}",
            connections.len(),
            classes.classes()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop_tx.send(());
    let _ = server.await;
}
