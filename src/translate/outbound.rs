//! The sidecar (outbound) side of one host: which VirtualService and DestinationRule apply to
//! it, and what its clusters and virtual hosts become.
//!
//! Pure functions shared by the dataflow, which brings the inputs of one host together by key
//! (host patterns, destination hosts), and by the reference translator, which finds the same
//! inputs with loops. Whatever the two bring together, these functions decide the result, so
//! the engine and the reference can only differ in *which* inputs meet.
//!
//! Selection follows istiod:
//! - A VirtualService applies to sidecars when its `gateways` are empty or name `mesh`. Among
//!   those whose hosts match a service's FQDN (exactly, or as `*.suffix` / `*` wildcards), the
//!   most specific host wins, then the oldest (creation time, then name, then namespace, as
//!   istiod's `configCompareByCreationTime`).
//! - A DestinationRule's host is matched the same way. istiod looks a rule up in the proxy's
//!   namespace, then the service's, then the root namespace; meshflow has no per-proxy views
//!   yet, so every proxy is served as if it were in the service's namespace: the service's
//!   namespace first, then the root namespace (`istio-system`), then any other namespace; in
//!   each, the most specific host. Rules for the same host in the same namespace are merged as
//!   istiod merges them: the oldest rule's traffic policy (or the first one that has one),
//!   subsets of every rule, a name defined twice kept from the older rule.
//!   Rules with a `workloadSelector` apply to selected workloads only: left out until views exist.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::route::v3::route_action::HashPolicy;
use serde::{Deserialize, Serialize};

use super::route::{Destinations, default_route, http_routes, resolve_host};
use super::{Diagnostic, ServicePortRow, VirtualHostPart};
use crate::model::istio::{Destination, DestinationRule, DestinationRuleSpec, Subset, TrafficPolicy, VirtualService};
use crate::model::k8s::{Labels, selector_matches};

/// The root namespace, as in istiod's default mesh config.
pub const ROOT_NAMESPACE: &str = "istio-system";

/// The name a VirtualService or DestinationRule is known by in the dataflow: (namespace, name).
pub type ConfigKey = (String, String);

// === host matching ===

/// The host patterns a service FQDN is matched by: itself, every `*.<suffix>` at a label
/// boundary, and `*`. A VirtualService or DestinationRule host matches the FQDN exactly when
/// it is one of these, so the dataflow can join on the pattern.
pub fn host_patterns(fqdn: &str) -> Vec<String> {
    let mut out = vec![fqdn.to_string()];
    for (i, c) in fqdn.char_indices() {
        if c == '.' {
            out.push(format!("*{}", &fqdn[i..]));
        }
    }
    out.push("*".to_string());
    out
}

/// Whether a (resolved, lower-case) host pattern matches the FQDN, as Istio's `host.Name.Matches`
/// does for a concrete host: `*.foo.com` matches `a.foo.com` and `a.b.foo.com`, not `foo.com`.
pub fn pattern_matches(pattern: &str, fqdn: &str) -> bool {
    if pattern == "*" || pattern == fqdn {
        return true;
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => suffix.starts_with('.') && fqdn.len() > suffix.len() && fqdn.ends_with(suffix),
        None => false,
    }
}

/// How specific a matching pattern is: an exact host beats every wildcard; a longer wildcard
/// beats a shorter one.
fn specificity(pattern: &str) -> usize {
    if pattern.starts_with('*') { pattern.len() } else { usize::MAX }
}

/// A host as written in a VirtualService or DestinationRule, resolved in the object's namespace
/// and lower-cased, as istiod keys them.
pub fn config_host(host: &str, namespace: &str) -> String {
    resolve_host(&host.to_ascii_lowercase(), namespace)
}

// === VirtualService selection ===

/// Whether a VirtualService applies to sidecars.
pub fn applies_to_mesh(vs: &VirtualService) -> bool {
    vs.spec.gateways.is_empty() || vs.spec.gateways.iter().any(|g| g == "mesh")
}

/// The patterns a sidecar VirtualService claims (its hosts, resolved, without duplicates).
pub fn virtual_service_patterns(vs: &VirtualService) -> BTreeSet<String> {
    if !applies_to_mesh(vs) {
        return BTreeSet::new();
    }
    vs.spec.hosts.iter().map(|h| config_host(h, &vs.namespace)).collect()
}

/// The order in which VirtualServices claim a host: most specific pattern first, then the
/// oldest, then by name and namespace. The smallest rank wins.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct VsRank {
    specificity: Reverse<usize>,
    created: Option<String>,
    name: String,
    namespace: String,
}

impl VsRank {
    pub fn new(pattern: &str, vs: &VirtualService) -> VsRank {
        VsRank {
            specificity: Reverse(specificity(pattern)),
            created: vs.creation_timestamp.clone(),
            name: vs.name.clone(),
            namespace: vs.namespace.clone(),
        }
    }

