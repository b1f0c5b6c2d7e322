//! The job registry: Errand's own record of every job (owner, parameters, state, progress, logs,
//! result), in SQLite (the default, a file in the data dir) or Postgres (shared by several
//! processes). apalis only carries job ids; this is what pages, the API and the event streams read.
//!
//! Every statement is written once, with `$n` placeholders both databases accept, and runs on
//! whichever the registry was opened on (see [`on_db!`]).

use crate::db;
use crate::model::{Job, JobId, JobState, Owner, now_ms};
use crate::queue::QueuedJob;
use crate::queue::sqlite_queue::TaskLevels;
use serde_json::Value;
// The batched statements are built at run time, but only from placeholders (`$n`), never data.
use sqlx::postgres::PgPool;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{AssertSqlSafe, SqlitePool};
use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

/// A failure of the registry's storage. Its text is for logs, never for a client.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("registry migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("corrupt registry row: {0}")]
    Corrupt(String),
    #[error("unsupported registry URL {0:?}: use sqlite://… or postgres://…")]
    Url(String),
    #[error("the registry's writer task stopped")]
    WriterStopped,
}

impl RegistryError {
    /// True when the database answered and refused the statement's values (too big, a
    /// constraint, bad data): trying the same write again would fail the same way. Connection
    /// losses, time-outs, a busy database and a server shutting down are not refusals.
    pub fn is_refusal(&self) -> bool {
        let RegistryError::Database(sqlx::Error::Database(err)) = self else {
            return false;
        };
        let code = err.code().unwrap_or_default();
        if err
            .try_downcast_ref::<sqlx::sqlite::SqliteError>()
            .is_some()
        {
            // SQLITE_TOOBIG (18), SQLITE_CONSTRAINT (19), SQLITE_MISMATCH (20) and
            // SQLITE_RANGE (25), with their extended codes; anything else may pass.
            let primary = code.parse::<i32>().unwrap_or(0) & 0xff;
            return matches!(primary, 18 | 19 | 20 | 25);
        }
        // Postgres SQLSTATE classes 22 (data exception), 23 (integrity constraint) and 54
        // (program limit exceeded); connection losses, fail-overs (25006), lock time-outs and
        // shutdowns are in other classes and are retried.
        matches!(code.get(..2), Some("22" | "23" | "54"))
    }
}

/// A queued job past its time, as the reconciler checks it (see [`Registry::overdue`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overdue {
    pub id: JobId,
    pub delivery: i64,
    /// When it may start (unix ms), if scheduled.
    pub run_at: Option<i64>,
    /// When it entered the queue (unix ms).
    pub queued_at: i64,
    pub priority: u8,
}

impl Overdue {
    /// The task that carries its current delivery.
    pub(crate) fn task(&self) -> QueuedJob {
        QueuedJob {
            job_id: self.id,
            delivery: self.delivery,
            run_at: self.run_at,
            priority: self.priority,
        }
    }
}

/// How a job ended, as recorded by [`Registry::finish`].
#[derive(Debug, Clone)]
pub enum Outcome {
    Succeeded(Value),
    Failed(String),
    Cancelled,
}

/// Which of an owner's jobs a list, a count or an export includes; `None` filters nothing.
#[derive(Debug, Clone)]
pub struct JobFilter {
    pub owner: Owner,
    pub state: Option<JobState>,
    pub kind: Option<String>,
    /// Unix milliseconds, inclusive.
    pub created_from: Option<i64>,
    /// Unix milliseconds, exclusive.
    pub created_before: Option<i64>,
}

impl JobFilter {
    /// All of `owner`'s jobs.
    pub fn owner(owner: Owner) -> Self {
        Self {
            owner,
            state: None,
            kind: None,
            created_from: None,
            created_before: None,
        }
    }
}

/// The `WHERE` clause of a filtered list; each filter is skipped when its parameter is NULL.
macro_rules! filter_where {
    () => {
        " WHERE owner = $1 AND ($2 IS NULL OR state = $2) \
          AND ($3 IS NULL OR kind = $3) \
          AND ($4 IS NULL OR created_at >= $4) AND ($5 IS NULL OR created_at < $5) \
          AND id < $6"
    };
}

