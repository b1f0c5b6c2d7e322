//! The queue: apalis on one of Errand's own storages: SQLite (the default, in the registry's file
//! in the data dir), Postgres or Redis (both shared by several processes). Only job
//! ids travel through it; everything a person sees lives in the registry. The queue name is a fixed string, never apalis's default of
//! the Rust type path, so renaming a type cannot orphan queued jobs.
//!
//! apalis 1.0's workers re-fetch only on their heartbeat unless something wakes them. Errand
//! wakes them itself: every successful push in this process signals a [`Notify`] (after the
//! insert is committed, so the fetch it triggers sees the row), Postgres (LISTEN/NOTIFY) and Redis
//! (pub/sub) announce pushes from other processes, and a short tick backs both up — it also starts scheduled
//! jobs and retries, which nothing announces at their time.
//!
//! Each task carries its job's priority; every storage hands out due tasks by priority lifted
//! by their wait ([`Aging`]), then by due time.

use crate::db;
use crate::model::{DEFAULT_PRIORITY, Job, JobId, PRIORITIES, priority_within};
use crate::registry::Overdue;
use apalis::prelude::*;
use apalis_core::backend::persistence::Persistence;
use postgres_queue::{PostgresQueue, PostgresQueueError};
use redis_queue::{RedisQueue, RedisQueueError};
use serde::{Deserialize, Serialize};
use sqlite_queue::{SqliteQueue, SqliteQueueError, TaskLevels};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{PgPool, SqlitePool};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use storage::PersistedStorage;
pub(crate) use storage::Row;
use tokio::sync::Notify;
use wake::{WakeUps, notified};

pub(crate) mod postgres_queue;
mod redis_queue;
pub(crate) mod sqlite_queue;
mod storage;
mod wake;

/// Errand's SQLite storage as a worker consumes it.
type SqliteStorage = PersistedStorage<SqliteQueue, QueuedJob>;

/// Errand's Postgres storage as a worker consumes it.
type PostgresStorage = PersistedStorage<PostgresQueue, QueuedJob>;

/// Errand's Redis storage as a worker consumes it.
type RedisStorage = PersistedStorage<RedisQueue, QueuedJob>;

/// The queue every Errand job goes through. Never change it: queued jobs would be orphaned.
pub const QUEUE_NAME: &str = "errand.jobs";

/// How often a worker on a shared queue tells the others it is alive.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(5);

/// How many heartbeats a worker may miss before the others take it for dead.
const MISSED_HEARTBEATS: u32 = 3;

/// A worker silent this long is dead: its jobs, and the tasks it had fetched, go to others.
pub const ORPHANED_AFTER: Duration =
    Duration::from_secs(HEARTBEAT.as_secs() * MISSED_HEARTBEATS as u64);

/// What travels through apalis: the id of a job in the registry.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct QueuedJob {
    pub job_id: JobId,
    /// The job's delivery number when this task was pushed; see `Registry::start`.
    #[serde(default = "first_delivery")]
    pub delivery: i64,
    /// Not before this time (unix ms); the queue itself counts whole seconds.
    #[serde(default)]
    pub run_at: Option<i64>,
    /// The job's priority (see [`Aging`]); tasks of earlier versions have the default.
    #[serde(default = "default_priority")]
    pub priority: u8,
}

impl QueuedJob {
    /// The task for `job`'s current delivery.
    pub(crate) fn of(job: &Job) -> Self {
        Self {
            job_id: job.id,
            delivery: job.delivery,
            run_at: job.run_at,
            priority: job.priority,
        }
    }
}

fn first_delivery() -> i64 {
    1
}

fn default_priority() -> u8 {
    DEFAULT_PRIORITY
}

/// The priority of a stored task, read from its arguments (the default when they do not say).
pub(crate) fn priority_of(args: &[u8]) -> u8 {
    #[derive(Deserialize)]
    struct Priority {
        #[serde(default = "default_stored_priority")]
        priority: i64,
    }
    fn default_stored_priority() -> i64 {
        i64::from(DEFAULT_PRIORITY)
    }
    serde_json::from_slice::<Priority>(args)
        .map_or(DEFAULT_PRIORITY, |task| priority_within(task.priority))
}

/// How waiting lifts a task's priority, so that a steady stream of higher-priority jobs
/// cannot hold a lower one back for ever: every `step` a due task has waited raises it one
/// level, up to the highest, and from then on it waits in that level as if it had become due
/// when it was raised. Every queue storage orders its due tasks the same way: by this lifted
/// level, highest first, then by the (moved) due time, then by task id.
#[derive(Debug, Clone)]
pub struct Aging(Arc<std::sync::atomic::AtomicI64>);

