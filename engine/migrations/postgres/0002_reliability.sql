-- When a job last entered the queue (unix ms): the reconciler looks for queued jobs that have
-- waited well past their time with no task in the queue to run them.
ALTER TABLE jobs ADD COLUMN queued_at BIGINT;
UPDATE jobs SET queued_at = created_at WHERE state = 'queued';
CREATE INDEX jobs_queued ON jobs (queued_at) WHERE state = 'queued';
-- The upload a job reads, if any: an upload lives while any job refers to it.
ALTER TABLE jobs ADD COLUMN upload TEXT;
UPDATE jobs SET upload = params::jsonb ->> 'upload'
    WHERE params LIKE '%"upload"%' AND jsonb_typeof(params::jsonb) = 'object';
CREATE INDEX jobs_upload ON jobs (upload) WHERE upload IS NOT NULL;
