//! Delta responses written from shared encodings.
//!
//! A [`DeltaResponse`] is a `DeltaDiscoveryResponse` whose resources are [`Rendered`]
//! encodings shared with every other stream that sends the same resource in the same form:
//! encoding a response writes each resource's pre-encoded `Resource` message as one
//! length-delimited field (a protobuf repeated message field is a concatenation), so 1,000
//! streams sending one changed assignment share one encoding of it instead of copying it into
//! 1,000 `Any { value: Vec<u8> }`. The only copy per stream is the write into the stream's
//! gRPC frame.
//!
//! tonic's generated ADS server fixes the response types to prost's, so [`AdsService`] serves
//! both methods itself (on hyper's HTTP/2, [`super::http`]). Requests are decoded by
//! [`Requests`]; the response body is [`DeltaBody`], which frames each response by hand:
//! small fields and small resources are copied into chunks of at most [`CHUNK`] bytes, and a
//! resource encoding of [`SHARE_AT`] bytes or more is handed to HTTP/2 as the shared `Bytes`
//! itself (h2 chains such payloads into its DATA frames without copying them). Nothing of a response outlives
//! its write: an idle stream holds no encode buffer. (tonic's own encoder keeps, per stream,
//! the buffer its largest message grew: ~400 KB per idle sidecar stream at `--preset small`.)

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::SERVICE_NAME;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryResponse, DiscoveryResponse};
use hyper::body::Incoming;
use prost::bytes::{Buf, BufMut};
use prost::encoding::{DecodeContext, WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use std::future::Ready;
use tonic::codegen::{Context, Poll, StdError, http};

use crate::cache::Rendered;
use crate::pb::{field_len, opt_str_len, put_bytes, put_opt_str};

/// A `DeltaDiscoveryResponse` (same fields, same tags) whose resources are shared encodings.
/// Encode-only: the server never decodes one (a client decodes the bytes as prost's
/// `DeltaDiscoveryResponse`).
#[derive(Default, Debug, Clone)]
pub struct DeltaResponse {
    /// The cache's sequence number the response was built at (istiod sends its push version):
    /// what `/debug/syncz` shows as the type's sent and ACKed version.
    pub system_version_info: String,
    pub type_url: String,
    pub resources: Vec<Arc<Rendered>>,
    pub removed_resources: Vec<String>,
    pub nonce: String,
}

// DeltaDiscoveryResponse's field numbers.
const SYSTEM_VERSION_INFO: u32 = 1;
const RESOURCES: u32 = 2;
const TYPE_URL: u32 = 4;
const NONCE: u32 = 5;
const REMOVED_RESOURCES: u32 = 6;

/// A response made of shared resource encodings (one repeated field) and a few small fields:
/// [`DeltaResponse`] and [`SotwResponse`]. [`frame`] writes one as a gRPC message.
pub trait Framed: prost::Message + Send + 'static {
    /// The field number of the shared encodings.
    const SHARED: u32;
    /// The renderings whose encodings this message carries, in order.
    fn renderings(&self) -> &[Arc<Rendered>];
    /// What of a rendering the message carries: the whole `Resource` (delta) or its `Any`.
    fn piece(r: &Rendered) -> &Bytes;
    /// Every other field.
    fn encode_rest(&self, buf: &mut impl BufMut);
    /// The encoded length of every other field.
    fn rest_len(&self) -> usize;

    fn shared_len(&self) -> usize {
        self.renderings()
            .iter()
            .map(|r| {
                let n = Self::piece(r).len();
                key_len(Self::SHARED) + encoded_len_varint(n as u64) + n
            })
            .sum()
    }
}

