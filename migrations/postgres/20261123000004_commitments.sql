-- Commitments, owned by the committer agent: one row per commitment.
CREATE TABLE commitments (
    id            TEXT   PRIMARY KEY,
    version       BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    body          TEXT   NOT NULL,
    status        TEXT   NOT NULL,
    model_id      TEXT   NOT NULL,
    created_at_ms BIGINT NOT NULL
);
CREATE INDEX commitments_by_model ON commitments (model_id, created_at_ms);
CREATE INDEX commitments_by_status ON commitments (status, created_at_ms);
