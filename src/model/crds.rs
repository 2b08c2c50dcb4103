//! CustomResourceDefinitions of the four Istio networking kinds meshflow reads (Gateway,
//! VirtualService, DestinationRule, ServiceEntry), generated from the Rust types of
//! [`super::istio`]: what the CRDs admit is what meshflow decodes.
//!
//! Names, versions and printer columns are Istio's own (group `networking.istio.io`; versions
//! `v1`, `v1alpha3` and `v1beta1`, all served with one schema, `v1` stored; the `status`
//! subresource). The `spec` schema is the type's JSON schema (schemars, OpenAPI 3 settings, every
//! subschema inlined) rewritten by [`structural`] into a Kubernetes *structural* schema; `status`
//! is left to whoever writes it (`x-kubernetes-preserve-unknown-fields`).
//!
//! The checked-in copy is `crds/istio-networking.yaml` ([`render_yaml`]); `tests/it/crds.rs` keeps it
//! byte-identical to what this module renders.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceColumnDefinition, CustomResourceDefinition, CustomResourceDefinitionNames,
    CustomResourceDefinitionSpec, CustomResourceDefinitionVersion, CustomResourceSubresourceStatus,
    CustomResourceSubresources, CustomResourceValidation, JSONSchemaProps,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use schemars::JsonSchema;
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use super::F64;
use super::istio::{DestinationRuleSpec, GatewaySpec, ServiceEntrySpec, VirtualServiceSpec};

/// The API group of the Istio networking kinds.
pub const GROUP: &str = "networking.istio.io";
/// The served versions, in the order Istio lists them; they share one schema.
pub const VERSIONS: [&str; 3] = ["v1", "v1alpha3", "v1beta1"];
/// The version objects are stored in (as current Istio).
pub const STORAGE_VERSION: &str = "v1";

/// Where the rendered CRDs are checked in, relative to the crate root.
pub const CHECKED_IN_PATH: &str = "crds/istio-networking.yaml";

/// One kind: its names, the description of its spec, its printer columns and its spec schema.
struct KindDef {
    kind: &'static str,
    plural: &'static str,
    short_name: &'static str,
    description: &'static str,
    /// (name, JSONPath, type, description)
    columns: &'static [(&'static str, &'static str, &'static str, &'static str)],
    spec_schema: fn() -> Value,
}

const AGE_DESCRIPTION: &str = "Time since the object was created (metadata.creationTimestamp).";

const KINDS: [KindDef; 4] = [
    KindDef {
        kind: "DestinationRule",
        plural: "destinationrules",
        short_name: "dr",
        description: "Policies that apply to traffic for a service after routing has occurred: load balancing, \
                      connection pool, outlier detection, TLS and named subsets. See \
                      https://istio.io/docs/reference/config/networking/destination-rule.html",
        columns: &[("Host", ".spec.host", "string", "The name of a service from the service registry")],
        spec_schema: spec_schema::<DestinationRuleSpec>,
    },
    KindDef {
        kind: "Gateway",
        plural: "gateways",
        short_name: "gw",
        description: "A load balancer at the edge of the mesh: the ports, protocols, hosts and TLS settings a \
                      gateway workload exposes. See https://istio.io/docs/reference/config/networking/gateway.html",
        columns: &[],
        spec_schema: spec_schema::<GatewaySpec>,
    },
    KindDef {
        kind: "ServiceEntry",
        plural: "serviceentries",
        short_name: "se",
        description: "An entry added to the mesh's service registry, for services outside it or not otherwise \
                      registered. See https://istio.io/docs/reference/config/networking/service-entry.html",
        columns: &[
            ("Hosts", ".spec.hosts", "string", "The hosts associated with the ServiceEntry"),
            (
                "Location",
                ".spec.location",
                "string",
                "Whether the service is external to the mesh or part of the mesh (MESH_EXTERNAL or MESH_INTERNAL)",
            ),
            (
                "Resolution",
                ".spec.resolution",
                "string",
                "Service resolution mode for the hosts (NONE, STATIC, DNS, DNS_ROUND_ROBIN or DYNAMIC_DNS)",
            ),
        ],
        spec_schema: spec_schema::<ServiceEntrySpec>,
    },
    KindDef {
        kind: "VirtualService",
        plural: "virtualservices",
        short_name: "vs",
        description: "Routing rules for traffic to a set of hosts: matches, destinations, retries, timeouts, \
                      rewrites, fault injection and more. See \
                      https://istio.io/docs/reference/config/networking/virtual-service.html",
        columns: &[
            (
                "Gateways",
                ".spec.gateways",
                "string",
                "The names of gateways and sidecars that should apply these routes",
            ),
            ("Hosts", ".spec.hosts", "string", "The destination hosts to which traffic is being sent"),
        ],
        spec_schema: spec_schema::<VirtualServiceSpec>,
    },
];

