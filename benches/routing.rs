//! Engine latency for sidecar routing changes at 10,000 services: what one change costs, from
//! the input command to its output batch (no xDS, no network).
//!
//! The mesh: 10,000 services in 20 namespaces (one HTTP port each, 50 distinct port numbers), an
//! EndpointSlice of 3 ready endpoints per service whose `targetRef`s name 3 pods labelled
//! `version: v1|v2|v3`; 2,000 of the services have a DestinationRule with subsets v1, v2, v3 and
//! a VirtualService (header `end-user: jason` → v2, else v1 80 / v3 20).
//!
//! - `pod-relabel`: one pod of a service with subsets changes `version` (v1 ↔ v3): its endpoint
//!   moves between two subset assignments. Expected output: those two assignments.
//! - `destination-rule-change`: one rule's connection pool changes: the 4 clusters of its host.
//! - `virtual-service-change`: one VirtualService's weights change: one route config (assembled
//!   from per-virtual-host encodings: the other 199 virtual hosts of that port are not re-encoded).
//!
//! Run: `cargo bench --bench routing`

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use meshflow::engine::{Command, Engine, EngineOutput, ResourceDelta};
use meshflow::model::istio;
use meshflow::model::k8s::{Labels, Protocol, ServicePort, SliceEndpoint, SlicePort, TargetPort};
use meshflow::model::{EndpointSlice, InputEvent, Kind, Object, Pod, Service};
use meshflow::translate::ResourceType;
use serde_json::json;

const SERVICES: usize = 10_000;
const ROUTED: usize = 2_000;
const NAMESPACES: usize = 20;

fn ns(i: usize) -> String {
    format!("ns-{}", i % NAMESPACES)
}

fn service(i: usize) -> Object {
    Object::Service(Box::new(Service {
        namespace: ns(i),
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

fn ip(i: usize, e: usize) -> String {
    format!("10.{}.{}.{}", i / 250, i % 250, e + 1)
}

fn slice(i: usize) -> Object {
    Object::EndpointSlice(std::sync::Arc::new(EndpointSlice {
        namespace: ns(i),
        name: format!("svc-{i}-slice"),
        service_name: Some(format!("svc-{i}")),
        ports: vec![SlicePort { name: "http".into(), port: Some(8080), protocol: Protocol::Tcp }],
        endpoints: (0..3)
            .map(|e| SliceEndpoint { addresses: vec![ip(i, e)], ready: true, pod: Some(format!("svc-{i}-{e}")) })
            .collect(),
    }))
}

fn pod(i: usize, e: usize, version: &str) -> Object {
    Object::Pod(std::sync::Arc::new(Pod {
        namespace: ns(i),
        name: format!("svc-{i}-{e}"),
        labels: Labels::from([("app".to_string(), format!("svc-{i}")), ("version".to_string(), version.to_string())]),
        ip: Some(ip(i, e)),
        node_name: None,
        ready: true,
        terminal: false,
        ports: Vec::new(),
    }))
}

fn destination_rule(i: usize, max_connections: u32) -> Object {
    let subsets: Vec<_> = ["v1", "v2", "v3"].iter().map(|v| json!({"name": v, "labels": {"version": v}})).collect();
    let spec = json!({
        "host": format!("svc-{i}"),
        "trafficPolicy": {"connectionPool": {"tcp": {"maxConnections": max_connections}}},
        "subsets": subsets,
    });
    istio::decode(Kind::DestinationRule, &ns(i), &format!("svc-{i}"), None, spec).expect("valid DestinationRule")
}

fn virtual_service(i: usize, weight: u32) -> Object {
    let host = format!("svc-{i}");
    let spec = json!({
        "hosts": [host],
        "http": [
            {"match": [{"headers": {"end-user": {"exact": "jason"}}}], "route": [{"destination": {"host": host, "subset": "v2"}}]},
            {"route": [
                {"destination": {"host": host, "subset": "v1"}, "weight": weight},
                {"destination": {"host": host, "subset": "v3"}, "weight": 100 - weight},
            ]},
        ],
    });
    istio::decode(Kind::VirtualService, &ns(i), &host, None, spec).expect("valid VirtualService")
}

fn routing_changes(c: &mut Criterion) {
    let (tx, rx) = crossbeam_channel::unbounded::<ResourceDelta>();
    let engine = Engine::start(move |o| {
        if let EngineOutput::Delta(d) = o {
            let _ = tx.send(d);
        }
    });
    let mut initial: Vec<InputEvent> = Vec::new();
    for i in 0..SERVICES {
        initial.push(InputEvent::apply(service(i)));
        initial.push(InputEvent::apply(slice(i)));
        for (e, v) in ["v1", "v2", "v3"].iter().enumerate() {
            initial.push(InputEvent::apply(pod(i, e, v)));
        }
    }
    for i in 0..ROUTED {
        initial.push(InputEvent::apply(destination_rule(i, 100)));
        initial.push(InputEvent::apply(virtual_service(i, 80)));
    }
    let started = std::time::Instant::now();
    engine.send(Command::Events(initial));
    let first = rx.recv_timeout(Duration::from_secs(600)).expect("initial load");
    eprintln!("initial translation of {} resources: {:?}", first.changes.len(), started.elapsed());
    let count = |d: &ResourceDelta, ty| d.changes.iter().filter(|c| c.ty == ty).count();
    assert_eq!(count(&first, ResourceType::Cluster), SERVICES + 3 * ROUTED);

    let mut group = c.benchmark_group("routing");
    group.measurement_time(Duration::from_secs(10));

    let mut n = 0usize;
    group.bench_function("pod-relabel/10k-services", |b| {
        b.iter(|| {
            let (i, pass) = (n % ROUTED, n / ROUTED);
            n += 1;
            let version = if pass.is_multiple_of(2) { "v3" } else { "v1" };
            engine.send(Command::Events(vec![InputEvent::apply(pod(i, 0, version))]));
            let delta = rx.recv().expect("engine output");
            assert_eq!(count(&delta, ResourceType::ClusterLoadAssignment), 2, "{delta:?}");
            assert_eq!(delta.changes.len(), 2);
        })
    });

    let mut n = 0usize;
    group.bench_function("destination-rule-change/10k-services", |b| {
        b.iter(|| {
            let (i, pass) = (n % ROUTED, n / ROUTED);
            n += 1;
            let max = if pass.is_multiple_of(2) { 200 } else { 100 };
            engine.send(Command::Events(vec![InputEvent::apply(destination_rule(i, max))]));
            let delta = rx.recv().expect("engine output");
            assert_eq!(count(&delta, ResourceType::Cluster), 4, "{delta:?}");
        })
    });

    let mut n = 0usize;
    group.bench_function("virtual-service-change/10k-services", |b| {
        b.iter(|| {
            let (i, pass) = (n % ROUTED, n / ROUTED);
            n += 1;
            let weight = if pass.is_multiple_of(2) { 70 } else { 80 };
            engine.send(Command::Events(vec![InputEvent::apply(virtual_service(i, weight))]));
            let delta = rx.recv().expect("engine output");
            assert_eq!(delta.changes.len(), 1, "{delta:?}");
            assert_eq!(count(&delta, ResourceType::RouteConfiguration), 1);
        })
    });
    group.finish();
}

criterion_group!(benches, routing_changes);
criterion_main!(benches);
