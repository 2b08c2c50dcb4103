//! ServiceEntry → the rows the sidecar translation is made of.
//!
//! istiod turns a ServiceEntry into one `model.Service` per host (and per address), with the
//! entry's ports, and into endpoints (`pilot/pkg/serviceregistry/serviceentry/conversion.go`:
//! `convertServices`, `convertServiceEntryToInstances`, `convertWorkloadInstanceToServiceInstance`).
//! meshflow does the same with its own unit: every host × port becomes a [`ServicePortRow`]
//! whose [`EntryPort`] says what differs from a Kubernetes service port — the host as written,
//! the resolution (the cluster's discovery type, `cluster.go` `convertResolution`), the VIPs
//! (listener names and virtual host domains), and for DNS resolution the endpoints the cluster
//! carries inline. STATIC endpoints and the pods a `workloadSelector` selects become
//! [`EndpointRow`]s of the host's EDS clusters, with their labels (subsets select by them).
//!
//! A host defined by a Kubernetes Service and by ServiceEntries, or by several ServiceEntries,
//! is settled as istiod's `SidecarScope.appendSidecarServices` (`pilot/pkg/model/sidecar.go`)
//! settles it: see [`host_rows`].

use std::net::IpAddr;

use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::extensions::network::dns_resolver::cares::v3::CaresDnsResolverConfig;
use envoy_types::pb::google::protobuf::UInt32Value;
use envoy_types::util::pack_any;
use serde::{Deserialize, Serialize};

use super::endpoint::{EndpointRow, SelectorService};
use super::outbound::SubsetRef;
use super::{EndpointAddr, PortProtocol, ServicePortRow, outbound_cluster_name, seconds};
use crate::model::FieldError;
use crate::model::istio::{Resolution, ServiceEntry, ServicePort as EntryServicePort, WorkloadEntry};
use crate::model::k8s::{Labels, Protocol, ServicePort, TargetPort, selector_matches};

/// What a ServiceEntry adds to one port row of one of its hosts.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EntryPort {
    /// The host as written in `hosts` (not resolved: istiod keys ServiceEntry hosts as given).
    pub host: String,
    pub resolution: Resolution,
    /// From the port's `protocol` only (istiod's `protocol.Parse`; absent or unknown: sniffed).
    pub protocol: PortProtocol,
    /// `addresses`: VIPs, and CIDRs as written (a /32 or /128 as its address, as istiod does).
    pub addresses: Vec<String>,
    /// DNS and DNS_ROUND_ROBIN: the endpoints the cluster carries inline, with their labels.
    pub dns_endpoints: Vec<(EndpointAddr, Labels)>,
    /// `metadata.creationTimestamp`: the oldest entry of a host wins it.
    pub created: Option<String>,
    /// What else must be equal for two entries of one host in one namespace to merge their
    /// ports (istiod's `canMergeServices`: resolution, label selector, exportTo).
    pub merge_key: (Option<Labels>, Vec<String>),
}

impl EntryPort {
    /// istiod's `generateVirtualHostDomains` for a host that is not a Kubernetes service: the
    /// host and `host:port` (no short-name expansion), then each VIP and `VIP:port`.
    pub fn domains(&self, port: u16) -> Vec<String> {
        let mut out = vec![self.host.clone(), format!("{}:{port}", self.host)];
        for ip in self.addresses.iter().filter_map(|a| vip(a)) {
            let ip = match ip {
                IpAddr::V4(v4) => v4.to_string(),
                IpAddr::V6(v6) => format!("[{v6}]"),
            };
            out.push(ip.clone());
            out.push(format!("{ip}:{port}"));
        }
        out.dedup();
        out
    }

    /// The addresses the host's TCP listeners are named by (`<address>_<port>`): each VIP; a
    /// CIDR wider than one address gets `0.0.0.0_<port>` (istiod binds the wildcard and matches
    /// the prefix in the filter chain); no addresses: `0.0.0.0_<port>` (None).
    pub fn listener_addresses(&self) -> Vec<Option<IpAddr>> {
        if self.addresses.is_empty() {
            return vec![None];
        }
        let mut out: Vec<Option<IpAddr>> = self.addresses.iter().map(|a| vip(a)).collect();
        out.sort();
        out.dedup();
        out
    }

    fn is_dns(&self) -> bool {
        matches!(self.resolution, Resolution::Dns | Resolution::DnsRoundRobin)
    }
}

/// An address of `addresses` that is one IP (an IP, or a CIDR of one address).
fn vip(address: &str) -> Option<IpAddr> {
    if let Ok(ip) = address.parse::<IpAddr>() {
        return Some(ip);
    }
    let (ip, bits) = address.split_once('/')?;
    let ip: IpAddr = ip.parse().ok()?;
    let full = if ip.is_ipv4() { "32" } else { "128" };
    (bits == full).then_some(ip)
}

