//! State-of-the-world ADS (`StreamAggregatedResources`) end to end, against `meshflow serve` on
//! a config directory:
//! - a raw tonic client drives the protocol step by step: wildcard and by-name subscriptions,
//!   ACK, a NACK that is not answered with the same set again, proxyless gRPC resources;
//! - a real gRPC client (PyPI `grpcio`, installed by `scripts/ensure-python`) with
//!   `GRPC_XDS_BOOTSTRAP` pointing at meshflow resolves `xds:///<fqdn>:<port>` to gRPC
//!   backends on loopback, follows a VirtualService header match, and moves its calls when the
//!   VirtualService's weights shift.

use crate::support;

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, route, route_action};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind as ValueKind};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::Message;
use support::{Meshflow, WAIT, eventually, free_port, loopback_ip};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const RDS: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";

const REVIEWS: &str = "outbound|9080||reviews.default.svc.cluster.local";
const RATINGS: &str = "outbound|9080||ratings.default.svc.cluster.local";

/// Services `reviews` and `ratings` (HTTP, port 9080), each with one ready endpoint.
fn mesh_yaml(reviews_ips: &[&str]) -> String {
    let endpoints: String =
        reviews_ips.iter().map(|ip| format!("- addresses: [\"{ip}\"]\n  conditions: {{ready: true}}\n")).collect();
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: reviews, namespace: default}}
spec:
  clusterIP: 10.96.0.20
  selector: {{app: reviews}}
  ports:
  - {{name: http, protocol: TCP, port: 9080, targetPort: 9080}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: reviews-1, namespace: default, labels: {{kubernetes.io/service-name: reviews}}}}
addressType: IPv4
ports:
- {{name: http, protocol: TCP, port: 9080}}
endpoints:
{endpoints}---
apiVersion: v1
kind: Service
metadata: {{name: ratings, namespace: default}}
spec:
  clusterIP: 10.96.0.21
  selector: {{app: ratings}}
  ports:
  - {{name: http, protocol: TCP, port: 9080, targetPort: 9080}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: ratings-1, namespace: default, labels: {{kubernetes.io/service-name: ratings}}}}
addressType: IPv4
ports:
- {{name: http, protocol: TCP, port: 9080}}
endpoints:
- addresses: ["10.1.0.9"]
  conditions: {{ready: true}}
"#
    )
}

/// A raw state-of-the-world ADS stream.
struct Sotw {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: tonic::Streaming<DiscoveryResponse>,
    node: core::Node,
}

impl Sotw {
    async fn open(addr: SocketAddr, node_id: &str, metadata: &[(&str, &str)]) -> Sotw {
        let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}")).await.expect("connect");
        let (tx, rx) = mpsc::channel(16);
        let rx = client.stream_aggregated_resources(ReceiverStream::new(rx)).await.expect("open SotW stream");
        let fields = metadata
            .iter()
            .map(|(k, v)| (k.to_string(), Value { kind: Some(ValueKind::StringValue(v.to_string())) }))
            .collect();
        let node = core::Node { id: node_id.into(), metadata: Some(Struct { fields }), ..Default::default() };
        Sotw { tx, rx: rx.into_inner(), node }
    }

    async fn send(&self, type_url: &str, names: &[&str], nonce: &str, error: Option<&str>) {
        let req = DiscoveryRequest {
            node: Some(self.node.clone()),
            type_url: type_url.into(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            response_nonce: nonce.into(),
            error_detail: error.map(|m| RpcStatus { code: 3, message: m.into(), details: vec![] }),
            ..Default::default()
        };
        self.tx.send(req).await.expect("send request");
    }

    /// The next response, or None after `wait`.
    async fn next(&mut self, wait: Duration) -> Option<DiscoveryResponse> {
        match tokio::time::timeout(wait, self.rx.message()).await {
            Ok(r) => r.expect("stream healthy"),
            Err(_) => None,
        }
    }

    async fn expect(&mut self, type_url: &str) -> DiscoveryResponse {
        let r = self.next(WAIT).await.unwrap_or_else(|| panic!("no response for {type_url}"));
        assert_eq!(r.type_url, type_url, "{r:?}");
        r
    }
}

fn decoded<M: Message + Default>(r: &DiscoveryResponse) -> Vec<M> {
    r.resources.iter().map(|a| M::decode(&a.value[..]).expect("decodes as its type")).collect()
}

fn cluster_names(r: &DiscoveryResponse) -> Vec<String> {
    decoded::<Cluster>(r).into_iter().map(|c| c.name).collect()
}

fn serve(yaml: &str) -> (tempfile::TempDir, Meshflow) {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("mesh.yaml"), yaml).unwrap();
    let meshflow = Meshflow::serve(dir.path());
    (dir, meshflow)
}

