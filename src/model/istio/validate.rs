//! Validation of the four kinds, after Istio's validating webhook and the CRD's CEL rules
//! (see the module documentation of [`super`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr};

use super::*;

// ------------------------------------------------------------------------------------------------
// Validation: collection and common checks
// ------------------------------------------------------------------------------------------------

/// Errors found so far.
#[derive(Default)]
pub(super) struct Errors(pub(super) Vec<FieldError>);

impl Errors {
    fn push(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.0.push(FieldError::new(field, reason));
    }

    fn check(&mut self, field: impl Into<String>, result: Result<(), String>) {
        if let Err(reason) = result {
            self.push(field, reason);
        }
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

/// `metadata.creationTimestamp`, when set, is an RFC 3339 time (as `metav1.Time` requires).
pub(super) fn check_creation_timestamp(creation_timestamp: Option<&str>) -> Vec<FieldError> {
    match creation_timestamp {
        Some(t) if parse_rfc3339(t).is_none() => vec![FieldError::new(
            "metadata.creationTimestamp",
            format!("{t:?} is not an RFC 3339 time (such as \"2024-01-02T03:04:05Z\")"),
        )],
        _ => Vec::new(),
    }
}

fn at(path: &str, field: &str) -> String {
    format!("{path}.{field}")
}

fn idx(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

fn key(path: &str, k: &str) -> String {
    format!("{path}[{k}]")
}

/// `Some("")` counts as absent, as an empty proto3 string does in Istio.
fn set(s: &Option<String>) -> Option<&str> {
    s.as_deref().filter(|s| !s.is_empty())
}

const MILLISECOND: i64 = 1_000_000;

/// A duration field the CRD requires to be at least 1ms (and the webhook to ms precision).
fn check_duration(s: &str) -> Result<(), String> {
    let nanos = parse_duration(s).ok_or_else(|| format!("invalid duration {s:?}"))?;
    if nanos < MILLISECOND {
        return Err("must be a valid duration greater than 1ms".into());
    }
    if nanos % MILLISECOND != 0 {
        return Err("only durations to ms precision are supported".into());
    }
    Ok(())
}

/// A duration field without a minimum (cookie ttl, TCP idle timeout, ...): well-formed, not negative.
fn check_duration_format(s: &str) -> Result<(), String> {
    match parse_duration(s) {
        Some(nanos) if nanos >= 0 => Ok(()),
        Some(_) => Err(format!("duration {s:?} must not be negative")),
        None => Err(format!("invalid duration {s:?}")),
    }
}

fn check_optional_duration(e: &mut Errors, path: String, d: &Option<String>) {
    if let Some(d) = d {
        e.check(path, check_duration(d));
    }
}

fn check_port(port: u32) -> Result<(), String> {
    if (1..=65535).contains(&port) { Ok(()) } else { Err(format!("port number {port} must be in the range 1..65535")) }
}

/// The CRD's wording for ServiceEntry ports.
fn check_service_entry_port(port: u32) -> Result<(), String> {
    if (1..=65535).contains(&port) { Ok(()) } else { Err(format!("port must be between 1-65535 (got {port})")) }
}

fn check_percent(value: i32) -> Result<(), String> {
    if (0..=100).contains(&value) { Ok(()) } else { Err(format!("percentage {value} is not in range 0..100")) }
}

/// A fractional percentage: 0, or in [0.0001, 100].
fn check_percentage(p: &Percent) -> Result<(), String> {
    let v = p.value.0;
    if v.is_nan() || !(0.0..=100.0).contains(&v) || (v > 0.0 && v < 0.0001) {
        return Err(format!("percentage {v} is neither 0.0, nor in range [0.0001, 100.0]"));
    }
    Ok(())
}

fn check_http_status(status: i64) -> Result<(), String> {
    if (200..=599).contains(&status) { Ok(()) } else { Err(format!("HTTP status {status} is not in range 200-599")) }
}

// --- names -------------------------------------------------------------------------------------

fn is_alnum(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}

/// RFC 1123 label (Istio also allows upper case): alphanumerics and '-', alphanumeric at both ends.
fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && is_alnum(b[0])
        && is_alnum(b[b.len() - 1])
        && b.iter().all(|&c| is_alnum(c) || c == b'-')
}

/// A DNS label that may start with `*` or `*-`, or be `*` alone.
fn is_wildcard_dns1123_label(s: &str) -> bool {
    s.len() <= 63
        && (s == "*"
            || is_dns1123_label(s)
            || s.strip_prefix('*').is_some_and(is_dns1123_label)
            || s.strip_prefix("*-").is_some_and(is_dns1123_label))
}

fn check_dns1123_preconditions(name: &str) -> Result<(), String> {
    if name.len() > 255 {
        return Err(format!("domain name {name:?} too long (max 255)"));
    }
    if name.is_empty() {
        return Err("empty domain name not allowed".into());
    }
    Ok(())
}

fn check_dns1123_labels(domain: &str) -> Result<(), String> {
    let labels: Vec<&str> = domain.split('.').collect();
    let tld = labels[labels.len() - 1];
    if !tld.is_empty() && tld.parse::<i64>().is_ok() {
        return Err(format!("domain name {domain:?} invalid (top level domain {tld:?} cannot be all-numeric)"));
    }
    for (i, label) in labels.iter().enumerate() {
        // A trailing dot (`istio.io.`) is allowed.
        if i == labels.len() - 1 && label.is_empty() {
            return Ok(());
        }
        if !is_dns1123_label(label) {
            return Err(format!("domain name {domain:?} invalid (label {label:?} invalid)"));
        }
    }
    Ok(())
}

fn check_fqdn(name: &str) -> Result<(), String> {
    check_dns1123_preconditions(name)?;
    check_dns1123_labels(name)
}

/// A domain name whose first label may be a wildcard (`*.example.com`, `*`).
fn check_wildcard_domain(domain: &str) -> Result<(), String> {
    check_dns1123_preconditions(domain)?;
    let (first, rest) = match domain.split_once('.') {
        Some((first, rest)) => (first, Some(rest)),
        None => (domain, None),
    };
    if !is_wildcard_dns1123_label(first) {
        return Err(format!("domain name {domain:?} invalid (label {first:?} invalid)"));
    }
    rest.map_or(Ok(()), check_dns1123_labels)
}

fn check_partial_wildcard(host: &str) -> Result<(), String> {
    if host.contains('*') && host.len() != 1 && !host.starts_with("*.") {
        return Err(format!("partial wildcard {host:?} not allowed"));
    }
    Ok(())
}

/// Hosts of a VirtualService bound to gateways: also the `outbound_.<port>_._.<host>` SNI names
/// Istio generates for AUTO_PASSTHROUGH.
fn check_gateway_bound_domain(sni: bool, domain: &str) -> Result<(), String> {
    check_dns1123_preconditions(domain)?;
    if sni && domain.starts_with("outbound_") {
        let parts: Vec<&str> = domain.split('_').collect();
        let format = "outbound_.<port>_._.<hostname>";
        if parts.len() < 4 {
            return Err(format!("domain name {domain} invalid, should follow '{format}' format"));
        }
        let (port, host) = (parts[1].trim_matches('.'), parts[3].trim_matches('.'));
        if !port.bytes().any(|b| b.is_ascii_digit()) {
            return Err(format!(
                "domain name {domain:?} invalid (label {port:?} invalid). should follow {format} format"
            ));
        }
        if !host.bytes().any(|b| b.is_ascii_alphabetic()) {
            return Err(format!(
                "domain name {domain:?} invalid (label {host:?} invalid). should follow {format} format"
            ));
        }
        return Ok(());
    }
    check_wildcard_domain(domain)
}

/// Does host `a` match host `b` (either may be a `*.` wildcard)?
fn host_matches(a: &str, b: &str) -> bool {
    match (a.strip_prefix('*'), b.strip_prefix('*')) {
        (Some(sa), Some(sb)) => {
            if sa.len() < sb.len() {
                sb.ends_with(sa)
            } else {
                sa.ends_with(sb)
            }
        }
        (Some(sa), None) => b.ends_with(sa),
        (None, Some(sb)) => a.ends_with(sb),
        (None, None) => a == b,
    }
}

/// Is every name matched by host `a` also matched by host `b`?
fn host_subset_of(a: &str, b: &str) -> bool {
    match (a.strip_prefix('*'), b.strip_prefix('*')) {
        (Some(sa), Some(sb)) => sa.len() >= sb.len() && sa.ends_with(sb),
        (Some(_), None) => false,
        (None, Some(sb)) => a.ends_with(sb),
        (None, None) => a == b,
    }
}

fn is_ip_addr(s: &str) -> bool {
    if s.parse::<IpAddr>().is_ok() {
        return true;
    }
    // An IPv6 address with a zone (`fe80::1%eth0`).
    matches!(s.split_once('%'), Some((addr, zone)) if !zone.is_empty() && addr.parse::<Ipv6Addr>().is_ok())
}

fn check_ip_addr(s: &str) -> Result<(), String> {
    if is_ip_addr(s) { Ok(()) } else { Err(format!("{s} is not a valid IP")) }
}

/// An IP address or a CIDR block (`10.0.0.0/8`, `2001:db8::/32`).
fn check_ip_subnet(s: &str) -> Result<(), String> {
    if s.matches('/').count() == 1 {
        let (addr, bits) = s.split_once('/').unwrap_or_default();
        let max = match addr.parse::<IpAddr>() {
            Ok(IpAddr::V4(_)) => 32,
            Ok(IpAddr::V6(_)) => 128,
            Err(_) => return Err(format!("{s} is not a valid CIDR block")),
        };
        let valid_bits = !bits.is_empty()
            && bits.bytes().all(|b| b.is_ascii_digit())
            && !(bits.len() > 1 && bits.starts_with('0'))
            && bits.parse::<u32>().is_ok_and(|n| n <= max);
        return if valid_bits { Ok(()) } else { Err(format!("{s} is not a valid CIDR block")) };
    }
    check_ip_addr(s)
}

fn check_unix_address(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("unix address must not be empty".into());
    }
    if path.starts_with('@') {
        return Ok(());
    }
    if !path.starts_with('/') || path.ends_with('/') {
        return Err(format!("{path} is not an absolute path to a file"));
    }
    Ok(())
}

fn check_port_name(name: &str) -> Result<(), String> {
    if is_dns1123_label(name) { Ok(()) } else { Err(format!("invalid port name: {name}")) }
}

fn check_subset_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("subset name cannot be empty".into());
    }
    if !is_dns1123_label(name) {
        return Err(format!("subset name is invalid: {name}"));
    }
    Ok(())
}

/// Kubernetes qualified name: alphanumerics, '-', '_' and '.', alphanumeric at both ends.
fn is_qualified_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && is_alnum(b[0])
        && is_alnum(b[b.len() - 1])
        && b.iter().all(|&c| is_alnum(c) || matches!(c, b'-' | b'_' | b'.'))
}

fn check_label_key(k: &str) -> Result<(), String> {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, k),
    };
    if let Some(prefix) = prefix {
        if prefix.split('.').any(|l| !is_dns1123_label(l)) {
            return Err(format!("invalid tag key: {k:?}"));
        }
        if prefix.len() > 253 {
            return Err(format!("invalid tag key: {k:?} (DNS prefix is too long)"));
        }
    }
    if !is_qualified_name(name) {
        return Err(format!("invalid tag key: {k:?}"));
    }
    if name.len() > 63 {
        return Err(format!("invalid tag key: {k:?} (name is too long)"));
    }
    Ok(())
}

fn validate_labels(e: &mut Errors, path: &str, labels: &BTreeMap<String, String>) {
    for (k, v) in labels {
        e.check(key(path, k), check_label_key(k));
        if !v.is_empty() && !is_qualified_name(v) {
            e.push(key(path, k), format!("invalid tag value: {v:?}"));
        }
    }
}

/// Selector labels of a workload selector: no empty keys, no wildcards.
fn validate_selector_labels(e: &mut Errors, path: &str, labels: &BTreeMap<String, String>) {
    for (k, v) in labels {
        if k.is_empty() {
            e.push(path, format!("empty key is not supported in selector: \"={v}\""));
        }
        if k.contains('*') || v.contains('*') {
            e.push(key(path, k), format!("wildcard is not supported in selector: \"{k}={v}\""));
        }
    }
}

fn validate_export_to(
    e: &mut Errors,
    path: &str,
    namespace: &str,
    export_to: &[String],
    service_entry: bool,
    with_selector: bool,
) {
    if export_to.is_empty() {
        return;
    }
    let mut seen = BTreeSet::new();
    for (i, entry) in export_to.iter().enumerate() {
        let k = if entry == "." { namespace } else { entry.as_str() };
        if seen.contains(k) {
            if k != entry {
                e.push(idx(path, i), format!("duplicate entries in exportTo: . and current namespace {namespace}"));
            } else {
                e.push(idx(path, i), format!("duplicate entries in exportTo for entry {entry}"));
            }
        } else if service_entry && entry == "~" {
            seen.insert(k);
        } else {
            match k {
                "." | "*" => {
                    seen.insert(k);
                }
                "~" => e.push(idx(path, i), "exportTo ~ (none) is not allowed for Istio configuration objects"),
                _ if is_dns1123_label(k) => {
                    seen.insert(k);
                }
                _ => e.push(idx(path, i), "only .,*, or a valid DNS 1123 label is allowed as exportTo entry"),
            }
        }
    }
    if with_selector && !seen.is_empty() {
        if !seen.contains(namespace) {
            e.push(path, "destination rule with workload selector cannot have exportTo beyond current namespace");
        } else if seen.len() > 1 {
            e.push(path, "destination rule with workload selector cannot have multiple entries in exportTo");
        }
    }
    if seen.contains("*") && export_to.len() > 1 {
        e.push(path, "cannot have both public (*) and non-public exportTo values for a resource");
    }
    if seen.contains("~") && export_to.len() > 1 {
        e.push(path, "cannot export service entry to no one (~) and someone");
    }
}

/// Protocols as Istio parses them (case-insensitive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    Tcp,
    Udp,
    Grpc,
    GrpcWeb,
    Http,
    HttpProxy,
    Http2,
    Https,
    Tls,
    Mongo,
    Redis,
    MySql,
    Unsupported,
}

impl Protocol {
    fn parse(s: &str) -> Protocol {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            "grpc" => Protocol::Grpc,
            "grpc-web" => Protocol::GrpcWeb,
            "http" => Protocol::Http,
            "http_proxy" => Protocol::HttpProxy,
            "http2" => Protocol::Http2,
            "https" => Protocol::Https,
            "tls" => Protocol::Tls,
            "mongo" => Protocol::Mongo,
            "redis" => Protocol::Redis,
            "mysql" => Protocol::MySql,
            _ => Protocol::Unsupported,
        }
    }

    fn is_http(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Http2 | Protocol::HttpProxy | Protocol::Grpc | Protocol::GrpcWeb)
    }

    fn is_tls(self) -> bool {
        matches!(self, Protocol::Https | Protocol::Tls)
    }
}

// --- HTTP headers --------------------------------------------------------------------------------

/// RFC 7230 token characters.
fn is_header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| is_alnum(b) || b"!#$%&'*+-.^_`|~".contains(&b))
}

const JWT_CLAIM_PREFIX: &str = "@request.auth.claims";

fn is_jwt_claim_route(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    let Some(rest) = lower.strip_prefix(JWT_CLAIM_PREFIX) else {
        return false;
    };
    (rest.starts_with('.') && rest.len() > 1) || (rest.starts_with('[') && rest.ends_with(']') && rest.len() > 2)
}

fn check_header_name_or_jwt_claim(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("header name cannot be empty".into());
    }
    if is_jwt_claim_route(name) || [":method", ":scheme", ":authority", ":path", ":status"].contains(&name) {
        return Ok(());
    }
    if !is_header_name(name) {
        return Err(format!("header name {name} is not a valid header name"));
    }
    Ok(())
}

fn is_internal_header(name: &str) -> bool {
    name.starts_with(':') || name.eq_ignore_ascii_case("host")
}

fn is_authority_header(name: &str) -> bool {
    name.eq_ignore_ascii_case(":authority") || name.eq_ignore_ascii_case("host")
}

