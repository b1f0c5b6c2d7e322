//! Errand's own queue storages (SQLite, Postgres and Redis) plug into apalis the same way:
//! a [`Persistence`] (fetch, acknowledge, push, heartbeat) driven by apalis's [`Persisted`],
//! wrapped here into the backend a worker consumes.

use super::priority_of;
use crate::model::now_ms;
use apalis_codec::json::JsonCodec;
use apalis_core::backend::persistence::{Persisted, Persistence, TaskPersistLayer};
use apalis_core::backend::{Backend, BackendConfig, WireFormatBackend, finalize::Durable};
use apalis_core::task::Task;
use apalis_core::task::builder::TaskBuilder;
use apalis_core::task::task_id::TaskId;
use apalis_core::worker::context::WorkerContext;
use serde_json::Value;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// When the handler could not run a task (the registry was unreachable, say), the task is offered
/// again after this long instead of being dropped: a job is never lost to a passing storage error.
pub(crate) const RETRY_AFTER_ERROR: Duration = Duration::from_secs(1);

/// The ids of finished tasks in `events`: those the handler ran (to delete) and those it could
/// not run (to offer again).
pub(crate) fn completed(
    events: &[apalis_core::backend::persistence::TaskEvent<Value>],
) -> (Vec<String>, Vec<String>) {
    let mut done = Vec::new();
    let mut again = Vec::new();
    for event in events {
        if let apalis_core::backend::persistence::TaskEvent::Complete(result) = event {
            let id = result.task_id.to_string();
            match &result.result {
                Ok(_) => done.push(id),
                Err(err) => {
                    tracing::warn!(task_id = %id, %err, "task not run; offering it again");
                    again.push(id);
                }
            }
        }
    }
    (done, again)
}

/// A task as Errand's SQL storages store it.
pub(crate) struct Row {
    pub(crate) id: String,
    /// The task's arguments (JSON).
    pub(crate) args: Vec<u8>,
    /// Unix ms.
    pub(crate) due: i64,
    pub(crate) priority: u8,
}

/// Pushed tasks as rows: a task with no id gets a new one, and one with no time is due now.
pub(crate) fn rows_of(tasks: Vec<Task<Vec<u8>>>) -> Vec<Row> {
    let now = now_ms();
    tasks
        .into_iter()
        .map(|task| Row {
            id: task
                .task_id()
                .map_or_else(|| ulid::Ulid::generate().to_string(), ToString::to_string),
            due: task.run_at().map_or(now, |secs| secs as i64 * 1000),
            priority: priority_of(&task.args),
            args: task.args,
        })
        .collect()
}

/// How many pushes may wait for the group commit; when full, pushers wait for room
/// (back-pressure: a push must not be lost).
const PUSHES_WAITING: usize = 4_096;

/// A push waiting for the group commit, and who to tell when it is durable.
struct Pending {
    rows: Vec<Row>,
    done: oneshot::Sender<Result<(), String>>,
}

/// Group commit for pushes: one writer task takes every push that is waiting, writes them all
/// with one call of its `insert` (one transaction), and tells each pusher the outcome. Pushes
/// from concurrent requests then share one commit instead of queueing for one each.
#[derive(Clone)]
pub(crate) struct GroupCommit {
    pending: mpsc::Sender<Pending>,
    /// Keeps the writer running while any handle lives.
    _writer: Arc<tokio::task::JoinHandle<()>>,
}

impl GroupCommit {
    pub(crate) fn start<F, Fut, E>(insert: F) -> Self
    where
        F: Fn(Vec<Row>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send,
        E: std::fmt::Display,
    {
        let (pending, mut waiting) = mpsc::channel::<Pending>(PUSHES_WAITING);
        let writer = tokio::spawn(async move {
            let mut batch = Vec::new();
            while waiting.recv_many(&mut batch, PUSHES_WAITING).await > 0 {
                let rows = batch
                    .iter_mut()
                    .flat_map(|push| std::mem::take(&mut push.rows))
                    .collect();
                let result = insert(rows).await.map_err(|err| err.to_string());
                for push in batch.drain(..) {
                    let _ = push.done.send(result.clone());
                }
            }
        });
        Self {
            pending,
            _writer: Arc::new(writer),
        }
    }

    /// Writes `rows` with whatever else is waiting; returns once they are committed.
    pub(crate) async fn push(&self, rows: Vec<Row>) -> Result<(), String> {
        let (done, committed) = oneshot::channel();
        self.pending
            .send(Pending { rows, done })
            .await
            .map_err(|_| "the queue's writer stopped".to_owned())?;
        committed
            .await
            .map_err(|_| "the queue's writer stopped".to_owned())?
    }
}

/// A task as a fetch hands it to apalis: its id as stored and its arguments. A stored id that is
/// not a ULID comes back as the error.
pub(crate) fn fetched(id: &str, args: Vec<u8>) -> Result<Task<Vec<u8>>, String> {
    let ulid = ulid::Ulid::from_string(id).map_err(|_| id.to_owned())?;
    Ok(TaskBuilder::new(args)
        .task_id(TaskId::from_ulid(ulid))
        .build())
}

/// A worker's backend over persistence `P`, handing out tasks whose arguments decode to `Args`.
pub(crate) struct PersistedStorage<P: Persistence, Args> {
    persisted: Persisted<P>,
    codec: JsonCodec<Vec<u8>>,
    /// How many tasks one fetch takes.
    batch: usize,
    /// How often the worker beats (and recovers dead workers' tasks).
    heartbeat: Duration,
    _args: PhantomData<fn() -> Args>,
}

impl<P: Persistence + std::fmt::Debug, Args> std::fmt::Debug for PersistedStorage<P, Args> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PersistedStorage")
            .field("persistence", &*self.persisted)
            .field("batch", &self.batch)
            .finish_non_exhaustive()
    }
}

