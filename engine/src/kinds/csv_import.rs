//! `csv_import`: reads an uploaded CSV row by row (never the whole file in memory), infers each
//! column's type and reports per column: values, empty values, min/max/mean for numbers, distinct
//! values up to a cap and the most common values; lists invalid rows with their line numbers.
//! Progress follows bytes read. The result is a summary; the full report is a JSON file.

pub mod analysis;

use analysis::{Analysis, analyze};

use super::{FormFields, InvalidInput, JobError, JobKind, SubmitContext, upload};
use crate::files::UploadId;
use crate::worker::JobContext;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Largest CSV accepted: 100 MB.
pub const MAX_BYTES: u64 = 100_000_000;
/// The file the full report is written to, in the job's folder.
pub const REPORT_FILE: &str = "report.json";

/// Parameters of a `csv_import` job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvImportArgs {
    pub upload: UploadId,
}

/// The `csv_import` kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct CsvImport;

impl JobKind for CsvImport {
    const NAME: &'static str = "csv_import";
    const MAX_UPLOAD: Option<u64> = Some(MAX_BYTES);
    type Args = CsvImportArgs;

    fn from_form(fields: &FormFields) -> Result<CsvImportArgs, InvalidInput> {
        Ok(CsvImportArgs {
            upload: upload::from_form(fields)?,
        })
    }

    fn validate(args: &CsvImportArgs, cx: &SubmitContext<'_>) -> Result<(), InvalidInput> {
        upload::check(args.upload, MAX_BYTES, cx).map(drop)
    }

    async fn run(&self, args: CsvImportArgs, ctx: &JobContext) -> Result<Value, JobError> {
        let file = upload::open(args.upload, ctx)?;
        let total = file.meta.size.max(1);
        let read = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        ctx.progress(0.0, Some(format!("reading {}", file.meta.filename)))
            .await;

        // The parse is synchronous I/O: it runs on a blocking thread while this task reports
        // its progress and forwards a cancel.
        let _slot = ctx.cpu_slot().await?;
        let worker = tokio::task::spawn_blocking({
            let (read, stop, path) = (read.clone(), stop.clone(), file.path.clone());
            move || -> Result<Analysis, String> {
                let input = std::fs::File::open(&path).map_err(|e| e.to_string())?;
                analyze(std::io::BufReader::new(input), |bytes| {
                    read.store(bytes, Ordering::Relaxed);
                    !stop.load(Ordering::Relaxed)
                })
            }
        });
        tokio::pin!(worker);
        let analysis = loop {
            tokio::select! {
                joined = &mut worker => break joined,
                () = tokio::time::sleep(Duration::from_millis(200)) => {
                    if ctx.is_cancelled() {
                        stop.store(true, Ordering::Relaxed);
                    }
                    let bytes = read.load(Ordering::Relaxed);
                    ctx.progress(bytes as f64 / total as f64, Some(format!("{bytes} of {total} bytes"))).await;
                }
            }
        };
        ctx.check_cancelled()?;
        let analysis = analysis
            .map_err(|e| JobError::Retryable(format!("the parser stopped: {e}")))?
            .map_err(JobError::Permanent)?;

        let dir = ctx
            .files()
            .job_dir(ctx.job_id())
            .map_err(|e| JobError::Retryable(e.to_string()))?;
        let report =
            serde_json::to_vec_pretty(&analysis).map_err(|e| JobError::Permanent(e.to_string()))?;
        tokio::fs::write(dir.join(REPORT_FILE), report)
            .await
            .map_err(|e| JobError::Retryable(e.to_string()))?;
        ctx.log(format!(
            "{} rows, {} columns, {} invalid rows",
            analysis.rows,
            analysis.columns.len(),
            analysis.invalid_count
        ))
        .await;
        Ok(json!({
            "rows": analysis.rows,
            "invalid_count": analysis.invalid_count,
            "columns": analysis.columns,
            "invalid_rows": analysis.invalid_rows,
            "report": REPORT_FILE,
        }))
    }
}
