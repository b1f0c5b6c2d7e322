//! The JSON API and the event streams. Handlers are thin: take the session's owner, parse, call
//! the engine, map errors through [`ApiError`].

use crate::state::AppState;
use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, KeepAliveStream, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Router, routing::get};
use errand_app::server::{detail_view, job_view, job_view_waiting, list_view, log_view};
use errand_engine::{
    CancelOutcome, Engine, EngineError, JobEvent, JobFilter, JobId, MAX_DELAY_MS, Owner, Params,
    Shared, SubmitError, SubmitOptions, Topic, now_ms,
};
use futures::stream::BoxStream;
use futures::{Stream, StreamExt, stream};
use serde::Deserialize;
use serde_json::{Value, json};
use std::convert::Infallible;
use tokio::sync::broadcast::error::RecvError;

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Default and largest page of `GET /api/jobs`.
const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 200;

/// The API's routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/jobs", get(list).post(submit))
        .route("/api/jobs/{id}", get(job).delete(delete_job))
        .route("/api/jobs/{id}/cancel", axum::routing::post(cancel))
        .route("/api/jobs/{id}/retry", axum::routing::post(retry))
        .route("/api/session", axum::routing::post(start_session))
        .route("/api/schedules", get(schedules))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
}

/// The event streams. They are kept apart from the other routes so that they are not wrapped
/// in the compression layer, whose response body carries an encoder's state (~6 KB) for every
/// open stream; their events are small and frequent anyway.
pub fn event_routes() -> Router<AppState> {
    Router::new()
        .route("/api/jobs/events", get(owner_events))
        .route("/api/jobs/{id}/events", get(job_events))
        .route("/api/admin/events", get(console_events))
}

/// Errors of the JSON API, each with its status code and a `{"error", "field"}` body.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest {
        message: String,
        field: Option<String>,
    },
    #[error("job not found")]
    NotFound,
    #[error("request body is larger than 64 KiB")]
    TooLarge,
    #[error("{0}")]
    Conflict(String),
    /// A rate limit or a quota (the rate limits add their own `Retry-After`).
    #[error("{0}")]
    TooMany(String),
    #[error("an internal error occurred")]
    Internal,
}

