//! The Kubernetes source against a test apiserver that speaks the real list/watch protocol
//! (tests/support/apiserver.rs), driven by the real kube client.
//!
//! Most tests watch the source's own output (the commands it sends the engine), where every
//! add, update and delete is visible; one goes through the engine and cache to xDS resources.

use crate::support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use meshflow::engine::{Command, CommandSender};
use meshflow::model::{Kind, Object, ObjectKey, istio};
use meshflow::source::kube::{self, KubeOptions};
use serde_json::{Value, json};
use support::apiserver::ApiServer;

const WAIT: Duration = Duration::from_secs(30);

/// The source's output, folded into the objects it currently delivers, plus the raw log.
struct Observed {
    rx: Receiver<Command>,
    objects: BTreeMap<ObjectKey, Object>,
    synced: BTreeSet<String>,
    /// Every (key, is_apply) in order.
    log: Vec<(ObjectKey, bool)>,
    /// Per readiness name, the length of `log` when it was reported synced.
    synced_at: BTreeMap<String, usize>,
}

impl Observed {
    fn pump(&mut self, timeout: Duration) -> bool {
        match self.rx.recv_timeout(timeout) {
            Ok(command) => {
                self.take(command);
                true
            }
            Err(_) => false,
        }
    }

    fn take(&mut self, command: Command) {
        match command {
            Command::Events(events) => {
                for e in events {
                    self.log.push((e.key.clone(), e.object.is_some()));
                    match e.object {
                        Some(o) => self.objects.insert(e.key, o),
                        None => self.objects.remove(&e.key),
                    };
                }
            }
            Command::Synced(name) => {
                self.synced_at.entry(name.clone()).or_insert(self.log.len());
                self.synced.insert(name);
            }
            Command::Then(callback) => callback(),
            Command::Batch(commands) => commands.into_iter().for_each(|c| self.take(c)),
        }
    }

    fn until(&mut self, what: &str, mut done: impl FnMut(&Observed) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; have {:?}",
                self.objects.keys().collect::<Vec<_>>()
            );
            self.pump(Duration::from_millis(50));
        }
    }

    /// Reads whatever arrives within `quiet` of silence.
    fn settle(&mut self, quiet: Duration) {
        while self.pump(quiet) {}
    }

    fn has(&self, kind: Kind, ns: &str, name: &str) -> bool {
        self.objects.contains_key(&ObjectKey::new(kind, ns, name))
    }
}

fn start_source(server: &ApiServer, rt: &tokio::runtime::Runtime, options: KubeOptions) -> Observed {
    let (tx, rx) = crossbeam_channel::unbounded();
    let names = kube::source_names(&options);
    rt.block_on(async {
        let client = server.kube_client();
        kube::spawn(client, options, CommandSender::new(tx, None));
    });
    let mut o =
        Observed { rx, objects: BTreeMap::new(), synced: BTreeSet::new(), log: Vec::new(), synced_at: BTreeMap::new() };
    o.until("every watch to sync", |o| names.iter().all(|n| o.synced.contains(n)));
    o
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn service(name: &str, port: u16) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
        "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": port, "targetPort": 8080}]}})
}

fn slice(name: &str, svc: &str, ips: &[&str]) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "default", "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": ips.iter().map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}})).collect::<Vec<_>>()})
}

fn pod(name: &str, app: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": app},
            "annotations": {"big": "x".repeat(2000)}, "managedFields": [{"manager": "kubectl"}]},
        "spec": {"nodeName": "node-a", "containers": [{"name": "c", "image": "busybox", "ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]}})
}

fn virtual_service(name: &str, host: &str) -> Value {
    json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"hosts": [host], "http": [{"route": [{"destination": {"host": host}}]}]}})
}

