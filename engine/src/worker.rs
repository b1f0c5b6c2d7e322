//! Running one job: move it to running, call its kind's handler with a [`JobContext`], record the
//! outcome, and tell the hub at every step. A panicking handler fails its job; it never takes the
//! worker down.

use crate::Engine;
use crate::EngineError;
use crate::files::Files;
use crate::gates::GateRule;
use crate::kinds::JobError;
use crate::limits;
use crate::model::{Job, JobId, JobState, LogLine, Owner, now_ms};
use crate::queue::QueuedJob;
use crate::registry::{Admission, Outcome};
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

    /// Reports the fraction of work done (clamped to 0..=1) and, optionally, a new stage text
    /// (cut to [`limits::MAX_STAGE_BYTES`]).
    pub async fn progress(&self, fraction: f64, stage: Option<String>) {
        let stage = stage.map(|text| limits::truncate(text, limits::MAX_STAGE_BYTES));
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

    /// Appends a line to the job's log (cut to [`limits::MAX_LOG_LINE_BYTES`]; the registry
    /// keeps the newest 1,000). Only this delivery of the job writes: once the job was taken
    /// back, its lines are dropped, so they cannot overwrite the next attempt's.
    pub async fn log(&self, line: impl Into<String>) {
        let (id, delivery) = {
            let job = self.job.lock().unwrap_or_else(PoisonError::into_inner);
            (job.id, job.delivery)
        };
        let line = LogLine {
            seq: self.next_log_seq.fetch_add(1, Ordering::Relaxed),
            at: now_ms(),
            line: limits::truncate(line.into(), limits::MAX_LOG_LINE_BYTES),
        };
        match self.engine.registry().append_log(id, delivery, &line).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!(job_id = %id, "the job was taken back; its line is dropped");
                return;
            }
            // Watchers still see it; the registry may miss it.
            Err(err) => tracing::warn!(job_id = %id, %err, "could not save a log line"),
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
    // Known as running here before the registry says so, and until its outcome (or requeue) is
    // recorded, so the reconciler never takes back a job this process runs (see
    // `Engine::reconcile`). A second copy of a delivery already running here is skipped.
    let Some((_running, cancel)) = RunningHere::start(engine, id, task.delivery) else {
        tracing::debug!("this delivery already runs here; skipping the copy");
        return Ok(());
    };
    // Only a limited kind's job starts through the gate, and holds a slot of its key.
    let (job, gate) = match registry.start(id, task.delivery, engine.node()).await? {
        Some(job) => (job, None),
        None => match start_gated(engine, id, task.delivery).await? {
            Some((job, rule)) => (job, Some(rule)),
            None => return Ok(()),
        },
    };
    // A job that held a slot of its key hands it on when its attempt ends, however it ends.
    let slot = gate.filter(|rule| rule.concurrency.is_some());
    let attempt = run_attempt(engine, &task, job, cancel).await;
    if let Some(rule) = slot {
        engine.wake_waiting(&rule.key).await;
    }
    attempt
}

/// Starts a delivery that [`Registry::start`] left alone because its kind has limits (see
/// [`crate::gates`]): it starts now, waits for a slot of its key (holding no task), or is
/// pushed again for its rate slot: the started job with the rule it started under, or `None`
/// when it does not run now, or the delivery is stale.
///
/// [`Registry::start`]: crate::registry::Registry::start
async fn start_gated(
    engine: &Engine,
    id: JobId,
    delivery: i64,
) -> Result<Option<(Job, GateRule)>, EngineError> {
    let registry = engine.registry();
    if engine.limits().is_empty() {
        tracing::debug!("stale delivery, or the job is finished or gone; skipping");
        return Ok(None);
    }
    let rule = registry.get(id).await?.and_then(|job| {
        (job.state == JobState::Queued && job.delivery == delivery)
            .then(|| engine.limits().rule(engine.kinds(), &job.kind, &job.params))
            .flatten()
    });
    let Some(rule) = rule else {
        tracing::debug!("stale delivery, or the job is finished or gone; skipping");
        return Ok(None);
    };
    match registry
        .start_gated(id, delivery, engine.node(), &rule)
        .await?
    {
        Admission::Started(job) => return Ok(Some((*job, rule))),
        Admission::Skipped => return Ok(None),
        Admission::Full { busy } => {
            tracing::debug!(key = %rule.key, busy, "every slot is busy; the job waits for one");
        }
        Admission::Later(task) => {
            let at = task.run_at;
            tracing::debug!(key = %rule.key, ?at, "rate limited; the job waits for its slot");
            // A failed push leaves the job queued with no task; the reconciler pushes it once
            // it is due, and its start then keeps the slot it reserved.
            if let Err(err) = engine.queue().push(task).await {
                tracing::warn!(%err, "could not push the job for its rate slot; the reconciler will");
            }
        }
    }
    if let Some(job) = registry.get(id).await? {
        engine.hub().job_changed(job);
    }
    Ok(None)
}

