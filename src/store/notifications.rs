//! The notifier's delivery tables: `notifications` (one event to one
//! subscription, with its payload) and `notification_attempts` (the log).

use serde::Serialize;

use super::{Store, StoreError, unix_millis, with_pool};

/// One event bound for one subscription.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Notification {
    pub id: String,
    pub subscription_id: String,
    pub event_id: String,
    pub event_type: String,
    pub payload: String,
    /// `pending`, `delivered` or `dead`.
    pub status: String,
    pub attempts: i64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// One attempt at a notification.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Attempt {
    pub id: String,
    pub notification_id: String,
    pub attempt: i64,
    /// `succeeded`, `failed`, `dead` or `not_configured`.
    pub outcome: String,
    pub http_status: Option<i64>,
    pub latency_ms: Option<i64>,
    pub error: Option<String>,
    pub at_ms: i64,
}

impl Store {
    pub async fn insert_notification(&self, notification: &Notification) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO notifications (id, subscription_id, event_id, event_type, payload, \
                 status, attempts, created_at_ms, updated_at_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(&notification.id)
            .bind(&notification.subscription_id)
            .bind(&notification.event_id)
            .bind(&notification.event_type)
            .bind(&notification.payload)
            .bind(&notification.status)
            .bind(notification.attempts)
            .bind(notification.created_at_ms)
            .bind(notification.updated_at_ms)
            .execute(pool)
            .await
            .map(|_| ())
        })?;
        Ok(())
    }

    pub async fn notification(&self, id: &str) -> Result<Option<Notification>, StoreError> {
        Ok(with_pool!(self, pool => {
            sqlx::query_as("SELECT * FROM notifications WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await
        })?)
    }

    /// Records an attempt and the notification's new status, together.
    pub async fn record_attempt(&self, attempt: &Attempt, status: &str) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            let mut transaction = pool.begin().await?;
            sqlx::query(
                "INSERT INTO notification_attempts (id, notification_id, attempt, outcome, \
                 http_status, latency_ms, error, at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(&attempt.id)
            .bind(&attempt.notification_id)
            .bind(attempt.attempt)
            .bind(&attempt.outcome)
            .bind(attempt.http_status)
            .bind(attempt.latency_ms)
            .bind(&attempt.error)
            .bind(attempt.at_ms)
            .execute(&mut *transaction)
            .await?;
            sqlx::query(
                "UPDATE notifications SET status = $1, attempts = $2, updated_at_ms = $3 WHERE id = $4",
            )
            .bind(status)
            .bind(attempt.attempt)
            .bind(unix_millis())
            .bind(&attempt.notification_id)
            .execute(&mut *transaction)
            .await?;
            transaction.commit().await
        })?;
        Ok(())
    }

    /// Puts a dead notification back to `pending` for a redelivery; false
    /// when it is not dead.
    pub async fn revive_notification(&self, id: &str) -> Result<bool, StoreError> {
        let rows = with_pool!(self, pool => {
            sqlx::query(
                "UPDATE notifications SET status = 'pending', updated_at_ms = $1 \
                 WHERE id = $2 AND status = 'dead'",
            )
            .bind(unix_millis())
            .bind(id)
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
        })?;
        Ok(rows == 1)
    }

    /// Notifications of a subscription, newest first, with their attempts.
    pub async fn notifications_of(
        &self,
        subscription_id: &str,
        limit: i64,
        offset: i64,
    ) -> Result<(i64, Vec<(Notification, Vec<Attempt>)>), StoreError> {
        let (total, notifications): (i64, Vec<Notification>) = with_pool!(self, pool => {
            let total = sqlx::query_scalar(
                "SELECT COUNT(*) FROM notifications WHERE subscription_id = $1",
            )
            .bind(subscription_id)
            .fetch_one(pool)
            .await?;
            let rows = sqlx::query_as(
                "SELECT * FROM notifications WHERE subscription_id = $1 \
                 ORDER BY created_at_ms DESC, id DESC LIMIT $2 OFFSET $3",
            )
            .bind(subscription_id)
            .bind(limit)
            .bind(offset)
            .fetch_all(pool)
            .await?;
            Ok::<_, sqlx::Error>((total, rows))
        })?;
        let mut out = Vec::with_capacity(notifications.len());
        for notification in notifications {
            let attempts: Vec<Attempt> = with_pool!(self, pool => {
                sqlx::query_as(
                    "SELECT * FROM notification_attempts WHERE notification_id = $1 ORDER BY attempt, at_ms",
                )
                .bind(&notification.id)
                .fetch_all(pool)
                .await
            })?;
            out.push((notification, attempts));
        }
        Ok((total, out))
    }

    /// The latest notifications of every subscription, newest change first
    /// (the dashboard's feed; payloads left out).
    pub async fn recent_notifications(&self, limit: i64) -> Result<Vec<Notification>, StoreError> {
        Ok(with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT id, subscription_id, event_id, event_type, '' AS payload, status, \
                 attempts, created_at_ms, updated_at_ms FROM notifications \
                 ORDER BY updated_at_ms DESC, id DESC LIMIT $1",
            )
            .bind(limit)
            .fetch_all(pool)
            .await
        })?)
    }

    /// The latest attempts that did not deliver, newest first.
    pub async fn recent_failed_attempts(&self, limit: i64) -> Result<Vec<Attempt>, StoreError> {
        Ok(with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT * FROM notification_attempts WHERE outcome <> 'succeeded' \
                 ORDER BY at_ms DESC, id DESC LIMIT $1",
            )
            .bind(limit)
            .fetch_all(pool)
            .await
        })?)
    }

    /// Notifications left `pending` (a restart interrupted them).
    pub async fn pending_notifications(&self) -> Result<Vec<Notification>, StoreError> {
        Ok(with_pool!(self, pool => {
            sqlx::query_as("SELECT * FROM notifications WHERE status = 'pending' ORDER BY created_at_ms")
                .fetch_all(pool)
                .await
        })?)
    }
}
