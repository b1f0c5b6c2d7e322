//! The conformance suite: the job lifecycle on the real engine with apalis workers running —
//! retries, time-outs, panics, delays, cancellation, idempotency, crash recovery, retention, live
//! events — once per backend, with the same test functions: SQLite files in a temporary data dir,
//! and a Postgres database of the test's own (a missing server fails the tests).
//! A test-only kind, `flaky`, fails on purpose in the ways a real handler can.

use errand_engine::testing::{SharedStores, start_workers};
use errand_engine::{
    BulkAction, CancelOutcome, ConsoleError, Engine, EngineConfig, FormFields, InvalidInput, Job,
    JobContext, JobError, JobEvent, JobKind, JobQuery, JobState, Kinds, Operator, Owner, Params,
    RetryPolicy, Role, SubmitContext, SubmitOptions, Topic, now_ms,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::sync::oneshot;

/// Runs each named test function once per backend: `sqlite::name`, `postgres::name` and
/// `redis::name` (a Redis queue with a Postgres registry).
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Postgres).await
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Redis).await
                }
            )*
        }
    };
}

conformance!(
    a_retryable_failure_is_retried_with_backoff_until_it_succeeds,
    a_job_fails_for_good_after_its_last_attempt,
    a_permanent_error_is_not_retried,
    a_panic_fails_the_attempt_and_the_worker_keeps_running,
    an_attempt_past_its_timeout_fails_and_follows_the_retry_policy,
    a_delayed_job_starts_within_a_second_of_its_time,
    a_cancelled_scheduled_job_never_starts,
    the_same_idempotency_key_makes_one_job,
    jobs_a_crash_left_running_run_again_at_the_next_start,
    a_thousand_concurrent_jobs_each_run_and_are_counted_exactly_once,
    finished_jobs_past_their_retention_are_purged_with_their_files,
    a_failed_job_can_be_retried_by_hand_as_a_linked_new_job,
    a_running_job_is_cancelled_within_a_second_from_any_process,
    a_page_on_any_process_sees_live_progress,
    a_dead_workers_jobs_run_again_within_30_s,
    a_backlog_of_20_000_jobs_drains_completely,
    shutdown_lets_running_jobs_finish_in_the_grace_period_and_requeues_the_rest,
    a_job_whose_worker_died_on_its_last_attempt_fails_instead_of_running_again,
    a_queued_job_that_no_task_covers_is_pushed_again_by_the_reconciler,
    a_result_over_the_limit_fails_the_job_at_once,
    a_taken_back_attempt_cannot_write_to_the_log_of_the_next,
    an_owner_over_its_quota_of_active_jobs_is_refused_until_one_finishes,
    the_console_finds_every_owners_jobs_by_state_kind_owner_and_words,
    a_paused_kind_waits_and_runs_after_it_is_resumed,
    a_bulk_retry_retries_each_failed_job_once_and_is_audited,
    a_schedule_makes_exactly_one_job_per_tick_however_many_processes_run_it,
    a_per_key_concurrency_limit_holds_across_processes_and_waiting_holds_no_worker,
    a_rate_limit_starts_a_keys_jobs_at_its_rate,
    a_paused_schedule_skips_its_ticks_and_an_operator_may_run_it_now,
    a_job_waiting_for_a_slot_runs_after_a_restart_without_the_limit,
    higher_priorities_run_first_and_equal_ones_in_order_of_their_time,
    a_low_priority_job_still_runs_under_a_steady_stream_of_higher_ones,
    a_priority_outside_1_to_9_is_refused_and_a_retry_keeps_its_priority,
    the_jobs_ahead_of_a_queued_job_are_those_of_higher_priority_and_its_own_before_it,
);

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
    /// Succeed with a string result of this many bytes.
    #[serde(default)]
    result_bytes: usize,
    /// The job's key, for limits per key.
    #[serde(default)]
    key: Option<String>,
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
    const KEY: Option<&'static str> = Some("key");
    type Args = FlakyArgs;

    fn key(args: &FlakyArgs) -> Option<String> {
        args.key.clone()
    }

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
        if args.result_bytes > 0 {
            return Ok(Value::String("r".repeat(args.result_bytes)));
        }
        Ok(json!({ "attempt": attempt }))
    }
}

/// Where a test's jobs live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
    Redis,
}

/// One test's storage: a temporary data dir and, on the shared backends, a Postgres database of
/// its own for the registry (and the queue) and a Redis key prefix of its own for the queue, all
/// removed afterwards.
struct Store {
    dir: tempfile::TempDir,
    shared: Option<SharedStores>,
}

impl Store {
    async fn new(backend: Backend) -> Self {
        let shared = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(SharedStores::postgres().await),
            Backend::Redis => Some(SharedStores::redis().await),
        };
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
            shared,
        }
    }

    fn config(&self) -> EngineConfig {
        EngineConfig {
            shutdown_grace: Duration::from_secs(5),
            database_url: self.shared.as_ref().map(|s| s.database_url().to_owned()),
            queue_url: self.shared.as_ref().map(|s| s.queue_url().to_owned()),
            ..EngineConfig::new(self.dir.path())
        }
    }
}

struct Running {
    engine: Engine,
    stop: Option<oneshot::Sender<()>>,
    workers: Option<tokio::task::JoinHandle<Result<(), errand_engine::EngineError>>>,
    store: Store,
}

async fn open(store: &Store) -> Engine {
    open_with(store.config()).await
}

/// An engine with the test kinds on `config`.
async fn open_with(config: EngineConfig) -> Engine {
    Engine::open_with_kinds(config, Kinds::builtin(&[]).with(Flaky))
        .await
        .expect("engine opens")
}

