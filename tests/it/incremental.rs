//! The central correctness property: after every step of any sequence of changes, the
//! engine's resources equal the from-scratch reference translator's, byte for byte, and a
//! step emits a change only for resources whose bytes really changed.
//!
//! Inputs are drawn from a small universe (two namespaces, a few names, a few IPs and
//! labels) so that random sequences collide often: services gain and lose slices, slices
//! move between services, pods start and stop matching selectors, a service falls back from
//! slices to Endpoints to its selector and back; VirtualServices and DestinationRules claim
//! hosts exactly and by wildcard, are retargeted, compete by specificity, namespace and age,
//! route to subsets that exist or not; pods move in and out of subsets as their labels change;
//! root VirtualServices delegate to delegates that come, change, go and are or are not exported to them;
//! ServiceEntries of every resolution claim external hosts and a Service's host (which the
//! Service keeps), compete by age, gain and lose endpoints, VIPs and selected pods.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use meshflow::engine::{Command, Engine, EngineOutput, ResourceDelta};
use meshflow::model::istio;
use meshflow::model::k8s::{
    ContainerPort, EndpointAddress, EndpointSubset, Labels, Protocol, ServicePort, SliceEndpoint, SlicePort, TargetPort,
};
use meshflow::model::proxy::{ClassLabels, ProxyClass, ProxyKind, ProxyLocality};
use meshflow::model::secret::SecretBytes;
use meshflow::model::{EndpointSlice, Endpoints, InputEvent, Kind, Node, Object, ObjectKey, Pod, Secret, Service};
use meshflow::translate::{MeshConfig, ResourceType, Scope, outbound, reference};
use proptest::prelude::*;

const NAMESPACES: [&str; 2] = ["default", "shop"];
const SERVICES: [&str; 3] = ["reviews", "ratings", "web"];
const IPS: [&str; 5] = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "fd00::5"];
const APPS: [&str; 2] = ["reviews", "web"];
const PODS: [&str; 4] = ["p-1", "p-2", "p-3", "p-4"];
const NODES: [&str; 2] = ["node-a", "node-b"];
/// Hosts as VirtualServices and DestinationRules write them: short names, FQDNs, wildcards.
const HOSTS: [&str; 9] = [
    "reviews",
    "ratings",
    "web.default.svc.cluster.local",
    "reviews.shop.svc.cluster.local",
    "*.default.svc.cluster.local",
    "*.svc.cluster.local",
    "*",
    "ext.example.com",
    "*.example.com",
];
/// ServiceEntry hosts: external names, and a Kubernetes service's FQDN (the Service wins it).
const ENTRY_HOSTS: [&str; 4] =
    ["ext.example.com", "api.example.com", "reviews.default.svc.cluster.local", "*.example.com"];
const GATEWAYS: &[&[&str]] = &[&[], &["mesh"], &["default/gw"]];
const CREATED: [Option<&str>; 3] = [None, Some("2024-01-01T00:00:00Z"), Some("2025-06-01T12:00:00Z")];
/// Cluster IPs: shared between services on purpose (two listeners named alike), and headless.
const CLUSTER_IPS: [&str; 3] = ["10.96.0.1", "10.96.0.2", "None"];
const PORTS: [u16; 4] = [80, 9080, 15000, 443];
/// `exportTo` values: absent, private, public, other namespaces by name.
const EXPORT_TO: [&[&str]; 5] = [&[], &["."], &["*"], &["shop"], &["default", "istio-system"]];
/// Service annotation and ServiceEntry `exportTo`: mostly absent, and `~` (nobody).
const HOST_EXPORT_TO: [&[&str]; 8] = [&[], &[], &[], &["."], &["*"], &["shop"], &["default", "istio-system"], &["~"]];

fn host_export_to() -> impl Strategy<Value = Vec<String>> {
    prop::sample::select(&HOST_EXPORT_TO[..]).prop_map(|e| e.iter().map(|s| s.to_string()).collect())
}

fn ns() -> impl Strategy<Value = String> {
    prop::sample::select(&NAMESPACES[..]).prop_map(String::from)
}
fn svc_name() -> impl Strategy<Value = String> {
    prop::sample::select(&SERVICES[..]).prop_map(String::from)
}
fn ip() -> impl Strategy<Value = String> {
    prop::sample::select(&IPS[..]).prop_map(String::from)
}
fn labels() -> impl Strategy<Value = Labels> {
    (prop::sample::select(&APPS[..]), prop::option::of(prop::sample::select(&["v1", "v2"][..]))).prop_map(|(app, v)| {
        let mut l = vec![("app".to_string(), app.to_string())];
        if let Some(v) = v {
            l.push(("version".into(), v.into()));
        }
        l.into_iter().collect::<Labels>()
    })
}

fn protocol() -> impl Strategy<Value = Protocol> {
    prop_oneof![8 => Just(Protocol::Tcp), 1 => Just(Protocol::Udp)]
}

fn service_port() -> impl Strategy<Value = ServicePort> {
    (
        prop::sample::select(&["http", "grpc-api", "tcp-db", "web", "", "tcp", "tls", "https"][..]),
        prop::sample::select(&PORTS[..]),
        protocol(),
        prop_oneof![
            prop::sample::select(&[8080u16, 9090][..]).prop_map(TargetPort::Number),
            prop::sample::select(&["http", "metrics"][..]).prop_map(|s| TargetPort::Name(s.into())),
        ],
    )
        .prop_map(|(name, port, protocol, target_port)| ServicePort {
            name: name.into(),
            port,
            protocol,
            target_port,
            app_protocol: None,
        })
}

fn service() -> impl Strategy<Value = Object> {
    (
        ns(),
        svc_name(),
        prop::collection::vec(service_port(), 0..3),
        prop::option::of(prop::sample::select(&APPS[..])),
        any::<bool>(),
        prop::bool::weighted(0.1),
        prop::option::of(prop::sample::select(&CLUSTER_IPS[..])),
        host_export_to(),
    )
        .prop_map(|(namespace, name, mut ports, app, publish, external, cluster_ip, export_to)| {
            // Port numbers are unique per protocol within a Service (validated at intake).
            ports.sort_by_key(|p| (p.port, p.protocol));
            ports.dedup_by_key(|p| (p.port, p.protocol));
            Object::Service(Box::new(Service {
                namespace,
                name,
                ports,
                selector: app.map(|a| Labels::from([("app".to_string(), a.to_string())])),
                cluster_ip: cluster_ip.map(String::from),
                external_name: external.then(|| "example.com".to_string()),
                publish_not_ready_addresses: publish,
                export_to,
            }))
        })
}

fn slice_port() -> impl Strategy<Value = SlicePort> {
    (
        prop::sample::select(&["http", "grpc-api", "tcp-db", "web", "", "tcp", "tls", "https"][..]),
        prop::option::of(prop::sample::select(&[8080u16, 9090][..])),
        protocol(),
    )
        .prop_map(|(name, port, protocol)| SlicePort { name: name.into(), port, protocol })
}

fn slice() -> impl Strategy<Value = Object> {
    (
        ns(),
        prop::sample::select(&["s-1", "s-2", "s-3"][..]),
        prop::option::of(svc_name()),
        prop::collection::vec(slice_port(), 0..3),
        prop::collection::vec(
            (prop::collection::vec(ip(), 0..3), any::<bool>(), prop::option::of(prop::sample::select(&PODS[..]))),
            0..4,
        ),
    )
        .prop_map(|(namespace, name, service_name, ports, eps)| {
            Object::EndpointSlice(Arc::new(EndpointSlice {
                namespace,
                name: name.into(),
                service_name,
                ports,
                endpoints: eps
                    .into_iter()
                    .map(|(addresses, ready, pod)| SliceEndpoint { addresses, ready, pod: pod.map(String::from) })
                    .collect(),
            }))
        })
}

fn endpoint_address() -> impl Strategy<Value = EndpointAddress> {
    (ip(), prop::option::of(prop::sample::select(&PODS[..])))
        .prop_map(|(ip, pod)| EndpointAddress { ip, pod: pod.map(String::from) })
}

fn endpoints() -> impl Strategy<Value = Object> {
    (
        ns(),
        svc_name(),
        prop::collection::vec(
            (
                prop::collection::vec(endpoint_address(), 0..3),
                prop::collection::vec(endpoint_address(), 0..2),
                prop::collection::vec(slice_port(), 0..3),
            ),
            0..3,
        ),
    )
        .prop_map(|(namespace, name, subsets)| {
            Object::Endpoints(Box::new(Endpoints {
                namespace,
                name,
                subsets: subsets
                    .into_iter()
                    .map(|(ready, not_ready, ports)| EndpointSubset { ready, not_ready, ports })
                    .collect(),
            }))
        })
}

fn pod() -> impl Strategy<Value = Object> {
    (
        ns(),
        prop::sample::select(&PODS[..]),
        labels(),
        prop::option::of(ip()),
        any::<bool>(),
        prop::bool::weighted(0.15),
        prop::sample::select(&[8080u16, 8081][..]),
        prop::option::of(prop::sample::select(&NODES[..])),
        prop::bool::weighted(0.1),
    )
        .prop_map(|(namespace, name, mut labels, ip, ready, terminal, http_port, node, own_locality)| {
            if own_locality {
                labels = labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .chain([("istio-locality".to_string(), "r9.z9".to_string())])
                    .collect();
            }
            Object::Pod(std::sync::Arc::new(Pod {
                namespace,
                name: name.into(),
                labels,
                ip,
                node_name: node.map(String::from),
                ready,
                terminal,
                ports: vec![
                    ContainerPort { name: "http".into(), port: http_port, protocol: Protocol::Tcp },
                    ContainerPort { name: "metrics".into(), port: 9090, protocol: Protocol::Tcp },
                ],
            }))
        })
}

/// An Istio object from its spec as a user writes it, through meshflow's decoding and
/// validation; None for the few generated specs Istio rejects (e.g. host `*` bound to the
/// mesh), which the strategies filter out.
fn istio_object(
    kind: Kind,
    namespace: &str,
    name: &str,
    created: Option<&str>,
    spec: serde_json::Value,
) -> Option<Object> {
    istio::decode(kind, namespace, name, created, spec).ok()
}

fn destination() -> impl Strategy<Value = serde_json::Value> {
    (
        prop::sample::select(&["reviews", "ratings", "web.default.svc.cluster.local", "ext.example.com"][..]),
        prop::option::of(prop::sample::select(&["v1", "v2", "missing"][..])),
        prop::option::of(prop::sample::select(&[80u32, 9080][..])),
    )
        .prop_map(|(host, subset, port)| {
            let mut d = serde_json::json!({ "host": host });
            if let Some(s) = subset {
                d["subset"] = s.into();
            }
            if let Some(p) = port {
                d["port"] = serde_json::json!({ "number": p });
            }
            d
        })
}

