//! The CustomResourceDefinitions of the Istio networking kinds (`crds/istio-networking.yaml`):
//! the checked-in file is exactly what `model::crds::render_yaml` generates, every schema is
//! structural as Kubernetes defines it, and every valid Istio document of the shared corpus is
//! admitted unchanged (valid against its version's schema, nothing pruned).
//!
//! `MESHFLOW_REGENERATE_CRDS=1 cargo test --test it crds::` rewrites the checked-in file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use meshflow::model::crds;
use serde::Deserialize;
use serde_json::{Value, json};

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/corpus");
const REGENERATE: &str = "MESHFLOW_REGENERATE_CRDS";

/// `crds/istio-networking.yaml`, absolute.
fn checked_in_path() -> String {
    format!("{}/{}", env!("CARGO_MANIFEST_DIR"), crds::CHECKED_IN_PATH)
}

// === the checked-in file ===

#[test]
fn checked_in_crds_are_byte_identical_to_the_generated_ones() {
    let generated = crds::render_yaml();
    assert_eq!(generated, crds::render_yaml(), "rendering twice gave different bytes");
    let checked_in_path = checked_in_path();
    let checked_in_path = checked_in_path.as_str();
    if std::env::var_os(REGENERATE).is_some_and(|v| !v.is_empty() && v != "0") {
        std::fs::write(checked_in_path, &generated).unwrap_or_else(|e| panic!("cannot write {checked_in_path}: {e}"));
        eprintln!("{REGENERATE} is set: wrote {checked_in_path}");
        return;
    }
    let checked_in = std::fs::read_to_string(checked_in_path).unwrap_or_default();
    if checked_in != generated {
        let line = checked_in.lines().zip(generated.lines()).position(|(a, b)| a != b);
        let line = line.unwrap_or_else(|| checked_in.lines().count().min(generated.lines().count()));
        panic!(
            "{checked_in_path} is not what src/model/crds.rs generates (first difference at line {}: checked in {:?}, \
             generated {:?}).\nRegenerate it with `{REGENERATE}=1 cargo test --test it crds::` (or `meshflow crds > \
             crds/istio-networking.yaml`) and review the diff.",
            line + 1,
            checked_in.lines().nth(line).unwrap_or("<end of file>"),
            generated.lines().nth(line).unwrap_or("<end of file>"),
        );
    }
}

#[test]
fn checked_in_yaml_reads_back_as_the_same_custom_resource_definitions() {
    let text = std::fs::read_to_string(checked_in_path()).expect("the checked-in CRDs are readable");
    let read: Vec<CustomResourceDefinition> = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| CustomResourceDefinition::deserialize(doc).expect("each document is a CustomResourceDefinition"))
        .collect();
    let expected = crds::crds();
    assert_eq!(read.len(), expected.len());
    for (read, expected) in read.iter().zip(&expected) {
        // Compare as JSON: the YAML writes integral bounds as integers, JSONSchemaProps holds f64.
        assert_eq!(serde_json::to_value(read).unwrap(), serde_json::to_value(expected).unwrap());
    }
}

