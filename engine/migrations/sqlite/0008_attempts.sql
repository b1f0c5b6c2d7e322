-- Each attempt of a job, for the console's job page: which worker process ran it, when it
-- started and ended, and how (retried — by its retry policy or by the reconciler —, succeeded,
-- failed or cancelled). Kept by triggers on the job's state, so the writes that start and finish jobs
-- (group-committed, in Rust) stay as they are and an attempt is recorded in their transaction.
CREATE TABLE job_attempts (
    job_id     TEXT NOT NULL,
    attempt    INTEGER NOT NULL,
    worker     TEXT,
    started_at INTEGER NOT NULL,            -- unix milliseconds
    ended_at   INTEGER,
    outcome    TEXT,                        -- retried | succeeded | failed | cancelled
    error      TEXT,
    PRIMARY KEY (job_id, attempt)
) WITHOUT ROWID;

CREATE TRIGGER job_attempt_started AFTER UPDATE OF state ON jobs
    WHEN new.state = 'running' AND old.state <> 'running'
BEGIN
    INSERT OR REPLACE INTO job_attempts (job_id, attempt, worker, started_at)
        VALUES (new.id, new.attempts, new.worker, coalesce(new.started_at, 0));
END;

CREATE TRIGGER job_attempt_ended AFTER UPDATE OF state ON jobs
    WHEN old.state = 'running' AND new.state <> 'running'
BEGIN
    UPDATE job_attempts
        SET ended_at = coalesce(new.finished_at,
                                CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)),
            outcome = CASE new.state WHEN 'queued' THEN 'retried' ELSE new.state END,
            error = new.error
        WHERE job_id = new.id AND attempt = old.attempts;
END;

CREATE TRIGGER job_attempts_deleted AFTER DELETE ON jobs
BEGIN
    DELETE FROM job_attempts WHERE job_id = old.id;
END;