fn http_route() -> impl Strategy<Value = serde_json::Value> {
    let matches = prop::collection::vec(
        prop_oneof![
            Just(serde_json::json!({"headers": {"end-user": {"exact": "jason"}}})),
            Just(serde_json::json!({"port": 80})),
            Just(serde_json::json!({"uri": {"prefix": "/api"}, "ignoreUriCase": true})),
            // Source-dependent blocks: served per namespace and per sidecar class.
            Just(serde_json::json!({"sourceLabels": {"app": "web"}})),
            Just(serde_json::json!({"sourceLabels": {"app": "web", "version": "v2"}, "uri": {"prefix": "/s"}})),
            Just(serde_json::json!({"sourceNamespace": "shop"})),
            Just(serde_json::json!({"sourceNamespace": "default", "sourceLabels": {"version": "v1"}})),
        ],
        0..3,
    );
    (matches, destination(), prop::option::of((destination(), 0u32..=100)), prop::option::of(Just("2s"))).prop_map(
        |(matches, first, second, timeout)| {
            let route = match second {
                None => serde_json::json!([{ "destination": first }]),
                Some((second, w)) => serde_json::json!([
                    { "destination": first, "weight": w },
                    { "destination": second, "weight": 100 - w },
                ]),
            };
            let mut r = serde_json::json!({ "route": route });
            if !matches.is_empty() {
                r["match"] = serde_json::Value::Array(matches);
            }
            if let Some(t) = timeout {
                r["timeout"] = t.into();
            }
            r
        },
    )
}

/// A root's delegating route: to a delegate that the steps create, change and delete (or one
/// that never exists), in the root's namespace or a named one, under a match or none.
fn delegate_route() -> impl Strategy<Value = serde_json::Value> {
    (
        prop::sample::select(&["child-a", "child-b", "missing"][..]),
        prop::option::of(ns()),
        prop::option::of(prop_oneof![
            Just(serde_json::json!({"uri": {"prefix": "/api"}, "ignoreUriCase": true})),
            Just(serde_json::json!({"uri": {"prefix": "/api"}})),
            Just(serde_json::json!({"headers": {"end-user": {"exact": "jason"}}})),
        ]),
        prop::option::of(Just("3s")),
    )
        .prop_map(|(name, namespace, m, timeout)| {
            let mut d = serde_json::json!({ "name": name });
            if let Some(ns) = namespace {
                d["namespace"] = ns.into();
            }
            let mut r = serde_json::json!({ "delegate": d });
            if let Some(m) = m {
                r["match"] = serde_json::json!([m]);
            }
            if let Some(t) = timeout {
                r["timeout"] = t.into();
            }
            r
        })
}

/// A delegate VirtualService (no hosts): HTTP routes only, exported or not to its roots.
fn delegate_virtual_service() -> impl Strategy<Value = Object> {
    (
        ns(),
        prop::sample::select(&["child-a", "child-b"][..]),
        prop::sample::select(&CREATED[..]),
        prop::collection::vec(http_route(), 1..3),
        prop::sample::select(&EXPORT_TO[..]),
    )
        .prop_filter_map("valid delegate VirtualService", |(namespace, name, created, http, export_to)| {
            let mut spec = serde_json::json!({ "http": http });
            if !export_to.is_empty() {
                spec["exportTo"] = serde_json::json!(export_to);
            }
            istio_object(Kind::VirtualService, &namespace, name, created, spec)
        })
}

/// The destinations of a `tcp` or `tls` route: one (weight ignored), or two weighted.
fn l4_destinations() -> impl Strategy<Value = serde_json::Value> {
    (destination(), prop::option::of((destination(), 0u32..=100))).prop_map(|(first, second)| match second {
        None => serde_json::json!([{ "destination": first }]),
        Some((second, w)) => serde_json::json!([
            { "destination": first, "weight": w },
            { "destination": second, "weight": 100 - w },
        ]),
    })
}

fn tcp_route() -> impl Strategy<Value = serde_json::Value> {
    let matches = prop::collection::vec(
        prop_oneof![
            prop::sample::select(&PORTS[..]).prop_map(|p| serde_json::json!({"port": p})),
            Just(serde_json::json!({"destinationSubnets": ["10.96.0.0/31"]})),
            Just(serde_json::json!({"sourceLabels": {"app": "web"}})),
            Just(serde_json::json!({"sourceNamespace": "shop"})),
        ],
        0..3,
    );
    (matches, l4_destinations()).prop_map(|(matches, route)| {
        let mut r = serde_json::json!({ "route": route });
        if !matches.is_empty() {
            r["match"] = serde_json::Value::Array(matches);
        }
        r
    })
}

/// A `tls` route: its SNI hosts must be among the VirtualService's hosts (validation).
fn tls_route(hosts: Vec<String>) -> impl Strategy<Value = serde_json::Value> {
    (prop::sample::subsequence(hosts, 1..=1), prop::option::of(prop::sample::select(&PORTS[..])), l4_destinations())
        .prop_map(|(sni, port, route)| {
            let mut m = serde_json::json!({ "sniHosts": sni });
            if let Some(p) = port {
                m["port"] = p.into();
            }
            serde_json::json!({ "match": [m], "route": route })
        })
}

fn virtual_service() -> impl Strategy<Value = Object> {
    (
        ns(),
        prop::sample::select(&["vs-a", "vs-b", "vs-c"][..]),
        prop::sample::select(&CREATED[..]),
        prop::collection::btree_set(prop::sample::select(&HOSTS[..]), 1..3),
        prop::sample::select(GATEWAYS),
        prop::collection::vec(http_route(), 0..3),
        prop::collection::vec(tcp_route(), 0..3),
        any::<bool>(),
        prop::sample::select(&EXPORT_TO[..]),
        prop::collection::vec(delegate_route(), 0..2),
    )
        .prop_flat_map(|(namespace, name, created, hosts, gateways, http, tcp, with_tls, export_to, delegates)| {
            // Validation rejects `*` bound to the mesh and hosts that overlap: keep the first
            // of overlapping hosts.
            let mesh = gateways.is_empty() || gateways.contains(&"mesh");
            let mut hosts: Vec<String> = hosts
                .into_iter()
                .filter(|h| !(mesh && *h == "*"))
                .fold(Vec::new(), |mut kept: Vec<&str>, h| {
                    if !kept.iter().any(|k| outbound::pattern_matches(k, h) || outbound::pattern_matches(h, k)) {
                        kept.push(h);
                    }
                    kept
                })
                .into_iter()
                .map(String::from)
                .collect();
            if hosts.is_empty() {
                hosts.push("reviews".into());
            }
            let tls = prop::collection::vec(tls_route(hosts.clone()), if with_tls { 1..3 } else { 0..1 });
            tls.prop_filter_map("valid VirtualService", move |tls| {
                let mut http: Vec<serde_json::Value> = delegates.iter().chain(&http).cloned().collect();
                if http.is_empty() && tcp.is_empty() && tls.is_empty() {
                    http.push(serde_json::json!({"route": [{"destination": {"host": "reviews"}}]}));
                }
                let mut spec = serde_json::json!({
                    "hosts": hosts, "gateways": gateways, "http": http, "tcp": tcp, "tls": tls,
                });
                if !export_to.is_empty() {
                    spec["exportTo"] = serde_json::json!(export_to);
                }
                istio_object(Kind::VirtualService, &namespace, name, created, spec)
            })
        })
}

fn traffic_policy() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        Just(serde_json::json!({"loadBalancer": {"simple": "ROUND_ROBIN"}})),
        Just(serde_json::json!({"loadBalancer": {"consistentHash": {"httpHeaderName": "x-user"}}})),
        Just(serde_json::json!({"connectionPool": {"tcp": {"maxConnections": 7}}})),
        Just(
            serde_json::json!({"portLevelSettings": [{"port": {"number": 80}, "loadBalancer": {"simple": "RANDOM"}}]})
        ),
        // Locality load balancing: assignments relative to the proxy's locality.
        Just(serde_json::json!({"outlierDetection": {"consecutive5xxErrors": 3}})),
        Just(serde_json::json!({"outlierDetection": {"consecutive5xxErrors": 3},
            "loadBalancer": {"localityLbSetting": {"failover": [{"from": "r1", "to": "r2"}]}}})),
        Just(serde_json::json!({"loadBalancer": {"localityLbSetting": {"distribute": [
            {"from": "r1/z1/*", "to": {"r1/z1/*": 70, "r1/z2/*": 30}}]}}})),
        Just(serde_json::json!({"outlierDetection": {"consecutive5xxErrors": 3},
            "loadBalancer": {"localityLbSetting": {"enabled": false}}})),
        Just(serde_json::json!({"outlierDetection": {"consecutive5xxErrors": 3},
            "loadBalancer": {"localityLbSetting": {"failoverPriority": ["topology.kubernetes.io/zone"]}}})),
        // failoverPriority by a pod label (assignments per the proxy's labels), with region
        // failover on top, and with an override.
        Just(serde_json::json!({"outlierDetection": {"consecutive5xxErrors": 3},
            "loadBalancer": {"localityLbSetting": {"failoverPriority": ["version", "topology.kubernetes.io/region"]}}})),
        Just(serde_json::json!({"outlierDetection": {"consecutive5xxErrors": 3},
            "loadBalancer": {"localityLbSetting": {"failoverPriority": ["version"],
                "failover": [{"from": "r1", "to": "r2"}]}}})),
        Just(serde_json::json!({"outlierDetection": {"consecutive5xxErrors": 3},
            "loadBalancer": {"localityLbSetting": {"failoverPriority": ["app=web"]}}})),
        Just(serde_json::json!({"portLevelSettings": [{"port": {"number": 9080},
            "outlierDetection": {"consecutive5xxErrors": 1}}]})),
    ]
}

/// The (namespace, locality, labels) of connected proxies, as the xDS server registers them.
fn proxy_locality() -> impl Strategy<Value = Object> {
    (
        prop::sample::select(&["default", "shop", "istio-system"][..]),
        prop::sample::select(&["", "r1/z1", "r1/z2", "r2", "r1/z1/s1"][..]),
        prop::sample::select(&["", "v1", "v2"][..]),
    )
        .prop_map(|(namespace, locality, version)| {
            let labels = if version.is_empty() {
                Labels::new()
            } else {
                Labels::from([("app".to_string(), "web".to_string()), ("version".to_string(), version.to_string())])
            };
            Object::ProxyLocality(ProxyLocality { namespace: namespace.into(), locality: locality.into(), labels })
        })
}

