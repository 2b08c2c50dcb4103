//! A gateway proxy's listeners and route configurations, as istiod builds them for a router
//! (`pilot/pkg/model/gateway.go` `mergeGateways`, `pilot/pkg/networking/core/gateway.go`
//! `buildGatewayListeners`, `buildGatewayHTTPRouteConfig`, `createGatewayTCPFilterChainOpts`,
//! `listener.go` `buildGatewayListener`, `BuildListenerTLSContext` and
//! `pilot/pkg/security/model/authentication.go` `ApplyCredentialSDSToServerCommonTLSContext`).
//!
//! Pure, like the rest of [`crate::translate`]: the caller hands over the Gateways whose
//! `selector` matched one proxy class and the VirtualServices that may bind to them (each with
//! what is known of its destinations); [`gateway_resources`] decides binding, merging and what
//! the resources become.
//!
//! What istiod does that is left out (each reported as a [`Diagnostic`] where it applies):
//! - `bind` (istiod: a listener `<bind>_<port>` bound to that address): served on the proxy's
//!   one listener per port;
//! - TLS modes AUTO_PASSTHROUGH and ISTIO_MUTUAL: the server is left out;
//! - port translation (istiod maps a server port to the target port of the gateway workload's
//!   Service): meshflow's gateway proxies bind the server port itself;
//! - `exportTo` of VirtualServices (the caller passes only those visible to the proxy).

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::listener::v3 as listener;
use envoy_types::pb::envoy::config::route::v3 as envoy_route;
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::Cors;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;
use envoy_types::pb::google::protobuf::{BoolValue, Duration, UInt32Value};
use envoy_types::util::pack_any;
use prost::Message;

use super::listener::{route_target, tcp_proxy, tls_inspector, transport_socket_connect_timeout};
use super::outbound::{DestinationMap, config_host, virtual_service_destinations};
use super::route::{self, Destinations, RouteScope, http_routes_in, is_catch_all};
use super::{Diagnostic, ResourceType, socket_address};
use crate::model::ObjectKey;
use crate::model::istio::{Gateway, Server, ServerTlsMode, ServerTlsSettings, TlsProtocolVersion, VirtualService};

/// The SDS resource name prefix of a Kubernetes Secret (istiod's `credentials.KubernetesSecretTypeURI`).
pub const KUBERNETES_SECRET_PREFIX: &str = "kubernetes://";
/// The suffix istiod appends to a credential's SDS name for its CA (`credentials.SdsCaSuffix`).
pub const SDS_CA_SUFFIX: &str = "-cacert";
/// The ALPN a terminating gateway chain offers (istiod's `util.ALPNHttp`).
const ALPN_HTTP: [&str; 2] = ["h2", "http/1.1"];
/// istiod's `DefaultMaxDirectResponseBodySizeBytes`.
const MAX_DIRECT_RESPONSE_BODY: u32 = 1024 * 1024;
/// The `server` header a gateway writes (istiod's `EnvoyServerName`).
const GATEWAY_SERVER_NAME: &str = "istio-envoy";
const HTTP_CONNECTION_MANAGER: &str = "envoy.filters.network.http_connection_manager";
const TLS_TRANSPORT_SOCKET: &str = "envoy.transport_sockets.tls";

/// A Secret an SDS name stands for: the gateway proxy asks for `sds_name`, served from the
/// Secret `namespace/name` ([`crate::translate::secret::sds_secret`]). For a CA (`ca`), istiod
/// reads `<name>-cacert` and, when that Secret does not exist, the Secret without the suffix
/// ([`SecretRef::ca_fallback`]).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct SecretRef {
    pub sds_name: String,
    pub namespace: String,
    pub name: String,
    pub ca: bool,
}

impl SecretRef {
    /// For a CA: the Secret to read when `name` does not exist (istiod's `GetCaCert`).
    pub fn ca_fallback(&self) -> Option<&str> {
        if self.ca { self.name.strip_suffix(SDS_CA_SUFFIX) } else { None }
    }

    /// The SDS resource of a `credentialName` (istiod's `credentials.ToResourceName` and
    /// `ParseResourceName`): `kubernetes://<name>`, the Secret in `namespace` (the gateway's);
    /// `kubernetes://<ns>/<name>` names the namespace. None for another scheme.
    pub fn of_credential(credential: &str, namespace: &str, ca: bool) -> Option<SecretRef> {
        let sds_name = if credential.contains("://") {
            credential.to_string()
        } else {
            format!("{KUBERNETES_SECRET_PREFIX}{credential}")
        };
        let rest = sds_name.strip_prefix(KUBERNETES_SECRET_PREFIX)?;
        let (ns, name) = match rest.split_once('/') {
            Some((ns, name)) => (ns.to_string(), name.to_string()),
            None => (namespace.to_string(), rest.to_string()),
        };
        Some(SecretRef { sds_name, namespace: ns, name, ca })
    }
}

/// What one proxy class's gateways become.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GatewayOutput {
    /// Listeners `0.0.0.0_<port>` and route configs `http.<port>` /
    /// `https.<port>.<port name>.<gateway>.<namespace>`, sorted by type and name.
    pub resources: Vec<(ResourceType, String, Vec<u8>)>,
    /// The SDS secrets the listeners name, to be served to this proxy over ADS.
    pub secrets: BTreeSet<SecretRef>,
    /// The destination hosts (FQDNs) of the VirtualServices in use: the proxy needs their clusters.
    pub destinations: BTreeSet<String>,
    pub diagnostics: Vec<Diagnostic>,
}

/// istiod's `resolveGatewayName`: `ns/name` as is (`./name` in `namespace`), a bare name in
/// `namespace`, and the legacy `name.ns.svc.cluster.local` (or `name.ns`) as `ns/name`.
pub fn resolve_gateway_name(gateway: &str, namespace: &str) -> String {
    if let Some((ns, name)) = gateway.split_once('/') {
        return if ns == "." { format!("{namespace}/{name}") } else { gateway.to_string() };
    }
    match gateway.split_once('.') {
        None => format!("{namespace}/{gateway}"),
        Some((name, rest)) => format!("{}/{name}", rest.split('.').next().unwrap_or_default()),
    }
}

/// Whether a VirtualService binds to the gateway `ns/name` (its `gateways`, resolved).
pub fn binds_to(vs: &VirtualService, gateway_key: &str) -> bool {
    vs.spec.gateways.iter().any(|g| g != route::MESH_GATEWAY && resolve_gateway_name(g, &vs.namespace) == gateway_key)
}

/// The gateways (`ns/name`) a VirtualService binds to: the keys on which the dataflow can join
/// VirtualServices with Gateways.
pub fn bound_gateways(vs: &VirtualService) -> BTreeSet<String> {
    vs.spec
        .gateways
        .iter()
        .filter(|g| *g != route::MESH_GATEWAY)
        .map(|g| resolve_gateway_name(g, &vs.namespace))
        .collect()
}

// === protocols ===

/// istiod's `protocol.Parse` of a server port, reduced to the classes that decide a gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    /// HTTP, HTTP2, GRPC, GRPC-WEB.
    Http,
    Https,
    /// TCP, MONGO, REDIS, MYSQL.
    Tcp,
    Tls,
    Unsupported,
}

fn proto(p: &str) -> Proto {
    match p.to_ascii_uppercase().as_str() {
        "HTTP" | "HTTP2" | "GRPC" | "GRPC-WEB" => Proto::Http,
        "HTTPS" => Proto::Https,
        "TCP" | "MONGO" | "REDIS" | "MYSQL" => Proto::Tcp,
        "TLS" => Proto::Tls,
        _ => Proto::Unsupported,
    }
}

fn is_passthrough(s: &Server) -> bool {
    s.tls
        .as_ref()
        .is_some_and(|t| matches!(t.effective_mode(), ServerTlsMode::Passthrough | ServerTlsMode::AutoPassthrough))
}

/// `gateway.IsTLSServer`: TLS settings on a non-HTTP port.
fn is_tls_server(s: &Server) -> bool {
    s.tls.is_some() && proto(&s.port.protocol) != Proto::Http
}

/// `gateway.IsHTTPServer`: plain HTTP, or HTTPS that terminates.
fn is_http_server(s: &Server) -> bool {
    match proto(&s.port.protocol) {
        Proto::Http => true,
        Proto::Https => !is_passthrough(s),
        _ => false,
    }
}

/// `gateway.IsHTTPSServerWithTLSTermination`.
fn is_https_terminating(s: &Server) -> bool {
    s.tls.is_some() && proto(&s.port.protocol) == Proto::Https && !is_passthrough(s)
}

/// istiod's `gatewayRDSRouteName`; empty for servers without HTTP routes.
fn rds_name(s: &Server, port: u16, gw: &Gateway) -> String {
    match proto(&s.port.protocol) {
        Proto::Http => format!("http.{port}"),
        Proto::Https if !is_passthrough(s) => format!("https.{port}.{}.{}.{}", s.port.name, gw.name, gw.namespace),
        _ => String::new(),
    }
}

// === hosts ===

