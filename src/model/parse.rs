//! One document, as a user writes it for `kubectl apply`, into validated [`Object`]s.

use serde_json::Value;

use super::{FieldError, Kind, Object, istio, k8s};

/// What one document (or one item of a `List`) turned into.
#[derive(Debug)]
pub enum ParseOutcome {
    Object(Object),
    /// A kind meshflow does not read (Deployment, ServiceAccount, ...): skipped, not an error.
    Skipped {
        api_version: String,
        kind: String,
    },
    /// The document is malformed or fails validation. `what` names the object as far as it
    /// could be read (`DestinationRule default/productpage`, or `items[2]`).
    Rejected {
        what: String,
        errors: Vec<FieldError>,
    },
}

const ISTIO_VERSIONS: [&str; 3] =
    ["networking.istio.io/v1", "networking.istio.io/v1beta1", "networking.istio.io/v1alpha3"];

fn known_kind(api_version: &str, kind: &str) -> Option<Result<Kind, String>> {
    let (k, expected): (Kind, &[&str]) = match kind {
        "Service" => (Kind::Service, &["v1"]),
        "Endpoints" => (Kind::Endpoints, &["v1"]),
        "Pod" => (Kind::Pod, &["v1"]),
        "Node" => (Kind::Node, &["v1"]),
        "Namespace" => (Kind::Namespace, &["v1"]),
        "EndpointSlice" => (Kind::EndpointSlice, &["discovery.k8s.io/v1"]),
        "Gateway" if api_version.starts_with("networking.istio.io/") => (Kind::Gateway, &ISTIO_VERSIONS),
        "VirtualService" => (Kind::VirtualService, &ISTIO_VERSIONS),
        "DestinationRule" => (Kind::DestinationRule, &ISTIO_VERSIONS),
        "ServiceEntry" => (Kind::ServiceEntry, &ISTIO_VERSIONS),
        "Secret" => (Kind::Secret, &["v1"]),
        _ => return None,
    };
    Some(if expected.contains(&api_version) {
        Ok(k)
    } else {
        Err(format!("unsupported apiVersion {api_version:?} for {kind}: expected one of {}", expected.join(", ")))
    })
}

/// Top-level fields each kind may carry. Anything else is rejected, as `kubectl apply`'s strict
/// validation and `istioctl validate` do.
fn allowed_top_level(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::EndpointSlice => &["apiVersion", "kind", "metadata", "addressType", "endpoints", "ports"],
        Kind::Endpoints => &["apiVersion", "kind", "metadata", "subsets"],
        Kind::Secret => &["apiVersion", "kind", "metadata", "type", "data", "stringData", "immutable"],
        _ => &["apiVersion", "kind", "metadata", "spec", "status"],
    }
}

/// Parses one document. `default_namespace` applies to namespaced objects that set none.
/// A `List` yields one outcome per item; an empty document yields nothing.
pub fn parse_document(doc: Value, default_namespace: &str) -> Vec<ParseOutcome> {
    match doc {
        Value::Null => Vec::new(),
        Value::Object(ref map)
            if map.get("kind").and_then(Value::as_str).is_some_and(|k| k == "List" || k.ends_with("List")) =>
        {
            let Some(Value::Array(items)) = map.get("items").cloned() else {
                return vec![ParseOutcome::Rejected {
                    what: "List".into(),
                    errors: vec![FieldError::new("items", "a List must have an items array")],
                }];
            };
            items
                .into_iter()
                .enumerate()
                .flat_map(|(i, item)| {
                    parse_document(item, default_namespace).into_iter().map(move |o| match o {
                        ParseOutcome::Rejected { what, errors } => {
                            ParseOutcome::Rejected { what: format!("items[{i}] ({what})"), errors }
                        }
                        other => other,
                    })
                })
                .collect()
        }
        Value::Object(_) => vec![parse_object(doc, default_namespace)],
        _ => vec![ParseOutcome::Rejected {
            what: "document".into(),
            errors: vec![FieldError::new("", "a document must be a mapping with apiVersion and kind")],
        }],
    }
}

