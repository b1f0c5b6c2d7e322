-- The console's counts per state of one owner from this index alone (as
-- migrations/sqlite/0009_owner_counts.sql).
DROP INDEX jobs_by_owner;
CREATE INDEX jobs_by_owner ON jobs (owner, id DESC) INCLUDE (state);
