//! Input types: what sources hand to the engine.
//!
//! Kubernetes objects arrive as `k8s-openapi` types and are cut down at the source boundary to the
//! few fields translation needs (a [`Pod`] keeps namespace, name, labels, IP, readiness and ports,
//! not its spec). Istio networking objects keep their whole spec ([`istio`]). Every object is
//! validated once, at intake: the engine only ever sees objects that passed, so bad input can
//! never panic a worker.

pub mod crds;
pub mod istio;
pub mod k8s;
mod parse;
pub mod proxy;
pub mod secret;

use std::cmp::Ordering;
use std::fmt;

use serde::{Deserialize, Serialize};

pub use k8s::{
    EndpointAddress, EndpointSlice, Endpoints, Namespace, Node, Pod, Service, ServicePort, SliceEndpoint, SlicePort,
};
pub use parse::{ParseOutcome, parse_document};
pub use secret::Secret;

/// Kinds meshflow reads. Anything else is skipped at intake with one log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    Namespace,
    Node,
    Service,
    EndpointSlice,
    Endpoints,
    Pod,
    Gateway,
    VirtualService,
    DestinationRule,
    ServiceEntry,
    Secret,
    /// A class of connected proxies ([`proxy::ProxyClass`]): an input from the xDS server,
    /// never from files or the cluster.
    ProxyClass,
    /// A (namespace, locality) of connected proxies ([`proxy::ProxyLocality`]): an input from
    /// the xDS server, never from files or the cluster.
    ProxyLocality,
}

impl Kind {
    /// The kinds read from files and the cluster.
    pub const ALL: [Kind; 11] = [
        Kind::Namespace,
        Kind::Node,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Endpoints,
        Kind::Pod,
        Kind::Gateway,
        Kind::VirtualService,
        Kind::DestinationRule,
        Kind::ServiceEntry,
        Kind::Secret,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Node => "Node",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Endpoints => "Endpoints",
            Kind::Pod => "Pod",
            Kind::Gateway => "Gateway",
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
            Kind::ServiceEntry => "ServiceEntry",
            Kind::ProxyClass => "ProxyClass",
            Kind::ProxyLocality => "ProxyLocality",
            Kind::Secret => "Secret",
        }
    }

    /// Cluster-scoped kinds have an empty namespace in their [`ObjectKey`].
    pub fn is_namespaced(self) -> bool {
        !matches!(self, Kind::Namespace | Kind::Node | Kind::ProxyClass)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Identity of one input object: its kind, namespace (empty for cluster-scoped kinds) and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(kind: Kind, namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectKey { kind, namespace: namespace.into(), name: name.into() }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// One validated input object, reduced to what translation needs. The Istio kinds are boxed:
/// they are larger than the Kubernetes kinds and far fewer, so every Pod need not pay for them.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Object {
    Namespace(Namespace),
    Node(Node),
    /// Boxed, as the larger kinds are: the driver and the directory source hold every object,
    /// and each `Object` is as large as its largest variant.
    Service(Box<Service>),
    /// Shared: the driver holds every slice, and the engine's port index the slices of each
    /// Service (to key their rows again when the Service changes), one copy between them.
    EndpointSlice(std::sync::Arc<EndpointSlice>),
    Endpoints(Box<Endpoints>),
    /// Shared: the source, the driver and the endpoint graph hold one Pod, not a copy each.
    Pod(std::sync::Arc<Pod>),
    Gateway(Box<istio::Gateway>),
    VirtualService(Box<istio::VirtualService>),
    DestinationRule(Box<istio::DestinationRule>),
    ServiceEntry(Box<istio::ServiceEntry>),
    ProxyClass(proxy::ProxyClass),
    ProxyLocality(proxy::ProxyLocality),
    /// Boxed like the Istio kinds: few, and larger than most objects.
    Secret(Box<Secret>),
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Namespace(_) => Kind::Namespace,
            Object::Node(_) => Kind::Node,
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::Endpoints(_) => Kind::Endpoints,
            Object::Pod(_) => Kind::Pod,
            Object::Gateway(_) => Kind::Gateway,
            Object::VirtualService(_) => Kind::VirtualService,
            Object::DestinationRule(_) => Kind::DestinationRule,
            Object::ServiceEntry(_) => Kind::ServiceEntry,
            Object::ProxyClass(_) => Kind::ProxyClass,
            Object::ProxyLocality(_) => Kind::ProxyLocality,
            Object::Secret(_) => Kind::Secret,
        }
    }

    pub fn key(&self) -> ObjectKey {
        let (ns, name) = match self {
            Object::Namespace(o) => ("", o.name.as_str()),
            Object::Node(o) => ("", o.name.as_str()),
            Object::Service(o) => (o.namespace.as_str(), o.name.as_str()),
            Object::EndpointSlice(o) => (o.namespace.as_str(), o.name.as_str()),
            Object::Endpoints(o) => (o.namespace.as_str(), o.name.as_str()),
            Object::Pod(o) => (o.namespace.as_str(), o.name.as_str()),
            Object::Gateway(o) => (o.namespace.as_str(), o.name.as_str()),
            Object::VirtualService(o) => (o.namespace.as_str(), o.name.as_str()),
            Object::DestinationRule(o) => (o.namespace.as_str(), o.name.as_str()),
            Object::ServiceEntry(o) => (o.namespace.as_str(), o.name.as_str()),
            Object::ProxyClass(c) => return ObjectKey::new(Kind::ProxyClass, "", c.id()),
            // One per (namespace, locality, labels): `<locality>#<k=v,…>` (the labels after the
            // last `#`, so distinct triples have distinct keys).
            Object::ProxyLocality(l) => {
                let name = format!("{}#{}", l.locality, l.labels.id());
                return ObjectKey::new(Kind::ProxyLocality, l.namespace.as_str(), name);
            }
            Object::Secret(o) => (o.namespace.as_str(), o.name.as_str()),
        };
        ObjectKey::new(self.kind(), ns, name)
    }
}

