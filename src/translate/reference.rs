//! The reference translator: the same resources as the engine, computed from a full snapshot
//! with plain loops over the same per-resource builders. Slow on purpose and obviously
//! correct; the engine must equal it after every step of any change sequence.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use super::{EndpointAddr, ResourceType, VirtualHostPart};
use crate::engine::{endpoints_addresses, selector_pod_addresses, service_port_rows, slice_addresses};
use crate::model::Object;
use crate::translate;

/// Resources by (type, name), each as encoded bytes.
pub type Resources = BTreeMap<(ResourceType, String), Vec<u8>>;

pub fn translate_all<'a>(objects: impl IntoIterator<Item = &'a Object>) -> Resources {
    let (mut services, mut slices, mut endpoints, mut pods) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for o in objects {
        match o {
            Object::Service(s) => services.push(s),
            Object::EndpointSlice(s) => slices.push(s),
            Object::Endpoints(e) => endpoints.push(e),
            Object::Pod(p) => pods.push(p),
            _ => {}
        }
    }
    let sliced: HashSet<(&str, &str)> =
        slices.iter().filter_map(|s| Some((s.namespace.as_str(), s.service_name.as_deref()?))).collect();
    let with_endpoints: HashSet<(&str, &str)> =
        endpoints.iter().map(|e| (e.namespace.as_str(), e.name.as_str())).collect();

    let mut out = Resources::new();
    let mut routes: BTreeMap<String, Vec<VirtualHostPart>> = BTreeMap::new();
    for svc in &services {
        let key = (svc.namespace.as_str(), svc.name.as_str());
        for row in service_port_rows(svc) {
            let cluster = row.cluster_name();
            let wanted = (row.namespace.clone(), row.service.clone(), row.port.name.clone(), row.port.protocol);
            let mut addrs: BTreeSet<EndpointAddr> = BTreeSet::new();
            if sliced.contains(&key) {
                for s in &slices {
                    addrs.extend(slice_addresses(s).into_iter().filter(|(k, _)| *k == wanted).map(|(_, a)| a));
                }
            } else if with_endpoints.contains(&key) {
                for e in &endpoints {
                    addrs.extend(endpoints_addresses(e).into_iter().filter(|(k, _)| *k == wanted).map(|(_, a)| a));
                }
            } else {
                for p in &pods {
                    addrs.extend(
                        selector_pod_addresses(svc, p).into_iter().filter(|(c, _)| *c == cluster).map(|(_, a)| a),
                    );
                }
            }
            let addrs: Vec<&EndpointAddr> = addrs.iter().collect();
            out.insert(
                (ResourceType::ClusterLoadAssignment, cluster.clone()),
                translate::load_assignment(&cluster, &addrs),
            );
            out.insert((ResourceType::Cluster, cluster), translate::cluster(&row, None, None));
            if row.protocol().is_http() {
                let port = row.port.port;
                let vhost = translate::virtual_host(&row, vec![translate::route::default_route(&row, vec![])]);
                routes.entry(translate::route_config_name(port)).or_default().push(vhost);
                out.insert((ResourceType::Listener, translate::listener_name(port)), translate::listener(port, None));
            }
        }
    }
    for (name, vhosts) in routes {
        let body = translate::route_configuration(&name, &vhosts);
        out.insert((ResourceType::RouteConfiguration, name), body);
    }
    out
}
