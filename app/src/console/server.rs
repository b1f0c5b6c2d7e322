//! Server-only glue of the console: the operator from the request, its errors, and the
//! conversions from engine rows to the console's wire types.

use super::wire::{Bar, Filter, KindRow, KindTimes};
use crate::error::AppError;
use crate::server::{internal, not_found, refused, rfc3339, set_error_status};
use axum::http::StatusCode;
use errand_engine::{
    BulkAction, ConsoleError, Engine, EngineError, FinishedCount, JobId, JobQuery, JobState,
    Operator, Owner, Timing,
};
use leptos::prelude::*;

/// The console login that made this request (the server's gate puts it there).
pub fn operator() -> Result<Operator, AppError> {
    use_context::<axum::http::request::Parts>()
        .and_then(|parts| parts.extensions.get::<Operator>().cloned())
        .ok_or_else(|| {
            set_error_status(StatusCode::UNAUTHORIZED);
            AppError::Forbidden("log in to the operators' console first".into())
        })
}

/// What an operator sees when an action did nothing.
pub fn console_error(err: ConsoleError) -> AppError {
    match err {
        ConsoleError::ReadOnly => {
            set_error_status(StatusCode::FORBIDDEN);
            AppError::Forbidden(err.to_string())
        }
        ConsoleError::NotFound => not_found(),
        ConsoleError::Refused(message) => refused(StatusCode::CONFLICT, None, message),
        ConsoleError::Engine(err) => internal(err),
    }
}

/// A job id from a form or query field, or a 400 naming the field.
pub fn parse_id(text: &str, field: &str) -> Result<JobId, AppError> {
    text.parse().map_err(|_| {
        refused(
            StatusCode::BAD_REQUEST,
            Some(field),
            "is not a job id".into(),
        )
    })
}

/// A bulk action by name, or a 400.
pub fn bulk_action(name: &str) -> Result<BulkAction, AppError> {
    match name {
        "cancel" => Ok(BulkAction::Cancel),
        "retry" => Ok(BulkAction::Retry),
        "delete" => Ok(BulkAction::Delete),
        _ => Err(refused(
            StatusCode::BAD_REQUEST,
            Some("action"),
            "must be cancel, retry or delete".into(),
        )),
    }
}

/// The engine's query for the console's filter, or a 400 naming the field at fault.
pub fn console_query(filter: &Filter) -> Result<JobQuery, AppError> {
    let bad = |field: &str, message: &str| {
        refused(StatusCode::BAD_REQUEST, Some(field), message.to_owned())
    };
    let text = |value: &str| Some(value.trim().to_owned()).filter(|v| !v.is_empty());
    let state = match text(&filter.state) {
        None => None,
        Some(state) => Some(state.parse::<JobState>().map_err(|_| {
            bad(
                "state",
                "must be queued, running, succeeded, failed or cancelled",
            )
        })?),
    };
    let from = time_bound(&filter.from, false).map_err(|m| bad("from", m))?;
    let to = time_bound(&filter.to, true).map_err(|m| bad("to", m))?;
    let search = text(&filter.q);
    if search.as_ref().is_some_and(|q| q.len() > 200) {
        return Err(bad("q", "must be at most 200 characters"));
    }
    Ok(JobQuery {
        state,
        kind: text(&filter.kind),
        owner: text(&filter.owner).map(Owner),
        created_from: from,
        created_before: to,
        search,
    })
}

/// A time bound from `YYYY-MM-DD` (UTC; as an upper bound, the end of that day) or RFC 3339.
fn time_bound(text: &str, upper: bool) -> Result<Option<i64>, &'static str> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    if let Ok(date) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        let date = if upper {
            date.succ_opt().unwrap_or(date)
        } else {
            date
        };
        let at = date
            .and_hms_opt(0, 0, 0)
            .map(|at| at.and_utc().timestamp_millis());
        return at.map(Some).ok_or("is not a date");
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|at| Some(at.timestamp_millis()))
        .map_err(|_| "must be a date (2026-11-30) or a time (2026-11-30T12:00:00Z)")
}

/// A recurring job as the kinds page shows it.
pub fn schedule_row(status: &errand_engine::schedules::ScheduleStatus) -> super::wire::ScheduleRow {
    super::wire::ScheduleRow {
        name: status.schedule.name.clone(),
        cron: status.schedule.cron.clone(),
        timezone: status.schedule.timezone.name().to_owned(),
        kind: status.schedule.kind.clone(),
        next_run: status.next_run.map(rfc3339),
        last_run: status.last_run.map(rfc3339),
        last_job: status.last_job.map(|id| id.to_string()),
        paused_since: status.paused_since.map(rfc3339),
    }
}

