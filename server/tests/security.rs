//! Hostile sites and hostile users, against the real server on a free port: cross-site requests,
//! security headers, where sessions start, rate limits and quotas, and 4xx for bad input.

mod common;

use common::TestApp;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// The ways a state-changing request can be sent from another site's page.
const CROSS_SITE: [(&str, &str); 3] = [
    ("origin", "http://evil.example"),
    ("sec-fetch-site", "cross-site"),
    ("sec-fetch-site", "same-site"),
];

async fn job_count(client: &common::Client) -> usize {
    let (status, list) = client.get_json("/api/jobs").await;
    assert_eq!(status, 200);
    list["jobs"].as_array().map_or(0, Vec::len)
}

#[tokio::test]
async fn requests_from_other_sites_are_refused_and_change_nothing() {
    let app = TestApp::spawn().await;
    let client = app.client();
    let id = client.sleep_job(60_000, 1).await;
    for (name, value) in CROSS_SITE {
        let api = client
            .http
            .post(client.url("/api/jobs"))
            .header(name, value)
            .json(&json!({"kind": "sleep", "params": {"ms": 0}}))
            .send()
            .await
            .expect("send");
        assert_eq!(api.status(), StatusCode::FORBIDDEN, "{name}: {value}");
        let body: Value = api.json().await.expect("json");
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.starts_with("cross-site request refused")),
            "{body}"
        );
        let form = client
            .http
            .post(client.url("/fn/start_job"))
            .header(name, value)
            .form(&[("kind", "sleep"), ("fields[ms]", "0")])
            .send()
            .await
            .expect("send");
        assert_eq!(form.status(), StatusCode::FORBIDDEN, "{name}: {value}");
        let upload = client
            .http
            .post(client.url("/upload"))
            .header(name, value)
            .multipart(
                reqwest::multipart::Form::new()
                    .text("kind", "csv_import")
                    .part(
                        "file",
                        reqwest::multipart::Part::bytes(b"a\n1\n".to_vec()).file_name("a.csv"),
                    ),
            )
            .send()
            .await
            .expect("send");
        assert_eq!(upload.status(), StatusCode::FORBIDDEN, "{name}: {value}");
        for path in [format!("/api/jobs/{id}/cancel"), "/fn/cancel_job".into()] {
            let cancel = client
                .http
                .post(client.url(&path))
                .header(name, value)
                .form(&[("id", id.as_str())])
                .send()
                .await
                .expect("send");
            assert_eq!(
                cancel.status(),
                StatusCode::FORBIDDEN,
                "{path} {name}: {value}"
            );
        }
        let delete = client
            .http
            .delete(client.url(&format!("/api/jobs/{id}")))
            .header(name, value)
            .send()
            .await
            .expect("send");
        assert_eq!(delete.status(), StatusCode::FORBIDDEN);
    }
    assert_eq!(job_count(&client).await, 1, "nothing was made");
    let state = client.job(&id).await["state"].clone();
    assert!(
        state == "queued" || state == "running",
        "nothing was cancelled: {state}"
    );

    // The site's own pages, and clients without a browser, go through.
    let same_origin = client
        .http
        .post(client.url("/api/jobs"))
        .header("origin", app.base.clone())
        .header("sec-fetch-site", "same-origin")
        .json(&json!({"kind": "sleep", "params": {"ms": 0}}))
        .send()
        .await
        .expect("send");
    assert_eq!(same_origin.status(), StatusCode::ACCEPTED);
    let only_origin = client
        .http
        .post(client.url("/api/jobs"))
        .header("origin", app.base.clone())
        .json(&json!({"kind": "sleep", "params": {"ms": 0}}))
        .send()
        .await
        .expect("send");
    assert_eq!(only_origin.status(), StatusCode::ACCEPTED);
    assert_eq!(job_count(&client).await, 3);
    app.stop().await;
}

#[tokio::test]
async fn behind_a_proxy_the_public_url_is_the_one_origin_and_cookies_are_secure() {
    let app = TestApp::spawn_with(|config| {
        config.public_url = Some("https://jobs.example.com".into());
    })
    .await;
    let http = reqwest::Client::new();
    let post = |origin: &'static str| {
        http.post(format!("{}/api/jobs", app.base))
            .header("origin", origin)
            .json(&json!({"kind": "sleep", "params": {"ms": 0}}))
            .send()
    };
    let direct = post("http://127.0.0.1").await.expect("send");
    assert_eq!(direct.status(), StatusCode::FORBIDDEN);
    let proxied = post("https://jobs.example.com").await.expect("send");
    assert_eq!(proxied.status(), StatusCode::ACCEPTED);
    let cookie = proxied
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(
        cookie.contains("Secure") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    app.stop().await;
}

