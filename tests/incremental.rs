//! The central correctness property: after every step of any sequence of changes, the
//! engine's resources equal the from-scratch reference translator's, byte for byte, and a
//! step emits a change only for resources whose bytes really changed.
//!
//! Inputs are drawn from a small universe (two namespaces, a few names, a few IPs and
//! labels) so that random sequences collide often: services gain and lose slices, slices
//! move between services, pods start and stop matching selectors, a service falls back from
//! slices to Endpoints to its selector and back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use meshflow::engine::{Command, Engine, EngineOutput, ResourceDelta};
use meshflow::model::k8s::{
    ContainerPort, EndpointAddress, EndpointSubset, Labels, Protocol, ServicePort, SliceEndpoint, SlicePort, TargetPort,
};
use meshflow::model::{EndpointSlice, Endpoints, InputEvent, Kind, Object, ObjectKey, Pod, Service};
use meshflow::translate::{ResourceType, reference};
use proptest::prelude::*;

const NAMESPACES: [&str; 2] = ["default", "shop"];
const SERVICES: [&str; 3] = ["reviews", "ratings", "web"];
const IPS: [&str; 5] = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "fd00::5"];
const APPS: [&str; 2] = ["reviews", "web"];

fn ns() -> impl Strategy<Value = String> {
    prop::sample::select(&NAMESPACES[..]).prop_map(String::from)
}
fn svc_name() -> impl Strategy<Value = String> {
    prop::sample::select(&SERVICES[..]).prop_map(String::from)
}
fn ip() -> impl Strategy<Value = String> {
    prop::sample::select(&IPS[..]).prop_map(String::from)
}
/// A core/v1 Endpoints address without a Pod behind it.
fn address(ip: String) -> EndpointAddress {
    EndpointAddress { ip, pod: None }
}
fn labels() -> impl Strategy<Value = Labels> {
    (prop::sample::select(&APPS[..]), prop::option::of(prop::sample::select(&["v1", "v2"][..]))).prop_map(|(app, v)| {
        let mut l = vec![("app".to_string(), app.to_string())];
        if let Some(v) = v {
            l.push(("version".into(), v.into()));
        }
        l.into_iter().collect::<Labels>()
    })
}

fn protocol() -> impl Strategy<Value = Protocol> {
    prop_oneof![8 => Just(Protocol::Tcp), 1 => Just(Protocol::Udp)]
}

fn service_port() -> impl Strategy<Value = ServicePort> {
    (
        prop::sample::select(&["http", "grpc-api", "tcp-db", "web", ""][..]),
        prop::sample::select(&[80u16, 9080, 15000][..]),
        protocol(),
        prop_oneof![
            prop::sample::select(&[8080u16, 9090][..]).prop_map(TargetPort::Number),
            prop::sample::select(&["http", "metrics"][..]).prop_map(|s| TargetPort::Name(s.into())),
        ],
    )
        .prop_map(|(name, port, protocol, target_port)| ServicePort {
            name: name.into(),
            port,
            protocol,
            target_port,
            app_protocol: None,
        })
}

fn service() -> impl Strategy<Value = Object> {
    (
        ns(),
        svc_name(),
        prop::collection::vec(service_port(), 0..3),
        prop::option::of(prop::sample::select(&APPS[..])),
        any::<bool>(),
        prop::bool::weighted(0.1),
    )
        .prop_map(|(namespace, name, mut ports, app, publish, external)| {
            // Port numbers are unique per protocol within a Service (validated at intake).
            ports.sort_by_key(|p| (p.port, p.protocol));
            ports.dedup_by_key(|p| (p.port, p.protocol));
            Object::Service(Service {
                namespace,
                name,
                ports,
                selector: app.map(|a| Labels::from([("app".to_string(), a.to_string())])),
                cluster_ip: None,
                external_name: external.then(|| "example.com".to_string()),
                publish_not_ready_addresses: publish,
            })
        })
}

fn slice_port() -> impl Strategy<Value = SlicePort> {
    (
        prop::sample::select(&["http", "grpc-api", "tcp-db", "web", ""][..]),
        prop::option::of(prop::sample::select(&[8080u16, 9090][..])),
        protocol(),
    )
        .prop_map(|(name, port, protocol)| SlicePort { name: name.into(), port, protocol })
}

