-- Errand's job registry on Postgres: the same tables as on SQLite (migrations/sqlite), in one step.
-- The queue (apalis) keeps its own tables in the `apalis` schema and only carries job ids.
CREATE TABLE jobs (
    id              TEXT PRIMARY KEY NOT NULL,  -- ULID, also the apalis task id
    owner           TEXT NOT NULL,              -- the anonymous session that submitted it
    kind            TEXT NOT NULL,
    params          TEXT NOT NULL,              -- JSON, validated at submit
    state           TEXT NOT NULL,              -- queued | running | succeeded | failed | cancelled
    progress        DOUBLE PRECISION,           -- 0..1, NULL until the handler reports
    stage           TEXT,
    result          TEXT,                       -- JSON
    error           TEXT,
    attempts        BIGINT NOT NULL DEFAULT 0,
    created_at      BIGINT NOT NULL,            -- unix milliseconds
    started_at      BIGINT,
    finished_at     BIGINT,
    max_attempts    BIGINT NOT NULL DEFAULT 1,
    run_at          BIGINT,                     -- when a queued job may start (unix ms)
    delivery        BIGINT NOT NULL DEFAULT 1,  -- counts pushes; a stale delivery is skipped
    retry_of        TEXT,                       -- the job this one retries by hand
    idempotency_key TEXT,
    worker          TEXT                        -- the worker process running it
);

CREATE INDEX jobs_by_owner ON jobs (owner, id DESC);
CREATE UNIQUE INDEX jobs_idempotency ON jobs (owner, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_running ON jobs (state) WHERE state = 'running';
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX jobs_retry_of ON jobs (retry_of) WHERE retry_of IS NOT NULL;

CREATE TABLE job_logs (
    job_id TEXT NOT NULL,
    seq    BIGINT NOT NULL,                 -- 1, 2, 3 … per job
    at     BIGINT NOT NULL,                 -- unix milliseconds
    line   TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);

CREATE TABLE workers (
    name      TEXT PRIMARY KEY NOT NULL,
    last_seen BIGINT NOT NULL               -- unix milliseconds
);
