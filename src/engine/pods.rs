//! What the engine's driver knows of each Pod: where its endpoints are placed, which labels
//! they carry, and whether the proxy graph reads it.
//!
//! An endpoint of a Pod is in the Pod's locality (its own `topology.istio.io/locality` label,
//! else its Node's topology labels) and is selected by subsets (and compared by
//! `failoverPriority`) by the Pod's labels. The endpoint graph used to join every endpoint row
//! with the Pods twice for that, on every row's path, and to keep every Pod's labels, locality
//! and endpoint rows arranged by pod. Here the driver holds each Pod's [`Placement`] and the
//! raw rows it fed for the Pod, and feeds the rows placed:
//! - an EndpointSlice change costs its changed rows and a map lookup each;
//! - a Pod's relabel, or its Node's, re-feeds the rows of that Pod (of the Pods on that Node);
//! - each known Pod's locality is an output of the engine (a connecting proxy that tells none
//!   is placed by its Pod's), which the driver emits itself when a placement changes;
//! - the unsliced graph reads the placements of the Pods its selectors may select, for the
//!   rows it derives from Pods itself (selector Services without slices, ServiceEntry
//!   `workloadSelector`s).
//!
//! The unsliced graph derives rows from whole Pods only for the selectors nothing else serves:
//! a selector Service without EndpointSlices or Endpoints, a ServiceEntry's `workloadSelector`.
//! In a cluster every selector Service has slices, so the driver gates the Pods it feeds to
//! that path ([`Gate`]): a Pod is fed whole (to the label index, with its placement) only while such a
//! selector of its namespace is keyed by one of its labels. A readiness flip of any other Pod
//! costs that path nothing. When a selector comes or goes, the Pods of its namespace that carry
//! its key are fed or retracted once, when the graphs next run (so a Service whose slices come
//! in the same batch costs nothing).
//!
//! The proxy graph resolves a proxy class's labels from the Pod the class names, else from the
//! Pods at its IP. Only those Pods can change its output, so the driver feeds it only them: a
//! Pod no class names, at an IP no class has, costs the proxy graph nothing.

use std::sync::Arc;

use foldhash::{HashMap, HashMapExt, HashSet};
use serde::{Deserialize, Serialize};

use super::proxies::PodIdentity;
use crate::model::istio::ServiceEntry;
use crate::model::k8s::Labels;
use crate::model::proxy::{ClassLabels, ProxyClass};
use crate::model::{Node, Pod, Service};
use crate::translate::endpoint::{EndpointRow, PodKey, PortKey, node_locality, pod_locality_label};
use crate::translate::{EndpointAddr, service_entry};

/// (namespace, service name)
pub type SvcKey = (String, String);
/// A core/v1 Endpoints row: the service it belongs to, its port, the address.
pub type ServiceRow = (SvcKey, (PortKey, EndpointRow));

/// What the unsliced graph's label index reads of a Pod: its labels and whether it is live
/// (has an IP and is not terminal). A readiness flip leaves it equal, so the driver feeds the
/// flip to the pods by name alone.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PodLabels {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    pub live: bool,
}

impl PodLabels {
    pub fn of(p: &Pod) -> PodLabels {
        PodLabels { namespace: p.namespace.clone(), name: p.name.clone(), labels: p.labels.clone(), live: p.live() }
    }
}

/// A label (key, value).
pub type Pair = (String, String);

/// The pair a selector is keyed by in the unsliced graph's label index (and in the [`Gate`]):
/// its first in key order. An empty selector selects nothing there.
pub fn first_pair(selector: &Labels) -> Option<Pair> {
    selector.iter().next().map(|(k, v)| (k.clone(), v.clone()))
}

/// The pair a Service's selector is keyed by, if the unsliced graph would derive its
/// endpoints from Pods (when it has no slices and no Endpoints).
pub fn service_pair(s: &Service) -> Option<Pair> {
    if s.external_name.is_some() {
        return None;
    }
    first_pair(s.selector.as_ref()?)
}

/// The pair a ServiceEntry's `workloadSelector` is keyed by, if it selects Pods.
pub fn entry_pair(se: &ServiceEntry) -> Option<Pair> {
    first_pair(&service_entry::selector(se)?.selector)
}

/// Where a Pod's endpoints are and what selects them: its labels and its locality ("" when
/// neither its labels nor its Node's give one).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Placement {
    pub labels: Labels,
    pub locality: Arc<str>,
}

impl Placement {
    /// Places an endpoint of the Pod: the Pod's labels, and its locality unless the endpoint
    /// has its own. A row without Pod is left as it is.
    pub fn place(&self, row: &mut EndpointRow) {
        if row.pod.is_none() {
            return;
        }
        row.labels = self.labels.clone();
        if row.addr.locality.is_empty() {
            row.addr.locality = self.locality.clone();
        }
    }