/// The CustomResourceDefinitions of Gateway, VirtualService, DestinationRule and ServiceEntry,
/// ordered by name (`destinationrules.networking.istio.io` first).
pub fn crds() -> Vec<CustomResourceDefinition> {
    KINDS.iter().map(crd).collect()
}

/// [`crds`] as multi-document YAML (`---` before each document, keys sorted), exactly as
/// checked in at `crds/istio-networking.yaml`: rendering twice gives the same bytes.
pub fn render_yaml() -> String {
    let mut out = String::from(
        "# CustomResourceDefinitions of the Istio networking kinds meshflow reads, generated from its Rust\n\
         # types (src/model/crds.rs). Do not edit: regenerate with `meshflow crds`, or with\n\
         # `MESHFLOW_REGENERATE_CRDS=1 cargo test --test it crds::`.\n",
    );
    for crd in crds() {
        let mut value = serde_json::to_value(&crd).expect("a CustomResourceDefinition serializes to JSON");
        integral_floats_as_integers(&mut value);
        out.push_str("---\n");
        out.push_str(&serde_yaml_ng::to_string(&value).expect("JSON serializes to YAML"));
    }
    out
}

fn crd(def: &KindDef) -> CustomResourceDefinition {
    let schema = open_api_v3_schema(def);
    let columns = printer_columns(def);
    let versions = VERSIONS
        .iter()
        .map(|&name| CustomResourceDefinitionVersion {
            name: name.to_string(),
            served: true,
            storage: name == STORAGE_VERSION,
            additional_printer_columns: (!columns.is_empty()).then(|| columns.clone()),
            schema: Some(CustomResourceValidation { open_api_v3_schema: Some(schema.clone()) }),
            subresources: Some(CustomResourceSubresources {
                status: Some(CustomResourceSubresourceStatus(json!({}))),
                scale: None,
            }),
            ..Default::default()
        })
        .collect();
    CustomResourceDefinition {
        metadata: ObjectMeta { name: Some(format!("{}.{GROUP}", def.plural)), ..Default::default() },
        spec: CustomResourceDefinitionSpec {
            group: GROUP.to_string(),
            names: CustomResourceDefinitionNames {
                kind: def.kind.to_string(),
                list_kind: Some(format!("{}List", def.kind)),
                plural: def.plural.to_string(),
                singular: Some(def.kind.to_lowercase()),
                short_names: Some(vec![def.short_name.to_string()]),
                categories: Some(vec!["istio-io".to_string(), "networking-istio-io".to_string()]),
            },
            scope: "Namespaced".to_string(),
            versions,
            ..Default::default()
        },
        status: None,
    }
}

