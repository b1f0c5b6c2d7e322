-- The console's counts per state of one kind, from this index alone (as
-- migrations/sqlite/0007_counts_by_kind.sql).
CREATE INDEX jobs_by_kind_state ON jobs (kind, state);
