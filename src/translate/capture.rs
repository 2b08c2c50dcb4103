//! What a proxy whose traffic is captured (node metadata `INTERCEPTION_MODE: REDIRECT`, iptables
//! from `meshflow init`) needs beyond the outbound listeners every sidecar gets:
//!
//! - `virtualOutbound` on 0.0.0.0:15001, where iptables sends the workload's outbound TCP. It
//!   hands each connection to the listener of its original destination (`use_original_dst`):
//!   `<vip>_<port>`, else `0.0.0.0_<port>`, both served with `bind_to_port: false` to such a
//!   proxy ([`captured_listener`]); a destination no listener claims takes its own chain, to
//!   `PassthroughCluster` (outbound traffic policy ALLOW_ANY) or `BlackHoleCluster`
//!   (REGISTRY_ONLY). istiod: `listener_builder.go` `buildVirtualOutboundListener`,
//!   `buildOutboundCatchAllNetworkFilterChains`, `blackholeFilterChain`.
//! - `virtualInbound` on 0.0.0.0:15006, where iptables sends inbound TCP: one filter chain per
//!   target port of the Services that select the workload (HTTP through an HTTP connection
//!   manager, the rest through tcp_proxy) to `inbound|<port>||`, and a passthrough chain to
//!   `InboundPassthroughCluster` for every other port. istiod: `listener_inbound.go`.
//! - The clusters they name: `PassthroughCluster`, `BlackHoleCluster`,
//!   `InboundPassthroughCluster` (`cluster_builder.go` `buildDefaultPassthroughCluster`,
//!   `buildBlackHoleCluster`, `buildInboundPassthroughCluster`) and `inbound|<port>||`
//!   (`buildInboundCluster`): ORIGINAL_DST, connecting from 127.0.0.6, which the capture rules
//!   let through, so the application sees a local connection.
//!
//! The first three clusters and `virtualOutbound` depend on the outbound traffic policy only
//! (a `serve` flag, as mesh config): [`static_resources`], served to every captured proxy in
//! [`Scope::Captured`]. `virtualInbound` and the inbound clusters depend on the workload's
//! labels: [`class_inbound`], once per proxy class, in the engine and the reference translator.

use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::listener::v3 as listener;
use envoy_types::pb::envoy::config::route::v3 as envoy_route;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp;
use envoy_types::pb::envoy::extensions::upstreams::http::v3 as upstream_http;
use envoy_types::pb::google::protobuf::{BoolValue, Duration, UInt32Value};
use envoy_types::util::pack_any;
use prost::{Message, Name};
use serde::{Deserialize, Serialize};

use super::{PortProtocol, ResourceType, Scope, seconds, socket_address};
use crate::model::Service;
use crate::model::k8s::{Labels, TargetPort};

pub const VIRTUAL_OUTBOUND: &str = "virtualOutbound";
pub const VIRTUAL_INBOUND: &str = "virtualInbound";
pub const PASSTHROUGH_CLUSTER: &str = "PassthroughCluster";
pub const BLACKHOLE_CLUSTER: &str = "BlackHoleCluster";
pub const INBOUND_PASSTHROUGH_CLUSTER: &str = "InboundPassthroughCluster";
/// istiod's mesh `proxyListenPort` and `proxyInboundListenPort` defaults.
pub const OUTBOUND_CAPTURE_PORT: u16 = 15001;
pub const INBOUND_CAPTURE_PORT: u16 = 15006;
/// The source address of the proxy's connections to the local application (istiod's
/// `InboundPassthroughBindIpv4`); the capture rules let its traffic on `lo` through.
pub const INBOUND_PASSTHROUGH_BIND: &str = "127.0.0.6";
const TCP_PROXY: &str = "envoy.filters.network.tcp_proxy";
const HCM: &str = "envoy.filters.network.http_connection_manager";
const ORIGINAL_DST_FILTER: &str = "envoy.filters.listener.original_dst";
/// Filter chain names as istiod's (`pilot/pkg/model/listener.go`).
const OUTBOUND_CATCH_ALL_CHAIN: &str = "virtualOutbound-catchall-tcp";
const OUTBOUND_BLACKHOLE_CHAIN: &str = "virtualOutbound-blackhole";
const INBOUND_BLACKHOLE_CHAIN: &str = "virtualInbound-blackhole";
/// Envoy's default transport protocol when no inspector detected TLS.
const RAW_BUFFER: &str = "raw_buffer";

/// Mesh config `outboundTrafficPolicy.mode`: where a captured connection goes that no listener
/// of the proxy claims.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
pub enum OutboundTrafficPolicy {
    /// To its original destination (`PassthroughCluster`), as Istio by default.
    #[default]
    AllowAny,
    /// Nowhere (`BlackHoleCluster`): only the services of the registry are reachable.
    RegistryOnly,
}

