//! The queue: apalis with its SQLite storage. Only job ids travel through it; everything a person
//! sees lives in the registry. The queue name is a fixed string, never apalis's default of the
//! Rust type path, so renaming a type cannot orphan queued jobs.
//!
//! apalis 1.0's SQLite worker re-fetches only on its 30 s heartbeat unless something wakes it.
//! Errand wakes it itself: every successful push signals a [`Notify`] (after the insert is
//! committed, so the fetch it triggers sees the row), and a short tick backs that up for the case
//! where a wake-up lands while a fetch that started before the commit is still running.

use crate::model::JobId;
use apalis::prelude::*;
use apalis_sqlite::{Config, SqliteStorage};
use futures::stream::{BoxStream, Stream, StreamExt};
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::Notify;

/// The queue every Errand job goes through. Never change it: queued jobs would be orphaned.
pub const QUEUE_NAME: &str = "errand.jobs";

/// How often an idle worker looks for work when no wake-up arrived.
const BACKSTOP_TICK: Duration = Duration::from_millis(250);

/// How soon after a push the worker looks again, in case the push's wake-up was spent on a fetch
/// that started before the push committed.
const FOLLOW_UP: Duration = Duration::from_millis(20);

/// What travels through apalis: the id of a job in the registry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueuedJob {
    pub job_id: JobId,
    /// The job's delivery number when this task was pushed; see `Registry::start`.
    #[serde(default = "first_delivery")]
    pub delivery: i64,
    /// Not before this time (unix ms); the queue itself counts whole seconds.
    #[serde(default)]
    pub run_at: Option<i64>,
}

fn first_delivery() -> i64 {
    1
}

/// A failure of the queue's storage. Its text is for logs, never for a client.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("queue storage error: {0}")]
    Storage(String),
}

/// Handle to the apalis SQLite queue.
#[derive(Debug, Clone)]
pub struct Queue {
    storage: SqliteStorage<QueuedJob>,
    wake: Arc<Notify>,
}

impl Queue {
    /// Opens (creating if needed) the queue file and runs apalis's migrations.
    pub async fn open(path: &Path) -> Result<Self, QueueError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            .pragma("temp_store", "memory");
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        SqliteStorage::setup(&pool)
            .await
            .map_err(|e| QueueError::Storage(e.to_string()))?;
        // `setup` turns durability off on one pooled connection; Errand keeps it on everywhere.
        sqlx::query("PRAGMA synchronous = NORMAL")
            .execute(&pool)
            .await?;
        let config = Config::default().queue(QUEUE_NAME);
        Ok(Self {
            storage: SqliteStorage::new(&pool).with_config(config),
            wake: Arc::new(Notify::new()),
        })
    }

    /// Puts a delivery of a job on the queue, not to be handed out before `run_at` (unix ms;
    /// the queue counts whole seconds, so it may come up to a second early and the worker waits
    /// the rest), and wakes the worker.
    pub async fn push(
        &self,
        job_id: JobId,
        delivery: i64,
        run_at: Option<i64>,
    ) -> Result<(), QueueError> {
        // The first delivery goes under the job's own id; later ones (retries) need their own.
        let task_id = if delivery == 1 {
            job_id
        } else {
            ulid::Ulid::generate()
        };
        let mut task = TaskBuilder::new(QueuedJob {
            job_id,
            delivery,
            run_at,
        })
        .task_id(TaskId::from(task_id))
        // Errand records failures and retries itself; apalis must not re-run a job.
        .max_attempts(1);
        if let Some(run_at) = run_at {
            task = task.run_at_timestamp((run_at.max(0) / 1000) as u64);
        }
        let task = task.build();
        let mut storage = self.storage.clone();
        storage
            .push_task(task)
            .await
            .map_err(|e| QueueError::Storage(e.to_string()))?;
        self.wake.notify_one();
        Ok(())
    }

    /// Deletes the queue's records of tasks that finished before `before` (unix ms); apalis
    /// keeps them forever otherwise. Returns how many.
    pub async fn purge_finished(&self, before: i64) -> Result<u64, QueueError> {
        let deleted = sqlx::query(
            "DELETE FROM Jobs WHERE job_type = ? AND status IN ('Done', 'Killed', 'Failed') \
             AND done_at IS NOT NULL AND done_at < ?",
        )
        .bind(QUEUE_NAME)
        .bind(before / 1000)
        .execute(self.storage.pool())
        .await?;
        Ok(deleted.rows_affected())
    }

    /// How many task records the queue holds, finished ones included (for operators and tests).
    pub async fn task_count(&self) -> Result<u64, QueueError> {
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM Jobs WHERE job_type = ?")
            .bind(QUEUE_NAME)
            .fetch_one(self.storage.pool())
            .await?;
        Ok(count.max(0) as u64)
    }

    /// The storage a worker consumes, woken on push and on a backstop tick.
    pub(crate) fn worker_backend(
        &self,
    ) -> PollWith<SqliteStorage<QueuedJob>, StreamStrategy<WakeUps>> {
        self.storage
            .clone()
            .poll_with_stream(WakeUps::new(self.wake.clone()))
    }
}