/// Binds a filter's parameters ($1 … $6) to a query, of either database.
macro_rules! bind_filter {
    ($query:expr, $filter:expr, $before:expr) => {{
        let [owner, state, kind, cursor] = filter_strings($filter, $before);
        $query
            .bind(owner)
            .bind(state)
            .bind(kind)
            .bind($filter.created_from)
            .bind($filter.created_before)
            .bind(cursor)
    }};
}

/// The job registry, on SQLite or Postgres.
#[derive(Debug, Clone)]
pub struct Registry {
    db: Db,
    /// Inserts, starts, progress saves and finishes, group-committed (see [`batch`]).
    batches: Arc<Batches>,
    /// See [`Registry::writes_tasks`]: the levels of the tasks written, shared with the queue.
    tasks: Option<TaskLevels>,
    /// See [`Registry::gate_kinds`].
    gated: Gated,
}

/// The kinds whose jobs start through [`Registry::start_gated`], set once at start.
type Gated = Arc<std::sync::OnceLock<Vec<String>>>;

/// Runs the batched writes (in the batching tasks).
#[derive(Debug, Clone)]
struct Writer {
    db: Db,
    /// When the queue's table is in this database: a new job's first task is written in the
    /// transaction that records the job, and its level noted here (SQLite's fetch seeks only
    /// the levels noted; Postgres's seeks them all).
    tasks: Option<TaskLevels>,
    gated: Gated,
}

#[derive(Debug)]
struct Batches {
    inserts: Batcher<Job, Option<Job>>,
    starts: Batcher<Start, Option<Job>>,
    progress: Batcher<Progress, ()>,
    finishes: Batcher<Finish, Option<Job>>,
    logs: Batcher<logs::LogWrite, bool>,
}

/// A request to move a queued job to running, see [`Registry::start`].
#[derive(Debug, Clone)]
struct Start {
    id: JobId,
    delivery: i64,
    worker: String,
}

/// A request to save a running job's progress, see [`Registry::save_progress`].
#[derive(Debug, Clone)]
struct Progress {
    id: JobId,
    delivery: i64,
    progress: Option<f64>,
    stage: Option<String>,
}

/// A request to record how a job ended, see [`Registry::finish`].
#[derive(Debug, Clone)]
struct Finish {
    id: JobId,
    delivery: i64,
    state: JobState,
    result: Option<String>,
    error: Option<String>,
    progress: Option<f64>,
    stage: Option<String>,
}

#[derive(Debug, Clone)]
enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs the same code on whichever database the registry uses: `on_db!(self, pool => expr)`
/// expands `expr` once per database, with `pool` bound to that database's pool.
macro_rules! on_db {
    ($registry:expr, $pool:ident => $body:expr) => {
        match &$registry.db {
            Db::Sqlite($pool) => $body,
            Db::Postgres($pool) => $body,
        }
    };
}

/// The columns of a job row, in the order `job_from_row` reads them by name.
macro_rules! job_columns {
    () => {
        "id, owner, kind, params, state, progress, stage, result, error, attempts, created_at, \
         started_at, finished_at, max_attempts, run_at, delivery, retry_of, idempotency_key, \
         priority"
    };
}

mod batch;
mod console;
mod gates;
mod logs;
mod rows;
mod schedules;
mod waiting;
mod workers;

use batch::Batcher;
pub use console::{
    AttemptInfo, AuditEntry, FinishedCount, JobQuery, StateCounts, Timing, WorkerInfo,
};
pub use gates::Admission;
use rows::job_from_row;
pub use waiting::WaitFacts;

impl Registry {
    /// Opens (creating if needed) the registry file and runs its embedded migrations.
    pub async fn open(path: &Path) -> Result<Self, RegistryError> {
        Self::open_sqlite(SqliteConnectOptions::new().filename(path)).await
    }

    /// Opens the registry at `url`, `sqlite://…` or `postgres://…`, and runs its migrations.
    pub async fn connect(url: &str) -> Result<Self, RegistryError> {
        if db::is_postgres(url) {
            Self::open_postgres(url, None).await
        } else if db::is_sqlite(url) {
            Self::open_sqlite(SqliteConnectOptions::from_str(url)?).await
        } else {
            Err(RegistryError::Url(url.to_owned()))
        }
    }

