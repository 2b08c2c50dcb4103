//! Sidecar outbound listeners for ports that are not plain HTTP: TCP, TLS (SNI routing) and
//! ports of unknown protocol (protocol sniffing), as istiod builds them
//! (`pilot/pkg/networking/core/listener.go` `buildSidecarOutboundListener` and
//! `buildListenerFromEntry`, `tls.go` `buildSidecarOutboundTLSFilterChainOpts` and
//! `buildSidecarOutboundTCPFilterChainOpts`, `networkfilter.go` `buildOutboundNetworkFilters*`).
//!
//! Pure builders, like the rest of [`crate::translate`]: the caller joins a service port with the
//! VirtualServices of its host, asks [`tcp_target`] / [`tls_chains`] what the routes say and
//! builds the listener with [`tcp_listener`], [`tls_listener`] or [`sniffing_listener`].
//!
//! **Runtime matches evaluated at build time.** istiod turns `destinationSubnets` into
//! `filter_chain_match.prefix_ranges` and lets Envoy compare them with the connection's original
//! destination, which on a sidecar listener bound to a service VIP is always that VIP. meshflow's
//! listeners bind the port themselves (no iptables redirect; with `--bind-address` the local
//! address is the proxy's own IP), so the destination address says nothing about the service.
//! These builders therefore evaluate the subnets against the service's cluster IP the way
//! Envoy's filter chain matching would have (the longest matching prefix wins, chains without
//! a prefix are only candidates when no prefix matched) and emit only the chains that can win.

use std::collections::BTreeSet;
use std::net::IpAddr;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::listener::v3 as listener;
use envoy_types::pb::envoy::extensions::filters::listener::http_inspector::v3::HttpInspector;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp;
use envoy_types::pb::google::protobuf::{Any, Duration, UInt32Value};
use envoy_types::util::pack_any;
use prost::Message;
use serde::{Deserialize, Serialize};

use super::route::Source;
use super::{DOMAIN_SUFFIX, outbound_cluster_name, socket_address};
use crate::model::FieldError;
use crate::model::istio::{Destination, RouteDestination, VirtualService};
use crate::model::k8s::{Protocol, ServicePort};

/// istiod's name for the sidecars' "gateway" in `gateways` lists.
const MESH_GATEWAY: &str = "mesh";
/// The ALPN values Envoy's HTTP inspector sets for plaintext HTTP, as istiod matches them
/// (`plaintextHTTPALPNs` without `PILOT_HTTP10`, which is off by default: HTTP/1.0 then falls
/// through to the TCP chain instead of being rejected by the HCM).
pub const PLAINTEXT_HTTP_ALPNS: [&str; 2] = ["http/1.1", "h2c"];
const TCP_PROXY: &str = "envoy.filters.network.tcp_proxy";
const HTTP_CONNECTION_MANAGER: &str = "envoy.filters.network.http_connection_manager";
const TLS_INSPECTOR: &str = "envoy.filters.listener.tls_inspector";
const HTTP_INSPECTOR: &str = "envoy.filters.listener.http_inspector";

/// Where a TCP connection goes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TcpTarget {
    /// One cluster; the tcp_proxy's stat_prefix is the cluster name, as in istiod.
    Cluster(String),
    /// Several clusters with their weights (each > 0). istiod names the stats of a weighted
    /// tcp_proxy after the VirtualService: `<name>.<namespace>`.
    Weighted { stat_prefix: String, clusters: Vec<(String, u32)> },
}

/// istiod's name of the outbound TCP (or sniffing) listener of a service port: `<clusterIP>_<port>`,
/// or `0.0.0.0_<port>` when the service has no cluster IP (`getListenerName`).
pub fn tcp_listener_name(cluster_ip: Option<IpAddr>, port: u16) -> String {
    match cluster_ip {
        Some(ip) => format!("{ip}_{port}"),
        None => super::listener_name(port),
    }
}

/// Whether istiod treats a service port as TLS (`protocol.IsTLS`: HTTPS or TLS), which decides
/// between `tls` routes (SNI chains) and `tcp` routes: istiod applies only `tls` routes to TLS
/// ports and only `tcp` routes to the others (`kube.ConvertProtocol`: `appProtocol` if set,
/// else the port name, up to the first `-`).
pub fn is_tls_port(port: &ServicePort) -> bool {
    if port.protocol != Protocol::Tcp {
        return false;
    }
    let name = match port.app_protocol.as_deref() {
        Some("kubernetes.io/wss") => return true,
        Some(app) => app,
        None => port.name.as_str(),
    };
    let prefix = name.split('-').next().unwrap_or_default();
    prefix.eq_ignore_ascii_case("https") || prefix.eq_ignore_ascii_case("tls")
}

/// The outbound TCP listener of a service port: one filter chain (no match) with a tcp_proxy
/// to `target`, as istiod builds it for a TCP port, or for a TLS port without a matching `tls`
/// route. `name` is istiod's ([`tcp_listener_name`]); `bind` is the address the listener binds
/// (istiod binds the cluster IP without binding the socket, `bind_to_port: false`, behind
/// iptables; meshflow listeners bind their port, so the caller passes `0.0.0.0` or the
/// proxy's `--bind-address`).
pub fn tcp_listener(name: &str, bind: IpAddr, port: u16, target: &TcpTarget) -> Vec<u8> {
    let mut l = outbound_listener(name, bind, port);
    l.filter_chains = vec![tcp_chain(target, None)];
    l.encode_to_vec()
}

/// The `tcp` route of a VirtualService that takes the connections of a service port on a
/// sidecar, as istiod picks it (`buildSidecarOutboundTCPFilterChainOpts`), or None when no tcp
/// route applies (the caller then routes to the service's own cluster, as istiod does).
///
/// - A VirtualService whose `gateways` do not list `mesh` does not apply to sidecars; a match
///   block whose `gateways` do not list `mesh` is skipped.
/// - A match block applies when its `sourceLabels` and `sourceNamespace` select `source` (the
///   sidecar that asks), as istiod's `matchTCP`.
/// - `match.port` must be unset (or 0) or equal `port`.
/// - A route without match blocks, or with an applicable block without `destinationSubnets`,
///   is a catch-all: istiod stops there. Blocks with `destinationSubnets` become prefix-range
///   chains that Envoy prefers to the catch-all when one contains the destination (the service
///   VIP): here a route with a subnet containing `cluster_ip` wins over the catch-all, and among
///   such routes the longest prefix wins (Envoy's matching order). Without a cluster IP, subnet
///   blocks never apply.
/// - Destinations resolve as istiod resolves them: a host without a dot is a short name in the
///   VirtualService's namespace; the port is `destination.port`, else the host's only port
///   (`ports_of(fqdn)`), else `port`. One destination gives one cluster (its weight is
///   ignored), several give weighted clusters without the zero weights.
pub fn tcp_target(
    vs: &VirtualService,
    port: u16,
    cluster_ip: Option<IpAddr>,
    ports_of: &dyn Fn(&str) -> Option<Vec<u16>>,
    source: Source<'_>,
) -> Option<TcpTarget> {
    if !bound_to_mesh(&vs.spec.gateways) {
        return None;
    }
    // The best prefix-range route so far: (prefix length, target).
    let mut best: Option<(u8, TcpTarget)> = None;
    for route in &vs.spec.tcp {
        let Some(target) = route_target(vs, &route.route, port, ports_of) else { continue };
        if route.r#match.is_empty() {
            return Some(best.map_or(target, |(_, t)| t));
        }
        let mut longest: Option<u8> = None;
        for m in &route.r#match {
            if !source_match(&m.gateways, &m.source_labels, m.source_namespace.as_deref(), m.port, port, source) {
                continue;
            }
            if m.destination_subnets.is_empty() {
                return Some(best.map_or(target, |(_, t)| t));
            }
            longest = longest.max(longest_containing(&m.destination_subnets, cluster_ip));
        }
        if let Some(len) = longest
            && best.as_ref().is_none_or(|(b, _)| len > *b)
        {
            best = Some((len, target));
        }
    }
    best.map(|(_, t)| t)
}

