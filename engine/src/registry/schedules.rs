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

    /// Pauses schedule `name` from `at` (unix ms); false if it was paused already.
    pub async fn pause_schedule(&self, name: &str, at: i64) -> Result<bool, RegistryError> {
        let sql = "INSERT INTO paused_schedules (name, paused_at) VALUES ($1, $2) \
                   ON CONFLICT (name) DO NOTHING";
        let changed = on_db!(self, pool => {
            sqlx::query(sql).bind(name).bind(at).execute(pool).await?.rows_affected()
        });
        Ok(changed > 0)
    }

    /// Resumes schedule `name`; false if it was not paused.
    pub async fn resume_schedule(&self, name: &str) -> Result<bool, RegistryError> {
        let sql = "DELETE FROM paused_schedules WHERE name = $1";
        let changed = on_db!(self, pool => {
            sqlx::query(sql).bind(name).execute(pool).await?.rows_affected()
        });
        Ok(changed > 0)
    }

    /// The paused schedules, with when (unix ms).
    pub async fn paused_schedules(&self) -> Result<Vec<(String, i64)>, RegistryError> {
        let sql = "SELECT name, paused_at FROM paused_schedules ORDER BY name";
        Ok(on_db!(self, pool => sqlx::query_as(sql).fetch_all(pool).await?))
    }
}
