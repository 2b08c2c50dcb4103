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
//! - A DestinationRule's host is matched the same way. A proxy looks rules up as istiod's
//!   `PushContext.destinationRule` does: the rules of its own namespace, then those of the
//!   host's namespace exported to it, then those of the root namespace (`istio-system`)
//!   exported to it; in each, the most specific host. Rules for the same host in the same
//!   namespace are merged as istiod merges them: the oldest rule's traffic policy (or the first
//!   one that has one), subsets of every rule, a name defined twice kept from the older rule.
//! - `exportTo` (absent = `*`, `.`, namespaces) limits which proxies' namespaces see a
//!   VirtualService or DestinationRule. What depends on the proxy's namespace is computed per
//!   [`Context`]: once for the default (every namespace nobody names) and once for each
//!   namespace of a connected proxy where the result differs.
//!   Rules with a `workloadSelector` apply to selected workloads only: left out until views exist.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::route::v3::route_action::HashPolicy;
use serde::{Deserialize, Serialize};

use super::route::{Destinations, Source, default_route, http_routes_for, resolve_host};
use super::{Diagnostic, EndpointAddr, Scope, ServicePortRow, VirtualHostPart};
use crate::model::istio::{Destination, DestinationRule, DestinationRuleSpec, Subset, TrafficPolicy, VirtualService};
use crate::model::k8s::{Labels, selector_matches};
use crate::model::{Kind, ObjectKey};

/// The root namespace of istiod's default mesh config (`meshConfig.rootNamespace`); `meshflow
/// serve --root-namespace` sets another ([`super::MeshConfig`]).
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

// === visibility: exportTo, and the proxy namespaces output depends on ===

/// The proxy namespace a piece of output is computed for. `None` is the default context: every
/// namespace that no object names in particular, whose proxies share one copy of the output;
/// `Some(ns)` a namespace whose proxies see something else (a rule of their own, an object
/// exported to them only), served to them in [`super::Scope::Namespace`].
pub type Context = Option<String>;

/// Whether an object of namespace `owner` with `exportTo` entries `export_to` is visible to
/// proxies of namespace `client` (`None`: the default context, a namespace nobody names).
/// No entries means `*`, as istiod's default `defaultExportTo`.
pub fn exported_to(export_to: &[String], owner: &str, client: Option<&str>) -> bool {
    export_to.is_empty()
        || export_to.iter().any(|e| match e.as_str() {
            "*" => true,
            "~" => false,
            "." => client == Some(owner),
            ns => client == Some(ns),
        })
}

/// What `pick` gives the default context (when something), then what it gives each of
/// `namespaces` where that differs from the default (`None` there: nothing, unlike the default).
fn by_context<'a, T: PartialEq>(
    namespaces: impl IntoIterator<Item = &'a str>,
    pick: impl Fn(Option<&str>) -> Option<T>,
) -> Vec<(Context, Option<T>)> {
    let default = pick(None);
    let mut out: Vec<(Context, Option<T>)> = Vec::new();
    for ns in namespaces {
        let picked = pick(Some(ns));
        if picked != default {
            out.push((Some(ns.to_string()), picked));
        }
    }
    if default.is_some() {
        out.insert(0, (None, default));
    }
    out
}

/// The namespaces an `exportTo` names in particular (`.` is the owner's).
pub fn named_namespaces(export_to: &[String], owner: &str) -> BTreeSet<String> {
    export_to
        .iter()
        .filter(|e| !matches!(e.as_str(), "*" | "~"))
        .map(|e| if e == "." { owner.to_string() } else { e.clone() })
        .collect()
}

/// Which namespaces see a host, from its rows' `exportTo` (a Service's
/// `networking.istio.io/exportTo` annotation, a ServiceEntry's `exportTo`), as istiod's
/// `PushContext.IsServiceVisible` decides for a proxy's namespace (and so for its
/// `DefaultSidecarScopeForNamespace`, sidecars and gateways alike): `None` when every namespace
/// does (no entry: meshConfig's default `*`; or `*`); else the namespaces named (`.`: the
/// host's own; `~` alone: none). A host's rows come from one Service or from ServiceEntries merged
/// only when their `exportTo` agree; should they differ, the host is visible where any is.
pub fn host_visibility(rows: &[&ServicePortRow]) -> Option<BTreeSet<String>> {
    let mut visible = BTreeSet::new();
    for row in rows {
        if row.export_to.is_empty() || row.export_to.iter().any(|e| e == "*") {
            return None;
        }
        visible.extend(named_namespaces(&row.export_to, &row.namespace));
    }
    Some(visible)
}

/// The contexts a host's clusters are served in, with the rule of each, from its rules by
/// context (`rules`: the default context's first, then the namespaces whose rule differs). A
/// host visible everywhere: exactly `rules`. A host exported to some namespaces only: one
/// context per namespace it is exported to (its rule there, else the default's), and none
/// for the default, so proxies of other namespaces (sidecars and gateways) get no cluster.
pub fn cluster_contexts<'a>(
    visible: Option<&BTreeSet<String>>,
    rules: &[(&'a Context, Option<&'a DestinationRuleSpec>)],
) -> Vec<(Context, Option<&'a DestinationRuleSpec>)> {
    let Some(visible) = visible else { return rules.iter().map(|(c, r)| ((*c).clone(), *r)).collect() };
    let default = rules.iter().find(|(c, _)| c.is_none()).and_then(|(_, r)| *r);
    visible
        .iter()
        .map(|ns| {
            let ctx = Some(ns.clone());
            let rule = rules.iter().find(|(c, _)| **c == ctx).map_or(default, |(_, r)| *r);
            (ctx, rule)
        })
        .collect()
}

/// The clusters of a host in each context ([`cluster_contexts`]), each with whether its
/// context's scope holds an assignment of its own for it (a subset cluster always does; the
/// default context's clusters are the shared ones). A namespace's cluster without subset shares
/// the default's assignment, except: when the host is exported to some namespaces only (there is
/// no default one); and when the default's depends on the proxy's locality
/// ([`super::locality::locality_lb`], served in [`super::Scope::Locality`]) and the namespace's
/// rule makes it the same for every proxy (its own hides the located one for its proxies).
pub fn host_clusters(
    rows: &[&ServicePortRow],
    visible: Option<&BTreeSet<String>>,
    rules: &[(&Context, Option<&DestinationRuleSpec>)],
) -> Vec<(Context, ClusterRow, bool)> {
    let mut out: Vec<(Context, ClusterRow, bool)> = Vec::new();
    let mut located_by_default: BTreeSet<String> = BTreeSet::new();
    for (ctx, rule) in cluster_contexts(visible, rules) {
        for cluster in clusters_for_host(rows, rule) {
            let located = cluster.locality_lb().is_some();
            let own = cluster.subset.is_none()
                && (visible.is_some() || (ctx.is_some() && !located && located_by_default.contains(&cluster.name())));
            if ctx.is_none() && located {
                located_by_default.insert(cluster.name());
            }
            out.push((ctx.clone(), cluster, own));
        }
    }
    out
}

/// The scopes a port's shared HTTP listener (`0.0.0.0_<port>`) is served in, from the
/// visibility of each HTTP row of the port ([`host_visibility`] of the row alone): every
/// sidecar's when a host visible everywhere has the port; else the sidecars of each namespace
/// some host of the port is exported to (no listener whose route config nobody may see).
pub fn http_listener_scopes<'a>(visibilities: impl IntoIterator<Item = &'a Option<BTreeSet<String>>>) -> Vec<Scope> {
    let mut namespaces = BTreeSet::new();
    for v in visibilities {
        match v {
            None => return vec![Scope::Sidecars],
            Some(set) => namespaces.extend(set.iter().cloned()),
        }
    }
    namespaces.into_iter().map(Scope::SidecarsIn).collect()
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
    export_to: Vec<String>,
}

