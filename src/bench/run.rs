//! Running one scenario: incremental (the engine, the cache, the real xDS server and K delta
//! clients) and the full-recompute baseline, on the same seeded steps.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::clients::{self, Tracker};
use super::envoy::BenchEnvoy;
use super::generate::{World, write_docs};
use super::progress::Progress;
use super::report::{Cpu, Full, Incremental, PerEvent, ScenarioReport, Verify};
use super::scenario::{Scenario, Step, Steps};
use super::{BenchArgs, SourceKind, sys};
use crate::cache::Cache;
use crate::engine::{Command, Engine, EngineOutput};
use crate::model::{InputEvent, Object, ObjectKey};
use crate::translate::{ResourceType, Scope, reference};

/// One engine output batch as the sink saw it.
#[derive(Clone, Copy, Debug)]
struct Batch {
    at: Instant,
    /// Changes that changed the cache.
    changes: usize,
    /// The same by type ([`ResourceType::ALL`] order), and the bytes of the new encodings.
    by_type: [u64; ResourceType::ALL.len()],
    bytes: u64,
    /// Changes that the sidecars see (all but the ingress gateway's).
    sidecar_changes: usize,
    /// The cache's sequence number once the batch is applied.
    seq: u64,
}

/// What the engine tells the runner, after a step's events ([`step_marker`]): step `n`'s
/// output is batch `b`.
struct Marker {
    step: u64,
    batch: u64,
}

struct Probe {
    batches: Mutex<Vec<Batch>>,
}

/// The engine sink for the bench: applies each batch to the cache, as `serve`'s sink does, and
/// records it (and registers its changes with the client tracker) before the cache wakes any
/// stream.
fn sink(cache: Arc<Cache>, probe: Arc<Probe>, tracker: Arc<Tracker>) -> impl FnMut(EngineOutput) + Send + 'static {
    // The ingress gateway's resources are not for the simulated proxies (sidecars).
    let ingress = match World::ingress_class() {
        Object::ProxyClass(c) => Scope::Class(c.id()),
        _ => unreachable!("the ingress class is a ProxyClass"),
    };
    move |output| match output {
        EngineOutput::Delta(delta) => {
            let mut recording = Recording {
                batch: Batch {
                    at: Instant::now(),
                    changes: 0,
                    by_type: [0; ResourceType::ALL.len()],
                    bytes: 0,
                    sidecar_changes: 0,
                    seq: 0,
                },
                sidecar: Vec::new(),
                ingress: &ingress,
                probe: &probe,
                tracker: &tracker,
            };
            if cache.apply_observed(&delta, &mut recording) == 0 {
                // Nothing changed: the batch is recorded all the same (a step's marker names
                // the latest batch), with the current sequence number.
                recording.batch.seq = cache.seq();
                probe.batches.lock().unwrap_or_else(|e| e.into_inner()).push(recording.batch);
            }
        }
        EngineOutput::Synced(source) => cache.source_synced(&source),
    }
}

/// What the bench's sink notes of a batch while the cache applies it.
struct Recording<'a> {
    batch: Batch,
    /// The changes the sidecars see: type, name, new version.
    sidecar: Vec<(ResourceType, String, Option<String>)>,
    ingress: &'a Scope,
    probe: &'a Probe,
    tracker: &'a Tracker,
}

impl crate::cache::ApplyObserver for Recording<'_> {
    fn changed(&mut self, change: &crate::engine::ResourceChange, version: Option<&str>) {
        let b = &mut self.batch;
        b.changes += 1;
        b.by_type[ResourceType::ALL.iter().position(|t| *t == change.ty).unwrap_or_default()] += 1;
        b.bytes += change.body.as_ref().map_or(0, |body| body.len() as u64);
        if change.scope != *self.ingress {
            self.sidecar.push((change.ty, change.name.clone(), version.map(str::to_string)));
        }
    }

    fn applied(&mut self, seq: u64) {
        self.batch.seq = seq;
        self.batch.sidecar_changes = self.sidecar.len();
        let mut batches = self.probe.batches.lock().unwrap_or_else(|e| e.into_inner());
        let index = batches.len() as u64;
        batches.push(self.batch);
        drop(batches);
        self.tracker.register(index, seq, std::mem::take(&mut self.sidecar));
    }
}

