//! Istio networking objects: [`Gateway`], [`VirtualService`], [`DestinationRule`] and
//! [`ServiceEntry`] (group `networking.istio.io`, versions `v1alpha3`, `v1beta1` and `v1`, which
//! share one schema).
//!
//! The envelope (apiVersion, kind, metadata, strict top-level keys) is parsed in `parse.rs`; this
//! module receives the `spec` and turns it into typed, validated objects with [`decode`].
//!
//! **Types** follow the Istio API (`istio/api` `networking/v1alpha3/*.proto` and the CRD schema
//! generated from it): JSON field names are the camelCase proto names, enums use their
//! SCREAMING_CASE names, and unknown fields are rejected, as `istioctl validate` does. Fields the
//! CRD marks required are plain (non-`Option`) fields, so a missing one fails to decode; proto3
//! scalars that may be left out are `Option`s (an explicit empty string is kept as `Some("")`
//! and, as in Istio, treated like an absent value by validation). Durations stay strings (`"5s"`,
//! `"0.5s"`, `"1h30m"`): [`parse_duration`] reads them.
//!
//! **Validation** follows Istio's validating webhook (`istio/istio`
//! `pkg/config/validation/validation.go`, `virtualservice.go` and `agent/validation.go`) and the
//! CEL rules of the CRD; where both have a message for the same problem the CRD's wording is
//! used (e.g. `port number cannot be duplicated`). Only errors are reported: Istio's warnings
//! (deprecated fields, unreachable rules, ...) do not reject an object and are not produced here.
//! Regular expressions are only checked for emptiness and length (no RE2 compiler is linked).
//!
//! **Field paths** start at the object root (`spec.http[0].route[1].weight`); map entries are
//! written `labels[app]`. Decoding errors (unknown or mistyped fields) carry the path reported by
//! `serde_path_to_error`, in which map keys and struct fields both appear as `.key`.
//!
//! **Layout**: this file holds the four objects, [`decode`], the types the kinds share
//! ([`StringMatch`], [`PortSelector`], [`Percent`]) and [`parse_duration`]; each kind's spec types
//! live in their own file (`gateway.rs`, `virtual_service.rs`, `destination_rule.rs`,
//! `service_entry.rs`, all re-exported here) and every validation rule in `validate.rs`.

mod destination_rule;
mod gateway;
mod service_entry;
mod validate;

/// gRPC status code names by number, as Istio's `grpcStatus` accepts them.
pub(crate) use validate::GRPC_STATUS_CODES;
mod virtual_service;

pub use destination_rule::*;
pub use gateway::*;
pub use service_entry::*;
pub use virtual_service::*;

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

use super::{F64, FieldError, Kind, Object};

// ------------------------------------------------------------------------------------------------
// Objects
// ------------------------------------------------------------------------------------------------

/// A `networking.istio.io` Gateway: the servers (ports, hosts, TLS) a gateway workload exposes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Gateway {
    pub namespace: String,
    pub name: String,
    /// `metadata.creationTimestamp` as given (RFC 3339, e.g. `2024-01-02T03:04:05Z`), if set. istiod
    /// orders objects oldest first by it: see [`CreationOrder`].
    pub creation_timestamp: Option<String>,
    pub spec: GatewaySpec,
}

/// A `networking.istio.io` VirtualService: routing rules for a set of hosts.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct VirtualService {
    pub namespace: String,
    pub name: String,
    /// `metadata.creationTimestamp` as given (RFC 3339, e.g. `2024-01-02T03:04:05Z`), if set. istiod
    /// orders objects oldest first by it: see [`CreationOrder`].
    pub creation_timestamp: Option<String>,
    pub spec: VirtualServiceSpec,
}

/// A `networking.istio.io` DestinationRule: traffic policy and subsets for one host.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DestinationRule {
    pub namespace: String,
    pub name: String,
    /// `metadata.creationTimestamp` as given (RFC 3339, e.g. `2024-01-02T03:04:05Z`), if set. istiod
    /// orders objects oldest first by it: see [`CreationOrder`].
    pub creation_timestamp: Option<String>,
    pub spec: DestinationRuleSpec,
}

