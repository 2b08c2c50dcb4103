//! The suite's services as Envoy resources, shaped like meshflow's (`meshflow xds control` +
//! `meshflow serve`): per service an EDS Cluster over ADS and its ClusterLoadAssignment; one
//! HTTP listener `0.0.0.0_80` on RDS `80`, whose route configuration has one virtual host per
//! service routing `/` to its cluster.

use std::collections::BTreeMap;

use prost::Message;
use xds_types::envoy::config::cluster::v3::{circuit_breakers, cluster, CircuitBreakers, Cluster};
use xds_types::envoy::config::core::v3::{
    address, config_source, socket_address, Address, AggregatedConfigSource, ApiVersion, ConfigSource, HealthStatus,
    Locality, SocketAddress, TrafficDirection,
};
use xds_types::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use xds_types::envoy::config::listener::v3::{filter, Filter, FilterChain, Listener};
use xds_types::envoy::config::route::v3::{
    route, route_action, route_match, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
};
use xds_types::envoy::extensions::filters::http::router::v3::Router;
use xds_types::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager, http_filter, HttpConnectionManager, HttpFilter, Rds,
};
use xds_types::google::protobuf::{Any as PbAny, Duration, UInt32Value};

use crate::control::{cluster_ip, cluster_name, State, LISTENER_NAME, NAMESPACE, ROUTE_NAME};

pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub const TYPES: [&str; 4] = [CLUSTER, ENDPOINT, LISTENER, ROUTE];

/// Resources by type URL, then name, as encoded `Any`s.
pub type Resources = BTreeMap<String, BTreeMap<String, prost_types::Any>>;

fn any<M: Message>(type_url: &str, m: &M) -> prost_types::Any {
    prost_types::Any { type_url: type_url.to_string(), value: m.encode_to_vec() }
}

fn pb_any<M: Message>(type_url: &str, m: &M) -> PbAny {
    PbAny { type_url: type_url.to_string(), value: m.encode_to_vec() }
}

fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

fn socket(ip: &str, port: u16) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    }
}