    /// The row of `pod` at `addr`, placed.
    fn row(&self, pod: &PodKey, addr: &EndpointAddr) -> EndpointRow {
        let mut row = EndpointRow { addr: addr.clone(), pod: Some(pod.clone()), labels: Labels::new() };
        self.place(&mut row);
        row
    }
}

/// A [`PodKey`] borrowed: it hashes as the key does, so the index finds a Pod by its names
/// without building its key (two strings allocated and freed per lookup).
#[derive(Hash)]
struct PodRef<'a>(&'a str, &'a str);

impl hashbrown::Equivalent<PodKey> for PodRef<'_> {
    fn equivalent(&self, key: &PodKey) -> bool {
        *key.0 == *self.0 && *key.1 == *self.1
    }
}

/// Which input a raw row came from: an EndpointSlice's, or a core/v1 Endpoints object's (of
/// that service: those count only for services without slices, which the graph decides).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Slice,
    Endpoints(Arc<SvcKey>),
}

/// A raw row the driver fed for a Pod: its input, its port and its address (the row is
/// `EndpointRow { addr, pod, labels: none }`, placed). Kept small: there is one per endpoint
/// of every Pod.
#[derive(Debug, PartialEq, Eq)]
struct Fed {
    source: Source,
    port: PortKey,
    addr: EndpointAddr,
}

/// What a change asks the graphs to read, drained by [`super::graphs::Graphs`] after each.
#[derive(Default)]
pub struct Feeds {
    /// Whole Pods and their labels, for the selectors the [`Gate`] lets through.
    pub pods: Vec<(Arc<Pod>, isize)>,
    pub labelled: Vec<(PodLabels, isize)>,
    pub slice_rows: Vec<((PortKey, EndpointRow), isize)>,
    pub endpoint_rows: Vec<(ServiceRow, isize)>,
    /// Every known Pod's placement (its locality is an output of the engine).
    pub placements: Vec<((PodKey, Placement), isize)>,
    /// The placements of the Pods the selector path holds.
    pub selected_placements: Vec<((PodKey, Placement), isize)>,
    pub identities: Vec<(PodIdentity, isize)>,
}

impl Feeds {
    /// Feeds (`diff` 1) or retracts (-1) a Pod to the selector path.
    fn selected(&mut self, pod: &Arc<Pod>, diff: isize) {
        self.pods.push((Arc::clone(pod), diff));
        self.labelled.push((PodLabels::of(pod), diff));
    }

    fn row(&mut self, source: &Source, key: &PortKey, row: EndpointRow, diff: isize) {
        match source {
            Source::Slice => self.slice_rows.push(((key.clone(), row), diff)),
            Source::Endpoints(svc) => self.endpoint_rows.push((((**svc).clone(), (key.clone(), row)), diff)),
        }
    }
}

/// What the index keeps of an existing Pod.
struct Facts {
    pod: Arc<Pod>,
    node: Option<Arc<str>>,
    /// Its IP while it is not terminal (as [`PodIdentity`] has it).
    ip: Option<Arc<str>>,
    /// Whether the selector path holds it (the [`Gate`] lets it through).
    selected: bool,
}

/// One Pod: known, or only named by endpoint rows (then placed nowhere, labelled with nothing).
#[derive(Default)]
struct Entry {
    pod: Option<Facts>,
    /// What its rows were fed with.
    placement: Placement,
    /// The raw rows fed for it, a multiset.
    rows: Vec<Fed>,
}

/// The driver's index of Pods, Nodes' localities and proxy classes' references to Pods.
#[derive(Default)]
pub struct Pods {
    entries: hashbrown::HashMap<PodKey, Entry, foldhash::fast::RandomState>,
    /// Node name → its locality ("" when its labels give none).
    nodes: HashMap<Arc<str>, Arc<str>>,
    /// Node name → the known Pods on it (a few hundred at most: a set, so a Pod that goes
    /// costs no scan).
    on_node: HashMap<Arc<str>, HashSet<PodKey>>,
    /// Live IP → the known Pods at it (one, mostly).
    by_ip: HashMap<Arc<str>, Vec<PodKey>>,
    /// Namespace → label key → value → the known Pods there with that label, for a selector
    /// that comes or goes.
    /// (Sets: a label such as `version: v1` may be on most Pods of a namespace.)
    by_pair: HashMap<Arc<str>, ByLabel<HashSet<Arc<str>>>>,
    gate: Gate,
    /// How many proxy classes name each Pod, and look at each IP.
    class_pods: HashMap<PodKey, usize>,
    class_ips: HashMap<Arc<str>, usize>,
}

