//! Kubernetes kinds, cut down to what translation needs.
//!
//! Each `from_*` conversion takes the full `k8s-openapi` object and keeps only the fields the
//! translation reads, so a Pod costs its labels, IP and ports, not its whole spec. Conversions
//! validate what they keep and report problems as [`FieldError`]s.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::{Deserialize, Serialize};

use super::FieldError;

/// The label an EndpointSlice carries to name its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A label set (or a selector), sorted by key, immutable and shared.
///
/// A slice rather than a `BTreeMap`: a map of three labels costs a whole B-tree node (~550
/// bytes), the slice 144. Shared (`Arc`): one Pod's labels are held by the driver, by the rows
/// the engine derives from the Pod (its place, its identity, its endpoints) and by every merge
/// of the arrangements those rows pass through, and a copy is then a reference count, not
/// an allocation per string. Lookups are binary searches; label sets are small.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(from = "BTreeMap<String, String>", into = "BTreeMap<String, String>")]
pub struct Labels(Arc<[(String, String)]>);

impl Labels {
    pub fn new() -> Labels {
        Labels::default()
    }

    pub fn get(&self, key: &str) -> Option<&String> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(key)).ok().map(|i| &self.0[i].1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The label set as one string, `k=v,k=v` sorted by key: how located scopes and the
    /// registry of connected proxies key a proxy's labels.
    pub fn id(&self) -> String {
        let pairs: Vec<String> = self.iter().map(|(k, v)| format!("{k}={v}")).collect();
        pairs.join(",")
    }
}

impl From<BTreeMap<String, String>> for Labels {
    fn from(map: BTreeMap<String, String>) -> Labels {
        Labels(map.into_iter().collect())
    }
}

