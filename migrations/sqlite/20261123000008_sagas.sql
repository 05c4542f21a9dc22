-- The durable saga log, owned by the saga coordinator agent: one row per
-- saga, its whole state (steps, attempts, errors) in `body`, and the time
-- its next action is due beside it, written in the same statement.
CREATE TABLE sagas (
    id                TEXT   PRIMARY KEY,
    version           BIGINT NOT NULL,
    updated_at_ms     BIGINT NOT NULL,
    body              TEXT   NOT NULL,
    status            TEXT   NOT NULL,
    definition        TEXT   NOT NULL,
    next_action_at_ms BIGINT,
    created_at_ms     BIGINT NOT NULL
);
CREATE INDEX sagas_due ON sagas (next_action_at_ms);
CREATE INDEX sagas_by_status ON sagas (status, created_at_ms);
