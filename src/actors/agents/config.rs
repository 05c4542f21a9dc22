//! The settings of the agents' services (the notifier's deliveries, the
//! simulation workers and queue), read as part of a node's configuration.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Webhook and email delivery.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifierConfig {
    /// Attempts at a notification before it is dead-lettered.
    pub max_attempts: u32,
    /// Backoff before the second attempt; doubled each time, with jitter.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Time a webhook receiver has to answer.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Notifications delivered at once.
    pub concurrency: usize,
    /// `smtp://host:port` of a relay (plain SMTP); email is off without it.
    pub smtp_url: Option<String>,
    pub email_from: String,
    /// Networks webhooks may be sent to besides public addresses (for
    /// internal receivers: `["10.20.0.0/16"]`); loopback, private,
    /// link-local and metadata addresses are refused otherwise.
    pub allow_networks: Vec<ipnet::IpNet>,
    /// How often every node looks in the shared store for events to
    /// dispatch and deliveries due (its own events go at once).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
}

impl Default for NotifierConfig {
    fn default() -> NotifierConfig {
        NotifierConfig {
            max_attempts: 6,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            timeout: Duration::from_secs(10),
            concurrency: 32,
            smtp_url: None,
            email_from: "ValueVerse <valueverse@localhost>".into(),
            allow_networks: Vec::new(),
            poll_interval: Duration::from_millis(250),
        }
    }
}

/// The simulation agent's workers and queue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimulationConfig {
    /// Jobs run on the CPU at once (each spreads over every core: one is
    /// usually best).
    pub cpu_workers: usize,
    /// Jobs waiting to run before a submission is refused with 503.
    pub queue_capacity: usize,
    /// Use a GPU when one is found (one worker for it).
    pub gpu: bool,
    /// Jobs one submitter (API key) may have waiting and running at once.
    pub max_jobs_per_submitter: usize,
    /// Driver-paths (paths x drivers x (1 + correlated drivers)) one
    /// submitter may have waiting and running at once; a bigger job is
    /// refused with 422.
    pub cost_budget_per_submitter: f64,
    /// Queue places kept for sagas' steps (at most a quarter of the queue).
    pub saga_reserve: usize,
    /// Paths a finished, server-seeded simulation must have run to back a
    /// commitment.
    pub min_evidence_paths: u64,
}

impl Default for SimulationConfig {
    fn default() -> SimulationConfig {
        SimulationConfig {
            cpu_workers: 1,
            queue_capacity: 64,
            gpu: true,
            max_jobs_per_submitter: 16,
            cost_budget_per_submitter: 1e11,
            saga_reserve: 8,
            min_evidence_paths: 10_000,
        }
    }
}

/// The value loop: statements, snapshots, deliveries and their import.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ValueConfig {
    /// How often each node issues the statements due on its commitments
    /// and takes the daily snapshot of its models.
    #[serde(with = "humantime_serde")]
    pub tick: Duration,
    /// Largest value (either sign) one delivery may record.
    pub max_delivery_value: f64,
    /// Fraction around 100% realization beyond which a snapshot finds a
    /// driver a risk or an opportunity.
    pub risk_margin: f64,
    /// Most rows one import file may have.
    pub import_max_rows: usize,
}

impl Default for ValueConfig {
    fn default() -> ValueConfig {
        ValueConfig {
            tick: Duration::from_secs(60),
            max_delivery_value: 1e12,
            risk_margin: 0.1,
            import_max_rows: 50_000,
        }
    }
}
