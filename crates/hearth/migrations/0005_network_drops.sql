-- The firewall drop log of each sandbox, written by its supervisor from nflog (see
-- hearth_sandbox::net::droplog). Bounded like the seccomp audit: counters per reason and per
-- destination (up to the drop log's bound, the rest summed in `other_destinations`), and the
-- recent drops capped to the ring's capacity. The nft rule counters (`hearth sandbox net`) stay
-- the authority for totals: nflog may lose messages under a flood.
-- No foreign key to `sandboxes`: like the seccomp audit, the drop log outlives the sandbox.

CREATE TABLE network_drop_reasons (
    sandbox_id  TEXT NOT NULL,
    reason      TEXT NOT NULL,
    count       INTEGER NOT NULL,
    PRIMARY KEY (sandbox_id, reason)
);

CREATE TABLE network_drop_destinations (
    sandbox_id  TEXT NOT NULL,
    protocol    INTEGER NOT NULL,
    address     TEXT NOT NULL,
    -- -1 when the protocol has no ports (ICMP): a NULL would make rows distinct.
    port        INTEGER NOT NULL,
    count       INTEGER NOT NULL,
    PRIMARY KEY (sandbox_id, protocol, address, port)
);

CREATE TABLE network_drop_recent (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    sandbox_id   TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    time_ms      INTEGER NOT NULL,
    reason       TEXT NOT NULL,
    protocol     INTEGER NOT NULL,
    source       TEXT NOT NULL,
    source_port  INTEGER,
    destination  TEXT NOT NULL,
    port         INTEGER
);
CREATE INDEX network_drop_recent_by_sandbox ON network_drop_recent (sandbox_id, id);

CREATE TABLE network_drop_state (
    sandbox_id          TEXT PRIMARY KEY NOT NULL,
    total               INTEGER NOT NULL,
    evicted             INTEGER NOT NULL,
    other_destinations  INTEGER NOT NULL,
    capacity            INTEGER NOT NULL,
    updated_at_ms       INTEGER NOT NULL
);
