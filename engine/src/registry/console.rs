//! What the operators' console reads and writes: every owner's jobs filtered and searched, the
//! counts per state, the audit log, paused kinds, finished jobs per minute, and the worker
//! processes.
//!
//! The filters are optional, so the `WHERE` clause is assembled from fixed fragments (never
//! from data) and only the filters in use appear in it: each query then uses the index that
//! fits it (state, kind, owner, or the primary key for time ranges and pages).

use super::{Db, Registry, RegistryError, job_from_row};
use crate::model::{Job, JobId, JobState, Owner, now_ms};
use sqlx::AssertSqlSafe;
use std::str::FromStr;

/// Which jobs an operator's list, count or bulk action covers; `None` filters nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobQuery {
    pub state: Option<JobState>,
    pub kind: Option<String>,
    pub owner: Option<Owner>,
    /// Unix milliseconds, inclusive.
    pub created_from: Option<i64>,
    /// Unix milliseconds, exclusive.
    pub created_before: Option<i64>,
    /// Words that must all appear in the parameters, the result or the error.
    pub search: Option<String>,
}

impl JobQuery {
    /// True when it filters nothing (every job).
    pub fn is_everything(&self) -> bool {
        *self == Self::default()
    }
}

/// How many jobs of a console filter are in each state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateCounts {
    /// In [`JobState::ALL`]'s order.
    pub per_state: Vec<(JobState, u64)>,
    /// The filter's search matched more jobs than were counted: these are the counts of its
    /// newest matches.
    pub partial: bool,
}

impl StateCounts {
    /// The count of `state`.
    pub fn of(&self, state: JobState) -> u64 {
        self.per_state
            .iter()
            .find(|(s, _)| *s == state)
            .map_or(0, |(_, n)| *n)
    }
}

/// One attempt of a job: where and when it ran, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptInfo {
    /// 1 for the first.
    pub attempt: u32,
    /// The worker process that ran it.
    pub worker: Option<String>,
    /// Unix milliseconds.
    pub started_at: i64,
    pub ended_at: Option<i64>,
    /// `retried` (by the kind's retry policy, or taken back from a lost worker), `succeeded`,
    /// `failed` or `cancelled`; `None` while it runs.
    pub outcome: Option<String>,
    pub error: Option<String>,
}

/// One entry of the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub at: i64,
    /// `admin` or `viewer`.
    pub role: String,
    /// The operator's login session.
    pub session: String,
    /// What was done: `retry`, `cancel`, `delete`, `pause`, `resume`, `bulk-retry`…
    pub action: String,
    /// A job id, a kind, or a filter.
    pub target: String,
    /// How many jobs it touched.
    pub jobs: u64,
}

/// A worker process as it described itself, with its last heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerInfo {
    pub name: String,
    pub host: String,
    pub role: String,
    pub version: String,
    pub started_at: i64,
    pub concurrency: u32,
    /// By the database's clock.
    pub last_seen: i64,
    /// How many jobs the registry says it runs.
    pub running: u64,
}

/// Jobs of one kind that finished in one minute in one state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishedCount {
    /// Unix minutes.
    pub minute: i64,
    pub kind: String,
    pub state: JobState,
    pub jobs: u64,
}

/// How long one recently finished job waited and ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timing {
    pub kind: String,
    /// From entering the queue to starting (a scheduled job's delay included), ms.
    pub wait_ms: i64,
    pub run_ms: i64,
}

/// A value bound to a `$n` placeholder of an assembled statement.
#[derive(Debug, Clone)]
enum Arg {
    Text(String),
    Int(i64),
}

/// Binds assembled arguments, in order, to a query of either database.
macro_rules! bind_args {
    ($query:expr, $args:expr) => {{
        let mut query = $query;
        for arg in $args {
            query = match arg {
                Arg::Text(text) => query.bind(text.clone()),
                Arg::Int(int) => query.bind(*int),
            };
        }
        query
    }};
}

/// A `WHERE` clause under construction: fixed fragments, and the values they refer to.
#[derive(Debug, Default)]
struct Where {
    clauses: Vec<String>,
    args: Vec<Arg>,
}

impl Where {
    /// Adds `fragment`, in which `?` stands for the placeholder of `arg`.
    fn and(&mut self, fragment: &str, arg: Arg) {
        self.and_all(fragment, vec![arg]);
    }

