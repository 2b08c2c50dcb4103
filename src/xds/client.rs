//! An xDS client for people and tools: `meshflow xds`. It subscribes like Envoy does, prints
//! what it receives as JSON with Envoy's field names, ACKs every response, and reports each
//! change of a resource (added, changed, removed, with versions).
//!
//! Subscriptions, per type asked for (default: cds, eds, lds, rds, like Envoy):
//! - with `--resource` names: those names;
//! - EDS when CDS is asked for too: the EDS clusters received (their `eds_cluster_config.
//!   service_name`, else their name), as Envoy subscribes;
//! - RDS when LDS is asked for too: the route config names the listeners' HTTP connection
//!   managers (and API listeners) name;
//! - otherwise every resource of the type (`*`).
//!
//! Delta (`DeltaAggregatedResources`) by default, state of the world with `sotw`. The same
//! client drives tests and the conformance tool: [`run`] takes a callback per [`Event`].

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::{Listener, filter};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::cache::content_version;
use crate::translate::ResourceType;

const HCM_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

/// What to ask for, and how long to listen.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// `host:port`, or a URL (`http://host:port`).
    pub server: String,
    pub node_id: String,
    /// The types to subscribe to; empty: CDS, EDS, LDS, RDS.
    pub types: Vec<ResourceType>,
    /// Subscribe to these names only (every type asked for).
    pub resources: Vec<String>,
    /// State of the world instead of delta.
    pub sotw: bool,
    /// Keep listening; else [`run`] returns once the server has been quiet for `quiet`.
    pub watch: bool,
    pub quiet: Duration,
    /// How long to wait for the first response (and to connect).
    pub timeout: Duration,
}

impl ClientOptions {
    pub fn new(server: impl Into<String>, node_id: impl Into<String>) -> ClientOptions {
        ClientOptions {
            server: server.into(),
            node_id: node_id.into(),
            types: Vec::new(),
            resources: Vec::new(),
            sotw: false,
            watch: false,
            quiet: Duration::from_secs(1),
            timeout: Duration::from_secs(10),
        }
    }
}

/// One change of one resource, as the client saw it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Event {
    /// `added`, `changed` or `removed`.
    pub event: &'static str,
    /// `cds`, `eds`, `lds`, `rds` or `sds`.
    #[serde(rename = "type")]
    pub ty: &'static str,
    pub name: String,
    /// The resource's version: the server's for delta, a hash of the content for state of
    /// the world (whose versions are per response).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The resource as JSON with Envoy's field names and its `@type` (not for `removed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<Value>,
}

/// How a type's names are chosen.
#[derive(Clone, Debug, PartialEq)]
enum Mode {
    Wildcard,
    Names(BTreeSet<String>),
    /// EDS from the clusters, RDS from the listeners.
    Derived,
}

/// What the client holds of one type.
#[derive(Default)]
struct Held {
    /// name → (version, names this resource makes the client subscribe to: EDS names of a
    /// cluster, RDS names of a listener).
    resources: BTreeMap<String, (String, Vec<String>)>,
    subscribed: BTreeSet<String>,
    /// State of the world: the latest response's nonce and version.
    nonce: String,
    version: String,
}

pub fn parse_type(s: &str) -> Result<ResourceType, String> {
    match s.to_ascii_lowercase().as_str() {
        "cds" => Ok(ResourceType::Cluster),
        "eds" => Ok(ResourceType::ClusterLoadAssignment),
        "lds" => Ok(ResourceType::Listener),
        "rds" => Ok(ResourceType::RouteConfiguration),
        "sds" => Ok(ResourceType::Secret),
        other => Err(format!("xDS type {other:?} is not one of cds, eds, lds, rds, sds")),
    }
}

struct Client {
    types: Vec<ResourceType>,
    modes: [Option<Mode>; ResourceType::ALL.len()],
    held: [Held; ResourceType::ALL.len()],
}

