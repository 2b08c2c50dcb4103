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
//! tonic's generated ADS server fixes the delta response type to prost's
//! `DeltaDiscoveryResponse`, so [`AdsService`] routes the delta method itself (tonic's
//! `server::Grpc` with a prost codec over [`DeltaResponse`]) and hands every other method to
//! the generated server.

use std::convert::Infallible;
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryServiceServer, SERVICE_NAME,
};
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use prost::bytes::{Buf, BufMut};
use prost::encoding::{DecodeContext, WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use tonic::codegen::{BoxFuture, Context, Poll, Service, StdError, http};

use crate::cache::Rendered;

/// A `DeltaDiscoveryResponse` (same fields, same tags) whose resources are shared encodings.
/// Encode-only: the server never decodes one (a client decodes the bytes as prost's
/// `DeltaDiscoveryResponse`).
#[derive(Default, Debug, Clone)]
pub struct DeltaResponse {
    pub type_url: String,
    pub resources: Vec<Arc<Rendered>>,
    pub removed_resources: Vec<String>,
    pub nonce: String,
}

// DeltaDiscoveryResponse's field numbers.
const RESOURCES: u32 = 2;
const TYPE_URL: u32 = 4;
const NONCE: u32 = 5;
const REMOVED_RESOURCES: u32 = 6;

fn string_field_len(tag: u32, s: &str) -> usize {
    key_len(tag) + encoded_len_varint(s.len() as u64) + s.len()
}

fn put_bytes_field(tag: u32, value: &[u8], buf: &mut impl BufMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(value.len() as u64, buf);
    buf.put_slice(value);
}

impl DeltaResponse {
    /// The response as prost's type (decoded from this one's encoding): for tests and tools.
    pub fn to_proto(&self) -> DeltaDiscoveryResponse {
        use prost::Message;
        DeltaDiscoveryResponse::decode(&self.encode_to_vec()[..]).expect("a DeltaResponse encodes a valid message")
    }
}

impl prost::Message for DeltaResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        for r in &self.resources {
            put_bytes_field(RESOURCES, &r.wire, buf);
        }
        if !self.type_url.is_empty() {
            put_bytes_field(TYPE_URL, self.type_url.as_bytes(), buf);
        }
        if !self.nonce.is_empty() {
            put_bytes_field(NONCE, self.nonce.as_bytes(), buf);
        }
        for name in &self.removed_resources {
            put_bytes_field(REMOVED_RESOURCES, name.as_bytes(), buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        // Never decoded by meshflow: skip everything (a decoder reads prost's type instead).
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        let resources: usize = self
            .resources
            .iter()
            .map(|r| key_len(RESOURCES) + encoded_len_varint(r.wire.len() as u64) + r.wire.len())
            .sum();
        let removed: usize = self.removed_resources.iter().map(|n| string_field_len(REMOVED_RESOURCES, n)).sum();
        let opt = |tag: u32, s: &str| if s.is_empty() { 0 } else { string_field_len(tag, s) };
        resources + removed + opt(TYPE_URL, &self.type_url) + opt(NONCE, &self.nonce)
    }

    fn clear(&mut self) {
        *self = DeltaResponse::default();
    }
}

const DELTA_PATH: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// The ADS gRPC service: the delta method written from shared encodings ([`DeltaResponse`]),
/// every other path served by the generated server over the same [`super::AdsServer`].
pub struct AdsService {
    server: Arc<super::AdsServer>,
    generated: AggregatedDiscoveryServiceServer<super::AdsServer>,
}

impl AdsService {
    pub fn new(server: super::AdsServer) -> AdsService {
        let server = Arc::new(server);
        let generated = AggregatedDiscoveryServiceServer::from_arc(server.clone())
            .max_decoding_message_size(super::MAX_DECODING)
            .max_encoding_message_size(super::MAX_ENCODING);
        AdsService { server, generated }
    }
}

impl Clone for AdsService {
    fn clone(&self) -> AdsService {
        AdsService { server: self.server.clone(), generated: self.generated.clone() }
    }
}

impl tonic::server::NamedService for AdsService {
    const NAME: &'static str = SERVICE_NAME;
}

struct DeltaMethod(Arc<super::AdsServer>);

impl tonic::server::StreamingService<DeltaDiscoveryRequest> for DeltaMethod {
    type Response = DeltaResponse;
    type ResponseStream = super::ResponseStream<DeltaResponse>;
    type Future = BoxFuture<tonic::Response<Self::ResponseStream>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<tonic::Streaming<DeltaDiscoveryRequest>>) -> Self::Future {
        let server = self.0.clone();
        Box::pin(async move { server.delta(request).await })
    }
}

impl<B> Service<http::Request<B>> for AdsService
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != DELTA_PATH {
            return self.generated.call(req);
        }
        let method = DeltaMethod(self.server.clone());
        Box::pin(async move {
            let codec = tonic_prost::ProstCodec::<DeltaResponse, DeltaDiscoveryRequest>::default();
            let mut grpc = tonic::server::Grpc::new(codec)
                .apply_max_message_size_config(Some(super::MAX_DECODING), Some(super::MAX_ENCODING));
            Ok(grpc.streaming(method, req).await)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{Resource, Variant};
    use crate::translate::ResourceType;
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use prost::Message;

    #[test]
    fn a_response_of_shared_encodings_decodes_as_the_protocol_message() {
        let cla = ClusterLoadAssignment {
            cluster_name: "outbound|80||a.default.svc.cluster.local".into(),
            ..Default::default()
        };
        let body = cla.encode_to_vec();
        let r = Resource::new(cla.cluster_name.clone(), "v1".into(), Arc::from(&body[..]));
        let rendered = r.rendering(ResourceType::ClusterLoadAssignment, Variant::AsIs, |_| None);
        let response = DeltaResponse {
            type_url: ResourceType::ClusterLoadAssignment.type_url().into(),
            resources: vec![rendered.clone(), rendered],
            removed_resources: vec!["gone".into()],
            nonce: "7".into(),
        };
        let bytes = response.encode_to_vec();
        assert_eq!(bytes.len(), response.encoded_len());
        let decoded = DeltaDiscoveryResponse::decode(&bytes[..]).unwrap();
        assert_eq!(decoded.type_url, "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment");
        assert_eq!(decoded.nonce, "7");
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
