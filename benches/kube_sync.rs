//! Kubernetes source at scale: 10,000 Pods (plus 100 selector Services) in the initial list
//! of a test apiserver (tests/support/apiserver.rs, the real list/watch protocol, paged by
//! 500), through the real kube client, the engine and the cache, until meshflow is ready.
//!
//! Reports the time from starting the source to ready (every watch synced and translated),
//! next to the time kube's watcher alone takes to list the same pods from the same server
//! (the floor), and the engine alone on the same objects in one batch. Memory is live heap
//! bytes (a counting global allocator), per pod: a slim Pod held as the engine's driver and
//! the kube watch hold it (map entry plus the watch's key and hash), and the engine as a
//! whole (driver plus the dataflow's arrangements). The test apiserver shares the process,
//! so memory is measured on the engine alone, not during the sync.
//!
//! Run: `cargo bench --bench kube_sync` (prints a small table; not a criterion bench, since
//! one run of a 10k-object sync is the unit being measured; `MESHFLOW_BENCH_RUNS=N` repeats
//! and reports the median).

#[path = "../tests/support/apiserver.rs"]
#[allow(dead_code)]
mod apiserver;

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use meshflow::cache::Cache;
use meshflow::engine::{Engine, EngineOutput};
use meshflow::model::{Object, ObjectKey, ParseOutcome, parse_document};
use meshflow::source::kube::{self, KubeOptions};
use meshflow::translate::ResourceType;
use serde_json::json;

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const PODS: usize = 10_000;
const SERVICES: usize = 100;

fn pod(i: usize) -> serde_json::Value {
    // Shaped like a real Deployment's pod: annotations, managedFields, a full container spec,
    // which meshflow must not keep.
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("app-{}-7d5b8f9c4-{i:05}", i % SERVICES), "namespace": "bench",
            "uid": format!("00000000-0000-0000-0000-{i:012}"),
            "labels": {"app": format!("app-{}", i % SERVICES), "version": "v1", "pod-template-hash": "7d5b8f9c4"},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-11-25T10:00:00Z", "prometheus.io/scrape": "true"},
            "managedFields": [{"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
                "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:labels": {}}}}]},
        "spec": {"nodeName": format!("node-{}", i % 50), "serviceAccountName": "default",
            "containers": [{"name": "app", "image": "registry.example/app:1.2.3",
                "ports": [{"name": "http", "containerPort": 8080}],
                "env": [{"name": "A", "value": "1"}], "resources": {"requests": {"cpu": "100m"}}}]},
        "status": {"phase": "Running", "podIP": format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256 + 1),
            "hostIP": "192.168.0.1",
            "conditions": [{"type": "Ready", "status": "True"}, {"type": "ContainersReady", "status": "True"}]}})
}

fn service(i: usize) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": format!("app-{i}"), "namespace": "bench"},
        "spec": {"selector": {"app": format!("app-{i}")}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}})
}

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

struct Run {
    ready: Duration,
}

fn run(server: &apiserver::ApiServer) -> Run {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let options = KubeOptions::default();
    let cache = Cache::new(kube::source_names(&options));
    let engine = Engine::start(cache.engine_sink());
    let started = Instant::now();
    rt.block_on(async {
        kube::spawn(server.kube_client(), options, engine.sender());
    });
    while !cache.is_ready() {
        std::thread::sleep(Duration::from_millis(2));
    }
    let ready = started.elapsed();
    assert_eq!(cache.len(ResourceType::ClusterLoadAssignment), SERVICES);
    // Stop the source tasks (they hold the engine's senders) so the engine thread exits.
    drop(rt);
    drop(engine);
    Run { ready }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runs: usize = std::env::var("MESHFLOW_BENCH_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let server = apiserver::ApiServer::start();
    for i in 0..SERVICES {
        server.apply(service(i));
    }
    for i in 0..PODS {
        server.apply(pod(i));
    }

    // What one slim Pod costs, held once in a map by its key (as the engine's driver holds it;
    // the kube watch keeps a key and a hash per object on top).
    let before = live();
    let mut held: HashMap<ObjectKey, Object> = HashMap::new();
    let mut hashes: HashMap<ObjectKey, u64> = HashMap::new();
    for i in 0..PODS {
        for outcome in parse_document(pod(i), "default") {
            if let ParseOutcome::Object(o) = outcome {
                hashes.insert(o.key(), 0);
                held.insert(o.key(), o);
            }
        }
    }
    let slim = (live() - before) as f64 / PODS as f64;
    drop((held, hashes));

    // The test apiserver and kube's watcher alone: the floor under "time to ready".
    let list_only = {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let t = Instant::now();
        let n = rt.block_on(async {
            use futures_util::StreamExt;
            let api: ::kube::api::Api<k8s_openapi::api::core::v1::Pod> = ::kube::api::Api::all(server.kube_client());
            let stream = ::kube::runtime::watcher(api, Default::default());
            futures_util::pin_mut!(stream);
            let mut n = 0;
            while let Some(Ok(e)) = stream.next().await {
                match e {
                    ::kube::runtime::watcher::Event::InitApply(_) => n += 1,
                    ::kube::runtime::watcher::Event::InitDone => break,
                    _ => {}
                }
            }
            n
        });
        assert_eq!(n, PODS);
        t.elapsed()
    };
    // The engine alone on the same objects: one batch of 10k pods + 100 services, from
    // scratch, to its output (what meshflow adds on top of the list itself).
    let (engine_only, engine_bytes_per_pod) = {
        let before = live();
        let objects: Vec<_> = (0..SERVICES)
            .map(service)
            .chain((0..PODS).map(pod))
            .flat_map(|doc| parse_document(doc, "default"))
            .filter_map(|o| {
                if let ParseOutcome::Object(o) = o { Some(meshflow::model::InputEvent::apply(o)) } else { None }
            })
            .collect();
        let (tx, rx) = crossbeam_channel::unbounded();
        let engine = Engine::start(move |out| {
            if let EngineOutput::Delta(d) = out {
                let _ = tx.send(d);
            }
        });
        let t = Instant::now();
        engine.send(meshflow::engine::Command::Events(objects));
        let delta = rx.recv().unwrap();
        assert_eq!(delta.changes.len(), 2 * SERVICES + 2);
        let elapsed = t.elapsed();
        drop(delta);
        // The driver's map and the dataflow's arrangements, less the 100 services' share.
        let bytes = (live() - before) as f64 / PODS as f64;
        drop(engine);
        (elapsed, bytes)
    };
    let mut results: Vec<Run> = (0..runs).map(|_| run(&server)).collect();
    results.sort_by_key(|r| r.ready);
    let median = &results[results.len() / 2];
    println!("kube_sync: {PODS} pods, {SERVICES} services, {runs} runs (medians)");
    println!("  time to ready                          {:>8.1} ms", median.ready.as_secs_f64() * 1e3);
    println!("  kube watcher list of the pods alone    {:>8.1} ms", list_only.as_secs_f64() * 1e3);
    println!("  engine alone, same objects, one batch  {:>8.1} ms", engine_only.as_secs_f64() * 1e3);
    println!("  slim pod held by driver + watch        {:>8.0} bytes/pod", slim);
    println!("  engine: driver + dataflow arrangements {:>8.0} bytes/pod", engine_bytes_per_pod);
}
