//! Test support (feature `test-support`): a Postgres database of a test's own, created on the
//! server the tests use and dropped afterwards, even when the test fails. A missing server is a
//! failure, never a skip: the backends are part of what the tests check.

use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, Connection};

/// The server tests create their databases on; override with `ERRAND_TEST_POSTGRES`.
pub const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

fn admin_url() -> String {
    std::env::var("ERRAND_TEST_POSTGRES").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned())
}

/// A fresh, empty Postgres database, dropped with this value.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    url: String,
}

impl TestDatabase {
    /// Creates the database. Panics, failing the test, when the server cannot be reached.
    pub async fn create() -> Self {
        let admin = admin_url();
        let name = format!(
            "errand_test_{}",
            ulid::Ulid::generate().to_string().to_lowercase()
        );
        let mut conn = PgConnection::connect(&admin).await.unwrap_or_else(|err| {
            panic!("Postgres at {admin} is needed for these tests and is not reachable: {err}")
        });
        // The name is ours (a prefix and a ULID), never input.
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|err| panic!("could not create database {name}: {err}"));
        let _ = conn.close().await;
        let base = admin
            .rsplit_once('/')
            .map_or(admin.as_str(), |(base, _)| base);
        Self {
            url: format!("{base}/{name}"),
            name,
        }
    }

    /// The database's URL, for the registry and the queue.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop may run inside a runtime or during a panic: drop the database from a thread of
        // its own, with a runtime of its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|err| err.to_string())?;
            runtime.block_on(async move {
                let mut conn = PgConnection::connect(&admin_url())
                    .await
                    .map_err(|err| err.to_string())?;
                sqlx::query(AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut conn)
                .await
                .map_err(|err| err.to_string())?;
                Ok::<_, String>(())
            })
        })
        .join();
        if let Ok(Err(err)) | Err(err) = dropped.map_err(|_| "panicked".to_owned()) {
            eprintln!("could not drop test database {}: {err}", self.name);
        }
    }
}

/// The Redis server tests use; override with `ERRAND_TEST_REDIS`.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379/0";

fn redis_url() -> String {
    std::env::var("ERRAND_TEST_REDIS").unwrap_or_else(|_| DEFAULT_REDIS_URL.to_owned())
}

/// A key prefix of a test's own on the tests' Redis server; its keys are deleted with this value.
#[derive(Debug)]
pub struct TestRedis {
    prefix: String,
    url: String,
}

impl TestRedis {
    /// Checks the server answers and picks a fresh prefix. Panics, failing the test, when the
    /// server cannot be reached.
    pub async fn create() -> Self {
        let base = redis_url();
        let client = redis::Client::open(base.as_str()).expect("a valid Redis URL");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|err| {
                panic!("Redis at {base} is needed for these tests and is not reachable: {err}")
            });
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .expect("Redis answers PING");
        let prefix = format!(
            "errand-test-{}",
            ulid::Ulid::generate().to_string().to_lowercase()
        );
        let separator = if base.contains('?') { '&' } else { '?' };
        Self {
            url: format!("{base}{separator}prefix={prefix}"),
            prefix,
        }
    }

    /// The queue URL, with the prefix.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let pattern = format!("{}:*", self.prefix);
        let cleaned = std::thread::spawn(move || -> Result<(), String> {
            let client = redis::Client::open(redis_url()).map_err(|err| err.to_string())?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|err| err.to_string())?;
            runtime.block_on(async move {
                let mut conn = client
                    .get_multiplexed_async_connection()
                    .await
                    .map_err(|err| err.to_string())?;
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(&pattern)
                    .query_async(&mut conn)
                    .await
                    .map_err(|err| err.to_string())?;
                if !keys.is_empty() {
                    let _: () = redis::cmd("DEL")
                        .arg(&keys)
                        .query_async(&mut conn)
                        .await
                        .map_err(|err| err.to_string())?;
                }
                Ok(())
            })
        })
        .join();
        if let Ok(Err(err)) | Err(err) = cleaned.map_err(|_| "panicked".to_owned()) {
            eprintln!("could not delete test keys {}:*: {err}", self.prefix);
        }
    }
}
