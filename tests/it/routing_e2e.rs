//! Sidecar routing end to end: VirtualService and DestinationRule, as users write them,
//! through `meshflow serve` and one real Envoy per test, with real HTTP.
//!
//! Fixture: Service `reviews` in `default` (port P, named `http`, selector `app: reviews`)
//! whose EndpointSlice lists one endpoint per version (v1, v2, v3 as needed), each a
//! [`Backend`] on its own loopback IP and each with a `targetRef` to a Pod labelled
//! `app: reviews, version: vN`; the DestinationRule `reviews` (subsets by `version`). Envoy
//! listens on `bind_ip:P`; requests carry `Host: reviews`.
//!
//! Every test starts meshflow and Envoy once and checks one behaviour with as many requests
//! as that behaviour needs. The first test guards the backend itself.

use crate::support;

use std::fs;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{
    Backend, BackendOptions, Envoy, Meshflow, Response, WAIT, dump_section, dynamic_endpoints, eventually, free_port,
    http_request, loopback_ip, warming_cluster_names,
};

/// The Host header of every request (the short name, as bookinfo's clients use).
const HOST: &str = "reviews";
/// How long a test waits for Envoy to take a configuration change.
const CONVERGE: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------
// Harness: the backend
// ---------------------------------------------------------------------------------------

#[test]
fn harness_backend_echoes_requests_answers_as_configured_and_logs_them() {
    let ip = loopback_ip();
    let options = BackendOptions {
        status: 503,
        delay: Duration::from_millis(300),
        response_headers: vec![("foo".into(), "bar".into()), ("x-two".into(), "2".into())],
    };
    let b = eventually("a backend to bind", WAIT, || {
        Backend::start_with(ip, free_port(ip), "failing", options.clone()).ok()
    });
    let started = Instant::now();
    let r = http_request(
        b.addr,
        "DELETE",
        "some.host",
        "/a/b?c=d",
        &[("X-Test", "Value 1"), ("x-multi", "one"), ("x-multi", "two")],
    )
    .expect("request to the backend");
    let took = started.elapsed();
    assert_eq!(r.status, 503);
    assert!(took >= Duration::from_millis(300), "answered after {took:?}, before its delay");
    assert_eq!(r.body_text(), "failing");
    assert_eq!(r.header("x-backend"), Some("failing"));
    assert_eq!(r.header("foo"), Some("bar"));
    assert_eq!(r.header("x-two"), Some("2"));
    assert_eq!(r.header("x-echo-method"), Some("DELETE"));
    assert_eq!(r.header("x-echo-path"), Some("/a/b?c=d"));
    assert_eq!(r.header("x-echo-h-host"), Some("some.host"));
    assert_eq!(r.header("x-echo-h-x-test"), Some("Value 1"), "request header names are lowercased");
    let multi: Vec<&str> = r.headers.iter().filter(|(k, _)| k == "x-echo-h-x-multi").map(|(_, v)| v.as_str()).collect();
    assert_eq!(multi, ["one", "two"], "every value of a repeated request header is echoed");

    let log = b.requests();
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!((log[0].method.as_str(), log[0].path.as_str()), ("DELETE", "/a/b?c=d"));
    assert_eq!(log[0].header("HOST"), Some("some.host"));
    assert_eq!(log[0].header_values("x-multi"), ["one", "two"]);
    assert_eq!((b.received(), b.hits()), (1, 1));

    // The plain constructor still answers 200 with the name, and echoes too.
    let ip2 = loopback_ip();
    let plain = eventually("a backend to bind", WAIT, || Backend::start(ip2, free_port(ip2), "plain").ok());
    let r = http_request(plain.addr, "GET", "h", "/x", &[]).unwrap();
    assert_eq!((r.status, r.body_text().as_str(), r.header("x-echo-path")), (200, "plain", Some("/x")));
    assert_eq!(r.header("foo"), None);
    // The status can change while the backend runs.
    plain.set_status(500);
    assert_eq!(http_request(plain.addr, "GET", "h", "/y", &[]).unwrap().status, 500);
    assert_eq!(plain.requests().iter().map(|q| q.path.as_str()).collect::<Vec<_>>(), ["/x", "/y"]);
}

// ---------------------------------------------------------------------------------------
// Fixture
// ---------------------------------------------------------------------------------------

// source: istio/istio:samples/bookinfo/networking/destination-rule-reviews.yaml@86c9f01fd735 (Apache-2.0)
const DR_REVIEWS: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  trafficPolicy:
    loadBalancer:
      simple: RANDOM
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
  - name: v3
    labels:
      version: v3
"#;

/// A running mesh: the reviews backends (v1, v2, … in order), meshflow on a config dir
/// holding the fixture and the test's Istio YAML, and one Envoy.
struct Mesh {
    // Fields drop in this order: the processes first, then backends and config.
    envoy: Envoy,
    meshflow: Meshflow,
    backends: Vec<Backend>,
    config: tempfile::TempDir,
    /// The service port P, where Envoy listens (on `bind_ip`).
    port: u16,
    bind_ip: Ipv4Addr,
}

/// Backends v1, v2, … (one per entry of `options`), each on its own loopback IP, all on one port.
fn start_backends(options: &[BackendOptions]) -> Vec<Backend> {
    eventually("backends on one port", WAIT, || {
        let first = loopback_ip();
        let port = free_port(first);
        let mut out = Vec::new();
        for (i, o) in options.iter().enumerate() {
            let ip = if i == 0 { first } else { loopback_ip() };
            out.push(Backend::start_with(ip, port, &format!("v{}", i + 1), o.clone()).ok()?);
        }
        Some(out)
    })
}

fn service_yaml(port: u16, target_port: u16) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: reviews
  namespace: default
  labels:
    app: reviews
    service: reviews
spec:
  selector:
    app: reviews
  ports:
  - name: http
    protocol: TCP
    port: {port}
    targetPort: {target_port}
"#
    )
}

