//! One delta ADS stream on raw HTTP/2 (the `h2` crate), for the simulated proxies.
//!
//! The simulated proxies measure the server, so what they cost per response has to be small
//! beside what the server spends: on a fan-out to 5,000 streams on one 2-core machine the load
//! process and the server share the cores, and with tonic's client (its channel, a task per
//! request body fed through an mpsc channel, every response decoded into prost's
//! `DeltaDiscoveryResponse` with each resource's `Any` copied) the load spent as much CPU per
//! change as the server (BENCHMARKS.md, session 19). Here a stream's task writes its requests
//! straight into the HTTP/2 stream, and a response is decoded only as far as the client looks
//! at it ([`Response`]: the resources are slices of the received frame, decoded one by one
//! when asked).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use prost::Message;
use tonic::codegen::http;

use crate::xds::wire::{DELTA_PATH, grpc_frame};

/// Largest response a stream accepts.
const MAX_RESPONSE: usize = 256 << 20;

/// A `DeltaDiscoveryResponse` decoded as far as a client needs it at first: its resources are
/// the encoded `Resource` messages, slices of the frame they came in.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Response {
    /// meshflow's: the cache sequence number the response was built at.
    #[prost(string, tag = "1")]
    pub system_version_info: String,
    #[prost(bytes = "bytes", repeated, tag = "2")]
    pub resources: Vec<Bytes>,
    #[prost(string, tag = "4")]
    pub type_url: String,
    #[prost(string, tag = "5")]
    pub nonce: String,
    #[prost(string, repeated, tag = "6")]
    pub removed_resources: Vec<String>,
}

/// A `Resource` of a delta response: its name, version, and its `Any`'s value undecoded.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Resource {
    #[prost(string, tag = "1")]
    pub version: String,
    #[prost(message, optional, tag = "2")]
    pub resource: Option<AnyValue>,
    #[prost(string, tag = "3")]
    pub name: String,
}

/// A `google.protobuf.Any`'s value, as a slice of the frame.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AnyValue {
    #[prost(bytes = "bytes", tag = "2")]
    pub value: Bytes,
}

/// One HTTP/2 connection to `addr` (`host:port`, or `http://host:port`; clones of it open
/// their streams on the same connection), and the future that reads and writes it, for the
/// caller to poll. Polled in the task that runs the connection's streams, the requests those
/// streams make while the task runs go out together, in one write, when it polls the driver
/// next.
pub async fn handshake(addr: &str) -> anyhow::Result<(Connection, impl Future<Output = ()> + Send + 'static)> {
    let authority = addr.strip_prefix("http://").unwrap_or(addr).trim_end_matches('/').to_string();
    let tcp = tokio::net::TcpStream::connect(&authority).await?;
    tcp.set_nodelay(true)?;
    let (send, connection) = h2::client::Builder::new()
        // hyper's client windows (tonic's channel has them), released as the stream reads:
        // flow control stops the server only for a client that stops reading.
        .initial_window_size(2 << 20)
        .initial_connection_window_size(5 << 20)
        .max_frame_size(1 << 20)
        .handshake(tcp)
        .await?;
    let driver = async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "bench client connection ended");
        }
    };
    Ok((Connection { send, authority }, driver))
}

#[derive(Clone)]
pub struct Connection {
    send: h2::client::SendRequest<Bytes>,
    authority: String,
}

impl Connection {
    /// Opens a `DeltaAggregatedResources` stream and sends `first` on it.
    pub async fn delta(&self, first: &[DeltaDiscoveryRequest]) -> anyhow::Result<Stream> {
        let request = http::Request::post(format!("http://{}{DELTA_PATH}", self.authority))
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers")
            .body(())?;
        let mut send = self.send.clone().ready().await?;
        let (response, mut out) = send.send_request(request, false)?;
        for req in first {
            out.send_data(grpc_frame(req), false)?;
        }
        let response = response.await?;
        let (parts, body) = response.into_parts();
        if parts.status != http::StatusCode::OK {
            anyhow::bail!("the server answered the stream with HTTP status {}", parts.status);
        }
        // A trailers-only answer: the stream failed before its first response.
        if let Some(status) = grpc_error(&parts.headers) {
            anyhow::bail!("stream failed: {status}");
        }
        Ok(Stream { out, body, buf: BytesMut::new() })
    }
}

/// A `grpc-status` other than OK in `headers`, with its message.
fn grpc_error(headers: &http::HeaderMap) -> Option<String> {
    let code = headers.get("grpc-status")?.to_str().ok()?;
    (code != "0").then(|| {
        let message = headers.get("grpc-message").and_then(|m| m.to_str().ok()).unwrap_or("");
        format!("grpc-status {code}: {message}")
    })
}

