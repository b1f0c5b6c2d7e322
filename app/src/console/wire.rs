//! What the console's pages receive from its server functions.

use crate::wire::{JobDetail, JobView};
use serde::{Deserialize, Serialize};

/// The filter of the console's job list, as its query string carries it (empty = any).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub owner: String,
    /// `YYYY-MM-DD` or RFC 3339, inclusive.
    #[serde(default)]
    pub from: String,
    /// `YYYY-MM-DD` (the whole day) or RFC 3339, exclusive.
    #[serde(default)]
    pub to: String,
    /// Words to find in parameters, result or error.
    #[serde(default)]
    pub q: String,
}

impl Filter {
    /// Each field with its name in the query string.
    pub fn fields(&self) -> [(&'static str, &String); 6] {
        [
            ("state", &self.state),
            ("kind", &self.kind),
            ("owner", &self.owner),
            ("from", &self.from),
            ("to", &self.to),
            ("q", &self.q),
        ]
    }

    /// The filter as a query string (only the fields set), `state=failed&q=timeout`.
    pub fn query_string(&self) -> String {
        self.fields()
            .into_iter()
            .filter(|(_, value)| !value.is_empty())
            .map(|(name, value)| format!("{name}={}", encode(value)))
            .collect::<Vec<_>>()
            .join("&")
    }

    /// The same filter with another state.
    pub fn with_state(&self, state: &str) -> Self {
        Self {
            state: state.to_owned(),
            ..self.clone()
        }
    }
}

/// Percent-encodes a query string value (everything but unreserved characters).
pub fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// A row of the console's job list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub job: JobView,
    pub owner: String,
}

/// A search's counts per state count at most this many of its newest matches.
pub const SEARCH_COUNTED: u64 = 10_000;

/// One page of the console's job list, with the counts per state for its filter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobsPage {
    pub rows: Vec<Row>,
    /// Pass as `before` for the next (older) page.
    pub next_before: Option<String>,
    /// `(state, jobs)` for every state, ignoring the filter's own state.
    pub counts: Vec<(String, u64)>,
    /// The search matched more than [`SEARCH_COUNTED`] jobs: the counts are of its newest.
    pub counts_partial: bool,
    pub kinds: Vec<String>,
    /// The operator may act (the admin role).
    pub can_act: bool,
}

/// One job as an operator sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub detail: JobDetail,
    pub owner: String,
    /// The worker process that ran (or runs) its latest attempt.
    pub worker: Option<String>,
    /// Every attempt, first first.
    pub attempts: Vec<AttemptRow>,
    /// Parameters and result as stored (pretty JSON).
    pub params: String,
    pub result: Option<String>,
    /// The operator may act (the admin role).
    pub can_act: bool,
}

/// One attempt of a job on its console page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRow {
    pub number: u32,
    pub worker: Option<String>,
    /// RFC 3339.
    pub started_at: String,
    pub ended_at: Option<String>,
    /// `retried`, `succeeded`, `failed` or `cancelled`; `None` while it runs.
    pub outcome: Option<String>,
    pub error: Option<String>,
}

/// A kind on the kinds page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindRow {
    pub kind: String,
    pub queued: u64,
    pub running: u64,
    /// RFC 3339, when paused.
    pub paused_since: Option<String>,
    /// Its concurrency and rate limits in words (`--limits`), if it has any.
    pub limit: Option<String>,
}

/// The kinds page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindsPage {
    pub kinds: Vec<KindRow>,
    /// The recurring jobs (`--schedules`).
    pub schedules: Vec<ScheduleRow>,
    /// The operator may act (the admin role).
    pub can_act: bool,
}

/// A recurring job on the kinds page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleRow {
    pub name: String,
    pub cron: String,
    pub timezone: String,
    pub kind: String,
    /// RFC 3339.
    pub next_run: Option<String>,
    pub last_run: Option<String>,
    pub last_job: Option<String>,
    /// Since when an operator paused it.
    pub paused_since: Option<String>,
}

/// A worker process on the workers page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerRow {
    pub name: String,
    pub host: String,
    pub role: String,
    pub version: String,
    pub started_at: String,
    pub last_seen: String,
    /// Seconds since its last heartbeat (by the database's clock).
    pub silent_s: i64,
    pub alive: bool,
    pub running: u64,
    pub concurrency: u32,
}

/// An entry of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRow {
    pub number: i64,
    pub at: String,
    pub role: String,
    pub session: String,
    pub action: String,
    pub target: String,
    pub jobs: u64,
}

/// A bulk action's progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BulkView {
    pub id: u64,
    pub action: String,
    pub target: String,
    pub expected: u64,
    pub seen: u64,
    pub touched: u64,
    pub finished: bool,
    pub error: Option<String>,
}

/// Jobs finished in one bar of a chart.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Bar {
    /// Unix ms at the bar's start.
    pub at: i64,
    pub succeeded: u64,
    pub failed: u64,
}

/// Queue wait and run time of a kind's recently finished jobs, in ms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindTimes {
    pub kind: String,
    pub jobs: u64,
    pub wait_p50: i64,
    pub wait_p95: i64,
    pub run_p50: i64,
    pub run_p95: i64,
}

/// The overview page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Overview {
    /// `15m`, `1h` or `24h`.
    pub window: String,
    /// Seconds per bar.
    pub bar_s: u64,
    pub bars: Vec<Bar>,
    pub counts: Vec<(String, u64)>,
    pub kinds: Vec<KindRow>,
    pub times: Vec<KindTimes>,
}

/// A chart window: its name, its length and its bar width, in seconds.
pub const WINDOWS: [(&str, u64, u64); 3] =
    [("15m", 900, 60), ("1h", 3600, 60), ("24h", 86_400, 900)];

/// The window named `name` (15 minutes when unknown).
pub fn window(name: &str) -> (&'static str, u64, u64) {
    WINDOWS
        .into_iter()
        .find(|(known, _, _)| *known == name)
        .unwrap_or(WINDOWS[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_writes_only_its_set_fields_encoded() {
        let filter = Filter {
            state: "failed".into(),
            q: "a&b c".into(),
            ..Filter::default()
        };
        assert_eq!(filter.query_string(), "state=failed&q=a%26b%20c");
        assert_eq!(Filter::default().query_string(), "");
        assert_eq!(filter.with_state("").query_string(), "q=a%26b%20c");
    }

    #[test]
    fn unknown_windows_are_the_shortest() {
        assert_eq!(window("24h").1, 86_400);
        assert_eq!(window("nope").0, "15m");
    }
}