impl From<Labels> for BTreeMap<String, String> {
    fn from(labels: Labels) -> Self {
        labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

impl<const N: usize> From<[(String, String); N]> for Labels {
    fn from(pairs: [(String, String); N]) -> Labels {
        pairs.into_iter().collect()
    }
}

impl FromIterator<(String, String)> for Labels {
    /// Later pairs win over earlier ones with the same key, as in a map.
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Labels {
        Labels::from(iter.into_iter().collect::<BTreeMap<_, _>>())
    }
}

impl IntoIterator for Labels {
    type Item = (String, String);
    type IntoIter = LabelsIntoIter;
    /// (Copies the pairs: the set may be shared.)
    fn into_iter(self) -> Self::IntoIter {
        LabelsIntoIter { labels: self.0, at: 0 }
    }
}

/// The pairs of a [`Labels`], copied one by one.
pub struct LabelsIntoIter {
    labels: Arc<[(String, String)]>,
    at: usize,
}

impl Iterator for LabelsIntoIter {
    type Item = (String, String);
    fn next(&mut self) -> Option<(String, String)> {
        let pair = self.labels.get(self.at)?.clone();
        self.at += 1;
        Some(pair)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    fn parse(value: Option<&str>, field: &str) -> Result<Protocol, FieldError> {
        match value.unwrap_or("TCP") {
            "TCP" => Ok(Protocol::Tcp),
            "UDP" => Ok(Protocol::Udp),
            "SCTP" => Ok(Protocol::Sctp),
            other => Err(FieldError::new(field, format!("unsupported protocol {other:?}: must be TCP, UDP or SCTP"))),
        }
    }
}

/// A Service port's `targetPort`: a number, or the name of a container port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServicePort {
    /// Empty when the Service has a single unnamed port.
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
    pub target_port: TargetPort,
    pub app_protocol: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    pub ports: Vec<ServicePort>,
    /// `None` for a Service without a selector (its endpoints are managed by hand).
    pub selector: Option<Labels>,
    pub cluster_ip: Option<String>,
    /// `ExternalName` services resolve by DNS and get no EDS cluster.
    pub external_name: Option<String>,
    pub publish_not_ready_addresses: bool,
    /// Istio's `networking.istio.io/exportTo` annotation, split at commas (empty: every
    /// namespace).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SlicePort {
    /// Matches the Service port of the same name (empty for the unnamed port).
    pub name: String,
    pub port: Option<u16>,
    pub protocol: Protocol,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SliceEndpoint {
    pub addresses: Vec<String>,
    pub ready: bool,
    /// The Pod this endpoint is (its labels decide subset membership): the name in `targetRef`
    /// when that is a Pod in the slice's namespace, else `None`. See [`target_pod`].
    pub pod: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EndpointSlice {
    pub namespace: String,
    pub name: String,
    /// From the `kubernetes.io/service-name` label; a slice without it belongs to no Service.
    pub service_name: Option<String>,
    pub ports: Vec<SlicePort>,
    pub endpoints: Vec<SliceEndpoint>,
}

/// One address of a `core/v1` Endpoints subset.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EndpointAddress {
    pub ip: String,
    /// The Pod at this address, by the same rule as [`SliceEndpoint::pod`].
    pub pod: Option<String>,
}

/// A `core/v1` Endpoints subset: ready addresses, not-ready addresses and ports.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EndpointSubset {
    pub ready: Vec<EndpointAddress>,
    pub not_ready: Vec<EndpointAddress>,
    pub ports: Vec<SlicePort>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Endpoints {
    pub namespace: String,
    pub name: String,
    pub subsets: Vec<EndpointSubset>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ContainerPort {
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    pub ip: Option<String>,
    pub node_name: Option<String>,
    /// The Pod's `Ready` condition is `True`.
    pub ready: bool,
    /// Pods that are terminating, succeeded or failed are never endpoints.
    pub terminal: bool,
    pub ports: Vec<ContainerPort>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    pub labels: Labels,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Namespace {
    pub name: String,
    pub labels: Labels,
}

// === conversions ===

fn labels(meta: &ObjectMeta) -> Labels {
    meta.labels.clone().map(Labels::from).unwrap_or_default()
}

/// `metadata.creationTimestamp` as the apiserver writes it: RFC 3339 in UTC, whole seconds,
/// `Z` (Go's `metav1.Time` marshals `t.UTC().Format(time.RFC3339)`), e.g. `2024-01-02T03:04:05Z`.
pub fn creation_timestamp(meta: &ObjectMeta) -> Option<String> {
    let time = meta.creation_timestamp.as_ref()?;
    k8s_openapi::jiff::fmt::strtime::format("%Y-%m-%dT%H:%M:%SZ", time.0).ok()
}

fn port_number(value: i32, field: &str) -> Result<u16, FieldError> {
    u16::try_from(value)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| FieldError::new(field, format!("port {value} is out of range 1-65535")))
}

fn ip_address(value: &str, field: &str) -> Result<String, FieldError> {
    value
        .parse::<std::net::IpAddr>()
        .map(|ip| ip.to_string())
        .map_err(|_| FieldError::new(field, format!("{value:?} is not an IP address")))
}

/// The Pod an endpoint's `targetRef` names, if it names one: `kind` is `Pod` and its namespace is
/// the endpoint's own (`namespace`: the slice's or Endpoints' namespace; an unset namespace counts
/// as that one). A Service's endpoints live in its namespace, so a Pod elsewhere is not looked up.
pub fn target_pod(target_ref: Option<&core::ObjectReference>, namespace: &str) -> Option<String> {
    let target = target_ref?;
    let same_namespace = target.namespace.as_deref().is_none_or(|ns| ns.is_empty() || ns == namespace);
    if target.kind.as_deref() != Some("Pod") || !same_namespace {
        return None;
    }
    target.name.clone().filter(|name| !name.is_empty())
}

/// Collects field errors so a conversion reports every problem, not just the first.
#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn take<T>(&mut self, r: Result<T, FieldError>) -> Option<T> {
        r.map_err(|e| self.0.push(e)).ok()
    }

    fn finish<T>(self, value: T) -> Result<T, Vec<FieldError>> {
        if self.0.is_empty() { Ok(value) } else { Err(self.0) }
    }
}

/// The annotation by which a Service limits the namespaces that see it, as istiod reads it.
pub const SERVICE_EXPORT_TO: &str = "networking.istio.io/exportTo";

pub fn service_from(ns: &str, name: &str, svc: &core::Service) -> Result<Service, Vec<FieldError>> {
    let mut errors = Errors::default();
    let spec = svc.spec.clone().unwrap_or_default();
    let mut ports = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        let field = format!("spec.ports[{i}]");
        let number = errors.take(port_number(p.port, &format!("{field}.port")));
        let protocol = errors.take(Protocol::parse(p.protocol.as_deref(), &format!("{field}.protocol")));
        let target_port = match &p.target_port {
            None => number.map(TargetPort::Number),
            Some(IntOrString::Int(n)) => {
                errors.take(port_number(*n, &format!("{field}.targetPort"))).map(TargetPort::Number)
            }
            Some(IntOrString::String(s)) if s.is_empty() => number.map(TargetPort::Number),
            Some(IntOrString::String(s)) => match s.parse::<i32>() {
                // kubectl accepts "8080" and means the number.
                Ok(n) => errors.take(port_number(n, &format!("{field}.targetPort"))).map(TargetPort::Number),
                Err(_) => Some(TargetPort::Name(s.clone())),
            },
        };
        let name = p.name.clone().unwrap_or_default();
        if let (Some(number), Some(protocol)) = (number, protocol)
            && !seen.insert((number, protocol))
        {
            errors.0.push(FieldError::new(format!("{field}.port"), format!("duplicate port {number}/{protocol:?}")));
        }
        if spec.ports.as_ref().is_some_and(|all| all.len() > 1) && name.is_empty() {
            errors
                .0
                .push(FieldError::new(format!("{field}.name"), "must be set when a Service has more than one port"));
        }
        if let (Some(port), Some(protocol), Some(target_port)) = (number, protocol, target_port) {
            ports.push(ServicePort { name, port, protocol, target_port, app_protocol: p.app_protocol.clone() });
        }
    }
    let external_name = if spec.type_.as_deref() == Some("ExternalName") {
        match spec.external_name.clone() {
            Some(n) if !n.is_empty() => Some(n),
            _ => {
                errors.0.push(FieldError::new("spec.externalName", "required when type is ExternalName"));
                None
            }
        }
    } else {
        None
    };
    let cluster_ip = spec.cluster_ip.clone().filter(|ip| !ip.is_empty());
    let selector = spec.selector.clone().filter(|s| !s.is_empty()).map(Labels::from);
    errors.finish(Service {
        namespace: ns.to_string(),
        name: name.to_string(),
        ports,
        selector,
        cluster_ip,
        external_name,
        publish_not_ready_addresses: spec.publish_not_ready_addresses.unwrap_or(false),
        export_to: svc
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(SERVICE_EXPORT_TO))
            .map(|v| v.split(',').map(str::trim).filter(|e| !e.is_empty()).map(String::from).collect())
            .unwrap_or_default(),
    })
}