impl OutboundTrafficPolicy {
    /// The cluster that unclaimed outbound traffic goes to.
    pub fn egress_cluster(self) -> &'static str {
        match self {
            OutboundTrafficPolicy::AllowAny => PASSTHROUGH_CLUSTER,
            OutboundTrafficPolicy::RegistryOnly => BLACKHOLE_CLUSTER,
        }
    }
}

/// The resources every captured proxy gets, whatever its workload: in [`Scope::Captured`].
pub fn static_resources(policy: OutboundTrafficPolicy) -> Vec<(Scope, ResourceType, String, Vec<u8>)> {
    vec![
        (Scope::Captured, ResourceType::Cluster, PASSTHROUGH_CLUSTER.into(), passthrough_cluster(PASSTHROUGH_CLUSTER)),
        (Scope::Captured, ResourceType::Cluster, BLACKHOLE_CLUSTER.into(), blackhole_cluster()),
        (Scope::Captured, ResourceType::Cluster, INBOUND_PASSTHROUGH_CLUSTER.into(), inbound_passthrough_cluster()),
        (Scope::Captured, ResourceType::Listener, VIRTUAL_OUTBOUND.into(), virtual_outbound_listener(policy)),
    ]
}

/// Whether a listener is one of the capture listeners, which only captured proxies get.
pub fn is_virtual_listener(name: &str) -> bool {
    name == VIRTUAL_OUTBOUND || name == VIRTUAL_INBOUND
}

/// An outbound listener as a captured proxy gets it: the same listener with `bind_to_port:
/// false` (istiod's `getBindToPort` for REDIRECT), so `virtualOutbound` hands it the
/// connections to its address. The field is appended to the encoded listener, so the engine's
/// bytes are not decoded and every captured proxy gets the same bytes. A repeated message field
/// *merges* into an earlier occurrence, and an empty `BoolValue` would leave an earlier `true`
/// standing: this relies on the engine never setting `bind_to_port` (it binds every listener),
/// which the debug assertion checks.
pub fn captured_listener(body: &[u8]) -> Vec<u8> {
    debug_assert!(
        <envoy_types::pb::envoy::config::listener::v3::Listener as prost::Message>::decode(body)
            .is_ok_and(|l| l.bind_to_port.is_none()),
        "the engine's listeners leave bind_to_port unset"
    );
    let mut out = Vec::with_capacity(body.len() + 2);
    out.extend_from_slice(body);
    // Listener.bind_to_port (field 26): a BoolValue whose `value` is false, i.e. empty.
    prost::encoding::message::encode(26, &BoolValue { value: false }, &mut out);
    out
}

/// The metadata namespace that marks the cluster of a headless Service (`clusterIP: None`):
/// `{"meshflow": {"headless": true}}`.
/// Such a cluster is EDS for every proxy but a captured sidecar, which gets [`captured_cluster`].
pub const HEADLESS_METADATA: &str = "meshflow";

/// The marker [`super::cluster::cluster`] puts on a headless Service's clusters.
pub(super) fn headless_metadata() -> core::Metadata {
    use envoy_types::pb::google::protobuf::{Struct, Value, value};
    let headless = Value { kind: Some(value::Kind::BoolValue(true)) };
    let marker = Struct { fields: [("headless".to_string(), headless)].into() };
    core::Metadata { filter_metadata: [(HEADLESS_METADATA.to_string(), marker)].into(), ..Default::default() }
}

/// A headless Service's cluster (marked with [`HEADLESS_METADATA`]) as a captured sidecar gets
/// it: ORIGINAL_DST with CLUSTER_PROVIDED balancing, no EDS, everything else (the
/// DestinationRule's TLS, connection pool, outlier detection) as the proxy would otherwise get
/// it. This is istiod's cluster for a headless service at every sidecar (`convertResolution`:
/// `Passthrough` → ORIGINAL_DST; `applyTrafficPolicy` → CLUSTER_PROVIDED): the application
/// resolved the name to one pod and connected to it, and the connection goes to that pod. A
/// proxy that is not captured connects to its own listener address, so it keeps the EDS
/// cluster (as do gateways, for which istiod falls back to EDS too). None for every other
/// cluster, and for bytes that are not a cluster.
pub fn captured_cluster(body: &[u8]) -> Option<Vec<u8>> {
    // Cheap test first: most clusters are not headless, and this runs per captured stream.
    let key = HEADLESS_METADATA.as_bytes();
    if !body.windows(key.len()).any(|w| w == key) {
        return None;
    }
    let mut c = cluster::Cluster::decode(body).ok()?;
    if !c.metadata.as_ref().is_some_and(|m| m.filter_metadata.contains_key(HEADLESS_METADATA)) {
        return None;
    }
    c.cluster_discovery_type = original_dst_type();
    c.eds_cluster_config = None;
    c.load_assignment = None;
    c.lb_policy = cluster::cluster::LbPolicy::ClusterProvided as i32;
    // A ring hash or least-request configuration means nothing to the original destination.
    c.lb_config = None;
    Some(c.encode_to_vec())
}