/// One SNI filter chain: the server names it matches (`*` = any) and where it goes.
pub type TlsChain = (Vec<String>, TcpTarget);

/// The `tls` routes of a VirtualService for a TLS/HTTPS service port on a sidecar, as istiod
/// builds them (`buildSidecarOutboundTLSFilterChainOpts`): one chain per applicable match block,
/// matching `server_names` = its `sniHosts`, in order.
///
/// None when no match block applies: istiod then gives the port a single chain to the service's
/// own cluster (use [`tcp_listener`]). `Some(chains)` otherwise, even when every chain is ruled
/// out by its subnets (istiod still leaves the own-cluster chain out then; build the listener
/// with [`tls_listener`], whose fallthrough takes the connection).
///
/// Predicates as for [`tcp_target`] (mesh gateway, the source's labels and namespace, port).
/// Runtime predicates: istiod skips a block whose `sniHosts` and `destinationSubnets` repeat an
/// earlier one; a block's subnets are also inherited by later blocks without subnets (istiod
/// overwrites the chain CIDRs it carries from block to block). Subnets are evaluated against
/// `cluster_ip` as Envoy would match them: chains whose subnets do not contain it are dropped,
/// and when some do, only those with the longest matching prefix remain (Envoy matches the
/// destination IP before the server name and never falls back to a less specific prefix).
pub fn tls_chains(
    vs: &VirtualService,
    port: u16,
    cluster_ip: Option<IpAddr>,
    ports_of: &dyn Fn(&str) -> Option<Vec<u16>>,
    source: Source<'_>,
) -> Option<Vec<TlsChain>> {
    if !bound_to_mesh(&vs.spec.gateways) {
        return None;
    }
    let mut handled = BTreeSet::new();
    let mut cidrs: Vec<String> = Vec::new(); // a service with a VIP has no CIDRs of its own
    let mut matched = false;
    // (None = no prefix range, Some(len) = longest matching prefix, chain)
    let mut candidates: Vec<(Option<u8>, TlsChain)> = Vec::new();
    for route in &vs.spec.tls {
        let Some(target) = route_target(vs, &route.route, port, ports_of) else { continue };
        for m in &route.r#match {
            if !source_match(&m.gateways, &m.source_labels, m.source_namespace.as_deref(), m.port, port, source) {
                continue;
            }
            if !m.destination_subnets.is_empty() {
                cidrs = m.destination_subnets.clone();
            }
            let key = (m.sni_hosts.join(","), m.destination_subnets.join(","));
            if !handled.insert(key) {
                continue;
            }
            matched = true;
            let level = if cidrs.is_empty() {
                None
            } else {
                match longest_containing(&cidrs, cluster_ip) {
                    Some(len) => Some(len),
                    None => continue, // Envoy never selects this chain
                }
            };
            candidates.push((level, (m.sni_hosts.clone(), target.clone())));
        }
    }
    if !matched {
        return None;
    }
    let winner = candidates.iter().filter_map(|(level, _)| *level).max();
    Some(candidates.into_iter().filter(|(level, _)| *level == winner).map(|(_, chain)| chain).collect())
}

/// The outbound listener of a TLS/HTTPS service port with `tls` routes: a tls_inspector, one
/// filter chain per route matched on `server_names` (sorted, as istiod writes them), and
/// `fallthrough` as the default filter chain for any other SNI (istiod's
/// `PassthroughFilterChain`, which sends the connection to its original destination, the
/// service VIP; meshflow has no original destination, so the caller passes the service's own
/// cluster).
///
/// A chain whose names include `*` matches everything: istiod makes it the default chain instead
/// of the fallthrough (here the first such chain). A server name already matched by an earlier
/// chain is left out of later ones and a chain left without names is dropped (istiod would emit
/// both and Envoy would reject the listener for duplicate matches); the first route wins, as
/// VirtualService routes do.
pub fn tls_listener(name: &str, bind: IpAddr, port: u16, chains: &[TlsChain], fallthrough: &TcpTarget) -> Vec<u8> {
    let mut l = outbound_listener(name, bind, port);
    let mut claimed: BTreeSet<&str> = BTreeSet::new();
    let mut match_all = None;
    for (sni, target) in chains {
        if sni.is_empty() || sni.iter().any(|s| s == "*") {
            match_all.get_or_insert_with(|| tcp_chain(target, None));
            continue;
        }
        let names: BTreeSet<&str> = sni.iter().map(String::as_str).filter(|s| !claimed.contains(s)).collect();
        if names.is_empty() {
            continue;
        }
        claimed.extend(names.iter().copied());
        let server_names = names.into_iter().map(str::to_string).collect();
        l.filter_chains
            .push(tcp_chain(target, Some(listener::FilterChainMatch { server_names, ..Default::default() })));
    }
    match match_all {
        // istiod: a lone match-all chain is a plain filter chain, not the default one.
        Some(chain) if l.filter_chains.is_empty() => l.filter_chains.push(chain),
        Some(chain) => l.default_filter_chain = Some(chain),
        None => l.default_filter_chain = Some(tcp_chain(fallthrough, Some(Default::default()))),
    }
    if !l.filter_chains.is_empty() && l.filter_chains.iter().any(|c| c.filter_chain_match.is_some()) {
        l.listener_filters.push(tls_inspector());
    }
    l.encode_to_vec()
}

