-- One row per saved microVM snapshot; its files live in <state dir>/snapshots/<name>/. The row is
-- written after the files are complete and deleted after they are gone. No foreign key: the
-- source sandbox may be removed while its snapshots stay. `spec` is the source's SandboxSpec
-- (JSON): a sandbox restored from the snapshot keeps its size and its guest seccomp policy.
CREATE TABLE snapshots (
    name            TEXT PRIMARY KEY NOT NULL,
    source_id       TEXT NOT NULL,
    backend         TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    size_bytes      INTEGER NOT NULL,
    hearth_version  TEXT NOT NULL,
    qemu_version    TEXT NOT NULL,
    spec            TEXT NOT NULL
);
