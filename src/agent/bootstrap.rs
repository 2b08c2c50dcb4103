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
    /// Stats kept beyond the ones every proxy keeps.
    pub stats: StatsInclusion,
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
        "stats_config": stats_config(&config.stats, &[node.ip]),
    });
    Ok(bootstrap)
}

/// Envoy stats a proxy keeps beyond the ones every proxy keeps ([`stats_config`]): Istio's
/// `proxyStatsMatcher` (in `ProxyConfig`), or the pod annotations
/// `sidecar.istio.io/statsInclusion{Prefixes,Suffixes,Regexps}`. A `{pod_ip}` in a pattern
/// stands for each of the proxy's IPs, as in Istio (`http.{pod_ip}_` keeps the inbound
/// listeners' downstream stats).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatsInclusion {
    pub prefixes: Vec<String>,
    pub suffixes: Vec<String>,
    pub regexps: Vec<String>,
}

/// Pod annotations (in node metadata `ANNOTATIONS`, from `ISTIO_METAJSON_ANNOTATIONS`) that
/// list stats to keep, comma-separated, as pilot-agent reads them.
pub const STATS_PREFIXES_ANNOTATION: &str = "sidecar.istio.io/statsInclusionPrefixes";
pub const STATS_SUFFIXES_ANNOTATION: &str = "sidecar.istio.io/statsInclusionSuffixes";
pub const STATS_REGEXPS_ANNOTATION: &str = "sidecar.istio.io/statsInclusionRegexps";
/// The pod annotation that overrides the mesh's `ProxyConfig` for one proxy.
pub const PROXY_CONFIG_ANNOTATION: &str = "proxy.istio.io/config";
/// The mesh's default `ProxyConfig` (YAML or JSON), as istiod's injector gives pilot-agent:
/// the agent reads its `proxyStatsMatcher`.
pub const PROXY_CONFIG_ENV: &str = "PROXY_CONFIG";

impl StatsInclusion {
    /// What pilot-agent would keep for a proxy: for each of prefixes, suffixes and regexps,
    /// the annotation's list when it is set, else `proxyStatsMatcher`'s, taken from the
    /// `proxy.istio.io/config` annotation over `proxy_config` (the mesh's default
    /// `ProxyConfig`, the `PROXY_CONFIG` environment variable, YAML or JSON). Input that does
    /// not parse is left out with a warning naming where it came from, field and reason; the
    /// proxy keeps at least the stats every proxy keeps.
    pub fn from_istio(metadata: &Map<String, Value>, proxy_config: Option<&str>) -> (StatsInclusion, Vec<String>) {
        let mut warnings = Vec::new();
        let none = Map::new();
        let annotations = match metadata.get("ANNOTATIONS") {
            None => &none,
            Some(Value::Object(a)) => a,
            Some(other) => {
                warnings.push(format!("node metadata ANNOTATIONS: not a JSON object ({other}): ignored"));
                &none
            }
        };
        let mut matcher = StatsInclusion::default();
        let configs = [
            (PROXY_CONFIG_ENV.to_string(), proxy_config),
            (
                format!("annotation {PROXY_CONFIG_ANNOTATION}"),
                annotations.get(PROXY_CONFIG_ANNOTATION).and_then(Value::as_str),
            ),
        ];
        for (origin, text) in configs {
            let Some(text) = text.filter(|t| !t.trim().is_empty()) else { continue };
            match proxy_stats_matcher(text) {
                // Later lists win, as the annotation's `ProxyConfig` wins over the mesh's.
                Ok(m) => {
                    for (mine, theirs) in [
                        (&mut matcher.prefixes, m.prefixes),
                        (&mut matcher.suffixes, m.suffixes),
                        (&mut matcher.regexps, m.regexps),
                    ] {
                        if !theirs.is_empty() {
                            *mine = theirs;
                        }
                    }
                }
                Err(e) => warnings.push(format!("{origin}: proxyStatsMatcher: {e}: ignored")),
            }
        }
        for (annotation, list) in [
            (STATS_PREFIXES_ANNOTATION, &mut matcher.prefixes),
            (STATS_SUFFIXES_ANNOTATION, &mut matcher.suffixes),
            (STATS_REGEXPS_ANNOTATION, &mut matcher.regexps),
        ] {
            match annotations.get(annotation) {
                None => {}
                Some(Value::String(v)) if v.is_empty() => {}
                Some(Value::String(v)) => *list = v.split(',').map(str::to_string).collect(),
                Some(other) => warnings.push(format!("annotation {annotation}: not a string ({other}): ignored")),
            }
        }
        matcher.regexps.retain(|re| match check_regexp(re) {
            Ok(()) => true,
            Err(e) => {
                warnings.push(format!("{e}: left out"));
                false
            }
        });
        for list in [&mut matcher.prefixes, &mut matcher.suffixes, &mut matcher.regexps] {
            list.retain(|p| !p.is_empty());
        }
        (matcher, warnings)
    }

    /// Every regexp is one.
    pub fn check(&self) -> Result<(), String> {
        self.regexps.iter().try_for_each(|re| check_regexp(re))
    }
}