/// istiod's protocol-sniffing listener for a service port of unknown protocol: an http_inspector,
/// a filter chain for plaintext HTTP (matched on `application_protocols` `http/1.1`, `h2c` and
/// `transport_protocol` `raw_buffer`) carrying `http_manager`, and the TCP chain (a tcp_proxy to
/// `tcp_target`) as the default filter chain for everything else.
///
/// `http_manager` is the HTTP connection manager, already packed in an `Any`
/// (`pack_any(HttpConnectionManager { .. })`), so this module does not depend on how the HTTP
/// filters are built. istiod's HCM here has `stat_prefix` `outbound_<listener name>` and, for a
/// listener bound to a service VIP, RDS route config `<fqdn>:<port>` (one route config per
/// sniffed service); `"<port>"` for a `0.0.0.0_<port>` listener shared by the port.
///
/// `name`: istiod names it `<clusterIP>_<port>` for a service with a cluster IP, `0.0.0.0_<port>`
/// otherwise ([`tcp_listener_name`]). `tcp_target` is the service's own cluster or what
/// [`tcp_target`] returns: istiod applies `tcp` routes to sniffed ports too. No tls_inspector:
/// istiod adds it only for chains that match SNI, and none does here.
pub fn sniffing_listener(name: &str, bind: IpAddr, port: u16, http_manager: Any, tcp_target: &TcpTarget) -> Vec<u8> {
    let mut l = outbound_listener(name, bind, port);
    l.filter_chains = vec![listener::FilterChain {
        filter_chain_match: Some(listener::FilterChainMatch {
            application_protocols: PLAINTEXT_HTTP_ALPNS.iter().map(|s| s.to_string()).collect(),
            transport_protocol: "raw_buffer".to_string(),
            ..Default::default()
        }),
        filters: vec![listener::Filter {
            name: HTTP_CONNECTION_MANAGER.to_string(),
            config_type: Some(listener::filter::ConfigType::TypedConfig(http_manager)),
        }],
        transport_socket_connect_timeout: Some(transport_socket_connect_timeout()),
        ..Default::default()
    }];
    l.default_filter_chain = Some(tcp_chain(tcp_target, None));
    l.listener_filters = vec![listener::ListenerFilter {
        name: HTTP_INSPECTOR.to_string(),
        config_type: Some(listener::listener_filter::ConfigType::TypedConfig(pack_any(HttpInspector {}))),
        ..Default::default()
    }];
    // istiod: the mesh's protocolDetectionTimeout, 0s (no timeout) by default.
    l.listener_filters_timeout = Some(Duration { seconds: 0, nanos: 0 });
    l.encode_to_vec()
}

/// Fields of the `tcp` and `tls` routes of a VirtualService that the builders above do not
/// translate, each with the path from the object root and the reason.
pub fn untranslated_tcp_tls(vs: &VirtualService) -> Vec<FieldError> {
    const GATEWAYS: &str = "applied to sidecars only: gateway proxies are served as proxies that the block does not \
                            select";
    let binds_gateways = vs.spec.gateways.iter().any(|g| g != MESH_GATEWAY);
    let mut out = Vec::new();
    let mut source = |p: &str, gateways: &[String], labels: bool, namespace: Option<&str>| {
        if binds_gateways && gateways.is_empty() {
            if labels {
                out.push(FieldError::new(format!("{p}.sourceLabels"), GATEWAYS));
            }
            if namespace.is_some_and(|s| !s.is_empty()) {
                out.push(FieldError::new(format!("{p}.sourceNamespace"), GATEWAYS));
            }
        }
    };
    let mut subnets = Vec::new();
    for (i, route) in vs.spec.tcp.iter().enumerate() {
        for (j, m) in route.r#match.iter().enumerate() {
            let p = format!("spec.tcp[{i}].match[{j}]");
            source(&p, &m.gateways, !m.source_labels.is_empty(), m.source_namespace.as_deref());
            if m.source_subnet.as_deref().is_some_and(|s| !s.is_empty()) {
                subnets.push(FieldError::new(
                    format!("{p}.sourceSubnet"),
                    "not translated (istiod ignores it for sidecars too): the match does not depend on the source",
                ));
            }
        }
    }
    for (i, route) in vs.spec.tls.iter().enumerate() {
        for (j, m) in route.r#match.iter().enumerate() {
            let p = format!("spec.tls[{i}].match[{j}]");
            source(&p, &m.gateways, !m.source_labels.is_empty(), m.source_namespace.as_deref());
        }
    }
    out.extend(subnets);
    out
}

// ------------------------------------------------------------------------------------------------

/// The fields istiod sets on every sidecar outbound listener (`buildListenerFromEntry`).
fn outbound_listener(name: &str, bind: IpAddr, port: u16) -> listener::Listener {
    listener::Listener {
        name: name.to_string(),
        address: Some(socket_address(&bind.to_string(), port)),
        traffic_direction: core::TrafficDirection::Outbound as i32,
        continue_on_listener_filters_timeout: true,
        // No http_inspector: no listener filter timeout at all.
        listener_filters_timeout: Some(Duration { seconds: 0, nanos: 0 }),
        // Set by istiod on listeners that bind their socket, which meshflow's do
        // (MAX_CONNECTIONS_PER_SOCKET_EVENT_LOOP, default 1).
        max_connections_to_accept_per_socket_event: Some(UInt32Value { value: 1 }),
        ..Default::default()
    }
}

/// istiod sets PILOT_GATEWAY_TRANSPORT_SOCKET_CONNECT_TIMEOUT (15 s) on every outbound chain.
pub(crate) fn transport_socket_connect_timeout() -> Duration {
    Duration { seconds: 15, nanos: 0 }
}

pub(crate) fn tls_inspector() -> listener::ListenerFilter {
    listener::ListenerFilter {
        name: TLS_INSPECTOR.to_string(),
        config_type: Some(listener::listener_filter::ConfigType::TypedConfig(pack_any(TlsInspector {
            // istiod: 512 bytes instead of Envoy's 64 KiB default.
            initial_read_buffer_size: Some(UInt32Value { value: 512 }),
            ..Default::default()
        }))),
        ..Default::default()
    }
}

fn tcp_chain(target: &TcpTarget, filter_chain_match: Option<listener::FilterChainMatch>) -> listener::FilterChain {
    listener::FilterChain {
        filter_chain_match,
        filters: vec![tcp_proxy(target)],
        transport_socket_connect_timeout: Some(transport_socket_connect_timeout()),
        ..Default::default()
    }
}

pub(crate) fn tcp_proxy(target: &TcpTarget) -> listener::Filter {
    use tcp::tcp_proxy::{ClusterSpecifier, WeightedCluster, weighted_cluster::ClusterWeight};
    let (stat_prefix, specifier) = match target {
        TcpTarget::Cluster(cluster) => (cluster.clone(), ClusterSpecifier::Cluster(cluster.clone())),
        TcpTarget::Weighted { stat_prefix, clusters } => {
            let clusters = clusters
                .iter()
                .filter(|(_, weight)| *weight > 0)
                .map(|(name, weight)| ClusterWeight { name: name.clone(), weight: *weight, ..Default::default() })
                .collect();
            (stat_prefix.clone(), ClusterSpecifier::WeightedClusters(WeightedCluster { clusters }))
        }
    };
    let proxy = tcp::TcpProxy { stat_prefix, cluster_specifier: Some(specifier), ..Default::default() };
    listener::Filter {
        name: TCP_PROXY.to_string(),
        config_type: Some(listener::filter::ConfigType::TypedConfig(pack_any(proxy))),
    }
}

