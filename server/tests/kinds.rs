//! The job kinds through the JSON API, with real files, a real local webhook receiver and the
//! real server.

mod common;

use common::{Client, TestApp};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);
const TERMINAL: &[&str] = &["succeeded", "failed", "cancelled"];

async fn upload(client: &Client, kind: &str, name: &str, bytes: Vec<u8>) -> reqwest::Response {
    let form = reqwest::multipart::Form::new()
        .text("kind", kind.to_owned())
        .part(
            "file",
            reqwest::multipart::Part::bytes(bytes).file_name(name.to_owned()),
        );
    client
        .http
        .post(client.url("/api/uploads"))
        .multipart(form)
        .send()
        .await
        .expect("upload")
}

async fn upload_id(client: &Client, kind: &str, name: &str, bytes: Vec<u8>) -> String {
    let response = upload(client, kind, name, bytes).await;
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.expect("json");
    body["id"].as_str().expect("id").to_owned()
}

async fn start(client: &Client, kind: &str, params: Value) -> String {
    let response = client
        .submit(json!({ "kind": kind, "params": params }))
        .await;
    let status = response.status();
    let body: Value = response.json().await.expect("json");
    assert_eq!(status, 202, "{body}");
    body["id"].as_str().expect("id").to_owned()
}

fn png(width: u32, height: u32) -> Vec<u8> {
    let image = image::RgbImage::from_fn(width, height, |x, y| image::Rgb([x as u8, y as u8, 99]));
    let mut bytes = std::io::Cursor::new(Vec::new());
    image
        .write_to(&mut bytes, image::ImageFormat::Png)
        .expect("encode");
    bytes.into_inner()
}

