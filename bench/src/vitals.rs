//! Scenario 14, web vitals: what a person feels in the browser. `vitals/vitals.mjs` drives
//! Debian's Chromium (Playwright) against the server and prints its figures as JSON: TTFB and
//! LCP of `/` and of a job page, the slowest interaction (INP, Event Timing API) while typing
//! into the form and switching kinds with 10 jobs streaming progress, and the long tasks.

use crate::{Context, Row};
use anyhow::{Context as _, ensure};
use serde_json::Value;
use std::path::Path;

/// Runs the browser script `runs` page loads per page against a fresh server.
pub(crate) async fn web_vitals(cx: &Context, runs: usize) -> anyhow::Result<Row> {
    let server = cx.start().await?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("vitals/vitals.mjs");
    let output = tokio::process::Command::new("node")
        .arg(&script)
        .arg(&server.base)
        .arg(format!("--runs={runs}"))
        .output()
        .await
        .with_context(|| format!("could not run node {}", script.display()))?;
    server.stop().await;
    ensure!(
        output.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let figures: Value = serde_json::from_slice(&output.stdout)
        .with_context(|| format!("{} printed no JSON", script.display()))?;
    // What the pages did wrong (console errors, page errors, failed or 4xx/5xx requests)
    // makes the figures worthless: a page that failed to load an asset is light and fast.
    let problems = figures
        .get("problems")
        .and_then(Value::as_array)
        .context("no problems list in the script's figures")?;
    ensure!(problems.is_empty(), "the pages had problems: {problems:?}");
    let ms = |pointer: &str| {
        figures
            .pointer(pointer)
            .and_then(Value::as_f64)
            .map_or_else(|| "?".to_owned(), |ms| format!("{ms:.1} ms"))
    };
    let headline = format!(
        "/ TTFB {} LCP {}; job page TTFB {} LCP {}; INP {} ({} interactions, 10 jobs \
         streaming); long tasks {} (longest {})",
        ms("/home/ttfb_ms"),
        ms("/home/lcp_ms"),
        ms("/job_page/ttfb_ms"),
        ms("/job_page/lcp_ms"),
        ms("/interaction/inp_ms"),
        figures
            .pointer("/interaction/interactions")
            .unwrap_or(&Value::Null),
        figures.pointer("/long_tasks/count").unwrap_or(&Value::Null),
        ms("/long_tasks/longest_ms"),
    );
    Ok(Row::new("web vitals (Chromium)".into(), figures).headline(headline))
}
