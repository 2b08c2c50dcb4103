//! From the dataflow's raw output rows at one logical time to one atomic [`ResourceDelta`].
//!
//! Route configs are assembled here rather than in the dataflow: a route config is the
//! concatenation of its virtual hosts' encodings (see [`translate::route_configuration`]), so
//! one changed virtual host costs a memcpy of its route config, never a re-encode of the
//! others, and the dataflow does not keep a second, huge copy of every route config in an
//! arrangement.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use foldhash::HashMap;

use super::rows::OutputRow;
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
    /// Pods whose locality changed at this time ((namespace, name) → its locality, `None`
    /// once it has none or is gone): what the xDS server reads a connecting proxy's locality
    /// from when the proxy does not tell it (see [`crate::cache::Cache::pod_locality`]).
    pub pod_localities: Vec<((String, String), Option<String>)>,
}

/// Route configs assembled from virtual hosts (the sidecars' outbound route configs), kept
/// between times. The sidecars' route config of a name holds the default context's virtual
/// hosts; a namespace with virtual hosts of its own on that route gets its own copy, the
/// sidecars' with its own in place of the same names; a sidecar class with virtual hosts of
/// its own (`sourceLabels`) gets its namespace's copy with its own in place.
#[derive(Default)]
pub struct Assembler {
    /// By (scope, route name): `Sidecars` for the default context, `Namespace` and `Class`
    /// for overlays.
    routes: BTreeMap<(Scope, String), BTreeMap<String, VirtualHostPart>>,
    /// The overlays (`Namespace`, `Class` scopes) on each route: they follow what lies under them.
    overlays: BTreeMap<String, BTreeSet<Scope>>,
    /// Hash of each route config's last emitted bytes, so an unchanged one is not re-emitted.
    emitted: HashMap<(Scope, String), u64>,
}

/// A resource's scope, type and name.
type ResourceKey = (Scope, ResourceType, String);

impl Assembler {
    /// Consolidates the rows of one time (the dataflows hand them over in pieces, not
    /// consolidated) and turns them into resource changes, and with them the endpoint graph's
    /// load assignments (see [`super::graphs::Step`]), which need no consolidation: a
    /// saturated engine's time has tens of thousands of them, and sorting them by name was 5%
    /// of its thread at `large`.
    pub fn finish(
        &mut self,
        time: u64,
        rows: Vec<(OutputRow, isize)>,
        assignments: Vec<(OutputRow, isize)>,
    ) -> ResourceDelta {
        // Consolidated in place (sorted): a large initial time's rows are not held twice.
        let mut net = rows;
        differential_dataflow::consolidation::consolidate(&mut net);
        // Per resource: the body that is added at this time, if any; a resource only retracted
        // is removed.
        let mut resources: BTreeMap<ResourceKey, Option<Arc<[u8]>>> = BTreeMap::new();
        let mut vhost_adds = Vec::new();
        let mut touched: BTreeSet<(Scope, String)> = BTreeSet::new();
        let mut diagnostics = Vec::new();
        let mut pod_localities: BTreeMap<(String, String), Option<String>> = BTreeMap::new();
        for (row, diff) in net.into_iter().filter(|(_, d)| *d != 0) {
            match row {
                OutputRow::Diagnostic(d) => diagnostics.push((*d, diff > 0)),
                OutputRow::PodLocality { pod, locality } => {
                    let slot = pod_localities.entry(pod).or_default();
                    if diff > 0 {
                        *slot = Some(locality);
                    }
                }
                OutputRow::Resource { scope, ty, name, body } => {
                    let slot = resources.entry((scope, ty, name)).or_default();
                    if diff > 0 {
                        *slot = Some(body);
                    }
                }
                OutputRow::VirtualHost { scope, route, vhost } => {
                    let key = (scope, route);
                    if diff > 0 {
                        vhost_adds.push((key, *vhost));
                    } else {
                        if let Some(hosts) = self.routes.get_mut(&key) {
                            // Only remove the exact part retracted: the same name may be re-added below.
                            if hosts.get(&vhost.name) == Some(&*vhost) {
                                hosts.remove(&vhost.name);
                            }
                        }
                        touched.insert(key);
                    }
                }
            }
        }
        for (key, vhost) in vhost_adds {
            self.routes.entry(key.clone()).or_default().insert(vhost.name.clone(), vhost);
            touched.insert(key);
        }
        // Keep the overlay index, and let each overlay follow what lies under it: every overlay
        // the sidecars' route, a class's its namespace's.
        for (scope, route) in &touched {
            if matches!(scope, Scope::Namespace(_) | Scope::Class(_)) {
                let live = self.routes.get(&(scope.clone(), route.clone())).is_some_and(|h| !h.is_empty());
                let set = self.overlays.entry(route.clone()).or_default();
                if live {
                    set.insert(scope.clone());
                } else {
                    set.remove(scope);
                }
            }
        }
        let followers: Vec<(Scope, String)> = touched
            .iter()
            .flat_map(|(under, route)| {
                self.overlays
                    .get(route)
                    .into_iter()
                    .flatten()
                    .filter(move |over| lies_under(under, over))
                    .map(move |over| (over.clone(), route.clone()))
            })
            .collect();
        touched.extend(followers);

        let mut changes: Vec<ResourceChange> =
            resources.into_iter().map(|((scope, ty, name), body)| ResourceChange { scope, ty, name, body }).collect();
        assignment_changes(assignments, &mut changes);
        for key in touched {
            let body = self.assemble(&key);
            let (scope, route) = key.clone();
            match body {
                None => {
                    if self.routes.get(&key).is_some_and(|h| h.is_empty()) {
                        self.routes.remove(&key);
                    }
                    if self.overlays.get(&route).is_some_and(|s| s.is_empty()) {
                        self.overlays.remove(&route);
                    }
                    if self.emitted.remove(&key).is_some() {
                        changes.push(ResourceChange {
                            scope,
                            ty: ResourceType::RouteConfiguration,
                            name: route,
                            body: None,
                        });
                    }
                }
                Some(body) => {
                    let hash = xxhash_rust::xxh3::xxh3_64(&body);
                    if self.emitted.insert(key, hash) != Some(hash) {
                        changes.push(ResourceChange {
                            scope,
                            ty: ResourceType::RouteConfiguration,
                            name: route,
                            body: Some(Arc::from(body)),
                        });
                    }
                }
            }
        }
        diagnostics.sort();
        ResourceDelta { time, changes, diagnostics, pod_localities: pod_localities.into_iter().collect() }
    }

