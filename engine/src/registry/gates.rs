//! Starting a job of a limited kind (see `crate::gates`): the key's running jobs are counted
//! and its rate slot taken in one transaction, under the key's lock, so the limits hold across
//! every process sharing the registry.

use super::{Db, Registry, RegistryError, job_from_row};
use crate::db;
use crate::gates::GateRule;
use crate::model::{Job, JobId, now_ms, priority_within};
use crate::queue::QueuedJob;
use std::str::FromStr;

/// What [`Registry::start_gated`] did with a delivery.
#[derive(Debug, Clone)]
pub enum Admission {
    /// The job runs now.
    Started(Box<Job>),
    /// Nothing to run: a stale delivery, a finished or deleted job, or a paused kind (as
    /// [`Registry::start`] answering `None`).
    Skipped,
    /// Every slot of the key is busy (`busy` jobs run): the job waits, without a task, until
    /// [`Registry::wake_waiting`] gives it one.
    Full { busy: u32 },
    /// The job took the key's next rate slot: the task of its new delivery, due then (its
    /// `run_at`, unix ms), for the caller to push.
    Later(QueuedJob),
}

/// How many jobs run under a limit key ($1).
pub(super) const RUNNING_UNDER: &str =
    "SELECT COUNT(*) FROM jobs WHERE limit_key = $1 AND state = 'running'";

/// The most jobs one wake-up gives a task (a key whose limit was removed has all its waiting
/// jobs woken, a page at a time).
const WAKE_AT_MOST: i64 = 1_000;

/// A job waiting for its rate slot whose task comes up to this early still starts (the queue
/// hands tasks out a little early; the worker waits for the exact time first).
const SLOT_EARLY_MS: i64 = 5;

/// Takes `key`'s lock for the rest of the transaction: on Postgres an advisory lock on the
/// key's hash; on SQLite the transaction's write lock already serialises every writer.
macro_rules! lock_key {
    (Sqlite, $tx:expr, $key:expr) => {};
    (Postgres, $tx:expr, $key:expr) => {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind($key)
            .execute(&mut *$tx)
            .await?;
    };
}

/// Runs `$body` in a write transaction with `$key` locked, on either database, and commits.
macro_rules! with_key_locked {
    ($registry:expr, $key:expr, $tx:ident => $body:expr) => {
        match &$registry.db {
            Db::Sqlite(pool) => {
                let mut $tx = db::write_transaction(pool).await?;
                lock_key!(Sqlite, $tx, $key);
                let answer = $body;
                $tx.commit().await?;
                answer
            }
            Db::Postgres(pool) => {
                let mut $tx = pool.begin().await?;
                lock_key!(Postgres, $tx, $key);
                let answer = $body;
                $tx.commit().await?;
                answer
            }
        }
    };
}

