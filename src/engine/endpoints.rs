//! The endpoint graph: load assignments, the third of the engine's graphs (see
//! [`super::graphs`]).
//!
//! It reads endpoint rows, Pods, Services and ServiceEntries (for their ports and selectors)
//! and what the config graph knows of clusters ([`ClusterFact`]). A Pod or slice change runs
//! this graph (and the proxy graph, if a proxy class reads the Pod), never the config graph's
//! routes and listeners. The addresses of clusters placed by locality go on to the located
//! graph ([`super::located`]).
//!
//! The rows of EndpointSlices and core/v1 Endpoints arrive placed: the driver gives an
//! endpoint of a Pod the Pod's labels and locality ([`super::pods`]), so no row of theirs
//! meets the Pods in this graph. The rows this graph derives from Pods itself are placed by
//! one join with the Pods' placements; the driver feeds it only the Pods that a selector
//! without slices may select ([`super::pods::Gate`]).
//!
//! ```text
//! slice rows (ready addresses by (ns, svc, port name, proto), placed) ─────────join(ports by name)┐
//! endpoint rows (placed) ─antijoin(services with slices)─▶ ...same key ───────────────────────join┤
//! pods ─by label─▶ join(selector services without slices/endpoints, by one selector pair) ─┐      ├▶ (cluster, row)
//! pods ─by label─▶ join(entry workloadSelectors) ─▶ (cluster, entry ns) ───────────────────┴─join(placements by pod)┤
//!        ─semijoin(EDS clusters of hosts an entry of that ns won: ClusterFact::EntryOwner)                      │
//! service entries ─STATIC endpoints (labels)──────────────────────────────────────────────────────────────────────┘
//!   (cluster, row) ─join(subsets of that base: ClusterFact::Subset, the row's labels selected)─▶ (subset cluster, addr)
//!                  ─join(bases with failoverPriority)─▶ (cluster, addr) → labels
//!                  ─join(ClusterFact::ScopedBase: a host whose exportTo is not `*`)─▶ (scope, cluster, addr)
//!                     assigned clusters (ClusterFact::Assignment) ⊎ addresses ─reduce per (scope, cluster)
//!                                ─▶ load assignments
//!   located clusters (ClusterFact::Located) ─join(their addresses) ⊎ endpoint labels ─▶ located graph
//! placements ─▶ the Pods' localities (an output: where a proxy of that Pod is placed)
//! ```

use std::sync::Arc;

use differential_dataflow::VecCollection;
use differential_dataflow::trace::implementations::{ValBuilder, ValSpine};
use timely::dataflow::Scope as Graph;

use super::inputs::{graph_inputs, input};
use super::pods::{Placement, PodLabels, ServiceRow, SvcKey, first_pair};
use super::rows::{ClusterFact, LocatedBase, LocatedInput, OutputRow};
use crate::model::istio::ServiceEntry;
use crate::model::{Pod, Service};
use crate::translate::endpoint::{EndpointRow, PodKey, PortKey, SelectorService, pod_addresses, service_port_rows};
use crate::translate::locality::LocalityLb;
use crate::translate::outbound::{self, Context, SubsetRef};
use crate::translate::{self, EndpointAddr, ResourceType, Scope, service_entry};

/// (namespace, label key, label value): how selector services meet pods.
type LabelKey = (String, String, String);
/// A cluster's name inside this graph: every endpoint row is keyed by one, and the merges of
/// the arrangements copy it (a reference count, not an allocation).
type Name = Arc<str>;

fn name(s: &str) -> Name {
    s.into()
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
        /// The ready addresses of the EndpointSlices, placed ([`super::pods`]): the driver
        /// feeds only the rows a changed slice adds or drops ([`super::graphs::Graphs::update`]),
        /// so a pod's change costs its own rows, not its whole slice's twice.
        pub slice_rows: (PortKey, EndpointRow),
        /// The service each slice belongs to, once per slice.
        pub slice_services: SvcKey,
        /// The ready addresses of core/v1 Endpoints objects by service, placed, fed as the
        /// slices' are.
        pub endpoint_rows: ServiceRow,
        /// The service of each Endpoints object.
        pub endpoint_services: SvcKey,
        /// The Pods a selector without slices reads ([`super::pods::Gate`]), whole (shared
        /// with the driver): the pods by name, for selector services and entries.
        pub pods: Arc<Pod>,
        /// The same Pods' [`PodLabels`], fed only when they change.
        pub labelled_pods: PodLabels,
        /// Every Pod's [`Placement`], fed only when it changes.
        pub placements: (PodKey, Placement),
        pub service_entries: ServiceEntry,
        pub facts: ClusterFact,
    }
}

