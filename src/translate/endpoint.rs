//! Endpoints: which addresses a service port's cluster has, from EndpointSlices, core/v1
//! Endpoints or the pods a selector matches, each with the pod behind it when known.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{EndpointAddr, ServicePortRow};
use crate::model::k8s::{Labels, Protocol, ServicePort, SliceEndpoint, selector_matches};
use crate::model::{EndpointSlice, Endpoints, Pod, Service};

/// (namespace, service name, port name, port protocol): how endpoint ports meet service ports.
/// Shared strings: every address of a slice port carries the same key.
pub type PortKey = (Arc<str>, Arc<str>, Arc<str>, Protocol);

/// The key of a service's (or a slice's) port.
pub fn port_key(namespace: &str, service: &str, port: &str, protocol: Protocol) -> PortKey {
    (namespace.into(), service.into(), port.into(), protocol)
}
/// (namespace, pod name)
pub type PodKey = (Arc<str>, Arc<str>);

/// One endpoint of a cluster without subset, with the pod behind it when known (subsets choose
/// endpoints by their pod's labels).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EndpointRow {
    pub addr: EndpointAddr,
    pub pod: Option<PodKey>,
    /// The endpoint's own labels (a ServiceEntry endpoint's); an endpoint with a pod is
    /// selected by its pod's labels instead.
    pub labels: Labels,
}

/// The part of a selector Service that the pod join needs.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SelectorService {
    pub name: String,
    pub selector: Labels,
    pub ports: Vec<ServicePort>,
    pub publish_not_ready: bool,
    /// The hosts of a ServiceEntry with a `workloadSelector`; empty for a Service (its FQDN).
    pub hosts: Vec<String>,
}

/// The proxied ports of a Service (none for ExternalName services, which resolve by DNS).
pub fn service_port_rows(s: &Service) -> Vec<ServicePortRow> {
    if s.external_name.is_some() {
        return Vec::new();
    }
    // "None" (headless) and anything else that is not an address: no cluster IP.
    let cluster_ip = s.cluster_ip.as_deref().and_then(|ip| ip.parse().ok());
    s.ports
        .iter()
        .filter(|p| super::PortProtocol::of(p).is_proxied())
        .map(|p| ServicePortRow {
            namespace: s.namespace.clone(),
            service: s.name.clone(),
            port: p.clone(),
            cluster_ip,
            headless: s.cluster_ip.as_deref() == Some("None"),
            entry: None,
            export_to: s.export_to.clone(),
        })
        .collect()
}

/// Ready addresses of a slice, keyed by the port they serve.
pub fn slice_addresses(s: &EndpointSlice) -> Vec<(PortKey, EndpointRow)> {
    let ready: Vec<&SliceEndpoint> = s.endpoints.iter().filter(|e| e.ready).collect();
    slice_endpoint_addresses(s, &ready)
}

/// The addresses of `endpoints` (some of slice `s`'s, taken as ready) on each of the slice's
/// ports: [`slice_addresses`] for those endpoints only.
pub fn slice_endpoint_addresses(s: &EndpointSlice, endpoints: &[&SliceEndpoint]) -> Vec<(PortKey, EndpointRow)> {
    let Some(svc) = &s.service_name else { return Vec::new() };
    let mut out = Vec::new();
    if endpoints.is_empty() {
        return out;
    }
    let namespace: Arc<str> = s.namespace.as_str().into();
    for port in &s.ports {
        let Some(number) = port.port else { continue };
        let key = port_key(&s.namespace, svc, &port.name, port.protocol);
        for ep in endpoints {
            let pod: Option<PodKey> = ep.pod.as_deref().map(|p| (namespace.clone(), p.into()));
            for ip in &ep.addresses {
                let (key, pod) = (key.clone(), pod.clone());
                out.push((
                    key,
                    EndpointRow { addr: EndpointAddr::new(ip.as_str(), number), pod, labels: Labels::new() },
                ));
            }
        }
    }
    out
}

/// Ready addresses of a core/v1 Endpoints object, keyed by the port they serve.
pub fn endpoints_addresses(e: &Endpoints) -> Vec<(PortKey, EndpointRow)> {
    let mut out = Vec::new();
    let namespace: Arc<str> = e.namespace.as_str().into();
    for subset in &e.subsets {
        for port in &subset.ports {
            let Some(number) = port.port else { continue };
            let key = port_key(&e.namespace, &e.name, &port.name, port.protocol);
            for a in &subset.ready {
                let key = key.clone();
                let pod = a.pod.as_deref().map(|p| (namespace.clone(), p.into()));
                out.push((
                    key,
                    EndpointRow { addr: EndpointAddr::new(a.ip.as_str(), number), pod, labels: Labels::new() },
                ));
            }
        }
    }
    out
}

