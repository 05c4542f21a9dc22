-- The value loop (issue 22).
-- The executor's tick reads only plans with a milestone due: the first day a
-- pending milestone is overdue, NULL when none is. Active plans from before
-- are due at once (their next tick saves the real date).
ALTER TABLE plans ADD COLUMN next_due_ms BIGINT;
UPDATE plans SET next_due_ms = 0 WHERE status = 'active';
CREATE INDEX plans_by_next_due ON plans (next_due_ms);

-- The committer's statements: when the next one is due (the day after its
-- period ends), NULL for a commitment that issues no more.
ALTER TABLE commitments ADD COLUMN next_statement_ms BIGINT;
UPDATE commitments SET next_statement_ms = 0 WHERE status = 'active';
CREATE INDEX commitments_by_next_statement ON commitments (next_statement_ms);

-- The amplifier's daily snapshot: when the next one is due, NULL for a
-- model with no active plan.
ALTER TABLE amplifications ADD COLUMN snapshot_due_ms BIGINT;
UPDATE amplifications SET snapshot_due_ms = 0 WHERE plan_id IS NOT NULL;
CREATE INDEX amplifications_by_snapshot_due ON amplifications (snapshot_due_ms);

-- Realization per day, plan and driver ('' plan: the model's active plans
-- together; '' driver: all the plan's drivers). Written once a day per
-- model; gross, undiscounted values.
CREATE TABLE realization_history (
    tenant              TEXT             NOT NULL,
    model_id            TEXT             NOT NULL,
    plan_id             TEXT             NOT NULL,
    driver              TEXT             NOT NULL,
    day                 TEXT             NOT NULL,
    expected            DOUBLE PRECISION NOT NULL,
    committed           DOUBLE PRECISION NOT NULL,
    realized            DOUBLE PRECISION NOT NULL,
    realization_percent DOUBLE PRECISION,
    PRIMARY KEY (tenant, model_id, plan_id, driver, day)
);
