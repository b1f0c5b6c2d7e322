//! Scenario 12, what limits cost: backlogs drained with and without `--limits`. No-op jobs under
//! a kind-wide limit take the gated start (one transaction each) instead of the batched one;
//! webhooks to one host, without a limit and with a per-host one, show the per-key path, and
//! the receiver checks that the host never saw more requests at once than the limit allows.

use crate::scenarios::{Drained, drain};
use crate::{Context, Row};
use anyhow::ensure;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Requests one host may receive at once under the per-key limit.
const PER_HOST: usize = 8;

/// A webhook receiver on a free local port that answers 200 after 2 ms, and counts the most
/// requests it held at once; its URL and that count.
async fn receiver() -> anyhow::Result<(String, Arc<AtomicUsize>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let counted = most.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let (now, most) = (now.clone(), most.clone());
            async move {
                let held = now.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(held, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
                now.fetch_sub(1, Ordering::SeqCst);
                axum::http::StatusCode::OK
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((url, counted))
}

/// Drains `count` jobs made by `job` on a server started with `args` (a limits file's text
/// among them, if given); the drain and the server's peak memory.
async fn run(
    cx: &Context,
    count: usize,
    limits: Option<&str>,
    job: impl Fn(usize) -> Value,
) -> anyhow::Result<(Drained, f64)> {
    let dir = tempfile::tempdir()?;
    let mut args = vec!["--webhook-allow=127.0.0.1".to_owned()];
    if let Some(text) = limits {
        let path = dir.path().join("limits.toml");
        std::fs::write(&path, text)?;
        args.push(format!("--limits={}", path.display()));
    }
    let server = cx.start_with(&args).await?;
    let drained = drain(&server, count, job).await;
    let peak = server.peak_rss_mb();
    server.stop().await;
    Ok((drained?, peak))
}

pub(crate) async fn cost(cx: &Context, count: usize) -> anyhow::Result<Row> {
    let noop = crate::scenarios::no_op_job;
    let (plain, _) = run(cx, count, None, noop).await?;
    let kind_wide = "[[limit]]\nkind = \"sleep\"\nconcurrency = 64\n";
    let (limited, _) = run(cx, count, Some(kind_wide), noop).await?;

    let (url, _) = receiver().await?;
    let hook = |_| json!({ "kind": "webhook", "params": { "url": url } });
    let (hooks, _) = run(cx, count, None, hook).await?;
    let (url, most) = receiver().await?;
    let hook = |_| json!({ "kind": "webhook", "params": { "url": url } });
    let per_host =
        format!("[[limit]]\nkind = \"webhook\"\nper_key = true\nconcurrency = {PER_HOST}\n");
    let (hooks_limited, _) = run(cx, count, Some(&per_host), hook).await?;
    let most = most.load(Ordering::SeqCst);
    ensure!(
        most <= PER_HOST,
        "the host received {most} requests at once, over the limit of {PER_HOST}"
    );
    let figure = |d: &Drained| format!("{:.0} jobs/s", d.jobs_per_s);
    Ok(Row::new(
        "limits".into(),
        json!({
            "jobs": count,
            "noop_jobs_per_s": plain.jobs_per_s,
            "noop_kind_limit_64_jobs_per_s": limited.jobs_per_s,
            "webhook_jobs_per_s": hooks.jobs_per_s,
            "webhook_per_host_8_jobs_per_s": hooks_limited.jobs_per_s,
            "webhook_most_at_once_per_host": most,
        }),
    )
    .headline(format!(
        "{count} no-op jobs: {} without limits, {} under `concurrency = 64` on the kind; \
         {count} webhooks to one host: {} without limits, {} at {PER_HOST} per host (most at \
         once: {most})",
        figure(&plain),
        figure(&limited),
        figure(&hooks),
        figure(&hooks_limited)
    )))
}
