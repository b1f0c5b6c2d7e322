-- Retries, delays, idempotent submits and crash recovery.
ALTER TABLE jobs ADD COLUMN max_attempts INTEGER NOT NULL DEFAULT 1;
-- When a queued job may start (unix ms): its scheduled time, or its next retry.
ALTER TABLE jobs ADD COLUMN run_at INTEGER;
-- Counts pushes to the queue; a delivered task whose number is not the current one is stale
-- (an old task recovered after a crash) and is skipped, so no job runs twice for one push.
ALTER TABLE jobs ADD COLUMN delivery INTEGER NOT NULL DEFAULT 1;
-- The job this one retries by hand, if any.
ALTER TABLE jobs ADD COLUMN retry_of TEXT;
ALTER TABLE jobs ADD COLUMN idempotency_key TEXT;

CREATE UNIQUE INDEX jobs_idempotency ON jobs (owner, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_running ON jobs (state) WHERE state = 'running';
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
