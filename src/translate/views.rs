//! What depends on the proxy that asks: which Gateways select a router class, and the Secrets
//! its listeners name. Pure, shared by the dataflow and the reference translator.

use super::Diagnostic;
use super::gateway::SecretRef;
use super::secret::sds_secret;
use crate::model::istio::Gateway;
use crate::model::k8s::Labels;
use crate::model::{Kind, ObjectKey, Secret};

/// The pair a Gateway is indexed by to meet proxy classes: its first selector pair. An empty
/// selector applies to every gateway proxy (istiod's `mergeGateways`): it is keyed by the empty
/// pair, which every class carries too (see [`class_index_keys`]).
pub fn gateway_index_key(gw: &Gateway) -> (String, String) {
    gw.spec.selector.iter().next().map(|(k, v)| (k.clone(), v.clone())).unwrap_or_default()
}

/// The pairs a router class is indexed by: each of its labels, and the empty pair.
pub fn class_index_keys(labels: &Labels) -> Vec<(String, String)> {
    std::iter::once((String::new(), String::new())).chain(labels.iter().map(|(k, v)| (k.clone(), v.clone()))).collect()
}

/// The labels of "the Pod with that IP", for a proxy whose node id names no existing Pod, as
/// istiod's `PodCache.getPodByProxy` picks it among the (live) Pods with the proxy's IP
/// (`candidates`: namespace and labels of each): the only one; of several (host-network
/// Pods), one in the proxy's namespace (`class_namespace`; meshflow takes the least, so the
/// pick does not depend on order); else none.
pub fn pod_by_ip<'a>(class_namespace: &str, candidates: &[(&str, &'a Labels)]) -> Option<&'a Labels> {
    match candidates {
        [] => None,
        [(_, labels)] => Some(*labels),
        _ => candidates.iter().filter(|(ns, _)| *ns == class_namespace).min().map(|(_, l)| *l),
    }
}

/// Whether a Gateway applies to proxies with `labels`: its selector is a subset of them.
pub fn gateway_selects(gw: &Gateway, labels: &Labels) -> bool {
    gw.spec.selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Of the references a class's Gateways make under one SDS name (Gateways of several
/// namespaces may name the same `credentialName`), the one in the class's own namespace, else
/// the first: that is the one served, or refused.
pub fn pick_ref<'a>(class_namespace: &str, refs: &[&'a SecretRef]) -> Option<&'a SecretRef> {
    refs.iter().find(|r| r.namespace == class_namespace).or(refs.first()).copied()
}

/// The SDS resource a class gets for one secret its listeners name: the Secret (`primary`)
/// or, for a CA whose `<name>-cacert` Secret does not exist, the Secret without the suffix
/// (`fallback`), as istiod's SDS server reads them. A proxy only ever gets Secrets of its own
/// namespace: a reference to another namespace is refused and reported. A Secret that does
/// not exist (yet) is reported too; Envoy keeps the listeners that name it warming until it
/// does, as with istiod.
pub fn class_secret(
    class_namespace: &str,
    r: &SecretRef,
    primary: Option<&Secret>,
    fallback: Option<&Secret>,
) -> Result<Vec<u8>, Diagnostic> {
    let key = ObjectKey::new(Kind::Secret, r.namespace.clone(), r.name.clone());
    if r.namespace != class_namespace {
        return Err(Diagnostic {
            object: key,
            field: String::new(),
            message: format!(
                "a gateway proxy in namespace {class_namespace:?} may only read Secrets of its own namespace: {} not served",
                r.sds_name
            ),
        });
    }
    let Some(secret) = primary.or(fallback) else {
        return Err(Diagnostic {
            object: key,
            field: String::new(),
            message: format!("not found: the gateway listeners that name {} wait for it", r.sds_name),
        });
    };
    sds_secret(&r.sds_name, secret).map_err(|e| Diagnostic::field(key, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pod_at_an_ip_is_the_only_one_else_one_of_the_proxys_namespace() {
        let a = Labels::from([("app".to_string(), "a".to_string())]);
        let b = Labels::from([("app".to_string(), "b".to_string())]);
        assert_eq!(pod_by_ip("shop", &[]), None);
        assert_eq!(pod_by_ip("shop", &[("default", &a)]), Some(&a), "the only Pod, whatever its namespace");
        assert_eq!(pod_by_ip("shop", &[("default", &a), ("shop", &b)]), Some(&b));
        assert_eq!(pod_by_ip("shop", &[("shop", &b), ("default", &a)]), Some(&b), "order does not matter");
        assert_eq!(pod_by_ip("other", &[("default", &a), ("shop", &b)]), None);
    }
}
