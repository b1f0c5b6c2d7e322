//! What operators do from the console, over every owner's jobs: look, retry, cancel, delete,
//! act in bulk on every job a filter matches, pause and resume a kind. Every action is checked
//! against the operator's role and written to the audit log.

use crate::queue::QueuedJob;
use crate::registry::{AuditEntry, JobQuery};
use crate::{CancelOutcome, Engine, EngineError, Job, JobDetail, JobId, JobState, SubmitError};
use futures::StreamExt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The stage a queued job of a paused kind shows its owner.
pub const PAUSED_STAGE: &str = "paused by the operator";

/// What an operator may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Reads and acts.
    Admin,
    /// Reads only.
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Viewer => "viewer",
        }
    }

    pub fn may_act(self) -> bool {
        self == Role::Admin
    }
}

/// Who acts: a role and the login session (for the audit log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator {
    pub role: Role,
    pub session: String,
}

/// Why an operator's action did nothing.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("the viewer role can look but not act; log in with the admin password to do this")]
    ReadOnly,
    #[error("no such job")]
    NotFound,
    /// The job's state does not allow it (a 409 for clients).
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl From<crate::RegistryError> for ConsoleError {
    fn from(err: crate::RegistryError) -> Self {
        ConsoleError::Engine(err.into())
    }
}

impl From<SubmitError> for ConsoleError {
    fn from(err: SubmitError) -> Self {
        match err {
            SubmitError::Engine(err) => ConsoleError::Engine(err),
            other => ConsoleError::Refused(other.to_string()),
        }
    }
}

/// An action on every job a filter matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BulkAction {
    /// Cancels the queued and running ones.
    Cancel,
    /// Starts a new job like each failed or cancelled one not retried yet.
    Retry,
    /// Deletes the finished ones.
    Delete,
}

impl BulkAction {
    pub fn as_str(self) -> &'static str {
        match self {
            BulkAction::Cancel => "cancel",
            BulkAction::Retry => "retry",
            BulkAction::Delete => "delete",
        }
    }

    /// Which of the jobs a filter matches this action can touch (a preview counts those).
    pub fn applies_to(self, query: &JobQuery) -> Vec<JobQuery> {
        let states: &[JobState] = match self {
            BulkAction::Cancel => &[JobState::Queued, JobState::Running],
            BulkAction::Retry => &[JobState::Failed, JobState::Cancelled],
            BulkAction::Delete => &[JobState::Succeeded, JobState::Failed, JobState::Cancelled],
        };
        states
            .iter()
            .filter(|state| query.state.is_none_or(|wanted| wanted == **state))
            .map(|state| JobQuery {
                state: Some(*state),
                ..query.clone()
            })
            .collect()
    }
}

/// A bulk action's progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkStatus {
    pub id: u64,
    pub action: BulkAction,
    /// The filter, as the operator wrote it.
    pub target: String,
    pub started_at: i64,
    /// How many jobs the preview counted.
    pub expected: u64,
    /// Jobs looked at so far.
    pub seen: u64,
    /// Jobs it changed so far.
    pub touched: u64,
    pub finished: bool,
    /// Why it stopped early, if it did.
    pub error: Option<String>,
}

/// How many jobs a bulk action reads per step, and how many it works on at once: enough that
/// the registry's group commit batches them, few enough that other requests pass in between.
const BULK_PAGE: u32 = 500;
const BULK_CONCURRENCY: usize = 16;
/// How many finished bulk actions are remembered for the console.
const BULK_KEPT: usize = 20;

/// The console's in-process state: recent bulk actions and the paused kinds as last read.
#[derive(Debug, Default)]
pub(crate) struct ConsoleState {
    bulks: Mutex<Vec<Arc<Mutex<BulkStatus>>>>,
    next_bulk: std::sync::atomic::AtomicU64,
    paused: Mutex<Option<(Instant, Arc<Vec<String>>)>>,
}

