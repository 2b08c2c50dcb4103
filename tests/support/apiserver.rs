//! A fake Kubernetes apiserver for tests: plain HTTP on 127.0.0.1, the real list/watch
//! protocol (paginated lists with `continue` tokens, chunked newline-delimited watch events,
//! bookmarks, 410 Gone after compaction), API discovery (legacy and aggregated v2), and a
//! synchronous control API to change the "cluster" and break it (drop watches, compact
//! history, go down, stop serving API versions).
//!
//! The server runs on its own tokio runtime on a background thread, so sync `#[test]`s and
//! `#[tokio::test]`s can both use it; it stops when the [`ApiServer`] is dropped.
//!
//! Objects are kept as `serde_json::Value`, keyed by (group, resource, namespace, name); an
//! object stored once is readable at every served version of its group (only `apiVersion`
//! is rewritten: there is no schema conversion). One global resourceVersion counter, as with
//! etcd, is bumped by every write; every write is kept in a history that watches replay and
//! lists use for consistent snapshots (pagination, `resourceVersionMatch=Exact`), until
//! [`ApiServer::compact`] forgets it.
//!
//! Served resources: core/v1 services, endpoints, pods, events, namespaces, nodes and secrets
//! (cluster-scoped); discovery.k8s.io/v1 endpointslices; events.k8s.io/v1 events;
//! networking.istio.io v1, v1beta1 and v1alpha3 gateways, virtualservices, destinationrules,
//! serviceentries. More can be added with [`ApiServer::add_resource`].
//!
//! Verbs: get, list, watch (also with `sendInitialEvents=true`, streaming lists), create
//! (POST, `generateName` supported), update (PUT, optimistic concurrency on
//! `metadata.resourceVersion`), patch (merge, strategic merge treated as merge, JSON patch
//! add/remove/replace/test, server-side apply treated as a merge that may create), delete;
//! the `status` subresource (get, update, patch) for kinds that have one; label and field
//! selectors; metadata-only (`PartialObjectMetadata`) get, list and watch.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State as AxState};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, oneshot};

/// How often an open watch that allows bookmarks gets one (default).
pub const DEFAULT_BOOKMARK_INTERVAL: Duration = Duration::from_secs(1);
/// Watch length when the client gives no `timeoutSeconds` (a real apiserver picks 30-60 min).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);
/// The Kubernetes version the server claims to be.
const KUBE_MAJOR: &str = "1";
const KUBE_MINOR: &str = "35";
const VERBS: [&str; 7] = ["create", "delete", "get", "list", "patch", "update", "watch"];
const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";
const AGGREGATED_DISCOVERY_CONTENT_TYPE: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

// ---------------------------------------------------------------------------------------
// Public control API
// ---------------------------------------------------------------------------------------

/// A running fake apiserver. See the module documentation.
pub struct ApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ApiServer {
    /// Starts a server on 127.0.0.1 and an ephemeral port; it accepts connections at once.
    pub fn start() -> ApiServer {
        Self::start_inner(false)
    }

    /// Starts a server that is down (see [`ApiServer::set_down`]) until `set_down(false)`.
    pub fn start_down() -> ApiServer {
        Self::start_inner(true)
    }

    fn start_inner(down: bool) -> ApiServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the test apiserver");
        listener.set_nonblocking(true).expect("non-blocking listener");
        let addr = listener.local_addr().expect("local address");
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ u64::from(addr.port()) << 48;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(seed)),
            down: AtomicBool::new(down),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
            requests: Mutex::new(Vec::new()),
            bookmark_interval_ms: AtomicU64::new(DEFAULT_BOOKMARK_INTERVAL.as_millis() as u64),
        });
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let server_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("test-apiserver-{}", addr.port()))
            .spawn(move || {
                let rt =
                    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("test apiserver runtime");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                    let app = Router::new().fallback(handle).with_state(server_shared.clone());
                    let serve = axum::serve(TrackedListener { inner: listener, shared: server_shared }, app);
                    tokio::select! {
                        _ = std::future::IntoFuture::into_future(serve) => {}
                        _ = shutdown_rx => {}
                    }
                });
                // Dropping the runtime drops every connection task and closes its socket.
                drop(rt);
            })
            .expect("spawn the test apiserver thread");
        ApiServer { shared, addr, shutdown: Some(shutdown_tx), thread: Some(thread) }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The socket address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A kube client config pointing at this server (plain HTTP, no auth, namespace "default").
    pub fn kube_config(&self) -> kube::Config {
        kube::Config::new(self.url().parse().expect("server url"))
    }

    /// A kube client for this server.
    ///
    /// Must be called inside a tokio runtime context (in an async fn, or within
    /// `Runtime::block_on` / `Runtime::enter`): the client spawns its request buffer task.
    pub fn kube_client(&self) -> kube::Client {
        kube::Client::try_from(self.kube_config()).expect("kube client for the test apiserver")
    }

    /// Writes a kubeconfig pointing at this server to `dir/kubeconfig` and returns its path
    /// (for running the meshflow binary with `--kubeconfig`).
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1
kind: Config
clusters:
- name: test-apiserver
  cluster:
    server: {}
contexts:
- name: test-apiserver
  context:
    cluster: test-apiserver
    user: test-user
    namespace: default
current-context: test-apiserver
users:
- name: test-user
  user: {{}}
