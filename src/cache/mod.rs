//! The current resources, versioned by content, with a change log that xDS streams follow.
//!
//! The engine applies one [`ResourceDelta`] per logical time under a write lock, so a stream
//! never sees half of a change. Versions are a hash of the encoded bytes: stable across
//! restarts, so an Envoy that reconnects with `initial_resource_versions` is sent only what
//! really differs. Each applied delta gets a sequence number; streams remember the last one
//! they handled and ask for the names changed since, so a push costs what changed, not the
//! size of the mesh. A stream that fell behind the bounded log does one full comparison.
//!
//! Resources live in scopes ([`Scope`]): shared by every proxy, by every sidecar, or by one
//! proxy class. A stream reads through its [`View`], so a gateway never sees sidecar
//! listeners and a class's resources exist once however many proxies share the class.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use tokio::sync::watch;

use crate::engine::{EngineOutput, ResourceChange, ResourceDelta};
use crate::model::proxy::ProxyKind;
use crate::translate::{Diagnostic, ResourceType, Scope};

/// One resource as served: its encoded body and content version, and the forms proxies get it
/// in ([`Resource::rendering`]), each encoded once and shared by every stream that sends it.
pub struct Resource {
    /// Shared with the resource's encodings and the streams that hold it.
    pub name: Arc<str>,
    pub version: String,
    pub body: Arc<[u8]>,
    /// The as-is form, made on first use.
    as_is: OnceLock<Arc<Rendered>>,
    /// The other forms, by variant, made on first use. A changed resource is a new
    /// `Resource`, so these never outlive the body they were made from.
    variants: Mutex<HashMap<Variant, Arc<Rendered>>>,
}

impl Resource {
    pub fn new(name: Arc<str>, version: String, body: Arc<[u8]>) -> Resource {
        Resource { name, version, body, as_is: OnceLock::new(), variants: Mutex::new(HashMap::new()) }
    }

    /// The resource in the form `variant` (see [`Variant`]), encoded as an xDS `Resource`
    /// message once: the first stream to ask makes it with `make`, every other one shares it.
    /// `make` gets the body and returns the variant's body and its port (for a listener
    /// rebound to a proxy's address), or None when the variant is the body as is.
    pub fn rendering(
        &self,
        ty: ResourceType,
        variant: Variant,
        make: impl FnOnce(&[u8]) -> Option<(Vec<u8>, Option<u16>)>,
    ) -> Arc<Rendered> {
        if variant == Variant::AsIs {
            return self.as_is(ty).clone();
        }
        let mut variants = self.variants.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = variants.get(&variant) {
            return r.clone();
        }
        let rendered = match make(&self.body) {
            Some((body, port)) => Arc::new(Rendered::new(ty, &self.name, content_version(&body), &body, port)),
            None => self.as_is(ty).clone(),
        };
        variants.insert(variant, rendered.clone());
        rendered
    }

    fn as_is(&self, ty: ResourceType) -> &Arc<Rendered> {
        self.as_is.get_or_init(|| Arc::new(Rendered::new(ty, &self.name, self.version.clone(), &self.body, None)))
    }
}

impl PartialEq for Resource {
    fn eq(&self, other: &Resource) -> bool {
        self.name == other.name && self.version == other.version && self.body == other.body
    }
}

impl Eq for Resource {}

impl std::fmt::Debug for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resource")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("body", &format_args!("{} bytes", self.body.len()))
            .finish()
    }
}

/// The form a proxy gets a resource in. Most proxies get it as the engine made it; a
/// captured sidecar gets listeners that do not bind (`bind_to_port: false`, the same bytes for
/// every captured proxy); a proxy with a bind address gets listeners bound to it (the same
/// bytes for every proxy with that address). A new per-proxy form of a resource is a new
/// variant here and a case in `xds::delta::render`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Variant {
    AsIs,
    Captured,
    Bound(std::net::IpAddr),
}

/// One form of a resource, encoded once as the xDS `Resource` message (name, version, the
/// body in an `Any`) and shared by every stream that sends it: a response is the
/// concatenation of these (see `xds::wire`), so no stream copies or re-encodes a resource.
pub struct Rendered {
    pub name: Arc<str>,
    pub version: String,
    /// [`version_tag`] of `version`: what streams compare and keep.
    pub tag: u64,
    /// The encoded `envoy.service.discovery.v3.Resource` message.
    pub wire: bytes::Bytes,
    /// The encoded `Any` inside it (a suffix of `wire`, sharing its allocation): what a
    /// state-of-the-world response carries.
    pub any: bytes::Bytes,
    /// Where the body (the `Any`'s value) starts in `wire`: it runs to the end.
    body_at: usize,
    /// For a listener rebound to a proxy's address: its port.
    pub port: Option<u16>,
}