impl Client {
    fn new(options: &ClientOptions) -> Client {
        let mut types: Vec<ResourceType> = if options.types.is_empty() {
            vec![
                ResourceType::Cluster,
                ResourceType::ClusterLoadAssignment,
                ResourceType::Listener,
                ResourceType::RouteConfiguration,
            ]
        } else {
            options.types.clone()
        };
        types.sort_by_key(|t| ResourceType::ALL.iter().position(|a| a == t));
        types.dedup();
        let mut modes: [Option<Mode>; ResourceType::ALL.len()] = Default::default();
        for ty in &types {
            let mode = if !options.resources.is_empty() {
                Mode::Names(options.resources.iter().cloned().collect())
            } else if (*ty == ResourceType::ClusterLoadAssignment && types.contains(&ResourceType::Cluster))
                || (*ty == ResourceType::RouteConfiguration && types.contains(&ResourceType::Listener))
            {
                Mode::Derived
            } else {
                Mode::Wildcard
            };
            modes[*ty as usize] = Some(mode);
        }
        Client { types, modes, held: Default::default() }
    }

    /// The names a type should be subscribed to now (`*` for a wildcard).
    fn wanted(&self, ty: ResourceType) -> BTreeSet<String> {
        match &self.modes[ty as usize] {
            None => BTreeSet::new(),
            Some(Mode::Wildcard) => ["*".to_string()].into_iter().collect(),
            Some(Mode::Names(names)) => names.clone(),
            Some(Mode::Derived) => {
                let parent = match ty {
                    ResourceType::ClusterLoadAssignment => ResourceType::Cluster,
                    _ => ResourceType::Listener,
                };
                self.held[parent as usize].resources.values().flat_map(|(_, d)| d.iter().cloned()).collect()
            }
        }
    }

    /// The child type whose names derive from `ty`'s resources.
    fn derived_from(&self, ty: ResourceType) -> Option<ResourceType> {
        let child = match ty {
            ResourceType::Cluster => ResourceType::ClusterLoadAssignment,
            ResourceType::Listener => ResourceType::RouteConfiguration,
            _ => return None,
        };
        (self.modes[child as usize] == Some(Mode::Derived)).then_some(child)
    }

    /// Records a resource received; the event it makes, if any.
    fn receive(&mut self, ty: ResourceType, any: &Any, version: Option<String>) -> Result<Option<Event>, String> {
        let (name, derived) = describe(ty, &any.value)?;
        let version = version.unwrap_or_else(|| content_version(&any.value));
        let held = &mut self.held[ty as usize];
        let event = match held.resources.get(&name) {
            Some((v, _)) if *v == version => return Ok(None),
            Some(_) => "changed",
            None => "added",
        };
        let resource = crate::json::any_to_json(&any.type_url, &any.value)?;
        held.resources.insert(name.clone(), (version.clone(), derived));
        Ok(Some(Event {
            event,
            ty: crate::metrics::metric_type(ty),
            name,
            version: Some(version),
            resource: Some(resource),
        }))
    }

    fn remove(&mut self, ty: ResourceType, name: &str) -> Option<Event> {
        self.held[ty as usize].resources.remove(name).map(|(version, _)| Event {
            event: "removed",
            ty: crate::metrics::metric_type(ty),
            name: name.to_string(),
            version: Some(version),
            resource: None,
        })
    }
}

