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

use super::Aging;
use super::storage::{GroupCommit, RETRY_AFTER_ERROR, Row, completed, fetched, rows_of};
use crate::model::{DEFAULT_PRIORITY, PRIORITIES, now_ms, priority_within};
use apalis_core::backend::persistence::{Persistence, TaskEvent};
use apalis_core::task::Task;
use apalis_core::worker::context::WorkerContext;
use serde_json::Value;
use sqlx::{AssertSqlSafe, SqlitePool};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};

/// How many tasks one fetch claims.
pub(crate) const BATCH: usize = 32;

/// The most rows one `INSERT` carries (SQLite allows 32,766 parameters; a row takes four).
const PUSH_ROWS: usize = 1_000;

/// A failure of the SQLite queue.
#[derive(Debug, thiserror::Error)]
pub enum SqliteQueueError {
    #[error("queue database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("bad task id in the queue: {0}")]
    TaskId(String),
    #[error("could not write tasks: {0}")]
    Push(String),
}

/// The priority levels that tasks in the table may have: the default level, every level found
/// at open and every level written since (levels are never taken out). One process owns a
/// SQLite file, so nothing else adds tasks behind its back. A fetch seeks only these levels:
/// with no priorities set, that is one plain seek.
#[derive(Debug, Clone)]
pub(crate) struct TaskLevels(Arc<AtomicU16>);

impl Default for TaskLevels {
    fn default() -> Self {
        Self(Arc::new(AtomicU16::new(1 << DEFAULT_PRIORITY)))
    }
}

impl TaskLevels {
    /// Notes that a task of `priority` may be in the table. Called before it is written, so a
    /// fetch that begins after the write seeks its level; one already under way may miss it,
    /// as it may miss any push that commits meanwhile (the push's wake-up looks again soon).
    fn add(&self, priority: u8) {
        self.0
            .fetch_or(1 << priority_within(i64::from(priority)), Ordering::Relaxed);
    }

    /// The levels as a bit set (bit `n` for level `n`).
    fn bits(&self) -> u16 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The fetch statement for a set of levels, built when the set changes.
struct FetchStatement {
    levels: u16,
    sql: Arc<str>,
}

/// The queue's pool and its group-commit writer.
#[derive(Clone)]
pub(crate) struct SqliteQueue {
    pool: SqlitePool,
    aging: Aging,
    levels: TaskLevels,
    /// The fetch for the levels last seen (see [`fetch_sql`]).
    fetch: Arc<std::sync::Mutex<FetchStatement>>,
    writer: GroupCommit,
}

impl std::fmt::Debug for SqliteQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteQueue").finish_non_exhaustive()
    }
}