impl Rendered {
    fn new(ty: ResourceType, name: &Arc<str>, version: String, body: &[u8], port: Option<u16>) -> Rendered {
        use crate::pb::{field_len, put_bytes, put_head};
        let type_url = ty.type_url();
        // Any { type_url = 1, value = 2 }
        let any_len = field_len(1, type_url.len()) + field_len(2, body.len());
        // Resource { version = 1, resource = 2, name = 3 }: the body last, so it is a suffix.
        let len = field_len(3, name.len()) + field_len(1, version.len()) + field_len(2, any_len);
        let mut buf = bytes::BytesMut::with_capacity(len);
        put_bytes(3, name.as_bytes(), &mut buf);
        put_bytes(1, version.as_bytes(), &mut buf);
        put_head(2, any_len, &mut buf);
        put_bytes(1, type_url.as_bytes(), &mut buf);
        put_bytes(2, body, &mut buf);
        debug_assert_eq!(buf.len(), len);
        let wire = buf.freeze();
        Rendered {
            name: name.clone(),
            tag: version_tag(&version),
            version,
            body_at: len - body.len(),
            any: wire.slice(len - any_len..),
            wire,
            port,
        }
    }

    /// The resource's body (what the `Any` carries).
    pub fn body(&self) -> &[u8] {
        &self.wire[self.body_at..]
    }
}

impl std::fmt::Debug for Rendered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rendered")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("body", &format_args!("{} bytes", self.wire.len() - self.body_at))
            .finish()
    }
}

/// A version as streams keep it: 8 bytes instead of the string. Equal tags mean equal
/// versions but for a 64-bit hash collision (2^-64 per comparison).
pub fn version_tag(version: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(version.as_bytes())
}

pub fn content_version(body: &[u8]) -> String {
    // (Sixteen lowercase hex digits, as `{:016x}` writes them, without the formatting
    // machinery: this runs on the engine's thread for every changed resource.)
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let hash = xxhash_rust::xxh3::xxh3_64(body);
    (0..16).rev().map(|i| HEX[((hash >> (i * 4)) & 0xf) as usize] as char).collect()
}

/// How many (sequence, type, name) entries the change log keeps.
const LOG_CAPACITY: usize = 1 << 20;

/// What one proxy sees of the cache: its class's resources, then its namespace's, then its
/// kind's (the sidecars' ones for sidecars, the proxyless ones for proxyless gRPC clients), then
/// the shared ones. A name found in an earlier scope hides the same name
/// in a later one.
///
/// A view is shared, not copied: a clone is a reference count. A stream's view (~9 scopes,
/// ~1 KB), the `/debug/syncz` entry's and the delta memo's interned one are one allocation, and
/// the streams of one view share the interned one ([`crate::xds::delta`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct View {
    scopes: Arc<[Scope]>,
}

impl View {
    /// The view of a proxy of `kind` in class `class` (None: a proxy not registered as a
    /// class, which sees what every proxy of its kind sees).
    pub fn new(kind: ProxyKind, class: Option<String>) -> View {
        let mut scopes: Vec<Scope> = class.into_iter().map(Scope::Class).collect();
        match kind {
            ProxyKind::Sidecar => scopes.push(Scope::Sidecars),
            ProxyKind::Proxyless => scopes.push(Scope::Proxyless),
            ProxyKind::Router => {}
        }
        scopes.push(Scope::All);
        View { scopes: scopes.into() }
    }

    /// The same view with its scopes changed by `edit` (the builders below; a view is built
    /// once per stream).
    fn edited(self, edit: impl FnOnce(&mut Vec<Scope>)) -> View {
        let mut scopes = self.scopes.to_vec();
        edit(&mut scopes);
        View { scopes: scopes.into() }
    }

    /// The scopes this view reads, first match wins.
    pub fn scopes(&self) -> &[Scope] {
        &self.scopes
    }

    /// The same view for a proxy of namespace `namespace`: that namespace's resources hide the
    /// same names in the sidecars' and the shared ones (a class's still hide them all).
    /// Proxyless gRPC clients are served the default context (their clusters are built for
    /// gRPC, and a namespace's sidecar clusters must not hide them).
    pub fn in_namespace(self, namespace: &str) -> View {
        if self.scopes.contains(&Scope::Proxyless) {
            return self;
        }
        self.edited(|scopes| {
            let at = scopes.iter().take_while(|s| matches!(s, Scope::Class(_))).count();
            scopes.insert(at, Scope::Namespace(namespace.to_string()));
            if scopes.contains(&Scope::Sidecars) {
                scopes.insert(at, Scope::SidecarsIn(namespace.to_string()));
            }
        })
    }