/// Runs a started attempt of `job` and records its outcome, or its retry.
async fn run_attempt(
    engine: &Engine,
    task: &QueuedJob,
    job: Job,
    cancel: CancellationToken,
) -> Result<(), EngineError> {
    let (id, registry) = (job.id, engine.registry());
    tracing::debug!(kind = %job.kind, attempt = job.attempts, "job started");
    let started = Instant::now();
    let due = task.run_at.unwrap_or(job.created_at);
    let waited = job
        .started_at
        .unwrap_or_else(now_ms)
        .saturating_sub(due)
        .max(0);
    crate::telemetry::started(&job.kind, Duration::from_millis(waited as u64));
    engine.hub().job_changed(job.clone());

    let policy = engine.kinds().policy(&job.kind);
    // Only a handler writes log lines, so a first attempt starts an empty log.
    let last_seq = if job.attempts > 1 {
        registry.last_log_seq(id).await?
    } else {
        0
    };
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
        Ok(Ok(Ok(value))) => match serde_json::to_vec(&value).map(|json| json.len()) {
            Ok(bytes) if bytes > limits::MAX_RESULT_BYTES => {
                Attempt::Permanent(limits::result_too_large(bytes))
            }
            _ => Attempt::Succeeded(value),
        },
        Ok(Ok(Err(JobError::Cancelled))) => Attempt::Cancelled,
        Ok(Ok(Err(JobError::Permanent(message)))) => Attempt::Permanent(message),
        Ok(Ok(Err(JobError::Retryable(message)))) => Attempt::Retryable(message),
    };
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
                // A failed push leaves the job queued with no task; the reconciler pushes it
                // again once it is due (see `Engine::reconcile`).
                let task = QueuedJob {
                    run_at: Some(run_at),
                    ..QueuedJob::of(&queued)
                };
                if let Err(err) = engine.queue().push(task).await {
                    tracing::warn!(%err, "could not push the retry; the reconciler will");
                }
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
    match record_outcome(engine, &last, outcome).await {
        Some(done) => {
            tracing::debug!(state = done.state.as_str(), "job finished");
            crate::telemetry::finished(&done.kind, done.state.as_str(), started.elapsed());
            engine.hub().job_changed(done);
        }
        None => tracing::debug!("job left the running state while it ran"),
    }
    Ok(())
}

/// How long the first retry of a finish that could not be stored waits; each further one waits
/// twice as long, up to [`FINISH_RETRY_MAX`].
const FINISH_RETRY_FIRST: Duration = Duration::from_millis(250);
const FINISH_RETRY_MAX: Duration = Duration::from_secs(10);

/// Records how `job`'s attempt ended, retrying until it is stored, so a job never stays
/// `running` because the registry was unreachable when it finished. When the database refuses
/// the outcome itself (a value too big or otherwise unstorable), retrying cannot help: the job
/// is recorded as failed with a short message instead. `None` when that delivery of the job
/// was not running any more.
async fn record_outcome(engine: &Engine, job: &Job, mut outcome: Outcome) -> Option<Job> {
    let mut job = job.clone();
    let mut wait = FINISH_RETRY_FIRST;
    loop {
        let err = match engine.registry().finish(&job, &outcome).await {
            Ok(done) => return done,
            Err(err) => err,
        };
        if err.is_refusal() {
            if matches!(&outcome, Outcome::Failed(m) if m == OUTCOME_REFUSED) {
                // Even the plainest outcome was refused: leave the job to be taken back (the
                // reconciler sees it is not running here any more), within its attempts.
                tracing::error!(%err, "the registry refused even a plain failure; giving up");
                return None;
            }
            tracing::error!(%err, "the registry refused the job's outcome; failing the job");
            outcome = Outcome::Failed(OUTCOME_REFUSED.to_owned());
            job.stage = None;
            continue;
        }
        tracing::warn!(%err, retry_in = ?wait, "could not record the job's outcome; retrying");
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(FINISH_RETRY_MAX);
    }
}

