//! The operators' console and the machine endpoints against the real server on a free port:
//! who gets in (passwords, roles, cookies), what a viewer cannot do, actions and their audit
//! log, health checks and metrics.

mod common;

use common::{Client, TestApp};
use reqwest::StatusCode;
use reqwest::header::{LOCATION, SET_COOKIE};
use serde_json::{Value, json};
use std::time::Duration;

const ADMIN: &str = "admin password 1";
const VIEWER: &str = "viewer password 1";

async fn console_app() -> TestApp {
    TestApp::spawn_with(|config| {
        config.admin_password = Some(ADMIN.into());
        config.viewer_password = Some(VIEWER.into());
    })
    .await
}

/// A browser that does not follow redirects (so they can be checked) and keeps cookies.
fn browser(app: &TestApp) -> Client {
    Client {
        base: app.base.clone(),
        http: reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client"),
    }
}

#[tokio::test]
async fn the_console_is_off_without_an_admin_password() {
    let app = TestApp::spawn().await;
    let client = browser(&app);
    for path in ["/admin", "/admin/jobs", "/admin/login", "/metrics"] {
        let response = client.http.get(client.url(path)).send().await.expect("GET");
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
    }
    let (status, _) = client.console_call("admin_jobs", &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    app.stop().await;
}

#[tokio::test]
async fn a_login_sets_a_strict_cookie_and_a_wrong_password_goes_back_to_the_form() {
    let app = console_app().await;
    let client = browser(&app);
    let page = client
        .http
        .get(client.url("/admin/jobs?state=failed"))
        .send()
        .await
        .expect("GET");
    assert_eq!(page.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        page.headers()[LOCATION],
        "/admin/login?next=%2Fadmin%2Fjobs%3Fstate%3Dfailed"
    );
    let (status, _) = client.console_call("admin_jobs", &[]).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a server function without a login"
    );

    let wrong = client.console_log_in("not the password").await;
    assert_eq!(wrong.status(), StatusCode::SEE_OTHER);
    let location = wrong.headers()[LOCATION].to_str().expect("text").to_owned();
    assert!(
        location.starts_with("/admin/login?error=wrong+password"),
        "{location}"
    );
    assert!(wrong.headers().get(SET_COOKIE).is_none());

    let right = client.console_log_in(ADMIN).await;
    assert_eq!(right.status(), StatusCode::SEE_OTHER);
    assert_eq!(right.headers()[LOCATION], "/admin/jobs");
    let cookie = right.headers()[SET_COOKIE]
        .to_str()
        .expect("text")
        .to_owned();
    assert!(cookie.starts_with("errand_admin="), "{cookie}");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attribute), "{attribute} in {cookie}");
    }
    assert!(!cookie.contains(ADMIN), "the password is not in the cookie");
    let page = client
        .http
        .get(client.url("/admin/jobs"))
        .send()
        .await
        .expect("GET");
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(
        page.headers()["cache-control"],
        "no-store",
        "not kept after logout"
    );
    let html = page.text().await.expect("html");
    assert!(
        html.contains("data-testid=\"filter-form\""),
        "the jobs page"
    );

    let out = client
        .http
        .post(client.url("/admin/logout"))
        .send()
        .await
        .expect("logout");
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    let page = client
        .http
        .get(client.url("/admin"))
        .send()
        .await
        .expect("GET");
    assert_eq!(page.status(), StatusCode::SEE_OTHER, "logged out");
    app.stop().await;
}

#[tokio::test]
async fn failed_logins_are_rate_limited_per_address() {
    let app = console_app().await;
    let client = browser(&app);
    let mut limited = None;
    for attempt in 1..=12 {
        let response = client.console_log_in("guess").await;
        let location = response.headers()[LOCATION]
            .to_str()
            .expect("text")
            .to_owned();
        if location.contains("too+many") {
            limited = Some(attempt);
            break;
        }
    }
    assert_eq!(limited, Some(11), "a burst of 10, then refused");
    // Even the right password waits now.
    let response = client.console_log_in(ADMIN).await;
    assert!(response.headers().get(SET_COOKIE).is_none());
    app.stop().await;
}

