//! The engine's five dataflow graphs, run one after the other at each logical time, and what
//! the driver does between them.
//!
//! ```text
//! pods, slices, endpoints, nodes, ─▶ the driver's Pod index (pods.rs): rows placed and labelled,
//! selectors of services, entries     the pods selectors without slices read (and their placements),
//!                                    the pods proxy classes read, the Pods' localities (an output)
//! services' ports ─────────────────▶ its port index (ports.rs): placed slice rows keyed by cluster
//! pods classes read, proxy classes ─▶ proxy graph (proxies.rs) ─▶ class labels
//! services, entries, rules, VirtualServices, Gateways, Secrets, proxy classes, class labels
//!     ─▶ config graph (dataflow.rs) ─▶ clusters, listeners, route configs, secrets
//!                                   ─▶ cluster facts: entries' owners to the unsliced graph;
//!                                      subsets, scoped and compared bases to the derivations;
//!                                      assigned and located clusters to the endpoint graph;
//!                                      located and DNS located clusters to the located graph
//! pods selectors read, their placements, Endpoints rows, services, slices' services, entries
//!     ─▶ unsliced graph (unsliced.rs) ─▶ rows of clusters no slice serves
//! slice rows keyed by cluster, rows of clusters no slice serves
//!     ─▶ the driver's derivations (derived.rs) ─▶ addresses of every assigned cluster,
//!                                                 endpoint labels (failoverPriority)
//! addresses, assigned and located clusters
//!     ─▶ endpoint graph (endpoints.rs: one operator that patches each cluster's addresses)
//!        ─▶ load assignments, addresses of clusters placed by locality
//! those addresses, endpoint labels, located clusters, proxy localities
//!     ─▶ located graph (located.rs) ─▶ assignments per place
//! ```
//!
//! Every operator of a timely dataflow runs at every logical time its inputs advance to, even
//! with nothing to do: the seal of an empty batch in each arrangement, the progress of each
//! port. That fixed cost grows with the graph, not with the change. Split in five, a graph
//! advances only at the times something of its own changed:
//! - a Pod or EndpointSlice change runs the endpoint graph, not the config graph (routes,
//!   listeners, gateways); the unsliced graph only if a selector without slices may select the
//!   Pod; the proxy graph only if a proxy class reads the Pod and its name, labels or IP
//!   changed; the located graph only if the Pod serves a cluster placed by locality;
//! - a VirtualService change runs the config graph alone unless what it knows of clusters
//!   changes.
//!
//! The endpoint graph is one operator, run without timely (see [`endpoints::Graph`]): the other
//! four are dataflows.
//!
//! Each graph keeps its own clock. Within one engine time the graphs run in the order above,
//! each one's changed output fed to the next as input: after each engine time the four hold
//! what one graph over all inputs would.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use differential_dataflow::VecCollection;
use foldhash::{HashMap, HashMapExt};
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::worker::Worker;

use super::derived::{Address, Derivations};
use super::inputs::{GraphInputs, Session};
use super::pods::{Feeds, Pods, Source, SvcKey};
use super::ports::{Keyed, PortIndex};
use super::proxies;
use super::rows::{ClassLabelRow, ClusterFact, LocatedInput, Name, OutputRow};
use super::{counted, dataflow, derived, endpoints, located, unsliced};
use crate::model::{EndpointSlice, Endpoints, Node, Object, Pod};
use crate::translate::MeshConfig;
use crate::translate::endpoint::{
    EndpointRow, PortKey, endpoints_addresses, slice_addresses, slice_endpoint_addresses,
};

type Buffer<D> = Rc<RefCell<Vec<(D, isize)>>>;

/// One graph's clock: the time its inputs are at, whether they have changes at that time, and
/// the probe that tells when its output for that time is complete.
struct Clock {
    time: u64,
    dirty: bool,
    probe: ProbeHandle<u64>,
}

impl Clock {
    fn new() -> Clock {
        Clock { time: 0, dirty: false, probe: ProbeHandle::new() }
    }
}

/// The five graphs, their inputs and what they output.
pub struct Graphs {
    proxies: proxies::Inputs,
    config: dataflow::Inputs,
    unsliced: unsliced::Inputs,
    endpoints: endpoints::Graph,
    located: located::Inputs,
    clocks: [Clock; 5],
    class_labels: Buffer<ClassLabelRow>,
    facts: Buffer<ClusterFact>,
    unsliced_rows: Buffer<(Name, EndpointRow)>,
    rows: Buffer<OutputRow>,
    /// The driver's index of Pods ([`super::pods`]) and what it asks the graphs to read.
    pods: Pods,
    feeds: Feeds,
    /// The Services' ports, by which the driver keys slice rows by cluster
    /// ([`super::ports`]).
    ports: PortIndex,
    /// The slices of each Service, as fed: a Service's change keys their rows again.
    slices: HashMap<SvcKey, Vec<Arc<EndpointSlice>>>,
    /// What each base cluster's endpoints also count for, by which the driver derives the
    /// addresses of subset and scoped clusters ([`super::derived`]).
    derivations: Derivations,
    /// The rows of clusters no slice serves, as the unsliced graph output them (few: a
    /// cluster's every Service has slices), for a base whose derived facts change.
    unsliced_held: HashMap<Name, Vec<(EndpointRow, isize)>>,
}