impl Framed for DeltaResponse {
    const SHARED: u32 = RESOURCES;
    fn renderings(&self) -> &[Arc<Rendered>] {
        &self.resources
    }
    fn piece(r: &Rendered) -> &Bytes {
        &r.wire
    }
    fn encode_rest(&self, buf: &mut impl BufMut) {
        put_opt_str(SYSTEM_VERSION_INFO, &self.system_version_info, buf);
        put_opt_str(TYPE_URL, &self.type_url, buf);
        put_opt_str(NONCE, &self.nonce, buf);
        for name in &self.removed_resources {
            put_bytes(REMOVED_RESOURCES, name.as_bytes(), buf);
        }
    }
    fn rest_len(&self) -> usize {
        let removed: usize = self.removed_resources.iter().map(|n| field_len(REMOVED_RESOURCES, n.len())).sum();
        removed
            + opt_str_len(SYSTEM_VERSION_INFO, &self.system_version_info)
            + opt_str_len(TYPE_URL, &self.type_url)
            + opt_str_len(NONCE, &self.nonce)
    }
}

/// A state-of-the-world `DiscoveryResponse` (same fields, same tags) whose resources are the
/// `Any` parts of shared encodings ([`Rendered::any`]): a full set per type costs each stream
/// the write into its frames, not a copy and an encoding of every resource.
#[derive(Default, Debug, Clone)]
pub struct SotwResponse {
    pub version_info: String,
    pub resources: Vec<Arc<Rendered>>,
    pub type_url: String,
    pub nonce: String,
    /// The cache sequence number the response was built at (not sent: `version_info` is the
    /// set's hash).
    pub seq: u64,
}

// DiscoveryResponse's field numbers.
const SOTW_VERSION_INFO: u32 = 1;
const SOTW_RESOURCES: u32 = 2;
const SOTW_TYPE_URL: u32 = 4;
const SOTW_NONCE: u32 = 5;

impl Framed for SotwResponse {
    const SHARED: u32 = SOTW_RESOURCES;
    fn renderings(&self) -> &[Arc<Rendered>] {
        &self.resources
    }
    fn piece(r: &Rendered) -> &Bytes {
        &r.any
    }
    fn encode_rest(&self, buf: &mut impl BufMut) {
        put_opt_str(SOTW_VERSION_INFO, &self.version_info, buf);
        put_opt_str(SOTW_TYPE_URL, &self.type_url, buf);
        put_opt_str(SOTW_NONCE, &self.nonce, buf);
    }
    fn rest_len(&self) -> usize {
        opt_str_len(SOTW_VERSION_INFO, &self.version_info)
            + opt_str_len(SOTW_TYPE_URL, &self.type_url)
            + opt_str_len(SOTW_NONCE, &self.nonce)
    }
}

fn encode_framed<M: Framed>(m: &M, buf: &mut impl BufMut) {
    for r in m.renderings() {
        put_bytes(M::SHARED, M::piece(r), buf);
    }
    m.encode_rest(buf);
}

/// A [`Framed`] response as a prost message (encode-only: meshflow never decodes one; a client
/// decodes the bytes as prost's type, `$proto`), and `to_proto` for tests and tools.
macro_rules! framed_message {
    ($ty:ident, $proto:ty) => {
        impl prost::Message for $ty {
            fn encode_raw(&self, buf: &mut impl BufMut) {
                encode_framed(self, buf);
            }

            fn merge_field(
                &mut self,
                tag: u32,
                wire_type: WireType,
                buf: &mut impl Buf,
                ctx: DecodeContext,
            ) -> Result<(), prost::DecodeError> {
                prost::encoding::skip_field(wire_type, tag, buf, ctx)
            }

            fn encoded_len(&self) -> usize {
                self.shared_len() + self.rest_len()
            }

            fn clear(&mut self) {
                *self = $ty::default();
            }
        }

        impl $ty {
            /// The response as prost's type (decoded from this one's encoding).
            pub fn to_proto(&self) -> $proto {
                use prost::Message;
                <$proto>::decode(&self.encode_to_vec()[..]).expect("a framed response encodes a valid message")
            }
        }
    };
}

framed_message!(DeltaResponse, DeltaDiscoveryResponse);
framed_message!(SotwResponse, DiscoveryResponse);