    /// Adds `fragment`, whose `?`s stand, in order, for the placeholders of `args`.
    fn and_all(&mut self, fragment: &str, args: Vec<Arg>) {
        let mut clause = String::with_capacity(fragment.len() + 8);
        for (i, part) in fragment.split('?').enumerate() {
            if i > 0 {
                clause.push_str(&format!("${}", self.args.len() + i));
            }
            clause.push_str(part);
        }
        self.args.extend(args);
        self.clauses.push(clause);
    }

    fn sql(&self) -> String {
        if self.clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.clauses.join(" AND "))
        }
    }

    /// The placeholder the next argument will take.
    fn next(&self) -> String {
        format!("${}", self.args.len() + 1)
    }
}

/// The words of a search (letters and digits; at most 16).
fn words(text: &str) -> Vec<&str> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .take(16)
        .collect()
}

/// The FTS5 query for `text`: each word quoted (so no character of it is query syntax), all
/// required, the last one as a prefix (a search as you type). `None` when it has no words.
fn fts5_query(text: &str) -> Option<String> {
    let words = words(text);
    let (last, rest) = words.split_last()?;
    let mut query: Vec<String> = rest.iter().map(|word| format!("\"{word}\"")).collect();
    query.push(format!("\"{last}\"*"));
    Some(query.join(" "))
}

/// The same for Postgres's `to_tsquery`: `word & word & last:*` (words of letters and digits
/// only, so nothing in them is query syntax).
fn tsquery_prefix(text: &str) -> Option<String> {
    let words = words(text);
    let (last, rest) = words.split_last()?;
    let mut query: Vec<String> = rest.iter().map(|word| (*word).to_owned()).collect();
    query.push(format!("{last}:*"));
    Some(query.join(" & "))
}

/// The text a job is searched by on Postgres, exactly as its expression index (`jobs_search`,
/// migrations/postgres/0004_console.sql) has it.
const PG_SEARCHED: &str = "to_tsvector('simple', regexp_replace(\
    left(params || ' ' || coalesce(result, '') || ' ' || coalesce(error, ''), 100000), \
    '[^[:alnum:]]+', ' ', 'g'))";

/// The lowest job id made at unix millisecond `at` (ids are ULIDs, which start with their
/// time), so a time range is a range of the primary key.
fn first_id_at(at: i64) -> String {
    let at = u64::try_from(at).unwrap_or(0).min((1 << 48) - 1);
    ulid::Ulid::from_parts(at, 0).to_string()
}

/// What a search asks of one backend.
enum Search {
    /// The query has no search.
    None,
    /// Its text has no words (only punctuation): nothing matches.
    Nothing,
    /// The backend's query text (FTS5 or `to_tsquery`).
    Words(String),
}

impl Registry {
    /// The `WHERE` clause of `query` without its search, leaving out its state when
    /// `with_state` is false.
    fn console_filters(&self, query: &JobQuery, with_state: bool) -> Where {
        let mut filter = Where::default();
        if with_state && let Some(state) = query.state {
            filter.and("state = ?", Arg::Text(state.as_str().to_owned()));
        }
        if let Some(kind) = &query.kind {
            filter.and("kind = ?", Arg::Text(kind.clone()));
        }
        if let Some(owner) = &query.owner {
            filter.and("owner = ?", Arg::Text(owner.0.clone()));
        }
        if let Some(from) = query.created_from {
            filter.and("id >= ?", Arg::Text(first_id_at(from)));
        }
        if let Some(before) = query.created_before {
            filter.and("id < ?", Arg::Text(first_id_at(before)));
        }
        filter
    }

    fn search(&self, query: &JobQuery) -> Search {
        let Some(text) = query.search.as_deref().filter(|s| !s.trim().is_empty()) else {
            return Search::None;
        };
        let words = match &self.db {
            Db::Sqlite(_) => fts5_query(text),
            Db::Postgres(_) => tsquery_prefix(text),
        };
        words.map_or(Search::Nothing, Search::Words)
    }

    /// The column that names a job in [`Registry::search_matches`]'s answer, and that
    /// statement: the jobs whose text matches `?`, newest first (with `limited`, at most `?`).
    fn search_matches(&self, limited: bool) -> (&'static str, String) {
        match &self.db {
            // FTS5 keeps each word's jobs in rowid (insertion) order, so the newest matches
            // come first without reading the others.
            Db::Sqlite(_) => (
                "rowid",
                format!(
                    "SELECT rowid FROM jobs_search WHERE jobs_search MATCH ?{}",
                    if limited {
                        " ORDER BY rowid DESC LIMIT ?"
                    } else {
                        ""
                    }
                ),
            ),
            Db::Postgres(_) => (
                "id",
                format!(
                    "SELECT id FROM jobs WHERE {PG_SEARCHED} @@ to_tsquery('simple', ?){}",
                    if limited {
                        " ORDER BY id DESC LIMIT ?"
                    } else {
                        ""
                    }
                ),
            ),
        }
    }

