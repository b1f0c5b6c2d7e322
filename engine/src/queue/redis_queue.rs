//! Errand's own Redis storage for apalis, behind apalis's `Persistence` trait.
//!
//! apalis-redis 1.0 cannot carry Errand's load: every push lands in its scheduled set, and its
//! fetch script moves all due tasks at once with `unpack`, which Lua caps near 8,000 values, so
//! a backlog that size stops every worker without an error. It also retries failed tasks 25 times
//! whatever `max_attempts` says and keeps finished tasks forever. This storage is small because
//! the registry does the bookkeeping (states, attempts, retries, stale deliveries); the queue only
//! hands out job ids, at least once.
//!
//! Keys, under a prefix (`errand` unless the URL says `?prefix=…`):
//! - `{p}:tasks` — hash: task id → the task's arguments (JSON);
//! - `{p}:level:{n}` — for each priority level n (1 to 9), a sorted set of its task ids by
//!   due time (unix ms), due now or later;
//! - `{p}:ready` — list of task ids handed back (a stopped worker's, a fetch given up) and of
//!   pushes by versions before priorities: served before the levels, first in first out;
//! - `{p}:scheduled` — sorted set of task ids offered again after a storage error, by due time
//!   (unix ms); moved to `ready` when due;
//! - `{p}:inflight:{worker}` — set of the task ids a worker fetched and has not finished;
//! - `{p}:workers` — sorted set of worker names by last heartbeat (unix ms);
//! - `{p}:wake` — pub/sub channel announcing pushes to idle workers of every process;
//! - `{p}:events` — pub/sub channel of live job events between processes (see `relay`).
//!
//! Every script moves a bounded number of ids per call, one command per id, never `unpack`.
//! A finished task's entry is deleted at once, so the queue holds only live work.

use super::Aging;
use super::storage::{RETRY_AFTER_ERROR, completed, fetched, rows_of};
use crate::model::{PRIORITIES, now_ms};
use apalis_core::backend::persistence::{Persistence, TaskEvent};
use apalis_core::task::Task;
use apalis_core::worker::context::WorkerContext;
use futures::StreamExt;
use futures::stream::BoxStream;
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// How many tasks one fetch hands a worker.
pub(crate) const BATCH: usize = 10;

/// How many due scheduled tasks one fetch moves to the ready list.
const PROMOTE: usize = 1_000;

/// Moves due scheduled ids to the ready list, then hands up to ARGV[2] ids to a worker: the
/// ready list's first, then the best due tasks of the levels by [`Aging`] (each level's
/// ARGV[2] oldest due tasks are the candidates, as in the SQLite queue).
/// KEYS: ready, scheduled, inflight, tasks. ARGV: now (ms), batch, promote limit, aging step
/// (ms), prefix of the level keys, highest level.
/// Returns id, arguments, id, arguments, …
///
/// [`Aging`]: super::Aging
const FETCH: &str = r"
local now, batch, step, top = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[4]), tonumber(ARGV[6])
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(due) do
  redis.call('RPUSH', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
end
local out, taken = {}, 0
local function hand(id)
  local args = redis.call('HGET', KEYS[4], id)
  if args then
    redis.call('SADD', KEYS[3], id)
    table.insert(out, id)
    table.insert(out, args)
    taken = taken + 1
  end
end
while taken < batch do
  local id = redis.call('LPOP', KEYS[1])
  if not id then break end
  hand(id)
end
if taken >= batch then return out end
local candidates = {}
for level = 1, top do
  local key = ARGV[5] .. level
  local ids = redis.call('ZRANGEBYSCORE', key, '-inf', now, 'WITHSCORES', 'LIMIT', 0, batch)
  for i = 1, #ids, 2 do
    local at = tonumber(ids[i + 1])
    local lift = math.min(top - level, math.floor((now - at) / step))
    table.insert(candidates, {ids[i], level + lift, at + lift * step, key})
  end
end
table.sort(candidates, function(a, b)
  if a[2] ~= b[2] then return a[2] > b[2] end
  if a[3] ~= b[3] then return a[3] < b[3] end
  return a[1] < b[1]
end)
for _, c in ipairs(candidates) do
  if taken >= batch then break end
  redis.call('ZREM', c[4], c[1])
  hand(c[1])
end
return out
";

/// Returns the fetched tasks of workers not seen since ARGV[1] to the ready list and forgets
/// those workers, 100 workers per call. KEYS: workers, ready. ARGV: cutoff (ms), prefix of
/// inflight keys. Returns how many tasks moved.
const RECOVER: &str = r"
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 100)
local moved = 0
for _, worker in ipairs(dead) do
  local key = ARGV[2] .. worker
  while true do
    local id = redis.call('SPOP', key)
    if not id then break end
    redis.call('RPUSH', KEYS[2], id)
    moved = moved + 1
  end
  redis.call('ZREM', KEYS[1], worker)