    /// Opens the registry on Postgres at `url` as the home of the queue's table too (the queue
    /// at the same URL): [`Registry::insert`] then writes each new job's first task with it, in
    /// one transaction. Open the queue (`Queue::connect(url)`) before any insert.
    pub async fn connect_with_queue(url: &str) -> Result<Self, RegistryError> {
        if !db::is_postgres(url) {
            return Err(RegistryError::Url(url.to_owned()));
        }
        Self::open_postgres(url, Some(TaskLevels::default())).await
    }

    async fn open_postgres(url: &str, tasks: Option<TaskLevels>) -> Result<Self, RegistryError> {
        let pool = db::postgres(url).await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(Self::with_batches(Db::Postgres(pool), tasks))
    }

    /// Opens the registry file as the home of the queue's table too (the embedded default):
    /// [`Registry::insert`] then writes each new job's first task with it, in one transaction.
    /// Open the queue on [`Registry::sqlite`]'s pool (`Queue::in_registry`) before any insert.
    pub async fn open_with_queue(path: &Path) -> Result<Self, RegistryError> {
        let pool = db::sqlite(SqliteConnectOptions::new().filename(path)).await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        Ok(Self::with_batches(
            Db::Sqlite(pool),
            Some(TaskLevels::default()),
        ))
    }

    async fn open_sqlite(options: SqliteConnectOptions) -> Result<Self, RegistryError> {
        let pool = db::sqlite(options).await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        Ok(Self::with_batches(Db::Sqlite(pool), None))
    }

    /// A registry on `db` whose inserts, starts, progress saves and finishes go through
    /// batching tasks.
    fn with_batches(db: Db, tasks: Option<TaskLevels>) -> Self {
        let gated = Gated::default();
        let writer = Writer {
            db: db.clone(),
            tasks: tasks.clone(),
            gated: gated.clone(),
        };
        let batches = Batches {
            inserts: writer.batching(|w, batch| async move { w.insert_all(batch).await }),
            starts: writer.batching(|w, batch| async move { w.start_all(batch).await }),
            progress: writer.batching(|w, batch| async move { w.save_progress_all(batch).await }),
            finishes: writer.batching(|w, batch| async move { w.finish_all(batch).await }),
            logs: writer.batching(|w, batch| async move { w.append_logs(batch).await }),
        };
        Self {
            db,
            batches: Arc::new(batches),
            tasks,
            gated,
        }
    }

    /// Names the kinds that have limits (see `crate::gates`): [`Registry::start`] leaves their
    /// jobs alone (answering `None`), for [`Registry::start_gated`] to start. Set once, at start;
    /// with none set every kind starts through `start`.
    pub fn gate_kinds(&self, kinds: Vec<String>) {
        let _ = self.gated.set(kinds);
    }

    /// The SQLite pool, when the registry is on SQLite.
    pub fn sqlite(&self) -> Option<&SqlitePool> {
        match &self.db {
            Db::Sqlite(pool) => Some(pool),
            Db::Postgres(_) => None,
        }
    }

    /// True when [`Registry::insert`] writes a new job's first task as well (the queue's table
    /// is in this database), so the caller must not push it again.
    pub fn writes_tasks(&self) -> bool {
        self.tasks.is_some()
    }

    /// The levels of the tasks this registry writes, for the queue on the same table.
    pub(crate) fn task_levels(&self) -> Option<TaskLevels> {
        self.tasks.clone()
    }

    /// The Postgres pool, when the registry is on Postgres (live events travel through it).
    pub fn postgres(&self) -> Option<&PgPool> {
        match &self.db {
            Db::Postgres(pool) => Some(pool),
            Db::Sqlite(_) => None,
        }
    }

    /// Records a new queued job (and, when [`Registry::writes_tasks`], its first task in the
    /// same transaction). With an idempotency key the owner already used, nothing is inserted
    /// and the existing job is returned instead.
    pub async fn insert(&self, job: &Job) -> Result<Option<Job>, RegistryError> {
        self.batches.inserts.run(job.clone()).await
    }