    /// The route config of (scope, route) as it stands, None if it has no virtual host (a
    /// namespace's copy exists only while it has virtual hosts of its own).
    fn assemble(&self, key: &(Scope, String)) -> Option<Vec<u8>> {
        let own = self.routes.get(key).filter(|h| !h.is_empty())?;
        let (scope, route) = key;
        if *scope == Scope::Sidecars {
            return Some(translate::route_configuration(route, own.values()));
        }
        let mut merged: BTreeMap<&str, &VirtualHostPart> = BTreeMap::new();
        for under in [Some(Scope::Sidecars), class_namespace(scope)].into_iter().flatten() {
            if let Some(hosts) = self.routes.get(&(under, route.clone())) {
                merged.extend(hosts.iter().map(|(n, v)| (n.as_str(), v)));
            }
        }
        merged.extend(own.iter().map(|(n, v)| (n.as_str(), v)));
        Some(translate::route_configuration(route, merged.into_values()))
    }
}

/// The changes of the endpoint graph's assignments: each cluster's old body retracted (if it
/// had one), then its new body added (if it has one).
fn assignment_changes(assignments: Vec<(OutputRow, isize)>, changes: &mut Vec<ResourceChange>) {
    for (row, diff) in assignments {
        let OutputRow::Resource { scope, ty, name, body } = row else { continue };
        if diff > 0 {
            // (In place of the same cluster's retraction just before it.)
            if let Some(last) = changes.last_mut()
                && last.body.is_none()
                && last.ty == ty
                && last.name == name
                && last.scope == scope
            {
                last.body = Some(body);
                continue;
            }
            changes.push(ResourceChange { scope, ty, name, body: Some(body) });
        } else {
            changes.push(ResourceChange { scope, ty, name, body: None });
        }
    }
}

/// The namespace scope a class overlay lies on (None for other scopes).
pub fn class_namespace(scope: &Scope) -> Option<Scope> {
    match scope {
        Scope::Class(id) => crate::model::proxy::namespace_of_id(id).map(|ns| Scope::Namespace(ns.to_string())),
        _ => None,
    }
}

/// Whether overlay `over` is assembled on top of `under`.
fn lies_under(under: &Scope, over: &Scope) -> bool {
    match under {
        Scope::Sidecars => true,
        Scope::Namespace(_) => class_namespace(over).as_ref() == Some(under),
        _ => false,
    }
}
