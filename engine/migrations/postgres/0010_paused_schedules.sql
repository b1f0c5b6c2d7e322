-- Schedules an operator paused (as migrations/sqlite/0012_paused_schedules.sql).
CREATE TABLE paused_schedules (
    name      TEXT PRIMARY KEY NOT NULL,
    paused_at BIGINT NOT NULL
);
