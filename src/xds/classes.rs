//! The classes of connected proxies, fed to the engine as an input collection.
//!
//! Each stream joins the class of its proxy when it opens and leaves it when it closes. The
//! first proxy of a class adds the class to the engine, which then computes the class's
//! resources (a gateway's listeners, route configs and certificates); the last one leaving
//! removes it after a grace period, so a proxy that reconnects (an Envoy restart, a hot
//! restart, a load balancer moving streams) finds its class still computed.
//!
//! A stream whose class is new waits for the engine to have computed it
//! ([`ClassGuard::computed`]) before its first answer, as istiod initializes a proxy before its
//! first push. Otherwise an Envoy that reconnects to a restarted server, holding its class's
//! resources (`virtualInbound`, a gateway's listeners, its locality's assignments), would be
//! told they were removed, and get them back a moment later: traffic fails in between.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::value::Kind as ValueKind;
use tokio::sync::watch;

use crate::engine::{Command, CommandSender};
use crate::model::k8s::Labels;
use crate::model::proxy::{ClassLabels, ProxyClass, ProxyKind, ProxyLocality};
use crate::source::interest::SecretInterest;
use crate::translate::endpoint::{node_locality, pod_locality_label};
use crate::translate::locality::locality_string;

/// How the registry names a locality entry (class ids never start so).
const LOCALITY_PREFIX: &str = "locality:";
use crate::model::{InputEvent, Object};

use super::node::NodeId;

/// Node metadata keys, as Istio's proxies send them.
pub const LABELS_KEY: &str = "LABELS";
pub const NAMESPACE_KEY: &str = "NAMESPACE";

/// The class of a proxy: kind from the node id, namespace from metadata `NAMESPACE` (else the
/// node id), labels from metadata `LABELS` (else, for gateways, its pod's labels).
pub fn proxy_class(node: &Node, id: &NodeId) -> Result<ProxyClass, String> {
    let fields = node.metadata.as_ref().map(|m| &m.fields);
    let string = |key: &str| -> Result<Option<String>, String> {
        match fields.and_then(|f| f.get(key)).and_then(|v| v.kind.as_ref()) {
            None | Some(ValueKind::NullValue(_)) => Ok(None),
            Some(ValueKind::StringValue(s)) => Ok(Some(s.clone())),
            Some(_) => Err(format!("node metadata {key} must be a string")),
        }
    };
    let namespace = string(NAMESPACE_KEY)?.filter(|s| !s.is_empty()).unwrap_or_else(|| id.namespace.clone());
    let labels = match fields.and_then(|f| f.get(LABELS_KEY)).and_then(|v| v.kind.as_ref()) {
        None | Some(ValueKind::NullValue(_)) => None,
        Some(ValueKind::StructValue(s)) => {
            let mut labels = BTreeMap::new();
            for (k, v) in &s.fields {
                match &v.kind {
                    Some(ValueKind::StringValue(value)) => {
                        labels.insert(k.clone(), value.clone());
                    }
                    _ => return Err(format!("node metadata {LABELS_KEY}.{k} must be a string")),
                }
            }
            Some(Labels::from(labels))
        }
        Some(_) => return Err(format!("node metadata {LABELS_KEY} must be a map of strings")),
    };
    Ok(ProxyClass::of_proxy(id.proxy_type, &namespace, &id.pod, labels).at_ip(&id.ip.to_string()))
}

/// The locality of a proxy, as istiod's `setTopologyLabels` finds it: from its labels (node
/// metadata `LABELS`: the topology region/zone/subzone labels, else `topology.istio.io/locality`),
/// else from its Pod's as the registry knows it (`pod`: the Pod of its node id, its own
/// locality label else its Node's topology labels; istiod augments the proxy's labels from the
/// registry), else from `Node.locality`; with the labels it sent (for `failoverPriority`). A
/// proxyless gRPC client's is its `Node.locality` (its labels are not read: istiod serves it
/// the same EDS as a sidecar, relative to its locality).
pub fn proxy_locality(node: &Node, class: &ProxyClass, pod: Option<String>) -> ProxyLocality {
    let normalized = |l: String| {
        let mut parts = l.splitn(3, '/');
        let mut next = || parts.next().unwrap_or_default();
        locality_string(next(), next(), next())
    };
    let given = match &class.labels {
        ClassLabels::Given(labels) => labels.clone(),
        _ => Labels::new(),
    };
    let from_labels = match &class.labels {
        ClassLabels::Given(labels) => {
            let topology = node_locality(labels);
            if topology.is_empty() { pod_locality_label(labels).map(normalized) } else { Some(normalized(topology)) }
        }
        _ => None,
    };
    let of_pod = || pod.filter(|_| class.kind != ProxyKind::Proxyless).map(normalized);
    let locality = from_labels.or_else(of_pod).unwrap_or_else(|| {
        let l = node.locality.clone().unwrap_or_default();
        locality_string(&l.region, &l.zone, &l.sub_zone)
    });
    ProxyLocality { namespace: class.namespace.clone(), locality, labels: given }
}