impl VsRank {
    pub fn new(pattern: &str, vs: &VirtualService) -> VsRank {
        VsRank {
            specificity: Reverse(specificity(pattern)),
            created: vs.creation_timestamp.clone(),
            name: vs.name.clone(),
            namespace: vs.namespace.clone(),
            export_to: vs.spec.export_to.clone(),
        }
    }

    pub fn key(&self) -> ConfigKey {
        (self.namespace.clone(), self.name.clone())
    }

    /// Whether proxies of namespace `client` see the VirtualService.
    pub fn visible_to(&self, client: Option<&str>) -> bool {
        exported_to(&self.export_to, &self.namespace, client)
    }

    /// The namespaces whose proxies may see the VirtualService differently from the default
    /// context (those its `exportTo` names).
    pub fn namespaces(&self) -> BTreeSet<String> {
        named_namespaces(&self.export_to, &self.namespace)
    }
}

/// The VirtualService that proxies of namespace `client` use for a host, from the candidates
/// whose hosts matched it: the best ranked among those exported to them.
pub fn choose_virtual_service<'a>(
    client: Option<&str>,
    candidates: impl IntoIterator<Item = &'a VsRank>,
) -> Option<ConfigKey> {
    candidates.into_iter().filter(|r| r.visible_to(client)).min().map(VsRank::key)
}

/// The VirtualService of a host in the default context (when there is one), and in each of
/// `namespaces` where it differs.
pub fn virtual_services_by_context<'a>(
    candidates: &[&'a VsRank],
    namespaces: impl IntoIterator<Item = &'a str>,
) -> Vec<(Context, Option<ConfigKey>)> {
    by_context(namespaces, |ns| choose_virtual_service(ns, candidates.iter().copied()))
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

/// The best of the candidates matching one host, merged as istiod consolidates rules for the
/// same host in one namespace: the most specific pattern, then the oldest rule's traffic policy
/// (or the first one that has one), subsets of every rule, a name defined twice kept from the
/// older rule. Candidates are given with the pattern they matched by.
fn merge_best<'a>(candidates: impl IntoIterator<Item = (&'a str, &'a DestinationRule)>) -> Option<DestinationRuleSpec> {
    let mut ranked: Vec<_> = candidates
        .into_iter()
        .map(|(pattern, dr)| {
            let group = (Reverse(specificity(pattern)), dr.namespace.as_str());
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

/// A rule exported to its own namespace only (`exportTo: ["."]` or its namespace's name):
/// istiod keeps it out of the index other namespaces read.
fn private_only(dr: &DestinationRule) -> bool {
    matches!(dr.spec.export_to.as_slice(), [only] if only == "." || *only == dr.namespace)
}

/// The DestinationRule that proxies in namespace `proxy` use for `fqdn` (a host of namespace
/// `host_namespace`), from the candidates whose host matched it, as istiod's
/// `PushContext.destinationRule` looks it up:
/// 1. the rules of the proxy's own namespace (for a proxy in the root namespace, its rules
///    exported to itself only);
/// 2. the rules of the host's namespace exported to the proxy's namespace;
/// 3. the rules of the root namespace (`root`, meshConfig `rootNamespace`) exported to the
///    proxy's namespace.
///
/// `proxy: None` is the default context: a namespace that no candidate lives in or names, whose
/// proxies get steps 2 and 3 with rules exported to every namespace.
pub fn rule_for<'a>(
    proxy: Option<&str>,
    host_namespace: &str,
    candidates: &[(&'a str, &'a DestinationRule)],
    root: &str,
) -> Option<DestinationRuleSpec> {
    let pick =
        |keep: &dyn Fn(&DestinationRule) -> bool| merge_best(candidates.iter().copied().filter(|(_, dr)| keep(dr)));
    let local = match proxy {
        Some(p) if p == root => pick(&|dr| dr.namespace == p && private_only(dr)),
        Some(p) => pick(&|dr| dr.namespace == p && exported_to(&dr.spec.export_to, &dr.namespace, Some(p))),
        None => None,
    };
    let exported_from = |ns: &str| {
        pick(&|dr| dr.namespace == ns && !private_only(dr) && exported_to(&dr.spec.export_to, &dr.namespace, proxy))
    };
    local.or_else(|| exported_from(host_namespace)).or_else(|| exported_from(root))
}

/// The namespaces whose proxies may look a rule up differently from the default context: its
/// own, the ones its `exportTo` names, and the root namespace (whose proxies read the root's
/// private rules first).
pub fn rule_namespaces(dr: &DestinationRule, root: &str) -> BTreeSet<String> {
    let mut out = named_namespaces(&dr.spec.export_to, &dr.namespace);
    out.insert(dr.namespace.clone());
    out.insert(root.to_string());
    out
}

/// The rule of `fqdn` in the default context (when there is one), and in each of `namespaces`
/// where it differs from the default (`None` there: no rule at all).
pub fn rules_by_context<'a>(
    host_namespace: &str,
    candidates: &[(&'a str, &'a DestinationRule)],
    namespaces: impl IntoIterator<Item = &'a str>,
    root: &str,
) -> Vec<(Context, Option<DestinationRuleSpec>)> {
    by_context(namespaces, |ns| rule_for(ns, host_namespace, candidates, root))
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
    /// Boxed: a merged policy is over a kilobyte, and most clusters have none.
    pub policy: Option<Box<TrafficPolicy>>,
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

    /// Whether (and how) this cluster's load assignment depends on the proxy's locality.
    pub fn locality_lb(&self) -> Option<super::locality::LocalityLb> {
        if !self.is_eds() {
            return None;
        }
        super::locality::locality_lb(self.policy.as_deref())
    }

    pub fn subset_name(&self) -> Option<&str> {
        self.subset.as_ref().map(|s| s.name.as_str())
    }

    /// The cluster without subset whose endpoints this cluster's are chosen from.
    pub fn base_name(&self) -> String {
        self.row.cluster_name()
    }

    pub fn encode(&self) -> Vec<u8> {
        let inline = super::service_entry::inline_endpoints(&self.row, self.subset.as_ref());
        super::cluster::cluster_with(&self.row, self.subset_name(), self.policy.as_deref(), inline.as_deref())
    }

    /// Whether (and how) the endpoints a DNS cluster carries inline depend on the proxy's
    /// locality: istiod's `ApplyToCluster` places a cluster's own load assignment relative to
    /// the proxy, as EDS does. The cluster itself then differs per locality.
    pub fn inline_locality_lb(&self) -> Option<super::locality::LocalityLb> {
        let inline = super::service_entry::inline_endpoints(&self.row, self.subset.as_ref())?;
        if inline.is_empty() {
            return None;
        }
        super::locality::locality_lb(self.policy.as_deref())
    }

    /// The cluster for a proxy at `proxy` ([`ClusterRow::inline_locality_lb`]): its inline
    /// assignment with the priorities or weights `lb` gives it there.
    pub fn encode_located(&self, proxy: super::locality::ProxyLabels<'_>, lb: &super::locality::LocalityLb) -> Vec<u8> {
        let inline = super::service_entry::inline_endpoints(&self.row, self.subset.as_ref());
        let mut c =
            super::cluster::cluster_message(&self.row, self.subset_name(), self.policy.as_deref(), inline.as_deref());
        if let Some(cla) = c.load_assignment.as_mut() {
            let labelled =
                super::service_entry::labelled_inline_endpoints(&self.row, self.subset.as_ref()).unwrap_or_default();
            // The endpoints as the assignment was built (sorted, each address once), with
            // their labels (read only by failoverPriority).
            let mut eps: Vec<(&EndpointAddr, &Labels)> = labelled.iter().map(|(a, l)| (a, l)).collect();
            eps.dedup_by(|next, kept| next.0 == kept.0);
            super::locality::apply_to(cla, &eps, proxy, lb);
        }
        prost::Message::encode_to_vec(&c)
    }

    /// Whether the cluster takes its endpoints from EDS (then it gets a ClusterLoadAssignment).
    pub fn is_eds(&self) -> bool {
        super::service_entry::is_eds(&self.row)
    }

    /// Whether istiod builds this cluster at all: a DNS cluster without endpoints (none of the
    /// entry's endpoints in the subset) is left out (`buildCluster` returns nil).
    fn exists(&self) -> bool {
        super::service_entry::inline_endpoints(&self.row, self.subset.as_ref()).is_none_or(|e| !e.is_empty())
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
        let policy = rule.and_then(|r| super::cluster::merged_policy(r, port, None)).map(Box::new);
        out.push(ClusterRow { row: (*row).clone(), subset: None, policy });
        for subset in rule.map(|r| r.subsets.as_slice()).unwrap_or_default() {
            let policy = rule.and_then(|r| super::cluster::merged_policy(r, port, Some(&subset.name))).map(Box::new);
            out.push(ClusterRow { row: (*row).clone(), subset: Some(subset_ref(subset)), policy });
        }
    }
    out.retain(ClusterRow::exists);
    out
}

/// The virtual hosts of a host's HTTP ports, each with the name of the route config it goes
/// into: the VirtualService's routes for that port when it has any (istiod falls back to the
/// default route on a port where the VirtualService yields none), else the default route.
pub fn virtual_hosts_for_host(
    rows: &[&ServicePortRow],
    own: &HostInfo,
    vs: Option<(&VirtualService, &DestinationMap)>,
    source: Source<'_>,
) -> Vec<(String, VirtualHostPart)> {
    let mut out = Vec::new();
    for row in rows.iter().filter(|r| r.protocol().is_http()) {
        let port = row.port.port;
        let routes = vs.map(|(vs, dest)| http_routes_for(vs, port, dest, source)).filter(|r| !r.is_empty());
        let routes = routes.unwrap_or_else(|| vec![default_route(row, own.hash_policy(port, ""))]);
        out.push((super::route_config_name(port), super::virtual_host(row, routes)));
    }
    out
}

/// What a VirtualService that applies in a context brings: the object and its destinations.
pub type ContextRoutes<'a> = Option<(&'a VirtualService, &'a DestinationMap)>;

/// A connected sidecar class that a `sourceLabels` of one of a host's VirtualServices selects:
/// its routes to the host may differ from its namespace's.
#[derive(Clone, Copy, Debug)]
pub struct SourceClass<'a> {
    pub id: &'a str,
    pub namespace: &'a str,
    pub labels: &'a Labels,
}