/// istiod's `sanitizeServerHostNamespace`: `./h` → `<ns>/h`, `*/h` → `h`, `*/*` → only `*`.
fn sanitize_hosts(hosts: &[String], namespace: &str) -> Vec<String> {
    let mut out = Vec::with_capacity(hosts.len());
    for h in hosts {
        match h.split_once('/') {
            Some((".", rest)) => out.push(format!("{namespace}/{rest}")),
            Some(("*", "*")) => return vec!["*".to_string()],
            Some(("*", rest)) => out.push(rest.to_string()),
            _ => out.push(h.clone()),
        }
    }
    out
}

fn wildcard(h: &str) -> bool {
    h.starts_with('*')
}

/// Istio's `host.Name.Matches` (symmetric wildcard match).
fn host_matches(a: &str, b: &str) -> bool {
    match (wildcard(a), wildcard(b)) {
        (true, true) => {
            if a.len() < b.len() {
                b[1..].ends_with(&a[1..])
            } else {
                a[1..].ends_with(&b[1..])
            }
        }
        (true, false) => b.ends_with(&a[1..]),
        (false, true) => a.ends_with(&b[1..]),
        (false, false) => a == b,
    }
}

/// Istio's `host.Name.SubsetOf`: `a` is covered by `b`.
fn host_subset_of(a: &str, b: &str) -> bool {
    match (wildcard(a), wildcard(b)) {
        (true, true) => a.len() >= b.len() && a[1..].ends_with(&b[1..]),
        (true, false) => false,
        (false, true) => a.ends_with(&b[1..]),
        (false, false) => a == b,
    }
}

/// istiod's `host.NamesForNamespace`: the server hosts visible in `namespace`, without prefix.
fn names_for_namespace<'a>(hosts: &'a [String], namespace: &str) -> Vec<&'a str> {
    hosts
        .iter()
        .filter_map(|h| match h.split_once('/') {
            Some((ns, name)) => (ns == namespace || ns == "*").then_some(name),
            None => Some(h.as_str()),
        })
        .collect()
}

/// istiod's `Names.Intersection` of server hosts and VirtualService hosts: for each pair, the
/// more specific one, in order, without duplicates.
fn intersection(server: &[&str], vs: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in server {
        for v in vs {
            let pick = if host_subset_of(s, v) {
                Some(*s)
            } else if host_subset_of(v, s) {
                Some(v.as_str())
            } else {
                None
            };
            if let Some(p) = pick
                && !out.iter().any(|o| o == p)
            {
                out.push(p.to_string());
            }
        }
    }
    out
}

/// istiod's `pickMatchingGatewayHosts` is non-empty: some VirtualService host matches some
/// server host (a `ns/` server host only for VirtualServices of that namespace).
fn any_host_matches(server_hosts: &[String], vs: &VirtualService) -> bool {
    vs.spec.hosts.iter().any(|vh| {
        let vh = config_host(vh, &vs.namespace);
        server_hosts.iter().any(|gh| {
            let gh = match gh.split_once('/') {
                Some((ns, name)) if ns == vs.namespace => name,
                Some(_) => return false,
                None => gh.as_str(),
            };
            host_matches(&gh.to_ascii_lowercase(), &vh)
        })
    })
}

/// istiod's `GetSNIHostsForServer`: the hosts without namespace, sorted, without duplicates.
fn sni_hosts(s: &Server) -> Vec<String> {
    let set: BTreeSet<String> =
        s.hosts.iter().map(|h| h.split_once('/').map_or(h.as_str(), |(_, n)| n).to_string()).collect();
    set.into_iter().collect()
}

// === merging ===

/// One server of one gateway, hosts sanitized.
struct Srv<'a> {
    gw: usize,
    index: usize,
    gateway: &'a Gateway,
    /// `ns/name` of its gateway.
    key: String,
    server: Server,
    port: u16,
}

impl Srv<'_> {
    fn diagnostic(&self, field: &str, message: impl Into<String>) -> Diagnostic {
        let field = if field.is_empty() {
            format!("spec.servers[{}]", self.index)
        } else {
            format!("spec.servers[{}].{field}", self.index)
        };
        Diagnostic { object: self.gateway.object_key(), field, message: message.into() }
    }
}

/// istiod's `ServerPort` and `MergedServers`: servers that share a port and protocol.
struct Merged {
    port: u16,
    protocol: String,
    servers: Vec<usize>,
    route_name: String,
}

struct MergedGateway<'a> {
    servers: Vec<Srv<'a>>,
    ports: Vec<Merged>,
    by_route: BTreeMap<String, Vec<usize>>,
}

/// istiod's `mergeGateways` (all servers with the same bind), with the servers it skips
/// reported.
fn merge<'a>(gateways: &[&'a Gateway], diagnostics: &mut Vec<Diagnostic>) -> MergedGateway<'a> {
    let mut out = MergedGateway { servers: Vec::new(), ports: Vec::new(), by_route: BTreeMap::new() };
    let mut seen_ports: BTreeSet<u16> = BTreeSet::new();
    // port → index of its plain-text entry in `out.ports`
    let mut plain: BTreeMap<u16, usize> = BTreeMap::new();
    let mut tls_hosts: BTreeMap<u16, BTreeSet<String>> = BTreeMap::new();
    for (gw, gateway) in gateways.iter().enumerate() {
        let key = format!("{}/{}", gateway.namespace, gateway.name);
        for (index, server) in gateway.spec.servers.iter().enumerate() {
            let mut server = server.clone();
            server.hosts = sanitize_hosts(&server.hosts, &gateway.namespace);
            let Ok(port) = u16::try_from(server.port.number) else { continue };
            let s = Srv { gw, index, gateway, key: key.clone(), server, port };
            if s.server.bind.as_deref().is_some_and(|b| !b.is_empty()) {
                diagnostics.push(s.diagnostic(
                    "bind",
                    "not supported yet: the server is served on the proxy's listener of its port, not on this address",
                ));
            }
            let p = proto(&s.server.port.protocol);
            if p == Proto::Unsupported {
                diagnostics.push(s.diagnostic(
                    "port.protocol",
                    format!("protocol {:?} is not served by gateways: the server is left out", s.server.port.protocol),
                ));
                continue;
            }
            if let Some(t) = &s.server.tls
                && p != Proto::Http
            {
                let mode = t.effective_mode();
                if matches!(mode, ServerTlsMode::AutoPassthrough | ServerTlsMode::IstioMutual) {
                    diagnostics.push(
                        s.diagnostic("tls.mode", format!("{mode:?} is not supported yet: the server is left out")),
                    );
                    continue;
                }
            }
            let route_name = rds_name(&s.server, port, gateway);
            if s.server.tls.is_some() {
                let known = tls_hosts.entry(port).or_default();
                let duplicates: Vec<&String> = s.server.hosts.iter().filter(|h| known.contains(*h)).collect();
                if !duplicates.is_empty() {
                    let message = format!(
                        "host(s) {duplicates:?} already served with TLS on port {port} by an earlier server: this server \
                         is left out (istiod skips it)"
                    );
                    diagnostics.push(s.diagnostic("hosts", message));
                    continue;
                }
                known.extend(s.server.hosts.iter().cloned());
            }
            let id = out.servers.len();
            let add_new = |out: &mut MergedGateway<'a>, plain: &mut BTreeMap<u16, usize>, s: &Srv<'a>| {
                if !is_tls_server(&s.server) {
                    plain.insert(port, out.ports.len());
                }
                if is_http_server(&s.server) {
                    out.by_route.insert(route_name.clone(), vec![id]);
                }
                out.ports.push(Merged {
                    port,
                    protocol: s.server.port.protocol.clone(),
                    servers: vec![id],
                    route_name: route_name.clone(),
                });
            };
            if !seen_ports.insert(port) {
                if let Some(&current) = plain.get(&port) {
                    let current_proto = proto(&out.ports[current].protocol);
                    if !(current_proto == Proto::Http && p == Proto::Http) {
                        let message = format!(
                            "port {port} already has a {} server: a {} server cannot share it (istiod skips it)",
                            out.ports[current].protocol, s.server.port.protocol
                        );
                        diagnostics.push(s.diagnostic("port", message));
                        continue;
                    }
                    out.ports[current].servers.push(id);
                    out.by_route.entry(route_name.clone()).or_default().push(id);
                } else {
                    if !is_tls_server(&s.server) {
                        add_new(&mut out, &mut plain, &s);
                        out.servers.push(s);
                        continue;
                    }
                    if is_http_server(&s.server) {
                        if out.by_route.contains_key(&route_name) {
                            let message = format!(
                                "route config {route_name} already exists: HTTPS servers on one port need distinct port \
                                 names (istiod skips this one)"
                            );
                            diagnostics.push(s.diagnostic("port.name", message));
                            continue;
                        }
                        out.by_route.insert(route_name.clone(), vec![id]);
                    }
                    let existing =
                        out.ports.iter_mut().find(|m| m.port == port && m.protocol == s.server.port.protocol);
                    match existing {
                        Some(m) => m.servers.push(id),
                        None => out.ports.push(Merged {
                            port,
                            protocol: s.server.port.protocol.clone(),
                            servers: vec![id],
                            route_name: route_name.clone(),
                        }),
                    }
                }
            } else {
                add_new(&mut out, &mut plain, &s);
            }
            out.servers.push(s);
        }
    }
    out
}

// === the builder ===

