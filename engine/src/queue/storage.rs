//! Errand's own queue storages (Redis, and SQLite's fast path) plug into apalis the same way:
//! a [`Persistence`] (fetch, acknowledge, push, heartbeat) driven by apalis's [`Persisted`],
//! wrapped here into the backend a worker consumes.

use apalis_codec::json::JsonCodec;
use apalis_core::backend::persistence::{Persisted, Persistence, TaskPersistLayer};
use apalis_core::backend::{Backend, BackendConfig, WireFormatBackend, finalize::Durable};
use apalis_core::task::Task;
use apalis_core::task::builder::TaskBuilder;
use apalis_core::task::task_id::TaskId;
use apalis_core::worker::context::WorkerContext;
use serde_json::Value;
use std::marker::PhantomData;
use std::task::{Context, Poll};
use std::time::Duration;

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