/// A lower-priority job waits at most this long per level it lacks, by default.
pub const DEFAULT_AGING_STEP: Duration = Duration::from_secs(60);

impl Default for Aging {
    fn default() -> Self {
        Self(Arc::new(std::sync::atomic::AtomicI64::new(
            DEFAULT_AGING_STEP.as_millis() as i64,
        )))
    }
}

impl Aging {
    /// The step in milliseconds (at least 1).
    pub(crate) fn step_ms(&self) -> i64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed).max(1)
    }

    fn set(&self, step: Duration) {
        let ms = i64::try_from(step.as_millis()).unwrap_or(i64::MAX).max(1);
        self.0.store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// A task of `priority` due at `due` (unix ms), at `now`: its lifted level and the due time
    /// it counts in that level.
    pub(crate) fn lifted(&self, priority: u8, due: i64, now: i64) -> (u8, i64) {
        let step = self.step_ms();
        let room = i64::from(PRIORITIES.end().saturating_sub(priority));
        let levels = ((now - due).max(0) / step).min(room);
        (priority + levels as u8, due + levels * step)
    }
}

/// A failure of the queue's storage. Its text is for logs, never for a client.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("queue storage error: {0}")]
    Storage(String),
    #[error(transparent)]
    Postgres(#[from] PostgresQueueError),
    #[error(transparent)]
    Redis(#[from] RedisQueueError),
    #[error(transparent)]
    Sqlite(#[from] SqliteQueueError),
    #[error("unsupported queue URL {0:?}: use sqlite://…, postgres://… or redis://…")]
    Url(String),
}

/// Handle to the apalis queue.
#[derive(Debug, Clone)]
pub struct Queue {
    storage: Storage,
    wake: Arc<Notify>,
    aging: Aging,
}

/// The apalis storage behind a queue.
#[derive(Clone)]
pub(crate) enum Storage {
    Sqlite(SqliteStorage),
    Postgres(PostgresStorage),
    Redis(RedisStorage),
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Storage::Sqlite(storage) => storage.fmt(f),
            Storage::Postgres(storage) => storage.fmt(f),
            Storage::Redis(storage) => storage.fmt(f),
        }
    }
}

impl Queue {
    /// Opens (creating if needed) the queue file and runs apalis's migrations.
    pub async fn open(path: &Path) -> Result<Self, QueueError> {
        Self::open_sqlite(SqliteConnectOptions::new().filename(path)).await
    }

    /// Opens the queue at `url`: `sqlite://…` or `postgres://…` (and runs apalis's migrations),
    /// or `redis://…` (keys under `errand:`, or `?prefix=name`).
    pub async fn connect(url: &str) -> Result<Self, QueueError> {
        if db::is_postgres(url) {
            Self::open_postgres(db::postgres(url).await?).await
        } else if db::is_sqlite(url) {
            Self::open_sqlite(SqliteConnectOptions::from_str(url)?).await
        } else if url.starts_with("redis://") || url.starts_with("rediss://") {
            let aging = Aging::default();
            let queue = RedisQueue::connect(url, aging.clone()).await?;
            Ok(Self::with(
                Storage::Redis(RedisStorage::new(queue, redis_queue::BATCH, HEARTBEAT)),
                aging,
            ))
        } else {
            Err(QueueError::Url(url.to_owned()))
        }
    }

    /// The embedded default: the queue's table in the registry's SQLite database, so that a
    /// submit is one transaction. The tasks of an earlier version's separate queue file
    /// (`earlier_file`, `queue.db`) are moved in, and the file removed.
    pub async fn in_registry(
        registry: &crate::registry::Registry,
        earlier_file: &Path,
    ) -> Result<Self, QueueError> {
        let (Some(pool), Some(levels)) = (registry.sqlite(), registry.task_levels()) else {
            return Err(QueueError::Storage(
                "the registry does not hold the queue's table".into(),
            ));
        };
        let queue = Self::on_sqlite_pool(pool.clone(), levels).await?;
        match sqlite_queue::adopt_file(pool, earlier_file).await {
            Ok(0) => {}
            Ok(moved) => tracing::info!(moved, "moved the tasks of queue.db into errand.db"),
            // The reconciler pushes again any queued job that no task covers.
            Err(err) => {
                tracing::warn!(%err, "could not move the tasks of queue.db; they will be pushed again")
            }
        }
        Ok(queue)
    }

    async fn open_sqlite(options: SqliteConnectOptions) -> Result<Self, QueueError> {
        Self::on_sqlite_pool(db::sqlite(options).await?, TaskLevels::default()).await
    }

