-- Snapshots are taken of Firecracker sandboxes too: the column holds the version of whichever
-- VMM took the snapshot (the record's `backend` says which), and a restore needs the same one.
ALTER TABLE snapshots RENAME COLUMN qemu_version TO vmm_version;
