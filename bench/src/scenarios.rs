//! The scenarios. Each starts a fresh server, measures one thing from outside, checks that
//! every job and event it sent for came back (the tool's own correctness check), and reports.

use crate::client::{Api, millis};
use crate::stats::Latency;
use crate::{Context, Row};
use anyhow::{bail, ensure};
use futures::{StreamExt, stream};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Scenario 1, Enqueue: `count` POSTs of the no-op job at `concurrency`.
pub(crate) async fn enqueue(cx: &Context, count: usize, concurrency: usize) -> anyhow::Result<Row> {
    let server = cx.start().await?;
    let api = Api::new(&server.base, concurrency).await?;
    let started = Instant::now();
    let latencies: Vec<anyhow::Result<Duration>> = stream::iter(0..count)
        .map(|_| {
            let api = api.clone();
            async move {
                let sent = Instant::now();
                api.sleep(0, 1, None).await?;
                Ok(sent.elapsed())
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let elapsed = started.elapsed();
    let latencies = latencies.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    let peak = server.peak_rss_mb();
    server.stop().await;
    let latency = Latency::of(latencies);
    Ok(Row::new(format!("enqueue c={concurrency}"), json!({
        "requests": count, "requests_per_s": count as f64 / elapsed.as_secs_f64(), "latency": latency, "peak_rss_mb": peak,
    }))
    .headline(format!("{:.0} req/s, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms", count as f64 / elapsed.as_secs_f64(), latency.p50_ms, latency.p99_ms, latency.max_ms)))
}

/// Scenario 2, End to end: submit → terminal state seen, over SSE or by polling every 10 ms.
pub(crate) async fn end_to_end(cx: &Context, count: usize, over_sse: bool) -> anyhow::Result<Row> {
    let server = cx.start().await?;
    let api = Api::new(&server.base, 16).await?;
    let started = Instant::now();
    let latencies: Vec<anyhow::Result<Duration>> = stream::iter(0..count)
        .map(|_| {
            let api = api.clone();
            async move {
                let sent = Instant::now();
                let id = api.sleep(0, 1, None).await?;
                if over_sse {
                    let events = api.events(&id).await?;
                    let last = events.last().map(|e| e.data.clone()).unwrap_or(Value::Null);
                    let state = if last["state"].is_string() {
                        last["state"].clone()
                    } else {
                        last["job"]["state"].clone()
                    };
                    ensure!(state == "succeeded", "job {id} ended {state}");
                    Ok(events.last().map_or(sent.elapsed(), |e| e.at - sent))
                } else {
                    loop {
                        if api.job(&id).await?["state"] == "succeeded" {
                            return Ok(sent.elapsed());
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let elapsed = started.elapsed();
    let latency = Latency::of(latencies.into_iter().collect::<anyhow::Result<Vec<_>>>()?);
    let peak = server.peak_rss_mb();
    server.stop().await;
    let how = if over_sse { "SSE" } else { "polling 10 ms" };
    Ok(Row::new(format!("end to end ({how})"), json!({
        "jobs": count, "jobs_per_s": count as f64 / elapsed.as_secs_f64(), "latency": latency, "peak_rss_mb": peak,
    }))
    .headline(format!("{:.0} jobs/s, p50 {:.1} ms, p99 {:.1} ms", count as f64 / elapsed.as_secs_f64(), latency.p50_ms, latency.p99_ms)))
}

/// Scenario 3, Idle pickup: jobs one after another on an idle server, submit → started (server times).
pub(crate) async fn idle_pickup(cx: &Context, count: usize) -> anyhow::Result<Row> {
    let server = cx.start().await?;
    let api = Api::new(&server.base, 1).await?;
    let mut waits = Vec::new();
    for _ in 0..count {
        let id = api.sleep(0, 1, None).await?;
        let job = loop {
            let job = api.job(&id).await?;
            if job["state"] == "succeeded" {
                break job;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        let (Some(created), Some(started)) =
            (millis(&job["created_at"]), millis(&job["started_at"]))
        else {
            bail!("job {id} has no times");
        };
        waits.push((started - created) as f64);
        // Let the worker go idle again.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop().await;
    let latency = Latency::from_millis(waits);
    Ok(Row::new(
        "idle pickup".into(),
        json!({ "jobs": count, "latency": latency }),
    )
    .headline(format!(
        "p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (ms resolution)",
        latency.p50_ms, latency.p99_ms, latency.max_ms
    )))
}

/// Scenario 4, Processing: `count` no-op jobs become due at one moment; time until the last finished.
pub(crate) async fn processing(cx: &Context, count: usize) -> anyhow::Result<Row> {
    let server = cx.start().await?;
    let drained = drain(&server, count, no_op_job).await;
    let peak = server.peak_rss_mb();
    server.stop().await;
    let Drained {
        seconds,
        jobs_per_s,
        ..
    } = drained?;
    Ok(Row::new(
        "processing".into(),
        json!({ "jobs": count, "jobs_per_s": jobs_per_s, "drain_s": seconds, "peak_rss_mb": peak }),
    )
    .headline(format!(
        "{jobs_per_s:.0} jobs/s ({count} jobs in {seconds:.1} s)"
    )))
}

/// Scenario 15: the backlog of scenario 4 drained by a `web` process and one `worker`
/// process, then (on fresh stores) by a `web` process and two.
pub(crate) async fn scale_out(cx: &Context, count: usize) -> anyhow::Result<Row> {
    let mut rates = Vec::new();
    for workers in [1, 2] {
        let server = cx.start_split(workers).await?;
        let drained = drain(&server, count, no_op_job).await;
        server.stop().await;
        rates.push(drained?.jobs_per_s);
    }
    let (one, two) = (rates[0], rates[1]);
    let gain = two / one;
    Ok(Row::new(
        "scale-out".into(),
        json!({ "jobs": count, "one_worker_jobs_per_s": one, "two_workers_jobs_per_s": two, "gain": gain }),
    )
    .headline(format!(
        "{one:.0} jobs/s with one worker process, {two:.0} with two ({gain:.2}×; {count} jobs each)"
    )))
}

/// The job the draining scenarios submit: a sleep of 0 ms, so the drain measures the queue and
/// the registry, not the work.
pub(crate) fn no_op_job(_: usize) -> Value {
    json!({ "kind": "sleep", "params": { "ms": 0 } })
}

/// How fast a backlog drained.
pub(crate) struct Drained {
    pub(crate) seconds: f64,
    pub(crate) jobs_per_s: f64,
    /// Every job as `GET /api/jobs` lists it.
    pub(crate) jobs: Vec<Value>,
}

/// Submits `count` jobs (`job(n)`: `{"kind", "params"}`) due at one moment, waits until none
/// is queued or running, checks each succeeded at its first attempt, and times the drain from
/// the due time to the last finish.
pub(crate) async fn drain(
    server: &crate::server::Server,
    count: usize,
    job: impl Fn(usize) -> Value,
) -> anyhow::Result<Drained> {
    let api = Api::new(&server.base, 32).await?;
    // Enough lead time to submit everything before the first is due.
    let lead_ms = 3_000 + count as u64 / 2;
    let due = chrono::Utc::now().timestamp_millis() + lead_ms as i64;
    let submitted: Vec<anyhow::Result<String>> = stream::iter(0..count)
        .map(|n| {
            let (api, mut body) = (api.clone(), job(n));
            async move {
                body["delay_ms"] = json!((due - chrono::Utc::now().timestamp_millis()).max(0));
                api.submit(&body).await
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    submitted.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    ensure!(
        chrono::Utc::now().timestamp_millis() < due,
        "submitting took longer than the lead time"
    );
    let deadline = Instant::now() + Duration::from_secs(lead_ms / 1000 + 3_600);
    while api.any_in_state("queued").await? || api.any_in_state("running").await? {
        ensure!(Instant::now() < deadline, "the backlog did not drain");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let jobs = api.all_jobs().await?;
    ensure!(jobs.len() == count, "{} of {count} jobs exist", jobs.len());
    ensure!(
        jobs.iter()
            .all(|j| j["state"] == "succeeded" && j["attempts"] == 1),
        "a job failed or ran twice"
    );
    let last = jobs
        .iter()
        .filter_map(|j| millis(&j["finished_at"]))
        .max()
        .unwrap_or(due);
    let seconds = (last - due).max(1) as f64 / 1000.0;
    Ok(Drained {
        seconds,
        jobs_per_s: count as f64 / seconds,
        jobs,
    })
}

/// Scenario 5, push latency: a job reports progress `reports` times; each report's time (the
/// `at` of the log line the handler writes with it) → the event's arrival at an SSE client.
pub(crate) async fn push_latency(cx: &Context, reports: u64) -> anyhow::Result<Row> {
    let server = cx.start().await?;
    let api = Api::new(&server.base, 2).await?;
    let id = api.sleep(reports * 20, reports, None).await?;
    let events = api.events(&id).await?;
    server.stop().await;
    let lags: Vec<f64> = events
        .iter()
        .filter(|e| e.name == "log")
        .filter_map(|e| Some(e.unix_ms - millis(&e.data["at"])? as f64))
        .collect();
    ensure!(
        lags.len() as u64 == reports,
        "{} of {reports} reports arrived",
        lags.len()
    );
    let latency = Latency::from_millis(lags);
    Ok(Row::new(
        "push latency".into(),
        json!({ "reports": reports, "latency": latency }),
    )
    .headline(format!(
        "p50 {:.1} ms, p99 {:.1} ms (ms resolution)",
        latency.p50_ms, latency.p99_ms
    )))
}

/// Scenario 6, Fan-out: `subscribers` SSE clients, each on its own job or all on one; server memory
/// while they are connected, and delivery of the final event (its arrival − `finished_at`).
pub(crate) async fn fan_out(
    cx: &Context,
    subscribers: usize,
    one_job: bool,
) -> anyhow::Result<Row> {
    let server = cx.start().await?;
    let api = Api::new(&server.base, subscribers.min(512)).await?;
    let lead_ms = 5_000 + subscribers as u64;
    let ids: Vec<String> = if one_job {
        vec![api.sleep(0, 1, Some(lead_ms)).await?; subscribers]
    } else {
        let made: Vec<anyhow::Result<String>> = stream::iter(0..subscribers)
            .map(|_| {
                let api = api.clone();
                async move { api.sleep(0, 1, Some(lead_ms)).await }
            })
            .buffer_unordered(64)
            .collect()
            .await;
        made.into_iter().collect::<anyhow::Result<_>>()?
    };
    let connected = Instant::now();
    let watchers: Vec<_> = ids
        .iter()
        .map(|id| {
            let (api, id) = (api.clone(), id.clone());
            tokio::spawn(async move { api.events(&id).await.map(|events| (id, events)) })
        })
        .collect();
    // Sample the server's memory while everyone is connected and waiting.
    tokio::time::sleep(
        Duration::from_millis(lead_ms.saturating_sub(1_000)).saturating_sub(connected.elapsed()),
    )
    .await;
    let connected_rss = server.rss_mb();
    let mut lags = Vec::new();
    for watcher in watchers {
        let (id, events) = watcher.await??;
        let last = events.last().filter(|e| e.data["state"] == "succeeded");
        let Some(last) = last else {
            bail!("subscriber of {id} missed the final event")
        };
        lags.push(last.unix_ms - millis(&last.data["finished_at"]).unwrap_or_default() as f64);
    }
    let peak = server.peak_rss_mb();
    server.stop().await;
    let latency = Latency::from_millis(lags);
    let what = if one_job {
        "all on one job"
    } else {
        "each on its own job"
    };
    Ok(Row::new(format!("fan-out {subscribers} ({what})"), json!({
        "subscribers": subscribers, "rss_connected_mb": connected_rss, "peak_rss_mb": peak, "delivery": latency,
    }))
    .headline(format!("RSS {connected_rss:.0} MB connected (peak {peak:.0} MB), delivery p99 {:.0} ms", latency.p99_ms)))
}

/// Scenario 7, Memory and start: cold start to the first 200 on `/`, and idle RSS a second later.
pub(crate) async fn memory(cx: &Context) -> anyhow::Result<Row> {
    let server = cx.start().await?;
    let cold = server.cold_start;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = server.rss_mb();
    server.stop().await;
    Ok(Row::new(
        "memory and start".into(),
        json!({ "cold_start_ms": cold.as_secs_f64() * 1000.0, "idle_rss_mb": idle }),
    )
    .headline(format!(
        "cold start {:.0} ms, idle RSS {idle:.1} MB",
        cold.as_secs_f64() * 1000.0
    )))
}

/// Scenario 8, Page weight: what a browser downloads for `/` and for a job page, compressed (brotli)
/// and not.
pub(crate) async fn page_weight(cx: &Context) -> anyhow::Result<Row> {
    let server = cx.start().await?;
    let api = Api::new(&server.base, 4).await?;
    let id = api.sleep(0, 1, None).await?;
    let mut pages = serde_json::Map::new();
    let mut headline = Vec::new();
    for (name, path) in [("/", "/".to_owned()), ("/jobs/{id}", format!("/jobs/{id}"))] {
        let html = fetch(&api, &path, "identity").await?;
        let text = String::from_utf8_lossy(&html.body).into_owned();
        let mut assets: Vec<String> = text
            .match_indices("/pkg/")
            .filter_map(|(at, _)| {
                text[at..]
                    .split(['"', '\'', ' ', ')'])
                    .next()
                    .map(str::to_owned)
            })
            .collect();
        ensure!(!assets.is_empty(), "{path} links no /pkg/ assets");
        // What the scripts import too (a split build's loader), as the browser fetches it.
        for script in assets.clone().iter().filter(|a| a.ends_with(".js")) {
            let body = fetch(&api, script, "identity").await?.body;
            assets.extend(relative_imports(&String::from_utf8_lossy(&body)));
        }
        assets.sort();
        assets.dedup();
        let (mut raw, mut compressed) = (html.bytes, fetch(&api, &path, "br").await?.bytes);
        let mut files = vec![json!({ "path": path, "bytes": html.bytes })];
        for asset in &assets {
            let plain = fetch(&api, asset, "identity").await?;
            let br = fetch(&api, asset, "br").await?;
            // The targets ask for compressed assets with hashed names, cached for long.
            ensure!(
                br.content_encoding.as_deref() == Some("br"),
                "{asset} was not served with brotli"
            );
            let cache = br.cache_control.unwrap_or_default();
            // The entry script and module revalidate (server/src/assets.rs says why).
            let entry = asset.starts_with("/pkg/errand.")
                && (asset.ends_with(".js") || asset.ends_with(".wasm"));
            ensure!(
                cache.contains("immutable") || (entry && cache == "no-cache"),
                "{asset} is not cached as immutable (Cache-Control: {cache:?}); was the build \
                 made by cargo leptos with hash-files?"
            );
            raw += plain.bytes;
            compressed += br.bytes;
            files.push(json!({
                "path": asset,
                "bytes": plain.bytes,
                "brotli_bytes": br.bytes,
                "cache_control": cache,
            }));
        }
        headline.push(format!(
            "{name} {:.0} KB br ({:.0} KB raw)",
            compressed as f64 / 1024.0,
            raw as f64 / 1024.0
        ));
        pages.insert(
            name.into(),
            json!({ "raw_bytes": raw, "brotli_bytes": compressed, "files": files }),
        );
    }
    server.stop().await;
    Ok(Row::new("page weight".into(), Value::Object(pages)).headline(headline.join("; ")))
}

/// The files a script imports statically from its own folder (`from "./x.js"`), as `/pkg/`
/// paths: what the browser fetches before the script runs (a split build's loader), not what
/// it may load later (the chunks of other pages).
fn relative_imports(script: &str) -> Vec<String> {
    script
        .split("from")
        .skip(1)
        .filter_map(|rest| {
            let rest = rest.trim_start();
            let quote = rest.chars().next().filter(|c| *c == '"' || *c == '\'')?;
            let name = rest[1..].split(quote).next()?.strip_prefix("./")?;
            (!name.is_empty() && !name.contains('/')).then(|| format!("/pkg/{name}"))
        })
        .collect()
}

/// What one download put on the wire.
struct Download {
    /// Bytes of the body as sent (compressed when `content_encoding` says so).
    bytes: usize,
    body: Vec<u8>,
    content_encoding: Option<String>,
    cache_control: Option<String>,
}

/// Downloads `path` with the given Accept-Encoding.
async fn fetch(api: &Api, path: &str, encoding: &str) -> anyhow::Result<Download> {
    // reqwest decompresses only when its own features are on; ours are off, so this is the
    // size on the wire.
    let response = api
        .http
        .get(format!("{}{path}", api.base))
        .header("accept-encoding", encoding)
        .send()
        .await?;
    ensure!(
        response.status().is_success(),
        "GET {path} answered {}",
        response.status()
    );
    let header = |name| {
        response
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    let content_encoding = header(reqwest::header::CONTENT_ENCODING);
    let cache_control = header(reqwest::header::CACHE_CONTROL);
    let body = response.bytes().await?.to_vec();
    Ok(Download {
        bytes: body.len(),
        body,
        content_encoding,
        cache_control,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_script_imports_its_neighbours() {
        let script = r#"import*as _ from"./__wasm_split.AB.js";import { b } from './x.js';
            const m = {"./errand_bg.js": 1}; load("./chunk_1.wasm"); import c from "../up.js";"#;
        assert_eq!(
            super::relative_imports(script),
            ["/pkg/__wasm_split.AB.js", "/pkg/x.js"]
        );
    }
}