    /// The same view for a proxy in `locality` (`region/zone/subzone`, "" for none) with
    /// `labels`: the assignments computed for that locality ([`Scope::Locality`]) or that
    /// locality and labels ([`Scope::Prioritized`]) hide the shared ones, and those of its
    /// namespace's own rules ([`Scope::LocalityIn`], [`Scope::PrioritizedIn`]) hide its
    /// namespace's. So the order is: class, (locality, labels, namespace), (locality,
    /// namespace), namespace, kind, (locality, labels), locality, shared. A cluster's
    /// assignment is in one of the two forms in any one context, so their order does not
    /// matter. Call it after [`View::in_namespace`]. Proxyless gRPC clients are served the
    /// default context: its located assignments, none of a namespace's.
    pub fn located(self, locality: &str, labels: &crate::model::k8s::Labels) -> View {
        let labels = labels.id();
        self.edited(|scopes| {
            let namespace =
                scopes.iter().find_map(|s| if let Scope::Namespace(ns) = s { Some(ns.clone()) } else { None });
            if let Some(ns) = namespace {
                let at = scopes.iter().position(|s| matches!(s, Scope::Namespace(_) | Scope::SidecarsIn(_)));
                scopes.insert(at.unwrap_or(0), Scope::LocalityIn(locality.to_string(), ns.clone()));
                scopes.insert(at.unwrap_or(0), Scope::PrioritizedIn(locality.to_string(), labels.clone(), ns));
            }
            let at = scopes.iter().position(|s| *s == Scope::All).unwrap_or(scopes.len());
            scopes.insert(at, Scope::Locality(locality.to_string()));
            scopes.insert(at, Scope::Prioritized(locality.to_string(), labels));
        })
    }

    /// The same view for a sidecar whose traffic is captured: it also sees [`Scope::Captured`]
    /// (whose names no other scope uses).
    pub fn captured(self) -> View {
        if self.scopes.contains(&Scope::Sidecars) && !self.scopes.contains(&Scope::Captured) {
            return self.edited(|scopes| scopes.insert(0, Scope::Captured));
        }
        self
    }

    /// Whether this view is a captured sidecar's.
    pub fn is_captured(&self) -> bool {
        self.scopes.contains(&Scope::Captured)
    }

    /// What a sidecar without a class sees.
    pub fn sidecar() -> View {
        View::new(ProxyKind::Sidecar, None)
    }

    pub fn sees(&self, scope: &Scope) -> bool {
        self.scopes.contains(scope)
    }
}

type Slots = [BTreeMap<String, Arc<Resource>>; ResourceType::ALL.len()];

#[derive(Default)]
struct State {
    /// foldhash: every delta stream looks its view's scopes up here for every name it sends.
    resources: HashMap<Scope, Slots, foldhash::fast::RandomState>,
    seq: u64,
    log: VecDeque<(u64, Scope, ResourceType, String)>,
    /// Changes with a sequence number above this are all in `log`.
    log_floor: u64,
    pending_sources: BTreeSet<String>,
    diagnostics: BTreeSet<Diagnostic>,
}

impl State {
    fn get(&self, view: &View, ty: ResourceType, name: &str) -> Option<&Arc<Resource>> {
        view.scopes.iter().find_map(|scope| self.resources.get(scope)?[slot(ty)].get(name))
    }
}

fn slot(ty: ResourceType) -> usize {
    ty as usize
}

/// Hears what [`Cache::apply_observed`] changes (the bench's sink times each change with it).
pub trait ApplyObserver {
    /// `change` changed the cache: its new content version, None for a removal. Called under
    /// the cache's write lock.
    fn changed(&mut self, change: &ResourceChange, version: Option<&str>);
    /// The delta changed something and got sequence number `seq`; no stream has been woken.
    fn applied(&mut self, seq: u64);
}

/// No observer.
impl ApplyObserver for () {
    fn changed(&mut self, _: &ResourceChange, _: Option<&str>) {}
    fn applied(&mut self, _: u64) {}
}

/// The set of names changed since a sequence number, or `None` when the log no longer
/// reaches that far back and the caller must compare everything.
pub type Changed = Option<Vec<(ResourceType, String)>>;

pub struct Cache {
    state: RwLock<State>,
    /// The sequence number of the last applied change; bumped on readiness too. Sent by the
    /// thread that applies a change (the engine's); streams wait on `fanout`.
    notify: watch::Sender<u64>,
    /// What the streams of a Tokio runtime wait on ([`Cache::subscribe`]): a relay task on
    /// that runtime forwards `notify` here, so the engine's thread wakes one task, not every
    /// stream. A wake from outside the runtime queues the task on the runtime's shared queue
    /// and may unpark a worker, ~4 µs apiece: with 11 streams, 13% of the engine thread's
    /// CPU on a pod event at large (BENCHMARKS.md, session 36).
    fanout: watch::Sender<u64>,
    relay: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// When the last change was applied (for `pilot_proxy_convergence_time`).
    changed_at: std::sync::Mutex<Option<std::time::Instant>>,
    /// Each Pod's locality ((namespace, name) → `region/zone/subzone`), as the engine last
    /// computed it: where a connecting proxy of that Pod that tells no locality is placed.
    pod_localities: RwLock<HashMap<(String, String), String>>,
}

