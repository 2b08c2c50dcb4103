//! From the dataflow's raw output rows at one logical time to one atomic [`ResourceDelta`].
//!
//! Route configs are assembled here rather than in the dataflow: a route config is the
//! concatenation of its virtual hosts' encodings (see [`translate::route_configuration`]), so
//! one changed virtual host costs a memcpy of its route config, never a re-encode of the
//! others, and the dataflow does not keep a second, huge copy of every route config in an
//! arrangement.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use super::dataflow::OutputRow;
pub use crate::translate::Diagnostic;
use crate::translate::{self, ResourceType, Scope, VirtualHostPart};

/// A change to one resource: `body: None` removes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceChange {
    /// Which proxies the resource is for.
    pub scope: Scope,
    pub ty: ResourceType,
    pub name: String,
    /// The encoded resource (the message itself, not wrapped in `Any`).
    pub body: Option<Arc<[u8]>>,
}

/// Every output change of one logical time. Applied atomically: a proxy never sees a route
/// naming a cluster that the same input change created but that was not yet delivered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResourceDelta {
    pub time: u64,
    pub changes: Vec<ResourceChange>,
    /// Diagnostics that appeared (`true`) or went away (`false`) at this time.
    pub diagnostics: Vec<(Diagnostic, bool)>,
}

/// Route configs assembled from virtual hosts (the sidecars' outbound route configs), kept
/// between times.
#[derive(Default)]
pub struct Assembler {
    routes: BTreeMap<String, BTreeMap<String, VirtualHostPart>>,
    /// Hash of each route config's last emitted bytes, so an unchanged one is not re-emitted.
    emitted: HashMap<String, u64>,
}

impl Assembler {
    /// Consolidates the rows of one time (the dataflow hands them over in pieces, not
    /// consolidated) and turns them into resource changes.
    pub fn finish(&mut self, time: u64, rows: Vec<(OutputRow, isize)>) -> ResourceDelta {
        let mut net: HashMap<OutputRow, isize> = HashMap::with_capacity(rows.len());
        for (row, diff) in rows {
            *net.entry(row).or_default() += diff;
        }
        // Per resource: the body that is added at this time, if any; a resource only retracted
        // is removed.
        let mut resources: BTreeMap<(Scope, ResourceType, String), Option<Vec<u8>>> = BTreeMap::new();
        let mut vhost_adds = Vec::new();
        let mut touched = BTreeSet::new();
        let mut diagnostics = Vec::new();
        for (row, diff) in net.into_iter().filter(|(_, d)| *d != 0) {
            match row {
                OutputRow::Diagnostic(d) => diagnostics.push((d, diff > 0)),
                OutputRow::Resource { scope, ty, name, body } => {
                    let slot = resources.entry((scope, ty, name)).or_default();
                    if diff > 0 {
                        *slot = Some(body);
                    }
                }
                OutputRow::VirtualHost { route, vhost } => {
                    if diff > 0 {
                        vhost_adds.push((route, vhost));
                    } else {
                        if let Some(hosts) = self.routes.get_mut(&route) {
                            // Only remove the exact part retracted: the same name may be re-added below.
                            if hosts.get(&vhost.name) == Some(&vhost) {
                                hosts.remove(&vhost.name);
                            }
                        }
                        touched.insert(route);
                    }
                }
            }
        }
        for (route, vhost) in vhost_adds {
            self.routes.entry(route.clone()).or_default().insert(vhost.name.clone(), vhost);
            touched.insert(route);
        }

        let mut changes: Vec<ResourceChange> = resources
            .into_iter()
            .map(|((scope, ty, name), body)| ResourceChange { scope, ty, name, body: body.map(Arc::from) })
            .collect();
        for route in touched {
            let hosts = self.routes.get(&route).filter(|h| !h.is_empty());
            match hosts {
                None => {
                    self.routes.remove(&route);
                    if self.emitted.remove(&route).is_some() {
                        changes.push(ResourceChange {
                            scope: Scope::Sidecars,
                            ty: ResourceType::RouteConfiguration,
                            name: route,
                            body: None,
                        });
                    }
                }
                Some(hosts) => {
                    let body = translate::route_configuration(&route, hosts.values());
                    let hash = xxhash_rust::xxh3::xxh3_64(&body);
                    if self.emitted.insert(route.clone(), hash) != Some(hash) {
                        changes.push(ResourceChange {
                            scope: Scope::Sidecars,
                            ty: ResourceType::RouteConfiguration,
                            name: route,
                            body: Some(Arc::from(body)),
                        });
                    }
                }
            }
        }
        diagnostics.sort();
        ResourceDelta { time, changes, diagnostics }
    }
}
