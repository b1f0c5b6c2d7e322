//! Job log lines: appended by handlers, the newest [`LOG_LINES_KEPT`] kept per job.

use super::{Db, Registry, RegistryError};
use crate::model::{JobId, LOG_LINES_KEPT, LogLine};
use sqlx::Row;

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

    /// Appends a log line and drops lines older than the newest [`LOG_LINES_KEPT`].
    pub async fn append_log(&self, id: JobId, line: &LogLine) -> Result<(), RegistryError> {
        let id = id.to_string();
        on_db!(self, pool => {
            sqlx::query(
                "INSERT INTO job_logs (job_id, seq, at, line) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (job_id, seq) DO UPDATE SET at = excluded.at, line = excluded.line",
            )
            .bind(&id)
            .bind(line.seq)
            .bind(line.at)
            .bind(&line.line)
            .execute(pool)
            .await?;
            if line.seq > LOG_LINES_KEPT {
                sqlx::query("DELETE FROM job_logs WHERE job_id = $1 AND seq <= $2")
                    .bind(&id)
                    .bind(line.seq - LOG_LINES_KEPT)
                    .execute(pool)
                    .await?;
            }
        });
        Ok(())
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