impl ApiError {
    fn bad(message: impl Into<String>, field: Option<&str>) -> Self {
        ApiError::BadRequest {
            message: message.into(),
            field: field.map(str::to_owned),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooMany(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let field = match &self {
            ApiError::BadRequest { field, .. } => field.clone(),
            _ => None,
        };
        (
            status,
            Json(json!({ "error": self.to_string(), "field": field })),
        )
            .into_response()
    }
}

impl From<EngineError> for ApiError {
    fn from(err: EngineError) -> Self {
        tracing::error!(%err, "API request failed");
        ApiError::Internal
    }
}

impl From<SubmitError> for ApiError {
    fn from(err: SubmitError) -> Self {
        match err {
            SubmitError::Invalid(invalid) => ApiError::BadRequest {
                message: invalid.message,
                // The engine names a parameter by itself; the request's own fields stay as
                // they are.
                field: invalid.field.map(|f| {
                    if ["kind", "priority", "run_at", "idempotency_key"].contains(&f.as_str()) {
                        f
                    } else {
                        format!("params.{f}")
                    }
                }),
            },
            over @ SubmitError::OverQuota(_) => ApiError::TooMany(over.to_string()),
            SubmitError::Engine(err) => err.into(),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge
        } else {
            ApiError::bad(rejection.body_text(), None)
        }
    }
}

fn parse_id(text: &str) -> Result<JobId, ApiError> {
    // An id that cannot exist is simply not found, like any other missing job.
    text.parse().map_err(|_| ApiError::NotFound)
}

/// `POST /api/jobs` `{"kind": "...", "params": {...}}` → 202 `{"id": "..."}`.
#[tracing::instrument(skip_all)]
async fn submit(
    State(engine): State<Engine>,
    Extension(owner): Extension<Owner>,
    headers: axum::http::HeaderMap,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let idempotency_key = match headers.get("idempotency-key") {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| ApiError::bad("must be printable text", Some("Idempotency-Key")))?
                .to_owned(),
        ),
    };
    let Json(mut body) = body?;
    let Some(object) = body.as_object_mut() else {
        return Err(ApiError::bad("the body must be a JSON object", None));
    };
    let kind = match object.remove("kind") {
        Some(Value::String(kind)) => kind,
        Some(_) => return Err(ApiError::bad("must be a string", Some("kind"))),
        None => return Err(ApiError::bad("is required", Some("kind"))),
    };
    let params = object.remove("params").unwrap_or_else(|| json!({}));
    let run_at = start_time(object.remove("delay_ms"), object.remove("run_at"))?;
    let priority = match object.remove("priority") {
        None | Some(Value::Null) => None,
        Some(level) => Some(level.as_i64().ok_or_else(|| {
            ApiError::bad("must be a whole number from 1 to 9", Some("priority"))
        })?),
    };
    if let Some(unknown) = object.keys().next() {
        return Err(ApiError::bad(
            format!("unknown field {unknown:?}"),
            Some(unknown),
        ));
    }
    let options = SubmitOptions {
        idempotency_key,
        run_at,
        priority,
        retry_of: None,
    };
    let submitted = engine
        .submit(&owner, &kind, Params::Json(params), options)
        .await?;
    let status = if submitted.existing {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((
        status,
        Json(json!({ "id": submitted.id.to_string(), "existing": submitted.existing })),
    ))
}

/// `POST /api/session` → 204: starts a session for a client that wants its cookie before its
/// first job (to watch `/api/jobs/events` from the start). Stores nothing: the cookie is the
/// session.
async fn start_session() -> StatusCode {
    StatusCode::NO_CONTENT
}

/// When a submitted job may start: `delay_ms` from now, or `run_at` (RFC 3339), or now.
fn start_time(delay_ms: Option<Value>, run_at: Option<Value>) -> Result<Option<i64>, ApiError> {
    match (delay_ms, run_at) {
        (Some(_), Some(_)) => Err(ApiError::bad(
            "give delay_ms or run_at, not both",
            Some("run_at"),
        )),
        (Some(delay), None) => {
            let ms = delay
                .as_u64()
                .and_then(|ms| i64::try_from(ms).ok())
                .filter(|ms| *ms <= MAX_DELAY_MS)
                .ok_or_else(|| {
                    ApiError::bad(
                        format!(
                            "must be a whole number of milliseconds, at most 30 days \
                             ({MAX_DELAY_MS})"
                        ),
                        Some("delay_ms"),
                    )
                })?;
            Ok(Some(now_ms() + ms))
        }
        (None, Some(at)) => {
            let at = at
                .as_str()
                .and_then(|text| chrono::DateTime::parse_from_rfc3339(text).ok())
                .ok_or_else(|| ApiError::bad("must be an RFC 3339 time", Some("run_at")))?;
            Ok(Some(at.timestamp_millis()))
        }
        (None, None) => Ok(None),
    }
}

/// `POST /api/jobs/{id}/retry` → 202 `{"id"}` of a new job like the failed or cancelled one.
async fn retry(
    State(engine): State<Engine>,
    Extension(owner): Extension<Owner>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    match engine
        .retry(&owner, parse_id(&id)?)
        .await?
        .ok_or(ApiError::NotFound)?
    {
        Ok(new_id) => Ok((
            StatusCode::ACCEPTED,
            Json(json!({ "id": new_id.to_string(), "retry_of": id })),
        )),
        Err(state) => Err(ApiError::Conflict(format!(
            "only failed or cancelled jobs can be retried; this one is {}",
            state.as_str()
        ))),
    }
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    limit: Option<String>,
    before: Option<String>,
    state: Option<String>,
}

/// `GET /api/jobs?limit=&before=` → this session's jobs, newest first.
async fn list(
    State(engine): State<Engine>,
    Extension(owner): Extension<Owner>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad(e.body_text(), None))?;
    let limit = match query.limit.as_deref() {
        None => DEFAULT_LIMIT,
        Some(text) => text
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::bad(format!("must be between 1 and {MAX_LIMIT}"), Some("limit"))
            })?,
    };
    let before = match query.before.as_deref() {
        None | Some("") => None,
        Some(text) => Some(
            text.parse()
                .map_err(|_| ApiError::bad("is not a job id", Some("before")))?,
        ),
    };
    let mut filter = JobFilter::owner(owner);
    if let Some(state) = query.state.as_deref().filter(|s| !s.is_empty()) {
        filter.state = Some(
            state
                .parse()
                .map_err(|_| ApiError::bad("is not a job state", Some("state")))?,
        );
    }
    let jobs = engine.list(&filter, limit, before).await?;
    Ok(Json(list_view(&jobs, limit)))
}

/// `GET /api/jobs/{id}` → the job, or 404 for unknown ids and other sessions' jobs.
async fn job(
    State(engine): State<Engine>,
    Extension(owner): Extension<Owner>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let job = engine
        .job(&owner, parse_id(&id)?)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(job_view_waiting(&engine, &job).await?))
}