struct Entry {
    /// The input the first proxy added: its class, or its (namespace, locality).
    object: Object,
    streams: usize,
    /// Bumped whenever the count drops to zero, so a stale removal timer does nothing.
    generation: u64,
    /// `true` once the engine's output for the entry's addition is in the cache.
    computed: watch::Receiver<bool>,
}

pub struct ClassRegistry {
    engine: CommandSender,
    grace: Duration,
    classes: Mutex<HashMap<String, Entry>>,
    /// Told the namespace of each gateway (router) class while the engine has it: a gateway
    /// proxy is served the Secrets of its own namespace, so the Kubernetes source watches them.
    secret_interest: Option<SecretInterest>,
}

/// A stream's membership in its class; leaving happens on drop.
pub struct ClassGuard {
    registry: Arc<ClassRegistry>,
    id: String,
    /// Set while the class was not yet computed when the stream joined.
    pending: Option<watch::Receiver<bool>>,
}

impl ClassGuard {
    /// Resolves once the engine has computed the class (at once if it already had when the
    /// stream joined), or once the engine is gone.
    pub async fn computed(&mut self) {
        if let Some(pending) = &mut self.pending {
            let _ = pending.wait_for(|computed| *computed).await;
            self.pending = None;
        }
    }
}

impl Drop for ClassGuard {
    fn drop(&mut self) {
        self.registry.leave(&self.id);
    }
}

impl ClassRegistry {
    pub fn new(engine: CommandSender, grace: Duration) -> Arc<ClassRegistry> {
        ClassRegistry::with_secret_interest(engine, grace, None)
    }

    /// [`ClassRegistry::new`] that also adds the namespace of a gateway class to `interest`
    /// when the class is added to the engine, and removes it when the class is removed.
    pub fn with_secret_interest(
        engine: CommandSender,
        grace: Duration,
        interest: Option<SecretInterest>,
    ) -> Arc<ClassRegistry> {
        Arc::new(ClassRegistry { engine, grace, classes: Mutex::default(), secret_interest: interest })
    }

