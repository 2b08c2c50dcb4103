//! Gateways end to end: a real Envoy connects as a gateway proxy (`router~` node id, its own
//! loopback address) and gets the listeners of the Gateways whose selector matches it, with
//! the VirtualServices bound to them; real HTTP goes through it.
//!
//! Fixture: Service `reviews` in `default` (port P, `http`), one endpoint (a [`Backend`] named
//! `v1`); the gateway workload's Pod `ingressgateway-1` in `istio-system`, labelled
//! `istio: ingressgateway`; the Gateway `bookinfo-gateway` (selector `istio: ingressgateway`,
//! an HTTP server on port G for `bookinfo.example.com`), the VirtualService `bookinfo` bound to
//! it, and a mesh-only VirtualService for `reviews` that answers 418 to sidecars.

use crate::support;

use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde_json::Value;
use support::{
    Backend, Envoy, Meshflow, WAIT, dump_section, dynamic_listener_names, eventually, free_port, http_request,
    loopback_ip, warming_cluster_names,
};

const CONVERGE: Duration = Duration::from_secs(20);

fn route_config_names(dump: &Value) -> Vec<String> {
    let mut names: Vec<String> = dump_section(dump, "RoutesConfigDump")
        .and_then(|s| s["dynamic_route_configs"].as_array())
        .map(|a| a.iter().filter_map(|r| r["route_config"]["name"].as_str().map(String::from)).collect())
        .unwrap_or_default();
    names.sort();
    names
}

fn fixture(backend: &Backend, gateway_port: u16) -> String {
    let (ip, port) = (backend.ip(), backend.addr.port());
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: reviews
  namespace: default
spec:
  selector:
    app: reviews
  ports:
  - name: http
    port: {port}
    targetPort: {port}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: reviews-1
  namespace: default
  labels:
    kubernetes.io/service-name: reviews
addressType: IPv4
ports:
- name: http
  protocol: TCP
  port: {port}
endpoints:
- addresses: ["{ip}"]
  conditions:
    ready: true
---
apiVersion: v1
kind: Pod
metadata:
  name: ingressgateway-1
  namespace: istio-system
  labels:
    app: istio-ingressgateway
    istio: ingressgateway
status:
  phase: Running
  podIP: 10.0.0.99
---
# source: istio/istio:samples/bookinfo/networking/bookinfo-gateway.yaml@86c9f01fd735 (Apache-2.0), port and host adapted
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: bookinfo-gateway
  namespace: default
spec:
  selector:
    istio: ingressgateway
  servers:
  - port:
      number: {gateway_port}
      name: http
      protocol: HTTP
    hosts:
    - "bookinfo.example.com"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: bookinfo
  namespace: default
spec:
  hosts:
  - "bookinfo.example.com"
  gateways:
  - bookinfo-gateway
  http:
  - match:
    - uri:
        prefix: /reviews
    route:
    - destination:
        host: reviews
        port:
          number: {port}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews-mesh-only
  namespace: default
spec:
  hosts:
  - reviews
  http:
  - fault:
      abort:
        httpStatus: 418
        percentage:
          value: 100
    route:
    - destination:
        host: reviews
"#
    )
}

#[test]
fn a_gateway_proxy_routes_its_gateway_hosts_and_gets_no_sidecar_listeners() {
    let backend_ip = loopback_ip();
    let backend = eventually("a backend", WAIT, || Backend::start(backend_ip, free_port(backend_ip), "v1").ok());
    let gw_ip = loopback_ip();
    let gateway_port = free_port(gw_ip);
    let config = tempfile::tempdir().expect("tempdir");
    fs::write(config.path().join("mesh.yaml"), fixture(&backend, gateway_port)).unwrap();

    let meshflow = Meshflow::serve(config.path());
    let admin_port = free_port(Ipv4Addr::LOCALHOST);
    // No LABELS in the node metadata: the class takes the labels of the Pod the node id names.
    let node_id = format!("router~{gw_ip}~ingressgateway-1.istio-system~istio-system.svc.cluster.local");
    let envoy = Envoy::start(&meshflow.bootstrap(&node_id, gw_ip, admin_port));
    let listener = format!("0.0.0.0_{gateway_port}");
    let route = format!("http.{gateway_port}");
    eventually("the gateway listener and its routes in Envoy", CONVERGE, || {
        let dump = envoy.config_dump();
        let ready = dynamic_listener_names(&dump).contains(&listener)
            && route_config_names(&dump).contains(&route)
            && warming_cluster_names(&dump).is_empty();
        ready.then_some(())
    });
    let dump = envoy.config_dump();
    assert_eq!(dynamic_listener_names(&dump), [listener], "a gateway gets no sidecar listener");
    assert_eq!(route_config_names(&dump), [route], "no sidecar route config either");

    let gw = SocketAddr::from((gw_ip, gateway_port));
    let r = eventually("a routed answer through the gateway", CONVERGE, || {
        http_request(gw, "GET", "bookinfo.example.com", "/reviews/1", &[]).ok().filter(|r| r.status == 200)
    });
    assert_eq!(r.header("x-backend"), Some("v1"));
    assert_eq!(r.header("x-echo-path"), Some("/reviews/1"));
    // The mesh-only VirtualService (418 for sidecars) is not on the gateway: the request
    // above reached the backend. A path the VirtualService does not match: 404.
    assert_eq!(http_request(gw, "GET", "bookinfo.example.com", "/other", &[]).unwrap().status, 404);
    // A host no server of the Gateway names: 404 from the gateway, the backend never sees it.
    let before = backend.hits();
    assert_eq!(http_request(gw, "GET", "unknown.example.com", "/reviews/1", &[]).unwrap().status, 404);
    assert_eq!(backend.hits(), before);
    let _ = meshflow.log();
}