fn endpoint_ports(ports: Option<&Vec<discovery::EndpointPort>>, field: &str, errors: &mut Errors) -> Vec<SlicePort> {
    let mut out = Vec::new();
    for (i, p) in ports.into_iter().flatten().enumerate() {
        let f = format!("{field}[{i}]");
        let port = match p.port {
            Some(n) => errors.take(port_number(n, &format!("{f}.port"))),
            None => None,
        };
        if let Some(protocol) = errors.take(Protocol::parse(p.protocol.as_deref(), &format!("{f}.protocol"))) {
            out.push(SlicePort { name: p.name.clone().unwrap_or_default(), port, protocol });
        }
    }
    out
}

pub fn endpoint_slice_from(
    ns: &str,
    name: &str,
    slice: &discovery::EndpointSlice,
) -> Result<EndpointSlice, Vec<FieldError>> {
    let mut errors = Errors::default();
    if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6" | "FQDN") {
        errors
            .0
            .push(FieldError::new("addressType", format!("{:?} is not one of IPv4, IPv6, FQDN", slice.address_type)));
    }
    let ports = endpoint_ports(slice.ports.as_ref(), "ports", &mut errors);
    let mut endpoints = Vec::new();
    // FQDN slices name hosts, not IPs; they carry no routable address for EDS.
    if slice.address_type != "FQDN" {
        for (i, ep) in slice.endpoints.iter().enumerate() {
            let conditions = ep.conditions.clone().unwrap_or_default();
            // Kubernetes: a nil `ready` means ready, unless the endpoint is terminating.
            let ready = conditions.ready.unwrap_or(!conditions.terminating.unwrap_or(false));
            let addresses = ep
                .addresses
                .iter()
                .enumerate()
                .filter_map(|(j, a)| errors.take(ip_address(a, &format!("endpoints[{i}].addresses[{j}]"))))
                .collect();
            endpoints.push(SliceEndpoint { addresses, ready, pod: target_pod(ep.target_ref.as_ref(), ns) });
        }
    }
    errors.finish(EndpointSlice {
        namespace: ns.to_string(),
        name: name.to_string(),
        service_name: slice.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL).cloned()),
        ports,
        endpoints,
    })
}