impl<P: Persistence, Args> Clone for PersistedStorage<P, Args> {
    fn clone(&self) -> Self {
        Self {
            persisted: self.persisted.clone(),
            codec: self.codec.clone(),
            batch: self.batch,
            heartbeat: self.heartbeat,
            _args: PhantomData,
        }
    }
}

impl<P, Args> PersistedStorage<P, Args>
where
    P: Persistence<Compact = Vec<u8>, Response = Value>,
{
    pub(crate) fn new(persistence: P, batch: usize, heartbeat: Duration) -> Self {
        Self {
            persisted: Persisted::new(persistence),
            codec: JsonCodec::default(),
            batch,
            heartbeat,
            _args: PhantomData,
        }
    }

    /// The persistence, for pushes and counts outside a worker.
    pub(crate) fn persistence(&self) -> &P {
        &self.persisted
    }
}

impl<P, Args> Backend for PersistedStorage<P, Args>
where
    P: Persistence<Compact = Vec<u8>, Response = Value>,
    P::Error: Send + Sync + 'static,
{
    type Task = Task<Vec<u8>>;
    type Error = P::Error;

    fn poll_ready(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        self.persisted.poll_ready(cx, worker, self.heartbeat)
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Option<Result<Self::Task, Self::Error>>> {
        self.persisted.poll_next(cx, worker)
    }

    fn poll_close(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        self.persisted.poll_close(cx, worker)
    }
}

impl<P, Args> BackendConfig for PersistedStorage<P, Args>
where
    P: Persistence<Compact = Vec<u8>, Response = Value>,
{
    type Args = Args;
    type Id = ulid::Ulid;
    type Kind = Durable;
    type Config = ();
    type Layer = TaskPersistLayer<JsonCodec<Value>, Value>;

    fn config(&self) -> &() {
        &()
    }

    fn middleware(&mut self, _: &mut WorkerContext) -> Self::Layer {
        // Results must be reported: that is how a task leaves the queue. Locks need no record:
        // a fetch already marks what it hands out as its worker's.
        self.persisted
            .layer(JsonCodec::<Value>::default(), self.batch)
            .persist_results(true)
            .lock_tasks(false)
    }
}

impl<P: Persistence, Args> WireFormatBackend for PersistedStorage<P, Args> {
    type Codec = JsonCodec<Vec<u8>>;
    type Compact = Vec<u8>;

    fn codec(&self) -> &Self::Codec {
        &self.codec
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apalis_core::backend::TaskResult;
    use apalis_core::backend::persistence::TaskEvent;
    use apalis_core::task::status::Status;
    use apalis_core::task::task_id::TaskId;

    fn complete(id: ulid::Ulid, result: Result<Value, String>) -> TaskEvent<Value> {
        TaskEvent::Complete(TaskResult {
            task_id: TaskId::from_ulid(id),
            attempt: 1,
            status: if result.is_ok() {
                Status::Done
            } else {
                Status::Failed
            },
            result,
        })
    }

    #[test]
    fn a_task_the_handler_could_not_run_is_offered_again_not_dropped() {
        let (ran, failed) = (ulid::Ulid::generate(), ulid::Ulid::generate());
        let events = vec![
            complete(ran, Ok(Value::Null)),
            complete(failed, Err("registry unreachable".into())),
            TaskEvent::Lock {
                task_id: TaskId::from_ulid(ulid::Ulid::generate()),
            },
        ];
        let (done, again) = completed(&events);
        assert_eq!(done, [ran.to_string()]);
        assert_eq!(again, [failed.to_string()]);
    }
}