fn slice() -> impl Strategy<Value = Object> {
    (
        ns(),
        prop::sample::select(&["s-1", "s-2", "s-3"][..]),
        prop::option::of(svc_name()),
        prop::collection::vec(slice_port(), 0..3),
        prop::collection::vec((prop::collection::vec(ip(), 0..3), any::<bool>()), 0..4),
    )
        .prop_map(|(namespace, name, service_name, ports, eps)| {
            Object::EndpointSlice(EndpointSlice {
                namespace,
                name: name.into(),
                service_name,
                ports,
                endpoints: eps
                    .into_iter()
                    .map(|(addresses, ready)| SliceEndpoint { addresses, ready, pod: None })
                    .collect(),
            })
        })
}

fn endpoints() -> impl Strategy<Value = Object> {
    (
        ns(),
        svc_name(),
        prop::collection::vec(
            (
                prop::collection::vec(ip(), 0..3),
                prop::collection::vec(ip(), 0..2),
                prop::collection::vec(slice_port(), 0..3),
            ),
            0..3,
        ),
    )
        .prop_map(|(namespace, name, subsets)| {
            Object::Endpoints(Endpoints {
                namespace,
                name,
                subsets: subsets
                    .into_iter()
                    .map(|(ready, not_ready, ports)| EndpointSubset {
                        ready: ready.into_iter().map(address).collect(),
                        not_ready: not_ready.into_iter().map(address).collect(),
                        ports,
                    })
                    .collect(),
            })
        })
}

fn pod() -> impl Strategy<Value = Object> {
    (
        ns(),
        prop::sample::select(&["p-1", "p-2", "p-3", "p-4"][..]),
        labels(),
        prop::option::of(ip()),
        any::<bool>(),
        prop::bool::weighted(0.15),
        prop::sample::select(&[8080u16, 8081][..]),
    )
        .prop_map(|(namespace, name, labels, ip, ready, terminal, http_port)| {
            Object::Pod(Pod {
                namespace,
                name: name.into(),
                labels,
                ip,
                node_name: None,
                ready,
                terminal,
                ports: vec![
                    ContainerPort { name: "http".into(), port: http_port, protocol: Protocol::Tcp },
                    ContainerPort { name: "metrics".into(), port: 9090, protocol: Protocol::Tcp },
                ],
            })
        })
}

fn object() -> impl Strategy<Value = Object> {
    prop_oneof![3 => service(), 3 => slice(), 1 => endpoints(), 3 => pod()]
}

#[derive(Clone, Debug)]
enum Op {
    /// Apply these objects (one logical time).
    Apply(Vec<Object>),
    /// Delete the object at this index of the live set (modulo its size).
    Delete(usize),
    /// Re-apply a live object unchanged.
    Reapply(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => prop::collection::vec(object(), 1..4).prop_map(Op::Apply),
        3 => any::<usize>().prop_map(Op::Delete),
        1 => any::<usize>().prop_map(Op::Reapply),
    ]
}

struct Harness {
    engine: Engine,
    out: crossbeam_channel::Receiver<ResourceDelta>,
    live: BTreeMap<ObjectKey, Object>,
    materialized: BTreeMap<(ResourceType, String), Arc<[u8]>>,
}

impl Harness {
    fn new() -> Harness {
        let (tx, out) = crossbeam_channel::unbounded();
        let engine = Engine::start(move |o| {
            if let EngineOutput::Delta(d) = o {
                let _ = tx.send(d);
            }
        });
        Harness { engine, out, live: BTreeMap::new(), materialized: BTreeMap::new() }
    }