pub fn endpoints_from(ns: &str, name: &str, eps: &core::Endpoints) -> Result<Endpoints, Vec<FieldError>> {
    let mut errors = Errors::default();
    let mut subsets = Vec::new();
    for (i, s) in eps.subsets.iter().flatten().enumerate() {
        let mut addrs = |list: &Option<Vec<core::EndpointAddress>>, which: &str| -> Vec<EndpointAddress> {
            list.iter()
                .flatten()
                .enumerate()
                .filter_map(|(j, a)| {
                    let ip = errors.take(ip_address(&a.ip, &format!("subsets[{i}].{which}[{j}].ip")))?;
                    Some(EndpointAddress { ip, pod: target_pod(a.target_ref.as_ref(), ns) })
                })
                .collect()
        };
        let ready = addrs(&s.addresses, "addresses");
        let not_ready = addrs(&s.not_ready_addresses, "notReadyAddresses");
        let ports: Vec<discovery::EndpointPort> = s
            .ports
            .iter()
            .flatten()
            .map(|p| discovery::EndpointPort {
                name: p.name.clone(),
                port: Some(p.port),
                protocol: p.protocol.clone(),
                app_protocol: p.app_protocol.clone(),
            })
            .collect();
        let ports = endpoint_ports(Some(&ports), &format!("subsets[{i}].ports"), &mut errors);
        subsets.push(EndpointSubset { ready, not_ready, ports });
    }
    errors.finish(Endpoints { namespace: ns.to_string(), name: name.to_string(), subsets })
}

pub fn pod_from(ns: &str, name: &str, pod: &core::Pod) -> Result<Pod, Vec<FieldError>> {
    let mut errors = Errors::default();
    let status = pod.status.clone().unwrap_or_default();
    let ip = match status.pod_ip.as_deref().filter(|ip| !ip.is_empty()) {
        Some(ip) => errors.take(ip_address(ip, "status.podIP")),
        None => None,
    };
    let ready = status.conditions.iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True");
    let terminal =
        pod.metadata.deletion_timestamp.is_some() || matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"));
    let mut ports = Vec::new();
    for (ci, c) in pod.spec.iter().flat_map(|s| s.containers.iter()).enumerate() {
        for (pi, p) in c.ports.iter().flatten().enumerate() {
            let f = format!("spec.containers[{ci}].ports[{pi}]");
            let port = errors.take(port_number(p.container_port, &format!("{f}.containerPort")));
            let protocol = errors.take(Protocol::parse(p.protocol.as_deref(), &format!("{f}.protocol")));
            if let (Some(port), Some(protocol)) = (port, protocol) {
                ports.push(ContainerPort { name: p.name.clone().unwrap_or_default(), port, protocol });
            }
        }
    }
    errors.finish(Pod {
        namespace: ns.to_string(),
        name: name.to_string(),
        labels: labels(&pod.metadata),
        ip,
        node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        ready,
        terminal,
        ports,
    })
}

pub fn node_from(name: &str, node: &core::Node) -> Node {
    Node { name: name.to_string(), labels: labels(&node.metadata) }
}

pub fn namespace_from(name: &str, ns: &core::Namespace) -> Namespace {
    Namespace { name: name.to_string(), labels: labels(&ns.metadata) }
}

impl Pod {
    /// (namespace, name), as the engine keys a pod's rows ([`crate::translate::endpoint::PodKey`]).
    pub fn key(&self) -> (std::sync::Arc<str>, std::sync::Arc<str>) {
        (self.namespace.as_str().into(), self.name.as_str().into())
    }

    /// Whether this pod can be an endpoint at all: it has an IP and is not terminal.
    pub fn live(&self) -> bool {
        self.ip.is_some() && !self.terminal
    }

    /// Whether the Kubernetes endpoints controller would list this pod as an address of a
    /// Service: it is [live](Pod::live) and ready (or the Service publishes not-ready
    /// addresses).
    pub fn serves(&self, publish_not_ready: bool) -> bool {
        self.live() && (self.ready || publish_not_ready)
    }

    /// Resolves a Service `targetPort` against this pod, as the endpoints controller does: a
    /// number is used as is; a name must match one of the pod's container ports.
    pub fn resolve_target_port(&self, target: &TargetPort, protocol: Protocol) -> Option<u16> {
        match target {
            TargetPort::Number(n) => Some(*n),
            TargetPort::Name(name) => {
                self.ports.iter().find(|p| &p.name == name && p.protocol == protocol).map(|p| p.port)
            }
        }
    }
}

