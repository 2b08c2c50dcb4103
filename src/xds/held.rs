//! What a delta stream knows its client holds of one type: name → version tag, with the bulk
//! shared between the streams that hold the same thing.
//!
//! Thousands of proxies of one class hold the same resources at the same versions. Each stream
//! used to keep its own sorted vector (24 bytes per resource: ~22 KB per stream for the 783
//! resources of a `small` sidecar, half of an idle stream's heap on a shared connection). Now a
//! stream keeps an immutable, shared snapshot (`base`) plus the few entries that changed since
//! (`overlay`). When a stream settles (after a response, [`Held::settle`]) its overlay is folded
//! into a new snapshot, and snapshots are interned by transition: the streams that held the same
//! snapshot and applied the same changes get the very same new snapshot. Only the first of a
//! class builds it; the others find it in [`TRANSITIONS`] in O(changes).
//!
//! A snapshot is a sorted run of shared chunks of about [`CHUNK`] entries. Folding changes in
//! rebuilds only the chunks they fall in and shares the others with the snapshot before: at
//! `large` a sidecar holds ~30,000 assignments, and copying them all once per change and class
//! (cloning and later dropping 30,000 names) was a tenth of the process's CPU under pod churn.
//!
//! The sharing changes nothing a stream sees: a transition is reused only when its starting
//! snapshot is the same allocation and its changes are equal, entry by entry, so the result is
//! exactly what the stream would have built.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, LazyLock, Mutex, Weak};

type Entry = (Arc<str>, u64);

/// Entries per chunk a merge aims at. A rebuilt chunk longer than twice this is split, and one
/// shorter than a quarter of it is joined to its neighbour, so a snapshot of n entries has
/// about n / CHUNK chunks and a change costs O(n / CHUNK + CHUNK). Small in tests, so that
/// the properties below cross chunk boundaries with a few dozen names.
const CHUNK: usize = if cfg!(test) { 8 } else { 128 };

/// A snapshot's entries: non-empty chunks, each sorted, in order. They sit in a box of their
/// own, so that a transition's weak reference to a snapshot nobody holds keeps only the small
/// shared header, not the chunks.
pub(super) struct Entries {
    chunks: Box<[Arc<[Entry]>]>,
}
pub(super) type Snapshot = Arc<Entries>;

impl Entries {
    fn new(chunks: Vec<Arc<[Entry]>>) -> Entries {
        Entries { chunks: chunks.into_boxed_slice() }
    }

    /// The entry for `name`.
    fn entry(&self, name: &str) -> Option<&Entry> {
        // The last chunk whose first name is not after `name`.
        let i = self.chunks.partition_point(|c| &*c[0].0 <= name).checked_sub(1)?;
        let chunk = &self.chunks[i];
        find(chunk, name).ok().map(|j| &chunk[j])
    }

    fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.chunks.iter().flat_map(|c| c.iter())
    }

    fn is_empty(&self) -> bool {
        // No chunk is empty.
        self.chunks.is_empty()
    }
}

/// A change since the snapshot: the new tag, or `None` for a name the client no longer holds.
pub(super) type Change = (Arc<str>, Option<u64>);

pub(super) struct Held {
    /// Sorted by name; shared, never changed in place.
    base: Snapshot,
    /// Sorted by name: where the client's versions differ from `base`.
    overlay: Vec<Change>,
}

static EMPTY: LazyLock<Snapshot> = LazyLock::new(|| Arc::new(Entries::new(Vec::new())));

impl Default for Held {
    fn default() -> Held {
        Held { base: EMPTY.clone(), overlay: Vec::new() }
    }
}

fn find<T>(v: &[(Arc<str>, T)], name: &str) -> Result<usize, usize> {
    v.binary_search_by(|(n, _)| (**n).cmp(name))
}

impl Held {
    fn base_tag(&self, name: &str) -> Option<u64> {
        self.base.entry(name).map(|e| e.1)
    }

    pub(super) fn get(&self, name: &str) -> Option<u64> {
        match find(&self.overlay, name) {
            Ok(i) => self.overlay[i].1,
            Err(_) => self.base_tag(name),
        }
    }

    pub(super) fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    fn set(&mut self, name: &Arc<str>, tag: Option<u64>) {
        let same_as_base = self.base_tag(name) == tag;
        match (find(&self.overlay, name), same_as_base) {
            (Ok(i), true) => {
                self.overlay.remove(i);
            }
            (Ok(i), false) => self.overlay[i].1 = tag,
            (Err(_), true) => {}
            (Err(i), false) => self.overlay.insert(i, (name.clone(), tag)),
        }
    }

