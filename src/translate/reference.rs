//! The reference translator: the same resources as the engine, computed from a full snapshot
//! with plain loops over the same per-resource builders. Slow on purpose and obviously
//! correct; the engine must equal it after every step of any change sequence.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::endpoint::{
    EndpointRow, PortKey, endpoints_addresses, selector_pod_addresses, service_port_rows, slice_addresses,
};
use super::outbound::{self, Context, DestinationMap, HostInfo, TcpListenerRow, VsRank};
use super::{EndpointAddr, ResourceType, Scope, ServicePortRow, VirtualHostPart, service_entry};
use super::{gateway, views};
use crate::model::Object;
use crate::model::istio::{DestinationRule, DestinationRuleSpec, Gateway, VirtualService};
use crate::model::k8s::{Labels, Pod};
use crate::model::proxy::{ClassLabels, ProxyKind, ProxyLocality};
use crate::translate;

/// Resources by (scope, type, name), each as encoded bytes.
pub type Resources = BTreeMap<(Scope, ResourceType, String), Vec<u8>>;

/// [`translate_all_with`] istiod's default mesh config.
pub fn translate_all<'a>(objects: impl IntoIterator<Item = &'a Object>) -> Resources {
    translate_all_with(objects, &super::MeshConfig::default())
}

pub fn translate_all_with<'a>(objects: impl IntoIterator<Item = &'a Object>, mesh: &super::MeshConfig) -> Resources {
    let root = mesh.root_namespace.as_str();
    let (mut services, mut slices, mut endpoints, mut pods) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut virtual_services, mut rules, mut entries) = (Vec::new(), Vec::new(), Vec::new());
    let (mut gateways, mut classes, mut secrets) = (Vec::new(), Vec::new(), HashMap::new());
    let mut proxy_localities = Vec::new();
    let mut nodes: HashMap<&str, &Labels> = HashMap::new();
    for o in objects {
        match o {
            Object::Service(s) => services.push(&**s),
            Object::EndpointSlice(s) => slices.push(&**s),
            Object::Endpoints(e) => endpoints.push(&**e),
            Object::Pod(p) => pods.push(&**p),
            Object::Node(n) => {
                nodes.insert(n.name.as_str(), &n.labels);
            }
            Object::VirtualService(vs) => virtual_services.push(&**vs),
            Object::DestinationRule(dr) => rules.push(&**dr),
            Object::Gateway(gw) => gateways.push(&**gw),
            Object::ProxyClass(c) => classes.push(c),
            Object::ProxyLocality(l) => proxy_localities.push(l),
            Object::Secret(s) => {
                secrets.insert((s.namespace.as_str(), s.name.as_str()), &**s);
            }
            Object::ServiceEntry(se) => entries.push(&**se),
            _ => {}
        }
    }
    // Delegate VirtualServices: each root merged with the delegates it names; delegates are
    // never used on their own.
    let delegates: HashMap<(String, String), &VirtualService> = virtual_services
        .iter()
        .filter(|vs| super::delegate::is_delegate(vs))
        .map(|vs| ((vs.namespace.clone(), vs.name.clone()), *vs))
        .collect();
    let merged: Vec<VirtualService> = virtual_services
        .iter()
        .filter_map(|vs| {
            let keys = super::delegate::delegate_keys(vs);
            let children: Vec<&VirtualService> = keys.iter().filter_map(|k| delegates.get(k).copied()).collect();
            super::delegate::merged_virtual_service(vs, &children).map(|(merged, _)| merged)
        })
        .collect();
    let virtual_services: Vec<&VirtualService> = merged.iter().collect();

    let sliced: HashSet<(&str, &str)> =
        slices.iter().filter_map(|s| Some((s.namespace.as_str(), s.service_name.as_deref()?))).collect();
    let with_endpoints: HashSet<(&str, &str)> =
        endpoints.iter().map(|e| (e.namespace.as_str(), e.name.as_str())).collect();
    let pod_labels: HashMap<(&str, &str), &Labels> =
        pods.iter().map(|p| ((p.namespace.as_str(), p.name.as_str()), &p.labels)).collect();

    // Indexes built once per call, so that each service reads only its own slices, Endpoints
    // and candidate pods (linear in the mesh, not services × slices).
    let mut slice_endpoints: HashMap<PortKey, Vec<EndpointRow>> = HashMap::new();
    for (key, row) in slices.iter().flat_map(|s| slice_addresses(s)) {
        slice_endpoints.entry(key).or_default().push(row);
    }
    let mut endpoints_endpoints: HashMap<PortKey, Vec<EndpointRow>> = HashMap::new();
    for (key, row) in endpoints.iter().flat_map(|e| endpoints_addresses(e)) {
        endpoints_endpoints.entry(key).or_default().push(row);
    }
    let mut pods_by_namespace: HashMap<String, Vec<&Pod>> = HashMap::new();
    let mut pods_by_label: HashMap<(String, String, String), Vec<&Pod>> = HashMap::new();
    for p in &pods {
        pods_by_namespace.entry(p.namespace.clone()).or_default().push(p);
        for (k, v) in p.labels.iter() {
            pods_by_label.entry((p.namespace.clone(), k.clone(), v.clone())).or_default().push(p);
        }
    }
    let index = PodIndex { by_namespace: pods_by_namespace, by_label: pods_by_label };
    let candidate_pods = |namespace: &str, selector: &Labels| index.candidates(namespace, selector).to_vec();

    // Every service and ServiceEntry port by host, then the rows that make each host.
    let mut all_rows: BTreeMap<String, Vec<ServicePortRow>> = BTreeMap::new();
    let entry_rows = entries.iter().flat_map(|se| service_entry::port_rows(se));
    for row in services.iter().flat_map(|svc| service_port_rows(svc)).chain(entry_rows) {
        all_rows.entry(row.fqdn()).or_default().push(row);
    }
    let hosts: BTreeMap<String, Vec<ServicePortRow>> = all_rows
        .iter()
        .map(|(fqdn, rows)| {
            let rows: Vec<&ServicePortRow> = rows.iter().collect();
            (fqdn.clone(), service_entry::host_rows(&rows).into_iter().cloned().collect())
        })
        .collect();

    // Endpoints of each cluster without subset, with their pods.
    let mut base_endpoints: BTreeMap<String, BTreeSet<EndpointRow>> = BTreeMap::new();
    for svc in &services {
        let key = (svc.namespace.as_str(), svc.name.as_str());
        let selected: Vec<(String, EndpointRow)> = if sliced.contains(&key) || with_endpoints.contains(&key) {
            Vec::new()
        } else {
            let candidates = svc.selector.as_ref().map(|s| candidate_pods(&svc.namespace, s)).unwrap_or_default();
            candidates.iter().flat_map(|p| selector_pod_addresses(svc, p)).collect()
        };
        for row in service_port_rows(svc) {
            let cluster = row.cluster_name();
            let wanted = row.port_key();
            let eps = base_endpoints.entry(cluster.clone()).or_default();
            if sliced.contains(&key) {
                eps.extend(slice_endpoints.get(&wanted).into_iter().flatten().cloned());
            } else if with_endpoints.contains(&key) {
                eps.extend(endpoints_endpoints.get(&wanted).into_iter().flatten().cloned());
            } else {
                eps.extend(selected.iter().filter(|(c, _)| *c == cluster).map(|(_, a)| a.clone()));
            }
        }
    }

    // Endpoints of the EDS clusters of ServiceEntry hosts: those of the entries of the
    // namespace of the entry that won the host. Every entry's endpoints, by its namespace and
    // cluster, computed once.
    let mut entry_endpoints: HashMap<(&str, String), Vec<EndpointRow>> = HashMap::new();
    for se in &entries {
        let statics = service_entry::static_endpoints(se).into_iter().map(|((c, _), ep)| (c, ep));
        let selected = service_entry::selector(se).into_iter().flat_map(|svc| {
            candidate_pods(&se.namespace, &svc.selector)
                .iter()
                .filter(|p| p.ip.is_some() && !p.terminal)
                .flat_map(|p| super::endpoint::pod_addresses(&se.namespace, &svc, p))
                .collect::<Vec<_>>()
        });
        for (cluster, ep) in statics.chain(selected) {
            entry_endpoints.entry((se.namespace.as_str(), cluster)).or_default().push(ep);
        }
    }
    for rows in hosts.values() {
        for row in rows.iter().filter(|r| r.entry.is_some() && service_entry::is_eds(r)) {
            let cluster = row.cluster_name();
            let found = entry_endpoints.get(&(row.namespace.as_str(), cluster.clone()));
            base_endpoints.entry(cluster).or_default().extend(found.into_iter().flatten().cloned());
        }
    }

    // DestinationRule and VirtualService host patterns, exact ones by host (a wildcard is
    // matched against every host, exact ones are looked up).
    let mut exact_rules: HashMap<String, Vec<(String, &DestinationRule)>> = HashMap::new();
    let mut wildcard_rules: Vec<(String, &DestinationRule)> = Vec::new();
    for dr in &rules {
        let Some(pattern) = outbound::destination_rule_pattern(dr) else { continue };
        if pattern.starts_with('*') {
            wildcard_rules.push((pattern, *dr));
        } else {
            exact_rules.entry(pattern.clone()).or_default().push((pattern, *dr));
        }
    }
    let mut exact_vs: HashMap<String, Vec<&VirtualService>> = HashMap::new();
    let mut wildcard_vs: Vec<(String, &VirtualService)> = Vec::new();
    for vs in &virtual_services {
        for pattern in outbound::virtual_service_patterns(vs) {
            if pattern.starts_with('*') {
                wildcard_vs.push((pattern, *vs));
            } else {
                exact_vs.entry(pattern).or_default().push(*vs);
            }
        }
    }

    // Output that depends on the proxy's namespace is computed for the namespaces of connected
    // proxies only.
    let class_namespaces: BTreeSet<&str> = classes.iter().map(|c| c.namespace.as_str()).collect();
    // Every router and sidecar class with its labels: given, or its Pod's.
    let class_labels: Vec<(&crate::model::proxy::ProxyClass, Labels)> = classes
        .iter()
        .filter(|c| c.kind != ProxyKind::Proxyless)
        .map(|c| {
            let labels = match &c.labels {
                ClassLabels::Given(l) => l.clone(),
                ClassLabels::OfPod { pod, ip } => {
                    let named = pod_labels.get(&(c.namespace.as_str(), pod.as_str())).copied();
                    let at_ip = || {
                        let ip = ip.as_deref()?;
                        let candidates: Vec<(&str, &Labels)> = pods
                            .iter()
                            .filter(|p| !p.terminal && p.ip.as_deref() == Some(ip))
                            .map(|p| (p.namespace.as_str(), &p.labels))
                            .collect();
                        views::pod_by_ip(&c.namespace, &candidates)
                    };
                    named.or_else(at_ip).cloned().unwrap_or_default()
                }
                ClassLabels::Ignored => Labels::new(),
            };
            (*c, labels)
        })
        .collect();
    let sidecar_classes: Vec<(String, &str, &Labels)> = class_labels
        .iter()
        .filter(|(c, _)| c.kind == ProxyKind::Sidecar)
        .map(|(c, l)| (c.id(), c.namespace.as_str(), l))
        .collect();

    // Each pod's endpoints in its locality: its own label's, else its Node's.
    let pods_by_key: HashMap<(&str, &str), &crate::model::Pod> =
        pods.iter().map(|p| ((p.namespace.as_str(), p.name.as_str()), *p)).collect();
    for eps in base_endpoints.values_mut() {
        *eps = std::mem::take(eps)
            .into_iter()
            .map(|mut e| {
                let pod = e.pod.as_ref().and_then(|(ns, name)| pods_by_key.get(&(&**ns, &**name)));
                if let (Some(pod), true) = (pod, e.addr.locality.is_empty()) {
                    let node = pod.node_name.as_deref().and_then(|n| nodes.get(n).copied());
                    e.addr.locality = super::endpoint::pod_locality(pod, node).into();
                }
                e
            })
            .collect();
    }

    // The rule of each host in each context, and what routes toward it need (the default
    // context's).
    let mut infos: BTreeMap<String, HostInfo> = BTreeMap::new();
    let mut context_rules: BTreeMap<String, Vec<(Context, Option<DestinationRuleSpec>)>> = BTreeMap::new();
    for (fqdn, rows) in &hosts {
        let exact = exact_rules.get(fqdn).into_iter().flatten();
        let wildcard = wildcard_rules.iter().filter(|(p, _)| outbound::pattern_matches(p, fqdn));
        let candidates: Vec<(&str, &DestinationRule)> =
            exact.chain(wildcard).map(|(p, dr)| (p.as_str(), *dr)).collect();
        let namespaces: BTreeSet<String> = candidates
            .iter()
            .flat_map(|(_, dr)| outbound::rule_namespaces(dr, root))
            .filter(|ns| class_namespaces.contains(ns.as_str()))
            .collect();
        let namespace = rows.first().map(|r| r.namespace.as_str()).unwrap_or_default();
        let mut by_context =
            outbound::rules_by_context(namespace, &candidates, namespaces.iter().map(String::as_str), root);
        if by_context.first().is_none_or(|(c, _)| c.is_some()) {
            by_context.insert(0, (None, None));
        }
        let rows: Vec<&ServicePortRow> = rows.iter().collect();
        infos.insert(fqdn.clone(), HostInfo::new(&rows, by_context[0].1.clone()));
        context_rules.insert(fqdn.clone(), by_context);
    }
    let vs_by_key: HashMap<(&str, &str), &VirtualService> =
        virtual_services.iter().map(|vs| ((vs.namespace.as_str(), vs.name.as_str()), *vs)).collect();

    let destinations_of = |vs: &VirtualService| -> DestinationMap {
        outbound::virtual_service_destinations(vs)
            .into_iter()
            .filter_map(|d| infos.get(&d).map(|i| (d, i.clone())))
            .collect()
    };

    let mut out = Resources::new();
    let mut routes: BTreeMap<(Scope, String), BTreeMap<String, VirtualHostPart>> = BTreeMap::new();
    let mut tcp_listeners: BTreeMap<u16, Vec<TcpListenerRow>> = BTreeMap::new();
    let mut tcp_variants: BTreeMap<u16, Vec<(Scope, TcpListenerRow)>> = BTreeMap::new();
    let mut http_ports: BTreeSet<u16> = BTreeSet::new();
    let mut http_visibility: BTreeMap<u16, BTreeSet<Option<BTreeSet<String>>>> = BTreeMap::new();
    // What proxyless gRPC clients get (translate::grpc), served while one is connected.
    let mut proxyless: Vec<(ResourceType, String, Vec<u8>)> = Vec::new();
    for (fqdn, rows) in &hosts {
        let rows: Vec<&ServicePortRow> = rows.iter().collect();
        let context_infos: Vec<(Context, HostInfo)> =
            context_rules[fqdn].iter().map(|(ctx, rule)| (ctx.clone(), HostInfo::new(&rows, rule.clone()))).collect();
        // exportTo: a host exported to some namespaces only has clusters there alone, each with
        // its own assignments.
        let visible = outbound::host_visibility(&rows);
        let rules: Vec<(&Context, Option<&DestinationRuleSpec>)> =
            context_rules[fqdn].iter().map(|(ctx, rule)| (ctx, rule.as_ref())).collect();

        {
            for (ctx, cluster, own) in outbound::host_clusters(&rows, visible.as_ref(), &rules) {
                let ctx = &ctx;
                let scope = translate::context_scope(ctx, Scope::All);
                let name = cluster.name();
                let base = base_endpoints.get(&cluster.base_name());
                // Each endpoint with its labels (its pod's, else its own; subsets select by them).
                let empty = Labels::new();
                let labelled: BTreeSet<(&EndpointAddr, &Labels)> = base
                    .into_iter()
                    .flatten()
                    .map(|e| {
                        let labels = match &e.pod {
                            Some((ns, pod)) => pod_labels.get(&(&**ns, &**pod)).copied().unwrap_or(&empty),
                            None => &e.labels,
                        };
                        (&e.addr, labels)
                    })
                    .filter(|(_, labels)| cluster.subset.as_ref().is_none_or(|s| outbound::subset_selects(s, labels)))
                    .collect();
                let addrs: BTreeSet<&EndpointAddr> = labelled.iter().map(|(a, _)| *a).collect();
                let addrs: Vec<&EndpointAddr> = addrs.into_iter().collect();
                if ctx.is_none()
                    && let Some(body) = translate::grpc::cluster(&cluster)
                {
                    proxyless.push((ResourceType::Cluster, name.clone(), body));
                }
                // A namespace's clusters without subset share the default's assignment (when
                // there is one and it is the same for every proxy).
                if cluster.is_eds() && (ctx.is_none() || cluster.subset.is_some() || own) {
                    let cla = translate::load_assignment(&name, &addrs);
                    out.insert((scope.clone(), ResourceType::ClusterLoadAssignment, name.clone()), cla);
                }
                // Where it depends on the proxy's locality: one per locality of the connected
                // proxies (of the context's namespace).
                // With failoverPriority: one per (locality, labels), its endpoints with their labels.
                if let Some(lb) = cluster.locality_lb() {
                    let by_labels = lb.by_labels();
                    let unlabelled: Vec<(&EndpointAddr, &Labels)> = addrs.iter().map(|a| (*a, &empty)).collect();
                    let labelled: Vec<(&EndpointAddr, &Labels)> = labelled.iter().copied().collect();
                    for l in &proxy_localities {
                        let Some(located) = located_scope(ctx, by_labels, l) else { continue };
                        let proxy = translate::locality::ProxyLabels {
                            locality: &l.locality,
                            labels: if by_labels { &l.labels } else { &empty },
                        };
                        let eps = if by_labels { &labelled } else { &unlabelled };
                        let cla = translate::locality::located_load_assignment(&name, eps, proxy, &lb);
                        out.insert((located, ResourceType::ClusterLoadAssignment, name.clone()), cla);
                    }
                }
                // A DNS cluster whose inline endpoints depend on the proxy's locality: the
                // cluster itself per locality (and labels) of the connected proxies.
                if let Some(lb) = cluster.inline_locality_lb() {
                    let by_labels = lb.by_labels();
                    for l in &proxy_localities {
                        let Some(located) = located_scope(ctx, by_labels, l) else { continue };
                        let proxy = translate::locality::ProxyLabels {
                            locality: &l.locality,
                            labels: if by_labels { &l.labels } else { &empty },
                        };
                        out.insert((located, ResourceType::Cluster, name.clone()), cluster.encode_located(proxy, &lb));
                    }
                }
                out.insert((scope.clone(), ResourceType::Cluster, name), cluster.encode());
            }
        }

        let exact = exact_vs.get(fqdn).into_iter().flatten().map(|vs| (fqdn.as_str(), *vs));
        let wildcard =
            wildcard_vs.iter().filter(|(p, _)| outbound::pattern_matches(p, fqdn)).map(|(p, vs)| (p.as_str(), *vs));
        let candidates: Vec<(&str, &VirtualService)> = exact.chain(wildcard).collect();
        let ranks: Vec<VsRank> = candidates.iter().map(|(p, vs)| VsRank::new(p, vs)).collect();
        // Routes that depend on the proxy's source: connected namespaces a `sourceNamespace`
        // names, sidecar classes a `sourceLabels` selects.
        let source_namespaces: BTreeSet<String> = candidates
            .iter()
            .flat_map(|(_, vs)| translate::route::source_namespaces(vs))
            .filter(|ns| class_namespaces.contains(ns.as_str()))
            .collect();
        let source_namespaces: BTreeSet<&str> = source_namespaces.iter().map(String::as_str).collect();
        let source_classes: Vec<outbound::SourceClass> = sidecar_classes
            .iter()
            .filter(|(_, _, labels)| candidates.iter().any(|(_, vs)| outbound::selects_class(vs, labels)))
            .map(|(id, namespace, labels)| outbound::SourceClass { id, namespace, labels })
            .collect();
        let ranks: Vec<&VsRank> = ranks.iter().collect();
        let namespaces: BTreeSet<String> =
            ranks.iter().flat_map(|r| r.namespaces()).filter(|ns| class_namespaces.contains(ns.as_str())).collect();
        let chosen = outbound::virtual_services_by_context(&ranks, namespaces.iter().map(String::as_str));
        let chosen: Vec<(Context, Option<(&VirtualService, DestinationMap)>)> = chosen
            .into_iter()
            .map(|(ctx, key)| {
                let vs = key.map(|(ns, name)| vs_by_key[&(ns.as_str(), name.as_str())]);
                (ctx, vs.map(|vs| (vs, destinations_of(vs))))
            })
            .collect();
        let context_routes: BTreeMap<Context, outbound::ContextRoutes> =
            chosen.iter().map(|(ctx, vs)| (ctx.clone(), vs.as_ref().map(|(vs, d)| (*vs, d)))).collect();
        let info_refs: BTreeMap<Context, &HostInfo> = context_infos.iter().map(|(c, i)| (c.clone(), i)).collect();
        let vhosts =
            outbound::virtual_hosts_by_context(&rows, &info_refs, &context_routes, &source_namespaces, &source_classes);
        for (scope, route, vhost) in outbound::with_sniffed_routes(&rows, vhosts) {
            if scope == Scope::Sidecars
                && let Ok(port) = route.parse::<u16>()
            {
                let name = translate::grpc::route_config_name(fqdn, port);
                let body = translate::grpc::route_configuration(&name, &vhost);
                proxyless.push((ResourceType::RouteConfiguration, name, body));
            }
            routes.entry((scope, route)).or_default().insert(vhost.name.clone(), vhost);
        }
        let listeners = outbound::tcp_listeners_by_context(&rows, &context_routes, &source_namespaces, &source_classes);
        for (scope, l) in listeners {
            if scope == Scope::Sidecars {
                tcp_listeners.entry(l.port).or_default().push(l);
            } else {
                tcp_variants.entry(l.port).or_default().push((scope, l));
            }
        }
        for row in rows.iter().filter(|r| r.protocol().is_http()) {
            let port = row.port.port;
            // Ports of unknown protocol have their own sniffing listeners (above).
            if !row.protocol().is_sniffed() {
                http_ports.insert(port);
                http_visibility.entry(port).or_default().insert(outbound::host_visibility(&[*row]));
            }
            // Proxyless clients are served hosts visible everywhere only.
            if outbound::host_visibility(&[*row]).is_none() {
                let name = translate::grpc::listener_name(fqdn, port);
                proxyless.push((ResourceType::Listener, name, translate::grpc::api_listener(row)));
            }
        }
    }
    // Each HTTP port's listener, for the sidecars that see a host of it.
    for (port, visibilities) in &http_visibility {
        for scope in outbound::http_listener_scopes(visibilities) {
            out.insert(
                (scope, ResourceType::Listener, translate::listener_name(*port)),
                translate::listener(*port, None),
            );
        }
    }
    // Each port's TCP listener, unless HTTP services or an earlier host hold the port.
    for (port, candidates) in &tcp_listeners {
        let http = http_ports.contains(port);
        if let (Some(winner), _) = outbound::settle_port(*port, http, candidates) {
            // A host not exported everywhere claims the port but serves only its variants.
            if !winner.hidden {
                out.insert((Scope::Sidecars, ResourceType::Listener, winner.name.clone()), winner.body.clone());
            }
            let variants = tcp_variants.get(port).into_iter().flatten();
            for (scope, l) in variants.filter(|(_, l)| l.fqdn == winner.fqdn && l.name == winner.name) {
                out.insert((scope.clone(), ResourceType::Listener, l.name.clone()), l.body.clone());
            }
        }
    }
    // A namespace's route config: the sidecars' with its own virtual hosts in place; a
    // class's: its namespace's with its own in place.
    for ((scope, name), vhosts) in &routes {
        let body = if *scope == Scope::Sidecars {
            translate::route_configuration(name, vhosts.values())
        } else {
            let mut merged: BTreeMap<&String, &VirtualHostPart> =
                routes.get(&(Scope::Sidecars, name.clone())).into_iter().flatten().collect();
            if let Scope::Class(id) = scope
                && let Some(ns) = crate::model::proxy::namespace_of_id(id)
            {
                merged.extend(routes.get(&(Scope::Namespace(ns.to_string()), name.clone())).into_iter().flatten());
            }
            merged.extend(vhosts.iter());
            translate::route_configuration(name, merged.into_values())
        };
        out.insert((scope.clone(), ResourceType::RouteConfiguration, name.clone()), body);
    }

    if classes.iter().any(|c| c.kind == ProxyKind::Proxyless) {
        for (ty, name, body) in proxyless {
            out.insert((Scope::Proxyless, ty, name), body);
        }
    }

    // Each gateway proxy class: the Gateways that select it, the VirtualServices bound to
    // them, the Secrets its listeners name.
    for (class, labels) in class_labels.iter().filter(|(c, _)| c.kind == ProxyKind::Router) {
        let mut selected: Vec<&Gateway> =
            gateways.iter().filter(|g| views::gateway_selects(g, labels)).copied().collect();
        if selected.is_empty() {
            continue;
        }
        selected.sort_by(|a, b| a.creation_order().cmp(&b.creation_order()));
        let keys: BTreeSet<String> = selected.iter().map(|g| format!("{}/{}", g.namespace, g.name)).collect();
        let bound: Vec<(&VirtualService, DestinationMap)> = virtual_services
            .iter()
            .filter(|vs| gateway::bound_gateways(vs).iter().any(|g| keys.contains(g)))
            .filter(|vs| outbound::exported_to(&vs.spec.export_to, &vs.namespace, Some(&class.namespace)))
            .map(|vs| (*vs, destinations_of(vs)))
            .collect();
        let bound: Vec<(&VirtualService, &DestinationMap)> = bound.iter().map(|(vs, d)| (*vs, d)).collect();
        let result = gateway::gateway_resources(&selected, &bound);
        let scope = Scope::Class(class.id());
        for (ty, name, body) in result.resources {
            out.insert((scope.clone(), ty, name), body);
        }
        let mut by_sds_name: BTreeMap<&str, Vec<&gateway::SecretRef>> = BTreeMap::new();
        for r in &result.secrets {
            by_sds_name.entry(r.sds_name.as_str()).or_default().push(r);
        }
        for refs in by_sds_name.values() {
            let Some(r) = views::pick_ref(&class.namespace, refs) else { continue };
            let primary = secrets.get(&(r.namespace.as_str(), r.name.as_str())).copied();
            let fallback = r.ca_fallback().and_then(|n| secrets.get(&(r.namespace.as_str(), n)).copied());
            if let Ok(body) = views::class_secret(&class.namespace, r, primary, fallback) {
                out.insert((scope.clone(), ResourceType::Secret, r.sds_name.clone()), body);
            }
        }
    }

    // Each sidecar class's inbound side: the Services of its namespace that select it.
    for (class, labels) in class_labels.iter().filter(|(c, _)| c.kind == ProxyKind::Sidecar) {
        let selecting = services
            .iter()
            .filter(|s| s.namespace == class.namespace && super::capture::service_selects(s, labels))
            .copied();
        for (ty, name, body) in super::capture::class_inbound(selecting) {
            out.insert((Scope::Class(class.id()), ty, name), body);
        }
    }
    out
}

