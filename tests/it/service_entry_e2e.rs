//! ServiceEntries end to end: `meshflow serve` on a config dir, one real Envoy per test, real
//! HTTP through the listener of the entry's port.
//!
//! - a STATIC entry `ext.example.com` whose endpoint is a backend on its own loopback address
//!   (port mapped by the endpoint's `ports`), reached by its host;
//! - a DNS entry for the host `localhost` without endpoints: Envoy resolves the host itself
//!   (STRICT_DNS) and reaches a backend on 127.0.0.1 at the entry's `targetPort`;
//! - a VirtualService abort on the STATIC entry's host answers for it.

use crate::support;

use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde_json::Value;
use support::{Backend, Envoy, Meshflow, WAIT, dump_section, eventually, free_port, http_get_response, loopback_ip};

const CONVERGE: Duration = Duration::from_secs(20);

fn route_config<'a>(dump: &'a Value, name: &str) -> Option<&'a Value> {
    dump_section(dump, "RoutesConfigDump")?["dynamic_route_configs"]
        .as_array()?
        .iter()
        .find(|r| r["route_config"]["name"].as_str() == Some(name))
}

/// The type of the active cluster `name` in Envoy's config dump, as Envoy writes it.
fn cluster_type(dump: &Value, name: &str) -> Option<String> {
    dump_section(dump, "ClustersConfigDump")?["dynamic_active_clusters"]
        .as_array()?
        .iter()
        .find(|c| c["cluster"]["name"].as_str() == Some(name))
        .and_then(|c| c["cluster"]["type"].as_str().map(String::from))
}

/// meshflow on a config dir with `yaml`, and Envoy listening on `bind_ip`; returns once Envoy
/// has the route config of `port` and the cluster `cluster` is active.
struct Mesh {
    envoy: Envoy,
    _meshflow: Meshflow,
    _config: tempfile::TempDir,
    bind_ip: Ipv4Addr,
}

impl Mesh {
    fn start(yaml: &str, port: u16, bind_ip: Ipv4Addr, cluster: &str) -> Mesh {
        let config = tempfile::tempdir().expect("tempdir");
        fs::write(config.path().join("entries.yaml"), yaml).unwrap();
        let meshflow = Meshflow::serve(config.path());
        let admin_port = free_port(Ipv4Addr::LOCALHOST);
        let node_id = format!("sidecar~{bind_ip}~client-1.default~default.svc.cluster.local");
        let envoy = Envoy::start(&meshflow.bootstrap(&node_id, bind_ip, admin_port));
        let mesh = Mesh { envoy, _meshflow: meshflow, _config: config, bind_ip };
        eventually(&format!("route config {port} and cluster {cluster} in Envoy"), CONVERGE, || {
            let dump = mesh.envoy.config_dump();
            (route_config(&dump, &port.to_string()).is_some() && cluster_type(&dump, cluster).is_some()).then_some(())
        });
        mesh
    }
}

fn static_entry(port: u16, backend: &Backend) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: ext
  namespace: default
spec:
  hosts: [ext.example.com]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports:
  - {{number: {port}, name: http, protocol: HTTP}}
  endpoints:
  - address: "{ip}"
    ports: {{http: {backend_port}}}
"#,
        ip = backend.ip(),
        backend_port = backend.addr.port()
    )
}

#[test]
fn a_static_service_entry_is_reachable_by_its_host() {
    let backend = eventually("a backend", WAIT, || {
        let ip = loopback_ip();
        Backend::start(ip, free_port(ip), "ext").ok()
    });
    let bind_ip = loopback_ip();
    let port = free_port(bind_ip);
    let cluster = format!("outbound|{port}||ext.example.com");
    let mesh = Mesh::start(&static_entry(port, &backend), port, bind_ip, &cluster);
    assert_eq!(cluster_type(&mesh.envoy.config_dump(), &cluster).as_deref(), Some("EDS"));
    let proxy = SocketAddr::from((mesh.bind_ip, port));
    let r = eventually("ext.example.com answered through Envoy", CONVERGE, || {
        http_get_response(proxy, "ext.example.com", "/hello").ok().filter(|r| r.status == 200)
    });
    assert_eq!(r.header("x-backend"), Some("ext"));
    assert_eq!(r.header("x-echo-path"), Some("/hello"));
    assert_eq!(r.header("x-echo-h-host"), Some("ext.example.com"), "the Host reaches the backend unchanged");
    // Another host has no virtual host on this port: Envoy answers 404 itself.
    let other = http_get_response(proxy, "other.example.com", "/").unwrap();
    assert_eq!(other.status, 404);
    assert_eq!(backend.hits(), 1);
}

#[test]
fn a_dns_service_entry_for_localhost_resolves_the_host() {
    // The backend must be on 127.0.0.1 (what `localhost` resolves to with V4_ONLY).
    let backend = eventually("a backend on 127.0.0.1", WAIT, || {
        Backend::start(Ipv4Addr::LOCALHOST, free_port(Ipv4Addr::LOCALHOST), "local").ok()
    });
    let bind_ip = loopback_ip();
    let port = free_port(bind_ip);
    let yaml = format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: local
  namespace: default
spec:
  hosts: [localhost]
  resolution: DNS
  ports:
  - {{number: {port}, name: http, protocol: HTTP, targetPort: {target}}}
"#,
        target = backend.addr.port()
    );
    let cluster = format!("outbound|{port}||localhost");
    let mesh = Mesh::start(&yaml, port, bind_ip, &cluster);
    assert_eq!(cluster_type(&mesh.envoy.config_dump(), &cluster).as_deref(), Some("STRICT_DNS"));
    let proxy = SocketAddr::from((mesh.bind_ip, port));
    let r = eventually("localhost answered through Envoy", CONVERGE, || {
        http_get_response(proxy, "localhost", "/dns").ok().filter(|r| r.status == 200)
    });
    assert_eq!(r.header("x-backend"), Some("local"));
    assert_eq!(r.header("x-echo-path"), Some("/dns"));
}

#[test]
fn a_virtual_service_fault_applies_to_a_service_entry_host() {
    let backend = eventually("a backend", WAIT, || {
        let ip = loopback_ip();
        Backend::start(ip, free_port(ip), "ext").ok()
    });
    let bind_ip = loopback_ip();
    let port = free_port(bind_ip);
    let vs = r#"---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: ext
  namespace: default
spec:
  hosts: [ext.example.com]
  http:
  - match:
    - uri: {prefix: /broken}
    fault:
      abort: {httpStatus: 418, percentage: {value: 100}}
    route:
    - destination: {host: ext.example.com}
  - route:
    - destination: {host: ext.example.com}
"#;
    let yaml = static_entry(port, &backend) + vs;
    let cluster = format!("outbound|{port}||ext.example.com");
    let mesh = Mesh::start(&yaml, port, bind_ip, &cluster);
    let proxy = SocketAddr::from((mesh.bind_ip, port));
    let aborted = eventually("the abort on ext.example.com", CONVERGE, || {
        http_get_response(proxy, "ext.example.com", "/broken").ok().filter(|r| r.status == 418)
    });
    assert_eq!(aborted.header("x-backend"), None, "the fault answers, not the backend");
    let ok = http_get_response(proxy, "ext.example.com", "/fine").unwrap();
    assert_eq!((ok.status, ok.header("x-backend")), (200, Some("ext")));
    assert_eq!(backend.requests().iter().map(|q| q.path.as_str()).collect::<Vec<_>>(), ["/fine"]);
}