pub fn pod_addresses(ns: &str, svc: &SelectorService, pod: &Pod) -> Vec<(String, EndpointRow)> {
    let Some(ip) = &pod.ip else { return Vec::new() };
    if !selector_matches(&svc.selector, &pod.labels) || !pod.serves(svc.publish_not_ready) {
        return Vec::new();
    }
    let hosts = if svc.hosts.is_empty() { vec![super::service_fqdn(ns, &svc.name)] } else { svc.hosts.clone() };
    let mut out = Vec::new();
    for p in &svc.ports {
        let Some(target) = pod.resolve_target_port(&p.target_port, p.protocol) else { continue };
        for fqdn in &hosts {
            let row = EndpointRow {
                addr: EndpointAddr::new(ip.as_str(), target),
                pod: Some(pod.key()),
                labels: Labels::new(),
            };
            out.push((super::outbound_cluster_name(p.port, "", fqdn), row));
        }
    }
    out
}

/// Endpoints a selector Service derives from one pod, for the reference translator.
pub fn selector_pod_addresses(s: &Service, pod: &Pod) -> Vec<(String, EndpointRow)> {
    let Some(selector) = &s.selector else { return Vec::new() };
    if s.external_name.is_some() || pod.namespace != s.namespace || pod.terminal {
        return Vec::new();
    }
    let svc = SelectorService {
        name: s.name.clone(),
        selector: selector.clone(),
        ports: s.ports.iter().filter(|p| super::PortProtocol::of(p).is_proxied()).cloned().collect(),
        publish_not_ready: s.publish_not_ready_addresses,
        hosts: Vec::new(),
    };
    pod_addresses(&s.namespace, &svc, pod)
}

// === locality ===

/// A Pod's locality when its labels give it (`topology.istio.io/locality`, else the older
/// `istio-locality`), with `.` read as `/` unless the value has a `/`, as istiod's
/// `GetLocalityLabel` and `SanitizeLocalityLabel`.
pub fn pod_locality_label(labels: &Labels) -> Option<String> {
    let value = labels.get("topology.istio.io/locality").or_else(|| labels.get("istio-locality"))?;
    if value.is_empty() {
        return None;
    }
    Some(if value.contains('/') { value.clone() } else { value.replace('.', "/") })
}

/// A Node's locality, `region/zone/subzone`, from its topology labels (the GA ones, else the
/// beta `failure-domain` ones; subzone `topology.istio.io/subzone`), as istiod's
/// `getPodLocality`; empty when it has none of them.
pub fn node_locality(labels: &Labels) -> String {
    let get = |ga: &str, beta: &str| labels.get(ga).or_else(|| labels.get(beta)).cloned().unwrap_or_default();
    let region = get("topology.kubernetes.io/region", "failure-domain.beta.kubernetes.io/region");
    let zone = get("topology.kubernetes.io/zone", "failure-domain.beta.kubernetes.io/zone");
    let subzone = get("topology.istio.io/subzone", "topology.istio.io/subzone");
    if region.is_empty() && zone.is_empty() && subzone.is_empty() {
        return String::new();
    }
    format!("{region}/{zone}/{subzone}")
}

/// The locality of a Pod's endpoints: its own label, else its Node's (`node`: the labels of
/// the Node it runs on, when known).
pub fn pod_locality(pod: &Pod, node: Option<&Labels>) -> String {
    pod_locality_label(&pod.labels).or_else(|| node.map(node_locality)).unwrap_or_default()
}

#[cfg(test)]
mod locality_tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn a_node_locality_is_region_zone_subzone_from_its_topology_labels() {
        let node = labels(&[
            ("topology.kubernetes.io/region", "us-east1"),
            ("topology.kubernetes.io/zone", "us-east1-b"),
            ("topology.istio.io/subzone", "rack7"),
        ]);
        assert_eq!(node_locality(&node), "us-east1/us-east1-b/rack7");
        let beta = labels(&[("failure-domain.beta.kubernetes.io/zone", "z1")]);
        assert_eq!(node_locality(&beta), "/z1/");
        assert_eq!(node_locality(&labels(&[("kubernetes.io/hostname", "n1")])), "");
    }

    #[test]
    fn a_pod_locality_label_wins_and_dots_become_slashes() {
        let node = labels(&[("topology.kubernetes.io/region", "r")]);
        assert_eq!(pod_locality_label(&labels(&[("istio-locality", "r1.z1.s1")])).as_deref(), Some("r1/z1/s1"));
        let both = labels(&[("topology.istio.io/locality", "a/b"), ("istio-locality", "c.d")]);
        assert_eq!(pod_locality_label(&both).as_deref(), Some("a/b"));
        assert_eq!(node_locality(&node), "r//");
    }
}