/// The error of a job whose outcome the database would not store.
const OUTCOME_REFUSED: &str = "the job's outcome could not be stored (the database refused it)";

/// A job's entry in this process's [`Running`] table, removed when dropped (on every way out of
/// [`execute`]).
struct RunningHere<'a> {
    engine: &'a Engine,
    id: JobId,
    delivery: i64,
}

impl<'a> RunningHere<'a> {
    fn start(engine: &'a Engine, id: JobId, delivery: i64) -> Option<(Self, CancellationToken)> {
        let cancel = engine.running().start(id, delivery)?;
        let entry = Self {
            engine,
            id,
            delivery,
        };
        Some((entry, cancel))
    }
}

impl Drop for RunningHere<'_> {
    fn drop(&mut self) {
        self.engine.running().finish(self.id, self.delivery);
    }
}

/// The jobs this process is running, with the signal that cancels each.
#[derive(Debug, Default)]
pub(crate) struct Running {
    /// The cancel signal of each delivery of a job running here. Keyed by delivery too: a
    /// stale copy of an old delivery that arrives while a newer one runs must not hide it.
    /// Bounded by the worker's concurrency: an entry lives only while apalis runs its task.
    tokens: Mutex<HashMap<(JobId, i64), CancellationToken>>,
}

impl Running {
    /// Records that `delivery` of job `id` runs here; `None` if it already does.
    fn start(&self, id: JobId, delivery: i64) -> Option<CancellationToken> {
        let mut tokens = self.tokens.lock().unwrap_or_else(PoisonError::into_inner);
        match tokens.entry((id, delivery)) {
            std::collections::hash_map::Entry::Occupied(_) => None,
            std::collections::hash_map::Entry::Vacant(entry) => {
                Some(entry.insert(CancellationToken::new()).clone())
            }
        }
    }

    /// True when this process runs `delivery` of job `id` now.
    pub(crate) fn runs(&self, id: JobId, delivery: i64) -> bool {
        let tokens = self.tokens.lock().unwrap_or_else(PoisonError::into_inner);
        tokens.contains_key(&(id, delivery))
    }

    /// The jobs running now, with their delivery numbers.
    pub(crate) fn jobs(&self) -> Vec<(JobId, i64)> {
        let tokens = self.tokens.lock().unwrap_or_else(PoisonError::into_inner);
        tokens.keys().copied().collect()
    }

    /// Forgets `delivery` of job `id`.
    fn finish(&self, id: JobId, delivery: i64) {
        let mut tokens = self.tokens.lock().unwrap_or_else(PoisonError::into_inner);
        tokens.remove(&(id, delivery));
    }

    /// Signals the job (every delivery of it running here) to stop; false if this process is
    /// not running it.
    pub(crate) fn cancel(&self, id: JobId) -> bool {
        let tokens = self.tokens.lock().unwrap_or_else(PoisonError::into_inner);
        let mut found = false;
        for ((job, _), token) in tokens.iter() {
            if *job == id {
                token.cancel();
                found = true;
            }
        }
        found
    }
}

#[cfg(test)]
mod running_tests {
    use super::*;

    #[test]
    fn a_stale_copy_of_an_old_delivery_does_not_hide_the_running_one() {
        let running = Running::default();
        let id = crate::model::new_job_id();
        assert!(running.start(id, 2).is_some());
        assert!(
            running.start(id, 2).is_none(),
            "a second copy of the same delivery"
        );
        // The stale task of delivery 1 comes and goes (the registry refuses to start it).
        assert!(running.start(id, 1).is_some());
        running.finish(id, 1);
        assert!(running.runs(id, 2), "delivery 2 still runs here");
        assert_eq!(running.jobs(), [(id, 2)]);
        assert!(running.cancel(id));
        running.finish(id, 2);
        assert!(!running.cancel(id));
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
