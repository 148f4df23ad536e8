-- The block of host uids/gids each sandbox runs as (see hearth_sandbox::userns). Allocated with
-- the row and freed with it, so a sandbox's leftovers keep their block until they are removed.
-- NULL for sandboxes made before hearth had user namespaces (they run as host root).
ALTER TABLE sandboxes ADD COLUMN id_block INTEGER;
CREATE UNIQUE INDEX sandboxes_id_block ON sandboxes (id_block);
