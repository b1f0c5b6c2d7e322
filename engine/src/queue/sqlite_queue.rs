//! Errand's own SQLite storage for apalis, behind apalis's `Persistence` trait: the embedded
//! default's fast path.
//!
//! apalis-sqlite 1.0 keeps every finished task and its acknowledge and lock statements scan
//! that history, so it drains a few hundred jobs a second and slows as history grows. Here a
//! task lives only while it waits or runs (the registry keeps the history), waiting tasks sit in
//! a partial index by priority and due time, a fetch claims a whole batch in one statement (see
//! [`fetch_sql`]), and acknowledgements of a batch delete in one statement. Pushes from
//! concurrent requests are committed together (group commit): one transaction and one
//! multi-row `INSERT` for everything that arrived meanwhile.
//!
//! One process owns the file: at start a worker takes back whatever a previous process had
//! fetched and not finished.
//!
//! In the embedded default the table lives in the registry's own database (`errand.db`), and a
//! submit writes the job and its first task in one transaction (see
//! `Registry::open_with_queue`), so no crash can leave one without the other.

use super::storage::{RETRY_AFTER_ERROR, completed, fetched};
use super::{Aging, priority_of};
use crate::model::{PRIORITIES, now_ms, priority_within};
use apalis_core::backend::persistence::{Persistence, TaskEvent};
use apalis_core::task::Task;
use apalis_core::worker::context::WorkerContext;
use serde_json::Value;
use sqlx::{AssertSqlSafe, SqlitePool};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// How many tasks one fetch claims.
pub(crate) const BATCH: usize = 32;

/// The most rows one `INSERT` carries (SQLite allows 32,766 parameters; a row takes four).
const PUSH_ROWS: usize = 1_000;

/// How many pushes may wait for the group commit; when full, pushers wait for room
/// (back-pressure: a push must not be lost).
const PUSHES_WAITING: usize = 4_096;

/// A failure of the SQLite queue.
#[derive(Debug, thiserror::Error)]
pub enum SqliteQueueError {
    #[error("queue database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("bad task id in the queue: {0}")]
    TaskId(String),
    #[error("the queue's writer stopped")]
    WriterGone,
}

/// A push waiting for the group commit, and who to tell when it is durable.
struct Pending {
    rows: Vec<Row>,
    done: oneshot::Sender<Result<(), String>>,
}

/// A task as stored.
pub(crate) struct Row {
    pub(crate) id: String,
    /// The task's arguments (JSON).
    pub(crate) args: Vec<u8>,
    /// Unix ms.
    pub(crate) due: i64,
    pub(crate) priority: u8,
}

/// The queue's pool and its group-commit writer.
#[derive(Clone)]
pub(crate) struct SqliteQueue {
    pool: SqlitePool,
    aging: Aging,
    /// The fetch statement: one bounded seek per priority level (see [`fetch_sql`]).
    fetch: Arc<str>,
    writer: mpsc::Sender<Pending>,
    /// Keeps the writer running while any handle lives.
    _writer: Arc<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for SqliteQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteQueue").finish_non_exhaustive()
    }
}