#[tokio::test]
async fn pages_carry_a_policy_with_the_nonce_of_their_script_and_other_answers_a_strict_one() {
    let app = TestApp::spawn().await;
    let http = reqwest::Client::new();
    for path in [
        "/",
        "/jobs",
        "/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV",
        "/no/such/page",
    ] {
        let page = http
            .get(format!("{}{path}", app.base))
            .send()
            .await
            .expect("page");
        let header = |name: &str| {
            page.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let policy = header("content-security-policy");
        assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(header("x-frame-options"), "DENY", "{path}");
        assert_eq!(header("referrer-policy"), "same-origin", "{path}");
        assert!(
            page.headers().get("set-cookie").is_none(),
            "{path} sets no cookie"
        );
        for part in [
            "script-src 'self' 'wasm-unsafe-eval' 'nonce-",
            "object-src 'none'",
            "base-uri 'none'",
            "frame-ancestors 'none'",
        ] {
            assert!(policy.contains(part), "{path}: {policy}");
        }
        let nonce = policy
            .split("'nonce-")
            .nth(1)
            .and_then(|rest| rest.split('\'').next())
            .expect("a nonce")
            .to_owned();
        let html = page.text().await.expect("html");
        assert!(
            html.contains(&format!("nonce=\"{nonce}\"")),
            "{path}: the script's nonce"
        );
        assert!(
            !html.contains(" style=\""),
            "{path}: no inline style the policy would block"
        );
    }
    // A second render has a nonce of its own.
    let nonce = |policy: &str| {
        policy
            .split("'nonce-")
            .nth(1)
            .unwrap_or_default()
            .to_owned()
    };
    let policies: Vec<String> = futures_two(&http, &format!("{}/", app.base)).await;
    assert_ne!(nonce(&policies[0]), nonce(&policies[1]));

    for path in ["/api/jobs", "/api/jobs/events"] {
        let answer = http
            .get(format!("{}{path}", app.base))
            .send()
            .await
            .expect("answer");
        let policy = answer
            .headers()
            .get("content-security-policy")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(policy.starts_with("default-src 'none'"), "{path}: {policy}");
        assert!(answer.headers().get("set-cookie").is_none(), "{path}");
    }
    app.stop().await;
}

async fn futures_two(http: &reqwest::Client, url: &str) -> Vec<String> {
    let mut policies = Vec::new();
    for _ in 0..2 {
        let page = http.get(url).send().await.expect("page");
        policies.push(
            page.headers()
                .get("content-security-policy")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned(),
        );
    }
    policies
}

#[tokio::test]
async fn server_functions_answer_4xx_to_bodies_they_cannot_read() {
    let app = TestApp::spawn().await;
    let client = app.client();
    let bodies: [&[u8]; 7] = [
        b"",
        b"%%%",
        b"\xff\xfe\x00garbage",
        b"id=",
        b"kind=sleep&fields=notamap",
        b"before=not-an-id",
        b"id=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ];
    for endpoint in [
        "start_job",
        "get_job",
        "cancel_job",
        "retry_job",
        "list_jobs",
    ] {
        for body in bodies {
            let answer = client
                .http
                .post(client.url(&format!("/fn/{endpoint}")))
                .header("content-type", "application/x-www-form-urlencoded")
                .header("accept", "application/json")
                .body(body.to_vec())
                .send()
                .await
                .expect("send");
            let status = answer.status();
            assert!(
                status.is_success() || status.is_client_error(),
                "/fn/{endpoint} with {:?}: {status}",
                String::from_utf8_lossy(body)
            );
        }
    }
    assert_eq!(job_count(&client).await, 0);
    app.stop().await;
}

#[tokio::test]
async fn a_delay_past_30_days_is_refused() {
    let app = TestApp::spawn().await;
    let client = app.client();
    for delay in [
        json!(9_223_372_036_854_775_807_u64),
        json!(2_592_000_001_u64),
        json!(-1),
    ] {
        let answer = client
            .submit(json!({"kind": "sleep", "params": {"ms": 0}, "delay_ms": delay}))
            .await;
        assert_eq!(answer.status(), StatusCode::BAD_REQUEST, "{delay}");
        let body: Value = answer.json().await.expect("json");
        assert_eq!(body["field"], "delay_ms");
    }
    let at_most = client
        .submit(json!({"kind": "sleep", "params": {"ms": 0}, "delay_ms": 2_592_000_000_u64}))
        .await;
    assert_eq!(at_most.status(), StatusCode::ACCEPTED);
    app.stop().await;
}

#[tokio::test]
async fn submits_past_the_rate_get_429_with_retry_after_in_the_senders_form() {
    let app = TestApp::spawn_with(|config| {
        config.session_rate = 1;
        config.session_burst = 3;
        config.ip_rate = 1;
        config.ip_burst = 1_000;
    })
    .await;
    let client = app.client();
    for _ in 0..3 {
        client.sleep_job(0, 1).await;
    }
    let api = client
        .submit(json!({"kind": "sleep", "params": {"ms": 0}}))
        .await;
    assert_eq!(api.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = api
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .expect("Retry-After");
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    let body: Value = api.json().await.expect("json");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("try again")),
        "{body}"
    );

    // The hydrated form reads the server function's error …
    let hydrated = client
        .http
        .post(client.url("/fn/start_job"))
        .header("accept", "application/json")
        .form(&[("kind", "sleep"), ("fields[ms]", "0")])
        .send()
        .await
        .expect("send");
    assert_eq!(hydrated.status(), StatusCode::TOO_MANY_REQUESTS);
    let error: Value = hydrated.json().await.expect("json");
    assert!(
        error["Limited"]
            .as_str()
            .is_some_and(|e| e.contains("try again")),
        "{error}"
    );
    // … and a form sent without JavaScript goes back to the form with the message.
    // (the client follows the redirect, as a browser would)
    let plain = client
        .http
        .post(client.url("/upload"))
        .header("accept", "text/html")
        .multipart(reqwest::multipart::Form::new().text("kind", "sleep"))
        .send()
        .await
        .expect("send");
    assert_eq!(plain.status(), StatusCode::OK);
    assert_eq!(plain.url().path(), "/");
    let query = plain.url().query().unwrap_or_default().to_owned();
    assert!(query.starts_with("error=too+many"), "{query}");
    let page = plain.text().await.expect("page");
    assert!(
        page.contains("too many jobs started"),
        "the form shows the message"
    );
    assert_eq!(job_count(&client).await, 3, "refused requests made nothing");

    // Reads are never limited, and another session has its own allowance.
    for _ in 0..20 {
        assert_eq!(client.get_json("/api/jobs").await.0, 200);
    }
    app.client().sleep_job(0, 1).await;
    app.stop().await;
}

#[tokio::test]
async fn a_session_over_its_quota_of_unfinished_jobs_gets_429() {
    let app = TestApp::spawn_with(|config| config.session_max_active = 2).await;
    let client = app.client();
    let first = client.sleep_job(60_000, 1).await;
    client.sleep_job(60_000, 1).await;
    let refused = client
        .submit(json!({"kind": "sleep", "params": {"ms": 0}}))
        .await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let body: Value = refused.json().await.expect("json");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("2 jobs queued or running")),
        "{body}"
    );
    assert_eq!(job_count(&client).await, 2);
    let cancelled = client
        .http
        .post(client.url(&format!("/api/jobs/{first}/cancel")))
        .send()
        .await
        .expect("cancel");
    assert!(cancelled.status().is_success());
    client
        .wait_for_state(&first, &["cancelled"], std::time::Duration::from_secs(10))
        .await;
    client.sleep_job(0, 1).await;
    app.stop().await;
}

