//! The xDS port's HTTP/2 server: hyper's HTTP/2 connection, serving [`wire::AdsService`] and
//! nothing else.
//!
//! tonic's `Server` would do the same with more around it: per connection, a protocol sniffer
//! (HTTP/1 or 2) and a stack of tower layers; per request, the request body and the response
//! body each boxed once more and their errors mapped, layers that every frame of every stream
//! then goes through. On a fan-out each of 5,000 streams polls its response body once and its
//! request body (the ACK) once per change. This server hands hyper's request body to
//! [`wire::Requests`] and [`wire::AdsBody`] to hyper, with nothing between. It also sets what
//! tonic does not expose: the most a stream may have queued for writing
//! ([`MAX_SEND_BUFFER`]).
//!
//! A connection has one task, which runs its streams too ([`serve_connection`]): hyper hands
//! a stream's task to the connection's [`Streams`] rather than spawn it. A change that wakes
//! a hundred streams of one connection wakes one task, which builds their responses in one
//! turn and writes them in one write ([`cork`]).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tonic::transport::server::Connected;

use super::{cork, wire};

/// Connections a listening xDS socket queues before they are accepted (the kernel caps it at
/// `net.core.somaxconn`). tokio's default of 1,024 resets connections when a thousand proxies
/// connect at once (a control plane restart, a node pool coming up): measured with `meshflow
/// xds load --clients 1000`, a third of the streams failed with "connection reset".
pub const LISTEN_BACKLOG: u32 = 8192;

/// How often an idle connection is pinged (HTTP/2 PING), to find dead peers.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);

/// The most bytes of responses one stream holds queued for writing (hyper's
/// `max_send_buf_size`; hyper's default is 400 KiB). [`wire::AdsBody`] is polled for the next
/// chunk only while the queue holds less, so this bounds what a stream's responses occupy
/// while its client is slow or while every client syncs at once. (64 and 128 KiB changed
/// neither the memory per idle stream nor the fan-out: BENCHMARKS.md, session 24.)
pub const MAX_SEND_BUFFER: usize = 400 * 1024;

/// A listening socket on `addr` with [`LISTEN_BACKLOG`] and `SO_REUSEADDR`.
pub fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The HTTP/2 settings of a connection whose streams `streams` keeps.
fn builder(streams: Streams) -> hyper::server::conn::http2::Builder<Streams> {
    let mut builder = hyper::server::conn::http2::Builder::new(streams);
    builder
        .timer(TokioTimer::new())
        .keep_alive_interval(KEEPALIVE_INTERVAL)
        // As many streams per connection as the client opens (gRPC's default).
        .max_concurrent_streams(None)
        .max_send_buf_size(MAX_SEND_BUFFER);
    builder
}

type StreamTask = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The executor hyper hands a connection's stream tasks to: it keeps them for the
/// connection's task, which runs them beside the connection ([`serve_connection`]).
#[derive(Clone, Default)]
struct Streams(Arc<Mutex<Vec<StreamTask>>>);

impl<F: Future<Output = ()> + Send + 'static> hyper::rt::Executor<F> for Streams {
    fn execute(&self, task: F) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(Box::pin(task));
    }
}

impl Streams {
    /// The tasks handed over since the last call.
    fn take(&self) -> Vec<StreamTask> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Accepts connections on `listener` and serves `service` on each until `shutdown` resolves.
/// Then it stops accepting and tells every connection to end (HTTP/2 GOAWAY): their streams
/// end as their clients close them, or with the runtime.
pub async fn serve(
    listener: tokio::net::TcpListener,
    service: wire::AdsService,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let socket = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((socket, _)) => socket,
                Err(e) => {
                    // (Out of descriptors, a connection reset before it was accepted: the next
                    // accept may succeed.)
                    tracing::debug!(error = %e, "accepting an xDS connection");
                    continue;
                }
            },
        };
        serve_connection(nodelay(socket), service.clone(), stop_rx.clone());
    }
    let _ = stop_tx.send(());
}

/// The accepted socket without Nagle's delay: with Nagle on, a response written while the
/// previous one is unacknowledged waits for the client's (possibly delayed) ACK.
fn nodelay(socket: tokio::net::TcpStream) -> tokio::net::TcpStream {
    if let Err(e) = socket.set_nodelay(true) {
        tracing::debug!(error = %e, "setting TCP_NODELAY on an xDS connection");
    }
    socket
}

