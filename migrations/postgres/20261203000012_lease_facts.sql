-- What placement needs to know of a node travels in its lease row, under
-- its proof, not in gossip (which anyone on the network can forge): the
-- agent kinds it hosts (comma-separated, sorted) and its GPU count.
-- The proof now covers the name, both addresses, the kinds and the GPUs.
ALTER TABLE cluster_leases ADD COLUMN kinds TEXT NOT NULL DEFAULT '';
ALTER TABLE cluster_leases ADD COLUMN gpus BIGINT NOT NULL DEFAULT 0;
