//! Errand's own Postgres storage for apalis, behind apalis's `Persistence` trait: the queue that
//! web-only and worker-only processes share.
//!
//! apalis-postgres 1.0 keeps every finished task, acknowledges through a `jsonb` join that
//! locks each row, and commits each step on its own; it drained about 600 no-op jobs a second
//! here. As in the SQLite and Redis storages, a task here lives only while it waits or runs (the
//! registry keeps the history):
//! - a fetch claims a batch in one statement, each priority level's oldest due tasks by a seek
//!   of `errand_tasks_ready`, skipping rows another worker is claiming (`FOR UPDATE SKIP
//!   LOCKED`), so workers of several processes never wait for each other;
//! - acknowledging a batch is one `DELETE`;
//! - pushes from concurrent requests share one transaction (group commit), which also sends a
//!   `NOTIFY` on [`CHANNEL`]: idle workers of every process `LISTEN` and fetch at once;
//! - a worker beats in `errand_queue_workers`; the tasks of a worker silent for
//!   [`ORPHANED_AFTER`](super::ORPHANED_AFTER) wait again.
//!
//! Times are each process's clock in unix ms, as in the registry.

use super::Aging;
use super::storage::{GroupCommit, RETRY_AFTER_ERROR, Row, completed, fetched, rows_of};
use crate::model::{DEFAULT_PRIORITY, PRIORITIES, now_ms, priority_within};
use apalis_core::backend::persistence::{Persistence, TaskEvent};
use apalis_core::task::Task;
use apalis_core::worker::context::WorkerContext;
use futures::StreamExt;
use futures::stream::BoxStream;
use serde_json::Value;
use sqlx::postgres::PgListener;
use sqlx::{AssertSqlSafe, PgPool};
use std::time::Duration;

/// How many tasks one fetch claims.
pub(crate) const BATCH: usize = 32;

/// The channel a push's transaction notifies, for idle workers of every process.
pub(crate) const CHANNEL: &str = "errand_queue";

/// Serialises the table's creation between processes starting together (an arbitrary key).
const SETUP_LOCK: i64 = 0x6572_7261_6e64_7131;

/// A failure of the Postgres queue.
#[derive(Debug, thiserror::Error)]
pub enum PostgresQueueError {
    #[error("queue database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("bad task id in the queue: {0}")]
    TaskId(String),
    #[error("could not write tasks: {0}")]
    Push(String),
}

/// The queue's pool and its group-commit writer.
#[derive(Clone)]
pub(crate) struct PostgresQueue {
    pool: PgPool,
    aging: Aging,
    writer: GroupCommit,
}

impl std::fmt::Debug for PostgresQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresQueue").finish_non_exhaustive()
    }
}

