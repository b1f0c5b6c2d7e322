//! Job kinds: what Errand can run. Each kind has a fixed name (its identity in the registry and
//! the queue, never derived from a Rust type path), typed arguments with validation, and a
//! handler. Kinds are registered once in a [`Kinds`] table that the engine looks up by name.

pub mod csv_import;
pub mod export;
pub mod sleep;
pub mod thumbnail;
mod upload;
pub mod webhook;

pub use csv_import::{CsvImport, CsvImportArgs, REPORT_FILE};
pub use export::{EXPORT_FILE, Export, ExportArgs};
pub use sleep::{MAX_MS as SLEEP_MAX_MS, MAX_STEPS as SLEEP_MAX_STEPS, Sleep, SleepArgs};
pub use thumbnail::{Thumbnail, ThumbnailArgs};
pub use webhook::{Webhook, WebhookArgs};

use crate::files::Files;
use crate::model::Owner;
use crate::worker::JobContext;
use futures::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Input that does not make a valid job: which field (if one) and why. Safe to show a user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", field.as_ref().map(|f| format!("{f}: ")).unwrap_or_default())]
pub struct InvalidInput {
    pub field: Option<String>,
    pub message: String,
}

impl InvalidInput {
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        Self {
            field: Some(field.to_owned()),
            message: message.into(),
        }
    }

    pub fn general(message: impl Into<String>) -> Self {
        Self {
            field: None,
            message: message.into(),
        }
    }
}

/// Why a handler did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The work cannot succeed however often it is tried (bad input, missing data).
    #[error("{0}")]
    Permanent(String),
    /// The work might succeed if tried again (network, a busy service).
    #[error("{0}")]
    Retryable(String),
    /// The job was cancelled while it ran; see [`JobContext::check_cancelled`].
    #[error("cancelled")]
    Cancelled,
}

/// What validation may look at besides the arguments: who submits, and their uploads.
#[derive(Debug, Clone, Copy)]
pub struct SubmitContext<'a> {
    pub owner: &'a Owner,
    pub files: &'a Files,
}

/// How a kind's failing jobs are retried: exponential backoff with jitter between attempts, and a
/// time limit on each attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Runs in all, the first included.
    pub max_attempts: u32,
    /// Delay before the first retry; doubled for each further one.
    pub base_delay: Duration,
    /// Longest delay between attempts.
    pub max_delay: Duration,
    /// Longest one attempt may run before it fails with "timed out".
    pub timeout: Duration,
}

impl RetryPolicy {
    /// 3 attempts, 1 s base delay, 5 min cap, 15 min per attempt.
    pub const DEFAULT: RetryPolicy = RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::from_secs(1),
        max_delay: Duration::from_secs(300),
        timeout: Duration::from_secs(900),
    };

    /// The delay after failed attempt number `attempt` (1-based): base × 2^(attempt−1), capped,
    /// then scaled by a random factor in 0.5..1.0 so retries of many jobs spread out.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exponential = self
            .base_delay
            .saturating_mul(2_u32.saturating_pow(attempt.saturating_sub(1)));
        exponential
            .min(self.max_delay)
            .mul_f64(rand::random_range(0.5..=1.0))
    }
}

/// Form fields as submitted by a browser: name → text.
pub type FormFields = BTreeMap<String, String>;

/// A kind of job, written with typed arguments. Implement this to add a kind, then register it
/// in [`Kinds::builtin`].
pub trait JobKind: Send + Sync + 'static {
    /// The kind's permanent name, used in the registry, the API and forms.
    const NAME: &'static str;
    /// Largest file this kind takes as its upload, if it takes one.
    const MAX_UPLOAD: Option<u64> = None;
    /// How often and how patiently a failing job of this kind is tried.
    const POLICY: RetryPolicy = RetryPolicy::DEFAULT;
    /// What the kind's key is, for limits applied per key (see [`crate::gates`]); `None` when
    /// the kind has no key.
    const KEY: Option<&'static str> = None;
    /// The job's parameters, as stored and as sent in the JSON API.
    type Args: Serialize + DeserializeOwned + Send + Sync + 'static;

    /// The key of a job with these arguments (such as a webhook's target host), when
    /// [`JobKind::KEY`] names one.
    fn key(_args: &Self::Args) -> Option<String> {
        None
    }

    /// Reads the arguments from a submitted HTML form.
    fn from_form(fields: &FormFields) -> Result<Self::Args, InvalidInput>;

    /// Checks arguments beyond what their types say (ranges, lengths, that an upload exists).
    fn validate(args: &Self::Args, cx: &SubmitContext<'_>) -> Result<(), InvalidInput>;

    /// Does the work, reporting progress and log lines through `ctx`.
    fn run(
        &self,
        args: Self::Args,
        ctx: &JobContext,
    ) -> impl Future<Output = Result<Value, JobError>> + Send;
}