fn parse_object(doc: Value, default_namespace: &str) -> ParseOutcome {
    let str_field = |f: &str| doc.get(f).and_then(Value::as_str).unwrap_or_default().to_string();
    let (api_version, kind_name) = (str_field("apiVersion"), str_field("kind"));
    let name = doc.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
    let reject = |what: String, errors: Vec<FieldError>| ParseOutcome::Rejected { what, errors };
    if api_version.is_empty() || kind_name.is_empty() {
        let field = if api_version.is_empty() { "apiVersion" } else { "kind" };
        return reject(format!("document {name:?}"), vec![FieldError::new(field, "required")]);
    }
    let kind = match known_kind(&api_version, &kind_name) {
        None => return ParseOutcome::Skipped { api_version, kind: kind_name },
        Some(Err(reason)) => {
            return reject(format!("{kind_name} {name:?}"), vec![FieldError::new("apiVersion", reason)]);
        }
        Some(Ok(kind)) => kind,
    };
    let namespace = if kind.is_namespaced() {
        doc.pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .unwrap_or(default_namespace)
            .to_string()
    } else {
        String::new()
    };
    let what = if namespace.is_empty() { format!("{kind} {name}") } else { format!("{kind} {namespace}/{name}") };

    let mut errors = Vec::new();
    if let Value::Object(map) = &doc {
        let allowed = allowed_top_level(kind);
        for key in map.keys().filter(|k| !allowed.contains(&k.as_str())) {
            errors.push(FieldError::new(key.clone(), "unknown field"));
        }
    }
    if name.is_empty() {
        errors.push(FieldError::new("metadata.name", "required (generateName is not supported)"));
    } else if let Err(reason) = check_dns_name(&name, kind) {
        errors.push(FieldError::new("metadata.name", reason));
    }
    if !errors.is_empty() {
        return reject(what, errors);
    }

    if kind == Kind::Secret {
        return match super::secret::secret_from_value(&namespace, &name, &doc) {
            Ok(Some(secret)) => ParseOutcome::Object(Object::Secret(Box::new(secret))),
            // A type meshflow does not read (service account tokens, docker configs).
            Ok(None) => ParseOutcome::Skipped { api_version, kind: kind_name },
            Err(errors) => reject(what, errors),
        };
    }
    let decoded = match kind {
        Kind::Service => {
            from_value(doc).and_then(|s| k8s::service_from(&namespace, &name, &s)).map(|o| Object::Service(Box::new(o)))
        }
        Kind::EndpointSlice => from_value(doc)
            .and_then(|s| k8s::endpoint_slice_from(&namespace, &name, &s))
            .map(|o| Object::EndpointSlice(std::sync::Arc::new(o))),
        Kind::Endpoints => from_value(doc)
            .and_then(|e| k8s::endpoints_from(&namespace, &name, &e))
            .map(|o| Object::Endpoints(Box::new(o))),
        Kind::Pod => from_value(doc).and_then(|p| k8s::pod_from(&namespace, &name, &p)).map(|p| Object::Pod(p.into())),
        Kind::Node => from_value(doc).map(|n| Object::Node(k8s::node_from(&name, &n))),
        Kind::Namespace => from_value(doc).map(|n| Object::Namespace(k8s::namespace_from(&name, &n))),
        // Proxy classes come from connected proxies, never from a document.
        Kind::ProxyClass => Err(vec![FieldError::new("kind", "ProxyClass is not a kind of document")]),
        Kind::ProxyLocality => Err(vec![FieldError::new("kind", "ProxyLocality is not a kind of document")]),
        Kind::Secret => Err(vec![FieldError::new("", "a Secret is decoded by secret_from_value")]),
        Kind::Gateway | Kind::VirtualService | Kind::DestinationRule | Kind::ServiceEntry => {
            let spec = doc.get("spec").cloned().unwrap_or(Value::Null);
            match doc.pointer("/metadata/creationTimestamp") {
                _ if spec.is_null() => Err(vec![FieldError::new("spec", "required")]),
                // `null` (as `kubectl create --dry-run -o yaml` writes it) is no time, as in Go.
                None | Some(Value::Null) => istio::decode(kind, &namespace, &name, None, spec),
                Some(Value::String(created)) => istio::decode(kind, &namespace, &name, Some(created), spec),
                Some(_) => Err(vec![FieldError::new("metadata.creationTimestamp", "must be an RFC 3339 time string")]),
            }
        }
    };
    match decoded {
        Ok(object) => ParseOutcome::Object(object),
        Err(errors) => reject(what, errors),
    }
}