    pub fn key(&self) -> ConfigKey {
        (self.namespace.clone(), self.name.clone())
    }
}

/// The destination hosts (resolved FQDNs) a VirtualService's HTTP routes, mirrors and TCP/TLS
/// routes name: what its routes need to know about (ports, DestinationRules).
pub fn virtual_service_destinations(vs: &VirtualService) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut add = |host: &str| {
        out.insert(config_host(host, &vs.namespace));
    };
    for http in &vs.spec.http {
        http.route.iter().for_each(|d| add(&d.destination.host));
        if let Some(m) = &http.mirror {
            add(&m.host);
        }
        http.mirrors.iter().for_each(|m| add(&m.destination.host));
    }
    vs.spec.tcp.iter().flat_map(|r| &r.route).for_each(|d| add(&d.destination.host));
    vs.spec.tls.iter().flat_map(|r| &r.route).for_each(|d| add(&d.destination.host));
    out
}

/// Routes to a host that no service has, or to a subset that no DestinationRule of its host
/// defines: istiod routes to the cluster name anyway (Envoy answers 503) and `istioctl analyze`
/// warns; meshflow reports them.
pub fn missing_destinations(vs: &VirtualService, known: &DestinationMap) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let mut check = |path: String, d: &Destination| {
        let host = config_host(&d.host, &vs.namespace);
        let Some(info) = known.get(&host) else {
            let message = format!("host {host:?} matches no service: requests routed to it get 503");
            out.push(Diagnostic { object: vs.object_key(), field: format!("{path}.host"), message });
            return;
        };
        let Some(subset) = d.subset.as_deref().filter(|s| !s.is_empty()) else { return };
        let defined = info.rule.as_ref().is_some_and(|r| r.subsets.iter().any(|s| s.name == subset));
        if !defined {
            let message = format!(
                "subset {subset:?} is not defined by a DestinationRule of {host:?}: requests routed to it get 503"
            );
            out.push(Diagnostic { object: vs.object_key(), field: format!("{path}.subset"), message });
        }
    };
    for (i, http) in vs.spec.http.iter().enumerate() {
        for (j, d) in http.route.iter().enumerate() {
            check(format!("spec.http[{i}].route[{j}].destination"), &d.destination);
        }
        if let Some(m) = &http.mirror {
            check(format!("spec.http[{i}].mirror"), m);
        }
        for (j, m) in http.mirrors.iter().enumerate() {
            check(format!("spec.http[{i}].mirrors[{j}].destination"), &m.destination);
        }
    }
    for (i, tcp) in vs.spec.tcp.iter().enumerate() {
        for (j, d) in tcp.route.iter().enumerate() {
            check(format!("spec.tcp[{i}].route[{j}].destination"), &d.destination);
        }
    }
    for (i, tls) in vs.spec.tls.iter().enumerate() {
        for (j, d) in tls.route.iter().enumerate() {
            check(format!("spec.tls[{i}].route[{j}].destination"), &d.destination);
        }
    }
    out
}

// === DestinationRule selection ===

/// The host pattern a DestinationRule claims; None for rules that meshflow cannot apply to
/// every proxy (a `workloadSelector` limits a rule to some workloads).
pub fn destination_rule_pattern(dr: &DestinationRule) -> Option<String> {
    if dr.spec.workload_selector.is_some() {
        return None;
    }
    Some(config_host(&dr.spec.host, &dr.namespace))
}

/// The DestinationRule that applies to `fqdn` (of a service in `namespace`), merged from the
/// candidates whose host matched it: each given with the pattern it matched by.
pub fn select_rule<'a>(
    fqdn_namespace: &str,
    candidates: impl IntoIterator<Item = (&'a str, &'a DestinationRule)>,
) -> Option<DestinationRuleSpec> {
    let namespace_rank = |ns: &str| {
        if ns == fqdn_namespace {
            0
        } else if ns == ROOT_NAMESPACE {
            1
        } else {
            2
        }
    };
    let mut ranked: Vec<_> = candidates
        .into_iter()
        .map(|(pattern, dr)| {
            let group = (namespace_rank(&dr.namespace), Reverse(specificity(pattern)), dr.namespace.as_str());
            let age = (dr.creation_timestamp.as_deref(), dr.name.as_str());
            (group, age, dr)
        })
        .collect();
    ranked.sort();
    ranked.dedup_by(|a, b| a.2.namespace == b.2.namespace && a.2.name == b.2.name);
    let best = ranked.first()?.0;
    let mut merged: Option<DestinationRuleSpec> = None;
    for (_, _, dr) in ranked.into_iter().take_while(|(g, _, _)| *g == best) {
        match &mut merged {
            None => merged = Some(dr.spec.clone()),
            Some(m) => {
                if m.traffic_policy.is_none() {
                    m.traffic_policy = dr.spec.traffic_policy.clone();
                }
                for subset in &dr.spec.subsets {
                    if !m.subsets.iter().any(|s| s.name == subset.name) {
                        m.subsets.push(subset.clone());
                    }
                }
            }
        }
    }
    merged
}

