//! Starting the real server on a free port with a fresh data dir, and a client that talks to it
//! like a browser (cookies kept) or an API user would.

#![allow(dead_code, unreachable_pub)]

pub mod process;

use errand_server::{Application, Config};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct TestApp {
    pub base: String,
    /// The `--metrics-addr` address, when the test gave one.
    pub probes: Option<String>,
    pub data_dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    _temp: Option<tempfile::TempDir>,
}

impl TestApp {
    /// Starts a server on a fresh temporary data dir.
    pub async fn spawn() -> Self {
        let temp = tempfile::tempdir().expect("temp dir");
        let dir = temp.path().to_path_buf();
        let mut app = Self::spawn_in(dir).await;
        app._temp = Some(temp);
        app
    }

    /// Starts a server on a fresh temporary data dir with a configuration of the test's.
    pub async fn spawn_with(configure: impl FnOnce(&mut Config)) -> Self {
        let temp = tempfile::tempdir().expect("temp dir");
        let mut config = Config::for_tests(temp.path());
        configure(&mut config);
        let mut app = Self::start(config).await;
        app._temp = Some(temp);
        app
    }

    /// Starts a server on an existing data dir (to test restarts).
    pub async fn spawn_in(data_dir: PathBuf) -> Self {
        Self::start(Config::for_tests(&data_dir)).await
    }

    async fn start(config: Config) -> Self {
        let data_dir = config.data_dir.clone();
        let app = Application::build(config).await.expect("server builds");
        let base = format!("http://127.0.0.1:{}", app.port());
        let probes = app.probes_addr().map(|addr| format!("http://{addr}"));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until_stopped(async {
            let _ = stopped.await;
        }));
        Self {
            base,
            probes,
            data_dir,
            stop: Some(stop),
            task: Some(task),
            _temp: None,
        }
    }

    /// Stops the server gracefully and keeps its data dir for another start.
    pub async fn stop(mut self) -> Option<tempfile::TempDir> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let result = tokio::time::timeout(Duration::from_secs(20), task)
                .await
                .expect("server stops within 20 s")
                .expect("server task joins");
            result.expect("server ran without error");
        }
        self._temp.take()
    }

    /// A client with its own cookie jar: one browser session.
    pub fn client(&self) -> Client {
        Client {
            base: self.base.clone(),
            http: reqwest::Client::builder()
                .cookie_store(true)
                .build()
                .expect("client"),
        }
    }
}

#[derive(Clone)]
pub struct Client {
    pub base: String,
    pub http: reqwest::Client,
}

impl Client {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Logs in to the operators' console with `password`, asking to go to `/admin/jobs`.
    pub async fn console_log_in(&self, password: &str) -> reqwest::Response {
        self.http
            .post(self.url("/admin/login"))
            .form(&[("password", password), ("next", "/admin/jobs")])
            .send()
            .await
            .expect("POST /admin/login")
    }

    /// Calls a console server function (`/fn/{endpoint}`) with a form body; returns the status
    /// and the JSON answer.
    pub async fn console_call(
        &self,
        endpoint: &str,
        form: &[(&str, &str)],
    ) -> (reqwest::StatusCode, Value) {
        let response = self
            .http
            .post(self.url(&format!("/fn/{endpoint}")))
            .header("accept", "application/json")
            .form(form)
            .send()
            .await
            .expect("server function");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn submit(&self, body: Value) -> reqwest::Response {
        self.http
            .post(self.url("/api/jobs"))
            .json(&body)
            .send()
            .await
            .expect("POST /api/jobs")
    }

    /// Submits a sleep job and returns its id.
    pub async fn sleep_job(&self, ms: u64, steps: u64) -> String {
        let response = self
            .submit(serde_json::json!({"kind": "sleep", "params": {"ms": ms, "steps": steps}}))
            .await;
        assert_eq!(response.status(), 202);
        let body: Value = response.json().await.expect("json");
        body["id"].as_str().expect("id").to_owned()
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let response = self.http.get(self.url(path)).send().await.expect("GET");
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    pub async fn job(&self, id: &str) -> Value {
        let (status, body) = self.get_json(&format!("/api/jobs/{id}")).await;
        assert_eq!(status, 200, "GET job {id}: {body}");
        body
    }

    /// Polls the job until its state is one of `states`, failing after `within`.
    pub async fn wait_for_state(&self, id: &str, states: &[&str], within: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let job = self.job(id).await;
            if states.contains(&job["state"].as_str().unwrap_or_default()) {
                return job;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "job {id} did not reach {states:?} within {within:?}: {job}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Milliseconds between two RFC 3339 times.
pub fn millis_between(from: &Value, to: &Value) -> i64 {
    let parse = |v: &Value| {
        chrono::DateTime::parse_from_rfc3339(v.as_str().expect("a time")).expect("RFC 3339")
    };
    (parse(to) - parse(from)).num_milliseconds()
}