/// The object-safe face of a [`JobKind`], working on JSON parameters.
trait ErasedKind: Send + Sync {
    fn max_upload(&self) -> Option<u64>;
    fn key_name(&self) -> Option<&'static str>;
    fn key(&self, params: &Value) -> Option<String>;
    fn policy(&self) -> RetryPolicy;
    fn params_from_json(
        &self,
        params: Value,
        cx: &SubmitContext<'_>,
    ) -> Result<Value, InvalidInput>;
    fn params_from_form(
        &self,
        fields: &FormFields,
        cx: &SubmitContext<'_>,
    ) -> Result<Value, InvalidInput>;
    fn run<'a>(
        &'a self,
        params: Value,
        ctx: &'a JobContext,
    ) -> BoxFuture<'a, Result<Value, JobError>>;
}

impl<K: JobKind> ErasedKind for K {
    fn max_upload(&self) -> Option<u64> {
        K::MAX_UPLOAD
    }

    fn key_name(&self) -> Option<&'static str> {
        K::KEY
    }

    fn key(&self, params: &Value) -> Option<String> {
        K::KEY?;
        let args: K::Args = serde_json::from_value(params.clone()).ok()?;
        K::key(&args)
    }

    fn policy(&self) -> RetryPolicy {
        K::POLICY
    }

    fn params_from_json(
        &self,
        params: Value,
        cx: &SubmitContext<'_>,
    ) -> Result<Value, InvalidInput> {
        if !params.is_object() {
            return Err(InvalidInput::general("params must be a JSON object"));
        }
        let args: K::Args = serde_path_to_error::deserialize(params).map_err(|err| {
            let path = err.path().to_string();
            let message = err.into_inner().to_string();
            if path == "." {
                InvalidInput::general(message)
            } else {
                InvalidInput::field(&path, message)
            }
        })?;
        K::validate(&args, cx)?;
        to_json(&args)
    }

    fn params_from_form(
        &self,
        fields: &FormFields,
        cx: &SubmitContext<'_>,
    ) -> Result<Value, InvalidInput> {
        let args = K::from_form(fields)?;
        K::validate(&args, cx)?;
        to_json(&args)
    }

    fn run<'a>(
        &'a self,
        params: Value,
        ctx: &'a JobContext,
    ) -> BoxFuture<'a, Result<Value, JobError>> {
        Box::pin(async move {
            let args: K::Args = serde_json::from_value(params)
                .map_err(|e| JobError::Permanent(format!("stored parameters unreadable: {e}")))?;
            JobKind::run(self, args, ctx).await
        })
    }
}

fn to_json<T: Serialize>(args: &T) -> Result<Value, InvalidInput> {
    serde_json::to_value(args).map_err(|e| InvalidInput::general(e.to_string()))
}

/// The table of kinds the engine can run, by name.
#[derive(Clone)]
pub struct Kinds {
    by_name: Arc<HashMap<&'static str, Arc<dyn ErasedKind>>>,
}

impl std::fmt::Debug for Kinds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

impl Kinds {
    /// Every kind Errand ships. `webhook_allow` names internal addresses webhooks may call.
    pub fn builtin(webhook_allow: &[std::net::IpAddr]) -> Self {
        Self::default()
            .with(Sleep)
            .with(Thumbnail)
            .with(CsvImport)
            .with(Webhook {
                allow: Arc::new(webhook_allow.to_vec()),
            })
            .with(Export)
    }

    /// Adds a kind to the table.
    pub fn with<K: JobKind>(mut self, kind: K) -> Self {
        Arc::make_mut(&mut self.by_name).insert(K::NAME, Arc::new(kind));
        self
    }