/// Label selector match: every selector pair is among the labels.
pub fn selector_matches(selector: &Labels, labels: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    use serde_json::{Value, json};

    use super::*;

    /// Endpoint (or address) target references, and the Pod each should name in namespace `shop`.
    fn target_refs() -> Vec<(Value, Option<&'static str>)> {
        vec![
            (json!({"kind": "Pod", "name": "web-a", "namespace": "shop"}), Some("web-a")),
            (json!({"kind": "Pod", "name": "web-b"}), Some("web-b")),
            (json!({"kind": "Pod", "name": "web-c", "namespace": ""}), Some("web-c")),
            (json!({"kind": "Pod", "name": "web-d", "namespace": "other"}), None),
            (json!({"kind": "Node", "name": "node-a", "namespace": "shop"}), None),
            (json!({"name": "web-e", "namespace": "shop"}), None),
            (json!({"kind": "Pod", "namespace": "shop"}), None),
            (Value::Null, None),
        ]
    }

    #[test]
    fn the_export_to_annotation_is_read_onto_the_service_rows() {
        let svc: core::Service = serde_json::from_value(json!({
            "metadata": {"name": "reviews", "namespace": "default",
                         "annotations": {SERVICE_EXPORT_TO: "., istio-system"}},
            "spec": {"ports": [{"port": 9080}]}}))
        .unwrap();
        let converted = service_from("default", "reviews", &svc).unwrap();
        assert_eq!(converted.export_to, [".", "istio-system"]);
        let rows = crate::translate::endpoint::service_port_rows(&converted);
        assert_eq!(rows[0].export_to, [".", "istio-system"], "the rows carry it to translation");
    }

    #[test]
    fn slice_endpoints_name_the_pod_of_their_target_ref() {
        let cases = target_refs();
        let endpoints: Vec<Value> = cases
            .iter()
            .enumerate()
            .map(|(i, (target, _))| {
                let mut ep = json!({"addresses": [format!("10.0.0.{i}")], "conditions": {"ready": true}});
                if !target.is_null() {
                    ep["targetRef"] = target.clone();
                }
                ep
            })
            .collect();
        let slice: discovery::EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "web-1", "namespace": "shop", "labels": {SERVICE_NAME_LABEL: "web"}},
            "addressType": "IPv4", "endpoints": endpoints}))
        .unwrap();
        let converted = endpoint_slice_from("shop", "web-1", &slice).unwrap();
        let pods: Vec<Option<&str>> = converted.endpoints.iter().map(|e| e.pod.as_deref()).collect();
        let expected: Vec<Option<&str>> = cases.iter().map(|(_, pod)| *pod).collect();
        assert_eq!(pods, expected);
        assert_eq!(converted.endpoints[0].addresses, ["10.0.0.0"]);
    }

    #[test]
    fn endpoints_addresses_name_the_pod_of_their_target_ref() {
        let cases = target_refs();
        let address = |i: usize, target: &Value| {
            let mut a = json!({"ip": format!("10.0.{i}.1")});
            if !target.is_null() {
                a["targetRef"] = target.clone();
            }
            a
        };
        let ready: Vec<Value> = cases.iter().enumerate().map(|(i, (t, _))| address(i, t)).collect();
        let not_ready: Vec<Value> = cases.iter().enumerate().rev().map(|(i, (t, _))| address(i, t)).collect();
        let eps: core::Endpoints = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "subsets": [{"addresses": ready, "notReadyAddresses": not_ready, "ports": [{"name": "http", "port": 8080}]}]}))
        .unwrap();
        let converted = endpoints_from("shop", "web", &eps).unwrap();
        let subset = &converted.subsets[0];
        let expected: Vec<EndpointAddress> = cases
            .iter()
            .enumerate()
            .map(|(i, (_, pod))| EndpointAddress { ip: format!("10.0.{i}.1"), pod: pod.map(str::to_string) })
            .collect();
        assert_eq!(subset.ready, expected);
        assert_eq!(subset.not_ready, expected.into_iter().rev().collect::<Vec<_>>());
    }

    #[test]
    fn creation_timestamp_is_written_as_the_apiserver_does() {
        // 2024-01-02T03:04:05Z is 1704164645 s after the epoch; the fraction is dropped, not rounded.
        let meta = ObjectMeta {
            creation_timestamp: Some(Time(Timestamp::new(1_704_164_645, 999_000_000).unwrap())),
            ..ObjectMeta::default()
        };
        assert_eq!(creation_timestamp(&meta).as_deref(), Some("2024-01-02T03:04:05Z"));
        let meta = ObjectMeta { creation_timestamp: Some(Time(Timestamp::new(0, 0).unwrap())), ..meta };
        assert_eq!(creation_timestamp(&meta).as_deref(), Some("1970-01-01T00:00:00Z"));
        assert_eq!(creation_timestamp(&ObjectMeta::default()), None);
    }
}
