//! Prometheus metrics of a node: one registry per node (never the global
//! default, so tests can run nodes side by side), the agent runtime's
//! families and the HTTP layer's.
//!
//! Per-message figures (outcomes, handling time) are sharded by event loop:
//! each worker writes its own [`WorkerShard`] with plain loads and stores (no
//! locked instruction on the hot path) and a collector sums the shards at
//! scrape time. Rarer events use prometheus counters directly.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder, exponential_buckets,
};

/// The metric families of one node.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub(crate) agents: AgentMetrics,
    pub http: HttpMetrics,
}

#[derive(Clone)]
pub(crate) struct AgentMetrics {
    shards: Arc<RwLock<Vec<Arc<KindShards>>>>,
    pub(crate) mailbox_depth: IntGaugeVec,
    pub(crate) mailbox_fill: prometheus::GaugeVec,
    pub(crate) instances: IntGaugeVec,
    activations: IntCounterVec,
    passivations: IntCounterVec,
    restarts: IntCounterVec,
    escalations: IntCounterVec,
}

#[derive(Clone)]
pub struct HttpMetrics {
    pub requests: IntCounterVec,
    pub duration_seconds: HistogramVec,
    /// Stored rows a list route could not decode, skipped, by table.
    pub rows_skipped: IntCounterVec,
}

/// What became of a handled message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ok,
    Rejected,
    Fatal,
    Panicked,
    Expired,
    RefusedFailed,
}

const OUTCOMES: [(Outcome, &str); 6] = [
    (Outcome::Ok, "ok"),
    (Outcome::Rejected, "rejected"),
    (Outcome::Fatal, "fatal"),
    (Outcome::Panicked, "panicked"),
    (Outcome::Expired, "expired"),
    (Outcome::RefusedFailed, "refused_failed"),
];

/// Upper bounds of the handling-time buckets, in nanoseconds: 1 µs * 4^k.
const HANDLING_BUCKETS_NANOS: [u64; 12] = {
    let mut bounds = [0u64; 12];
    let mut index = 0;
    let mut bound = 1_000u64;
    while index < 12 {
        bounds[index] = bound;
        bound *= 4;
        index += 1;
    }
    bounds
};

/// Per-message figures of one kind on one event loop. Written only by that
/// event loop's thread, so increments are a load and a store.
#[derive(Default)]
#[repr(align(64))]
pub(crate) struct WorkerShard {
    outcomes: [AtomicU64; 6],
    /// Per bucket (not cumulative); the last slot counts what exceeds every bound.
    buckets: [AtomicU64; 13],
    sum_nanos: AtomicU64,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(by),
        Ordering::Relaxed,
    );
}

impl WorkerShard {
    #[inline]
    pub(crate) fn count(&self, outcome: Outcome) {
        bump(&self.outcomes[outcome as usize], 1);
    }

    #[inline]
    pub(crate) fn observe_nanos(&self, nanos: u64) {
        let bucket = HANDLING_BUCKETS_NANOS
            .iter()
            .position(|&bound| nanos <= bound)
            .unwrap_or(HANDLING_BUCKETS_NANOS.len());
        bump(&self.buckets[bucket], 1);
        bump(&self.sum_nanos, nanos);
    }
}

/// The shards of one kind, one per event loop.
pub(crate) struct KindShards {
    kind: String,
    workers: Box<[WorkerShard]>,
}

impl KindShards {
    pub(crate) fn worker(&self, index: usize) -> &WorkerShard {
        &self.workers[index]
    }

    /// One figure summed over every worker's shard.
    fn total(&self, field: impl Fn(&WorkerShard) -> &AtomicU64) -> u64 {
        self.workers
            .iter()
            .map(|worker| field(worker).load(Ordering::Relaxed))
            .sum()
    }
}

/// Exports the sharded families: messages by outcome, handling time.
struct ShardCollector {
    shards: Arc<RwLock<Vec<Arc<KindShards>>>>,
    descs: Vec<Desc>,
}

const MESSAGES_NAME: &str = "valueverse_agent_messages_total";
const MESSAGES_HELP: &str = "Messages handled by agent instances, by outcome";
const HANDLING_NAME: &str = "valueverse_agent_handling_seconds";
const HANDLING_HELP: &str = "Time spent in agent message handlers";

fn label(name: &str, value: &str) -> proto::LabelPair {
    let mut pair = proto::LabelPair::default();
    pair.set_name(name.to_owned());
    pair.set_value(value.to_owned());
    pair
}

fn family(name: &str, help: &str, kind: MetricType, metrics: Vec<proto::Metric>) -> MetricFamily {
    let mut family = MetricFamily::default();
    family.set_name(name.to_owned());
    family.set_help(help.to_owned());
    family.set_field_type(kind);
    family.set_metric(metrics);
    family
}

