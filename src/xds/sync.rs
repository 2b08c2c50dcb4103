//! The connected proxies and where each one's xDS exchange stands: for `/debug/syncz` (istiod's
//! `Syncz`, pilot/pkg/xds/debug.go) and `/debug/config_dump?proxy=ID`.
//!
//! Each stream registers a [`Connection`] when its first request names the node, updates it
//! as it sends responses and the proxy answers them (a few string copies per response, never
//! proportional to the mesh), and leaves when it closes.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::SystemTime;

use serde_json::{Map, Value, json};

use crate::cache::View;
use crate::translate::ResourceType;

/// Where one type stands on one stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TypeSync {
    /// The nonce of the latest response of this type.
    pub nonce_sent: Option<Token>,
    /// Its `version_info` (state of the world; delta responses carry versions per resource).
    pub version_sent: Option<Token>,
    pub sent_at: Option<SystemTime>,
    /// The nonce of the latest response the proxy ACKed, and its `version_info`.
    pub nonce_acked: Option<Token>,
    pub version_acked: Option<Token>,
    /// The latest NACK, if any (boxed: most streams never NACK, and each stream keeps one
    /// of these per type).
    pub rejection: Option<Box<Rejection>>,
}

/// A nonce or a version as this server writes them, kept without an allocation: a decimal
/// number (nonces; delta's versions, the cache's sequence number) or 16 hex digits (state of
/// the world's set hash). Anything else is kept as text. (Four of them per type per stream:
/// as `String`s they were 20 small allocations of every idle stream.)
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Token {
    Decimal(u64),
    Hex16(u64),
    Text(Box<str>),
}

impl Token {
    pub fn of(s: &str) -> Token {
        // (Only a number's own form: "007" would read back as "7".)
        let decimal = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
        if decimal && let Ok(n) = s.parse() {
            return Token::Decimal(n);
        }
        if s.len() == 16
            && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            && let Ok(n) = u64::from_str_radix(s, 16)
        {
            return Token::Hex16(n);
        }
        Token::Text(s.into())
    }
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Token::Decimal(n) => write!(f, "{n}"),
            Token::Hex16(n) => write!(f, "{n:016x}"),
            Token::Text(s) => f.write_str(s),
        }
    }
}

/// A type's latest NACK on a stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rejection {
    /// The `error_detail` message, and the nonce it rejected.
    pub last_error: String,
    pub nonce: String,
    /// The resources it rejected (the names of the response it answered; a state of the
    /// world NACK rejects the whole set, so every name of it).
    pub resources: Vec<String>,
}

/// Called with each answer a proxy gives: the type, and for an ACK the cache sequence number
/// the response was built at (the proxy holds every change up to it), None for a NACK. For
/// measuring (`meshflow bench --envoy` times a real Envoy's ACKs with it); see
/// [`Connections::tap_answers`].
pub type AnswerTap = Arc<dyn Fn(&Connection, ResourceType, Option<u64>) + Send + Sync>;

/// Called when a connection begins to hand the kernel a response, with the cache sequence number
/// it was built at (it carries every change up to it) and when the write began that sent the
/// first byte the connection wrote after the response was queued: the moment its frames go on
/// the wire (see [`super::cork`]). For measuring (`meshflow bench` times the first frame of each change with
/// it); see [`Connections::tap_writes`].
pub type WriteTap = Arc<dyn Fn(u64, std::time::Instant) + Send + Sync>;

/// An [`AnswerTap`] in a struct that derives `Debug`.
#[derive(Clone)]
struct Tap(AnswerTap);

impl std::fmt::Debug for Tap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AnswerTap")
    }
}

/// One connected xDS stream.
#[derive(Debug)]
pub struct Connection {
    /// The node id.
    pub node: Arc<str>,
    /// A number unique in this process: a node may have several streams (a reconnect overlaps
    /// the old one's end).
    pub id: u64,
    /// "delta" or "SotW".
    pub protocol: &'static str,
    /// `sidecar`, `router` or `proxyless`.
    pub proxy_type: &'static str,
    /// The proxy's class (see [`crate::model::proxy::ProxyClass`]).
    pub class: String,
    /// Node metadata `CLUSTER_ID`, `ISTIO_VERSION`; the node's `user_agent_build_version`.
    pub cluster_id: String,
    pub istio_version: String,
    pub proxy_version: String,
    pub namespace: String,
    /// What the proxy sees of the cache, and the address its listeners bind.
    pub view: View,
    pub bind: Option<IpAddr>,
    /// The client's address (`ip:port`) of the connection the stream runs on: streams of one
    /// HTTP/2 connection share it (istiod's `/debug/connections` calls it `address`).
    pub peer: Option<SocketAddr>,
    pub connected_at: SystemTime,
    types: Mutex<[TypeSync; ResourceType::ALL.len()]>,
    /// Responses made and not yet taken by the transport (the bounded response channel plus
    /// the rest of the batch being sent), now and at most so far: a stalled client's queue.
    queued: AtomicU64,
    queued_max: AtomicU64,
    /// Resources (added or changed) and removed names sent on this stream, per type.
    resources_sent: [AtomicU64; ResourceType::ALL.len()],
    removed_sent: [AtomicU64; ResourceType::ALL.len()],
    /// The registry's answer tap when the stream registered.
    tap: Option<Tap>,
}

