//! Locality load balancing end to end: `meshflow serve` and two real Envoys whose bootstrap
//! nodes sit in two zones of one region, real HTTP.
//!
//! Fixture: Service `reviews` in `default` with two endpoints, `z1` and `z2`, each a
//! [`Backend`] on its own loopback IP with a Pod whose `topology.istio.io/locality` label puts
//! it in `r1/z1` or `r1/z2`; a DestinationRule with outlier detection (so locality failover
//! applies, the mesh default enabling locality LB). As istio.io's "Locality failover" task:
//! each proxy sends every request to its own zone; when its zone's endpoint fails (ejected
//! by outlier detection), traffic fails over to the other zone.
//!
//! And `failoverPriority`: two versions in one zone, each proxy sends to the version its own
//! labels (node metadata `LABELS`) name, and fails over to the other.

use crate::support;

use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde_json::Value;
use support::{
    Backend, Envoy, Meshflow, WAIT, dynamic_locality_endpoints, eventually, free_port, http_request, loopback_ip,
};

const CONVERGE: Duration = Duration::from_secs(20);

fn fixture(port: u16, backends: &[(&Backend, &str)]) -> String {
    let pods: Vec<(&Backend, String, String)> = backends
        .iter()
        .map(|(b, zone)| (*b, format!("reviews-{zone}"), format!("topology.istio.io/locality: r1.{zone}")))
        .collect();
    with_rule(port, &pods, "{}")
}

/// Service `reviews`, a DestinationRule with outlier detection and `locality_lb` as its
/// `localityLbSetting` (a YAML flow map), and one Pod per (backend, name, labels besides
/// `app: reviews`, as flow-map entries).
fn with_rule(port: u16, pods: &[(&Backend, String, String)], locality_lb: &str) -> String {
    let target = pods[0].0.addr.port();
    let mut out = format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: reviews, namespace: default}}
spec:
  selector: {{app: reviews}}
  ports:
  - {{name: http, protocol: TCP, port: {port}, targetPort: {target}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: default}}
spec:
  host: reviews.default.svc.cluster.local
  trafficPolicy:
    outlierDetection:
      consecutive5xxErrors: 1
      interval: 1s
      baseEjectionTime: 1m
      maxEjectionPercent: 100
    loadBalancer:
      localityLbSetting: {locality_lb}
"#
    );
    for (b, name, labels) in pods {
        out.push_str(&format!(
            r#"---
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: default
  labels: {{app: reviews, {labels}}}
spec:
  containers:
  - {{name: reviews, image: reviews, ports: [{{containerPort: {target}}}]}}
status:
  phase: Running
  podIP: "{ip}"
  conditions: [{{type: Ready, status: "True"}}]
"#,
            ip = b.ip()
        ));
    }
    out
}

/// An Envoy for a sidecar in `r1/<zone>`: `meshflow bootstrap`, with `node.locality` set as
/// Envoy reports it to its xDS server.
fn envoy_in(meshflow: &Meshflow, zone: &str, bind: Ipv4Addr) -> Envoy {
    envoy_with(meshflow, zone, bind, None)
}

/// The same, with node metadata `LABELS` (as istio-agent sends the pod's labels).
fn envoy_with(meshflow: &Meshflow, zone: &str, bind: Ipv4Addr, labels: Option<Value>) -> Envoy {
    let admin_port = free_port(Ipv4Addr::LOCALHOST);
    let node_id = format!("sidecar~{bind}~productpage-{zone}-{}.default~default.svc.cluster.local", bind.octets()[3]);
    let yaml = meshflow.bootstrap(&node_id, bind, admin_port);
    let mut bootstrap: Value = serde_yaml_ng::from_str(&yaml).expect("bootstrap YAML");
    bootstrap["node"]["locality"] = serde_json::json!({"region": "r1", "zone": zone});
    if let Some(labels) = labels {
        bootstrap["node"]["metadata"]["LABELS"] = labels;
    }
    Envoy::start(&serde_json::to_string(&bootstrap).unwrap())
}

/// (zone, priority, addresses) per LocalityLbEndpoints of the cluster's assignment in Envoy.
fn priorities(envoy: &Envoy, cluster: &str) -> Vec<(String, u64, usize)> {
    let dump = envoy.config_dump();
    let mut out: Vec<_> = dynamic_locality_endpoints(&dump, cluster)
        .into_iter()
        .map(|le| {
            let zone = le["locality"]["zone"].as_str().unwrap_or_default().to_string();
            let n = le["lb_endpoints"].as_array().map_or(0, Vec::len);
            (zone, le["priority"].as_u64().unwrap_or(0), n)
        })
        .collect();
    out.sort();
    out
}

fn who(proxy: SocketAddr, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let r = http_request(proxy, "GET", "reviews", "/", &[]).expect("an HTTP answer from Envoy");
            format!("{}:{}", r.header("x-backend").unwrap_or("-"), r.status)
        })
        .collect()
}

