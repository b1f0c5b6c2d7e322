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
    _stores: Option<SharedStores>,
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
        let data = tempfile::tempdir()?;
        let stores = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(SharedStores::postgres().await),
            Backend::Redis => Some(SharedStores::redis().await),
        };
        let urls = stores.iter().flat_map(|stores| {
            [
                format!("--database-url={}", stores.database_url()),
                format!("--queue-url={}", stores.queue_url()),
            ]
        });
        let port = free_port()?;
        let started = Instant::now();
        let child = Command::new(binary)
            .current_dir(workdir)
            .args(["--addr", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(data.path())
            .args(urls)
            .args(extra)
            .env("RUST_LOG", "warn")
            // The load comes from one address and few sessions: the limits meant for visitors
            // would measure themselves.
            .env("ERRAND_SESSION_RATE", "0")
            .env("ERRAND_IP_RATE", "0")
            .env("ERRAND_SESSION_MAX_ACTIVE", "0")
            .stdout(Stdio::null())
            .kill_on_drop(true)
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
                    _stores: stores,
                });
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        bail!("errand did not answer on {base} within 30 s")
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
        let _ = self.child.kill().await;
    }
}

/// Where the release binary is by default: the cargo target dir's `release/errand`.
pub(crate) fn default_binary() -> PathBuf {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from);
    target.join("release").join("errand")
}
