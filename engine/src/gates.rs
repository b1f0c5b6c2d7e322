//! Concurrency and rate limits on how jobs of a kind start, kind-wide or per key (a value the
//! kind takes from its arguments, such as a webhook's target host), declared in a TOML file
//! (`--limits`). With no file nothing is limited and jobs start as they always did.
//!
//! A limit is enforced by the registry, so it holds across every process that shares it:
//! `Registry::start_gated` counts the key's running jobs and takes a rate slot in one
//! transaction, under the key's lock (SQLite's write lock, a Postgres advisory lock).
//!
//! - **Concurrency**: a job whose key has every slot busy waits in the registry without a task
//!   (it holds no worker); when a job of the key leaves `running`, the oldest waiting ones are
//!   given a new delivery and pushed (`Engine::wake_waiting`), and the reconciler does the same
//!   for any key with a free slot in case a wake-up was lost.
//! - **Rate**: the generic cell rate algorithm (GCRA). Each key keeps a theoretical arrival time
//!   (TAT); a start is allowed when `TAT − (burst − 1) × interval ≤ now`, and moves the TAT on by
//!   one interval. A job that comes too early reserves the next slot instead (the TAT moves on
//!   all the same) and is pushed again, due at that slot: it keeps its place and starts when its
//!   slot comes, without polling.

use crate::kinds::Kinds;
use serde::Deserialize;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

/// The most starts a second a rate may allow, and the most slots a concurrency limit may have.
const MOST: u32 = 100_000;

/// Starts per second and how many may come at once after a quiet spell.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: u32,
}

impl Rate {
    /// Time between two slots, in microseconds.
    pub(crate) fn interval_us(&self) -> i64 {
        (1_000_000.0 / self.per_second).round().max(1.0) as i64
    }

    /// How far ahead of now the TAT may be and a start still pass, in microseconds.
    pub(crate) fn tolerance_us(&self) -> i64 {
        self.interval_us() * i64::from(self.burst.saturating_sub(1))
    }
}

/// The limits of one kind.
#[derive(Debug, Clone, PartialEq)]
pub struct Limit {
    pub kind: String,
    /// Apply the limits to each of the kind's keys separately, instead of to the whole kind.
    pub per_key: bool,
    /// At most this many running at once.
    pub concurrency: Option<u32>,
    pub rate: Option<Rate>,
}

impl Limit {
    /// The limit in words, for operators: "at most 2 at once, 10 starts a second, per host".
    pub fn describe(&self, key_name: Option<&str>) -> String {
        let mut parts = Vec::new();
        if let Some(slots) = self.concurrency {
            parts.push(format!("at most {slots} at once"));
        }
        if let Some(rate) = self.rate {
            let burst = if rate.burst > 1 {
                format!(" (bursts of {})", rate.burst)
            } else {
                String::new()
            };
            parts.push(format!("{} starts a second{burst}", rate.per_second));
        }
        match key_name.filter(|_| self.per_key) {
            Some(key) => format!("{}, per {key}", parts.join(", ")),
            None => parts.join(", "),
        }
    }
}

/// The limit a job starts under: its key (`kind` or `kind:key`) and the limit's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct GateRule {
    pub key: String,
    pub concurrency: Option<u32>,
    pub rate: Option<Rate>,
}

/// Every kind's limits, by kind name.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    by_kind: Arc<HashMap<String, Limit>>,
}

/// A limit as the file declares it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Declared {
    kind: String,
    #[serde(default)]
    per_key: bool,
    #[serde(default)]
    concurrency: Option<u32>,
    /// Starts per second.
    #[serde(default)]
    rate: Option<f64>,
    #[serde(default)]
    burst: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    limit: Vec<Declared>,
}

/// Why a limits file was refused.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error("the limits file is not valid TOML of the expected shape: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("limit for {kind:?}: {message}")]
    Invalid { kind: String, message: String },
}

fn invalid(kind: &str, message: impl Into<String>) -> LimitError {
    LimitError::Invalid {
        kind: kind.to_owned(),
        message: message.into(),
    }
}

