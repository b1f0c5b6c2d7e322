//! Running this process's workers: the apalis monitor on whichever queue storage is configured,
//! the heartbeat that tells other processes this one is alive, taking back the jobs of workers
//! that died, and what a clean stop leaves behind.

use crate::model::now_ms;
use crate::queue::{self, QueuedJob};
use crate::registry::{Outcome, WorkerInfo};
use crate::{Engine, EngineError, Job, JobId, JobState, worker};
use apalis::prelude::*;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// The last error of a job whose worker died while it ran.
const WORKER_STOPPED: &str = "the worker running it stopped";

/// A queued job due this long ago with no task in the queue is pushed again by the reconciler;
/// an ordinary backlog is much younger or covered by its tasks, which the reconciler checks.
pub(crate) const STRANDED_AFTER: Duration = Duration::from_secs(30);

/// How many overdue jobs one reconciler pass checks.
const RECONCILE_BATCH: u32 = 500;

/// Runs an apalis monitor with one worker on `$storage` (woken by the queue's wake-ups) until
/// `$shutdown` resolves. A macro, not a function: each storage is its own type, and the bounds
/// apalis puts on a worker's backend are long.
macro_rules! run_monitor {
    ($engine:expr, $storage:expr, $shutdown:expr) => {{
        let storage = $storage.clone();
        let engine = $engine.clone();
        let name = $engine.node().to_owned();
        let concurrency = $engine.inner.config.concurrency;
        Monitor::new()
            // A queue error (a lost connection, a busy database) ends an apalis worker; start a
            // new one rather than leave this process without a worker. Each run gets its own
            // name, so the queue hands the last run's unfinished tasks back.
            .should_restart(|worker, error| {
                tracing::warn!(worker = worker.name(), %error, "worker stopped; restarting it");
                true
            })
            .register(move |restarts| {
                let wake_ups = engine.queue().wake_ups();
                WorkerBuilder::new(format!("{name}-{restarts}"))
                    .backend(storage.clone().poll_with_stream(wake_ups))
                    .data(engine.clone())
                    .concurrency(concurrency)
                    .parallelize(tokio::spawn)
                    .build(run_queued_job)
            })
            .shutdown_timeout($engine.inner.config.shutdown_grace)
            .run_with_signal(async move {
                $shutdown.await;
                Ok(())
            })
            .await
            .map_err(|e| EngineError::Worker(e.to_string()))
    }};
}

/// How long a worker process that stopped beating stays listed (as dead) on the console.
const WORKERS_FORGOTTEN_AFTER: Duration = Duration::from_secs(3600);

/// This machine's name, for the console's workers page.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

impl Engine {
    /// Runs this process's workers until `shutdown` resolves, then lets running jobs finish
    /// within the configured grace period and puts back in the queue the ones that did not.
    pub async fn run_workers(
        &self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), EngineError> {
        let about = &self.inner.about;
        let info = WorkerInfo {
            name: self.node().to_owned(),
            host: host_name(),
            role: about.role.clone(),
            version: about.version.clone(),
            started_at: now_ms(),
            concurrency: u32::try_from(self.inner.config.concurrency).unwrap_or(u32::MAX),
            last_seen: 0,
            running: 0,
        };
        self.registry().register_worker(&info).await?;
        // On one node, a job left running can only be a crash's: recover it at once. Where
        // processes share the jobs, only those of a worker that stopped beating.
        let silent_for = self.is_shared().then_some(queue::ORPHANED_AFTER);
        let recovered = self.recover_orphans(silent_for).await?;
        if recovered > 0 {
            tracing::warn!(
                recovered,
                "requeued jobs whose worker stopped while they ran"
            );
        }
        // A process killed between recording a job and pushing it leaves a job no task covers;
        // on one node nothing else can be pushing, so look for those at once.
        if !self.is_shared() {
            match self.reconcile(Duration::ZERO).await {
                Ok(0) => {}
                Ok(repaired) => tracing::warn!(repaired, "pushed queued jobs that had no task"),
                Err(err) => {
                    tracing::error!(%err, "could not reconcile the registry with the queue")
                }
            }
        }
        let beating = tokio::spawn(self.clone().beat_and_recover());
        let scheduling = tokio::spawn(self.clone().run_schedules());
        self.inner.workers_up.store(true, Ordering::Relaxed);
        let result = match self.queue().storage() {
            queue::Storage::Sqlite(storage) => run_monitor!(self, storage, shutdown),
            queue::Storage::Postgres(storage) => run_monitor!(self, storage, shutdown),
            queue::Storage::Redis(storage) => run_monitor!(self, storage, shutdown),
        };
        beating.abort();
        scheduling.abort();
        self.inner.workers_up.store(false, Ordering::Relaxed);
        // Jobs still running past the grace period go back to the queue for the next start or
        // another worker; the attempt they were on counts (a last attempt fails instead). One
        // job's storage error does not keep the others from being taken back.
        for (id, delivery) in self.running().jobs() {
            let why = "the worker stopped before the job finished";
            if let Err(err) = self.take_back_by_id(id, delivery, why).await {
                tracing::error!(job_id = %id, %err, "could not take back a running job at stop");
            }
        }
        if let Err(err) = self.registry().forget_workers(self.node(), None).await {
            tracing::error!(%err, "could not remove this worker's heartbeat");
        }
        result
    }

