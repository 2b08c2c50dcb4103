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

use std::collections::hash_map::Entry;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use foldhash::HashMap;

pub use output::{ResourceChange, ResourceDelta};
pub use rows::OutputRow;

use crate::model::{InputEvent, Kind, Object, ObjectKey};

/// Work for the engine.
pub enum Command {
    /// Input changes, applied together at one logical time (with whatever else is waiting).
    Events(Vec<InputEvent>),
    /// The named source has delivered its initial state: reported to the sink after every
    /// event sent before it has been translated.
    Synced(String),
    /// Called (on the engine's thread, or on its output thread) once the output of every event
    /// sent before it has been handed to the sink (in `serve`: is in the cache). So a
    /// connecting proxy whose class is new waits for its class's resources before its first
    /// answer, a verification reads the cache that holds exactly the output of its input, and
    /// the bench learns each step's batch.
    Then(Box<dyn FnOnce() + Send>),
    /// Commands taken together, as if each had been sent in turn with nothing between: the
    /// engine never folds only some of them into a time (one wake for a step's events and
    /// its [`Command::Then`]).
    Batch(Vec<Command>),
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Events(events) => f.debug_tuple("Events").field(events).finish(),
            Command::Synced(source) => f.debug_tuple("Synced").field(source).finish(),
            Command::Then(_) => f.write_str("Then(..)"),
            Command::Batch(commands) => f.debug_tuple("Batch").field(commands).finish(),
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
    /// None once dropped.
    tx: Option<CommandSender>,
    worker: Option<JoinHandle<()>>,
}

/// Sends commands to the engine (or to what stands before it, see [`CommandSender::new`]).
///
/// The engine thread parks as soon as it has nothing to do, and each send (and the drop of a
/// sender, so that it sees the last one go) unparks it. crossbeam's blocking `recv` spins and
/// yields the thread a few times before it parks: between pod events that was ~16 µs of the
/// engine's CPU per event (`sched_yield` 3.7% of its thread at 50 events/s).
#[derive(Clone)]
pub struct CommandSender {
    /// None only while it drops.
    tx: Option<Sender<Command>>,
    wake: Option<std::thread::Thread>,
}

impl CommandSender {
    /// A sender on `tx` that unparks `wake` after each send (None: the receiver blocks on the
    /// channel itself).
    pub fn new(tx: Sender<Command>, wake: Option<std::thread::Thread>) -> CommandSender {
        CommandSender { tx: Some(tx), wake }
    }

    /// Sends `command`; an error when the receiver is gone.
    pub fn send(&self, command: Command) -> Result<(), crossbeam_channel::SendError<Command>> {
        let Some(tx) = &self.tx else { return Err(crossbeam_channel::SendError(command)) };
        let sent = tx.send(command);
        if let Some(thread) = &self.wake {
            thread.unpark();
        }
        sent
    }
}

impl Drop for CommandSender {
    fn drop(&mut self) {
        // The channel's sender first: woken, the engine finds the channel disconnected when
        // this was the last one.
        drop(self.tx.take());
        if let Some(thread) = &self.wake {
            thread.unpark();
        }
    }
}

/// At most this many commands are folded into one logical time, so that one huge burst
/// still yields output in bounded steps. Large, because a time's fixed costs (each touched
/// cluster's encoding, the assembler, the cache) are shared by its events: a saturated engine
/// at `large` spent 38 µs per pod event at 4,096, 28–30 at 65,536 (BENCHMARKS.md, "Session 38").
const MAX_COMMANDS_PER_TIME: usize = 65536;

impl Engine {
    /// Starts the worker thread. `sink` receives every output, in order: on that thread, or
    /// (a large time's, see [`OUTPUT_ELSEWHERE`]) on the engine's output thread.
    pub fn start(sink: impl FnMut(EngineOutput) + Send + 'static) -> Engine {
        Engine::start_with(crate::translate::MeshConfig::default(), sink)
    }

    /// [`Engine::start`] with a mesh config other than istiod's default.
    pub fn start_with(mesh: crate::translate::MeshConfig, sink: impl FnMut(EngineOutput) + Send + 'static) -> Engine {
        Engine::start_recycling(mesh, sink, None)
    }