const SIDECAR: &str = "sidecar~10.1.0.50~productpage-1.default~default.svc.cluster.local";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_cds_and_lds_by_name_eds_with_versions_and_acks() {
    let (_dir, meshflow) = serve(&mesh_yaml(&["10.1.0.7"]));
    let mut s = Sotw::open(meshflow.xds_addr, SIDECAR, &[]).await;

    s.send(CDS, &[], "", None).await;
    let cds = s.expect(CDS).await;
    assert_eq!(cluster_names(&cds), [RATINGS, REVIEWS], "the legacy wildcard: every cluster");
    assert!(!cds.version_info.is_empty() && !cds.nonce.is_empty());
    // The sidecar default: LEAST_REQUEST (the proxyless clusters differ, below).
    assert_eq!(decoded::<Cluster>(&cds)[0].lb_policy, cluster::LbPolicy::LeastRequest as i32);
    s.send(CDS, &[], &cds.nonce, None).await;
    assert!(s.next(Duration::from_millis(700)).await.is_none(), "an ACK calls for no response");

    s.send(EDS, &[REVIEWS], "", None).await;
    let eds = s.expect(EDS).await;
    let cla: Vec<ClusterLoadAssignment> = decoded(&eds);
    assert_eq!(cla.len(), 1, "by name: only the subscribed assignment");
    assert_eq!(cla[0].cluster_name, REVIEWS);
    let group = &cla[0].endpoints[0];
    assert!(group.locality.is_some(), "gRPC rejects a LocalityLbEndpoints without locality");
    assert!(group.load_balancing_weight.is_some_and(|w| w.value > 0));
    s.send(EDS, &[REVIEWS], &eds.nonce, None).await;

    s.send(LDS, &["*"], "", None).await;
    let lds = s.expect(LDS).await;
    let names: Vec<String> = decoded::<Listener>(&lds).into_iter().map(|l| l.name).collect();
    assert_eq!(names, ["0.0.0.0_9080"], "a sidecar gets sidecar listeners, no proxyless API listener");
    s.send(LDS, &["*"], &lds.nonce, None).await;

    // An endpoint change: the full EDS set again, with a new version; CDS stays quiet.
    fs::write(_dir.path().join("mesh.yaml"), mesh_yaml(&["10.1.0.7", "10.1.0.8"])).unwrap();
    let again = s.expect(EDS).await;
    assert_ne!(again.version_info, eds.version_info);
    assert_eq!(decoded::<ClusterLoadAssignment>(&again)[0].endpoints[0].lb_endpoints.len(), 2);
    s.send(EDS, &[REVIEWS], &again.nonce, None).await;
    assert!(s.next(Duration::from_millis(700)).await.is_none(), "nothing else changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nacked_set_is_logged_once_and_not_resent_until_it_changes() {
    let (dir, meshflow) = serve(&mesh_yaml(&["10.1.0.7"]));
    let mut s = Sotw::open(meshflow.xds_addr, SIDECAR, &[]).await;
    s.send(CDS, &[], "", None).await;
    let cds = s.expect(CDS).await;
    s.send(CDS, &[], &cds.nonce, Some("rejected for the test")).await;
    // An endpoint change does not touch the rejected clusters: they are not sent again.
    fs::write(dir.path().join("mesh.yaml"), mesh_yaml(&["10.1.0.7", "10.1.0.8"])).unwrap();
    assert!(s.next(Duration::from_secs(2)).await.is_none(), "the rejected set is not resent");
    let log = meshflow.log();
    let nacks: Vec<&str> = log.lines().filter(|l| l.contains("NACK") && l.contains("rejected for the test")).collect();
    assert_eq!(nacks.len(), 1, "one log line per NACK:\n{log}");
    assert!(nacks[0].contains("productpage-1.default"), "the line names the node: {}", nacks[0]);
    // A cluster changes (a DestinationRule policy): the new set goes out.
    let rule = "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews, namespace: default}\nspec:\n  host: reviews\n  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}\n";
    fs::write(dir.path().join("mesh.yaml"), mesh_yaml(&["10.1.0.7", "10.1.0.8"]) + rule).unwrap();
    let fixed = s.expect(CDS).await;
    assert_ne!(fixed.version_info, cds.version_info);
    let reviews = decoded::<Cluster>(&fixed).into_iter().find(|c| c.name == REVIEWS).unwrap();
    assert_eq!(reviews.lb_policy, cluster::LbPolicy::RoundRobin as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxyless_client_gets_api_listeners_route_configs_and_round_robin_clusters_by_name() {
    let (_dir, meshflow) = serve(&mesh_yaml(&["10.1.0.7"]));
    let mut s = Sotw::open(meshflow.xds_addr, "proxyless~10.1.0.51~app-1.default~default.svc.cluster.local", &[]).await;
    let fqdn_port = "reviews.default.svc.cluster.local:9080";
    s.send(LDS, &[fqdn_port, "0.0.0.0_9080"], "", None).await;
    let lds = s.expect(LDS).await;
    let listeners: Vec<Listener> = decoded(&lds);
    assert_eq!(listeners.len(), 1, "the sidecar listener is not in a proxyless client's view");
    let l = &listeners[0];
    assert_eq!(l.name, fqdn_port);
    let any = l.api_listener.as_ref().and_then(|a| a.api_listener.as_ref()).expect("an API listener");
    let manager = hcm::HttpConnectionManager::decode(&any.value[..]).unwrap();
    let Some(hcm::http_connection_manager::RouteSpecifier::Rds(rds)) = manager.route_specifier else { panic!() };
    assert_eq!(rds.route_config_name, REVIEWS, "istiod names it clusterKey(host, port)");
    let router = manager.http_filters.last().unwrap();
    assert_eq!(router.name, "envoy.filters.http.router");
    assert!(router.config_type.is_some(), "gRPC requires the router's typed config");
    s.send(LDS, &[fqdn_port, "0.0.0.0_9080"], &lds.nonce, None).await;

    s.send(RDS, &[REVIEWS], "", None).await;
    let rds = s.expect(RDS).await;
    let rc: Vec<RouteConfiguration> = decoded(&rds);
    assert_eq!(rc[0].name, REVIEWS);
    assert_eq!(rc[0].virtual_hosts.len(), 1);
    assert!(rc[0].virtual_hosts[0].domains.iter().any(|d| d == fqdn_port));
    let Some(route::Action::Route(action)) = &rc[0].virtual_hosts[0].routes[0].action else { panic!() };
    assert_eq!(action.cluster_specifier, Some(route_action::ClusterSpecifier::Cluster(REVIEWS.into())));

    s.send(CDS, &[REVIEWS], "", None).await;
    let cds = s.expect(CDS).await;
    let clusters: Vec<Cluster> = decoded(&cds);
    assert_eq!(clusters.len(), 1, "by name: the wildcard type is not a wildcard once named");
    assert_eq!(clusters[0].name, REVIEWS);
    assert_eq!(clusters[0].lb_policy, cluster::LbPolicy::RoundRobin as i32, "gRPC refuses LEAST_REQUEST");
    assert_eq!(clusters[0].eds_cluster_config.as_ref().unwrap().service_name, REVIEWS);
}

// ---------------------------------------------------------------------------------------
// A real gRPC client
// ---------------------------------------------------------------------------------------

/// The Python interpreter with `grpcio`, from `scripts/ensure-python` (installs it once).
fn python() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/ensure-python");
    let out = Command::new(&script).stderr(Stdio::inherit()).output().expect("run scripts/ensure-python");
    assert!(out.status.success(), "scripts/ensure-python failed ({})", out.status);
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn helper() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/grpc_xds.py")
}

/// A Python gRPC server answering its name, killed on drop.
struct GrpcBackend(Child);

impl GrpcBackend {
    fn start(python: &Path, addr: SocketAddr, name: &str) -> Option<GrpcBackend> {
        let mut child = Command::new(python)
            .arg(helper())
            .args(["serve", &addr.to_string(), name])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn python gRPC server");
        let mut line = String::new();
        let read = BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
        if read.is_ok() && line.trim() == "ready" {
            Some(GrpcBackend(child))
        } else {
            let _ = child.kill();
            let _ = child.wait();
            None
        }
    }
}

impl Drop for GrpcBackend {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn greeter_yaml(v1: Ipv4Addr, v2: Ipv4Addr, port: u16, weights: (u32, u32)) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: greeter, namespace: default}}
spec:
  clusterIP: 10.96.0.60
  selector: {{app: greeter}}
  ports:
  - {{name: grpc, protocol: TCP, port: 7070, targetPort: {port}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: greeter-1, namespace: default, labels: {{kubernetes.io/service-name: greeter}}}}
addressType: IPv4
ports:
- {{name: grpc, protocol: TCP, port: {port}}}
endpoints:
- addresses: ["{v1}"]
  conditions: {{ready: true}}
  targetRef: {{kind: Pod, name: greeter-v1}}
- addresses: ["{v2}"]
  conditions: {{ready: true}}
  targetRef: {{kind: Pod, name: greeter-v2}}
---
apiVersion: v1
kind: Pod
metadata: {{name: greeter-v1, namespace: default, labels: {{app: greeter, version: v1}}}}
spec: {{containers: [{{name: greeter, image: greeter}}]}}
status: {{podIP: {v1}, conditions: [{{type: Ready, status: "True"}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: greeter-v2, namespace: default, labels: {{app: greeter, version: v2}}}}
spec: {{containers: [{{name: greeter, image: greeter}}]}}
status: {{podIP: {v2}, conditions: [{{type: Ready, status: "True"}}]}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: greeter, namespace: default}}
spec:
  host: greeter
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: greeter, namespace: default}}
spec:
  hosts: [greeter]
  http:
  - match: [{{headers: {{x-user: {{exact: tester}}}}}}]
    route: [{{destination: {{host: greeter, subset: v2}}}}]
  - route:
    - {{destination: {{host: greeter, subset: v1}}, weight: {}}}
    - {{destination: {{host: greeter, subset: v2}}, weight: {}}}
