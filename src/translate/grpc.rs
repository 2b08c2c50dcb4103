//! What proxyless gRPC clients get, as istiod's grpc generator builds it
//! (`pilot/pkg/networking/grpcgen/{lds,rds,cds}.go`):
//!
//! - per service port an **API listener** named `<fqdn>:<port>` (gRPC's target
//!   `xds:///<fqdn>:<port>` asks for exactly that name), addressed at the service's VIP, whose
//!   HttpConnectionManager takes its routes by RDS from the route config named as the port's
//!   cluster, `outbound|<port>||<fqdn>`, and runs the fault filter, then the router filter with
//!   its typed config (gRPC rejects a chain whose last filter is not a terminal router);
//! - that **route config**, holding the virtual host a sidecar has for the host and port
//!   (VirtualService routes, weights, header matches as the sidecar gets them);
//! - **EDS clusters** named as the sidecar's, reduced to what grpcgen sets: EDS over ADS,
//!   `alt_stat_name` `<name>;`, ROUND_ROBIN unless the DestinationRule asks for a consistent
//!   hash (RING_HASH), and `http2MaxRequests` as the circuit breaker's `max_requests`. A
//!   DestinationRule's `simple: LEAST_REQUEST` stays ROUND_ROBIN here: istiod's grpcgen passes
//!   it on, but gRPC's C-core xDS client (Python's `grpcio`) rejects a Cluster with any
//!   `lb_policy` but ROUND_ROBIN or RING_HASH, and one rejected Cluster fails the whole CDS
//!   response for that client.
//!
//! Load assignments are the shared ones: every LocalityLbEndpoints carries a locality (empty
//! when unknown) and a non-zero weight, which gRPC requires.

use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::config::listener::v3 as envoy_listener;
use envoy_types::pb::envoy::config::route::v3 as envoy_route;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::google::protobuf::UInt32Value;
use envoy_types::util::pack_any;
use prost::Message;

use super::outbound::ClusterRow;
use super::{ServicePortRow, VirtualHostPart, ads_config_source, outbound_cluster_name, socket_address};

/// The API listener's name: what gRPC asks for when dialling `xds:///<fqdn>:<port>`.
pub fn listener_name(fqdn: &str, port: u16) -> String {
    if fqdn.contains(':') { format!("[{fqdn}]:{port}") } else { format!("{fqdn}:{port}") }
}

/// The route config an API listener names: istiod's `clusterKey(host, port)`, the name of the
/// port's cluster.
pub fn route_config_name(fqdn: &str, port: u16) -> String {
    outbound_cluster_name(port, "", fqdn)
}