#[test]
fn crds_name_versions_and_columns_as_istio_does() {
    let crds = crds::crds();
    let names: Vec<_> = crds.iter().map(|c| c.metadata.name.clone().unwrap_or_default()).collect();
    assert_eq!(
        names,
        [
            "destinationrules.networking.istio.io",
            "gateways.networking.istio.io",
            "serviceentries.networking.istio.io",
            "virtualservices.networking.istio.io"
        ]
    );
    let expected_columns: BTreeMap<&str, Vec<&str>> = BTreeMap::from([
        ("DestinationRule", vec!["Host", "Age"]),
        ("Gateway", vec![]),
        ("ServiceEntry", vec!["Hosts", "Location", "Resolution", "Age"]),
        ("VirtualService", vec!["Gateways", "Hosts", "Age"]),
    ]);
    let short_names = BTreeMap::from([
        ("DestinationRule", "dr"),
        ("Gateway", "gw"),
        ("ServiceEntry", "se"),
        ("VirtualService", "vs"),
    ]);
    for crd in &crds {
        let spec = &crd.spec;
        let kind = spec.names.kind.as_str();
        assert_eq!(spec.group, "networking.istio.io");
        assert_eq!(spec.scope, "Namespaced");
        assert_eq!(spec.names.short_names.as_deref(), Some(&[short_names[kind].to_string()][..]));
        assert_eq!(
            spec.names.categories.as_deref(),
            Some(&["istio-io".to_string(), "networking-istio-io".to_string()][..])
        );
        assert_eq!(spec.names.list_kind.as_deref(), Some(format!("{kind}List").as_str()));
        let versions: BTreeSet<_> = spec.versions.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(versions, BTreeSet::from(["v1alpha3", "v1beta1", "v1"]), "{kind}");
        let stored: Vec<_> = spec.versions.iter().filter(|v| v.storage).map(|v| v.name.as_str()).collect();
        assert_eq!(stored, ["v1"], "{kind}: exactly one storage version, v1");
        let first_schema = schema_of(crd, "v1");
        for version in &spec.versions {
            assert!(version.served, "{kind} {} is served", version.name);
            let status = version.subresources.as_ref().and_then(|s| s.status.as_ref());
            assert!(status.is_some(), "{kind} {} has the status subresource", version.name);
            assert_eq!(schema_of(crd, &version.name), first_schema, "{kind}: every version has the same schema");
            let columns: Vec<_> =
                version.additional_printer_columns.iter().flatten().map(|c| c.name.as_str()).collect();
            assert_eq!(columns, expected_columns[kind], "{kind} {} printer columns", version.name);
        }
        assert_eq!(
            first_schema["properties"]["status"],
            json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
        );
        assert_eq!(first_schema["properties"]["spec"]["type"], "object");
    }
}

// === structural schemas ===

/// Keys Kubernetes' `JSONSchemaProps` knows; anything else would be dropped silently.
const KNOWN_KEYS: [&str; 42] = [
    "$ref",
    "$schema",
    "additionalItems",
    "additionalProperties",
    "allOf",
    "anyOf",
    "default",
    "definitions",
    "dependencies",
    "description",
    "enum",
    "example",
    "exclusiveMaximum",
    "exclusiveMinimum",
    "externalDocs",
    "format",
    "id",
    "items",
    "maxItems",
    "maxLength",
    "maxProperties",
    "maximum",
    "minItems",
    "minLength",
    "minProperties",
    "minimum",
    "multipleOf",
    "not",
    "nullable",
    "oneOf",
    "pattern",
    "patternProperties",
    "properties",
    "required",
    "title",
    "type",
    "uniqueItems",
    "x-kubernetes-embedded-resource",
    "x-kubernetes-int-or-string",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-list-type",
    "x-kubernetes-map-type",
];
const MORE_KNOWN_KEYS: [&str; 2] = ["x-kubernetes-preserve-unknown-fields", "x-kubernetes-validations"];

/// Keys the CRD API rejects outright (apiextensions validation of a v1 schema).
const UNSUPPORTED_KEYS: [&str; 7] =
    ["$ref", "$schema", "id", "definitions", "dependencies", "additionalItems", "patternProperties"];

/// Keys that make a schema under `allOf`/`anyOf`/`oneOf`/`not` non-structural.
const FORBIDDEN_IN_JUNCTORS: [&str; 13] = [
    "type",
    "description",
    "title",
    "default",
    "nullable",
    "additionalProperties",
    "externalDocs",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-embedded-resource",
    "x-kubernetes-int-or-string",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-list-type",
    "x-kubernetes-map-type",
];

const TYPES: [&str; 6] = ["object", "array", "string", "integer", "number", "boolean"];

#[derive(Clone, Copy, PartialEq)]
enum Level {
    Root,
    Item,
    Field,
}

/// Every reason `schema` is not a structural schema that the CRD API admits, following
/// apiextensions-apiserver's `ValidateStructural` (invariants and completeness) and
/// `ValidateCustomResourceDefinitionOpenAPISchema`.
fn structural_errors(schema: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    check_structural(schema, Level::Root, "openAPIV3Schema", &mut errors);
    errors
}