preferences: {{}}
",
            self.url()
        );
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    /// Creates or replaces an object (by apiVersion, kind, namespace, name; the namespace
    /// defaults to "default" for namespaced kinds and is removed from cluster-scoped ones).
    /// Emits ADDED or MODIFIED; replacing an object with identical content is a no-op (no
    /// event, no new resourceVersion), as on a real apiserver. Returns the stored object.
    ///
    /// Panics on an unknown apiVersion/kind or an object without `metadata.name`.
    pub fn apply(&self, object: Value) -> Value {
        let mut st = self.shared.state();
        let (def, _version) = st.resolve(&object);
        let key = object_key(&def, &object).unwrap_or_else(|e| panic!("apply: {e}: {object}"));
        st.put(&def, key, object)
    }

    /// [`ApiServer::apply`] for every document of a (multi-document) YAML text; `List`
    /// documents are unpacked, empty documents skipped.
    pub fn apply_yaml(&self, yaml: &str) {
        use serde::Deserialize;
        for doc in serde_yaml_ng::Deserializer::from_str(yaml) {
            let value = Value::deserialize(doc).unwrap_or_else(|e| panic!("apply_yaml: {e}"));
            if value.is_null() {
                continue;
            }
            if value["kind"].as_str().is_some_and(|k| k.ends_with("List")) && value["items"].is_array() {
                for item in value["items"].as_array().into_iter().flatten() {
                    self.apply(item.clone());
                }
            } else {
                self.apply(value);
            }
        }
    }

    /// Deletes an object; emits DELETED carrying the last state with a new resourceVersion.
    /// `namespace` None means "default" for namespaced kinds. Returns whether it existed.
    pub fn delete(&self, api_version: &str, kind: &str, namespace: Option<&str>, name: &str) -> bool {
        let mut st = self.shared.state();
        let def = st.resolve_kind(api_version, kind);
        let key = control_key(&def, namespace, name);
        st.remove(&def, &key).is_some()
    }

    /// The stored object (as last written, with its original apiVersion), if any.
    pub fn get(&self, api_version: &str, kind: &str, namespace: Option<&str>, name: &str) -> Option<Value> {
        let st = self.shared.state();
        let def = st.resolve_kind(api_version, kind);
        let key = control_key(&def, namespace, name);
        st.objects.get(&def.res_key()).and_then(|m| m.get(&key)).cloned()
    }

    /// Every stored object of a kind (in one namespace, or all when None), in key order.
    pub fn list(&self, api_version: &str, kind: &str, namespace: Option<&str>) -> Vec<Value> {
        let st = self.shared.state();
        let def = st.resolve_kind(api_version, kind);
        st.objects
            .get(&def.res_key())
            .into_iter()
            .flat_map(|m| m.iter())
            .filter(|((ns, _), _)| namespace.is_none_or(|want| want == ns))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Abruptly closes every open watch connection (the chunked body is cut off without its
    /// terminating chunk, as when a connection breaks).
    pub fn drop_watches(&self) {
        self.shared.state().abort_watches();
    }

    /// Forgets the write history: every resourceVersion handed out so far becomes too old,
    /// so a later watch from one of them gets a 410 Expired ERROR event, and a list
    /// `continue` token or an `Exact` list from one of them gets HTTP 410. (The global
    /// resourceVersion is bumped once so that lists made afterwards are watchable.) Open
    /// watches keep running.
    pub fn compact(&self) {
        self.shared.state().compact();
    }

    /// While down, every connection is closed as soon as it is accepted, every open
    /// connection (watches included) is cut, and a request that slips through is answered
    /// 503. The control API keeps working: change objects while the server is down.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
        if down {
            self.shared.state().abort_watches();
            self.shared.shutdown_connections();
        }
    }

    /// Which versions of `group` are served (an empty list disables the group). Objects
    /// stay stored; they are readable at whatever version is served.
    pub fn set_served_versions(&self, group: &str, versions: &[&str]) {
        let mut st = self.shared.state();
        let g =
            st.groups.entry(group.to_string()).or_insert_with(|| GroupDef { known: Vec::new(), served: Vec::new() });
        for v in versions {
            if !g.known.iter().any(|k| k == v) {
                g.known.push(v.to_string());
            }
        }
        g.served = versions.iter().map(|v| v.to_string()).collect();
        sort_versions(&mut g.served);
    }

    /// Stops serving every version of `group` (discovery and resource paths answer 404).
    pub fn disable_group(&self, group: &str) {
        self.set_served_versions(group, &[]);
    }

    /// Registers one more resource (e.g. another Istio CRD), served at `versions` of
    /// `group` (which are added to the group's served versions).
    pub fn add_resource(&self, group: &str, versions: &[&str], plural: &str, kind: &str, namespaced: bool) {
        let mut st = self.shared.state();
        st.add_resource(group, versions, plural, kind, namespaced, true);
    }

    /// Every Event (core/v1 and events.k8s.io/v1) in order of creation, as currently stored
    /// (a patched event shows its latest state).
    pub fn events(&self) -> Vec<Value> {
        let st = self.shared.state();
        st.event_log.iter().filter_map(|(res, key)| st.objects.get(res).and_then(|m| m.get(key)).cloned()).collect()
    }

    /// Every request received so far, as `"GET /api/v1/pods?limit=500"` (method, path, raw
    /// query). Requests refused while the server is down are not recorded.
    pub fn requests(&self) -> Vec<String> {
        self.shared.requests.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Forgets the request log.
    pub fn clear_requests(&self) {
        self.shared.requests.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// How many watch requests are currently being served.
    pub fn open_watches(&self) -> usize {
        self.shared.state().watches.len()
    }

    /// Waits (polling) until at least `n` watches are open; false on timeout.
    pub fn wait_for_watches(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.open_watches() >= n {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.state().rv
    }

    /// How often watches that allow bookmarks receive one (default 1 s). Applies to watches
    /// opened afterwards.
    pub fn set_bookmark_interval(&self, interval: Duration) {
        self.shared.bookmark_interval_ms.store(interval.as_millis().max(1) as u64, Ordering::SeqCst);
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.shared.shutdown_connections();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Shared state
// ---------------------------------------------------------------------------------------

struct Shared {
    state: Mutex<State>,
    down: AtomicBool,
    /// Duplicates of every open connection's socket, to cut them all at once.
    conns: Mutex<HashMap<u64, std::net::TcpStream>>,
    next_conn: AtomicU64,
    requests: Mutex<Vec<String>>,
    bookmark_interval_ms: AtomicU64,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn shutdown_connections(&self) {
        let conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        for stream in conns.values() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

/// (group, plural)
type ResKey = (String, String);
/// (namespace or "", name)
type ObjKey = (String, String);

#[derive(Clone, Debug)]
struct ResourceDef {
    group: String,
    plural: String,
    singular: String,
    kind: String,
    namespaced: bool,
    short_names: Vec<String>,
    /// Served by the CRD machinery: list items carry apiVersion and kind.
    crd: bool,
    /// Has a `status` subresource: status is ignored on main-resource updates.
    has_status: bool,
}

impl ResourceDef {
    fn res_key(&self) -> ResKey {
        (self.group.clone(), self.plural.clone())
    }

    fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() { version.to_string() } else { format!("{}/{version}", self.group) }
    }

    fn is_event(&self) -> bool {
        self.kind == "Event"
    }
}

struct GroupDef {
    /// Every version the group's resources exist at.
    known: Vec<String>,
    /// Served versions, highest priority first.
    served: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

struct Change {
    rv: u64,
    res: ResKey,
    key: ObjKey,
    kind: ChangeKind,
    /// The object after the change (for Deleted: the last state, with the deletion rv).
    object: Value,
    /// The object before the change.
    prev: Option<Value>,
}

enum WatchMsg {
    Change(Arc<Change>),
    Abort,
}

struct WatchReg {
    res: ResKey,
    tx: mpsc::UnboundedSender<WatchMsg>,
}

struct State {
    rv: u64,
    /// A resourceVersion below this is too old (history before it was compacted away).
    history_start: u64,
    history: Vec<Arc<Change>>,
    groups: BTreeMap<String, GroupDef>,
    resources: Vec<ResourceDef>,
    objects: HashMap<ResKey, BTreeMap<ObjKey, Value>>,
    watches: HashMap<u64, WatchReg>,
    next_watch: u64,
    seed: u64,
    uid_seq: u64,
    event_log: Vec<(ResKey, ObjKey)>,
}

impl State {
    fn new(seed: u64) -> State {
        let mut st = State {
            rv: 1,
            history_start: 1,
            history: Vec::new(),
            groups: BTreeMap::new(),
            resources: Vec::new(),
            objects: HashMap::new(),
            watches: HashMap::new(),
            next_watch: 0,
            seed,
            uid_seq: 0,
            event_log: Vec::new(),
        };
        for (plural, kind, namespaced, has_status, short) in [
            ("services", "Service", true, true, "svc"),
            ("endpoints", "Endpoints", true, false, "ep"),
            ("pods", "Pod", true, true, "po"),
            ("events", "Event", true, false, "ev"),
            ("namespaces", "Namespace", false, true, "ns"),
            ("nodes", "Node", false, true, "no"),
            ("secrets", "Secret", true, false, ""),
        ] {
            st.add_builtin("", "v1", plural, kind, namespaced, has_status, short);
        }
        st.add_builtin("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", true, false, "");
        st.add_builtin("events.k8s.io", "v1", "events", "Event", true, false, "ev");
        for (plural, kind, short) in [
            ("gateways", "Gateway", "gw"),
            ("virtualservices", "VirtualService", "vs"),
            ("destinationrules", "DestinationRule", "dr"),
            ("serviceentries", "ServiceEntry", "se"),
        ] {
            st.add_resource("networking.istio.io", &["v1", "v1beta1", "v1alpha3"], plural, kind, true, true);
            if let Some(def) = st.resources.last_mut() {
                def.short_names = vec![short.to_string()];
            }
        }
        st
    }

    #[allow(clippy::too_many_arguments)]
    fn add_builtin(
        &mut self,
        group: &str,
        version: &str,
        plural: &str,
        kind: &str,
        namespaced: bool,
        has_status: bool,
        short: &str,
    ) {
        self.add_resource(group, &[version], plural, kind, namespaced, has_status);
        if let Some(def) = self.resources.last_mut() {
            def.crd = false;
            def.short_names = if short.is_empty() { Vec::new() } else { vec![short.to_string()] };
        }
    }

    fn add_resource(
        &mut self,
        group: &str,
        versions: &[&str],
        plural: &str,
        kind: &str,
        namespaced: bool,
        status: bool,
    ) {
        let g =
            self.groups.entry(group.to_string()).or_insert_with(|| GroupDef { known: Vec::new(), served: Vec::new() });
        for v in versions {
            if !g.known.iter().any(|k| k == v) {
                g.known.push(v.to_string());
            }
            if !g.served.iter().any(|k| k == v) {
                g.served.push(v.to_string());
            }
        }
        sort_versions(&mut g.known);
        sort_versions(&mut g.served);
        self.resources.retain(|r| !(r.group == group && r.plural == plural));
        self.resources.push(ResourceDef {
            group: group.to_string(),
            plural: plural.to_string(),
            singular: kind.to_lowercase(),
            kind: kind.to_string(),
            namespaced,
            short_names: Vec::new(),
            crd: !group.is_empty() && !group.ends_with(".k8s.io"),
            has_status: status,
        });
    }

    fn served(&self, group: &str, version: &str) -> bool {
        self.groups.get(group).is_some_and(|g| g.served.iter().any(|v| v == version))
    }

    fn find(&self, group: &str, plural: &str) -> Option<ResourceDef> {
        self.resources.iter().find(|r| r.group == group && r.plural == plural).cloned()
    }

    /// The resource of an object given to the control API (panics when unknown).
    fn resolve(&self, object: &Value) -> (ResourceDef, String) {
        let api_version =
            object["apiVersion"].as_str().unwrap_or_else(|| panic!("object without apiVersion: {object}"));
        let kind = object["kind"].as_str().unwrap_or_else(|| panic!("object without kind: {object}"));
        let (_, version) = split_api_version(api_version);
        (self.resolve_kind(api_version, kind), version.to_string())
    }

    fn resolve_kind(&self, api_version: &str, kind: &str) -> ResourceDef {
        let (group, version) = split_api_version(api_version);
        let known = self.groups.get(group).is_some_and(|g| g.known.iter().any(|v| v == version));
        match self.resources.iter().find(|r| r.group == group && r.kind == kind) {
            Some(def) if known => def.clone(),
            _ => panic!(
                "the test apiserver does not know {api_version} {kind}; it knows: {}",
                self.resources.iter().map(|r| format!("{}/{}", r.group, r.kind)).collect::<Vec<_>>().join(", ")
            ),
        }
    }

    fn new_uid(&mut self) -> String {
        self.uid_seq += 1;
        let a = splitmix(self.seed ^ self.uid_seq);
        let b = splitmix(a);
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            0x8000 | ((b >> 48) & 0x3fff),
            b & 0xffff_ffff_ffff
        )
    }

    fn current(&self, def: &ResourceDef, key: &ObjKey) -> Option<&Value> {
        self.objects.get(&def.res_key()).and_then(|m| m.get(key))
    }

    /// Creates or replaces an object; server-managed metadata is set here. A replacement
    /// that changes nothing is a no-op. Returns the stored object.
    fn put(&mut self, def: &ResourceDef, key: ObjKey, mut obj: Value) -> Value {
        let old = self.current(def, &key).cloned();
        if !obj.is_object() {
            obj = json!({});
        }
        if !obj["metadata"].is_object() {
            obj["metadata"] = json!({});
        }
        {
            let meta = obj["metadata"].as_object_mut().expect("metadata object");
            meta.insert("name".into(), json!(key.1));
            if def.namespaced {
                meta.insert("namespace".into(), json!(key.0));
            } else {
                meta.remove("namespace");
            }
        }
        match &old {
            Some(old) => {
                let old_meta = &old["metadata"];
                let old_generation = old_meta["generation"].as_i64().unwrap_or(1);
                let generation = if obj.get("spec") != old.get("spec") { old_generation + 1 } else { old_generation };
                let meta = obj["metadata"].as_object_mut().expect("metadata object");
                for field in ["uid", "creationTimestamp", "resourceVersion"] {
                    match old_meta.get(field) {
                        Some(v) => meta.insert(field.into(), v.clone()),
                        None => meta.remove(field),
                    };
                }
                meta.insert("generation".into(), json!(generation));
                if obj == *old {
                    return obj;
                }
            }
            None => {
                let uid = self.new_uid();
                let meta = obj["metadata"].as_object_mut().expect("metadata object");
                meta.insert("uid".into(), json!(uid));
                meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
                if !meta.contains_key("generation") {
                    meta.insert("generation".into(), json!(1));
                }
            }
        }
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let res = def.res_key();
        if old.is_none() && def.is_event() {
            self.event_log.push((res.clone(), key.clone()));
        }
        self.objects.entry(res.clone()).or_default().insert(key.clone(), obj.clone());
        let kind = if old.is_some() { ChangeKind::Modified } else { ChangeKind::Added };
        self.record(Change { rv: self.rv, res, key, kind, object: obj.clone(), prev: old });
        obj
    }

    /// Deletes an object; returns its last state with the deletion resourceVersion.
    fn remove(&mut self, def: &ResourceDef, key: &ObjKey) -> Option<Value> {
        let res = def.res_key();
        let old = self.objects.get_mut(&res)?.remove(key)?;
        self.rv += 1;
        let mut last = old.clone();
        last["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.record(Change {
            rv: self.rv,
            res,
            key: key.clone(),
            kind: ChangeKind::Deleted,
            object: last.clone(),
            prev: Some(old),
        });
        Some(last)
    }

    fn record(&mut self, change: Change) {
        let change = Arc::new(change);
        self.history.push(change.clone());
        self.watches.retain(|_, w| w.res != change.res || w.tx.send(WatchMsg::Change(change.clone())).is_ok());
    }

    fn abort_watches(&mut self) {
        for (_, w) in self.watches.drain() {
            let _ = w.tx.send(WatchMsg::Abort);
        }
    }

    fn compact(&mut self) {
        self.rv += 1;
        self.history_start = self.rv;
        self.history.clear();
    }

    /// The objects of a resource as they were at `rv` (>= history_start).
    fn snapshot(&self, res: &ResKey, rv: u64) -> BTreeMap<ObjKey, Value> {
        let mut objects = self.objects.get(res).cloned().unwrap_or_default();
        for c in self.history.iter().rev() {
            if c.rv <= rv {
                break;
            }
            if &c.res != res {
                continue;
            }
            match (&c.kind, &c.prev) {
                (ChangeKind::Added, _) => {
                    objects.remove(&c.key);
                }
                (_, Some(prev)) => {
                    objects.insert(c.key.clone(), prev.clone());
                }
                (_, None) => {}
            }
        }
        objects
    }
}

// ---------------------------------------------------------------------------------------
// Connections
// ---------------------------------------------------------------------------------------

/// A TCP listener that keeps a duplicate of every accepted socket (to cut them all when the
/// server goes down) and refuses connections while down.
struct TrackedListener {
    inner: tokio::net::TcpListener,
    shared: Arc<Shared>,
}

impl axum::serve::Listener for TrackedListener {
    type Io = TrackedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TrackedStream, SocketAddr) {
        loop {
            let (stream, addr) = match self.inner.accept().await {
                Ok(accepted) => accepted,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
            };
            if self.shared.down.load(Ordering::SeqCst) {
                drop(stream);
                continue;
            }
            let _ = stream.set_nodelay(true);
            let Ok(std_stream) = stream.into_std() else { continue };
            let Ok(dup) = std_stream.try_clone() else { continue };
            let Ok(stream) = tokio::net::TcpStream::from_std(std_stream) else { continue };
            let id = self.shared.next_conn.fetch_add(1, Ordering::SeqCst);
            self.shared.conns.lock().unwrap_or_else(|e| e.into_inner()).insert(id, dup);
            let tracked = TrackedStream { inner: stream, id, shared: self.shared.clone() };
            if self.shared.down.load(Ordering::SeqCst) {
                continue; // went down meanwhile: dropping `tracked` closes it
            }
            return (tracked, addr);
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

struct TrackedStream {
    inner: tokio::net::TcpStream,
    id: u64,
    shared: Arc<Shared>,
}

impl Drop for TrackedStream {
    fn drop(&mut self) {
        self.shared.conns.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.id);
    }
}

impl AsyncRead for TrackedStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TrackedStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

// ---------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------

/// A Kubernetes `Status` failure.
struct ApiError {
    code: u16,
    body: Value,
}

impl ApiError {
    fn new(code: u16, reason: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            body: json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message.into(), "reason": reason, "code": code}),
        }
    }

    fn with_details(mut self, details: Value) -> ApiError {
        self.body["details"] = details;
        self
    }

    fn not_found_path() -> ApiError {
        ApiError::new(404, "NotFound", "the server could not find the requested resource").with_details(json!({}))
    }

    fn not_found(def: &ResourceDef, name: &str) -> ApiError {
        ApiError::new(404, "NotFound", format!("{} \"{name}\" not found", qualified(def)))
            .with_details(json!({"name": name, "group": def.group, "kind": def.plural}))
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }

    fn method_not_allowed() -> ApiError {
        ApiError::new(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
    }

    fn expired(message: impl Into<String>) -> ApiError {
        ApiError::new(410, "Expired", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (code, axum::Json(self.body)).into_response()
    }
}

type ApiResult = Result<Response, ApiError>;

fn json_response(code: StatusCode, value: &Value) -> Response {
    (code, axum::Json(value)).into_response()
}

/// `pods` or `virtualservices.networking.istio.io`, as in the apiserver's messages.
fn qualified(def: &ResourceDef) -> String {
    if def.group.is_empty() { def.plural.clone() } else { format!("{}.{}", def.plural, def.group) }
}

async fn handle(AxState(shared): AxState<Arc<Shared>>, req: Request) -> Response {
    let method = req.method().clone();
    let uri = req.uri().clone();
    let target = uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| uri.path().to_string());
    shared.requests.lock().unwrap_or_else(|e| e.into_inner()).push(format!("{method} {target}"));
    if shared.down.load(Ordering::SeqCst) {
        let mut resp = ApiError::new(503, "ServiceUnavailable", "the test apiserver is down").into_response();
        resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        return resp;
    }
    let headers = req.headers().clone();
    let body = match axum::body::to_bytes(req.into_body(), 64 << 20).await {
        Ok(b) => b,
        Err(e) => return ApiError::bad_request(format!("cannot read the request body: {e}")).into_response(),
    };
    let query = parse_query(uri.query().unwrap_or(""));
    let segments: Vec<String> = uri.path().split('/').filter(|s| !s.is_empty()).map(pct_decode).collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let req = Req { shared: &shared, method: &method, query: &query, headers: &headers, body: &body };
    match route(&req, &segments) {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

struct Req<'a> {
    shared: &'a Arc<Shared>,
    method: &'a Method,
    query: &'a HashMap<String, String>,
    headers: &'a HeaderMap,
    body: &'a Bytes,
}

impl Req<'_> {
    fn accept(&self) -> &str {
        self.headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    fn content_type(&self) -> &str {
        self.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    fn q(&self, name: &str) -> Option<&str> {
        self.query.get(name).map(String::as_str)
    }

    fn body_json(&self) -> Result<Value, ApiError> {
        let value: Value = serde_json::from_slice(self.body)
            .map_err(|e| ApiError::bad_request(format!("the request body is not JSON: {e}")))?;
        if !value.is_object() {
            return Err(ApiError::bad_request("the request body is not a JSON object"));
        }
        Ok(value)
    }
}

fn route(req: &Req, segments: &[&str]) -> ApiResult {
    let get = req.method == Method::GET;
    let aggregated = req.accept().contains("as=APIGroupDiscoveryList");
    match segments {
        ["healthz"] | ["livez"] | ["readyz"] if get => Ok("ok".into_response()),
        ["version"] if get => Ok(json_response(StatusCode::OK, &version_info())),
        ["api"] if get => {
            let st = req.shared.state();
            Ok(if aggregated {
                aggregated_response(&st, true)
            } else {
                json_response(
                    StatusCode::OK,
                    &json!({"kind": "APIVersions", "versions": ["v1"],
                        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": req.headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("")}]}),
                )
            })
        }
        ["apis"] if get => {
            let st = req.shared.state();
            Ok(if aggregated {
                aggregated_response(&st, false)
            } else {
                let groups: Vec<Value> = st
                    .groups
                    .iter()
                    .filter(|(name, g)| !name.is_empty() && !g.served.is_empty())
                    .map(|(n, g)| api_group(n, g))
                    .collect();
                json_response(StatusCode::OK, &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}))
            })
        }
        ["apis", group] if get => {
            let st = req.shared.state();
            match st.groups.get(*group) {
                Some(g) if !g.served.is_empty() => Ok(json_response(StatusCode::OK, &api_group(group, g))),
                _ => Err(ApiError::not_found_path()),
            }
        }
        ["api", "v1"] if get => resource_list(req, "", "v1"),
        ["apis", group, version] if get => resource_list(req, group, version),
        ["api", "v1", rest @ ..] => resource(req, "", "v1", rest),
        ["apis", group, version, rest @ ..] => resource(req, group, version, rest),
        _ => Err(ApiError::not_found_path()),
    }
}

fn version_info() -> Value {
    json!({
        "major": KUBE_MAJOR, "minor": KUBE_MINOR,
        "emulationMajor": KUBE_MAJOR, "emulationMinor": KUBE_MINOR,
        "minCompatibilityMajor": KUBE_MAJOR, "minCompatibilityMinor": "34",
        "gitVersion": format!("v{KUBE_MAJOR}.{KUBE_MINOR}.0"),
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean", "buildDate": "2025-12-17T00:00:00Z",
        "goVersion": "go1.25.5", "compiler": "gc", "platform": "linux/amd64"
    })
}

fn api_group(name: &str, g: &GroupDef) -> Value {
    let versions: Vec<Value> =
        g.served.iter().map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v})).collect();
    json!({"kind": "APIGroup", "apiVersion": "v1", "name": name, "versions": versions,
        "preferredVersion": versions[0]})
}

fn resource_list(req: &Req, group: &str, version: &str) -> ApiResult {
    let st = req.shared.state();
    if !st.served(group, version) {
        return Err(ApiError::not_found_path());
    }
    let resources: Vec<Value> = st
        .resources
        .iter()
        .filter(|r| r.group == group)
        .flat_map(|r| {
            let mut main = json!({"name": r.plural, "singularName": r.singular, "namespaced": r.namespaced,
                "kind": r.kind, "verbs": VERBS});
            if !r.short_names.is_empty() {
                main["shortNames"] = json!(r.short_names);
            }
            let status = r.has_status.then(|| {
                json!({"name": format!("{}/status", r.plural), "singularName": "", "namespaced": r.namespaced,
                    "kind": r.kind, "verbs": ["get", "patch", "update"]})
            });
            std::iter::once(main).chain(status)
        })
        .collect();
    let gv = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    Ok(json_response(
        StatusCode::OK,
        &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    ))
}

/// Aggregated discovery (apidiscovery.k8s.io/v2) for `/api` (core) or `/apis`.
fn aggregated_response(st: &State, core: bool) -> Response {
    let items: Vec<Value> = st
        .groups
        .iter()
        .filter(|(name, g)| name.is_empty() == core && !g.served.is_empty())
        .map(|(name, g)| {
            let versions: Vec<Value> = g
                .served
                .iter()
                .map(|v| {
                    let resources: Vec<Value> = st
                        .resources
                        .iter()
                        .filter(|r| &r.group == name)
                        .map(|r| {
                            let mut res = json!({"resource": r.plural,
                                "responseKind": {"group": r.group, "version": v, "kind": r.kind},
                                "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
                                "singularResource": r.singular, "verbs": VERBS});
                            if !r.short_names.is_empty() {
                                res["shortNames"] = json!(r.short_names);
                            }
                            if r.has_status {
                                res["subresources"] = json!([{"subresource": "status",
                                    "responseKind": {"group": r.group, "version": v, "kind": r.kind},
                                    "verbs": ["get", "patch", "update"]}]);
                            }
                            res
                        })
                        .collect();
                    json!({"version": v, "resources": resources, "freshness": "Current"})
                })
                .collect();
            json!({"metadata": {"name": name}, "versions": versions})
        })
        .collect();
    let body = json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {}, "items": items});
    let mut resp = json_response(StatusCode::OK, &body);
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(AGGREGATED_DISCOVERY_CONTENT_TYPE));
    resp
}