fn destination_rule() -> impl Strategy<Value = Object> {
    (
        prop::sample::select(&["default", "shop", "istio-system"][..]),
        prop::sample::select(&["dr-a", "dr-b", "dr-c"][..]),
        prop::sample::select(&CREATED[..]),
        prop::sample::select(&HOSTS[..]),
        prop::option::of(traffic_policy()),
        prop::collection::btree_set(prop::sample::select(&["v1", "v2", "web"][..]), 0..3),
        prop::option::of(traffic_policy()),
        prop::bool::weighted(0.1),
        prop::sample::select(&EXPORT_TO[..]),
    )
        .prop_filter_map(
            "valid DestinationRule",
            |(namespace, name, created, host, policy, subsets, subset_policy, selector, export_to)| {
                let subsets: Vec<_> = subsets
                    .into_iter()
                    .map(|s| {
                        let labels = if s == "web" {
                            serde_json::json!({"app": "web"})
                        } else {
                            serde_json::json!({"version": s})
                        };
                        let mut subset = serde_json::json!({ "name": s, "labels": labels });
                        if let Some(p) = &subset_policy {
                            subset["trafficPolicy"] = p.clone();
                        }
                        subset
                    })
                    .collect();
                let mut spec = serde_json::json!({ "host": host, "subsets": subsets });
                if let Some(p) = policy {
                    spec["trafficPolicy"] = p;
                }
                if selector {
                    spec["workloadSelector"] = serde_json::json!({"matchLabels": {"app": "web"}});
                }
                if !export_to.is_empty() {
                    spec["exportTo"] = serde_json::json!(export_to);
                }
                istio_object(Kind::DestinationRule, namespace, name, created, spec)
            },
        )
}

/// Gateways in `default` (where the generated VirtualServices bind to `default/gw`) and
/// `istio-system`, selecting gateway proxies by label (or all of them), with HTTP, HTTPS (a
/// `credentialName` in the gateway's namespace) and TLS passthrough servers.
fn gateway() -> impl Strategy<Value = Object> {
    let server = prop_oneof![
        (prop::sample::select(&[80u32, 8080][..]), prop::sample::select(&["*", "reviews", "*.svc.cluster.local"][..]))
            .prop_map(|(port, host)| serde_json::json!({
                "port": {"number": port, "name": format!("http-{port}"), "protocol": "HTTP"},
                "hosts": [host],
            })),
        (prop::sample::select(&["SIMPLE", "MUTUAL"][..]), any::<bool>()).prop_map(|(mode, redirect)| {
            let mut s = serde_json::json!({
                "port": {"number": 443, "name": "https", "protocol": "HTTPS"},
                "hosts": ["*"],
                "tls": {"mode": mode, "credentialName": "cert"},
            });
            if redirect {
                s["port"] = serde_json::json!({"number": 8443, "name": "https-8443", "protocol": "HTTPS"});
            }
            s
        }),
        Just(serde_json::json!({
            "port": {"number": 15443, "name": "tls", "protocol": "TLS"},
            "hosts": ["*"],
            "tls": {"mode": "PASSTHROUGH"},
        })),
    ];
    (
        prop::sample::select(&["default", "istio-system"][..]),
        prop::sample::select(&["gw", "gw2"][..]),
        prop::sample::select(&CREATED[..]),
        prop::sample::select(&[None, Some(("istio", "ingressgateway")), Some(("app", "web"))][..]),
        prop::collection::vec(server, 1..3),
    )
        .prop_filter_map("valid Gateway", |(namespace, name, created, selector, servers)| {
            let selector = match selector {
                Some((k, v)) => serde_json::json!({ k: v }),
                None => serde_json::json!({}),
            };
            let spec = serde_json::json!({ "selector": selector, "servers": servers });
            istio_object(Kind::Gateway, namespace, name, created, spec)
        })
}

/// Classes of connected proxies: gateways and sidecars by their labels or their pod (whose
/// labels the steps change), and proxyless gRPC clients (whose presence turns on the proxyless
/// resources).
fn proxy_class() -> impl Strategy<Value = Object> {
    let labels = prop_oneof![
        Just(ClassLabels::Given(Labels::from([("istio".to_string(), "ingressgateway".to_string())]))),
        Just(ClassLabels::Given(Labels::from([("app".to_string(), "web".to_string())]))),
        Just(ClassLabels::Given(Labels::from([
            ("app".to_string(), "web".to_string()),
            ("version".to_string(), "v2".to_string())
        ]))),
        // A pod that may not exist (`gone`, or one of another namespace): its labels then come
        // from the Pod at the proxy's IP, if exactly one (or one of the class's namespace) is.
        (prop::sample::select(&["p-1", "p-2", "p-3", "p-4", "gone"][..]), prop::option::of(ip()))
            .prop_map(|(p, ip)| ClassLabels::OfPod { pod: p.to_string(), ip }),
    ];
    let kind =
        prop::sample::select(&[ProxyKind::Router, ProxyKind::Router, ProxyKind::Sidecar, ProxyKind::Proxyless][..]);
    (prop::sample::select(&["default", "shop", "istio-system"][..]), labels, kind).prop_map(
        |(namespace, labels, kind)| {
            let labels = if kind == ProxyKind::Proxyless { ClassLabels::Ignored } else { labels };
            Object::ProxyClass(ProxyClass { kind, namespace: namespace.into(), labels })
        },
    )
}

/// Secrets the HTTPS servers name (`cert`, its CA `cert-cacert`), some without the keys.
fn secret() -> impl Strategy<Value = Object> {
    (
        prop::sample::select(&["default", "istio-system"][..]),
        prop::sample::select(&["cert", "cert-cacert"][..]),
        prop::sample::select(&[0u8, 1, 2][..]),
        prop::sample::select(&["tls.crt", "cacert", "other"][..]),
    )
        .prop_map(|(namespace, name, version, key)| {
            let mut data = std::collections::BTreeMap::new();
            data.insert(key.to_string(), SecretBytes(vec![b'c', version]));
            data.insert("tls.key".to_string(), SecretBytes(vec![b'k', version]));
            Object::Secret(Box::new(Secret {
                namespace: namespace.into(),
                name: name.into(),
                r#type: "kubernetes.io/tls".into(),
                data,
            }))
        })
}

fn service_entry() -> impl Strategy<Value = Object> {
    let endpoint = (
        ip(),
        prop::option::of(prop::sample::select(&["v1", "v2"][..])),
        prop::option::of(1u32..4),
        prop::option::of(prop::sample::select(&["r1/z1", "r2/z1/s1"][..])),
    )
        .prop_map(|(ip, version, weight, locality)| {
            let mut e = serde_json::json!({ "address": ip });
            if let Some(v) = version {
                e["labels"] = serde_json::json!({ "version": v });
            }
            if let Some(w) = weight {
                e["weight"] = w.into();
            }
            // Locality: STATIC endpoints' assignments and DNS clusters' inline ones are
            // placed relative to the proxy's.
            if let Some(l) = locality {
                e["locality"] = l.into();
            }
            e
        });
    (
        ns(),
        prop::sample::select(&["se-a", "se-b"][..]),
        prop::sample::select(&CREATED[..]),
        prop::collection::btree_set(prop::sample::select(&ENTRY_HOSTS[..]), 1..3),
        prop::sample::select(&["STATIC", "DNS", "DNS_ROUND_ROBIN", "NONE"][..]),
        prop::collection::btree_set(prop::sample::select(&[(80u32, "HTTP"), (9080, "HTTP"), (15000, "TCP"), (443, "TLS")][..]), 1..3),
        prop::option::of(prop::sample::select(&["240.0.0.1", "240.0.0.0/16"][..])),
        prop::collection::vec(endpoint, 0..3),
        prop::bool::weighted(0.3),
        host_export_to(),
    )
        .prop_filter_map(
            "valid ServiceEntry",
            |(namespace, name, created, hosts, resolution, ports, address, endpoints, selector, export_to)| {
                let ports: Vec<_> = ports
                    .into_iter()
                    .map(|(n, p)| serde_json::json!({"number": n, "protocol": p, "name": format!("{}-{n}", p.to_lowercase())}))
                    .collect();
                let mut spec = serde_json::json!({ "hosts": hosts, "resolution": resolution, "ports": ports });
                if !export_to.is_empty() {
                    spec["exportTo"] = serde_json::json!(export_to);
                }
                if let Some(a) = address {
                    spec["addresses"] = serde_json::json!([a]);
                }
                if selector && resolution == "STATIC" {
                    spec["workloadSelector"] = serde_json::json!({"labels": {"app": "web"}});
                } else if resolution != "NONE" {
                    spec["endpoints"] = endpoints.into();
                }
                istio_object(Kind::ServiceEntry, &namespace, name, created, spec)
            },
        )
}

/// The ServiceEntry strategy yields valid entries of every translated resolution, with and
/// without a workloadSelector (so the property test above really meets them).
#[test]
fn the_service_entry_strategy_yields_every_resolution() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = service_entry();
    let (mut resolutions, mut selectors, mut endpoints) = (std::collections::BTreeSet::new(), 0, 0);
    for _ in 0..300 {
        let Object::ServiceEntry(se) = strategy.new_tree(&mut runner).unwrap().current() else { panic!() };
        resolutions.insert(se.spec.effective_resolution().as_str());
        selectors += usize::from(se.spec.workload_selector.is_some());
        endpoints += usize::from(!se.spec.endpoints.is_empty());
    }
    assert_eq!(resolutions.len(), 4, "{resolutions:?}");
    assert!(selectors > 10 && endpoints > 30, "selectors {selectors}, with endpoints {endpoints}");
}

/// Nodes with topology labels (GA or beta), or none: their pods' endpoints take the locality.
fn node() -> impl Strategy<Value = Object> {
    (
        prop::sample::select(&NODES[..]),
        prop::sample::select(&["topology.kubernetes.io/zone", "failure-domain.beta.kubernetes.io/zone", "x"][..]),
        prop::sample::select(&["z1", "z2"][..]),
    )
        .prop_map(|(name, key, zone)| {
            let labels = Labels::from_iter([
                ("topology.kubernetes.io/region".to_string(), "r1".to_string()),
                (key.to_string(), zone.to_string()),
            ]);
            let labels = if key == "x" { Labels::new() } else { labels };
            Object::Node(Node { name: name.into(), labels })
        })
}