/// Serves one connection on a task of its own, which also runs the connection's streams.
/// Each turn of the task polls the connection (it reads what arrived, which wakes the streams
/// it is for, and writes what the streams queued), then the streams that were woken, then
/// the connection again, so that what they queued is written in the same turn; the socket
/// sends all of it at the turn's end ([`cork::Cork::flush`]). Each request carries the
/// peer's address as tonic's `TcpConnectInfo`, so `tonic::Request::remote_addr` tells it.
fn serve_connection(socket: tokio::net::TcpStream, service: wire::AdsService, stop: tokio::sync::watch::Receiver<()>) {
    let info = socket.connect_info();
    let tap = service.write_tap();
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(info.clone());
        service.call(req)
    });
    let handed = Streams::default();
    let (socket, cork) = cork::cork(socket, tap);
    let conn = builder(handed.clone()).serve_connection(TokioIo::new(socket), service);
    tokio::spawn(async move {
        use futures_util::StreamExt;
        let mut conn = std::pin::pin!(conn);
        let mut streams = futures_util::stream::FuturesUnordered::new();
        let mut stop = std::pin::pin!(async move {
            let mut stop = stop;
            // (A dropped sender stops too.)
            let _ = stop.changed().await;
        });
        let mut stopping = false;
        std::future::poll_fn(|cx| {
            cork.begin();
            if !stopping && stop.as_mut().poll(cx).is_ready() {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
            let mut ended = false;
            for _ in 0..2 {
                if let Poll::Ready(result) = conn.as_mut().poll(cx) {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "xDS connection ended");
                    }
                    ended = true;
                    break;
                }
                streams.extend(handed.take());
                // (FuturesUnordered returns after a round of its woken streams, waking the
                // task again if more are left: a turn stays bounded.)
                while let Poll::Ready(Some(())) = streams.poll_next_unpin(cx) {}
            }
            cork.flush(cx);
            // The connection's end ends its streams: they have no one to write to. (It ends
            // after a GOAWAY only once its streams have.)
            if ended { Poll::Ready(()) } else { Poll::Pending }
        })
        .await;
    });
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;

    use super::*;
    use crate::cache::Cache;
    use crate::xds::AdsServer;
    use crate::xds::sync::Connections;

    /// The xDS server's connections send without Nagle's delay.
    #[tokio::test]
    async fn accepted_connections_have_nagle_off() {
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (socket, _) = listener.accept().await.unwrap();
        let socket = nodelay(socket);
        assert!(socket.nodelay().unwrap());
        assert_eq!(socket.peer_addr().unwrap(), client.local_addr().unwrap());
    }

    /// An h2 connection to a server on a free port, with the server's connections registry.
    async fn connect() -> (h2::client::SendRequest<bytes::Bytes>, std::net::SocketAddr, Arc<Connections>) {
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Connections::new();
        let service =
            AdsServer::new(Cache::new(Vec::<String>::new()), None).with_connections(connections.clone()).into_service();
        tokio::spawn(serve(listener, service, std::future::pending()));
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let local = tcp.local_addr().unwrap();
        let (send, conn) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(conn);
        (send.ready().await.unwrap(), local, connections)
    }

    /// When the server shuts down, a connection is told to go (GOAWAY): a stream opened before
    /// keeps it until its client ends the stream, and then the connection closes.
    #[tokio::test]
    async fn shutting_down_ends_the_connections() {
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let service = AdsServer::new(Cache::new(Vec::<String>::new()), None).into_service();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, service, async move {
            let _ = stopped.await;
        }));
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (send, conn) = h2::client::handshake(tcp).await.unwrap();
        let conn = tokio::spawn(conn);
        let mut send = send.ready().await.unwrap();
        let (response, _body) = send.send_request(grpc_request(wire::DELTA_PATH), false).unwrap();
        let response = response.await.unwrap();
        assert_eq!(response.status(), 200);
        let mut stream = response.into_body();
        stop.send(()).unwrap();
        server.await.unwrap();
        // The stream is still open: the connection waits for it (its client ends it).
        let waited = tokio::time::timeout(std::time::Duration::from_millis(300), stream.data()).await;
        assert!(waited.is_err(), "an open stream is not cut by the GOAWAY");
        // (The client keeps its connection: only the server's GOAWAY can end it.)
        drop((stream, _body));
        let ended = tokio::time::timeout(std::time::Duration::from_secs(10), conn).await;
        assert!(ended.is_ok(), "the client's connection ended after the server's GOAWAY");
        drop(send);
    }

    fn grpc_request(path: &str) -> hyper::Request<()> {
        hyper::Request::post(format!("http://xds{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap()
    }

    /// A method ADS does not have is refused with gRPC's UNIMPLEMENTED (12) in the headers.
    #[tokio::test]
    async fn an_unknown_method_is_unimplemented() {
        let (mut send, _, _) = connect().await;
        let path = "/envoy.service.discovery.v3.AggregatedDiscoveryService/NoSuchMethod";
        let (response, _) = send.send_request(grpc_request(path), true).unwrap();
        let response = response.await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["grpc-status"], "12");
    }

    /// A delta stream is opened, and its connection record carries the client's address (the
    /// peer in `/debug/syncz`), which the server passes to each request.
    #[tokio::test]
    async fn a_delta_stream_is_opened_and_knows_its_peer() {
        let (mut send, local, connections) = connect().await;
        let (response, mut body) = send.send_request(grpc_request(wire::DELTA_PATH), false).unwrap();
        let request = DeltaDiscoveryRequest {
            node: Some(envoy_types::pb::envoy::config::core::v3::Node {
                id: "sidecar~10.0.0.1~a.default~default.svc.cluster.local".into(),
                ..Default::default()
            }),
            type_url: crate::translate::ResourceType::Cluster.type_url().into(),
            ..Default::default()
        };
        body.send_data(wire::grpc_frame(&request), false).unwrap();
        let response = response.await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "application/grpc");
        // (Registered once the stream has read its first request.)
        let node = request.node.as_ref().unwrap().id.as_str();
        let mut connection = connections.by_node(node);
        for _ in 0..500 {
            if connection.is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            connection = connections.by_node(node);
        }
        let connection = connection.expect("the stream registered its proxy");
        assert_eq!(connection.peer, Some(local));
    }
}
