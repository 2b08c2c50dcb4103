//! The config graph: input collections in, output rows out. The second of the engine's five
//! graphs (see [`super::graphs`]): it reads the proxy graph's class labels, and hands the
//! endpoint graphs (load assignments, [`super::endpoints`]; entries' endpoints,
//! [`super::unsliced`]) what it knows of clusters.
//!
//! Keys decide the cost of a change. Every arrow below keeps work local to its key: a
//! service or ServiceEntry change touches its hosts; a DestinationRule or VirtualService change
//! touches the hosts its host pattern matches and the VirtualServices that route to them.
//!
//! ```text
//! virtual services ─roots by each delegate they name──join(delegates: no hosts, by (ns, name))
//!                  ─reduce per root: merge─▶ merged roots ⊎ VirtualServices that delegate nothing
//!                  (= "virtual services" below; delegates never alone)
//! services ─flat_map─▶ service ports ─┐
//! service entries ─flat_map─▶ host × port rows (resolution, VIPs, inline DNS endpoints) ─┤
//!                 by host (fqdn) ─reduce: settle (Service > oldest entry, merge compatible)─▶ host rows ─┬──────┐
//!                   host patterns (fqdn, ns) ┤ (fqdn, *.suffix…, *)                                    │      │
//! destination rules ─by pattern──────join────┴─reduce per (fqdn, ns) ⊎ namespaces of connected proxies that
//!        a candidate names (own, exportTo, root): rule per context ─▶ rule by host ─┐                  │      │
//!                      per host reduce (rows ⊎ rule per context) ─▶ clusters (+ subsets), host info ◀──┘      │
//!                                   (default context → Scope::All; a namespace that differs → its Scope)      │
//!                                   (exportTo not `*`: each namespace it is exported to, no default)          │
//! virtual services ─by pattern──join(host patterns)──reduce ⊎ exportTo namespaces: VS per context─▶ by host   │
//!                  ─by destination host──join(host info)──reduce per VS─▶ (VS, destination map)              │
//!   mesh VS ─sourceNamespace ⋈ class namespaces, sourceLabels ⋈ sidecar class labels (label index)─┐
//!                                                       ─⋈ host patterns─▶ source markers by host   │
//!                   per host reduce (rows ⊎ host info ⊎ chosen VS, per context ⊎ markers) ─▶ virtual hosts ◀┘
//!                        └▶ route configs (assembled outside; a namespace's = sidecars' with its own in
//!                           place, a class's = its namespace's with its own in place)
//!                          (a sniffed port's also in `<fqdn>:<port>`, its own sniffing listener's)
//!                          HTTP ports (not sniffed) × visibility ─reduce per port─▶ listeners
//!                                    (Sidecars, or SidecarsIn each namespace it is exported to)
//!                 per host reduce (TCP + sniffed rows ⊎ chosen VS per context ⊎ markers) ─▶ TCP and sniffing
//!                                      listener candidates (one per VIP), and their variants per namespace/class
//!                  per port reduce (candidates ⊎ HTTP port marker) ─▶ the port's TCP listener (+ the winner's
//!                                                                     variants), losers as diagnostics
//!   each cluster ─▶ ClusterFact (assigned, subsets, located, entry owners, DNS located) ─▶ endpoint graph
//! class labels (proxy graph)
//! sidecar class labels ─by (ns, each label)─⋈ services with a selector, by (ns, one selector pair)
//!                      ─selector ⊆ labels, ⊎ every sidecar class─reduce per class─▶ virtualInbound,
//!                      inbound|<port>|| clusters (Scope::Class; only captured proxies get the listener)
//! proxy classes ─filter(proxyless)─▶ () ─semijoin⋉ cluster rows, HTTP host rows, virtual hosts
//!                                     ─▶ proxyless clusters, API listeners, route configs (proxyless.rs)
//! ```

use std::collections::{BTreeMap, BTreeSet};

use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use timely::dataflow::Scope as Graph;

use super::inputs::{graph_inputs, input};
use super::rows::{ClassLabelRow, ClusterFact, OutputRow};
use crate::model::Secret;
use crate::model::Service;
use crate::model::istio::{DestinationRule, DestinationRuleSpec, Gateway, ServiceEntry, VirtualService};
use crate::model::k8s::Labels;
use crate::model::proxy::{ProxyClass, ProxyKind};
use crate::translate::endpoint::service_port_rows;
use crate::translate::gateway::{self, SecretRef};
use crate::translate::outbound::{
    self, ClusterRow, ConfigKey, Context, DestinationMap, HostInfo, TcpListenerRow, VsRank, host_patterns,
};
use crate::translate::{self, Diagnostic, MeshConfig, ResourceType, Scope, ServicePortRow, service_entry};
use crate::translate::{delegate, views};

graph_inputs! {
    /// The input collections, one per kind that translation reads.
    pub struct Inputs {
        pub services: Service,
        pub virtual_services: VirtualService,
        pub destination_rules: DestinationRule,
        pub gateways: Gateway,
        pub classes: ProxyClass,
        pub secrets: Secret,
        pub class_labels: ClassLabelRow,
        pub service_entries: ServiceEntry,
    }
}

/// What meets per host to pick its DestinationRule in each context: the rules whose host
/// matched it, and the namespaces of connected proxies that one of them names.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum RuleInput {
    Candidate(String, DestinationRule),
    Namespace(String),
}

/// What meets per host to pick its VirtualService in each context.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum VsPick {
    Candidate(VsRank),
    Namespace(String),
}

