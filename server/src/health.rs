//! Health checks for load balancers and orchestrators: `GET /healthz` (the process answers)
//! and `GET /readyz` (the registry and the queue answer, and where this process runs workers,
//! they run). Neither sets a cookie or touches a session.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use errand_engine::Engine;
use std::time::Duration;

/// How long a readiness check waits for the stores.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /healthz`: 200 while the process serves requests.
pub(crate) async fn healthz() -> &'static str {
    "ok\n"
}

/// What `/readyz` reports.
#[derive(Clone)]
pub(crate) struct Readiness {
    pub(crate) engine: Engine,
    /// This process runs workers (the `serve` and `worker` roles).
    pub(crate) runs_jobs: bool,
}

/// `GET /readyz`: 200 with what was checked, or 503 naming what is not ready.
pub(crate) async fn readyz(State(readiness): State<Readiness>) -> Response {
    let stores = match tokio::time::timeout(PING_TIMEOUT, readiness.engine.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => {
            tracing::warn!(%err, "readiness: a store did not answer");
            Err("the registry or the queue did not answer")
        }
        Err(_) => Err("the registry or the queue did not answer in time"),
    };
    let workers = match (readiness.runs_jobs, readiness.engine.workers_running()) {
        (false, _) => "not run here",
        (true, true) => "running",
        (true, false) => "not running",
    };
    let ready = stores.is_ok() && workers != "not running";
    let body = serde_json::json!({
        "ready": ready,
        "stores": stores.err().unwrap_or("ok"),
        "workers": workers,
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}
