//! The Aggregated Discovery Service over gRPC: delta (`DeltaAggregatedResources`) and state of
//! the world (`StreamAggregatedResources`).
//!
//! No task of its own per stream: the stream's loop (it reads requests and watches the cache,
//! and drives a [`delta::DeltaStream`] or a [`sotw::SotwStream`]) runs inside the stream's
//! HTTP/2 response body ([`Driven`]), polled by the stream's task, which hyper hands to the
//! connection's own task to run ([`http`]). A change wakes that one task, which builds the
//! responses of its woken streams and writes them in one write; there is no task per stream
//! and no channel (on a fan-out to 5,000 streams, each hop was a wakeup per stream, and each
//! stream's write a packet of its own). HTTP/2 polls a body only while the stream's send buffer has room, so while a
//! slow client leaves it full the loop stops reading the cache's change log and later
//! catches up with the latest versions in one go: a slow stream never grows a queue.

pub mod classes;
pub mod client;
pub mod conformance;
mod cork;
pub mod delta;
mod held;
pub mod http;
pub mod node;
pub mod sotw;
pub mod sync;
pub mod wire;

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use futures_util::Stream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

use crate::cache::{Cache, View};
use crate::translate::ResourceType;
use classes::ClassRegistry;
use delta::{Answer, DeltaStream};
use node::BIND_ADDRESS_KEY;
use sotw::SotwStream;
use sync::{Connection, Connections, ProxyInfo};

/// Largest request a client may send.
const MAX_DECODING: usize = 64 << 20;

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Longest part of an Envoy error detail that goes into a log line: Envoy starts its NACK
/// message with a text dump of the rejected resource.
const MAX_ERROR_LOG: usize = 2048;

/// Responses a stream's loop may queue for its body before it waits for the body to take
/// them. The body takes them as fast as HTTP/2 has room, and the loop runs only when the body
/// is polled, so a stream's queue is one batch of a request or a change at most: one
/// response per type and request, or an addition and a removal response per type.
pub const RESPONSE_QUEUE: usize = 2 * ResourceType::ALL.len();

/// The most responses one stream ever holds: a full queue plus what is left of the batch that
/// filled it. `queuedMax` in `/debug/syncz` stays under it.
pub const STREAM_QUEUE_BOUND: usize = RESPONSE_QUEUE + 2 * ResourceType::ALL.len();

pub struct AdsServer {
    cache: Arc<Cache>,
    /// Where streams register their proxy's class. Without one, a proxy sees what every
    /// proxy of its kind sees (no gateway listeners).
    classes: Option<Arc<ClassRegistry>>,
    /// The connected streams, for `/debug/syncz` and `/debug/config_dump`.
    connections: Arc<Connections>,
    /// The batches delta streams build for a cache change, shared between streams alike.
    memo: Arc<delta::ChangeMemo>,
}

impl AdsServer {
    pub fn new(cache: Arc<Cache>, classes: Option<Arc<ClassRegistry>>) -> AdsServer {
        AdsServer { cache, classes, connections: Connections::new(), memo: Default::default() }
    }

    /// Streams register in `connections` (share it with the admin endpoint).
    pub fn with_connections(mut self, connections: Arc<Connections>) -> AdsServer {
        self.connections = connections;
        self
    }

    /// The gRPC service: delta responses written from shared encodings ([`wire::AdsService`]).
    pub fn into_service(self) -> wire::AdsService {
        wire::AdsService::new(self)
    }

    /// `StreamAggregatedResources` (routed here by [`wire::AdsService`]).
    fn sotw(&self, request: Request<wire::Requests<DiscoveryRequest>>) -> Response<ResponseStream<wire::SotwResponse>> {
        self.open::<SotwStream>(request)
    }

    /// `DeltaAggregatedResources` (routed here by [`wire::AdsService`]).
    fn delta(
        &self,
        request: Request<wire::Requests<DeltaDiscoveryRequest>>,
    ) -> Response<ResponseStream<wire::DeltaResponse>> {
        self.open::<DeltaStream>(request)
    }