    /// Removes a job and its log.
    pub async fn delete(&self, id: JobId) -> Result<(), RegistryError> {
        let id = id.to_string();
        macro_rules! delete_in {
            ($tx:expr) => {{
                let mut tx = $tx;
                sqlx::query("DELETE FROM job_logs WHERE job_id = $1")
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("DELETE FROM jobs WHERE id = $1")
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }};
        }
        match &self.db {
            Db::Sqlite(pool) => delete_in!(db::write_transaction(pool).await?),
            Db::Postgres(pool) => delete_in!(pool.begin().await?),
        }
        Ok(())
    }

    /// A job by id, whoever owns it (for workers).
    pub async fn get(&self, id: JobId) -> Result<Option<Job>, RegistryError> {
        let sql = concat!("SELECT ", job_columns!(), " FROM jobs WHERE id = $1");
        on_db!(self, pool => {
            let row = sqlx::query(sql).bind(id.to_string()).fetch_optional(pool).await?;
            row.map(|row| job_from_row(&row)).transpose()
        })
    }

    /// A job by id if `owner` owns it; another owner's job is indistinguishable from none.
    pub async fn get_owned(&self, owner: &Owner, id: JobId) -> Result<Option<Job>, RegistryError> {
        Ok(self.get(id).await?.filter(|job| &job.owner == owner))
    }

    /// How many jobs match `filter`.
    pub async fn count(&self, filter: &JobFilter) -> Result<u64, RegistryError> {
        let sql = concat!("SELECT COUNT(*) FROM jobs", filter_where!());
        let count: i64 = on_db!(self, pool => {
            bind_filter!(sqlx::query_scalar(sql), filter, None)
                .fetch_one(pool)
                .await?
        });
        Ok(count.max(0) as u64)
    }

