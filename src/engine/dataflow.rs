//! The translation graph: input collections in, output rows out.
//!
//! Keys decide the cost of a change. Every arrow below keeps work local to its key: a pod or
//! slice change touches one service's load assignment; a service change touches its clusters,
//! its virtual hosts and the route configs of its ports.
//!
//! ```text
//! services ─flat_map─▶ service_ports ─┬─▶ clusters
//!                                     ├─▶ virtual hosts (port) ─────────────▶ route configs (assembled outside)
//!                                     ├─▶ distinct HTTP ports ──────────────▶ listeners
//!                                     └─▶ by (ns, svc, port name, proto) ─┐
//! slices ─flat_map─▶ ready addresses by (ns, svc, port name, proto) ──join┤
//! endpoints ─antijoin(services with slices)─▶ ...same key ────────────join┤
//! pods ─by label─▶ join(selector services without slices/endpoints, by one selector pair) ─┴─▶ (cluster, address)
//!                                        cluster names ⊎ addresses ─reduce─▶ load assignments
//! ```

use differential_dataflow::VecCollection;
use differential_dataflow::input::{Input, InputSession};
use serde::{Deserialize, Serialize};
use timely::dataflow::Scope;

use crate::model::k8s::{Labels, Protocol, ServicePort, selector_matches};
use crate::model::{EndpointSlice, Endpoints, Pod, Service};
use crate::translate::{self, EndpointAddr, ResourceType, ServicePortRow, VirtualHostPart};

/// What leaves the dataflow: finished resources, and virtual hosts that are assembled into
/// route configs outside it (see [`super::output`]).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum OutputRow {
    Resource { ty: ResourceType, name: String, body: Vec<u8> },
    VirtualHost { route: String, vhost: VirtualHostPart },
}

/// The input collections, one per kind that translation reads.
pub struct Inputs {
    pub services: InputSession<u64, Service, isize>,
    pub slices: InputSession<u64, EndpointSlice, isize>,
    pub endpoints: InputSession<u64, Endpoints, isize>,
    pub pods: InputSession<u64, Pod, isize>,
}

impl Inputs {
    pub fn advance_to(&mut self, t: u64) {
        self.services.advance_to(t);
        self.slices.advance_to(t);
        self.endpoints.advance_to(t);
        self.pods.advance_to(t);
    }

    pub fn flush(&mut self) {
        self.services.flush();
        self.slices.flush();
        self.endpoints.flush();
        self.pods.flush();
    }
}

/// (namespace, service name)
type SvcKey = (String, String);
/// (namespace, service name, port name, port protocol): how endpoint ports meet service ports.
type PortKey = (String, String, String, Protocol);
/// (namespace, label key, label value): how selector services meet pods.
type LabelKey = (String, String, String);

/// The part of a selector Service that the pod join needs.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct SelectorService {
    name: String,
    selector: Labels,
    ports: Vec<ServicePort>,
    publish_not_ready: bool,
}

