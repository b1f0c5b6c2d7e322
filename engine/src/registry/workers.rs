//! The worker processes' heartbeats, and finding the running jobs of workers that died.

use super::{Db, Registry, RegistryError, job_from_row};
use crate::model::{Job, now_ms};

impl Registry {
    /// Records that worker process `worker` is alive now.
    pub async fn beat(&self, worker: &str) -> Result<(), RegistryError> {
        let sql = "INSERT INTO workers (name, last_seen) VALUES ($1, $2) \
                   ON CONFLICT (name) DO UPDATE SET last_seen = excluded.last_seen";
        on_db!(self, pool => {
            sqlx::query(sql).bind(worker).bind(now_ms()).execute(pool).await?;
        });
        Ok(())
    }

    /// Forgets a worker process that stopped cleanly, and any not seen since `stale_before`.
    pub async fn forget_workers(
        &self,
        worker: &str,
        stale_before: i64,
    ) -> Result<(), RegistryError> {
        let sql = "DELETE FROM workers WHERE name = $1 OR last_seen < $2";
        on_db!(self, pool => {
            sqlx::query(sql).bind(worker).bind(stale_before).execute(pool).await?;
        });
        Ok(())
    }

    /// Running jobs whose worker process is not `alive` and has not been seen since
    /// `stale_before` (unix ms), or was never recorded: their worker died.
    pub async fn orphaned(
        &self,
        alive: &str,
        stale_before: i64,
    ) -> Result<Vec<Job>, RegistryError> {
        let sql = concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE state = 'running' AND (worker IS NULL OR worker <> $1) \
             AND NOT EXISTS (SELECT 1 FROM workers WHERE workers.name = jobs.worker \
             AND workers.last_seen >= $2)"
        );
        on_db!(self, pool => {
            let rows = sqlx::query(sql).bind(alive).bind(stale_before).fetch_all(pool).await?;
            rows.iter().map(job_from_row).collect()
        })
    }
}