impl Cache {
    /// A cache that is not ready until each of `sources` has reported its initial sync.
    pub fn new(sources: impl IntoIterator<Item = String>) -> Arc<Cache> {
        let state = State {
            pending_sources: sources.into_iter().collect(),
            // Reserved whole, so that the log never grows by copying itself on the engine's
            // thread (a doubling at 64 Ki entries took ~2% of the engine's CPU in a 20 s
            // profile at 50 events/s). The pages are the OS's until entries are written.
            log: VecDeque::with_capacity(LOG_CAPACITY),
            ..Default::default()
        };
        Arc::new(Cache {
            state: RwLock::new(state),
            notify: watch::channel(0).0,
            fanout: watch::channel(0).0,
            relay: Default::default(),
            changed_at: Default::default(),
            pod_localities: Default::default(),
        })
    }

    /// The locality of the Pod `namespace/name` (its `topology.istio.io/locality` label, else
    /// its Node's topology labels), if the engine knows one: istiod places a proxy by its
    /// Pod's registry labels before what the proxy reports.
    pub fn pod_locality(&self, namespace: &str, name: &str) -> Option<String> {
        let map = self.pod_localities.read().unwrap_or_else(|e| e.into_inner());
        map.get(&(namespace.to_string(), name.to_string())).cloned()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies one logical time's changes atomically. Changes that leave a resource's content
    /// as it was are dropped.
    pub fn apply(&self, delta: &ResourceDelta) -> usize {
        self.apply_observed(delta, &mut ())
    }

    /// [`Cache::apply`], telling `observer` of each change that changed the cache and, before
    /// any stream is woken, of the sequence number the delta got.
    pub fn apply_observed(&self, delta: &ResourceDelta, observer: &mut impl ApplyObserver) -> usize {
        if !delta.pod_localities.is_empty() {
            let mut map = self.pod_localities.write().unwrap_or_else(|e| e.into_inner());
            for (pod, locality) in &delta.pod_localities {
                match locality {
                    Some(l) => map.insert(pod.clone(), l.clone()),
                    None => map.remove(pod),
                };
            }
        }
        let mut state = self.write();
        let seq = state.seq + 1;
        let mut applied = 0;
        for (diagnostic, present) in &delta.diagnostics {
            if *present {
                if state.diagnostics.insert(diagnostic.clone()) {
                    tracing::warn!(object = %diagnostic.object, field = %diagnostic.field, "{}", diagnostic.message);
                }
            } else {
                state.diagnostics.remove(diagnostic);
            }
        }
        for change in &delta.changes {
            let changed = match &change.body {
                Some(body) => {
                    let map = &mut state.resources.entry(change.scope.clone()).or_default()[slot(change.ty)];
                    let version = content_version(body);
                    // (One search of the map: the engine's changes are nearly all new content.)
                    use std::collections::btree_map::Entry;
                    match map.entry(change.name.clone()) {
                        Entry::Occupied(held) if held.get().version == version => false,
                        slot => {
                            observer.changed(change, Some(&version));
                            let r = Arc::new(Resource::new(change.name.as_str().into(), version, body.clone()));
                            match slot {
                                Entry::Occupied(mut held) => {
                                    held.insert(r);
                                }
                                Entry::Vacant(place) => {
                                    place.insert(r);
                                }
                            }
                            true
                        }
                    }
                }
                None => {
                    let Some(slots) = state.resources.get_mut(&change.scope) else { continue };
                    let removed = slots[slot(change.ty)].remove(&change.name).is_some();
                    if slots.iter().all(BTreeMap::is_empty) {
                        state.resources.remove(&change.scope);
                    }
                    if removed {
                        observer.changed(change, None);
                    }
                    removed
                }
            };
            if changed {
                state.log.push_back((seq, change.scope.clone(), change.ty, change.name.clone()));
                applied += 1;
            }
        }
        if applied > 0 {
            state.seq = seq;
            while state.log.len() > LOG_CAPACITY {
                if let Some((s, _, _, _)) = state.log.pop_front() {
                    state.log_floor = s;
                }
            }
            drop(state);
            *self.changed_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(std::time::Instant::now());
            observer.applied(seq);
            self.notify.send_replace(seq);
        }
        applied
    }

    /// When the last change was applied; None before the first.
    pub fn last_change(&self) -> Option<std::time::Instant> {
        *self.changed_at.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What is wrong with the current input, by object and field (see [`Diagnostic`]).
    pub fn diagnostics(&self) -> Vec<Diagnostic> {
        self.read().diagnostics.iter().cloned().collect()
    }

    /// The engine's sink for this cache: deltas are applied, source syncs recorded.
    pub fn engine_sink(self: &Arc<Self>) -> impl FnMut(EngineOutput) + Send + 'static {
        let cache = self.clone();
        move |output| match output {
            EngineOutput::Delta(delta) => {
                let applied = cache.apply(&delta);
                if applied > 0 {
                    tracing::debug!(time = delta.time, changes = applied, "configuration changed");
                }
            }
            EngineOutput::Synced(source) => cache.source_synced(&source),
        }
    }

    /// Marks a source as having delivered its initial state.
    pub fn source_synced(&self, source: &str) {
        let mut state = self.write();
        if state.pending_sources.remove(source) && state.pending_sources.is_empty() {
            state.seq += 1;
            let seq = state.seq;
            let count = |ty: ResourceType| -> usize { state.resources.values().map(|s| s[slot(ty)].len()).sum() };
            let (clusters, assignments, listeners, route_configs, secrets) = (
                count(ResourceType::Cluster),
                count(ResourceType::ClusterLoadAssignment),
                count(ResourceType::Listener),
                count(ResourceType::RouteConfiguration),
                count(ResourceType::Secret),
            );
            let scopes = state.resources.len();
            let diagnostics = state.diagnostics.len();
            drop(state);
            tracing::info!(
                clusters,
                listeners,
                route_configs,
                assignments,
                secrets,
                scopes,
                diagnostics,
                "every source has synced: serving configuration"
            );
            self.notify.send_replace(seq);
        }
    }

    /// Ready once every source has synced: nothing is served before, so a proxy never gets
    /// an empty first push that would delete its working config.
    pub fn is_ready(&self) -> bool {
        self.read().pending_sources.is_empty()
    }

    pub fn pending_sources(&self) -> Vec<String> {
        self.read().pending_sources.iter().cloned().collect()
    }

    /// A receiver that sees each change applied. On a Tokio runtime it is woken by the
    /// cache's relay task on that runtime (started by the first subscriber there, and again if
    /// its runtime is gone); elsewhere by the thread that applies the change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return self.notify.subscribe() };
        let mut relay = self.relay.lock().unwrap_or_else(|e| e.into_inner());
        if relay.as_ref().is_none_or(|r| r.is_finished()) {
            let (mut from, to) = (self.notify.subscribe(), self.fanout.clone());
            // (What was sent before it started: none is missed.)
            to.send_replace(*from.borrow_and_update());
            // It ends when the cache goes (and `notify` with it).
            *relay = Some(runtime.spawn(async move {
                while from.changed().await.is_ok() {
                    let seq = *from.borrow_and_update();
                    to.send_replace(seq);
                }
            }));
        }
        self.fanout.subscribe()
    }