/// Where the driver's derived rows go: the endpoint graph's addresses, the located graph's
/// endpoint labels; and whether either got any.
struct Targets<'a> {
    addresses: &'a mut endpoints::Graph,
    labels: &'a mut Session<LocatedInput>,
    addressed: bool,
    labelled: bool,
}

impl<'a> Targets<'a> {
    fn new(endpoints: &'a mut endpoints::Graph, located: &'a mut located::Inputs) -> Targets<'a> {
        Targets { addresses: endpoints, labels: &mut located.located, addressed: false, labelled: false }
    }

    /// Marks the graphs fed dirty.
    fn done(self, clocks: &mut [Clock; 5]) {
        clocks[ENDPOINTS].dirty |= self.addressed;
        clocks[LOCATED].dirty |= self.labelled;
    }
}

impl derived::Sink for Targets<'_> {
    fn address(&mut self, address: Address, diff: isize) {
        self.addressed = true;
        self.addresses.address(address, diff);
    }

    fn labels(&mut self, labels: LocatedInput, diff: isize) {
        self.labelled = true;
        self.labels.update(labels, diff);
    }
}

/// Rows keyed by base cluster, expanded as they are fed.
struct Expand<'a, 'b> {
    derivations: &'a Derivations,
    targets: &'a mut Targets<'b>,
}

impl Extend<Keyed> for Expand<'_, '_> {
    fn extend<I: IntoIterator<Item = Keyed>>(&mut self, rows: I) {
        for ((base, row), diff) in rows {
            self.derivations.row(&base, &row, diff, self.targets);
        }
    }
}

const PROXIES: usize = 0;
const CONFIG: usize = 1;
const UNSLICED: usize = 2;
const ENDPOINTS: usize = 3;
const LOCATED: usize = 4;

/// Copies the updates of `collection` into `buffer` and has `probe` follow its progress.
fn capture<'s, D: differential_dataflow::Data>(
    collection: VecCollection<'s, u64, D>,
    buffer: &Buffer<D>,
    probe: &ProbeHandle<u64>,
) {
    let buffer = buffer.clone();
    collection
        .inspect_batch(move |_, updates| {
            buffer.borrow_mut().extend(updates.iter().map(|(d, _, diff)| (d.clone(), *diff)));
        })
        .probe_with(probe);
}

impl Graphs {
    /// Builds the five graphs on `worker`.
    pub fn build(worker: &mut Worker, mesh: &MeshConfig) -> Graphs {
        let clocks = [Clock::new(), Clock::new(), Clock::new(), Clock::new(), Clock::new()];
        let class_labels: Buffer<ClassLabelRow> = Rc::default();
        let facts: Buffer<ClusterFact> = Rc::default();
        let unsliced_rows: Buffer<(Name, EndpointRow)> = Rc::default();
        let rows: Buffer<OutputRow> = Rc::default();
        let proxies = worker.dataflow::<u64, _, _>(|scope| {
            let (inputs, labels) = proxies::build(scope);
            capture(labels, &class_labels, &clocks[PROXIES].probe);
            inputs
        });
        let config = worker.dataflow::<u64, _, _>(|scope| {
            let (inputs, outputs) = dataflow::build(scope, mesh);
            capture(outputs.rows, &rows, &clocks[CONFIG].probe);
            capture(outputs.facts, &facts, &clocks[CONFIG].probe);
            inputs
        });
        let unsliced = worker.dataflow::<u64, _, _>(|scope| {
            let (inputs, output) = unsliced::build(scope);
            capture(output, &unsliced_rows, &clocks[UNSLICED].probe);
            inputs
        });
        let endpoints = endpoints::Graph::default();
        let located = worker.dataflow::<u64, _, _>(|scope| {
            let (inputs, output) = located::build(scope);
            capture(output, &rows, &clocks[LOCATED].probe);
            inputs
        });
        let (pods, feeds) = (Pods::default(), Feeds::default());
        Graphs {
            proxies,
            config,
            unsliced,
            endpoints,
            located,
            clocks,
            class_labels,
            facts,
            unsliced_rows,
            rows,
            pods,
            feeds,
            ports: PortIndex::default(),
            slices: HashMap::new(),
            derivations: Derivations::default(),
            unsliced_held: HashMap::new(),
        }
    }