/// istiod's `protocol.Parse` of a ServiceEntry port's `protocol`, as meshflow's port classes.
pub fn entry_protocol(protocol: Option<&str>) -> PortProtocol {
    match protocol.unwrap_or_default().to_ascii_lowercase().as_str() {
        "http" | "http_proxy" => PortProtocol::Http,
        "http2" => PortProtocol::Http2,
        "grpc" | "grpc-web" => PortProtocol::Grpc,
        "tcp" | "tls" | "https" | "mongo" | "mysql" | "redis" => PortProtocol::Tcp,
        "udp" => PortProtocol::Unsupported,
        // Absent or unknown: istiod's UNSUPPORTED, whose listeners sniff the protocol.
        _ => PortProtocol::Unknown,
    }
}

/// Resolutions meshflow translates (DYNAMIC_DNS needs dynamic forward proxy clusters).
fn translated(se: &ServiceEntry) -> bool {
    se.spec.effective_resolution() != Resolution::DynamicDns
}

/// The entry's port as a Kubernetes service port: its number, name, target port (the number
/// when absent) and `appProtocol` = its protocol (so TLS ports are recognised by the listener
/// builders). None for ports meshflow does not proxy (UDP) or that do not fit 16 bits.
fn k8s_port(p: &EntryServicePort) -> Option<ServicePort> {
    if !entry_protocol(p.protocol.as_deref()).is_proxied() {
        return None;
    }
    let number = u16::try_from(p.number).ok()?;
    let target = p.target_port.filter(|t| *t > 0).and_then(|t| u16::try_from(t).ok()).unwrap_or(number);
    Some(ServicePort {
        name: p.name.clone(),
        port: number,
        protocol: Protocol::Tcp,
        target_port: TargetPort::Number(target),
        app_protocol: p.protocol.as_ref().map(|s| s.to_ascii_lowercase()),
    })
}

/// The port an endpoint serves for an entry port: the endpoint's `ports[<port name>]`, else the
/// port's `targetPort`, else its number (`convertWorkloadInstanceToServiceInstance`).
fn endpoint_port(we: Option<&WorkloadEntry>, p: &ServicePort) -> u16 {
    let mapped = we.and_then(|we| we.ports.get(&p.name)).copied().filter(|n| *n > 0);
    match (mapped, &p.target_port) {
        (Some(n), _) => u16::try_from(n).unwrap_or(p.port),
        (None, TargetPort::Number(n)) => *n,
        (None, TargetPort::Name(_)) => p.port,
    }
}

fn endpoint_addr(ip: &str, port: u16, we: Option<&WorkloadEntry>) -> EndpointAddr {
    EndpointAddr {
        ip: ip.into(),
        port,
        weight: we.and_then(|we| we.weight).filter(|w| *w > 0).unwrap_or(1),
        locality: we.and_then(|we| we.locality.as_deref()).unwrap_or_default().into(),
    }
}

/// Every host × port of a ServiceEntry as a port row.
pub fn port_rows(se: &ServiceEntry) -> Vec<ServicePortRow> {
    if !translated(se) {
        return Vec::new();
    }
    let spec = &se.spec;
    let resolution = spec.effective_resolution();
    let merge_key =
        (spec.workload_selector.as_ref().map(|s| s.labels.clone().into_iter().collect()), spec.export_to.clone());
    let mut out = Vec::new();
    for host in &spec.hosts {
        for p in &spec.ports {
            let Some(port) = k8s_port(p) else { continue };
            let dns_endpoints = if matches!(resolution, Resolution::Dns | Resolution::DnsRoundRobin) {
                dns_endpoints(se, host, &port)
            } else {
                Vec::new()
            };
            let entry = EntryPort {
                host: host.clone(),
                resolution,
                protocol: entry_protocol(p.protocol.as_deref()),
                addresses: spec.addresses.clone(),
                dns_endpoints,
                created: se.creation_timestamp.clone(),
                merge_key: merge_key.clone(),
            };
            out.push(ServicePortRow {
                namespace: se.namespace.clone(),
                service: se.name.clone(),
                port,
                cluster_ip: None,
                headless: false,
                entry: Some(Box::new(entry)),
                export_to: spec.export_to.clone(),
            });
        }
    }
    out
}

/// The endpoints of a DNS entry's cluster: its `endpoints` (addresses resolved by Envoy), or,
/// without endpoints and without `workloadSelector`, the host itself.
fn dns_endpoints(se: &ServiceEntry, host: &str, port: &ServicePort) -> Vec<(EndpointAddr, Labels)> {
    let spec = &se.spec;
    if spec.endpoints.is_empty() && spec.workload_selector.is_none() {
        return vec![(endpoint_addr(host, endpoint_port(None, port), None), Labels::new())];
    }
    spec.endpoints
        .iter()
        .filter_map(|we| {
            let address = we.address.as_deref().filter(|a| !a.starts_with("unix://"))?;
            let labels = we.labels.clone().into_iter().collect();
            Some((endpoint_addr(address, endpoint_port(Some(we), port), Some(we)), labels))
        })
        .collect()
}

