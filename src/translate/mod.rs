//! Pure builders of Envoy resources from already-joined inputs.
//!
//! The dataflow decides *which* inputs meet; these functions decide *what* they become. The same
//! functions back the [`reference`] translator, so the engine and the reference can only differ
//! in which inputs they bring together — exactly what the central test checks.
//!
//! Names follow istiod: clusters `outbound|<port>|<subset>|<fqdn>`, EDS resources named as
//! their cluster, route configs named by port (`"9080"`), listeners `0.0.0.0_<port>`.

pub mod capture;
pub mod cluster;
pub mod delegate;
pub mod endpoint;
pub mod gateway;
pub mod grpc;
pub mod listener;
pub mod locality;
pub mod outbound;
pub mod reference;
pub mod route;
pub mod secret;
pub mod service_entry;
pub mod views;

pub use cluster::cluster;
pub use listener::{
    TcpTarget, TlsChain, is_tls_port, sniffing_listener, tcp_listener, tcp_listener_name, tcp_target, tls_chains,
    tls_listener, untranslated_tcp_tls,
};

use std::net::IpAddr;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as envoy_endpoint;
use envoy_types::pb::envoy::config::listener::v3 as envoy_listener;
use envoy_types::pb::envoy::config::route::v3 as envoy_route;
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::Cors;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::google::protobuf::{Duration, UInt32Value};
use envoy_types::util::pack_any;
use prost::Message;
use serde::{Deserialize, Serialize};

use crate::model::k8s::{Protocol, ServicePort};
use crate::model::{FieldError, ObjectKey};

/// A problem with one input object that does not keep it from being served, by field: valid
/// Istio that meshflow does not translate yet, or a route to a host or subset that does not
/// exist (istiod routes to the cluster name anyway and Envoy answers 503; `istioctl analyze`
/// warns about it). Reported once when it appears, and listed on `/debug/diagnostics`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Diagnostic {
    pub object: ObjectKey,
    pub field: String,
    pub message: String,
}

impl Diagnostic {
    pub fn field(object: ObjectKey, error: FieldError) -> Diagnostic {
        Diagnostic { object, field: error.field, message: error.reason }
    }
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.object, self.field, self.message)
    }
}

/// What translation reads of istiod's mesh config (`meshConfig`): fixed for the life of an
/// engine (`meshflow serve` flags), the same for the engine and the reference translator.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MeshConfig {
    /// `meshConfig.rootNamespace`: its DestinationRules apply to every namespace after the
    /// proxy's own and the host's (default `istio-system`).
    pub root_namespace: String,
}

impl Default for MeshConfig {
    fn default() -> MeshConfig {
        MeshConfig { root_namespace: outbound::ROOT_NAMESPACE.to_string() }
    }
}

/// The cluster's DNS domain, as in istiod's default `cluster.local`.
pub const DOMAIN_SUFFIX: &str = "cluster.local";

/// The xDS resource types meshflow serves, in dependency order (see [`ResourceType::ALL`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ResourceType {
    Cluster,
    ClusterLoadAssignment,
    /// SDS: certificates and keys, named as istiod names them (`kubernetes://<secret>`).
    Secret,
    Listener,
    RouteConfiguration,
}

pub const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const ENDPOINT_TYPE: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const LISTENER_TYPE: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const ROUTE_TYPE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub const SECRET_TYPE: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

impl ResourceType {
    /// In dependency order: what a resource refers to comes before it (a listener's route
    /// config after the clusters its routes name, a listener after the secrets its TLS
    /// contexts name). Additions are pushed in this order, removals in the reverse.
    pub const ALL: [ResourceType; 5] = [
        ResourceType::Cluster,
        ResourceType::ClusterLoadAssignment,
        ResourceType::Secret,
        ResourceType::Listener,
        ResourceType::RouteConfiguration,
    ];

    pub fn type_url(self) -> &'static str {
        match self {
            ResourceType::Cluster => CLUSTER_TYPE,
            ResourceType::ClusterLoadAssignment => ENDPOINT_TYPE,
            ResourceType::Secret => SECRET_TYPE,
            ResourceType::Listener => LISTENER_TYPE,
            ResourceType::RouteConfiguration => ROUTE_TYPE,
        }
    }

    pub fn from_type_url(url: &str) -> Option<ResourceType> {
        ResourceType::ALL.into_iter().find(|t| t.type_url() == url)
    }

    /// The xDS service's short name (CDS, EDS, LDS, RDS), for logs.
    pub fn short(self) -> &'static str {
        match self {
            ResourceType::Cluster => "CDS",
            ResourceType::ClusterLoadAssignment => "EDS",
            ResourceType::Secret => "SDS",
            ResourceType::Listener => "LDS",
            ResourceType::RouteConfiguration => "RDS",
        }
    }

    /// Wildcard types: a client that subscribes to nothing in particular gets all of them.
    pub fn is_wildcard_type(self) -> bool {
        matches!(self, ResourceType::Cluster | ResourceType::Listener)
    }
}

