//! Recurring jobs: schedules declared in a TOML file (`--schedules`), each a cron pattern in a
//! time zone, a kind and its parameters.
//!
//! Every process that runs workers runs the scheduler. A tick's job is submitted under the
//! owner `schedule:<name>` with the idempotency key `tick:<unix ms of the tick>`, so the
//! registry's unique index on (owner, key) keeps exactly one job per tick however many
//! processes submit it, on every backend (the registry is SQL on all of them). The last tick
//! each schedule ran is kept in the registry (`schedule_runs`), for the listing and for
//! `missed = "run-once"`.

use crate::console::{ConsoleError, Operator};
use crate::model::{JobId, Owner, now_ms};
use crate::{Engine, Params, SubmitOptions};
use chrono::TimeZone;
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use serde::Deserialize;
use serde_json::Value;
use std::time::Duration;

/// What happens to ticks missed while no process ran the scheduler.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Missed {
    /// They are skipped; the next tick runs as usual.
    #[default]
    Skip,
    /// The latest missed tick runs once, at start.
    RunOnce,
}

/// A schedule as the file declares it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Declared {
    name: String,
    cron: String,
    #[serde(default)]
    timezone: Option<String>,
    kind: String,
    #[serde(default = "no_params")]
    params: Value,
    #[serde(default)]
    missed: Missed,
}

fn no_params() -> Value {
    Value::Object(serde_json::Map::new())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    schedule: Vec<Declared>,
}

/// One recurring job.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub name: String,
    /// The pattern as written (5 fields, or 6 with seconds first).
    pub cron: String,
    pub timezone: Tz,
    pub kind: String,
    pub params: Value,
    pub missed: Missed,
    pattern: Cron,
}

/// Why a schedules file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("the schedules file is not valid TOML of the expected shape: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("schedule {name:?}: {message}")]
    Invalid { name: String, message: String },
}

fn invalid(name: &str, message: impl Into<String>) -> ScheduleError {
    ScheduleError::Invalid {
        name: name.to_owned(),
        message: message.into(),
    }
}

/// Parses a schedules file: `[[schedule]]` tables with `name`, `cron`, `kind`, and optionally
/// `timezone` (IANA name, UTC by default), `params` and `missed` (`skip` or `run-once`).
/// Kinds and parameters are checked by [`Engine::open`], which knows the kinds.
pub fn parse(text: &str) -> Result<Vec<Schedule>, ScheduleError> {
    let file: File = toml::from_str(text)?;
    let parser = CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build();
    let mut schedules: Vec<Schedule> = Vec::with_capacity(file.schedule.len());
    for declared in file.schedule {
        let name = declared.name;
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(invalid(
                &name,
                "a name is 1 to 64 letters, digits, '-' or '_'",
            ));
        }
        if schedules.iter().any(|s| s.name == name) {
            return Err(invalid(&name, "the name is used twice"));
        }
        let pattern = parser
            .parse(&declared.cron)
            .map_err(|e| invalid(&name, format!("cron {:?}: {e}", declared.cron)))?;
        let timezone = match declared.timezone.as_deref() {
            None => Tz::UTC,
            Some(zone) => zone
                .parse::<Tz>()
                .map_err(|_| invalid(&name, format!("unknown time zone {zone:?}")))?,
        };
        if !declared.params.is_object() {
            return Err(invalid(&name, "params must be a table"));
        }
        let schedule = Schedule {
            name,
            cron: declared.cron,
            timezone,
            kind: declared.kind,
            params: declared.params,
            missed: declared.missed,
            pattern,
        };
        if schedule.next_after(now_ms()).is_none() {
            return Err(invalid(&schedule.name, "the pattern never matches"));
        }
        schedules.push(schedule);
    }
    Ok(schedules)
}

impl Schedule {
    /// The owner its jobs are submitted under.
    pub fn owner(&self) -> Owner {
        Owner(format!("schedule:{}", self.name))
    }

    /// The first tick after unix millisecond `after`.
    pub fn next_after(&self, after: i64) -> Option<i64> {
        let at = self.timezone.timestamp_millis_opt(after).single()?;
        let next = self.pattern.find_next_occurrence(&at, false).ok()?;
        Some(next.timestamp_millis())
    }

    /// The latest tick at or before unix millisecond `at`.
    pub fn latest_until(&self, at: i64) -> Option<i64> {
        let at = self.timezone.timestamp_millis_opt(at).single()?;
        let previous = self.pattern.find_previous_occurrence(&at, true).ok()?;
        Some(previous.timestamp_millis())
    }
}

/// A schedule with what the registry knows of its runs.
#[derive(Debug, Clone)]
pub struct ScheduleStatus {
    pub schedule: Schedule,
    /// Unix ms of its next tick.
    pub next_run: Option<i64>,
    /// Unix ms of the last tick that made (or found) its job.
    pub last_run: Option<i64>,
    pub last_job: Option<JobId>,
    /// Since when an operator paused it (unix ms).
    pub paused_since: Option<i64>,
}