/// The API listener of a service port (grpcgen's `buildOutboundListeners`).
pub fn api_listener(row: &ServicePortRow) -> Vec<u8> {
    let fqdn = row.fqdn();
    let port = row.port.port;
    let manager = hcm::HttpConnectionManager {
        route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::Rds(hcm::Rds {
            config_source: Some(ads_config_source()),
            route_config_name: route_config_name(&fqdn, port),
        })),
        http_filters: vec![
            hcm::HttpFilter {
                name: super::route::FAULT_FILTER.to_string(),
                config_type: Some(hcm::http_filter::ConfigType::TypedConfig(pack_any(HttpFault::default()))),
                ..Default::default()
            },
            hcm::HttpFilter {
                name: "envoy.filters.http.router".to_string(),
                config_type: Some(hcm::http_filter::ConfigType::TypedConfig(pack_any(Router::default()))),
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let address = row.cluster_ip.map(|ip| ip.to_string()).unwrap_or_else(|| "0.0.0.0".to_string());
    envoy_listener::Listener {
        name: listener_name(&fqdn, port),
        address: Some(socket_address(&address, port)),
        api_listener: Some(envoy_listener::ApiListener { api_listener: Some(pack_any(manager)) }),
        ..Default::default()
    }
    .encode_to_vec()
}

/// The route config of one host and port: its name and the host's virtual host for the port,
/// assembled without re-encoding the virtual host.
pub fn route_configuration(name: &str, vhost: &VirtualHostPart) -> Vec<u8> {
    let mut out = envoy_route::RouteConfiguration { name: name.to_string(), ..Default::default() }.encode_to_vec();
    let mut body = vhost.body.clone();
    for d in &vhost.domains {
        prost::encoding::string::encode(2, d, &mut body);
    }
    prost::encoding::encode_key(2, prost::encoding::WireType::LengthDelimited, &mut out);
    prost::encoding::encode_varint(body.len() as u64, &mut out);
    out.extend_from_slice(&body);
    out
}

/// The cluster as grpcgen builds it (`edsCluster` + `applyTrafficPolicy`); None for clusters
/// that do not take their endpoints from EDS (DNS and passthrough ServiceEntry hosts), which
/// gRPC cannot use.
pub fn cluster(c: &ClusterRow) -> Option<Vec<u8>> {
    if !c.is_eds() {
        return None;
    }
    let name = c.name();
    let mut out = cluster::Cluster {
        name: name.clone(),
        alt_stat_name: format!("{name};"),
        cluster_discovery_type: Some(cluster::cluster::ClusterDiscoveryType::Type(
            cluster::cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster::cluster::EdsClusterConfig {
            eds_config: Some(ads_config_source()),
            service_name: name,
        }),
        lb_policy: cluster::cluster::LbPolicy::RoundRobin as i32,
        ..Default::default()
    };
    let policy = c.policy.as_deref();
    let lb = policy.and_then(|p| p.load_balancer.as_ref());
    if lb.is_some_and(|lb| lb.consistent_hash.is_some()) {
        // istiod's ApplyRingHashLoadBalancer, as the sidecar's cluster gets it.
        super::cluster::apply_load_balancer(&mut out, lb);
    }
    let max_requests = policy
        .and_then(|p| p.connection_pool.as_ref())
        .and_then(|cp| cp.http.as_ref())
        .and_then(|h| h.http2_max_requests)
        .filter(|n| *n > 0);
    if let Some(n) = max_requests {
        out.circuit_breakers = Some(cluster::CircuitBreakers {
            thresholds: vec![cluster::circuit_breakers::Thresholds {
                max_requests: Some(UInt32Value { value: n as u32 }),
                ..Default::default()
            }],
            ..Default::default()
        });
    }
    Some(out.encode_to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::tests::row;
    use envoy_types::pb::envoy::config::core::v3 as core;
    use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;

    fn hcm_of(l: &envoy_listener::Listener) -> hcm::HttpConnectionManager {
        let any = l.api_listener.as_ref().unwrap().api_listener.as_ref().unwrap();
        assert_eq!(
            any.type_url,
            "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
        );
        hcm::HttpConnectionManager::decode(&any.value[..]).unwrap()
    }

    #[test]
    fn api_listener_is_named_host_port_and_takes_its_routes_by_rds_from_the_cluster_name() {
        let mut r = row("default", "reviews", "grpc", 9080);
        r.cluster_ip = Some("10.96.0.9".parse().unwrap());
        let l = envoy_listener::Listener::decode(&api_listener(&r)[..]).unwrap();
        assert_eq!(l.name, "reviews.default.svc.cluster.local:9080");
        assert!(l.filter_chains.is_empty(), "an API listener has no filter chains");
        let Some(core::address::Address::SocketAddress(sa)) = l.address.unwrap().address else { panic!() };
        assert_eq!(sa.address, "10.96.0.9");
        assert_eq!(sa.port_specifier, Some(core::socket_address::PortSpecifier::PortValue(9080)));
        let listener = envoy_listener::Listener::decode(&api_listener(&r)[..]).unwrap();
        let m = hcm_of(&listener);
        let Some(hcm::http_connection_manager::RouteSpecifier::Rds(rds)) = m.route_specifier else { panic!() };
        assert_eq!(rds.route_config_name, "outbound|9080||reviews.default.svc.cluster.local");
        assert!(matches!(
            rds.config_source.unwrap().config_source_specifier,
            Some(core::config_source::ConfigSourceSpecifier::Ads(_))
        ));
        // gRPC requires the router last, with its typed config.
        let last = m.http_filters.last().unwrap();
        assert_eq!(last.name, "envoy.filters.http.router");
        let Some(hcm::http_filter::ConfigType::TypedConfig(any)) = &last.config_type else { panic!("{last:?}") };
        assert_eq!(any.type_url, "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router");
        assert_eq!(m.http_filters[0].name, "envoy.filters.http.fault");
    }

    #[test]
    fn route_config_holds_the_sidecar_virtual_host_of_the_host_and_port() {
        let r = row("default", "reviews", "grpc", 9080);
        let vhost = crate::translate::virtual_host(&r, vec![crate::translate::route::default_route(&r, vec![])]);
        let name = route_config_name(&r.fqdn(), 9080);
        let rc = envoy_route::RouteConfiguration::decode(&route_configuration(&name, &vhost)[..]).unwrap();
        assert_eq!(rc.name, "outbound|9080||reviews.default.svc.cluster.local");
        assert_eq!(rc.virtual_hosts.len(), 1);
        let vh = &rc.virtual_hosts[0];
        assert!(vh.domains.contains(&"reviews.default.svc.cluster.local:9080".to_string()), "{:?}", vh.domains);
        assert!(vh.domains.contains(&"reviews.default.svc.cluster.local".to_string()));
        let m = vh.routes[0].r#match.as_ref().unwrap();
        assert_eq!(m.path_specifier, Some(PathSpecifier::Prefix("/".into())));
    }

    #[test]
    fn cluster_is_eds_round_robin_unless_the_rule_says_otherwise() {
        use crate::model::istio::TrafficPolicy;
        let r = row("default", "reviews", "grpc", 9080);
        let plain = ClusterRow { row: r.clone(), subset: None, policy: None };
        let c = cluster::Cluster::decode(&cluster(&plain).unwrap()[..]).unwrap();
        assert_eq!(c.name, "outbound|9080||reviews.default.svc.cluster.local");
        assert_eq!(c.alt_stat_name, "outbound|9080||reviews.default.svc.cluster.local;");
        assert_eq!(c.lb_policy, cluster::cluster::LbPolicy::RoundRobin as i32);
        assert_eq!(
            c.cluster_discovery_type,
            Some(cluster::cluster::ClusterDiscoveryType::Type(cluster::cluster::DiscoveryType::Eds as i32))
        );
        let eds = c.eds_cluster_config.unwrap();
        assert_eq!(eds.service_name, c.name);
        assert!(c.circuit_breakers.is_none());
        let with = |yaml: &str| {
            let policy: TrafficPolicy = serde_yaml_ng::from_str(yaml).unwrap();
            let row = ClusterRow { row: r.clone(), subset: None, policy: Some(Box::new(policy)) };
            cluster::Cluster::decode(&cluster(&row).unwrap()[..]).unwrap()
        };
        let lr = with("loadBalancer: {simple: LEAST_REQUEST}");
        assert_eq!(lr.lb_policy, cluster::cluster::LbPolicy::RoundRobin as i32, "gRPC's C-core refuses LEAST_REQUEST");
        let rnd = with("loadBalancer: {simple: RANDOM}");
        assert_eq!(rnd.lb_policy, cluster::cluster::LbPolicy::RoundRobin as i32, "grpcgen ignores other policies");
        let hash = with("loadBalancer: {consistentHash: {httpHeaderName: x-user}}");
        assert_eq!(hash.lb_policy, cluster::cluster::LbPolicy::RingHash as i32);
        let cb = with("connectionPool: {http: {http2MaxRequests: 7}}");
        assert_eq!(cb.circuit_breakers.unwrap().thresholds[0].max_requests, Some(UInt32Value { value: 7 }));
    }
}