/// The listeners and route configs of a gateway proxy whose class the `gateways` select (in the
/// order istiod merges them: the caller sorts them, e.g. by creation time then name), and the
/// VirtualServices that may bind to them (each with what is known of its destination hosts;
/// those not bound to any of the gateways are ignored).
pub fn gateway_resources(
    gateways: &[&Gateway],
    virtual_services: &[(&VirtualService, &DestinationMap)],
) -> GatewayOutput {
    let mut out = GatewayOutput::default();
    let merged = merge(gateways, &mut out.diagnostics);
    // VirtualServices in istiod's order (oldest first, then name, then namespace).
    let mut vss: Vec<(&VirtualService, &DestinationMap)> = virtual_services.to_vec();
    vss.sort_by(|a, b| {
        (&a.0.creation_timestamp, &a.0.name, &a.0.namespace).cmp(&(&b.0.creation_timestamp, &b.0.name, &b.0.namespace))
    });
    vss.dedup_by(|a, b| a.0.namespace == b.0.namespace && a.0.name == b.0.name);
    let bound: Vec<Vec<usize>> = gateways
        .iter()
        .map(|g| {
            let key = format!("{}/{}", g.namespace, g.name);
            (0..vss.len()).filter(|&i| binds_to(vss[i].0, &key)).collect()
        })
        .collect();
    let mut used_vs: BTreeSet<usize> = BTreeSet::new();
    let mut reported: BTreeSet<usize> = BTreeSet::new();
    for &vi in bound.iter().flatten() {
        if reported.insert(vi) {
            out.diagnostics.extend(untranslated_for_gateways(vss[vi].0));
        }
    }

    // Route configs.
    for (route_name, servers) in &merged.by_route {
        let rc = route_config(route_name, servers, &merged, &vss, &bound, &mut used_vs);
        out.resources.push((ResourceType::RouteConfiguration, route_name.clone(), rc));
    }

    // Listeners: one per port, chains of every merged entry of the port.
    let mut chains_by_port: BTreeMap<u16, Vec<Chain>> = BTreeMap::new();
    // SNI hosts of the PASSTHROUGH chains of each port (istiod's `tlsHostsByPort` of
    // `buildGatewayListeners`): a repeated one is skipped.
    let mut passthrough_sni: BTreeMap<u16, BTreeSet<String>> = BTreeMap::new();
    for m in &merged.ports {
        let chains = chains_by_port.entry(m.port).or_default();
        if proto(&m.protocol) == Proto::Http {
            // istiod (`MutableGatewayListener.build`): a chain without a stat prefix of its own
            // gets `<traffic direction>_<listener name>`, `outbound_0.0.0.0_<port>`.
            chains.push(Chain {
                sni: Vec::new(),
                tls: None,
                filter: http_manager(&format!("outbound_{}", super::listener_name(m.port)), &m.route_name),
            });
            continue;
        }
        for &id in &m.servers {
            let s = &merged.servers[id];
            if is_https_terminating(&s.server) {
                let tls = downstream_tls(s, &mut out);
                let stat_prefix = s.server.name.clone().filter(|n| !n.is_empty());
                let stat_prefix = stat_prefix.unwrap_or_else(|| format!("outbound_{}", super::listener_name(m.port)));
                let route_name = rds_name(&s.server, s.port, s.gateway);
                chains.push(Chain { sni: sni_hosts(&s.server), tls, filter: http_manager(&stat_prefix, &route_name) });
            } else {
                let before = chains.len();
                tcp_chains(
                    s,
                    &vss,
                    &bound[s.gw],
                    chains,
                    &mut used_vs,
                    passthrough_sni.entry(m.port).or_default(),
                    &mut out,
                );
                if chains.len() == before {
                    let what = if is_passthrough(&s.server) { "tls" } else { "tcp" };
                    out.diagnostics.push(s.diagnostic(
                        "",
                        format!(
                            "no VirtualService bound to {} has a `{what}` route for this server's hosts and port: it \
                             gets no filter chain",
                            s.key
                        ),
                    ));
                }
            }
        }
    }
    for (port, chains) in chains_by_port {
        if let Some(bytes) = gateway_listener(port, chains, &mut out.diagnostics, gateways) {
            out.resources.push((ResourceType::Listener, super::listener_name(port), bytes));
        }
    }
    for i in used_vs {
        out.destinations.extend(virtual_service_destinations(vss[i].0));
    }
    out.resources.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    out.diagnostics.sort();
    out.diagnostics.dedup();
    out
}

/// Valid fields of a gateway-bound VirtualService that gateways do not translate yet: JWT claim
/// matches (istiod matches them on the metadata of its `jwt_authn` filter, which meshflow's
/// gateways do not run): the match block is left out.
fn untranslated_for_gateways(vs: &VirtualService) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for (i, http) in vs.spec.http.iter().enumerate() {
        for (j, m) in http.r#match.iter().enumerate() {
            let claim = |n: &&String| n.to_ascii_lowercase().starts_with("@request.auth.claims");
            for name in m.headers.keys().filter(claim) {
                out.push(Diagnostic {
                    object: vs.object_key(),
                    field: format!("spec.http[{i}].match[{j}].headers[{name}]"),
                    message: "JWT claim matches are not supported yet (gateways run no jwt_authn filter): the match \
                              block is left out"
                        .to_string(),
                });
            }
            for name in m.without_headers.keys().filter(claim) {
                out.push(Diagnostic {
                    object: vs.object_key(),
                    field: format!("spec.http[{i}].match[{j}].withoutHeaders[{name}]"),
                    message: "JWT claim matches are not supported yet (gateways run no jwt_authn filter): this \
                              condition is ignored"
                        .to_string(),
                });
            }
        }
    }
    out
}

/// istiod's `buildGatewayHTTPRouteConfig` for one route name.
fn route_config(
    route_name: &str,
    servers: &[usize],
    merged: &MergedGateway<'_>,
    vss: &[(&VirtualService, &DestinationMap)],
    bound: &[Vec<usize>],
    used_vs: &mut BTreeSet<usize>,
) -> Vec<u8> {
    struct VHost {
        port: u16,
        /// Chunks of routes, by (gateway, VirtualService): routes of one chunk are shared, as
        /// istiod shares route pointers (which its virtual host collapsing compares).
        chunks: Vec<(usize, usize)>,
        require_tls: bool,
    }
    let mut chunks: BTreeMap<(usize, usize), Vec<envoy_route::Route>> = BTreeMap::new();
    let mut vhosts: BTreeMap<String, VHost> = BTreeMap::new();
    for &id in servers {
        let s = &merged.servers[id];
        let redirect = s.server.tls.as_ref().is_some_and(|t| t.https_redirect);
        for &vi in &bound[s.gw] {
            let (vs, dest) = vss[vi];
            let vs_hosts: Vec<String> = vs.spec.hosts.iter().map(|h| config_host(h, &vs.namespace)).collect();
            let server_hosts = names_for_namespace(&s.server.hosts, &vs.namespace);
            let hosts = intersection(&server_hosts, &vs_hosts);
            if hosts.is_empty() {
                continue;
            }
            let key = (s.gw, vi);
            let routes = chunks.entry(key).or_insert_with(|| {
                let scope = RouteScope::Gateway { name: &s.key, tls: s.server.tls.is_some() };
                http_routes_in(vs, s.port, dest as &dyn Destinations, scope)
            });
            if routes.is_empty() {
                continue;
            }
            used_vs.insert(vi);
            for h in hosts {
                let h = h.to_ascii_lowercase();
                let v = vhosts.entry(h).or_insert(VHost { port: s.port, chunks: Vec::new(), require_tls: false });
                v.chunks.push(key);
                v.require_tls |= redirect;
            }
        }
        if redirect {
            for h in &s.server.hosts {
                // istiod looks the sanitized host up as written (`ns/host` included); the
                // namespace is not part of a domain, so it is dropped here.
                let h = h.split_once('/').map_or(h.as_str(), |(_, n)| n).to_ascii_lowercase();
                let v = vhosts.entry(h).or_insert(VHost { port: s.port, chunks: Vec::new(), require_tls: false });
                v.require_tls = true;
            }
        }
    }
    let mut rc = envoy_route::RouteConfiguration {
        name: route_name.to_string(),
        validate_clusters: Some(BoolValue { value: false }),
        ignore_port_in_host_matching: true,
        max_direct_response_body_size_bytes: Some(UInt32Value { value: MAX_DIRECT_RESPONSE_BODY }),
        ..Default::default()
    };
    let mut bodies: Vec<(envoy_route::VirtualHost, Vec<&envoy_route::Route>)> = Vec::new();
    if vhosts.is_empty() {
        let port = servers.first().map(|&id| merged.servers[id].port).unwrap_or_default();
        bodies.push((
            envoy_route::VirtualHost {
                name: domain_name("blackhole", port),
                domains: vec!["*".to_string()],
                ..Default::default()
            },
            Vec::new(),
        ));
    } else {
        // istiod's `collapseDuplicateRoutes`: hosts with the very same routes (and TLS
        // requirement) share the virtual host of the first one in host order.
        let mut collapsed: Vec<(String, &VHost, Vec<String>)> = Vec::new();
        for (host, v) in &vhosts {
            match collapsed.iter_mut().find(|(_, o, _)| o.chunks == v.chunks && o.require_tls == v.require_tls) {
                Some((_, _, domains)) => domains.push(host.clone()),
                None => collapsed.push((host.clone(), v, vec![host.clone()])),
            }
        }
        for (host, v, domains) in collapsed {
            let all: Vec<&envoy_route::Route> = v.chunks.iter().flat_map(|c| chunks[c].iter()).collect();
            // istiod's `SortVHostRoutes`: catch-all routes last, order otherwise kept.
            let (rest, catch_all): (Vec<_>, Vec<_>) = all.into_iter().partition(|r| !is_catch_all(r));
            let routes = rest.into_iter().chain(catch_all).collect();
            let vh = envoy_route::VirtualHost {
                name: domain_name(&host, v.port),
                domains,
                include_request_attempt_count: true,
                require_tls: if v.require_tls { envoy_route::virtual_host::TlsRequirementType::All as i32 } else { 0 },
                ..Default::default()
            };
            bodies.push((vh, routes));
        }
        bodies.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    }
    rc.virtual_hosts.clear();
    let mut out = rc.encode_to_vec();
    let mut vhost = Vec::new();
    let mut encoded = Vec::new();
    for (vh, routes) in bodies {
        vhost.clear();
        vh.encode(&mut vhost).expect("a Vec grows as needed");
        for r in routes {
            encoded.clear();
            route::encode_route(r, &mut encoded);
            prost::encoding::encode_key(3, prost::encoding::WireType::LengthDelimited, &mut vhost);
            prost::encoding::encode_varint(encoded.len() as u64, &mut vhost);
            vhost.extend_from_slice(&encoded);
        }
        prost::encoding::encode_key(2, prost::encoding::WireType::LengthDelimited, &mut out);
        prost::encoding::encode_varint(vhost.len() as u64, &mut out);
        out.extend_from_slice(&vhost);
    }
    out
}

