//! meshflow restarts under real traffic: Envoy (from `scripts/ensure-envoy`) serves a route to
//! a backend while a steady request loop runs; meshflow is killed, requests keep succeeding
//! on the configuration Envoy holds; one endpoint is added in the config directory while
//! meshflow is down; meshflow starts again on the same port; Envoy reconnects with its
//! `initial_resource_versions` and meshflow sends only what changed meanwhile: one
//! ClusterLoadAssignment and nothing else (counted per type on that stream by `/debug/syncz`'s
//! `resourcesSent`/`removedSent`). No request fails at any point.
//!
//! The proxy has a locality (`r1/z1`), so has B (its Pod's) and A another (`r1/z2`); the
//! service has a DestinationRule with outlier detection. So the assignment is placed by
//! locality (after the restart: B at priority 0, A at 1) and computed for the proxy's
//! locality only once a proxy of it connects. The restarted meshflow must compute it before
//! it answers, or it would first send the shared assignment (both at priority 0), and the
//! count would show it.

use crate::support;

use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Backend, Envoy, Meshflow, WAIT, eventually, free_port, http_get, loopback_ip};

const HOST: &str = "web.default.svc.cluster.local";

/// Outlier detection, so that locality load balancing applies (istiod's default mesh config).
const OUTLIER_RULE: &str = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
                            metadata: {name: web, namespace: default}\n\
                            spec: {host: web, trafficPolicy: {outlierDetection: {consecutive5xxErrors: 100}}}\n";

fn replace_file(path: &Path, contents: &str) {
    let tmp = path.with_file_name(format!(".{}.tmp", path.file_name().unwrap().to_string_lossy()));
    fs::write(&tmp, contents).unwrap();
    fs::rename(&tmp, path).unwrap();
}

fn ip_of(b: &Backend) -> Ipv4Addr {
    match b.addr {
        SocketAddr::V4(v4) => *v4.ip(),
        SocketAddr::V6(_) => unreachable!("backends bind IPv4"),
    }
}

/// The slice of `web`: each address the endpoint of its Pod (`web-<ip>`, see [`pod_yaml`]).
fn slice_yaml(ips: &[Ipv4Addr], port: u16) -> String {
    let endpoints: String = ips
        .iter()
        .map(|ip| {
            format!(
                "- addresses: [\"{ip}\"]\n  conditions: {{ready: true}}\n  targetRef: {{kind: Pod, name: {}}}\n",
                pod_name(*ip)
            )
        })
        .collect();
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  namespace: default\n  \
         labels: {{kubernetes.io/service-name: web}}\naddressType: IPv4\nports:\n- {{name: http, protocol: TCP, port: {port}}}\n\
         endpoints:\n{endpoints}"
    )
}

fn pod_name(ip: Ipv4Addr) -> String {
    format!("web-{}", ip.to_string().replace('.', "-"))
}

/// The Pod behind an address of the slice, in `zone` of region `r1`.
fn pod_yaml(ip: Ipv4Addr, zone: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {}, namespace: default, \
         labels: {{app: web, topology.istio.io/locality: r1.{zone}}}}}\n\
         spec: {{containers: [{{name: web, image: web}}]}}\n\
         status: {{podIP: \"{ip}\", conditions: [{{type: Ready, status: \"True\"}}]}}\n---\n",
        pod_name(ip)
    )
}

/// The second `meshflow serve`, on the first one's addresses; killed when dropped.
struct Restarted {
    child: Child,
    log: std::path::PathBuf,
}

impl Drop for Restarted {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!("--- restarted meshflow log ---\n{}", fs::read_to_string(&self.log).unwrap_or_default());
        }
    }
}

