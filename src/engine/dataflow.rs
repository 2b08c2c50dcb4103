//! The translation graph: input collections in, output rows out.
//!
//! Keys decide the cost of a change. Every arrow below keeps work local to its key: a pod or
//! slice change touches its services' load assignments (and the subsets of those services); a
//! service or ServiceEntry change touches its hosts; a DestinationRule or VirtualService change
//! touches the hosts its host pattern matches and the VirtualServices that route to them.
//!
//! ```text
//! virtual services ─roots by each delegate they name──join(delegates: no hosts, by (ns, name))
//!                  ─reduce per root: merge─▶ merged roots ⊎ VirtualServices that delegate nothing
//!                  (= "virtual services" below; delegates never alone)
//! services ─flat_map─▶ service ports ─┐
//! service entries ─flat_map─▶ host × port rows (resolution, VIPs, inline DNS endpoints) ─┤
//!                 by host (fqdn) ─reduce: settle (Service > oldest entry, merge compatible)─▶ host rows ─┬──────┐
//!                   host patterns (fqdn, ns) ┤ (fqdn, *.suffix…, *)                                    │      │
//! destination rules ─by pattern──────join────┴─reduce per (fqdn, ns) ⊎ namespaces of connected proxies that
//!        a candidate names (own, exportTo, root): rule per context ─▶ rule by host ─┐                  │      │
//!                      per host reduce (rows ⊎ rule per context) ─▶ clusters (+ subsets), host info ◀──┘      │
//!                                   (default context → Scope::All; a namespace that differs → its Scope)      │
//!                                   (exportTo not `*`: each namespace it is exported to, no default)          │
//! virtual services ─by pattern──join(host patterns)──reduce ⊎ exportTo namespaces: VS per context─▶ by host   │
//!                  ─by destination host──join(host info)──reduce per VS─▶ (VS, destination map)              │
//!   mesh VS ─sourceNamespace ⋈ class namespaces, sourceLabels ⋈ sidecar class labels (label index)─┐
//!                                                       ─⋈ host patterns─▶ source markers by host   │
//!                   per host reduce (rows ⊎ host info ⊎ chosen VS, per context ⊎ markers) ─▶ virtual hosts ◀┘
//!                        └▶ route configs (assembled outside; a namespace's = sidecars' with its own in
//!                           place, a class's = its namespace's with its own in place)
//!                          (a sniffed port's also in `<fqdn>:<port>`, its own sniffing listener's)
//!                          HTTP ports (not sniffed) × visibility ─reduce per port─▶ listeners
//!                                    (Sidecars, or SidecarsIn each namespace it is exported to)
//!                 per host reduce (TCP + sniffed rows ⊎ chosen VS per context ⊎ markers) ─▶ TCP and sniffing
//!                                      listener candidates (one per VIP), and their variants per namespace/class
//!                  per port reduce (candidates ⊎ HTTP port marker) ─▶ the port's TCP listener (+ the winner's
//!                                                                     variants), losers as diagnostics
//! slices ─flat_map─▶ ready addresses by (ns, svc, port name, proto) ──join(ports by name)┐
//! endpoints ─antijoin(services with slices)─▶ ...same key ─────────────────────────────join┤
//! pods ─by label─▶ join(selector services without slices/endpoints, by one selector pair) ┤▶ (cluster, addr, pod)
//! service entries ─STATIC endpoints (labels)──────────────┐                               │
//! pods ─by label─▶ join(entry workloadSelectors) ──────────┴▶ (cluster, entry ns)          │
//!        ─semijoin(EDS clusters of hosts an entry of that ns won)────────────────────────┘
//!   (cluster, addr, pod) ─join(pod → its `topology.istio.io/locality` label, else its Node's topology labels)
//!                        ─▶ the endpoint's locality (LocalityLbEndpoints group by it)
//!   (cluster, addr, pod|labels) ─semijoin(clusters with subsets or failoverPriority)─join(pod labels, else its own)
//!                                ─join(subsets)─▶ (subset cluster, addr)
//!                                ─▶ (cluster, addr) → labels, for failoverPriority
//!                     EDS cluster names ⊎ addresses ─reduce per (scope, cluster)─▶ load assignments
//!                     (a namespace's subset clusters get their own; its others share the default's)
//!                     (a host whose exportTo is not `*`: base endpoints ⋈ each namespace's cluster: its own)
//!   (DNS entry clusters carry their endpoints inline, NONE entries are ORIGINAL_DST: no assignment)
//!   clusters whose policy makes balancing depend on the proxy's locality (outlier detection or
//!   `distribute`, not disabled) ─join(their addresses)─reduce per (context, cluster)─▶ address list
//!        ─⋈ localities of connected proxies (default context; by namespace for a namespace's own rule)
//!        ─▶ located assignments (Scope::Locality, Scope::LocalityIn: priorities/weights per locality)
//!   with failoverPriority: addresses ⋈ their labels ─reduce─⋈ (locality, labels) of connected proxies
//!        ─▶ Scope::Prioritized, Scope::PrioritizedIn
//!   DNS clusters with such a policy ─⋈ the same localities─▶ the Cluster itself per locality
//!        (its inline assignment placed relative to the proxy)
//! proxy classes (router, sidecar) ─labels given, else ⋈ their Pod's (by name), else
//!                                  ⋈ live pods by IP ─reduce per class: the Pod at its IP─▶ class labels
//! proxy classes (router, sidecar) ─labels given, else ⋈ their Pod's─▶ class labels
//! sidecar class labels ─by (ns, each label)─⋈ services with a selector, by (ns, one selector pair)
//!                      ─selector ⊆ labels, ⊎ every sidecar class─reduce per class─▶ virtualInbound,
//!                      inbound|<port>|| clusters (Scope::Class; only captured proxies get the listener)
//! proxy classes ─filter(proxyless)─▶ () ─semijoin⋉ cluster rows, HTTP host rows, virtual hosts
//!                                     ─▶ proxyless clusters, API listeners, route configs (proxyless.rs)
//! ```

use std::collections::{BTreeMap, BTreeSet};

use differential_dataflow::VecCollection;
use differential_dataflow::input::{Input, InputSession};
use serde::{Deserialize, Serialize};
use timely::dataflow::Scope as Graph;

use crate::model::Secret;
use crate::model::istio::{DestinationRule, DestinationRuleSpec, Gateway, ServiceEntry, VirtualService};
use crate::model::k8s::Labels;
use crate::model::proxy::{ClassLabels, ProxyClass, ProxyKind, ProxyLocality};
use crate::model::{EndpointSlice, Endpoints, Node, Pod, Service};
use crate::translate::endpoint::{
    EndpointRow, PortKey, SelectorService, endpoints_addresses, node_locality, pod_addresses, pod_locality_label,
    service_port_rows, slice_addresses,
};
use crate::translate::gateway::{self, SecretRef};
use crate::translate::locality::LocalityLb;
use crate::translate::outbound::{
    self, ClusterRow, ConfigKey, Context, DestinationMap, HostInfo, SubsetRef, TcpListenerRow, VsRank, host_patterns,
};
use crate::translate::{
    self, Diagnostic, EndpointAddr, MeshConfig, ResourceType, Scope, ServicePortRow, VirtualHostPart, service_entry,
};
use crate::translate::{delegate, views};

/// What leaves the dataflow: finished resources, and virtual hosts that are assembled into
/// route configs outside it (see [`super::output`]).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum OutputRow {
    Resource {
        scope: Scope,
        ty: ResourceType,
        name: String,
        body: Vec<u8>,
    },
    VirtualHost {
        /// `Sidecars`, or the namespace whose proxies see this virtual host instead of the
        /// sidecars' one of the same name.
        scope: Scope,
        route: String,
        vhost: VirtualHostPart,
    },
    /// A problem with an input object that does not stop it from being served: a field meshflow
    /// does not translate yet, a route to a host or subset that does not exist.
    Diagnostic(Diagnostic),
    /// A Pod's locality (its own label, else its Node's): not a resource, but what a proxy of
    /// that Pod that does not tell its locality is placed in when it connects.
    PodLocality {
        pod: (String, String),
        locality: String,
    },
}

