//! What a person (or the retention task) does to existing jobs: cancel, retry by hand, delete,
//! and purge the finished ones past their retention.

use crate::model;
use crate::{Engine, EngineError, Job, JobId, JobState, Owner, SubmitError, relay};
use std::time::Duration;

/// What a cancel request did.
#[derive(Debug, Clone, PartialEq)]
pub enum CancelOutcome {
    /// The job had not started; it is cancelled and will never run.
    Cancelled(Box<Job>),
    /// The job is running; its handler has been signalled and will end it as cancelled.
    Requested,
    /// The job had already ended in this state.
    AlreadyFinished(JobState),
}

impl Engine {
    /// Starts a new job with the kind and parameters of `owner`'s failed or cancelled job `id`,
    /// linked to it. `None` when there is no such job; `Err(state)` when it did not fail.
    pub async fn retry(
        &self,
        owner: &Owner,
        id: JobId,
    ) -> Result<Option<Result<JobId, JobState>>, SubmitError> {
        let Some(original) = self.job(owner, id).await? else {
            return Ok(None);
        };
        Ok(Some(self.retry_job(original).await?))
    }

    /// Starts a new job like `original` (failed or cancelled), for its owner, linked to it;
    /// `Err(state)` when it did not fail.
    pub(crate) async fn retry_job(
        &self,
        original: Job,
    ) -> Result<Result<JobId, JobState>, SubmitError> {
        if !matches!(original.state, JobState::Failed | JobState::Cancelled) {
            return Ok(Err(original.state));
        }
        let mut job = Job::new(
            original.owner.clone(),
            &original.kind,
            original.params,
            self.kinds().policy(&original.kind).max_attempts,
        );
        job.retry_of = Some(original.id);
        job.priority = original.priority;
        job.stage = self.paused_stage(&job.kind).await;
        Ok(Ok(self.enqueue(job).await?.id))
    }

    /// Deletes every job that finished more than `age` ago, with its files, and the charts'
    /// counts older than a day (the queue keeps no finished task). Returns how many jobs.
    pub async fn purge_finished(&self, age: Duration) -> Result<usize, EngineError> {
        let cutoff = model::now_ms().saturating_sub(millis(age));
        // The console's charts reach back a day.
        let day_ago = model::now_ms().div_euclid(60_000) - CHART_MINUTES_KEPT;
        self.registry().forget_finished_counts(day_ago).await?;
        let mut purged = 0;
        loop {
            let expired = self.registry().expired(cutoff, 500).await?;
            if expired.is_empty() {
                return Ok(purged);
            }
            for job in &expired {
                // Only finished jobs expire, and finished jobs can always be deleted.
                let _ = self.delete_job(job).await?;
            }
            purged += expired.len();
        }
    }

    /// Cancels `owner`'s job `id`: at once if it has not started, by signalling its handler if it
    /// runs. `None` when there is no such job for `owner`.
    pub async fn cancel(
        &self,
        owner: &Owner,
        id: JobId,
    ) -> Result<Option<CancelOutcome>, EngineError> {
        let Some(job) = self.job(owner, id).await? else {
            return Ok(None);
        };
        Ok(Some(self.cancel_job(&job).await?))
    }

    /// Cancels `job`: at once if it has not started, by signalling its handler if it runs.
    pub(crate) async fn cancel_job(&self, job: &Job) -> Result<CancelOutcome, EngineError> {
        let id = job.id;
        if job.state.is_terminal() {
            return Ok(CancelOutcome::AlreadyFinished(job.state));
        }
        if let Some(cancelled) = self.registry().cancel_queued(id).await? {
            self.hub().job_changed(cancelled.clone());
            return Ok(CancelOutcome::Cancelled(Box::new(cancelled)));
        }
        // It started in the meantime (or was running already): signal its handler, here and in
        // the other processes (a copy of its task here may be one the registry refuses to
        // start, while the attempt that counts runs elsewhere).
        self.running().cancel(id);
        self.hub().relay_surely(relay::Outgoing::Cancel(id)).await;
        match self.registry().get(id).await? {
            Some(job) if job.state.is_terminal() && job.state != JobState::Cancelled => {
                Ok(CancelOutcome::AlreadyFinished(job.state))
            }
            _ => Ok(CancelOutcome::Requested),
        }
    }

    /// Deletes `owner`'s finished job `id` with its log, its output files and its upload.
    /// Returns the job's state when it is not finished (nothing is deleted), `None` when there is
    /// no such job.
    pub async fn delete(
        &self,
        owner: &Owner,
        id: JobId,
    ) -> Result<Option<Result<(), JobState>>, EngineError> {
        let Some(job) = self.job(owner, id).await? else {
            return Ok(None);
        };
        Ok(Some(self.delete_job(&job).await?))
    }

    /// Deletes finished `job` with its log, its output files and its upload; `Err(state)` when
    /// it is not finished (nothing is deleted).
    pub(crate) async fn delete_job(&self, job: &Job) -> Result<Result<(), JobState>, EngineError> {
        let id = job.id;
        if !job.state.is_terminal() {
            return Ok(Err(job.state));
        }
        self.registry().delete(id).await?;
        self.files().delete_job(id)?;
        // The upload goes with the last job that reads it (a retry reads its original's).
        if let Some(upload) = job.upload()
            && !self.registry().upload_in_use(upload).await?
            && let Ok(upload) = upload.parse()
        {
            self.files().delete_upload(upload)?;
        }
        Ok(Ok(()))
    }

    /// Deletes the uploads made more than `age` ago that no job reads (uploaded and never
    /// used, or whose jobs were deleted). Returns how many.
    pub async fn sweep_uploads(&self, age: Duration) -> Result<usize, EngineError> {
        let before = model::now_ms().saturating_sub(millis(age));
        let mut swept = 0;
        for upload in self.files().uploads_before(before)? {
            if !self.registry().upload_in_use(&upload.to_string()).await? {
                self.files().delete_upload(upload)?;
                swept += 1;
            }
        }
        Ok(swept)
    }
}

/// How many minutes of finished-job counts the console's charts keep (a day and an hour).
const CHART_MINUTES_KEPT: i64 = 25 * 60;

/// A duration in milliseconds, saturating (a "keep forever" setting must not wrap around).
fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}