    /// Opens one stream of protocol `P`: its loop runs inside the returned response stream.
    fn open<P: AdsProtocol>(
        &self,
        request: Request<wire::Requests<P::Request>>,
    ) -> Response<ResponseStream<P::Response>> {
        let peer = request.remote_addr();
        let mut inbound = request.into_inner();
        let outbox = Outbox::default();
        let (cache, classes, connections) = (self.cache.clone(), self.classes.clone(), self.connections.clone());
        let (out, memo) = (outbox.clone(), self.memo.clone());
        let run = async move {
            let shared = Shared { cache: &cache, classes: classes.as_ref(), connections: &connections, memo: &memo };
            let result = run_stream::<P>(shared, peer, &mut inbound, &out).await;
            if let Err(status) = &result {
                tracing::warn!(?peer, code = ?status.code(), message = status.message(), "closing {} stream", P::NAME);
            }
            result
        };
        Response::new(Box::pin(Driven { run: Some(Box::pin(run)), outbox, end: None }))
    }
}

/// The responses a stream's loop has made and its body has not taken yet. The loop and the
/// body are polled by the same task, so neither ever waits on the other across tasks: the
/// loop waits only for a full queue, and the body drains it before it polls the loop again.
struct Outbox<T>(Arc<std::sync::Mutex<std::collections::VecDeque<T>>>);

impl<T> Default for Outbox<T> {
    fn default() -> Outbox<T> {
        Outbox(Default::default())
    }
}

impl<T> Clone for Outbox<T> {
    fn clone(&self) -> Outbox<T> {
        Outbox(self.0.clone())
    }
}

impl<T> Outbox<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::VecDeque<T>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    /// The oldest response; a queue it leaves empty gives its allocation back (an idle
    /// stream holds none: ~480 bytes per stream of 5,000).
    fn pop(&self) -> Option<T> {
        let mut queue = self.lock();
        let item = queue.pop_front();
        if queue.is_empty() && queue.capacity() > 0 {
            *queue = std::collections::VecDeque::new();
        }
        item
    }

    /// Queues `item` once the queue holds fewer than [`RESPONSE_QUEUE`]. Waiting registers no
    /// waker: the body that polls the loop drains the queue and polls the loop again.
    async fn send(&self, item: T) {
        let mut item = Some(item);
        std::future::poll_fn(|_| {
            let mut queue = self.lock();
            if queue.len() >= RESPONSE_QUEUE {
                return std::task::Poll::Pending;
            }
            queue.extend(item.take());
            std::task::Poll::Ready(())
        })
        .await
    }
}

type StreamLoop = Pin<Box<dyn std::future::Future<Output = Result<(), Status>> + Send>>;

/// A stream's responses as its body reads them, made by the stream's loop ([`run_stream`])
/// polled right here: queued responses first, then the loop, then its end (the error status
/// it ended with, if any). Dropping it (the stream reset or finished) drops the loop and with
/// it the stream's state and registrations.
struct Driven<T> {
    run: Option<StreamLoop>,
    outbox: Outbox<T>,
    end: Option<Status>,
}

impl<T> Stream for Driven<T> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let this = &mut *self;
        if let Some(response) = this.outbox.pop() {
            return Poll::Ready(Some(Ok(response)));
        }
        if let Some(run) = &mut this.run {
            match run.as_mut().poll(cx) {
                Poll::Ready(result) => {
                    this.run = None;
                    this.end = result.err();
                }
                Poll::Pending => {
                    return match this.outbox.pop() {
                        Some(response) => Poll::Ready(Some(Ok(response))),
                        None => Poll::Pending,
                    };
                }
            }
        }
        // The loop ended: what it queued last, then its status.
        if let Some(response) = this.outbox.pop() {
            return Poll::Ready(Some(Ok(response)));
        }
        Poll::Ready(this.end.take().map(Err))
    }
}