async fn running(backend: Backend) -> Running {
    let store = Store::new(backend).await;
    let engine = open(&store).await;
    let (stop, workers) = start_workers(&engine);
    Running {
        engine,
        stop: Some(stop),
        workers: Some(workers),
        store,
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
        let job = job(engine, id).await;
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

/// The job as the registry has it now.
async fn job(engine: &Engine, id: errand_engine::JobId) -> Job {
    engine
        .job(&owner(), id)
        .await
        .expect("read")
        .expect("job exists")
}

async fn finished(engine: &Engine, id: errand_engine::JobId) -> Job {
    wait_until(engine, id, Duration::from_secs(10), |job| {
        job.state.is_terminal()
    })
    .await
}

async fn a_retryable_failure_is_retried_with_backoff_until_it_succeeds(backend: Backend) {
    let app = running(backend).await;
    // The retry waits only 50–200 ms: watch the changes rather than poll for that window.
    let mut changes = app.engine.subscribe(Topic::Owner(owner()));
    let id = submit(
        &app.engine,
        "flaky",
        json!({ "fail_times": 2 }),
        SubmitOptions::default(),
    )
    .await;
    let retrying = loop {
        let event = tokio::time::timeout(Duration::from_secs(5), changes.recv())
            .await
            .expect("the job changes within 5 s")
            .expect("the watch stays open");
        if let JobEvent::Changed(job) = event
            && job.id == id
            && job.state == JobState::Queued
            && job.attempts == 1
        {
            break (*job).clone();
        }
    };
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
    // Each attempt is on record: where it ran, when, and how it ended.
    let attempts = app.engine.registry().attempts(id).await.expect("attempts");
    let outcomes: Vec<_> = attempts
        .iter()
        .map(|a| (a.attempt, a.outcome.as_deref(), a.error.as_deref()))
        .collect();
    assert_eq!(
        outcomes,
        [
            (1, Some("retried"), Some("flaky failure 1")),
            (2, Some("retried"), Some("flaky failure 2")),
            (3, Some("succeeded"), None),
        ]
    );
    for attempt in &attempts {
        assert!(attempt.worker.is_some(), "{attempt:?}");
        assert!(
            attempt
                .ended_at
                .is_some_and(|ended| ended >= attempt.started_at && attempt.started_at > 0),
            "{attempt:?}"
        );
    }
    app.stop().await;
}

async fn a_job_fails_for_good_after_its_last_attempt(backend: Backend) {
    let app = running(backend).await;
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

async fn a_permanent_error_is_not_retried(backend: Backend) {
    let app = running(backend).await;
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

async fn a_panic_fails_the_attempt_and_the_worker_keeps_running(backend: Backend) {
    let app = running(backend).await;
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

async fn an_attempt_past_its_timeout_fails_and_follows_the_retry_policy(backend: Backend) {
    let app = running(backend).await;
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

async fn a_delayed_job_starts_within_a_second_of_its_time(backend: Backend) {
    let app = running(backend).await;
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
    let early = job(&app.engine, id).await;
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

async fn a_cancelled_scheduled_job_never_starts(backend: Backend) {
    let app = running(backend).await;
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
    let job = job(&app.engine, id).await;
    assert_eq!(
        (job.state, job.attempts, job.started_at),
        (JobState::Cancelled, 0, None)
    );
    app.stop().await;
}

async fn the_same_idempotency_key_makes_one_job(backend: Backend) {
    let app = running(backend).await;
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

async fn jobs_a_crash_left_running_run_again_at_the_next_start(backend: Backend) {
    let store = Store::new(backend).await;
    let id = {
        let engine = open(&store).await;
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
                .start(id, 1, "a-worker-that-crashed")
                .await
                .expect("start")
                .is_some()
        );
        id
    };
    let engine = open(&store).await;
    let (stop, workers) = start_workers(&engine);
    let job = finished(&engine, id).await;
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(job.attempts, 2, "the interrupted attempt counts");
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), workers).await;
}

async fn a_thousand_concurrent_jobs_each_run_and_are_counted_exactly_once(backend: Backend) {
    let app = running(backend).await;
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
    // The console's chart counts each finish once, however the finishes were batched.
    let counted: u64 = app
        .engine
        .registry()
        .finished_since(0)
        .await
        .expect("counts")
        .iter()
        .filter(|count| count.kind == "sleep")
        .map(|count| {
            assert_eq!(count.state, JobState::Succeeded, "{count:?}");
            count.jobs
        })
        .sum();
    assert_eq!(counted, 1_000);
    app.stop().await;
}

async fn finished_jobs_past_their_retention_are_purged_with_their_files(backend: Backend) {
    let app = running(backend).await;
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
    // No queue keeps a finished task: only the waiting one is left.
    let before = app.engine.queue().task_count().await.expect("count");
    assert_eq!(before, 1, "{before} tasks");
    // The queue keeps whole seconds.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let purged = app
        .engine
        .purge_finished(Duration::from_millis(1))
        .await
        .expect("purge");
    assert_eq!(purged, 1);
    let tasks = app.engine.queue().task_count().await.expect("count");
    assert_eq!(tasks, 1, "the waiting task stays");
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

async fn a_failed_job_can_be_retried_by_hand_as_a_linked_new_job(backend: Backend) {
    let app = running(backend).await;
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

/// The engine a page would be served by: on a backend processes share, another process's (no
/// workers of its own); on SQLite, the one process there is.
async fn web_engine(app: &Running) -> Engine {
    if app.engine.is_shared() {
        open(&app.store).await
    } else {
        app.engine.clone()
    }
}

async fn a_running_job_is_cancelled_within_a_second_from_any_process(backend: Backend) {
    let app = running(backend).await;
    let web = web_engine(&app).await;
    let id = submit(
        &web,
        "sleep",
        json!({ "ms": 20_000, "steps": 20 }),
        SubmitOptions::default(),
    )
    .await;
    wait_until(&web, id, Duration::from_secs(5), |j| {
        j.state == JobState::Running
    })
    .await;
    let asked = tokio::time::Instant::now();
    let outcome = web.cancel(&owner(), id).await.expect("cancel");
    assert_eq!(outcome, Some(CancelOutcome::Requested));
    let job = wait_until(&web, id, Duration::from_secs(1), |j| j.state.is_terminal()).await;
    assert_eq!(job.state, JobState::Cancelled);
    eprintln!("cancelled after {:?}", asked.elapsed());
    assert_eq!(
        web.cancel(&owner(), id).await.expect("cancel again"),
        Some(CancelOutcome::AlreadyFinished(JobState::Cancelled))
    );
    app.stop().await;
}

async fn a_page_on_any_process_sees_live_progress(backend: Backend) {
    let app = running(backend).await;
    let web = web_engine(&app).await;
    let mut mine = web.subscribe(Topic::Owner(owner()));
    let id = submit(
        &web,
        "sleep",
        json!({ "ms": 300, "steps": 5 }),
        SubmitOptions::default(),
    )
    .await;
    let mut watch = web.subscribe(Topic::Job(id));
    let mut progress = Vec::new();
    let mut logs = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let last = loop {
        let event = tokio::time::timeout_at(deadline, watch.recv())
            .await
            .expect("events keep coming until the job ends")
            .expect("the stream stays open");
        match event {
            JobEvent::Changed(job) => {
                progress.extend(job.progress);
                if job.state.is_terminal() {
                    break job.state;
                }
            }
            JobEvent::Log { job_id, .. } => {
                assert_eq!(job_id, id);
                logs += 1;
            }
        }
    };
    assert_eq!(last, JobState::Succeeded);
    assert!(progress.len() >= 5, "progress arrived live: {progress:?}");
    assert!(progress.windows(2).all(|w| w[0] <= w[1]), "{progress:?}");
    assert!(logs >= 1, "log lines arrived live");
    // The owner's list hears about the job too.
    let mut seen_done = false;
    while let Ok(Ok(event)) = tokio::time::timeout(Duration::from_secs(2), mine.recv()).await {
        if let JobEvent::Changed(job) = event
            && job.id == id
            && job.state == JobState::Succeeded
        {
            seen_done = true;
            break;
        }
    }
    assert!(seen_done, "the owner's watchers saw the job succeed");
    app.stop().await;
}

async fn a_dead_workers_jobs_run_again_within_30_s(backend: Backend) {
    let store = Store::new(backend).await;
    let engine = open(&store).await;
    let id = submit(
        &engine,
        "sleep",
        json!({ "ms": 50 }),
        SubmitOptions::default(),
    )
    .await;
    // A worker took the job, beat once, and died.
    let dead = "a-worker-that-died";
    engine.registry().beat(dead).await.expect("beat");
    let started = engine.registry().start(id, 1, dead).await.expect("start");
    assert!(started.is_some());
    let (stop, workers) = start_workers(&engine);
    let job = wait_until(&engine, id, Duration::from_secs(30), |j| {
        j.state.is_terminal()
    })
    .await;
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(job.attempts, 2, "the interrupted attempt counts");
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), workers).await;
}

async fn a_backlog_of_20_000_jobs_drains_completely(backend: Backend) {
    const JOBS: usize = 20_000;
    let store = Store::new(backend).await;
    let engine = open(&store).await;
    // All of them due at once before any worker runs: the case that stalls apalis-redis.
    let submitters = (0..16).map(|_| {
        let engine = engine.clone();
        tokio::spawn(async move {
            for _ in 0..JOBS / 16 {
                submit(
                    &engine,
                    "sleep",
                    json!({ "ms": 0 }),
                    SubmitOptions::default(),
                )
                .await;
            }
        })
    });
    for submitter in futures::future::join_all(submitters).await {
        submitter.expect("submitter");
    }
    let started = tokio::time::Instant::now();
    let (stop, workers) = start_workers(&engine);
    let mut filter = errand_engine::JobFilter::owner(owner());
    filter.state = Some(JobState::Succeeded);
    loop {
        let done = engine.registry().count(&filter).await.expect("count");
        if done as usize == JOBS {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "only {done} of {JOBS} jobs succeeded in 4 minutes"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!(
        "{backend:?}: drained {JOBS} jobs in {:?}",
        started.elapsed()
    );
    filter.state = None;
    assert_eq!(
        engine.registry().count(&filter).await.expect("count") as usize,
        JOBS
    );
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), workers).await;
}

async fn shutdown_lets_running_jobs_finish_in_the_grace_period_and_requeues_the_rest(
    backend: Backend,
) {
    let store = Store::new(backend).await;
    let config = EngineConfig {
        shutdown_grace: Duration::from_secs(3),
        ..store.config()
    };
    let engine = Engine::open_with_kinds(config, Kinds::builtin(&[]))
        .await
        .expect("engine opens");
    let (stop, workers) = start_workers(&engine);
    let short = submit(
        &engine,
        "sleep",
        json!({ "ms": 1_000, "steps": 10 }),
        SubmitOptions::default(),
    )
    .await;
    let long = submit(
        &engine,
        "sleep",
        json!({ "ms": 8_000, "steps": 8 }),
        SubmitOptions::default(),
    )
    .await;
    for id in [short, long] {
        wait_until(&engine, id, Duration::from_secs(5), |j| {
            j.state != JobState::Queued
        })
        .await;
    }
    let _ = stop.send(());
    let stopped = tokio::time::timeout(Duration::from_secs(10), workers).await;
    assert!(stopped.is_ok(), "the workers stop after the grace period");

    let done = job(&engine, short).await;
    assert_eq!(
        (done.state, done.attempts),
        (JobState::Succeeded, 1),
        "finished in the grace period"
    );
    let back = job(&engine, long).await;
    assert_eq!(
        back.state,
        JobState::Queued,
        "returned to the queue: {back:?}"
    );

    // The next start runs it; nothing else runs twice.
    let engine = open(&store).await;
    let (stop, workers) = start_workers(&engine);
    let rerun = wait_until(&engine, long, Duration::from_secs(20), |j| {
        j.state.is_terminal()
    })
    .await;
    assert_eq!(
        (rerun.state, rerun.attempts),
        (JobState::Succeeded, 2),
        "{rerun:?}"
    );
    let done = job(&engine, short).await;
    assert_eq!(done.attempts, 1, "the finished job did not run again");
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), workers).await;
}

async fn a_job_whose_worker_died_on_its_last_attempt_fails_instead_of_running_again(
    backend: Backend,
) {
    let store = Store::new(backend).await;
    let engine = open(&store).await;
    let id = submit(&engine, "flaky", json!({}), SubmitOptions::default()).await;
    // Three attempts (the kind's maximum), each taken by a worker that died.
    let registry = engine.registry();
    for delivery in 1..=3 {
        let started = registry
            .start(id, delivery, "a-worker-that-died")
            .await
            .expect("start");
        assert!(started.is_some(), "attempt {delivery} starts");
        if delivery < 3 {
            let requeued = registry
                .requeue(id, delivery, None, Some("died"))
                .await
                .expect("requeue");
            assert!(requeued.is_some());
        }
    }
    let (stop, workers) = start_workers(&engine);
    let failed = wait_until(&engine, id, Duration::from_secs(30), |j| {
        j.state.is_terminal()
    })
    .await;
    assert_eq!((failed.state, failed.attempts), (JobState::Failed, 3));
    assert!(
        failed
            .error
            .as_deref()
            .is_some_and(|e| e.contains("last attempt (3 of 3)")),
        "{failed:?}"
    );
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), workers).await;
}

async fn a_queued_job_that_no_task_covers_is_pushed_again_by_the_reconciler(backend: Backend) {
    let store = Store::new(backend).await;
    let engine = open(&store).await;
    // A job recorded and pushed as usual is covered by its task: nothing to repair.
    let covered = submit(
        &engine,
        "sleep",
        json!({ "ms": 0 }),
        SubmitOptions::default(),
    )
    .await;
    assert_eq!(
        engine.reconcile(Duration::ZERO).await.expect("reconcile"),
        0
    );
    // What a crash between recording and pushing leaves: a queued job and no task.
    let stranded = Job::new(owner(), "sleep", json!({ "ms": 0 }), 3);
    assert!(
        engine
            .registry()
            .insert(&stranded)
            .await
            .expect("insert")
            .is_none()
    );
    if engine.registry().writes_tasks() {
        // The registry wrote its task in the insert's transaction (the embedded default, and
        // Postgres with the queue in the same database): a crash cannot separate them there.
        // What can strand a job there is a later push that was lost (a requeue whose push
        // failed), so remove the task by hand.
        let delete = "DELETE FROM errand_tasks WHERE id = $1";
        let id = stranded.id.to_string();
        let deleted = match (engine.registry().sqlite(), engine.registry().postgres()) {
            (Some(pool), _) => sqlx::query(delete)
                .bind(id)
                .execute(pool)
                .await
                .map(|done| done.rows_affected()),
            (_, Some(pool)) => sqlx::query(delete)
                .bind(id)
                .execute(pool)
                .await
                .map(|done| done.rows_affected()),
            (None, None) => unreachable!("a registry is on SQLite or Postgres"),
        };
        assert_eq!(deleted.expect("delete the task"), 1);
    }
    assert_eq!(
        engine
            .reconcile(Duration::from_secs(60))
            .await
            .expect("reconcile"),
        0,
        "too recent"
    );
    assert_eq!(
        engine.reconcile(Duration::ZERO).await.expect("reconcile"),
        1
    );
    assert_eq!(
        engine.reconcile(Duration::ZERO).await.expect("reconcile"),
        0,
        "pushed once, now covered"
    );

    let (stop, workers) = start_workers(&engine);
    for id in [covered, stranded.id] {
        let job = finished(&engine, id).await;
        assert_eq!(
            (job.state, job.attempts),
            (JobState::Succeeded, 1),
            "{job:?}"
        );
    }
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), workers).await;
}

