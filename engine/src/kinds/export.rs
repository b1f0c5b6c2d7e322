//! `export`: writes the session's own job history (filtered by state, kind and creation date) to
//! a CSV file to download. Progress follows rows written.

use super::{FormFields, InvalidInput, JobError, JobKind, SubmitContext};
use crate::model::JobState;
use crate::registry::JobFilter;
use crate::worker::JobContext;
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The file an export job writes in its folder.
pub const EXPORT_FILE: &str = "export.csv";
/// Rows read from the registry per query.
const PAGE: u32 = 500;

/// Parameters of an `export` job; every filter is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportArgs {
    #[serde(default)]
    pub state: Option<JobState>,
    #[serde(default)]
    pub kind: Option<String>,
    /// First day included (UTC), `YYYY-MM-DD`.
    #[serde(default)]
    pub from: Option<NaiveDate>,
    /// Last day included (UTC), `YYYY-MM-DD`.
    #[serde(default)]
    pub to: Option<NaiveDate>,
}

/// The `export` kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct Export;

fn optional(fields: &FormFields, name: &str) -> Option<String> {
    fields
        .get(name)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

fn date(fields: &FormFields, name: &str) -> Result<Option<NaiveDate>, InvalidInput> {
    optional(fields, name)
        .map(|text| {
            NaiveDate::parse_from_str(&text, "%Y-%m-%d")
                .map_err(|_| InvalidInput::field(name, "must be a date like 2026-11-21"))
        })
        .transpose()
}

impl JobKind for Export {
    const NAME: &'static str = "export";
    type Args = ExportArgs;

    fn from_form(fields: &FormFields) -> Result<ExportArgs, InvalidInput> {
        let state = optional(fields, "state")
            .map(|s| {
                s.parse::<JobState>()
                    .map_err(|_| InvalidInput::field("state", "is not a job state"))
            })
            .transpose()?;
        Ok(ExportArgs {
            state,
            kind: optional(fields, "kind"),
            from: date(fields, "from")?,
            to: date(fields, "to")?,
        })
    }

    fn validate(args: &ExportArgs, _: &SubmitContext<'_>) -> Result<(), InvalidInput> {
        if let (Some(from), Some(to)) = (args.from, args.to)
            && from > to
        {
            return Err(InvalidInput::field(
                "to",
                "must not be before the start date",
            ));
        }
        if args.kind.as_ref().is_some_and(|k| k.len() > 64) {
            return Err(InvalidInput::field("kind", "is too long"));
        }
        Ok(())
    }

    async fn run(&self, args: ExportArgs, ctx: &JobContext) -> Result<Value, JobError> {
        let registry = ctx.registry();
        let filter = JobFilter {
            owner: ctx.owner(),
            state: args.state,
            kind: args.kind.clone(),
            created_from: args.from.map(start_of_day),
            created_before: args.to.and_then(|d| d.succ_opt()).map(start_of_day),
        };
        let internal = |e: &dyn std::fmt::Display| JobError::Retryable(format!("registry: {e}"));
        let total = registry.count(&filter).await.map_err(|e| internal(&e))?;
        let dir = ctx
            .files()
            .job_dir(ctx.job_id())
            .map_err(|e| internal(&e))?;
        let mut out = csv::Writer::from_path(dir.join(EXPORT_FILE)).map_err(|e| internal(&e))?;
        out.write_record([
            "id",
            "kind",
            "state",
            "progress",
            "attempts",
            "created_at",
            "started_at",
            "finished_at",
            "params",
            "error",
        ])
        .map_err(|e| internal(&e))?;

        let mut written = 0_u64;
        let mut before = None;
        loop {
            ctx.check_cancelled()?;
            let page = registry
                .list(&filter, before, PAGE)
                .await
                .map_err(|e| internal(&e))?;
            for job in &page {
                out.write_record([
                    job.id.to_string(),
                    job.kind.clone(),
                    job.state.as_str().to_owned(),
                    job.progress.map(|p| p.to_string()).unwrap_or_default(),
                    job.attempts.to_string(),
                    millis_to_rfc3339(job.created_at),
                    job.started_at.map(millis_to_rfc3339).unwrap_or_default(),
                    job.finished_at.map(millis_to_rfc3339).unwrap_or_default(),
                    job.params.to_string(),
                    job.error.clone().unwrap_or_default(),
                ])
                .map_err(|e| internal(&e))?;
            }
            written += page.len() as u64;
            let fraction = if total == 0 {
                1.0
            } else {
                written as f64 / total as f64
            };
            ctx.progress(fraction, Some(format!("{written} of {total} rows")))
                .await;
            match page.last() {
                Some(last) if page.len() == PAGE as usize => before = Some(last.id),
                _ => break,
            }
        }
        out.flush().map_err(|e| internal(&e))?;
        ctx.log(format!("exported {written} jobs")).await;
        Ok(json!({ "rows": written, "file": EXPORT_FILE }))
    }
}

fn start_of_day(day: NaiveDate) -> i64 {
    day.and_hms_opt(0, 0, 0)
        .map(|t| t.and_utc().timestamp_millis())
        .unwrap_or_default()
}

fn millis_to_rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> FormFields {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn empty_filters_mean_everything() {
        let args = Export::from_form(&form(&[("state", ""), ("kind", " "), ("from", "")]));
        assert_eq!(args, Ok(ExportArgs::default()));
    }

    #[test]
    fn filters_are_parsed_and_checked() {
        let args = Export::from_form(&form(&[
            ("state", "succeeded"),
            ("kind", "sleep"),
            ("from", "2026-11-01"),
            ("to", "2026-11-21"),
        ]));
        let args = args.expect("valid");
        assert_eq!(args.state, Some(JobState::Succeeded));
        assert_eq!(args.from, NaiveDate::from_ymd_opt(2026, 11, 1));

        let bad_state = Export::from_form(&form(&[("state", "done")])).expect_err("state");
        assert_eq!(bad_state.field.as_deref(), Some("state"));
        let bad_date = Export::from_form(&form(&[("from", "21/11/2026")])).expect_err("date");
        assert_eq!(bad_date.field.as_deref(), Some("from"));
    }

    #[test]
    fn days_start_at_utc_midnight() {
        let day = NaiveDate::from_ymd_opt(1970, 1, 2).expect("date");
        assert_eq!(start_of_day(day), 86_400_000);
    }
}