    /// The jobs that match `filter`, newest first, older than `before` when given.
    pub async fn list(
        &self,
        filter: &JobFilter,
        before: Option<JobId>,
        limit: u32,
    ) -> Result<Vec<Job>, RegistryError> {
        let sql = concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs",
            filter_where!(),
            " ORDER BY id DESC LIMIT $7"
        );
        on_db!(self, pool => {
            let rows = bind_filter!(sqlx::query(sql), filter, before)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?;
            rows.iter().map(job_from_row).collect()
        })
    }

    /// Moves a queued job to running on `worker` and counts the attempt. Returns `None` when the
    /// job is gone, finished, or `delivery` is not its current one (a stale task), which the
    /// caller skips; and when an operator paused its kind: the job stays queued without a task
    /// (the reconciler leaves paused kinds alone) until `Engine::resume_kind` pushes it again.
    pub async fn start(
        &self,
        id: JobId,
        delivery: i64,
        worker: &str,
    ) -> Result<Option<Job>, RegistryError> {
        let request = Start {
            id,
            delivery,
            worker: worker.to_owned(),
        };
        self.batches.starts.run(request).await
    }

    /// Puts a job running its `delivery` back in the queue for another attempt at `run_at`,
    /// keeping `error`, with a new delivery number. `None` if it is not running that delivery
    /// any more.
    pub async fn requeue(
        &self,
        id: JobId,
        delivery: i64,
        run_at: Option<i64>,
        error: Option<&str>,
    ) -> Result<Option<Job>, RegistryError> {
        let sql = concat!(
            "UPDATE jobs SET state = 'queued', run_at = $1, error = $2, delivery = delivery + 1, \
             worker = NULL, queued_at = $5 \
             WHERE id = $3 AND delivery = $4 AND state = 'running' RETURNING ",
            job_columns!()
        );
        on_db!(self, pool => {
            let row = sqlx::query(sql)
                .bind(run_at)
                .bind(error)
                .bind(id.to_string())
                .bind(delivery)
                .bind(now_ms())
                .fetch_optional(pool)
                .await?;
            row.map(|row| job_from_row(&row)).transpose()
        })
    }

    /// Queued jobs that entered the queue no later than `before` (unix ms) and were due by then:
    /// the reconciler checks that a task covers each. "No later", so that a check with no grace
    /// (`before` = now) also covers a job queued in the same millisecond. In the order they were
    /// queued, after `from` (a page's last `(queued_at, id)`), at most `limit`.
    pub async fn overdue(
        &self,
        before: i64,
        from: Option<&(i64, JobId)>,
        limit: u32,
    ) -> Result<Vec<Overdue>, RegistryError> {
        // SQLite would rather take `jobs_by_state` (an equality on its first column) and sort
        // every queued job; `jobs_queued` hands them over in order (5 ms instead of 0.6 s for a
        // page with 700,000 jobs queued).
        let hint = match &self.db {
            Db::Sqlite(_) => " INDEXED BY jobs_queued",
            Db::Postgres(_) => "",
        };
        let sql = format!(
            "SELECT id, delivery, run_at, queued_at, priority FROM jobs{hint} WHERE state = 'queued' \
             AND queued_at <= $1 AND (run_at IS NULL OR run_at <= $1) \
             AND (queued_at > $2 OR (queued_at = $2 AND id > $3)) \
             AND kind NOT IN (SELECT kind FROM paused_kinds) \
             AND (waiting IS NULL OR waiting <> 'slot') \
             ORDER BY queued_at, id LIMIT $4"
        );
        let (from_at, from_id) =
            from.map_or((i64::MIN, String::new()), |(at, id)| (*at, id.to_string()));
        let rows: Vec<(String, i64, Option<i64>, i64, i64)> = on_db!(self, pool => {
            sqlx::query_as(AssertSqlSafe(sql.as_str()))
                .bind(before)
                .bind(from_at)
                .bind(from_id)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?
        });
        rows.into_iter()
            .map(|(id, delivery, run_at, queued_at, priority)| {
                let id = JobId::from_str(&id).map_err(|_| RegistryError::Corrupt(id))?;
                Ok(Overdue {
                    id,
                    delivery,
                    run_at,
                    queued_at,
                    priority: crate::model::priority_within(priority),
                })
            })
            .collect()
    }

    /// How many of `owner`'s jobs are queued or running, counting no further than `up_to`.
    pub async fn count_active(&self, owner: &Owner, up_to: u32) -> Result<u32, RegistryError> {
        let sql = "SELECT COUNT(*) FROM (SELECT 1 FROM jobs WHERE owner = $1 \
                   AND state IN ('queued', 'running') LIMIT $2) AS t";
        let count: i64 = on_db!(self, pool => {
            sqlx::query_scalar(sql)
                .bind(&owner.0)
                .bind(i64::from(up_to))
                .fetch_one(pool)
                .await?
        });
        Ok(u32::try_from(count).unwrap_or(u32::MAX))
    }

    /// True when any job (in any state) reads upload `upload`.
    pub async fn upload_in_use(&self, upload: &str) -> Result<bool, RegistryError> {
        let sql = "SELECT COUNT(*) FROM (SELECT 1 FROM jobs WHERE upload = $1 LIMIT 1) AS t";
        let count: i64 = on_db!(self, pool => {
            sqlx::query_scalar(sql).bind(upload).fetch_one(pool).await?
        });
        Ok(count > 0)
    }

    /// Finished jobs older than `finished_before` (unix ms), at most `limit`.
    pub async fn expired(
        &self,
        finished_before: i64,
        limit: u32,
    ) -> Result<Vec<Job>, RegistryError> {
        let sql = concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE finished_at < $1 \
             AND state IN ('succeeded', 'failed', 'cancelled') LIMIT $2"
        );
        on_db!(self, pool => {
            let rows = sqlx::query(sql)
                .bind(finished_before)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?;
            rows.iter().map(job_from_row).collect()
        })
    }

    /// The jobs that retry `id` by hand, newest first.
    pub async fn retries_of(&self, id: JobId) -> Result<Vec<JobId>, RegistryError> {
        let sql = "SELECT id FROM jobs WHERE retry_of = $1 ORDER BY id DESC";
        let ids: Vec<String> = on_db!(self, pool => sqlx::query_scalar(sql)
            .bind(id.to_string())
            .fetch_all(pool)
            .await?);
        Ok(ids
            .iter()
            .filter_map(|id| JobId::from_str(id).ok())
            .collect())
    }

    /// Cancels a job that has not started; `None` if it is not queued any more.
    pub async fn cancel_queued(&self, id: JobId) -> Result<Option<Job>, RegistryError> {
        let sql = concat!(
            "UPDATE jobs SET state = 'cancelled', error = 'cancelled', finished_at = $1, \
             waiting = NULL WHERE id = $2 AND state = 'queued' RETURNING ",
            job_columns!()
        );
        on_db!(self, pool => {
            let row = sqlx::query(sql)
                .bind(now_ms())
                .bind(id.to_string())
                .fetch_optional(pool)
                .await?;
            row.map(|row| job_from_row(&row)).transpose()
        })
    }

    /// Saves the progress and stage a running job last reported, unless that delivery of it
    /// is not running any more.
    pub async fn save_progress(&self, job: &Job) -> Result<(), RegistryError> {
        let request = Progress {
            id: job.id,
            delivery: job.delivery,
            progress: job.progress,
            stage: job.stage.clone(),
        };
        self.batches.progress.run(request).await
    }

    /// Records how a running job ended, with its final progress and stage; `None` when that
    /// delivery of it is not running any more (it was taken back and runs elsewhere).
    pub async fn finish(&self, job: &Job, outcome: &Outcome) -> Result<Option<Job>, RegistryError> {
        let (state, result, error) = match outcome {
            Outcome::Succeeded(value) => (JobState::Succeeded, Some(value.to_string()), None),
            Outcome::Failed(message) => (JobState::Failed, None, Some(message.clone())),
            Outcome::Cancelled => (JobState::Cancelled, None, Some("cancelled".to_owned())),
        };
        let request = Finish {
            id: job.id,
            delivery: job.delivery,
            state,
            result,
            error,
            progress: job.progress,
            stage: job.stage.clone(),
        };
        self.batches.finishes.run(request).await
    }
}