impl Pods {
    /// Replaces Pod `old` by `new` (the same Pod, either may be absent).
    pub fn pod(&mut self, old: Option<&Arc<Pod>>, new: Option<&Arc<Pod>>, feeds: &mut Feeds) {
        let Some(any) = old.or(new) else { return };
        // A change that leaves all the index reads of a Pod no selector path holds, before or
        // after (its labels, Node and IP, whether it is terminal): a readiness flip, mostly.
        // Only the held Pod is replaced; its placement, rows and identity stay as they are.
        if let (Some(_), Some(new)) = (old, new)
            && let Some(Entry { pod: Some(facts), .. }) = self.entries.get_mut(&PodRef(&new.namespace, &new.name))
            && !facts.selected
            && facts.pod.labels == new.labels
            && facts.pod.terminal == new.terminal
            && facts.pod.ip == new.ip
            && facts.pod.node_name == new.node_name
            && !self.gate.reads(&new.namespace, &new.labels)
        {
            facts.pod = Arc::clone(new);
            return;
        }
        let key = any.key();
        let identity_before = self.identity(&key);
        let entry = self.entries.entry(key.clone()).or_default();
        let held = entry.pod.take();
        let (held_node, held_ip) = held.as_ref().map_or((None, None), |f| (f.node.clone(), f.ip.clone()));
        // (A readiness flip keeps Node and IP: the indexes are left as they are.)
        let node = reindex(&mut self.on_node, held_node, new.and_then(|p| p.node_name.as_deref()), &key);
        let ip = reindex(&mut self.by_ip, held_ip, new.and_then(|p| p.ip.as_deref().filter(|_| !p.terminal)), &key);
        let (held_labels, new_labels) = (held.as_ref().map(|f| &f.pod.labels), new.map(|p| &p.labels));
        if held_labels != new_labels {
            index_labels(&mut self.by_pair, &key, held_labels, new_labels);
        }
        // The selector path: the Pod as it was fed goes, the Pod as it is comes if the gate lets
        // it through (its labels fed only if they changed).
        let was = held.as_ref().filter(|f| f.selected).map(|f| &f.pod);
        let is = new.filter(|p| self.gate.reads(&p.namespace, &p.labels));
        if was.map(Arc::as_ptr) != is.map(Arc::as_ptr) {
            feeds.pods.extend(was.map(|p| (Arc::clone(p), -1)));
            feeds.pods.extend(is.map(|p| (Arc::clone(p), 1)));
            let (was, is) = (was.map(|p| PodLabels::of(p)), is.map(|p| PodLabels::of(p)));
            if was != is {
                feeds.labelled.extend(was.map(|p| (p, -1)));
                feeds.labelled.extend(is.map(|p| (p, 1)));
            }
        }
        let placement = match new {
            Some(p) => {
                let placement = resolve(&p.labels, node.as_ref().and_then(|n| self.nodes.get(n)));
                entry.pod = Some(Facts { pod: Arc::clone(p), node, ip, selected: is.is_some() });
                placement
            }
            None => Placement::default(),
        };
        let was = old.map(|_| entry.placement.clone());
        replace_placement(&key, entry, placement, feeds);
        let is = new.map(|_| entry.placement.clone());
        // (The selector path reads the placements of the Pods it holds only: most Pods cost it
        // no copy.)
        let selected = |placement: &Option<Placement>, facts: Option<&Facts>| {
            placement.as_ref().filter(|_| facts.is_some_and(|f| f.selected)).cloned()
        };
        let (was_selected, is_selected) = (selected(&was, held.as_ref()), selected(&is, entry.pod.as_ref()));
        if was_selected != is_selected {
            feeds.selected_placements.extend(was_selected.map(|p| ((key.clone(), p), -1)));
            feeds.selected_placements.extend(is_selected.map(|p| ((key.clone(), p), 1)));
        }
        if was != is {
            feeds.placements.extend(was.map(|p| ((key.clone(), p), -1)));
            feeds.placements.extend(is.map(|p| ((key.clone(), p), 1)));
        }
        if entry.pod.is_none() && entry.rows.is_empty() {
            self.entries.remove(&key);
        }
        let identity_after = self.identity(&key);
        identity_change(identity_before, identity_after, feeds);
    }

    /// Adds (`diff` 1) or removes (-1) a Service: its selector, if it has one, opens the gate
    /// for the Pods it keys by while the Service has no slices and no Endpoints.
    pub fn service(&mut self, s: &Service, diff: isize) {
        let pair = if diff > 0 { service_pair(s) } else { None };
        self.gate.service((s.namespace.clone(), s.name.clone()), |g| g.pair = pair);
    }

    /// A slice (`diff` 1) or Endpoints object (`endpoints`) of `svc` came (1) or went (-1).
    pub fn managed(&mut self, svc: &SvcKey, endpoints: bool, diff: isize) {
        self.gate.service(svc.clone(), |g| {
            let n = if endpoints { &mut g.endpoints } else { &mut g.slices };
            *n = n.saturating_add_signed(diff);
        });
    }

    /// Adds (`diff` 1) or removes (-1) a ServiceEntry: its `workloadSelector` opens the gate.
    pub fn entry(&mut self, se: &ServiceEntry, diff: isize) {
        if let Some(pair) = entry_pair(se) {
            self.gate.count(&se.namespace, pair, diff);
        }
    }