#[test]
fn each_proxy_prefers_its_zone_and_fails_over_when_its_endpoint_is_ejected() {
    let (z1, z2) = eventually("two backends on one port", WAIT, || {
        let a = loopback_ip();
        let port = free_port(a);
        Some((Backend::start(a, port, "z1").ok()?, Backend::start(loopback_ip(), port, "z2").ok()?))
    });
    let (bind1, bind2) = (loopback_ip(), loopback_ip());
    let port = free_port(bind1);
    let config = tempfile::tempdir().expect("tempdir");
    fs::write(config.path().join("reviews.yaml"), fixture(port, &[(&z1, "z1"), (&z2, "z2")])).unwrap();
    let meshflow = Meshflow::serve(config.path());
    let in_z1 = envoy_in(&meshflow, "z1", bind1);
    let in_z2 = envoy_in(&meshflow, "z2", bind2);
    let cluster = format!("outbound|{port}||reviews.default.svc.cluster.local");
    // Each proxy's assignment ranks its own zone first (priority 0), the other zone of its
    // region next (1), as istiod's applyLocalityFailover.
    for (envoy, own, other) in [(&in_z1, "z1", "z2"), (&in_z2, "z2", "z1")] {
        let want = {
            let mut w = vec![(own.to_string(), 0, 1), (other.to_string(), 1, 1)];
            w.sort();
            w
        };
        eventually(&format!("the proxy in {own} to rank its zone first"), CONVERGE, || {
            (priorities(envoy, &cluster) == want).then_some(())
        });
    }
    for bind in [bind1, bind2] {
        eventually("the proxy to answer", CONVERGE, || {
            http_request(SocketAddr::from((bind, port)), "GET", "reviews", "/", &[]).ok().filter(|r| r.status == 200)
        });
    }
    // Without locality balancing, least-request would spread 20 requests over both zones.
    let from_z1 = who(SocketAddr::from((bind1, port)), 20);
    assert!(from_z1.iter().all(|w| w == "z1:200"), "the proxy in z1 sends to z1: {from_z1:?}");
    let from_z2 = who(SocketAddr::from((bind2, port)), 20);
    assert!(from_z2.iter().all(|w| w == "z2:200"), "the proxy in z2 sends to z2: {from_z2:?}");

    // z1's endpoint fails: outlier detection ejects it after its first 5xx, and the proxy in
    // z1 fails over to z2 (priority 1); the proxy in z2 is not affected.
    z1.set_status(503);
    eventually("the proxy in z1 to fail over to z2", CONVERGE, || {
        let w = who(SocketAddr::from((bind1, port)), 5);
        w.iter().all(|w| w == "z2:200").then_some(())
    });
    let failed_over = who(SocketAddr::from((bind1, port)), 20);
    assert!(failed_over.iter().all(|w| w == "z2:200"), "z1 ejected, all to z2: {failed_over:?}");
    assert!(z1.received() > 0, "z1 never got a request: the failover proves nothing");

    // z2's endpoint removed: the proxy in z2 fails over to z1 (which answers 200 again).
    z1.set_status(200);
    // Replaced as editors do (a temporary file renamed over), so the source never reads half of it.
    let tmp = config.path().join(".reviews.yaml.tmp");
    fs::write(&tmp, fixture(port, &[(&z1, "z1")])).unwrap();
    fs::rename(&tmp, config.path().join("reviews.yaml")).unwrap();
    eventually("the proxy in z2 to send to z1 once z2's endpoint is gone", CONVERGE, || {
        let w = who(SocketAddr::from((bind2, port)), 5);
        w.iter().all(|w| w == "z1:200").then_some(())
    });
    assert_eq!(priorities(&in_z2, &cluster), [("z1".to_string(), 0, 1)], "one locality left: priority 0");
}