/// Envoy rejects a bootstrap whose stats regexp RE2 does not compile; the `regex` crate's
/// syntax is RE2's, near enough to catch it first.
fn check_regexp(re: &str) -> Result<(), String> {
    regex::Regex::new(re)
        .map(drop)
        .map_err(|e| format!("stats inclusion regexp {re:?} is not a regular expression ({e})"))
}

/// `proxyStatsMatcher` of a `ProxyConfig` in YAML or JSON (nothing when it has none).
fn proxy_stats_matcher(text: &str) -> Result<StatsInclusion, String> {
    let config: Value = serde_yaml_ng::from_str(text).map_err(|e| format!("not YAML or JSON: {e}"))?;
    let Some(matcher) = config.get("proxyStatsMatcher") else { return Ok(StatsInclusion::default()) };
    let list = |field: &str| -> Result<Vec<String>, String> {
        match matcher.get(field) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| i.as_str().map(str::to_string).ok_or_else(|| format!("{field}: {i} is not a string")))
                .collect(),
            Some(other) => Err(format!("{field}: {other} is not a list")),
        }
    };
    Ok(StatsInclusion {
        prefixes: list("inclusionPrefixes")?,
        suffixes: list("inclusionSuffixes")?,
        regexps: list("inclusionRegexps")?,
    })
}

