-- Schedules an operator paused on the console's kinds page: their ticks make no job until
-- resumed (ticks that pass meanwhile are skipped).
CREATE TABLE paused_schedules (
    name      TEXT PRIMARY KEY NOT NULL,
    paused_at INTEGER NOT NULL              -- unix milliseconds
);
