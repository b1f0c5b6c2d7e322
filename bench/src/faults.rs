//! Fault scenarios at full size: what stray requests and poison uploads cost the server. The
//! test suite (`server/tests/faults.rs`) runs the same faults at bounded counts; these are the
//! figures BENCHMARKS.md reports ("Faults survived").

use crate::client::Api;
use crate::{Context, Row};
use anyhow::{bail, ensure};
use futures::{StreamExt, stream};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Scenario 9, Stray event streams: `count` requests at concurrency 64, half for the event
/// stream of a job that does not exist (with a session), half for the session stream without a
/// cookie, each dropped once its headers arrive. Reports the resident memory before and after.
pub(crate) async fn stray_streams(cx: &Context, count: usize) -> anyhow::Result<Row> {
    let server = cx.start().await?;
    let api = Api::new(&server.base, 64).await?;
    let anonymous = reqwest::Client::new();
    let flood = |count: usize| {
        stream::iter(0..count)
            .map(|n| {
                let (http, url) = if n % 2 == 0 {
                    let missing = ulid::Ulid::generate();
                    (
                        api.http.clone(),
                        format!("{}/api/jobs/{missing}/events", api.base),
                    )
                } else {
                    (anonymous.clone(), format!("{}/api/jobs/events", api.base))
                };
                async move { http.get(url).send().await.map(|r| r.status().as_u16()) }
            })
            .buffer_unordered(64)
            .collect::<Vec<_>>()
    };
    // Warm up the allocator and the connection pool before the baseline.
    flood(1_000).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = server.rss_mb();
    let started = Instant::now();
    let answers = flood(count).await;
    let elapsed = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = server.rss_mb();
    server.stop().await;
    let (not_found, streams) = answers
        .iter()
        .fold((0, 0), |(nf, ok), answer| match answer {
            Ok(404) => (nf + 1, ok),
            Ok(200) => (nf, ok + 1),
            _ => (nf, ok),
        });
    ensure!(
        not_found + streams == count,
        "{} of {count} requests got neither 404 nor a stream",
        count - not_found - streams
    );
    Ok(Row::new(
        format!("stray event streams ×{count}"),
        json!({
            "requests": count, "requests_per_s": count as f64 / elapsed.as_secs_f64(),
            "rss_before_mb": before, "rss_after_mb": after,
        }),
    )
    .headline(format!(
        "{:.0} req/s; RSS {before:.1} MB before, {after:.1} MB after ({:+.1} MB)",
        count as f64 / elapsed.as_secs_f64(),
        after - before
    )))
}

/// Scenario 10, Poison CSV: a CSV whose header is one line of `bytes` commas, imported. The job
/// must fail with the record-length message, once; reports the time it took and the server's
/// peak memory.
pub(crate) async fn poison_csv(cx: &Context, bytes: usize) -> anyhow::Result<Row> {
    let server = cx.start().await?;
    let api = Api::new(&server.base, 4).await?;
    let mut header = vec![b','; bytes];
    header.push(b'\n');
    let form = reqwest::multipart::Form::new()
        .text("kind", "csv_import")
        .part(
            "file",
            reqwest::multipart::Part::bytes(header).file_name("header.csv"),
        );
    let started = Instant::now();
    let uploaded: Value = api
        .http
        .post(format!("{}/api/uploads", api.base))
        .multipart(form)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let upload = uploaded["id"].as_str().unwrap_or_default().to_owned();
    let submitted: Value = api
        .http
        .post(format!("{}/api/jobs", api.base))
        .json(&json!({ "kind": "csv_import", "params": { "upload": upload } }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let id = submitted["id"].as_str().unwrap_or_default().to_owned();
    let job = loop {
        let job = api.job(&id).await?;
        if matches!(
            job["state"].as_str(),
            Some("succeeded" | "failed" | "cancelled")
        ) {
            break job;
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("the poison job did not end within 120 s: {job}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let elapsed = started.elapsed();
    let peak = server.peak_rss_mb();
    server.stop().await;
    let error = job["error"].as_str().unwrap_or_default();
    ensure!(
        job["state"] == "failed" && job["attempts"] == 1 && error.contains("longer than"),
        "the poison job ended {job}"
    );
    Ok(Row::new(
        format!("poison CSV ({} MB header line)", bytes / 1_000_000),
        json!({
            "bytes": bytes, "seconds": elapsed.as_secs_f64(), "peak_rss_mb": peak,
        }),
    )
    .headline(format!(
        "failed once in {:.1} s (upload included); peak RSS {peak:.1} MB",
        elapsed.as_secs_f64()
    )))
}
