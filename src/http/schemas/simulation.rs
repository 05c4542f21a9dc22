//! A simulation job's shapes (`valueverse_agents::simulation`), and the
//! events of `/ws/simulations/{id}`.

use serde::{Deserialize, Serialize};

use super::SimulationResult;
use valueverse_agents::simulation as domain;
use valueverse_agents::simulations::SimulationEvent as DomainEvent;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    Done,
    Failed,
    Cancelled,
}

/// Where a running job is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobProgress {
    pub paths_done: u64,
    pub paths_total: u64,
    pub percent: f64,
    pub samples_per_second: f64,
    pub running_mean: f64,
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub eta_seconds: Option<f64>,
}

/// One event of `/ws/simulations/{id}` (not in the OpenAPI document: a
/// WebSocket frame). Read back from the cluster's events too, where the
/// node that runs the job shares it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimulationEvent {
    /// `queued`, `progress`, `done`, `failed` or `cancelled`.
    #[serde(rename = "type")]
    pub kind: String,
    pub id: String,
    pub status: JobStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<JobProgress>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Box<SimulationResult>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

convert_enum!(domain::JobStatus <=> JobStatus {
    Queued,
    Running,
    Done,
    Failed,
    Cancelled
});
convert_struct!(domain::JobProgress <=> JobProgress {
    paths_done,
    paths_total,
    percent,
    samples_per_second,
    running_mean,
    p50,
    p90,
    eta_seconds
});

impl From<DomainEvent> for SimulationEvent {
    fn from(event: DomainEvent) -> SimulationEvent {
        let DomainEvent {
            kind,
            id,
            status,
            progress,
            result,
            error,
        } = event;
        SimulationEvent {
            kind: kind.to_owned(),
            // The job's key names its tenant; the API shows the id.
            id: valueverse_runtime::split_key(&id).1.to_owned(),
            status: status.into(),
            progress: progress.map(JobProgress::from),
            result: result.map(|result| Box::new(SimulationResult::from(*result))),
            error,
        }
    }
}