    /// [`Engine::start_with`], the objects that large times replaced handed to `recycle` to
    /// free (else to a thread of the engine's): the thread that allocated them frees them
    /// without atomics. mimalloc frees a block of another thread's with an atomic push, which
    /// its owner later collects: at 50,000 pod events a second the bench's generator spent a
    /// third of its thread collecting what the engine's dropper freed, and the dropper a fifth
    /// of a core freeing it (`perf record`, session 39).
    pub fn start_recycling(
        mesh: crate::translate::MeshConfig,
        sink: impl FnMut(EngineOutput) + Send + 'static,
        recycle: Option<Sender<Vec<Object>>>,
    ) -> Engine {
        let (tx, rx) = crossbeam_channel::unbounded::<Command>();
        let worker = std::thread::Builder::new()
            .name("meshflow-engine".into())
            .spawn(move || {
                // (timely wants a `Sync` closure; the output stage is only ever used from the
                // worker thread and the output thread it starts.)
                let out = std::sync::Mutex::new(Output::new(sink, Dropper { tx: recycle }));
                let collect = out.lock().unwrap_or_else(|e| e.into_inner()).collect.clone();
                timely::execute_directly(move |worker| {
                    #[cfg(feature = "engine-profile")]
                    profile::register(worker);
                    let mut output = out.lock().unwrap_or_else(|e| e.into_inner());
                    let mut graphs = graphs::Graphs::build(worker, &mesh);
                    let mut driver = Driver::default();
                    let mut time = 0u64;
                    while let Some(commands) = next_commands(&rx, &collect) {
                        let started = std::time::Instant::now();
                        let (mut synced, mut then) = (Vec::new(), Vec::new());
                        let mut batch = 0usize;
                        let mut garbage = Vec::new();
                        for command in commands {
                            match command {
                                Command::Events(events) => {
                                    batch += events.len();
                                    driver.apply(events, &mut graphs, &mut garbage)
                                }
                                Command::Synced(source) => synced.push(source),
                                Command::Then(callback) => then.push(callback),
                                // (None here: `next_commands` puts a batch's commands in its place.)
                                Command::Batch(_) => {}
                            }
                        }
                        driver.flush(&mut graphs, &mut garbage);
                        time += 1;
                        let step = graphs.step(worker);
                        let busy = !rx.is_empty();
                        output.emit(Time { time: time - 1, step, synced, then, garbage, started, batch }, busy);
                    }
                    output.finish();
                });
            })
            .expect("spawning the engine thread");
        let tx = CommandSender::new(tx, Some(worker.thread().clone()));
        Engine { tx: Some(tx), worker: Some(worker) }
    }

    pub fn sender(&self) -> CommandSender {
        self.tx.clone().expect("the engine's sender lives as long as the engine")
    }