    async fn on_sqlite_pool(pool: SqlitePool, levels: TaskLevels) -> Result<Self, QueueError> {
        let aging = Aging::default();
        let queue = SqliteQueue::open(pool, aging.clone(), levels).await?;
        // One process owns the file: no other worker's heartbeat to watch.
        let heartbeat = Duration::from_secs(30);
        Ok(Self::with(
            Storage::Sqlite(SqliteStorage::new(queue, sqlite_queue::BATCH, heartbeat)),
            aging,
        ))
    }

    async fn open_postgres(pool: PgPool) -> Result<Self, QueueError> {
        let aging = Aging::default();
        let queue = PostgresQueue::open(pool, aging.clone()).await?;
        Ok(Self::with(
            Storage::Postgres(PostgresStorage::new(
                queue,
                postgres_queue::BATCH,
                HEARTBEAT,
            )),
            aging,
        ))
    }

    fn with(storage: Storage, aging: Aging) -> Self {
        Self {
            storage,
            wake: Arc::new(Notify::new()),
            aging,
        }
    }

    /// Sets how fast waiting lifts a task's priority (see [`Aging`]); 60 s a level unless set.
    pub fn set_aging(&self, step: Duration) {
        self.aging.set(step);
    }

    /// The Redis queue, when the queue is on Redis (live events travel through it).
    pub(crate) fn redis(&self) -> Option<&RedisQueue> {
        match &self.storage {
            Storage::Redis(storage) => Some(storage.persistence()),
            _ => None,
        }
    }

    /// Wakes an idle worker: a task was written outside [`Queue::push`] (with its job, in the
    /// registry's transaction).
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// True when other processes can share this queue.
    pub fn is_shared(&self) -> bool {
        !matches!(self.storage, Storage::Sqlite(_))
    }

    /// Puts a delivery of a job on the queue, not to be handed out before its `run_at` (unix
    /// ms; the queue counts whole seconds, so it may come up to a second early and the worker
    /// waits the rest), and wakes the worker.
    pub async fn push(&self, job: QueuedJob) -> Result<(), QueueError> {
        let task_id = task_id(job.job_id, job.delivery);
        let run_at = job.run_at;
        let mut task = TaskBuilder::new(job)
            .task_id(TaskId::from(task_id))
            // Errand records a job's failures and retries itself; a handler only fails the task
            // on a storage error, and the storages offer such a task again after a second (a
            // delivery that already ran is skipped).
            .max_attempts(5);
        if let Some(run_at) = run_at {
            task = task.run_at_timestamp((run_at.max(0) / 1000) as u64);
        }
        // The storages read the priority from the arguments.
        let task = encode(task.build())?;
        match &self.storage {
            Storage::Postgres(storage) => {
                storage.persistence().clone().push_tasks(vec![task]).await?;
            }
            Storage::Sqlite(storage) => {
                storage.persistence().clone().push_tasks(vec![task]).await?;
            }
            Storage::Redis(storage) => {
                storage.persistence().clone().push_tasks(vec![task]).await?;
            }
        }
        self.wake.notify_one();
        Ok(())
    }

    /// The jobs among `jobs` whose delivery no live task in the queue covers (see
    /// `Engine::reconcile`).
    pub(crate) async fn missing(&self, jobs: &[Overdue]) -> Result<Vec<Overdue>, QueueError> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = jobs
            .iter()
            .map(|job| task_id(job.id, job.delivery).to_string())
            .collect();
        let present: Vec<bool> = match &self.storage {
            Storage::Sqlite(storage) => storage.persistence().contains(&ids).await?,
            Storage::Redis(storage) => storage.persistence().contains(&ids).await?,
            Storage::Postgres(storage) => storage.persistence().contains(&ids).await?,
        };
        Ok(jobs
            .iter()
            .zip(present)
            .filter(|(_, present)| !present)
            .map(|(job, _)| *job)
            .collect())
    }

    /// Checks that the queue's storage answers (one small read).
    pub async fn ping(&self) -> Result<(), QueueError> {
        let probe = [String::new()];
        match &self.storage {
            Storage::Sqlite(storage) => drop(storage.persistence().contains(&probe).await?),
            Storage::Redis(storage) => drop(storage.persistence().contains(&probe).await?),
            Storage::Postgres(storage) => drop(storage.persistence().contains(&probe).await?),
        }
        Ok(())
    }

    /// How many tasks the queue holds, waiting or running (for operators and tests).
    pub async fn task_count(&self) -> Result<u64, QueueError> {
        Ok(match &self.storage {
            Storage::Sqlite(storage) => storage.persistence().task_count().await?,
            Storage::Redis(storage) => storage.persistence().task_count().await?,
            Storage::Postgres(storage) => storage.persistence().task_count().await?,
        })
    }

    /// The storage a worker consumes.
    pub(crate) fn storage(&self) -> &Storage {
        &self.storage
    }

    /// What wakes a worker of this process: its own pushes, a backstop tick, and on a shared
    /// queue the pushes of every process (Postgres LISTEN, Redis pub/sub).
    pub(crate) fn wake_ups(&self) -> WakeUps {
        let mut sources = vec![notified(self.wake.clone())];
        match &self.storage {
            Storage::Sqlite(_) => {}
            Storage::Postgres(storage) => sources.push(storage.persistence().pushes()),
            Storage::Redis(storage) => sources.push(storage.persistence().pushes()),
        }
        WakeUps::new(sources)
    }
}