fn object() -> impl Strategy<Value = Object> {
    prop_oneof![
        1 => node(),
        3 => service(),
        3 => slice(),
        1 => endpoints(),
        3 => pod(),
        2 => virtual_service(),
        1 => delegate_virtual_service(),
        2 => destination_rule(),
        1 => gateway(),
        1 => proxy_class(),
        1 => proxy_locality(),
        1 => secret(),
        2 => service_entry(),
    ]
}

#[derive(Clone, Debug)]
enum Op {
    /// Apply these objects (one logical time).
    Apply(Vec<Object>),
    /// Delete the object at this index of the live set (modulo its size).
    Delete(usize),
    /// Re-apply a live object unchanged.
    Reapply(usize),
    /// Change one field of the live Pod at this index, as a kubelet does (its readiness, its
    /// Node, its phase), leaving its name, labels and IP, or one endpoint of the live slice
    /// there: the changes the engine's driver feeds to part of the endpoint graph only.
    /// (Another object is re-applied unchanged.)
    Touch(usize, u8),
    /// Several changes in one time to the live Pods, slices and Endpoints near this index: a
    /// touch as [`Op::Touch`]'s, or (one in five) a delete, of whichever object the time has
    /// so far (a deleted one comes back as it was). The driver feeds a slice's changes of a
    /// time as one, from what it was before the time to what it is after.
    Burst(usize, Vec<(usize, u8)>),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => prop::collection::vec(object(), 1..4).prop_map(Op::Apply),
        3 => any::<usize>().prop_map(Op::Delete),
        1 => any::<usize>().prop_map(Op::Reapply),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(i, field)| Op::Touch(i, field)),
        2 => (any::<usize>(), prop::collection::vec((0usize..3, any::<u8>()), 2..8))
            .prop_map(|(i, touches)| Op::Burst(i, touches)),
    ]
}

/// `object` changed in one field, as [`Op::Touch`] says (any other object as it is).
fn touch(mut object: Object, field: u8) -> Object {
    if let Object::Pod(p) = &mut object {
        let p = std::sync::Arc::make_mut(p);
        match field % 3 {
            0 => p.ready = !p.ready,
            1 => p.node_name = NODES.iter().find(|n| p.node_name.as_deref() != Some(**n)).map(|n| n.to_string()),
            _ => p.terminal = !p.terminal,
        }
    }
    // A slice as the endpoint controller changes it: one endpoint's readiness, an endpoint
    // gone, or one more that repeats another's addresses (its ports and service kept: the
    // driver then feeds the changed endpoints' rows only).
    if let Object::EndpointSlice(s) = &mut object
        && !s.endpoints.is_empty()
    {
        let s = std::sync::Arc::make_mut(s);
        let at = usize::from(field) / 3 % s.endpoints.len();
        match field % 3 {
            0 => s.endpoints[at].ready = !s.endpoints[at].ready,
            1 => drop(s.endpoints.remove(at)),
            _ => {
                let mut copy = s.endpoints[at].clone();
                copy.pod = PODS.iter().find(|p| copy.pod.as_deref() != Some(**p)).map(|p| p.to_string());
                s.endpoints.push(copy);
            }
        }
    }
    // Core/v1 Endpoints: an address readied or unreadied.
    if let Object::Endpoints(e) = &mut object
        && let Some(subset) = e.subsets.first_mut()
    {
        if field.is_multiple_of(2) {
            if let Some(a) = subset.ready.pop() {
                subset.not_ready.push(a);
            }
        } else if let Some(a) = subset.not_ready.pop() {
            subset.ready.push(a);
        }
    }
    object
}

struct Harness {
    engine: Engine,
    out: crossbeam_channel::Receiver<ResourceDelta>,
    live: BTreeMap<ObjectKey, Object>,
    materialized: BTreeMap<(Scope, ResourceType, String), Arc<[u8]>>,
    mesh: MeshConfig,
    /// What the last step changed.
    last: Vec<(Scope, ResourceType, String)>,
}

impl Harness {
    fn new() -> Harness {
        Harness::with_mesh(MeshConfig::default())
    }

    fn with_mesh(mesh: MeshConfig) -> Harness {
        let (tx, out) = crossbeam_channel::unbounded();
        let engine = Engine::start_with(mesh.clone(), move |o| {
            if let EngineOutput::Delta(d) = o {
                let _ = tx.send(d);
            }
        });
        Harness { engine, out, live: BTreeMap::new(), materialized: BTreeMap::new(), mesh, last: Vec::new() }
    }

    fn step(&mut self, events: Vec<InputEvent>, step: usize) -> Result<(), TestCaseError> {
        for e in &events {
            match &e.object {
                Some(o) => self.live.insert(e.key.clone(), o.clone()),
                None => self.live.remove(&e.key),
            };
        }
        self.engine.send(Command::Events(events));
        let delta = self.out.recv_timeout(Duration::from_secs(30)).expect("engine answers every command");
        self.last = delta.changes.iter().map(|c| (c.scope.clone(), c.ty, c.name.clone())).collect();
        for change in delta.changes {
            let key = (change.scope.clone(), change.ty, change.name.clone());
            let before = self.materialized.get(&key).cloned();
            prop_assert!(
                before.as_deref() != change.body.as_deref(),
                "step {step}: {:?} {} emitted without changing",
                change.ty,
                change.name
            );
            match change.body {
                Some(body) => self.materialized.insert(key, body),
                None => self.materialized.remove(&key),
            };
        }
        let expected = reference::translate_all_with(self.live.values(), &self.mesh);
        let got: BTreeMap<_, Vec<u8>> = self.materialized.iter().map(|(k, v)| (k.clone(), v.to_vec())).collect();
        if got != expected {
            let names = |m: &BTreeMap<(Scope, ResourceType, String), Vec<u8>>| m.keys().cloned().collect::<Vec<_>>();
            let differing: Vec<_> =
                expected.iter().filter(|(k, v)| got.get(*k) != Some(*v)).map(|(k, _)| k.clone()).collect();
            return Err(TestCaseError::fail(format!(
                "step {step}: engine != reference\n engine:    {:?}\n reference: {:?}\n differing or missing in engine: {differing:?}",
                names(&got),
                names(&expected)
            )));
        }
        Ok(())
    }
}