    pub fn send(&self, command: Command) {
        // The worker only exits when every sender is gone, so this cannot fail while `self` lives.
        if let Some(tx) = &self.tx {
            let _ = tx.send(command);
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(worker) = self.worker.take() {
            // Other senders (sources) may still be alive; do not wait for them.
            if worker.is_finished() {
                let _ = worker.join();
            }
        }
    }
}

/// Waits for the next command, parked (see [`CommandSender`]), then takes whatever else is
/// waiting. None once every sender is gone. Before it parks, if the output thread has
/// finished a time since, it has the allocator collect (see [`Collect`]).
fn next_commands(rx: &Receiver<Command>, collect: &Collect) -> Option<Vec<Command>> {
    let first = loop {
        match rx.try_recv() {
            Ok(c) => break c,
            // An unpark that came before this park makes it return at once: no send is missed.
            Err(crossbeam_channel::TryRecvError::Empty) => {
                if !collect.run_if_due() {
                    std::thread::park()
                }
            }
            Err(crossbeam_channel::TryRecvError::Disconnected) => return None,
        }
    };
    let mut commands = Vec::new();
    take(&mut commands, first);
    while commands.len() < MAX_COMMANDS_PER_TIME {
        match rx.try_recv() {
            Ok(c) => take(&mut commands, c),
            Err(_) => break,
        }
    }
    Some(commands)
}

/// Adds `command` to `commands`, a batch's commands in its place.
fn take(commands: &mut Vec<Command>, command: Command) {
    match command {
        Command::Batch(batch) => batch.into_iter().for_each(|c| take(commands, c)),
        c => commands.push(c),
    }
}

/// What the graphs made of one time, for the output stage.
struct Time {
    time: u64,
    step: graphs::Step,
    synced: Vec<String>,
    then: Vec<Box<dyn FnOnce() + Send>>,
    garbage: Vec<Object>,
    /// When the engine took the time's first command.
    started: std::time::Instant,
    /// How many input events it folded.
    batch: usize,
}

/// The end of the engine's pipeline: the assembler, the sink, the callbacks and the freeing
/// of what a time replaced.
struct Stage<S> {
    assembler: output::Assembler,
    sink: S,
    dropper: Dropper,
}

impl<S: FnMut(EngineOutput)> Stage<S> {
    fn run(&mut self, t: Time) {
        let delta = self.assembler.finish(t.time, t.step.rows, t.step.assignments);
        (self.sink)(EngineOutput::Delta(delta));
        let metrics = crate::metrics::global();
        metrics.engine_step.observe(t.started.elapsed().as_secs_f64());
        metrics.engine_batch.observe(t.batch as f64);
        for source in t.synced {
            (self.sink)(EngineOutput::Synced(source));
        }
        for callback in t.then {
            callback();
        }
        self.dropper.free(t.garbage);
    }
}

/// What the process's allocator does to take back the blocks of the calling thread that
/// other threads freed; set once, by the binary that chose the allocator
/// ([`set_allocator_collect`]).
static ALLOCATOR_COLLECT: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Sets what the engine thread calls, when it goes idle after its output thread finished a
/// time, to take back its memory that the output thread freed: with mimalloc, `mi_collect`.
/// Once per process; later calls are ignored.
pub fn set_allocator_collect(collect: fn()) {
    let _ = ALLOCATOR_COLLECT.set(collect);
}

/// The engine thread's allocator collection, due once the output thread finished a time.
///
/// The output stage frees what the engine thread allocated for the time (its rows). mimalloc
/// puts a block that another thread frees on a list of its owner's, and the owner takes the
/// whole list back at its next allocation that misses its free lists: the first pod event
/// after a large time (the initial load at `large`) handed to the output thread spent 11–18 ms
/// there (`_mi_heap_delayed_free_partial` under `endpoints::Graph::finish`, `perf record`,
/// session 40). With the initial load handed over (forced, to measure), 30 s at 5 pod events/s
/// cost 280–282 µs of engine CPU per event without this collection, 186–195 with it (as much
/// as with the initial load output on the engine's thread), and the batch maximum was
/// 13.5–14.2 ms against 0.55–0.59 (BENCHMARKS.md, "Session 40"). The engine thread collects
/// when it would otherwise park, off every event's path.
struct Collect {
    due: std::sync::atomic::AtomicBool,
    engine: std::thread::Thread,
}

impl Collect {
    /// Called by the output thread when it finished its last queued time: wakes the engine
    /// thread, which collects if it has nothing else to do.
    fn request(&self) {
        self.due.store(true, std::sync::atomic::Ordering::Release);
        self.engine.unpark();
    }

    /// Runs the allocator's collection if one is due; whether it was.
    fn run_if_due(&self) -> bool {
        if !self.due.swap(false, std::sync::atomic::Ordering::AcqRel) {
            return false;
        }
        if let Some(collect) = ALLOCATOR_COLLECT.get() {
            collect();
        }
        true
    }
}

/// From this many output rows in a time on, if more input is waiting, its output stage runs
/// on the output thread while the engine goes on with the next time (a saturated engine's
/// times have thousands; the sink and the assembler were 15% of its thread at `large`, `perf
/// record`, session 39). Any other time's stage runs on the engine thread, which costs less
/// than the wake, unless the output thread still has a time to finish: the times come out in
/// order. (Not an idle engine's large time: handing it over gains nothing when no input waits.
/// What a handed-over time costs the engine thread afterwards, its blocks that the output
/// thread freed, it takes back when idle: see [`Collect`].)
const OUTPUT_ELSEWHERE: usize = 512;

/// The output stage, run on the engine thread or on a thread of its own.
struct Output<S> {
    stage: std::sync::Arc<std::sync::Mutex<Stage<S>>>,
    /// The output thread, started with the first time handed to it.
    thread: Option<(Sender<Time>, JoinHandle<()>)>,
    /// How many times the output thread has yet to finish.
    pending: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Asked for by the output thread whenever it has finished every time handed to it.
    collect: std::sync::Arc<Collect>,
}

impl<S: FnMut(EngineOutput) + Send + 'static> Output<S> {
    /// The output stage of the engine running on the calling thread.
    fn new(sink: S, dropper: Dropper) -> Output<S> {
        Output {
            stage: std::sync::Arc::new(std::sync::Mutex::new(Stage {
                assembler: output::Assembler::default(),
                sink,
                dropper,
            })),
            thread: None,
            pending: std::sync::Arc::default(),
            collect: std::sync::Arc::new(Collect {
                due: std::sync::atomic::AtomicBool::new(false),
                engine: std::thread::current(),
            }),
        }
    }

