//! Property tests against the real router (every layer, sent in-process with tower's `oneshot`)
//! on a real SQLite data dir: generated JSON, form bodies, multipart bodies, paths and query
//! strings for every route and server function. Whatever arrives, the answer is never a 5xx and
//! never a panic, and an answer in the 4xx range stores nothing (no job, no upload).
//!
//! Each property runs a fixed number of cases ([`CASES`]) so the suite's time is bounded.

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use errand_server::{Application, Config};
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestRunner};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::OnceLock;
use tower::ServiceExt;

/// Cases per property (each one request, or a few).
const CASES: u32 = 1_000;

/// One server (no workers: jobs stay queued) for every property of this file, with its data
/// dir and a session cookie.
struct Site {
    router: Router,
    data_dir: tempfile::TempDir,
    cookie: String,
    runtime: tokio::runtime::Runtime,
    /// One request at a time: the before/after comparison must see only its own request.
    one_at_a_time: std::sync::Mutex<()>,
}

fn site() -> &'static Site {
    static SITE: OnceLock<Site> = OnceLock::new();
    SITE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let data_dir = tempfile::tempdir().expect("temp dir");
        let (router, cookie) = runtime.block_on(async {
            let app = Application::build(Config::for_tests(data_dir.path()))
                .await
                .expect("server builds");
            let router = app.router().expect("the serve role has routes");
            // Keep the engine open for the whole run (the router holds a handle to it).
            std::mem::forget(app);
            let made = router
                .clone()
                .oneshot(json_request(
                    "/api/jobs",
                    &json!({"kind": "sleep", "params": {"ms": 0}}),
                ))
                .await
                .expect("answer");
            assert_eq!(made.status(), StatusCode::ACCEPTED);
            let cookie = made
                .headers()
                .get(header::SET_COOKIE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(';').next())
                .expect("a session cookie")
                .to_owned();
            (router, cookie)
        });
        Site {
            router,
            data_dir,
            cookie,
            runtime,
            one_at_a_time: std::sync::Mutex::new(()),
        }
    })
}

fn json_request(path: &str, body: &Value) -> Request<Body> {
    Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .expect("request")
}

/// What a request may have changed: the session's newest job and the number of uploads.
#[derive(Debug, PartialEq, Eq)]
struct Stored {
    newest_job: Value,
    uploads: usize,
}

fn uploads(data_dir: &Path) -> usize {
    std::fs::read_dir(data_dir.join("files").join("uploads")).map_or(0, |dir| dir.count())
}

impl Site {
    async fn stored(&self) -> Stored {
        let answer = self
            .router
            .clone()
            .oneshot(
                Request::get("/api/jobs?limit=1")
                    .header(header::COOKIE, &self.cookie)
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("answer");
        let bytes = axum::body::to_bytes(answer.into_body(), 1 << 20)
            .await
            .expect("body");
        let list: Value = serde_json::from_slice(&bytes).expect("json");
        Stored {
            newest_job: list["jobs"][0]["id"].clone(),
            uploads: uploads(self.data_dir.path()),
        }
    }

    /// Sends `request` with the session's cookie; checks the answer is not a 5xx and that a
    /// refusal (a 4xx, or the upload form's redirect back to the form) stored nothing.
    fn check(&self, mut request: Request<Body>) -> Result<StatusCode, TestCaseError> {
        let _turn = self
            .one_at_a_time
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        request
            .headers_mut()
            .insert(header::COOKIE, self.cookie.parse().expect("cookie header"));
        let described = format!("{} {}", request.method(), request.uri());
        self.runtime.block_on(async {
            let before = self.stored().await;
            let answer = self
                .router
                .clone()
                .oneshot(request)
                .await
                .expect("the router answers");
            let status = answer.status();
            let back_to_form = answer
                .headers()
                .get(header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .is_some_and(|l| l.starts_with("/?"));
            // Event streams stay open; only their status matters here.
            drop(answer);
            prop_assert!(!status.is_server_error(), "{described} answered {status}");
            if status.is_client_error() || back_to_form {
                let after = self.stored().await;
                prop_assert_eq!(
                    &before,
                    &after,
                    "{} answered {} and stored something",
                    described,
                    status
                );
            }
            Ok(status)
        })
    }
}

fn runner() -> TestRunner {
    TestRunner::new(RunnerConfig {
        cases: CASES,
        failure_persistence: None,
        ..RunnerConfig::default()
    })
}

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::from),
        Just(Value::from("")),
        Just(Value::from(-1)),
        Just(Value::from(0)),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(field_name(), inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// Field names: the ones the routes know, and anything else.
fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "kind", "params", "delay_ms", "run_at", "ms", "steps", "fail", "url", "payload",
            "timeout_ms", "upload", "sizes", "format", "state", "id", "before", "limit",
        ])
        .prop_map(str::to_owned),
        1 => any::<String>(),
    ]
}

