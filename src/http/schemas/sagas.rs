//! The sagas' shapes (`valueverse_agents::sagas`).

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use valueverse_agents::sagas as domain;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SagaStatus {
    Running,
    Completed,
    Compensating,
    Compensated,
    NeedsAttention,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Pending,
    Succeeded,
    Failed,
    Compensated,
    /// Its compensation keeps failing: the saga needs attention.
    CompensationFailed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StepState {
    pub name: String,
    pub status: StepStatus,
    pub attempts: u32,
    pub compensation_attempts: u32,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    /// What the step produced (ids), for later steps and compensations.
    pub output: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Forward,
    Compensate,
}

/// One saga instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Saga {
    pub id: String,
    pub definition: String,
    pub definition_version: u32,
    pub status: SagaStatus,
    /// The request that started it. Shared: a saga is copied into every
    /// reply of its coordinator, the model in its input need not be.
    #[schema(value_type = Object)]
    pub input: std::sync::Arc<serde_json::Value>,
    pub steps: Vec<StepState>,
    /// When the next action is due (`None` when nothing is). While an
    /// action is in flight, its deadline: past it, the action is due again
    /// (the runner that took it may have died; agents apply it once).
    pub next_action_at: Option<DateTime<Utc>>,
    /// The action handed to a runner and not yet reported: `[step,
    /// direction]`.
    #[schema(value_type = Option<Vec<serde_json::Value>>)]
    pub in_flight: Option<(usize, Direction)>,
    pub cancel_requested: bool,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Who started it (`key:<id>`): its simulation counts against that
    /// key's share of the queue.
    #[serde(default)]
    pub started_by: Option<String>,
    /// The trace its steps are spans of (32 hex digits), when the node
    /// that started it exported spans: look it up in Jaeger or Tempo.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// A saga as lists and dashboard frames show it: no input and no step
/// outputs (those can be large; the whole saga is on its own route).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SagaSummary {
    pub id: String,
    pub definition: String,
    pub status: SagaStatus,
    pub steps: Vec<StepSummary>,
    #[schema(value_type = Option<Vec<serde_json::Value>>)]
    pub in_flight: Option<(usize, Direction)>,
    pub cancel_requested: bool,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A step of a [`SagaSummary`]: its state without its output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StepSummary {
    pub name: String,
    pub status: StepStatus,
    pub attempts: u32,
    pub compensation_attempts: u32,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

/// What a renewal saga is asked to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenewalInput {
    /// The commitment renewed: its model is simulated again at its current
    /// version and committed to again with the same terms.
    pub commitment_id: String,
    /// [default: today]
    pub start_date: Option<NaiveDate>,
    /// Paths of the simulation step, 1 to 10^7 [default: 20000].
    #[serde(default = "default_paths")]
    #[schema(minimum = 1, maximum = 10_000_000)]
    pub paths: u64,
    /// Admin only: the step to fail, to see the compensations run.
    #[schema(pattern = "^(resimulate|amend|replan)$")]
    pub fail_step: Option<String>,
}

/// Paths of a saga's simulation step when the request names none.
pub(crate) fn default_paths() -> u64 {
    domain::DEFAULT_PATHS
}

convert_enum!(domain::SagaStatus <=> SagaStatus {
    Running,
    Completed,
    Compensating,
    Compensated,
    NeedsAttention
});
convert_enum!(domain::StepStatus <=> StepStatus {
    Pending,
    Succeeded,
    Failed,
    Compensated,
    CompensationFailed
});
convert_enum!(domain::Direction <=> Direction {
    Forward,
    Compensate
});
convert_struct!(domain::StepState <=> StepState {
    name,
    status: into,
    attempts,
    compensation_attempts,
    started_at,
    finished_at,
    last_error,
    output
});
convert_struct!(domain::StepSummary <=> StepSummary {
    name,
    status: into,
    attempts,
    compensation_attempts,
    started_at,
    finished_at,
    last_error
});
convert_struct!(domain::RenewalInput <=> RenewalInput {
    commitment_id,
    start_date,
    paths,
    fail_step
});

impl From<domain::Saga> for Saga {
    fn from(saga: domain::Saga) -> Saga {
        let domain::Saga {
            id,
            definition,
            definition_version,
            status,
            input,
            steps,
            next_action_at,
            in_flight,
            cancel_requested,
            error,
            created_at,
            updated_at,
            started_by,
            trace_context,
        } = saga;
        Saga {
            // The saga's key names its tenant; the API shows the id.
            id: valueverse_runtime::split_key(&id).1.to_owned(),
            definition,
            definition_version,
            status: status.into(),
            input,
            steps: steps.into_iter().map(StepState::from).collect(),
            next_action_at,
            in_flight: in_flight.map(|(step, direction)| (step, direction.into())),
            cancel_requested,
            error,
            created_at,
            updated_at,
            started_by,
            trace_id: trace_context
                .as_deref()
                .and_then(valueverse_runtime::TraceContext::decode)
                .map(|trace| trace.trace_id()),
        }
    }
}

impl From<domain::SagaSummary> for SagaSummary {
    fn from(summary: domain::SagaSummary) -> SagaSummary {
        let domain::SagaSummary {
            id,
            definition,
            status,
            steps,
            in_flight,
            cancel_requested,
            error,
            created_at,
            updated_at,
        } = summary;
        SagaSummary {
            id: valueverse_runtime::split_key(&id).1.to_owned(),
            definition,
            status: status.into(),
            steps: steps.into_iter().map(StepSummary::from).collect(),
            in_flight: in_flight.map(|(step, direction)| (step, direction.into())),
            cancel_requested,
            error,
            created_at,
            updated_at,
        }
    }
}
