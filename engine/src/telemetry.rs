//! The engine's measurements, through the `metrics` facade: whatever recorder the process
//! installed (the server's Prometheus exporter) receives them; without one they cost nothing.
//! Names and labels are listed here once.

use std::time::Duration;

/// Jobs accepted by submits, by kind.
pub const SUBMITTED: &str = "errand_jobs_submitted_total";
/// Attempts started, by kind.
pub const STARTED: &str = "errand_jobs_started_total";
/// Jobs finished, by kind and outcome (`succeeded`, `failed`, `cancelled`).
pub const FINISHED: &str = "errand_jobs_finished_total";
/// Seconds from entering the queue (or the scheduled time) to starting, by kind.
pub const QUEUE_WAIT: &str = "errand_job_queue_wait_seconds";
/// Seconds an attempt ran, by kind.
pub const RUN_TIME: &str = "errand_job_run_seconds";

/// Describes the engine's metrics to the installed recorder (their help texts).
pub fn describe() {
    metrics::describe_counter!(SUBMITTED, "Jobs accepted by submits, by kind");
    metrics::describe_counter!(STARTED, "Job attempts started, by kind");
    metrics::describe_counter!(FINISHED, "Jobs finished, by kind and outcome");
    metrics::describe_histogram!(
        QUEUE_WAIT,
        metrics::Unit::Seconds,
        "Time from entering the queue (or the scheduled time) to starting, by kind"
    );
    metrics::describe_histogram!(
        RUN_TIME,
        metrics::Unit::Seconds,
        "Attempt run time, by kind"
    );
}

pub(crate) fn submitted(kind: &str) {
    metrics::counter!(SUBMITTED, "kind" => kind.to_owned()).increment(1);
}

pub(crate) fn started(kind: &str, waited: Duration) {
    metrics::counter!(STARTED, "kind" => kind.to_owned()).increment(1);
    metrics::histogram!(QUEUE_WAIT, "kind" => kind.to_owned()).record(waited.as_secs_f64());
}

pub(crate) fn finished(kind: &str, outcome: &str, ran: Duration) {
    metrics::counter!(FINISHED, "kind" => kind.to_owned(), "outcome" => outcome.to_owned())
        .increment(1);
    metrics::histogram!(RUN_TIME, "kind" => kind.to_owned()).record(ran.as_secs_f64());
}