    /// The `WHERE` clause of `query`, leaving out its state when `with_state` is false.
    fn console_where(&self, query: &JobQuery, with_state: bool) -> Where {
        let mut filter = self.console_filters(query, with_state);
        match self.search(query) {
            Search::None => {}
            Search::Nothing => filter.clauses.push("1 = 0".to_owned()),
            Search::Words(words) => {
                let (key, matches) = self.search_matches(false);
                filter.and(&format!("{key} IN ({matches})"), Arg::Text(words));
            }
        }
        filter
    }

    /// The jobs of every owner that match `query`, newest first, older than `before`.
    pub async fn console_list(
        &self,
        query: &JobQuery,
        before: Option<JobId>,
        limit: u32,
    ) -> Result<Vec<Job>, RegistryError> {
        if let (Db::Sqlite(pool), Search::Words(words)) = (&self.db, self.search(query)) {
            return self
                .search_list_sqlite(pool, query, words, before, limit)
                .await;
        }
        let mut filter = self.console_where(query, true);
        if let Some(before) = before {
            filter.and("id < ?", Arg::Text(before.to_string()));
        }
        let sql = format!(
            "SELECT {} FROM jobs{} ORDER BY id DESC LIMIT {}",
            job_columns!(),
            filter.sql(),
            filter.next()
        );
        filter.args.push(Arg::Int(i64::from(limit)));
        on_db!(self, pool => {
            let rows = bind_args!(sqlx::query(AssertSqlSafe(sql)), &filter.args)
                .fetch_all(pool)
                .await?;
            rows.iter().map(job_from_row).collect()
        })
    }

    /// [`Registry::console_list`] of a search on SQLite: FTS5 walks the word's jobs newest
    /// first (by rowid, the order they were recorded in) and the walk stops at the page's
    /// last job, so a word found in 100,000 jobs costs a page, not 100,000 reads and a sort.
    /// Pages follow each other by rowid, which orders jobs as their ids do but for jobs
    /// recorded within the same few milliseconds.
    async fn search_list_sqlite(
        &self,
        pool: &sqlx::SqlitePool,
        query: &JobQuery,
        words: String,
        before: Option<JobId>,
        limit: u32,
    ) -> Result<Vec<Job>, RegistryError> {
        let mut filter = self.console_filters(query, true);
        filter.and("jobs_search MATCH ?", Arg::Text(words));
        if let Some(before) = before {
            filter.and(
                "s.rowid < (SELECT rowid FROM jobs WHERE id = ?)",
                Arg::Text(before.to_string()),
            );
        }
        let sql = format!(
            "SELECT {} FROM jobs WHERE rowid IN (\
             SELECT s.rowid FROM jobs_search s JOIN jobs j ON j.rowid = s.rowid{} \
             ORDER BY s.rowid DESC LIMIT {}) ORDER BY rowid DESC",
            job_columns!(),
            filter.sql(),
            filter.next()
        );
        filter.args.push(Arg::Int(i64::from(limit)));
        let rows = bind_args!(sqlx::query(AssertSqlSafe(sql)), &filter.args)
            .fetch_all(pool)
            .await?;
        rows.iter().map(job_from_row).collect()
    }

    /// The ids of the jobs that match `query`, oldest first, after `after` (a bulk action's
    /// cursor), at most `limit`.
    pub async fn console_ids(
        &self,
        query: &JobQuery,
        after: Option<JobId>,
        limit: u32,
    ) -> Result<Vec<JobId>, RegistryError> {
        let mut filter = self.console_where(query, true);
        if let Some(after) = after {
            filter.and("id > ?", Arg::Text(after.to_string()));
        }
        let sql = format!(
            "SELECT id FROM jobs{} ORDER BY id LIMIT {}",
            filter.sql(),
            filter.next()
        );
        filter.args.push(Arg::Int(i64::from(limit)));
        let ids: Vec<String> = on_db!(self, pool => {
            bind_args!(sqlx::query_scalar(AssertSqlSafe(sql)), &filter.args)
                .fetch_all(pool)
                .await?
        });
        ids.into_iter()
            .map(|id| JobId::from_str(&id).map_err(|_| RegistryError::Corrupt(id)))
            .collect()
    }