    /// The interest handle and namespace a class entry counts for: gateway classes only.
    fn secret_namespace<'a>(&'a self, object: &'a Object) -> Option<(&'a SecretInterest, &'a str)> {
        match (&self.secret_interest, object) {
            (Some(interest), Object::ProxyClass(c)) if c.kind == ProxyKind::Router => Some((interest, &c.namespace)),
            _ => None,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.classes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers one more proxy of `class`; the first one adds the class to the engine.
    pub fn join(self: &Arc<Self>, class: ProxyClass) -> ClassGuard {
        self.join_object(class.id(), Object::ProxyClass(class))
    }

    /// Registers one more proxy in `locality` (of its namespace); the first one adds it to the
    /// engine, which computes the assignments that depend on the proxy's locality for it.
    pub fn join_locality(self: &Arc<Self>, locality: ProxyLocality) -> ClassGuard {
        let object = Object::ProxyLocality(locality);
        let key = object.key();
        self.join_object(format!("{LOCALITY_PREFIX}{}/{}", key.namespace, key.name), object)
    }

    fn join_object(self: &Arc<Self>, id: String, object: Object) -> ClassGuard {
        let mut classes = self.lock();
        let entry = classes.entry(id.clone()).or_insert_with(|| {
            tracing::info!(class = %id, "new proxy class");
            let (done, computed) = watch::channel(false);
            let _ = self.engine.send(Command::Events(vec![InputEvent::apply(object.clone())]));
            let _ = self.engine.send(Command::Then(Box::new(move || {
                done.send_replace(true);
            })));
            if let Some((interest, namespace)) = self.secret_namespace(&object) {
                interest.add(namespace);
            }
            Entry { object, streams: 0, generation: 0, computed }
        });
        entry.streams += 1;
        let pending = (!*entry.computed.borrow()).then(|| entry.computed.clone());
        ClassGuard { registry: self.clone(), id, pending }
    }

    fn leave(self: &Arc<Self>, id: &str) {
        let mut classes = self.lock();
        let Some(entry) = classes.get_mut(id) else { return };
        entry.streams = entry.streams.saturating_sub(1);
        if entry.streams > 0 {
            return;
        }
        entry.generation += 1;
        let generation = entry.generation;
        drop(classes);
        let registry = self.clone();
        let id = id.to_string();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    tokio::time::sleep(registry.grace).await;
                    registry.remove_if_unused(&id, generation);
                });
            }
            Err(_) => registry.remove_if_unused(&id, generation),
        }
    }

    fn remove_if_unused(&self, id: &str, generation: u64) {
        let mut classes = self.lock();
        let unused = classes.get(id).is_some_and(|e| e.streams == 0 && e.generation == generation);
        if unused && let Some(entry) = classes.remove(id) {
            tracing::info!(class = %id, "proxy class left: no proxy of it is connected");
            let key = entry.object.key();
            let _ = self.engine.send(Command::Events(vec![InputEvent::delete(key)]));
            if let Some((interest, namespace)) = self.secret_namespace(&entry.object) {
                interest.remove(namespace);
            }
        }
    }

    /// The classes (and `locality:<namespace>/<locality>` entries) with the number of streams
    /// of each, for `/debug/classes`.
    pub fn classes(&self) -> Vec<(String, usize)> {
        let mut v: Vec<(String, usize)> = self.lock().iter().map(|(id, e)| (id.clone(), e.streams)).collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::{Struct, Value};

    fn node(metadata: &[(&str, Value)]) -> Node {
        Node {
            id: "router~10.0.0.1~gw-1.istio-system~istio-system.svc.cluster.local".into(),
            metadata: Some(Struct { fields: metadata.iter().map(|(k, v)| (k.to_string(), v.clone())).collect() }),
            ..Default::default()
        }
    }

    fn string(s: &str) -> Value {
        Value { kind: Some(ValueKind::StringValue(s.into())) }
    }

    #[test]
    fn class_from_node_metadata_labels_else_the_pod_of_the_node_id() {
        let labels = Value {
            kind: Some(ValueKind::StructValue(Struct {
                fields: [("istio".to_string(), string("ingressgateway"))].into_iter().collect(),
            })),
        };
        let n = node(&[(LABELS_KEY, labels)]);
        let id = NodeId::parse(&n.id).unwrap();
        assert_eq!(proxy_class(&n, &id).unwrap().id(), "router/istio-system/istio=ingressgateway");
        let n = node(&[(NAMESPACE_KEY, string("edge"))]);
        // Known by its pod, the class carries the node id's IP: the Pod at that IP is the
        // fallback when the named Pod does not exist.
        assert_eq!(proxy_class(&n, &id).unwrap().id(), "router/edge/pod:gw-1@10.0.0.1");
        let n = node(&[(LABELS_KEY, string("istio=x"))]);
        assert!(proxy_class(&n, &id).unwrap_err().contains("LABELS must be a map"));
    }

    #[test]
    fn a_proxys_locality_comes_from_its_topology_labels_else_from_node_locality() {
        use envoy_types::pb::envoy::config::core::v3::Locality;
        let labels = |pairs: &[(&str, &str)]| Value {
            kind: Some(ValueKind::StructValue(Struct {
                fields: pairs.iter().map(|(k, v)| (k.to_string(), string(v))).collect(),
            })),
        };
        let mut n = node(&[]);
        n.locality = Some(Locality { region: "r1".into(), zone: "z1".into(), sub_zone: String::new() });
        let id = NodeId::parse(&n.id).unwrap();
        let of = |n: &Node| proxy_locality(n, &proxy_class(n, &id).unwrap(), None);
        assert_eq!(
            of(&n),
            ProxyLocality { namespace: "istio-system".into(), locality: "r1/z1".into(), labels: Labels::new() }
        );
        // istiod's localityFromProxyLabels: the topology labels win over what Envoy reports.
        let with = |pairs: &[(&str, &str)]| {
            let mut m = node(&[(LABELS_KEY, labels(pairs))]);
            m.locality = n.locality.clone();
            m
        };
        let topo = with(&[("topology.kubernetes.io/region", "r2"), ("topology.kubernetes.io/zone", "z9")]);
        assert_eq!(of(&topo).locality, "r2/z9");
        assert_eq!(of(&with(&[("topology.istio.io/locality", "r3.z3.s3")])).locality, "r3/z3/s3");
        assert_eq!(of(&with(&[("app", "x")])).locality, "r1/z1");
        // The labels it sent go along (failoverPriority compares them).
        assert_eq!(of(&with(&[("app", "x")])).labels, Labels::from([("app".to_string(), "x".to_string())]));
        assert_eq!(of(&node(&[])).locality, "", "no locality at all");
        // A proxyless gRPC client: its Node.locality, none of its labels.
        let mut grpc = with(&[("app", "x"), ("topology.kubernetes.io/region", "r2")]);
        grpc.id = "proxyless~10.0.0.2~app-1.shop~shop.svc.cluster.local".into();
        let grpc_id = NodeId::parse(&grpc.id).unwrap();
        let l = proxy_locality(&grpc, &proxy_class(&grpc, &grpc_id).unwrap(), Some("r4/z4/".into()));
        assert_eq!(l, ProxyLocality { namespace: "shop".into(), locality: "r1/z1".into(), labels: Labels::new() });
        // Its Pod's locality (the registry's) before what Envoy reports; the topology labels
        // it sent before both.
        let of_pod = |n: &Node, pod: &str| proxy_locality(n, &proxy_class(n, &id).unwrap(), Some(pod.into()));
        assert_eq!(of_pod(&with(&[("app", "x")]), "r4/z4/").locality, "r4/z4");
        assert_eq!(of_pod(&n, "r4/z4/s4").locality, "r4/z4/s4");
        assert_eq!(of_pod(&topo, "r4/z4/s4").locality, "r2/z9");
    }

    #[test]
    fn the_first_proxy_adds_its_class_and_the_last_one_leaving_removes_it() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let registry = ClassRegistry::new(CommandSender::new(tx, None), Duration::ZERO);
        let class = |pod: &str| ProxyClass::of_proxy(crate::model::proxy::ProxyKind::Router, "ns", pod, None);
        let a = registry.join(class("gw-1"));
        let b = registry.join(class("gw-1"));
        let c = registry.join(class("gw-2"));
        let added: Vec<_> = rx.try_iter().filter(|c| matches!(c, Command::Events(_))).collect();
        assert_eq!(added.len(), 2, "one add per class: {added:?}");
        assert_eq!(registry.classes(), [("router/ns/pod:gw-1".to_string(), 2), ("router/ns/pod:gw-2".to_string(), 1)]);
        drop(a);
        assert!(rx.try_recv().is_err(), "another proxy of the class is still connected");
        drop(b);
        match rx.try_recv() {
            Ok(Command::Events(events)) => {
                assert_eq!(events.len(), 1);
                assert!(events[0].object.is_none());
                assert_eq!(events[0].key.name, "router/ns/pod:gw-1");
            }
            other => panic!("expected the class's removal, got {other:?}"),
        }
        drop(c);
        assert_eq!(rx.try_iter().count(), 1);
        assert!(registry.classes().is_empty());
    }

    #[tokio::test]
    async fn a_stream_of_a_new_class_waits_until_the_engine_has_computed_it() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let registry = ClassRegistry::new(CommandSender::new(tx, None), Duration::from_secs(60));
        let class = |pod: &str| ProxyClass::of_proxy(ProxyKind::Router, "ns", pod, None);
        let (mut first, mut second) = (registry.join(class("gw-1")), registry.join(class("gw-1")));
        let short = Duration::from_millis(50);
        assert!(tokio::time::timeout(short, first.computed()).await.is_err(), "the engine has not run yet");
        // The engine takes the addition, then runs what was sent after it.
        let commands: Vec<_> = rx.try_iter().collect();
        assert!(matches!(&commands[..], [Command::Events(e), Command::Then(_)] if e.len() == 1), "{commands:?}");
        assert!(tokio::time::timeout(short, second.computed()).await.is_err(), "a wait that gave up is resumable");
        for command in commands {
            if let Command::Then(callback) = command {
                callback();
            }
        }
        tokio::time::timeout(short, first.computed()).await.expect("computed");
        tokio::time::timeout(short, second.computed()).await.expect("computed, for every proxy of the class");
        assert!(registry.join(class("gw-1")).pending.is_none(), "a later proxy of a computed class does not wait");
        // An engine that is gone (it drops what it did not run) keeps no stream waiting.
        let mut orphan = registry.join(class("gw-2"));
        drop(rx.try_iter().collect::<Vec<_>>());
        tokio::time::timeout(short, orphan.computed()).await.expect("no engine, no wait");
    }

    #[test]
    fn a_gateway_class_wants_the_secrets_of_its_namespace_while_the_engine_has_it() {
        let (tx, _rx) = crossbeam_channel::unbounded();
        let interest = SecretInterest::new();
        let registry =
            ClassRegistry::with_secret_interest(CommandSender::new(tx, None), Duration::ZERO, Some(interest.clone()));
        let class = |kind, ns: &str, pod: &str| ProxyClass::of_proxy(kind, ns, pod, None);
        let sidecar = registry.join(class(ProxyKind::Sidecar, "default", "app-1"));
        assert!(interest.namespaces().is_empty(), "a sidecar reads no gateway Secrets");
        let a = registry.join(class(ProxyKind::Router, "istio-system", "gw-1"));
        let b = registry.join(class(ProxyKind::Router, "istio-system", "gw-1"));
        let c = registry.join(class(ProxyKind::Router, "istio-system", "gw-2"));
        assert_eq!(*interest.subscribe().borrow(), BTreeMap::from([("istio-system".to_string(), 2)]), "one per class");
        drop((a, b));
        assert_eq!(*interest.subscribe().borrow(), BTreeMap::from([("istio-system".to_string(), 1)]));
        drop(c);
        assert!(interest.namespaces().is_empty(), "the last gateway class of the namespace left");
        drop(sidecar);
    }
}
