//! Wire types: what the browser and API clients receive. Kept apart from the engine's rows; the
//! server converts a row into these in one place (`crate::server::convert`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A job's state as the browser and the JSON API name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// True once the job will not change any more.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }
}

/// A job as `GET /api/jobs/{id}` returns it (the API contract's exact fields).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobView {
    pub id: String,
    pub kind: String,
    pub params: Value,
    pub state: JobState,
    /// 0..=1, or `null` before the handler first reports.
    pub progress: Option<f64>,
    pub stage: Option<String>,
    pub result: Option<Value>,
    pub error: Option<String>,
    pub attempts: u32,
    /// Runs allowed in all (the kind's retry policy).
    pub max_attempts: u32,
    /// RFC 3339.
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// While queued: when it may start (scheduled, or the next retry).
    pub run_at: Option<String>,
    /// The job this one retries by hand.
    pub retry_of: Option<String>,
    /// 1 to 9: when jobs wait for a worker, higher runs first.
    #[serde(default = "default_priority")]
    pub priority: u8,
    /// While queued, in the answers about one job (its page, `GET /api/jobs/{id}`, its event
    /// stream): why it has not started and until when. `null` otherwise, and in lists.
    #[serde(default)]
    pub waiting: Option<WaitingView>,
    /// While running, once it reported progress: when it should finish at its rate so far
    /// (RFC 3339).
    #[serde(default)]
    pub eta: Option<String>,
}

/// Why a queued job has not started (the engine's `waiting::Waiting`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitingView {
    /// `paused`, `scheduled`, `retry`, `rate`, `slot` or `queue`.
    pub reason: String,
    /// The same in words, as the job's page says it.
    pub text: String,
    /// When it starts (RFC 3339): exact for `scheduled`, `retry` and `rate`, an estimate from
    /// recent throughput for `queue`; `null` for `paused` and `slot`.
    pub until: Option<String>,
    /// `queue`: how many jobs are ahead of it (counted up to 10,000).
    pub ahead: Option<u64>,
    /// `slot`: how many of its limit's slots are busy, of how many.
    pub busy: Option<u64>,
    pub slots: Option<u32>,
    /// `rate` and `slot` under a per-key limit: the key (a webhook's host, say).
    pub key: Option<String>,
}

/// What a queued job's page says of its wait, counting down to `now` (unix ms); `None` when
/// it is not queued or nothing holds it. Jobs seen without a `waiting` (in a list's events)
/// still get their scheduled time or retry from `run_at`.
pub fn waiting_text(job: &JobView, now: i64) -> Option<String> {
    use crate::clock::{seconds_until, time_of_day};
    if job.state != JobState::Queued {
        return None;
    }
    let scheduled = |at: &str| {
        let seconds = seconds_until(at, now);
        if job.attempts > 0 {
            format!(
                "Retrying in {seconds} s (attempt {} of {})",
                job.attempts + 1,
                job.max_attempts
            )
        } else {
            format!("Scheduled for {} UTC (in {seconds} s)", time_of_day(at))
        }
    };
    let Some(waiting) = &job.waiting else {
        return job.run_at.as_deref().map(scheduled);
    };
    let limited = || match &waiting.key {
        Some(key) => format!("{} for {key}", job.kind),
        None => job.kind.clone(),
    };
    let until = waiting.until.as_deref();
    Some(match waiting.reason.as_str() {
        "paused" => "Paused by the operator".to_owned(),
        "scheduled" | "retry" => scheduled(until.unwrap_or_default()),
        "rate" => format!(
            "Rate limit for {}: next slot in {} s",
            limited(),
            until.map_or(0, |at| seconds_until(at, now))
        ),
        "slot" => format!(
            "Waiting for a {} slot ({} of {} busy)",
            limited(),
            waiting.busy.unwrap_or(0),
            waiting.slots.unwrap_or(0)
        ),
        _ => {
            let ahead = match waiting.ahead.unwrap_or(0) {
                0 => "Next in line".to_owned(),
                1 => "1 job ahead of it".to_owned(),
                n if n >= 10_000 => "10,000 or more jobs ahead of it".to_owned(),
                n => format!("{n} jobs ahead of it"),
            };
            match until {
                Some(at) => format!("{ahead}; expected to start in {} s", seconds_until(at, now)),
                None => ahead,
            }
        }
    })
}

