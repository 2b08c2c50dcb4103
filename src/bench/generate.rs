//! The seeded synthetic cluster: namespaces, nodes with zones, services with 1–3 ports, pods with
//! `app`/`version` labels behind one EndpointSlice per service, VirtualServices (header match +
//! weights), DestinationRules (subsets by `version`), Gateways and ServiceEntries.
//!
//! The cluster is kept as plain generator state ([`World`]); every object is rendered as the
//! Kubernetes/Istio document a user would `kubectl apply` ([`World::docs_of`]) and turned into
//! an [`Object`] by the same parser the sources use, so what the engine is fed, what
//! `--export` writes and what `meshflow serve --config-dir` reads are one thing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

use crate::model::proxy::{ProxyClass, ProxyKind};
use crate::model::{InputEvent, Kind, Object, ObjectKey, ParseOutcome, parse_document};

/// Size of a generated cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Preset {
    pub name: &'static str,
    pub namespaces: usize,
    pub services: usize,
    pub pods: usize,
    pub nodes: usize,
    pub virtual_services: usize,
    pub destination_rules: usize,
    pub gateways: usize,
    pub service_entries: usize,
}

impl Default for Preset {
    fn default() -> Preset {
        Preset::SMALL
    }
}

impl Preset {
    pub const SMALL: Preset = Preset {
        name: "small",
        namespaces: 5,
        services: 100,
        pods: 1_000,
        nodes: 10,
        virtual_services: 20,
        destination_rules: 20,
        gateways: 2,
        service_entries: 5,
    };
    pub const MEDIUM: Preset = Preset {
        name: "medium",
        namespaces: 20,
        services: 1_000,
        pods: 10_000,
        nodes: 100,
        virtual_services: 200,
        destination_rules: 200,
        gateways: 10,
        service_entries: 50,
    };
    pub const LARGE: Preset = Preset {
        name: "large",
        namespaces: 100,
        services: 10_000,
        pods: 100_000,
        nodes: 1_000,
        virtual_services: 2_000,
        destination_rules: 2_000,
        gateways: 50,
        service_entries: 500,
    };

    pub fn by_name(name: &str) -> Option<Preset> {
        [Preset::SMALL, Preset::MEDIUM, Preset::LARGE].into_iter().find(|p| p.name == name)
    }
}

/// Versions pods are labelled with, and the DestinationRule subsets selecting them.
pub const VERSIONS: [&str; 3] = ["v1", "v2", "v3"];
const ZONES: [&str; 3] = ["zone-a", "zone-b", "zone-c"];
/// Service port kinds: (port name, first port number, spread, container port name, container port).
const PORT_KINDS: [(&str, u16, u16, &str, u16); 3] =
    [("http", 8000, 50, "http", 8080), ("grpc-api", 9000, 10, "grpc", 9090), ("tcp-db", 5400, 5, "db", 5432)];

#[derive(Clone, Debug)]
pub struct PodSpec {
    pub name: String,
    pub ip: u32,
    pub node: usize,
    pub version: usize,
    pub ready: bool,
}

#[derive(Clone, Debug)]
pub struct ServiceSpec {
    pub id: usize,
    pub ns: usize,
    pub ports: usize,
    pub pods: Vec<PodSpec>,
    /// Counter for new pod names.
    pub next_pod: usize,
    /// Index into [`World::virtual_services`] / has a DestinationRule.
    pub routed: bool,
    /// Weight of v1 in the VirtualService's default route (the rest goes to v3).
    pub weight: u32,
}

impl ServiceSpec {
    pub fn name(&self) -> String {
        format!("svc-{}", self.id)
    }
}

/// The generator's state: the cluster as it is now.
pub struct World {
    pub preset: Preset,
    pub rng: ChaCha8Rng,
    /// Namespaces that exist (deleted ones are `false`).
    pub namespaces: Vec<bool>,
    pub nodes: usize,
    pub services: BTreeMap<usize, ServiceSpec>,
    /// Gateways and ServiceEntries by (namespace index, id).
    pub gateways: Vec<(usize, usize)>,
    /// Gateways that have a second server, on a port of their own (the gateway-change
    /// scenario adds and removes it), by Gateway id.
    pub gateway_extra: BTreeSet<usize>,
    pub service_entries: Vec<(usize, usize)>,
    next_service: usize,
    next_ip: u32,
}

pub fn ns_name(ns: usize) -> String {
    format!("ns-{ns}")
}