fn cluster_of(name: &str, connect_timeout_ms: u64) -> Cluster {
    let c = cluster_name(name);
    let max = Some(UInt32Value { value: u32::MAX });
    Cluster {
        name: c.clone(),
        alt_stat_name: c.clone(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(cluster::EdsClusterConfig { eds_config: Some(ads()), service_name: c }),
        connect_timeout: Some(Duration {
            seconds: (connect_timeout_ms / 1000) as i64,
            nanos: ((connect_timeout_ms % 1000) * 1_000_000) as i32,
        }),
        lb_policy: cluster::LbPolicy::LeastRequest as i32,
        circuit_breakers: Some(CircuitBreakers {
            thresholds: vec![circuit_breakers::Thresholds {
                max_connections: max,
                max_pending_requests: max,
                max_requests: max,
                max_retries: max,
                track_remaining: true,
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn assignment_of(name: &str, ip: &str, port: u16) -> ClusterLoadAssignment {
    let one = Some(UInt32Value { value: 1 });
    ClusterLoadAssignment {
        cluster_name: cluster_name(name),
        endpoints: vec![LocalityLbEndpoints {
            locality: Some(Locality::default()),
            lb_endpoints: vec![LbEndpoint {
                host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                    address: Some(socket(ip, port)),
                    ..Default::default()
                })),
                health_status: HealthStatus::Healthy as i32,
                load_balancing_weight: one,
                ..Default::default()
            }],
            load_balancing_weight: one,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn listener() -> Listener {
    let hcm = HttpConnectionManager {
        stat_prefix: format!("outbound_{LISTENER_NAME}"),
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: ROUTE_NAME.to_string(),
        })),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(pb_any(
                "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
                &Router::default(),
            ))),
            ..Default::default()
        }],
        ..Default::default()
    };
    Listener {
        name: LISTENER_NAME.to_string(),
        address: Some(socket("0.0.0.0", 80)),
        traffic_direction: TrafficDirection::Outbound as i32,
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(filter::ConfigType::TypedConfig(pb_any(
                    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    &hcm,
                ))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn virtual_host(name: &str) -> VirtualHost {
    let fqdn = format!("{name}.{NAMESPACE}.svc.cluster.local");
    let ip = cluster_ip(name).to_string();
    let short = [name.to_string(), format!("{name}.{NAMESPACE}"), format!("{name}.{NAMESPACE}.svc"), fqdn.clone(), ip];
    VirtualHost {
        name: format!("{fqdn}:80"),
        domains: short.iter().flat_map(|d| [d.clone(), format!("{d}:80")]).collect(),
        routes: vec![Route {
            name: "default".into(),
            r#match: Some(RouteMatch {
                path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
                ..Default::default()
            }),
            action: Some(route::Action::Route(RouteAction {
                cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster_name(name))),
                ..Default::default()
            })),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The suite's resources for `state`, merged into `from` (the resources fetched from meshflow):
/// clusters and assignments are added; the listener `0.0.0.0_80` is kept when `from` has one
/// (meshflow's is of the same shape); the suite's virtual hosts join route config `80`, after
/// `from`'s own (a virtual host of the same name is replaced).
pub fn build(state: &State, from: &Resources) -> Result<Resources, String> {
    let mut out = from.clone();
    for t in TYPES {
        out.entry(t.to_string()).or_default();
    }
    for (name, s) in state {
        let c = cluster_name(name);
        out.get_mut(CLUSTER).unwrap().insert(c.clone(), any(CLUSTER, &cluster_of(name, s.connect_timeout_ms)));
        out.get_mut(ENDPOINT).unwrap().insert(c, any(ENDPOINT, &assignment_of(name, &s.ip.to_string(), s.port)));
    }
    let mut routes = match from.get(ROUTE).and_then(|r| r.get(ROUTE_NAME)) {
        Some(a) => RouteConfiguration::decode(&a.value[..])
            .map_err(|e| format!("route configuration {ROUTE_NAME} fetched from meshflow: {e}"))?,
        None => RouteConfiguration { name: ROUTE_NAME.to_string(), ..Default::default() },
    };
    if !state.is_empty() || from.get(ROUTE).is_some_and(|r| r.contains_key(ROUTE_NAME)) {
        for name in state.keys() {
            let vh = virtual_host(name);
            routes.virtual_hosts.retain(|v| v.name != vh.name);
            routes.virtual_hosts.push(vh);
        }
        out.get_mut(ROUTE).unwrap().insert(ROUTE_NAME.to_string(), any(ROUTE, &routes));
        out.get_mut(LISTENER).unwrap().entry(LISTENER_NAME.to_string()).or_insert_with(|| any(LISTENER, &listener()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::parse_state;

    #[test]
    fn suite_services_become_envoy_resources() {
        let state = parse_state("alpha 10.1.1.1 8080 10000\nbeta 10.1.1.2 9090 1001\n").unwrap();
        let r = build(&state, &Resources::new()).unwrap();
        let c = Cluster::decode(&r[CLUSTER]["outbound|80||beta.conformance.svc.cluster.local"].value[..]).unwrap();
        assert_eq!(c.connect_timeout.unwrap().nanos, 1_000_000);
        assert_eq!(c.eds_cluster_config.unwrap().service_name, "outbound|80||beta.conformance.svc.cluster.local");
        let a =
            ClusterLoadAssignment::decode(&r[ENDPOINT]["outbound|80||beta.conformance.svc.cluster.local"].value[..])
                .unwrap();
        let Some(lb_endpoint::HostIdentifier::Endpoint(e)) = &a.endpoints[0].lb_endpoints[0].host_identifier else {
            panic!("no endpoint")
        };
        let Some(address::Address::SocketAddress(sa)) = &e.address.as_ref().unwrap().address else { panic!() };
        assert_eq!(
            (sa.address.as_str(), &sa.port_specifier),
            ("10.1.1.2", &Some(socket_address::PortSpecifier::PortValue(9090)))
        );
        let rc = RouteConfiguration::decode(&r[ROUTE]["80"].value[..]).unwrap();
        let names: Vec<_> = rc.virtual_hosts.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["alpha.conformance.svc.cluster.local:80", "beta.conformance.svc.cluster.local:80"]);
        assert!(r[LISTENER].contains_key("0.0.0.0_80"));
        // Merged into fetched resources: the fetched route config keeps its virtual hosts.
        let mut from = Resources::new();
        let fetched = RouteConfiguration {
            name: "80".into(),
            virtual_hosts: vec![VirtualHost { name: "x.default.svc.cluster.local:80".into(), ..Default::default() }],
            ..Default::default()
        };
        from.entry(ROUTE.into()).or_default().insert("80".into(), any(ROUTE, &fetched));
        let r = build(&state, &from).unwrap();
        let rc = RouteConfiguration::decode(&r[ROUTE]["80"].value[..]).unwrap();
        assert_eq!(rc.virtual_hosts.len(), 3);
        assert_eq!(rc.virtual_hosts[0].name, "x.default.svc.cluster.local:80");
    }
}
