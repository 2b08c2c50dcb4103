//! The admin HTTP endpoint: readiness and a debug view of what is served.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use crate::cache::Cache;
use crate::translate::ResourceType;
use crate::verify::Verifier;

#[derive(Clone)]
struct AdminState {
    cache: Arc<Cache>,
    verifier: Option<Arc<Verifier>>,
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
async fn stats(State(AdminState { cache, verifier }): State<AdminState>) -> String {
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
    let app = Router::new()
        .route("/ready", get(ready))
        .route("/debug/resources", get(resources))
        .route("/debug/diagnostics", get(diagnostics))
        .route("/stats", get(stats))
        .route("/debug/verify", get(verify))
        .with_state(AdminState { cache, verifier });
    let listener =
        tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("binding admin address {addr}: {e}"))?;
    tracing::info!(%addr, "admin listening");
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await?;
    Ok(())
}
