//! `errand`: serves the web app and runs the workers, in one process or (roles `web` and
//! `worker`) in several sharing Postgres.

use clap::Parser;
use errand_server::{Application, Config, Role, shutdown_signal};

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