    #[cfg(test)]
    fn insert(&mut self, name: &Arc<str>, tag: u64) {
        self.set(name, Some(tag));
    }

    pub(super) fn remove(&mut self, name: &str) {
        if let Ok(i) = find(&self.overlay, name) {
            if self.base_tag(name).is_some() {
                self.overlay[i].1 = None;
            } else {
                self.overlay.remove(i);
            }
        } else if let Some((name, _)) = self.base.entry(name) {
            let name = name.clone();
            self.set(&name, None);
        }
    }

    /// Applies many changes at once, in O(k log k) for k changes (inserting them one by one
    /// into the sorted overlay would move it k times: at `large` a sidecar's ~30,000
    /// assignments took seconds). Changes are given in order: a later change of a name wins.
    pub(super) fn apply(&mut self, changes: impl IntoIterator<Item = Change>) {
        let mut all = std::mem::take(&mut self.overlay);
        let older = all.len();
        all.extend(changes);
        if all.len() == older {
            self.overlay = all;
            return;
        }
        // Stable: equal names keep their order, so the last of each run is the latest change.
        all.sort_by(|a, b| a.0.cmp(&b.0));
        let mut overlay: Vec<Change> = Vec::with_capacity(all.len());
        for change in all {
            match overlay.last_mut() {
                Some(last) if last.0 == change.0 => *last = change,
                _ => overlay.push(change),
            }
        }
        // Where the client is back at the snapshot's version, nothing differs.
        overlay.retain(|(name, tag)| self.base_tag(name) != *tag);
        self.overlay = overlay;
    }

    /// The shared snapshot, when the store is settled (nothing differs from it): two settled
    /// stores with the same snapshot (the same allocation) hold exactly the same.
    pub(super) fn settled(&self) -> Option<&Snapshot> {
        self.overlay.is_empty().then_some(&self.base)
    }

    /// Makes the store hold exactly `snapshot`.
    pub(super) fn reset_to(&mut self, snapshot: Snapshot) {
        self.base = snapshot;
        self.overlay = Vec::new();
    }

    /// Whether anything is held or changed (a cheap check before a bulk removal).
    pub(super) fn any(&self) -> bool {
        !self.base.is_empty() || !self.overlay.is_empty()
    }

    /// Every name held, sorted.
    pub(super) fn names(&self) -> impl Iterator<Item = &str> {
        let mut names: Vec<&str> = self
            .base
            .iter()
            .filter(|(n, _)| find(&self.overlay, n).is_err())
            .map(|(n, _)| &**n)
            .chain(self.overlay.iter().filter(|(_, t)| t.is_some()).map(|(n, _)| &**n))
            .collect();
        names.sort_unstable();
        names.into_iter()
    }

    /// Folds the changes into a snapshot shared with every stream that made the same changes
    /// from the same snapshot.
    pub(super) fn settle(&mut self) {
        if self.overlay.is_empty() {
            return;
        }
        let overlay = std::mem::take(&mut self.overlay);
        self.base = TRANSITIONS.apply(&self.base, overlay);
    }

    /// Whether two stores share their snapshot (for tests).
    #[cfg(test)]
    fn shares_with(&self, other: &Held) -> bool {
        Arc::ptr_eq(&self.base, &other.base)
    }
}

/// `base` with `changes` applied (changes sorted by name, each name once). Chunks no change
/// falls in are shared with `base`; the others are rebuilt, split when long and joined to the
/// chunk before when short.
fn merge(base: &Entries, changes: &[Change]) -> Snapshot {
    let mut out: Vec<Arc<[Entry]>> = Vec::with_capacity(base.chunks.len() + changes.len() / CHUNK + 1);
    let mut rest = changes;
    let chunks = &base.chunks;
    for (i, chunk) in chunks.iter().enumerate() {
        // The changes before the next chunk's first name fall in this one (and, for the first
        // chunk, those before its own first name too).
        let here = match chunks.get(i + 1) {
            Some(next) => rest.partition_point(|(n, _)| n < &next[0].0),
            None => rest.len(),
        };
        let (mine, later) = rest.split_at(here);
        rest = later;
        if mine.is_empty() {
            out.push(chunk.clone());
        } else {
            push_rebuilt(&mut out, merge_run(chunk, mine));
        }
    }
    if chunks.is_empty() {
        push_rebuilt(&mut out, merge_run(&[], rest));
    }
    Arc::new(Entries::new(out))
}