fn cluster_state(server: &ApiServer) {
    server.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default", "labels": {"istio-injection": "enabled"}}}));
    server.apply(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a", "labels": {"topology.kubernetes.io/zone": "z1"}}}));
    server.apply(service("web", 80));
    server.apply(slice("web-1", "web", &["10.0.0.1"]));
    server.apply(pod("web-a", "web", "10.0.0.1"));
    server.apply(virtual_service("web", "web"));
    server.apply(json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
        "metadata": {"name": "web", "namespace": "default"}, "spec": {"host": "web", "subsets": [{"name": "v1", "labels": {"version": "v1"}}]}}));
    server.apply(json!({"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
        "metadata": {"name": "gw", "namespace": "default"},
        "spec": {"selector": {"istio": "ingressgateway"}, "servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}]}}));
    server.apply(json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
        "metadata": {"name": "ext", "namespace": "default"},
        "spec": {"hosts": ["api.example.com"], "ports": [{"number": 443, "name": "https", "protocol": "TLS"}], "resolution": "DNS"}}));
}

#[test]
fn initial_sync_then_add_update_and_delete_of_every_kind() {
    let server = ApiServer::start();
    cluster_state(&server);
    let rt = runtime();
    let mut o = start_source(&server, &rt, KubeOptions::default());
    for (kind, ns, name) in [
        (Kind::Namespace, "", "default"),
        (Kind::Node, "", "node-a"),
        (Kind::Service, "default", "web"),
        (Kind::EndpointSlice, "default", "web-1"),
        (Kind::Pod, "default", "web-a"),
        (Kind::VirtualService, "default", "web"),
        (Kind::DestinationRule, "default", "web"),
        (Kind::Gateway, "default", "gw"),
        (Kind::ServiceEntry, "default", "ext"),
    ] {
        assert!(o.has(kind, ns, name), "{kind} {ns}/{name} after the initial sync");
    }
    // What is kept of a Pod is what translation needs: no annotations, no spec containers.
    let Some(Object::Pod(p)) = o.objects.get(&ObjectKey::new(Kind::Pod, "default", "web-a")) else { panic!() };
    assert_eq!((p.ip.as_deref(), p.ready, p.node_name.as_deref()), (Some("10.0.0.1"), true, Some("node-a")));
    // Istio objects carry their creation time as the apiserver writes it (whole seconds, UTC).
    let Some(Object::VirtualService(vs)) = o.objects.get(&ObjectKey::new(Kind::VirtualService, "default", "web"))
    else {
        panic!()
    };
    let created = vs.creation_timestamp.clone().expect("the apiserver sets creationTimestamp");
    assert!(created.len() == 20 && created.ends_with('Z') && istio::parse_rfc3339(&created).is_some(), "{created}");

    // Add, update, delete.
    server.apply(service("api", 81));
    server.apply(slice("web-1", "web", &["10.0.0.1", "10.0.0.2"]));
    server.apply(virtual_service("web", "web.default.svc.cluster.local"));
    server.delete("v1", "Pod", Some("default"), "web-a");
    server.delete("networking.istio.io/v1", "Gateway", Some("default"), "gw");
    server.delete("v1", "Node", None, "node-a");
    o.until("the changes", |o| {
        o.has(Kind::Service, "default", "api")
            && !o.has(Kind::Pod, "default", "web-a")
            && !o.has(Kind::Gateway, "default", "gw")
            && !o.has(Kind::Node, "", "node-a")
            && matches!(o.objects.get(&ObjectKey::new(Kind::EndpointSlice, "default", "web-1")),
                Some(Object::EndpointSlice(s)) if s.endpoints.len() == 2)
            && matches!(o.objects.get(&ObjectKey::new(Kind::VirtualService, "default", "web")),
                Some(Object::VirtualService(v)) if v.spec.hosts == ["web.default.svc.cluster.local"]
                    && v.creation_timestamp.as_ref() == Some(&created))
    });
}

/// The source's final state, compared with a fresh start against the same server.
fn assert_equals_fresh_start(server: &ApiServer, rt: &tokio::runtime::Runtime, o: &Observed) {
    let fresh = start_source(server, rt, KubeOptions::default());
    assert_eq!(o.objects, fresh.objects, "after recovery the source holds what a fresh start holds");
}

#[test]
fn a_dropped_watch_with_changes_meanwhile_converges_without_removing_and_re_adding() {
    let server = ApiServer::start();
    cluster_state(&server);
    server.apply(service("api", 81));
    let rt = runtime();
    let mut o = start_source(&server, &rt, KubeOptions::default());
    let before = o.log.len();

    // The apiserver goes away; meanwhile objects change; history is compacted, so the
    // watchers must relist (410) when they come back.
    server.set_down(true);
    std::thread::sleep(Duration::from_millis(300));
    server.apply(slice("web-1", "web", &["10.0.0.7"]));
    server.delete("v1", "Service", Some("default"), "api");
    server.apply(service("late", 82));
    server.compact();
    server.set_down(false);

    o.until("the relist", |o| {
        o.has(Kind::Service, "default", "late")
            && !o.has(Kind::Service, "default", "api")
            && matches!(o.objects.get(&ObjectKey::new(Kind::EndpointSlice, "default", "web-1")),
                Some(Object::EndpointSlice(s)) if s.endpoints[0].addresses == ["10.0.0.7"])
    });
    o.settle(Duration::from_millis(1500));
    let after: Vec<&(ObjectKey, bool)> = o.log[before..].iter().collect();
    let touched: BTreeSet<String> =
        after.iter().map(|(k, apply)| format!("{k} {}", if *apply { "apply" } else { "delete" })).collect();
    assert_eq!(
        touched,
        BTreeSet::from([
            "EndpointSlice default/web-1 apply".to_string(),
            "Service default/api delete".to_string(),
            "Service default/late apply".to_string()
        ]),
        "only what changed while the watch was down; nothing unchanged re-sent, nothing removed and re-added"
    );
    assert_equals_fresh_start(&server, &rt, &o);
}

#[test]
fn a_410_gone_on_rewatch_relists_and_recovers() {
    let server = ApiServer::start();
    cluster_state(&server);
    let rt = runtime();
    let mut o = start_source(&server, &rt, KubeOptions::default());
    server.apply(pod("web-b", "web", "10.0.0.2"));
    o.until("the new pod", |o| o.has(Kind::Pod, "default", "web-b"));
    server.delete("v1", "Pod", Some("default"), "web-b");
    server.compact();
    server.drop_watches();
    o.until("the relist to delete the pod", |o| !o.has(Kind::Pod, "default", "web-b"));
    assert_equals_fresh_start(&server, &rt, &o);
}

#[test]
fn istio_objects_are_read_in_the_version_the_cluster_serves() {
    let server = ApiServer::start();
    server.set_served_versions("networking.istio.io", &["v1alpha3"]);
    server.disable_group("discovery.k8s.io");
    server.apply(service("web", 80));
    server.apply(json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "web", "namespace": "default"},
        "subsets": [{"addresses": [{"ip": "10.0.0.3"}], "ports": [{"name": "http", "port": 8080}]}]}));
    server.apply(virtual_service("web", "web"));
    let rt = runtime();
    let o = start_source(&server, &rt, KubeOptions::default());
    assert!(o.has(Kind::VirtualService, "default", "web"));
    assert!(o.has(Kind::Endpoints, "default", "web"), "Endpoints are watched where EndpointSlices are not served");
    assert!(server.requests().iter().any(|r| r.contains("/apis/networking.istio.io/v1alpha3/virtualservices")));
    assert!(!server.requests().iter().any(|r| r.contains("/apis/discovery.k8s.io/v1/endpointslices")));
}

