//! The state of one delta (incremental) ADS stream, kept apart from the network so it can be
//! driven and tested directly.
//!
//! Per resource type the stream tracks what the client subscribed to (wildcard or names),
//! which version of each resource the client holds, which versions it rejected, and which
//! responses await an ACK. On a request it answers what the (un)subscription changed; on a
//! cache change it answers what changed among the resources the client cares about. Additions
//! go out in dependency order (CDS, EDS, LDS, RDS) and removals after, in reverse order: make
//! before break.

use std::collections::{HashSet, VecDeque};

/// The sets a response is built with: foldhash, not SipHash (names are hashed per stream per
/// change: on a fan-out to 5,000 streams, SipHash showed in the profile).
type FastSet<T> = HashSet<T, foldhash::fast::RandomState>;
use std::net::IpAddr;
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use envoy_types::pb::google::protobuf::Any;

use super::held::{Held, Snapshot};
use super::wire::DeltaResponse;
use crate::cache::{Cache, Rendered, Resource, Variant, View, version_tag};
use crate::translate::{self, ResourceType};

/// What became of a response the client answered.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    Ack {
        ty: ResourceType,
        nonce: String,
        /// The cache sequence number the ACKed response was built at: the client now holds
        /// every change up to it (of this type, in what it subscribed to).
        seq: u64,
    },
    Nack {
        ty: ResourceType,
        nonce: String,
        names: Vec<String>,
        message: String,
    },
    /// A nonce this stream did not send or already had answered: ignored.
    Stale {
        nonce: String,
    },
    /// A request with no nonce: a (un)subscription.
    Subscription,
}

#[derive(Default)]
struct TypeState {
    /// The client has sent at least one request for this type.
    started: bool,
    wildcard: bool,
    /// Names subscribed to (besides the wildcard; the tag is always 0), sharing the cache's
    /// name allocations, and shared as a [`Held`] snapshot with every stream that subscribed to
    /// the same names: the proxies of a class subscribe alike (each sidecar's EDS subscription
    /// names every cluster). A stream of its own kept 16 bytes per name (5 KB for a `small`
    /// sidecar's 325 assignments) and, 5,000 streams apart in memory, every `wants` on a fan-out
    /// missed the CPU cache.
    names: Held,
    /// Versions the client holds, as far as this stream knows (by [`version_tag`]).
    known: Held,
    /// Versions the client rejected: never sent again until the resource changes. (Boxed, and
    /// None while there is none: most streams never NACK, and every idle stream keeps this
    /// for each type: 24 bytes each.)
    nacked: Option<Box<Held>>,
    /// Names subscribed by name and not yet answered: one that does not exist is sent in
    /// `removed_resources`, so the client stops waiting for it (the protocol's "knowing when
    /// a requested resource does not exist", incremental variant). Boxed and None while
    /// empty, as `nacked`.
    unanswered: Option<Box<FastSet<String>>>,
}

impl TypeState {
    fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    /// The version of `name` the client rejected, if any.
    fn rejected(&self, name: &str) -> Option<u64> {
        self.nacked.as_ref().and_then(|n| n.get(name))
    }

    /// Records versions the client rejected, or (None) forgets rejections.
    fn reject(&mut self, updates: impl Iterator<Item = super::held::Change>) {
        let nacked = self.nacked.get_or_insert_with(Default::default);
        nacked.apply(updates);
        if !nacked.any() {
            self.nacked = None;
        }
    }

    fn unanswered(&self) -> impl Iterator<Item = &String> {
        self.unanswered.iter().flat_map(|names| names.iter())
    }

    fn is_unanswered(&self, name: &str) -> bool {
        self.unanswered.as_ref().is_some_and(|names| names.contains(name))
    }

    fn await_answer(&mut self, name: &str) {
        self.unanswered.get_or_insert_with(Default::default).insert(name.to_string());
    }

    /// `name` was answered (sent or removed) or unsubscribed; the set goes when it empties.
    fn answered(&mut self, name: &str) {
        if let Some(names) = &mut self.unanswered {
            names.remove(name);
            if names.is_empty() {
                self.unanswered = None;
            }
        }
    }
}

/// A version a response carried: name, tag, and the tag the client held before, if any.
type Sent = (Arc<str>, u64, Option<u64>);

/// A response awaiting ACK: which versions it carried.
struct Pending {
    ty: ResourceType,
    sent: Arc<[Sent]>,
    /// The cache sequence number the response was built at.
    seq: u64,
}

pub struct DeltaStream {
    /// The node id, for logs (shared with the stream's `/debug/syncz` record).
    pub node: Arc<str>,
    /// Listeners bind here instead of 0.0.0.0 (node metadata `MESHFLOW_BIND_ADDRESS`).
    bind: Option<IpAddr>,
    /// What this proxy sees of the cache (its class, its kind, the shared resources).
    view: View,
    types: [TypeState; ResourceType::ALL.len()],
    /// Responses awaiting ACK, by nonce (this stream's nonces are increasing numbers), oldest
    /// first.
    pending: VecDeque<(u64, Pending)>,
    next_nonce: u64,
    /// The cache sequence number this stream has caught up with.
    seen: u64,
    /// Listeners left out for this proxy because another one binds their address (logged once).
    dropped: HashSet<String>,
    /// Where streams of the same server share the batches they build for a cache change, and
    /// this stream's view as the memo interned it (see [`ChangeMemo::join`]).
    memo: Option<(Arc<ChangeMemo>, Arc<Alike>)>,
}

impl Drop for DeltaStream {
    fn drop(&mut self) {
        if let Some((memo, alike)) = self.memo.take() {
            memo.leave(alike);
        }
    }
}

/// One view, interned: every open stream of the view holds the same `Alike`, so the memo's
/// key names the view by address (comparing views, a `Vec` of scopes, was 3.8% of a fan-out's
/// server CPU).
struct Alike {
    view: View,
    /// Open streams of the view.
    streams: std::sync::atomic::AtomicUsize,
}

/// One response of a batch before its nonce: what every stream in the same state sends.
#[derive(Clone)]
struct Built {
    ty: ResourceType,
    resources: Vec<Arc<Rendered>>,
    removed: Vec<String>,
    sent: Arc<[Sent]>,
}

/// What one stream's state is, as far as the responses to a cache change depend on it: the
/// change's range of sequence numbers, the view, and per type whether it started, whether it
/// is a wildcard, and the subscribed and held snapshots (by address: settled stores with the
/// same snapshot hold the same, see [`Held::settled`]).
#[derive(Clone, PartialEq, Eq, Hash)]
struct MemoKey {
    seen: u64,
    seq: u64,
    /// The interned view's address.
    view: usize,
    types: [(bool, bool, usize, usize); ResourceType::ALL.len()],
}

/// The batch a stream built for a cache change, and what its client holds after it.
struct Outcome {
    /// The view and the snapshots the key names by address, kept so no other allocation
    /// takes the address while the entry lives.
    _view: Arc<Alike>,
    _pins: Vec<Snapshot>,
    built: Vec<Built>,
    known_after: Vec<Snapshot>,
}