/// Which proxies a resource is served to. Most output is the same for every proxy; what
/// depends on who asks (a gateway's listeners, its certificates) is computed once per proxy
/// class that is connected, and a proxy sees its class's resources, then its kind's, then the
/// shared ones (see [`crate::cache::View`]).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Scope {
    /// Every proxy: clusters and their load assignments.
    All,
    /// Every sidecar: the outbound listeners and their route configs. Gateways do not get them.
    Sidecars,
    /// The proxies of one class, by [`crate::model::proxy::ProxyClass::id`].
    Class(String),
    /// Every proxyless gRPC client: API listeners `<fqdn>:<port>`, their route configs, and
    /// clusters as gRPC takes them (they hide the shared clusters of the same name).
    Proxyless,
    /// The proxies of one namespace, where what they see differs from what every other
    /// namespace sees (a DestinationRule of their own, a VirtualService exported to them only):
    /// it hides the same names in `Sidecars` and `All`. See [`outbound::Context`].
    Namespace(String),
    /// The sidecars of one namespace: listeners that differ there (a `tcp` route exported to
    /// it, or naming it in `sourceNamespace`). Gateway proxies of the namespace do not see them.
    SidecarsIn(String),
    /// Every sidecar whose traffic is captured (node metadata `INTERCEPTION_MODE: REDIRECT`):
    /// `virtualOutbound` and the passthrough clusters ([`capture::static_resources`]). Not
    /// made by the engine: `serve` puts them in the cache once.
    Captured,
    /// The proxies of one locality (`region/zone/subzone` as [`locality::locality_string`]
    /// writes it, "" for none): the assignments of the default context's clusters whose load
    /// balancing depends on the proxy's locality ([`locality::locality_lb`]). They hide the
    /// shared ones of the same name.
    Locality(String),
    /// The proxies of one namespace in one locality (locality, namespace): the same, for the
    /// clusters of a namespace whose rule differs ([`Scope::Namespace`]).
    LocalityIn(String, String),
    /// The proxies of one locality with one label set (locality, labels as
    /// [`crate::model::k8s::Labels::id`] writes them): the assignments of the default context's clusters
    /// whose `failoverPriority` ranks endpoints by the labels they share with the proxy
    /// ([`locality::LocalityLb::by_labels`]). They hide the shared ones of the same name.
    Prioritized(String, String),
    /// The same, for the clusters of a namespace whose rule differs (locality, labels,
    /// namespace).
    PrioritizedIn(String, String, String),
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::All => f.write_str("all"),
            Scope::Sidecars => f.write_str("sidecars"),
            Scope::Class(id) => f.write_str(id),
            Scope::Proxyless => f.write_str("proxyless"),
            Scope::Namespace(ns) => write!(f, "namespace/{ns}"),
            Scope::SidecarsIn(ns) => write!(f, "sidecars/{ns}"),
            Scope::Captured => f.write_str("captured"),
            Scope::Locality(l) => write!(f, "locality/{l}"),
            Scope::LocalityIn(l, ns) => write!(f, "locality/{l}/namespace/{ns}"),
            Scope::Prioritized(l, labels) => write!(f, "locality/{l}/labels/{labels}"),
            Scope::PrioritizedIn(l, labels, ns) => write!(f, "locality/{l}/labels/{labels}/namespace/{ns}"),
        }
    }
}

/// Where output of a context goes: the default context's to `shared`, a namespace's to that
/// namespace.
pub fn context_scope(ctx: &outbound::Context, shared: Scope) -> Scope {
    match ctx {
        None => shared,
        Some(ns) => Scope::Namespace(ns.clone()),
    }
}

pub fn service_fqdn(namespace: &str, name: &str) -> String {
    format!("{name}.{namespace}.svc.{DOMAIN_SUFFIX}")
}

pub fn outbound_cluster_name(port: u16, subset: &str, fqdn: &str) -> String {
    format!("outbound|{port}|{subset}|{fqdn}")
}

pub fn listener_name(port: u16) -> String {
    format!("0.0.0.0_{port}")
}

pub fn route_config_name(port: u16) -> String {
    port.to_string()
}

/// The route config of a port of unknown protocol on its own sniffing listener (the service has
/// an address): `<fqdn>:<port>`, holding that service's virtual host only, as istiod's
/// `buildSidecarOutboundHTTPListenerOpts` names it for `ListenerProtocolAuto` bound to a VIP.
pub fn sniffed_route_config_name(fqdn: &str, port: u16) -> String {
    format!("{fqdn}:{port}")
}

/// The application protocol of a service port, as istiod infers it: from `appProtocol`, else
/// from the port name's prefix (`http-web`, `grpc`), else unknown (istiod sniffs those).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PortProtocol {
    Http,
    Http2,
    Grpc,
    /// Unknown: sniffed, as istiod does: a listener with the HTTP inspector, an HTTP chain (its
    /// virtual host, as an HTTP port's) and a TCP chain to the service's cluster
    /// (`outbound::tcp_listeners_for_host`).
    Unknown,
    /// Opaque TCP (tcp, tls, https, mongo, mysql, redis): a cluster but no HTTP route.
    Tcp,
    /// UDP and SCTP ports: not proxied, as in Istio.
    Unsupported,
}