fn check_structural(schema: &Value, level: Level, path: &str, errors: &mut Vec<String>) {
    let Some(node) = schema.as_object() else {
        errors.push(format!("{path}: a schema must be an object, not {schema}"));
        return;
    };
    check_keys(node, path, errors);
    let int_or_string = node.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    let preserve_unknown = node.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    match node.get("type") {
        None if !int_or_string && !preserve_unknown => errors.push(format!(
            "{path}.type: must not be empty {}",
            match level {
                Level::Root => "at the root",
                Level::Item => "for specified array items",
                Level::Field => "for specified object fields",
            }
        )),
        None => {}
        Some(Value::String(t)) if TYPES.contains(&t.as_str()) => {
            if level == Level::Root && t != "object" {
                errors.push(format!("{path}.type: must be object at the root"));
            }
            if t == "array" && !node.contains_key("items") {
                errors.push(format!("{path}.items: must be specified for an array"));
            }
        }
        Some(t) => errors.push(format!("{path}.type: {t} is not one of {TYPES:?} (null is `nullable`)")),
    }
    if int_or_string && preserve_unknown {
        errors.push(format!(
            "{path}: x-kubernetes-preserve-unknown-fields must be false with x-kubernetes-int-or-string"
        ));
    }
    if node.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(false)) {
        errors.push(format!("{path}.x-kubernetes-preserve-unknown-fields: false is forbidden"));
    }
    if let Some(additional) = node.get("additionalProperties") {
        if level == Level::Root {
            errors.push(format!("{path}.additionalProperties: must not be used at the root"));
        }
        let has_properties = node.get("properties").and_then(Value::as_object).is_some_and(|p| !p.is_empty());
        if has_properties && additional != &Value::Bool(true) {
            errors
                .push(format!("{path}.additionalProperties: additionalProperties and properties are mutual exclusive"));
        }
        if additional.is_object() {
            check_structural(additional, Level::Field, &format!("{path}.additionalProperties"), errors);
        }
    }
    if let Some(properties) = node.get("properties") {
        match properties.as_object() {
            Some(properties) => {
                for (name, property) in properties {
                    check_structural(property, Level::Field, &format!("{path}.properties[{name}]"), errors);
                }
                if level == Level::Root {
                    for meta in ["apiVersion", "kind"] {
                        if properties.get(meta).is_some_and(|p| p.get("type") != Some(&json!("string"))) {
                            errors.push(format!("{path}.properties[{meta}].type: must be string"));
                        }
                    }
                    if let Some(metadata) = properties.get("metadata") {
                        let allowed = metadata
                            .get("properties")
                            .and_then(Value::as_object)
                            .is_none_or(|p| p.keys().all(|k| k == "name" || k == "generateName"));
                        if !allowed {
                            errors.push(format!(
                                "{path}.properties[metadata]: only name and generateName may be restricted"
                            ));
                        }
                    }
                }
            }
            None => errors.push(format!("{path}.properties: must be an object")),
        }
    }
    match node.get("items") {
        Some(items @ Value::Object(_)) => check_structural(items, Level::Item, &format!("{path}.items"), errors),
        Some(_) => errors.push(format!("{path}.items: must be a schema object and not an array")),
        None => {}
    }
    // Value validations: the junctors hold constraints only, over fields declared above.
    let int_or_string_any_of = node.get("anyOf") == Some(&json!([{"type": "integer"}, {"type": "string"}]));
    for junctor in ["allOf", "anyOf", "oneOf"] {
        if junctor == "anyOf" && int_or_string_any_of {
            continue;
        }
        if let Some(branches) = node.get(junctor) {
            let Some(branches) = branches.as_array() else {
                errors.push(format!("{path}.{junctor}: must be an array"));
                continue;
            };
            for (i, branch) in branches.iter().enumerate() {
                check_junctor(branch, schema, &format!("{path}.{junctor}[{i}]"), errors);
            }
        }
    }
    if let Some(not) = node.get("not") {
        check_junctor(not, schema, &format!("{path}.not"), errors);
    }
}

/// Keys every schema node (structural or under a junctor) is checked for.
fn check_keys(node: &serde_json::Map<String, Value>, path: &str, errors: &mut Vec<String>) {
    for key in node.keys() {
        if !KNOWN_KEYS.contains(&key.as_str()) && !MORE_KNOWN_KEYS.contains(&key.as_str()) {
            errors.push(format!("{path}.{key}: not a JSONSchemaProps field (it would be dropped)"));
        }
        if UNSUPPORTED_KEYS.contains(&key.as_str()) {
            errors.push(format!("{path}.{key}: not supported in a CRD schema"));
        }
    }
    if node.get("uniqueItems") == Some(&Value::Bool(true)) {
        errors.push(format!("{path}.uniqueItems: cannot be true"));
    }
    if node.contains_key("default") {
        errors.push(format!("{path}.default: meshflow's CRDs set no defaults (the API server would store them)"));
    }
}

