-- Concurrency and rate limits per kind or per key (as migrations/sqlite/0011_limits.sql).
ALTER TABLE jobs ADD COLUMN limit_key TEXT;
ALTER TABLE jobs ADD COLUMN waiting TEXT;
ALTER TABLE jobs ADD COLUMN rate_slot BIGINT;
CREATE INDEX jobs_by_limit ON jobs (limit_key, state) WHERE limit_key IS NOT NULL;
CREATE INDEX jobs_waiting ON jobs (limit_key, queued_at, id) WHERE waiting = 'slot';
CREATE TABLE rate_limits (
    key TEXT PRIMARY KEY NOT NULL,
    tat BIGINT NOT NULL
);