impl PortProtocol {
    pub fn of(port: &ServicePort) -> PortProtocol {
        if port.protocol != Protocol::Tcp {
            return PortProtocol::Unsupported;
        }
        let named = |s: &str| match s.to_ascii_lowercase().as_str() {
            "http" => Some(PortProtocol::Http),
            "http2" | "h2c" | "kubernetes.io/h2c" => Some(PortProtocol::Http2),
            "grpc" | "grpc-web" => Some(PortProtocol::Grpc),
            "tcp" | "tls" | "https" | "kubernetes.io/ws" | "kubernetes.io/wss" | "mongo" | "mysql" | "redis" => {
                Some(PortProtocol::Tcp)
            }
            _ => None,
        };
        if let Some(p) = port.app_protocol.as_deref().and_then(named) {
            return p;
        }
        let prefix = port.name.split('-').next().unwrap_or_default();
        named(prefix).unwrap_or(PortProtocol::Unknown)
    }

    /// Ports that get a virtual host (in the route config of their number and, when sniffed, in
    /// their own: see [`sniffed_route_config_name`]).
    pub fn is_http(self) -> bool {
        matches!(self, PortProtocol::Http | PortProtocol::Http2 | PortProtocol::Grpc | PortProtocol::Unknown)
    }

    /// Ports whose protocol is detected per connection (istiod's `Unsupported`, "auto"): their
    /// own sniffing listener, not the shared HTTP listener of their number.
    pub fn is_sniffed(self) -> bool {
        self == PortProtocol::Unknown
    }

    pub fn is_proxied(self) -> bool {
        self != PortProtocol::Unsupported
    }
}

/// One port of one Service: the unit from which clusters and virtual hosts are built.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServicePortRow {
    pub namespace: String,
    pub service: String,
    pub port: ServicePort,
    /// The Service's cluster IP; None for headless services (`None`) and services without one.
    /// It names the service's TCP listener (`<clusterIP>_<port>`) and decides its subnet matches.
    pub cluster_ip: Option<IpAddr>,
    /// A headless Service (`clusterIP: None`, istiod's `Passthrough` resolution): its cluster
    /// is ORIGINAL_DST for captured sidecars ([`capture::captured_cluster`]).
    #[serde(default)]
    pub headless: bool,
    /// Set for the port of a ServiceEntry host (then `service` is the ServiceEntry's name and
    /// `port` its port as a Kubernetes port): see [`service_entry`].
    pub entry: Option<Box<service_entry::EntryPort>>,
    /// Who sees the host: the Service's `networking.istio.io/exportTo` annotation, the
    /// ServiceEntry's `exportTo` (empty: every namespace). See [`outbound::host_visibility`].
    pub export_to: Vec<String>,
}

impl ServicePortRow {
    /// The host: the Service's FQDN, or the ServiceEntry host as written.
    pub fn fqdn(&self) -> String {
        match &self.entry {
            Some(e) => e.host.clone(),
            None => service_fqdn(&self.namespace, &self.service),
        }
    }

    pub fn cluster_name(&self) -> String {
        outbound_cluster_name(self.port.port, "", &self.fqdn())
    }

    /// The key an endpoint port of this service port carries (its name and protocol).
    pub fn port_key(&self) -> endpoint::PortKey {
        endpoint::port_key(&self.namespace, &self.service, &self.port.name, self.port.protocol)
    }

    pub fn protocol(&self) -> PortProtocol {
        match &self.entry {
            Some(e) => e.protocol,
            None => PortProtocol::of(&self.port),
        }
    }

    /// The kind of object that defines this port (what diagnostics about it name).
    pub fn kind(&self) -> crate::model::Kind {
        if self.entry.is_some() { crate::model::Kind::ServiceEntry } else { crate::model::Kind::Service }
    }
}

fn ads_config_source() -> core::ConfigSource {
    core::ConfigSource {
        config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(core::AggregatedConfigSource {})),
        resource_api_version: core::ApiVersion::V3 as i32,
        ..Default::default()
    }
}

fn seconds(s: i64) -> Duration {
    Duration { seconds: s, nanos: 0 }
}

/// One endpoint of a cluster: an IP (or, in a DNS cluster, a host name) and the resolved target
/// port, with its load balancing weight and locality (`region/zone/subzone`, empty: none).
///
/// The strings are shared (`Arc<str>`): the engine's arrangements copy an address at every
/// merge of their batches, and a copy is then a reference count, not two allocations.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EndpointAddr {
    pub ip: Arc<str>,
    pub port: u16,
    /// istiod's `LbWeight`, 1 unless a ServiceEntry endpoint sets `weight`.
    pub weight: u32,
    pub locality: Arc<str>,
}

impl EndpointAddr {
    /// An endpoint of weight 1 without locality (every Kubernetes endpoint, today).
    pub fn new(ip: impl Into<Arc<str>>, port: u16) -> EndpointAddr {
        EndpointAddr { ip: ip.into(), port, weight: 1, locality: Arc::default() }
    }
}

/// The ClusterLoadAssignment of a cluster. `endpoints` must be sorted and free of duplicates
/// (the callers hand over an ordered set), so equal inputs give equal bytes.
///
/// Written straight to bytes, the same bytes as [`load_assignment_message`] encoded (a test
/// holds them equal): the endpoint graph re-encodes each cluster a pod event touches, and
/// building the message first allocated a string per endpoint and per locality part.
pub fn load_assignment(cluster_name: &str, endpoints: &[&EndpointAddr]) -> Vec<u8> {
    cla_wire::encode(cluster_name, endpoints)
}