impl PostgresQueue {
    /// Creates the queue's tables in `pool`'s database if needed, moves in the live tasks an
    /// earlier version left in apalis-postgres's table, and starts the writer.
    pub(crate) async fn open(pool: PgPool, aging: Aging) -> Result<Self, PostgresQueueError> {
        let mut tx = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(SETUP_LOCK)
            .execute(&mut *tx)
            .await?;
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS errand_tasks (
                 id       TEXT PRIMARY KEY,          -- ULID
                 args     BYTEA NOT NULL,            -- the task's arguments (JSON)
                 run_at   BIGINT NOT NULL,           -- due time, unix ms
                 priority SMALLINT NOT NULL,         -- 1 to 9, higher first (see `Aging`)
                 worker   TEXT                       -- who fetched it; NULL while it waits
             );
             CREATE INDEX IF NOT EXISTS errand_tasks_ready
                 ON errand_tasks (priority, run_at, id) WHERE worker IS NULL;
             CREATE INDEX IF NOT EXISTS errand_tasks_fetched
                 ON errand_tasks (worker) WHERE worker IS NOT NULL;
             CREATE TABLE IF NOT EXISTS errand_queue_workers (
                 name    TEXT PRIMARY KEY,
                 seen_at BIGINT NOT NULL             -- last heartbeat, unix ms
             );",
        )
        .execute(&mut *tx)
        .await?;
        let adopted = adopt_apalis_tasks(&mut tx).await?;
        tx.commit().await?;
        if adopted > 0 {
            tracing::info!(
                adopted,
                "moved the live tasks of apalis-postgres into errand_tasks"
            );
        }
        let writer = {
            let pool = pool.clone();
            GroupCommit::start(move |rows| {
                let pool = pool.clone();
                async move { insert(&pool, &rows).await }
            })
        };
        Ok(Self {
            pool,
            aging,
            writer,
        })
    }

    /// For each task id, whether the queue holds that task (waiting or fetched).
    pub(crate) async fn contains(&self, ids: &[String]) -> Result<Vec<bool>, PostgresQueueError> {
        let present: std::collections::HashSet<String> =
            sqlx::query_scalar("SELECT id FROM errand_tasks WHERE id = ANY($1)")
                .bind(ids)
                .fetch_all(&self.pool)
                .await?
                .into_iter()
                .collect();
        Ok(ids.iter().map(|id| present.contains(id)).collect())
    }

    /// How many tasks the queue holds (waiting or fetched).
    pub(crate) async fn task_count(&self) -> Result<u64, PostgresQueueError> {
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM errand_tasks")
            .fetch_one(&self.pool)
            .await?;
        Ok(count.max(0) as u64)
    }

    /// Announcements of pushes from every process, for idle workers; listens again after a
    /// lost connection.
    pub(crate) fn pushes(&self) -> BoxStream<'static, ()> {
        let pool = self.pool.clone();
        futures::stream::unfold(None, move |listener: Option<PgListener>| {
            let pool = pool.clone();
            async move {
                let mut listener = match listener {
                    Some(listener) => listener,
                    None => loop {
                        match listen(&pool).await {
                            Ok(listener) => break listener,
                            Err(err) => {
                                tracing::warn!(%err, "could not listen for queue wake-ups");
                                tokio::time::sleep(Duration::from_secs(1)).await;
                            }
                        }
                    },
                };
                match listener.try_recv().await {
                    Ok(Some(_)) => Some(((), Some(listener))),
                    // Lost the connection: say so (a fetch costs little) and listen again.
                    Ok(None) | Err(_) => Some(((), None)),
                }
            }
        })
        .boxed()
    }
}

async fn listen(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

/// Moves the waiting and running tasks of Errand's queue in apalis-postgres's table (versions
/// before this storage) into `errand_tasks`, and deletes them there. A task that was running
/// waits again: its job's delivery is checked by the registry when it is fetched.
async fn adopt_apalis_tasks(tx: &mut sqlx::PgConnection) -> Result<u64, PostgresQueueError> {
    // The arguments' column: JSONB or BYTEA, by apalis-postgres's version.
    let column: Option<String> = sqlx::query_scalar(
        "SELECT data_type::TEXT FROM information_schema.columns \
         WHERE table_schema = 'apalis' AND table_name = 'jobs' AND column_name = 'job'",
    )
    .fetch_optional(&mut *tx)
    .await?;
    let args = match column.as_deref() {
        None => return Ok(0),
        Some("bytea") => "job",
        Some(_) => "convert_to(job::TEXT, 'UTF8')",
    };
    let sql = format!(
        "WITH live AS (
             DELETE FROM apalis.jobs
             WHERE job_type = $1
               AND (status IN ('Pending', 'Queued', 'Running')
                    OR (status = 'Failed' AND attempts < max_attempts))
             RETURNING id, job, run_at, priority)
         INSERT INTO errand_tasks (id, args, run_at, priority)
         SELECT id, {args}, (extract(epoch FROM run_at) * 1000)::BIGINT,
                CASE WHEN priority BETWEEN $2 AND $3 THEN priority ELSE $4 END
         FROM live
         ON CONFLICT (id) DO NOTHING"
    );
    let moved = sqlx::query(AssertSqlSafe(sql))
        .bind(super::QUEUE_NAME)
        .bind(i32::from(*PRIORITIES.start()))
        .bind(i32::from(*PRIORITIES.end()))
        // Tasks pushed before Errand had priorities have apalis's 0: the middle level.
        .bind(i32::from(DEFAULT_PRIORITY))
        .execute(&mut *tx)
        .await?;
    Ok(moved.rows_affected())
}