/// `10.a.b.c` of the low three bytes of `ip`. (Written by hand: `format!` was a fifth of the
/// generator's thread at 50,000 steps a second, every slice of a step formatting each of its
/// endpoints' addresses.)
fn ip_string(ip: u32) -> String {
    let mut s = String::with_capacity(15);
    s.push_str("10");
    for byte in [(ip >> 16) as u8, (ip >> 8) as u8, ip as u8] {
        s.push('.');
        if byte >= 100 {
            s.push(char::from(b'0' + byte / 100));
        }
        if byte >= 10 {
            s.push(char::from(b'0' + byte / 10 % 10));
        }
        s.push(char::from(b'0' + byte % 10));
    }
    s
}

/// Turns one generated document into its object, through the parser every source uses.
pub fn to_object(doc: Value) -> Object {
    let what = format!("{}", doc.get("kind").unwrap_or(&Value::Null));
    match parse_document(doc, "default").pop() {
        Some(ParseOutcome::Object(o)) => o,
        // The generator's documents are fixed shapes; a rejection is a bug in this file.
        other => panic!("the bench generator produced an invalid {what}: {other:?}"),
    }
}

impl World {
    pub fn new(preset: Preset, seed: u64) -> World {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut world = World {
            preset,
            namespaces: vec![true; preset.namespaces],
            nodes: preset.nodes,
            services: BTreeMap::new(),
            gateways: Vec::new(),
            gateway_extra: BTreeSet::new(),
            service_entries: Vec::new(),
            next_service: 0,
            next_ip: 1 << 16,
            rng: ChaCha8Rng::seed_from_u64(0),
        };
        let pods_per_service = (preset.pods / preset.services.max(1)).max(1);
        // Every `stride`-th service is routed (VirtualService + DestinationRule).
        let routed = preset.virtual_services.min(preset.destination_rules);
        let stride = preset.services.checked_div(routed).map_or(usize::MAX, |s| s.max(1));
        for i in 0..preset.services {
            let ns = i % preset.namespaces;
            let ports = rng.random_range(1..=3);
            world.add_service(ns, ports, pods_per_service, i % stride == 0 && i / stride < routed, &mut rng);
        }
        world.gateways = (0..preset.gateways).map(|g| (g % preset.namespaces, g)).collect();
        world.service_entries = (0..preset.service_entries).map(|s| (s % preset.namespaces, s)).collect();
        world.rng = rng;
        world
    }

    fn add_service(&mut self, ns: usize, ports: usize, pods: usize, routed: bool, rng: &mut ChaCha8Rng) -> usize {
        let id = self.next_service;
        self.next_service += 1;
        let mut spec = ServiceSpec { id, ns, ports, pods: Vec::new(), next_pod: 0, routed, weight: 80 };
        for _ in 0..pods {
            let pod = self.new_pod(&mut spec, rng);
            spec.pods.push(pod);
        }
        self.services.insert(id, spec);
        id
    }

    fn new_pod(&mut self, svc: &mut ServiceSpec, rng: &mut ChaCha8Rng) -> PodSpec {
        let n = svc.next_pod;
        svc.next_pod += 1;
        let ip = self.next_ip;
        self.next_ip += 1;
        PodSpec {
            name: format!("{}-{n}", svc.name()),
            ip,
            node: rng.random_range(0..self.nodes.max(1)),
            // 60% v1, 30% v2, 10% v3.
            version: [0, 0, 0, 0, 0, 0, 1, 1, 1, 2][n % 10],
            ready: true,
        }
    }

    // ---- documents ----