/// istiod's `util.DomainName` (`net.JoinHostPort`).
fn domain_name(host: &str, port: u16) -> String {
    if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") }
}

/// One filter chain before the listener is assembled.
struct Chain {
    sni: Vec<String>,
    tls: Option<tls::DownstreamTlsContext>,
    filter: listener::Filter,
}

/// The TCP-proxy chains of a TCP/TLS server (`createGatewayTCPFilterChainOpts`): opaque TCP and
/// terminating TLS take the first `tcp` route of the first bound VirtualService whose hosts
/// match; PASSTHROUGH makes one SNI chain per matching `tls` match block.
fn tcp_chains(
    s: &Srv<'_>,
    vss: &[(&VirtualService, &DestinationMap)],
    bound: &[usize],
    chains: &mut Vec<Chain>,
    used_vs: &mut BTreeSet<usize>,
    claimed: &mut BTreeSet<String>,
    out: &mut GatewayOutput,
) {
    let server_port = u32::from(s.port);
    let l4 = |port: Option<u32>, gateways: &[String], ns: &str| {
        port.is_none_or(|p| p == 0 || p == server_port)
            && (gateways.is_empty() || gateways.iter().any(|g| resolve_gateway_name(g, ns) == s.key))
    };
    if !is_passthrough(&s.server) {
        for &vi in bound {
            let (vs, dest) = vss[vi];
            if !any_host_matches(&s.server.hosts, vs) {
                continue;
            }
            for tcp in &vs.spec.tcp {
                let matched =
                    tcp.r#match.is_empty() || tcp.r#match.iter().any(|m| l4(m.port, &m.gateways, &vs.namespace));
                if !matched || tcp.route.is_empty() {
                    continue;
                }
                let ports_of = |fqdn: &str| dest.ports(fqdn);
                let Some(target) = route_target(vs, &tcp.route, s.port, &ports_of) else { continue };
                used_vs.insert(vi);
                let (sni, tls) = if s.server.tls.is_some() {
                    (sni_hosts(&s.server), downstream_tls(s, out))
                } else {
                    (Vec::new(), None)
                };
                chains.push(Chain { sni, tls, filter: tcp_proxy(&target) });
                return;
            }
        }
        return;
    }
    for &vi in bound {
        let (vs, dest) = vss[vi];
        if !any_host_matches(&s.server.hosts, vs) {
            continue;
        }
        for (i, tls_route) in vs.spec.tls.iter().enumerate() {
            if tls_route.route.is_empty() {
                continue;
            }
            for (j, m) in tls_route.r#match.iter().enumerate() {
                if !l4(m.port, &m.gateways, &vs.namespace) {
                    continue;
                }
                let duplicates: Vec<&String> = m.sni_hosts.iter().filter(|h| claimed.contains(*h)).collect();
                if !duplicates.is_empty() {
                    out.diagnostics.push(Diagnostic {
                        object: vs.object_key(),
                        field: format!("spec.tls[{i}].match[{j}].sniHosts"),
                        message: format!(
                            "SNI host(s) {duplicates:?} already have a filter chain on port {} of {}: this match is \
                             left out (istiod skips it)",
                            s.port, s.key
                        ),
                    });
                    continue;
                }
                claimed.extend(m.sni_hosts.iter().cloned());
                let ports_of = |fqdn: &str| dest.ports(fqdn);
                let Some(target) = route_target(vs, &tls_route.route, s.port, &ports_of) else { continue };
                used_vs.insert(vi);
                chains.push(Chain { sni: m.sni_hosts.clone(), tls: None, filter: tcp_proxy(&target) });
            }
        }
    }
}

/// istiod's `buildGatewayListener` with its chains; None (reported) when no chain is left.
fn gateway_listener(
    port: u16,
    chains: Vec<Chain>,
    diagnostics: &mut Vec<Diagnostic>,
    gateways: &[&Gateway],
) -> Option<Vec<u8>> {
    let name = super::listener_name(port);
    let mut l = listener::Listener {
        name: name.clone(),
        address: Some(socket_address("0.0.0.0", port)),
        traffic_direction: core::TrafficDirection::Outbound as i32,
        max_connections_to_accept_per_socket_event: Some(UInt32Value { value: 1 }),
        ..Default::default()
    };
    let mut matches: Vec<Option<listener::FilterChainMatch>> = Vec::new();
    for c in chains {
        let match_all = c.sni.is_empty() || c.sni.iter().any(|h| h == "*");
        let m = (!match_all).then(|| {
            let mut server_names = c.sni.clone();
            server_names.sort();
            listener::FilterChainMatch { server_names, ..Default::default() }
        });
        if matches.contains(&m) {
            // Envoy rejects a listener with two equal filter chain matches.
            let object = gateways
                .first()
                .map(|g| g.object_key())
                .unwrap_or_else(|| ObjectKey::new(crate::model::Kind::Gateway, "", ""));
            diagnostics.push(Diagnostic {
                object,
                field: "spec.servers".to_string(),
                message: format!(
                    "two filter chains of listener {name} match the same server names {:?}: the later one is left out",
                    c.sni
                ),
            });
            continue;
        }
        matches.push(m.clone());
        let needs_inspector = !c.sni.is_empty()
            || c.tls
                .as_ref()
                .and_then(|t| t.common_tls_context.as_ref())
                .is_some_and(|ctx| !ctx.alpn_protocols.is_empty());
        if needs_inspector && l.listener_filters.is_empty() {
            l.listener_filters.push(tls_inspector());
        }
        l.filter_chains.push(listener::FilterChain {
            filter_chain_match: m,
            filters: vec![c.filter],
            transport_socket: c.tls.map(|ctx| core::TransportSocket {
                name: TLS_TRANSPORT_SOCKET.to_string(),
                config_type: Some(core::transport_socket::ConfigType::TypedConfig(pack_any(ctx))),
            }),
            transport_socket_connect_timeout: Some(transport_socket_connect_timeout()),
            ..Default::default()
        });
    }
    if l.filter_chains.is_empty() {
        return None;
    }
    Some(l.encode_to_vec())
}

/// The HTTP connection manager of a gateway chain (istiod's `buildGatewayConnectionManager` and
/// `buildHTTPConnectionManager` for the gateway class, default mesh config).
fn http_manager(stat_prefix: &str, route_name: &str) -> listener::Filter {
    use hcm::http_connection_manager as h;
    let filter = |name: &str, any| hcm::HttpFilter {
        name: name.to_string(),
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(any)),
        ..Default::default()
    };
    let manager = hcm::HttpConnectionManager {
        stat_prefix: stat_prefix.to_string(),
        codec_type: h::CodecType::Auto as i32,
        route_specifier: Some(h::RouteSpecifier::Rds(hcm::Rds {
            config_source: Some(core::ConfigSource {
                config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(
                    core::AggregatedConfigSource {},
                )),
                initial_fetch_timeout: Some(Duration { seconds: 0, nanos: 0 }),
                resource_api_version: core::ApiVersion::V3 as i32,
                ..Default::default()
            }),
            route_config_name: route_name.to_string(),
        })),
        http_filters: vec![
            filter(route::FAULT_FILTER, pack_any(HttpFault::default())),
            filter(route::CORS_FILTER, pack_any(Cors::default())),
            filter("envoy.filters.http.router", pack_any(Router::default())),
        ],
        use_remote_address: Some(BoolValue { value: true }),
        // istiod's `GetProxyHeadersFromProxyConfig` for the gateway class: `istio-envoy`, with
        // the default OVERWRITE transformation (only sidecar outbound keeps Envoy's `envoy`).
        server_name: GATEWAY_SERVER_NAME.to_string(),
        forward_client_cert_details: h::ForwardClientCertDetails::SanitizeSet as i32,
        set_current_client_cert_details: Some(h::SetCurrentClientCertDetails {
            subject: Some(BoolValue { value: true }),
            cert: true,
            dns: true,
            uri: true,
            ..Default::default()
        }),
        http_protocol_options: Some(core::Http1ProtocolOptions::default()),
        upgrade_configs: vec![h::UpgradeConfig { upgrade_type: "websocket".to_string(), ..Default::default() }],
        stream_idle_timeout: Some(Duration { seconds: 0, nanos: 0 }),
        normalize_path: Some(BoolValue { value: true }),
        path_with_escaped_slashes_action: h::PathWithEscapedSlashesAction::KeepUnchanged as i32,
        ..Default::default()
    };
    listener::Filter {
        name: HTTP_CONNECTION_MANAGER.to_string(),
        config_type: Some(listener::filter::ConfigType::TypedConfig(pack_any(manager))),
    }
}