/// Kind names: the five real ones, and anything else.
fn kind() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["sleep", "thumbnail", "csv_import", "webhook", "export"])
            .prop_map(str::to_owned),
        1 => any::<String>(),
    ]
}

/// Text that parsers find interesting: numbers at their edges, ids, dates, escapes, or any.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "",
            "0",
            "-1",
            "1",
            "600000",
            "600001",
            "18446744073709551616",
            "1e3",
            "NaN",
            "01ARZ3NDEKTSV4RRFFQ69G5FAV",
            "2026-01-01T00:00:00Z",
            "9999-12-31T23:59:59Z",
            "queued",
            "running",
            "succeeded",
            "failed",
            "cancelled",
            "%%%",
            "%ff",
            "\u{0}",
            "https://example.com/hook",
            "http://127.0.0.1/",
            "png",
            "64,128",
            "[]",
            "{}",
        ])
        .prop_map(str::to_owned),
        any::<String>(),
        any::<i64>().prop_map(|n| n.to_string()),
    ]
}

#[test]
fn the_json_api_never_fails_on_any_body() {
    let site = site();
    let body = prop_oneof![
        // A submission whose fields are generated.
        (
            kind(),
            any_json(),
            prop::option::of(any_json()),
            prop::option::of(any_json())
        )
            .prop_map(|(kind, params, delay, run_at)| {
                let mut body = json!({ "kind": kind, "params": params });
                if let Some(delay) = delay {
                    body["delay_ms"] = delay;
                }
                if let Some(run_at) = run_at {
                    body["run_at"] = run_at;
                }
                body.to_string().into_bytes()
            }),
        any_json().prop_map(|value| value.to_string().into_bytes()),
        prop::collection::vec(any::<u8>(), 0..256),
    ];
    let content_type = prop::sample::select(vec![
        "application/json",
        "text/plain",
        "application/x-www-form-urlencoded",
        "",
    ]);
    runner()
        .run(
            &(body, content_type, prop::option::of(text())),
            |(body, content_type, key)| {
                let mut request = Request::post("/api/jobs");
                if !content_type.is_empty() {
                    request = request.header(header::CONTENT_TYPE, content_type);
                }
                if let Some(key) = key.filter(|k| axum::http::HeaderValue::from_str(k).is_ok()) {
                    request = request.header("idempotency-key", key);
                }
                site.check(request.body(Body::from(body)).expect("request"))?;
                Ok(())
            },
        )
        .expect("property holds");
}

#[test]
fn server_functions_never_fail_on_any_form_body() {
    let site = site();
    let endpoint = prop::sample::select(vec![
        "start_job",
        "get_job",
        "cancel_job",
        "retry_job",
        "list_jobs",
    ]);
    let key = prop_oneof![
        4 => prop::sample::select(vec![
            "kind", "id", "before", "idempotency_key", "delay_s", "fields[ms]", "fields[steps]",
            "fields[url]", "fields[upload]", "fields", "fields[]", "fields[a][b]",
        ])
        .prop_map(str::to_owned),
        1 => any::<String>(),
    ];
    let form = prop::collection::vec((key, text()), 0..8).prop_map(|pairs| {
        serde_urlencoded::to_string(pairs)
            .unwrap_or_default()
            .into_bytes()
    });
    let body = prop_oneof![3 => form, 1 => prop::collection::vec(any::<u8>(), 0..256)];
    runner()
        .run(
            &(endpoint, body, any::<bool>()),
            |(endpoint, body, json)| {
                let request = Request::post(format!("/fn/{endpoint}"))
                    .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .header(
                        header::ACCEPT,
                        if json {
                            "application/json"
                        } else {
                            "text/html"
                        },
                    )
                    .body(Body::from(body))
                    .expect("request");
                site.check(request)?;
                Ok(())
            },
        )
        .expect("property holds");
}