/// A schema under `allOf`/`anyOf`/`oneOf`/`not`, checked against `declared`, the structural
/// schema at the same position (every field or item it names must be declared there).
fn check_junctor(branch: &Value, declared: &Value, path: &str, errors: &mut Vec<String>) {
    let Some(node) = branch.as_object() else {
        errors.push(format!("{path}: a schema must be an object, not {branch}"));
        return;
    };
    check_keys(node, path, errors);
    for key in FORBIDDEN_IN_JUNCTORS {
        if node.contains_key(key) {
            errors.push(format!("{path}.{key}: must be empty to be structural"));
        }
    }
    if node.contains_key("x-kubernetes-validations") {
        errors.push(format!("{path}.x-kubernetes-validations: must be empty to be structural"));
    }
    if let Some(properties) = node.get("properties").and_then(Value::as_object) {
        if properties.contains_key("metadata") {
            errors.push(format!("{path}.properties[metadata]: must not be specified in a nested context"));
        }
        for (name, property) in properties {
            let sub_path = format!("{path}.properties[{name}]");
            match declared.get("properties").and_then(|p| p.get(name)) {
                Some(declared) => check_junctor(property, declared, &sub_path, errors),
                None => errors.push(format!("{sub_path}: not declared outside the junctor")),
            }
        }
    }
    if let Some(items) = node.get("items") {
        match declared.get("items") {
            Some(declared) => check_junctor(items, declared, &format!("{path}.items"), errors),
            None => errors.push(format!("{path}.items: not declared outside the junctor")),
        }
    }
    for junctor in ["allOf", "anyOf", "oneOf"] {
        for (i, nested) in node.get(junctor).and_then(Value::as_array).into_iter().flatten().enumerate() {
            check_junctor(nested, declared, &format!("{path}.{junctor}[{i}]"), errors);
        }
    }
    if let Some(not) = node.get("not") {
        check_junctor(not, declared, &format!("{path}.not"), errors);
    }
}

fn schema_of(crd: &CustomResourceDefinition, version: &str) -> Value {
    let version = crd.spec.versions.iter().find(|v| v.name == version).expect("version exists");
    let schema = version.schema.as_ref().and_then(|s| s.open_api_v3_schema.as_ref()).expect("version has a schema");
    serde_json::to_value(schema).expect("JSONSchemaProps serializes")
}

#[test]
fn every_crd_schema_is_structural() {
    let mut nodes = 0;
    for crd in crds::crds() {
        for version in &crd.spec.versions {
            let schema = schema_of(&crd, &version.name);
            let errors = structural_errors(&schema);
            assert!(
                errors.is_empty(),
                "{} {} is not structural:\n  {}",
                crd.spec.names.kind,
                version.name,
                errors.join("\n  ")
            );
            nodes += count_nodes(&schema);
        }
    }
    assert!(nodes > 1000, "only {nodes} schema nodes checked");
}

fn count_nodes(value: &Value) -> usize {
    match value {
        Value::Object(map) => 1 + map.values().map(count_nodes).sum::<usize>(),
        Value::Array(items) => items.iter().map(count_nodes).sum(),
        _ => 0,
    }
}

