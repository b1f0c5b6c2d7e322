//! `sleep`: waits a given time in equal steps, reporting progress after each. It is the kind a
//! person uses to see Errand work, and with `ms: 0` the no-op job the benchmarks measure.

use super::{
    FormFields, InvalidInput, JobError, JobKind, RetryPolicy, SubmitContext, check_range,
    form_integer,
};
use crate::worker::JobContext;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::time::Duration;

/// Longest sleep a job may ask for: ten minutes.
pub const MAX_MS: u64 = 600_000;
/// Most steps a job may ask for.
pub const MAX_STEPS: u64 = 1_000;

/// Parameters of a `sleep` job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SleepArgs {
    /// Total time to sleep, in milliseconds.
    pub ms: u64,
    /// How many equal steps to sleep in; progress is reported after each.
    #[serde(default = "one")]
    pub steps: u64,
}

fn one() -> u64 {
    1
}

/// The `sleep` kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sleep;

impl JobKind for Sleep {
    const NAME: &'static str = "sleep";
    // Up to ten minutes of sleep must fit in one attempt.
    const POLICY: RetryPolicy = RetryPolicy {
        timeout: Duration::from_secs(11 * 60),
        ..RetryPolicy::DEFAULT
    };
    type Args = SleepArgs;

    fn from_form(fields: &FormFields) -> Result<SleepArgs, InvalidInput> {
        Ok(SleepArgs {
            ms: form_integer(fields, "ms", 0..=MAX_MS)?,
            steps: form_integer(fields, "steps", 1..=MAX_STEPS)?,
        })
    }

    fn validate(args: &SleepArgs, _: &SubmitContext<'_>) -> Result<(), InvalidInput> {
        check_range("ms", args.ms, 0..=MAX_MS)?;
        check_range("steps", args.steps, 1..=MAX_STEPS)
    }

    async fn run(&self, args: SleepArgs, ctx: &JobContext) -> Result<Value, JobError> {
        let result = json!({ "slept_ms": args.ms, "steps": args.steps });
        if args.ms == 0 {
            // The no-op job: no timers, no log lines, one progress report.
            ctx.progress(1.0, None).await;
            return Ok(result);
        }
        let step = Duration::from_millis(args.ms) / args.steps as u32;
        for n in 1..=args.steps {
            // Sleeping races the cancellation signal, so a cancel lands within milliseconds.
            tokio::select! {
                () = tokio::time::sleep(step) => {}
                () = ctx.cancelled() => return Err(JobError::Cancelled),
            }
            let stage = format!("step {n} of {}", args.steps);
            ctx.log(stage.clone()).await;
            ctx.progress(n as f64 / args.steps as f64, Some(stage))
                .await;
        }
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(ms: &str, steps: &str) -> FormFields {
        [
            ("ms".to_owned(), ms.to_owned()),
            ("steps".to_owned(), steps.to_owned()),
        ]
        .into()
    }

    #[test]
    fn form_values_are_parsed_and_bounded() {
        assert_eq!(
            Sleep::from_form(&form("1500", "3")),
            Ok(SleepArgs { ms: 1500, steps: 3 })
        );
        assert_eq!(
            Sleep::from_form(&form(" 0 ", "1")),
            Ok(SleepArgs { ms: 0, steps: 1 })
        );

        let err = Sleep::from_form(&form("600001", "3")).expect_err("too long");
        assert_eq!(err.field.as_deref(), Some("ms"));
        assert!(err.message.contains("600000"), "{err}");

        let err = Sleep::from_form(&form("10", "0")).expect_err("no steps");
        assert_eq!(err.field.as_deref(), Some("steps"));

        let err = Sleep::from_form(&form("ten", "1")).expect_err("not a number");
        assert_eq!(err, InvalidInput::field("ms", "must be a whole number"));

        let err = Sleep::from_form(&form("", "1")).expect_err("missing");
        assert_eq!(err, InvalidInput::field("ms", "is required"));

        let err = Sleep::from_form(&form("-5", "1")).expect_err("negative");
        assert_eq!(err.field.as_deref(), Some("ms"));
    }

    #[test]
    fn json_parameters_are_checked() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let files = crate::files::Files::open(dir.path())?;
        let owner = crate::model::Owner("alice".into());
        let cx = SubmitContext {
            owner: &owner,
            files: &files,
        };
        let kinds = crate::kinds::Kinds::builtin(&[]);
        let ok = kinds.params_from_json("sleep", json!({"ms": 100, "steps": 10}), &cx);
        assert_eq!(ok, Ok(json!({"ms": 100, "steps": 10})));
        assert_eq!(
            kinds.params_from_json("sleep", json!({"ms": 5}), &cx),
            Ok(json!({"ms": 5, "steps": 1}))
        );

        let err = kinds
            .params_from_json("sleep", json!({"ms": "fast"}), &cx)
            .expect_err("string ms");
        assert_eq!(err.field.as_deref(), Some("ms"));

        let err = kinds
            .params_from_json("sleep", json!({"ms": 1, "steps": 1001}), &cx)
            .expect_err("too many steps");
        assert_eq!(err.field.as_deref(), Some("steps"));

        let err = kinds
            .params_from_json("sleep", json!({}), &cx)
            .expect_err("missing ms");
        assert!(err.message.contains("ms"), "{err}");

        let err = kinds
            .params_from_json("sleep", json!([1, 2]), &cx)
            .expect_err("not an object");
        assert_eq!(err.field, None);

        let err = kinds
            .params_from_json("resize", json!({}), &cx)
            .expect_err("unknown kind");
        assert_eq!(err.field.as_deref(), Some("kind"));
        Ok(())
    }
}
