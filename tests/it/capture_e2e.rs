//! `meshflow init`, proven in network namespaces the test makes (and removes): an "app"
//! namespace, captured, and a "peer" namespace joined to it by a veth pair
//! (10.248.0.2/24 ↔ 10.248.0.1/24; the addresses exist only inside these namespaces).
//!
//! Tiny TCP servers stand in for Envoy: on 15001 and 15006 they read `SO_ORIGINAL_DST` and
//! answer with it, so a client sees where its connection landed and what it was meant for.
//! Clients and servers are threads that entered the namespace (`setns`), clients optionally
//! with another UID/GID (set for their thread alone, by raw syscalls, so that the socket they
//! open carries it — which is what iptables' `owner` match reads).
//!
//! Needs root and `ip netns`: skipped, saying why, without them. Needs `iptables-restore`
//! (scripts/ensure-iptables): skipped without it, except under CI, where that fails.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

const MESHFLOW: &str = env!("CARGO_BIN_EXE_meshflow");
const APP_IP: Ipv4Addr = Ipv4Addr::new(10, 248, 0, 2);
const PEER_IP: Ipv4Addr = Ipv4Addr::new(10, 248, 0, 1);
/// A service VIP: routed out of the app namespace, nothing behind it.
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// An ordinary application user.
const APP_USER: (u32, u32) = (1000, 1000);
const PROXY_USER: (u32, u32) = (1337, 1337);

// === Environment ===

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Why this machine cannot run the test, if it cannot.
fn unavailable() -> Option<String> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    match Command::new("ip").args(["netns", "list"]).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => return Some(format!("`ip netns` fails: {}", String::from_utf8_lossy(&out.stderr).trim())),
        Err(e) => return Some(format!("no `ip` command: {e}")),
    }
    let path = std::env::var("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path).any(|d| d.join("iptables-restore").is_file());
    if !found {
        let why = "iptables-restore is not on PATH (run scripts/ensure-iptables)";
        assert!(std::env::var_os("CI").is_none(), "{why}: CI must run this test");
        return Some(why.into());
    }
    None
}

macro_rules! require_netns {
    () => {
        if let Some(why) = unavailable() {
            eprintln!("skipping {}: {why}", module_path!());
            return;
        }
    };
}

/// A network namespace, deleted when dropped (a failed assertion included).
struct Netns {
    name: String,
}

impl Netns {
    fn new(role: &str) -> Netns {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let name = format!("mfcap-{}-{}-{role}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        ok(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    fn command(&self, argv: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(argv);
        cmd
    }

    fn exec(&self, argv: &[&str]) -> String {
        ok(&mut self.command(argv))
    }

    fn meshflow(&self, args: &[&str]) -> Output {
        run(self.command(&[MESHFLOW, "init"]).args(args))
    }

    /// `iptables-save -t nat`, without comments and packet counters.
    fn nat(&self) -> String {
        let save = self.exec(&["iptables-save", "-t", "nat"]);
        save.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| match l.rsplit_once(" [") {
                Some((decl, counters)) if l.starts_with(':') && counters.ends_with(']') => decl.to_string(),
                _ => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Runs `f` on a thread inside this namespace, as `user` (UID, GID) if given.
    fn within<T: Send>(&self, user: Option<(u32, u32)>, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(move || {
                let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
                // SAFETY: setns on this thread only, with a namespace fd we hold open.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
                if let Some((uid, gid)) = user {
                    // Raw syscalls change this thread's credentials only (glibc's wrappers
                    // would change every thread's). Groups, then GID, then UID.
                    // SAFETY: plain syscalls with integer arguments.
                    unsafe {
                        assert_eq!(libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()), 0);
                        assert_eq!(libc::syscall(libc::SYS_setresgid, gid, gid, gid), 0);
                        assert_eq!(libc::syscall(libc::SYS_setresuid, uid, uid, uid), 0);
                    }
                }
                f()
            })
            .join()
            .expect("namespace thread panicked")
        })
    }