/// Wake-ups for the worker: a push signalled `wake`, or [`BACKSTOP_TICK`] passed.
///
/// apalis polls this stream only while it waits for work and drops an item that arrives while a
/// fetch is in flight, without polling again. A stream that stopped listening after yielding
/// (as `select` over two `unfold`s does) would then never wake the worker again: scheduled jobs
/// and retries, which no push announces at their time, would wait for the next push. So every
/// poll drains both sources until each is pending again, which leaves both listening.
pub(crate) struct WakeUps {
    pushes: BoxStream<'static, ()>,
    tick: Pin<Box<tokio::time::Sleep>>,
}

impl WakeUps {
    fn new(wake: Arc<Notify>) -> Self {
        let pushes = futures::stream::unfold(wake, |wake| async move {
            wake.notified().await;
            Some(((), wake))
        })
        .boxed();
        Self {
            pushes,
            tick: Box::pin(tokio::time::sleep(BACKSTOP_TICK)),
        }
    }
}

impl Stream for WakeUps {
    type Item = ();

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<()>> {
        let mut woken = false;
        while self.pushes.poll_next_unpin(cx).is_ready() {
            woken = true;
            // This wake-up may land in a fetch that began before the push committed; look
            // again shortly rather than a whole tick later.
            let soon = tokio::time::Instant::now() + FOLLOW_UP;
            self.tick.as_mut().reset(soon);
        }
        while self.tick.as_mut().poll(cx).is_ready() {
            woken = true;
            let next = tokio::time::Instant::now() + BACKSTOP_TICK;
            self.tick.as_mut().reset(next);
        }
        if woken {
            Poll::Ready(Some(()))
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::task::{Wake, Waker};

    #[derive(Default)]
    struct Flag(AtomicBool);

    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    impl Flag {
        fn take(&self) -> bool {
            self.0.swap(false, Ordering::SeqCst)
        }
    }

    /// apalis drops a wake-up that arrives while it fetches and does not poll again until
    /// something wakes it; the stream must still wake it at the next tick.
    #[tokio::test]
    async fn wake_ups_keep_waking_after_an_item_nobody_polled_past() {
        let wake = Arc::new(Notify::new());
        let mut stream = WakeUps::new(wake.clone());
        let flag = Arc::new(Flag::default());
        let waker = Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);

        assert!(stream.poll_next_unpin(&mut cx).is_pending());
        wake.notify_one();
        assert!(flag.take(), "a push wakes the worker");
        assert!(stream.poll_next_unpin(&mut cx).is_ready());

        for round in 0..3 {
            // Not polled again, as while a fetch runs: the tick must still wake the task.
            tokio::time::sleep(BACKSTOP_TICK + Duration::from_millis(50)).await;
            assert!(flag.take(), "round {round}: the tick woke the worker");
            assert!(stream.poll_next_unpin(&mut cx).is_ready());
        }
    }
}
