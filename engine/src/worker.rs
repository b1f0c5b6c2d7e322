//! Running one job: move it to running, call its kind's handler with a [`JobContext`], record the
//! outcome, and tell the hub at every step. A panicking handler fails its job; it never takes the
//! worker down.

use crate::Engine;
use crate::EngineError;
use crate::files::Files;
use crate::kinds::JobError;
use crate::model::{Job, JobId, LogLine, Owner, now_ms};
use crate::queue::QueuedJob;
use crate::registry::Outcome;
use futures::FutureExt;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Progress is pushed to watchers at once but written to the registry at most this often,
/// counting from the start (which wrote the row), and always when the job ends; so a chatty
/// handler costs few database writes, and a short job none besides its start and finish.
const PROGRESS_SAVE_INTERVAL: Duration = Duration::from_millis(250);

/// What a handler uses to report on its job while it runs.
#[derive(Debug)]
pub struct JobContext {
    engine: Engine,
    job: Mutex<Job>,
    next_log_seq: AtomicI64,
    /// When the registry row was last written (the start, then progress saves).
    last_saved: Mutex<Instant>,
    cancel: CancellationToken,
}

impl JobContext {
    fn new(engine: Engine, job: Job, last_log_seq: i64, cancel: CancellationToken) -> Self {
        Self {
            engine,
            job: Mutex::new(job),
            next_log_seq: AtomicI64::new(last_log_seq + 1),
            last_saved: Mutex::new(Instant::now()),
            cancel,
        }
    }

    /// The running job's id.
    pub fn job_id(&self) -> JobId {
        self.snapshot().id
    }

    /// Which run of the job this is (1 for the first).
    pub fn attempt(&self) -> u32 {
        self.snapshot().attempts
    }

    /// Who submitted the job.
    pub fn owner(&self) -> Owner {
        self.snapshot().owner
    }

    /// The job registry (for kinds that report on other jobs, such as `export`).
    pub(crate) fn registry(&self) -> &crate::registry::Registry {
        self.engine.registry()
    }

    /// The data dir's files: uploads to read, the job's own folder to write outputs to.
    pub fn files(&self) -> &Files {
        self.engine.files()
    }

    /// True once someone asked to cancel this job.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Resolves when someone asks to cancel this job; race it against slow steps.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await;
    }

    /// `Err(JobError::Cancelled)` once cancelled; call it between steps with `?`.
    pub fn check_cancelled(&self) -> Result<(), JobError> {
        if self.is_cancelled() {
            Err(JobError::Cancelled)
        } else {
            Ok(())
        }
    }

    fn snapshot(&self) -> Job {
        self.job
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits for one of the process's CPU slots (one per core) and holds it until the returned
    /// permit is dropped. Kinds whose work is heavy and synchronous (decoding images, parsing
    /// files) hold one while they do, so a high job concurrency, meant for jobs that mostly
    /// wait, never runs more of them at once than there are cores, nor holds more of their
    /// data in memory. Ends early with `Cancelled` when the job is cancelled while waiting.
    pub async fn cpu_slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, JobError> {
        tokio::select! {
            permit = self.engine.cpu_slots().clone().acquire_owned() => {
                permit.map_err(|_| JobError::Retryable("the process is stopping".into()))
            }
            () = self.cancelled() => Err(JobError::Cancelled),
        }
    }

    /// Reports the fraction of work done (clamped to 0..=1) and, optionally, a new stage text.
    pub async fn progress(&self, fraction: f64, stage: Option<String>) {
        let job = {
            let mut job = self.job.lock().unwrap_or_else(PoisonError::into_inner);
            job.progress = Some(clamp_progress(fraction));
            if stage.is_some() {
                job.stage = stage;
            }
            job.clone()
        };
        let due = {
            let mut last = self
                .last_saved
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let due = last.elapsed() >= PROGRESS_SAVE_INTERVAL;
            if due {
                *last = Instant::now();
            }
            due
        };
        if due {
            let saved = self.engine.registry().save_progress(&job).await;
            if let Err(err) = saved {
                tracing::warn!(job_id = %job.id, %err, "could not save progress");
            }
        }
        self.engine.hub().job_changed(job);
    }

    /// Appends a line to the job's log (the registry keeps the newest 1,000).
    pub async fn log(&self, line: impl Into<String>) {
        let id = self.job_id();
        let line = LogLine {
            seq: self.next_log_seq.fetch_add(1, Ordering::Relaxed),
            at: now_ms(),
            line: line.into(),
        };
        if let Err(err) = self.engine.registry().append_log(id, &line).await {
            tracing::warn!(job_id = %id, %err, "could not save a log line");
        }
        self.engine.hub().job_logged(id, line);
    }
}

/// Keeps a reported fraction within 0..=1; NaN counts as no progress.
pub fn clamp_progress(fraction: f64) -> f64 {
    if fraction.is_nan() {
        0.0
    } else {
        fraction.clamp(0.0, 1.0)
    }
}

/// How an attempt ended, before the retry policy decides what follows.
enum Attempt {
    Succeeded(serde_json::Value),
    Cancelled,
    /// Not worth retrying (bad input, missing data).
    Permanent(String),
    /// Might work next time (errors, time-outs, panics).
    Retryable(String),
}