/// Seconds left until a running job's estimated finish, by its `eta`.
pub fn seconds_left(job: &JobView, now: i64) -> Option<i64> {
    (job.state == JobState::Running)
        .then_some(job.eta.as_deref())
        .flatten()
        .map(|eta| crate::clock::seconds_until(eta, now))
}

fn default_priority() -> u8 {
    5
}

#[cfg(test)]
impl JobView {
    /// A `sleep` job in `state` with nothing else set, for tests.
    pub(crate) fn example(id: &str, state: JobState) -> Self {
        JobView {
            id: id.into(),
            kind: "sleep".into(),
            params: Value::Null,
            state,
            progress: None,
            stage: None,
            result: None,
            error: None,
            attempts: 0,
            max_attempts: 1,
            created_at: String::new(),
            started_at: None,
            finished_at: None,
            run_at: None,
            retry_of: None,
            priority: default_priority(),
            waiting: None,
            eta: None,
        }
    }
}

impl JobView {
    /// Progress as a whole percentage, if known.
    pub fn percent(&self) -> Option<u32> {
        self.progress.map(percent)
    }

    /// How far along its life the job is: a number that never goes down as the job moves on
    /// (queued for attempt n, running attempt n, queued for attempt n + 1, …, finished), so a
    /// page can tell a stale copy (a snapshot read before the changes it already showed) from a
    /// newer one.
    fn stage_of_life(&self) -> u64 {
        let attempts = u64::from(self.attempts);
        match self.state {
            JobState::Queued => attempts * 2,
            JobState::Running => (attempts * 2).saturating_sub(1),
            _ => u64::MAX,
        }
    }

    /// True when this copy of the job is not older than `shown`: further along its life, or
    /// as far with at least as much progress.
    pub fn is_not_older_than(&self, shown: &JobView) -> bool {
        let (mine, theirs) = (self.stage_of_life(), shown.stage_of_life());
        mine > theirs
            || (mine == theirs && self.progress.unwrap_or(-1.0) >= shown.progress.unwrap_or(-1.0))
    }
}

/// A fraction (0..=1) as a whole percentage, rounded down so 100% means done.
pub fn percent(fraction: f64) -> u32 {
    (fraction.clamp(0.0, 1.0) * 100.0).floor() as u32
}

/// One line of a job's log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLineView {
    pub seq: i64,
    pub at: String,
    pub line: String,
}

/// A job with its log, as the job page needs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobDetail {
    pub job: JobView,
    pub logs: Vec<LogLineView>,
    /// Jobs that retry this one by hand, newest first.
    #[serde(default)]
    pub retried_as: Vec<String>,
}

/// One page of a session's jobs, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobList {
    pub jobs: Vec<JobView>,
    /// Pass as `before` to get the next (older) page; `None` on the last page.
    pub next_before: Option<String>,
}

/// Names of the server-sent events on `/api/jobs/{id}/events` and `/api/jobs/events`.
pub mod event {
    /// The job and its log as they are now (`JobDetail`); always the first event of a job stream.
    pub const SNAPSHOT: &str = "snapshot";
    /// The job changed (`JobView`).
    pub const JOB: &str = "job";
    /// A log line was appended (`LogLineView`).
    pub const LOG: &str = "log";
    /// The watcher fell behind and missed changes: re-read what it shows (console streams).
    pub const RESYNC: &str = "resync";
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(state: JobState, attempts: u32, progress: Option<f64>) -> JobView {
        JobView {
            attempts,
            progress,
            ..JobView::example("j", state)
        }
    }

    #[test]
    fn a_job_s_life_only_moves_forward() {
        let life = [
            view(JobState::Queued, 0, None),
            view(JobState::Running, 1, None),
            view(JobState::Running, 1, Some(0.5)),
            view(JobState::Queued, 1, None),
            view(JobState::Running, 2, Some(0.1)),
            view(JobState::Succeeded, 2, Some(1.0)),
        ];
        for (i, later) in life.iter().enumerate() {
            for earlier in &life[..i] {
                assert!(
                    later.is_not_older_than(earlier),
                    "{later:?} after {earlier:?}"
                );
                assert!(
                    !earlier.is_not_older_than(later),
                    "{earlier:?} before {later:?}"
                );
            }
            assert!(later.is_not_older_than(later));
        }
    }