end
return moved
";

/// A failure of the Redis queue.
#[derive(Debug, thiserror::Error)]
pub enum RedisQueueError {
    #[error("redis error: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("bad task id in redis: {0}")]
    TaskId(String),
}

/// The key names under one prefix.
#[derive(Debug, Clone)]
struct Keys {
    tasks: String,
    ready: String,
    scheduled: String,
    level_prefix: String,
    workers: String,
    wake: String,
    events: String,
    inflight_prefix: String,
}

impl Keys {
    fn new(prefix: &str) -> Self {
        Self {
            tasks: format!("{prefix}:tasks"),
            ready: format!("{prefix}:ready"),
            scheduled: format!("{prefix}:scheduled"),
            level_prefix: format!("{prefix}:level:"),
            workers: format!("{prefix}:workers"),
            wake: format!("{prefix}:wake"),
            events: format!("{prefix}:events"),
            inflight_prefix: format!("{prefix}:inflight:"),
        }
    }

    fn inflight(&self, worker: &str) -> String {
        format!("{}{worker}", self.inflight_prefix)
    }

    fn level(&self, priority: u8) -> String {
        format!("{}{priority}", self.level_prefix)
    }
}

/// The queue's connection and keys: what apalis drives through [`Persistence`].
#[derive(Clone)]
pub(crate) struct RedisQueue {
    client: redis::Client,
    conn: ConnectionManager,
    keys: Arc<Keys>,
    aging: Aging,
    fetch: Arc<Script>,
    recover: Arc<Script>,
}

impl std::fmt::Debug for RedisQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisQueue")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl RedisQueue {
    /// Connects to `url` (`redis://…`, optionally with `?prefix=name` for the keys).
    pub(crate) async fn connect(url: &str, aging: Aging) -> Result<Self, RedisQueueError> {
        let (url, prefix) = split_prefix(url);
        let client = redis::Client::open(url.as_str())?;
        let conn = ConnectionManager::new(client.clone()).await?;
        Ok(Self {
            client,
            conn,
            keys: Arc::new(Keys::new(&prefix)),
            aging,
            fetch: Arc::new(Script::new(FETCH)),
            recover: Arc::new(Script::new(RECOVER)),
        })
    }

    /// The client, for other connections to the same server.
    pub(crate) fn client(&self) -> &redis::Client {
        &self.client
    }

    /// The pub/sub channel for live job events between processes.
    pub(crate) fn events_channel(&self) -> &str {
        &self.keys.events
    }

    /// For each task id, whether the queue holds that task (queued, scheduled or being run).
    pub(crate) async fn contains(&self, ids: &[String]) -> Result<Vec<bool>, RedisQueueError> {
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.hexists(&self.keys.tasks, id);
        }
        Ok(pipe.query_async(&mut self.conn.clone()).await?)
    }

    /// How many tasks the queue holds (queued, scheduled or being run).
    pub(crate) async fn task_count(&self) -> Result<u64, RedisQueueError> {
        let count: u64 = self.conn.clone().hlen(&self.keys.tasks).await?;
        Ok(count)
    }

    /// Announcements of pushes from every process, for idle workers; reconnects after a lost
    /// connection.
    pub(crate) fn pushes(&self) -> BoxStream<'static, ()> {
        let client = self.client.clone();
        let channel = self.keys.wake.clone();
        futures::stream::unfold(
            None,
            move |subscription: Option<redis::aio::PubSubStream>| {
                let (client, channel) = (client.clone(), channel.clone());
                async move {
                    let mut stream = match subscription {
                        Some(stream) => stream,
                        None => loop {
                            match subscribe(&client, &channel).await {
                                Ok(stream) => break stream,
                                Err(err) => {
                                    tracing::warn!(%err, "could not subscribe to queue wake-ups");
                                    tokio::time::sleep(Duration::from_secs(1)).await;
                                }
                            }
                        },
                    };
                    match stream.next().await {
                        Some(_) => Some(((), Some(stream))),
                        // Lost the connection: say so (a fetch costs little) and resubscribe.
                        None => Some(((), None)),
                    }
                }
            },
        )
        .boxed()
    }
}

async fn subscribe(
    client: &redis::Client,
    channel: &str,
) -> Result<redis::aio::PubSubStream, redis::RedisError> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(channel).await?;
    Ok(pubsub.into_on_message())
}

