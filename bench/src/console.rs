//! Scenario 11, the operators' console at size: a registry of `total` jobs of many owners
//! (`failed` of them webhooks that failed for good, the rest finished no-op jobs), made through
//! the JSON API as visitors make them; then how long the console's filtered pages, counts and
//! searches take, and a bulk retry of every failed job while visitors keep submitting (their
//! `POST /api/jobs` latency before and during it).

use crate::client::Api;
use crate::stats::Latency;
use crate::{Context, Row};
use anyhow::{Context as _, bail, ensure};
use futures::{StreamExt, TryStreamExt, stream};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const PASSWORD: &str = "bench admin password";

/// One of the console's reads: its name, the server function, and the form it sends.
type Read<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>);
/// Sessions the jobs are spread over (the console lists every owner's).
const OWNERS: usize = 20;

/// A logged-in admin calling the console's server functions, as its pages do.
struct Operator {
    base: String,
    http: reqwest::Client,
}

impl Operator {
    async fn log_in(base: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder().cookie_store(true).build()?;
        let response = http
            .post(format!("{base}/admin/login"))
            .form(&[("password", PASSWORD)])
            .send()
            .await?;
        ensure!(
            response.status().is_success(),
            "login answered {}",
            response.status()
        );
        Ok(Self {
            base: base.to_owned(),
            http,
        })
    }

    /// Calls `/fn/{endpoint}` with a form; the answer's JSON.
    async fn call(&self, endpoint: &str, form: &[(&str, &str)]) -> anyhow::Result<Value> {
        let response = self
            .http
            .post(format!("{}/fn/{endpoint}", self.base))
            .header("accept", "application/json")
            .form(form)
            .send()
            .await?;
        let status = response.status();
        let body = response.text().await?;
        ensure!(status.is_success(), "{endpoint} answered {status}: {body}");
        serde_json::from_str(&body).with_context(|| format!("{endpoint} answered {body}"))
    }

    /// The jobs page's counts per state for `form`'s filter.
    async fn counts(&self, form: &[(&str, &str)]) -> anyhow::Result<Value> {
        let page = self.call("admin_jobs", form).await?;
        let counts = page["counts"].as_array().context("no counts")?;
        Ok(counts
            .iter()
            .filter_map(|pair| Some((pair[0].as_str()?.to_owned(), pair[1].clone())))
            .collect::<serde_json::Map<_, _>>()
            .into())
    }
}

