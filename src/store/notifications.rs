//! The notifier's delivery tables: `notifications` (one event to one
//! subscription, with its payload) and `notification_attempts` (the log).

use serde::Serialize;

use super::outbox::Claimant;
use super::{Store, StoreError, unix_millis, with_pool};

/// One event bound for one subscription.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
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
    /// When the next attempt may go (while `pending`).
    pub due_at_ms: i64,
    /// The last attempt number before the dead letter (0: the node's
    /// configured number of attempts).
    pub attempt_limit: i64,
    /// How many times a node took it over from one whose lease ended.
    pub takeovers: i64,
    #[serde(skip)]
    pub claimed_by: Option<String>,
    #[serde(skip)]
    pub claim_token: Option<i64>,
    /// The span that raised the event: each attempt's span is its child.
    #[serde(skip)]
    pub trace_context: Option<String>,
}

/// One attempt at a notification.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
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

    /// Records an attempt and, if `claimant` still holds the notification,
    /// its new status, next due time and the release of the claim, together.
    /// False when the claim was lost (taken over after this node's lease
    /// ended): the attempt is logged, the status left to the new holder.
    pub async fn record_attempt(
        &self,
        attempt: &Attempt,
        status: &str,
        due_at_ms: i64,
        claimant: Claimant<'_>,
    ) -> Result<bool, StoreError> {
        let held = with_pool!(self, pool => {
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
            let updated = sqlx::query(
                "UPDATE notifications SET status = $1, attempts = $2, updated_at_ms = $3, \
                 due_at_ms = $4, claimed_by = NULL, claim_token = NULL, claimed_at_ms = NULL \
                 WHERE id = $5 AND claimed_by = $6 AND claim_token = $7",
            )
            .bind(status)
            .bind(attempt.attempt)
            .bind(unix_millis())
            .bind(due_at_ms)
            .bind(&attempt.notification_id)
            .bind(claimant.node)
            .bind(claimant.token)
            .execute(&mut *transaction)
            .await?
            .rows_affected();
            transaction.commit().await?;
            Ok::<_, sqlx::Error>(updated == 1)
        })?;
        Ok(held)
    }

    /// Puts a dead notification back to `pending`, due now, with `budget`
    /// more attempts (their numbers go on); false when it is not dead.
    pub async fn revive_notification(&self, id: &str, budget: i64) -> Result<bool, StoreError> {
        let now = unix_millis();
        let rows = with_pool!(self, pool => {
            sqlx::query(
                "UPDATE notifications SET status = 'pending', updated_at_ms = $1, due_at_ms = $1, \
                 attempt_limit = attempts + $3, claimed_by = NULL, claim_token = NULL \
                 WHERE id = $2 AND status = 'dead'",
            )
            .bind(now)
            .bind(id)
            .bind(budget)
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
    pub async fn recent_notifications(
        &self,
        tenant: &str,
        limit: i64,
    ) -> Result<Vec<Notification>, StoreError> {
        Ok(with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT id, subscription_id, event_id, event_type, '' AS payload, status, \
                 attempts, created_at_ms, updated_at_ms, due_at_ms, attempt_limit, takeovers, \
                 claimed_by, claim_token, CAST(NULL AS TEXT) AS trace_context FROM notifications WHERE tenant = $2 \
                 ORDER BY updated_at_ms DESC, id DESC LIMIT $1",
            )
            .bind(limit)
            .bind(tenant)
            .fetch_all(pool)
            .await
        })?)
    }

    /// The latest attempts that did not deliver, newest first.
    pub async fn recent_failed_attempts(
        &self,
        tenant: &str,
        limit: i64,
    ) -> Result<Vec<Attempt>, StoreError> {
        Ok(with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT a.* FROM notification_attempts a \
                 JOIN notifications n ON n.id = a.notification_id \
                 WHERE a.outcome <> 'succeeded' AND n.tenant = $2 \
                 ORDER BY a.at_ms DESC, a.id DESC LIMIT $1",
            )
            .bind(limit)
            .bind(tenant)
            .fetch_all(pool)
            .await
        })?)
    }
}