/// A resource's name, and the names it makes the client subscribe to.
fn describe(ty: ResourceType, bytes: &[u8]) -> Result<(String, Vec<String>), String> {
    let bad = |e: prost::DecodeError| format!("a {} resource does not decode: {e}", ty.short());
    Ok(match ty {
        ResourceType::Cluster => {
            let c = Cluster::decode(bytes).map_err(bad)?;
            let eds = matches!(c.cluster_discovery_type, Some(cluster::ClusterDiscoveryType::Type(t)) if t == cluster::DiscoveryType::Eds as i32);
            let names = if eds {
                let service = c.eds_cluster_config.as_ref().map(|e| e.service_name.clone()).unwrap_or_default();
                vec![if service.is_empty() { c.name.clone() } else { service }]
            } else {
                Vec::new()
            };
            (c.name, names)
        }
        ResourceType::ClusterLoadAssignment => {
            (ClusterLoadAssignment::decode(bytes).map_err(bad)?.cluster_name, vec![])
        }
        ResourceType::RouteConfiguration => (RouteConfiguration::decode(bytes).map_err(bad)?.name, vec![]),
        ResourceType::Secret => (Secret::decode(bytes).map_err(bad)?.name, vec![]),
        ResourceType::Listener => {
            let l = Listener::decode(bytes).map_err(bad)?;
            let mut names = BTreeSet::new();
            let chains = l.filter_chains.iter().chain(l.default_filter_chain.as_ref());
            let typed = chains.flat_map(|c| &c.filters).filter_map(|f| match &f.config_type {
                Some(filter::ConfigType::TypedConfig(any)) => Some(any),
                _ => None,
            });
            let api = l.api_listener.as_ref().and_then(|a| a.api_listener.as_ref());
            for any in typed.chain(api) {
                if any.type_url == HCM_TYPE
                    && let Ok(hcm) = HttpConnectionManager::decode(&any.value[..])
                    && let Some(http_connection_manager::RouteSpecifier::Rds(rds)) = hcm.route_specifier
                {
                    names.insert(rds.route_config_name);
                }
            }
            (l.name, names.into_iter().collect())
        }
    })
}

fn endpoint(server: &str) -> String {
    if server.contains("://") { server.to_string() } else { format!("http://{server}") }
}

/// Connects, subscribes and reports every change through `on_event` until the server has been
/// quiet for `options.quiet` (or, with `watch`, until the stream ends). Errors: no connection,
/// no first response within `options.timeout`, the server closing the stream with an error, a
/// resource that does not decode.
pub async fn run(options: &ClientOptions, mut on_event: impl FnMut(&Event)) -> anyhow::Result<()> {
    let url = endpoint(&options.server);
    let connect = AggregatedDiscoveryServiceClient::connect(url.clone());
    let mut grpc = tokio::time::timeout(options.timeout, connect)
        .await
        .map_err(|_| anyhow::anyhow!("connecting to {url}: no answer in {:?}", options.timeout))?
        .map_err(|e| anyhow::anyhow!("connecting to {url}: {e}"))?
        .max_decoding_message_size(256 << 20);
    let node = Node { id: options.node_id.clone(), ..Default::default() };
    let mut client = Client::new(options);
    if options.sotw {
        run_sotw(&mut grpc, node, options, &mut client, &mut on_event).await
    } else {
        run_delta(&mut grpc, node, options, &mut client, &mut on_event).await
    }
}

/// Waits for the next message: None once quiet (not watching), an error before the first.
async fn next<T>(
    stream: &mut tonic::Streaming<T>,
    options: &ClientOptions,
    received_any: bool,
) -> anyhow::Result<Option<T>> {
    let wait = if options.watch && received_any {
        None
    } else if received_any {
        Some(options.quiet)
    } else {
        Some(options.timeout)
    };
    let message = match wait {
        None => stream.message().await,
        Some(wait) => match tokio::time::timeout(wait, stream.message()).await {
            Ok(m) => m,
            Err(_) if received_any => return Ok(None),
            Err(_) => anyhow::bail!("no response from {} in {:?}", options.server, options.timeout),
        },
    };
    match message {
        Ok(m) => Ok(m),
        Err(status) => anyhow::bail!("the server closed the stream: {:?}: {}", status.code(), status.message()),
    }
}