/// The EDS endpoints of a STATIC entry: each of its `endpoints` for each host × port, keyed by
/// (cluster, the entry's namespace). They count for a cluster whose host an entry of that
/// namespace won ([`host_rows`]): istiod keys endpoints by host and namespace.
pub fn static_endpoints(se: &ServiceEntry) -> Vec<((String, String), EndpointRow)> {
    if se.spec.effective_resolution() != Resolution::Static {
        return Vec::new();
    }
    let mut out = Vec::new();
    for row in port_rows(se) {
        let cluster = row.cluster_name();
        for we in &se.spec.endpoints {
            let Some(ip) = we.address.as_deref().filter(|a| a.parse::<IpAddr>().is_ok()) else { continue };
            let addr = endpoint_addr(ip, endpoint_port(Some(we), &row.port), Some(we));
            let labels = we.labels.clone().into_iter().collect();
            out.push(((cluster.clone(), se.namespace.clone()), EndpointRow { addr, pod: None, labels }));
        }
    }
    out
}

/// The pod selector of a STATIC entry with a `workloadSelector`: pods of the entry's namespace
/// whose labels match are endpoints of each host × port (target port: `targetPort`, else the
/// port number). Joined with pods through the same label index as selector Services.
pub fn selector(se: &ServiceEntry) -> Option<SelectorService> {
    let labels = &se.spec.workload_selector.as_ref()?.labels;
    if se.spec.effective_resolution() != Resolution::Static || labels.is_empty() {
        return None;
    }
    Some(SelectorService {
        name: se.name.clone(),
        selector: labels.clone().into_iter().collect(),
        ports: se.spec.ports.iter().filter_map(k8s_port).collect(),
        publish_not_ready: false,
        hosts: se.spec.hosts.clone(),
    })
}

/// Valid ServiceEntry fields meshflow does not translate, one per object and field.
pub fn untranslated(se: &ServiceEntry) -> Vec<FieldError> {
    let spec = &se.spec;
    let mut out = Vec::new();
    let mut report = |field: String, reason: &str| out.push(FieldError { field, reason: reason.to_string() });
    let resolution = spec.effective_resolution();
    if resolution == Resolution::DynamicDns {
        report(
            "spec.resolution".into(),
            "DYNAMIC_DNS (dynamic forward proxy clusters) is not translated yet: the entry is not served",
        );
    }
    if !spec.subject_alt_names.is_empty() {
        report("spec.subjectAltNames".into(), "needs the mesh CA (ISTIO_MUTUAL), which meshflow does not have yet");
    }
    if spec.workload_selector.is_some() && resolution != Resolution::Static && resolution != Resolution::None {
        report(
            "spec.workloadSelector".into(),
            "selected workloads as endpoints of a DNS cluster are not translated yet: only STATIC entries use them",
        );
    }
    if spec.workload_selector.as_ref().is_some_and(|s| s.labels.is_empty()) {
        report(
            "spec.workloadSelector.labels".into(),
            "an empty selector (every pod of the namespace) is not translated yet",
        );
    }
    for (i, we) in spec.endpoints.iter().enumerate() {
        if we.network.is_some() {
            report(format!("spec.endpoints[{i}].network"), "multi-network gateways are not translated yet");
        }
        if we.service_account.is_some() {
            report(
                format!("spec.endpoints[{i}].serviceAccount"),
                "needs the mesh CA (ISTIO_MUTUAL), which meshflow does not have yet",
            );
        }
        if we.address.as_deref().is_some_and(|a| a.starts_with("unix://")) {
            report(format!("spec.endpoints[{i}].address"), "unix domain socket endpoints are not translated yet");
        }
    }
    out
}

/// The rows that make a host, among every row (Service and ServiceEntry ports) whose host it
/// is, as istiod's `appendSidecarServices` settles a hostname defined more than once:
/// - a Kubernetes Service wins over any ServiceEntry ("domain squatting" protection);
/// - otherwise the oldest entry (creation time, then namespace, then name) wins, and a later
///   entry of the same namespace with the same resolution, selector and exportTo
///   (`canMergeServices`) adds the ports whose numbers the host does not have yet; any other
///   entry of the host is ignored.
pub fn host_rows<'a>(rows: &[&'a ServicePortRow]) -> Vec<&'a ServicePortRow> {
    if rows.iter().any(|r| r.entry.is_none()) {
        let mut out: Vec<&ServicePortRow> = rows.iter().copied().filter(|r| r.entry.is_none()).collect();
        out.sort();
        out.dedup();
        return out;
    }
    let order = |r: &ServicePortRow| {
        let e = r.entry.as_deref();
        (e.and_then(|e| e.created.clone()), r.namespace.clone(), r.service.clone())
    };
    let mut sorted: Vec<&ServicePortRow> = rows.to_vec();
    sorted.sort_by_key(|r| (order(r), r.port.port));
    sorted.dedup();
    let Some(first) = sorted.first().copied() else { return Vec::new() };
    let owner = order(first);
    let compatible = |r: &ServicePortRow| {
        let (a, b) = (first.entry.as_deref(), r.entry.as_deref());
        r.namespace == first.namespace
            && a.map(|e| (e.resolution, &e.merge_key)) == b.map(|e| (e.resolution, &e.merge_key))
    };
    let mut out: Vec<&ServicePortRow> = Vec::new();
    for r in sorted {
        let own = order(r) == owner;
        if own || (compatible(r) && !out.iter().any(|o| o.port.port == r.port.port)) {
            out.push(r);
        }
    }
    out
}