impl SqliteQueue {
    /// Creates the queue's table in `pool`'s database if needed and starts its writer.
    pub(crate) async fn open(pool: SqlitePool, aging: Aging) -> Result<Self, SqliteQueueError> {
        let mut tx = crate::db::write_transaction(&pool).await?;
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS errand_tasks (
                 id     TEXT PRIMARY KEY NOT NULL,  -- ULID
                 args   BLOB NOT NULL,              -- the task's arguments (JSON)
                 run_at INTEGER NOT NULL,           -- due time, unix ms
                 worker TEXT,                       -- who fetched it; NULL while it waits
                 priority INTEGER NOT NULL DEFAULT 5 -- 1 to 9, higher first (see `Aging`)
             );
             CREATE INDEX IF NOT EXISTS errand_tasks_fetched
                 ON errand_tasks (worker) WHERE worker IS NOT NULL;",
        )
        .execute(&mut *tx)
        .await?;
        // A table of a version before priorities: its tasks get the middle level, and the
        // waiting tasks' index gains the level.
        let has_priority: bool = sqlx::query_scalar(
            "SELECT COUNT(*) > 0 FROM pragma_table_info('errand_tasks') WHERE name = 'priority'",
        )
        .fetch_one(&mut *tx)
        .await?;
        if !has_priority {
            sqlx::raw_sql(
                "ALTER TABLE errand_tasks ADD COLUMN priority INTEGER NOT NULL DEFAULT 5;
                 DROP INDEX IF EXISTS errand_tasks_waiting;",
            )
            .execute(&mut *tx)
            .await?;
        }
        sqlx::raw_sql(
            "CREATE INDEX IF NOT EXISTS errand_tasks_ready
                 ON errand_tasks (priority, run_at, id) WHERE worker IS NULL;",
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        let (writer, pending) = mpsc::channel(PUSHES_WAITING);
        let task = tokio::spawn(write(pool.clone(), pending));
        Ok(Self {
            pool,
            aging,
            fetch: fetch_sql().into(),
            writer,
            _writer: Arc::new(task),
        })
    }

    /// For each task id, whether the queue holds that task (waiting or fetched).
    pub(crate) async fn contains(&self, ids: &[String]) -> Result<Vec<bool>, SqliteQueueError> {
        let present: std::collections::HashSet<String> = sqlx::query_scalar(
            "SELECT id FROM errand_tasks WHERE id IN (SELECT value FROM json_each($1))",
        )
        .bind(ids_json(ids))
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .collect();
        Ok(ids.iter().map(|id| present.contains(id)).collect())
    }

    /// How many tasks the queue holds (waiting or fetched).
    pub(crate) async fn task_count(&self) -> Result<u64, SqliteQueueError> {
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM errand_tasks")
            .fetch_one(&self.pool)
            .await?;
        Ok(count.max(0) as u64)
    }
}

/// The fetch: claims the `BATCH` best due tasks by [`Aging`] in one statement. Its candidates
/// are each priority level's `BATCH` oldest due tasks (a bounded seek in `errand_tasks_ready`
/// each; one `ORDER BY priority` over the table would walk past every task due later); the
/// oldest of a level are also its most lifted, so the best of all are among them.
/// Parameters: worker, now (unix ms), batch, aging step (ms).
fn fetch_sql() -> String {
    let levels: Vec<String> = PRIORITIES
        .map(|level| {
            format!(
                "SELECT * FROM (SELECT id, priority, run_at FROM errand_tasks \
                 WHERE worker IS NULL AND priority = {level} AND run_at <= $2 \
                 ORDER BY run_at, id LIMIT $3)"
            )
        })
        .collect();
    format!(
        "UPDATE errand_tasks SET worker = $1 WHERE id IN ( \
             SELECT id FROM (SELECT id, run_at, \
                 MIN({top} - priority, ($2 - run_at) / $4) AS lift, priority FROM ({candidates})) \
             ORDER BY priority + lift DESC, run_at + lift * $4, id LIMIT $3) \
         RETURNING id, args, priority, run_at",
        top = PRIORITIES.end(),
        candidates = levels.join(" UNION ALL "),
    )
}

/// The group-commit writer: takes every push that is waiting, writes them in one transaction,
/// and tells each pusher the outcome.
async fn write(pool: SqlitePool, mut pending: mpsc::Receiver<Pending>) {
    let mut batch = Vec::new();
    while pending.recv_many(&mut batch, 4_096).await > 0 {
        let rows: Vec<&Row> = batch.iter().flat_map(|p| &p.rows).collect();
        let result = insert(&pool, &rows).await.map_err(|err| err.to_string());
        for push in batch.drain(..) {
            let _ = push.done.send(result.clone());
        }
    }
}