/// Each request's job among the rows a batched statement returned (matched by id and
/// delivery), in the requests' order; `None` where the statement changed nothing.
fn answers<R>(
    requests: &[R],
    key: impl Fn(&R) -> (JobId, i64),
    jobs: Vec<Job>,
) -> Vec<Option<Job>> {
    let mut jobs: HashMap<_, _> = jobs
        .into_iter()
        .map(|job| ((job.id, job.delivery), job))
        .collect();
    requests.iter().map(|r| jobs.remove(&key(r))).collect()
}

/// The first tasks of the `jobs` whose ids are in `inserted` (an idempotent submit that found
/// its job inserts none).
fn first_tasks(jobs: &[Job], inserted: &[String]) -> Vec<crate::queue::Row> {
    let new: std::collections::HashSet<&str> = inserted.iter().map(String::as_str).collect();
    jobs.iter()
        .filter(|job| new.contains(job.id.to_string().as_str()))
        .map(|job| crate::queue::task_row(&QueuedJob::of(job)))
        .collect()
}

impl Writer {
    /// Starts a task that runs batches with `run`, on a copy of this writer.
    fn batching<Req, Resp, Fut>(
        &self,
        run: impl Fn(Self, Vec<Req>) -> Fut + Send + 'static,
    ) -> Batcher<Req, Resp>
    where
        Req: Clone + Send + 'static,
        Resp: Send + 'static,
        Fut: Future<Output = Result<Vec<Resp>, RegistryError>> + Send,
    {
        let writer = self.clone();
        Batcher::spawn(move |batch| run(writer.clone(), batch))
    }

    /// The condition that a job of the statement's `jobs` is in `state`, for the hot writes
    /// that find jobs by id: written so that no index on `state` can serve it, which keeps
    /// both planners on the primary key. On SQLite the `+` keeps the planner off
    /// `jobs_by_state` (the console's index): with a million queued jobs, starts and finishes
    /// went from thousands a second to tens. On Postgres, without statistics (a new table,
    /// autovacuum off or behind) the planner read every queued job through the partial index
    /// `jobs_queued` to start 32 of them: 17 ms a batch at 50,000 queued, 2.7 ms by key.
    pub(super) fn job_in_state(&self, state: &str) -> String {
        match &self.db {
            Db::Sqlite(_) => format!("+jobs.state = '{state}'"),
            Db::Postgres(_) => format!("(jobs.state || '') = '{state}'"),
        }
    }

