-- One row per node: its lease on a place in the cluster. A node renews it
-- while it runs; placement leaves out a node whose lease has expired, so
-- the database, not gossip alone, decides when a silent node is down.
-- `token` grows at every acquisition (a fencing token): a node that finds
-- its token replaced has been taken over and stops serving.
CREATE TABLE cluster_leases (
    node TEXT PRIMARY KEY,
    token BIGINT NOT NULL,
    transport_addr TEXT NOT NULL,
    http_addr TEXT NOT NULL,
    -- HMAC of the node's name under the cluster secret: nodes place only
    -- on leases whose proof they can check (a node with another secret,
    -- which the transport refuses, never gets keys).
    proof TEXT NOT NULL,
    acquired_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL
);
-- Two nodes acquiring at once may compute the same next token: one of
-- them fails here and tries again.
CREATE UNIQUE INDEX cluster_leases_token ON cluster_leases (token);
