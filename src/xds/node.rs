//! Proxy identity: Istio's node id form `<type>~<ip>~<pod>.<namespace>~<namespace>.svc.<domain>`.

use std::fmt;
use std::net::IpAddr;

/// Node metadata key carrying the address a proxy's listeners bind to when it runs without
/// traffic interception (meshflow's own key; Istio has no equivalent).
pub const BIND_ADDRESS_KEY: &str = "MESHFLOW_BIND_ADDRESS";

/// The proxy kind of a node id (`sidecar`, `router`): the model's [`ProxyKind`], under the
/// name Istio gives it.
pub use crate::model::proxy::ProxyKind as ProxyType;

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
                "node id {id:?} is not of the form <sidecar|router>~<ip>~<pod>.<namespace>~<namespace>.svc.cluster.local"
            ));
        };
        let proxy_type = match *ty {
            "sidecar" => ProxyType::Sidecar,
            "router" => ProxyType::Router,
            other => return Err(format!("node id {id:?}: proxy type {other:?} is neither sidecar nor router")),
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
    fn malformed_node_ids_are_rejected_with_the_reason() {
        assert!(NodeId::parse("envoy-1").unwrap_err().contains("not of the form"));
        assert!(
            NodeId::parse("gateway~1.2.3.4~a.b~b.svc.cluster.local")
                .unwrap_err()
                .contains("neither sidecar nor router")
        );
        assert!(NodeId::parse("sidecar~nope~a.b~b.svc.cluster.local").unwrap_err().contains("not an IP"));
        assert!(NodeId::parse("sidecar~1.2.3.4~nodots~b.svc.cluster.local").unwrap_err().contains("<pod>.<namespace>"));
    }
}
