//! Job log lines: appended by handlers (group-committed like the other hot writes, and only by
//! the delivery of the job that is running), the newest [`LOG_LINES_KEPT`] kept per job.

use super::{Db, Registry, RegistryError, Writer, batch};
use crate::model::{JobId, LOG_LINES_KEPT, LogLine};
use sqlx::{AssertSqlSafe, Row};
use std::collections::HashSet;

/// Lines older than the newest [`LOG_LINES_KEPT`] are deleted when a line whose number is a
/// multiple of this is written, so trimming costs one statement per this many lines; a job
/// holds at most this many lines beyond the kept ones.
const TRIM_EVERY: i64 = 100;

/// A request to append a log line, see [`Registry::append_log`].
#[derive(Debug, Clone)]
pub(super) struct LogWrite {
    id: JobId,
    delivery: i64,
    line: LogLine,
}

impl Registry {
    /// The sequence number of a job's newest log line (0 when it has none).
    pub async fn last_log_seq(&self, id: JobId) -> Result<i64, RegistryError> {
        let sql = "SELECT MAX(seq) FROM job_logs WHERE job_id = $1";
        let seq: Option<i64> = on_db!(self, pool => sqlx::query_scalar(sql)
            .bind(id.to_string())
            .fetch_one(pool)
            .await?);
        Ok(seq.unwrap_or(0))
    }

    /// Appends a log line of job `id`, unless the job is not running `delivery` any more (it was
    /// taken back and may run elsewhere: its lines must not overwrite the new attempt's).
    /// Returns whether the line was written.
    pub async fn append_log(
        &self,
        id: JobId,
        delivery: i64,
        line: &LogLine,
    ) -> Result<bool, RegistryError> {
        let request = LogWrite {
            id,
            delivery,
            line: line.clone(),
        };
        self.batches.logs.run(request).await
    }

    /// A job's kept log lines, oldest first.
    pub async fn logs(&self, id: JobId) -> Result<Vec<LogLine>, RegistryError> {
        let sql = "SELECT seq, at, line FROM job_logs WHERE job_id = $1 ORDER BY seq DESC LIMIT $2";
        let mut lines = on_db!(self, pool => {
            let rows = sqlx::query(sql)
                .bind(id.to_string())
                .bind(LOG_LINES_KEPT)
                .fetch_all(pool)
                .await?;
            rows.iter()
                .map(|row| {
                    Ok(LogLine {
                        seq: row.try_get("seq")?,
                        at: row.try_get("at")?,
                        line: row.try_get("line")?,
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()?
        });
        lines.reverse();
        Ok(lines)
    }
}

impl Writer {
    /// [`Registry::append_log`] for many lines in one statement, then the trimming they call for.
    pub(super) async fn append_logs(
        &self,
        requests: Vec<LogWrite>,
    ) -> Result<Vec<bool>, RegistryError> {
        // `WHERE true` tells SQLite the `ON CONFLICT` belongs to the INSERT, not to a join.
        let sql = format!(
            "INSERT INTO job_logs (job_id, seq, at, line) \
             SELECT t.column1, t.column3, t.column4, t.column5 FROM (VALUES {}) AS t \
             JOIN jobs ON jobs.id = t.column1 AND jobs.delivery = t.column2 \
             AND {} WHERE true \
             ON CONFLICT (job_id, seq) DO UPDATE SET at = excluded.at, line = excluded.line \
             RETURNING job_id, seq",
            batch::values(requests.len(), 5, 1),
            self.job_in_state("running")
        );
        let written: HashSet<(String, i64)> = on_db!(self, pool => {
            let mut query = sqlx::query(AssertSqlSafe(sql.as_str()));
            for request in &requests {
                query = query
                    .bind(request.id.to_string())
                    .bind(request.delivery)
                    .bind(request.line.seq)
                    .bind(request.line.at)
                    .bind(&request.line.line);
            }
            let rows = query.fetch_all(pool).await?;
            rows.iter()
                .map(|row| Ok((row.try_get("job_id")?, row.try_get("seq")?)))
                .collect::<Result<_, sqlx::Error>>()?
        });
        let written: Vec<bool> = requests
            .iter()
            .map(|r| written.contains(&(r.id.to_string(), r.line.seq)))
            .collect();
        // Trimming too is for the delivery that runs the job only.
        let trims = requests
            .iter()
            .zip(&written)
            .filter(|(r, written)| **written && r.line.seq > LOG_LINES_KEPT)
            .filter(|(r, _)| r.line.seq % TRIM_EVERY == 0);
        for (request, _) in trims {
            let sql = "DELETE FROM job_logs WHERE job_id = $1 AND seq <= $2 AND EXISTS \
                       (SELECT 1 FROM jobs WHERE jobs.id = $1 AND jobs.delivery = $3 \
                       AND jobs.state = 'running')";
            on_db!(self, pool => {
                sqlx::query(sql)
                    .bind(request.id.to_string())
                    .bind(request.line.seq - LOG_LINES_KEPT)
                    .bind(request.delivery)
                    .execute(pool)
                    .await?;
            });
        }
        Ok(written)
    }
}