    /// Outputs time `t`: here, or on the output thread if it is large and the engine has more
    /// input waiting (`busy`).
    fn emit(&mut self, t: Time, busy: bool) {
        use std::sync::atomic::Ordering;
        let rows = t.step.rows.len() + t.step.assignments.len();
        // (Nothing pending: every time before this one is out, and the output thread has let
        // go of the stage.)
        let here = rows < OUTPUT_ELSEWHERE || !busy;
        let tx = if here && self.pending.load(Ordering::Acquire) == 0 { None } else { self.thread().cloned() };
        let Some(tx) = tx else {
            self.stage.lock().unwrap_or_else(|e| e.into_inner()).run(t);
            return;
        };
        self.pending.fetch_add(1, Ordering::AcqRel);
        if let Err(crossbeam_channel::SendError(t)) = tx.send(t) {
            // (The output thread is gone: it panicked in the sink.)
            self.pending.fetch_sub(1, Ordering::AcqRel);
            self.stage.lock().unwrap_or_else(|e| e.into_inner()).run(t);
        }
    }

    /// The output thread's queue, the thread started if it is not running; None if it cannot be.
    fn thread(&mut self) -> Option<&Sender<Time>> {
        if self.thread.is_some() {
            return self.thread.as_ref().map(|(tx, _)| tx);
        }
        // (Bounded: should the sink fall behind, the engine waits rather than holding times.)
        let (tx, rx) = crossbeam_channel::bounded::<Time>(4);
        let (stage, pending, collect) = (self.stage.clone(), self.pending.clone(), self.collect.clone());
        let spawned = std::thread::Builder::new().name("meshflow-output".into()).spawn(move || {
            for t in rx {
                stage.lock().unwrap_or_else(|e| e.into_inner()).run(t);
                if pending.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) == 1 {
                    collect.request();
                }
            }
        });
        match spawned {
            Ok(handle) => {
                let (tx, _) = self.thread.insert((tx, handle));
                Some(tx)
            }
            Err(e) => {
                tracing::warn!(error = %e, "no output thread: every time is output on the engine's");
                None
            }
        }
    }

    /// Waits for the output thread to output every time handed to it.
    fn finish(&mut self) {
        if let Some((tx, handle)) = self.thread.take() {
            drop(tx);
            let _ = handle.join();
        }
    }
}

/// Frees the objects a time replaced after its output is out; those of a large time on a
/// thread of its own. A saturated engine's times replace thousands of objects, each freed
/// field by field from memory long gone cold (and allocated by a source's thread): 5–9% of the
/// engine thread at `large`, which the idle core does instead. A small time's few objects are
/// freed here, which costs less than the wake.
#[derive(Default)]
struct Dropper {
    /// The dropper's thread, or what the engine was given to recycle to.
    tx: Option<Sender<Vec<Object>>>,
}

/// From this many objects in a time on, they are freed on the dropper's thread.
const DROP_ELSEWHERE: usize = 512;

impl Dropper {
    /// Frees `garbage`: here if it is small, else on the dropper's thread.
    fn free(&mut self, garbage: Vec<Object>) {
        if garbage.len() < DROP_ELSEWHERE {
            return;
        }
        let tx = self.tx.get_or_insert_with(|| {
            let (tx, rx) = crossbeam_channel::unbounded::<Vec<Object>>();
            let spawned = std::thread::Builder::new().name("meshflow-drop".into()).spawn(move || {
                // Batch class: its wake never preempts the engine (see [`crate::sched::batch_scheduling`]).
                crate::sched::batch_scheduling();
                for garbage in rx {
                    drop(garbage);
                }
            });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "no thread to free replaced objects on: freeing them on the engine's");
            }
            tx
        });
        // (With no thread, the send fails and the objects are freed here.)
        let _ = tx.send(garbage);
    }
}

