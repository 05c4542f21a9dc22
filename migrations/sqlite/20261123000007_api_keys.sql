-- API keys: only the SHA-256 of each key is kept (keys are 190 random bits,
-- so a plain hash resists guessing; the key itself is shown once).
CREATE TABLE api_keys (
    id            TEXT   PRIMARY KEY,
    name          TEXT   NOT NULL,
    role          TEXT   NOT NULL,
    hash          TEXT   NOT NULL UNIQUE,
    created_at_ms BIGINT NOT NULL,
    revoked_at_ms BIGINT
);
