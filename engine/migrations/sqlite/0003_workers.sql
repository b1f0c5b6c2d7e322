-- Which worker process runs a job, and when each worker process was last seen alive: a job whose
-- worker stopped beating is put back in the queue by the others.
ALTER TABLE jobs ADD COLUMN worker TEXT;

CREATE TABLE workers (
    name      TEXT PRIMARY KEY NOT NULL,
    last_seen INTEGER NOT NULL              -- unix milliseconds
);

CREATE INDEX jobs_retry_of ON jobs (retry_of) WHERE retry_of IS NOT NULL;
