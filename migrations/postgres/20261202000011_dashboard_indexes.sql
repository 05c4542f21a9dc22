-- The dashboard's feeds: the latest notifications and failed attempts.
CREATE INDEX notifications_by_update ON notifications (updated_at_ms);
CREATE INDEX notification_attempts_by_time ON notification_attempts (at_ms);
