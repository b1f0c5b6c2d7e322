//! The real `errand` binary as a child process: killed with SIGKILL mid-job, stopped with
//! SIGTERM, restarted on the same data dir, and split into `web` and `worker` processes sharing
//! a Postgres database. Nothing may be lost, and when nothing crashed nothing may run twice.

mod common;

use common::process::{browser, shared, spawn, start, start_with, terminate};
use errand_engine::testing::SharedStores;
use errand_engine::{JobId, Registry};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

#[tokio::test]
async fn a_job_running_when_the_server_is_killed_runs_again_after_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let http = browser();
    let mut server = start(dir.path(), http.clone()).await;
    let id = server.client.sleep_job(3_000, 30).await;
    server
        .client
        .wait_for_state(&id, &["running"], Duration::from_secs(5))
        .await;
    server.child.kill().expect("SIGKILL");
    server.child.wait().expect("reaped");

    let server = start(dir.path(), http).await;
    let job = server
        .client
        .wait_for_state(&id, &["succeeded", "failed"], Duration::from_secs(15))
        .await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["attempts"], 2, "the killed attempt counts: {job}");
    terminate(server).await;
}

#[tokio::test]
async fn sigterm_lets_the_running_job_finish_and_nothing_runs_twice() {
    let dir = tempfile::tempdir().expect("temp dir");
    let http = browser();
    let server = start(dir.path(), http.clone()).await;
    let id = server.client.sleep_job(1_500, 5).await;
    server
        .client
        .wait_for_state(&id, &["running"], Duration::from_secs(5))
        .await;
    terminate(server).await;

    let server = start(dir.path(), http).await;
    let job = server.client.job(&id).await;
    assert_eq!(
        job["state"], "succeeded",
        "finished during the grace period: {job}"
    );
    assert_eq!(job["attempts"], 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        server.client.job(&id).await["attempts"],
        1,
        "not run again after the restart"
    );
    terminate(server).await;
}

#[tokio::test]
async fn a_restart_with_a_thousand_queued_jobs_loses_none() {
    let dir = tempfile::tempdir().expect("temp dir");
    let http = browser();
    let server = start(dir.path(), http.clone()).await;
    let mut ids = Vec::new();
    for _ in 0..1_000 {
        // Scheduled a little ahead, so they are all still queued when the server stops.
        let response = server
            .client
            .submit(json!({ "kind": "sleep", "params": { "ms": 0 }, "delay_ms": 4_000 }))
            .await;
        assert_eq!(response.status(), 202);
        let body: Value = response.json().await.expect("json");
        ids.push(body["id"].as_str().expect("id").to_owned());
    }
    terminate(server).await;

    let server = start(dir.path(), http).await;
    for id in &ids {
        let job = server
            .client
            .wait_for_state(id, &["succeeded", "failed"], Duration::from_secs(60))
            .await;
        assert_eq!(
            (job["state"].as_str(), job["attempts"].as_u64()),
            (Some("succeeded"), Some(1)),
            "{job}"
        );
    }
    terminate(server).await;
}

#[tokio::test]
async fn on_postgres_a_web_process_shows_live_progress_of_a_job_a_worker_process_runs() {
    live_progress_across_processes(SharedStores::postgres().await).await;
}

#[tokio::test]
async fn on_redis_a_web_process_shows_live_progress_of_a_job_a_worker_process_runs() {
    live_progress_across_processes(SharedStores::redis().await).await;
}

async fn live_progress_across_processes(stores: SharedStores) {
    let (web_dir, worker_dir) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let web = start_with(&shared(&stores, "web"), web_dir.path(), browser()).await;
    let mut worker = spawn(&shared(&stores, "worker"), worker_dir.path(), &[]);

    let id = web.client.sleep_job(600, 6).await;
    let events = web
        .client
        .http
        .get(web.client.url(&format!("/api/jobs/{id}/events")))
        .send()
        .await
        .expect("event stream");
    assert_eq!(events.status(), 200);
    let body = tokio::time::timeout(Duration::from_secs(15), events.text())
        .await
        .expect("the stream ends after the job does")
        .expect("stream body");
    let progress: Vec<f64> = body
        .lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .filter_map(|data| serde_json::from_str::<Value>(data.trim()).ok())
        .filter_map(|event| event["progress"].as_f64())
        .collect();
    assert!(
        progress.len() >= 3,
        "live progress reached the web process: {body}"
    );
    assert!(body.contains("\"succeeded\""), "{body}");
    let job = web.client.job(&id).await;
    assert_eq!(
        (job["state"].as_str(), job["attempts"].as_i64()),
        (Some("succeeded"), Some(1))
    );

    let _ = worker.kill();
    let _ = worker.wait();
    terminate(web).await;
}

#[tokio::test]
async fn on_postgres_a_job_of_a_killed_worker_process_runs_on_another_within_30_s() {
    killed_worker_recovery(SharedStores::postgres().await).await;
}

#[tokio::test]
async fn on_redis_a_job_of_a_killed_worker_process_runs_on_another_within_30_s() {
    killed_worker_recovery(SharedStores::redis().await).await;
}

async fn killed_worker_recovery(stores: SharedStores) {
    let dirs = [(); 3].map(|()| tempfile::tempdir().expect("dir"));
    let web = start_with(&shared(&stores, "web"), dirs[0].path(), browser()).await;
    let mut first = spawn(&shared(&stores, "worker"), dirs[1].path(), &[]);
    let id = web.client.sleep_job(3_000, 30).await;
    web.client
        .wait_for_state(&id, &["running"], Duration::from_secs(10))
        .await;
    first.kill().expect("SIGKILL");
    first.wait().expect("reaped");

    let mut second = spawn(&shared(&stores, "worker"), dirs[2].path(), &[]);
    let job = web
        .client
        .wait_for_state(&id, &["succeeded", "failed"], Duration::from_secs(35))
        .await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["attempts"], 2, "the killed attempt counts: {job}");
    let _ = second.kill();
    let _ = second.wait();
    terminate(web).await;
}