/// How long the paused kinds read from the registry are trusted by submits.
const PAUSED_FRESH_FOR: Duration = Duration::from_secs(1);

impl Engine {
    /// Any job with its log and retries, whoever owns it.
    pub async fn console_job(&self, id: JobId) -> Result<Option<JobDetail>, EngineError> {
        match self.registry().get(id).await? {
            Some(job) => Ok(Some(self.detail_of(job).await?)),
            None => Ok(None),
        }
    }

    /// Cancels any job for an operator.
    pub async fn operator_cancel(
        &self,
        who: &Operator,
        id: JobId,
    ) -> Result<CancelOutcome, ConsoleError> {
        let job = self.acting_on(who, id).await?;
        let outcome = self.cancel_job(&job).await?;
        if let CancelOutcome::AlreadyFinished(state) = outcome {
            return Err(already(state));
        }
        self.record(who, "cancel", &id.to_string(), 1).await;
        Ok(outcome)
    }

    /// Starts a new job like any failed or cancelled job, for its owner; the new job's id.
    pub async fn operator_retry(&self, who: &Operator, id: JobId) -> Result<JobId, ConsoleError> {
        let job = self.acting_on(who, id).await?;
        let new_id = self.retry_job(job).await?.map_err(|state| {
            ConsoleError::Refused(format!(
                "only failed or cancelled jobs can be retried; this one is {}",
                state.as_str()
            ))
        })?;
        self.record(who, "retry", &id.to_string(), 1).await;
        Ok(new_id)
    }

    /// Deletes any finished job with its log and files.
    pub async fn operator_delete(&self, who: &Operator, id: JobId) -> Result<(), ConsoleError> {
        let job = self.acting_on(who, id).await?;
        self.delete_job(&job).await?.map_err(|state| {
            ConsoleError::Refused(format!(
                "only finished jobs can be deleted; this one is {} (cancel it first)",
                state.as_str()
            ))
        })?;
        self.record(who, "delete", &id.to_string(), 1).await;
        Ok(())
    }

    /// How many jobs `action` would touch among those `query` matches.
    pub async fn bulk_preview(
        &self,
        action: BulkAction,
        query: &JobQuery,
    ) -> Result<u64, EngineError> {
        let mut total = 0;
        for part in action.applies_to(query) {
            total += self.registry().console_count(&part).await?;
        }
        Ok(total)
    }

    /// Starts `action` on every job `query` matches (made before now), in the background, in
    /// steps that leave room for other work; `target` describes the filter for the audit log.
    /// Returns its id, to follow with [`Engine::bulk_status`].
    pub async fn start_bulk(
        &self,
        who: &Operator,
        action: BulkAction,
        query: JobQuery,
        target: String,
    ) -> Result<u64, ConsoleError> {
        if !who.role.may_act() {
            return Err(ConsoleError::ReadOnly);
        }
        let expected = self.bulk_preview(action, &query).await?;
        let id = 1 + self
            .inner
            .console
            .next_bulk
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let status = Arc::new(Mutex::new(BulkStatus {
            id,
            action,
            target: target.clone(),
            started_at: crate::now_ms(),
            expected,
            seen: 0,
            touched: 0,
            finished: false,
            error: None,
        }));
        {
            let mut bulks = self
                .inner
                .console
                .bulks
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            bulks.push(status.clone());
            let excess = bulks.len().saturating_sub(BULK_KEPT);
            bulks.drain(..excess);
        }
        // Jobs made from now on (a bulk retry's own jobs among them) are not its business.
        let mut query = query;
        let bound = crate::now_ms() + 1;
        query.created_before = Some(query.created_before.map_or(bound, |b| b.min(bound)));
        let engine = self.clone();
        let who = who.clone();
        tokio::spawn(async move {
            let result = engine.run_bulk(action, &query, &status).await;
            let touched = status
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .touched;
            // In the audit log before it shows as finished.
            let what = format!("bulk-{}", action.as_str());
            engine.record(&who, &what, &target, touched).await;
            let mut status = status.lock().unwrap_or_else(PoisonError::into_inner);
            if let Err(err) = &result {
                tracing::error!(%err, "a bulk action stopped early");
                status.error = Some("stopped early: the registry failed (see the log)".into());
            }
            status.finished = true;
        });
        Ok(id)
    }