#[test]
fn an_invalid_istio_object_is_reported_as_an_event_and_left_out() {
    let server = ApiServer::start();
    cluster_state(&server);
    server.apply(json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
        "metadata": {"name": "dup", "namespace": "default"},
        "spec": {"hosts": ["example.com"], "ports": [{"number": 1, "name": "a"}, {"number": 1, "name": "b"}]}}));
    let rt = runtime();
    let mut o = start_source(&server, &rt, KubeOptions::default());
    assert!(!o.has(Kind::ServiceEntry, "default", "dup"));
    assert!(o.has(Kind::ServiceEntry, "default", "ext"), "the valid one still flows");
    let deadline = Instant::now() + WAIT;
    let event = loop {
        if let Some(e) = server.events().into_iter().find(|e| e.to_string().contains("dup")) {
            break e;
        }
        assert!(Instant::now() < deadline, "no Event posted for the invalid ServiceEntry");
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = event.to_string();
    assert!(text.contains("InvalidConfiguration"), "{text}");
    assert!(text.contains("spec.ports[1].number") && text.contains("port number cannot be duplicated"), "{text}");
    // A valid object that turns invalid is left out too.
    server.apply(json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
        "metadata": {"name": "ext", "namespace": "default"}, "spec": {"hosts": []}}));
    o.until("the now-invalid ServiceEntry to be removed", |o| !o.has(Kind::ServiceEntry, "default", "ext"));
}