/// One EndpointSlice listing every backend, each with a targetRef to its pod, and the pods.
fn endpoints_yaml(backends: &[Backend]) -> String {
    let port = backends[0].addr.port();
    let mut slice = format!(
        r#"apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: reviews-abcde
  namespace: default
  labels:
    kubernetes.io/service-name: reviews
addressType: IPv4
ports:
- name: http
  protocol: TCP
  port: {port}
endpoints:
"#
    );
    let mut pods = String::new();
    for b in backends {
        let (ip, version) = (b.ip(), &b.name);
        slice.push_str(&format!(
            r#"- addresses:
  - "{ip}"
  conditions:
    ready: true
  targetRef:
    kind: Pod
    namespace: default
    name: reviews-{version}
"#
        ));
        pods.push_str(&format!(
            r#"---
apiVersion: v1
kind: Pod
metadata:
  name: reviews-{version}
  namespace: default
  labels:
    app: reviews
    version: {version}
spec:
  containers:
  - name: reviews
    image: docker.io/istio/examples-bookinfo-reviews-{version}:1.20.3
    ports:
    - containerPort: {port}
status:
  phase: Running
  podIP: "{ip}"
  conditions:
  - type: Ready
    status: "True"
"#
        ));
    }
    slice + &pods
}

/// Replaces `path` as editors do: write a temporary file beside it, then rename over.
fn replace_file(path: &Path, contents: &str) {
    let tmp = path.with_file_name(format!(".{}.tmp", path.file_name().unwrap().to_string_lossy()));
    fs::write(&tmp, contents).unwrap();
    fs::rename(&tmp, path).unwrap();
}

impl Mesh {
    /// The fixture with one backend per entry of `backends` (v1, v2, …), the DestinationRule
    /// `dr` (none if empty) and the VirtualService `vs` (none if empty); returns once Envoy
    /// has the route configuration of port P and no cluster is warming.
    fn start(backends: &[BackendOptions], dr: &str, vs: &str) -> Mesh {
        let backends = start_backends(backends);
        let target_port = backends[0].addr.port();
        let bind_ip = loopback_ip();
        let port = free_port(bind_ip);

        let config = tempfile::tempdir().expect("tempdir");
        fs::write(config.path().join("svc.yaml"), service_yaml(port, target_port)).unwrap();
        fs::write(config.path().join("endpoints.yaml"), endpoints_yaml(&backends)).unwrap();
        if !dr.is_empty() {
            fs::write(config.path().join("dr.yaml"), dr).unwrap();
        }
        if !vs.is_empty() {
            fs::write(config.path().join("vs.yaml"), vs).unwrap();
        }

        let meshflow = Meshflow::serve(config.path());
        let admin_port = free_port(Ipv4Addr::LOCALHOST);
        let node_id = format!("sidecar~{bind_ip}~productpage-v1-1.default~default.svc.cluster.local");
        let bootstrap = meshflow.bootstrap(&node_id, bind_ip, admin_port);
        let envoy = Envoy::start(&bootstrap);
        let mesh = Mesh { envoy, meshflow, backends, config, port, bind_ip };
        let started = Instant::now();
        eventually(&format!("route config {port} in Envoy and no warming cluster"), CONVERGE, || {
            let dump = mesh.envoy.config_dump();
            let ready = route_config(&dump, &port.to_string()).is_some() && warming_cluster_names(&dump).is_empty();
            ready.then_some(())
        });
        eprintln!("envoy has the routes {:?} after it was ready", started.elapsed());
        mesh
    }

    fn proxy(&self) -> SocketAddr {
        SocketAddr::from((self.bind_ip, self.port))
    }

    fn backend(&self, name: &str) -> &Backend {
        self.backends.iter().find(|b| b.name == name).unwrap_or_else(|| panic!("no backend {name}"))
    }

    /// One request through Envoy with `Host: reviews`.
    fn try_request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> io::Result<Response> {
        http_request(self.proxy(), method, HOST, path, headers)
    }

    /// One GET through Envoy with `Host: reviews`; panics if there is no HTTP answer.
    fn get(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        self.try_request("GET", path, headers)
            .unwrap_or_else(|e| panic!("GET {path} {headers:?} via {} (Host {HOST}): {e}", self.proxy()))
    }

    /// The `x-backend` of `n` GETs of `/` with `headers` ("<status>" where there is none).
    fn who(&self, n: usize, headers: &[(&str, &str)]) -> Vec<String> {
        (0..n).map(|_| answered_by(&self.get("/", headers))).collect()
    }

    /// The route configuration of port P as Envoy has it (for failure messages).
    fn routes(&self) -> String {
        let dump = self.envoy.config_dump();
        route_config(&dump, &self.port.to_string())
            .map(|r| serde_json::to_string_pretty(&r["route_config"]).unwrap())
            .unwrap_or_else(|| format!("<no route config {}>", self.port))
    }

    /// Version and update time of route config P in Envoy.
    fn route_version(&self) -> String {
        let dump = self.envoy.config_dump();
        route_config(&dump, &self.port.to_string())
            .map(|r| format!("{} @ {}", r["version_info"], r["last_updated"]))
            .unwrap_or_default()
    }

    /// Writes `file` in the config dir (rename over, as editors do) and waits until Envoy
    /// has taken a new route config P.
    fn rewrite_and_wait_for_routes(&self, file: &str, yaml: &str) {
        let before = self.route_version();
        let t = Instant::now();
        replace_file(&self.config.path().join(file), yaml);
        eventually(&format!("Envoy to take a new route config {} after {file} changed", self.port), CONVERGE, || {
            (self.route_version() != before).then_some(())
        });
        // Workers receive the new routes from the main thread a moment later.
        thread::sleep(Duration::from_millis(200));
        eprintln!("new routes in Envoy {:?} after {file} was rewritten", t.elapsed());
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        if thread::panicking() {
            // The processes are still alive here: show what Envoy routes by.
            let dump = self.envoy.config_dump();
            eprintln!("\n===== route config {} in Envoy =====\n{}", self.port, self.routes());
            let clusters: Vec<String> = dump_section(&dump, "ClustersConfigDump")
                .and_then(|s| s["dynamic_active_clusters"].as_array())
                .into_iter()
                .flatten()
                .filter_map(|c| c["cluster"]["name"].as_str())
                .map(|name| format!("{name} {:?}", dynamic_endpoints(&dump, name)))
                .collect();
            eprintln!("===== active clusters and their endpoints =====\n{}", clusters.join("\n"));
        }
    }
}

/// `dynamic_route_configs` entry `name` of a config dump.
fn route_config<'a>(dump: &'a Value, name: &str) -> Option<&'a Value> {
    dump_section(dump, "RoutesConfigDump")?["dynamic_route_configs"]
        .as_array()?
        .iter()
        .find(|r| r["route_config"]["name"].as_str() == Some(name))
}

