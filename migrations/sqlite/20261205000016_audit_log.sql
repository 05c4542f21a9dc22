-- Who did what (issue 21): one row per change an agent made (written in the
-- transaction of the change), per operator action and per key made or
-- revoked. Append-only: no code path updates or deletes a row.
CREATE TABLE audit_log (
    id             TEXT   PRIMARY KEY,
    tenant         TEXT   NOT NULL,
    actor          TEXT   NOT NULL,
    action         TEXT   NOT NULL,
    target         TEXT   NOT NULL,
    correlation_id TEXT,
    outcome        TEXT   NOT NULL,
    at_ms          BIGINT NOT NULL
);
CREATE INDEX audit_log_by_time ON audit_log (tenant, at_ms);
CREATE INDEX audit_log_by_actor ON audit_log (tenant, actor, at_ms);
CREATE INDEX audit_log_by_target ON audit_log (tenant, target, at_ms);
