//! VirtualService → Envoy HTTP routes for sidecars (the `mesh` gateway).
//!
//! Pure builders, as istiod's `BuildHTTPRoutesForVirtualService`, `TranslateRoute` and
//! `TranslateRouteMatch` (istio/istio `pilot/pkg/networking/core/route/route.go`) and
//! `ConvertPolicy` (`route/retry/retry.go`) build them for a sidecar proxy. Which VirtualService
//! meets which service port is decided elsewhere (the dataflow); these functions decide what the
//! routes become.
//!
//! Routes depend on the proxy through `sourceLabels` and `sourceNamespace` (istiod's
//! `sourceMatchHTTP`): the builders take the proxy's [`Source`]. The shared route configs are
//! built for a proxy without labels in a namespace no block names; where a proxy's namespace or
//! labels select a block, the dataflow builds that namespace's or class's virtual hosts too.

use std::collections::BTreeMap;
use std::net::IpAddr;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::route::v3 as envoy_route;
use envoy_types::pb::envoy::extensions::filters::common::fault::v3 as common_fault;
use envoy_types::pb::envoy::extensions::filters::http::cors::v3 as cors;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3 as fault;
use envoy_types::pb::envoy::extensions::retry::priority::previous_priorities::v3::PreviousPrioritiesConfig;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;
use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType;
use envoy_types::pb::google::protobuf::{BoolValue, Duration, Struct, UInt32Value, Value, value};
use envoy_types::util::pack_any;
use prost::Message;

use super::{ServicePortRow, default_retry_policy, outbound_cluster_name};
use crate::model::FieldError;
use crate::model::istio::{
    CorsPolicy, Destination, FaultAbort, FaultDelay, HeaderOperations, Headers, HttpDirectResponse, HttpFaultInjection,
    HttpMatchRequest, HttpRedirect, HttpRetry, HttpRoute, Percent, RedirectPortSelection, StringMatch,
    UnmatchedPreflights, VirtualService, parse_duration,
};
use crate::model::k8s::Labels;

pub use envoy_route::route_action::HashPolicy;

/// The HTTP filter (and `typed_per_filter_config` key) of fault injection.
pub const FAULT_FILTER: &str = "envoy.filters.http.fault";
/// The HTTP filter (and `typed_per_filter_config` key) of CORS.
pub const CORS_FILTER: &str = "envoy.filters.http.cors";
/// The gateway name that stands for all sidecars.
pub const MESH_GATEWAY: &str = "mesh";
/// The header name prefix istiod reads as a JWT claim match (`pkg/jwt/routing.go`).
const JWT_CLAIM_PREFIX: &str = "@request.auth.claims";

/// Resolves a host as istiod does (`ResolveShortnameToFQDN`): a name without a dot →
/// `<name>.<namespace>.svc.cluster.local`; anything with a dot (FQDN, `reviews.prod`,
/// `*.foo.com`), `*` and IP addresses unchanged.
pub fn resolve_host(host: &str, namespace: &str) -> String {
    if host.is_empty() || host == "*" || host.contains('.') || host.parse::<IpAddr>().is_ok() {
        return host.to_string();
    }
    format!("{host}.{namespace}.svc.{}", super::DOMAIN_SUFFIX)
}

/// What a route builder needs to know about a destination host (an FQDN).
pub trait Destinations {
    /// The service ports of that host (None: no such service known — istiod still routes to
    /// the cluster name it would use).
    fn ports(&self, fqdn: &str) -> Option<Vec<u16>>;
    /// Route-level hash policy for consistent hashing toward (fqdn, port, subset) (empty: none).
    /// The integrator wires it to the destination's DestinationRule.
    ///
    /// `port` is the port the destination names explicitly, or **0 when it names none**: istiod
    /// (`HashForHTTPDestination`) only consults `portLevelSettings` (top level and subset) for a
    /// destination with an explicit port; otherwise the subset's, else the top-level
    /// `loadBalancer.consistentHash` applies.
    fn hash_policy(&self, fqdn: &str, port: u16, subset: &str) -> Vec<HashPolicy>;
}

/// The sidecar (outbound) routes that a VirtualService gives the virtual host of a service port
/// `port` (the route config / listener port), in order, first match wins — as istiod's
/// `BuildHTTPRoutesForVirtualService` does for a sidecar (gateway name `mesh`).
///
/// Empty when no route applies on this port. istiod then builds no virtual host from this
/// VirtualService on this port and the service keeps its default virtual host: the caller
/// should serve [`default_route`] (with the service's hash policy) in that case.
pub fn http_routes(vs: &VirtualService, port: u16, dest: &dyn Destinations) -> Vec<envoy_route::Route> {
    http_routes_for(vs, port, dest, Source::default())
}

/// [`http_routes`] for a sidecar proxy of `source` (its namespace and labels).
pub fn http_routes_for(
    vs: &VirtualService,
    port: u16,
    dest: &dyn Destinations,
    source: Source<'_>,
) -> Vec<envoy_route::Route> {
    if !applies_to_mesh(&vs.spec.gateways) {
        return Vec::new();
    }
    http_routes_in(vs, port, dest, RouteScope::Mesh(source))
}

/// Who asks, as far as match blocks care (`sourceNamespace`, `sourceLabels`). The default,
/// no namespace and no labels, is a proxy that no such block selects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Source<'a> {
    pub namespace: Option<&'a str>,
    pub labels: Option<&'a Labels>,
}

impl Source<'_> {
    /// istiod's `sourceMatchHTTP` for a block without `gateways`: its `sourceLabels` are a
    /// subset of the proxy's labels, and its `sourceNamespace`, if any, is the proxy's.
    pub fn selects(&self, source_labels: &BTreeMap<String, String>, source_namespace: Option<&str>) -> bool {
        let labels_match = source_labels.is_empty()
            || self.labels.is_some_and(|l| source_labels.iter().all(|(k, v)| l.get(k) == Some(v)));
        labels_match && source_namespace.is_none_or(|ns| ns.is_empty() || Some(ns) == self.namespace)
    }
}

/// Whether any sidecar match block of the VirtualService (`http`, `tcp`, `tls`) has
/// `sourceLabels`: then what it gives a sidecar depends on the labels of the proxy that asks.
pub fn depends_on_labels(vs: &VirtualService) -> bool {
    !source_label_sets(vs).is_empty()
}

/// The label sets of the sidecar match blocks that have `sourceLabels` (what proxy classes are
/// matched against).
pub fn source_label_sets(vs: &VirtualService) -> Vec<&BTreeMap<String, String>> {
    source_blocks(vs).map(|(labels, _)| labels).filter(|l| !l.is_empty()).collect()
}

/// The namespaces the sidecar match blocks name in `sourceNamespace`.
pub fn source_namespaces(vs: &VirtualService) -> std::collections::BTreeSet<String> {
    source_blocks(vs).filter_map(|(_, ns)| non_empty(ns)).map(str::to_string).collect()
}