/// What the engine currently holds per input key, so that an update can retract the old
/// object and a delete knows what to retract. Kinds not yet translated are held too, so
/// that the set of known objects is complete when their translation is added.
#[derive(Default)]
struct Driver {
    current: HashMap<ObjectKey, Object>,
    /// The slices (and core/v1 Endpoints) changed at this time, each with what it was before
    /// the time: fed to the graphs once, when the time's events are all in ([`Driver::flush`]).
    /// A churning Service's slice changes many times in a saturated time (at `large`, ~8,400
    /// pod events fall on ~5,700 of 10,000 Services), and each version fed cost the diff of its
    /// endpoints and every changed row keyed, expanded and patched.
    deferred: HashMap<ObjectKey, Option<Object>>,
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
    /// Applies `events` to the graphs; the objects they replace or delete go to `garbage`.
    /// Slices and Endpoints are held at once but fed at [`Driver::flush`].
    fn apply(&mut self, events: Vec<InputEvent>, graphs: &mut graphs::Graphs, garbage: &mut Vec<Object>) {
        for event in events {
            let series = self.series.entry(event.key.kind).or_insert_with(|| KindSeries::of(event.key.kind));
            if event.object.is_some() { &series.applied } else { &series.deleted }.inc();
            let deferred = matches!(event.key.kind, Kind::EndpointSlice | Kind::Endpoints).then(|| event.key.clone());
            let feed = deferred.is_none();
            // (One search of the map: an update replaces the held object in place.)
            let old = match (event.object, self.current.entry(event.key)) {
                (Some(new), Entry::Occupied(mut held)) => {
                    if *held.get() == new {
                        continue;
                    }
                    let old = std::mem::replace(held.get_mut(), new);
                    if feed {
                        graphs.update(Some(&old), Some(held.get()));
                    }
                    count(held.get(), &series.objects, 1);
                    Some(old)
                }
                (Some(new), Entry::Vacant(place)) => {
                    let new = place.insert(new);
                    if feed {
                        graphs.update(None, Some(new));
                    }
                    count(new, &series.objects, 1);
                    None
                }
                (None, Entry::Occupied(held)) => {
                    let old = held.remove();
                    if feed {
                        graphs.update(Some(&old), None);
                    }
                    Some(old)
                }
                (None, Entry::Vacant(_)) => continue,
            };
            if let Some(old) = &old {
                count(old, &series.objects, -1);
            }
            match deferred {
                // The first change of the time keeps what the object was before it; a later
                // one's replaced version was never fed.
                Some(key) => match self.deferred.entry(key) {
                    Entry::Occupied(_) => garbage.extend(old),
                    Entry::Vacant(place) => {
                        place.insert(old);
                    }
                },
                None => garbage.extend(old),
            }
        }
    }