/// A `networking.istio.io` ServiceEntry: a service added to the mesh's registry.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServiceEntry {
    pub namespace: String,
    pub name: String,
    /// `metadata.creationTimestamp` as given (RFC 3339, e.g. `2024-01-02T03:04:05Z`), if set. istiod
    /// orders objects oldest first by it: see [`CreationOrder`].
    pub creation_timestamp: Option<String>,
    pub spec: ServiceEntrySpec,
}

impl Gateway {
    /// Every validation error of this object (empty if it is valid).
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = validate::check_creation_timestamp(self.creation_timestamp.as_deref());
        errors.extend(validate::validate_gateway(&self.name, &self.spec).0);
        errors
    }

    /// This object's place in istiod's oldest-first order.
    pub fn creation_order(&self) -> CreationOrder<'_> {
        CreationOrder::new(self.creation_timestamp.as_deref(), &self.name, &self.namespace)
    }
}

impl VirtualService {
    /// Every validation error of this object (empty if it is valid).
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = validate::check_creation_timestamp(self.creation_timestamp.as_deref());
        errors.extend(validate::validate_virtual_service(&self.namespace, &self.spec).0);
        errors
    }

    /// This object's place in istiod's oldest-first order.
    pub fn creation_order(&self) -> CreationOrder<'_> {
        CreationOrder::new(self.creation_timestamp.as_deref(), &self.name, &self.namespace)
    }
}

impl DestinationRule {
    /// Every validation error of this object (empty if it is valid).
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = validate::check_creation_timestamp(self.creation_timestamp.as_deref());
        errors.extend(validate::validate_destination_rule(&self.namespace, &self.spec).0);
        errors
    }

    /// This object's place in istiod's oldest-first order.
    pub fn creation_order(&self) -> CreationOrder<'_> {
        CreationOrder::new(self.creation_timestamp.as_deref(), &self.name, &self.namespace)
    }

    /// This rule's place in the order istiod merges DestinationRules of one host in
    /// (`sortConfigBySelectorAndCreationTime` in `pilot/pkg/model/push_context.go`): rules with a
    /// `workloadSelector` (even an empty one) first, then [`CreationOrder`].
    pub fn merge_order(&self) -> (bool, CreationOrder<'_>) {
        (self.spec.workload_selector.is_none(), self.creation_order())
    }
}

impl ServiceEntry {
    /// Every validation error of this object (empty if it is valid).
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = validate::check_creation_timestamp(self.creation_timestamp.as_deref());
        errors.extend(validate::validate_service_entry(&self.namespace, &self.spec).0);
        errors
    }

    /// This object's place in istiod's oldest-first order.
    pub fn creation_order(&self) -> CreationOrder<'_> {
        CreationOrder::new(self.creation_timestamp.as_deref(), &self.name, &self.namespace)
    }
}

/// The [`ObjectKey`](super::ObjectKey) of each Istio kind, for reports about the object.
macro_rules! object_key {
    ($($ty:ident),*) => {$(
        impl $ty {
            pub fn object_key(&self) -> super::ObjectKey {
                super::ObjectKey::new(Kind::$ty, self.namespace.clone(), self.name.clone())
            }
        }
    )*};
}
object_key!(Gateway, VirtualService, DestinationRule, ServiceEntry);

