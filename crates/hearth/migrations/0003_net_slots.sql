-- Which address-pool slot each sandbox's network holds. UNIQUE(slot) makes a double claim
-- impossible even when two hearth processes set up sandboxes at once.
CREATE TABLE net_slots (
    sandbox_id  TEXT PRIMARY KEY NOT NULL,
    slot        INTEGER NOT NULL UNIQUE
);