impl Connection {
    fn lock(&self) -> MutexGuard<'_, [TypeSync; ResourceType::ALL.len()]> {
        self.types.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn sent(&self, ty: ResourceType, nonce: &str, version: Option<&str>) {
        let mut types = self.lock();
        let t = &mut types[ty as usize];
        t.nonce_sent = Some(Token::of(nonce));
        t.version_sent = version.map(Token::of);
        t.sent_at = Some(SystemTime::now());
    }

    pub fn acked(&self, ty: ResourceType, nonce: &str) {
        let mut types = self.lock();
        let t = &mut types[ty as usize];
        let nonce = Token::of(nonce);
        if t.nonce_sent.as_ref() == Some(&nonce) {
            t.version_acked = t.version_sent.clone();
        }
        t.nonce_acked = Some(nonce);
    }

    /// Tells the registry's [`AnswerTap`], if any, of an answer: `Some(seq)` for an ACK of a
    /// response built at cache sequence number `seq`, None for a NACK.
    pub fn answered(&self, ty: ResourceType, acked: Option<u64>) {
        if let Some(Tap(tap)) = &self.tap {
            tap(self, ty, acked);
        }
    }

    /// Records a NACK; true when its error differs from the type's previous one (so that a
    /// proxy repeating the same rejection is logged once).
    pub fn nacked(&self, ty: ResourceType, nonce: &str, error: &str, resources: &[String]) -> bool {
        let mut types = self.lock();
        let first = types[ty as usize].rejection.is_none();
        let r = types[ty as usize].rejection.get_or_insert_with(Default::default);
        r.nonce = nonce.to_string();
        r.resources = resources.to_vec();
        let new = first || r.last_error != error;
        if new {
            r.last_error = error.to_string();
        }
        new
    }

    /// Records how many responses wait for the transport on this stream.
    pub fn set_queued(&self, n: usize) {
        self.queued.store(n as u64, Ordering::Relaxed);
        self.queued_max.fetch_max(n as u64, Ordering::Relaxed);
    }

    /// Responses waiting for the transport now, and the most there ever were.
    pub fn queued(&self) -> (u64, u64) {
        (self.queued.load(Ordering::Relaxed), self.queued_max.load(Ordering::Relaxed))
    }

    /// Counts one response's resources and removed names.
    pub fn counted(&self, ty: ResourceType, resources: usize, removed: usize) {
        self.resources_sent[ty as usize].fetch_add(resources as u64, Ordering::Relaxed);
        self.removed_sent[ty as usize].fetch_add(removed as u64, Ordering::Relaxed);
    }

    /// Resources and removed names sent on this stream so far, of one type.
    pub fn sent_counts(&self, ty: ResourceType) -> (u64, u64) {
        (
            self.resources_sent[ty as usize].load(Ordering::Relaxed),
            self.removed_sent[ty as usize].load(Ordering::Relaxed),
        )
    }

    pub fn type_sync(&self, ty: ResourceType) -> TypeSync {
        self.lock()[ty as usize].clone()
    }