async fn run_delta(
    grpc: &mut AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
    node: Node,
    options: &ClientOptions,
    client: &mut Client,
    on_event: &mut impl FnMut(&Event),
) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(64);
    let mut node = Some(node);
    let mut subscribe =
        |client: &mut Client, ty: ResourceType, out: &mut Vec<Event>| -> Option<DeltaDiscoveryRequest> {
            let wanted = client.wanted(ty);
            let held = &mut client.held[ty as usize];
            let add: Vec<String> = wanted.difference(&held.subscribed).cloned().collect();
            let drop: Vec<String> = held.subscribed.difference(&wanted).cloned().collect();
            if add.is_empty() && drop.is_empty() {
                return None;
            }
            held.subscribed = wanted;
            for name in &drop {
                // The client forgets what it unsubscribes from.
                out.extend(client.remove(ty, name));
            }
            Some(DeltaDiscoveryRequest {
                node: node.take(),
                type_url: ty.type_url().to_string(),
                resource_names_subscribe: add,
                resource_names_unsubscribe: drop,
                ..Default::default()
            })
        };
    let mut initial = Vec::new();
    let mut events = Vec::new();
    for ty in client.types.clone() {
        if let Some(req) = subscribe(client, ty, &mut events) {
            initial.push(req);
        }
    }
    for req in initial {
        tx.send(req).await?;
    }
    let mut stream = grpc.delta_aggregated_resources(ReceiverStream::new(rx)).await?.into_inner();
    let mut received_any = false;
    while let Some(response) = next(&mut stream, options, received_any).await? {
        received_any = true;
        let DeltaDiscoveryResponse { type_url, resources, removed_resources, nonce, .. } = response;
        let Some(ty) = ResourceType::from_type_url(&type_url) else {
            anyhow::bail!("the server sent type {type_url:?}, which this client did not ask for");
        };
        let mut error = None;
        for r in &resources {
            let Some(any) = &r.resource else { continue };
            match client.receive(ty, any, Some(r.version.clone())) {
                Ok(event) => events.extend(event),
                Err(e) => error = Some(format!("{}: {e}", r.name)),
            }
        }
        for name in &removed_resources {
            events.extend(client.remove(ty, name));
        }
        for e in events.drain(..) {
            on_event(&e);
        }
        let ack = DeltaDiscoveryRequest {
            type_url: type_url.clone(),
            response_nonce: nonce,
            error_detail: error.clone().map(|message| envoy_types::pb::google::rpc::Status {
                code: tonic::Code::InvalidArgument as i32,
                message,
                details: vec![],
            }),
            ..Default::default()
        };
        tx.send(ack).await?;
        if let Some(e) = error {
            anyhow::bail!("rejected a {} response: {e}", ty.short());
        }
        if let Some(child) = client.derived_from(ty)
            && let Some(req) = subscribe(client, child, &mut events)
        {
            tx.send(req).await?;
        }
        for e in events.drain(..) {
            on_event(&e);
        }
    }
    Ok(())
}

