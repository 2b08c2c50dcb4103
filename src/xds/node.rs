//! Proxy identity: Istio's node id form `<type>~<ip>~<pod>.<namespace>~<namespace>.svc.<domain>`.

use std::fmt;
use std::net::IpAddr;

/// Node metadata key carrying the address a proxy's listeners bind to when it runs without
/// traffic interception (meshflow's own key; Istio has no equivalent).
pub const BIND_ADDRESS_KEY: &str = "MESHFLOW_BIND_ADDRESS";

/// The proxy kind of a node id (`sidecar`, `router`): the model's [`ProxyKind`], under the
/// name Istio gives it.
pub use crate::model::proxy::ProxyKind as ProxyType;

/// Node metadata key naming the config generator a client wants; istiod serves proxyless gRPC
/// config to `GENERATOR: grpc` (its `NodeMetadata.Generator`, `Proxy.IsProxylessGrpc`).
pub const GENERATOR_KEY: &str = "GENERATOR";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeId {
    pub proxy_type: ProxyType,
    pub ip: IpAddr,
    pub pod: String,
    pub namespace: String,
    pub domain: String,
}

impl NodeId {
    pub fn parse(id: &str) -> Result<NodeId, String> {
        let parts: Vec<&str> = id.split('~').collect();
        let [ty, ip, workload, domain] = parts.as_slice() else {
            return Err(format!(
                "node id {id:?} is not of the form <sidecar|router|proxyless>~<ip>~<pod>.<namespace>~<namespace>.svc.cluster.local"
            ));
        };
        let proxy_type = match *ty {
            "sidecar" => ProxyType::Sidecar,
            "router" => ProxyType::Router,
            "proxyless" => ProxyType::Proxyless,
            other => {
                return Err(format!("node id {id:?}: proxy type {other:?} is not one of sidecar, router, proxyless"));
            }
        };
        let ip = ip.parse().map_err(|_| format!("node id {id:?}: {ip:?} is not an IP address"))?;
        let Some((pod, namespace)) = workload.rsplit_once('.').filter(|(p, n)| !p.is_empty() && !n.is_empty()) else {
            return Err(format!("node id {id:?}: {workload:?} is not <pod>.<namespace>"));
        };
        Ok(NodeId {
            proxy_type,
            ip,
            pod: pod.to_string(),
            namespace: namespace.to_string(),
            domain: domain.to_string(),
        })
    }
}

/// The node's identity, with its kind as istiod decides it: node metadata `GENERATOR: grpc`
/// makes any node id a proxyless gRPC client (gRPC's bootstrap, as istio-agent writes it, says
/// `sidecar~…` in the id and `GENERATOR: grpc` in the metadata).
pub fn node_identity(node: &envoy_types::pb::envoy::config::core::v3::Node) -> Result<NodeId, String> {
    use envoy_types::pb::google::protobuf::value::Kind;
    let mut id = NodeId::parse(&node.id)?;
    match node.metadata.as_ref().and_then(|m| m.fields.get(GENERATOR_KEY)).and_then(|v| v.kind.as_ref()) {
        None | Some(Kind::NullValue(_)) => {}
        Some(Kind::StringValue(g)) if g == "grpc" => id.proxy_type = ProxyType::Proxyless,
        // istiod has other generators (`api`, `event`…); meshflow serves Envoy's config to them.
        Some(Kind::StringValue(_)) => {}
        Some(_) => return Err(format!("node {:?}: metadata {GENERATOR_KEY} must be a string", node.id)),
    }
    Ok(id)
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ty = self.proxy_type.as_str();
        write!(f, "{ty}~{}~{}.{}~{}", self.ip, self.pod, self.namespace, self.domain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_sidecar_node_id_round_trips() {
        let id = "sidecar~10.1.2.3~reviews-v1-abc.default~default.svc.cluster.local";
        let node = NodeId::parse(id).unwrap();
        assert_eq!(node.proxy_type, ProxyType::Sidecar);
        assert_eq!(node.pod, "reviews-v1-abc");
        assert_eq!(node.namespace, "default");
        assert_eq!(node.to_string(), id);
    }

    #[test]
    fn generator_grpc_or_a_proxyless_node_id_make_a_proxyless_client() {
        use envoy_types::pb::envoy::config::core::v3::Node;
        use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
        let node = |id: &str, generator: Option<Kind>| Node {
            id: id.into(),
            metadata: generator.map(|g| Struct {
                fields: [(GENERATOR_KEY.to_string(), Value { kind: Some(g) })].into_iter().collect(),
            }),
            ..Default::default()
        };
        let sidecar = "sidecar~10.1.2.3~app-1.default~default.svc.cluster.local";
        let grpc = Some(Kind::StringValue("grpc".into()));
        assert_eq!(node_identity(&node(sidecar, None)).unwrap().proxy_type, ProxyType::Sidecar);
        assert_eq!(node_identity(&node(sidecar, grpc)).unwrap().proxy_type, ProxyType::Proxyless);
        let other = Some(Kind::StringValue("api".into()));
        assert_eq!(node_identity(&node(sidecar, other)).unwrap().proxy_type, ProxyType::Sidecar);
        let proxyless = "proxyless~10.1.2.3~app-1.default~default.svc.cluster.local";
        let id = node_identity(&node(proxyless, None)).unwrap();
        assert_eq!((id.proxy_type, id.to_string().as_str()), (ProxyType::Proxyless, proxyless));
        let err = node_identity(&node(sidecar, Some(Kind::NumberValue(1.0)))).unwrap_err();
        assert!(err.contains("GENERATOR must be a string"), "{err}");
    }

    #[test]
    fn malformed_node_ids_are_rejected_with_the_reason() {
        assert!(NodeId::parse("envoy-1").unwrap_err().contains("not of the form"));
        assert!(
            NodeId::parse("gateway~1.2.3.4~a.b~b.svc.cluster.local")
                .unwrap_err()
                .contains("not one of sidecar, router, proxyless")
        );
        assert!(NodeId::parse("sidecar~nope~a.b~b.svc.cluster.local").unwrap_err().contains("not an IP"));
        assert!(NodeId::parse("sidecar~1.2.3.4~nodots~b.svc.cluster.local").unwrap_err().contains("<pod>.<namespace>"));
    }
}
