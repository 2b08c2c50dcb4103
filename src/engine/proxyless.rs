//! The proxyless gRPC branch of the dataflow: additive, it reads collections the sidecar part
//! computes and writes [`Scope::Proxyless`] resources (see [`crate::translate::grpc`]).
//!
//! ```text
//! proxy classes ─filter(proxyless)─▶ distinct () ─────────────────────┐ (present while a
//! cluster rows ─filter(EDS)─▶ grpc cluster ──────────────────semijoin─┤  proxyless client is
//! HTTP host rows ─▶ API listener `<fqdn>:<port>` ────────────semijoin─┤  connected)
//! virtual hosts (fqdn, port) ─▶ route config `outbound|port||fqdn` ─semijoin─┴▶ Scope::Proxyless
//! ```
//!
//! Nothing is computed while no proxyless client is connected; the first one to connect costs
//! one pass over the mesh's HTTP ports and clusters, as istiod's first push to it would.

use differential_dataflow::VecCollection;

use super::rows::OutputRow;
use crate::model::proxy::{ProxyClass, ProxyKind};
use crate::translate::outbound::ClusterRow;
use crate::translate::{ResourceType, Scope, ServicePortRow, VirtualHostPart, grpc};

/// The proxyless resources, from the proxy classes, the cluster rows, the settled HTTP host
/// rows and the per-host virtual hosts `(fqdn, (route config name, virtual host))`.
pub fn proxyless<'s>(
    classes: VecCollection<'s, u64, ProxyClass>,
    cluster_rows: VecCollection<'s, u64, ClusterRow>,
    http_ports: VecCollection<'s, u64, ServicePortRow>,
    virtual_hosts: VecCollection<'s, u64, (String, (String, VirtualHostPart))>,
) -> VecCollection<'s, u64, OutputRow> {
    let present = classes.filter(|c: &ProxyClass| c.kind == ProxyKind::Proxyless).map(|_| ()).distinct();
    let resource =
        |ty, name, body: Vec<u8>| OutputRow::Resource { scope: Scope::Proxyless, ty, name, body: body.into() };
    let clusters = gate(cluster_rows, &present).flat_map(move |c: ClusterRow| {
        let body = grpc::cluster(&c)?;
        Some(resource(ResourceType::Cluster, c.name(), body))
    });
    let listeners = gate(http_ports, &present).map(move |row: ServicePortRow| {
        resource(ResourceType::Listener, grpc::listener_name(&row.fqdn(), row.port.port), grpc::api_listener(&row))
    });
    let routes =
        gate(virtual_hosts, &present).flat_map(move |(fqdn, (route, vhost)): (String, (String, VirtualHostPart))| {
            let port: u16 = route.parse().ok()?;
            let name = grpc::route_config_name(&fqdn, port);
            let body = grpc::route_configuration(&name, &vhost);
            Some(resource(ResourceType::RouteConfiguration, name, body))
        });
    clusters.concat(listeners).concat(routes)
}

/// The rows of `c` while `present` holds `()`: a semijoin on the unit key, so the rows flow
/// (and are translated) only while a proxyless client is connected.
fn gate<'s, D>(c: VecCollection<'s, u64, D>, present: &VecCollection<'s, u64, ()>) -> VecCollection<'s, u64, D>
where
    D: differential_dataflow::ExchangeData + std::hash::Hash,
{
    c.map(|row| ((), row)).semijoin(present.clone()).map(|(_, row)| row)
}