/// The kind's columns, then `Age` (as every Istio networking CRD that has columns); none for a
/// kind without (Gateway, as in Istio: `kubectl get` then shows Name and Age).
fn printer_columns(def: &KindDef) -> Vec<CustomResourceColumnDefinition> {
    if def.columns.is_empty() {
        return Vec::new();
    }
    let column = |name: &str, json_path: &str, type_: &str, description: &str| CustomResourceColumnDefinition {
        name: name.to_string(),
        json_path: json_path.to_string(),
        type_: type_.to_string(),
        description: Some(description.to_string()),
        ..Default::default()
    };
    let mut columns: Vec<_> = def.columns.iter().map(|&(n, p, t, d)| column(n, p, t, d)).collect();
    columns.push(column("Age", ".metadata.creationTimestamp", "date", AGE_DESCRIPTION));
    columns
}

/// The whole object's schema: `spec` from the Rust type, `status` kept as written.
fn open_api_v3_schema(def: &KindDef) -> JSONSchemaProps {
    let mut spec = (def.spec_schema)();
    spec["description"] = Value::from(def.description);
    let schema = json!({
        "type": "object",
        "properties": {
            "spec": spec,
            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
        },
    });
    let props: JSONSchemaProps =
        serde_json::from_value(schema.clone()).expect("a structural schema is JSONSchemaProps");
    // JSONSchemaProps ignores keys it does not know: make sure nothing was lost on the way.
    let mut round_trip = serde_json::to_value(&props).expect("JSONSchemaProps serializes");
    integral_floats_as_integers(&mut round_trip);
    assert_eq!(round_trip, schema, "the {} schema has keys JSONSchemaProps does not know", def.kind);
    props
}

/// The structural OpenAPI v3 schema of `T` (a spec type): schemars' OpenAPI 3 output with every
/// subschema inlined, rewritten by [`structural`].
pub fn spec_schema<T: JsonSchema>() -> Value {
    let generator = SchemaSettings::openapi3()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .into_generator();
    let mut schema = generator.into_root_schema_for::<T>().to_value();
    structural(&mut schema);
    let representation_doc = schemars::schema_for!(F64).get("description").cloned();
    if let Some(doc) = representation_doc {
        remove_description(&mut schema, &doc);
    }
    schema
}

/// Drops every `description` equal to `doc`: [`F64`]'s doc comment is about its Rust
/// representation (a float with a total order), not about the fields that use it.
fn remove_description(schema: &mut Value, doc: &Value) {
    match schema {
        Value::Object(node) => {
            if node.get("description") == Some(doc) {
                node.remove("description");
            }
            node.values_mut().for_each(|v| remove_description(v, doc));
        }
        Value::Array(items) => items.iter_mut().for_each(|v| remove_description(v, doc)),
        _ => {}
    }
}

/// Keys that never go into a CRD schema: JSON Schema bookkeeping, and `default` (the API server
/// would write defaults into stored objects; Istio's CRDs have none either).
const DROPPED_KEYS: [&str; 9] =
    ["$schema", "$id", "title", "default", "examples", "example", "deprecated", "readOnly", "writeOnly"];

/// Keys a schema under `allOf`/`anyOf`/`oneOf`/`not` must not have to stay structural.
const NOT_IN_JUNCTORS: [&str; 5] = ["type", "description", "nullable", "additionalProperties", "format"];