    /// Replaces `old` by `new` (either may be absent) in the graphs that read them.
    pub fn update(&mut self, old: Option<&Object>, new: Option<&Object>) {
        match old.or(new) {
            // A Pod: the endpoint graph reads it through its slices' rows (placed by it); the
            // unsliced graph whole (readiness, ports, labels, placement), only while a selector
            // without slices may select it; the proxy graph only if a proxy class does. Each fed
            // only when it changes (see [`super::pods`]).
            Some(Object::Pod(_)) => self.pods.pod(as_pod(old), as_pod(new), &mut self.feeds),
            // A slice: only the addresses it adds or drops (a pod's readiness flip is one row,
            // not the slice's every row retracted and added again).
            Some(Object::EndpointSlice(_)) => self.update_slice(as_slice(old), as_slice(new)),
            Some(Object::Endpoints(_)) => self.update_endpoints(as_endpoints(old), as_endpoints(new)),
            Some(Object::Node(_)) => self.pods.node(as_node(old), as_node(new), &mut self.feeds),
            _ => {
                if let Some(old) = old {
                    self.feed(old, -1);
                }
                if let Some(new) = new {
                    self.feed(new, 1);
                }
            }
        }
        self.drain_feeds();
    }

    /// Feeds what the driver's Pod index asked for to the inputs that read it, and outputs the
    /// Pods' localities that changed.
    fn drain_feeds(&mut self) {
        let feeds = &mut self.feeds;
        let any_unsliced = !(feeds.endpoint_rows.is_empty()
            && feeds.selected_placements.is_empty()
            && feeds.pods.is_empty()
            && feeds.labelled.is_empty());
        self.unsliced.pods.extend(feeds.pods.drain(..));
        self.unsliced.labelled_pods.extend(feeds.labelled.drain(..));
        self.unsliced.endpoint_rows.extend(feeds.endpoint_rows.drain(..));
        self.unsliced.placements.extend(feeds.selected_placements.drain(..));
        if any_unsliced {
            self.clocks[UNSLICED].dirty = true;
        }
        // (Expanded straight into the input: the initial load's every row passes here.)
        let mut targets = Targets::new(&mut self.endpoints, &mut self.located);
        let mut expand = Expand { derivations: &self.derivations, targets: &mut targets };
        self.ports.rows(feeds.slice_rows.drain(..), &mut expand);
        targets.done(&mut self.clocks);
        // (Also an output: the xDS server places a proxy that tells no locality by its Pod's.)
        self.rows.borrow_mut().extend(feeds.placements.drain(..).filter(|((_, p), _)| !p.locality.is_empty()).map(
            |(((ns, name), p), diff)| {
                (
                    OutputRow::PodLocality {
                        pod: (ns.to_string(), name.to_string()),
                        locality: p.locality.to_string(),
                    },
                    diff,
                )
            },
        ));
        if !feeds.identities.is_empty() {
            self.proxies.pods.extend(feeds.identities.drain(..));
            self.clocks[PROXIES].dirty = true;
        }
    }

    /// Feeds one object (added with `diff` 1, retracted with -1) to the graphs that read it.
    fn feed(&mut self, object: &Object, diff: isize) {
        let [proxies, config, unsliced, _, located] = &mut self.clocks;
        match object {
            Object::Service(s) => {
                self.config.services.update((**s).clone(), diff);
                self.unsliced.services.update((**s).clone(), diff);
                self.pods.service(s, diff);
                config.dirty = true;
                unsliced.dirty = true;
                // Its slices' rows, keyed by the clusters it had or has.
                let rows = service_rows(&self.slices, &self.pods, &s.namespace, &s.name);
                let mut targets = Targets::new(&mut self.endpoints, &mut self.located);
                let mut expand = Expand { derivations: &self.derivations, targets: &mut targets };
                self.ports.service(s, diff, &rows, &mut expand);
                targets.done(&mut self.clocks);
            }
            Object::ServiceEntry(se) => {
                self.config.service_entries.update((**se).clone(), diff);
                self.unsliced.service_entries.update((**se).clone(), diff);
                self.pods.entry(se, diff);
                config.dirty = true;
                unsliced.dirty = true;
            }
            Object::ProxyClass(c) => {
                self.proxies.classes.update(c.clone(), diff);
                self.config.classes.update(c.clone(), diff);
                self.pods.class(c, diff, &mut self.feeds);
                proxies.dirty = true;
                config.dirty = true;
            }
            // Fed by `update`, through the driver's Pod index.
            Object::Pod(_) | Object::EndpointSlice(_) | Object::Endpoints(_) | Object::Node(_) => {}
            Object::ProxyLocality(l) => {
                self.located.localities.update(l.clone(), diff);
                located.dirty = true;
            }
            Object::VirtualService(vs) => {
                self.config.virtual_services.update((**vs).clone(), diff);
                config.dirty = true;
            }
            Object::DestinationRule(dr) => {
                self.config.destination_rules.update((**dr).clone(), diff);
                config.dirty = true;
            }
            Object::Gateway(gw) => {
                self.config.gateways.update((**gw).clone(), diff);
                config.dirty = true;
            }
            Object::Secret(s) => {
                self.config.secrets.update((**s).clone(), diff);
                config.dirty = true;
            }
            // Held by the driver, not yet translated.
            Object::Namespace(_) => {}
        }
    }

