-- A job's priority, 1 to 9, higher first (see engine/src/queue/mod.rs). Every job queued
-- before this version has the default, the middle.
ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 5;
-- The jobs ahead of a queued one ("why is it waiting?"): those of a higher priority, and those
-- of its own that entered the queue before it; two ranges of this index.
CREATE INDEX jobs_queued_by_priority ON jobs (priority, queued_at, id) WHERE state = 'queued';