    /// Connects to `dst` as `user`, and returns the line the server answered: which server
    /// took the connection, and the original destination it saw.
    fn call(&self, user: Option<(u32, u32)>, dst: SocketAddrV4) -> String {
        self.within(user, || {
            let mut stream = TcpStream::connect_timeout(&SocketAddr::V4(dst), Duration::from_secs(3))
                .unwrap_or_else(|e| panic!("connect {dst} as {user:?}: {e}"));
            stream.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).unwrap_or_else(|e| panic!("read from {dst}: {e}"));
            answer.trim().to_string()
        })
    }

    /// A server on 0.0.0.0:`port` answering `<name> <original destination>`.
    fn serve(&self, port: u16, name: &str) -> Server {
        let listener = self.within(None, || {
            let l = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))
                .unwrap_or_else(|e| panic!("bind {port}: {e}"));
            l.set_nonblocking(true).unwrap();
            l
        });
        let stop = Arc::new(AtomicBool::new(false));
        let hits = Arc::new(AtomicUsize::new(0));
        let name = name.to_string();
        let handle = std::thread::spawn({
            let stop = stop.clone();
            let hits = hits.clone();
            move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((mut stream, _)) => {
                            hits.fetch_add(1, Ordering::Relaxed);
                            // Not redirected (no NAT, maybe no conntrack entry): the
                            // connection's own destination.
                            let dst = match original_dst(&stream) {
                                Ok(a) => a.to_string(),
                                Err(_) => stream.local_addr().map(|a| a.to_string()).unwrap_or_default(),
                            };
                            let _ = stream.write_all(format!("{name} {dst}\n").as_bytes());
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(5))
                        }
                        Err(e) => panic!("accept on {port}: {e}"),
                    }
                }
            }
        });
        Server { stop, hits, handle: Some(handle) }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// `getsockopt(SOL_IP, SO_ORIGINAL_DST)`: the destination before the REDIRECT.
fn original_dst(stream: &TcpStream) -> std::io::Result<SocketAddrV4> {
    // SAFETY: a sockaddr_in-sized buffer and its length, as the option requires.
    unsafe {
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let rc = libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_IP,
            libc::SO_ORIGINAL_DST,
            (&mut addr as *mut libc::sockaddr_in).cast(),
            &mut len,
        );
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(SocketAddrV4::new(Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)), u16::from_be(addr.sin_port)))
    }
}