#[test]
fn watch_namespace_limits_namespaced_kinds_only() {
    let server = ApiServer::start();
    cluster_state(&server);
    let mut other = service("other", 90);
    other["metadata"]["namespace"] = json!("elsewhere");
    server.apply(other);
    let rt = runtime();
    let o = start_source(&server, &rt, KubeOptions { namespaces: vec!["default".into()], ..Default::default() });
    assert!(o.has(Kind::Service, "default", "web"));
    assert!(!o.has(Kind::Service, "elsewhere", "other"));
    assert!(o.has(Kind::Node, "", "node-a"), "cluster-scoped kinds are still watched");
}

/// Through the engine and cache: not ready and nothing served while the apiserver is down at
/// start; then it converges.
#[test]
fn apiserver_down_at_start_keeps_meshflow_not_ready_then_it_converges() {
    use meshflow::cache::Cache;
    use meshflow::engine::Engine;
    use meshflow::translate::ResourceType;

    let server = ApiServer::start_down();
    cluster_state(&server);
    let options = KubeOptions::default();
    let cache = Cache::new(kube::source_names(&options));
    let engine = Engine::start(cache.engine_sink());
    let rt = runtime();
    rt.block_on(async {
        kube::spawn(server.kube_client(), options, engine.sender());
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(!cache.is_ready(), "not ready while the apiserver is unreachable");
    assert_eq!(cache.len(ResourceType::Cluster), 0);
    assert!(cache.pending_sources().len() >= 9, "{:?}", cache.pending_sources());
    server.set_down(false);
    let deadline = Instant::now() + WAIT;
    while !cache.is_ready() {
        assert!(Instant::now() < deadline, "still pending: {:?}", cache.pending_sources());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        cache
            .get(&meshflow::cache::View::sidecar(), ResourceType::Cluster, "outbound|80||web.default.svc.cluster.local")
            .is_some()
    );
    let cla = cache
        .get(
            &meshflow::cache::View::sidecar(),
            ResourceType::ClusterLoadAssignment,
            "outbound|80||web.default.svc.cluster.local",
        )
        .unwrap();
    assert!(cla.body.windows(8).any(|w| w == b"10.0.0.1"), "the slice's endpoint is served");
}

/// The binary, as an operator runs it: `serve --kubernetes --kubeconfig FILE`. Not ready
/// while a watch is pending; then the cluster's service is served.
#[test]
fn serve_kubernetes_with_a_kubeconfig_file_becomes_ready_and_serves_the_cluster() {
    use std::io::{Read, Write};
    use std::net::{Ipv4Addr, SocketAddr, TcpStream};

    let server = ApiServer::start();
    cluster_state(&server);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = server.kubeconfig(dir.path());
    let ip = Ipv4Addr::LOCALHOST;
    let (xds, admin) = (support::free_port(ip), support::free_port(ip));
    let log = std::fs::File::create(dir.path().join("meshflow.log")).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_meshflow"))
        .args(["serve", "--kubernetes", "--kubeconfig"])
        .arg(&kubeconfig)
        .args(["--xds-addr", &format!("127.0.0.1:{xds}"), "--admin-addr", &format!("127.0.0.1:{admin}")])
        .stderr(log)
        .spawn()
        .unwrap();
    let get = |path: &str| -> Option<(u16, String)> {
        let mut s = TcpStream::connect(SocketAddr::from((ip, admin))).ok()?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let status = text.split(' ').nth(1)?.parse().ok()?;
        Some((status, text.split("\r\n\r\n").nth(1).unwrap_or_default().to_string()))
    };
    let ready = support::eventually("meshflow to answer /ready 200", WAIT, || get("/ready").filter(|(s, _)| *s == 200));
    assert_eq!(ready.1, "ready\n");
    let resources = get("/debug/resources").unwrap().1;
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        resources.contains("CDS outbound|80||web.default.svc.cluster.local"),
        "{resources}\n{}",
        std::fs::read_to_string(dir.path().join("meshflow.log")).unwrap_or_default()
    );
}

#[test]
fn tls_and_opaque_secrets_are_read_other_types_are_left_out_and_a_rotation_arrives() {
    let server = ApiServer::start();
    cluster_state(&server);
    let secret = |name: &str, t: &str, data: Value| {
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "istio-system"},
            "type": t, "data": data})
    };
    // Secrets are read where gateways live.
    server.apply(gateway("istio-system", "ingress"));
    // base64 of "CERT1", "KEY1", "CA1"
    server.apply(secret("gw-cert", "kubernetes.io/tls", json!({"tls.crt": "Q0VSVDE=", "tls.key": "S0VZMQ=="})));
    server.apply(secret("gw-cert-cacert", "Opaque", json!({"cacert": "Q0Ex"})));
    server.apply(secret("token", "kubernetes.io/service-account-token", json!({"token": "dG9r"})));
    let rt = runtime();
    let mut o = start_source(&server, &rt, KubeOptions::default());
    assert!(o.has(Kind::Secret, "istio-system", "gw-cert"));
    assert!(o.has(Kind::Secret, "istio-system", "gw-cert-cacert"));
    assert!(!o.has(Kind::Secret, "istio-system", "token"), "only kubernetes.io/tls and Opaque are read");
    assert!(server.events().iter().all(|e| !e.to_string().contains("token")), "a skipped type is not an error");
    let cert = |o: &Observed| match o.objects.get(&ObjectKey::new(Kind::Secret, "istio-system", "gw-cert")) {
        Some(Object::Secret(s)) => s.get("tls.crt").map(<[u8]>::to_vec),
        _ => None,
    };
    assert_eq!(cert(&o).as_deref(), Some(&b"CERT1"[..]));
    // base64 of "CERT2"
    server.apply(secret("gw-cert", "kubernetes.io/tls", json!({"tls.crt": "Q0VSVDI=", "tls.key": "S0VZMQ=="})));
    o.until("the rotated certificate", |o| cert(o).as_deref() == Some(&b"CERT2"[..]));
    assert!(server.delete("v1", "Secret", Some("istio-system"), "gw-cert"));
    o.until("the deleted Secret to go", |o| !o.has(Kind::Secret, "istio-system", "gw-cert"));
}