/// The HTTP/2 paths of ADS's two methods.
pub const DELTA_PATH: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";
pub const SOTW_PATH: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";

/// `message` as one gRPC message frame (uncompressed): a zero byte, its length as big-endian
/// u32, the message. (Requests, as clients write them; responses are framed by [`Framer`].)
pub fn grpc_frame(message: &impl prost::Message) -> Bytes {
    let len = message.encoded_len();
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(len as u32);
    message.encode(&mut buf).expect("the buffer has the message's length");
    buf.freeze()
}

/// The ADS gRPC service ([`super::http`] serves it): both methods written from shared
/// encodings, every other path answered UNIMPLEMENTED.
#[derive(Clone)]
pub struct AdsService {
    server: Arc<super::AdsServer>,
}

impl AdsService {
    pub fn new(server: super::AdsServer) -> AdsService {
        AdsService { server: Arc::new(server) }
    }

    /// The tap to tell of each response to a cache change sent (see [`super::sync::WriteTap`]).
    pub fn write_tap(&self) -> Option<super::sync::WriteTap> {
        self.server.connections.write_tap()
    }

    /// Opens the stream `req` asks for. Nothing waits: the stream runs in the response body.
    pub fn call(&self, req: http::Request<Incoming>) -> Ready<Result<http::Response<AdsBody>, Infallible>> {
        let response = match req.uri().path() {
            DELTA_PATH => match requests(req) {
                Ok(request) => respond(self.server.delta(request), AdsBody::Delta),
                Err(status) => status.into_http(),
            },
            SOTW_PATH => match requests(req) {
                Ok(request) => respond(self.server.sotw(request), AdsBody::Sotw),
                Err(status) => status.into_http(),
            },
            path => tonic::Status::unimplemented(format!("{path}: not a method of {SERVICE_NAME}")).into_http(),
        };
        std::future::ready(Ok(response))
    }
}

/// The request of a streaming method, its messages decoded by [`Requests`].
fn requests<M>(req: http::Request<Incoming>) -> Result<tonic::Request<Requests<M>>, tonic::Status>
where
    M: prost::Message + Default,
{
    if let Some(encoding) = req.headers().get("grpc-encoding")
        && encoding != "identity"
    {
        return Err(tonic::Status::unimplemented(format!(
            "compressed requests ({encoding:?}) are not supported; send them uncompressed"
        )));
    }
    let (parts, body) = req.into_parts();
    let inbound = Requests::new(body, super::MAX_DECODING);
    Ok(tonic::Request::from_http(http::Request::from_parts(parts, inbound)))
}

/// The HTTP response of a streaming method: its responses framed by [`DeltaBody`].
fn respond<M: Framed>(
    response: tonic::Response<super::ResponseStream<M>>,
    body: fn(DeltaBody<M>) -> AdsBody,
) -> http::Response<AdsBody> {
    let (metadata, responses, _) = response.into_parts();
    let mut http = http::Response::new(body(DeltaBody::new(responses)));
    *http.headers_mut() = metadata.into_headers();
    http.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
    http
}

/// The response body of an ADS request: a stream's responses, or nothing (a status in the
/// headers: a refused request, an unknown method).
#[derive(Default)]
pub enum AdsBody {
    Delta(DeltaBody<DeltaResponse>),
    Sotw(DeltaBody<SotwResponse>),
    #[default]
    Empty,
}

impl http_body::Body for AdsBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, tonic::Status>>> {
        match self.get_mut() {
            AdsBody::Delta(body) => Pin::new(body).poll_frame(cx),
            AdsBody::Sotw(body) => Pin::new(body).poll_frame(cx),
            AdsBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            AdsBody::Delta(body) => body.is_end_stream(),
            AdsBody::Sotw(body) => body.is_end_stream(),
            AdsBody::Empty => true,
        }
    }
}

