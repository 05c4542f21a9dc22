//! Domain events: what agents announce (a model created, a commitment
//! voided...). A handler emits them through [`super::Handling::emit`]; the
//! host publishes them on the node's event bus only once the handler
//! succeeded and its state is durable, so no subscriber hears of a change
//! the store does not hold.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One event, as subscribers (the notifier, WebSocket streams) receive it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainEvent {
    pub id: String,
    /// Dotted type, e.g. `model.created`.
    #[serde(rename = "type")]
    pub event_type: String,
    pub occurred_at: DateTime<Utc>,
    /// `kind/key` of the instance that emitted it.
    pub source: String,
    pub correlation_id: Option<String>,
    pub data: serde_json::Value,
}

impl DomainEvent {
    /// The event as the outbox stores it.
    pub(crate) fn to_outbox(&self) -> crate::store::OutboxEvent {
        crate::store::OutboxEvent {
            id: self.id.clone(),
            event_type: self.event_type.clone(),
            occurred_at_ms: self.occurred_at.timestamp_millis(),
            payload: serde_json::to_string(self).unwrap_or_else(|_| "{}".into()),
        }
    }
}