/// The input collections, one per kind that translation reads.
pub struct Inputs {
    pub services: InputSession<u64, Service, isize>,
    pub slices: InputSession<u64, EndpointSlice, isize>,
    pub endpoints: InputSession<u64, Endpoints, isize>,
    pub pods: InputSession<u64, Pod, isize>,
    pub nodes: InputSession<u64, Node, isize>,
    pub virtual_services: InputSession<u64, VirtualService, isize>,
    pub destination_rules: InputSession<u64, DestinationRule, isize>,
    pub gateways: InputSession<u64, Gateway, isize>,
    pub classes: InputSession<u64, ProxyClass, isize>,
    pub localities: InputSession<u64, ProxyLocality, isize>,
    pub secrets: InputSession<u64, Secret, isize>,
    pub service_entries: InputSession<u64, ServiceEntry, isize>,
}

impl Inputs {
    pub fn advance_to(&mut self, t: u64) {
        self.services.advance_to(t);
        self.slices.advance_to(t);
        self.endpoints.advance_to(t);
        self.pods.advance_to(t);
        self.nodes.advance_to(t);
        self.virtual_services.advance_to(t);
        self.destination_rules.advance_to(t);
        self.gateways.advance_to(t);
        self.classes.advance_to(t);
        self.localities.advance_to(t);
        self.secrets.advance_to(t);
        self.service_entries.advance_to(t);
    }

    pub fn flush(&mut self) {
        self.services.flush();
        self.slices.flush();
        self.endpoints.flush();
        self.pods.flush();
        self.nodes.flush();
        self.virtual_services.flush();
        self.destination_rules.flush();
        self.gateways.flush();
        self.classes.flush();
        self.localities.flush();
        self.secrets.flush();
        self.service_entries.flush();
    }
}

/// (namespace, service name)
type SvcKey = (String, String);
/// (namespace, label key, label value): how selector services meet pods.
type LabelKey = (String, String, String);

/// What meets per host to pick its DestinationRule in each context: the rules whose host
/// matched it, and the namespaces of connected proxies that one of them names.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum RuleInput {
    Candidate(String, DestinationRule),
    Namespace(String),
}

/// What meets per host to pick its VirtualService in each context.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum VsPick {
    Candidate(VsRank),
    Namespace(String),
}

/// What meets per host to make its clusters: its rows, and its rule in each context where it
/// has one (`None`: in that namespace it has none, unlike the default).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum HostInput {
    Port(ServicePortRow),
    Rule(Context, Option<DestinationRuleSpec>),
}

/// What a host's per-host reduce produces, per context.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum HostOutput {
    /// A cluster in a context; `true`: a cluster without subset that has no copy in the
    /// default context (its host is not exported everywhere), so it gets its own assignment.
    Cluster(Context, Box<ClusterRow>, bool),
    Info(Context, HostInfo),
}

/// What meets per proxy class whose named Pod does not exist: the class (kind, namespace) and
/// the live Pods (namespace, name, labels) at the proxy's IP (named: two Pods alike are two).
/// `Class` sorts first.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum PodAtIp {
    Class(ProxyKind, String),
    Candidate(String, String, Labels),
}

/// What meets per root VirtualService to merge it with its delegates. `Root` sorts first.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum DelegateInput {
    Root(VirtualService),
    Child(VirtualService),
}

/// What meets per VirtualService: the object and what is known of each destination host.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum VsInput {
    Object(VirtualService),
    Destination(String, HostInfo),
}

/// What claims a port number: HTTP services (their shared listener), or one TCP listener
/// (the default context's; its variants for a namespace's sidecars or a class come along).
/// `Http` sorts first.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum PortClaim {
    Http,
    Tcp(TcpListenerRow),
    Variant(Scope, TcpListenerRow),
}

/// What meets per gateway proxy class to make its listeners and route configs.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum ClassInput {
    Gateway(Gateway),
    Routes(VirtualService, DestinationMap),
}

/// What a gateway proxy class's reduce produces.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum ClassOutput {
    Resource(ResourceType, String, Vec<u8>),
    Secret(SecretRef),
    Diagnostic(Diagnostic),
}

/// What meets per (class, SDS name): the reference and the Secrets it may read.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum SecretInput {
    /// The reference, and the namespace of the class that holds it.
    Ref(SecretRef, String),
    Found(Secret),
    Fallback(Secret),
}

/// What meets per host to make its virtual hosts (and its TCP listeners), per context.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum VhostInput {
    Port(ServicePortRow),
    Info(Context, HostInfo),
    Routes(Context, VirtualService, DestinationMap),
    /// In this namespace no VirtualService applies to the host, unlike the default.
    NoRoutes(String),
    /// A namespace of connected proxies that a `sourceNamespace` of one of the host's
    /// VirtualServices names.
    SourceNamespace(String),
    /// A connected sidecar class (id, namespace, labels) that a `sourceLabels` of one of the
    /// host's VirtualServices selects.
    Class(String, String, Labels),
}

