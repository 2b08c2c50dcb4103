//! The `proxyless` rule: what gRPC's xDS client demands of a server, checked as gRPC walks the
//! chain over state of the world. It subscribes by exact name only: the listener
//! `<fqdn>:<port>` (an API listener), the route configuration its HttpConnectionManager names,
//! the clusters those routes name, the assignments of those clusters' `service_name`. gRPC
//! rejects a response (and the application's channel fails) when:
//! - the HttpConnectionManager's `http_filters` do not end with the router filter carrying its
//!   typed config;
//! - a cluster is not EDS, or its `lb_policy` is not ROUND_ROBIN (gRPC refuses LEAST_REQUEST);
//! - a LocalityLbEndpoints of an assignment has no `locality` message or a zero weight.

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager, http_filter,
};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;

use super::{EXPECT, SotwConn, route_clusters};
use crate::translate::ResourceType;

const ROUTER_FILTER: &str = "envoy.filters.http.router";
const ROUTER_CONFIG: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
const HCM: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

/// The node id a proxyless client of `node_id`'s workload presents: istiod's `proxyless~` type.
pub(super) fn proxyless_node(node_id: &str) -> String {
    match node_id.split_once('~') {
        Some((_, rest)) => format!("proxyless~{rest}"),
        None => format!("proxyless~10.0.0.1~{node_id}.default~default.svc.cluster.local"),
    }
}

/// The route configuration an API listener's HttpConnectionManager names, or why gRPC would
/// reject the listener.
pub(super) fn listener_route(l: &Listener) -> Result<String, String> {
    let api = l.api_listener.as_ref().and_then(|a| a.api_listener.as_ref());
    let Some(api) = api else { return Err(format!("listener {} has no api_listener", l.name)) };
    if api.type_url != HCM {
        return Err(format!("listener {}: api_listener is a {}, not an HttpConnectionManager", l.name, api.type_url));
    }
    let hcm = HttpConnectionManager::decode(&api.value[..]).map_err(|e| format!("listener {}: {e}", l.name))?;
    match hcm.http_filters.last() {
        Some(f) if f.name == ROUTER_FILTER => match &f.config_type {
            Some(http_filter::ConfigType::TypedConfig(Any { type_url, .. })) if type_url == ROUTER_CONFIG => {}
            _ => return Err(format!("listener {}: the router filter carries no typed Router config", l.name)),
        },
        Some(f) => return Err(format!("listener {}: http_filters end with {:?}, not the router", l.name, f.name)),
        None => return Err(format!("listener {}: no http_filters", l.name)),
    }
    match hcm.route_specifier {
        Some(http_connection_manager::RouteSpecifier::Rds(rds)) if !rds.route_config_name.is_empty() => {
            Ok(rds.route_config_name)
        }
        _ => Err(format!("listener {}: no RDS route_config_name", l.name)),
    }
}

/// The name to ask EDS for, or why gRPC would reject the cluster.
pub(super) fn cluster_service(c: &Cluster) -> Result<String, String> {
    let eds = matches!(c.cluster_discovery_type, Some(cluster::ClusterDiscoveryType::Type(t))
        if t == cluster::DiscoveryType::Eds as i32);
    if !eds {
        return Err(format!("cluster {} is not EDS", c.name));
    }
    if c.lb_policy != cluster::LbPolicy::RoundRobin as i32 {
        let policy = cluster::LbPolicy::try_from(c.lb_policy).map(|p| p.as_str_name()).unwrap_or("unknown");
        return Err(format!("cluster {}: lb_policy {policy}, gRPC takes ROUND_ROBIN only", c.name));
    }
    let service = c.eds_cluster_config.as_ref().map(|e| e.service_name.clone()).unwrap_or_default();
    Ok(if service.is_empty() { c.name.clone() } else { service })
}

/// Why gRPC would reject the assignment, if it would.
pub(super) fn assignment_problem(a: &ClusterLoadAssignment) -> Option<String> {
    a.endpoints.iter().enumerate().find_map(|(i, group)| {
        if group.locality.is_none() {
            Some(format!("assignment {}: endpoints[{i}] has no locality", a.cluster_name))
        } else if group.load_balancing_weight.as_ref().is_none_or(|w| w.value == 0) {
            Some(format!("assignment {}: endpoints[{i}] has no (or a zero) load_balancing_weight", a.cluster_name))
        } else {
            None
        }
    })
}

/// Asks for `names` of `ty` (with the subscriptions of the other types unchanged, as gRPC
/// does) and returns the first response of `ty` that holds all of them, ACKing everything.
async fn fetch(
    c: &mut SotwConn,
    subs: &mut HashMap<ResourceType, Vec<String>>,
    ty: ResourceType,
    names: Vec<String>,
) -> Result<Vec<Any>, String> {
    let wanted: BTreeSet<String> = names.iter().cloned().collect();
    let asked = names.join(", ");
    subs.insert(ty, names);
    c.request(ty, &subs[&ty].iter().map(String::as_str).collect::<Vec<_>>(), None).await?;
    let deadline = Instant::now() + EXPECT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some((r, got)) = c.recv(left).await? else {
            return Err(format!("asked for [{asked}]: no response held them in {EXPECT:?}; saw {}", c.seen()));
        };
        let Some(rty) = ResourceType::from_type_url(&r.type_url) else { continue };
        let sub: Vec<&str> = subs.get(&rty).map(|v| v.iter().map(String::as_str).collect()).unwrap_or_default();
        c.request(rty, &sub, None).await?;
        if rty == ty && wanted.is_subset(&got) {
            return Ok(r.resources);
        }
    }
}