fn from_value<T: serde::de::DeserializeOwned>(doc: Value) -> Result<T, Vec<FieldError>> {
    serde_json::from_value(doc).map_err(|e| vec![FieldError::new("", e.to_string())])
}

/// Kubernetes object names: DNS-1123 subdomains (lowercase alphanumerics, '-' and '.'),
/// at most 253 characters; Services and Namespaces are the stricter DNS-1123 labels
/// because they become DNS names.
fn check_dns_name(name: &str, kind: Kind) -> Result<(), String> {
    let label_only = matches!(kind, Kind::Service | Kind::Namespace);
    let max = if label_only { 63 } else { 253 };
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (c == '.' && !label_only);
    let ends_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if name.len() > max || !name.chars().all(ok_char) || !ends_ok(name.chars().next()) || !ends_ok(name.chars().last())
    {
        let what = if label_only { "DNS-1123 label" } else { "DNS-1123 subdomain" };
        return Err(format!(
            "{name:?} is not a valid {what} (lowercase letters, digits{}, '-', at most {max} characters)",
            if label_only { "" } else { ", '.'" }
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn one(doc: Value) -> ParseOutcome {
        let mut out = parse_document(doc, "default");
        assert_eq!(out.len(), 1, "{out:?}");
        out.remove(0)
    }

    #[test]
    fn service_without_namespace_lands_in_the_default_namespace() {
        let out = one(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "reviews"},
            "spec": {"selector": {"app": "reviews"}, "ports": [{"name": "http", "port": 9080}]}}));
        let ParseOutcome::Object(Object::Service(svc)) = out else { panic!("{out:?}") };
        assert_eq!(svc.namespace, "default");
        assert_eq!(svc.ports[0].target_port, k8s::TargetPort::Number(9080));
        assert_eq!(svc.selector.unwrap().get("app").map(String::as_str), Some("reviews"));
    }

    #[test]
    fn unknown_kinds_are_skipped_not_rejected() {
        let out = one(json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}}));
        assert!(matches!(out, ParseOutcome::Skipped { ref kind, .. } if kind == "Deployment"), "{out:?}");
    }

    #[test]
    fn unknown_top_level_field_is_rejected_with_its_name() {
        let out = one(json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "productpage"}, "unexpected_junk": {"still_more_junk": null},
            "spec": {"host": "productpage"}}));
        let ParseOutcome::Rejected { what, errors } = out else { panic!("{out:?}") };
        assert_eq!(what, "DestinationRule default/productpage");
        assert_eq!(errors, vec![FieldError::new("unexpected_junk", "unknown field")]);
    }

    #[test]
    fn list_items_are_unpacked_and_a_bad_item_names_its_index() {
        let out = parse_document(
            json!({"apiVersion": "v1", "kind": "List", "items": [
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a"}},
                {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "b"}, "spec": {"ports": [{"port": 70000}]}},
            ]}),
            "default",
        );
        assert!(matches!(out[0], ParseOutcome::Object(Object::Namespace(_))), "{out:?}");
        let ParseOutcome::Rejected { what, errors } = &out[1] else { panic!("{out:?}") };
        assert_eq!(what, "items[1] (Service default/b)");
        assert_eq!(errors[0].field, "spec.ports[0].port");
    }

    #[test]
    fn endpoint_slice_reads_service_label_ports_and_readiness() {
        let out = one(json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "reviews-abc", "labels": {"kubernetes.io/service-name": "reviews"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 9080, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.0.0.1"]},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": false}},
                {"addresses": ["10.0.0.3"], "conditions": {"terminating": true}}]}));
        let ParseOutcome::Object(Object::EndpointSlice(s)) = out else { panic!("{out:?}") };
        assert_eq!(s.service_name.as_deref(), Some("reviews"));
        assert_eq!(
            s.ports,
            vec![k8s::SlicePort { name: "http".into(), port: Some(9080), protocol: k8s::Protocol::Tcp }]
        );
        let ready: Vec<bool> = s.endpoints.iter().map(|e| e.ready).collect();
        assert_eq!(ready, vec![true, false, false]);
    }

    #[test]
    fn bad_address_in_endpoint_slice_is_reported_with_its_path() {
        let out = one(json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "s"}, "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.0.0.1", "not-an-ip"]}]}));
        let ParseOutcome::Rejected { errors, .. } = out else { panic!("{out:?}") };
        assert_eq!(errors[0].field, "endpoints[0].addresses[1]");
    }

    #[test]
    fn pod_readiness_follows_the_ready_condition_and_deletion() {
        let pod = |extra_meta: Value, cond: &str| {
            let mut meta = json!({"name": "p", "labels": {"app": "x"}});
            meta.as_object_mut().unwrap().extend(extra_meta.as_object().unwrap().clone());
            one(json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta,
                "spec": {"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
                "status": {"podIP": "10.1.1.1", "conditions": [{"type": "Ready", "status": cond}]}}))
        };
        let ParseOutcome::Object(Object::Pod(ready)) = pod(json!({}), "True") else { panic!() };
        assert!(ready.serves(false));
        assert_eq!(ready.resolve_target_port(&k8s::TargetPort::Name("http".into()), k8s::Protocol::Tcp), Some(8080));
        let ParseOutcome::Object(Object::Pod(unready)) = pod(json!({}), "False") else { panic!() };
        assert!(!unready.serves(false) && unready.serves(true));
        let ParseOutcome::Object(Object::Pod(deleting)) =
            pod(json!({"deletionTimestamp": "2026-01-01T00:00:00Z"}), "True")
        else {
            panic!()
        };
        assert!(!deleting.serves(true));
    }

    #[test]
    fn wrong_api_version_for_a_known_kind_is_rejected() {
        let out =
            one(json!({"apiVersion": "discovery.k8s.io/v1beta1", "kind": "EndpointSlice", "metadata": {"name": "s"}}));
        let ParseOutcome::Rejected { errors, .. } = out else { panic!("{out:?}") };
        assert_eq!(errors[0].field, "apiVersion");
    }

    #[test]
    fn invalid_service_name_is_rejected() {
        let out = one(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "Bad_Name"}, "spec": {}}));
        let ParseOutcome::Rejected { errors, .. } = out else { panic!("{out:?}") };
        assert_eq!(errors[0].field, "metadata.name");
    }

    fn gateway_created(created: Value) -> ParseOutcome {
        one(json!({"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
            "metadata": {"name": "gw", "creationTimestamp": created},
            "spec": {"servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}]}}))
    }

    #[test]
    fn istio_objects_keep_their_creation_timestamp() {
        let out = gateway_created(json!("2024-01-02T03:04:05Z"));
        let ParseOutcome::Object(Object::Gateway(gw)) = out else { panic!("{out:?}") };
        assert_eq!(gw.creation_timestamp.as_deref(), Some("2024-01-02T03:04:05Z"));
        // As YAML gives it: an unquoted timestamp is a string.
        let doc: Value = serde_yaml_ng::from_str(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: r\n  \
             creationTimestamp: 2024-01-02T03:04:05Z\nspec:\n  host: reviews\n",
        )
        .unwrap();
        let out = one(doc);
        let ParseOutcome::Object(Object::DestinationRule(rule)) = out else { panic!("{out:?}") };
        assert_eq!(rule.creation_timestamp.as_deref(), Some("2024-01-02T03:04:05Z"));
    }

    #[test]
    fn null_creation_timestamp_is_no_timestamp() {
        let out = gateway_created(Value::Null);
        let ParseOutcome::Object(Object::Gateway(gw)) = out else { panic!("{out:?}") };
        assert_eq!(gw.creation_timestamp, None);
    }

    #[test]
    fn malformed_creation_timestamp_is_rejected() {
        for created in [json!("2024-01-02"), json!(1_704_164_645), json!("")] {
            let out = gateway_created(created);
            let ParseOutcome::Rejected { errors, .. } = out else { panic!("{out:?}") };
            assert_eq!(errors[0].field, "metadata.creationTimestamp", "{errors:?}");
        }
    }
}
