//! The console's server functions (`/fn/admin_…`). The server's gate lets only console logins
//! reach them and puts the [`errand_engine::Operator`] in the request; the engine checks that
//! the operator's role may act and writes the audit log.

use super::wire::{
    AuditRow, BulkView, Filter, JobRecord, JobsPage, KindsPage, Overview, WorkerRow,
};
use crate::error::AppError;
use leptos::prelude::*;

/// Rows per page of the console's lists.
pub const PAGE_SIZE: u32 = 50;

/// The operator's role: `admin` or `viewer`.
#[server(prefix = "/fn", endpoint = "admin_role")]
pub async fn console_role() -> Result<String, AppError> {
    Ok(super::server::operator()?.role.as_str().to_owned())
}

/// One page of every owner's jobs matching `filter`, newest first, with the counts per state.
#[server(prefix = "/fn", endpoint = "admin_jobs")]
pub async fn console_jobs(
    #[server(default)] filter: Filter,
    before: Option<String>,
) -> Result<JobsPage, AppError> {
    use super::server::{console_query, operator, parse_id};
    use crate::server::{engine, internal, job_view};

    let who = operator()?;
    let engine = engine()?;
    let query = console_query(&filter)?;
    let before = before
        .filter(|b| !b.is_empty())
        .map(|b| parse_id(&b, "before"))
        .transpose()?;
    let registry = engine.registry();
    // The page and its counts are separate reads; on separate connections they overlap.
    let (jobs, counts) = futures::try_join!(
        registry.console_list(&query, before, PAGE_SIZE),
        registry.console_counts(&query, super::wire::SEARCH_COUNTED),
    )
    .map_err(internal)?;
    let next_before = (jobs.len() == PAGE_SIZE as usize)
        .then(|| jobs.last().map(|job| job.id.to_string()))
        .flatten();
    Ok(JobsPage {
        rows: jobs
            .iter()
            .map(|job| super::wire::Row {
                job: job_view(job),
                owner: job.owner.0.clone(),
            })
            .collect(),
        next_before,
        counts: counts
            .per_state
            .into_iter()
            .map(|(state, count)| (state.as_str().to_owned(), count))
            .collect(),
        counts_partial: counts.partial,
        kinds: engine
            .kinds()
            .names()
            .into_iter()
            .map(str::to_owned)
            .collect(),
        can_act: who.role.may_act(),
    })
}

/// Any job, with its owner, worker and raw parameters and result; `None` when there is none.
#[server(prefix = "/fn", endpoint = "admin_job")]
pub async fn console_job(id: String) -> Result<Option<JobRecord>, AppError> {
    use super::server::operator;
    use crate::server::{detail_view, engine, internal, rfc3339};

    let who = operator()?;
    let Ok(id) = id.parse() else {
        return Ok(None);
    };
    let engine = engine()?;
    let Some(detail) = engine.console_job(id).await.map_err(internal)? else {
        return Ok(None);
    };
    let registry = engine.registry();
    let (worker, attempts) =
        futures::try_join!(registry.worker_of(id), registry.attempts(id)).map_err(internal)?;
    let pretty = |value: &serde_json::Value| {
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    };
    Ok(Some(JobRecord {
        owner: detail.job.owner.0.clone(),
        worker,
        attempts: attempts
            .into_iter()
            .map(|attempt| super::wire::AttemptRow {
                number: attempt.attempt,
                worker: attempt.worker,
                started_at: rfc3339(attempt.started_at),
                ended_at: attempt.ended_at.map(rfc3339),
                outcome: attempt.outcome,
                error: attempt.error,
            })
            .collect(),
        params: pretty(&detail.job.params),
        result: detail.job.result.as_ref().map(pretty),
        detail: detail_view(&engine, &detail).await.map_err(internal)?,
        can_act: who.role.may_act(),
    }))
}