    /// Feeds or retracts the Pods whose gate opened or closed since the last call: those of a
    /// selector's namespace that carry its pair.
    pub fn reconcile(&mut self, feeds: &mut Feeds) {
        let Pods { entries, by_pair, gate, .. } = self;
        // (A pair open at the last call and open again, or closed and closed again, is looked at
        // all the same: a Pod that came while it was otherwise was fed as the gate was then. A
        // Service, its Pods and its slice in one time open the gate, feed the Pods and close
        // it: they are retracted here, in the same time, and the unsliced graph holds none.)
        for (ns, (k, v)) in std::mem::take(&mut gate.moved) {
            let Some(names) = by_pair.get(ns.as_str()).and_then(|m| m.get(k.as_str())).and_then(|m| m.get(v.as_str()))
            else {
                continue;
            };
            let ns: Arc<str> = ns.into();
            for name in names {
                let key = (ns.clone(), name.clone());
                let Some(Entry { pod: Some(facts), placement, .. }) = entries.get_mut(&key) else {
                    continue;
                };
                let reads = gate.reads(&ns, &facts.pod.labels);
                if reads != facts.selected {
                    facts.selected = reads;
                    let diff = if reads { 1 } else { -1 };
                    feeds.selected(&facts.pod, diff);
                    feeds.selected_placements.push(((key, placement.clone()), diff));
                }
            }
        }
    }

    /// Replaces Node `old` by `new` (the same Node, either may be absent): the Pods on it that
    /// take their locality from it are placed again.
    pub fn node(&mut self, old: Option<&Node>, new: Option<&Node>, feeds: &mut Feeds) {
        let Some(any) = old.or(new) else { return };
        let name: Arc<str> = any.name.as_str().into();
        let locality: Option<Arc<str>> = new.map(|n| node_locality(&n.labels).into());
        let before = match &locality {
            Some(l) => self.nodes.insert(name.clone(), l.clone()),
            None => self.nodes.remove(&name),
        };
        if before == locality {
            return;
        }
        let pods: Vec<PodKey> = self.on_node.get(&name).map(|on| on.iter().cloned().collect()).unwrap_or_default();
        for key in pods {
            let Some(entry) = self.entries.get_mut(&key) else { continue };
            let placement = resolve(&entry.placement.labels, locality.as_ref());
            if placement != entry.placement {
                feeds.placements.push(((key.clone(), entry.placement.clone()), -1));
                feeds.placements.push(((key.clone(), placement.clone()), 1));
                if entry.pod.as_ref().is_some_and(|f| f.selected) {
                    feeds.selected_placements.push(((key.clone(), entry.placement.clone()), -1));
                    feeds.selected_placements.push(((key.clone(), placement.clone()), 1));
                }
                replace_placement(&key, entry, placement, feeds);
            }
        }
    }

    /// Places a raw row of a Pod as its rows were fed: with the Pod's placement.
    pub fn place(&self, row: &mut EndpointRow) {
        if let Some(entry) = row.pod.as_ref().and_then(|pod| self.entries.get(pod)) {
            entry.placement.place(row);
        }
    }

    /// Feeds the raw rows that went and came from `source`, each row of a Pod placed with the
    /// Pod's placement and kept with it.
    pub fn rows(
        &mut self,
        source: Source,
        gone: Vec<(PortKey, EndpointRow)>,
        came: Vec<(PortKey, EndpointRow)>,
        feeds: &mut Feeds,
    ) {
        for (key, row) in gone {
            let Some(pod) = row.pod.clone() else {
                feeds.row(&source, &key, row, -1);
                continue;
            };
            // (A row that goes was fed, so its Pod's entry holds it.)
            let Some(entry) = self.entries.get_mut(&pod) else { continue };
            let Some(at) = entry.rows.iter().position(|f| f.source == source && f.port == key && f.addr == row.addr)
            else {
                continue;
            };
            entry.rows.swap_remove(at);
            feeds.row(&source, &key, entry.placement.row(&pod, &row.addr), -1);
            if entry.pod.is_none() && entry.rows.is_empty() {
                self.entries.remove(&pod);
            }
        }
        for (key, row) in came {
            let Some(pod) = row.pod.clone() else {
                feeds.row(&source, &key, row, 1);
                continue;
            };
            let entry = self.entries.entry(pod.clone()).or_default();
            feeds.row(&source, &key, entry.placement.row(&pod, &row.addr), 1);
            if entry.rows.capacity() == 0 {
                entry.rows.reserve_exact(1);
            }
            entry.rows.push(Fed { source: source.clone(), port: key, addr: row.addr });
        }
    }