    async fn run_bulk(
        &self,
        action: BulkAction,
        query: &JobQuery,
        status: &Mutex<BulkStatus>,
    ) -> Result<(), EngineError> {
        for part in action.applies_to(query) {
            let mut after = None;
            loop {
                let ids = self.registry().console_ids(&part, after, BULK_PAGE).await?;
                let Some(last) = ids.last() else { break };
                after = Some(*last);
                let seen = ids.len() as u64;
                let touched: Vec<bool> = futures::stream::iter(ids)
                    .map(|id| self.bulk_one(action, id))
                    .buffer_unordered(BULK_CONCURRENCY)
                    .collect()
                    .await;
                let touched = touched.into_iter().filter(|t| *t).count() as u64;
                {
                    let mut status = status.lock().unwrap_or_else(PoisonError::into_inner);
                    status.seen += seen;
                    status.touched += touched;
                }
                tokio::task::yield_now().await;
            }
        }
        Ok(())
    }

    /// Applies a bulk action to one job; true when it changed something. A job that changed
    /// state since it was listed is skipped; a failure is logged and skipped.
    async fn bulk_one(&self, action: BulkAction, id: JobId) -> bool {
        let job = match self.registry().get(id).await {
            Ok(Some(job)) => job,
            Ok(None) => return false,
            Err(err) => {
                tracing::warn!(job_id = %id, %err, "bulk action: could not read a job");
                return false;
            }
        };
        let done = match action {
            BulkAction::Cancel => self
                .cancel_job(&job)
                .await
                .map(|outcome| !matches!(outcome, CancelOutcome::AlreadyFinished(_))),
            BulkAction::Retry => match self.registry().retries_of(id).await {
                Ok(retries) if !retries.is_empty() => Ok(false),
                Ok(_) => match self.retry_job(job).await {
                    Ok(done) => Ok(done.is_ok()),
                    Err(SubmitError::Engine(err)) => Err(err),
                    Err(_) => Ok(false),
                },
                Err(err) => Err(err.into()),
            },
            BulkAction::Delete => self.delete_job(&job).await.map(|done| done.is_ok()),
        };
        done.unwrap_or_else(|err| {
            tracing::warn!(job_id = %id, %err, "bulk action: a job failed");
            false
        })
    }

    /// The recent bulk actions, newest first.
    pub fn bulk_status(&self) -> Vec<BulkStatus> {
        let bulks = self
            .inner
            .console
            .bulks
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        bulks
            .iter()
            .rev()
            .map(|status| {
                status
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone()
            })
            .collect()
    }

    /// Pauses `kind`: its queued jobs wait (their owners see [`PAUSED_STAGE`]), running ones
    /// finish. Returns how many queued jobs now wait.
    pub async fn pause_kind(&self, who: &Operator, kind: &str) -> Result<u64, ConsoleError> {
        self.known_kind(who, kind)?;
        self.registry().pause_kind(kind).await?;
        self.forget_paused();
        let mut waiting = 0;
        loop {
            let marked = self
                .registry()
                .mark_paused(kind, PAUSED_STAGE, BULK_PAGE)
                .await?;
            if marked.is_empty() {
                break;
            }
            waiting += marked.len() as u64;
            for job in marked {
                self.hub().job_changed(job);
            }
        }
        self.record(who, "pause", kind, waiting).await;
        Ok(waiting)
    }