/// Requests through Envoy in a loop: successes and failures (with their errors).
struct Traffic {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    handle: Option<thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(proxy: SocketAddr) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let (s, o, f) = (stop.clone(), ok.clone(), failures.clone());
        let handle = thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match http_get(proxy, HOST, "/") {
                    Ok((200, _)) => {
                        o.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok((status, body)) => f.lock().unwrap().push(format!("{status}: {body}")),
                    Err(e) => f.lock().unwrap().push(e.to_string()),
                }
                thread::sleep(Duration::from_millis(5));
            }
        });
        Traffic { stop, ok, failures, handle: Some(handle) }
    }

    fn ok(&self) -> usize {
        self.ok.load(Ordering::SeqCst)
    }

    fn failures(&self) -> Vec<String> {
        self.failures.lock().unwrap().clone()
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// `(resourcesSent, removedSent)` of one type on the node's stream in `/debug/syncz`; a type
/// never sent on the stream counts 0.
fn sent(syncz: &Value, node: &str, type_url: &str) -> (u64, u64) {
    let entry = syncz.as_array().and_then(|a| a.iter().find(|e| e["proxy"] == node));
    let Some(r) = entry.map(|e| &e["resources"][type_url]) else { return (0, 0) };
    (r["resourcesSent"].as_u64().unwrap_or(0), r["removedSent"].as_u64().unwrap_or(0))
}

#[test]
fn envoy_keeps_serving_while_meshflow_restarts_and_gets_only_what_changed() {
    let (a, b) = eventually("two backends on one port", WAIT, || {
        let ip_a = loopback_ip();
        let ip_b = loopback_ip();
        let port = free_port(ip_a);
        Some((Backend::start(ip_a, port, "A").ok()?, Backend::start(ip_b, port, "B").ok()?))
    });
    let target_port = a.addr.port();
    let bind_ip = loopback_ip();
    let port = free_port(bind_ip);
    let config = tempfile::tempdir().expect("tempdir");
    fs::write(config.path().join("svc.yaml"), support::web_service_yaml(port, target_port)).unwrap();
    fs::write(config.path().join("rule.yaml"), OUTLIER_RULE).unwrap();
    fs::write(config.path().join("pods.yaml"), pod_yaml(ip_of(&a), "z2") + &pod_yaml(ip_of(&b), "z1")).unwrap();
    fs::write(config.path().join("slice.yaml"), slice_yaml(&[ip_of(&a)], target_port)).unwrap();

    let first = Meshflow::serve(config.path());
    let (xds_addr, admin_addr) = (first.xds_addr, first.admin_addr);
    let node_id = format!("sidecar~{bind_ip}~app-1.default~default.svc.cluster.local");
    let admin_port = free_port(Ipv4Addr::LOCALHOST);
    let locality = ["--label", "topology.istio.io/locality=r1.z1"];
    let envoy = Envoy::start(&first.bootstrap_with(&node_id, bind_ip, admin_port, &locality));
    let proxy = SocketAddr::from((bind_ip, port));
    eventually("Envoy to answer A", WAIT, || {
        matches!(http_get(proxy, HOST, "/"), Ok((200, ref body)) if body == "A").then_some(())
    });

    let traffic = Traffic::start(proxy);
    thread::sleep(Duration::from_millis(500));
    let before_kill = traffic.ok();
    assert!(before_kill > 0, "no request succeeded before the restart");

    // meshflow goes away (SIGKILL); Envoy keeps what it has.
    drop(first);
    let down = Instant::now();
    thread::sleep(Duration::from_secs(2));
    replace_file(&config.path().join("slice.yaml"), &slice_yaml(&[ip_of(&a), ip_of(&b)], target_port));
    thread::sleep(Duration::from_secs(1));
    let while_down = traffic.ok() - before_kill;
    assert!(while_down > 0, "no request succeeded while meshflow was down");
    assert_eq!(b.hits(), 0, "B got traffic while meshflow was down");

    // meshflow again, on the same addresses.
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("meshflow.log");
    let out = fs::File::create(&log).unwrap();
    let child = Command::new(Meshflow::bin())
        .args(["serve", "--config-dir"])
        .arg(config.path())
        .args(["--xds-addr", &xds_addr.to_string(), "--admin-addr", &admin_addr.to_string()])
        .env("RUST_LOG", "meshflow=debug")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("spawn meshflow again");
    let _restarted = Restarted { child, log: log.clone() };
    eventually("the restarted meshflow to be ready", WAIT, || {
        matches!(http_get(admin_addr, "localhost", "/ready"), Ok((200, _))).then_some(())
    });
    eprintln!("meshflow was down {:?}", down.elapsed());
    eventually("traffic to reach B, the endpoint added while meshflow was down", WAIT, || (b.hits() > 0).then_some(()));
    // Let the stream settle (ACKs, any late push), then count.
    thread::sleep(Duration::from_secs(2));
    let (status, body) = http_get(admin_addr, "localhost", "/debug/syncz").expect("syncz");
    assert_eq!(status, 200, "{body}");
    let syncz: Value = serde_json::from_str(&body).expect("syncz JSON");
    let streams = syncz.as_array().map(|a| a.iter().filter(|e| e["proxy"] == node_id.as_str()).count()).unwrap_or(0);
    assert_eq!(streams, 1, "Envoy's streams on the restarted meshflow: {syncz:#}");

    let url = |t: &str| format!("type.googleapis.com/envoy.config.{t}");
    let eds = sent(&syncz, &node_id, &url("endpoint.v3.ClusterLoadAssignment"));
    let cds = sent(&syncz, &node_id, &url("cluster.v3.Cluster"));
    let lds = sent(&syncz, &node_id, &url("listener.v3.Listener"));
    let rds = sent(&syncz, &node_id, &url("route.v3.RouteConfiguration"));
    eprintln!("sent after the restart (resources, removed): cds {cds:?} eds {eds:?} lds {lds:?} rds {rds:?}");
    assert_eq!(eds, (1, 0), "the changed assignment, once: {syncz:#}");
    assert_eq!(cds, (0, 0), "no cluster changed: {syncz:#}");
    assert_eq!(lds, (0, 0), "no listener changed: {syncz:#}");
    assert_eq!(rds, (0, 0), "no route config changed: {syncz:#}");

    let total = traffic.ok();
    traffic.stop.store(true, Ordering::SeqCst);
    let failures = traffic.failures();
    eprintln!("requests: {total} succeeded ({while_down} while meshflow was down), {} failed", failures.len());
    assert!(failures.is_empty(), "requests failed: {:?}", &failures[..failures.len().min(10)]);
    assert_eq!(envoy.admin_get("/ready").0, 200, "Envoy is still ready");
}
