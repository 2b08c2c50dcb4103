//! The endpoint graph: load assignments, the third of the engine's graphs (see
//! [`super::graphs`]).
//!
//! It reads Pods, EndpointSlices, Endpoints and Nodes, plus Services and ServiceEntries (for
//! their ports and selectors) and what the config graph knows of clusters ([`ClusterFact`]). A
//! Pod or slice change runs this graph (and the small proxy graph), never the config graph's
//! routes and listeners. The addresses of clusters placed by locality go on to the located
//! graph ([`super::located`]).
//!
//! ```text
//! slice rows (ready addresses by (ns, svc, port name, proto)) ──────────join(ports by name)┐
//! endpoints ─antijoin(services with slices)─▶ ...same key ─────────────────────────────join┤
//! pods ─by label─▶ join(selector services without slices/endpoints, by one selector pair) ┤▶ (cluster, addr, pod)
//! service entries ─STATIC endpoints (labels)──────────────┐                               │
//! pods ─by label─▶ join(entry workloadSelectors) ──────────┴▶ (cluster, entry ns)          │
//!        ─semijoin(EDS clusters of hosts an entry of that ns won: ClusterFact::EntryOwner)┘
//!   (cluster, addr, pod) ─join(pod → its `topology.istio.io/locality` label, else its Node's topology labels)
//!                        ─▶ the endpoint's locality (LocalityLbEndpoints group by it)
//!   (cluster, addr, pod|labels) ─semijoin(clusters with subsets or failoverPriority)─join(pod labels, else its own)
//!                                ─join(subsets: ClusterFact::Subset)─▶ (subset cluster, addr)
//!                                ─▶ (cluster, addr) → labels, for failoverPriority
//!                     assigned clusters (ClusterFact::Assignment) ⊎ addresses ─reduce per (scope, cluster)
//!                                ─▶ load assignments
//!                     (a host whose exportTo is not `*`: base endpoints ⋈ ClusterFact::ScopedBase: its own)
//!   located clusters (ClusterFact::Located) ─join(their addresses) ⊎ endpoint labels ─▶ located graph
//! ```

use std::sync::Arc;

use differential_dataflow::VecCollection;
use differential_dataflow::input::Input;
use differential_dataflow::trace::implementations::{ValBuilder, ValSpine};
use timely::dataflow::Scope as Graph;

use super::inputs::graph_inputs;
use super::rows::{ClusterFact, LocatedBase, LocatedInput, OutputRow};
use crate::model::istio::ServiceEntry;
use crate::model::k8s::Labels;
use crate::model::{Endpoints, Node, Pod, Service};
use crate::translate::endpoint::{
    EndpointRow, PodKey, PortKey, SelectorService, endpoints_addresses, node_locality, pod_addresses,
    pod_locality_label, service_port_rows,
};
use crate::translate::locality::LocalityLb;
use crate::translate::outbound::{self, Context, SubsetRef};
use crate::translate::{self, EndpointAddr, ResourceType, Scope, service_entry};

/// (namespace, service name)
type SvcKey = (String, String);
/// (namespace, label key, label value): how selector services meet pods.
type LabelKey = (String, String, String);
/// A cluster's name inside this graph: every endpoint row is keyed by one, and the merges of
/// the arrangements copy it (a reference count, not an allocation).
type Name = Arc<str>;

fn name(s: &str) -> Name {
    s.into()
}

/// What the endpoint graph reads of a Pod apart from its readiness and ports: its labels (for
/// subsets, selectors and its locality label), its Node (for its locality) and whether it is
/// live (has an IP and is not terminal). A readiness flip leaves it equal, so the driver feeds
/// the flip to the pods by name alone, and the label index, the labels by pod and the
/// localities see nothing.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct PodPlace {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    pub node_name: Option<String>,
    pub live: bool,
}

impl PodPlace {
    pub fn of(p: &Pod) -> PodPlace {
        PodPlace {
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            labels: p.labels.clone(),
            node_name: p.node_name.clone(),
            live: p.live(),
        }
    }