/// The backend that answered, or `<status>` when no backend did.
fn answered_by(r: &Response) -> String {
    match r.header("x-backend") {
        Some(b) => b.to_string(),
        None => format!("<{}>", r.status),
    }
}

fn count(who: &[String], name: &str) -> usize {
    who.iter().filter(|w| *w == name).count()
}

fn ok() -> BackendOptions {
    BackendOptions::default()
}

// ---------------------------------------------------------------------------------------
// 1. Header match, weights, weight shift
// ---------------------------------------------------------------------------------------

// source: istio/istio:samples/bookinfo/networking/virtual-service-reviews-test-v2.yaml@86c9f01fd735 (Apache-2.0)
const VS_REVIEWS_TEST_V2: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
    - reviews
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    route:
    - destination:
        host: reviews
        subset: v2
  - route:
    - destination:
        host: reviews
        subset: v1
"#;

// source: istio/istio:samples/bookinfo/networking/virtual-service-reviews-80-20.yaml@86c9f01fd735 (Apache-2.0)
fn vs_reviews_weights(v1: u32, v2: u32) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
    - reviews
  http:
  - route:
    - destination:
        host: reviews
        subset: v1
      weight: {v1}
    - destination:
        host: reviews
        subset: v2
      weight: {v2}
"#
    )
}

/// Asserts that `share` of `who` (≥ 200 answers) came from `name`, ± 10 points.
fn assert_share(who: &[String], name: &str, percent: usize, routes: impl Fn() -> String) {
    let n = count(who, name);
    let expected = who.len() * percent / 100;
    let tolerance = who.len() / 10;
    let others: usize = who.iter().filter(|w| !w.starts_with('v')).count();
    assert!(
        n.abs_diff(expected) <= tolerance && others == 0,
        "{n} of {} answers from {name}, expected {percent}% ± 10 points; {others} answers from no backend; \
         answers: v1 {} v2 {} v3 {}\nroutes: {}",
        who.len(),
        count(who, "v1"),
        count(who, "v2"),
        count(who, "v3"),
        routes()
    );
}

#[test]
fn header_match_selects_a_subset_weights_split_traffic_and_a_weight_shift_moves_it_live() {
    let mesh = Mesh::start(&[ok(), ok(), ok()], DR_REVIEWS, VS_REVIEWS_TEST_V2);
    let envoy_pid = mesh.envoy.pid();

    let jason = mesh.who(20, &[("end-user", "jason")]);
    assert!(jason.iter().all(|w| w == "v2"), "end-user: jason must reach v2 only: {jason:?}\n{}", mesh.routes());
    let others = mesh.who(20, &[("end-user", "mary")]);
    assert!(others.iter().all(|w| w == "v1"), "end-user: mary must reach v1 only: {others:?}\n{}", mesh.routes());
    let anonymous = mesh.who(20, &[]);
    assert!(anonymous.iter().all(|w| w == "v1"), "no end-user must reach v1 only: {anonymous:?}");
    // Header values match exactly (case-sensitive), header names do not care about case.
    assert!(mesh.who(5, &[("End-User", "jason")]).iter().all(|w| w == "v2"));
    assert!(mesh.who(5, &[("end-user", "Jason")]).iter().all(|w| w == "v1"));
    assert_eq!(mesh.backend("v3").received(), 0, "v3 is in no route");

    // 80/20, then shifted to 20/80, with the same Envoy.
    mesh.rewrite_and_wait_for_routes("vs.yaml", &vs_reviews_weights(80, 20));
    let split = mesh.who(250, &[]);
    assert_share(&split, "v1", 80, || mesh.routes());
    assert_share(&split, "v2", 20, || mesh.routes());
    mesh.rewrite_and_wait_for_routes("vs.yaml", &vs_reviews_weights(20, 80));
    let shifted = mesh.who(250, &[("end-user", "jason")]);
    assert_share(&shifted, "v2", 80, || mesh.routes());
    assert_share(&shifted, "v1", 20, || mesh.routes());
    assert_eq!(mesh.backend("v3").received(), 0, "v3 is in no route");
    assert_eq!(mesh.envoy.pid(), envoy_pid, "Envoy was restarted");
}

// ---------------------------------------------------------------------------------------
// 2. Fault injection
// ---------------------------------------------------------------------------------------

// Adapted from bookinfo's ratings test-abort and test-delay (abort status and delay changed,
// the match on a header of our own):
// source: istio/istio:samples/bookinfo/networking/virtual-service-ratings-test-abort.yaml@86c9f01fd735 (Apache-2.0)
// source: istio/istio:samples/bookinfo/networking/virtual-service-ratings-test-delay.yaml@86c9f01fd735 (Apache-2.0)
const VS_FAULTS: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
  - reviews
  http:
  - match:
    - headers:
        x-fault:
          exact: abort
    fault:
      abort:
        percentage:
          value: 100.0
        httpStatus: 555
    route:
    - destination:
        host: reviews
        subset: v1
  - match:
    - headers:
        x-fault:
          exact: delay
    fault:
      delay:
        percentage:
          value: 100.0
        fixedDelay: 1s
    route:
    - destination:
        host: reviews
        subset: v1
  - route:
    - destination:
        host: reviews
        subset: v1
"#;

#[test]
fn fault_abort_answers_without_a_backend_and_fault_delay_holds_the_request() {
    let mesh = Mesh::start(&[ok(), ok()], DR_REVIEWS, VS_FAULTS);
    let v1 = mesh.backend("v1");

    let t = Instant::now();
    let r = mesh.get("/", &[]);
    assert_eq!((r.status, answered_by(&r)), (200, "v1".into()), "no fault without the header\n{}", mesh.routes());
    assert!(t.elapsed() < Duration::from_millis(500), "an undelayed request took {:?}", t.elapsed());

    let received = v1.received();
    for _ in 0..10 {
        let r = mesh.get("/", &[("x-fault", "abort")]);
        assert_eq!(r.status, 555, "abort fault: {r:?}\n{}", mesh.routes());
        assert_eq!(r.header("x-backend"), None, "an aborted request reached a backend: {r:?}");
    }
    assert_eq!(v1.received(), received, "aborted requests reached v1");

    for _ in 0..2 {
        let t = Instant::now();
        let r = mesh.get("/", &[("x-fault", "delay")]);
        let took = t.elapsed();
        assert_eq!((r.status, answered_by(&r)), (200, "v1".into()), "delay fault: {r:?}\n{}", mesh.routes());
        assert!(
            // Envoy's timers fire on a coarse clock: a 1 s delay can end a fraction of a
            // millisecond early as the client measures it.
            took >= Duration::from_millis(950) && took < Duration::from_secs(5),
            "a request with a 1s delay fault took {took:?}\n{}",
            mesh.routes()
        );
    }
    assert_eq!(v1.received(), received + 2, "delayed requests must still reach v1");
    assert_eq!(mesh.backend("v2").received(), 0);
}

