-- One row per sandbox hearth knows about. The row is written before anything is created on the
-- host and deleted after everything is removed, so a crash in between leaves a row that
-- reconciliation can find (status 'creating' with a dead owner_pid).
CREATE TABLE sandboxes (
    id          TEXT PRIMARY KEY NOT NULL,
    status      TEXT NOT NULL,
    backend     TEXT NOT NULL,
    runtime     TEXT NOT NULL,
    spec        TEXT NOT NULL,
    owner_pid   INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    error       TEXT
);
