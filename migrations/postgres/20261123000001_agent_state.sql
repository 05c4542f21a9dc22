-- Durable state of agent instances: one row per (kind, key), version-checked on every write.
CREATE TABLE agent_state (
    kind          TEXT   NOT NULL,
    key           TEXT   NOT NULL,
    version       BIGINT NOT NULL,
    state         TEXT   NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (kind, key)
);
