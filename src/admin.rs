//! The admin HTTP endpoint: readiness and a debug view of what is served.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use crate::cache::Cache;
use crate::translate::ResourceType;

/// `GET /ready`: 200 once every source has synced; 503 naming the sources still pending.
async fn ready(State(cache): State<Arc<Cache>>) -> (StatusCode, String) {
    if cache.is_ready() {
        (StatusCode::OK, "ready\n".into())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: waiting for {}\n", cache.pending_sources().join(", ")))
    }
}

/// `GET /debug/resources`: every served resource's type, name, version and scope (`all`,
/// `sidecars` or a proxy class), one per line.
async fn resources(State(cache): State<Arc<Cache>>) -> String {
    let mut out = String::new();
    for ((scope, ty, name), r) in cache.snapshot() {
        out.push_str(&format!("{} {} {} {}\n", ty.short(), name, r.version, scope));
    }
    out
}

/// `GET /debug/diagnostics`: what is wrong with the current input but does not keep it from
/// being served (fields not translated yet, routes to hosts or subsets that do not exist), one
/// per line: `<Kind> <namespace>/<name> <field>: <message>`.
async fn diagnostics(State(cache): State<Arc<Cache>>) -> String {
    cache.diagnostics().iter().map(|d| format!("{d}\n")).collect()
}

/// `GET /stats`: resource counts per type.
async fn stats(State(cache): State<Arc<Cache>>) -> String {
    ResourceType::ALL
        .iter()
        .map(|ty| format!("meshflow_resources{{type=\"{}\"}} {}\n", ty.short(), cache.len(*ty)))
        .collect()
}

pub async fn serve(
    cache: Arc<Cache>,
    addr: SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/ready", get(ready))
        .route("/debug/resources", get(resources))
        .route("/debug/diagnostics", get(diagnostics))
        .route("/stats", get(stats))
        .with_state(cache);
    let listener =
        tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("binding admin address {addr}: {e}"))?;
    tracing::info!(%addr, "admin listening");
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await?;
    Ok(())
}