    pub fn seq(&self) -> u64 {
        self.read().seq
    }

    /// The resource of this type and name as a proxy with `view` sees it.
    pub fn get(&self, view: &View, ty: ResourceType, name: &str) -> Option<Arc<Resource>> {
        self.read().get(view, ty, name).cloned()
    }

    /// The resource of one scope.
    pub fn get_scoped(&self, scope: &Scope, ty: ResourceType, name: &str) -> Option<Arc<Resource>> {
        self.read().resources.get(scope)?[slot(ty)].get(name).cloned()
    }

    /// The names of a type a proxy with `view` sees.
    pub fn names(&self, view: &View, ty: ResourceType) -> Vec<String> {
        let state = self.read();
        let mut names: BTreeSet<&String> = BTreeSet::new();
        for scope in view.scopes.iter() {
            if let Some(slots) = state.resources.get(scope) {
                names.extend(slots[slot(ty)].keys());
            }
        }
        names.into_iter().cloned().collect()
    }

    /// How many resources of a type are held, over every scope.
    pub fn len(&self, ty: ResourceType) -> usize {
        self.read().resources.values().map(|slots| slots[slot(ty)].len()).sum()
    }

    /// The scopes that hold resources.
    pub fn scopes(&self) -> Vec<Scope> {
        let mut scopes: Vec<Scope> = self.read().resources.keys().cloned().collect();
        scopes.sort();
        scopes
    }

    /// Every resource by scope, for debugging and tests.
    pub fn snapshot(&self) -> BTreeMap<(Scope, ResourceType, String), Arc<Resource>> {
        let state = self.read();
        let mut out = BTreeMap::new();
        for (scope, slots) in &state.resources {
            for ty in ResourceType::ALL {
                for (name, r) in &slots[slot(ty)] {
                    out.insert((scope.clone(), ty, name.clone()), r.clone());
                }
            }
        }
        out
    }