/// [`load_assignment`]'s encoder: the fields each message of a ClusterLoadAssignment sets,
/// in the order prost writes them (field number order; a oneof where its fields fall).
mod cla_wire {
    use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

    use super::EndpointAddr;
    use crate::pb::{field_len, opt_str_len, put_head, put_opt_str};

    /// `google.protobuf.UInt32Value { value }`.
    fn uint32_value_len(value: u32) -> usize {
        if value == 0 { 0 } else { key_len(1) + encoded_len_varint(u64::from(value)) }
    }

    fn uint32_value(tag: u32, value: u32, buf: &mut Vec<u8>) {
        put_head(tag, uint32_value_len(value), buf);
        if value != 0 {
            encode_key(1, WireType::Varint, buf);
            encode_varint(u64::from(value), buf);
        }
    }

    /// `SocketAddress { address (2), port_value (3) }` (protocol TCP is the default, 0).
    fn socket_address_len(e: &EndpointAddr) -> usize {
        opt_str_len(2, &e.ip) + key_len(3) + encoded_len_varint(u64::from(e.port))
    }

    /// `LbEndpoint { endpoint (1) { address (1) { socket_address (1) } }, health_status (2),
    /// load_balancing_weight (4) }`.
    fn lb_endpoint_len(e: &EndpointAddr) -> usize {
        let endpoint = field_len(1, field_len(1, socket_address_len(e)));
        field_len(1, endpoint) + key_len(2) + 1 + field_len(4, uint32_value_len(e.weight.max(1)))
    }

    fn lb_endpoint(e: &EndpointAddr, buf: &mut Vec<u8>) {
        let socket = socket_address_len(e);
        let address = field_len(1, socket);
        let endpoint = field_len(1, address);
        put_head(1, endpoint, buf);
        put_head(1, address, buf);
        put_head(1, socket, buf);
        put_opt_str(2, &e.ip, buf);
        encode_key(3, WireType::Varint, buf);
        encode_varint(u64::from(e.port), buf);
        encode_key(2, WireType::Varint, buf);
        encode_varint(super::core::HealthStatus::Healthy as u64, buf);
        uint32_value(4, e.weight.max(1), buf);
    }

    /// `Locality { region (1), zone (2), sub_zone (3) }` from `region/zone/subzone`.
    fn locality_parts(locality: &str) -> [&str; 3] {
        let mut parts = locality.splitn(3, '/');
        [(); 3].map(|_| parts.next().unwrap_or_default())
    }

    fn locality_len(parts: &[&str; 3]) -> usize {
        parts.iter().zip(1..).map(|(p, tag)| opt_str_len(tag, p)).sum()
    }

    pub fn encode(cluster_name: &str, endpoints: &[&EndpointAddr]) -> Vec<u8> {
        // Each endpoint's `LbEndpoint` size, and the endpoints in locality order (a stable
        // sort: in the order given within a locality, as the message groups them).
        let lens: Vec<usize> = endpoints.iter().map(|e| lb_endpoint_len(e)).collect();
        let mut order: Vec<usize> = (0..endpoints.len()).collect();
        if endpoints.windows(2).any(|w| w[0].locality != w[1].locality) {
            order.sort_by(|a, b| endpoints[*a].locality.cmp(&endpoints[*b].locality));
        }
        // Each locality's run of `order`, with its `LocalityLbEndpoints` size and weight.
        let mut groups: Vec<(std::ops::Range<usize>, usize, u32)> = Vec::new();
        let mut start = 0;
        while start < order.len() {
            let locality = &endpoints[order[start]].locality;
            let (mut end, mut len, mut weight) = (start, 0, 0u32);
            while end < order.len() && endpoints[order[end]].locality == *locality {
                len += field_len(2, lens[order[end]]);
                weight = weight.saturating_add(endpoints[order[end]].weight.max(1));
                end += 1;
            }
            let len =
                field_len(1, locality_len(&locality_parts(locality))) + len + field_len(3, uint32_value_len(weight));
            groups.push((start..end, len, weight));
            start = end;
        }
        let total = opt_str_len(1, cluster_name) + groups.iter().map(|(_, len, _)| field_len(2, *len)).sum::<usize>();
        let mut buf = Vec::with_capacity(total);
        put_opt_str(1, cluster_name, &mut buf);
        for (run, len, weight) in groups {
            put_head(2, len, &mut buf);
            let parts = locality_parts(&endpoints[order[run.start]].locality);
            put_head(1, locality_len(&parts), &mut buf);
            for (part, tag) in parts.iter().zip(1..) {
                put_opt_str(tag, part, &mut buf);
            }
            for &i in &order[run] {
                put_head(2, lens[i], &mut buf);
                lb_endpoint(endpoints[i], &mut buf);
            }
            uint32_value(3, weight, &mut buf);
        }
        debug_assert_eq!(buf.len(), total);
        buf
    }
}