/// Every kind with its queued and running jobs and whether it is paused.
pub async fn kind_rows(engine: &Engine) -> Result<Vec<KindRow>, EngineError> {
    let active = engine.registry().active_by_kind().await?;
    let paused = engine.paused_kinds().await?;
    Ok(engine
        .kinds()
        .names()
        .into_iter()
        .map(|kind| {
            let (queued, running) = active
                .iter()
                .find(|(name, _, _)| name == kind)
                .map_or((0, 0), |(_, queued, running)| (*queued, *running));
            KindRow {
                kind: kind.to_owned(),
                queued,
                running,
                paused_since: paused
                    .iter()
                    .find(|(name, _)| name == kind)
                    .map(|(_, at)| rfc3339(*at)),
                limit: engine
                    .limits()
                    .get(kind)
                    .map(|limit| limit.describe(engine.kinds().key_name(kind))),
            }
        })
        .collect())
}

/// The chart's bars: `length_s` before `now` cut into bars of `bar_s`, each with the jobs
/// that succeeded and failed in it (cancelled ones are not drawn).
pub fn overview_bars(finished: &[FinishedCount], now: i64, length_s: u64, bar_s: u64) -> Vec<Bar> {
    let bar_ms = (bar_s.max(60) * 1000) as i64;
    let count = (length_s * 1000).div_ceil(bar_ms as u64) as i64;
    let last = now.div_euclid(bar_ms) * bar_ms;
    let first = last - (count - 1) * bar_ms;
    let mut bars: Vec<Bar> = (0..count)
        .map(|i| Bar {
            at: first + i * bar_ms,
            succeeded: 0,
            failed: 0,
        })
        .collect();
    for row in finished {
        let at = row.minute * 60_000;
        if at < first {
            continue;
        }
        let Some(bar) = bars.get_mut(((at - first) / bar_ms) as usize) else {
            continue;
        };
        match row.state {
            JobState::Succeeded => bar.succeeded += row.jobs,
            JobState::Failed => bar.failed += row.jobs,
            _ => {}
        }
    }
    bars
}

/// The p50 and p95 of wait and run times per kind.
pub fn times_per_kind(timings: &[Timing]) -> Vec<KindTimes> {
    let mut kinds: Vec<&str> = timings.iter().map(|t| t.kind.as_str()).collect();
    kinds.sort_unstable();
    kinds.dedup();
    kinds
        .into_iter()
        .map(|kind| {
            let mine = timings.iter().filter(|t| t.kind == kind);
            let mut waits: Vec<i64> = mine.clone().map(|t| t.wait_ms).collect();
            let mut runs: Vec<i64> = mine.map(|t| t.run_ms).collect();
            waits.sort_unstable();
            runs.sort_unstable();
            KindTimes {
                kind: kind.to_owned(),
                jobs: runs.len() as u64,
                wait_p50: quantile(&waits, 0.5),
                wait_p95: quantile(&waits, 0.95),
                run_p50: quantile(&runs, 0.5),
                run_p95: quantile(&runs, 0.95),
            }
        })
        .collect()
}

/// The `q` quantile of sorted values (nearest rank); 0 for none.
fn quantile(sorted: &[i64], q: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_become_queries_and_bad_fields_are_named() {
        let filter = Filter {
            state: "failed".into(),
            from: "2026-11-30".into(),
            to: "2026-11-30".into(),
            q: " timeout ".into(),
            ..Filter::default()
        };
        let query = console_query(&filter).expect("valid");
        assert_eq!(query.state, Some(JobState::Failed));
        assert_eq!(
            query
                .created_before
                .zip(query.created_from)
                .map(|(b, f)| b - f),
            Some(86_400_000)
        );
        assert_eq!(query.search.as_deref(), Some("timeout"));
        for (field, bad) in [
            (
                "state",
                Filter {
                    state: "lost".into(),
                    ..Filter::default()
                },
            ),
            (
                "from",
                Filter {
                    from: "yesterday".into(),
                    ..Filter::default()
                },
            ),
        ] {
            let err = console_query(&bad).expect_err(field);
            assert!(err.for_field(field).is_some(), "{field}: {err:?}");
        }
    }

    #[test]
    fn bars_cover_the_window_and_count_each_minute_once() {
        let now = 10 * 60_000 + 30_000;
        let finished = [
            FinishedCount {
                minute: 10,
                kind: "sleep".into(),
                state: JobState::Succeeded,
                jobs: 3,
            },
            FinishedCount {
                minute: 9,
                kind: "sleep".into(),
                state: JobState::Failed,
                jobs: 2,
            },
            FinishedCount {
                minute: 1,
                kind: "sleep".into(),
                state: JobState::Failed,
                jobs: 7,
            },
        ];
        let bars = overview_bars(&finished, now, 300, 60);
        assert_eq!(bars.len(), 5);
        assert_eq!(bars.last().map(|b| (b.succeeded, b.failed)), Some((3, 0)));
        assert_eq!(bars[3].failed, 2);
        assert_eq!(
            bars.iter().map(|b| b.failed).sum::<u64>(),
            2,
            "minute 1 is outside"
        );
    }

    #[test]
    fn quantiles_take_the_nearest_rank() {
        let values: Vec<i64> = (1..=100).collect();
        assert_eq!(quantile(&values, 0.5), 50);
        assert_eq!(quantile(&values, 0.95), 95);
        assert_eq!(quantile(&[7], 0.95), 7);
        assert_eq!(quantile(&[], 0.5), 0);
    }
}
