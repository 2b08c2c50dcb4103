//! A client of Envoy's admin interface (on 127.0.0.1): readiness, active connections,
//! draining and stopping. One HTTP/1.1 request per connection (`Connection: close`), so a
//! small hand-written client does and no HTTP client crate is needed.

use std::io;
use std::net::Ipv4Addr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest one admin request may take (connect, send, read the whole answer).
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Envoy's counters of configuration received over CDS and LDS (accepted or rejected:
/// either way the xDS server answered), as pilot-agent's readiness probe reads them.
const CONFIG_STATS: &str = r"^(cluster_manager\.cds|listener_manager\.lds)\.update_(success|rejected)$";

/// The admin interface of one Envoy.
#[derive(Clone, Copy, Debug)]
pub struct EnvoyAdmin {
    pub port: u16,
}

impl EnvoyAdmin {
    pub fn new(port: u16) -> EnvoyAdmin {
        EnvoyAdmin { port }
    }

    pub async fn get(&self, path_and_query: &str) -> io::Result<(u16, String)> {
        self.request("GET", path_and_query).await
    }

    pub async fn post(&self, path_and_query: &str) -> io::Result<(u16, String)> {
        self.request("POST", path_and_query).await
    }

    async fn request(&self, method: &str, path_and_query: &str) -> io::Result<(u16, String)> {
        let exchange = async {
            let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).await?;
            let request = format!(
                "{method} {path_and_query} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nUser-Agent: meshflow-agent\r\n\
                 Content-Length: 0\r\nConnection: close\r\n\r\n",
                self.port
            );
            stream.write_all(request.as_bytes()).await?;
            let mut answer = Vec::with_capacity(1024);
            stream.read_to_end(&mut answer).await?;
            parse_response(&answer)
        };
        tokio::time::timeout(ADMIN_TIMEOUT, exchange).await.unwrap_or_else(|_| {
            Err(io::Error::new(io::ErrorKind::TimedOut, format!("no answer within {ADMIN_TIMEOUT:?}")))
        })
    }

    /// `Ok` when Envoy is ready to carry traffic: its `/ready` says `LIVE` and it has received
    /// its clusters and listeners from the xDS server `xds_addr`. Otherwise the reason.
    /// (Envoy also turns `LIVE` when its initial fetch times out, 15 s by default, with no
    /// configuration at all: the CDS/LDS counters tell the two apart.)
    pub async fn readiness(&self, xds_addr: &str) -> Result<(), String> {
        let unreachable = |e: io::Error| format!("envoy admin on 127.0.0.1:{} does not answer: {e}", self.port);
        let (status, body) = self.get("/ready").await.map_err(unreachable)?;
        match body.trim() {
            "LIVE" if status == 200 => {}
            state @ ("PRE_INITIALIZING" | "INITIALIZING") => {
                return Err(format!(
                    "envoy is {state}: waiting for its first clusters and listeners from meshflow at {xds_addr}"
                ));
            }
            "" => return Err(format!("envoy /ready answered {status}")),
            state => return Err(format!("envoy is {state}")),
        }
        let (_, stats) =
            self.get(&format!("/stats?filter={}", percent_encode(CONFIG_STATS))).await.map_err(unreachable)?;
        let received = |sub: &str| {
            ["update_success", "update_rejected"]
                .iter()
                .filter_map(|c| stat(&stats, &format!("{sub}.{c}")))
                .sum::<u64>()
        };
        let (cds, lds) = (received("cluster_manager.cds"), received("listener_manager.lds"));
        if cds == 0 || lds == 0 {
            return Err(format!(
                "envoy is LIVE but has no configuration from meshflow at {xds_addr} yet \
                 (CDS updates: {cds}, LDS updates: {lds}): its initial fetch timed out"
            ));
        }
        Ok(())
    }

    /// Active downstream connections on every listener but the admin one.
    pub async fn active_downstream_connections(&self) -> io::Result<u64> {
        let (status, body) = self.get("/stats?filter=downstream_cx_active").await?;
        if status != 200 {
            return Err(io::Error::other(format!("/stats answered {status}: {}", body.trim())));
        }
        Ok(sum_active_downstream(&body))
    }

    /// Starts a graceful drain of every listener: connections are asked to close (HTTP/1
    /// `Connection: close`, HTTP/2 GOAWAY) and listeners close after `--drain-time-s`.
    /// `skip_exit`: Envoy keeps running afterwards; the agent decides when it stops.
    pub async fn drain_listeners(&self) -> io::Result<()> {
        expect_ok(self.post("/drain_listeners?graceful&skip_exit").await?, "/drain_listeners")
    }

    /// Asks Envoy to exit cleanly.
    pub async fn quit(&self) -> io::Result<()> {
        expect_ok(self.post("/quitquitquit").await?, "/quitquitquit")
    }
}

