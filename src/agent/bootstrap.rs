//! Envoy's bootstrap: who the proxy is, and delta ADS to meshflow for everything else.

use std::net::{IpAddr, SocketAddr};

use serde_json::{Map, Value, json};

use crate::xds::node::{BIND_ADDRESS_KEY, NodeId};

/// Name of the bootstrap's static cluster that reaches meshflow.
pub const XDS_CLUSTER: &str = "xds-grpc";

#[derive(Clone, Debug)]
pub struct BootstrapConfig {
    pub node_id: String,
    /// meshflow's xDS address: an IP and port, or `host:port` resolved by DNS.
    pub xds_addr: String,
    pub bind_address: Option<IpAddr>,
    pub admin_port: u16,
}

/// Renders the bootstrap as YAML. The node id must be in Istio's form.
pub fn render(config: &BootstrapConfig) -> Result<String, String> {
    render_with_metadata(config, &Map::new())
}

/// [`render`], with more node metadata: the agent's `ISTIO_META_*` / `ISTIO_METAJSON_*`
/// (see [`super::identity`]). The keys the bootstrap derives from the node id and the bind
/// address (`NAME`, `NAMESPACE`, `INSTANCE_IPS`, `MESHFLOW_BIND_ADDRESS`) win over `extra`,
/// so the metadata can never contradict the node id.
pub fn render_with_metadata(config: &BootstrapConfig, extra: &Map<String, Value>) -> Result<String, String> {
    serde_yaml_ng::to_string(&bootstrap(config, extra)?).map_err(|e| e.to_string())
}

/// The bootstrap [`render_with_metadata`] writes, as a value to add to before writing.
pub fn bootstrap(config: &BootstrapConfig, extra: &Map<String, Value>) -> Result<Value, String> {
    let node = NodeId::parse(&config.node_id)?;
    let (host, port) = split_host_port(&config.xds_addr)?;
    let discovery = if host.parse::<IpAddr>().is_ok() { "STATIC" } else { "STRICT_DNS" };
    let mut metadata = extra.clone();
    metadata.insert("NAMESPACE".into(), json!(node.namespace));
    metadata.insert("NAME".into(), json!(node.pod));
    metadata.insert("INSTANCE_IPS".into(), json!(node.ip.to_string()));
    if let Some(ip) = config.bind_address {
        metadata.insert(BIND_ADDRESS_KEY.into(), json!(ip.to_string()));
    }
    let ads = json!({"ads": {}, "resource_api_version": "V3"});
    let bootstrap = json!({
        "node": {
            "id": config.node_id,
            "cluster": format!("{}.{}", node.pod, node.namespace),
            "metadata": metadata,
        },
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": true,
                "grpc_services": [{"envoy_grpc": {"cluster_name": XDS_CLUSTER}}],
            },
            "lds_config": ads,
            "cds_config": ads,
        },
        "static_resources": {
            "clusters": [{
                "name": XDS_CLUSTER,
                "type": discovery,
                "connect_timeout": "1s",
                // Envoy speaks gRPC only over HTTP/2: without this it waits forever in
                // `cm init: initializing cds` and logs nothing at info level.
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {"http2_protocol_options": {
                            "connection_keepalive": {"interval": "30s", "timeout": "10s"}
                        }},
                    }
                },
                "load_assignment": {
                    "cluster_name": XDS_CLUSTER,
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                        "address": host, "port_value": port
                    }}}}]}],
                },
            }],
        },
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": config.admin_port}},
        },
    });
    Ok(bootstrap)
}

/// The `stats_config` of istiod's sidecar bootstrap (pilot-agent's default, without a
/// `proxyStatsMatcher`): Envoy keeps the stats that readiness, draining and Istio's standard
/// metrics read, not each cluster's. With every cluster's stats, an Envoy holding 10,000
/// clusters spends ~0.6 s of its main thread on each stats flush (every 5 s), and an xDS
/// update that arrives then waits (BENCHMARKS.md, "Session 28"). `meshflow bench --envoy`
/// runs its Envoy with it; the agent does not yet (its users read per-cluster counters).
pub fn istio_stats_config() -> Value {
    let prefixes = ["reporter=", "cluster_manager", "listener_manager", "server", "cluster.xds-grpc", "wasm"];
    let suffixes =
        ["rbac.allowed", "rbac.denied", "shadow_allowed", "shadow_denied", "downstream_cx_active", "component"];
    let patterns: Vec<Value> = prefixes
        .iter()
        .map(|p| json!({"prefix": p}))
        .chain(suffixes.iter().map(|s| json!({"suffix": s})))
        .chain([json!({"safe_regex": {"regex": r"vhost\..*\.route\..*"}})])
        .collect();
    json!({"use_all_default_tags": false, "stats_matcher": {"inclusion_list": {"patterns": patterns}}})
}

