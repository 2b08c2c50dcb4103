//! The endpoint graph: load assignments, the fourth of the engine's graphs (see
//! [`super::graphs`]).
//!
//! It reads the addresses of every assigned cluster and what the config graph knows of
//! clusters ([`ClusterFact`]): which get an assignment, which are placed by locality. A Pod or
//! slice change runs this graph (the unsliced graph only if a selector without slices may
//! select the Pod, the proxy graph only if a proxy class reads it), never the config graph's
//! routes and listeners. The addresses of clusters placed by locality go on to the located
//! graph ([`super::located`]).
//!
//! The addresses arrive derived: the driver gives an endpoint of a Pod the Pod's labels and
//! locality ([`super::pods`]), keys it by the clusters of its Service's port
//! ([`super::ports`]), and expands it into the subset and scoped clusters it counts for
//! ([`super::derived`]), so no row meets the Pods, the Services or the subsets in this graph.
//! What is left on a pod event's path is one arrangement and the reduce that encodes each
//! changed assignment.
//!
//! ```text
//! addresses (scope, cluster, addr), derived by the driver ─┐
//! assigned clusters (ClusterFact::Assignment) ─────────────┴─reduce per (scope, cluster)
//!                                                            ─▶ load assignments
//!   located clusters (ClusterFact::Located) ─join(their addresses) ─▶ located graph
//! ```

use differential_dataflow::VecCollection;
use differential_dataflow::trace::implementations::{ValBuilder, ValSpine};
use timely::dataflow::Scope as Graph;

use super::derived::Address;
use super::inputs::{graph_inputs, input};
use super::rows::{ClusterFact, LocatedBase, LocatedInput, Name, OutputRow, name};
use crate::translate::locality::LocalityLb;
use crate::translate::outbound::Context;
use crate::translate::{self, EndpointAddr, ResourceType, Scope};

/// Whether the endpoint graph reads this fact (the driver reads what derives from a base,
/// the located graph its DNS clusters, the unsliced graph entries' owners).
pub fn reads(fact: &ClusterFact) -> bool {
    matches!(fact, ClusterFact::Assignment(..) | ClusterFact::Located(..))
}

graph_inputs! {
    /// The endpoint graph's inputs.
    pub struct Inputs {
        /// The addresses of every assigned cluster ([`super::derived`]): the driver feeds only
        /// the rows a changed slice adds or drops ([`super::graphs::Graphs::update`]), so a
        /// pod's change costs its own addresses, not its whole slice's twice.
        pub addresses: Address,
        pub facts: ClusterFact,
    }
}

/// A load assignment's bytes in the assignments' trace: its merges copy every body they move,
/// a reference count here rather than an allocation and a copy.
type Body = std::sync::Arc<[u8]>;

/// Builds the endpoint graph.
pub fn build<'s>(scope: Graph<'s, u64>) -> (Inputs, Outputs<'s>) {
    let (addresses_in, addresses) = input::<Address>(&scope);
    let (facts_in, facts) = input::<ClusterFact>(&scope);

    let located_clusters = facts.clone().flat_map(|f| {
        if let ClusterFact::Located((scope, cluster), located) = f {
            Some(((scope, name(&cluster)), located))
        } else {
            None
        }
    });

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
    // context and policy. (With `failoverPriority`, the driver sends the located graph the
    // labels of their endpoints itself.)
    let located = by_cluster.clone().join_core(
        located_clusters.arrange_by_key_named("Arrange: located clusters"),
        |(_, cluster): &(Scope, Name),
         addr: &Option<EndpointAddr>,
         (ctx, lb, base): &(Context, LocalityLb, LocatedBase)| {
            addr.as_ref().map(|addr| {
                LocatedInput::Address((ctx.clone(), cluster.to_string(), lb.clone()), base.clone(), addr.clone())
            })
        },
    );

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

    let inputs = Inputs { addresses: addresses_in, facts: facts_in };
    (inputs, Outputs { rows: assignments, located })
}

/// What the endpoint graph outputs: its resources, and what the located graph reads.
pub struct Outputs<'s> {
    pub rows: VecCollection<'s, u64, OutputRow>,
    pub located: VecCollection<'s, u64, LocatedInput>,
}
