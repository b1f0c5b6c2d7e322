//! What wakes an idle worker: pushes in this process, announcements from other processes, and
//! a backstop tick.

use futures::stream::{BoxStream, Stream, StreamExt};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::Notify;

/// How often an idle worker looks for work when no wake-up arrived.
const BACKSTOP_TICK: Duration = Duration::from_millis(250);

/// How soon after a push the worker looks again, in case the push's wake-up was spent on a fetch
/// that started before the push committed.
const FOLLOW_UP: Duration = Duration::from_millis(20);

/// A stream that yields each time `wake` is signalled.
pub(crate) fn notified(wake: Arc<Notify>) -> BoxStream<'static, ()> {
    futures::stream::unfold(wake, |wake| async move {
        wake.notified().await;
        Some(((), wake))
    })
    .boxed()
}

/// Wake-ups for the worker: a push or another source signalled, or [`BACKSTOP_TICK`] passed.
///
/// apalis polls this stream only while it waits for work and drops an item that arrives while a
/// fetch is in flight, without polling again. A stream that stopped listening after yielding
/// (as `select` over two `unfold`s does) would then never wake the worker again: scheduled jobs
/// and retries, which no push announces at their time, would wait for the next push. So every
/// poll drains each source until it is pending again, which leaves all of them listening.
pub(crate) struct WakeUps {
    sources: Vec<futures::stream::Fuse<BoxStream<'static, ()>>>,
    tick: Pin<Box<tokio::time::Sleep>>,
}

impl WakeUps {
    pub(crate) fn new(sources: Vec<BoxStream<'static, ()>>) -> Self {
        Self {
            sources: sources.into_iter().map(StreamExt::fuse).collect(),
            tick: Box::pin(tokio::time::sleep(BACKSTOP_TICK)),
        }
    }
}

impl Stream for WakeUps {
    type Item = ();

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<()>> {
        let mut woken = false;
        let mut pushed = false;
        for source in &mut self.sources {
            // A source that ended (a lost LISTEN connection) stays silent; the tick remains.
            while let Poll::Ready(Some(())) = source.poll_next_unpin(cx) {
                pushed = true;
            }
        }
        if pushed {
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
        let mut stream = WakeUps::new(vec![notified(wake.clone())]);
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