fn file(path: &str) -> core::DataSource {
    core::DataSource { specifier: Some(core::data_source::Specifier::Filename(path.to_string())), ..Default::default() }
}

fn ads_sds(name: &str) -> tls::SdsSecretConfig {
    tls::SdsSecretConfig {
        name: name.to_string(),
        sds_config: Some(core::ConfigSource {
            config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(
                core::AggregatedConfigSource {},
            )),
            resource_api_version: core::ApiVersion::V3 as i32,
            ..Default::default()
        }),
    }
}

fn tls_version(v: Option<TlsProtocolVersion>) -> i32 {
    use tls::tls_parameters::TlsProtocol;
    (match v {
        None | Some(TlsProtocolVersion::TlsAuto) => TlsProtocol::TlsAuto,
        Some(TlsProtocolVersion::TlsV1_0) => TlsProtocol::TlSv10,
        Some(TlsProtocolVersion::TlsV1_1) => TlsProtocol::TlSv11,
        Some(TlsProtocolVersion::TlsV1_2) => TlsProtocol::TlSv12,
        Some(TlsProtocolVersion::TlsV1_3) => TlsProtocol::TlSv13,
    }) as i32
}

#[allow(deprecated)] // match_subject_alt_names, as istiod sets it
fn san_matchers(sans: &[String]) -> Vec<matcher::StringMatcher> {
    sans.iter()
        .map(|s| matcher::StringMatcher {
            match_pattern: Some(matcher::string_matcher::MatchPattern::Exact(s.clone())),
            ..Default::default()
        })
        .collect()
}

/// istiod's `BuildListenerTLSContext` for SIMPLE, MUTUAL and OPTIONAL_MUTUAL servers: SDS from
/// ADS for `credentialName(s)` (the CA as `<name>-cacert`, or `caCertCredentialName`), else
/// the files as filename data sources (istiod serves those over SDS as `file-cert:…`; Envoy
/// reads them itself here). The SDS names are added to `out.secrets`.
#[allow(deprecated)] // match_subject_alt_names, as istiod sets it
fn downstream_tls(s: &Srv<'_>, out: &mut GatewayOutput) -> Option<tls::DownstreamTlsContext> {
    let t: &ServerTlsSettings = s.server.tls.as_ref()?;
    let mode = t.effective_mode();
    let mutual = mode == ServerTlsMode::Mutual;
    let validate = mutual || mode == ServerTlsMode::OptionalMutual;
    let mut ctx = tls::CommonTlsContext {
        alpn_protocols: ALPN_HTTP.iter().map(|a| a.to_string()).collect(),
        ..Default::default()
    };
    let namespace = &s.gateway.namespace;
    let credential = |name: &str, field: &str, ca: bool, out: &mut GatewayOutput| -> tls::SdsSecretConfig {
        let sds_name =
            if name.contains("://") { name.to_string() } else { format!("{KUBERNETES_SECRET_PREFIX}{name}") };
        match SecretRef::of_credential(name, namespace, ca) {
            Some(r) if r.namespace == *namespace => {
                out.secrets.insert(r);
            }
            Some(r) => out.diagnostics.push(s.diagnostic(
                field,
                format!(
                    "the Secret {}/{} is not in the gateway's namespace: istiod serves it only with an explicit grant, \
                     meshflow does not serve it",
                    r.namespace, r.name
                ),
            )),
            None => out.diagnostics.push(s.diagnostic(
                field,
                format!("credential {name:?}: only Kubernetes Secrets (kubernetes://) are served yet"),
            )),
        }
        ads_sds(&sds_name)
    };
    let credentials: Vec<&String> = if !t.credential_names.is_empty() {
        t.credential_names.iter().collect()
    } else {
        t.credential_name.iter().filter(|c| !c.is_empty()).collect()
    };
    let base = |n: &str| if n.contains("://") { n.to_string() } else { format!("{KUBERNETES_SECRET_PREFIX}{n}") };
    if let Some(first) = credentials.first() {
        let field = if t.credential_names.is_empty() { "tls.credentialName" } else { "tls.credentialNames" };
        for c in &credentials {
            let sds = credential(c, field, false, out);
            ctx.tls_certificate_sds_secret_configs.push(sds);
        }
        if validate {
            let (ca_name, field) = match t.ca_cert_credential_name.as_deref().filter(|c| !c.is_empty()) {
                Some(c) => (c.to_string(), "tls.caCertCredentialName"),
                None => (format!("{}{SDS_CA_SUFFIX}", base(first)), field),
            };
            let sds = credential(&ca_name, field, true, out);
            let mut default = tls::CertificateValidationContext {
                match_subject_alt_names: san_matchers(&t.subject_alt_names),
                verify_certificate_spki: t.verify_certificate_spki.clone(),
                verify_certificate_hash: t.verify_certificate_hash.clone(),
                ..Default::default()
            };
            if t.insecure_skip_verify == Some(true) {
                default.trust_chain_verification =
                    tls::certificate_validation_context::TrustChainVerification::AcceptUntrusted as i32;
            }
            ctx.validation_context_type =
                Some(tls::common_tls_context::ValidationContextType::CombinedValidationContext(
                    tls::common_tls_context::CombinedCertificateValidationContext {
                        default_validation_context: Some(default),
                        validation_context_sds_secret_config: Some(sds),
                        ..Default::default()
                    },
                ));
        } else if !t.subject_alt_names.is_empty() {
            ctx.validation_context_type = Some(tls::common_tls_context::ValidationContextType::ValidationContext(
                tls::CertificateValidationContext {
                    match_subject_alt_names: san_matchers(&t.subject_alt_names),
                    ..Default::default()
                },
            ));
        }
    } else {
        let pairs: Vec<(Option<&str>, Option<&str>)> = if t.tls_certificates.is_empty() {
            vec![(t.server_certificate.as_deref(), t.private_key.as_deref())]
        } else {
            t.tls_certificates.iter().map(|c| (c.server_certificate.as_deref(), c.private_key.as_deref())).collect()
        };
        for (cert, key) in pairs {
            ctx.tls_certificates.push(tls::TlsCertificate {
                certificate_chain: cert.filter(|c| !c.is_empty()).map(file),
                private_key: key.filter(|k| !k.is_empty()).map(file),
                ..Default::default()
            });
        }
        if validate {
            let mut vc = tls::CertificateValidationContext {
                trusted_ca: t.ca_certificates.as_deref().filter(|c| !c.is_empty()).map(file),
                match_subject_alt_names: san_matchers(&t.subject_alt_names),
                crl: t.ca_crl.as_deref().filter(|c| !c.is_empty()).map(file),
                ..Default::default()
            };
            if t.insecure_skip_verify == Some(true) {
                vc.trust_chain_verification =
                    tls::certificate_validation_context::TrustChainVerification::AcceptUntrusted as i32;
            }
            ctx.validation_context_type = Some(tls::common_tls_context::ValidationContextType::ValidationContext(vc));
        }
    }
    // `applyServerTLSSettings`: only what is set.
    let params = tls::TlsParameters {
        tls_minimum_protocol_version: tls_version(t.min_protocol_version),
        tls_maximum_protocol_version: tls_version(t.max_protocol_version),
        cipher_suites: dedup(&t.cipher_suites),
        ecdh_curves: t.ecdh_curves.clone(),
        ..Default::default()
    };
    if params != tls::TlsParameters::default() {
        ctx.tls_params = Some(params);
    }
    Some(tls::DownstreamTlsContext {
        common_tls_context: Some(ctx),
        require_client_certificate: Some(BoolValue { value: mutual }),
        ..Default::default()
    })
}

