//! The outbox's series: how much waits, how old the oldest is, and what
//! this node claimed and took over.

use prometheus::{IntCounter, IntGauge};

use valueverse_store::OutboxStats;

pub(super) struct OutboxMetrics {
    pub dispatched: IntCounter,
    pub claimed: IntCounter,
    pub takeovers: IntCounter,
    undispatched: IntGauge,
    pending: IntGauge,
    oldest_seconds: IntGauge,
}

impl OutboxMetrics {
    pub fn new(registry: &prometheus::Registry) -> OutboxMetrics {
        let counter =
            |name: &str, help: &str| IntCounter::new(name, help).expect("valid metric options");
        let gauge =
            |name: &str, help: &str| IntGauge::new(name, help).expect("valid metric options");
        let metrics = OutboxMetrics {
            dispatched: counter(
                "valueverse_outbox_events_dispatched_total",
                "Outbox events this node turned into notifications",
            ),
            claimed: counter(
                "valueverse_outbox_deliveries_claimed_total",
                "Notifications this node claimed for an attempt",
            ),
            takeovers: counter(
                "valueverse_outbox_takeovers_total",
                "Notifications this node took over from a node whose lease ended",
            ),
            undispatched: gauge(
                "valueverse_outbox_undispatched_events",
                "Events in the shared outbox not yet turned into notifications",
            ),
            pending: gauge(
                "valueverse_outbox_pending_deliveries",
                "Notifications in the shared store not yet delivered or dead",
            ),
            oldest_seconds: gauge(
                "valueverse_outbox_oldest_undelivered_age_seconds",
                "Age of the oldest event not yet dispatched or delivered (0: none)",
            ),
        };
        for collector in [
            Box::new(metrics.dispatched.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(metrics.claimed.clone()),
            Box::new(metrics.takeovers.clone()),
            Box::new(metrics.undispatched.clone()),
            Box::new(metrics.pending.clone()),
            Box::new(metrics.oldest_seconds.clone()),
        ] {
            registry
                .register(collector)
                .expect("outbox metric names are unique");
        }
        metrics
    }

    pub fn observe(&self, stats: &OutboxStats, now_ms: i64) {
        self.undispatched.set(stats.undispatched_events);
        self.pending.set(stats.pending_deliveries);
        self.oldest_seconds.set(
            stats
                .oldest_undelivered_ms
                .map_or(0, |oldest| now_ms.saturating_sub(oldest).max(0) / 1000),
        );
    }
}