/// The (`sourceLabels`, `sourceNamespace`) of the match blocks of a sidecar VirtualService's
/// `http`, `tcp` and `tls` routes that decide by source (no `gateways` of their own).
fn source_blocks(vs: &VirtualService) -> impl Iterator<Item = (&BTreeMap<String, String>, &Option<String>)> {
    let mesh = applies_to_mesh(&vs.spec.gateways);
    let spec = &vs.spec;
    let http = spec.http.iter().flat_map(|h| &h.r#match).filter(|m| m.gateways.is_empty());
    let http = http.map(|m| (&m.source_labels, &m.source_namespace));
    let tcp = spec.tcp.iter().flat_map(|r| &r.r#match).filter(|m| m.gateways.is_empty());
    let tcp = tcp.map(|m| (&m.source_labels, &m.source_namespace));
    let tls = spec.tls.iter().flat_map(|r| &r.r#match).filter(|m| m.gateways.is_empty());
    let tls = tls.map(|m| (&m.source_labels, &m.source_namespace));
    http.chain(tcp).chain(tls).filter(move |_| mesh)
}

/// Whom routes are built for: istiod's `gatewayNames` and `RouteOptions.IsTLS` of
/// `BuildHTTPRoutesForVirtualService`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteScope<'a> {
    /// Sidecars (the `mesh` gateway), for a proxy of this source.
    Mesh(Source<'a>),
    /// One server of a gateway: the gateway's `namespace/name`, and whether the server has `tls`
    /// settings (a redirect's default scheme is then `https`).
    Gateway { name: &'a str, tls: bool },
}

/// The routes a VirtualService gives a listener port in `scope`, as [`http_routes`] does for
/// sidecars. For a gateway, the caller has decided that the VirtualService is bound to it;
/// match blocks are kept when their `gateways` (resolved in the VirtualService's namespace)
/// name the gateway, or when they have none and no `sourceLabels`/`sourceNamespace` (the
/// gateway proxy's labels are not known here: such blocks are left out, as for sidecars).
pub fn http_routes_in(
    vs: &VirtualService,
    port: u16,
    dest: &dyn Destinations,
    scope: RouteScope<'_>,
) -> Vec<envoy_route::Route> {
    let mut out = Vec::new();
    for http in &vs.spec.http {
        if http.delegate.is_some() {
            // Delegating routes are replaced by their delegates' before translation
            // (`super::delegate`); one left here found no delegate, and istiod drops it.
            continue;
        }
        let mut catch_all = false;
        if http.r#match.is_empty() {
            out.extend(translate_route(vs, http, None, port, dest, scope));
            catch_all = true;
        } else {
            for m in &http.r#match {
                if let Some(r) = translate_route(vs, http, Some(m), port, dest, scope) {
                    catch_all = is_catch_all(&r);
                    out.push(r);
                    if catch_all {
                        // Routes after a catch-all can never match: istiod stops here.
                        break;
                    }
                }
            }
        }
        if catch_all {
            break;
        }
    }
    out
}

/// The default route of a service port without VirtualService: everything to the service's
/// cluster, no timeout, istiod's default retry policy, plus `hash_policy` (consistent hashing
/// of the service's DestinationRule) on the action. As istiod's `BuildDefaultHTTPOutboundRoute`
/// and `buildSidecarVirtualHostForService`, which keep the previous-hosts retry predicate even
/// with a hash policy.
#[allow(deprecated)] // max_grpc_timeout, as istiod sets it for sidecars
pub fn default_route(row: &ServicePortRow, hash_policy: Vec<HashPolicy>) -> envoy_route::Route {
    let action = envoy_route::RouteAction {
        cluster_specifier: Some(envoy_route::route_action::ClusterSpecifier::Cluster(row.cluster_name())),
        timeout: Some(duration(0)),
        retry_policy: Some(default_retry_policy()),
        max_grpc_timeout: Some(duration(0)),
        hash_policy,
        ..Default::default()
    };
    envoy_route::Route {
        name: "default".to_string(),
        r#match: Some(envoy_route::RouteMatch {
            path_specifier: Some(envoy_route::route_match::PathSpecifier::Prefix("/".to_string())),
            ..Default::default()
        }),
        action: Some(envoy_route::route::Action::Route(action)),
        decorator: Some(envoy_route::Decorator {
            operation: format!("{}:{}/*", row.fqdn(), row.port.port),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Every valid field of this VirtualService that these builders do not translate (field path
/// from the root, and why). The caller reports each once.
pub fn untranslated(vs: &VirtualService) -> Vec<FieldError> {
    let mut out = Vec::new();
    let spec = &vs.spec;
    // `tcp` and `tls` routes become the listeners of TCP-class service ports
    // (`super::listener`), per namespace and class as HTTP routes (`exportTo`, source matches).
    out.extend(super::listener::untranslated_tcp_tls(vs));
    let binds_gateways = spec.gateways.iter().any(|g| g != MESH_GATEWAY);
    for (i, http) in spec.http.iter().enumerate() {
        let p = format!("spec.http[{i}]");
        for (j, m) in http.r#match.iter().enumerate() {
            let mp = format!("{p}.match[{j}]");
            // With `gateways` set, istiod decides on the gateway names alone. Sidecars get the
            // block by their source; gateway proxies do not yet.
            if m.gateways.is_empty() && binds_gateways {
                if !m.source_labels.is_empty() {
                    out.push(FieldError::new(
                        format!("{mp}.sourceLabels"),
                        "applied to sidecars only: gateway proxies are served as proxies without these labels \
                         (the match block is left out for them)",
                    ));
                }
                if non_empty(&m.source_namespace).is_some() {
                    out.push(FieldError::new(
                        format!("{mp}.sourceNamespace"),
                        "applied to sidecars only: gateway proxies are served as proxies of another namespace \
                         (the match block is left out for them)",
                    ));
                }
            }
        }
        if let Some(redirect) = &http.redirect
            && redirect_code(redirect).is_none()
        {
            out.push(FieldError::new(
                format!("{p}.redirect.redirectCode"),
                "istiod supports 301, 302, 303, 307 and 308 only and emits a route without action, which Envoy \
                 rejects: the route is left out",
            ));
        }
        if let Some(bytes) = http.direct_response.as_ref().and_then(|d| d.body.as_ref()).and_then(|b| b.bytes.as_ref())
            && decode_base64(bytes).is_none()
        {
            out.push(FieldError::new(
                format!("{p}.directResponse.body.bytes"),
                "not valid base64: the response is sent without a body",
            ));
        }
    }
    out
}

/// Encodes a route with its `typed_per_filter_config` entries in key order. prost writes a map
/// in the iteration order of its `HashMap`, which differs between maps; equal routes must give
/// equal bytes (resource versions are content hashes). Decodes to the same `Route`.
pub fn encode_route(route: &envoy_route::Route, out: &mut Vec<u8>) {
    if route.typed_per_filter_config.len() <= 1 {
        route.encode(out).expect("a Vec grows as needed");
        return;
    }
    let mut rest = route.clone();
    let configs = std::mem::take(&mut rest.typed_per_filter_config);
    rest.encode(out).expect("a Vec grows as needed");
    // A message's encoding followed by another's merges them; map entries accumulate.
    let sorted: BTreeMap<_, _> = configs.into_iter().collect();
    for (name, config) in sorted {
        let one = envoy_route::Route { typed_per_filter_config: [(name, config)].into(), ..Default::default() };
        one.encode(out).expect("a Vec grows as needed");
    }
}

// ------------------------------------------------------------------------------------------------
// One HTTP route and match block
// ------------------------------------------------------------------------------------------------

fn applies_to_mesh(gateways: &[String]) -> bool {
    gateways.is_empty() || gateways.iter().any(|g| g == MESH_GATEWAY)
}

fn is_jwt_claim(name: &str) -> bool {
    name.to_ascii_lowercase().starts_with(JWT_CLAIM_PREFIX) && {
        let rest = &name[JWT_CLAIM_PREFIX.len()..];
        (rest.starts_with('.') && rest.len() > 1) || (rest.starts_with('[') && rest.ends_with(']') && rest.len() > 2)
    }
}

fn non_empty(s: &Option<String>) -> Option<&str> {
    s.as_deref().filter(|s| !s.is_empty())
}

/// Whether a match block applies to the scope's proxy (istiod's `sourceMatchHTTP` for gateway
/// `mesh` and the proxy's source, or for the scope's gateway), and carries no JWT claim.
fn block_applies(m: &HttpMatchRequest, port: u16, namespace: &str, scope: RouteScope<'_>) -> bool {
    if m.port.is_some_and(|p| p != 0 && p != u32::from(port)) {
        return false;
    }
    if m.headers.keys().any(|n| is_jwt_claim(n)) {
        // A dynamic metadata match on a claim the sidecar's outbound chain never extracts.
        // (Validation admits claims only in gateway-only VirtualServices: never reached.)
        return false;
    }
    if !m.gateways.is_empty() {
        return match scope {
            RouteScope::Mesh(_) => m.gateways.iter().any(|g| g == MESH_GATEWAY),
            RouteScope::Gateway { name, .. } => m
                .gateways
                .iter()
                .any(|g| g != MESH_GATEWAY && super::gateway::resolve_gateway_name(g, namespace) == name),
        };
    }
    match scope {
        RouteScope::Mesh(source) => source.selects(&m.source_labels, non_empty(&m.source_namespace)),
        // A gateway proxy's labels are not known to the gateway builders.
        RouteScope::Gateway { .. } => m.source_labels.is_empty() && non_empty(&m.source_namespace).is_none(),
    }
}

fn translate_route(
    vs: &VirtualService,
    http: &HttpRoute,
    m: Option<&HttpMatchRequest>,
    port: u16,
    dest: &dyn Destinations,
    scope: RouteScope<'_>,
) -> Option<envoy_route::Route> {
    if let Some(m) = m
        && !block_applies(m, port, &vs.namespace, scope)
    {
        return None;
    }
    let mut name = http.name.clone().unwrap_or_default();
    if let Some(match_name) = m.and_then(|m| non_empty(&m.name)) {
        name = format!("{name}.{match_name}");
    }
    let mut out = envoy_route::Route {
        name,
        r#match: Some(translate_match(m)),
        metadata: Some(config_metadata(vs)),
        stat_prefix: m.and_then(|m| non_empty(&m.stat_prefix)).unwrap_or_default().to_string(),
        ..Default::default()
    };
    let mut authority = None;
    if let Some(headers) = &http.headers {
        let ops = HeaderOps::of(headers);
        out.request_headers_to_add = ops.request_add;
        out.response_headers_to_add = ops.response_add;
        out.request_headers_to_remove = ops.request_remove;
        out.response_headers_to_remove = ops.response_remove;
        authority = ops.authority;
    }
    // The cluster the route sends everything to (fqdn, port), for the decorator.
    let mut single = None;
    if let Some(redirect) = &http.redirect {
        out.action = Some(envoy_route::route::Action::Redirect(translate_redirect(
            redirect,
            port,
            matches!(scope, RouteScope::Gateway { tls: true, .. }),
        )?));
    } else if let Some(direct) = &http.direct_response {
        out.action = Some(envoy_route::route::Action::DirectResponse(translate_direct_response(direct)));
    } else {
        single = route_to_destinations(&mut out, vs, http, authority, port, dest);
    }
    let path = match out.r#match.as_ref().and_then(|m| m.path_specifier.as_ref()) {
        Some(envoy_route::route_match::PathSpecifier::Prefix(p)) => format!("{p}*"),
        Some(envoy_route::route_match::PathSpecifier::Path(p)) => p.clone(),
        Some(envoy_route::route_match::PathSpecifier::SafeRegex(r)) => r.regex.clone(),
        _ => "/*".to_string(),
    };
    let operation = match single {
        Some((fqdn, cluster_port)) => format!("{fqdn}:{cluster_port}{path}"),
        None => format!("{}:{port}{path}", vs.name),
    };
    out.decorator = Some(envoy_route::Decorator { operation, ..Default::default() });
    if let Some(f) = &http.fault {
        out.typed_per_filter_config.insert(FAULT_FILTER.to_string(), pack_any(translate_fault(f)));
    }
    if let Some(c) = &http.cors_policy {
        out.typed_per_filter_config.insert(CORS_FILTER.to_string(), pack_any(translate_cors(c)));
    }
    Some(out)
}

/// `filter_metadata.istio.config` naming the VirtualService, as istiod's `BuildConfigInfoMetadata`.
fn config_metadata(vs: &VirtualService) -> core::Metadata {
    let path = format!("/apis/networking.istio.io/v1/namespaces/{}/virtual-service/{}", vs.namespace, vs.name);
    let config = Value { kind: Some(value::Kind::StringValue(path)) };
    let istio = Struct { fields: [("config".to_string(), config)].into() };
    core::Metadata { filter_metadata: [("istio".to_string(), istio)].into(), ..Default::default() }
}

/// A catch-all route: `/` prefix (or `.*` regex) and no header, query or metadata condition.
pub(crate) fn is_catch_all(r: &envoy_route::Route) -> bool {
    let Some(m) = &r.r#match else { return false };
    let path = match &m.path_specifier {
        Some(envoy_route::route_match::PathSpecifier::Prefix(p)) => p == "/",
        Some(envoy_route::route_match::PathSpecifier::PathSeparatedPrefix(p)) => p == "/",
        Some(envoy_route::route_match::PathSpecifier::SafeRegex(r)) => r.regex == ".*",
        _ => false,
    };
    path && m.headers.is_empty() && m.query_parameters.is_empty() && m.dynamic_metadata.is_empty()
}

fn string_matcher(m: &StringMatch) -> matcher::StringMatcher {
    use matcher::string_matcher::MatchPattern;
    let pattern = match m {
        StringMatch::Exact(s) => MatchPattern::Exact(s.clone()),
        StringMatch::Prefix(s) => MatchPattern::Prefix(s.clone()),
        StringMatch::Regex(s) => MatchPattern::SafeRegex(regex(s)),
    };
    matcher::StringMatcher { match_pattern: Some(pattern), ..Default::default() }
}

fn regex(s: &str) -> matcher::RegexMatcher {
    matcher::RegexMatcher { regex: s.to_string(), ..Default::default() }
}

/// `{}` and `regex: "*"` mean "present" (istiod's `canBeConvertedToPresentMatch`).
fn is_presence(m: Option<&StringMatch>) -> bool {
    match m {
        None => true,
        Some(StringMatch::Regex(re)) => re == "*",
        Some(_) => false,
    }
}

fn header_matcher(name: &str, m: Option<&StringMatch>) -> envoy_route::HeaderMatcher {
    use envoy_route::header_matcher::HeaderMatchSpecifier;
    let specifier = match m {
        Some(m) if !is_presence(Some(m)) => HeaderMatchSpecifier::StringMatch(string_matcher(m)),
        _ => HeaderMatchSpecifier::PresentMatch(true),
    };
    envoy_route::HeaderMatcher { name: name.to_string(), header_match_specifier: Some(specifier), ..Default::default() }
}

/// istiod's `TranslateRouteMatch` for a sidecar: headers and withoutHeaders sorted by name, then
/// `:method`, `:authority`, `:scheme`; the URI as path, prefix or regex; query parameters (in
/// name order: istiod's follow Go map order).
fn translate_match(m: Option<&HttpMatchRequest>) -> envoy_route::RouteMatch {
    use envoy_route::route_match::PathSpecifier;
    let mut out =
        envoy_route::RouteMatch { path_specifier: Some(PathSpecifier::Prefix("/".into())), ..Default::default() };
    let Some(m) = m else { return out };
    for (name, value) in &m.headers {
        out.headers.push(header_matcher(name, value.as_ref()));
    }
    for (name, value) in m.without_headers.iter().filter(|(n, _)| !is_jwt_claim(n)) {
        let mut h = header_matcher(name, value.as_ref());
        h.invert_match = true;
        // treat_missing_header_as_empty conflicts with present_match.
        h.treat_missing_header_as_empty = !is_presence(value.as_ref());
        out.headers.push(h);
    }
    out.headers.sort_by(|a, b| a.name.cmp(&b.name));
    match &m.uri {
        Some(StringMatch::Exact(p)) => out.path_specifier = Some(PathSpecifier::Path(p.clone())),
        Some(StringMatch::Prefix(p)) => out.path_specifier = Some(PathSpecifier::Prefix(p.clone())),
        Some(StringMatch::Regex(r)) => out.path_specifier = Some(PathSpecifier::SafeRegex(regex(r))),
        None => {}
    }
    out.case_sensitive = Some(BoolValue { value: !m.ignore_uri_case });
    for (name, value) in [(":method", &m.method), (":authority", &m.authority), (":scheme", &m.scheme)] {
        if let Some(value) = value {
            out.headers.push(header_matcher(name, Some(value)));
        }
    }
    for (name, value) in &m.query_params {
        use envoy_route::query_parameter_matcher::QueryParameterMatchSpecifier;
        let specifier = match value {
            Some(v) if !is_presence(Some(v)) => QueryParameterMatchSpecifier::StringMatch(string_matcher(v)),
            _ => QueryParameterMatchSpecifier::PresentMatch(true),
        };
        out.query_parameters.push(envoy_route::QueryParameterMatcher {
            name: name.clone(),
            query_parameter_match_specifier: Some(specifier),
        });
    }
    out
}

// ------------------------------------------------------------------------------------------------
// Headers
// ------------------------------------------------------------------------------------------------

/// istiod's `TranslateHeadersOperations`: `set` overwrites, `add` appends, each in key order;
/// pseudo-headers and `host` are never written, but `:authority`/`host` become the authority.
#[derive(Default)]
struct HeaderOps {
    request_add: Vec<core::HeaderValueOption>,
    response_add: Vec<core::HeaderValueOption>,
    request_remove: Vec<String>,
    response_remove: Vec<String>,
    authority: Option<String>,
}

fn is_internal_header(name: &str) -> bool {
    name.starts_with(':') || name.eq_ignore_ascii_case("host")
}

fn is_authority_header(name: &str) -> bool {
    name.eq_ignore_ascii_case(":authority") || name.eq_ignore_ascii_case("host")
}

fn header_values(headers: &BTreeMap<String, String>, append: bool) -> (Vec<core::HeaderValueOption>, Option<String>) {
    use core::header_value_option::HeaderAppendAction;
    let action =
        if append { HeaderAppendAction::AppendIfExistsOrAdd } else { HeaderAppendAction::OverwriteIfExistsOrAdd };
    let mut authority = None;
    let mut out = Vec::new();
    for (key, value) in headers {
        if is_authority_header(key) {
            authority = Some(value.clone());
        }
        if is_internal_header(key) {
            continue;
        }
        out.push(core::HeaderValueOption {
            header: Some(core::HeaderValue { key: key.clone(), value: value.clone(), ..Default::default() }),
            append_action: action as i32,
            ..Default::default()
        });
    }
    (out, authority)
}

impl HeaderOps {
    fn of(headers: &Headers) -> HeaderOps {
        let empty = HeaderOperations::default();
        let request = headers.request.as_ref().unwrap_or(&empty);
        let response = headers.response.as_ref().unwrap_or(&empty);
        let (mut request_add, set_authority) = header_values(&request.set, false);
        let (appended, add_authority) = header_values(&request.add, true);
        request_add.extend(appended);
        let (mut response_add, _) = header_values(&response.set, false);
        response_add.extend(header_values(&response.add, true).0);
        let keep = |names: &[String]| names.iter().filter(|n| !is_internal_header(n)).cloned().collect();
        HeaderOps {
            request_add,
            response_add,
            request_remove: keep(&request.remove),
            response_remove: keep(&response.remove),
            // `set` wins over `add`.
            authority: set_authority.or(add_authority).filter(|a| !a.is_empty()),
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Destinations
// ------------------------------------------------------------------------------------------------

/// A destination's cluster as istiod's `GetDestinationCluster`: the host resolved in the
/// VirtualService's namespace; the named port, else the host's only port, else the listener port.
struct Target {
    fqdn: String,
    port: u16,
    /// The port the destination names (0: none), for the hash policy lookup.
    explicit_port: u16,
    subset: String,
    cluster: String,
}

fn target(d: &Destination, vs: &VirtualService, listen_port: u16, dest: &dyn Destinations) -> Target {
    let fqdn = resolve_host(&d.host, &vs.namespace);
    let explicit_port = d.port.as_ref().and_then(|p| u16::try_from(p.number).ok()).unwrap_or(0);
    let port = if explicit_port != 0 {
        explicit_port
    } else {
        match dest.ports(&fqdn).as_deref() {
            Some([only]) => *only,
            _ => listen_port,
        }
    };
    let subset = d.subset.clone().unwrap_or_default();
    let cluster = outbound_cluster_name(port, &subset, &fqdn);
    Target { fqdn, port, explicit_port, subset, cluster }
}

/// istiod's `applyHTTPRouteDestination`: the route action with timeout, rewrite, mirrors,
/// destinations, hash policies and retry policy. Returns the (fqdn, port) of the one cluster
/// when the action has a single cluster.
#[allow(deprecated)] // max_grpc_timeout, as istiod sets it for sidecars
fn route_to_destinations(
    out: &mut envoy_route::Route,
    vs: &VirtualService,
    http: &HttpRoute,
    mut authority: Option<String>,
    port: u16,
    dest: &dyn Destinations,
) -> Option<(String, u16)> {
    use envoy_route::route_action::{ClusterSpecifier, HostRewriteSpecifier};
    let timeout = http.timeout.as_deref().and_then(parse_duration).unwrap_or(0);
    let mut action = envoy_route::RouteAction {
        timeout: Some(duration(timeout)),
        max_grpc_timeout: Some(duration(timeout)),
        ..Default::default()
    };
    if let Some(rewrite) = &http.rewrite {
        if let Some(r) = &rewrite.uri_regex_rewrite {
            action.regex_rewrite = Some(matcher::RegexMatchAndSubstitute {
                pattern: Some(regex(r.r#match.as_deref().unwrap_or_default())),
                substitution: r.rewrite.clone().unwrap_or_default(),
            });
        } else if let Some(uri) = non_empty(&rewrite.uri) {
            // For a VirtualService (not Gateway API) istiod always replaces the matched prefix;
            // with an exact path match the whole path is the prefix.
            action.prefix_rewrite = uri.to_string();
        }
        if let Some(a) = non_empty(&rewrite.authority) {
            authority = Some(a.to_string());
        }
    }
    if let Some(a) = authority {
        action.host_rewrite_specifier = Some(HostRewriteSpecifier::HostRewriteLiteral(a));
    }
    if let Some(mirror) = &http.mirror
        && let Some(fraction) = mirror_fraction(http)
    {
        action.request_mirror_policies.push(mirror_policy(target(mirror, vs, port, dest).cluster, fraction));
    }
    for mirror in &http.mirrors {
        let fraction = match &mirror.percentage {
            Some(p) if p.value.0 > 0.0 => Some(million(p)),
            Some(_) => None,
            None => Some(hundred(100)),
        };
        if let Some(fraction) = fraction {
            action
                .request_mirror_policies
                .push(mirror_policy(target(&mirror.destination, vs, port, dest).cluster, fraction));
        }
    }
    let mut single = None;
    let mut consistent_hash = false;
    if let [only] = http.route.as_slice() {
        let t = target(&only.destination, vs, port, dest);
        action.cluster_specifier = Some(ClusterSpecifier::Cluster(t.cluster.clone()));
        if let Some(headers) = &only.headers {
            let ops = HeaderOps::of(headers);
            out.request_headers_to_add.extend(ops.request_add);
            out.request_headers_to_remove.extend(ops.request_remove);
            out.response_headers_to_add.extend(ops.response_add);
            out.response_headers_to_remove.extend(ops.response_remove);
            if let Some(a) = ops.authority
                && action.host_rewrite_specifier.is_none()
            {
                action.host_rewrite_specifier = Some(HostRewriteSpecifier::HostRewriteLiteral(a));
            }
        }
        let hash = dest.hash_policy(&t.fqdn, t.explicit_port, &t.subset);
        consistent_hash = !hash.is_empty();
        action.hash_policy.extend(hash);
        single = Some((t.fqdn, t.port));
    } else {
        use envoy_route::weighted_cluster::{ClusterWeight, cluster_weight};
        let mut clusters = Vec::new();
        for d in &http.route {
            let weight = d.weight.unwrap_or(0);
            let Ok(weight) = u32::try_from(weight) else { continue };
            if weight == 0 {
                // Ignored when there are other destinations.
                continue;
            }
            let t = target(&d.destination, vs, port, dest);
            let mut c = ClusterWeight {
                name: t.cluster.clone(),
                weight: Some(UInt32Value { value: weight }),
                ..Default::default()
            };
            if let Some(headers) = &d.headers {
                let ops = HeaderOps::of(headers);
                c.request_headers_to_add = ops.request_add;
                c.request_headers_to_remove = ops.request_remove;
                c.response_headers_to_add = ops.response_add;
                c.response_headers_to_remove = ops.response_remove;
                c.host_rewrite_specifier = ops.authority.map(cluster_weight::HostRewriteSpecifier::HostRewriteLiteral);
            }
            action.hash_policy.extend(dest.hash_policy(&t.fqdn, t.explicit_port, &t.subset));
            clusters.push(c);
        }
        action.cluster_specifier =
            Some(ClusterSpecifier::WeightedClusters(envoy_route::WeightedCluster { clusters, ..Default::default() }));
    }
    action.retry_policy = retry_policy(http.retries.as_ref(), consistent_hash);
    out.action = Some(envoy_route::route::Action::Route(action));
    single
}

/// istiod's `MirrorPercent`: `mirrorPercentage`, else the deprecated `mirrorPercent`, else 100 %;
/// an explicit 0 mirrors nothing.
fn mirror_fraction(http: &HttpRoute) -> Option<FractionalPercent> {
    match (&http.mirror_percentage, http.mirror_percent) {
        (Some(p), _) => (p.value.0 > 0.0).then(|| million(p)),
        (None, Some(p)) => (p > 0).then(|| hundred(p)),
        (None, None) => Some(hundred(100)),
    }
}

/// istiod's `TranslateRequestMirrorPolicy`. istiod's DISABLE_SHADOW_HOST_SUFFIX defaults to true:
/// the mirrored request keeps its Host (no `-shadow` suffix).
fn mirror_policy(cluster: String, fraction: FractionalPercent) -> envoy_route::route_action::RequestMirrorPolicy {
    envoy_route::route_action::RequestMirrorPolicy {
        cluster,
        runtime_fraction: Some(core::RuntimeFractionalPercent { default_value: Some(fraction), ..Default::default() }),
        trace_sampled: Some(BoolValue { value: false }),
        disable_shadow_host_suffix_append: true,
        ..Default::default()
    }
}

// ------------------------------------------------------------------------------------------------
// Retries, redirect, direct response, fault, CORS
// ------------------------------------------------------------------------------------------------

/// HTTP status codes Go's `http.StatusText` knows: istiod reads these in `retryOn` as
/// retriable status codes.
fn is_known_http_status(code: i64) -> bool {
    matches!(code,
        100..=103 | 200..=208 | 226 | 300..=305 | 307 | 308 | 400..=418 | 421..=426 | 428 | 429 | 431 | 451
        | 500..=508 | 510 | 511)
}

/// istiod's `retry.ConvertPolicy`. With consistent hashing, retries may go back to the same
/// host (no previous-hosts predicate).
fn retry_policy(retries: Option<&HttpRetry>, consistent_hash: bool) -> Option<envoy_route::RetryPolicy> {
    let mut out = default_retry_policy();
    let previous_hosts = std::mem::take(&mut out.retry_host_predicate);
    if !consistent_hash {
        out.retry_host_predicate = previous_hosts.clone();
    }
    let Some(r) = retries else { return Some(out) };
    let attempts = r.attempts.unwrap_or(0);
    if attempts <= 0 {
        return None;
    }
    out.num_retries = Some(UInt32Value { value: attempts.unsigned_abs() });
    if let Some(retry_on) = non_empty(&r.retry_on) {
        let mut policies = Vec::new();
        for part in retry_on.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.parse::<i64>() {
                Ok(code) if is_known_http_status(code) => out.retriable_status_codes.push(code as u32),
                _ => policies.push(part),
            }
        }
        out.retry_on = policies.join(",");
        if !out.retriable_status_codes.is_empty() && !out.retry_on.contains("retriable-status-codes") {
            out.retry_on.push_str(",retriable-status-codes");
        }
    }
    if let Some(per_try) = r.per_try_timeout.as_deref().and_then(parse_duration) {
        out.per_try_timeout = Some(duration(per_try));
    }
    if let Some(ignore) = r.retry_ignore_previous_hosts {
        out.retry_host_predicate = if ignore { previous_hosts } else { Vec::new() };
    }
    if r.retry_remote_localities == Some(true) {
        out.retry_priority = Some(envoy_route::retry_policy::RetryPriority {
            name: "envoy.retry_priorities.previous_priorities".to_string(),
            config_type: Some(envoy_route::retry_policy::retry_priority::ConfigType::TypedConfig(pack_any(
                PreviousPrioritiesConfig { update_frequency: 2 },
            ))),
        });
    }
    if let Some(backoff) = r.backoff.as_deref().and_then(parse_duration) {
        out.retry_back_off = Some(envoy_route::retry_policy::RetryBackOff {
            base_interval: Some(duration(backoff)),
            ..Default::default()
        });
    }
    Some(out)
}

fn redirect_code(redirect: &HttpRedirect) -> Option<envoy_route::redirect_action::RedirectResponseCode> {
    use envoy_route::redirect_action::RedirectResponseCode as Code;
    match redirect.redirect_code.unwrap_or(0) {
        0 | 301 => Some(Code::MovedPermanently),
        302 => Some(Code::Found),
        303 => Some(Code::SeeOther),
        307 => Some(Code::TemporaryRedirect),
        308 => Some(Code::PermanentRedirect),
        _ => None,
    }
}

/// istiod's `ApplyRedirect`; `tls`: the route serves a gateway server with TLS settings (the
/// default scheme for eliding the port is then https). None for a redirect code istiod does
/// not support.
fn translate_redirect(redirect: &HttpRedirect, port: u16, tls: bool) -> Option<envoy_route::RedirectAction> {
    use envoy_route::redirect_action::{PathRewriteSpecifier, SchemeRewriteSpecifier};
    let mut out = envoy_route::RedirectAction {
        host_redirect: redirect.authority.clone().unwrap_or_default(),
        response_code: redirect_code(redirect)? as i32,
        ..Default::default()
    };
    out.path_rewrite_specifier = Some(match non_empty(&redirect.prefix_rewrite) {
        Some(prefix) => PathRewriteSpecifier::PrefixRewrite(prefix.to_string()),
        None => PathRewriteSpecifier::PathRedirect(redirect.uri.clone().unwrap_or_default()),
    });
    let scheme = non_empty(&redirect.scheme);
    if let Some(scheme) = scheme {
        out.scheme_rewrite_specifier = Some(SchemeRewriteSpecifier::SchemeRedirect(scheme.to_string()));
    }
    if redirect.port.is_some() || redirect.derive_port.is_some() {
        out.port_redirect = match (redirect.port, redirect.derive_port) {
            (Some(p), _) => p,
            // Envoy cannot derive the port itself, but the route serves one port.
            (None, Some(RedirectPortSelection::FromRequestPort)) => u32::from(port),
            _ => 0,
        };
        // No explicit :80 for http, nor :443 for https.
        let scheme = scheme.unwrap_or(if tls { "https" } else { "http" });
        if (out.port_redirect == 80 && scheme == "http") || (out.port_redirect == 443 && scheme == "https") {
            out.port_redirect = 0;
        }
    }
    Some(out)
}

fn translate_direct_response(direct: &HttpDirectResponse) -> envoy_route::DirectResponseAction {
    use core::data_source::Specifier;
    let body = direct.body.as_ref().and_then(|b| {
        let specifier = match (&b.string, &b.bytes) {
            (Some(s), _) => Specifier::InlineString(s.clone()),
            (None, Some(bytes)) => Specifier::InlineBytes(decode_base64(bytes)?),
            (None, None) => return None,
        };
        Some(core::DataSource { specifier: Some(specifier), ..Default::default() })
    });
    envoy_route::DirectResponseAction { status: direct.status, body, ..Default::default() }
}

/// Decodes base64 as protobuf JSON reads `bytes`: standard or URL-safe alphabet, padding optional.
fn decode_base64(s: &str) -> Option<Vec<u8>> {
    crate::model::decode_base64(s, true)
}

fn million(p: &Percent) -> FractionalPercent {
    // Go's uint32(float64) truncates, as `as` does (and saturates instead of wrapping).
    FractionalPercent { numerator: (p.value.0 * 10_000.0) as u32, denominator: DenominatorType::Million as i32 }
}

fn hundred(p: u32) -> FractionalPercent {
    FractionalPercent { numerator: p, denominator: DenominatorType::Hundred as i32 }
}

/// istiod's `TranslateFault`: a fixed delay (`percentage`, else the deprecated integer
/// `percent`) and an HTTP or gRPC abort. Validation rejects exponential delays and HTTP/2 aborts.
fn translate_fault(f: &HttpFaultInjection) -> fault::HttpFault {
    let delay = f.delay.as_ref().and_then(|d: &FaultDelay| {
        let fixed = d.fixed_delay.as_deref().and_then(parse_duration)?;
        let percentage = match &d.percentage {
            Some(p) => million(p),
            None => hundred(d.percent.map_or(0, i32::unsigned_abs)),
        };
        Some(common_fault::FaultDelay {
            percentage: Some(percentage),
            fault_delay_secifier: Some(common_fault::fault_delay::FaultDelaySecifier::FixedDelay(duration(fixed))),
        })
    });
    let abort = f.abort.as_ref().and_then(|a: &FaultAbort| {
        use fault::fault_abort::ErrorType;
        let error = match (a.http_status, a.grpc_status.as_deref()) {
            (Some(status), _) => ErrorType::HttpStatus(status.unsigned_abs()),
            (None, Some(status)) => ErrorType::GrpcStatus(grpc_code(status)?),
            (None, None) => return None,
        };
        Some(fault::FaultAbort {
            percentage: a.percentage.as_ref().map(million),
            error_type: Some(error),
            ..Default::default()
        })
    });
    fault::HttpFault { delay, abort, ..Default::default() }
}

fn grpc_code(name: &str) -> Option<u32> {
    let codes = crate::model::istio::GRPC_STATUS_CODES;
    codes.iter().position(|c| *c == name).and_then(|i| u32::try_from(i).ok())
}

/// istiod's `TranslateCORSPolicy`: enabled for all requests; `allowOrigins` (else the deprecated
/// exact `allowOrigin` list); lists joined with commas; `maxAge` in whole seconds.
fn translate_cors(c: &CorsPolicy) -> cors::CorsPolicy {
    let allow_origin_string_match = if !c.allow_origins.is_empty() {
        c.allow_origins.iter().map(string_matcher).collect()
    } else {
        c.allow_origin.iter().map(|o| string_matcher(&StringMatch::Exact(o.clone()))).collect()
    };
    cors::CorsPolicy {
        allow_origin_string_match,
        allow_methods: c.allow_methods.join(","),
        allow_headers: c.allow_headers.join(","),
        expose_headers: c.expose_headers.join(","),
        max_age: c
            .max_age
            .as_deref()
            .and_then(parse_duration)
            .map(|n| (n / 1_000_000_000).to_string())
            .unwrap_or_default(),
        allow_credentials: c.allow_credentials.map(|value| BoolValue { value }),
        filter_enabled: Some(core::RuntimeFractionalPercent {
            default_value: Some(hundred(100)),
            ..Default::default()
        }),
        forward_not_matching_preflights: Some(BoolValue {
            value: c.unmatched_preflights != Some(UnmatchedPreflights::Ignore),
        }),
        ..Default::default()
    }
}

fn duration(nanos: i64) -> Duration {
    let nanos = nanos.max(0);
    Duration { seconds: nanos / 1_000_000_000, nanos: (nanos % 1_000_000_000) as i32 }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
    use envoy_types::pb::envoy::config::route::v3::query_parameter_matcher::QueryParameterMatchSpecifier;
    use envoy_types::pb::envoy::config::route::v3::route_action::{ClusterSpecifier, HostRewriteSpecifier};
    use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
    use matcher::string_matcher::MatchPattern;
    use serde::Deserialize;
    use serde_json::json;

    use super::*;
    use crate::model::{Kind, Object, ParseOutcome, istio, parse_document};

    /// Known services: bookinfo's in `default` on 9080, httpbin on 8000, the `.prod`/`.qa`
    /// services of the istio/api examples on 9080 (reviews.qa also on 7777).
    struct TestDestinations {
        ports: HashMap<&'static str, Vec<u16>>,
        hash: HashMap<(String, u16, String), Vec<HashPolicy>>,
    }

    fn destinations() -> TestDestinations {
        let mut ports = HashMap::new();
        for host in ["reviews", "ratings", "details", "productpage"] {
            ports.insert(Box::leak(format!("{host}.default.svc.cluster.local").into_boxed_str()) as &str, vec![9080]);
        }
        ports.insert("httpbin.default.svc.cluster.local", vec![8000]);
        ports.insert("reviews.prod.svc.cluster.local", vec![9080]);
        ports.insert("ratings.prod.svc.cluster.local", vec![9080]);
        ports.insert("productpage.prod.svc.cluster.local", vec![9080]);
        ports.insert("reviews.qa.svc.cluster.local", vec![9080, 7777]);
        TestDestinations { ports, hash: HashMap::new() }
    }

    impl Destinations for TestDestinations {
        fn ports(&self, fqdn: &str) -> Option<Vec<u16>> {
            self.ports.get(fqdn).cloned()
        }
        fn hash_policy(&self, fqdn: &str, port: u16, subset: &str) -> Vec<HashPolicy> {
            self.hash.get(&(fqdn.to_string(), port, subset.to_string())).cloned().unwrap_or_default()
        }
    }

    fn header_hash(name: &str) -> HashPolicy {
        use envoy_route::route_action::hash_policy::{Header, PolicySpecifier};
        HashPolicy {
            policy_specifier: Some(PolicySpecifier::Header(Header { header_name: name.into(), ..Default::default() })),
            ..Default::default()
        }
    }

    /// The VirtualServices of a corpus file (namespace `default` unless the file sets one).
    fn corpus(file: &str) -> Vec<VirtualService> {
        let text = std::fs::read_to_string(format!("/work/shared/corpus/{file}")).unwrap();
        let mut out = Vec::new();
        for de in serde_yaml_ng::Deserializer::from_str(&text) {
            let doc = serde_json::Value::deserialize(de).unwrap();
            for outcome in parse_document(doc, "default") {
                match outcome {
                    ParseOutcome::Object(Object::VirtualService(vs)) => out.push(*vs),
                    ParseOutcome::Rejected { what, errors } => panic!("{file}: {what} rejected: {errors:?}"),
                    _ => {}
                }
            }
        }
        assert!(!out.is_empty(), "{file} has no VirtualService");
        out
    }

    fn one(file: &str) -> VirtualService {
        corpus(file).remove(0)
    }

    /// A validated VirtualService `default/<name>` from its spec.
    fn vs(name: &str, spec: serde_json::Value) -> VirtualService {
        match istio::decode(Kind::VirtualService, "default", name, None, spec) {
            Ok(Object::VirtualService(vs)) => *vs,
            other => panic!("{other:?}"),
        }
    }

    fn routes(vs: &VirtualService, port: u16) -> Vec<envoy_route::Route> {
        http_routes(vs, port, &destinations())
    }

    fn action(r: &envoy_route::Route) -> &envoy_route::RouteAction {
        match &r.action {
            Some(envoy_route::route::Action::Route(a)) => a,
            other => panic!("not a route action: {other:?}"),
        }
    }

    fn cluster(r: &envoy_route::Route) -> &str {
        match &action(r).cluster_specifier {
            Some(ClusterSpecifier::Cluster(c)) => c,
            other => panic!("not a single cluster: {other:?}"),
        }
    }

    fn weighted(r: &envoy_route::Route) -> &[envoy_route::weighted_cluster::ClusterWeight] {
        match &action(r).cluster_specifier {
            Some(ClusterSpecifier::WeightedClusters(w)) => &w.clusters,
            other => panic!("not weighted clusters: {other:?}"),
        }
    }

    fn weights(r: &envoy_route::Route) -> Vec<(&str, u32)> {
        weighted(r).iter().map(|c| (c.name.as_str(), c.weight.unwrap().value)).collect()
    }

    fn path(r: &envoy_route::Route) -> &PathSpecifier {
        r.r#match.as_ref().unwrap().path_specifier.as_ref().unwrap()
    }

    fn headers(r: &envoy_route::Route) -> &[envoy_route::HeaderMatcher] {
        &r.r#match.as_ref().unwrap().headers
    }

    fn exact(s: &str) -> Option<HeaderMatchSpecifier> {
        Some(HeaderMatchSpecifier::StringMatch(matcher::StringMatcher {
            match_pattern: Some(MatchPattern::Exact(s.into())),
            ..Default::default()
        }))
    }

    fn typed<M: Message + Default>(r: &envoy_route::Route, filter: &str) -> M {
        M::decode(&r.typed_per_filter_config[filter].value[..]).unwrap()
    }

    fn secs(seconds: i64, nanos: i32) -> Option<Duration> {
        Some(Duration { seconds, nanos })
    }

    fn fraction(numerator: u32, denominator: DenominatorType) -> Option<FractionalPercent> {
        Some(FractionalPercent { numerator, denominator: denominator as i32 })
    }

    #[test]
    fn hosts_resolve_as_istiod_resolves_short_names() {
        assert_eq!(resolve_host("reviews", "shop"), "reviews.shop.svc.cluster.local");
        for unchanged in ["reviews.prod", "reviews.prod.svc.cluster.local", "*.foo.com", "*", "::1", "wikipedia.org"] {
            assert_eq!(resolve_host(unchanged, "shop"), unchanged);
        }
    }

    #[test]
    fn header_match_then_default_route_to_subsets() {
        // bookinfo reviews-jason-v2-v3: `end-user: jason` → v2, everything else → v3.
        let r = routes(&one("bookinfo-virtual-service-reviews-jason-v2-v3.yaml"), 9080);
        assert_eq!(r.len(), 2);
        assert_eq!(headers(&r[0]).len(), 1);
        assert_eq!(
            (headers(&r[0])[0].name.as_str(), &headers(&r[0])[0].header_match_specifier),
            ("end-user", &exact("jason"))
        );
        assert!(!headers(&r[0])[0].invert_match);
        assert_eq!(path(&r[0]), &PathSpecifier::Prefix("/".into()));
        assert_eq!(r[0].r#match.as_ref().unwrap().case_sensitive, Some(BoolValue { value: true }));
        assert_eq!(cluster(&r[0]), "outbound|9080|v2|reviews.default.svc.cluster.local");
        assert_eq!(cluster(&r[1]), "outbound|9080|v3|reviews.default.svc.cluster.local");
        assert!(headers(&r[1]).is_empty());
        // A rule without match has istiod's plain `/` match (no case_sensitive).
        assert_eq!(r[1].r#match.as_ref().unwrap().case_sensitive, None);
        for route in &r {
            assert_eq!(route.name, "", "unnamed rules give unnamed routes");
            let a = action(route);
            assert_eq!(a.timeout, secs(0, 0), "no timeout unless the VirtualService sets one");
            assert_eq!(a.retry_policy, Some(default_retry_policy()), "istiod's default retry policy");
            assert_eq!(route.decorator.as_ref().unwrap().operation, "reviews.default.svc.cluster.local:9080/*");
            assert_eq!(
                route.metadata.as_ref().unwrap().filter_metadata["istio"].fields["config"].kind,
                Some(value::Kind::StringValue(
                    "/apis/networking.istio.io/v1/namespaces/default/virtual-service/reviews".into()
                ))
            );
        }
    }

    #[test]
    fn destination_port_is_explicit_else_the_only_port_else_the_listener_port() {
        let spec = |host: &str| json!({"hosts": ["x"], "http": [{"route": [{"destination": {"host": host}}]}]});
        // One port: that port, whatever the listener.
        assert_eq!(
            cluster(&routes(&vs("x", spec("httpbin")), 80)[0]),
            "outbound|8000||httpbin.default.svc.cluster.local"
        );
        // Several ports: the listener port.
        assert_eq!(cluster(&routes(&vs("x", spec("reviews.qa")), 7777)[0]), "outbound|7777||reviews.qa");
        let qa = vs("x", spec("reviews.qa.svc.cluster.local"));
        assert_eq!(cluster(&routes(&qa, 7777)[0]), "outbound|7777||reviews.qa.svc.cluster.local");
        // Unknown host: the listener port.
        assert_eq!(cluster(&routes(&vs("x", spec("wikipedia.org")), 80)[0]), "outbound|80||wikipedia.org");
        // Explicit port wins.
        let explicit = json!({"hosts": ["x"], "http": [{"route": [{"destination": {"host": "httpbin", "port": {"number": 9000}}}]}]});
        assert_eq!(cluster(&routes(&vs("x", explicit), 80)[0]), "outbound|9000||httpbin.default.svc.cluster.local");
    }

    #[test]
    fn weighted_destinations_become_weighted_clusters() {
        let r = routes(&one("bookinfo-virtual-service-reviews-80-20.yaml"), 9080);
        assert_eq!(r.len(), 1);
        assert_eq!(
            weights(&r[0]),
            [
                ("outbound|9080|v1|reviews.default.svc.cluster.local", 80),
                ("outbound|9080|v2|reviews.default.svc.cluster.local", 20)
            ]
        );
        // Several clusters: the decorator names the VirtualService, not a host.
        assert_eq!(r[0].decorator.as_ref().unwrap().operation, "reviews:9080/*");
        // api-vs-weighted-two-domains: two hosts, neither a known service.
        let r = routes(&one("api-vs-weighted-two-domains.yaml"), 80);
        assert_eq!(weights(&r[0]), [("outbound|80||dev.reviews.com", 25), ("outbound|80||reviews.com", 75)]);
        // A destination of weight 0 is left out when there are others.
        let spec = json!({"hosts": ["reviews"], "http": [{"route": [
            {"destination": {"host": "reviews", "subset": "v1"}, "weight": 100},
            {"destination": {"host": "reviews", "subset": "v2"}, "weight": 0}]}]});
        assert_eq!(
            weights(&routes(&vs("r", spec), 9080)[0]),
            [("outbound|9080|v1|reviews.default.svc.cluster.local", 100)]
        );
        // A single destination is a plain cluster, whatever its weight (mirroring: weight 100).
        let r = routes(&one("mirroring-httpbin-mirror-v2.yaml"), 8000);
        assert_eq!(cluster(&r[0]), "outbound|8000|v1|httpbin.default.svc.cluster.local");
    }

    #[test]
    fn headers_are_set_added_and_removed_per_route_and_per_destination() {
        use super::core::header_value_option::HeaderAppendAction;
        // api-vs-headers-manipulation-weighted: request `test: true` on the route; v1 strips `foo`.
        let r = routes(&one("api-vs-headers-manipulation-weighted.yaml"), 9080);
        let set = &r[0].request_headers_to_add;
        assert_eq!(set.len(), 1);
        assert_eq!(set[0].header.as_ref().map(|h| (h.key.as_str(), h.value.as_str())), Some(("test", "true")));
        assert_eq!(set[0].append_action, HeaderAppendAction::OverwriteIfExistsOrAdd as i32);
        let clusters = weighted(&r[0]);
        assert_eq!(clusters[0].name, "outbound|9080|v2|reviews.prod.svc.cluster.local");
        assert_eq!(clusters[0].weight, Some(UInt32Value { value: 25 }));
        assert!(clusters[0].response_headers_to_remove.is_empty());
        assert_eq!(clusters[1].name, "outbound|9080|v1|reviews.prod.svc.cluster.local");
        assert_eq!(clusters[1].response_headers_to_remove, ["foo"]);
        // istio-tests-rule-append-headers: `add` appends.
        let r = routes(&one("istio-tests-rule-append-headers.yaml"), 80);
        let add = &r[0].request_headers_to_add[0];
        assert_eq!(add.header.as_ref().unwrap().key, "istio-custom-header");
        assert_eq!(add.append_action, HeaderAppendAction::AppendIfExistsOrAdd as i32);
        assert_eq!(cluster(&r[0]), "outbound|80||appendh.test.istio.io");
        // `:authority`/`host` are never written as headers; they rewrite the host. The single
        // destination's headers follow the route's.
        let spec = json!({"hosts": ["reviews"], "http": [{
            "headers": {"request": {"set": {":authority": "a.example", "x-a": "1"}, "remove": ["x-b"]},
                        "response": {"add": {"x-r": "2"}}},
            "route": [{"destination": {"host": "reviews"}, "headers": {"request": {"add": {"x-c": "3"}}}}]}]});
        let r = routes(&vs("r", spec), 9080);
        let keys: Vec<_> =
            r[0].request_headers_to_add.iter().map(|h| h.header.as_ref().unwrap().key.as_str()).collect();
        assert_eq!(keys, ["x-a", "x-c"]);
        assert_eq!(r[0].request_headers_to_remove, ["x-b"]);
        assert_eq!(r[0].response_headers_to_add[0].header.as_ref().unwrap().key, "x-r");
        assert_eq!(
            action(&r[0]).host_rewrite_specifier,
            Some(HostRewriteSpecifier::HostRewriteLiteral("a.example".into()))
        );
    }

    #[test]
    fn or_of_match_blocks_gives_one_route_each_and_rewrites_the_prefix() {
        // api-vs-uri-prefix-rewrite-subset: /wpcatalog OR /consumercatalog → /newcatalog on v2; else v1.
        let r = routes(&one("api-vs-uri-prefix-rewrite-subset.yaml"), 9080);
        let summary: Vec<_> = r.iter().map(|r| (r.name.as_str(), path(r).clone(), cluster(r))).collect();
        assert_eq!(
            summary,
            [
                (
                    "reviews-v2-routes",
                    PathSpecifier::Prefix("/wpcatalog".into()),
                    "outbound|9080|v2|reviews.prod.svc.cluster.local"
                ),
                (
                    "reviews-v2-routes",
                    PathSpecifier::Prefix("/consumercatalog".into()),
                    "outbound|9080|v2|reviews.prod.svc.cluster.local"
                ),
                (
                    "reviews-v1-route",
                    PathSpecifier::Prefix("/".into()),
                    "outbound|9080|v1|reviews.prod.svc.cluster.local"
                ),
            ]
        );
        assert_eq!(action(&r[0]).prefix_rewrite, "/newcatalog");
        assert_eq!(action(&r[1]).prefix_rewrite, "/newcatalog");
        assert_eq!(action(&r[2]).prefix_rewrite, "");
        assert_eq!(r[0].decorator.as_ref().unwrap().operation, "reviews.prod.svc.cluster.local:9080/wpcatalog*");
        // api-vs-rewrite-ratings: /ratings → /v1/bookRatings, nothing else (no catch-all).
        let r = routes(&one("api-vs-rewrite-ratings.yaml"), 9080);
        assert_eq!(r.len(), 1);
        assert_eq!(action(&r[0]).prefix_rewrite, "/v1/bookRatings");
        // A named match block: `<route>.<match>`.
        let spec = json!({"hosts": ["r"], "http": [{"name": "api", "match": [{"name": "v2", "uri": {"exact": "/v2"}}],
            "rewrite": {"uri": "/", "authority": "new.host"}, "route": [{"destination": {"host": "reviews"}}]}]});
        let r = routes(&vs("r", spec), 9080);
        assert_eq!(r[0].name, "api.v2");
        assert_eq!(path(&r[0]), &PathSpecifier::Path("/v2".into()));
        assert_eq!(action(&r[0]).prefix_rewrite, "/");
        assert_eq!(
            action(&r[0]).host_rewrite_specifier,
            Some(HostRewriteSpecifier::HostRewriteLiteral("new.host".into()))
        );
        assert_eq!(r[0].decorator.as_ref().unwrap().operation, "reviews.default.svc.cluster.local:9080/v2");
        // uriRegexRewrite → regex_rewrite.
        let spec = json!({"hosts": ["r"], "http": [{"rewrite": {"uriRegexRewrite": {"match": "^/a/(.*)", "rewrite": "/b/\\1"}},
            "route": [{"destination": {"host": "reviews"}}]}]});
        let rr = action(&routes(&vs("r", spec), 9080)[0]).regex_rewrite.clone().unwrap();
        assert_eq!((rr.pattern.unwrap().regex.as_str(), rr.substitution.as_str()), ("^/a/(.*)", "/b/\\1"));
    }

    #[test]
    fn match_conditions_translate_to_envoy_matchers() {
        // api-vs-header-exact-uri-prefix-ignorecase: one block ANDing header + prefix, case-insensitive.
        let r = routes(&one("api-vs-header-exact-uri-prefix-ignorecase.yaml"), 9080);
        assert_eq!(r.len(), 1, "no catch-all added");
        assert_eq!(path(&r[0]), &PathSpecifier::Prefix("/ratings/v2/".into()));
        assert_eq!(r[0].r#match.as_ref().unwrap().case_sensitive, Some(BoolValue { value: false }));
        assert_eq!(headers(&r[0])[0].header_match_specifier, exact("jason"));
        // istio-tests-vs-cookie-regex: RE2 regex on the cookie header.
        let r = routes(&one("istio-tests-vs-cookie-regex-uri-prefix-weighted.yaml"), 80);
        let Some(HeaderMatchSpecifier::StringMatch(m)) = &headers(&r[0])[0].header_match_specifier else { panic!() };
        assert_eq!(m.match_pattern, Some(MatchPattern::SafeRegex(regex("^(.*?;)?(user=dev-123)(;.*)?"))));
        assert_eq!(cluster(&r[0]), "outbound|81||service3.default.svc.cluster.local");
        // Everything else, in one block.
        let spec = json!({"hosts": ["r"], "http": [{"match": [{
            "uri": {"regex": "/v[0-9]+/.*"},
            "method": {"exact": "GET"}, "authority": {"prefix": "api."}, "scheme": {"exact": "https"},
            "headers": {"x-b": {}, "x-a": {"prefix": "p"}, "x-star": {"regex": "*"}},
            "withoutHeaders": {"x-no": {"exact": "1"}, "x-absent": {}},
            "queryParams": {"q1": {"exact": "v"}, "q2": {"regex": "a.*"}, "q3": {}, "q4": {"prefix": "p"}}}],
            "route": [{"destination": {"host": "reviews"}}]}]});
        let r = routes(&vs("r", spec), 9080);
        let m = r[0].r#match.as_ref().unwrap();
        assert_eq!(m.path_specifier, Some(PathSpecifier::SafeRegex(regex("/v[0-9]+/.*"))));
        let names: Vec<_> = m.headers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["x-a", "x-absent", "x-b", "x-no", "x-star", ":method", ":authority", ":scheme"]);
        let h = |name: &str| m.headers.iter().find(|h| h.name == name).unwrap();
        let present = Some(HeaderMatchSpecifier::PresentMatch(true));
        assert_eq!(h("x-b").header_match_specifier, present);
        assert_eq!(h("x-star").header_match_specifier, present, "regex `*` means present");
        assert!(h("x-no").invert_match && h("x-no").treat_missing_header_as_empty);
        assert_eq!(h("x-absent").header_match_specifier, present);
        assert!(h("x-absent").invert_match && !h("x-absent").treat_missing_header_as_empty);
        assert_eq!(h(":method").header_match_specifier, exact("GET"));
        assert_eq!(h(":scheme").header_match_specifier, exact("https"));
        let Some(HeaderMatchSpecifier::StringMatch(a)) = &h(":authority").header_match_specifier else { panic!() };
        assert_eq!(a.match_pattern, Some(MatchPattern::Prefix("api.".into())));
        let q: Vec<_> =
            m.query_parameters.iter().map(|q| (q.name.as_str(), q.query_parameter_match_specifier.clone())).collect();
        let sm = |p: MatchPattern| {
            Some(QueryParameterMatchSpecifier::StringMatch(matcher::StringMatcher {
                match_pattern: Some(p),
                ..Default::default()
            }))
        };
        assert_eq!(
            q,
            [
                ("q1", sm(MatchPattern::Exact("v".into()))),
                ("q2", sm(MatchPattern::SafeRegex(regex("a.*")))),
                ("q3", Some(QueryParameterMatchSpecifier::PresentMatch(true))),
                ("q4", sm(MatchPattern::Prefix("p".into()))),
            ]
        );
        assert_eq!(r[0].decorator.as_ref().unwrap().operation, "reviews.default.svc.cluster.local:9080/v[0-9]+/.*");
    }

    #[test]
    fn port_and_gateway_conditions_select_the_routes_of_a_sidecar() {
        // A block for another port does not apply; a catch-all stops the list.
        let spec = json!({"hosts": ["reviews"], "http": [
            {"match": [{"port": 9090, "uri": {"prefix": "/a"}}, {"port": 9080, "statPrefix": "p"}], "route": [{"destination": {"host": "reviews", "subset": "v1"}}]},
            {"route": [{"destination": {"host": "reviews", "subset": "v2"}}]}]});
        let v = vs("r", spec);
        let on_9080 = routes(&v, 9080);
        assert_eq!(on_9080.len(), 1, "the port-only block is a catch-all on 9080");
        assert_eq!(cluster(&on_9080[0]), "outbound|9080|v1|reviews.default.svc.cluster.local");
        assert_eq!(on_9080[0].stat_prefix, "p");
        let on_9090 = routes(&v, 9090);
        assert_eq!(on_9090.len(), 2);
        assert_eq!(path(&on_9090[0]), &PathSpecifier::Prefix("/a".into()));
        // reviews has one port (9080): its clusters use it whatever the listener.
        assert_eq!(cluster(&on_9090[1]), "outbound|9080|v2|reviews.default.svc.cluster.local");
        // api-vs-bound-to-gateway-and-mesh: bound to a gateway and `mesh`: sidecars get both rules.
        let both = corpus("api-vs-bound-to-gateway-and-mesh.yaml");
        let r = routes(&both[0], 9080);
        assert_eq!(r.len(), 2);
        assert_eq!(headers(&r[0])[0].name, "cookie");
        assert_eq!(headers(&r[0])[0].header_match_specifier, exact("user=dev-123"));
        assert_eq!(cluster(&r[0]), "outbound|7777||reviews.qa.svc.cluster.local");
        assert_eq!(
            weights(&r[1]),
            [
                ("outbound|9080||reviews.prod.svc.cluster.local", 80),
                ("outbound|9080||reviews.qa.svc.cluster.local", 20)
            ]
        );
        // Bound to a gateway only: nothing for sidecars (bookinfo-mongo, and bookinfo-rule without mesh).
        assert!(routes(&both[1], 27017).is_empty());
        let mut gateway_only = both[0].clone();
        gateway_only.spec.gateways.retain(|g| g != "mesh");
        assert!(routes(&gateway_only, 9080).is_empty());
        // A match block's own gateways: without `mesh` it does not apply to sidecars.
        let spec = json!({"hosts": ["reviews"], "http": [
            {"match": [{"gateways": ["my-gw"]}, {"gateways": ["mesh"], "sourceLabels": {"app": "x"}, "uri": {"prefix": "/m"}}],
             "route": [{"destination": {"host": "reviews", "subset": "v1"}}]}]});
        let r = routes(&vs("r", spec), 9080);
        assert_eq!(r.len(), 1);
        assert_eq!(path(&r[0]), &PathSpecifier::Prefix("/m".into()), "with gateways, istiod ignores sourceLabels");
    }

    #[test]
    fn source_blocks_are_served_to_the_proxies_they_select() {
        // api-vs-fault-delay-sourcelabels: the only block needs env=prod → no routes (default
        // route) for a proxy without it; a proxy with env=prod (and more) gets the delayed route.
        let v = one("api-vs-fault-delay-sourcelabels.yaml");
        assert!(routes(&v, 9080).is_empty());
        assert!(untranslated(&v).is_empty(), "a sidecar-only VirtualService: all applied");
        assert!(depends_on_labels(&v));
        let prod = Labels::from([("env".to_string(), "prod".to_string()), ("app".to_string(), "web".to_string())]);
        let source = Source { namespace: Some("default"), labels: Some(&prod) };
        let r = http_routes_for(&v, 9080, &destinations(), source);
        assert_eq!(r.len(), 1);
        assert!(r[0].typed_per_filter_config.contains_key(FAULT_FILTER), "the delay applies to env=prod");
        let dev = Labels::from([("env".to_string(), "dev".to_string())]);
        let source = Source { namespace: Some("default"), labels: Some(&dev) };
        assert!(http_routes_for(&v, 9080, &destinations(), source).is_empty(), "env=dev: not selected");

        // sourceNamespace: only proxies of that namespace get the block.
        let spec = json!({"hosts": ["reviews"], "http": [
            {"match": [{"sourceNamespace": "shop"}, {"uri": {"prefix": "/x"}}], "route": [{"destination": {"host": "reviews", "subset": "v1"}}]},
            {"route": [{"destination": {"host": "reviews", "subset": "v2"}}]}]});
        let v = vs("r", spec);
        assert!(!depends_on_labels(&v));
        assert_eq!(source_namespaces(&v).into_iter().collect::<Vec<_>>(), ["shop"]);
        let r = routes(&v, 9080);
        assert_eq!(r.len(), 2);
        assert_eq!(path(&r[0]), &PathSpecifier::Prefix("/x".into()));
        let shop = Source { namespace: Some("shop"), labels: None };
        let r = http_routes_for(&v, 9080, &destinations(), shop);
        assert_eq!(r.len(), 1, "the shop block is a catch-all: istiod stops there");
        assert_eq!(cluster(&r[0]), "outbound|9080|v1|reviews.default.svc.cluster.local");

        // Both in one block: both must hold.
        let spec = json!({"hosts": ["reviews"], "http": [
            {"match": [{"sourceNamespace": "shop", "sourceLabels": {"app": "web"}}], "route": [{"destination": {"host": "reviews", "subset": "v1"}}]}]});
        let v = vs("r", spec);
        let web = Labels::from([("app".to_string(), "web".to_string())]);
        let routes_for =
            |ns, labels| http_routes_for(&v, 9080, &destinations(), Source { namespace: Some(ns), labels });
        assert_eq!(routes_for("shop", Some(&web)).len(), 1);
        assert!(routes_for("default", Some(&web)).is_empty());
        assert!(routes_for("shop", None).is_empty());

        // Bound to a gateway too: the gateway proxies do not get source blocks yet (reported).
        let spec = json!({"hosts": ["reviews"], "gateways": ["mesh", "gw"], "http": [
            {"match": [{"sourceLabels": {"app": "web"}}], "route": [{"destination": {"host": "reviews", "subset": "v1"}}]}]});
        let fields: Vec<String> = untranslated(&vs("r", spec)).into_iter().map(|e| e.field).collect();
        assert_eq!(fields, ["spec.http[0].match[0].sourceLabels"]);
    }

    #[test]
    fn retries_follow_istiod_convert_policy() {
        // api-vs-retries: 3 attempts, 2 s per try, on gateway-error,connect-failure,refused-stream.
        let r = routes(&one("api-vs-retries.yaml"), 9080);
        let p = action(&r[0]).retry_policy.clone().unwrap();
        assert_eq!(p.num_retries, Some(UInt32Value { value: 3 }));
        assert_eq!(p.per_try_timeout, secs(2, 0));
        assert_eq!(p.retry_on, "gateway-error,connect-failure,refused-stream");
        assert!(p.retriable_status_codes.is_empty(), "a 500 is not retried");
        assert_eq!(p.host_selection_retry_max_attempts, 5);
        assert_eq!(p.retry_host_predicate[0].name, "envoy.retry_host_predicates.previous_hosts");
        let with = |retries: serde_json::Value| {
            let spec = json!({"hosts": ["reviews"], "http": [{"retries": retries, "route": [{"destination": {"host": "reviews"}}]}]});
            action(&routes(&vs("r", spec), 9080)[0]).retry_policy.clone()
        };
        // Status codes go to retriable_status_codes, and retry_on gets retriable-status-codes.
        let p = with(json!({"attempts": 2, "retryOn": "503,connect-failure,429"})).unwrap();
        assert_eq!(
            (p.retry_on.as_str(), p.retriable_status_codes),
            ("connect-failure,retriable-status-codes", vec![503, 429])
        );
        assert_eq!(with(json!({"attempts": 0})), None, "attempts 0 disables retries");
        let p = with(
            json!({"attempts": 1, "retryRemoteLocalities": true, "retryIgnorePreviousHosts": false, "backoff": "25ms"}),
        )
        .unwrap();
        assert_eq!(p.retry_on, "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes");
        let priority = p.retry_priority.unwrap();
        assert_eq!(priority.name, "envoy.retry_priorities.previous_priorities");
        let Some(envoy_route::retry_policy::retry_priority::ConfigType::TypedConfig(any)) = priority.config_type else {
            panic!()
        };
        assert_eq!(PreviousPrioritiesConfig::decode(&any.value[..]).unwrap().update_frequency, 2);
        assert!(p.retry_host_predicate.is_empty());
        assert_eq!(p.retry_back_off.unwrap().base_interval, secs(0, 25_000_000));
    }

    #[test]
    fn consistent_hash_of_the_destination_goes_on_the_action_and_retries_stay_on_the_host() {
        let mut d = destinations();
        let fqdn = "reviews.default.svc.cluster.local".to_string();
        d.hash.insert((fqdn.clone(), 0, "v1".into()), vec![header_hash("x-user")]);
        d.hash.insert((fqdn.clone(), 9080, "v2".into()), vec![header_hash("x-port")]);
        let single = vs(
            "r",
            json!({"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews", "subset": "v1"}}]}]}),
        );
        let r = http_routes(&single, 9080, &d);
        assert_eq!(action(&r[0]).hash_policy, [header_hash("x-user")]);
        let p = action(&r[0]).retry_policy.clone().unwrap();
        assert!(p.retry_host_predicate.is_empty(), "with consistent hashing, retries may reuse the host");
        assert_eq!(p.num_retries, Some(UInt32Value { value: 2 }));
        // Weighted: every destination's policy; the explicit port is passed to the lookup.
        let split = vs(
            "r",
            json!({"hosts": ["reviews"], "http": [{"route": [
            {"destination": {"host": "reviews", "subset": "v1"}, "weight": 50},
            {"destination": {"host": "reviews", "subset": "v2", "port": {"number": 9080}}, "weight": 50}]}]}),
        );
        let r = http_routes(&split, 9080, &d);
        assert_eq!(action(&r[0]).hash_policy, [header_hash("x-user"), header_hash("x-port")]);
        assert!(!action(&r[0]).retry_policy.as_ref().unwrap().retry_host_predicate.is_empty());
    }

    #[test]
    #[allow(deprecated)] // max_grpc_timeout, as istiod sets it for sidecars
    fn timeouts_are_route_timeouts_and_bound_grpc_timeouts() {
        let r = routes(&one("timeouts-reviews-v2-0.5s.yaml"), 9080);
        let a = action(&r[0]);
        assert_eq!(a.timeout, secs(0, 500_000_000));
        // istiod bounds gRPC timeouts with the deprecated `max_grpc_timeout` on sidecars: with
        // `max_stream_duration` set instead, Envoy 1.40 no longer applies the route `timeout`
        // (a 2 s backend answered 200 behind a 0.5 s timeout; tests/it/routing_e2e.rs).
        assert_eq!(a.max_grpc_timeout, secs(0, 500_000_000));
        assert_eq!(a.max_stream_duration, None);
        assert_eq!(cluster(&r[0]), "outbound|9080|v2|reviews.default.svc.cluster.local");
        // A FQDN host ignores the VirtualService's namespace.
        let v = one("api-vs-timeout-fqdn-other-namespace.yaml");
        assert_eq!(v.namespace, "istio-system");
        let r = routes(&v, 9080);
        assert_eq!(cluster(&r[0]), "outbound|9080||productpage.prod.svc.cluster.local");
        assert_eq!(action(&r[0]).timeout, secs(5, 0));
        let r = routes(&one("egress-virtualservice-httpbin-ext-timeout.yaml"), 80);
        assert_eq!((cluster(&r[0]), action(&r[0]).timeout), ("outbound|80||httpbin.org", secs(3, 0)));
    }

    #[test]
    fn faults_go_to_the_fault_filter_of_the_route() {
        use common_fault::fault_delay::FaultDelaySecifier;
        use fault::fault_abort::ErrorType;
        // ratings-test-delay: jason's requests delayed 7 s (100 %); the default rule has no fault.
        let r = routes(&one("bookinfo-virtual-service-ratings-test-delay.yaml"), 9080);
        let f: fault::HttpFault = typed(&r[0], FAULT_FILTER);
        let delay = f.delay.unwrap();
        assert_eq!(delay.fault_delay_secifier, Some(FaultDelaySecifier::FixedDelay(Duration { seconds: 7, nanos: 0 })));
        assert_eq!(delay.percentage, fraction(1_000_000, DenominatorType::Million));
        assert!(f.abort.is_none());
        assert!(r[1].typed_per_filter_config.is_empty());
        // The deprecated integer `percent`.
        let r = routes(&one("timeouts-ratings-delay-2s-deprecated-percent.yaml"), 9080);
        let delay = typed::<fault::HttpFault>(&r[0], FAULT_FILTER).delay.unwrap();
        assert_eq!(delay.percentage, fraction(100, DenominatorType::Hundred));
        assert_eq!(delay.fault_delay_secifier, Some(FaultDelaySecifier::FixedDelay(Duration { seconds: 2, nanos: 0 })));
        // 0.1 % of requests aborted with 400.
        let r = routes(&one("api-vs-fault-abort-fraction.yaml"), 9080);
        let abort = typed::<fault::HttpFault>(&r[0], FAULT_FILTER).abort.unwrap();
        assert_eq!(
            (abort.error_type, abort.percentage),
            (Some(ErrorType::HttpStatus(400)), fraction(1000, DenominatorType::Million))
        );
        // details-v1: the first rule has no match: a catch-all, the second rule is never emitted.
        let r = routes(&one("bookinfo-fault-injection-details-v1.yaml"), 9080);
        assert_eq!(r.len(), 1);
        let abort = typed::<fault::HttpFault>(&r[0], FAULT_FILTER).abort.unwrap();
        assert_eq!(abort.error_type, Some(ErrorType::HttpStatus(555)));
        // gRPC status by name.
        let spec = json!({"hosts": ["r"], "http": [{"fault": {"abort": {"grpcStatus": "UNAVAILABLE", "percentage": {"value": 50}}},
            "route": [{"destination": {"host": "reviews"}}]}]});
        let abort = typed::<fault::HttpFault>(&routes(&vs("r", spec), 9080)[0], FAULT_FILTER).abort.unwrap();
        assert_eq!(abort.error_type, Some(ErrorType::GrpcStatus(14)));
    }

    #[test]
    fn mirrors_keep_the_host_and_take_a_fraction() {
        // mirroring-httpbin-mirror-v2: everything to v1, 100 % mirrored to v2.
        let r = routes(&one("mirroring-httpbin-mirror-v2.yaml"), 8000);
        let m = &action(&r[0]).request_mirror_policies;
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].cluster, "outbound|8000|v2|httpbin.default.svc.cluster.local");
        assert_eq!(
            m[0].runtime_fraction.as_ref().unwrap().default_value,
            fraction(1_000_000, DenominatorType::Million)
        );
        assert!(m[0].disable_shadow_host_suffix_append, "istiod's DISABLE_SHADOW_HOST_SUFFIX defaults to true");
        assert_eq!(m[0].trace_sampled, Some(BoolValue { value: false }));
        let mirrors = |extra: serde_json::Value| {
            let mut http = json!({"route": [{"destination": {"host": "reviews"}}]});
            http.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            let spec = json!({"hosts": ["r"], "http": [http]});
            action(&routes(&vs("r", spec), 9080)[0]).request_mirror_policies.clone()
        };
        let m = mirrors(json!({"mirror": {"host": "reviews", "subset": "v2"}, "mirrorPercent": 50}));
        assert_eq!(m[0].runtime_fraction.as_ref().unwrap().default_value, fraction(50, DenominatorType::Hundred));
        let m = mirrors(json!({"mirror": {"host": "reviews"}}));
        assert_eq!(m[0].runtime_fraction.as_ref().unwrap().default_value, fraction(100, DenominatorType::Hundred));
        assert!(mirrors(json!({"mirror": {"host": "reviews"}, "mirrorPercentage": {"value": 0}})).is_empty());
        let m = mirrors(
            json!({"mirrors": [{"destination": {"host": "httpbin"}}, {"destination": {"host": "ratings"}, "percentage": {"value": 12.5}}]}),
        );
        assert_eq!(m[0].cluster, "outbound|8000||httpbin.default.svc.cluster.local");
        assert_eq!(m[0].runtime_fraction.as_ref().unwrap().default_value, fraction(100, DenominatorType::Hundred));
        assert_eq!(m[1].runtime_fraction.as_ref().unwrap().default_value, fraction(125_000, DenominatorType::Million));
    }

    #[test]
    fn cors_policy_goes_to_the_cors_filter_of_the_route() {
        let r = routes(&one("api-vs-cors.yaml"), 9080);
        let c: cors::CorsPolicy = typed(&r[0], CORS_FILTER);
        assert_eq!(c.allow_origin_string_match, [string_matcher(&StringMatch::Exact("https://example.com".into()))]);
        assert_eq!(
            (c.allow_methods.as_str(), c.allow_headers.as_str(), c.max_age.as_str()),
            ("POST,GET", "X-Foo-Bar", "86400")
        );
        assert_eq!(c.allow_credentials, Some(BoolValue { value: false }));
        assert_eq!(c.filter_enabled.unwrap().default_value, fraction(100, DenominatorType::Hundred));
        assert_eq!(c.forward_not_matching_preflights, Some(BoolValue { value: true }));
        let r = routes(&one("istio-tests-rule-cors-policy.yaml"), 80);
        let c: cors::CorsPolicy = typed(&r[0], CORS_FILTER);
        assert_eq!((c.expose_headers.as_str(), c.max_age.as_str()), ("x-custom-header", "300"));
        assert_eq!(c.allow_methods, "POST,GET,OPTIONS");
        assert_eq!(c.allow_credentials, Some(BoolValue { value: true }));
        // The deprecated exact list, and unmatched preflights ignored.
        let spec = json!({"hosts": ["r"], "http": [{"corsPolicy": {"allowOrigin": ["https://a", "https://b"], "unmatchedPreflights": "IGNORE"},
            "route": [{"destination": {"host": "reviews"}}]}]});
        let c: cors::CorsPolicy = typed(&routes(&vs("r", spec), 9080)[0], CORS_FILTER);
        let origins: Vec<_> = c.allow_origin_string_match.iter().map(|m| m.match_pattern.clone()).collect();
        assert_eq!(
            origins,
            [Some(MatchPattern::Exact("https://a".into())), Some(MatchPattern::Exact("https://b".into()))]
        );
        assert_eq!(c.forward_not_matching_preflights, Some(BoolValue { value: false }));
        assert_eq!(c.allow_credentials, None);
    }

    #[test]
    fn redirects_and_direct_responses_answer_from_the_proxy() {
        use envoy_route::redirect_action::{PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier};
        // istio-tests-rule-redirect: `testredirect: enabled` → 301 to redirect2.test.istio.io/new/path.
        let r = routes(&one("istio-tests-rule-redirect.yaml"), 8080);
        assert_eq!(r.len(), 1);
        let Some(envoy_route::route::Action::Redirect(redirect)) = &r[0].action else { panic!("{r:?}") };
        assert_eq!(redirect.host_redirect, "redirect2.test.istio.io");
        assert_eq!(redirect.path_rewrite_specifier, Some(PathRewriteSpecifier::PathRedirect("/new/path".into())));
        assert_eq!(redirect.response_code, RedirectResponseCode::MovedPermanently as i32);
        assert_eq!(r[0].decorator.as_ref().unwrap().operation, "redirect:8080/*");
        let redirect_of = |redirect: serde_json::Value, port: u16| {
            let v = vs("r", json!({"hosts": ["r"], "http": [{"redirect": redirect}]}));
            routes(&v, port).into_iter().next().map(|r| match r.action {
                Some(envoy_route::route::Action::Redirect(a)) => a,
                other => panic!("{other:?}"),
            })
        };
        let a = redirect_of(json!({"scheme": "https", "port": 8443, "redirectCode": 302}), 80).unwrap();
        assert_eq!((a.port_redirect, a.response_code), (8443, RedirectResponseCode::Found as i32));
        assert_eq!(a.scheme_rewrite_specifier, Some(SchemeRewriteSpecifier::SchemeRedirect("https".into())));
        assert_eq!(redirect_of(json!({"port": 80}), 9080).unwrap().port_redirect, 0, "no :80 for http");
        assert_eq!(redirect_of(json!({"scheme": "https", "port": 443}), 80).unwrap().port_redirect, 0);
        assert_eq!(
            redirect_of(json!({"derivePort": "FROM_REQUEST_PORT", "uri": "/"}), 9080).unwrap().port_redirect,
            9080
        );
        assert_eq!(
            redirect_of(json!({"derivePort": "FROM_PROTOCOL_DEFAULT", "uri": "/"}), 9080).unwrap().port_redirect,
            0
        );
        assert_eq!(
            redirect_of(json!({"uri": "/", "redirectCode": 308}), 80).unwrap().response_code,
            RedirectResponseCode::PermanentRedirect as i32
        );
        // A 3xx code istiod cannot express: left out and reported.
        assert_eq!(redirect_of(json!({"uri": "/", "redirectCode": 304}), 80), None);
        let v = vs("r", json!({"hosts": ["r"], "http": [{"redirect": {"uri": "/", "redirectCode": 304}}]}));
        assert_eq!(untranslated(&v)[0].field, "spec.http[0].redirect.redirectCode");
        // Direct responses: string or base64 bytes.
        let direct = |body: serde_json::Value| {
            let v = vs("r", json!({"hosts": ["r"], "http": [{"directResponse": {"status": 418, "body": body}}]}));
            match routes(&v, 80).remove(0).action {
                Some(envoy_route::route::Action::DirectResponse(d)) => d,
                other => panic!("{other:?}"),
            }
        };
        let d = direct(json!({"string": "teapot"}));
        assert_eq!(d.status, 418);
        assert_eq!(d.body.unwrap().specifier, Some(core::data_source::Specifier::InlineString("teapot".into())));
        let d = direct(json!({"bytes": "aGVsbG8gd29ybGQ="}));
        assert_eq!(d.body.unwrap().specifier, Some(core::data_source::Specifier::InlineBytes(b"hello world".to_vec())));
        assert_eq!(decode_base64("aGk"), Some(b"hi".to_vec()));
        assert_eq!(decode_base64("-_8"), Some(vec![0xfb, 0xff]));
        assert_eq!(decode_base64("a"), None);
        assert_eq!(decode_base64("a*=="), None);
    }

    #[test]
    fn delegates_tcp_sources_and_export_to_are_applied_not_reported() {
        let spec = json!({"hosts": ["reviews"], "http": [
            {"match": [{"uri": {"prefix": "/d"}}], "delegate": {"name": "d", "namespace": "x"}},
            {"match": [{"uri": {"prefix": "/w"}}], "route": [{"destination": {"host": "reviews", "subset": "v2"}}]}],
            "tcp": [{"match": [{"sourceLabels": {"app": "x"}}], "route": [{"destination": {"host": "reviews"}}]}],
            "exportTo": ["."]});
        let v = vs("r", spec);
        let r = routes(&v, 9080);
        assert_eq!(r.len(), 1);
        assert_eq!(path(&r[0]), &PathSpecifier::Prefix("/w".into()));
        assert_eq!(cluster(&r[0]), "outbound|9080|v2|reviews.default.svc.cluster.local");
        let fields: Vec<_> = untranslated(&v).into_iter().map(|e| e.field).collect();
        // A delegating route is merged before translation (`super::super::delegate`), tcp
        // source matches and exportTo are applied per namespace and class: nothing to report.
        assert!(fields.is_empty(), "{fields:?}");
        // Without tcp or tls routes, exportTo is applied (per namespace) and not reported.
        let http_only = vs(
            "r",
            json!({"hosts": ["reviews"], "exportTo": ["."],
            "http": [{"route": [{"destination": {"host": "reviews"}}]}]}),
        );
        assert!(untranslated(&http_only).is_empty());
        assert!(untranslated(&one("bookinfo-virtual-service-reviews-jason-v2-v3.yaml")).is_empty());
    }

    #[test]
    fn default_route_carries_the_hash_policy() {
        use crate::model::k8s::{Protocol, ServicePort, TargetPort};
        let row = ServicePortRow {
            namespace: "default".into(),
            service: "reviews".into(),
            port: ServicePort {
                name: "http".into(),
                port: 9080,
                protocol: Protocol::Tcp,
                target_port: TargetPort::Number(9080),
                app_protocol: None,
            },
            cluster_ip: None,
            headless: false,
            entry: None,
            export_to: Vec::new(),
        };
        let r = default_route(&row, vec![header_hash("x-user")]);
        assert_eq!(r.name, "default");
        assert_eq!(cluster(&r), "outbound|9080||reviews.default.svc.cluster.local");
        assert_eq!(action(&r).hash_policy, [header_hash("x-user")]);
        let p = action(&r).retry_policy.clone().unwrap();
        assert_eq!(p, default_retry_policy());
        assert_eq!(p.retry_host_predicate[0].name, "envoy.retry_host_predicates.previous_hosts", "kept with a hash");
        // istiod's DefaultPolicy (retry.go): 2 retries, no retriable status codes (503 dropped in 1.26).
        assert_eq!(p.num_retries, Some(UInt32Value { value: 2 }));
        assert_eq!(p.retry_on, "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes");
        assert!(p.retriable_status_codes.is_empty());
        assert_eq!(p.host_selection_retry_max_attempts, 5);
        assert_eq!(r.decorator.unwrap().operation, "reviews.default.svc.cluster.local:9080/*");
    }

    #[test]
    fn routes_with_fault_and_cors_encode_to_the_same_bytes_every_time() {
        let spec = json!({"hosts": ["r"], "http": [{"fault": {"delay": {"fixedDelay": "1s", "percent": 5}},
            "corsPolicy": {"allowOrigins": [{"prefix": "https://"}]}, "route": [{"destination": {"host": "reviews"}}]}]});
        let v = vs("r", spec);
        let encodings: std::collections::BTreeSet<Vec<u8>> = (0..16)
            .map(|_| {
                let mut out = Vec::new();
                encode_route(&routes(&v, 9080)[0], &mut out);
                out
            })
            .collect();
        assert_eq!(encodings.len(), 1);
        let decoded = envoy_route::Route::decode(&encodings.first().unwrap()[..]).unwrap();
        assert_eq!(decoded, routes(&v, 9080)[0]);
        assert_eq!(decoded.typed_per_filter_config.len(), 2);
    }
}
