//! Configuration: defaults, overridden by environment variables (`ERRAND_…`, and cargo-leptos's
//! `LEPTOS_SITE_ADDR` / `LEPTOS_SITE_ROOT`), overridden by flags.

use clap::{Parser, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;

/// The version, the commit the binary was built from and whether it carries the site
/// (`errand --version`).
pub(crate) const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("ERRAND_COMMIT"),
    ", ",
    env!("ERRAND_SITE"),
    ")"
);

#[derive(Debug, Clone, Parser)]
#[command(
    name = "errand",
    version = VERSION,
    about = "Hand long work to background workers and watch it live."
)]
pub struct Config {
    /// What this process does: `serve` (pages, API and workers; the default), `web` (pages and
    /// API only) or `worker` (runs jobs only). `web` and `worker` processes share jobs through
    /// Postgres (`--database-url` and `--queue-url`).
    #[arg(value_enum, env = "ERRAND_ROLE", default_value_t = Role::Serve)]
    pub role: Role,

    /// Where the job registry lives: `sqlite://…` or `postgres://…`. Default: `errand.db` in
    /// the data dir.
    #[arg(long, env = "ERRAND_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Where the job queue lives: `sqlite://…` or `postgres://…`. Default: `queue.db` in the
    /// data dir.
    #[arg(long, env = "ERRAND_QUEUE_URL", hide_env_values = true)]
    pub queue_url: Option<String>,

    /// Address to listen on (port 0 picks a free port); not used by the `worker` role.
    #[arg(long, env = "LEPTOS_SITE_ADDR", default_value = "127.0.0.1:3000")]
    pub addr: SocketAddr,

    /// Folder for the job registry, the queue and the session key; created on first start.
    #[arg(long, env = "ERRAND_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,

    /// Folder holding the built browser assets (`pkg/`), as cargo-leptos writes them; only
    /// for builds that do not carry the site (debug builds; `errand --version` tells).
    #[arg(long, env = "LEPTOS_SITE_ROOT", default_value = "target/site")]
    pub site_root: PathBuf,

    /// Key that signs session cookies: at least 64 bytes, hex-encoded. Generated into the data
    /// dir on first start when not given.
    #[arg(long, env = "ERRAND_SESSION_KEY", hide_env_values = true)]
    pub session_key: Option<String>,

    /// How many jobs this process runs at once (CPU-heavy kinds also wait for one of the
    /// process's per-core slots).
    #[arg(long, env = "ERRAND_CONCURRENCY", default_value_t = 64)]
    pub concurrency: usize,

    /// Seconds that shutdown waits for running jobs.
    #[arg(long, env = "ERRAND_SHUTDOWN_GRACE", default_value_t = 30)]
    pub shutdown_grace: u64,

    /// Days a finished job (with its log and files) is kept before it is deleted.
    #[arg(long, env = "ERRAND_RETENTION_DAYS", default_value_t = 7.0)]
    pub retention_days: f64,

    /// Seconds an upload no job reads is kept (uploaded and never used, or its jobs deleted).
    #[arg(long, env = "ERRAND_UPLOAD_TTL", default_value_t = 3600)]
    pub upload_ttl: u64,

    /// The address people open Errand at, when it runs behind a proxy (e.g.
    /// `https://jobs.example.com`): the only origin whose pages may send forms and API requests
    /// here, and, when it is https, session cookies are sent only over TLS. Without it, a
    /// request's `Host` header names the site.
    #[arg(long, env = "ERRAND_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// Take the client's address from the last `X-Forwarded-For` entry (set this only behind a
    /// proxy that sets the header; otherwise clients could pick their own address).
    #[arg(long, env = "ERRAND_TRUST_FORWARDED", default_value_t = false)]
    pub trust_forwarded: bool,

    /// Requests that make work (submits, retries, uploads) one session may send per second, on
    /// average; 0 turns the limit off.
    #[arg(long, env = "ERRAND_SESSION_RATE", default_value_t = 5)]
    pub session_rate: u32,

    /// How many such requests one session may send at once before its rate applies.
    #[arg(long, env = "ERRAND_SESSION_BURST", default_value_t = 30)]
    pub session_burst: u32,

    /// Requests that make work one client address may send per second, on average, over all
    /// its sessions; 0 turns the limit off.
    #[arg(long, env = "ERRAND_IP_RATE", default_value_t = 20)]
    pub ip_rate: u32,