/// The bootstrap's `stats_config`: what istiod's sidecars keep (pilot-agent's default), plus
/// `more`. Envoy keeps the stats that readiness, draining and Istio's standard metrics read,
/// not each cluster's, unless `more` asks for them. With every cluster's stats, an Envoy
/// holding 10,000 clusters spends ~0.6 s of its main thread on each stats flush (every 5 s),
/// and an xDS update that arrives then waits (BENCHMARKS.md, "Session 28").
pub fn stats_config(more: &StatsInclusion, instance_ips: &[IpAddr]) -> Value {
    // `downstream_cx_active` is what the agent's drain counts; pilot-agent keeps it too when
    // it drains.
    let prefixes = ["reporter=", "cluster_manager", "listener_manager", "server", "cluster.xds-grpc", "wasm"];
    let suffixes =
        ["rbac.allowed", "rbac.denied", "shadow_allowed", "shadow_denied", "downstream_cx_active", "component"];
    let regexps = [r"vhost\..*\.route\..*"];
    let with_ips = |patterns: &[String]| -> Vec<String> {
        patterns
            .iter()
            .flat_map(|p| match p.contains("{pod_ip}") {
                false => vec![p.clone()],
                true => instance_ips.iter().map(|ip| p.replace("{pod_ip}", &ip.to_string())).collect(),
            })
            .collect()
    };
    let all = |required: &[&str], user: &[String]| -> Vec<String> {
        let mut out: Vec<String> = with_ips(user);
        for r in required {
            if !out.iter().any(|p| p == r) {
                out.push(r.to_string());
            }
        }
        out
    };
    let patterns: Vec<Value> = all(&prefixes, &more.prefixes)
        .into_iter()
        .map(|p| json!({"prefix": p}))
        .chain(all(&suffixes, &more.suffixes).into_iter().map(|s| json!({"suffix": s})))
        .chain(all(&regexps, &more.regexps).into_iter().map(|r| json!({"safe_regex": {"regex": r}})))
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
            stats: StatsInclusion::default(),
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

    /// The patterns of a bootstrap's stats matcher, as `prefix:x`, `suffix:x`, `regex:x`.
    fn patterns(stats_config: &Value) -> Vec<String> {
        stats_config["stats_matcher"]["inclusion_list"]["patterns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| match (p.get("prefix"), p.get("suffix"), p.get("safe_regex")) {
                (Some(v), _, _) => format!("prefix:{}", v.as_str().unwrap()),
                (_, Some(v), _) => format!("suffix:{}", v.as_str().unwrap()),
                (_, _, Some(v)) => format!("regex:{}", v["regex"].as_str().unwrap()),
                _ => panic!("unknown pattern {p}"),
            })
            .collect()
    }

    /// pilot-agent's defaults (pkg/bootstrap/config.go): prefixes `reporter=`,
    /// `cluster_manager`, `listener_manager`, `server`, `cluster.xds-grpc`, `wasm`; suffixes
    /// the RBAC counters, `downstream_cx_active` (drain) and `component` (istio_build); the
    /// regex for VirtualService route stats. No tags of Envoy's own (`use_all_default_tags`).
    #[test]
    fn every_bootstrap_keeps_istiods_default_stats_and_no_per_cluster_ones() {
        let yaml: Value = serde_yaml_ng::from_str(&render(&config()).unwrap()).unwrap();
        assert_eq!(yaml["stats_config"]["use_all_default_tags"], false);
        let got = patterns(&yaml["stats_config"]);
        for want in [
            "prefix:reporter=",
            "prefix:cluster_manager",
            "prefix:listener_manager",
            "prefix:server",
            "prefix:cluster.xds-grpc",
            "prefix:wasm",
            "suffix:rbac.allowed",
            "suffix:rbac.denied",
            "suffix:shadow_allowed",
            "suffix:shadow_denied",
            "suffix:downstream_cx_active",
            "suffix:component",
            r"regex:vhost\..*\.route\..*",
        ] {
            assert!(got.contains(&want.to_string()), "{want} missing from {got:?}");
        }
        assert_eq!(got.len(), 13, "{got:?}");
    }

    #[test]
    fn more_stats_come_first_with_the_pod_ip_substituted_and_nothing_twice() {
        let more = StatsInclusion {
            prefixes: vec!["cluster.outbound".into(), "http.{pod_ip}_".into(), "server".into()],
            suffixes: vec!["upstream_rq_total".into()],
            regexps: vec![".*outlier_detection.*".into()],
        };
        let got = patterns(&stats_config(&more, &["10.1.2.3".parse().unwrap(), "fd00::1".parse().unwrap()]));
        assert_eq!(
            &got[..4],
            ["prefix:cluster.outbound", "prefix:http.10.1.2.3_", "prefix:http.fd00::1_", "prefix:server"]
        );
        assert_eq!(got.iter().filter(|p| *p == "prefix:server").count(), 1);
        assert!(got.contains(&"suffix:upstream_rq_total".to_string()));
        assert!(got.contains(&"regex:.*outlier_detection.*".to_string()));
        assert_eq!(got.len(), 13 + 3 + 1 + 1, "three prefixes, a suffix, a regex more: {got:?}");
        assert_eq!(more.check(), Ok(()));
        let bad = StatsInclusion { regexps: vec!["a(".into()], ..more };
        assert!(bad.check().unwrap_err().starts_with(r#"stats inclusion regexp "a(" is not a regular expression"#));
    }

    fn metadata(annotations: Value) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("ANNOTATIONS".into(), annotations);
        m
    }

    #[test]
    fn the_pods_annotations_win_over_its_proxy_config_which_wins_over_the_meshs() {
        let mesh = "proxyStatsMatcher:\n  inclusionPrefixes: [mesh.p]\n  inclusionSuffixes: [mesh.s]\n  inclusionRegexps: [mesh.r]\n";
        // Only the mesh's.
        let (m, warnings) = StatsInclusion::from_istio(&Map::new(), Some(mesh));
        assert_eq!(warnings, Vec::<String>::new());
        assert_eq!(
            (m.prefixes, m.suffixes, m.regexps),
            (vec!["mesh.p".into()], vec!["mesh.s".into()], vec!["mesh.r".into()])
        );
        // The pod's ProxyConfig (JSON here) replaces the lists it sets; the stats annotation
        // replaces the prefixes again; an empty annotation is no annotation.
        let pod = json!({
            PROXY_CONFIG_ANNOTATION: r#"{"proxyStatsMatcher": {"inclusionSuffixes": ["pod.s"]}}"#,
            STATS_PREFIXES_ANNOTATION: "a.p,b.p",
            STATS_REGEXPS_ANNOTATION: "",
        });
        let (m, warnings) = StatsInclusion::from_istio(&metadata(pod), Some(mesh));
        assert_eq!(warnings, Vec::<String>::new());
        assert_eq!(m.prefixes, ["a.p", "b.p"]);
        assert_eq!(m.suffixes, ["pod.s"]);
        assert_eq!(m.regexps, ["mesh.r"]);
        // Without anything: nothing more.
        assert_eq!(StatsInclusion::from_istio(&Map::new(), None), (StatsInclusion::default(), Vec::new()));
    }

    #[test]
    fn bad_stats_input_is_left_out_with_a_warning_naming_where_it_came_from() {
        let pod = json!({
            PROXY_CONFIG_ANNOTATION: "proxyStatsMatcher: {inclusionPrefixes: 7}",
            STATS_SUFFIXES_ANNOTATION: ["not", "a", "string"],
            STATS_REGEXPS_ANNOTATION: "ok.*,(unclosed",
        });
        let (m, warnings) = StatsInclusion::from_istio(&metadata(pod), Some("proxyStatsMatcher: [: nope"));
        assert_eq!(m, StatsInclusion { regexps: vec!["ok.*".into()], ..Default::default() });
        assert_eq!(warnings.len(), 4, "{warnings:#?}");
        assert!(warnings[0].starts_with("PROXY_CONFIG: proxyStatsMatcher: not YAML or JSON"), "{}", warnings[0]);
        assert!(
            warnings[1]
                .starts_with("annotation proxy.istio.io/config: proxyStatsMatcher: inclusionPrefixes: 7 is not a list"),
            "{}",
            warnings[1]
        );
        assert!(
            warnings[2].starts_with("annotation sidecar.istio.io/statsInclusionSuffixes: not a string"),
            "{}",
            warnings[2]
        );
        assert!(warnings[3].contains(r#""(unclosed" is not a regular expression"#), "{}", warnings[3]);
        let (_, warnings) = StatsInclusion::from_istio(&metadata(json!("text")), None);
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].starts_with("node metadata ANNOTATIONS: not a JSON object"));
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
