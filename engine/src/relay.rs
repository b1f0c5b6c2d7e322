//! Live events across processes. With a Postgres registry, several processes (web and worker
//! roles) share the jobs, and a page served by one must see the progress of a job another runs.
//! Each process sends what its hub publishes to a channel all of them listen to, and hands what
//! the others sent to its own hub: Redis pub/sub when the queue is on Redis, Postgres
//! `NOTIFY`/`LISTEN` otherwise. Cancel requests for running jobs travel the same way, to whichever
//! process runs the job. With SQLite everything happens in one process and no relay runs.
//!
//! A Postgres notification carries at most 8,000 bytes; a job too large for that (a big result)
//! is sent as its id, and the listeners read it from the registry.

use crate::model::{Job, JobId, LogLine};
use crate::{Engine, WeakEngine};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgListener, PgPool};
use std::time::Duration;
use tokio::sync::mpsc;

/// The Postgres channel every Errand process on one registry NOTIFYs and LISTENs on.
const CHANNEL: &str = "errand_events";

/// Where the events travel.
#[derive(Debug, Clone)]
pub(crate) enum Transport {
    Postgres(PgPool),
    Redis {
        client: redis::Client,
        channel: String,
    },
}

/// Postgres refuses payloads of 8,000 bytes or more.
const MAX_PAYLOAD: usize = 7_900;

/// How many queued messages one round trip to Postgres sends.
const BATCH: usize = 256;

/// How many of this process's events may wait for the relay. When it is full (the transport is
/// down or slower than the events), further events are dropped, not queued without end: live
/// views in other processes re-read the registry when their stream reconnects or re-syncs, and
/// what the registry holds is never affected.
pub(crate) const OUTGOING_CAPACITY: usize = 8_192;

/// What this process tells the others.
#[derive(Debug, Clone)]
pub(crate) enum Outgoing {
    Changed(Box<Job>),
    Logged(JobId, LogLine),
    Cancel(JobId),
}

/// A notification as it travels; `from` lets a process skip its own.
#[derive(Debug, Serialize, Deserialize)]
struct Message {
    from: String,
    #[serde(flatten)]
    event: Event,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum Event {
    Changed {
        job: Box<Job>,
    },
    /// A change too large to send: read the job from the registry.
    ChangedId {
        id: JobId,
    },
    Logged {
        id: JobId,
        line: LogLine,
    },
    Cancel {
        id: JobId,
    },
}

impl Message {
    /// The notification text for `outgoing`, always under [`MAX_PAYLOAD`].
    fn encode(from: &str, outgoing: Outgoing) -> String {
        let text = |event| {
            serde_json::to_string(&Message {
                from: from.to_owned(),
                event,
            })
            .unwrap_or_default()
        };
        match outgoing {
            Outgoing::Changed(job) => {
                let id = job.id;
                let full = text(Event::Changed { job });
                if full.len() <= MAX_PAYLOAD {
                    full
                } else {
                    text(Event::ChangedId { id })
                }
            }
            Outgoing::Logged(id, mut line) => {
                if line.line.len() > MAX_PAYLOAD / 8 {
                    // JSON escaping can make a character six bytes; the registry keeps the whole line.
                    let cut = line.line.floor_char_boundary(MAX_PAYLOAD / 8);
                    line.line.truncate(cut);
                    line.line.push('…');
                }
                text(Event::Logged { id, line })
            }
            Outgoing::Cancel(id) => text(Event::Cancel { id }),
        }
    }
}

/// Starts relaying `engine`'s events: a sender for this process's events and a listener for
/// the others'. Both stop once the engine is dropped.
pub(crate) fn start(engine: &Engine, transport: Transport) {
    let (tx, rx) = mpsc::channel(OUTGOING_CAPACITY);
    engine.hub().attach_relay(tx);
    tokio::spawn(send(transport.clone(), engine.node().to_owned(), rx));
    tokio::spawn(listen(transport, engine.downgrade()));
}

/// Sends queued messages in order, a batch per round trip.
async fn send(transport: Transport, node: String, mut rx: mpsc::Receiver<Outgoing>) {
    let mut redis = None;
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let payloads: Vec<String> = batch
            .drain(..)
            .map(|outgoing| Message::encode(&node, outgoing))
            .collect();
        let sent = match &transport {
            Transport::Postgres(pool) => {
                sqlx::query("SELECT pg_notify($1, payload) FROM UNNEST($2::TEXT[]) AS payload")
                    .bind(CHANNEL)
                    .bind(&payloads)
                    .execute(pool)
                    .await
                    .map(drop)
                    .map_err(|err| err.to_string())
            }
            Transport::Redis { client, channel } => {
                publish(client, &mut redis, channel, &payloads).await
            }
        };
        if let Err(err) = sent {
            tracing::warn!(%err, lost = payloads.len(), "could not relay live events");
        }
    }
}

