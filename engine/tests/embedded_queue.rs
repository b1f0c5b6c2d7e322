//! The embedded default (SQLite, no URLs): the queue's table lives in the registry's file, a
//! submit writes the job and its task in one transaction, and an earlier version's separate
//! `queue.db` is taken over at start.

use errand_engine::{Engine, EngineConfig, JobState, Owner, Params, SubmitOptions};
use serde_json::json;
use std::time::Duration;

fn owner() -> Owner {
    Owner("tester".into())
}

async fn submit_sleep(engine: &Engine) -> errand_engine::JobId {
    engine
        .submit(
            &owner(),
            "sleep",
            Params::Json(json!({ "ms": 0 })),
            SubmitOptions::default(),
        )
        .await
        .expect("submit")
        .id
}

/// Rows of `table` in the SQLite file at `path`, read over a connection of the test's own.
async fn rows(path: &std::path::Path, table: &str) -> i64 {
    use sqlx::ConnectOptions;
    let mut connection = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .connect()
        .await
        .expect("open the file");
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
        .fetch_one(&mut connection)
        .await
        .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_writes_the_job_and_its_task_into_one_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = Engine::open(EngineConfig::new(dir.path()))
        .await
        .expect("engine opens");
    assert!(engine.registry().writes_tasks());
    for _ in 0..3 {
        submit_sleep(&engine).await;
    }
    let file = dir.path().join("errand.db");
    assert_eq!(rows(&file, "jobs").await, 3);
    assert_eq!(
        rows(&file, "errand_tasks").await,
        3,
        "each job's task is in the same file"
    );
    assert!(!dir.path().join("queue.db").exists(), "no second file");
    assert_eq!(engine.queue().task_count().await.expect("count"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tasks_of_an_earlier_queue_file_are_taken_over_and_run() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = |name: &str| format!("sqlite://{}?mode=rwc", dir.path().join(name).display());
    // The earlier layout: the registry and the queue in two files.
    let earlier = Engine::open(EngineConfig {
        database_url: Some(url("errand.db")),
        queue_url: Some(url("queue.db")),
        ..EngineConfig::new(dir.path())
    })
    .await
    .expect("engine opens");
    assert!(!earlier.registry().writes_tasks());
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(submit_sleep(&earlier).await);
    }
    drop(earlier);
    assert_eq!(rows(&dir.path().join("queue.db"), "errand_tasks").await, 3);

    let engine = Engine::open(EngineConfig::new(dir.path()))
        .await
        .expect("engine opens");
    assert!(
        !dir.path().join("queue.db").exists(),
        "the old file is gone"
    );
    assert_eq!(engine.queue().task_count().await.expect("count"), 3);
    let (stop, workers) = errand_engine::testing::start_workers(&engine);
    // Well before the reconciler's 30 s: the moved tasks themselves run.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for id in ids {
        loop {
            let job = engine.job(&owner(), id).await.expect("read").expect("job");
            if job.state == JobState::Succeeded {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{id} is {:?}",
                job.state
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), workers).await;
}