/// How long the scheduler sleeps at most before looking at the clock again (a clock that
/// jumps is noticed within this).
const RECHECK: Duration = Duration::from_secs(30);

impl Engine {
    /// The configured schedules.
    pub fn schedules(&self) -> &[Schedule] {
        &self.inner.config.schedules
    }

    /// Every schedule with its next and last run.
    pub async fn schedule_status(&self) -> Result<Vec<ScheduleStatus>, crate::EngineError> {
        let runs = self.registry().schedule_runs().await?;
        let paused = self.registry().paused_schedules().await?;
        let now = now_ms();
        Ok(self
            .schedules()
            .iter()
            .map(|schedule| {
                let run = runs.iter().find(|run| run.0 == schedule.name);
                ScheduleStatus {
                    next_run: schedule.next_after(now),
                    last_run: run.map(|run| run.1),
                    last_job: run.map(|run| run.2),
                    paused_since: paused
                        .iter()
                        .find(|(name, _)| *name == schedule.name)
                        .map(|(_, since)| *since),
                    schedule: schedule.clone(),
                }
            })
            .collect())
    }

    /// Runs `name`'s job now, besides its ticks (the console's "run now"); its id. The job is
    /// the schedule's like any tick's, under the key `now:<unix ms>`.
    pub async fn run_schedule_now(
        &self,
        who: &Operator,
        name: &str,
    ) -> Result<JobId, ConsoleError> {
        let schedule = self.operated_schedule(who, name)?;
        let options = SubmitOptions {
            idempotency_key: Some(format!("now:{}", now_ms())),
            ..SubmitOptions::default()
        };
        let params = Params::Json(schedule.params.clone());
        let submitted = self
            .submit(&schedule.owner(), &schedule.kind, params, options)
            .await?;
        self.record(who, "run-schedule", name, 1).await;
        Ok(submitted.id)
    }

    /// Pauses (`pause` true) or resumes schedule `name`: while paused its ticks make no job
    /// (they are skipped, `missed = "run-once"` included), in every process.
    pub async fn pause_schedule(
        &self,
        who: &Operator,
        name: &str,
        pause: bool,
    ) -> Result<(), ConsoleError> {
        self.operated_schedule(who, name)?;
        let changed = if pause {
            self.registry().pause_schedule(name, now_ms()).await?
        } else {
            self.registry().resume_schedule(name).await?
        };
        if changed {
            let action = if pause {
                "pause-schedule"
            } else {
                "resume-schedule"
            };
            self.record(who, action, name, 0).await;
        }
        Ok(())
    }

    /// The schedule an operator acts on, once the operator may act.
    fn operated_schedule(&self, who: &Operator, name: &str) -> Result<Schedule, ConsoleError> {
        if !who.role.may_act() {
            return Err(ConsoleError::ReadOnly);
        }
        self.schedules()
            .iter()
            .find(|schedule| schedule.name == name)
            .cloned()
            .ok_or(ConsoleError::NotFound)
    }

    /// True when an operator paused `schedule` (a registry that cannot say counts as not).
    async fn schedule_paused(&self, schedule: &Schedule) -> bool {
        match self.registry().paused_schedules().await {
            Ok(paused) => paused.iter().any(|(name, _)| *name == schedule.name),
            Err(err) => {
                tracing::warn!(schedule = %schedule.name, %err, "could not read the paused schedules");
                false
            }
        }
    }

    /// Submits the job of `schedule`'s tick at `tick` (once across every process: the tick is
    /// its idempotency key) and records the run, unless an operator paused the schedule.
    /// Storage errors are retried a few times.
    pub async fn run_tick(&self, schedule: &Schedule, tick: i64) {
        if self.schedule_paused(schedule).await {
            tracing::debug!(schedule = %schedule.name, tick, "paused; the tick is skipped");
            return;
        }
        let options = SubmitOptions {
            idempotency_key: Some(format!("tick:{tick}")),
            ..SubmitOptions::default()
        };
        for attempt in 1..=5_u32 {
            let submitted = self
                .submit(
                    &schedule.owner(),
                    &schedule.kind,
                    Params::Json(schedule.params.clone()),
                    options.clone(),
                )
                .await;
            match submitted {
                Ok(submitted) => {
                    if !submitted.existing {
                        tracing::info!(schedule = %schedule.name, job_id = %submitted.id, "scheduled job submitted");
                    }
                    if let Err(err) = self
                        .registry()
                        .record_schedule_run(&schedule.name, tick, submitted.id)
                        .await
                    {
                        tracing::error!(schedule = %schedule.name, %err, "could not record a schedule's run");
                    }
                    return;
                }
                Err(crate::SubmitError::Engine(err)) if attempt < 5 => {
                    tracing::warn!(schedule = %schedule.name, %err, attempt, "could not submit a scheduled job; retrying");
                    tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
                }
                Err(err) => {
                    tracing::error!(schedule = %schedule.name, %err, "could not submit a scheduled job; this tick is skipped");
                    return;
                }
            }
        }
    }