/// A request header that is added or set (the authority may be rewritten here).
fn check_request_header_set(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("header name cannot be empty".into());
    }
    if is_internal_header(name) && !is_authority_header(name) {
        return Err(format!("invalid header {name:?}: header cannot have \":\" prefix"));
    }
    Ok(())
}

/// A request header that is removed, or a response header that is set, added or removed.
fn check_header_operation_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("header name cannot be empty".into());
    }
    if name.eq_ignore_ascii_case("host") {
        return Err(format!("invalid header {name:?}: cannot set Host header"));
    }
    if is_internal_header(name) {
        return Err(format!("invalid header {name:?}: header cannot have \":\" prefix"));
    }
    Ok(())
}

/// Header values Envoy accepts: no control characters (except tab), and `%` only as `%%` or
/// around a `%VARIABLE%`.
fn check_header_value(value: &str) -> Result<(), String> {
    if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(format!("header value configuration {value} is invalid"));
    }
    let mut rest = value;
    while let Some(pos) = rest.find('%') {
        let after = &rest[pos + 1..];
        if after.is_empty() {
            return Err("header value configuration: invalid header configuration. Un-escaped %".into());
        }
        if let Some(after_escape) = after.strip_prefix('%') {
            rest = after_escape;
            continue;
        }
        match after.find('%') {
            Some(end) => rest = &after[end + 1..],
            None => {
                return Err(
                    "header value configuration: invalid header configuration. Un-terminated variable expression"
                        .into(),
                );
            }
        }
    }
    Ok(())
}

fn validate_header_operations(e: &mut Errors, path: &str, headers: &Headers) {
    if let Some(request) = &headers.request {
        let p = at(path, "request");
        for (op, map) in [("add", &request.add), ("set", &request.set)] {
            for (name, value) in map {
                e.check(key(&at(&p, op), name), check_request_header_set(name));
                e.check(key(&at(&p, op), name), check_header_value(value));
            }
        }
        for (i, name) in request.remove.iter().enumerate() {
            e.check(idx(&at(&p, "remove"), i), check_header_operation_name(name));
        }
    }
    if let Some(response) = &headers.response {
        let p = at(path, "response");
        for (op, map) in [("add", &response.add), ("set", &response.set)] {
            for (name, value) in map {
                e.check(key(&at(&p, op), name), check_header_operation_name(name));
                e.check(key(&at(&p, op), name), check_header_value(value));
            }
        }
        for (i, name) in response.remove.iter().enumerate() {
            e.check(idx(&at(&p, "remove"), i), check_header_operation_name(name));
        }
    }
}

// --- string matches ------------------------------------------------------------------------------

fn check_regex(re: &str, context: &str) -> Result<(), String> {
    if re.is_empty() {
        return Err(format!("{context:?}: regex string match should not be empty"));
    }
    if re.len() > 1024 {
        return Err(format!("{context:?}: regex is too large, max length allowed is 1024"));
    }
    Ok(())
}

/// Prefix matches must not be empty (except for `uri`), regexes must be usable.
fn check_string_match(m: Option<&StringMatch>, context: &str) -> Result<(), String> {
    match m {
        Some(StringMatch::Prefix(p)) if p.is_empty() => {
            Err(format!("{context:?}: prefix string match should not be empty"))
        }
        Some(StringMatch::Regex(re)) => check_regex(re, context),
        _ => Ok(()),
    }
}

fn check_string_match_regex(m: Option<&StringMatch>, context: &str) -> Result<(), String> {
    match m {
        Some(StringMatch::Regex(re)) => check_regex(re, context),
        _ => Ok(()),
    }
}

// ------------------------------------------------------------------------------------------------
// Gateway validation (validation.go: ValidateGateway, validateServer, validateTLSOptions)
// ------------------------------------------------------------------------------------------------

pub(super) fn validate_gateway(name: &str, spec: &GatewaySpec) -> Errors {
    let mut e = Errors::default();
    if !is_dns1123_label(name) {
        e.push("metadata.name", format!("invalid gateway name: {name:?}"));
    }
    if spec.servers.is_empty() {
        e.push("spec.servers", "gateway must have at least one server");
    }
    let mut port_names = BTreeSet::new();
    for (i, server) in spec.servers.iter().enumerate() {
        let p = idx("spec.servers", i);
        validate_server(&mut e, &p, server);
        if !port_names.insert(server.port.name.as_str()) {
            e.push(
                at(&p, "port.name"),
                format!("port names in servers must be unique: duplicate name {}", server.port.name),
            );
        }
    }
    e
}

fn validate_server(e: &mut Errors, p: &str, server: &Server) {
    if server.hosts.is_empty() {
        e.push(at(p, "hosts"), "server config must contain at least one host");
    }
    for (i, host) in server.hosts.iter().enumerate() {
        e.check(idx(&at(p, "hosts"), i), check_gateway_host(host));
    }
    let bind = server.bind.as_deref().unwrap_or("");
    let port_ok = validate_server_port(e, &at(p, "port"), &server.port, bind);
    if let Some(socket) = bind.strip_prefix("unix://") {
        e.check(at(p, "bind"), check_unix_address(socket));
        if server.port.number != 0 {
            e.push(at(p, "port.number"), "port number must be 0 for unix domain socket");
        }
    } else if !bind.is_empty() {
        e.check(at(p, "bind"), check_ip_addr(bind));
    }
    if let Some(tls) = &server.tls {
        validate_server_tls(e, &at(p, "tls"), tls);
    }
    if port_ok {
        let protocol = Protocol::parse(&server.port.protocol);
        match &server.tls {
            None if protocol.is_tls() => e.push(at(p, "tls"), "server must have TLS settings for HTTPS/TLS protocols"),
            Some(tls) if !protocol.is_tls() => {
                if !protocol.is_http() {
                    e.push(at(p, "tls"), "server cannot have TLS settings for non HTTPS/TLS ports");
                } else if !matches!(tls.effective_mode(), ServerTlsMode::Passthrough | ServerTlsMode::AutoPassthrough)
                    || set(&tls.ca_certificates).is_some()
                    || set(&tls.private_key).is_some()
                    || set(&tls.server_certificate).is_some()
                {
                    // Only `httpsRedirect` makes sense on a plain-text HTTP server.
                    e.push(at(p, "tls"), "server cannot have TLS settings for plain text HTTP ports");
                }
            }
            _ => {}
        }
    }
}

/// A gateway host: `host` or `namespace/host`, where host is a (wildcard) FQDN, `*` or an IP.
fn check_gateway_host(host: &str) -> Result<(), String> {
    let mut errs = Vec::new();
    let dns_name = match host.split_once('/') {
        None => host,
        Some((ns, dns_name)) => {
            if ns.is_empty() || dns_name.is_empty() {
                errs.push("config namespace and dnsName in host entry cannot be empty".to_string());
            }
            if ns != "*" && ns != "." && !is_dns1123_label(ns) {
                errs.push(format!("invalid namespace value {ns:?} in gateway"));
            }
            dns_name
        }
    };
    if dns_name != "*" && !dns_name.contains('.') {
        errs.push("short names (non FQDN) are not allowed".into());
    }
    if let Err(err) = check_wildcard_domain(dns_name)
        && !is_ip_addr(dns_name)
    {
        errs.push(err);
    }
    if let Err(err) = check_partial_wildcard(dns_name) {
        errs.push(err);
    }
    if errs.is_empty() { Ok(()) } else { Err(errs.join("; ")) }
}

/// Returns whether the port is valid (TLS consistency is only checked for valid ports).
fn validate_server_port(e: &mut Errors, p: &str, port: &Port, bind: &str) -> bool {
    let before = e.len();
    if Protocol::parse(&port.protocol) == Protocol::Unsupported {
        e.push(
            at(p, "protocol"),
            format!(
                "invalid protocol {:?}, supported protocols are HTTP, HTTP2, GRPC, GRPC-WEB, MONGO, REDIS, MYSQL, TCP",
                port.protocol
            ),
        );
    }
    if port.number > 0 || !bind.starts_with("unix://") {
        e.check(at(p, "number"), check_port(port.number));
    }
    if port.target_port.is_some_and(|t| t > 0) {
        e.push(at(p, "targetPort"), "targetPort has no impact on Gateways");
    }
    if port.name.is_empty() {
        e.push(at(p, "name"), "port name must be set");
    }
    e.len() == before
}

fn validate_server_tls(e: &mut Errors, p: &str, tls: &ServerTlsSettings) {
    let mode = tls.effective_mode();
    let (server_cert, key, ca) = (set(&tls.server_certificate), set(&tls.private_key), set(&tls.ca_certificates));
    let credential_name = set(&tls.credential_name);
    for (field, items) in
        [("credentialNames", tls.credential_names.len()), ("tlsCertificates", tls.tls_certificates.len())]
    {
        if items > 2 {
            e.push(at(p, field), format!("Too many: {items}: must have at most 2 items"));
        }
    }
    if mode == ServerTlsMode::IstioMutual {
        // ISTIO_MUTUAL uses the workload certificate; any other certificate source is an error.
        let others = [
            (server_cert.is_some(), "serverCertificate", "server certificate"),
            (key.is_some(), "privateKey", "private key"),
            (ca.is_some(), "caCertificates", "CA bundle"),
            (!tls.tls_certificates.is_empty(), "tlsCertificates", "tlsCertificates"),
            (credential_name.is_some(), "credentialName", "credentialName"),
            (!tls.credential_names.is_empty(), "credentialNames", "credentialNames"),
        ];
        for (present, field, what) in others {
            if present {
                e.push(at(p, field), format!("ISTIO_MUTUAL TLS cannot have associated {what}"));
            }
        }
        return;
    }
    let sources = [
        server_cert.is_some() && key.is_some(),
        credential_name.is_some(),
        !tls.credential_names.is_empty(),
        !tls.tls_certificates.is_empty(),
    ];
    if sources.iter().filter(|s| **s).count() > 1 {
        e.push(
            p,
            "only one of credential_name, credential_names, server_certificate/private_key, tls_certificates should be specified",
        );
    }
    let terminates = matches!(mode, ServerTlsMode::Simple | ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual);
    if terminates && (credential_name.is_some() || !tls.credential_names.is_empty()) {
        // Certificates are fetched from the named secret(s).
        return;
    }
    if terminates {
        let what = if mode == ServerTlsMode::Simple { "SIMPLE TLS" } else { "MUTUAL TLS" };
        if mode != ServerTlsMode::Simple && ca.is_none() {
            e.push(at(p, "caCertificates"), format!("{what} requires a client CA bundle"));
        }
        if tls.tls_certificates.is_empty() {
            if server_cert.is_none() {
                e.push(at(p, "serverCertificate"), format!("{what} requires a server certificate"));
            }
            if key.is_none() {
                e.push(at(p, "privateKey"), format!("{what} requires a private key"));
            }
        }
        for (i, cert) in tls.tls_certificates.iter().enumerate() {
            let cp = idx(&at(p, "tlsCertificates"), i);
            if set(&cert.server_certificate).is_none() {
                e.push(at(&cp, "serverCertificate"), format!("{what} requires a server certificate"));
            }
            if set(&cert.private_key).is_none() {
                e.push(at(&cp, "privateKey"), format!("{what} requires a private key"));
            }
        }
    }
    if set(&tls.ca_crl).is_some() {
        if credential_name.is_some() {
            e.push(
                at(p, "caCrl"),
                "CRL is not supported with credentialName. CRL has to be specified in the credential",
            );
        }
        if mode == ServerTlsMode::Simple {
            e.push(at(p, "caCrl"), "CRL is not supported with SIMPLE TLS");
        }
    }
}

// ------------------------------------------------------------------------------------------------
// VirtualService validation (validation.go: ValidateVirtualService; virtualservice.go)
// ------------------------------------------------------------------------------------------------

pub(super) fn validate_virtual_service(namespace: &str, spec: &VirtualServiceSpec) -> Errors {
    let mut e = Errors::default();
    if spec.hosts.is_empty() {
        // A delegate VirtualService: only HTTP routes, reached through a root's `delegate`.
        if !spec.gateways.is_empty() {
            e.push("spec.gateways", "delegate virtual service must have no gateways specified");
        }
        if !spec.tls.is_empty() {
            e.push("spec.tls", "delegate virtual service must have no tls route specified");
        }
        if !spec.tcp.is_empty() {
            e.push("spec.tcp", "delegate virtual service must have no tcp route specified");
        }
    }
    validate_gateway_names(&mut e, "spec.gateways", &spec.gateways);
    let applies_to_gateway = !spec.gateways.is_empty() && !spec.gateways.iter().any(|g| g == "mesh");
    if !applies_to_gateway {
        for (i, route) in spec.http.iter().enumerate() {
            for (j, m) in route.r#match.iter().enumerate() {
                let mp = idx(&at(&idx("spec.http", i), "match"), j);
                for (field, map) in [("headers", &m.headers), ("withoutHeaders", &m.without_headers)] {
                    for name in map.keys().filter(|k| is_jwt_claim_route(k)) {
                        e.push(
                            key(&at(&mp, field), name),
                            format!(
                                "JWT claim based routing (key: {name}) is only supported for gateway, found no gateways: {:?}",
                                spec.gateways
                            ),
                        );
                    }
                }
            }
        }
    }

    let sni = spec.tls.iter().any(|t| t.r#match.iter().any(|m| !m.sni_hosts.is_empty()));
    let mut all_hosts_valid = true;
    for (i, host) in spec.hosts.iter().enumerate() {
        let valid =
            if applies_to_gateway { check_gateway_bound_domain(sni, host) } else { check_wildcard_domain(host) };
        match valid {
            Err(err) if !is_ip_addr(host) => {
                e.push(idx("spec.hosts", i), err);
                all_hosts_valid = false;
            }
            Ok(()) if !applies_to_gateway && host == "*" => {
                e.push(
                    idx("spec.hosts", i),
                    "wildcard host * is not allowed for virtual services bound to the mesh gateway",
                );
                all_hosts_valid = false;
            }
            _ => {}
        }
    }
    if all_hosts_valid {
        for (i, a) in spec.hosts.iter().enumerate() {
            for (j, b) in spec.hosts.iter().enumerate().skip(i + 1) {
                if host_matches(a, b) {
                    e.push(idx("spec.hosts", j), format!("duplicate hosts in virtual service: {a} & {b}"));
                }
            }
        }
    }

    if spec.http.is_empty() && spec.tcp.is_empty() && spec.tls.is_empty() {
        e.push("spec.http", "http, tcp or tls must be provided in virtual service");
    }
    for (i, route) in spec.http.iter().enumerate() {
        validate_http_route(&mut e, &idx("spec.http", i), route, spec.hosts.is_empty());
    }
    for (i, route) in spec.tls.iter().enumerate() {
        validate_tls_route(&mut e, &idx("spec.tls", i), route, spec);
    }
    for (i, route) in spec.tcp.iter().enumerate() {
        validate_tcp_route(&mut e, &idx("spec.tcp", i), route);
    }
    validate_export_to(&mut e, "spec.exportTo", namespace, &spec.export_to, false, false);
    e
}

/// Gateway references: `namespace/name`, a bare name in the VirtualService's namespace, or `mesh`.
fn validate_gateway_names(e: &mut Errors, path: &str, names: &[String]) {
    for (i, name) in names.iter().enumerate() {
        let p = idx(path, i);
        match name.split_once('/') {
            None => e.check(p, check_fqdn(name)),
            Some((ns, gw)) => {
                if ns.is_empty() || gw.is_empty() {
                    e.push(&p, "config namespace and gateway name cannot be empty");
                }
                if !is_dns1123_label(ns) {
                    e.push(&p, format!("invalid value for namespace: {ns:?}"));
                }
                if !is_dns1123_label(gw) {
                    e.push(&p, format!("invalid value for gateway name: {gw:?}"));
                }
            }
        }
    }
}