/// A sorted run of entries with sorted changes applied.
fn merge_run(entries: &[Entry], changes: &[Change]) -> Vec<Entry> {
    let mut out = Vec::with_capacity(entries.len() + changes.len());
    let (mut b, mut c) = (entries.iter().peekable(), changes.iter().peekable());
    loop {
        match (b.peek(), c.peek()) {
            (Some(x), Some(y)) if x.0 < y.0 => out.push(b.next().expect("peeked").clone()),
            (Some(x), Some(y)) if x.0 == y.0 => {
                b.next();
            }
            (Some(_), None) => out.push(b.next().expect("peeked").clone()),
            (_, Some(_)) => {
                let (name, tag) = c.next().expect("peeked");
                if let Some(tag) = tag {
                    out.push((name.clone(), *tag));
                }
            }
            (None, None) => break,
        }
    }
    out
}

/// Appends a rebuilt run as chunks: joined to the previous chunk when short, split evenly when
/// long, nothing when empty.
fn push_rebuilt(out: &mut Vec<Arc<[Entry]>>, mut run: Vec<Entry>) {
    if !run.is_empty()
        && run.len() < CHUNK / 4
        && let Some(previous) = out.pop()
    {
        run.splice(0..0, previous.iter().cloned());
    }
    if run.is_empty() {
        return;
    }
    let pieces = if run.len() > 2 * CHUNK { run.len().div_ceil(CHUNK) } else { 1 };
    let (per, extra) = (run.len() / pieces, run.len() % pieces);
    let mut start = 0;
    for p in 0..pieces {
        let end = start + per + usize::from(p < extra);
        out.push(Arc::from(&run[start..end]));
        start = end;
    }
}

/// Transitions between snapshots, so that streams making the same changes share the result.
pub(super) static TRANSITIONS: LazyLock<Transitions> = LazyLock::new(Transitions::default);

#[derive(Default)]
pub(super) struct Transitions {
    inner: Mutex<TransitionMap>,
}

#[derive(Default)]
struct TransitionMap {
    /// By (address of the starting snapshot, hash of the changes).
    map: HashMap<(usize, u64), Vec<Transition>, foldhash::fast::RandomState>,
    len: usize,
    /// Changes the transitions keep, in all.
    changes: usize,
    /// Transitions and changes left after the last sweep: the next sweep comes when either has
    /// doubled (plus a little), so what dead transitions keep stays below what live ones do.
    swept_len: usize,
    swept_changes: usize,
}

struct Transition {
    /// Holds the starting snapshot's allocation, so its address is not reused while this
    /// transition is kept.
    from: Weak<Entries>,
    changes: Box<[Change]>,
    to: Weak<Entries>,
}

/// Hashes the changes with a fixed-seed foldhash (not SipHash: every stream hashes its
/// changes once per response). Collisions cost only a comparison: a transition is taken when
/// its changes are equal, entry by entry.
fn changes_hash(changes: &[Change]) -> u64 {
    foldhash::fast::FixedState::default().hash_one(changes)
}

impl Transitions {
    fn apply(&self, from: &Snapshot, changes: Vec<Change>) -> Snapshot {
        let key = (Arc::as_ptr(from) as usize, changes_hash(&changes));
        let lock = || self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let found = lock().map.get(&key).and_then(|ts| {
            ts.iter()
                .find(|t| std::ptr::eq(t.from.as_ptr(), Arc::as_ptr(from)) && *t.changes == changes[..])
                .and_then(|t| t.to.upgrade())
        });
        if let Some(to) = found {
            return to;
        }
        // Built outside the lock; two streams racing both build it, and the later one takes
        // the first's.
        let built = merge(from, &changes);
        let mut inner = lock();
        let inner = &mut *inner;
        let bucket = inner.map.entry(key).or_default();
        let existing =
            bucket.iter_mut().find(|t| std::ptr::eq(t.from.as_ptr(), Arc::as_ptr(from)) && *t.changes == changes[..]);
        let result = match existing {
            Some(t) => match t.to.upgrade() {
                Some(to) => to,
                None => {
                    t.to = Arc::downgrade(&built);
                    built
                }
            },
            None => {
                bucket.push(Transition {
                    from: Arc::downgrade(from),
                    changes: changes.into_boxed_slice(),
                    to: Arc::downgrade(&built),
                });
                inner.len += 1;
                inner.changes += bucket.last().map_or(0, |t| t.changes.len());
                built
            }
        };
        if inner.len > 2 * inner.swept_len + 64 || inner.changes > 2 * inner.swept_changes + 16_384 {
            inner.sweep();
        }
        result
    }

