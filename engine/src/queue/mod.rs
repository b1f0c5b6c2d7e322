//! The queue: apalis on Errand's own SQLite storage (the default, a file in the data dir),
//! apalis-postgres, or Errand's own Redis storage (both shared by several processes). Only job
//! ids travel through it; everything a person sees lives in the registry. The queue name is a fixed string, never apalis's default of
//! the Rust type path, so renaming a type cannot orphan queued jobs.
//!
//! apalis 1.0's workers re-fetch only on their heartbeat unless something wakes them. Errand
//! wakes them itself: every successful push in this process signals a [`Notify`] (after the
//! insert is committed, so the fetch it triggers sees the row), Postgres (LISTEN/NOTIFY) and Redis
//! (pub/sub) announce pushes from other processes, and a short tick backs both up — it also starts scheduled
//! jobs and retries, which nothing announces at their time.

use crate::db;
use crate::model::JobId;
use crate::registry::Overdue;
use apalis::prelude::*;
use apalis_core::backend::persistence::Persistence;
use apalis_postgres::{PgPool, PostgresStorage, Pubsub};
use futures::StreamExt;
use redis_queue::{RedisQueue, RedisQueueError};
use serde::{Deserialize, Serialize};
use sqlite_queue::{SqliteQueue, SqliteQueueError};
use sqlx::SqlitePool;
use sqlx::sqlite::SqliteConnectOptions;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use storage::PersistedStorage;
use tokio::sync::Notify;
use wake::{WakeUps, notified};

mod redis_queue;
pub(crate) mod sqlite_queue;
mod storage;
mod wake;

/// Errand's SQLite storage as a worker consumes it.
type SqliteStorage = PersistedStorage<SqliteQueue, QueuedJob>;

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
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueuedJob {
    pub job_id: JobId,
    /// The job's delivery number when this task was pushed; see `Registry::start`.
    #[serde(default = "first_delivery")]
    pub delivery: i64,
    /// Not before this time (unix ms); the queue itself counts whole seconds.
    #[serde(default)]
    pub run_at: Option<i64>,
}

fn first_delivery() -> i64 {
    1
}

/// A failure of the queue's storage. Its text is for logs, never for a client.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("queue storage error: {0}")]
    Storage(String),
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
}