#[test]
fn the_structural_checker_catches_what_kubernetes_rejects() {
    let bad = [
        (json!({"type": "object", "properties": {"a": {"description": "no type"}}}), "must not be empty"),
        (json!({"type": "object", "properties": {"a": {"$ref": "#/definitions/A"}}}), "$ref"),
        (
            json!({"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {"type": "string"}}, "additionalProperties": false}}}),
            "mutual exclusive",
        ),
        (
            json!({"type": "object", "properties": {"a": {"type": "string", "oneOf": [{"type": "string"}]}}}),
            "oneOf[0].type",
        ),
        (
            json!({"type": "object", "properties": {"a": {"type": "object", "oneOf": [{"properties": {"b": {}}}]}}}),
            "not declared",
        ),
        (json!({"type": "object", "properties": {"a": {"type": ["string", "null"]}}}), "not one of"),
        (
            json!({"type": "object", "properties": {"a": {"type": "string", "const": "x"}}}),
            "not a JSONSchemaProps field",
        ),
        (json!({"type": "object", "properties": {"a": {"type": "array"}}}), "items: must be specified"),
        (json!({"type": "object", "additionalProperties": {"type": "string"}}), "at the root"),
    ];
    for (schema, expected) in bad {
        let errors = structural_errors(&schema);
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "{schema}: expected an error containing {expected:?}, got {errors:?}"
        );
    }
    let int_or_string = json!({"type": "object", "properties": {"a": {"x-kubernetes-int-or-string": true, "anyOf": [{"type": "integer"}, {"type": "string"}]}}});
    assert_eq!(structural_errors(&int_or_string), Vec::<String>::new());
}

// === the corpus against the schemas ===

/// The OpenAPI v3 schema as a JSON Schema (draft 4) validator reads it: `nullable` becomes a
/// `null` type, Kubernetes extensions go (they do not constrain values: int-or-string keeps its
/// `anyOf`, preserve-unknown-fields only affects pruning, which [`prune`] does).
fn to_json_schema(schema: &Value) -> Value {
    match schema {
        Value::Object(node) => {
            let mut out = serde_json::Map::new();
            for (key, value) in node {
                match key.as_str() {
                    "nullable" | "format" => {}
                    k if k.starts_with("x-kubernetes-") => {}
                    "properties" => {
                        let properties = value.as_object().expect("properties is an object");
                        let converted = properties.iter().map(|(k, v)| (k.clone(), to_json_schema(v))).collect();
                        out.insert(key.clone(), Value::Object(converted));
                    }
                    "description" | "required" | "enum" | "type" => {
                        out.insert(key.clone(), value.clone());
                    }
                    _ => {
                        out.insert(key.clone(), to_json_schema(value));
                    }
                }
            }
            if node.get("nullable") == Some(&Value::Bool(true)) {
                if let Some(Value::String(t)) = out.get("type").cloned() {
                    out.insert("type".into(), json!([t, "null"]));
                }
                if let Some(Value::Array(values)) = out.get_mut("enum") {
                    values.push(Value::Null);
                }
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(to_json_schema).collect()),
        other => other.clone(),
    }
}

/// What the API server does to a custom resource before validating it: unknown fields are
/// pruned (each is reported in `pruned` as a path) and `null`s of non-nullable fields are
/// dropped. `apiVersion`, `kind` and `metadata` at the root are the server's own business.
fn prune(value: &mut Value, schema: &Value, path: &str, root: bool, pruned: &mut Vec<String>) {
    let preserve_unknown = schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    match value {
        Value::Object(map) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            if properties.is_none() && additional.is_none() && preserve_unknown {
                return;
            }
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                if root && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                let child_path = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                let child_schema = properties.and_then(|p| p.get(&key)).or(additional);
                let Some(child_schema) = child_schema else {
                    if !preserve_unknown {
                        map.remove(&key);
                        pruned.push(child_path);
                    }
                    continue;
                };
                let child = map.get_mut(&key).expect("key listed above");
                if child.is_null() {
                    if child_schema.get("nullable") != Some(&Value::Bool(true)) {
                        map.remove(&key);
                    }
                    continue;
                }
                prune(child, child_schema, &child_path, false, pruned);
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    prune(item, item_schema, &format!("{path}[{i}]"), false, pruned);
                }
            }
        }
        _ => {}
    }
}

struct Schemas {
    /// (kind, version) → (the CRD's openAPIV3Schema, its JSON Schema validator)
    by_kind_version: BTreeMap<(String, String), (Value, jsonschema::Validator)>,
}

impl Schemas {
    fn new() -> Self {
        let mut by_kind_version = BTreeMap::new();
        for crd in crds::crds() {
            for version in &crd.spec.versions {
                let schema = schema_of(&crd, &version.name);
                let validator = jsonschema::draft4::new(&to_json_schema(&schema)).unwrap_or_else(|e| {
                    panic!("{} {}: not a valid JSON Schema: {e}", crd.spec.names.kind, version.name)
                });
                by_kind_version.insert((crd.spec.names.kind.clone(), version.name.clone()), (schema, validator));
            }
        }
        Schemas { by_kind_version }
    }