/// Decode and validate the spec of an Istio kind. `kind` is one of the four Istio kinds;
/// `creation_timestamp` is `metadata.creationTimestamp` (RFC 3339) if the object has one.
/// Err holds every problem found, each with a dotted field path from the object root
/// (e.g. "spec.http[0].route[1].weight") and a reason. A spec that does not decode reports the
/// first decoding problem only (validation needs a decoded spec).
pub fn decode(
    kind: Kind,
    namespace: &str,
    name: &str,
    creation_timestamp: Option<&str>,
    spec: serde_json::Value,
) -> Result<Object, Vec<FieldError>> {
    let timestamp_errors = validate::check_creation_timestamp(creation_timestamp);
    let (namespace, name, creation_timestamp) =
        (namespace.to_string(), name.to_string(), creation_timestamp.map(str::to_string));
    let decoded = match kind {
        Kind::Gateway => decode_spec(spec)
            .map(|spec| Object::Gateway(Box::new(Gateway { namespace, name, creation_timestamp, spec }))),
        Kind::VirtualService => decode_spec(spec)
            .map(|spec| Object::VirtualService(Box::new(VirtualService { namespace, name, creation_timestamp, spec }))),
        Kind::DestinationRule => decode_spec(spec).map(|spec| {
            Object::DestinationRule(Box::new(DestinationRule { namespace, name, creation_timestamp, spec }))
        }),
        Kind::ServiceEntry => decode_spec(spec)
            .map(|spec| Object::ServiceEntry(Box::new(ServiceEntry { namespace, name, creation_timestamp, spec }))),
        other => {
            return Err(vec![FieldError::new("kind", format!("{other} is not an Istio networking kind"))]);
        }
    };
    let object = match decoded {
        Ok(object) => object,
        Err(spec_errors) => return Err(timestamp_errors.into_iter().chain(spec_errors).collect()),
    };
    let errors = match &object {
        Object::Gateway(o) => o.validate(),
        Object::VirtualService(o) => o.validate(),
        Object::DestinationRule(o) => o.validate(),
        Object::ServiceEntry(o) => o.validate(),
        _ => unreachable!("only Istio kinds are decoded here"),
    };
    if errors.is_empty() { Ok(object) } else { Err(errors) }
}

fn decode_spec<T: DeserializeOwned>(mut spec: serde_json::Value) -> Result<T, Vec<FieldError>> {
    if spec.is_null() {
        return Err(vec![FieldError::new("spec", "Required value")]);
    }
    prune_nulls(&mut spec);
    serde_path_to_error::deserialize(spec).map_err(|e| vec![decoding_error(&e)])
}

/// Drops `null` object members: the API server prunes nulls of non-nullable CRD fields before
/// validation, and protobuf JSON reads `null` as "unset", so an empty `exportTo:` means absent.
fn prune_nulls(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(prune_nulls);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(prune_nulls),
        _ => {}
    }
}

/// Turns a serde error into a field error: unknown and missing fields name the field itself.
fn decoding_error(e: &serde_path_to_error::Error<serde_json::Error>) -> FieldError {
    use serde_path_to_error::Segment;
    let mut path = String::from("spec");
    for segment in e.path().iter() {
        match segment {
            Segment::Seq { index } => path.push_str(&format!("[{index}]")),
            Segment::Map { key } => path.push_str(&format!(".{key}")),
            Segment::Enum { variant } => path.push_str(&format!(".{variant}")),
            Segment::Unknown => path.push_str(".?"),
        }
    }
    let message = e.inner().to_string();
    let quoted =
        |prefix: &str| message.strip_prefix(prefix).and_then(|rest| rest.split('`').next().map(str::to_string));
    let with_field = |path: &str, field: &str| {
        if path.ends_with(&format!(".{field}")) { path.to_string() } else { format!("{path}.{field}") }
    };
    if let Some(field) = quoted("unknown field `") {
        FieldError::new(with_field(&path, &field), format!("unknown field {field:?}"))
    } else if let Some(field) = quoted("missing field `") {
        FieldError::new(with_field(&path, &field), "Required value")
    } else {
        FieldError::new(path, message)
    }
}

// ------------------------------------------------------------------------------------------------
// Shared types
// ------------------------------------------------------------------------------------------------

/// A string match: exactly one of `exact`, `prefix` or `regex` (RE2 syntax).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Regex(String),
}

impl StringMatch {
    /// The string to match against, whatever the kind of match.
    pub fn value(&self) -> &str {
        match self {
            StringMatch::Exact(s) | StringMatch::Prefix(s) | StringMatch::Regex(s) => s,
        }
    }
}

/// Reads a `StringMatch` where Istio also allows `{}` (or null): "no constraint" for `uri`,
/// `scheme`, `method` and `authority`, "header present" for `headers` and `withoutHeaders`.
/// Its schema (for the CRDs) says the same: at most one of `exact`, `prefix` or `regex`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    description = "A string match: at most one of `exact`, `prefix` or `regex` (RE2 syntax); `{}` sets no constraint \
                   on the value.",
    extend("oneOf" = at_most_one_of(&["exact", "prefix", "regex"]))
)]
struct StringMatchFields {
    exact: Option<String>,
    prefix: Option<String>,
    /// RE2 syntax.
    regex: Option<String>,
}

