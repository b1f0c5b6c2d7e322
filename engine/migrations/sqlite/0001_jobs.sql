-- Errand's job registry: what a person sees of a job. The queue (apalis) only carries job ids.
CREATE TABLE jobs (
    id          TEXT PRIMARY KEY NOT NULL,  -- ULID, also the apalis task id
    owner       TEXT NOT NULL,              -- the anonymous session that submitted it
    kind        TEXT NOT NULL,
    params      TEXT NOT NULL,              -- JSON, validated at submit
    state       TEXT NOT NULL,              -- queued | running | succeeded | failed | cancelled
    progress    REAL,                       -- 0..1, NULL until the handler reports
    stage       TEXT,
    result      TEXT,                       -- JSON
    error       TEXT,
    attempts    INTEGER NOT NULL DEFAULT 0,
    created_at  INTEGER NOT NULL,           -- unix milliseconds
    started_at  INTEGER,
    finished_at INTEGER
);

CREATE INDEX jobs_by_owner ON jobs (owner, id DESC);

CREATE TABLE job_logs (
    job_id TEXT NOT NULL,
    seq    INTEGER NOT NULL,                -- 1, 2, 3 … per job
    at     INTEGER NOT NULL,                -- unix milliseconds
    line   TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;