fn run(ops: Vec<Op>, root: &str) -> Result<(), TestCaseError> {
    let mut h = Harness::with_mesh(MeshConfig { root_namespace: root.to_string() });
    for (step, op) in ops.into_iter().enumerate() {
        let events = match op {
            Op::Apply(objects) => objects.into_iter().map(InputEvent::apply).collect(),
            Op::Delete(i) | Op::Reapply(i) | Op::Touch(i, _) | Op::Burst(i, _) if h.live.is_empty() => {
                let _ = i;
                continue;
            }
            Op::Delete(i) => vec![InputEvent::delete(h.live.keys().nth(i % h.live.len()).unwrap().clone())],
            Op::Reapply(i) => vec![InputEvent::apply(h.live.values().nth(i % h.live.len()).unwrap().clone())],
            Op::Touch(i, field) => {
                let object = touch(h.live.values().nth(i % h.live.len()).unwrap().clone(), field);
                vec![InputEvent::apply(object)]
            }
            Op::Burst(i, touches) => {
                let keys: Vec<ObjectKey> = h
                    .live
                    .keys()
                    .filter(|k| matches!(k.kind, Kind::Pod | Kind::EndpointSlice | Kind::Endpoints))
                    .cloned()
                    .collect();
                if keys.is_empty() {
                    continue;
                }
                // What the time has made of each object so far (None: deleted).
                let mut now: BTreeMap<ObjectKey, Option<Object>> = BTreeMap::new();
                let mut events = Vec::new();
                for (offset, field) in touches {
                    let key = keys[i.wrapping_add(offset) % keys.len()].clone();
                    let was = now.get(&key).cloned().unwrap_or_else(|| h.live.get(&key).cloned());
                    let event = match was {
                        Some(_) if field % 5 == 4 => InputEvent::delete(key.clone()),
                        Some(object) => InputEvent::apply(touch(object, field)),
                        None => InputEvent::apply(h.live[&key].clone()),
                    };
                    now.insert(key, event.object.clone());
                    events.push(event);
                }
                events
            }
        };
        h.step(events, step)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(48),
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn engine_equals_reference_after_every_step(
        ops in prop::collection::vec(op(), 1..250),
        // meshConfig.rootNamespace: istio-system, or a namespace with services and rules.
        root in prop::sample::select(&["istio-system", "istio-system", "shop"][..]),
    ) {
        run(ops, root)?;
    }
}

/// The fallbacks in order: EndpointSlices win over Endpoints, which win over the selector.
#[test]
fn endpoint_sources_take_over_from_each_other_in_order() {
    let svc = Object::Service(Box::new(Service {
        namespace: "default".into(),
        name: "web".into(),
        ports: vec![ServicePort {
            name: "http".into(),
            port: 80,
            protocol: Protocol::Tcp,
            target_port: TargetPort::Name("http".into()),
            app_protocol: None,
        }],
        selector: Some(Labels::from([("app".to_string(), "web".to_string())])),
        cluster_ip: None,
        external_name: None,
        publish_not_ready_addresses: false,
        export_to: Vec::new(),
    }));
    let pod = Object::Pod(std::sync::Arc::new(Pod {
        namespace: "default".into(),
        name: "web-1".into(),
        labels: Labels::from([("app".to_string(), "web".to_string())]),
        ip: Some("10.0.0.9".into()),
        node_name: None,
        ready: true,
        terminal: false,
        ports: vec![ContainerPort { name: "http".into(), port: 8080, protocol: Protocol::Tcp }],
    }));
    let eps = Object::Endpoints(Box::new(Endpoints {
        namespace: "default".into(),
        name: "web".into(),
        subsets: vec![EndpointSubset {
            ready: vec![EndpointAddress { ip: "10.0.0.7".into(), pod: None }],
            not_ready: vec![],
            ports: vec![SlicePort { name: "http".into(), port: Some(7070), protocol: Protocol::Tcp }],
        }],
    }));
    let slice = Object::EndpointSlice(Arc::new(EndpointSlice {
        namespace: "default".into(),
        name: "web-abc".into(),
        service_name: Some("web".into()),
        ports: vec![SlicePort { name: "http".into(), port: Some(6060), protocol: Protocol::Tcp }],
        endpoints: vec![SliceEndpoint { addresses: vec!["10.0.0.6".into()], ready: true, pod: None }],
    }));
    let mut h = Harness::new();
    let cla = |h: &Harness| {
        use prost::Message;
        let body = &h.materialized
            [&(Scope::All, ResourceType::ClusterLoadAssignment, "outbound|80||web.default.svc.cluster.local".into())];
        let cla = envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment::decode(&body[..]).unwrap();
        cla.endpoints
            .iter()
            .flat_map(|l| &l.lb_endpoints)
            .map(|e| {
                format!("{:?}", e.host_identifier)
                    .split("address: \"")
                    .nth(1)
                    .unwrap()
                    .split('"')
                    .next()
                    .unwrap()
                    .to_string()
            })
            .collect::<Vec<_>>()
    };
    h.step(vec![InputEvent::apply(svc), InputEvent::apply(pod)], 0).unwrap();
    assert_eq!(cla(&h), vec!["10.0.0.9"], "selector-derived while nothing else exists");
    h.step(vec![InputEvent::apply(eps.clone())], 1).unwrap();
    assert_eq!(cla(&h), vec!["10.0.0.7"], "Endpoints replace the selector");
    h.step(vec![InputEvent::apply(slice.clone())], 2).unwrap();
    assert_eq!(cla(&h), vec!["10.0.0.6"], "EndpointSlices replace Endpoints");
    h.step(vec![InputEvent::delete(slice.key()), InputEvent::delete(eps.key())], 3).unwrap();
    assert_eq!(cla(&h), vec!["10.0.0.9"], "back to the selector");
    assert_eq!(h.live.keys().filter(|k| k.kind == Kind::Pod).count(), 1);
}

/// A pod's endpoints sit in its Node's locality (region/zone from the topology labels), and
/// move when the Node is relabelled or the pod carries its own locality label.
#[test]
fn endpoints_are_grouped_by_the_locality_of_their_pods_node() {
    use prost::Message;
    let svc = Object::Service(Box::new(Service {
        namespace: "default".into(),
        name: "web".into(),
        ports: vec![ServicePort {
            name: "http".into(),
            port: 80,
            protocol: Protocol::Tcp,
            target_port: TargetPort::Number(8080),
            app_protocol: None,
        }],
        selector: Some(Labels::from([("app".to_string(), "web".to_string())])),
        cluster_ip: None,
        external_name: None,
        publish_not_ready_addresses: false,
        export_to: Vec::new(),
    }));
    let pod = |name: &str, ip: &str, node: &str, extra: &[(&str, &str)]| {
        let mut labels = vec![("app".to_string(), "web".to_string())];
        labels.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Object::Pod(std::sync::Arc::new(Pod {
            namespace: "default".into(),
            name: name.into(),
            labels: labels.into_iter().collect(),
            ip: Some(ip.into()),
            node_name: Some(node.into()),
            ready: true,
            terminal: false,
            ports: vec![],
        }))
    };
    let node = |name: &str, region: &str, zone: &str| {
        Object::Node(Node {
            name: name.into(),
            labels: Labels::from([
                ("topology.kubernetes.io/region".to_string(), region.to_string()),
                ("topology.kubernetes.io/zone".to_string(), zone.to_string()),
            ]),
        })
    };
    // (region, zone, sub_zone, weight, [addresses]) per LocalityLbEndpoints.
    let localities = |h: &Harness| {
        let body = &h.materialized
            [&(Scope::All, ResourceType::ClusterLoadAssignment, "outbound|80||web.default.svc.cluster.local".into())];
        let cla = envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment::decode(&body[..]).unwrap();
        cla.endpoints
            .iter()
            .map(|l| {
                let loc = l.locality.clone().unwrap_or_default();
                let weight = l.load_balancing_weight.map(|w| w.value).unwrap_or_default();
                (format!("{}/{}/{}", loc.region, loc.zone, loc.sub_zone), weight, l.lb_endpoints.len())
            })
            .collect::<Vec<_>>()
    };
    let mut h = Harness::new();
    h.step(
        vec![
            InputEvent::apply(svc),
            InputEvent::apply(pod("web-1", "10.0.0.1", "node-a", &[])),
            InputEvent::apply(pod("web-2", "10.0.0.2", "node-b", &[])),
            InputEvent::apply(pod("web-3", "10.0.0.3", "node-b", &[])),
            InputEvent::apply(node("node-a", "us-east1", "us-east1-b")),
            InputEvent::apply(node("node-b", "us-east1", "us-east1-c")),
        ],
        0,
    )
    .unwrap();
    assert_eq!(localities(&h), [("us-east1/us-east1-b/".into(), 1, 1), ("us-east1/us-east1-c/".into(), 2, 2)]);
    // The Node moves zone: its pods' endpoints follow.
    h.step(vec![InputEvent::apply(node("node-b", "us-east1", "us-east1-b"))], 1).unwrap();
    assert_eq!(localities(&h), [("us-east1/us-east1-b/".to_string(), 3, 3)]);
    // A pod's own locality label wins over its Node's.
    h.step(vec![InputEvent::apply(pod("web-3", "10.0.0.3", "node-b", &[("istio-locality", "eu.z1")]))], 2).unwrap();
    assert_eq!(localities(&h), [("eu/z1/".to_string(), 1, 1), ("us-east1/us-east1-b/".to_string(), 2, 2)]);
}

/// A delegate that comes, changes, stops being exported to its root and goes: the root's
/// routes follow at each step (engine == reference is checked by `step`), and the delegate's
/// routes are never served on their own.
#[test]
fn a_root_follows_its_delegate_through_every_change() {
    use prost::Message;
    let svc = Object::Service(Box::new(Service {
        namespace: "default".into(),
        name: "reviews".into(),
        ports: vec![ServicePort {
            name: "http".into(),
            port: 80,
            protocol: Protocol::Tcp,
            target_port: TargetPort::Number(8080),
            app_protocol: None,
        }],
        selector: None,
        cluster_ip: None,
        external_name: None,
        publish_not_ready_addresses: false,
        export_to: Vec::new(),
    }));
    let root = istio_object(
        Kind::VirtualService,
        "default",
        "vs-a",
        None,
        serde_json::json!({"hosts": ["reviews"], "http": [
            {"match": [{"uri": {"prefix": "/api"}}], "delegate": {"name": "child-a", "namespace": "shop"}},
            {"route": [{"destination": {"host": "reviews", "subset": "v1"}}]},
        ]}),
    )
    .unwrap();
    let child = |subset: &str, export_to: &[&str]| {
        istio_object(
            Kind::VirtualService,
            "shop",
            "child-a",
            None,
            serde_json::json!({"exportTo": export_to, "http": [
                {"route": [{"destination": {"host": "reviews.default.svc.cluster.local", "subset": subset}}]},
            ]}),
        )
        .unwrap()
    };
    // The clusters the routes of route config "80" name, in order.
    let clusters = |h: &Harness| -> Vec<String> {
        use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, route, route_action};
        let body = &h.materialized[&(Scope::Sidecars, ResourceType::RouteConfiguration, "80".into())];
        let rc = RouteConfiguration::decode(&body[..]).unwrap();
        rc.virtual_hosts[0]
            .routes
            .iter()
            .map(|r| match &r.action {
                Some(route::Action::Route(a)) => match &a.cluster_specifier {
                    Some(route_action::ClusterSpecifier::Cluster(c)) => c.clone(),
                    other => panic!("{other:?}"),
                },
                other => panic!("{other:?}"),
            })
            .collect()
    };
    let v = |s: &str| format!("outbound|80|{s}|reviews.default.svc.cluster.local");
    let mut h = Harness::new();
    h.step(vec![InputEvent::apply(svc), InputEvent::apply(root)], 0).unwrap();
    assert_eq!(clusters(&h), [v("v1")], "no delegate yet: the delegating route is left out");
    h.step(vec![InputEvent::apply(child("v2", &[]))], 1).unwrap();
    assert_eq!(clusters(&h), [v("v2"), v("v1")], "the delegate's route in place of the delegating one");
    h.step(vec![InputEvent::apply(child("v3", &[]))], 2).unwrap();
    assert_eq!(clusters(&h), [v("v3"), v("v1")], "the delegate changed");
    h.step(vec![InputEvent::apply(child("v3", &["."]))], 3).unwrap();
    assert_eq!(clusters(&h), [v("v1")], "not exported to the root's namespace");
    h.step(vec![InputEvent::apply(child("v2", &["default"]))], 4).unwrap();
    assert_eq!(clusters(&h), [v("v2"), v("v1")], "exported to it by name");
    let key = child("v2", &[]).key();
    h.step(vec![InputEvent::delete(key)], 5).unwrap();
    assert_eq!(clusters(&h), [v("v1")], "the delegate is gone");
}

fn http_service(namespace: &str, name: &str, export_to: &[&str]) -> Object {
    Object::Service(Box::new(Service {
        namespace: namespace.into(),
        name: name.into(),
        ports: vec![ServicePort {
            name: "http".into(),
            port: 80,
            protocol: Protocol::Tcp,
            target_port: TargetPort::Number(8080),
            app_protocol: None,
        }],
        selector: None,
        cluster_ip: None,
        external_name: None,
        publish_not_ready_addresses: false,
        export_to: export_to.iter().map(|s| s.to_string()).collect(),
    }))
}

/// meshConfig.rootNamespace (`serve --root-namespace`): a DestinationRule of the configured root
/// namespace applies to a host of another namespace (its subset clusters exist for every
/// proxy), one of `istio-system` then does not; with the default root, the reverse.
#[test]
fn destination_rules_of_the_configured_root_namespace_apply_everywhere() {
    let rule = |namespace: &str, subset: &str| {
        istio_object(
            Kind::DestinationRule,
            namespace,
            "reviews",
            None,
            serde_json::json!({"host": "reviews.default.svc.cluster.local",
                "subsets": [{"name": subset, "labels": {"version": subset}}]}),
        )
        .unwrap()
    };
    let class = Object::ProxyClass(ProxyClass {
        kind: ProxyKind::Sidecar,
        namespace: "shop".into(),
        labels: ClassLabels::Given(Labels::new()),
    });
    let subset_clusters = |h: &Harness| -> Vec<String> {
        h.materialized
            .keys()
            .filter(|(scope, ty, name)| {
                *scope == Scope::All && *ty == ResourceType::Cluster && name.starts_with("outbound|80|v")
            })
            .map(|(_, _, name)| name.clone())
            .collect()
    };
    let inputs = || {
        vec![
            InputEvent::apply(http_service("default", "reviews", &[])),
            InputEvent::apply(class.clone()),
            InputEvent::apply(rule("mesh-root", "v1")),
            InputEvent::apply(rule("istio-system", "v2")),
        ]
    };
    let mut custom = Harness::with_mesh(MeshConfig { root_namespace: "mesh-root".into() });
    custom.step(inputs(), 0).unwrap();
    assert_eq!(subset_clusters(&custom), ["outbound|80|v1|reviews.default.svc.cluster.local"]);
    let mut default = Harness::new();
    default.step(inputs(), 0).unwrap();
    assert_eq!(subset_clusters(&default), ["outbound|80|v2|reviews.default.svc.cluster.local"]);
    // The rule of the host's own namespace still comes before the root's.
    custom.step(vec![InputEvent::apply(rule("default", "v3"))], 1).unwrap();
    assert_eq!(subset_clusters(&custom), ["outbound|80|v3|reviews.default.svc.cluster.local"]);
}

