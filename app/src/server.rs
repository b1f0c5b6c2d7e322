//! Server-only glue between the pages and the engine: the engine handle and session owner read
//! from the request context, and the one conversion from engine rows to wire types.

use crate::error::AppError;
use crate::wire::{JobDetail, JobList, JobState, JobView, LogLineView};
use errand_engine::{Engine, Job, LogLine, Owner};
use leptos::prelude::*;

/// The engine, provided to every server function and SSR render by the server.
pub fn engine() -> Result<Engine, AppError> {
    use_context::<Engine>().ok_or_else(|| {
        tracing::error!("the engine is missing from the Leptos context");
        AppError::Internal
    })
}

/// The session that made this request; the server's session layer puts it in every request.
pub fn owner() -> Result<Owner, AppError> {
    use_context::<axum::http::request::Parts>()
        .and_then(|parts| parts.extensions.get::<Owner>().cloned())
        .ok_or_else(|| {
            tracing::error!("no session owner on the request");
            AppError::Internal
        })
}

/// Bad input, as the form shows it (and a 400 for clients that read the status).
pub fn invalid(err: errand_engine::InvalidInput) -> AppError {
    set_error_status(axum::http::StatusCode::BAD_REQUEST);
    AppError::Invalid {
        field: err.field,
        message: err.message,
    }
}

/// No such job for this session (404).
pub fn not_found() -> AppError {
    set_error_status(axum::http::StatusCode::NOT_FOUND);
    AppError::NotFound
}

/// A request that cannot be done in the job's current state (409), or with an input that is
/// not a field of the form (400 with `field`).
pub fn refused(status: axum::http::StatusCode, field: Option<&str>, message: String) -> AppError {
    set_error_status(status);
    AppError::Invalid {
        field: field.map(str::to_owned),
        message,
    }
}

/// A submit refused by a limit (429): the owner's quota of unfinished jobs.
pub fn limited(message: String) -> AppError {
    set_error_status(axum::http::StatusCode::TOO_MANY_REQUESTS);
    AppError::Limited(message)
}

/// What a person sees when a submit is refused: bad input (400), a quota (429) or a failure.
pub fn submit_error(err: errand_engine::SubmitError) -> AppError {
    use errand_engine::SubmitError;
    match err {
        SubmitError::Invalid(err) => invalid(err),
        over @ SubmitError::OverQuota(_) => limited(over.to_string()),
        SubmitError::Engine(err) => internal(err),
    }
}

/// Logs a storage failure and turns it into the error a person sees.
pub fn internal(err: impl std::fmt::Display) -> AppError {
    tracing::error!(%err, "server function failed");
    AppError::Internal
}

/// Sets the status of a server function's error answer, for clients that read it (the hydrated
/// page, API tools). A plain HTML form post keeps its redirect back to the form, which carries
/// the error in its query string.
pub fn set_error_status(status: axum::http::StatusCode) {
    let plain_form_post = use_context::<axum::http::request::Parts>().is_some_and(|parts| {
        parts
            .headers
            .get(axum::http::header::ACCEPT)
            .and_then(|accept| accept.to_str().ok())
            .is_some_and(|accept| accept.contains("text/html"))
    });
    if !plain_form_post {
        set_status(status);
    }
}

/// Sets the HTTP status of the page being rendered.
pub fn set_status(status: axum::http::StatusCode) {
    if let Some(response) = use_context::<leptos_axum::ResponseOptions>() {
        response.set_status(status);
    }
}

/// The Content-Security-Policy of a page: its own scripts, the WASM they instantiate and the
/// inline hydration script carrying this response's `nonce`; its own stylesheet and images;
/// requests only to itself; no plugins, no `<base>`, no framing, forms only to itself.
pub fn page_policy(nonce: &str) -> String {
    format!(
        "default-src 'self'; script-src 'self' 'wasm-unsafe-eval' 'nonce-{nonce}'; \
         style-src 'self'; img-src 'self' data:; connect-src 'self'; object-src 'none'; \
         base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
    )
}

/// Sets [`page_policy`] on the page being rendered, with the nonce Leptos gives its scripts.
pub fn set_page_policy() {
    let nonce = leptos::nonce::use_nonce();
    let response = use_context::<leptos_axum::ResponseOptions>();
    if let (Some(nonce), Some(response)) = (nonce, response)
        && let Ok(value) = axum::http::HeaderValue::from_str(&page_policy(&nonce))
    {
        response.insert_header(axum::http::header::CONTENT_SECURITY_POLICY, value);
    }
}