/// Batches built for the latest cache change, shared by the streams of one server: every
/// stream of a class is in the same state when a change comes (it subscribed alike and holds
/// the same snapshot), so the first to wake builds the batch (reads the change log, looks each
/// changed name up, renders, compares versions, folds them into a new snapshot) and the others
/// take it, adding only their nonces. On a fan-out to 5,000 streams this was a third of the
/// server's work per stream. A stream whose state is not settled (a NACK outstanding, a name
/// subscribed and not yet answered, its own bind address) builds its own.
#[derive(Default)]
pub struct ChangeMemo {
    inner: std::sync::Mutex<MemoInner>,
    /// The views of open streams: a stream whose view no other stream has (a proxy sending
    /// no labels is a class of its own) neither looks up nor stores batches.
    views: std::sync::Mutex<std::collections::HashMap<View, Arc<Alike>, foldhash::fast::RandomState>>,
    /// Batches taken from the memo instead of built.
    hits: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct MemoInner {
    /// The change the entries are for: older ones are dropped when a newer change comes.
    seq: u64,
    map: std::collections::HashMap<MemoKey, Arc<Outcome>, foldhash::fast::RandomState>,
}

impl ChangeMemo {
    fn lock(&self) -> std::sync::MutexGuard<'_, MemoInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, key: &MemoKey) -> Option<Arc<Outcome>> {
        let found = self.lock().map.get(key).cloned();
        if found.is_some() {
            self.hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            crate::metrics::global().batches_shared.inc();
        }
        found
    }

    /// Counts a stream of `view` in: the view interned, shared by every stream of the view.
    fn join(&self, view: &View) -> Arc<Alike> {
        let mut views = self.views.lock().unwrap_or_else(|e| e.into_inner());
        let alike = views
            .entry(view.clone())
            .or_insert_with(|| Arc::new(Alike { view: view.clone(), streams: Default::default() }))
            .clone();
        alike.streams.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        alike
    }

    fn leave(&self, alike: Arc<Alike>) {
        let mut views = self.views.lock().unwrap_or_else(|e| e.into_inner());
        if alike.streams.fetch_sub(1, std::sync::atomic::Ordering::Relaxed) == 1 {
            views.remove(&alike.view);
        }
    }

    /// Batches streams took from the memo instead of building them.
    pub fn hits(&self) -> u64 {
        self.hits.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn put(&self, key: MemoKey, outcome: Outcome) {
        let mut inner = self.lock();
        if key.seq > inner.seq {
            inner.map.clear();
            inner.seq = key.seq;
        }
        if key.seq == inner.seq {
            inner.map.entry(key).or_insert_with(|| Arc::new(outcome));
        }
    }

    /// Entries kept (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().map.len()
    }
}

impl DeltaStream {
    /// What this proxy sees of the cache.
    pub fn view(&self) -> &View {
        &self.view
    }

    pub fn new(node: Arc<str>, bind: Option<IpAddr>, view: View) -> DeltaStream {
        DeltaStream {
            node,
            bind,
            view,
            types: Default::default(),
            pending: VecDeque::new(),
            next_nonce: 0,
            seen: 0,
            dropped: HashSet::new(),
            memo: None,
        }
    }

    /// The same stream, sharing the batches it builds for cache changes through `memo` (one
    /// per server: the key's sequence numbers are its cache's).
    pub fn with_memo(mut self, memo: Arc<ChangeMemo>) -> DeltaStream {
        let alike = memo.join(&self.view);
        // The interned view: one allocation for every stream of the view.
        self.view = alike.view.clone();
        self.memo = Some((memo, alike));
        self
    }

    /// The memo key of this stream's state for a change up to `seq`; None when the state is
    /// not one streams share (see [`ChangeMemo`]).
    fn memo_key(&self, seq: u64) -> Option<MemoKey> {
        let (_, alike) = self.memo.as_ref()?;
        if alike.streams.load(std::sync::atomic::Ordering::Relaxed) < 2 || self.bind.is_some() {
            return None;
        }
        let mut types = [(false, false, 0, 0); ResourceType::ALL.len()];
        for (st, key) in self.types.iter().zip(types.iter_mut()) {
            if st.nacked.is_some() || st.unanswered.is_some() {
                return None;
            }
            let (names, known) = (st.names.settled()?, st.known.settled()?);
            *key = (st.started, st.wildcard, Arc::as_ptr(names) as usize, Arc::as_ptr(known) as usize);
        }
        Some(MemoKey { seen: self.seen, seq, view: Arc::as_ptr(alike) as usize, types })
    }

    /// The snapshots a memo key names by address (see [`Outcome`]); taken only when the stream
    /// stores a batch, not on every lookup.
    fn memo_pins(&self) -> Vec<Snapshot> {
        let settled = |h: &Held| h.settled().cloned();
        self.types.iter().flat_map(|st| [settled(&st.names), settled(&st.known)]).flatten().collect()
    }

    fn state(&mut self, ty: ResourceType) -> &mut TypeState {
        &mut self.types[ty as usize]
    }

    /// Handles one request. Returns what it answered and, when the cache is ready, the
    /// responses it calls for.
    pub fn on_request(
        &mut self,
        req: &DeltaDiscoveryRequest,
        cache: &Cache,
    ) -> Result<(Answer, Vec<DeltaResponse>), tonic::Status> {
        let ty = ResourceType::from_type_url(&req.type_url)
            .ok_or_else(|| tonic::Status::invalid_argument(format!("unsupported type_url {:?}", req.type_url)))?;
        let answer = if req.response_nonce.is_empty() {
            Answer::Subscription
        } else {
            self.answer(ty, &req.response_nonce, req.error_detail.as_ref().map(|s| s.message.clone()))
        };

        let first = !self.state(ty).started;
        let mut touched: FastSet<String> = FastSet::default();
        {
            let st = &mut self.types[ty as usize];
            st.started = true;
            if first {
                // Envoy's first request for a wildcard type subscribes to nothing in particular
                // (legacy wildcard); `*` is the explicit form.
                st.wildcard = ty.is_wildcard_type() && req.resource_names_subscribe.is_empty();
                st.known.apply(
                    req.initial_resource_versions
                        .iter()
                        .map(|(name, version)| (intern(cache, &self.view, ty, name), Some(version_tag(version)))),
                );
                touched.extend(req.initial_resource_versions.keys().cloned());
            }
            let mut subscribed = Vec::new();
            for name in &req.resource_names_subscribe {
                if name == "*" {
                    st.wildcard = true;
                } else {
                    subscribed.push((intern(cache, &self.view, ty, name), Some(0)));
                    st.await_answer(name);
                }
                touched.insert(name.clone());
            }
            st.names.apply(subscribed);
            for name in &req.resource_names_unsubscribe {
                if name == "*" {
                    st.wildcard = false;
                } else {
                    st.names.remove(name);
                    st.answered(name);
                    // The client forgets what it unsubscribed from.
                    if !st.wildcard {
                        st.known.remove(name);
                    }
                }
            }
            st.names.settle();
        }
        if !cache.is_ready() {
            return Ok((answer, Vec::new()));
        }
        let all = first && self.state(ty).wildcard || touched.contains("*");
        let candidates: Vec<String> = if all {
            let mut names: FastSet<String> = cache.names(&self.view, ty).into_iter().collect();
            let st = self.state(ty);
            names.extend(st.known.names().map(str::to_string));
            names.extend(st.unanswered().cloned());
            names.into_iter().collect()
        } else {
            touched.into_iter().filter(|n| n != "*").collect()
        };
        // Read before the resources: what is built holds at least every change up to it.
        let seq = cache.seq();
        let responses = self.respond(cache, seq, &[(ty, candidates)]);
        Ok((answer, responses))
    }

