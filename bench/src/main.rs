//! `errand-bench`: measures a built errand binary from outside, the way its users reach it, and
//! prints a table (and JSON). It builds nothing: build the release binary first
//! (`cargo leptos build --release --precompress --split`). Every scenario starts a fresh server on a free local port
//! with a fresh data dir, and checks that every job and event it waited for arrived.

mod client;
mod console;
mod faults;
mod limits;
mod priorities;
mod scenarios;
mod server;
mod stats;
mod vitals;
mod wrk;

use clap::{Parser, ValueEnum};
use serde_json::{Value, json};
use std::path::PathBuf;

/// Where the measured server keeps its jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Backend {
    /// SQLite files in the data dir (the default deployment).
    Sqlite,
    /// Registry and queue in a fresh Postgres database (dropped afterwards).
    Postgres,
    /// Registry in a fresh Postgres database, queue in Redis under a fresh key prefix.
    Redis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scale {
    /// A few hundred jobs and subscribers: checks the tool and the server still work (CI).
    Tiny,
    /// The counts BENCHMARKS.md reports.
    Full,
}

#[derive(Debug, Parser)]
#[command(
    about = "Measure errand: enqueue rate, latency, pickup, drain, push, fan-out, memory, page weight, faults, the console at size, what limits and priorities cost, web vitals in Chromium."
)]
struct Args {
    /// The errand binary to measure (default: $CARGO_TARGET_DIR/release/errand).
    #[arg(long)]
    errand: Option<PathBuf>,
    /// Folder errand runs in (a build that does not carry its site serves `target/site` from
    /// there; `errand --version` tells).
    #[arg(long, default_value = ".")]
    workdir: PathBuf,
    #[arg(long, value_enum, default_value = "full")]
    scale: Scale,
    /// Only these scenarios (numbers 1–15; 15 on Postgres or Redis only); all when not given.
    #[arg(long, value_delimiter = ',')]
    only: Vec<u8>,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Where the server keeps its jobs: a fresh database (and key prefix) per scenario on the
    /// local Postgres and Redis (`ERRAND_TEST_POSTGRES`, `ERRAND_TEST_REDIS` point elsewhere).
    #[arg(long, value_enum, default_value = "sqlite")]
    backend: Backend,
    /// Extra arguments for errand (e.g. `--concurrency=64`).
    #[arg(long, allow_hyphen_values = true)]
    errand_arg: Vec<String>,
}

/// What every scenario needs to start a server.
pub(crate) struct Context {
    binary: PathBuf,
    workdir: PathBuf,
    backend: Backend,
    extra: Vec<String>,
}

impl Context {
    pub(crate) async fn start(&self) -> anyhow::Result<server::Server> {
        self.start_with(&[]).await
    }

    /// A `web` process (it serves and runs no jobs) and `workers` `worker` processes sharing
    /// its Postgres or Redis.
    pub(crate) async fn start_split(&self, workers: usize) -> anyhow::Result<server::Server> {
        let mut server = server::Server::start_as(
            Some("web"),
            &self.binary,
            &self.workdir,
            self.backend,
            &self.extra,
        )
        .await?;
        for _ in 0..workers {
            server.add_worker(&self.binary, &self.extra)?;
        }
        Ok(server)
    }

    /// [`Context::start`] with more arguments for errand (before the command line's).
    pub(crate) async fn start_with(&self, args: &[String]) -> anyhow::Result<server::Server> {
        let extra: Vec<String> = args.iter().chain(&self.extra).cloned().collect();
        server::Server::start(&self.binary, &self.workdir, self.backend, &extra).await
    }
}

/// One line of the report.
pub(crate) struct Row {
    name: String,
    headline: String,
    data: Value,
}

impl Row {
    pub(crate) fn new(name: String, data: Value) -> Self {
        Self {
            name,
            headline: String::new(),
            data,
        }
    }

