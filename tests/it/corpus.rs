//! Every Istio networking document of the shared corpus (`../shared/corpus/*.yaml`) goes through
//! `model::istio::decode`: the published examples decode without error, the `invalid-*` ones are
//! rejected, for the reason Istio gives.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use meshflow::model::{FieldError, Kind, istio};
use serde::Deserialize;
use serde_json::Value;

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/corpus");

/// The reason each known invalid file must be rejected with (a substring of some error).
fn expected_reason(file: &str) -> Option<&'static str> {
    match file {
        "invalid-se-duplicate-port-number.yaml" => Some("port number cannot be duplicated"),
        "invalid-se-selector-and-endpoints.yaml" => Some("only one of WorkloadSelector or Endpoints can be set"),
        _ => None,
    }
}

/// Files whose invalid part is outside `spec`, so the spec itself must decode.
fn invalid_outside_spec(file: &str) -> bool {
    // An unknown top-level field (`unexpected_junk`): the envelope parser (`model::parse`)
    // rejects it; the DestinationRule's spec is fine.
    file == "invalid-dr-unknown-top-level-field.yaml"
}

/// The message of an `# expected-error ...: "message"` comment, as the corpus writes Istio's
/// expected error for its invalid examples.
fn expected_error_comment(text: &str) -> Option<String> {
    let line = text.lines().find(|l| l.starts_with("# expected-error"))?;
    let message = line.rsplit_once(": ")?.1.trim();
    Some(message.trim_matches('"').trim_matches('\'').to_string())
}

fn istio_kind(kind: &str) -> Option<Kind> {
    match kind {
        "Gateway" => Some(Kind::Gateway),
        "VirtualService" => Some(Kind::VirtualService),
        "DestinationRule" => Some(Kind::DestinationRule),
        "ServiceEntry" => Some(Kind::ServiceEntry),
        _ => None,
    }
}

fn corpus_files() -> Vec<PathBuf> {
    let dir = Path::new(CORPUS);
    assert!(
        dir.is_dir(),
        "corpus directory {CORPUS} is missing: the shared corpus must be checked out next to this crate (../shared/corpus)"
    );
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {CORPUS}: {e}"))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    files
}

fn show(errors: &[FieldError]) -> String {
    errors.iter().map(|e| format!("\n    {e}")).collect()
}

#[test]
fn every_istio_document_in_the_corpus_decodes_unless_it_is_meant_to_be_invalid() {
    let mut decoded = 0;
    let mut skipped: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures = Vec::new();

    for path in corpus_files() {
        let file = path.file_name().and_then(|n| n.to_str()).expect("utf-8 file name").to_string();
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let meant_invalid = file.starts_with("invalid-") && !invalid_outside_spec(&file);
        let mut file_errors: Vec<FieldError> = Vec::new();

        for (index, document) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
            let doc = match Value::deserialize(document) {
                Ok(Value::Null) => continue, // an empty document (a trailing `---`)
                Ok(doc) => doc,
                Err(e) => {
                    failures.push(format!("{file} document {index}: not valid YAML: {e}"));
                    continue;
                }
            };
            let api_version = doc["apiVersion"].as_str().unwrap_or("");
            let kind_name = doc["kind"].as_str().unwrap_or("");
            let kind = istio_kind(kind_name).filter(|_| api_version.starts_with("networking.istio.io/"));
            let Some(kind) = kind else {
                *skipped.entry(format!("{api_version} {kind_name}")).or_default() += 1;
                continue;
            };
            let namespace = doc["metadata"]["namespace"].as_str().unwrap_or("default");
            let name = doc["metadata"]["name"].as_str().unwrap_or("");
            let spec = doc.get("spec").cloned().unwrap_or(Value::Null);
            decoded += 1;
            let created = doc["metadata"]["creationTimestamp"].as_str();
            match istio::decode(kind, namespace, name, created, spec) {
                Ok(object) => assert_eq!(object.kind(), kind, "{file} document {index}"),
                Err(errors) if meant_invalid => file_errors.extend(errors),
                Err(errors) => failures.push(format!(
                    "{file} document {index} ({kind} {namespace}/{name}) was rejected:{}",
                    show(&errors)
                )),
            }
        }

        if !meant_invalid {
            continue;
        }
        if file_errors.is_empty() {
            failures.push(format!("{file}: expected a rejection, but every document decoded"));
            continue;
        }
        let mut reasons: Vec<String> = expected_reason(&file).map(str::to_string).into_iter().collect();
        reasons.extend(expected_error_comment(&text));
        for reason in reasons {
            // The expected text is either a reason or `field: reason`.
            if !file_errors.iter().any(|e| e.reason.contains(&reason) || e.to_string().contains(&reason)) {
                failures.push(format!("{file}: expected an error containing {reason:?}, got:{}", show(&file_errors)));
            }
        }
    }

    let skipped_total: usize = skipped.values().sum();
    eprintln!("decoded {decoded} Istio documents; skipped {skipped_total} other documents: {skipped:?}");
    assert!(failures.is_empty(), "{} corpus failures:\n{}", failures.len(), failures.join("\n"));
    assert!(decoded >= 60, "only {decoded} Istio documents found in {CORPUS}; expected at least 60");
}

