//! The admin HTTP endpoint: readiness and a debug view of what is served.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use envoy_types::pb::envoy::admin::v3 as admin;
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};

use crate::cache::Cache;
use crate::translate::ResourceType;
use crate::verify::Verifier;
use crate::xds::sync::{Connection, Connections};

#[derive(Clone)]
struct AdminState {
    cache: Arc<Cache>,
    verifier: Option<Arc<Verifier>>,
    connections: Arc<Connections>,
}

/// What the admin endpoint serves.
pub struct AdminConfig {
    pub cache: Arc<Cache>,
    /// With `--verify`: `/debug/verify` and the verify metrics.
    pub verifier: Option<Arc<Verifier>>,
    /// The xDS server's connected streams (`xds::serve_with_connections`): `/debug/syncz`,
    /// `/debug/config_dump`.
    pub connections: Arc<Connections>,
}

/// `GET /metrics`: Prometheus text (see [`crate::metrics`]), with the served resources per
/// type filled in at scrape time.
async fn metrics(State(AdminState { cache, .. }): State<AdminState>) -> Response {
    let m = crate::metrics::global();
    for ty in ResourceType::ALL {
        m.resources.with_label_values(&[crate::metrics::metric_type(ty)]).set(cache.len(ty) as i64);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], m.render()).into_response()
}

fn json_response(status: StatusCode, value: &serde_json::Value) -> Response {
    let body = serde_json::to_string_pretty(value).unwrap_or_default() + "\n";
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// `GET /debug/syncz`: one entry per connected stream, as istiod's `/debug/syncz`
/// ([`Connection::syncz`]); `?namespace=NS` keeps that namespace's proxies.
async fn syncz(
    State(AdminState { connections, .. }): State<AdminState>,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let namespace = query.get("namespace").filter(|n| !n.is_empty());
    let entries: Vec<serde_json::Value> =
        connections.all().iter().filter(|c| namespace.is_none_or(|ns| &c.namespace == ns)).map(|c| c.syncz()).collect();
    json_response(StatusCode::OK, &serde_json::Value::Array(entries))
}

/// `GET /debug/config_dump?proxy=ID`: what the connected proxy `ID` should hold, as Envoy's
/// admin `/config_dump` prints it (see [`config_dump`]). 400 without `proxy`, 404 for a proxy
/// that is not connected.
async fn config_dump_handler(
    State(AdminState { cache, connections, .. }): State<AdminState>,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let Some(proxy) = query.get("proxy").filter(|p| !p.is_empty()) else {
        return (StatusCode::BAD_REQUEST, "config_dump: give the proxy's node id: /debug/config_dump?proxy=ID\n")
            .into_response();
    };
    let Some(conn) = connections.by_node(proxy) else {
        return (
            StatusCode::NOT_FOUND,
            format!("config_dump: proxy {proxy:?} is not connected (see /debug/syncz for the connected ones)\n"),
        )
            .into_response();
    };
    match config_dump(&cache, &conn) {
        Ok(value) => json_response(StatusCode::OK, &value),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("config_dump of {proxy}: {e}\n")).into_response(),
    }
}