/// istiod's `FilterCipherSuites` keeps the first of repeated suites.
fn dedup(suites: &[String]) -> Vec<String> {
    let mut seen = BTreeSet::new();
    suites.iter().filter(|s| seen.insert(s.as_str())).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::istio::decode;
    use crate::model::{Kind, Object};
    use crate::translate::outbound::HostInfo;
    use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp;
    use serde_json::json;

    fn gateway(ns: &str, name: &str, servers: serde_json::Value) -> Gateway {
        let spec = json!({"selector": {"istio": "ingressgateway"}, "servers": servers});
        match decode(Kind::Gateway, ns, name, None, spec) {
            Ok(Object::Gateway(g)) => *g,
            other => panic!("invalid test Gateway: {other:?}"),
        }
    }

    fn vs(ns: &str, name: &str, created: &str, spec: serde_json::Value) -> VirtualService {
        match decode(Kind::VirtualService, ns, name, Some(created), spec) {
            Ok(Object::VirtualService(v)) => *v,
            other => panic!("invalid test VirtualService: {other:?}"),
        }
    }

    fn dest() -> DestinationMap {
        let mut d = DestinationMap::new();
        for h in ["productpage.default.svc.cluster.local", "reviews.default.svc.cluster.local"] {
            d.insert(h.to_string(), HostInfo { ports: vec![9080], rule: None });
        }
        d.insert("tls-backend.default.svc.cluster.local".into(), HostInfo { ports: vec![8443], rule: None });
        d.insert("db.default.svc.cluster.local".into(), HostInfo { ports: vec![5432], rule: None });
        d
    }

    fn build(gws: &[&Gateway], vss: &[&VirtualService]) -> GatewayOutput {
        let d = dest();
        let pairs: Vec<(&VirtualService, &DestinationMap)> = vss.iter().map(|v| (*v, &d)).collect();
        gateway_resources(gws, &pairs)
    }

    fn resource<'a>(out: &'a GatewayOutput, t: ResourceType, name: &str) -> &'a [u8] {
        let found = out.resources.iter().find(|(rt, n, _)| *rt == t && n == name);
        &found.unwrap_or_else(|| panic!("no {t:?} {name}; have {:?}", names(out))).2
    }

    fn names(out: &GatewayOutput) -> Vec<(ResourceType, &str)> {
        out.resources.iter().map(|(t, n, _)| (*t, n.as_str())).collect()
    }

    fn listener_of(out: &GatewayOutput, port: u16) -> listener::Listener {
        listener::Listener::decode(resource(out, ResourceType::Listener, &format!("0.0.0.0_{port}"))).unwrap()
    }

    fn route_config_of(out: &GatewayOutput, name: &str) -> envoy_route::RouteConfiguration {
        envoy_route::RouteConfiguration::decode(resource(out, ResourceType::RouteConfiguration, name)).unwrap()
    }

    fn manager(chain: &listener::FilterChain) -> hcm::HttpConnectionManager {
        assert_eq!(chain.filters[0].name, "envoy.filters.network.http_connection_manager");
        let Some(listener::filter::ConfigType::TypedConfig(any)) = &chain.filters[0].config_type else { panic!() };
        hcm::HttpConnectionManager::decode(&any.value[..]).unwrap()
    }

    fn rds(chain: &listener::FilterChain) -> String {
        match manager(chain).route_specifier {
            Some(hcm::http_connection_manager::RouteSpecifier::Rds(r)) => r.route_config_name,
            other => panic!("{other:?}"),
        }
    }

    fn tcp_cluster(chain: &listener::FilterChain) -> String {
        assert_eq!(chain.filters[0].name, "envoy.filters.network.tcp_proxy");
        let Some(listener::filter::ConfigType::TypedConfig(any)) = &chain.filters[0].config_type else { panic!() };
        match tcp::TcpProxy::decode(&any.value[..]).unwrap().cluster_specifier {
            Some(tcp::tcp_proxy::ClusterSpecifier::Cluster(c)) => c,
            other => panic!("{other:?}"),
        }
    }

    fn downstream(chain: &listener::FilterChain) -> tls::DownstreamTlsContext {
        let socket = chain.transport_socket.as_ref().expect("a TLS transport socket");
        assert_eq!(socket.name, "envoy.transport_sockets.tls");
        let Some(core::transport_socket::ConfigType::TypedConfig(any)) = &socket.config_type else { panic!() };
        tls::DownstreamTlsContext::decode(&any.value[..]).unwrap()
    }

    fn cluster_of(route: &envoy_route::Route) -> &str {
        match &route.action {
            Some(envoy_route::route::Action::Route(a)) => match &a.cluster_specifier {
                Some(envoy_route::route_action::ClusterSpecifier::Cluster(c)) => c,
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    }

    fn http_server(port: u32, hosts: &[&str]) -> serde_json::Value {
        json!({"port": {"number": port, "name": format!("http-{port}"), "protocol": "HTTP"}, "hosts": hosts})
    }

    #[test]
    fn jwt_claim_matches_of_bound_virtual_services_are_reported_and_their_block_left_out() {
        let gw = gateway("istio-system", "gw", json!([http_server(80, &["a.com"])]));
        let v = vs(
            "default",
            "claims",
            "2024-01-01T00:00:00Z",
            json!({"hosts": ["a.com"], "gateways": ["istio-system/gw"],
            "http": [{"match": [{"headers": {"@request.auth.claims.group": {"exact": "admin"}}}],
                      "route": [{"destination": {"host": "reviews"}}]},
                     {"route": [{"destination": {"host": "productpage"}}]}]}),
        );
        let out = build(&[&gw], &[&v]);
        assert_eq!(out.diagnostics.len(), 1, "{:?}", out.diagnostics);
        assert_eq!(out.diagnostics[0].field, "spec.http[0].match[0].headers[@request.auth.claims.group]");
        let rc = route_config_of(&out, "http.80");
        let clusters: Vec<&str> = rc.virtual_hosts[0].routes.iter().map(cluster_of).collect();
        assert_eq!(clusters, ["outbound|9080||productpage.default.svc.cluster.local"]);
    }

    /// Not a check: how long one class's gateway takes to build at scale
    /// (`cargo test --release --lib gateway_at_scale -- --ignored --nocapture`).
    #[test]
    #[ignore = "measurement"]
    fn gateway_at_scale() {
        let mut servers = vec![http_server(80, &["*"])];
        for i in 0..100 {
            servers.push(json!({"port": {"number": 443, "name": format!("https-{i}"), "protocol": "HTTPS"},
                "hosts": [format!("h{i}.example.com")], "tls": {"mode": "SIMPLE", "credentialName": format!("cert-{i}")}}));
        }
        let gw = gateway("istio-system", "gw", json!(servers));
        let vss: Vec<VirtualService> = (0..1000)
            .map(|i| {
                vs("default", &format!("v{i}"), "2024-01-01T00:00:00Z", json!({"hosts": [format!("h{i}.example.com")],
                    "gateways": ["istio-system/gw"], "http": [{"match": [{"uri": {"prefix": "/a"}}], "route": [{"destination": {"host": "reviews"}}]},
                    {"route": [{"destination": {"host": "productpage"}}]}]}))
            })
            .collect();
        let refs: Vec<&VirtualService> = vss.iter().collect();
        let start = std::time::Instant::now();
        let out = build(&[&gw], &refs);
        let elapsed = start.elapsed();
        let bytes: usize = out.resources.iter().map(|r| r.2.len()).sum();
        println!(
            "1 gateway, 101 servers, 1000 VirtualServices: {} resources, {bytes} bytes in {elapsed:?}",
            out.resources.len()
        );
        assert_eq!(
            out.resources.len(),
            103,
            "listeners 0.0.0.0_80 and 0.0.0.0_443, http.80 and 100 https route configs"
        );
    }

    #[test]
    fn gateway_names_resolve_as_istiod_resolves_them() {
        assert_eq!(resolve_gateway_name("gw", "shop"), "shop/gw");
        assert_eq!(resolve_gateway_name("./gw", "shop"), "shop/gw");
        assert_eq!(resolve_gateway_name("istio-system/gw", "shop"), "istio-system/gw");
        assert_eq!(resolve_gateway_name("gw.istio-system.svc.cluster.local", "shop"), "istio-system/gw");
        assert_eq!(resolve_gateway_name("gw.istio-system", "shop"), "istio-system/gw");
    }

    #[test]
    fn http_servers_of_one_port_share_route_config_http_port_with_istiods_virtual_hosts() {
        let gw1 = gateway("istio-system", "gw1", json!([http_server(80, &["bookinfo.example.com"])]));
        let gw2 = gateway("istio-system", "gw2", json!([http_server(80, &["*.shop.com"])]));
        let bookinfo = vs(
            "default",
            "bookinfo",
            "2024-01-01T00:00:00Z",
            json!({"hosts": ["bookinfo.example.com"],
            "gateways": ["istio-system/gw1"], "http": [{"route": [{"destination": {"host": "productpage", "port": {"number": 9080}}}]}]}),
        );
        let shop = vs(
            "default",
            "shop",
            "2024-01-02T00:00:00Z",
            json!({"hosts": ["b.shop.com", "a.shop.com"],
            "gateways": ["istio-system/gw2"], "http": [{"route": [{"destination": {"host": "reviews"}}]}]}),
        );
        let mesh_only = vs(
            "default",
            "mesh",
            "2024-01-01T00:00:00Z",
            json!({"hosts": ["bookinfo.example.com"],
            "http": [{"route": [{"destination": {"host": "reviews"}}]}]}),
        );
        let out = build(&[&gw1, &gw2], &[&shop, &bookinfo, &mesh_only]);
        assert_eq!(
            names(&out),
            [(ResourceType::Listener, "0.0.0.0_80"), (ResourceType::RouteConfiguration, "http.80")]
        );
        assert!(out.diagnostics.is_empty(), "{:?}", out.diagnostics);

        let l = listener_of(&out, 80);
        assert_eq!(l.filter_chains.len(), 1, "one HTTP chain for every HTTP server of the port");
        assert!(l.filter_chains[0].filter_chain_match.is_none() && l.filter_chains[0].transport_socket.is_none());
        assert!(l.listener_filters.is_empty(), "no TLS inspector without SNI");
        assert_eq!(manager(&l.filter_chains[0]).stat_prefix, "outbound_0.0.0.0_80", "istiod's default stat prefix");
        assert_eq!(manager(&l.filter_chains[0]).server_name, "istio-envoy", "istiod's gateway server header");
        assert_eq!(rds(&l.filter_chains[0]), "http.80");
        let m = manager(&l.filter_chains[0]);
        assert_eq!(m.use_remote_address, Some(BoolValue { value: true }), "a gateway is the edge");
        assert_eq!(m.http_filters.last().unwrap().name, "envoy.filters.http.router");

        let rc = route_config_of(&out, "http.80");
        assert!(rc.ignore_port_in_host_matching);
        assert_eq!(rc.validate_clusters, Some(BoolValue { value: false }));
        let vhosts: Vec<(&str, &[String])> =
            rc.virtual_hosts.iter().map(|v| (v.name.as_str(), &v.domains[..])).collect();
        assert_eq!(
            vhosts,
            [
                // Hosts with the same routes collapse into the first one's virtual host.
                ("a.shop.com:80", &["a.shop.com".to_string(), "b.shop.com".to_string()][..]),
                ("bookinfo.example.com:80", &["bookinfo.example.com".to_string()][..]),
            ]
        );
        assert_eq!(rc.virtual_hosts[1].routes.len(), 1, "the mesh-only VirtualService does not bind");
        assert_eq!(cluster_of(&rc.virtual_hosts[1].routes[0]), "outbound|9080||productpage.default.svc.cluster.local");
        assert_eq!(cluster_of(&rc.virtual_hosts[0].routes[0]), "outbound|9080||reviews.default.svc.cluster.local");
        assert!(rc.virtual_hosts.iter().all(|v| v.include_request_attempt_count));
        assert_eq!(
            out.destinations,
            BTreeSet::from([
                "productpage.default.svc.cluster.local".to_string(),
                "reviews.default.svc.cluster.local".to_string()
            ])
        );
    }

    #[test]
    fn a_server_without_virtual_service_gets_the_404_blackhole_virtual_host() {
        let gw = gateway("istio-system", "gw", json!([http_server(8080, &["*"])]));
        let other = vs(
            "default",
            "other",
            "2024-01-01T00:00:00Z",
            json!({"hosts": ["x.com"],
            "gateways": ["istio-system/another"], "http": [{"route": [{"destination": {"host": "reviews"}}]}]}),
        );
        let out = build(&[&gw], &[&other]);
        let rc = route_config_of(&out, "http.8080");
        assert_eq!(rc.virtual_hosts.len(), 1);
        assert_eq!(rc.virtual_hosts[0].name, "blackhole:8080");
        assert_eq!(rc.virtual_hosts[0].domains, ["*"]);
        assert!(rc.virtual_hosts[0].routes.is_empty(), "Envoy answers 404 NR");
    }

    #[test]
    fn server_hosts_with_a_namespace_bind_only_virtual_services_of_that_namespace() {
        let gw = gateway("istio-system", "gw", json!([http_server(80, &["shop/*.example.com", "./own.example.com"])]));
        let in_shop = vs(
            "shop",
            "a",
            "2024-01-01T00:00:00Z",
            json!({"hosts": ["a.example.com"],
            "gateways": ["istio-system/gw"], "http": [{"route": [{"destination": {"host": "reviews.default.svc.cluster.local"}}]}]}),
        );
        let in_default = vs(
            "default",
            "b",
            "2024-01-01T00:00:00Z",
            json!({"hosts": ["b.example.com"],
            "gateways": ["istio-system/gw"], "http": [{"route": [{"destination": {"host": "reviews"}}]}]}),
        );
        let in_gw_ns = vs(
            "istio-system",
            "c",
            "2024-01-01T00:00:00Z",
            json!({"hosts": ["own.example.com"],
            "gateways": ["gw"], "http": [{"route": [{"destination": {"host": "reviews.default.svc.cluster.local"}}]}]}),
        );
        let rc = route_config_of(&build(&[&gw], &[&in_shop, &in_default, &in_gw_ns]), "http.80");
        let names: Vec<&str> = rc.virtual_hosts.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(
            names,
            ["a.example.com:80", "own.example.com:80"],
            "b is in a namespace the server does not export to"
        );
    }

    #[test]
    fn https_redirect_requires_tls_on_every_host_of_the_server() {
        let gw = gateway(
            "istio-system",
            "gw",
            json!([{"port": {"number": 80, "name": "http", "protocol": "HTTP"},
            "hosts": ["bookinfo.example.com", "bare.example.com"], "tls": {"httpsRedirect": true}}]),
        );
        let bookinfo = vs(
            "default",
            "bookinfo",
            "2024-01-01T00:00:00Z",
            json!({"hosts": ["bookinfo.example.com"],
            "gateways": ["istio-system/gw"], "http": [{"route": [{"destination": {"host": "productpage"}}]}]}),
        );
        let rc = route_config_of(&build(&[&gw], &[&bookinfo]), "http.80");
        let all = envoy_route::virtual_host::TlsRequirementType::All as i32;
        let vhosts: Vec<(&str, i32, usize)> =
            rc.virtual_hosts.iter().map(|v| (v.name.as_str(), v.require_tls, v.routes.len())).collect();
        assert_eq!(vhosts, [("bare.example.com:80", all, 0), ("bookinfo.example.com:80", all, 1)]);
    }

    #[test]
    fn https_simple_terminates_with_an_sds_certificate_and_its_own_route_config() {
        let gw = gateway(
            "istio-system",
            "gw",
            json!([{"port": {"number": 443, "name": "https-bookinfo", "protocol": "HTTPS"},
            "name": "bookinfo-server", "hosts": ["b.example.com", "a.example.com"],
            "tls": {"mode": "SIMPLE", "credentialName": "bookinfo-cert", "minProtocolVersion": "TLSV1_2",
                "cipherSuites": ["ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384"]}}]),
        );
        let bookinfo = vs(
            "default",
            "bookinfo",
            "2024-01-01T00:00:00Z",
            json!({"hosts": ["a.example.com"],
            "gateways": ["istio-system/gw"], "http": [{"route": [{"destination": {"host": "productpage"}}]}]}),
        );
        let out = build(&[&gw], &[&bookinfo]);
        let route_name = "https.443.https-bookinfo.gw.istio-system";
        assert_eq!(
            names(&out),
            [(ResourceType::Listener, "0.0.0.0_443"), (ResourceType::RouteConfiguration, route_name)]
        );
        let l = listener_of(&out, 443);
        assert_eq!(l.listener_filters[0].name, "envoy.filters.listener.tls_inspector");
        let chain = &l.filter_chains[0];
        assert_eq!(chain.filter_chain_match.as_ref().unwrap().server_names, ["a.example.com", "b.example.com"]);
        assert_eq!(rds(chain), route_name);
        assert_eq!(manager(chain).stat_prefix, "bookinfo-server", "istiod uses the server name");
        assert_eq!(manager(chain).server_name, "istio-envoy");
        let ctx = downstream(chain);
        assert_eq!(ctx.require_client_certificate, Some(BoolValue { value: false }));
        let common = ctx.common_tls_context.unwrap();
        assert_eq!(common.alpn_protocols, ["h2", "http/1.1"]);
        assert_eq!(common.tls_certificate_sds_secret_configs.len(), 1);
        let sds = &common.tls_certificate_sds_secret_configs[0];
        assert_eq!(sds.name, "kubernetes://bookinfo-cert");
        assert!(matches!(
            sds.sds_config.as_ref().unwrap().config_source_specifier,
            Some(core::config_source::ConfigSourceSpecifier::Ads(_))
        ));
        assert!(common.validation_context_type.is_none(), "SIMPLE validates no client");
        let params = common.tls_params.unwrap();
        assert_eq!(params.tls_minimum_protocol_version, tls::tls_parameters::TlsProtocol::TlSv12 as i32);
        assert_eq!(params.tls_maximum_protocol_version, tls::tls_parameters::TlsProtocol::TlsAuto as i32);
        assert_eq!(params.cipher_suites, ["ECDHE-RSA-AES256-GCM-SHA384"]);
        assert_eq!(
            out.secrets,
            BTreeSet::from([SecretRef {
                sds_name: "kubernetes://bookinfo-cert".into(),
                namespace: "istio-system".into(),
                name: "bookinfo-cert".into(),
                ca: false
            }])
        );
        let rc = route_config_of(&out, route_name);
        assert_eq!(rc.virtual_hosts[0].name, "a.example.com:443");
    }

    #[test]
    #[allow(deprecated)]
    fn mutual_validates_clients_against_the_cacert_secret() {
        let gw = gateway(
            "istio-system",
            "gw",
            json!([{"port": {"number": 443, "name": "https", "protocol": "HTTPS"},
            "hosts": ["*"], "tls": {"mode": "MUTUAL", "credentialName": "cred", "subjectAltNames": ["spiffe://client"]}}]),
        );
        let out = build(&[&gw], &[]);
        let l = listener_of(&out, 443);
        assert!(l.filter_chains[0].filter_chain_match.is_none(), "host * matches every SNI");
        assert_eq!(l.listener_filters.len(), 1, "ALPN still needs the TLS inspector");
        let ctx = downstream(&l.filter_chains[0]);
        assert_eq!(ctx.require_client_certificate, Some(BoolValue { value: true }));
        let Some(tls::common_tls_context::ValidationContextType::CombinedValidationContext(combined)) =
            ctx.common_tls_context.unwrap().validation_context_type
        else {
            panic!()
        };
        assert_eq!(combined.validation_context_sds_secret_config.unwrap().name, "kubernetes://cred-cacert");
        let default = combined.default_validation_context.unwrap();
        assert_eq!(default.match_subject_alt_names.len(), 1);
        let ca = out.secrets.iter().find(|s| s.ca).unwrap();
        assert_eq!((ca.name.as_str(), ca.ca_fallback()), ("cred-cacert", Some("cred")));
        assert_eq!(out.secrets.len(), 2);
        // OPTIONAL_MUTUAL validates but does not require a client certificate.
        let optional = gateway(
            "istio-system",
            "gw",
            json!([{"port": {"number": 443, "name": "https", "protocol": "HTTPS"},
            "hosts": ["*"], "tls": {"mode": "OPTIONAL_MUTUAL", "credentialName": "cred"}}]),
        );
        let ctx = downstream(&listener_of(&build(&[&optional], &[]), 443).filter_chains[0]);
        assert_eq!(ctx.require_client_certificate, Some(BoolValue { value: false }));
        assert!(ctx.common_tls_context.unwrap().validation_context_type.is_some());
    }

    #[test]
    fn certificate_files_become_filename_data_sources() {
        let gw = gateway(
            "istio-system",
            "gw",
            json!([{"port": {"number": 443, "name": "https", "protocol": "HTTPS"},
            "hosts": ["*"], "tls": {"mode": "MUTUAL", "serverCertificate": "/etc/certs/cert.pem",
                "privateKey": "/etc/certs/key.pem", "caCertificates": "/etc/certs/ca.pem"}}]),
        );
        let out = build(&[&gw], &[]);
        assert!(out.secrets.is_empty());
        let common = downstream(&listener_of(&out, 443).filter_chains[0]).common_tls_context.unwrap();
        let filename = |d: &Option<core::DataSource>| match d.as_ref().unwrap().specifier.as_ref() {
            Some(core::data_source::Specifier::Filename(f)) => f.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(filename(&common.tls_certificates[0].certificate_chain), "/etc/certs/cert.pem");
        assert_eq!(filename(&common.tls_certificates[0].private_key), "/etc/certs/key.pem");
        let Some(tls::common_tls_context::ValidationContextType::ValidationContext(v)) = common.validation_context_type
        else {
            panic!()
        };
        assert_eq!(filename(&v.trusted_ca), "/etc/certs/ca.pem");
    }

    #[test]
    fn passthrough_routes_by_sni_to_the_tls_routes_of_bound_virtual_services() {
        let gw = gateway(
            "istio-system",
            "gw",
            json!([{"port": {"number": 443, "name": "tls", "protocol": "TLS"},
            "hosts": ["*.example.com"], "tls": {"mode": "PASSTHROUGH"}}]),
        );
        let v = vs(
            "default",
            "tls",
            "2024-01-01T00:00:00Z",
            json!({"hosts": ["a.example.com", "b.example.com"],
            "gateways": ["istio-system/gw"], "tls": [
                {"match": [{"sniHosts": ["a.example.com"]}], "route": [{"destination": {"host": "tls-backend"}}]},
                {"match": [{"sniHosts": ["b.example.com"], "port": 8443}], "route": [{"destination": {"host": "reviews"}}]}]}),
        );
        let out = build(&[&gw], &[&v]);
        assert_eq!(names(&out), [(ResourceType::Listener, "0.0.0.0_443")], "no route config for passthrough");
        let l = listener_of(&out, 443);
        assert_eq!(l.filter_chains.len(), 1, "the second block matches another port");
        let chain = &l.filter_chains[0];
        assert_eq!(chain.filter_chain_match.as_ref().unwrap().server_names, ["a.example.com"]);
        assert!(chain.transport_socket.is_none(), "passthrough does not terminate");
        assert_eq!(tcp_cluster(chain), "outbound|8443||tls-backend.default.svc.cluster.local");
        assert_eq!(l.listener_filters[0].name, "envoy.filters.listener.tls_inspector");
    }

    #[test]
    fn a_tcp_server_proxies_to_the_first_matching_tcp_route_and_without_one_gets_no_listener() {
        let gw = gateway(
            "istio-system",
            "gw",
            json!([{"port": {"number": 5432, "name": "tcp", "protocol": "TCP"}, "hosts": ["*"]},
            {"port": {"number": 6000, "name": "tcp-none", "protocol": "TCP"}, "hosts": ["*"]}]),
        );
        let v = vs(
            "default",
            "db",
            "2024-01-01T00:00:00Z",
            json!({"hosts": ["db.example.com"],
            "gateways": ["istio-system/gw"], "tcp": [{"match": [{"port": 5432}], "route": [{"destination": {"host": "db"}}]}]}),
        );
        let out = build(&[&gw], &[&v]);
        assert_eq!(names(&out), [(ResourceType::Listener, "0.0.0.0_5432")]);
        let chain = &listener_of(&out, 5432).filter_chains[0];
        assert!(chain.filter_chain_match.is_none());
        assert_eq!(tcp_cluster(chain), "outbound|5432||db.default.svc.cluster.local");
        assert_eq!(out.diagnostics.len(), 1, "{:?}", out.diagnostics);
        assert_eq!(out.diagnostics[0].field, "spec.servers[1]");
    }

    #[test]
    fn unsupported_modes_and_conflicting_servers_are_reported_and_left_out() {
        let gw = gateway(
            "istio-system",
            "gw",
            json!([
                http_server(80, &["a.com"]),
                {"port": {"number": 80, "name": "tcp", "protocol": "TCP"}, "hosts": ["*"]},
                {"port": {"number": 15443, "name": "tls", "protocol": "TLS"}, "hosts": ["*.local"], "tls": {"mode": "AUTO_PASSTHROUGH"}},
                {"port": {"number": 443, "name": "https-a", "protocol": "HTTPS"}, "hosts": ["a.com"], "tls": {"mode": "ISTIO_MUTUAL"}},
                {"port": {"number": 8443, "name": "https-1", "protocol": "HTTPS"}, "hosts": ["a.com"], "tls": {"mode": "SIMPLE", "credentialName": "x"}},
                {"port": {"number": 8443, "name": "https-2", "protocol": "HTTPS"}, "hosts": ["a.com"], "tls": {"mode": "SIMPLE", "credentialName": "y"}}
            ]),
        );
        let out = build(&[&gw], &[]);
        let fields: Vec<&str> = out.diagnostics.iter().map(|d| d.field.as_str()).collect();
        assert_eq!(
            fields,
            ["spec.servers[1].port", "spec.servers[2].tls.mode", "spec.servers[3].tls.mode", "spec.servers[5].hosts"]
        );
        assert!(out.diagnostics.iter().all(|d| d.object == gw.object_key()));
        assert_eq!(
            names(&out),
            [
                (ResourceType::Listener, "0.0.0.0_80"),
                (ResourceType::Listener, "0.0.0.0_8443"),
                (ResourceType::RouteConfiguration, "http.80"),
                (ResourceType::RouteConfiguration, "https.8443.https-1.gw.istio-system"),
            ]
        );
        assert_eq!(listener_of(&out, 8443).filter_chains.len(), 1);
        assert_eq!(out.secrets.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["x"]);
    }

    #[test]
    fn match_blocks_naming_another_gateway_are_left_out_and_redirects_elide_443_under_tls() {
        let gw = gateway(
            "istio-system",
            "gw",
            json!([{"port": {"number": 443, "name": "https", "protocol": "HTTPS"},
            "hosts": ["a.com"], "tls": {"mode": "SIMPLE", "credentialName": "c"}}]),
        );
        let v = vs(
            "istio-system",
            "v",
            "2024-01-01T00:00:00Z",
            json!({"hosts": ["a.com"], "gateways": ["gw", "other"],
            "http": [
                {"match": [{"uri": {"prefix": "/other"}, "gateways": ["other"]}], "route": [{"destination": {"host": "reviews.default.svc.cluster.local"}}]},
                {"match": [{"uri": {"prefix": "/old"}, "gateways": ["gw"]}], "redirect": {"uri": "/new", "port": 443}},
                {"route": [{"destination": {"host": "productpage.default.svc.cluster.local"}}]}]}),
        );
        let out = build(&[&gw], &[&v]);
        let rc = route_config_of(&out, "https.443.https.gw.istio-system");
        let routes = &rc.virtual_hosts[0].routes;
        assert_eq!(routes.len(), 2);
        let Some(envoy_route::route::Action::Redirect(r)) = &routes[0].action else { panic!("{:?}", routes[0]) };
        assert_eq!(r.port_redirect, 0, "443 is the default port of https, the scheme of a TLS server");
        assert_eq!(cluster_of(&routes[1]), "outbound|9080||productpage.default.svc.cluster.local");
    }
}