/// [`load_assignment`] as a message (DNS clusters carry it inline). Endpoints are grouped by
/// locality, as istiod's EndpointBuilder groups them: each `LbEndpoint` weighs its endpoint's
/// weight, each `LocalityLbEndpoints` the sum of its endpoints'.
pub fn load_assignment_message(
    cluster_name: &str,
    endpoints: &[&EndpointAddr],
) -> envoy_endpoint::ClusterLoadAssignment {
    let mut by_locality: std::collections::BTreeMap<&str, Vec<&EndpointAddr>> = std::collections::BTreeMap::new();
    for e in endpoints {
        by_locality.entry(&*e.locality).or_default().push(e);
    }
    let endpoints = by_locality
        .into_iter()
        .map(|(locality, eps)| {
            let lb_endpoints: Vec<envoy_endpoint::LbEndpoint> = eps
                .iter()
                .map(|e| envoy_endpoint::LbEndpoint {
                    host_identifier: Some(envoy_endpoint::lb_endpoint::HostIdentifier::Endpoint(
                        envoy_endpoint::Endpoint { address: Some(socket_address(&e.ip, e.port)), ..Default::default() },
                    )),
                    health_status: core::HealthStatus::Healthy as i32,
                    load_balancing_weight: Some(UInt32Value { value: e.weight.max(1) }),
                    ..Default::default()
                })
                .collect();
            let weight = eps.iter().fold(0u32, |sum, e| sum.saturating_add(e.weight.max(1)));
            envoy_endpoint::LocalityLbEndpoints {
                locality: parse_locality(locality),
                lb_endpoints,
                load_balancing_weight: Some(UInt32Value { value: weight }),
                ..Default::default()
            }
        })
        .collect();
    envoy_endpoint::ClusterLoadAssignment { cluster_name: cluster_name.to_string(), endpoints, ..Default::default() }
}

/// A locality as Istio writes it, `region/zone/subzone` (trailing parts optional); an empty
/// one for "", as istiod's `ConvertLocality` gives it (gRPC rejects a LocalityLbEndpoints
/// without a locality; for Envoy an empty one is no locality).
fn parse_locality(locality: &str) -> Option<core::Locality> {
    if locality.is_empty() {
        return Some(core::Locality::default());
    }
    let mut parts = locality.splitn(3, '/');
    let mut next = || parts.next().unwrap_or_default().to_string();
    Some(core::Locality { region: next(), zone: next(), sub_zone: next() })
}

fn socket_address(ip: &str, port: u16) -> core::Address {
    core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            address: ip.to_string(),
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(u32::from(port))),
            protocol: core::socket_address::Protocol::Tcp as i32,
            ..Default::default()
        })),
    }
}

/// A virtual host, kept apart from its domains: a route config is assembled from many of them,
/// and a domain that two virtual hosts claim must be dropped from both (Envoy rejects a route
/// config with duplicate domains) without re-encoding either.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct VirtualHostPart {
    pub name: String,
    pub domains: Vec<String>,
    /// The encoded `VirtualHost` without its `domains` field.
    pub body: Vec<u8>,
}

/// The virtual host of a service port in the route config of its port number: the domains
/// istiod gives it (short name, `name.ns`, `name.ns.svc`, the FQDN, the cluster IP, each also
/// with `:port`) and `routes`, first match wins: the routes of the service's VirtualService
/// ([`route::http_routes`]) or, without one, its default route ([`route::default_route`]).
pub fn virtual_host(row: &ServicePortRow, routes: Vec<envoy_route::Route>) -> VirtualHostPart {
    let fqdn = row.fqdn();
    let port = row.port.port;
    let domains = match &row.entry {
        Some(entry) => entry.domains(port),
        None => {
            let names = [
                row.service.clone(),
                format!("{}.{}", row.service, row.namespace),
                format!("{}.{}.svc", row.service, row.namespace),
                fqdn.clone(),
            ];
            let mut domains: Vec<String> = names.iter().flat_map(|n| [n.clone(), format!("{n}:{port}")]).collect();
            // istiod's generateVirtualHostDomains ends with the service's address and
            // address:port (IPv6 in brackets), so a captured application that calls the VIP
            // (`Host: 10.96.0.10:9080`) finds its virtual host.
            if let Some(ip) = row.cluster_ip {
                let ip = match ip {
                    IpAddr::V4(v4) => v4.to_string(),
                    IpAddr::V6(v6) => format!("[{v6}]"),
                };
                domains.push(format!("{ip}:{port}"));
                domains.insert(domains.len() - 1, ip);
            }
            domains
        }
    };
    let name = format!("{fqdn}:{port}");
    let mut body =
        envoy_route::VirtualHost { name: name.clone(), include_request_attempt_count: true, ..Default::default() }
            .encode_to_vec();
    // `routes` (field 3), each encoded with its per-filter configs in a stable order.
    let mut encoded = Vec::new();
    for r in &routes {
        encoded.clear();
        route::encode_route(r, &mut encoded);
        prost::encoding::encode_key(3, prost::encoding::WireType::LengthDelimited, &mut body);
        prost::encoding::encode_varint(encoded.len() as u64, &mut body);
        body.extend_from_slice(&encoded);
    }
    VirtualHostPart { name, domains, body }
}

