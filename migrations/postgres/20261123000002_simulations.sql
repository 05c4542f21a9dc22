-- Simulation jobs, owned by the simulation agent: one row per job, the
-- whole job (request, progress, result) as JSON, version-checked writes.
CREATE TABLE simulations (
    id            TEXT   PRIMARY KEY,
    version       BIGINT NOT NULL,
    status        TEXT   NOT NULL,
    model_id      TEXT,
    model_version BIGINT,
    submitter     TEXT   NOT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    body          TEXT   NOT NULL
);
CREATE INDEX simulations_by_status ON simulations (status, created_at_ms);
CREATE INDEX simulations_by_model ON simulations (model_id, model_version, status, updated_at_ms);