/// Everything under `/api/v1/` or `/apis/{group}/{version}/`.
fn resource(req: &Req, group: &str, version: &str, rest: &[&str]) -> ApiResult {
    let mut st = req.shared.state();
    if !st.served(group, version) {
        return Err(ApiError::not_found_path());
    }
    // [namespaces, ns, plural, name?, sub?] or [plural, name?, sub?]; `namespaces/{ns}/status`
    // and `namespaces/{ns}/finalize` are subresources of a Namespace.
    let (ns, plural, name, sub) = match rest {
        ["namespaces", ns, plural, tail @ ..] if !(tail.is_empty() && matches!(*plural, "status" | "finalize")) => {
            (Some(*ns), *plural, tail.first().copied(), tail.get(1).copied())
        }
        [plural, tail @ ..] => (None, *plural, tail.first().copied(), tail.get(1).copied()),
        [] => return Err(ApiError::not_found_path()),
    };
    if rest.len() > 5 || (ns.is_none() && rest.len() > 3) {
        return Err(ApiError::not_found_path());
    }
    let def = st.find(group, plural).ok_or_else(ApiError::not_found_path)?;
    match (def.namespaced, ns, name) {
        (true, Some(_), _) | (true, None, None) | (false, None, _) => {}
        _ => return Err(ApiError::not_found_path()),
    }
    let status_sub = match sub {
        None => false,
        Some("status") if def.has_status => true,
        Some(_) => return Err(ApiError::not_found_path()),
    };
    let meta_only = req.accept().contains("as=PartialObjectMetadata");
    let ns_key = if def.namespaced { ns.unwrap_or("") } else { "" };
    match (req.method.clone(), name) {
        (Method::GET, None) => {
            if matches!(req.q("watch"), Some("true" | "1")) {
                let spec = WatchSpec::new(req, &def, version, ns, meta_only)?;
                open_watch(req, st, spec)
            } else {
                list(req, &st, &def, version, ns, meta_only)
            }
        }
        (Method::GET, Some(name)) => {
            let key = (ns_key.to_string(), name.to_string());
            let obj = st.current(&def, &key).ok_or_else(|| ApiError::not_found(&def, name))?;
            Ok(json_response(StatusCode::OK, &render(&def, version, obj, meta_only, false)))
        }
        (Method::POST, None) if ns.is_some() || !def.namespaced => create(req, &mut st, &def, version, ns_key),
        (Method::PUT, Some(name)) => {
            let key = (ns_key.to_string(), name.to_string());
            replace(req, &mut st, &def, version, key, status_sub)
        }
        (Method::PATCH, Some(name)) => {
            let key = (ns_key.to_string(), name.to_string());
            patch(req, &mut st, &def, version, key, status_sub)
        }
        (Method::DELETE, Some(name)) if !status_sub => {
            let key = (ns_key.to_string(), name.to_string());
            let last = st.remove(&def, &key).ok_or_else(|| ApiError::not_found(&def, name))?;
            Ok(json_response(StatusCode::OK, &render(&def, version, &last, meta_only, false)))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

/// An object as served at `version`: apiVersion and kind rewritten; list items of built-in
/// kinds carry neither (as a real apiserver serves them); metadata-only on request.
fn render(def: &ResourceDef, version: &str, obj: &Value, meta_only: bool, in_list: bool) -> Value {
    if meta_only {
        return json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": obj["metadata"]});
    }
    let mut out = obj.clone();
    if let Some(map) = out.as_object_mut() {
        if in_list && !def.crd {
            map.remove("apiVersion");
            map.remove("kind");
        } else {
            map.insert("apiVersion".into(), json!(def.api_version(version)));
            map.insert("kind".into(), json!(def.kind));
        }
    }
    out
}

fn list(req: &Req, st: &State, def: &ResourceDef, version: &str, ns: Option<&str>, meta_only: bool) -> ApiResult {
    let labels = parse_label_selector(req.q("labelSelector").unwrap_or("")).map_err(ApiError::bad_request)?;
    let fields = parse_field_selector(req.q("fieldSelector").unwrap_or("")).map_err(ApiError::bad_request)?;
    let limit = match req.q("limit") {
        None | Some("") => None,
        Some(l) => Some(l.parse::<usize>().map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?),
    }
    .filter(|l| *l > 0);
    let (at, after) = match req.q("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            let (rv, key) = decode_continue(token).ok_or_else(|| ApiError::bad_request("invalid continue token"))?;
            if rv < st.history_start {
                return Err(ApiError::expired(
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                ));
            }
            (rv, Some(key))
        }
        None => match (req.q("resourceVersion").unwrap_or(""), req.q("resourceVersionMatch").unwrap_or("")) {
            (rv, "Exact") => {
                let n: u64 =
                    rv.parse().map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?;
                if n < st.history_start {
                    return Err(ApiError::expired(format!("too old resource version: {n} ({})", st.history_start)));
                }
                if n > st.rv {
                    return Err(ApiError::new(
                        504,
                        "Timeout",
                        format!("Too large resource version: {n}, current: {}", st.rv),
                    ));
                }
                (n, None)
            }
            // Unset, "0" (any), or NotOlderThan: the current state.
            _ => (st.rv, None),
        },
    };
    let snapshot = st.snapshot(&def.res_key(), at);
    let mut items = Vec::new();
    let mut last_key: Option<&ObjKey> = None;
    let mut remaining = 0usize;
    for (key, obj) in &snapshot {
        if after.as_ref().is_some_and(|a| key <= a) {
            continue;
        }
        if ns.is_some_and(|ns| ns != key.0) || !selected(obj, &labels, &fields) {
            continue;
        }
        if limit.is_some_and(|l| items.len() >= l) {
            remaining += 1;
            continue;
        }
        items.push(render(def, version, obj, meta_only, true));
        last_key = Some(key);
    }
    let mut metadata = json!({"resourceVersion": at.to_string()});
    if remaining > 0
        && let Some(last) = last_key
    {
        metadata["continue"] = json!(encode_continue(at, last));
        metadata["remainingItemCount"] = json!(remaining);
    }
    let (api_version, kind) = if meta_only {
        ("meta.k8s.io/v1".to_string(), "PartialObjectMetadataList".to_string())
    } else {
        (def.api_version(version), format!("{}List", def.kind))
    };
    let body = json!({"kind": kind, "apiVersion": api_version, "metadata": metadata, "items": items});
    Ok(json_response(StatusCode::OK, &body))
}

fn create(req: &Req, st: &mut State, def: &ResourceDef, version: &str, ns: &str) -> ApiResult {
    let mut obj = req.body_json()?;
    check_kind(def, &obj)?;
    let meta = &obj["metadata"];
    if def.namespaced
        && let Some(body_ns) = meta["namespace"].as_str().filter(|s| !s.is_empty())
        && body_ns != ns
    {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    let name = match (meta["name"].as_str().filter(|s| !s.is_empty()), meta["generateName"].as_str()) {
        (Some(name), _) => name.to_string(),
        (None, Some(prefix)) => loop {
            let uid = st.new_uid();
            let candidate = format!("{prefix}{}", &uid.replace('-', "")[..5]);
            if st.current(def, &(ns.to_string(), candidate.clone())).is_none() {
                break candidate;
            }
        },
        (None, None) => {
            return Err(ApiError::new(
                422,
                "Invalid",
                "metadata.name: Required value: name or generateName is required",
            ));
        }
    };
    let key = (ns.to_string(), name.clone());
    if st.current(def, &key).is_some() {
        return Err(ApiError::new(409, "AlreadyExists", format!("{} \"{name}\" already exists", qualified(def)))
            .with_details(json!({"name": name, "group": def.group, "kind": def.plural})));
    }
    obj["apiVersion"] = json!(def.api_version(version));
    obj["kind"] = json!(def.kind);
    if let Some(meta) = obj["metadata"].as_object_mut() {
        meta.remove("resourceVersion");
    }
    let stored = st.put(def, key, obj);
    Ok(json_response(StatusCode::CREATED, &render(def, version, &stored, false, false)))
}

fn check_kind(def: &ResourceDef, obj: &Value) -> Result<(), ApiError> {
    match obj["kind"].as_str() {
        Some(kind) if !kind.is_empty() && kind != def.kind => {
            Err(ApiError::bad_request(format!("the object's kind {kind:?} does not match the resource ({})", def.kind)))
        }
        _ => Ok(()),
    }
}

fn conflict(def: &ResourceDef, name: &str) -> ApiError {
    ApiError::new(
        409,
        "Conflict",
        format!(
            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
            qualified(def)
        ),
    )
    .with_details(json!({"name": name, "group": def.group, "kind": def.plural}))
}

/// The object a (full or status) update of `old` with `new` results in.
fn updated(def: &ResourceDef, old: &Value, mut new: Value, status_sub: bool) -> Value {
    if status_sub {
        let mut out = old.clone();
        match new.get("status") {
            Some(status) => out["status"] = status.clone(),
            None => {
                out.as_object_mut().map(|m| m.remove("status"));
            }
        }
        return out;
    }
    if def.has_status {
        match old.get("status") {
            Some(status) => new["status"] = status.clone(),
            None => {
                new.as_object_mut().map(|m| m.remove("status"));
            }
        }
    }
    new
}

fn replace(req: &Req, st: &mut State, def: &ResourceDef, version: &str, key: ObjKey, status_sub: bool) -> ApiResult {
    let mut obj = req.body_json()?;
    check_kind(def, &obj)?;
    if obj["metadata"]["name"].as_str().is_some_and(|n| n != key.1) {
        return Err(ApiError::bad_request("the name of the object does not match the name on the URL"));
    }
    let old = st.current(def, &key).cloned().ok_or_else(|| ApiError::not_found(def, &key.1))?;
    if let Some(rv) = obj["metadata"]["resourceVersion"].as_str().filter(|s| !s.is_empty())
        && Some(rv) != old["metadata"]["resourceVersion"].as_str()
    {
        return Err(conflict(def, &key.1));
    }
    obj["apiVersion"] = json!(def.api_version(version));
    obj["kind"] = json!(def.kind);
    let new = updated(def, &old, obj, status_sub);
    let stored = st.put(def, key, new);
    Ok(json_response(StatusCode::OK, &render(def, version, &stored, false, false)))
}

fn patch(req: &Req, st: &mut State, def: &ResourceDef, version: &str, key: ObjKey, status_sub: bool) -> ApiResult {
    let content_type = req.content_type().split(';').next().unwrap_or("").trim().to_string();
    let apply = content_type == "application/apply-patch+yaml";
    let patch: Value = if apply {
        let text = std::str::from_utf8(req.body).map_err(|_| ApiError::bad_request("the patch is not UTF-8"))?;
        serde_yaml_ng::from_str(text).map_err(|e| ApiError::bad_request(format!("the patch is not YAML: {e}")))?
    } else {
        serde_json::from_slice(req.body).map_err(|e| ApiError::bad_request(format!("the patch is not JSON: {e}")))?
    };
    let old = st.current(def, &key).cloned();
    let (mut target, created) = match old.clone() {
        Some(old) => (old, false),
        None if apply && !status_sub => (json!({}), true),
        None => return Err(ApiError::not_found(def, &key.1)),
    };
    match content_type.as_str() {
        "application/merge-patch+json" | "application/strategic-merge-patch+json" | "application/apply-patch+yaml" => {
            if let Some(rv) = patch["metadata"]["resourceVersion"].as_str().filter(|s| !s.is_empty())
                && old.as_ref().is_some_and(|o| Some(rv) != o["metadata"]["resourceVersion"].as_str())
            {
                return Err(conflict(def, &key.1));
            }
            merge_patch(&mut target, &patch);
        }
        "application/json-patch+json" => {
            json_patch(&mut target, &patch).map_err(|e| ApiError::new(422, "Invalid", e))?;
        }
        other => {
            return Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                format!("the patch type {other:?} is not supported"),
            ));
        }
    }
    target["apiVersion"] = json!(def.api_version(version));
    target["kind"] = json!(def.kind);
    let new = match &old {
        Some(old) => updated(def, old, target, status_sub),
        None => target,
    };
    let stored = st.put(def, key, new);
    let code = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok(json_response(code, &render(def, version, &stored, false, false)))
}

// ---------------------------------------------------------------------------------------
// Watch
// ---------------------------------------------------------------------------------------

struct WatchSpec {
    def: ResourceDef,
    version: String,
    ns: Option<String>,
    labels: Vec<LabelReq>,
    fields: Vec<FieldReq>,
    meta_only: bool,
    bookmarks: bool,
    timeout: Duration,
}

impl WatchSpec {
    fn new(
        req: &Req,
        def: &ResourceDef,
        version: &str,
        ns: Option<&str>,
        meta_only: bool,
    ) -> Result<WatchSpec, ApiError> {
        let timeout = match req.q("timeoutSeconds") {
            None | Some("") => DEFAULT_WATCH_TIMEOUT,
            Some(s) => Duration::from_secs(
                s.parse().map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {s:?}")))?,
            ),
        };
        Ok(WatchSpec {
            def: def.clone(),
            version: version.to_string(),
            ns: ns.map(str::to_string),
            labels: parse_label_selector(req.q("labelSelector").unwrap_or("")).map_err(ApiError::bad_request)?,
            fields: parse_field_selector(req.q("fieldSelector").unwrap_or("")).map_err(ApiError::bad_request)?,
            meta_only,
            bookmarks: req.q("allowWatchBookmarks") == Some("true"),
            timeout,
        })
    }

    fn matches(&self, key: &ObjKey, obj: &Value) -> bool {
        self.ns.as_ref().is_none_or(|ns| *ns == key.0) && selected(obj, &self.labels, &self.fields)
    }

    fn line(&self, kind: &str, obj: &Value) -> Bytes {
        let event = json!({"type": kind, "object": render(&self.def, &self.version, obj, self.meta_only, false)});
        let mut text = event.to_string();
        text.push('\n');
        Bytes::from(text)
    }

    /// The event a change is to this watch, if any: an object that starts or stops matching
    /// the selectors is ADDED or DELETED, as on a real apiserver.
    fn event(&self, c: &Change) -> Option<Bytes> {
        let now = self.matches(&c.key, &c.object);
        let before = c.prev.as_ref().is_some_and(|p| self.matches(&c.key, p));
        let kind = match c.kind {
            ChangeKind::Added if now => "ADDED",
            ChangeKind::Deleted if before => "DELETED",
            ChangeKind::Modified if before && now => "MODIFIED",
            ChangeKind::Modified if now => "ADDED",
            ChangeKind::Modified if before => "DELETED",
            _ => return None,
        };
        Some(self.line(kind, &c.object))
    }

    fn bookmark(&self, rv: u64, initial_events_end: bool) -> Bytes {
        let (api_version, kind) = if self.meta_only {
            ("meta.k8s.io/v1".to_string(), "PartialObjectMetadata".to_string())
        } else {
            (self.def.api_version(&self.version), self.def.kind.clone())
        };
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if initial_events_end {
            metadata["annotations"] = json!({INITIAL_EVENTS_END: "true"});
        }
        let event =
            json!({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": api_version, "metadata": metadata}});
        let mut text = event.to_string();
        text.push('\n');
        Bytes::from(text)
    }
}

/// Removes a watch's registration when its task ends.
struct WatchGuard {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.shared.state().watches.remove(&self.id);
    }
}

type BodyChunk = Result<Bytes, io::Error>;

fn streaming_response(rx: mpsc::Receiver<BodyChunk>) -> Response {
    let mut resp = Response::new(Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn open_watch(req: &Req, mut st: MutexGuard<'_, State>, spec: WatchSpec) -> ApiResult {
    let rv_param = req.q("resourceVersion").unwrap_or("");
    let send_initial = req.q("sendInitialEvents") == Some("true");
    let (out_tx, out_rx) = mpsc::channel::<BodyChunk>(1024);
    let mut initial = Vec::new();
    if rv_param.is_empty() || rv_param == "0" || send_initial {
        // Start at the current state: synthetic ADDED events first.
        if let Some(objects) = st.objects.get(&spec.def.res_key()) {
            for (key, obj) in objects {
                if spec.matches(key, obj) {
                    initial.push(spec.line("ADDED", obj));
                }
            }
        }
        if send_initial && spec.bookmarks {
            initial.push(spec.bookmark(st.rv, true));
        }
    } else {
        let n: u64 =
            rv_param.parse().map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv_param:?}")))?;
        if n < st.history_start {
            let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "reason": "Expired", "code": 410,
                "message": format!("too old resource version: {n} ({})", st.history_start)}});
            let mut text = gone.to_string();
            text.push('\n');
            let _ = out_tx.try_send(Ok(Bytes::from(text)));
            drop(out_tx);
            return Ok(streaming_response(out_rx));
        }
        let res = spec.def.res_key();
        let start = st.history.partition_point(|c| c.rv <= n);
        for c in &st.history[start..] {
            if c.res == res
                && let Some(line) = spec.event(c)
            {
                initial.push(line);
            }
        }
    }
    let (tx, rx) = mpsc::unbounded_channel();
    st.next_watch += 1;
    let id = st.next_watch;
    st.watches.insert(id, WatchReg { res: spec.def.res_key(), tx });
    drop(st);
    let guard = WatchGuard { shared: req.shared.clone(), id };
    tokio::spawn(run_watch(req.shared.clone(), spec, rx, out_tx, initial, guard));
    Ok(streaming_response(out_rx))
}

