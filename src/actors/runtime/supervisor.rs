//! Supervision: the restart strategy of an agent kind, the decision taken on
//! each failure, and the live supervision tree read by `/api/v1/actors`.
//!
//! Each agent kind has one supervisor; its decision (restart after a backoff,
//! or escalate) is carried out by the failed instance's host in place, so the
//! mailbox and its queued messages survive the restart.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::error::ExitStatus;

/// How a kind's supervisor reacts to a failed instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RestartStrategy {
    /// Delay before the first restart.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Upper bound of the delay, whatever the number of restarts.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Growth of the delay per restart within the window.
    pub backoff_factor: f64,
    /// Fraction of the delay taken off at random (0 = none, 0.2 = up to 20%),
    /// so that instances failing together do not restart together.
    pub jitter: f64,
    /// Restarts allowed within `restart_window`; one more failure escalates.
    pub max_restarts: u32,
    #[serde(with = "humantime_serde")]
    pub restart_window: Duration,
}

impl Default for RestartStrategy {
    fn default() -> RestartStrategy {
        RestartStrategy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            backoff_factor: 2.0,
            jitter: 0.2,
            max_restarts: 5,
            restart_window: Duration::from_secs(60),
        }
    }
}

impl RestartStrategy {
    /// Checks the fields; the error names the field at fault.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !(self.backoff_factor >= 1.0 && self.backoff_factor.is_finite()) {
            return Err(("backoff_factor", "must be a number >= 1".into()));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(("jitter", "must be within 0..=1".into()));
        }
        if self.max_backoff < self.initial_backoff {
            return Err(("max_backoff", "must be at least initial_backoff".into()));
        }
        if self.restart_window.is_zero() {
            return Err(("restart_window", "must be longer than 0s".into()));
        }
        Ok(())
    }

    /// Delay before restart number `attempt` (1-based) within the window.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(64) as i32;
        let base = self.initial_backoff.as_secs_f64() * self.backoff_factor.powi(exponent);
        let base = base.min(self.max_backoff.as_secs_f64());
        let cut = if self.jitter > 0.0 {
            rand::rng().random_range(0.0..=self.jitter)
        } else {
            0.0
        };
        Duration::from_secs_f64(base * (1.0 - cut))
    }
}

/// What the supervisor decided about a failure.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Decision {
    Restart { attempt: u32, after: Duration },
    Escalate { restarts_in_window: u32 },
}

/// Restarts of one instance within the strategy's window.
#[derive(Debug, Default)]
pub(crate) struct RestartHistory {
    restarts: VecDeque<Instant>,
}

impl RestartHistory {
    pub(crate) fn on_failure(&mut self, strategy: &RestartStrategy, now: Instant) -> Decision {
        while let Some(&oldest) = self.restarts.front() {
            if now.duration_since(oldest) > strategy.restart_window {
                self.restarts.pop_front();
            } else {
                break;
            }
        }
        let restarts_in_window = self.restarts.len() as u32;
        if restarts_in_window >= strategy.max_restarts {
            return Decision::Escalate { restarts_in_window };
        }
        self.restarts.push_back(now);
        let attempt = restarts_in_window + 1;
        Decision::Restart {
            attempt,
            after: strategy.backoff(attempt),
        }
    }

    pub(crate) fn clear(&mut self) {
        self.restarts.clear();
    }
}

/// Where an instance is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceStatus {
    /// Activated, state being loaded; messages wait in the mailbox.
    Activating,
    Active,
    /// Failed, waiting for its backoff and reload; messages wait in the mailbox.
    Restarting,
    Passivated,
    /// Escalated: every message is answered with an error until a reset.
    Failed,
}

impl InstanceStatus {
    pub(crate) fn from_u8(value: u8) -> InstanceStatus {
        match value {
            0 => InstanceStatus::Activating,
            1 => InstanceStatus::Active,
            2 => InstanceStatus::Restarting,
            3 => InstanceStatus::Passivated,
            _ => InstanceStatus::Failed,
        }
    }

    pub(crate) fn as_u8(self) -> u8 {
        match self {
            InstanceStatus::Activating => 0,
            InstanceStatus::Active => 1,
            InstanceStatus::Restarting => 2,
            InstanceStatus::Passivated => 3,
            InstanceStatus::Failed => 4,
        }
    }
}

impl fmt::Display for InstanceStatus {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            InstanceStatus::Activating => "activating",
            InstanceStatus::Active => "active",
            InstanceStatus::Restarting => "restarting",
            InstanceStatus::Passivated => "passivated",
            InstanceStatus::Failed => "failed",
        };
        formatter.write_str(text)
    }
}

/// The last failure of an instance; shown as `{cause, message, at}`.
#[derive(Debug, Clone, PartialEq)]
pub struct FailureRecord {
    pub status: ExitStatus,
    pub at: DateTime<Utc>,
}