struct Server {
    stop: Arc<AtomicBool>,
    /// Connections accepted.
    hits: Arc<AtomicUsize>,
    handle: Option<JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// The app and peer namespaces, joined by a veth pair, the VIP range routed out of the app.
fn topology() -> (Netns, Netns) {
    let app = Netns::new("app");
    let peer = Netns::new("peer");
    app.exec(&["ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1", "netns", &peer.name]);
    app.exec(&["ip", "addr", "add", "10.248.0.2/24", "dev", "v0"]);
    app.exec(&["ip", "link", "set", "v0", "up"]);
    app.exec(&["ip", "route", "add", "10.96.0.0/12", "dev", "v0"]);
    peer.exec(&["ip", "addr", "add", "10.248.0.1/24", "dev", "v1"]);
    peer.exec(&["ip", "link", "set", "v1", "up"]);
    (app, peer)
}

fn at(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

/// The `-A` lines of the capture per chain, in order: every rule of an ISTIO_* chain and
/// every jump into one.
fn capture_rules(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.len() < 2 || words[0] != "-A" {
            continue;
        }
        let jumps_in = words.windows(2).any(|w| w[0] == "-j" && w[1].starts_with("ISTIO_"));
        if words[1].starts_with("ISTIO_") || jumps_in {
            out.entry(words[1].to_string()).or_default().push(line.trim().to_string());
        }
    }
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn init_captures_outbound_and_inbound_except_the_proxy_and_clean_restores_the_namespace() {
    require_netns!();
    let (app, peer) = topology();
    // Someone else's NAT rules, which init and clean must leave alone.
    app.exec(&["iptables", "-t", "nat", "-N", "FOREIGN"]);
    app.exec(&["iptables", "-t", "nat", "-A", "FOREIGN", "-j", "RETURN"]);
    app.exec(&["iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "9999", "-j", "FOREIGN"]);
    let before = app.nat();
    assert!(before.contains("-A OUTPUT -p tcp -m tcp --dport 9999 -j FOREIGN"), "{before}");

    let _servers = [
        app.serve(15001, "outbound"),
        app.serve(15006, "inbound"),
        app.serve(9080, "app"),
        app.serve(15008, "app-15008"),
        app.serve(15020, "app-15020"),
        app.serve(15021, "app-15021"),
        app.serve(15090, "app-15090"),
        app.serve(7777, "app-7777"),
        peer.serve(9080, "peer"),
        peer.serve(7070, "peer-7070"),
    ];
    let direct = |server: &str, ip: Ipv4Addr, port: u16| format!("{server} {ip}:{port}");
    // Before: straight through.
    assert_eq!(app.call(Some(APP_USER), at(PEER_IP, 9080)), direct("peer", PEER_IP, 9080));

    let flags = ["--exclude-inbound-ports", "7777", "--exclude-outbound-ports", "7070"];
    let out = app.meshflow(&flags);
    assert!(out.status.success(), "init failed: {}", stderr(&out));

    // What is installed is what --dry-run prints.
    let dry = run(Command::new(MESHFLOW).arg("init").arg("--dry-run").args(flags));
    assert!(dry.status.success(), "{}", stderr(&dry));
    let dry = String::from_utf8(dry.stdout).unwrap();
    let installed = app.nat();
    assert_eq!(capture_rules(&installed), capture_rules(&dry), "installed:\n{installed}\ndry run:\n{dry}");
    for chain in ["ISTIO_INBOUND", "ISTIO_REDIRECT", "ISTIO_IN_REDIRECT", "ISTIO_OUTPUT"] {
        assert!(installed.lines().any(|l| l == format!(":{chain} -")), "{chain} missing:\n{installed}");
    }

    // (a) An application's outbound connection lands on 15001, which sees where it was going:
    // a peer's address, or a service VIP with nothing behind it; root is an application too.
    assert_eq!(app.call(Some(APP_USER), at(PEER_IP, 9080)), direct("outbound", PEER_IP, 9080));
    assert_eq!(app.call(Some(APP_USER), at(VIP, 9080)), direct("outbound", VIP, 9080));
    assert_eq!(app.call(None, at(VIP, 80)), direct("outbound", VIP, 80));
    // (b) The proxy's own connections (by UID, or by GID alone) are not captured.
    assert_eq!(app.call(Some(PROXY_USER), at(PEER_IP, 9080)), direct("peer", PEER_IP, 9080));
    assert_eq!(app.call(Some((1000, 1337)), at(PEER_IP, 9080)), direct("peer", PEER_IP, 9080));
    // An excluded outbound port and localhost are not captured.
    assert_eq!(app.call(Some(APP_USER), at(PEER_IP, 7070)), direct("peer-7070", PEER_IP, 7070));
    assert_eq!(app.call(Some(APP_USER), at(Ipv4Addr::LOCALHOST, 9080)), direct("app", Ipv4Addr::LOCALHOST, 9080));
    // The app calling its own address goes straight to itself; the proxy calling it (the
    // second hop of app → VIP → Envoy → app) goes to Envoy's inbound side.
    assert_eq!(app.call(Some(APP_USER), at(APP_IP, 9080)), direct("app", APP_IP, 9080));
    assert_eq!(app.call(Some(PROXY_USER), at(APP_IP, 9080)), direct("inbound", APP_IP, 9080));

    // (c) Inbound to a service port lands on 15006; the proxy's own ports, the tunnel port and
    // --exclude-inbound-ports do not.
    assert_eq!(peer.call(None, at(APP_IP, 9080)), direct("inbound", APP_IP, 9080));
    assert_eq!(peer.call(None, at(APP_IP, 12345)), direct("inbound", APP_IP, 12345));
    for port in [15008, 15020, 15021, 15090, 7777] {
        assert_eq!(peer.call(None, at(APP_IP, port)), direct(&format!("app-{port}"), APP_IP, port));
    }

    // init again: the same rules are there already, nothing changes.
    let again = app.meshflow(&flags);
    assert!(again.status.success() && stderr(&again).contains("already installed"), "{}", stderr(&again));
    assert_eq!(app.nat(), installed);
    // init with other flags: refused, nothing changes.
    let other = app.meshflow(&["--exclude-inbound-ports", "8888"]);
    assert_eq!(other.status.code(), Some(2), "{}", stderr(&other));
    assert!(stderr(&other).contains("meshflow init --clean"), "{}", stderr(&other));
    assert_eq!(app.nat(), installed);

    // (d) --clean: the table is as it was, the foreign rules too, and connections go direct.
    let dry_clean = run(&mut app.command(&[MESHFLOW, "init", "--clean", "--dry-run"]));
    assert!(String::from_utf8_lossy(&dry_clean.stdout).contains("-X ISTIO_OUTPUT"));
    assert_eq!(app.nat(), installed, "--clean --dry-run changed the table");
    let clean = app.meshflow(&["--clean"]);
    assert!(clean.status.success(), "{}", stderr(&clean));
    assert_eq!(app.nat(), before);
    assert_eq!(app.call(Some(APP_USER), at(PEER_IP, 9080)), direct("peer", PEER_IP, 9080));
    assert_eq!(peer.call(None, at(APP_IP, 9080)), direct("app", APP_IP, 9080));
    let twice = app.meshflow(&["--clean"]);
    assert!(twice.status.success() && stderr(&twice).contains("no capture rules"), "{}", stderr(&twice));
}

#[test]
fn bad_flags_or_a_missing_iptables_restore_install_nothing() {
    require_netns!();
    let ns = Netns::new("bad");
    let before = ns.nat();
    let cases: [(&[&str], &str); 4] = [
        (&["--include-outbound-ip-ranges", "10.0.0.0/33"], "--include-outbound-ip-ranges \"10.0.0.0/33\""),
        (&["--exclude-inbound-ports", "15021,http"], "--exclude-inbound-ports \"15021,http\""),
        (&["--exclude-outbound-ip-ranges", "*"], "--exclude-outbound-ip-ranges"),
        (&["--envoy-port", "99999"], "--envoy-port"),
    ];
    for (flags, message) in cases {
        let out = ns.meshflow(flags);
        assert!(!out.status.success(), "{flags:?} was accepted");
        assert!(stderr(&out).contains(message), "{flags:?}: {}", stderr(&out));
        assert_eq!(ns.nat(), before, "{flags:?} changed the table");
    }
    let out = run(&mut ns.command(&["env", "PATH=/nonexistent", MESHFLOW, "init"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("iptables-restore not found on PATH"), "{}", stderr(&out));
    assert_eq!(ns.nat(), before);
}

/// The Envoy binary (scripts/ensure-envoy: `$ENVOY_BIN`, or installed).
fn envoy_bin() -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/ensure-envoy");
    ok(&mut Command::new(script)).trim().to_string()
}

/// A child process killed (SIGKILL) when dropped, unless it was waited for.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The children of `pid`, from /proc.
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(child) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else { continue };
        // pid (comm) state ppid ...: comm may hold spaces, so count from its closing paren.
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

/// The real, effective, saved and filesystem IDs of a `Uid:` or `Gid:` line of
/// /proc/<pid>/status.
fn ids(pid: u32, key: &str) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(key)).unwrap_or_else(|| panic!("no {key} in {status}"));
    line[key.len()..].split_whitespace().map(|n| n.parse().unwrap()).collect()
}

/// `GET path` on 127.0.0.1:`port` inside `ns` (HTTP/1.1: Envoy refuses 1.0): the body, when
/// the status is 200.
fn http_get(ns: &Netns, port: u16, path: &str) -> Option<String> {
    ns.within(None, || {
        let mut s =
            TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_secs(1)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).ok()?;
        let mut raw = String::new();
        s.read_to_string(&mut raw).ok()?;
        let (head, mut body) = raw.split_once("\r\n\r\n")?;
        if !head.starts_with("HTTP/1.1 200") {
            return None;
        }
        if !head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
            return Some(body.to_string());
        }
        let mut out = String::new();
        loop {
            let (size, rest) = body.split_once("\r\n")?;
            let size = usize::from_str_radix(size.trim(), 16).ok()?;
            if size == 0 {
                return Some(out);
            }
            out.push_str(rest.get(..size)?);
            body = rest.get(size + 2..)?;
        }
    })
}

fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `meshflow agent --capture`, run as root in the app namespace: it installs the rules that
/// `meshflow init` would, runs Envoy as 1337 (whose connection to the xDS server, in the peer
/// namespace, is then not captured), tells istiod-compatible servers INTERCEPTION_MODE:
/// REDIRECT, and leaves the rules when it stops (a dead proxy fails closed).
#[test]
fn agent_capture_installs_the_rules_and_runs_envoy_as_the_proxy_user() {
    require_netns!();
    let envoy = envoy_bin();
    let (app, peer) = topology();
    let xds = peer.serve(15010, "xds");
    let node_id = "sidecar~10.248.0.2~app-1.default~default.svc.cluster.local";
    let agent = app
        .command(&[MESHFLOW, "agent", "--capture", "--xds-addr", "10.248.0.1:15010", "--node-id", node_id])
        .args(["--envoy-bin", &envoy, "--status-addr", "127.0.0.1:15021", "--drain-seconds", "1"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("spawn the agent");
    let mut agent = Child(agent);
    let agent_pid = agent.0.id();

    // Envoy, started after the rules went in, reaches the xDS server in the peer namespace:
    // its connections are not captured (captured, they would land on the app's 15001, where
    // nothing listens).
    wait_for("Envoy to connect to the xDS server", || (xds.hits.load(Ordering::Relaxed) > 0).then_some(()));
    let dry = ok(Command::new(MESHFLOW).args(["init", "--dry-run"]));
    let installed = app.nat();
    assert_eq!(capture_rules(&installed), capture_rules(&dry), "installed:\n{installed}");

    // Envoy runs as 1337, its UID and GID (real, effective, saved, filesystem).
    let envoy_pid = wait_for("Envoy's process", || children(agent_pid).first().copied());
    assert_eq!(ids(envoy_pid, "Uid:"), [1337; 4]);
    assert_eq!(ids(envoy_pid, "Gid:"), [1337; 4]);
    // Envoy's own view of its node: INTERCEPTION_MODE: REDIRECT.
    let info = wait_for("Envoy's admin /server_info", || http_get(&app, 15000, "/server_info"));
    let info: serde_json::Value = serde_json::from_str(&info).expect("server_info is JSON");
    assert_eq!(info["node"]["id"], node_id);
    assert_eq!(info["node"]["metadata"]["INTERCEPTION_MODE"], "REDIRECT", "{:#}", info["node"]);

    // Stopped, the agent leaves the rules: the application's traffic stays with the (dead)
    // proxy's port rather than bypassing it to the server that listens in the peer.
    // SAFETY: a signal to the agent we spawned.
    assert_eq!(unsafe { libc::kill(agent_pid as libc::pid_t, libc::SIGTERM) }, 0);
    let status = agent.0.wait().expect("wait for the agent");
    assert!(status.success(), "agent exited with {status}");
    assert_eq!(app.nat(), installed);
    let refused = app.within(Some(APP_USER), || {
        TcpStream::connect_timeout(&SocketAddr::V4(at(PEER_IP, 15010)), Duration::from_secs(3)).unwrap_err().kind()
    });
    assert_eq!(refused, std::io::ErrorKind::ConnectionRefused);
}

// === xDS for captured proxies, end to end ===

/// The mesh of the routing test: a "hub" namespace with a bridge (10.249.0.1, where
/// `meshflow serve` and a server outside the mesh run) and one namespace per workload, each
/// joined to the bridge by a veth pair, with a default route through the hub (so a service VIP
/// is routable before capture, as in a cluster).
fn mesh_topology(workloads: &[(&str, Ipv4Addr)]) -> (Netns, Vec<Netns>) {
    let hub = Netns::new("hub");
    hub.exec(&["ip", "link", "add", "br0", "type", "bridge"]);
    hub.exec(&["ip", "addr", "add", &format!("{HUB_IP}/24"), "dev", "br0"]);
    hub.exec(&["ip", "link", "set", "br0", "up"]);
    let mut out = Vec::new();
    for (i, (role, ip)) in workloads.iter().enumerate() {
        let ns = Netns::new(role);
        let host_end = format!("h{i}");
        hub.exec(&["ip", "link", "add", &host_end, "type", "veth", "peer", "name", "e0", "netns", &ns.name]);
        hub.exec(&["ip", "link", "set", &host_end, "master", "br0"]);
        hub.exec(&["ip", "link", "set", &host_end, "up"]);
        ns.exec(&["ip", "addr", "add", &format!("{ip}/24"), "dev", "e0"]);
        ns.exec(&["ip", "link", "set", "e0", "up"]);
        ns.exec(&["ip", "route", "add", "default", "via", &HUB_IP.to_string()]);
        out.push(ns);
    }
    (hub, out)
}

const HUB_IP: Ipv4Addr = Ipv4Addr::new(10, 249, 0, 1);
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 249, 0, 2);
const V1_IP: Ipv4Addr = Ipv4Addr::new(10, 249, 0, 3);
const V2_IP: Ipv4Addr = Ipv4Addr::new(10, 249, 0, 4);
/// The cluster IP of `reviews`: nothing has it; only the client's Envoy knows where it leads.
const REVIEWS_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 50);

/// The mesh's config: `reviews` (v1, v2) and a client pod; `end-user: jason` to v2, the rest
/// to v1 (Bookinfo's reviews VirtualService and DestinationRule, trimmed); and `reviews-hl`, a
/// headless Service over the same pods (as a StatefulSet's, addressed pod by pod).
fn mesh_config() -> String {
    let pod = |name: &str, ip: Ipv4Addr, labels: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default, labels: {{{labels}}}}}\n\
             spec: {{containers: [{{name: app, image: app}}]}}\n\
             status: {{podIP: {ip}, conditions: [{{type: Ready, status: \"True\"}}]}}\n---\n"
        )
    };
    let mut s = String::new();
    s += &pod("client-1", CLIENT_IP, "app: client");
    s += &pod("reviews-v1", V1_IP, "app: reviews, version: v1");
    s += &pod("reviews-v2", V2_IP, "app: reviews, version: v2");
    s += &format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: reviews, namespace: default}}\n\
         spec: {{clusterIP: {REVIEWS_VIP}, selector: {{app: reviews}}, ports: [{{name: http, port: 9080}}]}}\n---\n"
    );
    s += "apiVersion: v1\nkind: Service\nmetadata: {name: reviews-hl, namespace: default}\n\
          spec: {clusterIP: None, selector: {app: reviews}, ports: [{name: http, port: 9080}]}\n---\n";
    s += "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews, namespace: default}\n\
          spec:\n  host: reviews\n  subsets:\n  - {name: v1, labels: {version: v1}}\n  - {name: v2, labels: {version: v2}}\n---\n";
    s += "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews, namespace: default}\n\
          spec:\n  hosts: [reviews]\n  http:\n  - match: [{headers: {end-user: {exact: jason}}}]\n    \
          route: [{destination: {host: reviews, subset: v2}}]\n  - route: [{destination: {host: reviews, subset: v1}}]\n";
    s
}