/// istiod's default retry policy: two retries on connection failures, refused streams and
/// gRPC unavailable/cancelled, to another host. No retriable status codes: istiod dropped 503
/// from its defaults (istio/istio 748c90d, `route/retry/retry.go`, Istio 1.26).
pub(crate) fn default_retry_policy() -> envoy_route::RetryPolicy {
    envoy_route::RetryPolicy {
        retry_on: "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes".to_string(),
        num_retries: Some(UInt32Value { value: 2 }),
        retry_host_predicate: vec![envoy_route::retry_policy::RetryHostPredicate {
            name: "envoy.retry_host_predicates.previous_hosts".to_string(),
            config_type: Some(envoy_route::retry_policy::retry_host_predicate::ConfigType::TypedConfig(pack_any(
                PreviousHostsPredicate {},
            ))),
        }],
        host_selection_retry_max_attempts: 5,
        ..Default::default()
    }
}

/// Assembles a route configuration from its virtual hosts without re-encoding them: a
/// repeated protobuf field is a concatenation of its elements. Virtual hosts are written in
/// name order; a domain claimed by more than one of them is ambiguous (the short name
/// `reviews` of two namespaces' `reviews`) and is left out of all of them.
pub fn route_configuration<'a>(name: &str, vhosts: impl IntoIterator<Item = &'a VirtualHostPart>) -> Vec<u8> {
    let mut vhosts: Vec<&VirtualHostPart> = vhosts.into_iter().collect();
    vhosts.sort_by(|a, b| a.name.cmp(&b.name));
    let mut claims: std::collections::HashMap<&str, u32> = std::collections::HashMap::new();
    for d in vhosts.iter().flat_map(|v| v.domains.iter()) {
        *claims.entry(d.as_str()).or_default() += 1;
    }
    let mut out = envoy_route::RouteConfiguration {
        name: name.to_string(),
        validate_clusters: Some(envoy_types::pb::google::protobuf::BoolValue { value: false }),
        ..Default::default()
    }
    .encode_to_vec();
    let mut vhost = Vec::new();
    for v in vhosts {
        vhost.clear();
        vhost.extend_from_slice(&v.body);
        for d in v.domains.iter().filter(|d| claims[d.as_str()] == 1) {
            prost::encoding::string::encode(2, d, &mut vhost);
        }
        prost::encoding::encode_key(2, prost::encoding::WireType::LengthDelimited, &mut out);
        prost::encoding::encode_varint(vhost.len() as u64, &mut out);
        out.extend_from_slice(&vhost);
    }
    out
}

/// The outbound HTTP listener of a port number: RDS with the route config named by the port.
/// It binds `0.0.0.0`, or `bind` for a proxy that runs without traffic interception.
pub fn listener(port: u16, bind: Option<IpAddr>) -> Vec<u8> {
    let name = listener_name(port);
    let bind = bind.map(|ip| ip.to_string()).unwrap_or_else(|| "0.0.0.0".to_string());
    let manager = http_connection_manager(&name, route_config_name(port));
    envoy_listener::Listener {
        name,
        address: Some(socket_address(&bind, port)),
        filter_chains: vec![envoy_listener::FilterChain {
            filters: vec![envoy_listener::Filter {
                name: "envoy.filters.network.http_connection_manager".to_string(),
                config_type: Some(envoy_listener::filter::ConfigType::TypedConfig(pack_any(manager))),
            }],
            ..Default::default()
        }],
        traffic_direction: core::TrafficDirection::Outbound as i32,
        ..Default::default()
    }
    .encode_to_vec()
}

/// The HTTP connection manager of the sidecar outbound listener `listener_name` (stats
/// `outbound_<listener name>`, as istiod names them) on RDS `route_config_name`.
pub fn http_connection_manager(listener_name: &str, route_config_name: String) -> hcm::HttpConnectionManager {
    hcm::HttpConnectionManager {
        stat_prefix: format!("outbound_{listener_name}"),
        codec_type: hcm::http_connection_manager::CodecType::Auto as i32,
        route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::Rds(hcm::Rds {
            config_source: Some(ads_config_source()),
            route_config_name,
        })),
        // The per-route fault and CORS configs of VirtualService routes need their filters in the
        // chain; istiod's sidecar HCM has fault, then CORS, and the router last.
        http_filters: vec![
            hcm::HttpFilter {
                name: route::FAULT_FILTER.to_string(),
                config_type: Some(hcm::http_filter::ConfigType::TypedConfig(pack_any(HttpFault::default()))),
                ..Default::default()
            },
            hcm::HttpFilter {
                name: route::CORS_FILTER.to_string(),
                config_type: Some(hcm::http_filter::ConfigType::TypedConfig(pack_any(Cors::default()))),
                ..Default::default()
            },
            hcm::HttpFilter {
                name: "envoy.filters.http.router".to_string(),
                config_type: Some(hcm::http_filter::ConfigType::TypedConfig(pack_any(Router::default()))),
                ..Default::default()
            },
        ],
        ..Default::default()
    }
}