    /// Replaces slice `old` by `new` (either may be absent): feeds the address rows that went
    /// and came ([`slice_addresses`], as multisets, placed by the Pod index), and the slice's
    /// service if it changed.
    fn update_slice(&mut self, old: Option<&Arc<EndpointSlice>>, new: Option<&Arc<EndpointSlice>>) {
        let (mut gone, mut came) = match (old, new) {
            // The same ports of the same service: the rows of the endpoints that changed only
            // (a readiness flip, a Pod added or removed, is one endpoint of the slice's many).
            (Some(o), Some(n))
                if o.service_name == n.service_name && o.ports == n.ports && o.namespace == n.namespace =>
            {
                // (What the two lists start and end with alike is no change: a controller keeps
                // a slice's endpoints in place, so that is all but the endpoints that changed,
                // and the sort of the rest is of a few.)
                let (o_eps, n_eps) = common_ends(&o.endpoints, &n.endpoints);
                let (mut went, mut come): (Vec<_>, Vec<_>) =
                    (o_eps.iter().filter(|e| e.ready).collect(), n_eps.iter().filter(|e| e.ready).collect());
                multiset_difference(&mut went, &mut come);
                (slice_endpoint_addresses(o, &went), slice_endpoint_addresses(n, &come))
            }
            _ => {
                let rows = |s: Option<&Arc<EndpointSlice>>| s.map(|s| slice_addresses(s)).unwrap_or_default();
                (rows(old), rows(new))
            }
        };
        // (Rows that went and came again cancel here: two endpoints may share an address.)
        multiset_difference(&mut gone, &mut came);
        self.pods.rows(Source::Slice, gone, came, &mut self.feeds);
        // The same slice of the same Service (every endpoint change): replaced where it is held.
        if let (Some(o), Some(n)) = (old, new)
            && let Some(svc) = &n.service_name
            && o.service_name.as_ref() == Some(svc)
            && o.namespace == n.namespace
            && let Some(held) = self
                .slices
                .get_mut(&(n.namespace.clone(), svc.clone()))
                .and_then(|slices| slices.iter_mut().find(|s| s.name == o.name))
        {
            *held = Arc::clone(n);
            return;
        }
        let service = |s: Option<&Arc<EndpointSlice>>| {
            s.and_then(|s| s.service_name.clone().map(|svc| (s.namespace.clone(), svc)))
        };
        let (was, is) = (service(old), service(new));
        // (Held while it has a service: its rows are keyed only then.)
        if let (Some(svc), Some(old)) = (&was, old)
            && let Some(slices) = self.slices.get_mut(svc)
        {
            slices.retain(|s| s.name != old.name);
            if slices.is_empty() {
                self.slices.remove(svc);
            }
        }
        if let (Some(svc), Some(new)) = (&is, new) {
            self.slices.entry(svc.clone()).or_default().push(Arc::clone(new));
        }
        if was != is {
            for (svc, diff) in was.iter().map(|s| (s, -1)).chain(is.iter().map(|s| (s, 1))) {
                self.unsliced.slice_services.update(svc.clone(), diff);
                self.pods.managed(svc, false, diff);
            }
            self.clocks[UNSLICED].dirty = true;
        }
    }

    /// Replaces core/v1 Endpoints `old` by `new` (the same object, either may be absent), as a
    /// slice is: the rows that went and came, and the service once while it exists.
    fn update_endpoints(&mut self, old: Option<&Endpoints>, new: Option<&Endpoints>) {
        let Some(any) = old.or(new) else { return };
        let svc: SvcKey = (any.namespace.clone(), any.name.clone());
        let rows = |e: Option<&Endpoints>| e.map(endpoints_addresses).unwrap_or_default();
        let (mut gone, mut came) = (rows(old), rows(new));
        multiset_difference(&mut gone, &mut came);
        self.pods.rows(Source::Endpoints(Arc::new(svc.clone())), gone, came, &mut self.feeds);
        let diff = match (old, new) {
            (None, Some(_)) => 1,
            (Some(_), None) => -1,
            _ => 0,
        };
        if diff != 0 {
            self.pods.managed(&svc, true, diff);
            self.unsliced.endpoint_services.update(svc, diff);
            self.clocks[UNSLICED].dirty = true;
        }
    }

