//! The last run of each recurring job's schedule (see `crate::schedules`).

use super::{Db, Registry, RegistryError};
use crate::model::JobId;
use std::str::FromStr;

impl Registry {
    /// Every schedule that ran: `(name, unix ms of its last tick, that tick's job)`.
    pub async fn schedule_runs(&self) -> Result<Vec<(String, i64, JobId)>, RegistryError> {
        let sql = "SELECT name, last_tick, last_job FROM schedule_runs ORDER BY name";
        let rows: Vec<(String, i64, String)> =
            on_db!(self, pool => sqlx::query_as(sql).fetch_all(pool).await?);
        rows.into_iter()
            .map(|(name, tick, job)| {
                let job = JobId::from_str(&job).map_err(|_| RegistryError::Corrupt(job))?;
                Ok((name, tick, job))
            })
            .collect()
    }

    /// Records that schedule `name`'s tick at `tick` made job `job`; an earlier tick recorded
    /// late (by a slower process) does not replace a later one.
    pub async fn record_schedule_run(
        &self,
        name: &str,
        tick: i64,
        job: JobId,
    ) -> Result<(), RegistryError> {
        let sql = "INSERT INTO schedule_runs (name, last_tick, last_job) VALUES ($1, $2, $3) \
                   ON CONFLICT (name) DO UPDATE \
                   SET last_tick = excluded.last_tick, last_job = excluded.last_job \
                   WHERE schedule_runs.last_tick < excluded.last_tick";
        on_db!(self, pool => {
            sqlx::query(sql)
                .bind(name)
                .bind(tick)
                .bind(job.to_string())
                .execute(pool)
                .await?;
        });
        Ok(())
    }
}
