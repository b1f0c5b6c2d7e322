//! The job lifecycle on the real engine (SQLite files in a temporary data dir, apalis workers
//! running): retries, time-outs, panics, delays, idempotency, crash recovery, retention.
//! A test-only kind, `flaky`, fails on purpose in the ways a real handler can.

use errand_engine::{
    Engine, EngineConfig, FormFields, InvalidInput, Job, JobContext, JobError, JobKind, JobState,
    Kinds, Owner, Params, RetryPolicy, SubmitContext, SubmitOptions, now_ms,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::sync::oneshot;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct FlakyArgs {
    /// Attempts 1..=fail_times fail.
    #[serde(default)]
    fail_times: u32,
    #[serde(default)]
    permanent: bool,
    #[serde(default)]
    panic: bool,
    #[serde(default)]
    sleep_ms: u64,
}

struct Flaky;

impl JobKind for Flaky {
    const NAME: &'static str = "flaky";
    const POLICY: RetryPolicy = RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(200),
        timeout: Duration::from_millis(300),
    };
    type Args = FlakyArgs;

    fn from_form(_: &FormFields) -> Result<FlakyArgs, InvalidInput> {
        Ok(FlakyArgs::default())
    }

    fn validate(_: &FlakyArgs, _: &SubmitContext<'_>) -> Result<(), InvalidInput> {
        Ok(())
    }

    async fn run(&self, args: FlakyArgs, ctx: &JobContext) -> Result<Value, JobError> {
        tokio::time::sleep(Duration::from_millis(args.sleep_ms)).await;
        let attempt = ctx.attempt();
        if attempt <= args.fail_times {
            if args.panic {
                panic!("flaky panic {attempt}");
            }
            let message = format!("flaky failure {attempt}");
            return Err(if args.permanent {
                JobError::Permanent(message)
            } else {
                JobError::Retryable(message)
            });
        }
        Ok(json!({ "attempt": attempt }))
    }
}

struct Running {
    engine: Engine,
    stop: Option<oneshot::Sender<()>>,
    workers: Option<tokio::task::JoinHandle<Result<(), errand_engine::EngineError>>>,
    _dir: tempfile::TempDir,
}

async fn open(dir: &std::path::Path) -> Engine {
    let config = EngineConfig {
        shutdown_grace: Duration::from_secs(5),
        ..EngineConfig::new(dir)
    };
    Engine::open_with_kinds(config, Kinds::builtin(&[]).with(Flaky))
        .await
        .expect("engine opens")
}

fn start_workers(
    engine: &Engine,
) -> (
    oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), errand_engine::EngineError>>,
) {
    let (stop, stopped) = oneshot::channel::<()>();
    let engine = engine.clone();
    let name = format!("test-{}", ulid::Ulid::generate());
    let workers = tokio::spawn(async move {
        engine
            .run_workers(name, async {
                let _ = stopped.await;
            })
            .await
    });
    (stop, workers)
}

async fn running() -> Running {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = open(dir.path()).await;
    let (stop, workers) = start_workers(&engine);
    Running {
        engine,
        stop: Some(stop),
        workers: Some(workers),
        _dir: dir,
    }
}

impl Running {
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(workers) = self.workers.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), workers).await;
        }
    }
}

fn owner() -> Owner {
    Owner("tester".into())
}

async fn submit(
    engine: &Engine,
    kind: &str,
    params: Value,
    options: SubmitOptions,
) -> errand_engine::JobId {
    engine
        .submit(&owner(), kind, Params::Json(params), options)
        .await
        .expect("submit")
        .id
}