    /// This connection as an entry of `/debug/syncz`: istiod's `SyncStatus` field names
    /// (`proxy`, `proxy_type`, `cluster_sent`, `cluster_acked`, ..., `resources` by type URL
    /// with `sent`, `acked`, `sentTime`, `lastError`), plus meshflow's `class`, `protocol` and,
    /// per type, `sentVersion`/`ackedVersion` (state of the world's `version_info`; delta's
    /// `system_version_info`, the cache's sequence number the response was built at).
    pub fn syncz(&self) -> Value {
        let types = self.lock().clone();
        let mut out = Map::new();
        let mut put = |k: &str, v: &str| {
            if !v.is_empty() {
                out.insert(k.to_string(), Value::String(v.to_string()));
            }
        };
        put("cluster_id", &self.cluster_id);
        put("proxy", &self.node);
        put("proxy_type", self.proxy_type);
        put("proxy_version", &self.proxy_version);
        put("istio_version", &self.istio_version);
        put("class", &self.class);
        put("protocol", self.protocol);
        put("address", &self.peer.map(|a| a.to_string()).unwrap_or_default());
        let short = |ty: ResourceType| match ty {
            ResourceType::Cluster => "cluster",
            ResourceType::Listener => "listener",
            ResourceType::RouteConfiguration => "route",
            ResourceType::ClusterLoadAssignment => "endpoint",
            ResourceType::Secret => "secret",
        };
        let mut resources = Map::new();
        for ty in ResourceType::ALL {
            let t = &types[ty as usize];
            if let Some(n) = &t.nonce_sent {
                put(&format!("{}_sent", short(ty)), &n.to_string());
            }
            if let Some(n) = &t.nonce_acked {
                put(&format!("{}_acked", short(ty)), &n.to_string());
            }
            if *t == TypeSync::default() {
                continue;
            }
            let mut r = Map::new();
            let (sent, removed) = self.sent_counts(ty);
            r.insert("resourcesSent".into(), json!(sent));
            r.insert("removedSent".into(), json!(removed));
            let mut field = |k: &str, v: &Option<Token>| {
                if let Some(v) = v {
                    r.insert(k.to_string(), Value::String(v.to_string()));
                }
            };
            field("sent", &t.nonce_sent);
            field("acked", &t.nonce_acked);
            field("sentVersion", &t.version_sent);
            field("ackedVersion", &t.version_acked);
            if let Some(rejection) = &t.rejection {
                r.insert("lastError".into(), json!(rejection.last_error));
                r.insert("rejected".into(), json!(rejection.nonce));
                if !rejection.resources.is_empty() {
                    r.insert("rejectedResources".into(), json!(rejection.resources));
                }
            }
            if let Some(at) = t.sent_at {
                r.insert("sentTime".into(), json!(rfc3339(at)));
            }
            resources.insert(ty.type_url().to_string(), Value::Object(r));
        }
        if !resources.is_empty() {
            out.insert("resources".into(), Value::Object(resources));
        }
        let (queued, queued_max) = self.queued();
        out.insert("queued".into(), json!(queued));
        out.insert("queuedMax".into(), json!(queued_max));
        out.insert("connectionId".into(), json!(self.id));
        Value::Object(out)
    }
}

/// A time as RFC 3339 in UTC with milliseconds (`2026-12-01T13:20:00.123Z`).
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// What a stream knows of its proxy when it registers.
pub struct ProxyInfo {
    pub node: Arc<str>,
    pub protocol: &'static str,
    pub proxy_type: &'static str,
    pub class: String,
    pub cluster_id: String,
    pub istio_version: String,
    pub proxy_version: String,
    pub namespace: String,
    pub view: View,
    pub bind: Option<IpAddr>,
    pub peer: Option<SocketAddr>,
}

/// The connected streams, by node id and stream number (the node id shared with the
/// stream's record).
type Streams = BTreeMap<(Arc<str>, u64), Arc<Connection>>;

/// The connected streams, by node id.
#[derive(Default)]
pub struct Connections {
    next: AtomicU64,
    streams: Mutex<Streams>,
    tap: OnceLock<Tap>,
    writes: OnceLock<WriteTap>,
}

/// A stream's registration; dropping it removes the stream.
pub struct Registration {
    registry: Arc<Connections>,
    pub connection: Arc<Connection>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let key = (self.connection.node.clone(), self.connection.id);
        self.registry.lock().remove(&key);
    }
}

impl Connections {
    pub fn new() -> Arc<Connections> {
        Arc::default()
    }

    fn lock(&self) -> MutexGuard<'_, Streams> {
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn register(self: &Arc<Self>, info: ProxyInfo) -> Registration {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let connection = Arc::new(Connection {
            node: info.node,
            id,
            protocol: info.protocol,
            proxy_type: info.proxy_type,
            class: info.class,
            cluster_id: info.cluster_id,
            istio_version: info.istio_version,
            proxy_version: info.proxy_version,
            namespace: info.namespace,
            view: info.view,
            bind: info.bind,
            peer: info.peer,
            connected_at: SystemTime::now(),
            types: Mutex::default(),
            queued: AtomicU64::new(0),
            queued_max: AtomicU64::new(0),
            resources_sent: Default::default(),
            removed_sent: Default::default(),
            tap: self.tap.get().cloned(),
        });
        self.lock().insert((connection.node.clone(), id), connection.clone());
        Registration { registry: self.clone(), connection }
    }