/// The requests of one delta stream, decoded from its HTTP/2 body. tonic's `Streaming` keeps
/// the buffer its largest request grew (an EDS subscription to every cluster: ~32 KB per
/// stream for as long as the stream lives); this one frees its buffer whenever it holds no
/// partial message, so an idle stream keeps none.
pub struct Requests<M, B = Incoming> {
    body: B,
    buf: BytesMut,
    max: usize,
    done: bool,
    _message: std::marker::PhantomData<fn() -> M>,
}

impl<M: prost::Message + Default, B> Requests<M, B> {
    pub fn new(body: B, max: usize) -> Requests<M, B> {
        Requests { body, buf: BytesMut::new(), max, done: false, _message: std::marker::PhantomData }
    }

    /// The next whole message in `buf`, if there is one.
    fn next_message(&mut self) -> Option<Result<Box<M>, tonic::Status>> {
        if self.buf.len() < 5 {
            return None;
        }
        if self.buf[0] != 0 {
            return Some(Err(tonic::Status::unimplemented("compressed messages are not supported")));
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > self.max {
            return Some(Err(tonic::Status::resource_exhausted(format!(
                "request of {len} bytes, more than the limit of {} bytes",
                self.max
            ))));
        }
        if self.buf.len() < 5 + len {
            self.buf.reserve(5 + len - self.buf.len());
            return None;
        }
        let message = M::decode(&self.buf[5..5 + len])
            .map(Box::new)
            .map_err(|e| tonic::Status::internal(format!("undecodable request: {e}")));
        self.buf.advance(5 + len);
        if self.buf.is_empty() {
            // Give the allocation back: an idle stream holds no buffer.
            self.buf = BytesMut::new();
        }
        Some(message)
    }
}

/// Messages come boxed: a stream's loop holds what it reads across no await, but the future
/// that reads keeps room for one (a delta request is 624 bytes, most of it the node) in every
/// idle stream's state.
impl<M, B> tokio_stream::Stream for Requests<M, B>
where
    M: prost::Message + Default,
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<StdError>,
{
    type Item = Result<Box<M>, tonic::Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(message) = this.next_message() {
                if message.is_err() {
                    this.done = true;
                    this.buf = BytesMut::new();
                }
                return Poll::Ready(Some(message));
            }
            if this.done {
                if this.buf.is_empty() {
                    return Poll::Ready(None);
                }
                this.buf = BytesMut::new();
                return Poll::Ready(Some(Err(tonic::Status::internal("the request stream ended inside a message"))));
            }
            match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        this.buf.extend_from_slice(&data);
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    this.buf = BytesMut::new();
                    return Poll::Ready(Some(Err(tonic::Status::from_error(e.into()))));
                }
                Poll::Ready(None) => this.done = true,
            }
        }
    }
}

/// The most bytes [`DeltaBody`] copies into one chunk (small resources and fields): one
/// HTTP/2 DATA frame at the protocol's default `SETTINGS_MAX_FRAME_SIZE` (16,384; Envoy's
/// `Http2ProtocolOptions` has no setting to raise it). A larger chunk is cut into frames of
/// this size all the same, but while it waits in the stream's send buffer it is a larger
/// allocation: 5,000 streams sending their initial configuration at once each hold about one
/// chunk, and with 64 KiB chunks the server kept ~1.5 KB more RSS per idle stream afterwards
/// (BENCHMARKS.md, "Session 25").
pub const CHUNK: usize = 16 * 1024;
/// A resource encoding at least this long is written as the shared bytes, not copied.
pub const SHARE_AT: usize = 16 * 1024;

/// The HTTP/2 body of one stream (delta or state of the world): its responses as gRPC messages
/// (a zero byte, the length as big-endian u32, the message), then the trailers with the
/// stream's status. A response is copied one chunk at a time, when HTTP/2 asks for the next:
/// hyper asks only while the stream's send buffer holds less than its limit (400 KiB), so a
/// stream holds that much of copies at most, however large its responses, whether its client
/// reads slowly or every client reconnects at once. (Copying a whole response when it was
/// queued took, at `--preset large`, a ~40 MB copy per sidecar stream.)
pub struct DeltaBody<M> {
    responses: super::ResponseStream<M>,
    /// The response being written.
    writing: Option<Framer<M>>,
    done: bool,
}