async fn wait_until(
    engine: &Engine,
    id: errand_engine::JobId,
    within: Duration,
    done: impl Fn(&Job) -> bool,
) -> Job {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let job = engine
            .job(&owner(), id)
            .await
            .expect("read")
            .expect("job exists");
        if done(&job) {
            return job;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting; job is {job:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn finished(engine: &Engine, id: errand_engine::JobId) -> Job {
    wait_until(engine, id, Duration::from_secs(10), |job| {
        job.state.is_terminal()
    })
    .await
}

#[tokio::test]
async fn a_retryable_failure_is_retried_with_backoff_until_it_succeeds() {
    let app = running().await;
    let id = submit(
        &app.engine,
        "flaky",
        json!({ "fail_times": 2 }),
        SubmitOptions::default(),
    )
    .await;
    let retrying = wait_until(&app.engine, id, Duration::from_secs(5), |j| {
        j.state == JobState::Queued && j.attempts == 1
    })
    .await;
    assert_eq!(
        retrying.error.as_deref(),
        Some("flaky failure 1"),
        "the last error stays visible"
    );
    assert!(
        retrying
            .run_at
            .is_some_and(|at| at > retrying.started_at.unwrap_or_default())
    );

    let job = finished(&app.engine, id).await;
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!((job.attempts, job.max_attempts), (3, 3));
    assert_eq!(job.result, Some(json!({ "attempt": 3 })));
    assert_eq!(job.error, None);
    let logs = app.engine.registry().logs(id).await.expect("logs");
    assert_eq!(
        logs.iter()
            .filter(|l| l.line.contains("retrying in"))
            .count(),
        2
    );
    app.stop().await;
}

#[tokio::test]
async fn a_job_fails_for_good_after_its_last_attempt() {
    let app = running().await;
    let id = submit(
        &app.engine,
        "flaky",
        json!({ "fail_times": 9 }),
        SubmitOptions::default(),
    )
    .await;
    let job = finished(&app.engine, id).await;
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.attempts, 3);
    assert_eq!(job.error.as_deref(), Some("flaky failure 3"));
    app.stop().await;
}

#[tokio::test]
async fn a_permanent_error_is_not_retried() {
    let app = running().await;
    let id = submit(
        &app.engine,
        "flaky",
        json!({ "fail_times": 1, "permanent": true }),
        SubmitOptions::default(),
    )
    .await;
    let job = finished(&app.engine, id).await;
    assert_eq!((job.state, job.attempts), (JobState::Failed, 1));
    app.stop().await;
}

#[tokio::test]
async fn a_panic_fails_the_attempt_and_the_worker_keeps_running() {
    let app = running().await;
    let id = submit(
        &app.engine,
        "flaky",
        json!({ "fail_times": 9, "panic": true }),
        SubmitOptions::default(),
    )
    .await;
    let job = finished(&app.engine, id).await;
    assert_eq!((job.state, job.attempts), (JobState::Failed, 3));
    assert!(
        job.error
            .as_deref()
            .is_some_and(|e| e.contains("panicked: flaky panic 3")),
        "{job:?}"
    );
    let after = submit(
        &app.engine,
        "sleep",
        json!({ "ms": 0 }),
        SubmitOptions::default(),
    )
    .await;
    assert_eq!(
        finished(&app.engine, after).await.state,
        JobState::Succeeded
    );
    app.stop().await;
}

#[tokio::test]
async fn an_attempt_past_its_timeout_fails_and_follows_the_retry_policy() {
    let app = running().await;
    let id = submit(
        &app.engine,
        "flaky",
        json!({ "sleep_ms": 2_000 }),
        SubmitOptions::default(),
    )
    .await;
    let job = finished(&app.engine, id).await;
    assert_eq!((job.state, job.attempts), (JobState::Failed, 3));
    assert_eq!(job.error.as_deref(), Some("timed out after 0.3 s"));
    app.stop().await;
}

#[tokio::test]
async fn a_delayed_job_starts_within_a_second_of_its_time() {
    let app = running().await;
    let run_at = now_ms() + 1_500;
    let id = submit(
        &app.engine,
        "sleep",
        json!({ "ms": 0 }),
        SubmitOptions {
            run_at: Some(run_at),
            ..Default::default()
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let early = app
        .engine
        .job(&owner(), id)
        .await
        .expect("read")
        .expect("job");
    assert_eq!(early.state, JobState::Queued, "not before its time");
    let job = finished(&app.engine, id).await;
    let started = job.started_at.expect("started");
    assert!(started >= run_at, "started {} ms early", run_at - started);
    assert!(
        started - run_at < 1_000,
        "started {} ms late",
        started - run_at
    );
    app.stop().await;
}

#[tokio::test]
async fn a_cancelled_scheduled_job_never_starts() {
    let app = running().await;
    let options = SubmitOptions {
        run_at: Some(now_ms() + 700),
        ..Default::default()
    };
    let id = submit(&app.engine, "sleep", json!({ "ms": 0 }), options).await;
    let outcome = app.engine.cancel(&owner(), id).await.expect("cancel");
    assert!(matches!(
        outcome,
        Some(errand_engine::CancelOutcome::Cancelled(_))
    ));
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let job = app
        .engine
        .job(&owner(), id)
        .await
        .expect("read")
        .expect("job");
    assert_eq!(
        (job.state, job.attempts, job.started_at),
        (JobState::Cancelled, 0, None)
    );
    app.stop().await;
}

#[tokio::test]
async fn the_same_idempotency_key_makes_one_job() {
    let app = running().await;
    let options = || SubmitOptions {
        idempotency_key: Some("form-123".into()),
        ..Default::default()
    };
    let first = app
        .engine
        .submit(
            &owner(),
            "sleep",
            Params::Json(json!({ "ms": 0 })),
            options(),
        )
        .await
        .expect("first");
    let second = app
        .engine
        .submit(
            &owner(),
            "sleep",
            Params::Json(json!({ "ms": 0 })),
            options(),
        )
        .await
        .expect("second");
    assert_eq!(first.id, second.id);
    assert!(!first.existing && second.existing);
    // Another owner's identical key is theirs alone.
    let other = app
        .engine
        .submit(
            &Owner("other".into()),
            "sleep",
            Params::Json(json!({ "ms": 0 })),
            options(),
        )
        .await
        .expect("other");
    assert_ne!(other.id, first.id);
    assert_eq!(
        app.engine
            .list(&errand_engine::JobFilter::owner(owner()), 10, None)
            .await
            .expect("list")
            .len(),
        1
    );
    app.stop().await;
}

#[tokio::test]
async fn jobs_a_crash_left_running_run_again_at_the_next_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let id = {
        let engine = open(dir.path()).await;
        let id = submit(
            &engine,
            "sleep",
            json!({ "ms": 50 }),
            SubmitOptions::default(),
        )
        .await;
        // What a crash mid-run leaves: the job marked running, no worker left to finish it.
        assert!(
            engine
                .registry()
                .start(id, 1)
                .await
                .expect("start")
                .is_some()
        );
        id
    };
    let engine = open(dir.path()).await;
    let (stop, workers) = start_workers(&engine);
    let job = finished(&engine, id).await;
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(job.attempts, 2, "the interrupted attempt counts");
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), workers).await;
}

#[tokio::test]
async fn a_thousand_concurrent_jobs_each_run_exactly_once() {
    let app = running().await;
    let submits = (0..1_000).map(|_| {
        let engine = app.engine.clone();
        tokio::spawn(async move {
            submit(
                &engine,
                "sleep",
                json!({ "ms": 0 }),
                SubmitOptions::default(),
            )
            .await
        })
    });
    let ids: Vec<_> = futures::future::join_all(submits)
        .await
        .into_iter()
        .map(|r| r.expect("join"))
        .collect();
    for id in ids {
        let job = wait_until(&app.engine, id, Duration::from_secs(60), |j| {
            j.state.is_terminal()
        })
        .await;
        assert_eq!(
            (job.state, job.attempts),
            (JobState::Succeeded, 1),
            "{job:?}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn finished_jobs_past_their_retention_are_purged_with_their_files() {
    let app = running().await;
    let done = submit(
        &app.engine,
        "sleep",
        json!({ "ms": 0 }),
        SubmitOptions::default(),
    )
    .await;
    finished(&app.engine, done).await;
    let out = app
        .engine
        .files()
        .job_dir(done)
        .expect("dir")
        .join("out.txt");
    std::fs::write(&out, "x").expect("write");
    let waiting = submit(
        &app.engine,
        "sleep",
        json!({ "ms": 0 }),
        SubmitOptions {
            run_at: Some(now_ms() + 60_000),
            ..Default::default()
        },
    )
    .await;

    assert_eq!(
        app.engine
            .purge_finished(Duration::from_secs(3600))
            .await
            .expect("purge"),
        0
    );
    assert_eq!(app.engine.queue().task_count().await.expect("count"), 2);
    // The queue keeps whole seconds.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let purged = app
        .engine
        .purge_finished(Duration::from_millis(1))
        .await
        .expect("purge");
    assert_eq!(purged, 1);
    let tasks = app.engine.queue().task_count().await.expect("count");
    assert_eq!(tasks, 1, "the finished task's queue record is gone");
    assert!(
        app.engine
            .job(&owner(), done)
            .await
            .expect("read")
            .is_none()
    );
    assert!(!out.exists());
    assert!(
        app.engine
            .job(&owner(), waiting)
            .await
            .expect("read")
            .is_some(),
        "unfinished jobs stay"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_failed_job_can_be_retried_by_hand_as_a_linked_new_job() {
    let app = running().await;
    let id = submit(
        &app.engine,
        "flaky",
        json!({ "fail_times": 1, "permanent": true }),
        SubmitOptions::default(),
    )
    .await;
    finished(&app.engine, id).await;
    let retried = app
        .engine
        .retry(&owner(), id)
        .await
        .expect("retry")
        .expect("found")
        .expect("retriable");
    let job = finished(&app.engine, retried).await;
    assert_eq!(job.retry_of, Some(id));
    // The same arguments fail on the first attempt again, permanently.
    assert_eq!(job.state, JobState::Failed);
    let detail = app
        .engine
        .job_with_logs(&owner(), id)
        .await
        .expect("read")
        .expect("job");
    assert_eq!(detail.retried_as, [retried]);

    let ok = submit(
        &app.engine,
        "sleep",
        json!({ "ms": 0 }),
        SubmitOptions::default(),
    )
    .await;
    finished(&app.engine, ok).await;
    assert_eq!(
        app.engine.retry(&owner(), ok).await.expect("retry"),
        Some(Err(JobState::Succeeded))
    );
    app.stop().await;
}
