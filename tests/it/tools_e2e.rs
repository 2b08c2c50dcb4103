//! The tools for users, against `meshflow serve` on a config directory:
//! - `/metrics` with istiod's names moves when a raw delta client connects, is pushed, ACKs and
//!   NACKs (the text is parsed, each series checked on its own);
//! - `/debug/syncz` shows the client's nonces sent and ACKed per type and the NACK's error;
//! - `/debug/config_dump?proxy=ID` is Envoy's config_dump JSON of what the proxy should hold;
//! - the `meshflow xds` command prints the resources as JSON (delta and state of the world),
//!   and with `--watch` the changes of the config directory;
//! - `meshflow xds load --storms N` syncs its streams again after every reconnect storm, and
//!   the server counts none of them once they are gone.

use crate::support;

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use envoy_types::pb::google::protobuf::{Struct, Value as PbValue, value::Kind as PbKind};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use serde_json::Value;
use support::{Meshflow, WAIT, dump_section, eventually};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";

const REVIEWS: &str = "outbound|9080||reviews.default.svc.cluster.local";
const RATINGS: &str = "outbound|9080||ratings.default.svc.cluster.local";
const NODE: &str = "sidecar~10.1.0.50~tools-1.default~default.svc.cluster.local";

fn service_yaml(name: &str, cluster_ip: &str, endpoint_ip: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  clusterIP: {cluster_ip}
  selector: {{app: {name}}}
  ports:
  - {{name: http, protocol: TCP, port: 9080, targetPort: 9080}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-1, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports:
- {{name: http, protocol: TCP, port: 9080}}
endpoints:
- addresses: ["{endpoint_ip}"]
  conditions: {{ready: true}}
"#
    )
}

/// Services reviews (endpoint `reviews_ip`) and ratings, a VirtualService, and a ConfigMap
/// (a kind meshflow does not read).
fn write_mesh(dir: &Path, reviews_ip: &str, with_ratings: bool) {
    fs::write(dir.join("reviews.yaml"), service_yaml("reviews", "10.96.0.20", reviews_ip)).unwrap();
    if with_ratings {
        fs::write(dir.join("ratings.yaml"), service_yaml("ratings", "10.96.0.21", "10.1.0.9")).unwrap();
    } else {
        let _ = fs::remove_file(dir.join("ratings.yaml"));
    }
    fs::write(
        dir.join("routing.yaml"),
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: unrelated, namespace: default}
data: {a: b}
"#,
    )
    .unwrap();
}

/// The samples of a Prometheus text exposition: `name{labels}` (labels sorted, as written)
/// → value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// `meshflow serve` on a config directory holding [`write_mesh`]'s services (endpoint
/// 10.1.0.7); the directory lives as long as the returned guard.
fn serve_mesh() -> (tempfile::TempDir, Meshflow) {
    let dir = tempfile::tempdir().unwrap();
    write_mesh(dir.path(), "10.1.0.7", true);
    let meshflow = Meshflow::serve(dir.path());
    (dir, meshflow)
}

fn metric(m: &Meshflow, series: &str) -> Option<f64> {
    let (status, body) = m.admin_get("/metrics");
    assert_eq!(status, 200, "{body}");
    samples(&body).get(series).copied()
}

/// A raw delta ADS stream.
struct Delta {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: tonic::Streaming<DeltaDiscoveryResponse>,
}

impl Delta {
    async fn open(addr: SocketAddr) -> Delta {
        let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}")).await.expect("connect");
        let (tx, rx) = mpsc::channel(16);
        let rx = client.delta_aggregated_resources(ReceiverStream::new(rx)).await.expect("open delta stream");
        Delta { tx, rx: rx.into_inner() }
    }

    async fn send(&self, req: DeltaDiscoveryRequest) {
        self.tx.send(req).await.expect("send request");
    }

    async fn expect(&mut self, type_url: &str) -> DeltaDiscoveryResponse {
        let r = tokio::time::timeout(WAIT, self.rx.message())
            .await
            .unwrap_or_else(|_| panic!("no {type_url} response"))
            .expect("stream healthy")
            .expect("stream open");
        assert_eq!(r.type_url, type_url, "{r:?}");
        r
    }
}