    /// Adds (`diff` 1) or removes (-1) a proxy class: the Pods it names, or that are at its IP,
    /// are fed to the proxy graph while some class reads them.
    pub fn class(&mut self, class: &ProxyClass, diff: isize, feeds: &mut Feeds) {
        let ClassLabels::OfPod { pod, ip } = &class.labels else { return };
        let named: PodKey = (class.namespace.as_str().into(), pod.as_str().into());
        let ip: Option<Arc<str>> = ip.as_deref().map(Arc::from);
        // (Each Pod once: the named Pod is often the one at the IP too.)
        let mut affected = vec![named.clone()];
        if let Some(pods) = ip.as_ref().and_then(|ip| self.by_ip.get(ip)) {
            affected.extend(pods.iter().filter(|k| **k != named).cloned());
        }
        let before: Vec<Option<PodIdentity>> = affected.iter().map(|k| self.identity(k)).collect();
        count(&mut self.class_pods, named, diff);
        if let Some(ip) = ip {
            count(&mut self.class_ips, ip, diff);
        }
        for (key, before) in affected.iter().zip(before) {
            identity_change(before, self.identity(key), feeds);
        }
    }

    /// The Pod's identity if it exists and the proxy graph reads it.
    fn identity(&self, key: &PodKey) -> Option<PodIdentity> {
        let entry = self.entries.get(key)?;
        let facts = entry.pod.as_ref()?;
        let at_class_ip = facts.ip.as_ref().is_some_and(|ip| self.class_ips.contains_key(ip));
        (self.class_pods.contains_key(key) || at_class_ip).then(|| PodIdentity {
            namespace: key.0.to_string(),
            name: key.1.to_string(),
            labels: entry.placement.labels.clone(),
            ip: facts.ip.as_deref().map(str::to_string),
        })
    }
}

/// Which Pods the unsliced graph's selector path reads: those with a label that a selector
/// Service without slices or Endpoints, or a ServiceEntry's `workloadSelector`, of their
/// namespace is keyed by ([`first_pair`], as the graph's label index keys them).
#[derive(Default)]
pub struct Gate {
    /// Namespace → label key → value → how many such selectors are keyed by it.
    open: HashMap<String, ByLabel<usize>>,
    /// What the gate knows of each Service with a selector pair, slices or Endpoints.
    services: HashMap<SvcKey, ServiceGate>,
    /// The pairs whose count went to or from zero since the last reconcile.
    moved: HashSet<(String, Pair)>,
}

/// A Service's selector pair, and how many slices and Endpoints objects serve it.
#[derive(Default)]
struct ServiceGate {
    pair: Option<Pair>,
    slices: usize,
    endpoints: usize,
}

impl ServiceGate {
    /// The pair the Service opens: its own, while nothing else serves it.
    fn opens(&self) -> Option<&Pair> {
        self.pair.as_ref().filter(|_| self.slices == 0 && self.endpoints == 0)
    }
}

/// Label key → value → `T`: looked up by `&str`, without building a pair.
type ByLabel<T> = HashMap<String, HashMap<String, T>>;

impl Gate {
    /// Whether a selector of `namespace` is keyed by (`k`, `v`).
    fn is_open(&self, namespace: &str, k: &str, v: &str) -> bool {
        self.open.get(namespace).and_then(|keys| keys.get(k)).is_some_and(|values| values.contains_key(v))
    }

    /// Whether a Pod of `namespace` with `labels` is read.
    fn reads(&self, namespace: &str, labels: &Labels) -> bool {
        // (Most namespaces have no such selector: one lookup.)
        self.open.contains_key(namespace) && labels.iter().any(|(k, v)| self.is_open(namespace, k, v))
    }

    /// Changes what the gate knows of Service `svc` by `change`.
    fn service(&mut self, svc: SvcKey, change: impl FnOnce(&mut ServiceGate)) {
        let g = self.services.entry(svc.clone()).or_default();
        let before = g.opens().cloned();
        change(g);
        let after = g.opens().cloned();
        if g.pair.is_none() && g.slices == 0 && g.endpoints == 0 {
            self.services.remove(&svc);
        }
        if before != after {
            if let Some(pair) = before {
                self.count(&svc.0, pair, -1);
            }
            if let Some(pair) = after {
                self.count(&svc.0, pair, 1);
            }
        }
    }

    /// Counts one selector more (`diff` 1) or less (-1) keyed by `pair` in `namespace`.
    fn count(&mut self, namespace: &str, pair: Pair, diff: isize) {
        let keys = self.open.entry(namespace.to_string()).or_default();
        let values = keys.entry(pair.0.clone()).or_default();
        let n = values.entry(pair.1.clone()).or_default();
        let was = *n;
        *n = n.saturating_add_signed(diff);
        let now = *n;
        if now == 0 {
            values.remove(&pair.1);
            if values.is_empty() {
                keys.remove(&pair.0);
                if keys.is_empty() {
                    self.open.remove(namespace);
                }
            }
        }
        if (was == 0) != (now == 0) {
            self.moved.insert((namespace.to_string(), pair));
        }
    }
}