    /// The current sequence number and the names changed after `since` that `view` sees.
    pub fn changed_since(&self, since: u64, view: &View) -> (u64, Changed) {
        let state = self.read();
        if since < state.log_floor {
            return (state.seq, None);
        }
        let start = state.log.partition_point(|(s, _, _, _)| *s <= since);
        let names = state
            .log
            .range(start..)
            .filter(|(_, scope, _, _)| view.sees(scope))
            .map(|(_, _, ty, name)| (*ty, name.clone()))
            .collect();
        (state.seq, Some(names))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// A version is the body's xxh3 as sixteen lowercase hex digits, leading zeros kept.
        #[test]
        fn a_version_is_the_bodys_hash_in_hex(body in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            proptest::prop_assert_eq!(content_version(&body), format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&body)));
        }
    }

    #[test]
    fn a_version_keeps_its_leading_zeros() {
        // (A body whose hash starts with a zero nibble: found by search, checked here.)
        let body = (0u32..).map(|i| i.to_le_bytes()).find(|b| xxhash_rust::xxh3::xxh3_64(b) >> 60 == 0).unwrap();
        let version = content_version(&body);
        assert_eq!(version.len(), 16);
        assert!(version.starts_with('0'), "{version}");
    }
    use crate::engine::ResourceChange;

    #[test]
    fn streams_on_a_runtime_hear_each_change_through_the_relay_even_on_a_later_runtime() {
        let cache = Cache::new([]);
        for round in 0..2 {
            // A server's runtime; the second starts after the first (and its relay) is gone.
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
            let (mut a, mut b) = rt.block_on(async { (cache.subscribe(), cache.subscribe()) });
            // Applied off the runtime, as the engine's thread applies.
            let name = format!("c{round}");
            let applier = cache.clone();
            std::thread::spawn(move || applier.apply(&delta(&[(ResourceType::Cluster, &name, Some(b"1"))])))
                .join()
                .unwrap();
            for rx in [&mut a, &mut b] {
                let heard =
                    rt.block_on(async { tokio::time::timeout(std::time::Duration::from_secs(10), rx.changed()).await });
                assert!(matches!(heard, Ok(Ok(()))), "round {round}: a stream was not woken: {heard:?}");
                assert_eq!(*rx.borrow_and_update(), cache.seq(), "round {round}");
            }
            drop(rt);
        }
    }

    fn delta(changes: &[(ResourceType, &str, Option<&[u8]>)]) -> ResourceDelta {
        ResourceDelta {
            diagnostics: Vec::new(),
            pod_localities: Vec::new(),
            time: 0,
            changes: changes
                .iter()
                .map(|(ty, name, body)| ResourceChange {
                    scope: Scope::All,
                    ty: *ty,
                    name: name.to_string(),
                    body: body.map(Arc::from),
                })
                .collect(),
        }
    }

    #[test]
    fn rewriting_a_resource_with_the_same_bytes_is_not_a_change() {
        let cache = Cache::new([]);
        assert_eq!(cache.apply(&delta(&[(ResourceType::Cluster, "a", Some(b"x"))])), 1);
        let seq = cache.seq();
        assert_eq!(cache.apply(&delta(&[(ResourceType::Cluster, "a", Some(b"x"))])), 0);
        assert_eq!(cache.seq(), seq);
        assert_eq!(cache.changed_since(seq, &View::sidecar()), (seq, Some(vec![])));
    }

    /// The observer hears each change that changed the cache, with its version, then the
    /// delta's sequence number while no stream has been told yet.
    #[test]
    fn an_observer_hears_what_changed_and_the_sequence_number_before_streams_do() {
        struct Heard {
            changes: Vec<(String, Option<String>)>,
            applied: Vec<(u64, bool)>,
            streams: watch::Receiver<u64>,
        }
        impl ApplyObserver for Heard {
            fn changed(&mut self, change: &ResourceChange, version: Option<&str>) {
                self.changes.push((change.name.clone(), version.map(str::to_string)));
            }
            fn applied(&mut self, seq: u64) {
                self.applied.push((seq, self.streams.has_changed().unwrap()));
            }
        }
        let cache = Cache::new([]);
        cache
            .apply(&delta(&[(ResourceType::Cluster, "kept", Some(b"1")), (ResourceType::Cluster, "gone", Some(b"2"))]));
        let mut heard = Heard { changes: Vec::new(), applied: Vec::new(), streams: cache.subscribe() };
        let changes = delta(&[
            (ResourceType::Cluster, "kept", Some(b"1")),
            (ResourceType::Cluster, "gone", None),
            (ResourceType::Cluster, "never", None),
            (ResourceType::Cluster, "new", Some(b"3")),
        ]);
        assert_eq!(cache.apply_observed(&changes, &mut heard), 2);
        assert_eq!(heard.changes, [("gone".to_string(), None), ("new".to_string(), Some(content_version(b"3")))]);
        assert_eq!(heard.applied, [(cache.seq(), false)], "told before the streams");
        assert!(heard.streams.has_changed().unwrap());
        // Nothing changed: nothing heard.
        assert_eq!(cache.apply_observed(&changes, &mut heard), 0);
        assert_eq!((heard.changes.len(), heard.applied.len()), (2, 1));
    }

    #[test]
    fn changed_since_lists_only_later_changes_in_order() {
        let cache = Cache::new([]);
        cache.apply(&delta(&[(ResourceType::Cluster, "a", Some(b"1"))]));
        let after_first = cache.seq();
        cache.apply(&delta(&[(ResourceType::Listener, "l", Some(b"2")), (ResourceType::Cluster, "a", None)]));
        let (seq, changed) = cache.changed_since(after_first, &View::sidecar());
        assert_eq!(seq, after_first + 1);
        assert_eq!(
            changed.unwrap(),
            vec![(ResourceType::Listener, "l".to_string()), (ResourceType::Cluster, "a".to_string())]
        );
        assert!(cache.get(&View::sidecar(), ResourceType::Cluster, "a").is_none());
    }

    #[test]
    fn versions_are_content_hashes_and_survive_a_new_cache() {
        let (a, b) = (Cache::new([]), Cache::new([]));
        a.apply(&delta(&[(ResourceType::Cluster, "c", Some(b"same"))]));
        b.apply(&delta(&[(ResourceType::Cluster, "c", Some(b"same"))]));
        assert_eq!(
            a.get_scoped(&Scope::All, ResourceType::Cluster, "c").unwrap().version,
            b.get_scoped(&Scope::All, ResourceType::Cluster, "c").unwrap().version
        );
    }

    #[test]
    fn cache_is_ready_only_after_every_source_synced() {
        let cache = Cache::new(["files".to_string(), "kubernetes".to_string()]);
        assert!(!cache.is_ready());
        cache.source_synced("files");
        assert!(!cache.is_ready());
        assert_eq!(cache.pending_sources(), vec!["kubernetes".to_string()]);
        cache.source_synced("kubernetes");
        assert!(cache.is_ready());
    }

    #[test]
    fn a_view_sees_its_class_then_its_kind_then_the_shared_scope() {
        let cache = Cache::new([]);
        let class = Scope::Class("router/istio-system/istio=ingressgateway".into());
        let change = |scope: &Scope, ty, name: &str, body: Option<&[u8]>| ResourceChange {
            scope: scope.clone(),
            ty,
            name: name.to_string(),
            body: body.map(Arc::from),
        };
        let before = cache.seq();
        cache.apply(&ResourceDelta {
            time: 0,
            diagnostics: vec![],
            pod_localities: Vec::new(),
            changes: vec![
                change(&Scope::All, ResourceType::Cluster, "c", Some(b"c")),
                change(&Scope::Sidecars, ResourceType::Listener, "0.0.0.0_9080", Some(b"sidecar")),
                change(&class, ResourceType::Listener, "0.0.0.0_8080", Some(b"gateway")),
                change(&class, ResourceType::Cluster, "c", Some(b"class c")),
            ],
        });
        let sidecar = View::sidecar();
        let gateway = View::new(ProxyKind::Router, Some("router/istio-system/istio=ingressgateway".into()));
        let other_gateway = View::new(ProxyKind::Router, Some("router/other/istio=egress".into()));
        assert_eq!(cache.names(&sidecar, ResourceType::Listener), ["0.0.0.0_9080"]);
        assert_eq!(cache.names(&gateway, ResourceType::Listener), ["0.0.0.0_8080"]);
        assert!(cache.names(&other_gateway, ResourceType::Listener).is_empty());
        // The class's resource hides the shared one of the same name, for that class only.
        assert_eq!(&*cache.get(&gateway, ResourceType::Cluster, "c").unwrap().body, b"class c");
        assert_eq!(&*cache.get(&sidecar, ResourceType::Cluster, "c").unwrap().body, b"c");
        let (_, changed) = cache.changed_since(before, &other_gateway);
        assert_eq!(changed.unwrap(), vec![(ResourceType::Cluster, "c".to_string())]);
        let (_, changed) = cache.changed_since(before, &gateway);
        assert_eq!(changed.unwrap().len(), 3);
        // A scope that empties goes away.
        cache.apply(&ResourceDelta {
            time: 1,
            diagnostics: vec![],
            pod_localities: Vec::new(),
            changes: vec![
                change(&class, ResourceType::Listener, "0.0.0.0_8080", None),
                change(&class, ResourceType::Cluster, "c", None),
            ],
        });
        assert_eq!(cache.scopes(), [Scope::All, Scope::Sidecars]);
        assert_eq!(&*cache.get(&gateway, ResourceType::Cluster, "c").unwrap().body, b"c");
    }

    #[test]
    fn a_namespace_scope_hides_the_shared_names_for_its_proxies_only() {
        let cache = Cache::new([]);
        let shop = Scope::Namespace("shop".into());
        let change = |scope: &Scope, name: &str, body: Option<&[u8]>| ResourceChange {
            scope: scope.clone(),
            ty: ResourceType::RouteConfiguration,
            name: name.to_string(),
            body: body.map(Arc::from),
        };
        let apply =
            |changes| cache.apply(&ResourceDelta { time: 0, diagnostics: vec![], changes, pod_localities: vec![] });
        apply(vec![change(&Scope::Sidecars, "9080", Some(b"shared")), change(&shop, "9080", Some(b"shop's"))]);
        let in_shop = View::sidecar().in_namespace("shop");
        let elsewhere = View::sidecar().in_namespace("default");
        let gateway_in_shop = View::new(ProxyKind::Router, Some("router/shop/app=gw".into())).in_namespace("shop");
        let body = |view: &View| cache.get(view, ResourceType::RouteConfiguration, "9080").map(|r| r.body.to_vec());
        assert_eq!(body(&in_shop).as_deref(), Some(&b"shop's"[..]));
        assert_eq!(body(&elsewhere).as_deref(), Some(&b"shared"[..]));
        // A namespace's resources are its gateways' too (the clusters of its own rules apply to them).
        assert_eq!(body(&gateway_in_shop).as_deref(), Some(&b"shop's"[..]));
        // Gone from the namespace, the shared one shows through again, and it is a change there.
        let before = cache.seq();
        apply(vec![change(&shop, "9080", None)]);
        assert_eq!(body(&in_shop).as_deref(), Some(&b"shared"[..]));
        let (_, changed) = cache.changed_since(before, &in_shop);
        assert_eq!(changed.unwrap(), [(ResourceType::RouteConfiguration, "9080".to_string())]);
        assert_eq!(cache.changed_since(before, &elsewhere).1.unwrap(), []);
    }

    #[test]
    fn a_located_view_reads_its_localitys_assignments_before_the_shared_ones() {
        let app = crate::model::k8s::Labels::from([("app".to_string(), "a".to_string())]);
        let none = crate::model::k8s::Labels::new();
        let view =
            View::new(ProxyKind::Sidecar, Some("sidecar/shop/app=a".into())).in_namespace("shop").located("r/z", &app);
        assert_eq!(
            view.scopes(),
            [
                Scope::Class("sidecar/shop/app=a".into()),
                Scope::PrioritizedIn("r/z".into(), "app=a".into(), "shop".into()),
                Scope::LocalityIn("r/z".into(), "shop".into()),
                Scope::SidecarsIn("shop".into()),
                Scope::Namespace("shop".into()),
                Scope::Sidecars,
                Scope::Prioritized("r/z".into(), "app=a".into()),
                Scope::Locality("r/z".into()),
                Scope::All,
            ]
        );
        let cache = Cache::new([]);
        let change = |scope: Scope, body: Option<&[u8]>| ResourceChange {
            scope,
            ty: ResourceType::ClusterLoadAssignment,
            name: "c".into(),
            body: body.map(Arc::from),
        };
        let apply =
            |changes| cache.apply(&ResourceDelta { time: 0, diagnostics: vec![], changes, pod_localities: vec![] });
        apply(vec![change(Scope::All, Some(b"shared")), change(Scope::Locality("r/z".into()), Some(b"located"))]);
        let body = |view: &View| cache.get(view, ResourceType::ClusterLoadAssignment, "c").map(|r| r.body.to_vec());
        assert_eq!(body(&view).as_deref(), Some(&b"located"[..]));
        assert_eq!(body(&View::sidecar().in_namespace("shop").located("r/y", &none)).as_deref(), Some(&b"shared"[..]));
        // A namespace's own (unlocated) assignment hides the default context's located one.
        apply(vec![change(Scope::Namespace("shop".into()), Some(b"shop's"))]);
        assert_eq!(body(&view).as_deref(), Some(&b"shop's"[..]));
        apply(vec![change(Scope::LocalityIn("r/z".into(), "shop".into()), Some(b"shop's located"))]);
        assert_eq!(body(&view).as_deref(), Some(&b"shop's located"[..]));
        // failoverPriority assignments: per (locality, labels); another label set does not see
        // them.
        apply(vec![change(Scope::PrioritizedIn("r/z".into(), "app=a".into(), "shop".into()), Some(b"by labels"))]);
        assert_eq!(body(&view).as_deref(), Some(&b"by labels"[..]));
        let other = View::sidecar().in_namespace("shop").located("r/z", &none);
        assert_eq!(body(&other).as_deref(), Some(&b"shop's located"[..]));
        // Proxyless clients are served the default context, relative to their locality.
        let grpc = View::new(ProxyKind::Proxyless, None).in_namespace("shop").located("r/z", &none);
        assert_eq!(
            grpc.scopes(),
            [
                Scope::Proxyless,
                Scope::Prioritized("r/z".into(), String::new()),
                Scope::Locality("r/z".into()),
                Scope::All
            ]
        );
        assert_eq!(body(&grpc).as_deref(), Some(&b"located"[..]));
    }
}
