//! The current resources, versioned by content, with a change log that xDS streams follow.
//!
//! The engine applies one [`ResourceDelta`] per logical time under a write lock, so a stream
//! never sees half of a change. Versions are a hash of the encoded bytes: stable across
//! restarts, so an Envoy that reconnects with `initial_resource_versions` is sent only what
//! really differs. Each applied delta gets a sequence number; streams remember the last one
//! they handled and ask for the names changed since, so a push costs what changed, not the
//! size of the mesh. A stream that fell behind the bounded log does one full comparison.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, RwLock};

use tokio::sync::watch;

use crate::engine::{EngineOutput, ResourceDelta};
use crate::translate::Diagnostic;
use crate::translate::ResourceType;

/// One resource as served: its encoded body and content version.
#[derive(Debug, PartialEq, Eq)]
pub struct Resource {
    pub name: String,
    pub version: String,
    pub body: Arc<[u8]>,
}

pub fn content_version(body: &[u8]) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(body))
}

/// How many (sequence, type, name) entries the change log keeps.
const LOG_CAPACITY: usize = 1 << 20;

#[derive(Default)]
struct State {
    resources: [BTreeMap<String, Arc<Resource>>; 4],
    seq: u64,
    log: VecDeque<(u64, ResourceType, String)>,
    /// Changes with a sequence number above this are all in `log`.
    log_floor: u64,
    pending_sources: BTreeSet<String>,
    diagnostics: BTreeSet<Diagnostic>,
}

fn slot(ty: ResourceType) -> usize {
    ty as usize
}

/// The set of names changed since a sequence number, or `None` when the log no longer
/// reaches that far back and the caller must compare everything.
pub type Changed = Option<Vec<(ResourceType, String)>>;

pub struct Cache {
    state: RwLock<State>,
    /// The sequence number of the last applied change; bumped on readiness too.
    notify: watch::Sender<u64>,
}

impl Cache {
    /// A cache that is not ready until each of `sources` has reported its initial sync.
    pub fn new(sources: impl IntoIterator<Item = String>) -> Arc<Cache> {
        let state = State { pending_sources: sources.into_iter().collect(), ..Default::default() };
        Arc::new(Cache { state: RwLock::new(state), notify: watch::channel(0).0 })
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
            let map = &mut state.resources[slot(change.ty)];
            let changed = match &change.body {
                Some(body) => {
                    let version = content_version(body);
                    if map.get(&change.name).is_some_and(|r| r.version == version) {
                        false
                    } else {
                        let r = Resource { name: change.name.clone(), version, body: body.clone() };
                        map.insert(change.name.clone(), Arc::new(r));
                        true
                    }
                }
                None => map.remove(&change.name).is_some(),
            };
            if changed {
                state.log.push_back((seq, change.ty, change.name.clone()));
                applied += 1;
            }
        }
        if applied > 0 {
            state.seq = seq;
            while state.log.len() > LOG_CAPACITY {
                if let Some((s, _, _)) = state.log.pop_front() {
                    state.log_floor = s;
                }
            }
            drop(state);
            self.notify.send_replace(seq);
        }
        applied
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
            drop(state);
            tracing::info!("every source has synced: serving configuration");
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

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.notify.subscribe()
    }

    pub fn seq(&self) -> u64 {
        self.read().seq
    }

    pub fn get(&self, ty: ResourceType, name: &str) -> Option<Arc<Resource>> {
        self.read().resources[slot(ty)].get(name).cloned()
    }

    pub fn names(&self, ty: ResourceType) -> Vec<String> {
        self.read().resources[slot(ty)].keys().cloned().collect()
    }

    pub fn len(&self, ty: ResourceType) -> usize {
        self.read().resources[slot(ty)].len()
    }

    /// Every resource, for debugging and tests.
    pub fn snapshot(&self) -> BTreeMap<(ResourceType, String), Arc<Resource>> {
        let state = self.read();
        ResourceType::ALL
            .into_iter()
            .flat_map(|ty| state.resources[slot(ty)].iter().map(move |(n, r)| ((ty, n.clone()), r.clone())))
            .collect()
    }

    /// The current sequence number and the names changed after `since`.
    pub fn changed_since(&self, since: u64) -> (u64, Changed) {
        let state = self.read();
        if since < state.log_floor {
            return (state.seq, None);
        }
        let start = state.log.partition_point(|(s, _, _)| *s <= since);
        let names = state.log.range(start..).map(|(_, ty, name)| (*ty, name.clone())).collect();
        (state.seq, Some(names))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ResourceChange;

    fn delta(changes: &[(ResourceType, &str, Option<&[u8]>)]) -> ResourceDelta {
        ResourceDelta {
            diagnostics: Vec::new(),
            time: 0,
            changes: changes
                .iter()
                .map(|(ty, name, body)| ResourceChange { ty: *ty, name: name.to_string(), body: body.map(Arc::from) })
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
        assert_eq!(cache.changed_since(seq), (seq, Some(vec![])));
    }

    #[test]
    fn changed_since_lists_only_later_changes_in_order() {
        let cache = Cache::new([]);
        cache.apply(&delta(&[(ResourceType::Cluster, "a", Some(b"1"))]));
        let after_first = cache.seq();
        cache.apply(&delta(&[(ResourceType::Listener, "l", Some(b"2")), (ResourceType::Cluster, "a", None)]));
        let (seq, changed) = cache.changed_since(after_first);
        assert_eq!(seq, after_first + 1);
        assert_eq!(
            changed.unwrap(),
            vec![(ResourceType::Listener, "l".to_string()), (ResourceType::Cluster, "a".to_string())]
        );
        assert!(cache.get(ResourceType::Cluster, "a").is_none());
    }

    #[test]
    fn versions_are_content_hashes_and_survive_a_new_cache() {
        let (a, b) = (Cache::new([]), Cache::new([]));
        a.apply(&delta(&[(ResourceType::Cluster, "c", Some(b"same"))]));
        b.apply(&delta(&[(ResourceType::Cluster, "c", Some(b"same"))]));
        assert_eq!(
            a.get(ResourceType::Cluster, "c").unwrap().version,
            b.get(ResourceType::Cluster, "c").unwrap().version
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
}
