-- Subscriptions, owned by the notifier agent: one row per webhook or email
-- subscription.
CREATE TABLE subscriptions (
    id            TEXT   PRIMARY KEY,
    version       BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    body          TEXT   NOT NULL,
    status        TEXT   NOT NULL,
    created_at_ms BIGINT NOT NULL
);

-- One event to one subscription: its payload (for redelivery) and where it
-- stands (pending, delivered, dead).
CREATE TABLE notifications (
    id              TEXT   PRIMARY KEY,
    subscription_id TEXT   NOT NULL,
    event_id        TEXT   NOT NULL,
    event_type      TEXT   NOT NULL,
    payload         TEXT   NOT NULL,
    status          TEXT   NOT NULL,
    attempts        BIGINT NOT NULL,
    created_at_ms   BIGINT NOT NULL,
    updated_at_ms   BIGINT NOT NULL
);
CREATE INDEX notifications_by_subscription ON notifications (subscription_id, created_at_ms);

-- Every attempt at a notification: the delivery log.
CREATE TABLE notification_attempts (
    id              TEXT   PRIMARY KEY,
    notification_id TEXT   NOT NULL,
    attempt         BIGINT NOT NULL,
    outcome         TEXT   NOT NULL,
    http_status     BIGINT,
    latency_ms      BIGINT,
    error           TEXT,
    at_ms           BIGINT NOT NULL
);
CREATE INDEX notification_attempts_by_notification ON notification_attempts (notification_id, attempt);
