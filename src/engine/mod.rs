//! The engine: a differential-dataflow graph on its own timely worker thread.
//!
//! Sources send [`Command`]s over a crossbeam channel. The worker takes every command that is
//! waiting (so a burst of events becomes one logical time), feeds the input collections,
//! advances time, steps the dataflow until its output frontier passes that time, and hands the
//! time's consolidated output to the sink as one [`ResourceDelta`]. The sink runs on the worker
//! thread; in `serve` it is the cache's `apply`, which is cheap and never blocks on a proxy.

mod counted;
mod dataflow;
mod derived;
mod endpoints;
mod graphs;
mod inputs;
mod located;
pub mod output;
mod pods;
mod ports;
#[cfg(feature = "engine-profile")]
mod profile;
mod proxies;
mod proxyless;
mod rows;
mod unsliced;

use std::collections::HashMap;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};

pub use output::{ResourceChange, ResourceDelta};
pub use rows::OutputRow;

use crate::model::{InputEvent, Object, ObjectKey};

/// Work for the engine.
pub enum Command {
    /// Input changes, applied together at one logical time (with whatever else is waiting).
    Events(Vec<InputEvent>),
    /// The named source has delivered its initial state: reported to the sink after every
    /// event sent before it has been translated.
    Synced(String),
    /// Called on the worker once the output of every event sent before it has been handed to
    /// the sink (in `serve`: is in the cache). So a connecting proxy whose class is new waits
    /// for its class's resources before its first answer, a verification reads the cache that
    /// holds exactly the output of its input, and the bench learns each step's batch.
    Then(Box<dyn FnOnce() + Send>),
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Events(events) => f.debug_tuple("Events").field(events).finish(),
            Command::Synced(source) => f.debug_tuple("Synced").field(source).finish(),
            Command::Then(_) => f.write_str("Then(..)"),
        }
    }
}

/// What the engine hands to its sink, in order.
#[derive(Debug)]
pub enum EngineOutput {
    /// The output changes of one logical time; sent for every time, even when empty, so a
    /// caller can wait for its input to have been processed.
    Delta(ResourceDelta),
    Synced(String),
}

/// A handle to the running engine. Dropping every clone of the sender stops the worker.
pub struct Engine {
    tx: Sender<Command>,
    worker: Option<JoinHandle<()>>,
}

/// At most this many commands are folded into one logical time, so that one huge burst
/// still yields output in bounded steps.
const MAX_COMMANDS_PER_TIME: usize = 4096;

impl Engine {
    /// Starts the worker thread. `sink` receives every output, in order, on that thread.
    pub fn start(sink: impl FnMut(EngineOutput) + Send + 'static) -> Engine {
        Engine::start_with(crate::translate::MeshConfig::default(), sink)
    }

    /// [`Engine::start`] with a mesh config other than istiod's default.
    pub fn start_with(mesh: crate::translate::MeshConfig, sink: impl FnMut(EngineOutput) + Send + 'static) -> Engine {
        // timely wants a `Sync` closure; the sink is only ever called from the worker thread.
        let sink = std::sync::Mutex::new(sink);
        let (tx, rx) = crossbeam_channel::unbounded::<Command>();
        let worker = std::thread::Builder::new()
            .name("meshflow-engine".into())
            .spawn(move || {
                timely::execute_directly(move |worker| {
                    #[cfg(feature = "engine-profile")]
                    profile::register(worker);
                    let mut graphs = graphs::Graphs::build(worker, &mesh);
                    let mut driver = Driver::default();
                    let mut assembler = output::Assembler::default();
                    let mut time = 0u64;
                    let metrics = crate::metrics::global();
                    while let Some(commands) = next_commands(&rx) {
                        let started = std::time::Instant::now();
                        let (mut synced, mut then) = (Vec::new(), Vec::new());
                        let mut batch = 0usize;
                        for command in commands {
                            match command {
                                Command::Events(events) => {
                                    batch += events.len();
                                    driver.apply(events, &mut graphs)
                                }
                                Command::Synced(source) => synced.push(source),
                                Command::Then(callback) => then.push(callback),
                            }
                        }
                        time += 1;
                        let rows = graphs.step(worker);
                        let mut sink = sink.lock().unwrap_or_else(|e| e.into_inner());
                        sink(EngineOutput::Delta(assembler.finish(time - 1, rows)));
                        metrics.engine_step.observe(started.elapsed().as_secs_f64());
                        metrics.engine_batch.observe(batch as f64);
                        for source in synced {
                            sink(EngineOutput::Synced(source));
                        }
                        drop(sink);
                        for callback in then {
                            callback();
                        }
                    }
                })
            })
            .expect("spawning the engine thread");
        Engine { tx, worker: Some(worker) }
    }