/// Splits `?prefix=name` off a Redis URL; the prefix defaults to `errand`.
fn split_prefix(url: &str) -> (String, String) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), "errand".to_owned());
    };
    let mut prefix = "errand".to_owned();
    let mut rest = Vec::new();
    for pair in query.split('&') {
        match pair.strip_prefix("prefix=") {
            Some(value) if !value.is_empty() => prefix = value.to_owned(),
            _ => rest.push(pair),
        }
    }
    let url = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    (url, prefix)
}

impl Persistence for RedisQueue {
    type Compact = Vec<u8>;
    type Response = Value;
    type Error = RedisQueueError;

    async fn register(&mut self, worker: &WorkerContext) -> Result<(), Self::Error> {
        let _: () = self
            .conn
            .zadd(&self.keys.workers, worker.name(), now_ms())
            .await?;
        Ok(())
    }

    async fn heartbeat(&mut self, worker: &WorkerContext) -> Result<(), Self::Error> {
        self.register(worker).await?;
        // A dead worker's fetched tasks go back to the ready list.
        let cutoff = now_ms() - super::ORPHANED_AFTER.as_millis() as i64;
        let moved: u64 = self
            .recover
            .key(&self.keys.workers)
            .key(&self.keys.ready)
            .arg(cutoff)
            .arg(&self.keys.inflight_prefix)
            .invoke_async(&mut self.conn)
            .await?;
        if moved > 0 {
            tracing::warn!(moved, "returned the fetched tasks of stopped workers");
        }
        Ok(())
    }

    async fn fetch_next(
        &mut self,
        worker: &WorkerContext,
    ) -> Result<Vec<Task<Vec<u8>>>, Self::Error> {
        let flat: Vec<Vec<u8>> = self
            .fetch
            .key(&self.keys.ready)
            .key(&self.keys.scheduled)
            .key(self.keys.inflight(worker.name()))
            .key(&self.keys.tasks)
            .arg(now_ms())
            .arg(BATCH)
            .arg(PROMOTE)
            .arg(self.aging.step_ms())
            .arg(&self.keys.level_prefix)
            .arg(PRIORITIES.end())
            .invoke_async(&mut self.conn)
            .await?;
        flat.chunks_exact(2)
            .map(|pair| {
                fetched(&String::from_utf8_lossy(&pair[0]), pair[1].clone())
                    .map_err(RedisQueueError::TaskId)
            })
            .collect()
    }

    async fn reenqueue_abandoned(
        &mut self,
        tasks: Vec<Task<Vec<u8>>>,
        worker: &WorkerContext,
    ) -> Result<u64, Self::Error> {
        let inflight = self.keys.inflight(worker.name());
        let mut pipe = redis::pipe();
        pipe.atomic();
        for id in tasks.iter().filter_map(|task| task.task_id()) {
            let id = id.to_string();
            pipe.srem(&inflight, &id).ignore();
            pipe.lpush(&self.keys.ready, &id).ignore();
        }
        let () = pipe.query_async(&mut self.conn).await?;
        Ok(tasks.len() as u64)
    }

    async fn handle_events(
        &mut self,
        events: Vec<TaskEvent<Value>>,
        worker: &WorkerContext,
    ) -> Result<(), Self::Error> {
        let (done, again) = completed(&events);
        if done.is_empty() && again.is_empty() {
            return Ok(());
        }
        let inflight = self.keys.inflight(worker.name());
        let retry_at = now_ms() + RETRY_AFTER_ERROR.as_millis() as i64;
        let mut pipe = redis::pipe();
        pipe.atomic();
        for id in &done {
            pipe.srem(&inflight, id).ignore();
            pipe.hdel(&self.keys.tasks, id).ignore();
        }
        for id in &again {
            pipe.srem(&inflight, id).ignore();
            pipe.zadd(&self.keys.scheduled, id, retry_at).ignore();
        }
        let () = pipe.query_async(&mut self.conn).await?;
        Ok(())
    }

    async fn push_tasks(&mut self, tasks: Vec<Task<Vec<u8>>>) -> Result<(), Self::Error> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for task in rows_of(tasks) {
            pipe.hset(&self.keys.tasks, &task.id, task.args).ignore();
            pipe.zadd(self.keys.level(task.priority), &task.id, task.due)
                .ignore();
        }
        pipe.publish(&self.keys.wake, 1).ignore();
        let () = pipe.query_async(&mut self.conn).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_prefix_comes_from_the_url() {
        assert_eq!(
            split_prefix("redis://127.0.0.1:6379/0"),
            ("redis://127.0.0.1:6379/0".into(), "errand".into())
        );
        assert_eq!(
            split_prefix("redis://127.0.0.1/1?prefix=t-1&protocol=resp3"),
            ("redis://127.0.0.1/1?protocol=resp3".into(), "t-1".into())
        );
    }
}
