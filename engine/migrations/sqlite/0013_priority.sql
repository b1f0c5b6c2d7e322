-- A job's priority, 1 to 9, higher first (see engine/src/queue/mod.rs). Every job queued
-- before this version has the default, the middle.
ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 5;
-- The jobs ahead of a queued one ("why is it waiting?"): those of a higher priority, and those
-- of its own that entered the queue before it; ranges of this index. Jobs at the default
-- priority stay out of it (they are found through jobs_queued), so a deployment that sets no
-- priority pays nothing for it.
CREATE INDEX jobs_queued_by_priority ON jobs (priority, queued_at, id)
    WHERE state = 'queued' AND priority <> 5;
