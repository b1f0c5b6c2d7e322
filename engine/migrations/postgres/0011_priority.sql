-- A job's priority, 1 to 9, higher first (as migrations/sqlite/0013_priority.sql).
ALTER TABLE jobs ADD COLUMN priority BIGINT NOT NULL DEFAULT 5;
CREATE INDEX jobs_queued_by_priority ON jobs (priority, queued_at, id)
    WHERE state = 'queued' AND priority <> 5;