/// Writes pushed tasks in one transaction (a second push of a task id is ignored) and wakes
/// the idle workers of every process when it commits.
async fn insert(pool: &PgPool, rows: &[Row]) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    insert_in(&mut tx, rows).await?;
    tx.commit().await
}

/// Writes task rows within the caller's transaction, and a wake-up sent when it commits.
pub(crate) async fn insert_in(
    connection: &mut sqlx::PgConnection,
    rows: &[Row],
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = rows.iter().map(|row| row.id.as_str()).collect();
    let args: Vec<&[u8]> = rows.iter().map(|row| row.args.as_slice()).collect();
    let due: Vec<i64> = rows.iter().map(|row| row.due).collect();
    let priorities: Vec<i16> = rows.iter().map(|row| i16::from(row.priority)).collect();
    sqlx::query(
        "INSERT INTO errand_tasks (id, args, run_at, priority) \
         SELECT * FROM UNNEST($1::TEXT[], $2::BYTEA[], $3::BIGINT[], $4::SMALLINT[]) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(ids)
    .bind(args)
    .bind(due)
    .bind(priorities)
    .execute(&mut *connection)
    .await?;
    // Several wake-ups in one transaction are delivered as one.
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(CHANNEL)
        .execute(&mut *connection)
        .await?;
    Ok(())
}

/// Claims the `$3` best due tasks by [`Aging`] for worker `$1` at `$2` (unix ms), with aging
/// step `$4` (ms). The candidates are each level's `$3` oldest due tasks that no other fetch is
/// claiming (a bounded seek of `errand_tasks_ready` per level: one `ORDER BY` of the lifted
/// level over the table would walk every waiting task); the oldest of a level are also its
/// most lifted, so the best of all are among them. Candidates not taken are let go when the
/// statement ends.
const FETCH: &str = "
UPDATE errand_tasks AS task SET worker = $1
FROM (SELECT id FROM (
          SELECT candidate.id, candidate.run_at, candidate.priority,
                 LEAST($5::INT - candidate.priority, ($2 - candidate.run_at) / $4) AS lift
          FROM generate_series($6::INT, $5::INT) AS level (n)
          CROSS JOIN LATERAL (
              SELECT id, run_at, priority FROM errand_tasks
              WHERE worker IS NULL AND priority = level.n AND run_at <= $2
              ORDER BY run_at, id LIMIT $3
              FOR UPDATE SKIP LOCKED) AS candidate) AS lifted
      ORDER BY priority + lift DESC, run_at + lift * $4, id
      LIMIT $3) AS claimed
WHERE task.id = claimed.id
RETURNING task.id, task.args, task.priority, task.run_at";

impl Persistence for PostgresQueue {
    type Compact = Vec<u8>;
    type Response = Value;
    type Error = PostgresQueueError;

    async fn register(&mut self, worker: &WorkerContext) -> Result<(), Self::Error> {
        sqlx::query(
            "INSERT INTO errand_queue_workers (name, seen_at) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET seen_at = EXCLUDED.seen_at",
        )
        .bind(worker.name())
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn heartbeat(&mut self, worker: &WorkerContext) -> Result<(), Self::Error> {
        self.register(worker).await?;
        // A dead worker's fetched tasks wait again.
        let cutoff = now_ms() - super::ORPHANED_AFTER.as_millis() as i64;
        let returned = sqlx::query(
            "WITH dead AS (DELETE FROM errand_queue_workers WHERE seen_at < $1 RETURNING name) \
             UPDATE errand_tasks SET worker = NULL WHERE worker IN (SELECT name FROM dead)",
        )
        .bind(cutoff)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if returned > 0 {
            tracing::warn!(returned, "returned the fetched tasks of stopped workers");
        }
        Ok(())
    }

    async fn fetch_next(
        &mut self,
        worker: &WorkerContext,
    ) -> Result<Vec<Task<Vec<u8>>>, Self::Error> {
        let now = now_ms();
        let mut rows: Vec<(String, Vec<u8>, i16, i64)> = sqlx::query_as(FETCH)
            .bind(worker.name())
            .bind(now)
            .bind(BATCH as i64)
            .bind(self.aging.step_ms())
            .bind(i32::from(*PRIORITIES.end()))
            .bind(i32::from(*PRIORITIES.start()))
            .fetch_all(&self.pool)
            .await?;
        // `RETURNING` keeps no order: the worker starts the most urgent first.
        rows.sort_by_cached_key(|(id, _, priority, due)| {
            let (level, due) = self
                .aging
                .lifted(priority_within(i64::from(*priority)), *due, now);
            (std::cmp::Reverse(level), due, id.clone())
        });
        rows.into_iter()
            .map(|(id, args, ..)| fetched(&id, args).map_err(PostgresQueueError::TaskId))
            .collect()
    }

    async fn reenqueue_abandoned(
        &mut self,
        tasks: Vec<Task<Vec<u8>>>,
        worker: &WorkerContext,
    ) -> Result<u64, Self::Error> {
        let ids: Vec<String> = tasks
            .iter()
            .filter_map(|task| task.task_id().map(ToString::to_string))
            .collect();
        let released =
            sqlx::query("UPDATE errand_tasks SET worker = NULL WHERE worker = $1 AND id = ANY($2)")
                .bind(worker.name())
                .bind(&ids)
                .execute(&self.pool)
                .await?;
        Ok(released.rows_affected())
    }

    async fn handle_events(
        &mut self,
        events: Vec<TaskEvent<Value>>,
        _: &WorkerContext,
    ) -> Result<(), Self::Error> {
        let (done, again) = completed(&events);
        if !done.is_empty() {
            sqlx::query("DELETE FROM errand_tasks WHERE id = ANY($1)")
                .bind(&done)
                .execute(&self.pool)
                .await?;
        }
        if !again.is_empty() {
            sqlx::query("UPDATE errand_tasks SET worker = NULL, run_at = $2 WHERE id = ANY($1)")
                .bind(&again)
                .bind(now_ms() + RETRY_AFTER_ERROR.as_millis() as i64)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    async fn push_tasks(&mut self, tasks: Vec<Task<Vec<u8>>>) -> Result<(), Self::Error> {
        self.writer
            .push(rows_of(tasks))
            .await
            .map_err(PostgresQueueError::Push)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::QUEUE_NAME;
    use crate::testing::TestDatabase;

    /// Adds a task to apalis-postgres's table; returns its id.
    async fn apalis_task(
        pool: &PgPool,
        status: &str,
        attempts: i32,
        job_type: &str,
        priority: i32,
    ) -> String {
        let id = ulid::Ulid::generate().to_string();
        sqlx::query(
            "INSERT INTO apalis.jobs VALUES ($1, $2, $3, $4, $5, 5, to_timestamp(1000), $6)",
        )
        .bind(format!(r#"{{"job_id":"{id}"}}"#).into_bytes())
        .bind(&id)
        .bind(job_type)
        .bind(status)
        .bind(attempts)
        .bind(priority)
        .execute(pool)
        .await
        .expect("a task");
        id
    }

    #[tokio::test]
    async fn the_live_tasks_of_apalis_postgres_move_in_and_the_rest_stay() {
        let database = TestDatabase::create().await;
        let pool = crate::db::postgres(database.url()).await.expect("pool");
        // The columns of apalis-postgres 1.0's table that the move reads.
        sqlx::raw_sql(
            "CREATE SCHEMA apalis;
             CREATE TABLE apalis.jobs (job BYTEA NOT NULL, id TEXT PRIMARY KEY,
                 job_type TEXT NOT NULL, status TEXT NOT NULL, attempts INT NOT NULL,
                 max_attempts INT NOT NULL, run_at TIMESTAMPTZ NOT NULL, priority INT NOT NULL);",
        )
        .execute(&pool)
        .await
        .expect("apalis's table");
        let waiting = apalis_task(&pool, "Pending", 0, QUEUE_NAME, 0).await;
        let running = apalis_task(&pool, "Running", 1, QUEUE_NAME, 8).await;
        let to_retry = apalis_task(&pool, "Failed", 1, QUEUE_NAME, 5).await;
        let done = apalis_task(&pool, "Done", 1, QUEUE_NAME, 5).await;
        let given_up = apalis_task(&pool, "Failed", 5, QUEUE_NAME, 5).await;
        let other_queue = apalis_task(&pool, "Pending", 0, "someone.else", 5).await;

        let mut queue = PostgresQueue::open(pool.clone(), Aging::default())
            .await
            .expect("opens");
        let mut left: Vec<String> = sqlx::query_scalar("SELECT id FROM apalis.jobs")
            .fetch_all(&pool)
            .await
            .expect("apalis's tasks");
        left.sort();
        let mut stayed = vec![done, given_up, other_queue];
        stayed.sort();
        assert_eq!(left, stayed, "finished tasks and other queues stay");

        let mut moved: Vec<(String, i16, i64, Vec<u8>)> =
            sqlx::query_as("SELECT id, priority, run_at, args FROM errand_tasks")
                .fetch_all(&pool)
                .await
                .expect("moved tasks");
        moved.sort();
        let mut expected = vec![
            (waiting, 5, 1_000_000),
            (running.clone(), 8, 1_000_000),
            (to_retry, 5, 1_000_000),
        ];
        expected.sort();
        let found: Vec<(String, i16, i64)> = moved
            .iter()
            .map(|(id, priority, due, _)| (id.clone(), *priority, *due))
            .collect();
        assert_eq!(
            found, expected,
            "the middle level for tasks from before priorities"
        );
        for (id, .., args) in &moved {
            assert_eq!(args, &format!(r#"{{"job_id":"{id}"}}"#).into_bytes());
        }

        // A second open (another process starting) finds nothing more to move, and every
        // moved task is handed out once, the most urgent first.
        PostgresQueue::open(pool.clone(), Aging::default())
            .await
            .expect("opens again");
        let worker = WorkerContext::new("w");
        queue.register(&worker).await.expect("register");
        let fetched = queue.fetch_next(&worker).await.expect("fetch");
        assert_eq!(fetched.len(), 3);
        assert_eq!(fetched[0].task_id().map(ToString::to_string), Some(running));
        assert!(queue.fetch_next(&worker).await.expect("fetch").is_empty());
        pool.close().await;
    }

    #[tokio::test]
    async fn a_silent_workers_tasks_go_to_the_others_and_a_live_ones_stay() {
        let database = TestDatabase::create().await;
        let pool = crate::db::postgres(database.url()).await.expect("pool");
        let mut queue = PostgresQueue::open(pool.clone(), Aging::default())
            .await
            .expect("opens");
        let task = |n: u8| {
            apalis_core::task::builder::TaskBuilder::new(format!("{{\"n\":{n}}}").into_bytes())
                .build()
        };
        queue
            .push_tasks((0..4).map(task).collect())
            .await
            .expect("push");
        let (dead, alive, other) = (
            WorkerContext::new("dead"),
            WorkerContext::new("alive"),
            WorkerContext::new("other"),
        );
        for worker in [&dead, &alive, &other] {
            queue.register(worker).await.expect("register");
        }
        let (mut first, mut second) = (Vec::new(), Vec::new());
        // Fetches take their batch; split the four tasks between two workers.
        let all = queue.fetch_next(&dead).await.expect("fetch");
        assert_eq!(all.len(), 4);
        first.extend(
            all[..2]
                .iter()
                .filter_map(|t| t.task_id().map(ToString::to_string)),
        );
        second.extend(
            all[2..]
                .iter()
                .filter_map(|t| t.task_id().map(ToString::to_string)),
        );
        sqlx::query("UPDATE errand_tasks SET worker = 'alive' WHERE id = ANY($1)")
            .bind(&second)
            .execute(&pool)
            .await
            .expect("hand two to the live worker");
        sqlx::query("UPDATE errand_queue_workers SET seen_at = 0 WHERE name = 'dead'")
            .execute(&pool)
            .await
            .expect("the dead worker went silent long ago");

        queue.heartbeat(&other).await.expect("beat");
        let mut recovered: Vec<String> = queue
            .fetch_next(&other)
            .await
            .expect("fetch")
            .iter()
            .filter_map(|t| t.task_id().map(ToString::to_string))
            .collect();
        recovered.sort();
        first.sort();
        assert_eq!(
            recovered, first,
            "only the silent worker's tasks wait again"
        );
        let workers: Vec<String> =
            sqlx::query_scalar("SELECT name FROM errand_queue_workers ORDER BY name")
                .fetch_all(&pool)
                .await
                .expect("workers");
        assert_eq!(workers, ["alive", "other"]);
        pool.close().await;
    }
}