async fn a_result_over_the_limit_fails_the_job_at_once(backend: Backend) {
    let app = running(backend).await;
    let big = errand_engine::limits::MAX_RESULT_BYTES + 1;
    let id = submit(
        &app.engine,
        "flaky",
        json!({ "result_bytes": big }),
        SubmitOptions::default(),
    )
    .await;
    let job = finished(&app.engine, id).await;
    assert_eq!((job.state, job.attempts), (JobState::Failed, 1), "{job:?}");
    let error = job.error.unwrap_or_default();
    assert!(error.contains("over the 1024 KiB limit"), "{error}");
    let fits = submit(
        &app.engine,
        "flaky",
        json!({ "result_bytes": big - 100 }),
        SubmitOptions::default(),
    )
    .await;
    assert_eq!(finished(&app.engine, fits).await.state, JobState::Succeeded);
    app.stop().await;
}

async fn a_taken_back_attempt_cannot_write_to_the_log_of_the_next(backend: Backend) {
    let store = Store::new(backend).await;
    let engine = open(&store).await;
    let job = Job::new(owner(), "sleep", json!({ "ms": 0 }), 3);
    assert!(
        engine
            .registry()
            .insert(&job)
            .await
            .expect("insert")
            .is_none()
    );
    let first = engine
        .registry()
        .start(job.id, 1, "w")
        .await
        .expect("start");
    let first = first.expect("started");
    let line = |seq, text: &str| errand_engine::LogLine {
        seq,
        at: now_ms(),
        line: text.to_owned(),
    };
    let registry = engine.registry();
    registry
        .append_log(job.id, 1, &line(1, "first attempt"))
        .await
        .expect("log");
    // The first attempt is taken back; the second starts and writes its own line 2.
    let requeued = registry
        .requeue(job.id, first.delivery, None, None)
        .await
        .expect("requeue");
    let second = registry
        .start(job.id, requeued.expect("requeued").delivery, "w")
        .await;
    let second = second.expect("start").expect("started");
    registry
        .append_log(job.id, second.delivery, &line(2, "second attempt"))
        .await
        .expect("log");
    // The first attempt's handler, still running somewhere, writes late.
    registry
        .append_log(job.id, 1, &line(2, "stale"))
        .await
        .expect("log");
    registry
        .append_log(job.id, 1, &line(3, "stale"))
        .await
        .expect("log");
    let lines: Vec<String> = registry
        .logs(job.id)
        .await
        .expect("logs")
        .into_iter()
        .map(|l| l.line)
        .collect();
    assert_eq!(lines, ["first attempt", "second attempt"]);
}