    /// Runs each graph that has changes, in order, feeding each one's output to the next, and
    /// returns every output row of this engine time.
    pub fn step(&mut self, worker: &mut Worker) -> Step {
        // (The Pods of selectors that came or went in this time: once, whatever came between.)
        self.pods.reconcile(&mut self.feeds);
        self.drain_feeds();
        if run(worker, &mut self.clocks[PROXIES], &mut self.proxies) {
            let labels = std::mem::take(&mut *self.class_labels.borrow_mut());
            for (row, diff) in labels {
                self.config.class_labels.update(row, diff);
                self.clocks[CONFIG].dirty = true;
            }
        }
        if run(worker, &mut self.clocks[CONFIG], &mut self.config) {
            let facts = std::mem::take(&mut *self.facts.borrow_mut());
            // What derives from a base: taken in by the driver, then each base whose facts
            // changed expanded with its rows as they are.
            let changes = self.derivations.facts(&facts);
            let mut targets = Targets::new(&mut self.endpoints, &mut self.located);
            for base in changes.bases() {
                let rows = base_rows(base, &self.ports, &self.slices, &self.pods, &self.unsliced_held);
                changes.expand(base, &rows, &mut targets);
            }
            targets.done(&mut self.clocks);
            for (fact, diff) in facts {
                if located::reads(&fact) {
                    self.located.facts.update(fact.clone(), diff);
                    self.clocks[LOCATED].dirty = true;
                }
                if unsliced::reads(&fact) {
                    self.unsliced.facts.update(fact.clone(), diff);
                    self.clocks[UNSLICED].dirty = true;
                }
                if endpoints::reads(&fact) {
                    self.endpoints.fact(fact, diff);
                    self.clocks[ENDPOINTS].dirty = true;
                }
            }
        }
        if run(worker, &mut self.clocks[UNSLICED], &mut self.unsliced) {
            let rows = std::mem::take(&mut *self.unsliced_rows.borrow_mut());
            let mut targets = Targets::new(&mut self.endpoints, &mut self.located);
            for ((base, row), diff) in rows {
                self.derivations.row(&base, &row, diff, &mut targets);
                counted::add(&mut self.unsliced_held, base, row, diff);
            }
            targets.done(&mut self.clocks);
        }
        // (Not a dataflow: see [`endpoints`]. Its clock counts the times it finished.)
        let clock = &mut self.clocks[ENDPOINTS];
        let mut assignments = Vec::new();
        if std::mem::take(&mut clock.dirty) {
            clock.time += 1;
            let out = self.endpoints.finish();
            for (out, diff) in out {
                match out {
                    endpoints::Out::Row(row) => assignments.push((row, diff)),
                    endpoints::Out::Located(input) => {
                        self.located.located.update(input, diff);
                        self.clocks[LOCATED].dirty = true;
                    }
                }
            }
        }
        run(worker, &mut self.clocks[LOCATED], &mut self.located);
        Step { rows: std::mem::take(&mut *self.rows.borrow_mut()), assignments }
    }
}

/// What the graphs output at one engine time.
pub struct Step {
    /// The rows of the dataflows and the driver: not consolidated.
    pub rows: Vec<(OutputRow, isize)>,
    /// The endpoint graph's load assignments: consolidated (a cluster's at most once, its old
    /// body retracted and a new one added), and the only assignments outside the located
    /// graph's scopes (see [`endpoints::Out::Row`]).
    pub assignments: Vec<(OutputRow, isize)>,
}

impl Step {
    /// Every row.
    #[cfg(test)]
    fn all(self) -> Vec<(OutputRow, isize)> {
        let mut rows = self.rows;
        rows.extend(self.assignments);
        rows
    }
}

/// If the graph has changes: moves its clock and inputs past the time they were given at and
/// steps the worker until the graph's output for that time is complete. Returns whether it ran.
fn run(worker: &mut Worker, clock: &mut Clock, inputs: &mut impl GraphInputs) -> bool {
    if !clock.dirty {
        return false;
    }
    clock.dirty = false;
    clock.time += 1;
    inputs.advance_to(clock.time);
    inputs.flush();
    worker.step_while(|| clock.probe.less_than(&clock.time));
    true
}

/// The rows of the slices of Service `namespace`/`name`, placed as they were fed.
fn service_rows(
    slices: &HashMap<SvcKey, Vec<Arc<EndpointSlice>>>,
    pods: &Pods,
    namespace: &str,
    name: &str,
) -> Vec<(PortKey, EndpointRow)> {
    let Some(slices) = slices.get(&(namespace.to_string(), name.to_string())) else { return Vec::new() };
    let mut rows: Vec<_> = slices.iter().flat_map(|s| slice_addresses(s)).collect();
    for (_, row) in &mut rows {
        pods.place(row);
    }
    rows
}

