//! Starting the errand binary under test on a free port with a fresh data dir, and reading its
//! memory from /proc.

use crate::Backend;
use anyhow::{Context, bail};
use errand_engine::testing::SharedStores;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// A running errand process.
pub(crate) struct Server {
    child: Child,
    pub(crate) base: String,
    pub(crate) cold_start: Duration,
    _data: tempfile::TempDir,
    /// The fresh Postgres database and Redis prefix, removed when the server is dropped.
    stores: Option<SharedStores>,
    /// `worker` processes sharing the stores, each with its data dir.
    workers: Vec<(Child, tempfile::TempDir)>,
}

/// The arguments that point a process at `stores`.
fn store_urls(stores: Option<&SharedStores>) -> Vec<String> {
    stores
        .iter()
        .flat_map(|stores| {
            [
                format!("--database-url={}", stores.database_url()),
                format!("--queue-url={}", stores.queue_url()),
            ]
        })
        .collect()
}

/// `binary` with the environment every process under test gets.
fn command(binary: &Path) -> Command {
    let mut command = Command::new(binary);
    command
        .env("RUST_LOG", "warn")
        // The load comes from one address and few sessions: the limits meant for visitors
        // would measure themselves.
        .env("ERRAND_SESSION_RATE", "0")
        .env("ERRAND_IP_RATE", "0")
        .env("ERRAND_SESSION_MAX_ACTIVE", "0")
        .stdout(Stdio::null())
        .kill_on_drop(true);
    command
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Server {
    /// Starts `binary` (run from `workdir`, so it finds `target/site`) and waits for its first
    /// 200 on `/`; the time that took is the cold start.
    pub(crate) async fn start(
        binary: &Path,
        workdir: &Path,
        backend: Backend,
        extra: &[String],
    ) -> anyhow::Result<Self> {
        Self::start_as(None, binary, workdir, backend, extra).await
    }

    /// [`Server::start`] in `role` (`web`: it serves and runs no jobs), when given.
    pub(crate) async fn start_as(
        role: Option<&str>,
        binary: &Path,
        workdir: &Path,
        backend: Backend,
        extra: &[String],
    ) -> anyhow::Result<Self> {
        let data = tempfile::tempdir()?;
        let stores = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(SharedStores::postgres().await),
            Backend::Redis => Some(SharedStores::redis().await),
        };
        let port = free_port()?;
        let started = Instant::now();
        let child = command(binary)
            .current_dir(workdir)
            .args(role)
            .args(["--addr", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(data.path())
            .args(store_urls(stores.as_ref()))
            .args(extra)
            .spawn()
            .with_context(|| format!("could not start {}", binary.display()))?;
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        while started.elapsed() < Duration::from_secs(30) {
            if let Ok(response) = http.get(format!("{base}/")).send().await
                && response.status().is_success()
            {
                let cold_start = started.elapsed();
                return Ok(Self {
                    child,
                    base,
                    cold_start,
                    _data: data,
                    stores,
                    workers: Vec::new(),
                });
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        bail!("errand did not answer on {base} within 30 s")
    }

    /// Starts a `worker` process of `binary` on this server's Postgres or Redis: it runs the
    /// jobs the server takes (a `web` server runs none itself).
    pub(crate) fn add_worker(&mut self, binary: &Path, extra: &[String]) -> anyhow::Result<()> {
        let stores = self
            .stores
            .as_ref()
            .context("worker processes share Postgres or Redis, not SQLite")?;
        let data = tempfile::tempdir()?;
        let child = command(binary)
            .args(["worker", "--data-dir"])
            .arg(data.path())
            .args(store_urls(Some(stores)))
            .args(extra)
            .spawn()
            .with_context(|| format!("could not start {}", binary.display()))?;
        self.workers.push((child, data));
        Ok(())
    }

    fn status_kb(&self, field: &str) -> Option<u64> {
        let pid = self.child.id()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find(|line| line.starts_with(field))
            .and_then(|line| line.split_whitespace().nth(1)?.parse().ok())
    }

    /// Resident memory now, in MB.
    pub(crate) fn rss_mb(&self) -> f64 {
        self.status_kb("VmRSS:")
            .map_or(f64::NAN, |kb| kb as f64 / 1024.0)
    }

    /// Peak resident memory so far, in MB.
    pub(crate) fn peak_rss_mb(&self) -> f64 {
        self.status_kb("VmHWM:")
            .map_or(f64::NAN, |kb| kb as f64 / 1024.0)
    }

    pub(crate) async fn stop(mut self) {
        for (worker, _) in &mut self.workers {
            let _ = worker.kill().await;
        }
        let _ = self.child.kill().await;
    }
}

/// Where the release binary is by default: the cargo target dir's `release/errand`.
pub(crate) fn default_binary() -> PathBuf {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from);
    target.join("release").join("errand")
}