fn gateway(ns: &str, name: &str) -> Value {
    json!({"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": {"name": name, "namespace": ns},
        "spec": {"selector": {"istio": "ingressgateway"}, "servers": [{"port": {"number": 443, "name": "https", "protocol": "HTTPS"},
            "hosts": ["*"], "tls": {"mode": "SIMPLE", "credentialName": "gw-cert"}}]}})
}

/// A kubernetes.io/tls Secret (certificate "CERT", key "KEY").
fn tls_secret(ns: &str, name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns},
        "type": "kubernetes.io/tls", "data": {"tls.crt": "Q0VSVA==", "tls.key": "S0VZ"}})
}

/// The requests for Secrets so far (list or watch, any scope), query decoded.
fn secret_requests(server: &ApiServer) -> Vec<String> {
    let decode = |r: String| r.replace("%2F", "/").replace("%2f", "/").replace("%3D", "=").replace("%3d", "=");
    server.requests().into_iter().filter(|r| r.contains("/secrets")).map(decode).collect()
}

fn has_request(requests: &[String], path: &str) -> bool {
    requests.iter().any(|r| r.starts_with(&format!("GET {path}?")) || *r == format!("GET {path}"))
}

#[test]
fn secrets_are_not_read_at_all_while_no_gateway_exists() {
    let server = ApiServer::start();
    cluster_state(&server);
    assert!(server.delete("networking.istio.io/v1", "Gateway", Some("default"), "gw"));
    server.apply(tls_secret("istio-system", "gw-cert"));
    server.apply(tls_secret("default", "app-cert"));
    let rt = runtime();
    let mut o = start_source(&server, &rt, KubeOptions::default());
    assert!(o.synced.contains("kubernetes/secret"), "nothing to read is synced");
    o.settle(Duration::from_millis(500));
    assert!(!o.log.iter().any(|(k, _)| k.kind == Kind::Secret), "{:?}", o.log);
    assert_eq!(secret_requests(&server), Vec::<String>::new(), "neither cluster-wide nor in any namespace");
}