/// Sent to the engine behind step `step`'s events: once their output is in the cache, tells
/// `markers` which batch it was (the latest).
fn step_marker(step: u64, probe: &Arc<Probe>, markers: &crossbeam_channel::Sender<Marker>) -> Command {
    let (probe, markers) = (probe.clone(), markers.clone());
    Command::Then(Box::new(move || {
        let batch = probe.batches.lock().unwrap_or_else(|e| e.into_inner()).len().saturating_sub(1) as u64;
        let _ = markers.send(Marker { step, batch });
    }))
}

/// The server's first writes by sequence number ([`crate::xds::sync::WriteTap`]), each with the
/// earliest write of that or any later sequence number: a response built at a later change
/// carries every earlier one its stream had not sent.
fn first_writes(writes: &BTreeMap<u64, Instant>) -> Vec<(u64, Instant)> {
    let mut out: Vec<(u64, Instant)> = writes.iter().map(|(s, at)| (*s, *at)).collect();
    for i in (0..out.len().saturating_sub(1)).rev() {
        out[i].1 = out[i].1.min(out[i + 1].1);
    }
    out
}

/// When a response carrying cache change `seq` first went out (see [`first_writes`]).
fn first_write(writes: &[(u64, Instant)], seq: u64) -> Option<Instant> {
    writes.get(writes.partition_point(|(s, _)| *s < seq)).map(|(_, at)| *at)
}

fn free_port() -> anyhow::Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

fn micros(d: Duration) -> u64 {
    d.as_micros().min(u64::MAX as u128) as u64
}

/// Keeps `live` (the objects sent so far, by key) up to date with a step's `events`.
fn apply_live<M: Live>(live: &mut M, events: &[InputEvent]) {
    for e in events {
        match &e.object {
            Some(o) => live.put(e.key.clone(), o.clone()),
            None => live.take(&e.key),
        }
    }
}

/// A map of the objects sent: the incremental run's is hashed (at 50,000 steps a second its
/// upkeep is on the generator's thread, and a B-tree of 100,000 Pods cost a third of it,
/// `perf record -g`), the full run's ordered.
trait Live {
    fn put(&mut self, key: ObjectKey, object: Object);
    fn take(&mut self, key: &ObjectKey);
}

impl Live for BTreeMap<ObjectKey, Object> {
    fn put(&mut self, key: ObjectKey, object: Object) {
        self.insert(key, object);
    }
    fn take(&mut self, key: &ObjectKey) {
        self.remove(key);
    }
}

impl Live for foldhash::HashMap<ObjectKey, Object> {
    fn put(&mut self, key: ObjectKey, object: Object) {
        self.insert(key, object);
    }
    fn take(&mut self, key: &ObjectKey) {
        self.remove(key);
    }
}