#[tokio::test]
async fn thumbnails_are_made_in_both_formats_and_served_only_to_their_owner() {
    let app = TestApp::spawn().await;
    let client = app.client();
    let id = upload_id(&client, "thumbnail", "photo.png", png(600, 400)).await;
    let job = start(&client, "thumbnail", json!({ "upload": id })).await;
    let done = client.wait_for_state(&job, TERMINAL, WAIT).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let outputs = done["result"]["outputs"]
        .as_array()
        .expect("outputs")
        .clone();
    let names: Vec<_> = outputs
        .iter()
        .map(|o| o["name"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        names,
        [
            "thumb-128.png",
            "thumb-128.webp",
            "thumb-512.png",
            "thumb-512.webp"
        ]
    );
    assert_eq!(
        (outputs[2]["width"].as_u64(), outputs[2]["height"].as_u64()),
        (Some(512), Some(341))
    );

    let file = client
        .http
        .get(client.url(&format!("/files/{job}/thumb-128.webp")))
        .send()
        .await
        .expect("file");
    assert_eq!(file.status(), 200);
    let bytes = file.bytes().await.expect("bytes");
    assert_eq!(
        image::guess_format(&bytes).ok(),
        Some(image::ImageFormat::WebP)
    );
    assert_eq!(
        image::load_from_memory(&bytes)
            .map(|i| (i.width(), i.height()))
            .ok(),
        Some((128, 85))
    );

    let stranger = app.client();
    let denied = stranger
        .http
        .get(stranger.url(&format!("/files/{job}/thumb-128.webp")))
        .send()
        .await
        .expect("file");
    assert_eq!(denied.status(), 404);
    let traversal = client
        .http
        .get(client.url(&format!("/files/{job}/..%2Ferrand.db")))
        .send()
        .await
        .expect("file");
    assert_eq!(traversal.status(), 404);

    // Deleting the job removes its files.
    let deleted = client
        .http
        .delete(client.url(&format!("/api/jobs/{job}")))
        .send()
        .await
        .expect("delete");
    assert_eq!(deleted.status(), 204);
    let gone = client
        .http
        .get(client.url(&format!("/files/{job}/thumb-128.webp")))
        .send()
        .await
        .expect("file");
    assert_eq!(gone.status(), 404);
    assert_eq!(client.get_json(&format!("/api/jobs/{job}")).await.0, 404);
    app.stop().await;
}

#[tokio::test]
async fn files_that_are_not_images_are_refused_before_any_job_exists() {
    let app = TestApp::spawn().await;
    let client = app.client();
    let id = upload_id(
        &client,
        "thumbnail",
        "x.png",
        b"plain text, not a picture".to_vec(),
    )
    .await;
    let response = client
        .submit(json!({ "kind": "thumbnail", "params": { "upload": id } }))
        .await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.expect("json");
    assert_eq!(error["field"], "params.file", "{error}");

    let too_big = upload(&client, "thumbnail", "huge.png", vec![0; 20_000_001]).await;
    assert_eq!(too_big.status(), 400);

    let someone_else = app.client();
    let real = upload_id(&client, "thumbnail", "p.png", png(50, 50)).await;
    let response = someone_else
        .submit(json!({ "kind": "thumbnail", "params": { "upload": real } }))
        .await;
    assert_eq!(
        response.status(),
        400,
        "another session's upload is not usable"
    );

    let (_, list) = client.get_json("/api/jobs").await;
    assert_eq!(list["jobs"], json!([]));
    app.stop().await;
}

#[tokio::test]
async fn a_csv_import_reports_columns_and_invalid_rows() {
    let app = TestApp::spawn().await;
    let client = app.client();
    let csv = "id,price,city\n1,2.5,Oslo\n2,3.5,Lima\nbroken\n3,4.5,Oslo\n4,5.5,Lima,extra\n";
    let id = upload_id(&client, "csv_import", "data.csv", csv.as_bytes().to_vec()).await;
    let job = start(&client, "csv_import", json!({ "upload": id })).await;
    let done = client.wait_for_state(&job, TERMINAL, WAIT).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let result = &done["result"];
    assert_eq!(result["rows"], 3);
    assert_eq!(result["columns"][0]["type"], "integer");
    assert_eq!(result["columns"][1]["type"], "float");
    assert_eq!(result["columns"][1]["mean"], 3.5);
    assert_eq!(result["columns"][2]["top"][0], json!(["Oslo", 2]));
    assert_eq!(
        result["invalid_rows"],
        json!([
            {"line": 4, "reason": "expected 3 fields, found 1"},
            {"line": 6, "reason": "expected 3 fields, found 4"},
        ])
    );
    let (status, report) = client.get_json(&format!("/files/{job}/report.json")).await;
    assert_eq!(status, 200);
    assert_eq!(report["invalid_count"], 2);
    app.stop().await;
}

/// A local webhook receiver that answers each request with the next status in `statuses`.
async fn receiver(statuses: Vec<u16>) -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let counter = hits.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: String| {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let status = statuses.get(n).copied().unwrap_or(200);
            async move {
                let code = axum::http::StatusCode::from_u16(status).expect("status");
                (code, format!("{{\"got\":{body}}}"))
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, hits)
}

#[tokio::test]
async fn a_webhook_retries_server_errors_but_not_client_errors() {
    let app = TestApp::spawn().await;
    let client = app.client();

    let (url, hits) = receiver(vec![503, 502, 200]).await;
    let job = start(
        &client,
        "webhook",
        json!({ "url": url, "payload": {"n": 1} }),
    )
    .await;
    let done = client.wait_for_state(&job, TERMINAL, WAIT).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["result"]["status"], 200);
    assert_eq!(done["result"]["attempts"], 3);
    assert_eq!(done["result"]["body"], "{\"got\":{\"n\":1}}");
    assert_eq!(hits.load(Ordering::SeqCst), 3);

    let (url, hits) = receiver(vec![404]).await;
    let job = start(&client, "webhook", json!({ "url": url, "payload": {} })).await;
    let done = client.wait_for_state(&job, TERMINAL, WAIT).await;
    assert_eq!(done["state"], "failed");
    assert!(
        done["error"].as_str().unwrap_or_default().contains("404"),
        "{done}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1, "4xx is not retried");
    app.stop().await;
}

#[tokio::test]
async fn a_webhook_to_an_internal_address_is_refused() {
    let app = TestApp::spawn().await;
    let client = app.client();
    // The test server allows 127.0.0.1 only; ::1 and private ranges stay refused.
    for url in ["http://[::1]:9/hook", "http://10.0.0.1/hook"] {
        let job = start(&client, "webhook", json!({ "url": url })).await;
        let done = client.wait_for_state(&job, TERMINAL, WAIT).await;
        assert_eq!(done["state"], "failed", "{url}");
        assert!(
            done["error"]
                .as_str()
                .unwrap_or_default()
                .contains("internal address"),
            "{done}"
        );
    }
    let bad = client
        .submit(json!({ "kind": "webhook", "params": { "url": "ftp://example.com/x" } }))
        .await;
    assert_eq!(bad.status(), 400);
    app.stop().await;
}

#[tokio::test]
async fn an_export_writes_the_sessions_filtered_history() {
    let app = TestApp::spawn().await;
    let client = app.client();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let id = client.sleep_job(0, 1).await;
        client.wait_for_state(&id, &["succeeded"], WAIT).await;
        ids.push(id);
    }
    let other = app.client();
    other.sleep_job(0, 1).await;

    let job = start(
        &client,
        "export",
        json!({ "state": "succeeded", "kind": "sleep" }),
    )
    .await;
    let done = client.wait_for_state(&job, TERMINAL, WAIT).await;
    assert_eq!(done["result"]["rows"], 3, "{done}");
    let csv = client
        .http
        .get(client.url(&format!("/files/{job}/export.csv")))
        .send()
        .await
        .expect("csv");
    let text = csv.text().await.expect("text");
    let mut lines = text.lines();
    assert!(
        lines
            .next()
            .unwrap_or_default()
            .starts_with("id,kind,state")
    );
    let mut exported: Vec<_> = lines
        .map(|l| l.split(',').next().unwrap_or_default().to_owned())
        .collect();
    exported.sort();
    ids.sort();
    assert_eq!(exported, ids);

    let bad = client
        .submit(json!({ "kind": "export", "params": { "from": "2026-12-01", "to": "2026-11-01" } }))
        .await;
    assert_eq!(bad.status(), 400);
    app.stop().await;
}

#[tokio::test]
async fn a_running_job_is_cancelled_within_a_second_and_a_finished_one_cannot_be() {
    let app = TestApp::spawn().await;
    let client = app.client();
    let job = client.sleep_job(20_000, 4).await;
    client.wait_for_state(&job, &["running"], WAIT).await;
    let cancel = client
        .http
        .post(client.url(&format!("/api/jobs/{job}/cancel")))
        .send()
        .await
        .expect("cancel");
    assert_eq!(cancel.status(), 202);
    let started = std::time::Instant::now();
    let done = client
        .wait_for_state(&job, TERMINAL, Duration::from_secs(1))
        .await;
    assert_eq!(done["state"], "cancelled");
    assert!(started.elapsed() < Duration::from_secs(1));

    let again = client
        .http
        .post(client.url(&format!("/api/jobs/{job}/cancel")))
        .send()
        .await
        .expect("cancel");
    assert_eq!(again.status(), 409);
    let stranger = app.client();
    let hidden = stranger
        .http
        .post(stranger.url(&format!("/api/jobs/{job}/cancel")))
        .send()
        .await
        .expect("cancel");
    assert_eq!(hidden.status(), 404);
    app.stop().await;
}
