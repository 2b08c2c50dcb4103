//! `--from`: fetch once, over delta ADS, every resource a sidecar gets from a running meshflow,
//! as raw `Any`s (wildcard CDS and LDS, then EDS for the EDS clusters' service names and RDS for
//! the listeners' route config names, as Envoy subscribes), ACKing each response.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use xds_types::envoy::config::cluster::v3::{cluster, Cluster};
use xds_types::envoy::config::core::v3::Node;
use xds_types::envoy::config::listener::v3::{filter, Listener};
use xds_types::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager, HttpConnectionManager,
};
use xds_types::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use xds_types::envoy::service::discovery::v3::DeltaDiscoveryRequest;

use crate::resources::{Resources, CLUSTER, ENDPOINT, LISTENER, ROUTE, TYPES};

/// How long the stream must stay quiet, once CDS and LDS have answered, to call the fetch done.
const QUIET: Duration = Duration::from_secs(2);
const LIMIT: Duration = Duration::from_secs(120);

fn eds_name(c: &Cluster) -> Option<String> {
    let eds = matches!(c.cluster_discovery_type, Some(cluster::ClusterDiscoveryType::Type(t)) if t == cluster::DiscoveryType::Eds as i32);
    eds.then(|| {
        c.eds_cluster_config
            .as_ref()
            .map(|e| e.service_name.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or(c.name.clone())
    })
}

fn rds_names(l: &Listener) -> Vec<String> {
    let mut names = Vec::new();
    for f in l.filter_chains.iter().chain(l.default_filter_chain.iter()).flat_map(|fc| &fc.filters) {
        let Some(filter::ConfigType::TypedConfig(a)) = &f.config_type else { continue };
        if !a.type_url.ends_with(".HttpConnectionManager") {
            continue;
        }
        if let Ok(hcm) = HttpConnectionManager::decode(&a.value[..]) {
            if let Some(http_connection_manager::RouteSpecifier::Rds(rds)) = hcm.route_specifier {
                names.push(rds.route_config_name);
            }
        }
    }
    names
}

pub async fn fetch(server: &str, node_id: &str) -> Result<Resources, String> {
    let endpoint = if server.contains("://") { server.to_string() } else { format!("http://{server}") };
    let mut client = AggregatedDiscoveryServiceClient::connect(endpoint)
        .await
        .map_err(|e| format!("--from {server}: {e}"))?
        .max_decoding_message_size(512 << 20);
    let (tx, rx) = mpsc::unbounded_channel::<DeltaDiscoveryRequest>();
    let node = Node { id: node_id.to_string(), cluster: "xds-peer".into(), ..Default::default() };
    for (k, t) in [CLUSTER, LISTENER].into_iter().enumerate() {
        let _ = tx.send(DeltaDiscoveryRequest {
            node: (k == 0).then(|| node.clone()),
            type_url: t.into(),
            ..Default::default()
        });
    }
    let requests = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
    let mut inbound = client
        .delta_aggregated_resources(requests)
        .await
        .map_err(|e| format!("--from {server}: opening the delta stream: {e}"))?
        .into_inner();
    let mut out = Resources::new();
    for t in TYPES {
        out.entry(t.to_string()).or_default();
    }
    let (mut eds, mut rds) = (BTreeSet::new(), BTreeSet::new());
    let mut answered: BTreeSet<String> = BTreeSet::new();
    let started = Instant::now();
    loop {
        let quiet = if answered.contains(CLUSTER) && answered.contains(LISTENER) { QUIET } else { LIMIT };
        let response = match tokio::time::timeout(quiet, inbound.next()).await {
            Err(_) => break,
            Ok(None) => return Err(format!("--from {server}: the server closed the stream")),
            Ok(Some(Err(status))) => return Err(format!("--from {server}: {status}")),
            Ok(Some(Ok(r))) => r,
        };
        if started.elapsed() > LIMIT {
            return Err(format!("--from {server}: still receiving after {LIMIT:?}"));
        }
        answered.insert(response.type_url.clone());
        let Some(held) = out.get_mut(&response.type_url) else {
            return Err(format!("--from {server}: a response of type {} (not CDS/EDS/LDS/RDS)", response.type_url));
        };
        for name in &response.removed_resources {
            held.remove(name);
        }
        let mut subscribe = Vec::new();
        for r in &response.resources {
            let Some(a) = &r.resource else { continue };
            held.insert(r.name.clone(), prost_types::Any { type_url: a.type_url.clone(), value: a.value.clone() });
            if response.type_url == CLUSTER {
                let c = Cluster::decode(&a.value[..]).map_err(|e| format!("--from: cluster {}: {e}", r.name))?;
                subscribe.extend(eds_name(&c).filter(|n| eds.insert(n.clone())));
            } else if response.type_url == LISTENER {
                let l = Listener::decode(&a.value[..]).map_err(|e| format!("--from: listener {}: {e}", r.name))?;
                subscribe.extend(rds_names(&l).into_iter().filter(|n| rds.insert(n.clone())));
            }
        }
        let _ = tx.send(DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            ..Default::default()
        });
        if !subscribe.is_empty() {
            let follow = if response.type_url == CLUSTER { ENDPOINT } else { ROUTE };
            let _ = tx.send(DeltaDiscoveryRequest {
                type_url: follow.into(),
                resource_names_subscribe: subscribe,
                ..Default::default()
            });
        }
    }
    Ok(out)
}
