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
//!
//! ```text
//! addresses (scope, cluster, addr), derived by the driver ─┐
//! assigned and located clusters (ClusterFact) ─────────────┴─▶ assignments (one operator)
//!     ─▶ load assignments; addresses of located clusters ─▶ located graph
//! ```
//!
//! The graph is one operator, [`Assignments`], run by the driver without timely ([`Graph`]),
//! that keeps each cluster's sorted address list
//! and its last encoding, patches the list with the addresses that came and went at a time, and
//! re-encodes the clusters it touched. Differential's `reduce` did this job before: it
//! replayed the history of each changed key from its arrangement (and the output's), and the
//! two spines' batch introductions and merges were a third of the engine thread on a pod event
//! (`perf record -g`, session 32). The located join is the same operator's: each cluster also
//! holds its located facts, and an address that comes or goes is sent on with each of them.

use foldhash::HashMap;

use serde::{Deserialize, Serialize};

use super::derived::Address;
use super::rows::{ClusterFact, LocatedBase, LocatedInput, Name, OutputRow, name};
use crate::translate::locality::LocalityLb;
use crate::translate::outbound::Context;
use crate::translate::{self, EndpointAddr, ResourceType, Scope};

/// Whether the endpoint graph reads this fact (the driver reads what derives from a base,
/// the located graph its DNS clusters, the unsliced graph entries' owners).
pub fn reads(fact: &ClusterFact) -> bool {
    matches!(fact, ClusterFact::Assignment(..) | ClusterFact::Located(..))
}

/// What the endpoint graph outputs: a load assignment's row, or an address of a located
/// cluster for the located graph.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Out {
    /// A load assignment in its cluster's own scope (never a located graph's): each touched
    /// cluster's once per time, its old body retracted and a different new one added.
    Row(OutputRow),
    Located(LocatedInput),
}

/// A located cluster's context, policy and compared base.
type Placement = (Context, LocalityLb, LocatedBase);

/// What the endpoint graph keeps of one cluster (in one scope).
#[derive(Default)]
struct Cluster {
    /// How many times the config graph says the cluster gets an assignment (1 while it does).
    assigned: isize,
    /// Its addresses with their multiplicities: up to `sorted`, sorted and none zero, as of
    /// the last time; after, those that came (and went, negative) at this time, as they came.
    /// (One list, not two: the load of a whole cluster allocates no second list per cluster
    /// to free after.)
    addresses: Vec<(EndpointAddr, isize)>,
    sorted: usize,
    /// How it is placed by locality, if it is (with multiplicities).
    placements: Vec<(Placement, isize)>,
    /// Its load assignment as last output.
    body: Option<std::sync::Arc<[u8]>>,
    /// Whether it is in [`Assignments::touched`].
    touched: bool,
}

impl Cluster {
    fn is_empty(&self) -> bool {
        self.assigned == 0 && self.addresses.is_empty() && self.placements.is_empty() && self.body.is_none()
    }

    /// Merges the addresses that changed into the sorted ones: a few by binary search, many by
    /// sorting the list (sorted but for them).
    fn merge(&mut self) {
        let mut sorted = self.sorted;
        if self.addresses.len() - sorted <= 8 {
            // Each last one into the sorted part (which an insertion or removal moves the rest
            // of the changed ones past).
            while self.addresses.len() > sorted {
                let Some((address, diff)) = self.addresses.pop() else { break };
                match self.addresses[..sorted].binary_search_by(|(x, _)| x.cmp(&address)) {
                    Ok(i) => {
                        self.addresses[i].1 += diff;
                        if self.addresses[i].1 == 0 {
                            self.addresses.remove(i);
                            sorted -= 1;
                        }
                    }
                    Err(i) if diff != 0 => {
                        self.addresses.insert(i, (address, diff));
                        sorted += 1;
                    }
                    Err(_) => {}
                }
            }
        } else {
            differential_dataflow::consolidation::consolidate(&mut self.addresses);
            if self.addresses.capacity() > 2 * self.addresses.len() + 8 {
                self.addresses.shrink_to_fit();
            }
        }
        self.sorted = self.addresses.len();
    }
}

