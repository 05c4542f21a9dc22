//! The runtime's supervision tree as the API shows it
//! (`valueverse_runtime::SupervisionTree`), converted at the edge.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use valueverse_runtime as domain;

/// The live supervision tree of one node: a supervisor per agent kind.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SupervisionTree {
    pub node: String,
    pub supervisors: Vec<SupervisorSnapshot>,
}

/// One agent kind: its restart strategy and its instances.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SupervisorSnapshot {
    pub kind: String,
    pub strategy: RestartStrategy,
    pub num_active: usize,
    pub num_restarting: usize,
    pub num_failed: usize,
    /// Live instances, then the most recently passivated.
    pub instances: Vec<InstanceSnapshot>,
}

/// How a kind's instances restart after a failure.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RestartStrategy {
    /// A duration such as `100ms`.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String)]
    pub initial_backoff: Duration,
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String)]
    pub max_backoff: Duration,
    pub backoff_factor: f64,
    /// Fraction of each backoff taken off at random.
    pub jitter: f64,
    /// Restarts within `restart_window` before the instance is failed.
    pub max_restarts: u32,
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String)]
    pub restart_window: Duration,
}

/// One instance of a kind.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InstanceStatus {
    Activating,
    Active,
    Restarting,
    Passivated,
    Failed,
}

/// How an instance last failed.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FailureRecord {
    /// `panicked`, `fatal`, `load_failed`, `save_failed`, `injected` or
    /// `reported`.
    pub cause: String,
    pub message: String,
    pub at: DateTime<Utc>,
}

convert_struct!(domain::SupervisionTree => SupervisionTree { node, supervisors: each });

convert_struct!(domain::SupervisorSnapshot => SupervisorSnapshot {
    kind,
    strategy: into,
    num_active,
    num_restarting,
    num_failed,
    instances: each,
});

convert_struct!(domain::RestartStrategy => RestartStrategy {
    initial_backoff,
    max_backoff,
    backoff_factor,
    jitter,
    max_restarts,
    restart_window,
});

convert_struct!(domain::InstanceSnapshot => InstanceSnapshot {
    key,
    status: into,
    restarts,
    last_failure: opt,
    mailbox_depth,
    mailbox_capacity,
    messages_handled,
    activated_at,
});

convert_enum!(domain::InstanceStatus <=> InstanceStatus {
    Activating,
    Active,
    Restarting,
    Passivated,
    Failed,
});

impl From<domain::FailureRecord> for FailureRecord {
    fn from(failure: domain::FailureRecord) -> FailureRecord {
        let domain::FailureRecord { status, at } = failure;
        FailureRecord {
            cause: status.cause().to_owned(),
            message: status.to_string(),
            at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The API's tree writes the runtime's JSON, field for field.
    #[test]
    fn the_tree_is_the_runtimes_json() {
        let at = DateTime::parse_from_rfc3339("2026-12-04T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let instance = |key: &str, status, last_failure| domain::InstanceSnapshot {
            key: key.into(),
            status,
            restarts: 2,
            last_failure,
            mailbox_depth: 3,
            mailbox_capacity: 64,
            messages_handled: 41,
            activated_at: at,
        };
        let tree = domain::SupervisionTree {
            node: "node-a".into(),
            supervisors: vec![domain::SupervisorSnapshot {
                kind: "architect".into(),
                strategy: domain::RestartStrategy::default(),
                num_active: 1,
                num_restarting: 0,
                num_failed: 1,
                instances: vec![
                    instance("m-1", domain::InstanceStatus::Active, None),
                    instance(
                        "m-2",
                        domain::InstanceStatus::Failed,
                        Some(domain::FailureRecord {
                            status: domain::ExitStatus::Panicked {
                                message: "told to".into(),
                            },
                            at,
                        }),
                    ),
                    instance("m-3", domain::InstanceStatus::Activating, None),
                    instance("m-4", domain::InstanceStatus::Restarting, None),
                    instance("m-5", domain::InstanceStatus::Passivated, None),
                ],
            }],
        };
        let domain_json = serde_json::to_value(&tree).unwrap();
        let api_json = serde_json::to_value(SupervisionTree::from(tree)).unwrap();
        assert_eq!(api_json, domain_json);
        assert_eq!(
            api_json["supervisors"][0]["instances"][1]["last_failure"]["cause"],
            "panicked"
        );
    }
}