/// What meets per host to make its clusters: its rows, and its rule in each context where it
/// has one (`None`: in that namespace it has none, unlike the default).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum HostInput {
    Port(ServicePortRow),
    Rule(Context, Option<DestinationRuleSpec>),
}

/// What a host's per-host reduce produces, per context.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum HostOutput {
    /// A cluster in a context; `true`: a cluster without subset that has no copy in the
    /// default context (its host is not exported everywhere), so it gets its own assignment.
    Cluster(Context, Box<ClusterRow>, bool),
    Info(Context, HostInfo),
}

/// What meets per root VirtualService to merge it with its delegates. `Root` sorts first.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum DelegateInput {
    Root(VirtualService),
    Child(VirtualService),
}

/// What meets per VirtualService: the object and what is known of each destination host.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum VsInput {
    Object(VirtualService),
    Destination(String, HostInfo),
}

/// What claims a port number: HTTP services (their shared listener), or one TCP listener
/// (the default context's; its variants for a namespace's sidecars or a class come along).
/// `Http` sorts first.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum PortClaim {
    Http,
    Tcp(TcpListenerRow),
    Variant(Scope, TcpListenerRow),
}

/// What meets per gateway proxy class to make its listeners and route configs.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum ClassInput {
    Gateway(Gateway),
    Routes(VirtualService, DestinationMap),
}

/// What a gateway proxy class's reduce produces.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum ClassOutput {
    Resource(ResourceType, String, Vec<u8>),
    Secret(SecretRef),
    Diagnostic(Diagnostic),
}

/// What meets per (class, SDS name): the reference and the Secrets it may read.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum SecretInput {
    /// The reference, and the namespace of the class that holds it.
    Ref(SecretRef, String),
    Found(Secret),
    Fallback(Secret),
}

/// What meets per host to make its virtual hosts (and its TCP listeners), per context.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum VhostInput {
    Port(ServicePortRow),
    Info(Context, HostInfo),
    Routes(Context, VirtualService, DestinationMap),
    /// In this namespace no VirtualService applies to the host, unlike the default.
    NoRoutes(String),
    /// A namespace of connected proxies that a `sourceNamespace` of one of the host's
    /// VirtualServices names.
    SourceNamespace(String),
    /// A connected sidecar class (id, namespace, labels) that a `sourceLabels` of one of the
    /// host's VirtualServices selects.
    Class(String, String, Labels),
}

