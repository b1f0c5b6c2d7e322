-- The operators' console: lists of every owner's jobs by state and kind, full-text search over
-- parameters, result and error, the audit log, paused kinds, finished jobs per minute (charts)
-- and what each worker process says about itself.
CREATE INDEX jobs_by_state ON jobs (state, id DESC);
CREATE INDEX jobs_by_kind ON jobs (kind, id DESC);

-- An external-content FTS5 index over the jobs table, kept in step by triggers. It refers to
-- jobs by rowid, which nothing in Errand changes (a VACUUM may: rebuild the index after one
-- with INSERT INTO jobs_search(jobs_search) VALUES ('rebuild')).
CREATE VIRTUAL TABLE jobs_search USING fts5(
    params, result, error, content = 'jobs', content_rowid = 'rowid', tokenize = 'unicode61'
);
INSERT INTO jobs_search (jobs_search) VALUES ('rebuild');
CREATE TRIGGER jobs_search_insert AFTER INSERT ON jobs BEGIN
    INSERT INTO jobs_search (rowid, params, result, error)
        VALUES (new.rowid, new.params, new.result, new.error);
END;
CREATE TRIGGER jobs_search_delete AFTER DELETE ON jobs BEGIN
    INSERT INTO jobs_search (jobs_search, rowid, params, result, error)
        VALUES ('delete', old.rowid, old.params, old.result, old.error);
END;
CREATE TRIGGER jobs_search_update AFTER UPDATE OF params, result, error ON jobs BEGIN
    INSERT INTO jobs_search (jobs_search, rowid, params, result, error)
        VALUES ('delete', old.rowid, old.params, old.result, old.error);
    INSERT INTO jobs_search (rowid, params, result, error)
        VALUES (new.rowid, new.params, new.result, new.error);
END;

CREATE TABLE audit_log (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at      INTEGER NOT NULL,               -- unix milliseconds
    role    TEXT NOT NULL,                  -- admin | viewer
    session TEXT NOT NULL,                  -- the operator's login session
    action  TEXT NOT NULL,                  -- retry | cancel | delete | pause | resume | bulk-…
    target  TEXT NOT NULL,                  -- a job id, a kind, or a filter (query string)
    jobs    INTEGER NOT NULL                -- how many jobs it touched
);

CREATE TABLE paused_kinds (
    kind      TEXT PRIMARY KEY NOT NULL,
    paused_at INTEGER NOT NULL
);

CREATE TABLE finished_per_minute (
    minute INTEGER NOT NULL,                -- unix minutes
    kind   TEXT NOT NULL,
    state  TEXT NOT NULL,                   -- succeeded | failed | cancelled
    jobs   INTEGER NOT NULL,
    PRIMARY KEY (minute, kind, state)
) WITHOUT ROWID;

ALTER TABLE workers ADD COLUMN host TEXT NOT NULL DEFAULT '';
ALTER TABLE workers ADD COLUMN role TEXT NOT NULL DEFAULT '';
ALTER TABLE workers ADD COLUMN version TEXT NOT NULL DEFAULT '';
ALTER TABLE workers ADD COLUMN started_at INTEGER NOT NULL DEFAULT 0;
ALTER TABLE workers ADD COLUMN concurrency INTEGER NOT NULL DEFAULT 0;