impl Registry {
    /// Moves a queued job of a limited kind to running on `worker`, if `rule` lets it start now;
    /// see [`Admission`]. Concurrency is checked first, so a job waiting for a slot takes no
    /// rate slot; a job that reserved a rate slot keeps it while it waits for a slot.
    pub async fn start_gated(
        &self,
        id: JobId,
        delivery: i64,
        worker: &str,
        rule: &GateRule,
    ) -> Result<Admission, RegistryError> {
        let (job_id, id, key) = (id, id.to_string(), rule.key.as_str());
        let read = "SELECT delivery, rate_slot FROM jobs WHERE id = $1 AND state = 'queued' \
                    AND kind NOT IN (SELECT kind FROM paused_kinds)";
        let count = RUNNING_UNDER;
        let wait = "UPDATE jobs SET waiting = 'slot', limit_key = $1 WHERE id = $2 \
                    AND state = 'queued'";
        let read_tat = "SELECT tat FROM rate_limits WHERE key = $1";
        let write_tat = "INSERT INTO rate_limits (key, tat) VALUES ($1, $2) \
                         ON CONFLICT (key) DO UPDATE SET tat = excluded.tat";
        let later = "UPDATE jobs SET waiting = 'rate', limit_key = $1, rate_slot = $2, \
                     run_at = $2, delivery = delivery + 1 WHERE id = $3 AND state = 'queued' \
                     RETURNING delivery, priority";
        let start = concat!(
            "UPDATE jobs SET state = 'running', attempts = attempts + 1, started_at = $1, \
             progress = NULL, stage = NULL, run_at = NULL, worker = $2, limit_key = $3, \
             waiting = NULL, rate_slot = NULL \
             WHERE id = $4 AND delivery = $5 AND state = 'queued' RETURNING ",
            job_columns!()
        );
        let admission = with_key_locked!(self, key, tx => 'gate: {
            let row: Option<(i64, Option<i64>)> =
                sqlx::query_as(read).bind(&id).fetch_optional(&mut *tx).await?;
            let Some((_, reserved)) = row.filter(|(current, _)| *current == delivery) else {
                break 'gate Admission::Skipped;
            };
            if let Some(slots) = rule.concurrency {
                let busy: i64 = sqlx::query_scalar(count).bind(key).fetch_one(&mut *tx).await?;
                if busy >= i64::from(slots) {
                    sqlx::query(wait).bind(key).bind(&id).execute(&mut *tx).await?;
                    break 'gate Admission::Full { busy: busy as u32 };
                }
            }
            // Read once the key is locked and its running jobs counted: a finish that freed a
            // slot committed before the count (finishes do not take the key's lock), so the
            // start time recorded is after its finish time.
            let now = now_ms();
            if let Some(rate) = rule.rate {
                let slot = match reserved {
                    // Its slot came (it was reserved when the job first came too early).
                    Some(slot) if slot <= now + SLOT_EARLY_MS => None,
                    // Pushed again before its slot (by the reconciler): back to its slot.
                    Some(slot) => Some(slot),
                    None => {
                        let stored: Option<i64> =
                            sqlx::query_scalar(read_tat).bind(key).fetch_optional(&mut *tx).await?;
                        let now_us = now * 1000;
                        let tat = stored.unwrap_or(now_us).max(now_us);
                        sqlx::query(write_tat)
                            .bind(key)
                            .bind(tat + rate.interval_us())
                            .execute(&mut *tx)
                            .await?;
                        let allowed_at = tat - rate.tolerance_us();
                        (allowed_at > now_us).then(|| (allowed_at + 999) / 1000)
                    }
                };
                if let Some(at) = slot {
                    let delivery: Option<(i64, i64)> = sqlx::query_as(later)
                        .bind(key)
                        .bind(at)
                        .bind(&id)
                        .fetch_optional(&mut *tx)
                        .await?;
                    break 'gate match delivery {
                        Some((delivery, priority)) => Admission::Later(QueuedJob {
                            job_id,
                            delivery,
                            run_at: Some(at),
                            priority: priority_within(priority),
                        }),
                        None => Admission::Skipped,
                    };
                }
            }
            // Written by a process that does not take the key's lock (a cancel, say) since it
            // was read: then there is nothing to start.
            let row = sqlx::query(start)
                .bind(now)
                .bind(worker)
                .bind(key)
                .bind(&id)
                .bind(delivery)
                .fetch_optional(&mut *tx)
                .await?;
            match row {
                Some(row) => Admission::Started(Box::new(job_from_row(&row)?)),
                None => Admission::Skipped,
            }
        });
        Ok(admission)
    }

    /// Gives the oldest jobs waiting for a slot of `key` a new delivery, as many as `slots`
    /// leaves free, and returns them for the caller to push.
    pub async fn wake_waiting(
        &self,
        key: &str,
        slots: u32,
    ) -> Result<Vec<QueuedJob>, RegistryError> {
        let count = RUNNING_UNDER;
        let wake = "UPDATE jobs SET waiting = NULL, delivery = delivery + 1, queued_at = $3 \
                    WHERE id IN (SELECT id FROM jobs WHERE limit_key = $1 AND waiting = 'slot' \
                    AND state = 'queued' ORDER BY queued_at, id LIMIT $2) \
                    RETURNING id, delivery, priority";
        let woken: Vec<(String, i64, i64)> = with_key_locked!(self, key, tx => {
            let busy: i64 = sqlx::query_scalar(count).bind(key).fetch_one(&mut *tx).await?;
            let free = (i64::from(slots) - busy).min(WAKE_AT_MOST);
            if free > 0 {
                sqlx::query_as(wake)
                    .bind(key)
                    .bind(free)
                    .bind(now_ms())
                    .fetch_all(&mut *tx)
                    .await?
            } else {
                Vec::new()
            }
        });
        woken
            .into_iter()
            .map(|(id, delivery, priority)| {
                let id = JobId::from_str(&id).map_err(|_| RegistryError::Corrupt(id))?;
                Ok(QueuedJob {
                    job_id: id,
                    delivery,
                    run_at: None,
                    priority: priority_within(priority),
                })
            })
            .collect()
    }

    /// The keys some job waits for a slot of.
    pub async fn waiting_keys(&self) -> Result<Vec<String>, RegistryError> {
        let sql = "SELECT DISTINCT limit_key FROM jobs WHERE waiting = 'slot' AND state = 'queued'";
        let keys: Vec<Option<String>> =
            on_db!(self, pool => sqlx::query_scalar(sql).fetch_all(pool).await?);
        Ok(keys.into_iter().flatten().collect())
    }
}
