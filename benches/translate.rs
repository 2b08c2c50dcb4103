//! The pure builders and the from-scratch reference translator, without the engine.
//!
//! - `translate/cluster/build`: one outbound EDS cluster of a service port, no policy.
//! - `translate/cluster/build_subset_policy`: one subset cluster with a DestinationRule's
//!   connection pool merged for its port and subset (what a rule change rebuilds, per cluster).
//! - `translate/endpoint/load_assignment_100`: one ClusterLoadAssignment of 100 endpoints.
//! - `translate/route/virtual_host_default`: one service port's virtual host with its default route.
//! - `translate/route/virtual_host_vs`: one virtual host with a VirtualService's routes (header
//!   match to a subset, weighted split) resolved against its destinations.
//! - `translate/route/assemble_1k_vhosts`: one route config from 1,000 encoded virtual hosts
//!   (what the engine does when one virtual host of a port changes).
//! - `reference/full@1k_services`: `translate::reference::translate_all` over the bench
//!   generator's `medium` cluster (1,000 services, 10,000 pods, their slices, 200
//!   VirtualServices and DestinationRules, gateways, ServiceEntries): the `--mode full` baseline's
//!   cost per recompute.
//!
//! Run: `cargo bench --bench translate`

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use meshflow::bench::generate::{Preset, World};
use meshflow::model::istio::{self, DestinationRule, VirtualService};
use meshflow::model::k8s::{Protocol, ServicePort, TargetPort};
use meshflow::model::{Kind, Object, Service};
use meshflow::translate::endpoint::service_port_rows;
use meshflow::translate::outbound::{DestinationMap, HostInfo};
use meshflow::translate::{self, EndpointAddr, ResourceType, ServicePortRow, VirtualHostPart, cluster, route};
use serde_json::json;

fn service(i: usize) -> Service {
    Service {
        namespace: format!("ns-{}", i % 20),
        name: format!("svc-{i}"),
        ports: vec![ServicePort {
            name: "http".into(),
            port: 8080,
            protocol: Protocol::Tcp,
            target_port: TargetPort::Number(8080),
            app_protocol: None,
        }],
        selector: None,
        cluster_ip: None,
        external_name: None,
        publish_not_ready_addresses: false,
        export_to: Vec::new(),
    }
}

fn row(i: usize) -> ServicePortRow {
    service_port_rows(&service(i)).pop().expect("one port")
}

fn rule() -> DestinationRule {
    let subsets: Vec<_> = ["v1", "v2", "v3"].iter().map(|v| json!({"name": v, "labels": {"version": v}})).collect();
    let spec = json!({
        "host": "svc-0",
        "trafficPolicy": {"connectionPool": {"tcp": {"maxConnections": 100}, "http": {"http2MaxRequests": 1000}},
                          "outlierDetection": {"consecutive5xxErrors": 5, "interval": "10s"}},
        "subsets": subsets,
    });
    match istio::decode(Kind::DestinationRule, "ns-0", "svc-0", None, spec).expect("valid DestinationRule") {
        Object::DestinationRule(dr) => *dr,
        other => panic!("decoded {other:?}"),
    }
}

fn virtual_service() -> VirtualService {
    let spec = json!({
        "hosts": ["svc-0"],
        "http": [
            {"match": [{"headers": {"end-user": {"exact": "jason"}}}], "route": [{"destination": {"host": "svc-0", "subset": "v2"}}]},
            {"route": [
                {"destination": {"host": "svc-0", "subset": "v1"}, "weight": 80},
                {"destination": {"host": "svc-0", "subset": "v3"}, "weight": 20},
            ]},
        ],
    });
    match istio::decode(Kind::VirtualService, "ns-0", "svc-0", None, spec).expect("valid VirtualService") {
        Object::VirtualService(vs) => *vs,
        other => panic!("decoded {other:?}"),
    }
}

fn builders(c: &mut Criterion) {
    let mut group = c.benchmark_group("translate");
    let r = row(0);
    group.bench_function("cluster/build", |b| b.iter(|| cluster(black_box(&r), None, None)));

    let dr = rule();
    let policy = cluster::merged_policy(&dr.spec, 8080, Some("v2"));
    assert!(policy.is_some(), "the rule's policy applies to subset v2");
    group.bench_function("cluster/build_subset_policy", |b| {
        b.iter(|| cluster(black_box(&r), Some("v2"), policy.as_ref()))
    });

    let addrs: Vec<EndpointAddr> =
        (0..100).map(|e| EndpointAddr::new(format!("10.0.{}.{}", e / 250, e % 250 + 1), 8080)).collect();
    let refs: Vec<&EndpointAddr> = addrs.iter().collect();
    group.bench_function("endpoint/load_assignment_100", |b| {
        b.iter(|| translate::load_assignment(black_box("outbound|8080||svc-0.ns-0.svc.cluster.local"), &refs))
    });

    group.bench_function("route/virtual_host_default", |b| {
        b.iter(|| translate::virtual_host(black_box(&r), vec![route::default_route(&r, Vec::new())]))
    });

    let vs = virtual_service();
    let fqdn = r.fqdn();
    let destinations: DestinationMap = [(fqdn.clone(), HostInfo::new(&[&r], Some(dr.spec.clone())))].into();
    let routes = route::http_routes(&vs, 8080, &destinations);
    assert_eq!(routes.len(), 2, "the header route and the weighted default");
    group.bench_function("route/virtual_host_vs", |b| {
        b.iter(|| translate::virtual_host(black_box(&r), route::http_routes(&vs, 8080, &destinations)))
    });

    let vhosts: Vec<VirtualHostPart> =
        (0..1000).map(row).map(|r| translate::virtual_host(&r, vec![route::default_route(&r, Vec::new())])).collect();
    group.bench_function("route/assemble_1k_vhosts", |b| {
        b.iter(|| translate::route_configuration(black_box("8080"), &vhosts))
    });
    group.finish();
}

fn reference(c: &mut Criterion) {
    let objects: Vec<Object> = World::new(Preset::by_name("medium").expect("medium preset"), 1).objects();
    let out = translate::reference::translate_all(&objects);
    let clusters = out.keys().filter(|(_, ty, _)| *ty == ResourceType::Cluster).count();
    assert!(clusters >= 1000, "a cluster per service port at least: {clusters}");
    let mut group = c.benchmark_group("reference");
    group.sample_size(10).measurement_time(Duration::from_secs(20));
    group.bench_function("full@1k_services", |b| b.iter(|| translate::reference::translate_all(black_box(&objects))));
    group.finish();
}

criterion_group!(benches, builders, reference);
criterion_main!(benches);
