//! Golden translations: Istio YAML in, Envoy resources out, as JSON a person reviews.
//!
//! Each case is a directory `tests/golden/<case>/` with `input.yaml` (Kubernetes and Istio
//! objects, multi-document, as a config directory holds them) and `expected.json`: every
//! resource meshflow serves for that input, keyed `"<type> <name>"`, rendered with Envoy's own
//! field names (as `/config_dump` writes them). Each expected file was checked field by field
//! against Istio's and Envoy's documentation when it was written (the case's `README.md`
//! says what was checked); it changes only on purpose:
//! `MESHFLOW_REGENERATE_GOLDEN=1 cargo test --test it golden::` rewrites them, and the diff is
//! reviewed like code.
//!
//! A case may add `proxies.yaml`: the classes of connected proxies (see [`proxy_classes`]), for
//! output that exists per class (a gateway's listeners, route configs and Secrets).
//!
//! The translation is the engine's (the dataflow, fed the case's objects), which the
//! incremental test holds equal to the reference translator.

use crate::support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use meshflow::engine::{Command, Engine, EngineOutput};
use meshflow::model::k8s::Labels;
use meshflow::model::proxy::{ProxyClass, ProxyKind};
use meshflow::model::{InputEvent, Object};
use meshflow::source::file::load_file;
use meshflow::translate::{ResourceType, Scope};
use serde_json::Value;

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden");

fn full_name(ty: ResourceType) -> &'static str {
    match ty {
        ResourceType::Cluster => "envoy.config.cluster.v3.Cluster",
        ResourceType::ClusterLoadAssignment => "envoy.config.endpoint.v3.ClusterLoadAssignment",
        ResourceType::Listener => "envoy.config.listener.v3.Listener",
        ResourceType::RouteConfiguration => "envoy.config.route.v3.RouteConfiguration",
        ResourceType::Secret => "envoy.extensions.transport_sockets.tls.v3.Secret",
    }
}

/// Everything the engine serves for the objects of `input`, as JSON by `"<type> <name>"`.
fn translate(input: &Path) -> BTreeMap<String, Value> {
    let text = std::fs::read_to_string(input).unwrap_or_else(|e| panic!("read {}: {e}", input.display()));
    let (objects, errors) = load_file(input, &text);
    assert!(errors.is_empty(), "{}: {errors:?}", input.display());
    let mut events: Vec<InputEvent> = objects.into_values().map(InputEvent::apply).collect();
    events.extend(proxy_classes(&input.with_file_name("proxies.yaml")).into_iter().map(InputEvent::apply));
    let (tx, rx) = crossbeam_channel::unbounded();
    let engine = Engine::start(move |o| {
        if let EngineOutput::Delta(d) = o {
            let _ = tx.send(d);
        }
    });
    engine.send(Command::Events(events));
    let delta = rx.recv_timeout(Duration::from_secs(60)).expect("the engine answers");
    delta
        .changes
        .into_iter()
        .map(|c| {
            let body = c.body.expect("a first translation only adds");
            // Resources of every proxy or every sidecar by type and name; a proxy class's
            // resources with the class after `@`.
            let key = match &c.scope {
                Scope::All | Scope::Sidecars | Scope::Captured => format!("{} {}", c.ty.short(), c.name),
                Scope::Class(_)
                | Scope::Namespace(_)
                | Scope::SidecarsIn(_)
                | Scope::Proxyless
                | Scope::Locality(_)
                | Scope::LocalityIn(..)
                | Scope::Prioritized(..)
                | Scope::PrioritizedIn(..) => {
                    format!("{} {} @{}", c.ty.short(), c.name, c.scope)
                }
            };
            (key, support::json::to_json(full_name(c.ty), &body))
        })
        .collect()
}

/// The connected proxies of a case, from its optional `proxies.yaml`: a list of
/// `{kind: sidecar|router, namespace: NS, labels: {k: v}}`, each the class of a proxy that
/// gave those labels in its node metadata (class-scoped output exists only for classes of
/// connected proxies).
fn proxy_classes(path: &Path) -> Vec<Object> {
    #[derive(serde::Deserialize)]
    struct Proxy {
        kind: String,
        namespace: String,
        #[serde(default)]
        labels: BTreeMap<String, String>,
    }
    let Ok(text) = std::fs::read_to_string(path) else { return Vec::new() };
    let proxies: Vec<Proxy> = serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    proxies
        .into_iter()
        .map(|p| {
            let kind = match p.kind.as_str() {
                "sidecar" => ProxyKind::Sidecar,
                "router" => ProxyKind::Router,
                other => panic!("{}: kind {other:?} is neither sidecar nor router", path.display()),
            };
            Object::ProxyClass(ProxyClass::of_proxy(kind, &p.namespace, "", Some(Labels::from(p.labels))))
        })
        .collect()
}

fn cases() -> Vec<PathBuf> {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(GOLDEN)
        .expect("tests/golden")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.join("input.yaml").is_file())
        .collect();
    cases.sort();
    cases
}

#[test]
fn translations_equal_the_reviewed_golden_files() {
    let regenerate = std::env::var_os("MESHFLOW_REGENERATE_GOLDEN").is_some();
    let cases = cases();
    assert!(!cases.is_empty(), "no golden cases under {GOLDEN}");
    let mut failures = Vec::new();
    for case in cases {
        let got = translate(&case.join("input.yaml"));
        let expected_path = case.join("expected.json");
        let rendered = serde_json::to_string_pretty(&got).expect("JSON") + "\n";
        if regenerate {
            std::fs::write(&expected_path, &rendered).expect("write expected.json");
            continue;
        }
        let expected: BTreeMap<String, Value> = match std::fs::read_to_string(&expected_path) {
            Ok(text) => serde_json::from_str(&text).expect("expected.json is JSON"),
            Err(e) => {
                panic!("{}: {e} (write it with MESHFLOW_REGENERATE_GOLDEN=1, then review it)", expected_path.display())
            }
        };
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        for key in expected.keys().chain(got.keys()).collect::<std::collections::BTreeSet<_>>() {
            match (expected.get(key), got.get(key)) {
                (Some(e), Some(g)) if e == g => {}
                (Some(e), Some(g)) => failures.push(format!(
                    "{name}: {key} differs\n--- expected\n{}\n+++ got\n{}",
                    serde_json::to_string_pretty(e).unwrap(),
                    serde_json::to_string_pretty(g).unwrap()
                )),
                (Some(_), None) => failures.push(format!("{name}: {key} is no longer served")),
                (None, _) => failures.push(format!("{name}: {key} is new")),
            }
        }
    }
    assert!(failures.is_empty(), "{} golden differences:\n{}", failures.len(), failures.join("\n\n"));
}