/// Builds the graph. Returns the input handles and the output collection.
pub fn build<'s>(scope: Graph<'s, u64>, mesh: &MeshConfig) -> (Inputs, Outputs<'s>) {
    let root = mesh.root_namespace.clone();
    let (services_in, services) = input::<Service>(&scope);
    let (vs_in, raw_virtual_services) = input::<VirtualService>(&scope);
    let (dr_in, destination_rules) = input::<DestinationRule>(&scope);
    let (gateways_in, gateways) = input::<Gateway>(&scope);
    let (classes_in, classes) = input::<ProxyClass>(&scope);
    let (secrets_in, secrets) = input::<Secret>(&scope);
    let (class_labels_in, class_labels) = input::<ClassLabelRow>(&scope);
    let (se_in, service_entries) = input::<ServiceEntry>(&scope);

    // === delegate VirtualServices: each root merged with the delegates it names ===
    // A root is keyed by each delegate it names and meets the delegates (VirtualServices
    // without hosts) there; one reduce per root merges them. A delegate's change costs only its
    // roots. What follows reads the merged collection: roots merged, other VirtualServices
    // unchanged, delegates never on their own.
    let delegates = raw_virtual_services
        .clone()
        .filter(delegate::is_delegate)
        .map(|vs: VirtualService| ((vs.namespace.clone(), vs.name.clone()), vs));
    let roots = raw_virtual_services.clone().filter(delegate::is_root);
    let root_children = roots
        .clone()
        .flat_map(|vs: VirtualService| {
            let key: ConfigKey = (vs.namespace.clone(), vs.name.clone());
            delegate::delegate_keys(&vs).into_iter().map(move |k| (k, key.clone())).collect::<Vec<_>>()
        })
        .join_map(delegates, |_, root: &ConfigKey, child: &VirtualService| {
            (root.clone(), DelegateInput::Child(child.clone()))
        });
    let merged_roots = roots
        .map(|vs: VirtualService| ((vs.namespace.clone(), vs.name.clone()), DelegateInput::Root(vs)))
        .concat(root_children)
        .reduce_named(
            "merge: delegate VirtualServices",
            |_key: &ConfigKey, input: &[(&DelegateInput, isize)], output| {
                let mut root = None;
                let mut children = Vec::new();
                for (i, _) in input {
                    match i {
                        DelegateInput::Root(vs) => root = Some(vs),
                        DelegateInput::Child(vs) => children.push(vs),
                    }
                }
                let Some(root) = root else { return };
                let (merged, diagnostics) = delegate::merge_delegates(root, &children);
                output.push((Ok(merged), 1isize));
                for d in diagnostics {
                    output.push((Err(d), 1));
                }
            },
        )
        .map(|(_, out): (ConfigKey, Result<VirtualService, Diagnostic>)| out);
    let delegate_diagnostics = merged_roots.clone().flat_map(Result::err);
    let virtual_services = raw_virtual_services
        .clone()
        .filter(|vs: &VirtualService| !delegate::is_delegate(vs) && !delegate::is_root(vs))
        .concat(merged_roots.flat_map(Result::ok));

    let service_ports = services.clone().flat_map(|s: Service| service_port_rows(&s));

    // === sidecar classes' inbound side (for captured proxies): virtualInbound, inbound|<port>|| ===
    // A Service with a selector is keyed by (namespace, one of its pairs), a sidecar class by
    // (namespace, each of its labels): they meet once per class the Service may select, and
    // the whole selector is checked there. Every sidecar class gets its listener, even one that
    // no Service selects (passthrough only).
    let selector_services = services.clone().flat_map(|s: Service| {
        let first = s.selector.as_ref().and_then(|sel| sel.iter().next().map(|(k, v)| (k.clone(), v.clone())));
        first.map(|(k, v)| ((s.namespace.clone(), k, v), s))
    });
    let sidecar_classes = class_labels.clone().filter(|(_, (kind, _, _))| *kind == ProxyKind::Sidecar);
    let sidecar_classes_by_label = sidecar_classes.clone().flat_map(|(id, (_, ns, labels))| {
        let pairs: Vec<(String, String)> = labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        pairs.into_iter().map(move |(k, v)| ((ns.clone(), k, v), (id.clone(), labels.clone()))).collect::<Vec<_>>()
    });
    let class_inbound = selector_services
        .join_map(sidecar_classes_by_label, |_, s: &Service, (id, labels): &(String, Labels)| {
            translate::capture::service_selects(s, labels).then(|| (id.clone(), Some(s.clone())))
        })
        .flat_map(|x| x)
        .concat(sidecar_classes.map(|(id, _)| (id, None)))
        .reduce_named("translate: class inbound", |_id: &String, input: &[(&Option<Service>, isize)], output| {
            let services = input.iter().filter_map(|(s, _)| s.as_ref());
            for (ty, name, body) in translate::capture::class_inbound(services) {
                output.push(((ty, name, body), 1isize));
            }
        })
        .map(|(id, (ty, name, body))| OutputRow::Resource { scope: Scope::Class(id), ty, name, body: body.into() });
    // Every host's rows, Services' and ServiceEntries', settled per host as istiod settles a
    // hostname defined more than once: what follows sees only the rows that make the host.
    let ports_by_host = service_ports
        .clone()
        .concat(service_entries.clone().flat_map(|se: ServiceEntry| service_entry::port_rows(&se)))
        .map(|row| (row.fqdn(), row))
        .reduce_named("settle: host rows", |_fqdn: &String, input: &[(&ServicePortRow, isize)], output| {
            let rows: Vec<&ServicePortRow> = input.iter().map(|(r, _)| *r).collect();
            for row in service_entry::host_rows(&rows) {
                output.push((row.clone(), 1isize));
            }
        });
    let host_ports = ports_by_host.clone().map(|(_, row)| row);

    // Host patterns: every host under each pattern that can match it, so rules and
    // VirtualServices (keyed by their own pattern) meet exactly the hosts they match. A host
    // carries its namespace (the Service's, or the winning ServiceEntry's): rules are looked
    // up there first.
    let hosts = ports_by_host.clone().map(|(fqdn, row)| (fqdn, row.namespace)).distinct();
    let patterns = hosts.flat_map(|(fqdn, ns): (String, String)| {
        host_patterns(&fqdn).into_iter().map(move |p| (p, (fqdn.clone(), ns.clone())))
    });

    // === DestinationRules → the rule of each host ===
    let rules_by_pattern = destination_rules
        .clone()
        .flat_map(|dr: DestinationRule| outbound::destination_rule_pattern(&dr).map(|p| (p, dr)));
    // A host's rule depends on the proxy's namespace (its own rules first, then the host's,
    // then the root's, each as exported): it is picked for the default context and for each
    // namespace of a connected proxy that a candidate names, where it differs.
    // (Arranged once, read by three joins.)
    let class_namespaces = classes.clone().map(|c: ProxyClass| (c.namespace, ())).distinct().arrange_by_key();
    let rule_candidates =
        patterns.clone().join_map(rules_by_pattern, |pattern, host: &(String, String), dr: &DestinationRule| {
            (host.clone(), (pattern.clone(), dr.clone()))
        });
    let marker_root = root.clone();
    let rule_markers = rule_candidates
        .clone()
        .flat_map(move |(host, (_, dr))| {
            let namespaces = outbound::rule_namespaces(&dr, &marker_root);
            namespaces.into_iter().map(move |ns| (ns, host.clone())).collect::<Vec<_>>()
        })
        .join_core(class_namespaces.clone(), |ns, host: &(String, String), _| Some((host.clone(), ns.clone())))
        .distinct();
    let rule_by_host = rule_candidates
        .map(|(host, (p, dr))| (host, RuleInput::Candidate(p, dr)))
        .concat(rule_markers.map(|(host, ns)| (host, RuleInput::Namespace(ns))))
        .reduce_named("select: DestinationRule", move |k: &(String, String), input: &[(&RuleInput, isize)], output| {
            let ns = &k.1;
            let mut candidates = Vec::new();
            let mut namespaces = Vec::new();
            for (i, _) in input {
                match i {
                    RuleInput::Candidate(p, dr) => candidates.push((p.as_str(), dr)),
                    RuleInput::Namespace(n) => namespaces.push(n.as_str()),
                }
            }
            for (ctx, rule) in outbound::rules_by_context(ns, &candidates, namespaces, &root) {
                output.push(((ctx, rule), 1isize));
            }
        })
        .map(|((fqdn, _), (ctx, rule))| (fqdn, HostInput::Rule(ctx, rule)));

    // === per host: clusters (with subsets and policy), and what routes toward it need ===
    let host_outputs = ports_by_host
        .clone()
        .map(|(fqdn, row)| (fqdn, HostInput::Port(row)))
        .concat(rule_by_host)
        .reduce_named("translate: host clusters", |_fqdn: &String, input: &[(&HostInput, isize)], output| {
            let rows: Vec<&ServicePortRow> =
                input.iter().filter_map(|(i, _)| if let HostInput::Port(r) = i { Some(r) } else { None }).collect();
            if rows.is_empty() {
                return;
            }
            let mut rules: Vec<(&Context, Option<&DestinationRuleSpec>)> = input
                .iter()
                .filter_map(|(i, _)| if let HostInput::Rule(c, r) = i { Some((c, r.as_ref())) } else { None })
                .collect();
            if rules.first().is_none_or(|(c, _)| c.is_some()) {
                rules.insert(0, (&None, None));
            }
            // exportTo: a host exported to some namespaces only has its clusters there alone;
            // what routes toward it need is known in every context.
            let visible = outbound::host_visibility(&rows);
            for (ctx, cluster, own) in outbound::host_clusters(&rows, visible.as_ref(), &rules) {
                output.push((HostOutput::Cluster(ctx, Box::new(cluster), own), 1isize));
            }
            for (ctx, rule) in rules {
                output.push((HostOutput::Info(ctx.clone(), HostInfo::new(&rows, rule.cloned())), 1));
            }
        });
    let context_clusters = host_outputs
        .clone()
        .flat_map(|(_, out)| if let HostOutput::Cluster(ctx, c, _) = out { Some((ctx, *c)) } else { None });
    // What the endpoint graph needs to know of the clusters (see [`ClusterFact`]).
    let facts = host_outputs.clone().flat_map(|(_, out)| match out {
        HostOutput::Cluster(ctx, c, own) => cluster_facts(ctx, *c, own),
        HostOutput::Info(..) => Vec::new(),
    });
    let cluster_rows = context_clusters.clone().flat_map(|(ctx, c)| ctx.is_none().then_some(c));
    let context_info = host_outputs
        .flat_map(|(fqdn, out)| if let HostOutput::Info(ctx, i) = out { Some((fqdn, ctx, i)) } else { None });
    // Routes toward a host read what the default context knows of it.
    let host_info = context_info.clone().flat_map(|(fqdn, ctx, info)| ctx.is_none().then_some((fqdn, info)));

    let clusters = context_clusters.clone().map(|(ctx, c): (Context, ClusterRow)| OutputRow::Resource {
        scope: translate::context_scope(&ctx, Scope::All),
        ty: ResourceType::Cluster,
        name: c.name(),
        body: c.encode().into(),
    });

    // Valid Istio that meshflow does not translate yet: one diagnostic per object and field
    // (each VirtualService as written, delegates included).
    let untranslated = raw_virtual_services
        .flat_map(|vs: VirtualService| {
            translate::route::untranslated(&vs)
                .into_iter()
                .map(move |f| Diagnostic::field(vs.object_key(), f))
                .collect::<Vec<_>>()
        })
        .concat(destination_rules.clone().flat_map(|dr: DestinationRule| {
            translate::cluster::untranslated(&dr)
                .into_iter()
                .map(move |f| Diagnostic::field(dr.object_key(), f))
                .collect::<Vec<_>>()
        }))
        .concat(service_entries.clone().flat_map(|se: ServiceEntry| {
            service_entry::untranslated(&se)
                .into_iter()
                .map(move |f| Diagnostic::field(se.object_key(), f))
                .collect::<Vec<_>>()
        }));

    // === VirtualServices → the VirtualService of each host, with its destinations ===
    let mesh_vs = virtual_services.clone().filter(outbound::applies_to_mesh);
    let vs_by_pattern = mesh_vs.clone().flat_map(|vs: VirtualService| {
        outbound::virtual_service_patterns(&vs).into_iter().map(move |p| (p, vs.clone())).collect::<Vec<_>>()
    });
    // As rules, a host's VirtualService depends on the proxy's namespace through `exportTo`.
    // (Arranged once, read by three joins.)
    let host_by_pattern = patterns.map(|(p, (fqdn, _))| (p, fqdn)).arrange_by_key();
    let vs_candidates = vs_by_pattern
        .join_core(host_by_pattern.clone(), |pattern, vs: &VirtualService, fqdn: &String| {
            Some((fqdn.clone(), VsRank::new(pattern, vs)))
        });
    let vs_markers = vs_candidates
        .clone()
        .flat_map(|(fqdn, rank)| rank.namespaces().into_iter().map(move |ns| (ns, fqdn.clone())).collect::<Vec<_>>())
        .join_core(class_namespaces.clone(), |ns, fqdn: &String, _| Some((fqdn.clone(), ns.clone())))
        .distinct();
    // Routes that depend on the proxy's source: the namespaces of connected proxies that a
    // `sourceNamespace` names, and the sidecar classes whose labels a `sourceLabels` selects
    // (through a label index: a label set keyed by its first pair, a class by each of its
    // pairs), per host that the VirtualService's patterns match.
    let source_namespaces = mesh_vs
        .clone()
        .flat_map(|vs: VirtualService| {
            let patterns = outbound::virtual_service_patterns(&vs);
            translate::route::source_namespaces(&vs)
                .into_iter()
                .flat_map(|ns| patterns.iter().map(move |p| (ns.clone(), p.clone())))
                .collect::<Vec<_>>()
        })
        .join_core(class_namespaces, |ns, pattern: &String, _| Some((pattern.clone(), ns.clone())))
        .join_core(host_by_pattern.clone(), |_, ns: &String, fqdn: &String| {
            Some((fqdn.clone(), VhostInput::SourceNamespace(ns.clone())))
        });
    let sidecar_classes_by_pair = class_labels.clone().flat_map(|(id, (kind, ns, labels))| {
        let pairs: Vec<_> = if kind == ProxyKind::Sidecar {
            labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        } else {
            Vec::new()
        };
        pairs.into_iter().map(move |pair| (pair, (id.clone(), ns.clone(), labels.clone()))).collect::<Vec<_>>()
    });
    let label_sets_by_pair = mesh_vs.clone().flat_map(|vs: VirtualService| {
        let patterns: Vec<String> = outbound::virtual_service_patterns(&vs).into_iter().collect();
        translate::route::source_label_sets(&vs)
            .into_iter()
            .filter_map(|set| {
                let first = set.iter().next().map(|(k, v)| (k.clone(), v.clone()))?;
                Some((first, (set.clone(), patterns.clone())))
            })
            .collect::<Vec<_>>()
    });
    let source_classes = label_sets_by_pair
        .join_map(
            sidecar_classes_by_pair,
            |_, (set, patterns): &(BTreeMap<String, String>, Vec<String>), class: &(String, String, Labels)| {
                let selected = translate::route::Source { namespace: None, labels: Some(&class.2) }.selects(set, None);
                patterns.iter().filter(|_| selected).map(|p| (p.clone(), class.clone())).collect::<Vec<_>>()
            },
        )
        .flat_map(|x| x)
        .join_core(host_by_pattern, |_, (id, ns, labels): &(String, String, Labels), fqdn: &String| {
            Some((fqdn.clone(), VhostInput::Class(id.clone(), ns.clone(), labels.clone())))
        });
    let vs_by_host = vs_candidates
        .map(|(fqdn, rank)| (fqdn, VsPick::Candidate(rank)))
        .concat(vs_markers.map(|(fqdn, ns)| (fqdn, VsPick::Namespace(ns))))
        .reduce_named("select: VirtualService", |_fqdn: &String, input: &[(&VsPick, isize)], output| {
            let mut ranks = Vec::new();
            let mut namespaces = Vec::new();
            for (i, _) in input {
                match i {
                    VsPick::Candidate(r) => ranks.push(r),
                    VsPick::Namespace(n) => namespaces.push(n.as_str()),
                }
            }
            for (ctx, key) in outbound::virtual_services_by_context(&ranks, namespaces) {
                output.push(((ctx, key), 1isize));
            }
        });
    let vs_destinations = virtual_services.clone().flat_map(|vs: VirtualService| {
        let key: ConfigKey = (vs.namespace.clone(), vs.name.clone());
        outbound::virtual_service_destinations(&vs).into_iter().map(move |d| (d, key.clone())).collect::<Vec<_>>()
    });
    let vs_context = virtual_services
        .clone()
        .map(|vs: VirtualService| ((vs.namespace.clone(), vs.name.clone()), VsInput::Object(vs)))
        .concat(vs_destinations.join_map(host_info.clone(), |dest, key: &ConfigKey, info: &HostInfo| {
            (key.clone(), VsInput::Destination(dest.clone(), info.clone()))
        }))
        .reduce_named("join: VirtualService destinations", |_key: &ConfigKey, input: &[(&VsInput, isize)], output| {
            let mut object = None;
            let mut destinations = DestinationMap::new();
            for (i, _) in input {
                match i {
                    VsInput::Object(vs) => object = Some(vs.clone()),
                    VsInput::Destination(d, info) => {
                        destinations.insert(d.clone(), info.clone());
                    }
                }
            }
            if let Some(vs) = object {
                output.push(((vs, destinations), 1isize));
            }
        });
    let missing = vs_context.clone().flat_map(|(_, (vs, dest))| outbound::missing_destinations(&vs, &dest));
    // (Arranged once, read by the sidecars' routes and the gateways'.)
    let vs_context = vs_context.arrange_by_key();
    let no_routes =
        vs_by_host.clone().flat_map(
            |(fqdn, (ctx, key))| if key.is_none() { ctx.map(|ns| (fqdn, VhostInput::NoRoutes(ns))) } else { None },
        );
    let routes_by_host = vs_by_host.flat_map(|(fqdn, (ctx, key))| key.map(|k| (k, (fqdn, ctx)))).join_core(
        vs_context.clone(),
        |_key, (fqdn, ctx): &(String, Context), (vs, dest): &(VirtualService, DestinationMap)| {
            Some((fqdn.clone(), VhostInput::Routes(ctx.clone(), vs.clone(), dest.clone())))
        },
    );

    // === per host: virtual hosts ===
    let http_ports = host_ports.clone().filter(|row| row.protocol().is_http());
    // TCP-class ports and ports of unknown protocol (sniffed) get listeners of their own.
    let tcp_ports =
        host_ports.filter(|row| row.protocol() == translate::PortProtocol::Tcp || row.protocol().is_sniffed());
    let source_markers = source_namespaces.concat(source_classes).distinct();
    let tcp_inputs = routes_by_host.clone().concat(no_routes.clone()).concat(source_markers.clone());
    let host_vhosts = http_ports
        .clone()
        .map(|row| (row.fqdn(), VhostInput::Port(row)))
        .concat(context_info.map(|(fqdn, ctx, info)| (fqdn, VhostInput::Info(ctx, info))))
        .concat(routes_by_host)
        .concat(no_routes)
        .concat(source_markers)
        .reduce_named("translate: virtual hosts", |_fqdn: &String, input: &[(&VhostInput, isize)], output| {
            let mut rows = Vec::new();
            let mut infos = BTreeMap::new();
            let mut routes = BTreeMap::new();
            let mut source_namespaces = BTreeSet::new();
            let mut classes = Vec::new();
            for (i, _) in input {
                match i {
                    VhostInput::Port(r) => rows.push(r),
                    VhostInput::SourceNamespace(ns) => {
                        source_namespaces.insert(ns.as_str());
                    }
                    VhostInput::Class(id, namespace, labels) => {
                        classes.push(outbound::SourceClass { id, namespace, labels });
                    }
                    VhostInput::Info(ctx, h) => {
                        infos.insert(ctx.clone(), h);
                    }
                    VhostInput::Routes(ctx, vs, dest) => {
                        routes.insert(ctx.clone(), Some((vs, dest)));
                    }
                    VhostInput::NoRoutes(ns) => {
                        routes.insert(Some(ns.clone()), None);
                    }
                }
            }
            let vhosts = outbound::virtual_hosts_by_context(&rows, &infos, &routes, &source_namespaces, &classes);
            for (scope, route, vhost) in outbound::with_sniffed_routes(&rows, vhosts) {
                output.push(((scope, route, vhost), 1isize));
            }
        });
    let virtual_hosts = host_vhosts.clone().map(|(_, (scope, route, vhost))| OutputRow::VirtualHost {
        scope,
        route,
        vhost: Box::new(vhost),
    });
    // Ports of unknown protocol have their own (sniffing) listeners: they claim no shared one.
    let http_port_numbers =
        http_ports.clone().filter(|row| !row.protocol().is_sniffed()).map(|row| row.port.port).distinct();
    // Each port's listener for the sidecars that see a host of it (exportTo).
    let listeners = http_ports
        .clone()
        .filter(|row| !row.protocol().is_sniffed())
        .map(|row| (row.port.port, outbound::host_visibility(&[&row])))
        .distinct()
        .reduce_named("scope: HTTP listeners", |_port: &u16, input: &[(&Option<BTreeSet<String>>, isize)], output| {
            for scope in outbound::http_listener_scopes(input.iter().map(|(v, _)| *v)) {
                output.push((scope, 1isize));
            }
        })
        .map(|(port, scope)| OutputRow::Resource {
            scope,
            ty: ResourceType::Listener,
            name: translate::listener_name(port),
            body: translate::listener(port, None).into(),
        });

    // === per host: TCP listeners; per port: the one that binds it ===
    let tcp_candidates = tcp_ports
        .map(|row| (row.fqdn(), VhostInput::Port(row)))
        .concat(tcp_inputs)
        .reduce_named("translate: tcp listeners", |_fqdn: &String, input: &[(&VhostInput, isize)], output| {
            let mut rows = Vec::new();
            let mut routes = BTreeMap::new();
            let mut source_namespaces = BTreeSet::new();
            let mut classes = Vec::new();
            for (i, _) in input {
                match i {
                    VhostInput::Port(r) => rows.push(r),
                    VhostInput::Routes(ctx, vs, dest) => {
                        routes.insert(ctx.clone(), Some((vs, dest)));
                    }
                    VhostInput::NoRoutes(ns) => {
                        routes.insert(Some(ns.clone()), None);
                    }
                    VhostInput::SourceNamespace(ns) => {
                        source_namespaces.insert(ns.as_str());
                    }
                    VhostInput::Class(id, namespace, labels) => {
                        classes.push(outbound::SourceClass { id, namespace, labels });
                    }
                    VhostInput::Info(..) => {}
                }
            }
            if rows.is_empty() {
                return;
            }
            for (scope, l) in outbound::tcp_listeners_by_context(&rows, &routes, &source_namespaces, &classes) {
                output.push(((scope, l), 1isize));
            }
        })
        .map(|(_, (scope, l))| {
            let claim =
                if scope == Scope::Sidecars { PortClaim::Tcp(l.clone()) } else { PortClaim::Variant(scope, l.clone()) };
            (l.port, claim)
        });
    let tcp_listeners = http_port_numbers
        .map(|port| (port, PortClaim::Http))
        .concat(tcp_candidates)
        .reduce_named("settle: listener ports", |port: &u16, input: &[(&PortClaim, isize)], output| {
            // Values arrive sorted: `Http` first when the port has HTTP services.
            if !input.iter().any(|(c, _)| matches!(c, PortClaim::Tcp(_))) {
                return;
            }
            let http = matches!(input[0].0, PortClaim::Http);
            let candidates = input.iter().filter_map(|(c, _)| if let PortClaim::Tcp(l) = c { Some(l) } else { None });
            let (winner, diagnostics) = outbound::settle_port(*port, http, candidates);
            if let Some(w) = winner {
                // A host not exported everywhere claims the port but serves only its variants.
                if !w.hidden {
                    let row = OutputRow::Resource {
                        scope: Scope::Sidecars,
                        ty: ResourceType::Listener,
                        name: w.name.clone(),
                        body: w.body.as_slice().into(),
                    };
                    output.push((row, 1isize));
                }
                // The winner's variants for a namespace's sidecars or a class.
                for (c, _) in input {
                    if let PortClaim::Variant(scope, l) = c
                        && l.fqdn == w.fqdn
                        && l.name == w.name
                    {
                        let row = OutputRow::Resource {
                            scope: scope.clone(),
                            ty: ResourceType::Listener,
                            name: l.name.clone(),
                            body: l.body.as_slice().into(),
                        };
                        output.push((row, 1isize));
                    }
                }
            }
            for d in diagnostics {
                output.push((OutputRow::Diagnostic(Box::new(d)), 1));
            }
        })
        .map(|(_, row)| row);

    // === proxy classes: the Gateways that select each router class, and what binds to them ===
    // Gateways meet classes through a label index, as selector services meet pods: a Gateway
    // keyed by one pair of its selector (the empty pair for an empty selector), a class by
    // each of its labels and the empty pair; the full selector is checked where they meet.
    let router_labels = class_labels
        .clone()
        .flat_map(|(id, (kind, ns, labels))| (kind == ProxyKind::Router).then_some((id, (ns, labels))));
    let class_by_pair = router_labels.clone().flat_map(|(id, (ns, labels))| {
        views::class_index_keys(&labels)
            .into_iter()
            .map(move |k| (k, (id.clone(), ns.clone(), labels.clone())))
            .collect::<Vec<_>>()
    });
    let class_gateways = class_by_pair
        .join_map(
            gateways.map(|gw: Gateway| (views::gateway_index_key(&gw), gw)),
            |_, (id, ns, labels): &(String, String, Labels), gw: &Gateway| {
                views::gateway_selects(gw, labels).then(|| (id.clone(), (ns.clone(), gw.clone())))
            },
        )
        .flat_map(|x| x);
    // A VirtualService binds to a gateway proxy's Gateways when it is exported to the proxy's
    // namespace.
    let vs_by_gateway = virtual_services.flat_map(|vs: VirtualService| {
        let key: ConfigKey = (vs.namespace.clone(), vs.name.clone());
        let export_to = vs.spec.export_to.clone();
        gateway::bound_gateways(&vs).into_iter().map(move |g| (g, (key.clone(), export_to.clone()))).collect::<Vec<_>>()
    });
    let class_vs = class_gateways
        .clone()
        .map(|(id, (ns, gw))| (format!("{}/{}", gw.namespace, gw.name), (id, ns)))
        .join_map(vs_by_gateway, |_, (id, ns): &(String, String), (key, export_to): &(ConfigKey, Vec<String>)| {
            outbound::exported_to(export_to, &key.0, Some(ns)).then(|| (key.clone(), id.clone()))
        })
        .flat_map(|x| x)
        .distinct();
    let class_routes =
        class_vs.join_core(vs_context, |_, id: &String, (vs, dest): &(VirtualService, DestinationMap)| {
            Some((id.clone(), ClassInput::Routes(vs.clone(), dest.clone())))
        });
    let class_outputs = class_gateways
        .map(|(id, (_, gw))| (id, ClassInput::Gateway(gw)))
        .concat(class_routes)
        .reduce_named("translate: gateway class", |_id: &String, input: &[(&ClassInput, isize)], output| {
            let mut gws: Vec<&Gateway> = Vec::new();
            let mut vss: Vec<(&VirtualService, &DestinationMap)> = Vec::new();
            for (i, _) in input {
                match i {
                    ClassInput::Gateway(g) => gws.push(g),
                    ClassInput::Routes(vs, dest) => vss.push((vs, dest)),
                }
            }
            if gws.is_empty() {
                return;
            }
            // istiod merges a proxy's Gateways oldest first (creation time, name, namespace).
            gws.sort_by(|a, b| a.creation_order().cmp(&b.creation_order()));
            let out = gateway::gateway_resources(&gws, &vss);
            for (ty, name, body) in out.resources {
                output.push((ClassOutput::Resource(ty, name, body), 1isize));
            }
            for s in out.secrets {
                output.push((ClassOutput::Secret(s), 1));
            }
            for d in out.diagnostics {
                output.push((ClassOutput::Diagnostic(d), 1));
            }
        });
    let class_resources = class_outputs.clone().flat_map(|(id, out)| match out {
        ClassOutput::Resource(ty, name, body) => {
            Some(OutputRow::Resource { scope: Scope::Class(id), ty, name, body: body.into() })
        }
        _ => None,
    });
    let class_diagnostics =
        class_outputs.clone().flat_map(|(_, out)| if let ClassOutput::Diagnostic(d) = out { Some(d) } else { None });

    // === per class: the Secrets its listeners name, read from its own namespace ===
    let class_namespaces = router_labels.map(|(id, (ns, _))| (id, ns));
    let secret_refs = class_outputs
        .flat_map(|(id, out)| if let ClassOutput::Secret(s) = out { Some((id, s)) } else { None })
        .join_map(class_namespaces, |id, r: &SecretRef, ns: &String| (id.clone(), r.clone(), ns.clone()));
    let secrets_by_key = secrets.map(|s: Secret| ((s.namespace.clone(), s.name.clone()), s)).arrange_by_key();
    let found = secret_refs
        .clone()
        .map(|(id, r, _)| ((r.namespace.clone(), r.name.clone()), (id, r.sds_name.clone())))
        .join_core(secrets_by_key.clone(), |_, key: &(String, String), s: &Secret| {
            Some((key.clone(), SecretInput::Found(s.clone())))
        });
    let fallback = secret_refs
        .clone()
        .flat_map(|(id, r, _)| {
            let name = r.ca_fallback()?.to_string();
            Some(((r.namespace.clone(), name), (id, r.sds_name.clone())))
        })
        .join_core(secrets_by_key, |_, key: &(String, String), s: &Secret| {
            Some((key.clone(), SecretInput::Fallback(s.clone())))
        });
    let class_secrets = secret_refs
        .map(|(id, r, ns)| ((id, r.sds_name.clone()), SecretInput::Ref(r, ns)))
        .concat(found)
        .concat(fallback)
        .reduce_named(
            "translate: class secrets",
            |_key: &(String, String), input: &[(&SecretInput, isize)], output| {
                let mut refs = Vec::new();
                let mut class_ns = "";
                for (i, _) in input {
                    if let SecretInput::Ref(r, ns) = i {
                        refs.push(r);
                        class_ns = ns;
                    }
                }
                let Some(r) = views::pick_ref(class_ns, &refs) else { return };
                let ns = class_ns;
                let (mut primary, mut fallback) = (None, None);
                for (i, _) in input {
                    match i {
                        SecretInput::Found(s) if s.namespace == r.namespace && s.name == r.name => primary = Some(s),
                        SecretInput::Fallback(s)
                            if s.namespace == r.namespace && Some(s.name.as_str()) == r.ca_fallback() =>
                        {
                            fallback = Some(s)
                        }
                        _ => {}
                    }
                }
                match views::class_secret(ns, r, primary, fallback) {
                    Ok(body) => output.push((Ok(body), 1isize)),
                    Err(d) => output.push((Err(d), 1)),
                }
            },
        );
    let secret_diagnostics = class_secrets.clone().flat_map(|(_, out): (_, Result<Vec<u8>, Diagnostic>)| out.err());
    let class_secrets = class_secrets.flat_map(|((id, sds_name), out)| {
        let body = out.ok()?;
        Some(OutputRow::Resource {
            scope: Scope::Class(id),
            ty: ResourceType::Secret,
            name: sds_name,
            body: body.into(),
        })
    });

    // A diagnostic that several classes report is reported once.
    let diagnostics = untranslated
        .concat(delegate_diagnostics)
        .concat(missing)
        .concat(class_diagnostics)
        .concat(secret_diagnostics)
        .distinct()
        .map(|d| OutputRow::Diagnostic(Box::new(d)));
    // === proxyless gRPC clients: API listeners, route configs, clusters (see proxyless.rs) ===
    // Proxyless clients are served the default context.
    let default_vhosts = host_vhosts
        .flat_map(|(fqdn, (scope, route, vhost))| (scope == Scope::Sidecars).then_some((fqdn, (route, vhost))));
    // Proxyless clients are served hosts visible everywhere only.
    let public_http = http_ports.filter(|row| outbound::host_visibility(&[row]).is_none());
    let proxyless = super::proxyless::proxyless(classes, cluster_rows, public_http, default_vhosts);
    let output = clusters
        .concat(listeners)
        .concat(tcp_listeners)
        .concat(virtual_hosts)
        .concat(class_resources)
        .concat(class_secrets)
        .concat(class_inbound)
        .concat(proxyless)
        .concat(diagnostics);
    let inputs = Inputs {
        services: services_in,
        virtual_services: vs_in,
        destination_rules: dr_in,
        gateways: gateways_in,
        classes: classes_in,
        secrets: secrets_in,
        class_labels: class_labels_in,
        service_entries: se_in,
    };
    // The bases whose endpoints' labels `failoverPriority` compares: once each, so the endpoint
    // graph, which runs at every pod event, keeps no distinct of its own.
    let prioritized = facts
        .clone()
        .flat_map(|f| match f {
            ClusterFact::Located(_, (_, _, Some((base, _)))) => Some(base),
            _ => None,
        })
        .distinct()
        .map(ClusterFact::Prioritized);
    let facts = facts.concat(prioritized);
    (inputs, Outputs { rows: output, facts })
}

