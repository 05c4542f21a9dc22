//! The simulation queue's shapes (`valueverse_agents::simulations`).

use serde::Serialize;

use super::simulation::JobProgress;
use valueverse_agents::simulations as domain;

/// Which workers run a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Lane {
    Cpu,
    Gpu,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RunningJob {
    pub id: String,
    pub submitter: String,
    pub lane: Lane,
    pub paths: u64,
    /// Driver-paths: what counts against its submitter's budget.
    pub cost: f64,
    pub running_seconds: f64,
    /// The last progress its worker reported.
    pub progress: Option<JobProgress>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct QueuedJob {
    pub id: String,
    pub submitter: String,
    pub lane: Lane,
    pub paths: u64,
    /// 0 is served next (in its lane).
    pub position: usize,
    pub waiting_seconds: f64,
}

/// The queue as `GET /api/v1/simulations/queue` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct QueueSnapshot {
    pub capacity: usize,
    pub cpu_workers: usize,
    pub gpu_workers: usize,
    /// The GPUs, one worker each.
    pub gpus: Vec<String>,
    /// Why there is no GPU worker, when there is none.
    pub no_gpu_reason: Option<String>,
    pub running: Vec<RunningJob>,
    pub queued: Vec<QueuedJob>,
}

convert_enum!(domain::Lane <=> Lane { Cpu, Gpu });
convert_struct!(domain::RunningJob => RunningJob {
    id,
    submitter,
    lane: into,
    paths,
    cost,
    running_seconds,
    progress: opt
});
convert_struct!(domain::QueuedJob => QueuedJob {
    id,
    submitter,
    lane: into,
    paths,
    position,
    waiting_seconds
});
convert_struct!(domain::QueueSnapshot => QueueSnapshot {
    capacity,
    cpu_workers,
    gpu_workers,
    gpus,
    no_gpu_reason,
    running: each,
    queued: each
});