    pub(crate) fn headline(mut self, text: String) -> Self {
        self.headline = text;
        self
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Thousands of event streams need thousands of sockets, here and in the child process.
    let files = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0);
    println!("open-files limit raised to {files} (inherited by the errand process)");
    let cx = Context {
        binary: args.errand.unwrap_or_else(server::default_binary),
        workdir: args.workdir,
        backend: args.backend,
        extra: args.errand_arg,
    };
    println!("backend: {:?}", args.backend);
    let full = args.scale == Scale::Full;
    let pick = |n: u8| args.only.is_empty() || args.only.contains(&n);
    let (enqueue, e2e, pickup, drain, reports, fanout) = if full {
        (20_000, 5_000, 200, 50_000, 100, 10_000)
    } else {
        (300, 100, 20, 300, 20, 200)
    };
    // Scenarios 9 and 10: stray event-stream requests, and the bytes of a poison CSV header.
    let (strays, poison) = if full {
        (100_000, 99_999_999)
    } else {
        (500, 2_000_000)
    };

    // Scenario 11: jobs in the registry, and how many of them failed.
    let (registry, failed) = if full {
        (1_000_000, 100_000)
    } else {
        (2_000, 200)
    };

    let mut rows = Vec::new();
    if pick(1) {
        rows.push(scenarios::enqueue(&cx, enqueue, 32).await?);
        rows.push(scenarios::enqueue(&cx, enqueue, 256).await?);
        let seconds = if full { 10 } else { 2 };
        rows.push(wrk::enqueue(&cx, std::time::Duration::from_secs(seconds), 256).await?);
    }
    if pick(2) {
        rows.push(scenarios::end_to_end(&cx, e2e, true).await?);
        rows.push(scenarios::end_to_end(&cx, e2e, false).await?);
    }
    if pick(3) {
        rows.push(scenarios::idle_pickup(&cx, pickup).await?);
    }
    if pick(4) {
        rows.push(scenarios::processing(&cx, drain).await?);
    }
    if pick(5) {
        rows.push(scenarios::push_latency(&cx, reports).await?);
    }
    if pick(6) {
        rows.push(scenarios::fan_out(&cx, fanout, false).await?);
        rows.push(scenarios::fan_out(&cx, fanout, true).await?);
    }
    if pick(7) {
        rows.push(scenarios::memory(&cx).await?);
    }
    if pick(8) {
        rows.push(scenarios::page_weight(&cx).await?);
    }
    if pick(9) {
        rows.push(faults::stray_streams(&cx, strays).await?);
    }
    if pick(10) {
        rows.push(faults::poison_csv(&cx, poison).await?);
    }
    if pick(11) {
        rows.push(console::at_size(&cx, registry, failed).await?);
    }
    if pick(12) {
        rows.push(limits::cost(&cx, drain).await?);
    }
    if pick(13) {
        rows.push(priorities::cost(&cx, drain).await?);
    }
    if pick(14) {
        rows.push(vitals::web_vitals(&cx, if full { 5 } else { 1 }).await?);
    }
    // Worker processes share Postgres or Redis; on SQLite there is one process.
    if pick(15) && args.backend != Backend::Sqlite {
        rows.push(scenarios::scale_out(&cx, drain).await?);
    }

    println!("\n| scenario | result |\n|---|---|");
    for row in &rows {
        println!("| {} | {} |", row.name, row.headline);
    }
    if let Some(path) = args.json {
        let report: serde_json::Map<String, Value> = rows
            .iter()
            .map(|r| (r.name.clone(), r.data.clone()))
            .collect();
        let report = json!({
            "scale": format!("{:?}", args.scale).to_lowercase(),
            "backend": format!("{:?}", args.backend).to_lowercase(),
            "results": report,
        });
        std::fs::write(&path, serde_json::to_vec_pretty(&report)?)?;
        println!("\nJSON written to {}", path.display());
    }
    Ok(())
}
