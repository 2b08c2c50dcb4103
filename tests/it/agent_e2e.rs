//! `meshflow agent` end to end: a real meshflow, a real Envoy started and supervised by the
//! agent, real HTTP through it. Each test spawns its own meshflow, agent and backends on
//! distinct loopback addresses and free ports, so the tests run in parallel.
//!
//! Run: `cargo test --release --test it agent_e2e::` (Envoy from `scripts/ensure-envoy`).

use crate::support;

use std::fs;
use std::io::{BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::thread;
use std::time::{Duration, Instant};

use support::{
    Agent, Backend, HTTP_TIMEOUT, Meshflow, WAIT, eventually, free_port, http_get, loopback_ip, pid_alive,
    read_response, send_signal,
};

/// Longest an agent may take to exit once it has been told to stop (or has given up).
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

fn ip_of(addr: SocketAddr) -> Ipv4Addr {
    match addr {
        SocketAddr::V4(v4) => *v4.ip(),
        SocketAddr::V6(_) => unreachable!("the harness binds IPv4"),
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// Service `web` (port P on the proxy's bind address → the backend), meshflow serving it,
/// nothing else yet.
struct World {
    meshflow: Meshflow,
    backend: Backend,
    _config: tempfile::TempDir,
    /// The proxy's own loopback address: its listeners bind here.
    bind_ip: Ipv4Addr,
    /// The service port, where the proxy listens.
    port: u16,
}

impl World {
    /// A backend answering after `delay` (zero: at once).
    fn start(backend_name: &str, delay: Duration) -> World {
        let backend = eventually("a backend on a free port", WAIT, || {
            let ip = loopback_ip();
            Backend::start_slow(ip, free_port(ip), backend_name, delay).ok()
        });
        let bind_ip = loopback_ip();
        let port = free_port(bind_ip);
        let config = tempfile::tempdir().expect("tempdir");
        fs::write(config.path().join("svc.yaml"), support::web_service_yaml(port, backend.addr.port())).unwrap();
        fs::write(config.path().join("slice.yaml"), support::web_slice_yaml(ip_of(backend.addr), backend.addr.port()))
            .unwrap();
        let meshflow = Meshflow::serve(config.path());
        World { meshflow, backend, _config: config, bind_ip, port }
    }

    fn node_id(&self) -> String {
        format!("sidecar~{}~client-1.default~default.svc.cluster.local", self.bind_ip)
    }

    /// Agent flags for this world's proxy: Envoy from the harness, meshflow's xDS address,
    /// the proxy's bind address, and `extra`.
    fn agent_args(&self, extra: &[&str]) -> Vec<String> {
        let mut args = strings(&[
            "--envoy-bin",
            &support::envoy_bin().display().to_string(),
            "--xds-addr",
            &self.meshflow.xds_addr.to_string(),
            "--bind-address",
            &self.bind_ip.to_string(),
        ]);
        args.extend(strings(extra));
        args
    }

    /// Starts an agent with `--node-id` and `extra` flags, and waits until it is ready.
    fn ready_agent(&self, extra: &[&str]) -> Agent {
        let mut args = self.agent_args(&["--node-id", &self.node_id()]);
        args.extend(strings(extra));
        let mut agent = Agent::spawn(&args, &[]);
        let took = agent.wait_ready();
        eprintln!("agent ready {took:?} after spawn");
        agent
    }

    fn proxy(&self) -> SocketAddr {
        SocketAddr::from((self.bind_ip, self.port))
    }

    fn host(&self) -> String {
        format!("web.default.svc.cluster.local:{}", self.port)
    }

    /// One GET through the proxy.
    fn get(&self) -> std::io::Result<(u16, String)> {
        http_get(self.proxy(), &self.host(), "/")
    }
}

#[test]
fn agent_starts_envoy_with_identity_from_the_environment_reports_ready_and_carries_traffic() {
    let world = World::start("web-backend", Duration::ZERO);
    let ip = world.bind_ip.to_string();
    let env = [
        ("POD_NAME", "client-1"),
        ("POD_NAMESPACE", "default"),
        ("INSTANCE_IP", ip.as_str()),
        ("ISTIO_META_CLUSTER_ID", "test-cluster"),
        ("ISTIO_METAJSON_LABELS", r#"{"app": "client", "version": "v1"}"#),
    ];
    let spawned = Instant::now();
    let mut agent = Agent::spawn(&world.agent_args(&["--envoy-log-level", "info"]), &env);
    agent.wait_ready();
    eprintln!("TIMING agent start -> /ready 200: {:?}", spawned.elapsed());
    assert_eq!(agent.get("/healthz/ready").unwrap().0, 200, "Istio's readiness path is an alias");

    // A request through Envoy reaches the backend.
    assert_eq!(world.get().expect("GET through envoy"), (200, "web-backend".to_string()));
    assert_eq!(world.backend.hits(), 1);
    eprintln!("TIMING agent start -> first answer through envoy: {:?}", spawned.elapsed());

    // Envoy runs with the identity and metadata of the environment.
    let (status, info) = http_get(agent.admin_addr(), "localhost", "/server_info").expect("envoy admin");
    assert_eq!(status, 200);
    let info: serde_json::Value = serde_json::from_str(&info).expect("server_info is JSON");
    let node = &info["node"];
    assert_eq!(node["id"], world.node_id());
    assert_eq!(node["metadata"]["LABELS"], serde_json::json!({"app": "client", "version": "v1"}));
    assert_eq!(node["metadata"]["CLUSTER_ID"], "test-cluster");
    assert_eq!(node["metadata"]["MESHFLOW_BIND_ADDRESS"], ip);

    // Envoy's admin is on 127.0.0.1 only: not on the proxy's own address.
    assert!(TcpStream::connect_timeout(&SocketAddr::from((world.bind_ip, agent.admin_port)), HTTP_TIMEOUT).is_err());

    let debug = agent.debug_envoy();
    assert_eq!(debug["state"], "running");
    assert_eq!(debug["restarts"], 0);
    assert_eq!(debug["proxy"], world.node_id());
    assert!(pid_alive(agent.envoy_pid().unwrap()));
    // The bootstrap is written into the work dir (the harness passes one).
    let bootstrap = debug["bootstrap"].as_str().unwrap();
    assert!(bootstrap.ends_with("/work/envoy.yaml") && fs::metadata(bootstrap).is_ok(), "{debug}");

    // Envoy's own lines come through the agent's tracing output, at Envoy's level, tagged
    // with the proxy id.
    let log = agent.log();
    let proxy_tag = format!("proxy=\"{}\"", world.node_id());
    assert!(
        log.lines().any(|l| l.contains(" INFO meshflow::agent::envoy: ")
            && l.contains("starting main dispatch loop")
            && l.contains(&proxy_tag)),
        "no INFO line from envoy tagged {proxy_tag} in the agent's log"
    );

    // Envoy keeps istiod's default stats: what readiness and draining read, not each
    // cluster's (at 10,000 clusters their flush stalls Envoy).
    let stats = envoy_stats(&agent);
    assert!(stats.lines().any(|l| l.starts_with("cluster_manager.cds.update_success: ")), "{stats}");
    assert!(stats.lines().any(|l| l.starts_with("server.state: ")), "{stats}");
    assert!(!stats.lines().any(|l| l.starts_with("cluster.outbound|")), "per-cluster stats kept:\n{stats}");
}

/// Envoy's `/stats` through the agent's admin port.
fn envoy_stats(agent: &Agent) -> String {
    let (status, stats) = http_get(agent.admin_addr(), "localhost", "/stats").expect("envoy admin /stats");
    assert_eq!(status, 200, "{stats}");
    stats
}

/// Istio's two ways to keep more stats, and which wins: the pod annotation
/// `sidecar.istio.io/statsInclusionPrefixes` (node metadata ANNOTATIONS) over the mesh's
/// `ProxyConfig.proxyStatsMatcher` (`PROXY_CONFIG`) for prefixes; the `ProxyConfig`'s
/// suffixes, which no annotation overrides, still count.
#[test]
fn a_pods_stats_inclusion_annotation_and_the_mesh_proxy_config_keep_more_envoy_stats() {
    let world = World::start("web-backend", Duration::ZERO);
    let annotations = r#"{"sidecar.istio.io/statsInclusionPrefixes": "cluster.outbound"}"#;
    let proxy_config =
        "proxyStatsMatcher:\n  inclusionPrefixes: [listener.]\n  inclusionSuffixes: [downstream_rq_total]\n";
    let mut args = world.agent_args(&["--node-id", &world.node_id()]);
    args.extend(strings(&["--envoy-log-level", "info"]));
    let mut agent = Agent::spawn(&args, &[("ISTIO_METAJSON_ANNOTATIONS", annotations), ("PROXY_CONFIG", proxy_config)]);
    agent.wait_ready();
    assert_eq!(world.get().expect("GET through envoy"), (200, "web-backend".to_string()));

    let cluster = format!("cluster.outbound|{}||web.default.svc.cluster.local.upstream_rq_total: ", world.port);
    let stats = eventually("the outbound cluster's request counter", WAIT, || {
        let stats = envoy_stats(&agent);
        stats.lines().any(|l| l.starts_with(&cluster) && !l.ends_with(" 0")).then_some(stats)
    });
    // The annotation's prefixes replace the ProxyConfig's: no `listener.` stats but the
    // suffixes every proxy keeps (`downstream_cx_active`).
    let listener = stats.lines().filter(|l| l.starts_with("listener.") && !l.contains(".downstream_cx_active: "));
    assert_eq!(listener.collect::<Vec<_>>(), Vec::<&str>::new());
    // The ProxyConfig's suffix: the HTTP connection manager's request count.
    let proxied = |l: &&str| l.starts_with("http.") && !l.starts_with("http.admin.");
    assert!(stats.lines().filter(proxied).any(|l| l.contains(".downstream_rq_total: ")), "{stats}");
    // And what every proxy keeps.
    assert!(stats.lines().any(|l| l.starts_with("cluster_manager.cds.update_success: ")), "{stats}");
}

#[test]
fn envoy_killed_with_sigkill_is_restarted_and_traffic_flows_again() {
    let world = World::start("web-backend", Duration::ZERO);
    let agent = world.ready_agent(&[]);
    assert_eq!(world.get().expect("GET through envoy"), (200, "web-backend".to_string()));
    let first = agent.envoy_pid().expect("a running envoy");

    send_signal(first, libc::SIGKILL).unwrap();
    let killed = Instant::now();
    eventually("traffic through a restarted envoy", WAIT, || {
        matches!(world.get(), Ok((200, body)) if body == "web-backend").then_some(())
    });
    eprintln!("TIMING kill -9 envoy -> traffic again: {:?}", killed.elapsed());
    let debug = agent.debug_envoy();
    let second = agent.envoy_pid().expect("a running envoy");
    assert_ne!(second, first, "{debug}");
    assert_eq!(debug["restarts"], 1, "{debug}");
    assert_eq!(debug["last_exit"], "signal: 9 (SIGKILL)", "{debug}");
    assert!(!pid_alive(first));
    eventually("/ready 200 again", WAIT, || matches!(agent.get("/ready"), Ok((200, _))).then_some(()));
    eprintln!("TIMING kill -9 envoy -> /ready 200 again: {:?}", killed.elapsed());

    let log = agent.log();
    assert!(
        log.lines().any(|l| l.contains("ERROR")
            && l.contains("envoy exited unexpectedly")
            && l.contains("exit=signal: 9 (SIGKILL)")),
        "the crash is not logged"
    );
    assert!(
        log.lines().any(|l| l.contains("restarting envoy") && l.contains("restart=1")),
        "the restart is not logged"
    );

    // Killing the agent itself (no chance to clean up) takes its Envoy with it.
    send_signal(agent.pid(), libc::SIGKILL).unwrap();
    eventually("envoy to die with its agent", Duration::from_secs(10), || (!pid_alive(second)).then_some(()));
}

#[test]
fn sigterm_lets_the_in_flight_request_finish_then_stops_envoy_and_exits_0() {
    const DELAY: Duration = Duration::from_secs(2);
    let world = World::start("slow-backend", DELAY);
    // A drain time far above what the request needs: the agent must stop on "no
    // connections left", not on the clock.
    let mut agent = world.ready_agent(&["--drain-seconds", "20"]);
    let envoy = agent.envoy_pid().expect("a running envoy");

    let (proxy, host) = (world.proxy(), world.host());
    let request = thread::spawn(move || {
        let mut conn = support::connect(proxy).expect("connect to envoy");
        conn.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(conn, "GET /slow HTTP/1.1\r\nHost: {host}\r\nUser-Agent: meshflow-tests\r\n\r\n").unwrap();
        conn.flush().unwrap();
        read_response(&mut BufReader::new(conn))
    });
    eventually("the slow request to reach the backend", WAIT, || (world.backend.received() == 1).then_some(()));
    let sent = Instant::now();
    agent.signal(libc::SIGTERM);

    // While draining, the proxy is not ready.
    eventually("/ready to say draining", WAIT, || match agent.get("/ready") {
        Ok((503, body)) if body.contains("draining") => Some(()),
        _ => None,
    });
    let response = request.join().expect("request thread").expect("the in-flight request completes");
    assert_eq!((response.status, response.body_text()), (200, "slow-backend".to_string()));
    eprintln!("in-flight request answered {:?} after SIGTERM", sent.elapsed());

    let status = agent.wait_exit(EXIT_TIMEOUT);
    let stopped = sent.elapsed();
    eprintln!("TIMING SIGTERM -> agent exit: {stopped:?} (request delay {DELAY:?})");
    assert_eq!(status.code(), Some(0), "agent exit status: {status}");
    assert!(
        stopped < Duration::from_secs(10),
        "the agent waited for the drain time ({stopped:?}), not the connections"
    );
    assert!(!pid_alive(envoy), "envoy (pid {envoy}) outlived its agent");
    assert!(TcpStream::connect_timeout(&agent.admin_addr(), HTTP_TIMEOUT).is_err(), "envoy's admin port still open");
    let log = agent.log();
    assert!(log.contains("draining envoy's listeners"), "no drain in the log");
    assert!(log.contains("no downstream connections left"), "the drain did not end on zero connections");
}

#[test]
fn a_second_signal_kills_envoy_without_waiting_for_the_drain() {
    let world = World::start("stuck-backend", Duration::from_secs(20));
    let mut agent = world.ready_agent(&["--drain-seconds", "30"]);
    let envoy = agent.envoy_pid().expect("a running envoy");
    let (proxy, host) = (world.proxy(), world.host());
    let _request = thread::spawn(move || {
        let mut conn = support::connect(proxy).ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
        write!(conn, "GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").ok()?;
        read_response(&mut BufReader::new(conn)).ok()
    });
    eventually("the request to reach the backend", WAIT, || (world.backend.received() == 1).then_some(()));

    agent.signal(libc::SIGTERM);
    eventually("the agent to start draining", WAIT, || {
        agent.log().contains("draining envoy's listeners").then_some(())
    });
    let second = Instant::now();
    agent.signal(libc::SIGINT);
    let status = agent.wait_exit(EXIT_TIMEOUT);
    eprintln!("second signal -> agent exit: {:?}", second.elapsed());
    assert_eq!(status.code(), Some(1), "agent exit status: {status}");
    assert!(second.elapsed() < Duration::from_secs(5));
    assert!(!pid_alive(envoy), "envoy (pid {envoy}) outlived its agent");
    assert!(agent.log().contains("second signal: killed envoy"));
}

#[test]
fn sigterm_stops_an_envoy_whose_admin_never_answers_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("envoy-that-hangs");
    fs::write(&script, "#!/bin/sh\nexec sleep 60\n").unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    let args = strings(&[
        "--envoy-bin",
        &script.display().to_string(),
        "--xds-addr",
        "127.0.0.1:1",
        "--node-id",
        "sidecar~127.0.0.9~client-1.default~default.svc.cluster.local",
        "--drain-seconds",
        "30",
    ]);
    let mut agent = Agent::spawn(&args, &[]);
    let hung = eventually("the process to start", WAIT, || agent.envoy_pid());
    let (status, body) = agent.get("/ready").unwrap();
    assert_eq!(status, 503);
    assert!(body.contains("does not answer"), "{body}");

    let sent = Instant::now();
    agent.signal(libc::SIGTERM);
    let status = agent.wait_exit(EXIT_TIMEOUT);
    assert_eq!(status.code(), Some(0), "agent exit status: {status}");
    assert!(sent.elapsed() < Duration::from_secs(5), "took {:?}: waited for the drain time", sent.elapsed());
    assert!(!pid_alive(hung), "the hung process (pid {hung}) outlived its agent");
    assert!(agent.log().contains("cannot drain envoy's listeners"));
}

#[test]
fn bad_invocations_exit_with_status_2_and_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let node_id = "sidecar~127.0.0.9~client-1.default~default.svc.cluster.local";
    let missing = dir.path().join("no-such-dir").join("envoy");
    let not_executable = dir.path().join("envoy-not-executable");
    fs::write(&not_executable, "#!/bin/sh\nexit 0\n").unwrap();
    fs::set_permissions(&not_executable, fs::Permissions::from_mode(0o644)).unwrap();
    let envoy = support::envoy_bin().display().to_string();

    let cases: Vec<(Vec<String>, Vec<String>)> = vec![
        (
            strings(&[
                "--envoy-bin",
                &missing.display().to_string(),
                "--xds-addr",
                "127.0.0.1:1",
                "--node-id",
                node_id,
            ]),
            vec![missing.display().to_string(), "does not exist".into()],
        ),
        (
            strings(&[
                "--envoy-bin",
                &not_executable.display().to_string(),
                "--xds-addr",
                "127.0.0.1:1",
                "--node-id",
                node_id,
            ]),
            vec![not_executable.display().to_string(), "is not executable".into()],
        ),
        (
            // No --node-id and no POD_NAME/POD_NAMESPACE/INSTANCE_IP.
            strings(&["--envoy-bin", &envoy, "--xds-addr", "127.0.0.1:1"]),
            vec!["no proxy identity".into(), "POD_NAME, POD_NAMESPACE, INSTANCE_IP".into()],
        ),
        (
            strings(&["--envoy-bin", &envoy, "--xds-addr", "127.0.0.1:1", "--node-id", "envoy-1"]),
            vec!["--node-id".into(), "not of the form".into()],
        ),
    ];
    for (args, expected) in cases {
        let started = Instant::now();
        let mut agent = Agent::spawn(&args, &[]);
        let status = agent.wait_exit(Duration::from_secs(10));
        let log = agent.log();
        assert_eq!(status.code(), Some(2), "{args:?}: exit status {status}; log:\n{log}");
        for text in expected {
            assert!(log.contains(&text), "{args:?}: no {text:?} in:\n{log}");
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{args:?} took {:?}", started.elapsed());
    }
}

#[test]
fn unreachable_xds_server_leaves_envoy_up_but_the_agent_unready_with_a_reason() {
    let nobody = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port(Ipv4Addr::LOCALHOST)));
    let bind_ip = loopback_ip();
    let node_id = format!("sidecar~{bind_ip}~client-1.default~default.svc.cluster.local");
    let envoy = support::envoy_bin().display().to_string();
    let args = strings(&[
        "--envoy-bin",
        &envoy,
        "--xds-addr",
        &nobody.to_string(),
        "--node-id",
        &node_id,
        "--bind-address",
        &bind_ip.to_string(),
    ]);
    let mut agent = Agent::spawn(&args, &[]);

    // Envoy is up: its admin answers (not LIVE).
    let state =
        eventually("envoy's admin to answer", WAIT, || http_get(agent.admin_addr(), "localhost", "/ready").ok());
    assert_eq!(state.0, 503, "envoy /ready without any xDS server: {state:?}");
    let envoy_pid = agent.envoy_pid().expect("a running envoy");

    // And the agent says not ready, with the reason, for as long as we look.
    let watched = Instant::now();
    let mut answers = 0;
    while watched.elapsed() < Duration::from_secs(4) {
        for path in ["/ready", "/healthz/ready"] {
            let (status, body) = agent.get(path).expect("the status port answers");
            assert_eq!(status, 503, "{path} after {:?}: {body}", watched.elapsed());
            assert!(
                body.starts_with("not ready: envoy is") && body.contains(&format!("from meshflow at {nobody}")),
                "{path}: {body}"
            );
            answers += 1;
        }
        thread::sleep(Duration::from_millis(200));
    }
    assert!(answers >= 20, "only {answers} answers in 4 s");
    assert!(agent.try_wait().is_none(), "the agent exited");
    assert_eq!(agent.envoy_pid(), Some(envoy_pid), "envoy was restarted");
    eprintln!("{}", agent.get("/ready").unwrap().1.trim());
}

#[test]
fn a_crash_looping_envoy_makes_the_agent_give_up_with_exit_status_1() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("envoy-that-crashes");
    fs::write(&script, "#!/bin/sh\necho 'crashing on purpose' >&2\nexit 1\n").unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    let args = strings(&[
        "--envoy-bin",
        &script.display().to_string(),
        "--xds-addr",
        "127.0.0.1:1",
        "--node-id",
        "sidecar~127.0.0.9~client-1.default~default.svc.cluster.local",
        "--max-restarts",
        "3",
        "--restart-window-seconds",
        "30",
    ]);
    let started = Instant::now();
    let mut agent = Agent::spawn(&args, &[]);
    let status = agent.wait_exit(EXIT_TIMEOUT);
    let took = started.elapsed();
    let log = agent.log();
    eprintln!("crash loop: agent gave up after {took:?}");
    assert_eq!(status.code(), Some(1), "exit status {status}; log:\n{log}");
    // Backoffs 100 + 200 + 400 ms, and four short-lived processes.
    assert!(took < Duration::from_secs(10), "giving up took {took:?}");
    assert!(
        log.contains("envoy exited 4 times within 30s (last: exit status: 1); giving up after 3 restarts"),
        "no clear error in:\n{log}"
    );
    assert_eq!(log.matches("restarting envoy").count(), 3, "{log}");
    // What the crashing binary wrote came through the agent's log.
    assert!(log.lines().any(|l| l.contains("WARN meshflow::agent::envoy: crashing on purpose")), "{log}");
}