/// Rewrites a schemars OpenAPI 3 schema (subschemas inlined) into a Kubernetes structural schema:
///
/// - `Option<T>` whose schema has subschemas (`anyOf: [T, null]`) becomes `T` + `nullable: true`,
///   and `null` leaves `enum`s (nullability is `nullable`);
/// - an externally tagged enum (`oneOf` of single-property objects, as `StringMatch`) gets its
///   properties declared on the node itself, the branches keep only `required`;
/// - enum variants split over `oneOf` (a documented variant) are merged back into one `enum`;
/// - `additionalProperties: false` (`deny_unknown_fields`) is dropped: Kubernetes forbids it next
///   to `properties` and prunes unknown fields instead;
/// - unsigned formats (`uint32`, `uint64`) become `minimum: 0` (+ the maximum of 32 bits), as in
///   Istio's CRDs, since OpenAPI only knows `int32` and `int64`;
/// - `const` becomes a one-value `enum`, titles/defaults/examples are dropped, rustdoc links
///   (``[`Type`]``) become plain code spans;
/// - junctor branches lose `type`, `description`, `nullable`, ... (only constraints remain).
///
/// Panics on what it cannot make structural (a `$ref`, from a recursive type).
pub fn structural(schema: &mut Value) {
    let Some(node) = schema.as_object_mut() else {
        return;
    };
    assert!(!node.contains_key("$ref"), "a $ref cannot be inlined (recursive type?): {node:?}");
    unwrap_nullable_any_of(node);
    for key in DROPPED_KEYS {
        node.remove(key);
    }
    if let Some(value) = node.remove("const") {
        node.insert("enum".into(), Value::Array(vec![value]));
    }
    for key in ["properties", "patternProperties"] {
        if let Some(Value::Object(properties)) = node.get_mut(key) {
            properties.values_mut().for_each(structural);
        }
    }
    for key in ["items", "additionalProperties", "not"] {
        if let Some(sub) = node.get_mut(key) {
            structural(sub);
        }
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        if let Some(Value::Array(branches)) = node.get_mut(key) {
            branches.iter_mut().for_each(structural);
        }
    }

    hoist_enum_values(node);
    hoist_tagged_variants(node);
    if node.get("additionalProperties") == Some(&Value::Bool(false)) {
        node.remove("additionalProperties");
    }
    if node.get("additionalProperties") == Some(&Value::Bool(true)) {
        node.remove("additionalProperties");
        node.insert("x-kubernetes-preserve-unknown-fields".into(), Value::Bool(true));
    }
    if node.get("nullable") == Some(&Value::Bool(true))
        && let Some(Value::Array(values)) = node.get_mut("enum")
    {
        values.retain(|v| !v.is_null());
    }
    node.remove("uniqueItems"); // forbidden by Kubernetes (quadratic); no set type is used here anyway
    match node.get("format").and_then(Value::as_str) {
        Some("uint32") => {
            node.remove("format");
            node.insert("maximum".into(), Value::from(u32::MAX));
        }
        Some("uint64" | "uint") => {
            node.remove("format");
        }
        _ => {}
    }
    if let Some(Value::String(description)) = node.get_mut("description") {
        *description = description.replace("[`", "`").replace("`]", "`");
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        if let Some(Value::Array(branches)) = node.get_mut(key) {
            branches.iter_mut().for_each(strip_junctor_branch);
        }
    }
    if let Some(not) = node.get_mut("not") {
        strip_junctor_branch(not);
    }
}

/// `anyOf: [T, {nullable, enum: [null]}]` (schemars' `Option<T>` for a `T` with subschemas)
/// becomes `T` merged into the node, with `nullable: true`.
fn unwrap_nullable_any_of(node: &mut Map<String, Value>) {
    let Some(Value::Array(branches)) = node.get("anyOf") else {
        return;
    };
    let is_null = |v: &Value| {
        v.get("enum") == Some(&json!([null]))
            || v.get("type") == Some(&json!("null"))
            || v.get("const") == Some(&Value::Null)
    };
    let [a, b] = branches.as_slice() else {
        return;
    };
    let inner = match (is_null(a), is_null(b)) {
        (false, true) => a.clone(),
        (true, false) => b.clone(),
        _ => return,
    };
    node.remove("anyOf");
    if let Value::Object(inner) = inner {
        for (key, value) in inner {
            node.entry(key).or_insert(value); // the field's own description wins
        }
    }
    node.insert("nullable".into(), Value::Bool(true));
    if let Some(Value::Array(values)) = node.get_mut("enum") {
        values.retain(|v| !v.is_null());
    }
}

