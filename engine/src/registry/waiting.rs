//! What the registry knows of why a queued job has not started (see `crate::waiting`).

use super::{Db, Registry, RegistryError};
use crate::model::DEFAULT_PRIORITY;
use sqlx::AssertSqlSafe;

/// A queued job's row, as far as its waiting goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitFacts {
    /// Its kind is paused by an operator.
    pub paused: bool,
    /// `slot` or `rate` (see `crate::gates`), else `None`.
    pub waiting: Option<String>,
    /// The limit key it waits under.
    pub limit_key: Option<String>,
    /// Its reserved rate slot (unix ms).
    pub rate_slot: Option<i64>,
    /// When it entered the queue (unix ms).
    pub queued_at: i64,
}

impl Registry {
    /// Why queued job `id` may be held back; `None` when it is not queued.
    pub async fn wait_facts(&self, id: &str) -> Result<Option<WaitFacts>, RegistryError> {
        let sql = "SELECT (SELECT COUNT(*) FROM paused_kinds p WHERE p.kind = jobs.kind), \
                   waiting, limit_key, rate_slot, queued_at FROM jobs \
                   WHERE id = $1 AND state = 'queued'";
        type Row = (
            i64,
            Option<String>,
            Option<String>,
            Option<i64>,
            Option<i64>,
        );
        let row: Option<Row> =
            on_db!(self, pool => sqlx::query_as(sql).bind(id).fetch_optional(pool).await?);
        Ok(row.map(
            |(paused, waiting, limit_key, rate_slot, queued_at)| WaitFacts {
                paused: paused > 0,
                waiting,
                limit_key,
                rate_slot,
                queued_at: queued_at.unwrap_or_default(),
            },
        ))
    }

    /// How many of `key`'s jobs run now.
    pub async fn running_under(&self, key: &str) -> Result<u64, RegistryError> {
        let sql = super::gates::RUNNING_UNDER;
        let count: i64 =
            on_db!(self, pool => sqlx::query_scalar(sql).bind(key).fetch_one(pool).await?);
        Ok(count.max(0) as u64)
    }

    /// How many queued jobs, due by `now` and not held back (by a pause or a busy slot), are
    /// ahead of the queued job `(priority, queued_at, id)`: those of a higher priority, and
    /// those of its own that entered the queue before it. (The queue also lifts long-waiting
    /// jobs, see `queue::Aging`; this count leaves that out.) Counts no further than `up_to`.
    pub async fn jobs_ahead(
        &self,
        priority: u8,
        queued_at: i64,
        id: &str,
        now: i64,
        up_to: u64,
    ) -> Result<u64, RegistryError> {
        // Jobs at the default priority are in `jobs_queued` only, the others also in
        // `jobs_queued_by_priority` (see the 0013 migration); each count reads one range.
        let sqlite = matches!(self.db, Db::Sqlite(_));
        let count = |index: &str, range: String| {
            let hint = if sqlite {
                format!(" INDEXED BY {index}")
            } else {
                String::new()
            };
            format!(
                "(SELECT COUNT(*) FROM (SELECT 1 FROM jobs{hint} WHERE state = 'queued' \
                 AND {range} AND (run_at IS NULL OR run_at <= $3) \
                 AND (waiting IS NULL OR waiting <> 'slot') \
                 AND kind NOT IN (SELECT kind FROM paused_kinds) LIMIT $4) AS t)"
            )
        };
        let (by_priority, by_time) = ("jobs_queued_by_priority", "jobs_queued");
        let default = DEFAULT_PRIORITY;
        let earlier = "queued_at <= $1 AND (queued_at < $1 OR id < $2)";
        let mut parts = vec![count(
            by_priority,
            format!("priority > {priority} AND priority <> {default}"),
        )];
        if priority < default {
            parts.push(count(by_time, format!("priority = {default}")));
        }
        parts.push(if priority == default {
            count(by_time, format!("priority = {default} AND {earlier}"))
        } else {
            count(
                by_priority,
                format!("priority = {priority} AND priority <> {default} AND {earlier}"),
            )
        });
        let sql = format!("SELECT {}", parts.join(" + "));
        let count: i64 = on_db!(self, pool => {
            sqlx::query_scalar(AssertSqlSafe(sql.as_str()))
                .bind(queued_at)
                .bind(id)
                .bind(now)
                .bind(up_to as i64)
                .fetch_one(pool)
                .await?
        });
        Ok((count.max(0) as u64).min(up_to))
    }
}
