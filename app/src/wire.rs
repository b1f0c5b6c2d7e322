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
}
