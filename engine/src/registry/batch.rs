//! Group commit for the registry's hottest writes: a job recorded, started, its progress saved,
//! finished.
//!
//! Each costs one statement, and a statement's fixed cost (~70 µs on SQLite through sqlx, a round
//! trip on Postgres) dwarfs its work; with many jobs running, that cost, paid once per job, is
//! what limits throughput. So callers hand their request to one task, which takes every request
//! waiting at that moment (up to [`MAX_BATCH`]) and runs them as one statement. An idle server
//! runs a lone request at once; under load, requests gather while the previous batch runs.

use super::RegistryError;
use std::future::Future;
use tokio::sync::{mpsc, oneshot};

/// The most requests one statement carries (well under either database's parameter limit).
pub(super) const MAX_BATCH: usize = 64;

/// How many requests may wait for the batching task. When it is full, callers wait for room
/// (back-pressure): these writes must not be lost, and waiting slows the handlers and submits
/// that make them instead of growing memory.
const WAITING: usize = 4_096;

type Reply<Resp> = oneshot::Sender<Result<Resp, RegistryError>>;

/// Hands requests to the task that runs them in batches.
#[derive(Debug)]
pub(super) struct Batcher<Req, Resp> {
    requests: mpsc::Sender<(Req, Reply<Resp>)>,
}

impl<Req, Resp> Batcher<Req, Resp>
where
    Req: Clone + Send + 'static,
    Resp: Send + 'static,
{
    /// Starts the task. `run` executes a batch and answers each request, in order; when it
    /// fails, the batch's requests are run one by one, so each caller gets its own answer. The
    /// task ends when the batcher is dropped.
    pub(super) fn spawn<F, Fut>(run: F) -> Self
    where
        F: Fn(Vec<Req>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<Resp>, RegistryError>> + Send,
    {
        let (requests, mut waiting) = mpsc::channel::<(Req, Reply<Resp>)>(WAITING);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(MAX_BATCH);
            while waiting.recv_many(&mut batch, MAX_BATCH).await > 0 {
                let (requests, replies): (Vec<Req>, Vec<Reply<Resp>>) = batch.drain(..).unzip();
                if replies.len() > 1
                    && let Ok(responses) = run(requests.clone()).await
                {
                    answer(replies, responses);
                    continue;
                }
                for (request, reply) in requests.into_iter().zip(replies) {
                    let _ = reply.send(run(vec![request]).await.and_then(|mut one| {
                        one.pop()
                            .ok_or_else(|| RegistryError::Corrupt("a write went unanswered".into()))
                    }));
                }
            }
        });
        Self { requests }
    }

    /// Runs `request` in the next batch and returns its answer.
    pub(super) async fn run(&self, request: Req) -> Result<Resp, RegistryError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send((request, reply))
            .await
            .map_err(|_| RegistryError::WriterStopped)?;
        answer.await.map_err(|_| RegistryError::WriterStopped)?
    }
}

fn answer<Resp>(replies: Vec<Reply<Resp>>, responses: Vec<Resp>) {
    for (reply, response) in replies.into_iter().zip(responses) {
        let _ = reply.send(Ok(response));
    }
}

/// `(…), (…), …`: `rows` tuples of `width` placeholders, numbered from `$first`.
pub(super) fn values(rows: usize, width: usize, first: usize) -> String {
    let mut sql = String::with_capacity(rows * width * 5);
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for column in 0..width {
            if column > 0 {
                sql.push_str(", ");
            }
            sql.push('$');
            sql.push_str(&(first + row * width + column).to_string());
        }
        sql.push(')');
    }
    sql
}

/// `rows` rows of `width` anonymous placeholders (`(?, ?), (?, ?)`), bound in order, for SQLite
/// statements with no other placeholder. SQLite finds a numbered or named placeholder's name
/// (which sqlx asks for each one it binds) by a walk through the statement's list of names, so
/// binding the ~1,000 numbered values of a full batch took time quadratic in their number (13 %
/// of the server's CPU under a c=256 enqueue load); anonymous ones have no name to look up.
pub(super) fn anonymous_values(rows: usize, width: usize) -> String {
    let row = format!("({})", vec!["?"; width].join(", "));
    vec![row; rows].join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn placeholders_are_numbered_row_by_row() {
        assert_eq!(values(2, 3, 2), "($2, $3, $4), ($5, $6, $7)");
        assert_eq!(values(1, 1, 1), "($1)");
        assert_eq!(anonymous_values(2, 3), "(?, ?, ?), (?, ?, ?)");
        assert_eq!(anonymous_values(1, 1), "(?)");
    }

    #[tokio::test]
    async fn concurrent_requests_share_a_batch_and_each_gets_its_own_answer() {
        let batches = Arc::new(AtomicUsize::new(0));
        let counted = batches.clone();
        let batcher = Arc::new(Batcher::spawn(move |requests: Vec<u32>| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move {
                // Give the other callers time to queue up behind this batch.
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                Ok(requests.into_iter().map(|n| n * 10).collect())
            }
        }));
        let calls: Vec<_> = (0..100)
            .map(|n| {
                let batcher = batcher.clone();
                tokio::spawn(async move { batcher.run(n).await })
            })
            .collect();
        for (n, call) in calls.into_iter().enumerate() {
            let answer = call.await.expect("task").expect("answer");
            assert_eq!(answer, n as u32 * 10);
        }
        let batches = batches.load(Ordering::SeqCst);
        assert!(batches < 10, "100 requests took {batches} batches");
    }

    #[tokio::test]
    async fn a_failing_batch_is_retried_one_by_one() {
        let batcher = Batcher::spawn(|requests: Vec<u32>| async move {
            if requests.contains(&13) {
                return Err(RegistryError::Corrupt("unlucky".into()));
            }
            Ok(requests)
        });
        let batcher = Arc::new(batcher);
        let (a, b) = tokio::join!(batcher.run(12), batcher.run(13));
        assert_eq!(a.expect("12 is fine"), 12);
        assert!(matches!(b, Err(RegistryError::Corrupt(_))));
    }
}