/// The whole path a user's file takes: the config-directory loader (envelope, Kubernetes
/// kinds, Istio kinds) and then translation. Valid files load with no error; each invalid
/// file is rejected with a message naming the file's object and the reason; translating
/// everything that loaded gives every Service port of the corpus its cluster.
#[test]
fn every_corpus_file_loads_through_the_config_dir_loader_and_translates() {
    use meshflow::model::Object;
    use meshflow::source::file::load_file;
    use meshflow::translate::{ResourceType, Scope, reference};

    let mut files: Vec<PathBuf> = std::fs::read_dir(CORPUS)
        .unwrap_or_else(|e| panic!("the shared corpus is expected at {CORPUS}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 80, "only {} corpus files found", files.len());
    let mut all = Vec::new();
    for path in &files {
        let name = path.file_name().unwrap().to_str().unwrap();
        let text = std::fs::read_to_string(path).unwrap();
        let (objects, errors) = load_file(path, &text);
        if name.starts_with("invalid-") {
            assert_eq!(errors.len(), 1, "{name}: exactly its one document is rejected: {errors:?}");
            let message = &errors[0].message;
            let reason = match name {
                "invalid-dr-unknown-top-level-field.yaml" => {
                    "DestinationRule default/productpage rejected: unexpected_junk: unknown field"
                }
                other => expected_reason(other).unwrap_or_else(|| panic!("{other}: no expected reason recorded")),
            };
            assert!(message.contains(reason), "{name}: {message:?} does not contain {reason:?}");
            assert!(objects.is_empty(), "{name}: nothing of it loads");
        } else {
            assert!(
                errors.is_empty(),
                "{name}: {}",
                errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n")
            );
        }
        all.extend(objects.into_values());
    }
    // Each file alone on top of the Bookinfo services (what most of the corpus routes to)
    // translates into resources that decode as the Envoy types they claim to be.
    let base: Vec<Object> = {
        let path = Path::new(CORPUS).join("bookinfo.yaml");
        load_file(&path, &std::fs::read_to_string(&path).unwrap()).0.into_values().collect()
    };
    for path in files.iter().filter(|p| !p.file_name().unwrap().to_str().unwrap().starts_with("invalid-")) {
        use envoy_types::pb::envoy::config::{cluster::v3::Cluster, endpoint::v3::ClusterLoadAssignment};
        use envoy_types::pb::envoy::config::{listener::v3::Listener, route::v3::RouteConfiguration};
        use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
        use prost::Message;
        let (objects, _) = load_file(path, &std::fs::read_to_string(path).unwrap());
        let resources = reference::translate_all(base.iter().chain(objects.values()));
        for ((_, ty, name), body) in &resources {
            let decoded = match ty {
                ResourceType::Cluster => Cluster::decode(&body[..]).map(|_| ()),
                ResourceType::ClusterLoadAssignment => ClusterLoadAssignment::decode(&body[..]).map(|_| ()),
                ResourceType::Listener => Listener::decode(&body[..]).map(|_| ()),
                ResourceType::RouteConfiguration => RouteConfiguration::decode(&body[..]).map(|_| ()),
                ResourceType::Secret => Secret::decode(&body[..]).map(|_| ()),
            };
            decoded.unwrap_or_else(|e| panic!("{}: {ty:?} {name} does not decode: {e}", path.display()));
        }
        // Every host × port of the file's ServiceEntries has its cluster (`outbound|<n>||<host>`),
        // unless a Bookinfo Service owns the host, or the entry is DYNAMIC_DNS or the port UDP
        // (reported as untranslated / not proxied).
        for o in objects.values() {
            let Object::ServiceEntry(se) = o else { continue };
            if se.spec.effective_resolution() == istio::Resolution::DynamicDns {
                continue;
            }
            for host in se.spec.hosts.iter().filter(|h| !h.ends_with(".default.svc.cluster.local")) {
                for port in se
                    .spec
                    .ports
                    .iter()
                    .filter(|p| !p.protocol.as_deref().is_some_and(|p| p.eq_ignore_ascii_case("udp")))
                {
                    let cluster = format!("outbound|{}||{host}", port.number);
                    // Exported everywhere: one cluster for all; else one per namespace it is
                    // exported to (istiod's IsServiceVisible), and none for all.
                    let exported = &se.spec.export_to;
                    let scopes: Vec<Scope> = if exported.is_empty() || exported.iter().any(|n| n == "*") {
                        vec![Scope::All]
                    } else {
                        let own = se.namespace.clone();
                        exported
                            .iter()
                            .filter(|n| *n != "~")
                            .map(|n| Scope::Namespace(if n == "." { own.clone() } else { n.clone() }))
                            .collect()
                    };
                    for scope in scopes {
                        assert!(
                            resources.contains_key(&(scope.clone(), ResourceType::Cluster, cluster.clone())),
                            "{}: {cluster} missing in {scope}",
                            path.display()
                        );
                    }
                }
            }
        }
    }

    let services: Vec<_> = all.iter().filter_map(|o| if let Object::Service(s) = o { Some(s) } else { None }).collect();
    assert!(services.len() >= 12, "{} services", services.len());
    let resources = reference::translate_all(&all);
    for s in &services {
        for p in s.ports.iter().filter(|p| p.protocol == meshflow::model::k8s::Protocol::Tcp) {
            let cluster = format!("outbound|{}||{}.{}.svc.cluster.local", p.port, s.name, s.namespace);
            assert!(resources.contains_key(&(Scope::All, ResourceType::Cluster, cluster.clone())), "{cluster} missing");
            assert!(
                resources.contains_key(&(Scope::All, ResourceType::ClusterLoadAssignment, cluster.clone())),
                "{cluster} EDS missing"
            );
        }
    }
}
