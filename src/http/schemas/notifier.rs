//! The notifier's shapes (`valueverse_agents::notifier`).

use serde::{Deserialize, Serialize};

use valueverse_agents::notifications::{Attempt, Notification};
use valueverse_agents::notifier as domain;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionStatus {
    Active,
    Deleted,
}

convert_enum!(domain::SubscriptionStatus <=> SubscriptionStatus { Active, Deleted });

/// A notification as the panel shows it (the delivery log's row, its
/// claim left out).
#[derive(Debug, Clone, Serialize)]
pub struct RecentNotification {
    pub id: String,
    pub subscription_id: String,
    pub event_id: String,
    pub event_type: String,
    pub payload: String,
    pub status: String,
    pub attempts: i64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub due_at_ms: i64,
    pub attempt_limit: i64,
    pub takeovers: i64,
}

/// A failed attempt as the panel shows it.
#[derive(Debug, Clone, Serialize)]
pub struct FailedAttempt {
    pub id: String,
    pub notification_id: String,
    pub attempt: i64,
    pub outcome: String,
    pub http_status: Option<i64>,
    pub latency_ms: Option<i64>,
    pub error: Option<String>,
    pub at_ms: i64,
}

impl From<Notification> for RecentNotification {
    fn from(notification: Notification) -> RecentNotification {
        let Notification {
            id,
            subscription_id,
            event_id,
            event_type,
            payload,
            status,
            attempts,
            created_at_ms,
            updated_at_ms,
            due_at_ms,
            attempt_limit,
            takeovers,
            claimed_by: _,
            claim_token: _,
            trace_context: _,
        } = notification;
        RecentNotification {
            id,
            subscription_id,
            event_id,
            event_type,
            payload,
            status,
            attempts,
            created_at_ms,
            updated_at_ms,
            due_at_ms,
            attempt_limit,
            takeovers,
        }
    }
}

convert_struct!(Attempt => FailedAttempt {
    id,
    notification_id,
    attempt,
    outcome,
    http_status,
    latency_ms,
    error,
    at_ms,
});
