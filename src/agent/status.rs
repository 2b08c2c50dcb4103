//! The agent's status port (Istio's 15021): readiness of the proxy as a whole, and what the
//! supervisor knows about the Envoy process.
//!
//! | path | answer |
//! | --- | --- |
//! | `/ready`, `/healthz/ready` | 200 `ready` once Envoy is `LIVE` with its clusters and listeners from meshflow; else 503 `not ready: <reason>` |
//! | `/debug/envoy` | JSON: `proxy`, `state`, `pid`, `restarts`, `last_exit`, `admin_port`, `bootstrap` |

use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use serde::Serialize;

use super::envoy_admin::EnvoyAdmin;

/// Where the supervisor is with Envoy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Envoy has not been started yet.
    Starting,
    /// An Envoy process is running (which does not make it ready: see `/ready`).
    Running,
    /// Envoy exited unexpectedly; a restart is scheduled after a backoff.
    Restarting,
    /// A stop signal arrived: listeners drain, then Envoy is stopped.
    Draining,
    /// Envoy is stopped for good.
    Stopped,
}

/// What `/debug/envoy` reports.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    /// The node id.
    pub proxy: String,
    pub state: Phase,
    /// The running Envoy's pid.
    pub pid: Option<u32>,
    /// How many times Envoy has been restarted after exiting unexpectedly.
    pub restarts: u32,
    /// How the last Envoy exited (`exit status: 1`, `signal: 9 (SIGKILL)`).
    pub last_exit: Option<String>,
    /// Delay before the scheduled restart, while restarting.
    pub restart_in_ms: Option<u64>,
    pub admin_port: u16,
    /// The bootstrap file Envoy runs with.
    pub bootstrap: String,
}

/// Shared between the supervisor (which writes) and the status server (which reads).
pub struct Status {
    snapshot: Mutex<Snapshot>,
    admin: EnvoyAdmin,
    xds_addr: String,
}

impl Status {
    pub fn new(proxy: String, admin: EnvoyAdmin, xds_addr: String, bootstrap: String) -> Status {
        let snapshot = Snapshot {
            proxy,
            state: Phase::Starting,
            pid: None,
            restarts: 0,
            last_exit: None,
            restart_in_ms: None,
            admin_port: admin.port,
            bootstrap,
        };
        Status { snapshot: Mutex::new(snapshot), admin, xds_addr }
    }

    fn lock(&self) -> MutexGuard<'_, Snapshot> {
        // A panic while holding the lock leaves a plain-data snapshot: still readable.
        self.snapshot.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn update(&self, f: impl FnOnce(&mut Snapshot)) {
        f(&mut self.lock());
    }

    pub fn snapshot(&self) -> Snapshot {
        self.lock().clone()
    }

    /// `Ok` when the proxy is ready for traffic, else the reason it is not.
    pub async fn readiness(&self) -> Result<(), String> {
        let s = self.snapshot();
        match s.state {
            Phase::Running => self.admin.readiness(&self.xds_addr).await,
            Phase::Starting => Err("envoy not started yet".into()),
            Phase::Restarting => Err(format!(
                "envoy is restarting: it exited ({}), restart {} in {} ms",
                s.last_exit.as_deref().unwrap_or("unknown status"),
                s.restarts + 1,
                s.restart_in_ms.unwrap_or_default()
            )),
            Phase::Draining => Err("draining: the agent is shutting down".into()),
            Phase::Stopped => Err("envoy is stopped".into()),
        }
    }
}

async fn ready(State(status): State<Arc<Status>>) -> (StatusCode, String) {
    match status.readiness().await {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {reason}\n")),
    }
}

async fn debug_envoy(State(status): State<Arc<Status>>) -> axum::Json<Snapshot> {
    axum::Json(status.snapshot())
}

/// Serves the status port on an already bound listener, until the runtime stops.
pub async fn serve(listener: tokio::net::TcpListener, status: Arc<Status>) -> std::io::Result<()> {
    let app = Router::new()
        .route("/ready", get(ready))
        .route("/healthz/ready", get(ready))
        .route("/debug/envoy", get(debug_envoy))
        .with_state(status);
    axum::serve(listener, app).await
}
