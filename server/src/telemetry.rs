//! Metrics in the Prometheus text format (the `metrics` facade, rendered by
//! `metrics-exporter-prometheus`): the engine's job counters and timings, the jobs waiting and
//! running per kind (read from the registry at each scrape, so every process reports the whole
//! deployment's), open event streams, and HTTP requests by route and status.

use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use errand_engine::Engine;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Open server-sent event streams (this process).
pub const OPEN_STREAMS: &str = "errand_event_streams_open";
/// Jobs waiting in the queue, by kind (the whole deployment, from the registry).
pub const WAITING: &str = "errand_jobs_waiting";
/// Jobs running, by kind (the whole deployment, from the registry).
pub const RUNNING: &str = "errand_jobs_running";
/// HTTP requests answered, by route, method and status.
pub const REQUESTS: &str = "errand_http_requests_total";
/// HTTP request durations, by route.
pub const REQUEST_TIME: &str = "errand_http_request_duration_seconds";

/// Histogram buckets (seconds): from a fast request to an hour-long job.
const BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
    3600.0,
];

/// The process's Prometheus recorder, installed on first use (one per process: tests build
/// several servers in one). `None` if another recorder was installed first.
pub fn recorder() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets(BUCKETS)
                .ok()?
                .install_recorder()
                .map_err(|err| tracing::warn!(%err, "could not install the metrics recorder"))
                .ok()?;
            errand_engine::telemetry::describe();
            metrics::describe_gauge!(OPEN_STREAMS, "Open server-sent event streams");
            metrics::describe_gauge!(WAITING, "Jobs queued, by kind (whole deployment)");
            metrics::describe_gauge!(RUNNING, "Jobs running, by kind (whole deployment)");
            metrics::describe_counter!(REQUESTS, "HTTP requests, by route, method and status");
            metrics::describe_histogram!(
                REQUEST_TIME,
                metrics::Unit::Seconds,
                "HTTP request duration, by route"
            );
            Some(handle)
        })
        .as_ref()
}

/// The metrics page: the registry's per-kind gauges refreshed, then everything rendered.
pub async fn render(engine: &Engine) -> Response {
    let Some(handle) = recorder() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "metrics are unavailable").into_response();
    };
    match tokio::time::timeout(Duration::from_secs(5), engine.registry().active_by_kind()).await {
        Ok(Ok(active)) => {
            for kind in engine.kinds().names() {
                let (queued, running) = active
                    .iter()
                    .find(|(name, _, _)| name == kind)
                    .map_or((0, 0), |(_, queued, running)| (*queued, *running));
                metrics::gauge!(WAITING, "kind" => kind).set(queued as f64);
                metrics::gauge!(RUNNING, "kind" => kind).set(running as f64);
            }
        }
        Ok(Err(err)) => tracing::warn!(%err, "metrics: could not count the active jobs"),
        Err(_) => tracing::warn!("metrics: counting the active jobs timed out"),
    }
    handle.run_upkeep();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
        .into_response()
}

/// Counts every request by its route (the pattern it matched, so ids do not make new series),
/// method and status, and times it.
pub async fn count_requests(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let began = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::histogram!(REQUEST_TIME, "route" => route.clone())
        .record(began.elapsed().as_secs_f64());
    metrics::counter!(REQUESTS, "route" => route, "method" => method, "status" => status)
        .increment(1);
    response
}

/// Counts an open event stream while it lives.
pub struct OpenStream(());

impl OpenStream {
    pub fn start() -> Self {
        metrics::gauge!(OPEN_STREAMS).increment(1.0);
        Self(())
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        metrics::gauge!(OPEN_STREAMS).decrement(1.0);
    }
}

/// `GET /metrics` where it shares the main address: for a console login or password only.
pub async fn metrics_behind_login(
    State(state): State<crate::AppState>,
    request: Request,
) -> Response {
    let Some(console) = state.console.clone() else {
        return (
            StatusCode::NOT_FOUND,
            "metrics are off: set --metrics-addr, or --admin-password to serve them here",
        )
            .into_response();
    };
    let credentials = console.credentials(&request);
    drop(request);
    if !matches!(console.operator(credentials).await, Some(Ok(_))) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer realm=\"errand metrics\"")],
            "send the admin or viewer password as a bearer token",
        )
            .into_response();
    }
    render(&state.engine).await
}