fn validate_http_route(e: &mut Errors, p: &str, route: &HttpRoute, in_delegate: bool) {
    validate_http_route_conflicts(e, p, route, in_delegate);
    for (j, m) in route.r#match.iter().enumerate() {
        validate_http_match(e, &idx(&at(p, "match"), j), m);
    }
    if let Some(headers) = &route.headers {
        validate_header_operations(e, &at(p, "headers"), headers);
    }
    if let Some(cors) = &route.cors_policy {
        validate_cors_policy(e, &at(p, "corsPolicy"), cors);
    }
    if let Some(fault) = &route.fault {
        validate_fault(e, &at(p, "fault"), fault);
    }
    if let Some(percent) = route.mirror_percent.filter(|v| *v > 100) {
        e.push(at(p, "mirrorPercent"), format!("mirror_percent must have a max value of 100 (it has {percent})"));
    }
    if let Some(percentage) = &route.mirror_percentage {
        let value = percentage.value.0;
        if value > 100.0 {
            e.push(
                at(p, "mirrorPercentage.value"),
                format!("mirror_percentage must have a max value of 100 (it has {value})"),
            );
        }
        if value < 0.0 {
            e.push(
                at(p, "mirrorPercentage.value"),
                format!("mirror_percentage must have a min value of 0 (it has {value})"),
            );
        }
    }
    if let Some(mirror) = &route.mirror {
        validate_destination(e, &at(p, "mirror"), mirror);
    }
    for (i, mirror) in route.mirrors.iter().enumerate() {
        let mp = idx(&at(p, "mirrors"), i);
        validate_destination(e, &at(&mp, "destination"), &mirror.destination);
        if let Some(percentage) = &mirror.percentage {
            let value = percentage.value.0;
            if value > 100.0 {
                e.push(
                    at(&mp, "percentage.value"),
                    format!("mirror percentage must have a max value of 100 (it has {value})"),
                );
            }
            if value < 0.0 {
                e.push(
                    at(&mp, "percentage.value"),
                    format!("mirror percentage must have a min value of 0 (it has {value})"),
                );
            }
        }
    }
    if let Some(redirect) = &route.redirect {
        validate_redirect(e, &at(p, "redirect"), redirect, &route.r#match);
    }
    if let Some(direct) = &route.direct_response {
        validate_direct_response(e, &at(p, "directResponse"), direct);
    }
    if let Some(retries) = &route.retries {
        validate_retries(e, &at(p, "retries"), retries);
    }
    if let Some(rewrite) = &route.rewrite {
        validate_rewrite(e, &at(p, "rewrite"), rewrite);
    }
    validate_authority_rewrite(e, p, route);
    let destinations: Vec<_> = route.route.iter().map(|d| (&d.destination, d.weight)).collect();
    validate_destinations(e, &at(p, "route"), &destinations);
    for (i, destination) in route.route.iter().enumerate() {
        if let Some(headers) = &destination.headers {
            validate_header_operations(e, &at(&idx(&at(p, "route"), i), "headers"), headers);
        }
    }
    if let Some(timeout) = &route.timeout {
        e.check(at(p, "timeout"), check_duration(timeout));
    }
}

/// What an HTTP route does: exactly one of route, redirect and directResponse (or, in a root
/// VirtualService, a delegate).
fn validate_http_route_conflicts(e: &mut Errors, p: &str, route: &HttpRoute, in_delegate: bool) {
    let name = route.name.as_deref().unwrap_or("");
    if !in_delegate && route.delegate.is_some() {
        if route.redirect.is_some() {
            e.push(at(p, "redirect"), format!("root HTTP route {name} must not specify redirect"));
        }
        if !route.route.is_empty() {
            e.push(at(p, "route"), format!("root HTTP route {name} must not specify route"));
        }
        return;
    }
    if in_delegate && route.delegate.is_some() {
        e.push(at(p, "delegate"), "delegate HTTP route cannot contain delegate");
    }
    if route.redirect.is_some() {
        if !route.route.is_empty() {
            e.push(at(p, "redirect"), "HTTP route cannot contain both route and redirect");
        }
        if route.fault.is_some() {
            e.push(at(p, "redirect"), "HTTP route cannot contain both fault and redirect");
        }
        if route.rewrite.is_some() {
            e.push(at(p, "redirect"), "HTTP route rule cannot contain both rewrite and redirect");
        }
        if route.direct_response.is_some() {
            e.push(at(p, "redirect"), "HTTP route rule cannot contain both direct_response and redirect");
        }
    } else if route.direct_response.is_some() {
        if !route.route.is_empty() {
            e.push(at(p, "directResponse"), "HTTP route cannot contain both route and direct_response");
        }
        if route.fault.is_some() {
            e.push(at(p, "directResponse"), "HTTP route cannot contain both fault and direct_response");
        }
        if route.rewrite.is_some() {
            e.push(at(p, "directResponse"), "HTTP route rule cannot contain both rewrite and direct_response");
        }
    } else if route.route.is_empty() {
        e.push(at(p, "route"), "HTTP route, redirect or direct_response is required");
    }
    if route.mirror.is_some() && !route.mirrors.is_empty() {
        e.push(at(p, "mirrors"), "HTTP route cannot contain both mirror and mirrors");
    }
}

fn validate_http_match(e: &mut Errors, p: &str, m: &HttpMatchRequest) {
    for (name, value) in &m.headers {
        let hp = key(&at(p, "headers"), name);
        e.check(&hp, check_header_name_or_jwt_claim(name));
        e.check(hp, check_string_match(value.as_ref(), "headers"));
    }
    for (name, value) in &m.without_headers {
        let hp = key(&at(p, "withoutHeaders"), name);
        e.check(&hp, check_header_name_or_jwt_claim(name));
        // `regex: "*"` is not a regex: it means "present".
        if !matches!(value, Some(StringMatch::Regex(re)) if re == "*") {
            e.check(hp, check_string_match(value.as_ref(), "withoutHeaders"));
        }
    }
    // An empty uri prefix is allowed (matches everything), unlike the other fields.
    e.check(at(p, "uri"), check_string_match_regex(m.uri.as_ref(), "uri"));
    e.check(at(p, "scheme"), check_string_match(m.scheme.as_ref(), "scheme"));
    e.check(at(p, "method"), check_string_match(m.method.as_ref(), "method"));
    e.check(at(p, "authority"), check_string_match(m.authority.as_ref(), "authority"));
    for (name, value) in &m.query_params {
        e.check(key(&at(p, "queryParams"), name), check_string_match(value.as_ref(), "queryParams"));
    }
    if let Some(port) = m.port.filter(|p| *p != 0) {
        e.check(at(p, "port"), check_port(port));
    }
    validate_labels(e, &at(p, "sourceLabels"), &m.source_labels);
    validate_gateway_names(e, &at(p, "gateways"), &m.gateways);
    if let Some(ns) = set(&m.source_namespace)
        && !is_dns1123_label(ns)
    {
        e.push(at(p, "sourceNamespace"), format!("sourceNamespace match {ns} is invalid"));
    }
}

/// Weighted destinations: weights are not negative and do not all add up to 0.
fn validate_destinations(e: &mut Errors, path: &str, destinations: &[(&Destination, Option<i32>)]) {
    let mut total: i64 = 0;
    for (i, (destination, weight)) in destinations.iter().enumerate() {
        let p = idx(path, i);
        validate_destination(e, &at(&p, "destination"), destination);
        let weight = weight.unwrap_or(0);
        if weight < 0 {
            e.push(at(&p, "weight"), format!("weight {weight} < 0"));
        }
        total += i64::from(weight);
    }
    if destinations.len() > 1 && total == 0 {
        e.push(path, "total destination weight = 0");
    }
}

fn validate_destination(e: &mut Errors, p: &str, destination: &Destination) {
    if destination.host == "*" {
        e.push(at(p, "host"), "invalid destination host *");
    } else {
        e.check(at(p, "host"), check_wildcard_domain(&destination.host));
    }
    if let Some(subset) = set(&destination.subset) {
        e.check(at(p, "subset"), check_subset_name(subset));
    }
    if let Some(port) = &destination.port {
        e.check(at(p, "port.number"), check_port(port.number));
    }
}

fn validate_cors_policy(e: &mut Errors, p: &str, cors: &CorsPolicy) {
    for (i, origin) in cors.allow_origins.iter().enumerate() {
        let op = idx(&at(p, "allowOrigins"), i);
        if origin.value().is_empty() {
            e.push(op, "'' is not a valid match type for CORS allow origins");
        } else {
            e.check(op, check_string_match_regex(Some(origin), "corsPolicy.allowOrigins"));
        }
    }
    const METHODS: [&str; 10] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE", "*"];
    for (i, method) in cors.allow_methods.iter().enumerate() {
        if !METHODS.contains(&method.as_str()) {
            e.push(idx(&at(p, "allowMethods"), i), format!("{method:?} is not a supported HTTP method"));
        }
    }
    for (field, names) in [("allowHeaders", &cors.allow_headers), ("exposeHeaders", &cors.expose_headers)] {
        for (i, name) in names.iter().enumerate() {
            let reason = if name.is_empty() {
                "header name cannot be empty".to_string()
            } else if name == "*" || is_header_name(name) {
                continue;
            } else {
                format!("header name {name} is not a valid header name")
            };
            e.push(idx(&at(p, field), i), reason);
        }
    }
    if let Some(max_age) = &cors.max_age {
        match check_duration(max_age) {
            Err(err) => e.push(at(p, "maxAge"), err),
            Ok(()) if parse_duration(max_age).unwrap_or(0) % 1_000_000_000 != 0 => {
                e.push(at(p, "maxAge"), "max_age duration is accurate only to seconds precision");
            }
            Ok(()) => {}
        }
    }
}

pub(crate) const GRPC_STATUS_CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

fn validate_fault(e: &mut Errors, p: &str, fault: &HttpFaultInjection) {
    if fault.abort.is_none() && fault.delay.is_none() {
        e.push(p, "HTTP fault injection must have an abort and/or a delay");
    }
    if let Some(abort) = &fault.abort {
        let ap = at(p, "abort");
        if let Some(percentage) = &abort.percentage {
            e.check(at(&ap, "percentage.value"), check_percentage(percentage));
        }
        let kinds = [abort.http_status.is_some(), abort.grpc_status.is_some(), abort.http2_error.is_some()];
        if kinds.iter().filter(|k| **k).count() > 1 {
            e.push(&ap, "only one of httpStatus, grpcStatus or http2Error can be set");
        }
        if let Some(status) = abort.http_status {
            e.check(at(&ap, "httpStatus"), check_http_status(i64::from(status)));
        }
        if let Some(status) = &abort.grpc_status
            && !GRPC_STATUS_CODES.contains(&status.as_str())
        {
            e.push(
                at(&ap, "grpcStatus"),
                format!(
                    "gRPC status {status:?} is not supported. See https://github.com/grpc/grpc/blob/master/doc/statuscodes.md for a list of supported codes, for example 'NOT_FOUND'"
                ),
            );
        }
        if abort.http2_error.is_some() {
            e.push(at(&ap, "http2Error"), "HTTP/2 abort fault injection not supported yet");
        }
    }
    if let Some(delay) = &fault.delay {
        let dp = at(p, "delay");
        if let Some(percentage) = &delay.percentage {
            e.check(at(&dp, "percentage.value"), check_percentage(percentage));
        }
        if let Some(percent) = delay.percent {
            e.check(at(&dp, "percent"), check_percent(percent));
        }
        if delay.fixed_delay.is_some() && delay.exponential_delay.is_some() {
            e.push(&dp, "only one of fixedDelay or exponentialDelay can be set");
        }
        check_optional_duration(e, at(&dp, "fixedDelay"), &delay.fixed_delay);
        if let Some(d) = &delay.exponential_delay {
            e.check(at(&dp, "exponentialDelay"), check_duration(d));
            e.push(at(&dp, "exponentialDelay"), "exponentialDelay not supported yet");
        }
    }
}

fn validate_redirect(e: &mut Errors, p: &str, redirect: &HttpRedirect, matches: &[HttpMatchRequest]) {
    let (uri, prefix_rewrite) = (set(&redirect.uri), set(&redirect.prefix_rewrite));
    if uri.is_some() && prefix_rewrite.is_some() {
        e.push(p, "redirect may only specify one of uri or prefix_rewrite");
    }
    if prefix_rewrite.is_some()
        && matches.iter().any(|m| matches!(m.uri, Some(ref u) if !matches!(u, StringMatch::Prefix(_))))
    {
        e.push(at(p, "prefixRewrite"), "redirect prefix_rewrite requires all URI matches to use prefix match type");
    }
    if redirect.port.is_some() && redirect.derive_port.is_some() {
        e.push(p, "only one of port or derivePort can be set");
    }
    let has_port = redirect.port.is_some() || redirect.derive_port.is_some();
    if uri.is_none()
        && prefix_rewrite.is_none()
        && set(&redirect.authority).is_none()
        && !has_port
        && set(&redirect.scheme).is_none()
    {
        e.push(p, "redirect must specify URI, authority, scheme, or port");
    }
    if let Some(code) = redirect.redirect_code.filter(|c| *c != 0)
        && !(300..=399).contains(&code)
    {
        e.push(at(p, "redirectCode"), format!("{code} is not a valid redirect code, must be 3xx"));
    }
    if let Some(scheme) = set(&redirect.scheme)
        && scheme != "http"
        && scheme != "https"
    {
        e.push(at(p, "scheme"), "invalid redirect scheme, must be \"http\" or \"https\"");
    }
    if let Some(port) = redirect.port.filter(|p| *p > 0) {
        e.check(at(p, "port"), check_port(port));
    }
}

fn validate_direct_response(e: &mut Errors, p: &str, direct: &HttpDirectResponse) {
    if let Some(body) = &direct.body {
        if body.string.is_some() && body.bytes.is_some() {
            e.push(at(p, "body"), "only one of string or bytes can be set");
        }
        let size = body.string.as_ref().map_or(0, String::len).max(body.bytes.as_ref().map_or(0, |b| b.len() / 4 * 3));
        if size > 1024 * 1024 {
            e.push(at(p, "body"), "large direct_responses may impact control plane performance, must be less than 1MB");
        }
    }
    e.check(at(p, "status"), check_http_status(i64::from(direct.status)));
}