/// A gateway proxy whose node id names no existing Pod takes the labels of the Pod with its IP
/// (istiod's `getPodByProxy` fallback): the Gateway selecting that Pod's labels gives it its
/// listener, which follows the Pod's relabelling; of two Pods at the IP, the one of the proxy's
/// namespace counts.
#[test]
fn a_proxy_without_its_named_pod_is_classed_by_the_pod_at_its_ip() {
    let pod = |namespace: &str, name: &str, app: &str| {
        Object::Pod(std::sync::Arc::new(Pod {
            namespace: namespace.into(),
            name: name.into(),
            labels: Labels::from([("istio".to_string(), app.to_string())]),
            ip: Some("10.0.0.9".into()),
            node_name: None,
            ready: true,
            terminal: false,
            ports: vec![],
        }))
    };
    let gw = istio_object(
        Kind::Gateway,
        "istio-system",
        "gw",
        None,
        serde_json::json!({"selector": {"istio": "ingressgateway"}, "servers": [
            {"port": {"number": 8080, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}]}),
    )
    .unwrap();
    let class = ProxyClass::of_proxy(ProxyKind::Router, "istio-system", "gone-1", None).at_ip("10.0.0.9");
    let listener = (Scope::Class(class.id()), ResourceType::Listener, "0.0.0.0_8080".to_string());
    let mut h = Harness::new();
    h.step(vec![InputEvent::apply(gw), InputEvent::apply(Object::ProxyClass(class.clone()))], 0).unwrap();
    assert!(!h.materialized.contains_key(&listener), "no Pod at the IP yet: no labels, no Gateway");
    h.step(vec![InputEvent::apply(pod("istio-system", "ingress-1", "ingressgateway"))], 1).unwrap();
    let body = h.materialized.get(&listener).expect("the Pod at the IP is selected: the class gets the listener");
    {
        use prost::Message;
        let l = envoy_types::pb::envoy::config::listener::v3::Listener::decode(&body[..]).unwrap();
        assert_eq!(l.name, "0.0.0.0_8080");
    }
    h.step(vec![InputEvent::apply(pod("istio-system", "ingress-1", "other"))], 2).unwrap();
    assert!(!h.materialized.contains_key(&listener), "relabelled: the Gateway no longer selects it");
    // Two Pods at the IP: the one of the proxy's namespace.
    h.step(vec![InputEvent::apply(pod("shop", "x-1", "ingressgateway"))], 3).unwrap();
    assert!(!h.materialized.contains_key(&listener), "the shop Pod is not the proxy's");
    h.step(vec![InputEvent::apply(pod("istio-system", "ingress-1", "ingressgateway"))], 4).unwrap();
    assert!(h.materialized.contains_key(&listener), "relabelled back");
    // The named Pod appears: its labels win over the Pod at the IP.
    h.step(vec![InputEvent::apply(pod("istio-system", "gone-1", "other"))], 5).unwrap();
    assert!(!h.materialized.contains_key(&listener), "the named Pod counts first");
}

/// What a sidecar of namespace `ns` sees of a resource: its namespace's sidecar scope, its
/// namespace's, the sidecars', the shared one (as `cache::View::in_namespace`).
fn seen<'a>(h: &'a Harness, ns: &str, ty: ResourceType, name: &str) -> Option<&'a Arc<[u8]>> {
    [Scope::SidecarsIn(ns.into()), Scope::Namespace(ns.into()), Scope::Sidecars, Scope::All]
        .into_iter()
        .find_map(|scope| h.materialized.get(&(scope, ty, name.to_string())))
}

/// The virtual host names of route config `name` as a sidecar of `ns` sees it.
fn vhosts_seen(h: &Harness, ns: &str, name: &str) -> Vec<String> {
    use prost::Message;
    let Some(body) = seen(h, ns, ResourceType::RouteConfiguration, name) else { return Vec::new() };
    let rc = envoy_types::pb::envoy::config::route::v3::RouteConfiguration::decode(&body[..]).unwrap();
    rc.virtual_hosts.into_iter().map(|v| v.name).collect()
}