fn decode_all<M: Message + Default>(resources: &[Any]) -> Result<Vec<M>, String> {
    resources.iter().map(|a| M::decode(&a.value[..]).map_err(|e| format!("{}: {e}", a.type_url))).collect()
}

/// The check: from `listener` (what the control adapter names for alpha) down to alpha's
/// endpoints, every resource as gRPC takes it.
pub(super) async fn check(server: &str, node_id: &str, listener: &str, alpha_cluster: &str) -> Result<(), String> {
    let mut c = SotwConn::open(server, &proxyless_node(node_id)).await?;
    let mut subs = HashMap::new();
    let listeners: Vec<Listener> =
        decode_all(&fetch(&mut c, &mut subs, ResourceType::Listener, vec![listener.to_string()]).await?)?;
    let l =
        listeners.iter().find(|l| l.name == listener).ok_or_else(|| format!("{listener} not among {listeners:?}"))?;
    let route_name = listener_route(l)?;
    let routes = fetch(&mut c, &mut subs, ResourceType::RouteConfiguration, vec![route_name.clone()]).await?;
    let clusters: BTreeSet<String> = routes.iter().flat_map(|a| route_clusters(&a.value)).collect();
    if !clusters.contains(alpha_cluster) {
        return Err(format!("route configuration {route_name} routes to {clusters:?}, not to {alpha_cluster}"));
    }
    let clusters: Vec<Cluster> =
        decode_all(&fetch(&mut c, &mut subs, ResourceType::Cluster, clusters.into_iter().collect()).await?)?;
    let services = clusters.iter().map(cluster_service).collect::<Result<Vec<_>, _>>()?;
    let assignments: Vec<ClusterLoadAssignment> =
        decode_all(&fetch(&mut c, &mut subs, ResourceType::ClusterLoadAssignment, services).await?)?;
    if let Some(problem) = assignments.iter().find_map(assignment_problem) {
        return Err(problem);
    }
    let endpoints: usize = assignments.iter().flat_map(|a| &a.endpoints).map(|g| g.lb_endpoints.len()).sum();
    if endpoints == 0 {
        return Err(format!("the assignments of {alpha_cluster}'s routes hold no endpoint: {}", c.seen()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::Locality;
    use envoy_types::pb::envoy::config::endpoint::v3::LocalityLbEndpoints;
    use envoy_types::pb::envoy::config::listener::v3::ApiListener;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{HttpFilter, Rds};
    use envoy_types::pb::google::protobuf::UInt32Value;

    fn api_listener(filters: Vec<HttpFilter>) -> Listener {
        let hcm = HttpConnectionManager {
            http_filters: filters,
            route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
                route_config_name: "r".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        let any = Any { type_url: HCM.into(), value: hcm.encode_to_vec() };
        Listener { name: "l".into(), api_listener: Some(ApiListener { api_listener: Some(any) }), ..Default::default() }
    }

    fn filter(name: &str, type_url: Option<&str>) -> HttpFilter {
        HttpFilter {
            name: name.into(),
            config_type: type_url
                .map(|t| http_filter::ConfigType::TypedConfig(Any { type_url: t.into(), value: Vec::new() })),
            ..Default::default()
        }
    }

    #[test]
    fn an_api_listener_must_end_with_the_typed_router() {
        let fault = filter("envoy.filters.http.fault", Some("type.googleapis.com/x.Fault"));
        let router = filter(ROUTER_FILTER, Some(ROUTER_CONFIG));
        assert_eq!(listener_route(&api_listener(vec![fault.clone(), router.clone()])), Ok("r".to_string()));
        assert!(listener_route(&api_listener(vec![router.clone(), fault])).unwrap_err().contains("not the router"));
        let untyped = filter(ROUTER_FILTER, None);
        assert!(listener_route(&api_listener(vec![untyped])).unwrap_err().contains("no typed Router"));
        assert!(listener_route(&api_listener(Vec::new())).unwrap_err().contains("no http_filters"));
        assert!(listener_route(&Listener { name: "l".into(), ..Default::default() }).is_err(), "not an API listener");
    }

    #[test]
    fn a_cluster_must_be_eds_and_round_robin() {
        let eds = |policy: cluster::LbPolicy| Cluster {
            name: "c".into(),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::Eds as i32)),
            lb_policy: policy as i32,
            ..Default::default()
        };
        assert_eq!(cluster_service(&eds(cluster::LbPolicy::RoundRobin)), Ok("c".to_string()));
        assert!(cluster_service(&eds(cluster::LbPolicy::LeastRequest)).unwrap_err().contains("LEAST_REQUEST"));
        let strict_dns = Cluster {
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::StrictDns as i32)),
            ..eds(cluster::LbPolicy::RoundRobin)
        };
        assert!(cluster_service(&strict_dns).unwrap_err().contains("not EDS"));
    }

    #[test]
    fn every_locality_group_needs_a_locality_and_a_weight() {
        let group = |locality: Option<Locality>, weight: Option<u32>| LocalityLbEndpoints {
            locality,
            load_balancing_weight: weight.map(|value| UInt32Value { value }),
            ..Default::default()
        };
        let cla = |g| ClusterLoadAssignment { cluster_name: "c".into(), endpoints: vec![g], ..Default::default() };
        assert_eq!(
            assignment_problem(&cla(group(Some(Locality::default()), Some(1)))),
            None,
            "an empty locality will do"
        );
        assert!(assignment_problem(&cla(group(None, Some(1)))).unwrap().contains("no locality"));
        assert!(assignment_problem(&cla(group(Some(Locality::default()), Some(0)))).unwrap().contains("zero"));
        assert!(assignment_problem(&cla(group(Some(Locality::default()), None))).is_some());
    }
}