/// The single place where an engine state becomes a wire state.
pub fn state_view(state: errand_engine::JobState) -> JobState {
    use errand_engine::JobState as S;
    match state {
        S::Queued => JobState::Queued,
        S::Running => JobState::Running,
        S::Succeeded => JobState::Succeeded,
        S::Failed => JobState::Failed,
        S::Cancelled => JobState::Cancelled,
    }
}

/// Unix milliseconds as RFC 3339 (UTC, millisecond precision).
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The single place where an engine job becomes a wire job.
pub fn job_view(job: &Job) -> JobView {
    JobView {
        id: job.id.to_string(),
        kind: job.kind.clone(),
        params: job.params.clone(),
        state: state_view(job.state),
        progress: job.progress,
        stage: job.stage.clone(),
        result: job.result.clone(),
        error: job.error.clone(),
        attempts: job.attempts,
        max_attempts: job.max_attempts,
        created_at: rfc3339(job.created_at),
        started_at: job.started_at.map(rfc3339),
        finished_at: job.finished_at.map(rfc3339),
        run_at: job.run_at.map(rfc3339),
        retry_of: job.retry_of.map(|id| id.to_string()),
        priority: job.priority,
        waiting: None,
        eta: eta(job, errand_engine::now_ms()).map(rfc3339),
    }
}

/// When a running job should finish at its rate so far: the time it took for its progress,
/// stretched to the whole. `None` before it reported 1 %.
fn eta(job: &Job, now: i64) -> Option<i64> {
    let progress = job.progress.filter(|p| (0.01..1.0).contains(p))?;
    let started = job
        .started_at
        .filter(|_| job.state == errand_engine::JobState::Running)?;
    let elapsed = (now - started).max(0) as f64;
    Some(now + (elapsed * (1.0 - progress) / progress) as i64)
}

/// [`job_view`] with why it waits, if it is queued: for the answers about one job.
pub async fn job_view_waiting(
    engine: &Engine,
    job: &Job,
) -> Result<JobView, errand_engine::EngineError> {
    let mut view = job_view(job);
    if let Some(waiting) = engine.waiting(job).await? {
        view.waiting = Some(waiting_view(&waiting));
        let text = crate::wire::waiting_text(&view, errand_engine::now_ms());
        if let Some(view_waiting) = view.waiting.as_mut() {
            view_waiting.text = text.unwrap_or_default();
        }
    }
    Ok(view)
}

/// The one conversion of the engine's `Waiting` (its `text` is filled by the caller).
fn waiting_view(waiting: &errand_engine::waiting::Waiting) -> crate::wire::WaitingView {
    use errand_engine::waiting::WaitReason as R;
    let (reason, ahead, busy, slots) = match &waiting.reason {
        R::Paused => ("paused", None, None, None),
        R::Scheduled => ("scheduled", None, None, None),
        R::Retry => ("retry", None, None, None),
        R::Rate => ("rate", None, None, None),
        R::Slot { busy, slots } => ("slot", None, Some(*busy), Some(*slots)),
        R::Queue { ahead } => ("queue", Some(*ahead), None, None),
    };
    crate::wire::WaitingView {
        reason: reason.to_owned(),
        text: String::new(),
        until: waiting.until.map(rfc3339),
        ahead,
        busy,
        slots,
        key: waiting.key.clone(),
    }
}

pub fn log_view(line: &LogLine) -> LogLineView {
    LogLineView {
        seq: line.seq,
        at: rfc3339(line.at),
        line: line.line.clone(),
    }
}

/// A job with its log lines and manual retries, and why it waits if it is queued.
pub async fn detail_view(
    engine: &Engine,
    detail: &errand_engine::JobDetail,
) -> Result<JobDetail, errand_engine::EngineError> {
    Ok(JobDetail {
        job: job_view_waiting(engine, &detail.job).await?,
        logs: detail.logs.iter().map(log_view).collect(),
        retried_as: detail.retried_as.iter().map(ToString::to_string).collect(),
    })
}

/// A page of jobs; a full page gets a cursor for the next one.
pub fn list_view(jobs: &[Job], limit: u32) -> JobList {
    let next_before = (jobs.len() as u32 == limit)
        .then(|| jobs.last().map(|job| job.id.to_string()))
        .flatten();
    JobList {
        jobs: jobs.iter().map(job_view).collect(),
        next_before,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_engine_state_maps_to_the_same_wire_name() {
        for state in errand_engine::JobState::ALL {
            assert_eq!(state_view(state).as_str(), state.as_str());
        }
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }
}