    /// Feeds the graphs each deferred object's change over the time: from what it was before
    /// the time to what it is now. The graphs hold every other input as it is now, a state
    /// the input passed through or could have (each object's changes are in order); the
    /// time's output is the same.
    fn flush(&mut self, graphs: &mut graphs::Graphs, garbage: &mut Vec<Object>) {
        // (Taken, not drained: the capacity of a large time, such as the initial load's 10,000
        // slices, is not kept for every later time to walk.)
        for (key, old) in std::mem::take(&mut self.deferred) {
            let new = self.current.get(&key);
            if old.is_some() || new.is_some() {
                graphs.update(old.as_ref(), new);
            }
            garbage.extend(old);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    /// Set when the engine's worker drops its sink: the worker has ended.
    struct Ended(Arc<AtomicBool>);
    impl Drop for Ended {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    fn wait_for(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The worker parks while it has nothing to do: a command sent to it then is taken at
    /// once, from the engine's handle or a source's sender; it ends when the last sender goes,
    /// and not before.
    #[test]
    fn a_parked_engine_takes_each_command_and_ends_with_its_last_sender() {
        let ended = Arc::new(AtomicBool::new(false));
        let guard = Ended(ended.clone());
        let engine = Engine::start(move |_| {
            let _ = &guard;
        });
        let source = engine.sender();
        let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for i in 0..20 {
            let d = done.clone();
            let then = Command::Then(Box::new(move || {
                d.fetch_add(1, Ordering::SeqCst);
            }));
            if i % 2 == 0 {
                engine.send(then)
            } else {
                source.send(then).unwrap()
            }
            wait_for("the command", || done.load(Ordering::SeqCst) == i + 1);
            // Long enough for the worker to park again.
            std::thread::sleep(Duration::from_millis(2));
        }
        drop(engine);
        std::thread::sleep(Duration::from_millis(50));
        assert!(!ended.load(Ordering::SeqCst), "a source's sender still feeds the worker");
        let d = done.clone();
        source
            .send(Command::Then(Box::new(move || {
                d.fetch_add(1, Ordering::SeqCst);
            })))
            .expect("the worker still takes commands");
        wait_for("the last command", || done.load(Ordering::SeqCst) == 21);
        // Parked again, the worker hears of the last sender's drop.
        std::thread::sleep(Duration::from_millis(20));
        assert!(!ended.load(Ordering::SeqCst));
        drop(source);
        wait_for("the worker to end", || ended.load(Ordering::SeqCst));
    }

    fn service(name: &str) -> Object {
        let doc: serde_json::Value = serde_yaml_ng::from_str(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n\
             spec: {{selector: {{app: {name}}}, ports: [{{name: http, port: 9080}}]}}"
        ))
        .expect("yaml");
        match crate::model::parse_document(doc, "default").pop() {
            Some(crate::model::ParseOutcome::Object(o)) => o,
            other => panic!("not an object: {other:?}"),
        }
    }

    /// A batch's commands are taken in one time, whenever it arrives: its `Then` runs after
    /// the output of its own events, never between them and a time of their own (the bench's
    /// step and its marker, sent to a parked engine).
    #[test]
    fn a_batch_is_taken_in_one_time() {
        let deltas: Arc<std::sync::Mutex<Vec<Vec<String>>>> = Arc::default();
        let sink = deltas.clone();
        let engine = Engine::start(move |output| {
            if let EngineOutput::Delta(d) = output {
                sink.lock().unwrap().push(d.changes.iter().map(|c| c.name.clone()).collect());
            }
        });
        let seen: Arc<std::sync::Mutex<Vec<Option<Vec<String>>>>> = Arc::default();
        for i in 0..10 {
            let (deltas, heard) = (deltas.clone(), seen.clone());
            let name = format!("svc-{i}");
            engine.send(Command::Batch(vec![
                Command::Events(vec![InputEvent::apply(service(&name))]),
                Command::Then(Box::new(move || {
                    let last = deltas.lock().unwrap().last().cloned();
                    heard.lock().unwrap().push(last);
                })),
            ]));
            wait_for("the batch's callback", || seen.lock().unwrap().len() == i + 1);
            // Long enough for the worker to park again.
            std::thread::sleep(Duration::from_millis(2));
            let last = seen.lock().unwrap()[i].clone().expect("a time before the callback");
            let cluster = format!("outbound|9080||{name}.default.svc.cluster.local");
            assert!(last.contains(&cluster), "the callback's time holds {name}'s cluster: {last:?}");
        }
    }

    /// A time of many rows, with more input waiting, is output on the output thread; the
    /// times after it wait their turn: every time comes out once and in order, each callback
    /// after its own time's output, whichever thread outputs it. A large time of an idle
    /// engine, and a small one with nothing pending, are output on the engine's thread.
    #[test]
    fn times_come_out_in_order_whichever_thread_outputs_them() {
        use crate::translate::{ResourceType, Scope};
        let out: Arc<std::sync::Mutex<Vec<(u64, String)>>> = Arc::default();
        let sink = out.clone();
        let mut output = Output::new(
            move |o| {
                if let EngineOutput::Delta(d) = o {
                    let thread = std::thread::current().name().unwrap_or_default().to_string();
                    if d.changes.len() >= OUTPUT_ELSEWHERE {
                        // A slow sink: the times after this one come while it is still out.
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    sink.lock().unwrap().push((d.time, thread));
                }
            },
            Dropper::default(),
        );
        // (Each callback's time, and the last time out when it ran.)
        type Heard = Vec<(u64, Option<u64>)>;
        let seen: Arc<std::sync::Mutex<Heard>> = Arc::default();
        let time = |time: u64, n: usize| {
            let (out, heard) = (out.clone(), seen.clone());
            let rows = (0..n)
                .map(|i| {
                    let body: Arc<[u8]> = vec![time as u8, 1].into();
                    let name = format!("c{i}");
                    (OutputRow::Resource { scope: Scope::All, ty: ResourceType::Cluster, name, body }, 1)
                })
                .collect();
            Time {
                time,
                step: graphs::Step { rows, assignments: Vec::new() },
                synced: Vec::new(),
                then: vec![Box::new(move || {
                    let last = out.lock().unwrap().last().map(|(t, _)| *t);
                    heard.lock().unwrap().push((time, last));
                })],
                garbage: Vec::new(),
                started: Instant::now(),
                batch: n,
            }
        };
        let here = std::thread::current().name().expect("a named test thread").to_string();
        output.emit(time(0, 600), false);
        output.emit(time(1, 600), true);
        output.emit(time(2, 600), true);
        for t in 3..8 {
            output.emit(time(t, 2), false);
        }
        wait_for("the callbacks", || seen.lock().unwrap().len() == 8);
        output.emit(time(8, 2), false);
        output.finish();
        let out = out.lock().unwrap().clone();
        let times: Vec<u64> = out.iter().map(|(t, _)| *t).collect();
        assert_eq!(times, (0..9).collect::<Vec<_>>(), "every time once, in order");
        let threads: Vec<&str> = out.iter().map(|(_, thread)| thread.as_str()).collect();
        assert_eq!(threads[0], here, "an idle engine's large time here");
        assert_eq!(&threads[1..8], ["meshflow-output"; 7], "a busy engine's large times there, and what came after");
        assert_eq!(threads[8], here, "a small time with nothing pending here");
        let seen = seen.lock().unwrap().clone();
        assert!(seen.iter().all(|(t, last)| *last == Some(*t)), "each callback after its own time: {seen:?}");
    }

    /// Once the output thread has finished every time handed to it, the engine thread, with
    /// no command waiting, has the allocator collect before it parks, once; with commands
    /// waiting, or nothing due, it does not.
    #[test]
    fn the_engine_collects_its_allocator_when_idle_after_the_output_thread() {
        thread_local! {
            static CALLS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
        }
        // (Counted per thread: engines of other tests call it on their own threads.)
        set_allocator_collect(|| CALLS.with(|c| c.set(c.get() + 1)));
        let calls = || CALLS.with(|c| c.get());
        let mut output = Output::new(|_| {}, Dropper::default());
        let (tx, rx) = crossbeam_channel::unbounded();
        let sender = CommandSender::new(tx, Some(std::thread::current()));

        sender.send(Command::Synced("first".into())).unwrap();
        assert!(next_commands(&rx, &output.collect).is_some());
        assert_eq!(calls(), 0, "nothing due: no collection");

        let rows = (0..OUTPUT_ELSEWHERE)
            .map(|i| {
                let (ty, scope) = (crate::translate::ResourceType::Cluster, crate::translate::Scope::All);
                (OutputRow::Resource { scope, ty, name: format!("c{i}"), body: vec![1u8].into() }, 1)
            })
            .collect();
        let step = graphs::Step { rows, assignments: Vec::new() };
        let t =
            Time { time: 0, step, synced: vec![], then: vec![], garbage: vec![], started: Instant::now(), batch: 1 };
        output.emit(t, true);
        let collect = output.collect.clone();
        wait_for("the output thread to finish", || collect.due.load(std::sync::atomic::Ordering::Acquire));

        sender.send(Command::Synced("waiting".into())).unwrap();
        assert!(next_commands(&rx, &collect).is_some());
        assert_eq!(calls(), 0, "a command waiting: taken first");

        let later = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            sender.send(Command::Synced("later".into())).unwrap();
        });
        let commands = next_commands(&rx, &collect).expect("the later command");
        assert!(matches!(&commands[..], [Command::Synced(s)] if s == "later"));
        assert_eq!(calls(), 1, "collected once, before parking");
        assert!(!collect.due.load(std::sync::atomic::Ordering::Acquire));
        later.join().unwrap();
        output.finish();
    }
}
