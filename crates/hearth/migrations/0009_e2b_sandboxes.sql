-- What the E2B-compatible API adds to a sandbox it created: the template id the client asked
-- for, its metadata and sandbox-wide env vars, the envd access token the data plane checks, and
-- the deadline hearth removes it at (NULL while paused: a paused sandbox does not expire). The
-- row goes with its sandbox's record, however that is removed, so a later sandbox that reuses
-- the id never inherits the token or the deadline.
CREATE TABLE e2b_sandboxes (
    id            TEXT PRIMARY KEY NOT NULL REFERENCES sandboxes(id) ON DELETE CASCADE,
    template_id   TEXT NOT NULL,
    metadata      TEXT NOT NULL,
    env_vars      TEXT NOT NULL,
    access_token  TEXT NOT NULL,
    started_at    INTEGER NOT NULL,
    end_at        INTEGER,
    paused        INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX e2b_sandboxes_end_at ON e2b_sandboxes (end_at);
