//! Engine latency: one endpoint change, from the input command to its output batch.
//!
//! Isolates the dataflow and the output assembly (no xDS, no network): 1,000 services with
//! one port each and one EndpointSlice of 10 ready endpoints each are loaded; each iteration
//! moves one endpoint of one slice to another IP and waits for the engine's ResourceDelta
//! (which carries exactly one changed ClusterLoadAssignment).
//!
//! Run: `cargo bench --bench engine`

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use meshflow::engine::{Command, Engine, EngineOutput, ResourceDelta};
use meshflow::model::k8s::{Protocol, ServicePort, SliceEndpoint, SlicePort, TargetPort};
use meshflow::model::{EndpointSlice, InputEvent, Object, Service};

fn service(i: usize) -> Object {
    Object::Service(Service {
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
    })
}

fn slice(i: usize, endpoints: usize, salt: usize) -> Object {
    Object::EndpointSlice(EndpointSlice {
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
    })
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

criterion_group!(benches, endpoint_change);
criterion_main!(benches);