    /// How many jobs match `query`.
    pub async fn console_count(&self, query: &JobQuery) -> Result<u64, RegistryError> {
        let filter = self.console_where(query, true);
        let sql = format!("SELECT COUNT(*) FROM jobs{}", filter.sql());
        let count: i64 = on_db!(self, pool => {
            bind_args!(sqlx::query_scalar(AssertSqlSafe(sql)), &filter.args)
                .fetch_one(pool)
                .await?
        });
        Ok(count.max(0) as u64)
    }

    /// How many jobs match `query` in each state (its own state filter left out), in
    /// [`JobState::ALL`]'s order. A search's counts are of its newest `search_limit` matches
    /// (a word found in most jobs would otherwise cost a read of each); `partial` says when
    /// it matched more.
    pub async fn console_counts(
        &self,
        query: &JobQuery,
        search_limit: u64,
    ) -> Result<StateCounts, RegistryError> {
        let mut filter = self.console_filters(query, false);
        let mut partial = false;
        match self.search(query) {
            Search::None => {}
            Search::Nothing => filter.clauses.push("1 = 0".to_owned()),
            Search::Words(words) => {
                let limit = i64::try_from(search_limit).unwrap_or(i64::MAX);
                let (key, newest) = self.search_matches(true);
                // One statement, its `?`s numbered as the database wants them.
                let mut counted = Where::default();
                counted.and_all(
                    &format!("SELECT COUNT(*) FROM ({newest}) AS newest"),
                    vec![Arg::Text(words.clone()), Arg::Int(limit.saturating_add(1))],
                );
                let sql = counted.clauses.concat();
                let matched: i64 = on_db!(self, pool => {
                    bind_args!(sqlx::query_scalar(AssertSqlSafe(sql)), &counted.args)
                        .fetch_one(pool)
                        .await?
                });
                partial = matched > limit;
                filter.and_all(
                    &format!("{key} IN ({newest})"),
                    vec![Arg::Text(words), Arg::Int(limit)],
                );
            }
        }
        let sql = format!(
            "SELECT state, COUNT(*) FROM jobs{} GROUP BY state",
            filter.sql()
        );
        let rows: Vec<(String, i64)> = on_db!(self, pool => {
            bind_args!(sqlx::query_as(AssertSqlSafe(sql)), &filter.args)
                .fetch_all(pool)
                .await?
        });
        let per_state = JobState::ALL
            .into_iter()
            .map(|state| {
                let count = rows
                    .iter()
                    .find(|(name, _)| name == state.as_str())
                    .map_or(0, |(_, count)| (*count).max(0) as u64);
                (state, count)
            })
            .collect();
        Ok(StateCounts { per_state, partial })
    }

    /// Jobs queued and running per kind: `(kind, queued, running)`, by kind.
    pub async fn active_by_kind(&self) -> Result<Vec<(String, u64, u64)>, RegistryError> {
        let sql = "SELECT kind, \
                   SUM(CASE WHEN state = 'queued' THEN 1 ELSE 0 END), \
                   SUM(CASE WHEN state = 'running' THEN 1 ELSE 0 END) \
                   FROM jobs WHERE state IN ('queued', 'running') GROUP BY kind ORDER BY kind";
        let rows: Vec<(String, i64, i64)> =
            on_db!(self, pool => sqlx::query_as(sql).fetch_all(pool).await?);
        Ok(rows
            .into_iter()
            .map(|(kind, queued, running)| (kind, queued.max(0) as u64, running.max(0) as u64))
            .collect())
    }

