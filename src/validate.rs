//! `meshflow validate`: the intake checks of `serve`, plus the warnings istiod's validating
//! webhook and `istioctl analyze` give for objects that are valid but probably wrong.
//!
//! Errors are exactly what intake rejects (the config-directory loader, [`crate::source::file`],
//! reads every file; nothing here parses YAML a second way). Warnings never reject anything;
//! they are plain functions over parsed objects so `serve` can report them too:
//!
//! - [`object_warnings`]: what one object says about itself. Deprecated fields (Istio
//!   `pkg/config/validation/validation.go`, `virtualservice.go` and the `deprecation` analyzer),
//!   unreachable and ineffective HTTP/TCP/TLS rules (`analyzeUnreachableHTTPRules` and
//!   friends in `validation.go`), and the other warnings of Istio's webhook for the kinds
//!   meshflow reads.
//! - [`References`]: what a set of objects says about each other. A host that matches no
//!   Service and no ServiceEntry, and a destination subset that no DestinationRule defines
//!   (`istioctl analyze`'s `virtualservice.DestinationHostAnalyzer` and
//!   `virtualservice.DestinationRuleAnalyzer`, `pkg/config/analysis/analyzers/virtualservice`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use crate::model::istio::{
    self, CorsPolicy, Destination, HttpMatchRequest, HttpRoute, L4MatchAttributes, LoadBalancerSettings,
    OutlierDetection, SimpleLb, StringMatch, TrafficPolicy,
};
use crate::model::{Object, ObjectKey, ParseOutcome};
use crate::source::file;

/// The Kubernetes cluster domain Service hosts end with.
const CLUSTER_DOMAIN: &str = "svc.cluster.local";

/// One warning about a valid object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Warning {
    /// The Istio analysis message this corresponds to (`Deprecated`,
    /// `VirtualServiceUnreachableRule`, `VirtualServiceIneffectiveMatch`,
    /// `ReferencedResourceNotFound`), or `Validation` for a plain webhook warning.
    pub code: &'static str,
    /// Dotted path from the object root, as in [`crate::model::FieldError`].
    pub field: String,
    pub message: String,
}

impl Warning {
    fn new(code: &'static str, field: impl Into<String>, message: impl Into<String>) -> Self {
        Warning { code, field: field.into(), message: message.into() }
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} [{}]", self.field, self.message, self.code)
    }
}

const DEPRECATED: &str = "Deprecated";
const UNREACHABLE: &str = "VirtualServiceUnreachableRule";
const INEFFECTIVE: &str = "VirtualServiceIneffectiveMatch";
const NOT_FOUND: &str = "ReferencedResourceNotFound";
const VALIDATION: &str = "Validation";

/// The `deprecation` analyzer's wording: `Deprecated: <old> is deprecated; use <new>`.
fn replaced(field: String, old: &str, new: &str) -> Warning {
    Warning::new(DEPRECATED, field, format!("Deprecated: {old} is deprecated; use {new}"))
}

fn at(path: &str, field: &str) -> String {
    format!("{path}.{field}")
}

