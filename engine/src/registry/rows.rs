//! Reading registry rows, from either database.

use super::RegistryError;
use crate::model::{Job, JobId, Owner, priority_within};
use sqlx::{ColumnIndex, Decode, Row, Type};
use std::str::FromStr;

/// Reads a job from a row of either database.
pub(super) fn job_from_row<R>(row: &R) -> Result<Job, RegistryError>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> f64: Decode<'r, R::Database> + Type<R::Database>,
{
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
        priority: priority_within(row.try_get("priority")?),
    })
}