/// A scratch directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> anyhow::Result<TempDir> {
        let path = std::env::temp_dir().join(format!("meshflow-bench-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)?;
        Ok(TempDir(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Paces steps: the n-th step is due `n / rate` seconds after the start.
struct Pacer {
    start: Instant,
    rate: f64,
    end: Instant,
}

impl Pacer {
    fn due(&self, n: u64) -> Option<Instant> {
        let at = self.start + Duration::from_secs_f64(n as f64 / self.rate.max(1e-3));
        (at < self.end).then_some(at)
    }
}

fn sleep_until(at: Instant) {
    let now = Instant::now();
    if at > now {
        std::thread::sleep(at - now);
    }
}

/// Writes the files a step's events live in, for the directory source.
fn write_step_files(world: &World, root: &Path, events: &[InputEvent]) -> anyhow::Result<()> {
    let files: HashSet<PathBuf> = events.iter().map(|e| World::file_of(&e.key)).collect();
    for rel in files {
        let path = root.join(&rel);
        match world.docs_of_file(&rel) {
            Some(docs) => write_docs(&path, &docs)?,
            None => match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            },
        }
    }
    Ok(())
}

/// Runs the scenario against the engine (or the directory source), the xDS server and the
/// clients.
pub fn incremental(args: &BenchArgs, scenario: Scenario, report: &mut ScenarioReport) -> anyhow::Result<()> {
    let preset = args.preset()?;
    let mut world = World::new(preset, args.seed);
    let mut steps = Steps::new(scenario);
    let clients = args.clients;

    let cache = Cache::new([]);
    let probe = Arc::new(Probe { batches: Mutex::new(Vec::new()) });
    if args.nack_clients + args.slow_clients > clients || args.slow_clients > 0 && args.slow_clients >= clients {
        anyhow::bail!(
            "--nack-clients {} and --slow-clients {} need more --clients than {clients} (one reading at once at least)",
            args.nack_clients,
            args.slow_clients
        );
    }
    // Slow clients are not waited for: latencies are to the last of the others.
    let tracker = Arc::new(Tracker::new(clients - args.slow_clients));
    let behaviour = |i: usize| {
        if i < args.nack_clients {
            clients::Behaviour::Nacking
        } else if i >= clients - args.slow_clients {
            clients::Behaviour::Slow(args.slow_delay)
        } else {
            clients::Behaviour::Acking
        }
    };
    let (marker_tx, markers) = crossbeam_channel::unbounded();
    // (What the engine replaces comes back to be freed on this thread, which allocated it.)
    let (recycle, recycled) = crossbeam_channel::unbounded::<Vec<Object>>();
    let engine = Engine::start_recycling(
        crate::translate::MeshConfig::default(),
        sink(cache.clone(), probe.clone(), tracker.clone()),
        Some(recycle),
    );
    let mut progress = Progress::start(scenario.name(), "initial translation");

    // Initial sync.
    let mut objects = world.objects();
    objects.push(World::ingress_class());
    let mut live: foldhash::HashMap<ObjectKey, Object> = objects.iter().map(|o| (o.key(), o.clone())).collect();
    let dir = match args.source {
        SourceKind::Engine => None,
        SourceKind::Dir => {
            let dir = TempDir::new(scenario.name())?;
            world.export(dir.path())?;
            Some(dir)
        }
    };
    let started = Instant::now();
    let _watch = match &dir {
        None => {
            engine.send(Command::Events(objects.into_iter().map(InputEvent::apply).collect()));
            None
        }
        Some(dir) => {
            drop(objects);
            // Classes come from the xDS server, not from files.
            engine.send(Command::Events(vec![InputEvent::apply(World::ingress_class())]));
            Some(crate::source::file::spawn(dir.path().to_path_buf(), engine.sender())?)
        }
    };
    engine.send(step_marker(0, &probe, &marker_tx));
    let first = markers.recv_timeout(Duration::from_secs(1800))?;
    let initial_batch_at = probe.batches.lock().unwrap_or_else(|e| e.into_inner())[first.batch as usize].at;
    let mut inc = Incremental {
        initial_sync_ms: (initial_batch_at - started).as_secs_f64() * 1000.0,
        initial_resources: cache.snapshot().len(),
        ..Default::default()
    };

    // The xDS server and the clients.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("meshflow-xds")
        .on_thread_start(crate::sched::batch_scheduling)
        .enable_all()
        .build()?;
    let client_rt = clients::client_runtime()?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut client_tasks = Vec::new();
    let client_ends = clients::Ends::new(clients);
    let mut envoy = None;
    let addr = free_port()?;
    // When each cache change's first response went out: sequence number → the first write.
    let wire: Arc<Mutex<BTreeMap<u64, Instant>>> = Default::default();
    if clients > 0 || args.envoy.is_some() {
        let mut server_stop = stop_rx.clone();
        let connections = crate::xds::sync::Connections::new();
        let writes = wire.clone();
        connections.tap_writes(Arc::new(move |seq, at| {
            // (Two threads write: the one that began earlier may report later.)
            let mut writes = writes.lock().unwrap_or_else(|e| e.into_inner());
            let first = writes.entry(seq).or_insert(at);
            *first = (*first).min(at);
        }));
        server_rt.spawn(crate::xds::serve_with_connections(
            cache.clone(),
            None,
            connections.clone(),
            addr,
            async move {
                let _ = server_stop.wait_for(|s| *s).await;
            },
        ));
        // Before any stream registers (streams take the answer tap when they do).
        if let Some(path) = &args.envoy {
            envoy = Some(BenchEnvoy::start(path, addr, &connections, &args.out, scenario.name())?);
        }
    }
    if clients > 0 {
        progress.phase(&format!("{clients} clients taking the initial configuration"));
        let connected = Instant::now();
        // `--streams-per-connection` clients to a connection, each connection with the task
        // that runs its clients.
        for group in clients::connection_groups(clients, args.streams_per_connection as usize) {
            let members = group
                .map(|i| clients::Member {
                    i,
                    node: clients::node(i, clients::Shape::default()),
                    behaviour: behaviour(i),
                })
                .collect();
            let endpoint = format!("http://{addr}");
            client_tasks.push(client_rt.spawn(clients::run_group(
                endpoint,
                members,
                tracker.clone(),
                stop_rx.clone(),
                client_ends.clone(),
            )));
        }
        // Wait for every client to hold the initial configuration (or for them to stop
        // receiving anything for a few seconds).
        let deadline = Instant::now() + Duration::from_secs(1800);
        let mut heard = (u64::MAX, Instant::now());
        loop {
            let responses = tracker.responses.load(Ordering::Relaxed);
            if responses != heard.0 {
                heard = (responses, Instant::now());
            }
            let tracks = tracker.batches.lock().unwrap_or_else(|e| e.into_inner());
            // The initial input may have come out in more than one batch.
            let initial: Vec<_> = tracks.iter().filter(|(b, _)| **b <= first.batch).map(|(_, t)| t).collect();
            let track = initial.iter().max_by_key(|t| t.expected).copied();
            if !initial.is_empty() && initial.iter().all(|t| t.last.is_some()) {
                let last = initial.iter().filter_map(|t| t.last).max().expect("non-empty");
                inc.clients_initial_sync_ms = Some((last - connected).as_secs_f64() * 1000.0);
                break;
            }
            if Instant::now() > deadline || heard.1.elapsed() > Duration::from_secs(5) || client_ends.open() == 0 {
                eprintln!(
                    "warning: {} of {clients} clients received the whole initial configuration ({} resources; {:?} still to receive)",
                    track.map(|t| t.done_clients).unwrap_or(0),
                    track.map(|t| t.expected).unwrap_or(0),
                    track.map(|t| t.remaining_counts()),
                );
                break;
            }
            drop(tracks);
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    if let Some(envoy) = &mut envoy {
        progress.phase("Envoy taking the initial configuration");
        let seq = probe.batches.lock().unwrap_or_else(|e| e.into_inner())[first.batch as usize].seq;
        // Every type there is to take: at `large` Envoy parses the route configurations for
        // tens of seconds after it ACKed the listeners, and steps timed meanwhile wait on it.
        let types: Vec<ResourceType> = ResourceType::ALL.into_iter().filter(|t| cache.len(*t) > 0).collect();
        envoy.wait_synced(seq, &types, Duration::from_secs(600))?;
    }

    // The steps.
    let cpu_before = sys::cpu_by_thread_name();
    let process_before = sys::process_cpu_seconds();
    let (pushed_before, bytes_before) =
        (tracker.resources.load(Ordering::Relaxed), tracker.bytes.load(Ordering::Relaxed));
    let pacer = Pacer { start: Instant::now(), rate: args.rate, end: Instant::now() + args.duration };
    let mut sent: Vec<Instant> = Vec::new();
    let mut n = 0u64;
    let step_limit = args.max_steps.unwrap_or(u64::MAX);
    if scenario != Scenario::InitialSync {
        progress.steps(args.duration, args.max_steps);
    }
    while scenario != Scenario::InitialSync && n < step_limit {
        let Some(due) = pacer.due(n) else { break };
        let Some(Step { label, events }) = steps.next(&mut world) else { break };
        *report.step_labels.entry(label.to_string()).or_default() += 1;
        inc.input_objects += events.len() as u64;
        apply_live(&mut live, &events);
        sleep_until(due);
        // An event is due when scheduled, or when the generator had it ready if later.
        let at = due.max(Instant::now());
        match &dir {
            None => {
                sent.push(at);
                // (One send: the engine takes the step's events and its marker in one time.)
                engine.send(Command::Batch(vec![Command::Events(events), step_marker(n + 1, &probe, &marker_tx)]));
            }
            Some(dir) => {
                let at = Instant::now();
                write_step_files(&world, dir.path(), &events)?;
                sent.push(at);
            }
        }
        n += 1;
        progress.step(n);
        while let Ok(garbage) = recycled.try_recv() {
            drop(garbage);
        }
    }
    progress.phase(&format!("waiting for the output of {n} events"));
    let steps_wall = pacer.start.elapsed();
    inc.events = n;
    inc.wall_s = steps_wall.as_secs_f64();
    inc.events_per_s = if inc.wall_s > 0.0 { n as f64 / inc.wall_s } else { 0.0 };

    // Every step's output batch.
    let mut step_batch: Vec<Option<u64>> = vec![None; n as usize];
    match &dir {
        None => {
            let deadline = Instant::now() + Duration::from_secs(600);
            let mut got = 0;
            while got < n {
                let left = deadline.saturating_duration_since(Instant::now());
                let Ok(m) = markers.recv_timeout(left) else { break };
                if m.step >= 1 && m.step <= n {
                    step_batch[(m.step - 1) as usize] = Some(m.batch);
                    got += 1;
                }
            }
        }
        Some(_) => {
            // The directory source sends no markers: a step's batch is the first batch after
            // it was written that changed something (steps are paced apart).
            settle(&probe, Duration::from_millis(500), Duration::from_secs(60));
            let batches = probe.batches.lock().unwrap_or_else(|e| e.into_inner()).clone();
            for (i, at) in sent.iter().enumerate() {
                step_batch[i] = batches
                    .iter()
                    .enumerate()
                    .skip(first.batch as usize + 1)
                    .find(|(_, b)| b.at >= *at && b.changes > 0)
                    .map(|(k, _)| k as u64);
            }
        }
    }
    // Let the clients catch up with the last batch.
    progress.phase("waiting for the clients");
    if clients > 0 {
        wait_clients(&tracker, &probe, Duration::from_secs(120));
    }
    if let Some(envoy) = &envoy {
        progress.phase("waiting for Envoy");
        let last = probe.batches.lock().unwrap_or_else(|e| e.into_inner()).last().map_or(0, |b| b.seq);
        envoy.wait_caught_up(last, Duration::from_secs(60));
    }
    let cpu_after = sys::cpu_by_thread_name();
    inc.cpu = Cpu {
        engine_s: sys::cpu_delta(&cpu_before, &cpu_after, "meshflow-engine"),
        xds_s: sys::cpu_delta(&cpu_before, &cpu_after, "meshflow-xds"),
        clients_s: sys::cpu_delta(&cpu_before, &cpu_after, "bench-client"),
        process_s: sys::process_cpu_seconds() - process_before,
    };
    inc.engine_cpu_us_per_event = if n > 0 { inc.cpu.engine_s * 1e6 / n as f64 } else { 0.0 };
    inc.resources_pushed = tracker.resources.load(Ordering::Relaxed) - pushed_before;
    inc.bytes_pushed = tracker.bytes.load(Ordering::Relaxed) - bytes_before;
    inc.nacking_clients = args.nack_clients;
    inc.slow_clients = args.slow_clients;
    inc.nacks_sent = tracker.nacks.load(Ordering::Relaxed);

    // Latencies.
    let batches = probe.batches.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let tracks = tracker.batches.lock().unwrap_or_else(|e| e.into_inner());
    let mut used_batches = HashSet::new();
    let writes = first_writes(&wire.lock().unwrap_or_else(|e| e.into_inner()));
    for (i, at) in sent.iter().enumerate() {
        let t = (*at - pacer.start).as_secs_f64();
        let Some(b) = step_batch[i] else { continue };
        used_batches.insert(b);
        let batch = batches[b as usize];
        report.batch_samples.push(t, micros(batch.at.saturating_duration_since(*at)));
        let track = tracks.get(&b);
        let first_client = track.and_then(|t| t.first);
        if let Some(first) = first_client {
            report.first_client_samples.push(t, micros(first.saturating_duration_since(*at)));
        }
        if let Some(last) = track.and_then(|t| t.last) {
            report.last_samples.push(t, micros(last.saturating_duration_since(*at)));
        }
        let mut acked = None;
        if let Some(envoy) = &envoy
            && batch.sidecar_changes > 0
        {
            acked = envoy.answers.held_at(batch.seq);
            match acked {
                Some(acked) => report.envoy_samples.push(t, micros(acked.saturating_duration_since(*at))),
                None => inc.envoy_steps_unacked += 1,
            }
        }
        // On the wire: the first response built at or after the batch, once a proxy is known
        // to have got the batch (else the write found would be a later batch's).
        let wrote = (first_client.is_some() || acked.is_some()).then(|| first_write(&writes, batch.seq)).flatten();
        match wrote {
            Some(wrote) => report.frame_samples.push(t, micros(wrote.saturating_duration_since(*at))),
            None => inc.steps_without_frames += 1,
        }
    }
    drop(tracks);
    inc.batches = used_batches.len() as u64;
    inc.resources_changed = used_batches.iter().map(|b| batches[*b as usize].changes as u64).sum();
    for b in &used_batches {
        let batch = &batches[*b as usize];
        for (ty, n) in ResourceType::ALL.iter().zip(batch.by_type) {
            if n > 0 {
                *inc.changed_by_type.entry(ty.short().to_string()).or_default() += n;
            }
        }
        inc.changed_bytes += batch.bytes;
    }
    if scenario == Scenario::InitialSync {
        report.batch_samples.push(0.0, micros(initial_batch_at - started));
        inc.resources_changed = batches[first.batch as usize].changes as u64;
    }
    inc.output_batch_ms = report.batch_samples.summary();
    inc.first_frame_ms = report.frame_samples.summary();
    inc.first_client_ms = report.first_client_samples.summary();
    inc.last_client_ms = report.last_samples.summary();
    if let Some(envoy) = &envoy {
        inc.envoy_ack_ms = Some(report.envoy_samples.summary());
        inc.envoy_nacks = envoy.answers.nacks();
    }
    let per = |v: u64, d: u64| if d > 0 { v as f64 / d as f64 } else { 0.0 };
    inc.per_event = PerEvent { resources: per(inc.resources_pushed, n), bytes: per(inc.bytes_pushed, n) };
    inc.per_client =
        PerEvent { resources: per(inc.resources_pushed, clients as u64), bytes: per(inc.bytes_pushed, clients as u64) };

    // Verify: the cache against the reference translation of the same input.
    if args.verify {
        progress.phase("verifying against the reference translator");
        let served = cache.snapshot();
        let input: Vec<Object> = match &_watch {
            // (In key order, as the full run's: the reference is given its input in one order.)
            None => {
                let mut live: Vec<(&ObjectKey, &Object)> = live.iter().collect();
                live.sort_unstable_by(|a, b| a.0.cmp(b.0));
                live.into_iter().map(|(_, o)| o.clone()).collect()
            }
            // The directory source's view: what the files hold now.
            Some(_) => {
                let mut d = crate::source::file::ConfigDir::new(dir.as_ref().expect("dir source").path());
                d.scan_all();
                let mut objects = d.objects();
                objects.push(World::ingress_class());
                objects
            }
        };
        let verifier = crate::verify::Verifier::default();
        let outcome = verifier.verify(&input, &served);
        inc.verify = Verify {
            resources: outcome.resources,
            mismatches: outcome.mismatches.len(),
            examples: outcome.mismatches.iter().take(10).map(|m| m.to_string()).collect(),
            seconds: outcome.seconds,
        };
    }

    let _ = stop_tx.send(true);
    for task in client_tasks {
        if let Err(e) = client_rt.block_on(task) {
            tracing::warn!("bench client task: {e}");
        }
    }
    for error in client_ends.take_errors() {
        tracing::warn!("bench client: {error}");
    }
    inc.per_client.resources = per(inc.resources_pushed, clients as u64);
    client_rt.shutdown_timeout(Duration::from_secs(2));
    server_rt.shutdown_timeout(Duration::from_secs(2));
    drop(engine);
    progress.finish();
    report.incremental = Some(inc);
    Ok(())
}

/// Waits until no batch arrived for `quiet` (at most `max`).
fn settle(probe: &Probe, quiet: Duration, max: Duration) {
    let deadline = Instant::now() + max;
    loop {
        let last = probe.batches.lock().unwrap_or_else(|e| e.into_inner()).last().map(|b| b.at);
        let idle = last.map(|l| l.elapsed()).unwrap_or(quiet);
        if idle >= quiet || Instant::now() > deadline {
            return;
        }
        std::thread::sleep(quiet - idle.min(quiet) + Duration::from_millis(1));
    }
}

/// Waits until every client received every batch that is still the latest for all its
/// resources, or until no client makes progress for a second.
fn wait_clients(tracker: &Tracker, probe: &Probe, max: Duration) {
    let deadline = Instant::now() + max;
    let mut last_progress = (tracker.responses.load(Ordering::Relaxed), Instant::now());
    loop {
        let total = probe.batches.lock().unwrap_or_else(|e| e.into_inner()).len() as u64;
        let pending = {
            let tracks = tracker.batches.lock().unwrap_or_else(|e| e.into_inner());
            tracks.iter().filter(|(b, t)| **b + 1 >= total.saturating_sub(1) && t.last.is_none()).count()
        };
        let responses = tracker.responses.load(Ordering::Relaxed);
        if responses != last_progress.0 {
            last_progress = (responses, Instant::now());
        }
        if pending == 0 || Instant::now() > deadline || last_progress.1.elapsed() > Duration::from_secs(1) {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sizes of every resource by type, and the set of types that differ between two translations.
fn changed_types(before: &reference::Resources, after: &reference::Resources) -> HashSet<ResourceType> {
    let mut types = HashSet::new();
    for (k, v) in after {
        if before.get(k) != Some(v) {
            types.insert(k.1);
        }
    }
    for k in before.keys() {
        if !after.contains_key(k) {
            types.insert(k.1);
        }
    }
    types
}

/// The baseline: the same steps, every batch recomputed from scratch by the reference
/// translator, pushed as a state-of-the-world server would. Steps are gathered istiod-style:
/// a batch starts when `debounce` passed without a new step (or 10 s after the first).
pub fn full(args: &BenchArgs, scenario: Scenario, report: &mut ScenarioReport) -> anyhow::Result<()> {
    let preset = args.preset()?;
    let mut world = World::new(preset, args.seed);
    let mut steps = Steps::new(scenario);
    let clients = args.clients.max(1) as u64;
    let mut live: BTreeMap<ObjectKey, Object> =
        world.objects().into_iter().chain([World::ingress_class()]).map(|o| (o.key(), o)).collect();
    let cpu0 = sys::thread_cpu_seconds();
    let started = Instant::now();
    let mut current = reference::translate_all(live.values());
    let mut f = Full {
        debounce_ms: args.debounce.as_secs_f64() * 1000.0,
        initial_sync_ms: started.elapsed().as_secs_f64() * 1000.0,
        ..Default::default()
    };
    let initial_cpu = sys::thread_cpu_seconds() - cpu0;
    if scenario == Scenario::InitialSync {
        f.cpu_s = initial_cpu;
        report.full_samples.push(0.0, micros(started.elapsed()));
        f.latency_ms = report.full_samples.summary();
        report.full = Some(f);
        return Ok(());
    }
    const DEBOUNCE_MAX: Duration = Duration::from_secs(10);
    let pacer = Pacer { start: Instant::now(), rate: args.rate, end: Instant::now() + args.duration };
    // Past this the baseline stops (it has fallen behind); what is left is reported.
    let budget_end = pacer.end + args.duration.max(Duration::from_secs(5)) * 2;
    let step_limit = args.max_steps.unwrap_or(u64::MAX);
    let mut n = 0u64;
    let mut exhausted = false;
    let mut batch: Vec<Instant> = Vec::new();
    let mut progress = Progress::start(scenario.name(), "baseline");
    progress.steps(args.duration, args.max_steps);
    let mut scheduled = 0u64;
    loop {
        let now = Instant::now();
        // Take every step that is due.
        while !exhausted && n < step_limit {
            let Some(due) = pacer.due(n) else {
                exhausted = true;
                break;
            };
            if due > now {
                break;
            }
            let Some(step) = steps.next(&mut world) else {
                exhausted = true;
                break;
            };
            apply_live(&mut live, &step.events);
            batch.push(due);
            n += 1;
            scheduled += 1;
            progress.step(n);
        }
        if n >= step_limit {
            exhausted = true;
        }
        let now = Instant::now();
        let quiet_until = batch.last().map(|l| *l + args.debounce);
        let ready = !batch.is_empty()
            && (quiet_until.is_some_and(|q| now >= q)
                || now >= batch[0] + DEBOUNCE_MAX
                || (exhausted && args.debounce.is_zero()));
        if ready || (exhausted && !batch.is_empty() && quiet_until.is_some_and(|q| now >= q)) {
            let c0 = sys::thread_cpu_seconds();
            let next = reference::translate_all(live.values());
            let types = changed_types(&current, &next);
            for ty in &types {
                let (count, bytes) = next
                    .iter()
                    .filter(|(k, _)| k.1 == *ty)
                    .fold((0u64, 0u64), |(c, b), (_, v)| (c + 1, b + v.len() as u64));
                f.resources_pushed += count * clients;
                f.bytes_pushed += bytes * clients;
            }
            current = next;
            f.cpu_s += sys::thread_cpu_seconds() - c0;
            let done = Instant::now();
            for at in batch.drain(..) {
                report.full_samples.push((at - pacer.start).as_secs_f64(), micros(done - at));
                f.events += 1;
            }
            f.batches += 1;
            continue;
        }
        if exhausted && batch.is_empty() {
            break;
        }
        if Instant::now() > budget_end {
            break;
        }
        // Sleep until the next step is due or the batch is quiet.
        let mut wake = quiet_until.unwrap_or(now + Duration::from_millis(50));
        if !exhausted && let Some(due) = pacer.due(n) {
            wake = wake.min(due);
        }
        sleep_until(wake.min(now + Duration::from_millis(50)));
    }
    progress.finish();
    f.events_unprocessed = scheduled - f.events;
    f.latency_ms = report.full_samples.summary();
    f.cpu_us_per_event = if f.events > 0 { f.cpu_s * 1e6 / f.events as f64 } else { 0.0 };
    let per = |v: u64, d: u64| if d > 0 { v as f64 / d as f64 } else { 0.0 };
    f.per_event = PerEvent { resources: per(f.resources_pushed, f.events), bytes: per(f.bytes_pushed, f.events) };
    report.full = Some(f);
    Ok(())
}
