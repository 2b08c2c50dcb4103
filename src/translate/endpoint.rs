//! Endpoints: which addresses a service port's cluster has, from EndpointSlices, core/v1
//! Endpoints or the pods a selector matches, each with the pod behind it when known.

use serde::{Deserialize, Serialize};

use super::{EndpointAddr, ServicePortRow};
use crate::model::k8s::{Labels, Protocol, ServicePort, selector_matches};
use crate::model::{EndpointSlice, Endpoints, Pod, Service};

/// (namespace, service name, port name, port protocol): how endpoint ports meet service ports.
pub type PortKey = (String, String, String, Protocol);
/// (namespace, pod name)
pub type PodKey = (String, String);

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
            entry: None,
        })
        .collect()
}

/// Ready addresses of a slice, keyed by the port they serve.
pub fn slice_addresses(s: &EndpointSlice) -> Vec<(PortKey, EndpointRow)> {
    let Some(svc) = &s.service_name else { return Vec::new() };
    let mut out = Vec::new();
    for port in &s.ports {
        let Some(number) = port.port else { continue };
        for ep in s.endpoints.iter().filter(|e| e.ready) {
            for ip in &ep.addresses {
                let key = (s.namespace.clone(), svc.clone(), port.name.clone(), port.protocol);
                let pod = ep.pod.clone().map(|p| (s.namespace.clone(), p));
                out.push((
                    key,
                    EndpointRow { addr: EndpointAddr::new(ip.clone(), number), pod, labels: Labels::new() },
                ));
            }
        }
    }
    out
}

/// Ready addresses of a core/v1 Endpoints object, keyed by the port they serve.
pub fn endpoints_addresses(e: &Endpoints) -> Vec<(PortKey, EndpointRow)> {
    let mut out = Vec::new();
    for subset in &e.subsets {
        for port in &subset.ports {
            let Some(number) = port.port else { continue };
            for a in &subset.ready {
                let key = (e.namespace.clone(), e.name.clone(), port.name.clone(), port.protocol);
                let pod = a.pod.clone().map(|p| (e.namespace.clone(), p));
                out.push((
                    key,
                    EndpointRow { addr: EndpointAddr::new(a.ip.clone(), number), pod, labels: Labels::new() },
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
                addr: EndpointAddr::new(ip.clone(), target),
                pod: Some((pod.namespace.clone(), pod.name.clone())),
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
