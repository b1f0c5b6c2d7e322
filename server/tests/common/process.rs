//! The real `errand` binary as a child process: started on a data dir (and shared stores),
//! reached over HTTP, stopped with SIGTERM or killed.

use super::Client;
use errand_engine::testing::SharedStores;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Server {
    pub child: Child,
    pub client: Client,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Starts `errand` on `data_dir` and waits until it answers; `http` keeps the browser session.
pub async fn start(data_dir: &Path, http: reqwest::Client) -> Server {
    start_with(&[], data_dir, http).await
}

/// Starts `errand` with `args` before the usual ones, and waits until it answers.
pub async fn start_with(args: &[&str], data_dir: &Path, http: reqwest::Client) -> Server {
    let port = free_port();
    let mut child = spawn(args, data_dir, &["--addr", &format!("127.0.0.1:{port}")]);
    let client = Client {
        base: format!("http://127.0.0.1:{port}"),
        http,
    };
    // Ready when it answers; the answer starts the client's session, so that every request of
    // its concurrent connections shares it.
    for _ in 0..200 {
        if client
            .http
            .post(client.url("/api/session"))
            .send()
            .await
            .is_ok_and(|answer| answer.status().is_success())
        {
            return Server { child, client };
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("errand did not answer within 10 s");
}

/// Spawns `errand` with `args`, the data dir and `more`.
pub fn spawn(args: &[&str], data_dir: &Path, more: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_errand"))
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .args(more)
        .env("RUST_LOG", "warn")
        // The fault scenarios drive thousands of jobs from one address.
        .env("ERRAND_SESSION_RATE", "0")
        .env("ERRAND_IP_RATE", "0")
        .env("ERRAND_SESSION_MAX_ACTIVE", "0")
        .stdout(Stdio::null())
        .spawn()
        .expect("errand starts")
}

/// The arguments for a process of `role` sharing `stores`.
pub fn shared<'a>(stores: &'a SharedStores, role: &'a str) -> [&'a str; 5] {
    [
        role,
        "--database-url",
        stores.database_url(),
        "--queue-url",
        stores.queue_url(),
    ]
}

pub fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .expect("client")
}

/// Sends SIGTERM and waits for the process to exit.
pub async fn terminate(mut server: Server) {
    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    for _ in 0..400 {
        if server.child.try_wait().expect("wait").is_some() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = server.child.kill();
    panic!("errand did not exit within 20 s of SIGTERM");
}