/// Serves ADS on `addr` until `shutdown` resolves; streams register their proxy's class with
/// `classes`.
pub async fn serve(
    cache: Arc<Cache>,
    classes: Option<Arc<ClassRegistry>>,
    addr: SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_with_connections(cache, classes, Connections::new(), addr, shutdown).await
}

/// [`serve`], registering the streams in `connections`.
pub async fn serve_with_connections(
    cache: Arc<Cache>,
    classes: Option<Arc<ClassRegistry>>,
    connections: Arc<Connections>,
    addr: SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = http::listen(addr).map_err(|e| anyhow::anyhow!("binding xDS address {addr}: {e}"))?;
    tracing::info!(%addr, "serving ADS (delta and state of the world)");
    let service = AdsServer::new(cache, classes).with_connections(connections).into_service();
    http::serve(listener, service, shutdown).await;
    Ok(())
}

fn bind_address(node: &envoy_types::pb::envoy::config::core::v3::Node) -> Result<Option<IpAddr>, Status> {
    use envoy_types::pb::google::protobuf::value::Kind;
    let Some(value) = node.metadata.as_ref().and_then(|m| m.fields.get(BIND_ADDRESS_KEY)) else {
        return Ok(None);
    };
    match &value.kind {
        Some(Kind::StringValue(s)) => s.parse().map(Some).map_err(|_| {
            Status::invalid_argument(format!("node metadata {BIND_ADDRESS_KEY}: {s:?} is not an IP address"))
        }),
        _ => Err(Status::invalid_argument(format!("node metadata {BIND_ADDRESS_KEY} must be a string"))),
    }
}

/// Whether a proxy's traffic is captured (istiod's `GetInterceptionMode`): metadata
/// `INTERCEPTION_MODE: REDIRECT`, and no bind address (a proxy that binds its own address
/// is not captured, whatever it says). TPROXY is not served: such a proxy is served as an
/// uncaptured one, and the log says so.
fn captured(mode: &str, bind: Option<IpAddr>, node: &str) -> bool {
    match mode {
        "REDIRECT" if bind.is_none() => true,
        "REDIRECT" => {
            tracing::warn!(node, "INTERCEPTION_MODE REDIRECT with a bind address: served without capture listeners");
            false
        }
        "" | "NONE" => false,
        other => {
            tracing::warn!(
                node,
                mode = other,
                "INTERCEPTION_MODE not supported (REDIRECT and NONE are): served as NONE"
            );
            false
        }
    }
}

/// What the stream loop needs of one protocol's per-stream state: [`DeltaStream`] for delta
/// ADS, [`SotwStream`] for state of the world.
trait AdsProtocol: Send {
    type Request: prost::Message + Default + Send + 'static;
    type Response: Send + 'static;
    /// For logs: "delta" or "SotW".
    const NAME: &'static str;
    fn open(node: Arc<str>, bind: Option<IpAddr>, view: View, memo: &Arc<delta::ChangeMemo>) -> Self;
    fn node_of(req: &Self::Request) -> Option<&envoy_types::pb::envoy::config::core::v3::Node>;
    fn node(&self) -> &str;
    fn view(&self) -> &View;
    fn on_request(&mut self, req: &Self::Request, cache: &Cache) -> Result<(Answer, Vec<Self::Response>), Status>;
    fn on_cache_change(&mut self, cache: &Cache) -> Vec<Self::Response>;
    /// The cache sequence number a response was built at: it carries every change up to it.
    fn built_at(response: &Self::Response) -> u64;
    fn log_push(node: &str, response: &Self::Response);
    /// A response's type URL, nonce and `version_info` (None for delta).
    fn response_meta(response: &Self::Response) -> (&str, &str, Option<&str>);
    /// A response's resources and removed names.
    fn counts(response: &Self::Response) -> (usize, usize);
    /// The gRPC code of a NACK's `error_detail`.
    fn error_code(req: &Self::Request) -> i32;
}

