//! Who the proxy is: from `--node-id`, or, as Istio's pilot-agent does, from the pod's
//! environment, so that one container spec serves every pod of a deployment.
//!
//! | variable | becomes |
//! | --- | --- |
//! | `POD_NAME`, `POD_NAMESPACE`, `INSTANCE_IP` | node id `sidecar~<ip>~<pod>.<ns>~<ns>.svc.cluster.local` |
//! | `ISTIO_META_<KEY>=v` | node metadata `<KEY>: "v"` |
//! | `ISTIO_METAJSON_<KEY>=<json>` | node metadata `<KEY>: <json>`; `ISTIO_METAJSON_LABELS` (an object of strings) gives `LABELS` |
//!
//! A `--node-id` flag wins over the three identity variables; the metadata variables apply
//! either way.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::{Map, Value};

use crate::xds::node::{NodeId, ProxyType};

pub const POD_NAME: &str = "POD_NAME";
pub const POD_NAMESPACE: &str = "POD_NAMESPACE";
pub const INSTANCE_IP: &str = "INSTANCE_IP";
/// `ISTIO_META_<KEY>=value` → node metadata `<KEY>` = the string `value`.
pub const META_PREFIX: &str = "ISTIO_META_";
/// `ISTIO_METAJSON_<KEY>=<json>` → node metadata `<KEY>` = the parsed JSON value.
pub const META_JSON_PREFIX: &str = "ISTIO_METAJSON_";
/// The metadata key of the workload's labels (from `ISTIO_METAJSON_LABELS`).
pub const LABELS_KEY: &str = "LABELS";

/// A proxy's identity: its node id and the node metadata beyond what the bootstrap derives
/// from the node id itself.
#[derive(Clone, Debug, PartialEq)]
pub struct Identity {
    pub node_id: NodeId,
    pub metadata: Map<String, Value>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    /// Neither `--node-id` nor the complete set of identity variables.
    #[error(
        "no proxy identity: pass --node-id, or set {POD_NAME}, {POD_NAMESPACE} and {INSTANCE_IP} (missing: {})",
        .0.join(", ")
    )]
    Missing(Vec<&'static str>),
    #[error("--node-id: {0}")]
    BadNodeId(String),
    #[error("{INSTANCE_IP}={0:?} is not an IP address")]
    BadInstanceIp(String),
    /// `POD_NAME`/`POD_NAMESPACE` that cannot form an Istio node id (`~`, or a `.` in the namespace).
    #[error("{POD_NAME}={pod:?}, {POD_NAMESPACE}={namespace:?} do not form an Istio node id")]
    BadWorkload { pod: String, namespace: String },
    #[error("{var}: {reason}")]
    BadMetadata { var: String, reason: String },
}

/// The identity from `--node-id` (if given) or the environment `env`, plus the metadata the
/// environment carries. Pure: `env` is a snapshot of the variables.
pub fn resolve(
    node_id: Option<&str>,
    proxy_type: ProxyType,
    env: &BTreeMap<String, String>,
) -> Result<Identity, IdentityError> {
    let metadata = metadata_from_env(env)?;
    let node_id = match node_id {
        Some(id) => NodeId::parse(id).map_err(IdentityError::BadNodeId)?,
        None => node_id_from_env(proxy_type, env)?,
    };
    Ok(Identity { node_id, metadata })
}

fn node_id_from_env(proxy_type: ProxyType, env: &BTreeMap<String, String>) -> Result<NodeId, IdentityError> {
    let get = |k: &str| env.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    let (pod, namespace, ip) = (get(POD_NAME), get(POD_NAMESPACE), get(INSTANCE_IP));
    let (Some(pod), Some(namespace), Some(ip)) = (pod, namespace, ip) else {
        let missing = [(POD_NAME, pod), (POD_NAMESPACE, namespace), (INSTANCE_IP, ip)]
            .into_iter()
            .filter_map(|(k, v)| v.is_none().then_some(k))
            .collect();
        return Err(IdentityError::Missing(missing));
    };
    let ip: IpAddr = ip.parse().map_err(|_| IdentityError::BadInstanceIp(ip.to_string()))?;
    let node = NodeId {
        proxy_type,
        ip,
        pod: pod.to_string(),
        namespace: namespace.to_string(),
        domain: format!("{namespace}.svc.cluster.local"),
    };
    // The id must read back as itself: no `~` anywhere, no `.` in the namespace.
    if NodeId::parse(&node.to_string()).as_ref() != Ok(&node) {
        return Err(IdentityError::BadWorkload { pod: pod.to_string(), namespace: namespace.to_string() });
    }
    Ok(node)
}