/// A host's virtual hosts in every context it has, with the scope that serves them:
/// - `Sidecars`: the default context's, built for a proxy that no source-dependent match block
///   selects;
/// - `Namespace(ns)`, for each namespace where the host's rule or VirtualService differ
///   (`infos`, `routes`) or that a `sourceNamespace` names (`source_namespaces`, connected
///   ones only): its virtual hosts that differ from the default's (a namespace's route config is
///   the default's with these in place of the same names);
/// - `Class(id)`, for each class of `classes`: its virtual hosts built for its labels that
///   differ from its namespace's (a class's route config is its namespace's with these in place).
///
/// `infos` and `routes` hold the default (`None`) and the namespaces that differ; a namespace
/// missing from one of them has the default's there.
pub fn virtual_hosts_by_context<'a>(
    rows: &[&ServicePortRow],
    infos: &BTreeMap<Context, &'a HostInfo>,
    routes: &BTreeMap<Context, ContextRoutes<'a>>,
    source_namespaces: &BTreeSet<&str>,
    classes: &[SourceClass<'_>],
) -> Vec<(Scope, String, VirtualHostPart)> {
    let Some(default_info) = infos.get(&None).copied() else { return Vec::new() };
    let default_routes = routes.get(&None).copied().flatten();
    let namespaces: BTreeSet<&str> = infos
        .keys()
        .chain(routes.keys())
        .filter_map(|c| c.as_deref())
        .chain(source_namespaces.iter().copied())
        .collect();
    let build = |ns: Option<&str>, labels: Option<&Labels>| {
        let ctx = ns.map(str::to_string);
        let info = infos.get(&ctx).copied().unwrap_or(default_info);
        let vs = routes.get(&ctx).copied().unwrap_or(default_routes);
        virtual_hosts_for_host(rows, info, vs, Source { namespace: ns, labels })
    };
    let visible = host_visibility(rows);
    let layers = layered(&namespaces, classes, Scope::Namespace, visible.as_ref(), build);
    // A host not exported everywhere has no virtual host in the sidecars' route configs.
    let layers = layers.into_iter().filter(|(scope, _)| visible.is_none() || *scope != Scope::Sidecars);
    layers.map(|(scope, (route, vhost))| (scope, route, vhost)).collect()
}