/// `oneOf` branches that each only list enum values (schemars splits a unit-variant enum so
/// that a documented variant keeps its description) become one `enum` on the node.
fn hoist_enum_values(node: &mut Map<String, Value>) {
    let Some(Value::Array(branches)) = node.get("oneOf") else {
        return;
    };
    let only_values = |b: &Value| {
        b.as_object().is_some_and(|b| {
            b.contains_key("enum") && b.keys().all(|k| matches!(k.as_str(), "enum" | "type" | "description"))
        })
    };
    if branches.is_empty() || !branches.iter().all(only_values) {
        return;
    }
    let mut values = Vec::new();
    let mut type_ = None;
    for branch in branches {
        values.extend(branch["enum"].as_array().into_iter().flatten().cloned());
        if let Some(t) = branch.get("type") {
            assert!(type_.is_none_or(|seen| seen == t), "enum branches of different types: {branches:?}");
            type_ = Some(t);
        }
    }
    let type_ = type_.cloned();
    node.remove("oneOf");
    if let Some(t) = type_ {
        node.entry("type").or_insert(t);
    }
    node.insert("enum".into(), Value::Array(values));
}

/// An externally tagged enum (`oneOf` of objects that each declare properties, like
/// `{"exact": ...}` / `{"prefix": ...}`): the properties move up to the node (structural schemas
/// must declare every field outside the junctors), each branch keeps its `required`, so `oneOf`
/// still says "exactly one of".
fn hoist_tagged_variants(node: &mut Map<String, Value>) {
    let Some(Value::Array(branches)) = node.get_mut("oneOf") else {
        return;
    };
    if branches.is_empty() || !branches.iter().all(|b| b.get("properties").is_some_and(Value::is_object)) {
        return;
    }
    let mut hoisted = Map::new();
    for branch in branches.iter_mut() {
        let branch = branch.as_object_mut().expect("a branch with properties is an object");
        let description = branch.remove("description");
        let Some(Value::Object(properties)) = branch.remove("properties") else { unreachable!() };
        let single = properties.len() == 1;
        for (name, mut property) in properties {
            if single && let (Some(description), Some(property)) = (&description, property.as_object_mut()) {
                property.entry("description").or_insert(description.clone());
            }
            match hoisted.get(&name) {
                Some(seen) => assert_eq!(seen, &property, "variants declare `{name}` differently"),
                None => {
                    hoisted.insert(name, property);
                }
            }
        }
        branch.retain(|k, _| k == "required");
    }
    let properties = node.entry("properties").or_insert_with(|| Value::Object(Map::new()));
    let properties = properties.as_object_mut().expect("properties is an object");
    for (name, property) in hoisted {
        properties.entry(name).or_insert(property);
    }
    node.entry("type").or_insert(Value::from("object"));
}

/// A schema under a junctor keeps only value constraints.
fn strip_junctor_branch(branch: &mut Value) {
    let Some(branch) = branch.as_object_mut() else {
        return;
    };
    for key in NOT_IN_JUNCTORS {
        branch.remove(key);
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        if let Some(Value::Array(nested)) = branch.get_mut(key) {
            nested.iter_mut().for_each(strip_junctor_branch);
        }
    }
    if let Some(not) = branch.get_mut("not") {
        strip_junctor_branch(not);
    }
    if let Some(Value::Object(properties)) = branch.get_mut("properties") {
        properties.values_mut().for_each(strip_junctor_branch);
    }
}

/// `4294967295.0` → `4294967295`: JSONSchemaProps keeps bounds as `f64`, Istio's YAML (and a
/// reader) expects integers.
fn integral_floats_as_integers(value: &mut Value) {
    match value {
        Value::Number(n) => {
            if let Some(f) = n.as_f64()
                && n.is_f64()
                && f.fract() == 0.0
                && f.abs() < 9.0e15
            {
                *value = Value::from(f as i64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_floats_as_integers),
        Value::Object(map) => map.values_mut().for_each(integral_floats_as_integers),
        _ => {}
    }
}