/// Envoy retry policies (`x-envoy-retry-on` and `x-envoy-retry-grpc-on`).
const RETRY_ON_POLICIES: [&str; 16] = [
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "envoy-ratelimited",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// HTTP status codes with a standard reason phrase (as Go's `http.StatusText` knows them).
fn is_known_http_status(code: u32) -> bool {
    matches!(code,
        100..=103 | 200..=208 | 226 | 300..=305 | 307 | 308 | 400..=418 | 421..=426 | 428 | 429 | 431 | 451
        | 500..=508 | 510 | 511)
}

fn validate_retries(e: &mut Errors, p: &str, retries: &HttpRetry) {
    let attempts = retries.attempts.unwrap_or(0);
    if attempts < 0 {
        e.push(at(p, "attempts"), "attempts cannot be negative");
    }
    if attempts == 0
        && (retries.per_try_timeout.is_some()
            || set(&retries.retry_on).is_some()
            || retries.retry_remote_localities.is_some())
    {
        e.push(at(p, "attempts"), "http retry policy configured when attempts are set to 0 (disabled)");
    }
    check_optional_duration(e, at(p, "perTryTimeout"), &retries.per_try_timeout);
    if let Some(retry_on) = set(&retries.retry_on) {
        for policy in retry_on.split(',') {
            let known_status = policy.parse::<u32>().is_ok_and(is_known_http_status);
            if !known_status && !RETRY_ON_POLICIES.contains(&policy) {
                e.push(at(p, "retryOn"), format!("{policy:?} is not a valid retryOn policy"));
            }
        }
    }
    check_optional_duration(e, at(p, "backoff"), &retries.backoff);
}

fn validate_rewrite(e: &mut Errors, p: &str, rewrite: &HttpRewrite) {
    let uri = set(&rewrite.uri);
    if uri.is_some() && rewrite.uri_regex_rewrite.is_some() {
        e.push(p, "rewrite may only contain one of URI or UriRegexRewrite");
    }
    if uri.is_none() && rewrite.uri_regex_rewrite.is_none() && set(&rewrite.authority).is_none() {
        e.push(
            p,
            "rewrite must specify at least one of URI, UriRegexRewrite, or authority. Only one of URI or UriRegexRewrite may be specified",
        );
    }
    if let Some(regex) = &rewrite.uri_regex_rewrite {
        let rp = at(p, "uriRegexRewrite");
        match (set(&regex.r#match), set(&regex.rewrite)) {
            (Some(re), Some(_)) => e.check(at(&rp, "match"), check_regex(re, "HTTPRewrite.UriRegexRewrite.Match")),
            _ => e.push(rp, "UriRegexRewrite requires both Rewrite and Match fields to be specified"),
        }
    }
}

/// The authority may be rewritten once: by `rewrite.authority` or one `:authority`/`host` header.
fn validate_authority_rewrite(e: &mut Errors, p: &str, route: &HttpRoute) {
    let mut current = route.rewrite.as_ref().and_then(|r| set(&r.authority)).map(str::to_string);
    let Some(request) = route.headers.as_ref().and_then(|h| h.request.as_ref()) else {
        return;
    };
    for (op, map) in [("set", &request.set), ("add", &request.add)] {
        for (name, value) in map.iter().filter(|(k, _)| is_authority_header(k)) {
            if let Some(have) = &current {
                e.push(
                    key(&at(p, &format!("headers.request.{op}")), name),
                    format!(
                        "authority header cannot be set multiple times: have {have:?}, attempting to set {value:?}"
                    ),
                );
                return;
            }
            current = Some(value.clone());
        }
    }
}

fn validate_tls_route(e: &mut Errors, p: &str, route: &TlsRoute, vs: &VirtualServiceSpec) {
    if route.r#match.is_empty() {
        e.push(at(p, "match"), "TLS route must have at least one match condition");
    }
    for (j, m) in route.r#match.iter().enumerate() {
        let mp = idx(&at(p, "match"), j);
        if m.sni_hosts.is_empty() {
            e.push(at(&mp, "sniHosts"), "TLS match must have at least one SNI host");
        }
        for (k, sni) in m.sni_hosts.iter().enumerate() {
            e.check(idx(&at(&mp, "sniHosts"), k), check_sni_host(sni, vs));
        }
        for (k, subnet) in m.destination_subnets.iter().enumerate() {
            e.check(idx(&at(&mp, "destinationSubnets"), k), check_ip_subnet(subnet));
        }
        if let Some(port) = m.port.filter(|p| *p != 0) {
            e.check(at(&mp, "port"), check_port(port));
        }
        validate_labels(e, &at(&mp, "sourceLabels"), &m.source_labels);
        validate_gateway_names(e, &at(&mp, "gateways"), &m.gateways);
    }
    if route.route.is_empty() {
        e.push(at(p, "route"), "TLS route is required");
    }
    let destinations: Vec<_> = route.route.iter().map(|d| (&d.destination, d.weight)).collect();
    validate_destinations(e, &at(p, "route"), &destinations);
}

/// An SNI host must be a valid (wildcard) domain covered by one of the VirtualService's hosts.
fn check_sni_host(sni: &str, vs: &VirtualServiceSpec) -> Result<(), String> {
    // As in Istio, "bound to a gateway" here means "`mesh` is not listed".
    let gateway = !vs.gateways.iter().any(|g| g == "mesh");
    let valid = if gateway { check_gateway_bound_domain(true, sni) } else { check_wildcard_domain(sni) };
    if let Err(err) = valid {
        // An IP address goes against the SNI spec, but Istio only warns about it.
        return if is_ip_addr(sni) { Ok(()) } else { Err(err) };
    }
    if vs.hosts.iter().any(|h| host_subset_of(sni, h)) {
        Ok(())
    } else {
        Err(format!(
            "SNI host {sni:?} is not a compatible subset of any of the virtual service hosts: [{}]",
            vs.hosts.join(", ")
        ))
    }
}

fn validate_tcp_route(e: &mut Errors, p: &str, route: &TcpRoute) {
    for (j, m) in route.r#match.iter().enumerate() {
        let mp = idx(&at(p, "match"), j);
        for (k, subnet) in m.destination_subnets.iter().enumerate() {
            e.check(idx(&at(&mp, "destinationSubnets"), k), check_ip_subnet(subnet));
        }
        if let Some(port) = m.port.filter(|p| *p != 0) {
            e.check(at(&mp, "port"), check_port(port));
        }
        validate_labels(e, &at(&mp, "sourceLabels"), &m.source_labels);
        validate_gateway_names(e, &at(&mp, "gateways"), &m.gateways);
    }
    if route.route.is_empty() {
        e.push(at(p, "route"), "TCP route is required");
    }
    let destinations: Vec<_> = route.route.iter().map(|d| (&d.destination, d.weight)).collect();
    validate_destinations(e, &at(p, "route"), &destinations);
}

// ------------------------------------------------------------------------------------------------
// DestinationRule validation (validation.go: ValidateDestinationRule, validateTrafficPolicy, ...;
// agent/validation.go: ValidateTLS, ValidateLocalityLbSetting)
// ------------------------------------------------------------------------------------------------

pub(super) fn validate_destination_rule(namespace: &str, spec: &DestinationRuleSpec) -> Errors {
    let mut e = Errors::default();
    e.check("spec.host", check_wildcard_domain(&spec.host));
    if let Some(policy) = &spec.traffic_policy {
        validate_traffic_policy(&mut e, "spec.trafficPolicy", policy);
    }
    let mut names = BTreeSet::new();
    for (i, subset) in spec.subsets.iter().enumerate() {
        let p = idx("spec.subsets", i);
        if !names.insert(subset.name.as_str()) {
            e.push(at(&p, "name"), format!("duplicate subset names: {}", subset.name));
        }
        e.check(at(&p, "name"), check_subset_name(&subset.name));
        validate_labels(&mut e, &at(&p, "labels"), &subset.labels);
        if let Some(policy) = &subset.traffic_policy {
            validate_traffic_policy(&mut e, &at(&p, "trafficPolicy"), policy);
        }
    }
    validate_export_to(&mut e, "spec.exportTo", namespace, &spec.export_to, false, spec.workload_selector.is_some());
    if let Some(selector) = &spec.workload_selector {
        validate_selector_labels(&mut e, "spec.workloadSelector.matchLabels", &selector.match_labels);
    }
    e
}

fn validate_traffic_policy(e: &mut Errors, p: &str, policy: &TrafficPolicy) {
    if *policy == TrafficPolicy::default() {
        e.push(p, "traffic policy must have at least one field");
        return;
    }
    if policy.tunnel.is_some() && policy.proxy_protocol.is_some() {
        e.push(p, "tunnel and proxyProtocol must not be set together");
        return;
    }
    validate_policy_parts(e, p, &policy.load_balancer, &policy.connection_pool, &policy.outlier_detection, &policy.tls);
    for (i, port_policy) in policy.port_level_settings.iter().enumerate() {
        let pp = idx(&at(p, "portLevelSettings"), i);
        if port_policy.port.is_none() {
            e.push(at(&pp, "port"), "portTrafficPolicy must have valid port");
        }
        if port_policy.load_balancer.is_none()
            && port_policy.connection_pool.is_none()
            && port_policy.outlier_detection.is_none()
            && port_policy.tls.is_none()
        {
            e.push(&pp, "port traffic policy must have at least one field");
        } else {
            validate_policy_parts(
                e,
                &pp,
                &port_policy.load_balancer,
                &port_policy.connection_pool,
                &port_policy.outlier_detection,
                &port_policy.tls,
            );
        }
    }
    if let Some(tunnel) = &policy.tunnel {
        validate_tunnel(e, &at(p, "tunnel"), tunnel);
    }
    if let Some(budget) = &policy.retry_budget {
        let bp = at(p, "retryBudget");
        if let Some(percent) = budget.percent.filter(|v| !(0.0..=100.0).contains(&v.0)) {
            e.push(at(&bp, "percent"), format!("Invalid value: {}: must be in range [0, 100]", percent.0));
        }
        if let Some(interval) = &budget.budget_interval {
            e.check(at(&bp, "budgetInterval"), check_duration_format(interval));
        }
    }
}

/// The parts shared by a traffic policy and a port traffic policy.
fn validate_policy_parts(
    e: &mut Errors,
    p: &str,
    load_balancer: &Option<LoadBalancerSettings>,
    connection_pool: &Option<ConnectionPoolSettings>,
    outlier: &Option<OutlierDetection>,
    tls: &Option<ClientTlsSettings>,
) {
    if let Some(outlier) = outlier {
        validate_outlier_detection(e, &at(p, "outlierDetection"), outlier);
    }
    if let Some(pool) = connection_pool {
        validate_connection_pool(e, &at(p, "connectionPool"), pool);
    }
    if let Some(lb) = load_balancer {
        validate_load_balancer(e, &at(p, "loadBalancer"), lb);
    }
    if let Some(tls) = tls {
        validate_client_tls(e, &at(p, "tls"), tls);
    }
}

fn validate_outlier_detection(e: &mut Errors, p: &str, outlier: &OutlierDetection) {
    check_optional_duration(e, at(p, "baseEjectionTime"), &outlier.base_ejection_time);
    check_optional_duration(e, at(p, "interval"), &outlier.interval);
    if !outlier.split_external_local_origin_errors && outlier.consecutive_local_origin_failures.unwrap_or(0) > 0 {
        e.push(
            at(p, "consecutiveLocalOriginFailures"),
            "outlier detection consecutive local origin failures is specified, but split external local origin errors is set to false",
        );
    }
    e.check(at(p, "maxEjectionPercent"), check_percent(outlier.max_ejection_percent.unwrap_or(0)));
    e.check(at(p, "minHealthPercent"), check_percent(outlier.min_health_percent.unwrap_or(0)));
    for (i, code) in outlier.outlier_detection_http_error_codes.iter().enumerate() {
        if !(100..=599).contains(code) {
            e.push(
                idx(&at(p, "outlierDetectionHttpErrorCodes"), i),
                format!("Invalid value: {code}: must be in range [100, 599]"),
            );
        }
    }
}

fn validate_connection_pool(e: &mut Errors, p: &str, pool: &ConnectionPoolSettings) {
    if pool.http.is_none() && pool.tcp.is_none() {
        e.push(p, "connection pool must have at least one field");
        return;
    }
    if let Some(http) = &pool.http {
        let hp = at(p, "http");
        let counts = [
            (http.http1_max_pending_requests, "http1MaxPendingRequests", "http1 max pending requests"),
            (http.http2_max_requests, "http2MaxRequests", "http2 max requests"),
            (http.max_requests_per_connection, "maxRequestsPerConnection", "max requests per connection"),
            (http.max_retries, "maxRetries", "max retries"),
            (http.max_concurrent_streams, "maxConcurrentStreams", "max concurrent streams"),
        ];
        for (value, field, what) in counts {
            if value.unwrap_or(0) < 0 {
                e.push(at(&hp, field), format!("{what} must be non-negative"));
            }
        }
        check_optional_duration(e, at(&hp, "idleTimeout"), &http.idle_timeout);
        if http.h2_upgrade_policy == Some(H2UpgradePolicy::Upgrade) && http.use_client_protocol {
            e.push(
                at(&hp, "useClientProtocol"),
                "use client protocol must not be true when H2UpgradePolicy is UPGRADE",
            );
        }
        if let Some(keepalive) = &http.http2_keep_alive {
            let kp = at(&hp, "http2KeepAlive");
            for (field, value) in [("interval", &keepalive.interval), ("timeout", &keepalive.timeout)] {
                match value {
                    None => e.push(at(&kp, field), format!("http2 keepalive {field} is required")),
                    Some(d) => e.check(at(&kp, field), check_duration(d)),
                }
            }
        }
    }
    if let Some(tcp) = &pool.tcp {
        let tp = at(p, "tcp");
        if tcp.max_connections.unwrap_or(0) < 0 {
            e.push(at(&tp, "maxConnections"), "max connections must be non-negative");
        }
        check_optional_duration(e, at(&tp, "connectTimeout"), &tcp.connect_timeout);
        check_optional_duration(e, at(&tp, "maxConnectionDuration"), &tcp.max_connection_duration);
        if let Some(idle) = &tcp.idle_timeout {
            // `0s` disables the idle timeout.
            if parse_duration(idle) != Some(0) {
                e.check(at(&tp, "idleTimeout"), check_duration(idle));
            }
        }
        if let Some(keepalive) = &tcp.tcp_keepalive {
            check_optional_duration(e, at(&tp, "tcpKeepalive.time"), &keepalive.time);
            check_optional_duration(e, at(&tp, "tcpKeepalive.interval"), &keepalive.interval);
        }
    }
}

fn is_prime(x: u64) -> bool {
    if x != 0 && x < 4 {
        return true;
    }
    if x.is_multiple_of(2) {
        return false;
    }
    let mut factor = 3;
    while factor * factor <= x {
        if x.is_multiple_of(factor) {
            return false;
        }
        factor += 2;
    }
    true
}

fn validate_load_balancer(e: &mut Errors, p: &str, lb: &LoadBalancerSettings) {
    let policies = [lb.simple.is_some(), lb.consistent_hash.is_some(), lb.backend_utilization.is_some()];
    if policies.iter().filter(|s| **s).count() > 1 {
        e.push(p, "only one of simple, consistentHash or backendUtilization can be set");
    }
    if let Some(hash) = &lb.consistent_hash {
        validate_consistent_hash(e, &at(p, "consistentHash"), hash);
    }
    if let Some(bu) = &lb.backend_utilization {
        let bp = at(p, "backendUtilization");
        for (field, value) in [
            ("weightExpirationPeriod", &bu.weight_expiration_period),
            ("weightStabilizationPeriod", &bu.weight_stabilization_period),
            ("weightUpdatePeriod", &bu.weight_update_period),
        ] {
            if let Some(d) = value {
                e.check(at(&bp, field), check_duration_format(d));
            }
        }
    }
    if lb.locality_lb_setting.is_some() && lb.zone_aware_lb_setting.is_some() {
        e.push(p, "only one of localityLbSetting and zoneAwareLbSetting can be set");
    }
    if let Some(locality) = &lb.locality_lb_setting {
        validate_locality_lb(e, &at(p, "localityLbSetting"), locality);
    }
    if let Some(zone_aware) = &lb.zone_aware_lb_setting {
        validate_zone_aware_lb(e, &at(p, "zoneAwareLbSetting"), zone_aware);
    }
    if lb.warmup_duration_secs.is_some() && lb.warmup.is_some() {
        e.push(p, "only one of warmupDurationSecs or warmup can be set");
    }
    check_optional_duration(e, at(p, "warmupDurationSecs"), &lb.warmup_duration_secs);
    if let Some(warmup) = &lb.warmup {
        let wp = at(p, "warmup");
        e.check(at(&wp, "duration"), check_duration(&warmup.duration));
        if let Some(min) = warmup.minimum_percent.filter(|v| !(0.0..=100.0).contains(&v.0)) {
            e.push(
                at(&wp, "minimumPercent"),
                format!("Invalid value: {}: minimumPercent value should be between 0 and 100", min.0),
            );
        }
        if let Some(aggression) = warmup.aggression.filter(|v| v.0.is_nan() || v.0 <= 0.0) {
            e.push(
                at(&wp, "aggression"),
                format!("Invalid value: {}: aggression should be greater than 0", aggression.0),
            );
        }
    }
}

fn validate_consistent_hash(e: &mut Errors, p: &str, hash: &ConsistentHashLb) {
    let keys = [
        hash.http_header_name.is_some(),
        hash.http_cookie.is_some(),
        hash.use_source_ip.is_some(),
        hash.http_query_parameter_name.is_some(),
    ];
    if keys.iter().filter(|k| **k).count() > 1 {
        e.push(p, "only one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName can be set");
    }
    if hash.ring_hash.is_some() && hash.maglev.is_some() {
        e.push(p, "only one of ringHash or maglev can be set");
    }
    if let Some(cookie) = &hash.http_cookie {
        let cp = at(p, "httpCookie");
        if cookie.name.is_empty() {
            e.push(at(&cp, "name"), "name required for HttpCookie");
        }
        if let Some(ttl) = &cookie.ttl {
            e.check(at(&cp, "ttl"), check_duration_format(ttl));
        }
        let mut names = BTreeSet::new();
        for (i, attribute) in cookie.attributes.iter().enumerate() {
            let ap = at(&idx(&at(&cp, "attributes"), i), "name");
            if attribute.name.is_empty() {
                e.push(ap, "cookie attribute name cannot be empty");
            } else if !names.insert(attribute.name.as_str()) {
                e.push(ap, format!("duplicate cookie attribute name: {}", attribute.name));
            }
        }
    }
    if hash.minimum_ring_size.unwrap_or(0) != 0 && (hash.ring_hash.is_some() || hash.maglev.is_some()) {
        e.push(at(p, "minimumRingSize"), "only one of MinimumRingSize or Maglev/Ringhash can be specified");
    }
    if let Some(maglev) = &hash.maglev {
        let tp = at(p, "maglev.tableSize");
        let size = maglev.table_size.unwrap_or(0);
        if size == 0 {
            e.push(&tp, "tableSize must be set for maglev");
        }
        if size >= 5_000_011 {
            e.push(&tp, "tableSize must be less than 5000011 for maglev");
        }
        if !is_prime(size) {
            e.push(&tp, "tableSize must be a prime number for maglev");
        }
    }
}

