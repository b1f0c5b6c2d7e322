//! Why a queued job has not started yet, and when it is expected to: its kind is paused, it is
//! scheduled (or waits for its next attempt), it waits for a rate slot or a concurrency slot of
//! its key (see [`crate::gates`]), or jobs are ahead of it in the queue. The estimate for the
//! last comes from how many jobs finished a second over the last few minutes.

use crate::model::{Job, JobState, now_ms};
use crate::{Engine, EngineError};

/// How far the jobs ahead of a queued job are counted.
pub const AHEAD_COUNTED: u64 = 10_000;

/// The minutes of finished-job counts the queue's throughput is taken from.
const THROUGHPUT_MINUTES: i64 = 5;

/// Why a queued job waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitReason {
    /// An operator paused its kind.
    Paused,
    /// It was submitted to start later.
    Scheduled,
    /// An attempt failed; the next one is due later.
    Retry,
    /// Its key's rate limit: it holds the next slot.
    Rate,
    /// Every concurrency slot of its key is busy.
    Slot { busy: u64, slots: u32 },
    /// Other jobs are ahead of it (counted up to [`AHEAD_COUNTED`]).
    Queue { ahead: u64 },
}

/// Why a queued job waits, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub reason: WaitReason,
    /// The limit's key, for a rate or slot wait under a per-key limit (such as a host).
    pub key: Option<String>,
    /// When it starts (unix ms): exact for a scheduled job, a retry and a rate slot; an
    /// estimate for a job in the queue; unknown (`None`) for a pause or a busy slot.
    pub until: Option<i64>,
}

impl Engine {
    /// Why `job` has not started, if it is queued; `None` otherwise.
    pub async fn waiting(&self, job: &Job) -> Result<Option<Waiting>, EngineError> {
        if job.state != JobState::Queued {
            return Ok(None);
        }
        let id = job.id.to_string();
        let Some(facts) = self.registry().wait_facts(&id).await? else {
            return Ok(None);
        };
        let now = now_ms();
        // The key's value after `kind:`, for a per-key limit.
        let key = facts
            .limit_key
            .as_deref()
            .and_then(|key| crate::gates::split_key(key).1)
            .map(str::to_owned);
        let waiting = |reason, until| Waiting {
            reason,
            key: key.clone(),
            until,
        };
        if facts.paused {
            return Ok(Some(waiting(WaitReason::Paused, None)));
        }
        if facts.waiting.as_deref() == Some("slot")
            && let Some(limit_key) = facts.limit_key.as_deref()
        {
            let slots = self
                .limits()
                .of_key(limit_key)
                .and_then(|limit| limit.concurrency)
                .unwrap_or(0);
            let busy = self.registry().running_under(limit_key).await?;
            return Ok(Some(waiting(WaitReason::Slot { busy, slots }, None)));
        }
        if let Some(slot) = facts.rate_slot.filter(|slot| *slot > now) {
            return Ok(Some(waiting(WaitReason::Rate, Some(slot))));
        }
        if let Some(at) = job.run_at.filter(|at| *at > now) {
            let reason = if job.attempts > 0 {
                WaitReason::Retry
            } else {
                WaitReason::Scheduled
            };
            return Ok(Some(waiting(reason, Some(at))));
        }
        let ahead = self
            .registry()
            .jobs_ahead(job.priority, facts.queued_at, &id, now, AHEAD_COUNTED)
            .await?;
        let until = self
            .throughput()
            .await?
            .map(|per_second| now + ((ahead + 1) as f64 / per_second * 1000.0) as i64);
        Ok(Some(waiting(WaitReason::Queue { ahead }, until)))
    }

    /// Jobs finished a second over the last few minutes, if any finished.
    async fn throughput(&self) -> Result<Option<f64>, EngineError> {
        let now = now_ms();
        let since = now / 60_000 - THROUGHPUT_MINUTES;
        let finished: u64 = self
            .registry()
            .finished_since(since)
            .await?
            .iter()
            .map(|count| count.jobs)
            .sum();
        let seconds = (now - since * 60_000) as f64 / 1000.0;
        Ok((finished > 0).then(|| finished as f64 / seconds))
    }
}
