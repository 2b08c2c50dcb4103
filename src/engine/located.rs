//! The located graph: assignments (and DNS clusters) placed relative to the proxy's locality,
//! the last of the engine's graphs (see [`super::graphs`]).
//!
//! Only clusters whose policy makes balancing depend on the proxy's locality (outlier detection
//! or `distribute`, locality LB not disabled) come here, so in a mesh without such policies
//! this graph never runs, and a Pod change elsewhere does not run it.
//!
//! ```text
//! addresses of located clusters (endpoint graph) ─with failoverPriority: ⋈ their labels─┐
//! located clusters (ClusterFact::Located) ─────────────────────────────────────────────┴─reduce per
//!     (context, cluster)─▶ address list ─⋈ (locality, labels) of connected proxies
//!     ─▶ Scope::Locality, LocalityIn (priorities/weights per locality), Prioritized, PrioritizedIn
//! DNS clusters placed by locality (ClusterFact::DnsLocated) ─⋈ the same places─▶ the Cluster per place
//! ```

use differential_dataflow::VecCollection;
use timely::dataflow::Scope as Graph;

use super::inputs::{graph_inputs, input};
use super::rows::{ClusterFact, LocatedInput, OutputRow};
use crate::model::k8s::Labels;
use crate::model::proxy::ProxyLocality;
use crate::translate::locality::LocalityLb;
use crate::translate::outbound::{self, ClusterRow, Context};
use crate::translate::{self, EndpointAddr, ResourceType};

graph_inputs! {
    /// The located graph's inputs.
    pub struct Inputs {
        pub located: LocatedInput,
        /// The `Located` and `DnsLocated` facts of the config graph.
        pub facts: ClusterFact,
        pub localities: ProxyLocality,
    }
}

/// Whether the located graph reads this fact.
pub fn reads(fact: &ClusterFact) -> bool {
    matches!(fact, ClusterFact::Located(..) | ClusterFact::DnsLocated(..))
}

/// Builds the located graph.
pub fn build<'s>(scope: Graph<'s, u64>) -> (Inputs, VecCollection<'s, u64, OutputRow>) {
    let (located_in, located) = input::<LocatedInput>(&scope);
    let (facts_in, facts) = input::<ClusterFact>(&scope);
    let (localities_in, proxy_localities) = input::<ProxyLocality>(&scope);
    let located_clusters =
        facts.clone().flat_map(|f| if let ClusterFact::Located(at, located) = f { Some((at, located)) } else { None });
    let dns_located =
        facts.flat_map(|f| if let ClusterFact::DnsLocated(ctx, c, lb) = f { Some((ctx, *c, lb)) } else { None });
    let located_addresses = located.clone().flat_map(|i| match i {
        LocatedInput::Address(key, base, addr) => Some((key, base, addr)),
        LocatedInput::Labels(..) => None,
    });
    let endpoint_labels = located.flat_map(|i| match i {
        LocatedInput::Labels(key, labels) => Some((key, labels)),
        LocatedInput::Address(..) => None,
    });

    // === locality: assignments relative to the proxy's locality ===
    // Only for clusters whose policy makes them depend on it (outlier detection or
    // `distribute`, locality LB not disabled), and only for the localities of connected
    // proxies: each such cluster's addresses are gathered once, then encoded once per
    // locality (the default context's) or per (locality, namespace) of connected proxies (a
    // namespace's own rule's).
    // With `failoverPriority`, each endpoint goes with its labels (its base cluster's; for a
    // subset cluster those the subset selects: one address may carry several label sets, from
    // several endpoints).
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
        .distinct()
        .arrange_by_key();
    type Place = (Context, bool);
    let located_assignments = located_inputs
        .map(|((ctx, name, lb), eps)| ((ctx, lb.by_labels()), (name, lb, eps)))
        .join_core(
            places.clone(),
            |(ctx, by_labels): &Place, (name, lb, eps), (locality, labels): &(String, Labels)| {
                let scope = translate::locality::located_scope(ctx.as_deref(), *by_labels, locality, labels);
                let refs: Vec<(&EndpointAddr, &Labels)> = eps.iter().map(|(a, l)| (a, l)).collect();
                let proxy = translate::locality::ProxyLabels { locality, labels };
                Some(OutputRow::Resource {
                    scope,
                    ty: ResourceType::ClusterLoadAssignment,
                    name: name.clone(),
                    body: translate::locality::located_load_assignment(name, &refs, proxy, lb).into(),
                })
            },
        )
        // DNS clusters placed relative to the proxy: the Cluster itself.
        .concat(dns_located.map(|(ctx, c, lb)| ((ctx, lb.by_labels()), (c, lb))).join_core(
            places,
            |(ctx, by_labels): &Place, (c, lb): &(ClusterRow, LocalityLb), (locality, labels): &(String, Labels)| {
                let scope = translate::locality::located_scope(ctx.as_deref(), *by_labels, locality, labels);
                let proxy = translate::locality::ProxyLabels { locality, labels };
                Some(OutputRow::Resource {
                    scope,
                    ty: ResourceType::Cluster,
                    name: c.name(),
                    body: c.encode_located(proxy, lb).into(),
                })
            },
        ));

    let inputs = Inputs { located: located_in, facts: facts_in, localities: localities_in };
    (inputs, located_assignments)
}