const TOPOLOGY_LABELS: [&str; 3] =
    ["topology.kubernetes.io/region", "topology.kubernetes.io/zone", "topology.istio.io/subzone"];

fn validate_locality_lb(e: &mut Errors, p: &str, lb: &LocalityLbSetting) {
    if !lb.distribute.is_empty() && !lb.failover.is_empty() {
        e.push(p, "can not simultaneously specify 'distribute' and 'failover'");
        return;
    }
    if !lb.failover.is_empty()
        && let Some(label) = lb.failover_priority.iter().find(|l| TOPOLOGY_LABELS.contains(&l.as_str()))
    {
        e.push(
            at(p, "failoverPriority"),
            format!("can not simultaneously set 'failover' and topology label '{label}' in 'failover_priority'"),
        );
        return;
    }
    let mut sources = Vec::new();
    for (i, distribute) in lb.distribute.iter().enumerate() {
        let dp = idx(&at(p, "distribute"), i);
        sources.push(distribute.from.as_deref().unwrap_or(""));
        if distribute.to.values().any(|w| !(1..=100).contains(w)) {
            e.push(at(&dp, "to"), "locality weight must be in range [1, 100]");
            return;
        }
        let total: u32 = distribute.to.values().sum();
        if total != 100 {
            e.push(at(&dp, "to"), format!("total locality weight {total} != 100"));
            return;
        }
        let destinations: Vec<&str> = distribute.to.keys().map(String::as_str).collect();
        e.check(at(&dp, "to"), check_localities(&destinations));
    }
    e.check(at(p, "distribute"), check_localities(&sources));
    for (i, failover) in lb.failover.iter().enumerate() {
        let fp = idx(&at(p, "failover"), i);
        let (from, to) = (failover.from.as_deref().unwrap_or(""), failover.to.as_deref().unwrap_or(""));
        if from == to {
            e.push(&fp, "locality lb failover settings must specify different regions");
        }
        if from.contains('/') || to.contains('/') {
            e.push(&fp, "locality lb failover only specify region");
        }
        if from.contains('*') || to.contains('*') {
            e.push(&fp, "locality lb failover region should not contain '*' wildcard");
        }
    }
}

/// Localities (`region/zone/subzone`, optionally ending in `*`) that do not overlap.
fn check_localities(localities: &[&str]) -> Result<(), String> {
    // region -> zone -> subzones; "*" stands for "all".
    let mut seen: BTreeMap<&str, BTreeMap<&str, BTreeSet<&str>>> = BTreeMap::new();
    for &locality in localities {
        let overlap = || Err(format!("locality {locality} overlap with previous specified ones"));
        let stars = locality.matches('*').count();
        if stars > 1 || (stars == 1 && !locality.ends_with('*')) {
            return Err(format!("locality {locality} wildcard '*' number can not exceed 1 and must be in the end"));
        }
        if seen.contains_key("*") {
            return overlap();
        }
        let parts: Vec<&str> = locality.splitn(3, '/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(format!("locality {locality} must not contain empty region/zone/subzone info"));
        }
        let all = || BTreeSet::from(["*"]);
        match parts[..] {
            [region] => {
                if seen.contains_key(region) {
                    return overlap();
                }
                seen.insert(region, BTreeMap::from([("*", all())]));
            }
            [region, zone] => {
                let zones = seen.entry(region).or_default();
                if zones.contains_key("*") || zones.contains_key(zone) {
                    return overlap();
                }
                zones.insert(zone, all());
            }
            [region, zone, subzone] => {
                let zones = seen.entry(region).or_default();
                if zones.contains_key("*") {
                    return overlap();
                }
                let subzones = zones.entry(zone).or_default();
                if subzones.contains("*") || subzones.contains(subzone) {
                    return overlap();
                }
                subzones.insert(subzone);
            }
            _ => unreachable!("splitn(3) yields one to three parts"),
        }
    }
    Ok(())
}

fn validate_zone_aware_lb(e: &mut Errors, p: &str, lb: &ZoneAwareLbSetting) {
    for (i, label) in lb.failover_priority.iter().enumerate() {
        if TOPOLOGY_LABELS.contains(&label.as_str()) {
            e.push(
                idx(&at(p, "failoverPriority"), i),
                format!(
                    "'failover_priority' for zone aware lb must not use topology label '{label}'; region- and zone-level routing are handled automatically"
                ),
            );
        }
    }
    for (i, failover) in lb.failover.iter().enumerate() {
        let fp = idx(&at(p, "failover"), i);
        let (from, to) = (failover.from.as_deref().unwrap_or(""), failover.to.as_deref().unwrap_or(""));
        if from == to {
            e.push(&fp, "zone aware lb failover settings must specify different regions");
        }
        if from.contains('/') || to.contains('/') {
            e.push(
                &fp,
                "zone aware lb failover only specifies region; zone and subzone failover are handled automatically",
            );
        }
        if from.contains('*') || to.contains('*') {
            e.push(&fp, "zone aware lb failover region should not contain '*' wildcard");
        }
    }
}

fn validate_client_tls(e: &mut Errors, p: &str, tls: &ClientTlsSettings) {
    let mode = tls.effective_mode();
    let (cert, key, ca, crl) =
        (set(&tls.client_certificate), set(&tls.private_key), set(&tls.ca_certificates), set(&tls.ca_crl));
    let credential_name = set(&tls.credential_name);
    if tls.insecure_skip_verify == Some(true) {
        if mode == ClientTlsMode::Simple
            && (ca.is_some() || credential_name.is_some() || !tls.subject_alt_names.is_empty())
        {
            e.push(
                at(p, "insecureSkipVerify"),
                "cannot specify CaCertificates or CredentialName or SubjectAltNames when InsecureSkipVerify is set true",
            );
        }
        if mode == ClientTlsMode::Mutual && (ca.is_some() || !tls.subject_alt_names.is_empty()) {
            e.push(
                at(p, "insecureSkipVerify"),
                "cannot specify CaCertificates or SubjectAltNames when InsecureSkipVerify is set true",
            );
        }
    }
    if matches!(mode, ClientTlsMode::Simple | ClientTlsMode::Mutual) && credential_name.is_some() {
        // Certificates come from the named secret.
        if cert.is_some() || ca.is_some() || key.is_some() || crl.is_some() {
            e.push(p, "cannot specify client certificates or CA certificate or CA CRL If credentialName is set");
        }
        return;
    }
    if mode == ClientTlsMode::Mutual {
        if cert.is_none() {
            e.push(at(p, "clientCertificate"), "client certificate required for mutual tls");
        }
        if key.is_none() {
            e.push(at(p, "privateKey"), "private key required for mutual tls");
        }
    }
}

fn validate_tunnel(e: &mut Errors, p: &str, tunnel: &TunnelSettings) {
    if let Some(protocol) = set(&tunnel.protocol)
        && protocol != "CONNECT"
        && protocol != "POST"
    {
        e.push(at(p, "protocol"), "tunnel protocol must be \"CONNECT\" or \"POST\"");
    }
    if let (Err(fqdn), Err(ip)) = (check_fqdn(&tunnel.target_host), check_ip_addr(&tunnel.target_host)) {
        e.push(at(p, "targetHost"), format!("tunnel target host must be valid FQDN or IP address: {fqdn}; {ip}"));
    }
    if let Err(err) = check_port(tunnel.target_port) {
        e.push(at(p, "targetPort"), format!("tunnel target port is invalid: {err}"));
    }
}

// ------------------------------------------------------------------------------------------------
// ServiceEntry validation (validation.go: ValidateServiceEntry, validateWorkloadEntry; CRD rules)
// ------------------------------------------------------------------------------------------------

pub(super) fn validate_service_entry(namespace: &str, spec: &ServiceEntrySpec) -> Errors {
    let mut e = Errors::default();
    let resolution = spec.effective_resolution();
    if let Some(selector) = &spec.workload_selector {
        validate_selector_labels(&mut e, "spec.workloadSelector.labels", &selector.labels);
        if !spec.endpoints.is_empty() {
            e.push("spec.workloadSelector", "only one of WorkloadSelector or Endpoints can be set");
        }
    }

    if spec.hosts.is_empty() {
        e.push("spec.hosts", "service entry must have at least one host");
    }
    for (i, host) in spec.hosts.iter().enumerate() {
        if host == "*" {
            e.push(idx("spec.hosts", i), "hostname cannot be wildcard");
        } else {
            e.check(idx("spec.hosts", i), check_wildcard_domain(host));
        }
    }

    let mut cidr = false;
    for (i, address) in spec.addresses.iter().enumerate() {
        cidr |= address.contains('/');
        e.check(idx("spec.addresses", i), check_ip_subnet(address));
    }
    if cidr && !matches!(resolution, Resolution::None | Resolution::Static) {
        e.push("spec.addresses", "CIDR addresses are allowed only for NONE/STATIC resolution types");
    }

    let mut port_names = BTreeSet::new();
    let mut port_numbers = BTreeSet::new();
    for (i, port) in spec.ports.iter().enumerate() {
        let p = idx("spec.ports", i);
        if !port_names.insert(port.name.as_str()) {
            e.push(at(&p, "name"), format!("Duplicate value: port name {:?} is already defined", port.name));
        }
        if !port_numbers.insert(port.number) {
            e.push(at(&p, "number"), "port number cannot be duplicated");
        }
        if let Some(target) = port.target_port {
            e.check(at(&p, "targetPort"), check_service_entry_port(target));
        }
        e.check(at(&p, "name"), check_port_name(&port.name));
        if let Some(protocol) = set(&port.protocol)
            && Protocol::parse(protocol) == Protocol::Unsupported
        {
            e.push(at(&p, "protocol"), format!("unsupported protocol: {protocol}"));
        }
        e.check(at(&p, "number"), check_service_entry_port(port.number));
    }

    match resolution {
        Resolution::None => {
            if !spec.endpoints.is_empty() {
                e.push("spec.endpoints", "NONE mode cannot set endpoints");
            }
        }
        Resolution::Static => {
            for (i, endpoint) in spec.endpoints.iter().enumerate() {
                validate_static_endpoint(&mut e, &idx("spec.endpoints", i), endpoint, &port_names);
            }
        }
        Resolution::Dns | Resolution::DnsRoundRobin => {
            if spec.endpoints.is_empty()
                && let Some((i, err)) =
                    spec.hosts.iter().enumerate().find_map(|(i, h)| check_fqdn(h).err().map(|err| (i, err)))
            {
                e.push(
                    idx("spec.hosts", i),
                    format!(
                        "hosts must be FQDN or contain only prefix wildcards if no endpoints are provided for resolution mode {resolution}, {err}"
                    ),
                );
            }
            if resolution == Resolution::DnsRoundRobin && spec.endpoints.len() > 1 {
                e.push("spec.endpoints", "DNS_ROUND_ROBIN mode cannot have multiple endpoints");
            }
            for (i, endpoint) in spec.endpoints.iter().enumerate() {
                validate_dns_endpoint(&mut e, &idx("spec.endpoints", i), endpoint, &port_names);
            }
        }
        Resolution::DynamicDns => {
            for (i, host) in spec.hosts.iter().enumerate() {
                if !host.starts_with('*') {
                    e.push(idx("spec.hosts", i), format!("host must be wildcarded for resolution mode {resolution}"));
                }
            }
            if !spec.addresses.is_empty() {
                e.push(
                    "spec.addresses",
                    format!(
                        "addresses cannot be set for resolution type {resolution}. HTTP route domains will only be generated from the hosts field values"
                    ),
                );
            }
            if !spec.endpoints.is_empty() {
                e.push(
                    "spec.endpoints",
                    format!(
                        "endpoints cannot be set for resolution type {resolution}. Destination IP address determined from hosts field values"
                    ),
                );
            }
            for (i, port) in spec.ports.iter().enumerate() {
                let protocol = Protocol::parse(port.protocol.as_deref().unwrap_or(""));
                if !matches!(protocol, Protocol::Http | Protocol::Tls | Protocol::Grpc | Protocol::Http2) {
                    e.push(
                        at(&idx("spec.ports", i), "protocol"),
                        format!(
                            "only HTTP, TLS, GRPC, and HTTP2 protocols are supported for resolution type {resolution}"
                        ),
                    );
                }
            }
        }
    }

    // Plain TCP cannot tell several hosts apart (HTTP has the authority, TLS the SNI) unless the
    // hosts are ignored anyway (NONE).
    if resolution != Resolution::None && spec.hosts.len() > 1 {
        let tcp_port = spec.ports.iter().position(|port| {
            let protocol = Protocol::parse(port.protocol.as_deref().unwrap_or(""));
            !protocol.is_http() && !protocol.is_tls()
        });
        if let Some(i) = tcp_port {
            e.push(idx("spec.ports", i), "multiple hosts provided with non-HTTP, non-TLS ports");
        }
    }

    validate_export_to(&mut e, "spec.exportTo", namespace, &spec.export_to, true, false);
    e
}

fn validate_endpoint_ports(e: &mut Errors, p: &str, endpoint: &WorkloadEntry, service_ports: &BTreeSet<&str>) {
    for (name, port) in &endpoint.ports {
        let pp = key(&at(p, "ports"), name);
        if !service_ports.contains(name.as_str()) {
            e.push(&pp, format!("endpoint port {port} is not defined by the service entry"));
        }
        e.check(&pp, check_port_name(name));
        e.check(pp, check_service_entry_port(*port));
    }
    validate_labels(e, &at(p, "labels"), &endpoint.labels);
}

/// STATIC endpoints are IP addresses or unix domain sockets.
fn validate_static_endpoint(e: &mut Errors, p: &str, endpoint: &WorkloadEntry, service_ports: &BTreeSet<&str>) {
    let address = endpoint.address.as_deref().unwrap_or("");
    if address.is_empty() && set(&endpoint.network).is_none() {
        e.push(at(p, "address"), "address is required");
        return;
    }
    if let Some(socket) = address.strip_prefix("unix://") {
        e.check(at(p, "address"), check_unix_address(socket));
        if !endpoint.ports.is_empty() {
            e.push(at(p, "ports"), format!("unix endpoint {address} must not include ports"));
        }
        if service_ports.len() != 1 {
            e.push(p, "exactly 1 service port required for unix endpoints");
        }
    } else if !address.is_empty() && !is_ip_addr(address) {
        e.push(at(p, "address"), format!("endpoint address {address:?} is not a valid IP address"));
    }
    validate_endpoint_ports(e, p, endpoint, service_ports);
}