/// The namespace of a service FQDN `<name>.<namespace>.svc.<domain>`.
pub fn fqdn_namespace(fqdn: &str) -> &str {
    fqdn.split('.').nth(1).unwrap_or_default()
}

// === one host ===

/// What routes toward a host need to know about it: its service ports and its rule.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct HostInfo {
    pub ports: Vec<u16>,
    pub rule: Option<DestinationRuleSpec>,
}

impl HostInfo {
    pub fn new(rows: &[&ServicePortRow], rule: Option<DestinationRuleSpec>) -> HostInfo {
        let mut ports: Vec<u16> = rows.iter().map(|r| r.port.port).collect();
        ports.sort_unstable();
        ports.dedup();
        HostInfo { ports, rule }
    }

    fn hash_policy(&self, port: u16, subset: &str) -> Vec<HashPolicy> {
        let Some(rule) = &self.rule else { return Vec::new() };
        let subset = (!subset.is_empty()).then_some(subset);
        super::cluster::hash_policy(super::cluster::merged_policy(rule, port, subset).as_ref())
    }
}

/// The hosts a VirtualService routes to, with what is known of each (absent: no such service).
pub type DestinationMap = BTreeMap<String, HostInfo>;

impl Destinations for DestinationMap {
    fn ports(&self, fqdn: &str) -> Option<Vec<u16>> {
        self.get(fqdn).map(|h| h.ports.clone())
    }

    fn hash_policy(&self, fqdn: &str, port: u16, subset: &str) -> Vec<HashPolicy> {
        self.get(fqdn).map(|h| h.hash_policy(port, subset)).unwrap_or_default()
    }
}

/// One cluster of a host: a service port, optionally one subset of it, and the policy merged
/// for that port and subset.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClusterRow {
    pub row: ServicePortRow,
    pub subset: Option<SubsetRef>,
    pub policy: Option<TrafficPolicy>,
}

/// A subset as its endpoints are chosen: name and labels.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SubsetRef {
    pub name: String,
    pub labels: Labels,
}

impl ClusterRow {
    pub fn name(&self) -> String {
        super::outbound_cluster_name(self.row.port.port, self.subset_name().unwrap_or(""), &self.row.fqdn())
    }

    pub fn subset_name(&self) -> Option<&str> {
        self.subset.as_ref().map(|s| s.name.as_str())
    }

    /// The cluster without subset whose endpoints this cluster's are chosen from.
    pub fn base_name(&self) -> String {
        self.row.cluster_name()
    }

    pub fn encode(&self) -> Vec<u8> {
        super::cluster(&self.row, self.subset_name(), self.policy.as_ref())
    }
}

/// Whether an endpoint with these (pod) labels belongs to the subset.
pub fn subset_selects(subset: &SubsetRef, labels: &Labels) -> bool {
    selector_matches(&subset.labels, labels)
}

fn subset_ref(s: &Subset) -> SubsetRef {
    SubsetRef { name: s.name.clone(), labels: s.labels.clone().into_iter().collect() }
}

/// The clusters of a host: per service port, the cluster without subset and one per subset of
/// its rule, each with the policy istiod merges for it.
pub fn clusters_for_host(rows: &[&ServicePortRow], rule: Option<&DestinationRuleSpec>) -> Vec<ClusterRow> {
    let mut out = Vec::new();
    for row in rows {
        let port = row.port.port;
        let policy = rule.and_then(|r| super::cluster::merged_policy(r, port, None));
        out.push(ClusterRow { row: (*row).clone(), subset: None, policy });
        for subset in rule.map(|r| r.subsets.as_slice()).unwrap_or_default() {
            let policy = rule.and_then(|r| super::cluster::merged_policy(r, port, Some(&subset.name)));
            out.push(ClusterRow { row: (*row).clone(), subset: Some(subset_ref(subset)), policy });
        }
    }
    out
}

/// The virtual hosts of a host's HTTP ports, each with the name of the route config it goes
/// into: the VirtualService's routes for that port when it has any (istiod falls back to the
/// default route on a port where the VirtualService yields none), else the default route.
pub fn virtual_hosts_for_host(
    rows: &[&ServicePortRow],
    own: &HostInfo,
    vs: Option<(&VirtualService, &DestinationMap)>,
) -> Vec<(String, VirtualHostPart)> {
    let mut out = Vec::new();
    for row in rows.iter().filter(|r| r.protocol().is_http()) {
        let port = row.port.port;
        let routes = vs.map(|(vs, dest)| http_routes(vs, port, dest)).filter(|r| !r.is_empty());
        let routes = routes.unwrap_or_else(|| vec![default_route(row, own.hash_policy(port, ""))]);
        out.push((super::route_config_name(port), super::virtual_host(row, routes)));
    }
    out
}
