-- The last tick each recurring job's schedule ran (as migrations/sqlite/0010_schedules.sql).
CREATE TABLE schedule_runs (
    name      TEXT PRIMARY KEY NOT NULL,
    last_tick BIGINT NOT NULL,              -- unix milliseconds
    last_job  TEXT NOT NULL
);
