-- The transactional outbox: a domain event is written in the transaction
-- of the state change that raised it, and stays here until a node has
-- turned it into one notification per subscription that wants it (the
-- same transaction deletes it).
CREATE TABLE outbox_events (
    id             TEXT   PRIMARY KEY,
    event_type     TEXT   NOT NULL,
    occurred_at_ms BIGINT NOT NULL,
    payload        TEXT   NOT NULL
);

-- Deliveries are claimed by one node at a time: `claimed_by`/`claim_token`
-- name the node and its lease token; a claim whose lease is no longer live
-- may be taken over (`takeovers` counts it, `taken_from` names the last
-- node it was taken from). `due_at_ms` is when the next attempt may go;
-- `attempt_limit` the last attempt number before the dead letter.
ALTER TABLE notifications ADD COLUMN due_at_ms BIGINT NOT NULL DEFAULT 0;
ALTER TABLE notifications ADD COLUMN attempt_limit BIGINT NOT NULL DEFAULT 0;
ALTER TABLE notifications ADD COLUMN claimed_by TEXT;
ALTER TABLE notifications ADD COLUMN claim_token BIGINT;
-- When the claim was made: one older than an attempt can take has lapsed
-- too (its node lost track of it without losing its lease).
ALTER TABLE notifications ADD COLUMN claimed_at_ms BIGINT;
ALTER TABLE notifications ADD COLUMN takeovers BIGINT NOT NULL DEFAULT 0;
ALTER TABLE notifications ADD COLUMN taken_from TEXT;
-- One delivery per subscription per event, whichever node dispatches it.
CREATE UNIQUE INDEX notifications_once ON notifications (event_id, subscription_id);
CREATE INDEX notifications_due ON notifications (due_at_ms) WHERE status = 'pending';

-- The node (and lease token) running a queued or running simulation job: a
-- job whose runner's lease ended is taken over by the key's new owner.
ALTER TABLE simulations ADD COLUMN runner_node TEXT;
ALTER TABLE simulations ADD COLUMN runner_token BIGINT;
