-- The console's counts per state of one kind read this index alone (900,000 entries in ~60 ms)
-- instead of each job's row through jobs_by_kind (~400 ms).
CREATE INDEX jobs_by_kind_state ON jobs (kind, state);