    /// Calls `tap` with every answer of the streams that register from now on. Set once; false
    /// if a tap was set already.
    pub fn tap_answers(&self, tap: AnswerTap) -> bool {
        self.tap.set(Tap(tap)).is_ok()
    }

    /// Calls `tap` when a connection accepted from now on writes a response to a cache change
    /// ([`WriteTap`]). Set once; false if a tap was set already.
    pub fn tap_writes(&self, tap: WriteTap) -> bool {
        self.writes.set(tap).is_ok()
    }

    /// The write tap, if one is set.
    pub fn write_tap(&self) -> Option<WriteTap> {
        self.writes.get().cloned()
    }

    /// Every connected stream, by node id then age.
    pub fn all(&self) -> Vec<Arc<Connection>> {
        self.lock().values().cloned().collect()
    }

    /// The newest stream of a node id.
    pub fn by_node(&self, node: &str) -> Option<Arc<Connection>> {
        let streams = self.lock();
        let node: Arc<str> = node.into();
        streams.range((node.clone(), 0)..=(node, u64::MAX)).next_back().map(|(_, c)| c.clone())
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(node: &str) -> ProxyInfo {
        ProxyInfo {
            node: node.into(),
            protocol: "delta",
            proxy_type: "sidecar",
            class: "sidecar/default".into(),
            cluster_id: String::new(),
            istio_version: "1.28.0".into(),
            proxy_version: String::new(),
            namespace: "default".into(),
            view: View::sidecar(),
            bind: None,
            peer: Some("127.0.0.1:40000".parse().unwrap()),
        }
    }

    #[test]
    fn syncz_entry_has_istiod_field_names_and_the_last_error() {
        let registry = Connections::new();
        let a = registry.register(info("sidecar~10.0.0.1~a.default~default.svc.cluster.local"));
        let c = &a.connection;
        c.sent(ResourceType::Cluster, "1", None);
        c.acked(ResourceType::Cluster, "1");
        c.sent(ResourceType::Listener, "2", Some("v1"));
        let bad = ["0.0.0.0_9080".to_string()];
        assert!(c.nacked(ResourceType::Listener, "2", "bad listener", &bad));
        assert!(!c.nacked(ResourceType::Listener, "2", "bad listener", &bad), "the same error again is not new");
        let v = c.syncz();
        assert_eq!(v["proxy"], "sidecar~10.0.0.1~a.default~default.svc.cluster.local");
        assert_eq!(v["istio_version"], "1.28.0");
        assert_eq!(v["address"], "127.0.0.1:40000", "the connection's peer address");
        assert_eq!(v["cluster_sent"], "1");
        assert_eq!(v["cluster_acked"], "1");
        assert_eq!(v["listener_sent"], "2");
        assert!(v.get("listener_acked").is_none());
        assert!(v.get("cluster_id").is_none(), "empty fields are left out, as istiod's omitempty");
        let lds = &v["resources"][ResourceType::Listener.type_url()];
        assert_eq!(lds["lastError"], "bad listener");
        assert_eq!(lds["rejectedResources"], json!(["0.0.0.0_9080"]), "which resources the NACK rejected");
        assert_eq!(lds["sentVersion"], "v1");
        assert!(lds["sentTime"].as_str().unwrap().ends_with('Z'));
        assert!(registry.by_node("sidecar~10.0.0.1~a.default~default.svc.cluster.local").is_some());
        drop(a);
        assert!(registry.is_empty());
    }

    /// A nonce or version reads back exactly as it was written, whatever its form; the forms
    /// this server writes are kept as numbers.
    #[test]
    fn tokens_read_back_as_written_and_numbers_are_kept_as_numbers() {
        for s in [
            "0",
            "17",
            "18446744073709551615",
            "18446744073709551616",
            "007",
            "00000000000000ff",
            "0123456789abcdef",
            "00000000000000FF",
            "0123456789abcde",
            "v1",
            "",
        ] {
            assert_eq!(Token::of(s).to_string(), s);
        }
        assert_eq!(Token::of("17"), Token::Decimal(17));
        assert_eq!(Token::of("00000000000000ff"), Token::Hex16(255));
        assert_eq!(Token::of("007"), Token::Text("007".into()), "a leading zero is not a number's form");
        assert_eq!(Token::of("18446744073709551616"), Token::Text("18446744073709551616".into()));
    }

    #[test]
    fn rfc3339_of_known_instants() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_796_131_200_250);
        assert_eq!(rfc3339(t), "2026-12-01T13:20:00.250Z");
    }
}