    pub fn namespace_doc(ns: usize) -> Value {
        json!({"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": ns_name(ns), "labels": {"istio-injection": "enabled"}}})
    }

    pub fn node_doc(node: usize) -> Value {
        json!({"apiVersion": "v1", "kind": "Node",
               "metadata": {"name": format!("node-{node}"), "labels": {
                   "topology.kubernetes.io/region": "region-1",
                   "topology.kubernetes.io/zone": ZONES[node % ZONES.len()],
                   "kubernetes.io/hostname": format!("node-{node}")}}})
    }

    fn port_numbers(svc: &ServiceSpec, k: usize) -> u16 {
        let (_, first, spread, _, _) = PORT_KINDS[k];
        first + (svc.id % spread as usize) as u16
    }

    pub fn service_doc(svc: &ServiceSpec) -> Value {
        let ports: Vec<Value> = (0..svc.ports)
            .map(|k| {
                let (name, _, _, target, _) = PORT_KINDS[k];
                json!({"name": name, "port": Self::port_numbers(svc, k), "targetPort": target, "protocol": "TCP"})
            })
            .collect();
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": svc.name(), "namespace": ns_name(svc.ns), "labels": {"app": svc.name()}},
               "spec": {"selector": {"app": svc.name()}, "ports": ports,
                        "clusterIP": format!("10.96.{}.{}", (svc.id >> 8) & 255, svc.id & 255)}})
    }

    pub fn pod_doc(svc: &ServiceSpec, pod: &PodSpec) -> Value {
        let ports: Vec<Value> = (0..svc.ports)
            .map(|k| {
                let (_, _, _, name, port) = PORT_KINDS[k];
                json!({"name": name, "containerPort": port, "protocol": "TCP"})
            })
            .collect();
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": pod.name, "namespace": ns_name(svc.ns),
                            "labels": {"app": svc.name(), "version": VERSIONS[pod.version]}},
               "spec": {"nodeName": format!("node-{}", pod.node),
                        "containers": [{"name": "app", "image": "app:1", "ports": ports}]},
               "status": {"phase": "Running", "podIP": ip_string(pod.ip),
                          "conditions": [{"type": "Ready", "status": if pod.ready { "True" } else { "False" }}]}})
    }

    /// The object [`World::pod_doc`] parses to, built directly: a step's events are built at
    /// up to tens of thousands per second, and rendering and parsing a document costs more than
    /// the engine's work on it. A test holds the two equal.
    pub fn pod_object(svc: &ServiceSpec, pod: &PodSpec) -> Object {
        use crate::model::k8s::{ContainerPort, Pod, Protocol};
        let ports = (0..svc.ports)
            .map(|k| {
                let (_, _, _, name, port) = PORT_KINDS[k];
                ContainerPort { name: name.to_string(), port, protocol: Protocol::Tcp }
            })
            .collect();
        let labels = [("app".to_string(), svc.name()), ("version".to_string(), VERSIONS[pod.version].to_string())];
        Object::Pod(std::sync::Arc::new(Pod {
            namespace: ns_name(svc.ns),
            name: pod.name.clone(),
            labels: labels.into(),
            ip: Some(ip_string(pod.ip)),
            node_name: Some(format!("node-{}", pod.node)),
            ready: pod.ready,
            terminal: false,
            ports,
        }))
    }

    /// The object [`World::slice_doc`] parses to, built directly (see [`World::pod_object`]).
    pub fn slice_object(svc: &ServiceSpec) -> Object {
        use crate::model::k8s::{EndpointSlice, Protocol, SliceEndpoint, SlicePort};
        let ports = (0..svc.ports)
            .map(|k| {
                let (name, _, _, _, port) = PORT_KINDS[k];
                SlicePort { name: name.to_string(), port: Some(port), protocol: Protocol::Tcp }
            })
            .collect();
        let endpoints = svc
            .pods
            .iter()
            .map(|p| SliceEndpoint { addresses: vec![ip_string(p.ip)], ready: p.ready, pod: Some(p.name.clone()) })
            .collect();
        Object::EndpointSlice(std::sync::Arc::new(EndpointSlice {
            namespace: ns_name(svc.ns),
            name: format!("{}-slice", svc.name()),
            service_name: Some(svc.name()),
            ports,
            endpoints,
        }))
    }

    pub fn slice_doc(svc: &ServiceSpec) -> Value {
        let ports: Vec<Value> = (0..svc.ports)
            .map(|k| {
                let (name, _, _, _, port) = PORT_KINDS[k];
                json!({"name": name, "port": port, "protocol": "TCP"})
            })
            .collect();
        let endpoints: Vec<Value> = svc
            .pods
            .iter()
            .map(|p| {
                json!({"addresses": [ip_string(p.ip)], "conditions": {"ready": p.ready},
                       "nodeName": format!("node-{}", p.node), "zone": ZONES[p.node % ZONES.len()],
                       "targetRef": {"kind": "Pod", "name": p.name, "namespace": ns_name(svc.ns)}})
            })
            .collect();
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": format!("{}-slice", svc.name()), "namespace": ns_name(svc.ns),
                            "labels": {"kubernetes.io/service-name": svc.name()}},
               "addressType": "IPv4", "ports": ports, "endpoints": endpoints})
    }

    pub fn virtual_service_doc(svc: &ServiceSpec) -> Value {
        let host = svc.name();
        json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
               "metadata": {"name": host, "namespace": ns_name(svc.ns)},
               "spec": {"hosts": [host], "http": [
                   {"match": [{"headers": {"end-user": {"exact": "jason"}}}],
                    "route": [{"destination": {"host": host, "subset": "v2"}}]},
                   {"route": [
                       {"destination": {"host": host, "subset": "v1"}, "weight": svc.weight},
                       {"destination": {"host": host, "subset": "v3"}, "weight": 100 - svc.weight}]}]}})
    }

    pub fn destination_rule_doc(svc: &ServiceSpec) -> Value {
        let subsets: Vec<Value> = VERSIONS.iter().map(|v| json!({"name": v, "labels": {"version": v}})).collect();
        json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
               "metadata": {"name": svc.name(), "namespace": ns_name(svc.ns)},
               "spec": {"host": svc.name(),
                        "trafficPolicy": {"connectionPool": {"tcp": {"maxConnections": 100}}},
                        "subsets": subsets}})
    }

    /// Gateway `gw-<id>`: an HTTP server on port 80 for `gw-<id>.example.com`, and with
    /// `extra` a second one on port `8000 + id`.
    pub fn gateway_doc(ns: usize, id: usize, extra: bool) -> Value {
        let host = format!("gw-{id}.example.com");
        let mut servers = vec![json!({"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": [host]})];
        if extra {
            let port = 8000 + id % 1000;
            servers.push(json!({"port": {"number": port, "name": format!("http-{port}"), "protocol": "HTTP"},
                                "hosts": [host]}));
        }
        json!({"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
               "metadata": {"name": format!("gw-{id}"), "namespace": ns_name(ns)},
               "spec": {"selector": {"istio": "ingressgateway"}, "servers": servers}})
    }

    fn gateway_docs(&self, ns: usize, id: usize) -> Vec<Value> {
        vec![Self::gateway_doc(ns, id, self.gateway_extra.contains(&id))]
    }

    pub fn service_entry_doc(ns: usize, id: usize) -> Value {
        json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
               "metadata": {"name": format!("ext-{id}"), "namespace": ns_name(ns)},
               "spec": {"hosts": [format!("ext-{id}.example.com")], "location": "MESH_EXTERNAL",
                        "resolution": "DNS",
                        "ports": [{"number": 443, "name": "https", "protocol": "TLS"}]}})
    }

    /// Every document of one service: the Service, its pods, its EndpointSlice, and its
    /// VirtualService and DestinationRule when it is routed. One export file.
    pub fn service_docs(svc: &ServiceSpec) -> Vec<Value> {
        let mut docs = vec![Self::service_doc(svc)];
        docs.extend(svc.pods.iter().map(|p| Self::pod_doc(svc, p)));
        docs.push(Self::slice_doc(svc));
        if svc.routed {
            docs.push(Self::virtual_service_doc(svc));
            docs.push(Self::destination_rule_doc(svc));
        }
        docs
    }

    /// The whole cluster, file by file (relative paths), as `--export` writes it.
    pub fn files(&self) -> Vec<(PathBuf, Vec<Value>)> {
        let mut files = vec![(PathBuf::from("cluster/nodes.yaml"), (0..self.nodes).map(Self::node_doc).collect())];
        for (ns, _) in self.namespaces.iter().enumerate().filter(|(_, live)| **live) {
            files.push((self.namespace_file(ns), vec![Self::namespace_doc(ns)]));
        }
        for svc in self.services.values() {
            files.push((self.service_file(svc.id).expect("listed service"), Self::service_docs(svc)));
        }
        for (ns, id) in &self.gateways {
            files.push((PathBuf::from(format!("{}/gw-{id}.yaml", ns_name(*ns))), self.gateway_docs(*ns, *id)));
        }
        for (ns, id) in &self.service_entries {
            files.push((
                PathBuf::from(format!("{}/ext-{id}.yaml", ns_name(*ns))),
                vec![Self::service_entry_doc(*ns, *id)],
            ));
        }
        files
    }

    pub fn namespace_file(&self, ns: usize) -> PathBuf {
        PathBuf::from(format!("{}/namespace.yaml", ns_name(ns)))
    }

    pub fn service_file(&self, id: usize) -> Option<PathBuf> {
        let svc = self.services.get(&id)?;
        Some(PathBuf::from(format!("{}/{}.yaml", ns_name(svc.ns), svc.name())))
    }

    /// Every current object of the cluster (what the export files hold).
    pub fn objects(&self) -> Vec<Object> {
        self.files().into_iter().flat_map(|(_, docs)| docs).map(to_object).collect()
    }

    /// The class an `istio-ingressgateway` proxy of `istio-system` brings when it connects
    /// (router, labelled `istio: ingressgateway`), as the xDS server feeds it to the engine.
    /// The bench adds it to [`World::objects`] at initial sync, so the Gateways are translated
    /// as in a cluster with an ingress gateway running; its simulated proxies are sidecars and
    /// do not receive the class's resources.
    pub fn ingress_class() -> Object {
        let labels =
            crate::model::k8s::Labels::from(BTreeMap::from([("istio".to_string(), "ingressgateway".to_string())]));
        Object::ProxyClass(ProxyClass::of_proxy(
            ProxyKind::Router,
            "istio-system",
            "istio-ingressgateway",
            Some(labels),
        ))
    }

    /// Counts of generated objects by kind (translated or not).
    pub fn counts(&self) -> BTreeMap<Kind, usize> {
        let mut counts = BTreeMap::new();
        let mut add = |k: Kind, n: usize| *counts.entry(k).or_insert(0) += n;
        add(Kind::Node, self.nodes);
        add(Kind::Namespace, self.namespaces.iter().filter(|l| **l).count());
        for svc in self.services.values() {
            add(Kind::Service, 1);
            add(Kind::EndpointSlice, 1);
            add(Kind::Pod, svc.pods.len());
            if svc.routed {
                add(Kind::VirtualService, 1);
                add(Kind::DestinationRule, 1);
            }
        }
        add(Kind::Gateway, self.gateways.len());
        add(Kind::ServiceEntry, self.service_entries.len());
        counts
    }

    /// Writes the cluster under `dir` as YAML, one file per service (with its pods, slice and
    /// routing), one per namespace, Gateway and ServiceEntry, and one for the nodes.
    pub fn export(&self, dir: &Path) -> anyhow::Result<usize> {
        let files = self.files();
        for (rel, docs) in &files {
            write_docs(&dir.join(rel), docs)?;
        }
        Ok(files.len())
    }

    // ---- mutations: each returns the input events a cluster would produce ----

    /// A random live service id (`routed` restricts to services with subsets).
    pub fn pick_service(&mut self, routed: bool) -> Option<usize> {
        let ids: Vec<usize> =
            if routed { self.services.values().filter(|s| s.routed).map(|s| s.id).collect() } else { Vec::new() };
        if routed {
            if ids.is_empty() {
                return None;
            }
            return Some(ids[self.rng.random_range(0..ids.len())]);
        }
        if self.services.is_empty() {
            return None;
        }
        // Ids are dense up to deletions: probe a few random ids, then fall back to the first.
        for _ in 0..8 {
            let id = self.rng.random_range(0..self.next_service);
            if self.services.contains_key(&id) {
                return Some(id);
            }
        }
        self.services.keys().next().copied()
    }

    fn slice_event(&self, id: usize) -> InputEvent {
        InputEvent::apply(Self::slice_object(&self.services[&id]))
    }

    /// A new ready pod for the service, and its slice.
    pub fn pod_add(&mut self, id: usize) -> Vec<InputEvent> {
        let mut rng = std::mem::replace(&mut self.rng, ChaCha8Rng::seed_from_u64(0));
        let mut svc = self.services.remove(&id).expect("live service");
        let pod = self.new_pod(&mut svc, &mut rng);
        svc.pods.push(pod);
        self.rng = rng;
        self.services.insert(id, svc);
        let svc = &self.services[&id];
        vec![InputEvent::apply(Self::pod_object(svc, svc.pods.last().expect("just added"))), self.slice_event(id)]
    }

    /// Removes the service's pod at `index` (mod its pod count), and updates its slice.
    pub fn pod_remove(&mut self, id: usize, index: usize) -> Vec<InputEvent> {
        let svc = self.services.get_mut(&id).expect("live service");
        if svc.pods.is_empty() {
            return Vec::new();
        }
        let pod = svc.pods.remove(index % svc.pods.len());
        let key = ObjectKey::new(Kind::Pod, ns_name(svc.ns), pod.name);
        vec![InputEvent::delete(key), self.slice_event(id)]
    }

    /// Flips the readiness of the service's pod at `index`.
    pub fn pod_flip_ready(&mut self, id: usize, index: usize) -> Vec<InputEvent> {
        let svc = self.services.get_mut(&id).expect("live service");
        if svc.pods.is_empty() {
            return Vec::new();
        }
        let i = index % svc.pods.len();
        svc.pods[i].ready = !svc.pods[i].ready;
        let svc = &self.services[&id];
        vec![InputEvent::apply(Self::pod_object(svc, &svc.pods[i])), self.slice_event(id)]
    }

    /// Moves the pod at `index` to the next version label (subset relabel): the pod only.
    pub fn pod_relabel(&mut self, id: usize, index: usize) -> Vec<InputEvent> {
        let svc = self.services.get_mut(&id).expect("live service");
        if svc.pods.is_empty() {
            return Vec::new();
        }
        let i = index % svc.pods.len();
        svc.pods[i].version = (svc.pods[i].version + 1) % VERSIONS.len();
        let svc = &self.services[&id];
        vec![InputEvent::apply(Self::pod_object(svc, &svc.pods[i]))]
    }

    /// Replaces the pod at `index` by a new one with `version` (one step of a rolling update).
    pub fn pod_replace(&mut self, id: usize, index: usize, version: usize) -> Vec<InputEvent> {
        let mut events = self.pod_remove(id, index);
        events.pop();
        let mut add = self.pod_add(id);
        let svc = self.services.get_mut(&id).expect("live service");
        let last = svc.pods.len() - 1;
        svc.pods[last].version = version;
        let svc = &self.services[&id];
        add[0] = InputEvent::apply(Self::pod_object(svc, &svc.pods[last]));
        events.extend(add);
        events
    }

    /// Sets the VirtualService's v1 weight.
    pub fn set_weight(&mut self, id: usize, weight: u32) -> Vec<InputEvent> {
        let svc = self.services.get_mut(&id).expect("live service");
        svc.weight = weight.min(100);
        vec![InputEvent::apply(to_object(Self::virtual_service_doc(svc)))]
    }

    /// A random live Gateway gains a server on a port of its own, or loses the one it gained
    /// (a port opened on the ingress, then closed).
    pub fn gateway_change(&mut self) -> Option<Vec<InputEvent>> {
        let (ns, id) = *self.gateways.get(self.rng.random_range(0..self.gateways.len().max(1)))?;
        if !self.gateway_extra.remove(&id) {
            self.gateway_extra.insert(id);
        }
        let docs = self.gateway_docs(ns, id);
        Some(docs.into_iter().map(|d| InputEvent::apply(to_object(d))).collect())
    }

    /// The (service, pod name) of every pod on a node.
    pub fn pods_on_node(&self, node: usize) -> Vec<(usize, String)> {
        self.services
            .values()
            .flat_map(|s| s.pods.iter().filter(|p| p.node == node).map(move |p| (s.id, p.name.clone())))
            .collect()
    }

    /// Removes a pod by name (node drain).
    pub fn pod_remove_named(&mut self, id: usize, name: &str) -> Vec<InputEvent> {
        let Some(svc) = self.services.get(&id) else { return Vec::new() };
        match svc.pods.iter().position(|p| p.name == name) {
            Some(i) => self.pod_remove(id, i),
            None => Vec::new(),
        }
    }

    /// Deletes every object of a namespace, one watch event per object, in the order the
    /// namespace controller deletes them (pods, slices, services, Istio config), then the
    /// namespace itself.
    pub fn namespace_delete(&mut self, ns: usize) -> Vec<Vec<InputEvent>> {
        let nsn = ns_name(ns);
        let mut steps = Vec::new();
        let ids: Vec<usize> = self.services.values().filter(|s| s.ns == ns).map(|s| s.id).collect();
        for id in &ids {
            let svc = &self.services[id];
            for p in &svc.pods {
                steps.push(vec![InputEvent::delete(ObjectKey::new(Kind::Pod, &nsn, &p.name))]);
            }
            steps.push(vec![InputEvent::delete(ObjectKey::new(
                Kind::EndpointSlice,
                &nsn,
                format!("{}-slice", svc.name()),
            ))]);
            steps.push(vec![InputEvent::delete(ObjectKey::new(Kind::Service, &nsn, svc.name()))]);
            if svc.routed {
                steps.push(vec![InputEvent::delete(ObjectKey::new(Kind::VirtualService, &nsn, svc.name()))]);
                steps.push(vec![InputEvent::delete(ObjectKey::new(Kind::DestinationRule, &nsn, svc.name()))]);
            }
        }
        for id in ids {
            self.services.remove(&id);
        }
        for (_, id) in self.gateways.iter().filter(|(n, _)| *n == ns) {
            steps.push(vec![InputEvent::delete(ObjectKey::new(Kind::Gateway, &nsn, format!("gw-{id}")))]);
        }
        for (_, id) in self.service_entries.iter().filter(|(n, _)| *n == ns) {
            steps.push(vec![InputEvent::delete(ObjectKey::new(Kind::ServiceEntry, &nsn, format!("ext-{id}")))]);
        }
        self.gateways.retain(|(n, _)| *n != ns);
        self.service_entries.retain(|(n, _)| *n != ns);
        if let Some(live) = self.namespaces.get_mut(ns) {
            *live = false;
        }
        steps.push(vec![InputEvent::delete(ObjectKey::new(Kind::Namespace, "", nsn))]);
        steps
    }

    /// A live namespace other than the last one standing, if any.
    pub fn pick_namespace(&mut self) -> Option<usize> {
        let live: Vec<usize> = self.namespaces.iter().enumerate().filter(|(_, l)| **l).map(|(i, _)| i).collect();
        (live.len() > 1).then(|| live[self.rng.random_range(0..live.len())])
    }

    /// Creates a new service (with `pods` pods) in a random live namespace: its Service, pods
    /// and slice in one step, as a Deployment + Service applied together would produce.
    pub fn service_create(&mut self, pods: usize) -> Vec<InputEvent> {
        let live: Vec<usize> = self.namespaces.iter().enumerate().filter(|(_, l)| **l).map(|(i, _)| i).collect();
        let Some(&ns) = live.get(self.rng.random_range(0..live.len().max(1))) else { return Vec::new() };
        let mut rng = std::mem::replace(&mut self.rng, ChaCha8Rng::seed_from_u64(0));
        let ports = rng.random_range(1..=3);
        let id = self.add_service(ns, ports, pods, false, &mut rng);
        self.rng = rng;
        let svc = &self.services[&id];
        let mut events = vec![InputEvent::apply(to_object(Self::service_doc(svc)))];
        events.extend(svc.pods.iter().map(|p| InputEvent::apply(Self::pod_object(svc, p))));
        events.push(self.slice_event(id));
        events
    }

    /// The export file an object lives in, for the directory source.
    pub fn file_of(key: &ObjectKey) -> PathBuf {
        let ns = &key.namespace;
        match key.kind {
            Kind::Namespace => PathBuf::from(format!("{}/namespace.yaml", key.name)),
            Kind::Node => PathBuf::from("cluster/nodes.yaml"),
            Kind::Gateway | Kind::ServiceEntry => PathBuf::from(format!("{ns}/{}.yaml", key.name)),
            Kind::Pod => {
                // Pod names are `<service>-<n>`.
                let svc = key.name.rsplit_once('-').map(|(s, _)| s).unwrap_or(&key.name);
                PathBuf::from(format!("{ns}/{svc}.yaml"))
            }
            Kind::EndpointSlice => {
                let svc = key.name.strip_suffix("-slice").unwrap_or(&key.name);
                PathBuf::from(format!("{ns}/{svc}.yaml"))
            }
            _ => PathBuf::from(format!("{ns}/{}.yaml", key.name)),
        }
    }

    /// The current documents of an export file, or `None` when it no longer exists.
    pub fn docs_of_file(&self, rel: &Path) -> Option<Vec<Value>> {
        let s = rel.to_str()?;
        let (ns, file) = s.split_once('/')?;
        let stem = file.strip_suffix(".yaml")?;
        if ns == "cluster" {
            return Some((0..self.nodes).map(Self::node_doc).collect());
        }
        let ns_idx: usize = ns.strip_prefix("ns-")?.parse().ok()?;
        if !self.namespaces.get(ns_idx).copied().unwrap_or(false) {
            return None;
        }
        if stem == "namespace" {
            return Some(vec![Self::namespace_doc(ns_idx)]);
        }
        if let Some(id) = stem.strip_prefix("svc-").and_then(|i| i.parse::<usize>().ok()) {
            return self.services.get(&id).map(Self::service_docs);
        }
        if let Some(id) = stem.strip_prefix("gw-").and_then(|i| i.parse::<usize>().ok()) {
            return self.gateways.contains(&(ns_idx, id)).then(|| self.gateway_docs(ns_idx, id));
        }
        if let Some(id) = stem.strip_prefix("ext-").and_then(|i| i.parse::<usize>().ok()) {
            return self.service_entries.contains(&(ns_idx, id)).then(|| vec![Self::service_entry_doc(ns_idx, id)]);
        }
        None
    }
}