/// Runs one delivery of job `id` to its end. Stale deliveries and finished or deleted jobs are
/// skipped; a failed attempt is retried per the kind's policy.
#[tracing::instrument(skip_all, fields(job_id = %task.job_id, delivery = task.delivery))]
pub(crate) async fn execute(engine: &Engine, task: QueuedJob) -> Result<(), EngineError> {
    let (id, registry) = (task.job_id, engine.registry());
    // The queue counts whole seconds: a scheduled job may arrive up to a second early. The
    // task carries its exact time, so unscheduled jobs cost no extra read here.
    if let Some(run_at) = task.run_at {
        let early = u64::try_from(run_at - now_ms()).unwrap_or(0).min(2_000);
        tokio::time::sleep(Duration::from_millis(early)).await;
    }
    let Some(job) = registry.start(id, task.delivery, engine.node()).await? else {
        tracing::debug!("stale delivery, or the job is finished or gone; skipping");
        return Ok(());
    };
    tracing::debug!(kind = %job.kind, attempt = job.attempts, "job started");
    engine.hub().job_changed(job.clone());

    let policy = engine.kinds().policy(&job.kind);
    // Only a handler writes log lines, so a first attempt starts an empty log.
    let last_seq = if job.attempts > 1 {
        registry.last_log_seq(id).await?
    } else {
        0
    };
    let cancel = engine.running().start(id, job.delivery);
    let ctx = JobContext::new(engine.clone(), job.clone(), last_seq, cancel);
    let run =
        AssertUnwindSafe(engine.kinds().run(&job.kind, job.params.clone(), &ctx)).catch_unwind();
    let attempt = match tokio::time::timeout(policy.timeout, run).await {
        Err(_) => Attempt::Retryable(format!(
            "timed out after {} s",
            policy.timeout.as_secs_f64()
        )),
        Ok(Err(panic)) => {
            Attempt::Retryable(format!("the job panicked: {}", panic_message(&*panic)))
        }
        Ok(Ok(Ok(value))) => Attempt::Succeeded(value),
        Ok(Ok(Err(JobError::Cancelled))) => Attempt::Cancelled,
        Ok(Ok(Err(JobError::Permanent(message)))) => Attempt::Permanent(message),
        Ok(Ok(Err(JobError::Retryable(message)))) => Attempt::Retryable(message),
    };
    engine.running().finish(id, job.delivery);
    let cancelled = ctx.is_cancelled();
    let mut last = ctx.snapshot();

    let outcome = match attempt {
        Attempt::Succeeded(value) => {
            last.progress = Some(1.0);
            Outcome::Succeeded(value)
        }
        Attempt::Cancelled => Outcome::Cancelled,
        Attempt::Retryable(message) if !cancelled && job.attempts < job.max_attempts => {
            let delay = policy.delay(job.attempts);
            ctx.log(format!(
                "attempt {} of {} failed: {message}; retrying in {:.1} s",
                job.attempts,
                job.max_attempts,
                delay.as_secs_f64()
            ))
            .await;
            let run_at = now_ms() + delay.as_millis() as i64;
            let requeued = registry
                .requeue(id, job.delivery, Some(run_at), Some(&message))
                .await?;
            if let Some(queued) = requeued {
                engine
                    .queue()
                    .push(id, queued.delivery, Some(run_at))
                    .await?;
                engine.hub().job_changed(queued);
            }
            return Ok(());
        }
        Attempt::Retryable(message) | Attempt::Permanent(message) => {
            ctx.log(format!(
                "attempt {} of {} failed: {message}",
                job.attempts, job.max_attempts
            ))
            .await;
            Outcome::Failed(message)
        }
    };
    match registry.finish(&last, &outcome).await? {
        Some(done) => {
            tracing::debug!(state = done.state.as_str(), "job finished");
            engine.hub().job_changed(done);
        }
        None => tracing::debug!("job left the running state while it ran"),
    }
    Ok(())
}

/// The jobs this process is running, with the signal that cancels each.
#[derive(Debug, Default)]
pub(crate) struct Running {
    /// Each running job's cancel signal and delivery number.
    tokens: Mutex<HashMap<JobId, (CancellationToken, i64)>>,
}

impl Running {
    fn start(&self, id: JobId, delivery: i64) -> CancellationToken {
        let token = CancellationToken::new();
        self.tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, (token.clone(), delivery));
        token
    }

    /// The jobs running now, with their delivery numbers.
    pub(crate) fn jobs(&self) -> Vec<(JobId, i64)> {
        let tokens = self.tokens.lock().unwrap_or_else(PoisonError::into_inner);
        tokens
            .iter()
            .map(|(id, (_, delivery))| (*id, *delivery))
            .collect()
    }

    /// Forgets `delivery` of job `id`, unless a later delivery of it runs here now.
    fn finish(&self, id: JobId, delivery: i64) {
        let mut tokens = self.tokens.lock().unwrap_or_else(PoisonError::into_inner);
        if tokens
            .get(&id)
            .is_some_and(|(_, running)| *running == delivery)
        {
            tokens.remove(&id);
        }
    }

    /// Signals the job to stop; false if this process is not running it.
    pub(crate) fn cancel(&self, id: JobId) -> bool {
        let tokens = self.tokens.lock().unwrap_or_else(PoisonError::into_inner);
        tokens.get(&id).map(|(token, _)| token.cancel()).is_some()
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_is_clamped() {
        assert_eq!(clamp_progress(0.25), 0.25);
        assert_eq!(clamp_progress(-1.0), 0.0);
        assert_eq!(clamp_progress(7.0), 1.0);
        assert_eq!(clamp_progress(f64::NAN), 0.0);
        assert_eq!(clamp_progress(f64::INFINITY), 1.0);
    }

    #[test]
    fn panic_messages_are_read() {
        let text: Box<dyn std::any::Any + Send> = Box::new("boom");
        assert_eq!(panic_message(&*text), "boom");
        let owned: Box<dyn std::any::Any + Send> = Box::new(String::from("bang"));
        assert_eq!(panic_message(&*owned), "bang");
        let other: Box<dyn std::any::Any + Send> = Box::new(3_u8);
        assert_eq!(panic_message(&*other), "no message");
    }
}
