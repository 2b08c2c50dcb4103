//! Engine latency: one endpoint change, from the input command to its output batch.
//!
//! Isolates the dataflow and the output assembly (no xDS, no network): 1,000 services with
//! one port each and one EndpointSlice of 10 ready endpoints each are loaded; each iteration
//! moves one endpoint of one slice to another IP and waits for the engine's ResourceDelta
//! (which carries exactly one changed ClusterLoadAssignment).
//!
//! `engine/step/*`: one step of the bench generator's cluster (`meshflow bench`'s presets:
//! `medium` = 1,000 services and 10,000 pods, `large` = 10,000 services and 100,000 pods with
//! their slices, VirtualServices, DestinationRules, gateways and ServiceEntries), from the
//! command to its output batch:
//! - `pod_update@1k_services`, `pod_update@10k_services`: one pod's readiness flips (the pod and
//!   its service's EndpointSlice, as the pod-churn scenario sends them);
//! - `service_create_delete@1k_services`: a new service with 3 pods appears (Service, pods,
//!   slice in one step), then goes (a second step): the service-creation-storm step and its undo;
//! - `empty@1k_services`: a step with no input change: the fixed cost of one logical time
//!   (every operator scheduled, every arrangement sealing a batch), which a one-event batch
//!   pays on top of its own work.
//!
//! Run: `cargo bench --bench engine` (`cargo bench --bench engine -- step/` for the steps only)

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use meshflow::bench::generate::{Preset, World};
use meshflow::engine::{Command, Engine, EngineOutput, ResourceDelta};
use meshflow::model::k8s::{Protocol, ServicePort, SliceEndpoint, SlicePort, TargetPort};
use meshflow::model::{EndpointSlice, InputEvent, Object, Service};
use meshflow::translate::ResourceType;

fn service(i: usize) -> Object {
    Object::Service(Box::new(Service {
        namespace: "bench".into(),
        name: format!("svc-{i}"),
        ports: vec![ServicePort {
            name: "http".into(),
            port: 8000 + (i % 50) as u16,
            protocol: Protocol::Tcp,
            target_port: TargetPort::Number(8080),
            app_protocol: None,
        }],
        selector: None,
        cluster_ip: None,
        external_name: None,
        publish_not_ready_addresses: false,
        export_to: Vec::new(),
    }))
}

fn slice(i: usize, endpoints: usize, salt: usize) -> Object {
    Object::EndpointSlice(std::sync::Arc::new(EndpointSlice {
        namespace: "bench".into(),
        name: format!("svc-{i}-slice"),
        service_name: Some(format!("svc-{i}")),
        ports: vec![SlicePort { name: "http".into(), port: Some(8080), protocol: Protocol::Tcp }],
        endpoints: (0..endpoints)
            .map(|e| {
                let host = if e == 0 { salt } else { e };
                SliceEndpoint {
                    addresses: vec![format!("10.{}.{}.{}", i / 256, i % 256, host % 250 + 1)],
                    ready: true,
                    pod: None,
                }
            })
            .collect(),
    }))
}

fn endpoint_change(c: &mut Criterion) {
    const SERVICES: usize = 1_000;
    const ENDPOINTS: usize = 10;
    let (tx, rx) = crossbeam_channel::unbounded::<ResourceDelta>();
    let engine = Engine::start(move |o| {
        if let EngineOutput::Delta(d) = o {
            let _ = tx.send(d);
        }
    });
    let mut initial: Vec<InputEvent> = (0..SERVICES).map(|i| InputEvent::apply(service(i))).collect();
    initial.extend((0..SERVICES).map(|i| InputEvent::apply(slice(i, ENDPOINTS, 0))));
    engine.send(Command::Events(initial));
    let first = rx.recv_timeout(Duration::from_secs(120)).expect("initial load");
    assert_eq!(first.changes.len(), 2 * SERVICES + 50 + 50, "clusters, assignments, 50 listeners, 50 route configs");

    let mut group = c.benchmark_group("engine");
    group.measurement_time(Duration::from_secs(10));
    let mut n = 0usize;
    group.bench_function("endpoint-change/1000x10", |b| {
        b.iter(|| {
            n += 1;
            engine.send(Command::Events(vec![InputEvent::apply(slice(
                n % SERVICES,
                ENDPOINTS,
                100 + (n / SERVICES) % 2,
            ))]));
            let delta = rx.recv().expect("engine output");
            assert_eq!(delta.changes.len(), 1);
        })
    });
    group.finish();
}

/// An engine loaded with the generator's cluster at `preset`, and its receiver of batches.
fn loaded(world: &World) -> (Engine, crossbeam_channel::Receiver<ResourceDelta>) {
    let (tx, rx) = crossbeam_channel::unbounded::<ResourceDelta>();
    let engine = Engine::start(move |o| {
        if let EngineOutput::Delta(d) = o {
            let _ = tx.send(d);
        }
    });
    let started = std::time::Instant::now();
    engine.send(Command::Events(world.objects().into_iter().map(InputEvent::apply).collect()));
    let first = rx.recv_timeout(Duration::from_secs(600)).expect("initial load");
    eprintln!(
        "{}: initial translation of {} resources in {:?}",
        world.preset.name,
        first.changes.len(),
        started.elapsed()
    );
    (engine, rx)
}

fn step(engine: &Engine, rx: &crossbeam_channel::Receiver<ResourceDelta>, events: Vec<InputEvent>) -> ResourceDelta {
    engine.send(Command::Events(events));
    rx.recv().expect("engine output")
}

fn pod_update(c: &mut Criterion, preset: &str, label: &str) {
    let mut world = World::new(Preset::by_name(preset).expect("preset"), 1);
    let (engine, rx) = loaded(&world);
    let mut group = c.benchmark_group("engine");
    group.measurement_time(Duration::from_secs(10));
    let mut n = 0usize;
    group.bench_function(format!("step/pod_update@{label}"), |b| {
        b.iter(|| {
            n += 1;
            let id = world.pick_service(false).expect("a service");
            let delta = step(&engine, &rx, world.pod_flip_ready(id, n));
            // A readiness flip moves one endpoint in or out of its service's assignments.
            assert!(delta.changes.iter().all(|c| c.ty == ResourceType::ClusterLoadAssignment), "{delta:?}");
        })
    });
    if label == "1k_services" {
        group.bench_function(format!("step/empty@{label}"), |b| {
            b.iter(|| {
                let delta = step(&engine, &rx, Vec::new());
                assert!(delta.changes.is_empty(), "{delta:?}");
            })
        });
        group.bench_function(format!("step/service_create_delete@{label}"), |b| {
            b.iter(|| {
                let created = world.service_create(3);
                let keys: Vec<_> = created.iter().map(|e| e.key.clone()).collect();
                let delta = step(&engine, &rx, created);
                assert!(delta.changes.iter().any(|c| c.ty == ResourceType::Cluster), "{delta:?}");
                let delta = step(&engine, &rx, keys.into_iter().map(InputEvent::delete).collect());
                assert!(delta.changes.iter().any(|c| c.ty == ResourceType::Cluster), "{delta:?}");
            })
        });
    }
    group.finish();
}

fn steps(c: &mut Criterion) {
    pod_update(c, "medium", "1k_services");
    pod_update(c, "large", "10k_services");
}

criterion_group!(benches, endpoint_change, steps);
criterion_main!(benches);