impl<M: Framed> DeltaBody<M> {
    pub fn new(responses: super::ResponseStream<M>) -> DeltaBody<M> {
        DeltaBody { responses, writing: None, done: false }
    }
}

// (No field is pinned: the responses are a boxed stream.)
impl<M> Unpin for DeltaBody<M> {}

/// A [`Framed`] response written as its gRPC message one chunk at a time, as HTTP/2 asks for
/// the next: the framing and small parts copied into chunks of at most [`CHUNK`] bytes, a
/// resource encoding of [`SHARE_AT`] bytes or more handed over as the shared bytes. The chunks
/// concatenate to exactly `[0, len as u32 BE] ++ response.encode_to_vec()`.
struct Framer<M> {
    response: M,
    /// The next rendering to write.
    at: usize,
    /// The bytes of the message not yet in a chunk (the capacity of the next one).
    left: usize,
    started: bool,
    /// A large encoding to hand over next (its field's key and length ended the last chunk).
    shared: Option<Bytes>,
    done: bool,
}

impl<M: Framed> Framer<M> {
    fn new(response: M) -> Framer<M> {
        let left = response.encoded_len() + 5;
        Framer { response, at: 0, left, started: false, shared: None, done: false }
    }

    /// The next chunk: copied bytes, or a shared encoding itself.
    fn next_chunk(&mut self) -> Option<Bytes> {
        if let Some(shared) = self.shared.take() {
            return Some(shared);
        }
        if self.done {
            return None;
        }
        let mut buf = BytesMut::with_capacity(self.left.min(CHUNK));
        if !self.started {
            self.started = true;
            self.left -= 5;
            buf.put_u8(0);
            buf.put_u32(u32::try_from(self.left).unwrap_or(u32::MAX));
        }
        let renderings = self.response.renderings();
        while let Some(r) = renderings.get(self.at) {
            let piece = M::piece(r);
            let head = key_len(M::SHARED) + encoded_len_varint(piece.len() as u64);
            let shared = piece.len() >= SHARE_AT;
            if !shared && !buf.is_empty() && buf.len() + head + piece.len() > CHUNK {
                return Some(buf.freeze());
            }
            encode_key(M::SHARED, WireType::LengthDelimited, &mut buf);
            encode_varint(piece.len() as u64, &mut buf);
            self.at += 1;
            self.left -= head + piece.len();
            if shared {
                self.shared = Some(piece.clone());
                return Some(buf.freeze());
            }
            buf.extend_from_slice(piece);
        }
        self.response.encode_rest(&mut buf);
        self.done = true;
        (!buf.is_empty()).then(|| buf.freeze())
    }
}

