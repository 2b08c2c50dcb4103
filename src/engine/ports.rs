//! Which clusters an EndpointSlice's row counts for: the driver keys each placed slice row by
//! the clusters of its port before the endpoint graph reads it.
//!
//! A slice row carries its port's key (namespace, service, port name, protocol); the Service's
//! port of that name is the cluster's ([`port_clusters`]). The endpoint graph used to find it
//! by a join of every slice row with the Services' ports: one arrangement of every slice row
//! and one join on each row's path, which every pod event paid (their batches, merges and
//! progress at each time). Here the driver meets the two sides itself:
//! - the index holds the Services' ports, by key, with their clusters: a slice row costs a map
//!   lookup;
//! - it holds no rows: a Service's change is given its rows by the caller, which derives them
//!   from the Service's slices as they are (the driver holds them) and retracts them under the
//!   clusters the Service had, adds them under those it has. A copy of every row, kept only for
//!   the rare Service change, cost `large` ~20 MiB, and twice that at its load's peak.

use foldhash::HashMap;

use super::counted::add;
use super::rows::{Name, name};
use crate::model::Service;
use crate::translate::endpoint::{EndpointRow, PortKey, service_port_rows};

/// A Service's ports by the key its endpoint ports carry, with their cluster: the slice (or
/// Endpoints) port named as the service port gives the target port number.
pub fn port_clusters(s: &Service) -> Vec<(PortKey, Name)> {
    service_port_rows(s).into_iter().map(|row| (row.port_key(), name(&row.cluster_name()))).collect()
}

/// An update of the endpoint graph's slice rows, keyed by cluster.
pub type Keyed = ((Name, EndpointRow), isize);

/// The clusters of each Service port, by port key.
#[derive(Default)]
pub struct PortIndex {
    /// The clusters of each port key, with multiplicities (a Service's change comes as its old
    /// version retracted and its new one added).
    clusters: HashMap<PortKey, Vec<(Name, isize)>>,
    /// The other way: the port keys of each cluster (one, unless a Service has a port number
    /// twice, once per protocol), for a cluster whose derived facts change
    /// ([`super::derived`]).
    keys: HashMap<Name, Vec<(PortKey, isize)>>,
}

impl PortIndex {
    /// Adds (`diff` > 0) or retracts a Service, whose placed slice rows (as fed, of every
    /// port) are `rows`: they are keyed by its clusters, or no longer.
    pub fn service(&mut self, s: &Service, diff: isize, rows: &[(PortKey, EndpointRow)], out: &mut impl Extend<Keyed>) {
        for (key, cluster) in port_clusters(s) {
            out.extend(rows.iter().filter(|(k, _)| *k == key).map(|(_, row)| ((cluster.clone(), row.clone()), diff)));
            add(&mut self.keys, cluster.clone(), key.clone(), diff);
            add(&mut self.clusters, key, cluster, diff);
        }
    }

    /// Keys placed slice rows that come (`diff` > 0) or go by their port's clusters.
    pub fn rows(
        &self,
        updates: impl IntoIterator<Item = ((PortKey, EndpointRow), isize)>,
        out: &mut impl Extend<Keyed>,
    ) {
        for ((key, row), diff) in updates {
            if let Some(clusters) = self.clusters.get(&key) {
                out.extend(clusters.iter().map(|(cluster, n)| ((cluster.clone(), row.clone()), n * diff)));
            }
        }
    }