/// Retries, cancels or deletes one job (`action`); a retry goes to the new job's page, a
/// delete to the job list.
#[server(prefix = "/fn", endpoint = "admin_act")]
pub async fn console_act(id: String, action: String) -> Result<String, AppError> {
    use super::server::{console_error, operator};
    use crate::server::{engine, not_found, refused};

    let (engine, who) = (engine()?, operator()?);
    let id = id.parse().map_err(|_| not_found())?;
    match action.as_str() {
        "retry" => {
            let new_id = engine
                .operator_retry(&who, id)
                .await
                .map_err(console_error)?;
            leptos_axum::redirect(&format!("/admin/jobs/{new_id}"));
            Ok(format!("retried as {new_id}"))
        }
        "cancel" => {
            engine
                .operator_cancel(&who, id)
                .await
                .map_err(console_error)?;
            Ok("cancelled".into())
        }
        "delete" => {
            engine
                .operator_delete(&who, id)
                .await
                .map_err(console_error)?;
            leptos_axum::redirect("/admin/jobs");
            Ok("deleted".into())
        }
        _ => Err(refused(
            axum::http::StatusCode::BAD_REQUEST,
            Some("action"),
            "must be retry, cancel or delete".into(),
        )),
    }
}

/// How many jobs a bulk `action` would touch among those `filter` matches.
#[server(prefix = "/fn", endpoint = "admin_bulk_preview")]
pub async fn console_bulk_preview(
    #[server(default)] filter: Filter,
    action: String,
) -> Result<u64, AppError> {
    use super::server::{bulk_action, console_query, operator};
    use crate::server::{engine, internal};

    operator()?;
    let (action, query) = (bulk_action(&action)?, console_query(&filter)?);
    engine()?
        .bulk_preview(action, &query)
        .await
        .map_err(internal)
}

/// Starts a bulk `action` on every job `filter` matches, and goes to the list showing its
/// progress.
#[server(prefix = "/fn", endpoint = "admin_bulk")]
pub async fn console_bulk(
    #[server(default)] filter: Filter,
    action: String,
) -> Result<u64, AppError> {
    use super::server::{bulk_action, console_error, console_query, operator};
    use crate::server::engine;

    let (engine, who) = (engine()?, operator()?);
    let (action, query) = (bulk_action(&action)?, console_query(&filter)?);
    let target = match filter.query_string() {
        everything if everything.is_empty() => "every job".to_owned(),
        target => target,
    };
    let id = engine
        .start_bulk(&who, action, query, target)
        .await
        .map_err(console_error)?;
    let query = filter.query_string();
    let sep = if query.is_empty() { "" } else { "&" };
    leptos_axum::redirect(&format!("/admin/jobs?{query}{sep}bulk={id}"));
    Ok(id)
}

/// The recent bulk actions, newest first.
#[server(prefix = "/fn", endpoint = "admin_bulks")]
pub async fn console_bulks() -> Result<Vec<BulkView>, AppError> {
    use super::server::operator;
    use crate::server::engine;

    operator()?;
    Ok(engine()?
        .bulk_status()
        .into_iter()
        .map(|status| BulkView {
            id: status.id,
            action: status.action.as_str().to_owned(),
            target: status.target,
            expected: status.expected,
            seen: status.seen,
            touched: status.touched,
            finished: status.finished,
            error: status.error,
        })
        .collect())
}

/// Every kind with its queued and running jobs, and whether it is paused.
#[server(prefix = "/fn", endpoint = "admin_kinds")]
pub async fn console_kinds() -> Result<KindsPage, AppError> {
    use super::server::{kind_rows, operator, schedule_row};
    use crate::server::{engine, internal};

    let (who, engine) = (operator()?, engine()?);
    let schedules = engine.schedule_status().await.map_err(internal)?;
    Ok(KindsPage {
        kinds: kind_rows(&engine).await.map_err(internal)?,
        schedules: schedules.iter().map(schedule_row).collect(),
        can_act: who.role.may_act(),
    })
}