/// The id of the task that carries `delivery` of job `job_id`: the job's own id for the first,
/// and for later ones (retries, recoveries) an id made from both, the same every time, so
/// pushing one delivery twice (the reconciler after a push that did land) leaves one task.
pub(crate) fn task_id(job_id: JobId, delivery: i64) -> ulid::Ulid {
    if delivery == 1 {
        return job_id;
    }
    // Keep the job's time (the SQL storages order by it) and mix the delivery into the random
    // part with a multiplier that spreads consecutive numbers far apart.
    let mix = u128::from(delivery as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835);
    ulid::Ulid::from_parts(job_id.timestamp_ms(), job_id.random() ^ mix)
}

/// A delivery's row in the SQL queues' table, exactly as [`Queue::push`] would store it: for
/// the registry to write with the job, in one transaction.
pub(crate) fn task_row(job: &QueuedJob) -> Row {
    let args = serde_json::to_vec(job).unwrap_or_default();
    // The queue counts whole seconds (see `Queue::push`).
    let due = job
        .run_at
        .map_or_else(crate::model::now_ms, |ms| ms.max(0) / 1000 * 1000);
    Row {
        id: task_id(job.job_id, job.delivery).to_string(),
        args,
        due,
        priority: job.priority,
    }
}

fn encode(task: Task<QueuedJob>) -> Result<Task<Vec<u8>>, QueueError> {
    task.try_map_args(|job| serde_json::to_vec(&job))
        .map_err(|e| QueueError::Storage(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_delivery_has_its_own_stable_task_id() {
        let job = crate::model::new_job_id();
        assert_eq!(
            task_id(job, 1),
            job,
            "the first delivery goes under the job's id"
        );
        let ids: std::collections::HashSet<_> = (1..=1_000).map(|d| task_id(job, d)).collect();
        assert_eq!(ids.len(), 1_000, "no two deliveries share a task id");
        assert_eq!(task_id(job, 7), task_id(job, 7));
        assert_eq!(task_id(job, 7).timestamp_ms(), job.timestamp_ms());
    }

    #[test]
    fn waiting_lifts_a_task_one_level_a_step_up_to_the_highest() {
        let aging = Aging::default();
        aging.set(Duration::from_secs(60));
        let due = 1_000_000;
        assert_eq!(
            aging.lifted(1, due, due),
            (1, due),
            "not lifted before a step"
        );
        assert_eq!(aging.lifted(1, due, due + 59_999), (1, due));
        assert_eq!(aging.lifted(1, due, due + 60_000), (2, due + 60_000));
        assert_eq!(aging.lifted(5, due, due + 150_000), (7, due + 120_000));
        assert_eq!(
            aging.lifted(1, due, due + 3_600_000),
            (9, due + 8 * 60_000),
            "no higher than 9, and its time moves only by the levels it gained"
        );
        assert_eq!(aging.lifted(9, due, due + 3_600_000), (9, due));
        assert_eq!(aging.lifted(3, due, due - 5_000), (3, due), "not due yet");
    }

    #[test]
    fn a_stored_task_says_its_priority_or_has_the_default() {
        let job = crate::model::new_job_id();
        let task = |priority| {
            serde_json::to_vec(&QueuedJob {
                job_id: job,
                delivery: 1,
                run_at: None,
                priority,
            })
            .unwrap_or_default()
        };
        assert_eq!(priority_of(&task(8)), 8);
        assert_eq!(priority_of(&task(200)), 9, "kept within 1 to 9");
        let earlier = format!(r#"{{"job_id":"{job}","delivery":1,"run_at":null}}"#);
        assert_eq!(priority_of(earlier.as_bytes()), DEFAULT_PRIORITY);
        assert_eq!(priority_of(b"not json"), DEFAULT_PRIORITY);
    }
}
