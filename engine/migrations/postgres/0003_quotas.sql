-- A session's unfinished jobs, counted on every submit when the per-session quota is on.
CREATE INDEX jobs_active_by_owner ON jobs (owner) WHERE state IN ('queued', 'running');