// ---------------------------------------------------------------------------------------
// 3. Retries
// ---------------------------------------------------------------------------------------

// Adapted (host, no subset, retryOn 5xx) from:
// source: istio/api:networking/v1alpha3/virtual_service.proto@b8f8791d9653 L1319 (Apache-2.0)
fn vs_retries(retries: &str) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
  - reviews
  http:
  - route:
    - destination:
        host: reviews
    retries:
{retries}
"#
    )
}

#[test]
fn retries_on_5xx_hide_a_failing_endpoint_and_attempts_0_turns_them_off() {
    // v1 answers 200, v2 fails: 503, then 500 (which istiod's default retry policy does
    // not retry: only the VirtualService's retryOn 5xx can hide it).
    let vs = vs_retries("      attempts: 3\n      retryOn: 5xx");
    let mesh = Mesh::start(&[ok(), BackendOptions::status(503)], DR_REVIEWS, &vs);
    let v2 = mesh.backend("v2");
    for status in [503, 500] {
        v2.set_status(status);
        let failed_before = v2.received();
        let who = mesh.who(40, &[]);
        assert!(
            who.iter().all(|w| w == "v1"),
            "with 3 retries on 5xx every request must end at v1 while v2 answers {status}: {who:?}\n{}",
            mesh.routes()
        );
        assert!(
            v2.received() > failed_before,
            "the failing endpoint got none of 40 requests: the test proves nothing\n{}",
            mesh.routes()
        );
    }

    v2.set_status(503);
    mesh.rewrite_and_wait_for_routes("vs.yaml", &vs_retries("      attempts: 0"));
    let responses: Vec<Response> = (0..40).map(|_| mesh.get("/", &[])).collect();
    let failed = responses.iter().filter(|r| r.status == 503 && r.header("x-backend") == Some("v2")).count();
    let good = responses.iter().filter(|r| r.status == 200 && r.header("x-backend") == Some("v1")).count();
    assert!(failed > 0, "with attempts: 0 some of 40 requests must get v2's 503\n{}", mesh.routes());
    assert_eq!(failed + good, 40, "every answer is v1's 200 or v2's 503: {responses:?}");
}

// ---------------------------------------------------------------------------------------
// 4. Timeout
// ---------------------------------------------------------------------------------------

// source: istio/istio.io:content/en/docs/tasks/traffic-management/request-timeouts/snips.sh@e7616b2ac006 (snip_request_timeouts_3) (Apache-2.0)
// (subset v2 → v1: the slow backend)
const VS_TIMEOUT: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
  - reviews
  http:
  - route:
    - destination:
        host: reviews
        subset: v1
    timeout: 0.5s
"#;

#[test]
fn a_route_timeout_answers_504_before_a_slow_backend_does() {
    let mesh = Mesh::start(&[BackendOptions::slow(Duration::from_secs(2))], DR_REVIEWS, VS_TIMEOUT);
    for _ in 0..2 {
        let t = Instant::now();
        // The client gives up after 2 s (HTTP_TIMEOUT), when the backend would answer.
        let r = match mesh.try_request("GET", "/", &[]) {
            Ok(r) => r,
            Err(e) => panic!(
                "no answer after {:?} ({e}): the route timeout of 0.5s was not enforced\n{}",
                t.elapsed(),
                mesh.routes()
            ),
        };
        let took = t.elapsed();
        assert_eq!(r.status, 504, "timeout 0.5s to a 2 s backend: {r:?} after {took:?}\n{}", mesh.routes());
        assert!(
            took >= Duration::from_millis(450) && took < Duration::from_millis(1900),
            "504 after {took:?}, expected about 0.5 s"
        );
    }
    assert!(mesh.backend("v1").received() >= 2, "the requests must have reached the slow backend");
}

// ---------------------------------------------------------------------------------------
// 5. Rewrite
// ---------------------------------------------------------------------------------------

// Adapted (host, a second route rewriting the authority, a default route) from:
// source: istio/api:networking/v1alpha3/virtual_service.proto@b8f8791d9653 L1245 (Apache-2.0)
const VS_REWRITE: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
  - reviews
  http:
  - match:
    - uri:
        prefix: /ratings
    rewrite:
      uri: /v1/bookRatings
    route:
    - destination:
        host: reviews
        subset: v1
  - match:
    - uri:
        prefix: /authority
    rewrite:
      authority: ratings.example.com
    route:
    - destination:
        host: reviews
        subset: v1
  - route:
    - destination:
        host: reviews
        subset: v1
"#;