async fn run_sotw(
    grpc: &mut AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
    node: Node,
    options: &ClientOptions,
    client: &mut Client,
    on_event: &mut impl FnMut(&Event),
) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel::<DiscoveryRequest>(64);
    let mut node = Some(node);
    let mut request = |client: &mut Client, ty: ResourceType, force: bool| -> Option<DiscoveryRequest> {
        let wanted = client.wanted(ty);
        let held = &mut client.held[ty as usize];
        let started = !held.nonce.is_empty() || !held.subscribed.is_empty();
        if !force && (held.subscribed == wanted && started || wanted.is_empty() && !started) {
            return None;
        }
        held.subscribed = wanted.clone();
        Some(DiscoveryRequest {
            node: node.take(),
            type_url: ty.type_url().to_string(),
            resource_names: wanted.into_iter().collect(),
            version_info: held.version.clone(),
            response_nonce: held.nonce.clone(),
            ..Default::default()
        })
    };
    let mut initial = Vec::new();
    for ty in client.types.clone() {
        if let Some(req) = request(client, ty, false) {
            initial.push(req);
        }
    }
    for req in initial {
        tx.send(req).await?;
    }
    let mut stream = grpc.stream_aggregated_resources(ReceiverStream::new(rx)).await?.into_inner();
    let mut received_any = false;
    while let Some(response) = next(&mut stream, options, received_any).await? {
        received_any = true;
        let DiscoveryResponse { type_url, resources, nonce, version_info, .. } = response;
        let Some(ty) = ResourceType::from_type_url(&type_url) else {
            anyhow::bail!("the server sent type {type_url:?}, which this client did not ask for");
        };
        let mut events = Vec::new();
        let mut present = BTreeSet::new();
        for any in &resources {
            let (name, _) = describe(ty, &any.value).map_err(anyhow::Error::msg)?;
            events.extend(client.receive(ty, any, None).map_err(anyhow::Error::msg)?);
            present.insert(name);
        }
        // State of the world: what the response leaves out is gone.
        let gone: Vec<String> =
            client.held[ty as usize].resources.keys().filter(|n| !present.contains(*n)).cloned().collect();
        for name in gone {
            events.extend(client.remove(ty, &name));
        }
        for e in &events {
            on_event(e);
        }
        let held = &mut client.held[ty as usize];
        held.nonce = nonce;
        held.version = version_info;
        if let Some(ack) = request(client, ty, true) {
            tx.send(ack).await?;
        }
        if let Some(child) = client.derived_from(ty)
            && let Some(req) = request(client, child, false)
        {
            tx.send(req).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain};

    fn any<M: Message>(ty: ResourceType, m: &M) -> Any {
        Any { type_url: ty.type_url().into(), value: m.encode_to_vec() }
    }

    #[test]
    fn eds_names_follow_the_eds_clusters_and_rds_names_the_listeners() {
        let mut c = Client::new(&ClientOptions::new("x", "n"));
        assert_eq!(c.wanted(ResourceType::Cluster), ["*".to_string()].into());
        assert!(c.wanted(ResourceType::ClusterLoadAssignment).is_empty());
        let eds = Cluster {
            name: "outbound|80||a".into(),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::Eds as i32)),
            ..Default::default()
        };
        let dns = Cluster {
            name: "outbound|80||b".into(),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::StrictDns as i32)),
            ..Default::default()
        };
        let e = c.receive(ResourceType::Cluster, &any(ResourceType::Cluster, &eds), Some("1".into())).unwrap().unwrap();
        assert_eq!((e.event, e.ty, e.name.as_str()), ("added", "cds", "outbound|80||a"));
        assert_eq!(e.resource.as_ref().unwrap()["type"], "EDS");
        c.receive(ResourceType::Cluster, &any(ResourceType::Cluster, &dns), Some("1".into())).unwrap();
        assert_eq!(c.wanted(ResourceType::ClusterLoadAssignment), ["outbound|80||a".to_string()].into());
        // The same version again is no event; a new one is a change.
        assert!(
            c.receive(ResourceType::Cluster, &any(ResourceType::Cluster, &eds), Some("1".into())).unwrap().is_none()
        );
        let e = c.receive(ResourceType::Cluster, &any(ResourceType::Cluster, &eds), Some("2".into())).unwrap().unwrap();
        assert_eq!(e.event, "changed");

        let hcm = HttpConnectionManager {
            route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(
                envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::Rds {
                    route_config_name: "9080".into(),
                    ..Default::default()
                },
            )),
            ..Default::default()
        };
        let listener = Listener {
            name: "0.0.0.0_9080".into(),
            filter_chains: vec![FilterChain {
                filters: vec![Filter {
                    name: "envoy.filters.network.http_connection_manager".into(),
                    config_type: Some(filter::ConfigType::TypedConfig(Any {
                        type_url: HCM_TYPE.into(),
                        value: hcm.encode_to_vec(),
                    })),
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        c.receive(ResourceType::Listener, &any(ResourceType::Listener, &listener), None).unwrap();
        assert_eq!(c.wanted(ResourceType::RouteConfiguration), ["9080".to_string()].into());
        let removed = c.remove(ResourceType::Listener, "0.0.0.0_9080").unwrap();
        assert_eq!((removed.event, removed.resource), ("removed", None));
        assert!(c.wanted(ResourceType::RouteConfiguration).is_empty());
    }

    #[test]
    fn explicit_types_and_names() {
        let mut o = ClientOptions::new("x", "n");
        o.types = vec![ResourceType::ClusterLoadAssignment];
        let c = Client::new(&o);
        assert_eq!(c.wanted(ResourceType::ClusterLoadAssignment), ["*".to_string()].into(), "EDS alone: everything");
        o.resources = vec!["a".into()];
        let c = Client::new(&o);
        assert_eq!(c.wanted(ResourceType::ClusterLoadAssignment), ["a".to_string()].into());
        assert!(c.wanted(ResourceType::Cluster).is_empty(), "not asked for");
        assert_eq!(parse_type("RDS"), Ok(ResourceType::RouteConfiguration));
        assert!(parse_type("xds").unwrap_err().contains("not one of"));
    }
}