impl StringMatchFields {
    fn into_match<E: serde::de::Error>(self) -> Result<Option<StringMatch>, E> {
        match (self.exact, self.prefix, self.regex) {
            (None, None, None) => Ok(None),
            (Some(s), None, None) => Ok(Some(StringMatch::Exact(s))),
            (None, Some(s), None) => Ok(Some(StringMatch::Prefix(s))),
            (None, None, Some(s)) => Ok(Some(StringMatch::Regex(s))),
            _ => Err(E::custom("only one of exact, prefix or regex may be set")),
        }
    }
}

/// Schema constraint (for the CRDs): at most one of `fields` is set, in the form Istio's CRDs use
/// and structural schemas allow: `oneOf` "none of them" or "this one", for each.
fn at_most_one_of(fields: &[&str]) -> serde_json::Value {
    let each: Vec<_> = fields.iter().map(|field| serde_json::json!({"required": [field]})).collect();
    let mut branches = vec![serde_json::json!({"not": {"anyOf": each.clone()}})];
    branches.extend(each);
    serde_json::Value::Array(branches)
}

fn optional_string_match<'de, D: Deserializer<'de>>(d: D) -> Result<Option<StringMatch>, D::Error> {
    match Option::<StringMatchFields>::deserialize(d)? {
        Some(fields) => fields.into_match(),
        None => Ok(None),
    }
}

fn string_match_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, Option<StringMatch>>, D::Error> {
    BTreeMap::<String, Option<StringMatchFields>>::deserialize(d)?
        .into_iter()
        .map(|(k, v)| Ok((k, v.map(StringMatchFields::into_match).transpose()?.flatten())))
        .collect()
}

/// A port on the destination host.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortSelector {
    /// A valid port number.
    #[serde(default)]
    pub number: u32,
}

/// A fraction of requests, in percent (0.0 to 100.0).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Percent {
    #[serde(default)]
    pub value: F64,
}

fn is_false(b: &bool) -> bool {
    !*b
}

// ------------------------------------------------------------------------------------------------
// Creation order
// ------------------------------------------------------------------------------------------------

/// The place of an Istio object in istiod's "oldest first" order, as an `Ord` key.
///
/// istiod sorts Gateways (`initGateways`), merged VirtualServices
/// (`sortMergedVirtualServicesByCreationTime`) and DestinationRules (after putting those with a
/// workload selector first: [`DestinationRule::merge_order`]) with `configCompareByCreationTime`
/// (`pilot/pkg/model/config.go`): by creation time, then by **name**, then by namespace (the name
/// and namespace compared as bytes). Creation times compare as instants: a UTC offset or a
/// fraction of a second in the given string counts. A missing creation time is Go's zero
/// `time.Time`, 0001-01-01T00:00:00Z, so an object without one sorts before every object with a
/// later one (and ties with an explicit `0001-01-01T00:00:00Z`). A string that is not an RFC 3339
/// time (which [`decode`] and `validate` reject) is treated as missing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CreationOrder<'a> {
    /// Seconds and nanoseconds since the Unix epoch.
    created: (i64, u32),
    name: &'a str,
    namespace: &'a str,
}

impl<'a> CreationOrder<'a> {
    /// Seconds from the Unix epoch to Go's zero `time.Time` (0001-01-01T00:00:00Z).
    const GO_ZERO_TIME: (i64, u32) = (-62_135_596_800, 0);

    pub fn new(creation_timestamp: Option<&str>, name: &'a str, namespace: &'a str) -> Self {
        let created = creation_timestamp.and_then(parse_rfc3339).unwrap_or(Self::GO_ZERO_TIME);
        CreationOrder { created, name, namespace }
    }
}

