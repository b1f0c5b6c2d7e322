//! Server functions for jobs. Each is thin: read the session, validate, call the engine, map the
//! error.

use crate::error::AppError;
use crate::wire::{JobDetail, JobList};
use leptos::prelude::*;
use std::collections::BTreeMap;

/// Most jobs one page of the list shows.
pub const PAGE_SIZE: u32 = 50;

/// Starts a job from the form and sends the browser to its page. Works as a plain form POST
/// (the server answers with a redirect) and from the hydrated page (client-side navigation).
/// The form carries an idempotency key rendered with it, so a double submit makes one job;
/// `delay_s` (optional) schedules the job that many seconds ahead; `priority` (optional, 1 to
/// 9) orders it among waiting jobs.
#[server(prefix = "/fn", endpoint = "start_job")]
pub async fn start_job(
    kind: String,
    fields: BTreeMap<String, String>,
    idempotency_key: Option<String>,
    delay_s: Option<String>,
    priority: Option<String>,
) -> Result<String, AppError> {
    use crate::server::{engine, invalid, owner, submit_error};
    use errand_engine::{Params, SubmitOptions, form_delay, form_priority, now_ms};

    let (engine, owner) = (engine()?, owner()?);
    let options = SubmitOptions {
        idempotency_key: idempotency_key.filter(|k| !k.is_empty()),
        run_at: form_delay(delay_s.as_deref(), now_ms()).map_err(invalid)?,
        priority: form_priority(priority.as_deref()).map_err(invalid)?,
        retry_of: None,
    };
    let id = engine
        .submit(&owner, &kind, Params::Form(fields), options)
        .await
        .map(|submitted| submitted.id)
        .map_err(submit_error)?;
    leptos_axum::redirect(&format!("/jobs/{id}"));
    Ok(id.to_string())
}

/// One of this browser's jobs with its log; `None` when there is no such job for it.
#[server(prefix = "/fn", endpoint = "get_job")]
pub async fn get_job(id: String) -> Result<Option<JobDetail>, AppError> {
    use crate::server::{detail_view, engine, internal, owner};

    let Ok(id) = id.parse() else {
        return Ok(None);
    };
    let engine = engine()?;
    let Some(found) = engine
        .job_with_logs(&owner()?, id)
        .await
        .map_err(internal)?
    else {
        return Ok(None);
    };
    detail_view(&engine, &found)
        .await
        .map(Some)
        .map_err(internal)
}

/// Cancels one of this browser's jobs (queued: at once; running: its handler is signalled).
#[server(prefix = "/fn", endpoint = "cancel_job")]
pub async fn cancel_job(id: String) -> Result<(), AppError> {
    use crate::server::{engine, internal, not_found, owner, refused};
    use axum::http::StatusCode;
    use errand_engine::CancelOutcome;

    let id = id.parse().map_err(|_| not_found())?;
    match engine()?.cancel(&owner()?, id).await.map_err(internal)? {
        None => Err(not_found()),
        Some(CancelOutcome::AlreadyFinished(state)) => Err(refused(
            StatusCode::CONFLICT,
            None,
            format!("the job already finished ({})", state.as_str()),
        )),
        Some(_) => Ok(()),
    }
}

/// Starts a new job like one of this browser's failed or cancelled jobs, and goes to its page.
#[server(prefix = "/fn", endpoint = "retry_job")]
pub async fn retry_job(id: String) -> Result<String, AppError> {
    use crate::server::{engine, not_found, owner, refused, submit_error};
    use axum::http::StatusCode;

    let id = id.parse().map_err(|_| not_found())?;
    let retried = engine()?.retry(&owner()?, id).await.map_err(submit_error)?;
    match retried {
        None => Err(not_found()),
        Some(Err(state)) => Err(refused(
            StatusCode::CONFLICT,
            None,
            format!(
                "only failed or cancelled jobs can be retried; this one is {}",
                state.as_str()
            ),
        )),
        Some(Ok(new_id)) => {
            leptos_axum::redirect(&format!("/jobs/{new_id}"));
            Ok(new_id.to_string())
        }
    }
}

/// This browser's jobs, newest first.
#[server(prefix = "/fn", endpoint = "list_jobs")]
pub async fn list_jobs(before: Option<String>) -> Result<JobList, AppError> {
    use crate::server::{engine, internal, list_view, owner, refused};

    let before = match before.as_deref().map(str::parse) {
        None => None,
        Some(Ok(id)) => Some(id),
        Some(Err(_)) => {
            return Err(refused(
                axum::http::StatusCode::BAD_REQUEST,
                Some("before"),
                "is not a job id".into(),
            ));
        }
    };
    let jobs = engine()?
        .list(
            &errand_engine::JobFilter::owner(owner()?),
            PAGE_SIZE,
            before,
        )
        .await
        .map_err(internal)?;
    Ok(list_view(&jobs, PAGE_SIZE))
}