/// The endpoints a DNS cluster (of a ServiceEntry row, optionally one subset) carries inline,
/// or None for clusters that take theirs from EDS or from the connection (ORIGINAL_DST).
/// istiod leaves out a DNS cluster whose list is empty (`buildCluster` returns nil).
pub fn inline_endpoints(row: &ServicePortRow, subset: Option<&SubsetRef>) -> Option<Vec<EndpointAddr>> {
    let mut out: Vec<EndpointAddr> = labelled_inline_endpoints(row, subset)?.into_iter().map(|(a, _)| a).collect();
    out.dedup();
    Some(out)
}

/// [`inline_endpoints`] with their labels (`failoverPriority` compares them), sorted, each
/// (address, labels) once.
pub fn labelled_inline_endpoints(
    row: &ServicePortRow,
    subset: Option<&SubsetRef>,
) -> Option<Vec<(EndpointAddr, Labels)>> {
    let entry = row.entry.as_deref().filter(|e| e.is_dns())?;
    let mut out: Vec<(EndpointAddr, Labels)> = entry
        .dns_endpoints
        .iter()
        .filter(|(_, labels)| subset.is_none_or(|s| selector_matches(&s.labels, labels)))
        .cloned()
        .collect();
    out.sort();
    out.dedup();
    Some(out)
}

/// Whether a row's clusters take their endpoints from EDS (Services, STATIC entries).
pub fn is_eds(row: &ServicePortRow) -> bool {
    row.entry.as_deref().is_none_or(|e| e.resolution == Resolution::Static)
}

