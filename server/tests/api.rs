//! The JSON API, driven over HTTP against the real server.

mod common;

use common::{TestApp, millis_between};
use serde_json::{Value, json};
use std::time::Duration;

const TERMINAL: &[&str] = &["succeeded", "failed", "cancelled"];

#[tokio::test]
async fn a_submitted_job_answers_at_once_and_runs_to_success() {
    let app = TestApp::spawn().await;
    let client = app.client();

    let started = std::time::Instant::now();
    let id = client.sleep_job(300, 3).await;
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "submit waited for the job"
    );
    assert_eq!(id.len(), 26, "a ULID: {id}");

    let queued = client.job(&id).await;
    assert_eq!(queued["kind"], "sleep");
    assert_eq!(queued["priority"], 5, "the default priority is the middle");
    assert_eq!(queued["params"], json!({"ms": 300, "steps": 3}));
    assert!(["queued", "running"].contains(&queued["state"].as_str().unwrap_or_default()));

    let done = client
        .wait_for_state(&id, TERMINAL, Duration::from_secs(10))
        .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["progress"], json!(1.0));
    assert_eq!(done["stage"], "step 3 of 3");
    assert_eq!(done["result"], json!({"slept_ms": 300, "steps": 3}));
    assert_eq!(done["error"], Value::Null);
    assert_eq!(done["attempts"], 1);
    let ran = millis_between(&done["started_at"], &done["finished_at"]);
    assert!(ran >= 300, "slept {ran} ms");
    for field in [
        "id",
        "kind",
        "params",
        "state",
        "progress",
        "stage",
        "result",
        "error",
        "attempts",
        "created_at",
        "started_at",
        "finished_at",
    ] {
        assert!(done.get(field).is_some(), "missing {field}");
    }
    app.stop().await;
}

#[tokio::test]
async fn bad_input_is_refused_with_a_clear_error_and_creates_nothing() {
    let app = TestApp::spawn().await;
    let client = app.client();

    let cases = [
        (
            json!({"kind": "sleep", "params": {"ms": 600_001, "steps": 1}}),
            "params.ms",
        ),
        (
            json!({"kind": "sleep", "params": {"ms": 10, "steps": 0}}),
            "params.steps",
        ),
        (
            json!({"kind": "sleep", "params": {"ms": "soon"}}),
            "params.ms",
        ),
        (
            json!({"kind": "sleep", "params": {"ms": 1, "colour": "red"}}),
            "",
        ),
        (json!({"kind": "teleport", "params": {}}), "kind"),
        (json!({"kind": 7}), "kind"),
        (json!({"params": {"ms": 1}}), "kind"),
        (
            json!({"kind": "sleep", "params": {"ms": 1}, "priority": 0}),
            "priority",
        ),
        (
            json!({"kind": "sleep", "params": {"ms": 1}, "priority": 10}),
            "priority",
        ),
        (
            json!({"kind": "sleep", "params": {"ms": 1}, "priority": "high"}),
            "priority",
        ),
        (
            json!({"kind": "sleep", "params": {"ms": 1}, "priority": 2.5}),
            "priority",
        ),
    ];
    for (body, field) in cases {
        let response = client.submit(body.clone()).await;
        assert_eq!(response.status(), 400, "{body}");
        let error: Value = response.json().await.expect("json error");
        assert!(
            !error["error"].as_str().unwrap_or_default().is_empty(),
            "{error}"
        );
        if !field.is_empty() {
            assert_eq!(error["field"], field, "{body} → {error}");
        }
    }

    let not_json = client
        .http
        .post(client.url("/api/jobs"))
        .header("content-type", "application/json")
        .body("{\"kind\": ")
        .send()
        .await
        .expect("send");
    assert_eq!(not_json.status(), 400);
    let error: Value = not_json.json().await.expect("json error");
    assert!(error["error"].is_string());

    let huge = json!({"kind": "sleep", "params": {"ms": 1, "pad": "x".repeat(70 * 1024)}});
    let too_large = client.submit(huge).await;
    assert_eq!(too_large.status(), 413);

    let (_, list) = client.get_json("/api/jobs").await;
    assert_eq!(list["jobs"], json!([]), "no job may exist after bad input");

    // The same fields, right, make a job.
    let response = client
        .submit(json!({"kind": "sleep", "params": {"ms": 1}, "priority": 8}))
        .await;
    assert_eq!(response.status(), 202);
    let made: Value = response.json().await.expect("json");
    let job = client.job(made["id"].as_str().unwrap_or_default()).await;
    assert_eq!(job["priority"], 8, "{job}");
    app.stop().await;
}

