//! Running this process's workers: the apalis monitor on whichever queue storage is configured,
//! the heartbeat that tells other processes this one is alive, taking back the jobs of workers
//! that died, and what a clean stop leaves behind.

use crate::model::now_ms;
use crate::queue::{self, QueuedJob};
use crate::registry::Outcome;
use crate::{Engine, EngineError, Job, JobId, worker};
use apalis::prelude::*;
use std::future::Future;

/// The last error of a job whose worker died while it ran.
const WORKER_STOPPED: &str = "the worker running it stopped";

/// Workers not seen since this time (unix ms) are dead.
fn stale_before() -> i64 {
    now_ms() - queue::ORPHANED_AFTER.as_millis() as i64
}

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

impl Engine {
    /// Runs this process's workers until `shutdown` resolves, then lets running jobs finish
    /// within the configured grace period and puts back in the queue the ones that did not.
    pub async fn run_workers(
        &self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), EngineError> {
        self.registry().beat(self.node()).await?;
        // On one node, a job left running can only be a crash's: recover it at once. Where
        // processes share the jobs, only those of a worker that stopped beating.
        let stale_before = if self.is_shared() {
            stale_before()
        } else {
            i64::MAX
        };
        let recovered = self.recover_orphans(stale_before).await?;
        if recovered > 0 {
            tracing::warn!(
                recovered,
                "requeued jobs whose worker stopped while they ran"
            );
        }
        let beating = tokio::spawn(self.clone().beat_and_recover());
        let result = match self.queue().storage() {
            queue::Storage::Sqlite(storage) => run_monitor!(self, storage, shutdown),
            queue::Storage::Postgres(storage) => run_monitor!(self, storage, shutdown),
            queue::Storage::Redis(storage) => run_monitor!(self, storage, shutdown),
        };
        beating.abort();
        // Jobs still running past the grace period go back to the queue for the next start or
        // another worker; the attempt they were on counts.
        for (id, delivery) in self.running().jobs() {
            self.requeue_now(id, delivery, "the worker stopped before the job finished")
                .await?;
        }
        self.registry().forget_workers(self.node(), 0).await?;
        result
    }

    /// Tells the other workers this one is alive and, where processes share the jobs, takes
    /// back the jobs of workers that stopped beating. Runs until aborted.
    async fn beat_and_recover(self) {
        let mut every = tokio::time::interval(queue::HEARTBEAT);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            if let Err(err) = self.registry().beat(self.node()).await {
                tracing::error!(%err, "could not record this worker's heartbeat");
                continue;
            }
            if !self.is_shared() {
                continue;
            }
            let stale_before = stale_before();
            match self.recover_orphans(stale_before).await {
                Ok(0) => {}
                Ok(recovered) => tracing::warn!(recovered, "requeued jobs of a stopped worker"),
                Err(err) => tracing::error!(%err, "could not recover a stopped worker's jobs"),
            }
            if let Err(err) = self.registry().forget_workers("", stale_before).await {
                tracing::error!(%err, "could not forget stopped workers");
            }
        }
    }

    /// Puts back in the queue the running jobs whose worker process died, counting the lost
    /// attempt, so they run again (at-least-once); a job that was on its last attempt fails
    /// instead, so a job that kills its worker cannot take down one worker after another. A
    /// worker counts as dead once it has not beaten since `stale_before` (unix ms); on a single
    /// node every other worker is dead. Returns how many jobs.
    async fn recover_orphans(&self, stale_before: i64) -> Result<usize, EngineError> {
        let orphans = self.registry().orphaned(self.node(), stale_before).await?;
        for job in &orphans {
            let recovered = if job.attempts >= job.max_attempts {
                let message = format!(
                    "{WORKER_STOPPED} during its last attempt ({} of {})",
                    job.attempts, job.max_attempts
                );
                self.fail_now(job, message).await
            } else {
                self.requeue_now(job.id, job.delivery, WORKER_STOPPED).await
            };
            // One job's storage error must not leave the others stranded.
            if let Err(err) = recovered {
                tracing::error!(job_id = %job.id, %err, "could not recover a job");
            }
        }
        Ok(orphans.len())
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
            self.queue().push(id, queued.delivery, None).await?;
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
    if let Err(requeue) = engine.requeue_now(id, delivery, why).await {
        tracing::error!(job_id = %id, err = %requeue, "could not put the job back in the queue");
    }
    Err(Box::new(err))
}