fn original_dst_type() -> Option<cluster::cluster::ClusterDiscoveryType> {
    Some(cluster::cluster::ClusterDiscoveryType::Type(cluster::cluster::DiscoveryType::OriginalDst as i32))
}

/// istiod's `passthroughHttpProtocolOptions`: the downstream's protocol, 5 minutes idle.
fn passthrough_http_options() -> upstream_http::HttpProtocolOptions {
    upstream_http::HttpProtocolOptions {
        common_http_protocol_options: Some(core::HttpProtocolOptions {
            idle_timeout: Some(seconds(300)),
            ..Default::default()
        }),
        ..super::cluster::downstream_protocol_options()
    }
}

/// The circuit breakers of an empty connection pool (istiod's `applyConnectionPool` with
/// nothing set): every limit at its maximum, remaining capacity tracked.
fn unlimited_circuit_breakers() -> cluster::CircuitBreakers {
    let max = Some(UInt32Value { value: u32::MAX });
    cluster::CircuitBreakers {
        thresholds: vec![cluster::circuit_breakers::Thresholds {
            max_connections: max,
            max_pending_requests: max,
            max_requests: max,
            max_retries: max,
            track_remaining: true,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn passthrough_cluster_message(name: &str) -> cluster::Cluster {
    cluster::Cluster {
        name: name.to_string(),
        alt_stat_name: name.to_string(),
        cluster_discovery_type: original_dst_type(),
        connect_timeout: Some(seconds(10)),
        lb_policy: cluster::cluster::LbPolicy::ClusterProvided as i32,
        circuit_breakers: Some(unlimited_circuit_breakers()),
        typed_extension_protocol_options: [(
            upstream_http::HttpProtocolOptions::full_name(),
            pack_any(passthrough_http_options()),
        )]
        .into_iter()
        .collect(),
        ..Default::default()
    }
}

/// `PassthroughCluster`: to the connection's original destination.
pub fn passthrough_cluster(name: &str) -> Vec<u8> {
    passthrough_cluster_message(name).encode_to_vec()
}

/// `BlackHoleCluster`: STATIC without endpoints, so every connection to it fails.
pub fn blackhole_cluster() -> Vec<u8> {
    cluster::Cluster {
        name: BLACKHOLE_CLUSTER.to_string(),
        alt_stat_name: BLACKHOLE_CLUSTER.to_string(),
        cluster_discovery_type: Some(cluster::cluster::ClusterDiscoveryType::Type(
            cluster::cluster::DiscoveryType::Static as i32,
        )),
        connect_timeout: Some(seconds(10)),
        lb_policy: cluster::cluster::LbPolicy::RoundRobin as i32,
        ..Default::default()
    }
    .encode_to_vec()
}

fn bind_config() -> core::BindConfig {
    let core::Address { address: Some(core::address::Address::SocketAddress(source)) } =
        socket_address(INBOUND_PASSTHROUGH_BIND, 0)
    else {
        unreachable!("socket_address builds a socket address")
    };
    core::BindConfig { source_address: Some(source), ..Default::default() }
}

/// `InboundPassthroughCluster`: inbound traffic to a port no Service of the workload names, to
/// its original destination, from 127.0.0.6.
pub fn inbound_passthrough_cluster() -> Vec<u8> {
    let mut c = passthrough_cluster_message(INBOUND_PASSTHROUGH_CLUSTER);
    c.upstream_bind_config = Some(bind_config());
    c.encode_to_vec()
}

fn tcp_proxy_filter(stat_prefix: &str, cluster: &str) -> listener::Filter {
    let proxy = tcp::TcpProxy {
        stat_prefix: stat_prefix.to_string(),
        cluster_specifier: Some(tcp::tcp_proxy::ClusterSpecifier::Cluster(cluster.to_string())),
        ..Default::default()
    };
    listener::Filter {
        name: TCP_PROXY.to_string(),
        config_type: Some(listener::filter::ConfigType::TypedConfig(pack_any(proxy))),
    }
}

fn port_match(port: u16) -> listener::FilterChainMatch {
    listener::FilterChainMatch { destination_port: Some(UInt32Value { value: u32::from(port) }), ..Default::default() }
}

/// `virtualOutbound`: 0.0.0.0:15001 with `use_original_dst`. A connection to 15001 itself goes
/// to `BlackHoleCluster` (no loop); every other one no listener claims to the policy's cluster.
pub fn virtual_outbound_listener(policy: OutboundTrafficPolicy) -> Vec<u8> {
    let egress = policy.egress_cluster();
    listener::Listener {
        name: VIRTUAL_OUTBOUND.to_string(),
        address: Some(socket_address("0.0.0.0", OUTBOUND_CAPTURE_PORT)),
        use_original_dst: Some(BoolValue { value: true }),
        traffic_direction: core::TrafficDirection::Outbound as i32,
        max_connections_to_accept_per_socket_event: Some(UInt32Value { value: 1 }),
        filter_chains: vec![
            listener::FilterChain {
                name: OUTBOUND_BLACKHOLE_CHAIN.to_string(),
                filter_chain_match: Some(port_match(OUTBOUND_CAPTURE_PORT)),
                filters: vec![tcp_proxy_filter(BLACKHOLE_CLUSTER, BLACKHOLE_CLUSTER)],
                ..Default::default()
            },
            listener::FilterChain {
                name: OUTBOUND_CATCH_ALL_CHAIN.to_string(),
                filters: vec![tcp_proxy_filter(egress, egress)],
                ..Default::default()
            },
        ],
        ..Default::default()
    }
    .encode_to_vec()
}

/// One port of `virtualInbound`: a target port of a Service that selects the workload.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct InboundPort {
    /// The port the application listens on (the Service port's `targetPort`).
    pub target_port: u16,
    /// The Service port (istiod names the inbound virtual host by it).
    pub service_port: u16,
    /// Through an HTTP connection manager (HTTP, HTTP/2, gRPC ports), else tcp_proxy.
    pub http: bool,
    pub http2: bool,
}

/// istiod's `BuildInboundSubsetKey`: `inbound|<port>||`.
pub fn inbound_cluster_name(port: u16) -> String {
    format!("inbound|{port}||")
}

/// Whether `selector` (a Service's, non-empty) selects a workload with `labels`.
pub fn service_selects(service: &Service, labels: &Labels) -> bool {
    match &service.selector {
        Some(selector) if !selector.is_empty() => selector.iter().all(|(k, v)| labels.get(k) == Some(v)),
        _ => false,
    }
}

/// The inbound ports of a workload from the Services of its namespace that select it (the
/// caller checks [`service_selects`]). A target port that two Services claim keeps the first
/// one's protocol, in (namespace, name) order (istiod keeps the oldest Service's). UDP/SCTP
/// ports and named target ports (their number is the Pod's, which a class does not carry) are
/// left out.
pub fn inbound_ports<'a>(services: impl IntoIterator<Item = &'a Service>) -> Vec<InboundPort> {
    let mut services: Vec<&Service> = services.into_iter().collect();
    services.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let mut ports: std::collections::BTreeMap<u16, InboundPort> = std::collections::BTreeMap::new();
    for s in services {
        for p in &s.ports {
            let protocol = PortProtocol::of(p);
            if protocol == PortProtocol::Unsupported {
                continue;
            }
            let TargetPort::Number(target) = p.target_port else { continue };
            let target = if target == 0 { p.port } else { target };
            ports.entry(target).or_insert(InboundPort {
                target_port: target,
                service_port: p.port,
                http: matches!(protocol, PortProtocol::Http | PortProtocol::Http2 | PortProtocol::Grpc),
                http2: matches!(protocol, PortProtocol::Http2 | PortProtocol::Grpc),
            });
        }
    }
    ports.into_values().collect()
}

/// `inbound|<port>||`: ORIGINAL_DST (the workload's own address and port), from 127.0.0.6, no
/// cleanup (istiod's `buildInboundCluster` for a Service port: no bind, ORIGINAL_DST).
pub fn inbound_cluster(port: &InboundPort) -> Vec<u8> {
    let name = inbound_cluster_name(port.target_port);
    let mut c = cluster::Cluster {
        name: name.clone(),
        alt_stat_name: name,
        cluster_discovery_type: original_dst_type(),
        connect_timeout: Some(seconds(10)),
        lb_policy: cluster::cluster::LbPolicy::ClusterProvided as i32,
        // istiod: maxSecondsValue, "about 292 years".
        cleanup_interval: Some(Duration { seconds: (i64::MAX - 999_999_999) / 1_000_000_000, nanos: 0 }),
        circuit_breakers: Some(unlimited_circuit_breakers()),
        upstream_bind_config: Some(bind_config()),
        ..Default::default()
    };
    if port.http2 {
        use upstream_http::http_protocol_options::explicit_http_config::ProtocolConfig;
        use upstream_http::http_protocol_options::{ExplicitHttpConfig, UpstreamProtocolOptions};
        let options = upstream_http::HttpProtocolOptions {
            upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
                protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(Default::default())),
            })),
            ..Default::default()
        };
        c.typed_extension_protocol_options.insert(upstream_http::HttpProtocolOptions::full_name(), pack_any(options));
    }
    c.encode_to_vec()
}