fn expect_ok((status, body): (u16, String), what: &str) -> io::Result<()> {
    if status == 200 { Ok(()) } else { Err(io::Error::other(format!("{what} answered {status}: {}", body.trim()))) }
}

/// The value of counter or gauge `name` in `/stats` text output (`name: value` lines).
pub fn stat(stats: &str, name: &str) -> Option<u64> {
    stats.lines().find_map(|l| l.split_once(": ").filter(|(n, _)| *n == name)).and_then(|(_, v)| v.trim().parse().ok())
}

/// Sum of `listener.<address>.downstream_cx_active` gauges, the admin listener and the
/// per-worker copies (`listener.<address>.worker_<n>.…`) left out.
pub fn sum_active_downstream(stats: &str) -> u64 {
    stats
        .lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(name, _)| {
            name.starts_with("listener.")
                && name.ends_with(".downstream_cx_active")
                && !name.starts_with("listener.admin.")
                && !name.contains(".worker_")
        })
        .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
        .sum()
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Status and body of a complete HTTP/1.1 response read to EOF (Content-Length, chunked, or
/// until close).
pub fn parse_response(raw: &[u8]) -> io::Result<(u16, String)> {
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| invalid(format!("incomplete HTTP response ({} bytes)", raw.len())))?;
    let head = String::from_utf8_lossy(&raw[..head_end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .filter(|_| status_line.starts_with("HTTP/1."))
        .ok_or_else(|| invalid(format!("bad status line {status_line:?}")))?;
    let header = |name: &str| {
        head.split("\r\n").skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    let mut body = &raw[head_end + 4..];
    if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let mut decoded = Vec::with_capacity(body.len());
        loop {
            let line_end =
                body.windows(2).position(|w| w == b"\r\n").ok_or_else(|| invalid("truncated chunk size".into()))?;
            let size_text = String::from_utf8_lossy(&body[..line_end]);
            let size_text = size_text.split(';').next().unwrap_or_default().trim();
            let size =
                usize::from_str_radix(size_text, 16).map_err(|_| invalid(format!("bad chunk size {size_text:?}")))?;
            body = &body[line_end + 2..];
            if size == 0 {
                break;
            }
            let chunk = body.get(..size).ok_or_else(|| invalid("truncated chunk".into()))?;
            decoded.extend_from_slice(chunk);
            body = body.get(size + 2..).unwrap_or_default();
        }
        return Ok((status, String::from_utf8_lossy(&decoded).into_owned()));
    }
    if let Some(len) = header("content-length") {
        let len: usize = len.parse().map_err(|_| invalid(format!("bad content-length {len:?}")))?;
        body = body.get(..len).ok_or_else(|| invalid("truncated body".into()))?;
    }
    Ok((status, String::from_utf8_lossy(body).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_with_content_length_chunked_or_read_to_close_are_parsed() {
        let plain = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 13\r\n\r\nINITIALIZING\nextra";
        assert_eq!(parse_response(plain).unwrap(), (503, "INITIALIZING\n".to_string()));
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n7;x=y\r\n, world\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).unwrap(), (200, "hello, world".to_string()));
        let to_close = b"HTTP/1.0 200 OK\r\n\r\nLIVE\n";
        assert_eq!(parse_response(to_close).unwrap(), (200, "LIVE\n".to_string()));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n").is_err());
    }

    #[test]
    fn active_connections_sum_every_listener_but_admin_and_worker_copies() {
        let stats = "\
http.admin.downstream_cx_active: 1
http.outbound_0.0.0.0_9080.downstream_cx_active: 2
listener.127.0.0.5_9080.downstream_cx_active: 2
listener.127.0.0.5_9080.worker_0.downstream_cx_active: 1
listener.127.0.0.5_9080.worker_1.downstream_cx_active: 1
listener.127.0.0.5_9443.downstream_cx_active: 3
listener.admin.downstream_cx_active: 1
listener.admin.main_thread.downstream_cx_active: 1
";
        assert_eq!(sum_active_downstream(stats), 5);
        assert_eq!(sum_active_downstream("listener.admin.downstream_cx_active: 1\n"), 0);
        assert_eq!(sum_active_downstream(""), 0);
    }

    #[test]
    fn stats_are_read_by_exact_name() {
        let stats = "cluster_manager.cds.update_success: 2\ncluster_manager.cds.update_success_x: 9\n";
        assert_eq!(stat(stats, "cluster_manager.cds.update_success"), Some(2));
        assert_eq!(stat(stats, "listener_manager.lds.update_success"), None);
    }

    /// A fake Envoy admin: `/ready` answers `state`, `/stats?filter=…` answers `stats`.
    async fn fake_admin(state: &'static str, stats: &'static str) -> EnvoyAdmin {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut buf = vec![0u8; 4096];
                let n = conn.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]).into_owned();
                let (status, body) = if request.starts_with("GET /ready ") {
                    (if state == "LIVE" { 200 } else { 503 }, format!("{state}\n"))
                } else if request.starts_with("GET /stats?filter=%5E%28cluster_manager") {
                    (200, stats.to_string())
                } else {
                    (404, format!("unexpected request {request:?}"))
                };
                let answer = format!("HTTP/1.1 {status} X\r\ncontent-length: {}\r\n\r\n{body}", body.len());
                let _ = conn.write_all(answer.as_bytes()).await;
            }
        });
        EnvoyAdmin::new(port)
    }

    #[tokio::test]
    async fn ready_needs_envoy_live_and_configuration_from_the_xds_server() {
        let received = "cluster_manager.cds.update_rejected: 0\ncluster_manager.cds.update_success: 1\n\
                        listener_manager.lds.update_rejected: 1\nlistener_manager.lds.update_success: 0\n";
        assert_eq!(fake_admin("LIVE", received).await.readiness("xds:15010").await, Ok(()));

        // LIVE after the initial fetch timed out: no configuration at all.
        let nothing = "cluster_manager.cds.update_rejected: 0\ncluster_manager.cds.update_success: 0\n\
                       listener_manager.lds.update_rejected: 0\nlistener_manager.lds.update_success: 0\n";
        let why = fake_admin("LIVE", nothing).await.readiness("xds:15010").await.unwrap_err();
        assert!(why.contains("no configuration from meshflow at xds:15010") && why.contains("CDS updates: 0"), "{why}");

        let why = fake_admin("PRE_INITIALIZING", received).await.readiness("xds:15010").await.unwrap_err();
        assert!(why.starts_with("envoy is PRE_INITIALIZING: waiting for its first clusters"), "{why}");
        let why = fake_admin("DRAINING", received).await.readiness("xds:15010").await.unwrap_err();
        assert_eq!(why, "envoy is DRAINING");

        let closed = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port();
        let why = EnvoyAdmin::new(closed).readiness("xds:15010").await.unwrap_err();
        assert!(why.contains("does not answer"), "{why}");
    }

    #[test]
    fn stat_filters_are_percent_encoded() {
        assert_eq!(percent_encode(r"^a\.b|c$"), "%5Ea%5C.b%7Cc%24");
    }
}