/// An ACK (`nack`: a NACK with that message) of the response of `type_url` with `nonce`, as a
/// gRPC frame: `DeltaDiscoveryRequest` fields 2 (type_url), 6 (response_nonce) and 7
/// (error_detail), written directly.
fn ack_frame(type_url: &str, nonce: &str, nack: Option<&str>) -> Bytes {
    use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
    let field = |tag: u32, len: usize| key_len(tag) + encoded_len_varint(len as u64) + len;
    // google.rpc.Status { code: 3 (INVALID_ARGUMENT, as Envoy sends it), message }
    let status_len = nack.map(|m| 2 + field(2, m.len()));
    let len = field(2, type_url.len()) + field(6, nonce.len()) + status_len.map_or(0, |n| field(7, n));
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(len as u32);
    for (tag, s) in [(2, type_url), (6, nonce)] {
        encode_key(tag, WireType::LengthDelimited, &mut buf);
        encode_varint(s.len() as u64, &mut buf);
        buf.put_slice(s.as_bytes());
    }
    if let (Some(message), Some(n)) = (nack, status_len) {
        encode_key(7, WireType::LengthDelimited, &mut buf);
        encode_varint(n as u64, &mut buf);
        encode_key(1, WireType::Varint, &mut buf);
        encode_varint(3, &mut buf);
        encode_key(2, WireType::LengthDelimited, &mut buf);
        encode_varint(message.len() as u64, &mut buf);
        buf.put_slice(message.as_bytes());
    }
    buf.freeze()
}

/// An open delta stream: requests go straight into its HTTP/2 stream, responses are read off
/// its body.
pub struct Stream {
    out: h2::SendStream<Bytes>,
    body: h2::RecvStream,
    /// Received bytes that do not make a whole message yet.
    buf: BytesMut,
}

impl Stream {
    /// Sends a request (subscriptions).
    pub fn send(&mut self, req: &DeltaDiscoveryRequest) -> anyhow::Result<()> {
        Ok(self.out.send_data(grpc_frame(req), false)?)
    }

    /// ACKs (or with `nack`, NACKs) the response of `type_url` with `nonce`.
    pub fn ack(&mut self, type_url: &str, nonce: &str, nack: Option<&str>) -> anyhow::Result<()> {
        Ok(self.out.send_data(ack_frame(type_url, nonce, nack), false)?)
    }

    /// The next response and its encoded size, or `None` once the server ended the stream
    /// with status OK. HTTP/2 flow control is released as this reads, so a client that stops
    /// calling it stops the server's sending to it once the stream's window is used up.
    pub async fn next(&mut self) -> anyhow::Result<Option<(Response, usize)>> {
        loop {
            if self.buf.len() >= 5 {
                if self.buf[0] != 0 {
                    anyhow::bail!("compressed response (flag {})", self.buf[0]);
                }
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
                if len > MAX_RESPONSE {
                    anyhow::bail!("response of {len} bytes, more than the limit of {MAX_RESPONSE}");
                }
                if self.buf.len() >= 5 + len {
                    self.buf.advance(5);
                    let message = self.buf.split_to(len).freeze();
                    let response = Response::decode(message)?;
                    return Ok(Some((response, len)));
                }
                self.buf.reserve(5 + len - self.buf.len());
            }
            match self.body.data().await {
                Some(data) => {
                    let data = data?;
                    self.buf.extend_from_slice(&data);
                    self.body.flow_control().release_capacity(data.len())?;
                }
                None => {
                    if let Some(status) = self.body.trailers().await?.as_ref().and_then(grpc_error) {
                        anyhow::bail!("stream failed: {status}");
                    }
                    if !self.buf.is_empty() {
                        anyhow::bail!("the stream ended inside a response");
                    }
                    return Ok(None);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryResponse, Resource as PbResource};
    use envoy_types::pb::google::protobuf::Any;

    #[test]
    fn acks_and_nacks_decode_as_prost_requests() {
        let ack = ack_frame("type.googleapis.com/envoy.config.cluster.v3.Cluster", "n17", None);
        assert_eq!(u32::from_be_bytes(ack[1..5].try_into().unwrap()) as usize, ack.len() - 5);
        let req = DeltaDiscoveryRequest::decode(&ack[5..]).unwrap();
        assert_eq!(req.type_url, "type.googleapis.com/envoy.config.cluster.v3.Cluster");
        assert_eq!(req.response_nonce, "n17");
        assert_eq!(req.error_detail, None);
        let nack = ack_frame("t", "n18", Some("rejected"));
        let req = DeltaDiscoveryRequest::decode(&nack[5..]).unwrap();
        assert_eq!((req.type_url.as_str(), req.response_nonce.as_str()), ("t", "n18"));
        let status = req.error_detail.unwrap();
        assert_eq!((status.code, status.message.as_str()), (3, "rejected"));
    }

    #[test]
    fn responses_decode_to_what_prost_decodes() {
        let full = DeltaDiscoveryResponse {
            system_version_info: "7".into(),
            type_url: "t".into(),
            nonce: "n".into(),
            removed_resources: vec!["gone".into()],
            resources: vec![PbResource {
                name: "a".into(),
                version: "v1".into(),
                resource: Some(Any { type_url: "t".into(), value: vec![1, 2, 3] }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let light = Response::decode(Bytes::from(full.encode_to_vec())).unwrap();
        assert_eq!((light.type_url.as_str(), light.nonce.as_str()), ("t", "n"));
        assert_eq!(light.removed_resources, ["gone"]);
        let r = Resource::decode(light.resources[0].clone()).unwrap();
        assert_eq!((r.name.as_str(), r.version.as_str()), ("a", "v1"));
        assert_eq!(&r.resource.unwrap().value[..], [1, 2, 3]);
    }
}