/// Pods by namespace and by (namespace, label key, label value), for the selectors of the
/// reference translator.
struct PodIndex<'a> {
    by_namespace: HashMap<String, Vec<&'a Pod>>,
    by_label: HashMap<(String, String, String), Vec<&'a Pod>>,
}

impl<'a> PodIndex<'a> {
    /// The pods a selector may select in a namespace: those carrying its first label (the
    /// caller still checks the whole selector per pod), or every pod of the namespace for an
    /// empty selector.
    fn candidates(&self, namespace: &str, selector: &Labels) -> &[&'a Pod] {
        let found = match selector.iter().next() {
            Some((k, v)) => self.by_label.get(&(namespace.to_string(), k.clone(), v.clone())),
            None => self.by_namespace.get(namespace),
        };
        found.map(Vec::as_slice).unwrap_or_default()
    }
}

/// Where a located resource of context `ctx` is served for proxies of `l`
/// ([`translate::locality::located_scope`]); `None` for a proxy of another namespace than the
/// context's.
fn located_scope(ctx: &Context, by_labels: bool, l: &ProxyLocality) -> Option<Scope> {
    if ctx.as_ref().is_some_and(|ns| *ns != l.namespace) {
        return None;
    }
    Some(translate::locality::located_scope(ctx.as_deref(), by_labels, &l.locality, &l.labels))
}