async fn insert(pool: &SqlitePool, rows: &[&Row]) -> Result<(), sqlx::Error> {
    let mut tx = crate::db::write_transaction(pool).await?;
    insert_in(&mut tx, rows).await?;
    tx.commit().await
}

/// Writes task rows within the caller's transaction (a second push of a task id is ignored).
pub(crate) async fn insert_in(
    connection: &mut sqlx::SqliteConnection,
    rows: &[&Row],
) -> Result<(), sqlx::Error> {
    for chunk in rows.chunks(PUSH_ROWS) {
        let mut insert =
            sqlx::QueryBuilder::new("INSERT INTO errand_tasks (id, args, run_at, priority) ");
        insert.push_values(chunk, |mut row, task| {
            row.push_bind(&task.id)
                .push_bind(&task.args)
                .push_bind(task.due)
                .push_bind(i64::from(task.priority));
        });
        insert.push(" ON CONFLICT (id) DO NOTHING");
        insert.build().execute(&mut *connection).await?;
    }
    Ok(())
}

/// Moves the tasks of a queue file of an earlier version (the queue in its own `queue.db`)
/// into `pool`'s table, then deletes the file. Returns how many tasks it moved.
pub(crate) async fn adopt_file(
    pool: &SqlitePool,
    file: &std::path::Path,
) -> Result<u64, sqlx::Error> {
    if !file.exists() {
        return Ok(0);
    }
    let mut connection = pool.acquire().await?;
    sqlx::query("ATTACH DATABASE $1 AS earlier")
        .bind(file.to_string_lossy().into_owned())
        .execute(&mut *connection)
        .await?;
    // A task another process had fetched waits again, as at any start.
    let moved = sqlx::query(
        "INSERT OR IGNORE INTO main.errand_tasks (id, args, run_at, priority) \
         SELECT id, args, run_at, 5 FROM earlier.errand_tasks",
    )
    .execute(&mut *connection)
    .await;
    sqlx::query("DETACH DATABASE earlier")
        .execute(&mut *connection)
        .await?;
    let moved = moved?.rows_affected();
    for suffix in ["", "-wal", "-shm"] {
        let mut path = file.as_os_str().to_owned();
        path.push(suffix);
        match std::fs::remove_file(&path) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                return Err(sqlx::Error::Io(err));
            }
            _ => {}
        }
    }
    Ok(moved)
}

impl Persistence for SqliteQueue {
    type Compact = Vec<u8>;
    type Response = Value;
    type Error = SqliteQueueError;

