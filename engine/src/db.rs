//! The database connections the registry and the queue both open: SQLite files tuned the same
//! way, and Postgres pools.

use sqlx::SqlitePool;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use std::time::Duration;

/// True for `postgres://…` and `postgresql://…` URLs.
pub(crate) fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// True for `sqlite:…` URLs.
pub(crate) fn is_sqlite(url: &str) -> bool {
    url.starts_with("sqlite:")
}

/// Opens (creating if needed) a SQLite file: write-ahead log, durable at each commit's end
/// (`NORMAL`), waiting up to 5 s for a lock instead of failing.
pub(crate) async fn sqlite(options: SqliteConnectOptions) -> Result<SqlitePool, sqlx::Error> {
    let options = options
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(5))
        .pragma("temp_store", "memory");
    SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
}

/// Begins a SQLite transaction that writes: `BEGIN IMMEDIATE` takes the write lock at once
/// (waiting for it with the busy timeout). A deferred `BEGIN` would take a read snapshot first,
/// and when another connection commits while it waits for the lock, SQLite fails the upgrade at
/// once ("database is locked") instead of waiting.
pub(crate) async fn write_transaction(
    pool: &SqlitePool,
) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
    pool.begin_with("BEGIN IMMEDIATE").await
}

/// Connects to Postgres at `url`.
pub(crate) async fn postgres(url: &str) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
}
