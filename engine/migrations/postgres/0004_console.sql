-- The operators' console: the same tables as migrations/sqlite/0006_console.sql; search is an
-- expression index over parameters, result and error: their first 100,000 characters (a
-- tsvector has a size limit, and an index entry that failed to build would fail the write),
-- split into words of letters and digits as SQLite's FTS5 splits them (so `example.com/hook`
-- is three words on both), with the `simple` configuration (no stemming: job parameters are
-- mostly names, addresses and numbers). registry/console.rs queries the same expression.
CREATE INDEX jobs_by_state ON jobs (state, id DESC);
CREATE INDEX jobs_by_kind ON jobs (kind, id DESC);
CREATE INDEX jobs_search ON jobs USING GIN (
    to_tsvector('simple', regexp_replace(
        left(params || ' ' || coalesce(result, '') || ' ' || coalesce(error, ''), 100000),
        '[^[:alnum:]]+', ' ', 'g'))
);

CREATE TABLE audit_log (
    id      BIGSERIAL PRIMARY KEY,
    at      BIGINT NOT NULL,
    role    TEXT NOT NULL,
    session TEXT NOT NULL,
    action  TEXT NOT NULL,
    target  TEXT NOT NULL,
    jobs    BIGINT NOT NULL
);

CREATE TABLE paused_kinds (
    kind      TEXT PRIMARY KEY NOT NULL,
    paused_at BIGINT NOT NULL
);

CREATE TABLE finished_per_minute (
    minute BIGINT NOT NULL,
    kind   TEXT NOT NULL,
    state  TEXT NOT NULL,
    jobs   BIGINT NOT NULL,
    PRIMARY KEY (minute, kind, state)
);

ALTER TABLE workers ADD COLUMN host TEXT NOT NULL DEFAULT '';
ALTER TABLE workers ADD COLUMN role TEXT NOT NULL DEFAULT '';
ALTER TABLE workers ADD COLUMN version TEXT NOT NULL DEFAULT '';
ALTER TABLE workers ADD COLUMN started_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE workers ADD COLUMN concurrency BIGINT NOT NULL DEFAULT 0;