    /// [`Registry::insert`] for many jobs in one statement; answers in order.
    async fn insert_all(&self, jobs: Vec<Job>) -> Result<Vec<Option<Job>>, RegistryError> {
        let values = match &self.db {
            Db::Sqlite(_) => batch::anonymous_values(jobs.len(), 16),
            Db::Postgres(_) => batch::values(jobs.len(), 16, 1),
        };
        let sql = format!(
            "INSERT INTO jobs (id, owner, kind, params, state, attempts, created_at, \
             max_attempts, run_at, delivery, retry_of, idempotency_key, queued_at, upload, \
             stage, priority) \
             VALUES {values} \
             ON CONFLICT (owner, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING \
             RETURNING id"
        );
        macro_rules! bind_jobs {
            () => {{
                let mut query = sqlx::query_scalar(AssertSqlSafe(sql.as_str()));
                for job in &jobs {
                    query = query
                        .bind(job.id.to_string())
                        .bind(&job.owner.0)
                        .bind(&job.kind)
                        .bind(job.params.to_string())
                        .bind(job.state.as_str())
                        .bind(0_i64)
                        .bind(job.created_at)
                        .bind(i64::from(job.max_attempts))
                        .bind(job.run_at)
                        .bind(job.delivery)
                        .bind(job.retry_of.map(|id| id.to_string()))
                        .bind(job.idempotency_key.as_deref())
                        .bind(job.created_at)
                        .bind(job.upload())
                        .bind(job.stage.as_deref())
                        .bind(i64::from(job.priority));
                }
                query
            }};
        }
        let inserted: Vec<String> = match (&self.db, &self.tasks) {
            // The job and its first task, in one transaction.
            (Db::Sqlite(pool), Some(levels)) => {
                let mut tx = db::write_transaction(pool).await?;
                let inserted: Vec<String> = bind_jobs!().fetch_all(&mut *tx).await?;
                let rows = first_tasks(&jobs, &inserted);
                crate::queue::sqlite_queue::insert_in(
                    &mut tx,
                    levels,
                    &rows.iter().collect::<Vec<_>>(),
                )
                .await?;
                tx.commit().await?;
                inserted
            }
            (Db::Postgres(pool), Some(_)) => {
                let mut tx = pool.begin().await?;
                let inserted: Vec<String> = bind_jobs!().fetch_all(&mut *tx).await?;
                let rows = first_tasks(&jobs, &inserted);
                crate::queue::postgres_queue::insert_in(&mut tx, &rows).await?;
                tx.commit().await?;
                inserted
            }
            _ => on_db!(self, pool => bind_jobs!().fetch_all(pool).await?),
        };
        let inserted: std::collections::HashSet<String> = inserted.into_iter().collect();
        let mut answers = Vec::with_capacity(jobs.len());
        for job in &jobs {
            if inserted.contains(&job.id.to_string()) {
                answers.push(None);
                continue;
            }
            // The owner used this idempotency key before (or earlier in this batch).
            let sql = concat!(
                "SELECT ",
                job_columns!(),
                " FROM jobs WHERE owner = $1 AND idempotency_key = $2"
            );
            let existing = on_db!(self, pool => {
                let row = sqlx::query(sql)
                    .bind(&job.owner.0)
                    .bind(job.idempotency_key.as_deref())
                    .fetch_one(pool)
                    .await?;
                job_from_row(&row)?
            });
            answers.push(Some(existing));
        }
        Ok(answers)
    }

