//! Test support (feature `test-support`): a Postgres database of a test's own, created on the
//! server the tests use and dropped afterwards, even when the test fails. A missing server is a
//! failure, never a skip: the backends are part of what the tests check.

use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, Connection};

/// Runs `engine`'s workers in a task of their own until the returned sender fires (or is
/// dropped); the handle gives the workers' end.
pub fn start_workers(
    engine: &crate::Engine,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), crate::EngineError>>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let engine = engine.clone();
    let workers = tokio::spawn(async move {
        engine
            .run_workers(async {
                let _ = stopped.await;
            })
            .await
    });
    (stop, workers)
}

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
        let dropped = on_own_runtime(async move {
            let mut conn = PgConnection::connect(&admin_url())
                .await
                .map_err(|err| err.to_string())?;
            sqlx::query(AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&mut conn)
            .await
            .map_err(|err| err.to_string())?;
            Ok(())
        });
        if let Err(err) = dropped {
            eprintln!("could not drop test database {}: {err}", self.name);
        }
    }
}

/// Runs `work` to its end on a thread and runtime of its own: `Drop` may run inside a runtime,
/// or while a test panics, where blocking on the current one is not allowed.
fn on_own_runtime(
    work: impl std::future::Future<Output = Result<(), String>> + Send + 'static,
) -> Result<(), String> {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|err| err.to_string())?
            .block_on(work)
    })
    .join()
    .unwrap_or_else(|_| Err("the cleanup thread panicked".to_owned()))
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
        let cleaned = on_own_runtime(async move {
            let client = redis::Client::open(redis_url()).map_err(|err| err.to_string())?;
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
        });
        if let Err(err) = cleaned {
            eprintln!("could not delete test keys {}:*: {err}", self.prefix);
        }
    }
}

/// Where processes sharing jobs keep them in a test: a fresh Postgres database for the registry
/// and, for a Redis queue, a fresh key prefix; otherwise the queue is in the database too.
#[derive(Debug)]
pub struct SharedStores {
    database: TestDatabase,
    redis: Option<TestRedis>,
}

impl SharedStores {
    /// Registry and queue on Postgres.
    pub async fn postgres() -> Self {
        Self {
            database: TestDatabase::create().await,
            redis: None,
        }
    }

    /// Registry on Postgres, queue on Redis.
    pub async fn redis() -> Self {
        Self {
            database: TestDatabase::create().await,
            redis: Some(TestRedis::create().await),
        }
    }

    /// The registry's URL.
    pub fn database_url(&self) -> &str {
        self.database.url()
    }

    /// The queue's URL.
    pub fn queue_url(&self) -> &str {
        self.redis
            .as_ref()
            .map_or(self.database.url(), |redis| redis.url())
    }
}