    /// The registered kind names, sorted.
    pub fn names(&self) -> Vec<&'static str> {
        let mut names: Vec<_> = self.by_name.keys().copied().collect();
        names.sort_unstable();
        names
    }

    fn get(&self, kind: &str) -> Result<&Arc<dyn ErasedKind>, InvalidInput> {
        self.by_name
            .get(kind)
            .ok_or_else(|| InvalidInput::field("kind", format!("unknown job kind {kind:?}")))
    }

    /// The retry policy of `kind` (the default one for unknown kinds).
    pub fn policy(&self, kind: &str) -> RetryPolicy {
        self.by_name
            .get(kind)
            .map_or(RetryPolicy::DEFAULT, |k| k.policy())
    }

    /// The largest upload `kind` takes, `None` if it takes none (or is unknown).
    pub fn max_upload(&self, kind: &str) -> Option<u64> {
        self.by_name.get(kind).and_then(|k| k.max_upload())
    }

    /// What `kind`'s key is called, if it has one (see [`JobKind::KEY`]).
    pub fn key_name(&self, kind: &str) -> Option<&'static str> {
        self.by_name.get(kind).and_then(|k| k.key_name())
    }

    /// The key of a job of `kind` with these stored parameters, if the kind has keys.
    pub fn key(&self, kind: &str, params: &Value) -> Option<String> {
        self.by_name.get(kind).and_then(|k| k.key(params))
    }

    /// Validates JSON parameters for `kind`, returning them normalised.
    pub fn params_from_json(
        &self,
        kind: &str,
        params: Value,
        cx: &SubmitContext<'_>,
    ) -> Result<Value, InvalidInput> {
        self.get(kind)?.params_from_json(params, cx)
    }

    /// Validates form fields for `kind`, returning the parameters as JSON.
    pub fn params_from_form(
        &self,
        kind: &str,
        fields: &FormFields,
        cx: &SubmitContext<'_>,
    ) -> Result<Value, InvalidInput> {
        self.get(kind)?.params_from_form(fields, cx)
    }

    /// Runs a job of `kind` with its stored parameters.
    pub(crate) async fn run(
        &self,
        kind: &str,
        params: Value,
        ctx: &JobContext,
    ) -> Result<Value, JobError> {
        let handler = self
            .get(kind)
            .map_err(|e| JobError::Permanent(e.message))?
            .clone();
        handler.run(params, ctx).await
    }
}

impl Default for Kinds {
    fn default() -> Self {
        Self {
            by_name: Arc::new(HashMap::new()),
        }
    }
}

/// Longest delay a job may be scheduled ahead: 30 days.
pub const MAX_DELAY_MS: i64 = 30 * 24 * 3600 * 1000;

/// Reads an optional "start after N seconds" form value as a start time (unix ms).
pub fn form_delay(text: Option<&str>, now_ms: i64) -> Result<Option<i64>, InvalidInput> {
    let text = text.map(str::trim).unwrap_or_default();
    if text.is_empty() {
        return Ok(None);
    }
    let seconds: i64 = text
        .parse()
        .ok()
        .filter(|s| (0..=MAX_DELAY_MS / 1000).contains(s))
        .ok_or_else(|| {
            InvalidInput::field(
                "delay_s",
                "must be a whole number of seconds, at most 30 days",
            )
        })?;
    Ok((seconds > 0).then_some(now_ms + seconds * 1000))
}

/// Reads an optional priority form value (see [`crate::model::PRIORITIES`]); the engine
/// checks its range when the job is submitted.
pub fn form_priority(text: Option<&str>) -> Result<Option<i64>, InvalidInput> {
    let text = text.map(str::trim).unwrap_or_default();
    if text.is_empty() {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|_| InvalidInput::field("priority", PRIORITY_RANGE))
}

/// What a priority must be, in the words every refusal uses.
pub(crate) const PRIORITY_RANGE: &str = "must be a whole number from 1 to 9";

/// Reads a whole number from a form field and checks its range.
pub fn form_integer(
    fields: &FormFields,
    name: &str,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, InvalidInput> {
    let text = fields.get(name).map(|t| t.trim()).unwrap_or_default();
    if text.is_empty() {
        return Err(InvalidInput::field(name, "is required"));
    }
    let value: u64 = text
        .parse()
        .map_err(|_| InvalidInput::field(name, "must be a whole number"))?;
    check_range(name, value, range)?;
    Ok(value)
}

/// Checks that `value` lies in `range`, with a message naming the bounds.
pub fn check_range(
    name: &str,
    value: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<(), InvalidInput> {
    if range.contains(&value) {
        Ok(())
    } else {
        Err(InvalidInput::field(
            name,
            format!("must be between {} and {}", range.start(), range.end()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_grow_exponentially_with_jitter_and_a_cap() {
        let policy = RetryPolicy::DEFAULT;
        for attempt in 1..=12 {
            let full = Duration::from_secs(1 << (attempt - 1).min(20)).min(policy.max_delay);
            let delay = policy.delay(attempt);
            assert!(
                delay >= full / 2 && delay <= full,
                "attempt {attempt}: {delay:?} vs {full:?}"
            );
        }
        assert!(policy.delay(40) <= policy.max_delay);
    }
}