/// A multipart body: generated parts, sometimes cut off or with a wrong boundary.
fn multipart() -> impl Strategy<Value = (String, Vec<u8>)> {
    let name = prop_oneof![
        4 => prop::sample::select(vec!["kind", "file", "ms", "sizes", "delay_s", "idempotency_key"])
            .prop_map(str::to_owned),
        1 => "[a-z\\[\\]\"]{0,8}",
    ];
    let part = (
        name,
        prop::option::of("[a-zA-Z0-9 ._\"/\\\\-]{0,12}"),
        prop_oneof![
            text().prop_map(String::into_bytes),
            prop::collection::vec(any::<u8>(), 0..512),
            Just(b"a,b\n1,2\n".to_vec()),
            Just(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec()),
        ],
    );
    (
        prop::collection::vec(part, 0..5),
        0..4_u8,
        any::<prop::sample::Index>(),
    )
        .prop_map(|(parts, damage, cut)| {
            let boundary = "errandboundary";
            let mut body = Vec::new();
            for (name, filename, content) in parts {
                body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
                let disposition = match filename {
                    Some(filename) => {
                        format!("form-data; name=\"{name}\"; filename=\"{filename}\"")
                    }
                    None => format!("form-data; name=\"{name}\""),
                };
                body.extend_from_slice(
                    format!("Content-Disposition: {disposition}\r\n\r\n").as_bytes(),
                );
                body.extend_from_slice(&content);
                body.extend_from_slice(b"\r\n");
            }
            body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
            let content_type = match damage {
                0 => "multipart/form-data".to_owned(),
                1 => "multipart/form-data; boundary=other".to_owned(),
                _ => format!("multipart/form-data; boundary={boundary}"),
            };
            if damage == 3 && !body.is_empty() {
                body.truncate(cut.index(body.len()));
            }
            (content_type, body)
        })
}

#[test]
fn uploads_never_fail_on_any_multipart_body() {
    let site = site();
    let path = prop::sample::select(vec!["/upload", "/api/uploads"]);
    runner()
        .run(&(path, multipart()), |(path, (content_type, body))| {
            let request = Request::post(path)
                .header(header::CONTENT_TYPE, content_type)
                .body(Body::from(body))
                .expect("request");
            site.check(request)?;
            Ok(())
        })
        .expect("property holds");
}

#[test]
fn any_path_and_query_gets_an_answer_below_500() {
    let site = site();
    let segment = prop_oneof![
        4 => prop::sample::select(vec![
            "api", "jobs", "uploads", "events", "cancel", "retry", "fn", "files", "pkg", "upload",
            "01ARZ3NDEKTSV4RRFFQ69G5FAV", "..", ".", "%2e%2e", "%00", "%ff", "",
            "errand.css", "get_job",
        ])
        .prop_map(str::to_owned),
        1 => "[a-zA-Z0-9._~%-]{0,12}",
    ];
    let query = prop::collection::vec(
        (
            prop::sample::select(vec![
                "limit", "before", "state", "kind", "error", "field", "x",
            ]),
            text(),
        ),
        0..4,
    )
    .prop_map(|pairs| serde_urlencoded::to_string(pairs).unwrap_or_default());
    let method = prop::sample::select(vec![Method::GET, Method::POST, Method::DELETE, Method::PUT]);
    runner()
        .run(
            &(method, prop::collection::vec(segment, 1..5), query),
            |(method, segments, query)| {
                let mut uri = format!("/{}", segments.join("/"));
                if !query.is_empty() {
                    uri = format!("{uri}?{query}");
                }
                let Ok(request) = Request::builder()
                    .method(method)
                    .uri(&uri)
                    .body(Body::empty())
                else {
                    return Ok(()); // not a URI a client could send
                };
                site.check(request)?;
                Ok(())
            },
        )
        .expect("property holds");
}