/// Every cluster's addresses and load assignment, patched with what changes at a time.
///
/// The addresses and facts of a time are taken in as they arrive, in any order
/// ([`Assignments::address`], [`Assignments::fact`]); [`Assignments::finish`] then outputs
/// the assignments they changed. Each arriving address is joined with its cluster's placements
/// as they are, each arriving placement with the cluster's addresses as they are, then added to
/// its side: the join's change is the sum of both (it is bilinear), whatever the order.
#[derive(Default)]
pub struct Assignments {
    clusters: HashMap<(Scope, Name), Cluster>,
    /// The clusters whose addresses or assignment changed at this time.
    touched: Vec<(Scope, Name)>,
}

impl Assignments {
    /// Takes in an address of a cluster that came (`diff` > 0) or went, and outputs it with each
    /// of the cluster's placements for the located graph.
    pub fn address(&mut self, (key, address): Address, diff: isize, out: &mut impl FnMut(Out, isize)) {
        let cluster = match self.clusters.get_mut(&key) {
            Some(cluster) => cluster,
            None => self.clusters.entry(key.clone()).or_default(),
        };
        for (placement, n) in &cluster.placements {
            out(Out::Located(located(&key.1, placement, &address)), diff * n);
        }
        cluster.addresses.push((address, diff));
        touch(&mut self.touched, cluster, key);
    }

    /// Takes in a fact that came (`diff` 1) or went (-1): an assigned cluster's, or a located
    /// cluster's placement, output with each of the cluster's addresses for the located graph.
    pub fn fact(&mut self, fact: ClusterFact, diff: isize, out: &mut impl FnMut(Out, isize)) {
        match fact {
            ClusterFact::Assignment(scope, cluster) => {
                let key = (scope, name(&cluster));
                let cluster = self.clusters.entry(key.clone()).or_default();
                cluster.assigned += diff;
                touch(&mut self.touched, cluster, key);
            }
            ClusterFact::Located((scope, cluster), placement) => {
                let key = (scope, name(&cluster));
                let cluster = self.clusters.entry(key.clone()).or_default();
                for (address, n) in &cluster.addresses {
                    out(Out::Located(located(&key.1, &placement, address)), diff * n);
                }
                add(&mut cluster.placements, placement, diff);
                if cluster.is_empty() && !cluster.touched {
                    self.clusters.remove(&key);
                }
            }
            _ => {}
        }
    }

    /// Ends a time: outputs the load assignment of each cluster touched that now encodes
    /// otherwise (the old retracted, the new added), and forgets the clusters left empty.
    pub fn finish(&mut self, out: &mut impl FnMut(Out, isize)) {
        for key in std::mem::take(&mut self.touched) {
            let Some(cluster) = self.clusters.get_mut(&key) else { continue };
            cluster.touched = false;
            cluster.merge();
            // Every assigned cluster gets a load assignment, empty if it has no endpoint:
            // Envoy keeps an EDS cluster warming (and its own initialization waiting) until one
            // arrives.
            let body = (cluster.assigned != 0).then(|| {
                let addresses: Vec<&EndpointAddr> = cluster.addresses.iter().map(|(a, _)| a).collect();
                std::sync::Arc::<[u8]>::from(translate::load_assignment(&key.1, &addresses))
            });
            if body != cluster.body {
                let row = |body| OutputRow::Resource {
                    scope: key.0.clone(),
                    ty: ResourceType::ClusterLoadAssignment,
                    name: key.1.to_string(),
                    body,
                };
                if let Some(old) = cluster.body.take() {
                    out(Out::Row(row(old)), -1);
                }
                if let Some(new) = &body {
                    out(Out::Row(row(new.clone())), 1);
                }
                cluster.body = body;
            }
            if cluster.is_empty() {
                self.clusters.remove(&key);
            }
        }
    }
}