    fn answer(&mut self, ty: ResourceType, nonce: &str, error: Option<String>) -> Answer {
        let at = parse_nonce(nonce).and_then(|n| self.pending.binary_search_by_key(&n, |(n, _)| *n).ok());
        let Some((_, pending)) = at.and_then(|i| self.pending.remove(i)).filter(|(_, p)| p.ty == ty) else {
            return Answer::Stale { nonce: nonce.to_string() };
        };
        let Some(message) = error else {
            return Answer::Ack { ty, nonce: nonce.to_string(), seq: pending.seq };
        };
        let st = self.state(ty);
        let mut names = Vec::new();
        // The client kept what it had before this response.
        st.known.apply(pending.sent.iter().map(|(name, _, before)| (name.clone(), *before)));
        st.reject(pending.sent.iter().map(|(name, tag, _)| (name.clone(), Some(*tag))));
        for (name, _, _) in pending.sent.iter() {
            names.push(name.to_string());
        }
        names.sort();
        Answer::Nack { ty, nonce: nonce.to_string(), names, message }
    }

    /// Catches up with the cache: responses for everything that changed since the last call
    /// among what the client subscribed to. Nothing before the cache is ready.
    pub fn on_cache_change(&mut self, cache: &Cache) -> Vec<DeltaResponse> {
        if !cache.is_ready() {
            return Vec::new();
        }
        let key = self.memo_key(cache.seq());
        if let (Some((memo, _)), Some(key)) = (&self.memo, &key)
            && let Some(outcome) = memo.get(key)
        {
            for (st, known) in self.types.iter_mut().zip(&outcome.known_after) {
                st.known.reset_to(known.clone());
            }
            self.seen = key.seq;
            return self.emit(key.seq, outcome.built.iter().cloned());
        }
        let (seq, changed) = cache.changed_since(self.seen, &self.view);
        let mut by_type: Vec<(ResourceType, Vec<String>)> =
            ResourceType::ALL.iter().map(|t| (*t, Vec::new())).collect();
        match changed {
            Some(names) if self.seen > 0 => {
                for (ty, name) in names {
                    by_type[ty as usize].1.push(name);
                }
            }
            // First push after readiness, or the log no longer reaches back: compare all.
            _ => self.all_candidates(cache, &mut by_type),
        }
        // Pinned before the build moves the stream's snapshots on.
        let pins = key.as_ref().map(|_| self.memo_pins());
        self.seen = seq;
        let built = self.build(cache, &by_type);
        if let (Some((memo, alike)), Some(mut key), Some(pins)) = (&self.memo, key, pins) {
            crate::metrics::global().batches_built.inc();
            // The log may have reached past the sequence number read for the lookup.
            key.seq = seq;
            let known_after: Option<Vec<Snapshot>> = self.types.iter().map(|st| st.known.settled().cloned()).collect();
            if let Some(known_after) = known_after {
                memo.put(key, Outcome { _view: alike.clone(), _pins: pins, built: built.clone(), known_after });
            }
        }
        self.emit(seq, built)
    }

    fn all_candidates(&self, cache: &Cache, by_type: &mut [(ResourceType, Vec<String>)]) {
        for (ty, names) in by_type.iter_mut() {
            let st = &self.types[*ty as usize];
            let mut all: FastSet<String> = cache.names(&self.view, *ty).into_iter().collect();
            all.extend(st.known.names().map(str::to_string));
            all.extend(st.unanswered().cloned());
            names.extend(all);
        }
    }

    /// The responses for candidate names per type, at cache sequence `seq`.
    fn respond(&mut self, cache: &Cache, seq: u64, candidates: &[(ResourceType, Vec<String>)]) -> Vec<DeltaResponse> {
        let built = self.build(cache, candidates);
        self.emit(seq, built)
    }

    /// Gives each built response its nonce and records it as awaiting an answer.
    fn emit(&mut self, seq: u64, built: impl IntoIterator<Item = Built>) -> Vec<DeltaResponse> {
        built
            .into_iter()
            .map(|b| {
                let (n, nonce) = self.nonce();
                self.pending.push_back((n, Pending { ty: b.ty, sent: b.sent, seq }));
                DeltaResponse {
                    system_version_info: seq.to_string(),
                    type_url: b.ty.type_url().to_string(),
                    resources: b.resources,
                    removed_resources: b.removed,
                    nonce,
                }
            })
            .collect()
    }

    /// Builds the responses for candidate names per type, and records what the client will
    /// hold: additions in dependency order, then removals in reverse order.
    fn build(&mut self, cache: &Cache, candidates: &[(ResourceType, Vec<String>)]) -> Vec<Built> {
        let mut additions = Vec::new();
        let mut removals = Vec::new();
        // Assignments to resend because their Cluster is sent: Envoy keeps a changed EDS
        // cluster warming until it gets the assignment again, changed or not.
        let mut forced: Vec<String> = Vec::new();
        for ty in ResourceType::ALL {
            let mut names: Vec<&String> = candidates.iter().filter(|(t, _)| *t == ty).flat_map(|(_, n)| n).collect();
            if ty == ResourceType::ClusterLoadAssignment {
                names.extend(forced.iter());
            }
            if names.is_empty() || !self.types[ty as usize].started {
                continue;
            }
            let mut resources = Vec::new();
            let mut removed = Vec::new();
            let mut sent = Vec::new();
            let mut seen = FastSet::default();
            for name in names {
                if !seen.insert(name) {
                    continue;
                }
                let st = &self.types[ty as usize];
                if !st.wants(name) {
                    continue;
                }
                let current = cache.get(&self.view, ty, name);
                let rendered = current.as_ref().and_then(|r| render_shared(cache, &self.view, self.bind, ty, r));
                if rendered.is_none()
                    && current.is_some()
                    && !translate::capture::is_virtual_listener(name)
                    && self.dropped.insert(name.clone())
                {
                    tracing::warn!(
                        node = %self.node, listener = %name,
                        "listener binds the same address and port as another one for this proxy: not sent"
                    );
                }
                let force = ty == ResourceType::ClusterLoadAssignment && forced.contains(name);
                match rendered {
                    Some(rendered) => {
                        let st = &self.types[ty as usize];
                        let tag = rendered.tag;
                        let held = st.known.get(name);
                        if held == Some(tag) && !force || st.rejected(name) == Some(tag) {
                            continue;
                        }
                        sent.push((rendered.name.clone(), tag, held));
                        resources.push(rendered);
                    }
                    None => {
                        let st = &self.types[ty as usize];
                        if st.known.contains(name) || st.is_unanswered(name) {
                            removed.push(name.clone());
                        }
                    }
                }
            }
            let st = &mut self.types[ty as usize];
            for name in &seen {
                st.answered(name);
            }
            if ty == ResourceType::Cluster {
                let eds = &self.types[ResourceType::ClusterLoadAssignment as usize];
                forced =
                    sent.iter().map(|(n, _, _)| n).filter(|n| eds.known.contains(n)).map(|n| n.to_string()).collect();
            }
            let st = &mut self.types[ty as usize];
            let removed_arcs: Vec<Arc<str>> = removed.iter().map(|n| Arc::from(n.as_str())).collect();
            let updates = sent.iter().map(|(name, tag, _)| (name.clone(), Some(*tag)));
            st.known.apply(updates.chain(removed_arcs.iter().map(|n| (n.clone(), None))));
            if st.nacked.is_some() {
                let gone = sent.iter().map(|(name, _, _)| name).chain(&removed_arcs);
                st.reject(gone.map(|n| (n.clone(), None)));
            }
            st.known.settle();
            if !resources.is_empty() {
                resources.sort_by(|a, b| a.name.cmp(&b.name));
                additions.push((ty, resources, sent));
            }
            if !removed.is_empty() {
                removed.sort();
                removals.push((ty, removed));
            }
        }
        let mut out = Vec::new();
        for (ty, resources, sent) in additions {
            out.push(Built { ty, resources, removed: Vec::new(), sent: sent.into() });
        }
        for (ty, removed) in removals.into_iter().rev() {
            out.push(Built { ty, resources: Vec::new(), removed, sent: Arc::from([]) });
        }
        out
    }