/// Parses a limits file: `[[limit]]` tables with `kind` and at least one of `concurrency`
/// (running at once) and `rate` (starts per second, with `burst`, 1 by default); `per_key =
/// true` applies them to each of the kind's keys. Kinds are checked by [`Limits::check`].
pub fn parse(text: &str) -> Result<Limits, LimitError> {
    let file: File = toml::from_str(text)?;
    let mut by_kind = HashMap::new();
    for declared in file.limit {
        let kind = declared.kind;
        if by_kind.contains_key(&kind) {
            return Err(invalid(&kind, "the kind has two limits; give it one table"));
        }
        if declared.concurrency.is_none() && declared.rate.is_none() {
            return Err(invalid(&kind, "set concurrency, rate or both"));
        }
        if let Some(slots) = declared.concurrency
            && !(1..=MOST).contains(&slots)
        {
            return Err(invalid(
                &kind,
                format!("concurrency must be between 1 and {MOST}"),
            ));
        }
        let rate = match (declared.rate, declared.burst) {
            (None, Some(_)) => return Err(invalid(&kind, "burst needs a rate")),
            (None, None) => None,
            (Some(per_second), burst) => {
                if !(per_second.is_finite() && per_second >= 0.001 && per_second <= f64::from(MOST))
                {
                    return Err(invalid(
                        &kind,
                        format!("rate must be between 0.001 and {MOST} starts a second"),
                    ));
                }
                let burst = burst.unwrap_or(1);
                if !(1..=MOST).contains(&burst) {
                    return Err(invalid(
                        &kind,
                        format!("burst must be between 1 and {MOST}"),
                    ));
                }
                Some(Rate { per_second, burst })
            }
        };
        let limit = Limit {
            kind: kind.clone(),
            per_key: declared.per_key,
            concurrency: declared.concurrency,
            rate,
        };
        by_kind.insert(kind, limit);
    }
    Ok(Limits {
        by_kind: Arc::new(by_kind),
    })
}

impl Limits {
    /// True when no kind is limited (jobs start on the fast path).
    pub fn is_empty(&self) -> bool {
        self.by_kind.is_empty()
    }

    /// The limited kinds' names.
    pub fn kinds(&self) -> Vec<String> {
        let mut kinds: Vec<String> = self.by_kind.keys().cloned().collect();
        kinds.sort_unstable();
        kinds
    }

    /// The limit of `kind`, if it has one.
    pub fn get(&self, kind: &str) -> Option<&Limit> {
        self.by_kind.get(kind)
    }

    /// Checks every limit against the kinds: the kind exists, and a per-key limit's kind has a
    /// key.
    pub fn check(&self, kinds: &Kinds) -> Result<(), LimitError> {
        for limit in self.by_kind.values() {
            if !kinds.names().contains(&limit.kind.as_str()) {
                return Err(invalid(&limit.kind, "no such kind"));
            }
            if limit.per_key && kinds.key_name(&limit.kind).is_none() {
                return Err(invalid(
                    &limit.kind,
                    "this kind has no key to limit by; remove per_key",
                ));
            }
        }
        Ok(())
    }

    /// The rule a job of `kind` with `params` starts under, if its kind is limited.
    pub fn rule(&self, kinds: &Kinds, kind: &str, params: &Value) -> Option<GateRule> {
        let limit = self.by_kind.get(kind)?;
        let key = match limit.per_key.then(|| kinds.key(kind, params)).flatten() {
            Some(value) => format!("{kind}:{value}"),
            None => kind.to_owned(),
        };
        Some(GateRule {
            key,
            concurrency: limit.concurrency,
            rate: limit.rate,
        })
    }

    /// The limit of a key written by [`Limits::rule`] (`kind` or `kind:key`).
    pub fn of_key(&self, key: &str) -> Option<&Limit> {
        self.by_kind.get(split_key(key).0)
    }
}