#[test]
fn rewrite_replaces_the_uri_prefix_and_the_authority_seen_by_the_backend() {
    let mesh = Mesh::start(&[ok()], DR_REVIEWS, VS_REWRITE);
    for (sent, seen) in [
        ("/ratings/7?page=2", "/v1/bookRatings/7?page=2"),
        ("/ratings", "/v1/bookRatings"),
        ("/other/ratings", "/other/ratings"),
    ] {
        let r = mesh.get(sent, &[]);
        assert_eq!(r.status, 200, "GET {sent}: {r:?}\n{}", mesh.routes());
        assert_eq!(r.header("x-echo-path"), Some(seen), "GET {sent}\n{}", mesh.routes());
        assert_eq!(r.header("x-echo-h-host"), Some(HOST), "GET {sent}: the authority must be kept");
    }
    let r = mesh.get("/authority/x", &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-echo-h-host"), Some("ratings.example.com"), "authority rewrite\n{}", mesh.routes());
    assert_eq!(r.header("x-echo-path"), Some("/authority/x"), "an authority rewrite keeps the path");
    let log = mesh.backend("v1").requests();
    let last = log.last().expect("v1 logged the requests");
    assert_eq!((last.path.as_str(), last.header("host")), ("/authority/x", Some("ratings.example.com")));
}

// ---------------------------------------------------------------------------------------
// 6. Redirect and direct response
// ---------------------------------------------------------------------------------------

// The redirect route as in istio's rule-redirect-injection test data (no ServiceEntry: the
// host is reviews), then a directResponse as in the VirtualService reference:
// source: istio/istio:tests/testdata/config/rule-redirect-injection.yaml@86c9f01fd735 (Apache-2.0)
const VS_REDIRECT: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
    - reviews
  http:
    - match:
      - headers:
          testredirect:
            exact: enabled
      redirect:
        uri: /new/path
        authority: redirect2.test.istio.io
    - match:
      - uri:
          prefix: /gone
      directResponse:
        status: 418
        body:
          string: "unknown path"
    - route:
      - destination:
          host: reviews
          subset: v1
"#;

#[test]
fn redirect_answers_301_with_location_and_direct_response_answers_status_and_body() {
    let mesh = Mesh::start(&[ok()], DR_REVIEWS, VS_REDIRECT);
    let r = mesh.get("/old", &[("testredirect", "enabled")]);
    // Istio: redirectCode defaults to 301 (MOVED_PERMANENTLY); the Location is the request's
    // scheme, the new authority (host_redirect) and the new path (path_redirect). The request
    // carried no port, so the Location has none.
    assert_eq!(r.status, 301, "{r:?}\n{}", mesh.routes());
    assert_eq!(
        r.header("location"),
        Some("http://redirect2.test.istio.io/new/path"),
        "Location of the redirect: {r:?}\n{}",
        mesh.routes()
    );
    // Without the header the request is routed.
    let r = mesh.get("/old", &[("testredirect", "disabled")]);
    assert_eq!((r.status, answered_by(&r)), (200, "v1".into()));
    let routed = mesh.backend("v1").received();

    let r = mesh.get("/gone/away", &[]);
    assert_eq!((r.status, r.body_text().as_str()), (418, "unknown path"), "{r:?}\n{}", mesh.routes());
    assert_eq!(mesh.backend("v1").received(), routed, "a redirect or direct response must not reach a backend");

    let r = mesh.get("/here", &[]);
    assert_eq!((r.status, answered_by(&r)), (200, "v1".into()));
}

// ---------------------------------------------------------------------------------------
// 7. Header manipulation
// ---------------------------------------------------------------------------------------

// Adapted (host reviews, 50/50, request add and response set added) from:
// source: istio/api:networking/v1alpha3/virtual_service.proto@b8f8791d9653 L584 (Apache-2.0)
const VS_HEADERS: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews-route
spec:
  hosts:
  - reviews
  http:
  - headers:
      request:
        set:
          test: "true"
        add:
          x-added: mesh
      response:
        set:
          x-resp: set-by-mesh
    route:
    - destination:
        host: reviews
        subset: v2
      weight: 50
    - destination:
        host: reviews
        subset: v1
      headers:
        response:
          remove:
          - foo
      weight: 50
"#;

#[test]
fn headers_are_set_added_and_removed_per_route_and_per_destination() {
    let backend = || ok().header("foo", "bar").header("x-resp", "from-backend");
    let mesh = Mesh::start(&[backend(), backend()], DR_REVIEWS, VS_HEADERS);
    let mut seen = Vec::new();
    for _ in 0..40 {
        let r = mesh.get("/", &[("test", "false"), ("x-added", "client")]);
        let who = answered_by(&r);
        assert_eq!(r.status, 200, "{r:?}");
        // Response: set on the route, foo removed on the v1 destination only.
        assert_eq!(r.header("x-resp"), Some("set-by-mesh"), "response set, answer from {who}\n{}", mesh.routes());
        let resp_values = r.headers.iter().filter(|(k, _)| k == "x-resp").count();
        assert_eq!(resp_values, 1, "set replaces the backend's x-resp: {:?}", r.headers);
        match who.as_str() {
            "v1" => assert_eq!(r.header("foo"), None, "foo must be removed on v1's answers\n{}", mesh.routes()),
            "v2" => assert_eq!(r.header("foo"), Some("bar"), "foo must stay on v2's answers\n{}", mesh.routes()),
            _ => panic!("answer from no backend: {r:?}"),
        }
        seen.push(who);
    }
    assert!(count(&seen, "v1") > 0 && count(&seen, "v2") > 0, "50/50 reached {seen:?}");

    // Request: set overwrites what the client sent, add keeps it and adds.
    for b in [mesh.backend("v1"), mesh.backend("v2")] {
        for q in b.requests() {
            assert_eq!(q.header_values("test"), ["true"], "request set at {}: {:?}", b.name, q.headers);
            let added = q.header_values("x-added").join(",");
            let added: Vec<&str> = added.split(',').map(str::trim).collect();
            assert_eq!(added, ["client", "mesh"], "request add at {}: {:?}", b.name, q.headers);
        }
    }
}

// ---------------------------------------------------------------------------------------
// 8. Mirror
// ---------------------------------------------------------------------------------------

// Adapted (host reviews) from:
// source: istio/istio.io:content/en/docs/tasks/traffic-management/mirroring/snips.sh@4703cfaad576 (snip_mirroring_traffic_to_v2_1) (Apache-2.0)
const VS_MIRROR: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
    - reviews
  http:
  - route:
    - destination:
        host: reviews
        subset: v1
      weight: 100
    mirror:
      host: reviews
      subset: v2
    mirrorPercentage:
      value: 100.0
"#;

#[test]
fn mirror_copies_every_request_to_v2_while_v1_answers() {
    let mesh = Mesh::start(&[ok(), ok()], DR_REVIEWS, VS_MIRROR);
    let paths: Vec<String> = (0..10).map(|i| format!("/mirror/{i}")).collect();
    for p in &paths {
        let r = mesh.get(p, &[]);
        assert_eq!((r.status, answered_by(&r)), (200, "v1".into()), "GET {p}: {r:?}\n{}", mesh.routes());
    }
    let v2 = mesh.backend("v2");
    let mirrored = eventually("v2 to receive the 10 mirrored requests", Duration::from_secs(10), || {
        let log = v2.requests();
        (log.len() >= paths.len()).then_some(log)
    });
    let mut got: Vec<&str> = mirrored.iter().map(|q| q.path.as_str()).collect();
    got.sort();
    assert_eq!(got, paths, "v2 must receive exactly the requests v1 answered");
    for q in &mirrored {
        // istiod sets disable_shadow_host_suffix_append (features.DisableShadowHostSuffix,
        // default true): the mirror keeps the client's Host, no "-shadow".
        assert_eq!(q.header("host"), Some(HOST), "Host of a mirrored request: {:?}\n{}", q.headers, mesh.routes());
    }
    assert_eq!(mesh.backend("v1").received(), paths.len());
}

// ---------------------------------------------------------------------------------------
// 9. Consistent hash
// ---------------------------------------------------------------------------------------

// The reviews DestinationRule with the load balancer of the DestinationRule reference's
// consistentHash example, on a header instead of a cookie:
// source: istio/api:networking/v1alpha3/destination_rule.proto@b8f8791d9653 L404 (Apache-2.0)
const DR_HASH: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  trafficPolicy:
    loadBalancer:
      consistentHash:
        httpHeaderName: x-user
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
  - name: v3
    labels:
      version: v3
"#;

const VS_TO_SERVICE: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
  - reviews
  http:
  - route:
    - destination:
        host: reviews
"#;

fn assert_sticky_per_user(mesh: &Mesh, what: &str) {
    let alice = mesh.who(30, &[("x-user", "alice")]);
    assert!(
        alice.iter().all(|w| *w == alice[0]) && alice[0].starts_with('v'),
        "{what}: 30 requests of one x-user must reach one backend: {alice:?}\n{}",
        mesh.routes()
    );
    let mut backends: Vec<String> =
        (0..20).map(|u| answered_by(&mesh.get("/", &[("x-user", &format!("user-{u}"))]))).collect();
    backends.sort();
    backends.dedup();
    assert!(
        backends.len() >= 2 && backends.iter().all(|b| b.starts_with('v')),
        "{what}: 20 users must spread over at least 2 backends: {backends:?}\n{}",
        mesh.routes()
    );
}

#[test]
fn consistent_hash_on_a_header_keeps_a_user_on_one_backend() {
    // istiod hashes the default route of a service without VirtualService by its
    // DestinationRule (route.go: hashForService), and a VirtualService route by the
    // DestinationRule of its destination: both are checked, on one Envoy.
    let mesh = Mesh::start(&[ok(), ok(), ok()], DR_HASH, "");
    assert_sticky_per_user(&mesh, "default route");
    mesh.rewrite_and_wait_for_routes("vs.yaml", VS_TO_SERVICE);
    assert_sticky_per_user(&mesh, "VirtualService route");
}

// ---------------------------------------------------------------------------------------
// 10. A subset no DestinationRule defines
// ---------------------------------------------------------------------------------------

const VS_UNKNOWN_SUBSET: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
  - reviews
  http:
  - route:
    - destination:
        host: reviews
        subset: v9
"#;

#[test]
fn a_route_to_an_undefined_subset_answers_503_and_is_diagnosed() {
    let mesh = Mesh::start(&[ok(), ok()], DR_REVIEWS, VS_UNKNOWN_SUBSET);
    for _ in 0..5 {
        let r = mesh.get("/", &[]);
        assert_eq!(r.status, 503, "a route to subset v9 that no DestinationRule defines: {r:?}\n{}", mesh.routes());
    }
    assert_eq!(mesh.backends.iter().map(Backend::received).sum::<usize>(), 0, "no backend may be reached");

    let (status, body) = mesh.meshflow.admin_get("/debug/diagnostics");
    assert_eq!(status, 200, "/debug/diagnostics: {body}");
    eprintln!("/debug/diagnostics:\n{body}");
    let line = body.lines().find(|l| l.contains("VirtualService") && l.contains("default/reviews"));
    assert!(
        line.is_some_and(|l| l.contains("http[0].route[0].destination.subset") && l.contains("v9")),
        "/debug/diagnostics must name VirtualService default/reviews, the field \
         http[0].route[0].destination.subset and v9 on one line:\n{body}"
    );
}

// ---------------------------------------------------------------------------------------
// 11. Default route
// ---------------------------------------------------------------------------------------

#[test]
fn without_a_virtual_service_requests_reach_every_endpoint() {
    let mesh = Mesh::start(&[ok(), ok(), ok()], DR_REVIEWS, "");
    let who = mesh.who(60, &[]);
    for v in ["v1", "v2", "v3"] {
        assert!(count(&who, v) > 0, "{v} got none of 60 requests: {who:?}\n{}", mesh.routes());
    }
    assert_eq!(who.iter().filter(|w| !w.starts_with('v')).count(), 0, "answers from no backend: {who:?}");
}

// ---------------------------------------------------------------------------------------
// exportTo and the proxy's namespace: two sidecars, in `default` and in `shop`
// ---------------------------------------------------------------------------------------

/// Two VirtualServices for reviews: the older exported to its own namespace only (→ v2), the
/// newer to everyone (→ v1). A proxy in `default` sees both and takes the older; a proxy in
/// `shop` sees only the public one.
const VS_PRIVATE_AND_PUBLIC: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews-private
  namespace: default
  creationTimestamp: "2024-01-01T00:00:00Z"
spec:
  hosts:
  - reviews
  exportTo:
  - "."
  http:
  - route:
    - destination:
        host: reviews
        subset: v2
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews-public
  namespace: default
  creationTimestamp: "2025-01-01T00:00:00Z"
spec:
  hosts:
  - reviews
  http:
  - route:
    - destination:
        host: reviews
        subset: v1
"#;

/// A DestinationRule in `shop` for reviews of `default`, with the subsets swapped: for proxies
/// in `shop` it wins over the rule of reviews' own namespace.
const DR_SHOP_SWAPPED: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews-swapped
  namespace: shop
spec:
  host: reviews.default.svc.cluster.local
  subsets:
  - name: v1
    labels:
      version: v2
  - name: v2
    labels:
      version: v1
"#;

#[test]
fn export_to_hides_a_virtual_service_from_another_namespace_and_a_rule_in_the_proxy_namespace_wins() {
    let mesh = Mesh::start(&[ok(), ok()], DR_REVIEWS, VS_PRIVATE_AND_PUBLIC);
    // A second sidecar, in namespace `shop`, on its own address and the same port.
    let shop_ip = loopback_ip();
    let shop_admin = free_port(Ipv4Addr::LOCALHOST);
    let node_id = format!("sidecar~{shop_ip}~ratings-v1-1.shop~shop.svc.cluster.local");
    let shop = Envoy::start(&mesh.meshflow.bootstrap(&node_id, shop_ip, shop_admin));
    let shop_proxy = SocketAddr::from((shop_ip, mesh.port));
    let fqdn = "reviews.default.svc.cluster.local";
    let shop_who = |n: usize| -> Vec<String> {
        (0..n)
            .map(|_| http_request(shop_proxy, "GET", fqdn, "/", &[]).map(|r| answered_by(&r)).unwrap_or_default())
            .collect()
    };
    let all = |who: &[String], name: &str| who.iter().all(|w| w == name);

    // default: the private VirtualService (older) → v2; shop: only the public one → v1.
    eventually("the default proxy to route by the private VirtualService", CONVERGE, || {
        all(&mesh.who(10, &[]), "v2").then_some(())
    });
    eventually("the shop proxy to route by the public VirtualService", CONVERGE, || {
        all(&shop_who(10), "v1").then_some(())
    });
    let (default_who, shop_now) = (mesh.who(40, &[]), shop_who(40));
    assert!(all(&default_who, "v2"), "default proxy: {default_who:?}\nroutes: {}", mesh.routes());
    assert!(all(&shop_now, "v1"), "shop proxy: {shop_now:?}");

    // A rule in shop's own namespace wins there: subset v1 is now version v2 for shop only.
    fs::write(mesh.config.path().join("dr-shop.yaml"), DR_SHOP_SWAPPED).unwrap();
    eventually("the shop proxy to use its own namespace's DestinationRule", CONVERGE, || {
        all(&shop_who(10), "v2").then_some(())
    });
    let (default_who, shop_now) = (mesh.who(40, &[]), shop_who(40));
    assert!(all(&shop_now, "v2"), "shop proxy with its own rule: {shop_now:?}");
    assert!(all(&default_who, "v2"), "default proxy must keep default's rule (v2 = version v2): {default_who:?}");

    // The rule gone, shop is back on the host namespace's rule.
    fs::remove_file(mesh.config.path().join("dr-shop.yaml")).unwrap();
    eventually("the shop proxy to fall back to the rule of reviews' namespace", CONVERGE, || {
        all(&shop_who(10), "v1").then_some(())
    });
    drop(shop);
}

// ---------------------------------------------------------------------------------------
// 13. Delegate VirtualServices
// ---------------------------------------------------------------------------------------

// Adapted from Istio's delegate example (istio.io, "Virtual Service delegation"): the root
// owns the host and hands `/reviews` to a delegate without hosts.
const VS_DELEGATE_ROOT: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
  - reviews
  http:
  - name: reviews-root
    match:
    - uri:
        prefix: /reviews
    delegate:
      name: reviews-child
  - route:
    - destination:
        host: reviews
        subset: v3
"#;

/// The root, and the delegate `reviews-child` sending `end-user: jason` to `jason_subset`,
/// everything else (under the root's `/reviews`) to v1.
fn vs_delegate(jason_subset: &str) -> String {
    format!(
        r#"{VS_DELEGATE_ROOT}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews-child
spec:
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    route:
    - destination:
        host: reviews
        subset: {jason_subset}
  - route:
    - destination:
        host: reviews
        subset: v1
"#
    )
}

#[test]
fn a_delegate_routes_the_roots_prefix_by_its_header_match_and_follows_its_changes() {
    let mesh = Mesh::start(&[ok(), ok(), ok()], DR_REVIEWS, &vs_delegate("v2"));
    let who = |n: usize, path: &str, headers: &[(&str, &str)]| -> Vec<String> {
        (0..n).map(|_| answered_by(&mesh.get(path, headers))).collect()
    };
    let all = |who: &[String], name: &str| who.iter().all(|w| w == name);
    let jason = [("end-user", "jason")];

    // Under /reviews the delegate decides: its header match → v2, else v1.
    let j = who(20, "/reviews/1", &jason);
    assert!(all(&j, "v2"), "jason under /reviews must reach v2: {j:?}\n{}", mesh.routes());
    let m = who(20, "/reviews/1", &[("end-user", "mary")]);
    assert!(all(&m, "v1"), "mary under /reviews must reach v1: {m:?}\n{}", mesh.routes());
    // Outside /reviews the delegate's match does not apply: the root's own route → v3.
    let o = who(20, "/ratings", &jason);
    assert!(all(&o, "v3"), "jason outside /reviews must reach v3: {o:?}\n{}", mesh.routes());

    // The delegate changes: its header match now goes to v3.
    mesh.rewrite_and_wait_for_routes("vs.yaml", &vs_delegate("v3"));
    let v2_before = mesh.backend("v2").received();
    let j = who(20, "/reviews/1", &jason);
    assert!(all(&j, "v3"), "jason under /reviews must follow the delegate to v3: {j:?}\n{}", mesh.routes());
    assert_eq!(mesh.backend("v2").received(), v2_before, "v2 is in no route any more");

    // The delegate is deleted: the delegating route is left out (as istiod does), everything
    // falls to the root's own route, and the root's delegate is diagnosed.
    mesh.rewrite_and_wait_for_routes("vs.yaml", VS_DELEGATE_ROOT);
    let m = who(20, "/reviews/1", &[("end-user", "mary")]);
    assert!(all(&m, "v3"), "without its delegate, /reviews must fall to the root's route: {m:?}\n{}", mesh.routes());
    let (status, body) = mesh.meshflow.admin_get("/debug/diagnostics");
    assert_eq!(status, 200, "/debug/diagnostics: {body}");
    let line = body.lines().find(|l| l.contains("VirtualService") && l.contains("default/reviews "));
    assert!(
        line.is_some_and(|l| l.contains("spec.http[0].delegate") && l.contains("default/reviews-child not found")),
        "/debug/diagnostics must name the root default/reviews, spec.http[0].delegate and the missing delegate:\n{body}"
    );
}

/// Routes by the proxy that asks: `sourceLabels` against the labels a proxy sends (node
/// metadata LABELS) or, without them, its Pod's; `sourceNamespace` against its namespace.
const VS_BY_SOURCE: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
  - reviews
  http:
  - match:
    - sourceLabels:
        app: web
    route:
    - destination:
        host: reviews
        subset: v2
  - match:
    - sourceNamespace: shop
    route:
    - destination:
        host: reviews
        subset: v3
  - route:
    - destination:
        host: reviews
        subset: v1
"#;

fn ratings_pod(app: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: ratings-1\n  namespace: shop\n  labels:\n    app: {app}\n\
         status:\n  phase: Running\n  podIP: 10.0.0.77\n"
    )
}