impl AdsProtocol for DeltaStream {
    type Request = DeltaDiscoveryRequest;
    type Response = wire::DeltaResponse;
    const NAME: &'static str = "delta";
    fn open(node: Arc<str>, bind: Option<IpAddr>, view: View, memo: &Arc<delta::ChangeMemo>) -> Self {
        DeltaStream::new(node, bind, view).with_memo(memo.clone())
    }
    fn node_of(req: &Self::Request) -> Option<&envoy_types::pb::envoy::config::core::v3::Node> {
        req.node.as_ref()
    }
    fn node(&self) -> &str {
        &self.node
    }
    fn view(&self) -> &View {
        DeltaStream::view(self)
    }
    fn on_request(&mut self, req: &Self::Request, cache: &Cache) -> Result<(Answer, Vec<Self::Response>), Status> {
        DeltaStream::on_request(self, req, cache)
    }
    fn on_cache_change(&mut self, cache: &Cache) -> Vec<Self::Response> {
        DeltaStream::on_cache_change(self, cache)
    }
    fn built_at(r: &Self::Response) -> u64 {
        // (Written by `DeltaStream::emit` from the number.)
        r.system_version_info.parse().unwrap_or_default()
    }
    fn log_push(node: &str, r: &Self::Response) {
        let (resources, removed) = (r.resources.len(), r.removed_resources.len());
        tracing::debug!(node, type_url = %r.type_url, nonce = %r.nonce, resources, removed, "push");
    }
    fn response_meta(r: &Self::Response) -> (&str, &str, Option<&str>) {
        (&r.type_url, &r.nonce, Some(&r.system_version_info).filter(|v| !v.is_empty()).map(|v| v.as_str()))
    }
    fn counts(r: &Self::Response) -> (usize, usize) {
        (r.resources.len(), r.removed_resources.len())
    }
    fn error_code(req: &Self::Request) -> i32 {
        req.error_detail.as_ref().map_or(0, |s| s.code)
    }
}

impl AdsProtocol for SotwStream {
    type Request = DiscoveryRequest;
    type Response = wire::SotwResponse;
    const NAME: &'static str = "SotW";
    fn open(node: Arc<str>, bind: Option<IpAddr>, view: View, _memo: &Arc<delta::ChangeMemo>) -> Self {
        SotwStream::new(node, bind, view)
    }
    fn node_of(req: &Self::Request) -> Option<&envoy_types::pb::envoy::config::core::v3::Node> {
        req.node.as_ref()
    }
    fn node(&self) -> &str {
        &self.node
    }
    fn view(&self) -> &View {
        SotwStream::view(self)
    }
    fn on_request(&mut self, req: &Self::Request, cache: &Cache) -> Result<(Answer, Vec<Self::Response>), Status> {
        SotwStream::on_request(self, req, cache)
    }
    fn on_cache_change(&mut self, cache: &Cache) -> Vec<Self::Response> {
        SotwStream::on_cache_change(self, cache)
    }
    fn built_at(r: &Self::Response) -> u64 {
        r.seq
    }
    fn log_push(node: &str, r: &Self::Response) {
        let resources = r.resources.len();
        tracing::debug!(node, type_url = %r.type_url, version = %r.version_info, nonce = %r.nonce, resources, "push");
    }
    fn response_meta(r: &Self::Response) -> (&str, &str, Option<&str>) {
        (&r.type_url, &r.nonce, Some(&r.version_info))
    }
    fn counts(r: &Self::Response) -> (usize, usize) {
        (r.resources.len(), 0)
    }
    fn error_code(req: &Self::Request) -> i32 {
        req.error_detail.as_ref().map_or(0, |s| s.code)
    }
}

/// What every stream of a server shares.
#[derive(Clone, Copy)]
struct Shared<'a> {
    cache: &'a Cache,
    classes: Option<&'a Arc<ClassRegistry>>,
    connections: &'a Arc<Connections>,
    memo: &'a Arc<delta::ChangeMemo>,
}

