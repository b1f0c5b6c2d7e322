//! The event hub: fans job changes out to whoever watches them (SSE streams, the job list).
//!
//! Each topic (one job, or all jobs of one owner) has its own broadcast channel, created when the
//! first watcher subscribes and removed with its last [`Subscription`], so a publish costs
//! nothing when no page is open, never wakes watchers of other jobs, and the hub holds no more
//! channels than there are open watches (a flood of requests that subscribe and go leaves
//! nothing behind). Events are shared (`Arc`), not cloned per subscriber.

use crate::model::{Job, JobId, LogLine, Owner};
use crate::relay::Outgoing;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{broadcast, mpsc};

/// How many events a slow watcher of one job may fall behind before it is told it lagged (its
/// event stream then sends a fresh snapshot). A channel allocates all its slots up front, and a
/// server may have one open for each of 10,000 watched jobs, so this stays small.
const JOB_CHANNEL_CAPACITY: usize = 32;
/// The same for the watcher of all an owner's jobs (the job list), which has no way to catch
/// up and sees the changes of many jobs at once.
const OWNER_CHANNEL_CAPACITY: usize = 256;
/// The same for the console's watchers of every job: a watcher that falls behind re-reads
/// its page instead.
const ALL_CHANNEL_CAPACITY: usize = 1024;

/// Something that happened to a job.
#[derive(Debug, Clone)]
pub enum JobEvent {
    /// The job's state, progress, stage, result or error changed; carries the whole job.
    Changed(Arc<Shared<Job>>),
    /// The job's handler appended a log line.
    Log {
        job_id: JobId,
        line: Arc<Shared<LogLine>>,
    },
}

/// A value every subscriber receives, with room for its wire form: the first subscriber to
/// render it stores the text, and the others reuse it, so a change watched by 10,000 pages is
/// serialised once, not 10,000 times.
#[derive(Debug)]
pub struct Shared<T> {
    value: T,
    rendered: OnceLock<Arc<str>>,
}

impl<T> Shared<T> {
    pub fn new(value: T) -> Self {
        Self {
            value,
            rendered: OnceLock::new(),
        }
    }

    /// The value's wire form, made by `render` the first time it is asked for.
    pub fn rendered(&self, render: impl FnOnce(&T) -> String) -> Arc<str> {
        self.rendered
            .get_or_init(|| Arc::from(render(&self.value)))
            .clone()
    }
}

impl<T> std::ops::Deref for Shared<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.value
    }
}

/// What a watcher subscribes to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    Job(JobId),
    Owner(Owner),
    /// Every job's changes (the operators' console).
    All,
}

/// The open topics; `None` once the hub is closed.
type Topics = Mutex<Option<HashMap<Topic, broadcast::Sender<JobEvent>>>>;

/// Routes job events to subscribers in this process and, when a relay is attached, to the
/// other processes sharing the registry (see `relay`).
#[derive(Debug, Default)]
pub struct Hub {
    topics: Arc<Topics>,
    /// Where this process's events leave for the others, if anywhere.
    relay: OnceLock<mpsc::Sender<Outgoing>>,
}

/// A watch of one topic: receives the events published to it from its start, in order. The
/// topic's channel is removed from the hub when its last subscription is dropped.
#[derive(Debug)]
pub struct Subscription {
    /// Always `Some` until dropped: released under the hub's lock, so two subscriptions dropped
    /// at once cannot each see the other and both leave the topic behind.
    receiver: Option<broadcast::Receiver<JobEvent>>,
    topic: Topic,
    topics: std::sync::Weak<Topics>,
}

impl Subscription {
    /// The next event; `Lagged` when this watcher fell so far behind that events were dropped
    /// for it (it should re-read a snapshot), `Closed` once the hub closed.
    pub async fn recv(&mut self) -> Result<JobEvent, RecvError> {
        match self.receiver.as_mut() {
            Some(receiver) => receiver.recv().await,
            None => Err(RecvError::Closed),
        }
    }