#[test]
fn a_gateway_namespace_gets_a_secret_watch_until_its_last_gateway_is_deleted() {
    let server = ApiServer::start();
    cluster_state(&server);
    server.apply(tls_secret("istio-system", "gw-cert"));
    server.apply(tls_secret("shop", "shop-cert"));
    let rt = runtime();
    let mut o = start_source(&server, &rt, KubeOptions::default());
    assert!(!o.has(Kind::Secret, "istio-system", "gw-cert"));
    assert!(!has_request(&secret_requests(&server), "/api/v1/namespaces/istio-system/secrets"));

    server.apply(gateway("istio-system", "ingress"));
    server.apply(gateway("istio-system", "ingress-2"));
    o.until("the Secret of the new gateway namespace", |o| o.has(Kind::Secret, "istio-system", "gw-cert"));
    let Some(Object::Secret(cert)) = o.objects.get(&ObjectKey::new(Kind::Secret, "istio-system", "gw-cert")) else {
        panic!()
    };
    assert_eq!(cert.get("tls.crt"), Some(&b"CERT"[..]));
    let requests = secret_requests(&server);
    assert!(has_request(&requests, "/api/v1/namespaces/istio-system/secrets"), "{requests:?}");
    assert!(has_request(&requests, "/api/v1/namespaces/default/secrets"), "the Gateway in default: {requests:?}");
    assert!(!has_request(&requests, "/api/v1/secrets"), "never cluster-wide: {requests:?}");
    assert!(!requests.iter().any(|r| r.contains("/namespaces/shop/")), "{requests:?}");
    o.settle(Duration::from_millis(300));
    assert!(!o.has(Kind::Secret, "shop", "shop-cert"), "no gateway in shop");

    // One of its two Gateways goes: the namespace is still watched.
    assert!(server.delete("networking.istio.io/v1", "Gateway", Some("istio-system"), "ingress"));
    o.settle(Duration::from_millis(500));
    assert!(o.has(Kind::Secret, "istio-system", "gw-cert"));
    // The last one goes: its Secrets are deleted from the engine, and later ones not read.
    let before = o.log.len();
    assert!(server.delete("networking.istio.io/v1", "Gateway", Some("istio-system"), "ingress-2"));
    o.until("the Secret to be deleted", |o| !o.has(Kind::Secret, "istio-system", "gw-cert"));
    let key = ObjectKey::new(Kind::Secret, "istio-system", "gw-cert");
    assert!(o.log[before..].contains(&(key, false)), "a delete event: {:?}", &o.log[before..]);
    server.apply(tls_secret("istio-system", "later"));
    o.settle(Duration::from_millis(500));
    assert!(!o.has(Kind::Secret, "istio-system", "later"), "the namespace's watch is stopped");
}

#[test]
fn kubernetes_secret_is_synced_after_the_secrets_of_the_gateway_namespaces_known_at_start() {
    let server = ApiServer::start();
    cluster_state(&server);
    server.apply(gateway("istio-system", "ingress"));
    server.apply(tls_secret("istio-system", "gw-cert"));
    let rt = runtime();
    let mut o = start_source(&server, &rt, KubeOptions::default());
    o.until("the Secret", |o| o.has(Kind::Secret, "istio-system", "gw-cert"));
    let key = ObjectKey::new(Kind::Secret, "istio-system", "gw-cert");
    let delivered = o.log.iter().position(|e| *e == (key.clone(), true)).unwrap();
    let synced = o.synced_at["kubernetes/secret"];
    assert!(delivered < synced, "the Secret (log entry {delivered}) before kubernetes/secret is synced (at {synced})");
}

