//! The endpoint graph: load assignments, the fourth of the engine's graphs (see
//! [`super::graphs`]).
//!
//! It reads the rows of EndpointSlices (keyed by cluster), the rows of clusters no slice
//! serves (from the unsliced graph, [`super::unsliced`]) and what the config graph knows of
//! clusters ([`ClusterFact`]). A Pod or slice change runs this graph (the unsliced graph
//! only if a selector without slices may select the Pod, the proxy graph only if a proxy class
//! reads it), never the config graph's routes and listeners. The addresses of clusters placed
//! by locality go on to the located graph ([`super::located`]).
//!
//! The rows of EndpointSlices arrive placed and keyed: the driver gives an endpoint of a Pod the
//! Pod's labels and locality ([`super::pods`]), and keys it by the clusters of its Service's
//! port ([`super::ports`]), so no row meets the Pods or the Services in this graph.
//!
//! ```text
//! slice rows (ready addresses, placed, keyed by cluster) ─┐
//! rows of clusters no slice serves (unsliced graph) ──────┴▶ (cluster, row)
//!   (cluster, row) ─join(what derives from that base, one arrangement:
//!                        subsets (ClusterFact::Subset) ─the row's labels selected─▶ (subset cluster, addr)
//!                        scopes (ClusterFact::ScopedBase: exportTo not `*`) ─▶ (scope, cluster, addr)
//!                        failoverPriority (ClusterFact::Prioritized) ─▶ (cluster, addr) → labels)
//!                     assigned clusters (ClusterFact::Assignment) ⊎ addresses ─reduce per (scope, cluster)
//!                                ─▶ load assignments
//!   located clusters (ClusterFact::Located) ─join(their addresses) ⊎ endpoint labels ─▶ located graph
//! ```

use differential_dataflow::VecCollection;
use differential_dataflow::trace::implementations::{ValBuilder, ValSpine};
use serde::{Deserialize, Serialize};
use timely::dataflow::Scope as Graph;

use super::inputs::{graph_inputs, input};
use super::rows::{ClusterFact, LocatedBase, LocatedInput, Name, OutputRow, name};
use crate::model::k8s::Labels;
use crate::translate::endpoint::EndpointRow;
use crate::translate::locality::LocalityLb;
use crate::translate::outbound::{self, Context, SubsetRef};
use crate::translate::{self, EndpointAddr, ResourceType, Scope};

/// Whether the endpoint graph reads this fact (DNS clusters placed by locality go to the
/// located graph only, entries' owners to the unsliced graph).
pub fn reads(fact: &ClusterFact) -> bool {
    !matches!(fact, ClusterFact::DnsLocated(..) | ClusterFact::EntryOwner(..))
}

graph_inputs! {
    /// The endpoint graph's inputs.
    pub struct Inputs {
        /// The ready addresses of the EndpointSlices, placed ([`super::pods`]) and keyed by
        /// their clusters ([`super::ports`]): the driver feeds only the rows a changed slice adds
        /// or drops ([`super::graphs::Graphs::update`]), so a pod's change costs its own rows,
        /// not its whole slice's twice.
        pub slice_rows: (Name, EndpointRow),
        /// The rows of clusters no slice serves, from the unsliced graph.
        pub unsliced: (Name, EndpointRow),
        pub facts: ClusterFact,
    }
}

/// What a base cluster's endpoints also count for (see [`build`]).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum Derived {
    /// A subset cluster (scope, name) of the base.
    Subset((Scope, Name), SubsetRef),
    /// The base's copy in this scope (its host is not exported everywhere).
    Scoped(Scope),
    /// The base's `failoverPriority` compares its endpoints' labels.
    Prioritized,
}

/// What the join of base endpoints with [`Derived`] yields.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum DerivedRow {
    Address((Scope, Name), EndpointAddr),
    Labels((String, EndpointAddr), Labels),
}

/// A load assignment's bytes in the assignments' trace: its merges copy every body they move,
/// a reference count here rather than an allocation and a copy.
type Body = std::sync::Arc<[u8]>;