/// One stream, delta or state of the world: the node identity, class membership and view from
/// the first request ([`open_stream`]), then requests and cache changes as they come. Cache
/// changes coalesce while the client does not read (HTTP/2 stops polling the body, and with it
/// this loop).
///
/// This future is what an idle stream is, beside HTTP/2's state: what it holds across its
/// awaits is kept small (the setup's locals live in [`open_stream`], not here, and no request
/// is held across an await).
async fn run_stream<P: AdsProtocol>(
    shared: Shared<'_>,
    peer: Option<SocketAddr>,
    inbound: &mut (impl tokio_stream::Stream<Item = Result<Box<P::Request>, Status>> + Unpin),
    outbox: &Outbox<P::Response>,
) -> Result<(), Status> {
    let cache = shared.cache;
    let Some(first) = inbound.next().await else { return Ok(()) };
    let first = first?;
    let Opened { mut stream, conn, mut memberships, _held } = open_stream::<P>(shared, peer, &first)?;
    // A class or locality new to the engine: its resources first (see [`classes`]), so that a
    // reconnecting proxy is not told that what it holds of them was removed.
    for guard in memberships.iter_mut().flatten() {
        guard.computed().await;
    }
    let mut changes = cache.subscribe();
    changes.mark_changed();
    let metrics = crate::metrics::global();

    // A request is handled where it is read, and requests come boxed ([`wire::Requests`]):
    // none is held across an await (a delta request is 624 bytes, most of it the node).
    let mut responses = answer_request(&mut stream, &conn, &first, cache)?;
    drop(first);
    // When this round's work began, and whether a cache change started it.
    let (mut started, mut from_change) = (std::time::Instant::now(), false);
    loop {
        let pushed = !responses.is_empty();
        let mut left = responses.len();
        for response in responses {
            // What waits for the transport: the outbox's content and the rest of this batch.
            conn.set_queued(outbox.len() + left);
            left -= 1;
            P::log_push(stream.node(), &response);
            let (type_url, nonce, version) = P::response_meta(&response);
            let built_at = P::built_at(&response);
            let ty = ResourceType::from_type_url(type_url);
            if let Some(ty) = ty {
                conn.sent(ty, nonce, version);
                let (resources, removed) = P::counts(&response);
                conn.counted(ty, resources, removed);
            }
            outbox.send(response).await;
            // On the wire with the turn's flush (see `cork`).
            cork::wrote(built_at);
            if let Some(ty) = ty {
                metrics.record_push(ty, started.elapsed());
            }
        }
        conn.set_queued(outbox.len());
        if pushed
            && from_change
            && let Some(at) = cache.last_change()
        {
            metrics.convergence.observe(at.elapsed().as_secs_f64());
        }
        (responses, from_change) = tokio::select! {
            req = inbound.next() => match req {
                None => break,
                Some(Err(status)) => {
                    tracing::debug!(node = %stream.node(), %status, "stream ended by client");
                    break;
                }
                Some(Ok(req)) => {
                    started = std::time::Instant::now();
                    (answer_request(&mut stream, &conn, &req, cache)?, false)
                }
            },
            changed = changes.changed() => {
                if changed.is_err() {
                    break;
                }
                started = std::time::Instant::now();
                (stream.on_cache_change(cache), true)
            }
        };
    }
    tracing::info!(node = %stream.node(), "{} stream closed", P::NAME);
    Ok(())
}

/// Handles one request: the responses it calls for; its answer (ACK, NACK) recorded and logged.
fn answer_request<P: AdsProtocol>(
    stream: &mut P,
    conn: &Connection,
    req: &P::Request,
    cache: &Cache,
) -> Result<Vec<P::Response>, Status> {
    let (answer, responses) = stream.on_request(req, cache)?;
    let first_of_its_kind = record_answer(conn, &answer, P::error_code(req));
    log_answer(stream.node(), answer, first_of_its_kind);
    Ok(responses)
}