"#,
        weights.0, weights.1
    )
}

/// Runs `grpc_xds.py ARGS…` with the bootstrap; returns its stdout.
fn python_client(python: &Path, bootstrap: &Path, args: &[&str]) -> String {
    let out = Command::new(python)
        .arg(helper())
        .args(args)
        .env("GRPC_XDS_BOOTSTRAP", bootstrap)
        .stderr(Stdio::inherit())
        .output()
        .expect("run the python gRPC client");
    assert!(out.status.success(), "python client {args:?} failed ({})", out.status);
    String::from_utf8(out.stdout).unwrap()
}

fn answers(json: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap_or_else(|e| panic!("{e}: {json}"));
    v["answers"].clone()
}

#[test]
fn a_grpc_xds_client_resolves_through_meshflow_and_follows_a_virtual_service_weight_shift() {
    let python = python();
    // Two backends on one port of two loopback addresses (the service's targetPort).
    let (v1_ip, v2_ip) = (loopback_ip(), loopback_ip());
    let (port, _v1, _v2) = eventually("two gRPC backends on one free port", WAIT, || {
        let port = free_port(v1_ip);
        let v1 = GrpcBackend::start(&python, SocketAddr::from((v1_ip, port)), "v1")?;
        let v2 = GrpcBackend::start(&python, SocketAddr::from((v2_ip, port)), "v2")?;
        Some((port, v1, v2))
    });
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    fs::create_dir(&config).unwrap();
    fs::write(config.join("greeter.yaml"), greeter_yaml(v1_ip, v2_ip, port, (100, 0))).unwrap();
    let meshflow = Meshflow::serve(&config);
    let bootstrap = dir.path().join("bootstrap.json");
    let node_id = "sidecar~127.0.0.1~client-1.default~default.svc.cluster.local";
    let bootstrap_json = serde_json::json!({
        "xds_servers": [{
            "server_uri": meshflow.xds_addr.to_string(),
            "channel_creds": [{"type": "insecure"}],
            "server_features": ["xds_v3"],
        }],
        "node": {"id": node_id, "metadata": {"GENERATOR": "grpc", "NAMESPACE": "default"}},
    });
    fs::write(&bootstrap, bootstrap_json.to_string()).unwrap();
    let target = "xds:///greeter.default.svc.cluster.local:7070";

    let all_v1 = answers(&python_client(&python, &bootstrap, &["call", target, "20"]));
    assert_eq!(all_v1, serde_json::json!({"v1": 20}), "weights 100/0");
    let header = answers(&python_client(&python, &bootstrap, &["call", target, "10", "x-user=tester"]));
    assert_eq!(header, serde_json::json!({"v2": 10}), "the header match routes to v2");
    assert!(
        meshflow.log().contains("SotW stream opened"),
        "the gRPC client used state-of-the-world ADS:\n{}",
        meshflow.log()
    );

    // One client on one channel keeps calling while the weights shift: its xDS stream gets the
    // new route config and the calls move to v2.
    let mut watcher = Command::new(&python)
        .arg(helper())
        .args(["watch", target, "v2", "60"])
        .env("GRPC_XDS_BOOTSTRAP", &bootstrap)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the watching client");
    let mut out = BufReader::new(watcher.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "calling");
    let shifted = std::time::Instant::now();
    fs::write(config.join("greeter.yaml"), greeter_yaml(v1_ip, v2_ip, port, (0, 100))).unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    let status = watcher.wait().unwrap();
    // Ten calls in a row on v2, 50 ms apart, end it: about 0.5 s of that is the client's.
    eprintln!("weight shift: calls on v2 (10 in a row) {:?} after the config write", shifted.elapsed());
    assert!(status.success(), "the calls did not move to v2: {line}");
    let seen = answers(&line);
    assert!(seen["v1"].as_u64().unwrap_or(0) >= 1, "it called v1 before the shift: {line}");
    assert!(seen["v2"].as_u64().unwrap_or(0) >= 10, "{line}");
}