#[test]
fn source_labels_and_source_namespace_route_each_proxy_by_who_it_is() {
    let mesh = Mesh::start(&[ok(), ok(), ok()], DR_REVIEWS, VS_BY_SOURCE);
    fs::write(mesh.config.path().join("pod-ratings.yaml"), ratings_pod("ratings")).unwrap();
    let fqdn = "reviews.default.svc.cluster.local";
    let start = |node_id: String, ip: Ipv4Addr, more: &[&str]| {
        Envoy::start(&mesh.meshflow.bootstrap_with(&node_id, ip, free_port(Ipv4Addr::LOCALHOST), more))
    };
    // A proxy that says its labels: app=web.
    let web_ip = loopback_ip();
    let web =
        start(format!("sidecar~{web_ip}~web-1.default~default.svc.cluster.local"), web_ip, &["--label", "app=web"]);
    // A proxy in shop known by its pod, whose labels the cluster has.
    let shop_ip = loopback_ip();
    let shop = start(format!("sidecar~{shop_ip}~ratings-1.shop~shop.svc.cluster.local"), shop_ip, &[]);
    let who = |ip: Ipv4Addr, n: usize| -> Vec<String> {
        let proxy = SocketAddr::from((ip, mesh.port));
        (0..n)
            .map(|_| http_request(proxy, "GET", fqdn, "/", &[]).map(|r| answered_by(&r)).unwrap_or_default())
            .collect()
    };
    let all = |who: &[String], name: &str| who.iter().all(|w| w == name);

    eventually("the app=web proxy to be routed to v2", CONVERGE, || all(&who(web_ip, 10), "v2").then_some(()));
    eventually("the shop proxy to be routed to v3", CONVERGE, || all(&who(shop_ip, 10), "v3").then_some(()));
    let (plain, web_now, shop_now) = (mesh.who(30, &[]), who(web_ip, 30), who(shop_ip, 30));
    assert!(all(&plain, "v1"), "a proxy without labels in default: v1 only: {plain:?}\n{}", mesh.routes());
    assert!(all(&web_now, "v2"), "app=web: v2 only: {web_now:?}");
    assert!(all(&shop_now, "v3"), "namespace shop: v3 only: {shop_now:?}");

    // The shop proxy's pod gains app=web: the first route now selects it.
    replace_file(&mesh.config.path().join("pod-ratings.yaml"), &ratings_pod("web"));
    eventually("the relabelled shop proxy to be routed to v2", CONVERGE, || all(&who(shop_ip, 10), "v2").then_some(()));
    let (plain, web_now) = (mesh.who(20, &[]), who(web_ip, 20));
    assert!(all(&plain, "v1"), "the unlabelled proxy keeps v1: {plain:?}");
    assert!(all(&web_now, "v2"), "the web proxy keeps v2: {web_now:?}");
    drop((web, shop));
}