    /// Transitions kept (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).len
    }

    #[cfg(test)]
    fn sweep_now(&self) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).sweep();
    }
}

impl TransitionMap {
    /// Drops the transitions that no stream can take again: from a snapshot no stream holds,
    /// or to one no stream holds (the weak references keep their allocations until then).
    fn sweep(&mut self) {
        self.map.retain(|_, ts| {
            ts.retain(|t| t.from.strong_count() > 0 && t.to.strong_count() > 0);
            !ts.is_empty()
        });
        self.len = self.map.values().map(Vec::len).sum();
        self.changes = self.map.values().flatten().map(|t| t.changes.len()).sum();
        self.swept_len = self.len;
        self.swept_changes = self.changes;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u8, u64),
        Remove(u8),
        Settle,
        /// Several changes at once (`None`: a removal).
        Apply(Vec<(u8, Option<u64>)>),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..24, 0u64..3).prop_map(|(n, t)| Op::Insert(n, t)),
            2 => (0u8..24).prop_map(Op::Remove),
            1 => Just(Op::Settle),
            2 => proptest::collection::vec((0u8..24, proptest::option::of(0u64..3)), 0..12).prop_map(Op::Apply),
        ]
    }

    fn name(n: u8) -> Arc<str> {
        Arc::from(format!("outbound|{n}||svc.ns.svc.cluster.local"))
    }

    fn apply(held: &mut Held, model: &mut BTreeMap<String, u64>, op: &Op) {
        match op {
            Op::Insert(n, t) => {
                held.insert(&name(*n), *t);
                model.insert(name(*n).to_string(), *t);
            }
            Op::Remove(n) => {
                held.remove(&name(*n));
                model.remove(&*name(*n));
            }
            Op::Settle => held.settle(),
            Op::Apply(changes) => {
                held.apply(changes.iter().map(|(n, t)| (name(*n), *t)));
                for (n, t) in changes {
                    match t {
                        Some(t) => model.insert(name(*n).to_string(), *t),
                        None => model.remove(&*name(*n)),
                    };
                }
            }
        }
    }

    /// The snapshot's shape: chunks non-empty, none longer than twice the aim, all entries
    /// sorted.
    fn check_shape(s: &Entries) {
        assert!(s.chunks.iter().all(|c| !c.is_empty() && c.len() <= 2 * CHUNK), "chunk sizes");
        let names: Vec<&str> = s.iter().map(|(n, _)| &**n).collect();
        assert!(names.windows(2).all(|w| w[0] < w[1]), "sorted across chunks: {names:?}");
        assert_eq!(s.is_empty(), names.is_empty());
    }

    fn check(held: &Held, model: &BTreeMap<String, u64>) {
        check_shape(&held.base);
        let names: Vec<&str> = held.names().collect();
        let want: Vec<&str> = model.keys().map(String::as_str).collect();
        assert_eq!(names, want);
        for n in 0..24 {
            assert_eq!(held.get(&name(n)), model.get(&*name(n)).copied(), "{}", name(n));
            assert_eq!(held.contains(&name(n)), model.contains_key(&*name(n)));
        }
    }

    proptest! {
        /// Two streams: A applies `ops`, B applies the same ops and then its own. At every step
        /// each holds exactly what a plain map given the same operations holds, whatever the
        /// two share; after the same ops and a settle they share one snapshot.
        #[test]
        fn a_held_store_equals_a_plain_map_and_streams_in_step_share_it(
            ops in proptest::collection::vec(op(), 0..60),
            more in proptest::collection::vec(op(), 1..20),
        ) {
            let (mut a, mut b) = (Held::default(), Held::default());
            let (mut ma, mut mb) = (BTreeMap::new(), BTreeMap::new());
            for op in &ops {
                apply(&mut a, &mut ma, op);
                apply(&mut b, &mut mb, op);
                check(&a, &ma);
                check(&b, &mb);
            }
            a.settle();
            b.settle();
            prop_assert!(a.shares_with(&b), "same snapshot, same changes: one result");
            check(&a, &ma);
            for op in &more {
                apply(&mut b, &mut mb, op);
                check(&b, &mb);
                check(&a, &ma);
            }
            b.settle();
            check(&b, &mb);
            check(&a, &ma);
        }
    }

    #[test]
    fn a_hundred_streams_making_the_same_changes_hold_one_snapshot() {
        let mut streams: Vec<Held> = (0..100).map(|_| Held::default()).collect();
        for round in 0..3u64 {
            for s in &mut streams {
                for n in 0..50 {
                    s.insert(&name(n), round);
                }
                s.remove(&name(round as u8));
                s.settle();
            }
            assert!(streams.iter().all(|s| s.shares_with(&streams[0])), "round {round}");
            assert_eq!(streams[0].names().count(), 49);
        }
        // One stream's own change is its own.
        streams[7].insert(&name(0), 9);
        streams[7].settle();
        assert!(!streams[7].shares_with(&streams[0]));
        assert_eq!(streams[0].get(&name(0)), Some(2));
        assert_eq!(streams[7].get(&name(0)), Some(9));
    }

    /// The reason for chunks: a change copies one chunk, not the snapshot. Each step changes a
    /// name among 10,000 and settles; the new snapshot shares all chunks but the one or two the
    /// change fell in (a short chunk is joined to the one before it).
    #[test]
    fn a_settled_change_rebuilds_only_the_chunks_it_falls_in() {
        let mut held = Held::default();
        let mut model = BTreeMap::new();
        let many = |n: u32| Arc::<str>::from(format!("outbound|80||svc-{n:05}.ns.svc.cluster.local"));
        held.apply((0..10_000).map(|n| (many(n * 2), Some(0))));
        model.extend((0..10_000).map(|n| (many(n * 2).to_string(), 0)));
        held.settle();
        let chunks = held.base.chunks.len();
        assert!(chunks >= 10_000 / (2 * CHUNK), "{chunks} chunks");
        for step in 0..300u32 {
            let n = (step * 7919) % 20_001;
            let before = held.base.clone();
            match step % 3 {
                0 => {
                    held.insert(&many(n), u64::from(step));
                    model.insert(many(n).to_string(), u64::from(step));
                }
                1 => {
                    held.remove(&many(n));
                    model.remove(&*many(n));
                }
                _ => {
                    held.apply([(many(n), Some(1)), (many(n + 1), None)]);
                    model.insert(many(n).to_string(), 1);
                    model.remove(&*many(n + 1));
                }
            }
            held.settle();
            check_shape(&held.base);
            let shared = held.base.chunks.iter().filter(|c| before.chunks.iter().any(|b| Arc::ptr_eq(b, c))).count();
            assert!(
                held.base.chunks.len() - shared <= 3,
                "step {step}: {} new chunks",
                held.base.chunks.len() - shared
            );
        }
        let held_all: Vec<(&str, u64)> = held.base.iter().map(|(n, t)| (&**n, *t)).collect();
        let want: Vec<(&str, u64)> = model.iter().map(|(n, t)| (n.as_str(), *t)).collect();
        assert_eq!(held_all, want);
    }

    #[test]
    fn transitions_no_stream_can_take_are_swept() {
        let t = Transitions::default();
        let start: Snapshot = Arc::new(Entries::new(vec![Arc::from([(name(1), 1)])]));
        let kept = t.apply(&start, vec![(name(2), Some(2))]);
        let dropped = t.apply(&start, vec![(name(3), Some(3))]);
        assert_eq!(kept.iter().cloned().collect::<Vec<_>>(), [(name(1), 1), (name(2), 2)]);
        assert_eq!(t.len(), 2);
        drop(dropped);
        t.sweep_now();
        assert_eq!(t.len(), 1, "the transition to a snapshot nobody holds is gone");
        // The kept one is still found: the same changes give the same allocation.
        assert!(Arc::ptr_eq(&kept, &t.apply(&start, vec![(name(2), Some(2))])));
        drop(start);
        t.sweep_now();
        assert_eq!(t.len(), 0, "nobody holds the start any more");
    }

    #[test]
    fn a_kept_transition_does_not_keep_the_entries_of_snapshots_nobody_holds() {
        let t = Transitions::default();
        let only_in_start = name(1);
        let start: Snapshot = Arc::new(Entries::new(vec![Arc::from([(only_in_start.clone(), 1)])]));
        let to = t.apply(&start, vec![(name(2), Some(2))]);
        assert_eq!(Arc::strong_count(&only_in_start), 3, "here, in start and in its successor");
        drop(to);
        drop(start);
        assert_eq!(t.len(), 1, "not swept yet");
        assert_eq!(Arc::strong_count(&only_in_start), 1, "both snapshots' entries are freed");
    }
}