/// Marks `cluster` (of `key`) to be finished with this time, once.
fn touch(touched: &mut Vec<(Scope, Name)>, cluster: &mut Cluster, key: (Scope, Name)) {
    if !cluster.touched {
        cluster.touched = true;
        touched.push(key);
    }
}

/// What the located graph reads of an address of a located cluster.
fn located(cluster: &Name, (ctx, lb, base): &Placement, address: &EndpointAddr) -> LocatedInput {
    LocatedInput::Address((ctx.clone(), cluster.to_string(), lb.clone()), base.clone(), address.clone())
}

/// Adds `diff` to `item`'s multiplicity in the sorted `list`, dropping it at zero.
fn add<T: Ord>(list: &mut Vec<(T, isize)>, item: T, diff: isize) {
    match list.binary_search_by(|(x, _)| x.cmp(&item)) {
        Ok(i) => {
            list[i].1 += diff;
            if list[i].1 == 0 {
                list.remove(i);
            }
        }
        Err(i) if diff != 0 => list.insert(i, (item, diff)),
        Err(_) => {}
    }
}

/// The endpoint graph: the addresses and facts the driver feeds go straight into
/// [`Assignments`], and each time is finished when the engine steps. Not a timely dataflow:
/// it is one operator, and as a dataflow of its own its progress tracking, scheduling and the
/// capture of its output were ~15% of the engine thread on a pod event at `large` (timely's
/// `OperatorCore::schedule`, `propagate_pointstamps`, `extract_progress`, the activations;
/// `perf record -g`, session 36), work that orders nothing here: the driver runs one time at a
/// time, and the operator takes a time's updates in any order (see [`Assignments`]).
#[derive(Default)]
pub struct Graph {
    assignments: Assignments,
    /// What the updates taken in at this time output (addresses sent on to the located
    /// graph), with what [`Graph::finish`] adds.
    out: Vec<(Out, isize)>,
}

impl Graph {
    /// Takes in an address of an assigned cluster that came (`diff` > 0) or went.
    pub fn address(&mut self, address: Address, diff: isize) {
        let out = &mut self.out;
        self.assignments.address(address, diff, &mut |o, d| out.push((o, d)));
    }

    /// Takes in a fact the config graph output (those [`reads`] accepts).
    pub fn fact(&mut self, fact: ClusterFact, diff: isize) {
        let out = &mut self.out;
        self.assignments.fact(fact, diff, &mut |o, d| out.push((o, d)));
    }

