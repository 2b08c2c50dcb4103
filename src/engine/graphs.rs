//! The engine's three dataflow graphs, run one after the other at each logical time.
//!
//! ```text
//! pods, proxy classes ──▶ proxy graph (proxies.rs) ── class labels ──┐
//! services, entries, rules, VirtualServices, Gateways, Secrets,      ▼
//! proxy classes ───────────────────────────────────▶ config graph (dataflow.rs) ─▶ clusters, listeners,
//!                                                                  │                route configs, secrets
//!                                                                  └── cluster facts ──┐
//! pods, slices, endpoints, nodes, services, entries, proxy localities ─────────────────▼
//!                                                    endpoint graph (endpoints.rs) ─▶ load assignments
//! ```
//!
//! Every operator of a timely dataflow runs at every logical time its inputs advance to, even
//! with nothing to do: the seal of an empty batch in each arrangement, the progress of each
//! port. That fixed cost grows with the graph, not with the change. Split in three, a graph
//! advances only at the times something of its own changed: a Pod or EndpointSlice change runs
//! the proxy and endpoint graphs, not the config graph (routes, listeners, gateways), and a
//! VirtualService change runs the config graph alone unless what it knows of clusters changes.
//!
//! Each graph keeps its own clock. Within one engine time the proxy graph runs first, its
//! changed class labels are fed to the config graph, which runs next, and its changed cluster
//! facts are fed to the endpoint graph, which runs last: after each engine time the three hold
//! what one graph over all inputs would.

use std::cell::RefCell;
use std::rc::Rc;

use differential_dataflow::VecCollection;
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::worker::Worker;

use super::dataflow::{self, OutputRow};
use super::endpoints::{self, ClusterFact};
use super::proxies::{self, ClassLabelRow};
use crate::model::Object;
use crate::translate::MeshConfig;

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

/// The three graphs, their inputs and what they output.
pub struct Graphs {
    proxies: proxies::Inputs,
    config: dataflow::Inputs,
    endpoints: endpoints::Inputs,
    clocks: [Clock; 3],
    class_labels: Buffer<ClassLabelRow>,
    facts: Buffer<ClusterFact>,
    rows: Buffer<OutputRow>,
}

const PROXIES: usize = 0;
const CONFIG: usize = 1;
const ENDPOINTS: usize = 2;

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
    /// Builds the three graphs on `worker`.
    pub fn build(worker: &mut Worker, mesh: &MeshConfig) -> Graphs {
        let clocks = [Clock::new(), Clock::new(), Clock::new()];
        let class_labels: Buffer<ClassLabelRow> = Rc::default();
        let facts: Buffer<ClusterFact> = Rc::default();
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
        let endpoints = worker.dataflow::<u64, _, _>(|scope| {
            let (inputs, output) = endpoints::build(scope);
            capture(output, &rows, &clocks[ENDPOINTS].probe);
            inputs
        });
        Graphs { proxies, config, endpoints, clocks, class_labels, facts, rows }
    }

    /// Feeds one object (added with `diff` 1, retracted with -1) to the graphs that read it.
    pub fn feed(&mut self, object: &Object, diff: isize) {
        let [proxies, config, endpoints] = &mut self.clocks;
        match object {
            Object::Service(s) => {
                self.config.services.update(s.clone(), diff);
                self.endpoints.services.update(s.clone(), diff);
                config.dirty = true;
                endpoints.dirty = true;
            }
            Object::ServiceEntry(se) => {
                self.config.service_entries.update((**se).clone(), diff);
                self.endpoints.service_entries.update((**se).clone(), diff);
                config.dirty = true;
                endpoints.dirty = true;
            }
            Object::Pod(p) => {
                self.proxies.pods.update(p.clone(), diff);
                self.endpoints.pods.update(p.clone(), diff);
                proxies.dirty = true;
                endpoints.dirty = true;
            }
            Object::ProxyClass(c) => {
                self.proxies.classes.update(c.clone(), diff);
                self.config.classes.update(c.clone(), diff);
                proxies.dirty = true;
                config.dirty = true;
            }
            Object::EndpointSlice(s) => {
                self.endpoints.slices.update(s.clone(), diff);
                endpoints.dirty = true;
            }
            Object::Endpoints(e) => {
                self.endpoints.endpoints.update(e.clone(), diff);
                endpoints.dirty = true;
            }
            Object::Node(n) => {
                self.endpoints.nodes.update(n.clone(), diff);
                endpoints.dirty = true;
            }
            Object::ProxyLocality(l) => {
                self.endpoints.localities.update(l.clone(), diff);
                endpoints.dirty = true;
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

    /// Runs each graph that has changes, in order, feeding each one's output to the next, and
    /// returns every output row of this engine time (not consolidated).
    pub fn step(&mut self, worker: &mut Worker) -> Vec<(OutputRow, isize)> {
        if self.clocks[PROXIES].dirty {
            let t = advance(&mut self.clocks[PROXIES]);
            self.proxies.advance_to(t);
            self.proxies.flush();
            run(worker, &self.clocks[PROXIES]);
            let labels = std::mem::take(&mut *self.class_labels.borrow_mut());
            for (row, diff) in labels {
                self.config.class_labels.update(row, diff);
                self.clocks[CONFIG].dirty = true;
            }
        }
        if self.clocks[CONFIG].dirty {
            let t = advance(&mut self.clocks[CONFIG]);
            self.config.advance_to(t);
            self.config.flush();
            run(worker, &self.clocks[CONFIG]);
            let facts = std::mem::take(&mut *self.facts.borrow_mut());
            for (fact, diff) in facts {
                self.endpoints.facts.update(fact, diff);
                self.clocks[ENDPOINTS].dirty = true;
            }
        }
        if self.clocks[ENDPOINTS].dirty {
            let t = advance(&mut self.clocks[ENDPOINTS]);
            self.endpoints.advance_to(t);
            self.endpoints.flush();
            run(worker, &self.clocks[ENDPOINTS]);
        }
        std::mem::take(&mut *self.rows.borrow_mut())
    }
}

/// Moves a graph's clock past the time its changes were given at; returns the new time.
fn advance(clock: &mut Clock) -> u64 {
    clock.dirty = false;
    clock.time += 1;
    clock.time
}

/// Steps the worker until the graph's output for every time before its clock is complete.
fn run(worker: &mut Worker, clock: &Clock) {
    worker.step_while(|| clock.probe.less_than(&clock.time));
}