    /// [`Registry::start`] for many jobs in one statement per worker name; answers in order.
    async fn start_all(&self, requests: Vec<Start>) -> Result<Vec<Option<Job>>, RegistryError> {
        let now = now_ms();
        let mut started = Vec::new();
        let mut workers: Vec<&str> = requests.iter().map(|r| r.worker.as_str()).collect();
        workers.sort_unstable();
        workers.dedup();
        for worker in workers {
            let batch: Vec<&Start> = requests.iter().filter(|r| r.worker == worker).collect();
            // Limited kinds start through `start_gated`.
            let gated = self.gated.get().map(Vec::as_slice).unwrap_or_default();
            let not_gated = if gated.is_empty() {
                String::new()
            } else {
                let first = 3 + 2 * batch.len();
                format!(
                    " AND jobs.kind NOT IN {}",
                    batch::values(1, gated.len(), first)
                )
            };
            let sql = format!(
                "UPDATE jobs SET state = 'running', attempts = attempts + 1, started_at = $1, \
                 progress = NULL, stage = NULL, run_at = NULL, worker = $2 \
                 FROM (VALUES {}) AS t \
                 WHERE jobs.id = t.column1 AND jobs.delivery = t.column2 AND {} \
                 AND jobs.kind NOT IN (SELECT kind FROM paused_kinds){not_gated} \
                 RETURNING {}",
                batch::values(batch.len(), 2, 3),
                self.job_in_state("queued"),
                job_columns!()
            );
            let jobs: Vec<Job> = on_db!(self, pool => {
                let mut query = sqlx::query(AssertSqlSafe(sql.as_str())).bind(now).bind(worker);
                for request in &batch {
                    query = query.bind(request.id.to_string()).bind(request.delivery);
                }
                for kind in gated {
                    query = query.bind(kind);
                }
                let rows = query.fetch_all(pool).await?;
                rows.iter().map(job_from_row).collect::<Result<_, _>>()?
            });
            started.extend(jobs);
        }
        Ok(answers(&requests, |r| (r.id, r.delivery), started))
    }

    /// [`Registry::save_progress`] for many jobs in one statement.
    async fn save_progress_all(&self, requests: Vec<Progress>) -> Result<Vec<()>, RegistryError> {
        let sql = format!(
            "UPDATE jobs SET progress = t.column3, stage = t.column4 FROM (VALUES {}) AS t \
             WHERE jobs.id = t.column1 AND jobs.delivery = t.column2 AND {}",
            batch::values(requests.len(), 4, 1),
            self.job_in_state("running")
        );
        on_db!(self, pool => {
            let mut query = sqlx::query(AssertSqlSafe(sql.as_str()));
            for request in &requests {
                query = query
                    .bind(request.id.to_string())
                    .bind(request.delivery)
                    .bind(request.progress)
                    .bind(request.stage.as_deref());
            }
            query.execute(pool).await?;
        });
        Ok(vec![(); requests.len()])
    }

    /// [`Registry::finish`] for many jobs in one statement; answers in order.
    async fn finish_all(&self, requests: Vec<Finish>) -> Result<Vec<Option<Job>>, RegistryError> {
        let sql = format!(
            "UPDATE jobs SET state = t.column3, result = t.column4, error = t.column5, \
             progress = t.column6, stage = t.column7, finished_at = $1 \
             FROM (VALUES {}) AS t \
             WHERE jobs.id = t.column1 AND jobs.delivery = t.column2 AND {} \
             RETURNING {}",
            batch::values(requests.len(), 7, 2),
            self.job_in_state("running"),
            job_columns!()
        );
        let jobs: Vec<Job> = on_db!(self, pool => {
            let mut query = sqlx::query(AssertSqlSafe(sql.as_str())).bind(now_ms());
            for request in &requests {
                query = query
                    .bind(request.id.to_string())
                    .bind(request.delivery)
                    .bind(request.state.as_str())
                    .bind(request.result.as_deref())
                    .bind(request.error.as_deref())
                    .bind(request.progress)
                    .bind(request.stage.as_deref());
            }
            let rows = query.fetch_all(pool).await?;
            rows.iter().map(job_from_row).collect::<Result<_, _>>()?
        });
        // The charts' counts: losing one to an error costs a dot on a chart, not a job.
        if let Err(err) = self.count_finished(&jobs).await {
            tracing::warn!(%err, "could not count finished jobs for the charts");
        }
        Ok(answers(&requests, |r| (r.id, r.delivery), jobs))
    }
}

/// A cursor above every ULID: Crockford base32 'Z' sorts after every ULID character.
fn no_cursor() -> String {
    "Z".repeat(26)
}

/// A filter's text parameters ($1, $2, $3 and $6): owner, state, kind and the id cursor.
fn filter_strings(filter: &JobFilter, before: Option<JobId>) -> [Option<String>; 4] {
    [
        Some(filter.owner.0.clone()),
        filter.state.map(|s| s.as_str().to_owned()),
        filter.kind.clone(),
        Some(before.map_or_else(no_cursor, |id| id.to_string())),
    ]
}