impl<M: Framed> http_body::Body for DeltaBody<M> {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, tonic::Status>>> {
        let this = &mut *self;
        loop {
            if let Some(writing) = &mut this.writing {
                match writing.next_chunk() {
                    Some(chunk) => return Poll::Ready(Some(Ok(http_body::Frame::data(chunk)))),
                    None => this.writing = None,
                }
            }
            if this.done {
                return Poll::Ready(None);
            }
            let status = match tokio_stream::Stream::poll_next(this.responses.as_mut(), cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(response))) => {
                    this.writing = Some(Framer::new(response));
                    continue;
                }
                Poll::Ready(Some(Err(status))) => status,
                Poll::Ready(None) => tonic::Status::ok(""),
            };
            this.done = true;
            let mut trailers = http::HeaderMap::new();
            if status.add_header(&mut trailers).is_err() {
                trailers.insert("grpc-status", http::HeaderValue::from_static("13"));
            }
            return Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers))));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.writing.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{Resource, Variant};
    use crate::translate::ResourceType;
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
    use prost::Message;
    use std::collections::VecDeque;

    /// Every chunk of a response's message.
    fn frame<M: Framed>(response: M) -> Vec<Bytes> {
        let mut framer = Framer::new(response);
        std::iter::from_fn(|| framer.next_chunk()).collect()
    }

    #[test]
    fn a_response_of_shared_encodings_decodes_as_the_protocol_message() {
        let cla = ClusterLoadAssignment {
            cluster_name: "outbound|80||a.default.svc.cluster.local".into(),
            ..Default::default()
        };
        let body = cla.encode_to_vec();
        let r = Resource::new(cla.cluster_name.as_str().into(), "v1".into(), Arc::from(&body[..]));
        let rendered = r.rendering(ResourceType::ClusterLoadAssignment, Variant::AsIs, |_| None);
        let response = DeltaResponse {
            type_url: ResourceType::ClusterLoadAssignment.type_url().into(),
            resources: vec![rendered.clone(), rendered],
            removed_resources: vec!["gone".into()],
            nonce: "7".into(),
            system_version_info: "42".into(),
        };
        let bytes = response.encode_to_vec();
        assert_eq!(bytes.len(), response.encoded_len());
        let decoded = DeltaDiscoveryResponse::decode(&bytes[..]).unwrap();
        assert_eq!(decoded.type_url, "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment");
        assert_eq!(decoded.nonce, "7");
        assert_eq!(decoded.system_version_info, "42");
        assert_eq!(decoded.removed_resources, ["gone"]);
        assert_eq!(decoded.resources.len(), 2);
        for res in &decoded.resources {
            assert_eq!(res.name, cla.cluster_name);
            assert_eq!(res.version, "v1");
            let any = res.resource.as_ref().unwrap();
            assert_eq!(any.type_url, "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment");
            assert_eq!(ClusterLoadAssignment::decode(&any.value[..]).unwrap(), cla);
        }
    }

    #[test]
    fn a_framed_response_is_the_grpc_message_and_shares_large_resources() {
        let small = Resource::new("s".into(), "v1".into(), Arc::from(&b"tiny"[..]));
        let large_body = vec![7u8; SHARE_AT * 2];
        let large = Resource::new("l".into(), "v2".into(), Arc::from(&large_body[..]));
        let many: Vec<_> = (0..(CHUNK / 100 + 5))
            .map(|i| Resource::new(format!("m{i}").into(), "v".into(), Arc::from(&[1u8; 90][..])))
            .collect();
        let ty = ResourceType::Cluster;
        let large = large.rendering(ty, Variant::AsIs, |_| None);
        let mut resources = vec![small.rendering(ty, Variant::AsIs, |_| None), large.clone()];
        resources.extend(many.iter().map(|r| r.rendering(ty, Variant::AsIs, |_| None)));
        let response = DeltaResponse {
            type_url: ty.type_url().into(),
            resources,
            removed_resources: vec!["gone".into()],
            nonce: "3".into(),
            system_version_info: "9".into(),
        };
        let chunks = frame(response.clone());
        let joined: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        let message = response.encode_to_vec();
        assert_eq!(joined[0], 0, "not compressed");
        assert_eq!(u32::from_be_bytes(joined[1..5].try_into().unwrap()) as usize, message.len());
        assert_eq!(&joined[5..], &message[..]);
        let decoded = DeltaDiscoveryResponse::decode(&joined[5..]).unwrap();
        assert_eq!(decoded.resources.len(), response.resources.len());
        assert_eq!(decoded.removed_resources, ["gone"]);
        // The large encoding is the shared bytes themselves; no chunk outgrows CHUNK.
        assert!(chunks.iter().any(|c| c.as_ptr() == large.wire.as_ptr() && c.len() == large.wire.len()));
        assert!(chunks.iter().all(|c| c.len() <= CHUNK || c.as_ptr() == large.wire.as_ptr()));
        assert!(chunks.len() >= 4, "the small resources span more than one chunk: {}", chunks.len());
    }

    #[test]
    fn a_response_is_copied_one_chunk_at_a_time_as_http2_asks_for_it() {
        // One response of ~6 chunks of small resources, then a large shared one.
        let ty = ResourceType::ClusterLoadAssignment;
        let many: Vec<_> = (0..(6 * CHUNK / 1000))
            .map(|i| Resource::new(format!("m{i}").into(), "v".into(), Arc::from(&[1u8; 990][..])))
            .collect();
        let large = Resource::new("l".into(), "v".into(), Arc::from(&vec![2u8; SHARE_AT][..]));
        let mut resources: Vec<_> = many.iter().map(|r| r.rendering(ty, Variant::AsIs, |_| None)).collect();
        resources.push(large.rendering(ty, Variant::AsIs, |_| None));
        let total = resources.len();
        let response =
            DeltaResponse { type_url: ty.type_url().into(), resources, nonce: "1".into(), ..Default::default() };
        let expected = response.encode_to_vec();
        let responses: crate::xds::ResponseStream<DeltaResponse> = Box::pin(tokio_stream::iter([Ok(response)]));
        let mut body = DeltaBody::new(responses);
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut written = Vec::new();
        let mut copied_at_once = Vec::new();
        loop {
            match http_body::Body::poll_frame(Pin::new(&mut body), &mut cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(chunk) => {
                        // What the body has copied but not handed over: nothing, and the
                        // renderings not yet reached are only referenced.
                        let at = body.writing.as_ref().map_or(total, |w| w.at);
                        copied_at_once.push(at);
                        written.extend_from_slice(&chunk);
                    }
                    Err(_) => break, // the trailers
                },
                other => panic!("unexpected poll: {:?}", other.map(|f| f.map(|f| f.map(|f| f.is_data())))),
            }
        }
        assert_eq!(&written[5..], &expected[..]);
        // Each chunk reached ~CHUNK/1000 more renderings than the last, never the whole response.
        assert!(copied_at_once.len() >= 6, "{copied_at_once:?}");
        assert!(copied_at_once[0] < total / 4, "the first chunk copied {} of {total} renderings", copied_at_once[0]);
        assert!(copied_at_once.windows(2).all(|w| w[1] - w[0] <= CHUNK / 1000 + 1), "{copied_at_once:?}");
    }

    #[test]
    fn a_state_of_the_world_response_carries_the_shared_any_of_each_rendering() {
        let cla = ClusterLoadAssignment { cluster_name: "c".into(), ..Default::default() };
        let small = Resource::new("c".into(), "v1".into(), Arc::from(&cla.encode_to_vec()[..]));
        let large = Resource::new("big".into(), "v2".into(), Arc::from(&vec![9u8; SHARE_AT + 1][..]));
        let ty = ResourceType::ClusterLoadAssignment;
        let (small, large) =
            (small.rendering(ty, Variant::AsIs, |_| None), large.rendering(ty, Variant::AsIs, |_| None));
        let response = SotwResponse {
            version_info: "set-1".into(),
            resources: vec![small.clone(), large.clone()],
            type_url: ty.type_url().into(),
            nonce: "4".into(),
            seq: 0,
        };
        let chunks = frame(response.clone());
        let joined: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        assert_eq!(u32::from_be_bytes(joined[1..5].try_into().unwrap()) as usize, joined.len() - 5);
        let decoded = DiscoveryResponse::decode(&joined[5..]).unwrap();
        assert_eq!(decoded, response.to_proto());
        assert_eq!((decoded.version_info.as_str(), decoded.nonce.as_str()), ("set-1", "4"));
        assert_eq!(decoded.type_url, ty.type_url());
        assert_eq!(decoded.resources.len(), 2);
        for any in &decoded.resources {
            assert_eq!(any.type_url, ty.type_url());
        }
        assert_eq!(ClusterLoadAssignment::decode(&decoded.resources[0].value[..]).unwrap(), cla);
        assert_eq!(decoded.resources[1].value, vec![9u8; SHARE_AT + 1]);
        // The large Any is the rendering's own bytes, a suffix of its delta encoding.
        assert!(chunks.iter().any(|c| c.as_ptr() == large.any.as_ptr() && c.len() == large.any.len()));
        assert_eq!(large.any.as_ptr(), large.wire[large.wire.len() - large.any.len()..].as_ptr());
    }

    /// A request body delivered in the given pieces.
    struct Pieces(VecDeque<Bytes>);

    impl http_body::Body for Pieces {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(|b| Ok(http_body::Frame::data(b))))
        }
    }

    fn requests(bytes: &[u8], cuts: &[usize], max: usize) -> Requests<DeltaDiscoveryRequest, Pieces> {
        let mut pieces = VecDeque::new();
        let mut at = 0;
        for &cut in cuts.iter().chain([bytes.len()].iter()) {
            pieces.push_back(Bytes::copy_from_slice(&bytes[at..cut]));
            at = cut;
        }
        Requests::new(Pieces(pieces), max)
    }

    #[tokio::test]
    async fn requests_split_anywhere_decode_and_leave_no_buffer() {
        use tokio_stream::StreamExt;
        let a = DeltaDiscoveryRequest {
            type_url: "a".into(),
            resource_names_subscribe: vec!["x".repeat(3000)],
            ..Default::default()
        };
        let b = DeltaDiscoveryRequest { type_url: "b".into(), response_nonce: "7".into(), ..Default::default() };
        let mut bytes = grpc_frame(&a).to_vec();
        bytes.extend(grpc_frame(&b));
        // Cut inside the first header, inside the first body, and across the boundary.
        for cuts in [vec![], vec![2], vec![2, 100, 3004], vec![3010], vec![1, 2, 3, 4, 5, 6]] {
            let mut stream = requests(&bytes, &cuts, 1 << 20);
            assert_eq!(*stream.next().await.unwrap().unwrap(), a, "cuts {cuts:?}");
            assert_eq!(*stream.next().await.unwrap().unwrap(), b, "cuts {cuts:?}");
            assert_eq!(stream.buf.capacity(), 0, "no buffer held between messages");
            assert!(stream.next().await.is_none());
        }
    }

    #[tokio::test]
    async fn bad_requests_end_the_stream_with_a_status() {
        use tokio_stream::StreamExt;
        let m = grpc_frame(&DeltaDiscoveryRequest { type_url: "t".repeat(100), ..Default::default() }).to_vec();
        let status = requests(&m, &[], 50).next().await.unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
        let mut compressed = m.clone();
        compressed[0] = 1;
        let status = requests(&compressed, &[], 1 << 20).next().await.unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");
        let status = requests(&m[..m.len() - 1], &[], 1 << 20).next().await.unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::Internal, "truncated: {status:?}");
        let mut garbage = m.clone();
        garbage[5] = 0xff;
        garbage[6] = 0xff;
        let status = requests(&garbage, &[], 1 << 20).next().await.unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::Internal, "undecodable: {status:?}");
    }

    #[test]
    fn a_variant_is_made_once_and_shared() {
        let r = Resource::new("l".into(), "v".into(), Arc::from(&b"body"[..]));
        let mut made = 0;
        let a = r.rendering(ResourceType::Listener, Variant::Captured, |b| {
            made += 1;
            Some(([b, &b"!"[..]].concat(), None))
        });
        let b = r.rendering(ResourceType::Listener, Variant::Captured, |_| unreachable!("made once"));
        assert_eq!(made, 1);
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.body(), b"body!");
        assert_ne!(a.version, "v", "a variant's version is its own content hash");
        // A variant that is the body as is shares the as-is encoding.
        let plain = r.rendering(ResourceType::Listener, Variant::Bound("127.0.0.2".parse().unwrap()), |_| None);
        assert!(Arc::ptr_eq(&plain, &r.rendering(ResourceType::Listener, Variant::AsIs, |_| None)));
        assert_eq!((plain.body(), plain.version.as_str()), (&b"body"[..], "v"));
    }
}