// ---------------------------------------------------------------------------------------
// Service exportTo (the `networking.istio.io/exportTo` annotation)
// ---------------------------------------------------------------------------------------

/// The fixture's Service with `networking.istio.io/exportTo: "<export_to>"`.
fn service_yaml_exported(port: u16, target_port: u16, export_to: &str) -> String {
    service_yaml(port, target_port).replacen(
        "  labels:\n",
        &format!("  annotations:\n    networking.istio.io/exportTo: \"{export_to}\"\n  labels:\n"),
        1,
    )
}

/// The names of the clusters an Envoy has accepted.
fn active_clusters(envoy: &Envoy) -> Vec<String> {
    let dump = envoy.config_dump();
    dump_section(&dump, "ClustersConfigDump")
        .and_then(|s| s["dynamic_active_clusters"].as_array())
        .into_iter()
        .flatten()
        .filter_map(|c| c["cluster"]["name"].as_str().map(String::from))
        .collect()
}

/// A Service exported to its own namespace only (`.`): the sidecar of its namespace reaches
/// it; a sidecar of namespace `shop` loses its cluster, and its requests reach no backend.
/// Exported to `shop` by name, shop reaches it again; the change follows live.
#[test]
fn a_service_exported_to_its_namespace_only_is_unreachable_from_another_namespace() {
    let mesh = Mesh::start(&[ok()], "", "");
    let target_port = mesh.backends[0].addr.port();
    let shop_ip = loopback_ip();
    let shop_admin = free_port(Ipv4Addr::LOCALHOST);
    let node_id = format!("sidecar~{shop_ip}~ratings-v1-1.shop~shop.svc.cluster.local");
    let shop = Envoy::start(&mesh.meshflow.bootstrap(&node_id, shop_ip, shop_admin));
    let shop_proxy = SocketAddr::from((shop_ip, mesh.port));
    let fqdn = "reviews.default.svc.cluster.local";
    let cluster = format!("outbound|{}||{fqdn}", mesh.port);
    // The backend's name, or the status, or the transport error.
    let shop_get = || -> String {
        match http_request(shop_proxy, "GET", fqdn, "/", &[]) {
            Ok(r) => answered_by(&r),
            Err(e) => format!("error: {e}"),
        }
    };
    eventually("the shop proxy to reach the public reviews", CONVERGE, || (shop_get() == "v1").then_some(()));

    replace_file(&mesh.config.path().join("svc.yaml"), &service_yaml_exported(mesh.port, target_port, "."));
    eventually("the shop proxy to lose the cluster of reviews", CONVERGE, || {
        (!active_clusters(&shop).contains(&cluster)).then_some(())
    });
    thread::sleep(Duration::from_millis(300));
    for _ in 0..10 {
        let got = shop_get();
        assert_ne!(got, "v1", "shop must not reach a Service exported to default only");
    }
    assert!(active_clusters(&mesh.envoy).contains(&cluster), "default keeps its cluster");
    let default_who = mesh.who(10, &[]);
    assert!(default_who.iter().all(|w| w == "v1"), "the default proxy still reaches it: {default_who:?}");

    replace_file(&mesh.config.path().join("svc.yaml"), &service_yaml_exported(mesh.port, target_port, "shop"));
    eventually("the shop proxy to reach reviews exported to it by name", CONVERGE, || {
        (shop_get() == "v1").then_some(())
    });
    eventually("the default proxy to lose the cluster of reviews", CONVERGE, || {
        (!active_clusters(&mesh.envoy).contains(&cluster)).then_some(())
    });
    drop(shop);
}
