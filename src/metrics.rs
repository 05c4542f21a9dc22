//! Prometheus metrics of a node: one registry per node (never the global
//! default, so tests can run nodes side by side), the agent runtime's
//! families and the HTTP layer's.
//!
//! Hot paths hold pre-resolved children ([`KindMetrics`]) so that counting a
//! message is one atomic add, never a label lookup.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder, exponential_buckets,
};

/// The metric families of one node.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub(crate) agents: AgentMetrics,
    pub(crate) http: HttpMetrics,
}

#[derive(Clone)]
pub(crate) struct AgentMetrics {
    messages: IntCounterVec,
    handling_seconds: HistogramVec,
    pub(crate) mailbox_depth: IntGaugeVec,
    pub(crate) instances: IntGaugeVec,
    activations: IntCounterVec,
    passivations: IntCounterVec,
    restarts: IntCounterVec,
    escalations: IntCounterVec,
}

#[derive(Clone)]
pub(crate) struct HttpMetrics {
    pub(crate) requests: IntCounterVec,
    pub(crate) duration_seconds: HistogramVec,
}

/// Children of the agent families for one kind.
pub(crate) struct KindMetrics {
    pub(crate) handled_ok: IntCounter,
    pub(crate) rejected: IntCounter,
    pub(crate) fatal: IntCounter,
    pub(crate) panicked: IntCounter,
    pub(crate) expired: IntCounter,
    pub(crate) refused_failed: IntCounter,
    pub(crate) handling_seconds: Histogram,
    pub(crate) activations: IntCounter,
    pub(crate) passivations: IntCounter,
    pub(crate) restarts: IntCounter,
    pub(crate) escalations: IntCounter,
}

fn register<C: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    collector: C,
) -> C {
    registry
        .register(Box::new(collector.clone()))
        .expect("metric names are unique and valid");
    collector
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let family = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric options");
    register(registry, family)
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let latency_buckets = exponential_buckets(1e-6, 4.0, 12).expect("valid buckets");
        let agents = AgentMetrics {
            messages: counter_vec(
                &registry,
                "valueverse_agent_messages_total",
                "Messages handled by agent instances, by outcome",
                &["kind", "outcome"],
            ),
            handling_seconds: register(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "valueverse_agent_handling_seconds",
                        "Time spent in agent message handlers",
                    )
                    .buckets(latency_buckets),
                    &["kind"],
                )
                .expect("valid metric options"),
            ),
            mailbox_depth: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "valueverse_agent_mailbox_depth",
                        "Messages waiting in the mailboxes of a kind's instances",
                    ),
                    &["kind"],
                )
                .expect("valid metric options"),
            ),
            instances: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "valueverse_agent_instances",
                        "Live agent instances by status",
                    ),
                    &["kind", "status"],
                )
                .expect("valid metric options"),
            ),
            activations: counter_vec(
                &registry,
                "valueverse_agent_activations_total",
                "Agent instances activated",
                &["kind"],
            ),
            passivations: counter_vec(
                &registry,
                "valueverse_agent_passivations_total",
                "Agent instances passivated after their idle time",
                &["kind"],
            ),
            restarts: counter_vec(
                &registry,
                "valueverse_agent_restarts_total",
                "Agent instances restarted by their supervisor",
                &["kind"],
            ),
            escalations: counter_vec(
                &registry,
                "valueverse_agent_escalations_total",
                "Agent instances marked failed after too many restarts",
                &["kind"],
            ),
        };
        let http = HttpMetrics {
            requests: counter_vec(
                &registry,
                "valueverse_http_requests_total",
                "HTTP requests by route and status",
                &["method", "route", "status"],
            ),
            duration_seconds: register(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "valueverse_http_request_duration_seconds",
                        "HTTP request latency by route",
                    )
                    .buckets(exponential_buckets(1e-4, 4.0, 10).expect("valid buckets")),
                    &["method", "route"],
                )
                .expect("valid metric options"),
            ),
        };
        Metrics {
            registry,
            agents,
            http,
        }
    }

    /// The registry's families in the Prometheus text format.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|error| format!("# metrics encoding failed: {error}\n"))
    }

    pub(crate) fn for_kind(&self, kind: &str) -> KindMetrics {
        let agents = &self.agents;
        let outcome = |name: &str| agents.messages.with_label_values(&[kind, name]);
        KindMetrics {
            handled_ok: outcome("ok"),
            rejected: outcome("rejected"),
            fatal: outcome("fatal"),
            panicked: outcome("panicked"),
            expired: outcome("expired"),
            refused_failed: outcome("refused_failed"),
            handling_seconds: agents.handling_seconds.with_label_values(&[kind]),
            activations: agents.activations.with_label_values(&[kind]),
            passivations: agents.passivations.with_label_values(&[kind]),
            restarts: agents.restarts.with_label_values(&[kind]),
            escalations: agents.escalations.with_label_values(&[kind]),
        }
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}