#[tokio::test]
async fn sessions_see_only_their_own_jobs() {
    let app = TestApp::spawn().await;
    let alice = app.client();
    let bob = app.client();
    let id = alice.sleep_job(0, 1).await;

    assert_eq!(alice.get_json(&format!("/api/jobs/{id}")).await.0, 200);
    assert_eq!(bob.get_json(&format!("/api/jobs/{id}")).await.0, 404);
    assert_eq!(bob.get_json(&format!("/api/jobs/{id}/events")).await.0, 404);
    assert_eq!(bob.get_json("/api/jobs/not-a-ulid").await.0, 404);
    let (_, bobs) = bob.get_json("/api/jobs").await;
    assert_eq!(bobs["jobs"], json!([]));
    let (_, alices) = alice.get_json("/api/jobs").await;
    assert_eq!(alices["jobs"][0]["id"], id.as_str());

    // The page is a 404 too, with the same look as an unknown id.
    let page = bob
        .http
        .get(bob.url(&format!("/jobs/{id}")))
        .send()
        .await
        .expect("page");
    assert_eq!(page.status(), 404);
    let own = alice
        .http
        .get(alice.url(&format!("/jobs/{id}")))
        .send()
        .await
        .expect("page");
    assert_eq!(own.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn a_request_without_a_cookie_gets_a_signed_session_cookie() {
    let app = TestApp::spawn().await;
    let http = reqwest::Client::new();
    let response = http
        .post(format!("{}/api/jobs", app.base))
        .json(&json!({"kind": "sleep", "params": {"ms": 0}}))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 202);
    let cookie = response
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(cookie.starts_with("errand_session="), "{cookie}");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );

    // A tampered cookie is not trusted: the request reads a fresh, empty session (and, being a
    // read, is not given a cookie) …
    let value = cookie.split(';').next().unwrap_or_default();
    let tampered = value.replacen('=', "=AAAA", 1);
    let response = http
        .get(format!("{}/api/jobs", app.base))
        .header("cookie", tampered.clone())
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("set-cookie").is_none());
    let list: Value = response.json().await.expect("json");
    assert_eq!(list["jobs"], json!([]));
    // … and a request that makes a job with it gets a new session.
    let response = http
        .post(format!("{}/api/jobs", app.base))
        .header("cookie", tampered)
        .json(&json!({"kind": "sleep", "params": {"ms": 0}}))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 202);
    let fresh = response
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(
        fresh.starts_with("errand_session=") && !fresh.starts_with(value),
        "{fresh}"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_job_list_is_newest_first_and_paginated() {
    let app = TestApp::spawn().await;
    let client = app.client();
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(client.sleep_job(0, 1).await);
    }
    ids.reverse();

    let (_, first) = client.get_json("/api/jobs?limit=2").await;
    let page: Vec<_> = first["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .map(|j| j["id"].clone())
        .collect();
    assert_eq!(page, [json!(ids[0]), json!(ids[1])]);
    let cursor = first["next_before"].as_str().expect("cursor").to_owned();

    let (_, second) = client
        .get_json(&format!("/api/jobs?limit=2&before={cursor}"))
        .await;
    assert_eq!(second["jobs"][0]["id"], json!(ids[2]));

    let (_, all) = client.get_json("/api/jobs?limit=200").await;
    assert_eq!(all["jobs"].as_array().map(Vec::len), Some(5));
    assert_eq!(all["next_before"], Value::Null);

    let (_, succeeded) = client.get_json("/api/jobs?state=succeeded&limit=200").await;
    let (_, queued) = client.get_json("/api/jobs?state=cancelled").await;
    assert_eq!(queued["jobs"], json!([]));
    assert!(
        succeeded["jobs"]
            .as_array()
            .is_some_and(|jobs| jobs.iter().all(|j| j["state"] == "succeeded"))
    );
    assert_eq!(client.get_json("/api/jobs?state=done").await.0, 400);
    assert_eq!(client.get_json("/api/jobs?limit=0").await.0, 400);
    assert_eq!(client.get_json("/api/jobs?limit=many").await.0, 400);
    assert_eq!(client.get_json("/api/jobs?before=nope").await.0, 400);
    app.stop().await;
}

#[tokio::test]
async fn a_running_job_does_not_hold_up_another() {
    let app = TestApp::spawn().await;
    let client = app.client();
    let long = client.sleep_job(3_000, 30).await;
    client
        .wait_for_state(&long, &["running"], Duration::from_secs(5))
        .await;
    let short = client.sleep_job(50, 1).await;
    client
        .wait_for_state(&short, &["succeeded"], Duration::from_secs(2))
        .await;
    assert_eq!(client.job(&long).await["state"], "running");
    app.stop().await;
}

#[tokio::test]
async fn an_idle_worker_starts_each_new_job_within_a_second() {
    let app = TestApp::spawn().await;
    let client = app.client();
    let mut waits = Vec::new();
    for _ in 0..200 {
        let id = client.sleep_job(0, 1).await;
        let job = client
            .wait_for_state(&id, TERMINAL, Duration::from_secs(5))
            .await;
        assert_eq!(job["state"], "succeeded");
        waits.push(millis_between(&job["created_at"], &job["started_at"]));
    }
    waits.sort_unstable();
    let worst = waits.last().copied().unwrap_or_default();
    println!(
        "submit → start: median {} ms, worst {worst} ms",
        waits[waits.len() / 2]
    );
    assert!(
        worst <= 1_000,
        "a job waited {worst} ms to start: {waits:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn jobs_and_sessions_survive_a_restart() {
    let app = TestApp::spawn().await;
    let client = app.client();
    let id = client.sleep_job(0, 1).await;
    client
        .wait_for_state(&id, &["succeeded"], Duration::from_secs(5))
        .await;
    let data_dir = app.data_dir.clone();
    let temp = app.stop().await;

    let again = TestApp::spawn_in(data_dir).await;
    let same_browser = common::Client {
        base: again.base.clone(),
        http: client.http.clone(),
    };
    assert_eq!(same_browser.job(&id).await["state"], "succeeded");
    let queued_after = same_browser.sleep_job(10, 1).await;
    same_browser
        .wait_for_state(&queued_after, &["succeeded"], Duration::from_secs(5))
        .await;
    again.stop().await;
    drop(temp);
}

#[tokio::test]
async fn a_form_sent_twice_with_its_key_makes_one_job() {
    let app = TestApp::spawn().await;
    let client = app.client();
    let post = || {
        client
            .http
            .post(client.url("/fn/start_job"))
            .header("accept", "application/json")
            .form(&[
                ("kind", "sleep"),
                ("fields[ms]", "0"),
                ("fields[steps]", "1"),
                ("idempotency_key", "page-render-1"),
            ])
            .send()
    };
    let first: Value = post().await.expect("first").json().await.expect("json");
    let second: Value = post().await.expect("second").json().await.expect("json");
    assert_eq!(first, second);
    let (_, list) = client.get_json("/api/jobs").await;
    assert_eq!(list["jobs"].as_array().map(Vec::len), Some(1));

    // The API honours the Idempotency-Key header the same way.
    let api = || {
        client
            .http
            .post(client.url("/api/jobs"))
            .header("idempotency-key", "api-1")
            .json(&json!({"kind": "sleep", "params": {"ms": 0}}))
            .send()
    };
    let made = api().await.expect("first");
    assert_eq!(made.status(), 202);
    let made: Value = made.json().await.expect("json");
    let again = api().await.expect("again");
    assert_eq!(again.status(), 200);
    let again: Value = again.json().await.expect("json");
    assert_eq!(made["id"], again["id"]);
    assert_eq!(again["existing"], true);
    app.stop().await;
}

/// A schedules file with a job every second and one at 03:00 in Berlin.
const SCHEDULES: &str = r#"
[[schedule]]
name = "heartbeat"
cron = "* * * * * *"
kind = "sleep"
params = { ms = 0 }

[[schedule]]
name = "nightly-export"
cron = "0 3 * * *"
timezone = "Europe/Berlin"
kind = "export"
params = { state = "failed" }
missed = "run-once"
"#;

#[tokio::test]
async fn schedules_are_listed_with_their_next_and_last_run() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("schedules.toml");
    std::fs::write(&file, SCHEDULES).expect("write");
    let app = TestApp::spawn_with(|config| config.schedules = Some(file.clone())).await;
    let client = app.client();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let listing = loop {
        let (status, body) = client.get_json("/api/schedules").await;
        assert_eq!(status, 200, "{body}");
        if body["schedules"][0]["last_job"].is_string() {
            break body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no tick ran: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let schedules = listing["schedules"].as_array().expect("schedules");
    let names: Vec<_> = schedules.iter().map(|s| s["name"].as_str()).collect();
    assert_eq!(names, [Some("heartbeat"), Some("nightly-export")]);
    let heartbeat = &schedules[0];
    assert_eq!(
        (heartbeat["cron"].as_str(), heartbeat["kind"].as_str()),
        (Some("* * * * * *"), Some("sleep"))
    );
    assert!(millis_between(&heartbeat["last_run"], &heartbeat["next_run"]) >= 1_000);
    let nightly = &schedules[1];
    assert_eq!(nightly["timezone"], "Europe/Berlin");
    assert_eq!(nightly["missed"], "run-once");
    assert!(nightly["last_run"].is_null() && nightly["last_job"].is_null());
    // 03:00 in Berlin is 01:00 or 02:00 UTC.
    let next = nightly["next_run"].as_str().expect("next run");
    assert!(
        next.contains("T01:00:00") || next.contains("T02:00:00"),
        "{next}"
    );
    // A scheduled job belongs to its schedule, not to a visitor.
    let job = heartbeat["last_job"].as_str().expect("job");
    let (status, _) = client.get_json(&format!("/api/jobs/{job}")).await;
    assert_eq!(status, 404);
    app.stop().await;
}

/// The error that stops a server with `config` from starting (`file` is what it was given).
async fn refused_start(config: errand_server::Config, file: &str) -> String {
    match errand_server::Application::build(config).await {
        Ok(_) => panic!("{file} was accepted"),
        Err(err) => format!("{err:#}"),
    }
}

#[tokio::test]
async fn a_schedule_of_an_unknown_kind_or_bad_params_stops_the_start() {
    let dir = tempfile::tempdir().expect("dir");
    for (text, says) in [
        (
            "[[schedule]]\nname = \"x\"\ncron = \"* * * * *\"\nkind = \"nope\"\n",
            "nope",
        ),
        (
            "[[schedule]]\nname = \"y\"\ncron = \"* * * * *\"\nkind = \"sleep\"\nparams = { ms = -1 }\n",
            "\"y\"",
        ),
        (
            "[[schedule]]\nname = \"z\"\ncron = \"61 * * * *\"\nkind = \"sleep\"\n",
            "\"z\"",
        ),
    ] {
        let file = dir.path().join("schedules.toml");
        std::fs::write(&file, text).expect("write");
        let mut config = errand_server::Config::for_tests(dir.path().join("data"));
        config.schedules = Some(file);
        let err = refused_start(config, text).await;
        assert!(err.contains(says), "{text}: {err}");
    }
}

/// A webhook receiver on a free local port that answers 200 after `hold`; its URL.
async fn slow_receiver(hold: Duration) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || async move {
            tokio::time::sleep(hold).await;
            axum::http::StatusCode::OK
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test]
async fn a_queued_job_says_why_it_waits_and_until_when() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("limits.toml");
    let limits = "[[limit]]\nkind = \"webhook\"\nper_key = true\nconcurrency = 1\n";
    std::fs::write(&file, limits).expect("write");
    let app = TestApp::spawn_with(|config| config.limits = Some(file.clone())).await;
    let client = app.client();
    let hook = slow_receiver(Duration::from_millis(1_500)).await;

    // One request at a time to the host: the second webhook waits for the first's slot.
    let submit = |url: String| {
        let client = client.clone();
        async move {
            let response = client
                .submit(json!({ "kind": "webhook", "params": { "url": url } }))
                .await;
            assert_eq!(response.status(), 202);
            let body: Value = response.json().await.expect("json");
            body["id"].as_str().expect("id").to_owned()
        }
    };
    let first = submit(hook.clone()).await;
    client
        .wait_for_state(&first, &["running"], Duration::from_secs(5))
        .await;
    let second = submit(hook.clone()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let waiting = loop {
        let job = client.job(&second).await;
        if job["waiting"]["reason"] == "slot" {
            break job["waiting"].clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "{job}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        waiting,
        json!({ "reason": "slot", "text": "Waiting for a webhook for 127.0.0.1 slot (1 of 1 busy)",
                "until": null, "ahead": null, "busy": 1, "slots": 1, "key": "127.0.0.1" })
    );
    let done = client
        .wait_for_state(&second, &["succeeded"], Duration::from_secs(10))
        .await;
    assert!(done["waiting"].is_null(), "{done}");
    let first = client.job(&first).await;
    assert!(
        millis_between(&first["finished_at"], &done["started_at"]) >= 0,
        "the second started after the first finished: {first} {done}"
    );

    // A job submitted to start later says when.
    let response = client
        .submit(json!({ "kind": "sleep", "params": { "ms": 0 }, "delay_ms": 60_000 }))
        .await;
    let body: Value = response.json().await.expect("json");
    let id = body["id"].as_str().expect("id");
    let job = client.job(id).await;
    assert_eq!(job["waiting"]["reason"], "scheduled");
    assert_eq!(job["waiting"]["until"], job["run_at"]);
    assert!(
        job["waiting"]["text"]
            .as_str()
            .is_some_and(|text| text.starts_with("Scheduled for ")),
        "{job}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_limits_file_with_an_unknown_kind_or_a_bad_value_stops_the_start() {
    let dir = tempfile::tempdir().expect("dir");
    for (text, says) in [
        (
            "[[limit]]\nkind = \"nope\"\nconcurrency = 1\n",
            "no such kind",
        ),
        (
            "[[limit]]\nkind = \"sleep\"\nper_key = true\nrate = 1\n",
            "no key",
        ),
        (
            "[[limit]]\nkind = \"sleep\"\nconcurrency = 0\n",
            "concurrency must be",
        ),
    ] {
        let file = dir.path().join("limits.toml");
        std::fs::write(&file, text).expect("write");
        let mut config = errand_server::Config::for_tests(dir.path().join("data"));
        config.limits = Some(file);
        let err = refused_start(config, text).await;
        // Values are refused reading the file; kinds, opening the engine, which knows them.
        assert!(
            err.contains(says) && err.contains("limit for"),
            "{text}: {err}"
        );
    }
}