fn metadata_from_env(env: &BTreeMap<String, String>) -> Result<Map<String, Value>, IdentityError> {
    let mut metadata = Map::new();
    for (var, value) in env {
        if let Some(key) = var.strip_prefix(META_PREFIX).filter(|k| !k.is_empty()) {
            metadata.insert(key.to_string(), Value::String(value.clone()));
        }
    }
    // JSON values second: `ISTIO_METAJSON_LABELS` beats a plain `ISTIO_META_LABELS`.
    for (var, value) in env {
        let Some(key) = var.strip_prefix(META_JSON_PREFIX).filter(|k| !k.is_empty()) else { continue };
        let bad = |reason: String| IdentityError::BadMetadata { var: var.clone(), reason };
        let json: Value = serde_json::from_str(value).map_err(|e| bad(format!("not JSON: {e}")))?;
        if key == LABELS_KEY {
            let labels = json.as_object().ok_or_else(|| bad("labels must be a JSON object".into()))?;
            if let Some((k, _)) = labels.iter().find(|(_, v)| !v.is_string()) {
                return Err(bad(format!("label {k:?} is not a string")));
            }
        }
        metadata.insert(key.to_string(), json);
    }
    Ok(metadata)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env(vars: &[(&str, &str)]) -> BTreeMap<String, String> {
        vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn pod_env() -> BTreeMap<String, String> {
        env(&[(POD_NAME, "reviews-v1-7d9f"), (POD_NAMESPACE, "bookinfo"), (INSTANCE_IP, "10.1.2.3")])
    }

    #[test]
    fn identity_comes_from_the_pod_environment_like_pilot_agent() {
        let id = resolve(None, ProxyType::Sidecar, &pod_env()).unwrap();
        assert_eq!(id.node_id.to_string(), "sidecar~10.1.2.3~reviews-v1-7d9f.bookinfo~bookinfo.svc.cluster.local");
        assert!(id.metadata.is_empty());
        let router = resolve(None, ProxyType::Router, &pod_env()).unwrap();
        assert_eq!(router.node_id.proxy_type, ProxyType::Router);
    }

    #[test]
    fn istio_meta_variables_become_node_metadata_with_the_prefix_stripped() {
        let mut vars = pod_env();
        vars.extend(env(&[
            ("ISTIO_META_CLUSTER_ID", "east"),
            ("ISTIO_META_MESH_ID", "mesh1"),
            ("ISTIO_METAJSON_LABELS", r#"{"app": "reviews", "version": "v1"}"#),
            ("ISTIO_METAJSON_ANNOTATIONS", r#"{"a": 1}"#),
            ("ISTIO_META_", "ignored: no key"),
            ("ISTIO_METADATA", "ignored: not the prefix"),
            ("PATH", "/usr/bin"),
        ]));
        let id = resolve(None, ProxyType::Sidecar, &vars).unwrap();
        assert_eq!(
            Value::Object(id.metadata),
            json!({
                "CLUSTER_ID": "east",
                "MESH_ID": "mesh1",
                "LABELS": {"app": "reviews", "version": "v1"},
                "ANNOTATIONS": {"a": 1},
            })
        );
    }

    #[test]
    fn node_id_flag_wins_over_the_environment_and_metadata_still_applies() {
        let mut vars = pod_env();
        vars.insert("ISTIO_META_CLUSTER_ID".into(), "west".into());
        let flag = "router~10.9.9.9~gw-1.istio-system~istio-system.svc.cluster.local";
        let id = resolve(Some(flag), ProxyType::Sidecar, &vars).unwrap();
        assert_eq!(id.node_id.to_string(), flag);
        assert_eq!(id.metadata["CLUSTER_ID"], "west");
        assert!(matches!(resolve(Some("envoy"), ProxyType::Sidecar, &vars), Err(IdentityError::BadNodeId(_))));
    }

    #[test]
    fn missing_identity_names_every_missing_variable() {
        let err =
            resolve(None, ProxyType::Sidecar, &env(&[(POD_NAMESPACE, "default"), (INSTANCE_IP, " ")])).unwrap_err();
        assert_eq!(err, IdentityError::Missing(vec![POD_NAME, INSTANCE_IP]));
        let text = err.to_string();
        assert!(text.contains("--node-id") && text.contains("missing: POD_NAME, INSTANCE_IP"), "{text}");
    }

    #[test]
    fn malformed_environment_is_rejected_with_the_variable_named() {
        let mut vars = pod_env();
        vars.insert(INSTANCE_IP.into(), "10.1.2".into());
        assert_eq!(resolve(None, ProxyType::Sidecar, &vars), Err(IdentityError::BadInstanceIp("10.1.2".into())));

        let mut vars = pod_env();
        vars.insert(POD_NAMESPACE.into(), "a.b".into());
        assert!(matches!(resolve(None, ProxyType::Sidecar, &vars), Err(IdentityError::BadWorkload { .. })));

        for (labels, reason) in
            [("app=web", "not JSON"), (r#"["app"]"#, "JSON object"), (r#"{"replicas": 3}"#, "not a string")]
        {
            let mut vars = pod_env();
            vars.insert("ISTIO_METAJSON_LABELS".into(), labels.into());
            let err = resolve(None, ProxyType::Sidecar, &vars).unwrap_err().to_string();
            assert!(err.starts_with("ISTIO_METAJSON_LABELS: ") && err.contains(reason), "{labels}: {err}");
        }
    }
}
