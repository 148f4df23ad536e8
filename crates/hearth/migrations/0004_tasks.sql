-- Agent tasks and their timelines. A task row outlives its sandbox: the record of what the
-- agent did is the product, the sandbox is disposable.
CREATE TABLE tasks (
    id              TEXT PRIMARY KEY NOT NULL,
    status          TEXT NOT NULL,
    prompt          TEXT NOT NULL,
    model           TEXT NOT NULL,
    spec            TEXT NOT NULL,      -- JSON: limits, workspace, allowlist
    owner_pid       INTEGER NOT NULL,   -- the hearth process running it (crash detection)
    created_at      INTEGER NOT NULL,
    started_at      INTEGER,
    finished_at     INTEGER,
    answer          TEXT,
    reason          TEXT,
    prompt_tokens   INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    diff            TEXT
);

-- One ordered record of everything a task did: LLM calls, tool calls, execs, syscall denials,
-- firewall drops, state changes. `seq` orders events within a task.
CREATE TABLE task_events (
    task_id     TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    seq         INTEGER NOT NULL,
    ts_ms       INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    data        TEXT NOT NULL,          -- JSON
    PRIMARY KEY (task_id, seq)
);