/// A listener as a proxy with a bind address (`MESHFLOW_BIND_ADDRESS`) gets it: the same
/// listener with its socket address set to `bind`, port unchanged. Returns the port and the
/// re-encoded listener; None for bytes that are not a listener with a socket address.
pub fn rebind_listener(body: &[u8], bind: IpAddr) -> Option<(u16, Vec<u8>)> {
    let mut l = envoy_listener::Listener::decode(body).ok()?;
    let address = l.address.as_mut()?.address.as_mut()?;
    let core::address::Address::SocketAddress(socket) = address else { return None };
    let port = match socket.port_specifier {
        Some(core::socket_address::PortSpecifier::PortValue(p)) => u16::try_from(p).ok()?,
        _ => return None,
    };
    socket.address = bind.to_string();
    Some((port, l.encode_to_vec()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::k8s::TargetPort;

    #[test]
    fn rebinding_a_listener_changes_its_address_only() {
        let bind: IpAddr = "127.0.0.9".parse().unwrap();
        let http = listener(9080, None);
        let (port, rebound) = rebind_listener(&http, bind).unwrap();
        assert_eq!(port, 9080);
        let (before, after) = (
            envoy_listener::Listener::decode(&http[..]).unwrap(),
            envoy_listener::Listener::decode(&rebound[..]).unwrap(),
        );
        let Some(core::address::Address::SocketAddress(s)) = after.address.as_ref().unwrap().address.as_ref() else {
            panic!()
        };
        assert_eq!(s.address, "127.0.0.9");
        assert_eq!(s.port_specifier, Some(core::socket_address::PortSpecifier::PortValue(9080)));
        assert_eq!(after.name, "0.0.0.0_9080");
        assert_eq!(after.filter_chains, before.filter_chains);
        assert_eq!(rebound, listener(9080, Some(bind)), "the same as building it for the address");

        let tcp = listener::tcp_listener(
            "10.96.0.7_9000",
            "0.0.0.0".parse().unwrap(),
            9000,
            &listener::TcpTarget::Cluster("c".into()),
        );
        let (port, rebound) = rebind_listener(&tcp, "::1".parse().unwrap()).unwrap();
        let after = envoy_listener::Listener::decode(&rebound[..]).unwrap();
        assert_eq!((port, after.name.as_str()), (9000, "10.96.0.7_9000"));
        let Some(core::address::Address::SocketAddress(s)) = after.address.unwrap().address else { panic!() };
        assert_eq!(s.address, "::1");
        assert_eq!(rebind_listener(b"\xff\xff", bind), None, "not a listener");
        assert_eq!(rebind_listener(&envoy_listener::Listener::default().encode_to_vec(), bind), None, "no address");
    }

    /// A TCP service port with target port 8080, for builder tests.
    pub(crate) fn row(ns: &str, name: &str, port_name: &str, port: u16) -> ServicePortRow {
        ServicePortRow {
            namespace: ns.into(),
            service: name.into(),
            port: ServicePort {
                name: port_name.into(),
                port,
                protocol: Protocol::Tcp,
                target_port: TargetPort::Number(8080),
                app_protocol: None,
            },
            cluster_ip: None,
            headless: false,
            entry: None,
            export_to: Vec::new(),
        }
    }

    #[test]
    fn port_protocol_follows_app_protocol_then_the_name_prefix() {
        let mut r = row("default", "a", "http-web", 80);
        assert_eq!(r.protocol(), PortProtocol::Http);
        r.port.name = "grpc".into();
        assert_eq!(r.protocol(), PortProtocol::Grpc);
        r.port.name = "tcp-db".into();
        assert_eq!(r.protocol(), PortProtocol::Tcp);
        r.port.name = "metrics".into();
        assert_eq!(r.protocol(), PortProtocol::Unknown);
        r.port.app_protocol = Some("http2".into());
        assert_eq!(r.protocol(), PortProtocol::Http2);
        r.port.protocol = Protocol::Udp;
        assert!(!r.protocol().is_proxied());
    }

    #[test]
    fn virtual_host_domains_end_with_the_cluster_ip_as_istiod_s() {
        let mut r = row("default", "reviews", "http", 9080);
        r.cluster_ip = Some("10.96.0.10".parse().unwrap());
        let v = virtual_host(&r, vec![]);
        assert_eq!(&v.domains[v.domains.len() - 2..], ["10.96.0.10", "10.96.0.10:9080"]);
        assert!(v.domains.contains(&"reviews".to_string()));
        r.cluster_ip = Some("fd00::a".parse().unwrap());
        let v = virtual_host(&r, vec![]);
        assert_eq!(&v.domains[v.domains.len() - 2..], ["[fd00::a]", "[fd00::a]:9080"], "IPv6 in brackets");
        r.cluster_ip = None;
        assert_eq!(virtual_host(&r, vec![]).domains.len(), 8, "headless: names only");
    }

    #[test]
    fn assembled_route_config_decodes_with_every_virtual_host_and_no_ambiguous_domain() {
        let (ra, rb) = (row("default", "reviews", "http", 9080), row("shop", "reviews", "http", 9080));
        let a = virtual_host(&ra, vec![route::default_route(&ra, vec![])]);
        let b = virtual_host(&rb, vec![route::default_route(&rb, vec![])]);
        let bytes = route_configuration("9080", [&b, &a]);
        let rc = envoy_route::RouteConfiguration::decode(&bytes[..]).unwrap();
        assert_eq!(rc.name, "9080");
        let names: Vec<&str> = rc.virtual_hosts.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["reviews.default.svc.cluster.local:9080", "reviews.shop.svc.cluster.local:9080"]);
        let first = &rc.virtual_hosts[0];
        assert_eq!(
            first.domains,
            [
                "reviews.default",
                "reviews.default:9080",
                "reviews.default.svc",
                "reviews.default.svc:9080",
                "reviews.default.svc.cluster.local",
                "reviews.default.svc.cluster.local:9080"
            ],
            "the short name `reviews` is claimed by both and left out"
        );
        let route = &first.routes[0];
        assert_eq!(
            route.r#match.as_ref().unwrap().path_specifier,
            Some(envoy_route::route_match::PathSpecifier::Prefix("/".into()))
        );
        let Some(envoy_route::route::Action::Route(action)) = &route.action else { panic!("{route:?}") };
        assert_eq!(
            action.cluster_specifier,
            Some(envoy_route::route_action::ClusterSpecifier::Cluster(
                "outbound|9080||reviews.default.svc.cluster.local".into()
            ))
        );
        assert_eq!(action.timeout, Some(seconds(0)), "istiod disables Envoy's 15 s default route timeout");
        assert_eq!(action.retry_policy.as_ref().unwrap().num_retries, Some(UInt32Value { value: 2 }));
        // A single service keeps its short name.
        let single = envoy_route::RouteConfiguration::decode(&route_configuration("9080", [&a])[..]).unwrap();
        assert_eq!(single.virtual_hosts[0].domains[..2], ["reviews", "reviews:9080"]);
    }

    #[test]
    fn listener_binds_the_proxy_address_when_given_and_uses_rds_by_port() {
        let l = envoy_listener::Listener::decode(&listener(9080, Some("127.0.0.7".parse().unwrap()))[..]).unwrap();
        assert_eq!(l.name, "0.0.0.0_9080");
        let Some(core::address::Address::SocketAddress(sa)) = l.address.unwrap().address else { panic!() };
        assert_eq!(
            (sa.address.as_str(), sa.port_specifier),
            ("127.0.0.7", Some(core::socket_address::PortSpecifier::PortValue(9080)))
        );
        let Some(envoy_listener::filter::ConfigType::TypedConfig(any)) = &l.filter_chains[0].filters[0].config_type
        else {
            panic!()
        };
        let manager = hcm::HttpConnectionManager::decode(&any.value[..]).unwrap();
        let Some(hcm::http_connection_manager::RouteSpecifier::Rds(rds)) = manager.route_specifier else { panic!() };
        assert_eq!(rds.route_config_name, "9080");
        // Per-route fault and CORS configs need their filters, before the router (istiod's order).
        let filters: Vec<(&str, &str)> = manager
            .http_filters
            .iter()
            .map(|f| match &f.config_type {
                Some(hcm::http_filter::ConfigType::TypedConfig(any)) => (f.name.as_str(), any.type_url.as_str()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            filters,
            [
                ("envoy.filters.http.fault", "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"),
                ("envoy.filters.http.cors", "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"),
                ("envoy.filters.http.router", "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"),
            ]
        );
    }

    proptest::proptest! {
        /// The direct encoder writes what prost writes for the message, byte for byte: over
        /// localities with one to three parts (and none), weights (0 and past u32 in sum),
        /// ports (0 too) and IPv4 and IPv6 addresses.
        #[test]
        fn load_assignment_bytes_equal_the_encoded_message(
            name in "[a-z|.0-9]{0,40}",
            eps in proptest::collection::vec(
                (0u8..=255, 0u16..=65535, proptest::sample::select(vec![0u32, 1, 3, 200, u32::MAX]),
                 proptest::sample::select(vec!["", "r", "r/z", "r/z/s", "region-1/zone-a", "a//c", "r/z/s/x"]),
                 proptest::bool::ANY),
                0..12),
        ) {
            let mut addrs: Vec<EndpointAddr> = eps
                .into_iter()
                .map(|(ip, port, weight, locality, v6)| EndpointAddr {
                    ip: if v6 { format!("fd00::{ip:x}") } else { format!("10.1.{ip}.{}", ip / 3) }.into(),
                    port,
                    weight,
                    locality: locality.into(),
                })
                .collect();
            addrs.sort();
            addrs.dedup();
            let refs: Vec<&EndpointAddr> = addrs.iter().collect();
            proptest::prop_assert_eq!(load_assignment(&name, &refs), load_assignment_message(&name, &refs).encode_to_vec());
        }
    }

    #[test]
    fn load_assignment_lists_each_endpoint_once_as_healthy() {
        let a = EndpointAddr::new("10.0.0.1", 8080);
        let b = EndpointAddr::new("10.0.0.2", 8080);
        let cla = envoy_endpoint::ClusterLoadAssignment::decode(&load_assignment("c", &[&a, &b])[..]).unwrap();
        assert_eq!(cla.cluster_name, "c");
        assert_eq!(cla.endpoints.len(), 1);
        assert_eq!(cla.endpoints[0].lb_endpoints.len(), 2);
        // gRPC demands a locality message and a non-zero weight on every LocalityLbEndpoints.
        assert_eq!(cla.endpoints[0].locality, Some(core::Locality::default()));
        assert_eq!(cla.endpoints[0].load_balancing_weight, Some(UInt32Value { value: 2 }));
        assert!(cla.endpoints[0].lb_endpoints.iter().all(|e| e.health_status == core::HealthStatus::Healthy as i32));
        let empty = envoy_endpoint::ClusterLoadAssignment::decode(&load_assignment("c", &[])[..]).unwrap();
        assert!(empty.endpoints.is_empty());
    }
}