/// `meshflow serve` in the hub, xDS on the bridge address.
fn serve_mesh(hub: &Netns, config: &std::path::Path, policy: &str) -> Child {
    let child = hub
        .command(&[MESHFLOW, "serve", "--config-dir", config.to_str().unwrap()])
        .args(["--xds-addr", &format!("{HUB_IP}:15010"), "--admin-addr", "127.0.0.1:15014"])
        .args(["--outbound-traffic-policy", policy])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("spawn meshflow serve");
    Child(child)
}

/// `meshflow agent --capture` for the pod `pod` with `labels` (JSON), Envoy's admin on
/// 127.0.0.1:`admin`. The pod asks, as Istio's annotation does, for the stats the test reads
/// (its clusters' and HTTP connection managers').
fn captured_agent(ns: &Netns, envoy: &str, ip: Ipv4Addr, pod: &str, labels: &str, admin: u16) -> Child {
    let node_id = format!("sidecar~{ip}~{pod}.default~default.svc.cluster.local");
    let annotations = r#"{"sidecar.istio.io/statsInclusionPrefixes":"cluster.outbound,cluster.inbound,cluster.PassthroughCluster,http.outbound_,http.inbound_"}"#;
    let child = ns
        .command(&[
            "env",
            &format!("ISTIO_METAJSON_LABELS={labels}"),
            &format!("ISTIO_METAJSON_ANNOTATIONS={annotations}"),
        ])
        .args([MESHFLOW, "agent", "--capture"])
        .args(["--xds-addr", &format!("{HUB_IP}:15010"), "--node-id", &node_id, "--envoy-bin", envoy])
        .args(["--admin-port", &admin.to_string(), "--status-addr", "127.0.0.1:15021", "--drain-seconds", "1"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("spawn the agent");
    Child(child)
}

/// An HTTP server on 0.0.0.0:`port` answering `<name> <the peer address it sees>`.
fn http_app(ns: &Netns, port: u16, name: &str) -> Server {
    let listener = ns.within(None, || {
        let l = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))
            .unwrap_or_else(|e| panic!("bind {port}: {e}"));
        l.set_nonblocking(true).unwrap();
        l
    });
    let stop = Arc::new(AtomicBool::new(false));
    let hits = Arc::new(AtomicUsize::new(0));
    let name = name.to_string();
    let handle = std::thread::spawn({
        let stop = stop.clone();
        let hits = hits.clone();
        move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, peer)) => {
                        hits.fetch_add(1, Ordering::Relaxed);
                        let _ = stream.set_nonblocking(false);
                        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                        // Read the request head; the answer does not depend on it.
                        let mut head = Vec::new();
                        let mut byte = [0u8; 1];
                        while !head.ends_with(b"\r\n\r\n") && matches!(stream.read(&mut byte), Ok(1)) {
                            head.push(byte[0]);
                        }
                        let body = format!("{name} {}", peer.ip());
                        let _ = stream.write_all(
                            format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                                body.len()
                            )
                            .as_bytes(),
                        );
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(e) => panic!("accept on {port}: {e}"),
                }
            }
        }
    });
    Server { stop, hits, handle: Some(handle) }
}