fn idx(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

// ------------------------------------------------------------------------------------------------
// Warnings of one object
// ------------------------------------------------------------------------------------------------

/// Every warning one object gives on its own (no other object is consulted).
pub fn object_warnings(object: &Object) -> Vec<Warning> {
    let mut w = Vec::new();
    match object {
        Object::VirtualService(vs) => virtual_service_warnings(&mut w, &vs.spec),
        Object::DestinationRule(dr) => destination_rule_warnings(&mut w, &dr.spec),
        Object::Gateway(gw) => gateway_warnings(&mut w, &gw.spec),
        Object::ServiceEntry(se) => service_entry_warnings(&mut w, &se.spec),
        _ => {}
    }
    w
}

fn virtual_service_warnings(w: &mut Vec<Warning>, spec: &istio::VirtualServiceSpec) {
    legacy_gateway_names(w, "spec.gateways", &spec.gateways);
    for (i, route) in spec.http.iter().enumerate() {
        let p = idx("spec.http", i);
        if route.mirror_percent.is_some() {
            w.push(Warning::new(
                DEPRECATED,
                at(&p, "mirrorPercent"),
                r#"using deprecated setting "mirrorPercent", use "mirrorPercentage" instead"#,
            ));
        }
        if let Some(delay) = route.fault.as_ref().and_then(|f| f.delay.as_ref())
            && delay.percent.is_some_and(|p| p > 0)
        {
            w.push(replaced(
                at(&p, "fault.delay.percent"),
                "HTTPRoute.fault.delay.percent",
                "HTTPRoute.fault.delay.percentage",
            ));
        }
        if let Some(CorsPolicy { allow_origin, .. }) = &route.cors_policy
            && !allow_origin.is_empty()
        {
            w.push(replaced(at(&p, "corsPolicy.allowOrigin"), "CorsPolicy.allowOrigin", "CorsPolicy.allowOrigins"));
        }
        if let Some(body) = route.direct_response.as_ref().and_then(|d| d.body.as_ref()) {
            // `bytes` is base64 in YAML; Istio measures the decoded bytes.
            let size = body.string.as_ref().map(String::len).or(body.bytes.as_ref().map(|b| b.len() / 4 * 3));
            // Above 1 MB intake rejects the object; between 100 kB and 1 MB Istio warns.
            if size.is_some_and(|s| s > 100 * 1024) {
                w.push(Warning::new(
                    VALIDATION,
                    at(&p, "directResponse.body"),
                    "large direct_responses may impact control plane performance",
                ));
            }
        }
        for (j, m) in route.r#match.iter().enumerate() {
            legacy_gateway_names(w, &at(&idx(&at(&p, "match"), j), "gateways"), &m.gateways);
        }
    }
    for (i, route) in spec.tls.iter().enumerate() {
        for (j, m) in route.r#match.iter().enumerate() {
            for (k, sni) in m.sni_hosts.iter().enumerate() {
                if sni.parse::<IpAddr>().is_ok() {
                    w.push(Warning::new(
                        VALIDATION,
                        idx(&at(&idx(&at(&idx("spec.tls", i), "match"), j), "sniHosts"), k),
                        format!(
                            "using an IP address ({sni:?}) goes against SNI spec and most clients do not support this"
                        ),
                    ));
                }
            }
        }
    }
    unreachable_http_rules(w, &spec.http);
    let tcp: Vec<_> = spec.tcp.iter().map(|r| (None, r.r#match.clone())).collect();
    unreachable_rules(w, "spec.tcp", &tcp, |m: &L4MatchAttributes| *m == L4MatchAttributes::default());
    let tls: Vec<_> = spec.tls.iter().map(|r| (None, r.r#match.clone())).collect();
    unreachable_rules(w, "spec.tls", &tls, |_| false);
}

/// `validateGatewayNames`: a name without a namespace but with a dot is the legacy
/// `name.namespace` form. As in Istio, only the first name without a `/` is looked at.
fn legacy_gateway_names(w: &mut Vec<Warning>, path: &str, names: &[String]) {
    if let Some((i, name)) = names.iter().enumerate().find(|(_, n)| !n.contains('/')) {
        let mut parts = name.split('.');
        if let (Some(gw), Some(ns)) = (parts.next(), parts.next()) {
            w.push(Warning::new(
                VALIDATION,
                idx(path, i),
                format!(
                    "using legacy gatewayName format {name:?}; prefer the <namespace>/<name> format: {:?}",
                    format!("{ns}/{gw}")
                ),
            ));
        }
    }
}

fn destination_rule_warnings(w: &mut Vec<Warning>, spec: &istio::DestinationRuleSpec) {
    if let Some(policy) = &spec.traffic_policy {
        traffic_policy_warnings(w, "spec.trafficPolicy", policy);
    }
    for (i, subset) in spec.subsets.iter().enumerate() {
        if let Some(policy) = &subset.traffic_policy {
            traffic_policy_warnings(w, &at(&idx("spec.subsets", i), "trafficPolicy"), policy);
        }
    }
    if let Some(selector) = &spec.workload_selector
        && selector.match_labels.is_empty()
    {
        w.push(Warning::new(VALIDATION, "spec.workloadSelector", "workload selector specified without labels"));
    }
}

fn traffic_policy_warnings(w: &mut Vec<Warning>, path: &str, policy: &TrafficPolicy) {
    lb_and_outlier_warnings(w, path, policy.load_balancer.as_ref(), policy.outlier_detection.as_ref());
    for (i, pl) in policy.port_level_settings.iter().enumerate() {
        let p = idx(&at(path, "portLevelSettings"), i);
        lb_and_outlier_warnings(w, &p, pl.load_balancer.as_ref(), pl.outlier_detection.as_ref());
    }
}

fn lb_and_outlier_warnings(
    w: &mut Vec<Warning>,
    path: &str,
    lb: Option<&LoadBalancerSettings>,
    outlier: Option<&OutlierDetection>,
) {
    if let Some(lb) = lb {
        let p = at(path, "loadBalancer");
        if lb.simple == Some(SimpleLb::LeastConn) {
            w.push(replaced(at(&p, "simple"), "LoadBalancerSettings.simple LEAST_CONN", "LEAST_REQUEST"));
        }
        if let Some(hash) = &lb.consistent_hash
            && hash.minimum_ring_size.is_some_and(|n| n != 0)
        {
            w.push(Warning::new(
                DEPRECATED,
                at(&p, "consistentHash.minimumRingSize"),
                "consistent hash MinimumRingSize is deprecated, use ConsistentHashLB's RingHash configuration instead",
            ));
        }
        if lb.warmup_duration_secs.is_some() {
            w.push(replaced(
                at(&p, "warmupDurationSecs"),
                "LoadBalancerSettings.warmupDurationSecs",
                "LoadBalancerSettings.warmup",
            ));
        }
        let failover = |field: &str, failover: bool, priority: bool| {
            (outlier.is_none() && (failover || priority)).then(|| {
                Warning::new(VALIDATION, at(&p, field), "outlier detection policy must be provided for failover")
            })
        };
        if let Some(l) = &lb.locality_lb_setting {
            w.extend(failover("localityLbSetting", !l.failover.is_empty(), !l.failover_priority.is_empty()));
        }
        if let Some(z) = &lb.zone_aware_lb_setting {
            w.extend(failover("zoneAwareLbSetting", !z.failover.is_empty(), !z.failover_priority.is_empty()));
        }
    }
    if let Some(o) = outlier
        && o.consecutive_errors.is_some_and(|n| n != 0)
    {
        w.push(Warning::new(
            DEPRECATED,
            at(path, "outlierDetection.consecutiveErrors"),
            "outlier detection consecutive errors is deprecated, use consecutiveGatewayErrors or consecutive5xxErrors instead",
        ));
    }
}

fn gateway_warnings(w: &mut Vec<Warning>, spec: &istio::GatewaySpec) {
    for (i, server) in spec.servers.iter().enumerate() {
        let http = matches!(
            server.port.protocol.to_ascii_uppercase().as_str(),
            "HTTP" | "HTTP2" | "HTTP_PROXY" | "GRPC" | "GRPC-WEB"
        );
        if !http && server.tls.as_ref().is_some_and(|t| t.https_redirect) {
            w.push(Warning::new(
                VALIDATION,
                at(&idx("spec.servers", i), "tls.httpsRedirect"),
                "tls.httpsRedirect should only be used with http servers",
            ));
        }
    }
}

fn service_entry_warnings(w: &mut Vec<Warning>, spec: &istio::ServiceEntrySpec) {
    if let Some(selector) = &spec.workload_selector
        && selector.labels.is_empty()
    {
        w.push(Warning::new(
            VALIDATION,
            "spec.workloadSelector",
            "service entry: workload selector specified without labels, will be applied to all services in namespace",
        ));
    }
    if spec.effective_resolution() != istio::Resolution::DynamicDns {
        for (i, host) in spec.hosts.iter().enumerate() {
            if host.contains('*') && host != "*" && !host.starts_with("*.") {
                w.push(Warning::new(
                    VALIDATION,
                    idx("spec.hosts", i),
                    format!("partial wildcard {host:?} not allowed"),
                ));
            }
        }
    }
    // Istio's `protocol.Parse(..).IsTCP()`: an unset protocol is not TCP here.
    let tcp_port = spec.ports.iter().any(|p| {
        let proto = p.protocol.as_deref().unwrap_or("").to_ascii_uppercase();
        matches!(proto.as_str(), "TCP" | "HTTPS" | "TLS" | "MONGO" | "REDIS" | "MYSQL")
    });
    // Checked for DNS resolution only, as in Istio's ValidateServiceEntry.
    if matches!(spec.effective_resolution(), istio::Resolution::Dns | istio::Resolution::DnsRoundRobin)
        && !spec.addresses.is_empty()
        && tcp_port
        && spec.hosts.len() > 1
    {
        w.push(Warning::new(
            VALIDATION,
            "spec.hosts",
            "service entry can not have more than one host specified simultaneously with address and tcp port",
        ));
    }
}

// ------------------------------------------------------------------------------------------------
// Unreachable rules
// ------------------------------------------------------------------------------------------------

/// Istio's `routeName`: a quoted name, or `#<index>`.
fn rule_name(name: Option<&str>, i: usize) -> String {
    match name {
        Some(n) if !n.is_empty() => format!("{n:?}"),
        _ => format!("#{i}"),
    }
}

fn unreachable(path: String, rule: &str, reason: &str) -> Warning {
    Warning::new(UNREACHABLE, path, format!("virtualService rule {rule} not used ({reason})"))
}

fn ineffective(path: String, rule: &str, matchn: &str, dup: &str) -> Warning {
    Warning::new(
        INEFFECTIVE,
        path,
        format!("virtualService rule {rule} match {matchn} is not used (duplicate/overlapping match in rule {dup})"),
    )
}

/// A reason meshflow adds to Istio's two: a rule whose match matches every request (an empty
/// match, or only `uri: {prefix: /}`) hides every later rule just as a rule without matches does.
const AFTER_CATCH_ALL: &str = "route with a catch-all match defined before";

/// Istio's `analyzeUnreachableHTTPRules` (without the prefix-overlap part, see
/// [`unreachable_http_rules`]): rules given as (name, matches, match names).
/// Returns, for each rule and match, whether the match was registered (not shadowed, not a
/// duplicate), which the prefix-overlap check needs.
fn unreachable_rules<M: Ord + Clone>(
    w: &mut Vec<Warning>,
    path: &str,
    rules: &[(Option<String>, Vec<M>)],
    catch_all: impl Fn(&M) -> bool,
) -> Vec<Vec<bool>> {
    let names: Vec<Vec<Option<String>>> = rules.iter().map(|(_, ms)| vec![None; ms.len()]).collect();
    unreachable_named(w, path, rules, &names, catch_all)
}

fn unreachable_named<M: Ord + Clone>(
    w: &mut Vec<Warning>,
    path: &str,
    rules: &[(Option<String>, Vec<M>)],
    match_names: &[Vec<Option<String>>],
    catch_all: impl Fn(&M) -> bool,
) -> Vec<Vec<bool>> {
    let mut seen: BTreeMap<&M, usize> = BTreeMap::new();
    let mut empty_seen = false;
    let mut catch_all_seen = false;
    let mut registered = Vec::with_capacity(rules.len());
    for (i, (name, matches)) in rules.iter().enumerate() {
        let rule = rule_name(name.as_deref(), i);
        let rule_path = idx(path, i);
        let mut reg = vec![false; matches.len()];
        if matches.is_empty() {
            if empty_seen {
                w.push(unreachable(rule_path, &rule, "only the last rule can have no matches"));
            } else if catch_all_seen {
                w.push(unreachable(rule_path, &rule, AFTER_CATCH_ALL));
            }
            empty_seen = true;
            registered.push(reg);
            continue;
        }
        if empty_seen || catch_all_seen {
            // Istio reports this once per match; once per rule says the same.
            let reason = if empty_seen { "route without matches defined before" } else { AFTER_CATCH_ALL };
            w.push(unreachable(rule_path, &rule, reason));
            registered.push(reg);
            continue;
        }
        let mut duplicates = 0;
        for (j, m) in matches.iter().enumerate() {
            if let Some(&dup) = seen.get(m) {
                let match_name = rule_name(match_names[i][j].as_deref(), j);
                let dup_name = rule_name(rules[dup].0.as_deref(), dup);
                w.push(ineffective(idx(&at(&rule_path, "match"), j), &rule, &match_name, &dup_name));
                duplicates += 1;
            } else {
                seen.insert(m, i);
                reg[j] = true;
            }
        }
        if duplicates == matches.len() {
            w.push(unreachable(rule_path, &rule, "all matches used by prior rules"));
        }
        catch_all_seen |= matches.iter().any(&catch_all);
        registered.push(reg);
    }
    registered
}

/// Does this HTTP match match every request?
fn http_catch_all(m: &HttpMatchRequest) -> bool {
    let uri_all = match &m.uri {
        None => true,
        Some(StringMatch::Prefix(p)) => p.is_empty() || p == "/",
        Some(StringMatch::Regex(r)) => r == ".*",
        Some(StringMatch::Exact(_)) => false,
    };
    // Only the name, the stat prefix and case folding may differ from an empty match.
    let rest = HttpMatchRequest { uri: None, name: None, stat_prefix: None, ignore_uri_case: false, ..m.clone() };
    uri_all && rest == HttpMatchRequest::default()
}

/// Istio's `assignExactOrPrefix`: `exact:v`, `prefix:v`, or empty for a regex.
fn exact_or_prefix(m: Option<&StringMatch>) -> String {
    match m {
        Some(StringMatch::Exact(v)) if !v.is_empty() => format!("exact:{v}"),
        Some(StringMatch::Prefix(v)) if !v.is_empty() => format!("prefix:{v}"),
        _ => String::new(),
    }
}

/// A URI-prefix match reduced to what Istio's overlap check compares
/// (`OverlappingMatchValidationForHTTPRoute`).
struct PrefixMatch {
    rule: usize,
    rule_name: String,
    match_index: usize,
    match_name: String,
    prefix: String,
    port: u32,
    method: String,
    authority: String,
    headers: BTreeMap<String, String>,
    query: BTreeMap<String, String>,
    without: BTreeMap<String, String>,
}

fn prefix_match(route: &HttpRoute, rule: usize, m: &HttpMatchRequest, j: usize) -> Option<PrefixMatch> {
    let Some(StringMatch::Prefix(prefix)) = &m.uri else { return None };
    if prefix.is_empty() {
        return None;
    }
    let reduce = |map: &BTreeMap<String, Option<StringMatch>>| -> BTreeMap<String, String> {
        map.iter().map(|(k, v)| (k.clone(), exact_or_prefix(v.as_ref()))).collect()
    };
    let mut method = exact_or_prefix(m.method.as_ref());
    if method.is_empty() {
        method = "exact:GET".into();
    }
    Some(PrefixMatch {
        rule,
        rule_name: rule_name(route.name.as_deref(), rule),
        match_index: j,
        match_name: rule_name(m.name.as_deref(), j),
        prefix: prefix.clone(),
        port: m.port.unwrap_or(0),
        method,
        authority: exact_or_prefix(m.authority.as_ref()),
        headers: reduce(&m.headers),
        query: reduce(&m.query_params),
        without: reduce(&m.without_headers),
    })
}

/// Istio's `coveredValidation`: does the earlier match `a` take every request of `b`?
fn covered(a: &PrefixMatch, b: &PrefixMatch) -> bool {
    let covers = |va: &str, vb: &str| va == vb || va.starts_with(vb);
    let maps = |ma: &BTreeMap<String, String>, mb: &BTreeMap<String, String>| {
        ma.len() == mb.len() && ma.iter().all(|(k, va)| mb.get(k).is_some_and(|vb| covers(va, vb)))
    };
    b.prefix.starts_with(&a.prefix)
        && a.port == b.port
        && covers(&a.method, &b.method)
        && covers(&a.authority, &b.authority)
        && maps(&a.headers, &b.headers)
        && maps(&a.query, &b.query)
        && maps(&a.without, &b.without)
}

/// Unreachable HTTP rules, duplicate matches, and URI-prefix matches an earlier prefix match
/// already covers.
fn unreachable_http_rules(w: &mut Vec<Warning>, routes: &[HttpRoute]) {
    // Matches compare without their names, as Istio's `asJSON` does.
    let rules: Vec<(Option<String>, Vec<HttpMatchRequest>)> = routes
        .iter()
        .map(|r| (r.name.clone(), r.r#match.iter().map(|m| HttpMatchRequest { name: None, ..m.clone() }).collect()))
        .collect();
    let names: Vec<Vec<Option<String>>> =
        routes.iter().map(|r| r.r#match.iter().map(|m| m.name.clone()).collect()).collect();
    let registered = unreachable_named(w, "spec.http", &rules, &names, http_catch_all);
    let prefixes: Vec<PrefixMatch> = routes
        .iter()
        .enumerate()
        .flat_map(|(i, r)| r.r#match.iter().enumerate().map(move |(j, m)| (i, r, j, m)))
        .filter(|(i, _, j, _)| registered[*i][*j])
        .filter_map(|(i, r, j, m)| prefix_match(r, i, m, j))
        .collect();
    for (n, a) in prefixes.iter().enumerate() {
        for b in &prefixes[n + 1..] {
            if b.prefix != a.prefix && covered(a, b) {
                w.push(ineffective(
                    idx(&at(&idx("spec.http", b.rule), "match"), b.match_index),
                    &b.rule_name,
                    &format!("{} of prefix {}", b.match_name, b.prefix),
                    &format!("{} of prefix {} on {}", a.match_name, a.prefix, a.rule_name),
                ));
            }
        }
    }
}

// ------------------------------------------------------------------------------------------------
// References between objects
// ------------------------------------------------------------------------------------------------

/// Istio's `ConvertHostToFQDN`: a short name (no dot, not a wildcard) is a Service in `namespace`.
pub fn host_fqdn(namespace: &str, host: &str) -> String {
    if host.starts_with('*') || host.contains('.') {
        host.to_string()
    } else {
        format!("{host}.{namespace}.{CLUSTER_DOMAIN}")
    }
}

/// Do two hosts match, either possibly a `*` / `*.suffix` wildcard (Istio's `host.Name.Matches`)?
fn hosts_match(a: &str, b: &str) -> bool {
    match (a.strip_prefix('*'), b.strip_prefix('*')) {
        (Some(sa), Some(sb)) => sa.ends_with(sb) || sb.ends_with(sa),
        (Some(sa), None) => b.ends_with(sa),
        (None, Some(sb)) => a.ends_with(sb),
        (None, None) => a == b,
    }
}

/// Which namespaces see a host.
#[derive(Debug)]
enum Scope {
    All,
    Namespaces(BTreeSet<String>),
}

/// The hosts and subsets a set of objects defines, to resolve references against.
#[derive(Debug, Default)]
pub struct References {
    hosts: Vec<(String, Scope)>,
    subsets: BTreeSet<(String, String)>,
}

impl References {
    /// Indexes the Services, ServiceEntries and DestinationRules among `objects`.
    pub fn new<'a>(objects: impl IntoIterator<Item = &'a Object>) -> Self {
        let mut refs = References::default();
        for object in objects {
            match object {
                Object::Service(s) => refs.hosts.push((host_fqdn(&s.namespace, &s.name), Scope::All)),
                Object::ServiceEntry(se) => {
                    let export = &se.spec.export_to;
                    for host in &se.spec.hosts {
                        let scope = if export.is_empty() || export.iter().any(|e| e == "*") {
                            Scope::All
                        } else {
                            Scope::Namespaces(
                                export
                                    .iter()
                                    .filter(|e| *e != "~")
                                    .map(|e| if e == "." { se.namespace.clone() } else { e.clone() })
                                    .collect(),
                            )
                        };
                        refs.hosts.push((host_fqdn(&se.namespace, host), scope));
                    }
                }
                Object::DestinationRule(dr) => {
                    let host = host_fqdn(&dr.namespace, &dr.spec.host);
                    for subset in &dr.spec.subsets {
                        refs.subsets.insert((host.clone(), subset.name.clone()));
                    }
                }
                _ => {}
            }
        }
        refs
    }

    /// Does `host`, written in an object of `namespace`, match a Service or a ServiceEntry
    /// host visible there?
    pub fn host_exists(&self, namespace: &str, host: &str) -> bool {
        let fqdn = host_fqdn(namespace, host);
        self.hosts.iter().any(|(known, scope)| {
            let visible = match scope {
                Scope::All => true,
                Scope::Namespaces(ns) => ns.contains(namespace),
            };
            visible && hosts_match(&fqdn, known)
        })
    }

    /// Does a DestinationRule define `subset` for `host` (written in an object of `namespace`)?
    pub fn subset_exists(&self, namespace: &str, host: &str, subset: &str) -> bool {
        self.subsets.contains(&(host_fqdn(namespace, host), subset.to_string()))
    }

    /// The warnings of `object` about what it refers to.
    pub fn warnings(&self, object: &Object) -> Vec<Warning> {
        let mut w = Vec::new();
        match object {
            Object::VirtualService(vs) => self.virtual_service(&mut w, &vs.namespace, &vs.spec),
            Object::DestinationRule(dr) if !self.host_exists(&dr.namespace, &dr.spec.host) => {
                w.push(not_found("spec.host", "host", &dr.spec.host));
            }
            _ => {}
        }
        w
    }

    fn virtual_service(&self, w: &mut Vec<Warning>, ns: &str, spec: &istio::VirtualServiceSpec) {
        // The hosts of a VirtualService bound only to gateways are the gateway's public names.
        let mesh = spec.gateways.is_empty() || spec.gateways.iter().any(|g| g == "mesh");
        if mesh {
            for (i, host) in spec.hosts.iter().enumerate() {
                if host.parse::<IpAddr>().is_err() && !self.host_exists(ns, host) {
                    w.push(not_found(idx("spec.hosts", i), "host", host));
                }
            }
        }
        let mut destinations: Vec<(String, &Destination)> = Vec::new();
        for (i, r) in spec.tcp.iter().enumerate() {
            for (j, d) in r.route.iter().enumerate() {
                destinations.push((at(&idx(&at(&idx("spec.tcp", i), "route"), j), "destination"), &d.destination));
            }
        }
        for (i, r) in spec.tls.iter().enumerate() {
            for (j, d) in r.route.iter().enumerate() {
                destinations.push((at(&idx(&at(&idx("spec.tls", i), "route"), j), "destination"), &d.destination));
            }
        }
        for (i, r) in spec.http.iter().enumerate() {
            for (j, d) in r.route.iter().enumerate() {
                destinations.push((at(&idx(&at(&idx("spec.http", i), "route"), j), "destination"), &d.destination));
            }
        }
        for (path, d) in &destinations {
            self.destination(w, ns, path, d, "host", "host+subset in destinationrule");
        }
        for (i, r) in spec.http.iter().enumerate() {
            let p = idx("spec.http", i);
            if let Some(m) = &r.mirror {
                self.destination(w, ns, &at(&p, "mirror"), m, "mirror host", "mirror+subset in destinationrule");
            }
            for (j, m) in r.mirrors.iter().enumerate() {
                let path = at(&idx(&at(&p, "mirrors"), j), "destination");
                self.destination(w, ns, &path, &m.destination, "mirror host", "mirror+subset in destinationrule");
            }
        }
    }

    fn destination(&self, w: &mut Vec<Warning>, ns: &str, path: &str, d: &Destination, what: &str, subset_what: &str) {
        if !self.host_exists(ns, &d.host) {
            w.push(not_found(at(path, "host"), what, &d.host));
        }
        if let Some(subset) = d.subset.as_deref().filter(|s| !s.is_empty())
            && !self.subset_exists(ns, &d.host, subset)
        {
            w.push(not_found(at(path, "subset"), subset_what, &format!("{}+{subset}", d.host)));
        }
    }
}

/// `istioctl analyze`'s ReferencedResourceNotFound: `Referenced <what> not found: "<value>"`.
fn not_found(field: impl Into<String>, what: &str, value: &str) -> Warning {
    Warning::new(NOT_FOUND, field, format!("Referenced {what} not found: {value:?}"))
}

/// Every warning of `object`: its own and those about its references.
pub fn warnings(object: &Object, refs: &References) -> Vec<Warning> {
    let mut w = object_warnings(object);
    w.extend(refs.warnings(object));
    w
}

// ------------------------------------------------------------------------------------------------
// The command
// ------------------------------------------------------------------------------------------------

/// What `meshflow validate` found.
#[derive(Debug, Default)]
pub struct Report {
    /// Output lines in file and document order: problems, then `warning: ...` lines.
    pub lines: Vec<String>,
    /// Documents (or `List` items) of kinds meshflow reads, valid or not.
    pub checked: usize,
    pub invalid: usize,
    pub warnings: usize,
    /// Documents of kinds meshflow does not read, by `apiVersion kind`.
    pub skipped: BTreeMap<String, usize>,
}

impl Report {
    /// The closing lines: what was skipped (if anything) and the counts.
    pub fn summary(&self) -> Vec<String> {
        let mut out = Vec::new();
        let skipped: usize = self.skipped.values().sum();
        if skipped > 0 {
            let kinds: Vec<String> = self.skipped.iter().map(|(k, n)| format!("{k} ({n})")).collect();
            out.push(format!("skipped {skipped} objects of kinds meshflow does not read: {}", kinds.join(", ")));
        }
        out.push(format!("{} objects checked, {} invalid, {} warnings", self.checked, self.invalid, self.warnings));
        out
    }
}

type Lines = Vec<((usize, usize, usize), String)>;

fn push(lines: &mut Lines, file: usize, document: usize, line: String) {
    let n = lines.len();
    lines.push(((file, document, n), line));
}

/// Validates every config file at or under `paths` (as `serve --config-dir` reads them).
/// Err only when a path does not exist.
pub fn validate_paths(paths: &[PathBuf]) -> anyhow::Result<Report> {
    let mut files = Vec::new();
    for path in paths {
        if !path.exists() {
            anyhow::bail!("{} does not exist", path.display());
        }
        files.extend(file::config_files(path));
    }
    // (file index, document index, order) → line, so cross-object warnings land by their object.
    let mut lines = Lines::new();
    let mut report = Report::default();
    let mut located: Vec<(usize, usize, Object)> = Vec::new();
    let mut first_definition: BTreeMap<ObjectKey, (usize, usize)> = BTreeMap::new();
    for (f, path) in files.iter().enumerate() {
        let shown = path.display();
        let text = match std::fs::read(path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => {
                report.checked += 1;
                report.invalid += 1;
                push(&mut lines, f, 0, format!("{shown}: cannot read: {e}"));
                continue;
            }
        };
        for (d, outcomes) in file::parse_file(path, &text) {
            let outcomes = match outcomes {
                Ok(outcomes) => outcomes,
                Err(reason) => {
                    report.checked += 1;
                    report.invalid += 1;
                    push(&mut lines, f, d, format!("{shown}:{d} {}", file::malformed_message(&reason)));
                    continue;
                }
            };
            for outcome in outcomes {
                match outcome {
                    ParseOutcome::Object(object) => {
                        report.checked += 1;
                        let key = object.key();
                        match first_definition.get(&key) {
                            Some(&(pf, _)) if pf == f => {
                                report.warnings += 1;
                                let message = file::defined_twice_message(&key);
                                push(&mut lines, f, d, format!("warning: {shown}:{d} {message}"));
                            }
                            Some(&(pf, pd)) => {
                                report.warnings += 1;
                                push(
                                    &mut lines,
                                    f,
                                    d,
                                    format!(
                                        "warning: {shown}:{d} {key} is also defined in {}:{pd}; the first in path order is used",
                                        files[pf].display()
                                    ),
                                );
                            }
                            None => {
                                first_definition.insert(key, (f, d));
                            }
                        }
                        located.push((f, d, object));
                    }
                    ParseOutcome::Skipped { api_version, kind } => {
                        *report.skipped.entry(format!("{api_version} {kind}")).or_default() += 1;
                    }
                    ParseOutcome::Rejected { what, errors } => {
                        report.checked += 1;
                        report.invalid += 1;
                        for e in errors {
                            push(&mut lines, f, d, format!("{shown}:{d} {what} {e}"));
                        }
                    }
                }
            }
        }
    }
    let refs = References::new(located.iter().map(|(_, _, o)| o));
    for (f, d, object) in &located {
        let key = object.key();
        for w in warnings(object, &refs) {
            report.warnings += 1;
            push(&mut lines, *f, *d, format!("warning: {}:{d} {key} {w}", files[*f].display()));
        }
    }
    lines.sort_by_key(|(order, _)| *order);
    report.lines = lines.into_iter().map(|(_, line)| line).collect();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::parse_document;
    use serde_json::{Value, json};

    /// One valid object from a whole document (`metadata.name` defaults to `x`).
    fn object(kind: &str, spec: Value) -> Object {
        object_in(kind, "default", "x", spec)
    }

    fn object_in(kind: &str, ns: &str, name: &str, spec: Value) -> Object {
        let api_version = if kind == "Service" { "v1" } else { "networking.istio.io/v1" };
        let doc = json!({"apiVersion": api_version, "kind": kind,
            "metadata": {"name": name, "namespace": ns}, "spec": spec});
        match parse_document(doc, "default").remove(0) {
            ParseOutcome::Object(o) => o,
            other => panic!("not valid: {other:?}"),
        }
    }

    fn own(kind: &str, spec: Value) -> Vec<(String, String, &'static str)> {
        object_warnings(&object(kind, spec)).into_iter().map(|w| (w.field, w.message, w.code)).collect()
    }

    fn route(host: &str) -> Value {
        json!([{"destination": {"host": host}}])
    }

    #[test]
    fn deprecated_mirror_percent_warns_with_istios_wording() {
        let spec = json!({"hosts": ["a"], "http": [{"route": route("a"),
            "mirror": {"host": "b"}, "mirrorPercent": 5}]});
        assert_eq!(
            own("VirtualService", spec),
            vec![(
                "spec.http[0].mirrorPercent".into(),
                r#"using deprecated setting "mirrorPercent", use "mirrorPercentage" instead"#.into(),
                DEPRECATED
            )]
        );
        let modern = json!({"hosts": ["a"], "http": [{"route": route("a"),
            "mirror": {"host": "b"}, "mirrorPercentage": {"value": 5.0}}]});
        assert!(own("VirtualService", modern).is_empty());
    }

    #[test]
    fn deprecated_integer_fault_delay_percent_warns_and_percentage_does_not() {
        let with = |delay: Value| json!({"hosts": ["a"], "http": [{"route": route("a"), "fault": {"delay": delay}}]});
        assert_eq!(
            own("VirtualService", with(json!({"fixedDelay": "2s", "percent": 100}))),
            vec![(
                "spec.http[0].fault.delay.percent".into(),
                "Deprecated: HTTPRoute.fault.delay.percent is deprecated; use HTTPRoute.fault.delay.percentage".into(),
                DEPRECATED
            )]
        );
        assert!(own("VirtualService", with(json!({"fixedDelay": "2s", "percentage": {"value": 100}}))).is_empty());
    }

    #[test]
    fn deprecated_cors_allow_origin_warns() {
        let spec = json!({"hosts": ["a"], "http": [{"route": route("a"),
            "corsPolicy": {"allowOrigin": ["http://foo.example"]}}]});
        let w = own("VirtualService", spec);
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(w[0].0, "spec.http[0].corsPolicy.allowOrigin");
        assert!(w[0].1.contains("use CorsPolicy.allowOrigins"), "{w:?}");
        let modern = json!({"hosts": ["a"], "http": [{"route": route("a"),
            "corsPolicy": {"allowOrigins": [{"exact": "http://foo.example"}]}}]});
        assert!(own("VirtualService", modern).is_empty());
    }

    #[test]
    fn deprecated_load_balancer_settings_warn_at_every_level() {
        let spec = json!({"host": "a",
            "trafficPolicy": {"loadBalancer": {"simple": "LEAST_CONN"},
                "portLevelSettings": [{"port": {"number": 80},
                    "loadBalancer": {"consistentHash": {"httpHeaderName": "x", "minimumRingSize": 1024}}}]},
            "subsets": [{"name": "v1", "labels": {"version": "v1"},
                "trafficPolicy": {"loadBalancer": {"simple": "ROUND_ROBIN", "warmupDurationSecs": "10s"},
                    "outlierDetection": {"consecutiveErrors": 5}}}]});
        let fields: Vec<(String, &str)> =
            own("DestinationRule", spec).into_iter().map(|(f, _, code)| (f, code)).collect();
        assert_eq!(
            fields,
            vec![
                ("spec.trafficPolicy.loadBalancer.simple".into(), DEPRECATED),
                (
                    "spec.trafficPolicy.portLevelSettings[0].loadBalancer.consistentHash.minimumRingSize".into(),
                    DEPRECATED
                ),
                ("spec.subsets[0].trafficPolicy.loadBalancer.warmupDurationSecs".into(), DEPRECATED),
                ("spec.subsets[0].trafficPolicy.outlierDetection.consecutiveErrors".into(), DEPRECATED),
            ]
        );
        // The ring size inside `ringHash` is the replacement: no warning.
        let modern = json!({"host": "a", "trafficPolicy": {"loadBalancer": {"simple": "LEAST_REQUEST"}}});
        assert!(own("DestinationRule", modern).is_empty());
        let ring = json!({"host": "a", "trafficPolicy": {"loadBalancer": {"consistentHash":
            {"httpHeaderName": "x", "ringHash": {"minimumRingSize": 1024}}}}});
        assert!(own("DestinationRule", ring).is_empty());
    }

    #[test]
    fn minimum_ring_size_uses_istios_message() {
        let spec = json!({"host": "a", "trafficPolicy": {"loadBalancer": {"consistentHash":
            {"useSourceIp": true, "minimumRingSize": 64}}}});
        assert_eq!(
            own("DestinationRule", spec)[0].1,
            "consistent hash MinimumRingSize is deprecated, use ConsistentHashLB's RingHash configuration instead"
        );
    }

    #[test]
    fn failover_without_outlier_detection_warns() {
        let lb = json!({"localityLbSetting": {"failover": [{"from": "us-east", "to": "us-west"}]}});
        let without = own("DestinationRule", json!({"host": "a", "trafficPolicy": {"loadBalancer": lb}}));
        assert_eq!(
            without,
            vec![(
                "spec.trafficPolicy.loadBalancer.localityLbSetting".into(),
                "outlier detection policy must be provided for failover".into(),
                VALIDATION
            )]
        );
        let with = own(
            "DestinationRule",
            json!({"host": "a", "trafficPolicy": {"loadBalancer": lb, "outlierDetection": {"consecutive5xxErrors": 1}}}),
        );
        assert!(with.is_empty(), "{with:?}");
    }

    /// bookinfo-fault-injection-details-v1.yaml: two rules without matches.
    #[test]
    fn a_second_rule_without_matches_is_unreachable() {
        let spec = json!({"hosts": ["details"], "http": [
            {"fault": {"abort": {"httpStatus": 555, "percentage": {"value": 100}}}, "route": route("details")},
            {"route": route("details")}]});
        assert_eq!(
            own("VirtualService", spec),
            vec![(
                "spec.http[1]".into(),
                "virtualService rule #1 not used (only the last rule can have no matches)".into(),
                UNREACHABLE
            )]
        );
    }

    #[test]
    fn a_rule_with_matches_after_a_rule_without_is_unreachable_once() {
        let spec = json!({"hosts": ["a"], "http": [
            {"route": route("a")},
            {"name": "late", "match": [{"uri": {"exact": "/x"}}, {"uri": {"exact": "/y"}}], "route": route("a")}]});
        assert_eq!(
            own("VirtualService", spec),
            vec![(
                "spec.http[1]".into(),
                r#"virtualService rule "late" not used (route without matches defined before)"#.into(),
                UNREACHABLE
            )]
        );
    }

    #[test]
    fn a_catch_all_match_hides_later_rules_but_a_narrowed_one_does_not() {
        let later = json!({"match": [{"uri": {"prefix": "/api"}}], "route": route("a")});
        for catch_all in [json!({"uri": {"prefix": "/"}}), json!({}), json!({"name": "all", "ignoreUriCase": true})] {
            let spec = json!({"hosts": ["a"], "http": [{"match": [catch_all], "route": route("a")}, later]});
            assert_eq!(
                own("VirtualService", spec),
                vec![(
                    "spec.http[1]".into(),
                    format!("virtualService rule #1 not used ({AFTER_CATCH_ALL})"),
                    UNREACHABLE
                )],
                "{catch_all}"
            );
        }
        for narrowed in [
            json!({"uri": {"prefix": "/"}, "headers": {"end-user": {"exact": "jason"}}}),
            json!({"uri": {"prefix": "/"}, "port": 8080}),
            json!({"uri": {"exact": "/"}}),
        ] {
            let spec = json!({"hosts": ["a"], "http": [{"match": [narrowed], "route": route("a")}, later]});
            assert!(own("VirtualService", spec).is_empty(), "{narrowed}");
        }
    }

    #[test]
    fn duplicate_matches_are_ineffective_and_a_rule_of_only_duplicates_is_unreachable() {
        let spec = json!({"hosts": ["a"], "http": [
            {"name": "first", "match": [{"uri": {"exact": "/x"}}], "route": route("a")},
            {"match": [{"name": "again", "uri": {"exact": "/x"}}], "route": route("a")},
            {"match": [{"uri": {"exact": "/x"}}, {"uri": {"exact": "/z"}}], "route": route("a")}]});
        assert_eq!(
            own("VirtualService", spec),
            vec![
                (
                    "spec.http[1].match[0]".into(),
                    r#"virtualService rule #1 match "again" is not used (duplicate/overlapping match in rule "first")"#
                        .into(),
                    INEFFECTIVE
                ),
                (
                    "spec.http[1]".into(),
                    "virtualService rule #1 not used (all matches used by prior rules)".into(),
                    UNREACHABLE
                ),
                (
                    "spec.http[2].match[0]".into(),
                    r#"virtualService rule #2 match #0 is not used (duplicate/overlapping match in rule "first")"#
                        .into(),
                    INEFFECTIVE
                ),
            ]
        );
    }

    #[test]
    fn a_longer_prefix_after_a_shorter_one_is_ineffective() {
        let spec = json!({"hosts": ["a"], "http": [
            {"match": [{"uri": {"prefix": "/debug"}}], "route": route("a")},
            {"match": [{"uri": {"prefix": "/debugs"}}], "route": route("a")},
            {"match": [{"uri": {"prefix": "/debugz"}, "headers": {"x": {"exact": "1"}}}], "route": route("a")}]});
        assert_eq!(
            own("VirtualService", spec),
            vec![(
                "spec.http[1].match[0]".into(),
                "virtualService rule #1 match #0 of prefix /debugs is not used \
                 (duplicate/overlapping match in rule #0 of prefix /debug on #0)"
                    .into(),
                INEFFECTIVE
            )]
        );
        // The other order is fine: the longer prefix is tried first.
        let spec = json!({"hosts": ["a"], "http": [
            {"match": [{"uri": {"prefix": "/debugs"}}], "route": route("a")},
            {"match": [{"uri": {"prefix": "/debug"}}], "route": route("a")}]});
        assert!(own("VirtualService", spec).is_empty());
    }

    #[test]
    fn tcp_rules_are_checked_like_http_rules() {
        let spec = json!({"hosts": ["a"], "tcp": [
            {"match": [{"port": 9000}], "route": route("a")},
            {"match": [{"port": 9000}], "route": route("a")}]});
        let w = own("VirtualService", spec);
        assert_eq!(w.iter().map(|w| w.0.as_str()).collect::<Vec<_>>(), ["spec.tcp[1].match[0]", "spec.tcp[1]"]);
        assert_eq!(w[1].1, "virtualService rule #1 not used (all matches used by prior rules)");
    }

    #[test]
    fn sni_ip_and_non_http_https_redirect_and_legacy_gateway_names_warn() {
        let vs = json!({"hosts": ["a.example.com"], "gateways": ["gw.istio-system"], "tls": [
            {"match": [{"sniHosts": ["10.0.0.1"], "port": 443}], "route": route("a")}]});
        let w = own("VirtualService", vs);
        assert_eq!(
            w.iter().map(|w| w.0.as_str()).collect::<Vec<_>>(),
            ["spec.gateways[0]", "spec.tls[0].match[0].sniHosts[0]"],
            "{w:?}"
        );
        assert!(w[0].1.contains(r#"prefer the <namespace>/<name> format: "istio-system/gw""#), "{w:?}");
        let gw = json!({"selector": {"istio": "ingressgateway"}, "servers": [
            {"port": {"number": 443, "name": "https", "protocol": "HTTPS"}, "hosts": ["*"],
             "tls": {"mode": "SIMPLE", "credentialName": "c", "httpsRedirect": true}},
            {"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"], "tls": {"httpsRedirect": true}}]});
        assert_eq!(
            own("Gateway", gw),
            vec![(
                "spec.servers[0].tls.httpsRedirect".into(),
                "tls.httpsRedirect should only be used with http servers".into(),
                VALIDATION
            )]
        );
    }

    #[test]
    fn service_entry_partial_wildcard_and_empty_selector_warn() {
        let se = json!({"hosts": ["*foo.example.com"], "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
            "resolution": "NONE", "workloadSelector": {}});
        let w = own("ServiceEntry", se);
        let fields: Vec<&str> = w.iter().map(|w| w.0.as_str()).collect();
        assert_eq!(fields, ["spec.workloadSelector", "spec.hosts[0]"], "{w:?}");
        assert_eq!(w[1].1, r#"partial wildcard "*foo.example.com" not allowed"#);
    }

    #[test]
    fn dns_service_entry_with_addresses_tcp_port_and_two_hosts_warns() {
        let se = |resolution: &str, protocol: &str| {
            json!({"hosts": ["a.example.com", "b.example.com"], "addresses": ["240.0.0.1"],
                "ports": [{"number": 9000, "name": "p", "protocol": protocol}], "resolution": resolution})
        };
        assert_eq!(
            own("ServiceEntry", se("DNS", "TLS")),
            vec![(
                "spec.hosts".into(),
                "service entry can not have more than one host specified simultaneously with address and tcp port"
                    .into(),
                VALIDATION
            )]
        );
        assert!(own("ServiceEntry", se("DNS", "HTTP")).is_empty());
        assert!(own("ServiceEntry", se("STATIC", "TLS")).is_empty());
    }

    fn refs_and_vs(others: Vec<Object>, vs_spec: Value) -> Vec<(String, String)> {
        let vs = object("VirtualService", vs_spec);
        let mut all = others;
        all.push(vs.clone());
        References::new(&all).warnings(&vs).into_iter().map(|w| (w.field, w.message)).collect()
    }

    fn service(ns: &str, name: &str) -> Object {
        object_in("Service", ns, name, json!({"ports": [{"name": "http", "port": 80}]}))
    }

    #[test]
    fn a_destination_host_that_matches_nothing_is_reported() {
        let spec = json!({"hosts": ["reviews"], "http": [{"route": route("ratings")}]});
        assert_eq!(
            refs_and_vs(vec![service("default", "reviews")], spec.clone()),
            vec![("spec.http[0].route[0].destination.host".into(), r#"Referenced host not found: "ratings""#.into())]
        );
        // Short names resolve in the VirtualService's namespace, FQDNs anywhere.
        assert!(refs_and_vs(vec![service("default", "reviews"), service("default", "ratings")], spec).is_empty());
        let other_ns = json!({"hosts": ["reviews"], "http": [{"route": route("ratings")}]});
        assert_eq!(refs_and_vs(vec![service("default", "reviews"), service("prod", "ratings")], other_ns).len(), 1);
        let fqdn = json!({"hosts": ["reviews"], "http": [{"route": route("ratings.prod.svc.cluster.local")}]});
        assert!(refs_and_vs(vec![service("default", "reviews"), service("prod", "ratings")], fqdn).is_empty());
    }

    #[test]
    fn service_entry_hosts_match_with_wildcards_and_export_to() {
        let se = |export: Value| {
            object_in(
                "ServiceEntry",
                "egress",
                "wiki",
                json!({"hosts": ["*.wikipedia.org"], "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}],
                "resolution": "NONE", "exportTo": export}),
            )
        };
        let spec = json!({"hosts": ["en.wikipedia.org"], "tls": [{"match": [{"sniHosts": ["en.wikipedia.org"]}],
            "route": route("en.wikipedia.org")}]});
        assert!(refs_and_vs(vec![se(json!(["*"]))], spec.clone()).is_empty());
        // Exported to its own namespace only: invisible from `default`.
        let hidden = refs_and_vs(vec![se(json!(["."]))], spec);
        assert_eq!(
            hidden.iter().map(|w| w.0.as_str()).collect::<Vec<_>>(),
            ["spec.hosts[0]", "spec.tls[0].route[0].destination.host"]
        );
    }

    #[test]
    fn gateway_only_virtual_service_hosts_are_not_looked_up() {
        let spec = json!({"hosts": ["bookinfo.example.com"], "gateways": ["bookinfo-gateway"],
            "http": [{"route": route("productpage")}]});
        assert!(refs_and_vs(vec![service("default", "productpage")], spec).is_empty());
    }

    #[test]
    fn a_subset_no_destination_rule_defines_is_reported() {
        let dr =
            object("DestinationRule", json!({"host": "reviews", "subsets": [{"name": "v1", "labels": {"v": "1"}}]}));
        let spec = json!({"hosts": ["reviews"], "http": [{"route": [
            {"destination": {"host": "reviews", "subset": "v1"}, "weight": 50},
            {"destination": {"host": "reviews", "subset": "v2"}, "weight": 50}],
            "mirror": {"host": "reviews", "subset": "v3"}}]});
        assert_eq!(
            refs_and_vs(vec![service("default", "reviews"), dr], spec),
            vec![
                (
                    "spec.http[0].route[1].destination.subset".into(),
                    r#"Referenced host+subset in destinationrule not found: "reviews+v2""#.into()
                ),
                (
                    "spec.http[0].mirror.subset".into(),
                    r#"Referenced mirror+subset in destinationrule not found: "reviews+v3""#.into()
                ),
            ]
        );
    }

    #[test]
    fn a_destination_rule_host_that_matches_nothing_is_reported() {
        let dr = object("DestinationRule", json!({"host": "reviews"}));
        let refs = References::new([&dr]);
        assert_eq!(
            refs.warnings(&dr),
            vec![Warning::new(NOT_FOUND, "spec.host", r#"Referenced host not found: "reviews""#)]
        );
        let svc = service("default", "reviews");
        assert!(References::new([&dr, &svc]).warnings(&dr).is_empty());
    }

    #[test]
    fn validate_paths_names_file_document_and_field_and_counts() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("sub")).unwrap();
        let good = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  ports: [{name: http, port: 80}]\n\
            ---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n";
        std::fs::write(tmp.path().join("a.yaml"), good).unwrap();
        let bad = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: web}\n\
            spec: {hosts: [web], http: [{route: [{destination: {host: web}, weight: -1}]}]}\n\
            ---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: nowhere}\n\
            spec: {hosts: [web], http: [{route: [{destination: {host: gone}}]}]}\n";
        std::fs::write(tmp.path().join("sub/b.yml"), bad).unwrap();
        let report = validate_paths(&[tmp.path().to_path_buf()]).unwrap();
        let b = tmp.path().join("sub/b.yml").display().to_string();
        assert_eq!((report.checked, report.invalid, report.warnings), (3, 1, 1), "{:?}", report.lines);
        assert_eq!(report.lines.len(), 2, "{:?}", report.lines);
        assert!(
            report.lines[0].starts_with(&format!("{b}:0 VirtualService default/web spec.http[0].route[0].weight: ")),
            "{:?}",
            report.lines
        );
        assert_eq!(
            report.lines[1],
            format!(
                "warning: {b}:1 VirtualService default/nowhere spec.http[0].route[0].destination.host: \
                 Referenced host not found: \"gone\" [ReferencedResourceNotFound]"
            )
        );
        assert_eq!(
            report.summary(),
            [
                "skipped 1 objects of kinds meshflow does not read: apps/v1 Deployment (1)",
                "3 objects checked, 1 invalid, 1 warnings"
            ]
        );
    }
}