#[test]
fn a_connected_gateway_proxy_alone_makes_its_namespace_s_secrets_read() {
    use meshflow::model::proxy::{ProxyClass, ProxyKind};
    use meshflow::source::interest::SecretInterest;
    use meshflow::xds::classes::ClassRegistry;

    let server = ApiServer::start();
    cluster_state(&server);
    server.apply(tls_secret("edge", "edge-cert"));
    let interest = SecretInterest::new();
    let rt = runtime();
    let options = KubeOptions { secret_interest: interest.clone(), ..Default::default() };
    let mut o = start_source(&server, &rt, options);
    assert!(!o.has(Kind::Secret, "edge", "edge-cert"));

    // The class registry of the xDS server, as a gateway proxy of namespace edge connects.
    let (classes_tx, _classes_rx) = crossbeam_channel::unbounded();
    let registry =
        ClassRegistry::with_secret_interest(CommandSender::new(classes_tx, None), Duration::ZERO, Some(interest));
    let sidecar = registry.join(ProxyClass::of_proxy(ProxyKind::Sidecar, "edge", "app-1", None));
    o.settle(Duration::from_millis(300));
    assert!(!has_request(&secret_requests(&server), "/api/v1/namespaces/edge/secrets"), "a sidecar is no gateway");
    let proxy = registry.join(ProxyClass::of_proxy(ProxyKind::Router, "edge", "gw-1", None));
    o.until("the Secret of the proxy's namespace", |o| o.has(Kind::Secret, "edge", "edge-cert"));
    assert!(has_request(&secret_requests(&server), "/api/v1/namespaces/edge/secrets"));
    // The proxy's class leaves (no runtime here: at once, no grace period).
    drop(proxy);
    o.until("the Secret to be deleted", |o| !o.has(Kind::Secret, "edge", "edge-cert"));
    drop(sidecar);
}

#[test]
fn watch_namespace_bounds_the_gateway_namespaces_whose_secrets_are_read() {
    use meshflow::source::interest::SecretInterest;

    let server = ApiServer::start();
    cluster_state(&server);
    server.apply(tls_secret("edge", "edge-cert"));
    server.apply(tls_secret("default", "default-cert"));
    let interest = SecretInterest::new();
    interest.add("edge");
    let rt = runtime();
    let options =
        KubeOptions { namespaces: vec!["default".into()], secret_interest: interest.clone(), ..Default::default() };
    let mut o = start_source(&server, &rt, options);
    assert!(o.has(Kind::Secret, "default", "default-cert"), "the Gateway's namespace, within --watch-namespace");
    o.settle(Duration::from_millis(300));
    assert!(!o.has(Kind::Secret, "edge", "edge-cert"));
    let requests = secret_requests(&server);
    assert!(!requests.iter().any(|r| r.contains("/namespaces/edge/")), "{requests:?}");
}

#[test]
fn secret_selector_reads_labelled_secrets_through_the_apiservers_filter() {
    let server = ApiServer::start();
    cluster_state(&server);
    let mut labelled = tls_secret("anywhere", "labelled");
    labelled["metadata"]["labels"] = json!({"meshflow.io/gateway-cert": "true"});
    server.apply(labelled);
    server.apply(tls_secret("anywhere", "unlabelled"));
    let rt = runtime();
    let selector = "meshflow.io/gateway-cert=true";
    let options = KubeOptions { secret_selector: Some(selector.into()), ..Default::default() };
    assert!(kube::source_names(&options).contains(&"kubernetes/secret".to_string()));
    let mut o = start_source(&server, &rt, options);
    assert!(o.has(Kind::Secret, "anywhere", "labelled"), "cluster-wide, no gateway needed");
    o.settle(Duration::from_millis(300));
    assert!(!o.has(Kind::Secret, "anywhere", "unlabelled"));
    let requests = secret_requests(&server);
    let list = requests.iter().find(|r| r.starts_with("GET /api/v1/secrets?")).expect("a cluster-wide list");
    assert!(list.contains(&format!("labelSelector={selector}")), "{list}");
    assert!(requests.iter().all(|r| r.contains(&format!("labelSelector={selector}"))), "{requests:?}");
    assert!(!requests.iter().any(|r| r.contains("/namespaces/")), "one static watch: {requests:?}");
}