    #[test]
    fn percent_rounds_down_and_clamps() {
        assert_eq!(percent(0.0), 0);
        assert_eq!(percent(0.999), 99);
        assert_eq!(percent(1.0), 100);
        assert_eq!(percent(0.5), 50);
        assert_eq!(percent(1.5), 100);
        assert_eq!(percent(-0.2), 0);
    }

    #[test]
    fn states_serialise_lowercase() {
        let json = serde_json::to_string(&JobState::Succeeded).unwrap_or_default();
        assert_eq!(json, "\"succeeded\"");
        assert!(JobState::Cancelled.is_terminal());
        assert!(!JobState::Running.is_terminal());
    }

    /// A queued `sleep` job waiting for `reason`, until 2026-01-01T00:00:10Z.
    fn waiting(reason: &str) -> JobView {
        let mut job = JobView::example("j", JobState::Queued);
        job.waiting = Some(WaitingView {
            reason: reason.into(),
            text: String::new(),
            until: Some("2026-01-01T00:00:10.000Z".into()),
            ahead: None,
            busy: None,
            slots: None,
            key: None,
        });
        job
    }

    fn edit(job: &mut JobView, change: impl FnOnce(&mut WaitingView)) {
        if let Some(waiting) = job.waiting.as_mut() {
            change(waiting);
        }
    }

    #[test]
    fn each_reason_to_wait_is_said_with_its_count_down() {
        // 2026-01-01T00:00:07.500Z: 2.5 s before `until`, which counts as 3.
        let now = 1_767_225_607_500;
        let text = |job: &JobView| waiting_text(job, now).unwrap_or_default();
        assert_eq!(
            text(&waiting("scheduled")),
            "Scheduled for 00:00:10 UTC (in 3 s)"
        );
        let mut retry = waiting("retry");
        (retry.attempts, retry.max_attempts) = (1, 3);
        assert_eq!(text(&retry), "Retrying in 3 s (attempt 2 of 3)");
        let mut rate = waiting("rate");
        rate.kind = "webhook".into();
        edit(&mut rate, |w| w.key = Some("api.example.com".into()));
        assert_eq!(
            text(&rate),
            "Rate limit for webhook for api.example.com: next slot in 3 s"
        );
        let mut slot = waiting("slot");
        slot.kind = "thumbnail".into();
        edit(&mut slot, |w| (w.busy, w.slots) = (Some(4), Some(4)));
        assert_eq!(text(&slot), "Waiting for a thumbnail slot (4 of 4 busy)");
        assert_eq!(text(&waiting("paused")), "Paused by the operator");
        let mut queue = waiting("queue");
        edit(&mut queue, |w| w.ahead = Some(3));
        assert_eq!(text(&queue), "3 jobs ahead of it; expected to start in 3 s");
        edit(&mut queue, |w| (w.ahead, w.until) = (Some(1), None));
        assert_eq!(text(&queue), "1 job ahead of it");
        edit(&mut queue, |w| w.ahead = Some(10_000));
        assert_eq!(text(&queue), "10,000 or more jobs ahead of it");

        // Without `waiting` (a list's events), a scheduled time still shows; other states say
        // nothing.
        let mut listed = JobView::example("j", JobState::Queued);
        listed.run_at = Some("2026-01-01T00:00:10.000Z".into());
        assert_eq!(text(&listed), "Scheduled for 00:00:10 UTC (in 3 s)");
        listed.state = JobState::Running;
        assert_eq!(waiting_text(&listed, now), None);
    }

    #[test]
    fn a_running_jobs_time_left_counts_down_to_its_eta() {
        let now = 1_767_225_607_500;
        let mut job = JobView::example("j", JobState::Running);
        assert_eq!(seconds_left(&job, now), None);
        job.eta = Some("2026-01-01T00:00:10.000Z".into());
        assert_eq!(seconds_left(&job, now), Some(3));
        job.state = JobState::Succeeded;
        assert_eq!(seconds_left(&job, now), None);
    }
}