    /// The next nonce, as a number (the key of `pending`) and as sent.
    fn nonce(&mut self) -> (u64, String) {
        self.next_nonce += 1;
        (self.next_nonce, self.next_nonce.to_string())
    }

    /// Names the client holds of a type, as far as the stream knows (for tests and debugging).
    pub fn known(&self, ty: ResourceType) -> Vec<String> {
        self.types[ty as usize].known.names().map(str::to_string).collect()
    }
}

/// A nonce exactly as this stream writes them (digits, no leading zero), as a number: "+7" or
/// "07" is not the nonce "7".
fn parse_nonce(nonce: &str) -> Option<u64> {
    let canonical = !nonce.starts_with('0') && nonce.bytes().all(|b| b.is_ascii_digit());
    canonical.then(|| nonce.parse().ok()).flatten()
}

/// The name as the cache holds it (shared with its encodings) when the proxy's view has such a
/// resource, else a new allocation.
fn intern(cache: &Cache, view: &View, ty: ResourceType, name: &str) -> Arc<str> {
    cache.get(view, ty, name).map(|r| r.name.clone()).unwrap_or_else(|| Arc::from(name))
}

/// The resource as a proxy gets it: listeners bind to the proxy's own address when it has one;
/// a captured proxy's ([`View::is_captured`]) do not bind at all (`bind_to_port: false`, see
/// [`translate::capture::captured_listener`]: the same bytes for every captured proxy), and
/// only captured proxies get `virtualOutbound`/`virtualInbound` (None for the others: handled
/// as absent), and a captured proxy gets a headless Service's cluster as ORIGINAL_DST
/// ([`translate::capture::captured_cluster`]). Everything else is shared as is. Shared by the
/// delta and the state-of-the-world streams.
///
/// Every listener of a port binds the same `<bind-ip>:<port>` for a proxy with a bind address.
/// The engine serves one listener per port; should another one share the port of a
/// `0.0.0.0_<port>` listener (the port's HTTP listener), the `0.0.0.0_<port>` one is kept and
/// the other is not sent to this proxy (None: it is handled as absent).
pub(crate) fn render(
    cache: &Cache,
    view: &View,
    bind: Option<IpAddr>,
    ty: ResourceType,
    r: &Arc<Resource>,
) -> Option<(String, Any)> {
    let rendered = render_shared(cache, view, bind, ty, r)?;
    Some((rendered.version.clone(), Any { type_url: ty.type_url().to_string(), value: rendered.body().to_vec() }))
}