fn node() -> core::Node {
    let string = |s: &str| PbValue { kind: Some(PbKind::StringValue(s.into())) };
    let fields = [("ISTIO_VERSION".to_string(), string("1.28.0-tools")), ("CLUSTER_ID".to_string(), string("east"))];
    core::Node {
        id: NODE.into(),
        metadata: Some(Struct { fields: fields.into_iter().collect() }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delta_client_moves_the_metrics_and_shows_in_syncz_and_config_dump() {
    let (_dir, meshflow) = serve_mesh();

    let mut d = Delta::open(meshflow.xds_addr).await;
    d.send(DeltaDiscoveryRequest { node: Some(node()), type_url: CDS.into(), ..Default::default() }).await;
    let cds = d.expect(CDS).await;
    let names: Vec<&str> = cds.resources.iter().map(|r| r.name.as_str()).collect();
    assert!(names.contains(&REVIEWS) && names.contains(&RATINGS), "{names:?}");
    d.send(DeltaDiscoveryRequest { type_url: CDS.into(), response_nonce: cds.nonce.clone(), ..Default::default() })
        .await;
    d.send(DeltaDiscoveryRequest { type_url: LDS.into(), ..Default::default() }).await;
    let lds = d.expect(LDS).await;
    assert!(!lds.resources.is_empty());
    let error = "Error adding/updating listener(s) 0.0.0.0_9080: test rejects it";
    d.send(DeltaDiscoveryRequest {
        type_url: LDS.into(),
        response_nonce: lds.nonce.clone(),
        error_detail: Some(RpcStatus { code: 3, message: error.into(), details: vec![] }),
        ..Default::default()
    })
    .await;

    // /metrics: istiod's names, each series on its own.
    let rejects = eventually("the NACK counted", WAIT, || {
        metric(&meshflow, "pilot_total_xds_rejects{type=\"lds\"}").filter(|v| *v >= 1.0)
    });
    assert_eq!(rejects, 1.0);
    let (_, text) = meshflow.admin_get("/metrics");
    let s = samples(&text);
    let get = |series: &str| s.get(series).copied().unwrap_or_else(|| panic!("no {series} in\n{text}"));
    assert_eq!(get(&format!("pilot_xds_lds_reject{{err=\"3\",node=\"{NODE}\"}}")), 1.0);
    assert!(!s.contains_key("pilot_total_xds_rejects{type=\"cds\"}"), "the CDS push was ACKed");
    assert_eq!(get("pilot_xds{version=\"1.28.0-tools\"}"), 1.0);
    assert_eq!(get("pilot_xds_pushes{type=\"cds\"}"), 1.0);
    assert_eq!(get("pilot_xds_pushes{type=\"lds\"}"), 1.0);
    assert_eq!(get("pilot_xds_push_time_count{type=\"cds\"}"), 1.0);
    assert_eq!(get("pilot_xds_push_time_bucket{type=\"cds\",le=\"30\"}"), 1.0, "istiod's last bucket");
    assert_eq!(get("pilot_services"), 2.0);
    assert_eq!(get("pilot_virt_services"), 1.0);
    assert_eq!(get("meshflow_input_objects{kind=\"Service\"}"), 2.0);
    assert!(get("meshflow_input_events{kind=\"EndpointSlice\",op=\"apply\"}") >= 2.0);
    assert!(get("meshflow_engine_step_seconds_count") >= 1.0);
    assert!(get("meshflow_engine_batch_events_sum") >= 5.0, "2 Services, 2 slices, 1 VirtualService");
    assert!(get("meshflow_resources{type=\"cds\"}") >= 2.0);
    assert!(text.contains("# TYPE pilot_xds_pushes counter"), "{text}");
    // /stats still answers.
    assert!(meshflow.admin_get("/stats").1.contains("meshflow_resources{type=\"CDS\"}"));

    // /debug/syncz: istiod's SyncStatus fields.
    let (status, body) = meshflow.admin_get("/debug/syncz");
    assert_eq!(status, 200, "{body}");
    let syncz: Value = serde_json::from_str(&body).unwrap();
    let entry = syncz.as_array().unwrap().iter().find(|e| e["proxy"] == NODE).unwrap_or_else(|| panic!("{body}"));
    assert_eq!(entry["cluster_sent"], cds.nonce.as_str(), "{entry}");
    assert_eq!(entry["cluster_acked"], cds.nonce.as_str(), "{entry}");
    assert_eq!(entry["listener_sent"], lds.nonce.as_str(), "{entry}");
    assert!(entry.get("listener_acked").is_none(), "the listeners were NACKed: {entry}");
    // Delta's versions: each response's system_version_info (the cache's sequence number).
    assert!(!cds.system_version_info.is_empty(), "{cds:?}");
    assert_eq!(entry["resources"][CDS]["sentVersion"], cds.system_version_info.as_str(), "{entry}");
    assert_eq!(entry["resources"][CDS]["ackedVersion"], cds.system_version_info.as_str(), "{entry}");
    assert_eq!(entry["resources"][LDS]["sentVersion"], lds.system_version_info.as_str(), "{entry}");
    assert!(entry["resources"][LDS].get("ackedVersion").is_none(), "NACKed: {entry}");
    assert_eq!(entry["resources"][LDS]["lastError"], error, "{entry}");
    let mut listeners: Vec<&str> = lds.resources.iter().map(|r| r.name.as_str()).collect();
    listeners.sort();
    assert_eq!(entry["resources"][LDS]["rejectedResources"], serde_json::json!(listeners), "{entry}");
    assert!(entry["resources"][CDS].get("lastError").is_none(), "{entry}");
    assert_eq!(entry["proxy_type"], "sidecar");
    assert_eq!(entry["istio_version"], "1.28.0-tools");
    assert_eq!(entry["cluster_id"], "east");
    let (_, other_ns) = meshflow.admin_get("/debug/syncz?namespace=other");
    assert_eq!(serde_json::from_str::<Value>(&other_ns).unwrap(), serde_json::json!([]));

    // /debug/config_dump: Envoy's config_dump JSON of the proxy's view.
    let (status, body) = meshflow.admin_get(&format!("/debug/config_dump?proxy={NODE}"));
    assert_eq!(status, 200, "{body}");
    let dump: Value = serde_json::from_str(&body).unwrap();
    let mut clusters = support::dynamic_cluster_names(&dump);
    clusters.sort();
    assert!(clusters.contains(&REVIEWS.to_string()) && clusters.contains(&RATINGS.to_string()), "{clusters:?}");
    let cd = dump_section(&dump, "ClustersConfigDump").unwrap();
    let reviews = cd["dynamic_active_clusters"].as_array().unwrap().iter().find(|c| c["cluster"]["name"] == REVIEWS);
    let reviews = reviews.unwrap();
    assert_eq!(reviews["cluster"]["@type"], CDS);
    assert_eq!(reviews["cluster"]["type"], "EDS");
    let version = cds.resources.iter().find(|r| r.name == REVIEWS).unwrap().version.as_str();
    assert_eq!(reviews["version_info"], version, "the version the proxy was sent");
    assert_eq!(support::dynamic_endpoints(&dump, REVIEWS), ["10.1.0.7:9080"]);
    assert!(support::dynamic_listener_names(&dump).contains(&"0.0.0.0_9080".to_string()), "{body}");
    assert!(support::dynamic_route_config_names(&dump).contains(&"9080".to_string()), "{body}");
    assert!(dump_section(&dump, "SecretsConfigDump").is_some());

    let (status, body) = meshflow.admin_get("/debug/config_dump?proxy=sidecar~1.2.3.4~nobody.default~x");
    assert_eq!(status, 404);
    assert!(body.contains("sidecar~1.2.3.4~nobody.default~x") && body.contains("not connected"), "{body}");
    assert_eq!(meshflow.admin_get("/debug/config_dump").0, 400);

    // The stream goes: the gauge and syncz follow.
    drop(d);
    eventually("the stream's end counted", WAIT, || {
        (metric(&meshflow, "pilot_xds{version=\"1.28.0-tools\"}") == Some(0.0)).then_some(())
    });
    let (_, body) = meshflow.admin_get("/debug/syncz");
    assert!(!body.contains(NODE), "{body}");

    // Every NACK is logged, with the node and Envoy's error.
    let log = without_ansi(&meshflow.log());
    assert!(log.lines().any(|l| l.contains("NACK") && l.contains(NODE) && l.contains("test rejects it")), "{log}");
    // At start: what the source loaded by kind, the kinds not read in one line, what is served.
    let loaded = log.lines().find(|l| l.contains("config directory loaded")).unwrap_or_else(|| panic!("{log}"));
    assert!(loaded.contains("Service=2") && loaded.contains("VirtualService=1"), "{loaded}");
    assert!(loaded.contains("EndpointSlice=2") && loaded.contains("objects=5"), "{loaded}");
    let skipped: Vec<&str> = log.lines().filter(|l| l.contains("kinds meshflow does not read")).collect();
    assert!(skipped.iter().any(|l| l.contains("INFO") && l.contains("documents=1")), "{skipped:?}");
    assert!(skipped.iter().any(|l| l.contains("DEBUG") && l.contains("v1/ConfigMap=1")), "{skipped:?}");
    let served = log.lines().find(|l| l.contains("serving configuration")).unwrap_or_else(|| panic!("{log}"));
    for field in ["clusters=", "listeners=", "route_configs=", "assignments="] {
        assert!(served.contains(field), "{served}");
    }
}

/// The text without ANSI escape sequences (the log may be coloured).
fn without_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ ... final byte in @..~
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) && c != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Runs `meshflow xds ARGS` to its end; the JSON lines it printed.
fn xds_command(server: SocketAddr, args: &[&str]) -> Vec<Value> {
    let out = Command::new(Meshflow::bin())
        .args(["xds", "--server", &server.to_string(), "--node-id", NODE, "--quiet", "700ms"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run meshflow xds");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{}: {}\n{stdout}", out.status, String::from_utf8_lossy(&out.stderr));
    stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
}

fn names_of(events: &[Value], ty: &str) -> Vec<String> {
    let mut v: Vec<String> =
        events.iter().filter(|e| e["type"] == ty).map(|e| e["name"].as_str().unwrap().to_string()).collect();
    v.sort();
    v
}

/// The endpoint `ip:port`s of an EDS event's resource.
fn endpoints_of(event: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for le in event["resource"]["endpoints"].as_array().into_iter().flatten() {
        for lb in le["lb_endpoints"].as_array().into_iter().flatten() {
            let sa = &lb["endpoint"]["address"]["socket_address"];
            out.push(format!("{}:{}", sa["address"].as_str().unwrap_or("?"), sa["port_value"]));
        }
    }
    out
}

#[test]
fn the_xds_command_prints_what_it_receives_as_envoy_json() {
    let (_dir, meshflow) = serve_mesh();

    for mode in [&[][..], &["--sotw"][..]] {
        let events = xds_command(meshflow.xds_addr, mode);
        assert!(events.iter().all(|e| e["event"] == "added"), "{mode:?}: {events:?}");
        let clusters = names_of(&events, "cds");
        assert!(clusters.contains(&REVIEWS.to_string()) && clusters.contains(&RATINGS.to_string()), "{clusters:?}");
        // EDS for the EDS clusters received, RDS for the listeners' route names, like Envoy.
        let eds = names_of(&events, "eds");
        assert!(eds.contains(&REVIEWS.to_string()) && eds.contains(&RATINGS.to_string()), "{mode:?}: {eds:?}");
        assert!(names_of(&events, "lds").contains(&"0.0.0.0_9080".to_string()), "{mode:?}: {events:?}");
        assert!(names_of(&events, "rds").contains(&"9080".to_string()), "{mode:?}: {events:?}");
        let cluster = events.iter().find(|e| e["type"] == "cds" && e["name"] == REVIEWS).unwrap();
        assert_eq!(cluster["resource"]["@type"], CDS);
        assert_eq!(cluster["resource"]["name"], REVIEWS);
        assert_eq!(cluster["resource"]["eds_cluster_config"]["eds_config"]["ads"], serde_json::json!({}));
        assert!(!cluster["version"].as_str().unwrap().is_empty());
        let cla = events.iter().find(|e| e["type"] == "eds" && e["name"] == REVIEWS).unwrap();
        assert_eq!(endpoints_of(cla), ["10.1.0.7:9080"], "{mode:?}");
        let route = events.iter().find(|e| e["type"] == "rds" && e["name"] == "9080").unwrap();
        assert!(route["resource"]["virtual_hosts"].as_array().is_some_and(|v| !v.is_empty()), "{route}");
    }

    // One type, one name.
    let events = xds_command(meshflow.xds_addr, &["--type", "eds", "--resource", REVIEWS]);
    assert_eq!(names_of(&events, "eds"), [REVIEWS]);
    assert_eq!(events.len(), 1, "{events:?}");

    // A bad type is refused by the command line.
    let out = Command::new(Meshflow::bin()).args(["xds", "--node-id", NODE, "--type", "xds"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not one of cds, eds, lds, rds, sds"));
    // No server: a clear error, not a hang.
    let out = Command::new(Meshflow::bin())
        .args(["xds", "--node-id", NODE, "--server", "127.0.0.1:1"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("connecting to http://127.0.0.1:1"), "{out:?}");
}

#[test]
fn the_xds_command_watches_changes_with_versions() {
    let (dir, meshflow) = serve_mesh();
    let mut child = Command::new(Meshflow::bin())
        .args(["xds", "--server", &meshflow.xds_addr.to_string(), "--node-id", NODE, "--watch"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn meshflow xds --watch");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std_mpsc::channel::<Value>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let mut wait_for = |what: &str, f: &dyn Fn(&Value) -> bool| -> Value {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left.max(Duration::from_millis(1))) {
                Ok(e) if f(&e) => return e,
                Ok(e) => seen.push(e),
                Err(_) => panic!("no event: {what}; saw {seen:#?}"),
            }
        }
    };
    let added = wait_for("reviews' assignment", &|e| e["type"] == "eds" && e["name"] == REVIEWS);
    assert_eq!(added["event"], "added");

    write_mesh(dir.path(), "10.1.0.8", true);
    let changed = wait_for("reviews' assignment changed", &|e| e["type"] == "eds" && e["name"] == REVIEWS);
    assert_eq!(changed["event"], "changed");
    assert_eq!(endpoints_of(&changed), ["10.1.0.8:9080"]);
    assert_ne!(changed["version"], added["version"]);

    write_mesh(dir.path(), "10.1.0.8", false);
    let removed = wait_for("ratings' cluster removed", &|e| e["type"] == "cds" && e["name"] == RATINGS);
    assert_eq!(removed["event"], "removed");
    assert!(removed.get("resource").is_none());
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn the_load_command_syncs_its_streams_through_reconnect_storms_and_the_server_frees_them() {
    let (_dir, meshflow) = serve_mesh();
    let server = meshflow.xds_addr.to_string();
    let out = Command::new(Meshflow::bin())
        .args(["xds", "load", "--server", &server, "--clients", "12", "--hold", "0s", "--storms", "2"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // Synced three times: at the start and after each storm, every stream each time.
    let synced: Vec<&str> = stderr.lines().filter(|l| l.contains("streams hold the configuration")).collect();
    assert_eq!(synced.len(), 3, "{stderr}");
    assert!(synced.iter().all(|l| l.starts_with("12 of 12 streams")), "{stderr}");
    // Each sync received the same configuration (bytes and responses per sync are equal).
    let amounts: Vec<&str> = synced.iter().map(|l| l.split(" after ").next().unwrap()).collect();
    assert!(amounts.windows(2).all(|w| w[0] == w[1]), "{amounts:?}");
    assert!(stderr.contains("storm 1: 12 streams closed") && stderr.contains("storm 2: 12 streams closed"), "{stderr}");
    // Every stream of every storm ended on the server: none is counted as connected.
    eventually("every load stream gone from pilot_xds", WAIT, || {
        (metric(&meshflow, "pilot_xds{version=\"\"}") == Some(0.0)).then_some(())
    });
}

#[test]
fn the_load_command_opens_streams_per_connection_as_asked_and_each_stream_syncs() {
    let (_dir, meshflow) = serve_mesh();
    let server = meshflow.xds_addr.to_string();
    let mut load = Command::new(Meshflow::bin())
        .args(["xds", "load", "--server", &server, "--clients", "12", "--streams-per-connection", "4", "--hold", "30s"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // While the streams hold: 12 delta streams, from 3 client addresses (one per connection).
    let addresses = eventually("12 streams in /debug/syncz", WAIT, || {
        let (_, body) = meshflow.admin_get("/debug/syncz");
        let entries: Vec<Value> = serde_json::from_str(&body).ok()?;
        let synced = entries.iter().filter(|e| e["protocol"] == "delta" && e.get("endpoint_acked").is_some());
        let addresses: Vec<String> = synced.map(|e| e["address"].as_str().unwrap_or("").to_string()).collect();
        (addresses.len() == 12).then_some(addresses)
    });
    let _ = load.kill();
    let out = load.wait_with_output().unwrap();
    let mut distinct = addresses.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "{addresses:?}\n{}", String::from_utf8_lossy(&out.stderr));
    for a in &distinct {
        assert!(a.parse::<SocketAddr>().is_ok(), "{a:?}");
        assert_eq!(addresses.iter().filter(|b| *b == a).count(), 4, "{addresses:?}");
    }
}

#[test]
fn serve_verify_compares_with_the_reference_on_a_schedule_and_reports_in_metrics_and_debug_verify() {
    let dir = tempfile::tempdir().unwrap();
    write_mesh(dir.path(), "10.1.0.7", true);
    let m = Meshflow::serve_with(dir.path(), &["--verify", "200ms"]);
    let runs = |m: &Meshflow| metric(m, "meshflow_verify_runs").unwrap_or(0.0);
    eventually("a first verification", WAIT, || (runs(&m) >= 1.0).then_some(()));
    assert_eq!(metric(&m, "meshflow_verify_mismatches"), Some(0.0), "the engine equals the reference");
    assert!(metric(&m, "meshflow_verify_seconds_count").unwrap_or(0.0) >= 1.0);
    let (status, body) = m.admin_get("/debug/verify");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(" 0 mismatches"), "{body}");
    let resources: usize = body.split(' ').next().and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(resources >= 6, "two clusters and assignments, a listener and its routes: {body}");

    // After a change (a new endpoint, the ratings service gone), the next verifications
    // translate the new input (fewer resources) and still find no difference.
    write_mesh(dir.path(), "10.1.0.8", false);
    eventually("the change served", WAIT, || {
        let (_, dump) = m.admin_get("/debug/resources");
        (!dump.contains("ratings")).then_some(())
    });
    let before = runs(&m);
    eventually("two more verifications", WAIT, || (runs(&m) >= before + 2.0).then_some(()));
    assert_eq!(metric(&m, "meshflow_verify_mismatches"), Some(0.0));
    let (_, body) = m.admin_get("/debug/verify");
    assert!(body.contains(" 0 mismatches"), "{body}");
    let after: usize = body.split(' ').next().and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(after > 0 && after < resources, "ratings' cluster and assignment are gone: {body}");

    // Without --verify the endpoint says how to turn it on.
    let (_plain_dir, plain) = serve_mesh();
    let (status, body) = plain.admin_get("/debug/verify");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("--verify"), "{body}");
}

/// `meshflow bootstrap`'s stats flags, as Istio's annotations: more patterns, `{pod_ip}`
/// replaced by the node id's IP; a regexp that is not one is refused before Envoy sees it.
#[test]
fn the_bootstrap_command_keeps_the_stats_asked_for_and_refuses_a_bad_regexp() {
    let node = "sidecar~127.0.0.5~a-1.default~default.svc.cluster.local";
    let run = |more: &[&str]| {
        Command::new(Meshflow::bin()).args(["bootstrap", "--node-id", node]).args(more).output().unwrap()
    };
    let out = run(&[
        "--stats-inclusion-prefixes",
        "cluster.outbound,http.{pod_ip}_",
        "--stats-inclusion-suffixes",
        "upstream_rq_total",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let yaml: Value = serde_yaml_ng::from_slice(&out.stdout).unwrap();
    let patterns = yaml["stats_config"]["stats_matcher"]["inclusion_list"]["patterns"].as_array().unwrap().clone();
    for want in [
        serde_json::json!({"prefix": "cluster.outbound"}),
        serde_json::json!({"prefix": "http.127.0.0.5_"}),
        serde_json::json!({"suffix": "upstream_rq_total"}),
        serde_json::json!({"prefix": "cluster_manager"}),
    ] {
        assert!(patterns.contains(&want), "{want} missing from {patterns:?}");
    }
    let out = run(&["--stats-inclusion-regexps", "ok.*,a("]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(r#"stats inclusion regexp "a(" is not a regular expression"#)
    );
    assert!(out.stdout.is_empty());
}