/// A key written by [`Limits::rule`] as its kind and, under a per-key limit, the kind's key
/// (`webhook:api.example.com` → `("webhook", Some("api.example.com"))`).
pub fn split_key(key: &str) -> (&str, Option<&str>) {
    match key.split_once(':') {
        Some((kind, value)) => (kind, Some(value)),
        None => (key, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_declares_concurrency_and_rates() {
        let limits = parse(
            "[[limit]]\nkind = \"thumbnail\"\nconcurrency = 4\n\n\
             [[limit]]\nkind = \"webhook\"\nper_key = true\nconcurrency = 2\nrate = 10\nburst = 3\n",
        )
        .expect("parses");
        assert_eq!(limits.kinds(), ["thumbnail", "webhook"]);
        let thumbnail = limits.get("thumbnail").expect("thumbnail");
        assert_eq!((thumbnail.per_key, thumbnail.concurrency), (false, Some(4)));
        assert_eq!(thumbnail.rate, None);
        let rate = limits.get("webhook").and_then(|l| l.rate).expect("a rate");
        assert_eq!(
            (rate.interval_us(), rate.tolerance_us()),
            (100_000, 200_000)
        );
        assert_eq!(
            limits
                .of_key("webhook:api.example.com")
                .map(|l| l.concurrency),
            Some(Some(2))
        );
        assert!(parse("").expect("empty").is_empty());
        let webhook = limits.get("webhook").expect("webhook");
        assert_eq!(
            webhook.describe(Some("host")),
            "at most 2 at once, 10 starts a second (bursts of 3), per host"
        );
        assert_eq!(thumbnail.describe(None), "at most 4 at once");
    }

    #[test]
    fn bad_files_are_refused_naming_the_kind() {
        for (text, expected) in [
            (
                "[[limit]]\nkind = \"sleep\"\n",
                "set concurrency, rate or both",
            ),
            (
                "[[limit]]\nkind = \"sleep\"\nconcurrency = 0\n",
                "concurrency must be",
            ),
            ("[[limit]]\nkind = \"sleep\"\nrate = 0\n", "rate must be"),
            ("[[limit]]\nkind = \"sleep\"\nrate = nan\n", "rate must be"),
            (
                "[[limit]]\nkind = \"sleep\"\nconcurrency = 1\nburst = 2\n",
                "burst needs a rate",
            ),
            (
                "[[limit]]\nkind = \"sleep\"\nrate = 1\nburst = 0\n",
                "burst must be",
            ),
            (
                "[[limit]]\nkind = \"sleep\"\nrate = 1\n[[limit]]\nkind = \"sleep\"\nrate = 2\n",
                "two limits",
            ),
            ("[[limit]]\nkind = \"sleep\"\nslots = 1\n", "unknown field"),
        ] {
            let err = parse(text).expect_err(text).to_string();
            assert!(err.contains(expected), "{text:?}: {err}");
        }
    }

    #[test]
    fn kinds_are_checked_and_keys_come_from_the_arguments() {
        let kinds = Kinds::builtin(&[]);
        let per_host = parse("[[limit]]\nkind = \"webhook\"\nper_key = true\nconcurrency = 2\n")
            .expect("parses");
        per_host.check(&kinds).expect("webhooks have a key");
        let params = serde_json::json!({ "url": "https://api.example.com/hook" });
        let rule = per_host.rule(&kinds, "webhook", &params).expect("limited");
        assert_eq!(rule.key, "webhook:api.example.com");
        assert_eq!(per_host.rule(&kinds, "sleep", &params), None);

        let unknown = parse("[[limit]]\nkind = \"fax\"\nconcurrency = 1\n").expect("parses");
        assert!(
            unknown
                .check(&kinds)
                .expect_err("refused")
                .to_string()
                .contains("no such kind")
        );
        let keyless =
            parse("[[limit]]\nkind = \"sleep\"\nper_key = true\nrate = 5\n").expect("parses");
        assert!(
            keyless
                .check(&kinds)
                .expect_err("refused")
                .to_string()
                .contains("no key")
        );
        let whole = parse("[[limit]]\nkind = \"thumbnail\"\nconcurrency = 4\n").expect("parses");
        let rule = whole
            .rule(&kinds, "thumbnail", &serde_json::json!({}))
            .expect("limited");
        assert_eq!(rule.key, "thumbnail");
    }
}