/// What the config graph outputs: its resources, and what the endpoint graph needs to know of
/// the clusters.
pub struct Outputs<'s> {
    pub rows: VecCollection<'s, u64, OutputRow>,
    pub facts: VecCollection<'s, u64, ClusterFact>,
}

/// What the endpoint graph needs to know of one cluster in one context.
fn cluster_facts(ctx: Context, c: ClusterRow, own: bool) -> Vec<ClusterFact> {
    let mut facts = Vec::new();
    let scope = translate::context_scope(&ctx, Scope::All);
    if c.is_eds() {
        // Every EDS cluster gets an assignment: the default context's and each subset's (a
        // namespace's own subset clusters get their own; its others share the default's).
        if ctx.is_none() || c.subset.is_some() {
            facts.push(ClusterFact::Assignment(scope.clone(), c.name()));
        }
        // A cluster without subset of a host exported to some namespaces only: each
        // namespace's copy has its own assignment (there is no default one to share).
        if own {
            facts.push(ClusterFact::Assignment(scope.clone(), c.name()));
            facts.push(ClusterFact::ScopedBase(c.name(), scope.clone()));
        }
        // (Every context's: an entry exported to some namespaces only has no default one.)
        if c.subset.is_none() && c.row.entry.is_some() {
            facts.push(ClusterFact::EntryOwner(c.name(), c.row.namespace.clone()));
        }
    }
    if let Some(s) = &c.subset {
        facts.push(ClusterFact::Subset(c.base_name(), ((scope.clone(), c.name()), s.clone())));
    }
    // Its assignment depends on the proxy's locality: keyed by where its addresses are (its
    // own context's scope, else the shared one). With `failoverPriority`, its base cluster's
    // name: where its endpoints' labels are.
    if let Some(lb) = c.locality_lb() {
        let at = if c.subset.is_some() || own { scope } else { Scope::All };
        let base = lb.by_labels().then(|| (c.base_name(), c.subset.clone()));
        facts.push(ClusterFact::Located((at, c.name()), (ctx.clone(), lb, base)));
    }
    // A DNS cluster whose inline endpoints depend on the proxy's locality.
    if let Some(lb) = c.inline_locality_lb() {
        facts.push(ClusterFact::DnsLocated(ctx, Box::new(c), lb));
    }
    facts
}
