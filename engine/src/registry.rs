//! The job registry: Errand's own record of every job (owner, parameters, state, progress, logs,
//! result), kept in SQLite beside the queue. apalis only carries job ids; this is what pages, the
//! API and the event streams read.

use crate::model::{Job, JobId, JobState, LOG_LINES_KEPT, LogLine, Owner, now_ms};
use serde_json::Value;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool, sqlite::SqliteRow};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

/// A failure of the registry's storage. Its text is for logs, never for a client.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("registry migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("corrupt registry row: {0}")]
    Corrupt(String),
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
        " WHERE owner = ?1 AND (?2 IS NULL OR state = ?2) AND (?3 IS NULL OR kind = ?3) \
          AND (?4 IS NULL OR created_at >= ?4) AND (?5 IS NULL OR created_at < ?5) \
          AND id < ?6"
    };
}

/// The job registry on one SQLite file.
#[derive(Debug, Clone)]
pub struct Registry {
    pool: SqlitePool,
}

/// The columns of a job row, in the order `job_from_row` reads them by name.
macro_rules! job_columns {
    () => {
        "id, owner, kind, params, state, progress, stage, result, error, attempts, created_at, \
         started_at, finished_at, max_attempts, run_at, delivery, retry_of, idempotency_key"
    };
}