/// Writes documents as one multi-document YAML file (creating its directory).
pub fn write_docs(path: &Path, docs: &[Value]) -> anyhow::Result<()> {
    use anyhow::Context;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let mut text = String::new();
    for doc in docs {
        text.push_str("---\n");
        text.push_str(&serde_yaml_ng::to_string(doc).context("rendering YAML")?);
    }
    // Write then rename, so a watcher never reads half a file.
    let tmp = path.with_extension("yaml.tmp~");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming onto {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ip_is_written_as_format_writes_it() {
        for ip in [0u32, 9, 10, 99, 100, 255, 256, 0x000a_6364, 0x00ff_ffff, 0x0001_0aff, 0x0012_3456] {
            let want = format!("10.{}.{}.{}", (ip >> 16) & 255, (ip >> 8) & 255, ip & 255);
            assert_eq!(ip_string(ip), want);
        }
    }

    #[test]
    fn small_preset_has_the_issue_counts_and_every_kind() {
        let world = World::new(Preset::SMALL, 1);
        let counts = world.counts();
        assert_eq!(counts[&Kind::Service], 100);
        assert_eq!(counts[&Kind::Pod], 1_000);
        assert_eq!(counts[&Kind::VirtualService], 20);
        assert_eq!(counts[&Kind::DestinationRule], 20);
        assert_eq!(counts[&Kind::Gateway], 2);
        assert_eq!(counts[&Kind::ServiceEntry], 5);
        // Every generated document passes the intake parser.
        let objects = world.objects();
        assert_eq!(objects.len(), counts.values().sum::<usize>());
    }

    #[test]
    fn pods_and_slices_built_directly_equal_their_parsed_documents() {
        let mut world = World::new(Preset::SMALL, 9);
        // Not-ready pods, every port count and version, and a slice with a removed pod.
        let ids: Vec<usize> = world.services.keys().copied().take(12).collect();
        for (i, &id) in ids.iter().enumerate() {
            world.pod_flip_ready(id, i);
            if i % 3 == 0 {
                world.pod_remove(id, 1);
            }
        }
        let (mut pods, mut slices) = (0, 0);
        for svc in world.services.values() {
            for pod in &svc.pods {
                assert_eq!(World::pod_object(svc, pod), to_object(World::pod_doc(svc, pod)), "{}", pod.name);
                pods += 1;
            }
            assert_eq!(World::slice_object(svc), to_object(World::slice_doc(svc)), "{}", svc.name());
            slices += 1;
        }
        assert!(pods >= 900 && slices == 100, "{pods} pods, {slices} slices");
        let ports: BTreeSet<usize> = world.services.values().map(|s| s.ports).collect();
        assert_eq!(ports.len(), 3, "every port count is compared");
        assert!(world.services.values().flat_map(|s| &s.pods).any(|p| !p.ready), "a not-ready pod is compared");
    }

    #[test]
    fn the_same_seed_generates_the_same_cluster() {
        let (a, b) = (World::new(Preset::SMALL, 7), World::new(Preset::SMALL, 7));
        assert_eq!(a.objects(), b.objects());
        assert_ne!(a.objects(), World::new(Preset::SMALL, 8).objects());
    }

    #[test]
    fn the_export_loads_in_the_config_directory_source_without_errors() {
        let world = World::new(Preset::SMALL, 3);
        let tmp = tempfile::tempdir().unwrap();
        world.export(tmp.path()).unwrap();
        let mut dir = crate::source::file::ConfigDir::new(tmp.path());
        let events = dir.scan_all();
        assert_eq!(dir.errors(), Vec::new());
        let mut loaded: Vec<Object> = events.into_iter().filter_map(|e| e.object).collect();
        let mut generated = world.objects();
        loaded.sort();
        generated.sort();
        assert_eq!(loaded, generated);
    }

    #[test]
    fn every_object_maps_to_the_file_that_holds_it() {
        let world = World::new(Preset::SMALL, 3);
        for (rel, docs) in world.files() {
            for doc in docs {
                assert_eq!(World::file_of(&to_object(doc).key()), rel);
            }
            assert!(world.docs_of_file(&rel).is_some(), "{}", rel.display());
        }
    }
}
