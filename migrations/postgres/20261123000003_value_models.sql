-- Value models, owned by the architect agent: one row per model, every
-- version inside `body` (JSON), indexed columns for listing and filters.
CREATE TABLE value_models (
    id              TEXT   PRIMARY KEY,
    version         BIGINT NOT NULL,
    updated_at_ms   BIGINT NOT NULL,
    body            TEXT   NOT NULL,
    status          TEXT   NOT NULL,
    name            TEXT   NOT NULL,
    customer        TEXT   NOT NULL,
    industry        TEXT   NOT NULL,
    current_version BIGINT NOT NULL,
    created_at_ms   BIGINT NOT NULL
);
CREATE INDEX value_models_by_customer ON value_models (customer, created_at_ms);
CREATE INDEX value_models_by_industry ON value_models (industry, created_at_ms);
CREATE INDEX value_models_by_status ON value_models (status, created_at_ms);