/// Service `networking.istio.io/exportTo` and ServiceEntry `exportTo`: a host exported to some
/// namespaces only has its cluster, assignment, virtual host and TCP listener in those
/// namespaces' views, nowhere else; a VirtualService for it contributes nothing elsewhere; a
/// change of one host's exportTo touches that host's resources only.
#[test]
fn export_to_hides_a_host_from_other_namespaces() {
    let tcp_service = |export_to: &[&str]| {
        Object::Service(Box::new(Service {
            namespace: "default".into(),
            name: "db".into(),
            ports: vec![ServicePort {
                name: "tcp".into(),
                port: 15000,
                protocol: Protocol::Tcp,
                target_port: TargetPort::Number(15000),
                app_protocol: None,
            }],
            selector: None,
            cluster_ip: Some("10.96.0.5".into()),
            external_name: None,
            publish_not_ready_addresses: false,
            export_to: export_to.iter().map(|s| s.to_string()).collect(),
        }))
    };
    let entry = |export_to: &[&str]| {
        istio_object(
            Kind::ServiceEntry,
            "shop",
            "ext",
            None,
            serde_json::json!({"hosts": ["api.example.com"], "resolution": "STATIC", "exportTo": export_to,
                "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
                "endpoints": [{"address": "10.1.0.1"}]}),
        )
        .unwrap()
    };
    let vs = istio_object(
        Kind::VirtualService,
        "default",
        "reviews",
        None,
        serde_json::json!({"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "ratings"}}]}]}),
    )
    .unwrap();
    let reviews = "outbound|80||reviews.default.svc.cluster.local";
    let ratings = "outbound|80||ratings.default.svc.cluster.local";
    let api = "outbound|80||api.example.com";
    let mut h = Harness::new();
    h.step(
        vec![
            InputEvent::apply(http_service("default", "reviews", &["."])),
            InputEvent::apply(http_service("default", "ratings", &[])),
            InputEvent::apply(tcp_service(&["."])),
            InputEvent::apply(entry(&["."])),
            InputEvent::apply(vs),
        ],
        0,
    )
    .unwrap();
    for ty in [ResourceType::Cluster, ResourceType::ClusterLoadAssignment] {
        assert!(seen(&h, "default", ty, reviews).is_some(), "{ty:?}: reviews is default's");
        assert!(seen(&h, "shop", ty, reviews).is_none(), "{ty:?}: reviews is hidden from shop");
        assert!(seen(&h, "shop", ty, ratings).is_some() && seen(&h, "default", ty, ratings).is_some());
        assert!(seen(&h, "shop", ty, api).is_some(), "{ty:?}: the entry is shop's");
        assert!(seen(&h, "default", ty, api).is_none(), "{ty:?}: the entry is hidden from default");
    }
    assert!(!h.materialized.contains_key(&(Scope::All, ResourceType::Cluster, reviews.into())));
    {
        use prost::Message;
        let body = seen(&h, "shop", ResourceType::ClusterLoadAssignment, api).unwrap();
        let cla = envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment::decode(&body[..]).unwrap();
        assert_eq!(cla.cluster_name, api);
        assert_eq!(cla.endpoints.iter().map(|l| l.lb_endpoints.len()).sum::<usize>(), 1, "the entry's endpoint");
    }
    assert_eq!(
        vhosts_seen(&h, "default", "80"),
        ["ratings.default.svc.cluster.local:80", "reviews.default.svc.cluster.local:80"]
    );
    assert_eq!(vhosts_seen(&h, "shop", "80"), ["api.example.com:80", "ratings.default.svc.cluster.local:80"]);
    assert!(seen(&h, "default", ResourceType::Listener, "10.96.0.5_15000").is_some(), "db's listener");
    assert!(seen(&h, "shop", ResourceType::Listener, "10.96.0.5_15000").is_none(), "no listener for hidden db");
    // Exported to shop by name instead: the views swap.
    h.step(vec![InputEvent::apply(http_service("default", "reviews", &["shop"]))], 1).unwrap();
    assert!(seen(&h, "default", ResourceType::Cluster, reviews).is_none());
    assert!(seen(&h, "shop", ResourceType::Cluster, reviews).is_some());
    assert_eq!(
        vhosts_seen(&h, "shop", "80"),
        ["api.example.com:80", "ratings.default.svc.cluster.local:80", "reviews.default.svc.cluster.local:80"]
    );
    assert_eq!(vhosts_seen(&h, "default", "80"), ["ratings.default.svc.cluster.local:80"]);
    // `~`: nobody; `*`: everybody, in the shared scopes again.
    h.step(vec![InputEvent::apply(http_service("default", "reviews", &["~"]))], 2).unwrap();
    assert!(seen(&h, "default", ResourceType::Cluster, reviews).is_none());
    assert!(seen(&h, "shop", ResourceType::Cluster, reviews).is_none());
    h.step(vec![InputEvent::apply(http_service("default", "reviews", &["*"])), InputEvent::apply(tcp_service(&[]))], 3)
        .unwrap();
    assert!(h.materialized.contains_key(&(Scope::All, ResourceType::Cluster, reviews.into())));
    assert!(h.materialized.contains_key(&(Scope::Sidecars, ResourceType::Listener, "10.96.0.5_15000".into())));
    assert_eq!(vhosts_seen(&h, "default", "80"), vhosts_seen(&h, "shop", "80")[1..]);
}

/// Locality load balancing: with outlier detection, a cluster's assignment is computed per
/// locality of the connected proxies (istiod's `applyLocalityFailover`: same zone P0, same
/// region P1 here); it comes and goes with the proxies of that locality and with the rule's
/// outlier detection; a namespace whose own rule has none gets an assignment of its own, which
/// hides the located one for its proxies.
#[test]
fn located_assignments_follow_proxy_localities_and_the_rule() {
    use meshflow::cache::View;
    use prost::Message;
    let svc = Object::Service(Box::new(Service {
        selector: Some(Labels::from([("app".to_string(), "web".to_string())])),
        ..match http_service("default", "web", &[]) {
            Object::Service(s) => *s,
            _ => unreachable!(),
        }
    }));
    let pod = |name: &str, ip: &str, node: &str| {
        Object::Pod(std::sync::Arc::new(Pod {
            namespace: "default".into(),
            name: name.into(),
            labels: Labels::from([("app".to_string(), "web".to_string())]),
            ip: Some(ip.into()),
            node_name: Some(node.into()),
            ready: true,
            terminal: false,
            ports: vec![],
        }))
    };
    let node = |name: &str, zone: &str| {
        Object::Node(Node {
            name: name.into(),
            labels: Labels::from([
                ("topology.kubernetes.io/region".to_string(), "r1".to_string()),
                ("topology.kubernetes.io/zone".to_string(), zone.to_string()),
            ]),
        })
    };
    let rule = |namespace: &str, policy: serde_json::Value| {
        istio_object(
            Kind::DestinationRule,
            namespace,
            "web",
            None,
            serde_json::json!({"host": "web.default.svc.cluster.local", "trafficPolicy": policy}),
        )
        .unwrap()
    };
    let located = |namespace: &str, locality: &str| {
        Object::ProxyLocality(ProxyLocality {
            namespace: namespace.into(),
            locality: locality.into(),
            labels: Labels::new(),
        })
    };
    const NAME: &str = "outbound|80||web.default.svc.cluster.local";
    // (zone, priority) per LocalityLbEndpoints of the assignment in `scope`, if any.
    let priorities = |h: &Harness, scope: Scope| -> Option<Vec<(String, u32)>> {
        let body = h.materialized.get(&(scope, ResourceType::ClusterLoadAssignment, NAME.into()))?;
        let cla = envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment::decode(&body[..]).unwrap();
        Some(cla.endpoints.iter().map(|l| (l.locality.clone().unwrap_or_default().zone, l.priority)).collect())
    };
    let z = |zone: &str, p: u32| (zone.to_string(), p);
    let od = serde_json::json!({"outlierDetection": {"consecutive5xxErrors": 1}});
    let mut h = Harness::new();
    h.step(
        vec![
            InputEvent::apply(svc),
            InputEvent::apply(pod("web-1", "10.0.0.1", "node-a")),
            InputEvent::apply(pod("web-2", "10.0.0.2", "node-b")),
            InputEvent::apply(node("node-a", "z1")),
            InputEvent::apply(node("node-b", "z2")),
            InputEvent::apply(rule("default", od.clone())),
            InputEvent::apply(located("default", "r1/z1")),
        ],
        0,
    )
    .unwrap();
    assert_eq!(priorities(&h, Scope::Locality("r1/z1".into())), Some(vec![z("z1", 0), z("z2", 1)]));
    assert_eq!(priorities(&h, Scope::All), Some(vec![z("z1", 0), z("z2", 0)]), "the shared one stays flat");
    h.step(vec![InputEvent::apply(located("shop", "r1/z2"))], 1).unwrap();
    assert_eq!(priorities(&h, Scope::Locality("r1/z2".into())), Some(vec![z("z1", 1), z("z2", 0)]));
    // The last proxy of a locality gone, so is its assignment.
    h.step(vec![InputEvent::delete(located("default", "r1/z1").key())], 2).unwrap();
    assert_eq!(priorities(&h, Scope::Locality("r1/z1".into())), None);
    // shop's own rule without outlier detection: shop's proxies get a flat assignment that
    // hides the default context's located one.
    let class = Object::ProxyClass(ProxyClass {
        kind: ProxyKind::Sidecar,
        namespace: "shop".into(),
        labels: ClassLabels::Given(Labels::new()),
    });
    h.step(
        vec![
            InputEvent::apply(class),
            InputEvent::apply(rule("shop", serde_json::json!({"loadBalancer": {"simple": "RANDOM"}}))),
        ],
        3,
    )
    .unwrap();
    assert_eq!(priorities(&h, Scope::Namespace("shop".into())), Some(vec![z("z1", 0), z("z2", 0)]));
    let cache = meshflow::cache::Cache::new([]);
    let changes = h
        .materialized
        .iter()
        .map(|((scope, ty, name), body)| meshflow::engine::ResourceChange {
            scope: scope.clone(),
            ty: *ty,
            name: name.clone(),
            body: Some(body.clone()),
        })
        .collect();
    cache.apply(&ResourceDelta { time: 0, diagnostics: vec![], changes, pod_localities: vec![] });
    let seen = |view: View| {
        let body = cache.get(&view, ResourceType::ClusterLoadAssignment, NAME).unwrap().body.clone();
        let cla = envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment::decode(&body[..]).unwrap();
        cla.endpoints.iter().map(|l| l.priority).collect::<Vec<_>>()
    };
    let none = Labels::new();
    assert_eq!(seen(View::sidecar().in_namespace("shop").located("r1/z2", &none)), [0, 0]);
    assert_eq!(seen(View::sidecar().in_namespace("default").located("r1/z2", &none)), [1, 0]);
    // shop's rule with (other) outlier detection: its own located assignment. (The same rule
    // as the default's would make no context of its own.)
    h.step(
        vec![InputEvent::apply(rule("shop", serde_json::json!({"outlierDetection": {"consecutive5xxErrors": 2}})))],
        4,
    )
    .unwrap();
    assert_eq!(priorities(&h, Scope::LocalityIn("r1/z2".into(), "shop".into())), Some(vec![z("z1", 1), z("z2", 0)]));
    assert_eq!(priorities(&h, Scope::Namespace("shop".into())), None, "shares the default's again");
    // Outlier detection gone from the default rule: no located assignment for it.
    h.step(vec![InputEvent::apply(rule("default", serde_json::json!({"loadBalancer": {"simple": "RANDOM"}})))], 5)
        .unwrap();
    assert_eq!(priorities(&h, Scope::Locality("r1/z2".into())), None);
    // `enabled: false` turns it off.
    h.step(
        vec![InputEvent::apply(rule(
            "shop",
            serde_json::json!({"outlierDetection": {"consecutive5xxErrors": 1},
                "loadBalancer": {"localityLbSetting": {"enabled": false}}}),
        ))],
        6,
    )
    .unwrap();
    assert!(!h.materialized.keys().any(|(s, _, _)| matches!(s, Scope::Locality(_) | Scope::LocalityIn(..))));
}

/// `failoverPriority`: the assignment is computed per (locality, labels) of the connected
/// proxies, ranks each pod's endpoint by the labels it shares with the proxy, and follows pod
/// relabels and proxies coming and going.
#[test]
fn prioritized_assignments_follow_proxy_labels_and_pod_labels() {
    use prost::Message;
    let svc = Object::Service(Box::new(Service {
        selector: Some(Labels::from([("app".to_string(), "web".to_string())])),
        ..match http_service("default", "web", &[]) {
            Object::Service(s) => *s,
            _ => unreachable!(),
        }
    }));
    let pod = |name: &str, ip: &str, version: &str| {
        Object::Pod(std::sync::Arc::new(Pod {
            namespace: "default".into(),
            name: name.into(),
            labels: Labels::from([
                ("app".to_string(), "web".to_string()),
                ("version".to_string(), version.to_string()),
                ("topology.istio.io/locality".to_string(), "r1.z1".to_string()),
            ]),
            ip: Some(ip.into()),
            node_name: None,
            ready: true,
            terminal: false,
            ports: vec![],
        }))
    };
    let rule = istio_object(
        Kind::DestinationRule,
        "default",
        "web",
        None,
        serde_json::json!({"host": "web.default.svc.cluster.local", "trafficPolicy": {
            "outlierDetection": {"consecutive5xxErrors": 1},
            "loadBalancer": {"localityLbSetting": {"failoverPriority": ["version"]}}}}),
    )
    .unwrap();
    let proxy = |version: &str| {
        Object::ProxyLocality(ProxyLocality {
            namespace: "default".into(),
            locality: "r1/z1".into(),
            labels: Labels::from([("version".to_string(), version.to_string())]),
        })
    };
    const NAME: &str = "outbound|80||web.default.svc.cluster.local";
    // (priority, endpoint IPs) per LocalityLbEndpoints of the assignment in `scope`, if any.
    let ranked = |h: &Harness, scope: Scope| -> Option<Vec<(u32, Vec<String>)>> {
        use envoy_types::pb::envoy::config::core::v3::address::Address;
        use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
        let body = h.materialized.get(&(scope, ResourceType::ClusterLoadAssignment, NAME.into()))?;
        let cla = envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment::decode(&body[..]).unwrap();
        Some(
            cla.endpoints
                .iter()
                .map(|l| {
                    let ips = l
                        .lb_endpoints
                        .iter()
                        .filter_map(|e| match &e.host_identifier {
                            Some(HostIdentifier::Endpoint(ep)) => match ep.address.as_ref()?.address.as_ref()? {
                                Address::SocketAddress(s) => Some(s.address.clone()),
                                _ => None,
                            },
                            _ => None,
                        })
                        .collect();
                    (l.priority, ips)
                })
                .collect(),
        )
    };
    let at = |version: &str| Scope::Prioritized("r1/z1".into(), format!("version={version}"));
    let ips = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut h = Harness::new();
    h.step(
        vec![
            InputEvent::apply(svc),
            InputEvent::apply(pod("web-1", "10.0.0.1", "v1")),
            InputEvent::apply(pod("web-2", "10.0.0.2", "v2")),
            InputEvent::apply(pod("web-3", "10.0.0.3", "v1")),
            InputEvent::apply(rule),
            InputEvent::apply(proxy("v1")),
        ],
        0,
    )
    .unwrap();
    assert_eq!(ranked(&h, at("v1")), Some(vec![(0, ips(&["10.0.0.1", "10.0.0.3"])), (1, ips(&["10.0.0.2"]))]));
    assert_eq!(ranked(&h, Scope::Locality("r1/z1".into())), None, "not per locality alone");
    h.step(vec![InputEvent::apply(proxy("v2"))], 1).unwrap();
    assert_eq!(ranked(&h, at("v2")), Some(vec![(0, ips(&["10.0.0.2"])), (1, ips(&["10.0.0.1", "10.0.0.3"]))]));
    // web-3 relabelled v2: both assignments change, and nothing else.
    h.step(vec![InputEvent::apply(pod("web-3", "10.0.0.3", "v2"))], 2).unwrap();
    assert_eq!(ranked(&h, at("v1")), Some(vec![(0, ips(&["10.0.0.1"])), (1, ips(&["10.0.0.2", "10.0.0.3"]))]));
    assert_eq!(ranked(&h, at("v2")), Some(vec![(0, ips(&["10.0.0.2", "10.0.0.3"])), (1, ips(&["10.0.0.1"]))]));
    let mut changed: Vec<Scope> = h.last.iter().map(|(s, _, _)| s.clone()).collect();
    changed.sort();
    assert_eq!(changed, [at("v1"), at("v2")]);
    // The last proxy labelled v1 gone, so is its assignment.
    h.step(vec![InputEvent::delete(proxy("v1").key())], 3).unwrap();
    assert_eq!(ranked(&h, at("v1")), None);
    assert!(ranked(&h, at("v2")).is_some());
    // Two pods at one IP, v1 and v2, and subsets: the v1 subset's endpoint at that IP goes with
    // the v1 pod's labels only (the step checks the engine against the reference).
    let with_subsets = istio_object(
        Kind::DestinationRule,
        "default",
        "web",
        None,
        serde_json::json!({"host": "web.default.svc.cluster.local", "trafficPolicy": {
            "outlierDetection": {"consecutive5xxErrors": 1},
            "loadBalancer": {"localityLbSetting": {"failoverPriority": ["version"]}}},
            "subsets": [{"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}}]}),
    )
    .unwrap();
    h.step(vec![InputEvent::apply(pod("web-4", "10.0.0.1", "v2")), InputEvent::apply(with_subsets)], 4).unwrap();
    let subset = |name: &str| {
        let key = (
            at("v2"),
            ResourceType::ClusterLoadAssignment,
            format!("outbound|80|{name}|web.default.svc.cluster.local"),
        );
        assert!(h.materialized.contains_key(&key), "{key:?}");
    };
    subset("v1");
    subset("v2");
}

/// The cost of locality load balancing is per (locality of connected proxies) × (cluster whose
/// rule needs it): a new locality adds one assignment per such cluster and nothing else; an
/// endpoint change of such a cluster re-encodes its assignment once per locality (plus the
/// shared one); one of a cluster without outlier detection costs its shared assignment only.
#[test]
fn located_work_is_per_locality_and_affected_cluster() {
    let services = 40;
    let pod = |svc: usize, i: usize| {
        Object::Pod(std::sync::Arc::new(Pod {
            namespace: "default".into(),
            name: format!("s{svc}-{i}"),
            labels: Labels::from([("app".to_string(), format!("s{svc}"))]),
            ip: Some(format!("10.1.{svc}.{i}")),
            node_name: Some(NODES[i % 2].into()),
            ready: true,
            terminal: false,
            ports: vec![],
        }))
    };
    let mut events = Vec::new();
    for (n, zone) in NODES.iter().zip(["z1", "z2"]) {
        events.push(InputEvent::apply(Object::Node(Node {
            name: n.to_string(),
            labels: Labels::from([
                ("topology.kubernetes.io/region".to_string(), "r1".to_string()),
                ("topology.kubernetes.io/zone".to_string(), zone.to_string()),
            ]),
        })));
    }
    for svc in 0..services {
        let Object::Service(mut s) = http_service("default", &format!("s{svc}"), &[]) else { unreachable!() };
        s.selector = Some(Labels::from([("app".to_string(), format!("s{svc}"))]));
        events.push(InputEvent::apply(Object::Service(s)));
        events.extend((0..3).map(|i| InputEvent::apply(pod(svc, i))));
        // Half of the services have outlier detection.
        if svc % 2 == 0 {
            let dr = istio_object(
                Kind::DestinationRule,
                "default",
                &format!("s{svc}"),
                None,
                serde_json::json!({"host": format!("s{svc}.default.svc.cluster.local"),
                    "trafficPolicy": {"outlierDetection": {"consecutive5xxErrors": 1}}}),
            )
            .unwrap();
            events.push(InputEvent::apply(dr));
        }
    }
    let mut h = Harness::new();
    h.step(events, 0).unwrap();
    let located = |l: &str| {
        Object::ProxyLocality(ProxyLocality { namespace: "default".into(), locality: l.into(), labels: Labels::new() })
    };
    let mut step = 1;
    for l in ["r1/z1", "r1/z2", "r2/z1"] {
        let t = std::time::Instant::now();
        h.step(vec![InputEvent::apply(located(l))], step).unwrap();
        step += 1;
        eprintln!("locality {l} added: {} changes in {:?} (engine and reference)", h.last.len(), t.elapsed());
        assert_eq!(h.last.len(), services / 2, "one assignment per cluster with outlier detection");
        assert!(
            h.last
                .iter()
                .all(|(s, ty, _)| *s == Scope::Locality(l.to_string()) && *ty == ResourceType::ClusterLoadAssignment)
        );
        // A second proxy of a known locality (another namespace) adds nothing.
        h.step(
            vec![InputEvent::apply(Object::ProxyLocality(ProxyLocality {
                namespace: "shop".into(),
                locality: l.to_string(),
                labels: Labels::from([("app".to_string(), "other".to_string())]),
            }))],
            step,
        )
        .unwrap();
        step += 1;
        assert!(h.last.is_empty(), "a known locality costs nothing: {:?}", h.last);
    }
    // An endpoint of a cluster with outlier detection: its shared assignment and one per locality.
    let Object::Pod(mut p) = pod(0, 1) else { unreachable!() };
    std::sync::Arc::make_mut(&mut p).ready = false;
    h.step(vec![InputEvent::apply(Object::Pod(p))], step).unwrap();
    assert_eq!(h.last.len(), 1 + 3, "{:?}", h.last);
    let Object::Pod(mut p) = pod(1, 1) else { unreachable!() };
    std::sync::Arc::make_mut(&mut p).ready = false;
    h.step(vec![InputEvent::apply(Object::Pod(p))], step + 1).unwrap();
    assert_eq!(h.last.len(), 1, "a cluster without outlier detection: {:?}", h.last);
}

/// A slice changed endpoint by endpoint, as the endpoint controller does, equals the reference
/// after each change, and so does every change that takes the other path (ports or service
/// changed): readiness flips, an endpoint gone, one that repeats another's address for another
/// Pod, addresses moved, a port added, the service renamed.
#[test]
fn a_slice_changed_endpoint_by_endpoint_equals_the_reference() {
    let svc = |name: &str| http_service("default", name, &[]);
    let pod = |name: &str, ip: &str, version: &str| {
        Object::Pod(Arc::new(Pod {
            namespace: "default".into(),
            name: name.into(),
            labels: Labels::from([("version".to_string(), version.to_string())]),
            ip: Some(ip.into()),
            node_name: None,
            ready: true,
            terminal: false,
            ports: vec![],
        }))
    };
    let subsets = serde_json::json!({"host": "web", "subsets": [
        {"name": "v1", "labels": {"version": "v1"}},
        {"name": "v2", "labels": {"version": "v2"}}
    ]});
    let rule = istio_object(Kind::DestinationRule, "default", "web", None, subsets).expect("a valid rule");
    fn ep(ips: &[&str], ready: bool, pod: Option<&str>) -> SliceEndpoint {
        SliceEndpoint { addresses: ips.iter().map(|s| s.to_string()).collect(), ready, pod: pod.map(String::from) }
    }
    let mut slice = EndpointSlice {
        namespace: "default".into(),
        name: "web-abc".into(),
        service_name: Some("web".into()),
        ports: vec![SlicePort { name: "http".into(), port: Some(8080), protocol: Protocol::Tcp }],
        endpoints: vec![
            ep(&["10.0.0.1"], true, Some("a")),
            ep(&["10.0.0.2"], true, Some("b")),
            ep(&["10.0.0.3"], true, Some("c")),
        ],
    };
    let mut h = Harness::new();
    h.step(
        vec![
            InputEvent::apply(svc("web")),
            InputEvent::apply(svc("api")),
            InputEvent::apply(rule),
            InputEvent::apply(pod("a", "10.0.0.1", "v1")),
            InputEvent::apply(pod("b", "10.0.0.2", "v2")),
            InputEvent::apply(pod("c", "10.0.0.3", "v1")),
            InputEvent::apply(Object::EndpointSlice(Arc::new(slice.clone()))),
        ],
        0,
    )
    .unwrap();
    let cla = |h: &Harness, subset: &str| {
        seen(h, "", ResourceType::ClusterLoadAssignment, &format!("outbound|80|{subset}|web.default.svc.cluster.local"))
            .map(|b| b.len())
    };
    assert!(cla(&h, "").is_some() && cla(&h, "v2").is_some(), "the slice's assignments are served");
    type Change = fn(&mut EndpointSlice);
    let changes: Vec<(&str, Change)> = vec![
        ("a readiness flip", |s| s.endpoints[1].ready = false),
        ("and back", |s| s.endpoints[1].ready = true),
        ("an endpoint gone", |s| drop(s.endpoints.remove(0))),
        ("another Pod at an address already there", |s| s.endpoints.push(ep(&["10.0.0.3"], true, Some("b")))),
        ("the first of the two at that address gone", |s| drop(s.endpoints.remove(1))),
        ("an endpoint's addresses moved", |s| s.endpoints[0].addresses = vec!["10.0.0.9".into(), "10.0.0.2".into()]),
        ("a not-ready endpoint added", |s| s.endpoints.push(ep(&["10.0.0.4"], false, Some("c")))),
        ("the same endpoint twice", |s| s.endpoints.push(s.endpoints[0].clone())),
        ("one of the twins gone", |s| drop(s.endpoints.pop())),
        ("a port added", |s| {
            s.ports.push(SlicePort { name: "grpc".into(), port: Some(9090), protocol: Protocol::Tcp })
        }),
        ("a readiness flip with two ports", |s| s.endpoints[0].ready = false),
        ("the slice moved to another service", |s| s.service_name = Some("api".into())),
        ("a readiness flip there", |s| s.endpoints[0].ready = true),
        ("back to its service, one port", |s| {
            s.service_name = Some("web".into());
            s.ports.truncate(1);
        }),
    ];
    for (step, (what, change)) in changes.into_iter().enumerate() {
        change(&mut slice);
        h.step(vec![InputEvent::apply(Object::EndpointSlice(Arc::new(slice.clone())))], step + 1)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
    }
}
