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

use foldhash::{HashMap, HashMapExt};

use super::counted::add;
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

    /// Takes in facts that came and went (facts of other kinds are not the driver's, and are
    /// passed over); returns the changes by base, each to be expanded with the base's rows by
    /// [`Changes::expand`].
    pub fn facts<'f>(&mut self, changes: impl IntoIterator<Item = &'f (ClusterFact, isize)>) -> Changes {
        let mut changed: HashMap<Name, Vec<(Derived, isize)>> = HashMap::new();
        for (fact, diff) in changes {
            let Some((base, d)) = derived(fact) else { continue };
            let diff = *diff;
            add(&mut self.by_base, base.clone(), d.clone(), diff);
            add(&mut changed, base, d, diff);
        }
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::model::k8s::Labels;

    const BASES: [&str; 2] = ["outbound|80||a.default.svc.cluster.local", "outbound|80||b.default.svc.cluster.local"];

    /// Row `i` (an address of 10.0.0.`i`), its Pod labelled `version: v{version}`.
    fn row(i: usize, version: usize) -> EndpointRow {
        EndpointRow {
            addr: EndpointAddr::new(format!("10.0.0.{i}"), 8080),
            pod: None,
            labels: Labels::from([("version".to_string(), format!("v{version}"))]),
        }
    }

    /// Fact `f` of base `b`: a subset (v1 or v2), a scoped copy, or a compared base.
    fn fact(b: usize, f: usize) -> ClusterFact {
        let base = BASES[b].to_string();
        match f {
            0 | 1 => {
                let subset = format!("v{}", f + 1);
                let cluster = base.replace("80||", &format!("80|{subset}|"));
                let labels = Labels::from([("version".to_string(), subset.clone())]);
                ClusterFact::Subset(base, ((Scope::All, cluster), SubsetRef { name: subset, labels }))
            }
            2 => ClusterFact::ScopedBase(base, Scope::Namespace("team".into())),
            _ => ClusterFact::Prioritized(base),
        }
    }

    /// What `rows` and `facts` make from scratch: each row's base address, and what each fact
    /// of its base makes of it.
    fn join(
        rows: &BTreeMap<(usize, usize, usize), isize>,
        facts: &BTreeMap<(usize, usize), isize>,
    ) -> BTreeMap<Expanded, isize> {
        let mut want = BTreeMap::new();
        for (&(b, i, v), &m) in rows {
            let (base, row) = (name(BASES[b]), row(i, v));
            want.address(((Scope::All, base.clone()), row.addr.clone()), m);
            for (&(fb, f), &n) in facts {
                if fb == b {
                    let (_, d) = derived(&fact(fb, f)).expect("a derived fact");
                    expand(&base, &d, &row, m * n, &mut want);
                }
            }
        }
        want
    }

    #[test]
    fn a_row_counts_for_the_subsets_that_select_it_and_the_scoped_copy() {
        let (mut d, mut out) = (Derivations::default(), BTreeMap::new());
        let changes = d.facts(&[(fact(0, 0), 1), (fact(0, 2), 1), (fact(1, 1), 1)]);
        assert_eq!(changes.bases().count(), 2);
        d.row(&name(BASES[0]), &row(1, 1), 1, &mut out);
        let addr = EndpointAddr::new("10.0.0.1", 8080);
        let want: BTreeMap<Expanded, isize> = [
            ((Scope::All, name(BASES[0])), addr.clone()),
            ((Scope::All, name("outbound|80|v1|a.default.svc.cluster.local")), addr.clone()),
            ((Scope::Namespace("team".into()), name(BASES[0])), addr),
        ]
        .into_iter()
        .map(|a| ((Some(a), None), 1))
        .collect();
        assert_eq!(out, want);
    }

    proptest! {
        /// After any sequence of row and fact changes, with each fact change expanded with its
        /// base's rows as they are, what was fed adds up to the join of the rows and facts
        /// there are.
        #[test]
        fn what_is_fed_adds_up_to_the_join_of_what_is(
            ops in proptest::collection::vec(
                (any::<bool>(), 0..2usize, 0..4usize, 1..3usize, prop_oneof![Just(1isize), Just(-1)]), 1..60)
        ) {
            let (mut d, mut out) = (Derivations::default(), BTreeMap::new());
            let mut rows: BTreeMap<(usize, usize, usize), isize> = BTreeMap::new();
            let mut facts: BTreeMap<(usize, usize), isize> = BTreeMap::new();
            for (is_fact, b, x, v, diff) in ops {
                if is_fact {
                    *facts.entry((b, x)).or_default() += diff;
                    let changes = d.facts(&[(fact(b, x), diff)]);
                    for base in changes.bases() {
                        let of_base: Vec<_> = rows
                            .iter()
                            .filter(|((rb, _, _), _)| BASES[*rb] == &**base)
                            .map(|(&(_, i, v), &m)| (row(i, v), m))
                            .collect();
                        changes.expand(base, &of_base, &mut out);
                    }
                } else {
                    *rows.entry((b, x, v)).or_default() += diff;
                    d.row(&name(BASES[b]), &row(x, v), diff, &mut out);
                }
                facts.retain(|_, n| *n != 0);
                rows.retain(|_, m| *m != 0);
                prop_assert_eq!(&out, &join(&rows, &facts));
            }
        }
    }
}