async fn an_owner_over_its_quota_of_active_jobs_is_refused_until_one_finishes(backend: Backend) {
    let store = Store::new(backend).await;
    let config = EngineConfig {
        max_active_per_owner: Some(3),
        ..store.config()
    };
    // No workers: the jobs stay queued.
    let engine = Engine::open_with_kinds(config, Kinds::builtin(&[]))
        .await
        .expect("engine opens");
    let sleep = || Params::Json(json!({ "ms": 60_000 }));
    let mut ids = Vec::new();
    for _ in 0..3 {
        let submitted = engine
            .submit(&owner(), "sleep", sleep(), SubmitOptions::default())
            .await
            .expect("within the quota");
        ids.push(submitted.id);
    }
    let refused = engine
        .submit(&owner(), "sleep", sleep(), SubmitOptions::default())
        .await
        .expect_err("over the quota");
    assert!(
        matches!(refused, errand_engine::SubmitError::OverQuota(3)),
        "{refused}"
    );
    let listed = engine
        .list(&errand_engine::JobFilter::owner(owner()), 10, None)
        .await
        .expect("list");
    assert_eq!(listed.len(), 3, "a refused submit stores nothing");
    // Another owner has a quota of its own.
    let other = Owner("someone else".into());
    engine
        .submit(&other, "sleep", sleep(), SubmitOptions::default())
        .await
        .expect("another owner's first job");
    // A finished job no longer counts.
    engine.cancel(&owner(), ids[0]).await.expect("cancel");
    engine
        .submit(&owner(), "sleep", sleep(), SubmitOptions::default())
        .await
        .expect("room again after a cancel");
}

fn admin() -> Operator {
    Operator {
        role: Role::Admin,
        session: "test-admin".into(),
    }
}

/// Submits a `flaky` job for `owner` that fails at once, for good, and waits until it has.
async fn failed_job(engine: &Engine, owner: &Owner) -> errand_engine::JobId {
    let id = engine
        .submit(
            owner,
            "flaky",
            Params::Json(json!({ "fail_times": 1, "permanent": true })),
            SubmitOptions::default(),
        )
        .await
        .expect("submit")
        .id;
    wait_for(engine, id, |job| job.state == JobState::Failed).await;
    id
}