/// A change to one input object: `object: None` deletes it. An event for a key the engine
/// already holds replaces the old object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputEvent {
    pub key: ObjectKey,
    pub object: Option<Object>,
}

impl InputEvent {
    pub fn apply(object: Object) -> Self {
        InputEvent { key: object.key(), object: Some(object) }
    }

    pub fn delete(key: ObjectKey) -> Self {
        InputEvent { key, object: None }
    }
}

/// One reason an object was rejected: the field (a dotted path such as `spec.ports[1].number`)
/// and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        FieldError { field: field.into(), reason: reason.into() }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() { f.write_str(&self.reason) } else { write!(f, "{}: {}", self.field, self.reason) }
    }
}

/// Decodes base64 (padding optional): the standard alphabet, and with `url_safe` also the
/// URL-safe one (`-`, `_`), as protobuf JSON reads `bytes`. None for anything else.
pub(crate) fn decode_base64(s: &str, url_safe: bool) -> Option<Vec<u8>> {
    let digit = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'-' if url_safe => 62,
            b'_' if url_safe => 63,
            _ => return None,
        } as u32)
    };
    let data = s.trim_end_matches('=').as_bytes();
    if data.len() % 4 == 1 || s.len() - data.len() > 2 {
        return None;
    }
    let mut out = Vec::with_capacity(data.len() * 3 / 4);
    for chunk in data.chunks(4) {
        let mut acc = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            acc |= digit(*c)? << (18 - 6 * i);
        }
        out.extend_from_slice(&acc.to_be_bytes()[1..chunk.len()]);
    }
    Some(out)
}

/// A 64-bit float with a total order, so specs that carry a double (fault percentages,
/// mirror percentages) can live in dataflow collections, which need `Ord + Hash`.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(transparent)]
pub struct F64(pub f64);

impl PartialEq for F64 {
    fn eq(&self, other: &Self) -> bool {
        self.0.total_cmp(&other.0) == Ordering::Equal
    }
}
impl Eq for F64 {}
impl PartialOrd for F64 {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for F64 {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}
impl std::hash::Hash for F64 {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.to_bits().hash(state)
    }
}
