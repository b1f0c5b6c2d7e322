//! CPU slots: however high the job concurrency, no more handlers hold a CPU slot at once than
//! the machine has cores, and a job cancelled while it waits for one ends at once.

use errand_engine::{
    CancelOutcome, Engine, EngineConfig, FormFields, InvalidInput, JobContext, JobError, JobKind,
    JobState, Kinds, Owner, Params, RetryPolicy, SubmitContext, SubmitOptions,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

static IN_SLOT: AtomicUsize = AtomicUsize::new(0);
static MOST_IN_SLOT: AtomicUsize = AtomicUsize::new(0);

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct CpuArgs {
    hold_ms: u64,
}

/// Holds a CPU slot for `hold_ms`, counting how many handlers hold one at the same time.
struct CpuBound;

impl JobKind for CpuBound {
    const NAME: &'static str = "cpu_bound";
    const POLICY: RetryPolicy = RetryPolicy {
        max_attempts: 1,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(10),
        timeout: Duration::from_secs(60),
    };
    type Args = CpuArgs;

    fn from_form(_: &FormFields) -> Result<CpuArgs, InvalidInput> {
        Ok(CpuArgs::default())
    }

    fn validate(_: &CpuArgs, _: &SubmitContext<'_>) -> Result<(), InvalidInput> {
        Ok(())
    }

    async fn run(&self, args: CpuArgs, ctx: &JobContext) -> Result<Value, JobError> {
        let _slot = ctx.cpu_slot().await?;
        let now = IN_SLOT.fetch_add(1, Ordering::SeqCst) + 1;
        MOST_IN_SLOT.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(args.hold_ms)).await;
        IN_SLOT.fetch_sub(1, Ordering::SeqCst);
        Ok(json!({}))
    }
}

fn owner() -> Owner {
    Owner("tester".into())
}

async fn submit(engine: &Engine, hold_ms: u64) -> errand_engine::JobId {
    engine
        .submit(
            &owner(),
            CpuBound::NAME,
            Params::Json(json!({ "hold_ms": hold_ms })),
            SubmitOptions::default(),
        )
        .await
        .expect("submit")
        .id
}

async fn state(engine: &Engine, id: errand_engine::JobId) -> JobState {
    let job = engine.job(&owner(), id).await.expect("read");
    job.expect("job exists").state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_share_one_slot_per_core_and_a_waiting_job_can_be_cancelled() {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let dir = tempfile::tempdir().expect("temp dir");
    let config = EngineConfig {
        concurrency: 64,
        ..EngineConfig::new(dir.path())
    };
    let engine = Engine::open_with_kinds(config, Kinds::builtin(&[]).with(CpuBound))
        .await
        .expect("engine opens");
    let (stop, workers) = errand_engine::testing::start_workers(&engine);

    // Four jobs per core, all runnable at once under a concurrency of 64.
    let mut ids = Vec::new();
    for _ in 0..cores * 4 {
        ids.push(submit(&engine, 300).await);
    }
    // One more that will wait behind them, then be cancelled while it waits.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let waiting = submit(&engine, 300).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(state(&engine, waiting).await, JobState::Running);
    let outcome = engine.cancel(&owner(), waiting).await.expect("cancel");
    assert!(matches!(outcome, Some(CancelOutcome::Requested)));
    let cancelled_by = tokio::time::Instant::now() + Duration::from_millis(500);
    while state(&engine, waiting).await != JobState::Cancelled {
        assert!(
            tokio::time::Instant::now() < cancelled_by,
            "a job waiting for a CPU slot did not end on cancel"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    for id in ids {
        while state(&engine, id).await != JobState::Succeeded {
            assert!(
                tokio::time::Instant::now() < deadline,
                "job {id} did not finish"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let most = MOST_IN_SLOT.load(Ordering::SeqCst);
    assert!(
        most <= cores,
        "{most} handlers held a CPU slot at once on {cores} cores"
    );
    assert!(most >= 1);
    let _ = stop.send(());
    workers.await.expect("workers task").expect("workers stop");
}