#[tokio::test]
async fn a_viewer_sees_every_job_but_cannot_act_and_an_admin_acts_on_the_record() {
    let app = console_app().await;
    // Two anonymous people with a job each.
    let (alice, bob) = (app.client(), app.client());
    let running = alice.sleep_job(60_000, 1).await;
    let done = bob.sleep_job(0, 1).await;
    bob.wait_for_state(&done, &["succeeded"], Duration::from_secs(10))
        .await;

    let viewer = browser(&app);
    viewer.console_log_in(VIEWER).await;
    let (status, page) = viewer.console_call("admin_jobs", &[]).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let ids: Vec<&str> = page["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|row| row["job"]["id"].as_str())
        .collect();
    assert_eq!(
        ids,
        [done.as_str(), running.as_str()],
        "both owners' jobs, newest first"
    );
    assert_eq!(page["can_act"], false);
    let (status, body) = viewer
        .console_call(
            "admin_act",
            &[("id", running.as_str()), ("action", "cancel")],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, _) = viewer
        .console_call("admin_pause", &[("kind", "sleep"), ("pause", "true")])
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        alice.job(&running).await["state"],
        "running",
        "nothing changed"
    );

    let admin = browser(&app);
    admin.console_log_in(ADMIN).await;
    let (status, body) = admin
        .console_call(
            "admin_act",
            &[("id", running.as_str()), ("action", "cancel")],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    alice
        .wait_for_state(&running, &["cancelled"], Duration::from_secs(5))
        .await;
    let (status, body) = admin
        .console_call("admin_act", &[("id", &done), ("action", "cancel")])
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, _) = admin
        .console_call("admin_act", &[("id", "nope"), ("action", "cancel")])
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = admin
        .console_call("admin_act", &[("id", &done), ("action", "explode")])
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (status, audit) = viewer.console_call("admin_audit", &[]).await;
    assert_eq!(status, StatusCode::OK);
    let entries = audit.as_array().expect("entries");
    assert_eq!(entries.len(), 1, "only the action that happened: {audit}");
    assert_eq!(entries[0]["action"], "cancel");
    assert_eq!(entries[0]["target"], running);
    assert_eq!(entries[0]["role"], "admin");
    app.stop().await;
}

#[tokio::test]
async fn bad_console_filters_are_400_and_name_their_field() {
    let app = console_app().await;
    let admin = browser(&app);
    admin.console_log_in(ADMIN).await;
    for (field, value) in [
        ("state", "lost"),
        ("from", "yesterday"),
        ("to", "2026-13-45"),
    ] {
        let key = format!("filter[{field}]");
        let (status, body) = admin
            .console_call("admin_jobs", &[(key.as_str(), value)])
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{field}: {body}");
        assert_eq!(body["Invalid"]["field"], field, "{body}");
    }
    let (status, _) = admin
        .console_call("admin_jobs", &[("before", "not-an-id")])
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    app.stop().await;
}

#[tokio::test]
async fn health_checks_answer_without_a_session() {
    let app = TestApp::spawn().await;
    let client = browser(&app);
    let health = client
        .http
        .get(client.url("/healthz"))
        .send()
        .await
        .expect("GET");
    assert_eq!(health.status(), StatusCode::OK);
    assert!(health.headers().get(SET_COOKIE).is_none());
    // The workers start in the background: ready within a few seconds.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ready = client
            .http
            .get(client.url("/readyz"))
            .send()
            .await
            .expect("GET");
        assert!(ready.headers().get(SET_COOKIE).is_none());
        let status = ready.status();
        let body: Value = ready.json().await.expect("json");
        if status == StatusCode::OK {
            assert_eq!(
                body,
                json!({"ready": true, "stores": "ok", "workers": "running"})
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not ready: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.stop().await;
}

#[tokio::test]
async fn metrics_need_a_console_password_or_their_own_address() {
    let app = console_app().await;
    let client = app.client();
    client.sleep_job(0, 1).await;
    let anonymous = client
        .http
        .get(client.url("/metrics"))
        .send()
        .await
        .expect("GET");
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let wrong = client
        .http
        .get(client.url("/metrics"))
        .bearer_auth("guess")
        .send()
        .await
        .expect("GET");
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let scrape = client
        .http
        .get(client.url("/metrics"))
        .bearer_auth(VIEWER)
        .send()
        .await
        .expect("GET");
    assert_eq!(scrape.status(), StatusCode::OK);
    let text = scrape.text().await.expect("text");
    for series in [
        "errand_jobs_submitted_total{kind=\"sleep\"}",
        "errand_jobs_waiting{kind=\"sleep\"}",
        "errand_http_requests_total{",
    ] {
        assert!(text.contains(series), "{series} in\n{text}");
    }
    app.stop().await;

    let app = TestApp::spawn_with(|config| {
        config.metrics_addr = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    })
    .await;
    let client = app.client();
    client.sleep_job(0, 1).await;
    let main = client
        .http
        .get(client.url("/metrics"))
        .send()
        .await
        .expect("GET");
    assert_eq!(
        main.status(),
        StatusCode::NOT_FOUND,
        "not on the main address"
    );
    let probes = app.probes.clone().expect("a metrics address");
    let scrape = client
        .http
        .get(format!("{probes}/metrics"))
        .send()
        .await
        .expect("GET");
    assert_eq!(scrape.status(), StatusCode::OK, "no password there");
    assert!(
        scrape
            .text()
            .await
            .expect("text")
            .contains("errand_jobs_submitted_total")
    );
    let ready = client
        .http
        .get(format!("{probes}/readyz"))
        .send()
        .await
        .expect("GET");
    assert!(ready.status() == StatusCode::OK || ready.status() == StatusCode::SERVICE_UNAVAILABLE);
    app.stop().await;
}