/// Builds the endpoint graph.
pub fn build<'s>(scope: Graph<'s, u64>) -> (Inputs, Outputs<'s>) {
    let (services_in, services) = input::<Service>(&scope);
    let (slice_rows_in, slice_rows) = input::<(PortKey, EndpointRow)>(&scope);
    let (slice_services_in, slice_services) = input::<SvcKey>(&scope);
    let (endpoint_rows_in, endpoint_rows) = input::<ServiceRow>(&scope);
    let (endpoint_services_in, endpoint_services) = input::<SvcKey>(&scope);
    let (pods_in, pods) = input::<Arc<Pod>>(&scope);
    let (labelled_pods_in, labelled_pods) = input::<PodLabels>(&scope);
    let (placements_in, placements) = input::<(PodKey, Placement)>(&scope);
    let (se_in, service_entries) = input::<ServiceEntry>(&scope);
    let (facts_in, facts) = input::<ClusterFact>(&scope);

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
                let key =
                    translate::endpoint::port_key(&row.namespace, &row.service, &row.port.name, row.port.protocol);
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
    let from_endpoints = endpoint_rows
        .antijoin(sliced.clone())
        .map(|(_, row)| row)
        .arrange_by_key_named("Arrange: endpoint rows by port")
        .join_core(ports_by_name, |_key, ep: &EndpointRow, cluster: &Name| Some((cluster.clone(), ep.clone())));

    // Selector services with neither: endpoints derived from the ready pods they select.
    // Label selectors are not equi-joins, so the join goes through a label index: a selector
    // service is keyed by one pair of its selector (the first in key order), a pod by each of
    // its labels; the full selector is checked on the pairs that meet. A pod change then costs
    // the services selecting on one of its labels, not every service of its namespace, and
    // the initial load costs pods × labels, not pods × services.
    let managed = sliced.concat(endpoint_services).distinct();
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
            let (k, v) = first_pair(&row.selector)?;
            Some(((ns, k, v), row))
        });
    // (The label index and the pods by name are arranged once, for services and entries.)
    let pod_labels = labelled_pods
        .filter(|p: &PodLabels| p.live)
        .flat_map(|p: PodLabels| {
            p.labels
                .iter()
                .map(|(k, v)| ((p.namespace.clone(), k.clone(), v.clone()), p.name.clone()))
                .collect::<Vec<_>>()
        })
        .arrange_by_key_named("Arrange: live pods by label");
    // (A Pod is shared, not copied, by the merges of this arrangement's batches.)
    let pods_by_name = pods
        .filter(|p: &Arc<Pod>| p.live())
        .map(|p: Arc<Pod>| ((p.namespace.clone(), p.name.clone()), p))
        .arrange_by_key_named("Arrange: live pods by name");
    let from_pods = selector_services
        .join_core(pod_labels.clone(), |(ns, _, _): &LabelKey, svc: &SelectorService, pod: &String| {
            Some(((ns.clone(), pod.clone()), svc.clone()))
        })
        .join_core(pods_by_name.clone(), |(ns, _): &SvcKey, svc: &SelectorService, pod: &Arc<Pod>| {
            pod_addresses(ns, svc, pod).into_iter().map(|(c, ep)| ((name(&c), None), ep)).collect::<Vec<_>>()
        });

    // ServiceEntry endpoints: STATIC `endpoints`, and the pods a `workloadSelector` selects
    // (through the same label index). Keyed by (cluster, entry namespace), they count for the
    // clusters of hosts that an entry of that namespace won, as istiod keys endpoints by host
    // and namespace.
    let entry_selectors = service_entries.clone().flat_map(|se: ServiceEntry| {
        let row = service_entry::selector(&se)?;
        let (k, v) = first_pair(&row.selector)?;
        Some(((se.namespace.clone(), k, v), row))
    });
    let from_entry_pods = entry_selectors
        .join_core(pod_labels, |(ns, _, _): &LabelKey, svc: &SelectorService, pod: &String| {
            Some(((ns.clone(), pod.clone()), svc.clone()))
        })
        .join_core(pods_by_name, |(ns, _): &SvcKey, svc: &SelectorService, pod: &Arc<Pod>| {
            pod_addresses(ns, svc, pod)
                .into_iter()
                .map(|(c, ep)| ((name(&c), Some(ns.clone())), ep))
                .collect::<Vec<_>>()
        });

    // The rows derived from Pods here are placed here: one join with the Pods' placements
    // yields, for each, the placed row and the unplaced one's retraction.
    let by_pod = from_pods
        .concat(from_entry_pods)
        .flat_map(|(tag, ep): ((Name, Option<String>), EndpointRow)| ep.pod.clone().map(|p| (p, (tag, ep))));
    let selected = by_pod
        .clone()
        .arrange_by_key_named("Arrange: selected endpoints by pod")
        .join_core(
            placements.clone().arrange_by_key_named("Arrange: placements by pod"),
            |_, (tag, ep): &((Name, Option<String>), EndpointRow), placement: &Placement| {
                let mut placed = ep.clone();
                placement.place(&mut placed);
                Some((tag.clone(), ep.clone(), placed))
            },
        )
        .explode(|(tag, ep, placed)| [((tag.clone(), placed), 1isize), ((tag, ep), -1)])
        .concat(by_pod.map(|(_, row)| row));
    let from_selected_pods = selected.clone().flat_map(|((c, ns), ep)| ns.is_none().then_some((c, ep)));
    let from_entry_pods = selected.flat_map(|((c, ns), ep)| ns.map(|ns| ((c, ns), ep)));

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

    let base_endpoints = from_slices.concat(from_endpoints).concat(from_selected_pods).concat(from_entries);
    // (Also an output: the xDS server places a proxy that tells no locality by its Pod's.)
    let pod_localities = placements.flat_map(|((ns, name), p): (PodKey, Placement)| {
        (!p.locality.is_empty()).then(|| OutputRow::PodLocality {
            pod: (ns.to_string(), name.to_string()),
            locality: p.locality.to_string(),
        })
    });

    // === endpoints of subset clusters ===
    // An endpoint's labels (its pod's, else its own) decide which subsets it belongs to, so a
    // relabelled pod moves between subset assignments at the cost of the subsets of its
    // services. Subset clusters of a namespace's own rule get their own assignments in that
    // namespace; its clusters without subset share the default's (same name, same endpoints).
    // (Base endpoints are arranged by cluster once, for these joins and the scoped one.)
    let base_by_cluster = base_endpoints.clone().arrange_by_key_named("Arrange: endpoints by cluster");
    let subsets_by_base = facts.clone().flat_map(|f| {
        if let ClusterFact::Subset(base, ((scope, cluster), subset)) = f {
            Some((name(&base), ((scope, name(&cluster)), subset)))
        } else {
            None
        }
    });
    let from_subsets = base_by_cluster.clone().join_core(
        subsets_by_base.arrange_by_key_named("Arrange: subsets by base"),
        |_base, ep: &EndpointRow, (cluster, subset): &((Scope, Name), SubsetRef)| {
            outbound::subset_selects(subset, &ep.labels).then(|| (cluster.clone(), ep.addr.clone()))
        },
    );
    // (The endpoints of clusters whose `failoverPriority` compares labels go with them.)
    let endpoint_labels = base_by_cluster.clone().join_core(
        prioritized_bases.arrange_by_self_named("Arrange: bases with failoverPriority"),
        |c: &Name, ep: &EndpointRow, _| Some(((c.to_string(), ep.addr.clone()), ep.labels.clone())),
    );
    let scoped_addresses = base_by_cluster.join_core(
        scoped_bases.arrange_by_key_named("Arrange: scoped bases"),
        |cluster, ep: &EndpointRow, scope: &Scope| Some(((scope.clone(), cluster.clone()), ep.addr.clone())),
    );
    let addresses = base_endpoints
        .map(|(cluster, ep)| ((Scope::All, cluster), ep.addr))
        .concat(from_subsets)
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
        endpoint_rows: endpoint_rows_in,
        endpoint_services: endpoint_services_in,
        pods: pods_in,
        labelled_pods: labelled_pods_in,
        placements: placements_in,
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
