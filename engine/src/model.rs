//! The job as the engine knows it: identity, owner, state and what its handler reported.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

/// A job's identity: a ULID, which is also the apalis task id.
pub type JobId = ulid::Ulid;

/// A new job id, greater than every id this process made before, so ids made in the same
/// millisecond still sort in submission order ("newest first" lists and cursors rely on it).
pub fn new_job_id() -> JobId {
    static IDS: std::sync::Mutex<ulid::Generator> = std::sync::Mutex::new(ulid::Generator::new());
    let mut ids = IDS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // The random part only overflows after 2^80 ids in one millisecond.
    ids.generate().unwrap_or_else(|_| JobId::generate())
}

/// The anonymous session that submitted a job. Every read is scoped to one owner.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Owner(pub String);

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a job is in its life. Terminal states never change again.
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
    /// Every state, in life order.
    pub const ALL: [JobState; 5] = [
        JobState::Queued,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
    ];

    /// The name stored in the registry and sent over the wire.
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

impl FromStr for JobState {
    type Err = UnknownState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_owned()))
    }
}

/// A state name that is not one of [`JobState::ALL`].
#[derive(Debug, thiserror::Error)]
#[error("unknown job state {0:?}")]
pub struct UnknownState(pub String);

/// A job as stored in the registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    pub owner: Owner,
    pub kind: String,
    pub params: Value,
    pub state: JobState,
    /// Fraction done, 0..=1; `None` until the handler first reports.
    pub progress: Option<f64>,
    pub stage: Option<String>,
    pub result: Option<Value>,
    pub error: Option<String>,
    pub attempts: u32,
    /// Runs allowed before the job fails for good (its kind's retry policy).
    pub max_attempts: u32,
    /// Unix milliseconds.
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// While queued: when the job may start (its scheduled time or its next retry).
    pub run_at: Option<i64>,
    /// Which push to the queue is current; older deliveries are skipped.
    pub delivery: i64,
    /// The job this one retries by hand.
    pub retry_of: Option<JobId>,
    pub idempotency_key: Option<String>,
    /// Higher first, [`PRIORITIES`]; see [`crate::queue`] for how waiting lifts it.
    #[serde(default = "default_priority")]
    pub priority: u8,
}

/// The priorities a job may have: higher runs first.
pub const PRIORITIES: std::ops::RangeInclusive<u8> = 1..=9;

/// A job's priority unless its submitter chose one: the middle of [`PRIORITIES`].
pub const DEFAULT_PRIORITY: u8 = 5;

fn default_priority() -> u8 {
    DEFAULT_PRIORITY
}

/// A stored priority (a registry row, a queued task), kept within [`PRIORITIES`] whatever
/// the store says.
pub(crate) fn priority_within(stored: i64) -> u8 {
    let (low, high) = (*PRIORITIES.start(), *PRIORITIES.end());
    stored.clamp(i64::from(low), i64::from(high)) as u8
}

impl Job {
    /// The upload this job reads (its `upload` argument), if any.
    pub fn upload(&self) -> Option<&str> {
        self.params.get("upload").and_then(Value::as_str)
    }

    /// A new queued job.
    pub fn new(owner: Owner, kind: &str, params: Value, max_attempts: u32) -> Self {
        Self {
            id: new_job_id(),
            owner,
            kind: kind.to_owned(),
            params,
            state: JobState::Queued,
            progress: None,
            stage: None,
            result: None,
            error: None,
            attempts: 0,
            max_attempts,
            created_at: now_ms(),
            started_at: None,
            finished_at: None,
            run_at: None,
            delivery: 1,
            retry_of: None,
            idempotency_key: None,
            priority: DEFAULT_PRIORITY,
        }
    }
}

/// One line a handler appended to its job's log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    /// 1-based position in the job's log; lets a client drop lines it already has.
    pub seq: i64,
    /// Unix milliseconds.
    pub at: i64,
    pub line: String,
}

/// How many log lines the registry keeps per job (the newest ones).
pub const LOG_LINES_KEPT: i64 = 1_000;

/// Current time as unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_names_round_trip() {
        for state in JobState::ALL {
            assert_eq!(state.as_str().parse::<JobState>().ok(), Some(state));
            let json = serde_json::to_string(&state).ok();
            assert_eq!(
                json.as_deref(),
                Some(format!("\"{}\"", state.as_str()).as_str())
            );
        }
        assert!("done".parse::<JobState>().is_err());
    }

    #[test]
    fn job_ids_sort_in_the_order_they_were_made() {
        let ids: Vec<JobId> = (0..1_000).map(|_| new_job_id()).collect();
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]));
    }

    #[test]
    fn only_finished_states_are_terminal() {
        let terminal: Vec<_> = JobState::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .collect();
        assert_eq!(
            terminal,
            [JobState::Succeeded, JobState::Failed, JobState::Cancelled]
        );
    }
}
