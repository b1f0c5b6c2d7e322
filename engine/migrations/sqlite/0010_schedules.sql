-- The last tick each recurring job's schedule ran (the jobs themselves are ordinary jobs of the
-- owner `schedule:<name>`, one per tick by their idempotency key `tick:<unix ms>`).
CREATE TABLE schedule_runs (
    name      TEXT PRIMARY KEY NOT NULL,
    last_tick INTEGER NOT NULL,             -- unix milliseconds
    last_job  TEXT NOT NULL
);