/// The apalis storage behind a queue.
#[derive(Clone)]
pub(crate) enum Storage {
    Sqlite(SqliteStorage),
    Postgres(PostgresStorage<QueuedJob>),
    Redis(RedisStorage),
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Storage::Sqlite(storage) => storage.fmt(f),
            Storage::Postgres(_) => f.write_str("PostgresStorage"),
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
            let queue = RedisQueue::connect(url).await?;
            Ok(Self::with(Storage::Redis(RedisStorage::new(
                queue,
                redis_queue::BATCH,
                HEARTBEAT,
            ))))
        } else {
            Err(QueueError::Url(url.to_owned()))
        }
    }

    /// The embedded default: the queue's table in the registry's SQLite database (`pool`), so
    /// that a submit is one transaction. The tasks of an earlier version's separate queue file
    /// (`earlier_file`, `queue.db`) are moved in, and the file removed.
    pub async fn in_registry(pool: SqlitePool, earlier_file: &Path) -> Result<Self, QueueError> {
        let queue = Self::on_sqlite_pool(pool.clone()).await?;
        match sqlite_queue::adopt_file(&pool, earlier_file).await {
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
        Self::on_sqlite_pool(db::sqlite(options).await?).await
    }

    async fn on_sqlite_pool(pool: SqlitePool) -> Result<Self, QueueError> {
        let queue = SqliteQueue::open(pool).await?;
        // One process owns the file: no other worker's heartbeat to watch.
        let heartbeat = Duration::from_secs(30);
        Ok(Self::with(Storage::Sqlite(SqliteStorage::new(
            queue,
            sqlite_queue::BATCH,
            heartbeat,
        ))))
    }

    async fn open_postgres(pool: PgPool) -> Result<Self, QueueError> {
        PostgresStorage::setup(&pool)
            .await
            .map_err(|e| QueueError::Storage(e.to_string()))?;
        // Errand recovers a dead worker's jobs itself (see `Engine::recover_orphans`); apalis's
        // own recovery only has to hand back its tasks, which Errand then skips as stale.
        let config = apalis_postgres::Config::default()
            .queue(QUEUE_NAME)
            .heartbeat_interval(HEARTBEAT)
            .missed_heartbeats(MISSED_HEARTBEATS as usize);
        Ok(Self::with(Storage::Postgres(
            PostgresStorage::new(&pool).with_config(config),
        )))
    }

    fn with(storage: Storage) -> Self {
        Self {
            storage,
            wake: Arc::new(Notify::new()),
        }
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

    /// Puts a delivery of a job on the queue, not to be handed out before `run_at` (unix ms;
    /// the queue counts whole seconds, so it may come up to a second early and the worker waits
    /// the rest), and wakes the worker.
    pub async fn push(
        &self,
        job_id: JobId,
        delivery: i64,
        run_at: Option<i64>,
    ) -> Result<(), QueueError> {
        let task_id = task_id(job_id, delivery);
        let mut task = TaskBuilder::new(QueuedJob {
            job_id,
            delivery,
            run_at,
        })
        .task_id(TaskId::from(task_id))
        // Errand records a job's failures and retries itself; a handler only fails the task on a
        // storage error, and apalis-postgres may then offer it again (a delivery that already
        // ran is skipped). Errand's own storages offer such a task again after a second.
        .max_attempts(5);
        if let Some(run_at) = run_at {
            task = task.run_at_timestamp((run_at.max(0) / 1000) as u64);
        }
        let task = task.build();
        match &self.storage {
            Storage::Postgres(storage) => storage
                .clone()
                .push_task(task)
                .await
                .map_err(|e| QueueError::Storage(e.to_string()))?,
            Storage::Sqlite(storage) => {
                let task = encode(task)?;
                storage.persistence().clone().push_tasks(vec![task]).await?;
            }
            Storage::Redis(storage) => {
                let task = encode(task)?;
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
            Storage::Postgres(storage) => {
                // A task apalis-postgres finished or gave up on keeps its row (and id) until
                // purged: remove those, so that the id can be pushed again.
                sqlx::query(
                    "DELETE FROM apalis.jobs WHERE id = ANY($1) AND job_type = $2 \
                     AND (status IN ('Done', 'Killed') \
                          OR (status = 'Failed' AND attempts >= max_attempts))",
                )
                .bind(&ids)
                .bind(QUEUE_NAME)
                .execute(storage.pool())
                .await?;
                let live: std::collections::HashSet<String> =
                    sqlx::query_scalar("SELECT id FROM apalis.jobs WHERE id = ANY($1)")
                        .bind(&ids)
                        .fetch_all(storage.pool())
                        .await?
                        .into_iter()
                        .collect();
                ids.iter().map(|id| live.contains(id)).collect()
            }
        };
        Ok(jobs
            .iter()
            .zip(present)
            .filter(|(_, present)| !present)
            .map(|(job, _)| *job)
            .collect())
    }

    /// Deletes the queue's records of tasks that finished before `before` (unix ms):
    /// apalis-postgres keeps them forever otherwise (Errand's own SQLite and Redis storages keep
    /// none). Returns how many.
    pub async fn purge_finished(&self, before: i64) -> Result<u64, QueueError> {
        let deleted = match &self.storage {
            Storage::Sqlite(_) | Storage::Redis(_) => 0,
            Storage::Postgres(storage) => sqlx::query(
                "DELETE FROM apalis.jobs WHERE job_type = $1 \
                 AND status IN ('Done', 'Killed', 'Failed') \
                 AND done_at IS NOT NULL AND done_at < to_timestamp($2)",
            )
            .bind(QUEUE_NAME)
            .bind(before as f64 / 1000.0)
            .execute(storage.pool())
            .await?
            .rows_affected(),
        };
        Ok(deleted)
    }

    /// Checks that the queue's storage answers (one small read).
    pub async fn ping(&self) -> Result<(), QueueError> {
        let probe = [String::new()];
        match &self.storage {
            Storage::Sqlite(storage) => drop(storage.persistence().contains(&probe).await?),
            Storage::Redis(storage) => drop(storage.persistence().contains(&probe).await?),
            Storage::Postgres(storage) => {
                sqlx::query("SELECT 1").execute(storage.pool()).await?;
            }
        }
        Ok(())
    }

    /// How many task records the queue holds, finished ones included (for operators and tests).
    pub async fn task_count(&self) -> Result<u64, QueueError> {
        Ok(match &self.storage {
            Storage::Sqlite(storage) => storage.persistence().task_count().await?,
            Storage::Redis(storage) => storage.persistence().task_count().await?,
            Storage::Postgres(storage) => {
                let count: i64 =
                    sqlx::query_scalar("SELECT COUNT(*) FROM apalis.jobs WHERE job_type = $1")
                        .bind(QUEUE_NAME)
                        .fetch_one(storage.pool())
                        .await?;
                count.max(0) as u64
            }
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
            Storage::Postgres(storage) => {
                let inserts = Pubsub::new(storage.pool().clone(), QUEUE_NAME.to_owned());
                sources.push(inserts.map(|_| ()).boxed());
            }
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

/// A task with its arguments as JSON bytes, as Errand's own storages keep them.
/// A delivery's row in the SQLite queue's table, exactly as [`Queue::push`] would store it:
/// for the registry to write with the job, in one transaction.
pub(crate) fn sqlite_row(job_id: JobId, delivery: i64, run_at: Option<i64>) -> sqlite_queue::Row {
    let args = serde_json::to_vec(&QueuedJob {
        job_id,
        delivery,
        run_at,
    })
    .unwrap_or_default();
    // The queue counts whole seconds (see `Queue::push`).
    let due = run_at.map_or_else(crate::model::now_ms, |ms| ms.max(0) / 1000 * 1000);
    (task_id(job_id, delivery).to_string(), args, due)
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
}