fn bound_to_mesh(gateways: &[String]) -> bool {
    gateways.is_empty() || gateways.iter().any(|g| g == MESH_GATEWAY)
}

/// istiod's predicates (`matchTCP`, `matchTLS`) for the sidecar of `source`: a block with
/// `gateways` applies when they name `mesh` (source labels are then not looked at, as in
/// istiod), one without when its `sourceLabels` and `sourceNamespace` select the source.
fn source_match(
    gateways: &[String],
    source_labels: &std::collections::BTreeMap<String, String>,
    source_namespace: Option<&str>,
    m_port: Option<u32>,
    port: u16,
    source: Source<'_>,
) -> bool {
    let by_source = if gateways.is_empty() { source.selects(source_labels, source_namespace) } else { true };
    bound_to_mesh(gateways) && by_source && m_port.is_none_or(|p| p == 0 || p == u32::from(port))
}

/// Where a route's connections go; None only for a route without destinations (validation
/// rejects those, and istiod skips them).
pub(crate) fn route_target(
    vs: &VirtualService,
    routes: &[RouteDestination],
    port: u16,
    ports_of: &dyn Fn(&str) -> Option<Vec<u16>>,
) -> Option<TcpTarget> {
    match routes {
        [] => None,
        [only] => Some(TcpTarget::Cluster(destination_cluster(vs, &only.destination, port, ports_of))),
        several => {
            let clusters: Vec<(String, u32)> = several
                .iter()
                .filter_map(|r| {
                    let weight = u32::try_from(r.weight.unwrap_or(0)).ok().filter(|w| *w > 0)?;
                    Some((destination_cluster(vs, &r.destination, port, ports_of), weight))
                })
                .collect();
            if clusters.is_empty() {
                // Validation rejects a total weight of 0; should one pass, send everything to
                // the first destination rather than build an invalid tcp_proxy.
                return Some(TcpTarget::Cluster(destination_cluster(vs, &several[0].destination, port, ports_of)));
            }
            Some(TcpTarget::Weighted { stat_prefix: format!("{}.{}", vs.name, vs.namespace), clusters })
        }
    }
}

/// istiod's `GetDestinationCluster` after `ResolveShortnameToFQDN`.
fn destination_cluster(
    vs: &VirtualService,
    destination: &Destination,
    port: u16,
    ports_of: &dyn Fn(&str) -> Option<Vec<u16>>,
) -> String {
    let host = resolve_host(&destination.host, &vs.namespace);
    let port = match destination.port.as_ref().and_then(|p| u16::try_from(p.number).ok()).filter(|p| *p != 0) {
        Some(p) => p,
        None => match ports_of(&host).as_deref() {
            Some([only]) => *only,
            _ => port,
        },
    };
    outbound_cluster_name(port, destination.subset.as_deref().unwrap_or_default(), &host)
}

/// istiod's `ResolveShortnameToFQDN`: `*`, IP addresses and names with a dot stay as they are;
/// a short name is a service in the VirtualService's namespace.
fn resolve_host(host: &str, namespace: &str) -> String {
    if host == "*" || host.contains('.') || host.parse::<IpAddr>().is_ok() {
        host.to_string()
    } else {
        format!("{host}.{namespace}.svc.{DOMAIN_SUFFIX}")
    }
}

/// The longest prefix among `subnets` (CIDR blocks or single addresses) that contains `ip`.
fn longest_containing(subnets: &[String], ip: Option<IpAddr>) -> Option<u8> {
    let ip = ip?;
    subnets.iter().filter_map(|s| prefix_containing(s, ip)).max()
}