    /// Resumes `kind`: every queued job of it goes back in the queue under a new delivery
    /// (workers dropped the tasks they met while it was paused; a task not reached yet becomes
    /// stale). Returns how many.
    pub async fn resume_kind(&self, who: &Operator, kind: &str) -> Result<u64, ConsoleError> {
        self.known_kind(who, kind)?;
        self.registry().resume_kind(kind).await?;
        self.forget_paused();
        let (mut resumed, mut after) = (0, None);
        loop {
            let jobs = self
                .registry()
                .redeliver_queued(kind, PAUSED_STAGE, after, BULK_PAGE)
                .await?;
            let Some(last) = jobs.last() else { break };
            after = Some(last.id);
            resumed += jobs.len() as u64;
            for job in jobs {
                if let Err(err) = self.queue().push(QueuedJob::of(&job)).await {
                    tracing::warn!(job_id = %job.id, %err, "could not push a resumed job; the reconciler will");
                }
                self.hub().job_changed(job);
            }
        }
        self.record(who, "resume", kind, resumed).await;
        Ok(resumed)
    }

    /// The kinds paused now, with when (unix ms).
    pub async fn paused_kinds(&self) -> Result<Vec<(String, i64)>, EngineError> {
        Ok(self.registry().paused_kinds().await?)
    }

    /// The stage a new job of `kind` starts with: [`PAUSED_STAGE`] while the kind is paused
    /// (as last read, at most [`PAUSED_FRESH_FOR`] ago).
    pub(crate) async fn paused_stage(&self, kind: &str) -> Option<String> {
        let cached = {
            let paused = self
                .inner
                .console
                .paused
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            paused
                .as_ref()
                .filter(|(read, _)| read.elapsed() < PAUSED_FRESH_FOR)
                .map(|(_, kinds)| kinds.clone())
        };
        let kinds = match cached {
            Some(kinds) => kinds,
            None => {
                let kinds = match self.registry().paused_kinds().await {
                    Ok(paused) => Arc::new(paused.into_iter().map(|(kind, _)| kind).collect()),
                    // Only the owner's note depends on it; workers read the table itself.
                    Err(_) => Arc::new(Vec::new()),
                };
                *self
                    .inner
                    .console
                    .paused
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) =
                    Some((Instant::now(), kinds.clone()));
                kinds
            }
        };
        kinds
            .iter()
            .any(|paused| paused == kind)
            .then(|| PAUSED_STAGE.to_owned())
    }

    fn forget_paused(&self) {
        *self
            .inner
            .console
            .paused
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }

    fn known_kind(&self, who: &Operator, kind: &str) -> Result<(), ConsoleError> {
        if !who.role.may_act() {
            return Err(ConsoleError::ReadOnly);
        }
        if !self.kinds().names().contains(&kind) {
            return Err(ConsoleError::NotFound);
        }
        Ok(())
    }

    /// The job an operator's action is about, once the operator may act.
    async fn acting_on(&self, who: &Operator, id: JobId) -> Result<Job, ConsoleError> {
        if !who.role.may_act() {
            return Err(ConsoleError::ReadOnly);
        }
        self.registry().get(id).await?.ok_or(ConsoleError::NotFound)
    }

    /// Writes an action to the audit log (a failure is logged: the action itself is done).
    pub(crate) async fn record(&self, who: &Operator, action: &str, target: &str, jobs: u64) {
        let entry = AuditEntry {
            at: crate::now_ms(),
            role: who.role.as_str().to_owned(),
            session: who.session.clone(),
            action: action.to_owned(),
            target: target.to_owned(),
            jobs,
        };
        tracing::info!(role = %entry.role, session = %entry.session, action, target, jobs, "operator action");
        if let Err(err) = self.registry().audit(&entry).await {
            tracing::error!(%err, "could not write the audit log");
        }
    }
}

fn already(state: JobState) -> ConsoleError {
    ConsoleError::Refused(format!("the job already finished ({})", state.as_str()))
}