/// Node metadata for a proxy started by hand (`meshflow bootstrap --label k=v --namespace ns`):
/// `LABELS` from the `k=v` pairs (a later pair overrides an earlier key), so that a Gateway's
/// `selector` can pick it, and `NAMESPACE`, which must agree with the node id.
pub fn hand_metadata(node_id: &str, labels: &[String], namespace: Option<&str>) -> Result<Map<String, Value>, String> {
    let node = NodeId::parse(node_id)?;
    let mut out = Map::new();
    if let Some(ns) = namespace {
        if ns != node.namespace {
            return Err(format!("--namespace {ns:?} contradicts the node id's namespace {:?}", node.namespace));
        }
        out.insert("NAMESPACE".into(), json!(ns));
    }
    if !labels.is_empty() {
        let mut map = Map::new();
        for pair in labels {
            let Some((k, v)) = pair.split_once('=').filter(|(k, _)| !k.is_empty()) else {
                return Err(format!("--label {pair:?} is not of the form key=value"));
            };
            map.insert(k.to_string(), json!(v));
        }
        out.insert("LABELS".into(), Value::Object(map));
    }
    Ok(out)
}

fn split_host_port(addr: &str) -> Result<(String, u16), String> {
    if let Ok(sa) = addr.parse::<SocketAddr>() {
        return Ok((sa.ip().to_string(), sa.port()));
    }
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| format!("xDS address {addr:?} is not host:port"))?;
    let port = port.parse().map_err(|_| format!("xDS address {addr:?}: {port:?} is not a port"))?;
    if host.is_empty() {
        return Err(format!("xDS address {addr:?} has no host"));
    }
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BootstrapConfig {
        BootstrapConfig {
            node_id: "sidecar~127.0.0.5~app-1.default~default.svc.cluster.local".into(),
            xds_addr: "127.0.0.1:15010".into(),
            bind_address: Some("127.0.0.5".parse().unwrap()),
            admin_port: 15000,
        }
    }

    #[test]
    fn hand_labels_and_namespace_become_node_metadata() {
        let id = "router~127.0.0.9~gw-1.istio-system~istio-system.svc.cluster.local";
        let labels = ["istio=ingressgateway".to_string(), "app=gw".to_string(), "app=edge".to_string()];
        let meta = hand_metadata(id, &labels, Some("istio-system")).unwrap();
        let config = BootstrapConfig { node_id: id.into(), ..config() };
        let yaml: serde_json::Value = serde_yaml_ng::from_str(&render_with_metadata(&config, &meta).unwrap()).unwrap();
        let metadata = &yaml["node"]["metadata"];
        assert_eq!(metadata["LABELS"], json!({"istio": "ingressgateway", "app": "edge"}));
        assert_eq!(metadata["NAMESPACE"], "istio-system");
        assert!(hand_metadata(id, &[], Some("default")).unwrap_err().contains("contradicts"));
        assert!(hand_metadata(id, &["novalue".to_string()], None).unwrap_err().contains("key=value"));
        assert!(hand_metadata(id, &[], None).unwrap().is_empty());
    }

    #[test]
    fn bootstrap_uses_delta_ads_over_http2_and_carries_the_bind_address() {
        let yaml: serde_json::Value = serde_yaml_ng::from_str(&render(&config()).unwrap()).unwrap();
        assert_eq!(yaml["dynamic_resources"]["ads_config"]["api_type"], "DELTA_GRPC");
        assert_eq!(yaml["dynamic_resources"]["lds_config"]["ads"], json!({}));
        assert_eq!(yaml["dynamic_resources"]["cds_config"]["resource_api_version"], "V3");
        let xds = &yaml["static_resources"]["clusters"][0];
        assert_eq!(xds["type"], "STATIC");
        assert!(
            xds["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
                ["explicit_http_config"]
                .get("http2_protocol_options")
                .is_some()
        );
        assert_eq!(yaml["node"]["metadata"][BIND_ADDRESS_KEY], "127.0.0.5");
        assert_eq!(yaml["node"]["cluster"], "app-1.default");
        assert_eq!(yaml["admin"]["address"]["socket_address"]["address"], "127.0.0.1");
    }

    #[test]
    fn hostname_xds_address_is_resolved_by_dns() {
        let mut c = config();
        c.xds_addr = "meshflow.istio-system.svc:15010".into();
        let yaml: serde_json::Value = serde_yaml_ng::from_str(&render(&c).unwrap()).unwrap();
        assert_eq!(yaml["static_resources"]["clusters"][0]["type"], "STRICT_DNS");
    }

    #[test]
    fn extra_metadata_is_carried_but_cannot_override_the_identity() {
        let mut extra = Map::new();
        extra.insert("LABELS".into(), json!({"app": "web", "version": "v1"}));
        extra.insert("CLUSTER_ID".into(), json!("east"));
        extra.insert("NAME".into(), json!("someone-else"));
        let yaml: serde_json::Value =
            serde_yaml_ng::from_str(&render_with_metadata(&config(), &extra).unwrap()).unwrap();
        let metadata = &yaml["node"]["metadata"];
        assert_eq!(metadata["LABELS"], json!({"app": "web", "version": "v1"}));
        assert_eq!(metadata["CLUSTER_ID"], "east");
        assert_eq!(metadata["NAME"], "app-1");
        assert_eq!(render(&config()).unwrap(), render_with_metadata(&config(), &Map::new()).unwrap());
    }

    #[test]
    fn bad_node_id_or_address_is_an_error() {
        let mut c = config();
        c.node_id = "envoy".into();
        assert!(render(&c).is_err());
        let mut c = config();
        c.xds_addr = "nohost".into();
        assert!(render(&c).unwrap_err().contains("host:port"));
    }
}
