//! `errand`: serves the web app and runs the workers, in one process or (roles `web` and
//! `worker`) in several sharing Postgres.

use clap::Parser;
use errand_server::{Application, Config, Role, shutdown_signal};

/// mimalloc instead of the system allocator: under load a request's many small allocations
/// (headers, JSON, the job row) took ~20 % of the server's CPU in glibc's malloc and free.
/// Built without transparent huge pages (`no_thp`): with them the server idled at 46 MB instead
/// of 33 MB. BENCHMARKS.md has the before and after.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn,apalis=warn".into()),
        )
        .init();
    let config = Config::parse();
    let app = Application::build(config).await?;
    match app.role() {
        Role::Worker => tracing::info!("worker started"),
        role => tracing::info!(?role, "listening on http://{}", app.local_addr()),
    }
    app.run_until_stopped(shutdown_signal()).await
}