/// A stream's state once its first request is read, and what it holds for its life.
struct Opened<P> {
    stream: P,
    conn: Arc<Connection>,
    /// Its class and locality memberships, dropped when the stream ends (a class stays
    /// computed while a proxy of it is connected).
    memberships: [Option<classes::ClassGuard>; 2],
    /// Dropped when the stream ends: its `/debug/syncz` entry and its `pilot_xds` count.
    _held: (sync::Registration, ConnectedGauge),
}

/// Reads the node of a stream's first request: its identity, class, locality and view; opens
/// the protocol's state and registers the stream.
fn open_stream<P: AdsProtocol>(
    shared: Shared<'_>,
    peer: Option<SocketAddr>,
    first: &P::Request,
) -> Result<Opened<P>, Status> {
    let Shared { cache, classes, connections, memo } = shared;
    let node = P::node_of(first)
        .ok_or_else(|| Status::invalid_argument("the first request of a stream must carry the node"))?;
    let id = node::node_identity(node).map_err(Status::invalid_argument)?;
    let bind = bind_address(node)?;
    let class = classes::proxy_class(node, &id).map_err(Status::invalid_argument)?;
    tracing::info!(node = %id, ?bind, class = %class, "{} stream opened", P::NAME);
    let metadata = |key: &str| {
        use envoy_types::pb::google::protobuf::value::Kind;
        match node.metadata.as_ref().and_then(|m| m.fields.get(key)).and_then(|v| v.kind.as_ref()) {
            Some(Kind::StringValue(s)) => s.clone(),
            _ => String::new(),
        }
    };
    let mut view = View::new(id.proxy_type, classes.is_some().then(|| class.id())).in_namespace(&class.namespace);
    // The assignments that depend on the proxy's locality exist for registered localities only.
    let locality = classes.map(|_| classes::proxy_locality(node, &class, cache.pod_locality(&id.namespace, &id.pod)));
    if let Some(l) = &locality {
        view = view.located(&l.locality, &l.labels);
    }
    if captured(&metadata(crate::capture::INTERCEPTION_MODE_KEY), bind, &id.to_string()) {
        view = view.captured();
    }
    let istio_version = metadata("ISTIO_VERSION");
    // (Opened first: a delta stream interns its view, and the registry shares the interned one.)
    // (One allocation of the node id, shared by the stream and its syncz record.)
    let node_id: Arc<str> = id.to_string().into();
    let stream = P::open(node_id.clone(), bind, view, memo);
    let registration = connections.register(ProxyInfo {
        node: node_id,
        protocol: P::NAME,
        proxy_type: id.proxy_type.as_str(),
        class: class.id(),
        cluster_id: metadata("CLUSTER_ID"),
        istio_version: istio_version.clone(),
        proxy_version: proxy_version(node),
        namespace: class.namespace.clone(),
        view: stream.view().clone(),
        bind,
        peer,
    });
    let conn = registration.connection.clone();
    let connected = ConnectedGauge::new(istio_version);
    let membership = classes.map(|registry| registry.join(class));
    let located = classes.zip(locality).map(|(registry, l)| registry.join_locality(l));
    Ok(Opened { stream, conn, memberships: [membership, located], _held: (registration, connected) })
}

/// `pilot_xds{version}` for one stream, for as long as it lives.
struct ConnectedGauge(String);

impl ConnectedGauge {
    fn new(version: String) -> ConnectedGauge {
        crate::metrics::global().xds_clients.with_label_values(&[version.as_str()]).inc();
        ConnectedGauge(version)
    }
}

impl Drop for ConnectedGauge {
    fn drop(&mut self) {
        crate::metrics::global().xds_clients.with_label_values(&[self.0.as_str()]).dec();
    }
}