/// Reads an RFC 3339 time as Go's `time.Parse(time.RFC3339, s)` does for
/// `metav1.Time`: `YYYY-MM-DDTHH:MM:SS`, an optional fraction of a second (digits past the
/// ninth are dropped), then `Z` or `±HH:MM`. Returns seconds and nanoseconds since the Unix epoch.
pub fn parse_rfc3339(s: &str) -> Option<(i64, u32)> {
    let b = s.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let digits = b.get(range)?;
        digits.iter().all(u8::is_ascii_digit).then(|| digits.iter().fold(0, |n, d| n * 10 + i64::from(d - b'0')))
    };
    let byte_is = |i: usize, c: u8| b.get(i) == Some(&c);
    if !(byte_is(4, b'-') && byte_is(7, b'-') && byte_is(10, b'T') && byte_is(13, b':') && byte_is(16, b':')) {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if !(1..=12).contains(&month) || day < 1 || day > month_days[(month - 1) as usize] {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut i = 19;
    let mut nanos: u32 = 0;
    if byte_is(i, b'.') {
        let digits = b[i + 1..].iter().take_while(|d| d.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        let kept = &b[i + 1..i + 1 + digits.min(9)];
        nanos = kept.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0')) * 10u32.pow(9 - kept.len() as u32);
        i += 1 + digits;
    }
    let offset = match b.get(i..)? {
        b"Z" => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (h, m) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            if h > 23 || m > 59 {
                return None;
            }
            let offset = h * 3600 + m * 60;
            if *sign == b'-' { -offset } else { offset }
        }
        _ => return None,
    };
    // Days from 1970-01-01 to the date (the proleptic Gregorian calendar).
    let (y, m) = if month <= 2 { (year - 1, month + 9) } else { (year, month - 3) };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * m + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    Some((days * 86_400 + hour * 3600 + minute * 60 + second - offset, nanos))
}

// ------------------------------------------------------------------------------------------------
// Durations
// ------------------------------------------------------------------------------------------------

/// Parses a duration as Istio's CRD accepts it (Go `time.ParseDuration` syntax, e.g. `"1h30m"`,
/// `"100ms"`, `"0.5s"`, which includes the protobuf JSON form `"1.5s"`) into nanoseconds.
pub fn parse_duration(s: &str) -> Option<i64> {
    let (negative, mut rest) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: i128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_part, after) = rest.split_at(int_len);
        rest = after;
        let mut frac_part = "";
        if let Some(after_dot) = rest.strip_prefix('.') {
            let frac_len = after_dot.bytes().take_while(u8::is_ascii_digit).count();
            (frac_part, rest) = after_dot.split_at(frac_len);
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return None;
        }
        let unit_len = rest.find(|c: char| c == '.' || c.is_ascii_digit()).unwrap_or(rest.len());
        let (unit, after) = rest.split_at(unit_len);
        rest = after;
        let scale: i128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        if !int_part.is_empty() {
            let int: i128 = int_part.parse().ok().filter(|n| *n <= i64::MAX as i128)?;
            total += int * scale;
        }
        if !frac_part.is_empty() {
            let digits = &frac_part[..frac_part.len().min(18)];
            let frac: i128 = digits.parse().ok()?;
            total += frac * scale / 10_i128.pow(digits.len() as u32);
        }
        if total > i64::MAX as i128 {
            return None;
        }
    }
    let total = total as i64;
    Some(if negative { -total } else { total })
}

/// Decoding helpers and spec builders shared by the unit tests of this module and its children.
#[cfg(test)]
mod test_support {
    use serde_json::{Value, json};

    use super::*;

    pub(super) fn decode_json(kind: Kind, spec: Value) -> Result<Object, Vec<FieldError>> {
        decode(kind, "default", "test", None, spec)
    }

    #[track_caller]
    pub(super) fn accepted(kind: Kind, spec: Value) -> Object {
        decode_json(kind, spec).unwrap_or_else(|errors| panic!("rejected: {errors:#?}"))
    }

    /// Rejected with (at least) this field and a reason containing `reason`.
    #[track_caller]
    pub(super) fn rejected(kind: Kind, spec: Value, field: &str, reason: &str) {
        match decode_json(kind, spec) {
            Ok(object) => panic!("accepted {object:?}, expected {field}: {reason}"),
            Err(errors) => assert!(
                errors.iter().any(|e| e.field == field && e.reason.contains(reason)),
                "expected {field}: {reason}, got {errors:#?}"
            ),
        }
    }

    /// A VirtualService for `reviews` with the given HTTP routes.
    pub(super) fn vs_http(http: Value) -> Value {
        json!({"hosts": ["reviews"], "http": http})
    }