    /// The port keys whose rows `cluster` is keyed by, with multiplicities.
    pub fn keys(&self, cluster: &Name) -> &[(PortKey, isize)] {
        self.keys.get(cluster).map_or(&[], Vec::as_slice)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::model::k8s::{Protocol, ServicePort, TargetPort};
    use crate::translate::EndpointAddr;
    use crate::translate::endpoint::port_key;

    /// Service `svc` of namespace `default`, its ports named as `names` say (port 80 + i).
    fn service(svc: &str, names: &[&str]) -> Service {
        Service {
            namespace: "default".into(),
            name: svc.into(),
            ports: names
                .iter()
                .enumerate()
                .map(|(i, n)| ServicePort {
                    name: n.to_string(),
                    port: 80 + i as u16,
                    protocol: Protocol::Tcp,
                    target_port: TargetPort::Number(8080),
                    app_protocol: None,
                })
                .collect(),
            selector: None,
            cluster_ip: Some("10.0.0.1".into()),
            external_name: None,
            publish_not_ready_addresses: false,
            export_to: Vec::new(),
        }
    }

    fn row(ip: &str) -> EndpointRow {
        EndpointRow { addr: EndpointAddr::new(ip, 8080), pod: None, labels: Default::default() }
    }

    /// Adds `updates` into `acc`, dropping what sums to nothing.
    fn accumulate(acc: &mut BTreeMap<(Name, EndpointRow), isize>, updates: Vec<Keyed>) {
        for (k, d) in updates {
            *acc.entry(k).or_default() += d;
        }
        acc.retain(|_, d| *d != 0);
    }

    #[test]
    fn a_slice_row_is_keyed_by_its_services_port_whichever_came_first() {
        let (mut index, mut out, mut acc) = (PortIndex::default(), Vec::new(), BTreeMap::new());
        let http = port_key("default", "reviews", "http", Protocol::Tcp);
        // The row before its Service: keyed by nothing yet.
        index.rows([((http.clone(), row("10.1.0.1")), 1)], &mut out);
        assert!(out.is_empty());
        let fed = [(http.clone(), row("10.1.0.1"))];
        index.service(&service("reviews", &["http", "grpc"]), 1, &fed, &mut out);
        accumulate(&mut acc, std::mem::take(&mut out));
        let cluster = name("outbound|80||reviews.default.svc.cluster.local");
        assert_eq!(acc, BTreeMap::from([((cluster.clone(), row("10.1.0.1")), 1)]));
        // The port renumbered: its rows move to the new cluster.
        index.service(&service("reviews", &["http", "grpc"]), -1, &fed, &mut out);
        index.service(&service("reviews", &["grpc", "http"]), 1, &fed, &mut out);
        accumulate(&mut acc, std::mem::take(&mut out));
        let moved = name("outbound|81||reviews.default.svc.cluster.local");
        assert_eq!(acc, BTreeMap::from([((moved.clone(), row("10.1.0.1")), 1)]));
        // The row goes: so does its keyed copy.
        index.rows([((http, row("10.1.0.1")), -1)], &mut out);
        accumulate(&mut acc, std::mem::take(&mut out));
        assert!(acc.is_empty(), "{acc:?}");
        // The Service goes: the index forgets its ports.
        index.service(&service("reviews", &["grpc", "http"]), -1, &[], &mut out);
        assert!(out.is_empty() && index.clusters.is_empty() && index.keys.is_empty());
    }

    proptest! {
        /// After any sequence of Service and row changes, what was fed adds up to the join of
        /// the Services and rows there are, as the endpoint graph's join computed it. (A row
        /// goes only if it is there, as a slice's rows do; a Service's rows are given as its
        /// caller holds them.)
        #[test]
        fn what_is_fed_adds_up_to_the_join_of_what_is(
            ops in proptest::collection::vec((any::<bool>(), 0..3usize, 0..4usize, prop_oneof![Just(1isize), Just(-1)]), 1..60)
        ) {
            let names: [&[&str]; 4] = [&["http"], &["http", "grpc"], &["grpc"], &["grpc", "http"]];
            let svcs = ["a", "b", "c"];
            let (mut index, mut out, mut acc) = (PortIndex::default(), Vec::new(), BTreeMap::new());
            let mut services: BTreeMap<(usize, usize), isize> = BTreeMap::new();
            let mut rows: BTreeMap<(usize, usize), isize> = BTreeMap::new();
            let key_of = |s: usize, v: usize| port_key("default", svcs[s], names[1][v % 2], Protocol::Tcp);
            let row_of = |s: usize, v: usize| row(&format!("10.0.{s}.{v}"));
            for (is_service, s, v, diff) in ops {
                if is_service {
                    // The rows of Service `s`, each as many times as it was fed.
                    let fed: Vec<_> = rows
                        .iter()
                        .filter(|((rs, _), _)| *rs == s)
                        .flat_map(|(&(rs, rv), &m)| std::iter::repeat_n((key_of(rs, rv), row_of(rs, rv)), m as usize))
                        .collect();
                    index.service(&service(svcs[s], names[v]), diff, &fed, &mut out);
                    *services.entry((s, v)).or_default() += diff;
                } else {
                    let count = rows.entry((s, v)).or_default();
                    if *count + diff < 0 {
                        continue;
                    }
                    *count += diff;
                    index.rows([((key_of(s, v), row_of(s, v)), diff)], &mut out);
                }
                accumulate(&mut acc, std::mem::take(&mut out));
                let mut want = BTreeMap::new();
                for (&(s, v), n) in &services {
                    for (key, cluster) in port_clusters(&service(svcs[s], names[v])) {
                        for (&(rs, rv), m) in &rows {
                            if key_of(rs, rv) == key {
                                *want.entry((cluster.clone(), row_of(rs, rv))).or_default() += n * m;
                            }
                        }
                    }
                }
                want.retain(|_, d| *d != 0);
                prop_assert_eq!(&acc, &want);
                // Each cluster's port keys, the other way round.
                let mut keys: BTreeMap<(Name, PortKey), isize> = BTreeMap::new();
                for (&(s, v), n) in &services {
                    for (key, cluster) in port_clusters(&service(svcs[s], names[v])) {
                        *keys.entry((cluster, key)).or_default() += n;
                    }
                }
                keys.retain(|_, n| *n != 0);
                let held: BTreeMap<(Name, PortKey), isize> = index
                    .keys
                    .iter()
                    .flat_map(|(c, ks)| ks.iter().map(move |(k, n)| ((c.clone(), k.clone()), *n)))
                    .collect();
                prop_assert_eq!(&held, &keys);
            }
        }
    }
}