/// Builds the graph. Returns the input handles and the output collection.
pub fn build<'s>(scope: Scope<'s, u64>) -> (Inputs, VecCollection<'s, u64, OutputRow>) {
    let (services_in, services) = scope.new_collection::<Service, isize>();
    let (slices_in, slices) = scope.new_collection::<EndpointSlice, isize>();
    let (endpoints_in, endpoints) = scope.new_collection::<Endpoints, isize>();
    let (pods_in, pods) = scope.new_collection::<Pod, isize>();

    let service_ports = services.clone().flat_map(|s: Service| service_port_rows(&s));

    let clusters = service_ports.clone().map(|row| OutputRow::Resource {
        ty: ResourceType::Cluster,
        name: row.cluster_name(),
        body: translate::cluster(&row, None, None),
    });

    let http_ports = service_ports.clone().filter(|row| row.protocol().is_http());
    let virtual_hosts = http_ports.clone().map(|row| OutputRow::VirtualHost {
        route: translate::route_config_name(row.port.port),
        vhost: translate::virtual_host(&row, vec![translate::route::default_route(&row, vec![])]),
    });
    let listeners = http_ports.map(|row| row.port.port).distinct().map(|port| OutputRow::Resource {
        ty: ResourceType::Listener,
        name: translate::listener_name(port),
        body: translate::listener(port, None),
    });

    // Service ports by the key endpoint ports carry: the slice port named as the service port
    // gives the target port number.
    let ports_by_name = service_ports.clone().map(|row| {
        let key: PortKey = (row.namespace.clone(), row.service.clone(), row.port.name.clone(), row.port.protocol);
        (key, row.cluster_name())
    });

    let slice_addresses = slices.clone().flat_map(|s: EndpointSlice| slice_addresses(&s));
    let from_slices = ports_by_name
        .clone()
        .join_map(slice_addresses, |_key, cluster: &String, addr: &EndpointAddr| (cluster.clone(), addr.clone()));

    // Core/v1 Endpoints count only for services that have no EndpointSlice (as in a cluster
    // where the EndpointSlice mirror is not running, or a hand-written config directory).
    let sliced: VecCollection<'s, u64, SvcKey> =
        slices.flat_map(|s: EndpointSlice| s.service_name.clone().map(|svc| (s.namespace.clone(), svc))).distinct();
    let endpoints_by_svc = endpoints.map(|e: Endpoints| ((e.namespace.clone(), e.name.clone()), e));
    let legacy = endpoints_by_svc.clone().antijoin(sliced.clone());
    let legacy_addresses = legacy.flat_map(|(_, e)| endpoints_addresses(&e));
    let from_endpoints = ports_by_name
        .join_map(legacy_addresses, |_key, cluster: &String, addr: &EndpointAddr| (cluster.clone(), addr.clone()));

    // Selector services with neither: endpoints derived from the ready pods they select.
    // Label selectors are not equi-joins, so the join goes through a label index: a selector
    // service is keyed by one pair of its selector (the first in key order), a pod by each of
    // its labels; the full selector is checked on the pairs that meet. A pod change then costs
    // the services selecting on one of its labels, not every service of its namespace, and
    // the initial load costs pods × labels, not pods × services.
    let managed = sliced.concat(endpoints_by_svc.map(|(k, _)| k)).distinct();
    let selector_services = services
        .flat_map(|s: Service| {
            let selector = s.selector.clone()?;
            let ports = s.ports.iter().filter(|p| translate::PortProtocol::of(p).is_proxied()).cloned().collect();
            let row = SelectorService {
                name: s.name.clone(),
                selector,
                ports,
                publish_not_ready: s.publish_not_ready_addresses,
            };
            (s.external_name.is_none()).then(|| ((s.namespace.clone(), s.name.clone()), row))
        })
        .antijoin(managed)
        .flat_map(|((ns, _), row)| {
            let (k, v) = row.selector.iter().next().map(|(k, v)| (k.clone(), v.clone()))?;
            Some(((ns, k, v), row))
        });
    let live_pods = pods.filter(|p: &Pod| p.ip.is_some() && !p.terminal);
    let pod_labels: VecCollection<'s, u64, (LabelKey, String)> = live_pods.clone().flat_map(|p: Pod| {
        p.labels.into_iter().map(move |(k, v)| ((p.namespace.clone(), k, v), p.name.clone())).collect::<Vec<_>>()
    });
    let pods_by_name = live_pods.map(|p: Pod| ((p.namespace.clone(), p.name.clone()), p));
    let from_pods = selector_services
        .join_map(pod_labels, |(ns, _, _), svc: &SelectorService, pod: &String| {
            ((ns.clone(), pod.clone()), svc.clone())
        })
        .join(pods_by_name)
        .flat_map(|((ns, _), (svc, pod))| pod_addresses(&ns, &svc, &pod));

    // Every cluster gets a load assignment, empty if it has no endpoint: Envoy keeps an EDS
    // cluster warming (and its own initialization waiting) until one arrives.
    let assignments = service_ports
        .map(|row| (row.cluster_name(), None))
        .concat(from_slices.concat(from_endpoints).concat(from_pods).map(|(cluster, addr)| (cluster, Some(addr))))
        .reduce_named(
            "translate: ClusterLoadAssignment",
            |cluster: &String, input: &[(&Option<EndpointAddr>, isize)], output| {
                // Values arrive sorted: the `None` marker first, present only if the cluster exists.
                if input[0].0.is_some() {
                    return;
                }
                let addrs: Vec<&EndpointAddr> = input[1..].iter().filter_map(|(a, _)| a.as_ref()).collect();
                output.push((translate::load_assignment(cluster, &addrs), 1isize));
            },
        )
        .map(|(name, body)| OutputRow::Resource { ty: ResourceType::ClusterLoadAssignment, name, body });

    let output = clusters.concat(assignments).concat(listeners).concat(virtual_hosts);
    (Inputs { services: services_in, slices: slices_in, endpoints: endpoints_in, pods: pods_in }, output)
}