/// Builds the graph. Returns the input handles and the output collection.
pub fn build<'s>(scope: Graph<'s, u64>, mesh: &MeshConfig) -> (Inputs, VecCollection<'s, u64, OutputRow>) {
    let root = mesh.root_namespace.clone();
    let (services_in, services) = scope.new_collection::<Service, isize>();
    let (slices_in, slices) = scope.new_collection::<EndpointSlice, isize>();
    let (endpoints_in, endpoints) = scope.new_collection::<Endpoints, isize>();
    let (pods_in, pods) = scope.new_collection::<Pod, isize>();
    let (nodes_in, nodes) = scope.new_collection::<Node, isize>();
    let (vs_in, raw_virtual_services) = scope.new_collection::<VirtualService, isize>();
    let (dr_in, destination_rules) = scope.new_collection::<DestinationRule, isize>();
    let (gateways_in, gateways) = scope.new_collection::<Gateway, isize>();
    let (classes_in, classes) = scope.new_collection::<ProxyClass, isize>();
    let (localities_in, proxy_localities) = scope.new_collection::<ProxyLocality, isize>();
    let (secrets_in, secrets) = scope.new_collection::<Secret, isize>();
    let (se_in, service_entries) = scope.new_collection::<ServiceEntry, isize>();

    // === delegate VirtualServices: each root merged with the delegates it names ===
    // A root is keyed by each delegate it names and meets the delegates (VirtualServices
    // without hosts) there; one reduce per root merges them. A delegate's change costs only its
    // roots. What follows reads the merged collection: roots merged, other VirtualServices
    // unchanged, delegates never on their own.
    let delegates = raw_virtual_services
        .clone()
        .filter(delegate::is_delegate)
        .map(|vs: VirtualService| ((vs.namespace.clone(), vs.name.clone()), vs));
    let roots = raw_virtual_services.clone().filter(delegate::is_root);
    let root_children = roots
        .clone()
        .flat_map(|vs: VirtualService| {
            let key: ConfigKey = (vs.namespace.clone(), vs.name.clone());
            delegate::delegate_keys(&vs).into_iter().map(move |k| (k, key.clone())).collect::<Vec<_>>()
        })
        .join_map(delegates, |_, root: &ConfigKey, child: &VirtualService| {
            (root.clone(), DelegateInput::Child(child.clone()))
        });
    let merged_roots = roots
        .map(|vs: VirtualService| ((vs.namespace.clone(), vs.name.clone()), DelegateInput::Root(vs)))
        .concat(root_children)
        .reduce_named(
            "merge: delegate VirtualServices",
            |_key: &ConfigKey, input: &[(&DelegateInput, isize)], output| {
                let mut root = None;
                let mut children = Vec::new();
                for (i, _) in input {
                    match i {
                        DelegateInput::Root(vs) => root = Some(vs),
                        DelegateInput::Child(vs) => children.push(vs),
                    }
                }
                let Some(root) = root else { return };
                let (merged, diagnostics) = delegate::merge_delegates(root, &children);
                output.push((Ok(merged), 1isize));
                for d in diagnostics {
                    output.push((Err(d), 1));
                }
            },
        )
        .map(|(_, out): (ConfigKey, Result<VirtualService, Diagnostic>)| out);
    let delegate_diagnostics = merged_roots.clone().flat_map(Result::err);
    let virtual_services = raw_virtual_services
        .clone()
        .filter(|vs: &VirtualService| !delegate::is_delegate(vs) && !delegate::is_root(vs))
        .concat(merged_roots.flat_map(Result::ok));

    let service_ports = services.clone().flat_map(|s: Service| service_port_rows(&s));
    let labels_by_pod = pods.clone().map(|p: Pod| ((p.namespace.clone(), p.name.clone()), p.labels));

    // === proxy classes' labels: what the proxy said, else its Pod's (following the Pod) ===
    let labelled_classes = classes.clone().filter(|c: &ProxyClass| c.kind != ProxyKind::Proxyless);
    let given_labels = labelled_classes.clone().flat_map(|c: ProxyClass| match &c.labels {
        ClassLabels::Given(l) => Some((c.id(), (c.kind, c.namespace.clone(), l.clone()))),
        _ => None,
    });
    let of_pod = labelled_classes.flat_map(|c: ProxyClass| match &c.labels {
        ClassLabels::OfPod { pod, ip } => Some(((c.namespace.clone(), pod.clone()), (c.id(), c.kind, ip.clone()))),
        _ => None,
    });
    let pod_labels_found = of_pod.clone().join_map(
        labels_by_pod.clone(),
        |(ns, _), (id, kind, _): &(String, ProxyKind, Option<String>), labels: &Labels| {
            (id.clone(), (*kind, ns.clone(), labels.clone()))
        },
    );
    // No Pod of that name: the Pod with the proxy's IP (keyed by IP, so a Pod's change costs the
    // classes at its IP), else no labels.
    let pod_missing =
        of_pod.antijoin(labels_by_pod.clone().map(|(k, _)| k)).map(|((ns, _), (id, kind, ip))| (id, (kind, ns, ip)));
    let pods_by_ip = pods.clone().flat_map(|p: Pod| {
        let ip = p.ip.clone().filter(|_| !p.terminal)?;
        Some((ip, (p.namespace, p.name, p.labels)))
    });
    let ip_candidates = pod_missing.clone().flat_map(|(id, (_, _, ip))| ip.map(|ip| (ip, id))).join_map(
        pods_by_ip,
        |_, id: &String, (ns, name, labels): &(String, String, Labels)| {
            (id.clone(), PodAtIp::Candidate(ns.clone(), name.clone(), labels.clone()))
        },
    );
    let pod_at_ip = pod_missing
        .map(|(id, (kind, ns, _))| (id, PodAtIp::Class(kind, ns)))
        .concat(ip_candidates)
        .reduce_named("select: pod at the proxy's IP", |_id: &String, input: &[(&PodAtIp, isize)], output| {
            let mut class = None;
            let mut candidates = Vec::new();
            for (i, _) in input {
                match i {
                    PodAtIp::Class(kind, ns) => class = Some((*kind, ns)),
                    PodAtIp::Candidate(ns, _, labels) => candidates.push((ns.as_str(), labels)),
                }
            }
            let Some((kind, ns)) = class else { return };
            let labels = views::pod_by_ip(ns, &candidates).cloned().unwrap_or_default();
            output.push(((kind, ns.clone(), labels), 1isize));
        });
    let class_labels: VecCollection<'s, u64, (String, (ProxyKind, String, Labels))> =
        given_labels.concat(pod_labels_found).concat(pod_at_ip);

    // === sidecar classes' inbound side (for captured proxies): virtualInbound, inbound|<port>|| ===
    // A Service with a selector is keyed by (namespace, one of its pairs), a sidecar class by
    // (namespace, each of its labels): they meet once per class the Service may select, and
    // the whole selector is checked there. Every sidecar class gets its listener, even one that
    // no Service selects (passthrough only).
    let selector_services = services.clone().flat_map(|s: Service| {
        let first = s.selector.as_ref().and_then(|sel| sel.iter().next().map(|(k, v)| (k.clone(), v.clone())));
        first.map(|(k, v)| ((s.namespace.clone(), k, v), s))
    });
    let sidecar_classes = class_labels.clone().filter(|(_, (kind, _, _))| *kind == ProxyKind::Sidecar);
    let sidecar_classes_by_label = sidecar_classes.clone().flat_map(|(id, (_, ns, labels))| {
        let pairs: Vec<(String, String)> = labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        pairs.into_iter().map(move |(k, v)| ((ns.clone(), k, v), (id.clone(), labels.clone()))).collect::<Vec<_>>()
    });
    let class_inbound = selector_services
        .join_map(sidecar_classes_by_label, |_, s: &Service, (id, labels): &(String, Labels)| {
            translate::capture::service_selects(s, labels).then(|| (id.clone(), Some(s.clone())))
        })
        .flat_map(|x| x)
        .concat(sidecar_classes.map(|(id, _)| (id, None)))
        .reduce_named("translate: class inbound", |_id: &String, input: &[(&Option<Service>, isize)], output| {
            let services = input.iter().filter_map(|(s, _)| s.as_ref());
            for (ty, name, body) in translate::capture::class_inbound(services) {
                output.push(((ty, name, body), 1isize));
            }
        })
        .map(|(id, (ty, name, body))| OutputRow::Resource { scope: Scope::Class(id), ty, name, body });
    // Every host's rows, Services' and ServiceEntries', settled per host as istiod settles a
    // hostname defined more than once: what follows sees only the rows that make the host.
    let ports_by_host = service_ports
        .clone()
        .concat(service_entries.clone().flat_map(|se: ServiceEntry| service_entry::port_rows(&se)))
        .map(|row| (row.fqdn(), row))
        .reduce_named("settle: host rows", |_fqdn: &String, input: &[(&ServicePortRow, isize)], output| {
            let rows: Vec<&ServicePortRow> = input.iter().map(|(r, _)| *r).collect();
            for row in service_entry::host_rows(&rows) {
                output.push((row.clone(), 1isize));
            }
        });
    let host_ports = ports_by_host.clone().map(|(_, row)| row);

    // Host patterns: every host under each pattern that can match it, so rules and
    // VirtualServices (keyed by their own pattern) meet exactly the hosts they match. A host
    // carries its namespace (the Service's, or the winning ServiceEntry's): rules are looked
    // up there first.
    let hosts = ports_by_host.clone().map(|(fqdn, row)| (fqdn, row.namespace)).distinct();
    let patterns = hosts.flat_map(|(fqdn, ns): (String, String)| {
        host_patterns(&fqdn).into_iter().map(move |p| (p, (fqdn.clone(), ns.clone())))
    });

    // === DestinationRules → the rule of each host ===
    let rules_by_pattern = destination_rules
        .clone()
        .flat_map(|dr: DestinationRule| outbound::destination_rule_pattern(&dr).map(|p| (p, dr)));
    // A host's rule depends on the proxy's namespace (its own rules first, then the host's,
    // then the root's, each as exported): it is picked for the default context and for each
    // namespace of a connected proxy that a candidate names, where it differs.
    let class_namespaces = classes.clone().map(|c: ProxyClass| (c.namespace, ())).distinct();
    let rule_candidates =
        patterns.clone().join_map(rules_by_pattern, |pattern, host: &(String, String), dr: &DestinationRule| {
            (host.clone(), (pattern.clone(), dr.clone()))
        });
    let marker_root = root.clone();
    let rule_markers = rule_candidates
        .clone()
        .flat_map(move |(host, (_, dr))| {
            let namespaces = outbound::rule_namespaces(&dr, &marker_root);
            namespaces.into_iter().map(move |ns| (ns, host.clone())).collect::<Vec<_>>()
        })
        .join_map(class_namespaces.clone(), |ns, host: &(String, String), _| (host.clone(), ns.clone()))
        .distinct();
    let rule_by_host = rule_candidates
        .map(|(host, (p, dr))| (host, RuleInput::Candidate(p, dr)))
        .concat(rule_markers.map(|(host, ns)| (host, RuleInput::Namespace(ns))))
        .reduce_named("select: DestinationRule", move |k: &(String, String), input: &[(&RuleInput, isize)], output| {
            let ns = &k.1;
            let mut candidates = Vec::new();
            let mut namespaces = Vec::new();
            for (i, _) in input {
                match i {
                    RuleInput::Candidate(p, dr) => candidates.push((p.as_str(), dr)),
                    RuleInput::Namespace(n) => namespaces.push(n.as_str()),
                }
            }
            for (ctx, rule) in outbound::rules_by_context(ns, &candidates, namespaces, &root) {
                output.push(((ctx, rule), 1isize));
            }
        })
        .map(|((fqdn, _), (ctx, rule))| (fqdn, HostInput::Rule(ctx, rule)));

    // === per host: clusters (with subsets and policy), and what routes toward it need ===
    let host_outputs = ports_by_host
        .clone()
        .map(|(fqdn, row)| (fqdn, HostInput::Port(row)))
        .concat(rule_by_host)
        .reduce_named("translate: host clusters", |_fqdn: &String, input: &[(&HostInput, isize)], output| {
            let rows: Vec<&ServicePortRow> =
                input.iter().filter_map(|(i, _)| if let HostInput::Port(r) = i { Some(r) } else { None }).collect();
            if rows.is_empty() {
                return;
            }
            let mut rules: Vec<(&Context, Option<&DestinationRuleSpec>)> = input
                .iter()
                .filter_map(|(i, _)| if let HostInput::Rule(c, r) = i { Some((c, r.as_ref())) } else { None })
                .collect();
            if rules.first().is_none_or(|(c, _)| c.is_some()) {
                rules.insert(0, (&None, None));
            }
            // exportTo: a host exported to some namespaces only has its clusters there alone;
            // what routes toward it need is known in every context.
            let visible = outbound::host_visibility(&rows);
            for (ctx, cluster, own) in outbound::host_clusters(&rows, visible.as_ref(), &rules) {
                output.push((HostOutput::Cluster(ctx, Box::new(cluster), own), 1isize));
            }
            for (ctx, rule) in rules {
                output.push((HostOutput::Info(ctx.clone(), HostInfo::new(&rows, rule.cloned())), 1));
            }
        });
    let context_clusters = host_outputs
        .clone()
        .flat_map(|(_, out)| if let HostOutput::Cluster(ctx, c, _) = out { Some((ctx, *c)) } else { None });
    // Clusters without subset of hosts exported to some namespaces only: each namespace's copy
    // has its own assignment (there is no default one to share).
    let scoped_bases = host_outputs.clone().flat_map(|(_, out)| match out {
        HostOutput::Cluster(ctx, c, true) if c.is_eds() => Some((c.name(), translate::context_scope(&ctx, Scope::All))),
        _ => None,
    });
    // Clusters whose assignment depends on the proxy's locality, keyed by where their
    // addresses are (their own context's scope, else the shared one), with their context.
    // (With `failoverPriority`, their base cluster's name: where their endpoints' labels are.)
    let located_clusters = host_outputs.clone().flat_map(|(_, out)| match out {
        HostOutput::Cluster(ctx, c, own) => {
            let lb = c.locality_lb()?;
            let scope = translate::context_scope(&ctx, Scope::All);
            let at = if c.subset.is_some() || own { scope } else { Scope::All };
            let base = lb.by_labels().then(|| (c.base_name(), c.subset.clone()));
            Some(((at, c.name()), (ctx, lb, base)))
        }
        _ => None,
    });
    let prioritized_bases = located_clusters.clone().flat_map(|(_, (_, _, base))| base.map(|(b, _)| b)).distinct();
    // DNS clusters whose inline endpoints depend on the proxy's locality (the cluster itself
    // is then computed per locality of connected proxies, below).
    let dns_located = host_outputs.clone().flat_map(|(_, out)| match out {
        HostOutput::Cluster(ctx, c, _) => {
            let lb = c.inline_locality_lb()?;
            Some((ctx, (*c, lb)))
        }
        _ => None,
    });
    let cluster_rows = context_clusters.clone().flat_map(|(ctx, c)| ctx.is_none().then_some(c));
    let context_info = host_outputs
        .flat_map(|(fqdn, out)| if let HostOutput::Info(ctx, i) = out { Some((fqdn, ctx, i)) } else { None });
    // Routes toward a host read what the default context knows of it.
    let host_info = context_info.clone().flat_map(|(fqdn, ctx, info)| ctx.is_none().then_some((fqdn, info)));

    let clusters = context_clusters.clone().map(|(ctx, c): (Context, ClusterRow)| OutputRow::Resource {
        scope: translate::context_scope(&ctx, Scope::All),
        ty: ResourceType::Cluster,
        name: c.name(),
        body: c.encode(),
    });

    // Valid Istio that meshflow does not translate yet: one diagnostic per object and field
    // (each VirtualService as written, delegates included).
    let untranslated = raw_virtual_services
        .flat_map(|vs: VirtualService| {
            translate::route::untranslated(&vs)
                .into_iter()
                .map(move |f| Diagnostic::field(vs.object_key(), f))
                .collect::<Vec<_>>()
        })
        .concat(destination_rules.clone().flat_map(|dr: DestinationRule| {
            translate::cluster::untranslated(&dr)
                .into_iter()
                .map(move |f| Diagnostic::field(dr.object_key(), f))
                .collect::<Vec<_>>()
        }))
        .concat(service_entries.clone().flat_map(|se: ServiceEntry| {
            service_entry::untranslated(&se)
                .into_iter()
                .map(move |f| Diagnostic::field(se.object_key(), f))
                .collect::<Vec<_>>()
        }));

    // === VirtualServices → the VirtualService of each host, with its destinations ===
    let mesh_vs = virtual_services.clone().filter(outbound::applies_to_mesh);
    let vs_by_pattern = mesh_vs.clone().flat_map(|vs: VirtualService| {
        outbound::virtual_service_patterns(&vs).into_iter().map(move |p| (p, vs.clone())).collect::<Vec<_>>()
    });
    // As rules, a host's VirtualService depends on the proxy's namespace through `exportTo`.
    let host_by_pattern = patterns.map(|(p, (fqdn, _))| (p, fqdn));
    let vs_candidates =
        host_by_pattern.clone().join_map(vs_by_pattern, |pattern, fqdn: &String, vs: &VirtualService| {
            (fqdn.clone(), VsRank::new(pattern, vs))
        });
    let vs_markers = vs_candidates
        .clone()
        .flat_map(|(fqdn, rank)| rank.namespaces().into_iter().map(move |ns| (ns, fqdn.clone())).collect::<Vec<_>>())
        .join_map(class_namespaces.clone(), |ns, fqdn: &String, _| (fqdn.clone(), ns.clone()))
        .distinct();
    // Routes that depend on the proxy's source: the namespaces of connected proxies that a
    // `sourceNamespace` names, and the sidecar classes whose labels a `sourceLabels` selects
    // (through a label index: a label set keyed by its first pair, a class by each of its
    // pairs), per host that the VirtualService's patterns match.
    let source_namespaces = mesh_vs
        .clone()
        .flat_map(|vs: VirtualService| {
            let patterns = outbound::virtual_service_patterns(&vs);
            translate::route::source_namespaces(&vs)
                .into_iter()
                .flat_map(|ns| patterns.iter().map(move |p| (ns.clone(), p.clone())))
                .collect::<Vec<_>>()
        })
        .join_map(class_namespaces, |ns, pattern: &String, _| (pattern.clone(), ns.clone()))
        .join_map(host_by_pattern.clone(), |_, ns: &String, fqdn: &String| {
            (fqdn.clone(), VhostInput::SourceNamespace(ns.clone()))
        });
    let sidecar_classes_by_pair = class_labels.clone().flat_map(|(id, (kind, ns, labels))| {
        let pairs: Vec<_> = if kind == ProxyKind::Sidecar {
            labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        } else {
            Vec::new()
        };
        pairs.into_iter().map(move |pair| (pair, (id.clone(), ns.clone(), labels.clone()))).collect::<Vec<_>>()
    });
    let label_sets_by_pair = mesh_vs.clone().flat_map(|vs: VirtualService| {
        let patterns: Vec<String> = outbound::virtual_service_patterns(&vs).into_iter().collect();
        translate::route::source_label_sets(&vs)
            .into_iter()
            .filter_map(|set| {
                let first = set.iter().next().map(|(k, v)| (k.clone(), v.clone()))?;
                Some((first, (set.clone(), patterns.clone())))
            })
            .collect::<Vec<_>>()
    });
    let source_classes = label_sets_by_pair
        .join_map(
            sidecar_classes_by_pair,
            |_, (set, patterns): &(BTreeMap<String, String>, Vec<String>), class: &(String, String, Labels)| {
                let selected = translate::route::Source { namespace: None, labels: Some(&class.2) }.selects(set, None);
                patterns.iter().filter(|_| selected).map(|p| (p.clone(), class.clone())).collect::<Vec<_>>()
            },
        )
        .flat_map(|x| x)
        .join_map(host_by_pattern, |_, (id, ns, labels): &(String, String, Labels), fqdn: &String| {
            (fqdn.clone(), VhostInput::Class(id.clone(), ns.clone(), labels.clone()))
        });
    let vs_by_host = vs_candidates
        .map(|(fqdn, rank)| (fqdn, VsPick::Candidate(rank)))
        .concat(vs_markers.map(|(fqdn, ns)| (fqdn, VsPick::Namespace(ns))))
        .reduce_named("select: VirtualService", |_fqdn: &String, input: &[(&VsPick, isize)], output| {
            let mut ranks = Vec::new();
            let mut namespaces = Vec::new();
            for (i, _) in input {
                match i {
                    VsPick::Candidate(r) => ranks.push(r),
                    VsPick::Namespace(n) => namespaces.push(n.as_str()),
                }
            }
            for (ctx, key) in outbound::virtual_services_by_context(&ranks, namespaces) {
                output.push(((ctx, key), 1isize));
            }
        });
    let vs_destinations = virtual_services.clone().flat_map(|vs: VirtualService| {
        let key: ConfigKey = (vs.namespace.clone(), vs.name.clone());
        outbound::virtual_service_destinations(&vs).into_iter().map(move |d| (d, key.clone())).collect::<Vec<_>>()
    });
    let vs_context = virtual_services
        .clone()
        .map(|vs: VirtualService| ((vs.namespace.clone(), vs.name.clone()), VsInput::Object(vs)))
        .concat(vs_destinations.join_map(host_info.clone(), |dest, key: &ConfigKey, info: &HostInfo| {
            (key.clone(), VsInput::Destination(dest.clone(), info.clone()))
        }))
        .reduce_named("join: VirtualService destinations", |_key: &ConfigKey, input: &[(&VsInput, isize)], output| {
            let mut object = None;
            let mut destinations = DestinationMap::new();
            for (i, _) in input {
                match i {
                    VsInput::Object(vs) => object = Some(vs.clone()),
                    VsInput::Destination(d, info) => {
                        destinations.insert(d.clone(), info.clone());
                    }
                }
            }
            if let Some(vs) = object {
                output.push(((vs, destinations), 1isize));
            }
        });
    let missing = vs_context.clone().flat_map(|(_, (vs, dest))| outbound::missing_destinations(&vs, &dest));
    let no_routes =
        vs_by_host.clone().flat_map(
            |(fqdn, (ctx, key))| if key.is_none() { ctx.map(|ns| (fqdn, VhostInput::NoRoutes(ns))) } else { None },
        );
    let routes_by_host = vs_by_host.flat_map(|(fqdn, (ctx, key))| key.map(|k| (k, (fqdn, ctx)))).join_map(
        vs_context.clone(),
        |_key, (fqdn, ctx): &(String, Context), (vs, dest): &(VirtualService, DestinationMap)| {
            (fqdn.clone(), VhostInput::Routes(ctx.clone(), vs.clone(), dest.clone()))
        },
    );

    // === per host: virtual hosts ===
    let http_ports = host_ports.clone().filter(|row| row.protocol().is_http());
    // TCP-class ports and ports of unknown protocol (sniffed) get listeners of their own.
    let tcp_ports =
        host_ports.filter(|row| row.protocol() == translate::PortProtocol::Tcp || row.protocol().is_sniffed());
    let source_markers = source_namespaces.concat(source_classes).distinct();
    let tcp_inputs = routes_by_host.clone().concat(no_routes.clone()).concat(source_markers.clone());
    let host_vhosts = http_ports
        .clone()
        .map(|row| (row.fqdn(), VhostInput::Port(row)))
        .concat(context_info.map(|(fqdn, ctx, info)| (fqdn, VhostInput::Info(ctx, info))))
        .concat(routes_by_host)
        .concat(no_routes)
        .concat(source_markers)
        .reduce_named("translate: virtual hosts", |_fqdn: &String, input: &[(&VhostInput, isize)], output| {
            let mut rows = Vec::new();
            let mut infos = BTreeMap::new();
            let mut routes = BTreeMap::new();
            let mut source_namespaces = BTreeSet::new();
            let mut classes = Vec::new();
            for (i, _) in input {
                match i {
                    VhostInput::Port(r) => rows.push(r),
                    VhostInput::SourceNamespace(ns) => {
                        source_namespaces.insert(ns.as_str());
                    }
                    VhostInput::Class(id, namespace, labels) => {
                        classes.push(outbound::SourceClass { id, namespace, labels });
                    }
                    VhostInput::Info(ctx, h) => {
                        infos.insert(ctx.clone(), h);
                    }
                    VhostInput::Routes(ctx, vs, dest) => {
                        routes.insert(ctx.clone(), Some((vs, dest)));
                    }
                    VhostInput::NoRoutes(ns) => {
                        routes.insert(Some(ns.clone()), None);
                    }
                }
            }
            let vhosts = outbound::virtual_hosts_by_context(&rows, &infos, &routes, &source_namespaces, &classes);
            for (scope, route, vhost) in outbound::with_sniffed_routes(&rows, vhosts) {
                output.push(((scope, route, vhost), 1isize));
            }
        });
    let virtual_hosts =
        host_vhosts.clone().map(|(_, (scope, route, vhost))| OutputRow::VirtualHost { scope, route, vhost });
    // Ports of unknown protocol have their own (sniffing) listeners: they claim no shared one.
    let http_port_numbers =
        http_ports.clone().filter(|row| !row.protocol().is_sniffed()).map(|row| row.port.port).distinct();
    // Each port's listener for the sidecars that see a host of it (exportTo).
    let listeners = http_ports
        .clone()
        .filter(|row| !row.protocol().is_sniffed())
        .map(|row| (row.port.port, outbound::host_visibility(&[&row])))
        .distinct()
        .reduce_named("scope: HTTP listeners", |_port: &u16, input: &[(&Option<BTreeSet<String>>, isize)], output| {
            for scope in outbound::http_listener_scopes(input.iter().map(|(v, _)| *v)) {
                output.push((scope, 1isize));
            }
        })
        .map(|(port, scope)| OutputRow::Resource {
            scope,
            ty: ResourceType::Listener,
            name: translate::listener_name(port),
            body: translate::listener(port, None),
        });

    // === per host: TCP listeners; per port: the one that binds it ===
    let tcp_candidates = tcp_ports
        .map(|row| (row.fqdn(), VhostInput::Port(row)))
        .concat(tcp_inputs)
        .reduce_named("translate: tcp listeners", |_fqdn: &String, input: &[(&VhostInput, isize)], output| {
            let mut rows = Vec::new();
            let mut routes = BTreeMap::new();
            let mut source_namespaces = BTreeSet::new();
            let mut classes = Vec::new();
            for (i, _) in input {
                match i {
                    VhostInput::Port(r) => rows.push(r),
                    VhostInput::Routes(ctx, vs, dest) => {
                        routes.insert(ctx.clone(), Some((vs, dest)));
                    }
                    VhostInput::NoRoutes(ns) => {
                        routes.insert(Some(ns.clone()), None);
                    }
                    VhostInput::SourceNamespace(ns) => {
                        source_namespaces.insert(ns.as_str());
                    }
                    VhostInput::Class(id, namespace, labels) => {
                        classes.push(outbound::SourceClass { id, namespace, labels });
                    }
                    VhostInput::Info(..) => {}
                }
            }
            if rows.is_empty() {
                return;
            }
            for (scope, l) in outbound::tcp_listeners_by_context(&rows, &routes, &source_namespaces, &classes) {
                output.push(((scope, l), 1isize));
            }
        })
        .map(|(_, (scope, l))| {
            let claim =
                if scope == Scope::Sidecars { PortClaim::Tcp(l.clone()) } else { PortClaim::Variant(scope, l.clone()) };
            (l.port, claim)
        });
    let tcp_listeners = http_port_numbers
        .map(|port| (port, PortClaim::Http))
        .concat(tcp_candidates)
        .reduce_named("settle: listener ports", |port: &u16, input: &[(&PortClaim, isize)], output| {
            // Values arrive sorted: `Http` first when the port has HTTP services.
            if !input.iter().any(|(c, _)| matches!(c, PortClaim::Tcp(_))) {
                return;
            }
            let http = matches!(input[0].0, PortClaim::Http);
            let candidates = input.iter().filter_map(|(c, _)| if let PortClaim::Tcp(l) = c { Some(l) } else { None });
            let (winner, diagnostics) = outbound::settle_port(*port, http, candidates);
            if let Some(w) = winner {
                // A host not exported everywhere claims the port but serves only its variants.
                if !w.hidden {
                    let row = OutputRow::Resource {
                        scope: Scope::Sidecars,
                        ty: ResourceType::Listener,
                        name: w.name.clone(),
                        body: w.body.clone(),
                    };
                    output.push((row, 1isize));
                }
                // The winner's variants for a namespace's sidecars or a class.
                for (c, _) in input {
                    if let PortClaim::Variant(scope, l) = c
                        && l.fqdn == w.fqdn
                        && l.name == w.name
                    {
                        let row = OutputRow::Resource {
                            scope: scope.clone(),
                            ty: ResourceType::Listener,
                            name: l.name.clone(),
                            body: l.body.clone(),
                        };
                        output.push((row, 1isize));
                    }
                }
            }
            for d in diagnostics {
                output.push((OutputRow::Diagnostic(d), 1));
            }
        })
        .map(|(_, row)| row);

    // === endpoints of clusters without subset ===
    // Service ports by the key endpoint ports carry: the slice port named as the service port
    // gives the target port number.
    let ports_by_name = service_ports.clone().map(|row| {
        let key: PortKey = (row.namespace.clone(), row.service.clone(), row.port.name.clone(), row.port.protocol);
        (key, row.cluster_name())
    });

    let slice_addresses = slices.clone().flat_map(|s: EndpointSlice| slice_addresses(&s));
    let from_slices = ports_by_name
        .clone()
        .join_map(slice_addresses, |_key, cluster: &String, ep: &EndpointRow| (cluster.clone(), ep.clone()));

    // Core/v1 Endpoints count only for services that have no EndpointSlice (as in a cluster
    // where the EndpointSlice mirror is not running, or a hand-written config directory).
    let sliced: VecCollection<'s, u64, SvcKey> =
        slices.flat_map(|s: EndpointSlice| s.service_name.clone().map(|svc| (s.namespace.clone(), svc))).distinct();
    let endpoints_by_svc = endpoints.map(|e: Endpoints| ((e.namespace.clone(), e.name.clone()), e));
    let legacy = endpoints_by_svc.clone().antijoin(sliced.clone());
    let legacy_addresses = legacy.flat_map(|(_, e)| endpoints_addresses(&e));
    let from_endpoints = ports_by_name
        .join_map(legacy_addresses, |_key, cluster: &String, ep: &EndpointRow| (cluster.clone(), ep.clone()));

    // Selector services with neither: endpoints derived from the ready pods they select.
    // Label selectors are not equi-joins, so the join goes through a label index: a selector
    // service is keyed by one pair of its selector (the first in key order), a pod by each of
    // its labels; the full selector is checked on the pairs that meet. A pod change then costs
    // the services selecting on one of its labels, not every service of its namespace, and
    // the initial load costs pods × labels, not pods × services.
    let managed = sliced.concat(endpoints_by_svc.map(|(k, _)| k)).distinct();
    let selector_services = services
        .flat_map(|s: Service| {
            let selector = s.selector.clone()?;
            let ports = s.ports.iter().filter(|p| translate::PortProtocol::of(p).is_proxied()).cloned().collect();
            let row = SelectorService {
                name: s.name.clone(),
                selector,
                ports,
                publish_not_ready: s.publish_not_ready_addresses,
                hosts: Vec::new(),
            };
            (s.external_name.is_none()).then(|| ((s.namespace.clone(), s.name.clone()), row))
        })
        .antijoin(managed)
        .flat_map(|((ns, _), row)| {
            let (k, v) = row.selector.iter().next().map(|(k, v)| (k.clone(), v.clone()))?;
            Some(((ns, k, v), row))
        });
    let live_pods = pods.clone().filter(|p: &Pod| p.ip.is_some() && !p.terminal);
    let pod_labels: VecCollection<'s, u64, (LabelKey, String)> = live_pods.clone().flat_map(|p: Pod| {
        p.labels.into_iter().map(move |(k, v)| ((p.namespace.clone(), k, v), p.name.clone())).collect::<Vec<_>>()
    });
    let pods_by_name = live_pods.map(|p: Pod| ((p.namespace.clone(), p.name.clone()), p));
    let from_pods = selector_services
        .join_map(pod_labels.clone(), |(ns, _, _), svc: &SelectorService, pod: &String| {
            ((ns.clone(), pod.clone()), svc.clone())
        })
        .join(pods_by_name.clone())
        .flat_map(|((ns, _), (svc, pod))| pod_addresses(&ns, &svc, &pod));

    // ServiceEntry endpoints: STATIC `endpoints`, and the pods a `workloadSelector` selects
    // (through the same label index). Keyed by (cluster, entry namespace), they count for the
    // clusters of hosts that an entry of that namespace won, as istiod keys endpoints by host
    // and namespace.
    let entry_selectors = service_entries.clone().flat_map(|se: ServiceEntry| {
        let row = service_entry::selector(&se)?;
        let (k, v) = row.selector.iter().next().map(|(k, v)| (k.clone(), v.clone()))?;
        Some(((se.namespace.clone(), k, v), row))
    });
    let from_entry_pods = entry_selectors
        .join_map(pod_labels, |(ns, _, _), svc: &SelectorService, pod: &String| {
            ((ns.clone(), pod.clone()), svc.clone())
        })
        .join(pods_by_name)
        .flat_map(|((ns, _), (svc, pod))| {
            pod_addresses(&ns, &svc, &pod).into_iter().map(move |(c, ep)| ((c, ns.clone()), ep)).collect::<Vec<_>>()
        });
    // (Every context's clusters: an entry exported to some namespaces only has no default one.)
    let entry_owners = context_clusters
        .clone()
        .filter(|(_, c): &(Context, ClusterRow)| c.subset.is_none() && c.row.entry.is_some() && c.is_eds())
        .map(|(_, c)| (c.name(), c.row.namespace.clone()))
        .distinct();
    let from_entries = service_entries
        .flat_map(|se: ServiceEntry| service_entry::static_endpoints(&se))
        .concat(from_entry_pods)
        .semijoin(entry_owners)
        .map(|((cluster, _), ep)| (cluster, ep));

    let unlocated = from_slices.concat(from_endpoints).concat(from_pods).concat(from_entries);

    // === locality: a pod's endpoints are in its own (label) or its Node's locality ===
    let pods_on_nodes = pods.clone().flat_map(|p: Pod| {
        let on_node = pod_locality_label(&p.labels).is_none();
        p.node_name.clone().filter(|_| on_node).map(|n| (n, (p.namespace.clone(), p.name.clone())))
    });
    let pod_locality = pods
        .clone()
        .flat_map(|p: Pod| pod_locality_label(&p.labels).map(|l| ((p.namespace.clone(), p.name.clone()), l)))
        .concat(pods_on_nodes.join_map(nodes.map(|n: Node| (n.name, n.labels)), |_, pod, labels: &Labels| {
            (pod.clone(), node_locality(labels))
        }))
        .filter(|(_, l): &(_, String)| !l.is_empty());
    // (Also an output: the xDS server places a proxy that tells no locality by its Pod's.)
    let pod_localities = pod_locality.clone().map(|(pod, locality)| OutputRow::PodLocality { pod, locality });
    let by_pod = unlocated.clone().flat_map(|(c, ep): (String, EndpointRow)| ep.pod.clone().map(|p| (p, (c, ep))));
    let located = by_pod.clone().join_map(pod_locality.clone(), |_, (c, ep): &(String, EndpointRow), l: &String| {
        let mut ep = ep.clone();
        if ep.addr.locality.is_empty() {
            ep.addr.locality = l.clone();
        }
        (c.clone(), ep)
    });
    let base_endpoints = unlocated
        .filter(|(_, ep)| ep.pod.is_none())
        .concat(located)
        .concat(by_pod.antijoin(pod_locality.map(|(k, _)| k)).map(|(_, ce)| ce));

    // === endpoints of subset clusters ===
    // Only the endpoints of clusters that have subsets meet pod labels: a pod's labels decide
    // which subsets its endpoints belong to, so a relabelled pod moves between subset
    // assignments at the cost of the subsets of its services.
    // Subset clusters of a namespace's own rule get their own assignments in that namespace;
    // its clusters without subset share the default's (same name, same endpoints).
    let subsets_by_base = context_clusters.clone().flat_map(|(ctx, c): (Context, ClusterRow)| {
        let scope = translate::context_scope(&ctx, Scope::All);
        c.subset.clone().map(|s| (c.base_name(), ((scope, c.name()), s)))
    });
    let with_subsets = subsets_by_base.clone().map(|(base, _)| base).distinct();
    // (The endpoints of clusters whose `failoverPriority` compares labels meet them too.)
    let subset_candidates = base_endpoints.clone().semijoin(with_subsets.concat(prioritized_bases.clone()).distinct());
    let by_pod = subset_candidates
        .clone()
        .flat_map(|(cluster, ep): (String, EndpointRow)| ep.pod.clone().map(|pod| (pod, (cluster, ep.addr))));
    let labelled = by_pod
        .clone()
        .join_map(labels_by_pod.clone(), |_pod, (cluster, addr): &(String, EndpointAddr), labels: &Labels| {
            (cluster.clone(), (addr.clone(), labels.clone()))
        })
        .concat(by_pod.antijoin(labels_by_pod.clone().map(|(k, _)| k)).map(|(_, (c, a))| (c, (a, Labels::new()))))
        .concat(subset_candidates.flat_map(|(c, ep)| ep.pod.is_none().then_some((c, (ep.addr, ep.labels)))));
    let endpoint_labels = labelled.clone().semijoin(prioritized_bases).map(|(c, (a, l))| ((c, a), l));
    let from_subsets = labelled.join_map(
        subsets_by_base,
        |_base, (addr, labels): &(EndpointAddr, Labels), (cluster, subset): &((Scope, String), SubsetRef)| {
            outbound::subset_selects(subset, labels).then(|| (cluster.clone(), addr.clone()))
        },
    );
    let scoped_addresses =
        base_endpoints.clone().join_map(scoped_bases.clone(), |cluster, ep: &EndpointRow, scope: &Scope| {
            ((scope.clone(), cluster.clone()), ep.addr.clone())
        });
    let addresses = base_endpoints
        .map(|(cluster, ep)| ((Scope::All, cluster), ep.addr))
        .concat(from_subsets.flat_map(|x| x))
        .concat(scoped_addresses);

    // === locality: assignments relative to the proxy's locality ===
    // Only for clusters whose policy makes them depend on it (outlier detection or
    // `distribute`, locality LB not disabled), and only for the localities of connected
    // proxies: each such cluster's addresses are gathered once, then encoded once per
    // locality (the default context's) or per (locality, namespace) of connected proxies (a
    // namespace's own rule's).
    // With `failoverPriority`, each endpoint goes with its labels (its base cluster's; for a
    // subset cluster those the subset selects: one address may carry several label sets, from
    // several endpoints).
    type Base = Option<(String, Option<SubsetRef>)>;
    let located_addresses = addresses.clone().join_map(
        located_clusters.clone(),
        |(_, name), addr: &EndpointAddr, (ctx, lb, base): &(Context, LocalityLb, Base)| {
            ((ctx.clone(), name.clone(), lb.clone()), base.clone(), addr.clone())
        },
    );
    let prioritized_addresses = located_addresses
        .clone()
        .flat_map(|(key, base, addr)| base.map(|(base, subset)| ((base, addr), (key, subset))))
        .join_map(endpoint_labels, |(_, addr), (key, subset), labels: &Labels| {
            let selected = subset.as_ref().is_none_or(|s| outbound::subset_selects(s, labels));
            selected.then(|| (key.clone(), Some((addr.clone(), labels.clone()))))
        })
        .flat_map(|x| x);
    let located_inputs = located_addresses
        .flat_map(|(key, base, addr)| base.is_none().then_some((key, Some((addr, Labels::new())))))
        .concat(prioritized_addresses)
        .concat(located_clusters.map(|((_, name), (ctx, lb, _))| ((ctx, name, lb), None)))
        .reduce_named(
            "gather: located assignment endpoints",
            |_key, input: &[(&Option<(EndpointAddr, Labels)>, isize)], output| {
                if input[0].0.is_some() {
                    return;
                }
                let eps: Vec<(EndpointAddr, Labels)> = input[1..].iter().filter_map(|(a, _)| (*a).clone()).collect();
                output.push((eps, 1isize));
            },
        );
    // Where placed resources go, per (context, whether failoverPriority reads the labels): the
    // (locality, labels) of connected proxies (labels left out where nothing reads them, so
    // those are computed once per locality).
    let places = proxy_localities
        .flat_map(|l: ProxyLocality| {
            let plain = (l.locality.clone(), Labels::new());
            let labelled = (l.locality, l.labels);
            let ns = Some(l.namespace);
            [
                ((None, false), plain.clone()),
                ((ns.clone(), false), plain),
                ((None, true), labelled.clone()),
                ((ns, true), labelled),
            ]
        })
        .distinct();
    let located_assignments = located_inputs
        .map(|((ctx, name, lb), eps)| ((ctx, lb.by_labels()), (name, lb, eps)))
        .join_map(places.clone(), |(ctx, by_labels), (name, lb, eps), (locality, labels): &(String, Labels)| {
            let scope = translate::locality::located_scope(ctx.as_deref(), *by_labels, locality, labels);
            let refs: Vec<(&EndpointAddr, &Labels)> = eps.iter().map(|(a, l)| (a, l)).collect();
            let proxy = translate::locality::ProxyLabels { locality, labels };
            OutputRow::Resource {
                scope,
                ty: ResourceType::ClusterLoadAssignment,
                name: name.clone(),
                body: translate::locality::located_load_assignment(name, &refs, proxy, lb),
            }
        })
        // DNS clusters placed relative to the proxy: the Cluster itself.
        .concat(dns_located.map(|(ctx, (c, lb))| ((ctx, lb.by_labels()), (c, lb))).join_map(
            places,
            |(ctx, by_labels), (c, lb), (locality, labels): &(String, Labels)| {
                let scope = translate::locality::located_scope(ctx.as_deref(), *by_labels, locality, labels);
                let proxy = translate::locality::ProxyLabels { locality, labels };
                OutputRow::Resource {
                    scope,
                    ty: ResourceType::Cluster,
                    name: c.name(),
                    body: c.encode_located(proxy, lb),
                }
            },
        ));

    // Every cluster gets a load assignment, empty if it has no endpoint: Envoy keeps an EDS
    // cluster warming (and its own initialization waiting) until one arrives.
    let assignments = context_clusters
        .filter(|(ctx, c): &(Context, ClusterRow)| c.is_eds() && (ctx.is_none() || c.subset.is_some()))
        .map(|(ctx, c)| ((translate::context_scope(&ctx, Scope::All), c.name()), None))
        .concat(scoped_bases.map(|(name, scope)| ((scope, name), None)))
        .concat(addresses.map(|(cluster, addr)| (cluster, Some(addr))))
        .reduce_named(
            "translate: ClusterLoadAssignment",
            |(_, cluster): &(Scope, String), input: &[(&Option<EndpointAddr>, isize)], output| {
                // Values arrive sorted: the `None` marker first, present only if the cluster exists.
                if input[0].0.is_some() {
                    return;
                }
                let addrs: Vec<&EndpointAddr> = input[1..].iter().filter_map(|(a, _)| a.as_ref()).collect();
                output.push((translate::load_assignment(cluster, &addrs), 1isize));
            },
        )
        .map(|((scope, name), body)| OutputRow::Resource {
            scope,
            ty: ResourceType::ClusterLoadAssignment,
            name,
            body,
        });

    // === proxy classes: the Gateways that select each router class, and what binds to them ===
    // Gateways meet classes through a label index, as selector services meet pods: a Gateway
    // keyed by one pair of its selector (the empty pair for an empty selector), a class by
    // each of its labels and the empty pair; the full selector is checked where they meet.
    let router_labels = class_labels
        .clone()
        .flat_map(|(id, (kind, ns, labels))| (kind == ProxyKind::Router).then_some((id, (ns, labels))));
    let class_by_pair = router_labels.clone().flat_map(|(id, (ns, labels))| {
        views::class_index_keys(&labels)
            .into_iter()
            .map(move |k| (k, (id.clone(), ns.clone(), labels.clone())))
            .collect::<Vec<_>>()
    });
    let class_gateways = class_by_pair
        .join_map(
            gateways.map(|gw: Gateway| (views::gateway_index_key(&gw), gw)),
            |_, (id, ns, labels): &(String, String, Labels), gw: &Gateway| {
                views::gateway_selects(gw, labels).then(|| (id.clone(), (ns.clone(), gw.clone())))
            },
        )
        .flat_map(|x| x);
    // A VirtualService binds to a gateway proxy's Gateways when it is exported to the proxy's
    // namespace.
    let vs_by_gateway = virtual_services.flat_map(|vs: VirtualService| {
        let key: ConfigKey = (vs.namespace.clone(), vs.name.clone());
        let export_to = vs.spec.export_to.clone();
        gateway::bound_gateways(&vs).into_iter().map(move |g| (g, (key.clone(), export_to.clone()))).collect::<Vec<_>>()
    });
    let class_vs = class_gateways
        .clone()
        .map(|(id, (ns, gw))| (format!("{}/{}", gw.namespace, gw.name), (id, ns)))
        .join_map(vs_by_gateway, |_, (id, ns): &(String, String), (key, export_to): &(ConfigKey, Vec<String>)| {
            outbound::exported_to(export_to, &key.0, Some(ns)).then(|| (key.clone(), id.clone()))
        })
        .flat_map(|x| x)
        .distinct();
    let class_routes =
        class_vs.join_map(vs_context, |_, id: &String, (vs, dest): &(VirtualService, DestinationMap)| {
            (id.clone(), ClassInput::Routes(vs.clone(), dest.clone()))
        });
    let class_outputs = class_gateways
        .map(|(id, (_, gw))| (id, ClassInput::Gateway(gw)))
        .concat(class_routes)
        .reduce_named("translate: gateway class", |_id: &String, input: &[(&ClassInput, isize)], output| {
            let mut gws: Vec<&Gateway> = Vec::new();
            let mut vss: Vec<(&VirtualService, &DestinationMap)> = Vec::new();
            for (i, _) in input {
                match i {
                    ClassInput::Gateway(g) => gws.push(g),
                    ClassInput::Routes(vs, dest) => vss.push((vs, dest)),
                }
            }
            if gws.is_empty() {
                return;
            }
            // istiod merges a proxy's Gateways oldest first (creation time, name, namespace).
            gws.sort_by(|a, b| a.creation_order().cmp(&b.creation_order()));
            let out = gateway::gateway_resources(&gws, &vss);
            for (ty, name, body) in out.resources {
                output.push((ClassOutput::Resource(ty, name, body), 1isize));
            }
            for s in out.secrets {
                output.push((ClassOutput::Secret(s), 1));
            }
            for d in out.diagnostics {
                output.push((ClassOutput::Diagnostic(d), 1));
            }
        });
    let class_resources = class_outputs.clone().flat_map(|(id, out)| match out {
        ClassOutput::Resource(ty, name, body) => Some(OutputRow::Resource { scope: Scope::Class(id), ty, name, body }),
        _ => None,
    });
    let class_diagnostics =
        class_outputs.clone().flat_map(|(_, out)| if let ClassOutput::Diagnostic(d) = out { Some(d) } else { None });

    // === per class: the Secrets its listeners name, read from its own namespace ===
    let class_namespaces = router_labels.map(|(id, (ns, _))| (id, ns));
    let secret_refs = class_outputs
        .flat_map(|(id, out)| if let ClassOutput::Secret(s) = out { Some((id, s)) } else { None })
        .join_map(class_namespaces, |id, r: &SecretRef, ns: &String| (id.clone(), r.clone(), ns.clone()));
    let secrets_by_key = secrets.map(|s: Secret| ((s.namespace.clone(), s.name.clone()), s));
    let found = secret_refs
        .clone()
        .map(|(id, r, _)| ((r.namespace.clone(), r.name.clone()), (id, r.sds_name.clone())))
        .join_map(secrets_by_key.clone(), |_, key: &(String, String), s: &Secret| {
            (key.clone(), SecretInput::Found(s.clone()))
        });
    let fallback = secret_refs
        .clone()
        .flat_map(|(id, r, _)| {
            let name = r.ca_fallback()?.to_string();
            Some(((r.namespace.clone(), name), (id, r.sds_name.clone())))
        })
        .join_map(secrets_by_key, |_, key: &(String, String), s: &Secret| {
            (key.clone(), SecretInput::Fallback(s.clone()))
        });
    let class_secrets = secret_refs
        .map(|(id, r, ns)| ((id, r.sds_name.clone()), SecretInput::Ref(r, ns)))
        .concat(found)
        .concat(fallback)
        .reduce_named(
            "translate: class secrets",
            |_key: &(String, String), input: &[(&SecretInput, isize)], output| {
                let mut refs = Vec::new();
                let mut class_ns = "";
                for (i, _) in input {
                    if let SecretInput::Ref(r, ns) = i {
                        refs.push(r);
                        class_ns = ns;
                    }
                }
                let Some(r) = views::pick_ref(class_ns, &refs) else { return };
                let ns = class_ns;
                let (mut primary, mut fallback) = (None, None);
                for (i, _) in input {
                    match i {
                        SecretInput::Found(s) if s.namespace == r.namespace && s.name == r.name => primary = Some(s),
                        SecretInput::Fallback(s)
                            if s.namespace == r.namespace && Some(s.name.as_str()) == r.ca_fallback() =>
                        {
                            fallback = Some(s)
                        }
                        _ => {}
                    }
                }
                match views::class_secret(ns, r, primary, fallback) {
                    Ok(body) => output.push((Ok(body), 1isize)),
                    Err(d) => output.push((Err(d), 1)),
                }
            },
        );
    let secret_diagnostics = class_secrets.clone().flat_map(|(_, out): (_, Result<Vec<u8>, Diagnostic>)| out.err());
    let class_secrets = class_secrets.flat_map(|((id, sds_name), out)| {
        let body = out.ok()?;
        Some(OutputRow::Resource { scope: Scope::Class(id), ty: ResourceType::Secret, name: sds_name, body })
    });

    // A diagnostic that several classes report is reported once.
    let diagnostics = untranslated
        .concat(delegate_diagnostics)
        .concat(missing)
        .concat(class_diagnostics)
        .concat(secret_diagnostics)
        .distinct()
        .map(OutputRow::Diagnostic);
    // === proxyless gRPC clients: API listeners, route configs, clusters (see proxyless.rs) ===
    // Proxyless clients are served the default context.
    let default_vhosts = host_vhosts
        .flat_map(|(fqdn, (scope, route, vhost))| (scope == Scope::Sidecars).then_some((fqdn, (route, vhost))));
    // Proxyless clients are served hosts visible everywhere only.
    let public_http = http_ports.filter(|row| outbound::host_visibility(&[row]).is_none());
    let proxyless = super::proxyless::proxyless(classes, cluster_rows, public_http, default_vhosts);
    let output = clusters
        .concat(assignments)
        .concat(located_assignments)
        .concat(pod_localities)
        .concat(listeners)
        .concat(tcp_listeners)
        .concat(virtual_hosts)
        .concat(class_resources)
        .concat(class_secrets)
        .concat(class_inbound)
        .concat(proxyless)
        .concat(diagnostics);
    let inputs = Inputs {
        services: services_in,
        slices: slices_in,
        endpoints: endpoints_in,
        pods: pods_in,
        nodes: nodes_in,
        virtual_services: vs_in,
        destination_rules: dr_in,
        gateways: gateways_in,
        classes: classes_in,
        localities: localities_in,
        secrets: secrets_in,
        service_entries: se_in,
    };
    (inputs, output)
}