/// The rows of base cluster `base` as they were fed, with multiplicities: its slices' (through
/// the port keys it is the cluster of) and those the unsliced graph output for it.
fn base_rows(
    base: &Name,
    ports: &PortIndex,
    slices: &HashMap<SvcKey, Vec<Arc<EndpointSlice>>>,
    pods: &Pods,
    unsliced: &HashMap<Name, Vec<(EndpointRow, isize)>>,
) -> Vec<(EndpointRow, isize)> {
    let mut rows = Vec::new();
    for (key, n) in ports.keys(base) {
        let of_service = service_rows(slices, pods, &key.0, &key.1);
        rows.extend(of_service.into_iter().filter(|(k, _)| k == key).map(|(_, row)| (row, *n)));
    }
    rows.extend(unsliced.get(base).into_iter().flatten().cloned());
    rows
}

/// The slice `object` is, if it is one.
fn as_slice(object: Option<&Object>) -> Option<&Arc<EndpointSlice>> {
    match object {
        Some(Object::EndpointSlice(s)) => Some(s),
        _ => None,
    }
}

/// The core/v1 Endpoints `object` is, if it is one.
fn as_endpoints(object: Option<&Object>) -> Option<&Endpoints> {
    match object {
        Some(Object::Endpoints(e)) => Some(e),
        _ => None,
    }
}

/// The Node `object` is, if it is one.
fn as_node(object: Option<&Object>) -> Option<&Node> {
    match object {
        Some(Object::Node(n)) => Some(n),
        _ => None,
    }
}

/// The Pod `object` is, if it is one.
fn as_pod(object: Option<&Object>) -> Option<&Arc<Pod>> {
    match object {
        Some(Object::Pod(p)) => Some(p),
        _ => None,
    }
}

/// `a` and `b` without the longest prefix and then the longest suffix they share.
fn common_ends<'a, T: PartialEq>(a: &'a [T], b: &'a [T]) -> (&'a [T], &'a [T]) {
    let front = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let (a, b) = (&a[front..], &b[front..]);
    let back = a.iter().rev().zip(b.iter().rev()).take_while(|(x, y)| x == y).count();
    (&a[..a.len() - back], &b[..b.len() - back])
}

