//! Connected proxies as an input: what a proxy's configuration depends on, its **class**.
//!
//! istiod recomputes configuration per proxy. meshflow groups the connected proxies into
//! classes (what their output depends on) and makes the set of classes an input collection of
//! the dataflow: class-dependent resources are computed once per class that exists, and a
//! proxy joining an existing class costs nothing.
//!
//! What a class holds: the proxy kind, its namespace and, for gateways (routers) and sidecars,
//! its labels: Gateway `selector`s match a router's, VirtualService `sourceLabels` a
//! sidecar's. Proxyless gRPC clients are served the same whatever their labels: their classes
//! leave them out. The replicas of a deployment carry the same labels (node metadata `LABELS`),
//! so they share a class; a proxy known only by its pod is a class of its own, whose labels
//! follow the Pod.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::k8s::Labels;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ProxyKind {
    Sidecar,
    Router,
    /// A proxyless gRPC application (istiod's `GENERATOR=grpc` node metadata, or a node id of
    /// type `proxyless`): served API listeners, route configs and EDS clusters per service.
    Proxyless,
}

impl ProxyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyKind::Sidecar => "sidecar",
            ProxyKind::Router => "router",
            ProxyKind::Proxyless => "proxyless",
        }
    }
}

/// Where a class's labels come from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ClassLabels {
    /// Not part of the class (proxyless gRPC clients).
    Ignored,
    /// The proxy said (node metadata `LABELS`).
    Given(Labels),
    /// The labels of the Pod `pod` in the class's namespace, as the cluster has them (the node
    /// id names the pod; its labels follow the Pod as it changes); when no such Pod exists, the
    /// labels of the Pod whose IP is `ip` (the IP of the node id `<type>~<ip>~…`), as istiod's
    /// `PodCache.getPodByProxy` falls back (see [`crate::translate::views::pod_by_ip`]).
    OfPod { pod: String, ip: Option<String> },
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProxyClass {
    pub kind: ProxyKind,
    pub namespace: String,
    pub labels: ClassLabels,
}

impl ProxyClass {
    /// The class of a proxy from what it tells about itself: its kind and namespace (node id,
    /// or node metadata `NAMESPACE`), its labels (node metadata `LABELS`), else its pod.
    pub fn of_proxy(kind: ProxyKind, namespace: &str, pod: &str, labels: Option<Labels>) -> ProxyClass {
        let labels = match (kind, labels) {
            (ProxyKind::Proxyless, _) => ClassLabels::Ignored,
            (ProxyKind::Router | ProxyKind::Sidecar, Some(l)) => ClassLabels::Given(l),
            (ProxyKind::Router | ProxyKind::Sidecar, None) => ClassLabels::OfPod { pod: pod.to_string(), ip: None },
        };
        ProxyClass { kind, namespace: namespace.to_string(), labels }
    }

    /// The same class for a proxy at `ip` (its node id's IP): a class known by its pod falls
    /// back to the Pod with that IP when the named Pod does not exist.
    pub fn at_ip(mut self, ip: &str) -> ProxyClass {
        if let ClassLabels::OfPod { ip: at, .. } = &mut self.labels {
            *at = Some(ip.to_string());
        }
        self
    }

    /// A stable, readable identity: `<kind>/<ns>/<k>=<v>,…`, `<kind>/<ns>/pod:<name>` (with
    /// `@<ip>` when the proxy's IP is known), `proxyless/<ns>`. Class-scoped resources are keyed by it; [`namespace_of_id`] reads the
    /// namespace back.
    pub fn id(&self) -> String {
        let mut id = format!("{}/{}", self.kind.as_str(), self.namespace);
        match &self.labels {
            ClassLabels::Ignored => {}
            ClassLabels::Given(labels) => {
                id.push('/');
                id.push_str(&labels.id());
            }
            ClassLabels::OfPod { pod, ip } => {
                id.push_str("/pod:");
                id.push_str(pod);
                if let Some(ip) = ip {
                    id.push('@');
                    id.push_str(ip);
                }
            }
        }
        id
    }
}

/// The namespace, locality and labels of connected proxies: what the assignments of clusters
/// whose load balancing depends on the proxy's locality are computed for
/// ([`crate::translate::locality`]; the labels only for `failoverPriority`). Kept apart from
/// [`ProxyClass`], so that a class's resources are not computed once per locality, nor
/// located assignments once per class.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProxyLocality {
    pub namespace: String,
    /// `region/zone/subzone` as [`crate::translate::locality::locality_string`] writes it; ""
    /// for a proxy that has none.
    pub locality: String,
    /// The labels the proxy sent (node metadata `LABELS`; none for a proxy known by its pod).
    pub labels: Labels,
}

/// The namespace a class id ([`ProxyClass::id`]) names: its second segment (a namespace never
/// contains `/`).
pub fn namespace_of_id(id: &str) -> Option<&str> {
    id.split('/').nth(1)
}

impl fmt::Display for ProxyClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxies_are_told_apart_by_labels_and_proxyless_ones_by_namespace_only() {
        let l = |v: &str| Labels::from([("istio".to_string(), v.to_string())]);
        let a = ProxyClass::of_proxy(ProxyKind::Sidecar, "default", "a-1", Some(l("x")));
        let b = ProxyClass::of_proxy(ProxyKind::Sidecar, "default", "b-2", Some(l("x")));
        assert_eq!(a, b, "replicas with the same labels share a class");
        assert_eq!(a.id(), "sidecar/default/istio=x");
        let c = ProxyClass::of_proxy(ProxyKind::Sidecar, "default", "b-2", None);
        assert_eq!(c.id(), "sidecar/default/pod:b-2");
        assert_eq!(namespace_of_id(&c.id()), Some("default"));
        let g1 = ProxyClass::of_proxy(ProxyKind::Proxyless, "shop", "a", Some(l("x")));
        assert_eq!(g1, ProxyClass::of_proxy(ProxyKind::Proxyless, "shop", "b", None));
        assert_eq!(g1.id(), "proxyless/shop");
        let g = ProxyClass::of_proxy(ProxyKind::Router, "istio-system", "gw-1", Some(l("ingressgateway")));
        assert_eq!(g.id(), "router/istio-system/istio=ingressgateway");
        let p = ProxyClass::of_proxy(ProxyKind::Router, "istio-system", "gw-1", None);
        assert_eq!(p.id(), "router/istio-system/pod:gw-1");
        assert_ne!(g.id(), ProxyClass::of_proxy(ProxyKind::Router, "istio-system", "gw-2", Some(l("egress"))).id());
        // A proxy known by its pod carries its IP (the fallback when the pod does not exist);
        // one with labels does not need it.
        assert_eq!(p.clone().at_ip("10.0.0.7").id(), "router/istio-system/pod:gw-1@10.0.0.7");
        assert_eq!(namespace_of_id(&p.at_ip("10.0.0.7").id()), Some("istio-system"));
        assert_eq!(g.clone().at_ip("10.0.0.7"), g);
    }
}