    /// A VirtualService for `reviews` with one HTTP route made of `route` plus a destination.
    pub(super) fn vs_route(extra: Value) -> Value {
        let mut route = json!({"route": [{"destination": {"host": "reviews"}}]});
        route.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        vs_http(json!([route]))
    }

    pub(super) fn gateway(servers: Value) -> Value {
        json!({"selector": {"istio": "ingressgateway"}, "servers": servers})
    }

    pub(super) fn http_server() -> Value {
        json!({"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]})
    }

    pub(super) fn https_server(tls: Value) -> Value {
        json!({"port": {"number": 443, "name": "https", "protocol": "HTTPS"}, "hosts": ["bookinfo.example.com"], "tls": tls})
    }

    pub(super) fn dr(extra: Value) -> Value {
        let mut spec = json!({"host": "reviews"});
        spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        spec
    }

    pub(super) fn dr_policy(policy: Value) -> Value {
        dr(json!({"trafficPolicy": policy}))
    }

    pub(super) fn se(extra: Value) -> Value {
        let mut spec =
            json!({"hosts": ["api.example.com"], "ports": [{"number": 443, "name": "https", "protocol": "HTTPS"}]});
        spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        spec
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::test_support::*;
    use super::*;

    // --- decoding --------------------------------------------------------------------------------

    #[test]
    fn unknown_field_is_reported_with_its_full_path() {
        let spec = vs_http(json!([{"route": [{"destination": {"hots": "reviews"}}]}]));
        let errors = decode_json(Kind::VirtualService, spec).unwrap_err();
        assert_eq!(errors, vec![FieldError::new("spec.http[0].route[0].destination.hots", "unknown field \"hots\"")]);
    }

    #[test]
    fn mistyped_field_is_reported_with_its_path() {
        let spec = vs_http(json!([{"route": [{"destination": {"host": "reviews"}, "weight": "fifty"}]}]));
        let errors = decode_json(Kind::VirtualService, spec).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].field, "spec.http[0].route[0].weight");
        assert!(errors[0].reason.contains("invalid type"), "{errors:?}");
    }

    #[test]
    fn missing_required_field_is_reported_as_required() {
        let spec = vs_http(json!([{"route": [{"destination": {"subset": "v1"}}]}]));
        let errors = decode_json(Kind::VirtualService, spec).unwrap_err();
        assert_eq!(errors, vec![FieldError::new("spec.http[0].route[0].destination.host", "Required value")]);
    }

    #[test]
    fn unknown_enum_value_is_rejected() {
        rejected(
            Kind::DestinationRule,
            dr_policy(json!({"tls": {"mode": "STRICT"}})),
            "spec.trafficPolicy.tls.mode",
            "unknown variant",
        );
    }

    #[test]
    fn null_fields_are_treated_as_absent() {
        let spec = json!({"hosts": ["reviews"], "gateways": null, "exportTo": null,
                          "http": [{"route": [{"destination": {"host": "reviews", "subset": null}}]}]});
        let Object::VirtualService(vs) = accepted(Kind::VirtualService, spec) else { panic!() };
        assert!(vs.spec.gateways.is_empty() && vs.spec.http[0].route[0].destination.subset.is_none());
        rejected(Kind::DestinationRule, json!({"host": null}), "spec.host", "Required value");
    }

    #[test]
    fn missing_spec_is_required() {
        rejected(Kind::ServiceEntry, Value::Null, "spec", "Required value");
    }

    #[test]
    fn kubernetes_kind_is_not_decoded_here() {
        rejected(Kind::Service, json!({}), "kind", "not an Istio networking kind");
    }

    #[test]
    fn decoded_spec_serializes_back_to_the_same_spec() {
        let spec = json!({
            "hosts": ["reviews"],
            "http": [{
                "match": [{"headers": {"end-user": {"exact": "jason"}, "x-present": {}}, "uri": {"prefix": "/r"}}],
                "route": [{"destination": {"host": "reviews", "subset": "v2", "port": {"number": 9080}}, "weight": 100}],
                "fault": {"delay": {"fixedDelay": "7s", "percentage": {"value": 100.0}}},
                "timeout": "0.5s"
            }]
        });
        let Object::VirtualService(vs) = accepted(Kind::VirtualService, spec) else { panic!() };
        let again: VirtualServiceSpec = serde_json::from_value(serde_json::to_value(&vs.spec).unwrap()).unwrap();
        assert_eq!(again, vs.spec);
        let m = &vs.spec.http[0].r#match[0];
        assert_eq!(m.headers["end-user"], Some(StringMatch::Exact("jason".into())));
        assert_eq!(m.headers["x-present"], None, "`{{}}` means the header is present");
        assert_eq!(m.uri, Some(StringMatch::Prefix("/r".into())));
    }

    #[test]
    fn string_match_with_two_kinds_is_rejected() {
        let spec = vs_route(json!({"match": [{"uri": {"exact": "/a", "prefix": "/b"}}]}));
        rejected(Kind::VirtualService, spec, "spec.http[0].match[0].uri", "only one of exact, prefix or regex");
    }

    #[test]
    fn deprecated_mirror_percent_is_accepted_in_both_spellings() {
        let mirror = json!({"host": "reviews", "subset": "v2"});
        for field in ["mirrorPercent", "mirror_percent"] {
            let Object::VirtualService(vs) =
                accepted(Kind::VirtualService, vs_route(json!({"mirror": mirror, field: 50})))
            else {
                panic!()
            };
            assert_eq!(vs.spec.http[0].mirror_percent, Some(50));
        }
    }

    #[test]
    fn all_three_api_schemas_share_one_json_schema() {
        let schema = serde_json::to_value(schemars::schema_for!(DestinationRuleSpec)).unwrap();
        let text = schema.to_string();
        for field in ["trafficPolicy", "portLevelSettings", "consecutive5xxErrors", "http2MaxRequests", "exportTo"] {
            assert!(text.contains(&format!("\"{field}\"")), "schema lacks {field}");
        }
        assert_eq!(schema["required"], json!(["host"]));
    }

    // --- durations -------------------------------------------------------------------------------

    #[test]
    fn durations_in_protobuf_and_go_forms_are_parsed() {
        assert_eq!(parse_duration("5s"), Some(5_000_000_000));
        assert_eq!(parse_duration("0.5s"), Some(500_000_000));
        assert_eq!(parse_duration("1.000340012s"), Some(1_000_340_012));
        assert_eq!(parse_duration("100ms"), Some(100_000_000));
        assert_eq!(parse_duration("15m"), Some(900_000_000_000));
        assert_eq!(parse_duration("1h30m"), Some(5_400_000_000_000));
        assert_eq!(parse_duration("0"), Some(0));
        assert_eq!(parse_duration("-1s"), Some(-1_000_000_000));
        for bad in ["", "5", "s", "1.5", "1d", "abc", "1s2", "."] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    // --- creation order --------------------------------------------------------------------------

    #[test]
    fn rfc3339_times_are_read_as_instants() {
        // Expected values from Python's datetime, not from this parser.
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some((0, 0)));
        assert_eq!(parse_rfc3339("2024-01-02T03:04:05Z"), Some((1_704_164_645, 0)));
        assert_eq!(parse_rfc3339("2024-01-02T04:34:05+01:30"), Some((1_704_164_645, 0)));
        assert_eq!(parse_rfc3339("2024-01-01T22:04:05-05:00"), Some((1_704_164_645, 0)));
        assert_eq!(parse_rfc3339("2000-02-29T00:00:00Z"), Some((951_782_400, 0)));
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59Z"), Some((-1, 0)));
        assert_eq!(parse_rfc3339("0001-01-01T00:00:00Z"), Some((-62_135_596_800, 0)));
        assert_eq!(parse_rfc3339("9999-12-31T23:59:59Z"), Some((253_402_300_799, 0)));
        assert_eq!(parse_rfc3339("2024-01-02T03:04:05.5Z"), Some((1_704_164_645, 500_000_000)));
        // Go keeps nine digits of a longer fraction.
        assert_eq!(parse_rfc3339("2024-01-02T03:04:05.1234567891Z"), Some((1_704_164_645, 123_456_789)));
    }

    #[test]
    fn malformed_rfc3339_times_are_refused() {
        for bad in [
            "",
            "2024-01-02",
            "2024-01-02T03:04:05",
            "2024-01-02 03:04:05Z",
            "2024-01-02t03:04:05z",
            "24-01-02T03:04:05Z",
            "2024-1-02T03:04:05Z",
            "2023-02-29T00:00:00Z",
            "2024-04-31T00:00:00Z",
            "2024-13-01T00:00:00Z",
            "2024-00-01T00:00:00Z",
            "2024-01-00T00:00:00Z",
            "2024-01-02T24:00:00Z",
            "2024-01-02T03:60:00Z",
            "2024-01-02T03:04:60Z",
            "2024-01-02T03:04:05.Z",
            "2024-01-02T03:04:05+0100",
            "2024-01-02T03:04:05+24:00",
            "2024-01-02T03:04:05Z ",
            "+2024-01-02T03:04:05Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn creation_order_is_oldest_first_then_name_then_namespace() {
        let mut keys = [
            CreationOrder::new(Some("2024-01-02T03:04:06Z"), "a", "a"),
            CreationOrder::new(Some("2024-01-02T03:04:05Z"), "b", "a"),
            // Same instant as the previous one, written in another zone: a tie, broken by name.
            CreationOrder::new(Some("2024-01-02T04:04:05+01:00"), "a", "z"),
            CreationOrder::new(Some("2024-01-02T03:04:05.5Z"), "a", "a"),
            // Same time and name: namespace decides.
            CreationOrder::new(Some("2024-01-02T03:04:05Z"), "b", "0"),
            // No time is Go's zero time: before everything else.
            CreationOrder::new(None, "z", "z"),
        ];
        keys.sort();
        let order: Vec<(&str, &str)> = keys.iter().map(|k| (k.namespace, k.name)).collect();
        assert_eq!(order, [("z", "z"), ("z", "a"), ("0", "b"), ("a", "b"), ("a", "a"), ("a", "a")]);
        assert_eq!(keys[4].created, (1_704_164_645, 500_000_000), "the fraction counts");
        // Go's zero time written out ties with a missing time.
        assert_eq!(CreationOrder::new(Some("0001-01-01T00:00:00Z"), "n", "ns"), CreationOrder::new(None, "n", "ns"));
    }

    #[test]
    fn decode_keeps_the_creation_timestamp_as_given() {
        let spec = json!({"host": "reviews"});
        let created = Some("2024-01-02T04:04:05+01:00");
        let Ok(Object::DestinationRule(rule)) = decode(Kind::DestinationRule, "ns", "r", created, spec) else {
            panic!()
        };
        assert_eq!(rule.creation_timestamp.as_deref(), created);
        assert_eq!(rule.creation_order(), CreationOrder::new(Some("2024-01-02T03:04:05Z"), "r", "ns"));
    }

    #[test]
    fn decode_rejects_a_malformed_creation_timestamp_with_the_spec_errors() {
        let created = Some("yesterday");
        let errors = decode(Kind::VirtualService, "ns", "v", created, json!({"hosts": ["r"]})).unwrap_err();
        assert_eq!(errors[0].field, "metadata.creationTimestamp", "{errors:?}");
        assert!(errors.len() > 1, "the spec's own errors are reported too: {errors:?}");
        let errors = decode(Kind::Gateway, "ns", "g", created, json!({"servers": "x"})).unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["metadata.creationTimestamp", "spec.servers"]);
    }

    #[test]
    fn destination_rules_with_a_workload_selector_merge_first() {
        let rule = |name: &str, created: &str, selector: Value| {
            let mut spec = json!({"host": "reviews"});
            if !selector.is_null() {
                spec["workloadSelector"] = selector;
            }
            match decode(Kind::DestinationRule, "ns", name, Some(created), spec) {
                Ok(Object::DestinationRule(rule)) => rule,
                other => panic!("{other:?}"),
            }
        };
        let old = rule("old", "2020-01-01T00:00:00Z", Value::Null);
        let young_selector = rule("young", "2024-01-01T00:00:00Z", json!({"matchLabels": {"app": "x"}}));
        let empty_selector = rule("empty", "2025-01-01T00:00:00Z", json!({}));
        let mut rules = [&old, &young_selector, &empty_selector];
        rules.sort_by(|a, b| a.merge_order().cmp(&b.merge_order()));
        assert_eq!(rules.map(|r| r.name.as_str()), ["young", "empty", "old"]);
        assert!(old.creation_order() < young_selector.creation_order());
    }
}