/// The discovery type istiod gives the cluster of an entry port (`convertResolution`, sidecar):
/// STATIC → EDS (as built), DNS → STRICT_DNS, DNS_ROUND_ROBIN → LOGICAL_DNS, each with the
/// endpoints inline and istiod's DNS settings (`buildCluster`: V4_ONLY lookups for an IPv4
/// proxy, the mesh default refresh rate of 60 s, TTLs respected, c-ares with at most 100 UDP
/// queries per connection, 100 ms jitter), NONE → ORIGINAL_DST (CLUSTER_PROVIDED load
/// balancing, set after the policy: see `cluster::cluster_with`; a `targetPort` overrides the
/// upstream port). Applied before the traffic policy, as istiod does.
pub(super) fn apply_resolution(c: &mut cluster::Cluster, row: &ServicePortRow, inline: Option<&[EndpointAddr]>) {
    use cluster::cluster::{ClusterDiscoveryType, DiscoveryType};
    let Some(entry) = row.entry.as_deref() else { return };
    let ty = match entry.resolution {
        Resolution::Static | Resolution::DynamicDns => return,
        Resolution::Dns => DiscoveryType::StrictDns,
        Resolution::DnsRoundRobin => DiscoveryType::LogicalDns,
        Resolution::None => DiscoveryType::OriginalDst,
    };
    c.cluster_discovery_type = Some(ClusterDiscoveryType::Type(ty as i32));
    c.eds_cluster_config = None;
    if ty == DiscoveryType::OriginalDst {
        if let TargetPort::Number(target) = row.port.target_port
            && target != row.port.port
        {
            c.lb_config =
                Some(cluster::cluster::LbConfig::OriginalDstLbConfig(cluster::cluster::OriginalDstLbConfig {
                    upstream_port_override: Some(UInt32Value { value: u32::from(target) }),
                    ..Default::default()
                }));
        }
        return;
    }
    #[allow(deprecated)]
    {
        c.dns_lookup_family = cluster::cluster::DnsLookupFamily::V4Only as i32;
        c.dns_refresh_rate = Some(seconds(60));
        c.respect_dns_ttl = true;
        c.dns_jitter = Some(envoy_types::pb::google::protobuf::Duration { seconds: 0, nanos: 100_000_000 });
    }
    c.typed_dns_resolver_config = Some(core::TypedExtensionConfig {
        name: "envoy.network.dns_resolver.cares".to_string(),
        typed_config: Some(pack_any(CaresDnsResolverConfig {
            udp_max_queries: Some(UInt32Value { value: 100 }),
            ..Default::default()
        })),
    });
    let name = outbound_cluster_name(row.port.port, "", &row.fqdn());
    let endpoints: Vec<&EndpointAddr> = inline.unwrap_or_default().iter().collect();
    let mut cla = super::load_assignment_message(&name, &endpoints);
    cla.cluster_name = c.name.clone();
    c.load_assignment = Some(cla);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::istio::DestinationRuleSpec;
    use crate::model::{Object, ParseOutcome, parse_document};
    use crate::translate::outbound::HostInfo;
    use crate::translate::outbound::{ClusterRow, clusters_for_host, tcp_listeners_for_host, virtual_hosts_for_host};
    use cluster::cluster::{ClusterDiscoveryType, DiscoveryType, DnsLookupFamily, LbPolicy};
    use envoy_types::pb::envoy::config::endpoint::v3 as endpoint;
    use envoy_types::pb::envoy::config::listener::v3 as listener;
    use prost::Message;

    fn se(name: &str, created: &str, spec: serde_json::Value) -> ServiceEntry {
        let mut value = serde_json::json!({
            "apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
            "metadata": {"name": name, "namespace": "default"}, "spec": spec,
        });
        if !created.is_empty() {
            value["metadata"]["creationTimestamp"] = created.into();
        }
        match parse_document(value, "default").pop() {
            Some(ParseOutcome::Object(Object::ServiceEntry(se))) => *se,
            other => panic!("invalid test ServiceEntry: {other:?}"),
        }
    }

    fn decode(row: &ClusterRow) -> cluster::Cluster {
        cluster::Cluster::decode(&row.encode()[..]).unwrap()
    }

    fn socket(e: &endpoint::LbEndpoint) -> (String, u32) {
        let Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(ep)) = &e.host_identifier else { panic!() };
        let Some(core::address::Address::SocketAddress(s)) = ep.address.as_ref().unwrap().address.as_ref() else {
            panic!()
        };
        let Some(core::socket_address::PortSpecifier::PortValue(p)) = s.port_specifier else { panic!() };
        (s.address.clone(), p)
    }

    fn ty(c: &cluster::Cluster) -> Option<ClusterDiscoveryType> {
        c.cluster_discovery_type.clone()
    }

    #[test]
    fn a_static_entry_gets_eds_clusters_and_its_endpoints_with_port_map_weight_labels_locality() {
        let e = se(
            "ext",
            "2024-01-01T00:00:00Z",
            serde_json::json!({
            "hosts": ["ext.example.com"], "location": "MESH_EXTERNAL", "resolution": "STATIC",
            "ports": [{"number": 80, "name": "http", "protocol": "HTTP", "targetPort": 8080},
                      {"number": 9000, "name": "tcp", "protocol": "TCP"}],
            "endpoints": [{"address": "127.0.0.2", "ports": {"tcp": 9100}, "labels": {"version": "v1"}, "weight": 3,
                           "locality": "us-east/zone-a"},
                          {"address": "127.0.0.3"}]}),
        );
        let rows = port_rows(&e);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].fqdn(), "ext.example.com");
        assert_eq!(rows[0].protocol(), PortProtocol::Http);
        assert_eq!(rows[1].protocol(), PortProtocol::Tcp);
        let refs: Vec<&ServicePortRow> = rows.iter().collect();
        let clusters = clusters_for_host(&refs, None);
        let c = decode(&clusters[0]);
        assert_eq!(c.name, "outbound|80||ext.example.com");
        assert_eq!(ty(&c), Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)));
        assert_eq!(c.eds_cluster_config.unwrap().service_name, "outbound|80||ext.example.com");
        assert!(clusters.iter().all(ClusterRow::is_eds));

        let eps = static_endpoints(&e);
        let got: Vec<(&str, &str, u16, u32, &str)> = eps
            .iter()
            .map(|((c, ns), ep)| (c.as_str(), ns.as_str(), ep.addr.port, ep.addr.weight, &*ep.addr.locality))
            .collect();
        assert_eq!(
            got,
            [
                ("outbound|80||ext.example.com", "default", 8080, 3, "us-east/zone-a"),
                ("outbound|80||ext.example.com", "default", 8080, 1, ""),
                ("outbound|9000||ext.example.com", "default", 9100, 3, "us-east/zone-a"),
                ("outbound|9000||ext.example.com", "default", 9000, 1, ""),
            ],
            "ports map, else targetPort, else the number; weight 1 when unset"
        );
        assert_eq!(eps[0].1.labels.get("version").map(String::as_str), Some("v1"));

        // The load assignment groups by locality; weights are the endpoints' and their sum.
        let addrs: Vec<&EndpointAddr> = eps[..2].iter().map(|(_, ep)| &ep.addr).collect();
        let cla = super::super::load_assignment_message("c", &addrs);
        assert_eq!(cla.endpoints.len(), 2);
        assert_eq!(cla.endpoints[0].locality, Some(Default::default()), "no locality: an empty one, as istiod's");
        assert_eq!(cla.endpoints[0].load_balancing_weight, Some(UInt32Value { value: 1 }));
        let zoned = &cla.endpoints[1];
        let l = zoned.locality.as_ref().unwrap();
        assert_eq!((l.region.as_str(), l.zone.as_str(), l.sub_zone.as_str()), ("us-east", "zone-a", ""));
        assert_eq!(zoned.lb_endpoints[0].load_balancing_weight, Some(UInt32Value { value: 3 }));
        assert_eq!(zoned.load_balancing_weight, Some(UInt32Value { value: 3 }));
        assert_eq!(socket(&zoned.lb_endpoints[0]), ("127.0.0.2".into(), 8080));
    }

    #[test]
    fn dns_entries_get_strict_or_logical_dns_clusters_with_inline_endpoints() {
        let e = se(
            "local",
            "",
            serde_json::json!({
            "hosts": ["localhost"], "resolution": "DNS",
            "ports": [{"number": 18080, "name": "http", "protocol": "HTTP", "targetPort": 18081}]}),
        );
        let rows = port_rows(&e);
        let refs: Vec<&ServicePortRow> = rows.iter().collect();
        let clusters = clusters_for_host(&refs, None);
        assert!(!clusters[0].is_eds());
        let c = decode(&clusters[0]);
        assert_eq!(c.name, "outbound|18080||localhost");
        assert_eq!(ty(&c), Some(ClusterDiscoveryType::Type(DiscoveryType::StrictDns as i32)));
        assert_eq!(c.eds_cluster_config, None);
        assert_eq!(c.lb_policy, LbPolicy::LeastRequest as i32);
        #[allow(deprecated)]
        {
            assert_eq!(c.dns_lookup_family, DnsLookupFamily::V4Only as i32);
            assert_eq!(c.dns_refresh_rate, Some(seconds(60)));
            assert!(c.respect_dns_ttl);
        }
        assert_eq!(c.typed_dns_resolver_config.as_ref().unwrap().name, "envoy.network.dns_resolver.cares");
        let cla = c.load_assignment.unwrap();
        assert_eq!(cla.cluster_name, "outbound|18080||localhost");
        assert_eq!(socket(&cla.endpoints[0].lb_endpoints[0]), ("localhost".into(), 18081), "the host itself");

        let rr = se(
            "rr",
            "",
            serde_json::json!({
            "hosts": ["api.example.com"], "resolution": "DNS",
            "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}],
            "endpoints": [{"address": "a.example.com", "labels": {"v": "1"}}, {"address": "b.example.com"}]}),
        );
        let rows = port_rows(&rr);
        let refs: Vec<&ServicePortRow> = rows.iter().collect();
        let rule: DestinationRuleSpec = serde_json::from_value(serde_json::json!({
            "host": "api.example.com", "subsets": [{"name": "one", "labels": {"v": "1"}},
                                                   {"name": "none", "labels": {"v": "9"}}]}))
        .unwrap();
        let clusters = clusters_for_host(&refs, Some(&rule));
        let names: Vec<String> = clusters.iter().map(ClusterRow::name).collect();
        assert_eq!(
            names,
            ["outbound|443||api.example.com", "outbound|443|one|api.example.com"],
            "a DNS subset cluster without endpoints is left out, as istiod's buildCluster does"
        );
        let base = decode(&clusters[0]);
        assert_eq!(ty(&base), Some(ClusterDiscoveryType::Type(DiscoveryType::StrictDns as i32)));
        let hosts: Vec<(String, u32)> =
            base.load_assignment.unwrap().endpoints[0].lb_endpoints.iter().map(socket).collect();
        assert_eq!(hosts, [("a.example.com".into(), 443), ("b.example.com".into(), 443)]);
        let one = decode(&clusters[1]).load_assignment.unwrap();
        assert_eq!(one.cluster_name, "outbound|443|one|api.example.com");
        assert_eq!(
            one.endpoints[0].lb_endpoints.iter().map(socket).collect::<Vec<_>>(),
            [("a.example.com".into(), 443)]
        );

        // DNS_ROUND_ROBIN (one endpoint, as validation requires): LOGICAL_DNS, endpoint inline.
        let rr = se(
            "rr",
            "",
            serde_json::json!({
            "hosts": ["rr.example.com"], "resolution": "DNS_ROUND_ROBIN",
            "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}], "endpoints": [{"address": "c.example.com"}]}),
        );
        let rows = port_rows(&rr);
        let c = decode(&clusters_for_host(&rows.iter().collect::<Vec<_>>(), None)[0]);
        assert_eq!(ty(&c), Some(ClusterDiscoveryType::Type(DiscoveryType::LogicalDns as i32)));
        assert_eq!(socket(&c.load_assignment.unwrap().endpoints[0].lb_endpoints[0]), ("c.example.com".into(), 443));
    }

    /// istiod's `ApplyToCluster` places a DNS cluster's own assignment relative to the proxy:
    /// with outlier detection, the endpoints of the proxy's zone first (the shared cluster
    /// stays flat); with `failoverPriority`, by the labels the endpoints share with the proxy.
    #[test]
    fn a_dns_clusters_inline_endpoints_are_placed_relative_to_the_proxy() {
        use crate::model::k8s::Labels;
        use crate::translate::locality::ProxyLabels;
        let e = se(
            "zoned",
            "",
            serde_json::json!({
            "hosts": ["api.example.com"], "resolution": "DNS",
            "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}],
            "endpoints": [{"address": "a.example.com", "locality": "r1/z1", "labels": {"v": "1"}},
                          {"address": "b.example.com", "locality": "r1/z2", "labels": {"v": "2"}}]}),
        );
        let rows = port_rows(&e);
        let refs: Vec<&ServicePortRow> = rows.iter().collect();
        let priorities = |c: cluster::Cluster| -> Vec<(String, u32)> {
            let cla = c.load_assignment.unwrap();
            cla.endpoints.iter().map(|l| (socket(&l.lb_endpoints[0]).0, l.priority)).collect()
        };
        assert_eq!(clusters_for_host(&refs, None)[0].inline_locality_lb(), None, "no rule: the same everywhere");
        let rule = |policy: serde_json::Value| -> DestinationRuleSpec {
            serde_json::from_value(serde_json::json!({"host": "api.example.com", "trafficPolicy": policy})).unwrap()
        };
        let od = serde_json::json!({"consecutive5xxErrors": 1});
        let with_od = rule(serde_json::json!({"outlierDetection": od}));
        let c = &clusters_for_host(&refs, Some(&with_od))[0];
        let lb = c.inline_locality_lb().expect("outlier detection: located");
        let none = Labels::new();
        let at = |locality: &str| {
            let body = c.encode_located(ProxyLabels { locality, labels: &none }, &lb);
            priorities(cluster::Cluster::decode(&body[..]).unwrap())
        };
        assert_eq!(at("r1/z2"), [("a.example.com".into(), 1), ("b.example.com".into(), 0)]);
        assert_eq!(at("r1/z1"), [("a.example.com".into(), 0), ("b.example.com".into(), 1)]);
        assert_eq!(priorities(decode(c)), [("a.example.com".into(), 0), ("b.example.com".into(), 0)]);
        // Everything else of the cluster is as shared.
        let mut located =
            cluster::Cluster::decode(&c.encode_located(ProxyLabels { locality: "r1/z2", labels: &none }, &lb)[..])
                .unwrap();
        let mut shared = decode(c);
        located.load_assignment = None;
        shared.load_assignment = None;
        assert_eq!(located, shared);

        let by_labels = rule(serde_json::json!({"outlierDetection": od,
            "loadBalancer": {"localityLbSetting": {"failoverPriority": ["v"]}}}));
        let c = &clusters_for_host(&refs, Some(&by_labels))[0];
        let lb = c.inline_locality_lb().unwrap();
        assert!(lb.by_labels());
        let v2 = Labels::from([("v".to_string(), "2".to_string())]);
        let body = c.encode_located(ProxyLabels { locality: "r1/z1", labels: &v2 }, &lb);
        assert_eq!(
            priorities(cluster::Cluster::decode(&body[..]).unwrap()),
            [("a.example.com".into(), 1), ("b.example.com".into(), 0)],
            "v=2 first, whatever the zone"
        );
    }

    #[test]
    fn a_none_entry_gets_an_original_dst_cluster_with_cluster_provided_balancing() {
        let e = se(
            "any",
            "",
            serde_json::json!({
            "hosts": ["*.example.com"], "ports": [{"number": 80, "name": "http", "protocol": "HTTP", "targetPort": 8080}]}),
        );
        let rows = port_rows(&e);
        let refs: Vec<&ServicePortRow> = rows.iter().collect();
        let clusters = clusters_for_host(&refs, None);
        let c = decode(&clusters[0]);
        assert_eq!(c.name, "outbound|80||*.example.com");
        assert_eq!(ty(&c), Some(ClusterDiscoveryType::Type(DiscoveryType::OriginalDst as i32)));
        assert_eq!(c.lb_policy, LbPolicy::ClusterProvided as i32);
        assert_eq!(c.eds_cluster_config, None);
        assert_eq!(c.load_assignment, None);
        let Some(cluster::cluster::LbConfig::OriginalDstLbConfig(o)) = c.lb_config else { panic!("{:?}", c.lb_config) };
        assert_eq!(o.upstream_port_override, Some(UInt32Value { value: 8080 }), "istiod's PassthroughTargetPorts");
        assert!(!clusters[0].is_eds());
    }

    #[test]
    fn http_ports_get_virtual_hosts_with_the_host_and_vips_tcp_ports_a_listener_per_vip() {
        let e = se(
            "ext",
            "",
            serde_json::json!({
            "hosts": ["ext.example.com"], "addresses": ["240.0.0.1", "240.0.1.0/24", "240.0.0.2/32"],
            "resolution": "STATIC", "endpoints": [{"address": "127.0.0.2"}],
            "ports": [{"number": 80, "name": "web", "protocol": "HTTP"}, {"number": 9000, "name": "db", "protocol": "TCP"}]}),
        );
        let rows = port_rows(&e);
        let refs: Vec<&ServicePortRow> = rows.iter().collect();
        let info = HostInfo::new(&refs, None);
        let vhosts = virtual_hosts_for_host(&refs, &info, None, Default::default());
        assert_eq!(vhosts.len(), 1);
        assert_eq!(vhosts[0].0, "80");
        assert_eq!(vhosts[0].1.name, "ext.example.com:80");
        assert_eq!(
            vhosts[0].1.domains,
            ["ext.example.com", "ext.example.com:80", "240.0.0.1", "240.0.0.1:80", "240.0.0.2", "240.0.0.2:80"],
            "no short names for a non-Kubernetes host; a CIDR wider than one address is not a domain"
        );
        let listeners = tcp_listeners_for_host(&refs, None, Default::default());
        let names: Vec<&str> = listeners.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["0.0.0.0_9000", "240.0.0.1_9000", "240.0.0.2_9000"]);
        assert!(listeners.iter().all(|l| l.kind == crate::model::Kind::ServiceEntry));
        let l = listener::Listener::decode(&listeners[1].body[..]).unwrap();
        assert_eq!(l.name, "240.0.0.1_9000");
        assert_eq!(l.filter_chains.len(), 1);
        assert_eq!(l.filter_chains[0].filters[0].name, "envoy.filters.network.tcp_proxy");
    }

    #[test]
    fn a_service_wins_its_host_then_the_oldest_entry_and_compatible_entries_merge_ports() {
        let old = se(
            "old",
            "2024-01-01T00:00:00Z",
            serde_json::json!({
            "hosts": ["a.example.com"], "resolution": "STATIC", "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}]}),
        );
        let merging = se(
            "merging",
            "2024-02-01T00:00:00Z",
            serde_json::json!({
            "hosts": ["a.example.com"], "resolution": "STATIC",
            "ports": [{"number": 80, "name": "http2", "protocol": "HTTP2"}, {"number": 81, "name": "b", "protocol": "HTTP"}]}),
        );
        let other = se(
            "other",
            "2024-03-01T00:00:00Z",
            serde_json::json!({
            "hosts": ["a.example.com"], "resolution": "DNS", "ports": [{"number": 82, "name": "c", "protocol": "HTTP"}]}),
        );
        let all: Vec<ServicePortRow> = [&other, &merging, &old].into_iter().flat_map(port_rows).collect();
        let refs: Vec<&ServicePortRow> = all.iter().collect();
        let won: Vec<(&str, u16)> = host_rows(&refs).iter().map(|r| (r.service.as_str(), r.port.port)).collect();
        assert_eq!(won, [("old", 80), ("merging", 81)], "port 80 stays the oldest's; DNS cannot merge with STATIC");

        let mut service = crate::translate::tests::row("default", "a", "http", 80);
        service.namespace = "default".into();
        let mut squatted = port_rows(&se(
            "squat",
            "2000-01-01T00:00:00Z",
            serde_json::json!({
            "hosts": ["a.default.svc.cluster.local"], "resolution": "STATIC",
            "ports": [{"number": 90, "name": "http", "protocol": "HTTP"}]}),
        ));
        squatted.push(service);
        let refs: Vec<&ServicePortRow> = squatted.iter().collect();
        let won = host_rows(&refs);
        assert_eq!(won.len(), 1);
        assert!(won[0].entry.is_none(), "the Kubernetes Service keeps its hostname");
    }

    #[test]
    fn fields_needing_views_or_the_mesh_ca_are_reported() {
        let e = se(
            "x",
            "",
            serde_json::json!({
            "hosts": ["x.example.com"], "resolution": "STATIC", "exportTo": ["."], "subjectAltNames": ["spiffe://x"],
            "ports": [{"number": 80, "name": "http"}],
            "endpoints": [{"address": "10.0.0.1", "network": "n1", "serviceAccount": "sa"}]}),
        );
        let fields: Vec<String> = untranslated(&e).into_iter().map(|f| f.field).collect();
        assert_eq!(fields, ["spec.subjectAltNames", "spec.endpoints[0].network", "spec.endpoints[0].serviceAccount"]);
        let everyone = se(
            "y",
            "",
            serde_json::json!({"hosts": ["y.example.com"], "exportTo": ["*"],
            "ports": [{"number": 80, "name": "http"}]}),
        );
        assert!(untranslated(&everyone).is_empty(), "exportTo * is the same for every proxy");
        assert_eq!(port_rows(&everyone)[0].protocol(), PortProtocol::Unknown, "no protocol: sniffed, as UNSUPPORTED");
        let dynamic = se(
            "z",
            "",
            serde_json::json!({"hosts": ["*.z.example.com"], "resolution": "DYNAMIC_DNS",
            "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}]}),
        );
        assert!(port_rows(&dynamic).is_empty());
        assert_eq!(untranslated(&dynamic)[0].field, "spec.resolution");
    }

    #[test]
    fn a_workload_selector_selects_pods_as_endpoints_of_every_host() {
        let e = se(
            "w",
            "",
            serde_json::json!({
            "hosts": ["w1.example.com", "w2.example.com"], "resolution": "STATIC",
            "workloadSelector": {"labels": {"app": "w"}},
            "ports": [{"number": 80, "name": "http", "protocol": "HTTP", "targetPort": 8080}]}),
        );
        let s = selector(&e).unwrap();
        assert_eq!(s.hosts, ["w1.example.com", "w2.example.com"]);
        assert_eq!(s.ports[0].target_port, TargetPort::Number(8080));
        assert!(
            selector(&se(
                "n",
                "",
                serde_json::json!({"hosts": ["n.example.com"],
            "ports": [{"number": 80, "name": "http"}]})
            ))
            .is_none()
        );
    }
}