/// The inbound HTTP connection manager of a port: stats `inbound_0.0.0.0_<port>`, an inline
/// route config `inbound|<port>||` whose one virtual host `inbound|http|<service port>` sends
/// everything to the port's cluster (istiod's `buildSidecarInboundHTTPRouteConfig` and
/// `BuildDefaultHTTPInboundRoute`: no timeout).
fn inbound_http_manager(port: &InboundPort) -> hcm::HttpConnectionManager {
    let cluster = inbound_cluster_name(port.target_port);
    let route = envoy_route::Route {
        name: "default".to_string(),
        r#match: Some(envoy_route::RouteMatch {
            path_specifier: Some(envoy_route::route_match::PathSpecifier::Prefix("/".to_string())),
            ..Default::default()
        }),
        action: Some(envoy_route::route::Action::Route(envoy_route::RouteAction {
            cluster_specifier: Some(envoy_route::route_action::ClusterSpecifier::Cluster(cluster.clone())),
            timeout: Some(seconds(0)),
            max_stream_duration: Some(envoy_route::route_action::MaxStreamDuration {
                max_stream_duration: Some(seconds(0)),
                grpc_timeout_header_max: Some(seconds(0)),
                ..Default::default()
            }),
            ..Default::default()
        })),
        ..Default::default()
    };
    let config = envoy_route::RouteConfiguration {
        name: cluster,
        virtual_hosts: vec![envoy_route::VirtualHost {
            name: format!("inbound|http|{}", port.service_port),
            domains: vec!["*".to_string()],
            routes: vec![route],
            ..Default::default()
        }],
        validate_clusters: Some(BoolValue { value: false }),
        ..Default::default()
    };
    hcm::HttpConnectionManager {
        stat_prefix: format!("inbound_0.0.0.0_{}", port.target_port),
        codec_type: hcm::http_connection_manager::CodecType::Auto as i32,
        route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::RouteConfig(config)),
        http2_protocol_options: port.http2.then(Default::default),
        http_filters: vec![hcm::HttpFilter {
            name: "envoy.filters.http.router".to_string(),
            config_type: Some(hcm::http_filter::ConfigType::TypedConfig(pack_any(Router::default()))),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// `virtualInbound`: 0.0.0.0:15006 with the original destination listener filter. Chains: a
/// connection to 15006 itself to `BlackHoleCluster`; per port, `0.0.0.0_<port>` on its
/// destination port; everything else (`virtualInbound`) to `InboundPassthroughCluster`.
pub fn virtual_inbound_listener(ports: &[InboundPort]) -> Vec<u8> {
    let raw = |mut m: listener::FilterChainMatch| {
        m.transport_protocol = RAW_BUFFER.to_string();
        Some(m)
    };
    let mut chains = vec![
        listener::FilterChain {
            name: INBOUND_BLACKHOLE_CHAIN.to_string(),
            filter_chain_match: Some(port_match(INBOUND_CAPTURE_PORT)),
            filters: vec![tcp_proxy_filter(BLACKHOLE_CLUSTER, BLACKHOLE_CLUSTER)],
            ..Default::default()
        },
        listener::FilterChain {
            name: VIRTUAL_INBOUND.to_string(),
            filter_chain_match: raw(Default::default()),
            filters: vec![tcp_proxy_filter(INBOUND_PASSTHROUGH_CLUSTER, INBOUND_PASSTHROUGH_CLUSTER)],
            ..Default::default()
        },
    ];
    for port in ports {
        let cluster = inbound_cluster_name(port.target_port);
        let filter = if port.http {
            listener::Filter {
                name: HCM.to_string(),
                config_type: Some(listener::filter::ConfigType::TypedConfig(pack_any(inbound_http_manager(port)))),
            }
        } else {
            tcp_proxy_filter(&cluster, &cluster)
        };
        chains.push(listener::FilterChain {
            name: format!("0.0.0.0_{}", port.target_port),
            filter_chain_match: raw(port_match(port.target_port)),
            filters: vec![filter],
            ..Default::default()
        });
    }
    listener::Listener {
        name: VIRTUAL_INBOUND.to_string(),
        address: Some(socket_address("0.0.0.0", INBOUND_CAPTURE_PORT)),
        traffic_direction: core::TrafficDirection::Inbound as i32,
        continue_on_listener_filters_timeout: true,
        max_connections_to_accept_per_socket_event: Some(UInt32Value { value: 1 }),
        listener_filters: vec![listener::ListenerFilter {
            name: ORIGINAL_DST_FILTER.to_string(),
            config_type: Some(listener::listener_filter::ConfigType::TypedConfig(pack_any(OriginalDst::default()))),
            ..Default::default()
        }],
        // istiod: mesh protocolDetectionTimeout (0s by default).
        listener_filters_timeout: Some(seconds(0)),
        filter_chains: chains,
        ..Default::default()
    }
    .encode_to_vec()
}

/// The class-dependent inbound resources of a sidecar class: `virtualInbound` and a cluster
/// per inbound port, from the Services of the class's namespace that select its labels.
pub fn class_inbound<'a>(services: impl IntoIterator<Item = &'a Service>) -> Vec<(ResourceType, String, Vec<u8>)> {
    let ports = inbound_ports(services);
    let mut out = vec![(ResourceType::Listener, VIRTUAL_INBOUND.to_string(), virtual_inbound_listener(&ports))];
    for p in &ports {
        out.push((ResourceType::Cluster, inbound_cluster_name(p.target_port), inbound_cluster(p)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::k8s::{Protocol, ServicePort};
    use envoy_types::pb::google::protobuf::Any;

    fn unpack<M: Message + Default>(any: &Any) -> M {
        M::decode(&any.value[..]).unwrap()
    }

    fn typed(f: &listener::Filter) -> &Any {
        match &f.config_type {
            Some(listener::filter::ConfigType::TypedConfig(a)) => a,
            other => panic!("no typed config: {other:?}"),
        }
    }

    fn tcp_cluster(f: &listener::Filter) -> (String, String) {
        assert_eq!(f.name, "envoy.filters.network.tcp_proxy");
        let t: tcp::TcpProxy = unpack(typed(f));
        let Some(tcp::tcp_proxy::ClusterSpecifier::Cluster(c)) = t.cluster_specifier else { panic!() };
        (t.stat_prefix, c)
    }

    fn addr(l: &listener::Listener) -> (String, u32) {
        let Some(core::address::Address::SocketAddress(a)) = l.address.clone().unwrap().address else { panic!() };
        let Some(core::socket_address::PortSpecifier::PortValue(p)) = a.port_specifier else { panic!() };
        (a.address, p)
    }

    fn service(name: &str, selector: &[(&str, &str)], ports: &[(&str, u16, u16)]) -> Service {
        Service {
            namespace: "default".into(),
            name: name.into(),
            ports: ports
                .iter()
                .map(|(n, port, target)| ServicePort {
                    name: n.to_string(),
                    port: *port,
                    protocol: Protocol::Tcp,
                    target_port: TargetPort::Number(*target),
                    app_protocol: None,
                })
                .collect(),
            selector: Some(selector.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            cluster_ip: Some("10.96.0.10".into()),
            external_name: None,
            publish_not_ready_addresses: false,
            export_to: vec![],
        }
    }

    #[test]
    fn a_headless_services_clusters_become_original_dst_for_captured_sidecars_keeping_their_policy() {
        use crate::model::istio::TrafficPolicy;
        use crate::translate::endpoint::service_port_rows;
        let mut svc = service("db", &[("app", "db")], &[("tcp-db", 5432, 5432)]);
        let vip = service_port_rows(&svc).pop().unwrap();
        assert!(!vip.headless);
        svc.cluster_ip = Some("None".into());
        let row = service_port_rows(&svc).pop().unwrap();
        assert!(row.headless, "clusterIP: None is headless (istiod's Passthrough resolution)");
        let policy: TrafficPolicy = serde_yaml_ng::from_str(
            "loadBalancer: {consistentHash: {ringHash: {minimumRingSize: 1024}, useSourceIp: true}}\n\
             outlierDetection: {consecutive5xxErrors: 3, interval: 5s}\n\
             connectionPool: {tcp: {maxConnections: 7}}",
        )
        .unwrap();
        for subset in [None, Some("v1")] {
            let eds =
                cluster::Cluster::decode(&super::super::cluster::cluster(&row, subset, Some(&policy))[..]).unwrap();
            // What every proxy but a captured sidecar gets: EDS, marked.
            assert_eq!(
                eds.cluster_discovery_type,
                Some(cluster::cluster::ClusterDiscoveryType::Type(cluster::cluster::DiscoveryType::Eds as i32))
            );
            assert_eq!(eds.metadata.as_ref().unwrap().filter_metadata[HEADLESS_METADATA].fields.len(), 1);
            let c = cluster::Cluster::decode(&captured_cluster(&eds.encode_to_vec()).unwrap()[..]).unwrap();
            assert_eq!(c.name, eds.name);
            assert_eq!(c.cluster_discovery_type, original_dst_type());
            assert_eq!(c.lb_policy, cluster::cluster::LbPolicy::ClusterProvided as i32, "istiod's applyTrafficPolicy");
            assert_eq!(c.lb_config, None, "no ring for the original destination");
            assert_eq!(c.eds_cluster_config, None);
            assert_eq!(c.load_assignment, None);
            // The rest of the DestinationRule stands.
            assert!(c.outlier_detection.is_some());
            assert_eq!(c.outlier_detection, eds.outlier_detection);
            assert_eq!(c.circuit_breakers, eds.circuit_breakers);
            assert_eq!(c.connect_timeout, eds.connect_timeout);
        }
        // A service with a VIP: not marked, not rewritten.
        let plain = super::super::cluster::cluster(&vip, None, Some(&policy));
        assert_eq!(cluster::Cluster::decode(&plain[..]).unwrap().metadata, None);
        assert_eq!(captured_cluster(&plain), None);
        // Not a cluster at all: None, no panic.
        assert_eq!(captured_cluster(b"\xffmeshflow\x00"), None);
    }

    #[test]
    fn virtual_outbound_hands_off_by_original_destination_and_falls_through_by_policy() {
        for (policy, egress) in [
            (OutboundTrafficPolicy::AllowAny, "PassthroughCluster"),
            (OutboundTrafficPolicy::RegistryOnly, "BlackHoleCluster"),
        ] {
            let l = listener::Listener::decode(&virtual_outbound_listener(policy)[..]).unwrap();
            assert_eq!(l.name, "virtualOutbound");
            assert_eq!(addr(&l), ("0.0.0.0".into(), 15001));
            assert_eq!(l.use_original_dst, Some(BoolValue { value: true }));
            assert_eq!(l.bind_to_port, None, "it binds (the default)");
            assert_eq!(l.traffic_direction, core::TrafficDirection::Outbound as i32);
            assert_eq!(l.filter_chains.len(), 2);
            let blackhole = &l.filter_chains[0];
            assert_eq!(blackhole.name, "virtualOutbound-blackhole");
            assert_eq!(
                blackhole.filter_chain_match.as_ref().unwrap().destination_port,
                Some(UInt32Value { value: 15001 })
            );
            assert_eq!(tcp_cluster(&blackhole.filters[0]), ("BlackHoleCluster".into(), "BlackHoleCluster".into()));
            let catch_all = &l.filter_chains[1];
            assert_eq!(catch_all.name, "virtualOutbound-catchall-tcp");
            assert_eq!(catch_all.filter_chain_match, None, "matches every other connection");
            assert_eq!(tcp_cluster(&catch_all.filters[0]), (egress.to_string(), egress.to_string()));
        }
    }

    #[test]
    fn passthrough_and_blackhole_clusters_as_istiod_builds_them() {
        let c = cluster::Cluster::decode(&passthrough_cluster(PASSTHROUGH_CLUSTER)[..]).unwrap();
        assert_eq!(c.name, "PassthroughCluster");
        assert_eq!(c.cluster_discovery_type, original_dst_type());
        assert_eq!(c.lb_policy, cluster::cluster::LbPolicy::ClusterProvided as i32);
        assert_eq!(c.connect_timeout, Some(seconds(10)));
        assert_eq!(c.upstream_bind_config, None);
        let opts: upstream_http::HttpProtocolOptions =
            unpack(&c.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]);
        assert_eq!(opts.common_http_protocol_options.unwrap().idle_timeout, Some(seconds(300)));
        assert!(matches!(
            opts.upstream_protocol_options,
            Some(upstream_http::http_protocol_options::UpstreamProtocolOptions::UseDownstreamProtocolConfig(ref d))
                if d.http_protocol_options.is_some() && d.http2_protocol_options.is_some()
        ));
        let t = &c.circuit_breakers.unwrap().thresholds[0];
        assert_eq!(t.max_connections, Some(UInt32Value { value: u32::MAX }));

        let c = cluster::Cluster::decode(&blackhole_cluster()[..]).unwrap();
        assert_eq!(c.name, "BlackHoleCluster");
        assert_eq!(
            c.cluster_discovery_type,
            Some(cluster::cluster::ClusterDiscoveryType::Type(cluster::cluster::DiscoveryType::Static as i32))
        );
        assert_eq!(c.lb_policy, cluster::cluster::LbPolicy::RoundRobin as i32);
        assert_eq!(c.load_assignment, None, "no endpoints: every connection fails");

        let c = cluster::Cluster::decode(&inbound_passthrough_cluster()[..]).unwrap();
        assert_eq!(c.name, "InboundPassthroughCluster");
        assert_eq!(c.cluster_discovery_type, original_dst_type());
        assert_eq!(c.lb_policy, cluster::cluster::LbPolicy::ClusterProvided as i32);
        let source = c.upstream_bind_config.unwrap().source_address.unwrap();
        assert_eq!(source.address, "127.0.0.6");
        assert_eq!(source.port_specifier, Some(core::socket_address::PortSpecifier::PortValue(0)));
    }

    #[test]
    fn a_captured_listener_does_not_bind_and_is_otherwise_unchanged() {
        let body = super::super::listener(9080, None);
        let captured = captured_listener(&body);
        let mut l = listener::Listener::decode(&captured[..]).unwrap();
        assert_eq!(l.bind_to_port, Some(BoolValue { value: false }));
        l.bind_to_port = None;
        assert_eq!(l, listener::Listener::decode(&body[..]).unwrap());
    }

    #[test]
    fn inbound_ports_are_the_selecting_services_target_ports() {
        let reviews = service("reviews", &[("app", "reviews")], &[("http", 9080, 8080), ("tcp-db", 5432, 5432)]);
        let other = service("a-other", &[("app", "reviews")], &[("grpc", 7070, 8080), ("", 9000, 0)]);
        let labels: Labels = [("app".to_string(), "reviews".to_string()), ("version".into(), "v1".into())].into();
        assert!(service_selects(&reviews, &labels));
        assert!(!service_selects(&service("x", &[("app", "ratings")], &[]), &labels));
        assert!(!service_selects(&service("x", &[], &[]), &labels), "an empty selector selects nothing");
        let ports = inbound_ports([&reviews, &other]);
        assert_eq!(
            ports,
            [
                // Claimed by both: the first Service by name (a-other) keeps it, as gRPC.
                InboundPort { target_port: 5432, service_port: 5432, http: false, http2: false },
                InboundPort { target_port: 8080, service_port: 7070, http: true, http2: true },
                InboundPort { target_port: 9000, service_port: 9000, http: false, http2: false },
            ]
        );
    }

    #[test]
    fn virtual_inbound_chains_by_destination_port_with_a_passthrough_for_the_rest() {
        let ports = [
            InboundPort { target_port: 9080, service_port: 9080, http: true, http2: false },
            InboundPort { target_port: 5432, service_port: 5432, http: false, http2: false },
        ];
        let l = listener::Listener::decode(&virtual_inbound_listener(&ports)[..]).unwrap();
        assert_eq!(l.name, "virtualInbound");
        assert_eq!(addr(&l), ("0.0.0.0".into(), 15006));
        assert_eq!(l.use_original_dst, None);
        assert_eq!(l.traffic_direction, core::TrafficDirection::Inbound as i32);
        assert_eq!(l.listener_filters.len(), 1);
        assert_eq!(l.listener_filters[0].name, "envoy.filters.listener.original_dst");
        let names: Vec<&str> = l.filter_chains.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["virtualInbound-blackhole", "virtualInbound", "0.0.0.0_9080", "0.0.0.0_5432"]);
        let m = |i: usize| l.filter_chains[i].filter_chain_match.clone().unwrap();
        assert_eq!(m(0).destination_port, Some(UInt32Value { value: 15006 }));
        assert_eq!(tcp_cluster(&l.filter_chains[0].filters[0]).1, "BlackHoleCluster");
        assert_eq!(m(1).destination_port, None);
        assert_eq!(m(1).transport_protocol, "raw_buffer");
        assert_eq!(tcp_cluster(&l.filter_chains[1].filters[0]).1, "InboundPassthroughCluster");
        assert_eq!(m(2).destination_port, Some(UInt32Value { value: 9080 }));
        assert_eq!(m(2).transport_protocol, "raw_buffer");
        let http = &l.filter_chains[2].filters[0];
        assert_eq!(http.name, "envoy.filters.network.http_connection_manager");
        let manager: hcm::HttpConnectionManager = unpack(typed(http));
        assert_eq!(manager.stat_prefix, "inbound_0.0.0.0_9080");
        let Some(hcm::http_connection_manager::RouteSpecifier::RouteConfig(rc)) = manager.route_specifier else {
            panic!("inline route config")
        };
        assert_eq!(rc.name, "inbound|9080||");
        assert_eq!(rc.virtual_hosts[0].name, "inbound|http|9080");
        assert_eq!(rc.virtual_hosts[0].domains, ["*"]);
        let Some(envoy_route::route::Action::Route(action)) = rc.virtual_hosts[0].routes[0].action.clone() else {
            panic!()
        };
        assert_eq!(
            action.cluster_specifier,
            Some(envoy_route::route_action::ClusterSpecifier::Cluster("inbound|9080||".into()))
        );
        assert_eq!(action.timeout, Some(seconds(0)));
        assert_eq!(manager.http_filters.last().unwrap().name, "envoy.filters.http.router");
        assert_eq!(m(3).destination_port, Some(UInt32Value { value: 5432 }));
        assert_eq!(tcp_cluster(&l.filter_chains[3].filters[0]), ("inbound|5432||".into(), "inbound|5432||".into()));
    }

    #[test]
    fn inbound_clusters_connect_to_the_original_destination_from_127_0_0_6() {
        let c = cluster::Cluster::decode(
            &inbound_cluster(&InboundPort { target_port: 9080, service_port: 80, http: true, http2: false })[..],
        )
        .unwrap();
        assert_eq!(c.name, "inbound|9080||");
        assert_eq!(c.cluster_discovery_type, original_dst_type());
        assert_eq!(c.lb_policy, cluster::cluster::LbPolicy::ClusterProvided as i32);
        assert_eq!(c.cleanup_interval, Some(Duration { seconds: 9_223_372_035, nanos: 0 }));
        assert_eq!(c.upstream_bind_config.unwrap().source_address.unwrap().address, "127.0.0.6");
        assert!(c.typed_extension_protocol_options.is_empty(), "HTTP/1: no protocol options");
        let c = cluster::Cluster::decode(
            &inbound_cluster(&InboundPort { target_port: 7070, service_port: 7070, http: true, http2: true })[..],
        )
        .unwrap();
        assert_eq!(c.typed_extension_protocol_options.len(), 1, "gRPC: explicit HTTP/2");
    }

    #[test]
    fn class_inbound_names_a_cluster_per_port_and_the_listener() {
        let reviews = service("reviews", &[("app", "reviews")], &[("http", 9080, 9080)]);
        let out = class_inbound([&reviews]);
        let names: Vec<(ResourceType, &str)> = out.iter().map(|(t, n, _)| (*t, n.as_str())).collect();
        assert_eq!(names, [(ResourceType::Listener, "virtualInbound"), (ResourceType::Cluster, "inbound|9080||")]);
        let out = class_inbound([]);
        assert_eq!(out.len(), 1, "a workload no Service selects still gets the passthrough listener");
    }
}
