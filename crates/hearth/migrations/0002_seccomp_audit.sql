-- The seccomp audit of each sandbox, written by its supervisor process (and by `hearth sandbox
-- exec` for kills, which the notify path can't see). Bounded whatever the workload does:
-- counts are aggregated per (sandbox, time window, syscall, action, source) and upserted, never
-- one row per event; the recent entries are capped to the audit ring's capacity per sandbox.
-- No foreign key to `sandboxes`: the audit outlives the sandbox (a task's timeline reads it after
-- the sandbox is gone); a new sandbox with the same id starts by clearing the old rows.

CREATE TABLE seccomp_audit_windows (
    sandbox_id       TEXT NOT NULL,
    window_start_ms  INTEGER NOT NULL,
    window_ms        INTEGER NOT NULL,
    arch             INTEGER NOT NULL,
    -- -1 when the syscall is unknown (a kill seen only as SIGSYS, or past the key bound):
    -- a NULL would make every such row distinct under the primary key.
    syscall_nr       INTEGER NOT NULL,
    syscall_name     TEXT,
    action           TEXT NOT NULL,
    source           TEXT NOT NULL,
    count            INTEGER NOT NULL,
    PRIMARY KEY (sandbox_id, window_start_ms, arch, syscall_nr, action, source)
);

CREATE TABLE seccomp_audit_recent (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    sandbox_id    TEXT NOT NULL,
    time_ms       INTEGER NOT NULL,
    pid           INTEGER,
    comm          TEXT,
    exe           TEXT,
    arch          INTEGER NOT NULL,
    syscall_nr    INTEGER NOT NULL,
    syscall_name  TEXT,
    args          TEXT NOT NULL,
    action        TEXT NOT NULL,
    source        TEXT NOT NULL
);
CREATE INDEX seccomp_audit_recent_by_sandbox ON seccomp_audit_recent (sandbox_id, id);

-- One row per supervised sandbox: the live totals and how far the supervisor has flushed, so
-- `hearth sandbox audit` can ask for a flush (SIGUSR1) and wait until `flush_seq` moves.
CREATE TABLE seccomp_audit_state (
    sandbox_id     TEXT PRIMARY KEY NOT NULL,
    supervisor_pid INTEGER NOT NULL,
    total          INTEGER NOT NULL,
    evicted        INTEGER NOT NULL,
    capacity       INTEGER NOT NULL,
    flush_seq      INTEGER NOT NULL,
    updated_at_ms  INTEGER NOT NULL,
    ended          TEXT
);
