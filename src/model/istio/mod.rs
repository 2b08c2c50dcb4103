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
    pub spec: GatewaySpec,
}

/// A `networking.istio.io` VirtualService: routing rules for a set of hosts.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct VirtualService {
    pub namespace: String,
    pub name: String,
    pub spec: VirtualServiceSpec,
}

/// A `networking.istio.io` DestinationRule: traffic policy and subsets for one host.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DestinationRule {
    pub namespace: String,
    pub name: String,
    pub spec: DestinationRuleSpec,
}

/// A `networking.istio.io` ServiceEntry: a service added to the mesh's registry.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServiceEntry {
    pub namespace: String,
    pub name: String,
    pub spec: ServiceEntrySpec,
}

impl Gateway {
    /// Every validation error of this object (empty if it is valid).
    pub fn validate(&self) -> Vec<FieldError> {
        validate::validate_gateway(&self.name, &self.spec).0
    }
}

impl VirtualService {
    /// Every validation error of this object (empty if it is valid).
    pub fn validate(&self) -> Vec<FieldError> {
        validate::validate_virtual_service(&self.namespace, &self.spec).0
    }
}

impl DestinationRule {
    /// Every validation error of this object (empty if it is valid).
    pub fn validate(&self) -> Vec<FieldError> {
        validate::validate_destination_rule(&self.namespace, &self.spec).0
    }
}

impl ServiceEntry {
    /// Every validation error of this object (empty if it is valid).
    pub fn validate(&self) -> Vec<FieldError> {
        validate::validate_service_entry(&self.namespace, &self.spec).0
    }
}

/// Decode and validate the spec of an Istio kind. `kind` is one of the four Istio kinds.
/// Err holds every problem found, each with a dotted field path from the object root
/// (e.g. "spec.http[0].route[1].weight") and a reason. A spec that does not decode reports the
/// first decoding problem only (validation needs a decoded spec).
pub fn decode(kind: Kind, namespace: &str, name: &str, spec: serde_json::Value) -> Result<Object, Vec<FieldError>> {
    let (namespace, name) = (namespace.to_string(), name.to_string());
    let object = match kind {
        Kind::Gateway => Object::Gateway(Box::new(Gateway { spec: decode_spec(spec)?, namespace, name })),
        Kind::VirtualService => {
            Object::VirtualService(Box::new(VirtualService { spec: decode_spec(spec)?, namespace, name }))
        }
        Kind::DestinationRule => {
            Object::DestinationRule(Box::new(DestinationRule { spec: decode_spec(spec)?, namespace, name }))
        }
        Kind::ServiceEntry => {
            Object::ServiceEntry(Box::new(ServiceEntry { spec: decode_spec(spec)?, namespace, name }))
        }
        other => {
            return Err(vec![FieldError::new("kind", format!("{other} is not an Istio networking kind"))]);
        }
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
        decode(kind, "default", "test", spec)
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
}