/// The proxied ports of a Service (none for ExternalName services, which resolve by DNS).
pub fn service_port_rows(s: &Service) -> Vec<ServicePortRow> {
    if s.external_name.is_some() {
        return Vec::new();
    }
    s.ports
        .iter()
        .filter(|p| translate::PortProtocol::of(p).is_proxied())
        .map(|p| ServicePortRow { namespace: s.namespace.clone(), service: s.name.clone(), port: p.clone() })
        .collect()
}

/// Ready addresses of a slice, keyed by the port they serve.
pub fn slice_addresses(s: &EndpointSlice) -> Vec<(PortKey, EndpointAddr)> {
    let Some(svc) = &s.service_name else { return Vec::new() };
    let mut out = Vec::new();
    for port in &s.ports {
        let Some(number) = port.port else { continue };
        for ep in s.endpoints.iter().filter(|e| e.ready) {
            for ip in &ep.addresses {
                let key = (s.namespace.clone(), svc.clone(), port.name.clone(), port.protocol);
                out.push((key, EndpointAddr { ip: ip.clone(), port: number }));
            }
        }
    }
    out
}

/// Ready addresses of a core/v1 Endpoints object, keyed by the port they serve.
pub fn endpoints_addresses(e: &Endpoints) -> Vec<(PortKey, EndpointAddr)> {
    let mut out = Vec::new();
    for subset in &e.subsets {
        for port in &subset.ports {
            let Some(number) = port.port else { continue };
            for address in &subset.ready {
                let key = (e.namespace.clone(), e.name.clone(), port.name.clone(), port.protocol);
                out.push((key, EndpointAddr { ip: address.ip.clone(), port: number }));
            }
        }
    }
    out
}

fn pod_addresses(ns: &str, svc: &SelectorService, pod: &Pod) -> Vec<(String, EndpointAddr)> {
    let Some(ip) = &pod.ip else { return Vec::new() };
    if !selector_matches(&svc.selector, &pod.labels) || !pod.serves(svc.publish_not_ready) {
        return Vec::new();
    }
    let fqdn = translate::service_fqdn(ns, &svc.name);
    svc.ports
        .iter()
        .filter_map(|p| {
            let target = pod.resolve_target_port(&p.target_port, p.protocol)?;
            Some((translate::outbound_cluster_name(p.port, "", &fqdn), EndpointAddr { ip: ip.clone(), port: target }))
        })
        .collect()
}

/// Endpoints a selector Service derives from one pod, for the reference translator.
pub fn selector_pod_addresses(s: &Service, pod: &Pod) -> Vec<(String, EndpointAddr)> {
    let Some(selector) = &s.selector else { return Vec::new() };
    if s.external_name.is_some() || pod.namespace != s.namespace || pod.terminal {
        return Vec::new();
    }
    let svc = SelectorService {
        name: s.name.clone(),
        selector: selector.clone(),
        ports: s.ports.iter().filter(|p| translate::PortProtocol::of(p).is_proxied()).cloned().collect(),
        publish_not_ready: s.publish_not_ready_addresses,
    };
    pod_addresses(&s.namespace, &svc, pod)
}