    /// `None` when the document is not of a kind these CRDs define.
    fn get(&self, doc: &Value) -> Option<Result<&(Value, jsonschema::Validator), String>> {
        let api_version = doc["apiVersion"].as_str().unwrap_or("");
        let kind = doc["kind"].as_str().unwrap_or("");
        let version = api_version.strip_prefix("networking.istio.io/")?;
        if !["Gateway", "VirtualService", "DestinationRule", "ServiceEntry"].contains(&kind) {
            return None;
        }
        Some(
            self.by_kind_version
                .get(&(kind.to_string(), version.to_string()))
                .ok_or_else(|| format!("{api_version} {kind} is not served")),
        )
    }

    /// Admits `doc` as the API server would: the unknown fields it would prune, then the
    /// validation errors of what is left.
    fn admit(&self, doc: &Value) -> Option<(Vec<String>, Vec<String>)> {
        let (schema, validator) = match self.get(doc)? {
            Ok(found) => found,
            Err(e) => return Some((Vec::new(), vec![e])),
        };
        let mut pruned_doc = doc.clone();
        let mut pruned = Vec::new();
        prune(&mut pruned_doc, schema, "", true, &mut pruned);
        let invalid = validator.iter_errors(&pruned_doc).map(|e| format!("{}: {e}", e.instance_path())).collect();
        Some((pruned, invalid))
    }
}

fn corpus_files() -> Vec<PathBuf> {
    let dir = Path::new(CORPUS);
    assert!(
        dir.is_dir(),
        "corpus directory {CORPUS} is missing: the shared corpus must be checked out next to this crate"
    );
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {CORPUS}: {e}"))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_valid_corpus_document_is_admitted_by_its_versions_schema_with_nothing_pruned() {
    let schemas = Schemas::new();
    let mut checked: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    for path in corpus_files() {
        let file = path.file_name().and_then(|n| n.to_str()).expect("utf-8 file name").to_string();
        if file.starts_with("invalid-") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        for (index, document) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
            let doc = Value::deserialize(document).unwrap_or_else(|e| panic!("{file} document {index}: {e}"));
            let Some((pruned, invalid)) = schemas.admit(&doc) else {
                continue;
            };
            *checked
                .entry(format!("{} {}", doc["apiVersion"].as_str().unwrap_or(""), doc["kind"].as_str().unwrap_or("")))
                .or_default() += 1;
            if !pruned.is_empty() {
                failures.push(format!("{file} document {index}: the API server would prune {pruned:?}"));
            }
            if !invalid.is_empty() {
                failures.push(format!("{file} document {index}: rejected by the schema: {invalid:?}"));
            }
        }
    }
    let total: usize = checked.values().sum();
    eprintln!("checked {total} corpus documents against the CRD schemas: {checked:?}");
    assert!(failures.is_empty(), "{} corpus failures:\n{}", failures.len(), failures.join("\n"));
    assert!(total >= 60, "only {total} Istio documents checked in {CORPUS}; expected at least 60");
    for kind in ["Gateway", "VirtualService", "DestinationRule", "ServiceEntry"] {
        assert!(checked.keys().any(|k| k.ends_with(&format!(" {kind}"))), "no {kind} checked: {checked:?}");
    }
    for version in ["v1alpha3", "v1"] {
        assert!(checked.keys().any(|k| k.contains(&format!("/{version} "))), "no {version} document checked");
    }
}

// === what the schemas reject ===

fn virtual_service(spec: Value) -> Value {
    json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "reviews"}, "spec": spec})
}

fn admitted(doc: &Value) -> (Vec<String>, Vec<String>) {
    Schemas::new().admit(doc).expect("an Istio networking document")
}