async fn run_watch(
    shared: Arc<Shared>,
    spec: WatchSpec,
    mut rx: mpsc::UnboundedReceiver<WatchMsg>,
    out: mpsc::Sender<BodyChunk>,
    initial: Vec<Bytes>,
    guard: WatchGuard,
) {
    watch_loop(&shared, &spec, &mut rx, &out, initial).await;
    // Unregister before the body ends, so a client that saw the end sees no open watch.
    drop(guard);
    drop(out);
}

async fn watch_loop(
    shared: &Shared,
    spec: &WatchSpec,
    rx: &mut mpsc::UnboundedReceiver<WatchMsg>,
    out: &mpsc::Sender<BodyChunk>,
    initial: Vec<Bytes>,
) {
    let deadline = tokio::time::sleep(spec.timeout);
    tokio::pin!(deadline);
    for line in initial {
        if out.send(Ok(line)).await.is_err() {
            return;
        }
    }
    let period = Duration::from_millis(shared.bookmark_interval_ms.load(Ordering::SeqCst));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Forwards one registry message; false when the watch is over.
    async fn forward(spec: &WatchSpec, out: &mpsc::Sender<BodyChunk>, msg: Option<WatchMsg>) -> bool {
        match msg {
            Some(WatchMsg::Change(c)) => match spec.event(&c) {
                Some(line) => out.send(Ok(line)).await.is_ok(),
                None => true,
            },
            Some(WatchMsg::Abort) | None => {
                // An error in the body makes hyper cut the connection mid-stream.
                let _ = out.send(Err(io::Error::other("watch dropped by the test apiserver"))).await;
                false
            }
        }
    }
    loop {
        tokio::select! {
            _ = &mut deadline => return,
            _ = out.closed() => return,
            msg = rx.recv() => {
                if !forward(spec, out, msg).await {
                    return;
                }
            }
            _ = ticker.tick(), if spec.bookmarks => {
                // Under the state lock every change up to `rv` is already queued: send those
                // first, so the bookmark never runs ahead of an event.
                let (rv, pending) = {
                    let st = shared.state();
                    let mut pending = Vec::new();
                    while let Ok(m) = rx.try_recv() {
                        pending.push(m);
                    }
                    (st.rv, pending)
                };
                for msg in pending {
                    if !forward(spec, out, Some(msg)).await {
                        return;
                    }
                }
                if out.send(Ok(spec.bookmark(rv, false))).await.is_err() {
                    return;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Selectors
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum LabelReq {
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

#[derive(Clone, Debug)]
struct FieldReq {
    path: String,
    value: String,
    equal: bool,
}

/// Splits on commas outside parentheses.
fn split_terms(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, ch) in s.char_indices() {
        match ch {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out.into_iter().map(str::trim).filter(|t| !t.is_empty()).collect()
}

fn parse_set(s: &str) -> Result<Vec<String>, String> {
    let inner = s
        .trim()
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| format!("invalid label selector set {s:?}"))?;
    Ok(inner.split(',').map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect())
}

fn parse_label_selector(s: &str) -> Result<Vec<LabelReq>, String> {
    let mut out = Vec::new();
    for term in split_terms(s) {
        let req = if let Some(key) = term.strip_prefix('!') {
            LabelReq::NotExists(key.trim().to_string())
        } else if let Some((key, set)) = term.split_once(" notin ") {
            LabelReq::NotIn(key.trim().to_string(), parse_set(set)?)
        } else if let Some((key, set)) = term.split_once(" in ") {
            LabelReq::In(key.trim().to_string(), parse_set(set)?)
        } else if let Some((key, value)) = term.split_once("!=") {
            LabelReq::Ne(key.trim().to_string(), value.trim().to_string())
        } else if let Some((key, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
            LabelReq::Eq(key.trim().to_string(), value.trim().to_string())
        } else if term.contains(['(', ')', ' ']) {
            return Err(format!("invalid label selector term {term:?}"));
        } else {
            LabelReq::Exists(term.to_string())
        };
        out.push(req);
    }
    Ok(out)
}

fn parse_field_selector(s: &str) -> Result<Vec<FieldReq>, String> {
    let mut out = Vec::new();
    for term in split_terms(s) {
        let (path, value, equal) = if let Some((p, v)) = term.split_once("!=") {
            (p, v, false)
        } else if let Some((p, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            (p, v, true)
        } else {
            return Err(format!("invalid field selector term {term:?}"));
        };
        out.push(FieldReq { path: path.trim().to_string(), value: value.trim().to_string(), equal });
    }
    Ok(out)
}

fn selected(obj: &Value, labels: &[LabelReq], fields: &[FieldReq]) -> bool {
    let object_labels = &obj["metadata"]["labels"];
    let label = |k: &str| object_labels.get(k).and_then(Value::as_str);
    let labels_ok = labels.iter().all(|req| match req {
        LabelReq::Eq(k, v) => label(k) == Some(v.as_str()),
        LabelReq::Ne(k, v) => label(k) != Some(v.as_str()),
        LabelReq::In(k, set) => label(k).is_some_and(|l| set.iter().any(|v| v == l)),
        LabelReq::NotIn(k, set) => label(k).is_none_or(|l| !set.iter().any(|v| v == l)),
        LabelReq::Exists(k) => label(k).is_some(),
        LabelReq::NotExists(k) => label(k).is_none(),
    });
    labels_ok
        && fields.iter().all(|f| {
            let mut v = obj;
            for part in f.path.split('.') {
                v = &v[part];
            }
            let actual = match v {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            (actual == f.value) == f.equal
        })
}

// ---------------------------------------------------------------------------------------
// Patches
// ---------------------------------------------------------------------------------------

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let map = target.as_object_mut().expect("object");
    for (k, v) in patch {
        if v.is_null() {
            map.remove(k);
        } else {
            merge_patch(map.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// RFC 6902 JSON patch: add, remove, replace, test.
fn json_patch(target: &mut Value, patch: &Value) -> Result<(), String> {
    let ops = patch.as_array().ok_or("a JSON patch is an array")?;
    for op in ops {
        let path = op["path"].as_str().ok_or("a JSON patch operation needs a path")?;
        let tokens: Vec<String> = path.split('/').skip(1).map(|t| t.replace("~1", "/").replace("~0", "~")).collect();
        match op["op"].as_str() {
            Some("test") => {
                if target.pointer(path) != Some(&op["value"]) {
                    return Err(format!("test failed at {path}"));
                }
            }
            Some(kind @ ("add" | "replace" | "remove")) => {
                let Some((last, parents)) = tokens.split_last() else {
                    if kind == "remove" {
                        return Err("cannot remove the whole document".into());
                    }
                    *target = op["value"].clone();
                    continue;
                };
                let mut parent = &mut *target;
                for t in parents {
                    parent = match parent {
                        Value::Object(m) => m.get_mut(t),
                        Value::Array(a) => t.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
                        _ => None,
                    }
                    .ok_or_else(|| format!("no such path {path}"))?;
                }
                match (parent, kind) {
                    (Value::Object(m), "remove") => {
                        m.remove(last).ok_or_else(|| format!("no such path {path}"))?;
                    }
                    (Value::Object(m), "replace") if !m.contains_key(last) => {
                        return Err(format!("no such path {path}"));
                    }
                    (Value::Object(m), _) => {
                        m.insert(last.clone(), op["value"].clone());
                    }
                    (Value::Array(a), _) => {
                        let i = if last == "-" {
                            a.len()
                        } else {
                            last.parse::<usize>().map_err(|_| format!("bad index in {path}"))?
                        };
                        match kind {
                            "add" if i <= a.len() => a.insert(i, op["value"].clone()),
                            "replace" if i < a.len() => a[i] = op["value"].clone(),
                            "remove" if i < a.len() => {
                                a.remove(i);
                            }
                            _ => return Err(format!("index out of range in {path}")),
                        }
                    }
                    _ => return Err(format!("no such path {path}")),
                }
            }
            other => return Err(format!("unsupported JSON patch operation {other:?}")),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------

fn split_api_version(api_version: &str) -> (&str, &str) {
    api_version.rsplit_once('/').unwrap_or(("", api_version))
}

/// The storage key of an object given to the control API.
fn object_key(def: &ResourceDef, object: &Value) -> Result<ObjKey, String> {
    let name = object["metadata"]["name"].as_str().filter(|s| !s.is_empty()).ok_or("object without metadata.name")?;
    let ns = object["metadata"]["namespace"].as_str().filter(|s| !s.is_empty());
    Ok(control_key(def, ns, name))
}

fn control_key(def: &ResourceDef, namespace: Option<&str>, name: &str) -> ObjKey {
    let ns = if def.namespaced { namespace.unwrap_or("default") } else { "" };
    (ns.to_string(), name.to_string())
}

/// Kubernetes version priority: GA before beta before alpha, higher numbers first.
fn sort_versions(versions: &mut [String]) {
    fn priority(v: &str) -> (u8, u64, u64) {
        let Some(rest) = v.strip_prefix('v') else { return (0, 0, 0) };
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        let Ok(major) = rest[..digits].parse::<u64>() else { return (0, 0, 0) };
        let tail = &rest[digits..];
        if tail.is_empty() {
            return (3, major, 0);
        }
        for (stability, word) in [(2, "beta"), (1, "alpha")] {
            if let Some(n) = tail.strip_prefix(word).and_then(|n| n.parse::<u64>().ok()) {
                return (stability, major, n);
            }
        }
        (0, 0, 0)
    }
    versions.sort_by(|a, b| priority(b).cmp(&priority(a)).then_with(|| a.cmp(b)));
}

fn now_rfc3339() -> String {
    let now = k8s_openapi::jiff::Timestamp::now();
    k8s_openapi::jiff::Timestamp::from_second(now.as_second()).unwrap_or(now).to_string()
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn encode_continue(rv: u64, key: &ObjKey) -> String {
    let raw = format!("{rv}\u{0}{}\u{0}{}", key.0, key.1);
    let mut out = String::with_capacity(raw.len() * 2);
    for b in raw.bytes() {
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn decode_continue(token: &str) -> Option<(u64, ObjKey)> {
    if !token.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> =
        (0..token.len()).step_by(2).map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok()).collect();
    let text = String::from_utf8(bytes?).ok()?;
    let mut parts = text.split('\u{0}');
    let rv = parts.next()?.parse().ok()?;
    let ns = parts.next()?.to_string();
    let name = parts.next()?.to_string();
    Some((rv, (ns, name)))
}

fn parse_query(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (pct_decode(k), pct_decode(v))
        })
        .collect()
}

fn pct_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 3 <= bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
