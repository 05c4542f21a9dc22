-- Execution plans, owned by the executor agent.
CREATE TABLE plans (
    id            TEXT   PRIMARY KEY,
    version       BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    body          TEXT   NOT NULL,
    status        TEXT   NOT NULL,
    commitment_id TEXT   NOT NULL,
    model_id      TEXT   NOT NULL,
    created_at_ms BIGINT NOT NULL
);
CREATE INDEX plans_by_status ON plans (status, created_at_ms);
CREATE INDEX plans_by_commitment ON plans (commitment_id, created_at_ms);

-- Baselines and realized deliveries per model, owned by the amplifier agent.
CREATE TABLE amplifications (
    id            TEXT   PRIMARY KEY,
    version       BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    body          TEXT   NOT NULL,
    plan_id       TEXT
);