#[test]
fn a_wrong_type_fails_validation() {
    let (pruned, invalid) = admitted(&virtual_service(json!({"hosts": 5})));
    assert!(pruned.is_empty(), "{pruned:?}");
    assert!(invalid.iter().any(|e| e.starts_with("/spec/hosts")), "{invalid:?}");

    let weight = json!({"hosts": ["r"], "http": [{"route": [{"destination": {"host": "r"}, "weight": "half"}]}]});
    let (_, invalid) = admitted(&virtual_service(weight));
    assert!(invalid.iter().any(|e| e.starts_with("/spec/http/0/route/0/weight")), "{invalid:?}");

    let se = json!({"apiVersion": "networking.istio.io/v1alpha3", "kind": "ServiceEntry", "metadata": {"name": "x"},
                    "spec": {"hosts": ["a.example.com"], "resolution": "DNZ"}});
    let (_, invalid) = admitted(&se);
    assert!(invalid.iter().any(|e| e.starts_with("/spec/resolution")), "{invalid:?}");

    let missing_host = json!({"apiVersion": "networking.istio.io/v1beta1", "kind": "DestinationRule", "metadata": {"name": "x"}, "spec": {}});
    let (_, invalid) = admitted(&missing_host);
    assert!(invalid.iter().any(|e| e.contains("host")), "{invalid:?}");
}

#[test]
fn string_matches_take_at_most_one_kind_of_match_and_allow_origins_exactly_one() {
    let uri = |m: Value| {
        virtual_service(
            json!({"hosts": ["r"], "http": [{"match": [{"uri": m}], "route": [{"destination": {"host": "r"}}]}]}),
        )
    };
    assert_eq!(admitted(&uri(json!({"prefix": "/a"}))), (vec![], vec![]));
    assert_eq!(admitted(&uri(json!({}))), (vec![], vec![]), "`{{}}` matches anything, as in Istio");
    let (_, invalid) = admitted(&uri(json!({"prefix": "/a", "exact": "/b"})));
    assert!(!invalid.is_empty(), "two kinds of match must be rejected");

    let headers = virtual_service(
        json!({"hosts": ["r"], "http": [{"match": [{"headers": {"x-a": {}, "x-b": {"regex": "v.*"}}}]}]}),
    );
    assert_eq!(admitted(&headers), (vec![], vec![]));

    let origins = |o: Value| virtual_service(json!({"hosts": ["r"], "http": [{"corsPolicy": {"allowOrigins": [o]}}]}));
    assert_eq!(admitted(&origins(json!({"exact": "https://a.example"}))), (vec![], vec![]));
    let (_, invalid) = admitted(&origins(json!({})));
    assert!(!invalid.is_empty(), "an allowOrigins entry needs one match (meshflow decodes exactly one)");
}

#[test]
fn fields_istio_allows_one_of_at_most_are_checked_as_istios_crd_does() {
    let abort = |a: Value| virtual_service(json!({"hosts": ["r"], "http": [{"fault": {"abort": a}}]}));
    assert_eq!(admitted(&abort(json!({"httpStatus": 503, "percentage": {"value": 1.5}}))), (vec![], vec![]));
    assert_eq!(admitted(&abort(json!({"percentage": {"value": 1.5}}))), (vec![], vec![]));
    let (_, invalid) = admitted(&abort(json!({"httpStatus": 503, "grpcStatus": "UNAVAILABLE"})));
    assert!(invalid.iter().any(|e| e.starts_with("/spec/http/0/fault/abort")), "{invalid:?}");

    let lb = json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": "x"},
                    "spec": {"host": "r", "trafficPolicy": {"loadBalancer": {"simple": "RANDOM", "consistentHash": {"useSourceIp": true}}}}});
    let (_, invalid) = admitted(&lb);
    assert!(invalid.iter().any(|e| e.starts_with("/spec/trafficPolicy/loadBalancer")), "{invalid:?}");
}

#[test]
fn an_unknown_spec_field_would_be_pruned() {
    let doc = virtual_service(
        json!({"hosts": ["r"], "hostz": ["typo"], "http": [{"route": [{"destination": {"host": "r", "subsett": "v1"}}]}]}),
    );
    let (pruned, invalid) = admitted(&doc);
    assert_eq!(pruned, ["spec.hostz", "spec.http[0].route[0].destination.subsett"]);
    assert!(invalid.is_empty(), "{invalid:?}");

    // Status and map values are not pruned; the deprecated `mirror_percent` spelling is kept.
    let doc = json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "x"},
                     "spec": {"hosts": ["r"], "http": [{"mirror_percent": 5, "headers": {"request": {"set": {"x-any": "1"}}}}]},
                     "status": {"anything": {"goes": true}}});
    assert_eq!(admitted(&doc), (vec![], vec![]));
}