/// `GET /api/schedules` → the recurring jobs (`--schedules`) with their next and last run.
async fn schedules(State(engine): State<Engine>) -> Result<impl IntoResponse, ApiError> {
    use errand_app::server::rfc3339;

    let schedules: Vec<Value> = engine
        .schedule_status()
        .await?
        .into_iter()
        .map(|status| {
            json!({
                "name": status.schedule.name,
                "cron": status.schedule.cron,
                "timezone": status.schedule.timezone.name(),
                "kind": status.schedule.kind,
                "missed": match status.schedule.missed {
                    errand_engine::schedules::Missed::Skip => "skip",
                    errand_engine::schedules::Missed::RunOnce => "run-once",
                },
                "next_run": status.next_run.map(rfc3339),
                "last_run": status.last_run.map(rfc3339),
                "last_job": status.last_job.map(|id| id.to_string()),
                "paused_since": status.paused_since.map(rfc3339),
            })
        })
        .collect();
    Ok(Json(json!({ "schedules": schedules })))
}

/// `POST /api/jobs/{id}/cancel` → 200 with the cancelled job when it had not started, 202 when
/// its handler was signalled, 409 when it already finished.
async fn cancel(
    State(engine): State<Engine>,
    Extension(owner): Extension<Owner>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    match engine.cancel(&owner, id).await?.ok_or(ApiError::NotFound)? {
        CancelOutcome::Cancelled(job) => Ok(Json(job_view(&job)).into_response()),
        CancelOutcome::Requested => Ok((
            StatusCode::ACCEPTED,
            Json(json!({ "id": id.to_string(), "cancel_requested": true })),
        )
            .into_response()),
        CancelOutcome::AlreadyFinished(state) => Err(ApiError::Conflict(format!(
            "the job already finished ({}); only queued or running jobs can be cancelled",
            state.as_str()
        ))),
    }
}

/// `DELETE /api/jobs/{id}` → 204; the job, its log and its files are gone. 409 while it runs.
async fn delete_job(
    State(engine): State<Engine>,
    Extension(owner): Extension<Owner>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    match engine
        .delete(&owner, parse_id(&id)?)
        .await?
        .ok_or(ApiError::NotFound)?
    {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(state) => Err(ApiError::Conflict(format!(
            "the job is {}; cancel it or wait until it finishes",
            state.as_str()
        ))),
    }
}

type EventStream = Sse<KeepAliveStream<BoxStream<'static, Result<Event, Infallible>>>>;

fn sse(stream: impl Stream<Item = Event> + Send + 'static) -> EventStream {
    // Counted as open while the stream lives.
    let open = crate::telemetry::OpenStream::start();
    let stream = stream.map(move |event| {
        let _open = &open;
        Ok(event)
    });
    Sse::new(stream.boxed()).keep_alive(KeepAlive::default())
}

fn event(name: &str, data: &impl serde::Serialize) -> Event {
    Event::default()
        .event(name)
        .json_data(data)
        .unwrap_or_else(|_| Event::default().comment("unserialisable event"))
}

/// An event from the hub, serialised once for all its subscribers.
fn shared_event<T, V: serde::Serialize>(
    name: &str,
    shared: &Shared<T>,
    view: impl FnOnce(&T) -> V,
) -> Event {
    let text = shared.rendered(|value| serde_json::to_string(&view(value)).unwrap_or_default());
    Event::default().event(name).data(&*text)
}