fn prefix_containing(subnet: &str, ip: IpAddr) -> Option<u8> {
    let (addr, len) = match subnet.split_once('/') {
        Some((addr, len)) => (addr.parse::<IpAddr>().ok()?, Some(len.parse::<u8>().ok()?)),
        None => (subnet.parse::<IpAddr>().ok()?, None),
    };
    match (addr, ip) {
        (IpAddr::V4(net), IpAddr::V4(ip)) => {
            let len = len.unwrap_or(32);
            let mask = u32::MAX.checked_shl(32 - u32::from(len.min(32))).unwrap_or(0);
            (len <= 32 && u32::from(net) & mask == u32::from(ip) & mask).then_some(len)
        }
        (IpAddr::V6(net), IpAddr::V6(ip)) => {
            let len = len.unwrap_or(128);
            let mask = u128::MAX.checked_shl(128 - u32::from(len.min(128))).unwrap_or(0);
            (len <= 128 && u128::from(net) & mask == u128::from(ip) & mask).then_some(len)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::k8s::TargetPort;
    use crate::model::{Object, ParseOutcome, parse_document};
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
    use prost::Name;
    use tcp::tcp_proxy::ClusterSpecifier;

    const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/corpus");

    /// A VirtualService of a corpus file, parsed and validated as meshflow's sources do.
    fn corpus_vs(file: &str, name: &str) -> VirtualService {
        let text = std::fs::read_to_string(format!("{CORPUS}/{file}")).expect("the shared corpus is checked out");
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = serde_json::Value::deserialize(doc).unwrap();
            for outcome in parse_document(value, "default") {
                if let ParseOutcome::Object(Object::VirtualService(vs)) = outcome
                    && vs.name == name
                {
                    return *vs;
                }
            }
        }
        panic!("no valid VirtualService {name} in {file}")
    }

    fn vs(namespace: &str, name: &str, spec: serde_json::Value) -> VirtualService {
        let value = serde_json::json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec,
        });
        match parse_document(value, "default").pop() {
            Some(ParseOutcome::Object(Object::VirtualService(vs))) => *vs,
            other => panic!("invalid test VirtualService: {other:?}"),
        }
    }

    fn no_ports(_: &str) -> Option<Vec<u16>> {
        None
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn decode(bytes: &[u8]) -> listener::Listener {
        listener::Listener::decode(bytes).unwrap()
    }

    fn proxy_of(chain: &listener::FilterChain) -> tcp::TcpProxy {
        assert_eq!(chain.filters.len(), 1, "{chain:?}");
        assert_eq!(chain.filters[0].name, "envoy.filters.network.tcp_proxy");
        let Some(listener::filter::ConfigType::TypedConfig(any)) = &chain.filters[0].config_type else { panic!() };
        assert_eq!(any.type_url, "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy");
        tcp::TcpProxy::decode(&any.value[..]).unwrap()
    }

    fn cluster(name: &str) -> TcpTarget {
        TcpTarget::Cluster(name.to_string())
    }

    fn server_names(l: &listener::Listener) -> Vec<Vec<String>> {
        l.filter_chains.iter().map(|c| c.filter_chain_match.clone().unwrap_or_default().server_names).collect()
    }

    // --- listeners --------------------------------------------------------------------------------

    #[test]
    fn tcp_listener_is_named_and_bound_as_given_with_one_tcp_proxy_chain() {
        assert_eq!(tcp_listener_name(Some(ip("10.96.0.7")), 9000), "10.96.0.7_9000");
        assert_eq!(tcp_listener_name(None, 9000), "0.0.0.0_9000");
        let target = cluster("outbound|9000||tcp-echo.default.svc.cluster.local");
        let l = decode(&tcp_listener("10.96.0.7_9000", ip("127.0.0.7"), 9000, &target));
        assert_eq!(l.name, "10.96.0.7_9000");
        let Some(core::address::Address::SocketAddress(sa)) = l.address.unwrap().address else { panic!() };
        assert_eq!(sa.address, "127.0.0.7");
        assert_eq!(sa.port_specifier, Some(core::socket_address::PortSpecifier::PortValue(9000)));
        assert_eq!(l.traffic_direction, core::TrafficDirection::Outbound as i32);
        assert!(l.continue_on_listener_filters_timeout);
        assert_eq!(l.listener_filters_timeout, Some(Duration { seconds: 0, nanos: 0 }));
        assert!(l.listener_filters.is_empty(), "no SNI, no sniffing: no listener filter");
        assert!(l.default_filter_chain.is_none(), "istiod: a lone match-all chain is not the default chain");
        assert_eq!(l.filter_chains.len(), 1);
        assert_eq!(l.filter_chains[0].filter_chain_match, None);
        assert_eq!(l.filter_chains[0].transport_socket_connect_timeout, Some(Duration { seconds: 15, nanos: 0 }));
        let proxy = proxy_of(&l.filter_chains[0]);
        assert_eq!(proxy.stat_prefix, "outbound|9000||tcp-echo.default.svc.cluster.local");
        assert_eq!(
            proxy.cluster_specifier,
            Some(ClusterSpecifier::Cluster("outbound|9000||tcp-echo.default.svc.cluster.local".into()))
        );
    }

    #[test]
    fn weighted_tcp_proxy_uses_the_given_stat_prefix_and_leaves_out_zero_weights() {
        let target = TcpTarget::Weighted {
            stat_prefix: "tcp-echo.default".into(),
            clusters: vec![("a".into(), 80), ("b".into(), 0), ("c".into(), 20)],
        };
        let l = decode(&tcp_listener("0.0.0.0_9000", ip("0.0.0.0"), 9000, &target));
        let proxy = proxy_of(&l.filter_chains[0]);
        assert_eq!(proxy.stat_prefix, "tcp-echo.default");
        let Some(ClusterSpecifier::WeightedClusters(w)) = proxy.cluster_specifier else { panic!() };
        let got: Vec<(&str, u32)> = w.clusters.iter().map(|c| (c.name.as_str(), c.weight)).collect();
        assert_eq!(got, [("a", 80), ("c", 20)], "Envoy requires weight >= 1");
    }

    #[test]
    fn tls_listener_matches_sni_with_a_tls_inspector_and_falls_through_to_the_default_chain() {
        let chains = vec![
            (vec!["b.example.com".to_string(), "a.example.com".to_string()], cluster("one")),
            (vec!["*.example.org".to_string()], cluster("two")),
        ];
        let l = decode(&tls_listener("10.0.0.1_443", ip("0.0.0.0"), 443, &chains, &cluster("own")));
        assert_eq!(l.name, "10.0.0.1_443");
        assert_eq!(server_names(&l), [vec!["a.example.com", "b.example.com"], vec!["*.example.org"]], "sorted");
        assert_eq!(proxy_of(&l.filter_chains[0]).stat_prefix, "one");
        assert_eq!(proxy_of(&l.filter_chains[1]).stat_prefix, "two");
        assert_eq!(proxy_of(l.default_filter_chain.as_ref().unwrap()).stat_prefix, "own");
        assert_eq!(l.listener_filters.len(), 1);
        let filter = &l.listener_filters[0];
        assert_eq!(filter.name, "envoy.filters.listener.tls_inspector");
        let Some(listener::listener_filter::ConfigType::TypedConfig(any)) = &filter.config_type else { panic!() };
        let inspector = TlsInspector::decode(&any.value[..]).unwrap();
        assert_eq!(inspector.initial_read_buffer_size, Some(UInt32Value { value: 512 }));
    }

    #[test]
    fn tls_listener_gives_a_server_name_to_its_first_chain_only_and_makes_star_the_default() {
        let chains = vec![
            (vec!["a.example.com".to_string()], cluster("first")),
            (vec!["a.example.com".to_string(), "b.example.com".to_string()], cluster("second")),
            (vec!["b.example.com".to_string()], cluster("shadowed")),
            (vec!["*".to_string()], cluster("star")),
        ];
        let l = decode(&tls_listener("x", ip("0.0.0.0"), 443, &chains, &cluster("own")));
        assert_eq!(server_names(&l), [vec!["a.example.com"], vec!["b.example.com"]]);
        assert_eq!(proxy_of(&l.filter_chains[1]).stat_prefix, "second");
        assert_eq!(proxy_of(l.default_filter_chain.as_ref().unwrap()).stat_prefix, "star");
        // A lone `*` chain is the listener's only filter chain, without an inspector.
        let l = decode(&tls_listener("x", ip("0.0.0.0"), 443, &chains[3..], &cluster("own")));
        assert_eq!(l.filter_chains.len(), 1);
        assert_eq!(proxy_of(&l.filter_chains[0]).stat_prefix, "star");
        assert!(l.default_filter_chain.is_none() && l.listener_filters.is_empty());
        // No chain at all: only the fallthrough.
        let l = decode(&tls_listener("x", ip("0.0.0.0"), 443, &[], &cluster("own")));
        assert!(l.filter_chains.is_empty() && l.listener_filters.is_empty());
        assert_eq!(proxy_of(l.default_filter_chain.as_ref().unwrap()).stat_prefix, "own");
    }

    #[test]
    fn sniffing_listener_has_an_http_chain_by_alpn_and_a_tcp_default_chain() {
        let manager = hcm::HttpConnectionManager { stat_prefix: "outbound_0.0.0.0_8000".into(), ..Default::default() };
        let l = decode(&sniffing_listener("0.0.0.0_8000", ip("0.0.0.0"), 8000, pack_any(manager), &cluster("svc")));
        assert_eq!(l.name, "0.0.0.0_8000");
        let names: Vec<&str> = l.listener_filters.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["envoy.filters.listener.http_inspector"]);
        let Some(listener::listener_filter::ConfigType::TypedConfig(any)) = &l.listener_filters[0].config_type else {
            panic!()
        };
        assert_eq!(any.type_url, format!("type.googleapis.com/{}", HttpInspector::full_name()));
        assert_eq!(l.listener_filters_timeout, Some(Duration { seconds: 0, nanos: 0 }));
        assert!(l.continue_on_listener_filters_timeout);
        assert_eq!(l.filter_chains.len(), 1);
        let http = &l.filter_chains[0];
        let m = http.filter_chain_match.as_ref().unwrap();
        assert_eq!(m.application_protocols, ["http/1.1", "h2c"]);
        assert_eq!(m.transport_protocol, "raw_buffer");
        assert_eq!(http.filters[0].name, "envoy.filters.network.http_connection_manager");
        let Some(listener::filter::ConfigType::TypedConfig(any)) = &http.filters[0].config_type else { panic!() };
        assert_eq!(hcm::HttpConnectionManager::decode(&any.value[..]).unwrap().stat_prefix, "outbound_0.0.0.0_8000");
        let tcp = l.default_filter_chain.as_ref().unwrap();
        assert_eq!(tcp.filter_chain_match, None);
        assert_eq!(proxy_of(tcp).cluster_specifier, Some(ClusterSpecifier::Cluster("svc".into())));
    }

    #[test]
    fn tls_ports_are_https_and_tls_as_istiod_parses_them() {
        let port = |name: &str, app: Option<&str>| ServicePort {
            name: name.into(),
            port: 443,
            protocol: Protocol::Tcp,
            target_port: TargetPort::Number(443),
            app_protocol: app.map(str::to_string),
        };
        assert!(is_tls_port(&port("https", None)));
        assert!(is_tls_port(&port("tls-db", None)));
        assert!(is_tls_port(&port("TLS", None)));
        assert!(!is_tls_port(&port("tcp", None)));
        assert!(!is_tls_port(&port("httpsx", None)));
        assert!(is_tls_port(&port("web", Some("kubernetes.io/wss"))));
        assert!(!is_tls_port(&port("https", Some("http"))), "appProtocol wins over the name");
        let mut udp = port("tls", None);
        udp.protocol = Protocol::Udp;
        assert!(!is_tls_port(&udp));
    }

    // --- tcp routes -------------------------------------------------------------------------------

    #[test]
    fn corpus_tcp_port_route_goes_to_the_backup_on_the_matching_port_only() {
        let vs = corpus_vs("api-vs-tcp-port-route.yaml", "bookinfo-mongo");
        assert_eq!(
            tcp_target(&vs, 27017, Some(ip("10.96.0.9")), &no_ports, Source::default()),
            Some(cluster("outbound|5555||mongo.backup.svc.cluster.local"))
        );
        assert_eq!(
            tcp_target(&vs, 27018, Some(ip("10.96.0.9")), &no_ports, Source::default()),
            None,
            "match.port differs"
        );
        assert!(untranslated_tcp_tls(&vs).is_empty());
    }

    #[test]
    fn corpus_tcp_echo_routes_are_for_the_gateway_and_resolve_short_names_when_bound_to_mesh() {
        let mut all_v1 = corpus_vs("tcp-echo-all-v1.yaml", "tcp-echo");
        assert_eq!(tcp_target(&all_v1, 31400, None, &no_ports, Source::default()), None, "gateways lack `mesh`");
        all_v1.spec.gateways = vec!["tcp-echo-gateway".into(), "mesh".into()];
        assert_eq!(
            tcp_target(&all_v1, 31400, None, &no_ports, Source::default()),
            Some(cluster("outbound|9000|v1|tcp-echo.default.svc.cluster.local"))
        );

        let mut shift = corpus_vs("tcp-echo-20-v2.yaml", "tcp-echo");
        assert_eq!(tcp_target(&shift, 31400, None, &no_ports, Source::default()), None);
        shift.spec.gateways.clear();
        assert_eq!(
            tcp_target(&shift, 31400, None, &no_ports, Source::default()),
            Some(TcpTarget::Weighted {
                stat_prefix: "tcp-echo.default".into(),
                clusters: vec![
                    ("outbound|9000|v1|tcp-echo.default.svc.cluster.local".into(), 80),
                    ("outbound|9000|v2|tcp-echo.default.svc.cluster.local".into(), 20),
                ],
            })
        );
    }

    fn tcp_vs(routes: serde_json::Value) -> VirtualService {
        vs("shop", "db", serde_json::json!({"hosts": ["db"], "tcp": routes}))
    }

    #[test]
    fn destination_port_is_given_else_the_hosts_only_port_else_the_listener_port() {
        let vs = tcp_vs(serde_json::json!([{"route": [{"destination": {"host": "db"}, "weight": 100}]}]));
        let one = |h: &str| (h == "db.shop.svc.cluster.local").then(|| vec![5432]);
        let two = |_: &str| Some(vec![5432, 5433]);
        assert_eq!(
            tcp_target(&vs, 9000, None, &one, Source::default()),
            Some(cluster("outbound|5432||db.shop.svc.cluster.local"))
        );
        assert_eq!(
            tcp_target(&vs, 9000, None, &two, Source::default()),
            Some(cluster("outbound|9000||db.shop.svc.cluster.local"))
        );
        assert_eq!(
            tcp_target(&vs, 9000, None, &no_ports, Source::default()),
            Some(cluster("outbound|9000||db.shop.svc.cluster.local")),
            "a single destination is one cluster whatever its weight"
        );
        let fqdn =
            tcp_vs(serde_json::json!([{"route": [{"destination": {"host": "db.other", "port": {"number": 1}}}]}]));
        assert_eq!(
            tcp_target(&fqdn, 9000, None, &one, Source::default()),
            Some(cluster("outbound|1||db.other")),
            "dotted hosts stay"
        );
    }

    #[test]
    fn match_blocks_apply_by_gateway_and_by_the_source_that_asks() {
        let vs = tcp_vs(serde_json::json!([
            {"match": [{"gateways": ["ingress"]}], "route": [{"destination": {"host": "gw"}}]},
            {"match": [{"sourceLabels": {"app": "x"}}], "route": [{"destination": {"host": "labels"}}]},
            {"match": [{"sourceNamespace": "x", "sourceSubnet": "10.0.0.0/8"}], "route": [{"destination": {"host": "ns"}}]},
            {"match": [{"gateways": ["mesh"]}], "route": [{"destination": {"host": "mesh"}}]},
        ]));
        let mesh = cluster("outbound|9000||mesh.shop.svc.cluster.local");
        assert_eq!(tcp_target(&vs, 9000, None, &no_ports, Source::default()), Some(mesh.clone()));
        // istiod's matchTCP: sourceLabels a subset of the proxy's, sourceNamespace its namespace.
        let x = crate::model::k8s::Labels::from([("app".to_string(), "x".to_string())]);
        let labelled = Source { namespace: Some("shop"), labels: Some(&x) };
        let labels_target = cluster("outbound|9000||labels.shop.svc.cluster.local");
        assert_eq!(tcp_target(&vs, 9000, None, &no_ports, labelled), Some(labels_target));
        let in_x = Source { namespace: Some("x"), labels: None };
        assert_eq!(
            tcp_target(&vs, 9000, None, &no_ports, in_x),
            Some(cluster("outbound|9000||ns.shop.svc.cluster.local"))
        );
        let elsewhere = Source { namespace: Some("y"), labels: None };
        assert_eq!(tcp_target(&vs, 9000, None, &no_ports, elsewhere), Some(mesh));
        let untranslated = untranslated_tcp_tls(&vs);
        let fields: Vec<&str> = untranslated.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["spec.tcp[2].match[0].sourceSubnet"], "sources apply to sidecars");
        // Bound to a gateway as well: gateway proxies do not get source blocks (reported).
        let mut both = vs.clone();
        both.spec.gateways = vec!["mesh".into(), "ingress".into()];
        let fields: Vec<String> = untranslated_tcp_tls(&both).into_iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            [
                "spec.tcp[1].match[0].sourceLabels",
                "spec.tcp[2].match[0].sourceNamespace",
                "spec.tcp[2].match[0].sourceSubnet"
            ]
        );
    }

    #[test]
    fn a_destination_subnet_applies_when_it_holds_the_cluster_ip_and_the_longest_prefix_wins() {
        let vs = tcp_vs(serde_json::json!([
            {"match": [{"destinationSubnets": ["10.0.0.0/8"]}], "route": [{"destination": {"host": "wide"}}]},
            {"match": [{"destinationSubnets": ["192.168.0.0/16", "10.96.0.0/16"]}], "route": [{"destination": {"host": "narrow"}}]},
            {"route": [{"destination": {"host": "rest"}}]},
            {"match": [{"destinationSubnets": ["10.96.0.7"]}], "route": [{"destination": {"host": "after-catch-all"}}]},
        ]));
        let target =
            |cluster_ip: Option<&str>| match tcp_target(&vs, 9000, cluster_ip.map(ip), &no_ports, Source::default()) {
                Some(TcpTarget::Cluster(c)) => c,
                other => panic!("{other:?}"),
            };
        assert_eq!(target(Some("10.96.0.7")), "outbound|9000||narrow.shop.svc.cluster.local");
        assert_eq!(target(Some("10.1.0.7")), "outbound|9000||wide.shop.svc.cluster.local");
        assert_eq!(target(Some("172.16.0.1")), "outbound|9000||rest.shop.svc.cluster.local");
        assert_eq!(target(None), "outbound|9000||rest.shop.svc.cluster.local", "no cluster IP: no subnet applies");
        // Without a catch-all route, no subnet holding the IP means no route at all.
        let only_subnets = tcp_vs(serde_json::json!([
            {"match": [{"destinationSubnets": ["10.0.0.0/8"]}], "route": [{"destination": {"host": "wide"}}]}
        ]));
        assert_eq!(tcp_target(&only_subnets, 9000, Some(ip("172.16.0.1")), &no_ports, Source::default()), None);
        let v6 = tcp_vs(serde_json::json!([
            {"match": [{"destinationSubnets": ["fd00::/8"]}], "route": [{"destination": {"host": "v6"}}]}
        ]));
        assert_eq!(
            tcp_target(&v6, 9000, Some(ip("fd00::1")), &no_ports, Source::default()),
            Some(cluster("outbound|9000||v6.shop.svc.cluster.local"))
        );
        assert_eq!(tcp_target(&v6, 9000, Some(ip("10.0.0.1")), &no_ports, Source::default()), None);
    }

    #[test]
    fn prefixes_contain_what_their_mask_says() {
        assert_eq!(prefix_containing("10.96.0.0/12", ip("10.100.3.4")), Some(12));
        assert_eq!(prefix_containing("10.96.0.0/12", ip("10.112.0.0")), None);
        assert_eq!(prefix_containing("0.0.0.0/0", ip("1.2.3.4")), Some(0));
        assert_eq!(prefix_containing("1.2.3.4", ip("1.2.3.4")), Some(32));
        assert_eq!(prefix_containing("1.2.3.4", ip("1.2.3.5")), None);
        assert_eq!(prefix_containing("1.2.3.4/33", ip("1.2.3.4")), None);
        assert_eq!(prefix_containing("::/0", ip("1.2.3.4")), None, "families do not mix");
    }

    // --- tls routes -------------------------------------------------------------------------------

    #[test]
    fn corpus_cnn_tls_passthrough_is_one_sni_chain_on_port_443() {
        let vs = corpus_vs("egress-cnn-serviceentry-tls-passthrough.yaml", "edition-cnn-com");
        let chains = tls_chains(&vs, 443, None, &no_ports, Source::default()).unwrap();
        assert_eq!(chains, [(vec!["edition.cnn.com".to_string()], cluster("outbound|443||edition.cnn.com"))]);
        assert_eq!(tls_chains(&vs, 80, None, &no_ports, Source::default()), None, "match.port 443 only");
        let l = decode(&tls_listener(
            "0.0.0.0_443",
            ip("0.0.0.0"),
            443,
            &chains,
            &cluster("outbound|443||edition.cnn.com"),
        ));
        assert_eq!(server_names(&l), [vec!["edition.cnn.com"]]);
        assert_eq!(l.listener_filters[0].name, "envoy.filters.listener.tls_inspector");
    }

    #[test]
    fn corpus_wikipedia_tls_route_keeps_wildcard_server_names() {
        let vs = corpus_vs("api-se-none-wildcard-tls-routing.yaml", "tls-routing");
        let firewall = |h: &str| (h == "internal-egress-firewall.ns1.svc.cluster.local").then(|| vec![8443]);
        let chains = tls_chains(&vs, 443, None, &firewall, Source::default()).unwrap();
        assert_eq!(
            chains,
            [(
                vec!["wikipedia.org".to_string(), "*.wikipedia.org".to_string()],
                cluster("outbound|8443||internal-egress-firewall.ns1.svc.cluster.local")
            )]
        );
        let l = decode(&tls_listener("0.0.0.0_443", ip("0.0.0.0"), 443, &chains, &cluster("own")));
        assert_eq!(server_names(&l), [vec!["*.wikipedia.org", "wikipedia.org"]]);
    }

    fn tls_vs(routes: serde_json::Value) -> VirtualService {
        vs("shop", "web", serde_json::json!({"hosts": ["*.example.com"], "tls": routes}))
    }

    #[test]
    fn tls_match_blocks_are_deduplicated_and_subnets_are_evaluated_like_envoy() {
        let vs = tls_vs(serde_json::json!([
            {"match": [{"sniHosts": ["a.example.com"]}, {"sniHosts": ["a.example.com"], "port": 443}],
             "route": [{"destination": {"host": "a"}}]},
            {"match": [{"sniHosts": ["b.example.com"], "sourceLabels": {"app": "x"}}],
             "route": [{"destination": {"host": "labels"}}]},
        ]));
        let chains = tls_chains(&vs, 443, Some(ip("10.0.0.1")), &no_ports, Source::default()).unwrap();
        assert_eq!(chains, [(vec!["a.example.com".to_string()], cluster("outbound|443||a.shop.svc.cluster.local"))]);
        assert!(untranslated_tcp_tls(&vs).is_empty());
        let x = crate::model::k8s::Labels::from([("app".to_string(), "x".to_string())]);
        let labelled = Source { namespace: None, labels: Some(&x) };
        let chains = tls_chains(&vs, 443, Some(ip("10.0.0.1")), &no_ports, labelled).unwrap();
        assert_eq!(chains.len(), 2, "app=x also gets the b.example.com chain: {chains:?}");

        // A block's subnets carry over to later blocks without subnets (istiod's CIDR variable).
        let subnets = tls_vs(serde_json::json!([
            {"match": [{"sniHosts": ["a.example.com"], "destinationSubnets": ["10.1.0.0/16"]},
                       {"sniHosts": ["b.example.com"]}],
             "route": [{"destination": {"host": "ab"}}]},
        ]));
        let chains =
            |cluster_ip: &str| tls_chains(&subnets, 443, Some(ip(cluster_ip)), &no_ports, Source::default()).unwrap();
        assert_eq!(chains("10.1.0.5").len(), 2);
        assert_eq!(chains("10.2.0.5"), [], "a match applied, so istiod adds no own-cluster chain");

        // Envoy matches the destination IP first: the longest prefix holding it excludes the rest.
        let nested = tls_vs(serde_json::json!([
            {"match": [{"sniHosts": ["a.example.com"]}], "route": [{"destination": {"host": "plain"}}]},
            {"match": [{"sniHosts": ["b.example.com"], "destinationSubnets": ["10.0.0.0/8"]}], "route": [{"destination": {"host": "wide"}}]},
        ]));
        let hosts = |cluster_ip: &str| -> Vec<String> {
            tls_chains(&nested, 443, Some(ip(cluster_ip)), &no_ports, Source::default())
                .unwrap()
                .into_iter()
                .map(|(sni, _)| sni[0].clone())
                .collect()
        };
        assert_eq!(hosts("10.0.0.1"), ["b.example.com"]);
        assert_eq!(hosts("172.16.0.1"), ["a.example.com"], "no prefix holds the IP: chains without one remain");
    }

    #[test]
    fn tls_routes_of_a_gateway_only_virtual_service_do_not_apply() {
        let mut vs = corpus_vs("egress-cnn-serviceentry-tls-passthrough.yaml", "edition-cnn-com");
        vs.spec.gateways = vec!["istio-egressgateway".into()];
        assert_eq!(tls_chains(&vs, 443, None, &no_ports, Source::default()), None);
        vs.spec.tls[0].r#match[0].gateways = vec!["mesh".into()];
        assert_eq!(
            tls_chains(&vs, 443, None, &no_ports, Source::default()),
            None,
            "the VirtualService itself is not for sidecars"
        );
        vs.spec.gateways.clear();
        assert!(tls_chains(&vs, 443, None, &no_ports, Source::default()).is_some());
    }

    /// Envoy itself accepts what these builders produce: a static bootstrap holding one listener
    /// of each kind, checked with `envoy --mode validate` (a binary `.pb` bootstrap, so no
    /// protobuf-to-JSON step is needed). Needs `ENVOY_BIN` (`ENVOY_BIN=$(scripts/ensure-envoy)`),
    /// hence ignored by default: `cargo test --lib translate::listener -- --ignored`.
    #[test]
    #[ignore = "needs ENVOY_BIN"]
    fn envoy_validates_a_bootstrap_with_every_kind_of_listener() {
        use envoy_types::pb::envoy::config::bootstrap::v3 as bootstrap;
        use envoy_types::pb::envoy::config::cluster::v3 as cluster;
        use envoy_types::pb::envoy::config::route::v3 as route;
        use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;

        let envoy = std::env::var("ENVOY_BIN").expect("ENVOY_BIN must name an Envoy binary");
        let lo = ip("127.0.0.1");
        let manager = hcm::HttpConnectionManager {
            stat_prefix: "outbound_0.0.0.0_8000".into(),
            route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::RouteConfig(
                route::RouteConfiguration { name: "8000".into(), ..Default::default() },
            )),
            http_filters: vec![hcm::HttpFilter {
                name: "envoy.filters.http.router".into(),
                config_type: Some(hcm::http_filter::ConfigType::TypedConfig(pack_any(Router::default()))),
                ..Default::default()
            }],
            ..Default::default()
        };
        let weighted =
            TcpTarget::Weighted { stat_prefix: "db.shop".into(), clusters: vec![("c1".into(), 80), ("c2".into(), 20)] };
        let sni = vec![
            (vec!["a.example.com".to_string(), "*.example.org".to_string()], cluster("c1")),
            (vec!["b.example.com".to_string()], weighted.clone()),
        ];
        let listeners = [
            tcp_listener("10.96.0.7_9000", lo, 9000, &cluster("c1")),
            tcp_listener("10.96.0.8_9001", lo, 9001, &weighted),
            tls_listener("10.96.0.9_443", lo, 443, &sni, &cluster("c2")),
            tls_listener("10.96.0.10_8443", lo, 8443, &[(vec!["*".to_string()], cluster("c1"))], &cluster("c2")),
            sniffing_listener("0.0.0.0_8000", lo, 8000, pack_any(manager), &cluster("c2")),
        ];
        let validate = |listeners: Vec<listener::Listener>| {
            let config = bootstrap::Bootstrap {
                static_resources: Some(bootstrap::bootstrap::StaticResources {
                    listeners,
                    clusters: ["c1", "c2"]
                        .into_iter()
                        .map(|name| cluster::Cluster {
                            name: name.into(),
                            cluster_discovery_type: Some(cluster::cluster::ClusterDiscoveryType::Type(
                                cluster::cluster::DiscoveryType::Static as i32,
                            )),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let path = std::env::temp_dir().join(format!("meshflow-outbound-{}.pb", std::process::id()));
            std::fs::write(&path, config.encode_to_vec()).unwrap();
            let out = std::process::Command::new(&envoy)
                .args(["--mode", "validate", "--disable-hot-restart", "-l", "info", "-c"])
                .arg(&path)
                .output()
                .unwrap();
            let _ = std::fs::remove_file(&path);
            let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            (out.status.success(), log)
        };
        let (ok, log) = validate(listeners.iter().map(|l| decode(l)).collect());
        assert!(ok, "envoy rejected the listeners:\n{log}");
        assert!(log.contains("loading 5 listener(s)"), "{log}");
        // The harness can fail: two chains with the same SNI match are rejected.
        let mut twice = decode(&listeners[2]);
        twice.filter_chains.push(twice.filter_chains[0].clone());
        let (ok, log) = validate(vec![twice]);
        assert!(!ok && log.contains("same matching rules"), "{log}");
    }
}