/// Moves Pod `key` in the label index from the pairs of `held` to those of `now`.
fn index_labels(
    index: &mut HashMap<Arc<str>, ByLabel<HashSet<Arc<str>>>>,
    key: &PodKey,
    held: Option<&Labels>,
    now: Option<&Labels>,
) {
    if let Some(labels) = held
        && let Some(keys) = index.get_mut(&key.0)
    {
        for (k, v) in labels.iter() {
            let Some(values) = keys.get_mut(k.as_str()) else { continue };
            if let Some(names) = values.get_mut(v.as_str()) {
                names.remove(&key.1);
                if names.is_empty() {
                    values.remove(v.as_str());
                }
            }
            if values.is_empty() {
                keys.remove(k.as_str());
            }
        }
        if keys.is_empty() {
            index.remove(&key.0);
        }
    }
    if let Some(labels) = now {
        let keys = index.entry(key.0.clone()).or_default();
        for (k, v) in labels.iter() {
            // (A key and value already indexed are not copied again.)
            if !keys.contains_key(k.as_str()) {
                keys.insert(k.clone(), HashMap::new());
            }
            let values = keys.get_mut(k.as_str()).expect("inserted above");
            match values.get_mut(v.as_str()) {
                Some(names) => {
                    names.insert(key.1.clone());
                }
                None => {
                    values.insert(v.clone(), HashSet::from_iter([key.1.clone()]));
                }
            }
        }
    }
}

/// A Pod's placement: its labels, and the locality its labels give, else its Node's.
fn resolve(labels: &Labels, node_locality: Option<&Arc<str>>) -> Placement {
    let locality = match pod_locality_label(labels) {
        Some(own) => own.into(),
        None => node_locality.cloned().unwrap_or_default(),
    };
    Placement { labels: labels.clone(), locality }
}

/// Gives `entry` its new placement, feeding its rows again if it differs.
fn replace_placement(key: &PodKey, entry: &mut Entry, placement: Placement, feeds: &mut Feeds) {
    if placement == entry.placement {
        return;
    }
    for fed in &entry.rows {
        feeds.row(&fed.source, &fed.port, entry.placement.row(key, &fed.addr), -1);
        feeds.row(&fed.source, &fed.port, placement.row(key, &fed.addr), 1);
    }
    entry.placement = placement;
}

fn identity_change(before: Option<PodIdentity>, after: Option<PodIdentity>, feeds: &mut Feeds) {
    if before != after {
        feeds.identities.extend(before.map(|i| (i, -1)));
        feeds.identities.extend(after.map(|i| (i, 1)));
    }
}

/// Moves `key` in `index` from the list at `held` to the list at `now` (either may be absent),
/// unless they are the same; returns `now` as the index holds it (one string for every Pod on
/// a Node).
fn reindex<M: Members>(
    index: &mut HashMap<Arc<str>, M>,
    held: Option<Arc<str>>,
    now: Option<&str>,
    key: &PodKey,
) -> Option<Arc<str>> {
    if held.as_deref() == now {
        return held;
    }
    if let Some(at) = &held
        && let Some(keys) = index.get_mut(at)
    {
        keys.take(key);
        if keys.is_empty() {
            index.remove(at);
        }
    }
    let now = now?;
    let at: Arc<str> = index.get_key_value(now).map_or_else(|| now.into(), |(at, _)| at.clone());
    index.entry(at.clone()).or_default().put(key.clone());
    Some(at)
}

/// The Pods an index holds at one value: a list where there is one or two (an IP's), a set
/// where there may be hundreds (a Node's).
trait Members: Default {
    fn put(&mut self, key: PodKey);
    fn take(&mut self, key: &PodKey);
    fn is_empty(&self) -> bool;
}

impl Members for Vec<PodKey> {
    fn put(&mut self, key: PodKey) {
        self.push(key);
    }
    fn take(&mut self, key: &PodKey) {
        if let Some(i) = self.iter().position(|k| k == key) {
            self.swap_remove(i);
        }
    }
    fn is_empty(&self) -> bool {
        Vec::is_empty(self)
    }
}

impl Members for HashSet<PodKey> {
    fn put(&mut self, key: PodKey) {
        self.insert(key);
    }
    fn take(&mut self, key: &PodKey) {
        self.remove(key);
    }
    fn is_empty(&self) -> bool {
        HashSet::is_empty(self)
    }
}