impl Registry {
    /// Opens (creating if needed) the registry file and runs its embedded migrations.
    pub async fn open(path: &Path) -> Result<Self, RegistryError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            .pragma("temp_store", "memory");
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Self { pool })
    }

    /// Records a new queued job. With an idempotency key the owner already used, nothing is
    /// inserted and the existing job is returned instead.
    pub async fn insert(&self, job: &Job) -> Result<Option<Job>, RegistryError> {
        let inserted = sqlx::query(
            "INSERT INTO jobs (id, owner, kind, params, state, attempts, created_at, max_attempts, \
             run_at, delivery, retry_of, idempotency_key) VALUES (?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (owner, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING",
        )
        .bind(job.id.to_string())
        .bind(&job.owner.0)
        .bind(&job.kind)
        .bind(job.params.to_string())
        .bind(job.state.as_str())
        .bind(job.created_at)
        .bind(i64::from(job.max_attempts))
        .bind(job.run_at)
        .bind(job.delivery)
        .bind(job.retry_of.map(|id| id.to_string()))
        .bind(job.idempotency_key.as_deref())
        .execute(&self.pool)
        .await?;
        if inserted.rows_affected() == 1 {
            return Ok(None);
        }
        let sql = concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE owner = ? AND idempotency_key = ?"
        );
        let row = sqlx::query(sql)
            .bind(&job.owner.0)
            .bind(job.idempotency_key.as_deref())
            .fetch_one(&self.pool)
            .await?;
        job_from_row(&row).map(Some)
    }

    /// Removes a job that never reached the queue.
    pub async fn delete(&self, id: JobId) -> Result<(), RegistryError> {
        let id = id.to_string();
        sqlx::query("DELETE FROM job_logs WHERE job_id = ?")
            .bind(&id)
            .execute(&self.pool)
            .await?;
        sqlx::query("DELETE FROM jobs WHERE id = ?")
            .bind(&id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A job by id, whoever owns it (for workers).
    pub async fn get(&self, id: JobId) -> Result<Option<Job>, RegistryError> {
        let sql = concat!("SELECT ", job_columns!(), " FROM jobs WHERE id = ?");
        let row = sqlx::query(sql)
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| job_from_row(&row)).transpose()
    }

    /// A job by id if `owner` owns it; another owner's job is indistinguishable from none.
    pub async fn get_owned(&self, owner: &Owner, id: JobId) -> Result<Option<Job>, RegistryError> {
        Ok(self.get(id).await?.filter(|job| &job.owner == owner))
    }

    /// How many jobs match `filter`.
    pub async fn count(&self, filter: &JobFilter) -> Result<u64, RegistryError> {
        let sql = concat!("SELECT COUNT(*) FROM jobs", filter_where!());
        let count: i64 = bind_filter(sqlx::query_scalar(sql), filter, None)
            .fetch_one(&self.pool)
            .await?;
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
            " ORDER BY id DESC LIMIT ?7"
        );
        let rows = bind_filter(sqlx::query(sql), filter, before)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(job_from_row).collect()
    }

    /// Moves a queued job to running and counts the attempt. Returns `None` when the job is
    /// gone, finished, or `delivery` is not its current one (a stale task), which the caller
    /// skips.
    pub async fn start(&self, id: JobId, delivery: i64) -> Result<Option<Job>, RegistryError> {
        let sql = concat!(
            "UPDATE jobs SET state = 'running', attempts = attempts + 1, started_at = ?, \
             progress = NULL, stage = NULL, run_at = NULL \
             WHERE id = ? AND delivery = ? AND state = 'queued' RETURNING ",
            job_columns!()
        );
        let row = sqlx::query(sql)
            .bind(now_ms())
            .bind(id.to_string())
            .bind(delivery)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| job_from_row(&row)).transpose()
    }

    /// Puts a running job back in the queue for another attempt at `run_at`, keeping `error`,
    /// with a new delivery number. `None` if it is not running any more.
    pub async fn requeue(
        &self,
        id: JobId,
        run_at: Option<i64>,
        error: Option<&str>,
    ) -> Result<Option<Job>, RegistryError> {
        let sql = concat!(
            "UPDATE jobs SET state = 'queued', run_at = ?, error = ?, delivery = delivery + 1 \
             WHERE id = ? AND state = 'running' RETURNING ",
            job_columns!()
        );
        let row = sqlx::query(sql)
            .bind(run_at)
            .bind(error)
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| job_from_row(&row)).transpose()
    }

    /// Every job in the running state (on a single node at start: the ones a crash left).
    pub async fn running(&self) -> Result<Vec<Job>, RegistryError> {
        let sql = concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE state = 'running'"
        );
        let rows = sqlx::query(sql).fetch_all(&self.pool).await?;
        rows.iter().map(job_from_row).collect()
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
            " FROM jobs WHERE finished_at < ? AND state IN ('succeeded', 'failed', 'cancelled') LIMIT ?"
        );
        let rows = sqlx::query(sql)
            .bind(finished_before)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(job_from_row).collect()
    }

    /// The jobs that retry `id` by hand, newest first.
    pub async fn retries_of(&self, id: JobId) -> Result<Vec<JobId>, RegistryError> {
        let ids: Vec<String> =
            sqlx::query_scalar("SELECT id FROM jobs WHERE retry_of = ? ORDER BY id DESC")
                .bind(id.to_string())
                .fetch_all(&self.pool)
                .await?;
        Ok(ids
            .iter()
            .filter_map(|id| JobId::from_str(id).ok())
            .collect())
    }

    /// Cancels a job that has not started; `None` if it is not queued any more.
    pub async fn cancel_queued(&self, id: JobId) -> Result<Option<Job>, RegistryError> {
        let sql = concat!(
            "UPDATE jobs SET state = 'cancelled', error = 'cancelled', finished_at = ? \
             WHERE id = ? AND state = 'queued' RETURNING ",
            job_columns!()
        );
        let row = sqlx::query(sql)
            .bind(now_ms())
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| job_from_row(&row)).transpose()
    }

    /// Saves what a running job last reported.
    pub async fn save_progress(
        &self,
        id: JobId,
        progress: Option<f64>,
        stage: Option<&str>,
    ) -> Result<(), RegistryError> {
        sqlx::query("UPDATE jobs SET progress = ?, stage = ? WHERE id = ? AND state = 'running'")
            .bind(progress)
            .bind(stage)
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records how a running job ended, with its final progress and stage.
    pub async fn finish(&self, job: &Job, outcome: &Outcome) -> Result<Option<Job>, RegistryError> {
        let (state, result, error) = match outcome {
            Outcome::Succeeded(value) => (JobState::Succeeded, Some(value.to_string()), None),
            Outcome::Failed(message) => (JobState::Failed, None, Some(message.as_str())),
            Outcome::Cancelled => (JobState::Cancelled, None, Some("cancelled")),
        };
        let sql = concat!(
            "UPDATE jobs SET state = ?, result = ?, error = ?, progress = ?, stage = ?, \
             finished_at = ? WHERE id = ? AND state = 'running' RETURNING ",
            job_columns!()
        );
        let row = sqlx::query(sql)
            .bind(state.as_str())
            .bind(result)
            .bind(error)
            .bind(job.progress)
            .bind(job.stage.as_deref())
            .bind(now_ms())
            .bind(job.id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| job_from_row(&row)).transpose()
    }

    /// The sequence number of a job's newest log line (0 when it has none).
    pub async fn last_log_seq(&self, id: JobId) -> Result<i64, RegistryError> {
        let seq: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM job_logs WHERE job_id = ?")
            .bind(id.to_string())
            .fetch_one(&self.pool)
            .await?;
        Ok(seq.unwrap_or(0))
    }

    /// Appends a log line and drops lines older than the newest [`LOG_LINES_KEPT`].
    pub async fn append_log(&self, id: JobId, line: &LogLine) -> Result<(), RegistryError> {
        let id = id.to_string();
        sqlx::query("INSERT OR REPLACE INTO job_logs (job_id, seq, at, line) VALUES (?, ?, ?, ?)")
            .bind(&id)
            .bind(line.seq)
            .bind(line.at)
            .bind(&line.line)
            .execute(&self.pool)
            .await?;
        if line.seq > LOG_LINES_KEPT {
            sqlx::query("DELETE FROM job_logs WHERE job_id = ? AND seq <= ?")
                .bind(&id)
                .bind(line.seq - LOG_LINES_KEPT)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// A job's kept log lines, oldest first.
    pub async fn logs(&self, id: JobId) -> Result<Vec<LogLine>, RegistryError> {
        let rows = sqlx::query(
            "SELECT seq, at, line FROM job_logs WHERE job_id = ? ORDER BY seq DESC LIMIT ?",
        )
        .bind(id.to_string())
        .bind(LOG_LINES_KEPT)
        .fetch_all(&self.pool)
        .await?;
        let mut lines = rows
            .iter()
            .map(|row| {
                Ok(LogLine {
                    seq: row.try_get("seq")?,
                    at: row.try_get("at")?,
                    line: row.try_get("line")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        lines.reverse();
        Ok(lines)
    }
}

/// A cursor above every ULID: Crockford base32 'Z' sorts after every ULID character.
fn no_cursor() -> String {
    "Z".repeat(26)
}

/// Binds a filter's parameters (?1 … ?6) to a query.
fn bind_filter<'q, Q>(query: Q, filter: &'q JobFilter, before: Option<JobId>) -> Q
where
    Q: BindFilter<'q>,
{
    query
        .bind_str(Some(filter.owner.0.clone()))
        .bind_str(filter.state.map(|s| s.as_str().to_owned()))
        .bind_str(filter.kind.clone())
        .bind_int(filter.created_from)
        .bind_int(filter.created_before)
        .bind_str(Some(before.map_or_else(no_cursor, |id| id.to_string())))
}

/// The two query types a filter binds to (rows and a count), behind one interface.
trait BindFilter<'q>: Sized {
    fn bind_str(self, value: Option<String>) -> Self;
    fn bind_int(self, value: Option<i64>) -> Self;
}

impl<'q> BindFilter<'q> for sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments> {
    fn bind_str(self, value: Option<String>) -> Self {
        self.bind(value)
    }
    fn bind_int(self, value: Option<i64>) -> Self {
        self.bind(value)
    }
}

impl<'q, O> BindFilter<'q>
    for sqlx::query::QueryScalar<'q, sqlx::Sqlite, O, sqlx::sqlite::SqliteArguments>
{
    fn bind_str(self, value: Option<String>) -> Self {
        self.bind(value)
    }
    fn bind_int(self, value: Option<i64>) -> Self {
        self.bind(value)
    }
}

fn job_from_row(row: &SqliteRow) -> Result<Job, RegistryError> {
    let corrupt =
        |what: &str, err: &dyn std::fmt::Display| RegistryError::Corrupt(format!("{what}: {err}"));
    let id: String = row.try_get("id")?;
    let params: String = row.try_get("params")?;
    let state: String = row.try_get("state")?;
    let result: Option<String> = row.try_get("result")?;
    Ok(Job {
        id: JobId::from_str(&id).map_err(|e| corrupt("id", &e))?,
        owner: Owner(row.try_get("owner")?),
        kind: row.try_get("kind")?,
        params: serde_json::from_str(&params).map_err(|e| corrupt("params", &e))?,
        state: state.parse().map_err(|e| corrupt("state", &e))?,
        progress: row.try_get("progress")?,
        stage: row.try_get("stage")?,
        result: result
            .map(|text| serde_json::from_str(&text))
            .transpose()
            .map_err(|e| corrupt("result", &e))?,
        error: row.try_get("error")?,
        attempts: row
            .try_get::<i64, _>("attempts")?
            .try_into()
            .unwrap_or(u32::MAX),
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        max_attempts: row
            .try_get::<i64, _>("max_attempts")?
            .try_into()
            .unwrap_or(1),
        run_at: row.try_get("run_at")?,
        delivery: row.try_get("delivery")?,
        retry_of: row
            .try_get::<Option<String>, _>("retry_of")?
            .and_then(|id| JobId::from_str(&id).ok()),
        idempotency_key: row.try_get("idempotency_key")?,
    })
}