    async fn register(&mut self, worker: &WorkerContext) -> Result<(), Self::Error> {
        // One process owns the file: what another worker fetched, it will never finish.
        sqlx::query(
            "UPDATE errand_tasks SET worker = NULL WHERE worker IS NOT NULL AND worker <> $1",
        )
        .bind(worker.name())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn heartbeat(&mut self, _: &WorkerContext) -> Result<(), Self::Error> {
        Ok(())
    }

    async fn fetch_next(
        &mut self,
        worker: &WorkerContext,
    ) -> Result<Vec<Task<Vec<u8>>>, Self::Error> {
        let now = now_ms();
        let mut rows: Vec<(String, Vec<u8>, i64, i64)> =
            sqlx::query_as(AssertSqlSafe(&*self.fetch))
                .bind(worker.name())
                .bind(now)
                .bind(BATCH as i64)
                .bind(self.aging.step_ms())
                .fetch_all(&self.pool)
                .await?;
        // `RETURNING` keeps no order: the worker starts the most urgent first.
        rows.sort_by_cached_key(|(id, _, priority, due)| {
            let (level, due) = self.aging.lifted(priority_within(*priority), *due, now);
            (std::cmp::Reverse(level), due, id.clone())
        });
        rows.into_iter()
            .map(|(id, args, ..)| fetched(&id, args).map_err(SqliteQueueError::TaskId))
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
        let ids = ids_json(&ids);
        let released = sqlx::query(
            "UPDATE errand_tasks SET worker = NULL \
             WHERE worker = $1 AND id IN (SELECT value FROM json_each($2))",
        )
        .bind(worker.name())
        .bind(ids)
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
            sqlx::query("DELETE FROM errand_tasks WHERE id IN (SELECT value FROM json_each($1))")
                .bind(ids_json(&done))
                .execute(&self.pool)
                .await?;
        }
        if !again.is_empty() {
            sqlx::query(
                "UPDATE errand_tasks SET worker = NULL, run_at = $2 \
                 WHERE id IN (SELECT value FROM json_each($1))",
            )
            .bind(ids_json(&again))
            .bind(now_ms() + RETRY_AFTER_ERROR.as_millis() as i64)
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }

    async fn push_tasks(&mut self, tasks: Vec<Task<Vec<u8>>>) -> Result<(), Self::Error> {
        let now = now_ms();
        let rows = tasks
            .into_iter()
            .map(|task| Row {
                id: task
                    .task_id()
                    .map_or_else(|| ulid::Ulid::generate().to_string(), ToString::to_string),
                due: task.run_at().map_or(now, |secs| secs as i64 * 1000),
                priority: priority_of(&task.args),
                args: task.args,
            })
            .collect();
        let (done, committed) = oneshot::channel();
        self.writer
            .send(Pending { rows, done })
            .await
            .map_err(|_| SqliteQueueError::WriterGone)?;
        committed
            .await
            .map_err(|_| SqliteQueueError::WriterGone)?
            .map_err(|err| SqliteQueueError::Database(sqlx::Error::Protocol(err)))
    }
}

/// Task ids as a JSON array, for `json_each`.
fn ids_json(ids: &[String]) -> String {
    serde_json::to_string(ids).unwrap_or_else(|_| "[]".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{QueuedJob, sqlite_row};
    use sqlx::sqlite::SqliteConnectOptions;

    #[tokio::test]
    async fn an_earlier_table_gains_priorities_and_a_fetch_takes_the_best_first() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("errand.db");
        let pool = crate::db::sqlite(SqliteConnectOptions::new().filename(file))
            .await
            .expect("pool");
        // The table as versions before priorities made it, with one task due long ago.
        sqlx::raw_sql(
            "CREATE TABLE errand_tasks (id TEXT PRIMARY KEY NOT NULL, args BLOB NOT NULL,
                 run_at INTEGER NOT NULL, worker TEXT);
             CREATE INDEX errand_tasks_waiting ON errand_tasks (run_at, id) WHERE worker IS NULL;",
        )
        .execute(&pool)
        .await
        .expect("the earlier table");
        let earlier = ulid::Ulid::generate().to_string();
        sqlx::query("INSERT INTO errand_tasks (id, args, run_at) VALUES ($1, x'7b7d', 0)")
            .bind(&earlier)
            .execute(&pool)
            .await
            .expect("an earlier task");

        let mut queue = SqliteQueue::open(pool.clone(), Aging::default())
            .await
            .expect("opens");
        let indexes: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'errand_tasks' \
             AND sql IS NOT NULL ORDER BY name",
        )
        .fetch_all(&pool)
        .await
        .expect("indexes");
        assert_eq!(indexes, ["errand_tasks_fetched", "errand_tasks_ready"]);

        let task = |priority| {
            sqlite_row(&QueuedJob {
                job_id: crate::model::new_job_id(),
                delivery: 1,
                run_at: None,
                priority,
            })
        };
        let (low, normal, high) = (task(1), task(5), task(9));
        insert(&pool, &[&low, &normal, &high]).await.expect("push");
        let fetched: Vec<String> = queue
            .fetch_next(&WorkerContext::new("w"))
            .await
            .expect("fetch")
            .iter()
            .filter_map(|task| task.task_id().map(ToString::to_string))
            .collect();
        // The earlier task has the middle level and has waited for ever: aging lifted it to
        // 9, counting from 4 steps after it was due, before any task pushed now.
        assert_eq!(fetched, [earlier, high.id, normal.id, low.id]);
    }
}
