//! Which namespaces the Kubernetes source reads Secrets from.
//!
//! meshflow needs a Secret only as a gateway certificate (`credentialName`), and a gateway
//! proxy is served only the Secrets of its own namespace (see
//! [`crate::translate::views::class_secret`]: the `SecretRef` resolves in the Gateway object's
//! namespace and is served only when that is the proxy's namespace too). So the source
//! watches Secrets in the namespaces where gateways live, never cluster-wide, and this handle
//! says which ones: every origin of interest (the Gateway watch for the namespaces holding
//! Gateway objects, the xDS class registry for the namespaces of connected gateway proxies)
//! adds and removes namespaces, and interest is counted, so a namespace stays watched until
//! the last origin lets go of it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use tokio::sync::watch;

/// A shared count of interest per namespace; cloning shares it. The Kubernetes source
/// [`subscribe`](SecretInterest::subscribe)s and keeps one Secret watch per namespace with a
/// count above zero.
#[derive(Clone, Debug)]
pub struct SecretInterest {
    counts: Arc<watch::Sender<BTreeMap<String, usize>>>,
}

impl Default for SecretInterest {
    fn default() -> SecretInterest {
        SecretInterest { counts: Arc::new(watch::Sender::new(BTreeMap::new())) }
    }
}

impl SecretInterest {
    pub fn new() -> SecretInterest {
        SecretInterest::default()
    }

    /// One more origin wants the Secrets of `namespace`.
    pub fn add(&self, namespace: &str) {
        self.counts.send_modify(|counts| *counts.entry(namespace.to_string()).or_default() += 1);
    }

    /// One origin no longer wants the Secrets of `namespace`; at zero the namespace is no
    /// longer watched. A removal without a matching add is ignored.
    pub fn remove(&self, namespace: &str) {
        self.counts.send_if_modified(|counts| {
            let Some(count) = counts.get_mut(namespace) else { return false };
            *count -= 1;
            if *count == 0 {
                counts.remove(namespace);
            }
            true
        });
    }

    /// The namespaces with interest now.
    pub fn namespaces(&self) -> BTreeSet<String> {
        self.counts.borrow().keys().cloned().collect()
    }

    /// Changes to the counts (only the namespaces with a count above zero are present).
    pub fn subscribe(&self) -> watch::Receiver<BTreeMap<String, usize>> {
        self.counts.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_stays_wanted_until_every_origin_removed_it() {
        let interest = SecretInterest::new();
        let mut rx = interest.subscribe();
        interest.add("istio-system");
        interest.add("istio-system");
        interest.clone().add("edge");
        assert!(rx.has_changed().unwrap());
        assert_eq!(interest.namespaces(), BTreeSet::from(["edge".to_string(), "istio-system".to_string()]));
        interest.remove("istio-system");
        assert!(interest.namespaces().contains("istio-system"), "one origin still wants it");
        interest.remove("istio-system");
        assert_eq!(interest.namespaces(), BTreeSet::from(["edge".to_string()]));
        rx.borrow_and_update();
        interest.remove("never-added");
        assert!(!rx.has_changed().unwrap(), "an unmatched removal changes nothing");
        assert_eq!(*rx.borrow(), BTreeMap::from([("edge".to_string(), 1)]));
    }
}