impl SqliteQueue {
    /// Creates the queue's table in `pool`'s database if needed and starts its writer. `levels`
    /// is shared with whatever else writes tasks into this table (the registry, in the embedded
    /// default).
    pub(crate) async fn open(
        pool: SqlitePool,
        aging: Aging,
        levels: TaskLevels,
    ) -> Result<Self, SqliteQueueError> {
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
        // The levels of the tasks already there: one probe of the index per level, and the
        // few fetched tasks (handed back when a worker registers).
        for level in PRIORITIES {
            let waiting: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM errand_tasks WHERE worker IS NULL AND priority = $1)",
            )
            .bind(i64::from(level))
            .fetch_one(&mut *tx)
            .await?;
            if waiting {
                levels.add(level);
            }
        }
        let fetched: Vec<i64> = sqlx::query_scalar(
            "SELECT DISTINCT priority FROM errand_tasks WHERE worker IS NOT NULL",
        )
        .fetch_all(&mut *tx)
        .await?;
        for level in fetched {
            levels.add(priority_within(level));
        }
        tx.commit().await?;
        let writer = {
            let (pool, levels) = (pool.clone(), levels.clone());
            GroupCommit::start(move |rows| {
                let (pool, levels) = (pool.clone(), levels.clone());
                async move {
                    let rows: Vec<&Row> = rows.iter().collect();
                    insert(&pool, &levels, &rows).await
                }
            })
        };
        let fetch = FetchStatement {
            levels: levels.bits(),
            sql: fetch_sql(levels.bits()).into(),
        };
        Ok(Self {
            pool,
            aging,
            levels,
            fetch: Arc::new(std::sync::Mutex::new(fetch)),
            writer,
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

/// The fetch for the tasks of `levels` (a bit set): claims the `BATCH` best due tasks by
/// [`Aging`] in one statement. Its candidates are each level's `BATCH` oldest due tasks (a
/// bounded seek in `errand_tasks_ready` each; one `ORDER BY priority` over the table would walk
/// past every task due later); the oldest of a level are also its most lifted, so the best of
/// all are among them. With a single level (no priorities set) the oldest due tasks are the
/// best, and the statement is that one seek.
/// Parameters: worker, now (unix ms), batch, and with several levels the aging step (ms).
fn fetch_sql(levels: u16) -> String {
    let seek = |columns: &str, level: u8| {
        format!(
            "SELECT {columns} FROM errand_tasks \
             WHERE worker IS NULL AND priority = {level} AND run_at <= $2 \
             ORDER BY run_at, id LIMIT $3"
        )
    };
    let present: Vec<u8> = PRIORITIES
        .filter(|level| levels & (1 << level) != 0)
        .collect();
    let claim = match present.as_slice() {
        [level] => seek("id", *level),
        present => {
            let candidates: Vec<String> = present
                .iter()
                .map(|level| format!("SELECT * FROM ({})", seek("id, priority, run_at", *level)))
                .collect();
            format!(
                "SELECT id FROM (SELECT id, run_at, \
                     MIN({top} - priority, ($2 - run_at) / $4) AS lift, priority \
                     FROM ({candidates})) \
                 ORDER BY priority + lift DESC, run_at + lift * $4, id LIMIT $3",
                top = PRIORITIES.end(),
                candidates = candidates.join(" UNION ALL "),
            )
        }
    };
    format!(
        "UPDATE errand_tasks SET worker = $1 WHERE id IN ({claim}) \
         RETURNING id, args, priority, run_at"
    )
}

async fn insert(pool: &SqlitePool, levels: &TaskLevels, rows: &[&Row]) -> Result<(), sqlx::Error> {
    let mut tx = crate::db::write_transaction(pool).await?;
    insert_in(&mut tx, levels, rows).await?;
    tx.commit().await
}

/// Writes task rows within the caller's transaction (a second push of a task id is ignored),
/// noting their levels in `levels` first.
pub(crate) async fn insert_in(
    connection: &mut sqlx::SqliteConnection,
    levels: &TaskLevels,
    rows: &[&Row],
) -> Result<(), sqlx::Error> {
    for row in rows {
        levels.add(row.priority);
    }
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
    // A task another process had fetched waits again, as at any start. They all get the
    // default level, which every fetch seeks.
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
        let levels = self.levels.bits();
        let sql = {
            let mut fetch = self.fetch.lock().unwrap_or_else(|e| e.into_inner());
            if fetch.levels != levels {
                *fetch = FetchStatement {
                    levels,
                    sql: fetch_sql(levels).into(),
                };
            }
            fetch.sql.clone()
        };
        let mut query = sqlx::query_as(AssertSqlSafe(&*sql))
            .bind(worker.name())
            .bind(now)
            .bind(BATCH as i64);
        if levels.count_ones() > 1 {
            query = query.bind(self.aging.step_ms());
        }
        let mut rows: Vec<(String, Vec<u8>, i64, i64)> = query.fetch_all(&self.pool).await?;
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
        self.writer
            .push(rows_of(tasks))
            .await
            .map_err(SqliteQueueError::Push)
    }
}

/// Task ids as a JSON array, for `json_each`.
fn ids_json(ids: &[String]) -> String {
    serde_json::to_string(ids).unwrap_or_else(|_| "[]".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{QueuedJob, task_row};
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

        let mut queue = open_queue(&pool).await;
        let indexes: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'errand_tasks' \
             AND sql IS NOT NULL ORDER BY name",
        )
        .fetch_all(&pool)
        .await
        .expect("indexes");
        assert_eq!(indexes, ["errand_tasks_fetched", "errand_tasks_ready"]);

        let (low, normal, high) = (task(1), task(5), task(9));
        insert(&pool, &queue.levels, &[&low, &normal, &high])
            .await
            .expect("push");
        // The earlier task has the middle level and has waited for ever: aging lifted it to
        // 9, counting from 4 steps after it was due, before any task pushed now.
        assert_eq!(
            fetch_ids(&mut queue).await,
            [earlier, high.id, normal.id, low.id]
        );
    }

    /// A queue on `pool` with the default aging, finding its levels in the table.
    async fn open_queue(pool: &SqlitePool) -> SqliteQueue {
        SqliteQueue::open(pool.clone(), Aging::default(), TaskLevels::default())
            .await
            .expect("opens")
    }

    fn task(priority: u8) -> Row {
        task_row(&QueuedJob {
            job_id: crate::model::new_job_id(),
            delivery: 1,
            run_at: None,
            priority,
        })
    }

    async fn fetch_ids(queue: &mut SqliteQueue) -> Vec<String> {
        queue
            .fetch_next(&WorkerContext::new("w"))
            .await
            .expect("fetch")
            .iter()
            .filter_map(|task| task.task_id().map(ToString::to_string))
            .collect()
    }

    #[tokio::test]
    async fn a_fetch_seeks_only_the_levels_the_table_can_hold() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pool = crate::db::sqlite(SqliteConnectOptions::new().filename(dir.path().join("q.db")))
            .await
            .expect("pool");
        let mut queue = open_queue(&pool).await;
        // Nothing but the default level: one plain seek, in order of due time.
        assert_eq!(queue.levels.bits(), 1 << DEFAULT_PRIORITY);
        assert!(!fetch_sql(queue.levels.bits()).contains("UNION"));
        let (first, second) = (
            Row {
                due: 1_000,
                ..task(5)
            },
            Row {
                due: 2_000,
                ..task(5)
            },
        );
        insert(&pool, &queue.levels, &[&second, &first])
            .await
            .expect("push");
        assert_eq!(fetch_ids(&mut queue).await, [first.id, second.id]);

        // A task of another level widens the fetch before it is written.
        let (normal, high) = (task(5), task(9));
        insert(&pool, &queue.levels, &[&normal, &high])
            .await
            .expect("push");
        assert_eq!(queue.levels.bits(), 1 << 5 | 1 << 9);
        assert_eq!(fetch_ids(&mut queue).await, [high.id, normal.id]);

        // A task left by an earlier run, of a level this run never wrote, is found at open, as
        // are the levels of fetched tasks.
        let (low, normal) = (task(2), task(5));
        sqlx::query(
            "INSERT INTO errand_tasks (id, args, run_at, priority) VALUES ($1, x'7b7d', 0, 2)",
        )
        .bind(&low.id)
        .execute(&pool)
        .await
        .expect("an earlier task");
        let mut reopened = open_queue(&pool).await;
        // Level 9 too: its task is still out with the first worker.
        assert_eq!(reopened.levels.bits(), 1 << 2 | 1 << 5 | 1 << 9);
        insert(&pool, &reopened.levels, &[&normal])
            .await
            .expect("push");
        // Due long ago, it has been lifted past the new default task.
        assert_eq!(fetch_ids(&mut reopened).await, [low.id, normal.id]);
    }
}
