-- Each attempt of a job (as migrations/sqlite/0008_attempts.sql): kept by a trigger on the
-- job's state, in the transaction that starts or finishes it.
CREATE TABLE job_attempts (
    job_id     TEXT NOT NULL,
    attempt    BIGINT NOT NULL,
    worker     TEXT,
    started_at BIGINT NOT NULL,             -- unix milliseconds
    ended_at   BIGINT,
    outcome    TEXT,                        -- retried | succeeded | failed | cancelled
    error      TEXT,
    PRIMARY KEY (job_id, attempt)
);

CREATE FUNCTION errand_keep_attempts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        DELETE FROM job_attempts WHERE job_id = OLD.id;
        RETURN OLD;
    END IF;
    IF NEW.state = 'running' AND OLD.state <> 'running' THEN
        INSERT INTO job_attempts (job_id, attempt, worker, started_at)
            VALUES (NEW.id, NEW.attempts, NEW.worker, coalesce(NEW.started_at, 0))
            ON CONFLICT (job_id, attempt) DO UPDATE
            SET worker = EXCLUDED.worker, started_at = EXCLUDED.started_at,
                ended_at = NULL, outcome = NULL, error = NULL;
    ELSIF OLD.state = 'running' AND NEW.state <> 'running' THEN
        UPDATE job_attempts
            SET ended_at = coalesce(NEW.finished_at,
                                    (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT),
                outcome = CASE NEW.state WHEN 'queued' THEN 'retried' ELSE NEW.state END,
                error = NEW.error
            WHERE job_id = NEW.id AND attempt = OLD.attempts;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER job_attempts_kept AFTER UPDATE OF state OR DELETE ON jobs
    FOR EACH ROW EXECUTE FUNCTION errand_keep_attempts();