    fn key(&self) -> PodKey {
        (self.namespace.as_str().into(), self.name.as_str().into())
    }
}

/// Whether the endpoint graph reads this fact (DNS clusters placed by locality go to the
/// located graph only).
pub fn reads(fact: &ClusterFact) -> bool {
    !matches!(fact, ClusterFact::DnsLocated(..))
}

graph_inputs! {
    /// The endpoint graph's inputs.
    pub struct Inputs {
        pub services: Service,
        /// The ready addresses of the EndpointSlices ([`slice_addresses`]): the driver feeds
        /// only the rows a changed slice adds or drops ([`super::graphs::Graphs::update`]), so
        /// a pod's change costs its own rows, not its whole slice's twice.
        pub slice_rows: (PortKey, EndpointRow),
        /// The service each slice belongs to, once per slice.
        pub slice_services: SvcKey,
        pub endpoints: Endpoints,
        /// Every Pod, whole: the pods by name, for selector services and entries.
        pub pods: Pod,
        /// Every Pod's [`PodPlace`], fed only when it changes.
        pub pod_places: PodPlace,
        pub nodes: Node,
        pub service_entries: ServiceEntry,
        pub facts: ClusterFact,
    }
}

/// Builds the endpoint graph.
pub fn build<'s>(scope: Graph<'s, u64>) -> (Inputs, Outputs<'s>) {
    let (services_in, services) = scope.new_collection::<Service, isize>();
    let (slice_rows_in, slice_rows) = scope.new_collection::<(PortKey, EndpointRow), isize>();
    let (slice_services_in, slice_services) = scope.new_collection::<SvcKey, isize>();
    let (endpoints_in, endpoints) = scope.new_collection::<Endpoints, isize>();
    let (pods_in, pods) = scope.new_collection::<Pod, isize>();
    let (pod_places_in, pod_places) = scope.new_collection::<PodPlace, isize>();
    let (nodes_in, nodes) = scope.new_collection::<Node, isize>();
    let (se_in, service_entries) = scope.new_collection::<ServiceEntry, isize>();
    let (facts_in, facts) = scope.new_collection::<ClusterFact, isize>();

    let labels_by_pod =
        pod_places.clone().map(|p: PodPlace| (p.key(), p.labels)).arrange_by_key_named("Arrange: labels by pod");
    let scoped_bases = facts
        .clone()
        .flat_map(|f| if let ClusterFact::ScopedBase(base, scope) = f { Some((name(&base), scope)) } else { None });
    let located_clusters = facts.clone().flat_map(|f| {
        if let ClusterFact::Located((scope, cluster), located) = f {
            Some(((scope, name(&cluster)), located))
        } else {
            None
        }
    });
    let prioritized_bases =
        located_clusters.clone().flat_map(|(_, (_, _, base))| base.map(|(b, _)| name(&b))).distinct();

    // === endpoints of clusters without subset ===
    // Service ports by the key endpoint ports carry: the slice port named as the service port
    // gives the target port number.
    // (Arranged once, read by two joins.)
    let ports_by_name = services
        .clone()
        .flat_map(|s: Service| {
            let rows = service_port_rows(&s);
            rows.into_iter().map(|row| {
                let key: PortKey =
                    (row.namespace.clone(), row.service.clone(), row.port.name.clone(), row.port.protocol);
                (key, name(&row.cluster_name()))
            })
        })
        .arrange_by_key_named("Arrange: service ports by name");

    let from_slices = slice_rows
        .arrange_by_key_named("Arrange: slice rows by port")
        .join_core(ports_by_name.clone(), |_key, ep: &EndpointRow, cluster: &Name| Some((cluster.clone(), ep.clone())));

    // Core/v1 Endpoints count only for services that have no EndpointSlice (as in a cluster
    // where the EndpointSlice mirror is not running, or a hand-written config directory).
    let sliced: VecCollection<'s, u64, SvcKey> = slice_services.distinct();
    let endpoints_by_svc = endpoints.map(|e: Endpoints| ((e.namespace.clone(), e.name.clone()), e));
    let legacy = endpoints_by_svc.clone().antijoin(sliced.clone());
    let legacy_addresses = legacy.flat_map(|(_, e)| endpoints_addresses(&e));
    let from_endpoints = legacy_addresses
        .join_core(ports_by_name, |_key, ep: &EndpointRow, cluster: &Name| Some((cluster.clone(), ep.clone())));

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
    // (The label index and the pods by name are arranged once, for services and entries.)
    let pod_labels = pod_places
        .clone()
        .filter(|p: &PodPlace| p.live)
        .flat_map(|p: PodPlace| {
            p.labels.into_iter().map(move |(k, v)| ((p.namespace.clone(), k, v), p.name.clone())).collect::<Vec<_>>()
        })
        .arrange_by_key_named("Arrange: live pods by label");
    // (A Pod is shared, not copied, by the merges of this arrangement's batches.)
    let pods_by_name = pods
        .filter(Pod::live)
        .map(|p: Pod| ((p.namespace.clone(), p.name.clone()), Arc::new(p)))
        .arrange_by_key_named("Arrange: live pods by name");
    let from_pods = selector_services
        .join_core(pod_labels.clone(), |(ns, _, _): &LabelKey, svc: &SelectorService, pod: &String| {
            Some(((ns.clone(), pod.clone()), svc.clone()))
        })
        .join_core(pods_by_name.clone(), |(ns, _): &SvcKey, svc: &SelectorService, pod: &Arc<Pod>| {
            pod_addresses(ns, svc, pod).into_iter().map(|(c, ep)| (name(&c), ep)).collect::<Vec<_>>()
        });

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
        .join_core(pod_labels, |(ns, _, _): &LabelKey, svc: &SelectorService, pod: &String| {
            Some(((ns.clone(), pod.clone()), svc.clone()))
        })
        .join_core(pods_by_name, |(ns, _): &SvcKey, svc: &SelectorService, pod: &Arc<Pod>| {
            pod_addresses(ns, svc, pod).into_iter().map(|(c, ep)| ((name(&c), ns.clone()), ep)).collect::<Vec<_>>()
        });
    // (Every context's clusters: an entry exported to some namespaces only has no default one.)
    let entry_owners = facts
        .clone()
        .flat_map(|f| if let ClusterFact::EntryOwner(cluster, ns) = f { Some((name(&cluster), ns)) } else { None })
        .distinct();
    let from_entries = service_entries
        .flat_map(|se: ServiceEntry| {
            service_entry::static_endpoints(&se)
                .into_iter()
                .map(|((c, ns), ep)| ((name(&c), ns), ep))
                .collect::<Vec<_>>()
        })
        .concat(from_entry_pods)
        .semijoin(entry_owners)
        .map(|((cluster, _), ep)| (cluster, ep));

    let unlocated = from_slices.concat(from_endpoints).concat(from_pods).concat(from_entries);

    // === locality: a pod's endpoints are in its own (label) or its Node's locality ===
    let pods_on_nodes = pod_places.clone().flat_map(|p: PodPlace| {
        let on_node = pod_locality_label(&p.labels).is_none();
        p.node_name.clone().filter(|_| on_node).map(|n| (n, p.key()))
    });
    let pod_locality = pod_places
        .flat_map(|p: PodPlace| pod_locality_label(&p.labels).map(|l| (p.key(), l)))
        .concat(pods_on_nodes.join_map(nodes.map(|n: Node| (n.name, n.labels)), |_, pod, labels: &Labels| {
            (pod.clone(), node_locality(labels))
        }))
        .filter(|(_, l): &(_, String)| !l.is_empty());
    // (Also an output: the xDS server places a proxy that tells no locality by its Pod's.)
    let pod_localities = pod_locality
        .clone()
        .map(|((ns, name), locality)| OutputRow::PodLocality { pod: (ns.to_string(), name.to_string()), locality });
    let pod_locality = pod_locality.map(|(pod, l)| (pod, Arc::<str>::from(l)));
    // An endpoint of a pod with a locality is placed there: the join yields, for each such
    // endpoint, the placed row and the unplaced one's retraction (one join: a second join, or
    // an antijoin, for the retraction cost as much again on every pod event).
    let pod_locality_by_pod = pod_locality.arrange_by_key_named("Arrange: locality by pod");
    let by_pod_rows = unlocated.clone().flat_map(|(c, ep): (Name, EndpointRow)| ep.pod.clone().map(|p| (p, (c, ep))));
    let placed = by_pod_rows
        .clone()
        .arrange_by_key_named("Arrange: endpoints by pod")
        .join_core(pod_locality_by_pod, |_, (c, ep): &(Name, EndpointRow), l: &Arc<str>| {
            Some((c.clone(), ep.clone(), l.clone()))
        })
        .explode(|(c, ep, l)| {
            let mut located = ep.clone();
            if located.addr.locality.is_empty() {
                located.addr.locality = l;
            }
            [((c.clone(), located), 1isize), ((c, ep), -1)]
        });
    let base_endpoints =
        unlocated.filter(|(_, ep)| ep.pod.is_none()).concat(by_pod_rows.map(|(_, ce)| ce)).concat(placed);

    // === endpoints of subset clusters ===
    // Only the endpoints of clusters that have subsets meet pod labels: a pod's labels decide
    // which subsets its endpoints belong to, so a relabelled pod moves between subset
    // assignments at the cost of the subsets of its services.
    // Subset clusters of a namespace's own rule get their own assignments in that namespace;
    // its clusters without subset share the default's (same name, same endpoints).
    let subsets_by_base = facts.clone().flat_map(|f| {
        if let ClusterFact::Subset(base, ((scope, cluster), subset)) = f {
            Some((name(&base), ((scope, name(&cluster)), subset)))
        } else {
            None
        }
    });
    let with_subsets = subsets_by_base.clone().map(|(base, _)| base).distinct();
    // (The endpoints of clusters whose `failoverPriority` compares labels meet them too.)
    // (Base endpoints are arranged by cluster once, for this join and the scoped one below.)
    let base_by_cluster = base_endpoints.clone().arrange_by_key_named("Arrange: endpoints by cluster");
    let subset_bases = with_subsets
        .concat(prioritized_bases.clone())
        .distinct()
        .arrange_by_self_named("Arrange: clusters with subsets");
    let subset_candidates =
        base_by_cluster.clone().join_core(subset_bases, |c: &Name, ep: &EndpointRow, _| Some((c.clone(), ep.clone())));
    let by_pod_rows = subset_candidates
        .clone()
        .flat_map(|(cluster, ep): (Name, EndpointRow)| ep.pod.clone().map(|pod| (pod, (cluster, ep.addr))));
    // (As with the localities: a pod's labels replace the empty set, in one join.)
    let labelled = by_pod_rows
        .clone()
        .arrange_by_key_named("Arrange: subset candidates by pod")
        .join_core(labels_by_pod, |_, (c, a): &(Name, EndpointAddr), labels: &Labels| {
            Some((c.clone(), a.clone(), labels.clone()))
        })
        .explode(|(c, a, labels)| [((c.clone(), (a.clone(), labels)), 1isize), ((c, (a, Labels::new())), -1)])
        // (A pod without labels, or not known: an empty set.)
        .concat(by_pod_rows.map(|(_, (c, a))| (c, (a, Labels::new()))))
        .concat(subset_candidates.flat_map(|(c, ep)| ep.pod.is_none().then_some((c, (ep.addr, ep.labels)))));
    let endpoint_labels = labelled.clone().semijoin(prioritized_bases).map(|(c, (a, l))| ((c.to_string(), a), l));
    let from_subsets = labelled.join_map(
        subsets_by_base,
        |_base, (addr, labels): &(EndpointAddr, Labels), (cluster, subset): &((Scope, Name), SubsetRef)| {
            outbound::subset_selects(subset, labels).then(|| (cluster.clone(), addr.clone()))
        },
    );
    let scoped_addresses = base_by_cluster.join_core(
        scoped_bases.arrange_by_key_named("Arrange: scoped bases"),
        |cluster, ep: &EndpointRow, scope: &Scope| Some(((scope.clone(), cluster.clone()), ep.addr.clone())),
    );
    let addresses = base_endpoints
        .map(|(cluster, ep)| ((Scope::All, cluster), ep.addr))
        .concat(from_subsets.flat_map(|x| x))
        .concat(scoped_addresses);

    // Every cluster gets a load assignment, empty if it has no endpoint: Envoy keeps an EDS
    // cluster warming (and its own initialization waiting) until one arrives. (Arranged once,
    // for the assignments and for the located graph's join.)
    let by_cluster = facts
        .flat_map(|f| {
            if let ClusterFact::Assignment(scope, cluster) = f { Some(((scope, name(&cluster)), None)) } else { None }
        })
        .concat(addresses.map(|(cluster, addr)| (cluster, Some(addr))))
        .arrange_by_key_named("Arrange: translate: ClusterLoadAssignment");

    // === locality: what the located graph needs (see [`super::located`]) ===
    // The addresses of clusters whose assignment depends on the proxy's locality, with their
    // context and policy; and, with `failoverPriority`, the labels of their endpoints.
    let located = by_cluster
        .clone()
        .join_core(
            located_clusters.arrange_by_key_named("Arrange: located clusters"),
            |(_, cluster): &(Scope, Name),
             addr: &Option<EndpointAddr>,
             (ctx, lb, base): &(Context, LocalityLb, LocatedBase)| {
                addr.as_ref().map(|addr| {
                    LocatedInput::Address((ctx.clone(), cluster.to_string(), lb.clone()), base.clone(), addr.clone())
                })
            },
        )
        .concat(endpoint_labels.map(|(key, labels)| LocatedInput::Labels(key, labels)));

    let assignments = by_cluster
        .reduce_abelian::<_, ValBuilder<_, _, _, _>, ValSpine<(Scope, Name), Vec<u8>, _, _>, _, _>(
            "translate: ClusterLoadAssignment",
            |(_, cluster): &(Scope, Name), input: &[(&Option<EndpointAddr>, isize)], output| {
                // Values arrive sorted: the `None` marker first, present only if the cluster exists.
                if input[0].0.is_some() {
                    return;
                }
                let addrs: Vec<&EndpointAddr> = input[1..].iter().filter_map(|(a, _)| a.as_ref()).collect();
                output.push((translate::load_assignment(cluster, &addrs), 1isize));
            },
            |vec, key, upds| {
                vec.clear();
                vec.extend(upds.drain(..).map(|(v, t, r)| ((key.clone(), v), t, r)));
            },
        )
        .as_collection(|(scope, cluster): &(Scope, Name), body: &Vec<u8>| OutputRow::Resource {
            scope: scope.clone(),
            ty: ResourceType::ClusterLoadAssignment,
            name: cluster.to_string(),
            body: body.clone(),
        });

    let output = assignments.concat(pod_localities);
    let inputs = Inputs {
        services: services_in,
        slice_rows: slice_rows_in,
        slice_services: slice_services_in,
        endpoints: endpoints_in,
        pods: pods_in,
        pod_places: pod_places_in,
        nodes: nodes_in,
        service_entries: se_in,
        facts: facts_in,
    };
    (inputs, Outputs { rows: output, located })
}

/// What the endpoint graph outputs: its resources, and what the located graph reads.
pub struct Outputs<'s> {
    pub rows: VecCollection<'s, u64, OutputRow>,
    pub located: VecCollection<'s, u64, LocatedInput>,
}