    /// Runs the schedules until aborted: at start, the latest missed tick of each `run-once`
    /// schedule that ran before; then each tick as it comes. [`Engine::run_workers`] runs it.
    pub async fn run_schedules(self) {
        let schedules = self.schedules().to_vec();
        if schedules.is_empty() {
            return;
        }
        let now = now_ms();
        match self.registry().schedule_runs().await {
            Ok(runs) => {
                for schedule in schedules.iter().filter(|s| s.missed == Missed::RunOnce) {
                    let last = runs.iter().find(|run| run.0 == schedule.name).map(|r| r.1);
                    if let (Some(last), Some(latest)) = (last, schedule.latest_until(now))
                        && latest > last
                    {
                        self.run_tick(schedule, latest).await;
                    }
                }
            }
            Err(err) => tracing::error!(%err, "could not read the schedules' last runs"),
        }
        let mut next: Vec<Option<i64>> = schedules.iter().map(|s| s.next_after(now)).collect();
        loop {
            let Some((index, at)) = next
                .iter()
                .enumerate()
                .filter_map(|(i, at)| Some((i, (*at)?)))
                .min_by_key(|(_, at)| *at)
            else {
                return;
            };
            let wait = Duration::from_millis(u64::try_from(at - now_ms()).unwrap_or(0));
            if wait > Duration::ZERO {
                tokio::time::sleep(wait.min(RECHECK)).await;
                continue;
            }
            let schedule = &schedules[index];
            self.run_tick(schedule, at).await;
            next[index] = schedule.next_after(at.max(now_ms()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Schedule {
        parse(text).expect("parses").remove(0)
    }

    #[test]
    fn five_fields_tick_on_the_minute_and_six_on_the_second() {
        let minute = one("[[schedule]]\nname = \"m\"\ncron = \"*/5 * * * *\"\nkind = \"sleep\"\n");
        // 2026-11-30T10:02:30Z → 10:05:00Z.
        let at = chrono::Utc
            .with_ymd_and_hms(2026, 11, 30, 10, 2, 30)
            .single()
            .map(|t| t.timestamp_millis())
            .unwrap_or_default();
        assert_eq!(minute.next_after(at), Some(at + 150_000));
        assert_eq!(minute.latest_until(at), Some(at - 150_000));
        let second =
            one("[[schedule]]\nname = \"s\"\ncron = \"*/10 * * * * *\"\nkind = \"sleep\"\n");
        assert_eq!(second.next_after(at), Some(at + 10_000));
    }

    #[test]
    fn a_time_zone_moves_the_tick() {
        let berlin = one(concat!(
            "[[schedule]]\nname = \"nightly\"\ncron = \"0 0 3 * * *\"\n",
            "timezone = \"Europe/Berlin\"\nkind = \"export\"\nparams = { state = \"failed\" }\n",
            "missed = \"run-once\"\n"
        ));
        assert_eq!(berlin.missed, Missed::RunOnce);
        assert_eq!(berlin.params, serde_json::json!({ "state": "failed" }));
        let at = chrono::Utc
            .with_ymd_and_hms(2026, 11, 30, 12, 0, 0)
            .single()
            .map(|t| t.timestamp_millis())
            .unwrap_or_default();
        // 03:00 in Berlin in winter is 02:00 UTC, the next day.
        let expected = chrono::Utc
            .with_ymd_and_hms(2026, 12, 1, 2, 0, 0)
            .single()
            .map(|t| t.timestamp_millis());
        assert_eq!(berlin.next_after(at), expected);
    }

    #[test]
    fn bad_files_are_refused_with_the_schedule_named() {
        for (text, says) in [
            (
                "[[schedule]]\nname = \"a\"\ncron = \"nope\"\nkind = \"sleep\"\n",
                "cron",
            ),
            (
                "[[schedule]]\nname = \"a\"\ncron = \"* * * * *\"\nkind = \"sleep\"\ntimezone = \"Mars/Olympus\"\n",
                "time zone",
            ),
            (
                "[[schedule]]\nname = \"a b\"\ncron = \"* * * * *\"\nkind = \"sleep\"\n",
                "name",
            ),
            (
                "[[schedule]]\nname = \"a\"\ncron = \"* * * * *\"\nkind = \"sleep\"\n[[schedule]]\nname = \"a\"\ncron = \"* * * * *\"\nkind = \"sleep\"\n",
                "twice",
            ),
            (
                "[[schedule]]\nname = \"a\"\ncron = \"* * * * *\"\nkind = \"sleep\"\nextra = 1\n",
                "extra",
            ),
            (
                "[[schedule]]\nname = \"a\"\ncron = \"* * * * *\"\nkind = \"sleep\"\nparams = 3\n",
                "table",
            ),
            (
                "[[schedule]]\nname = \"a\"\ncron = \"* * * * *\"\nkind = \"sleep\"\nmissed = \"sometimes\"\n",
                "missed",
            ),
        ] {
            let err = parse(text).expect_err(text).to_string();
            assert!(err.contains(says), "{text}: {err}");
        }
        assert!(parse("").expect("an empty file").is_empty());
    }
}
