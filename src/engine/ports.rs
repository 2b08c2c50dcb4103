//! Which clusters an EndpointSlice's row counts for: the driver keys each placed slice row by
//! the clusters of its port before the endpoint graph reads it.
//!
//! A slice row carries its port's key (namespace, service, port name, protocol); the Service's
//! port of that name is the cluster's ([`port_clusters`]). The endpoint graph
//! used to find it by a join of every slice row with the Services' ports: one arrangement of
//! every slice row and one join on each row's path, which every pod event paid (their batches,
//! merges and progress at each time). Here the driver holds the same two sides:
//! - the Services' ports, by key, with their clusters;
//! - the placed slice rows it fed, by port key (a multiset, as the graph's input is);
//!
//! and meets them itself: a slice row costs a map lookup per side, a Service's change its own
//! rows (retracted under the clusters it had, added under those it has).

use std::collections::HashMap;

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

/// The Services' ports and the slice rows fed, both by port key.
#[derive(Default)]
pub struct PortIndex {
    /// The clusters of each port key, with multiplicities (a Service's change comes as its old
    /// version retracted and its new one added).
    clusters: HashMap<PortKey, Vec<(Name, isize)>>,
    /// The placed slice rows of each port key, with multiplicities. (A list, not a map: a
    /// port has as many rows as its Service has endpoints, and a row's change costs that
    /// Service's size anyway, whose assignment is encoded again; a map per port took more
    /// memory at `large`.)
    rows: HashMap<PortKey, Vec<(EndpointRow, isize)>>,
}

impl PortIndex {
    /// Adds (`diff` > 0) or retracts a Service: its ports' rows are keyed by its clusters, or
    /// no longer. Returns whether it keyed any row.
    pub fn service(&mut self, s: &Service, diff: isize, out: &mut impl Extend<Keyed>) -> bool {
        let mut any = false;
        for (key, cluster) in port_clusters(s) {
            if let Some(rows) = self.rows.get(&key) {
                any = true;
                out.extend(rows.iter().map(|(row, n)| ((cluster.clone(), row.clone()), n * diff)));
            }
            add(&mut self.clusters, key, cluster, diff);
        }
        any
    }

    /// Adds (`diff` > 0) or retracts placed slice rows: keyed by their port's clusters.
    /// Returns whether it keyed any.
    pub fn rows(
        &mut self,
        updates: impl IntoIterator<Item = ((PortKey, EndpointRow), isize)>,
        out: &mut impl Extend<Keyed>,
    ) -> bool {
        let mut any = false;
        for ((key, row), diff) in updates {
            if let Some(clusters) = self.clusters.get(&key) {
                any = true;
                out.extend(clusters.iter().map(|(cluster, n)| ((cluster.clone(), row.clone()), n * diff)));
            }
            add(&mut self.rows, key, row, diff);
        }
        any
    }
}

/// Adds `diff` copies of `item` to the list of `key` (removes them if negative), forgetting
/// what counts none. A list grows by one item, not by doubling: most ports have a handful of
/// rows, and doubling left a third of the index unused at `large`.
fn add<T: PartialEq>(lists: &mut HashMap<PortKey, Vec<(T, isize)>>, key: PortKey, item: T, diff: isize) {
    let Some(list) = lists.get_mut(&key) else {
        lists.insert(key, vec![(item, diff)]);
        return;
    };
    match list.iter().position(|(t, _)| *t == item) {
        Some(i) => {
            list[i].1 += diff;
            if list[i].1 == 0 {
                list.swap_remove(i);
                if list.is_empty() {
                    lists.remove(&key);
                }
            }
        }
        None => {
            list.reserve_exact(1);
            list.push((item, diff));
        }
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
        // The row before its Service: kept, keyed by nothing yet.
        index.rows([((http.clone(), row("10.1.0.1")), 1)], &mut out);
        assert!(out.is_empty());
        index.service(&service("reviews", &["http", "grpc"]), 1, &mut out);
        accumulate(&mut acc, std::mem::take(&mut out));
        let cluster = name("outbound|80||reviews.default.svc.cluster.local");
        assert_eq!(acc, BTreeMap::from([((cluster.clone(), row("10.1.0.1")), 1)]));
        // The port renumbered: its rows move to the new cluster.
        index.service(&service("reviews", &["http", "grpc"]), -1, &mut out);
        index.service(&service("reviews", &["grpc", "http"]), 1, &mut out);
        accumulate(&mut acc, std::mem::take(&mut out));
        let moved = name("outbound|81||reviews.default.svc.cluster.local");
        assert_eq!(acc, BTreeMap::from([((moved.clone(), row("10.1.0.1")), 1)]));
        // The row goes: so does its keyed copy, and the index forgets it.
        index.rows([((http, row("10.1.0.1")), -1)], &mut out);
        accumulate(&mut acc, std::mem::take(&mut out));
        assert!(acc.is_empty(), "{acc:?}");
        assert!(index.rows.is_empty());
        index.service(&service("reviews", &["grpc", "http"]), -1, &mut out);
        assert!(out.is_empty() && index.clusters.is_empty());
    }

    proptest! {
        /// After any sequence of Service and row changes, what was fed adds up to the join of
        /// the Services and rows there are, as the endpoint graph's join computed it.
        #[test]
        fn what_is_fed_adds_up_to_the_join_of_what_is(
            ops in proptest::collection::vec((any::<bool>(), 0..3usize, 0..4usize, prop_oneof![Just(1isize), Just(-1)]), 1..60)
        ) {
            let names: [&[&str]; 4] = [&["http"], &["http", "grpc"], &["grpc"], &["grpc", "http"]];
            let svcs = ["a", "b", "c"];
            let (mut index, mut out, mut acc) = (PortIndex::default(), Vec::new(), BTreeMap::new());
            let mut services: BTreeMap<(usize, usize), isize> = BTreeMap::new();
            let mut rows: BTreeMap<(usize, usize), isize> = BTreeMap::new();
            for (is_service, s, v, diff) in ops {
                if is_service {
                    index.service(&service(svcs[s], names[v]), diff, &mut out);
                    *services.entry((s, v)).or_default() += diff;
                } else {
                    let key = port_key("default", svcs[s], names[1][v % 2], Protocol::Tcp);
                    index.rows([((key, row(&format!("10.0.{s}.{v}"))), diff)], &mut out);
                    *rows.entry((s, v)).or_default() += diff;
                }
                accumulate(&mut acc, std::mem::take(&mut out));
                let mut want = BTreeMap::new();
                for (&(s, v), n) in &services {
                    for (key, cluster) in port_clusters(&service(svcs[s], names[v])) {
                        for (&(rs, rv), m) in &rows {
                            if port_key("default", svcs[rs], names[1][rv % 2], Protocol::Tcp) == key {
                                *want.entry((cluster.clone(), row(&format!("10.0.{rs}.{rv}")))).or_default() += n * m;
                            }
                        }
                    }
                }
                want.retain(|_, d| *d != 0);
                prop_assert_eq!(&acc, &want);
            }
        }
    }
}
