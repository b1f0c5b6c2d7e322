//! Scenario 13, what priorities cost and do: a backlog of no-op jobs all at the default
//! priority, then one spread evenly over the nine levels, each drained on a fresh server. The
//! spread backlog's priority-9 jobs must start before its priority-1 ones (by their medians).

use crate::client::millis;
use crate::scenarios::{Drained, drain};
use crate::{Context, Row};
use anyhow::{Context as _, ensure};
use serde_json::{Value, json};

async fn run(cx: &Context, count: usize, job: impl Fn(usize) -> Value) -> anyhow::Result<Drained> {
    let server = cx.start().await?;
    let drained = drain(&server, count, job).await;
    server.stop().await;
    drained
}

/// The median start of the jobs at `level` among `jobs`, in ms after the first start of all.
fn median_start(jobs: &[Value], level: u64) -> anyhow::Result<i64> {
    let first = jobs
        .iter()
        .filter_map(|job| millis(&job["started_at"]))
        .min()
        .context("no job started")?;
    let mut starts: Vec<i64> = jobs
        .iter()
        .filter(|job| job["priority"] == level)
        .filter_map(|job| millis(&job["started_at"]))
        .collect();
    starts.sort_unstable();
    let median = starts
        .get(starts.len() / 2)
        .context("no job at that level")?;
    Ok(median - first)
}

pub(crate) async fn cost(cx: &Context, count: usize) -> anyhow::Result<Row> {
    let plain = run(cx, count, crate::scenarios::no_op_job).await?;
    let spread = run(
        cx,
        count,
        |n| json!({ "kind": "sleep", "params": { "ms": 0 }, "priority": 1 + n % 9 }),
    )
    .await?;
    let (high, middle, low) = (
        median_start(&spread.jobs, 9)?,
        median_start(&spread.jobs, 5)?,
        median_start(&spread.jobs, 1)?,
    );
    ensure!(
        high <= middle && middle <= low && high < low,
        "the median starts are not in priority order: 9 at {high} ms, 5 at {middle} ms, \
         1 at {low} ms"
    );
    Ok(Row::new(
        "priorities".into(),
        json!({
            "jobs": count,
            "default_jobs_per_s": plain.jobs_per_s,
            "spread_jobs_per_s": spread.jobs_per_s,
            "median_start_ms": { "9": high, "5": middle, "1": low },
        }),
    )
    .headline(format!(
        "{count} no-op jobs: {:.0} jobs/s at the default priority, {:.0} jobs/s spread over \
         1–9 (median start after the first: priority 9 at {high} ms, 5 at {middle} ms, 1 at \
         {low} ms)",
        plain.jobs_per_s, spread.jobs_per_s
    )))
}