    fn step(&mut self, events: Vec<InputEvent>, step: usize) -> Result<(), TestCaseError> {
        for e in &events {
            match &e.object {
                Some(o) => self.live.insert(e.key.clone(), o.clone()),
                None => self.live.remove(&e.key),
            };
        }
        self.engine.send(Command::Events(events));
        let delta = self.out.recv_timeout(Duration::from_secs(30)).expect("engine answers every command");
        for change in delta.changes {
            let key = (change.ty, change.name.clone());
            let before = self.materialized.get(&key).cloned();
            prop_assert!(
                before.as_deref() != change.body.as_deref(),
                "step {step}: {:?} {} emitted without changing",
                change.ty,
                change.name
            );
            match change.body {
                Some(body) => self.materialized.insert(key, body),
                None => self.materialized.remove(&key),
            };
        }
        let expected = reference::translate_all(self.live.values());
        let got: BTreeMap<_, Vec<u8>> = self.materialized.iter().map(|(k, v)| (k.clone(), v.to_vec())).collect();
        if got != expected {
            let names = |m: &BTreeMap<(ResourceType, String), Vec<u8>>| m.keys().cloned().collect::<Vec<_>>();
            let differing: Vec<_> =
                expected.iter().filter(|(k, v)| got.get(*k) != Some(*v)).map(|(k, _)| k.clone()).collect();
            return Err(TestCaseError::fail(format!(
                "step {step}: engine != reference\n engine:    {:?}\n reference: {:?}\n differing or missing in engine: {differing:?}",
                names(&got),
                names(&expected)
            )));
        }
        Ok(())
    }
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut h = Harness::new();
    for (step, op) in ops.into_iter().enumerate() {
        let events = match op {
            Op::Apply(objects) => objects.into_iter().map(InputEvent::apply).collect(),
            Op::Delete(i) | Op::Reapply(i) if h.live.is_empty() => {
                let _ = i;
                continue;
            }
            Op::Delete(i) => vec![InputEvent::delete(h.live.keys().nth(i % h.live.len()).unwrap().clone())],
            Op::Reapply(i) => vec![InputEvent::apply(h.live.values().nth(i % h.live.len()).unwrap().clone())],
        };
        h.step(events, step)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(48),
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn engine_equals_reference_after_every_step(ops in prop::collection::vec(op(), 1..250)) {
        run(ops)?;
    }
}

/// The fallbacks in order: EndpointSlices win over Endpoints, which win over the selector.
#[test]
fn endpoint_sources_take_over_from_each_other_in_order() {
    let svc = Object::Service(Service {
        namespace: "default".into(),
        name: "web".into(),
        ports: vec![ServicePort {
            name: "http".into(),
            port: 80,
            protocol: Protocol::Tcp,
            target_port: TargetPort::Name("http".into()),
            app_protocol: None,
        }],
        selector: Some(Labels::from([("app".to_string(), "web".to_string())])),
        cluster_ip: None,
        external_name: None,
        publish_not_ready_addresses: false,
    });
    let pod = Object::Pod(Pod {
        namespace: "default".into(),
        name: "web-1".into(),
        labels: Labels::from([("app".to_string(), "web".to_string())]),
        ip: Some("10.0.0.9".into()),
        node_name: None,
        ready: true,
        terminal: false,
        ports: vec![ContainerPort { name: "http".into(), port: 8080, protocol: Protocol::Tcp }],
    });
    let eps = Object::Endpoints(Endpoints {
        namespace: "default".into(),
        name: "web".into(),
        subsets: vec![EndpointSubset {
            ready: vec![address("10.0.0.7".into())],
            not_ready: vec![],
            ports: vec![SlicePort { name: "http".into(), port: Some(7070), protocol: Protocol::Tcp }],
        }],
    });
    let slice = Object::EndpointSlice(EndpointSlice {
        namespace: "default".into(),
        name: "web-abc".into(),
        service_name: Some("web".into()),
        ports: vec![SlicePort { name: "http".into(), port: Some(6060), protocol: Protocol::Tcp }],
        endpoints: vec![SliceEndpoint { addresses: vec!["10.0.0.6".into()], ready: true, pod: None }],
    });
    let mut h = Harness::new();
    let cla = |h: &Harness| {
        use prost::Message;
        let body = &h.materialized
            [&(ResourceType::ClusterLoadAssignment, "outbound|80||web.default.svc.cluster.local".into())];
        let cla = envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment::decode(&body[..]).unwrap();
        cla.endpoints
            .iter()
            .flat_map(|l| &l.lb_endpoints)
            .map(|e| {
                format!("{:?}", e.host_identifier)
                    .split("address: \"")
                    .nth(1)
                    .unwrap()
                    .split('"')
                    .next()
                    .unwrap()
                    .to_string()
            })
            .collect::<Vec<_>>()
    };
    h.step(vec![InputEvent::apply(svc), InputEvent::apply(pod)], 0).unwrap();
    assert_eq!(cla(&h), vec!["10.0.0.9"], "selector-derived while nothing else exists");
    h.step(vec![InputEvent::apply(eps.clone())], 1).unwrap();
    assert_eq!(cla(&h), vec!["10.0.0.7"], "Endpoints replace the selector");
    h.step(vec![InputEvent::apply(slice.clone())], 2).unwrap();
    assert_eq!(cla(&h), vec!["10.0.0.6"], "EndpointSlices replace Endpoints");
    h.step(vec![InputEvent::delete(slice.key()), InputEvent::delete(eps.key())], 3).unwrap();
    assert_eq!(cla(&h), vec!["10.0.0.9"], "back to the selector");
    assert_eq!(h.live.keys().filter(|k| k.kind == Kind::Pod).count(), 1);
}