/// What [`virtual_hosts_by_context`] and [`tcp_listeners_by_context`] share: `build(None, None)`
/// is the default (`Sidecars`); each of `namespaces` gets, in `namespace_scope(ns)`, what
/// `build(Some(ns), None)` gives that the default does not; each class gets, in `Class(id)`, what
/// `build(Some(ns), Some(labels))` gives that its namespace does not.
///
/// For a host exported to some namespaces only (`visible`), each of those gets all of
/// `build(Some(ns), None)` in `namespace_scope(ns)` (nothing lies under it), its classes what
/// differs from that, and no other namespace or class anything; the default's are still listed
/// (`Sidecars`) for the caller to drop or mark.
fn layered<T: PartialEq + Clone>(
    namespaces: &BTreeSet<&str>,
    classes: &[SourceClass<'_>],
    namespace_scope: fn(String) -> Scope,
    visible: Option<&BTreeSet<String>>,
    build: impl Fn(Option<&str>, Option<&Labels>) -> Vec<T>,
) -> Vec<(Scope, T)> {
    let defaults = build(None, None);
    let mut out: Vec<(Scope, T)> = defaults.iter().map(|t| (Scope::Sidecars, t.clone())).collect();
    if defaults.is_empty() {
        return out;
    }
    let differing = |own: Vec<T>, base: &[T], scope: Scope| {
        own.into_iter().filter(|t| !base.contains(t)).map(|t| (scope.clone(), t)).collect::<Vec<_>>()
    };
    if let Some(visible) = visible {
        for ns in visible {
            out.extend(build(Some(ns), None).into_iter().map(|t| (namespace_scope(ns.clone()), t)));
        }
        for class in classes.iter().filter(|c| visible.contains(c.namespace)) {
            let ns = Some(class.namespace);
            out.extend(differing(build(ns, Some(class.labels)), &build(ns, None), Scope::Class(class.id.to_string())));
        }
        return out;
    }
    for ns in namespaces {
        out.extend(differing(build(Some(ns), None), &defaults, namespace_scope(ns.to_string())));
    }
    for class in classes {
        let ns = Some(class.namespace);
        let base = if namespaces.contains(class.namespace) { build(ns, None) } else { defaults.clone() };
        out.extend(differing(build(ns, Some(class.labels)), &base, Scope::Class(class.id.to_string())));
    }
    out
}

/// Whether a sidecar class of `labels` may see a VirtualService's routes differently from its
/// namespace: a `sourceLabels` of its sidecar match blocks is a subset of them.
pub fn selects_class(vs: &VirtualService, labels: &Labels) -> bool {
    let source = Source { namespace: None, labels: Some(labels) };
    super::route::source_label_sets(vs).iter().any(|set| source.selects(set, None))
}

/// The virtual hosts of a host (from [`virtual_hosts_by_context`]) plus, for each port of
/// unknown protocol that has an address, a copy in its own route config
/// ([`super::sniffed_route_config_name`]), the one its sniffing listener's HTTP chain reads. The
/// copy in the route config of the port number stays, as istiod keeps every service of a port
/// there: HTTP clients of the shared listener of that port still reach the service.
pub fn with_sniffed_routes(
    rows: &[&ServicePortRow],
    vhosts: Vec<(Scope, String, VirtualHostPart)>,
) -> Vec<(Scope, String, VirtualHostPart)> {
    let sniffed: BTreeSet<String> = rows.iter().filter_map(|r| sniffed_route(r)).collect();
    if sniffed.is_empty() {
        return vhosts;
    }
    let copies: Vec<(Scope, String, VirtualHostPart)> = vhosts
        .iter()
        .filter(|(_, _, v)| sniffed.contains(&v.name))
        .map(|(ctx, _, v)| (ctx.clone(), v.name.clone(), v.clone()))
        .collect();
    vhosts.into_iter().chain(copies).collect()
}

/// The route config of a sniffed port's own listener: `<fqdn>:<port>` when the port is of
/// unknown protocol and its host has an address to bind (istiod: a listener bound to the VIP);
/// None otherwise (without an address istiod binds `0.0.0.0` and reads the port's shared route
/// config).
fn sniffed_route(row: &ServicePortRow) -> Option<String> {
    if !row.protocol().is_sniffed() || listener_addresses(row).iter().all(Option::is_none) {
        return None;
    }
    Some(super::sniffed_route_config_name(&row.fqdn(), row.port.port))
}

/// The addresses a host's port gets listeners for: a Service's cluster IP (None: headless),
/// a ServiceEntry host's VIPs.
fn listener_addresses(row: &ServicePortRow) -> Vec<Option<std::net::IpAddr>> {
    match &row.entry {
        Some(e) => e.listener_addresses(),
        None => vec![row.cluster_ip],
    }
}

// === TCP-class ports: listeners ===

/// The listener a TCP-class service port asks for (istiod's per-service outbound listener),
/// before the ports' conflicts are settled ([`settle_port`]). Ordered by port, then host: the
/// order in which a port's candidates claim it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TcpListenerRow {
    pub port: u16,
    pub fqdn: String,
    pub namespace: String,
    pub service: String,
    /// Service, or ServiceEntry: the object a lost port is reported on.
    pub kind: Kind,
    /// istiod's name: `<clusterIP>_<port>`, or `0.0.0.0_<port>` without cluster IP.
    pub name: String,
    pub body: Vec<u8>,
    /// A sniffing listener (port of unknown protocol: HTTP chain and TCP chain), not a TCP one.
    pub sniffed: bool,
    /// The default context's listener of a host not exported everywhere
    /// ([`host_visibility`]): it claims its port ([`settle_port`]) but is not served to every
    /// sidecar; its variants (`SidecarsIn` the namespaces it is exported to) are.
    pub hidden: bool,
}

/// The address every meshflow listener binds for proxies without a bind address; proxies with
/// one get their listeners re-rendered for it (`translate::rebind_listener`).
const ANY_V4: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);

/// The listeners of a host's TCP-class ports (`PortProtocol::Tcp`), as istiod builds them for a
/// sidecar (`buildSidecarOutboundListener` with `ListenerProtocolTCP`):
/// - a TLS/HTTPS port (`is_tls_port`) whose VirtualService has applicable `tls` routes: SNI
///   chains (`tls_chains`) with the service's own cluster as the fallthrough;
/// - any other: one tcp_proxy to the VirtualService's `tcp` route target (`tcp_target`), or to
///   the service's own cluster when no `tcp` route applies.
///
/// `vs` is the VirtualService selected for the host (as for HTTP) with what is known of its
/// destinations.
pub fn tcp_listeners_for_host(
    rows: &[&ServicePortRow],
    vs: Option<(&VirtualService, &DestinationMap)>,
    source: Source<'_>,
) -> Vec<TcpListenerRow> {
    let mut out = Vec::new();
    for row in rows.iter().filter(|r| r.protocol() == super::PortProtocol::Tcp || r.protocol().is_sniffed()) {
        // A Service has one address (its cluster IP); a ServiceEntry host one listener per VIP.
        for address in listener_addresses(row) {
            out.push(tcp_listener_for(row, address, vs, source));
        }
    }
    out
}

fn tcp_listener_for(
    row: &ServicePortRow,
    address: Option<std::net::IpAddr>,
    vs: Option<(&VirtualService, &DestinationMap)>,
    source: Source<'_>,
) -> TcpListenerRow {
    use super::listener::{
        TcpTarget, is_tls_port, tcp_listener, tcp_listener_name, tcp_target, tls_chains, tls_listener,
    };
    let port = row.port.port;
    let name = tcp_listener_name(address, port);
    let own = TcpTarget::Cluster(row.cluster_name());
    let sniffed = row.protocol().is_sniffed();
    let body = if sniffed {
        // istiod's `ListenerProtocolAuto`: `tcp` routes for the TCP chain, the HTTP chain on the
        // service's own route config when bound to its address, else the port's shared one.
        let target = vs.and_then(|(vs, dest)| tcp_target(vs, port, address, &|fqdn: &str| dest.ports(fqdn), source));
        let route = match address {
            Some(_) => super::sniffed_route_config_name(&row.fqdn(), port),
            None => super::route_config_name(port),
        };
        let manager = envoy_types::util::pack_any(super::http_connection_manager(&name, route));
        super::sniffing_listener(&name, ANY_V4, port, manager, &target.unwrap_or(own))
    } else {
        match vs {
            Some((vs, dest)) => {
                let ports_of = |fqdn: &str| dest.ports(fqdn);
                if is_tls_port(&row.port) {
                    match tls_chains(vs, port, address, &ports_of, source) {
                        Some(chains) => tls_listener(&name, ANY_V4, port, &chains, &own),
                        None => tcp_listener(&name, ANY_V4, port, &own),
                    }
                } else {
                    let target = tcp_target(vs, port, address, &ports_of, source).unwrap_or(own);
                    tcp_listener(&name, ANY_V4, port, &target)
                }
            }
            None => tcp_listener(&name, ANY_V4, port, &own),
        }
    };
    TcpListenerRow {
        port,
        fqdn: row.fqdn(),
        namespace: row.namespace.clone(),
        service: row.service.clone(),
        kind: row.kind(),
        name,
        body,
        sniffed,
        hidden: false,
    }
}

/// A host's TCP listener candidates in every context it has, as [`virtual_hosts_by_context`]
/// gives its virtual hosts: the default context's (`Sidecars`), then the ones that differ for
/// the sidecars of a namespace (`SidecarsIn`: its VirtualService by `exportTo`, or a
/// `sourceNamespace` naming it) and for a class (`Class`: a `sourceLabels` selecting it, over
/// its namespace's). Which candidate binds a port is settled on the default ones
/// ([`settle_port`]); the winner's variants of the same name are served in their scopes.
pub fn tcp_listeners_by_context<'a>(
    rows: &[&ServicePortRow],
    routes: &BTreeMap<Context, ContextRoutes<'a>>,
    source_namespaces: &BTreeSet<&str>,
    classes: &[SourceClass<'_>],
) -> Vec<(Scope, TcpListenerRow)> {
    let default_routes = routes.get(&None).copied().flatten();
    let namespaces: BTreeSet<&str> =
        routes.keys().filter_map(|c| c.as_deref()).chain(source_namespaces.iter().copied()).collect();
    let build = |ns: Option<&str>, labels: Option<&Labels>| {
        let vs = ns.and_then(|ns| routes.get(&Some(ns.to_string())).copied()).unwrap_or(default_routes);
        tcp_listeners_for_host(rows, vs, Source { namespace: ns, labels })
    };
    let visible = host_visibility(rows);
    let mut out = layered(&namespaces, classes, Scope::SidecarsIn, visible.as_ref(), build);
    if visible.is_some() {
        for (_, l) in out.iter_mut().filter(|(scope, _)| *scope == Scope::Sidecars) {
            l.hidden = true;
        }
    }
    out
}