/// What `conn`'s proxy should hold, as Envoy's `ConfigDump` JSON: `configs` with one
/// `ClustersConfigDump` (`dynamic_active_clusters`), `EndpointsConfigDump`
/// (`dynamic_endpoint_configs`), `ListenersConfigDump` (`dynamic_listeners` with `active_state`),
/// `RoutesConfigDump` (`dynamic_route_configs`) and `SecretsConfigDump`
/// (`dynamic_active_secrets`, private keys redacted as Envoy redacts them). The resources are
/// every one of the proxy's view, rendered for it (listeners bound to its address), with their
/// content versions as `version_info`. Costs the size of that proxy's view.
pub fn config_dump(cache: &Cache, conn: &Connection) -> Result<serde_json::Value, String> {
    use admin::{
        clusters_config_dump as cd, endpoints_config_dump as ed, listeners_config_dump as ld, routes_config_dump as rd,
        secrets_config_dump as sd,
    };
    let mut clusters = admin::ClustersConfigDump::default();
    let mut endpoints = admin::EndpointsConfigDump::default();
    let mut listeners = admin::ListenersConfigDump::default();
    let mut routes = admin::RoutesConfigDump::default();
    let mut secrets = admin::SecretsConfigDump::default();
    for ty in ResourceType::ALL {
        for name in cache.names(&conn.view, ty) {
            let Some(r) = cache.get(&conn.view, ty, &name) else { continue };
            let Some((version_info, any)) = crate::xds::delta::render(cache, &conn.view, conn.bind, ty, &r) else {
                continue;
            };
            match ty {
                ResourceType::Cluster => clusters.dynamic_active_clusters.push(cd::DynamicCluster {
                    version_info,
                    cluster: Some(any),
                    ..Default::default()
                }),
                ResourceType::ClusterLoadAssignment => endpoints
                    .dynamic_endpoint_configs
                    .push(ed::DynamicEndpointConfig { version_info, endpoint_config: Some(any), ..Default::default() }),
                ResourceType::Listener => listeners.dynamic_listeners.push(ld::DynamicListener {
                    name,
                    active_state: Some(ld::DynamicListenerState {
                        version_info,
                        listener: Some(any),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ResourceType::RouteConfiguration => routes.dynamic_route_configs.push(rd::DynamicRouteConfig {
                    version_info,
                    route_config: Some(any),
                    ..Default::default()
                }),
                ResourceType::Secret => secrets.dynamic_active_secrets.push(sd::DynamicSecret {
                    name,
                    version_info,
                    secret: Some(redact_secret(any)?),
                    ..Default::default()
                }),
            }
        }
    }
    // Envoy's order: bootstrap, clusters, endpoints (with include_eds), listeners, routes, secrets.
    fn pack<M: Message + Name>(m: &M) -> Any {
        Any { type_url: M::type_url(), value: m.encode_to_vec() }
    }
    let configs = vec![pack(&clusters), pack(&endpoints), pack(&listeners), pack(&routes), pack(&secrets)];
    let dump = admin::ConfigDump { configs };
    crate::json::try_to_json(&admin::ConfigDump::full_name(), &dump.encode_to_vec())
}

/// A Secret with its private key and password replaced by `[redacted]`, as Envoy's
/// `/config_dump` prints secrets.
fn redact_secret(any: Any) -> Result<Any, String> {
    use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source::Specifier};
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
    let mut secret = Secret::decode(&any.value[..]).map_err(|e| format!("secret does not decode: {e}"))?;
    let redact = |d: &mut Option<DataSource>| {
        if let Some(DataSource {
            specifier: Some(s @ (Specifier::InlineBytes(_) | Specifier::InlineString(_))), ..
        }) = d.as_mut()
        {
            *s = Specifier::InlineString("[redacted]".into());
        }
    };
    match &mut secret.r#type {
        Some(secret::Type::TlsCertificate(t)) => {
            redact(&mut t.private_key);
            redact(&mut t.password);
        }
        Some(secret::Type::GenericSecret(g)) => redact(&mut g.secret),
        Some(secret::Type::SessionTicketKeys(k)) => k.keys.iter_mut().for_each(|d| {
            if let Some(s @ (Specifier::InlineBytes(_) | Specifier::InlineString(_))) = d.specifier.as_mut() {
                *s = Specifier::InlineString("[redacted]".into());
            }
        }),
        _ => {}
    }
    Ok(Any { type_url: any.type_url, value: secret.encode_to_vec() })
}

/// `GET /ready`: 200 once every source has synced; 503 naming the sources still pending.
async fn ready(State(AdminState { cache, .. }): State<AdminState>) -> (StatusCode, String) {
    if cache.is_ready() {
        (StatusCode::OK, "ready\n".into())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: waiting for {}\n", cache.pending_sources().join(", ")))
    }
}

/// `GET /debug/resources`: every served resource's type, name, version and scope (`all`,
/// `sidecars` or a proxy class), one per line.
async fn resources(State(AdminState { cache, .. }): State<AdminState>) -> String {
    let mut out = String::new();
    for ((scope, ty, name), r) in cache.snapshot() {
        out.push_str(&format!("{} {} {} {}\n", ty.short(), name, r.version, scope));
    }
    out
}

/// `GET /debug/diagnostics`: what is wrong with the current input but does not keep it from
/// being served (fields not translated yet, routes to hosts or subsets that do not exist), one
/// per line: `<Kind> <namespace>/<name> <field>: <message>`.
async fn diagnostics(State(AdminState { cache, .. }): State<AdminState>) -> String {
    cache.diagnostics().iter().map(|d| format!("{d}\n")).collect()
}

/// `GET /stats`: resource counts per type; with `--verify`, the mismatches the last
/// verification found and how many ran.
async fn stats(State(AdminState { cache, verifier, .. }): State<AdminState>) -> String {
    let mut out: String = ResourceType::ALL
        .iter()
        .map(|ty| format!("meshflow_resources{{type=\"{}\"}} {}\n", ty.short(), cache.len(*ty)))
        .collect();
    if let Some(v) = verifier {
        out.push_str(&format!("meshflow_verify_mismatches {}\n", v.mismatches()));
        out.push_str(&format!("meshflow_verify_runs_total {}\n", v.runs()));
    }
    out
}

/// `GET /debug/verify`: the last verification (served configuration against the reference
/// translation of the same input): a summary line, then one line per mismatching resource
/// (`<type> <name>: missing|unexpected|differs ...`). 404 without `--verify`.
async fn verify(State(AdminState { verifier, .. }): State<AdminState>) -> (StatusCode, String) {
    let Some(v) = verifier else {
        return (StatusCode::NOT_FOUND, "verification is off: start meshflow serve with --verify INTERVAL\n".into());
    };
    match v.last() {
        None => (StatusCode::OK, "no verification has finished yet\n".into()),
        Some(o) => {
            let mut out = format!(
                "{} resources, {} mismatches, {:.3} s, finished at {} (unix)\n",
                o.resources,
                o.mismatches.len(),
                o.seconds,
                o.finished_at
            );
            for m in &o.mismatches {
                out.push_str(&format!("{m}\n"));
            }
            (StatusCode::OK, out)
        }
    }
}

pub async fn serve(
    cache: Arc<Cache>,
    addr: SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_with_verify(cache, None, addr, shutdown).await
}

/// [`serve`], with `/debug/verify` and the verify metrics when `verifier` is given.
pub async fn serve_with_verify(
    cache: Arc<Cache>,
    verifier: Option<Arc<Verifier>>,
    addr: SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_config(AdminConfig { cache, verifier, connections: Connections::new() }, addr, shutdown).await
}

/// The admin endpoint: `/ready`, `/metrics`, `/stats`, `/debug/resources`,
/// `/debug/diagnostics`, `/debug/verify`, `/debug/syncz`, `/debug/config_dump?proxy=ID`.
pub async fn serve_config(
    config: AdminConfig,
    addr: SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let AdminConfig { cache, verifier, connections } = config;
    let app = Router::new()
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/debug/resources", get(resources))
        .route("/debug/diagnostics", get(diagnostics))
        .route("/debug/syncz", get(syncz))
        .route("/debug/config_dump", get(config_dump_handler))
        .route("/stats", get(stats))
        .route("/debug/verify", get(verify))
        .with_state(AdminState { cache, verifier, connections });
    let listener =
        tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("binding admin address {addr}: {e}"))?;
    tracing::info!(%addr, "admin listening");
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await?;
    Ok(())
}