/// `failoverPriority: [version]`: two endpoints of one zone, versions v1 and v2; a proxy whose
/// labels say `version: v1` sends only to v1 (priority 0), one with `version: v2` only to v2,
/// and each fails over to the other version when its own is ejected (istiod's
/// `applyFailoverPriorities`; without it, least-request would spread over both).
#[test]
fn failover_priority_prefers_endpoints_that_share_the_proxys_labels() {
    let (v1, v2) = eventually("two backends on one port", WAIT, || {
        let a = loopback_ip();
        let port = free_port(a);
        Some((Backend::start(a, port, "v1").ok()?, Backend::start(loopback_ip(), port, "v2").ok()?))
    });
    let (bind1, bind2) = (loopback_ip(), loopback_ip());
    let port = free_port(bind1);
    let config = tempfile::tempdir().expect("tempdir");
    let pods: Vec<(&Backend, String, String)> = [(&v1, "v1"), (&v2, "v2")]
        .into_iter()
        .map(|(b, v)| (b, format!("reviews-{v}"), format!("topology.istio.io/locality: r1.z1, version: {v}")))
        .collect();
    fs::write(config.path().join("reviews.yaml"), with_rule(port, &pods, "{failoverPriority: [version]}")).unwrap();
    let meshflow = Meshflow::serve(config.path());
    let labels = |v: &str| Some(serde_json::json!({"app": "productpage", "version": v}));
    let wants_v1 = envoy_with(&meshflow, "z1", bind1, labels("v1"));
    let wants_v2 = envoy_with(&meshflow, "z1", bind2, labels("v2"));
    let cluster = format!("outbound|{port}||reviews.default.svc.cluster.local");
    // One locality split in two by version: (zone, priority, endpoints).
    for envoy in [&wants_v1, &wants_v2] {
        eventually("the assignment split by version", CONVERGE, || {
            (priorities(envoy, &cluster) == [("z1".to_string(), 0, 1), ("z1".to_string(), 1, 1)]).then_some(())
        });
    }
    for (bind, own, other) in [(bind1, "v1", "v2"), (bind2, "v2", "v1")] {
        eventually("the proxy to answer", CONVERGE, || {
            http_request(SocketAddr::from((bind, port)), "GET", "reviews", "/", &[]).ok().filter(|r| r.status == 200)
        });
        let got = who(SocketAddr::from((bind, port)), 20);
        assert!(got.iter().all(|w| *w == format!("{own}:200")), "the proxy labelled {own} sends to {own}: {got:?}");
        assert!(!got.iter().any(|w| w.starts_with(other)));
    }
    // v1 fails: the v1 proxy fails over to v2; the v2 proxy is not affected.
    v1.set_status(503);
    eventually("the v1 proxy to fail over to v2", CONVERGE, || {
        who(SocketAddr::from((bind1, port)), 5).iter().all(|w| w == "v2:200").then_some(())
    });
    let from_v2 = who(SocketAddr::from((bind2, port)), 10);
    assert!(from_v2.iter().all(|w| w == "v2:200"), "{from_v2:?}");
}

/// A proxy that tells no locality (no `Node.locality`, no topology labels, as a sidecar whose
/// agent sends only its pod's labels) is placed by its Pod's Node, as istiod reads the
/// registry: the Pod named in its node id runs on a Node in `r1/z2`, so its assignment ranks
/// z2 first and its requests go there.
#[test]
fn a_proxy_without_locality_is_placed_by_its_pods_node() {
    let (z1, z2) = eventually("two backends on one port", WAIT, || {
        let a = loopback_ip();
        let port = free_port(a);
        Some((Backend::start(a, port, "z1").ok()?, Backend::start(loopback_ip(), port, "z2").ok()?))
    });
    let bind = loopback_ip();
    let port = free_port(bind);
    let config = tempfile::tempdir().expect("tempdir");
    let mut yaml = fixture(port, &[(&z1, "z1"), (&z2, "z2")]);
    yaml.push_str(&format!(
        r#"---
apiVersion: v1
kind: Node
metadata:
  name: node-b
  labels: {{topology.kubernetes.io/region: r1, topology.kubernetes.io/zone: z2}}
---
apiVersion: v1
kind: Pod
metadata:
  name: productpage-1
  namespace: default
  labels: {{app: productpage}}
spec:
  nodeName: node-b
  containers:
  - {{name: productpage, image: productpage}}
status:
  phase: Running
  podIP: "{bind}"
  conditions: [{{type: Ready, status: "True"}}]
"#
    ));
    fs::write(config.path().join("reviews.yaml"), yaml).unwrap();
    let meshflow = Meshflow::serve(config.path());
    let admin_port = free_port(Ipv4Addr::LOCALHOST);
    let node_id = format!("sidecar~{bind}~productpage-1.default~default.svc.cluster.local");
    let bootstrap_yaml = meshflow.bootstrap(&node_id, bind, admin_port);
    let mut bootstrap: Value = serde_yaml_ng::from_str(&bootstrap_yaml).expect("bootstrap YAML");
    assert!(bootstrap["node"].get("locality").is_none_or(Value::is_null), "the bootstrap tells no locality");
    bootstrap["node"]["metadata"]["LABELS"] = serde_json::json!({"app": "productpage"});
    let envoy = Envoy::start(&serde_json::to_string(&bootstrap).unwrap());
    let cluster = format!("outbound|{port}||reviews.default.svc.cluster.local");
    eventually("the proxy on node-b to rank z2 first", CONVERGE, || {
        (priorities(&envoy, &cluster) == [("z1".to_string(), 1, 1), ("z2".to_string(), 0, 1)]).then_some(())
    });
    eventually("the proxy to answer", CONVERGE, || {
        http_request(SocketAddr::from((bind, port)), "GET", "reviews", "/", &[]).ok().filter(|r| r.status == 200)
    });
    let got = who(SocketAddr::from((bind, port)), 20);
    assert!(got.iter().all(|w| w == "z2:200"), "the proxy in z2 (by its Pod's Node) sends to z2: {got:?}");
}