impl Serialize for FailureRecord {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Shown<'a> {
            cause: &'static str,
            message: String,
            at: &'a DateTime<Utc>,
        }
        Shown {
            cause: self.status.cause(),
            message: self.status.to_string(),
            at: &self.at,
        }
        .serialize(serializer)
    }
}

/// One instance in the supervision tree.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceSnapshot {
    pub key: String,
    pub status: InstanceStatus,
    pub restarts: u32,
    pub last_failure: Option<FailureRecord>,
    pub mailbox_depth: usize,
    pub mailbox_capacity: usize,
    pub messages_handled: u64,
    pub activated_at: DateTime<Utc>,
}

/// One agent kind's supervisor and its instances.
#[derive(Debug, Clone, Serialize)]
pub struct SupervisorSnapshot {
    pub kind: String,
    pub strategy: RestartStrategy,
    pub num_active: usize,
    pub num_restarting: usize,
    pub num_failed: usize,
    /// Active, restarting and failed instances, then the most recently
    /// passivated ones (a bounded list).
    pub instances: Vec<InstanceSnapshot>,
}

/// The supervision tree of one node.
#[derive(Debug, Clone, Serialize)]
pub struct SupervisionTree {
    pub node: String,
    pub supervisors: Vec<SupervisorSnapshot>,
}

impl SupervisionTree {
    /// The tree as a tenant sees it: only its instances, named by their
    /// ids, with the counts of those only.
    pub fn of_tenant(mut self, tenant: &crate::Tenant) -> SupervisionTree {
        for supervisor in &mut self.supervisors {
            supervisor
                .instances
                .retain(|instance| crate::tenant::split_key(&instance.key).0 == tenant.as_str());
            for instance in &mut supervisor.instances {
                instance.key = crate::tenant::split_key(&instance.key).1.to_owned();
            }
            let live = |status| {
                supervisor
                    .instances
                    .iter()
                    .filter(|instance| instance.status == status)
                    .count()
            };
            supervisor.num_active = live(InstanceStatus::Active);
            supervisor.num_restarting = live(InstanceStatus::Restarting);
            supervisor.num_failed = live(InstanceStatus::Failed);
        }
        self
    }
}

/// A change in the life of an instance, broadcast to whoever watches
/// (tests, the dashboard).
#[derive(Debug, Clone, PartialEq)]
pub struct SupervisionEvent {
    pub kind: &'static str,
    pub key: Arc<str>,
    pub change: LifecycleChange,
    pub at: Instant,
}

/// What an operator does to one instance.
#[derive(Debug, Clone)]
pub(crate) enum OperatorAction {
    /// Brings a failed instance back: restart history cleared, state reloaded.
    Reset,
    /// Fault injection: the instance fails as if its handler had, and its
    /// supervisor decides (for drills, demos and the dashboard test).
    Crash { reason: String },
}

#[derive(Debug, Clone, PartialEq)]
pub enum LifecycleChange {
    Activated,
    Failed { status: ExitStatus },
    RestartScheduled { attempt: u32, after: Duration },
    Restarted { attempt: u32 },
    Escalated { restarts_in_window: u32 },
    Reset,
    Passivated,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strategy(max_restarts: u32) -> RestartStrategy {
        RestartStrategy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(350),
            backoff_factor: 2.0,
            jitter: 0.0,
            max_restarts,
            restart_window: Duration::from_secs(10),
        }
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let strategy = strategy(10);
        let delays: Vec<u128> = (1..=4).map(|n| strategy.backoff(n).as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 350, 350]);
    }

    #[test]
    fn jitter_only_shortens_within_its_fraction() {
        let strategy = RestartStrategy {
            jitter: 0.2,
            ..strategy(10)
        };
        for _ in 0..200 {
            let delay = strategy.backoff(1).as_secs_f64();
            assert!((0.08..=0.1).contains(&delay), "{delay}");
        }
    }

    #[test]
    fn escalates_after_max_restarts_within_window() {
        let strategy = strategy(2);
        let mut history = RestartHistory::default();
        let start = Instant::now();
        assert!(matches!(
            history.on_failure(&strategy, start),
            Decision::Restart { attempt: 1, .. }
        ));
        assert!(matches!(
            history.on_failure(&strategy, start),
            Decision::Restart { attempt: 2, .. }
        ));
        assert_eq!(
            history.on_failure(&strategy, start),
            Decision::Escalate {
                restarts_in_window: 2
            }
        );
        // Outside the window the old restarts no longer count.
        let later = start + Duration::from_secs(11);
        assert!(matches!(
            history.on_failure(&strategy, later),
            Decision::Restart { attempt: 1, .. }
        ));
    }

    #[test]
    fn validation_names_the_field() {
        let bad = RestartStrategy {
            jitter: 2.0,
            ..RestartStrategy::default()
        };
        assert_eq!(bad.validate().unwrap_err().0, "jitter");
        let bad = RestartStrategy {
            backoff_factor: 0.5,
            ..RestartStrategy::default()
        };
        assert_eq!(bad.validate().unwrap_err().0, "backoff_factor");
        assert!(RestartStrategy::default().validate().is_ok());
    }
}