    /// Tells the other workers this one is alive, reconciles the registry with the queue and,
    /// where processes share the jobs, takes back the jobs of workers that stopped beating.
    /// Runs until aborted.
    async fn beat_and_recover(self) {
        let mut every = tokio::time::interval(queue::HEARTBEAT);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            if let Err(err) = self.registry().beat(self.node()).await {
                tracing::error!(%err, "could not record this worker's heartbeat");
                continue;
            }
            if let Err(err) = self.reconcile(STRANDED_AFTER).await {
                tracing::error!(%err, "could not reconcile the registry with the queue");
            }
            if self.is_shared() {
                let silent_for = Some(queue::ORPHANED_AFTER);
                match self.recover_orphans(silent_for).await {
                    Ok(0) => {}
                    Ok(recovered) => {
                        tracing::warn!(recovered, "requeued jobs of a stopped worker")
                    }
                    Err(err) => tracing::error!(%err, "could not recover a stopped worker's jobs"),
                }
            }
            // A dead worker stays on the console's workers page for a while (shown as dead).
            let forgotten_after = Some(WORKERS_FORGOTTEN_AFTER);
            if let Err(err) = self.registry().forget_workers("", forgotten_after).await {
                tracing::error!(%err, "could not forget stopped workers");
            }
        }
    }

    /// Repairs what a fault can leave between the registry and the queue, which are two
    /// stores written one after the other:
    /// - a `queued` job that has been due for `after` and that no task in the queue covers (a
    ///   push that failed, or a process killed between the insert and the push) is pushed again,
    ///   under the same task id, so a push that did land is not doubled;
    /// - a job the registry says this process runs, but which it does not run (the attempt
    ///   ended and its outcome or requeue was lost), is taken back.
    ///
    /// Returns how many jobs it repaired.
    pub async fn reconcile(&self, after: Duration) -> Result<usize, EngineError> {
        let before = now_ms().saturating_sub(after.as_millis() as i64);
        // Each pass checks the next page of overdue jobs, so a stranded job behind a long
        // backlog (whose tasks all exist) is reached too; past the last page it starts over.
        let from = *self.inner.reconcile_from.lock().await;
        let overdue = self
            .registry()
            .overdue(before, from.as_ref(), RECONCILE_BATCH)
            .await?;
        *self.inner.reconcile_from.lock().await = match overdue.last() {
            Some(last) if overdue.len() == RECONCILE_BATCH as usize => {
                Some((last.queued_at, last.id))
            }
            _ => None,
        };
        let missing = self.queue().missing(&overdue).await?;
        let mut repaired = 0;
        for job in &missing {
            tracing::warn!(job_id = %job.id, "a queued job had no task; pushing it again");
            // Another process may have pushed it in the meantime (Postgres then refuses the
            // second copy; elsewhere the copy is skipped as a duplicate): log and go on.
            match self.queue().push(job.task()).await {
                Ok(()) => repaired += 1,
                Err(err) => tracing::warn!(job_id = %job.id, %err, "could not push it again"),
            }
        }
        // Jobs waiting for a slot have no task: a slot freed whose wake-up was lost (its
        // worker died, a push failed) is handed on here, and every job of a key whose limit
        // is gone (a partial index of waiting jobs, so this costs nothing when none wait).
        for key in self.registry().waiting_keys().await? {
            self.wake_waiting(&key).await;
        }
        for job in self.registry().running_on(self.node()).await? {
            if self.running().runs(job.id, job.delivery) {
                continue;
            }
            tracing::warn!(job_id = %job.id, "a job recorded as running here was not; taking it back");
            match self.take_back(&job, "the attempt was interrupted").await {
                Ok(()) => repaired += 1,
                Err(err) => tracing::error!(job_id = %job.id, %err, "could not take it back"),
            }
        }
        Ok(repaired)
    }

    /// Puts back in the queue the running jobs whose worker process died, counting the lost
    /// attempt, so they run again (at-least-once); a job that was on its last attempt fails
    /// instead, so a job that kills its worker cannot take down one worker after another. A
    /// worker counts as dead once it has been silent for `silent_for` by the database's clock;
    /// with `None` (a single node) every other worker is dead. Returns how many jobs.
    async fn recover_orphans(&self, silent_for: Option<Duration>) -> Result<usize, EngineError> {
        let orphans = self.registry().orphaned(self.node(), silent_for).await?;
        for job in &orphans {
            // One job's storage error must not leave the others stranded.
            if let Err(err) = self.take_back(job, WORKER_STOPPED).await {
                tracing::error!(job_id = %job.id, %err, "could not recover a job");
            }
        }
        Ok(orphans.len())
    }

    /// Takes back running `job` (that delivery of it), whose attempt ended without an outcome
    /// (its worker died or stopped, or the attempt was interrupted): it goes back to the queue
    /// with `why` as its last error, the lost attempt counted, or fails if that attempt was its
    /// last, so a job that keeps killing its attempts cannot run forever.
    pub(crate) async fn take_back(&self, job: &Job, why: &str) -> Result<(), EngineError> {
        if job.attempts >= job.max_attempts {
            let message = format!(
                "{why} during its last attempt ({} of {})",
                job.attempts, job.max_attempts
            );
            self.fail_now(job, message).await
        } else {
            self.requeue_now(job.id, job.delivery, why).await
        }
    }

    /// [`Engine::take_back`] for job `id` if it is still running `delivery`.
    pub(crate) async fn take_back_by_id(
        &self,
        id: JobId,
        delivery: i64,
        why: &str,
    ) -> Result<(), EngineError> {
        match self.registry().get(id).await? {
            Some(job) if job.state == JobState::Running && job.delivery == delivery => {
                self.take_back(&job, why).await
            }
            _ => Ok(()),
        }
    }

    /// Ends running `job` (that delivery of it) as failed with `message`.
    async fn fail_now(&self, job: &Job, message: String) -> Result<(), EngineError> {
        if let Some(failed) = self
            .registry()
            .finish(job, &Outcome::Failed(message))
            .await?
        {
            self.hub().job_changed(failed);
        }
        Ok(())
    }

    /// Puts job `id`, running `delivery`, back in the queue at once with `why` as its last error.
    async fn requeue_now(&self, id: JobId, delivery: i64, why: &str) -> Result<(), EngineError> {
        let requeued = self
            .registry()
            .requeue(id, delivery, None, Some(why))
            .await?;
        if let Some(queued) = requeued {
            // Requeued but not pushed: the reconciler pushes it once it is overdue.
            if let Err(err) = self.queue().push(QueuedJob::of(&queued)).await {
                tracing::warn!(job_id = %id, %err, "could not push a requeued job; the reconciler will");
            }
            self.hub().job_changed(queued);
        }
        Ok(())
    }
}

/// The apalis handler: runs the job whose id came off the queue. A storage error puts the job
/// back in the queue if it had started (else the queue offers the task again), and goes back to
/// apalis so the task is not acknowledged as done.
async fn run_queued_job(task: QueuedJob, engine: Data<Engine>) -> Result<(), BoxDynError> {
    let (id, delivery) = (task.job_id, task.delivery);
    let Err(err) = worker::execute(&engine, task).await else {
        return Ok(());
    };
    tracing::error!(job_id = %id, %err, "could not run job");
    let why = "a storage error interrupted the attempt";
    if let Err(err) = engine.take_back_by_id(id, delivery, why).await {
        // The reconciler takes it back once the registry answers again.
        tracing::error!(job_id = %id, %err, "could not put the job back in the queue");
    }
    Err(Box::new(err))
}
