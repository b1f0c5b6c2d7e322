//! The server-sent event streams, read as a browser's EventSource would.

mod common;

use common::TestApp;
use futures::StreamExt;
use serde_json::Value;
use std::time::Duration;

/// Reads a whole `text/event-stream` response into (event name, JSON data) pairs, failing if
/// the server does not end the stream within `within`.
async fn read_events(response: reqwest::Response, within: Duration) -> Vec<(String, Value)> {
    let mut bytes = response.bytes_stream();
    let mut buffer = String::new();
    let read = async {
        while let Some(chunk) = bytes.next().await {
            buffer.push_str(&String::from_utf8_lossy(&chunk.expect("chunk")));
        }
    };
    tokio::time::timeout(within, read)
        .await
        .expect("the stream ends after the terminal state");
    buffer
        .split("\n\n")
        .filter_map(|block| {
            let mut name = None;
            let mut data = None;
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = Some(v.trim().to_owned());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data = serde_json::from_str(v.trim()).ok();
                }
            }
            Some((name?, data?))
        })
        .collect()
}

#[tokio::test]
async fn a_job_stream_starts_with_a_snapshot_and_ends_after_the_terminal_state() {
    let app = TestApp::spawn().await;
    let client = app.client();
    let id = client.sleep_job(500, 5).await;

    let response = client
        .http
        .get(client.url(&format!("/api/jobs/{id}/events")))
        .send()
        .await
        .expect("events");
    assert_eq!(response.status(), 200);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok());
    assert_eq!(content_type, Some("text/event-stream"));

    let events = read_events(response, Duration::from_secs(10)).await;
    let (first, snapshot) = &events[0];
    assert_eq!(first, "snapshot");
    assert_eq!(snapshot["job"]["id"], id.as_str());

    let progress: Vec<f64> = events
        .iter()
        .filter(|(name, _)| name == "job")
        .filter_map(|(_, job)| job["progress"].as_f64())
        .collect();
    assert!(
        progress.len() >= 5,
        "one event per progress report: {progress:?}"
    );
    assert!(
        progress.windows(2).all(|w| w[0] <= w[1]),
        "progress only grows: {progress:?}"
    );

    let logs: Vec<&str> = events
        .iter()
        .filter(|(name, _)| name == "log")
        .filter_map(|(_, line)| line["line"].as_str())
        .collect();
    assert_eq!(logs.len(), 5, "{logs:?}");
    assert_eq!(logs[4], "step 5 of 5");

    let (last_name, last) = events.last().expect("events");
    assert_eq!(last_name, "job");
    assert_eq!(last["state"], "succeeded");
    app.stop().await;
}

#[tokio::test]
async fn a_finished_job_stream_is_its_snapshot_alone() {
    let app = TestApp::spawn().await;
    let client = app.client();
    let id = client.sleep_job(0, 1).await;
    client
        .wait_for_state(&id, &["succeeded"], Duration::from_secs(5))
        .await;
    let response = client
        .http
        .get(client.url(&format!("/api/jobs/{id}/events")))
        .send()
        .await
        .expect("events");
    let events = read_events(response, Duration::from_secs(5)).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].0, "snapshot");
    assert_eq!(events[0].1["job"]["state"], "succeeded");
    app.stop().await;
}

#[tokio::test]
async fn the_session_stream_reports_changes_to_the_sessions_jobs_only() {
    let app = TestApp::spawn().await;
    let alice = app.client();
    let bob = app.client();
    // Both start their session before subscribing, as a client that watches from the start.
    for client in [&alice, &bob] {
        let started = client
            .http
            .post(client.url("/api/session"))
            .send()
            .await
            .expect("session");
        assert_eq!(started.status(), 204);
        assert!(started.headers().get("set-cookie").is_some());
    }

    let response = alice
        .http
        .get(alice.url("/api/jobs/events"))
        .send()
        .await
        .expect("events");
    let mut stream = response.bytes_stream();
    let bobs = bob.sleep_job(0, 1).await;
    let alices = alice.sleep_job(0, 1).await;

    let mut seen = String::new();
    let read = async {
        while !seen.contains("\"succeeded\"") {
            let chunk = stream.next().await.expect("stream open").expect("chunk");
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("alice sees her job finish");
    assert!(seen.contains(&alices));
    assert!(
        !seen.contains(&bobs),
        "bob's job leaked into alice's stream"
    );
    app.stop().await;
}