/// Uploads `size` bytes as a CSV through `client`'s session.
async fn upload(client: &common::Client, size: usize) -> reqwest::Response {
    let file = reqwest::multipart::Part::bytes(vec![b'a'; size]).file_name("a.csv");
    client
        .http
        .post(client.url("/api/uploads"))
        .multipart(
            reqwest::multipart::Form::new()
                .text("kind", "csv_import")
                .part("file", file),
        )
        .send()
        .await
        .expect("send")
}

#[tokio::test]
async fn a_session_over_its_upload_quota_is_refused_and_nothing_is_kept() {
    let app = TestApp::spawn_with(|config| config.session_max_upload_mb = 1).await;
    let client = app.client();
    let stored =
        || std::fs::read_dir(app.data_dir.join("files").join("uploads")).map_or(0, |d| d.count());
    assert_eq!(upload(&client, 600_000).await.status(), StatusCode::CREATED);
    let refused = upload(&client, 600_000).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let body: Value = refused.json().await.expect("json");
    assert!(
        body["error"].as_str().is_some_and(|e| e.contains("1 MB")),
        "{body}"
    );
    assert_eq!(stored(), 1, "the refused upload was not kept");
    // Another session has a quota of its own.
    assert_eq!(
        upload(&app.client(), 600_000).await.status(),
        StatusCode::CREATED
    );
    app.stop().await;
}