    /// The next event if one is waiting.
    pub fn try_recv(&mut self) -> Result<JobEvent, TryRecvError> {
        match self.receiver.as_mut() {
            Some(receiver) => receiver.try_recv(),
            None => Err(TryRecvError::Closed),
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let Some(topics) = self.topics.upgrade() else {
            return;
        };
        let mut topics = topics.lock().unwrap_or_else(PoisonError::into_inner);
        drop(self.receiver.take());
        if let Some(topics) = topics.as_mut()
            && topics
                .get(&self.topic)
                .is_some_and(|sender| sender.receiver_count() == 0)
        {
            topics.remove(&self.topic);
        }
    }
}

impl Hub {
    pub fn new() -> Self {
        Self {
            topics: Arc::new(Mutex::new(Some(HashMap::new()))),
            relay: OnceLock::new(),
        }
    }

    /// Sends every event published from now on to the other processes as well.
    pub(crate) fn attach_relay(&self, relay: mpsc::Sender<Outgoing>) {
        let _ = self.relay.set(relay);
    }

    /// Hands `message` to the relay, if one is attached; false if there is none, or if the
    /// relay is [full](crate::relay::OUTGOING_CAPACITY): then the message is dropped (live
    /// views elsewhere catch up from the registry when they reconnect or re-sync).
    pub(crate) fn relay(&self, message: Outgoing) -> bool {
        let Some(relay) = self.relay.get() else {
            return false;
        };
        match relay.try_send(message) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!("the event relay is full; an event was not sent to other processes");
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Hands `message` to the relay, waiting while it is full (for messages that must not be
    /// dropped, such as a cancel request); false if no relay is attached or it stopped.
    pub(crate) async fn relay_surely(&self, message: Outgoing) -> bool {
        match self.relay.get() {
            Some(relay) => relay.send(message).await.is_ok(),
            None => false,
        }
    }

    /// Starts watching a topic. Events published from now on are received in order. On a
    /// closed hub the subscription reports `Closed` at once.
    pub fn subscribe(&self, topic: Topic) -> Subscription {
        let mut topics = self.topics.lock().unwrap_or_else(PoisonError::into_inner);
        let receiver = match topics.as_mut() {
            Some(topics) => {
                let capacity = match topic {
                    Topic::Job(_) => JOB_CHANNEL_CAPACITY,
                    Topic::Owner(_) => OWNER_CHANNEL_CAPACITY,
                    Topic::All => ALL_CHANNEL_CAPACITY,
                };
                topics
                    .entry(topic.clone())
                    .or_insert_with(|| broadcast::channel(capacity).0)
                    .subscribe()
            }
            None => broadcast::channel(1).1,
        };
        Subscription {
            receiver: Some(receiver),
            topic,
            topics: Arc::downgrade(&self.topics),
        }
    }

    /// Ends every watch: receivers see `Closed`, so event streams finish (used at shutdown).
    pub fn close(&self) {
        self.topics
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }

    /// Announces a change of `job` to its own watchers and to its owner's, in every process.
    pub fn job_changed(&self, job: Job) {
        if self.relay.get().is_some() {
            self.relay(Outgoing::Changed(Box::new(job.clone())));
        }
        self.deliver_changed(job);
    }

    /// Announces a change of `job` to the watchers in this process only.
    pub(crate) fn deliver_changed(&self, job: Job) {
        let owner = Topic::Owner(job.owner.clone());
        let id = Topic::Job(job.id);
        let event = JobEvent::Changed(Arc::new(Shared::new(job)));
        self.publish(&id, event.clone());
        self.publish(&Topic::All, event.clone());
        self.publish(&owner, event);
    }

    /// Announces a new log line of a job to its watchers, in every process.
    pub fn job_logged(&self, job_id: JobId, line: LogLine) {
        if self.relay.get().is_some() {
            self.relay(Outgoing::Logged(job_id, line.clone()));
        }
        self.deliver_logged(job_id, line);
    }

    /// Announces a new log line of a job to the watchers in this process only.
    pub(crate) fn deliver_logged(&self, job_id: JobId, line: LogLine) {
        let event = JobEvent::Log {
            job_id,
            line: Arc::new(Shared::new(line)),
        };
        self.publish(&Topic::Job(job_id), event);
    }

    fn publish(&self, topic: &Topic, event: JobEvent) {
        let mut topics = self.topics.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(topics) = topics.as_mut() else {
            return;
        };
        if let Some(sender) = topics.get(topic)
            && sender.send(event).is_err()
        {
            // Nobody listens any more: forget the channel.
            topics.remove(topic);
        }
    }

    /// How many topics currently have a channel (for tests and metrics).
    pub fn topic_count(&self) -> usize {
        self.topics
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map_or(0, HashMap::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::JobState;

    fn job(owner: &str) -> Job {
        let mut job = Job::new(Owner(owner.into()), "sleep", serde_json::json!({}), 1);
        job.state = JobState::Running;
        job.progress = Some(0.5);
        job
    }

    #[tokio::test]
    async fn watchers_get_only_their_topics() {
        let hub = Hub::new();
        let mine = job("alice");
        let other = job("bob");
        let mut by_job = hub.subscribe(Topic::Job(mine.id));
        let mut by_owner = hub.subscribe(Topic::Owner(Owner("alice".into())));

        hub.job_changed(other.clone());
        hub.job_changed(mine.clone());
        hub.job_logged(
            mine.id,
            LogLine {
                seq: 1,
                at: 0,
                line: "hello".into(),
            },
        );

        match by_job.recv().await {
            Ok(JobEvent::Changed(job)) => assert_eq!(job.id, mine.id),
            other => panic!("expected a change, got {other:?}"),
        }
        match by_job.recv().await {
            Ok(JobEvent::Log { line, .. }) => assert_eq!(line.line, "hello"),
            other => panic!("expected a log line, got {other:?}"),
        }
        match by_owner.recv().await {
            Ok(JobEvent::Changed(job)) => assert_eq!(job.id, mine.id),
            other => panic!("expected a change, got {other:?}"),
        }
        assert!(
            by_owner.try_recv().is_err(),
            "log lines go to the job topic only"
        );
    }

    #[test]
    fn a_shared_event_is_rendered_once() {
        let shared = Shared::new(7_u32);
        let calls = std::cell::Cell::new(0);
        let render = |n: &u32| {
            calls.set(calls.get() + 1);
            n.to_string()
        };
        assert_eq!(&*shared.rendered(render), "7");
        assert_eq!(&*shared.rendered(render), "7");
        assert_eq!(calls.get(), 1);
        assert_eq!(*shared, 7);
    }

    #[test]
    fn channels_are_dropped_with_their_last_subscription() {
        let hub = Hub::new();
        let job = job("alice");
        let first = hub.subscribe(Topic::Job(job.id));
        let second = hub.subscribe(Topic::Job(job.id));
        let owner = hub.subscribe(Topic::Owner(Owner("alice".into())));
        assert_eq!(hub.topic_count(), 2);
        drop(first);
        assert_eq!(hub.topic_count(), 2, "the job topic still has a watcher");
        drop(second);
        assert_eq!(
            hub.topic_count(),
            1,
            "nothing publishes, yet the topic is gone"
        );
        drop(owner);
        assert_eq!(hub.topic_count(), 0);
        // Many watches that come and go leave nothing behind.
        for _ in 0..1_000 {
            drop(hub.subscribe(Topic::Owner(Owner(ulid::Ulid::generate().to_string()))));
        }
        assert_eq!(hub.topic_count(), 0);
    }

    #[tokio::test]
    async fn closing_the_hub_ends_every_watch() {
        let hub = Hub::new();
        let job = job("alice");
        let mut before = hub.subscribe(Topic::Job(job.id));
        hub.close();
        let mut after = hub.subscribe(Topic::Job(job.id));
        hub.job_changed(job);
        assert!(matches!(
            before.recv().await,
            Err(broadcast::error::RecvError::Closed)
        ));
        assert!(matches!(
            after.recv().await,
            Err(broadcast::error::RecvError::Closed)
        ));
    }
}
