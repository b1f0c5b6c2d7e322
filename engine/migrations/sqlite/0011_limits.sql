-- Concurrency and rate limits per kind or per key (see engine/src/gates.rs).
-- The key a limited job started or waits under (`kind` or `kind:key`); NULL for jobs of kinds
-- without a limit, which the partial indexes below leave out.
ALTER TABLE jobs ADD COLUMN limit_key TEXT;
-- Why a queued job is held back: 'slot' while every slot of its key is busy (it has no task
-- then; a finishing job of the key pushes it), 'rate' while it waits for its rate slot.
ALTER TABLE jobs ADD COLUMN waiting TEXT;
-- The start time (unix ms) a rate-limited job reserved; its start then takes no second slot.
ALTER TABLE jobs ADD COLUMN rate_slot INTEGER;
CREATE INDEX jobs_by_limit ON jobs (limit_key, state) WHERE limit_key IS NOT NULL;
CREATE INDEX jobs_waiting ON jobs (limit_key, queued_at, id) WHERE waiting = 'slot';
-- Each rate-limited key's theoretical arrival time (GCRA), in unix microseconds.
CREATE TABLE rate_limits (
    key TEXT PRIMARY KEY NOT NULL,
    tat INTEGER NOT NULL
);