/// DNS endpoints are IP addresses or DNS names.
fn validate_dns_endpoint(e: &mut Errors, p: &str, endpoint: &WorkloadEntry, service_ports: &BTreeSet<&str>) {
    let address = endpoint.address.as_deref().unwrap_or("");
    if !is_ip_addr(address) && check_fqdn(address).is_err() {
        e.push(at(p, "address"), format!("endpoint address {address:?} is not a valid FQDN or an IP address"));
    }
    validate_endpoint_ports(e, p, endpoint, service_ports);
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::test_support::*;
    use super::*;

    // --- durations -------------------------------------------------------------------------------

    #[test]
    fn malformed_timeout_is_rejected() {
        rejected(
            Kind::VirtualService,
            vs_route(json!({"timeout": "5 seconds"})),
            "spec.http[0].timeout",
            "invalid duration",
        );
    }

    #[test]
    fn zero_timeout_is_rejected() {
        rejected(Kind::VirtualService, vs_route(json!({"timeout": "0s"})), "spec.http[0].timeout", "greater than 1ms");
    }

    #[test]
    fn sub_millisecond_timeout_is_rejected() {
        rejected(Kind::VirtualService, vs_route(json!({"timeout": "1.0005s"})), "spec.http[0].timeout", "ms precision");
    }

    // --- VirtualService --------------------------------------------------------------------------

    #[test]
    fn virtual_service_with_matches_weights_retries_and_cors_is_accepted() {
        accepted(
            Kind::VirtualService,
            json!({
                "hosts": ["reviews.prod.svc.cluster.local", "*.bookinfo.com"],
                "gateways": ["some-config-namespace/my-gateway", "mesh"],
                "http": [
                    {
                        "name": "jason",
                        "match": [{"headers": {"end-user": {"exact": "jason"}}, "ignoreUriCase": true, "port": 9080}],
                        "route": [
                            {"destination": {"host": "reviews", "subset": "v2"}, "weight": 25,
                             "headers": {"response": {"remove": ["foo"]}}},
                            {"destination": {"host": "reviews", "subset": "v1"}, "weight": 75}
                        ],
                        "retries": {"attempts": 3, "perTryTimeout": "2s", "retryOn": "gateway-error,connect-failure,503"},
                        "corsPolicy": {"allowOrigins": [{"exact": "https://example.com"}], "allowMethods": ["POST", "GET"],
                                       "allowHeaders": ["X-Foo-Bar"], "maxAge": "24h"},
                        "headers": {"request": {"set": {"test": "true", "x-host": "%HOSTNAME%"}}}
                    },
                    {"route": [{"destination": {"host": "reviews", "subset": "v1"}}], "timeout": "10s"}
                ]
            }),
        );
    }

    #[test]
    fn virtual_service_without_any_route_is_rejected() {
        rejected(Kind::VirtualService, json!({"hosts": ["reviews"]}), "spec.http", "http, tcp or tls must be provided");
    }

    #[test]
    fn wildcard_host_bound_to_the_mesh_is_rejected() {
        let spec = json!({"hosts": ["*"], "http": [{"route": [{"destination": {"host": "reviews"}}]}]});
        rejected(Kind::VirtualService, spec, "spec.hosts[0]", "wildcard host * is not allowed");
    }

    #[test]
    fn wildcard_host_bound_to_a_gateway_is_accepted() {
        let spec = json!({"hosts": ["*"], "gateways": ["bookinfo-gateway"], "http": [{"route": [{"destination": {"host": "productpage"}}]}]});
        accepted(Kind::VirtualService, spec);
    }

    #[test]
    fn overlapping_hosts_are_rejected() {
        let spec =
            json!({"hosts": ["*.example.com", "a.example.com"], "http": [{"route": [{"destination": {"host": "a"}}]}]});
        rejected(Kind::VirtualService, spec, "spec.hosts[1]", "duplicate hosts in virtual service");
    }

    #[test]
    fn invalid_host_is_rejected() {
        let spec = json!({"hosts": ["reviews_v1"], "http": [{"route": [{"destination": {"host": "reviews"}}]}]});
        rejected(Kind::VirtualService, spec, "spec.hosts[0]", "invalid (label \"reviews_v1\" invalid)");
    }

    #[test]
    fn delegate_virtual_service_with_gateways_is_rejected() {
        let spec = json!({"gateways": ["my-gateway"], "http": [{"route": [{"destination": {"host": "reviews"}}]}]});
        rejected(Kind::VirtualService, spec, "spec.gateways", "delegate virtual service must have no gateways");
    }

    #[test]
    fn delegate_virtual_service_with_only_http_routes_is_accepted() {
        accepted(Kind::VirtualService, json!({"http": [{"route": [{"destination": {"host": "reviews"}}]}]}));
    }

    #[test]
    fn malformed_gateway_reference_is_rejected() {
        let spec = json!({"hosts": ["reviews"], "gateways": ["istio-system/"], "http": [{"route": [{"destination": {"host": "reviews"}}]}]});
        rejected(Kind::VirtualService, spec, "spec.gateways[0]", "config namespace and gateway name cannot be empty");
    }

    #[test]
    fn http_route_without_route_redirect_or_direct_response_is_rejected() {
        rejected(
            Kind::VirtualService,
            vs_http(json!([{"timeout": "1s"}])),
            "spec.http[0].route",
            "HTTP route, redirect or direct_response is required",
        );
    }

    #[test]
    fn http_route_with_route_and_redirect_is_rejected() {
        let spec = vs_route(json!({"redirect": {"uri": "/new"}}));
        rejected(Kind::VirtualService, spec, "spec.http[0].redirect", "cannot contain both route and redirect");
    }

    #[test]
    fn http_route_with_route_and_direct_response_is_rejected() {
        let spec = vs_route(json!({"directResponse": {"status": 503}}));
        rejected(
            Kind::VirtualService,
            spec,
            "spec.http[0].directResponse",
            "cannot contain both route and direct_response",
        );
    }

    #[test]
    fn direct_response_status_out_of_range_is_rejected() {
        let spec = vs_http(json!([{"directResponse": {"status": 600, "body": {"string": "no"}}}]));
        rejected(Kind::VirtualService, spec, "spec.http[0].directResponse.status", "not in range 200-599");
    }

    #[test]
    fn negative_weight_is_rejected() {
        let spec = vs_http(json!([{"route": [
            {"destination": {"host": "reviews", "subset": "v1"}, "weight": -10},
            {"destination": {"host": "reviews", "subset": "v2"}, "weight": 110}
        ]}]));
        rejected(Kind::VirtualService, spec, "spec.http[0].route[0].weight", "weight -10 < 0");
    }

    #[test]
    fn weights_that_all_are_zero_are_rejected() {
        let spec = vs_http(json!([{"route": [
            {"destination": {"host": "reviews", "subset": "v1"}},
            {"destination": {"host": "reviews", "subset": "v2"}, "weight": 0}
        ]}]));
        rejected(Kind::VirtualService, spec, "spec.http[0].route", "total destination weight = 0");
    }

    #[test]
    fn weights_need_not_sum_to_100() {
        let spec = vs_http(json!([{"route": [
            {"destination": {"host": "reviews", "subset": "v1"}, "weight": 1},
            {"destination": {"host": "reviews", "subset": "v2"}, "weight": 2}
        ]}]));
        accepted(Kind::VirtualService, spec);
    }

    #[test]
    fn wildcard_destination_host_is_rejected() {
        let spec = vs_http(json!([{"route": [{"destination": {"host": "*"}}]}]));
        rejected(Kind::VirtualService, spec, "spec.http[0].route[0].destination.host", "invalid destination host *");
    }

    #[test]
    fn invalid_subset_name_is_rejected() {
        let spec = vs_http(json!([{"route": [{"destination": {"host": "reviews", "subset": "v1.0"}}]}]));
        rejected(Kind::VirtualService, spec, "spec.http[0].route[0].destination.subset", "subset name is invalid");
    }

    #[test]
    fn destination_port_out_of_range_is_rejected() {
        let spec = vs_http(json!([{"route": [{"destination": {"host": "reviews", "port": {"number": 70000}}}]}]));
        rejected(
            Kind::VirtualService,
            spec,
            "spec.http[0].route[0].destination.port.number",
            "must be in the range 1..65535",
        );
    }

    #[test]
    fn fault_percentage_above_100_is_rejected() {
        let spec = vs_route(json!({"fault": {"abort": {"httpStatus": 500, "percentage": {"value": 100.5}}}}));
        rejected(
            Kind::VirtualService,
            spec,
            "spec.http[0].fault.abort.percentage.value",
            "nor in range [0.0001, 100.0]",
        );
    }

    #[test]
    fn negative_delay_percentage_is_rejected() {
        let spec = vs_route(json!({"fault": {"delay": {"fixedDelay": "5s", "percentage": {"value": -1}}}}));
        rejected(Kind::VirtualService, spec, "spec.http[0].fault.delay.percentage.value", "nor in range");
    }

    #[test]
    fn deprecated_delay_percent_above_100_is_rejected() {
        let spec = vs_route(json!({"fault": {"delay": {"fixedDelay": "2s", "percent": 101}}}));
        rejected(Kind::VirtualService, spec, "spec.http[0].fault.delay.percent", "not in range 0..100");
    }

    #[test]
    fn abort_status_outside_200_to_599_is_rejected() {
        for status in [199, 600] {
            let spec = vs_route(json!({"fault": {"abort": {"httpStatus": status}}}));
            rejected(Kind::VirtualService, spec, "spec.http[0].fault.abort.httpStatus", "not in range 200-599");
        }
    }

    #[test]
    fn unknown_grpc_abort_status_is_rejected() {
        let spec = vs_route(json!({"fault": {"abort": {"grpcStatus": "BROKEN"}}}));
        rejected(Kind::VirtualService, spec, "spec.http[0].fault.abort.grpcStatus", "is not supported");
    }

    #[test]
    fn fault_without_abort_or_delay_is_rejected() {
        rejected(
            Kind::VirtualService,
            vs_route(json!({"fault": {}})),
            "spec.http[0].fault",
            "must have an abort and/or a delay",
        );
    }

    #[test]
    fn zero_fixed_delay_is_rejected() {
        let spec = vs_route(json!({"fault": {"delay": {"fixedDelay": "0s"}}}));
        rejected(Kind::VirtualService, spec, "spec.http[0].fault.delay.fixedDelay", "greater than 1ms");
    }

    #[test]
    fn redirect_without_a_target_is_rejected() {
        let spec = vs_http(json!([{"redirect": {"redirectCode": 302}}]));
        rejected(
            Kind::VirtualService,
            spec,
            "spec.http[0].redirect",
            "redirect must specify URI, authority, scheme, or port",
        );
    }

    #[test]
    fn redirect_code_outside_3xx_is_rejected() {
        let spec = vs_http(json!([{"redirect": {"uri": "/new", "redirectCode": 200}}]));
        rejected(Kind::VirtualService, spec, "spec.http[0].redirect.redirectCode", "must be 3xx");
    }

    #[test]
    fn redirect_to_unknown_scheme_is_rejected() {
        let spec = vs_http(json!([{"redirect": {"scheme": "ftp"}}]));
        rejected(Kind::VirtualService, spec, "spec.http[0].redirect.scheme", "must be \"http\" or \"https\"");
    }

    #[test]
    fn redirect_with_port_and_derived_port_is_rejected() {
        let spec = vs_http(json!([{"redirect": {"port": 8443, "derivePort": "FROM_REQUEST_PORT"}}]));
        rejected(Kind::VirtualService, spec, "spec.http[0].redirect", "only one of port or derivePort");
    }

    #[test]
    fn redirect_prefix_rewrite_with_exact_uri_match_is_rejected() {
        let spec = vs_http(json!([{"match": [{"uri": {"exact": "/a"}}], "redirect": {"prefixRewrite": "/b"}}]));
        rejected(
            Kind::VirtualService,
            spec,
            "spec.http[0].redirect.prefixRewrite",
            "requires all URI matches to use prefix",
        );
    }

    #[test]
    fn rewrite_with_uri_and_regex_rewrite_is_rejected() {
        let spec = vs_route(json!({"rewrite": {"uri": "/v1", "uriRegexRewrite": {"match": "^/a", "rewrite": "/b"}}}));
        rejected(Kind::VirtualService, spec, "spec.http[0].rewrite", "only contain one of URI or UriRegexRewrite");
    }

    #[test]
    fn empty_rewrite_is_rejected() {
        rejected(
            Kind::VirtualService,
            vs_route(json!({"rewrite": {}})),
            "spec.http[0].rewrite",
            "must specify at least one of URI",
        );
    }

    #[test]
    fn authority_rewritten_twice_is_rejected() {
        let spec = vs_route(
            json!({"rewrite": {"authority": "a.example.com"}, "headers": {"request": {"set": {":authority": "b.example.com"}}}}),
        );
        rejected(
            Kind::VirtualService,
            spec,
            "spec.http[0].headers.request.set[:authority]",
            "authority header cannot be set multiple times",
        );
    }

    #[test]
    fn unknown_retry_on_policy_is_rejected() {
        let spec = vs_route(json!({"retries": {"attempts": 2, "retryOn": "5xx,sometimes"}}));
        rejected(
            Kind::VirtualService,
            spec,
            "spec.http[0].retries.retryOn",
            "\"sometimes\" is not a valid retryOn policy",
        );
    }

    #[test]
    fn retry_policy_with_zero_attempts_is_rejected() {
        let spec = vs_route(json!({"retries": {"attempts": 0, "perTryTimeout": "1s"}}));
        rejected(Kind::VirtualService, spec, "spec.http[0].retries.attempts", "attempts are set to 0");
    }

    #[test]
    fn mirror_percentage_above_100_is_rejected() {
        let spec =
            vs_route(json!({"mirror": {"host": "reviews", "subset": "v2"}, "mirrorPercentage": {"value": 150.0}}));
        rejected(Kind::VirtualService, spec, "spec.http[0].mirrorPercentage.value", "max value of 100");
    }

    #[test]
    fn mirror_and_mirrors_together_are_rejected() {
        let spec = vs_route(json!({"mirror": {"host": "a"}, "mirrors": [{"destination": {"host": "b"}}]}));
        rejected(Kind::VirtualService, spec, "spec.http[0].mirrors", "cannot contain both mirror and mirrors");
    }

    #[test]
    fn cors_with_unsupported_method_is_rejected() {
        let spec = vs_route(json!({"corsPolicy": {"allowMethods": ["GET", "FETCH"]}}));
        rejected(Kind::VirtualService, spec, "spec.http[0].corsPolicy.allowMethods[1]", "not a supported HTTP method");
    }

    #[test]
    fn cors_max_age_with_sub_second_precision_is_rejected() {
        let spec = vs_route(json!({"corsPolicy": {"maxAge": "1500ms"}}));
        rejected(Kind::VirtualService, spec, "spec.http[0].corsPolicy.maxAge", "seconds precision");
    }

    #[test]
    fn empty_header_prefix_match_is_rejected() {
        let spec = vs_route(json!({"match": [{"headers": {"x-user": {"prefix": ""}}}]}));
        rejected(
            Kind::VirtualService,
            spec,
            "spec.http[0].match[0].headers[x-user]",
            "prefix string match should not be empty",
        );
    }

    #[test]
    fn empty_uri_prefix_match_is_accepted() {
        accepted(Kind::VirtualService, vs_route(json!({"match": [{"uri": {"prefix": ""}}]})));
    }

    #[test]
    fn invalid_header_name_in_match_is_rejected() {
        let spec = vs_route(json!({"match": [{"headers": {"bad header": {"exact": "x"}}}]}));
        rejected(Kind::VirtualService, spec, "spec.http[0].match[0].headers[bad header]", "not a valid header name");
    }

    #[test]
    fn empty_regex_match_is_rejected() {
        let spec = vs_route(json!({"match": [{"uri": {"regex": ""}}]}));
        rejected(Kind::VirtualService, spec, "spec.http[0].match[0].uri", "regex string match should not be empty");
    }

    #[test]
    fn jwt_claim_routing_outside_a_gateway_is_rejected() {
        let spec = vs_route(json!({"match": [{"headers": {"@request.auth.claims.group": {"exact": "admin"}}}]}));
        rejected(
            Kind::VirtualService,
            spec,
            "spec.http[0].match[0].headers[@request.auth.claims.group]",
            "only supported for gateway",
        );
    }

    #[test]
    fn setting_the_host_response_header_is_rejected() {
        let spec = vs_route(json!({"headers": {"response": {"set": {"Host": "x"}}}}));
        rejected(Kind::VirtualService, spec, "spec.http[0].headers.response.set[Host]", "cannot set Host header");
    }

    #[test]
    fn header_value_with_unterminated_variable_is_rejected() {
        let spec = vs_route(json!({"headers": {"request": {"add": {"x-start": "%START_TIME"}}}}));
        rejected(
            Kind::VirtualService,
            spec,
            "spec.http[0].headers.request.add[x-start]",
            "invalid header configuration",
        );
    }

    #[test]
    fn invalid_source_namespace_is_rejected() {
        let spec = vs_route(json!({"match": [{"sourceNamespace": "Not_A_Namespace"}]}));
        rejected(Kind::VirtualService, spec, "spec.http[0].match[0].sourceNamespace", "is invalid");
    }

    #[test]
    fn tls_route_with_sni_outside_the_hosts_is_rejected() {
        let spec = json!({"hosts": ["*.bookinfo.com"], "gateways": ["mygateway"], "tls": [{
            "match": [{"port": 443, "sniHosts": ["login.example.com"]}],
            "route": [{"destination": {"host": "login.prod.svc.cluster.local"}}]
        }]});
        rejected(Kind::VirtualService, spec, "spec.tls[0].match[0].sniHosts[0]", "not a compatible subset");
    }

    #[test]
    fn tls_route_with_sni_inside_the_hosts_is_accepted() {
        let spec = json!({"hosts": ["*.bookinfo.com"], "gateways": ["mygateway"], "tls": [{
            "match": [{"port": 443, "sniHosts": ["login.bookinfo.com"]}],
            "route": [{"destination": {"host": "login.prod.svc.cluster.local"}}]
        }]});
        accepted(Kind::VirtualService, spec);
    }

    #[test]
    fn tls_route_without_match_or_route_is_rejected() {
        let spec = json!({"hosts": ["a.example.com"], "tls": [{"match": []}]});
        rejected(Kind::VirtualService, spec.clone(), "spec.tls[0].match", "at least one match condition");
        rejected(Kind::VirtualService, spec, "spec.tls[0].route", "TLS route is required");
    }

    #[test]
    fn tcp_route_without_route_is_rejected() {
        let spec = json!({"hosts": ["mongo"], "tcp": [{"match": [{"port": 27017}]}]});
        rejected(Kind::VirtualService, spec, "spec.tcp[0].route", "TCP route is required");
    }

    #[test]
    fn tcp_route_with_bad_destination_subnet_is_rejected() {
        let spec = json!({"hosts": ["mongo"], "tcp": [{"match": [{"destinationSubnets": ["10.0.0.0/33"]}], "route": [{"destination": {"host": "mongo"}}]}]});
        rejected(Kind::VirtualService, spec, "spec.tcp[0].match[0].destinationSubnets[0]", "not a valid CIDR block");
    }

    #[test]
    fn duplicate_export_to_entries_are_rejected() {
        let mut spec = vs_route(json!({}));
        spec["exportTo"] = json!(["default", "."]);
        rejected(
            Kind::VirtualService,
            spec,
            "spec.exportTo[1]",
            "duplicate entries in exportTo: . and current namespace default",
        );
    }

    #[test]
    fn export_to_nobody_is_rejected_for_a_virtual_service() {
        let mut spec = vs_route(json!({}));
        spec["exportTo"] = json!(["~"]);
        rejected(Kind::VirtualService, spec, "spec.exportTo[0]", "exportTo ~ (none) is not allowed");
    }

    // --- Gateway ---------------------------------------------------------------------------------

    #[test]
    fn gateway_with_http_https_and_tcp_servers_is_accepted() {
        let spec = gateway(json!([
            {"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["uk.bookinfo.com"], "tls": {"httpsRedirect": true}},
            https_server(json!({"mode": "SIMPLE", "credentialName": "bookinfo-secret"})),
            {"port": {"number": 9443, "name": "https-file", "protocol": "HTTPS"}, "hosts": ["bookinfo-namespace/*.bookinfo.com"],
             "tls": {"mode": "MUTUAL", "serverCertificate": "/etc/certs/server.pem", "privateKey": "/etc/certs/key.pem",
                     "caCertificates": "/etc/certs/ca.pem"}},
            {"port": {"number": 2379, "name": "mongo", "protocol": "MONGO"}, "hosts": ["*"]},
            {"port": {"number": 15443, "name": "tls", "protocol": "TLS"}, "hosts": ["*.local"], "tls": {"mode": "AUTO_PASSTHROUGH"}}
        ]));
        accepted(Kind::Gateway, spec);
    }

    #[test]
    fn gateway_without_servers_is_rejected() {
        rejected(Kind::Gateway, gateway(json!([])), "spec.servers", "gateway must have at least one server");
    }

    #[test]
    fn gateway_with_invalid_name_is_rejected() {
        let errors = decode(Kind::Gateway, "default", "my.gateway", None, gateway(json!([http_server()]))).unwrap_err();
        assert_eq!(errors, vec![FieldError::new("metadata.name", "invalid gateway name: \"my.gateway\"")]);
    }

    #[test]
    fn gateway_server_without_hosts_is_rejected() {
        let spec = gateway(json!([{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": []}]));
        rejected(Kind::Gateway, spec, "spec.servers[0].hosts", "at least one host");
    }

    #[test]
    fn gateway_server_without_port_is_rejected() {
        rejected(Kind::Gateway, gateway(json!([{"hosts": ["*"]}])), "spec.servers[0].port", "Required value");
    }

    #[test]
    fn gateway_server_port_out_of_range_is_rejected() {
        let spec = gateway(json!([{"port": {"number": 0, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}]));
        rejected(Kind::Gateway, spec, "spec.servers[0].port.number", "port number 0 must be in the range 1..65535");
    }

    #[test]
    fn gateway_server_with_unknown_protocol_is_rejected() {
        let spec = gateway(json!([{"port": {"number": 80, "name": "http", "protocol": "HTTP3"}, "hosts": ["*"]}]));
        rejected(Kind::Gateway, spec, "spec.servers[0].port.protocol", "invalid protocol \"HTTP3\"");
    }

    #[test]
    fn gateway_server_with_target_port_is_rejected() {
        let spec = gateway(
            json!([{"port": {"number": 80, "name": "http", "protocol": "HTTP", "targetPort": 8080}, "hosts": ["*"]}]),
        );
        rejected(Kind::Gateway, spec, "spec.servers[0].port.targetPort", "no impact on Gateways");
    }

    #[test]
    fn gateway_server_with_empty_port_name_is_rejected() {
        let spec = gateway(json!([{"port": {"number": 80, "name": "", "protocol": "HTTP"}, "hosts": ["*"]}]));
        rejected(Kind::Gateway, spec, "spec.servers[0].port.name", "port name must be set");
    }

    #[test]
    fn gateway_servers_with_the_same_port_name_are_rejected() {
        rejected(
            Kind::Gateway,
            gateway(json!([http_server(), http_server()])),
            "spec.servers[1].port.name",
            "must be unique",
        );
    }

    #[test]
    fn gateway_short_host_name_is_rejected() {
        let spec =
            gateway(json!([{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["productpage"]}]));
        rejected(Kind::Gateway, spec, "spec.servers[0].hosts[0]", "short names (non FQDN) are not allowed");
    }

    #[test]
    fn gateway_partial_wildcard_host_is_rejected() {
        let spec =
            gateway(json!([{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*bookinfo.com"]}]));
        rejected(Kind::Gateway, spec, "spec.servers[0].hosts[0]", "partial wildcard");
    }

    #[test]
    fn gateway_host_with_invalid_namespace_is_rejected() {
        let spec = gateway(
            json!([{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["Bad_NS/*.bookinfo.com"]}]),
        );
        rejected(Kind::Gateway, spec, "spec.servers[0].hosts[0]", "invalid namespace value \"Bad_NS\" in gateway");
    }

    #[test]
    fn https_server_without_tls_settings_is_rejected() {
        let spec = gateway(json!([{"port": {"number": 443, "name": "https", "protocol": "HTTPS"}, "hosts": ["*"]}]));
        rejected(Kind::Gateway, spec, "spec.servers[0].tls", "server must have TLS settings for HTTPS/TLS protocols");
    }

    #[test]
    fn simple_tls_without_certificate_is_rejected() {
        let spec = gateway(json!([https_server(json!({"mode": "SIMPLE", "privateKey": "/etc/key.pem"}))]));
        rejected(
            Kind::Gateway,
            spec,
            "spec.servers[0].tls.serverCertificate",
            "SIMPLE TLS requires a server certificate",
        );
    }

    #[test]
    fn mutual_tls_without_client_ca_is_rejected() {
        let tls = json!({"mode": "MUTUAL", "serverCertificate": "/c.pem", "privateKey": "/k.pem"});
        rejected(
            Kind::Gateway,
            gateway(json!([https_server(tls)])),
            "spec.servers[0].tls.caCertificates",
            "requires a client CA bundle",
        );
    }

    #[test]
    fn mutual_tls_with_credential_name_needs_no_files() {
        accepted(
            Kind::Gateway,
            gateway(json!([https_server(json!({"mode": "MUTUAL", "credentialName": "httpbin-credential"}))])),
        );
    }

    #[test]
    fn istio_mutual_tls_with_a_credential_is_rejected() {
        let tls = json!({"mode": "ISTIO_MUTUAL", "credentialName": "secret"});
        rejected(
            Kind::Gateway,
            gateway(json!([https_server(tls)])),
            "spec.servers[0].tls.credentialName",
            "ISTIO_MUTUAL TLS cannot have",
        );
    }

    #[test]
    fn two_certificate_sources_are_rejected() {
        let tls = json!({"mode": "SIMPLE", "credentialName": "secret", "serverCertificate": "/c.pem", "privateKey": "/k.pem"});
        rejected(
            Kind::Gateway,
            gateway(json!([https_server(tls)])),
            "spec.servers[0].tls",
            "only one of credential_name",
        );
    }

    #[test]
    fn plain_http_server_with_certificates_is_rejected() {
        let server = json!({"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"],
                            "tls": {"mode": "SIMPLE", "credentialName": "secret"}});
        rejected(
            Kind::Gateway,
            gateway(json!([server])),
            "spec.servers[0].tls",
            "cannot have TLS settings for plain text HTTP ports",
        );
    }

    #[test]
    fn tcp_server_with_tls_settings_is_rejected() {
        let server = json!({"port": {"number": 31400, "name": "tcp", "protocol": "TCP"}, "hosts": ["*"], "tls": {"mode": "PASSTHROUGH"}});
        rejected(
            Kind::Gateway,
            gateway(json!([server])),
            "spec.servers[0].tls",
            "cannot have TLS settings for non HTTPS/TLS ports",
        );
    }

    #[test]
    fn server_bound_to_an_invalid_address_is_rejected() {
        let mut server = http_server();
        server["bind"] = json!("localhost");
        rejected(Kind::Gateway, gateway(json!([server])), "spec.servers[0].bind", "not a valid IP");
    }

    // --- DestinationRule -------------------------------------------------------------------------

    #[test]
    fn destination_rule_with_subsets_and_full_traffic_policy_is_accepted() {
        accepted(
            Kind::DestinationRule,
            json!({
                "host": "reviews.prod.svc.cluster.local",
                "trafficPolicy": {
                    "loadBalancer": {"consistentHash": {"httpCookie": {"name": "user", "ttl": "0s"}}},
                    "connectionPool": {"tcp": {"maxConnections": 100, "connectTimeout": "30ms", "idleTimeout": "0s",
                                               "tcpKeepalive": {"time": "7200s", "interval": "75s"}},
                                       "http": {"http2MaxRequests": 1000, "maxRequestsPerConnection": 10}},
                    "outlierDetection": {"consecutive5xxErrors": 7, "interval": "5m", "baseEjectionTime": "15m", "maxEjectionPercent": 100},
                    "tls": {"mode": "ISTIO_MUTUAL"},
                    "portLevelSettings": [{"port": {"number": 80}, "loadBalancer": {"simple": "LEAST_REQUEST"}}]
                },
                "subsets": [
                    {"name": "v1", "labels": {"version": "v1"}},
                    {"name": "v2-mysql", "labels": {"version": "v2-mysql"}, "trafficPolicy": {"loadBalancer": {"simple": "ROUND_ROBIN"}}}
                ],
                "exportTo": ["."]
            }),
        );
    }

    #[test]
    fn destination_rule_with_empty_host_is_rejected() {
        rejected(Kind::DestinationRule, json!({"host": ""}), "spec.host", "empty domain name not allowed");
    }

    #[test]
    fn destination_rule_without_host_is_rejected() {
        rejected(Kind::DestinationRule, json!({"subsets": []}), "spec.host", "Required value");
    }

    #[test]
    fn duplicate_subset_names_are_rejected() {
        let spec = dr(
            json!({"subsets": [{"name": "v1", "labels": {"version": "v1"}}, {"name": "v1", "labels": {"version": "v2"}}]}),
        );
        rejected(Kind::DestinationRule, spec, "spec.subsets[1].name", "duplicate subset names: v1");
    }

    #[test]
    fn empty_subset_name_is_rejected() {
        rejected(
            Kind::DestinationRule,
            dr(json!({"subsets": [{"name": ""}]})),
            "spec.subsets[0].name",
            "subset name cannot be empty",
        );
    }

    #[test]
    fn invalid_subset_label_is_rejected() {
        let spec = dr(json!({"subsets": [{"name": "v1", "labels": {"version": "v1!"}}]}));
        rejected(Kind::DestinationRule, spec, "spec.subsets[0].labels[version]", "invalid tag value");
    }

    #[test]
    fn empty_traffic_policy_is_rejected() {
        rejected(
            Kind::DestinationRule,
            dr_policy(json!({})),
            "spec.trafficPolicy",
            "traffic policy must have at least one field",
        );
    }

    #[test]
    fn empty_connection_pool_is_rejected() {
        rejected(
            Kind::DestinationRule,
            dr_policy(json!({"connectionPool": {}})),
            "spec.trafficPolicy.connectionPool",
            "at least one field",
        );
    }

    #[test]
    fn negative_max_connections_are_rejected() {
        let spec = dr_policy(json!({"connectionPool": {"tcp": {"maxConnections": -1}}}));
        rejected(Kind::DestinationRule, spec, "spec.trafficPolicy.connectionPool.tcp.maxConnections", "non-negative");
    }

    #[test]
    fn http2_keepalive_without_timeout_is_rejected() {
        let spec = dr_policy(json!({"connectionPool": {"http": {"http2KeepAlive": {"interval": "15s"}}}}));
        rejected(
            Kind::DestinationRule,
            spec,
            "spec.trafficPolicy.connectionPool.http.http2KeepAlive.timeout",
            "is required",
        );
    }

    #[test]
    fn max_ejection_percent_above_100_is_rejected() {
        let spec = dr_policy(json!({"outlierDetection": {"maxEjectionPercent": 101}}));
        rejected(
            Kind::DestinationRule,
            spec,
            "spec.trafficPolicy.outlierDetection.maxEjectionPercent",
            "not in range 0..100",
        );
    }

    #[test]
    fn zero_base_ejection_time_is_rejected() {
        let spec = dr_policy(json!({"outlierDetection": {"baseEjectionTime": "0s"}}));
        rejected(
            Kind::DestinationRule,
            spec,
            "spec.trafficPolicy.outlierDetection.baseEjectionTime",
            "greater than 1ms",
        );
    }

    #[test]
    fn local_origin_failures_without_split_are_rejected() {
        let spec = dr_policy(json!({"outlierDetection": {"consecutiveLocalOriginFailures": 3}}));
        rejected(
            Kind::DestinationRule,
            spec,
            "spec.trafficPolicy.outlierDetection.consecutiveLocalOriginFailures",
            "split external local origin errors",
        );
    }

    #[test]
    fn simple_and_consistent_hash_together_are_rejected() {
        let spec = dr_policy(json!({"loadBalancer": {"simple": "RANDOM", "consistentHash": {"useSourceIp": true}}}));
        rejected(Kind::DestinationRule, spec, "spec.trafficPolicy.loadBalancer", "only one of simple, consistentHash");
    }

    #[test]
    fn two_consistent_hash_keys_are_rejected() {
        let spec =
            dr_policy(json!({"loadBalancer": {"consistentHash": {"useSourceIp": true, "httpHeaderName": "x-user"}}}));
        rejected(
            Kind::DestinationRule,
            spec,
            "spec.trafficPolicy.loadBalancer.consistentHash",
            "only one of httpHeaderName",
        );
    }

    #[test]
    fn cookie_hash_without_cookie_name_is_rejected() {
        let spec = dr_policy(json!({"loadBalancer": {"consistentHash": {"httpCookie": {"name": "", "ttl": "10s"}}}}));
        rejected(
            Kind::DestinationRule,
            spec,
            "spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.name",
            "name required for HttpCookie",
        );
    }

    #[test]
    fn maglev_table_size_that_is_not_prime_is_rejected() {
        let spec = dr_policy(
            json!({"loadBalancer": {"consistentHash": {"useSourceIp": true, "maglev": {"tableSize": 65536}}}}),
        );
        rejected(
            Kind::DestinationRule,
            spec,
            "spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize",
            "must be a prime number",
        );
    }

    #[test]
    fn maglev_prime_table_size_is_accepted() {
        accepted(
            Kind::DestinationRule,
            dr_policy(
                json!({"loadBalancer": {"consistentHash": {"useSourceIp": true, "maglev": {"tableSize": 65537}}}}),
            ),
        );
    }

    #[test]
    fn locality_weights_not_summing_to_100_are_rejected() {
        let spec = dr_policy(json!({
            "outlierDetection": {"consecutive5xxErrors": 5},
            "loadBalancer": {"localityLbSetting": {"distribute": [{"from": "us-west/zone1/*", "to": {"us-west/zone1/*": 80, "us-west/zone2/*": 10}}]}}
        }));
        rejected(
            Kind::DestinationRule,
            spec,
            "spec.trafficPolicy.loadBalancer.localityLbSetting.distribute[0].to",
            "total locality weight 90 != 100",
        );
    }

    #[test]
    fn overlapping_localities_are_rejected() {
        let spec = dr_policy(json!({"loadBalancer": {"localityLbSetting": {"distribute": [
            {"from": "us-west/zone1/*", "to": {"us-west/zone1/*": 100}},
            {"from": "us-west/zone1/sub1", "to": {"us-west/zone2/*": 100}}
        ]}}}));
        rejected(
            Kind::DestinationRule,
            spec,
            "spec.trafficPolicy.loadBalancer.localityLbSetting.distribute",
            "overlap with previous specified ones",
        );
    }

    #[test]
    fn locality_failover_to_the_same_region_is_rejected() {
        let spec = dr_policy(
            json!({"loadBalancer": {"localityLbSetting": {"failover": [{"from": "us-east", "to": "us-east"}]}}}),
        );
        rejected(
            Kind::DestinationRule,
            spec,
            "spec.trafficPolicy.loadBalancer.localityLbSetting.failover[0]",
            "must specify different regions",
        );
    }

    #[test]
    fn warmup_minimum_percent_above_100_is_rejected() {
        let spec = dr_policy(json!({"loadBalancer": {"warmup": {"duration": "300s", "minimumPercent": 150.0}}}));
        rejected(Kind::DestinationRule, spec, "spec.trafficPolicy.loadBalancer.warmup.minimumPercent", "Invalid value");
    }

    #[test]
    fn warmup_without_duration_is_rejected() {
        let spec = dr_policy(json!({"loadBalancer": {"warmup": {"minimumPercent": 5.0}}}));
        rejected(Kind::DestinationRule, spec, "spec.trafficPolicy.loadBalancer.warmup.duration", "Required value");
    }

    #[test]
    fn mutual_client_tls_without_certificate_is_rejected() {
        let spec = dr_policy(json!({"tls": {"mode": "MUTUAL", "caCertificates": "/ca.pem"}}));
        rejected(
            Kind::DestinationRule,
            spec,
            "spec.trafficPolicy.tls.clientCertificate",
            "client certificate required for mutual tls",
        );
    }

    #[test]
    fn client_tls_with_credential_name_and_files_is_rejected() {
        let spec =
            dr_policy(json!({"tls": {"mode": "SIMPLE", "credentialName": "secret", "caCertificates": "/ca.pem"}}));
        rejected(Kind::DestinationRule, spec, "spec.trafficPolicy.tls", "If credentialName is set");
    }

    #[test]
    fn insecure_skip_verify_with_ca_is_rejected() {
        let spec =
            dr_policy(json!({"tls": {"mode": "SIMPLE", "insecureSkipVerify": true, "caCertificates": "/ca.pem"}}));
        rejected(
            Kind::DestinationRule,
            spec,
            "spec.trafficPolicy.tls.insecureSkipVerify",
            "InsecureSkipVerify is set true",
        );
    }

    #[test]
    fn port_level_setting_without_port_is_rejected() {
        let spec = dr_policy(json!({"portLevelSettings": [{"loadBalancer": {"simple": "RANDOM"}}]}));
        rejected(Kind::DestinationRule, spec, "spec.trafficPolicy.portLevelSettings[0].port", "must have valid port");
    }

    #[test]
    fn tunnel_with_unknown_protocol_is_rejected() {
        let spec =
            dr_policy(json!({"tunnel": {"protocol": "GET", "targetHost": "proxy.example.com", "targetPort": 3128}}));
        rejected(Kind::DestinationRule, spec, "spec.trafficPolicy.tunnel.protocol", "must be \"CONNECT\" or \"POST\"");
    }

    #[test]
    fn tunnel_and_proxy_protocol_together_are_rejected() {
        let spec = dr_policy(
            json!({"tunnel": {"targetHost": "10.0.0.1", "targetPort": 3128}, "proxyProtocol": {"version": "V2"}}),
        );
        rejected(
            Kind::DestinationRule,
            spec,
            "spec.trafficPolicy",
            "tunnel and proxyProtocol must not be set together",
        );
    }

    #[test]
    fn workload_selector_with_wildcard_is_rejected() {
        let spec = dr(json!({"workloadSelector": {"matchLabels": {"app": "*"}}}));
        rejected(
            Kind::DestinationRule,
            spec,
            "spec.workloadSelector.matchLabels[app]",
            "wildcard is not supported in selector",
        );
    }

    #[test]
    fn selector_based_rule_exported_elsewhere_is_rejected() {
        let spec = dr(json!({"workloadSelector": {"matchLabels": {"app": "x"}}, "exportTo": ["other"]}));
        rejected(Kind::DestinationRule, spec, "spec.exportTo", "cannot have exportTo beyond current namespace");
    }

    // --- ServiceEntry ----------------------------------------------------------------------------

    #[test]
    fn service_entry_with_static_endpoints_is_accepted() {
        accepted(
            Kind::ServiceEntry,
            json!({
                "hosts": ["mymongodb.somedomain"], "addresses": ["192.192.192.192/24"],
                "ports": [{"number": 27018, "name": "mongodb", "protocol": "MONGO"}],
                "location": "MESH_INTERNAL", "resolution": "STATIC",
                "endpoints": [{"address": "2.2.2.2"}, {"address": "3.3.3.3", "ports": {"mongodb": 27019}, "labels": {"app": "db"}}]
            }),
        );
    }

    #[test]
    fn service_entry_with_duplicate_port_numbers_is_rejected() {
        let spec = json!({"hosts": ["example.com"], "ports": [{"name": "a", "number": 1}, {"name": "b", "number": 1}]});
        let errors = decode_json(Kind::ServiceEntry, spec).unwrap_err();
        assert_eq!(errors, vec![FieldError::new("spec.ports[1].number", "port number cannot be duplicated")]);
    }

    #[test]
    fn service_entry_with_duplicate_port_names_is_rejected() {
        let spec =
            json!({"hosts": ["example.com"], "ports": [{"name": "a", "number": 1}, {"name": "a", "number": 12}]});
        rejected(Kind::ServiceEntry, spec, "spec.ports[1].name", "Duplicate value");
    }

    #[test]
    fn service_entry_with_workload_selector_and_endpoints_is_rejected() {
        let spec = json!({"hosts": ["example.com"], "resolution": "STATIC", "workloadSelector": {}, "endpoints": [{"address": "1.2.3.4"}]});
        let errors = decode_json(Kind::ServiceEntry, spec).unwrap_err();
        assert_eq!(
            errors,
            vec![FieldError::new("spec.workloadSelector", "only one of WorkloadSelector or Endpoints can be set")]
        );
    }

    #[test]
    fn service_entry_without_hosts_is_rejected() {
        rejected(Kind::ServiceEntry, json!({"hosts": []}), "spec.hosts", "must have at least one host");
        rejected(Kind::ServiceEntry, json!({}), "spec.hosts", "Required value");
    }

    #[test]
    fn service_entry_wildcard_host_is_rejected() {
        rejected(Kind::ServiceEntry, json!({"hosts": ["*"]}), "spec.hosts[0]", "hostname cannot be wildcard");
    }

    #[test]
    fn service_entry_port_out_of_range_is_rejected() {
        let spec = json!({"hosts": ["example.com"], "ports": [{"name": "a", "number": 99999}]});
        rejected(Kind::ServiceEntry, spec, "spec.ports[0].number", "port must be between 1-65535");
    }

    #[test]
    fn service_entry_target_port_out_of_range_is_rejected() {
        let spec = json!({"hosts": ["example.com"], "ports": [{"name": "a", "number": 1, "targetPort": 0}]});
        rejected(Kind::ServiceEntry, spec, "spec.ports[0].targetPort", "port must be between 1-65535");
    }

    #[test]
    fn service_entry_port_with_invalid_name_is_rejected() {
        let spec = json!({"hosts": ["example.com"], "ports": [{"name": "http_1", "number": 80}]});
        rejected(Kind::ServiceEntry, spec, "spec.ports[0].name", "invalid port name: http_1");
    }

    #[test]
    fn service_entry_port_with_unknown_protocol_is_rejected() {
        let spec = json!({"hosts": ["example.com"], "ports": [{"name": "q", "number": 5672, "protocol": "AMQP"}]});
        rejected(Kind::ServiceEntry, spec, "spec.ports[0].protocol", "unsupported protocol: AMQP");
    }

    #[test]
    fn cidr_address_with_dns_resolution_is_rejected() {
        let spec = json!({"hosts": ["example.com"], "addresses": ["1.2.3.4/16"], "resolution": "DNS"});
        rejected(Kind::ServiceEntry, spec, "spec.addresses", "CIDR addresses are allowed only for NONE/STATIC");
    }

    #[test]
    fn invalid_address_is_rejected() {
        rejected(Kind::ServiceEntry, se(json!({"addresses": ["1.2.3"]})), "spec.addresses[0]", "not a valid IP");
    }

    #[test]
    fn endpoints_with_resolution_none_are_rejected() {
        let spec = se(json!({"endpoints": [{"address": "1.2.3.4"}]}));
        rejected(Kind::ServiceEntry, spec, "spec.endpoints", "NONE mode cannot set endpoints");
    }

    #[test]
    fn several_endpoints_with_dns_round_robin_are_rejected() {
        let spec = se(
            json!({"resolution": "DNS_ROUND_ROBIN", "endpoints": [{"address": "a.example.com"}, {"address": "b.example.com"}]}),
        );
        rejected(Kind::ServiceEntry, spec, "spec.endpoints", "DNS_ROUND_ROBIN mode cannot have multiple endpoints");
    }

    #[test]
    fn static_endpoint_with_a_dns_name_is_rejected() {
        let spec = se(json!({"resolution": "STATIC", "endpoints": [{"address": "db.example.com"}]}));
        rejected(Kind::ServiceEntry, spec, "spec.endpoints[0].address", "is not a valid IP address");
    }

    #[test]
    fn static_endpoint_without_address_is_rejected() {
        let spec = se(json!({"resolution": "STATIC", "endpoints": [{"labels": {"app": "x"}}]}));
        rejected(Kind::ServiceEntry, spec, "spec.endpoints[0].address", "address is required");
    }

    #[test]
    fn unix_socket_endpoint_with_ports_is_rejected() {
        let spec = se(
            json!({"resolution": "STATIC", "endpoints": [{"address": "unix:///var/run/app.sock", "ports": {"https": 8443}}]}),
        );
        rejected(Kind::ServiceEntry, spec, "spec.endpoints[0].ports", "must not include ports");
    }

    #[test]
    fn endpoint_port_not_declared_by_the_service_entry_is_rejected() {
        let spec =
            se(json!({"resolution": "DNS", "endpoints": [{"address": "us.example.com", "ports": {"http": 8080}}]}));
        rejected(
            Kind::ServiceEntry,
            spec,
            "spec.endpoints[0].ports[http]",
            "endpoint port 8080 is not defined by the service entry",
        );
    }

    #[test]
    fn dns_endpoint_with_invalid_name_is_rejected() {
        let spec = se(json!({"resolution": "DNS", "endpoints": [{"address": "not a host"}]}));
        rejected(Kind::ServiceEntry, spec, "spec.endpoints[0].address", "not a valid FQDN or an IP address");
    }

    #[test]
    fn dns_resolution_of_a_wildcard_host_without_endpoints_is_rejected() {
        let spec = json!({"hosts": ["*.example.com"], "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}], "resolution": "DNS"});
        rejected(Kind::ServiceEntry, spec, "spec.hosts[0]", "hosts must be FQDN");
    }

    #[test]
    fn wildcard_hosts_with_resolution_none_are_accepted() {
        let spec = json!({"hosts": ["*.bar.com"], "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}], "resolution": "NONE", "location": "MESH_EXTERNAL"});
        accepted(Kind::ServiceEntry, spec);
    }

    #[test]
    fn several_hosts_on_a_plain_tcp_port_are_rejected() {
        let spec = json!({"hosts": ["a.example.com", "b.example.com"], "ports": [{"number": 5432, "name": "tcp", "protocol": "TCP"}], "resolution": "DNS"});
        rejected(Kind::ServiceEntry, spec, "spec.ports[0]", "multiple hosts provided with non-HTTP, non-TLS ports");
    }

    #[test]
    fn dynamic_dns_requires_wildcard_hosts() {
        let spec = json!({"hosts": ["a.example.com"], "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}], "resolution": "DYNAMIC_DNS"});
        rejected(Kind::ServiceEntry, spec, "spec.hosts[0]", "host must be wildcarded");
    }

    #[test]
    fn workload_selector_with_wildcard_value_is_rejected() {
        let spec = se(json!({"workloadSelector": {"labels": {"val": "*"}}}));
        rejected(
            Kind::ServiceEntry,
            spec,
            "spec.workloadSelector.labels[val]",
            "wildcard is not supported in selector",
        );
    }

    #[test]
    fn export_to_nobody_is_accepted_for_a_service_entry() {
        accepted(Kind::ServiceEntry, se(json!({"exportTo": ["~"]})));
    }

    #[test]
    fn export_to_nobody_and_somebody_is_rejected() {
        rejected(Kind::ServiceEntry, se(json!({"exportTo": ["~", "."]})), "spec.exportTo", "no one (~) and someone");
    }

    // --- name and address helpers ----------------------------------------------------------------

    #[test]
    fn wildcard_domains_follow_istio() {
        for ok in ["*", "*.example.com", "example.com", "*x", "*-x.example.com", "reviews", "istio.io."] {
            assert_eq!(check_wildcard_domain(ok), Ok(()), "{ok}");
        }
        for bad in ["", "a.*.com", "foo*.com", "-a.com", "example.123", "a..b"] {
            assert!(check_wildcard_domain(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn host_matching_and_subsets_follow_istio() {
        assert!(host_matches("*.example.com", "a.example.com"));
        assert!(host_matches("*.com", "*.example.com"));
        assert!(!host_matches("a.example.com", "b.example.com"));
        assert!(host_subset_of("a.example.com", "*.example.com"));
        assert!(host_subset_of("*.a.example.com", "*.example.com"));
        assert!(!host_subset_of("*.example.com", "a.example.com"));
    }

    #[test]
    fn subnets_and_addresses_are_checked() {
        for ok in ["10.0.0.0/8", "192.192.192.192/24", "2001:db8::/32", "1.2.3.4", "001:db8::", "fe80::1%eth0"] {
            assert_eq!(check_ip_subnet(ok), Ok(()), "{ok}");
        }
        for bad in ["10.0.0.0/33", "1.2.3.4/", "1.2.3.4/8/8", "10.0.0/8", "host.example.com"] {
            assert!(check_ip_subnet(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn label_keys_may_have_a_dns_prefix() {
        assert_eq!(check_label_key("app.kubernetes.io/name"), Ok(()));
        assert_eq!(check_label_key("version"), Ok(()));
        assert!(check_label_key("bad key").is_err());
        assert!(check_label_key("/name").is_err());
    }
}