/// Builds the endpoint graph.
pub fn build<'s>(scope: Graph<'s, u64>) -> (Inputs, Outputs<'s>) {
    let (slice_rows_in, slice_rows) = input::<(Name, EndpointRow)>(&scope);
    let (unsliced_in, unsliced) = input::<(Name, EndpointRow)>(&scope);
    let (facts_in, facts) = input::<ClusterFact>(&scope);

    let located_clusters = facts.clone().flat_map(|f| {
        if let ClusterFact::Located((scope, cluster), located) = f {
            Some(((scope, name(&cluster)), located))
        } else {
            None
        }
    });

    // === endpoints of clusters without subset ===
    let base_endpoints = slice_rows.concat(unsliced);

    // === what else a base cluster's endpoints make ===
    // Met in one join (one arrangement of the derived clusters by base, one pass of each
    // endpoint row):
    // - its subset clusters': an endpoint the subset's labels (its pod's, else its own)
    //   select, so a relabelled pod moves between subset assignments at the cost of the
    //   subsets of its services. Subset clusters of a namespace's own rule get their own
    //   assignments in that namespace; its clusters without subset share the default's;
    // - with `exportTo` not `*` (a scoped base), each scope's copy of the base cluster's;
    // - with `failoverPriority`, its labels, for the located graph.
    let derived_by_base = facts
        .clone()
        .flat_map(|f| match f {
            ClusterFact::Subset(base, ((scope, cluster), subset)) => {
                Some((name(&base), Derived::Subset((scope, name(&cluster)), subset)))
            }
            ClusterFact::ScopedBase(base, scope) => Some((name(&base), Derived::Scoped(scope))),
            ClusterFact::Prioritized(base) => Some((name(&base), Derived::Prioritized)),
            _ => None,
        })
        .arrange_by_key_named("Arrange: derived clusters by base");
    let derived = base_endpoints.clone().arrange_by_key_named("Arrange: endpoints by cluster").join_core(
        derived_by_base,
        |base: &Name, ep: &EndpointRow, derived: &Derived| match derived {
            Derived::Subset(cluster, subset) => outbound::subset_selects(subset, &ep.labels)
                .then(|| DerivedRow::Address(cluster.clone(), ep.addr.clone())),
            Derived::Scoped(scope) => Some(DerivedRow::Address((scope.clone(), base.clone()), ep.addr.clone())),
            Derived::Prioritized => Some(DerivedRow::Labels((base.to_string(), ep.addr.clone()), ep.labels.clone())),
        },
    );
    let endpoint_labels = derived.clone().flat_map(|row| match row {
        DerivedRow::Labels(key, labels) => Some(LocatedInput::Labels(key, labels)),
        DerivedRow::Address(..) => None,
    });
    let addresses = base_endpoints.map(|(cluster, ep)| ((Scope::All, cluster), ep.addr)).concat(derived.flat_map(
        |row| match row {
            DerivedRow::Address(cluster, addr) => Some((cluster, addr)),
            DerivedRow::Labels(..) => None,
        },
    ));

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
        .concat(endpoint_labels);

    let assignments = by_cluster
        .reduce_abelian::<_, ValBuilder<_, _, _, _>, ValSpine<(Scope, Name), Body, _, _>, _, _>(
            "translate: ClusterLoadAssignment",
            |(_, cluster): &(Scope, Name), input: &[(&Option<EndpointAddr>, isize)], output| {
                // Values arrive sorted: the `None` marker first, present only if the cluster exists.
                if input[0].0.is_some() {
                    return;
                }
                let addrs: Vec<&EndpointAddr> = input[1..].iter().filter_map(|(a, _)| a.as_ref()).collect();
                output.push((Body::from(translate::load_assignment(cluster, &addrs)), 1isize));
            },
            |vec, key, upds| {
                vec.clear();
                vec.extend(upds.drain(..).map(|(v, t, r)| ((key.clone(), v), t, r)));
            },
        )
        .as_collection(|(scope, cluster): &(Scope, Name), body: &Body| OutputRow::Resource {
            scope: scope.clone(),
            ty: ResourceType::ClusterLoadAssignment,
            name: cluster.to_string(),
            body: body.to_vec(),
        });

    let inputs = Inputs { slice_rows: slice_rows_in, unsliced: unsliced_in, facts: facts_in };
    (inputs, Outputs { rows: assignments, located })
}

/// What the endpoint graph outputs: its resources, and what the located graph reads.
pub struct Outputs<'s> {
    pub rows: VecCollection<'s, u64, OutputRow>,
    pub located: VecCollection<'s, u64, LocatedInput>,
}