/// `GET /api/jobs/{id}/events`: a snapshot, then one event per change; ends after the terminal
/// state.
async fn job_events(
    State(engine): State<Engine>,
    Extension(owner): Extension<Owner>,
    Path(id): Path<String>,
) -> Result<EventStream, ApiError> {
    use errand_app::wire::event::{JOB, LOG, SNAPSHOT};

    let id = parse_id(&id)?;
    // A request for a job that is not the caller's subscribes to nothing.
    engine.job(&owner, id).await?.ok_or(ApiError::NotFound)?;
    // Subscribe before reading the snapshot, so nothing that happens after it can be missed.
    let receiver = engine.subscribe(Topic::Job(id));
    let detail = engine
        .job_with_logs(&owner, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let snapshot = event(SNAPSHOT, &detail_view(&engine, &detail).await?);
    if detail.job.state.is_terminal() {
        return Ok(sse(stream::once(async { snapshot })));
    }

    // While the job is queued, why it waits changes without an event of its own (jobs ahead
    // of it start, a slot frees): it is sent again every few seconds of quiet.
    let watch = Watch {
        receiver,
        engine,
        owner,
        queued: detail.job.state == errand_engine::JobState::Queued,
    };
    let changes = stream::unfold(Some(watch), move |watch| async move {
        let mut watch = watch?;
        let next = if watch.queued {
            match tokio::time::timeout(WAITING_REFRESH, watch.receiver.recv()).await {
                Ok(next) => next,
                Err(_) => {
                    let job = watch.engine.job(&watch.owner, id).await.ok().flatten()?;
                    return Some(watch.job_event(&job).await);
                }
            }
        } else {
            watch.receiver.recv().await
        };
        match next {
            // Rendered once for every watcher, but while queued (why it waits is per job).
            Ok(JobEvent::Changed(job)) if job.state != errand_engine::JobState::Queued => {
                let event = shared_event(JOB, &job, job_view);
                Some((event, watch.after(&job)))
            }
            Ok(JobEvent::Changed(job)) => Some(watch.job_event(&job).await),
            Ok(JobEvent::Log { line, .. }) => {
                Some((shared_event(LOG, &line, log_view), Some(watch)))
            }
            Err(RecvError::Lagged(_)) => {
                // Too slow to follow every change: send a fresh snapshot instead.
                let detail = watch
                    .engine
                    .job_with_logs(&watch.owner, id)
                    .await
                    .ok()
                    .flatten()?;
                let view = detail_view(&watch.engine, &detail).await.ok()?;
                Some((event(SNAPSHOT, &view), watch.after(&detail.job)))
            }
            Err(RecvError::Closed) => None,
        }
    });
    Ok(sse(stream::once(async { snapshot }).chain(changes)))
}

/// How long a queued job's event stream stays quiet before it sends why the job waits again.
const WAITING_REFRESH: std::time::Duration = std::time::Duration::from_secs(3);

/// One watcher of one job's event stream.
struct Watch {
    receiver: errand_engine::hub::Subscription,
    engine: Engine,
    owner: Owner,
    /// The job was queued at its last event.
    queued: bool,
}

impl Watch {
    /// The `job` event for the job as it is now, with why it waits if it is queued, and the
    /// watch to go on with.
    async fn job_event(self, job: &errand_engine::Job) -> (Event, Option<Self>) {
        use errand_app::wire::event::JOB;
        let view = job_view_waiting(&self.engine, job)
            .await
            .unwrap_or_else(|_| job_view(job));
        (event(JOB, &view), self.after(job))
    }

    /// The watch to go on with after an event of `job`: none once it is final.
    fn after(mut self, job: &errand_engine::Job) -> Option<Self> {
        self.queued = job.state == errand_engine::JobState::Queued;
        (!job.state.is_terminal()).then_some(self)
    }
}

/// `GET /api/admin/events` (console logins only, see `operators::gate`): every change to
/// any job, as `job` events; `resync` when this watcher fell behind and should re-read.
async fn console_events(
    State(engine): State<Engine>,
    // Put there by the console's gate; without it (a route outside the gate) this fails closed.
    Extension(_operator): Extension<errand_engine::Operator>,
) -> EventStream {
    use errand_app::wire::event::{JOB, RESYNC};

    let receiver = engine.subscribe(Topic::All);
    let changes = stream::unfold(receiver, |mut receiver| async move {
        loop {
            match receiver.recv().await {
                Ok(JobEvent::Changed(job)) => {
                    return Some((shared_event(JOB, &job, job_view), receiver));
                }
                Ok(JobEvent::Log { .. }) => continue,
                Err(RecvError::Lagged(_)) => {
                    return Some((Event::default().event(RESYNC).data("{}"), receiver));
                }
                Err(RecvError::Closed) => return None,
            }
        }
    });
    sse(changes)
}

/// `GET /api/jobs/events`: every change to this session's jobs, as `job` events.
async fn owner_events(
    State(engine): State<Engine>,
    Extension(owner): Extension<Owner>,
) -> EventStream {
    use errand_app::wire::event::JOB;

    let receiver = engine.subscribe(Topic::Owner(owner));
    let changes = stream::unfold(receiver, |mut receiver| async move {
        loop {
            match receiver.recv().await {
                Ok(JobEvent::Changed(job)) => {
                    return Some((shared_event(JOB, &job, job_view), receiver));
                }
                Ok(JobEvent::Log { .. }) | Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return None,
            }
        }
    });
    sse(changes)
}