/// The proxy's build version as the node reports it (`user_agent_build_version`), else its
/// `user_agent_version`.
fn proxy_version(node: &envoy_types::pb::envoy::config::core::v3::Node) -> String {
    use envoy_types::pb::envoy::config::core::v3::node::UserAgentVersionType;
    match &node.user_agent_version_type {
        Some(UserAgentVersionType::UserAgentBuildVersion(b)) => {
            b.version.as_ref().map(|v| format!("{}.{}.{}", v.major_number, v.minor_number, v.patch)).unwrap_or_default()
        }
        Some(UserAgentVersionType::UserAgentVersion(v)) => v.clone(),
        None => String::new(),
    }
}

/// Records the proxy's answer for `/debug/syncz` and the reject metrics. False for a NACK
/// that repeats the error of the type's previous NACK on this stream (logged once).
fn record_answer(conn: &Connection, answer: &Answer, code: i32) -> bool {
    match answer {
        Answer::Ack { ty, nonce, seq } => {
            conn.acked(*ty, nonce);
            conn.answered(*ty, Some(*seq));
            true
        }
        Answer::Nack { ty, nonce, message, names } => {
            crate::metrics::global().record_reject(*ty, &conn.node, code);
            conn.answered(*ty, None);
            conn.nacked(*ty, nonce, message, names)
        }
        Answer::Stale { .. } | Answer::Subscription => true,
    }
}

/// Logs an answer; a NACK at warn with Envoy's error, unless `new_error` is false (the same
/// error as this stream's previous NACK of the type: at debug).
fn log_answer(node: &str, answer: Answer, new_error: bool) {
    match answer {
        Answer::Ack { ty, nonce, seq } => tracing::debug!(node, ty = ty.short(), nonce, seq, "ACK"),
        Answer::Nack { ty, nonce, names, message } => {
            let mut message = message;
            if message.len() > MAX_ERROR_LOG {
                let mut cut = MAX_ERROR_LOG;
                while !message.is_char_boundary(cut) {
                    cut -= 1;
                }
                message.truncate(cut);
                message.push('…');
            }
            if !new_error {
                tracing::debug!(node, ty = ty.short(), nonce, resources = ?names, "NACK again, with the same error");
            } else {
                tracing::warn!(node, ty = ty.short(), nonce, resources = ?names, error = %message, "NACK: proxy rejected configuration; not resending these versions");
            }
        }
        Answer::Stale { nonce } => tracing::debug!(node, nonce, "answer to an unknown or superseded nonce"),
        Answer::Subscription => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_redirect_without_a_bind_address_is_captured() {
        let ip = Some("127.0.0.2".parse().unwrap());
        assert!(captured("REDIRECT", None, "n"));
        assert!(!captured("REDIRECT", ip, "n"), "a bound proxy is not captured");
        assert!(!captured("", None, "n"));
        assert!(!captured("NONE", None, "n"));
        assert!(!captured("TPROXY", None, "n"), "not served as captured");
    }

    /// An idle stream is this future (boxed in its body) beside HTTP/2's state: it once held
    /// the setup's locals and room for a 624-byte request across its awaits, 3.5 KB per stream
    /// (heaptrack, `benches/idle-heap.sh`); 1,816 bytes at the `ci` profile's opt-level 0 now,
    /// 896 of them the [`DeltaStream`].
    #[test]
    fn an_idle_delta_stream_future_stays_small() {
        let cache = Cache::new(Vec::<String>::new());
        let connections = Connections::new();
        let memo: Arc<delta::ChangeMemo> = Default::default();
        let outbox = Outbox::<wire::DeltaResponse>::default();
        let mut inbound = tokio_stream::empty::<Result<Box<DeltaDiscoveryRequest>, Status>>();
        let shared = Shared { cache: &cache, classes: None, connections: &connections, memo: &memo };
        let size = std::mem::size_of_val(&run_stream::<DeltaStream>(shared, None, &mut inbound, &outbox));
        assert!(size <= 2048, "the delta stream future is {size} bytes");
    }
}