/// Removes from `a` and `b` what they have in common (as multisets): what is left in `a` is
/// what went, in `b` what came.
fn multiset_difference<T: Ord>(a: &mut Vec<T>, b: &mut Vec<T>) {
    a.sort_unstable();
    b.sort_unstable();
    let (old_a, old_b) = (std::mem::take(a), std::mem::take(b));
    let mut ib = old_b.into_iter().peekable();
    for x in old_a {
        while ib.peek().is_some_and(|y| *y < x) {
            b.extend(ib.next());
        }
        if ib.peek() == Some(&x) {
            ib.next();
        } else {
            a.push(x);
        }
    }
    b.extend(ib);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ParseOutcome, parse_document};

    fn object(yaml: &str) -> Object {
        let doc: serde_json::Value = serde_yaml_ng::from_str(yaml).expect("yaml");
        match parse_document(doc, "default").pop() {
            Some(ParseOutcome::Object(o)) => o,
            other => panic!("not an object: {other:?}"),
        }
    }

    /// Each graph's clock: proxies, config, unsliced, endpoints, located.
    fn times(g: &Graphs) -> [u64; 5] {
        [
            g.clocks[PROXIES].time,
            g.clocks[CONFIG].time,
            g.clocks[UNSLICED].time,
            g.clocks[ENDPOINTS].time,
            g.clocks[LOCATED].time,
        ]
    }

    /// Which graphs a change runs is what the split is for: a Pod runs the proxy and endpoint
    /// graphs only (its readiness flip the endpoint graph only; the unsliced graph only while
    /// its Service has no slices), a VirtualService the config graph only (its clusters do not
    /// change), a DestinationRule with subsets the config graph and then the endpoint graph
    /// (new facts).
    #[test]
    fn a_change_runs_only_the_graphs_that_read_it() {
        timely::execute_directly(|worker| {
            let mut g = Graphs::build(worker, &MeshConfig::default());
            let service = object(
                "apiVersion: v1\nkind: Service\nmetadata: {name: reviews, namespace: default}\n\
                 spec: {selector: {app: reviews}, ports: [{name: http, port: 9080}]}",
            );
            g.update(None, Some(&service));
            let rows = g.step(worker).all();
            assert_eq!(times(&g), [0, 1, 1, 1, 0]);
            assert!(rows.iter().any(|(r, _)| matches!(r, OutputRow::Resource { ty, .. }
                if *ty == crate::translate::ResourceType::ClusterLoadAssignment)));

            let pod = object(
                "apiVersion: v1\nkind: Pod\nmetadata: {name: reviews-1, namespace: default, labels: {app: reviews, version: v1}}\n\
                 spec: {containers: [{name: app, image: x}]}\n\
                 status: {podIP: 10.0.0.1, phase: Running, conditions: [{type: Ready, status: 'True'}]}",
            );
            g.update(None, Some(&pod));
            let rows = g.step(worker).all();
            assert_eq!(
                times(&g),
                [0, 1, 2, 2, 0],
                "a Pod no proxy class names runs the unsliced graph (its Service has no slices) and the endpoint graph"
            );
            let assignment = rows.iter().find_map(|(r, d)| match r {
                OutputRow::Resource { name, body, .. }
                    if *d > 0 && name == "outbound|9080||reviews.default.svc.cluster.local" =>
                {
                    Some(body.clone())
                }
                _ => None,
            });
            assert!(assignment.is_some_and(|b| b.windows(8).any(|w| w == b"10.0.0.1")), "the pod's address: {rows:?}");

            let vs = object(
                "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews, namespace: default}\n\
                 spec: {hosts: [reviews], http: [{timeout: 3s, route: [{destination: {host: reviews}}]}]}",
            );
            g.update(None, Some(&vs));
            g.step(worker);
            assert_eq!(times(&g), [0, 2, 2, 2, 0], "a VirtualService runs the config graph alone");

            let dr = object(
                "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews, namespace: default}\n\
                 spec: {host: reviews, subsets: [{name: v1, labels: {version: v1}}]}",
            );
            g.update(None, Some(&dr));
            let rows = g.step(worker).all();
            assert_eq!(times(&g), [0, 3, 2, 3, 0], "new subset clusters run the endpoint graph after the config graph");
            assert!(
                rows.iter().any(|(r, d)| *d > 0
                    && matches!(r, OutputRow::Resource { ty, name, .. }
                        if *ty == crate::translate::ResourceType::ClusterLoadAssignment
                            && name == "outbound|9080|v1|reviews.default.svc.cluster.local")),
                "{rows:?}"
            );

            // A readiness flip leaves the Pod's identity (name, labels, IP): the proxy graph
            // does not run, the endpoint graph does.
            let unready = object(
                "apiVersion: v1\nkind: Pod\nmetadata: {name: reviews-1, namespace: default, labels: {app: reviews, version: v1}}\n\
                 spec: {containers: [{name: app, image: x}]}\n\
                 status: {podIP: 10.0.0.1, phase: Running, conditions: [{type: Ready, status: 'False'}]}",
            );
            g.update(Some(&pod), Some(&unready));
            let rows = g.step(worker).all();
            assert_eq!(times(&g), [0, 3, 3, 4, 0], "a readiness flip runs the endpoint graphs alone");
            assert!(!rows.is_empty(), "the assignments lose the address");

            // Nothing changed: nothing runs.
            g.step(worker);
            assert_eq!(times(&g), [0, 3, 3, 4, 0]);

            // A connected proxy's locality runs the located graph alone; with no cluster placed
            // by locality it outputs nothing.
            let place = Object::ProxyLocality(crate::model::proxy::ProxyLocality {
                namespace: "default".into(),
                locality: "r1/z1/".into(),
                labels: Default::default(),
            });
            g.update(None, Some(&place));
            let rows = g.step(worker).all();
            assert_eq!(times(&g), [0, 3, 3, 4, 1]);
            assert!(rows.is_empty(), "{rows:?}");

            // Outlier detection places the cluster by locality: the config graph runs, then the
            // endpoint graph (new facts, its addresses to the located graph), then the located
            // graph, which outputs the assignment for the proxy's place.
            let placed = object(
                "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews, namespace: default}\n\
                 spec: {host: reviews, trafficPolicy: {outlierDetection: {consecutive5xxErrors: 3}}, \
                 subsets: [{name: v1, labels: {version: v1}}]}",
            );
            g.update(Some(&dr), Some(&placed));
            let rows = g.step(worker).all();
            assert_eq!(times(&g), [0, 4, 3, 5, 2]);
            assert!(
                rows.iter().any(|(r, d)| *d > 0
                    && matches!(r, OutputRow::Resource { scope: crate::translate::Scope::Locality(l), ty, .. }
                        if l == "r1/z1/" && *ty == crate::translate::ResourceType::ClusterLoadAssignment)),
                "{rows:?}"
            );

            // A readiness flip of a Pod of a placed cluster runs the endpoint and located graphs.
            g.update(Some(&unready), Some(&pod));
            g.step(worker);
            assert_eq!(times(&g), [0, 4, 4, 6, 3]);

            // A sidecar class known by its Pod's name: the proxy graph reads that Pod now, and
            // its labels reach the config graph.
            let class = Object::ProxyClass(crate::model::proxy::ProxyClass {
                kind: crate::model::proxy::ProxyKind::Sidecar,
                namespace: "default".into(),
                labels: crate::model::proxy::ClassLabels::OfPod { pod: "reviews-1".into(), ip: None },
            });
            g.update(None, Some(&class));
            g.step(worker);
            assert_eq!(times(&g), [1, 5, 4, 6, 3]);
            // Its readiness flip still runs the endpoint graphs alone; its relabel runs the
            // proxy graph, then the config graph (the class's labels) and the endpoint graph.
            g.update(Some(&pod), Some(&unready));
            g.step(worker);
            assert_eq!(times(&g), [1, 5, 5, 7, 4]);
            let relabelled = object(
                "apiVersion: v1\nkind: Pod\nmetadata: {name: reviews-1, namespace: default, labels: {app: reviews, version: v2}}\n\
                 spec: {containers: [{name: app, image: x}]}\n\
                 status: {podIP: 10.0.0.1, phase: Running, conditions: [{type: Ready, status: 'False'}]}",
            );
            g.update(Some(&unready), Some(&relabelled));
            g.step(worker);
            assert_eq!(times(&g), [2, 6, 6, 7, 4], "(not ready: no address changes)");
            // Without the class, the Pod is the proxy graph's no more.
            g.update(Some(&class), None);
            g.step(worker);
            assert_eq!(times(&g), [3, 7, 6, 7, 4]);
            g.update(Some(&relabelled), Some(&unready));
            g.step(worker);
            assert_eq!(times(&g), [3, 7, 7, 7, 4], "a Pod no class names runs no proxy graph");

            // A slice for the Service: its row runs the endpoint graph (and the located one);
            // the Pod leaves the unsliced graph, which runs once more.
            let slice = |ready: bool| {
                object(&format!(
                    "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                     metadata: {{name: reviews-1, namespace: default, labels: {{kubernetes.io/service-name: reviews}}}}\n\
                     addressType: IPv4\nports: [{{name: http, port: 9080, protocol: TCP}}]\n\
                     endpoints: [{{addresses: [10.0.0.1], conditions: {{ready: {ready}}}, \
                     targetRef: {{kind: Pod, name: reviews-1, namespace: default}}}}]"
                ))
            };
            g.update(None, Some(&slice(false)));
            g.step(worker);
            assert_eq!(times(&g), [3, 7, 8, 7, 4], "(not ready: no address changes)");
            g.update(Some(&unready), Some(&pod));
            g.update(Some(&slice(false)), Some(&slice(true)));
            let rows = g.step(worker).all();
            assert_eq!(times(&g), [3, 7, 8, 8, 5], "with a slice, a readiness flip runs the unsliced graph no more");
            assert!(
                rows.iter().any(|(r, d)| *d > 0
                    && matches!(r, OutputRow::Resource { scope: crate::translate::Scope::All, ty, name, body }
                        if *ty == crate::translate::ResourceType::ClusterLoadAssignment
                            && name == "outbound|9080|v1|reviews.default.svc.cluster.local"
                            && body.windows(8).any(|w| w == b"10.0.0.1"))),
                "the slice's address, in the subset by the Pod's labels: {rows:?}"
            );
        });
    }

    #[test]
    fn the_multiset_difference_leaves_what_went_and_what_came() {
        let (mut a, mut b) = (vec![3, 1, 2, 2, 5], vec![2, 4, 1, 5, 5]);
        multiset_difference(&mut a, &mut b);
        assert_eq!((a, b), (vec![2, 3], vec![4, 5]));
        let (mut a, mut b) = (vec![1, 2], vec![1, 2]);
        multiset_difference(&mut a, &mut b);
        assert!(a.is_empty() && b.is_empty());
        let (mut a, mut b) = (Vec::<u8>::new(), vec![7]);
        multiset_difference(&mut a, &mut b);
        assert_eq!((a, b), (vec![], vec![7]));
    }

    proptest::proptest! {
        /// The shared ends cut first, the difference is that of the whole lists: a slice's
        /// endpoints diffed after [`common_ends`] are the rows that went and came.
        #[test]
        fn cutting_the_common_ends_leaves_the_same_difference(
            a in proptest::collection::vec(0u8..6, 0..12),
            b in proptest::collection::vec(0u8..6, 0..12),
        ) {
            let (mut whole_a, mut whole_b) = (a.clone(), b.clone());
            multiset_difference(&mut whole_a, &mut whole_b);
            let (ca, cb) = common_ends(&a, &b);
            let (mut cut_a, mut cut_b) = (ca.to_vec(), cb.to_vec());
            multiset_difference(&mut cut_a, &mut cut_b);
            proptest::prop_assert_eq!((cut_a, cut_b), (whole_a, whole_b));
        }
    }
}