/// Settles one port number among the listeners that want it: meshflow's listeners bind their
/// port (no iptables redirect, no original destination), so every listener of a port binds the
/// same socket (`0.0.0.0:<port>`, or the proxy's bind address) and only one can exist.
///
/// Candidates are TCP listeners and the sniffing listeners of ports of unknown protocol.
/// - When the port has HTTP services (`http`), their shared listener `0.0.0.0_<port>` keeps it
///   and every TCP (or sniffing) listener of the port loses (a sniffed service stays reachable
///   over HTTP there: its virtual host is in the port's route config): istiod would merge the two into a sniffing
///   listener that tells them apart by destination VIP, which needs the original destination.
/// - Otherwise the first candidate in host order wins (istiod orders services by creation time,
///   then host; meshflow's Service has no creation time, so host order decides). For two
///   services without cluster IP that is istiod's rule too (same listener name: the first
///   service's chain stays); services with distinct cluster IPs would have distinct listeners
///   in istiod.
///
/// Returns the winner and one diagnostic per loser, on the losing Service.
pub fn settle_port<'a>(
    port: u16,
    http: bool,
    candidates: impl IntoIterator<Item = &'a TcpListenerRow>,
) -> (Option<&'a TcpListenerRow>, Vec<Diagnostic>) {
    let mut sorted: Vec<&TcpListenerRow> = candidates.into_iter().collect();
    sorted.sort();
    sorted.dedup();
    let winner = if http { None } else { sorted.first().copied() };
    let diagnostics = sorted
        .iter()
        .skip(usize::from(winner.is_some()))
        .map(|c| {
            let message = match winner {
                None if c.sniffed => format!(
                    "port {port} also has HTTP services, whose listener {} binds it: the sniffing listener {} is \
                     not served; HTTP requests for this service are still routed there (its virtual host is in \
                     route config {port}), other TCP traffic to this port is not",
                    super::listener_name(port),
                    c.name
                ),
                None => format!(
                    "port {port} also has HTTP services, whose listener {} binds it: the TCP listener {} is \
                     not served and connections to this port are handled as HTTP",
                    super::listener_name(port),
                    c.name
                ),
                Some(w) => format!(
                    "listener {} of {} binds port {port} first (host order): the {} listener {} is not served",
                    w.name,
                    w.fqdn,
                    if c.sniffed { "sniffing" } else { "TCP" },
                    c.name
                ),
            };
            Diagnostic {
                object: ObjectKey::new(c.kind, c.namespace.clone(), c.service.clone()),
                field: format!("spec.ports[port={port}]"),
                message,
            }
        })
        .collect();
    (winner, diagnostics)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::k8s::{Protocol, ServicePort, TargetPort};
    use crate::model::{Object, ParseOutcome, parse_document};
    use envoy_types::pb::envoy::config::core::v3 as core;
    use envoy_types::pb::envoy::config::listener::v3 as listener;
    use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp;
    use prost::Message;
    use tcp::tcp_proxy::ClusterSpecifier;

    fn row(service: &str, port_name: &str, port: u16, cluster_ip: Option<&str>) -> ServicePortRow {
        ServicePortRow {
            namespace: "default".into(),
            service: service.into(),
            port: ServicePort {
                name: port_name.into(),
                port,
                protocol: Protocol::Tcp,
                target_port: TargetPort::Number(port),
                app_protocol: None,
            },
            cluster_ip: cluster_ip.map(|ip| ip.parse().unwrap()),
            headless: false,
            entry: None,
            export_to: Vec::new(),
        }
    }

    fn vs(spec: serde_json::Value) -> VirtualService {
        let value = serde_json::json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "tcp-echo", "namespace": "default"}, "spec": spec,
        });
        match parse_document(value, "default").pop() {
            Some(ParseOutcome::Object(Object::VirtualService(vs))) => *vs,
            other => panic!("invalid test VirtualService: {other:?}"),
        }
    }

    fn decode(bytes: &[u8]) -> listener::Listener {
        listener::Listener::decode(bytes).unwrap()
    }

    /// The cluster of a filter chain's only filter, a tcp_proxy.
    fn proxied_cluster(chain: &listener::FilterChain) -> String {
        assert_eq!(chain.filters[0].name, "envoy.filters.network.tcp_proxy");
        let Some(listener::filter::ConfigType::TypedConfig(any)) = &chain.filters[0].config_type else { panic!() };
        match tcp::TcpProxy::decode(&any.value[..]).unwrap().cluster_specifier {
            Some(ClusterSpecifier::Cluster(c)) => c,
            other => panic!("{other:?}"),
        }
    }

    fn bound(l: &listener::Listener) -> (String, u32) {
        let Some(core::address::Address::SocketAddress(s)) = l.address.as_ref().unwrap().address.as_ref() else {
            panic!()
        };
        let Some(core::socket_address::PortSpecifier::PortValue(p)) = s.port_specifier else { panic!() };
        (s.address.clone(), p)
    }

    const ECHO: &str = "tcp-echo.default.svc.cluster.local";

    #[test]
    fn a_tcp_port_gets_a_listener_named_by_cluster_ip_to_its_own_cluster() {
        let tcp = row("tcp-echo", "tcp", 9000, Some("10.96.0.7"));
        let http = row("tcp-echo", "http", 80, Some("10.96.0.7"));
        let out = tcp_listeners_for_host(&[&tcp, &http], None, Source::default());
        assert_eq!(out.len(), 1, "HTTP ports have the shared HTTP listener, not a TCP one");
        assert_eq!(out[0].name, "10.96.0.7_9000");
        let l = decode(&out[0].body);
        assert_eq!(l.name, "10.96.0.7_9000");
        assert_eq!(bound(&l), ("0.0.0.0".to_string(), 9000));
        assert_eq!(l.filter_chains.len(), 1);
        assert_eq!(proxied_cluster(&l.filter_chains[0]), format!("outbound|9000||{ECHO}"));

        let headless = row("tcp-echo", "tcp", 9000, None);
        assert_eq!(tcp_listeners_for_host(&[&headless], None, Source::default())[0].name, "0.0.0.0_9000");
    }

    #[test]
    fn a_tcp_route_of_the_host_virtual_service_picks_the_cluster() {
        // tcp-echo-all-v1.yaml, bound to the mesh.
        let v = vs(serde_json::json!({"hosts": ["tcp-echo"], "tcp": [{"match": [{"port": 9000}],
            "route": [{"destination": {"host": "tcp-echo", "port": {"number": 9000}, "subset": "v1"}}]}]}));
        let dest = DestinationMap::from([(ECHO.to_string(), HostInfo { ports: vec![9000, 9001], rule: None })]);
        let (p9000, p9001) = (row("tcp-echo", "tcp", 9000, Some("10.96.0.7")), row("tcp-echo", "tcp-b", 9001, None));
        let out = tcp_listeners_for_host(&[&p9000, &p9001], Some((&v, &dest)), Source::default());
        let clusters: Vec<String> = out.iter().map(|l| proxied_cluster(&decode(&l.body).filter_chains[0])).collect();
        assert_eq!(clusters, [format!("outbound|9000|v1|{ECHO}"), format!("outbound|9001||{ECHO}")], "match.port");
    }

    #[test]
    fn a_tls_port_with_tls_routes_gets_sni_chains_and_falls_through_to_its_own_cluster() {
        let v = vs(
            serde_json::json!({"hosts": ["tcp-echo", "a.example.com"], "tls": [{"match": [{"sniHosts": ["a.example.com"]}],
            "route": [{"destination": {"host": "tcp-echo", "subset": "v1"}}]}]}),
        );
        let dest = DestinationMap::from([(ECHO.to_string(), HostInfo { ports: vec![443], rule: None })]);
        let tls = row("tcp-echo", "https", 443, Some("10.96.0.7"));
        let l = decode(&tcp_listeners_for_host(&[&tls], Some((&v, &dest)), Source::default())[0].body);
        assert_eq!(l.filter_chains.len(), 1);
        assert_eq!(l.filter_chains[0].filter_chain_match.as_ref().unwrap().server_names, ["a.example.com"]);
        assert_eq!(proxied_cluster(&l.filter_chains[0]), format!("outbound|443|v1|{ECHO}"));
        assert_eq!(proxied_cluster(l.default_filter_chain.as_ref().unwrap()), format!("outbound|443||{ECHO}"));
        assert_eq!(l.listener_filters[0].name, "envoy.filters.listener.tls_inspector");

        // A plain TCP port ignores tls routes; a TLS port ignores tcp routes.
        let plain = row("tcp-echo", "tcp", 443, None);
        let l = decode(&tcp_listeners_for_host(&[&plain], Some((&v, &dest)), Source::default())[0].body);
        assert!(l.default_filter_chain.is_none() && l.listener_filters.is_empty());
        assert_eq!(proxied_cluster(&l.filter_chains[0]), format!("outbound|443||{ECHO}"));
        let tcp_only = vs(serde_json::json!({"hosts": ["tcp-echo"],
            "tcp": [{"route": [{"destination": {"host": "tcp-echo", "subset": "v1"}}]}]}));
        let l = decode(&tcp_listeners_for_host(&[&tls], Some((&tcp_only, &dest)), Source::default())[0].body);
        assert_eq!(proxied_cluster(&l.filter_chains[0]), format!("outbound|443||{ECHO}"));
    }

    #[test]
    fn a_port_goes_to_its_http_services_else_to_the_first_host() {
        let a = &tcp_listeners_for_host(&[&row("a", "tcp", 9000, Some("10.96.0.1"))], None, Source::default())[0];
        let b = &tcp_listeners_for_host(&[&row("b", "tcp", 9000, None)], None, Source::default())[0];
        let (winner, lost) = settle_port(9000, false, [b, a]);
        assert_eq!(winner.map(|w| w.name.as_str()), Some("10.96.0.1_9000"), "a.default sorts before b.default");
        assert_eq!(lost.len(), 1);
        assert_eq!(lost[0].object, ObjectKey::new(Kind::Service, "default", "b"));
        assert_eq!(lost[0].field, "spec.ports[port=9000]");

        let (winner, lost) = settle_port(9000, true, [a, b]);
        assert_eq!(winner, None, "the HTTP listener 0.0.0.0_9000 keeps the port");
        let services: Vec<&str> = lost.iter().map(|d| d.object.name.as_str()).collect();
        assert_eq!(services, ["a", "b"]);
        assert!(lost[0].message.contains("0.0.0.0_9000"), "{}", lost[0].message);

        assert_eq!(settle_port(9000, false, [a]), (Some(a), vec![]));
    }

    fn rule(namespace: &str, name: &str, host: &str, export_to: &[&str], subset: &str) -> DestinationRule {
        let value = serde_json::json!({
            "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"host": host, "exportTo": export_to, "subsets": [{"name": subset, "labels": {"v": subset}}]},
        });
        match parse_document(value, namespace).pop() {
            Some(ParseOutcome::Object(Object::DestinationRule(dr))) => *dr,
            other => panic!("invalid test DestinationRule: {other:?}"),
        }
    }

    /// The subset name of the rule picked for `proxy`: each test rule has one, named after it.
    fn picked(proxy: Option<&str>, rules: &[DestinationRule]) -> Option<String> {
        let fqdn = "reviews.default.svc.cluster.local";
        let patterns: Vec<String> = rules.iter().map(|r| destination_rule_pattern(r).unwrap()).collect();
        let candidates: Vec<(&str, &DestinationRule)> =
            patterns.iter().map(String::as_str).zip(rules).filter(|(p, _)| pattern_matches(p, fqdn)).collect();
        rule_for(proxy, "default", &candidates, ROOT_NAMESPACE).map(|r| r.subsets[0].name.clone())
    }

    #[test]
    fn a_rule_in_the_proxy_namespace_wins_then_the_host_namespace_then_the_root() {
        let rules = [
            rule("default", "host-ns", "reviews", &[], "host"),
            rule("shop", "proxy-ns", "reviews.default.svc.cluster.local", &[], "proxy"),
            rule("istio-system", "root", "reviews.default.svc.cluster.local", &[], "root"),
        ];
        assert_eq!(picked(Some("shop"), &rules).as_deref(), Some("proxy"));
        assert_eq!(picked(Some("default"), &rules).as_deref(), Some("host"));
        assert_eq!(picked(Some("other"), &rules).as_deref(), Some("host"));
        assert_eq!(picked(None, &rules).as_deref(), Some("host"));
        // Without the host namespace's rule, the root's; a rule of a third namespace is that
        // namespace's own business.
        assert_eq!(picked(Some("other"), &rules[1..]).as_deref(), Some("root"));
        assert_eq!(picked(Some("other"), &rules[1..2]), None);
    }

    #[test]
    fn the_root_namespace_is_the_configured_one() {
        let candidates_of = |rules: &[DestinationRule]| -> Vec<(String, DestinationRule)> {
            rules.iter().map(|r| (destination_rule_pattern(r).unwrap(), r.clone())).collect()
        };
        let rules = [
            rule("mesh-root", "custom", "reviews.default.svc.cluster.local", &[], "custom"),
            rule("istio-system", "default-root", "reviews.default.svc.cluster.local", &[], "istio"),
        ];
        let owned = candidates_of(&rules);
        let candidates: Vec<(&str, &DestinationRule)> = owned.iter().map(|(p, r)| (p.as_str(), r)).collect();
        let picked = |proxy: Option<&str>, root: &str| {
            rule_for(proxy, "default", &candidates, root).map(|r| r.subsets[0].name.clone())
        };
        assert_eq!(picked(Some("shop"), "mesh-root").as_deref(), Some("custom"));
        assert_eq!(picked(None, "mesh-root").as_deref(), Some("custom"));
        assert_eq!(picked(None, ROOT_NAMESPACE).as_deref(), Some("istio"));
        // The configured root's proxies may pick a rule differently (they read the root's
        // private rules first): it is among every rule's namespaces, istio-system is not.
        let host_rule = rule("default", "host", "reviews", &[], "host");
        assert!(rule_namespaces(&host_rule, "mesh-root").contains("mesh-root"));
        assert!(!rule_namespaces(&host_rule, "mesh-root").contains(ROOT_NAMESPACE));
    }

    #[test]
    fn export_to_limits_who_gets_a_rule() {
        let private = [rule("default", "private", "reviews", &["."], "private")];
        assert_eq!(picked(Some("default"), &private).as_deref(), Some("private"));
        assert_eq!(picked(Some("shop"), &private), None);
        assert_eq!(picked(None, &private), None);
        let to_shop = [rule("default", "to-shop", "reviews", &["shop"], "to-shop")];
        assert_eq!(picked(Some("shop"), &to_shop).as_deref(), Some("to-shop"));
        assert_eq!(picked(Some("other"), &to_shop), None);
        // A root namespace rule exported to itself only is the root's proxies' (gateways') own.
        let root_private = [rule("istio-system", "root", "reviews.default.svc.cluster.local", &["."], "root")];
        assert_eq!(picked(Some("istio-system"), &root_private).as_deref(), Some("root"));
        assert_eq!(picked(None, &root_private), None);
    }

    #[test]
    fn rules_by_context_lists_only_the_namespaces_that_differ() {
        let rules = [
            rule("default", "host-ns", "reviews", &[], "host"),
            rule("shop", "proxy-ns", "reviews.default.svc.cluster.local", &[], "proxy"),
        ];
        let candidates: Vec<(String, &DestinationRule)> =
            rules.iter().map(|r| (destination_rule_pattern(r).unwrap(), r)).collect();
        let candidates: Vec<(&str, &DestinationRule)> = candidates.iter().map(|(p, r)| (p.as_str(), *r)).collect();
        let by = rules_by_context("default", &candidates, ["default", "shop", "istio-system"], ROOT_NAMESPACE);
        let by: Vec<(Option<&str>, &str)> =
            by.iter().map(|(c, r)| (c.as_deref(), r.as_ref().unwrap().subsets[0].name.as_str())).collect();
        assert_eq!(by, [(None, "host"), (Some("shop"), "proxy")]);
    }

    #[test]
    fn a_virtual_service_exported_to_its_namespace_only_is_chosen_there_only() {
        let mut private = vs(serde_json::json!({"hosts": ["reviews"], "exportTo": ["."],
            "http": [{"route": [{"destination": {"host": "reviews"}}]}]}));
        private.name = "private".into();
        let public = vs(serde_json::json!({"hosts": ["*.svc.cluster.local"],
            "http": [{"route": [{"destination": {"host": "reviews"}}]}]}));
        let ranks =
            [VsRank::new("reviews.default.svc.cluster.local", &private), VsRank::new("*.svc.cluster.local", &public)];
        let ranks: Vec<&VsRank> = ranks.iter().collect();
        let by = virtual_services_by_context(&ranks, ["default", "shop"]);
        let key = |n: &str| Some(("default".to_string(), n.to_string()));
        assert_eq!(by, [(None, key("tcp-echo")), (Some("default".into()), key("private"))]);
        assert!(exported_to(&["shop".into()], "default", Some("shop")));
        assert!(!exported_to(&["shop".into()], "default", None));
        assert!(!exported_to(&["~".into()], "default", Some("default")));
    }

    /// The RDS route config name and stat prefix of a chain's HTTP connection manager.
    fn rds_of(chain: &listener::FilterChain) -> (String, String) {
        use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
        assert_eq!(chain.filters[0].name, "envoy.filters.network.http_connection_manager");
        let Some(listener::filter::ConfigType::TypedConfig(any)) = &chain.filters[0].config_type else { panic!() };
        let m = hcm::HttpConnectionManager::decode(&any.value[..]).unwrap();
        let Some(hcm::http_connection_manager::RouteSpecifier::Rds(rds)) = m.route_specifier else { panic!() };
        (rds.route_config_name, m.stat_prefix)
    }

    #[test]
    fn a_port_of_unknown_protocol_gets_a_sniffing_listener_reading_its_own_route_config() {
        // istiod (`buildSidecarOutboundListener`, ListenerProtocolAuto): bound to the VIP, listener
        // `<vip>_<port>`; the HTTP chain's RDS is `<host>:<port>` (`buildSidecarOutboundHTTPListenerOpts`).
        let web = row("echo", "web", 7000, Some("10.96.0.60"));
        let http = row("echo", "http", 80, Some("10.96.0.60"));
        let out = tcp_listeners_for_host(&[&web, &http], None, Source::default());
        assert_eq!(out.len(), 1, "the HTTP port has the shared HTTP listener");
        assert!(out[0].sniffed);
        assert_eq!(out[0].name, "10.96.0.60_7000");
        let l = decode(&out[0].body);
        assert_eq!(l.name, "10.96.0.60_7000");
        assert_eq!(bound(&l), ("0.0.0.0".to_string(), 7000));
        let filters: Vec<&str> = l.listener_filters.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(filters, ["envoy.filters.listener.http_inspector"]);
        assert_eq!(l.filter_chains.len(), 1);
        let m = l.filter_chains[0].filter_chain_match.as_ref().unwrap();
        assert_eq!(m.application_protocols, ["http/1.1", "h2c"]);
        assert_eq!(
            rds_of(&l.filter_chains[0]),
            ("echo.default.svc.cluster.local:7000".to_string(), "outbound_10.96.0.60_7000".to_string())
        );
        assert_eq!(
            proxied_cluster(l.default_filter_chain.as_ref().unwrap()),
            "outbound|7000||echo.default.svc.cluster.local"
        );

        // Headless: bound to the wildcard, istiod reads the port's shared route config.
        let headless = row("echo", "web", 7000, None);
        let out = tcp_listeners_for_host(&[&headless], None, Source::default());
        let l = decode(&out[0].body);
        assert_eq!(l.name, "0.0.0.0_7000");
        assert_eq!(rds_of(&l.filter_chains[0]).0, "7000");
    }

    #[test]
    fn a_sniffed_port_with_an_address_has_its_virtual_host_in_its_own_route_config_too() {
        let routes_of = |rows: &[&ServicePortRow]| -> Vec<(String, String)> {
            let info = HostInfo::new(rows, None);
            let infos: BTreeMap<Context, &HostInfo> = [(None, &info)].into();
            let vhosts = virtual_hosts_by_context(rows, &infos, &BTreeMap::new(), &BTreeSet::new(), &[]);
            let mut out: Vec<(String, String)> =
                with_sniffed_routes(rows, vhosts).into_iter().map(|(_, r, v)| (r, v.name)).collect();
            out.sort();
            out
        };
        let host = "echo.default.svc.cluster.local";
        let web = row("echo", "web", 7000, Some("10.96.0.60"));
        let http = row("echo", "http", 80, Some("10.96.0.60"));
        assert_eq!(
            routes_of(&[&web, &http]),
            [
                ("7000".to_string(), format!("{host}:7000")),
                ("80".to_string(), format!("{host}:80")),
                (format!("{host}:7000"), format!("{host}:7000")),
            ]
        );
        let headless = row("echo", "web", 7000, None);
        assert_eq!(routes_of(&[&headless]), [("7000".to_string(), format!("{host}:7000"))]);
    }

    #[test]
    fn a_sniffed_port_that_loses_to_http_services_is_reported_with_what_still_works() {
        let web = row("echo", "web", 7000, Some("10.96.0.60"));
        let out = tcp_listeners_for_host(&[&web], None, Source::default());
        let (winner, diagnostics) = settle_port(7000, true, &out);
        assert!(winner.is_none());
        assert_eq!(diagnostics.len(), 1);
        assert_eq!(diagnostics[0].field, "spec.ports[port=7000]");
        assert!(diagnostics[0].message.contains("sniffing listener 10.96.0.60_7000 is not served"));
        let (winner, diagnostics) = settle_port(7000, false, &out);
        assert_eq!(winner.map(|w| w.name.as_str()), Some("10.96.0.60_7000"));
        assert!(diagnostics.is_empty());
        // Two sniffed services on one port: one socket, the first host binds it.
        let other = row("echo2", "web", 7000, Some("10.96.0.61"));
        let both: Vec<TcpListenerRow> =
            out.into_iter().chain(tcp_listeners_for_host(&[&other], None, Source::default())).collect();
        let (winner, diagnostics) = settle_port(7000, false, &both);
        assert_eq!(winner.map(|w| w.name.as_str()), Some("10.96.0.60_7000"));
        assert_eq!(diagnostics.len(), 1);
        assert_eq!(diagnostics[0].object.name, "echo2");
        assert!(diagnostics[0].message.contains("the sniffing listener 10.96.0.61_7000 is not served"));
    }

    #[test]
    fn source_dependent_routes_give_namespaces_and_classes_only_the_virtual_hosts_that_differ() {
        let mut http = row("reviews", "http", 9080, Some("10.96.0.9"));
        http.port.name = "http".into();
        // A second port: the sourceNamespace block is restricted to 9080.
        let mut metrics = row("reviews", "http-metrics", 9081, Some("10.96.0.9"));
        metrics.port.name = "http-metrics".into();
        let rows = [&http, &metrics];
        let info = HostInfo::new(&rows, None);
        let v = vs(serde_json::json!({"hosts": ["reviews"], "http": [
            {"match": [{"sourceLabels": {"app": "web"}}], "route": [{"destination": {"host": "reviews", "subset": "v2"}}]},
            {"match": [{"sourceNamespace": "shop", "port": 9080}], "route": [{"destination": {"host": "reviews", "subset": "v3"}}]},
            {"route": [{"destination": {"host": "reviews", "subset": "v1"}}]}]}));
        let dest = DestinationMap::new();
        let infos = BTreeMap::from([(None, &info)]);
        let routes = BTreeMap::from([(None, Some((&v, &dest)))]);
        let web = Labels::from([("app".to_string(), "web".to_string())]);
        let plain = Labels::from([("app".to_string(), "plain".to_string())]);
        assert!(selects_class(&v, &web) && !selects_class(&v, &plain));
        let classes = [
            SourceClass { id: "sidecar/shop/app=web", namespace: "shop", labels: &web },
            SourceClass { id: "sidecar/default/app=web", namespace: "default", labels: &web },
        ];
        let out = virtual_hosts_by_context(&rows, &infos, &routes, &BTreeSet::from(["shop"]), &classes);
        let first_cluster = |vhost: &VirtualHostPart| {
            use envoy_types::pb::envoy::config::route::v3 as r;
            let decoded = r::VirtualHost::decode(vhost.body.as_slice()).unwrap();
            match decoded.routes[0].action.clone() {
                Some(r::route::Action::Route(a)) => match a.cluster_specifier {
                    Some(r::route_action::ClusterSpecifier::Cluster(c)) => c,
                    other => panic!("{other:?}"),
                },
                other => panic!("{other:?}"),
            }
        };
        let got: Vec<(String, String, String)> =
            out.iter().map(|(scope, route, v)| (scope.to_string(), route.clone(), first_cluster(v))).collect();
        let reviews = |subset: &str| format!("outbound|9080|{subset}|reviews.default.svc.cluster.local");
        assert_eq!(
            got,
            [
                // Everyone: the v1 catch-all, on both ports (its cluster keeps the port).
                ("sidecars".to_string(), "9080".to_string(), reviews("v1")),
                ("sidecars".to_string(), "9081".to_string(), reviews("v1").replace("9080", "9081")),
                // shop: its block (v3) on 9080 only; 9081 stays the default's.
                ("namespace/shop".to_string(), "9080".to_string(), reviews("v3")),
                // app=web, wherever: the first block (v2) on both ports, on top of its namespace's.
                ("sidecar/shop/app=web".to_string(), "9080".to_string(), reviews("v2")),
                ("sidecar/shop/app=web".to_string(), "9081".to_string(), reviews("v2").replace("9080", "9081")),
                ("sidecar/default/app=web".to_string(), "9080".to_string(), reviews("v2")),
                ("sidecar/default/app=web".to_string(), "9081".to_string(), reviews("v2").replace("9080", "9081")),
            ]
        );
    }

    #[test]
    fn export_to_gives_the_namespaces_that_see_a_host() {
        let with = |export_to: &[&str]| {
            let mut r = row("reviews", "http", 9080, Some("10.96.0.9"));
            r.export_to = export_to.iter().map(|s| s.to_string()).collect();
            r
        };
        let set = |v: &[&str]| Some(v.iter().map(|s| s.to_string()).collect::<BTreeSet<String>>());
        assert_eq!(host_visibility(&[&with(&[])]), None, "absent: meshConfig's default *");
        assert_eq!(host_visibility(&[&with(&["*"])]), None);
        assert_eq!(host_visibility(&[&with(&[".", "*"])]), None, "* with others is still everyone");
        assert_eq!(host_visibility(&[&with(&["."])]), set(&["default"]), ". is the host's namespace");
        assert_eq!(host_visibility(&[&with(&["shop", "."])]), set(&["default", "shop"]));
        assert_eq!(host_visibility(&[&with(&["~"])]), set(&[]), "~: nobody");
        assert_eq!(host_visibility(&[&with(&["."]), &with(&[])]), None, "rows disagreeing: visible where any is");
        // Listeners: every sidecar's when one host of the port is public, else the namespaces'.
        assert_eq!(http_listener_scopes(&[None, set(&["shop"])]), [Scope::Sidecars]);
        assert_eq!(
            http_listener_scopes(&[set(&["shop"]), set(&["default"]), set(&[])]),
            [Scope::SidecarsIn("default".into()), Scope::SidecarsIn("shop".into())]
        );
    }

    #[test]
    fn a_host_exported_to_some_namespaces_has_clusters_and_virtual_hosts_there_only() {
        let mut http = row("reviews", "http", 9080, Some("10.96.0.9"));
        http.export_to = vec![".".into(), "shop".into()];
        let mut tcp = row("reviews", "tcp", 9000, Some("10.96.0.9"));
        tcp.export_to = http.export_to.clone();
        let rows = [&http, &tcp];
        let visible = host_visibility(&rows);
        // Clusters: one context per namespace exported to, with its own rule where it has one.
        let own = rule("shop", "own", "reviews.default.svc.cluster.local", &[], "own").spec;
        let host = rule("default", "host", "reviews", &[], "host").spec;
        let (none, shop, other): (Context, Context, Context) = (None, Some("shop".into()), Some("other".into()));
        let rules = [(&none, Some(&host)), (&shop, Some(&own)), (&other, None)];
        let contexts: Vec<(Option<String>, Option<&str>)> = cluster_contexts(visible.as_ref(), &rules)
            .into_iter()
            .map(|(c, r)| (c, r.map(|r| r.subsets[0].name.as_str())))
            .collect();
        assert_eq!(contexts, [(Some("default".into()), Some("host")), (Some("shop".into()), Some("own"))]);
        assert_eq!(cluster_contexts(None, &rules).len(), 3, "a public host: its rules' contexts");
        // Virtual hosts: none for every sidecar, all of them for each namespace exported to.
        let info = HostInfo::new(&rows, None);
        let infos = BTreeMap::from([(None, &info)]);
        let web = Labels::from([("app".to_string(), "web".to_string())]);
        let classes = [SourceClass { id: "sidecar/other/app=web", namespace: "other", labels: &web }];
        let out = virtual_hosts_by_context(&rows, &infos, &BTreeMap::new(), &BTreeSet::from(["other"]), &classes);
        let got: Vec<(String, String, String)> =
            out.into_iter().map(|(scope, route, v)| (scope.to_string(), route, v.name)).collect();
        let name = "reviews.default.svc.cluster.local:9080".to_string();
        assert_eq!(
            got,
            [
                ("namespace/default".to_string(), "9080".to_string(), name.clone()),
                ("namespace/shop".to_string(), "9080".to_string(), name),
            ]
        );
        // TCP listeners: the default's claims its port, hidden; each namespace's is served.
        let out = tcp_listeners_by_context(&rows, &BTreeMap::new(), &BTreeSet::new(), &[]);
        let got: Vec<(String, &str, bool)> =
            out.iter().map(|(scope, l)| (scope.to_string(), l.name.as_str(), l.hidden)).collect();
        assert_eq!(
            got,
            [
                ("sidecars".to_string(), "10.96.0.9_9000", true),
                ("sidecars/default".to_string(), "10.96.0.9_9000", false),
                ("sidecars/shop".to_string(), "10.96.0.9_9000", false),
            ]
        );
    }
}