/// [`render`] as the shared encoding a delta response is made of: the form this proxy gets
/// ([`Variant`]) is made once per resource, by the first stream that needs it, and shared by
/// every stream that sends the same form (every captured proxy, every proxy with the same
/// bind address), so a change costs one encoding and one hash per form, not per stream.
pub(crate) fn render_shared(
    cache: &Cache,
    view: &View,
    bind: Option<IpAddr>,
    ty: ResourceType,
    r: &Arc<Resource>,
) -> Option<Arc<Rendered>> {
    let captured = view.is_captured();
    let rendered = match (ty, bind) {
        (ResourceType::Listener, _) if translate::capture::is_virtual_listener(&r.name) => {
            if !captured {
                return None;
            }
            r.rendering(ty, Variant::AsIs, |_| None)
        }
        (ResourceType::Listener, _) if captured => {
            r.rendering(ty, Variant::Captured, |body| Some((translate::capture::captured_listener(body), None)))
        }
        (ResourceType::Cluster, _) if captured => r.rendering(ty, Variant::Captured, |body| {
            translate::capture::captured_cluster(body).map(|body| (body, None))
        }),
        (ResourceType::Listener, Some(ip)) => {
            let rendered = r.rendering(ty, Variant::Bound(ip), |body| {
                translate::rebind_listener(body, ip).map(|(port, body)| (body, Some(port)))
            });
            if let Some(port) = rendered.port {
                let shared = translate::listener_name(port);
                if *r.name != *shared && cache.get(view, ResourceType::Listener, &shared).is_some() {
                    return None;
                }
            }
            rendered
        }
        _ => r.rendering(ty, Variant::AsIs, |_| None),
    };
    Some(rendered)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{ResourceChange, ResourceDelta};
    use crate::translate::Scope;
    use envoy_types::pb::google::rpc::Status as RpcStatus;
    use prost::Message;

    /// Every idle stream holds a `DeltaStream` inside its future, so its size is memory per
    /// stream (issue 10: under 10 KiB per idle stream). 144 and 896 bytes while the NACKed
    /// versions and unanswered names were kept inline, empty; 88 and 608 now.
    #[test]
    fn an_idle_delta_streams_state_stays_small() {
        assert!(std::mem::size_of::<TypeState>() <= 96, "{}", std::mem::size_of::<TypeState>());
        assert!(std::mem::size_of::<DeltaStream>() <= 640, "{}", std::mem::size_of::<DeltaStream>());
    }

    fn put(cache: &Cache, changes: &[(ResourceType, &str, Option<&[u8]>)]) {
        let changes = changes
            .iter()
            .map(|(ty, name, body)| ResourceChange {
                scope: Scope::All,
                ty: *ty,
                name: name.to_string(),
                body: body.map(Arc::from),
            })
            .collect();
        cache.apply(&ResourceDelta { time: 0, changes, diagnostics: Vec::new(), pod_localities: Vec::new() });
    }

    fn req(ty: ResourceType, subscribe: &[&str]) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: ty.type_url().into(),
            resource_names_subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn names(r: &DeltaResponse) -> Vec<&str> {
        r.resources.iter().map(|r| &*r.name).collect()
    }

    fn ready_cache() -> Arc<Cache> {
        let cache = Cache::new(["files".to_string()]);
        put(&cache, &[(ResourceType::Cluster, "a", Some(b"1")), (ResourceType::Cluster, "b", Some(b"2"))]);
        cache
    }

    #[test]
    fn nothing_is_served_before_the_cache_is_ready() {
        let cache = ready_cache();
        let mut s = DeltaStream::new("n".into(), None, View::sidecar());
        let (_, out) = s.on_request(&req(ResourceType::Cluster, &[]), &cache).unwrap();
        assert!(out.is_empty());
        assert!(s.on_cache_change(&cache).is_empty());
        cache.source_synced("files");
        let out = s.on_cache_change(&cache);
        assert_eq!(out.len(), 1);
        assert_eq!(names(&out[0]), ["a", "b"]);
    }

    #[test]
    fn legacy_wildcard_gets_everything_and_explicit_types_only_what_they_name() {
        let cache = ready_cache();
        cache.source_synced("files");
        put(
            &cache,
            &[
                (ResourceType::ClusterLoadAssignment, "a", Some(b"e1")),
                (ResourceType::ClusterLoadAssignment, "b", Some(b"e2")),
            ],
        );
        let mut s = DeltaStream::new("n".into(), None, View::sidecar());
        let (_, out) = s.on_request(&req(ResourceType::Cluster, &[]), &cache).unwrap();
        assert_eq!(names(&out[0]), ["a", "b"]);
        let (_, out) = s.on_request(&req(ResourceType::ClusterLoadAssignment, &["b"]), &cache).unwrap();
        assert_eq!(names(&out[0]), ["b"]);
        // A change to an unsubscribed EDS resource is not pushed.
        put(&cache, &[(ResourceType::ClusterLoadAssignment, "a", Some(b"e3"))]);
        assert!(s.on_cache_change(&cache).is_empty());
    }

    #[test]
    fn initial_resource_versions_that_match_are_not_resent_and_stale_ones_are_removed() {
        let cache = ready_cache();
        cache.source_synced("files");
        let version_a = cache.get(&View::sidecar(), ResourceType::Cluster, "a").unwrap().version.clone();
        let mut s = DeltaStream::new("n".into(), None, View::sidecar());
        let mut r = req(ResourceType::Cluster, &[]);
        r.initial_resource_versions.insert("a".into(), version_a);
        r.initial_resource_versions.insert("gone".into(), "x".into());
        let (_, out) = s.on_request(&r, &cache).unwrap();
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(names(&out[0]), ["b"]);
        assert_eq!(out[1].removed_resources, ["gone"]);
    }

    #[test]
    fn only_the_nonce_as_sent_and_of_its_type_answers_a_response_and_once() {
        let cache = ready_cache();
        cache.source_synced("files");
        let mut s = DeltaStream::new("n".into(), None, View::sidecar());
        let (_, first) = s.on_request(&req(ResourceType::Cluster, &[]), &cache).unwrap();
        let (_, second) = s.on_request(&req(ResourceType::ClusterLoadAssignment, &["a"]), &cache).unwrap();
        assert_eq!((first[0].nonce.as_str(), second[0].nonce.as_str()), ("1", "2"));
        let ack = |ty, nonce: &str| {
            let mut r = req(ty, &[]);
            r.response_nonce = nonce.into();
            r
        };
        // Forms that parse to a pending nonce are not it; nor is the right nonce of another type.
        for nonce in ["01", "+1", " 1", "1 "] {
            let answer = s.on_request(&ack(ResourceType::Cluster, nonce), &cache).unwrap().0;
            assert!(matches!(answer, Answer::Stale { .. }), "{nonce:?}: {answer:?}");
        }
        let answer = s.on_request(&ack(ResourceType::Cluster, "2"), &cache).unwrap().0;
        assert!(matches!(answer, Answer::Stale { .. }), "{answer:?}");
        // The nonce as sent, of its type: once.
        let answer = s.on_request(&ack(ResourceType::Cluster, "1"), &cache).unwrap().0;
        assert!(matches!(answer, Answer::Ack { .. }), "{answer:?}");
        let answer = s.on_request(&ack(ResourceType::Cluster, "1"), &cache).unwrap().0;
        assert!(matches!(answer, Answer::Stale { .. }), "{answer:?}");
    }

    #[test]
    fn a_nacked_version_is_not_resent_until_the_resource_changes() {
        let cache = ready_cache();
        cache.source_synced("files");
        let mut s = DeltaStream::new("n".into(), None, View::sidecar());
        let (_, out) = s.on_request(&req(ResourceType::Cluster, &[]), &cache).unwrap();
        let mut nack = req(ResourceType::Cluster, &[]);
        nack.response_nonce = out[0].nonce.clone();
        nack.error_detail = Some(RpcStatus { code: 3, message: "bad cluster".into(), details: vec![] });
        let (answer, out) = s.on_request(&nack, &cache).unwrap();
        assert_eq!(
            answer,
            Answer::Nack {
                ty: ResourceType::Cluster,
                nonce: "1".into(),
                names: vec!["a".into(), "b".into()],
                message: "bad cluster".into()
            }
        );
        assert!(out.is_empty());
        // Another resource changes: only it goes out, not the rejected versions.
        put(&cache, &[(ResourceType::Cluster, "c", Some(b"3"))]);
        let out = s.on_cache_change(&cache);
        assert_eq!(names(&out[0]), ["c"]);
        // The rejected one changes: its new version goes out.
        put(&cache, &[(ResourceType::Cluster, "a", Some(b"fixed"))]);
        let out = s.on_cache_change(&cache);
        assert_eq!(names(&out[0]), ["a"]);
        let mut ack = req(ResourceType::Cluster, &[]);
        ack.response_nonce = out[0].nonce.clone();
        assert!(matches!(s.on_request(&ack, &cache).unwrap().0, Answer::Ack { .. }));
        ack.response_nonce = "999".into();
        assert!(matches!(s.on_request(&ack, &cache).unwrap().0, Answer::Stale { .. }));
    }

    #[test]
    fn additions_go_out_in_dependency_order_and_removals_after_in_reverse() {
        let cache = Cache::new([]);
        put(&cache, &[(ResourceType::Listener, "l", Some(b"l")), (ResourceType::RouteConfiguration, "r", Some(b"r"))]);
        let mut s = DeltaStream::new("n".into(), None, View::sidecar());
        for (ty, sub) in [
            (ResourceType::Cluster, vec![]),
            (ResourceType::Listener, vec![]),
            (ResourceType::ClusterLoadAssignment, vec!["c"]),
            (ResourceType::RouteConfiguration, vec!["r"]),
        ] {
            s.on_request(&req(ty, &sub), &cache).unwrap();
        }
        put(
            &cache,
            &[
                (ResourceType::RouteConfiguration, "r", None),
                (ResourceType::Listener, "l", None),
                (ResourceType::Cluster, "c", Some(b"c")),
                (ResourceType::ClusterLoadAssignment, "c", Some(b"e")),
            ],
        );
        let out = s.on_cache_change(&cache);
        let order: Vec<(&str, bool)> =
            out.iter().map(|r| (r.type_url.rsplit('.').next().unwrap(), r.removed_resources.is_empty())).collect();
        assert_eq!(
            order,
            [("Cluster", true), ("ClusterLoadAssignment", true), ("RouteConfiguration", false), ("Listener", false)]
        );
    }

    #[test]
    fn listeners_are_rendered_for_the_proxy_bind_address() {
        let cache = Cache::new([]);
        let body = translate::listener(9080, None);
        put(&cache, &[(ResourceType::Listener, "0.0.0.0_9080", Some(&body))]);
        let mut s = DeltaStream::new("n".into(), Some("127.0.0.9".parse().unwrap()), View::sidecar());
        let (_, out) = s.on_request(&req(ResourceType::Listener, &[]), &cache).unwrap();
        let r = &out[0].resources[0];
        assert_eq!(r.body(), translate::listener(9080, Some("127.0.0.9".parse().unwrap())));
        assert_ne!(r.version, cache.get(&View::sidecar(), ResourceType::Listener, "0.0.0.0_9080").unwrap().version);
    }

    #[test]
    fn every_listener_is_rebound_and_one_sharing_the_http_listeners_port_is_left_out() {
        use crate::translate::listener::{TcpTarget, tcp_listener};
        use envoy_types::pb::envoy::config::core::v3 as core;
        use envoy_types::pb::envoy::config::listener::v3::Listener;
        use prost::Message;
        let any: IpAddr = "0.0.0.0".parse().unwrap();
        let target = TcpTarget::Cluster("outbound|9000||db.default.svc.cluster.local".into());
        let cache = Cache::new([]);
        let http = translate::listener(9080, None);
        let tcp = tcp_listener("10.96.0.7_9000", any, 9000, &target);
        let clash = tcp_listener("10.96.0.8_9080", any, 9080, &target);
        put(
            &cache,
            &[
                (ResourceType::Listener, "0.0.0.0_9080", Some(&http)),
                (ResourceType::Listener, "10.96.0.7_9000", Some(&tcp)),
                (ResourceType::Listener, "10.96.0.8_9080", Some(&clash)),
            ],
        );
        let mut s = DeltaStream::new("n".into(), Some("127.0.0.9".parse().unwrap()), View::sidecar());
        let (_, out) = s.on_request(&req(ResourceType::Listener, &[]), &cache).unwrap();
        assert_eq!(names(&out[0]), ["0.0.0.0_9080", "10.96.0.7_9000"]);
        for r in &out[0].resources {
            let l = Listener::decode(r.body()).unwrap();
            let Some(core::address::Address::SocketAddress(a)) = l.address.unwrap().address else { panic!() };
            assert_eq!(a.address, "127.0.0.9", "{}", r.name);
        }
        // Without a bind address every listener is sent as the engine made it.
        let mut s = DeltaStream::new("n".into(), None, View::sidecar());
        let (_, out) = s.on_request(&req(ResourceType::Listener, &[]), &cache).unwrap();
        assert_eq!(out[0].resources.len(), 3);
        assert_eq!(out[0].resources[1].body(), tcp);
    }

    #[test]
    fn a_captured_sidecar_gets_unbound_listeners_and_the_capture_resources_and_others_do_not() {
        use crate::model::proxy::ProxyKind;
        use crate::translate::capture::{self, OutboundTrafficPolicy};
        use envoy_types::pb::envoy::config::listener::v3::Listener;
        use prost::Message;
        let cache = Cache::new([]);
        let class = "sidecar/default/app=reviews".to_string();
        let http = translate::listener(9080, None);
        let inbound = capture::virtual_inbound_listener(&[]);
        let mut changes: Vec<ResourceChange> = capture::static_resources(OutboundTrafficPolicy::AllowAny)
            .into_iter()
            .map(|(scope, ty, name, body)| ResourceChange { scope, ty, name, body: Some(Arc::from(body)) })
            .collect();
        changes.push(ResourceChange {
            scope: Scope::Sidecars,
            ty: ResourceType::Listener,
            name: "0.0.0.0_9080".into(),
            body: Some(Arc::from(&http[..])),
        });
        changes.push(ResourceChange {
            scope: Scope::Class(class.clone()),
            ty: ResourceType::Listener,
            name: "virtualInbound".into(),
            body: Some(Arc::from(&inbound[..])),
        });
        cache.apply(&ResourceDelta { time: 0, diagnostics: vec![], changes, pod_localities: vec![] });
        let view = View::new(ProxyKind::Sidecar, Some(class)).in_namespace("default");
        let mut captured = DeltaStream::new("c".into(), None, view.clone().captured());
        let (_, out) = captured.on_request(&req(ResourceType::Listener, &[]), &cache).unwrap();
        assert_eq!(names(&out[0]), ["0.0.0.0_9080", "virtualInbound", "virtualOutbound"]);
        for r in &out[0].resources {
            let l = Listener::decode(r.body()).unwrap();
            let expected =
                (&*r.name == "0.0.0.0_9080").then_some(envoy_types::pb::google::protobuf::BoolValue { value: false });
            assert_eq!(l.bind_to_port, expected, "{}", r.name);
        }
        let (_, out) = captured.on_request(&req(ResourceType::Cluster, &[]), &cache).unwrap();
        assert_eq!(names(&out[0]), ["BlackHoleCluster", "InboundPassthroughCluster", "PassthroughCluster"]);
        // Not captured: the listeners as the engine made them, no capture listener or cluster.
        let mut plain = DeltaStream::new("p".into(), None, view);
        let (_, out) = plain.on_request(&req(ResourceType::Listener, &[]), &cache).unwrap();
        assert_eq!(names(&out[0]), ["0.0.0.0_9080"]);
        assert_eq!(out[0].resources[0].body(), http);
        let (_, out) = plain.on_request(&req(ResourceType::Cluster, &[]), &cache).unwrap();
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn a_captured_sidecar_gets_a_headless_services_cluster_as_original_dst_and_others_as_eds() {
        use crate::translate::ServicePortRow;
        use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
        use prost::Message;
        let row = |service: &str, headless: bool| ServicePortRow {
            headless,
            ..crate::translate::tests::row("default", service, "http", 9080)
        };
        let cache = Cache::new([]);
        let headless = translate::cluster::cluster(&row("db", true), None, None);
        let plain = translate::cluster::cluster(&row("web", false), None, None);
        let db = "outbound|9080||db.default.svc.cluster.local";
        let web = "outbound|9080||web.default.svc.cluster.local";
        put(&cache, &[(ResourceType::Cluster, db, Some(&headless)), (ResourceType::Cluster, web, Some(&plain))]);
        let clusters = |view: View| {
            let mut s = DeltaStream::new("n".into(), None, view);
            let (_, out) = s.on_request(&req(ResourceType::Cluster, &[]), &cache).unwrap();
            out[0]
                .resources
                .iter()
                .map(|r| (r.name.clone(), r.version.clone(), Cluster::decode(r.body()).unwrap()))
                .collect::<Vec<_>>()
        };
        let ty = |c: &Cluster| match c.cluster_discovery_type {
            Some(cluster::ClusterDiscoveryType::Type(t)) => cluster::DiscoveryType::try_from(t).unwrap(),
            ref other => panic!("{other:?}"),
        };
        let captured = clusters(View::sidecar().captured());
        let uncaptured = clusters(View::sidecar());
        for (name, _, c) in uncaptured.iter().chain(&captured[1..]) {
            assert_eq!(ty(c), cluster::DiscoveryType::Eds, "{name}");
            assert_eq!(c.eds_cluster_config.as_ref().unwrap().service_name, **name);
        }
        let (name, version, c) = &captured[0];
        assert_eq!(&**name, db);
        assert_eq!(ty(c), cluster::DiscoveryType::OriginalDst);
        assert_eq!(c.lb_policy, cluster::LbPolicy::ClusterProvided as i32);
        assert_eq!(c.eds_cluster_config, None);
        assert_eq!(c.connect_timeout, Cluster::decode(&headless[..]).unwrap().connect_timeout);
        // Its own version: a client that held the EDS form must take the new one.
        assert_ne!(version, &uncaptured[0].1);
        assert_eq!(captured[1].2, uncaptured[1].2, "a cluster with a VIP is the same for both");
        assert_eq!(captured[1].1, uncaptured[1].1);
    }

    #[test]
    fn streams_share_one_encoding_per_form_of_a_resource() {
        use crate::model::proxy::ProxyKind;
        let cache = Cache::new([]);
        let http = translate::listener(9080, None);
        put(&cache, &[(ResourceType::Listener, "0.0.0.0_9080", Some(&http)), (ResourceType::Cluster, "c", Some(b"c"))]);
        let captured = View::new(ProxyKind::Sidecar, None).captured();
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        let mut streams = [
            DeltaStream::new("p1".into(), None, View::sidecar()),
            DeltaStream::new("p2".into(), None, View::sidecar()),
            DeltaStream::new("c1".into(), None, captured.clone()),
            DeltaStream::new("c2".into(), None, captured),
            DeltaStream::new("b1".into(), Some(ip), View::sidecar()),
            DeltaStream::new("b2".into(), Some(ip), View::sidecar()),
        ];
        let mut got = Vec::new();
        for s in &mut streams {
            let (_, out) = s.on_request(&req(ResourceType::Listener, &[]), &cache).unwrap();
            let listener = out[0].resources.iter().find(|r| &*r.name == "0.0.0.0_9080").unwrap().clone();
            let (_, out) = s.on_request(&req(ResourceType::Cluster, &[]), &cache).unwrap();
            got.push((listener, out[0].resources[0].clone()));
        }
        // Every stream sends the one encoding of the cluster.
        assert!(got.iter().all(|(_, c)| Arc::ptr_eq(c, &got[0].1)));
        // One encoding per form of the listener: as is, captured, bound to 127.0.0.9.
        for pair in got.chunks(2) {
            assert!(Arc::ptr_eq(&pair[0].0, &pair[1].0), "{}", pair[0].0.name);
        }
        assert!(!Arc::ptr_eq(&got[0].0, &got[2].0) && !Arc::ptr_eq(&got[0].0, &got[4].0));
        // What goes on the wire is the protocol message with each form's body and version.
        let (_, out) = DeltaStream::new("b3".into(), Some(ip), View::sidecar())
            .on_request(&req(ResourceType::Listener, &[]), &cache)
            .unwrap();
        let decoded = out[0].to_proto();
        assert_eq!(decoded.type_url, ResourceType::Listener.type_url());
        assert_eq!(decoded.resources[0].name, "0.0.0.0_9080");
        assert_eq!(decoded.resources[0].version, crate::cache::content_version(&translate::listener(9080, Some(ip))));
        assert_eq!(decoded.resources[0].resource.as_ref().unwrap().value, translate::listener(9080, Some(ip)));
    }

    #[test]
    fn a_subscribed_name_that_does_not_exist_comes_back_removed_once() {
        let cache = ready_cache();
        cache.source_synced("files");
        let mut s = DeltaStream::new("n".into(), None, View::sidecar());
        let (_, out) = s.on_request(&req(ResourceType::ClusterLoadAssignment, &["ghost"]), &cache).unwrap();
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(out[0].resources.is_empty());
        assert_eq!(out[0].removed_resources, ["ghost"]);
        // Told once: an unrelated change does not repeat it.
        put(&cache, &[(ResourceType::Cluster, "c", Some(b"3"))]);
        assert!(s.on_cache_change(&cache).is_empty());
        // It appears later: it is sent.
        put(&cache, &[(ResourceType::ClusterLoadAssignment, "ghost", Some(b"e"))]);
        let out = s.on_cache_change(&cache);
        assert_eq!(names(&out[0]), ["ghost"]);
        // With `*` and a missing name: everything, and the missing name removed.
        let mut s = DeltaStream::new("n".into(), None, View::sidecar());
        let (_, out) = s.on_request(&req(ResourceType::Cluster, &["*", "nope"]), &cache).unwrap();
        assert_eq!(names(&out[0]), ["a", "b", "c"]);
        assert_eq!(out[1].removed_resources, ["nope"]);
    }

    #[test]
    fn a_changed_cluster_is_followed_by_its_assignment_even_when_unchanged() {
        let cache = ready_cache();
        cache.source_synced("files");
        put(&cache, &[(ResourceType::ClusterLoadAssignment, "a", Some(b"e1"))]);
        let mut s = DeltaStream::new("n".into(), None, View::sidecar());
        s.on_request(&req(ResourceType::Cluster, &[]), &cache).unwrap();
        let (_, out) = s.on_request(&req(ResourceType::ClusterLoadAssignment, &["a"]), &cache).unwrap();
        let eds_version = out[0].resources[0].version.clone();
        put(&cache, &[(ResourceType::Cluster, "a", Some(b"1-changed"))]);
        let out = s.on_cache_change(&cache);
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!((out[0].type_url.as_str(), names(&out[0])), (ResourceType::Cluster.type_url(), vec!["a"]));
        assert_eq!(out[1].type_url, ResourceType::ClusterLoadAssignment.type_url());
        assert_eq!(names(&out[1]), ["a"]);
        assert_eq!(out[1].resources[0].version, eds_version, "the same assignment, resent");
        // A cluster whose assignment the client does not hold brings no assignment.
        put(&cache, &[(ResourceType::Cluster, "b", Some(b"2-changed"))]);
        let out = s.on_cache_change(&cache);
        assert_eq!(out.len(), 1, "{out:?}");
    }

    #[test]
    fn unsubscribing_forgets_and_resubscribing_resends() {
        let cache = ready_cache();
        cache.source_synced("files");
        put(&cache, &[(ResourceType::ClusterLoadAssignment, "a", Some(b"e1"))]);
        let mut s = DeltaStream::new("n".into(), None, View::sidecar());
        s.on_request(&req(ResourceType::ClusterLoadAssignment, &["a"]), &cache).unwrap();
        let mut unsub = req(ResourceType::ClusterLoadAssignment, &[]);
        unsub.resource_names_unsubscribe = vec!["a".into()];
        let (_, out) = s.on_request(&unsub, &cache).unwrap();
        assert!(out.is_empty());
        assert!(s.known(ResourceType::ClusterLoadAssignment).is_empty());
        let (_, out) = s.on_request(&req(ResourceType::ClusterLoadAssignment, &["a"]), &cache).unwrap();
        assert_eq!(names(&out[0]), ["a"]);
    }

    #[test]
    fn a_gateway_gets_its_class_listeners_and_the_shared_clusters_but_no_sidecar_listeners() {
        use crate::model::proxy::ProxyKind;
        let cache = Cache::new([]);
        let class = "router/istio-system/istio=ingressgateway".to_string();
        let change = |scope: Scope, ty, name: &str, body: &[u8]| ResourceChange {
            scope,
            ty,
            name: name.to_string(),
            body: Some(Arc::from(body)),
        };
        cache.apply(&ResourceDelta {
            time: 0,
            diagnostics: vec![],
            pod_localities: Vec::new(),
            changes: vec![
                change(Scope::All, ResourceType::Cluster, "c", b"c"),
                change(Scope::Sidecars, ResourceType::Listener, "0.0.0.0_9080", b"sidecar"),
                change(Scope::Class(class.clone()), ResourceType::Listener, "0.0.0.0_8080", b"gateway"),
            ],
        });
        let mut gw = DeltaStream::new("gw".into(), None, View::new(ProxyKind::Router, Some(class.clone())));
        let (_, out) = gw.on_request(&req(ResourceType::Listener, &[]), &cache).unwrap();
        assert_eq!(names(&out[0]), ["0.0.0.0_8080"]);
        let (_, out) = gw.on_request(&req(ResourceType::Cluster, &[]), &cache).unwrap();
        assert_eq!(names(&out[0]), ["c"]);
        let mut sidecar = DeltaStream::new("s".into(), None, View::sidecar());
        let (_, out) = sidecar.on_request(&req(ResourceType::Listener, &[]), &cache).unwrap();
        assert_eq!(names(&out[0]), ["0.0.0.0_9080"]);
        // The class's listener goes away: the gateway is told, the sidecar hears nothing.
        cache.apply(&ResourceDelta {
            time: 1,
            diagnostics: vec![],
            pod_localities: Vec::new(),
            changes: vec![ResourceChange {
                scope: Scope::Class(class),
                ty: ResourceType::Listener,
                name: "0.0.0.0_8080".into(),
                body: None,
            }],
        });
        let out = gw.on_cache_change(&cache);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].removed_resources, ["0.0.0.0_8080"]);
        sidecar.on_cache_change(&cache);
        assert!(sidecar.on_cache_change(&cache).is_empty());
    }

    /// Streams subscribed alike share the batch built for a change: the first builds it, the
    /// others take it (and the same snapshot of what their clients hold); a stream with a
    /// NACK outstanding builds its own.
    #[test]
    fn streams_alike_take_the_batch_the_first_built_for_a_change() {
        let cache = ready_cache();
        cache.source_synced("files");
        let memo = Arc::new(ChangeMemo::default());
        let open = || DeltaStream::new("n".into(), None, View::sidecar()).with_memo(memo.clone());
        let mut streams: Vec<DeltaStream> = (0..3).map(|_| open()).collect();
        for s in &mut streams {
            let (_, out) = s.on_request(&req(ResourceType::Cluster, &[]), &cache).unwrap();
            assert_eq!(names(&out[0]), ["a", "b"]);
            s.on_cache_change(&cache);
        }
        // A stream whose view no other has neither takes nor leaves batches.
        let mut own =
            DeltaStream::new("o".into(), None, View::new(crate::model::proxy::ProxyKind::Sidecar, Some("own".into())))
                .with_memo(memo.clone());
        own.on_request(&req(ResourceType::Cluster, &[]), &cache).unwrap();
        own.on_cache_change(&cache);
        let (hits, len) = (memo.hits(), memo.len());
        put(&cache, &[(ResourceType::Cluster, "a", Some(b"1-new")), (ResourceType::Cluster, "c", Some(b"3"))]);
        assert_eq!(names(&own.on_cache_change(&cache)[0]), ["a", "c"]);
        assert_eq!((memo.hits(), memo.len()), (hits, len), "the stream of its own view used the memo");
        let outs: Vec<_> = streams.iter_mut().map(|s| s.on_cache_change(&cache)).collect();
        assert_eq!(memo.hits() - hits, 2, "the second and third stream take the first's batch");
        assert_eq!(memo.len(), 1);
        for out in &outs {
            assert_eq!(out.len(), 1);
            assert_eq!(names(&out[0]), ["a", "c"]);
            assert_eq!(out[0].encode_to_vec(), outs[0][0].encode_to_vec());
        }
        assert!(
            streams[1].types[0]
                .known
                .settled()
                .is_some_and(|k| Arc::ptr_eq(k, streams[0].types[0].known.settled().unwrap()))
        );

        // The third NACKs: it builds its own batches until the resource changes.
        let mut nack = req(ResourceType::Cluster, &[]);
        nack.response_nonce = outs[2][0].nonce.clone();
        nack.error_detail = Some(RpcStatus { code: 3, message: "bad".into(), details: vec![] });
        streams[2].on_request(&nack, &cache).unwrap();
        let hits = memo.hits();
        put(&cache, &[(ResourceType::Cluster, "b", Some(b"2-new"))]);
        let outs: Vec<_> = streams.iter_mut().map(|s| s.on_cache_change(&cache)).collect();
        assert_eq!(memo.hits() - hits, 1, "only the second stream takes the first's batch");
        assert_eq!(names(&outs[0][0]), ["b"]);
        assert_eq!(names(&outs[2][0]), ["b"]);
        // Its client kept the a it had before the NACKed response, and never took c.
        assert_eq!(streams[2].known(ResourceType::Cluster), ["a", "b"]);
        assert_eq!(streams[0].known(ResourceType::Cluster), ["a", "b", "c"]);
    }

    mod memo_equivalence {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            /// A resource of type 0 (clusters) or 1 (assignments) set to a body, or removed.
            Put(u8, u8, Option<u8>),
            /// Stream i subscribes to assignment n, or unsubscribes from it.
            Subscribe(usize, u8, bool),
            /// Stream i answers its oldest unanswered response: an ACK or a NACK.
            Answer(usize, bool),
            /// Every stream catches up with the cache, in turn.
            CatchUp,
            /// One stream catches up.
            CatchUpOne(usize),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => (0u8..2, 0u8..4, proptest::option::of(0u8..3)).prop_map(|(t, n, b)| Op::Put(t, n, b)),
                2 => (0usize..3, 0u8..4, any::<bool>()).prop_map(|(i, n, s)| Op::Subscribe(i, n, s)),
                3 => (0usize..3, any::<bool>()).prop_map(|(i, a)| Op::Answer(i, a)),
                4 => Just(Op::CatchUp),
                1 => (0usize..3).prop_map(Op::CatchUpOne),
            ]
        }

        fn ty(t: u8) -> ResourceType {
            if t == 0 { ResourceType::Cluster } else { ResourceType::ClusterLoadAssignment }
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]
            /// Streams sharing a memo send exactly what streams building every batch send, after
            /// any sequence of changes, (un)subscriptions, ACKs and NACKs.
            #[test]
            fn streams_sharing_batches_send_what_streams_building_their_own_send(
                ops in proptest::collection::vec(op(), 1..40)
            ) {
                let cache = ready_cache();
                cache.source_synced("files");
                let memo = Arc::new(ChangeMemo::default());
                let mut shared: Vec<DeltaStream> =
                    (0..3).map(|_| DeltaStream::new("n".into(), None, View::sidecar()).with_memo(memo.clone())).collect();
                let mut alone: Vec<DeltaStream> = (0..3).map(|_| DeltaStream::new("n".into(), None, View::sidecar())).collect();
                // Per stream, the responses not answered yet (type, nonce), oldest first.
                let mut unanswered: Vec<VecDeque<(String, String)>> = vec![VecDeque::new(); 3];
                let check = |i: usize, a: Vec<DeltaResponse>, b: Vec<DeltaResponse>, unanswered: &mut Vec<VecDeque<(String, String)>>| {
                    let a: Vec<Vec<u8>> = a.iter().map(|r| r.encode_to_vec()).collect();
                    let b_enc: Vec<Vec<u8>> = b.iter().map(|r| r.encode_to_vec()).collect();
                    prop_assert_eq!(a, b_enc, "stream {}", i);
                    unanswered[i].extend(b.iter().map(|r| (r.type_url.clone(), r.nonce.clone())));
                    Ok(())
                };
                for i in 0..3 {
                    for r in [req(ResourceType::Cluster, &[]), req(ResourceType::ClusterLoadAssignment, &["n0", "n1"])] {
                        let (_, a) = shared[i].on_request(&r, &cache).unwrap();
                        let (_, b) = alone[i].on_request(&r, &cache).unwrap();
                        check(i, a, b, &mut unanswered)?;
                    }
                }
                for op in ops {
                    match op {
                        Op::Put(t, n, body) => {
                            let body = body.map(|b| vec![b, t]);
                            put(&cache, &[(ty(t), &format!("n{n}"), body.as_deref())]);
                        }
                        Op::Subscribe(i, n, subscribe) => {
                            let name = format!("n{n}");
                            let mut r = req(ResourceType::ClusterLoadAssignment, &[]);
                            if subscribe { r.resource_names_subscribe = vec![name] } else { r.resource_names_unsubscribe = vec![name] }
                            let (_, a) = shared[i].on_request(&r, &cache).unwrap();
                            let (_, b) = alone[i].on_request(&r, &cache).unwrap();
                            check(i, a, b, &mut unanswered)?;
                        }
                        Op::Answer(i, ack) => {
                            let Some((type_url, nonce)) = unanswered[i].pop_front() else { continue };
                            let mut r = DeltaDiscoveryRequest { type_url, response_nonce: nonce, ..Default::default() };
                            if !ack {
                                r.error_detail = Some(RpcStatus { code: 3, message: "no".into(), details: vec![] });
                            }
                            let (x, a) = shared[i].on_request(&r, &cache).unwrap();
                            let (y, b) = alone[i].on_request(&r, &cache).unwrap();
                            prop_assert_eq!(x, y);
                            check(i, a, b, &mut unanswered)?;
                        }
                        Op::CatchUp | Op::CatchUpOne(_) => {
                            let which: Vec<usize> = match op { Op::CatchUpOne(i) => vec![i], _ => (0..3).collect() };
                            for i in which {
                                let a = shared[i].on_cache_change(&cache);
                                let b = alone[i].on_cache_change(&cache);
                                check(i, a, b, &mut unanswered)?;
                            }
                        }
                    }
                    for i in 0..3 {
                        for t in [ResourceType::Cluster, ResourceType::ClusterLoadAssignment] {
                            prop_assert_eq!(shared[i].known(t), alone[i].known(t));
                        }
                    }
                }
            }
        }
    }
}