impl Collector for ShardCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let shards = self
            .shards
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut messages = Vec::new();
        let mut handling = Vec::new();
        for kind in shards.iter() {
            for (outcome, name) in OUTCOMES {
                let mut counter = proto::Counter::default();
                counter.set_value(kind.total(|worker| &worker.outcomes[outcome as usize]) as f64);
                let mut metric = proto::Metric::from_label(vec![
                    label("kind", &kind.kind),
                    label("outcome", name),
                ]);
                metric.set_counter(counter);
                messages.push(metric);
            }
            let mut cumulative = 0u64;
            let mut buckets = Vec::with_capacity(HANDLING_BUCKETS_NANOS.len());
            for (index, bound) in HANDLING_BUCKETS_NANOS.iter().enumerate() {
                cumulative += kind.total(|worker| &worker.buckets[index]);
                let mut bucket = proto::Bucket::default();
                bucket.set_cumulative_count(cumulative);
                bucket.set_upper_bound(*bound as f64 / 1e9);
                buckets.push(bucket);
            }
            let overflow = kind.total(|worker| &worker.buckets[HANDLING_BUCKETS_NANOS.len()]);
            let mut histogram = proto::Histogram::default();
            histogram.set_sample_count(cumulative + overflow);
            histogram.set_sample_sum(kind.total(|worker| &worker.sum_nanos) as f64 / 1e9);
            histogram.set_bucket(buckets);
            let mut metric = proto::Metric::from_label(vec![label("kind", &kind.kind)]);
            metric.set_histogram(histogram);
            handling.push(metric);
        }
        if messages.is_empty() {
            return Vec::new();
        }
        vec![
            family(MESSAGES_NAME, MESSAGES_HELP, MetricType::COUNTER, messages),
            family(
                HANDLING_NAME,
                HANDLING_HELP,
                MetricType::HISTOGRAM,
                handling,
            ),
        ]
    }
}

/// Running totals of one kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindActivity {
    pub kind: String,
    pub messages: u64,
    pub restarts: u64,
}

/// Children of the rarer agent families for one kind, and its shards.
pub(crate) struct KindMetrics {
    pub(crate) shards: Arc<KindShards>,
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
        let shards = Arc::new(RwLock::new(Vec::new()));
        let descs = vec![
            Desc::new(
                MESSAGES_NAME.into(),
                MESSAGES_HELP.into(),
                vec!["kind".into(), "outcome".into()],
                Default::default(),
            )
            .expect("valid metric description"),
            Desc::new(
                HANDLING_NAME.into(),
                HANDLING_HELP.into(),
                vec!["kind".into()],
                Default::default(),
            )
            .expect("valid metric description"),
        ];
        registry
            .register(Box::new(ShardCollector {
                shards: Arc::clone(&shards),
                descs,
            }))
            .expect("metric names are unique and valid");
        let agents = AgentMetrics {
            shards,
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
            mailbox_fill: register(
                &registry,
                prometheus::GaugeVec::new(
                    Opts::new(
                        "valueverse_agent_mailbox_fill_ratio",
                        "Fullest mailbox of a kind's instances: depth over capacity (1: senders are refused)",
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
                    .buckets(http_buckets()),
                    &["method", "route"],
                )
                .expect("valid metric options"),
            ),
            rows_skipped: counter_vec(
                &registry,
                "valueverse_http_rows_skipped_total",
                "Stored rows a list route could not decode (skipped and logged), by table",
                &["table"],
            ),
        };
        Metrics {
            registry,
            agents,
            http,
        }
    }

    /// The node's registry, for subsystems that add families of their own.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Messages handled and restarts so far, per kind (cheap: a few atomic
    /// loads per kind; the dashboard samples it).
    pub fn activity(&self) -> Vec<KindActivity> {
        let agents = &self.agents;
        let shards = agents
            .shards
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        shards
            .iter()
            .map(|kind| KindActivity {
                kind: kind.kind.clone(),
                messages: OUTCOMES
                    .iter()
                    .map(|(outcome, _)| kind.total(|worker| &worker.outcomes[*outcome as usize]))
                    .sum(),
                restarts: agents.restarts.with_label_values(&[&kind.kind]).get(),
            })
            .collect()
    }

    /// The registry's families in the Prometheus text format.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|error| format!("# metrics encoding failed: {error}\n"))
    }

    /// The metrics of one kind hosted on `workers` event loops.
    pub(crate) fn for_kind(&self, kind: &str, workers: usize) -> KindMetrics {
        let agents = &self.agents;
        let shards = Arc::new(KindShards {
            kind: kind.to_owned(),
            workers: (0..workers).map(|_| WorkerShard::default()).collect(),
        });
        agents
            .shards
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(Arc::clone(&shards));
        KindMetrics {
            shards,
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

/// The request histogram's buckets: 0.1 ms to 26 s by fours, and 100 ms
/// itself, the latency SLO's bound (`le="0.1"` in deploy/grafana/slo.yml).
fn http_buckets() -> Vec<f64> {
    let mut buckets = exponential_buckets(1e-4, 4.0, 10).expect("valid buckets");
    buckets.push(0.1);
    buckets.sort_by(f64::total_cmp);
    buckets
}
