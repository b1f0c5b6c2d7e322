//! The worker processes' heartbeats, and finding the running jobs of workers that died.
//!
//! Heartbeats are stamped and compared by the database's clock, never the hosts': worker
//! processes on several machines share one Postgres, and a host whose clock is off must neither
//! look dead nor keep a dead worker looking alive. (On SQLite the database is on the one host.)

use super::{Db, Registry, RegistryError, job_from_row};
use crate::model::Job;
use sqlx::AssertSqlSafe;
use std::time::Duration;

impl Registry {
    /// The database's current time in unix milliseconds, as an SQL expression.
    pub(super) fn now_sql(&self) -> &'static str {
        match &self.db {
            Db::Sqlite(_) => "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
            Db::Postgres(_) => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
        }
    }

    /// Records that worker process `worker` is alive now (by the database's clock).
    pub async fn beat(&self, worker: &str) -> Result<(), RegistryError> {
        let sql = format!(
            "INSERT INTO workers (name, last_seen) VALUES ($1, {now}) \
             ON CONFLICT (name) DO UPDATE SET last_seen = excluded.last_seen",
            now = self.now_sql()
        );
        on_db!(self, pool => {
            sqlx::query(AssertSqlSafe(sql)).bind(worker).execute(pool).await?;
        });
        Ok(())
    }

    /// Forgets worker process `worker` (it stopped cleanly) and any silent for `silent_for`.
    pub async fn forget_workers(
        &self,
        worker: &str,
        silent_for: Option<Duration>,
    ) -> Result<(), RegistryError> {
        let sql = format!(
            "DELETE FROM workers WHERE name = $1 OR ($2 IS NOT NULL AND last_seen < {now} - $2)",
            now = self.now_sql()
        );
        let silent_for = silent_for.map(|d| d.as_millis() as i64);
        on_db!(self, pool => {
            sqlx::query(AssertSqlSafe(sql)).bind(worker).bind(silent_for).execute(pool).await?;
        });
        Ok(())
    }

    /// The jobs the registry says worker process `worker` runs.
    pub async fn running_on(&self, worker: &str) -> Result<Vec<Job>, RegistryError> {
        let sql = concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE state = 'running' AND worker = $1"
        );
        on_db!(self, pool => {
            let rows = sqlx::query(sql).bind(worker).fetch_all(pool).await?;
            rows.iter().map(job_from_row).collect()
        })
    }

    /// Running jobs whose worker process is not `alive` and has been silent for `silent_for` by
    /// the database's clock (or was never recorded): their worker died. With `None`, every
    /// worker but `alive` counts as dead (one process owns the registry).
    pub async fn orphaned(
        &self,
        alive: &str,
        silent_for: Option<Duration>,
    ) -> Result<Vec<Job>, RegistryError> {
        let sql = format!(
            "SELECT {columns} FROM jobs WHERE state = 'running' \
             AND (worker IS NULL OR worker <> $1) \
             AND ($2 IS NULL OR NOT EXISTS (SELECT 1 FROM workers \
                  WHERE workers.name = jobs.worker AND workers.last_seen >= {now} - $2))",
            columns = job_columns!(),
            now = self.now_sql()
        );
        let silent_for = silent_for.map(|d| d.as_millis() as i64);
        on_db!(self, pool => {
            let rows = sqlx::query(AssertSqlSafe(sql))
                .bind(alive)
                .bind(silent_for)
                .fetch_all(pool)
                .await?;
            rows.iter().map(job_from_row).collect()
        })
    }
}