    /// Ends the time: everything it outputs, the load assignments that changed last.
    pub fn finish(&mut self) -> Vec<(Out, isize)> {
        let out = &mut self.out;
        self.assignments.finish(&mut |o, d| out.push((o, d)));
        std::mem::take(&mut self.out)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;

    /// What the load assignments and the located addresses are from scratch, as a multiset.
    fn from_scratch(addresses: &[(Address, isize)], facts: &[(ClusterFact, isize)]) -> BTreeMap<Out, isize> {
        let mut adds: BTreeMap<Address, isize> = BTreeMap::new();
        for (a, d) in addresses {
            *adds.entry(a.clone()).or_default() += d;
        }
        let mut fs: BTreeMap<ClusterFact, isize> = BTreeMap::new();
        for (f, d) in facts {
            *fs.entry(f.clone()).or_default() += d;
        }
        let mut out = BTreeMap::new();
        let assigned: BTreeSet<(Scope, Name)> = fs
            .iter()
            .filter(|(_, d)| **d != 0)
            .filter_map(|(f, _)| match f {
                ClusterFact::Assignment(s, c) => Some((s.clone(), name(c))),
                _ => None,
            })
            .collect();
        for key in assigned {
            let of: Vec<&EndpointAddr> =
                adds.iter().filter(|((k, _), d)| *k == key && **d != 0).map(|((_, a), _)| a).collect();
            let row = OutputRow::Resource {
                scope: key.0.clone(),
                ty: ResourceType::ClusterLoadAssignment,
                name: key.1.to_string(),
                body: translate::load_assignment(&key.1, &of).into(),
            };
            out.insert(Out::Row(row), 1);
        }
        for (f, fd) in &fs {
            if let ClusterFact::Located((scope, cluster), placement) = f {
                for (((s, c), a), ad) in &adds {
                    if s == scope && **c == **cluster {
                        *out.entry(Out::Located(located(c, placement, a))).or_default() += fd * ad;
                    }
                }
            }
        }
        out.retain(|_, d| *d != 0);
        out
    }

    fn address(scope: u8, cluster: u8, ip: u8) -> Address {
        let scope = if scope == 0 { Scope::All } else { Scope::Namespace(format!("ns{scope}")) };
        ((scope, name(&format!("c{cluster}"))), EndpointAddr::new(format!("10.0.0.{ip}"), 80))
    }

    fn fact(kind: u8, scope: u8, cluster: u8) -> ClusterFact {
        let scope = if scope == 0 { Scope::All } else { Scope::Namespace(format!("ns{scope}")) };
        let cluster = format!("c{cluster}");
        if kind == 0 {
            ClusterFact::Assignment(scope, cluster)
        } else {
            ClusterFact::Located(
                (scope, cluster),
                (
                    None,
                    LocalityLb {
                        distribute: vec![],
                        failover: vec![],
                        failover_priority: vec![],
                        outlier_detection: true,
                    },
                    None,
                ),
            )
        }
    }

    /// One update of a time: an address of (scope, cluster, ip), or a fact (kind, scope,
    /// cluster); to add, else to remove.
    type Update = (Result<(u8, u8, u8), (u8, u8, u8)>, bool);

    fn update() -> impl Strategy<Value = Update> {
        (
            prop_oneof![
                3 => (0u8..2, 0u8..3, 0u8..4).prop_map(Ok),
                1 => (0u8..2, 0u8..2, 0u8..3).prop_map(Err),
            ],
            any::<bool>(),
        )
    }

    proptest! {
        /// After each time, what the operator output so far adds up to the assignments and
        /// located addresses computed from scratch on everything fed so far: addresses and facts
        /// that come and go, interleaved in any order within a time, several at a time.
        #[test]
        fn patched_assignments_equal_those_from_scratch(
            times in prop::collection::vec(prop::collection::vec(update(), 0..8), 1..12)
        ) {
            let mut assignments = Assignments::default();
            let (mut fed_addresses, mut fed_facts) = (Vec::new(), Vec::new());
            let mut output: BTreeMap<Out, isize> = BTreeMap::new();
            for updates in times {
                let mut give = |o, d| *output.entry(o).or_default() += d;
                for (which, add) in updates {
                    match which {
                        Ok((s, c, ip)) => {
                            // A retraction only of what is there (the driver never feeds one otherwise).
                            let a = address(s, c, ip);
                            let count: isize = fed_addresses.iter().filter(|(x, _)| *x == a).map(|(_, d)| d).sum();
                            let diff = if add || count == 0 { 1 } else { -1 };
                            fed_addresses.push((a.clone(), diff));
                            assignments.address(a, diff, &mut give);
                        }
                        Err((k, s, c)) => {
                            let f = fact(k, s, c);
                            let count: isize = fed_facts.iter().filter(|(x, _)| *x == f).map(|(_, d)| d).sum();
                            // (A fact is there once or not at all.)
                            let diff = match (add, count) { (true, 0) => 1, (false, 1) => -1, _ => continue };
                            fed_facts.push((f.clone(), diff));
                            assignments.fact(f, diff, &mut give);
                        }
                    }
                }
                assignments.finish(&mut give);
                output.retain(|_, d| *d != 0);
                prop_assert_eq!(&output, &from_scratch(&fed_addresses, &fed_facts));
            }
            // (Nothing left once everything went.)
            let mut give = |o, d| *output.entry(o).or_default() += d;
            for (a, _) in fed_addresses.clone().into_iter().filter(|(_, d)| *d > 0) {
                let count: isize = fed_addresses.iter().filter(|(x, _)| *x == a).map(|(_, d)| d).sum();
                if count > 0 {
                    fed_addresses.push((a.clone(), -1));
                    assignments.address(a, -1, &mut give);
                }
            }
            for (f, _) in fed_facts.clone().into_iter().filter(|(_, d)| *d > 0) {
                let count: isize = fed_facts.iter().filter(|(x, _)| *x == f).map(|(_, d)| d).sum();
                if count > 0 {
                    fed_facts.push((f.clone(), -1));
                    assignments.fact(f, -1, &mut give);
                }
            }
            assignments.finish(&mut give);
            output.retain(|_, d| *d != 0);
            prop_assert!(output.is_empty(), "{:?}", output);
            prop_assert!(assignments.clusters.is_empty(), "every cluster gone is forgotten");
        }
    }

    proptest! {
        /// A cluster's changed addresses, few or many, merge into its sorted list as their
        /// consolidation: sorted, each once, none at zero.
        #[test]
        fn changed_addresses_merge_into_the_sorted_list(
            held in prop::collection::btree_map(0u8..30, 1isize..3, 0..20),
            changed in prop::collection::vec((0u8..30, prop_oneof![Just(-1isize), Just(1)]), 0..24),
        ) {
            let addr = |ip: u8| EndpointAddr::new(format!("10.0.0.{ip:02}"), 80);
            let mut cluster = Cluster {
                addresses: held.iter().map(|(ip, n)| (addr(*ip), *n)).collect(),
                sorted: held.len(),
                ..Cluster::default()
            };
            let mut expected: BTreeMap<EndpointAddr, isize> = cluster.addresses.iter().cloned().collect();
            for (ip, d) in &changed {
                cluster.addresses.push((addr(*ip), *d));
                *expected.entry(addr(*ip)).or_default() += d;
            }
            expected.retain(|_, n| *n != 0);
            cluster.merge();
            prop_assert_eq!(cluster.sorted, expected.len());
            prop_assert_eq!(cluster.addresses, expected.into_iter().collect::<Vec<_>>());
        }
    }

    impl Assignments {
        /// Takes in the addresses, then the facts of one time, and finishes it.
        fn apply(
            &mut self,
            addresses: Vec<(Address, isize)>,
            facts: Vec<(ClusterFact, isize)>,
            out: &mut impl FnMut(Out, isize),
        ) {
            for (a, d) in addresses {
                self.address(a, d, out);
            }
            for (f, d) in facts {
                self.fact(f, d, out);
            }
            self.finish(out);
        }
    }

    #[test]
    fn an_unchanged_encoding_outputs_nothing_and_a_gone_cluster_is_forgotten() {
        let mut a = Assignments::default();
        let mut out = Vec::new();
        a.apply(vec![(address(0, 1, 1), 1)], vec![(fact(0, 0, 1), 1)], &mut |o, d| out.push((o, d)));
        assert_eq!(out.len(), 1, "{out:?}");
        out.clear();
        // An address that comes and goes within a time changes nothing.
        a.apply(vec![(address(0, 1, 2), 1), (address(0, 1, 2), -1)], vec![], &mut |o, d| out.push((o, d)));
        assert!(out.is_empty(), "{out:?}");
        // An address of a cluster not assigned: no assignment.
        a.apply(vec![(address(0, 2, 2), 1)], vec![], &mut |o, d| out.push((o, d)));
        assert!(out.is_empty(), "{out:?}");
        a.apply(vec![(address(0, 2, 2), -1), (address(0, 1, 1), -1)], vec![(fact(0, 0, 1), -1)], &mut |o, d| {
            out.push((o, d))
        });
        assert!(matches!(&out[..], [(Out::Row(_), -1)]), "{out:?}");
        assert!(a.clusters.is_empty(), "every cluster gone is forgotten");
    }
}