    pub fn sender(&self) -> Sender<Command> {
        self.tx.clone()
    }

    pub fn send(&self, command: Command) {
        // The worker only exits when every sender is gone, so this cannot fail while `self` lives.
        let _ = self.tx.send(command);
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let (tx, _) = crossbeam_channel::bounded(0);
        drop(std::mem::replace(&mut self.tx, tx));
        if let Some(worker) = self.worker.take() {
            // Other senders (sources) may still be alive; do not wait for them.
            if worker.is_finished() {
                let _ = worker.join();
            }
        }
    }
}

/// Blocks for the next command, then takes whatever else is already waiting.
fn next_commands(rx: &Receiver<Command>) -> Option<Vec<Command>> {
    let first = rx.recv().ok()?;
    let mut commands = vec![first];
    while commands.len() < MAX_COMMANDS_PER_TIME {
        match rx.try_recv() {
            Ok(c) => commands.push(c),
            Err(_) => break,
        }
    }
    Some(commands)
}

/// What the engine currently holds per input key, so that an update can retract the old
/// object and a delete knows what to retract. Kinds not yet translated are held too, so
/// that the set of known objects is complete when their translation is added.
#[derive(Default)]
struct Driver {
    current: HashMap<ObjectKey, Object>,
    /// Each kind's series of `meshflow_input_events` and `meshflow_input_objects`, looked up
    /// once (a lookup hashes the label strings).
    series: HashMap<crate::model::Kind, KindSeries>,
}

/// A kind's input metrics.
struct KindSeries {
    applied: prometheus::IntCounter,
    deleted: prometheus::IntCounter,
    objects: prometheus::IntGauge,
}

impl KindSeries {
    fn of(kind: crate::model::Kind) -> KindSeries {
        let metrics = crate::metrics::global();
        let kind = crate::metrics::kind_label(kind);
        KindSeries {
            applied: metrics.input_events.with_label_values(&[kind.as_str(), "apply"]),
            deleted: metrics.input_events.with_label_values(&[kind.as_str(), "delete"]),
            objects: metrics.input_objects.with_label_values(&[kind.as_str()]),
        }
    }
}

impl Driver {
    fn apply(&mut self, events: Vec<InputEvent>, graphs: &mut graphs::Graphs) {
        for event in events {
            let series = self.series.entry(event.key.kind).or_insert_with(|| KindSeries::of(event.key.kind));
            if event.object.is_some() { &series.applied } else { &series.deleted }.inc();
            let new = event.object;
            if new.is_some() && self.current.get(&event.key) == new.as_ref() {
                continue;
            }
            let old = self.current.remove(&event.key);
            graphs.update(old.as_ref(), new.as_ref());
            if let Some(old) = &old {
                count(old, &series.objects, -1);
            }
            if let Some(new) = new {
                count(&new, &series.objects, 1);
                self.current.insert(event.key, new);
            }
        }
    }
}

/// Keeps the input gauges: objects of the kind (`objects`), `pilot_services` (Services and
/// ServiceEntry hosts, as istiod counts services) and `pilot_virt_services`.
fn count(object: &Object, objects: &prometheus::IntGauge, diff: i64) {
    let metrics = crate::metrics::global();
    objects.add(diff);
    match object {
        Object::Service(_) => metrics.services.add(diff),
        Object::ServiceEntry(se) => metrics.services.add(diff * se.spec.hosts.len() as i64),
        Object::VirtualService(_) => metrics.virt_services.add(diff),
        _ => {}
    }
}