/// Publishes `payloads` on Redis, connecting first if needed.
async fn publish(
    client: &redis::Client,
    conn: &mut Option<redis::aio::ConnectionManager>,
    channel: &str,
    payloads: &[String],
) -> Result<(), String> {
    if conn.is_none() {
        *conn = Some(
            redis::aio::ConnectionManager::new(client.clone())
                .await
                .map_err(|err| err.to_string())?,
        );
    }
    let Some(conn) = conn.as_mut() else {
        return Ok(());
    };
    let mut pipe = redis::pipe();
    for payload in payloads {
        pipe.publish(channel, payload).ignore();
    }
    pipe.query_async::<()>(conn)
        .await
        .map_err(|err| err.to_string())
}

/// Hands the other processes' events to this process's hub, reconnecting when the connection
/// drops, until the engine is gone.
async fn listen(transport: Transport, engine: WeakEngine) {
    loop {
        let mut messages = match subscribe(&transport).await {
            Ok(messages) => messages,
            Err(err) => {
                tracing::warn!(%err, "could not listen for live events; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                if engine.upgrade().is_none() {
                    return;
                }
                continue;
            }
        };
        loop {
            let message = tokio::select! {
                received = messages.next() => received,
                () = tokio::time::sleep(Duration::from_secs(5)) => {
                    if engine.upgrade().is_none() {
                        return;
                    }
                    continue;
                }
            };
            let Some(engine) = engine.upgrade() else {
                return;
            };
            match message {
                Some(Ok(payload)) => receive(&engine, &payload).await,
                Some(Err(err)) => {
                    tracing::warn!(%err, "lost the live events connection; reconnecting");
                    break;
                }
                None => break,
            }
        }
    }
}

/// The other processes' messages, as text.
async fn subscribe(
    transport: &Transport,
) -> Result<futures::stream::BoxStream<'static, Result<String, String>>, String> {
    match transport {
        Transport::Postgres(pool) => {
            let mut listener = PgListener::connect_with(pool)
                .await
                .map_err(|err| err.to_string())?;
            listener
                .listen(CHANNEL)
                .await
                .map_err(|err| err.to_string())?;
            Ok(listener
                .into_stream()
                .map(|received| {
                    received
                        .map(|n| n.payload().to_owned())
                        .map_err(|err| err.to_string())
                })
                .boxed())
        }
        Transport::Redis { client, channel } => {
            let mut pubsub = client
                .get_async_pubsub()
                .await
                .map_err(|err| err.to_string())?;
            pubsub
                .subscribe(channel.as_str())
                .await
                .map_err(|err| err.to_string())?;
            Ok(pubsub
                .into_on_message()
                .map(|msg| msg.get_payload::<String>().map_err(|err| err.to_string()))
                .boxed())
        }
    }
}

/// Delivers one notification in this process, unless this process sent it.
async fn receive(engine: &Engine, payload: &str) {
    let message: Message = match serde_json::from_str(payload) {
        Ok(message) => message,
        Err(err) => {
            tracing::warn!(%err, "ignoring a malformed live event");
            return;
        }
    };
    if message.from == engine.node() {
        return;
    }
    let hub = engine.hub();
    match message.event {
        Event::Changed { job } => hub.deliver_changed(*job),
        Event::ChangedId { id } => match engine.registry().get(id).await {
            Ok(Some(job)) => hub.deliver_changed(job),
            Ok(None) => {}
            Err(err) => tracing::warn!(%err, job_id = %id, "could not read a relayed job"),
        },
        Event::Logged { id, line } => hub.deliver_logged(id, line),
        Event::Cancel { id } => {
            engine.running().cancel(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Owner;

    #[test]
    fn a_job_too_large_for_a_notification_travels_as_its_id() {
        let mut job = Job::new(Owner("o".into()), "sleep", serde_json::json!({}), 1);
        let small = Message::encode("a", Outgoing::Changed(Box::new(job.clone())));
        assert!(small.contains("\"event\":\"changed\""), "{small}");
        job.result = Some(serde_json::json!("x".repeat(10_000)));
        let large = Message::encode("a", Outgoing::Changed(Box::new(job.clone())));
        assert!(large.len() < MAX_PAYLOAD);
        let message: Message = serde_json::from_str(&large).expect("decodes");
        assert!(matches!(message.event, Event::ChangedId { id } if id == job.id));
    }
}