    /// How many such requests one client address may send at once before its rate applies.
    #[arg(long, env = "ERRAND_IP_BURST", default_value_t = 100)]
    pub ip_burst: u32,

    /// Most jobs one session may have queued or running at once; 0 turns the quota off.
    #[arg(long, env = "ERRAND_SESSION_MAX_ACTIVE", default_value_t = 200)]
    pub session_max_active: u32,

    /// Most megabytes of uploads one session may keep stored (uploads go with their jobs);
    /// 0 turns the quota off.
    #[arg(long, env = "ERRAND_SESSION_MAX_UPLOAD_MB", default_value_t = 1000)]
    pub session_max_upload_mb: u64,

    /// Turns the operators' console (`/admin`) on with this password for the `admin` role,
    /// which may act (retry, cancel, delete, pause, bulk actions). Kept in memory only as an
    /// argon2 hash.
    #[arg(long, env = "ERRAND_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<String>,

    /// Reads the admin password from this file instead (its first line).
    #[arg(long, env = "ERRAND_ADMIN_PASSWORD_FILE")]
    pub admin_password_file: Option<PathBuf>,

    /// Adds a `viewer` role to the console with this password: it sees everything and can
    /// change nothing.
    #[arg(long, env = "ERRAND_VIEWER_PASSWORD", hide_env_values = true)]
    pub viewer_password: Option<String>,

    /// Reads the viewer password from this file instead.
    #[arg(long, env = "ERRAND_VIEWER_PASSWORD_FILE")]
    pub viewer_password_file: Option<PathBuf>,

    /// Serves `/metrics`, `/healthz` and `/readyz` on this address too, with no login (keep it
    /// private); `/metrics` then leaves the main address. Without it, `/metrics` is on the main
    /// address for the console's passwords (as a bearer token). Works in every role, `worker`
    /// included.
    #[arg(long, env = "ERRAND_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    /// Internal IP addresses (comma-separated) that webhook jobs may call despite the rule
    /// against loopback, private and link-local addresses, e.g. `127.0.0.1` for a local receiver.
    #[arg(long, env = "ERRAND_WEBHOOK_ALLOW", value_delimiter = ',')]
    pub webhook_allow: Vec<std::net::IpAddr>,

    /// A TOML file of recurring jobs (`[[schedule]]` tables: name, cron, timezone, kind, params,
    /// missed), run by every process that runs workers; README has an example.
    #[arg(long, env = "ERRAND_SCHEDULES")]
    pub schedules: Option<PathBuf>,

    /// A TOML file of concurrency and rate limits (`[[limit]]` tables: kind, per_key,
    /// concurrency, rate, burst), enforced across every process sharing the registry; give
    /// every worker process the same file. README has an example.
    #[arg(long, env = "ERRAND_LIMITS")]
    pub limits: Option<PathBuf>,

    /// Seconds a queued job waits before its priority rises one level (so a steady stream of
    /// higher-priority jobs cannot hold it back for ever); give every process the same.
    #[arg(long, env = "ERRAND_PRIORITY_AGING", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub priority_aging: u64,
}

/// What one process of a deployment does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// Pages, API and workers in one process.
    Serve,
    /// Pages and API only; jobs run in `worker` processes.
    Web,
    /// Runs jobs only.
    Worker,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Serve => "serve",
            Role::Web => "web",
            Role::Worker => "worker",
        }
    }

    pub fn serves_http(self) -> bool {
        self != Role::Worker
    }

    pub fn runs_jobs(self) -> bool {
        self != Role::Web
    }
}

impl Config {
    /// Defaults for a data dir, listening on a free local port (for tests).
    pub fn for_tests(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            role: Role::Serve,
            database_url: None,
            queue_url: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: data_dir.into(),
            site_root: PathBuf::from("target/site"),
            session_key: None,
            concurrency: 64,
            shutdown_grace: 5,
            retention_days: 7.0,
            upload_ttl: 3600,
            public_url: None,
            trust_forwarded: false,
            // Tests drive many requests from one address and session; the limits have tests
            // of their own that turn them on.
            session_rate: 0,
            session_burst: 30,
            ip_rate: 0,
            ip_burst: 100,
            session_max_active: 0,
            session_max_upload_mb: 1000,
            admin_password: None,
            admin_password_file: None,
            viewer_password: None,
            viewer_password_file: None,
            metrics_addr: None,
            webhook_allow: vec![std::net::IpAddr::from([127, 0, 0, 1])],
            schedules: None,
            limits: None,
            priority_aging: 60,
        }
    }
}