fn count<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: K, diff: isize) {
    use std::collections::hash_map::Entry;
    match counts.entry(key) {
        Entry::Occupied(mut n) => {
            *n.get_mut() = n.get().saturating_add_signed(diff);
            if *n.get() == 0 {
                n.remove();
            }
        }
        Entry::Vacant(v) => {
            if diff > 0 {
                v.insert(diff as usize);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::proxy::ProxyKind;

    fn pod(app: &str, ip: Option<&str>) -> Pod {
        Pod {
            namespace: "default".into(),
            name: "p".into(),
            labels: Labels::from([("app".to_string(), app.to_string())]),
            ip: ip.map(str::to_string),
            node_name: None,
            ready: true,
            terminal: false,
            ports: Vec::new(),
        }
    }

    /// The proxy graph holds a Pod once however a class reads it: by its name and at its IP
    /// both, the Pod is fed once, and its change replaces it.
    #[test]
    fn a_pod_a_class_names_and_is_at_the_ip_of_is_fed_once() {
        let (mut pods, mut feeds) = (Pods::default(), Feeds::default());
        let web = Arc::new(pod("web", Some("10.0.0.3")));
        pods.pod(None, Some(&web), &mut feeds);
        assert!(feeds.identities.is_empty(), "no class reads it yet");
        let class = ProxyClass {
            kind: ProxyKind::Router,
            namespace: "default".into(),
            labels: ClassLabels::OfPod { pod: "p".into(), ip: Some("10.0.0.3".into()) },
        };
        pods.class(&class, 1, &mut feeds);
        let fed: Vec<isize> = feeds.identities.drain(..).map(|(_, d)| d).collect();
        assert_eq!(fed, vec![1]);
        let reviews = Arc::new(pod("reviews", None));
        pods.pod(Some(&web), Some(&reviews), &mut feeds);
        let fed: Vec<(String, isize)> =
            feeds.identities.drain(..).map(|(i, d)| (i.labels.get("app").cloned().unwrap_or_default(), d)).collect();
        assert_eq!(fed, vec![("web".to_string(), -1), ("reviews".to_string(), 1)]);
        pods.class(&class, -1, &mut feeds);
        let fed: Vec<isize> = feeds.identities.drain(..).map(|(_, d)| d).collect();
        assert_eq!(fed, vec![-1], "the class gone, the Pod leaves the proxy graph");
    }

    fn service(selector: Option<&str>) -> Service {
        Service {
            namespace: "default".into(),
            name: "web".into(),
            ports: Vec::new(),
            selector: selector.map(|app| Labels::from([("app".to_string(), app.to_string())])),
            cluster_ip: None,
            external_name: None,
            publish_not_ready_addresses: false,
            export_to: Vec::new(),
        }
    }

    /// The whole Pods fed, by app label and readiness; the labels fed must be theirs, but for
    /// a readiness flip (labels and liveness unchanged), which feeds none.
    fn fed(feeds: &mut Feeds) -> Vec<(String, bool, isize)> {
        let labels: Vec<_> = feeds.labelled.drain(..).map(|(p, d)| (p.labels, d)).collect();
        let whole: Vec<_> = feeds.pods.iter().map(|(p, d)| (p.labels.clone(), *d)).collect();
        let flip = whole.len() == 2 && whole[0].0 == whole[1].0 && whole[0].1 == -whole[1].1;
        assert_eq!(labels, if flip { Vec::new() } else { whole }, "the label index follows the whole Pods");
        feeds.pods.drain(..).map(|(p, d)| (p.labels.get("app").cloned().unwrap_or_default(), p.ready, d)).collect()
    }

    /// The selector path reads a Pod only while a selector Service without slices or
    /// Endpoints (or an entry's workloadSelector) of its namespace is keyed by one of its
    /// labels; a selector that comes or goes feeds or retracts the Pods it keys by, once, when
    /// the graphs next run.
    #[test]
    fn the_selector_path_reads_only_the_pods_a_selector_without_slices_keys_by() {
        let (mut pods, mut feeds) = (Pods::default(), Feeds::default());
        let web = Arc::new(pod("web", Some("10.0.0.3")));
        let db = Arc::new(Pod { name: "q".into(), ..pod("db", Some("10.0.0.4")) });
        pods.pod(None, Some(&web), &mut feeds);
        pods.pod(None, Some(&db), &mut feeds);
        assert!(fed(&mut feeds).is_empty(), "no selector reads them");

        // A selector Service whose slice comes in the same time: nothing is fed.
        let svc: SvcKey = ("default".into(), "web".into());
        pods.service(&service(Some("web")), 1);
        pods.managed(&svc, false, 1);
        pods.reconcile(&mut feeds);
        assert!(fed(&mut feeds).is_empty(), "the slice serves it");

        // A Pod that comes between a Service and its slice, in one time (as a whole cluster
        // loads): fed while the gate was open, retracted when the time runs; the Pod is not
        // read after.
        let svc2: SvcKey = ("default".into(), "web2".into());
        pods.service(&Service { name: "web2".into(), ..service(Some("web2")) }, 1);
        let web2 = Arc::new(Pod { name: "w2".into(), ..pod("web2", Some("10.0.0.5")) });
        pods.pod(None, Some(&web2), &mut feeds);
        pods.managed(&svc2, false, 1);
        pods.reconcile(&mut feeds);
        let net = |diffs: Vec<isize>| (diffs.len(), diffs.iter().sum::<isize>());
        assert_eq!(net(feeds.pods.drain(..).map(|(_, d)| d).collect()), (2, 0), "fed, then retracted");
        assert_eq!(net(feeds.labelled.drain(..).map(|(_, d)| d).collect()), (2, 0));
        assert_eq!(net(feeds.selected_placements.drain(..).map(|(_, d)| d).collect()), (2, 0));
        let web2_unready = Arc::new(Pod { ready: false, ..(*web2).clone() });
        pods.pod(Some(&web2), Some(&web2_unready), &mut feeds);
        pods.pod(Some(&web2_unready), None, &mut feeds);
        assert!(fed(&mut feeds).is_empty(), "no longer read: its flip and its removal feed nothing");
        assert!(feeds.selected_placements.is_empty());

        // Its slice goes: the Pods labelled app=web are read, db is not.
        pods.managed(&svc, false, -1);
        pods.reconcile(&mut feeds);
        assert_eq!(fed(&mut feeds), vec![("web".to_string(), true, 1)]);
        // A readiness flip of a read Pod replaces it; of another, feeds nothing.
        let unready = Arc::new(Pod { ready: false, ..(*web).clone() });
        pods.pod(Some(&web), Some(&unready), &mut feeds);
        assert_eq!(fed(&mut feeds), vec![("web".to_string(), true, -1), ("web".to_string(), false, 1)]);
        let db_unready = Arc::new(Pod { ready: false, ..(*db).clone() });
        pods.pod(Some(&db), Some(&db_unready), &mut feeds);
        assert!(fed(&mut feeds).is_empty());
        // Relabelled out of the selector's pair: retracted; back in: fed.
        let relabelled = Arc::new(pod("other", Some("10.0.0.3")));
        pods.pod(Some(&unready), Some(&relabelled), &mut feeds);
        assert_eq!(fed(&mut feeds), vec![("web".to_string(), false, -1)]);
        pods.pod(Some(&relabelled), Some(&web), &mut feeds);
        assert_eq!(fed(&mut feeds), vec![("web".to_string(), true, 1)]);

        // Endpoints take over: retracted at the next run. A workloadSelector keyed by the same
        // pair opens it again.
        pods.managed(&svc, true, 1);
        pods.reconcile(&mut feeds);
        assert_eq!(fed(&mut feeds), vec![("web".to_string(), true, -1)]);
        let doc = serde_json::json!({
            "apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
            "metadata": {"name": "vm", "namespace": "default"},
            "spec": {"hosts": ["vm.example.com"], "resolution": "STATIC",
                     "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
                     "workloadSelector": {"labels": {"app": "web"}}}
        });
        let entry = match crate::model::parse_document(doc, "default").pop() {
            Some(crate::model::ParseOutcome::Object(crate::model::Object::ServiceEntry(se))) => *se,
            other => panic!("not an entry: {other:?}"),
        };
        assert_eq!(entry_pair(&entry), Some(("app".to_string(), "web".to_string())));
        pods.entry(&entry, 1);
        pods.reconcile(&mut feeds);
        assert_eq!(fed(&mut feeds), vec![("web".to_string(), true, 1)]);
        // The Pod goes while read: retracted as it was fed.
        pods.pod(Some(&web), None, &mut feeds);
        assert_eq!(fed(&mut feeds), vec![("web".to_string(), true, -1)]);
        pods.entry(&entry, -1);
        pods.reconcile(&mut feeds);
        assert!(fed(&mut feeds).is_empty());
    }

    /// A readiness flip of a Pod no selector reads feeds nothing, and replaces the Pod held: a
    /// selector that opens after reads the Pod as it is now.
    #[test]
    fn a_flip_no_selector_reads_feeds_nothing_and_is_held() {
        let (mut pods, mut feeds) = (Pods::default(), Feeds::default());
        let web = Arc::new(pod("web", Some("10.0.0.3")));
        pods.pod(None, Some(&web), &mut feeds);
        assert_eq!(feeds.placements.drain(..).count(), 1, "a new Pod's placement");
        let unready = Arc::new(Pod { ready: false, ..(*web).clone() });
        pods.pod(Some(&web), Some(&unready), &mut feeds);
        assert!(feeds.pods.is_empty() && feeds.labelled.is_empty() && feeds.identities.is_empty());
        assert!(feeds.placements.is_empty() && feeds.selected_placements.is_empty() && feeds.slice_rows.is_empty());
        pods.service(&service(Some("web")), 1);
        pods.reconcile(&mut feeds);
        assert_eq!(fed(&mut feeds), vec![("web".to_string(), false, 1)], "the Pod as it is now");
    }

    /// A borrowed key hashes as the key it stands for, and finds it.
    #[test]
    fn a_borrowed_pod_key_finds_the_pod() {
        use std::hash::BuildHasher;
        let state = foldhash::fast::RandomState::default();
        let key: PodKey = ("default".into(), "web-1".into());
        assert_eq!(state.hash_one(PodRef("default", "web-1")), state.hash_one(&key));
        let mut pods = Pods::default();
        pods.entries.insert(key, Entry::default());
        assert!(pods.entries.get_mut(&PodRef("default", "web-1")).is_some());
        assert!(pods.entries.get_mut(&PodRef("default", "web-2")).is_none());
        assert!(pods.entries.get_mut(&PodRef("defaul", "tweb-1")).is_none(), "names are not run together");
    }
}