#[tokio::test]
async fn on_postgres_two_worker_processes_share_the_jobs_and_run_each_once() {
    two_workers_share_the_jobs(SharedStores::postgres().await).await;
}

#[tokio::test]
async fn on_redis_two_worker_processes_share_the_jobs_and_run_each_once() {
    two_workers_share_the_jobs(SharedStores::redis().await).await;
}

/// Scale-out: both worker processes claim from the one queue, and no job is claimed twice.
async fn two_workers_share_the_jobs(stores: SharedStores) {
    const JOBS: usize = 96;
    let dirs = [(); 3].map(|()| tempfile::tempdir().expect("dir"));
    let web = start_with(&shared(&stores, "web"), dirs[0].path(), browser()).await;
    // Eight slots each: 96 jobs of 100 ms keep one worker busy for over a second, so neither
    // can drain the queue before the other asks.
    let mut workers = [1, 2].map(|i| {
        spawn(
            &shared(&stores, "worker"),
            dirs[i].path(),
            &["--concurrency", "8"],
        )
    });
    let registry = Registry::connect(stores.database_url())
        .await
        .expect("registry");
    for _ in 0..200 {
        let (known, _) = registry.workers().await.expect("workers");
        if known.iter().filter(|w| w.role == "worker").count() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut ids = Vec::with_capacity(JOBS);
    for _ in 0..JOBS {
        ids.push(web.client.sleep_job(100, 1).await);
    }
    let mut ran_on: HashMap<String, usize> = HashMap::new();
    for id in &ids {
        let job = web
            .client
            .wait_for_state(id, &["succeeded", "failed"], Duration::from_secs(60))
            .await;
        assert_eq!(
            (job["state"].as_str(), job["attempts"].as_i64()),
            (Some("succeeded"), Some(1)),
            "{job}"
        );
        let attempts = registry
            .attempts(id.parse::<JobId>().expect("job id"))
            .await
            .expect("attempts");
        assert_eq!(attempts.len(), 1, "job {id} ran once: {attempts:?}");
        let worker = attempts[0].worker.clone().expect("the worker is recorded");
        *ran_on.entry(worker).or_default() += 1;
    }
    assert_eq!(ran_on.len(), 2, "both workers ran jobs: {ran_on:?}");

    for worker in &mut workers {
        let _ = worker.kill();
        let _ = worker.wait();
    }
    terminate(web).await;
}

#[test]
fn the_version_names_the_commit_it_was_built_from_and_where_the_site_comes_from() {
    let output = Command::new(env!("CARGO_BIN_EXE_errand"))
        .arg("--version")
        .output()
        .expect("errand runs");
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    let expected = format!("errand {} (", env!("CARGO_PKG_VERSION"));
    // A test build is a debug build: it reads the site from disk.
    let commit = text
        .trim()
        .strip_prefix(&expected)
        .and_then(|rest| rest.strip_suffix(", site read from --site-root)"))
        .unwrap_or_else(|| panic!("{text:?}"));
    assert!(
        commit == "unknown"
            || (commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit())),
        "{text:?}"
    );
}

#[tokio::test]
async fn the_web_and_worker_roles_refuse_to_run_on_sqlite() {
    let dir = tempfile::tempdir().expect("dir");
    let output = Command::new(env!("CARGO_BIN_EXE_errand"))
        .args(["worker", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("errand runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--database-url"), "{stderr}");
}

#[tokio::test]
async fn on_postgres_an_operators_action_on_one_web_process_shows_live_on_another() {
    const PASSWORD: &str = "two web processes";
    let stores = SharedStores::postgres().await;
    let (a_dir, b_dir) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let mut args: Vec<&str> = shared(&stores, "web").to_vec();
    args.extend(["--admin-password", PASSWORD]);
    let a = start_with(&args, a_dir.path(), browser()).await;
    let b = start_with(&args, b_dir.path(), browser()).await;
    // A visitor's job, submitted to A; no worker process runs, so it stays queued.
    let id = a.client.sleep_job(0, 1).await;
    for server in [&a, &b] {
        let login = server.client.console_log_in(PASSWORD).await;
        assert!(login.status().is_success(), "{}", login.status());
    }

    // B's console watches every job while the operator cancels the job on A.
    let mut events = b
        .client
        .http
        .get(b.client.url("/api/admin/events"))
        .send()
        .await
        .expect("console events");
    assert_eq!(events.status(), 200);
    let (status, answer) = a
        .client
        .console_call("admin_act", &[("id", id.as_str()), ("action", "cancel")])
        .await;
    assert_eq!(status, 200, "{answer}");
    let mut seen = String::new();
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = events.chunk().await.expect("stream") {
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if seen
                .lines()
                .any(|line| line.contains(&id) && line.contains("\"cancelled\""))
            {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "B's console saw the cancel: {seen}");

    // Both consoles read the one audit log.
    let (_, audit) = b.client.console_call("admin_audit", &[]).await;
    assert_eq!(
        (audit[0]["action"].as_str(), audit[0]["target"].as_str()),
        (Some("cancel"), Some(id.as_str())),
        "{audit}"
    );
    terminate(a).await;
    terminate(b).await;
}