/// Waits (10 s at most) until any owner's job `id` is as `done` wants.
async fn wait_for(engine: &Engine, id: errand_engine::JobId, done: impl Fn(&Job) -> bool) -> Job {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let job = engine.registry().get(id).await.expect("read").expect("job");
        if done(&job) {
            return job;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out; job is {job:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn the_console_finds_every_owners_jobs_by_state_kind_owner_and_words(backend: Backend) {
    let app = running(backend).await;
    let (alice, bob) = (Owner("alice".into()), Owner("bob".into()));
    let failed = failed_job(&app.engine, &alice).await;
    let ok = app
        .engine
        .submit(
            &bob,
            "sleep",
            Params::Json(json!({ "ms": 0 })),
            SubmitOptions::default(),
        )
        .await
        .expect("submit")
        .id;
    wait_for(&app.engine, ok, |job| job.state == JobState::Succeeded).await;
    let registry = app.engine.registry();
    let ids = |jobs: Vec<Job>| jobs.into_iter().map(|job| job.id).collect::<Vec<_>>();
    let list = |query: JobQuery| async move {
        ids(registry.console_list(&query, None, 50).await.expect("list"))
    };

    assert_eq!(
        list(JobQuery::default()).await,
        [ok, failed],
        "every owner, newest first"
    );
    let failed_only = JobQuery {
        state: Some(JobState::Failed),
        ..JobQuery::default()
    };
    assert_eq!(list(failed_only).await, [failed]);
    let bobs = JobQuery {
        owner: Some(bob.clone()),
        ..JobQuery::default()
    };
    assert_eq!(list(bobs).await, [ok]);
    let sleeps = JobQuery {
        kind: Some("sleep".into()),
        ..JobQuery::default()
    };
    assert_eq!(list(sleeps).await, [ok]);
    // Words of the error ("flaky failure 1"), of the parameters, and a prefix.
    for words in ["flaky failure", "permanent", "failu"] {
        let search = JobQuery {
            search: Some(words.into()),
            ..JobQuery::default()
        };
        assert_eq!(list(search).await, [failed], "{words}");
    }
    for nothing in ["nowhere", "\"*)(", "OR AND NOT"] {
        let search = JobQuery {
            search: Some(nothing.into()),
            ..JobQuery::default()
        };
        assert!(list(search).await.is_empty(), "{nothing}");
    }
    let later = JobQuery {
        created_from: Some(now_ms() + 1_000),
        ..JobQuery::default()
    };
    assert!(list(later).await.is_empty());
    let earlier = JobQuery {
        created_before: Some(now_ms() + 1_000),
        ..JobQuery::default()
    };
    assert_eq!(list(earlier).await.len(), 2);

    let counts = registry
        .console_counts(
            &JobQuery {
                state: Some(JobState::Failed),
                ..JobQuery::default()
            },
            10,
        )
        .await
        .expect("counts");
    assert_eq!(counts.of(JobState::Failed), 1);
    assert_eq!(
        counts.of(JobState::Succeeded),
        1,
        "the state filter is left out"
    );
    assert_eq!(counts.of(JobState::Queued), 0);
    assert!(!counts.partial);

    // "1" is in both jobs (`fail_times: 1`, `steps: 1`): newest first, page after page, and
    // the counts of only the newest match when the search may count one.
    let ones = JobQuery {
        search: Some("1".into()),
        ..JobQuery::default()
    };
    assert_eq!(list(ones.clone()).await, [ok, failed]);
    let next = registry
        .console_list(&ones, Some(ok), 50)
        .await
        .expect("next page");
    assert_eq!(ids(next), [failed]);
    let all = registry.console_counts(&ones, 10).await.expect("counts");
    assert_eq!(
        (
            all.of(JobState::Succeeded),
            all.of(JobState::Failed),
            all.partial
        ),
        (1, 1, false)
    );
    let newest = registry.console_counts(&ones, 1).await.expect("counts");
    assert_eq!(
        (
            newest.of(JobState::Succeeded),
            newest.of(JobState::Failed),
            newest.partial
        ),
        (1, 0, true),
        "the newest match only"
    );

    let detail = app
        .engine
        .console_job(failed)
        .await
        .expect("read")
        .expect("job");
    assert_eq!(detail.job.owner, alice);
    assert!(
        registry.worker_of(failed).await.expect("read").is_some(),
        "its last worker"
    );
    app.stop().await;
}

async fn a_paused_kind_waits_and_runs_after_it_is_resumed(backend: Backend) {
    let app = running(backend).await;
    let viewer = Operator {
        role: Role::Viewer,
        session: "v".into(),
    };
    assert!(matches!(
        app.engine.pause_kind(&viewer, "flaky").await,
        Err(ConsoleError::ReadOnly)
    ));
    assert!(matches!(
        app.engine.pause_kind(&admin(), "no-such-kind").await,
        Err(ConsoleError::NotFound)
    ));
    let queued_before = submit(
        &app.engine,
        "flaky",
        json!({ "sleep_ms": 0 }),
        SubmitOptions {
            run_at: Some(now_ms() + 300),
            ..SubmitOptions::default()
        },
    )
    .await;
    app.engine
        .pause_kind(&admin(), "flaky")
        .await
        .expect("pause");
    let submitted_while_paused =
        submit(&app.engine, "flaky", json!({}), SubmitOptions::default()).await;
    // Other kinds still run.
    let other = submit(
        &app.engine,
        "sleep",
        json!({ "ms": 0 }),
        SubmitOptions::default(),
    )
    .await;
    finished(&app.engine, other).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    for id in [queued_before, submitted_while_paused] {
        let job = job(&app.engine, id).await;
        assert_eq!(job.state, JobState::Queued, "{job:?}");
        assert_eq!(job.stage.as_deref(), Some(errand_engine::PAUSED_STAGE));
    }
    let resumed = app
        .engine
        .resume_kind(&admin(), "flaky")
        .await
        .expect("resume");
    assert_eq!(resumed, 2);
    for id in [queued_before, submitted_while_paused] {
        assert_eq!(finished(&app.engine, id).await.state, JobState::Succeeded);
    }
    let audit = app
        .engine
        .registry()
        .audit_log(None, 10)
        .await
        .expect("audit");
    let actions: Vec<(&str, &str)> = audit
        .iter()
        .map(|(_, entry)| (entry.action.as_str(), entry.target.as_str()))
        .collect();
    assert_eq!(actions, [("resume", "flaky"), ("pause", "flaky")]);
    assert_eq!(audit[0].1.role, "admin");
    app.stop().await;
}

async fn a_bulk_retry_retries_each_failed_job_once_and_is_audited(backend: Backend) {
    let app = running(backend).await;
    let mut failed = Vec::new();
    for i in 0..12 {
        let owner = Owner(format!("owner-{}", i % 3));
        failed.push(failed_job(&app.engine, &owner).await);
    }
    let ok = submit(
        &app.engine,
        "sleep",
        json!({ "ms": 0 }),
        SubmitOptions::default(),
    )
    .await;
    finished(&app.engine, ok).await;
    let everything = JobQuery::default();
    let engine = &app.engine;
    assert_eq!(
        engine
            .bulk_preview(BulkAction::Retry, &everything)
            .await
            .expect("count"),
        12
    );
    assert_eq!(
        engine
            .bulk_preview(BulkAction::Delete, &everything)
            .await
            .expect("count"),
        13
    );
    assert_eq!(
        engine
            .bulk_preview(BulkAction::Cancel, &everything)
            .await
            .expect("count"),
        0
    );
    let viewer = Operator {
        role: Role::Viewer,
        session: "v".into(),
    };
    assert!(matches!(
        engine
            .start_bulk(&viewer, BulkAction::Retry, everything.clone(), "all".into())
            .await,
        Err(ConsoleError::ReadOnly)
    ));

    let run_bulk = |target: &'static str| async move {
        let id = engine
            .start_bulk(
                &admin(),
                BulkAction::Retry,
                JobQuery::default(),
                target.into(),
            )
            .await
            .expect("start");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let status = engine
                .bulk_status()
                .into_iter()
                .find(|s| s.id == id)
                .expect("status");
            if status.finished {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "bulk still running: {status:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let first = run_bulk("every job").await;
    assert_eq!(
        (first.expected, first.touched, first.error.clone()),
        (12, 12, None)
    );
    for id in &failed {
        let retries = engine.registry().retries_of(*id).await.expect("read");
        assert_eq!(retries.len(), 1, "one retry of {id}");
        let retry = engine
            .registry()
            .get(retries[0])
            .await
            .expect("read")
            .expect("job");
        assert_eq!(
            retry.owner,
            engine
                .registry()
                .get(*id)
                .await
                .expect("read")
                .expect("job")
                .owner
        );
    }
    // Once retried, a job is not retried again (its retries fail too, and are new jobs the
    // second action did not know of when it started… but may: they fail before it starts).
    let again = run_bulk("every job, again").await;
    let retried_retries = again.touched;
    assert!(retried_retries <= 12, "{again:?}");
    for id in &failed {
        assert_eq!(
            engine.registry().retries_of(*id).await.expect("read").len(),
            1
        );
    }
    let audit = engine.registry().audit_log(None, 10).await.expect("audit");
    let entry = &audit.last().expect("an entry").1;
    assert_eq!(
        (entry.action.as_str(), entry.target.as_str(), entry.jobs),
        ("bulk-retry", "every job", 12)
    );
    app.stop().await;
}

/// A schedule that ticks every second, for `sleep` no-op jobs.
const EVERY_SECOND: &str = "[[schedule]]\nname = \"every-second\"\ncron = \"* * * * * *\"\n\
                            kind = \"sleep\"\nparams = { ms = 0 }\n";

async fn a_schedule_makes_exactly_one_job_per_tick_however_many_processes_run_it(backend: Backend) {
    let store = Store::new(backend).await;
    let schedules = errand_engine::schedules::parse(EVERY_SECOND).expect("schedules");
    let config = EngineConfig {
        schedules: schedules.clone(),
        ..store.config()
    };
    let from = now_ms();
    let first = Engine::open(config.clone()).await.expect("first opens");
    let (stop_first, first_workers) = start_workers(&first);
    // A second process runs its own scheduler: on the shared backends a second engine with its
    // workers; on SQLite, whose data dir one process owns, a second scheduler in the process.
    let second = if first.is_shared() {
        let second = Engine::open(config).await.expect("second opens");
        Some((second.clone(), start_workers(&second)))
    } else {
        None
    };
    let extra = (!first.is_shared()).then(|| tokio::spawn(first.clone().run_schedules()));
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let _ = stop_first.send(());
    let _ = first_workers.await;
    if let Some((_, (stop, workers))) = second {
        let _ = stop.send(());
        let _ = workers.await;
    }
    if let Some(extra) = extra {
        extra.abort();
    }
    let until = now_ms();

    let owner = schedules[0].owner();
    let query = JobQuery {
        owner: Some(owner),
        ..JobQuery::default()
    };
    let jobs = first
        .registry()
        .console_list(&query, None, 100)
        .await
        .expect("list");
    let mut ticks: Vec<i64> = jobs
        .iter()
        .map(|job| {
            let key = job.idempotency_key.as_deref().expect("a tick's key");
            key.strip_prefix("tick:")
                .and_then(|ms| ms.parse().ok())
                .expect("tick:<ms>")
        })
        .collect();
    ticks.sort_unstable();
    // Every whole second from the start on, each once (the last one may have come as the
    // schedulers stopped, or not).
    assert!(ticks.len() >= 3, "{ticks:?}");
    let first_tick = ticks[0];
    assert!(
        first_tick > from && first_tick % 1000 == 0 && first_tick - from <= 2_000,
        "{ticks:?} from {from}"
    );
    let expected: Vec<i64> = (0..ticks.len() as i64)
        .map(|n| first_tick + n * 1000)
        .collect();
    assert_eq!(ticks, expected, "one job per whole second, each once");
    assert!(ticks.last().is_some_and(|last| *last <= until));
    let runs = first.registry().schedule_runs().await.expect("runs");
    assert_eq!(runs.len(), 1);
    assert_eq!(
        (runs[0].0.as_str(), Some(runs[0].1)),
        ("every-second", ticks.last().copied())
    );
}

/// Two engines with workers on the shared backends (two processes), one on SQLite (whose data
/// dir one process owns), each running at most `concurrency` jobs at once, with `limits`.
async fn processes(
    store: &Store,
    limits: &str,
    concurrency: usize,
) -> Vec<(
    Engine,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), errand_engine::EngineError>>,
)> {
    let config = EngineConfig {
        limits: errand_engine::gates::parse(limits).expect("limits"),
        concurrency,
        ..store.config()
    };
    let mut engines = Vec::new();
    let count = if store.shared.is_some() { 2 } else { 1 };
    for _ in 0..count {
        let engine = open_with(config.clone()).await;
        let (stop, workers) = start_workers(&engine);
        engines.push((engine, stop, workers));
    }
    engines
}

/// The most of `jobs` that ran at the same moment, by their recorded start and finish.
fn most_at_once(jobs: &[Job]) -> usize {
    let mut edges: Vec<(i64, i32)> = Vec::new();
    for job in jobs {
        // A finish at the same millisecond as another's start comes first: the slot was free.
        edges.push((job.started_at.expect("started"), 1));
        edges.push((job.finished_at.expect("finished"), -1));
    }
    edges.sort_unstable();
    let (mut now, mut most) = (0_i32, 0_i32);
    for (_, step) in edges {
        now += step;
        most = most.max(now);
    }
    most as usize
}

async fn a_per_key_concurrency_limit_holds_across_processes_and_waiting_holds_no_worker(
    backend: Backend,
) {
    let store = Store::new(backend).await;
    // 3 workers a process: were waiting jobs to hold workers, key "a"'s backlog would take
    // them all and the one job of key "b" would wait behind it. (Flaky's attempts time out
    // after 300 ms.)
    let engines = processes(
        &store,
        "[[limit]]\nkind = \"flaky\"\nper_key = true\nconcurrency = 2\n",
        3,
    )
    .await;
    let (first, second) = (&engines[0].0, &engines[engines.len() - 1].0);
    let mut a = Vec::new();
    for n in 0..10 {
        // Submitted through both processes alike.
        let engine = if n % 2 == 0 { first } else { second };
        a.push(
            submit(
                engine,
                "flaky",
                json!({ "key": "a", "sleep_ms": 250 }),
                SubmitOptions::default(),
            )
            .await,
        );
    }
    let b = submit(
        first,
        "flaky",
        json!({ "key": "b", "sleep_ms": 50 }),
        SubmitOptions::default(),
    )
    .await;

    let mut a_jobs = Vec::new();
    for id in &a {
        let job = wait_until(first, *id, Duration::from_secs(30), |job| {
            job.state.is_terminal()
        })
        .await;
        assert_eq!(job.state, JobState::Succeeded, "{job:?}");
        a_jobs.push(job);
    }
    let b_job = finished(first, b).await;
    assert_eq!(b_job.state, JobState::Succeeded);
    assert_eq!(
        most_at_once(&a_jobs),
        2,
        "key a ran 2 at a time, never more"
    );
    let mut starts: Vec<i64> = a_jobs.iter().filter_map(|job| job.started_at).collect();
    starts.sort_unstable();
    let b_start = b_job.started_at.expect("started");
    assert!(
        b_start < starts[6],
        "key b's job started before most of key a's backlog: {b_start} vs {starts:?}"
    );
    for (_, stop, workers) in engines {
        let _ = stop.send(());
        let _ = workers.await;
    }
}

async fn a_rate_limit_starts_a_keys_jobs_at_its_rate(backend: Backend) {
    let store = Store::new(backend).await;
    let engines = processes(
        &store,
        "[[limit]]\nkind = \"flaky\"\nper_key = true\nrate = 10\n",
        64,
    )
    .await;
    let (first, second) = (&engines[0].0, &engines[engines.len() - 1].0);
    // 101 starts at 10 a second take 10 s; another key's 3 jobs are not held up by them.
    let mut r = Vec::new();
    for n in 0..101 {
        let engine = if n % 2 == 0 { first } else { second };
        r.push(
            submit(
                engine,
                "flaky",
                json!({ "key": "r" }),
                SubmitOptions::default(),
            )
            .await,
        );
    }
    let mut s = Vec::new();
    for _ in 0..3 {
        s.push(
            submit(
                second,
                "flaky",
                json!({ "key": "s" }),
                SubmitOptions::default(),
            )
            .await,
        );
    }
    let mut starts = Vec::new();
    for id in &r {
        let job = wait_until(first, *id, Duration::from_secs(30), |job| {
            job.state.is_terminal()
        })
        .await;
        assert_eq!(job.state, JobState::Succeeded, "{job:?}");
        starts.push(job.started_at.expect("started"));
    }
    starts.sort_unstable();
    let span = (starts[100] - starts[0]) as f64 / 1000.0;
    let observed = 100.0 / span;
    assert!(
        (9.0..=11.0).contains(&observed),
        "100 intervals in {span} s: {observed} starts a second, for a rate of 10"
    );
    let mut s_starts = Vec::new();
    for id in &s {
        let job = finished(first, *id).await;
        assert_eq!(job.state, JobState::Succeeded);
        s_starts.push(job.started_at.expect("started"));
    }
    s_starts.sort_unstable();
    assert!(
        s_starts[2] - s_starts[0] < 1_000 && s_starts[2] < starts[50],
        "key s kept its own rate: {s_starts:?}"
    );
    for (_, stop, workers) in engines {
        let _ = stop.send(());
        let _ = workers.await;
    }
}

async fn a_paused_schedule_skips_its_ticks_and_an_operator_may_run_it_now(backend: Backend) {
    let store = Store::new(backend).await;
    let schedules = errand_engine::schedules::parse(EVERY_SECOND).expect("schedules");
    let config = EngineConfig {
        schedules: schedules.clone(),
        ..store.config()
    };
    let engine = Engine::open(config).await.expect("opens");
    let viewer = Operator {
        role: Role::Viewer,
        session: "v".into(),
    };
    assert!(matches!(
        engine.pause_schedule(&viewer, "every-second", true).await,
        Err(ConsoleError::ReadOnly)
    ));
    assert!(matches!(
        engine.pause_schedule(&admin(), "no-such", true).await,
        Err(ConsoleError::NotFound)
    ));
    engine
        .pause_schedule(&admin(), "every-second", true)
        .await
        .expect("pauses");
    let (stop, workers) = start_workers(&engine);
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    let query = JobQuery {
        owner: Some(schedules[0].owner()),
        ..JobQuery::default()
    };
    let count = || async {
        engine
            .registry()
            .console_count(&query)
            .await
            .expect("count")
    };
    assert_eq!(count().await, 0, "a paused schedule's ticks make no job");
    let status = engine.schedule_status().await.expect("status");
    assert!(status[0].paused_since.is_some());

    let id = engine
        .run_schedule_now(&admin(), "every-second")
        .await
        .expect("runs now");
    let job = engine
        .registry()
        .get(id)
        .await
        .expect("read")
        .expect("a job");
    assert_eq!(job.owner, schedules[0].owner());
    assert!(
        job.idempotency_key
            .as_deref()
            .is_some_and(|key| key.starts_with("now:"))
    );
    assert_eq!(count().await, 1);

    engine
        .pause_schedule(&admin(), "every-second", false)
        .await
        .expect("resumes");
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    assert!(count().await >= 2, "ticks make jobs again once resumed");
    let audit = engine.registry().audit_log(None, 10).await.expect("audit");
    let actions: Vec<&str> = audit
        .iter()
        .map(|(_, entry)| entry.action.as_str())
        .collect();
    for action in ["pause-schedule", "run-schedule", "resume-schedule"] {
        assert!(actions.contains(&action), "{actions:?}");
    }
    let _ = stop.send(());
    let _ = workers.await;
}

async fn a_job_waiting_for_a_slot_runs_after_a_restart_without_the_limit(backend: Backend) {
    let store = Store::new(backend).await;
    let limited = EngineConfig {
        limits: errand_engine::gates::parse("[[limit]]\nkind = \"sleep\"\nconcurrency = 1\n")
            .expect("limits"),
        shutdown_grace: Duration::from_millis(500),
        ..store.config()
    };
    let engine = Engine::open(limited).await.expect("opens");
    let (stop, workers) = start_workers(&engine);
    // The first holds the only slot past the shutdown's grace; the second waits for it.
    let first = submit(
        &engine,
        "sleep",
        json!({ "ms": 60_000 }),
        SubmitOptions::default(),
    )
    .await;
    wait_until(&engine, first, Duration::from_secs(5), |job| {
        job.state == JobState::Running
    })
    .await;
    let second = submit(
        &engine,
        "sleep",
        json!({ "ms": 0 }),
        SubmitOptions::default(),
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let waiting = engine
            .waiting(&job(&engine, second).await)
            .await
            .expect("waiting");
        if matches!(
            waiting.map(|w| w.reason),
            Some(errand_engine::waiting::WaitReason::Slot { busy: 1, slots: 1 })
        ) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second job never waited for the slot"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = stop.send(());
    let _ = workers.await;
    drop(engine);

    // Restarted without the limit: nothing will free a slot for the second job, and it has no
    // task; the reconciler hands it one.
    let engine = Engine::open(store.config()).await.expect("opens again");
    let (stop, workers) = start_workers(&engine);
    let done = wait_until(&engine, second, Duration::from_secs(20), |job| {
        job.state.is_terminal()
    })
    .await;
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    engine.cancel(&owner(), first).await.expect("cancel");
    let _ = stop.send(());
    let _ = workers.await;
}

/// A submission at `priority`.
fn at_priority(priority: i64) -> SubmitOptions {
    SubmitOptions {
        priority: Some(priority),
        ..SubmitOptions::default()
    }
}

async fn higher_priorities_run_first_and_equal_ones_in_order_of_their_time(backend: Backend) {
    let store = Store::new(backend).await;
    // One job at a time, so the start order is the order the queue hands them out.
    let config = EngineConfig {
        concurrency: 1,
        ..store.config()
    };
    let engine = open_with(config).await;
    // Submitted before any worker runs, low and high alternating, with the default between.
    let (mut high, mut low, mut normal) = (Vec::new(), Vec::new(), Vec::new());
    for n in 0..80 {
        let (priority, into) = if n % 2 == 0 {
            (9, &mut high)
        } else {
            (1, &mut low)
        };
        into.push(submit(&engine, "flaky", json!({}), at_priority(priority)).await);
        if n % 8 == 0 {
            normal.push(submit(&engine, "flaky", json!({}), SubmitOptions::default()).await);
        }
    }
    let (stop, workers) = start_workers(&engine);
    let starts = |ids: Vec<errand_engine::JobId>| {
        let engine = engine.clone();
        async move {
            let mut starts = Vec::new();
            for id in ids {
                let job = wait_until(&engine, id, Duration::from_secs(60), |job| {
                    job.state.is_terminal()
                })
                .await;
                assert_eq!(job.state, JobState::Succeeded, "{job:?}");
                starts.push(job.started_at.expect("started"));
            }
            starts
        }
    };
    let (high_starts, normal_starts, low_starts) =
        (starts(high).await, starts(normal).await, starts(low).await);
    let span = |starts: &[i64]| {
        (
            *starts.iter().min().expect("jobs"),
            *starts.iter().max().expect("jobs"),
        )
    };
    let (high_span, normal_span, low_span) =
        (span(&high_starts), span(&normal_starts), span(&low_starts));
    assert!(
        high_span.1 <= normal_span.0 && normal_span.1 <= low_span.0,
        "every priority-9 job started before every priority-5 one, and those before every \
         priority-1 one: {high_span:?} {normal_span:?} {low_span:?}"
    );
    // Equal priorities go by their time. (A fetch's tasks start together, so compare the
    // first ten with the last.)
    let early = span(&high_starts[..10]);
    let late = span(&high_starts[30..]);
    assert!(
        early.1 <= late.0,
        "the first ten priority-9 jobs submitted started before the last ten: {early:?} {late:?}"
    );
    let _ = stop.send(());
    let _ = workers.await;
}

async fn a_low_priority_job_still_runs_under_a_steady_stream_of_higher_ones(backend: Backend) {
    let store = Store::new(backend).await;
    // One worker slot taking 100 ms a job (10 a second), and priority-9 jobs arriving at 20 a
    // second: one always waits. A job waits 250 ms per level; at priority 1 it lacks 8.
    let aging = Duration::from_millis(250);
    let config = EngineConfig {
        concurrency: 1,
        priority_aging: aging,
        ..store.config()
    };
    let engine = open_with(config).await;
    let (stop, workers) = start_workers(&engine);
    let stream = {
        let engine = engine.clone();
        tokio::spawn(async move {
            let mut sent = Vec::new();
            let mut every = tokio::time::interval(Duration::from_millis(50));
            for _ in 0..240 {
                every.tick().await;
                let id = submit(&engine, "flaky", json!({ "sleep_ms": 100 }), at_priority(9)).await;
                sent.push((now_ms(), id));
            }
            sent
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let low_at = now_ms();
    let low = submit(&engine, "flaky", json!({ "sleep_ms": 100 }), at_priority(1)).await;
    let low_job = wait_until(&engine, low, Duration::from_secs(30), |job| {
        job.state.is_terminal()
    })
    .await;
    assert_eq!(low_job.state, JobState::Succeeded);
    let started = low_job.started_at.expect("started");
    let sent = stream.await.expect("the stream ran");
    // Raised to 9 after 8 waits of 250 ms, it counts as a priority-9 job submitted 2 s after
    // it was; Postgres raises it on a heartbeat (every 5 s), so up to 5 s later. Were it
    // starved, it would wait for all 240 (24 s): the jobs submitted 8 s after it would start
    // first.
    let bound = low_at + 8 * aging.as_millis() as i64 + 6_000;
    for (at, id) in sent.iter().filter(|(at, _)| *at > bound) {
        let later = job(&engine, *id).await;
        assert!(
            later.started_at.is_none_or(|start| start > started),
            "a priority-9 job submitted at {at} started at {:?}, before the priority-1 job \
             submitted at {low_at} ({started})",
            later.started_at
        );
    }
    assert!(
        sent.iter().any(|(at, _)| *at > bound),
        "the stream outlasted the bound"
    );
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), workers).await;
}

async fn a_priority_outside_1_to_9_is_refused_and_a_retry_keeps_its_priority(backend: Backend) {
    let app = running(backend).await;
    for bad in [0, 10, -1, 300] {
        let refused = app
            .engine
            .submit(&owner(), "flaky", Params::Json(json!({})), at_priority(bad))
            .await
            .expect_err("refused");
        assert!(refused.to_string().contains("priority"), "{bad}: {refused}");
    }
    let id = submit(
        &app.engine,
        "flaky",
        json!({ "fail_times": 9, "permanent": true }),
        at_priority(7),
    )
    .await;
    let failed = finished(&app.engine, id).await;
    assert_eq!((failed.state, failed.priority), (JobState::Failed, 7));
    let again = app
        .engine
        .retry(&owner(), id)
        .await
        .expect("retry")
        .expect("the job exists")
        .expect("a failed job retries");
    assert_eq!(job(&app.engine, again).await.priority, 7);
    assert_eq!(
        job(
            &app.engine,
            submit(&app.engine, "flaky", json!({}), SubmitOptions::default()).await
        )
        .await
        .priority,
        5,
        "the default is the middle"
    );
    app.stop().await;
}

async fn the_jobs_ahead_of_a_queued_job_are_those_of_higher_priority_and_its_own_before_it(
    backend: Backend,
) {
    let store = Store::new(backend).await;
    // No worker runs: everything stays queued.
    let engine = open(&store).await;
    let mut ids = Vec::new();
    for priority in [None, Some(9), Some(1), Some(7), None, Some(9)] {
        let options = SubmitOptions {
            priority,
            ..SubmitOptions::default()
        };
        ids.push(submit(&engine, "flaky", json!({}), options).await);
    }
    let mut ahead = Vec::new();
    for id in ids {
        let waiting = engine
            .waiting(&job(&engine, id).await)
            .await
            .expect("why it waits")
            .expect("it waits");
        match waiting.reason {
            errand_engine::waiting::WaitReason::Queue { ahead: n } => ahead.push(n),
            other => panic!("waits for {other:?}"),
        }
    }
    // 5, 9, 1, 7, 5, 9: the second 9 has the first ahead; the 7 both 9s; the first 5 the 9s
    // and the 7; the second 5 those and the first 5; the 1 everyone.
    assert_eq!(ahead, [3, 0, 5, 2, 4, 1]);
}