/// A webhook receiver on a free local port that answers `410 Gone` (a permanent failure, so
/// each webhook job fails at its first attempt); its URL.
async fn gone_receiver() -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(|| async { axum::http::StatusCode::GONE }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

/// Submits no-op jobs at `concurrency` until `stop` is set (or `at_most` were sent); their
/// latencies.
async fn submit_until(
    api: &Api,
    concurrency: usize,
    at_most: usize,
    stop: &AtomicBool,
) -> anyhow::Result<Vec<Duration>> {
    stream::iter(0..at_most)
        .take_while(|_| futures::future::ready(!stop.load(Ordering::Relaxed)))
        .map(|_| async {
            let sent = Instant::now();
            api.sleep(0, 1, None).await?;
            Ok::<_, anyhow::Error>(sent.elapsed())
        })
        .buffer_unordered(concurrency)
        .try_collect()
        .await
}

pub(crate) async fn at_size(cx: &Context, total: usize, failed: usize) -> anyhow::Result<Row> {
    let hook = gone_receiver().await?;
    let server = cx
        .start_with(&[
            format!("--admin-password={PASSWORD}"),
            "--webhook-allow=127.0.0.1".to_owned(),
        ])
        .await?;
    let mut owners = Vec::with_capacity(OWNERS);
    for _ in 0..OWNERS {
        owners.push(Api::new(&server.base, 256 / OWNERS + 1).await?);
    }
    let operator = Operator::log_in(&server.base).await?;

    // The registry: every `every`-th job a failing webhook with a numbered order in its
    // payload (what the searches look for), the others no-op jobs.
    // The jobs are due once all are in: workers draining while 256 submitters keep SQLite's
    // write lock busy would make this a measure of that contention, not of the console.
    let every = (total / failed.max(1)).max(1);
    let started = Instant::now();
    // A fifth of a millisecond per job of lead time (≥ 5,000 submits/s keeps within it).
    let due = chrono::Utc::now() + chrono::Duration::milliseconds(5_000 + total as i64 / 5);
    let due = due.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    stream::iter(0..total)
        .map(|n| {
            let api = &owners[n % OWNERS];
            let body = if n % every == 0 {
                json!({ "kind": "webhook", "run_at": due, "params": {
                    "url": hook, "payload": { "order": format!("order-o{n}") } } })
            } else {
                json!({ "kind": "sleep", "run_at": due, "params": { "ms": 0 } })
            };
            async move { api.submit(&body).await }
        })
        .buffer_unordered(256)
        .try_for_each(|_| futures::future::ready(Ok(())))
        .await?;
    let submitted_in = started.elapsed();
    let counts = loop {
        let counts = operator.counts(&[]).await?;
        if counts["queued"] == 0 && counts["running"] == 0 {
            break counts;
        }
        ensure!(
            started.elapsed() < Duration::from_secs(3_600),
            "the jobs did not finish: {counts}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let made_in = started.elapsed();
    let failing = total.div_ceil(every);
    ensure!(
        counts["failed"] == failing && counts["succeeded"] == total - failing,
        "expected {failing} failed and the rest succeeded, the counts are {counts}"
    );
    println!(
        "console: {total} jobs submitted in {:.1} s, all finished after {:.1} s",
        submitted_in.as_secs_f64(),
        made_in.as_secs_f64()
    );

    // The console's reads, each timed on the idle server.
    let first = operator.call("admin_jobs", &[]).await?;
    let owner = first["rows"][0]["owner"]
        .as_str()
        .context("no owner in the first row")?
        .to_owned();
    // `o<n>` is no other job's word, nor the start of one (a search's last word is a prefix).
    let rare = format!("order o{}", every * (failing / 2));
    let reads: Vec<Read<'_>> = vec![
        ("every job (page + counts)", "admin_jobs", vec![]),
        (
            "state = failed",
            "admin_jobs",
            vec![("filter[state]", "failed")],
        ),
        (
            "kind = webhook, state = failed",
            "admin_jobs",
            vec![("filter[kind]", "webhook"), ("filter[state]", "failed")],
        ),
        (
            "kind = sleep (nine jobs in ten)",
            "admin_jobs",
            vec![("filter[kind]", "sleep")],
        ),
        ("one owner", "admin_jobs", vec![("filter[owner]", &owner)]),
        (
            "search, one job's words",
            "admin_jobs",
            vec![("filter[q]", &rare)],
        ),
        (
            "search, a word in every failed job",
            "admin_jobs",
            vec![("filter[q]", "order")],
        ),
        (
            "bulk preview (retry failed)",
            "admin_bulk_preview",
            vec![("filter[state]", "failed"), ("action", "retry")],
        ),
        (
            "overview, 24 h chart",
            "admin_overview",
            vec![("window", "24h")],
        ),
    ];
    let reps = if total >= 100_000 { 20 } else { 5 };
    let mut timed = serde_json::Map::new();
    let mut slowest = (0.0_f64, String::new());
    for (name, endpoint, form) in &reads {
        let mut samples = Vec::with_capacity(reps);
        let mut answer = Value::Null;
        for _ in 0..reps {
            let sent = Instant::now();
            answer = operator.call(endpoint, form).await?;
            samples.push(sent.elapsed());
        }
        if *name == "search, one job's words" {
            let rows = answer["rows"].as_array().context("no rows")?;
            ensure!(
                !rows.is_empty() && rows.len() < 20,
                "searching {rare:?} found {} rows",
                rows.len()
            );
        }
        let latency = Latency::of(samples);
        println!(
            "console: {name}: p50 {:.1} ms, max {:.1} ms",
            latency.p50_ms, latency.max_ms
        );
        if latency.p50_ms > slowest.0 {
            slowest = (latency.p50_ms, (*name).to_owned());
        }
        timed.insert((*name).to_owned(), json!(latency));
    }
    let html_started = Instant::now();
    let page = operator
        .http
        .get(format!("{}/admin/jobs?state=failed", server.base))
        .send()
        .await?;
    ensure!(
        page.status() == 200,
        "the jobs page answered {}",
        page.status()
    );
    page.text().await?;
    let html_ms = html_started.elapsed().as_secs_f64() * 1000.0;
    println!("console: /admin/jobs?state=failed as HTML: {html_ms:.1} ms");

    // A bulk retry of every failed job while a visitor submits at 8 at a time.
    let visitor = &owners[0];
    let never = AtomicBool::new(false);
    let probe = if total >= 100_000 { 2_000 } else { 200 };
    let before = Latency::of(submit_until(visitor, 8, probe, &never).await?);
    let bulk_started = Instant::now();
    let bulk = operator
        .call(
            "admin_bulk",
            &[
                ("filter[state]", "failed"),
                ("filter[kind]", "webhook"),
                ("action", "retry"),
            ],
        )
        .await?;
    let bulk_id = bulk.as_u64().context("admin_bulk answered no id")?;
    let done = AtomicBool::new(false);
    let watcher = async {
        loop {
            let bulks = operator.call("admin_bulks", &[]).await?;
            let status = bulks
                .as_array()
                .and_then(|all| all.iter().find(|b| b["id"] == bulk_id))
                .cloned()
                .context("the bulk action is not listed")?;
            if status["finished"] == true {
                done.store(true, Ordering::Relaxed);
                return Ok::<_, anyhow::Error>((status, bulk_started.elapsed()));
            }
            if bulk_started.elapsed() > Duration::from_secs(3_600) {
                bail!("the bulk retry did not finish: {status}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let (watched, during) = tokio::join!(watcher, submit_until(visitor, 8, usize::MAX, &done));
    let (status, bulk_took) = watched?;
    let during = Latency::of(during?);
    ensure!(
        status["touched"] == failing && status["error"].is_null(),
        "the bulk retry touched {} of {failing} jobs: {status}",
        status["touched"]
    );
    let peak = server.peak_rss_mb();
    server.stop().await;
    let bulk_s = bulk_took.as_secs_f64();
    println!(
        "console: bulk retry of {failing} jobs in {bulk_s:.1} s; POST /api/jobs at c=8 before: \
         p50 {:.1} ms, p99 {:.1} ms; during: p50 {:.1} ms, p99 {:.1} ms ({} requests)",
        before.p50_ms, before.p99_ms, during.p50_ms, during.p99_ms, during.count
    );
    Ok(Row::new(
        format!("console at {total} jobs"),
        json!({
            "jobs": total, "failed": failing, "submit_s": submitted_in.as_secs_f64(),
            "finished_s": made_in.as_secs_f64(), "reads": timed, "html_jobs_page_ms": html_ms,
            "bulk_retry": { "jobs": failing, "seconds": bulk_s,
                "submit_before": before, "submit_during": during },
            "peak_rss_mb": peak,
        }),
    )
    .headline(format!(
        "slowest read p50 {:.1} ms ({}); bulk retry of {failing} in {bulk_s:.1} s, submit p99 {:.1} → {:.1} ms",
        slowest.0, slowest.1, before.p99_ms, during.p99_ms
    )))
}