/// What a plain HTTP/1.1 client (as an application, uid 1000) gets for `GET /` from `dst`
/// with `Host: <dst>` and `headers`: the body of a 200, else why not.
fn app_get(ns: &Netns, dst: SocketAddrV4, headers: &str) -> Result<String, String> {
    app_get_host(ns, dst, &dst.to_string(), headers)
}

/// [`app_get`] with `Host: <host>`: what an application sends after resolving `host` to `dst`.
fn app_get_host(ns: &Netns, dst: SocketAddrV4, host: &str, headers: &str) -> Result<String, String> {
    ns.within(Some(APP_USER), || {
        let mut s = TcpStream::connect_timeout(&SocketAddr::V4(dst), Duration::from_secs(2))
            .map_err(|e| format!("connect {dst}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(3))).map_err(|e| e.to_string())?;
        s.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\n{headers}Connection: close\r\n\r\n").as_bytes())
            .map_err(|e| format!("write to {dst}: {e}"))?;
        let mut raw = String::new();
        s.read_to_string(&mut raw).map_err(|e| format!("read from {dst}: {e}"))?;
        let (head, body) = raw.split_once("\r\n\r\n").ok_or_else(|| format!("no HTTP answer from {dst}: {raw:?}"))?;
        if !head.starts_with("HTTP/1.1 200") {
            // The status line, Envoy's response flags and its body (the reset reason).
            let flags = head.lines().filter(|l| l.to_ascii_lowercase().starts_with("x-envoy")).collect::<Vec<_>>();
            return Err(format!("{dst}: {} {flags:?} {:?}", head.lines().next().unwrap_or_default(), body.trim()));
        }
        Ok(body.to_string())
    })
}

fn wait_long<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A counter of Envoy's admin `/stats` in `ns` (admin on `admin`); 0 when absent.
fn envoy_stat(ns: &Netns, admin: u16, name: &str) -> u64 {
    let stats = http_get(ns, admin, "/stats").unwrap_or_default();
    stats.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(": ")?.trim().parse().ok()).unwrap_or(0)
}

/// Unchanged applications in captured network namespaces: the client calls the `reviews` VIP
/// with a plain HTTP client; its Envoy (virtualOutbound → the port's listener, not bound)
/// routes by the VirtualService to v1 or v2; their Envoys take the connection on
/// virtualInbound (HTTP stats) and hand it to the application from 127.0.0.6. Then: an
/// address outside the mesh passes through (ALLOW_ANY); the client's Envoy killed, calls fail
/// rather than bypass it, until the agent's restart; under REGISTRY_ONLY the outside address
/// is refused while the mesh still works.
#[test]
fn captured_applications_are_routed_through_their_proxies() {
    require_netns!();
    let envoy = envoy_bin();
    let (hub, workloads) = mesh_topology(&[("client", CLIENT_IP), ("v1", V1_IP), ("v2", V2_IP)]);
    let [client, v1, v2] = &workloads[..] else { unreachable!() };
    let config = tempfile::tempdir().unwrap();
    std::fs::write(config.path().join("mesh.yaml"), mesh_config()).unwrap();
    let mut serve = serve_mesh(&hub, config.path(), "allow-any");

    let _apps = [http_app(v1, 9080, "reviews-v1"), http_app(v2, 9080, "reviews-v2")];
    let outside = http_app(&hub, 8000, "outside");
    let (client_admin, v1_admin, v2_admin) = (15000, 15100, 15200);
    let client_agent = captured_agent(client, &envoy, CLIENT_IP, "client-1", r#"{"app":"client"}"#, client_admin);
    let _v1_agent = captured_agent(v1, &envoy, V1_IP, "reviews-v1", r#"{"app":"reviews","version":"v1"}"#, v1_admin);
    let _v2_agent = captured_agent(v2, &envoy, V2_IP, "reviews-v2", r#"{"app":"reviews","version":"v2"}"#, v2_admin);

    let vip = at(REVIEWS_VIP, 9080);
    let jason = "end-user: jason\r\n";
    // Every proxy configured: the client reaches both versions through the mesh.
    wait_long("the client's call to reach reviews v1", 90, || app_get(client, vip, "").ok());
    wait_long("the client's call as jason to reach reviews v2", 60, || {
        app_get(client, vip, jason).ok().filter(|b| b.starts_with("reviews-v2"))
    });

    // Routing through capture: the application sees the request come from the local proxy.
    for _ in 0..5 {
        assert_eq!(app_get(client, vip, "").unwrap(), "reviews-v1 127.0.0.6");
        assert_eq!(app_get(client, vip, jason).unwrap(), "reviews-v2 127.0.0.6");
    }
    // The client's Envoy handled them on its 9080 listener (the VIP's virtual host)...
    assert!(envoy_stat(client, client_admin, "http.outbound_0.0.0.0_9080.downstream_rq_total") >= 10);
    assert!(
        envoy_stat(
            client,
            client_admin,
            "cluster.outbound|9080|v1|reviews.default.svc.cluster.local.upstream_rq_total"
        ) >= 5
    );
    // ...and each server's Envoy took them on virtualInbound's HTTP chain for 9080.
    for (ns, admin) in [(v1, v1_admin), (v2, v2_admin)] {
        assert!(envoy_stat(ns, admin, "http.inbound_0.0.0.0_9080.downstream_rq_total") >= 5, "{}", ns.name);
        assert!(envoy_stat(ns, admin, "cluster.inbound|9080||.upstream_rq_total") >= 5, "{}", ns.name);
    }

    // A headless Service: the application resolved `reviews-hl` to one pod and called it; the
    // call reaches that pod, never the other one (an ORIGINAL_DST cluster, as istiod's: an EDS
    // cluster would balance over both pods).
    let hl = "reviews-hl.default.svc.cluster.local";
    for _ in 0..8 {
        assert_eq!(app_get_host(client, at(V2_IP, 9080), hl, "").unwrap(), "reviews-v2 127.0.0.6");
        assert_eq!(app_get_host(client, at(V1_IP, 9080), "reviews-hl:9080", "").unwrap(), "reviews-v1 127.0.0.6");
    }
    let hl_cluster = format!("cluster.outbound|9080||{hl}");
    assert!(envoy_stat(client, client_admin, &format!("{hl_cluster}.upstream_rq_total")) >= 16);

    // ALLOW_ANY: an address outside the mesh passes through the client's Envoy.
    let outside_addr = at(HUB_IP, 8000);
    assert_eq!(app_get(client, outside_addr, "").unwrap(), format!("outside {CLIENT_IP}"));
    assert!(envoy_stat(client, client_admin, "cluster.PassthroughCluster.upstream_cx_total") >= 1);

    // The client's Envoy dies: the application's calls fail (the rules stay), they do not
    // bypass the proxy; the agent restarts Envoy and they work again.
    // The agent is paused meanwhile (SIGSTOP), so that its restart (after 100 ms) cannot race
    // the check; the dead Envoy stays a zombie until the agent reaps it, its sockets closed.
    let agent_pid = client_agent.0.id();
    let envoy_pid = children(agent_pid).first().copied().expect("the client's Envoy");
    // SAFETY: signals to the agent we spawned and the Envoy it started.
    assert_eq!(unsafe { libc::kill(agent_pid as libc::pid_t, libc::SIGSTOP) }, 0);
    assert_eq!(unsafe { libc::kill(envoy_pid as libc::pid_t, libc::SIGKILL) }, 0);
    wait_long("the client's Envoy to die", 10, || {
        let stat = std::fs::read_to_string(format!("/proc/{envoy_pid}/stat")).unwrap_or_default();
        let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next().map(str::to_string));
        matches!(state.as_deref(), None | Some("Z")).then_some(())
    });
    let hits_before = outside.hits.load(Ordering::Relaxed);
    let failed = app_get(client, vip, "");
    assert!(failed.is_err(), "a call without the proxy must fail, got {failed:?}");
    assert!(app_get(client, outside_addr, "").is_err());
    assert_eq!(outside.hits.load(Ordering::Relaxed), hits_before, "the call bypassed the proxy");
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(agent_pid as libc::pid_t, libc::SIGCONT) }, 0);
    wait_long("the agent to restart Envoy and the call to work again", 60, || app_get(client, vip, "").ok());
    assert_ne!(children(agent_pid).first().copied(), Some(envoy_pid));

    // REGISTRY_ONLY (the server restarted with it): the outside address is refused, the mesh
    // still works.
    serve.0.kill().unwrap();
    serve.0.wait().unwrap();
    let _serve = serve_mesh(&hub, config.path(), "registry-only");
    wait_long("the outside address to be refused", 60, || app_get(client, outside_addr, "").err());
    let hits_before = outside.hits.load(Ordering::Relaxed);
    assert!(app_get(client, outside_addr, "").is_err());
    assert_eq!(outside.hits.load(Ordering::Relaxed), hits_before);
    assert_eq!(app_get(client, vip, jason).unwrap(), "reviews-v2 127.0.0.6");
    assert_eq!(app_get(client, vip, "").unwrap(), "reviews-v1 127.0.0.6");
}
