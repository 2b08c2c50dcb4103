//! What a base cluster's endpoints also count for: the driver expands each endpoint row of a
//! cluster without subset into the addresses the endpoint graph assigns, before that graph
//! reads them.
//!
//! An endpoint of a base cluster (`outbound|9080||reviews…`) is an address of:
//! - the base cluster itself, in every proxy's scope;
//! - each subset cluster of the base whose labels the endpoint's (its Pod's, else its own)
//!   select ([`ClusterFact::Subset`]);
//! - with `exportTo` not `*`, each scope's copy of the base ([`ClusterFact::ScopedBase`]);
//!
//! and, when a located cluster's `failoverPriority` compares the base's endpoints
//! ([`ClusterFact::Prioritized`]), its labels go to the located graph.
//!
//! The endpoint graph used to meet its rows with these facts in a join: one arrangement of
//! every endpoint row by cluster, one of the facts by base, and the join itself on every pod
//! event's path (their batches, merges and progress at each time). Here the driver holds the
//! facts by base (a few per cluster with subsets) and meets the two sides itself, as
//! differential's join would:
//! - a row that comes or goes is expanded with the facts there are: a map lookup;
//! - a fact that comes or goes is expanded with its base's rows as they are, which the caller
//!   derives from what it already holds (the slices of the base's Service, the rows of
//!   clusters no slice serves). Facts change with DestinationRules and Services, rarely.
//!
//! Within an engine time, rows fed before the config graph runs are expanded with the facts
//! of the time before, and the facts that changed with the rows of this time; the two add up
//! to the new rows with the new facts.

use std::collections::HashMap;

use super::rows::{ClusterFact, LocatedInput, Name, name};
use crate::translate::endpoint::EndpointRow;
use crate::translate::outbound::{self, SubsetRef};
use crate::translate::{EndpointAddr, Scope};

/// An address of an assigned cluster (scope, name), as the endpoint graph reads it.
pub type Address = ((Scope, Name), EndpointAddr);

/// What a base cluster's endpoints also count for.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Derived {
    /// A subset cluster (scope, name) of the base.
    Subset((Scope, Name), SubsetRef),
    /// The base's copy in this scope (its host is not exported everywhere).
    Scoped(Scope),
    /// The base's `failoverPriority` compares its endpoints' labels.
    Prioritized,
}

/// A cluster fact as the driver reads it: (base, what its endpoints count for), or `None` if
/// it is not one of these.
fn derived(fact: &ClusterFact) -> Option<(Name, Derived)> {
    match fact {
        ClusterFact::Subset(base, ((scope, cluster), subset)) => {
            Some((name(base), Derived::Subset((scope.clone(), name(cluster)), subset.clone())))
        }
        ClusterFact::ScopedBase(base, scope) => Some((name(base), Derived::Scoped(scope.clone()))),
        ClusterFact::Prioritized(base) => Some((name(base), Derived::Prioritized)),
        _ => None,
    }
}

/// Whether the driver reads this fact (rather than the endpoint graph).
pub fn reads(fact: &ClusterFact) -> bool {
    matches!(fact, ClusterFact::Subset(..) | ClusterFact::ScopedBase(..) | ClusterFact::Prioritized(..))
}

/// Where expanded rows go: the endpoint graph's addresses, the located graph's labels.
pub trait Sink {
    fn address(&mut self, address: Address, diff: isize);
    fn labels(&mut self, labels: LocatedInput, diff: isize);
}

/// The facts of each base cluster, with multiplicities.
#[derive(Default)]
pub struct Derivations {
    by_base: HashMap<Name, Vec<(Derived, isize)>>,
}

impl Derivations {
    /// Expands a row of `base` that comes (`diff` > 0) or goes.
    pub fn row(&self, base: &Name, row: &EndpointRow, diff: isize, out: &mut impl Sink) {
        out.address(((Scope::All, base.clone()), row.addr.clone()), diff);
        if let Some(facts) = self.by_base.get(base) {
            for (d, n) in facts {
                expand(base, d, row, n * diff, out);
            }
        }
    }

    /// Takes in facts that came and went; returns the bases whose facts changed, with the
    /// changes (each to be expanded with the base's rows by [`Derivations::expand_changes`]).
    pub fn facts(&mut self, changes: impl IntoIterator<Item = (ClusterFact, isize)>) -> Changes {
        let mut changed: HashMap<Name, Vec<(Derived, isize)>> = HashMap::new();
        for (fact, diff) in changes {
            let Some((base, d)) = derived(&fact) else { continue };
            add(self.by_base.entry(base.clone()).or_default(), d.clone(), diff);
            if self.by_base.get(&base).is_some_and(Vec::is_empty) {
                self.by_base.remove(&base);
            }
            add(changed.entry(base).or_default(), d, diff);
        }
        changed.retain(|_, ds| !ds.is_empty());
        Changes(changed)
    }
}

/// The facts that changed in one engine time, by base.
pub struct Changes(HashMap<Name, Vec<(Derived, isize)>>);

impl Changes {
    /// The bases whose facts changed.
    pub fn bases(&self) -> impl Iterator<Item = &Name> {
        self.0.keys()
    }

    /// Expands the changed facts of `base` with its current rows.
    pub fn expand(&self, base: &Name, rows: &[(EndpointRow, isize)], out: &mut impl Sink) {
        let Some(changes) = self.0.get(base) else { return };
        for (row, m) in rows {
            for (d, n) in changes {
                expand(base, d, row, m * n, out);
            }
        }
    }
}

/// What a row of `base` makes through one fact.
fn expand(base: &Name, d: &Derived, row: &EndpointRow, diff: isize, out: &mut impl Sink) {
    match d {
        Derived::Subset(cluster, subset) => {
            if outbound::subset_selects(subset, &row.labels) {
                out.address((cluster.clone(), row.addr.clone()), diff);
            }
        }
        Derived::Scoped(scope) => out.address(((scope.clone(), base.clone()), row.addr.clone()), diff),
        Derived::Prioritized => {
            out.labels(LocatedInput::Labels((base.to_string(), row.addr.clone()), row.labels.clone()), diff)
        }
    }
}

/// Adds `diff` copies of `d` to `list` (removes them if negative), forgetting what counts none.
fn add(list: &mut Vec<(Derived, isize)>, d: Derived, diff: isize) {
    match list.iter().position(|(x, _)| *x == d) {
        Some(i) => {
            list[i].1 += diff;
            if list[i].1 == 0 {
                list.swap_remove(i);
            }
        }
        None => list.push((d, diff)),
    }
}

/// An address's place in a test's expectations.
#[cfg(test)]
type Expanded = (Option<Address>, Option<LocatedInput>);

#[cfg(test)]
impl Sink for std::collections::BTreeMap<Expanded, isize> {
    fn address(&mut self, address: Address, diff: isize) {
        *self.entry((Some(address), None)).or_default() += diff;
        self.retain(|_, d| *d != 0);
    }
    fn labels(&mut self, labels: LocatedInput, diff: isize) {
        *self.entry((None, Some(labels))).or_default() += diff;
        self.retain(|_, d| *d != 0);
    }
}
