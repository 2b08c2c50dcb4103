//! The unsliced graph: the endpoints of clusters that no EndpointSlice serves, the third of
//! the engine's graphs (see [`super::graphs`]). It hands them to the endpoint graph
//! ([`super::endpoints`]) beside the slices' rows.
//!
//! In a cluster every selector Service has slices, so this graph holds little and rarely
//! runs: a readiness flip or a new Pod of a sliced Service (the churn of a mesh) runs the
//! endpoint graph alone, not these ~60 operators. It runs when core/v1 Endpoints rows change,
//! when a Service or ServiceEntry changes, when a slice of a Service comes or goes, and when a
//! Pod that one of its selectors may select changes (the driver's [`super::pods::Gate`]
//! feeds only those Pods, with their placements).
//!
//! ```text
//! endpoint rows (placed) ─antijoin(services with slices)─join(ports by name)──────────────────────┐
//! pods ─by label─▶ join(selector services without slices/endpoints, by one selector pair) ─┐       │
//! pods ─by label─▶ join(entry workloadSelectors) ─▶ (cluster, entry ns) ───────────────────┴─join(placements by pod)┤
//!        ─semijoin(EDS clusters of hosts an entry of that ns won: ClusterFact::EntryOwner)                        │
//! service entries ─STATIC endpoints (labels)──────────────────────────────────────────────────────────────────────┤
//!                                                              (cluster, row) ─▶ the endpoint graph ◀─────────────┘
//! ```

use std::sync::Arc;

use differential_dataflow::VecCollection;
use timely::dataflow::Scope as Graph;

use super::inputs::{graph_inputs, input};
use super::pods::{Placement, PodLabels, ServiceRow, SvcKey, first_pair};
use super::ports::port_clusters;
use super::rows::{ClusterFact, Name, name};
use crate::model::istio::ServiceEntry;
use crate::model::{Pod, Service};
use crate::translate::endpoint::{EndpointRow, PodKey, SelectorService, pod_addresses};
use crate::translate::{self, service_entry};

/// (namespace, label key, label value): how selector services meet pods.
type LabelKey = (String, String, String);

/// Whether the unsliced graph reads this fact.
pub fn reads(fact: &ClusterFact) -> bool {
    matches!(fact, ClusterFact::EntryOwner(..))
}

graph_inputs! {
    /// The unsliced graph's inputs.
    pub struct Inputs {
        pub services: Service,
        /// The service each slice belongs to, once per slice.
        pub slice_services: SvcKey,
        /// The ready addresses of core/v1 Endpoints objects by service, placed by the driver
        /// ([`super::pods`]), fed as the rows a changed object adds or drops.
        pub endpoint_rows: ServiceRow,
        /// The service of each Endpoints object.
        pub endpoint_services: SvcKey,
        /// The Pods a selector without slices reads ([`super::pods::Gate`]), whole (shared
        /// with the driver): the pods by name, for selector services and entries.
        pub pods: Arc<Pod>,
        /// The same Pods' [`PodLabels`], fed only when they change.
        pub labelled_pods: PodLabels,
        /// The same Pods' [`Placement`]s, fed only when they change.
        pub placements: (PodKey, Placement),
        pub service_entries: ServiceEntry,
        /// The `EntryOwner` facts of the config graph.
        pub facts: ClusterFact,
    }
}

/// Builds the unsliced graph: its output is every endpoint row of a cluster that is not a
/// slice's, keyed by cluster name.
pub fn build<'s>(scope: Graph<'s, u64>) -> (Inputs, VecCollection<'s, u64, (Name, EndpointRow)>) {
    let (services_in, services) = input::<Service>(&scope);
    let (slice_services_in, slice_services) = input::<SvcKey>(&scope);
    let (endpoint_rows_in, endpoint_rows) = input::<ServiceRow>(&scope);
    let (endpoint_services_in, endpoint_services) = input::<SvcKey>(&scope);
    let (pods_in, pods) = input::<Arc<Pod>>(&scope);
    let (labelled_pods_in, labelled_pods) = input::<PodLabels>(&scope);
    let (placements_in, placements) = input::<(PodKey, Placement)>(&scope);
    let (se_in, service_entries) = input::<ServiceEntry>(&scope);
    let (facts_in, facts) = input::<ClusterFact>(&scope);

    // Core/v1 Endpoints count only for services that have no EndpointSlice (as in a cluster
    // where the EndpointSlice mirror is not running, or a hand-written config directory).
    let ports_by_name = services.clone().flat_map(|s: Service| port_clusters(&s));
    let sliced: VecCollection<'s, u64, SvcKey> = slice_services.distinct();
    let from_endpoints = endpoint_rows
        .antijoin(sliced.clone())
        .map(|(_, row)| row)
        .arrange_by_key_named("Arrange: endpoint rows by port")
        .join_core(ports_by_name.arrange_by_key_named("Arrange: service ports by name"), |_key, ep, cluster: &Name| {
            Some((cluster.clone(), ep.clone()))
        });

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
            placements.arrange_by_key_named("Arrange: placements by pod"),
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

    let output = from_endpoints.concat(from_selected_pods).concat(from_entries);
    let inputs = Inputs {
        services: services_in,
        slice_services: slice_services_in,
        endpoint_rows: endpoint_rows_in,
        endpoint_services: endpoint_services_in,
        pods: pods_in,
        labelled_pods: labelled_pods_in,
        placements: placements_in,
        service_entries: se_in,
        facts: facts_in,
    };
    (inputs, output)
}
