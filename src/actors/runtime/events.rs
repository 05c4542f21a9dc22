//! Domain events: what agents announce (a model created, a commitment
//! voided...). A handler emits them through [`super::Handling::emit`]; the
//! host publishes them on the node's event bus only once the handler
//! succeeded and its state is durable, so no subscriber hears of a change
//! the store does not hold.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The event types notifications are made of: what a subscription names
/// (or `*` for all of them), and what the outbox keeps. Other events
/// (`saga.transition`: a saga's every step) go to live streams only.
pub const EVENT_TYPES: &[&str] = &[
    "model.created",
    "model.updated",
    "model.archived",
    "simulation.finished",
    "commitment.made",
    "commitment.voided",
    "commitment.superseded",
    "commitment.restored",
    "statement.issued",
    "plan.created",
    "plan.cancelled",
    "plan.superseded",
    "plan.reassigned",
    "milestone.completed",
    "milestone.overdue",
    "delivery.recorded",
    "risk.detected",
    "opportunity.detected",
    "saga.finished",
];

/// Whether an event of this type can be notified at all.
pub fn is_notified(event_type: &str) -> bool {
    EVENT_TYPES.contains(&event_type)
}

/// The notified types some active subscription wants, a bit per
/// [`EVENT_TYPES`] entry: what the outbox of a node alone keeps. An event
/// nobody wants is not written; a subscription is made on this node, so
/// its types are added at once (and kept until a read of the store that
/// began after it). Until the first read, every type is wanted. A node of a
/// cluster keeps every notified type ([`WantedTypes::keep_all`]): a
/// subscription made on another node must apply to its events at once.
#[derive(Debug)]
pub struct WantedTypes {
    /// Every notified type is kept (a node of a cluster: a subscription
    /// made on another node must apply here at once).
    all: AtomicBool,
    mask: AtomicU64,
    /// Types added on this node, and when: a read begun before then may
    /// not hold them yet.
    added: Mutex<(u64, Option<Instant>)>,
}

impl Default for WantedTypes {
    fn default() -> WantedTypes {
        WantedTypes {
            all: AtomicBool::new(false),
            mask: AtomicU64::new(u64::MAX),
            added: Mutex::new((0, None)),
        }
    }
}

impl WantedTypes {
    /// What the active subscriptions want, as read from the store by a
    /// read begun at `read_began` (`*`: every type).
    pub fn set<'a>(&self, read_began: Instant, wanted: impl IntoIterator<Item = &'a str>) {
        let mut mask = Self::mask_of(wanted);
        let mut added = self
            .added
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match added.1 {
            Some(at) if at >= read_began => mask |= added.0,
            _ => *added = (0, None),
        }
        self.mask.store(mask, Ordering::Relaxed);
    }

    /// A subscription made on this node: its types are wanted from now.
    pub fn add<'a>(&self, wanted: impl IntoIterator<Item = &'a str>) {
        let bits = Self::mask_of(wanted);
        let mut added = self
            .added
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *added = (added.0 | bits, Some(Instant::now()));
        self.mask.fetch_or(bits, Ordering::Relaxed);
    }

    /// Whether every notified type is kept whatever the subscriptions.
    pub fn keeps_all(&self) -> bool {
        self.all.load(Ordering::Relaxed)
    }

    pub fn wants(&self, event_type: &str) -> bool {
        let mask = if self.keeps_all() {
            u64::MAX
        } else {
            self.mask.load(Ordering::Relaxed)
        };
        mask & Self::bit(event_type) != 0
    }

    /// Keeps every notified type from now on, whatever the subscriptions.
    pub fn keep_all(&self) {
        self.all.store(true, Ordering::Relaxed);
    }

    fn mask_of<'a>(wanted: impl IntoIterator<Item = &'a str>) -> u64 {
        wanted.into_iter().fold(0u64, |mask, wanted| {
            if wanted == "*" {
                u64::MAX
            } else {
                mask | Self::bit(wanted)
            }
        })
    }

    fn bit(event_type: &str) -> u64 {
        EVENT_TYPES
            .iter()
            .position(|known| *known == event_type)
            .map_or(0, |index| 1 << index)
    }
}

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
    /// The tenant of the instance that raised it: only that tenant's
    /// subscriptions and streams hear of it.
    #[serde(default = "default_tenant")]
    pub tenant: String,
    pub correlation_id: Option<String>,
    pub data: serde_json::Value,
}

fn default_tenant() -> String {
    crate::tenant::DEFAULT_TENANT.to_owned()
}

impl DomainEvent {
    /// The event as the outbox stores it.
    /// The outbox's row of it; `trace_context` is the span that raised it
    /// (its webhooks' parent).
    pub(crate) fn to_outbox(&self, trace_context: Option<String>) -> crate::state::OutboxEvent {
        crate::state::OutboxEvent {
            trace_context,
            id: self.id.clone(),
            tenant: self.tenant.clone(),
            event_type: self.event_type.clone(),
            occurred_at_ms: self.occurred_at.timestamp_millis(),
            payload: serde_json::to_string(self).unwrap_or_else(|_| "{}".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_wanted_notified_types_are_kept() {
        let wanted = WantedTypes::default();
        assert!(
            wanted.wants("model.created"),
            "everything until the first read"
        );
        assert!(!wanted.wants("saga.transition"), "never notified");
        let read = Instant::now();
        wanted.set(read, ["model.created", "plan.created"]);
        assert!(wanted.wants("model.created") && wanted.wants("plan.created"));
        assert!(!wanted.wants("commitment.made"));
        wanted.set(Instant::now(), []);
        assert!(!wanted.wants("model.created"));
        // Added here: kept through a read begun before, dropped by one after.
        let begun = Instant::now();
        wanted.add(["commitment.made"]);
        wanted.set(begun, []);
        assert!(wanted.wants("commitment.made"));
        wanted.set(Instant::now(), []);
        assert!(!wanted.wants("commitment.made"));
        wanted.set(Instant::now(), ["*"]);
        assert!(EVENT_TYPES.iter().all(|known| wanted.wants(known)));
        assert!(!wanted.wants("saga.transition"));
        wanted.set(Instant::now(), []);
        wanted.keep_all();
        assert!(EVENT_TYPES.iter().all(|known| wanted.wants(known)));
        assert!(!wanted.wants("saga.transition"));
    }
}