    /// Writes an entry to the audit log.
    pub async fn audit(&self, entry: &AuditEntry) -> Result<(), RegistryError> {
        let sql = "INSERT INTO audit_log (at, role, session, action, target, jobs) \
                   VALUES ($1, $2, $3, $4, $5, $6)";
        on_db!(self, pool => {
            sqlx::query(sql)
                .bind(entry.at)
                .bind(&entry.role)
                .bind(&entry.session)
                .bind(&entry.action)
                .bind(&entry.target)
                .bind(i64::try_from(entry.jobs).unwrap_or(i64::MAX))
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// The audit log, newest first, older than entry `before`: `(entry number, entry)`.
    pub async fn audit_log(
        &self,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<(i64, AuditEntry)>, RegistryError> {
        let sql = "SELECT id, at, role, session, action, target, jobs FROM audit_log \
                   WHERE id < $1 ORDER BY id DESC LIMIT $2";
        type Row = (i64, i64, String, String, String, String, i64);
        let rows: Vec<Row> = on_db!(self, pool => {
            sqlx::query_as(sql)
                .bind(before.unwrap_or(i64::MAX))
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?
        });
        Ok(rows
            .into_iter()
            .map(|(id, at, role, session, action, target, jobs)| {
                let jobs = jobs.max(0) as u64;
                let entry = AuditEntry {
                    at,
                    role,
                    session,
                    action,
                    target,
                    jobs,
                };
                (id, entry)
            })
            .collect())
    }

    /// Marks `kind` paused (its queued jobs wait); false if it already was.
    pub async fn pause_kind(&self, kind: &str) -> Result<bool, RegistryError> {
        let sql = "INSERT INTO paused_kinds (kind, paused_at) VALUES ($1, $2) \
                   ON CONFLICT (kind) DO NOTHING";
        let changed = on_db!(self, pool => {
            sqlx::query(sql).bind(kind).bind(now_ms()).execute(pool).await?.rows_affected()
        });
        Ok(changed > 0)
    }

    /// Lets `kind` run again; false if it was not paused.
    pub async fn resume_kind(&self, kind: &str) -> Result<bool, RegistryError> {
        let sql = "DELETE FROM paused_kinds WHERE kind = $1";
        let changed = on_db!(self, pool => {
            sqlx::query(sql).bind(kind).execute(pool).await?.rows_affected()
        });
        Ok(changed > 0)
    }

    /// Marks up to `limit` of `kind`'s queued jobs as waiting for the operator (their stage
    /// says so), skipping those already marked. Returns them.
    pub async fn mark_paused(
        &self,
        kind: &str,
        stage: &str,
        limit: u32,
    ) -> Result<Vec<Job>, RegistryError> {
        let sql = format!(
            "UPDATE jobs SET stage = $1 WHERE id IN (SELECT id FROM jobs \
             WHERE kind = $2 AND state = 'queued' AND (stage IS NULL OR stage <> $1) LIMIT $3) \
             AND state = 'queued' RETURNING {}",
            job_columns!()
        );
        on_db!(self, pool => {
            let rows = sqlx::query(AssertSqlSafe(sql))
                .bind(stage)
                .bind(kind)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?;
            rows.iter().map(job_from_row).collect()
        })
    }

    /// Gives up to `limit` of `kind`'s queued jobs after `after` (by id) a new delivery number,
    /// clearing the paused `stage`, for a push under a task id never used (their old tasks,
    /// dropped by workers or not reached yet, become stale; a queue may keep the id of a task
    /// it delivered). Returns them, in id order. The state is checked again by the outer
    /// statement, so a job that started meanwhile is left alone.
    pub async fn redeliver_queued(
        &self,
        kind: &str,
        stage: &str,
        after: Option<JobId>,
        limit: u32,
    ) -> Result<Vec<Job>, RegistryError> {
        let sql = format!(
            "UPDATE jobs SET delivery = delivery + 1, \
             stage = CASE WHEN stage = $1 THEN NULL ELSE stage END \
             WHERE id IN (SELECT id FROM jobs WHERE kind = $2 AND state = 'queued' AND id > $3 \
             ORDER BY id LIMIT $4) AND state = 'queued' RETURNING {}",
            job_columns!()
        );
        let after = after.map_or_else(String::new, |id| id.to_string());
        let mut jobs: Vec<Job> = on_db!(self, pool => {
            let rows = sqlx::query(AssertSqlSafe(sql))
                .bind(stage)
                .bind(kind)
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?;
            rows.iter().map(job_from_row).collect::<Result<_, _>>()?
        });
        jobs.sort_by_key(|job| job.id);
        Ok(jobs)
    }

    /// The paused kinds, with when each was paused (unix ms).
    pub async fn paused_kinds(&self) -> Result<Vec<(String, i64)>, RegistryError> {
        let sql = "SELECT kind, paused_at FROM paused_kinds ORDER BY kind";
        Ok(on_db!(self, pool => sqlx::query_as(sql).fetch_all(pool).await?))
    }
}

impl super::Writer {
    /// Counts finished jobs in the per-minute table the charts read.
    pub(super) async fn count_finished(&self, jobs: &[Job]) -> Result<(), RegistryError> {
        let mut counts: std::collections::BTreeMap<(i64, &str, &str), i64> = Default::default();
        for job in jobs {
            let minute = job.finished_at.unwrap_or_else(now_ms).div_euclid(60_000);
            *counts
                .entry((minute, job.kind.as_str(), job.state.as_str()))
                .or_default() += 1;
        }
        if counts.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "INSERT INTO finished_per_minute (minute, kind, state, jobs) VALUES {} \
             ON CONFLICT (minute, kind, state) \
             DO UPDATE SET jobs = finished_per_minute.jobs + excluded.jobs",
            super::batch::values(counts.len(), 4, 1)
        );
        on_db!(self, pool => {
            let mut query = sqlx::query(AssertSqlSafe(sql.as_str()));
            for ((minute, kind, state), jobs) in &counts {
                query = query.bind(*minute).bind(*kind).bind(*state).bind(*jobs);
            }
            query.execute(pool).await?;
        });
        Ok(())
    }
}

impl Registry {
    /// Finished jobs per minute, kind and state since unix minute `since`.
    pub async fn finished_since(&self, since: i64) -> Result<Vec<FinishedCount>, RegistryError> {
        let sql = "SELECT minute, kind, state, jobs FROM finished_per_minute \
                   WHERE minute >= $1 ORDER BY minute";
        let rows: Vec<(i64, String, String, i64)> =
            on_db!(self, pool => sqlx::query_as(sql).bind(since).fetch_all(pool).await?);
        Ok(rows
            .into_iter()
            .filter_map(|(minute, kind, state, jobs)| {
                Some(FinishedCount {
                    minute,
                    kind,
                    state: state.parse().ok()?,
                    jobs: jobs.max(0) as u64,
                })
            })
            .collect())
    }

    /// Forgets the per-minute counts before unix minute `before`.
    pub async fn forget_finished_counts(&self, before: i64) -> Result<(), RegistryError> {
        let sql = "DELETE FROM finished_per_minute WHERE minute < $1";
        on_db!(self, pool => {
            sqlx::query(sql).bind(before).execute(pool).await?;
        });
        Ok(())
    }

    /// How long the jobs that finished since `since` (unix ms) waited and ran, the newest
    /// `limit` of them.
    pub async fn timings(&self, since: i64, limit: u32) -> Result<Vec<Timing>, RegistryError> {
        let sql = "SELECT kind, queued_at, started_at, finished_at FROM jobs \
                   WHERE finished_at >= $1 AND started_at IS NOT NULL \
                   ORDER BY finished_at DESC LIMIT $2";
        type Row = (String, Option<i64>, Option<i64>, Option<i64>);
        let rows: Vec<Row> = on_db!(self, pool => {
            sqlx::query_as(sql).bind(since).bind(i64::from(limit)).fetch_all(pool).await?
        });
        Ok(rows
            .into_iter()
            .filter_map(|(kind, queued_at, started_at, finished_at)| {
                let (started, finished) = (started_at?, finished_at?);
                Some(Timing {
                    kind,
                    wait_ms: queued_at.map_or(0, |queued| (started - queued).max(0)),
                    run_ms: (finished - started).max(0),
                })
            })
            .collect())
    }

    /// Records what worker process `info.name` is (at its start).
    pub async fn register_worker(&self, info: &WorkerInfo) -> Result<(), RegistryError> {
        let sql = format!(
            "INSERT INTO workers (name, last_seen, host, role, version, started_at, concurrency) \
             VALUES ($1, {now}, $2, $3, $4, $5, $6) \
             ON CONFLICT (name) DO UPDATE SET last_seen = excluded.last_seen, \
             host = excluded.host, role = excluded.role, version = excluded.version, \
             started_at = excluded.started_at, concurrency = excluded.concurrency",
            now = self.now_sql()
        );
        on_db!(self, pool => {
            sqlx::query(AssertSqlSafe(sql))
                .bind(&info.name)
                .bind(&info.host)
                .bind(&info.role)
                .bind(&info.version)
                .bind(info.started_at)
                .bind(i64::from(info.concurrency))
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Every worker process the registry knows, newest first, and the database's time now
    /// (unix ms), to judge their heartbeats by.
    pub async fn workers(&self) -> Result<(Vec<WorkerInfo>, i64), RegistryError> {
        let sql = "SELECT w.name, w.host, w.role, w.version, w.started_at, w.concurrency, \
                   w.last_seen, (SELECT COUNT(*) FROM jobs \
                   WHERE jobs.state = 'running' AND jobs.worker = w.name) \
                   FROM workers w ORDER BY w.started_at DESC, w.name";
        type Row = (String, String, String, String, i64, i64, i64, i64);
        let rows: Vec<Row> = on_db!(self, pool => sqlx::query_as(sql).fetch_all(pool).await?);
        let now_sql = format!("SELECT {}", self.now_sql());
        let now: i64 = on_db!(self, pool => {
            sqlx::query_scalar(AssertSqlSafe(now_sql)).fetch_one(pool).await?
        });
        let workers = rows
            .into_iter()
            .map(
                |(name, host, role, version, started_at, concurrency, last_seen, running)| {
                    WorkerInfo {
                        name,
                        host,
                        role,
                        version,
                        started_at,
                        concurrency: u32::try_from(concurrency).unwrap_or(0),
                        last_seen,
                        running: running.max(0) as u64,
                    }
                },
            )
            .collect();
        Ok((workers, now))
    }

    /// The worker process that ran (or runs) job `id`'s latest attempt.
    pub async fn worker_of(&self, id: JobId) -> Result<Option<String>, RegistryError> {
        let sql = "SELECT worker FROM jobs WHERE id = $1";
        let worker: Option<Option<String>> = on_db!(self, pool => {
            sqlx::query_scalar(sql).bind(id.to_string()).fetch_optional(pool).await?
        });
        Ok(worker.flatten())
    }

    /// Every attempt of job `id`, first first (kept by the `job_attempts` triggers).
    pub async fn attempts(&self, id: JobId) -> Result<Vec<AttemptInfo>, RegistryError> {
        let sql = "SELECT attempt, worker, started_at, ended_at, outcome, error \
                   FROM job_attempts WHERE job_id = $1 ORDER BY attempt";
        type Row = (
            i64,
            Option<String>,
            i64,
            Option<i64>,
            Option<String>,
            Option<String>,
        );
        let rows: Vec<Row> = on_db!(self, pool => {
            sqlx::query_as(sql).bind(id.to_string()).fetch_all(pool).await?
        });
        Ok(rows
            .into_iter()
            .map(
                |(attempt, worker, started_at, ended_at, outcome, error)| AttemptInfo {
                    attempt: u32::try_from(attempt).unwrap_or(0),
                    worker,
                    started_at,
                    ended_at,
                    outcome,
                    error,
                },
            )
            .collect())
    }

    /// True when the database answers.
    pub async fn ping(&self) -> Result<(), RegistryError> {
        on_db!(self, pool => {
            sqlx::query("SELECT 1").execute(pool).await?;
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_words_are_quoted_and_the_last_is_a_prefix() {
        assert_eq!(
            fts5_query("example.com hook").as_deref(),
            Some("\"example\" \"com\" \"hook\"*")
        );
        assert_eq!(
            fts5_query("\"OR* NEAR(").as_deref(),
            Some("\"OR\" \"NEAR\"*")
        );
        assert_eq!(fts5_query(" -- ()* "), None);
        assert_eq!(fts5_query("héllo").as_deref(), Some("\"héllo\"*"));
    }

    #[test]
    fn postgres_prefix_queries_hold_only_words() {
        assert_eq!(tsquery_prefix("a.b | !c").as_deref(), Some("a & b & c:*"));
        assert_eq!(tsquery_prefix("&|!():*"), None);
    }

    #[test]
    fn placeholders_are_numbered_in_order() {
        let mut filter = Where::default();
        filter.and("state = ?", Arg::Int(1));
        filter.and_all("(a = ? OR b = ?)", vec![Arg::Int(2), Arg::Int(3)]);
        assert_eq!(filter.sql(), " WHERE state = $1 AND (a = $2 OR b = $3)");
        assert_eq!(filter.next(), "$4");
    }

    #[test]
    fn a_time_bound_is_the_lowest_id_of_its_millisecond() {
        let id = crate::model::new_job_id();
        let at = id.timestamp_ms() as i64;
        assert!(first_id_at(at) <= id.to_string());
        assert!(first_id_at(at + 1) > id.to_string());
        assert_eq!(first_id_at(-5), ulid::Ulid::from_parts(0, 0).to_string());
    }
}