/// Runs a schedule's job now (`action` `run`; answers its id), or pauses or resumes it
/// (`pause`, `resume`).
#[server(prefix = "/fn", endpoint = "admin_schedule")]
pub async fn console_schedule(name: String, action: String) -> Result<Option<String>, AppError> {
    use super::server::{console_error, operator};
    use crate::server::{engine, refused};
    use axum::http::StatusCode;

    let (engine, who) = (engine()?, operator()?);
    match action.as_str() {
        "run" => {
            let id = engine.run_schedule_now(&who, &name).await;
            id.map(|id| Some(id.to_string())).map_err(console_error)
        }
        "pause" | "resume" => {
            let changed = engine.pause_schedule(&who, &name, action == "pause").await;
            changed.map(|()| None).map_err(console_error)
        }
        _ => Err(refused(
            StatusCode::BAD_REQUEST,
            Some("action"),
            "must be run, pause or resume".into(),
        )),
    }
}

/// Pauses (`pause` true) or resumes a kind.
#[server(prefix = "/fn", endpoint = "admin_pause")]
pub async fn console_pause(kind: String, pause: bool) -> Result<u64, AppError> {
    use super::server::{console_error, operator};
    use crate::server::engine;

    let (engine, who) = (engine()?, operator()?);
    let changed = if pause {
        engine.pause_kind(&who, &kind).await
    } else {
        engine.resume_kind(&who, &kind).await
    };
    changed.map_err(console_error)
}

/// Every worker process the registry knows, alive or dead.
#[server(prefix = "/fn", endpoint = "admin_workers")]
pub async fn console_workers() -> Result<Vec<WorkerRow>, AppError> {
    use super::server::operator;
    use crate::server::{engine, internal, rfc3339};

    operator()?;
    let (workers, now) = engine()?.registry().workers().await.map_err(internal)?;
    Ok(workers
        .into_iter()
        .map(|worker| {
            let silent_ms = (now - worker.last_seen).max(0);
            WorkerRow {
                alive: silent_ms < errand_engine::queue::ORPHANED_AFTER.as_millis() as i64,
                silent_s: silent_ms / 1000,
                name: worker.name,
                host: worker.host,
                role: worker.role,
                version: worker.version,
                started_at: rfc3339(worker.started_at),
                last_seen: rfc3339(worker.last_seen),
                running: worker.running,
                concurrency: worker.concurrency,
            }
        })
        .collect())
}

/// The audit log, newest first, older than entry `before`.
#[server(prefix = "/fn", endpoint = "admin_audit")]
pub async fn console_audit(before: Option<i64>) -> Result<Vec<AuditRow>, AppError> {
    use super::server::operator;
    use crate::server::{engine, internal, rfc3339};

    operator()?;
    let entries = engine()?
        .registry()
        .audit_log(before, PAGE_SIZE)
        .await
        .map_err(internal)?;
    Ok(entries
        .into_iter()
        .map(|(number, entry)| AuditRow {
            number,
            at: rfc3339(entry.at),
            role: entry.role,
            session: entry.session,
            action: entry.action,
            target: entry.target,
            jobs: entry.jobs,
        })
        .collect())
}

/// The overview: counts per state, jobs per kind, finished jobs per bar over `window`, and
/// wait and run times per kind.
#[server(prefix = "/fn", endpoint = "admin_overview")]
pub async fn console_overview(window: String) -> Result<Overview, AppError> {
    use super::server::{kind_rows, operator, overview_bars, times_per_kind};
    use crate::server::{engine, internal};

    operator()?;
    let engine = engine()?;
    let (name, length_s, bar_s) = super::wire::window(&window);
    let now = errand_engine::now_ms();
    let registry = engine.registry();
    let counts = registry
        .console_counts(&Default::default(), 0)
        .await
        .map_err(internal)?;
    let since_minute = (now - length_s as i64 * 1000).div_euclid(60_000);
    let finished = registry
        .finished_since(since_minute)
        .await
        .map_err(internal)?;
    let timings = registry
        .timings(now - length_s as i64 * 1000, 5_000)
        .await
        .map_err(internal)?;
    Ok(Overview {
        window: name.to_owned(),
        bar_s,
        bars: overview_bars(&finished, now, length_s, bar_s),
        counts: counts
            .per_state
            .into_iter()
            .map(|(state, count)| (state.as_str().to_owned(), count))
            .collect(),
        kinds: kind_rows(&engine).await.map_err(internal)?,
        times: times_per_kind(&timings),
    })
}
